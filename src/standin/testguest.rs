//! wasp's built-in minimal x86-64 test guest, written as bytes so no
//! assembler is needed.
//!
//! It is a static ELF64 executable with one `PT_LOAD` segment at
//! [`LOAD_ADDR`]. Firecracker loads it through its Linux boot path (an ELF
//! kernel) and enters it in 64-bit mode. Its few instructions write
//! [`MARKER`] to the serial port 0x3f8 (the bytes show up on Firecracker's
//! stdout) and then idle in `hlt` forever, so an idle guest costs no host
//! CPU:
//!
//! ```text
//! start: lea  rsi, [rip + msg]    ; 48 8d 35 rel32
//!        mov  ecx, MARKER.len()   ; b9 imm32
//!        mov  dx, 0x3f8           ; 66 ba f8 03
//! out:   lodsb                    ; ac
//!        out  dx, al              ; ee
//!        loop out                 ; e2 fc
//! idle:  hlt                      ; f4
//!        jmp  idle                ; eb fd
//! msg:   MARKER
//! ```

use std::io;
use std::path::Path;

/// The line the guest prints on the serial console once it runs.
pub const MARKER: &str = "wasp-testguest ready\n";

/// Guest-physical (and virtual) load address of the single segment.
pub const LOAD_ADDR: u64 = 0x20_0000;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const CODE_OFFSET: usize = EHDR_SIZE + PHDR_SIZE;

/// The machine code followed by the marker bytes.
fn code() -> Vec<u8> {
    let msg = MARKER.as_bytes();
    let mut c = Vec::with_capacity(32 + msg.len());
    // lea rsi, [rip + rel32]; rel32 is filled in once msg's offset is known.
    c.extend_from_slice(&[0x48, 0x8d, 0x35, 0, 0, 0, 0]);
    let after_lea = c.len();
    c.push(0xb9); // mov ecx, imm32
    c.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    c.extend_from_slice(&[0xac, 0xee, 0xe2, 0xfc]); // lodsb; out dx, al; loop -4
    c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp -3
    let rel = (c.len() - after_lea) as i32;
    c[3..7].copy_from_slice(&rel.to_le_bytes());
    c.extend_from_slice(msg);
    c
}

/// The complete ELF file.
pub fn elf_bytes() -> Vec<u8> {
    let code = code();
    let total = (CODE_OFFSET + code.len()) as u64;
    let mut f = Vec::with_capacity(total as usize);
    // ELF header.
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SYSV
    f.extend_from_slice(&[0; 8]); // e_ident padding
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&(LOAD_ADDR + CODE_OFFSET as u64).to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    f.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    debug_assert_eq!(f.len(), EHDR_SIZE);
    // The one program header: the whole file, loaded at LOAD_ADDR.
    f.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    f.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    f.extend_from_slice(&total.to_le_bytes()); // p_filesz
    f.extend_from_slice(&total.to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    debug_assert_eq!(f.len(), CODE_OFFSET);
    f.extend_from_slice(&code);
    f
}

/// Writes the guest to `path` (mode 0644; it holds no secret).
pub fn write(path: &Path) -> io::Result<()> {
    std::fs::write(path, elf_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_points_at_code_and_message() {
        let f = elf_bytes();
        assert_eq!(&f[..4], b"\x7fELF");
        let entry = u64::from_le_bytes(f[24..32].try_into().unwrap());
        assert_eq!(entry, LOAD_ADDR + CODE_OFFSET as u64);
        // lea's rel32 lands exactly on the marker.
        let rel = i32::from_le_bytes(f[CODE_OFFSET + 3..CODE_OFFSET + 7].try_into().unwrap());
        let msg_at = CODE_OFFSET + 7 + rel as usize;
        assert_eq!(&f[msg_at..], MARKER.as_bytes());
        let filesz = u64::from_le_bytes(f[EHDR_SIZE + 32..EHDR_SIZE + 40].try_into().unwrap());
        assert_eq!(filesz, f.len() as u64);
    }
}

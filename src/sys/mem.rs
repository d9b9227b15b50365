//! Guest memory mappings for the stand-in VMM: anonymous memory for a fresh
//! boot, and a memory file mapped `MAP_PRIVATE` on snapshot load, as
//! Firecracker's File backend does (the file is never written; touched
//! pages become private copies).

use std::fs::File;
use std::io;

use memmap2::{MmapMut, MmapOptions};

/// A writable guest memory mapping, unmapped on drop.
#[derive(Debug)]
pub struct GuestMapping {
    map: MmapMut,
}

impl GuestMapping {
    /// `len` bytes of zeroed anonymous private memory (pages are only
    /// allocated when touched).
    pub fn anon(len: usize) -> io::Result<Self> {
        Ok(Self {
            map: MmapOptions::new().len(len).map_anon()?,
        })
    }

    /// Maps the first `len` bytes of `file` `MAP_PRIVATE` read-write (`rw-p`
    /// in /proc/PID/maps). The caller checks the file's size first: pages
    /// past the end of a file fault with SIGBUS.
    pub fn file_private(file: &File, len: usize) -> io::Result<Self> {
        let size = file.metadata()?.len();
        if (size as u128) < len as u128 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("memory file is {size} bytes, shorter than the {len}-byte guest"),
            ));
        }
        // SAFETY: a MAP_PRIVATE (copy-on-write) mapping: our writes never
        // reach the file, and the length was checked against the file size
        // above. Another process truncating the file could still make
        // accesses fault; the stand-in's memory files are wasp's own and
        // not truncated while a VMM runs, as with Firecracker.
        let map = unsafe { MmapOptions::new().len(len).map_copy(file)? };
        Ok(Self { map })
    }

    /// The memory.
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// The memory, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True for a zero-length mapping.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn file_mapping_is_private_and_size_checked() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        assert!(GuestMapping::file_private(&f, 8193).is_err());
        let mut m = GuestMapping::file_private(&f, 8192).unwrap();
        assert_eq!(m.as_slice()[100], 7);
        m.as_mut_slice()[100] = 9;
        let mut back = vec![0u8; 8192];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back[100], 7, "MAP_PRIVATE writes never reach the file");
        let a = GuestMapping::anon(page_size() * 2).unwrap();
        assert!(a.as_slice().iter().all(|&b| b == 0));
    }
}

//! Loop devices over raw ioctls: `LOOP_CTL_GET_FREE` on `/dev/loop-control`,
//! then `LOOP_CONFIGURE` (one call: backing fd, flags, file name) on the
//! free device, and `LOOP_CLR_FD` to detach. No `losetup`.
//!
//! wasp attaches with `LO_FLAGS_AUTOCLEAR`: the kernel detaches the device
//! when its last opener goes away, so a device that is mounted lives as
//! long as the mount, and one whose attaching process dies before the mount
//! (kill -9) goes with that process's file descriptor.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::cvt;

/// `LOOP_CTL_GET_FREE` from `<linux/loop.h>`.
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `LOOP_CONFIGURE` (Linux 5.8).
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// `LOOP_CLR_FD`.
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
/// `LO_FLAGS_AUTOCLEAR`: detach when the last opener closes.
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_NAME_SIZE`.
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// The path of loop device `n`.
pub fn device_path(n: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{n}"))
}

/// An attached loop device, held open. With autoclear it detaches when
/// this (and every other) open file of it is closed and nothing mounts it.
#[derive(Debug)]
pub struct LoopDevice {
    file: File,
    number: u32,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> PathBuf {
        device_path(self.number)
    }

    /// The open device (holding it attached while autoclear is set).
    pub fn as_file(&self) -> &File {
        &self.file
    }

    /// `N`.
    pub fn number(&self) -> u32 {
        self.number
    }
}

fn open_rw(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
}

/// Attaches `backing` (opened read-write) to a free loop device with
/// `flags` (e.g. [`LO_FLAGS_AUTOCLEAR`]); `name` is recorded as the
/// device's file name (truncated to 63 bytes). Retries when another process
/// takes the free device first.
pub fn attach(backing: &File, flags: u32, name: &Path) -> io::Result<LoopDevice> {
    let ctl = open_rw(Path::new("/dev/loop-control"))?;
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = cvt(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) })?;
        let number = n as u32;
        let dev = match open_rw(&device_path(number)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{} does not exist (is /dev a devtmpfs?)",
                        device_path(number).display()
                    ),
                ))
            }
            Err(e) => return Err(e),
        };
        let mut file_name = [0u8; LO_NAME_SIZE];
        let bytes = name.as_os_str().as_encoded_bytes();
        let k = bytes.len().min(LO_NAME_SIZE - 1);
        file_name[..k].copy_from_slice(&bytes[..k]);
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: file_name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `cfg` is a live, fully initialised `struct loop_config`;
        // the kernel only reads it during the call.
        match cvt(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &cfg) }) {
            Ok(_) => return Ok(LoopDevice { file: dev, number }),
            // Another process configured it between GET_FREE and here.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Detaches loop device `n` (`LOOP_CLR_FD`). A device that is still open
/// elsewhere (or mounted) is marked autoclear instead and goes with its
/// last opener. `Ok(false)`: it was not attached.
pub fn detach(n: u32) -> io::Result<bool> {
    let dev = match open_rw(&device_path(n)) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    // SAFETY: LOOP_CLR_FD takes no argument.
    match cvt(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD as _, 0) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every attached loop device and its backing file, from sysfs
/// (`/sys/block/loopN/loop/backing_file`). The kernel appends
/// ` (deleted)` to a file unlinked while attached.
pub fn attached() -> io::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")? {
        let e = e?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("loop"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        match std::fs::read_to_string(e.path().join("loop/backing_file")) {
            Ok(t) => out.push((n, PathBuf::from(t.trim_end_matches('\n')))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_match_the_kernel_abi() {
        // <linux/loop.h>: loop_info64 is 232 bytes, loop_config 304.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}

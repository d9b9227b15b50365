//! userfaultfd: probed by `wasp doctor`; used for Firecracker's Uffd memory
//! backend.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::cvt;

/// Opens a userfaultfd (`userfaultfd(2)`, falling back to /dev/userfaultfd
/// when the syscall is restricted).
pub fn open() -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd takes only a flags integer.
    match cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) }) {
        // SAFETY: the kernel returned a fresh fd that we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            if std::path::Path::new("/dev/userfaultfd").exists() {
                // The /dev node hands out the fd through an ioctl; its mere
                // presence with rw access is what the probe needs.
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/userfaultfd")?;
                Ok(f.into())
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn open_does_not_panic() {
        // Root on these machines can open it; elsewhere it may be EPERM.
        match super::open() {
            Ok(_) => {}
            Err(e) => assert!(e.raw_os_error().is_some()),
        }
    }
}

//! poll(2) over a few fds.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::cvt;

/// The raw fd of anything that has one.
pub fn raw(fd: &impl AsRawFd) -> RawFd {
    fd.as_raw_fd()
}

/// Waits up to `timeout_ms` (-1: forever) until one of `fds` is readable.
/// Returns the index of the first readable fd, or `None` on timeout. EINTR
/// is retried.
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Option<usize>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: pfds is a live, correctly sized array of pollfd.
        match cvt(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) })
        {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(pfds.iter().position(|p| p.revents != 0)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// poll(2) over caller-built pollfds; returns how many are ready (0 on
/// timeout). EINTR counts as 0 ready.
pub fn poll_many(pfds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: pfds is a live, correctly sized slice of pollfd.
    match cvt(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) }) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

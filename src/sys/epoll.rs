//! epoll(7) over many fds: the engine's reaper waits on the pidfd of every
//! live clone at once, and on an eventfd, in one blocking call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes one integer flag and returns a new fd
        // or -1.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: on success the kernel returned a fresh fd that we now own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for readability (level-triggered), reporting `token`.
    /// A closed fd leaves the set by itself (when no duplicate of it is
    /// open).
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: ev is a live epoll_event on our stack; both fds are open.
        cvt(unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(())
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL (since 2.6.9);
        // both fds are open.
        cvt(unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) for events; returns the tokens
    /// of the ready fds (at most `max`). EINTR returns no tokens.
    pub fn wait(&self, max: usize, timeout_ms: i32) -> io::Result<Vec<u64>> {
        let max = max.clamp(1, 1024);
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; max];
        // SAFETY: evs is a live array of `max` epoll_events.
        let n = match cvt(unsafe {
            libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), max as i32, timeout_ms)
        }) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        Ok(evs[..n].iter().map(|e| e.u64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::tap::EventFd;
    use std::os::fd::AsFd;

    #[test]
    fn reports_the_token_of_a_ready_fd_only() {
        let ep = Epoll::new().unwrap();
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        ep.add(a.as_fd(), 7).unwrap();
        ep.add(b.as_fd(), 9).unwrap();
        assert!(ep.wait(8, 0).unwrap().is_empty());
        b.signal().unwrap();
        assert_eq!(ep.wait(8, -1).unwrap(), vec![9]);
        ep.delete(b.as_fd()).unwrap();
        assert!(ep.wait(8, 0).unwrap().is_empty());
    }
}

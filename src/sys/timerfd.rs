//! timerfd(2) on the real-time clock, armed at an absolute Unix time: the
//! engine's reaper waits on it in the same epoll as the clones' pidfds, so
//! a TTL ends without any periodic wake-up.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// A non-blocking, close-on-exec timerfd on `CLOCK_REALTIME`.
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    /// A new, disarmed timer.
    pub fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes two integer arguments and returns a
        // new fd or -1.
        let fd = cvt(unsafe {
            libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
        })?;
        // SAFETY: on success the kernel returned a fresh fd that we now own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Arms the timer to fire once at `epoch_ms` (Unix time, ms; a time in
    /// the past fires at once), or disarms it with `None`.
    pub fn arm_at(&self, epoch_ms: Option<u64>) -> io::Result<()> {
        let value = match epoch_ms {
            // 0 would disarm: the earliest real time is 1 ns.
            Some(ms) => libc::timespec {
                tv_sec: (ms / 1000) as libc::time_t,
                tv_nsec: ((ms % 1000) * 1_000_000).max(u64::from(ms == 0)) as libc::c_long,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: spec is a live itimerspec on our stack; a null old value
        // is allowed.
        cvt(unsafe {
            libc::timerfd_settime(
                self.0.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Clears an expiry (the fd stops being readable); the number of
    /// expiries since the last read, 0 when none.
    pub fn drain(&self) -> io::Result<u64> {
        let mut n = 0u64;
        // SAFETY: n is an 8-byte buffer on our stack, the size timerfd
        // reads need.
        let r = unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        match cvt(r) {
            Ok(_) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for TimerFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::epoll::Epoll;

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[test]
    fn fires_once_at_an_absolute_time_and_disarms() {
        let t = TimerFd::new().unwrap();
        let ep = Epoll::new().unwrap();
        ep.add(t.as_fd(), 7).unwrap();
        // Disarmed: nothing to read.
        assert_eq!(ep.wait(4, 0).unwrap(), Vec::<u64>::new());
        assert_eq!(t.drain().unwrap(), 0);
        // A deadline in the past fires at once.
        t.arm_at(Some(now_ms() - 1000)).unwrap();
        assert_eq!(ep.wait(4, -1).unwrap(), vec![7]);
        assert_eq!(t.drain().unwrap(), 1);
        assert_eq!(ep.wait(4, 0).unwrap(), Vec::<u64>::new());
        // Epoch 0 is in the past too (never "disarm").
        t.arm_at(Some(0)).unwrap();
        assert_eq!(ep.wait(4, -1).unwrap(), vec![7]);
        t.drain().unwrap();
        // A deadline far ahead, then disarmed: never fires.
        t.arm_at(Some(now_ms() + 3_600_000)).unwrap();
        t.arm_at(None).unwrap();
        assert_eq!(ep.wait(4, 0).unwrap(), Vec::<u64>::new());
    }
}

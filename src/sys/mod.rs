//! The one place for raw syscalls and `unsafe`.
//!
//! Every `unsafe` block in wasp lives below this module and carries a
//! `// SAFETY:` comment. Everything above it works with safe wrappers that
//! return `std::io::Result`. Return codes go through [`cvt`] so that errno is
//! captured in exactly one way.

pub mod epoll;
pub mod fs;
pub mod inotify;
pub mod loopdev;
pub mod mem;
pub mod mntns;
pub mod mount;
pub mod netns;
pub mod notify;
pub mod nsowner;
pub mod pagecache;
pub mod pidfd;
pub mod poll;
pub mod rlimit;
pub mod sock;
pub mod spawn;
pub mod tap;
pub mod timerfd;
pub mod uffd;
pub mod uffd_mem;
pub mod uring;

use std::io;

/// `path` as a C string for a syscall; a path holding a NUL byte is
/// `InvalidInput`, naming it.
pub fn c_path(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    c_str(path.as_os_str())
}

/// `s` as a C string for a syscall; one holding a NUL byte is
/// `InvalidInput`, naming it.
pub fn c_str(s: &std::ffi::OsStr) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} holds a NUL byte"),
        )
    })
}

/// Turns a C-style `-1 and errno` return into an `io::Result`.
pub fn cvt<T: IsMinusOne>(ret: T) -> io::Result<T> {
    if ret.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Integer return types of raw syscalls.
pub trait IsMinusOne: Copy {
    /// True when the value is the error sentinel `-1`.
    fn is_minus_one(self) -> bool;
}

impl IsMinusOne for i32 {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

impl IsMinusOne for i64 {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

impl IsMinusOne for isize {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

/// Stops the whole process with SIGSTOP (the test stop points of
/// [`crate::testhook`]); it goes on when sent SIGCONT, or dies by SIGKILL.
pub fn stop_self() -> io::Result<()> {
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP).map_err(io::Error::from)
}

/// CPU time the calling thread has used (user + system), for attributing
/// wasp's own work in benchmarks. Zero if the clock cannot be read.
pub fn thread_cpu_time() -> std::time::Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(std::time::Duration::from)
        .unwrap_or_default()
}

/// True when the effective uid is 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvt_maps_minus_one_to_errno() {
        // SAFETY: close(-1) touches no memory; it only fails with EBADF.
        let r = cvt(unsafe { libc::close(-1) });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(cvt(5i32).unwrap(), 5);
        assert_eq!(cvt(0isize).unwrap(), 0);
    }
}

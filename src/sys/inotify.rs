//! inotify with raw watch descriptors, so that events read through io_uring
//! can be parsed from plain bytes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::cvt;

/// `IN_CREATE | IN_MOVED_TO`: a name appeared in a watched directory.
pub const IN_APPEAR: u32 = libc::IN_CREATE | libc::IN_MOVED_TO;

/// A nonblocking, close-on-exec inotify instance.
pub fn init() -> io::Result<OwnedFd> {
    // SAFETY: inotify_init1 takes only flags.
    let fd = cvt(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
    // SAFETY: a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watches `dir` for `mask`; returns the watch descriptor.
pub fn add_watch(ino: &OwnedFd, dir: &Path, mask: u32) -> io::Result<i32> {
    let c = super::c_path(dir)?;
    // SAFETY: c is a live NUL-terminated path.
    cvt(unsafe { libc::inotify_add_watch(ino.as_raw_fd(), c.as_ptr(), mask) })
}

/// Removes a watch (errors ignored by callers that are tearing down).
pub fn rm_watch(ino: &OwnedFd, wd: i32) -> io::Result<()> {
    // SAFETY: inotify_rm_watch takes only integers.
    cvt(unsafe { libc::inotify_rm_watch(ino.as_raw_fd(), wd) })?;
    Ok(())
}

/// Reads pending events without blocking; empty when none.
pub fn read_events(ino: &OwnedFd) -> io::Result<Vec<(i32, u32)>> {
    let mut buf = [0u8; 4096];
    // SAFETY: buf is a live writable buffer of buf.len() bytes.
    match cvt(unsafe { libc::read(ino.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }) {
        Ok(n) => Ok(parse_events(&buf[..n as usize])),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Parses `struct inotify_event` records into `(wd, mask)` pairs. Stops at
/// a truncated record.
pub fn parse_events(mut b: &[u8]) -> Vec<(i32, u32)> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let wd = i32::from_ne_bytes(b[0..4].try_into().unwrap());
        let mask = u32::from_ne_bytes(b[4..8].try_into().unwrap());
        let len = u32::from_ne_bytes(b[12..16].try_into().unwrap()) as usize;
        if b.len() < 16 + len {
            break;
        }
        out.push((wd, mask));
        b = &b[16 + len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_file_appear() {
        let dir = tempfile::tempdir().unwrap();
        let ino = init().unwrap();
        let wd = add_watch(&ino, dir.path(), IN_APPEAR).unwrap();
        assert!(read_events(&ino).unwrap().is_empty());
        std::fs::write(dir.path().join("api.sock"), b"").unwrap();
        let ev = read_events(&ino).unwrap();
        assert!(
            ev.iter().any(|(w, m)| *w == wd && m & libc::IN_CREATE != 0),
            "{ev:?}"
        );
        rm_watch(&ino, wd).unwrap();
        assert!(parse_events(&[1, 2, 3]).is_empty());
    }
}

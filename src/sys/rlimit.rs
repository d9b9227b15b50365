//! RLIMIT_NOFILE: every clone costs wasp a handful of fds (API socket,
//! pidfd, netns fd, netlink sockets), so dense batches need headroom.

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use std::io;

/// `(soft, hard)` of RLIMIT_NOFILE.
pub fn nofile() -> io::Result<(u64, u64)> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)
}

/// Raises the soft limit to at least `want` (capped at the hard limit) and
/// returns the new soft limit. Never lowers it.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    let (soft, hard) = nofile()?;
    let target = want.min(hard);
    if target <= soft {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(io::Error::from)?;
    Ok(target)
}

/// Number of fds this process has open now.
pub fn open_fds() -> io::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_never_lowers() {
        let (soft, _) = nofile().unwrap();
        assert_eq!(raise_nofile(1).unwrap(), soft);
        let raised = raise_nofile(soft + 1).unwrap();
        assert!(raised >= soft);
        assert!(open_fds().unwrap() > 2);
    }
}

//! Slot leases: which process owns a slot, across processes.
//!
//! Slots are kernel objects with global names, so any number of wasp
//! processes (CLI runs, the service) can see one pool. A process owns a
//! slot while it holds that slot's **lease**: an exclusive `flock` on
//! `LEASE_DIR/<slot netns>.lease`. It takes the lease before it builds or
//! adopts the slot and keeps it while the slot sits in its pool, free or
//! taken; another process skips a leased slot (never builds, adopts,
//! recycles or removes it). The kernel drops the lock when its holder
//! dies, SIGKILL included, so a crashed holder's slots come back through
//! the next reconcile.
//!
//! A clone outlives the command that spawned it; once that command has
//! exited, its slot is unleased but its tap is attached (the VMM holds
//! it), and a pool that adopts the slot sees the busy tap and sets it aside
//! ([`crate::pipeline::pool`]). The tap is attached only by a VMM that a lease holder
//! launched, so "unleased and tap free" means free.
//!
//! Lease files are removed only by a holder, after it has removed the
//! slot; a taker checks that the file it locked is still the one at the
//! path, so a file unlinked under it is never mistaken for a lease.

use std::fs::{DirBuilder, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::sys::fs::{flock, open_lock_file, FlockMode};

/// Where every slot's lease file lives: one directory for the host, since
/// slot names are global whatever the state dir.
pub const LEASE_DIR: &str = "/run/wasp/slots";

/// Holds the host-side set-up lock (an exclusive `flock` on
/// `dir/host-setup.lock`, waiting for it) until the file is dropped. Pool
/// set-up (host netns, bridge, egress) takes it, so two processes never
/// race to make the same host objects (a bridge made by the other one and
/// not marked yet looks foreign).
pub fn host_setup_lock(dir: &Path) -> io::Result<File> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let file = open_lock_file(&dir.join("host-setup.lock"))?;
    flock(&file, FlockMode::Exclusive, true)?;
    Ok(file)
}

/// The lease on one slot; dropping it releases the slot to other processes.
#[derive(Debug)]
pub struct Lease {
    /// The locked file and its path; `None` for a lease without a file
    /// ([`Lease::detached`], for fakes).
    held: Option<(File, PathBuf)>,
}

impl Lease {
    /// The lease file of the slot whose namespace is `netns`, in `dir`
    /// ([`LEASE_DIR`] but in tests).
    pub fn path_of(dir: &Path, netns: &str) -> PathBuf {
        dir.join(format!("{netns}.lease"))
    }

    /// Takes the lease of the slot whose namespace is `netns` (its file in
    /// `dir`), or `None` when another process holds it.
    pub fn try_take(dir: &Path, netns: &str) -> io::Result<Option<Lease>> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let path = Self::path_of(dir, netns);
        loop {
            let mut file = open_lock_file(&path)?;
            if !flock(&file, FlockMode::Exclusive, false)? {
                return Ok(None);
            }
            // The holder before us may have removed the file after we
            // opened it: a lock on an unlinked file is no lease.
            let locked = file.metadata()?;
            match std::fs::symlink_metadata(&path) {
                Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            // Who holds it, for messages; the lock, not this text, is the
            // lease.
            file.set_len(0)?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
            return Ok(Some(Lease {
                held: Some((file, path)),
            }));
        }
    }

    /// Removes the leftover slot `netns` (its namespace name; the kernel
    /// objects inside go with it) and its lease file, unless another
    /// process holds the lease: then `Ok(false)` and nothing is touched.
    pub fn remove_leftover_slot(dir: &Path, netns: &str) -> io::Result<bool> {
        let Some(lease) = Self::try_take(dir, netns)? else {
            return Ok(false);
        };
        crate::sys::netns::delete_named(netns)?;
        lease.remove()?;
        Ok(true)
    }

    /// A lease with no file behind it, for fakes of the slot operations.
    pub fn detached() -> Lease {
        Lease { held: None }
    }

    /// The pid written by the process that holds (or last held) the lease
    /// of `netns`, for messages.
    pub fn holder(dir: &Path, netns: &str) -> Option<u32> {
        let mut f = File::open(Self::path_of(dir, netns)).ok()?;
        let mut s = String::new();
        f.rewind().ok()?;
        f.read_to_string(&mut s).ok()?;
        s.trim().parse().ok()
    }

    /// Removes the lease file, then releases the lease: for a slot that is
    /// gone. Nobody else can hold the file meanwhile; a taker that opened
    /// it before the removal finds it unlinked and retries.
    pub fn remove(self) -> io::Result<()> {
        match &self.held {
            Some((_, path)) => match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes and holds the lock of `path` on a new open file, waiting for
    /// it: a child another test forks holds a copy of every fd of this
    /// process until it execs, and with it any lock just released.
    fn wait_for_lock(path: &Path) -> File {
        let f = File::open(path).unwrap();
        assert!(flock(&f, FlockMode::Exclusive, true).unwrap());
        f
    }

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = Lease::try_take(d, "wasp-p-0").unwrap().expect("free lease");
        // A second open file description is a second holder: refused.
        assert!(Lease::try_take(d, "wasp-p-0").unwrap().is_none());
        assert!(Lease::try_take(d, "wasp-p-1").unwrap().is_some());
        assert_eq!(Lease::holder(d, "wasp-p-0"), Some(std::process::id()));
        drop(a);
        // A child another test forks meanwhile holds a copy of every fd
        // until it execs, and with it `a`'s lock: wait that out first.
        drop(wait_for_lock(&Lease::path_of(d, "wasp-p-0")));
        let b = Lease::try_take(d, "wasp-p-0")
            .unwrap()
            .expect("released on drop");
        b.remove().unwrap();
        assert!(!Lease::path_of(d, "wasp-p-0").exists());
    }

    #[test]
    fn a_lock_on_a_removed_file_is_not_a_lease() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = Lease::try_take(d, "wasp-p-0").unwrap().unwrap();
        // A taker that opened the file before the holder removed it.
        let stale = File::open(Lease::path_of(d, "wasp-p-0")).unwrap();
        a.remove().unwrap();
        // Waits, not tries (see `wait_for_lock`).
        assert!(flock(&stale, FlockMode::Exclusive, true).unwrap());
        // The stale lock does not block a real taker, which gets a new file.
        let b = Lease::try_take(d, "wasp-p-0")
            .unwrap()
            .expect("new file, new lease");
        assert!(Lease::path_of(d, "wasp-p-0").exists());
        b.remove().unwrap();
    }

    #[test]
    fn a_dead_holder_releases_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        drop(Lease::try_take(d, "wasp-p-0").unwrap().unwrap());
        // A child holds the lock on its own open of the file, then dies.
        let path = Lease::path_of(d, "wasp-p-0");
        let mut child = std::process::Command::new("flock")
            .arg("--exclusive")
            // Only flock(1) itself holds the lock, not `cat`.
            .arg("--close")
            .arg(&path)
            .arg("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run flock(1)");
        // `cat` runs only once flock(1) holds the lock: wait for its echo.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"x").unwrap();
        let mut out = [0u8; 1];
        child.stdout.as_mut().unwrap().read_exact(&mut out).unwrap();
        assert!(Lease::try_take(d, "wasp-p-0").unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
        drop(stdin);
        assert!(Lease::try_take(d, "wasp-p-0").unwrap().is_some());
    }
}

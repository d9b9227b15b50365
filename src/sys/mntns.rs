//! Template mount namespaces for VMMs.
//!
//! A VMM's private mount namespace is a copy of a mount table: with
//! `unshare(CLONE_NEWNS)` in the child, of wasp's own, which holds every
//! mount of the host, among them one nsfs bind mount per named network
//! namespace under `/run/netns` (one per slot: a pool of 1 000 slots makes
//! every launch copy 1 000 mounts, and every copy pins those namespaces
//! until the VMM exits). A template is a mount namespace made once (per
//! batch) on a throwaway thread, in which such mounts are detached; each
//! child then `setns`es into it and unshares from it (`sys::spawn`),
//! copying a small table.
//!
//! The template namespace lives as long as the fd [`make_template`]
//! returns (close-on-exec, so no VMM holds it); nothing is named or
//! mounted for it. Its mounts are made slaves of wasp's right after the
//! unshare, so unmounts in wasp's namespace still reach the template,
//! while nothing done inside it (or in a copy of it) reaches wasp's.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use super::cvt;

/// What a template's preparation may do, inside the template only: the
/// value exists only on the template's own thread, after the unshare, and
/// cannot leave it (not `Send`), so these calls never change wasp's own
/// mount namespace.
pub struct InTemplate {
    _on_this_thread: PhantomData<*const ()>,
}

impl InTemplate {
    /// The template's mount table (`/proc/thread-self/mountinfo`).
    pub fn mountinfo(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/thread-self/mountinfo")
    }

    /// Detaches the mount on `dir` (and everything under it) from the
    /// template (`umount2(MNT_DETACH)`). `Ok(false)`: `dir` is no mount
    /// point (any more).
    pub fn detach(&self, dir: &Path) -> io::Result<bool> {
        let c = super::c_path(dir)?;
        // SAFETY: c is a live NUL-terminated path; umount2 only reads it.
        // This thread is in the template namespace (see `make_template`),
        // so only the template loses the mount.
        match cvt(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Mounts the private drive tmpfs (see `sys::spawn`) on `dir`, which
    /// must exist.
    pub fn mount_drive_tmpfs(&self, dir: &Path) -> io::Result<()> {
        super::mount::mount_drive_tmpfs(&super::c_path(dir)?)
    }
}

/// Makes a template mount namespace: on a fresh thread, unshares the mount
/// namespace, makes every mount a slave (nothing propagates back to
/// wasp's), runs `prepare` in it and returns an fd on it.
pub fn make_template<F>(prepare: F) -> io::Result<OwnedFd>
where
    F: FnOnce(&InTemplate) -> io::Result<()> + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            // Only this thread moves: unshare(CLONE_NEWNS) also gives it
            // its own root/cwd (fs_struct); wasp's other threads stay.
            super::mount::unshare_slave_copy()?;
            prepare(&InTemplate {
                _on_this_thread: PhantomData,
            })?;
            // SAFETY: a NUL-terminated literal path; open only reads it.
            let fd = cvt(unsafe {
                libc::open(
                    c"/proc/thread-self/ns/mnt".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            })?;
            // SAFETY: fd is fresh and owned by us alone.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

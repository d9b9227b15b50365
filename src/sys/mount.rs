//! Mount calls that both a VMM's child and a template's thread make: a
//! private copy of the mount table made a slave, and the drive tmpfs. A
//! leaf of `sys`: `sys::spawn` (the child) and `sys::mntns` (templates)
//! both use it, and it uses neither.

use std::ffi::CStr;
use std::io;

use super::cvt;

/// The source and options of the private tmpfs that holds the drive bind
/// targets (in a child, or in a template namespace).
const DRIVE_TMPFS_SOURCE: &CStr = c"wasp-drives";
const DRIVE_TMPFS_DATA: &CStr = c"mode=0700,size=64k";

/// Mounts the private drive tmpfs on `dir` in the calling task's mount
/// namespace. Async-signal-safe (one raw mount call), so a child may call
/// it; the only other caller is a template's own thread (`sys::mntns`).
pub fn mount_drive_tmpfs(dir: &CStr) -> io::Result<()> {
    // SAFETY: every pointer is a live NUL-terminated string; mount only
    // reads them.
    cvt(unsafe {
        libc::mount(
            DRIVE_TMPFS_SOURCE.as_ptr(),
            dir.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            DRIVE_TMPFS_DATA.as_ptr().cast(),
        )
    })
    .map(drop)
}

/// Gives the calling task its own copy of its mount namespace, every mount
/// a slave: mounts made in the copy propagate nowhere. Two raw syscalls and
/// no allocation, so a vfork child may call it (`sys::spawn`).
pub fn unshare_slave_copy() -> io::Result<()> {
    // SAFETY: unshare only reads its flags.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    // SAFETY: NUL-terminated literals; null fstype/data pointers are allowed.
    cvt(unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    })
    .map(drop)
}

//! Mount calls that both a VMM's child and a template's thread make: a
//! private copy of the mount table made a slave, and the drive tmpfs. A
//! leaf of `sys`: `sys::spawn` (the child) and `sys::mntns` (templates)
//! both use it, and it uses neither. Also the plain mount and unmount of
//! a block device (the reflink store of `pipeline::storage::store`).

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

/// Mounts block device `source` of type `fstype` on `target` with `flags`
/// (`MS_*`) and filesystem options `data`.
pub fn mount_device(
    source: &std::path::Path,
    target: &std::path::Path,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: &CStr,
) -> io::Result<()> {
    let src = super::c_path(source)?;
    let dst = super::c_path(target)?;
    // SAFETY: every pointer is a live NUL-terminated string; mount only
    // reads them.
    cvt(unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

/// Unmounts `target` (`umount2` with `flags`, e.g. 0 or `MNT_DETACH`).
pub fn unmount(target: &std::path::Path, flags: libc::c_int) -> io::Result<()> {
    let dst = super::c_path(target)?;
    // SAFETY: a live NUL-terminated path; umount2 only reads it.
    cvt(unsafe { libc::umount2(dst.as_ptr(), flags) }).map(drop)
}

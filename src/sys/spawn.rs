//! Starting a VMM process directly inside a slot: `setns` into the slot's
//! network namespace and a private mount namespace in which each drive's
//! recorded path resolves to this clone's own file, all in the child between
//! fork and exec. No `ip netns exec`, no shell.
//!
//! Between fork and exec only async-signal-safe calls are allowed, so every
//! path is converted to a `CString` before the fork and the child makes raw
//! syscalls only.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

/// What the child does to itself before exec.
#[derive(Debug, Default)]
pub struct ChildSetup {
    netns: Option<OwnedFd>,
    /// tmpfs mount point that holds the drive bind targets.
    drive_dir: Option<CString>,
    /// (clone's file, recorded path) pairs, bind-mounted in order.
    binds: Vec<(CString, CString)>,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} holds a NUL byte", p.display()),
        )
    })
}

impl ChildSetup {
    /// Nothing to do: the child inherits the parent's namespaces.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enter this network namespace (an fd on `/run/netns/NAME`).
    pub fn netns(mut self, ns: OwnedFd) -> Self {
        self.netns = Some(ns);
        self
    }

    /// Give the child its own mount namespace in which `recorded` (a path
    /// under `drive_dir`) is this clone's `file`. `drive_dir` must exist; a
    /// private tmpfs is mounted on it in the child only.
    pub fn bind_drive(
        mut self,
        drive_dir: &Path,
        file: &Path,
        recorded: &Path,
    ) -> io::Result<Self> {
        if !recorded.starts_with(drive_dir) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "drive path {} is not under {}",
                    recorded.display(),
                    drive_dir.display()
                ),
            ));
        }
        self.drive_dir = Some(cstr(drive_dir)?);
        self.binds.push((cstr(file)?, cstr(recorded)?));
        Ok(self)
    }
}

/// Raw setup run in the forked child. Async-signal-safe: raw syscalls on
/// data prepared before the fork, no allocation.
fn child_setup(
    netns: Option<RawFd>,
    drive_dir: Option<&CString>,
    binds: &[(CString, CString)],
) -> io::Result<()> {
    use super::cvt;
    if let Some(fd) = netns {
        // SAFETY: setns only reads its integer arguments; fd is open in the
        // child (inherited, and not CLOEXEC-closed before exec).
        cvt(unsafe { libc::setns(fd, libc::CLONE_NEWNET) })?;
    }
    if let Some(dir) = drive_dir {
        // SAFETY: unshare only reads its flags.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
        // SAFETY: all pointers are NUL-terminated literals or CStrings that
        // outlive the call; a null data pointer is allowed.
        cvt(unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            )
        })?;
        // SAFETY: as above; the data string is a NUL-terminated literal.
        cvt(unsafe {
            libc::mount(
                c"wasp-drives".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0700,size=64k".as_ptr().cast(),
            )
        })?;
        for (src, dst) in binds {
            // SAFETY: dst is a live CString; open creates the bind target.
            let fd = cvt(unsafe {
                libc::open(
                    dst.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o600,
                )
            })?;
            // SAFETY: fd was just returned by open and is closed once.
            unsafe { libc::close(fd) };
            // SAFETY: src and dst are live CStrings; null fstype/data are
            // allowed for MS_BIND.
            cvt(unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            })?;
        }
    }
    Ok(())
}

/// Spawns `cmd` after applying `setup` in the child. The child also gets
/// its own process group.
pub fn spawn(cmd: &mut Command, setup: ChildSetup) -> io::Result<Child> {
    let ChildSetup {
        netns,
        drive_dir,
        binds,
    } = setup;
    let netns_raw = netns.as_ref().map(|f| f.as_raw_fd());
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls
    // `child_setup`, which makes raw async-signal-safe syscalls on data
    // (CStrings, fds) prepared before the fork and moved into the closure.
    unsafe {
        cmd.pre_exec(move || child_setup(netns_raw, drive_dir.as_ref(), &binds));
    }
    let child = cmd.spawn();
    // The netns fd is CLOEXEC, so the VMM does not keep it; ours closes here.
    drop(netns);
    child
}

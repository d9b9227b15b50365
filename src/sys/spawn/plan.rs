//! The child's side of a spawn: the [`ChildPlan`] prepared before the
//! clone, and the steps the child runs from it until exec. Only
//! async-signal-safe raw syscalls on that prepared data: no allocation, no
//! lock (a vfork-style child shares wasp's memory). A failed step is sent
//! to the parent as (step, errno) and read back by [`child_error`].

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::cvt;

/// A step of the child, reported with its errno when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    CgroupProcs = 1,
    Signals = 2,
    ProcessGroup = 3,
    Stdio = 4,
    Netns = 5,
    MountNs = 6,
    Tmpfs = 7,
    Bind = 8,
    Exec = 9,
    Template = 10,
    Cwd = 11,
    Remount = 12,
    FdTable = 13,
    Rlimit = 14,
}

impl Step {
    fn from_u32(v: u32) -> Option<Self> {
        use Step::*;
        [
            CgroupProcs,
            Signals,
            ProcessGroup,
            Stdio,
            Netns,
            MountNs,
            Tmpfs,
            Bind,
            Exec,
            Template,
            Cwd,
            Remount,
            FdTable,
            Rlimit,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    fn what(self) -> &'static str {
        match self {
            Step::CgroupProcs => "writing itself to its cgroup's cgroup.procs",
            Step::Signals => "resetting its signal handlers and mask",
            Step::ProcessGroup => "making its own process group",
            Step::Stdio => "setting up stdin/stdout/stderr",
            Step::Netns => "entering the slot's network namespace (setns)",
            Step::MountNs => "making its private mount namespace",
            Step::Tmpfs => "mounting the private drive directory",
            Step::Bind => "bind-mounting a file into its mount namespace",
            Step::Exec => "exec",
            Step::Template => "entering the template mount namespace (setns)",
            Step::Cwd => "returning to wasp's working directory in its mount namespace",
            Step::Remount => "remounting a bind read-only, nosuid, nodev, noexec",
            Step::Rlimit => "lowering its RLIMIT_NOFILE",
            Step::FdTable => {
                "making its own fd table (close_range CLOSE_RANGE_UNSHARE, pidfd_getfd)"
            }
        }
    }
}

/// Which mount namespace the child ends up in.
#[derive(Clone, Copy)]
pub(super) enum MountPlan<'a> {
    /// wasp's own (nothing to do).
    Inherit,
    /// A private copy of wasp's own, made a slave.
    CopyOfOurs,
    /// A private copy of a template's (`ns`), then back to `cwd`.
    FromTemplate { ns: RawFd, cwd: Option<&'a CString> },
}

/// Everything the child touches, as raw values prepared before the clone.
/// In a vfork-style child this lives on the parent thread's stack, which
/// sleeps until the child execs or exits; the child only reads it.
pub(super) struct ChildPlan<'a> {
    pub(super) program: &'a CString,
    pub(super) argv: &'a [*const libc::c_char],
    pub(super) envp: &'a [*const libc::c_char],
    pub(super) stdio: [RawFd; 3],
    pub(super) err_pipe: RawFd,
    pub(super) procs: Option<RawFd>,
    pub(super) netns: Option<RawFd>,
    pub(super) mounts: MountPlan<'a>,
    /// Mount the private drive tmpfs here (not when the template has it).
    pub(super) drive_tmpfs: Option<&'a CString>,
    pub(super) binds: &'a [(CString, CString, libc::c_ulong)],
    /// RLIMIT_NOFILE to set before exec, if any.
    pub(super) nofile: Option<libc::rlimit>,
    /// The child shares wasp's fd table (`CLONE_FILES`, vfork-style only)
    /// and makes its own just before exec ([`own_fd_table`]).
    pub(super) shared_fds: bool,
    /// wasp's pid, whose fds a child with `shared_fds` copies.
    pub(super) parent: libc::pid_t,
    /// (step, errno) of a child that failed after leaving the shared fd
    /// table but before it had its own copy of the error pipe; 0 if not.
    pub(super) lost: &'a AtomicU64,
}

type ChildResult = Result<(), (Step, i32)>;

fn at(step: Step) -> impl Fn(io::Error) -> (Step, i32) {
    move |e| (step, e.raw_os_error().unwrap_or(libc::EINVAL))
}

/// Highest signal number on Linux (`_NSIG - 1`).
const LAST_SIGNAL: i32 = 64;

/// Resets every caught signal to its default (ignored ones stay ignored,
/// as exec would keep them, except SIGPIPE), then clears the mask. The
/// handlers must go first: in a vfork-style child a handler of wasp's
/// would run on wasp's memory. glibc's two internal signals (32, 33)
/// cannot be changed through `sigaction`; nothing sends them to a process
/// that is not one of wasp's threads, and exec resets them.
fn reset_signals() -> ChildResult {
    for sig in 1..=LAST_SIGNAL {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: an all-zero sigaction is a valid value for the kernel to
        // overwrite.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only reads the current one into `old`,
        // a valid out pointer on our stack.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        let caught = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
        if caught || sig == libc::SIGPIPE {
            // SAFETY: an all-zero sigaction with SIG_DFL (0) is the default
            // disposition with no flags and an empty mask.
            let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            dfl.sa_sigaction = libc::SIG_DFL;
            // SAFETY: dfl is initialised; a null old-action pointer is
            // allowed.
            cvt(unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) })
                .map_err(at(Step::Signals))?;
        }
    }
    // SAFETY: an all-zero sigset_t is a valid value; sigemptyset
    // initialises it in place.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t on our stack.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: set is initialised; a null old-set pointer is allowed.
    cvt(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) })
        .map_err(at(Step::Signals))?;
    Ok(())
}

/// The child's whole life: async-signal-safe raw syscalls on data prepared
/// before the clone, no allocation, no lock, then exec. Returns only on
/// failure.
fn child_steps(p: &ChildPlan, err: &mut RawFd) -> ChildResult {
    if let Some(fd) = p.procs {
        // "0" is the writing process itself.
        // SAFETY: the buffer is a 1-byte literal; fd is open (inherited).
        let n = cvt(unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) })
            .map_err(at(Step::CgroupProcs))?;
        if n != 1 {
            return Err((Step::CgroupProcs, libc::EIO));
        }
    }
    reset_signals()?;
    // SAFETY: setpgid only reads its integer arguments.
    cvt(unsafe { libc::setpgid(0, 0) }).map_err(at(Step::ProcessGroup))?;
    if let Some(fd) = p.netns {
        // SAFETY: setns only reads its integer arguments; fd is open in the
        // child (inherited; CLOEXEC only closes it at exec).
        cvt(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }).map_err(at(Step::Netns))?;
    }
    match p.mounts {
        MountPlan::Inherit => {}
        MountPlan::CopyOfOurs => {
            crate::sys::mount::unshare_slave_copy().map_err(at(Step::MountNs))?;
        }
        MountPlan::FromTemplate { ns, cwd } => {
            // The child has its own fs_struct (no CLONE_FS), as setns into
            // a mount namespace requires. The template's mounts are all
            // slaves or private (`sys::mntns`), and so are their copies:
            // nothing the child mounts propagates anywhere.
            // SAFETY: setns only reads its integer arguments; ns is open in
            // the child (inherited; CLOEXEC only closes it at exec).
            cvt(unsafe { libc::setns(ns, libc::CLONE_NEWNS) }).map_err(at(Step::Template))?;
            // SAFETY: unshare only reads its flags.
            cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map_err(at(Step::MountNs))?;
            if let Some(dir) = cwd {
                // setns moved the working directory to the namespace's root.
                // SAFETY: dir is a live CString.
                cvt(unsafe { libc::chdir(dir.as_ptr()) }).map_err(at(Step::Cwd))?;
            }
        }
    }
    if let Some(dir) = p.drive_tmpfs {
        crate::sys::mount::mount_drive_tmpfs(dir).map_err(at(Step::Tmpfs))?;
    }
    for (src, dst, remount) in p.binds {
        // SAFETY: dst is a live CString; open creates the bind target.
        let fd = cvt(unsafe {
            libc::open(
                dst.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o600,
            )
        })
        .map_err(at(Step::Bind))?;
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
        })
        .map_err(at(Step::Bind))?;
        if *remount != 0 {
            // A bind takes its flags only from a remount of it.
            // SAFETY: dst is a live CString; a remount takes no source,
            // fstype or data.
            cvt(unsafe {
                libc::mount(
                    std::ptr::null(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    *remount,
                    std::ptr::null(),
                )
            })
            .map_err(at(Step::Remount))?;
        }
    }
    // Stdio last: a child sharing wasp's fd table must not dup2 onto
    // wasp's own 0-2, so it first makes its own table.
    let mut stdio = p.stdio;
    if p.shared_fds {
        own_fd_table(p, err, &mut stdio)?;
    }
    if let Some(lim) = &p.nofile {
        // Only now: fds opened above (in wasp's shared table, numbered
        // past any lower limit) would fail with EMFILE under it. No
        // CLONE_THREAD: the limit is this child's alone.
        // SAFETY: lim points to a valid rlimit in the prepared plan.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) }).map_err(at(Step::Rlimit))?;
    }
    for (target, &fd) in stdio.iter().enumerate() {
        // The sources are >= 3 (see `above_stdio`; pidfd_getfd's copies
        // are too), so dup2 never clobbers one it still needs, and it
        // clears FD_CLOEXEC on the copy.
        // SAFETY: dup2 only reads its integer arguments.
        cvt(unsafe { libc::dup2(fd, target as RawFd) }).map_err(at(Step::Stdio))?;
    }
    // SAFETY: program is a live CString; argv and envp are null-terminated
    // arrays of pointers to live CStrings (checked by `spawn`).
    unsafe { libc::execve(p.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
    Err(at(Step::Exec)(io::Error::last_os_error()))
}

/// `CLOSE_RANGE_UNSHARE` (linux/close_range.h, 5.9).
const CLOSE_RANGE_UNSHARE: libc::c_uint = 1 << 1;

/// A child sharing wasp's fd table (`CLONE_FILES`) makes its own holding
/// only fds 0-2: `close_range(3, ~0, CLOSE_RANGE_UNSHARE)` copies nothing
/// above them, so exec has no close-on-exec fd of wasp's to close (with
/// thousands of live clones wasp holds thousands of fds, and copying then
/// closing each at exec made every launch cost O(live clones)). It then
/// copies the few fds it still needs from wasp (`pidfd_getfd`, close-on-
/// exec copies): the error pipe first (into `err`), then the stdio
/// sources (into `stdio`).
fn own_fd_table(p: &ChildPlan, err: &mut RawFd, stdio: &mut [RawFd; 3]) -> ChildResult {
    // SAFETY: close_range only reads its integer arguments; on failure the
    // table is still the shared one and `err` still valid.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_UNSHARE) })
        .map_err(at(Step::FdTable))?;
    // From here wasp's fds are gone from this table: a failure before the
    // error pipe is copied goes to `lost`.
    let shared_err = std::mem::replace(err, -1);
    // SAFETY: pidfd_open only reads its integer arguments; the fd it
    // returns is this child's and closed below or at exec (O_CLOEXEC).
    let pidfd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, p.parent, 0u32) })
        .map_err(at(Step::FdTable))? as RawFd;
    let copy = |fd: RawFd| {
        // SAFETY: pidfd_getfd only reads its integer arguments; the copy
        // it returns is close-on-exec.
        cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0u32) })
            .map(|n| n as RawFd)
            .map_err(at(Step::FdTable))
    };
    *err = copy(shared_err)?;
    for s in stdio.iter_mut() {
        *s = copy(*s)?;
    }
    // SAFETY: pidfd was returned by pidfd_open above and is closed once.
    unsafe { libc::close(pidfd) };
    Ok(())
}

/// Runs in the child right after the clone; never returns.
pub(super) fn child_main(p: &ChildPlan) -> ! {
    let mut err = p.err_pipe;
    let (step, errno) = match child_steps(p, &mut err) {
        Ok(()) => (Step::Exec, libc::EINVAL),
        Err(e) => e,
    };
    if err < 0 {
        // No error pipe in this table: tell the parent through memory
        // (shared: only a vfork-style child has `shared_fds`).
        p.lost.store(
            (u64::from(step as u32) << 32) | u64::from(errno as u32),
            Ordering::Release,
        );
        // SAFETY: _exit ends the child without touching wasp's memory.
        unsafe { libc::_exit(127) }
    }
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: msg is an 8-byte buffer on our stack; a short or failed write
    // only loses the detail (the parent then sees the exit).
    unsafe { libc::write(err, msg.as_ptr().cast(), msg.len()) };
    // SAFETY: _exit ends the child (its own thread group: no CLONE_THREAD)
    // without running atexit handlers or destructors, which would touch
    // wasp's memory in a vfork-style child and the heap copy otherwise.
    unsafe { libc::_exit(127) }
}

/// The parent's error for the 8 bytes a failed child wrote to its error
/// pipe in [`child_main`]: (step, errno), naming the step.
pub(super) fn child_error(msg: &[u8; 8]) -> io::Error {
    let step = u32::from_ne_bytes(msg[..4].try_into().expect("4 bytes"));
    let errno = i32::from_ne_bytes(msg[4..].try_into().expect("4 bytes"));
    step_error(step, errno)
}

/// The parent's error for a child that failed after leaving wasp's fd
/// table ([`ChildPlan::lost`]), or `None` when it did not.
pub(super) fn lost_error(lost: &AtomicU64) -> Option<io::Error> {
    match lost.load(Ordering::Acquire) {
        0 => None,
        v => Some(step_error((v >> 32) as u32, v as u32 as i32)),
    }
}

/// True when the child's message is its failure to make its own fd table
/// (the parent then stops sharing its table with later children).
pub(super) fn is_fd_table_step(msg: &[u8; 8]) -> bool {
    msg[..4] == (Step::FdTable as u32).to_ne_bytes()
}

fn step_error(step: u32, errno: i32) -> io::Error {
    let step = Step::from_u32(step);
    let os = io::Error::from_raw_os_error(errno);
    io::Error::new(
        os.kind(),
        format!(
            "the child failed {}: {os}",
            step.map(Step::what).unwrap_or("before exec")
        ),
    )
}

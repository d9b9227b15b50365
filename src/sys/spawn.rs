//! Starting a VMM process directly inside a slot, with `clone3(2)`:
//!
//! - `CLONE_PIDFD`: the pidfd comes back from the clone itself, so signals
//!   always reach this process and never a recycled pid;
//! - `CLONE_INTO_CGROUP` when a cgroup is given: the child is a member of
//!   its cgroup (v2) from its first instruction, before it runs any code;
//! - in the child, before exec: reset the signal handlers, mask and SIGPIPE,
//!   its own process group, stdio, `setns` into the slot's network
//!   namespace, and a private mount namespace in which each drive's
//!   recorded path resolves to this clone's own file. No `ip netns exec`, no
//!   shell.
//!
//! Two ways to create the child ([`CloneStyle`], reported in
//! [`Spawned::style`]):
//!
//! - **vfork-style** (the default on x86-64): `clone3(CLONE_VM |
//!   CLONE_VFORK)` on a stack this thread owns ([`ChildStack`]). No page
//!   table of wasp is copied (the cost of a fork grows with wasp's memory
//!   and threads) and the calling thread sleeps until the child has exec'd
//!   or exited; wasp's other threads go on. The child shares wasp's memory
//!   until exec, so it only reads the [`ChildPlan`] prepared before the
//!   clone, makes raw async-signal-safe calls, never allocates and never
//!   touches a lock. All signals are blocked in the calling thread across
//!   the clone, so no handler of wasp's runs on the child's side before
//!   the child has reset every caught signal to its default.
//! - **fork-style**: `clone3` without `CLONE_VM` (the child gets a copy of
//!   wasp's memory), else `fork(2)` + `pidfd_open` where `clone3` is missing
//!   (kernels before 5.3, or a seccomp filter answering ENOSYS). Used on
//!   other architectures (the vfork entry is an x86-64 trampoline), when
//!   `clone3` is missing, and when asked ([`ChildSetup::force_fork`], for
//!   tests). The child runs the same steps.
//!
//! Cgroup fallback: where `CLONE_INTO_CGROUP` is refused (kernels before
//! 5.7), the child is created without it and writes `0` (itself) to the
//! cgroup's `cgroup.procs` as its first step, still before exec: the VMM
//! binary never runs outside its cgroup either way. [`Spawned::placement`]
//! says which one happened.
//!
//! Mount namespace: either a copy of wasp's own (unshare, then everything
//! made a slave so nothing propagates back), or, given a template
//! ([`ChildSetup::mount_template`], see `sys::mntns`), `setns` into the
//! template and an unshare from it, which copies the template's much
//! smaller mount table.
//!
//! Between clone and exec only async-signal-safe calls are allowed, so every
//! path, argument and environment string is converted to a `CString` and
//! every fd is opened before the clone; the child makes raw syscalls only
//! and never allocates. A failing child step reports (step, errno) through
//! a close-on-exec pipe, so the parent's error names the step.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use super::cvt;

/// `CLONE_VM` (linux/sched.h).
const CLONE_VM: u64 = 0x100;
/// `CLONE_VFORK` (linux/sched.h).
const CLONE_VFORK: u64 = 0x4000;
/// `CLONE_PIDFD` (linux/sched.h).
const CLONE_PIDFD: u64 = 0x1000;
/// `CLONE_INTO_CGROUP` (linux/sched.h, 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `CLONE_ARGS_SIZE_VER0`: up to `tls` (5.3).
const CLONE_ARGS_SIZE_VER0: usize = 64;
/// `CLONE_ARGS_SIZE_VER2`: with `cgroup` (5.7).
const CLONE_ARGS_SIZE_VER2: usize = 88;

/// `struct clone_args` from linux/sched.h (all fields u64, 8-aligned).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// How the child was created (see the module docs for when each is used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloneStyle {
    /// `clone3(CLONE_VM | CLONE_VFORK)` on a stack of ours: nothing of
    /// wasp's memory is copied.
    Vfork,
    /// A copy of wasp's memory (`clone3` without `CLONE_VM`, or `fork`).
    Fork,
}

/// Whether this build has the vfork-style entry (an x86-64 trampoline).
pub const VFORK_SUPPORTED: bool = cfg!(target_arch = "x86_64");

/// How the child was put into its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// `clone3(CLONE_INTO_CGROUP)`: a member from its first instruction.
    CloneIntoCgroup,
    /// The child wrote itself to `cgroup.procs` before exec (fallback).
    ProcsWrite,
}

struct CgroupTarget {
    dir: OwnedFd,
    procs: OwnedFd,
    force_procs_write: bool,
}

impl std::fmt::Debug for CgroupTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupTarget")
            .field("force_procs_write", &self.force_procs_write)
            .finish_non_exhaustive()
    }
}

/// A template mount namespace to copy instead of wasp's own.
struct TemplateNs {
    ns: OwnedFd,
    /// The directory on which the template already has the private drive
    /// tmpfs (the child then mounts none of its own).
    drive_tmpfs: Option<PathBuf>,
}

impl std::fmt::Debug for TemplateNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateNs")
            .field("drive_tmpfs", &self.drive_tmpfs)
            .finish_non_exhaustive()
    }
}

/// What the child does to itself before exec.
#[derive(Debug, Default)]
pub struct ChildSetup {
    netns: Option<OwnedFd>,
    /// Network namespaces shown at a path by [`Self::bind_netns`]; held so
    /// their fds stay open (and numbered) until the child's bind.
    bound_netns: Vec<OwnedFd>,
    /// A private mount namespace (needed by every bind).
    private_mounts: bool,
    /// Copy this template's mount namespace instead of wasp's.
    template: Option<TemplateNs>,
    /// tmpfs mount point that holds the drive bind targets.
    drive_dir: Option<CString>,
    /// (source, target, remount flags) of each bind, made in order; with
    /// non-zero flags the bind is then remounted with them (see
    /// [`ChildSetup::bind_file_locked`]).
    binds: Vec<(CString, CString, libc::c_ulong)>,
    cgroup: Option<CgroupTarget>,
    force_fork: bool,
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
        self.private_mounts = true;
        self.drive_dir = Some(super::c_path(drive_dir)?);
        self.binds
            .push((super::c_path(file)?, super::c_path(recorded)?, 0));
        Ok(self)
    }

    /// Give the child its own mount namespace in which the file `target`
    /// shows `source` (a bind mount; `target` is created if missing, and
    /// its directory must exist). Nothing is mounted in wasp's own
    /// namespace, so nothing is left behind when the child's namespace
    /// goes away.
    pub fn bind_file(mut self, source: &Path, target: &Path) -> io::Result<Self> {
        self.private_mounts = true;
        self.binds
            .push((super::c_path(source)?, super::c_path(target)?, 0));
        Ok(self)
    }

    /// [`Self::bind_file`], then the bind remounted `nosuid,nodev,noexec`,
    /// and read-only when `read_only`: what the VMM writes through that
    /// path, and what it could execute or open as a device there, is
    /// limited by the mount, not only by the file's mode.
    pub fn bind_file_locked(
        mut self,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> io::Result<Self> {
        let mut flags =
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        self.private_mounts = true;
        self.binds
            .push((super::c_path(source)?, super::c_path(target)?, flags));
        Ok(self)
    }

    /// Give the child its own mount namespace in which the file `target`
    /// is the network namespace `ns` (a bind of `/proc/self/fd/N`, as `ip
    /// netns add` binds `/proc/self/ns/net`), without entering it: for a
    /// program that opens the namespace by path itself (the jailer's
    /// `--netns`), in a copy of a template that has no `/run/netns` mounts.
    pub fn bind_netns(mut self, ns: OwnedFd, target: &Path) -> io::Result<Self> {
        let src = PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()));
        self.bound_netns.push(ns);
        self.bind_file(&src, target)
    }

    /// Make the private mount namespace (when one is needed: see
    /// [`Self::bind_drive`], [`Self::bind_file`]) as a copy of the template
    /// namespace `ns` (an fd on a `/proc/.../ns/mnt`) instead of wasp's own.
    /// `drive_tmpfs`: the directory on which the template already has a
    /// private tmpfs for the drive bind targets. The child enters the
    /// template, unshares from it and goes back to wasp's working
    /// directory (by path, resolved in the new namespace).
    pub fn mount_template(mut self, ns: OwnedFd, drive_tmpfs: Option<&Path>) -> Self {
        self.template = Some(TemplateNs {
            ns,
            drive_tmpfs: drive_tmpfs.map(Path::to_owned),
        });
        self
    }

    /// Create the child fork-style even where the vfork-style clone is
    /// available (tests of the fallback).
    pub fn force_fork(mut self, yes: bool) -> Self {
        self.force_fork = yes;
        self
    }

    /// Start the child inside the cgroup (v2) directory `dir`: an fd opened
    /// on the directory, and one opened write-only on its `cgroup.procs`
    /// (for the fallback). `force_procs_write` skips CLONE_INTO_CGROUP
    /// (tests of the fallback).
    pub fn cgroup(mut self, dir: OwnedFd, procs: OwnedFd, force_procs_write: bool) -> Self {
        self.cgroup = Some(CgroupTarget {
            dir,
            procs,
            force_procs_write,
        });
        self
    }
}

/// The child's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// /dev/null.
    Null,
    /// A pipe whose write end the parent keeps ([`Process::stdin`]).
    Pipe,
}

/// What to execute.
#[derive(Debug)]
pub struct Exec {
    /// The binary: a path with a `/`, or a name looked up on `PATH`.
    pub program: PathBuf,
    /// Arguments after `argv[0]` (which is `program`). Never secrets.
    pub args: Vec<OsString>,
    /// The whole environment (nothing of the parent's is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// stdin.
    pub stdin: Stdin,
    /// stdout.
    pub stdout: File,
    /// stderr.
    pub stderr: File,
}

/// A started child.
#[derive(Debug)]
pub struct Spawned {
    /// The child, to be reaped by [`Process::wait`].
    pub process: Process,
    /// Its pidfd.
    pub pidfd: OwnedFd,
    /// How it was put into its cgroup, when one was given.
    pub placement: Option<Placement>,
    /// How it was created.
    pub style: CloneStyle,
}

/// A child process of ours (not yet reaped).
#[derive(Debug)]
pub struct Process {
    pid: i32,
    stdin: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Process {
    /// Its pid.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// The write end of its stdin pipe, if it has one.
    pub fn stdin(&self) -> Option<&OwnedFd> {
        self.stdin.as_ref()
    }

    /// Sends it SIGKILL, unless it was already reaped. An unreaped child's
    /// pid cannot be reused, so this is exact.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: kill(2) takes plain integers; the pid is our own child,
        // not yet reaped.
        cvt(unsafe { libc::kill(self.pid, libc::SIGKILL) }).map(drop)
    }

    /// Waits for it to exit and reaps it (once; later calls return the
    /// same status).
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        self.stdin = None;
        let status = waitpid(self.pid)?;
        let s = ExitStatus::from_raw(status);
        self.status = Some(s);
        Ok(s)
    }
}

fn waitpid(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer on our stack.
        match cvt(unsafe { libc::waitpid(pid, &mut status, 0) }) {
            Ok(_) => return Ok(status),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

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
        }
    }
}

/// Which mount namespace the child ends up in.
#[derive(Clone, Copy)]
enum MountPlan<'a> {
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
struct ChildPlan<'a> {
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    stdio: [RawFd; 3],
    err_pipe: RawFd,
    procs: Option<RawFd>,
    netns: Option<RawFd>,
    mounts: MountPlan<'a>,
    /// Mount the private drive tmpfs here (not when the template has it).
    drive_tmpfs: Option<&'a CString>,
    binds: &'a [(CString, CString, libc::c_ulong)],
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
fn child_steps(p: &ChildPlan) -> ChildResult {
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
    for (target, &fd) in p.stdio.iter().enumerate() {
        // The sources are >= 3 (see `above_stdio`), so dup2 never clobbers
        // one it still needs, and it clears FD_CLOEXEC on the copy.
        // SAFETY: dup2 only reads its integer arguments.
        cvt(unsafe { libc::dup2(fd, target as RawFd) }).map_err(at(Step::Stdio))?;
    }
    if let Some(fd) = p.netns {
        // SAFETY: setns only reads its integer arguments; fd is open in the
        // child (inherited; CLOEXEC only closes it at exec).
        cvt(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }).map_err(at(Step::Netns))?;
    }
    match p.mounts {
        MountPlan::Inherit => {}
        MountPlan::CopyOfOurs => {
            super::mount::unshare_slave_copy().map_err(at(Step::MountNs))?;
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
        super::mount::mount_drive_tmpfs(dir).map_err(at(Step::Tmpfs))?;
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
    // SAFETY: program is a live CString; argv and envp are null-terminated
    // arrays of pointers to live CStrings (checked by `spawn`).
    unsafe { libc::execve(p.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
    Err(at(Step::Exec)(io::Error::last_os_error()))
}

/// Runs in the child right after the clone; never returns.
fn child_main(p: &ChildPlan) -> ! {
    let (step, errno) = match child_steps(p) {
        Ok(()) => (Step::Exec, libc::EINVAL),
        Err(e) => e,
    };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: msg is an 8-byte buffer on our stack; a short or failed write
    // only loses the detail (the parent then sees the exit).
    unsafe { libc::write(p.err_pipe, msg.as_ptr().cast(), msg.len()) };
    // SAFETY: _exit ends the child (its own thread group: no CLONE_THREAD)
    // without running atexit handlers or destructors, which would touch
    // wasp's memory in a vfork-style child and the heap copy otherwise.
    unsafe { libc::_exit(127) }
}

/// The entry of a vfork-style child, called by the trampoline on the
/// child's own stack.
extern "C" fn vfork_child_entry(plan: *mut libc::c_void) -> ! {
    // SAFETY: `plan` is the `&ChildPlan` that `clone3_vfork` passed, which
    // lives on the stack of the parent thread; that thread sleeps in
    // clone3 (CLONE_VFORK) until this child has exec'd or exited, so the
    // plan and everything it borrows (CStrings, pointer arrays, fds) stay
    // alive and unchanged while the child reads them. Nothing writes them.
    let plan = unsafe { &*(plan as *const ChildPlan) };
    child_main(plan)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array for pipe2 to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: on success both fds are fresh and owned by us alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A CLOEXEC copy of `fd` numbered 3 or more, so the child's dup2 onto
/// 0..=2 never overwrites a source it still needs.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC only reads its integer arguments.
    let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: n is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn resolve(program: &Path, env: &[(OsString, OsString)]) -> io::Result<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_owned());
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not on PATH", program.display()),
            )
        })
}

/// The stack a vfork-style child runs on: anonymous memory with a
/// PROT_NONE guard page below it, so an overflow faults in the child
/// instead of writing into wasp's memory. Reused by later spawns of the
/// same thread (see [`with_child_stack`]).
struct ChildStack {
    /// The whole mapping (guard page included).
    map: *mut libc::c_void,
    map_len: usize,
    guard: usize,
}

impl ChildStack {
    /// Usable bytes. The child's frames (`child_steps` and the libc calls
    /// under it) use a few KiB.
    const SIZE: usize = 64 * 1024;

    fn new() -> io::Result<Self> {
        // SAFETY: sysconf only reads its argument.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let guard = if page > 0 { page as usize } else { 4096 };
        let map_len = guard + Self::SIZE;
        // SAFETY: a fresh private anonymous mapping at an address the
        // kernel picks; nothing else refers to it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self {
            map,
            map_len,
            guard,
        };
        // SAFETY: [map + guard, map + map_len) lies inside the mapping
        // just made, which we own.
        cvt(unsafe {
            libc::mprotect(
                map.cast::<u8>().add(guard).cast(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        })?;
        Ok(stack)
    }

    /// The lowest usable address (`clone_args.stack`).
    fn low(&self) -> u64 {
        self.map as u64 + self.guard as u64
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and no child runs on it any more (a
        // vfork-style child has exec'd or exited before its clone returns).
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

thread_local! {
    /// This thread's spare child stack.
    static SPARE_STACK: std::cell::Cell<Option<ChildStack>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with this thread's child stack (made on first use).
fn with_child_stack<T>(f: impl FnOnce(&ChildStack) -> T) -> io::Result<T> {
    let stack = match SPARE_STACK.take() {
        Some(s) => s,
        None => ChildStack::new()?,
    };
    let r = f(&stack);
    SPARE_STACK.set(Some(stack));
    Ok(r)
}

/// Blocks every signal in the calling thread until dropped (then restores
/// the old mask), so that no handler runs on this thread while a
/// vfork-style child shares its memory, and the child starts with every
/// signal blocked until it has reset the handlers.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> io::Result<Self> {
        // SAFETY: all-zero sigset_t values are valid; sigfillset fills
        // `all` in place.
        let (mut all, mut old): (libc::sigset_t, libc::sigset_t) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: all is a valid sigset_t on our stack.
        unsafe { libc::sigfillset(&mut all) };
        // SAFETY: both sets are valid; pthread_sigmask returns an error
        // number instead of setting errno.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(Self(old))
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: self.0 is the mask pthread_sigmask returned.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// `clone3(args)` whose child starts in [`vfork_child_entry`] with `plan`,
/// on the stack in `args` (`CLONE_VM | CLONE_VFORK` set by the caller).
/// Returns the child's pid in the parent, once the child has exec'd or
/// exited.
#[cfg(target_arch = "x86_64")]
fn clone3_vfork(args: &mut CloneArgs, size: usize, plan: &ChildPlan) -> io::Result<i32> {
    debug_assert!(args.flags & (CLONE_VM | CLONE_VFORK) == CLONE_VM | CLONE_VFORK);
    debug_assert!(args.stack != 0 && (args.stack + args.stack_size) % 16 == 0);
    let entry: extern "C" fn(*mut libc::c_void) -> ! = vfork_child_entry;
    let ret: i64;
    // SAFETY: the raw clone3 syscall (rax = nr, rdi = args, rsi = size;
    // the syscall instruction clobbers rcx and r11). In the parent it
    // returns the pid or -errno like any syscall and the asm falls through
    // with every other register intact. The child returns 0 on its own
    // stack (rsp = args.stack + args.stack_size, 16-byte aligned, inside a
    // live `ChildStack` of this thread) with the parent's other registers,
    // so r12 = plan and r13 = entry are there; it clears rbp (the end of
    // any backtrace), calls `entry(plan)` (rsp is then 8 mod 16, as the
    // ABI wants at a function's entry) and never comes back: the entry
    // execs or _exits (ud2 guards the impossible return). The child thus
    // never runs on this thread's stack or returns into this function,
    // whose frame the parent still needs. Sharing memory (CLONE_VM) is
    // sound because the child only reads `plan` (alive: this thread sleeps
    // in the syscall until the child execs or exits, CLONE_VFORK), makes
    // raw calls, never allocates and takes no lock (`child_steps`); the
    // errno it may set is this sleeping thread's.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") size,
            in("r12") plan as *const ChildPlan,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret as i32))
    } else {
        Ok(ret as i32)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn clone3_vfork(_: &mut CloneArgs, _: usize, _: &ChildPlan) -> io::Result<i32> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// A created child, seen from the parent.
struct Created {
    pid: i32,
    pidfd: OwnedFd,
    /// Whether CLONE_INTO_CGROUP placed it.
    into: bool,
}

/// The vfork-style clone: `CLONE_VM | CLONE_VFORK | CLONE_PIDFD`, plus
/// `CLONE_INTO_CGROUP` when `cgroup` (dir fd, `cgroup.procs` fd) is given
/// and not refused (then the child writes itself to `cgroup.procs`).
/// `Ok(None)`: no clone3 here, use the fork-style path.
fn create_vfork(
    plan: &mut ChildPlan,
    cgroup: Option<(RawFd, RawFd)>,
) -> io::Result<Option<Created>> {
    let _blocked = SignalsBlocked::new()?;
    with_child_stack(|stack| {
        let mut pidfd: libc::c_int = -1;
        let mut args = CloneArgs {
            flags: CLONE_PIDFD | CLONE_VM | CLONE_VFORK,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.low(),
            stack_size: ChildStack::SIZE as u64,
            ..CloneArgs::default()
        };
        let mut into = false;
        let r = match cgroup {
            Some((dir, procs)) => {
                args.flags |= CLONE_INTO_CGROUP;
                args.cgroup = dir as u64;
                plan.procs = None;
                match clone3_vfork(&mut args, CLONE_ARGS_SIZE_VER2, plan) {
                    Err(e) if is_unsupported(&e) => {
                        args.flags &= !CLONE_INTO_CGROUP;
                        args.cgroup = 0;
                        plan.procs = Some(procs);
                        clone3_vfork(&mut args, CLONE_ARGS_SIZE_VER0, plan)
                    }
                    r => {
                        into = r.is_ok();
                        r
                    }
                }
            }
            None => clone3_vfork(&mut args, CLONE_ARGS_SIZE_VER0, plan),
        };
        match r {
            Ok(pid) => Ok(Some(Created {
                pid,
                // SAFETY: with CLONE_PIDFD the kernel stored a fresh pidfd
                // we own.
                pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
                into,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Ok(None),
            Err(e) => Err(e),
        }
    })?
}

/// Which clone the kernel did (fork-style).
enum Cloned {
    Parent { pid: i32, pidfd: OwnedFd },
    Child,
}

/// `clone3` with `args` of `size` bytes (fork-style: no CLONE_VM).
fn clone3(args: &mut CloneArgs, size: usize) -> io::Result<i64> {
    debug_assert!(args.flags & CLONE_VM == 0);
    // SAFETY: args is a valid, initialised clone_args of at least `size`
    // bytes; without CLONE_VM the child gets a copy of our memory and
    // continues on its own copy of this stack, like fork(2).
    cvt(unsafe { libc::syscall(libc::SYS_clone3, args as *mut CloneArgs, size) })
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::E2BIG) | Some(libc::EINVAL)
    )
}

/// Creates the child fork-style: clone3 with CLONE_PIDFD (and
/// CLONE_INTO_CGROUP when `cgroup_fd` is given and not refused), else
/// clone3 without it, else fork + pidfd_open. Returns whether
/// CLONE_INTO_CGROUP was used.
fn create_fork(cgroup_fd: Option<RawFd>) -> io::Result<(Cloned, bool)> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    let mut into = false;
    let r = match cgroup_fd {
        Some(fd) => {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd as u64;
            match clone3(&mut args, CLONE_ARGS_SIZE_VER2) {
                Err(e) if is_unsupported(&e) => {
                    args.flags &= !CLONE_INTO_CGROUP;
                    args.cgroup = 0;
                    clone3(&mut args, CLONE_ARGS_SIZE_VER0)
                }
                r => {
                    into = r.is_ok();
                    r
                }
            }
        }
        None => clone3(&mut args, CLONE_ARGS_SIZE_VER0),
    };
    match r {
        Ok(0) => Ok((Cloned::Child, into)),
        Ok(pid) => {
            // SAFETY: with CLONE_PIDFD the kernel stored a fresh pidfd we own.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok((
                Cloned::Parent {
                    pid: pid as i32,
                    pidfd,
                },
                into,
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            // No clone3 at all (or a filter hides it): fork(2).
            // SAFETY: the child only runs `child_main` (raw syscalls on data
            // prepared before the fork) and then execs or _exits.
            let pid = cvt(unsafe { libc::fork() })?;
            if pid == 0 {
                return Ok((Cloned::Child, false));
            }
            match super::pidfd::pidfd_open(pid) {
                Ok(pidfd) => Ok((Cloned::Parent { pid, pidfd }, false)),
                Err(e) => {
                    // SAFETY: pid is our unreaped child; kill only reads
                    // its integer arguments.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    let _ = waitpid(pid);
                    Err(e)
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// Spawns `exec` after applying `setup` in the child. The child also gets
/// its own process group. Errors name the child's step that failed.
pub fn spawn(exec: Exec, setup: ChildSetup) -> io::Result<Spawned> {
    let ChildSetup {
        netns,
        // Open until the child has made its binds (this function returns
        // after the child's exec or failure).
        bound_netns: _bound_netns,
        private_mounts,
        template,
        drive_dir,
        binds,
        cgroup,
        force_fork,
    } = setup;
    let program = super::c_path(&resolve(&exec.program, &exec.env)?)?;
    let mut argv_c = vec![super::c_path(&exec.program)?];
    for a in &exec.args {
        argv_c.push(super::c_str(a)?);
    }
    let mut envp_c = Vec::with_capacity(exec.env.len());
    for (k, v) in &exec.env {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(v);
        envp_c.push(super::c_str(&kv)?);
    }
    let nul = std::ptr::null::<libc::c_char>();
    let argv: Vec<_> = argv_c.iter().map(|c| c.as_ptr()).chain([nul]).collect();
    let envp: Vec<_> = envp_c.iter().map(|c| c.as_ptr()).chain([nul]).collect();

    // The template only matters when the child needs a mount namespace.
    let template = template.filter(|_| private_mounts);
    // Without a working directory to go back to, the VMM stays at the
    // namespace's root.
    let cwd = match &template {
        Some(_) => std::env::current_dir()
            .ok()
            .map(|d| super::c_path(&d))
            .transpose()?,
        None => None,
    };
    let mounts = match &template {
        Some(t) => MountPlan::FromTemplate {
            ns: t.ns.as_raw_fd(),
            cwd: cwd.as_ref(),
        },
        None if private_mounts => MountPlan::CopyOfOurs,
        None => MountPlan::Inherit,
    };
    let template_tmpfs = template
        .as_ref()
        .and_then(|t| t.drive_tmpfs.as_deref())
        .map(super::c_path)
        .transpose()?;
    let drive_tmpfs = drive_dir
        .as_ref()
        .filter(|d| template_tmpfs.as_ref() != Some(*d));

    let (stdin_child, stdin_parent) = match exec.stdin {
        Stdin::Null => (OwnedFd::from(File::open("/dev/null")?), None),
        Stdin::Pipe => {
            let (r, w) = pipe()?;
            (r, Some(w))
        }
    };
    let stdio = [
        above_stdio(stdin_child)?,
        above_stdio(OwnedFd::from(exec.stdout))?,
        above_stdio(OwnedFd::from(exec.stderr))?,
    ];
    let (err_r, err_w) = pipe()?;

    let mut plan = ChildPlan {
        program: &program,
        argv: &argv,
        envp: &envp,
        stdio: [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ],
        err_pipe: err_w.as_raw_fd(),
        procs: None,
        netns: netns.as_ref().map(|f| f.as_raw_fd()),
        mounts,
        drive_tmpfs,
        binds: &binds,
    };
    let vfork_cgroup = cgroup.as_ref().map(|c| {
        let dir = if c.force_procs_write {
            None
        } else {
            Some(c.dir.as_raw_fd())
        };
        (dir, c.procs.as_raw_fd())
    });
    let vforked = if VFORK_SUPPORTED && !force_fork {
        match vfork_cgroup {
            Some((None, procs)) => {
                // Forced cgroup.procs fallback: no CLONE_INTO_CGROUP.
                plan.procs = Some(procs);
                create_vfork(&mut plan, None)?
            }
            Some((Some(dir), procs)) => create_vfork(&mut plan, Some((dir, procs)))?,
            None => create_vfork(&mut plan, None)?,
        }
    } else {
        None
    };
    let (style, pid, pidfd, into) = match vforked {
        Some(c) => (CloneStyle::Vfork, c.pid, c.pidfd, c.into),
        None => {
            plan.procs = None;
            let into_fd = vfork_cgroup.and_then(|(dir, _)| dir);
            // Whether the child must write itself to cgroup.procs is known
            // only after the clone; the child decides from `into` on its
            // own copy of the plan.
            let (cloned, into) = create_fork(into_fd)?;
            match cloned {
                Cloned::Child => {
                    if !into {
                        plan.procs = vfork_cgroup.map(|(_, procs)| procs);
                    }
                    child_main(&plan)
                }
                Cloned::Parent { pid, pidfd } => (CloneStyle::Fork, pid, pidfd, into),
            }
        }
    };
    drop(err_w);
    drop(stdio);
    let mut process = Process {
        pid,
        stdin: stdin_parent,
        status: None,
    };
    let mut msg = [0u8; 8];
    let mut got = 0;
    while got < msg.len() {
        // SAFETY: reading into the unfilled tail of msg.
        let n = unsafe {
            libc::read(
                err_r.as_raw_fd(),
                msg[got..].as_mut_ptr().cast(),
                msg.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    if got == 0 {
        // The pipe closed at exec: the program runs.
        let placement = cgroup.map(|_| {
            if into {
                Placement::CloneIntoCgroup
            } else {
                Placement::ProcsWrite
            }
        });
        return Ok(Spawned {
            process,
            pidfd,
            placement,
            style,
        });
    }
    let _ = process.wait();
    let step = Step::from_u32(u32::from_ne_bytes(msg[..4].try_into().expect("4 bytes")));
    let errno = i32::from_ne_bytes(msg[4..].try_into().expect("4 bytes"));
    let os = io::Error::from_raw_os_error(errno);
    Err(io::Error::new(
        os.kind(),
        format!(
            "the child failed {}: {os}",
            step.map(Step::what).unwrap_or("before exec")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(program: &str, args: &[&str]) -> Exec {
        let out = tempfile::tempfile().unwrap();
        Exec {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            stdin: Stdin::Null,
            stderr: out.try_clone().unwrap(),
            stdout: out,
        }
    }

    /// Both ways to create the child, with the style each must report.
    fn styles() -> Vec<(bool, CloneStyle)> {
        let mut v = vec![(true, CloneStyle::Fork)];
        if VFORK_SUPPORTED {
            v.push((false, CloneStyle::Vfork));
        }
        v
    }

    fn setup(force_fork: bool) -> ChildSetup {
        ChildSetup::new().force_fork(force_fork)
    }

    /// Runs `sh -c script` and returns its stdout.
    fn output_of(script: &str, force_fork: bool) -> String {
        use std::io::{Read, Seek};
        let mut out = tempfile::tempfile().unwrap();
        let mut e = exec("sh", &["-c", script]);
        e.stdout = out.try_clone().unwrap();
        let mut s = spawn(e, setup(force_fork)).unwrap();
        assert!(s.process.wait().unwrap().success());
        let mut text = String::new();
        out.rewind().unwrap();
        out.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn exit_status_and_own_process_group() {
        for (force, style) in styles() {
            let s = spawn(exec("sh", &["-c", "exit 7"]), setup(force)).unwrap();
            assert_eq!(s.style, style);
            let mut p = s.process;
            assert_eq!(p.wait().unwrap().code(), Some(7));
            assert_eq!(p.wait().unwrap().code(), Some(7), "wait is idempotent");
            assert_eq!(s.placement, None);

            // `cat` blocks on its stdin pipe until we drop the write end.
            let mut e = exec("cat", &[]);
            e.stdin = Stdin::Pipe;
            let mut s = spawn(e, setup(force)).unwrap();
            let pid = s.process.id();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let pgrp: u32 = after.split(' ').nth(2).unwrap().parse().unwrap();
            assert_eq!(pgrp, pid, "its own process group ({style:?})");
            assert!(!crate::sys::pidfd::pidfd_exited(&s.pidfd, 0).unwrap());
            assert!(s.process.wait().unwrap().success(), "stdin closed by wait");
        }
    }

    #[test]
    fn exec_failure_names_the_step() {
        for (force, style) in styles() {
            let e = spawn(exec("/nonexistent/vmm", &[]), setup(force)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{style:?}: {e}");
            assert!(e.to_string().contains("exec"), "{style:?}: {e}");
        }
    }

    #[test]
    fn a_failing_child_step_is_reported_and_the_parent_goes_on() {
        let blocked = || {
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
            line.to_owned()
        };
        let before = blocked();
        // setns with an fd that is no namespace fails in the child, after
        // the signal, process group and stdio steps.
        for (force, style) in styles() {
            let not_ns = File::open("/dev/null").unwrap();
            let e =
                spawn(exec("true", &[]), setup(force).netns(OwnedFd::from(not_ns))).unwrap_err();
            assert!(
                e.to_string().contains("network namespace"),
                "{style:?}: {e}"
            );
        }
        assert_eq!(blocked(), before, "the thread's signal mask is restored");
    }

    #[test]
    fn stdout_goes_to_the_given_file_and_env_is_only_ours() {
        for (force, style) in styles() {
            let mut e = exec("sh", &["-c", "echo \"$WASP_T:${HOME:-none}\""]);
            e.env.push(("WASP_T".into(), "x1".into()));
            use std::io::{Read, Seek};
            let mut out = tempfile::tempfile().unwrap();
            e.stdout = out.try_clone().unwrap();
            let mut s = spawn(e, setup(force)).unwrap();
            assert!(s.process.wait().unwrap().success());
            let mut text = String::new();
            out.rewind().unwrap();
            out.read_to_string(&mut text).unwrap();
            assert_eq!(text.trim(), "x1:none", "{style:?}");
        }
    }

    #[test]
    fn the_child_starts_with_no_blocked_signals_and_sigpipe_default() {
        // Rust ignores SIGPIPE in wasp; the VMM must get the default, and
        // the vfork-style clone's blocked mask must not leak into it.
        for (force, style) in styles() {
            let text = output_of("grep -E '^Sig(Blk|Ign):' /proc/self/status", force);
            let field = |name: &str| {
                let line = text.lines().find(|l| l.starts_with(name)).unwrap();
                u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
            };
            assert_eq!(field("SigBlk:"), 0, "{style:?}: {text}");
            let pipe_bit = 1u64 << (libc::SIGPIPE - 1);
            assert_eq!(field("SigIgn:") & pipe_bit, 0, "{style:?}: {text}");
        }
    }

    #[test]
    fn spawns_from_many_threads_at_once() {
        // Each thread has its own child stack; other threads keep running
        // (and allocating) while one thread's vfork-style child runs.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..20 {
                        let s = spawn(exec("true", &[]), ChildSetup::new()).unwrap();
                        let mut p = s.process;
                        assert!(p.wait().unwrap().success());
                        let _churn: Vec<Vec<u8>> = (0..64).map(|i| vec![0u8; i * 16]).collect();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

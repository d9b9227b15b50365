//! Starting a VMM process directly inside a slot, with `clone3(2)`:
//!
//! - `CLONE_PIDFD`: the pidfd comes back from the clone itself, so signals
//!   always reach this process and never a recycled pid;
//! - `CLONE_INTO_CGROUP` when a cgroup is given: the child is a member of
//!   its cgroup (v2) from its first instruction, before it runs any code;
//! - in the child, before exec: reset the signal mask and SIGPIPE, its own
//!   process group, stdio, `setns` into the slot's network namespace, and a
//!   private mount namespace in which each drive's recorded path resolves to
//!   this clone's own file. No `ip netns exec`, no shell.
//!
//! Fallback: where `clone3` or `CLONE_INTO_CGROUP` is unavailable (kernels
//! before 5.3 / 5.7, or a seccomp filter that answers ENOSYS), the child is
//! created without it and writes `0` (itself) to the cgroup's
//! `cgroup.procs` as its first step, still before exec: the VMM binary
//! never runs outside its cgroup either way. [`Spawned::placement`] says
//! which one happened.
//!
//! Between clone and exec only async-signal-safe calls are allowed, so every
//! path, argument and environment string is converted to a `CString` and
//! every fd is opened before the clone; the child makes raw syscalls only
//! and never allocates. A failing child step reports (step, errno) through
//! a close-on-exec pipe, so the parent's error names the step.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use super::cvt;

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

/// What the child does to itself before exec.
#[derive(Debug, Default)]
pub struct ChildSetup {
    netns: Option<OwnedFd>,
    /// A private mount namespace (needed by every bind).
    private_mounts: bool,
    /// tmpfs mount point that holds the drive bind targets.
    drive_dir: Option<CString>,
    /// (source, target) pairs, bind-mounted in order.
    binds: Vec<(CString, CString)>,
    cgroup: Option<CgroupTarget>,
}

fn cstr(p: &Path) -> io::Result<CString> {
    cstring(p.as_os_str())
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} holds a NUL byte", s),
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
        self.private_mounts = true;
        self.drive_dir = Some(cstr(drive_dir)?);
        self.binds.push((cstr(file)?, cstr(recorded)?));
        Ok(self)
    }

    /// Give the child its own mount namespace in which the file `target`
    /// shows `source` (a bind mount; `target` is created if missing, and
    /// its directory must exist). Nothing is mounted in wasp's own
    /// namespace, so nothing is left behind when the child's namespace
    /// goes away.
    pub fn bind_file(mut self, source: &Path, target: &Path) -> io::Result<Self> {
        self.private_mounts = true;
        self.binds.push((cstr(source)?, cstr(target)?));
        Ok(self)
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
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    fn what(self) -> &'static str {
        match self {
            Step::CgroupProcs => "writing itself to its cgroup's cgroup.procs",
            Step::Signals => "resetting its signal mask",
            Step::ProcessGroup => "making its own process group",
            Step::Stdio => "setting up stdin/stdout/stderr",
            Step::Netns => "entering the slot's network namespace (setns)",
            Step::MountNs => "making its private mount namespace",
            Step::Tmpfs => "mounting the private drive directory",
            Step::Bind => "bind-mounting a file into its mount namespace",
            Step::Exec => "exec",
        }
    }
}

/// Everything the child touches, as raw values prepared before the clone.
struct ChildPlan<'a> {
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    stdio: [RawFd; 3],
    err_pipe: RawFd,
    procs: Option<RawFd>,
    netns: Option<RawFd>,
    private_mounts: bool,
    drive_dir: Option<&'a CString>,
    binds: &'a [(CString, CString)],
}

type ChildResult = Result<(), (Step, i32)>;

fn at(step: Step) -> impl Fn(io::Error) -> (Step, i32) {
    move |e| (step, e.raw_os_error().unwrap_or(libc::EINVAL))
}

/// The child's whole life: async-signal-safe raw syscalls on data prepared
/// before the clone, no allocation, then exec. Returns only on failure.
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
    // SAFETY: an all-zero sigset_t is a valid value; sigemptyset
    // initialises it in place.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t on our stack.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: set is initialised; a null old-set pointer is allowed.
    cvt(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) })
        .map_err(at(Step::Signals))?;
    // Rust ignores SIGPIPE; the VMM gets the default, as with std's Command.
    // SAFETY: resetting a disposition to SIG_DFL touches no memory.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(at(Step::Signals)(io::Error::last_os_error()));
    }
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
    if p.private_mounts {
        // SAFETY: unshare only reads its flags.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map_err(at(Step::MountNs))?;
        // SAFETY: all pointers are NUL-terminated literals; a null data
        // pointer is allowed.
        cvt(unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            )
        })
        .map_err(at(Step::MountNs))?;
    }
    if let Some(dir) = p.drive_dir {
        // SAFETY: as above; dir is a live CString, the data string a
        // NUL-terminated literal.
        cvt(unsafe {
            libc::mount(
                c"wasp-drives".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0700,size=64k".as_ptr().cast(),
            )
        })
        .map_err(at(Step::Tmpfs))?;
    }
    for (src, dst) in p.binds {
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
    // SAFETY: _exit ends the child without running the parent's atexit
    // handlers or destructors on its copy of the heap.
    unsafe { libc::_exit(127) }
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

/// Which clone the kernel did.
enum Cloned {
    Parent { pid: i32, pidfd: OwnedFd },
    Child,
}

/// `clone3` with `args` of `size` bytes.
fn clone3(args: &mut CloneArgs, size: usize) -> io::Result<i64> {
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

/// Creates the child: clone3 with CLONE_PIDFD (and CLONE_INTO_CGROUP when
/// `cgroup_fd` is given and not refused), else clone3 without it, else
/// fork + pidfd_open. Returns whether CLONE_INTO_CGROUP was used.
fn create(cgroup_fd: Option<RawFd>) -> io::Result<(Cloned, bool)> {
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
        private_mounts,
        drive_dir,
        binds,
        cgroup,
    } = setup;
    let program = cstr(&resolve(&exec.program, &exec.env)?)?;
    let mut argv_c = vec![cstr(&exec.program)?];
    for a in &exec.args {
        argv_c.push(cstring(a)?);
    }
    let mut envp_c = Vec::with_capacity(exec.env.len());
    for (k, v) in &exec.env {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(v);
        envp_c.push(cstring(&kv)?);
    }
    let nul = std::ptr::null::<libc::c_char>();
    let argv: Vec<_> = argv_c.iter().map(|c| c.as_ptr()).chain([nul]).collect();
    let envp: Vec<_> = envp_c.iter().map(|c| c.as_ptr()).chain([nul]).collect();

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

    let into_fd = cgroup
        .as_ref()
        .filter(|c| !c.force_procs_write)
        .map(|c| c.dir.as_raw_fd());
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
        private_mounts,
        drive_dir: drive_dir.as_ref(),
        binds: &binds,
    };
    // Whether the child must write itself to cgroup.procs is known only
    // after the clone; the child decides from `into` on its own copy.
    let (cloned, into) = create(into_fd)?;
    let (pid, pidfd) = match cloned {
        Cloned::Child => {
            if cgroup.is_some() && !into {
                plan.procs = cgroup.as_ref().map(|c| c.procs.as_raw_fd());
            }
            child_main(&plan)
        }
        Cloned::Parent { pid, pidfd } => (pid, pidfd),
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

    #[test]
    fn exit_status_and_own_process_group() {
        let s = spawn(exec("sh", &["-c", "exit 7"]), ChildSetup::new()).unwrap();
        let mut p = s.process;
        assert_eq!(p.wait().unwrap().code(), Some(7));
        assert_eq!(p.wait().unwrap().code(), Some(7), "wait is idempotent");
        assert_eq!(s.placement, None);

        // `cat` blocks on its stdin pipe until we drop the write end.
        let mut e = exec("cat", &[]);
        e.stdin = Stdin::Pipe;
        let mut s = spawn(e, ChildSetup::new()).unwrap();
        let pid = s.process.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let pgrp: u32 = after.split(' ').nth(2).unwrap().parse().unwrap();
        assert_eq!(pgrp, pid, "its own process group");
        assert!(!crate::sys::pidfd::pidfd_exited(&s.pidfd, 0).unwrap());
        assert!(s.process.wait().unwrap().success(), "stdin closed by wait");
    }

    #[test]
    fn exec_failure_names_the_step() {
        let e = spawn(exec("/nonexistent/vmm", &[]), ChildSetup::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("exec"), "{e}");
    }

    #[test]
    fn stdout_goes_to_the_given_file_and_env_is_only_ours() {
        use std::io::{Read, Seek};
        let mut out = tempfile::tempfile().unwrap();
        let mut e = exec("sh", &["-c", "echo \"$WASP_T:${HOME:-none}\""]);
        e.env.push(("WASP_T".into(), "x1".into()));
        e.stdout = out.try_clone().unwrap();
        let mut s = spawn(e, ChildSetup::new()).unwrap();
        assert!(s.process.wait().unwrap().success());
        let mut text = String::new();
        out.rewind().unwrap();
        out.read_to_string(&mut text).unwrap();
        assert_eq!(text.trim(), "x1:none");
    }
}

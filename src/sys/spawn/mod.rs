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
//!   CLONE_VFORK)` on a stack this thread owns (`clone::ChildStack`). No page
//!   table of wasp is copied (the cost of a fork grows with wasp's memory
//!   and threads) and the calling thread sleeps until the child has exec'd
//!   or exited; wasp's other threads go on. The child shares wasp's memory
//!   until exec, so it only reads the `plan::ChildPlan` prepared before the
//!   clone, makes raw async-signal-safe calls, never allocates and never
//!   touches a lock. It also shares wasp's fd table (`CLONE_FILES`) and,
//!   just before exec, makes its own holding only what it needs
//!   (`close_range(CLOSE_RANGE_UNSHARE)` above stdio, then `pidfd_getfd`
//!   of its stdio and error pipe): copying wasp's table and closing every
//!   close-on-exec fd of it at exec made each launch cost O(fds wasp
//!   holds), which grows with the live clones. All signals are blocked in the calling thread across
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
//!
//! The parts: `plan` holds what the child runs between clone and exec (the
//! `ChildPlan` and its steps, the step errors); `clone` the ways to create
//! the child (the clone3 arguments, the vfork-style trampoline and its
//! stack, the fork-style fallback, the pidfd). This
//! file turns a [`ChildSetup`] and an [`Exec`] into a plan and waits for
//! the child's exec or its failed step.

mod clone;
mod plan;

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use self::clone::{create_fork, create_vfork, Cloned};
use self::plan::{child_error, child_main, is_fd_table_step, lost_error, ChildPlan, MountPlan};
use super::cvt;

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

/// Whether a vfork-style child shares wasp's fd table until it makes its
/// own with only what it needs (see `plan::own_fd_table`). Cleared for
/// good the first time a child cannot (no `close_range` or `pidfd_getfd`,
/// or no ptrace access to wasp: e.g. Yama's `ptrace_scope` 3, or not
/// root); that child's spawn fails, later ones copy the table.
static SHARE_FDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

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
    /// Lower RLIMIT_NOFILE (soft and hard) to at most this before exec.
    max_open_files: Option<u64>,
}

impl ChildSetup {
    /// Nothing to do: the child inherits the parent's namespaces.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lower the child's RLIMIT_NOFILE, soft and hard, to at most `n`
    /// (a limit already lower stays). The child's own limit only: wasp
    /// keeps its own. A program that sizes its fd table to its soft limit
    /// up front (Firecracker does, `dup2(0, soft - 1)`) then gets a table
    /// of `n` entries, whatever wasp needed for itself.
    pub fn max_open_files(mut self, n: u64) -> Self {
        self.max_open_files = Some(n);
        self
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
        max_open_files,
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
    let lost = std::sync::atomic::AtomicU64::new(0);
    let nofile = match max_open_files {
        Some(n) => {
            let (soft, hard) = super::rlimit::nofile()?;
            Some(libc::rlimit {
                rlim_cur: soft.min(n),
                rlim_max: hard.min(n),
            })
        }
        None => None,
    };

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
        nofile,
        shared_fds: VFORK_SUPPORTED
            && !force_fork
            && SHARE_FDS.load(std::sync::atomic::Ordering::Relaxed),
        parent: std::process::id() as libc::pid_t,
        lost: &lost,
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
            plan.shared_fds = false;
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
    let no_fd_table = || SHARE_FDS.store(false, std::sync::atomic::Ordering::Relaxed);
    if let (0, Some(e)) = (got, lost_error(&lost)) {
        no_fd_table();
        let _ = process.wait();
        return Err(e);
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
    if is_fd_table_step(&msg) {
        no_fd_table();
    }
    Err(child_error(&msg))
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
    fn the_child_gets_only_its_stdio_and_ours_stay_put() {
        // A vfork-style child shares our fd table until it makes its own:
        // none of our fds may reach the program, and its dup2s onto 0-2
        // must not land in our table.
        let ours = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
        let before: Vec<_> = (0..3).map(ours).collect();
        let held: Vec<File> = (0..64).map(|_| File::open("/dev/null").unwrap()).collect();
        for (force, style) in styles() {
            let text = output_of("ls -1 /proc/self/fd; readlink /proc/self/fd/0", force);
            let fds: Vec<&str> = text.lines().filter(|l| !l.starts_with('/')).collect();
            for f in &held {
                let n = f.as_raw_fd().to_string();
                assert!(!fds.contains(&n.as_str()), "{style:?}: {text}");
            }
            if style == CloneStyle::Vfork {
                // Not even an fd inherited without close-on-exec (the test
                // harness has some) gets through; ls's own directory fd is
                // the 4th.
                assert_eq!(fds, ["0", "1", "2", "3"], "{style:?}: {text}");
            }
            assert!(text.contains("/dev/null"), "{style:?}: {text}");
            let after: Vec<_> = (0..3).map(ours).collect();
            assert_eq!(before, after, "{style:?}");
        }
        // The vfork-style children made their own tables (no fallback).
        assert!(!VFORK_SUPPORTED || SHARE_FDS.load(std::sync::atomic::Ordering::Relaxed));
        drop(held);
    }

    #[test]
    fn the_child_gets_the_lower_open_files_limit_and_ours_stays() {
        let ours = crate::sys::rlimit::nofile().unwrap();
        assert!(
            ours.0 > 100,
            "the test needs a soft RLIMIT_NOFILE above 100"
        );
        for (force, style) in styles() {
            let mut out = tempfile::tempfile().unwrap();
            let mut e = exec("sh", &["-c", "ulimit -Sn; ulimit -Hn"]);
            e.stdout = out.try_clone().unwrap();
            let child = setup(force).max_open_files(100);
            let mut s = spawn(e, child).unwrap();
            assert!(s.process.wait().unwrap().success());
            use std::io::{Read, Seek};
            let mut text = String::new();
            out.rewind().unwrap();
            out.read_to_string(&mut text).unwrap();
            assert_eq!(text, "100\n100\n", "{style:?}");
            // A cap above both limits leaves them as they are.
            let text = {
                let mut out = tempfile::tempfile().unwrap();
                let mut e = exec("sh", &["-c", "ulimit -Sn"]);
                e.stdout = out.try_clone().unwrap();
                let cap = ours.1.saturating_add(1);
                let mut s = spawn(e, setup(force).max_open_files(cap)).unwrap();
                assert!(s.process.wait().unwrap().success());
                let mut text = String::new();
                out.rewind().unwrap();
                out.read_to_string(&mut text).unwrap();
                text
            };
            assert_eq!(text.trim(), ours.0.to_string(), "{style:?}");
        }
        assert_eq!(
            crate::sys::rlimit::nofile().unwrap(),
            ours,
            "wasp's own limit"
        );
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

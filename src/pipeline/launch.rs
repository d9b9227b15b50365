//! Pipeline stage "VMM launch": start the VMM directly inside the slot's
//! network namespace, in its own mount namespace (so the drive paths the
//! snapshot recorded resolve to this clone's files) and its own process
//! group, with a clean environment and per-clone log files; then wait for
//! its API socket.
//!
//! Optional [`Isolation`] per batch: each VMM in its own cgroup v2 (made
//! here with the batch's limits, entered with `CLONE_INTO_CGROUP`; see
//! `cgroup`), and jailer mode (the official jailer drops to an unprivileged
//! uid/gid and pivot_roots into a per-clone chroot where the same recorded
//! drive paths and the snapshot's files are bind-mounted; see `jailer`).
//! [`remove_isolation`] undoes both once the VMM is gone.
//!
//! A batch makes one [`MountTemplate`] and hands it to every launch
//! ([`Isolation::mount_template`]): each VMM's mount namespace is then a
//! copy of the template's small mount table (no `/run/netns` mounts) rather
//! than of wasp's whole one.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use thiserror::Error;

use crate::paths::STABLE_DRIVE_DIR;
use crate::sys;
use crate::vmm::cgroup::{CgroupError, CgroupParent, CloneCgroup};
use crate::vmm::jailer::{JailPlan, Jailer, JailerError};

pub use crate::sys::spawn::{CloneStyle, Placement, Process};

/// RLIMIT_NOFILE of a VMM wasp starts directly: its soft and hard limit
/// are lowered to this (a lower one stays). wasp raises its own limit for
/// dense batches (several fds per live clone), and a VMM would inherit it:
/// Firecracker sizes its fd table to its soft limit at start (`dup2(0,
/// soft - 1)`), so with wasp's 20 000 each VMM held a 160 KiB table of
/// kernel memory, zeroed at every start (1 MiB limits: 8 MiB each). A VMM
/// of wasp's needs a few dozen fds; 2048 is the official jailer's default
/// `no-file` limit, which jailer mode gets from the jailer itself.
pub const VMM_MAX_OPEN_FILES: u64 = 2048;

/// Optional isolation for every VMM of a batch: a per-clone cgroup with
/// limits, and jailer mode. The default is neither.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    /// Per-clone cgroups under this parent, with its limits.
    pub cgroup: Option<Arc<CgroupParent>>,
    /// Jailer mode.
    pub jailer: Option<Arc<Jailer>>,
    /// Place VMMs by writing `cgroup.procs` in the child instead of
    /// CLONE_INTO_CGROUP (tests of the fallback).
    pub force_procs_write: bool,
    /// Create VMMs fork-style even where the vfork-style clone is
    /// available (tests of the fallback; see `sys::spawn`).
    pub force_fork: bool,
    /// Copy this template's mount namespace for each VMM (outside jailer
    /// mode) instead of wasp's own. `spawn` makes one per batch.
    pub mount_template: Option<Arc<MountTemplate>>,
}

/// A template mount namespace for VMMs (see `sys::mntns`): wasp's mount
/// table without the named network namespaces' mounts (every mount on or
/// under `/run/netns`, and every nsfs mount elsewhere), with the private
/// drive tmpfs already on `STABLE_DRIVE_DIR`. Each VMM's namespace is a
/// copy of it, so a launch copies a few dozen mounts however many slots
/// exist, and no VMM pins another slot's namespace. Held by an fd only:
/// dropping the last `Arc` releases it (VMMs already launched keep their
/// own copies).
///
/// In jailer mode the jailer starts in a copy of it too, with the slot's
/// netns bound back at `/run/netns/<slot>` for its `--netns`.
pub struct MountTemplate {
    ns: OwnedFd,
    detached: Vec<PathBuf>,
    mounts_left: usize,
}

impl std::fmt::Debug for MountTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountTemplate")
            .field("detached", &self.detached.len())
            .field("mounts_left", &self.mounts_left)
            .finish_non_exhaustive()
    }
}

/// The mount points a template detaches, from the text of a mountinfo:
/// every mount point on or under `/run/netns` and every nsfs mount,
/// outermost only (detaching one also removes what is under it), each once
/// (the caller detaches until none is left there, for stacked mounts). Also
/// returns how many mounts the table keeps.
fn netns_mounts(mountinfo: &str) -> (Vec<PathBuf>, usize) {
    let run = Path::new(sys::netns::NETNS_RUN_DIR);
    let entries: Vec<(PathBuf, bool)> = mountinfo
        .lines()
        .filter_map(crate::vmm::cgroup::mountinfo_entry)
        .map(|(dir, fstype, _)| {
            let dir = PathBuf::from(dir);
            let gone = dir.starts_with(run) || fstype == "nsfs";
            (dir, gone)
        })
        .collect();
    let mut gone: Vec<&PathBuf> = entries.iter().filter(|e| e.1).map(|e| &e.0).collect();
    gone.sort_by_key(|d| d.components().count());
    let mut detach: Vec<PathBuf> = Vec::new();
    for d in gone {
        if !detach.iter().any(|o| d.starts_with(o)) {
            detach.push(d.clone());
        }
    }
    let left = entries
        .iter()
        .filter(|(dir, _)| !detach.iter().any(|o| dir.starts_with(o)))
        .count();
    (detach, left)
}

impl MountTemplate {
    /// Makes the template (creating `STABLE_DRIVE_DIR` in wasp's namespace
    /// if missing, as every launch with drives does).
    pub fn new() -> Result<Self, LaunchError> {
        let drives = Path::new(STABLE_DRIVE_DIR);
        fs::create_dir_all(drives).map_err(prepare(drives))?;
        let t0 = Instant::now();
        let mut found = (Vec::new(), 0);
        let ns = sys::mntns::make_template(|t| {
            found = netns_mounts(&t.mountinfo()?);
            for dir in &found.0 {
                while t.detach(dir)? {}
            }
            t.mount_drive_tmpfs(drives)
        })
        .map_err(LaunchError::MountTemplate)?;
        let (detached, mounts_left) = found;
        tracing::debug!(
            detached = detached.len(),
            mounts_left,
            ms = crate::stats::ms(t0.elapsed()),
            "VMM mount namespace template made"
        );
        Ok(Self {
            ns,
            detached,
            mounts_left,
        })
    }

    /// The mount points it detached.
    pub fn detached(&self) -> &[PathBuf] {
        &self.detached
    }

    /// How many mounts each VMM's namespace copies (plus the drive tmpfs).
    pub fn mounts_left(&self) -> usize {
        self.mounts_left
    }

    /// The inode of its namespace (as `/proc/PID/ns/mnt` shows it).
    pub fn inode(&self) -> Result<u64, LaunchError> {
        sys::netns::inode_of(&self.ns).map_err(LaunchError::MountTemplate)
    }
}

impl Isolation {
    /// The path the VMM sees for a host file of the snapshot (vmstate,
    /// memory): inside the chroot in jailer mode, else the same path.
    pub fn visible_path(&self, host: &Path) -> PathBuf {
        match &self.jailer {
            Some(_) => Jailer::visible_path(host),
            None => host.to_owned(),
        }
    }
}

/// Which VMM binary, and how it takes its socket argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vmm {
    /// Real Firecracker.
    Firecracker(PathBuf),
    /// wasp's stand-in VMM (never chosen silently).
    Standin(PathBuf),
}

impl Vmm {
    /// The binary.
    pub fn binary(&self) -> &Path {
        match self {
            Vmm::Firecracker(p) | Vmm::Standin(p) => p,
        }
    }
}

/// Everything needed to start one VMM.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The VMM.
    pub vmm: Vmm,
    /// Instance id (`--id` for Firecracker), e.g. the clone id.
    pub id: String,
    /// Where the API socket goes (must not exist yet); in jailer mode the
    /// socket is inside the chroot instead ([`Launched::api_sock`]).
    pub api_sock: PathBuf,
    /// The slot's named network namespace, if any.
    pub netns: Option<String>,
    /// (this clone's file, drive id): bound at `STABLE_DRIVE_DIR/<id>`.
    pub drives: Vec<(PathBuf, String)>,
    /// Directory for `vmm.stdout` / `vmm.stderr`.
    pub log_dir: PathBuf,
    /// Extra VMM arguments (e.g. the stand-in's `--fault`). Never secrets:
    /// argv is world-readable.
    pub extra_args: Vec<String>,
    /// Give the VMM a pipe on stdin, held open as long as the returned
    /// `Child` lives, instead of /dev/null. Firecracker 1.12.1 can drop
    /// serial output when its stdin is at EOF, so a boot that waits for a
    /// serial line needs this.
    pub stdin_pipe: bool,
    /// cgroup and jailer.
    pub isolation: Isolation,
    /// The snapshot's shared files (vmstate, memory) that a jailed VMM must
    /// see at [`Isolation::visible_path`]; unused otherwise.
    pub snapshot_files: Vec<PathBuf>,
}

/// A started VMM.
#[derive(Debug)]
pub struct Launched {
    /// The child wasp started (reaped by whoever waits on it): the VMM, or
    /// in jailer mode the jailer, already exited and reaped (the VMM is in
    /// its own pid namespace, not wasp's child: kill it through
    /// [`Launched::pidfd`]).
    pub child: Process,
    /// The VMM's pid (in wasp's pid namespace).
    pub pid: i32,
    /// A pidfd on the VMM: signals always reach this process, never a
    /// recycled pid.
    pub pidfd: OwnedFd,
    /// When the process was spawned.
    pub spawned_at: Instant,
    /// Its API socket (inside the chroot in jailer mode).
    pub api_sock: PathBuf,
    /// How it was put into its cgroup, when it has one.
    pub placement: Option<Placement>,
    /// How the process was created (vfork- or fork-style).
    pub style: CloneStyle,
    /// Its cgroup (removed with [`remove_isolation`]).
    pub cgroup: Option<PathBuf>,
    /// Its jail directory (removed with [`remove_isolation`]).
    pub jail_dir: Option<PathBuf>,
}

/// Errors of the launch stage.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// The slot namespace could not be opened.
    #[error("cannot open the slot's network namespace {netns}")]
    Netns {
        /// Namespace name.
        netns: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Preparing directories or log files failed.
    #[error("cannot prepare {path}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// fork/exec or the child's setup failed.
    #[error("cannot start {binary}")]
    Spawn {
        /// The VMM binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The VMM exited before its socket accepted.
    #[error(
        "the VMM (pid {pid}) exited before its API socket {sock} accepted connections; see {log}"
    )]
    Exited {
        /// pid.
        pid: i32,
        /// Socket path.
        sock: PathBuf,
        /// stderr log.
        log: PathBuf,
    },
    /// The socket did not accept in time.
    #[error("the VMM's API socket {sock} did not accept connections within {timeout:?}")]
    SocketTimeout {
        /// Socket path.
        sock: PathBuf,
        /// The bound.
        timeout: Duration,
    },
    /// The clone's cgroup could not be made or removed.
    #[error("per-clone cgroup")]
    Cgroup(#[source] CgroupError),
    /// The template mount namespace could not be made.
    #[error("cannot make the template mount namespace for the VMMs")]
    MountTemplate(#[source] io::Error),
    /// The clone's jail could not be made or removed.
    #[error("jailer mode")]
    Jail(#[source] JailerError),
    /// The jailer did not exit in time (it was killed).
    #[error("the jailer (pid {pid}) did not start the VMM and exit within {timeout:?}; killed; see {log}")]
    JailerTimeout {
        /// The jailer's pid.
        pid: i32,
        /// The bound.
        timeout: Duration,
        /// stderr log.
        log: PathBuf,
    },
    /// inotify or connect failed unexpectedly.
    #[error("waiting for the API socket {sock} failed")]
    Wait {
        /// Socket path.
        sock: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn prepare(path: &Path) -> impl Fn(io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Prepare {
        path: path.to_owned(),
        source,
    }
}

/// Starts the VMM described by `spec`: makes its cgroup and jail when the
/// isolation asks for them (removed again if the launch fails), then
/// clones it into them.
pub fn launch(spec: &LaunchSpec) -> Result<Launched, LaunchError> {
    let iso = &spec.isolation;
    let jail = match &iso.jailer {
        Some(j) => {
            if !matches!(spec.vmm, Vmm::Firecracker(_)) {
                return Err(LaunchError::Jail(JailerError::NotFirecracker));
            }
            Some(
                j.prepare(&spec.id, &spec.drives, &spec.log_dir, &spec.snapshot_files)
                    .map_err(LaunchError::Jail)?,
            )
        }
        None => None,
    };
    let cgroup = match iso.cgroup.as_ref().map(|c| c.create(&spec.id)).transpose() {
        Ok(c) => c,
        Err(e) => {
            remove_isolation(None, jail.as_ref().map(|j| j.dir.as_path()));
            return Err(LaunchError::Cgroup(e));
        }
    };
    let cgroup_path = cgroup.as_ref().map(|c| c.path.clone());
    let jail_dir = jail.as_ref().map(|j| j.dir.clone());
    start(spec, jail, cgroup).inspect_err(|_| {
        remove_isolation(cgroup_path.as_deref(), jail_dir.as_deref());
    })
}

/// Removes a clone's cgroup and jail directory (after its VMM is gone).
/// Best-effort: returns every error.
pub fn remove_isolation(cgroup: Option<&Path>, jail_dir: Option<&Path>) -> Vec<LaunchError> {
    let mut errors = Vec::new();
    if let Some(c) = cgroup {
        if let Err(e) = crate::vmm::cgroup::remove(c, Duration::from_secs(5)) {
            errors.push(LaunchError::Cgroup(e));
        }
    }
    if let Some(j) = jail_dir {
        if let Err(e) = crate::vmm::jailer::remove_jail(j) {
            errors.push(LaunchError::Jail(e));
        }
    }
    errors
}

fn start(
    spec: &LaunchSpec,
    jail: Option<JailPlan>,
    cgroup: Option<CloneCgroup>,
) -> Result<Launched, LaunchError> {
    fs::create_dir_all(&spec.log_dir).map_err(prepare(&spec.log_dir))?;
    let out_path = spec.log_dir.join("vmm.stdout");
    let err_path = spec.log_dir.join("vmm.stderr");
    let open_log = |p: &Path| -> Result<File, LaunchError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(prepare(p))
    };
    let (stdout, stderr) = (open_log(&out_path)?, open_log(&err_path)?);

    let mut setup = sys::spawn::ChildSetup::new();
    let mut args: Vec<OsString> = Vec::new();
    let (program, api_sock) = match (&jail, &spec.isolation.jailer) {
        (Some(plan), Some(j)) => {
            // The jailer joins the netns itself (--netns) and pivot_roots
            // into the chroot, keeping these binds. With the template, the
            // jailer starts in a copy of it (its own namespace is a copy of
            // that: a few dozen mounts, not one per slot), where the slot's
            // netns is bound at its /run/netns path for `--netns`.
            if let Some(t) = &spec.isolation.mount_template {
                let ns = t.ns.try_clone().map_err(LaunchError::MountTemplate)?;
                setup = setup.mount_template(ns, None);
                if let Some(name) = &spec.netns {
                    let fd = sys::netns::open_named(name).map_err(|source| LaunchError::Netns {
                        netns: name.clone(),
                        source,
                    })?;
                    let at = sys::netns::path_of(name);
                    setup = setup.bind_netns(fd, &at).map_err(prepare(&at))?;
                }
            }
            for (src, dst, read_only) in &plan.binds {
                setup = setup
                    .bind_file_locked(src, dst, *read_only)
                    .map_err(prepare(src))?;
            }
            args.extend(
                j.args(&spec.id, plan.uid, spec.netns.as_deref())
                    .into_iter()
                    .map(Into::into),
            );
            (j.binary().to_owned(), plan.api_sock.clone())
        }
        _ => {
            // The jailer sets the VMM's limit itself (its `no-file`
            // default is the same 2048).
            setup = setup.max_open_files(VMM_MAX_OPEN_FILES);
            if let Some(ns) = &spec.netns {
                let fd = sys::netns::open_named(ns).map_err(|source| LaunchError::Netns {
                    netns: ns.clone(),
                    source,
                })?;
                setup = setup.netns(fd);
            }
            if !spec.drives.is_empty() {
                let dir = Path::new(STABLE_DRIVE_DIR);
                match &spec.isolation.mount_template {
                    Some(t) => {
                        let ns = t.ns.try_clone().map_err(LaunchError::MountTemplate)?;
                        setup = setup.mount_template(ns, Some(dir));
                    }
                    None => fs::create_dir_all(dir).map_err(prepare(dir))?,
                }
                for (file, drive_id) in &spec.drives {
                    setup = setup
                        .bind_drive(dir, file, &crate::paths::stable_drive_path(drive_id))
                        .map_err(prepare(file))?;
                }
            }
            args.push("--api-sock".into());
            args.push(spec.api_sock.clone().into());
            if let Vmm::Firecracker(_) = spec.vmm {
                args.push("--id".into());
                args.push(spec.id.clone().into());
            }
            (spec.vmm.binary().to_owned(), spec.api_sock.clone())
        }
    };
    args.extend(spec.extra_args.iter().map(Into::into));
    setup = setup.force_fork(spec.isolation.force_fork);
    let cgroup_path = cgroup.as_ref().map(|c| c.path.clone());
    if let Some(c) = cgroup {
        setup = setup.cgroup(c.dir, c.procs, spec.isolation.force_procs_write);
    }
    let exec = sys::spawn::Exec {
        program: program.clone(),
        args,
        // A clean environment: nothing of wasp's (secrets included)
        // reaches the VMM.
        env: vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
        stdin: if spec.stdin_pipe {
            sys::spawn::Stdin::Pipe
        } else {
            sys::spawn::Stdin::Null
        },
        stdout,
        stderr,
    };
    let spawned_at = Instant::now();
    let mut spawned = sys::spawn::spawn(exec, setup).map_err(|source| LaunchError::Spawn {
        binary: program,
        source,
    })?;
    let (pid, pidfd) = match (&jail, &spec.isolation.jailer) {
        (Some(_), Some(j)) => jailed_vmm(j, &spec.id, &mut spawned, &api_sock, &err_path)?,
        _ => (spawned.process.id() as i32, spawned.pidfd),
    };
    Ok(Launched {
        pid,
        child: spawned.process,
        pidfd,
        spawned_at,
        api_sock,
        placement: spawned.placement,
        style: spawned.style,
        cgroup: cgroup_path,
        jail_dir: jail.map(|j| j.dir),
    })
}

/// The jailed VMM behind a jailer started with `--new-pid-ns`: waits (up
/// to [`JAILER_EXIT_TIMEOUT`]) for the jailer to fork the VMM into its pid
/// namespace and exit, reaps it, then takes hold of the VMM it named
/// ([`Jailer::vmm`]). A jailer that fails, or a VMM already gone, is
/// [`LaunchError::Exited`].
fn jailed_vmm(
    j: &Jailer,
    id: &str,
    spawned: &mut sys::spawn::Spawned,
    sock: &Path,
    log: &Path,
) -> Result<(i32, OwnedFd), LaunchError> {
    let jailer_pid = spawned.process.id() as i32;
    let exited = |pid| LaunchError::Exited {
        pid,
        sock: sock.to_owned(),
        log: log.to_owned(),
    };
    let ms = JAILER_EXIT_TIMEOUT.as_millis() as i32;
    let done =
        sys::pidfd::pidfd_exited(&spawned.pidfd, ms).map_err(|source| LaunchError::Wait {
            sock: sock.to_owned(),
            source,
        })?;
    if !done {
        let _ = spawned.process.kill();
        let _ = spawned.process.wait();
        return Err(LaunchError::JailerTimeout {
            pid: jailer_pid,
            timeout: JAILER_EXIT_TIMEOUT,
            log: log.to_owned(),
        });
    }
    let status = spawned.process.wait().map_err(|source| LaunchError::Wait {
        sock: sock.to_owned(),
        source,
    })?;
    if !status.success() {
        return Err(exited(jailer_pid));
    }
    match j.vmm(id) {
        Ok(v) => Ok(v),
        Err(JailerError::VmmGone { pid, .. }) => Err(exited(pid)),
        Err(e) => Err(LaunchError::Jail(e)),
    }
}

/// How long a jailer gets to start the VMM in its pid namespace and exit
/// (it copies Firecracker into the chroot and makes a few device nodes).
pub const JAILER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until `sock` accepts a connection, using inotify for the file to
/// appear (no polling, no sleeps) and retrying connect only in the short
/// window between the server's bind() and listen(). Fails early if the
/// process behind `pidfd` exits.
pub fn wait_for_socket(
    sock: &Path,
    pidfd: &OwnedFd,
    pid: i32,
    log: &Path,
    timeout: Duration,
) -> Result<UnixStream, LaunchError> {
    let deadline = Instant::now() + timeout;
    let werr = |source: io::Error| LaunchError::Wait {
        sock: sock.to_owned(),
        source,
    };
    let dir = sock.parent().unwrap_or(Path::new("/"));
    let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| werr(e.into()))?;
    ino.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
        .map_err(|e| werr(e.into()))?;
    // The watch is in place; from now on no creation can be missed.
    while !sock.exists() {
        let now = Instant::now();
        if now >= deadline {
            return Err(LaunchError::SocketTimeout {
                sock: sock.to_owned(),
                timeout,
            });
        }
        let left = (deadline - now).as_millis().min(i32::MAX as u128) as i32;
        match sys::poll::wait_readable(&[ino.as_fd_raw(), sys::poll::raw(pidfd)], left)
            .map_err(werr)?
        {
            Some(1) => {
                return Err(LaunchError::Exited {
                    pid,
                    sock: sock.to_owned(),
                    log: log.to_owned(),
                })
            }
            Some(_) => {
                // Drain; the loop re-checks the path itself.
                let _ = ino.read_events();
            }
            None => {}
        }
    }
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return Ok(s),
            Err(e)
                if e.raw_os_error() == Some(libc::ECONNREFUSED)
                    || e.kind() == io::ErrorKind::NotFound =>
            {
                if sys::pidfd::pidfd_exited(pidfd, 0).map_err(werr)? {
                    return Err(LaunchError::Exited {
                        pid,
                        sock: sock.to_owned(),
                        log: log.to_owned(),
                    });
                }
                if Instant::now() >= deadline {
                    return Err(LaunchError::SocketTimeout {
                        sock: sock.to_owned(),
                        timeout,
                    });
                }
                // bind() done, listen() not yet: a few microseconds.
                std::thread::yield_now();
            }
            Err(e) => return Err(werr(e)),
        }
    }
}

/// Extension: the raw fd of an `Inotify`.
trait InotifyFd {
    fn as_fd_raw(&self) -> std::os::fd::RawFd;
}

impl InotifyFd for Inotify {
    fn as_fd_raw(&self) -> std::os::fd::RawFd {
        use std::os::fd::{AsFd, AsRawFd};
        self.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_detaches_netns_mounts_outermost_only_and_each_once() {
        let info = "\
27 1 254:0 / / rw - ext4 /dev/vda rw
24 27 0:6 / /dev rw - devtmpfs devtmpfs rw
42 27 254:0 /run/netns /run/netns rw shared:1 - ext4 /dev/vda rw
43 42 254:0 /run/netns /run/netns rw shared:1 - ext4 /dev/vda rw
48 42 0:4 net:[4026532317] /run/netns/wasp-p-0 rw shared:5 - nsfs nsfs rw
49 42 0:4 net:[4026532429] /run/netns/wasp-p-1 rw shared:6 - nsfs nsfs rw
50 27 0:4 net:[4026532500] /run/docker/netns/abc rw - nsfs nsfs rw
51 27 0:50 / /run/wasp rw - tmpfs tmpfs rw
52 27 0:51 / /var/lib/with\\040space rw - xfs /dev/loop0 rw
";
        let (detach, left) = netns_mounts(info);
        assert_eq!(
            detach,
            vec![
                PathBuf::from("/run/netns"),
                PathBuf::from("/run/docker/netns/abc")
            ]
        );
        // /, /dev, /run/wasp and the XFS mount stay.
        assert_eq!(left, 4);
        // Nothing to detach where no netns is named.
        let (detach, left) = netns_mounts("27 1 254:0 / / rw - ext4 /dev/vda rw\n");
        assert!(detach.is_empty());
        assert_eq!(left, 1);
    }
}

//! Pipeline stage "VMM launch": start the VMM directly inside the slot's
//! network namespace, in its own mount namespace (so the drive paths the
//! snapshot recorded resolve to this clone's files) and its own process
//! group, with a clean environment and per-clone log files; then wait for
//! its API socket.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use thiserror::Error;

use crate::paths::STABLE_DRIVE_DIR;
use crate::sys;

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
    /// Where the API socket goes (must not exist yet).
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
}

/// A started VMM.
#[derive(Debug)]
pub struct Launched {
    /// The child (reaped by whoever waits on it).
    pub child: Child,
    /// Its pid.
    pub pid: i32,
    /// A pidfd: signals always reach this process, never a recycled pid.
    pub pidfd: OwnedFd,
    /// When the process was spawned.
    pub spawned_at: Instant,
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

/// Starts the VMM described by `spec`.
pub fn launch(spec: &LaunchSpec) -> Result<Launched, LaunchError> {
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
    if let Some(ns) = &spec.netns {
        let fd = sys::netns::open_named(ns).map_err(|source| LaunchError::Netns {
            netns: ns.clone(),
            source,
        })?;
        setup = setup.netns(fd);
    }
    if !spec.drives.is_empty() {
        let dir = Path::new(STABLE_DRIVE_DIR);
        fs::create_dir_all(dir).map_err(prepare(dir))?;
        for (file, drive_id) in &spec.drives {
            setup = setup
                .bind_drive(dir, file, &crate::paths::stable_drive_path(drive_id))
                .map_err(prepare(file))?;
        }
    }

    let mut cmd = Command::new(spec.vmm.binary());
    cmd.arg("--api-sock").arg(&spec.api_sock);
    if let Vmm::Firecracker(_) = spec.vmm {
        cmd.arg("--id").arg(&spec.id);
    }
    cmd.args(&spec.extra_args);
    // A clean environment: nothing of wasp's (secrets included) reaches the VMM.
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(if spec.stdin_pipe {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdout)
        .stderr(stderr);
    let spawned_at = Instant::now();
    let binary = spec.vmm.binary().to_owned();
    let child = sys::spawn::spawn(&mut cmd, setup).map_err(|source| LaunchError::Spawn {
        binary: binary.clone(),
        source,
    })?;
    let pid = child.id() as i32;
    let pidfd =
        sys::pidfd::pidfd_open(pid).map_err(|source| LaunchError::Spawn { binary, source })?;
    Ok(Launched {
        child,
        pid,
        pidfd,
        spawned_at,
    })
}

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

//! Tearing clones down: exactly the VMM wasp started (through a pidfd,
//! checked against the recorded start time so a recycled pid is never
//! signalled), then the clone's files and record. Best-effort: every step
//! runs, and every error is reported.

use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use crate::state::{self, CloneRecord};
use crate::sys::pidfd;
use crate::vmm::VmmFate;

/// One failed teardown step.
#[derive(Debug, Error)]
pub enum TeardownError {
    /// Signalling the VMM failed.
    #[error("clone {id}: cannot signal VMM pid {pid}")]
    Signal {
        /// Clone.
        id: String,
        /// pid.
        pid: i32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM survived SIGKILL's wait.
    #[error("clone {id}: VMM pid {pid} did not exit after SIGKILL")]
    Survived {
        /// Clone.
        id: String,
        /// pid.
        pid: i32,
    },
    /// Removing the clone's files failed.
    #[error("clone {id}: cannot remove {path}")]
    Files {
        /// Clone.
        id: String,
        /// Dir.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Removing the clone's cgroup or jail failed.
    #[error("clone {id}: cannot remove its isolation")]
    Isolation {
        /// Clone.
        id: String,
        /// Cause.
        #[source]
        source: crate::pipeline::launch::LaunchError,
    },
    /// Removing the record failed.
    #[error("clone {id}: cannot remove its record")]
    Record {
        /// Clone.
        id: String,
        /// Cause.
        #[source]
        source: state::StateError,
    },
}

/// A VMM whose stop has begun ([`begin_stop`]).
pub enum Stopping {
    /// It was gone already.
    Gone,
    /// Signalled (SIGTERM, or SIGKILL first for the init of a pid
    /// namespace), through this pidfd.
    Signalled {
        /// The pidfd the signals went through.
        fd: std::os::fd::OwnedFd,
        /// SIGKILL went first.
        init: bool,
    },
}

/// The first half of [`stop_vmm`]: opens a pidfd on the recorded VMM,
/// checks it is the process wasp started, and sends the first signal.
pub fn begin_stop(r: &CloneRecord) -> Result<Stopping, TeardownError> {
    let Ok(fd) = pidfd::pidfd_open(r.pid) else {
        return Ok(Stopping::Gone);
    };
    // The pidfd pins the process; check it is the one we started.
    if !state::same_process(r.pid, r.pid_start) {
        return Ok(Stopping::Gone);
    }
    // Init of its own pid namespace (a jailed VMM, `--new-pid-ns`): the
    // kernel drops a SIGTERM it has no handler for, so grace would only
    // delay the SIGKILL, which goes first.
    let init = is_pid_ns_init(r.pid);
    let first = if init { libc::SIGKILL } else { libc::SIGTERM };
    match pidfd::pidfd_send_signal(&fd, first) {
        Ok(()) => Ok(Stopping::Signalled { fd, init }),
        Err(source) if source.raw_os_error() == Some(libc::ESRCH) => Ok(Stopping::Gone),
        Err(source) => Err(TeardownError::Signal {
            id: r.id.clone(),
            pid: r.pid,
            source,
        }),
    }
}

/// The second half of [`stop_vmm`]: waits for the VMM until `deadline`,
/// SIGKILLs it past that, and waits for it to go.
pub fn finish_stop(
    r: &CloneRecord,
    s: Stopping,
    deadline: std::time::Instant,
) -> Result<VmmFate, TeardownError> {
    let Stopping::Signalled { fd, init } = s else {
        return Ok(VmmFate::AlreadyGone);
    };
    let wait =
        |ms: u128| pidfd::pidfd_exited(&fd, ms.min(i32::MAX as u128) as i32).unwrap_or(false);
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if !init && wait(left.as_millis()) {
        return Ok(VmmFate::Terminated);
    }
    if !init {
        pidfd::pidfd_send_signal(&fd, libc::SIGKILL).map_err(|source| TeardownError::Signal {
            id: r.id.clone(),
            pid: r.pid,
            source,
        })?;
    }
    if wait(5_000) {
        Ok(VmmFate::Killed)
    } else {
        Err(TeardownError::Survived {
            id: r.id.clone(),
            pid: r.pid,
        })
    }
}

/// Stops the clone's VMM: SIGTERM, up to `grace` for it to exit, then
/// SIGKILL (at once for a VMM that is init of its own pid namespace, which
/// would drop the SIGTERM). Never signals a process that is not the
/// recorded one.
pub fn stop_vmm(r: &CloneRecord, grace: Duration) -> Result<VmmFate, TeardownError> {
    let s = begin_stop(r)?;
    finish_stop(r, s, std::time::Instant::now() + grace)
}

/// True when `pid` is init (pid 1) of a pid namespace below wasp's: its
/// `NSpid` line in /proc/PID/status has more than one field, the last 1.
fn is_pid_ns_init(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let ids: Vec<String> = s
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))?
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            Some(ids.len() > 1 && ids.last().map(String::as_str) == Some("1"))
        })
        .unwrap_or(false)
}

/// Removes a clone directory, but only one named with wasp's prefix.
pub fn remove_clone_dir(id: &str, dir: &Path) -> Result<(), TeardownError> {
    let named_ok = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(crate::paths::PREFIX));
    if !named_ok {
        return Err(TeardownError::Files {
            id: id.into(),
            path: dir.display().to_string(),
            source: std::io::Error::other("not a wasp clone directory; left alone"),
        });
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TeardownError::Files {
            id: id.into(),
            path: dir.display().to_string(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Stops the VMM, removes files and record. Returns the VMM's fate and
/// every error met (teardown continues past each).
pub fn teardown(
    store: &state::Store,
    r: &CloneRecord,
    grace: Duration,
) -> (Option<VmmFate>, Vec<TeardownError>) {
    let stopped = stop_vmm(r, grace);
    finish_teardown(store, r, stopped)
}

/// [`teardown`] of many clones at once: the VMMs of a wave are signalled
/// first, so they exit side by side, then each is waited for within what
/// is left of the wave's `grace` (SIGKILL past it) and its files,
/// isolation and record removed. One result per record, in order.
pub fn teardown_many(
    store: &state::Store,
    records: &[CloneRecord],
    grace: Duration,
) -> Vec<(Option<VmmFate>, Vec<TeardownError>)> {
    let mut out = Vec::with_capacity(records.len());
    // In waves of [`STOP_WAVE`]: thousands of VMMs exiting at once would
    // all contend for the CPUs together.
    for wave in records.chunks(STOP_WAVE) {
        let begun: Vec<_> = wave.iter().map(begin_stop).collect();
        let deadline = std::time::Instant::now() + grace;
        out.extend(wave.iter().zip(begun).map(|(r, b)| {
            let stopped = b.and_then(|s| finish_stop(r, s, deadline));
            finish_teardown(store, r, stopped)
        }));
    }
    out
}

/// How many VMMs [`teardown_many`] (and the engine's shutdown) signal
/// before waiting for them.
pub const STOP_WAVE: usize = 256;

/// The rest of a teardown once the VMM's stop is known: files, isolation
/// and record.
fn finish_teardown(
    store: &state::Store,
    r: &CloneRecord,
    stopped: Result<VmmFate, TeardownError>,
) -> (Option<VmmFate>, Vec<TeardownError>) {
    let mut errors = Vec::new();
    let fate = match stopped {
        Ok(f) => Some(f),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    crate::testhook::point("teardown-vmm-stopped");
    if let Err(e) = remove_clone_dir(&r.id, &r.clone_dir) {
        errors.push(e);
    }
    // After the VMM: an empty cgroup is removed at once; one that still
    // holds processes (the VMM survived its signals) is emptied through
    // cgroup.kill first. Then the jail, like the clone's files above.
    for source in
        crate::pipeline::launch::remove_isolation(r.cgroup.as_deref(), r.jail_dir.as_deref())
    {
        errors.push(TeardownError::Isolation {
            id: r.id.clone(),
            source,
        });
    }
    if let Err(source) = store.remove(&r.id) {
        errors.push(TeardownError::Record {
            id: r.id.clone(),
            source,
        });
    }
    (fate, errors)
}

/// Clone ids named in full in [`DrainError::LiveClones`]; more are counted.
const LIVE_LISTED: usize = 8;

/// Why a pool may not be drained (yet).
#[derive(Debug, Error)]
pub enum DrainError {
    /// Live clones use the pool's slots.
    #[error(
        "pool {pool} has {} live clone(s): {}; draining would pull the network out from under them. Stop them first with `wasp kill ID…` (or `wasp kill --all`), or pass --force to kill them and then drain",
        clones.len(),
        list_clones(clones)
    )]
    LiveClones {
        /// The pool.
        pool: String,
        /// Their records.
        clones: Vec<CloneRecord>,
    },
    /// The state dir could not be read.
    #[error("cannot list the clones of pool {pool}")]
    State {
        /// The pool.
        pool: String,
        /// Cause.
        #[source]
        source: state::StateError,
    },
    /// `--force` could not tear every live clone down; the pool was not
    /// drained.
    #[error("pool {pool} not drained: {} of its live clone(s) could not be torn down: {}", errors.len(), errors.iter().map(|e| crate::error::chain(e)).collect::<Vec<_>>().join("; "))]
    Teardown {
        /// The pool.
        pool: String,
        /// Every teardown error.
        errors: Vec<TeardownError>,
    },
}

fn list_clones(clones: &[CloneRecord]) -> String {
    let mut s: Vec<String> = clones
        .iter()
        .take(LIVE_LISTED)
        .map(|c| format!("{} (VMM pid {}, {}, {})", c.id, c.pid, c.netns, c.clone_ip))
        .collect();
    if clones.len() > LIVE_LISTED {
        s.push(format!(
            "and {} more (`wasp ls`)",
            clones.len() - LIVE_LISTED
        ));
    }
    s.join(", ")
}

/// A live clone `--force` tore down before a drain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Killed {
    /// Clone id.
    pub id: String,
    /// What happened to its VMM.
    pub vmm: Option<VmmFate>,
}

/// Makes way for draining `pool`: finds its live clones in `store` (records
/// whose VMM is alive, [`state::Store::live_in_pool`]). Without `force`,
/// any is [`DrainError::LiveClones`] and nothing is touched; with `force`,
/// each is torn down like `wasp kill` ([`teardown`]), and any teardown
/// error is [`DrainError::Teardown`] (the caller must not drain then).
pub fn clear_for_drain(
    store: &state::Store,
    pool: &str,
    force: bool,
    grace: Duration,
) -> Result<Vec<Killed>, DrainError> {
    let live = store
        .live_in_pool(pool)
        .map_err(|source| DrainError::State {
            pool: pool.to_owned(),
            source,
        })?;
    if live.is_empty() {
        return Ok(Vec::new());
    }
    if !force {
        return Err(DrainError::LiveClones {
            pool: pool.to_owned(),
            clones: live,
        });
    }
    let mut killed = Vec::new();
    let mut errors = Vec::new();
    for r in &live {
        let (vmm, errs) = teardown(store, r, grace);
        errors.extend(errs);
        killed.push(Killed {
            id: r.id.clone(),
            vmm,
        });
    }
    if errors.is_empty() {
        Ok(killed)
    } else {
        Err(DrainError::Teardown {
            pool: pool.to_owned(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn record(pid: i32, start: u64, dir: &Path) -> CloneRecord {
        CloneRecord {
            id: "t-0".into(),
            pid,
            pid_start: start,
            vmm: "standin".into(),
            netns: "wasp-p-0".into(),
            slot: 0,
            pool: "p".into(),
            host_netns: None,
            clone_ip: Ipv4Addr::new(10, 0, 0, 2),
            ready_port: None,
            api_sock: dir.join("api.sock"),
            clone_dir: dir.to_owned(),
            snapshot: "/snap".into(),
            created_at: "x".into(),
            cgroup: None,
            jail_dir: None,
            request: None,
            labels: Default::default(),
            expires_at_ms: None,
            paused: false,
        }
    }

    #[test]
    fn stops_the_recorded_process_and_spares_a_recycled_pid() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = state::pid_start_time(pid).unwrap();
        // Wrong start time: treated as a recycled pid, never signalled.
        let fate = stop_vmm(
            &record(pid, start + 1, Path::new("/x")),
            Duration::from_millis(10),
        )
        .unwrap();
        assert_eq!(fate, VmmFate::AlreadyGone);
        assert!(
            child.try_wait().unwrap().is_none(),
            "a recycled pid was signalled"
        );
        let fate = stop_vmm(&record(pid, start, Path::new("/x")), Duration::from_secs(5)).unwrap();
        assert_eq!(fate, VmmFate::Terminated);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn drain_is_refused_while_clones_live_and_names_them() {
        let d = tempfile::tempdir().unwrap();
        let s = state::Store::open(&d.path().join("state")).unwrap();
        let grace = Duration::from_millis(10);
        // No records, or only a dead clone's: nothing stands in the way.
        assert!(clear_for_drain(&s, "p", false, grace).unwrap().is_empty());
        s.put(&record(i32::MAX, 0, d.path())).unwrap();
        assert!(clear_for_drain(&s, "p", false, grace).unwrap().is_empty());
        // Live ones (this test process stands in for their VMMs).
        let me = std::process::id() as i32;
        let start = state::pid_start_time(me).unwrap();
        for i in 0..LIVE_LISTED + 2 {
            s.put(&CloneRecord {
                id: format!("live-{i:02}"),
                ..record(me, start, d.path())
            })
            .unwrap();
        }
        let e = clear_for_drain(&s, "p", false, grace).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "pool p has {} live clone(s): live-00 (VMM pid {me}, wasp-p-0, 10.0.0.2), ",
                LIVE_LISTED + 2
            )),
            "{msg}"
        );
        assert!(msg.contains("and 2 more (`wasp ls`)"), "{msg}");
        assert!(!msg.contains("live-09"), "{msg}");
        assert!(msg.contains("--force"), "{msg}");
        // Another pool's drain is not blocked by them.
        assert!(clear_for_drain(&s, "q", false, grace).unwrap().is_empty());
        assert_eq!(
            s.list().unwrap().0.len(),
            LIVE_LISTED + 3,
            "nothing removed"
        );
    }

    #[test]
    fn teardown_removes_files_and_record_and_refuses_foreign_dirs() {
        let d = tempfile::tempdir().unwrap();
        let s = state::Store::open(&d.path().join("state")).unwrap();
        let dir = d.path().join("wasp-t-0");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rootfs"), b"x").unwrap();
        let r = record(i32::MAX, 0, &dir);
        s.put(&r).unwrap();
        let (fate, errors) = teardown(&s, &r, Duration::from_millis(10));
        assert_eq!(fate, Some(VmmFate::AlreadyGone));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!dir.exists());
        assert!(s.list().unwrap().0.is_empty());

        let foreign = d.path().join("precious");
        std::fs::create_dir_all(&foreign).unwrap();
        let e = remove_clone_dir("t-0", &foreign).unwrap_err();
        assert!(e.to_string().contains("precious"));
        assert!(foreign.exists());
    }
}

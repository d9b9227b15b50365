//! The seam between the HTTP layer and what it drives: [`Backend`], with
//! the engine as the real implementation ([`EngineBackend`]) and a
//! recording fake ([`super::fake::FakeBackend`]) for routing, validation,
//! auth and metrics tests without root.
//!
//! Every method may block (a spawn waits for its clones); the HTTP layer
//! calls them on tokio's blocking pool, never on a runtime worker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use super::api::{AdoptBody, PoolBody, SnapshotBody, SpawnSpec};
use crate::engine::batch::{Slots, SpawnError, SpawnReport};
use crate::engine::{
    Capacity, Engine, EngineError, LiveClone, PoolMarks, Reaped, SnapshotSource, SpawnRequest,
};
use crate::pipeline::pool::PoolStatus;
use crate::pipeline::ready::Ready;
use crate::pipeline::restore::Timeouts;
use crate::pipeline::storage::clone::{CloneStore, Mode, StorageError};
use crate::snapshot::adopt;

/// A backend's refusal or failure.
#[derive(Debug, Error)]
pub enum BackendError {
    /// No such clone, snapshot or pool (404).
    #[error("{0}")]
    NotFound(String),
    /// The body names something that does not exist or cannot be used (422).
    #[error("{0}")]
    Invalid(String),
    /// The resource is in the wrong state (409).
    #[error("{0}")]
    Conflict(String),
    /// The host cannot hold it now (503 with `Retry-After`).
    #[error("{detail}")]
    Overloaded {
        /// What and why.
        detail: String,
        /// Seconds until a retry may succeed.
        retry_after_s: u64,
    },
    /// The daemon is not ready or is shutting down (503).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (500).
    #[error("{0}")]
    Internal(String),
}

/// A snapshot the daemon knows, by name.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The name clone requests use.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The VMM that made it.
    pub vmm: String,
    /// Its version.
    pub vmm_version: String,
    /// Guest memory, MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Drives.
    pub drives: usize,
}

/// One pool and its counters.
#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    /// Pool name.
    pub name: String,
    /// Counters.
    #[serde(flatten)]
    pub status: PoolStatus,
}

/// `/readyz`'s answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// Adoption is done and the pool was warm once.
    pub ready: bool,
    /// The pool has its free slots now.
    pub warm: bool,
    /// Live clones adopted from the state dir at start.
    pub adopted: usize,
    /// Recorded clones that could not be adopted and were reclaimed.
    pub reclaimed: usize,
}

/// What the HTTP layer drives.
pub trait Backend: Send + Sync + 'static {
    /// The VMM the daemon runs (`firecracker` or `standin`).
    fn vmm(&self) -> &str;
    /// Runs one request to the end (blocks until every clone is ready or
    /// failed).
    fn spawn(&self, spec: SpawnSpec) -> Result<SpawnReport, BackendError>;
    /// Every live clone.
    fn list(&self) -> Vec<LiveClone>;
    /// One live clone.
    fn get(&self, id: &str) -> Option<LiveClone>;
    /// Stops one clone.
    fn kill(&self, id: &str) -> Result<Reaped, BackendError>;
    /// Stops every clone whose labels include all of `labels`.
    fn kill_matching(&self, labels: &BTreeMap<String, String>) -> Vec<Reaped>;
    /// Pauses a clone (it keeps its slot).
    fn pause(&self, id: &str) -> Result<LiveClone, BackendError>;
    /// Resumes a paused clone.
    fn resume(&self, id: &str) -> Result<LiveClone, BackendError>;
    /// Sets a clone's time to live from now (`None`: no limit).
    fn set_ttl(&self, id: &str, ttl: Option<Duration>) -> Result<LiveClone, BackendError>;
    /// The snapshots by name.
    fn snapshots(&self) -> Vec<SnapshotInfo>;
    /// Adds (and if asked, adopts) a snapshot directory.
    fn add_snapshot(&self, body: SnapshotBody) -> Result<SnapshotInfo, BackendError>;
    /// The pools.
    fn pools(&self) -> Vec<PoolInfo>;
    /// Sets a pool's size and water marks.
    fn set_pool(&self, name: &str, body: &PoolBody) -> Result<PoolInfo, BackendError>;
    /// Room on the host.
    fn capacity(&self) -> Capacity;
    /// Whether the daemon is ready.
    fn readiness(&self) -> Readiness;
    /// A stream of every clone reaped from now on (for metrics).
    fn exits(&self) -> Option<crossbeam::channel::Receiver<Reaped>>;
    /// Ends the backend: kills the clones when `kill_clones`, else leaves
    /// them running. Returns how many were killed and how many left.
    fn shutdown(&self, kill_clones: bool) -> (usize, usize);
}

/// What [`EngineBackend`] needs besides the engine.
#[derive(Clone)]
pub struct EngineBackendOptions {
    /// The daemon's runtime dir (snapshots given by directory are opened
    /// on it).
    pub runtime_dir: PathBuf,
    /// The state dir's owner, marked on clone dirs.
    pub owner: Option<crate::state::Owner>,
    /// The pool's name.
    pub pool: String,
    /// Readiness when a request names none.
    pub ready: Ready,
    /// Per-phase limits.
    pub timeouts: Timeouts,
    /// Time between SIGTERM and SIGKILL on delete.
    pub kill_grace: Duration,
    /// Checks a snapshot's guest network against the config (the CLI's
    /// `Config::check_guest`).
    pub check_guest: Option<Arc<GuestCheck>>,
    /// Accept a snapshot on another filesystem than the runtime dir whose
    /// clones would copy their disks (`serve.allow_copy`); refused (409)
    /// otherwise, as `wasp spawn` refuses it without `--allow-copy`.
    pub allow_copy: bool,
}

impl std::fmt::Debug for EngineBackendOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBackendOptions")
            .field("runtime_dir", &self.runtime_dir)
            .field("pool", &self.pool)
            .field("ready", &self.ready)
            .field("allow_copy", &self.allow_copy)
            .finish_non_exhaustive()
    }
}

/// How the daemon is told to copy a snapshot's disks anyway, said in its
/// refusal ([`StorageError::WouldCopy`]).
pub const ALLOW_COPY_HINT: &str =
    "set `allow_copy = true` in the config's [serve] section (or run `wasp serve --allow-copy`)";

/// A snapshot check run before a snapshot is accepted.
pub type GuestCheck =
    dyn Fn(&crate::snapshot::manifest::Manifest) -> Result<(), String> + Send + Sync;

struct Known {
    dir: PathBuf,
    store: Arc<CloneStore>,
}

/// The engine behind the API.
pub struct EngineBackend<S: Slots + 'static> {
    engine: Arc<Engine<S>>,
    opts: EngineBackendOptions,
    vmm: &'static str,
    snapshots: Mutex<BTreeMap<String, Known>>,
}

impl<S: Slots + 'static> std::fmt::Debug for EngineBackend<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBackend")
            .field("vmm", &self.vmm)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error::chain(e)
}

fn engine_err(id: &str, e: EngineError) -> BackendError {
    match e {
        EngineError::NoClone(_) => {
            BackendError::NotFound(format!("no live clone {id}; GET /v1/clones lists them"))
        }
        e => BackendError::Conflict(chain(&e)),
    }
}

impl<S: Slots + 'static> EngineBackend<S> {
    /// The engine, with the snapshots named in `snapshots` (name, dir).
    pub fn new(
        engine: Arc<Engine<S>>,
        vmm: &'static str,
        opts: EngineBackendOptions,
        snapshots: &[(String, PathBuf)],
    ) -> Result<Self, BackendError> {
        let b = Self {
            engine,
            opts,
            vmm,
            snapshots: Mutex::new(BTreeMap::new()),
        };
        for (name, dir) in snapshots {
            b.register(name, dir)?;
        }
        Ok(b)
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine<S>> {
        &self.engine
    }

    /// Has the engine hold its VMMs started ahead
    /// ([`Engine::hold_standby`]) for the snapshot `name` (as requests
    /// name it); nothing when the engine holds none.
    pub fn hold_standby(&self, name: &str) -> Result<(), BackendError> {
        let store = self.resolve(name)?;
        self.engine
            .hold_standby(SnapshotSource::Store(store))
            .map_err(|e| BackendError::Invalid(format!("standby VMMs for {name}: {}", chain(&e))))
    }

    fn open_store(&self, dir: &Path) -> Result<Arc<CloneStore>, BackendError> {
        let mut store = CloneStore::open(dir, &self.opts.runtime_dir, Mode::Auto).map_err(|e| {
            BackendError::Invalid(format!(
                "cannot open snapshot {}: {}",
                dir.display(),
                chain(&e)
            ))
        })?;
        if let Some(o) = &self.opts.owner {
            store = store.with_owner(o.clone());
        }
        if store.manifest().vmm.to_string() != self.vmm {
            return Err(BackendError::Invalid(format!(
                "snapshot {} was made by {}, this daemon runs {}",
                dir.display(),
                store.manifest().vmm,
                self.vmm
            )));
        }
        if let Some(check) = &self.opts.check_guest {
            check(store.manifest())
                .map_err(|e| BackendError::Invalid(format!("snapshot {}: {e}", dir.display())))?;
        }
        // `wasp spawn`'s copy policy: clones that would copy their disks
        // across filesystems are refused unless allowed.
        match store.copy_check_as(self.opts.allow_copy, ALLOW_COPY_HINT) {
            Ok(None) => {}
            Ok(Some(bytes)) => tracing::warn!(
                "serve.allow_copy: snapshot {} is on another filesystem than the runtime dir {}; each clone copies {bytes} bytes ({} MiB) of its writable drives",
                dir.display(),
                self.opts.runtime_dir.display(),
                bytes.div_ceil(1 << 20)
            ),
            Err(e @ StorageError::WouldCopy { .. }) => {
                return Err(BackendError::Conflict(chain(&e)))
            }
            Err(e) => {
                return Err(BackendError::Internal(format!(
                    "cannot check snapshot {}: {}",
                    dir.display(),
                    chain(&e)
                )))
            }
        }
        Ok(Arc::new(store))
    }

    fn register(&self, name: &str, dir: &Path) -> Result<SnapshotInfo, BackendError> {
        let store = self.open_store(dir)?;
        let info = info(name, dir, &store);
        lock(&self.snapshots).insert(
            name.to_owned(),
            Known {
                dir: dir.to_owned(),
                store,
            },
        );
        Ok(info)
    }

    fn resolve(&self, snapshot: &str) -> Result<Arc<CloneStore>, BackendError> {
        if let Some(k) = lock(&self.snapshots).get(snapshot) {
            return Ok(k.store.clone());
        }
        let p = Path::new(snapshot);
        if p.is_absolute() {
            // A directory by path is opened once and kept under its path.
            let store = self.open_store(p)?;
            lock(&self.snapshots).insert(
                snapshot.to_owned(),
                Known {
                    dir: p.to_owned(),
                    store: store.clone(),
                },
            );
            return Ok(store);
        }
        Err(BackendError::Invalid(format!(
            "no snapshot named {snapshot:?}: GET /v1/snapshots lists them, POST /v1/snapshots adds one, or give an absolute directory"
        )))
    }
}

fn info(name: &str, dir: &Path, store: &CloneStore) -> SnapshotInfo {
    let m = store.manifest();
    SnapshotInfo {
        name: name.to_owned(),
        dir: dir.to_owned(),
        vmm: m.vmm.to_string(),
        vmm_version: m.vmm_version.clone(),
        mem_mib: m.mem_mib,
        vcpus: m.vcpus,
        drives: m.drives.len(),
    }
}

/// Checks a snapshot name: `[A-Za-z0-9_.-]`, 1 to 64 characters.
pub fn valid_snapshot_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn adopt_options(dir: &Path, a: &AdoptBody) -> adopt::AdoptOptions {
    adopt::AdoptOptions {
        dir: dir.to_owned(),
        vmstate: a.vmstate.clone().unwrap_or_else(|| "vmstate".into()),
        memory: a.memory.clone().unwrap_or_else(|| "memory".into()),
        drives: a
            .rootfs
            .iter()
            .map(|f| adopt::AdoptDrive {
                drive_id: "rootfs".into(),
                file: f.clone(),
                path_on_host: None,
                read_only: false,
            })
            .collect(),
        vmm_version: a.vmm_version.clone(),
        vcpus: a.vcpus,
        iface: None,
        mmds: None,
        sha256: false,
        force: a.force,
    }
}

impl<S: Slots + 'static> Backend for EngineBackend<S> {
    fn vmm(&self) -> &str {
        self.vmm
    }

    fn spawn(&self, spec: SpawnSpec) -> Result<SpawnReport, BackendError> {
        let store = self.resolve(&spec.snapshot)?;
        let req = SpawnRequest {
            env: spec.env,
            ready: spec.ready.unwrap_or(self.opts.ready),
            timeouts: self.opts.timeouts,
            labels: spec.labels,
            ttl: spec.ttl,
            ..SpawnRequest::new(SnapshotSource::Store(store), spec.count)
        };
        let ticket = self.engine.spawn(req).map_err(|e| match e {
            SpawnError::Overloaded {
                asked,
                possible,
                retry_after,
            } => BackendError::Overloaded {
                detail: format!(
                    "the host can hold {possible} more clone(s) now, the request asks for {asked}; retry later or on another host (GET /v1/capacity)"
                ),
                retry_after_s: retry_after.as_secs_f64().ceil() as u64,
            },
            SpawnError::Stopped => BackendError::Unavailable(
                "the daemon is shutting down and takes no more requests".into(),
            ),
            SpawnError::Count(_) | SpawnError::VmmMismatch { .. } | SpawnError::Storage(_) => {
                BackendError::Invalid(chain(&e))
            }
            e => BackendError::Internal(chain(&e)),
        })?;
        ticket.wait().map_err(|e| match e {
            SpawnError::Stopped => {
                BackendError::Unavailable("the daemon stopped during the request".into())
            }
            e => BackendError::Internal(chain(&e)),
        })
    }

    fn list(&self) -> Vec<LiveClone> {
        self.engine.list()
    }

    fn get(&self, id: &str) -> Option<LiveClone> {
        self.engine.get(id)
    }

    fn kill(&self, id: &str) -> Result<Reaped, BackendError> {
        self.engine
            .kill(id, self.opts.kill_grace)
            .map_err(|e| engine_err(id, e))
    }

    fn kill_matching(&self, labels: &BTreeMap<String, String>) -> Vec<Reaped> {
        self.engine.kill_matching(labels, self.opts.kill_grace)
    }

    fn pause(&self, id: &str) -> Result<LiveClone, BackendError> {
        self.engine.pause(id).map_err(|e| engine_err(id, e))
    }

    fn resume(&self, id: &str) -> Result<LiveClone, BackendError> {
        self.engine.resume(id).map_err(|e| engine_err(id, e))
    }

    fn set_ttl(&self, id: &str, ttl: Option<Duration>) -> Result<LiveClone, BackendError> {
        self.engine.set_ttl(id, ttl).map_err(|e| engine_err(id, e))
    }

    fn snapshots(&self) -> Vec<SnapshotInfo> {
        lock(&self.snapshots)
            .iter()
            .map(|(n, k)| info(n, &k.dir, &k.store))
            .collect()
    }

    fn add_snapshot(&self, body: SnapshotBody) -> Result<SnapshotInfo, BackendError> {
        if !valid_snapshot_name(&body.name) {
            return Err(BackendError::Invalid(format!(
                "snapshot name {:?} is not 1 to 64 characters of [A-Za-z0-9_.-]",
                body.name
            )));
        }
        let dir = PathBuf::from(&body.dir);
        if !dir.is_absolute() {
            return Err(BackendError::Invalid(format!(
                "dir {:?} is not an absolute path",
                body.dir
            )));
        }
        if lock(&self.snapshots).contains_key(&body.name) {
            return Err(BackendError::Conflict(format!(
                "a snapshot named {} is already known; pick another name",
                body.name
            )));
        }
        if let Some(a) = &body.adopt {
            adopt::adopt(&adopt_options(&dir, a)).map_err(|e| {
                BackendError::Invalid(format!("cannot adopt {}: {}", dir.display(), chain(&e)))
            })?;
        }
        self.register(&body.name, &dir)
    }

    fn pools(&self) -> Vec<PoolInfo> {
        self.engine
            .pool_status()
            .map(|status| PoolInfo {
                name: self.opts.pool.clone(),
                status,
            })
            .into_iter()
            .collect()
    }

    fn set_pool(&self, name: &str, body: &PoolBody) -> Result<PoolInfo, BackendError> {
        if name != self.opts.pool {
            return Err(BackendError::NotFound(format!(
                "no pool {name}; this daemon runs pool {} (GET /v1/pools)",
                self.opts.pool
            )));
        }
        let status = self
            .engine
            .set_pool_marks(PoolMarks {
                size: body.size,
                low_water: body.low_water,
                high_water: body.high_water,
            })
            .map_err(|e| BackendError::Invalid(chain(&e)))?;
        Ok(PoolInfo {
            name: name.to_owned(),
            status,
        })
    }

    fn capacity(&self) -> Capacity {
        self.engine.capacity()
    }

    fn readiness(&self) -> Readiness {
        let a = self.engine.adopted();
        let warm = self.engine.is_warm();
        Readiness {
            ready: warm,
            warm,
            adopted: a.adopted.len(),
            reclaimed: a.reclaimed.len(),
        }
    }

    fn exits(&self) -> Option<crossbeam::channel::Receiver<Reaped>> {
        Some(self.engine.exits())
    }

    fn shutdown(&self, kill_clones: bool) -> (usize, usize) {
        let r = self.engine.shutdown(kill_clones);
        (r.killed.len(), r.left_running)
    }
}

//! The engine: the spawn pipeline as one long-lived object that accepts
//! clone requests continuously, from many callers at once.
//!
//! ```text
//!  callers ── spawn(req) ──► request queue ──► admission workers (N)
//!                                               slot, storage, launch
//!                                                     │ jobs + eventfd
//!                                                     ▼
//!                                    restore driver (one thread, host netns)
//!                                    restore, inject, resume, ready
//!                                                     │ outcomes
//!                                                     ▼
//!   ticket.wait() ◄── rows, report ──  outcome thread: record or reclaim
//!                                                     │ pidfd
//!                                                     ▼
//!                                    reaper: epoll on every live clone's
//!                                    pidfd; an exit removes the record and
//!                                    files and gives the slot back
//! ```
//!
//! [`Engine::open`] (or [`Engine::with_slots`] for any [`Slots`]) starts,
//! for the engine's life: the slot pool (with its background refill when a
//! low-water mark is set), the restore driver thread, the admission
//! workers, the outcome thread and the reaper. The template mount
//! namespace is made by the first request that needs one and kept.
//!
//! [`Engine::spawn`] queues a request and returns a [`Ticket`] at once; the
//! workers take the clones of all queued requests in turn (one clone of
//! each, round robin), at most `parallel` in flight, so a small request is
//! not held behind a large one. Each request gets its own report; clone ids
//! are `<tag>-<i>`, with a tag unique among the engine's requests and live
//! clones.
//!
//! Every clone the engine started stays watched through its pidfd until it
//! is killed ([`Engine::kill`]) or the engine shuts down: the reaper blocks
//! in `epoll_wait` on all of them at once (no periodic poll), and a VMM that
//! exits on its own is reaped, its files, isolation and record removed and
//! its slot given back. Each [`Reaped`] says why ([`ReapCause`]).
//!
//! Control of live clones (all recorded in the clone's record, so a
//! restarted engine keeps them):
//!
//! - **TTL** (`ttl`): [`SpawnRequest::ttl`] gives each clone a deadline
//!   (absolute, Unix ms) when it is ready; [`Engine::set_ttl`] moves or
//!   clears it. One timerfd in the reaper's epoll is armed at the earliest
//!   deadline; when it fires the reaper stops the clones whose time is up
//!   (cause `TtlExpired`). No wake-up happens between deadlines.
//! - **Pause and resume** (`control`): `PATCH /vm` over the clone's API
//!   socket; the clone keeps its slot, pidfd watch and TTL, and a paused
//!   clone whose VMM exits is reaped like any other.
//! - **By label** (`control`): [`Engine::get`], [`Engine::kill_matching`]
//!   (every clone whose labels include the given pairs; SIGTERM to all,
//!   one grace, then SIGKILL).
//! - **Capacity** (`capacity`): [`Engine::capacity`] (free and buildable
//!   slots, `MemAvailable` over [`MEM_PER_CLONE_BYTES`], fd headroom);
//!   [`Engine::spawn`] refuses a request larger than what the host can
//!   take now with [`SpawnError::Overloaded`] and a retry hint, before
//!   anything is taken. [`Engine::set_pool_marks`] resizes the warm pool at
//!   run time; [`Engine::is_warm`] says when it reached its size once.
//! - **Adoption** (`adopt`): [`Engine::open`] adopts the live clones its
//!   state dir records for its pool (VMM checked through a pidfd: same
//!   process, in its slot netns; slot lease taken; watched, with labels,
//!   request tag, TTL and paused state) and reclaims the records whose VMM
//!   is gone ([`Engine::adopted`]). A clone's record is written before it
//!   is reported ready (a failed write fails the clone), so a crash leaves
//!   every clone either recorded (adopted later) or unrecorded and
//!   reclaimed by `wasp reconcile`, which a restarting service runs before
//!   opening its engine.
//!
//! For a service (one engine per process, requests from many threads):
//! keep the engine in an `Arc` (it is `Send + Sync`), give each request its
//! own [`SpawnRequest`] (snapshot, count, [`Env`] with zeroized secrets,
//! readiness, limits, VMM arguments, labels), keep the [`Ticket`] (it is
//! `Send`) and wait on it from any thread ([`Ticket::wait`],
//! [`Ticket::wait_observed`] for rows as they finish, or
//! [`Ticket::wait_timeout`]); [`Engine::exits`] streams reaped clones.
//! [`Engine::shutdown`] finishes what was accepted before it returns.
//!
//! [`batch`] holds what one request is made of and reports: options,
//! per-clone rows and the summary, the [`Slots`] seam and its pool-backed
//! [`PoolSlots`]. [`spawn`] runs one batch on an engine of its own (for
//! callers that hold their slots themselves).
//!
//! May use: `pipeline` and everything below it. Not `ops`, `config` or
//! `bench`.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use wasp::engine::*;
//! # fn f(cfg: EngineConfig, pool: PoolSetup) -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Arc::new(Engine::open(cfg, pool)?);
//! let req = SpawnRequest::new(SnapshotSource::Dir("/var/lib/wasp/golden".into()), 10);
//! let report = engine.spawn(req)?.wait()?;
//! println!("{} ready in {:.1} ms", report.summary.ready, report.summary.wall_ms);
//! engine.shutdown(false);
//! # Ok(()) }
//! ```

mod adopt;
pub mod batch;
mod capacity;
mod control;
mod standby;
mod ttl;

pub use adopt::AdoptReport;
pub use capacity::{Capacity, PoolMarks, FDS_PER_CLONE, FDS_PER_IN_FLIGHT, MEM_PER_CLONE_BYTES};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel as cb;
use serde::Serialize;
use thiserror::Error;

use crate::engine::batch::{
    batch_tag, link_sync, CloneReport, PhasesMs, PoolSlots, PoolSlotsError, SlotError, SlotLease,
    Slots, SpawnError, SpawnOptions, SpawnReport, Summary, MAX_COUNT,
};
use crate::pipeline::env::Env;
use crate::pipeline::launch::{self, Isolation, LaunchSpec, MountTemplate, Vmm};
use crate::pipeline::pool::{PoolConfig, PoolStatus};
use crate::pipeline::ready::Ready;
use crate::pipeline::restore::{Job, Plan, Timeouts};
use crate::pipeline::ring::{self, DriverError, DriverKind, Feed, Next, Outcome};
use crate::pipeline::slot::{HostNet, SlotNet};
use crate::pipeline::storage::clone::{CloneFiles, CloneStore, Mode};
use crate::state::{self, CloneRecord};
use crate::stats::{ms, Percentiles};
use crate::sys;
use crate::sys::epoll::Epoll;
use crate::sys::spawn::Process;
use crate::sys::tap::EventFd;
use crate::sys::timerfd::TimerFd;
use crate::vmm::api::{BackendType, NetworkOverride};
use crate::vmm::VmmFate;

/// Admission workers run at once: the launch waits for the VMM's exec,
/// which another worker's clone can overlap.
const ADMISSION_WORKERS: usize = 2;

/// The reaper's token for its stop eventfd.
const STOP_TOKEN: u64 = u64::MAX;
/// The reaper's token for its TTL timer.
const TIMER_TOKEN: u64 = u64::MAX - 1;

/// What an engine is opened with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The VMM every clone runs.
    pub vmm: Vmm,
    /// Clone records.
    pub state_dir: PathBuf,
    /// Per-clone files (snapshots given by directory are opened on it).
    pub runtime_dir: PathBuf,
    /// How clone disks are made for snapshots given by directory.
    pub storage: Mode,
    /// Copy the disks of a snapshot (given by directory) on another
    /// filesystem than the runtime dir; false refuses it
    /// ([`CloneStore::copy_check`]).
    pub allow_copy: bool,
    /// Clones in flight at once, over all requests.
    pub parallel: usize,
    /// Force a driver (default: io_uring when the probe passes).
    pub driver: Option<DriverKind>,
    /// Per-clone cgroup limits and jailer mode (default: neither).
    pub isolation: Isolation,
    /// VMMs to hold started ahead in their slots for the snapshot named
    /// with [`Engine::hold_standby`] (experimental; default 0: none).
    pub standby: usize,
}

impl EngineConfig {
    /// Defaults: 32 in flight, the probed driver, no isolation, automatic
    /// storage.
    pub fn new(vmm: Vmm, state_dir: PathBuf, runtime_dir: PathBuf) -> Self {
        Self {
            vmm,
            state_dir,
            runtime_dir,
            storage: Mode::Auto,
            allow_copy: false,
            parallel: 32,
            driver: None,
            isolation: Isolation::default(),
            standby: 0,
        }
    }
}

/// The real slot pool an engine opens ([`Engine::open`]).
#[derive(Debug, Clone)]
pub struct PoolSetup {
    /// The pool's slots.
    pub net: SlotNet,
    /// The host side.
    pub host: HostNet,
    /// Free slots to build before the engine accepts requests.
    pub warm: usize,
    /// The background refill keeps at least this many free (0: none).
    pub low_water: usize,
    /// Slots given back above this many free ones are destroyed.
    pub high_water: usize,
}

/// Errors opening or driving an engine (a request's own errors are
/// [`SpawnError`]s).
#[derive(Debug, Error)]
pub enum EngineError {
    /// The state dir cannot be used.
    #[error("cannot use the state dir")]
    State(#[source] state::StateError),
    /// The slot pool could not be set up.
    #[error("cannot set up the slot pool")]
    Pool(#[source] PoolSlotsError),
    /// The host netns cannot be opened.
    #[error("cannot open the host network namespace {0}")]
    HostNetns(String, #[source] std::io::Error),
    /// A thread, eventfd or epoll instance could not be made.
    #[error("cannot start the engine's {what}")]
    Start {
        /// What.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No live clone of this engine has the id.
    #[error("no live clone {0} in this engine; list() shows the clones it runs")]
    NoClone(String),
    /// The clone is not in a state the call works from (pause of a paused
    /// clone, resume of a running one).
    #[error("clone {id} is {state}; {hint}")]
    WrongState {
        /// Clone id.
        id: String,
        /// Its state.
        state: CloneState,
        /// What to do instead.
        hint: &'static str,
    },
    /// A call to the clone's VMM API failed.
    #[error("clone {id}: the VMM's API call {call} failed")]
    Vmm {
        /// Clone id.
        id: String,
        /// The call (`PATCH /vm Paused`, ...).
        call: &'static str,
        /// Cause.
        #[source]
        source: crate::vmm::api::ApiError,
    },
    /// Pool marks that cannot be applied (the message names the field).
    #[error("bad pool marks: {0}")]
    BadMarks(String),
    /// The slot provider refused the marks.
    #[error("cannot re-mark the slot pool")]
    Marks(#[source] SlotError),
}

fn start_err(what: &'static str) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Start { what, source }
}

/// Where a request's snapshot comes from.
#[derive(Debug, Clone)]
pub enum SnapshotSource {
    /// A snapshot directory, opened on the engine's runtime dir (once; the
    /// engine keeps it open for later requests).
    Dir(PathBuf),
    /// An opened store.
    Store(Arc<CloneStore>),
}

/// One request: `count` clones of one snapshot.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// The snapshot.
    pub snapshot: SnapshotSource,
    /// Number of clones (1 to [`MAX_COUNT`]).
    pub count: usize,
    /// The clones' environment (secrets zeroized on drop, never logged).
    pub env: Env,
    /// Readiness check.
    pub ready: Ready,
    /// Per-phase limits.
    pub timeouts: Timeouts,
    /// Retry delay for refused readiness connects.
    pub ready_retry: Duration,
    /// Extra VMM arguments (the stand-in's `--fault` switches). Never
    /// secrets: argv is world-readable.
    pub vmm_args: Vec<String>,
    /// Free-form labels, shown with the clones in [`Engine::list`].
    pub labels: BTreeMap<String, String>,
    /// How long each clone may live once ready (`None`: no expiry). The
    /// deadline is recorded, so a restarted engine keeps it.
    pub ttl: Option<Duration>,
}

impl SpawnRequest {
    /// `count` clones of `snapshot` with no environment, `tcp:22`
    /// readiness retried every [`READY_RETRY`](crate::pipeline::ready::READY_RETRY)
    /// and the default limits.
    pub fn new(snapshot: SnapshotSource, count: usize) -> Self {
        Self {
            snapshot,
            count,
            env: Env::new(),
            ready: Ready::Tcp(22),
            timeouts: Timeouts::default(),
            ready_retry: crate::pipeline::ready::READY_RETRY,
            vmm_args: Vec::new(),
            labels: BTreeMap::new(),
            ttl: None,
        }
    }
}

enum Event {
    Row(CloneReport),
    Done(SpawnReport),
}

/// A queued request: its rows as they finish, then its report.
#[derive(Debug)]
pub struct Ticket {
    tag: String,
    count: usize,
    events: cb::Receiver<Event>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Row(r) => f.debug_tuple("Row").field(&r.id).finish(),
            Event::Done(_) => f.write_str("Done"),
        }
    }
}

impl Ticket {
    /// The request's tag: its clones are `<tag>-<i>`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Clones asked for.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Waits for the request's report.
    pub fn wait(self) -> Result<SpawnReport, SpawnError> {
        self.wait_observed(|_| {})
    }

    /// [`Ticket::wait`], calling `on_done` on this thread with each clone's
    /// row as it finishes (ready or failed), in completion order.
    pub fn wait_observed(
        self,
        mut on_done: impl FnMut(&CloneReport),
    ) -> Result<SpawnReport, SpawnError> {
        loop {
            match self.events.recv() {
                Ok(Event::Row(r)) => on_done(&r),
                Ok(Event::Done(r)) => return Ok(r),
                Err(_) => return Err(SpawnError::Stopped),
            }
        }
    }

    /// The report if the request finishes within `timeout`; `None` if not
    /// yet (wait again later).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<SpawnReport, SpawnError>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.events.recv_deadline(deadline) {
                Ok(Event::Row(_)) => {}
                Ok(Event::Done(r)) => return Some(Ok(r)),
                Err(cb::RecvTimeoutError::Timeout) => return None,
                Err(cb::RecvTimeoutError::Disconnected) => return Some(Err(SpawnError::Stopped)),
            }
        }
    }
}

/// Whether a clone's vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloneState {
    /// Running (as restored).
    Running,
    /// Paused through [`Engine::pause`]; it keeps its slot.
    Paused,
}

impl std::fmt::Display for CloneState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloneState::Running => "running",
            CloneState::Paused => "paused",
        })
    }
}

/// A live clone of the engine. As JSON: the record's fields (labels,
/// request tag and `expires_at_ms` among them, as in the state dir) and
/// `state`.
#[derive(Debug, Clone, Serialize)]
pub struct LiveClone {
    /// Its record (as in the state dir).
    #[serde(flatten)]
    pub record: CloneRecord,
    /// The tag of the request that made it.
    #[serde(skip)]
    pub request: String,
    /// The request's labels.
    #[serde(skip)]
    pub labels: BTreeMap<String, String>,
    /// Running or paused.
    pub state: CloneState,
    /// When its TTL ends (Unix epoch, ms); `None`: no expiry.
    #[serde(skip)]
    pub expires_at_ms: Option<u64>,
}

/// Why the engine reaped a clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReapCause {
    /// Its VMM exited on its own.
    Exited,
    /// [`Engine::kill`] or [`Engine::kill_matching`].
    Killed,
    /// Its TTL ran out.
    TtlExpired,
    /// [`Engine::shutdown`] with `kill_clones`.
    Shutdown,
}

/// A clone the engine stopped or saw exit, and what its reclaim met.
#[derive(Debug, Clone, Serialize)]
pub struct Reaped {
    /// Clone id.
    pub id: String,
    /// Its VMM's pid.
    pub pid: i32,
    /// Its slot, given back.
    pub slot: u32,
    /// What happened to the VMM.
    pub vmm: VmmFate,
    /// The VMM's exit status (`wait` status as the shell shows it: the
    /// code, or 128 + signal), when it was reaped.
    pub status: Option<i32>,
    /// Every error of the reclaim (files, isolation, record, slot).
    pub errors: Vec<String>,
    /// Why it was reaped.
    pub cause: ReapCause,
}

/// What [`Engine::shutdown`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShutdownReport {
    /// Clones it killed (when asked to).
    pub killed: Vec<Reaped>,
    /// Clones left running (their records stay; `wasp kill` stops them).
    pub left_running: usize,
    /// The restore driver's failure, if it failed.
    pub driver_error: Option<String>,
}

/// One clone the driver has (launched, not finished).
struct Pending {
    req: Arc<Req>,
    i: usize,
    slot: SlotLease,
    child: Process,
    /// A pidfd on the VMM (in jailer mode not `child`, which is the
    /// jailer), for a reclaim without the driver's job.
    vmm: Option<OwnedFd>,
    cgroup: Option<PathBuf>,
    jail_dir: Option<PathBuf>,
    files_dir: PathBuf,
    /// Bytes the clone's disks copied (0 when reflinked).
    bytes_copied: u64,
    admitted: Instant,
    phases: PhasesMs,
    cpu: Duration,
}

/// A clone admitted up to its launched VMM (now, or ahead as a standby),
/// for [`Core::hand_to_driver`]: what differs between the two ways in.
struct AdmittedClone {
    id: String,
    slot: SlotLease,
    launched: launch::Launched,
    /// Where the driver's socket phase starts: the VMM's spawn, or the
    /// admission of a standby whose socket is up already.
    launched_at: Instant,
    files_dir: PathBuf,
    /// Bytes the clone's disks copied (0 when reflinked).
    bytes_copied: u64,
    admitted: Instant,
    phases: PhasesMs,
    /// The admitting thread's CPU time when the admission began.
    cpu_start: Duration,
}

/// A request in the engine.
struct Req {
    tag: String,
    count: usize,
    store: Arc<CloneStore>,
    env: Env,
    ready: Ready,
    vmm_args: Vec<String>,
    labels: BTreeMap<String, String>,
    ttl: Option<Duration>,
    /// The VMM started ahead that clone 0 runs in, until admitted.
    standby: Mutex<Option<standby::Standby>>,
    plan: Arc<Plan>,
    isolation: Isolation,
    snapshot_tap: Option<(String, String)>,
    guest_mac: Option<[u8; 6]>,
    started: Instant,
    driver_cpu_start: u64,
    book: Mutex<ReqBook>,
    events: cb::Sender<Event>,
}

#[derive(Default)]
struct ReqBook {
    rows: Vec<Option<CloneReport>>,
    done: usize,
    disk_bytes: u64,
    cpu: Duration,
}

impl Req {
    fn clone_id(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    /// The network override a clone in `slot` loads with: the slot's tap
    /// when the snapshot was taken with another.
    fn net_override(&self, slot: &SlotLease) -> Option<NetworkOverride> {
        let (iface, tap) = self.snapshot_tap.as_ref()?;
        (*tap != slot.tap).then(|| NetworkOverride {
            iface_id: iface.clone(),
            host_dev_name: slot.tap.clone(),
        })
    }

    fn ready_port(&self) -> Option<u16> {
        match self.ready {
            Ready::Tcp(p) => Some(p),
            _ => None,
        }
    }
}

/// The request queue and the in-flight count.
struct Sched {
    /// Requests with clones left to admit, and the next clone of each.
    queue: VecDeque<(Arc<Req>, usize)>,
    in_flight: usize,
    accepting: bool,
    driver_gone: bool,
    seq: usize,
}

/// A clone that is up, watched through its pidfd. Its record (labels,
/// request tag, TTL deadline, paused) is the one truth about it.
struct Running {
    record: CloneRecord,
    /// The VMM as this process's child; `None` for an adopted clone (its
    /// VMM is another process's child, or init's).
    child: Option<Process>,
    pidfd: OwnedFd,
    slot: SlotLease,
    /// The store its files came from; `None` for an adopted clone, whose
    /// directory is removed by its record (when it carries the state
    /// dir's mark).
    store: Option<Arc<CloneStore>>,
}

impl Running {
    /// The tag of the request that made it.
    fn tag(&self) -> String {
        self.record.request.clone().unwrap_or_else(|| {
            let id = &self.record.id;
            id.rsplit_once('-')
                .map_or(id.as_str(), |(t, _)| t)
                .to_owned()
        })
    }

    fn live(&self) -> LiveClone {
        LiveClone {
            record: self.record.clone(),
            request: self.tag(),
            labels: self.record.labels.clone(),
            state: if self.record.paused {
                CloneState::Paused
            } else {
                CloneState::Running
            },
            expires_at_ms: self.record.expires_at_ms,
        }
    }
}

#[derive(Default)]
struct Live {
    by_token: HashMap<u64, Running>,
    by_id: HashMap<String, u64>,
    next_token: u64,
    /// Tags in use (by a request or a live clone), with their users.
    tags: HashMap<String, usize>,
    /// TTL deadlines (Unix epoch ms) and their clones' tokens, earliest
    /// first.
    deadlines: std::collections::BTreeSet<(u64, u64)>,
}

impl Live {
    /// A new tag, unused by any request or live clone, held by one user.
    fn reserve_tag(&mut self) -> String {
        let tag = loop {
            let t = batch_tag();
            if !self.tags.contains_key(&t) {
                break t;
            }
        };
        self.tags.insert(tag.clone(), 1);
        tag
    }

    fn take_id(&mut self, id: &str) -> Option<Running> {
        let t = *self.by_id.get(id)?;
        self.take_token(t)
    }

    fn take_token(&mut self, t: u64) -> Option<Running> {
        let r = self.by_token.remove(&t)?;
        self.by_id.remove(&r.record.id);
        if let Some(d) = r.record.expires_at_ms {
            self.deadlines.remove(&(d, t));
        }
        Some(r)
    }

    fn get_mut(&mut self, id: &str) -> Option<(u64, &mut Running)> {
        let t = *self.by_id.get(id)?;
        self.by_token.get_mut(&t).map(|r| (t, r))
    }

    fn unref_tag(&mut self, tag: &str) {
        if let Some(n) = self.tags.get_mut(tag) {
            *n -= 1;
            if *n == 0 {
                self.tags.remove(tag);
            }
        }
    }
}

struct Core<S> {
    vmm: Vmm,
    runtime_dir: PathBuf,
    storage: Mode,
    allow_copy: bool,
    /// This state dir's owner, marked on clone dirs.
    owner: state::Owner,
    parallel: usize,
    kind: DriverKind,
    reason: Option<String>,
    isolation: Isolation,
    template: Mutex<Option<Arc<MountTemplate>>>,
    host_netns: Option<String>,
    state: state::Store,
    slots: Mutex<S>,
    sched: Mutex<Sched>,
    /// Signalled when work is queued, room is made, or the engine stops.
    room: Condvar,
    pending: Mutex<HashMap<usize, Pending>>,
    live: Mutex<Live>,
    epoll: Epoll,
    reaper_stop: EventFd,
    /// Armed at the earliest TTL deadline of the live clones.
    timer: TimerFd,
    /// What [`Engine::open`] adopted and reclaimed.
    adopt_report: Mutex<AdoptReport>,
    /// The pool reached its warm target once (latched).
    warm: std::sync::atomic::AtomicBool,
    /// Fds open when the engine was opened (the base of the fd estimate
    /// of [`Core::capacity_with`]).
    base_fds: AtomicU64,
    /// VMMs started ahead ([`EngineConfig::standby`]).
    standby: standby::Standbys,
    /// Wakes the driver when a job is sent (or the jobs end).
    wake: EventFd,
    /// The driver thread's CPU time (ns), as of its last feed call.
    driver_cpu_ns: AtomicU64,
    driver_error: Mutex<Option<DriverError>>,
    stores: Mutex<HashMap<PathBuf, Arc<CloneStore>>>,
    exit_subs: Mutex<Vec<cb::Sender<Reaped>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The engine (see the module docs). `Send + Sync`: share it in an `Arc`
/// and call it from any number of threads.
pub struct Engine<S: Slots + 'static = PoolSlots> {
    core: Arc<Core<S>>,
    threads: Mutex<Threads>,
}

#[derive(Default)]
struct Threads {
    workers: Vec<JoinHandle<()>>,
    driver: Option<JoinHandle<()>>,
    outcomes: Option<JoinHandle<()>>,
    reaper: Option<JoinHandle<()>>,
    standby: Option<JoinHandle<()>>,
}

impl<S: Slots + 'static> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("driver", &self.core.kind)
            .field("parallel", &self.core.parallel)
            .field("live", &lock(&self.core.live).by_token.len())
            .finish_non_exhaustive()
    }
}

impl Engine<PoolSlots> {
    /// Opens an engine on the real slot pool: sets up the host side,
    /// reconciles the pool's slots (those live clones recorded in the state
    /// dir hold are set aside), warms it, starts the refill when
    /// `pool.low_water > 0`, and adopts the live clones the state dir
    /// records for this pool (reclaiming the dead ones; see
    /// [`Engine::adopted`]). Run `wasp reconcile` (`ops::reconcile`)
    /// first: it kills the VMMs a crash left without a record.
    pub fn open(cfg: EngineConfig, pool: PoolSetup) -> Result<Self, EngineError> {
        let in_use = state::Store::open(&cfg.state_dir)
            .map(|s| s.slots_in_use(&pool.net.pool))
            .unwrap_or_default();
        let pc = PoolConfig {
            low_water: pool.low_water,
            size: pool.warm,
            high_water: pool.high_water,
            ..PoolConfig::default()
        };
        let name = pool.net.pool.clone();
        let slots = PoolSlots::open_with(pool.net, &pool.host, pool.warm, in_use, pc)
            .map_err(EngineError::Pool)?;
        let engine = Self::with_slots(cfg, slots)?;
        let adopted = engine.core.adopt_all(&name);
        for e in &adopted.errors {
            tracing::warn!("adoption: {e}");
        }
        *lock(&engine.core.adopt_report) = adopted;
        Ok(engine)
    }
}

impl<S: Slots + 'static> Engine<S> {
    /// Opens an engine over any slot provider (the real pool, or a test
    /// fake) and starts its threads.
    pub fn with_slots(cfg: EngineConfig, slots: S) -> Result<Self, EngineError> {
        let state = state::Store::open(&cfg.state_dir).map_err(EngineError::State)?;
        // Clone dirs of snapshots given by directory carry the state dir's
        // mark, so its reconcile knows them for its own.
        let owner = state::Owner::of_state_dir(&cfg.state_dir).map_err(EngineError::State)?;
        let parallel = cfg.parallel.max(1);
        let _ = sys::rlimit::raise_nofile((parallel as u64) * 8 + 1024);
        let (kind, reason) = match cfg.driver {
            Some(k) => (k, None),
            None => ring::choose(),
        };
        let host_netns = slots.host_netns();
        let host_fd = match &host_netns {
            Some(ns) => Some(
                sys::netns::open_named(ns).map_err(|e| EngineError::HostNetns(ns.clone(), e))?,
            ),
            None => None,
        };
        let epoll = Epoll::new().map_err(start_err("reaper's epoll"))?;
        let reaper_stop = EventFd::new().map_err(start_err("reaper's eventfd"))?;
        epoll
            .add(reaper_stop.as_fd(), STOP_TOKEN)
            .map_err(start_err("reaper's epoll"))?;
        let timer = TimerFd::new().map_err(start_err("reaper's TTL timer"))?;
        epoll
            .add(timer.as_fd(), TIMER_TOKEN)
            .map_err(start_err("reaper's epoll"))?;
        let core = Arc::new(Core {
            vmm: cfg.vmm,
            runtime_dir: cfg.runtime_dir,
            storage: cfg.storage,
            allow_copy: cfg.allow_copy,
            owner,
            parallel,
            kind,
            reason,
            template: Mutex::new(cfg.isolation.mount_template.clone()),
            isolation: cfg.isolation,
            host_netns,
            state,
            slots: Mutex::new(slots),
            sched: Mutex::new(Sched {
                queue: VecDeque::new(),
                in_flight: 0,
                accepting: true,
                driver_gone: false,
                seq: 0,
            }),
            room: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            live: Mutex::new(Live::default()),
            epoll,
            reaper_stop,
            timer,
            adopt_report: Mutex::new(AdoptReport::default()),
            warm: std::sync::atomic::AtomicBool::new(false),
            base_fds: AtomicU64::new(sys::rlimit::open_fds().unwrap_or(0)),
            standby: standby::Standbys::new(cfg.standby),
            wake: EventFd::new().map_err(start_err("driver's eventfd"))?,
            driver_cpu_ns: AtomicU64::new(0),
            driver_error: Mutex::new(None),
            stores: Mutex::new(HashMap::new()),
            exit_subs: Mutex::new(Vec::new()),
        });
        let engine = Engine {
            core: core.clone(),
            threads: Mutex::new(Threads::default()),
        };
        // From here on, a failure to start a thread shuts down what did
        // start (the engine's drop).
        let (job_tx, job_rx) = mpsc::channel();
        let (out_tx, out_rx) = mpsc::channel();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(start_err("threads"))
        };
        {
            let c = core.clone();
            let h = spawn("wasp-reaper".into(), Box::new(move || c.reaper()))?;
            lock(&engine.threads).reaper = Some(h);
        }
        {
            let c = core.clone();
            let h = spawn("wasp-outcomes".into(), Box::new(move || c.outcomes(out_rx)))?;
            lock(&engine.threads).outcomes = Some(h);
        }
        {
            let mut feed = EngineFeed {
                core: core.clone(),
                jobs: job_rx,
                outcomes: out_tx,
            };
            // The driver runs inside the host netns for its whole life
            // (`tcp:` readiness connects from where a user of the clone
            // does); a placeholder plan: every job carries its own.
            let h = spawn(
                "wasp-driver".into(),
                Box::new(move || {
                    let c = feed.core.clone();
                    let r = match host_fd.map(sys::netns::enter).transpose() {
                        Ok(_) => ring::run(c.kind, placeholder_plan(), c.parallel, &mut feed),
                        Err(source) => Err(DriverError::Io {
                            kind: c.kind,
                            source,
                        }),
                    };
                    // The cause is kept before the feed closes: the
                    // outcome thread names it in the rows it fails.
                    if let Err(e) = r {
                        tracing::error!("the restore driver failed: {}", crate::error::chain(&e));
                        *lock(&c.driver_error) = Some(e);
                    }
                    drop(feed);
                }),
            )?;
            lock(&engine.threads).driver = Some(h);
        }
        if core.standby_target() > 0 {
            let c = core.clone();
            let h = spawn("wasp-standby".into(), Box::new(move || c.standby_loop()))?;
            lock(&engine.threads).standby = Some(h);
        }
        for w in 0..ADMISSION_WORKERS.min(parallel) {
            let (c, jobs) = (core.clone(), job_tx.clone());
            let h = spawn(
                format!("wasp-admit-{w}"),
                Box::new(move || c.admission_worker(jobs)),
            )?;
            lock(&engine.threads).workers.push(h);
        }
        Ok(engine)
    }

    /// Queues a request and returns its ticket at once. Refused at once
    /// (nothing taken) when the count is out of range, the snapshot cannot
    /// be opened or was made by another VMM, jailer mode cannot read it,
    /// or the engine is shutting down.
    pub fn spawn(&self, req: SpawnRequest) -> Result<Ticket, SpawnError> {
        self.core.submit(req)
    }

    /// Every live clone of this engine, by id.
    pub fn list(&self) -> Vec<LiveClone> {
        let live = lock(&self.core.live);
        let mut v: Vec<LiveClone> = live.by_token.values().map(Running::live).collect();
        v.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        v
    }

    /// Stops one live clone: SIGTERM through its pidfd, up to `grace` for
    /// it to exit, then SIGKILL; reaps it, removes its files, isolation and
    /// record, and gives its slot back.
    pub fn kill(&self, id: &str, grace: Duration) -> Result<Reaped, EngineError> {
        let r = lock(&self.core.live).take_id(id);
        let r = r.ok_or_else(|| EngineError::NoClone(id.to_owned()))?;
        Ok(self.core.stop(r, grace, ReapCause::Killed))
    }

    /// The slot pool's counters, when the slot provider has them.
    pub fn pool_status(&self) -> Option<PoolStatus> {
        lock(&self.core.slots).status()
    }

    /// Runs `f` on the slot provider (under its lock).
    pub fn on_slots<T>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        f(&mut lock(&self.core.slots))
    }

    /// A receiver of every clone the engine reaps or kills from now on.
    pub fn exits(&self) -> cb::Receiver<Reaped> {
        let (tx, rx) = cb::unbounded();
        lock(&self.core.exit_subs).push(tx);
        rx
    }

    /// The restore driver, and why io_uring was not used if it was not.
    pub fn driver(&self) -> (DriverKind, Option<&str>) {
        (self.core.kind, self.core.reason.as_deref())
    }

    /// The restore driver's failure, taken (once), if it failed.
    pub fn take_driver_error(&self) -> Option<DriverError> {
        lock(&self.core.driver_error).take()
    }

    /// Stops accepting requests, finishes the queued and in-flight ones
    /// (their tickets get their reports), stops every thread, and kills
    /// the live clones when `kill_clones` (else they keep running, with
    /// their records, and are no longer watched). A second call does
    /// nothing.
    pub fn shutdown(&self, kill_clones: bool) -> ShutdownReport {
        let mut t = std::mem::take(&mut *lock(&self.threads));
        {
            let mut s = lock(&self.core.sched);
            s.accepting = false;
        }
        self.core.room.notify_all();
        // The workers finish the queue, then drop their job senders: the
        // driver finishes what it has and sees the end; then the outcome
        // thread sees the driver's end.
        for h in t.workers.drain(..) {
            let _ = h.join();
        }
        self.core.stop_standbys();
        if let Some(h) = t.standby.take() {
            let _ = h.join();
        }
        let _ = self.core.wake.signal();
        for h in [t.driver.take(), t.outcomes.take()].into_iter().flatten() {
            let _ = h.join();
        }
        let mut rep = ShutdownReport {
            driver_error: lock(&self.core.driver_error)
                .as_ref()
                .map(|e| crate::error::chain(e)),
            ..Default::default()
        };
        if kill_clones {
            rep.killed = self
                .core
                .stop_all(Duration::from_secs(2), ReapCause::Shutdown);
        }
        if let Some(h) = t.reaper.take() {
            let _ = self.core.reaper_stop.signal();
            let _ = h.join();
        }
        rep.left_running = lock(&self.core.live).by_token.len();
        rep
    }

    /// Shuts down (clones keep running) and hands the slot provider back.
    pub fn into_slots(self) -> S {
        self.shutdown(false);
        let core = self.core.clone();
        drop(self);
        match Arc::try_unwrap(core) {
            Ok(c) => c.slots.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(_) => unreachable!("every engine thread has been joined"),
        }
    }
}

impl<S: Slots + 'static> Drop for Engine<S> {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

/// How many VMMs a shutdown signals before waiting for them.
const STOP_WAVE: usize = 256;

fn placeholder_plan() -> Arc<Plan> {
    Arc::new(Plan {
        snapshot_path: PathBuf::new(),
        mem_path: PathBuf::new(),
        backend: BackendType::File,
        ready: Ready::None,
        timeouts: Timeouts::default(),
        ready_retry: crate::pipeline::ready::READY_RETRY,
    })
}

fn vmm_name(v: &Vmm) -> &'static str {
    match v {
        Vmm::Firecracker(_) => "firecracker",
        Vmm::Standin(_) => "standin",
    }
}

/// How the shell shows a wait status: the exit code, or 128 + signal.
fn status_code(s: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    s.code().or_else(|| s.signal().map(|n| 128 + n))
}

/// The driver's side: jobs from a channel, woken by the engine's eventfd;
/// outcomes back through a channel. It also publishes the driver thread's
/// CPU time (each request reports its share).
struct EngineFeed<S: Slots + 'static> {
    core: Arc<Core<S>>,
    jobs: mpsc::Receiver<Job>,
    outcomes: mpsc::Sender<Outcome>,
}

impl<S: Slots + 'static> EngineFeed<S> {
    fn note_cpu(&self) {
        let ns = sys::thread_cpu_time().as_nanos() as u64;
        self.core.driver_cpu_ns.store(ns, Ordering::Relaxed);
    }
}

impl<S: Slots + 'static> Feed for EngineFeed<S> {
    fn next_job(&mut self) -> Option<Job> {
        self.jobs.recv().ok()
    }

    fn poll_job(&mut self) -> Next {
        self.note_cpu();
        match self.jobs.try_recv() {
            Ok(job) => Next::Job(job),
            Err(mpsc::TryRecvError::Empty) => Next::Later,
            Err(mpsc::TryRecvError::Disconnected) => Next::End,
        }
    }

    fn wake(&self) -> Option<&EventFd> {
        Some(&self.core.wake)
    }

    fn done(&mut self, outcome: Outcome) {
        self.note_cpu();
        // The outcome thread outlives the driver; a failed send means it is
        // gone and the outcome (with the job's pidfd) is dropped.
        let _ = self.outcomes.send(outcome);
    }
}

/// What a worker does next.
enum Claim {
    Clone(Arc<Req>, usize, usize),
    /// The driver is gone: fail these requests' remaining clones.
    Fail(Vec<(Arc<Req>, usize)>),
    Exit,
}

impl<S: Slots + 'static> Core<S> {
    fn slots(&self) -> MutexGuard<'_, S> {
        lock(&self.slots)
    }

    fn store_for(&self, dir: &Path) -> Result<Arc<CloneStore>, SpawnError> {
        let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        if let Some(s) = lock(&self.stores).get(&key) {
            return Ok(s.clone());
        }
        let s = Arc::new(
            CloneStore::open(&key, &self.runtime_dir, self.storage)
                .map_err(SpawnError::Storage)?
                .with_owner(self.owner.clone()),
        );
        if let Some(b) = s.copy_check(self.allow_copy).map_err(SpawnError::Storage)? {
            tracing::warn!(
                "allow_copy: each clone of {} copies {b} bytes",
                key.display()
            );
        }
        lock(&self.stores).insert(key, s.clone());
        Ok(s)
    }

    /// The isolation of `store`'s clones. One template mount namespace for
    /// the engine's life, made by the first request that needs it: each
    /// VMM's copy then holds a few dozen mounts, not one per slot netns
    /// (in jailer mode, the jailer's copy, with its slot's netns bound
    /// back).
    fn isolation_for(&self, store: &CloneStore) -> Result<Isolation, SpawnError> {
        let mut isolation = self.isolation.clone();
        if isolation.jailer.is_some() || !store.manifest().drives.is_empty() {
            let mut t = lock(&self.template);
            if t.is_none() {
                *t = Some(Arc::new(MountTemplate::new().map_err(SpawnError::Mounts)?));
            }
            isolation.mount_template = t.clone();
        }
        Ok(isolation)
    }

    fn standby_target(&self) -> usize {
        self.standby.target()
    }

    fn submit(&self, r: SpawnRequest) -> Result<Ticket, SpawnError> {
        if r.count == 0 || r.count > MAX_COUNT {
            return Err(SpawnError::Count(r.count));
        }
        let (queued, in_flight) = {
            let s = lock(&self.sched);
            if !s.accepting || s.driver_gone {
                return Err(SpawnError::Stopped);
            }
            // Clones accepted but not admitted yet hold nothing so far.
            let queued = s.queue.iter().map(|(q, i)| q.count - i).sum::<usize>();
            (queued, s.in_flight)
        };
        let possible = self
            .capacity_with(Some(in_flight + queued))
            .clones_possible
            .saturating_sub(queued);
        if r.count > possible {
            return Err(SpawnError::Overloaded {
                asked: r.count,
                possible,
                retry_after: self.retry_after(),
            });
        }
        let started = Instant::now();
        let store = match r.snapshot {
            SnapshotSource::Store(s) => s,
            SnapshotSource::Dir(d) => self.store_for(&d)?,
        };
        let m = store.manifest();
        let made_by = m.vmm.to_string();
        let asked = vmm_name(&self.vmm);
        if made_by != asked {
            return Err(SpawnError::VmmMismatch {
                made_by,
                asked: asked.into(),
            });
        }
        let (vmstate, mem) = (
            store.snapshot_dir().join(&m.vmstate.file),
            store.snapshot_dir().join(&m.memory.file),
        );
        if let Some(j) = &self.isolation.jailer {
            // What every jailed VMM opens but does not own: the snapshot's
            // files and its read-only drives (shared, never chowned).
            let shared: Vec<PathBuf> = m
                .drives
                .iter()
                .filter(|d| d.read_only)
                .map(|d| store.snapshot_dir().join(&d.file))
                .chain([vmstate.clone(), mem.clone()])
                .collect();
            j.check_readable(&shared).map_err(SpawnError::Jailer)?;
        }
        let isolation = self.isolation_for(&store)?;
        let plan = Arc::new(Plan {
            snapshot_path: isolation.visible_path(&vmstate),
            mem_path: isolation.visible_path(&mem),
            backend: BackendType::File,
            ready: r.ready,
            timeouts: r.timeouts,
            ready_retry: r.ready_retry,
        });
        {
            let live = lock(&self.live);
            let _ = sys::rlimit::raise_nofile(
                (self.parallel as u64) * 8 + 1024 + 2 * (live.by_token.len() + r.count) as u64,
            );
        }
        // A VMM started ahead runs clone 0; its reserved tag is the
        // request's.
        let standby = self.take_standby(&store, &r.vmm_args);
        let tag = match &standby {
            Some(sb) => sb.tag().to_owned(),
            None => lock(&self.live).reserve_tag(),
        };
        let (tx, rx) = cb::unbounded();
        let req = Arc::new(Req {
            tag: tag.clone(),
            count: r.count,
            snapshot_tap: m
                .network_interfaces
                .first()
                .map(|n| (n.iface_id.clone(), n.host_dev_name.clone())),
            guest_mac: m
                .network_interfaces
                .first()
                .and_then(|n| crate::snapshot::manifest::parse_mac(&n.guest_mac)),
            store,
            env: r.env,
            ready: r.ready,
            vmm_args: r.vmm_args,
            labels: r.labels,
            ttl: r.ttl,
            standby: Mutex::new(standby),
            plan,
            isolation,
            started,
            driver_cpu_start: self.driver_cpu_ns.load(Ordering::Relaxed),
            book: Mutex::new(ReqBook {
                rows: vec![None; r.count],
                ..Default::default()
            }),
            events: tx,
        });
        {
            let mut s = lock(&self.sched);
            if !s.accepting || s.driver_gone {
                drop(s);
                match lock(&req.standby).take() {
                    // Its tag goes with it.
                    Some(sb) => self.destroy_standby(sb),
                    None => lock(&self.live).unref_tag(&tag),
                }
                return Err(SpawnError::Stopped);
            }
            s.queue.push_back((req, 0));
        }
        self.room.notify_all();
        Ok(Ticket {
            tag,
            count: r.count,
            events: rx,
        })
    }

    fn claim(&self) -> Claim {
        let mut s = lock(&self.sched);
        loop {
            if s.driver_gone && !s.queue.is_empty() {
                return Claim::Fail(s.queue.drain(..).collect());
            }
            if s.driver_gone || (!s.accepting && s.queue.is_empty()) {
                return Claim::Exit;
            }
            if s.in_flight < self.parallel {
                if let Some((r, i)) = s.queue.pop_front() {
                    // Round robin: the request goes to the back with its
                    // next clone.
                    if i + 1 < r.count {
                        s.queue.push_back((r.clone(), i + 1));
                    }
                    s.in_flight += 1;
                    s.seq += 1;
                    return Claim::Clone(r, i, s.seq);
                }
            }
            s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn room_made(&self) {
        let idle = {
            let mut s = lock(&self.sched);
            s.in_flight -= 1;
            s.in_flight == 0 && s.queue.is_empty()
        };
        self.room.notify_all();
        if idle {
            self.standby.wake();
        }
    }

    /// No clone in flight or queued.
    fn idle(&self) -> bool {
        let s = lock(&self.sched);
        s.in_flight == 0 && s.queue.is_empty()
    }

    fn admission_worker(&self, jobs: mpsc::Sender<Job>) {
        loop {
            match self.claim() {
                Claim::Exit => break,
                Claim::Fail(reqs) => {
                    let why = self.driver_gone_why();
                    for (r, from) in reqs {
                        let held = lock(&r.standby).take();
                        if let Some(sb) = held {
                            self.destroy_standby_keep_tag(sb);
                        }
                        for i in from..r.count {
                            let id = r.clone_id(i);
                            let why = ("driver", why.clone());
                            let t = Instant::now();
                            self.fail_row(
                                &r,
                                i,
                                id,
                                None,
                                PhasesMs::default(),
                                t,
                                why,
                                Duration::ZERO,
                            );
                        }
                    }
                }
                Claim::Clone(r, i, seq) => match self.admit(&r, i, seq) {
                    Some(job) => {
                        if jobs.send(job).is_ok() {
                            if let Err(e) = self.wake.signal() {
                                tracing::warn!("cannot wake the restore driver: {e}");
                            }
                        } else {
                            self.driver_gone();
                            self.abandon(seq, "the restore driver stopped");
                            self.room_made();
                        }
                    }
                    // Failed and reclaimed: its room is free again.
                    None => self.room_made(),
                },
            }
        }
        // This worker's sender closes: once every worker's has, the driver
        // sees the end of the jobs, but only if it is woken to look.
        drop(jobs);
        let _ = self.wake.signal();
    }

    fn driver_gone_why(&self) -> String {
        match &*lock(&self.driver_error) {
            Some(e) => format!("the restore driver stopped: {}", crate::error::chain(e)),
            None => "the restore driver stopped".into(),
        }
    }

    fn driver_gone(&self) {
        lock(&self.sched).driver_gone = true;
        self.room.notify_all();
    }

    /// Records clone `i`'s row, tells the ticket, and finishes the request
    /// with its last row.
    fn set_row(&self, r: &Req, i: usize, row: CloneReport, cpu: Duration) {
        let _ = r.events.send(Event::Row(row.clone()));
        let finished = {
            let mut b = lock(&r.book);
            b.cpu += cpu;
            if b.rows[i].replace(row).is_none() {
                b.done += 1;
            }
            b.done == r.count
        };
        if finished {
            self.finish(r);
        }
    }

    fn finish(&self, r: &Req) {
        let wall = r.started.elapsed();
        let driver_cpu = self
            .driver_cpu_ns
            .load(Ordering::Relaxed)
            .saturating_sub(r.driver_cpu_start);
        let b = std::mem::take(&mut *lock(&r.book));
        let clones: Vec<CloneReport> = b.rows.into_iter().flatten().collect();
        let totals: Vec<f64> = clones.iter().filter(|c| c.ok).map(|c| c.total_ms).collect();
        let p = Percentiles::of(&totals);
        let ready = totals.len();
        let report = SpawnReport {
            summary: Summary {
                wall_ms: ms(wall),
                ready,
                failed: clones.len() - ready,
                p50: p.p50,
                p99: p.p99,
                driver: self.kind,
                driver_fallback_reason: self.reason.clone(),
                storage_strategy: r.store.strategy(),
                mem_bytes_copied: 0,
                disk_bytes_copied: b.disk_bytes,
                driver_cpu_ms: ms(Duration::from_nanos(driver_cpu)),
                admission_cpu_ms: ms(b.cpu),
            },
            clones,
        };
        lock(&self.live).unref_tag(&r.tag);
        let _ = r.events.send(Event::Done(report));
    }

    #[allow(clippy::too_many_arguments)]
    fn fail_row(
        &self,
        r: &Req,
        i: usize,
        id: String,
        slot: Option<&SlotLease>,
        phases: PhasesMs,
        admitted: Instant,
        (phase, err): (&str, String),
        cpu: Duration,
    ) {
        // Every error names its phase first (restore errors already do).
        let err = if err.starts_with(phase) && err[phase.len()..].starts_with(": ") {
            err
        } else {
            format!("{phase}: {err}")
        };
        tracing::warn!(clone = %id, phase, "clone failed: {err}");
        let row = CloneReport {
            id,
            netns: slot.map(|s| s.netns.clone()),
            clone_ip: slot.map(|s| s.clone_ip),
            pid: None,
            host_netns: self.host_netns.clone(),
            ready_port: r.ready_port(),
            phases_ms: phases,
            total_ms: ms(admitted.elapsed()),
            bytes_copied: 0,
            wasp_cpu_ms: 0.0,
            ok: false,
            error: Some(err),
            failed_phase: Some(phase.into()),
        };
        self.set_row(r, i, row, cpu);
    }

    fn give_back(&self, id: &str, slot: SlotLease) -> Option<String> {
        match self.slots().give_back(slot) {
            Ok(()) => None,
            Err(e) => {
                let e = format!("slot give-back failed: {}", crate::error::chain(&*e));
                tracing::warn!(clone = %id, "{e}");
                Some(e)
            }
        }
    }

    /// Admits clone `i` of `r`: slot, storage, launch. `None` means it
    /// failed and was reclaimed (its row is written).
    fn admit(&self, r: &Arc<Req>, i: usize, seq: usize) -> Option<Job> {
        let held = lock(&r.standby).take();
        if let Some(sb) = held {
            return Some(self.admit_standby(r, i, seq, sb));
        }
        let id = r.clone_id(i);
        let admitted = Instant::now();
        let cpu_start = sys::thread_cpu_time();
        let cpu = || sys::thread_cpu_time().saturating_sub(cpu_start);
        let mut phases = PhasesMs::default();
        let store = &*r.store;

        let taken = self.slots().take();
        let slot = match taken {
            Ok(s) => s,
            Err(e) => {
                let why = ("slot", crate::error::chain(&*e));
                self.fail_row(r, i, id, None, phases, admitted, why, cpu());
                return None;
            }
        };
        phases.slot = ms(admitted.elapsed());

        let t = Instant::now();
        let files = match store.prepare(&id) {
            Ok(f) => f,
            Err(e) => {
                self.give_back(&id, slot.clone());
                let why = ("storage", crate::error::chain(&e));
                self.fail_row(r, i, id, Some(&slot), phases, admitted, why, cpu());
                return None;
            }
        };
        phases.storage = ms(t.elapsed());
        lock(&r.book).disk_bytes += files.bytes_copied;

        let reclaim_files = |id: &str| {
            if let Err(e) = store.cleanup(id) {
                tracing::warn!(clone = %id, "cleanup failed: {}", crate::error::chain(&e));
            }
        };
        let tap = self.slots().check_tap(&slot);
        if let Err(e) = tap {
            reclaim_files(&id);
            self.give_back(&id, slot.clone());
            let why = (
                "slot",
                format!("the slot's tap is missing: {}", crate::error::chain(&*e)),
            );
            self.fail_row(r, i, id, Some(&slot), phases, admitted, why, cpu());
            return None;
        }

        let t = Instant::now();
        let spec = self.launch_spec(&id, &files, &slot, r.vmm_args.clone(), &r.isolation);
        let launched = match launch::launch(&spec) {
            Ok(l) => l,
            Err(e) => {
                reclaim_files(&id);
                self.give_back(&id, slot.clone());
                let why = ("launch", crate::error::chain(&e));
                self.fail_row(r, i, id, Some(&slot), phases, admitted, why, cpu());
                return None;
            }
        };
        phases.launch = ms(t.elapsed());
        crate::testhook::point("clone-launched");

        let launched_at = launched.spawned_at;
        Some(self.hand_to_driver(
            r,
            i,
            seq,
            AdmittedClone {
                id,
                slot,
                launched,
                launched_at,
                files_dir: files.dir,
                bytes_copied: files.bytes_copied,
                admitted,
                phases,
                cpu_start,
            },
        ))
    }

    /// How clone `id` is launched in `slot` from its `files` (at admission,
    /// or ahead as a standby).
    fn launch_spec(
        &self,
        id: &str,
        files: &CloneFiles,
        slot: &SlotLease,
        extra_args: Vec<String>,
        isolation: &Isolation,
    ) -> LaunchSpec {
        LaunchSpec {
            vmm: self.vmm.clone(),
            id: id.to_owned(),
            api_sock: files.dir.join("api.sock"),
            netns: Some(slot.netns.clone()),
            drives: files
                .drives
                .iter()
                .map(|d| (d.file.clone(), d.drive_id.clone()))
                .collect(),
            log_dir: files.dir.clone(),
            extra_args,
            stdin_pipe: false,
            isolation: isolation.clone(),
            snapshot_files: vec![files.vmstate.clone(), files.memory.clone()],
        }
    }

    /// Hands an admitted clone to the driver: its [`Job`] (returned) and
    /// its [`Pending`] entry under `seq`, for the driver's outcome or a
    /// reclaim. Both [`Core::admit`] and `admit_standby` end here.
    fn hand_to_driver(&self, r: &Arc<Req>, i: usize, seq: usize, a: AdmittedClone) -> Job {
        let AdmittedClone {
            id,
            slot,
            launched,
            launched_at,
            files_dir,
            bytes_copied,
            admitted,
            phases,
            cpu_start,
        } = a;
        let net_override = r.net_override(&slot);
        let vmm = launched.pidfd.try_clone().ok();
        let job = Job {
            index: seq,
            plan: Some(r.plan.clone()),
            id: id.clone(),
            api_sock: launched.api_sock,
            pid: launched.pid,
            pidfd: launched.pidfd,
            launched_at,
            net_override,
            clone_ip: slot.clone_ip,
            mmds_body: r.env.mmds_body(&id),
            link_sync: link_sync(&slot, r.guest_mac),
        };
        let pending = Pending {
            req: r.clone(),
            i,
            slot,
            child: launched.child,
            vmm,
            cgroup: launched.cgroup,
            jail_dir: launched.jail_dir,
            files_dir,
            bytes_copied,
            admitted,
            phases,
            cpu: sys::thread_cpu_time().saturating_sub(cpu_start),
        };
        lock(&self.pending).insert(seq, pending);
        job
    }

    /// Reclaims a clone the driver never finished (it failed as a whole):
    /// kill and reap its VMM, remove its files, give its slot back.
    fn abandon(&self, seq: usize, why: &str) {
        let Some(mut p) = lock(&self.pending).remove(&seq) else {
            return;
        };
        let id = p.req.clone_id(p.i);
        if let Some(fd) = &p.vmm {
            let _ = sys::pidfd::pidfd_send_signal(fd, libc::SIGKILL);
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
        self.remove_clone_files(
            &p.req.store,
            &id,
            p.cgroup.as_deref(),
            p.jail_dir.as_deref(),
        );
        self.give_back(&id, p.slot.clone());
        let why = ("driver", why.to_owned());
        self.fail_row(
            &p.req,
            p.i,
            id,
            Some(&p.slot),
            p.phases,
            p.admitted,
            why,
            p.cpu,
        );
    }

    fn remove_clone_files(
        &self,
        store: &CloneStore,
        id: &str,
        cgroup: Option<&Path>,
        jail_dir: Option<&Path>,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = store.cleanup(id) {
            errors.push(format!("cleanup failed: {}", crate::error::chain(&e)));
        }
        for e in launch::remove_isolation(cgroup, jail_dir) {
            errors.push(format!("cleanup failed: {}", crate::error::chain(&e)));
        }
        for e in &errors {
            tracing::warn!(clone = %id, "{e}");
        }
        errors
    }

    /// Handles the driver's outcomes until it is gone; then reclaims any
    /// clone that never got one (the driver failed as a whole).
    fn outcomes(&self, outcomes: mpsc::Receiver<Outcome>) {
        for o in outcomes {
            self.done(o);
            self.room_made();
        }
        self.driver_gone();
        let why = self.driver_gone_why();
        let left: Vec<usize> = lock(&self.pending).keys().copied().collect();
        for seq in left {
            self.abandon(seq, &format!("{why} before this clone finished"));
            self.room_made();
        }
    }

    /// A clone's driver outcome: record it and watch it, or reclaim it.
    fn done(&self, o: Outcome) {
        let cpu_start = sys::thread_cpu_time();
        let Some(mut p) = lock(&self.pending).remove(&o.job.index) else {
            return;
        };
        let r = p.req.clone();
        let mut phases = p.phases;
        phases.socket = ms(o.times.socket);
        phases.load = ms(o.times.load);
        phases.mmds = ms(o.times.mmds);
        phases.resume = ms(o.times.resume);
        phases.ready = ms(o.times.ready);
        let id = o.job.id.clone();
        // The record is written before the clone is reported ready or
        // watched: a clone without one would be unknown to an engine that
        // restarts, so a failed write fails the clone.
        let result = o
            .result
            .map_err(|e| (e.phase().to_string(), crate::error::chain(&e)));
        let result = result.and_then(|()| {
            let rec = CloneRecord {
                id: id.clone(),
                pid: o.job.pid,
                pid_start: state::pid_start_time(o.job.pid).unwrap_or(0),
                vmm: vmm_name(&self.vmm).into(),
                netns: p.slot.netns.clone(),
                slot: p.slot.index,
                pool: p.slot.pool.clone(),
                host_netns: self.host_netns.clone(),
                clone_ip: p.slot.clone_ip,
                ready_port: r.ready_port(),
                api_sock: o.job.api_sock.clone(),
                clone_dir: p.files_dir.clone(),
                snapshot: r.store.snapshot_dir().to_owned(),
                created_at: crate::snapshot::manifest::rfc3339_utc(std::time::SystemTime::now()),
                cgroup: p.cgroup.clone(),
                jail_dir: p.jail_dir.clone(),
                request: Some(r.tag.clone()),
                labels: r.labels.clone(),
                expires_at_ms: r.ttl.map(ttl::deadline_ms),
                paused: false,
            };
            self.state
                .put(&rec)
                .map_err(|e| ("record".to_string(), crate::error::chain(&e)))?;
            Ok(rec)
        });
        match result {
            Ok(record) => {
                crate::testhook::point("clone-recorded");
                let row = CloneReport {
                    id,
                    netns: Some(p.slot.netns.clone()),
                    clone_ip: Some(p.slot.clone_ip),
                    pid: Some(o.job.pid),
                    host_netns: self.host_netns.clone(),
                    ready_port: r.ready_port(),
                    phases_ms: phases,
                    total_ms: ms(o.finished_at.saturating_duration_since(p.admitted)),
                    bytes_copied: p.bytes_copied,
                    wasp_cpu_ms: 0.0,
                    ok: true,
                    error: None,
                    failed_phase: None,
                };
                self.watch(Running {
                    record,
                    child: Some(p.child),
                    pidfd: o.job.pidfd,
                    slot: p.slot,
                    store: Some(r.store.clone()),
                });
                let cpu = p.cpu + sys::thread_cpu_time().saturating_sub(cpu_start);
                let row = CloneReport {
                    wasp_cpu_ms: ms(cpu),
                    ..row
                };
                self.set_row(&r, p.i, row, cpu);
            }
            Err((phase, err)) => {
                // Reclaim: kill exactly this VMM, reap it, remove its files,
                // give its slot back.
                let _ = sys::pidfd::pidfd_send_signal(&o.job.pidfd, libc::SIGKILL);
                let _ = p.child.wait();
                self.remove_clone_files(&r.store, &id, p.cgroup.as_deref(), p.jail_dir.as_deref());
                self.give_back(&id, p.slot.clone());
                let why = (phase.as_str(), err);
                let cpu = p.cpu + sys::thread_cpu_time().saturating_sub(cpu_start);
                self.fail_row(&r, p.i, id, Some(&p.slot), phases, p.admitted, why, cpu);
            }
        }
    }

    /// Starts watching a live clone's pidfd (and its TTL).
    fn watch(&self, run: Running) {
        let mut live = lock(&self.live);
        let token = live.next_token;
        live.next_token += 1;
        if let Err(e) = self.epoll.add(run.pidfd.as_fd(), token) {
            tracing::warn!(clone = %run.record.id, "cannot watch the VMM's exit: {e}");
        }
        *live.tags.entry(run.tag()).or_default() += 1;
        if let Some(d) = run.record.expires_at_ms {
            live.deadlines.insert((d, token));
        }
        live.by_id.insert(run.record.id.clone(), token);
        live.by_token.insert(token, run);
        self.arm_timer(&live);
    }

    /// The reaper: waits on every live clone's pidfd at once; a VMM that
    /// exits is reclaimed at once.
    fn reaper(&self) {
        loop {
            let tokens = match self.epoll.wait(64, -1) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(
                        "the reaper's epoll_wait failed: {e}; VMM exits are no longer noticed"
                    );
                    return;
                }
            };
            for t in tokens {
                if t == STOP_TOKEN {
                    return;
                }
                if t == TIMER_TOKEN {
                    self.expire();
                    continue;
                }
                let run = lock(&self.live).take_token(t);
                if let Some(run) = run {
                    tracing::info!(clone = %run.record.id, pid = run.record.pid, "the VMM exited; reclaiming its clone");
                    self.reclaim(run, VmmFate::AlreadyGone, ReapCause::Exited);
                }
            }
        }
    }

    /// Stops every live clone: SIGTERM to all, up to `grace` for them
    /// (once, not per clone), then SIGKILL; reclaims each.
    fn stop_all(&self, grace: Duration, cause: ReapCause) -> Vec<Reaped> {
        let runs: Vec<Running> = {
            let mut live = lock(&self.live);
            let tokens: Vec<u64> = live.by_token.keys().copied().collect();
            tokens
                .into_iter()
                .filter_map(|t| live.take_token(t))
                .collect()
        };
        self.stop_many(runs, grace, cause)
    }

    /// Stops `runs` (taken out of the live set) together: SIGTERM to all,
    /// up to `grace` once, then SIGKILL; reclaims each. Sorted by id.
    /// In waves of [`STOP_WAVE`], each with its own `grace`, so thousands
    /// of exiting VMMs do not all contend for the CPUs at once.
    fn stop_many(&self, mut runs: Vec<Running>, grace: Duration, cause: ReapCause) -> Vec<Reaped> {
        /// Threads reclaiming a wave's clones.
        const STOP_THREADS: usize = 8;
        let mut v = Vec::with_capacity(runs.len());
        while !runs.is_empty() {
            let rest = runs.split_off(runs.len().min(STOP_WAVE));
            let wave = std::mem::replace(&mut runs, rest);
            let termed: Vec<bool> = wave.iter().map(|r| self.term(r)).collect();
            let deadline = Instant::now() + grace;
            let mut wave: Vec<(Running, bool)> = wave.into_iter().zip(termed).collect();
            // The reclaims side by side: each waits on its VMM's exit and
            // on the kernel (file and slot removal), not on the CPU.
            let per = wave.len().div_ceil(STOP_THREADS).max(1);
            let mut chunks = Vec::new();
            while !wave.is_empty() {
                let rest = wave.split_off(wave.len().min(per));
                chunks.push(std::mem::replace(&mut wave, rest));
            }
            std::thread::scope(|s| {
                let hs: Vec<_> = chunks
                    .into_iter()
                    .map(|c| {
                        s.spawn(move || {
                            c.into_iter()
                                .map(|(r, t)| self.finish_stop(r, t, deadline, cause))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for h in hs {
                    v.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
                }
            });
        }
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Stops a live clone (taken out of the live set) and reclaims it.
    fn stop(&self, run: Running, grace: Duration, cause: ReapCause) -> Reaped {
        let termed = self.term(&run);
        self.finish_stop(run, termed, Instant::now() + grace, cause)
    }

    /// The first half of a stop: no exit event for the clone from now on,
    /// and SIGTERM through its pidfd unless it is gone. True when the
    /// signal went.
    fn term(&self, run: &Running) -> bool {
        let _ = self.epoll.delete(run.pidfd.as_fd());
        !sys::pidfd::pidfd_exited(&run.pidfd, 0).unwrap_or(false)
            && sys::pidfd::pidfd_send_signal(&run.pidfd, libc::SIGTERM).is_ok()
    }

    /// The second half: until `deadline` for a VMM sent SIGTERM to exit,
    /// then SIGKILL; then the reclaim.
    fn finish_stop(
        &self,
        run: Running,
        termed: bool,
        deadline: Instant,
        cause: ReapCause,
    ) -> Reaped {
        let exited = |ms: u128| {
            sys::pidfd::pidfd_exited(&run.pidfd, ms.min(i32::MAX as u128) as i32).unwrap_or(false)
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let fate = if !termed && exited(0) {
            VmmFate::AlreadyGone
        } else if termed && exited(left.as_millis()) {
            VmmFate::Terminated
        } else {
            let _ = sys::pidfd::pidfd_send_signal(&run.pidfd, libc::SIGKILL);
            VmmFate::Killed
        };
        self.reclaim(run, fate, cause)
    }

    /// Reaps a clone's VMM (gone, or going after SIGKILL), removes its
    /// files, isolation and record, gives its slot back, and tells the
    /// exit subscribers.
    fn reclaim(&self, mut run: Running, fate: VmmFate, cause: ReapCause) -> Reaped {
        let _ = self.epoll.delete(run.pidfd.as_fd());
        let status = match &mut run.child {
            Some(c) => c.wait().ok().and_then(status_code),
            None => {
                // Not our child: its exit shows on the pidfd; reap it in
                // case it is our child after all (an engine of this
                // process adopted it), else its parent (or init) does.
                let _ = sys::pidfd::pidfd_exited(&run.pidfd, 5_000);
                adopt::reap_if_ours(&run.record);
                None
            }
        };
        let rec = &run.record;
        let mut errors = match &run.store {
            Some(store) => self.remove_clone_files(
                store,
                &rec.id,
                rec.cgroup.as_deref(),
                rec.jail_dir.as_deref(),
            ),
            None => self.remove_recorded_files(rec),
        };
        if let Err(e) = self.state.remove(&rec.id) {
            errors.push(crate::error::chain(&e));
        }
        errors.extend(self.give_back(&rec.id, run.slot.clone()));
        lock(&self.live).unref_tag(&run.tag());
        let reaped = Reaped {
            id: rec.id.clone(),
            pid: rec.pid,
            slot: rec.slot,
            vmm: fate,
            status,
            errors,
            cause,
        };
        lock(&self.exit_subs).retain(|s| s.send(reaped.clone()).is_ok());
        reaped
    }
}

/// Runs one batch on an engine of its own over `slots` (see
/// [`crate::engine`]): opened for the batch, shut down after it; the clones
/// keep running. The driver runs on a thread inside the host netns (for
/// `tcp:` readiness from where a user of the clone connects).
pub fn spawn(
    opts: &SpawnOptions,
    store: &CloneStore,
    slots: &mut dyn Slots,
    env: &Env,
) -> Result<SpawnReport, SpawnError> {
    spawn_observed(opts, store, slots, env, &mut |_| {})
}

/// A slot call the engine's threads make, served by the thread that owns
/// the borrowed slots of [`spawn_observed`].
enum SlotCall {
    Take(mpsc::Sender<Result<SlotLease, SlotError>>),
    GiveBack(SlotLease, mpsc::Sender<Result<(), SlotError>>),
    CheckTap(SlotLease, mpsc::Sender<Result<(), SlotError>>),
}

/// Borrowed slots seen by an engine: each call goes to the owner's thread.
struct ProxySlots {
    calls: mpsc::Sender<SlotCall>,
    host_netns: Option<String>,
}

impl ProxySlots {
    fn call<T>(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<T, SlotError>>) -> SlotCall,
    ) -> Result<T, SlotError> {
        let (tx, rx) = mpsc::channel();
        self.calls
            .send(make(tx))
            .map_err(|_| "the slot owner stopped serving")?;
        rx.recv().map_err(|_| "the slot owner stopped serving")?
    }
}

impl Slots for ProxySlots {
    fn take(&mut self) -> Result<SlotLease, SlotError> {
        self.call(SlotCall::Take)
    }
    fn give_back(&mut self, slot: SlotLease) -> Result<(), SlotError> {
        self.call(|tx| SlotCall::GiveBack(slot, tx))
    }
    fn check_tap(&mut self, slot: &SlotLease) -> Result<(), SlotError> {
        let slot = slot.clone();
        self.call(|tx| SlotCall::CheckTap(slot, tx))
    }
    fn host_netns(&self) -> Option<String> {
        self.host_netns.clone()
    }
}

/// [`spawn`], calling `on_done` with each clone's row as it finishes (ready
/// or failed), in completion order: for progress displays.
pub fn spawn_observed(
    opts: &SpawnOptions,
    store: &CloneStore,
    slots: &mut dyn Slots,
    env: &Env,
    on_done: &mut (dyn FnMut(&CloneReport) + Send),
) -> Result<SpawnReport, SpawnError> {
    if opts.count == 0 || opts.count > MAX_COUNT {
        return Err(SpawnError::Count(opts.count));
    }
    let (calls, served) = mpsc::channel();
    let proxy = ProxySlots {
        calls,
        host_netns: slots.host_netns(),
    };
    let cfg = EngineConfig {
        parallel: opts.parallel,
        driver: opts.driver,
        isolation: opts.isolation.clone(),
        ..EngineConfig::new(
            opts.vmm.clone(),
            opts.state_dir.clone(),
            store
                .clones_dir()
                .parent()
                .unwrap_or(store.clones_dir())
                .to_owned(),
        )
    };
    let req = SpawnRequest {
        env: env.clone(),
        ready: opts.ready,
        timeouts: opts.timeouts,
        ready_retry: opts.ready_retry,
        vmm_args: opts.vmm_args.clone(),
        ..SpawnRequest::new(SnapshotSource::Store(Arc::new(store.clone())), opts.count)
    };
    std::thread::scope(|s| {
        // The engine runs beside this thread, which serves its slot calls
        // until the engine (and with it the proxy) is gone.
        let run = s.spawn(move || {
            let engine = Engine::with_slots(cfg, proxy).map_err(|e| match e {
                EngineError::State(e) => SpawnError::State(e),
                EngineError::HostNetns(ns, e) => SpawnError::HostNetns(ns, e),
                e => SpawnError::Admission(std::io::Error::other(crate::error::chain(&e))),
            })?;
            let report = engine.spawn(req).and_then(|t| t.wait_observed(on_done));
            engine.shutdown(false);
            if let Some(e) = engine.take_driver_error() {
                return Err(SpawnError::Driver(e));
            }
            report
        });
        for call in served {
            match call {
                SlotCall::Take(tx) => drop(tx.send(slots.take())),
                SlotCall::GiveBack(slot, tx) => drop(tx.send(slots.give_back(slot))),
                SlotCall::CheckTap(slot, tx) => drop(tx.send(slots.check_tap(&slot))),
            }
        }
        run.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn the_engine_and_its_tickets_can_be_shared_across_threads() {
        assert_send_sync::<Engine<PoolSlots>>();
        assert_send_sync::<Arc<Engine>>();
        fn send<T: Send>() {}
        send::<Ticket>();
        send::<SpawnRequest>();
    }

    #[test]
    fn a_wait_status_reads_as_the_shell_shows_it() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status_code(std::process::ExitStatus::from_raw(3 << 8)),
            Some(3)
        );
        assert_eq!(
            status_code(std::process::ExitStatus::from_raw(9)),
            Some(137)
        );
    }

    #[test]
    fn a_request_debug_never_shows_a_secret() {
        let mut env = Env::new();
        env.add_secret_from("TOKEN", |_| Some("canary-7d1e".into()))
            .unwrap();
        let mut r = SpawnRequest::new(SnapshotSource::Dir("/x".into()), 1);
        r.env = env;
        assert!(!format!("{r:?}").contains("canary-7d1e"));
    }
}

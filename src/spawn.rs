//! `wasp spawn`: the whole pipeline for a batch of clones.
//!
//! ```text
//! slot pool -> clone storage -> VMM launch -> restore -> inject -> resume -> ready
//! ```
//!
//! Two threads share the work. The admission thread takes the slot,
//! prepares storage and launches the VMM for each clone, hands the job to
//! the restore driver through a channel and wakes it with an eventfd; it
//! also records finished clones and reclaims failed ones. The driver thread
//! ([`crate::ring`]) runs restore, inject, resume and ready as state
//! machines, `parallel` clones at a time, and does nothing else, so no
//! clone's I/O waits behind another clone's fork or disk copy. A clone that
//! fails at any stage is reclaimed at once (VMM killed through its pidfd,
//! files removed, slot given back) and the rest of the batch goes on.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::env::Env;
use crate::launch::{self, Isolation, LaunchSpec, Vmm};
use crate::ready::Ready;
use crate::restore::{Job, LinkSync, Plan, Timeouts};
use crate::ring::{self, DriverKind, Feed, Next, Outcome};
use crate::slot::SlotOps;
use crate::stats::{ms, Percentiles};
use crate::storage::clone::CloneStore;
use crate::storage::probe::Strategy;
use crate::sys::tap::EventFd;
use crate::vmm_api::{BackendType, NetworkOverride};
use crate::{state, sys};

/// A network slot as spawn sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLease {
    /// Pool name.
    pub pool: String,
    /// Slot index in the pool.
    pub index: u32,
    /// The slot's named netns.
    pub netns: String,
    /// The clone's address.
    pub clone_ip: Ipv4Addr,
    /// The slot's tap name.
    pub tap: String,
    /// The guest's address behind the tap, when the slot knows it: the
    /// clone gets a permanent neighbour entry for it (see [`LinkSync`]).
    pub guest_ip: Option<Ipv4Addr>,
}

/// A boxed error from a slot provider.
pub type SlotError = Box<dyn std::error::Error + Send + Sync>;

/// The slot pool seam: the real pool, or a test fake.
pub trait Slots: Send {
    /// Takes a warm slot.
    fn take(&mut self) -> Result<SlotLease, SlotError>;
    /// Gives a slot back once its VMM is gone.
    fn give_back(&mut self, slot: SlotLease) -> Result<(), SlotError>;
    /// Checks the slot's tap exists (Firecracker would silently create a
    /// bare one on load otherwise).
    fn check_tap(&mut self, slot: &SlotLease) -> Result<(), SlotError>;
    /// The host netns the bridge lives in, if not the current one.
    fn host_netns(&self) -> Option<String>;
}

/// Options of one batch.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// The VMM.
    pub vmm: Vmm,
    /// Number of clones.
    pub count: usize,
    /// Clones in flight at once.
    pub parallel: usize,
    /// Readiness check.
    pub ready: Ready,
    /// Per-phase limits.
    pub timeouts: Timeouts,
    /// Force a driver (default: io_uring when the probe passes).
    pub driver: Option<DriverKind>,
    /// State dir for clone records.
    pub state_dir: PathBuf,
    /// Retry delay for refused readiness connects.
    pub ready_retry: Duration,
    /// Extra VMM arguments (the stand-in's `--fault` switches).
    pub vmm_args: Vec<String>,
    /// Per-clone cgroup limits and jailer mode (default: neither).
    pub isolation: Isolation,
}

/// Largest batch accepted in one command.
pub const MAX_COUNT: usize = 100_000;

/// Errors that stop a whole batch (per-clone failures are in the report).
#[derive(Debug, Error)]
pub enum SpawnError {
    /// `--count` out of range.
    #[error("--count {0} is out of range: use 1 to {MAX_COUNT}")]
    Count(usize),
    /// The snapshot was made by a different VMM.
    #[error(
        "the snapshot was made by {made_by}, but --vmm is {asked}; spawn it with --vmm {made_by}"
    )]
    VmmMismatch {
        /// From the manifest.
        made_by: String,
        /// From the command line.
        asked: String,
    },
    /// The state dir cannot be used.
    #[error("cannot use the state dir")]
    State(#[source] state::StateError),
    /// The host netns cannot be entered.
    #[error("cannot enter the host network namespace {0}")]
    HostNetns(String, #[source] std::io::Error),
    /// Jailer mode cannot work with this snapshot.
    #[error("jailer mode")]
    Jailer(#[source] crate::jailer::JailerError),
    /// The VMMs' template mount namespace could not be made.
    #[error("cannot prepare the VMMs' mount namespace")]
    Mounts(#[source] launch::LaunchError),
    /// The admission thread or its wake-up eventfd could not be set up.
    #[error("cannot start the admission thread")]
    Admission(#[source] std::io::Error),
    /// The driver failed as a whole.
    #[error("the restore driver failed")]
    Driver(#[source] ring::DriverError),
}

/// Milliseconds per phase of one clone.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhasesMs {
    /// Taking a slot.
    pub slot: f64,
    /// Preparing storage.
    pub storage: f64,
    /// fork/exec of the VMM.
    pub launch: f64,
    /// Until the API socket accepted.
    pub socket: f64,
    /// Snapshot load.
    pub load: f64,
    /// MMDS put.
    pub mmds: f64,
    /// Resume.
    pub resume: f64,
    /// Readiness.
    pub ready: f64,
}

impl PhasesMs {
    /// The phase names, in order.
    pub const NAMES: [&'static str; 8] = [
        "slot", "storage", "launch", "socket", "load", "mmds", "resume", "ready",
    ];

    /// The values, in [`PhasesMs::NAMES`] order.
    pub fn values(&self) -> [f64; 8] {
        [
            self.slot,
            self.storage,
            self.launch,
            self.socket,
            self.load,
            self.mmds,
            self.resume,
            self.ready,
        ]
    }
}

/// One clone's row.
#[derive(Debug, Clone, Serialize)]
pub struct CloneReport {
    /// Clone id (AGENT_ID).
    pub id: String,
    /// Slot netns.
    pub netns: Option<String>,
    /// Clone IP.
    pub clone_ip: Option<Ipv4Addr>,
    /// VMM pid.
    pub pid: Option<i32>,
    /// The host netns, when one is in use.
    pub host_netns: Option<String>,
    /// Readiness port.
    pub ready_port: Option<u16>,
    /// Phase timings.
    pub phases_ms: PhasesMs,
    /// Total from admission to ready.
    pub total_ms: f64,
    /// CPU time wasp's admission thread spent on this clone (slot, storage,
    /// launch, record), in ms. The driver's share is in the summary.
    pub wasp_cpu_ms: f64,
    /// Success.
    pub ok: bool,
    /// The failure: phase and cause.
    pub error: Option<String>,
    /// The phase it failed in.
    pub failed_phase: Option<String>,
}

/// The batch summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Wall time of the batch.
    pub wall_ms: f64,
    /// Clones ready.
    pub ready: usize,
    /// Clones failed.
    pub failed: usize,
    /// Median total.
    pub p50: f64,
    /// 99th percentile total.
    pub p99: f64,
    /// Restore driver used.
    pub driver: DriverKind,
    /// Why io_uring was not used, if it was not.
    pub driver_fallback_reason: Option<String>,
    /// Clone disk strategy.
    pub storage_strategy: Strategy,
    /// Guest memory bytes copied (always 0).
    pub mem_bytes_copied: u64,
    /// Disk bytes copied in total.
    pub disk_bytes_copied: u64,
    /// CPU time of the restore driver's thread over the batch (ms).
    pub driver_cpu_ms: f64,
    /// CPU time of the admission thread over the batch (ms).
    pub admission_cpu_ms: f64,
}

/// The whole report (`--json`: `{"clones": [...], "summary": {...}}`).
#[derive(Debug, Clone, Serialize)]
pub struct SpawnReport {
    /// One row per clone, by index.
    pub clones: Vec<CloneReport>,
    /// Summary.
    pub summary: Summary,
}

/// A short random batch tag, so clone ids never collide across runs.
pub fn batch_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:06x}", h.finish() & 0xff_ffff)
}

struct Pending {
    slot: SlotLease,
    child: launch::Process,
    /// A pidfd on the VMM (in jailer mode not `child`, which is the
    /// jailer), for a reclaim without the driver's job.
    vmm: Option<std::os::fd::OwnedFd>,
    cgroup: Option<PathBuf>,
    jail_dir: Option<PathBuf>,
    files_dir: PathBuf,
    admitted: Instant,
    phases: PhasesMs,
    /// Admission thread CPU spent on this clone so far.
    cpu: Duration,
}

/// What every admission worker reads.
struct Ctx<'a> {
    opts: &'a SpawnOptions,
    store: &'a CloneStore,
    env: &'a Env,
    state: state::Store,
    tag: String,
    snapshot_tap: Option<(String, String)>,
    /// The guest MAC of the snapshot's first interface.
    guest_mac: Option<[u8; 6]>,
    host_netns: Option<String>,
    /// What every launch gets: the batch's isolation, with its template
    /// mount namespace.
    isolation: Isolation,
}

/// What admission and outcomes change, under one lock (held only for
/// bookkeeping, never across storage, launch or a record write).
struct Book<'a> {
    slots: &'a mut dyn Slots,
    next: usize,
    in_flight: usize,
    driver_gone: bool,
    pending: HashMap<usize, Pending>,
    rows: Vec<Option<CloneReport>>,
    disk_bytes: u64,
    /// Told each clone's row as it finishes (progress displays).
    on_done: &'a mut (dyn FnMut(&CloneReport) + Send),
}

impl Book<'_> {
    /// Records clone `i`'s row and tells the observer.
    fn set_row(&mut self, i: usize, row: CloneReport) {
        (self.on_done)(&row);
        self.rows[i] = Some(row);
    }
}

/// Admission workers run at once: the launch waits for the VMM's exec,
/// which another worker's clone can overlap.
const ADMISSION_WORKERS: usize = 2;

struct Batch<'a> {
    ctx: Ctx<'a>,
    book: Mutex<Book<'a>>,
    /// Signalled when `in_flight` drops (room for another clone).
    room: Condvar,
}

impl<'a> Batch<'a> {
    fn clone_id(&self, i: usize) -> String {
        format!("{}-{i}", self.ctx.tag)
    }

    fn lock(&self) -> MutexGuard<'_, Book<'a>> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[allow(clippy::too_many_arguments)]
    fn fail_row(
        &self,
        book: &mut Book,
        i: usize,
        id: String,
        slot: Option<&SlotLease>,
        phases: PhasesMs,
        admitted: Instant,
        (phase, err): (&str, String),
    ) {
        // Every error names its phase first (restore errors already do).
        let err = if err.starts_with(phase) && err[phase.len()..].starts_with(": ") {
            err
        } else {
            format!("{phase}: {err}")
        };
        tracing::warn!(clone = %id, phase, "clone failed: {err}");
        book.set_row(
            i,
            CloneReport {
                id,
                netns: slot.map(|s| s.netns.clone()),
                clone_ip: slot.map(|s| s.clone_ip),
                pid: None,
                host_netns: self.ctx.host_netns.clone(),
                ready_port: ready_port(self.ctx.opts.ready),
                phases_ms: phases,
                total_ms: ms(admitted.elapsed()),
                wasp_cpu_ms: 0.0,
                ok: false,
                error: Some(err),
                failed_phase: Some(phase.into()),
            },
        );
    }

    /// Admits clone `i`: slot, storage, launch. `None` means it failed and
    /// was reclaimed (its row is written).
    fn admit(&self, i: usize) -> Option<Job> {
        let id = self.clone_id(i);
        let admitted = Instant::now();
        let cpu_start = sys::thread_cpu_time();
        let mut phases = PhasesMs::default();
        let store = self.ctx.store;

        let taken = self.lock().slots.take();
        let slot = match taken {
            Ok(s) => s,
            Err(e) => {
                let mut b = self.lock();
                self.fail_row(&mut b, i, id, None, phases, admitted, ("slot", chain(&*e)));
                return None;
            }
        };
        phases.slot = ms(admitted.elapsed());

        let t = Instant::now();
        let files = match store.prepare(&id) {
            Ok(f) => f,
            Err(e) => {
                let mut b = self.lock();
                let _ = b.slots.give_back(slot.clone());
                let why = ("storage", chain(&e));
                self.fail_row(&mut b, i, id, Some(&slot), phases, admitted, why);
                return None;
            }
        };
        phases.storage = ms(t.elapsed());

        let reclaim_files = |id: &str| {
            if let Err(e) = store.cleanup(id) {
                tracing::warn!(clone = %id, "cleanup failed: {}", chain(&e));
            }
        };
        let tap = {
            let mut b = self.lock();
            b.disk_bytes += files.bytes_copied;
            b.slots.check_tap(&slot)
        };
        if let Err(e) = tap {
            reclaim_files(&id);
            let mut b = self.lock();
            let _ = b.slots.give_back(slot.clone());
            let why = ("slot", format!("the slot's tap is missing: {}", chain(&*e)));
            self.fail_row(&mut b, i, id, Some(&slot), phases, admitted, why);
            return None;
        }

        let t = Instant::now();
        let opts = self.ctx.opts;
        let spec = LaunchSpec {
            vmm: opts.vmm.clone(),
            id: id.clone(),
            api_sock: files.dir.join("api.sock"),
            netns: Some(slot.netns.clone()),
            drives: files
                .drives
                .iter()
                .map(|d| (d.file.clone(), d.drive_id.clone()))
                .collect(),
            log_dir: files.dir.clone(),
            extra_args: opts.vmm_args.clone(),
            stdin_pipe: false,
            isolation: self.ctx.isolation.clone(),
            snapshot_files: vec![files.vmstate.clone(), files.memory.clone()],
        };
        let launched = match launch::launch(&spec) {
            Ok(l) => l,
            Err(e) => {
                reclaim_files(&id);
                let mut b = self.lock();
                let _ = b.slots.give_back(slot.clone());
                let why = ("launch", chain(&e));
                self.fail_row(&mut b, i, id, Some(&slot), phases, admitted, why);
                return None;
            }
        };
        phases.launch = ms(t.elapsed());
        crate::testhook::point("clone-launched");

        let net_override = self.ctx.snapshot_tap.as_ref().and_then(|(iface, tap)| {
            (*tap != slot.tap).then(|| NetworkOverride {
                iface_id: iface.clone(),
                host_dev_name: slot.tap.clone(),
            })
        });
        let vmm = launched.pidfd.try_clone().ok();
        let job = Job {
            index: i,
            id: id.clone(),
            api_sock: launched.api_sock,
            pid: launched.pid,
            pidfd: launched.pidfd,
            launched_at: launched.spawned_at,
            net_override,
            clone_ip: slot.clone_ip,
            mmds_body: self.ctx.env.mmds_body(&id),
            link_sync: link_sync(&slot, self.ctx.guest_mac),
        };
        let pending = Pending {
            slot,
            child: launched.child,
            vmm,
            cgroup: launched.cgroup,
            jail_dir: launched.jail_dir,
            files_dir: files.dir,
            admitted,
            phases,
            cpu: sys::thread_cpu_time().saturating_sub(cpu_start),
        };
        self.lock().pending.insert(i, pending);
        Some(job)
    }

    /// Reclaims a clone the driver never finished (it failed as a whole):
    /// kill and reap its VMM, remove its files, give its slot back.
    fn abandon(&self, book: &mut Book, i: usize, why: &str) {
        let Some(mut p) = book.pending.remove(&i) else {
            return;
        };
        let id = self.clone_id(i);
        if let Some(fd) = &p.vmm {
            let _ = sys::pidfd::pidfd_send_signal(fd, libc::SIGKILL);
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
        if let Err(e) = self.ctx.store.cleanup(&id) {
            tracing::warn!(clone = %id, "cleanup failed: {}", chain(&e));
        }
        for e in launch::remove_isolation(p.cgroup.as_deref(), p.jail_dir.as_deref()) {
            tracing::warn!(clone = %id, "cleanup failed: {}", chain(&e));
        }
        let slot = p.slot.clone();
        if let Err(e) = book.slots.give_back(p.slot) {
            tracing::warn!(clone = %id, "slot give-back failed: {}", chain(&*e));
        }
        let why = ("driver", why.to_owned());
        self.fail_row(book, i, id, Some(&slot), p.phases, p.admitted, why);
    }

    /// One admission worker: claims the next clone while fewer than
    /// `parallel` are in flight, admits it, hands the job to the driver and
    /// wakes it. Returns when every clone is claimed or the driver is gone.
    fn admission_worker(&self, parallel: usize, jobs: mpsc::Sender<Job>, wake: &EventFd) {
        self.admit_all(parallel, &jobs, wake);
        // This worker's sender closes: once every worker's has, the driver
        // sees the end of the jobs, but only if it is woken to look.
        drop(jobs);
        let _ = wake.signal();
    }

    fn admit_all(&self, parallel: usize, jobs: &mpsc::Sender<Job>, wake: &EventFd) {
        loop {
            let i = {
                let mut b = self.lock();
                loop {
                    if b.driver_gone || b.next >= self.ctx.opts.count {
                        return;
                    }
                    if b.in_flight < parallel {
                        break;
                    }
                    b = self.room.wait(b).unwrap_or_else(|p| p.into_inner());
                }
                b.next += 1;
                b.in_flight += 1;
                b.next - 1
            };
            let sent = match self.admit(i) {
                Some(job) => jobs.send(job).is_ok(),
                None => {
                    // Failed and reclaimed: its room is free again.
                    self.lock().in_flight -= 1;
                    self.room.notify_all();
                    continue;
                }
            };
            if sent {
                if let Err(e) = wake.signal() {
                    tracing::warn!("cannot wake the restore driver: {e}");
                }
            } else {
                let mut b = self.lock();
                b.driver_gone = true;
                self.abandon(&mut b, i, "the restore driver stopped");
                b.in_flight -= 1;
                self.room.notify_all();
            }
        }
    }

    /// Handles the driver's outcomes until it is gone; then reclaims any
    /// clone that never got one (the driver failed as a whole).
    fn outcomes(&self, outcomes: mpsc::Receiver<Outcome>) {
        for o in outcomes {
            self.done(o);
            self.lock().in_flight -= 1;
            self.room.notify_all();
        }
        let mut b = self.lock();
        b.driver_gone = true;
        let left: Vec<usize> = b.pending.keys().copied().collect();
        for i in left {
            self.abandon(
                &mut b,
                i,
                "the restore driver stopped before this clone finished",
            );
        }
        self.room.notify_all();
    }
}

/// The driver's side of the admission thread: jobs from a channel, woken
/// by an eventfd; outcomes back through a channel.
struct ChannelFeed<'a> {
    jobs: mpsc::Receiver<Job>,
    outcomes: mpsc::Sender<Outcome>,
    wake: &'a EventFd,
}

impl Feed for ChannelFeed<'_> {
    fn next_job(&mut self) -> Option<Job> {
        self.jobs.recv().ok()
    }

    fn poll_job(&mut self) -> Next {
        match self.jobs.try_recv() {
            Ok(job) => Next::Job(job),
            Err(mpsc::TryRecvError::Empty) => Next::Later,
            Err(mpsc::TryRecvError::Disconnected) => Next::End,
        }
    }

    fn wake(&self) -> Option<&EventFd> {
        Some(self.wake)
    }

    fn done(&mut self, outcome: Outcome) {
        // The admission thread outlives the driver; a failed send means it
        // is gone and the outcome (with the job's pidfd) is dropped.
        let _ = self.outcomes.send(outcome);
    }
}

fn ready_port(r: Ready) -> Option<u16> {
    match r {
        Ready::Tcp(p) => Some(p),
        _ => None,
    }
}

/// `a: caused by b: …`
pub fn chain(e: &dyn std::error::Error) -> String {
    crate::error::chain(e)
}

impl Batch<'_> {
    /// A clone's driver outcome: record it, or reclaim it.
    fn done(&self, o: Outcome) {
        let cpu_start = sys::thread_cpu_time();
        let i = o.job.index;
        let Some(mut p) = self.lock().pending.remove(&i) else {
            return;
        };
        let (opts, host_netns) = (self.ctx.opts, &self.ctx.host_netns);
        let mut phases = p.phases;
        phases.socket = ms(o.times.socket);
        phases.load = ms(o.times.load);
        phases.mmds = ms(o.times.mmds);
        phases.resume = ms(o.times.resume);
        phases.ready = ms(o.times.ready);
        let id = o.job.id.clone();
        match o.result {
            Ok(()) => {
                let record = state::CloneRecord {
                    id: id.clone(),
                    pid: o.job.pid,
                    pid_start: state::pid_start_time(o.job.pid).unwrap_or(0),
                    vmm: match opts.vmm {
                        Vmm::Firecracker(_) => "firecracker".into(),
                        Vmm::Standin(_) => "standin".into(),
                    },
                    netns: p.slot.netns.clone(),
                    slot: p.slot.index,
                    pool: p.slot.pool.clone(),
                    host_netns: host_netns.clone(),
                    clone_ip: p.slot.clone_ip,
                    ready_port: ready_port(opts.ready),
                    api_sock: o.job.api_sock.clone(),
                    clone_dir: p.files_dir.clone(),
                    snapshot: self.ctx.store.snapshot_dir().to_owned(),
                    created_at: crate::snapshot::manifest::rfc3339_utc(std::time::SystemTime::now()),
                    cgroup: p.cgroup.clone(),
                    jail_dir: p.jail_dir.clone(),
                };
                if let Err(e) = self.ctx.state.put(&record) {
                    tracing::warn!(clone = %id, "cannot record clone: {}", chain(&e));
                }
                crate::testhook::point("clone-recorded");
                let cpu = p.cpu + sys::thread_cpu_time().saturating_sub(cpu_start);
                self.lock().set_row(
                    i,
                    CloneReport {
                        id,
                        netns: Some(p.slot.netns.clone()),
                        clone_ip: Some(p.slot.clone_ip),
                        pid: Some(o.job.pid),
                        host_netns: host_netns.clone(),
                        ready_port: ready_port(opts.ready),
                        phases_ms: phases,
                        total_ms: ms(o.finished_at.saturating_duration_since(p.admitted)),
                        wasp_cpu_ms: ms(cpu),
                        ok: true,
                        error: None,
                        failed_phase: None,
                    },
                );
            }
            Err(e) => {
                // Reclaim: kill exactly this VMM, reap it, remove its files,
                // give its slot back.
                let _ = sys::pidfd::pidfd_send_signal(&o.job.pidfd, libc::SIGKILL);
                let _ = p.child.wait();
                if let Err(ce) = self.ctx.store.cleanup(&id) {
                    tracing::warn!(clone = %id, "cleanup failed: {}", chain(&ce));
                }
                for ie in launch::remove_isolation(p.cgroup.as_deref(), p.jail_dir.as_deref()) {
                    tracing::warn!(clone = %id, "cleanup failed: {}", chain(&ie));
                }
                let phase = e.phase().to_string();
                let slot = p.slot.clone();
                let mut b = self.lock();
                if let Err(se) = b.slots.give_back(p.slot) {
                    tracing::warn!(clone = %id, "slot give-back failed: {}", chain(&*se));
                }
                let why = (phase.as_str(), chain(&e));
                self.fail_row(&mut b, i, id, Some(&slot), phases, p.admitted, why);
            }
        }
    }
}

/// The CPU time `f` takes on this thread.
fn cpu_of(f: impl FnOnce()) -> Duration {
    let cpu = sys::thread_cpu_time();
    f();
    sys::thread_cpu_time().saturating_sub(cpu)
}

/// Runs a batch. The driver runs on a thread inside the host netns (for
/// `tcp:` readiness from where a user of the clone connects).
pub fn spawn(
    opts: &SpawnOptions,
    store: &CloneStore,
    slots: &mut dyn Slots,
    env: &Env,
) -> Result<SpawnReport, SpawnError> {
    spawn_observed(opts, store, slots, env, &mut |_| {})
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
    let m = store.manifest();
    let made_by = m.vmm.to_string();
    let asked = match opts.vmm {
        Vmm::Firecracker(_) => "firecracker",
        Vmm::Standin(_) => "standin",
    };
    if made_by != asked {
        return Err(SpawnError::VmmMismatch {
            made_by,
            asked: asked.into(),
        });
    }
    let state = state::Store::open(&opts.state_dir).map_err(SpawnError::State)?;
    let _ = sys::rlimit::raise_nofile((opts.parallel as u64) * 8 + 1024);
    let (kind, reason) = match opts.driver {
        Some(k) => (k, None),
        None => ring::choose(),
    };
    let (vmstate, mem) = (
        store.snapshot_dir().join(&m.vmstate.file),
        store.snapshot_dir().join(&m.memory.file),
    );
    if let Some(j) = &opts.isolation.jailer {
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
    let plan = Arc::new(Plan {
        snapshot_path: opts.isolation.visible_path(&vmstate),
        mem_path: opts.isolation.visible_path(&mem),
        backend: BackendType::File,
        ready: opts.ready,
        timeouts: opts.timeouts,
        ready_retry: opts.ready_retry,
    });
    // The batch's wall time starts here: it includes making the template.
    let start = Instant::now();
    // One template mount namespace per batch, released when it ends: each
    // VMM's copy then holds a few dozen mounts, not one per slot netns (in
    // jailer mode, the jailer's copy, with its slot's netns bound back).
    let mut isolation = opts.isolation.clone();
    if isolation.mount_template.is_none() && (isolation.jailer.is_some() || !m.drives.is_empty()) {
        let t = launch::MountTemplate::new().map_err(SpawnError::Mounts)?;
        isolation.mount_template = Some(Arc::new(t));
    }
    let host_netns = slots.host_netns();
    let batch = Batch {
        ctx: Ctx {
            opts,
            store,
            env,
            state,
            tag: batch_tag(),
            snapshot_tap: m
                .network_interfaces
                .first()
                .map(|n| (n.iface_id.clone(), n.host_dev_name.clone())),
            guest_mac: m
                .network_interfaces
                .first()
                .and_then(|n| crate::snapshot::manifest::parse_mac(&n.guest_mac)),
            host_netns: host_netns.clone(),
            isolation,
        },
        book: Mutex::new(Book {
            slots,
            next: 0,
            in_flight: 0,
            driver_gone: false,
            pending: HashMap::new(),
            rows: vec![None; opts.count],
            disk_bytes: 0,
            on_done,
        }),
        room: Condvar::new(),
    };
    let host_fd = match &host_netns {
        Some(ns) => {
            Some(sys::netns::open_named(ns).map_err(|e| SpawnError::HostNetns(ns.clone(), e))?)
        }
        None => None,
    };
    let wake = EventFd::new().map_err(SpawnError::Admission)?;
    let parallel = opts.parallel.max(1);
    let (job_tx, job_rx) = mpsc::channel();
    let (out_tx, out_rx) = mpsc::channel();
    let mut feed = ChannelFeed {
        jobs: job_rx,
        outcomes: out_tx,
        wake: &wake,
    };
    // The driver runs on its own thread inside the host netns (for `tcp:`
    // readiness from where a user of the clone connects); the admission
    // workers and the outcome thread run beside it.
    let drive = |feed: &mut ChannelFeed| {
        let cpu = sys::thread_cpu_time();
        let r = ring::run(kind, plan.clone(), parallel, feed);
        (r, sys::thread_cpu_time().saturating_sub(cpu))
    };
    let (result, driver_cpu, admission_cpu) = std::thread::scope(|s| {
        let (batch, wake) = (&batch, &wake);
        let mut helpers = Vec::new();
        let outcomes = std::thread::Builder::new()
            .name("wasp-outcomes".into())
            .spawn_scoped(s, move || cpu_of(|| batch.outcomes(out_rx)));
        helpers.push(outcomes);
        for w in 0..ADMISSION_WORKERS.min(parallel) {
            let jobs = job_tx.clone();
            let worker = std::thread::Builder::new()
                .name(format!("wasp-admit-{w}"))
                .spawn_scoped(s, move || {
                    cpu_of(|| batch.admission_worker(parallel, jobs, wake))
                });
            helpers.push(worker);
        }
        // The workers hold the only senders: when they are done, the driver
        // sees the end of the jobs.
        drop(job_tx);
        let failed_start = helpers
            .iter()
            .find_map(|h| h.as_ref().err().map(|e| e.kind()));
        let driven = match (failed_start, host_fd) {
            // A helper that could not start: end the batch at once.
            (Some(k), _) => Err(std::io::Error::from(k)),
            (None, Some(fd)) => sys::netns::run_in(fd, || drive(&mut feed)),
            (None, None) => Ok(drive(&mut feed)),
        };
        // Closing the driver's ends lets the outcome thread finish (and
        // reclaim whatever is still in flight if the driver failed).
        drop(feed);
        let mut admission_cpu = Duration::ZERO;
        for h in helpers.into_iter().flatten() {
            admission_cpu += h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        }
        if let Some(k) = failed_start {
            return Err(SpawnError::Admission(std::io::Error::from(k)));
        }
        let (r, driver_cpu) =
            driven.map_err(|e| SpawnError::HostNetns(host_netns.clone().unwrap_or_default(), e))?;
        Ok::<_, SpawnError>((r, driver_cpu, admission_cpu))
    })?;
    result.map_err(SpawnError::Driver)?;
    let wall = start.elapsed();
    let book = batch.book.into_inner().unwrap_or_else(|p| p.into_inner());
    let clones: Vec<CloneReport> = book.rows.into_iter().flatten().collect();
    let totals: Vec<f64> = clones.iter().filter(|c| c.ok).map(|c| c.total_ms).collect();
    let p = Percentiles::of(&totals);
    let ready = clones.iter().filter(|c| c.ok).count();
    Ok(SpawnReport {
        summary: Summary {
            wall_ms: ms(wall),
            ready,
            failed: clones.len() - ready,
            p50: p.p50,
            p99: p.p99,
            driver: kind,
            driver_fallback_reason: reason,
            storage_strategy: store.strategy(),
            mem_bytes_copied: 0,
            disk_bytes_copied: book.disk_bytes,
            driver_cpu_ms: ms(driver_cpu),
            admission_cpu_ms: ms(admission_cpu),
        },
        clones,
    })
}

/// The real slot pool behind the spawn seam. Slots that live clones hold
/// (from earlier commands: found in the state dir, or by their attached
/// tap) are set aside when the pool's reconcile adopted them, and slots
/// another process holds are leased there ([`crate::lease`]): never handed
/// out twice.
pub struct PoolSlots {
    pool: crate::pool::Pool<crate::slot::Kernel>,
    tap: String,
    pool_name: String,
    host_netns: Option<String>,
    in_use: std::collections::HashSet<u32>,
    aside: Vec<crate::slot::Slot>,
}

impl std::fmt::Debug for PoolSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSlots")
            .field("pool", &self.pool_name)
            .finish_non_exhaustive()
    }
}

/// Errors setting the pool up for a batch.
#[derive(Debug, Error)]
pub enum PoolSlotsError {
    /// Host side or slot setup.
    #[error("cannot set up the slot pool")]
    Slot(#[from] crate::slot::SlotError),
    /// Reconcile or warm.
    #[error("cannot prepare the slot pool")]
    Pool(#[from] crate::pool::PoolError),
}

impl PoolSlots {
    /// Sets up the host side, reconciles the pool's existing slots, and
    /// warms it to `count` free slots. `in_use` lists slot indexes live
    /// clones hold.
    pub fn open(
        net: crate::slot::SlotNet,
        host: &crate::slot::HostNet,
        count: usize,
        in_use: std::collections::HashSet<u32>,
    ) -> Result<Self, PoolSlotsError> {
        let tap = net.tap.clone();
        let pool_name = net.pool.clone();
        let kernel = crate::slot::Kernel::setup(net, host)?;
        let pool = crate::pool::Pool::new(kernel, crate::pool::PoolConfig::default());
        pool.reconcile()?;
        let mut me = Self {
            pool,
            tap,
            pool_name,
            host_netns: host.netns.clone(),
            in_use,
            aside: Vec::new(),
        };
        // Set aside adopted slots that live clones hold.
        let free = me.pool.status().free;
        let mut keep = Vec::new();
        for _ in 0..free {
            match me.pool.take() {
                Some(s) if me.in_use.contains(&s.index) => me.aside.push(s),
                Some(s) => keep.push(s),
                None => break,
            }
        }
        for s in keep {
            match me.pool.give_back(s) {
                Ok(()) => {}
                // A live clone of a command that has exited (of another
                // state dir too) holds its tap: never hand the slot out.
                Err(crate::pool::PoolError::GiveBack {
                    slot: Some(busy), ..
                }) => me.aside.push(*busy),
                Err(e) => return Err(e.into()),
            }
        }
        let need = count.saturating_sub(me.pool.status().free);
        me.pool.warm(need)?;
        Ok(me)
    }

    /// The pool.
    pub fn pool(&self) -> &crate::pool::Pool<crate::slot::Kernel> {
        &self.pool
    }
}

impl Slots for PoolSlots {
    fn take(&mut self) -> Result<SlotLease, SlotError> {
        let s = match self.pool.take() {
            Some(s) => s,
            None => {
                self.pool.warm(1)?;
                self.pool
                    .take()
                    .ok_or("the slot pool is empty after warming")?
            }
        };
        Ok(SlotLease {
            pool: self.pool_name.clone(),
            index: s.index,
            netns: s.netns,
            clone_ip: s.clone_ip,
            tap: self.tap.clone(),
            guest_ip: Some(self.pool.ops().net().guest_ip),
        })
    }

    fn give_back(&mut self, slot: SlotLease) -> Result<(), SlotError> {
        let s = self.pool.ops().describe(slot.index)?;
        self.pool.give_back(s)?;
        Ok(())
    }

    fn check_tap(&mut self, slot: &SlotLease) -> Result<(), SlotError> {
        // On the calling (admission) thread and back: no thread per clone.
        let fd = sys::netns::open_named(&slot.netns)?;
        sys::netns::visit(fd, || sys::tap::ifindex(&slot.tap))?
            .map(drop)
            .map_err(|e| format!("tap {} in {}: {e}", slot.tap, slot.netns).into())
    }

    fn host_netns(&self) -> Option<String> {
        self.host_netns.clone()
    }
}

/// The tap link sync for a clone in `slot` (see [`LinkSync`]): a route
/// socket opened inside the slot netns, and the request: the tap's link
/// request, then the slot's neighbour entry for the guest (when its address
/// and MAC are known), externally learned and probing: packets to the guest
/// need no ARP, the entry does not count against the host-wide table
/// limit, and the probe it sends at once (an ARP request from the gateway,
/// queued on the tap until the guest runs) makes a restored guest relearn
/// its gateway's address, which differs from the golden VM's slot. `None`,
/// logged, when the socket cannot be made; the restore works without it,
/// only its network may start late.
fn link_sync(slot: &SlotLease, guest_mac: Option<[u8; 6]>) -> Option<LinkSync> {
    use crate::netlink::{rtnl, MsgBuf};
    use std::os::fd::AsFd;
    let made = sys::netns::open_named(&slot.netns).and_then(|ns| {
        sys::netns::visit(&ns, || {
            let sock = sys::sock::route_socket()?;
            let tap = sys::tap::ifindex_via(sock.as_fd(), &slot.tap)?;
            Ok::<_, std::io::Error>((sock, tap))
        })?
    });
    match made {
        Ok((sock, tap)) => {
            let mut b = MsgBuf::new();
            rtnl::get_link(&mut b, 1, rtnl::Link::Index(tap));
            // After the tap's queue runs (the request above): the probe the
            // entry sends must reach the guest.
            if let (Some(ip), Some(mac)) = (slot.guest_ip, guest_mac) {
                rtnl::set_neigh_probe(&mut b, 2, tap, ip, mac);
            }
            Some(LinkSync {
                sock,
                request: b.as_bytes().to_vec(),
            })
        }
        Err(e) => {
            tracing::debug!(netns = %slot.netns, error = %e, "no route socket for the tap link sync");
            None
        }
    }
}

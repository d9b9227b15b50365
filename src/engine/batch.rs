//! `wasp spawn`: the whole pipeline for a batch of clones.
//!
//! ```text
//! slot pool -> clone storage -> VMM launch -> restore -> inject -> resume -> ready
//! ```
//!
//! The pipeline itself is [`crate::engine`]: a long-lived object that
//! accepts requests continuously. This module holds what a batch is made
//! of and reports (the [`Slots`] seam and the real [`PoolSlots`], the
//! per-clone [`CloneReport`] and the [`SpawnReport`]), and [`spawn`], one
//! batch on an engine of its own over borrowed slots.
//!
//! Per clone, admission (on the engine's admission workers) takes the
//! slot, prepares storage and launches the VMM; the restore driver
//! ([`crate::pipeline::ring`]) runs restore, inject, resume and ready as state
//! machines, `parallel` clones at a time, and does nothing else, so no
//! clone's I/O waits behind another clone's fork or disk copy. A clone that
//! fails at any stage is reclaimed at once (VMM killed through its pidfd,
//! files removed, slot given back) and the rest of the batch goes on.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use crate::pipeline::launch::{self, Isolation, Vmm};
use crate::pipeline::ready::Ready;
use crate::pipeline::restore::{LinkSync, Timeouts};
use crate::pipeline::ring::{self, DriverKind};
use crate::pipeline::slot::SlotOps;
use crate::pipeline::storage::probe::Strategy;
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
    /// The pool's counters, when the provider is a pool.
    fn status(&self) -> Option<crate::pipeline::pool::PoolStatus> {
        None
    }
    /// Hands out slot `index`, which a live clone recorded in the state
    /// dir holds (the pool set it aside when it was opened), for an engine
    /// that adopts that clone; it comes back through [`Slots::give_back`]
    /// like any taken slot. An error when the provider does not hold that
    /// slot aside (another process leases it, or it was broken).
    fn adopt(&mut self, index: u32) -> Result<SlotLease, SlotError> {
        Err(format!("this slot provider holds no slot {index} for an adopted clone").into())
    }
    /// Re-marks the pool at run time (see [`crate::engine::PoolMarks`]):
    /// the background refill reads the new marks, a larger size is built
    /// in the background, surplus free slots are destroyed at once.
    fn set_marks(
        &mut self,
        marks: crate::engine::PoolMarks,
    ) -> Result<crate::pipeline::pool::PoolStatus, SlotError> {
        let _ = marks;
        Err("this slot provider has no pool to re-mark".into())
    }
    /// The most slots the provider can ever hold at once (the pool's CIDR
    /// and index limit).
    fn max_slots(&self) -> usize {
        usize::MAX
    }
    /// True once the pool has reached its warm target (always, for a
    /// provider without one).
    fn is_warm(&self) -> bool {
        true
    }
    /// True when another process leased slot `index` when the pool was
    /// opened (its clones are that process's, not to be adopted).
    fn held_elsewhere(&self, index: u32) -> bool {
        let _ = index;
        false
    }
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
    Jailer(#[source] crate::vmm::jailer::JailerError),
    /// The VMMs' template mount namespace could not be made.
    #[error("cannot prepare the VMMs' mount namespace")]
    Mounts(#[source] launch::LaunchError),
    /// The admission thread or its wake-up eventfd could not be set up.
    #[error("cannot start the admission thread")]
    Admission(#[source] std::io::Error),
    /// The driver failed as a whole.
    #[error("the restore driver failed")]
    Driver(#[source] ring::DriverError),
    /// The snapshot could not be opened.
    #[error("cannot open the snapshot")]
    Storage(#[source] crate::pipeline::storage::clone::StorageError),
    /// The engine is shutting down (or its restore driver stopped): it
    /// takes no more requests.
    #[error("the engine is shutting down and takes no more requests; open a new one")]
    Stopped,
    /// More clones asked for than the host can take now (free and
    /// buildable slots, memory, fds): refused before anything was taken.
    #[error("{asked} clone(s) asked for, but this host can take {possible} more now (slots, memory and fds; see the engine's capacity); retry after {} s or ask for fewer", retry_after.as_secs().max(1))]
    Overloaded {
        /// Clones asked for.
        asked: usize,
        /// Clones the host can take now ([`crate::engine::Capacity::clones_possible`]).
        possible: usize,
        /// When a retry may succeed (clones expire or exit, the pool refills).
        retry_after: Duration,
    },
}

/// Milliseconds per phase of one clone.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    /// Bytes its disks copied: 0 when reflinked (a failed clone's copy
    /// is removed with it and reported as 0; the summary's
    /// `disk_bytes_copied` counts every copy).
    pub bytes_copied: u64,
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
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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

/// The real slot pool behind the spawn seam. Slots that live clones hold
/// (from earlier commands: found in the state dir, or by their attached
/// tap) are set aside when the pool's reconcile adopted them, and slots
/// another process holds are leased there ([`crate::pipeline::lease`]): never handed
/// out twice.
pub struct PoolSlots {
    pool: crate::pipeline::pool::Pool<crate::pipeline::slot::Kernel>,
    tap: String,
    pool_name: String,
    host_netns: Option<String>,
    in_use: std::collections::HashSet<u32>,
    aside: Vec<crate::pipeline::slot::Slot>,
    /// Slots another process leased when the pool was opened.
    busy: std::collections::HashSet<u32>,
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
    Slot(#[from] crate::pipeline::slot::SlotError),
    /// Reconcile or warm.
    #[error("cannot prepare the slot pool")]
    Pool(#[from] crate::pipeline::pool::PoolError),
    /// A host limit is too low for the pool (nothing was built).
    #[error("the host cannot hold the pool")]
    Limits(#[from] crate::pipeline::limits::LimitsError),
}

impl PoolSlots {
    /// Sets up the host side, reconciles the pool's existing slots, and
    /// warms it to `count` free slots. `in_use` lists slot indexes live
    /// clones hold.
    pub fn open(
        net: crate::pipeline::slot::SlotNet,
        host: &crate::pipeline::slot::HostNet,
        count: usize,
        in_use: std::collections::HashSet<u32>,
    ) -> Result<Self, PoolSlotsError> {
        Self::open_with(
            net,
            host,
            count,
            in_use,
            crate::pipeline::pool::PoolConfig::default(),
        )
    }

    /// [`PoolSlots::open`] with the pool's sizing: its low-water mark
    /// starts the background refill, once the slots of live clones are set
    /// aside and the pool is warm.
    pub fn open_with(
        net: crate::pipeline::slot::SlotNet,
        host: &crate::pipeline::slot::HostNet,
        count: usize,
        in_use: std::collections::HashSet<u32>,
        cfg: crate::pipeline::pool::PoolConfig,
    ) -> Result<Self, PoolSlotsError> {
        let tap = net.tap.clone();
        let pool_name = net.pool.clone();
        // Every host limit, before anything is built.
        let demand =
            crate::pipeline::limits::Demand::clones((count + in_use.len()) as u64, &net.cidr);
        crate::pipeline::limits::check_pool(&net, host, demand)?;
        let kernel = crate::pipeline::slot::Kernel::setup(net, host)?;
        // The refill starts only once the live clones' slots are set
        // aside: running meanwhile, it would race the reconcile for the
        // slots' leases and mix its new slots into the ones sorted below.
        let pool = crate::pipeline::pool::Pool::without_refill(kernel, cfg);
        let busy = pool.reconcile()?.busy.into_iter().collect();
        let mut me = Self {
            pool,
            tap,
            pool_name,
            host_netns: host.netns.clone(),
            in_use,
            aside: Vec::new(),
            busy,
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
                Err(crate::pipeline::pool::PoolError::GiveBack {
                    slot: Some(busy), ..
                }) => me.aside.push(*busy),
                Err(e) => return Err(e.into()),
            }
        }
        let need = count.saturating_sub(me.pool.status().free);
        me.pool.warm(need)?;
        me.pool.start_refill();
        Ok(me)
    }

    /// The pool.
    pub fn pool(&self) -> &crate::pipeline::pool::Pool<crate::pipeline::slot::Kernel> {
        &self.pool
    }

    /// Slots set aside because live clones hold them (not handed out).
    pub fn aside(&self) -> usize {
        self.aside.len()
    }

    fn lease_of(&self, s: crate::pipeline::slot::Slot) -> SlotLease {
        SlotLease {
            pool: self.pool_name.clone(),
            index: s.index,
            netns: s.netns,
            clone_ip: s.clone_ip,
            tap: self.tap.clone(),
            guest_ip: Some(self.pool.ops().net().guest_ip),
        }
    }
}

impl Slots for PoolSlots {
    fn take(&mut self) -> Result<SlotLease, SlotError> {
        // A free slot, else one built now (the refill's builds in flight
        // are waited for when the CIDR has no other index left).
        let s = self.pool.take_or_build()?;
        Ok(self.lease_of(s))
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

    fn status(&self) -> Option<crate::pipeline::pool::PoolStatus> {
        Some(self.pool.status())
    }

    fn adopt(&mut self, index: u32) -> Result<SlotLease, SlotError> {
        let at = self
            .aside
            .iter()
            .position(|s| s.index == index)
            .ok_or_else(|| {
                format!(
                    "slot {index} of pool {} is not held for a live clone by this process (another process leases it, or it was broken and removed)",
                    self.pool_name
                )
            })?;
        let s = self.aside.swap_remove(at);
        Ok(self.lease_of(s))
    }

    fn set_marks(
        &mut self,
        marks: crate::engine::PoolMarks,
    ) -> Result<crate::pipeline::pool::PoolStatus, SlotError> {
        Ok(self
            .pool
            .set_marks(marks.size, marks.low_water, marks.high_water)?)
    }

    fn max_slots(&self) -> usize {
        self.pool.ops().net().max_slots()
    }

    fn held_elsewhere(&self, index: u32) -> bool {
        self.busy.contains(&index)
    }

    fn is_warm(&self) -> bool {
        let st = self.pool.status();
        // Warm at its size, or as warm as the CIDR lets it be.
        st.free >= st.size || st.free + st.in_use + self.aside.len() >= self.max_slots()
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
pub(crate) fn link_sync(slot: &SlotLease, guest_mac: Option<[u8; 6]>) -> Option<LinkSync> {
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

//! The slot pool (pipeline stage "slot pool"): pre-warmed network slots.
//!
//! - [`Pool::take`] pops a free slot from a lock-free queue (crossbeam
//!   `SegQueue`) in O(1) and never builds on the caller's path; when the
//!   free count falls below the low-water mark it nudges the background
//!   refill thread, which rebuilds up to the warm size (at least the mark)
//!   on all workers.
//! - [`Pool::set_marks`] changes the size and marks at run time: the
//!   refill reads them on its next round, surplus free slots are
//!   destroyed at once.
//! - [`Pool::give_back`] recycles a slot whose VMM is gone (tap free,
//!   conntrack flushed) or destroys it above the high-water mark.
//! - [`Pool::reconcile`] finds what a crashed wasp left, by names and
//!   ownership marks: healthy slots are adopted, broken ones removed.
//! - Every slot the pool holds, free or taken, is leased ([`crate::pipeline::lease`]):
//!   the pool takes a slot's lease before it builds or adopts it, and skips
//!   a slot another process holds. So any number of processes share one
//!   pool's kernel objects and never hand one slot out twice. Leases are
//!   taken on build, adopt and destroy only; `take` and `give_back` never
//!   touch them.
//!
//! Kernel work goes through [`SlotOps`], so this logic is unit-tested with a
//! recording fake.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam::channel::{bounded, Receiver, Sender};
use crossbeam::queue::SegQueue;
use serde::Serialize;
use thiserror::Error;

use crate::pipeline::lease::Lease;
use crate::pipeline::slot::{Slot, SlotError, SlotOps};

/// Pool sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// The refill thread starts when fewer slots than this are free (0: no
    /// refill).
    pub low_water: usize,
    /// The warm size: the refill builds back up to this many free slots
    /// (at least `low_water`).
    pub size: usize,
    /// Slots given back above this many free ones are destroyed.
    pub high_water: usize,
    /// Threads building slots in parallel (warm and refill).
    pub workers: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            low_water: 0,
            size: 0,
            high_water: usize::MAX,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

/// Errors of pool operations.
#[derive(Debug, Error)]
pub enum PoolError {
    /// Building slots failed.
    #[error("warming the pool built {built} of {wanted} slots")]
    Warm {
        /// Slots built.
        built: usize,
        /// Slots asked for.
        wanted: usize,
        /// The first failure.
        #[source]
        source: SlotError,
    },
    /// A slot could not be recycled; it is handed back to the caller when
    /// its tap is still held.
    #[error("slot {index} could not be given back")]
    GiveBack {
        /// Slot index.
        index: u32,
        /// The slot, when it is still intact (tap busy): retry later.
        slot: Option<Box<Slot>>,
        /// Cause.
        #[source]
        source: SlotError,
    },
    /// A slot operation failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// Teardown had errors (every one is listed).
    #[error("{} slot(s) could not be removed: {}", .0.len(), .0.join("; "))]
    Teardown(Vec<String>),
}

/// What reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Healthy slots adopted as free.
    pub adopted: Vec<u32>,
    /// Broken slots removed.
    pub removed: Vec<u32>,
    /// Slots another process holds (leased): left alone.
    pub busy: Vec<u32>,
    /// Errors while removing.
    pub errors: Vec<String>,
}

/// A point-in-time view of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// Free slots ready to take.
    pub free: usize,
    /// Slots taken and not given back.
    pub in_use: usize,
    /// The warm size the refill builds up to.
    pub size: usize,
    /// Low-water mark.
    pub low_water: usize,
    /// High-water mark.
    pub high_water: usize,
    /// Refill builds that failed so far.
    pub refill_failures: usize,
}

struct Inner<O> {
    ops: O,
    cfg: PoolConfig,
    /// The live marks ([`Pool::set_marks`]): low water, size, high water.
    low: AtomicUsize,
    size: AtomicUsize,
    high: AtomicUsize,
    free: SegQueue<Slot>,
    free_len: AtomicUsize,
    in_use: AtomicUsize,
    /// Which slot indexes are free to build.
    indexes: Mutex<Indexes>,
    /// Builds in flight into the free queue (warm and refill), and the
    /// signal that one ended ([`Pool::take_or_build`] waits on it).
    building: Mutex<usize>,
    built: Condvar,
    /// The lease of every slot this pool holds, free or taken.
    leases: Mutex<HashMap<u32, Lease>>,
    refill_failures: AtomicUsize,
    last_refill_error: Mutex<Option<String>>,
    /// Times the refill reached the CIDR's end (logged once each).
    cidr_end_reached: AtomicUsize,
    stop: AtomicBool,
    /// Free count after each refill round (bounded; dropped when full).
    refilled: (Sender<usize>, Receiver<usize>),
}

/// A pool of network slots over `O`.
pub struct Pool<O: SlotOps + 'static> {
    inner: Arc<Inner<O>>,
    nudge: Sender<()>,
    /// The refill thread's end of `nudge`, until the thread is started.
    nudged: Option<Receiver<()>>,
    refill: Option<JoinHandle<()>>,
}

impl<O: SlotOps + 'static> std::fmt::Debug for Pool<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// The slot indexes the pool may build: every index below `next` not in
/// use is in `spare`, and the lowest is handed out first, so the pool
/// uses its CIDR to the last address whatever the order slots come and
/// go in.
#[derive(Debug, Default)]
struct Indexes {
    /// The lowest index never handed out.
    next: u32,
    /// Indexes below `next` free to build.
    spare: BTreeSet<u32>,
}

impl Indexes {
    /// The lowest free index.
    fn take(&mut self) -> u32 {
        self.spare.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Index `n` is free to build again.
    fn put(&mut self, n: u32) {
        if n >= self.next {
            // Taken by an index of its own (never past `next` otherwise).
            self.spare.extend(self.next..n);
            self.next = n + 1;
        }
        self.spare.insert(n);
        // Keep `next` just past the highest index in use.
        while self.next > 0 && self.spare.remove(&(self.next - 1)) {
            self.next -= 1;
        }
    }

    /// Index `n` is in use (adopted, or held by another process).
    fn claim(&mut self, n: u32) {
        if n >= self.next {
            self.spare.extend(self.next..n);
            self.next = n + 1;
        }
        self.spare.remove(&n);
    }
}

/// Counts a build into the free queue for its whole life (the count goes
/// down, and waiters wake, once its slot is queued or its index back).
struct Building<'a>(&'a Mutex<usize>, &'a Condvar);

impl<'a> Building<'a> {
    fn start(count: &'a Mutex<usize>, ended: &'a Condvar) -> Self {
        *lock(count) += 1;
        Building(count, ended)
    }
}

impl Drop for Building<'_> {
    fn drop(&mut self) {
        let mut g = lock(self.0);
        *g = g.saturating_sub(1);
        drop(g);
        self.1.notify_all();
    }
}

/// The guard of `m`, poisoned or not (every value it guards stays valid
/// whatever panicked).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<O: SlotOps> Inner<O> {
    fn alloc_index(&self) -> u32 {
        lock(&self.indexes).take()
    }

    fn free_index(&self, n: u32) {
        lock(&self.indexes).put(n);
    }

    /// Builds one slot on the first index whose lease this process gets
    /// and whose names are free; a failed index is free again.
    fn build_slot(&self) -> Result<Slot, SlotError> {
        loop {
            let n = self.alloc_index();
            let lease = match self.ops.lease(n) {
                Ok(Some(l)) => l,
                // Another process holds slot n: never ours to reuse here.
                Ok(None) => continue,
                Err(e) => {
                    self.free_index(n);
                    return Err(e);
                }
            };
            match self.ops.build(n) {
                Ok(slot) => {
                    self.hold(n, lease);
                    return Ok(slot);
                }
                // Built by a process that has let it go: a reconcile
                // adopts it. Move on.
                Err(SlotError::NameTaken { .. }) => continue,
                Err(e) => {
                    self.free_index(n);
                    return Err(e);
                }
            }
        }
    }

    fn push_free(&self, s: Slot) {
        self.free.push(s);
        self.free_len.fetch_add(1, Ordering::Release);
    }

    fn pop_free(&self) -> Option<Slot> {
        let s = self.free.pop()?;
        self.free_len.fetch_sub(1, Ordering::AcqRel);
        Some(s)
    }

    fn hold(&self, n: u32, lease: Lease) {
        if let Ok(mut g) = self.leases.lock() {
            g.insert(n, lease);
        }
    }

    /// The lease of slot `n`, which this pool stops holding.
    fn release(&self, n: u32) -> Option<Lease> {
        self.leases.lock().ok().and_then(|mut g| g.remove(&n))
    }

    /// Indices of the slots this pool holds, free or taken.
    fn held(&self) -> BTreeSet<u32> {
        self.leases
            .lock()
            .map(|g| g.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Destroys slot `n`, which this pool holds; its lease file goes with
    /// it.
    fn destroy_held(&self, n: u32) -> Result<(), SlotError> {
        let r = self.ops.destroy(n);
        let lease = self.release(n);
        if r.is_ok() {
            if let Some(l) = lease {
                if let Err(e) = l.remove() {
                    tracing::warn!(slot = n, error = %e, "cannot remove the slot's lease file");
                }
            }
        }
        r
    }

    /// Builds until `want` slots were built by all workers, or one fails.
    fn build_many(&self, want: usize) -> (usize, Option<SlotError>) {
        let todo = AtomicUsize::new(want);
        let built = AtomicUsize::new(0);
        let first_err: Mutex<Option<SlotError>> = Mutex::new(None);
        let workers = self.cfg.workers.clamp(1, want.max(1));
        // A build failed with `e`: every worker stops, and the first error
        // is kept.
        let fail = |e: SlotError| {
            todo.store(0, Ordering::Release);
            if let Ok(mut g) = first_err.lock() {
                g.get_or_insert(e);
            }
        };
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if self.stop.load(Ordering::Relaxed)
                        || todo
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1))
                            .is_err()
                    {
                        return;
                    }
                    let _counted = Building::start(&self.building, &self.built);
                    match self.build_slot() {
                        Ok(slot) => {
                            self.push_free(slot);
                            built.fetch_add(1, Ordering::Relaxed);
                            crate::testhook::point("slot-built");
                        }
                        Err(e) => return fail(e),
                    }
                });
            }
        });
        (
            built.load(Ordering::Relaxed),
            first_err.into_inner().ok().flatten(),
        )
    }

    /// Free slots the refill builds up to: the size, at least the low
    /// water mark.
    fn refill_target(&self) -> usize {
        self.size
            .load(Ordering::Acquire)
            .max(self.low.load(Ordering::Acquire))
    }

    fn refill_loop(&self, rx: Receiver<()>) {
        // Whether the last round stopped at the CIDR's end: reaching it is
        // the pool's capacity, not a failure, and is logged once each time
        // it is reached (not on every round that finds it again).
        let mut at_cidr_end = false;
        while rx.recv().is_ok() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let have = self.free_len.load(Ordering::Acquire);
            let want = self.refill_target();
            if have >= want {
                continue;
            }
            let (_, err) = self.build_many(want - have);
            let free = self.free_len.load(Ordering::Acquire);
            match err {
                None => at_cidr_end = false,
                Some(e @ SlotError::Exhausted { .. }) => {
                    if !at_cidr_end {
                        at_cidr_end = true;
                        self.cidr_end_reached.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            "slot pool refill reached the end of its CIDR with {free} free slot(s) of the {want} it keeps: {e}"
                        );
                    }
                }
                Some(e) => {
                    self.refill_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("slot pool refill failed: {}", crate::error::chain(&e));
                    if let Ok(mut g) = self.last_refill_error.lock() {
                        *g = Some(crate::error::chain(&e));
                    }
                }
            }
            // Told last, so a listener sees the round's counters.
            let _ = self.refilled.0.try_send(free);
        }
    }
}

impl<O: SlotOps + 'static> Pool<O> {
    /// A pool over `ops`; starts the refill thread when `low_water > 0`.
    pub fn new(ops: O, cfg: PoolConfig) -> Self {
        let mut p = Self::without_refill(ops, cfg);
        p.start_refill();
        p
    }

    /// A pool over `ops` whose refill thread does not run yet: the caller
    /// reconciles and sorts the free slots first (nothing is built behind
    /// its back), then calls [`Pool::start_refill`].
    pub fn without_refill(ops: O, cfg: PoolConfig) -> Self {
        let inner = Arc::new(Inner {
            ops,
            cfg,
            low: AtomicUsize::new(cfg.low_water),
            size: AtomicUsize::new(cfg.size),
            high: AtomicUsize::new(cfg.high_water),
            free: SegQueue::new(),
            free_len: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            indexes: Mutex::new(Indexes::default()),
            building: Mutex::new(0),
            built: Condvar::new(),
            leases: Mutex::new(HashMap::new()),
            refill_failures: AtomicUsize::new(0),
            last_refill_error: Mutex::new(None),
            cidr_end_reached: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            refilled: bounded(64),
        });
        let (tx, rx) = bounded(1);
        Pool {
            inner,
            nudge: tx,
            nudged: Some(rx),
            refill: None,
        }
    }

    /// Starts the refill thread when the low-water mark is above 0 (a
    /// no-op when it runs already), and nudges it when fewer slots than
    /// the mark are free.
    pub fn start_refill(&mut self) {
        if self.inner.low.load(Ordering::Acquire) > 0 {
            self.spawn_refill();
        }
        self.nudge_if_low();
    }

    /// Starts the refill thread, once.
    fn spawn_refill(&mut self) {
        let Some(rx) = self.nudged.take() else {
            return;
        };
        let i = Arc::clone(&self.inner);
        self.refill = Some(
            std::thread::Builder::new()
                .name("wasp-slot-refill".into())
                .spawn(move || i.refill_loop(rx))
                .expect("spawn the slot refill thread"),
        );
    }

    /// Changes the warm size and the marks at run time (`None` keeps one):
    /// the refill thread (started now if it was not running) builds up to
    /// the size in the background; free slots above the high-water mark,
    /// and above a size given here, are destroyed at once. The caller
    /// checks the marks make sense (`low_water <= size <= high_water`).
    pub fn set_marks(
        &mut self,
        size: Option<usize>,
        low_water: Option<usize>,
        high_water: Option<usize>,
    ) -> Result<PoolStatus, PoolError> {
        let inner = Arc::clone(&self.inner);
        let i = &*inner;
        if let Some(v) = low_water {
            i.low.store(v, Ordering::Release);
        }
        if let Some(v) = size {
            i.size.store(v, Ordering::Release);
        }
        if let Some(v) = high_water {
            i.high.store(v, Ordering::Release);
        }
        let keep = size.map_or(i.high.load(Ordering::Acquire), |s| {
            s.min(i.high.load(Ordering::Acquire))
        });
        let mut errs = Vec::new();
        while i.free_len.load(Ordering::Acquire) > keep {
            let Some(s) = i.pop_free() else { break };
            if let Err(e) = self.destroy_index(s.index) {
                errs.push(format!("slot {}: {}", s.index, crate::error::chain(&e)));
            }
        }
        self.spawn_refill();
        if i.free_len.load(Ordering::Acquire) < i.refill_target() {
            // A full channel means a nudge is already pending.
            let _ = self.nudge.try_send(());
        }
        if errs.is_empty() {
            Ok(self.status())
        } else {
            Err(PoolError::Teardown(errs))
        }
    }

    /// The kernel operations.
    pub fn ops(&self) -> &O {
        &self.inner.ops
    }

    fn nudge_if_low(&self) {
        if self.refill.is_some()
            && self.inner.free_len.load(Ordering::Acquire) < self.inner.low.load(Ordering::Acquire)
        {
            // A full channel means a nudge is already pending.
            let _ = self.nudge.try_send(());
        }
    }

    /// Builds `n` slots on all workers and adds them to the free queue.
    pub fn warm(&self, n: usize) -> Result<(), PoolError> {
        match self.inner.build_many(n) {
            (_, None) => Ok(()),
            (built, Some(source)) => Err(PoolError::Warm {
                built,
                wanted: n,
                source,
            }),
        }
    }

    /// A free slot, or one built now for the caller when none is free.
    /// When the CIDR has no index left while builds into the free queue
    /// are in flight (the refill's), it waits for them: each ends with a
    /// free slot to take or its index free again, so the pool is used to
    /// its last address. The CIDR's `Exhausted` error only when every
    /// address is in use.
    pub fn take_or_build(&self) -> Result<Slot, PoolError> {
        let warm_err = |source| PoolError::Warm {
            built: 0,
            wanted: 1,
            source,
        };
        loop {
            if let Some(s) = self.take() {
                return Ok(s);
            }
            match self.inner.build_slot() {
                Ok(s) => {
                    self.inner.in_use.fetch_add(1, Ordering::Relaxed);
                    return Ok(s);
                }
                Err(e @ SlotError::Exhausted { .. }) => {
                    let SlotError::Exhausted { index, .. } = &e else {
                        unreachable!("matched above")
                    };
                    if !self.wait_for_room(*index) {
                        return Err(warm_err(e));
                    }
                }
                Err(e) => return Err(warm_err(e)),
            }
        }
    }

    /// After index `past` was found past the CIDR: waits until a slot is
    /// free or an index below `past` is, while builds are in flight;
    /// `false` when none is and nothing is free (every address in use).
    fn wait_for_room(&self, past: u32) -> bool {
        let i = &self.inner;
        let room = || {
            i.free_len.load(Ordering::Acquire) > 0
                || lock(&i.indexes).spare.first().is_some_and(|&n| n < past)
        };
        let mut g = lock(&i.building);
        loop {
            // Builds queue their slot or free their index before they
            // count down (under this lock): nothing is missed.
            if room() {
                return true;
            }
            if *g == 0 {
                return false;
            }
            g = i.built.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A free slot, or `None` when the pool is empty. O(1), lock-free.
    pub fn take(&self) -> Option<Slot> {
        let s = self.inner.pop_free();
        if s.is_some() {
            self.inner.in_use.fetch_add(1, Ordering::Relaxed);
        }
        self.nudge_if_low();
        s
    }

    /// Returns a slot whose VMM is gone: recycled into the free queue, or
    /// destroyed above the high-water mark (or when recycling fails). A
    /// slot whose tap is still held comes back in the error.
    pub fn give_back(&self, slot: Slot) -> Result<(), PoolError> {
        let i = &self.inner;
        let index = slot.index;
        i.in_use.fetch_sub(1, Ordering::Relaxed);
        if i.free_len.load(Ordering::Acquire) >= i.high.load(Ordering::Acquire) {
            return self.destroy_index(index);
        }
        match i.ops.recycle(&slot) {
            Ok(()) => {
                i.push_free(slot);
                Ok(())
            }
            Err(source @ SlotError::TapBusy { .. }) => {
                i.in_use.fetch_add(1, Ordering::Relaxed);
                Err(PoolError::GiveBack {
                    index,
                    slot: Some(Box::new(slot)),
                    source,
                })
            }
            Err(source) => {
                let _ = self.destroy_index(index);
                Err(PoolError::GiveBack {
                    index,
                    slot: None,
                    source,
                })
            }
        }
    }

    fn destroy_index(&self, index: u32) -> Result<(), PoolError> {
        let r = self.inner.destroy_held(index);
        if r.is_ok() {
            self.inner.free_index(index);
        }
        r.map_err(PoolError::from)
    }

    /// Finds this pool's slots in the kernel: adopts healthy ones that the
    /// pool does not hold yet as free, removes broken ones. Never touches
    /// anything without wasp's names and marks (that is [`SlotOps::scan`]'s
    /// contract).
    pub fn reconcile(&self) -> Result<ReconcileReport, PoolError> {
        let i = &self.inner;
        let found = i.ops.scan()?;
        let held = i.held();
        let mut rep = ReconcileReport::default();
        let seen: Vec<u32> = found.iter().map(|f| f.index).collect();
        for f in found {
            if held.contains(&f.index) {
                continue;
            }
            let lease = match i.ops.lease(f.index) {
                Ok(Some(l)) => l,
                Ok(None) => {
                    rep.busy.push(f.index);
                    continue;
                }
                Err(e) => {
                    rep.errors
                        .push(format!("slot {}: {}", f.index, crate::error::chain(&e)));
                    continue;
                }
            };
            i.hold(f.index, lease);
            if f.healthy() {
                match i.ops.describe(f.index) {
                    Ok(s) => {
                        i.push_free(s);
                        rep.adopted.push(f.index);
                        continue;
                    }
                    Err(e) => rep.errors.push(format!("slot {}: {e}", f.index)),
                }
            }
            match i.destroy_held(f.index) {
                Ok(()) => rep.removed.push(f.index),
                Err(e) => rep
                    .errors
                    .push(format!("slot {}: {}", f.index, crate::error::chain(&e))),
            }
        }
        // Every index seen is in use but the removed ones; the holes below
        // the highest are built first.
        let mut ix = lock(&i.indexes);
        for n in seen {
            ix.claim(n);
        }
        for &n in &rep.removed {
            ix.put(n);
        }
        drop(ix);
        Ok(rep)
    }

    /// Destroys every free slot and every slot of this pool the kernel
    /// still has (taken ones too). Best effort; every error is reported.
    pub fn drain(&self) -> Result<usize, PoolError> {
        let i = &self.inner;
        let mut errs = Vec::new();
        let mut done = BTreeSet::new();
        while i.pop_free().is_some() {}
        // Every slot of this pool the kernel has, taken ones too, unless
        // another process holds it.
        let mut mine = i.held();
        match i.ops.scan() {
            Ok(found) => {
                for f in found {
                    if mine.contains(&f.index) {
                        continue;
                    }
                    match i.ops.lease(f.index) {
                        Ok(Some(l)) => {
                            i.hold(f.index, l);
                            mine.insert(f.index);
                        }
                        Ok(None) => errs.push(format!(
                            "slot {}: another wasp process holds it (a spawn or the service in progress); drain again when it has finished",
                            f.index
                        )),
                        Err(e) => errs.push(format!(
                            "slot {}: {}",
                            f.index,
                            crate::error::chain(&e)
                        )),
                    }
                }
            }
            Err(e) => errs.push(crate::error::chain(&e)),
        }
        let idx: Vec<u32> = mine.into_iter().collect();
        for (n, r) in idx.iter().zip(i.ops.destroy_many(&idx)) {
            let lease = i.release(*n);
            match r {
                Ok(()) => {
                    done.insert(*n);
                    if let Some(Err(e)) = lease.map(Lease::remove) {
                        errs.push(format!("slot {n}: remove its lease file: {e}"));
                    }
                }
                Err(e) => errs.push(format!("slot {n}: {}", crate::error::chain(&e))),
            }
        }
        i.in_use.store(0, Ordering::Relaxed);
        *lock(&i.indexes) = Indexes::default();
        if errs.is_empty() {
            Ok(done.len())
        } else {
            Err(PoolError::Teardown(errs))
        }
    }

    /// Counters.
    pub fn status(&self) -> PoolStatus {
        let i = &self.inner;
        PoolStatus {
            free: i.free_len.load(Ordering::Acquire),
            in_use: i.in_use.load(Ordering::Relaxed),
            size: i.size.load(Ordering::Acquire),
            low_water: i.low.load(Ordering::Acquire),
            high_water: i.high.load(Ordering::Acquire),
            refill_failures: i.refill_failures.load(Ordering::Relaxed),
        }
    }

    /// A receiver of the free count after each background refill round
    /// (the last 64 are kept when nobody listens).
    pub fn refill_events(&self) -> Receiver<usize> {
        self.inner.refilled.1.clone()
    }

    /// How many times the background refill has reached the end of the
    /// pool's CIDR (each logged once at info; not counted as a refill
    /// failure: the pool then holds every address it has).
    pub fn cidr_end_reached(&self) -> usize {
        self.inner.cidr_end_reached.load(Ordering::Relaxed)
    }

    /// The last refill failure, if any.
    pub fn last_refill_error(&self) -> Option<String> {
        self.inner
            .last_refill_error
            .lock()
            .ok()
            .and_then(|g| g.clone())
    }
}

impl<O: SlotOps + 'static> Drop for Pool<O> {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        // Wake the refill thread so it sees `stop`, then wait for it.
        let (tx, _) = bounded::<()>(1);
        let nudge = std::mem::replace(&mut self.nudge, tx);
        let _ = nudge.try_send(());
        drop(nudge);
        if let Some(t) = self.refill.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::slot::Found;
    use std::net::Ipv4Addr;

    /// Records every kernel call; `existing` plays the kernel's state.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        existing: Mutex<BTreeSet<u32>>,
        broken: Mutex<BTreeSet<u32>>,
        busy: Mutex<BTreeSet<u32>>,
        /// Slots whose lease another process holds.
        elsewhere: Mutex<BTreeSet<u32>>,
        fail_build_at: Option<u32>,
        /// Indexes from this one on are past the CIDR.
        capacity: Option<u32>,
        /// Told every index leased past the CIDR.
        exhausted: Mutex<Option<Sender<u32>>>,
        /// The build of this index says so, then waits to be let go.
        gate: Mutex<Option<Gate>>,
    }

    /// An index, where its build says it has started, and the go signal.
    type Gate = (u32, Sender<()>, Receiver<()>);

    fn slot(n: u32) -> Slot {
        Slot {
            index: n,
            netns: format!("wasp-t-{n}"),
            clone_ip: Ipv4Addr::from(0x0a00_0002 + n),
            host_veth: format!("wasp{n}"),
        }
    }

    impl Fake {
        fn log(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl SlotOps for Fake {
        fn build(&self, n: u32) -> Result<Slot, SlotError> {
            self.log(format!("build {n}"));
            let gate = self.gate.lock().unwrap().take_if(|g| g.0 == n);
            if let Some((_, entered, go)) = gate {
                entered.send(()).unwrap();
                go.recv().unwrap();
            }
            if Some(n) == self.fail_build_at {
                return Err(SlotError::BadConfig("injected".into()));
            }
            self.existing.lock().unwrap().insert(n);
            Ok(slot(n))
        }
        fn recycle(&self, s: &Slot) -> Result<(), SlotError> {
            self.log(format!("recycle {}", s.index));
            if self.busy.lock().unwrap().contains(&s.index) {
                return Err(SlotError::TapBusy {
                    tap: "tap0".into(),
                    netns: s.netns.clone(),
                });
            }
            Ok(())
        }
        fn destroy(&self, n: u32) -> Result<(), SlotError> {
            self.log(format!("destroy {n}"));
            self.existing.lock().unwrap().remove(&n);
            Ok(())
        }
        fn scan(&self) -> Result<Vec<Found>, SlotError> {
            self.log("scan".into());
            let broken = self.broken.lock().unwrap().clone();
            Ok(self
                .existing
                .lock()
                .unwrap()
                .iter()
                .map(|&n| Found {
                    index: n,
                    has_netns: true,
                    host_veth: Some(format!("wasp{n}")),
                    on_bridge: !broken.contains(&n),
                })
                .collect())
        }
        fn describe(&self, n: u32) -> Result<Slot, SlotError> {
            Ok(slot(n))
        }
        fn lease(&self, n: u32) -> Result<Option<Lease>, SlotError> {
            if let Some(cap) = self.capacity.filter(|&c| n >= c) {
                if let Some(tx) = &*self.exhausted.lock().unwrap() {
                    let _ = tx.send(n);
                }
                return Err(SlotError::Exhausted {
                    cidr: "10.0.0.0/28".parse().unwrap(),
                    index: n,
                    capacity: cap,
                });
            }
            let free = !self.elsewhere.lock().unwrap().contains(&n);
            Ok(free.then(Lease::detached))
        }
    }

    fn cfg(low: usize, high: usize) -> PoolConfig {
        PoolConfig {
            size: 0,
            low_water: low,
            high_water: high,
            workers: 2,
        }
    }

    #[test]
    fn warm_take_give_back_and_high_water() {
        let p = Pool::new(Fake::default(), cfg(0, 2));
        p.warm(3).unwrap();
        assert_eq!(p.status().free, 3);
        let mut taken: Vec<Slot> = (0..3).map(|_| p.take().unwrap()).collect();
        assert!(p.take().is_none(), "empty pool never builds on take");
        let mut idx: Vec<u32> = taken.iter().map(|s| s.index).collect();
        idx.sort();
        assert_eq!(idx, vec![0, 1, 2]);
        assert_eq!(p.status().in_use, 3);
        // Two fit under the high-water mark, the third is destroyed.
        let third = taken.pop().unwrap();
        for s in taken {
            p.give_back(s).unwrap();
        }
        p.give_back(third.clone()).unwrap();
        let calls = p.ops().calls();
        assert_eq!(calls.iter().filter(|c| c.starts_with("recycle")).count(), 2);
        assert!(calls.contains(&format!("destroy {}", third.index)));
        assert_eq!(p.status().free, 2);
        assert_eq!(p.status().in_use, 0);
        // The destroyed index is reused first.
        p.warm(1).unwrap();
        assert!(p.ops().calls().contains(&format!("build {}", third.index)));
    }

    #[test]
    fn indexes_are_handed_out_lowest_first_and_every_one_comes_back() {
        let mut ix = Indexes::default();
        let got: Vec<u32> = (0..6).map(|_| ix.take()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
        ix.put(4);
        ix.put(1);
        ix.put(3);
        assert_eq!((ix.take(), ix.take(), ix.take(), ix.take()), (1, 3, 4, 6));
        // The highest ones back: `next` comes down, nothing is kept past it.
        ix.put(6);
        ix.put(5);
        assert_eq!((ix.next, ix.spare.len()), (5, 0));
        // An index in use elsewhere (adopted, another process's) is never
        // handed out; the holes below it are.
        ix.claim(8);
        let got: Vec<u32> = (0..4).map(|_| ix.take()).collect();
        assert_eq!(got, vec![5, 6, 7, 9]);
    }

    #[test]
    fn take_or_build_waits_for_the_refills_last_build_instead_of_failing() {
        // 3 addresses; the refill builds the last one (2) and is held in
        // the middle of it while the caller finds index 3 past the CIDR.
        let (entered_tx, entered) = bounded(1);
        let (go, go_rx) = bounded(1);
        let (ex_tx, exhausted) = bounded(8);
        let fake = Fake {
            capacity: Some(3),
            ..Default::default()
        };
        *fake.gate.lock().unwrap() = Some((2, entered_tx, go_rx));
        *fake.exhausted.lock().unwrap() = Some(ex_tx);
        let p = Pool::new(
            fake,
            PoolConfig {
                low_water: 1,
                size: 1,
                high_water: 10,
                workers: 1,
            },
        );
        let ev = p.refill_events();
        assert_eq!(ev.recv().unwrap(), 1);
        // Taking the refill's slot nudges it: it builds index 1, then,
        // taken too, index 2, and waits in the middle of that one.
        let a = p.take_or_build().unwrap();
        assert_eq!(ev.recv().unwrap(), 1);
        let b = p.take_or_build().unwrap();
        entered.recv().unwrap();
        assert_eq!(
            BTreeSet::from([a.index, b.index]),
            BTreeSet::from([0, 1]),
            "{:?}",
            p.ops().calls()
        );
        std::thread::scope(|s| {
            let c = s.spawn(|| p.take_or_build());
            // The caller found no index left while the build is in flight.
            assert_eq!(exhausted.recv().unwrap(), 3);
            go.send(()).unwrap();
            let c = c.join().unwrap().unwrap();
            assert_eq!(c.index, 2);
        });
        // Now every address is in use: the CIDR's error, at once.
        match p.take_or_build() {
            Err(PoolError::Warm {
                source: SlotError::Exhausted { index: 3, .. },
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(p.status().in_use, 3);
    }

    #[test]
    fn a_refill_at_the_cidrs_end_is_no_failure_and_is_told_once_each_time() {
        // 3 addresses; the refill keeps 4 free.
        let fake = Fake {
            capacity: Some(3),
            ..Default::default()
        };
        let mut p = Pool::new(
            fake,
            PoolConfig {
                low_water: 2,
                size: 4,
                high_water: 10,
                workers: 1,
            },
        );
        let ev = p.refill_events();
        let quiet = |p: &Pool<Fake>| {
            assert_eq!(p.status().refill_failures, 0);
            assert_eq!(p.last_refill_error(), None);
        };
        // The first round builds every address and reaches the end.
        assert_eq!(ev.recv().unwrap(), 3);
        quiet(&p);
        assert_eq!(p.cidr_end_reached(), 1);
        // A round that finds the end again at once: not told again.
        let a = p.take().unwrap();
        let b = p.take().unwrap();
        assert_eq!(ev.recv().unwrap(), 1);
        quiet(&p);
        assert_eq!(p.cidr_end_reached(), 1);
        // An address comes free (a slot given back, then destroyed by a
        // smaller size) and a round builds it without reaching the end...
        p.give_back(a).unwrap();
        p.set_marks(Some(1), Some(1), None).unwrap();
        assert_eq!(p.status().free, 1);
        p.set_marks(Some(2), None, None).unwrap();
        assert_eq!(ev.recv().unwrap(), 2);
        assert_eq!(p.cidr_end_reached(), 1);
        // ...so the next time the end is reached, it is told once more.
        p.set_marks(Some(4), None, None).unwrap();
        assert_eq!(ev.recv().unwrap(), 2);
        quiet(&p);
        assert_eq!(p.cidr_end_reached(), 2);
        p.give_back(b).unwrap();
    }

    #[test]
    fn a_pool_fills_its_cidr_to_the_last_index_under_a_concurrent_refill() {
        for round in 0..50 {
            let fake = Fake {
                capacity: Some(13),
                ..Default::default()
            };
            let p = Pool::new(
                fake,
                PoolConfig {
                    low_water: 1,
                    size: 2,
                    high_water: usize::MAX,
                    workers: 2,
                },
            );
            p.warm(2).unwrap();
            let mut idx: Vec<u32> = (0..13)
                .map(|k| match p.take_or_build() {
                    Ok(s) => s.index,
                    Err(e) => panic!("round {round}, take {k}: {}", crate::error::chain(&e)),
                })
                .collect();
            idx.sort();
            assert_eq!(idx, (0..13).collect::<Vec<_>>(), "round {round}");
            assert!(p.take_or_build().is_err(), "round {round}");
        }
    }

    #[test]
    fn busy_tap_hands_the_slot_back() {
        let p = Pool::new(Fake::default(), cfg(0, 10));
        p.warm(1).unwrap();
        let s = p.take().unwrap();
        p.ops().busy.lock().unwrap().insert(s.index);
        match p.give_back(s.clone()) {
            Err(PoolError::GiveBack {
                slot: Some(back), ..
            }) => assert_eq!(*back, s),
            other => panic!("{other:?}"),
        }
        assert!(!p.ops().calls().contains(&format!("destroy {}", s.index)));
        assert_eq!(p.status().in_use, 1);
    }

    #[test]
    fn warm_failure_reports_progress() {
        let fake = Fake {
            fail_build_at: Some(0),
            ..Default::default()
        };
        let p = Pool::new(
            fake,
            PoolConfig {
                workers: 1,
                ..cfg(0, 10)
            },
        );
        let e = p.warm(3).unwrap_err();
        assert!(
            matches!(
                e,
                PoolError::Warm {
                    built: 0,
                    wanted: 3,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn refill_keeps_the_low_water_mark() {
        let p = Pool::new(Fake::default(), cfg(3, 10));
        let ev = p.refill_events();
        // The refill thread fills to the mark at start.
        assert_eq!(ev.recv().unwrap(), 3);
        let _a = p.take().unwrap();
        // Below the mark: the background builds one more.
        assert_eq!(ev.recv().unwrap(), 3);
        assert_eq!(p.ops().calls().len(), 4);
    }

    #[test]
    fn marks_change_at_run_time_refill_to_the_size_and_drop_the_surplus() {
        let mut p = Pool::new(Fake::default(), cfg(0, 10));
        p.warm(2).unwrap();
        let ev = p.refill_events();
        // No refill thread yet; the new size starts one and it builds the
        // difference in the background.
        let st = p.set_marks(Some(5), Some(2), None).unwrap();
        assert_eq!((st.size, st.low_water, st.high_water), (5, 2, 10));
        assert_eq!(ev.recv().unwrap(), 5);
        // Taking below the low mark refills up to the size, not the mark.
        let taken: Vec<Slot> = (0..4).map(|_| p.take().unwrap()).collect();
        assert_eq!(ev.recv().unwrap(), 5);
        assert_eq!(p.status().free, 5);
        // A smaller size destroys the surplus free slots at once.
        let before = p.ops().calls().len();
        let st = p.set_marks(Some(2), Some(0), None).unwrap();
        assert_eq!(st.free, 2);
        let destroyed = p.ops().calls()[before..]
            .iter()
            .filter(|c| c.starts_with("destroy"))
            .count();
        assert_eq!(destroyed, 3);
        // A lower high-water mark: slots given back above it are destroyed.
        p.set_marks(None, None, Some(3)).unwrap();
        for s in taken {
            p.give_back(s).unwrap();
        }
        assert_eq!(p.status().free, 3);
        assert_eq!(p.status().in_use, 0);
    }

    #[test]
    fn reconcile_adopts_healthy_and_removes_broken() {
        let fake = Fake::default();
        fake.existing.lock().unwrap().extend([0, 3, 4]);
        fake.broken.lock().unwrap().insert(3);
        let p = Pool::new(fake, cfg(0, 10));
        let rep = p.reconcile().unwrap();
        assert_eq!(rep.adopted, vec![0, 4]);
        assert_eq!(rep.removed, vec![3]);
        assert_eq!(p.status().free, 2);
        // Holes (1, 2, 3) are reused before fresh indices (5..).
        p.warm(4).unwrap();
        let mut built: Vec<String> = p
            .ops()
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("build"))
            .collect();
        built.sort();
        assert_eq!(built, vec!["build 1", "build 2", "build 3", "build 5"]);
        // Drain removes every slot the kernel still has.
        let n = p.drain().unwrap();
        assert_eq!(n, 6);
        assert!(p.ops().existing.lock().unwrap().is_empty());
    }

    #[test]
    fn slots_another_process_holds_are_never_built_adopted_or_removed() {
        let fake = Fake::default();
        // Another process holds 1 (built) and 2 (being built, not wired
        // yet); 4 is a healthy slot nobody holds.
        fake.existing.lock().unwrap().extend([1, 2, 4]);
        fake.broken.lock().unwrap().insert(2);
        fake.elsewhere.lock().unwrap().extend([1, 2]);
        let p = Pool::new(fake, cfg(0, 10));
        let rep = p.reconcile().unwrap();
        assert_eq!(rep.adopted, vec![4]);
        assert_eq!(rep.busy, vec![1, 2]);
        assert!(rep.removed.is_empty());
        // Warming skips the held indices instead of failing on them.
        p.warm(3).unwrap();
        let built: Vec<String> = p
            .ops()
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("build"))
            .collect();
        assert!(
            !built.iter().any(|c| c == "build 1" || c == "build 2"),
            "{built:?}"
        );
        assert_eq!(built.len(), 3, "{built:?}");
        // Drain removes its own slots and names the held ones.
        match p.drain() {
            Err(PoolError::Teardown(errs)) => {
                assert_eq!(errs.len(), 2, "{errs:?}");
                assert!(
                    errs[0].contains("another wasp process holds it"),
                    "{errs:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let left = p.ops().existing.lock().unwrap().clone();
        assert_eq!(left, BTreeSet::from([1, 2]));
    }

    #[test]
    fn a_name_taken_by_another_process_moves_the_build_on() {
        struct Taken(Fake);
        impl SlotOps for Taken {
            fn build(&self, n: u32) -> Result<Slot, SlotError> {
                if n == 0 {
                    return Err(SlotError::NameTaken {
                        netns: "wasp-t-0".into(),
                    });
                }
                self.0.build(n)
            }
            fn recycle(&self, s: &Slot) -> Result<(), SlotError> {
                self.0.recycle(s)
            }
            fn destroy(&self, n: u32) -> Result<(), SlotError> {
                self.0.destroy(n)
            }
            fn scan(&self) -> Result<Vec<Found>, SlotError> {
                self.0.scan()
            }
            fn describe(&self, n: u32) -> Result<Slot, SlotError> {
                self.0.describe(n)
            }
            fn lease(&self, n: u32) -> Result<Option<Lease>, SlotError> {
                self.0.lease(n)
            }
        }
        let p = Pool::new(
            Taken(Fake::default()),
            PoolConfig {
                workers: 1,
                ..cfg(0, 10)
            },
        );
        p.warm(2).unwrap();
        let mut idx: Vec<u32> = (0..2).map(|_| p.take().unwrap().index).collect();
        idx.sort();
        assert_eq!(idx, vec![1, 2]);
    }
}

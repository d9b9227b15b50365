//! VMMs started ahead of time (experimental, [`EngineConfig::standby`]):
//! the engine holds up to `standby` VMMs already launched in their slots,
//! each with its clone's disks made and its API socket accepting, for one
//! snapshot ([`Engine::hold_standby`]). A request for that snapshot (with
//! no extra VMM arguments) takes one: its clone 0 skips slot, storage,
//! launch and socket set-up, and goes straight to the restore. A thread of
//! the engine's refills the standbys in the background, only while no
//! clone is in flight or queued (on a small host a refill would take CPU
//! from the request it follows).
//!
//! A standby is made with its final clone id: the engine reserves a
//! request tag for it and the request that takes it gets that tag, so its
//! files, socket, cgroup and jail are named as any clone's. A standby has
//! no record: a crash leaves it to `wasp reconcile`, like a clone in
//! flight. A standby whose VMM died while it waited is reclaimed at take
//! time and the request goes the normal way.
//!
//! [`EngineConfig::standby`]: super::EngineConfig::standby

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{lock, AdmittedClone, Core, Engine, Req, SnapshotSource};
use crate::engine::batch::{PhasesMs, SlotLease, Slots, SpawnError};
use crate::pipeline::launch::{self, Isolation, Launched};
use crate::pipeline::restore::Job;
use crate::pipeline::storage::clone::CloneStore;
use crate::stats::ms;
use crate::sys;

/// How long a standby VMM gets to open its API socket.
const STANDBY_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// One VMM started ahead in its slot.
pub(crate) struct Standby {
    /// Its reserved request tag; its clone id is `<tag>-0`.
    tag: String,
    id: String,
    store: Arc<CloneStore>,
    slot: SlotLease,
    files_dir: PathBuf,
    /// Bytes its disks copied (0 when reflinked).
    bytes_copied: u64,
    launched: Launched,
}

/// What the standby thread works from.
#[derive(Default)]
pub(crate) struct StandbyState {
    queue: VecDeque<Standby>,
    /// The snapshot standbys are made for, and its clones' isolation.
    store: Option<(Arc<CloneStore>, Isolation)>,
    stopping: bool,
    /// The last make failed: no retry until the next take or
    /// [`Engine::hold_standby`] (no busy loop on a broken snapshot).
    failed: bool,
}

/// The standbys of an engine.
#[derive(Default)]
pub(crate) struct Standbys {
    target: usize,
    state: Mutex<StandbyState>,
    cv: Condvar,
}

impl Standbys {
    pub(crate) fn new(target: usize) -> Self {
        Standbys {
            target,
            ..Default::default()
        }
    }

    /// VMMs to hold.
    pub(crate) fn target(&self) -> usize {
        self.target
    }

    /// Wakes the standby thread (the engine went idle). The state lock is
    /// taken first, so a thread between its check and its wait never
    /// misses the wake-up.
    pub(crate) fn wake(&self) {
        if self.target > 0 {
            drop(lock(&self.state));
            self.cv.notify_all();
        }
    }
}

impl Standby {
    /// Its reserved request tag.
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }
}

impl<S: Slots + 'static> Engine<S> {
    /// Holds [`EngineConfig::standby`](super::EngineConfig::standby) VMMs
    /// started ahead for clones of `snapshot` (made in the background; the
    /// earlier ones, for another snapshot, are stopped). Does nothing when
    /// the engine holds none.
    pub fn hold_standby(&self, snapshot: SnapshotSource) -> Result<(), SpawnError> {
        let c = &self.core;
        if c.standby.target == 0 {
            return Ok(());
        }
        let store = match snapshot {
            SnapshotSource::Store(s) => s,
            SnapshotSource::Dir(d) => c.store_for(&d)?,
        };
        let isolation = c.isolation_for(&store)?;
        let old: Vec<Standby> = {
            let mut st = lock(&c.standby.state);
            st.store = Some((store, isolation));
            st.failed = false;
            st.queue.drain(..).collect()
        };
        for sb in old {
            c.destroy_standby(sb);
        }
        c.standby.cv.notify_all();
        Ok(())
    }

    /// VMMs held started ahead now.
    pub fn standbys(&self) -> usize {
        lock(&self.core.standby.state).queue.len()
    }

    /// Waits up to `timeout` for at least one standby VMM; true when one is
    /// held.
    pub fn wait_standby(&self, timeout: Duration) -> bool {
        let c = &self.core;
        let deadline = Instant::now() + timeout;
        let mut st = lock(&c.standby.state);
        while st.queue.is_empty() && !st.stopping && !st.failed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = c
                .standby
                .cv
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        !st.queue.is_empty()
    }
}

impl<S: Slots + 'static> Core<S> {
    /// The standby thread: keeps `target` standbys for the held snapshot.
    pub(crate) fn standby_loop(&self) {
        loop {
            let (store, isolation) = {
                let mut st = lock(&self.standby.state);
                loop {
                    if st.stopping {
                        return;
                    }
                    // Made only while no clone is in flight or queued: a
                    // refill never competes with a request for the CPU.
                    match &st.store {
                        Some((s, i))
                            if !st.failed
                                && st.queue.len() < self.standby.target
                                && self.idle() =>
                        {
                            break (s.clone(), i.clone());
                        }
                        _ => {}
                    }
                    st = self.standby.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            let made = self.make_standby(&store, &isolation);
            let mut st = lock(&self.standby.state);
            match made {
                // Still for the held snapshot: kept; else stopped.
                Ok(sb)
                    if !st.stopping
                        && st
                            .store
                            .as_ref()
                            .is_some_and(|(s, _)| Arc::ptr_eq(s, &sb.store)) =>
                {
                    st.queue.push_back(sb);
                    drop(st);
                    self.standby.cv.notify_all();
                }
                Ok(sb) => {
                    drop(st);
                    self.destroy_standby(sb);
                }
                Err(e) => {
                    tracing::warn!("cannot start a standby VMM: {e}; retried at the next request");
                    st.failed = true;
                    drop(st);
                    self.standby.cv.notify_all();
                }
            }
        }
    }

    /// Slot, storage, tap check and launch for a standby, under a tag
    /// reserved for it; everything is given back on failure.
    fn make_standby(
        &self,
        store: &Arc<CloneStore>,
        isolation: &Isolation,
    ) -> Result<Standby, String> {
        let tag = lock(&self.live).reserve_tag();
        let id = format!("{tag}-0");
        let unref = || lock(&self.live).unref_tag(&tag);
        let taken = self.slots().take();
        let slot = match taken {
            Ok(s) => s,
            Err(e) => {
                unref();
                return Err(format!("slot: {}", crate::error::chain(&*e)));
            }
        };
        let undo = |files: bool| {
            if files {
                let _ = store.cleanup(&id);
            }
            self.give_back(&id, slot.clone());
            unref();
        };
        let files = match store.prepare(&id) {
            Ok(f) => f,
            Err(e) => {
                undo(false);
                return Err(format!("storage: {}", crate::error::chain(&e)));
            }
        };
        let tap = self.slots().check_tap(&slot);
        if let Err(e) = tap {
            undo(true);
            return Err(format!(
                "slot: the slot's tap is missing: {}",
                crate::error::chain(&*e)
            ));
        }
        let spec = self.launch_spec(&id, &files, &slot, Vec::new(), isolation);
        let mut launched = match launch::launch(&spec) {
            Ok(l) => l,
            Err(e) => {
                undo(true);
                return Err(format!("launch: {}", crate::error::chain(&e)));
            }
        };
        // Held once its API socket accepts: then nothing of the start is
        // left for the request.
        let up = launch::wait_for_socket(
            &launched.api_sock,
            &launched.pidfd,
            launched.pid,
            &files.dir.join("vmm.stderr"),
            STANDBY_SOCKET_TIMEOUT,
        );
        if let Err(e) = up {
            let _ = sys::pidfd::pidfd_send_signal(&launched.pidfd, libc::SIGKILL);
            let _ = launched.child.wait();
            let _ =
                launch::remove_isolation(launched.cgroup.as_deref(), launched.jail_dir.as_deref());
            undo(true);
            return Err(format!("socket: {}", crate::error::chain(&e)));
        }
        Ok(Standby {
            tag,
            id,
            store: store.clone(),
            slot,
            files_dir: files.dir,
            bytes_copied: files.bytes_copied,
            launched,
        })
    }

    /// A standby for a request of `store` with `vmm_args`, when one is
    /// held; its tag becomes the request's.
    pub(crate) fn take_standby(
        &self,
        store: &Arc<CloneStore>,
        vmm_args: &[String],
    ) -> Option<Standby> {
        if self.standby.target == 0 || !vmm_args.is_empty() {
            return None;
        }
        let mut dead = Vec::new();
        let taken = {
            let mut st = lock(&self.standby.state);
            // The same snapshot, its clones in the same directory.
            let same = st.store.as_ref().is_some_and(|(s, _)| {
                Arc::ptr_eq(s, store)
                    || (s.snapshot_dir() == store.snapshot_dir()
                        && s.clones_dir() == store.clones_dir())
            });
            let mut taken = None;
            while let Some(sb) = same.then(|| st.queue.pop_front()).flatten() {
                // A VMM that died while it waited is no standby.
                if sys::pidfd::pidfd_exited(&sb.launched.pidfd, 0).unwrap_or(true) {
                    dead.push(sb);
                    continue;
                }
                taken = Some(sb);
                break;
            }
            st.failed = false;
            taken
        };
        // No wake-up here: the request is not queued yet, and the refill
        // waits for the engine to go idle (`Core::room_made` wakes it).
        for sb in dead {
            tracing::warn!(clone = %sb.id, "a standby VMM exited while it waited; reclaimed");
            self.destroy_standby(sb);
        }
        taken
    }

    /// Stops a standby: VMM killed and reaped, files and isolation removed,
    /// slot given back, tag released.
    pub(crate) fn destroy_standby(&self, sb: Standby) {
        let tag = sb.tag.clone();
        self.destroy_standby_keep_tag(sb);
        lock(&self.live).unref_tag(&tag);
    }

    /// [`Core::destroy_standby`] of a request's standby: the tag is the
    /// request's now, released when it finishes.
    pub(crate) fn destroy_standby_keep_tag(&self, mut sb: Standby) {
        let _ = sys::pidfd::pidfd_send_signal(&sb.launched.pidfd, libc::SIGKILL);
        let _ = sb.launched.child.kill();
        let _ = sb.launched.child.wait();
        self.remove_clone_files(
            &sb.store,
            &sb.id,
            sb.launched.cgroup.as_deref(),
            sb.launched.jail_dir.as_deref(),
        );
        self.give_back(&sb.id, sb.slot.clone());
    }

    /// Stops the standby thread's work and every standby held.
    pub(crate) fn stop_standbys(&self) {
        let held: Vec<Standby> = {
            let mut st = lock(&self.standby.state);
            st.stopping = true;
            st.queue.drain(..).collect()
        };
        self.standby.cv.notify_all();
        for sb in held {
            self.destroy_standby(sb);
        }
    }

    /// Admits clone `i` of `r` on its standby: the job goes to the driver
    /// at once (slot, storage and launch were done ahead).
    pub(crate) fn admit_standby(&self, r: &Arc<Req>, i: usize, seq: usize, sb: Standby) -> Job {
        let admitted = Instant::now();
        let cpu_start = sys::thread_cpu_time();
        let Standby {
            id,
            slot,
            files_dir,
            bytes_copied,
            launched,
            ..
        } = sb;
        let job = self.hand_to_driver(
            r,
            i,
            seq,
            AdmittedClone {
                id,
                slot,
                launched,
                // Its socket is up: the socket phase is the connect alone.
                launched_at: admitted,
                files_dir,
                bytes_copied,
                admitted,
                phases: PhasesMs::default(),
                cpu_start,
            },
        );
        tracing::debug!(clone = %job.id, "admitted on a standby VMM in {:.3} ms", ms(admitted.elapsed()));
        job
    }
}

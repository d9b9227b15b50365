//! Restart adoption: [`Engine::open`] takes over the live clones its state
//! dir records for its pool, and reclaims the records whose VMM is gone.
//!
//! A record is adopted when a pidfd opened on its pid shows the recorded
//! process (pid and start time) living in the recorded slot netns, with
//! its clone directory ([`crate::state::clone_health`], the check `wasp
//! reconcile` makes), and the pool holds its slot aside for it (the pool's
//! open leased the slot and saw its tap busy): the clone is then watched
//! through that pidfd like one the engine started, with its request tag,
//! labels, TTL deadline and paused state from the record (a record that
//! says paused is checked with the VMM's `GET /`). Its VMM is not
//! this process's child, so its exit status is not known.
//!
//! A record whose VMM is gone (or is not the recorded process, or has
//! lost its slot netns or directory) is reclaimed: the VMM, when it is
//! still the recorded process, is killed through the pidfd; the clone's
//! directory (only when it carries the state dir's mark), cgroup and jail,
//! and the record are removed, and its slot goes back to the pool. A
//! record whose slot another process leases (a `wasp spawn` running beside
//! a service) is that process's clone: left alone, not reported.
//! Corrupt records are left for `wasp reconcile`. VMMs without a record (a
//! crash between launch and record) are `wasp reconcile`'s: run it before
//! opening the engine.

use serde::Serialize;

use super::{control, lock, Core, Engine, Running};
use crate::engine::batch::Slots;
use crate::paths::PREFIX;
use crate::pipeline::launch;
use crate::pipeline::storage::clone::remove_owned_clone_dir;
use crate::state::{self, CloneRecord};
use crate::sys;

/// What [`Engine::open`] adopted and reclaimed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdoptReport {
    /// Clones adopted (watched, listed, killable, with their labels and
    /// TTL).
    pub adopted: Vec<String>,
    /// Records whose VMM was gone (or broken): files, isolation and record
    /// removed, slot given back.
    pub reclaimed: Vec<String>,
    /// What could not be done, one line each.
    pub errors: Vec<String>,
}

impl<S: Slots + 'static> Engine<S> {
    /// What [`Engine::open`] adopted and reclaimed (empty for an engine
    /// opened with [`Engine::with_slots`]).
    pub fn adopted(&self) -> AdoptReport {
        lock(&self.core.adopt_report).clone()
    }
}

/// Reaps the recorded VMM when it has exited and is a child of this
/// process (an engine of this process started it before this one adopted
/// it): checked by its start time, so a recycled pid is never reaped.
pub(crate) fn reap_if_ours(r: &CloneRecord) {
    if state::pid_start_time(r.pid) == Some(r.pid_start) {
        sys::pidfd::reap_exited_child(r.pid);
    }
}

impl<S: Slots + 'static> Core<S> {
    /// Adopts the live clones recorded for `pool` (on this engine's host
    /// netns) and reclaims the dead ones; see the module docs.
    pub(crate) fn adopt_all(&self, pool: &str) -> AdoptReport {
        let mut rep = AdoptReport::default();
        let (records, bad) = match self.state.list() {
            Ok(x) => x,
            Err(e) => {
                rep.errors.push(crate::error::chain(&e));
                return rep;
            }
        };
        for e in bad {
            rep.errors.push(crate::error::chain(&e));
        }
        for r in records {
            if r.pool != pool || r.host_netns != self.host_netns {
                continue;
            }
            // Another live process (a `wasp spawn` beside a service) holds
            // the slot: the clone is that process's.
            if self.slots().held_elsewhere(r.slot) {
                tracing::debug!(clone = %r.id, "its slot is leased by another process; not adopted");
                continue;
            }
            // The pidfd pins the process before it is judged.
            let pidfd = sys::pidfd::pidfd_open(r.pid).ok();
            let verdict = match &pidfd {
                Some(_) => state::clone_health(&r),
                None => Some(format!("its VMM (pid {}) is gone", r.pid)),
            };
            match (pidfd, verdict) {
                (Some(pidfd), None) => {
                    let mut r = r;
                    // A record that says paused may be stale (a crash
                    // around a pause or resume): the VMM says which it is.
                    if let Some(paused) =
                        r.paused.then(|| control::vmm_paused(&r.api_sock)).flatten()
                    {
                        if paused != r.paused {
                            r.paused = paused;
                            if let Err(e) = self.state.put(&r) {
                                rep.errors.push(crate::error::chain(&e));
                            }
                        }
                    }
                    let adopted = self.slots().adopt(r.slot);
                    match adopted {
                        Ok(slot) => {
                            rep.adopted.push(r.id.clone());
                            tracing::info!(clone = %r.id, pid = r.pid, "adopted a live clone");
                            self.watch(Running {
                                record: r,
                                child: None,
                                pidfd,
                                slot,
                                store: None,
                            });
                        }
                        Err(e) => rep.errors.push(format!(
                            "clone {}: not adopted, left running: {}",
                            r.id,
                            crate::error::chain(&*e)
                        )),
                    }
                }
                (pidfd, why) => {
                    let why = why.unwrap_or_default();
                    tracing::info!(clone = %r.id, "reclaiming a recorded clone: {why}");
                    if let Some(fd) = pidfd.filter(|_| state::same_process(r.pid, r.pid_start)) {
                        let _ = sys::pidfd::pidfd_send_signal(&fd, libc::SIGKILL);
                        let _ = sys::pidfd::pidfd_exited(&fd, 5_000);
                    }
                    reap_if_ours(&r);
                    rep.errors.extend(self.remove_recorded_files(&r));
                    if let Err(e) = self.state.remove(&r.id) {
                        rep.errors.push(crate::error::chain(&e));
                    }
                    // Its slot was set aside while its VMM still held it.
                    let held = self.slots().adopt(r.slot);
                    if let Ok(slot) = held {
                        rep.errors.extend(self.give_back(&r.id, slot));
                    }
                    rep.reclaimed.push(r.id);
                }
            }
        }
        rep
    }

    /// Removes an adopted clone's files by its record: its directory
    /// (named `wasp-<id>`, and only when it carries the state dir's mark),
    /// its cgroup and jail. Every error, one line each.
    pub(crate) fn remove_recorded_files(&self, rec: &CloneRecord) -> Vec<String> {
        let mut errors = Vec::new();
        let name = format!("{PREFIX}-{}", rec.id);
        match rec.clone_dir.parent() {
            Some(clones_dir) if rec.clone_dir.file_name() == Some(name.as_ref()) => {
                if let Err(e) = remove_owned_clone_dir(clones_dir, &rec.id, &self.owner) {
                    errors.push(format!("cleanup failed: {}", crate::error::chain(&e)));
                }
            }
            _ => errors.push(format!(
                "clone {}: its recorded directory {} is not named {name}; left alone",
                rec.id,
                rec.clone_dir.display()
            )),
        }
        for e in launch::remove_isolation(rec.cgroup.as_deref(), rec.jail_dir.as_deref()) {
            errors.push(format!("cleanup failed: {}", crate::error::chain(&e)));
        }
        for e in &errors {
            tracing::warn!(clone = %rec.id, "{e}");
        }
        errors
    }
}

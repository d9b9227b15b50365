//! Control of live clones: look-up, pause and resume through the VMM's
//! API, TTL changes, and kills by label.
//!
//! Pause and resume are Firecracker's `PATCH /vm` over the clone's API
//! socket (its path is in the record). The clone keeps its slot, files,
//! pidfd watch and TTL; the paused state is recorded, so an engine that
//! adopts the clone after a restart knows it: a pause is recorded before
//! the call and a resume after it, so a record that says running is
//! always right and one that says paused is checked with the VMM on
//! adoption. The API call is made with the live set unlocked; a clone
//! killed meanwhile is reported as gone.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{lock, ttl, Core, Engine, EngineError, LiveClone, ReapCause, Reaped, Running};
use crate::engine::batch::Slots;
use crate::vmm::api::{Client, VmRunState};

/// How long a pause or resume may take over the API socket.
const VMM_API_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the VMM behind `sock` reports itself paused (`GET /`), when it
/// answers within a second.
pub(crate) fn vmm_paused(sock: &std::path::Path) -> Option<bool> {
    let mut c = Client::connect(sock).ok()?;
    c.set_timeout(Duration::from_secs(1));
    match c.get_instance_info().ok()?.state.as_str() {
        "Paused" => Some(true),
        "Running" => Some(false),
        _ => None,
    }
}

/// True when `have` holds every pair of `want`.
pub(crate) fn labels_match(
    have: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

impl<S: Slots + 'static> Core<S> {
    /// Sets a live clone's paused flag and writes its record (a failed
    /// write is logged: the VMM's state is checked again on adoption).
    fn set_recorded_pause(&self, r: &mut Running, paused: bool) {
        r.record.paused = paused;
        if let Err(e) = self.state.put(&r.record) {
            tracing::warn!(clone = %r.record.id, "cannot record the paused state: {}", crate::error::chain(&e));
        }
    }
}

impl<S: Slots + 'static> Engine<S> {
    /// The live clone `id`, if this engine runs it.
    pub fn get(&self, id: &str) -> Option<LiveClone> {
        let live = lock(&self.core.live);
        let t = live.by_id.get(id)?;
        live.by_token.get(t).map(|r| r.live())
    }

    /// Pauses the clone's vCPUs (`PATCH /vm {"state":"Paused"}` over its
    /// API socket). It keeps its slot, files and TTL; the paused state is
    /// recorded. A paused clone whose VMM exits is still reaped.
    /// [`EngineError::WrongState`] when it is paused already.
    pub fn pause(&self, id: &str) -> Result<LiveClone, EngineError> {
        self.set_paused(id, true)
    }

    /// Resumes a paused clone (`PATCH /vm {"state":"Resumed"}`).
    /// [`EngineError::WrongState`] when it is running.
    pub fn resume(&self, id: &str) -> Result<LiveClone, EngineError> {
        self.set_paused(id, false)
    }

    fn set_paused(&self, id: &str, pause: bool) -> Result<LiveClone, EngineError> {
        let gone = || EngineError::NoClone(id.to_owned());
        let sock = {
            let mut live = lock(&self.core.live);
            let (_, r) = live.get_mut(id).ok_or_else(gone)?;
            if r.record.paused == pause {
                return Err(EngineError::WrongState {
                    id: id.to_owned(),
                    state: r.live().state,
                    hint: if pause {
                        "resume it first, or leave it paused"
                    } else {
                        "pause it first"
                    },
                });
            }
            // A pause is recorded before it is made (and a resume after):
            // a crash in between leaves a record that says paused, which
            // adoption checks with the VMM; a record that says running is
            // always right. It also keeps a second pause out meanwhile.
            if pause {
                self.core.set_recorded_pause(r, true);
            }
            r.record.api_sock.clone()
        };
        let (call, to) = if pause {
            ("PATCH /vm Paused", VmRunState::Paused)
        } else {
            ("PATCH /vm Resumed", VmRunState::Resumed)
        };
        let made = Client::connect(&sock).and_then(|mut c| {
            c.set_timeout(VMM_API_TIMEOUT);
            c.patch_vm(to)
        });
        let mut live = lock(&self.core.live);
        let (_, r) = live.get_mut(id).ok_or_else(gone)?;
        match made {
            Ok(()) => {
                if !pause {
                    self.core.set_recorded_pause(r, false);
                }
                Ok(r.live())
            }
            Err(source) => {
                if pause {
                    self.core.set_recorded_pause(r, false);
                }
                Err(EngineError::Vmm {
                    id: id.to_owned(),
                    call,
                    source,
                })
            }
        }
    }

    /// Sets the clone's deadline to now + `ttl` (extends or shortens it);
    /// `None` clears it. The deadline is recorded; a deadline already
    /// past stops the clone at once (on the reaper's thread).
    pub fn set_ttl(&self, id: &str, ttl: Option<Duration>) -> Result<LiveClone, EngineError> {
        let mut live = lock(&self.core.live);
        let (token, r) = live
            .get_mut(id)
            .ok_or_else(|| EngineError::NoClone(id.to_owned()))?;
        let old = r.record.expires_at_ms;
        r.record.expires_at_ms = ttl.map(ttl::deadline_ms);
        if let Err(e) = self.core.state.put(&r.record) {
            tracing::warn!(clone = %id, "cannot record the TTL: {}", crate::error::chain(&e));
        }
        let (new, c) = (r.record.expires_at_ms, r.live());
        if let Some(d) = old {
            live.deadlines.remove(&(d, token));
        }
        if let Some(d) = new {
            live.deadlines.insert((d, token));
        }
        self.core.arm_timer(&live);
        Ok(c)
    }

    /// Stops every live clone whose labels include all of `labels` (every
    /// clone when `labels` is empty), as [`Engine::kill`] does each.
    pub fn kill_matching(&self, labels: &BTreeMap<String, String>, grace: Duration) -> Vec<Reaped> {
        let runs: Vec<_> = {
            let mut live = lock(&self.core.live);
            let ids: Vec<String> = live
                .by_token
                .values()
                .filter(|r| labels_match(&r.record.labels, labels))
                .map(|r| r.record.id.clone())
                .collect();
            ids.iter().filter_map(|id| live.take_id(id)).collect()
        };
        self.core.stop_many(runs, grace, ReapCause::Killed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_clone_matches_when_its_labels_include_every_pair_asked() {
        let have = m(&[("team", "a"), ("job", "7")]);
        assert!(labels_match(&have, &m(&[])));
        assert!(labels_match(&have, &m(&[("team", "a")])));
        assert!(labels_match(&have, &m(&[("team", "a"), ("job", "7")])));
        assert!(!labels_match(&have, &m(&[("team", "b")])));
        assert!(!labels_match(&have, &m(&[("team", "a"), ("x", "1")])));
        assert!(!labels_match(&m(&[]), &m(&[("team", "a")])));
    }
}

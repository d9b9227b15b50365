//! Control of live clones: look-up, pause and resume through the VMM's
//! API, TTL changes, and kills by label.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Engine, EngineError, LiveClone, Reaped};
use crate::engine::batch::Slots;

impl<S: Slots + 'static> Engine<S> {
    /// The live clone `id`, if this engine runs it.
    pub fn get(&self, id: &str) -> Option<LiveClone> {
        let _ = id;
        todo!()
    }

    /// Pauses the clone's vCPUs (`PATCH /vm {"state":"Paused"}` over its
    /// API socket). It keeps its slot, files and TTL; the paused state is
    /// recorded. A paused clone whose VMM exits is still reaped.
    pub fn pause(&self, id: &str) -> Result<LiveClone, EngineError> {
        let _ = id;
        todo!()
    }

    /// Resumes a paused clone (`PATCH /vm {"state":"Resumed"}`).
    pub fn resume(&self, id: &str) -> Result<LiveClone, EngineError> {
        let _ = id;
        todo!()
    }

    /// Sets the clone's deadline to now + `ttl` (extends or shortens it);
    /// `None` clears it. The deadline is recorded.
    pub fn set_ttl(&self, id: &str, ttl: Option<Duration>) -> Result<LiveClone, EngineError> {
        let _ = (id, ttl);
        todo!()
    }

    /// Stops every live clone whose labels include all of `labels` (every
    /// clone when `labels` is empty), as [`Engine::kill`] does each.
    pub fn kill_matching(&self, labels: &BTreeMap<String, String>, grace: Duration) -> Vec<Reaped> {
        let _ = (labels, grace);
        todo!()
    }
}

//! Restart adoption: [`Engine::open`] takes over the live clones its state
//! dir records for its pool, and reclaims the records whose VMM is gone.

use serde::Serialize;

use super::Engine;
use crate::engine::batch::Slots;

/// What [`Engine::open`] adopted and reclaimed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdoptReport {
    /// Clones adopted (watched, listed, killable, with their labels and
    /// TTL).
    pub adopted: Vec<String>,
    /// Records whose VMM was gone: files, isolation and record removed,
    /// slot given back.
    pub reclaimed: Vec<String>,
    /// What could not be done, one line each.
    pub errors: Vec<String>,
}

impl<S: Slots + 'static> Engine<S> {
    /// What [`Engine::open`] adopted and reclaimed (empty for an engine
    /// opened with [`Engine::with_slots`]).
    pub fn adopted(&self) -> AdoptReport {
        todo!()
    }
}

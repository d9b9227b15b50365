//! What the host can still take ([`Capacity`]) and the warm pool's marks
//! at run time ([`PoolMarks`]).

use serde::{Deserialize, Serialize};

use super::{Engine, EngineError};
use crate::engine::batch::Slots;
use crate::pipeline::pool::PoolStatus;

/// Host memory one more clone takes: the 1 614 KiB per Firecracker clone
/// measured in docs/benchmarks.md with 1 000 clones held at once (the
/// VMM's unique memory plus its kernel objects; guest memory is shared
/// with the snapshot's page cache and not counted).
pub const MEM_PER_CLONE_BYTES: u64 = 1_614 * 1024;

/// What the host can still take, for an external placer.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// Free warm slots now.
    pub free_slots: usize,
    /// Slots the pool holds (free and taken).
    pub pool_slots: usize,
    /// The most slots the pool can hold (its CIDR and index limit).
    pub max_slots: usize,
    /// Live clones of this engine.
    pub clones: usize,
    /// `MemAvailable` of /proc/meminfo.
    pub mem_available_bytes: u64,
    /// Host memory one more clone takes ([`MEM_PER_CLONE_BYTES`]).
    pub mem_per_clone_bytes: u64,
    /// Fds this process has open.
    pub fds_open: u64,
    /// Its RLIMIT_NOFILE (hard limit: the engine raises the soft one).
    pub fd_limit: u64,
    /// More clones this host can take now: the least of the slots left,
    /// the memory left and the fds left.
    pub clones_possible: usize,
}

/// The warm pool's marks, set at run time ([`Engine::set_pool_marks`]);
/// a field left `None` keeps its value.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct PoolMarks {
    /// The warm target: free slots the pool is built up to (at once, in
    /// the background) and refilled to; free slots above it are
    /// destroyed.
    pub size: Option<usize>,
    /// The background refill starts when fewer slots than this are free.
    pub low_water: Option<usize>,
    /// Slots given back above this many free ones are destroyed.
    pub high_water: Option<usize>,
}

impl<S: Slots + 'static> Engine<S> {
    /// What the host can still take (see [`Capacity`]).
    pub fn capacity(&self) -> Capacity {
        todo!()
    }

    /// Re-marks the warm pool at run time: checked (`low_water <= size <=
    /// high_water`, `size <= max_slots`), then the refill builds up to the
    /// new size in the background and surplus free slots are destroyed.
    pub fn set_pool_marks(&self, marks: PoolMarks) -> Result<PoolStatus, EngineError> {
        let _ = marks;
        todo!()
    }

    /// True once the pool has reached its warm target after the engine
    /// opened (and adopted its clones); it stays true (for `/readyz`).
    pub fn is_warm(&self) -> bool {
        todo!()
    }
}

//! What the host can still take ([`Capacity`]) and the warm pool's marks
//! at run time ([`PoolMarks`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{lock, ttl, Core, Engine, EngineError};
use crate::engine::batch::Slots;
use crate::pipeline::pool::PoolStatus;

/// Host memory one more clone takes: the 1 614 KiB per Firecracker clone
/// measured in docs/benchmarks.md with 1 000 clones held at once (the
/// VMM's unique memory plus its kernel objects; guest memory is shared
/// with the snapshot's page cache and not counted).
pub const MEM_PER_CLONE_BYTES: u64 = 1_614 * 1024;

/// Fds a live clone keeps open in wasp (its pidfd, and one spare), as the
/// engine's fd limit raise counts them.
pub const FDS_PER_CLONE: u64 = 2;
/// Fds kept back for each clone in flight (API socket, netns, route
/// socket, pipes) and for the engine itself.
pub const FDS_PER_IN_FLIGHT: u64 = 8;

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

/// `MemAvailable` of a /proc/meminfo text, in bytes.
pub(crate) fn mem_available(meminfo: &str) -> Option<u64> {
    let kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// The least of what slots, memory and fds allow.
pub(crate) fn clones_possible(c: &Capacity, in_flight_reserve: u64) -> usize {
    let slots = c
        .free_slots
        .saturating_add(c.max_slots.saturating_sub(c.pool_slots));
    let mem = c.mem_available_bytes / c.mem_per_clone_bytes.max(1);
    let fds = c
        .fd_limit
        .saturating_sub(c.fds_open)
        .saturating_sub(in_flight_reserve)
        / FDS_PER_CLONE;
    slots
        .min(usize::try_from(mem).unwrap_or(usize::MAX))
        .min(usize::try_from(fds).unwrap_or(usize::MAX))
}

/// Checks `marks` merged over the pool's current ones: `low_water <= size
/// <= high_water` and `size <= max_slots`.
pub(crate) fn check_marks(
    marks: &PoolMarks,
    now: &PoolStatus,
    max_slots: usize,
) -> Result<(), EngineError> {
    let size = marks.size.unwrap_or(now.size);
    let low = marks.low_water.unwrap_or(now.low_water);
    let high = marks.high_water.unwrap_or(now.high_water);
    let bad = |m: String| Err(EngineError::BadMarks(m));
    if size > max_slots {
        return bad(format!(
            "size {size} is over the {max_slots} slots the pool's CIDR holds; use a larger clone CIDR or a smaller size"
        ));
    }
    if low > size {
        return bad(format!(
            "low_water {low} is above size {size}; the refill builds up to size when fewer than low_water are free, so use low_water <= size"
        ));
    }
    if size > high {
        return bad(format!(
            "size {size} is above high_water {high}; slots above high_water are destroyed, so use size <= high_water"
        ));
    }
    Ok(())
}

impl<S: Slots + 'static> Core<S> {
    pub(crate) fn capacity(&self) -> Capacity {
        self.capacity_with(None)
    }

    /// [`Core::capacity`]; with `in_flight`, the open fds are estimated
    /// (the count at open, plus [`FDS_PER_CLONE`] per live clone and
    /// [`FDS_PER_IN_FLIGHT`] per clone in flight) instead of listed:
    /// listing /proc/self/fd costs milliseconds with thousands of fds,
    /// too much for every request.
    pub(crate) fn capacity_with(&self, in_flight: Option<usize>) -> Capacity {
        let (status, max_slots) = {
            let s = self.slots();
            (s.status(), s.max_slots())
        };
        let (free, pool_slots) = status.map_or((0, 0), |st| (st.free, st.free + st.in_use));
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| mem_available(&m))
            .unwrap_or(0);
        let clones = lock(&self.live).by_token.len();
        let fds_open = match in_flight {
            None => crate::sys::rlimit::open_fds().unwrap_or(0),
            Some(n) => {
                self.base_fds.load(Ordering::Relaxed)
                    + FDS_PER_CLONE * clones as u64
                    + FDS_PER_IN_FLIGHT * n as u64
            }
        };
        let mut c = Capacity {
            free_slots: free,
            pool_slots,
            max_slots,
            clones,
            mem_available_bytes: mem,
            mem_per_clone_bytes: MEM_PER_CLONE_BYTES,
            fds_open,
            fd_limit: crate::sys::rlimit::nofile().map_or(0, |(_, hard)| hard),
            clones_possible: 0,
        };
        c.clones_possible = clones_possible(&c, self.parallel as u64 * FDS_PER_IN_FLIGHT);
        c
    }

    /// When a refused request may be retried: at the next TTL deadline
    /// (within 1 to 60 s), else in 1 s (exits and the refill free room
    /// at any time).
    pub(crate) fn retry_after(&self) -> Duration {
        let next = lock(&self.live).deadlines.first().map(|(d, _)| *d);
        let wait = next.map_or(1_000, |d| d.saturating_sub(ttl::now_ms()));
        Duration::from_millis(wait.clamp(1_000, 60_000))
    }
}

impl<S: Slots + 'static> Engine<S> {
    /// What the host can still take (see [`Capacity`]).
    pub fn capacity(&self) -> Capacity {
        self.core.capacity()
    }

    /// Re-marks the warm pool at run time: checked (`low_water <= size <=
    /// high_water`, `size <= max_slots`; [`EngineError::BadMarks`] names
    /// the field), then the refill builds up to the new size in the
    /// background and surplus free slots are destroyed at once.
    pub fn set_pool_marks(&self, marks: PoolMarks) -> Result<PoolStatus, EngineError> {
        let mut s = self.core.slots();
        let now = s.status().ok_or_else(|| {
            EngineError::BadMarks("this engine's slot provider has no pool to re-mark".into())
        })?;
        check_marks(&marks, &now, s.max_slots())?;
        s.set_marks(marks).map_err(EngineError::Marks)
    }

    /// True once the pool has reached its warm target after the engine
    /// opened (and adopted its clones: [`Engine::open`] returns after
    /// that); it stays true (for `/readyz`).
    pub fn is_warm(&self) -> bool {
        let c = &self.core;
        if c.warm.load(Ordering::Acquire) {
            return true;
        }
        let warm = c.slots().is_warm();
        if warm {
            c.warm.store(true, Ordering::Release);
        }
        warm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> Capacity {
        Capacity {
            free_slots: 10,
            pool_slots: 30,
            max_slots: 100,
            clones: 20,
            mem_available_bytes: 1000 * MEM_PER_CLONE_BYTES,
            mem_per_clone_bytes: MEM_PER_CLONE_BYTES,
            fds_open: 100,
            fd_limit: 100_000,
            clones_possible: 0,
        }
    }

    #[test]
    fn clones_possible_is_the_least_of_slots_memory_and_fds() {
        // Slots: 10 free + 70 never built.
        assert_eq!(clones_possible(&cap(), 0), 80);
        let c = Capacity {
            mem_available_bytes: 5 * MEM_PER_CLONE_BYTES + 1,
            ..cap()
        };
        assert_eq!(clones_possible(&c, 0), 5);
        let c = Capacity {
            fd_limit: 100 + 256 + 2 * 7 + 1,
            ..cap()
        };
        assert_eq!(clones_possible(&c, 256), 7);
        let c = Capacity {
            fd_limit: 50,
            ..cap()
        };
        assert_eq!(clones_possible(&c, 0), 0);
        let c = Capacity {
            pool_slots: 100,
            free_slots: 0,
            ..cap()
        };
        assert_eq!(clones_possible(&c, 0), 0);
    }

    #[test]
    fn mem_available_reads_meminfo_in_bytes() {
        let m = "MemTotal:       24684000 kB\nMemFree:         7771000 kB\nMemAvailable:   23193920 kB\n";
        assert_eq!(mem_available(m), Some(23_193_920 * 1024));
        assert_eq!(mem_available("MemFree: 1 kB\n"), None);
        let real = std::fs::read_to_string("/proc/meminfo").unwrap();
        assert!(mem_available(&real).unwrap() > 0);
    }

    fn status(size: usize, low: usize, high: usize) -> PoolStatus {
        PoolStatus {
            free: 0,
            in_use: 0,
            size,
            low_water: low,
            high_water: high,
            refill_failures: 0,
        }
    }

    #[test]
    fn marks_are_checked_merged_over_the_current_ones() {
        let now = status(10, 5, 20);
        let ok = |m: PoolMarks| check_marks(&m, &now, 100).map(drop);
        ok(PoolMarks::default()).unwrap();
        ok(PoolMarks {
            size: Some(20),
            ..Default::default()
        })
        .unwrap();
        let e = ok(PoolMarks {
            size: Some(30),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("size 30 is above high_water 20"),
            "{e}"
        );
        let e = ok(PoolMarks {
            low_water: Some(11),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("low_water 11 is above size 10"),
            "{e}"
        );
        let e = ok(PoolMarks {
            size: Some(200),
            high_water: Some(300),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("over the 100 slots"), "{e}");
        ok(PoolMarks {
            size: Some(0),
            low_water: Some(0),
            high_water: Some(0),
        })
        .unwrap();
    }
}

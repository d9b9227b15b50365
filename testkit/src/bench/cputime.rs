//! A criterion measurement of the calling thread's CPU time
//! (CLOCK_THREAD_CPUTIME_ID) instead of wall time: a bench that is
//! descheduled because a neighbour compiles on the same two cores is not
//! charged for the time it did not run. The regression gate's benches are
//! single-threaded, so this is all of their work.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use nix::time::{clock_gettime, ClockId};

/// Thread CPU time, formatted like wall time.
pub struct ThreadCpuTime(WallTime);

impl Default for ThreadCpuTime {
    fn default() -> Self {
        Self(WallTime)
    }
}

fn now() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("CLOCK_THREAD_CPUTIME_ID");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        now()
    }
    fn end(&self, start: Duration) -> Duration {
        now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.0.formatter()
    }
}

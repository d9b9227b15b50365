//! Clone TTLs. A deadline is absolute (Unix epoch ms) and recorded with
//! the clone, so an engine that adopts the clone after a restart keeps it.
//! The live clones' deadlines sit in one ordered set; one timerfd on the
//! real-time clock, in the reaper's epoll beside the pidfds, is armed at
//! the earliest. When it fires, the reaper stops every clone whose time is
//! up (cause [`ReapCause::TtlExpired`]) and re-arms it: no periodic wake-up,
//! no sleep. The timer is re-armed under the live set's lock whenever the
//! set changes its earliest deadline ([`Core::watch`], [`Engine::set_ttl`]);
//! a clone that leaves the set early may leave the timer armed at its old
//! deadline, which then fires, finds nothing due and re-arms.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{lock, Core, Live, ReapCause, Running};
use crate::engine::batch::Slots;

/// Now, as Unix epoch milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The deadline `ttl` from now (Unix epoch ms).
pub(crate) fn deadline_ms(ttl: Duration) -> u64 {
    now_ms().saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64)
}

/// The clones of `live` whose deadline is at or before `now`, earliest
/// first (their tokens).
pub(crate) fn due(live: &Live, now: u64) -> Vec<u64> {
    live.deadlines
        .iter()
        .take_while(|(d, _)| *d <= now)
        .map(|(_, t)| *t)
        .collect()
}

impl<S: Slots + 'static> Core<S> {
    /// Arms the TTL timer at the earliest deadline of `live` (disarms it
    /// when there is none). Called with the live set locked.
    pub(crate) fn arm_timer(&self, live: &Live) {
        let next = live.deadlines.first().map(|(d, _)| *d);
        if let Err(e) = self.timer.arm_at(next) {
            tracing::error!("cannot arm the TTL timer: {e}; clone TTLs may end late");
        }
    }

    /// The TTL timer fired: stops every clone whose time is up and
    /// re-arms the timer at the next deadline.
    pub(crate) fn expire(&self) {
        if let Err(e) = self.timer.drain() {
            tracing::warn!("cannot read the TTL timer: {e}");
        }
        let runs: Vec<Running> = {
            let mut live = lock(&self.live);
            let now = now_ms();
            let runs = due(&live, now)
                .into_iter()
                .filter_map(|t| live.take_token(t))
                .collect();
            self.arm_timer(&live);
            runs
        };
        for run in &runs {
            tracing::info!(clone = %run.record.id, pid = run.record.pid, "the clone's TTL ended; stopping it");
        }
        self.stop_many(runs, Duration::ZERO, ReapCause::TtlExpired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deadlines_at_or_before_now_are_due_earliest_first() {
        let mut live = Live::default();
        live.deadlines
            .extend([(300, 3), (100, 1), (200, 2), (200, 4)]);
        assert_eq!(due(&live, 99), Vec::<u64>::new());
        assert_eq!(due(&live, 200), vec![1, 2, 4]);
        assert_eq!(due(&live, u64::MAX), vec![1, 2, 4, 3]);
    }

    #[test]
    fn a_deadline_is_now_plus_the_ttl_and_never_overflows() {
        let before = now_ms();
        let d = deadline_ms(Duration::from_secs(5));
        assert!(d >= before + 5_000 && d <= now_ms() + 5_000, "{d}");
        assert_eq!(deadline_ms(Duration::MAX), u64::MAX);
    }
}

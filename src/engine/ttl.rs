//! Clone TTLs: deadlines (Unix epoch ms) and the reaper's timer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

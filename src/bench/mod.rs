//! Measurements: the `wasp demo` / `wasp bench spawn` runner ([`demo`]),
//! its `/proc` accounting ([`proc`]), `wasp bench slots` ([`slots`]),
//! `wasp bench clone` ([`clone`]) and `wasp bench spawn` ([`spawn`])
//! measurements, the criterion regression gate
//! ([`gate`]), bench output comparison ([`compare`]) and latency plots
//! ([`plot`]).
//!
//! May use: every layer below it (`engine`, `ops`, `pipeline`, …). Nothing
//! but the CLI uses it.

pub mod clone;
pub mod compare;
pub mod demo;
pub mod gate;
pub mod plot;
pub mod proc;
pub mod slots;
pub mod spawn;

/// `p` as a JSON value. (Numbers only: serializing cannot fail, and a
/// non-finite figure would read `null` either way.)
pub(crate) fn percentiles_value(p: crate::stats::Percentiles) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or_default()
}

//! Measurements: the `wasp demo` / `wasp bench spawn` runner ([`demo`]),
//! its `/proc` accounting ([`proc`]), `wasp bench slots` ([`slots`]) and
//! `wasp bench clone` ([`clone`]) measurements, the criterion regression gate
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

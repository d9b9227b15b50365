//! wasp: restores Firecracker microVM clones from one golden snapshot, fast
//! and densely.
//!
//! The library holds all logic; `src/main.rs` and `src/cli/` are a thin
//! CLI. The layers, lowest first; each uses only those listed before it
//! (and the leaf modules), never one after it. `docs/architecture.md` draws
//! them as the pipeline.

#![deny(missing_docs)]

/// Measurements: the demo and bench runners, the regression gate, compare, plots.
pub mod bench;
/// The config file and the effective settings.
pub mod config;
/// The long-lived engine that runs the pipeline for many requests at once.
pub mod engine;
/// Error formatting (a leaf).
pub mod error;
/// Netlink message building and sockets (rtnetlink, nf_tables, ctnetlink).
pub mod netlink;
/// Recovery and host checks: reconcile, teardown, doctor.
pub mod ops;
/// Default locations and the `wasp` prefix of everything wasp creates (a leaf).
pub mod paths;
/// The pipeline stages: slot, pool, storage, launch, restore, ready and the drivers.
pub mod pipeline;
/// `wasp serve`: the HTTP API over the engine, metrics, auth and the daemon's life.
pub mod serve;
/// Snapshot directories: manifest, check, adopt, synth, warm and golden creation.
pub mod snapshot;
/// The stand-in VMM, its userspace guest network and the built-in test guest.
pub mod standin;
/// The state dir: clone records, owner marks, atomic writes.
pub mod state;
/// Percentiles and millisecond helpers (a leaf).
pub mod stats;
/// The report of a sweep for leftovers (a leaf of `state`).
pub mod sweep;
/// The only place for raw syscalls and `unsafe`.
pub mod sys;
/// `WASP_STOP_AT` stop points for the crash tests (a leaf).
pub mod testhook;
/// Directory chains only root can change (over `sys`).
pub mod trust;
/// The VMM: Firecracker's API client, finding Firecracker, jailer and cgroup.
pub mod vmm;

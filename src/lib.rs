//! wasp: restores Firecracker microVM clones from one golden snapshot, fast
//! and densely.
//!
//! The library holds all logic; `src/main.rs` is a thin CLI. See
//! `docs/architecture.md` for the pipeline stages and the modules that
//! implement them.

pub mod benchcmp;
pub mod benchgate;
pub mod cgroup;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod engine;
pub mod env;
pub mod error;
pub mod firecracker;
pub mod golden;
pub mod guestnet;
pub mod jailer;
pub mod launch;
pub mod lease;
pub mod netlink;
pub mod paths;
pub mod plot;
pub mod pool;
pub mod ready;
pub mod reconcile;
pub mod registry;
pub mod restore;
pub mod ring;
pub mod slot;
pub mod snapshot;
pub mod spawn;
pub mod standin;
pub mod state;
pub mod stats;
pub mod storage;
pub mod sweep;
pub mod sys;
pub mod teardown;
pub mod testguest;
pub mod testhook;
pub mod trust;
pub mod vmm_api;
pub mod vmstate;

//! Clone storage: the pipeline stage that gives each clone its own writable
//! disk without copying what can be shared.
//!
//! [`CloneStore`] probes the runtime directory once and then prepares and
//! cleans up clones' files; memory is never copied (see [`clone`]).
//! [`store`] makes a runtime directory reflink-capable on any host (an XFS
//! image on a loop device) and places snapshots in it.

pub mod clone;
pub mod probe;
pub mod store;

pub use clone::{
    allocated_bytes, make_drive, probe_clone_strategy, reconcile_dir, CloneDrive, CloneFiles,
    CloneStore, Mode, ProbeOutcome, StorageError, CLONES_SUBDIR,
};
pub use store::reattach;

//! Clone storage: the pipeline stage that gives each clone its own writable
//! disk without copying what can be shared.
//!
//! [`CloneStore`] probes the runtime directory once and then prepares and
//! cleans up clones' files; memory is never copied (see [`clone`]).

pub mod clone;
pub mod probe;

pub use clone::{
    make_drive, probe_clone_strategy, reconcile_dir, CloneDrive, CloneFiles, CloneStore, Mode,
    ProbeOutcome, StorageError, CLONES_SUBDIR,
};

//! The report of a sweep for leftovers: clone dirs, jails and per-clone
//! cgroups that no live clone holds. A leaf, shared by storage, the VMM
//! isolation modules and reconcile.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What a sweep did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Orphaned clone directories removed.
    pub removed: Vec<PathBuf>,
    /// Live clone directories kept.
    pub kept: usize,
    /// Objects named like wasp's that do not carry this state dir's mark:
    /// another state dir's, or not wasp's. Left alone.
    pub not_ours: Vec<PathBuf>,
    /// Every error met (reconcile continues past them).
    pub errors: Vec<String>,
}

impl ReconcileReport {
    /// Keeps a live clone's `path`, or removes a dead one's with `remove`,
    /// and records which (or the error).
    pub fn settle<E: std::error::Error>(
        &mut self,
        live: bool,
        path: PathBuf,
        remove: impl FnOnce(&Path) -> Result<(), E>,
    ) {
        if live {
            self.kept += 1;
            return;
        }
        match remove(&path) {
            Ok(()) => self.removed.push(path),
            Err(e) => self.errors.push(crate::error::chain(&e)),
        }
    }

    /// Lists `dir` for a reconcile: `None` when it is missing (nothing to
    /// do) or cannot be listed (the error is recorded).
    pub fn list(&mut self, dir: &Path) -> Option<fs::ReadDir> {
        match fs::read_dir(dir) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                self.errors
                    .push(format!("cannot list {}: {e}", dir.display()));
                None
            }
        }
    }
}

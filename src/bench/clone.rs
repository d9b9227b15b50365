//! `wasp bench clone`: per-clone storage prep and cleanup times, bytes
//! copied, and a `cp`-equivalent baseline of the same files measured in the
//! same run.
//!
//! The baseline is what the seed did per VM: copy the vmstate, the memory
//! file and every drive image with a plain userspace read/write loop (like
//! `cp --reflink=never --sparse=never`; 1 MiB buffer, no fsync), into a
//! `wasp-`-prefixed directory in the same runtime dir, removed afterwards.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::pipeline::storage::probe::Strategy;
use crate::pipeline::storage::{CloneStore, Mode, StorageError};
use crate::stats::{ms, Percentiles};

/// What `wasp bench clone` measures.
#[derive(Debug, Clone)]
pub struct CloneBenchOptions {
    /// Snapshot directory.
    pub snapshot: PathBuf,
    /// Runtime directory (its filesystem decides the strategy).
    pub runtime_dir: PathBuf,
    /// Clones to prepare and clean up.
    pub count: usize,
    /// The clone-disk strategy: the probe's best, or one forced.
    pub mode: Mode,
    /// Baseline full copies to time (0: none).
    pub baseline_runs: usize,
}

/// The figures.
#[derive(Debug, Serialize)]
pub struct BenchCloneReport {
    /// The command (`clone`), for `wasp bench compare`.
    pub kind: &'static str,
    /// The strategy the clones were prepared by.
    pub strategy: Strategy,
    /// Why: the probe's reason, or that `--strategy` forced it.
    pub strategy_reason: String,
    /// The snapshot directory.
    pub snapshot: PathBuf,
    /// The runtime directory.
    pub runtime_dir: PathBuf,
    /// Clones prepared.
    pub count: usize,
    /// The snapshot's guest memory (MiB).
    pub mem_mib: u64,
    /// The snapshot's writable drives (bytes).
    pub disk_bytes: u64,
    /// Per-clone prep (ms).
    pub prep_ms: Percentiles,
    /// Per-clone cleanup (ms).
    pub cleanup_ms: Percentiles,
    /// Bytes copied over all clones.
    pub bytes_copied_total: u64,
    /// Of those, memory-file bytes.
    pub mem_bytes_copied: u64,
    /// The plain-copy baseline, when run.
    pub baseline: Option<Baseline>,
    /// baseline p50 / prep p50.
    pub speedup_p50: Option<f64>,
    /// Per-clone prep times (ms), for the plot.
    #[serde(skip)]
    pub prep_samples: Vec<f64>,
    /// Per-clone cleanup times (ms), for the plot.
    #[serde(skip)]
    pub cleanup_samples: Vec<f64>,
}

/// The plain-copy baseline.
#[derive(Debug, Serialize)]
pub struct Baseline {
    /// How the files were copied.
    pub method: &'static str,
    /// Bytes one run copied.
    pub bytes_per_run: u64,
    /// Per-run time (ms).
    pub ms: Percentiles,
}

/// What stopped `wasp bench clone`.
#[derive(Debug, Error)]
pub enum CloneBenchError {
    /// No clones asked for.
    #[error("--count must be at least 1")]
    NoCount,
    /// The snapshot or runtime dir could not be used.
    #[error("cannot open the clone store")]
    Open(#[source] StorageError),
    /// A clone's prep failed.
    #[error("clone {0}")]
    Prepare(usize, #[source] StorageError),
    /// A clone's cleanup failed.
    #[error("clone {0} cleanup")]
    Cleanup(usize, #[source] StorageError),
    /// A baseline step (`create DIR`, `baseline copy of FILE`, `remove DIR`).
    #[error("{0}")]
    Baseline(String, #[source] std::io::Error),
}

/// Runs `wasp bench clone`; `on_clone` is called as each clone is prepared
/// and cleaned up.
pub fn run(
    o: &CloneBenchOptions,
    on_clone: &mut dyn FnMut(),
) -> Result<BenchCloneReport, CloneBenchError> {
    if o.count == 0 {
        return Err(CloneBenchError::NoCount);
    }
    let store =
        CloneStore::open(&o.snapshot, &o.runtime_dir, o.mode).map_err(CloneBenchError::Open)?;
    let m = store.manifest().clone();
    let pid = std::process::id();
    let mut prep = Vec::with_capacity(o.count);
    let mut cleanup = Vec::with_capacity(o.count);
    let (mut copied, mut mem_copied) = (0u64, 0u64);
    for i in 0..o.count {
        let id = format!("bench-{pid}-{i}");
        let t = Instant::now();
        let files = store
            .prepare(&id)
            .map_err(|e| CloneBenchError::Prepare(i, e))?;
        prep.push(ms(t.elapsed()));
        copied += files.bytes_copied;
        mem_copied += files.mem_bytes_copied;
        let t = Instant::now();
        store
            .cleanup(&id)
            .map_err(|e| CloneBenchError::Cleanup(i, e))?;
        cleanup.push(ms(t.elapsed()));
        on_clone();
    }

    let mut files: Vec<PathBuf> = vec![
        o.snapshot.join(&m.vmstate.file),
        o.snapshot.join(&m.memory.file),
    ];
    files.extend(m.drives.iter().map(|d| o.snapshot.join(&d.file)));
    let baseline = if o.baseline_runs == 0 {
        None
    } else {
        let dir = store
            .clones_dir()
            .join(format!("{}-bench-{pid}-baseline", crate::paths::PREFIX));
        Some(baseline(&dir, &files, o.baseline_runs)?)
    };
    let prep_ms = Percentiles::of(&prep);
    let speedup_p50 = baseline.as_ref().map(|b| b.ms.p50 / prep_ms.p50.max(1e-6));
    Ok(BenchCloneReport {
        kind: "clone",
        strategy: store.strategy(),
        strategy_reason: match o.mode {
            Mode::Auto => store.probe().reason.clone(),
            Mode::Force(s) => format!(
                "forced by --strategy {s}; the probe found: {}",
                store.probe().reason
            ),
        },
        snapshot: o.snapshot.clone(),
        runtime_dir: o.runtime_dir.clone(),
        count: o.count,
        mem_mib: m.mem_mib,
        disk_bytes: m
            .drives
            .iter()
            .filter(|d| !d.read_only)
            .map(|d| d.size)
            .sum(),
        prep_ms,
        cleanup_ms: Percentiles::of(&cleanup),
        bytes_copied_total: copied,
        mem_bytes_copied: mem_copied,
        baseline,
        speedup_p50,
        prep_samples: prep,
        cleanup_samples: cleanup,
    })
}

/// `runs` plain copies of `files` into `dir` (made and removed each run,
/// and removed on every exit path).
fn baseline(dir: &Path, files: &[PathBuf], runs: usize) -> Result<Baseline, CloneBenchError> {
    let io = |what: String| move |e| CloneBenchError::Baseline(what, e);
    let guard = RemoveOnDrop(dir.to_owned());
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..runs {
        fs::create_dir(dir).map_err(io(format!("create {}", dir.display())))?;
        let t = Instant::now();
        bytes = 0;
        for f in files {
            bytes += plain_copy(f, &dir.join(f.file_name().unwrap_or_default()))
                .map_err(io(format!("baseline copy of {}", f.display())))?;
        }
        times.push(ms(t.elapsed()));
        fs::remove_dir_all(dir).map_err(io(format!("remove {}", dir.display())))?;
    }
    drop(guard);
    Ok(Baseline {
        method:
            "userspace read/write of vmstate + memory + drives (cp --reflink=never --sparse=never)",
        bytes_per_run: bytes,
        ms: Percentiles::of(&times),
    })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Copies `src` to `dst` with a 1 MiB read/write loop; the bytes copied.
fn plain_copy(src: &Path, dst: &Path) -> std::io::Result<u64> {
    let mut s = File::open(src)?;
    let mut d = File::create(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = s.read(&mut buf)?;
        if k == 0 {
            break;
        }
        d.write_all(&buf[..k])?;
        n += k as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_copies_every_byte_and_leaves_no_dir() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = t.path().join("b");
        fs::write(&a, vec![7u8; (1 << 20) + 3]).unwrap();
        fs::write(&b, b"xyz").unwrap();
        let dir = t.path().join("wasp-baseline");
        let r = baseline(&dir, &[a.clone(), b], 2).unwrap();
        assert_eq!(r.bytes_per_run, (1 << 20) + 6);
        assert_eq!(r.ms.n, 2);
        assert!(!dir.exists());
        // A file that is not there: one error naming it, and no dir left.
        let e = baseline(&dir, &[a, t.path().join("gone")], 1).unwrap_err();
        assert!(e.to_string().contains("baseline copy of"), "{e}");
        assert!(e.to_string().contains("gone"), "{e}");
        assert!(!dir.exists());
    }

    #[test]
    fn zero_clones_is_refused_before_the_store_opens() {
        let e = run(
            &CloneBenchOptions {
                snapshot: "/nonexistent".into(),
                runtime_dir: "/nonexistent".into(),
                count: 0,
                mode: Mode::Auto,
                baseline_runs: 0,
            },
            &mut || {},
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "--count must be at least 1");
    }
}

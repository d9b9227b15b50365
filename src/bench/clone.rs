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
    /// Keep every clone until all are prepared, and measure the disk they
    /// hold together (statfs) against as many full copies.
    pub hold: bool,
    /// The same prep in the same run for another snapshot dir and runtime
    /// dir (e.g. a copy of the snapshot on ext4: copy-file-range), and
    /// the plain-copy baseline there instead.
    pub compare: Option<CompareOptions>,
}

/// The side-by-side run of [`CloneBenchOptions::compare`].
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Snapshot dir (the same snapshot, on the other filesystem).
    pub snapshot: PathBuf,
    /// Runtime dir on the other filesystem.
    pub runtime_dir: PathBuf,
    /// Clones to prepare there (one at a time, each cleaned up).
    pub count: usize,
}

/// The figures of the side-by-side run.
#[derive(Debug, Serialize)]
pub struct CompareRun {
    /// Snapshot dir.
    pub snapshot: PathBuf,
    /// Runtime dir.
    pub runtime_dir: PathBuf,
    /// The strategy the probe chose there.
    pub strategy: Strategy,
    /// Clones prepared.
    pub count: usize,
    /// Per-clone prep (ms).
    pub prep_ms: Percentiles,
    /// Bytes copied per clone.
    pub bytes_copied_per_clone: u64,
}

/// What the clones held together ([`CloneBenchOptions::hold`]).
#[derive(Debug, Serialize)]
pub struct Held {
    /// Clones held at once.
    pub clones: usize,
    /// Bytes the runtime dir's filesystem used more with all of them
    /// (statfs), before any clone wrote.
    pub bytes_used: u64,
    /// What as many full copies of the writable drives would take
    /// (clones x the drives' allocated bytes).
    pub full_copy_bytes: u64,
    /// `bytes_used / full_copy_bytes` in percent.
    pub percent_of_full_copies: f64,
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
    /// The disk all clones held at once, with `--hold`.
    pub held: Option<Held>,
    /// The side-by-side prep on another filesystem.
    pub compare: Option<CompareRun>,
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
    /// The side-by-side run failed.
    #[error("the comparison run in {0}")]
    Compare(String, #[source] Box<StorageError>),
    /// syncfs or statfs of the runtime dir.
    #[error("syncfs or statfs {0}")]
    Statfs(String, #[source] std::io::Error),
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
    // Flushed first (syncfs), so the figure is what the filesystem holds.
    let used = |dir: &Path| -> Result<u64, CloneBenchError> {
        let io = |e: std::io::Error| CloneBenchError::Statfs(dir.display().to_string(), e);
        let d = File::open(dir).map_err(io)?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)).map_err(|e| io(e.into()))?;
        let st = nix::sys::statvfs::statvfs(dir)
            .map_err(|e| CloneBenchError::Statfs(dir.display().to_string(), e.into()))?;
        Ok((st.blocks() - st.blocks_free()) as u64 * st.fragment_size() as u64)
    };
    let used_before = if o.hold { used(store.clones_dir())? } else { 0 };
    // Held clones are cleaned up on every exit path.
    let mut held_ids = HeldClones(&store, Vec::new());
    for i in 0..o.count {
        let id = format!("bench-{pid}-{i}");
        let t = Instant::now();
        let files = store
            .prepare(&id)
            .map_err(|e| CloneBenchError::Prepare(i, e))?;
        prep.push(ms(t.elapsed()));
        copied += files.bytes_copied;
        mem_copied += files.mem_bytes_copied;
        if o.hold {
            held_ids.1.push(id);
            continue;
        }
        let t = Instant::now();
        store
            .cleanup(&id)
            .map_err(|e| CloneBenchError::Cleanup(i, e))?;
        cleanup.push(ms(t.elapsed()));
        on_clone();
    }
    let held = if o.hold {
        let bytes_used = used(store.clones_dir())?.saturating_sub(used_before);
        let per_clone = store.writable_bytes().map_err(|e| {
            CloneBenchError::Baseline(
                format!(
                    "read extents of the writable drives in {}",
                    store.snapshot_dir().display()
                ),
                e,
            )
        })?;
        let full_copy = per_clone * o.count as u64;
        for (i, id) in std::mem::take(&mut held_ids.1).into_iter().enumerate() {
            let t = Instant::now();
            store
                .cleanup(&id)
                .map_err(|e| CloneBenchError::Cleanup(i, e))?;
            cleanup.push(ms(t.elapsed()));
            on_clone();
        }
        Some(Held {
            clones: o.count,
            bytes_used,
            full_copy_bytes: full_copy,
            percent_of_full_copies: 100.0 * bytes_used as f64 / full_copy.max(1) as f64,
        })
    } else {
        None
    };
    let compare = match &o.compare {
        None => None,
        Some(c) => Some(compare_run(c, pid)?),
    };

    let mut files: Vec<PathBuf> = vec![
        o.snapshot.join(&m.vmstate.file),
        o.snapshot.join(&m.memory.file),
    ];
    files.extend(m.drives.iter().map(|d| o.snapshot.join(&d.file)));
    let baseline = if o.baseline_runs == 0 {
        None
    } else {
        // The seed copied in place: with a comparison run, the baseline
        // copies there (the other filesystem), from that snapshot.
        let (clones_dir, snap) = match &o.compare {
            Some(c) => (
                c.runtime_dir.join(crate::pipeline::storage::CLONES_SUBDIR),
                c.snapshot.clone(),
            ),
            None => (store.clones_dir().to_owned(), o.snapshot.clone()),
        };
        for f in files.iter_mut() {
            if let Some(name) = f.file_name() {
                *f = snap.join(name);
            }
        }
        let dir = clones_dir.join(format!("{}-bench-{pid}-baseline", crate::paths::PREFIX));
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
        held,
        compare,
        prep_samples: prep,
        cleanup_samples: cleanup,
    })
}

/// Clones `--hold` keeps; the ones still listed are removed on drop.
struct HeldClones<'a>(&'a CloneStore, Vec<String>);

impl Drop for HeldClones<'_> {
    fn drop(&mut self) {
        for id in &self.1 {
            if let Err(e) = self.0.cleanup(id) {
                tracing::warn!("bench clone: {}", crate::error::chain(&e));
            }
        }
    }
}

/// The same prep, one clone at a time, in the comparison dirs.
fn compare_run(c: &CompareOptions, pid: u32) -> Result<CompareRun, CloneBenchError> {
    let err = |e| CloneBenchError::Compare(c.runtime_dir.display().to_string(), Box::new(e));
    let store = CloneStore::open(&c.snapshot, &c.runtime_dir, Mode::Auto).map_err(err)?;
    let mut prep = Vec::with_capacity(c.count);
    let mut per_clone = 0;
    for i in 0..c.count.max(1) {
        let id = format!("bench-{pid}-cmp-{i}");
        let t = Instant::now();
        let files = store.prepare(&id).map_err(err)?;
        prep.push(ms(t.elapsed()));
        per_clone = files.bytes_copied;
        store.cleanup(&id).map_err(err)?;
    }
    Ok(CompareRun {
        snapshot: c.snapshot.clone(),
        runtime_dir: c.runtime_dir.clone(),
        strategy: store.strategy(),
        count: prep.len(),
        prep_ms: Percentiles::of(&prep),
        bytes_copied_per_clone: per_clone,
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
                hold: false,
                compare: None,
            },
            &mut || {},
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "--count must be at least 1");
    }
}

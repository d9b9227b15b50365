//! `wasp bench clone`: per-clone storage prep
//! and cleanup times, bytes copied, and a `cp`-equivalent baseline of the
//! same files measured in the same run.
//!
//! The baseline is what the seed did per VM: copy the vmstate, the memory
//! file and every drive image with a plain userspace read/write loop (like
//! `cp --reflink=never --sparse=never`; 1 MiB buffer, no fsync), into a
//! `wasp-`-prefixed directory in the same runtime dir, removed afterwards.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;
use wasp::config::Config;
use wasp::pipeline::storage::probe::Strategy;
use wasp::pipeline::storage::{CloneStore, Mode};
use wasp::stats::{ms, Percentiles};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    Auto,
    Reflink,
    CopyFileRange,
    SparseCopy,
    SharedReadonly,
}

#[derive(Debug, Args)]
pub struct BenchCloneArgs {
    /// Snapshot directory.
    #[arg(long)]
    pub snapshot: PathBuf,
    /// Runtime directory (its filesystem decides the strategy)
    /// [paths.runtime_dir; default: /var/lib/wasp].
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// Clones to prepare and clean up.
    #[arg(long, default_value_t = 20)]
    pub count: usize,
    /// Clone-disk strategy (auto: the probe's best).
    #[arg(long, value_enum, default_value = "auto")]
    pub strategy: StrategyArg,
    /// Baseline full copies to time (0: none).
    #[arg(long, default_value_t = 1)]
    pub baseline_runs: usize,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Also draw the CDF of the per-clone prep and cleanup times into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// The figures.
#[derive(Debug, Serialize)]
pub struct BenchCloneReport {
    /// The command (`clone`), for `wasp bench compare`.
    pub kind: &'static str,
    pub strategy: Strategy,
    pub strategy_reason: String,
    pub snapshot: PathBuf,
    pub runtime_dir: PathBuf,
    pub count: usize,
    pub mem_mib: u64,
    pub disk_bytes: u64,
    pub prep_ms: Percentiles,
    pub cleanup_ms: Percentiles,
    pub bytes_copied_total: u64,
    pub mem_bytes_copied: u64,
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

#[derive(Debug, Serialize)]
pub struct Baseline {
    pub method: &'static str,
    pub bytes_per_run: u64,
    pub ms: Percentiles,
}

/// Runs `wasp bench clone`; the runtime dir comes from `cfg` unless
/// `--runtime-dir` gives it.
pub fn bench_clone(a: BenchCloneArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    if let Some(p) = &a.plot {
        wasp::bench::plot::check_path(p)?;
    }
    cfg.runtime_dir.flag("--runtime-dir", a.runtime_dir.clone());
    let r = run_bench_clone(&a, &cfg.runtime_dir.value)?;
    if let Some(path) = &a.plot {
        wasp::bench::plot::cdf_svg(
            path,
            &format!("wasp bench clone: {} clones by {}", r.count, r.strategy),
            "time per clone (ms)",
            &[("prep", &r.prep_samples), ("cleanup", &r.cleanup_samples)],
        )?;
    }
    if a.json {
        super::print_json(&r)?;
    } else {
        print_report(&r);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the bench in `runtime_dir`.
pub fn run_bench_clone(a: &BenchCloneArgs, runtime_dir: &Path) -> anyhow::Result<BenchCloneReport> {
    anyhow::ensure!(a.count > 0, "--count must be at least 1");
    let mode = match a.strategy {
        StrategyArg::Auto => Mode::Auto,
        StrategyArg::Reflink => Mode::Force(Strategy::Reflink),
        StrategyArg::CopyFileRange => Mode::Force(Strategy::CopyFileRange),
        StrategyArg::SparseCopy => Mode::Force(Strategy::SparseCopy),
        StrategyArg::SharedReadonly => Mode::Force(Strategy::SharedReadonly),
    };
    let store =
        CloneStore::open(&a.snapshot, runtime_dir, mode).context("cannot open the clone store")?;
    let m = store.manifest().clone();
    let pid = std::process::id();
    let mut prep = Vec::with_capacity(a.count);
    let mut cleanup = Vec::with_capacity(a.count);
    let (mut copied, mut mem_copied) = (0u64, 0u64);
    let bar = super::progress::bar(a.count, "clones");
    for i in 0..a.count {
        let id = format!("bench-{pid}-{i}");
        let t = Instant::now();
        let files = store.prepare(&id).with_context(|| format!("clone {i}"))?;
        prep.push(ms(t.elapsed()));
        copied += files.bytes_copied;
        mem_copied += files.mem_bytes_copied;
        let t = Instant::now();
        store
            .cleanup(&id)
            .with_context(|| format!("clone {i} cleanup"))?;
        cleanup.push(ms(t.elapsed()));
        bar.inc(1);
    }
    bar.finish_and_clear();

    let mut files: Vec<PathBuf> = vec![
        a.snapshot.join(&m.vmstate.file),
        a.snapshot.join(&m.memory.file),
    ];
    files.extend(m.drives.iter().map(|d| a.snapshot.join(&d.file)));
    let baseline = if a.baseline_runs == 0 {
        None
    } else {
        let dir = store
            .clones_dir()
            .join(format!("{}-bench-{pid}-baseline", wasp::paths::PREFIX));
        let guard = RemoveOnDrop(dir.clone());
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..a.baseline_runs {
            fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
            let t = Instant::now();
            bytes = 0;
            for f in &files {
                bytes += plain_copy(f, &dir.join(f.file_name().unwrap_or_default()))
                    .with_context(|| format!("baseline copy of {}", f.display()))?;
            }
            times.push(ms(t.elapsed()));
            fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        drop(guard);
        Some(Baseline {
            method: "userspace read/write of vmstate + memory + drives (cp --reflink=never --sparse=never)",
            bytes_per_run: bytes,
            ms: Percentiles::of(&times),
        })
    };
    let prep_ms = Percentiles::of(&prep);
    let speedup_p50 = baseline.as_ref().map(|b| b.ms.p50 / prep_ms.p50.max(1e-6));
    Ok(BenchCloneReport {
        kind: "clone",
        strategy: store.strategy(),
        strategy_reason: match mode {
            Mode::Auto => store.probe().reason.clone(),
            Mode::Force(s) => format!(
                "forced by --strategy {s}; the probe found: {}",
                store.probe().reason
            ),
        },
        snapshot: a.snapshot.clone(),
        runtime_dir: runtime_dir.to_owned(),
        count: a.count,
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

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

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

fn print_report(r: &BenchCloneReport) {
    println!("strategy:          {} ({})", r.strategy, r.strategy_reason);
    println!(
        "snapshot:          {} MiB memory, {} MiB writable disk",
        r.mem_mib,
        r.disk_bytes >> 20
    );
    println!("clones:            {}", r.count);
    println!("bytes copied:      {} total", r.bytes_copied_total);
    println!("mem bytes copied:  {}", r.mem_bytes_copied);
    let mut rows = vec![("prep", "ms", &r.prep_ms), ("cleanup", "ms", &r.cleanup_ms)];
    if let Some(b) = &r.baseline {
        println!(
            "baseline copy:     {} ({} MiB per run)",
            b.method,
            b.bytes_per_run >> 20
        );
        rows.push(("baseline copy", "ms", &b.ms));
    }
    super::bench_tools::print_percentiles(&rows);
    if let Some(s) = r.speedup_p50 {
        println!("speedup (p50):     {s:.0}x");
    }
}

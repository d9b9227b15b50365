//! `wasp bench clone`: per-clone storage prep and cleanup against a plain
//! copy ([`wasp::bench::clone`] measures).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use wasp::bench::clone::{self, BenchCloneReport, CloneBenchOptions};
use wasp::config::Config;
use wasp::pipeline::storage::probe::Strategy;
use wasp::pipeline::storage::Mode;

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
    /// Keep every clone until all are prepared and report the disk they
    /// hold together (statfs) against as many full copies.
    #[arg(long)]
    pub hold: bool,
    /// Side by side in the same run: the same snapshot on another
    /// filesystem (e.g. ext4), prepared in --compare-runtime-dir; the
    /// baseline copy then runs there too.
    #[arg(long, requires = "compare_runtime_dir")]
    pub compare_snapshot: Option<PathBuf>,
    /// Runtime dir of the side-by-side run.
    #[arg(long, requires = "compare_snapshot")]
    pub compare_runtime_dir: Option<PathBuf>,
    /// Clones of the side-by-side run.
    #[arg(long, default_value_t = 5)]
    pub compare_count: usize,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Also draw the CDF of the per-clone prep and cleanup times into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// Runs `wasp bench clone`; the runtime dir comes from `cfg` unless
/// `--runtime-dir` gives it.
pub fn bench_clone(a: BenchCloneArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    if let Some(p) = &a.plot {
        wasp::bench::plot::check_path(p)?;
    }
    cfg.runtime_dir.flag("--runtime-dir", a.runtime_dir.clone());
    let mode = match a.strategy {
        StrategyArg::Auto => Mode::Auto,
        StrategyArg::Reflink => Mode::Force(Strategy::Reflink),
        StrategyArg::CopyFileRange => Mode::Force(Strategy::CopyFileRange),
        StrategyArg::SparseCopy => Mode::Force(Strategy::SparseCopy),
        StrategyArg::SharedReadonly => Mode::Force(Strategy::SharedReadonly),
    };
    let bar = super::progress::bar(a.count, "clones");
    let r = clone::run(
        &CloneBenchOptions {
            snapshot: a.snapshot.clone(),
            runtime_dir: cfg.runtime_dir.value.clone(),
            count: a.count,
            mode,
            baseline_runs: a.baseline_runs,
            hold: a.hold,
            compare: match (&a.compare_snapshot, &a.compare_runtime_dir) {
                (Some(snapshot), Some(runtime_dir)) => Some(clone::CompareOptions {
                    snapshot: snapshot.clone(),
                    runtime_dir: runtime_dir.clone(),
                    count: a.compare_count,
                }),
                _ => None,
            },
        },
        &mut || bar.inc(1),
    );
    bar.finish_and_clear();
    let r = r?;
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
    if let Some(h) = &r.held {
        println!(
            "held by {} clones: {} bytes ({:.5} % of {} full copies, {} MiB)",
            h.clones,
            h.bytes_used,
            h.percent_of_full_copies,
            h.clones,
            h.full_copy_bytes >> 20
        );
    }
    let mut rows = vec![("prep", "ms", &r.prep_ms), ("cleanup", "ms", &r.cleanup_ms)];
    if let Some(c) = &r.compare {
        println!(
            "side by side:      {} clones by {} in {} ({} bytes copied per clone)",
            c.count,
            c.strategy,
            c.runtime_dir.display(),
            c.bytes_copied_per_clone
        );
        rows.push(("prep (side by side)", "ms", &c.prep_ms));
    }
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

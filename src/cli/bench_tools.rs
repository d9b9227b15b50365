//! `wasp bench compare` and the hidden `wasp bench gate` (run by
//! scripts/bench-gate.sh), plus the percentile table every `wasp bench`
//! command prints.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use wasp::bench::compare;
use wasp::bench::gate::{self, GateOptions, Statistic};
use wasp::stats::Percentiles;

/// `wasp bench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The first output of `wasp bench … --json` (A).
    pub a: PathBuf,
    /// The second output, of the same command (B).
    pub b: PathBuf,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wasp bench compare`.
pub fn compare(a: CompareArgs) -> anyhow::Result<ExitCode> {
    let c = compare::compare_files(&a.a, &a.b)?;
    if a.json {
        super::print_json(&c)?;
    } else {
        print!("{}", compare::render(&c));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatisticArg {
    Mean,
    Median,
}

/// `wasp bench gate` (hidden; see docs/benchmarks.md).
#[derive(Debug, Args)]
pub struct GateArgs {
    /// Criterion's output directory (CRITERION_HOME of the runs).
    pub criterion_dir: PathBuf,
    /// Remove every `new/` and `change/` under the directory and exit (run
    /// before the measured run, so stale results are never read).
    #[arg(long)]
    pub clear: bool,
    /// Fail when a bench's change has its 95% lower bound above this many
    /// percent.
    #[arg(long, default_value_t = 25.0)]
    pub threshold: f64,
    /// The statistic whose confidence interval is read.
    #[arg(long, value_enum, default_value = "median")]
    pub statistic: StatisticArg,
    /// Accept benches without a baseline (new since the base), loudly.
    #[arg(long, env = "WASP_BENCH_GATE_ALLOW_NEW")]
    pub allow_new: bool,
    /// When benches regress, write a criterion filter matching exactly them
    /// to this file (for a confirming run).
    #[arg(long, value_name = "FILE")]
    pub regressed_filter: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wasp bench gate`.
pub fn gate(a: GateArgs) -> anyhow::Result<ExitCode> {
    if a.clear {
        let n = gate::clear_stale(&a.criterion_dir)?;
        eprintln!(
            "bench gate: removed {n} stale new/ and change/ directories under {}",
            a.criterion_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(
        a.threshold.is_finite() && a.threshold > 0.0,
        "--threshold {} must be a positive percentage",
        a.threshold
    );
    let r = gate::evaluate(
        &a.criterion_dir,
        &GateOptions {
            threshold: a.threshold / 100.0,
            statistic: match a.statistic {
                StatisticArg::Mean => Statistic::Mean,
                StatisticArg::Median => Statistic::Median,
            },
            allow_new: a.allow_new,
        },
    )?;
    if a.json {
        super::print_json(&r)?;
    } else {
        print!("{}", gate::render(&r));
    }
    let bad = r.regressions();
    if bad.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<&str> = bad.iter().map(|b| b.name.as_str()).collect();
    if let Some(f) = &a.regressed_filter {
        let escaped: Vec<String> = names.iter().map(|n| regex::escape(n)).collect();
        std::fs::write(f, format!("^({})$", escaped.join("|")))
            .map_err(|e| anyhow::anyhow!(e).context(format!("write {}", f.display())))?;
    }
    anyhow::bail!(
        "bench gate failed: {} of {} benches slower than the base by more than {}% with 95% confidence: {}",
        names.len(),
        r.benches.len(),
        a.threshold,
        names.join(", ")
    )
}

/// Prints `rows` (name, unit, percentiles) as one table.
pub fn print_percentiles(rows: &[(&str, &str, &Percentiles)]) {
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
    println!(
        "  {:<w$} {:>5} {:>10} {:>10} {:>10} {:>10} {:>6}",
        "figure", "unit", "p50", "p90", "p99", "max", "n"
    );
    for (name, unit, p) in rows {
        println!(
            "  {name:<w$} {unit:>5} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>6}",
            p.p50, p.p90, p.p99, p.max, p.n
        );
    }
}

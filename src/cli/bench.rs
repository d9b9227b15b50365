//! `wasp bench ...`: measurements of wasp's stages. `--json` prints exactly
//! one JSON document.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use wasp::config::Config;
use wasp::pipeline::slot::BuildSteps;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Network slots: build, pool fill, take, recycle, destroy, kernel memory.
    Slots(SlotsArgs),
    /// Clone storage: per-clone disk prep and cleanup against a plain copy.
    Clone(super::bench_clone::BenchCloneArgs),
    /// A whole spawn batch in a private host netns.
    Spawn(super::bench_spawn::SpawnBenchArgs),
    /// A running `wasp serve`: request-to-response latency over its socket.
    Serve(super::bench_serve::BenchServeArgs),
    /// Two outputs of the same `wasp bench … --json`: A, B, B/A and B-A per figure.
    Compare(super::bench_tools::CompareArgs),
    /// The CI regression gate over criterion's results (scripts/bench-gate.sh).
    #[command(hide = true)]
    Gate(super::bench_tools::GateArgs),
}

/// `wasp bench slots`.
#[derive(Debug, Args)]
pub struct SlotsArgs {
    /// Slots to build (all are held at once).
    #[arg(long, default_value_t = 200)]
    pub count: usize,
    /// How the slots reach the bench's host netns: `routed` or `bridge`
    /// (at most 1023 slots) [pool.layout; default: routed].
    #[arg(long)]
    pub layout: Option<wasp::pipeline::slot::Layout>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Also draw the CDF of the per-slot build and destroy times into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
}

/// Runs `wasp bench`. The measuring commands take their defaults from the
/// config file (flags override); `compare` and `gate` read none.
pub fn run(b: Bench, cfg: super::LoadConfig) -> anyhow::Result<ExitCode> {
    match b {
        Bench::Slots(a) => slots(a, cfg()?),
        Bench::Clone(a) => super::bench_clone::bench_clone(a, cfg()?),
        Bench::Spawn(a) => super::bench_spawn::run(a, cfg()?),
        Bench::Serve(a) => super::bench_serve::run(a),
        Bench::Compare(a) => super::bench_tools::compare(a),
        Bench::Gate(a) => super::bench_tools::gate(a),
    }
}

fn slots(a: SlotsArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    cfg.layout.flag("--layout", a.layout);
    anyhow::ensure!(a.count > 0, "--count must be at least 1");
    if let Some(p) = &a.plot {
        wasp::bench::plot::check_path(p)?;
    }
    // The configured slot shape (CIDR, bridge, tap and guest addressing);
    // the pool and host netns are the bench's own.
    let net = cfg.slot_net();
    net.check_fits(a.count).with_context(|| {
        format!(
            "--count {} does not fit pool.cidr {} ({})",
            a.count, cfg.cidr.value, cfg.cidr.source
        )
    })?;
    let total = a.count * 2;
    let bar = super::progress::bar(total, "slots");
    let registry = wasp::pipeline::registry::Registry::dir_of(&cfg.state_dir.value);
    let r = wasp::bench::slots::run(&net, a.count, Some(&registry), &mut || {
        bar.inc(1);
        if bar.position() == total as u64 {
            // Builds and destroys done: the fill shows no bar.
            bar.finish_and_clear();
        }
    });
    bar.finish_and_clear();
    let figs = r?;
    if let Some(path) = &a.plot {
        wasp::bench::plot::cdf_svg(
            path,
            &format!("wasp bench slots: {} slots", figs.count),
            "time per slot (ms)",
            &[
                ("build", &figs.create_samples),
                ("destroy", &figs.destroy_samples),
            ],
        )?;
    }
    if a.json {
        super::print_json(&figs)?;
    } else {
        println!(
            "wasp bench slots: {} {} slots in {}, fill on {} workers",
            figs.count, figs.layout, figs.cidr, figs.workers
        );
        super::bench_tools::print_percentiles(&[
            ("build", "ms", &figs.create_ms),
            ("take", "us", &figs.take_us),
            ("recycle", "us", &figs.recycle_us),
            ("destroy", "ms", &figs.destroy_ms),
        ]);
        let p50s: Vec<String> = BuildSteps::NAMES
            .iter()
            .map(|k| format!("{k} {:.3}", wasp::bench::slots::step_p50(&figs, k)))
            .collect();
        println!("  build steps  p50 ms: {}", p50s.join(", "));
        println!("  fill         {:.0} slots/s", figs.fill_slots_per_s);
        println!(
            "  kernel mem   {:.1} KiB/slot (slab {:.1} KiB/slot)",
            figs.kernel_mem_kib_per_slot, figs.slab_kib_per_slot
        );
        if let Some(p) = &a.plot {
            println!("  plot: {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

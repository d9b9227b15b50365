//! `wasp bench spawn`: a whole batch in a private host netns, measured, then
//! removed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use wasp::demo::{self, DemoVmm};
use wasp::paths::DEFAULT_RUNTIME_DIR;
use wasp::spawn::PhasesMs;
use wasp::stats::Percentiles;

use super::spawn::{DriverArg, VmmArg};

/// `wasp bench spawn`.
#[derive(Debug, Args)]
pub struct SpawnBenchArgs {
    /// The VMM.
    #[arg(long, value_enum, default_value = "standin")]
    pub vmm: VmmArg,
    /// Clones.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// In flight at once.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
    /// Guest memory (MiB).
    #[arg(long, default_value_t = 128)]
    pub mem_mib: u64,
    /// Restore driver.
    #[arg(long, value_enum)]
    pub driver: Option<DriverArg>,
    /// The firecracker binary (default: WASP_FIRECRACKER, then PATH).
    #[arg(long)]
    pub firecracker: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Also draw the latency CDF and a stacked bar of phases per clone into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Out {
    /// The command (`spawn`), for `wasp bench compare`.
    kind: &'static str,
    vmm: String,
    count: usize,
    parallel: usize,
    driver: String,
    storage_strategy: String,
    wall_ms: f64,
    ready: usize,
    failed: usize,
    latency_ms: Percentiles,
    /// p50 per phase.
    phases_ms: serde_json::Map<String, serde_json::Value>,
    /// Percentiles per phase.
    phase_percentiles_ms: serde_json::Map<String, serde_json::Value>,
    vmm_rss_kib_p50: f64,
    vmm_private_kib_mean: f64,
    host_kib_per_clone: f64,
    agents_ok: usize,
    failures: Vec<String>,
}

/// Runs the bench.
pub fn run(a: SpawnBenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &a.plot {
        wasp::plot::check_path(p)?;
    }
    let vmm = match a.vmm {
        VmmArg::Standin => DemoVmm::Standin,
        VmmArg::Firecracker => {
            let p = wasp::firecracker::locate_firecracker(a.firecracker.as_deref())?;
            wasp::firecracker::version_of(&p)?;
            DemoVmm::Firecracker(p)
        }
    };
    super::spawn::report_leftovers(&demo::reconcile_leftovers(std::path::Path::new(
        DEFAULT_RUNTIME_DIR,
    )));
    let bar = super::progress::bar(a.count, "clones");
    let r = demo::run_observed(
        &demo::DemoOptions {
            count: a.count,
            parallel: a.parallel,
            work_dir: PathBuf::from(DEFAULT_RUNTIME_DIR)
                .join(format!("bench-{}", std::process::id())),
            vmm,
            driver: a.driver.map(|d| match d {
                DriverArg::Uring => wasp::ring::DriverKind::Uring,
                DriverArg::Syscalls => wasp::ring::DriverKind::Syscalls,
            }),
            mem_mib: a.mem_mib,
        },
        &mut |_| bar.inc(1),
    );
    bar.finish_and_clear();
    let r = r?;
    let ok: Vec<_> = r.spawn.clones.iter().filter(|c| c.ok).collect();
    let totals: Vec<f64> = ok.iter().map(|c| c.total_ms).collect();
    let mut phases = serde_json::Map::new();
    let mut phase_pct = serde_json::Map::new();
    let mut phase_rows = Vec::new();
    for (i, n) in PhasesMs::NAMES.iter().enumerate() {
        let v: Vec<f64> = ok.iter().map(|c| c.phases_ms.values()[i]).collect();
        let p = Percentiles::of(&v);
        phases.insert((*n).into(), p.p50.into());
        phase_pct.insert((*n).into(), serde_json::to_value(p)?);
        phase_rows.push((*n, p));
    }
    if let Some(path) = &a.plot {
        let rows: Vec<Vec<f64>> = ok.iter().map(|c| c.phases_ms.values().to_vec()).collect();
        wasp::plot::draw_svg(
            path,
            &wasp::plot::Plot {
                title: &format!(
                    "wasp bench spawn: {} clones on {}, parallel {}",
                    a.count,
                    format!("{:?}", a.vmm).to_lowercase(),
                    a.parallel
                ),
                x_label: "clone latency, admission to ready (ms)",
                series: &[wasp::plot::Series {
                    label: "ready clones",
                    samples: &totals,
                }],
                phases: Some(wasp::plot::PhaseBars {
                    names: &PhasesMs::NAMES,
                    rows: &rows,
                }),
            },
        )?;
    }
    let s = &r.spawn.summary;
    let out = Out {
        kind: "spawn",
        vmm: format!("{:?}", a.vmm).to_lowercase(),
        count: a.count,
        parallel: a.parallel,
        driver: s.driver.to_string(),
        storage_strategy: s.storage_strategy.to_string(),
        wall_ms: s.wall_ms,
        ready: s.ready,
        failed: s.failed,
        latency_ms: Percentiles::of(&totals),
        phases_ms: phases,
        phase_percentiles_ms: phase_pct,
        vmm_rss_kib_p50: r.memory.vmm_rss_kib_p50,
        vmm_private_kib_mean: r.memory.vmm_private_kib_mean,
        host_kib_per_clone: r.memory.host_kib_per_clone,
        agents_ok: r.agents_ok,
        failures: r
            .spawn
            .clones
            .iter()
            .filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.id)))
            .chain(r.cleanup_errors.iter().cloned())
            .collect(),
    };
    if a.json {
        super::print_json(&out)?;
    } else {
        println!(
            "wasp bench spawn: {} clones on {} (parallel {}, driver {}, disks by {})",
            out.count, out.vmm, out.parallel, out.driver, out.storage_strategy
        );
        println!(
            "  wall {:.1} ms, {} ready, {} failed",
            out.wall_ms, out.ready, out.failed
        );
        let mut rows = vec![("latency", "ms", &out.latency_ms)];
        rows.extend(phase_rows.iter().map(|(n, p)| (*n, "ms", p)));
        super::bench_tools::print_percentiles(&rows);
        println!(
            "  VMM RSS p50 {:.0} KiB (private {:.0} KiB mean); host memory per clone beyond the VMM {:.0} KiB",
            out.vmm_rss_kib_p50, out.vmm_private_kib_mean, out.host_kib_per_clone
        );
        if out.vmm == "standin" {
            println!(
                "  agents answering with their own AGENT_ID: {}",
                out.agents_ok
            );
        }
        for f in &out.failures {
            println!("  failure: {f}");
        }
        if let Some(p) = &a.plot {
            println!("  plot: {}", p.display());
        }
    }
    Ok(if out.failed == 0 && r.cleanup_errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

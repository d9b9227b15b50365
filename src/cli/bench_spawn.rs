//! `wasp bench spawn`: a whole batch in a private host netns, measured, then
//! removed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use wasp::bench::demo::{self, DemoVmm};
use wasp::bench::proc;
use wasp::config::Config;
use wasp::engine::batch::PhasesMs;
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
    /// In flight at once [spawn.parallel; default: 32].
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Guest memory (MiB).
    #[arg(long, default_value_t = 128)]
    pub mem_mib: u64,
    /// Restore driver.
    #[arg(long, value_enum)]
    pub driver: Option<DriverArg>,
    /// The firecracker binary [WASP_FIRECRACKER, then paths.firecracker;
    /// default: PATH].
    #[arg(long)]
    pub firecracker: Option<PathBuf>,
    /// Where the bench's work dir goes (snapshot, clone disks, sockets,
    /// state); point it at a reflink filesystem (XFS) to measure reflinked
    /// clone disks [paths.runtime_dir; default: /var/lib/wasp].
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// Hold every clone at once: check that all are Running together, then
    /// account host memory per clone (VMM RSS/PSS from smaps_rollup, kernel
    /// memory growth, MemAvailable drop) before removing everything.
    #[arg(long)]
    pub hold: bool,
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
    /// Where the bench's work dir was made (and removed).
    runtime_dir: PathBuf,
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
    /// wasp's own CPU per clone, p50: the admission thread's time on the
    /// clone plus the driver thread's CPU shared evenly.
    wasp_overhead_ms_p50: f64,
    admission_cpu_ms: f64,
    driver_cpu_ms: f64,
    vmm_cpu_ms_mean: f64,
    vmm_rss_kib_p50: f64,
    vmm_private_kib_mean: f64,
    host_kib_per_clone: f64,
    agents_ok: usize,
    /// The slowest ready clone, whole, to tell which phase a tail sits in.
    #[serde(skip_serializing_if = "Option::is_none")]
    slowest: Option<Slowest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hold: Option<proc::HoldFigures>,
    failures: Vec<String>,
}

/// The slowest ready clone of a batch.
#[derive(Debug, Serialize)]
struct Slowest {
    id: String,
    netns: Option<String>,
    clone_ip: Option<std::net::Ipv4Addr>,
    total_ms: f64,
    phases_ms: wasp::engine::batch::PhasesMs,
}

/// Runs the bench. The runtime dir, the firecracker binary and the
/// parallelism come from `cfg` unless a flag gives them; the host netns and
/// pool are always the bench's own.
pub fn run(a: SpawnBenchArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    if let Some(p) = &a.plot {
        wasp::bench::plot::check_path(p)?;
    }
    cfg.runtime_dir.flag("--runtime-dir", a.runtime_dir.clone());
    cfg.firecracker
        .flag("--firecracker", a.firecracker.clone().map(Some));
    cfg.parallel.flag("--parallel", a.parallel);
    let runtime_dir = cfg.runtime_dir.value.clone();
    let parallel = cfg.parallel.value;
    let vmm = match a.vmm {
        VmmArg::Standin => DemoVmm::Standin,
        VmmArg::Firecracker => {
            let p = wasp::vmm::firecracker::locate_checked(
                "firecracker",
                cfg.firecracker_choice().as_ref(),
                None,
            )?;
            DemoVmm::Firecracker(p)
        }
    };
    super::spawn::report_leftovers(&demo::reconcile_leftovers(&runtime_dir));
    let bar = super::progress::bar(a.count, "clones");
    let r = demo::run_observed(
        &demo::DemoOptions {
            count: a.count,
            parallel,
            work_dir: runtime_dir.join(format!("bench-{}", std::process::id())),
            vmm,
            driver: a.driver.map(|d| match d {
                DriverArg::Uring => wasp::pipeline::ring::DriverKind::Uring,
                DriverArg::Syscalls => wasp::pipeline::ring::DriverKind::Syscalls,
            }),
            mem_mib: a.mem_mib,
            hold: a.hold,
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
        wasp::bench::plot::draw_svg(
            path,
            &wasp::bench::plot::Plot {
                title: &format!(
                    "wasp bench spawn: {} clones on {}, parallel {}",
                    a.count,
                    format!("{:?}", a.vmm).to_lowercase(),
                    parallel
                ),
                x_label: "clone latency, admission to ready (ms)",
                series: &[wasp::bench::plot::Series {
                    label: "ready clones",
                    samples: &totals,
                }],
                phases: Some(wasp::bench::plot::PhaseBars {
                    names: &PhasesMs::NAMES,
                    rows: &rows,
                }),
            },
        )?;
    }
    let s = &r.spawn.summary;
    let driver_share = s.driver_cpu_ms / ok.len().max(1) as f64;
    let overhead: Vec<f64> = ok.iter().map(|c| c.wasp_cpu_ms + driver_share).collect();
    let out = Out {
        kind: "spawn",
        vmm: format!("{:?}", a.vmm).to_lowercase(),
        count: a.count,
        parallel,
        runtime_dir,
        driver: s.driver.to_string(),
        storage_strategy: s.storage_strategy.to_string(),
        wall_ms: s.wall_ms,
        ready: s.ready,
        failed: s.failed,
        latency_ms: Percentiles::of(&totals),
        phases_ms: phases,
        phase_percentiles_ms: phase_pct,
        wasp_overhead_ms_p50: Percentiles::of(&overhead).p50,
        admission_cpu_ms: s.admission_cpu_ms,
        driver_cpu_ms: s.driver_cpu_ms,
        vmm_cpu_ms_mean: r.memory.vmm_cpu_ms_mean,
        vmm_rss_kib_p50: r.memory.vmm_rss_kib_p50,
        vmm_private_kib_mean: r.memory.vmm_private_kib_mean,
        host_kib_per_clone: r.memory.host_kib_per_clone,
        agents_ok: r.agents_ok,
        slowest: ok
            .iter()
            .max_by(|a, b| a.total_ms.total_cmp(&b.total_ms))
            .map(|c| Slowest {
                id: c.id.clone(),
                netns: c.netns.clone(),
                clone_ip: c.clone_ip,
                total_ms: c.total_ms,
                phases_ms: c.phases_ms,
            }),
        hold: r.hold.clone(),
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
            "  wasp CPU per clone p50 {:.3} ms (admission thread {:.1} ms, driver thread {:.1} ms in all); VMM CPU mean {:.2} ms",
            out.wasp_overhead_ms_p50, out.admission_cpu_ms, out.driver_cpu_ms, out.vmm_cpu_ms_mean
        );
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
        if let Some(h) = &out.hold {
            println!(
                "  hold: {} of {} Running at once; VMM RSS p50 {:.0} KiB, PSS mean {:.0} KiB, private mean {:.0} KiB",
                h.running_at_once, out.ready, h.vmm_rss_kib.p50, h.vmm_pss_kib.mean, h.vmm_private_kib.mean
            );
            println!(
                "  hold: host memory per clone {:.0} KiB accounted (PSS + kernel {:.0} KiB), MemAvailable drop {:.0} KiB; goal <= {:.0} KiB: {}",
                h.accounted_kib_per_clone,
                h.kernel_kib_per_clone,
                h.host_available_drop_kib_per_clone,
                h.goal_kib,
                if h.goal_met { "met" } else { "NOT met" }
            );
            println!(
                "  hold: after removal, still in use against before the bench: {:+} KiB (MemAvailable), {:+} KiB kernel",
                h.residual_available_kib, h.residual_kernel_kib
            );
            for (id, why) in &h.not_running {
                println!("  not running at hold: {id}: {why}");
            }
        }
        for f in &out.failures {
            println!("  failure: {f}");
        }
        if let Some(p) = &a.plot {
            println!("  plot: {}", p.display());
        }
    }
    let held = out
        .hold
        .as_ref()
        .is_none_or(|h| h.not_running.is_empty() && h.running_at_once == out.ready);
    Ok(if out.failed == 0 && held && r.cleanup_errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

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
}

#[derive(Debug, Serialize)]
struct Out {
    vmm: String,
    count: usize,
    parallel: usize,
    driver: String,
    storage_strategy: String,
    wall_ms: f64,
    ready: usize,
    failed: usize,
    latency_ms: Percentiles,
    phases_ms: serde_json::Map<String, serde_json::Value>,
    vmm_rss_kib_p50: f64,
    vmm_private_kib_mean: f64,
    host_kib_per_clone: f64,
    agents_ok: usize,
    failures: Vec<String>,
}

/// Runs the bench.
pub fn run(a: SpawnBenchArgs) -> anyhow::Result<ExitCode> {
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
    let r = demo::run(&demo::DemoOptions {
        count: a.count,
        parallel: a.parallel,
        work_dir: PathBuf::from(DEFAULT_RUNTIME_DIR).join(format!("bench-{}", std::process::id())),
        vmm,
        driver: a.driver.map(|d| match d {
            DriverArg::Uring => wasp::ring::DriverKind::Uring,
            DriverArg::Syscalls => wasp::ring::DriverKind::Syscalls,
        }),
        mem_mib: a.mem_mib,
    })?;
    let ok: Vec<_> = r.spawn.clones.iter().filter(|c| c.ok).collect();
    let totals: Vec<f64> = ok.iter().map(|c| c.total_ms).collect();
    let mut phases = serde_json::Map::new();
    for (i, n) in PhasesMs::NAMES.iter().enumerate() {
        let v: Vec<f64> = ok.iter().map(|c| c.phases_ms.values()[i]).collect();
        phases.insert((*n).into(), Percentiles::of(&v).p50.into());
    }
    let s = &r.spawn.summary;
    let out = Out {
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
        let l = &out.latency_ms;
        println!(
            "  latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.max
        );
        println!("  phase p50 ms:");
        for (k, v) in &out.phases_ms {
            println!("    {k:<8} {:>8.3}", v.as_f64().unwrap_or(0.0));
        }
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
    }
    Ok(if out.failed == 0 && r.cleanup_errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

//! `wasp bench spawn`: a whole batch in a private host netns, measured, then
//! removed ([`wasp::bench::spawn`] runs and measures it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use wasp::bench::demo::{self, DemoVmm};
use wasp::bench::spawn::SpawnBenchOptions;
use wasp::config::Config;
use wasp::engine::batch::PhasesMs;

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
    /// `--count` requests of one clone each, one after the other: the
    /// single-clone latency a service sees (`request_ms`: each request's
    /// wall time, submit to report).
    #[arg(long)]
    pub one_at_a_time: bool,
    /// Hold this many VMMs started ahead in their slots (exec and API
    /// socket set-up off the request path; experimental). Implies
    /// `--one-at-a-time`; each request is made once a standby is held.
    #[arg(long, default_value_t = 0)]
    pub standby: usize,
    /// How the bench's slots reach its host netns: `routed` or `bridge`
    /// (at most 1023 slots) [pool.layout; default: routed].
    #[arg(long)]
    pub layout: Option<wasp::pipeline::slot::Layout>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Also draw the latency CDF and a stacked bar of phases per clone into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
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
    cfg.layout.flag("--layout", a.layout);
    let runtime_dir = cfg.runtime_dir.value.clone();
    let parallel = cfg.parallel.value;
    let vmm = match a.vmm {
        VmmArg::Standin => DemoVmm::Standin,
        VmmArg::Firecracker => DemoVmm::Firecracker(wasp::vmm::firecracker::locate_checked(
            "firecracker",
            cfg.firecracker_choice().as_ref(),
            None,
        )?),
    };
    super::spawn::report_leftovers(&demo::reconcile_leftovers(&runtime_dir));
    let bar = super::progress::bar(a.count, "clones");
    let out = wasp::bench::spawn::run(
        &SpawnBenchOptions {
            runtime_dir,
            count: a.count,
            parallel,
            vmm,
            driver: a.driver.map(Into::into),
            mem_mib: a.mem_mib,
            hold: a.hold,
            one_at_a_time: a.one_at_a_time,
            standby: a.standby,
            registry: Some(wasp::pipeline::registry::Registry::dir_of(
                &cfg.state_dir.value,
            )),
            layout: cfg.layout.value,
        },
        &mut |_| bar.inc(1),
    );
    bar.finish_and_clear();
    let out = out?;
    if let Some(path) = &a.plot {
        wasp::bench::plot::draw_svg(
            path,
            &wasp::bench::plot::Plot {
                title: &format!(
                    "wasp bench spawn: {} clones on {}, parallel {}",
                    out.count, out.vmm, out.parallel
                ),
                x_label: "clone latency, admission to ready (ms)",
                series: &[wasp::bench::plot::Series {
                    label: "ready clones",
                    samples: &out.latency_samples,
                }],
                phases: Some(wasp::bench::plot::PhaseBars {
                    names: &PhasesMs::NAMES,
                    rows: &out.phase_samples,
                }),
            },
        )?;
    }
    if a.json {
        super::print_json(&out)?;
    } else {
        println!(
            "wasp bench spawn: {} clones on {} (parallel {}, driver {}, disks by {})",
            out.count, out.vmm, out.parallel, out.driver, out.storage_strategy
        );
        println!(
            "  wall {:.1} ms, {} ready, {} failed; kill all + drain {:.1} ms",
            out.wall_ms, out.ready, out.failed, out.teardown_ms
        );
        let mut rows = vec![("latency", "ms", &out.latency_ms)];
        if let Some(r) = &out.request_ms {
            rows.push(("request", "ms", r));
        }
        rows.extend(out.phase_rows.iter().map(|(n, p)| (*n, "ms", p)));
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
    Ok(if out.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

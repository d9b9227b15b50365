//! `wasp bench spawn`: a whole batch run by [`super::demo`] in a private
//! host netns and a pool of its own, then removed; its figures (latency
//! and phase percentiles, wasp's CPU per clone, the slowest clone, VMM and
//! host memory) are computed here.

use std::path::PathBuf;

use serde::Serialize;

use super::demo::{self, DemoError, DemoOptions, DemoReport, DemoVmm};
use super::proc::HoldFigures;
use crate::engine::batch::{CloneReport, PhasesMs};
use crate::pipeline::ring::DriverKind;
use crate::stats::Percentiles;

/// What `wasp bench spawn` runs.
#[derive(Debug, Clone)]
pub struct SpawnBenchOptions {
    /// Where the bench's work dir (`bench-<pid>`) is made and removed.
    pub runtime_dir: PathBuf,
    /// Clones.
    pub count: usize,
    /// In flight at once.
    pub parallel: usize,
    /// The VMM.
    pub vmm: DemoVmm,
    /// Restore driver (default: probe).
    pub driver: Option<DriverKind>,
    /// Guest memory (MiB).
    pub mem_mib: u64,
    /// Hold every clone at once and account host memory per clone.
    pub hold: bool,
    /// `count` requests of one clone, one after the other.
    pub one_at_a_time: bool,
    /// VMMs held started ahead (experimental; implies one at a time).
    pub standby: usize,
    /// The registry the bench's pool is recorded in as this process's own
    /// ([`DemoOptions::registry`]).
    pub registry: Option<PathBuf>,
    /// The slots' layout.
    pub layout: crate::pipeline::slot::Layout,
}

/// The figures of `wasp bench spawn` (its `--json` document).
#[derive(Debug, Serialize)]
pub struct SpawnBenchReport {
    /// The command (`spawn`), for `wasp bench compare`.
    pub kind: &'static str,
    /// The VMM (`standin` or `firecracker`).
    pub vmm: String,
    /// The slots' layout (`routed` or `bridge`).
    pub layout: String,
    /// Clones.
    pub count: usize,
    /// In flight at once.
    pub parallel: usize,
    /// Where the bench's work dir was made (and removed).
    pub runtime_dir: PathBuf,
    /// The restore driver used.
    pub driver: String,
    /// The clone-disk strategy used.
    pub storage_strategy: String,
    /// Wall time of the batch (ms).
    pub wall_ms: f64,
    /// Killing every clone plus removing the pool afterwards (ms).
    pub teardown_ms: f64,
    /// Of which removing the pool (ms).
    pub teardown_pool_ms: f64,
    /// Clones ready.
    pub ready: usize,
    /// Clones failed.
    pub failed: usize,
    /// Admission to ready, over the ready clones (ms).
    pub latency_ms: Percentiles,
    /// p50 per phase.
    pub phases_ms: serde_json::Map<String, serde_json::Value>,
    /// Percentiles per phase.
    pub phase_percentiles_ms: serde_json::Map<String, serde_json::Value>,
    /// wasp's own CPU per clone, p50: the admission thread's time on the
    /// clone plus the driver thread's CPU shared evenly.
    pub wasp_overhead_ms_p50: f64,
    /// CPU of the admission thread over the batch (ms).
    pub admission_cpu_ms: f64,
    /// CPU of the driver thread over the batch (ms).
    pub driver_cpu_ms: f64,
    /// Mean CPU per VMM process (ms).
    pub vmm_cpu_ms_mean: f64,
    /// Median VMM resident set (KiB).
    pub vmm_rss_kib_p50: f64,
    /// Mean VMM private memory (KiB).
    pub vmm_private_kib_mean: f64,
    /// Kernel memory growth per clone (KiB).
    pub host_kib_per_clone: f64,
    /// Clones whose agent answered with its own AGENT_ID.
    pub agents_ok: usize,
    /// The slowest ready clone, whole, to tell which phase a tail sits in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest: Option<Slowest>,
    /// The hold's figures (`--hold`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldFigures>,
    /// Every clone failure (`id: error`) and cleanup error.
    pub failures: Vec<String>,
    /// Percentiles per phase in [`PhasesMs::NAMES`] order, for the table.
    #[serde(skip)]
    pub phase_rows: Vec<(&'static str, Percentiles)>,
    /// Latency per ready clone (ms), for the plot.
    #[serde(skip)]
    pub latency_samples: Vec<f64>,
    /// Phases per ready clone (ms, [`PhasesMs::NAMES`] order), for the plot.
    #[serde(skip)]
    pub phase_samples: Vec<Vec<f64>>,
    /// Cleanup errors met.
    #[serde(skip)]
    pub cleanup_errors: usize,
    /// With `--one-at-a-time` or `--standby`: each request's wall time,
    /// submit to report (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<Percentiles>,
    /// VMMs held started ahead (`--standby`).
    pub standby: usize,
}

/// The slowest ready clone of a batch.
#[derive(Debug, Serialize)]
pub struct Slowest {
    /// Clone id.
    pub id: String,
    /// Slot netns.
    pub netns: Option<String>,
    /// Clone IP.
    pub clone_ip: Option<std::net::Ipv4Addr>,
    /// Admission to ready (ms).
    pub total_ms: f64,
    /// Its phases.
    pub phases_ms: PhasesMs,
}

impl SpawnBenchReport {
    /// The bench passed: no clone failed, with `--hold` every ready clone
    /// was Running at once, and cleanup met no error.
    pub fn passed(&self) -> bool {
        let held = self
            .hold
            .as_ref()
            .is_none_or(|h| h.not_running.is_empty() && h.running_at_once == self.ready);
        self.failed == 0 && held && self.cleanup_errors == 0
    }
}

/// The name of a bench VMM as the report gives it.
fn vmm_name(v: &DemoVmm) -> &'static str {
    match v {
        DemoVmm::Standin => "standin",
        DemoVmm::Firecracker(_) => "firecracker",
    }
}

/// Runs `wasp bench spawn`: the batch in `runtime_dir/bench-<pid>`, its
/// figures, and removal. `on_done` is called as each clone finishes.
pub fn run(
    o: &SpawnBenchOptions,
    on_done: &mut (dyn FnMut(&CloneReport) + Send),
) -> Result<SpawnBenchReport, DemoError> {
    let r = demo::run_observed(
        &DemoOptions {
            count: o.count,
            parallel: o.parallel,
            work_dir: o.runtime_dir.join(format!("bench-{}", std::process::id())),
            vmm: o.vmm.clone(),
            driver: o.driver,
            mem_mib: o.mem_mib,
            hold: o.hold,
            one_at_a_time: o.one_at_a_time,
            standby: o.standby,
            registry: o.registry.clone(),
            layout: o.layout,
        },
        on_done,
    )?;
    Ok(report(o, r))
}

/// The figures of a finished bench batch.
fn report(o: &SpawnBenchOptions, r: DemoReport) -> SpawnBenchReport {
    let ok: Vec<&CloneReport> = r.spawn.clones.iter().filter(|c| c.ok).collect();
    let totals: Vec<f64> = ok.iter().map(|c| c.total_ms).collect();
    let mut phases = serde_json::Map::new();
    let mut phase_pct = serde_json::Map::new();
    let mut phase_rows = Vec::new();
    for (i, n) in PhasesMs::NAMES.iter().enumerate() {
        let v: Vec<f64> = ok.iter().map(|c| c.phases_ms.values()[i]).collect();
        let p = Percentiles::of(&v);
        phases.insert((*n).into(), p.p50.into());
        phase_pct.insert((*n).into(), super::percentiles_value(p));
        phase_rows.push((*n, p));
    }
    let s = &r.spawn.summary;
    let driver_share = s.driver_cpu_ms / ok.len().max(1) as f64;
    let overhead: Vec<f64> = ok.iter().map(|c| c.wasp_cpu_ms + driver_share).collect();
    SpawnBenchReport {
        kind: "spawn",
        vmm: vmm_name(&o.vmm).to_owned(),
        layout: o.layout.to_string(),
        count: o.count,
        parallel: o.parallel,
        runtime_dir: o.runtime_dir.clone(),
        driver: s.driver.to_string(),
        storage_strategy: s.storage_strategy.to_string(),
        wall_ms: s.wall_ms,
        teardown_ms: r.teardown_ms,
        teardown_pool_ms: r.teardown_pool_ms,
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
        phase_rows,
        phase_samples: ok.iter().map(|c| c.phases_ms.values().to_vec()).collect(),
        latency_samples: totals,
        cleanup_errors: r.cleanup_errors.len(),
        request_ms: (!r.request_ms.is_empty()).then(|| Percentiles::of(&r.request_ms)),
        standby: o.standby,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::batch::{SpawnReport, Summary};
    use crate::pipeline::storage::probe::Strategy;

    fn row(id: &str, total: f64, cpu: f64, ok: bool) -> CloneReport {
        CloneReport {
            id: id.into(),
            netns: Some(format!("ns-{id}")),
            clone_ip: None,
            pid: None,
            host_netns: None,
            ready_port: None,
            phases_ms: PhasesMs {
                load: total / 2.0,
                ready: total / 2.0,
                ..PhasesMs::default()
            },
            total_ms: total,
            bytes_copied: 0,
            wasp_cpu_ms: cpu,
            ok,
            error: (!ok).then(|| "load: refused".to_owned()),
            failed_phase: None,
        }
    }

    fn demo_report(clones: Vec<CloneReport>, cleanup: Vec<String>) -> DemoReport {
        let failed = clones.iter().filter(|c| !c.ok).count();
        DemoReport {
            host_netns: "h".into(),
            spawn: SpawnReport {
                summary: Summary {
                    wall_ms: 50.0,
                    ready: clones.len() - failed,
                    failed,
                    p50: 0.0,
                    p99: 0.0,
                    driver: DriverKind::Syscalls,
                    driver_fallback_reason: None,
                    storage_strategy: Strategy::SparseCopy,
                    mem_bytes_copied: 0,
                    disk_bytes_copied: 0,
                    driver_cpu_ms: 4.0,
                    admission_cpu_ms: 9.0,
                },
                clones,
            },
            agents_ok: 0,
            agent_failures: vec![],
            cleanup_errors: cleanup,
            memory: Default::default(),
            hold: None,
            request_ms: vec![],
            teardown_ms: 0.0,
            teardown_pool_ms: 0.0,
        }
    }

    fn opts() -> SpawnBenchOptions {
        SpawnBenchOptions {
            runtime_dir: "/rt".into(),
            count: 3,
            parallel: 2,
            vmm: DemoVmm::Firecracker("/fc".into()),
            driver: None,
            mem_mib: 128,
            hold: false,
            one_at_a_time: false,
            standby: 0,
            registry: None,
            layout: Default::default(),
        }
    }

    #[test]
    fn figures_are_over_ready_clones_and_name_the_slowest() {
        let r = report(
            &opts(),
            demo_report(
                vec![
                    row("a", 10.0, 1.0, true),
                    row("b", 30.0, 3.0, true),
                    row("c", 99.0, 7.0, false),
                ],
                vec![],
            ),
        );
        assert_eq!(r.vmm, "firecracker");
        assert_eq!(r.latency_ms, Percentiles::of(&[10.0, 30.0]));
        assert_eq!(r.latency_samples, vec![10.0, 30.0]);
        // wasp's CPU per clone: its own plus the driver's 4 ms shared by
        // the two ready clones.
        assert_eq!(r.wasp_overhead_ms_p50, Percentiles::of(&[3.0, 5.0]).p50);
        let slowest = r.slowest.as_ref().unwrap();
        assert_eq!((slowest.id.as_str(), slowest.total_ms), ("b", 30.0));
        assert_eq!(r.phases_ms["load"], Percentiles::of(&[5.0, 15.0]).p50);
        assert_eq!(r.phase_percentiles_ms["ready"]["max"], 15.0);
        assert_eq!(r.phase_rows.len(), PhasesMs::NAMES.len());
        assert_eq!(r.phase_samples.len(), 2);
        assert_eq!(r.failures, vec!["c: load: refused".to_owned()]);
        assert!(!r.passed(), "a failed clone fails the bench");
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("hold").is_none() && v.get("latency_samples").is_none());
    }

    #[test]
    fn a_cleanup_error_fails_the_bench_and_is_listed() {
        let r = report(
            &opts(),
            demo_report(vec![row("a", 10.0, 1.0, true)], vec!["rm x".into()]),
        );
        assert_eq!(r.failures, vec!["rm x".to_owned()]);
        assert!(!r.passed());
        let r = report(
            &opts(),
            demo_report(vec![row("a", 10.0, 1.0, true)], vec![]),
        );
        assert!(r.passed());
        // No ready clone: no slowest, and the field is left out.
        let r = report(&opts(), demo_report(vec![], vec![]));
        assert!(r.slowest.is_none());
        assert!(serde_json::to_value(&r).unwrap().get("slowest").is_none());
    }
}

//! `wasp bench ...`: measurements of wasp's stages. `--json` prints exactly
//! one JSON document.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use wasp::config::Config;
use wasp::pipeline::pool::{Pool, PoolConfig};
use wasp::pipeline::slot::{BuildSteps, HostNet, Kernel, SlotNet, SlotOps};
use wasp::stats::{ms, us, Percentiles};
use wasp::sys::netns;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Network slots: build, pool fill, take, recycle, destroy, kernel memory.
    Slots(SlotsArgs),
    /// Clone storage: per-clone disk prep and cleanup against a plain copy.
    Clone(super::bench_clone::BenchCloneArgs),
    /// A whole spawn batch in a private host netns.
    Spawn(super::bench_spawn::SpawnBenchArgs),
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
        Bench::Compare(a) => super::bench_tools::compare(a),
        Bench::Gate(a) => super::bench_tools::gate(a),
    }
}

/// Figures of `wasp bench slots`.
#[derive(Debug, Serialize)]
pub struct SlotFigures {
    /// The command (`slots`), for `wasp bench compare`.
    pub kind: &'static str,
    /// Slots per phase.
    pub count: usize,
    /// The clone address space the slots were built in (`pool.cidr`).
    pub cidr: String,
    /// Per-slot build time, one after another (ms).
    pub create_ms: Percentiles,
    /// The same builds split into steps (ms per step; the steps in build
    /// order are [`BuildSteps::NAMES`]): where the time goes.
    pub create_steps_ms: serde_json::Map<String, serde_json::Value>,
    /// Pool warm on all cores.
    pub fill_slots_per_s: f64,
    /// `Pool::take` (µs).
    pub take_us: Percentiles,
    /// `Pool::give_back`: tap check + conntrack flush (µs).
    pub recycle_us: Percentiles,
    /// Per-slot destroy (ms).
    pub destroy_ms: Percentiles,
    /// Growth of unreclaimable kernel memory per held slot (KiB; see
    /// `meminfo`). It was the MemAvailable drop, which page cache and the
    /// kernel's asynchronous freeing of earlier namespaces moved by more
    /// than the figure.
    pub kernel_mem_kib_per_slot: f64,
    /// Slab growth per held slot (KiB).
    pub slab_kib_per_slot: f64,
    /// Worker threads used for the fill.
    pub workers: usize,
    /// Per-slot build times (ms), for the plot.
    #[serde(skip)]
    pub create_samples: Vec<f64>,
    /// Per-slot destroy times (ms), for the plot.
    #[serde(skip)]
    pub destroy_samples: Vec<f64>,
}

/// (unreclaimable kernel memory, slab) from /proc/meminfo, KiB. The
/// first is the `kernel` sum of [`wasp::bench::proc::HostMem`] (`SUnreclaim +
/// KernelStack + PageTables + SecPageTables + VmallocUsed + Percpu`).
fn meminfo() -> anyhow::Result<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
    let slab = wasp::bench::proc::kib_fields(&s)
        .find(|(k, _)| *k == "Slab")
        .map_or(0, |(_, v)| v);
    Ok((
        wasp::bench::proc::parse_meminfo(&s).kernel as f64,
        slab as f64,
    ))
}

/// Deletes the bench's host netns on every exit path.
struct HostNs(String);
impl Drop for HostNs {
    fn drop(&mut self) {
        if let Err(e) = netns::delete_named(&self.0) {
            eprintln!("warning: could not delete {}: {e}", self.0);
        }
    }
}

fn slots(a: SlotsArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.count > 0, "--count must be at least 1");
    if let Some(p) = &a.plot {
        wasp::bench::plot::check_path(p)?;
    }
    let pid = std::process::id();
    // The configured slot shape (CIDR, bridge, tap and guest addressing),
    // but a pool and host netns of the bench's own, so it never touches
    // the configured pool or the machine's network.
    let net = SlotNet {
        pool: format!("bench{pid}"),
        ..cfg.slot_net()
    };
    net.check_fits(a.count).with_context(|| {
        format!(
            "--count {} does not fit pool.cidr {} ({})",
            a.count, cfg.cidr.value, cfg.cidr.source
        )
    })?;
    // Not `wasp-<pool>-<n>`-shaped, so no pool's reconcile mistakes it.
    let host_name = format!("waspbench-{pid}");
    netns::create_named(&host_name).with_context(|| format!("create netns {host_name}"))?;
    let _host = HostNs(host_name.clone());
    let cidr = net.cidr.to_string();
    let host = HostNet {
        netns: Some(host_name),
        egress_uplink: None,
        ..Default::default()
    };
    let k = Kernel::setup(net, &host).context("set up the bench host side")?;
    let cfg = PoolConfig {
        low_water: 0,
        ..PoolConfig::default()
    };
    let workers = cfg.workers;
    let pool = Pool::new(k, cfg);
    let r = measure(&pool, a.count, workers, cidr);
    let drained = pool.drain();
    let host_removed = pool.ops().remove_host();
    let figs = r?;
    drained.context("remove the bench slots")?;
    host_removed.context("remove the bench bridge")?;
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
            "wasp bench slots: {} slots in {}, fill on {} workers",
            figs.count, figs.cidr, figs.workers
        );
        super::bench_tools::print_percentiles(&[
            ("build", "ms", &figs.create_ms),
            ("take", "us", &figs.take_us),
            ("recycle", "us", &figs.recycle_us),
            ("destroy", "ms", &figs.destroy_ms),
        ]);
        let p50s: Vec<String> = BuildSteps::NAMES
            .iter()
            .map(|k| {
                let p50 = figs.create_steps_ms[*k]["p50"].as_f64().unwrap_or(0.0);
                format!("{k} {p50:.3}")
            })
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

fn measure(
    pool: &Pool<Kernel>,
    count: usize,
    workers: usize,
    cidr: String,
) -> anyhow::Result<SlotFigures> {
    let k = pool.ops();
    let (kern0, slab0) = meminfo()?;
    let bar = super::progress::bar(count * 2, "slots");
    let mut create = Vec::with_capacity(count);
    let mut steps = Vec::with_capacity(count);
    for n in 0..count as u32 {
        let t = Instant::now();
        let (_, s) = k
            .build_timed(n)
            .with_context(|| format!("build slot {n}"))?;
        create.push(ms(t.elapsed()));
        steps.push(s);
        bar.inc(1);
    }
    let mut create_steps_ms = serde_json::Map::new();
    for (i, name) in BuildSteps::NAMES.iter().enumerate() {
        let v: Vec<f64> = steps.iter().map(|s| s.values()[i]).collect();
        create_steps_ms.insert((*name).into(), serde_json::to_value(Percentiles::of(&v))?);
    }
    let (kern1, slab1) = meminfo()?;
    // Adopt them into the pool (this is reconcile's path).
    let rep = pool.reconcile().context("reconcile the built slots")?;
    anyhow::ensure!(
        rep.adopted.len() == count,
        "reconcile adopted {} of {count} slots",
        rep.adopted.len()
    );
    let mut taken = Vec::with_capacity(count);
    let mut take = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let s = pool.take();
        take.push(us(t.elapsed()));
        taken.push(s.context("pool ran dry")?);
    }
    let mut recycle = Vec::with_capacity(count);
    for s in taken {
        let t = Instant::now();
        pool.give_back(s).context("give a slot back")?;
        recycle.push(us(t.elapsed()));
    }
    let mut destroy = Vec::with_capacity(count);
    while let Some(s) = pool.take() {
        let t = Instant::now();
        k.destroy(s.index)
            .with_context(|| format!("destroy slot {}", s.index))?;
        destroy.push(ms(t.elapsed()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    pool.drain().context("clear the pool before the fill")?;
    let t = Instant::now();
    pool.warm(count).context("warm the pool")?;
    let fill = count as f64 / t.elapsed().as_secs_f64();
    Ok(SlotFigures {
        kind: "slots",
        count,
        cidr,
        create_ms: Percentiles::of(&create),
        create_steps_ms,
        fill_slots_per_s: fill,
        take_us: Percentiles::of(&take),
        recycle_us: Percentiles::of(&recycle),
        destroy_ms: Percentiles::of(&destroy),
        kernel_mem_kib_per_slot: (kern1 - kern0) / count as f64,
        slab_kib_per_slot: (slab1 - slab0) / count as f64,
        workers,
        create_samples: create,
        destroy_samples: destroy,
    })
}

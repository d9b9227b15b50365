//! `wasp bench slots`: network slots built, adopted, taken, recycled and
//! destroyed one after another, then a pool fill on all cores, with the
//! kernel memory the held slots cost. Everything is made in a host netns
//! and a pool of the bench's own (`waspbench-<pid>`, `bench<pid>`) and
//! removed on every exit path.

use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::pipeline::pool::{Pool, PoolConfig, PoolError};
use crate::pipeline::slot::{BuildSteps, HostNet, Kernel, SlotError, SlotNet, SlotOps};
use crate::stats::{ms, us, Percentiles};

/// Figures of `wasp bench slots`.
#[derive(Debug, Serialize)]
pub struct SlotFigures {
    /// The command (`slots`), for `wasp bench compare`.
    pub kind: &'static str,
    /// Slots per phase.
    pub count: usize,
    /// The clone address space the slots were built in (`pool.cidr`).
    pub cidr: String,
    /// The slots' layout (`pool.layout`: `routed` or `bridge`).
    pub layout: String,
    /// Per-slot build time, one after another (ms).
    pub create_ms: Percentiles,
    /// The same builds split into steps (ms per step, by step name; the
    /// steps in build order are [`BuildSteps::NAMES`]): where the time goes.
    /// Held as JSON values: each step's percentiles print with their keys
    /// sorted, as they always have.
    pub create_steps_ms: serde_json::Map<String, serde_json::Value>,
    /// Pool warm on all cores.
    pub fill_slots_per_s: f64,
    /// `Pool::take` (µs).
    pub take_us: Percentiles,
    /// `Pool::give_back`: tap check + conntrack flush (µs).
    pub recycle_us: Percentiles,
    /// Per-slot destroy (ms).
    pub destroy_ms: Percentiles,
    /// Growth of unreclaimable kernel memory per held slot (KiB; the
    /// `kernel` sum of [`super::proc::HostMem`]). It was the MemAvailable
    /// drop, which page cache and the kernel's asynchronous freeing of
    /// earlier namespaces moved by more than the figure.
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

/// What stopped `wasp bench slots`.
#[derive(Debug, Error)]
pub enum SlotsBenchError {
    /// No slots asked for.
    #[error("--count must be at least 1")]
    NoCount,
    /// The kernel counters could not be read.
    #[error("read /proc/meminfo")]
    Meminfo(#[source] std::io::Error),
    /// The bridge side in the bench's host netns could not be made.
    #[error("set up the bench host side")]
    Setup(#[source] SlotError),
    /// A slot build failed.
    #[error("build slot {0}")]
    Build(u32, #[source] SlotError),
    /// The pool could not adopt the built slots.
    #[error("reconcile the built slots")]
    Reconcile(#[source] PoolError),
    /// The pool adopted fewer slots than were built.
    #[error("reconcile adopted {adopted} of {count} slots")]
    Adopted {
        /// Adopted.
        adopted: usize,
        /// Built.
        count: usize,
    },
    /// The pool had fewer free slots than it adopted.
    #[error("pool ran dry")]
    Dry,
    /// A recycle failed.
    #[error("give a slot back")]
    GiveBack(#[source] PoolError),
    /// A destroy failed.
    #[error("destroy slot {0}")]
    Destroy(u32, #[source] SlotError),
    /// The pool could not be emptied before the fill.
    #[error("clear the pool before the fill")]
    Clear(#[source] PoolError),
    /// The fill failed.
    #[error("warm the pool")]
    Warm(#[source] PoolError),
    /// The slots could not be removed at the end.
    #[error("remove the bench slots")]
    Drain(#[source] PoolError),
    /// A host limit is too low for `count` slots (nothing was built).
    #[error("the host cannot hold the bench's slots")]
    Limits(#[source] crate::pipeline::limits::LimitsError),
    /// The bench's pool could not be removed completely at the end.
    #[error("remove the bench's pool: {0}")]
    Cleanup(String),
}

/// (unreclaimable kernel memory, slab) from /proc/meminfo, KiB.
fn meminfo() -> Result<(f64, f64), SlotsBenchError> {
    let s = std::fs::read_to_string("/proc/meminfo").map_err(SlotsBenchError::Meminfo)?;
    let (kernel, slab) = super::proc::kernel_and_slab(&s);
    Ok((kernel as f64, slab as f64))
}

/// Runs `wasp bench slots` on `count` slots of the shape `net` (its CIDR,
/// bridge, tap and guest addressing), in a pool and host netns of the
/// bench's own (`bench<pid>`, `waspbench-<pid>`), so it never touches the
/// configured pool or the machine's network. The pool is recorded in
/// `registry` (the caller's state dir's) as this process's own, so a plain
/// `wasp reconcile` removes it if the bench is killed; on every exit path
/// the bench removes it itself. `on_step` is called after each slot build
/// and each destroy (`2 * count` calls in all, before the fill).
pub fn run(
    net: &SlotNet,
    count: usize,
    registry: Option<&std::path::Path>,
    on_step: &mut dyn FnMut(),
) -> Result<SlotFigures, SlotsBenchError> {
    if count == 0 {
        return Err(SlotsBenchError::NoCount);
    }
    let pid = std::process::id();
    let net = SlotNet {
        pool: format!("bench{pid}"),
        ..net.clone()
    };
    net.check_fits(count).map_err(SlotsBenchError::Setup)?;
    let cidr = net.cidr.to_string();
    let host = HostNet {
        // Not `wasp-<pool>-<n>`-shaped, so no pool's reconcile mistakes it.
        netns: Some(format!("waspbench-{pid}")),
        egress_uplink: None,
        registry: registry.map(std::path::Path::to_owned),
        owner: crate::pipeline::registry::Owner::me(),
        ..Default::default()
    };
    let r = (|| {
        crate::pipeline::limits::check_pool(
            &net,
            &host,
            crate::pipeline::limits::Demand::slots(count as u64, &net.cidr),
        )
        .map_err(SlotsBenchError::Limits)?;
        let k = Kernel::setup(net.clone(), &host).map_err(SlotsBenchError::Setup)?;
        let cfg = PoolConfig {
            low_water: 0,
            ..PoolConfig::default()
        };
        let workers = cfg.workers;
        let pool = Pool::new(k, cfg);
        let r = measure(&pool, count, workers, cidr, on_step);
        let drained = pool.drain();
        let figs = r?;
        drained.map_err(SlotsBenchError::Drain)?;
        Ok(figs)
    })();
    // Whatever happened: the slots, the host netns (bridge and table with
    // it) and the registry record.
    let left = super::demo::remove_run_pool(&net, &host);
    let figs = r?;
    if !left.is_empty() {
        return Err(SlotsBenchError::Cleanup(left.join("; ")));
    }
    Ok(figs)
}

fn measure(
    pool: &Pool<Kernel>,
    count: usize,
    workers: usize,
    cidr: String,
    on_step: &mut dyn FnMut(),
) -> Result<SlotFigures, SlotsBenchError> {
    let k = pool.ops();
    let (kern0, slab0) = meminfo()?;
    let mut create = Vec::with_capacity(count);
    let mut steps = Vec::with_capacity(count);
    for n in 0..count as u32 {
        let t = Instant::now();
        let (_, s) = k.build_timed(n).map_err(|e| SlotsBenchError::Build(n, e))?;
        create.push(ms(t.elapsed()));
        steps.push(s);
        on_step();
    }
    let create_steps_ms = step_percentiles(&steps);
    let (kern1, slab1) = meminfo()?;
    // Adopt them into the pool (this is reconcile's path).
    let rep = pool.reconcile().map_err(SlotsBenchError::Reconcile)?;
    if rep.adopted.len() != count {
        return Err(SlotsBenchError::Adopted {
            adopted: rep.adopted.len(),
            count,
        });
    }
    let mut taken = Vec::with_capacity(count);
    let mut take = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let s = pool.take();
        take.push(us(t.elapsed()));
        taken.push(s.ok_or(SlotsBenchError::Dry)?);
    }
    let mut recycle = Vec::with_capacity(count);
    for s in taken {
        let t = Instant::now();
        pool.give_back(s).map_err(SlotsBenchError::GiveBack)?;
        recycle.push(us(t.elapsed()));
    }
    let mut destroy = Vec::with_capacity(count);
    while let Some(s) = pool.take() {
        let t = Instant::now();
        k.destroy(s.index)
            .map_err(|e| SlotsBenchError::Destroy(s.index, e))?;
        destroy.push(ms(t.elapsed()));
        on_step();
    }
    pool.drain().map_err(SlotsBenchError::Clear)?;
    let t = Instant::now();
    pool.warm(count).map_err(SlotsBenchError::Warm)?;
    let fill = count as f64 / t.elapsed().as_secs_f64();
    Ok(SlotFigures {
        kind: "slots",
        count,
        cidr,
        layout: k.net().layout.to_string(),
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

/// Percentiles per build step over `steps`, by step name.
fn step_percentiles(steps: &[BuildSteps]) -> serde_json::Map<String, serde_json::Value> {
    BuildSteps::NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let v: Vec<f64> = steps.iter().map(|s| s.values()[i]).collect();
            (
                (*name).into(),
                super::percentiles_value(Percentiles::of(&v)),
            )
        })
        .collect()
}

/// The p50 of a step in [`SlotFigures::create_steps_ms`] (0 when absent).
pub fn step_p50(figs: &SlotFigures, step: &str) -> f64 {
    figs.create_steps_ms
        .get(step)
        .and_then(|p| p["p50"].as_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_build_step_gets_its_percentiles_by_name() {
        let steps: Vec<BuildSteps> = (1..=4)
            .map(|i| BuildSteps {
                netns: i as f64,
                ..BuildSteps::default()
            })
            .collect();
        let p = step_percentiles(&steps);
        assert_eq!(p.len(), BuildSteps::NAMES.len());
        for name in BuildSteps::NAMES {
            assert_eq!(p[name]["n"], 4, "{name}");
        }
        let want = Percentiles::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(p["netns"]["max"], 4.0);
        assert_eq!(p["netns"]["p50"], want.p50);
        assert_eq!(p["tap"]["max"], 0.0);
    }

    #[test]
    fn a_count_past_the_cidr_is_refused_before_anything_is_made() {
        let net = SlotNet {
            cidr: "10.9.0.0/28".parse().unwrap(),
            ..SlotNet::default()
        };
        // 13 clone addresses in a /28: 14 slots cannot all be built. The
        // refusal comes before any kernel object (this runs without root).
        let e = run(&net, 14, None, &mut || {}).unwrap_err();
        assert!(matches!(e, SlotsBenchError::Setup(_)), "{e}");
        assert!(
            crate::error::chain(&e).contains("exhausted"),
            "{}",
            crate::error::chain(&e)
        );
    }

    #[test]
    fn zero_slots_is_refused_before_anything_is_made() {
        let e = run(&SlotNet::default(), 0, None, &mut || {}).unwrap_err();
        assert_eq!(e.to_string(), "--count must be at least 1");
    }
}

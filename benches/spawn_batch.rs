//! A small stand-in spawn batch (root only): 8 clones through the whole
//! pipeline (pool, storage, launch, restore driver, TCP readiness) with
//! `wasp::bench::demo::run`, which makes its own private host netns and work dir
//! and removes them, never touching the machine's own network. Each sample
//! is the batch's wall time as the spawn reports it (the pool warm, the
//! snapshot synth and the teardown are outside it).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use wasp::bench::demo::{self, DemoOptions, DemoVmm};

const CLONES: usize = 8;

fn spawn_batch(c: &mut Criterion) {
    if !wasp::sys::is_root() {
        eprintln!("SKIPPED spawn batch: needs root (network namespaces, nf_tables, VMM processes)");
        return;
    }
    // The bench binary is not wasp: point the pipeline at the stand-in.
    if std::env::var_os("WASP_STANDIN").is_none() {
        std::env::set_var("WASP_STANDIN", env!("CARGO_BIN_EXE_wasp-standin"));
    }
    let work_dir =
        std::env::temp_dir().join(format!("wasptest-{}-bench-spawn", std::process::id()));
    let mut g = c.benchmark_group("spawn");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(CLONES as u64));
    g.bench_function(format!("standin batch of {CLONES}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let r = demo::run(&DemoOptions {
                    count: CLONES,
                    parallel: CLONES,
                    work_dir: work_dir.clone(),
                    vmm: DemoVmm::Standin,
                    driver: None,
                    mem_mib: 16,
                    hold: false,
                    one_at_a_time: false,
                    standby: 0,
                    registry: None,
                    layout: Default::default(),
                })
                .expect("a stand-in batch");
                assert_eq!(r.spawn.summary.ready, CLONES, "{:?}", r.spawn.clones);
                assert!(r.cleanup_errors.is_empty(), "{:?}", r.cleanup_errors);
                total += Duration::from_secs_f64(r.spawn.summary.wall_ms / 1e3);
            }
            total
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    targets = spawn_batch
}
criterion_main!(benches);

//! One slot build on real kernel objects (root only): namespace, tap, veth
//! pair to the bridge, addresses, routes and the nf_tables batch, in a
//! private host netns made by the test harness (`wasp_testkit`), never the
//! machine's own. Each sample times `build` only; the sample's slots are
//! destroyed untimed afterwards, and everything is removed at the end, also
//! on panic. The pure message building is in `benches/pure.rs`.

use wasp_testkit as testkit;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use wasp::pipeline::slot::{Kernel, SlotOps};

/// Destroys the slots it holds and the host side on drop.
struct Built<'a> {
    k: &'a Kernel,
    slots: Vec<u32>,
}

impl Built<'_> {
    fn clear(&mut self) {
        for (n, r) in self.slots.iter().zip(self.k.destroy_many(&self.slots)) {
            if let Err(e) = r {
                eprintln!("warning: destroy slot {n}: {e}");
            }
        }
        self.slots.clear();
    }
}

impl Drop for Built<'_> {
    fn drop(&mut self) {
        self.clear();
        if let Err(e) = self.k.remove_host() {
            eprintln!("warning: remove the bench bridge: {e}");
        }
    }
}

fn slot_build(c: &mut Criterion) {
    if !wasp::sys::is_root() {
        eprintln!("SKIPPED slot build: needs root (network namespaces, links, nf_tables)");
        return;
    }
    testkit::sweep_stale();
    let (host, k) = testkit::slot_host("bench", format!("b{}", std::process::id()));
    let mut built = Built {
        k: &k,
        slots: Vec::new(),
    };
    let mut next = 0u32;
    let mut g = c.benchmark_group("slot");
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("build", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let s = k.build(next).expect("build a slot");
                total += t.elapsed();
                built.slots.push(s.index);
                next += 1;
            }
            built.clear();
            total
        })
    });
    g.finish();
    drop(built);
    drop(host);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = slot_build
}
criterion_main!(benches);

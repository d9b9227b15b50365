//! Clone-storage prep: one clone's rootfs by reflink (on a private XFS loop
//! image, root only) and by copy (copy_file_range on the root filesystem,
//! /var/tmp). Each sample times `prepare` only; `cleanup` runs untimed.

use wasp_testkit::loopfs;

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use wasp::pipeline::storage::{CloneStore, Mode};
use wasp::snapshot::{synth, SynthOptions};

fn store_in(parent: &Path, rootfs_mib: u64) -> CloneStore {
    let snap = parent.join("snap");
    synth(&SynthOptions {
        out: snap.clone(),
        mem_mib: 8,
        rootfs_mib,
        ..Default::default()
    })
    .expect("synth");
    CloneStore::open(&snap, &parent.join("rt"), Mode::Auto).expect("open store")
}

fn bench_prep(c: &mut Criterion, name: &str, store: &CloneStore) {
    let mut n = 0u64;
    c.bench_function(&format!("clone_prep_{name}_{}", store.strategy()), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let id = format!("bench-{n}");
                let t = Instant::now();
                let f = store.prepare(&id).expect("prepare");
                total += t.elapsed();
                assert_eq!(f.mem_bytes_copied, 0);
                store.cleanup(&id).expect("cleanup");
            }
            total
        })
    });
}

fn clone_prep(c: &mut Criterion) {
    let have_xfs = Path::new("/usr/sbin/mkfs.xfs").exists() || Path::new("/sbin/mkfs.xfs").exists();
    if !wasp::sys::is_root() {
        eprintln!("SKIPPED clone_prep_reflink: needs root to mount a private XFS loop image");
    } else if !have_xfs {
        eprintln!("SKIPPED clone_prep_reflink: mkfs.xfs is not installed (apt install xfsprogs)");
    } else {
        let xfs = loopfs::LoopFs::xfs_reflink(512);
        let store = store_in(xfs.path(), 256);
        bench_prep(c, "xfs", &store);
    }
    let t = tempfile::Builder::new()
        .prefix(&format!("wasptest-{}-bench-", std::process::id()))
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let store = store_in(t.path(), 16);
    bench_prep(c, "rootfs_fallback", &store);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = clone_prep
}
criterion_main!(benches);

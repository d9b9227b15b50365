//! Benches of the pure parts: message encoding that sits on every slot
//! build's path.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use wasp::netlink::nft;

fn nft_table_batch(c: &mut Criterion) {
    c.bench_function("nft_table_batch_encode", |b| {
        b.iter(|| {
            let mut batch = nft::Batch::new(black_box(1));
            batch.new_table(nft::NFPROTO_INET, black_box("wasp_probe"));
            black_box(batch.finish())
        })
    });
}

criterion_group!(benches, nft_table_batch);
criterion_main!(benches);

//! Pure message building for a slot: the nf_tables batch and the
//! rtnetlink messages (no kernel calls).

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion};
use wasp::netlink::{rtnl, MsgBuf};
use wasp::slot::SlotNet;

fn bench(c: &mut Criterion) {
    let net = SlotNet::default();
    let ip = Ipv4Addr::new(10, 0, 1, 2);
    c.bench_function("slot nft batch encode", |b| {
        b.iter(|| {
            let (buf, _, _) = black_box(&net).ruleset(1, black_box(ip)).finish();
            black_box(buf.as_bytes().len())
        })
    });
    c.bench_function("slot rtnetlink messages", |b| {
        let mut m = MsgBuf::new();
        b.iter(|| {
            m.clear();
            rtnl::new_veth(
                &mut m,
                1,
                &rtnl::VethSpec {
                    name: "wasp12345000001",
                    up: true,
                    master: Some(2),
                    peer_name: "veth0",
                    peer_ns_fd: Some(9),
                    peer_index: 0,
                    peer_up: false,
                },
            );
            rtnl::set_alias(
                &mut m,
                2,
                rtnl::Link::Name("wasp12345000001"),
                "wasp:default:1",
            );
            rtnl::set_isolated(&mut m, 3, rtnl::Link::Name("wasp12345000001"), true);
            black_box(&net).inner_links(&mut m, 4, 2, 3, black_box(ip));
            black_box(m.as_bytes().len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The regression gate's benches: pure, single-threaded, fast and stable
//! (no kernel calls, no threads, no I/O), measured in thread CPU time, so
//! that a 25% change is a change in wasp's code and not in the machine's
//! load. `benches/pure.rs` runs them
//! with the other pure benches; `tests/bench_gate.rs` runs them in-process
//! to prove the gate.
//!
//! `inject`: the name of one bench that does its work twice per iteration,
//! a real 2x slowdown of a real bench (`WASP_BENCH_INJECT_SLOWDOWN=NAME`
//! in `benches/pure.rs`).

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::Criterion;

use super::cputime::ThreadCpuTime;

/// The gate's criterion: thread CPU time (see `cputime.rs`).
pub type GateCriterion = Criterion<ThreadCpuTime>;

/// A criterion measuring thread CPU time.
pub fn criterion() -> GateCriterion {
    Criterion::default().with_measurement(ThreadCpuTime::default())
}
use wasp::netlink::{nft, MsgBuf};
use wasp::pipeline::slot::SlotNet;
use wasp::vmm::api::{parse_response, Response};

/// The gate benches' names, in run order.
pub const NAMES: [&str; 5] = [
    "nft_table_batch_encode",
    "slot nft batch encode",
    "slot rtnetlink messages",
    "http parse 204",
    "http parse 200 json",
];

/// Registers `name`, whose routine `work` runs twice per iteration when it
/// is the injected one.
fn bench<T>(c: &mut GateCriterion, inject: Option<&str>, name: &str, mut work: impl FnMut() -> T) {
    let reps = if inject == Some(name) { 2 } else { 1 };
    c.bench_function(name, |b| {
        b.iter(|| {
            for _ in 0..reps {
                black_box(work());
            }
        })
    });
}

/// Registers the gate benches.
pub fn register(c: &mut GateCriterion, inject: Option<&str>) {
    if let Some(n) = inject {
        assert!(
            NAMES.contains(&n),
            "WASP_BENCH_INJECT_SLOWDOWN={n:?} names no gate bench; use one of {NAMES:?}"
        );
        eprintln!("NOTE: injecting a 2x slowdown into {n:?} (WASP_BENCH_INJECT_SLOWDOWN)");
    }
    bench(c, inject, NAMES[0], || {
        let mut batch = nft::Batch::new(black_box(1));
        batch.new_table(nft::NFPROTO_INET, black_box("wasp_probe"));
        batch.finish()
    });
    let net = SlotNet::default();
    let ip = Ipv4Addr::new(10, 0, 1, 2);
    bench(c, inject, NAMES[1], || {
        let (buf, _, _) = black_box(&net).ruleset(1, black_box(ip)).finish();
        buf.as_bytes().len()
    });
    let mut m = MsgBuf::new();
    bench(c, inject, NAMES[2], || {
        super::rtnl_crate::hand_messages(&mut m, black_box(&net), black_box(ip))
    });
    let no_content: &[u8] =
        b"HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n";
    bench(c, inject, NAMES[3], || parse_one(no_content));
    let body = r#"{"id":"anonymous-instance","state":"Running","vmm_version":"1.12.1","app_name":"Firecracker"}"#;
    let ok = format!(
        "HTTP/1.1 200 OK\r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    bench(c, inject, NAMES[4], || parse_one(ok.as_bytes()));
}

fn parse_one(bytes: &[u8]) -> (Response, usize) {
    parse_response(black_box(bytes))
        .expect("a valid response")
        .expect("a complete response")
}

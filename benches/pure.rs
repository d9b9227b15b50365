//! Benches of the pure parts (no root, no network namespace):
//!
//! - the regression gate's benches (`testkit/src/bench/gate.rs`): nf_tables
//!   batch encoding, rtnetlink message building, the HTTP response parser;
//! - the same slot rtnetlink messages built with netlink-packet-route
//!   (`testkit/src/bench/rtnl_crate.rs`), the figure that keeps the slot
//!   path's builders hand-written;
//! - the slot pool's `take`/`give_back` under contention from two threads
//!   (both cores here), over a slot ops that does no kernel work;
//! - the restore driver's overhead per clone state machine: a batch of
//!   clones against fake VMM API servers on real unix sockets
//!   (`testkit/src/fake_vmm.rs`), on io_uring and on the syscall fallback.
//!
//! `WASP_BENCH_INJECT_SLOWDOWN=NAME` makes gate bench NAME do its work
//! twice per iteration (used to prove the gate; see docs/benchmarks.md).

use wasp_testkit::bench::gate;
use wasp_testkit::bench::rtnl_crate;
use wasp_testkit::fake_vmm;

use std::io::{BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wasp::pipeline::pool::{Pool, PoolConfig};
use wasp::pipeline::ready::Ready;
use wasp::pipeline::restore::{Job, Plan, Timeouts};
use wasp::pipeline::ring::{self, DriverKind, Feed, Outcome};
use wasp::pipeline::slot::{Found, Slot, SlotError, SlotOps};
use wasp::vmm::api::BackendType;
use zeroize::Zeroizing;

fn gate_benches(c: &mut gate::GateCriterion) {
    let inject = std::env::var("WASP_BENCH_INJECT_SLOWDOWN").ok();
    gate::register(c, inject.as_deref().filter(|s| !s.is_empty()));
}

/// The slot path's rtnetlink messages built with netlink-packet-route, in
/// the gate's measurement (thread CPU time), to compare with the gate's
/// hand-built "slot rtnetlink messages".
fn crate_comparison(c: &mut gate::GateCriterion) {
    rtnl_crate::register(c);
}

/// Slot ops that build descriptions only: the pool's own cost.
struct NoKernel;

impl SlotOps for NoKernel {
    fn build(&self, n: u32) -> Result<Slot, SlotError> {
        self.describe(n)
    }
    fn recycle(&self, _: &Slot) -> Result<(), SlotError> {
        Ok(())
    }
    fn destroy(&self, _: u32) -> Result<(), SlotError> {
        Ok(())
    }
    fn scan(&self) -> Result<Vec<Found>, SlotError> {
        Ok(Vec::new())
    }
    fn describe(&self, n: u32) -> Result<Slot, SlotError> {
        Ok(Slot {
            index: n,
            netns: format!("wasp-bench-{n}"),
            clone_ip: Ipv4Addr::new(10, 0, 0, 2),
            host_veth: format!("waspb{n}"),
        })
    }
    fn lease(&self, _: u32) -> Result<Option<wasp::pipeline::lease::Lease>, SlotError> {
        Ok(Some(wasp::pipeline::lease::Lease::detached()))
    }
}

fn pool_contention(c: &mut Criterion) {
    const THREADS: usize = 2;
    let pool = Pool::new(NoKernel, PoolConfig::default());
    pool.warm(64).expect("warm the no-kernel pool");
    let mut g = c.benchmark_group("pool");
    g.throughput(Throughput::Elements(THREADS as u64));
    g.bench_function("take+give_back 2 threads", |b| {
        b.iter_custom(|iters| {
            let start = Barrier::new(THREADS + 1);
            // The scope joins both threads before it returns.
            let t = std::thread::scope(|s| {
                for _ in 0..THREADS {
                    s.spawn(|| {
                        start.wait();
                        for _ in 0..iters {
                            let slot = pool.take().expect("a free slot");
                            pool.give_back(std::hint::black_box(slot))
                                .expect("give back");
                        }
                    });
                }
                start.wait();
                Instant::now()
            });
            t.elapsed()
        })
    });
    g.finish();
}

struct Batch {
    jobs: Vec<Job>,
}

impl Feed for Batch {
    fn next_job(&mut self) -> Option<Job> {
        self.jobs.pop()
    }
    fn done(&mut self, o: Outcome) {
        assert!(o.result.is_ok(), "clone {} failed", o.job.id);
    }
}

/// One batch of `n` clones through the driver against fake VMMs served by
/// one thread; returns the driver's wall time.
fn driver_batch(kind: DriverKind, n: usize, parallel: usize) -> Duration {
    let tmp = tempfile::tempdir().expect("temp dir");
    let me = std::process::id() as i32;
    let mut listeners = Vec::new();
    let mut jobs = Vec::new();
    for i in 0..n {
        let sock = tmp.path().join(format!("c{i}.sock"));
        listeners.push(UnixListener::bind(&sock).expect("bind"));
        jobs.push(Job {
            index: i,
            plan: None,
            id: format!("wasp-bench-{i}"),
            api_sock: sock,
            // Our own pid: a VMM that never exits.
            pid: me,
            pidfd: wasp::sys::pidfd::pidfd_open(me).expect("pidfd_open"),
            launched_at: Instant::now(),
            net_override: None,
            clone_ip: Ipv4Addr::LOCALHOST,
            mmds_body: Zeroizing::new(
                format!(r#"{{"env":{{"AGENT_ID":"wasp-bench-{i}"}}}}"#).into_bytes(),
            ),
            link_sync: None,
        });
    }
    jobs.reverse();
    let server = std::thread::spawn(move || {
        for l in listeners {
            let (s, _) = l.accept().expect("accept");
            let mut w = s.try_clone().expect("clone stream");
            let mut r = BufReader::new(s);
            while let Some((line, _)) = fake_vmm::read_request(&mut r) {
                if w.write_all(fake_vmm::good_response(&line).as_bytes())
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    let plan = Arc::new(Plan {
        snapshot_path: "/snap/vmstate".into(),
        mem_path: "/snap/mem".into(),
        backend: BackendType::File,
        ready: Ready::Running,
        timeouts: Timeouts::default(),
        ready_retry: wasp::pipeline::ready::READY_RETRY,
    });
    let t = Instant::now();
    ring::run(kind, plan, parallel, &mut Batch { jobs }).expect("driver");
    let wall = t.elapsed();
    server.join().expect("fake VMM server");
    wall
}

fn driver_overhead(c: &mut Criterion) {
    const N: usize = 16;
    let mut kinds = vec![DriverKind::Syscalls];
    match ring::choose() {
        (DriverKind::Uring, _) => kinds.insert(0, DriverKind::Uring),
        (_, why) => eprintln!("SKIPPED ring driver io_uring: io_uring unavailable ({why:?})"),
    }
    let mut g = c.benchmark_group("ring driver");
    g.throughput(Throughput::Elements(N as u64));
    for kind in kinds {
        g.bench_function(format!("{N} clones {kind}"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| driver_batch(kind, N, 8)).sum())
        });
    }
    g.finish();
}

criterion_group! {
    name = gate_group;
    config = gate::criterion();
    targets = gate_benches, crate_comparison
}
criterion_group! {
    name = threaded;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = pool_contention, driver_overhead
}
criterion_main!(gate_group, threaded);

//! The engine ([`wasp::engine`]) with the stand-in VMM: requests from many
//! threads at once each get their own report and distinct slots; a VMM
//! that exits on its own is reaped (record, files and slot reclaimed) by a
//! reaper blocked in epoll_wait, never a poll loop; kill and shutdown.

use wasp_testkit as testkit;
use wasp_testkit::root_or_skip;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use testkit::fake_slots::FakeSlots;
use wasp::engine::batch::SpawnError;
use wasp::engine::{Engine, EngineConfig, PoolSetup, SnapshotSource, SpawnRequest};
use wasp::pipeline::launch::Vmm;
use wasp::pipeline::ready::Ready;
use wasp::pipeline::restore::Timeouts;
use wasp::pipeline::storage::clone::{CloneStore, Mode};
use wasp::snapshot::synth::{synth, SynthOptions};
use wasp::vmm::VmmFate;

/// A bound on waits for an event that must come (never a sleep).
const EVENT_BOUND: Duration = Duration::from_secs(60);

fn snapshot(root: &Path) -> Arc<CloneStore> {
    let snap = root.join("snap");
    synth(&SynthOptions {
        out: snap.clone(),
        ..Default::default()
    })
    .unwrap();
    Arc::new(CloneStore::open(&snap, &root.join("run"), Mode::Auto).unwrap())
}

fn config(root: &Path, parallel: usize) -> EngineConfig {
    let mut c = EngineConfig::new(
        Vmm::Standin(env!("CARGO_BIN_EXE_wasp-standin").into()),
        root.join("state"),
        root.join("run"),
    );
    c.parallel = parallel;
    c
}

fn request(store: &Arc<CloneStore>, count: usize, ready: Ready) -> SpawnRequest {
    SpawnRequest {
        ready,
        timeouts: Timeouts {
            socket: Duration::from_secs(20),
            load: Duration::from_secs(20),
            api: Duration::from_secs(10),
            ready: Duration::from_secs(30),
        },
        ready_retry: Duration::from_millis(10),
        ..SpawnRequest::new(SnapshotSource::Store(store.clone()), count)
    }
}

fn record_exists(state: &Path, id: &str) -> bool {
    wasp::state::Store::open(state).unwrap().get(id).is_ok()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// The syscall line of this process's thread named `name`
/// (`/proc/self/task/TID/syscall`: number and arguments, or `running`).
fn thread_syscall(name: &str) -> String {
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return std::fs::read_to_string(dir.join("syscall")).unwrap();
        }
    }
    panic!("no thread {name}");
}

#[test]
fn concurrent_requests_get_their_own_reports_and_distinct_slots() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    let engine =
        Arc::new(Engine::with_slots(config(tmp.path(), 4), FakeSlots::new(8, true)).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (engine, store) = (engine.clone(), store.clone());
            std::thread::spawn(move || {
                let mut req = request(&store, 2, Ready::Running);
                req.labels.insert("caller".into(), t.to_string());
                let ticket = engine.spawn(req).unwrap();
                let tag = ticket.tag().to_owned();
                let mut seen = Vec::new();
                let report = ticket
                    .wait_observed(|row| seen.push(row.id.clone()))
                    .unwrap();
                (t, tag, seen, report)
            })
        })
        .collect();
    let mut netns = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut tags = BTreeSet::new();
    for h in threads {
        let (_, tag, seen, report) = h.join().unwrap();
        assert_eq!(report.summary.ready, 2, "{:#?}", report.clones);
        assert_eq!(report.clones.len(), 2);
        // Its own clones only, each told once as it finished.
        for c in &report.clones {
            assert!(c.id.starts_with(&format!("{tag}-")), "{} in {tag}", c.id);
            assert!(seen.contains(&c.id));
            netns.insert(c.netns.clone().unwrap());
            ids.insert(c.id.clone());
        }
        assert_eq!(seen.len(), 2);
        tags.insert(tag);
    }
    assert_eq!(tags.len(), 4, "a request tag was given twice");
    assert_eq!(ids.len(), 8, "a clone id was given twice");
    assert_eq!(netns.len(), 8, "a slot was handed out twice");
    // The engine knows each clone with its request and labels.
    let live = engine.list();
    assert_eq!(live.len(), 8);
    for c in &live {
        assert!(tags.contains(&c.request));
        assert!(c.record.id.starts_with(&c.request));
        assert!(c.labels.contains_key("caller"));
        assert!(record_exists(&state, &c.record.id));
    }
    // Shutting down with kill: every clone stopped and reclaimed, every
    // slot given back.
    let down = engine.shutdown(true);
    assert_eq!(down.killed.len(), 8);
    assert_eq!(down.left_running, 0);
    for r in &down.killed {
        assert!(r.errors.is_empty(), "{r:?}");
        assert!(!alive(r.pid), "VMM {} still there (or a zombie)", r.pid);
        assert!(!record_exists(&state, &r.id));
        assert!(!store.clone_dir(&r.id).exists());
    }
    let given: BTreeSet<u32> = engine.on_slots(|s| s.given_back.iter().copied().collect());
    assert_eq!(given.len(), 8);
    assert!(engine.list().is_empty());
}

#[test]
fn a_vmm_that_exits_on_its_own_is_reaped_and_its_slot_given_back() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    let engine = Engine::with_slots(config(tmp.path(), 4), FakeSlots::new(2, true)).unwrap();
    let exits = engine.exits();
    let report = engine
        .spawn(request(&store, 2, Ready::Running))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(report.summary.ready, 2, "{:#?}", report.clones);
    // Idle, the reaper sits in one epoll_wait with no timeout: nothing
    // wakes it until a VMM exits (no poll loop).
    let sc = thread_syscall("wasp-reaper");
    let mut f = sc.split_whitespace();
    let nr: i64 = f.next().unwrap().parse().unwrap_or(-1);
    assert!(
        nr == libc::SYS_epoll_wait || nr == libc::SYS_epoll_pwait,
        "the reaper is not blocked in epoll_wait: {sc}"
    );
    // The timeout argument (an int): -1, forever.
    let timeout = f
        .nth(3)
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    assert_eq!(
        timeout.map(|t| t as u32 as i32),
        Some(-1),
        "epoll_wait with a timeout: {sc}"
    );

    let victim = &report.clones[0];
    let (pid, slot_netns) = (victim.pid.unwrap(), victim.netns.clone().unwrap());
    sigkill(pid);
    let r = exits
        .recv_timeout(EVENT_BOUND)
        .expect("the exit was noticed");
    assert_eq!(r.id, victim.id);
    assert_eq!(r.pid, pid);
    assert_eq!(r.vmm, VmmFate::AlreadyGone);
    assert_eq!(r.status, Some(128 + libc::SIGKILL));
    assert!(r.errors.is_empty(), "{r:?}");
    // Reaped (no zombie), record and files removed, slot given back.
    assert!(!alive(pid), "VMM {pid} left as a zombie");
    assert!(!record_exists(&state, &victim.id));
    assert!(!store.clone_dir(&victim.id).exists());
    let slot =
        engine.on_slots(|s| s.nss.iter().position(|n| n.name() == slot_netns).unwrap() as u32);
    assert_eq!(engine.on_slots(|s| s.given_back.clone()), vec![slot]);
    // The other clone is untouched.
    let live = engine.list();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].record.id, report.clones[1].id);
    assert!(alive(report.clones[1].pid.unwrap()));
    engine.shutdown(true);
}

#[test]
fn kill_stops_one_clone_and_shutdown_leaves_the_rest_running() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    let engine = Engine::with_slots(config(tmp.path(), 4), FakeSlots::new(3, true)).unwrap();
    let report = engine
        .spawn(request(&store, 3, Ready::Running))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(report.summary.ready, 3, "{:#?}", report.clones);
    let first = &report.clones[0];
    let r = engine.kill(&first.id, Duration::from_secs(5)).unwrap();
    assert!(
        matches!(r.vmm, VmmFate::Terminated | VmmFate::Killed),
        "{r:?}"
    );
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(!alive(first.pid.unwrap()));
    assert!(!record_exists(&state, &first.id));
    assert_eq!(engine.on_slots(|s| s.given_back.len()), 1);
    // Not twice, and never an id it does not run.
    let again = engine.kill(&first.id, Duration::ZERO).unwrap_err();
    assert!(again.to_string().contains(&first.id), "{again}");

    let down = engine.shutdown(false);
    assert!(down.killed.is_empty());
    assert_eq!(down.left_running, 2);
    assert!(down.driver_error.is_none());
    for c in &report.clones[1..] {
        assert!(alive(c.pid.unwrap()), "{} stopped at shutdown", c.id);
        assert!(record_exists(&state, &c.id));
    }
    // No more requests after shutdown.
    let e = engine
        .spawn(request(&store, 1, Ready::Running))
        .unwrap_err();
    assert!(matches!(e, SpawnError::Stopped), "{e}");
    // The guard tears the two clones down by their records, as `wasp kill`.
}

#[test]
fn a_bad_request_is_refused_at_once_and_the_engine_goes_on() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    let engine = Engine::with_slots(config(tmp.path(), 2), FakeSlots::new(1, true)).unwrap();
    let e = engine
        .spawn(request(&store, 0, Ready::Running))
        .unwrap_err();
    assert!(matches!(e, SpawnError::Count(0)), "{e}");
    let missing = SpawnRequest::new(SnapshotSource::Dir(tmp.path().join("nope")), 1);
    let e = engine.spawn(missing).unwrap_err();
    assert!(matches!(e, SpawnError::Storage(_)), "{e}");
    // A snapshot given by directory is opened on the engine's runtime dir.
    let by_dir = SpawnRequest {
        ready: Ready::Running,
        ..SpawnRequest::new(SnapshotSource::Dir(tmp.path().join("snap")), 1)
    };
    let report = engine.spawn(by_dir).unwrap().wait().unwrap();
    assert_eq!(report.summary.ready, 1, "{:#?}", report.clones);
    engine.shutdown(true);
}

/// The real pool in a private host netns, removed on drop.
struct RealPool {
    host: testkit::TestNetns,
    pool: String,
    state: PathBuf,
}

impl Drop for RealPool {
    fn drop(&mut self) {
        testkit::teardown_all(&self.state);
        let prefix = format!("{}-{}-", wasp::paths::PREFIX, self.pool);
        drop(testkit::NetnsPrefixGuard(prefix));
    }
}

#[test]
fn an_engine_serves_four_threads_at_once_on_the_real_pool_and_reuses_a_reaped_slot() {
    root_or_skip!();
    const THREADS: usize = 4;
    const EACH: usize = 25;
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let host = testkit::TestNetns::new("eng");
    let pool = format!("e{}", std::process::id());
    let guard = RealPool {
        host,
        pool: pool.clone(),
        state: tmp.path().join("state"),
    };
    let net = wasp::pipeline::slot::SlotNet {
        pool: pool.clone(),
        ..wasp::pipeline::slot::SlotNet::default()
    };
    let setup = PoolSetup {
        net,
        host: wasp::pipeline::slot::HostNet {
            netns: Some(guard.host.name().to_owned()),
            ..Default::default()
        },
        // Exactly the clones: once they are up the pool is empty, and the
        // next clone can only get a slot given back.
        warm: THREADS * EACH,
        low_water: 0,
        high_water: usize::MAX,
    };
    let engine = Arc::new(Engine::open(config(tmp.path(), 32), setup).unwrap());
    let exits = engine.exits();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (engine, store) = (engine.clone(), store.clone());
            std::thread::spawn(move || {
                engine
                    .spawn(request(&store, EACH, Ready::Tcp(22)))
                    .unwrap()
                    .wait()
                    .unwrap()
            })
        })
        .collect();
    let reports: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    let clones: Vec<_> = reports.iter().flat_map(|r| r.clones.iter()).collect();
    for r in &reports {
        assert_eq!(r.summary.ready, EACH, "{:#?}", r.clones);
    }
    let ips: BTreeSet<_> = clones.iter().map(|c| c.clone_ip.unwrap()).collect();
    let slots: BTreeSet<_> = clones.iter().map(|c| c.netns.clone().unwrap()).collect();
    assert_eq!(ips.len(), THREADS * EACH, "a clone IP was handed out twice");
    assert_eq!(slots.len(), THREADS * EACH, "a slot was handed out twice");
    let st = engine.pool_status().unwrap();
    assert_eq!((st.free, st.in_use), (0, THREADS * EACH), "{st:?}");

    // A VMM killed from outside: reaped, its slot recycled into the pool,
    // and the next clone gets that very slot.
    let victim = clones[37];
    sigkill(victim.pid.unwrap());
    let r = exits
        .recv_timeout(EVENT_BOUND)
        .expect("the exit was noticed");
    assert_eq!(r.id, victim.id);
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(!record_exists(&guard.state, &victim.id));
    let st = engine.pool_status().unwrap();
    assert_eq!((st.free, st.in_use), (1, THREADS * EACH - 1), "{st:?}");
    let next = engine
        .spawn(request(&store, 1, Ready::Tcp(22)))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(next.summary.ready, 1, "{:#?}", next.clones);
    assert_eq!(next.clones[0].netns, victim.netns);
    assert_eq!(next.clones[0].clone_ip, victim.clone_ip);

    let down = engine.shutdown(true);
    assert_eq!(down.killed.len(), THREADS * EACH);
    assert!(down.killed.iter().all(|r| r.errors.is_empty()), "{down:?}");
    let engine = Arc::try_unwrap(engine).unwrap();
    let slots = engine.into_slots();
    slots.pool().drain().unwrap();
    slots.pool().ops().remove_host().unwrap();
}

//! The engine's control of live clones ([`wasp::engine`]): TTL expiry on
//! the reaper's timer, `set_ttl`, pause and resume through the VMM's API
//! (the stand-in, and real Firecracker 1.12.1), kills by label, capacity
//! and the `Overloaded` refusal, run-time pool marks, and restart
//! adoption of live clones by a new engine on the same state dir.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use testkit::fake_slots::FakeSlots;
use wasp::engine::batch::SpawnError;
use wasp::engine::{
    CloneState, Engine, EngineConfig, EngineError, PoolMarks, PoolSetup, ReapCause, SnapshotSource,
    SpawnRequest,
};
use wasp::pipeline::launch::Vmm;
use wasp::pipeline::ready::Ready;
use wasp::pipeline::restore::Timeouts;
use wasp::pipeline::storage::clone::{CloneStore, Mode};
use wasp::snapshot::synth::{synth, SynthOptions};
use wasp::vmm::api::Client;

/// A bound on waits for an event that must come (never a sleep).
const EVENT_BOUND: Duration = Duration::from_secs(60);
/// A TTL no test outlives.
const HOUR: Duration = Duration::from_secs(3600);

fn snapshot(root: &Path) -> Arc<CloneStore> {
    let snap = root.join("snap");
    synth(&SynthOptions {
        out: snap.clone(),
        ..Default::default()
    })
    .unwrap();
    Arc::new(CloneStore::open(&snap, &root.join("run"), Mode::Auto).unwrap())
}

fn config(root: &Path, vmm: Vmm) -> EngineConfig {
    let mut c = EngineConfig::new(vmm, root.join("state"), root.join("run"));
    c.parallel = 4;
    c
}

fn standin() -> Vmm {
    Vmm::Standin(env!("CARGO_BIN_EXE_wasp-standin").into())
}

fn request(source: SnapshotSource, count: usize) -> SpawnRequest {
    SpawnRequest {
        ready: Ready::Running,
        timeouts: Timeouts {
            socket: Duration::from_secs(20),
            load: Duration::from_secs(20),
            api: Duration::from_secs(10),
            ready: Duration::from_secs(30),
        },
        ready_retry: Duration::from_millis(10),
        ..SpawnRequest::new(source, count)
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn record(state: &Path, id: &str) -> Option<wasp::state::CloneRecord> {
    wasp::state::Store::open(state).unwrap().get(id).ok()
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The state `GET /` reports over the clone's API socket.
fn vmm_state(sock: &Path) -> String {
    Client::connect(sock)
        .unwrap()
        .get_instance_info()
        .unwrap()
        .state
}

/// The syscall line of this process's thread named `name`.
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
fn a_clone_whose_ttl_ends_is_reaped_and_set_ttl_extends_or_clears_it() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    let engine =
        Engine::with_slots(config(tmp.path(), standin()), FakeSlots::new(4, true)).unwrap();
    let exits = engine.exits();
    let before = now_ms();
    let mut req = request(SnapshotSource::Store(store.clone()), 3);
    req.ttl = Some(HOUR);
    let report = engine.spawn(req).unwrap().wait().unwrap();
    assert_eq!(report.summary.ready, 3, "{:#?}", report.clones);
    let ids: Vec<String> = report.clones.iter().map(|c| c.id.clone()).collect();
    // Each clone's deadline is an hour from its ready time, in the engine
    // and in its record.
    for id in &ids {
        let c = engine.get(id).unwrap();
        let d = c.expires_at_ms.unwrap();
        assert!(d >= before + HOUR.as_millis() as u64, "{c:?}");
        assert_eq!(record(&state, id).unwrap().expires_at_ms, Some(d));
    }
    // With deadlines armed, the reaper still waits in one epoll_wait with
    // no timeout: the timerfd beside the pidfds does the timing.
    let sc = thread_syscall("wasp-reaper");
    let mut f = sc.split_whitespace();
    let nr: i64 = f.next().unwrap().parse().unwrap_or(-1);
    assert!(
        nr == libc::SYS_epoll_wait || nr == libc::SYS_epoll_pwait,
        "the reaper is not blocked in epoll_wait: {sc}"
    );
    let timeout = f
        .nth(3)
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    assert_eq!(timeout.map(|t| t as u32 as i32), Some(-1), "{sc}");

    // Cleared: no deadline, in the engine and the record.
    let c = engine.set_ttl(&ids[1], None).unwrap();
    assert_eq!(c.expires_at_ms, None);
    assert_eq!(record(&state, &ids[1]).unwrap().expires_at_ms, None);
    // Extended: a later deadline.
    let old = engine.get(&ids[2]).unwrap().expires_at_ms.unwrap();
    let c = engine.set_ttl(&ids[2], Some(2 * HOUR)).unwrap();
    assert!(c.expires_at_ms.unwrap() > old);
    assert_eq!(
        record(&state, &ids[2]).unwrap().expires_at_ms,
        c.expires_at_ms
    );
    // Shortened to now: the reaper stops it at once.
    let victim = &report.clones[0];
    engine.set_ttl(&victim.id, Some(Duration::ZERO)).unwrap();
    let r = exits.recv_timeout(EVENT_BOUND).expect("the TTL ended");
    assert_eq!(r.id, victim.id);
    assert_eq!(r.cause, ReapCause::TtlExpired);
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(!alive(victim.pid.unwrap()), "VMM left running or a zombie");
    assert!(record(&state, &victim.id).is_none());
    assert!(!store.clone_dir(&victim.id).exists());
    assert_eq!(engine.on_slots(|s| s.given_back.clone()), vec![r.slot]);
    assert!(engine.get(&victim.id).is_none());
    // The others are untouched.
    assert_eq!(engine.list().len(), 2);

    // A TTL given with the request: the clone is reaped when it ends.
    let mut req = request(SnapshotSource::Store(store.clone()), 1);
    req.ttl = Some(Duration::from_millis(200));
    let short = engine.spawn(req).unwrap().wait().unwrap();
    assert_eq!(short.summary.ready, 1, "{:#?}", short.clones);
    let r = exits.recv_timeout(EVENT_BOUND).expect("the TTL ended");
    assert_eq!(r.id, short.clones[0].id);
    assert_eq!(r.cause, ReapCause::TtlExpired);
    assert!(record(&state, &r.id).is_none());

    // Unknown ids are refused by name.
    let e = engine.set_ttl("nope-0", None).unwrap_err();
    assert!(matches!(e, EngineError::NoClone(_)), "{e}");
    let down = engine.shutdown(true);
    assert_eq!(down.killed.len(), 2);
    assert!(down.killed.iter().all(|r| r.cause == ReapCause::Shutdown));
}

#[test]
fn pause_and_resume_go_through_the_vmm_api_and_a_paused_clone_is_still_reaped() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    let engine =
        Engine::with_slots(config(tmp.path(), standin()), FakeSlots::new(1, true)).unwrap();
    let exits = engine.exits();
    let report = engine
        .spawn(request(SnapshotSource::Store(store.clone()), 1))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(report.summary.ready, 1, "{:#?}", report.clones);
    let id = &report.clones[0].id;
    let sock = engine.get(id).unwrap().record.api_sock;
    assert_eq!(vmm_state(&sock), "Running");
    assert_eq!(engine.get(id).unwrap().state, CloneState::Running);

    let c = engine.pause(id).unwrap();
    assert_eq!(c.state, CloneState::Paused);
    assert_eq!(vmm_state(&sock), "Paused");
    assert!(record(&state, id).unwrap().paused);
    // Not twice.
    let e = engine.pause(id).unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::WrongState {
                state: CloneState::Paused,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(id.as_str()), "{e}");
    // It keeps its slot while paused.
    assert!(engine.on_slots(|s| s.given_back.is_empty()));

    let c = engine.resume(id).unwrap();
    assert_eq!(c.state, CloneState::Running);
    assert_eq!(vmm_state(&sock), "Running");
    assert!(!record(&state, id).unwrap().paused);
    let e = engine.resume(id).unwrap_err();
    assert!(matches!(e, EngineError::WrongState { .. }), "{e}");

    // A failed API call changes nothing: the socket is moved away.
    let aside = sock.with_extension("aside");
    std::fs::rename(&sock, &aside).unwrap();
    let e = engine.pause(id).unwrap_err();
    assert!(matches!(e, EngineError::Vmm { .. }), "{e}");
    assert!(
        wasp::error::chain(&e).contains(&sock.display().to_string()),
        "{}",
        wasp::error::chain(&e)
    );
    assert_eq!(engine.get(id).unwrap().state, CloneState::Running);
    assert!(!record(&state, id).unwrap().paused);
    std::fs::rename(&aside, &sock).unwrap();

    // A paused clone whose VMM dies is reaped like any other.
    engine.pause(id).unwrap();
    sigkill(report.clones[0].pid.unwrap());
    let r = exits
        .recv_timeout(EVENT_BOUND)
        .expect("the exit was noticed");
    assert_eq!(r.id, *id);
    assert_eq!(r.cause, ReapCause::Exited);
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(record(&state, id).is_none());
    assert_eq!(engine.on_slots(|s| s.given_back.len()), 1);
    let e = engine.pause(id).unwrap_err();
    assert!(matches!(e, EngineError::NoClone(_)), "{e}");
}

#[test]
fn kill_matching_stops_exactly_the_clones_with_every_label() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    let engine =
        Engine::with_slots(config(tmp.path(), standin()), FakeSlots::new(5, true)).unwrap();
    let spawn = |n: usize, l: &[(&str, &str)]| {
        let mut req = request(SnapshotSource::Store(store.clone()), n);
        req.labels = labels(l);
        let r = engine.spawn(req).unwrap().wait().unwrap();
        assert_eq!(r.summary.ready, n, "{:#?}", r.clones);
        r.clones
            .iter()
            .map(|c| c.id.clone())
            .collect::<BTreeSet<_>>()
    };
    let a = spawn(2, &[("team", "a"), ("job", "1")]);
    let a2 = spawn(1, &[("team", "a"), ("job", "2")]);
    let b = spawn(2, &[("team", "b"), ("job", "1")]);
    // Labels are kept with each clone and its record.
    for id in &a2 {
        let c = engine.get(id).unwrap();
        assert_eq!(c.labels, labels(&[("team", "a"), ("job", "2")]));
        assert_eq!(record(&state, id).unwrap().labels, c.labels);
    }
    // No clone has both of these.
    let none = engine.kill_matching(&labels(&[("team", "b"), ("job", "2")]), Duration::ZERO);
    assert!(none.is_empty());
    let killed = engine.kill_matching(&labels(&[("team", "a"), ("job", "1")]), HOUR);
    let got: BTreeSet<String> = killed.iter().map(|r| r.id.clone()).collect();
    assert_eq!(got, a);
    for r in &killed {
        assert_eq!(r.cause, ReapCause::Killed);
        assert!(r.errors.is_empty(), "{r:?}");
        assert!(!alive(r.pid));
        assert!(record(&state, &r.id).is_none());
    }
    let left: BTreeSet<String> = engine.list().into_iter().map(|c| c.record.id).collect();
    assert_eq!(left, a2.union(&b).cloned().collect());
    let killed = engine.kill_matching(&labels(&[("team", "a")]), Duration::from_secs(5));
    assert_eq!(
        killed.iter().map(|r| r.id.clone()).collect::<BTreeSet<_>>(),
        a2
    );
    // Empty labels match every clone.
    assert_eq!(
        engine
            .kill_matching(&BTreeMap::new(), Duration::from_secs(5))
            .len(),
        2
    );
    assert!(engine.list().is_empty());
    assert_eq!(engine.on_slots(|s| s.given_back.len()), 5);
}

#[test]
fn a_request_over_capacity_is_refused_before_anything_is_taken() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    let engine =
        Engine::with_slots(config(tmp.path(), standin()), FakeSlots::new(3, true)).unwrap();
    let cap = engine.capacity();
    assert_eq!((cap.free_slots, cap.max_slots, cap.clones), (3, 3, 0));
    assert_eq!(cap.clones_possible, 3, "{cap:?}");
    assert!(cap.mem_available_bytes > 0 && cap.fds_open > 0, "{cap:?}");
    assert_eq!(
        cap.fd_limit,
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap()
            .1
    );
    // 4 > 3: refused at once, nothing taken, no clone made.
    let e = engine
        .spawn(request(SnapshotSource::Store(store.clone()), 4))
        .unwrap_err();
    match &e {
        SpawnError::Overloaded {
            asked,
            possible,
            retry_after,
        } => {
            assert_eq!((*asked, *possible), (4, 3));
            assert!(*retry_after >= Duration::from_secs(1));
        }
        e => panic!("{e}"),
    }
    assert!(e.to_string().contains("retry after"), "{e}");
    assert_eq!(engine.capacity().free_slots, 3);
    assert!(engine.list().is_empty());
    assert!(wasp::state::Store::open(&state)
        .unwrap()
        .list()
        .unwrap()
        .0
        .is_empty());
    // What fits is served; then the host is full.
    let mut req = request(SnapshotSource::Store(store.clone()), 2);
    req.ttl = Some(HOUR);
    let r = engine.spawn(req).unwrap().wait().unwrap();
    assert_eq!(r.summary.ready, 2, "{:#?}", r.clones);
    let cap = engine.capacity();
    assert_eq!((cap.free_slots, cap.clones, cap.clones_possible), (1, 2, 1));
    let e = engine
        .spawn(request(SnapshotSource::Store(store.clone()), 2))
        .unwrap_err();
    match e {
        // The earliest TTL ends in about an hour: the hint says so (capped
        // at a minute).
        SpawnError::Overloaded { retry_after, .. } => {
            assert_eq!(retry_after, Duration::from_secs(60))
        }
        e => panic!("{e}"),
    }
    engine.shutdown(true);
}

#[test]
fn a_clone_whose_record_cannot_be_written_fails_and_is_reclaimed() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let state = tmp.path().join("state");
    let engine =
        Engine::with_slots(config(tmp.path(), standin()), FakeSlots::new(1, true)).unwrap();
    // The records' directory becomes a file: every write fails.
    let clones = state.join(wasp::state::CLONES);
    std::fs::remove_dir(&clones).unwrap();
    std::fs::write(&clones, b"").unwrap();
    let report = engine
        .spawn(request(SnapshotSource::Store(store.clone()), 1))
        .unwrap()
        .wait()
        .unwrap();
    std::fs::remove_file(&clones).unwrap();
    let _guard = testkit::TeardownGuard(&state);
    // Never reported ready without a record: failed in its own phase, its
    // VMM, files and slot reclaimed, nothing watched.
    assert_eq!(report.summary.failed, 1, "{:#?}", report.clones);
    let c = &report.clones[0];
    assert_eq!(c.failed_phase.as_deref(), Some("record"), "{c:?}");
    assert!(
        c.error.as_deref().unwrap().contains("cannot write"),
        "{c:?}"
    );
    assert!(!store.clone_dir(&c.id).exists());
    assert_eq!(engine.on_slots(|s| s.given_back.len()), 1);
    assert!(engine.list().is_empty());
}

#[test]
fn firecracker_pause_and_resume_keep_the_clone_and_its_slot() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let (golden, _) = testkit::firecracker_golden(tmp.path());
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    let fc = Vmm::Firecracker(testkit::firecracker_bin());
    let engine = Engine::with_slots(config(tmp.path(), fc), FakeSlots::new(1, true)).unwrap();
    let report = engine
        .spawn(request(SnapshotSource::Dir(golden), 1))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(report.summary.ready, 1, "{:#?}", report.clones);
    let id = &report.clones[0].id;
    let c = engine.get(id).unwrap();
    assert_eq!(c.record.vmm, "firecracker");
    let sock = c.record.api_sock;
    assert_eq!(vmm_state(&sock), "Running");

    assert_eq!(engine.pause(id).unwrap().state, CloneState::Paused);
    assert_eq!(vmm_state(&sock), "Paused");
    assert!(record(&state, id).unwrap().paused);
    // Paused, it keeps its slot and its VMM.
    let st = engine.pool_status().unwrap();
    assert_eq!((st.free, st.in_use), (0, 1), "{st:?}");
    assert!(engine.on_slots(|s| s.given_back.is_empty()));
    assert!(alive(report.clones[0].pid.unwrap()));

    assert_eq!(engine.resume(id).unwrap().state, CloneState::Running);
    assert_eq!(vmm_state(&sock), "Running");
    assert!(!record(&state, id).unwrap().paused);
    let r = engine.kill(id, Duration::from_secs(5)).unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(engine.on_slots(|s| s.given_back.len()), 1);
}

/// The real pool in a private host netns, removed on drop.
struct RealPool {
    host: testkit::TestNetns,
    pool: String,
    state: PathBuf,
}

impl RealPool {
    fn new(tag: &str, state: PathBuf) -> Self {
        RealPool {
            host: testkit::TestNetns::new(tag),
            pool: format!("{tag}{}", std::process::id()),
            state,
        }
    }

    fn setup(&self, warm: usize) -> PoolSetup {
        PoolSetup {
            net: wasp::pipeline::slot::SlotNet {
                pool: self.pool.clone(),
                ..wasp::pipeline::slot::SlotNet::default()
            },
            host: wasp::pipeline::slot::HostNet {
                netns: Some(self.host.name().to_owned()),
                ..Default::default()
            },
            warm,
            low_water: 0,
            high_water: usize::MAX,
        }
    }

    /// The pool's slot namespaces, as `ip netns` lists them.
    fn netns(&self) -> usize {
        let prefix = format!("{}-{}-", wasp::paths::PREFIX, self.pool);
        testkit::ip_netns_list()
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .count()
    }
}

impl Drop for RealPool {
    fn drop(&mut self) {
        testkit::teardown_all(&self.state);
        let prefix = format!("{}-{}-", wasp::paths::PREFIX, self.pool);
        drop(testkit::NetnsPrefixGuard(prefix));
    }
}

#[test]
fn a_new_engine_adopts_the_live_clones_and_reclaims_the_dead_ones() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // Clone dirs carry the state dir's mark (as with a snapshot given by
    // directory): B removes a dead clone's only then.
    let owner = wasp::state::Owner::of_state_dir(&state).unwrap();
    let store = Arc::new((*snapshot(tmp.path())).clone().with_owner(owner));
    let pool = RealPool::new("ad", state.clone());
    let cfg = config(tmp.path(), standin());

    // Engine A: three clones with labels and a TTL, one paused; shut down
    // with the clones left running, and gone.
    let a = Engine::open(cfg.clone(), pool.setup(4)).unwrap();
    assert!(a.adopted().adopted.is_empty());
    let mut req = request(SnapshotSource::Store(store.clone()), 3);
    req.labels = labels(&[("team", "a")]);
    req.ttl = Some(HOUR);
    let report = a.spawn(req).unwrap().wait().unwrap();
    assert_eq!(report.summary.ready, 3, "{:#?}", report.clones);
    let (kept, dead, expired) = (&report.clones[0], &report.clones[1], &report.clones[2]);
    a.pause(&kept.id).unwrap();
    let kept_before = a.get(&kept.id).unwrap();
    let down = a.shutdown(false);
    assert_eq!(down.left_running, 3);
    drop(a);

    // While no engine runs: one VMM is killed, one clone's deadline
    // passes (written as an engine would have).
    let dead_fd = wasp::sys::pidfd::pidfd_open(dead.pid.unwrap()).unwrap();
    sigkill(dead.pid.unwrap());
    assert!(wasp::sys::pidfd::pidfd_exited(&dead_fd, -1).unwrap());
    let records = wasp::state::Store::open(&state).unwrap();
    let mut rec = records.get(&expired.id).unwrap();
    rec.expires_at_ms = Some(now_ms() - 1);
    records.put(&rec).unwrap();
    let expired_fd = wasp::sys::pidfd::pidfd_open(expired.pid.unwrap()).unwrap();
    // And the paused one was resumed by an engine that died before it
    // could record it: its record still says paused.
    let mut c = Client::connect(&kept_before.record.api_sock).unwrap();
    c.patch_vm(wasp::vmm::api::VmRunState::Resumed).unwrap();
    assert!(record(&state, &kept.id).unwrap().paused);

    // Engine B on the same state dir and pool.
    let b = Engine::open(cfg, pool.setup(0)).unwrap();
    let rep = b.adopted();
    assert!(rep.errors.is_empty(), "{rep:?}");
    assert_eq!(
        rep.adopted.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&kept.id, &expired.id])
    );
    assert_eq!(rep.reclaimed, vec![dead.id.clone()]);
    // A third engine on the same state dir while B runs (a `wasp spawn`
    // beside a service): B leases those slots, so C adopts nothing,
    // reclaims nothing and reports nothing.
    {
        let c = Engine::open(config(tmp.path(), standin()), pool.setup(0)).unwrap();
        let rep = c.adopted();
        assert!(
            rep.adopted.is_empty() && rep.reclaimed.is_empty() && rep.errors.is_empty(),
            "{rep:?}"
        );
        assert!(c.list().is_empty());
        c.shutdown(false);
    }
    // The dead clone: record, files gone; its slot is free in B's pool.
    assert!(record(&state, &dead.id).is_none());
    assert!(!store.clone_dir(&dead.id).exists());
    // The expired one: stopped by B's TTL timer at once.
    assert!(wasp::sys::pidfd::pidfd_exited(&expired_fd, -1).unwrap());
    // The kept one: listed as A knew it (labels, request, deadline), in
    // the state its VMM reports, and B controls it.
    let live = b.list();
    assert!(live.iter().all(|c| c.record.id != dead.id));
    let kept_now = live.iter().find(|c| c.record.id == kept.id).unwrap();
    assert_eq!(kept_now.labels, labels(&[("team", "a")]));
    assert_eq!(kept_now.request, kept_before.request);
    assert_eq!(kept_now.expires_at_ms, kept_before.expires_at_ms);
    assert_eq!(kept_now.state, CloneState::Running);
    assert!(!record(&state, &kept.id).unwrap().paused);
    assert_eq!(b.pause(&kept.id).unwrap().state, CloneState::Paused);
    assert_eq!(vmm_state(&kept_now.record.api_sock), "Paused");
    assert_eq!(b.resume(&kept.id).unwrap().state, CloneState::Running);
    assert_eq!(vmm_state(&kept_now.record.api_sock), "Running");
    // Its slot is held: never handed out to a new clone.
    let next = b
        .spawn(request(SnapshotSource::Store(store.clone()), 2))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(next.summary.ready, 2, "{:#?}", next.clones);
    for c in &next.clones {
        assert_ne!(c.netns, kept.netns);
        assert_ne!(c.clone_ip, kept.clone_ip);
    }
    let r = b.kill(&kept.id, Duration::from_secs(5)).unwrap();
    assert_eq!(r.cause, ReapCause::Killed);
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(!alive(kept.pid.unwrap()), "VMM left running or a zombie");
    assert!(record(&state, &kept.id).is_none());
    assert!(!store.clone_dir(&kept.id).exists());

    let down = b.shutdown(true);
    assert_eq!(down.killed.len(), 2, "{down:?}");
    // Every slot is back, none built twice: the pool still has 4.
    assert!(record(&state, &expired.id).is_none());
    assert!(!store.clone_dir(&expired.id).exists());
    let st = b.pool_status().unwrap();
    assert_eq!((st.free, st.in_use), (4, 0), "{st:?}");
    assert_eq!(pool.netns(), 4);
    let slots = b.into_slots();
    slots.pool().drain().unwrap();
    slots.pool().ops().remove_host().unwrap();
}

#[test]
fn an_engine_with_a_refill_reopened_over_live_clones_adopts_them_all_and_never_hands_out_their_slots(
) {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let store = snapshot(tmp.path());
    let pool = RealPool::new("rf", state.clone());
    let cfg = config(tmp.path(), standin());
    // With the background refill on (low water > 0), which starts building
    // the moment the pool opens, while the live clones' slots are being set
    // aside.
    let refilling = || PoolSetup {
        low_water: 4,
        ..pool.setup(4)
    };

    let a = Engine::open(cfg.clone(), refilling()).unwrap();
    let mut req = request(SnapshotSource::Store(store.clone()), 3);
    req.ttl = Some(HOUR);
    let report = a.spawn(req).unwrap().wait().unwrap();
    assert_eq!(report.summary.ready, 3, "{:#?}", report.clones);
    let kept: BTreeMap<String, String> = report
        .clones
        .iter()
        .map(|c| (c.id.clone(), c.netns.clone().unwrap()))
        .collect();
    assert_eq!(a.shutdown(false).left_running, 3);
    drop(a);

    // Re-opened several times: the race between the refill and the
    // set-aside gets its chances.
    for round in 0..6 {
        let b = Engine::open(cfg.clone(), refilling()).unwrap();
        let rep = b.adopted();
        assert!(rep.errors.is_empty(), "round {round}: {rep:?}");
        assert_eq!(
            rep.adopted.iter().collect::<BTreeSet<_>>(),
            kept.keys().collect::<BTreeSet<_>>(),
            "round {round}: {rep:?}"
        );
        assert_eq!(
            b.pool_status().unwrap().in_use,
            3,
            "round {round}: the live clones hold their slots"
        );
        // Everything free, and more built on demand: never a live clone's
        // slot.
        let n = b.pool_status().unwrap().free + 2;
        let next = b
            .spawn(request(SnapshotSource::Store(store.clone()), n))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(next.summary.ready, n, "round {round}: {:#?}", next.clones);
        for c in &next.clones {
            assert!(
                !kept
                    .values()
                    .any(|ns| c.netns.as_deref() == Some(ns.as_str())),
                "round {round}: {} got the live clone's slot {:?}",
                c.id,
                c.netns
            );
            assert!(b
                .kill(&c.id, Duration::from_secs(5))
                .unwrap()
                .errors
                .is_empty());
        }
        assert_eq!(b.shutdown(false).left_running, 3, "round {round}");
        drop(b);
    }

    let b = Engine::open(cfg, pool.setup(0)).unwrap();
    assert_eq!(b.adopted().adopted.len(), 3);
    assert_eq!(b.shutdown(true).killed.len(), 3);
    let slots = b.into_slots();
    slots.pool().drain().unwrap();
    slots.pool().ops().remove_host().unwrap();
}

#[test]
fn a_slash_28_pool_fills_to_its_last_address_while_its_refill_builds_too() {
    use wasp::engine::batch::{PoolSlots, Slots};
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let pool = RealPool::new("cx", tmp.path().join("state"));
    let setup = pool.setup(2);
    let cidr: wasp::pipeline::slot::Cidr = "10.213.7.0/28".parse().unwrap();
    let net = wasp::pipeline::slot::SlotNet {
        cidr,
        allow_host: vec![std::net::SocketAddrV4::new(cidr.gateway(), 8080)],
        ..setup.net
    };
    let cap = net.max_slots();
    assert_eq!(cap, 13);
    // Warm 2, refill below 1 back up to 2: every take past the warm ones
    // builds on demand while the refill builds in the background.
    let cfg = wasp::pipeline::pool::PoolConfig {
        low_water: 1,
        size: 2,
        high_water: usize::MAX,
        workers: 2,
    };
    for round in 0..3 {
        let mut slots = PoolSlots::open_with(
            net.clone(),
            &setup.host,
            2,
            std::collections::HashSet::new(),
            cfg,
        )
        .unwrap();
        let taken: Vec<_> = (0..cap)
            .map(|k| {
                slots.take().unwrap_or_else(|e| {
                    panic!(
                        "round {round}: take {k} of {cap}: {}",
                        wasp::error::chain(&*e)
                    )
                })
            })
            .collect();
        let idx: BTreeSet<u32> = taken.iter().map(|s| s.index).collect();
        assert_eq!(idx, (0..cap as u32).collect(), "round {round}");
        // Every address is in use now: one more is the CIDR's clear error.
        let e = wasp::error::chain(&*slots.take().unwrap_err());
        assert!(e.contains("is exhausted"), "round {round}: {e}");
        assert_eq!(slots.pool().status().in_use, cap, "round {round}");
        for s in taken {
            slots.give_back(s).unwrap();
        }
        assert_eq!(slots.pool().drain().unwrap(), cap, "round {round}");
        if round == 2 {
            slots.pool().ops().remove_host().unwrap();
        }
    }
}

#[test]
fn pool_marks_change_at_run_time() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let pool = RealPool::new("mk", state.clone());
    let engine = Engine::open(config(tmp.path(), standin()), pool.setup(2)).unwrap();
    assert!(engine.is_warm());
    let st = engine.pool_status().unwrap();
    assert_eq!((st.free, st.size), (2, 2), "{st:?}");
    assert_eq!(
        engine.capacity().max_slots,
        wasp::pipeline::slot::SlotNet::default().max_slots()
    );

    // Bad marks are refused by name, nothing changed.
    let e = engine
        .set_pool_marks(PoolMarks {
            low_water: Some(3),
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("low_water 3 is above size 2"), "{e}");
    assert_eq!(engine.pool_status().unwrap(), st);

    // Larger: built in the background, up to the size.
    let refilled = engine.on_slots(|s| s.pool().refill_events());
    let st = engine
        .set_pool_marks(PoolMarks {
            size: Some(5),
            low_water: Some(1),
            high_water: Some(8),
        })
        .unwrap();
    assert_eq!((st.size, st.low_water, st.high_water), (5, 1, 8));
    loop {
        let free = refilled
            .recv_timeout(EVENT_BOUND)
            .expect("the refill built the new size");
        if free >= 5 {
            break;
        }
    }
    assert_eq!(engine.pool_status().unwrap().free, 5);
    assert_eq!(pool.netns(), 5);

    // Smaller: the surplus free slots are destroyed at once.
    let st = engine
        .set_pool_marks(PoolMarks {
            size: Some(1),
            low_water: Some(0),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((st.free, st.size, st.high_water), (1, 1, 8), "{st:?}");
    assert_eq!(pool.netns(), 1);

    engine.shutdown(true);
    let slots = engine.into_slots();
    slots.pool().drain().unwrap();
    slots.pool().ops().remove_host().unwrap();
}

#[test]
fn after_a_crash_mid_batch_reconcile_then_a_new_engine_adopts_every_recorded_clone() {
    root_or_skip!();
    // `wasp spawn` runs the engine; SIGKILLed right after its 15th record,
    // with more clones in flight (launched, not recorded).
    let s = testkit::cli::World::new(wasp_bin!(), "eadopt");
    s.kill_at(s.spawn_n("40"), "clone-recorded:15");
    let before = s.seen();
    assert_eq!(before.records.len(), 15, "{before:?}");
    assert!(before.vmms.len() >= 15, "{before:?}");

    // A restarting service: reconcile first (it kills the VMMs that have
    // no record, removes their files and recycles their slots), then the
    // engine adopts every recorded clone.
    let rec = s.reconcile();
    let recorded: BTreeSet<String> = rec["adopted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recorded.len(), 15, "{rec:#}");
    let setup = PoolSetup {
        net: wasp::pipeline::slot::SlotNet {
            pool: s.pool.clone(),
            ..wasp::pipeline::slot::SlotNet::default()
        },
        host: wasp::pipeline::slot::HostNet {
            netns: Some(s.host.name().to_owned()),
            ..Default::default()
        },
        warm: 0,
        low_water: 0,
        high_water: usize::MAX,
    };
    let cfg = EngineConfig::new(standin(), s.state(), s.run_dir());
    let engine = Engine::open(cfg, setup).unwrap();
    let rep = engine.adopted();
    assert!(rep.errors.is_empty() && rep.reclaimed.is_empty(), "{rep:?}");
    assert_eq!(rep.adopted.into_iter().collect::<BTreeSet<_>>(), recorded);
    let listed: BTreeSet<String> = engine.list().into_iter().map(|c| c.record.id).collect();
    assert_eq!(listed, recorded);
    // Not children of this process: stopped and reclaimed all the same.
    let down = engine.shutdown(true);
    assert_eq!(down.killed.len(), 15);
    for r in &down.killed {
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(r.status, None);
        // Gone, or a zombie left for its parent (init) to reap.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", r.pid)).unwrap_or_default();
        assert!(
            stat.is_empty() || wasp::state::parse_state(&stat) == Some('Z'),
            "{r:?}: {stat}"
        );
    }
    drop(engine);
    s.kill_drain_and_assert_zero();
}

#[test]
fn a_vmm_started_ahead_runs_the_next_request_and_is_stopped_at_shutdown() {
    root_or_skip!();
    let tmp = tempfile::tempdir().unwrap();
    let store = snapshot(tmp.path());
    let state = tmp.path().join("state");
    let _guard = testkit::TeardownGuard(&state);
    let mut cfg = config(tmp.path(), standin());
    cfg.standby = 1;
    let engine = Engine::with_slots(cfg, FakeSlots::new(4, true)).unwrap();
    engine
        .hold_standby(SnapshotSource::Store(store.clone()))
        .unwrap();
    assert!(engine.wait_standby(EVENT_BOUND), "no standby VMM was made");
    assert_eq!(engine.standbys(), 1);
    let dirs = |s: &CloneStore| -> BTreeSet<String> {
        std::fs::read_dir(s.clones_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    // Started ahead: its clone dir and slot, no record, no clone.
    let ahead = dirs(&store);
    assert_eq!(ahead.len(), 1, "{ahead:?}");
    assert!(engine.list().is_empty());

    let r = engine
        .spawn(request(SnapshotSource::Store(store.clone()), 1))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(r.summary.ready, 1, "{:#?}", r.clones);
    let c = &r.clones[0];
    // It ran in the VMM started ahead: no slot, storage or launch on the
    // request's path.
    assert!(ahead.contains(&format!("wasp-{}", c.id)), "{ahead:?} {c:?}");
    let p = c.phases_ms;
    assert_eq!((p.slot, p.storage, p.launch), (0.0, 0.0, 0.0), "{p:?}");
    assert!(record(&state, &c.id).is_some());

    // The next one is made in the background; a request with VMM
    // arguments never takes it (its VMM must be started with them).
    assert!(engine.wait_standby(EVENT_BOUND));
    let mut req = request(SnapshotSource::Store(store.clone()), 1);
    req.vmm_args = vec!["--fault".into(), "slow-load=1".into()];
    let r2 = engine.spawn(req).unwrap().wait().unwrap();
    assert_eq!(r2.summary.ready, 1, "{:#?}", r2.clones);
    assert!(r2.clones[0].phases_ms.launch > 0.0, "{:?}", r2.clones[0]);
    assert_eq!(engine.standbys(), 1);

    // Shutdown stops the standby too: no VMM, files or slot left.
    let down = engine.shutdown(true);
    assert_eq!(down.killed.len(), 2);
    assert!(dirs(&store).is_empty(), "{:?}", dirs(&store));
    assert_eq!(engine.on_slots(|s| s.given_back.len()), 3);
}

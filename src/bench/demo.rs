//! `wasp demo`: the whole pipeline on a fresh machine, with nothing to
//! prepare and nothing left behind. It uses the stand-in VMM (and says so),
//! a private host netns, a synthesized snapshot and a warm pool; spawns the
//! clones with TCP readiness; asks each clone's agent over TCP at its clone
//! IP for its AGENT_ID; then removes everything.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::proc::{self, host_mem, HoldFigures, MemFigures};
use crate::engine::batch::{self, PoolSlots, SpawnReport};
use crate::engine::{Engine, EngineConfig, EngineError, SnapshotSource, SpawnRequest};
use crate::pipeline::env::Env;
use crate::pipeline::launch::Vmm;
use crate::pipeline::ready::Ready;
use crate::pipeline::restore::Timeouts;
use crate::pipeline::slot::{HostNet, SlotNet};
use crate::pipeline::storage::clone::{CloneStore, Mode};
use crate::snapshot::synth::{self, SynthOptions};
use crate::{ops::teardown, state, sys};

/// The pool name of `wasp spawn --demo-snapshot` clones. (`wasp demo` and
/// `wasp bench spawn` runs use a pool of their own, `demo<pid>`: slot
/// namespaces are named globally, and a run must never reconcile away
/// another run's slots.)
pub const DEMO_POOL: &str = "demo";
/// The agent port of synthesized snapshots.
pub const AGENT_PORT: u16 = 8080;
/// The host netns of `wasp spawn --demo-snapshot` clones.
pub const DEMO_HOST_NETNS: &str = "wasp-hostns-demo";
/// Where `--demo-snapshot` keeps its snapshot, under the runtime dir (on
/// the clones' filesystem, so their disks can be reflinked).
pub const DEMO_SNAPSHOT_NAME: &str = "demo-snapshot";

/// Which VMM a demo or bench batch uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoVmm {
    /// The stand-in with a synthesized snapshot; TCP readiness and agent
    /// checks through the slot.
    Standin,
    /// Real Firecracker (this path) with wasp's built-in test guest booted
    /// and snapshotted in a slot; `running` readiness (no guest network).
    Firecracker(PathBuf),
}

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Clones.
    pub count: usize,
    /// In flight at once.
    pub parallel: usize,
    /// Work directory (snapshot, runtime, state); removed at the end.
    pub work_dir: PathBuf,
    /// The VMM.
    pub vmm: DemoVmm,
    /// Restore driver (default: probe).
    pub driver: Option<crate::pipeline::ring::DriverKind>,
    /// Guest memory of the snapshot.
    pub mem_mib: u64,
    /// Hold every clone at once and account for it: before the memory
    /// figures are taken, ask each clone's VMM for its state (all must be
    /// Running at the same time), and add the per-process and kernel
    /// memory breakdown ([`HoldFigures`]).
    pub hold: bool,
    /// `count` requests of one clone each, one after the other (each
    /// request's wall time is in [`DemoReport::request_ms`]).
    pub one_at_a_time: bool,
    /// VMMs the engine holds started ahead ([`EngineConfig::standby`];
    /// experimental). With it, requests go one at a time, each once a
    /// standby is held.
    pub standby: usize,
    /// The pool registry to record the run's pool in, owned by this
    /// process (the caller's state dir's, [`crate::pipeline::registry`]):
    /// if the run is killed, a plain `wasp reconcile` of that state dir
    /// removes the pool. `None`: not recorded.
    pub registry: Option<PathBuf>,
    /// The slots' layout.
    pub layout: crate::pipeline::slot::Layout,
}

/// What the demo saw.
#[derive(Debug, serde::Serialize)]
pub struct DemoReport {
    /// The private host netns it used.
    pub host_netns: String,
    /// The spawn report.
    pub spawn: SpawnReport,
    /// Clones whose agent answered with their own AGENT_ID.
    pub agents_ok: usize,
    /// Clones whose agent did not (id and what happened).
    pub agent_failures: Vec<(String, String)>,
    /// Every cleanup error (cleanup goes on past each).
    pub cleanup_errors: Vec<String>,
    /// Memory while all clones lived.
    pub memory: MemFigures,
    /// The hold's figures (`hold`).
    pub hold: Option<HoldFigures>,
    /// Each request's wall time, submit to report (ms), one at a time.
    pub request_ms: Vec<f64>,
    /// Killing every clone (the engine's shutdown: pidfd kill, reap,
    /// files and records) plus removing the pool, in ms.
    pub teardown_ms: f64,
    /// Of which removing the pool (its host netns, then the slot names).
    pub teardown_pool_ms: f64,
}

/// Demo failures before any clone ran.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The snapshot could not be made.
    #[error("cannot synthesize the demo snapshot")]
    Synth(#[from] synth::SynthError),
    /// Storage.
    #[error("cannot set up clone storage")]
    Storage(#[from] crate::pipeline::storage::clone::StorageError),
    /// Pool.
    #[error("cannot set up the slot pool")]
    Pool(#[from] batch::PoolSlotsError),
    /// Spawn.
    #[error("the spawn failed")]
    Spawn(#[from] batch::SpawnError),
    /// The engine.
    #[error("cannot open the engine")]
    Engine(#[from] EngineError),
    /// Files.
    #[error("cannot prepare {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The golden snapshot.
    #[error("cannot make the Firecracker golden snapshot")]
    Golden(#[from] crate::snapshot::golden::GoldenError),
    /// A slot for the golden boot.
    #[error("cannot take a slot for the golden boot: {0}")]
    Slot(String),
    /// The run's state dir.
    #[error("cannot use the demo's state dir")]
    State(#[from] crate::state::StateError),
}

/// Makes the demo's stand-in snapshot at `dir` unless one is there.
pub fn ensure_snapshot(dir: &Path) -> Result<(), DemoError> {
    ensure_snapshot_sized(dir, 64)
}

fn ensure_snapshot_sized(dir: &Path, mem_mib: u64) -> Result<(), DemoError> {
    if dir.join(crate::snapshot::MANIFEST_FILE).exists() {
        return Ok(());
    }
    synth::synth(&SynthOptions {
        out: dir.to_owned(),
        mem_mib,
        ..Default::default()
    })?;
    Ok(())
}

/// Asks the clone's agent for its AGENT_ID over TCP at its clone IP. Runs
/// on the calling thread's netns.
pub fn agent_id(ip: std::net::Ipv4Addr, timeout: Duration) -> Result<String, String> {
    let addr = SocketAddrV4::new(ip, AGENT_PORT).into();
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split("\r\n\r\n").nth(1).ok_or("no HTTP body")?;
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("agent body: {e}"))?;
    v["agent_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "no agent_id in the agent's answer".into())
}

/// The slot pool of the demo (or bench) run by process `pid`: each run has
/// its own, so concurrent runs never reconcile away each other's slots.
pub fn pool_of(pid: u32) -> String {
    format!("{DEMO_POOL}{pid}")
}

/// The host netns of the demo (or bench) run by process `pid`.
pub fn host_netns_of(pid: u32) -> String {
    format!("wasp-hostns-demo{pid}")
}

/// What a killed demo or bench left, removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Leftovers {
    /// Work directories removed (`demo-<pid>`, `bench-<pid>`).
    pub dirs: Vec<PathBuf>,
    /// Host netns deleted.
    pub host_netns: Vec<String>,
    /// VMMs stopped (orphans and recorded clones).
    pub vmms: usize,
    /// Slot namespaces of their pools removed.
    pub slots: usize,
    /// Every error met.
    pub errors: Vec<String>,
}

/// Removes what killed `wasp demo` / `wasp bench spawn` runs left under
/// `root` (their work dirs `demo-<pid>` and `bench-<pid>`, found by name
/// and a dead pid): their VMMs (recorded or orphaned, by
/// [`crate::ops::reconcile`]), their host netns (bridge and nft table with it)
/// the slot namespaces of their pool `demo<pid>`, and the work dir.
pub fn reconcile_leftovers(root: &Path) -> Leftovers {
    let mut out = Leftovers::default();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = ["demo-", "bench-"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        // A live pid (its own run, or a reused pid): left alone.
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let work = e.path();
        let opts = crate::ops::reconcile::Options {
            state_dir: work.join("state"),
            runtime_dir: work.join("run"),
            tap: SlotNet::default().tap,
            pools: vec![],
            vmm_binaries: crate::ops::reconcile::vmm_binaries(None, None),
        };
        match crate::ops::reconcile::reconcile(&opts) {
            Ok(r) => {
                out.vmms += r.orphans_killed.len() + r.removed.len();
                out.errors.extend(r.errors);
            }
            Err(e) => out.errors.push(crate::error::chain(&e)),
        }
        // Healthy clones of a dead demo are still the demo's: stop them.
        if let Ok(store) = state::Store::open(&work.join("state")) {
            for r in store.list().map(|(r, _)| r).unwrap_or_default() {
                let (_, errs) = teardown::teardown(&store, &r, Duration::ZERO);
                out.vmms += 1;
                out.errors
                    .extend(errs.iter().map(|e| crate::error::chain(e)));
            }
        }
        let host = host_netns_of(pid);
        if sys::netns::exists(&host) {
            match sys::netns::delete_named(&host) {
                Ok(()) => out.host_netns.push(host),
                Err(e) => out.errors.push(format!("delete netns {host}: {e}")),
            }
        }
        // The run's own pool `demo<pid>`: its slots, unwired now, go with
        // their namespaces (veth0, tap and nft table inside them).
        let pool = SlotNet {
            pool: pool_of(pid),
            ..SlotNet::default()
        };
        match sys::netns::list_named() {
            Ok(names) => {
                for n in names.iter().filter(|n| pool.index_of_netns(n).is_some()) {
                    let lease_dir = Path::new(crate::pipeline::lease::LEASE_DIR);
                    match crate::pipeline::lease::Lease::remove_leftover_slot(lease_dir, n) {
                        Ok(true) => out.slots += 1,
                        Ok(false) => {}
                        Err(e) => out.errors.push(format!("delete netns {n}: {e}")),
                    }
                }
            }
            Err(e) => out.errors.push(format!("list /run/netns: {e}")),
        }
        match std::fs::remove_dir_all(&work) {
            Ok(()) => out.dirs.push(work),
            Err(e) => out.errors.push(format!("remove {}: {e}", work.display())),
        }
    }
    out
}

/// Runs the demo.
pub fn run(o: &DemoOptions) -> Result<DemoReport, DemoError> {
    run_observed(o, &mut |_| {})
}

/// [`run`], calling `on_done` as each clone of the batch finishes (see
/// [`crate::engine::Ticket::wait_observed`]).
pub fn run_observed(
    o: &DemoOptions,
    on_done: &mut (dyn FnMut(&batch::CloneReport) + Send),
) -> Result<DemoReport, DemoError> {
    let host_netns = host_netns_of(std::process::id());
    // Before anything is made: the hold's check that nothing stayed.
    let baseline = host_mem();
    let mut cleanup_errors = Vec::new();
    let (net, host) = run_pool(o, &host_netns);
    let result = run_inner(o, &net, &host, &mut cleanup_errors, on_done);
    // Remove everything, whatever happened above.
    let state_dir = o.work_dir.join("state");
    if let Ok(store) = state::Store::open(&state_dir) {
        if let Ok((records, _)) = store.list() {
            for r in records {
                let (_, errs) = teardown::teardown(&store, &r, Duration::from_secs(2));
                cleanup_errors.extend(errs.iter().map(|e| crate::error::chain(e)));
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&o.work_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            cleanup_errors.push(format!("remove {}: {e}", o.work_dir.display()));
        }
    }
    // The run's pool, whatever stopped the run (a pool build that failed
    // part-way, the golden boot, the engine): every slot, the host netns
    // and the registry record.
    let t_pool = std::time::Instant::now();
    cleanup_errors.extend(remove_run_pool(&net, &host));
    let pool_ms = crate::stats::ms(t_pool.elapsed());
    let (spawn, agents_ok, agent_failures, memory, hold, request_ms, kill_ms) = result?;
    let teardown_ms = kill_ms + pool_ms;
    tracing::info!("teardown: clones stopped in {kill_ms:.1} ms, pool removed in {pool_ms:.1} ms");
    let hold = hold.map(|mut h| {
        if let (Some(before), Some(after)) = (baseline, host_mem()) {
            h.residual_available_kib = before.available as i64 - after.available as i64;
            h.residual_kernel_kib = after.kernel as i64 - before.kernel as i64;
        }
        h
    });
    Ok(DemoReport {
        host_netns,
        spawn,
        agents_ok,
        agent_failures,
        cleanup_errors,
        memory,
        hold,
        request_ms,
        teardown_ms,
        teardown_pool_ms: pool_ms,
    })
}

type Inner = (
    SpawnReport,
    usize,
    Vec<(String, String)>,
    MemFigures,
    Option<HoldFigures>,
    Vec<f64>,
    f64,
);

/// The pool and host side of this process's run: pool `demo<pid>` in
/// the host netns `host_netns`, recorded as this process's own in
/// `o.registry`.
fn run_pool(o: &DemoOptions, host_netns: &str) -> (SlotNet, HostNet) {
    let net = SlotNet {
        pool: pool_of(std::process::id()),
        layout: o.layout,
        ..SlotNet::default()
    };
    let host = HostNet {
        netns: Some(host_netns.to_owned()),
        egress_uplink: None,
        registry: o.registry.clone(),
        owner: crate::pipeline::registry::Owner::me(),
        ..Default::default()
    };
    (net, host)
}

/// Removes the pool of a demo or bench run (its slots, its host netns and
/// its registry record) and returns every error met.
pub fn remove_run_pool(net: &SlotNet, host: &HostNet) -> Vec<String> {
    let (_, mut errors) = crate::ops::reconcile::remove_owned_pool(net, host, true);
    if errors.is_empty() {
        if let Some(dir) = &host.registry {
            if let Err(e) = crate::pipeline::registry::Registry::at(dir).remove(&net.pool) {
                errors.push(crate::error::chain(&e));
            }
        }
    }
    errors
}

fn run_inner(
    o: &DemoOptions,
    net: &SlotNet,
    host: &HostNet,
    cleanup_errors: &mut Vec<String>,
    on_done: &mut (dyn FnMut(&batch::CloneReport) + Send),
) -> Result<Inner, DemoError> {
    let snap = o.work_dir.join("snapshot");
    std::fs::create_dir_all(&o.work_dir).map_err(|e| DemoError::Io(o.work_dir.clone(), e))?;
    let host_netns = host.netns.as_deref().unwrap_or_default();
    let guest = crate::snapshot::golden::GuestAddr::of(net);
    let mut slots = PoolSlots::open(net.clone(), host, o.count, HashSet::new())?;
    let (vmm, ready) = match &o.vmm {
        DemoVmm::Standin => {
            ensure_snapshot_sized(&snap, o.mem_mib)?;
            let standin = crate::standin::locate(&o.work_dir)
                .map_err(|e| DemoError::Io(o.work_dir.clone(), e))?;
            (Vmm::Standin(standin), Ready::Tcp(22))
        }
        DemoVmm::Firecracker(fc) => {
            use crate::engine::batch::Slots;
            let kernel = o.work_dir.join("testguest.elf");
            crate::standin::testguest::write(&kernel)
                .map_err(|e| DemoError::Io(kernel.clone(), e))?;
            let rootfs = o.work_dir.join("rootfs.img");
            std::fs::write(&rootfs, vec![0x5au8; 1 << 20])
                .map_err(|e| DemoError::Io(rootfs.clone(), e))?;
            let lease = slots.take().map_err(|e| DemoError::Slot(e.to_string()))?;
            let made = crate::snapshot::golden::create(&crate::snapshot::golden::GoldenOptions {
                vmm: Vmm::Firecracker(fc.clone()),
                kernel,
                rootfs,
                vcpus: 1,
                mem_mib: o.mem_mib,
                boot_args: String::new(),
                ready: crate::snapshot::golden::GoldenReady::Serial(
                    regex::Regex::new("^wasp-testguest ready").expect("regex"),
                ),
                timeout: Duration::from_secs(30),
                out: snap.clone(),
                netns: lease.netns.clone(),
                tap: lease.tap.clone(),
                guest,
                sha256: false,
            });
            let back = slots.give_back(lease);
            made?;
            back.map_err(|e| DemoError::Slot(e.to_string()))?;
            (Vmm::Firecracker(fc.clone()), Ready::Running)
        }
    };
    let owner = state::Owner::of_state_dir(&o.work_dir.join("state"))?;
    let store =
        Arc::new(CloneStore::open(&snap, &o.work_dir.join("run"), Mode::Auto)?.with_owner(owner));
    let host_before = host_mem();
    let mut cfg = EngineConfig::new(vmm, o.work_dir.join("state"), o.work_dir.join("run"));
    cfg.parallel = o.parallel;
    cfg.driver = o.driver;
    cfg.standby = o.standby;
    let engine = Engine::with_slots(cfg, slots)?;
    let mut env = Env::new();
    let _ = env.add_plain("API_URL=http://10.0.0.1:8080/");
    let req = |count| SpawnRequest {
        env: env.clone(),
        ready,
        timeouts: Timeouts::default(),
        ..SpawnRequest::new(SnapshotSource::Store(store.clone()), count)
    };
    let mut request_ms = Vec::new();
    let report = if o.one_at_a_time || o.standby > 0 {
        one_at_a_time(&engine, o, &store, req, &mut request_ms, on_done)
    } else {
        engine
            .spawn(req(o.count))
            .and_then(|t| t.wait_observed(|row| on_done(row)))
    };
    let memory = match &report {
        Ok(r) => {
            let pids: Vec<i32> = r.clones.iter().filter_map(|c| c.pid).collect();
            proc::mem_figures(&pids, host_before)
        }
        Err(_) => MemFigures::default(),
    };
    let hold = match (&report, o.hold, host_before, host_mem()) {
        (Ok(_), true, Some(before), Some(during)) => {
            let records = state::Store::open(&o.work_dir.join("state"))
                .and_then(|s| s.list())
                .map(|(r, _)| r)
                .unwrap_or_default();
            // The residual is completed after teardown, in `run`.
            Some(proc::hold_figures(&records, before, during))
        }
        _ => None,
    };
    // Check every ready clone's agent from the host netns, as a user would.
    let (ok, failures) = match &report {
        Ok(r) if o.vmm == DemoVmm::Standin => {
            let targets: Vec<(String, std::net::Ipv4Addr)> = r
                .clones
                .iter()
                .filter(|c| c.ok)
                .filter_map(|c| Some((c.id.clone(), c.clone_ip?)))
                .collect();
            let fd = sys::netns::open_named(host_netns)
                .map_err(|e| DemoError::Io(host_netns.into(), e))?;
            sys::netns::run_in(fd, || {
                let mut ok = 0;
                let mut bad = Vec::new();
                for (id, ip) in targets {
                    match agent_id(ip, Duration::from_secs(5)) {
                        Ok(got) if got == id => ok += 1,
                        Ok(got) => bad.push((id, format!("agent says it is {got:?}"))),
                        Err(e) => bad.push((id, e)),
                    }
                }
                (ok, bad)
            })
            .map_err(|e| DemoError::Io(host_netns.into(), e))?
        }
        _ => (0, Vec::new()),
    };
    // Stop the clones before draining the pool (their slots go with it):
    // the engine kills each through its pidfd, reaps it, removes its files
    // and record, and gives its slot back.
    let t_down = std::time::Instant::now();
    let down = engine.shutdown(true);
    for r in &down.killed {
        cleanup_errors.extend(r.errors.iter().map(|e| format!("{}: {e}", r.id)));
    }
    let driver_error = engine.take_driver_error();
    // The slots go with the run's host netns ([`remove_run_pool`], in
    // `run_observed`): no slot-by-slot drain.
    drop(engine.into_slots());
    if let Some(e) = driver_error {
        cleanup_errors.push(crate::error::chain(&e));
    }
    let teardown_ms = crate::stats::ms(t_down.elapsed());
    Ok((report?, ok, failures, memory, hold, request_ms, teardown_ms))
}

/// `o.count` requests of one clone, one after the other (each once a
/// standby VMM is held, with `o.standby`), merged into one report; each
/// request's wall time goes to `request_ms`.
fn one_at_a_time(
    engine: &Engine<PoolSlots>,
    o: &DemoOptions,
    store: &Arc<CloneStore>,
    req: impl Fn(usize) -> SpawnRequest,
    request_ms: &mut Vec<f64>,
    on_done: &mut (dyn FnMut(&batch::CloneReport) + Send),
) -> Result<SpawnReport, batch::SpawnError> {
    if o.standby > 0 {
        engine.hold_standby(SnapshotSource::Store(store.clone()))?;
    }
    let started = std::time::Instant::now();
    let mut merged: Option<SpawnReport> = None;
    for _ in 0..o.count {
        if o.standby > 0 && !engine.wait_standby(Duration::from_secs(30)) {
            tracing::warn!("no standby VMM after 30 s; this request goes the normal way");
        }
        let t = std::time::Instant::now();
        let r = engine
            .spawn(req(1))
            .and_then(|t| t.wait_observed(|row| on_done(row)))?;
        request_ms.push(crate::stats::ms(t.elapsed()));
        match &mut merged {
            None => merged = Some(r),
            Some(m) => {
                m.clones.extend(r.clones);
                m.summary.driver_cpu_ms += r.summary.driver_cpu_ms;
                m.summary.admission_cpu_ms += r.summary.admission_cpu_ms;
                m.summary.disk_bytes_copied += r.summary.disk_bytes_copied;
            }
        }
    }
    let mut m = merged.ok_or(batch::SpawnError::Count(0))?;
    let totals: Vec<f64> = m
        .clones
        .iter()
        .filter(|c| c.ok)
        .map(|c| c.total_ms)
        .collect();
    let p = crate::stats::Percentiles::of(&totals);
    m.summary.wall_ms = crate::stats::ms(started.elapsed());
    m.summary.ready = totals.len();
    m.summary.failed = m.clones.len() - totals.len();
    m.summary.p50 = p.p50;
    m.summary.p99 = p.p99;
    Ok(m)
}

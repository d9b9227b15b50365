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
}

/// One process's memory from `/proc/PID/smaps_rollup` (KiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProcMem {
    /// Resident set (shared pages counted in full).
    pub rss: u64,
    /// Proportional set (shared pages divided among their users).
    pub pss: u64,
    /// Pages only this process maps (clean + dirty).
    pub private: u64,
    /// Anonymous pages (heap, stacks, copied-on-write guest pages).
    pub anon: u64,
}

/// The `Key: N kB` lines of a /proc file (`meminfo`, `smaps_rollup`) as
/// (key, N); a value that is not a number reads 0.
pub fn kib_fields(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once(':')?;
        Some((
            k,
            v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0),
        ))
    })
}

/// Parses `smaps_rollup` text.
pub fn parse_smaps_rollup(text: &str) -> ProcMem {
    let mut m = ProcMem::default();
    for (k, v) in kib_fields(text) {
        match k {
            "Rss" => m.rss = v,
            "Pss" => m.pss = v,
            "Private_Clean" | "Private_Dirty" => m.private += v,
            "Anonymous" => m.anon = v,
            _ => {}
        }
    }
    m
}

/// `/proc/PID/smaps_rollup` of a live process.
pub fn proc_mem(pid: i32) -> Option<ProcMem> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .map(|t| parse_smaps_rollup(&t))
}

/// The host counters the hold accounts with (`/proc/meminfo`, KiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct HostMem {
    /// `MemAvailable`.
    pub available: u64,
    /// Kernel memory no reclaim gives back: `SUnreclaim + KernelStack +
    /// PageTables + SecPageTables + VmallocUsed + Percpu`.
    pub kernel: u64,
}

/// Parses `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> HostMem {
    let mut h = HostMem::default();
    for (k, v) in kib_fields(text) {
        match k {
            "MemAvailable" => h.available = v,
            "SUnreclaim" | "KernelStack" | "PageTables" | "SecPageTables" | "VmallocUsed"
            | "Percpu" => h.kernel += v,
            _ => {}
        }
    }
    h
}

/// The host's counters now.
pub fn host_mem() -> Option<HostMem> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .map(|t| parse_meminfo(&t))
}

/// What a hold of every clone at once measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HoldFigures {
    /// Clones whose VMM answered `GET /` with state Running in the pass
    /// made after the whole batch was up.
    pub running_at_once: usize,
    /// Clones that did not, with what happened.
    pub not_running: Vec<(String, String)>,
    /// VMM RSS per clone, KiB.
    pub vmm_rss_kib: crate::stats::Percentiles,
    /// VMM PSS per clone, KiB.
    pub vmm_pss_kib: crate::stats::Percentiles,
    /// VMM private pages per clone, KiB.
    pub vmm_private_kib: crate::stats::Percentiles,
    /// Drop in MemAvailable per clone, KiB (noisy on a shared host).
    pub host_available_drop_kib_per_clone: f64,
    /// Growth of unreclaimable kernel memory per clone, KiB.
    pub kernel_kib_per_clone: f64,
    /// Mean VMM PSS plus kernel growth per clone, KiB: the accounted host
    /// memory per clone.
    pub accounted_kib_per_clone: f64,
    /// The goal: host memory per clone at most the VMM's RSS (p50) plus
    /// 256 KiB, by the accounted figure and by the MemAvailable drop.
    pub goal_kib: f64,
    /// Both figures within the goal.
    pub goal_met: bool,
    /// MemAvailable and kernel memory after everything was removed against
    /// before the bench made anything (KiB; positive: still in use), a
    /// check that nothing stayed. Other work on the host moves it too.
    pub residual_available_kib: i64,
    /// See `residual_available_kib`.
    pub residual_kernel_kib: i64,
}

/// Asks the VMM behind `api_sock` for its state.
fn vmm_state(api_sock: &Path) -> Result<String, String> {
    let mut c = crate::vmm::api::Client::connect(api_sock).map_err(|e| e.to_string())?;
    c.set_timeout(Duration::from_secs(5));
    c.get_instance_info()
        .map(|i| i.state)
        .map_err(|e| e.to_string())
}

/// The hold's pass over every live clone: state, and memory per process.
fn hold_figures(records: &[state::CloneRecord], before: HostMem, during: HostMem) -> HoldFigures {
    let mut h = HoldFigures::default();
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    let mut private = Vec::new();
    for r in records {
        match vmm_state(&r.api_sock) {
            Ok(s) if s == "Running" => h.running_at_once += 1,
            Ok(s) => h.not_running.push((r.id.clone(), format!("state {s}"))),
            Err(e) => h.not_running.push((r.id.clone(), e)),
        }
        if let Some(m) = proc_mem(r.pid) {
            rss.push(m.rss as f64);
            pss.push(m.pss as f64);
            private.push(m.private as f64);
        }
    }
    h.vmm_rss_kib = crate::stats::Percentiles::of(&rss);
    h.vmm_pss_kib = crate::stats::Percentiles::of(&pss);
    h.vmm_private_kib = crate::stats::Percentiles::of(&private);
    account(&mut h, records.len(), before, during);
    h
}

/// Host memory per clone from the counters before and during the hold of
/// `n` clones, and the verdict against the goal (VMM RSS p50 + 256 KiB).
fn account(h: &mut HoldFigures, n: usize, before: HostMem, during: HostMem) {
    let per = |d: f64| d / n.max(1) as f64;
    h.host_available_drop_kib_per_clone = per(before.available as f64 - during.available as f64);
    h.kernel_kib_per_clone = per(during.kernel as f64 - before.kernel as f64);
    h.accounted_kib_per_clone = h.vmm_pss_kib.mean + h.kernel_kib_per_clone;
    h.goal_kib = h.vmm_rss_kib.p50 + 256.0;
    h.goal_met = n > 0
        && h.accounted_kib_per_clone <= h.goal_kib
        && h.host_available_drop_kib_per_clone <= h.goal_kib;
}

/// Memory figures taken while every clone is alive.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct MemFigures {
    /// Median VMM resident set (KiB).
    pub vmm_rss_kib_p50: f64,
    /// Host memory used per clone beyond the VMM processes' own memory
    /// (KiB): the growth of unreclaimable kernel memory over the batch
    /// (the `kernel` sum of [`HostMem`]), per clone: the VMMs' page tables
    /// and kernel stacks, their sockets, tap queues, pipes. The MemAvailable
    /// drop was used before; page cache and the previous batch's namespaces
    /// being freed meanwhile made it swing by more than the figure itself
    /// (even below zero).
    pub host_kib_per_clone: f64,
    /// Mean VMM private memory (`RssAnon`, KiB).
    pub vmm_private_kib_mean: f64,
    /// Mean CPU time a VMM process had used when the batch ended (ms): its
    /// start, load, resume and guest so far, plus the child-side launch
    /// setup (netns, mount namespace) that ran in it before exec.
    pub vmm_cpu_ms_mean: f64,
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

/// A `/proc/PID/status` field in KiB (`VmRSS`, `RssAnon`, …).
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) process `pid` has used so far, summed over its
/// live threads (`/proc/PID/task/*/schedstat`, nanoseconds).
pub fn process_cpu(pid: i32) -> Option<Duration> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
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
        rootfs_mib: 4,
        vcpus: 1,
        rootfs_read_only: false,
        scratch_mib: None,
        sha256: false,
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
                    match sys::netns::delete_named(n) {
                        Ok(()) => out.slots += 1,
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
    let result = run_inner(o, &host_netns, &mut cleanup_errors, on_done);
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
    if sys::netns::exists(&host_netns) {
        if let Err(e) = sys::netns::delete_named(&host_netns) {
            cleanup_errors.push(format!("delete netns {host_netns}: {e}"));
        }
    }
    let (spawn, agents_ok, agent_failures, memory, hold) = result?;
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
    })
}

type Inner = (
    SpawnReport,
    usize,
    Vec<(String, String)>,
    MemFigures,
    Option<HoldFigures>,
);

fn run_inner(
    o: &DemoOptions,
    host_netns: &str,
    cleanup_errors: &mut Vec<String>,
    on_done: &mut (dyn FnMut(&batch::CloneReport) + Send),
) -> Result<Inner, DemoError> {
    let snap = o.work_dir.join("snapshot");
    std::fs::create_dir_all(&o.work_dir).map_err(|e| DemoError::Io(o.work_dir.clone(), e))?;
    let net = SlotNet {
        pool: pool_of(std::process::id()),
        ..SlotNet::default()
    };
    let host = HostNet {
        netns: Some(host_netns.to_owned()),
        egress_uplink: None,
        ..Default::default()
    };
    let guest = crate::snapshot::golden::GuestAddr::of(&net);
    let mut slots = PoolSlots::open(net, &host, o.count, HashSet::new())?;
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
    let store = CloneStore::open(&snap, &o.work_dir.join("run"), Mode::Auto)?.with_owner(owner);
    let host_before = host_mem();
    let mut cfg = EngineConfig::new(vmm, o.work_dir.join("state"), o.work_dir.join("run"));
    cfg.parallel = o.parallel;
    cfg.driver = o.driver;
    let engine = Engine::with_slots(cfg, slots)?;
    let mut env = Env::new();
    let _ = env.add_plain("API_URL=http://10.0.0.1:8080/");
    let req = SpawnRequest {
        env,
        ready,
        timeouts: Timeouts::default(),
        ..SpawnRequest::new(SnapshotSource::Store(Arc::new(store)), o.count)
    };
    let report = engine
        .spawn(req)
        .and_then(|t| t.wait_observed(|row| on_done(row)));
    let mut memory = MemFigures::default();
    if let Ok(r) = &report {
        let pids: Vec<i32> = r.clones.iter().filter_map(|c| c.pid).collect();
        let rss: Vec<f64> = pids
            .iter()
            .filter_map(|p| status_kib(*p, "VmRSS"))
            .map(|k| k as f64)
            .collect();
        let anon: Vec<f64> = pids
            .iter()
            .filter_map(|p| status_kib(*p, "RssAnon"))
            .map(|k| k as f64)
            .collect();
        let cpu: Vec<f64> = pids
            .iter()
            .filter_map(|p| process_cpu(*p))
            .map(crate::stats::ms)
            .collect();
        memory.vmm_cpu_ms_mean = crate::stats::Percentiles::of(&cpu).mean;
        if !rss.is_empty() && !anon.is_empty() {
            memory.vmm_rss_kib_p50 = crate::stats::Percentiles::of(&rss).p50;
            memory.vmm_private_kib_mean = crate::stats::Percentiles::of(&anon).mean;
            if let (Some(hb), Some(ha)) = (host_before, host_mem()) {
                memory.host_kib_per_clone =
                    (ha.kernel as f64 - hb.kernel as f64) / pids.len() as f64;
            }
        }
    }
    let hold = match (&report, o.hold, host_before, host_mem()) {
        (Ok(_), true, Some(before), Some(during)) => {
            let records = state::Store::open(&o.work_dir.join("state"))
                .and_then(|s| s.list())
                .map(|(r, _)| r)
                .unwrap_or_default();
            // The residual is completed after teardown, in `run`.
            Some(hold_figures(&records, before, during))
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
    let down = engine.shutdown(true);
    for r in &down.killed {
        cleanup_errors.extend(r.errors.iter().map(|e| format!("{}: {e}", r.id)));
    }
    let driver_error = engine.take_driver_error();
    let slots = engine.into_slots();
    if let Some(e) = driver_error {
        cleanup_errors.push(crate::error::chain(&e));
    }
    if let Err(e) = slots.pool().drain() {
        cleanup_errors.push(crate::error::chain(&e));
    }
    if let Err(e) = slots.pool().ops().remove_host() {
        cleanup_errors.push(crate::error::chain(&e));
    }
    Ok((report?, ok, failures, memory, hold))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rollup_and_meminfo_are_read_by_field() {
        let smaps =
            "55d0c0a00000-7ffd5e1f3000 ---p 00000000 00:00 0                          [rollup]
Rss:                2644 kB
Pss:                 731 kB
Pss_Dirty:           530 kB
Shared_Clean:       2100 kB
Private_Clean:        12 kB
Private_Dirty:       530 kB
Anonymous:           522 kB
";
        assert_eq!(
            parse_smaps_rollup(smaps),
            ProcMem {
                rss: 2644,
                pss: 731,
                private: 542,
                anon: 522
            }
        );
        let meminfo = "MemTotal:       24684084 kB
MemAvailable:   23130000 kB
SReclaimable:     790264 kB
SUnreclaim:        99604 kB
KernelStack:        2576 kB
PageTables:         6884 kB
SecPageTables:         0 kB
VmallocUsed:       17512 kB
Percpu:             2064 kB
";
        assert_eq!(
            parse_meminfo(meminfo),
            HostMem {
                available: 23_130_000,
                kernel: 99_604 + 2_576 + 6_884 + 17_512 + 2_064
            }
        );
    }

    #[test]
    fn the_hold_goal_is_judged_on_both_figures() {
        let before = HostMem {
            available: 10_000_000,
            kernel: 100_000,
        };
        let during = HostMem {
            available: 10_000_000 - 2 * 900,
            kernel: 100_000 + 2 * 300,
        };
        let mut h = HoldFigures {
            vmm_rss_kib: crate::stats::Percentiles::of(&[2600.0, 2700.0]),
            vmm_pss_kib: crate::stats::Percentiles::of(&[700.0, 800.0]),
            ..HoldFigures::default()
        };
        account(&mut h, 2, before, during);
        assert_eq!(h.host_available_drop_kib_per_clone, 900.0);
        assert_eq!(h.kernel_kib_per_clone, 300.0);
        assert_eq!(h.accounted_kib_per_clone, 750.0 + 300.0);
        assert_eq!(h.goal_kib, 2600.0 + 256.0);
        assert!(h.goal_met);
        // A MemAvailable drop past the goal fails it, whatever the PSS says.
        let worse = HostMem {
            available: 10_000_000 - 2 * 3000,
            ..during
        };
        account(&mut h, 2, before, worse);
        assert!(!h.goal_met);
        // Nothing held: never met.
        account(&mut h, 0, before, before);
        assert!(!h.goal_met);
    }
}

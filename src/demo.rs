//! `wasp demo`: the whole pipeline on a fresh machine, with nothing to
//! prepare and nothing left behind. It uses the stand-in VMM (and says so),
//! a private host netns, a synthesized snapshot and a warm pool; spawns the
//! clones with TCP readiness; asks each clone's agent over TCP at its clone
//! IP for its AGENT_ID; then removes everything.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::env::Env;
use crate::launch::Vmm;
use crate::ready::Ready;
use crate::restore::Timeouts;
use crate::slot::{HostNet, SlotNet};
use crate::snapshot::synth::{self, SynthOptions};
use crate::spawn::{self, PoolSlots, SpawnOptions, SpawnReport};
use crate::storage::clone::{CloneStore, Mode};
use crate::{state, sys, teardown};

/// The pool name the demo uses.
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
    pub driver: Option<crate::ring::DriverKind>,
    /// Guest memory of the snapshot.
    pub mem_mib: u64,
}

/// Memory figures taken while every clone is alive.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct MemFigures {
    /// Median VMM resident set (KiB).
    pub vmm_rss_kib_p50: f64,
    /// Host memory used per clone beyond the VMM processes' own memory
    /// (KiB): the drop in MemAvailable over the batch, per clone, minus the
    /// mean VMM private memory (`RssAnon`: its heap and the guest pages it
    /// dirtied; shared page-cache pages of the memory file are not its own).
    pub host_kib_per_clone: f64,
    /// Mean VMM private memory (`RssAnon`, KiB).
    pub vmm_private_kib_mean: f64,
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
}

/// Demo failures before any clone ran.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The snapshot could not be made.
    #[error("cannot synthesize the demo snapshot")]
    Synth(#[from] synth::SynthError),
    /// Storage.
    #[error("cannot set up clone storage")]
    Storage(#[from] crate::storage::clone::StorageError),
    /// Pool.
    #[error("cannot set up the slot pool")]
    Pool(#[from] spawn::PoolSlotsError),
    /// Spawn.
    #[error("the spawn failed")]
    Spawn(#[from] spawn::SpawnError),
    /// Files.
    #[error("cannot prepare {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The golden snapshot.
    #[error("cannot make the Firecracker golden snapshot")]
    Golden(#[from] crate::golden::GoldenError),
    /// A slot for the golden boot.
    #[error("cannot take a slot for the golden boot: {0}")]
    Slot(String),
}

/// `MemAvailable` from /proc/meminfo, KiB.
pub fn mem_available_kib() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    m.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `RssAnon`, …).
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
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
    /// Every error met.
    pub errors: Vec<String>,
}

/// Removes what killed `wasp demo` / `wasp bench spawn` runs left under
/// `root` (their work dirs `demo-<pid>` and `bench-<pid>`, found by name
/// and a dead pid): their VMMs (recorded or orphaned, by
/// [`crate::reconcile`]), their host netns (bridge and nft table with it)
/// and the work dir. Their slot namespaces, unwired once the host netns is
/// gone, are removed by the next pool reconcile of pool `demo`.
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
        let opts = crate::reconcile::Options {
            state_dir: work.join("state"),
            runtime_dir: work.join("run"),
            tap: SlotNet::default().tap,
            pool: None,
        };
        match crate::reconcile::reconcile(&opts) {
            Ok(r) => {
                out.vmms += r.orphans_killed.len() + r.removed.len();
                out.errors.extend(r.errors);
            }
            Err(e) => out.errors.push(crate::doctor::error_chain(&e)),
        }
        // Healthy clones of a dead demo are still the demo's: stop them.
        if let Ok(store) = state::Store::open(&work.join("state")) {
            for r in store.list().map(|(r, _)| r).unwrap_or_default() {
                let (_, errs) = teardown::teardown(&store, &r, Duration::ZERO);
                out.vmms += 1;
                out.errors
                    .extend(errs.iter().map(|e| crate::doctor::error_chain(e)));
            }
        }
        let host = host_netns_of(pid);
        if sys::netns::exists(&host) {
            match sys::netns::delete_named(&host) {
                Ok(()) => out.host_netns.push(host),
                Err(e) => out.errors.push(format!("delete netns {host}: {e}")),
            }
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
/// [`spawn::spawn_observed`]).
pub fn run_observed(
    o: &DemoOptions,
    on_done: &mut (dyn FnMut(&spawn::CloneReport) + Send),
) -> Result<DemoReport, DemoError> {
    let host_netns = host_netns_of(std::process::id());

    let mut cleanup_errors = Vec::new();
    let result = run_inner(o, &host_netns, &mut cleanup_errors, on_done);
    // Remove everything, whatever happened above.
    let state_dir = o.work_dir.join("state");
    if let Ok(store) = state::Store::open(&state_dir) {
        if let Ok((records, _)) = store.list() {
            for r in records {
                let (_, errs) = teardown::teardown(&store, &r, Duration::from_secs(2));
                cleanup_errors.extend(errs.iter().map(|e| crate::doctor::error_chain(e)));
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
    let (spawn, agents_ok, agent_failures, memory) = result?;
    Ok(DemoReport {
        host_netns,
        spawn,
        agents_ok,
        agent_failures,
        cleanup_errors,
        memory,
    })
}

type Inner = (SpawnReport, usize, Vec<(String, String)>, MemFigures);

fn run_inner(
    o: &DemoOptions,
    host_netns: &str,
    cleanup_errors: &mut Vec<String>,
    on_done: &mut (dyn FnMut(&spawn::CloneReport) + Send),
) -> Result<Inner, DemoError> {
    let snap = o.work_dir.join("snapshot");
    std::fs::create_dir_all(&o.work_dir).map_err(|e| DemoError::Io(o.work_dir.clone(), e))?;
    let net = SlotNet {
        pool: DEMO_POOL.into(),
        ..SlotNet::default()
    };
    let host = HostNet {
        netns: Some(host_netns.to_owned()),
        egress_uplink: None,
    };
    let guest = crate::golden::GuestAddr::of(&net);
    let mut slots = PoolSlots::open(net, &host, o.count, HashSet::new())?;
    let (vmm, ready) = match &o.vmm {
        DemoVmm::Standin => {
            ensure_snapshot_sized(&snap, o.mem_mib)?;
            let standin = crate::standin::locate(&o.work_dir)
                .map_err(|e| DemoError::Io(o.work_dir.clone(), e))?;
            (Vmm::Standin(standin), Ready::Tcp(22))
        }
        DemoVmm::Firecracker(fc) => {
            use crate::spawn::Slots;
            let kernel = o.work_dir.join("testguest.elf");
            crate::testguest::write(&kernel).map_err(|e| DemoError::Io(kernel.clone(), e))?;
            let rootfs = o.work_dir.join("rootfs.img");
            std::fs::write(&rootfs, vec![0x5au8; 1 << 20])
                .map_err(|e| DemoError::Io(rootfs.clone(), e))?;
            let lease = slots.take().map_err(|e| DemoError::Slot(e.to_string()))?;
            let made = crate::golden::create(&crate::golden::GoldenOptions {
                vmm: Vmm::Firecracker(fc.clone()),
                kernel,
                rootfs,
                vcpus: 1,
                mem_mib: o.mem_mib,
                boot_args: String::new(),
                ready: crate::golden::GoldenReady::Serial(
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
    let store = CloneStore::open(&snap, &o.work_dir.join("run"), Mode::Auto)?;
    let avail_before = mem_available_kib();
    let opts = SpawnOptions {
        vmm,
        count: o.count,
        parallel: o.parallel,
        ready,
        timeouts: Timeouts::default(),
        driver: o.driver,
        state_dir: o.work_dir.join("state"),
        ready_retry: Duration::from_millis(5),
        vmm_args: vec![],
        isolation: Default::default(),
    };
    let mut env = Env::new();
    let _ = env.add_plain("API_URL=http://10.0.0.1:8080/");
    let report = spawn::spawn_observed(&opts, &store, &mut slots, &env, on_done);
    let mut memory = MemFigures::default();
    if let (Ok(r), Some(before), Some(after)) = (&report, avail_before, mem_available_kib()) {
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
        if !rss.is_empty() && !anon.is_empty() {
            memory.vmm_rss_kib_p50 = crate::stats::Percentiles::of(&rss).p50;
            memory.vmm_private_kib_mean = crate::stats::Percentiles::of(&anon).mean;
            let per_clone = before.saturating_sub(after) as f64 / pids.len() as f64;
            memory.host_kib_per_clone = per_clone - memory.vmm_private_kib_mean;
        }
    }
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
    // Stop the clones before draining the pool (their slots go with it).
    if let Ok(store) = state::Store::open(&o.work_dir.join("state")) {
        if let Ok((records, _)) = store.list() {
            for r in records {
                let (_, errs) = teardown::teardown(&store, &r, Duration::from_secs(2));
                cleanup_errors.extend(errs.iter().map(|e| crate::doctor::error_chain(e)));
            }
        }
    }
    if let Err(e) = slots.pool().drain() {
        cleanup_errors.push(crate::doctor::error_chain(&e));
    }
    if let Err(e) = slots.pool().ops().remove_host() {
        cleanup_errors.push(crate::doctor::error_chain(&e));
    }
    Ok((report?, ok, failures, memory))
}

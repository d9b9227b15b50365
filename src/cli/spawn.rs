//! `wasp spawn`, `wasp ls`, `wasp kill` and `wasp demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use wasp::config::Config;
use wasp::engine::batch::{self, PhasesMs, SpawnReport};
use wasp::engine::{Engine, EngineConfig, EngineError, PoolSetup, SnapshotSource, SpawnRequest};
use wasp::pipeline::env::Env;
use wasp::pipeline::launch::{Isolation, Vmm};
use wasp::pipeline::ready::Ready;
use wasp::pipeline::restore::Timeouts;
use wasp::pipeline::ring::DriverKind;
use wasp::pipeline::storage::clone::{CloneStore, Mode};
use wasp::stats::Percentiles;
use wasp::vmm::cgroup;
use wasp::vmm::jailer::Jailer;
use wasp::{bench::demo, ops::reconcile, ops::teardown, state};

use super::args::Dirs;
use super::args::Where;

/// Which VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmmArg {
    /// Real Firecracker (the product's VMM).
    Firecracker,
    /// wasp's stand-in VMM (for demos and network tests; not Firecracker).
    Standin,
}

/// Restore driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverArg {
    /// io_uring (the default when the probe passes).
    Uring,
    /// Plain nonblocking syscalls and poll(2).
    Syscalls,
}

impl From<DriverArg> for DriverKind {
    fn from(d: DriverArg) -> Self {
        match d {
            DriverArg::Uring => DriverKind::Uring,
            DriverArg::Syscalls => DriverKind::Syscalls,
        }
    }
}

/// `wasp spawn`.
#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// Snapshot directory (with wasp-snapshot.json).
    #[arg(long, required_unless_present = "demo_snapshot")]
    pub snapshot: Option<PathBuf>,
    /// Use the demo's synthesized stand-in snapshot (made if missing); the
    /// clones live in the private host netns wasp-hostns-demo. It runs on
    /// the stand-in VMM (`--vmm standin` may be given; `firecracker` is
    /// refused).
    #[arg(long, conflicts_with = "snapshot")]
    pub demo_snapshot: bool,
    /// Number of clones.
    #[arg(long)]
    pub count: usize,
    /// The VMM.
    #[arg(long, value_enum)]
    pub vmm: Option<VmmArg>,
    /// A non-secret KEY=VALUE for every clone (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A root-owned mode-0600 file of KEY=VALUE secrets (repeatable).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Pass wasp's own environment variable NAME as a secret (repeatable).
    #[arg(long = "secret-env", value_name = "NAME")]
    pub secret_env: Vec<String>,
    /// Restore driver (default: io_uring when available).
    #[arg(long, value_enum)]
    pub driver: Option<DriverArg>,
    #[command(flatten)]
    pub flags: SpawnFlags,
    /// Limit for the API socket to accept after launch, seconds (default 10).
    #[arg(long, value_name = "SECS")]
    pub socket_timeout: Option<f64>,
    /// Limit for the snapshot load, seconds (default 30).
    #[arg(long, value_name = "SECS")]
    pub load_timeout: Option<f64>,
    /// Limit for the MMDS put and for resume, each, seconds (default 10).
    #[arg(long, value_name = "SECS")]
    pub api_timeout: Option<f64>,
    /// Limit for readiness, seconds (default 20).
    #[arg(long, value_name = "SECS")]
    pub ready_timeout: Option<f64>,
    /// Extra arguments for the stand-in VMM (e.g. --fault load-400).
    #[arg(long = "standin-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub standin_args: Vec<String>,
    /// Per-clone cgroup v2 memory.max (e.g. 256M); needs the memory
    /// controller on cgroup v2 (`wasp doctor` tells).
    #[arg(long, value_name = "BYTES")]
    pub memory_max: Option<String>,
    /// Per-clone cgroup v2 cpu.max, "QUOTA PERIOD" in µs (e.g. "50000 100000").
    #[arg(long, value_name = "QUOTA PERIOD")]
    pub cpu_max: Option<String>,
    /// Any other per-clone cgroup v2 file, KEY=VALUE (repeatable), e.g.
    /// pids.max=64.
    #[arg(long = "cgroup", value_name = "KEY=VALUE")]
    pub cgroup: Vec<String>,
    /// Run each Firecracker under the official jailer (its own uid/gid,
    /// chroot under <runtime-dir>/jail, own pid namespace, the slot netns);
    /// jailer from WASP_JAILER, beside firecracker, or PATH.
    #[arg(long, conflicts_with = "demo_snapshot")]
    pub jailer: bool,
    /// Ids for jailed VMMs, FIRST-LAST: each clone runs as its own one, as
    /// uid and gid; no account, group or subuid/subgid range may use them
    /// [jailer.id_range; default: 70000-79999].
    #[arg(long, value_name = "FIRST-LAST", requires = "jailer")]
    pub jailer_id_range: Option<wasp::vmm::jailer::IdRange>,
    /// Gone: one shared uid for every clone (see --jailer-id-range).
    #[arg(long, hide = true, value_name = "ID")]
    pub jailer_uid: Option<u32>,
    /// Gone: one shared gid for every clone (see --jailer-id-range).
    #[arg(long, hide = true, value_name = "ID")]
    pub jailer_gid: Option<u32>,
    #[command(flatten)]
    pub at: Where,
    /// Use the wasp daemon at unix:PATH or tcp:ADDR (default: $WASP_SERVER,
    /// else the daemon's socket when it answers and the command names no
    /// dirs or pool of its own; else in process).
    #[arg(long, value_name = "unix:PATH|tcp:ADDR")]
    pub server: Option<String>,
    /// Copy the clones' disks even though the snapshot is on another
    /// filesystem than the runtime dir (refused by default: each clone
    /// would copy its writable drives instead of reflinking them).
    #[arg(long)]
    pub allow_copy: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Spawn settings the config file also holds; each flag given overrides it
/// (see `wasp config show`).
#[derive(Debug, Args)]
pub struct SpawnFlags {
    /// Clones in flight at once [spawn.parallel; default: 32].
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Readiness: tcp:PORT, running or none [spawn.ready; default: tcp:22].
    #[arg(long)]
    pub ready: Option<Ready>,
    /// The firecracker binary [WASP_FIRECRACKER, then paths.firecracker;
    /// default: PATH].
    #[arg(long)]
    pub firecracker: Option<PathBuf>,
    /// Per-clone files [paths.runtime_dir; default: /var/lib/wasp].
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// Clone records [paths.state_dir; default: /run/wasp].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl SpawnFlags {
    /// Lays the flags the user gave over `cfg`.
    pub fn apply(&self, cfg: &mut Config) {
        cfg.parallel.flag("--parallel", self.parallel);
        cfg.ready.flag("--ready", self.ready);
        cfg.firecracker
            .flag("--firecracker", self.firecracker.clone().map(Some));
        cfg.runtime_dir
            .flag("--runtime-dir", self.runtime_dir.clone());
        cfg.state_dir.flag("--state-dir", self.state_dir.clone());
    }
}

/// `wasp ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Clone records [paths.state_dir; default: /run/wasp].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Use the wasp daemon at unix:PATH or tcp:ADDR (default: $WASP_SERVER,
    /// else the daemon's socket when it answers and the command names no
    /// dirs or pool of its own; else in process).
    #[arg(long, value_name = "unix:PATH|tcp:ADDR")]
    pub server: Option<String>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `wasp kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Clone ids.
    #[arg(required_unless_present = "all")]
    pub ids: Vec<String>,
    /// Every clone wasp recorded.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// Seconds between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 2.0)]
    pub grace: f64,
    #[command(flatten)]
    pub dirs: Dirs,
    /// Use the wasp daemon at unix:PATH or tcp:ADDR (default: $WASP_SERVER,
    /// else the daemon's socket when it answers and the command names no
    /// dirs or pool of its own; else in process).
    #[arg(long, value_name = "unix:PATH|tcp:ADDR")]
    pub server: Option<String>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `wasp demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Clones to spawn.
    #[arg(long, default_value_t = 50)]
    pub count: usize,
    /// Clones in flight at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

fn build_env(a: &SpawnArgs) -> anyhow::Result<Env> {
    let mut env = Env::new();
    for kv in &a.env {
        env.add_plain(kv)?;
    }
    for f in &a.env_file {
        env.add_file(f)?;
    }
    for name in &a.secret_env {
        env.add_secret_from(name, |n| std::env::var(n).ok())?;
    }
    Ok(env)
}

/// The batch's cgroup limits and jailer mode. The cgroup parent is made
/// (and every controller checked) here, before any slot is taken.
/// The state dir's owner, which marks the clone dirs, jails and cgroups
/// the spawn creates.
fn owner(cfg: &Config) -> anyhow::Result<state::Owner> {
    Ok(state::Owner::of_state_dir(&cfg.state_dir.value)?)
}

fn build_isolation(a: &SpawnArgs, vmm: &Vmm, cfg: &Config) -> anyhow::Result<Isolation> {
    let mut limits = cgroup::Limits::new();
    if let Some(v) = &a.memory_max {
        limits.set(cgroup::MEMORY_MAX, v)?;
    }
    if let Some(v) = &a.cpu_max {
        limits.set(cgroup::CPU_MAX, v)?;
    }
    for kv in &a.cgroup {
        limits.set_kv(kv)?;
    }
    let mut iso = Isolation::default();
    if a.jailer_uid.is_some() || a.jailer_gid.is_some() {
        bail!(
            "--jailer-uid/--jailer-gid are gone: every jailed clone now runs as its own uid and gid from --jailer-id-range FIRST-LAST (config jailer.id_range, now {}); drop them, or give --jailer-id-range with ids no account uses",
            cfg.jailer_ids.value
        );
    }
    if a.jailer {
        let Vmm::Firecracker(fc) = vmm else {
            bail!("--jailer runs Firecracker only; drop --vmm standin or --jailer");
        };
        let bin = wasp::vmm::firecracker::locate_checked(
            "jailer",
            cfg.jailer_choice().as_ref(),
            fc.parent(),
        )?;
        let j = Jailer::new(&bin, fc, &cfg.runtime_dir.value, cfg.jailer_ids.value)
            .context("jailer mode")?
            .with_owner(owner(cfg)?);
        iso.jailer = Some(Arc::new(j));
    }
    if !limits.is_empty() {
        let parent = cgroup::CgroupParent::open(&cfg.state_dir.value, limits)
            .context("per-clone cgroup limits")?;
        iso.cgroup = Some(Arc::new(parent));
    }
    Ok(iso)
}

fn timeouts(a: &SpawnArgs) -> anyhow::Result<Timeouts> {
    let d = Timeouts::default();
    let pick = |flag: &str, v: Option<f64>, def: Duration| -> anyhow::Result<Duration> {
        match v {
            None => Ok(def),
            Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(Duration::from_secs_f64(s)),
            Some(s) => {
                bail!("--{flag} {s} is out of range: use more than 0 and at most 3600 seconds")
            }
        }
    };
    Ok(Timeouts {
        socket: pick("socket-timeout", a.socket_timeout, d.socket)?,
        load: pick("load-timeout", a.load_timeout, d.load)?,
        api: pick("api-timeout", a.api_timeout, d.api)?,
        ready: pick("ready-timeout", a.ready_timeout, d.ready)?,
    })
}

/// What of `a` the daemon's API cannot carry (a per-daemon setting or a
/// per-spawn option it lacks), if anything.
fn api_lacks(a: &SpawnArgs) -> Option<&'static str> {
    let opts = [
        (a.jailer, "--jailer"),
        (a.jailer_id_range.is_some(), "--jailer-id-range"),
        (a.memory_max.is_some(), "--memory-max"),
        (a.cpu_max.is_some(), "--cpu-max"),
        (!a.cgroup.is_empty(), "--cgroup"),
        (!a.standin_args.is_empty(), "--standin-arg"),
        (a.driver.is_some(), "--driver"),
        (a.socket_timeout.is_some(), "--socket-timeout"),
        (a.load_timeout.is_some(), "--load-timeout"),
        (a.api_timeout.is_some(), "--api-timeout"),
        (a.ready_timeout.is_some(), "--ready-timeout"),
        (a.flags.parallel.is_some(), "--parallel"),
        (a.flags.firecracker.is_some(), "--firecracker"),
        (a.demo_snapshot, "--demo-snapshot"),
        (a.allow_copy, "--allow-copy"),
    ];
    opts.into_iter().find(|(on, _)| *on).map(|(_, f)| f)
}

/// Whether `w` names a pool or host side of its own.
fn names_a_world(w: &Where) -> bool {
    w.pool.is_some()
        || w.host_netns.is_some()
        || w.cidr.is_some()
        || w.bridge.is_some()
        || !w.allow_host.is_empty()
        || w.connect_uids.is_some()
}

/// `wasp spawn` through a daemon, when one is to be used.
fn spawn_remote(a: &SpawnArgs, cfg: &Config) -> anyhow::Result<Option<ExitCode>> {
    let own_world =
        names_a_world(&a.at) || a.flags.runtime_dir.is_some() || a.flags.state_dir.is_some();
    let lacks = api_lacks(a);
    let Some(c) = super::remote::pick(a.server.as_deref(), cfg, !own_world && lacks.is_none())?
    else {
        return Ok(None);
    };
    if let Some(flag) = lacks {
        bail!("{flag} cannot go through the wasp daemon (it is the daemon's setting, or the API has no such option); drop --server/WASP_SERVER to run in process");
    }
    if own_world {
        bail!("--pool, --host-netns, --cidr, --bridge, --allow-host, --connect-uids, --runtime-dir and --state-dir are the daemon's settings; drop them, or drop --server/WASP_SERVER to run in process");
    }
    let snap = a.snapshot.as_deref().expect("clap requires it");
    let snap = std::path::absolute(snap).with_context(|| format!("snapshot {}", snap.display()))?;
    let snap = snap
        .to_str()
        .with_context(|| format!("snapshot path {} is not UTF-8", snap.display()))?;
    let env = build_env(a).context("bad environment")?;
    let vmm = a.vmm.map(|v| match v {
        VmmArg::Firecracker => "firecracker",
        VmmArg::Standin => "standin",
    });
    let report = super::remote::spawn(
        &c,
        snap,
        a.count,
        &env,
        a.flags.ready.map(|r| r.to_string()),
        vmm,
    )?;
    if a.json {
        super::print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(Some(super::remote::exit(report.summary.failed > 0)))
}

/// Runs `wasp spawn`.
pub fn spawn_cmd(a: SpawnArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    if a.count == 0 || a.count > batch::MAX_COUNT {
        bail!(
            "--count {} is out of range: use 1 to {}",
            a.count,
            batch::MAX_COUNT
        );
    }
    if let Some(code) = spawn_remote(&a, &cfg)? {
        return Ok(code);
    }
    a.at.apply(&mut cfg);
    a.flags.apply(&mut cfg);
    cfg.jailer_ids.flag("--jailer-id-range", a.jailer_id_range);
    cfg.slot_net().check_fits(a.count)?;
    let timeouts = timeouts(&a)?;
    let env = build_env(&a).context("bad environment")?;
    let (snapshot, vmm_arg) = if a.demo_snapshot {
        if a.vmm == Some(VmmArg::Firecracker) {
            bail!(
                "--demo-snapshot cannot be used with --vmm firecracker: the demo's snapshot is \
                 synthesized for the stand-in VMM and real Firecracker cannot load it; use \
                 --vmm standin (the default with --demo-snapshot), or give a Firecracker \
                 snapshot with --snapshot DIR"
            );
        }
        cfg.host_netns
            .flag("--demo-snapshot", Some(Some(demo::DEMO_HOST_NETNS.into())));
        cfg.pool
            .flag("--demo-snapshot", Some(demo::DEMO_POOL.into()));
        let dir = cfg.runtime_dir.value.join(demo::DEMO_SNAPSHOT_NAME);
        demo::ensure_snapshot(&dir).context("make the demo snapshot")?;
        eprintln!(
            "wasp: --demo-snapshot uses the stand-in VMM (not Firecracker) in host netns {}",
            demo::DEMO_HOST_NETNS
        );
        (dir, VmmArg::Standin)
    } else {
        (
            a.snapshot.clone().expect("clap requires it"),
            a.vmm.unwrap_or(VmmArg::Firecracker),
        )
    };
    let runtime_dir = &cfg.runtime_dir.value;
    let state_dir = &cfg.state_dir.value;
    let vmm = match vmm_arg {
        VmmArg::Firecracker => {
            let p = wasp::vmm::firecracker::locate_checked(
                "firecracker",
                cfg.firecracker_choice().as_ref(),
                None,
            )?;
            wasp::vmm::firecracker::check_kvm()?;
            Vmm::Firecracker(p)
        }
        VmmArg::Standin => {
            Vmm::Standin(wasp::standin::locate(runtime_dir).context("find the stand-in VMM")?)
        }
    };
    // Limits and jailer mode are checked before anything is taken.
    let isolation = build_isolation(&a, &vmm, &cfg)?;
    let (_lock, _) = reconcile::at_start(&reconcile::Options::from_config(&cfg, true))
        .context("reconcile what an earlier run left")?;
    let store = CloneStore::open(&snapshot, runtime_dir, Mode::Auto)
        .context("open the snapshot")?
        .with_owner(owner(&cfg)?);
    if let Some(bytes) = store.copy_check(a.allow_copy)? {
        eprintln!(
            "wasp: --allow-copy: snapshot {} is on another filesystem than the runtime dir {}; each clone copies {bytes} bytes ({} MiB) of its writable drives",
            store.snapshot_dir().display(),
            runtime_dir.display(),
            bytes.div_ceil(1 << 20)
        );
    }
    cfg.check_guest(store.manifest())?;
    let mut engine_cfg = EngineConfig::new(vmm, state_dir.clone(), runtime_dir.clone());
    engine_cfg.parallel = cfg.parallel.value;
    engine_cfg.driver = a.driver.map(DriverKind::from);
    engine_cfg.isolation = isolation;
    let engine = Engine::open(
        engine_cfg,
        PoolSetup {
            net: cfg.slot_net(),
            host: cfg.host_net(),
            warm: a.count,
            low_water: 0,
            high_water: usize::MAX,
        },
    )
    .map_err(|e| match e {
        EngineError::Pool(e) => anyhow::Error::new(e).context("prepare the slot pool"),
        e => e.into(),
    })?;
    let req = SpawnRequest {
        env,
        ready: cfg.ready.value,
        timeouts,
        vmm_args: a.standin_args.clone(),
        ..SpawnRequest::new(SnapshotSource::Store(Arc::new(store)), a.count)
    };
    let bar = super::progress::bar(a.count, "clones");
    let report = engine
        .spawn(req)
        .and_then(|t| t.wait_observed(|_| bar.inc(1)));
    bar.finish_and_clear();
    // The clones keep running; `wasp kill` stops them.
    engine.shutdown(false);
    if let Some(e) = engine.take_driver_error() {
        return Err(batch::SpawnError::Driver(e).into());
    }
    let report = report?;
    if a.json {
        super::print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(if report.summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints one row per clone and a summary with phase percentiles.
pub fn print_report(r: &SpawnReport) {
    println!(
        "{:<14} {:<18} {:<13} {:>7}  {}  {:>8}",
        "id",
        "netns",
        "clone_ip",
        "pid",
        PhasesMs::NAMES.map(|n| format!("{n:>7}")).join(" "),
        "total_ms"
    );
    for c in &r.clones {
        let ip = c.clone_ip.map(|i| i.to_string()).unwrap_or_default();
        let phases = c.phases_ms.values().map(|v| format!("{v:>7.2}")).join(" ");
        println!(
            "{:<14} {:<18} {:<13} {:>7}  {phases}  {:>8.2}{}",
            c.id,
            c.netns.as_deref().unwrap_or("-"),
            ip,
            c.pid.map(|p| p.to_string()).unwrap_or("-".into()),
            c.total_ms,
            c.error
                .as_ref()
                .map(|e| format!("  FAILED: {e}"))
                .unwrap_or_default()
        );
    }
    let s = &r.summary;
    println!();
    println!("phase p50/p99 ms over ready clones:");
    for (i, name) in PhasesMs::NAMES.iter().enumerate() {
        let v: Vec<f64> = r
            .clones
            .iter()
            .filter(|c| c.ok)
            .map(|c| c.phases_ms.values()[i])
            .collect();
        let p = Percentiles::of(&v);
        println!("  {name:<8} {:>8.3} {:>8.3}", p.p50, p.p99);
    }
    println!(
        "\n{} ready, {} failed in {:.1} ms wall; total p50 {:.2} ms, p99 {:.2} ms; driver {}{}; disks by {} ({} bytes copied), memory copied: {} bytes",
        s.ready,
        s.failed,
        s.wall_ms,
        s.p50,
        s.p99,
        s.driver,
        s.driver_fallback_reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
        s.storage_strategy,
        s.disk_bytes_copied,
        s.mem_bytes_copied
    );
}

/// Runs `wasp ls`.
pub fn ls(a: LsArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    if let Some(c) = super::remote::pick(a.server.as_deref(), &cfg, a.state_dir.is_none())? {
        if a.state_dir.is_some() {
            bail!("--state-dir is the daemon's setting; drop it, or drop --server/WASP_SERVER to run in process");
        }
        // The daemon lists live clones only: each is alive.
        let rows: Vec<serde_json::Value> = super::remote::list(&c)?
            .into_iter()
            .map(|mut v| {
                v["alive"] = true.into();
                v
            })
            .collect();
        let recs: Vec<state::CloneRecord> = rows
            .iter()
            .map(|v| serde_json::from_value(strip_state(v.clone())))
            .collect::<Result<_, _>>()
            .context("the daemon's clone list")?;
        print_ls(&rows, &recs, a.json, |_| true)?;
        return Ok(ExitCode::SUCCESS);
    }
    cfg.state_dir.flag("--state-dir", a.state_dir);
    let store = state::Store::open(&cfg.state_dir.value)?;
    let (recs, bad) = store.list()?;
    for e in &bad {
        eprintln!("warning: {}", wasp::error::chain(e));
    }
    let rows: Vec<serde_json::Value> = recs
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).expect("record");
            v["alive"] = state::same_process(r.pid, r.pid_start).into();
            v
        })
        .collect();
    print_ls(&rows, &recs, a.json, |r| {
        state::same_process(r.pid, r.pid_start)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A daemon's row without the fields a record does not have.
fn strip_state(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("state");
        m.remove("alive");
    }
    v
}

fn print_ls(
    rows: &[serde_json::Value],
    recs: &[state::CloneRecord],
    json: bool,
    alive: impl Fn(&state::CloneRecord) -> bool,
) -> anyhow::Result<()> {
    if json {
        super::print_json(&serde_json::json!({ "clones": rows }))?;
    } else {
        println!(
            "{:<14} {:<8} {:<18} {:<13} {:>7} {:<6} host_netns",
            "id", "vmm", "netns", "clone_ip", "pid", "alive"
        );
        for r in recs {
            println!(
                "{:<14} {:<8} {:<18} {:<13} {:>7} {:<6} {}",
                r.id,
                r.vmm,
                r.netns,
                r.clone_ip,
                r.pid,
                alive(r),
                r.host_netns.as_deref().unwrap_or("-")
            );
        }
        println!("{} clone(s)", recs.len());
    }
    Ok(())
}

/// Runs `wasp kill`.
pub fn kill(a: KillArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    let own = a.dirs.runtime_dir.is_some() || a.dirs.state_dir.is_some();
    if let Some(c) = super::remote::pick(a.server.as_deref(), &cfg, !own)? {
        if own {
            bail!("--runtime-dir and --state-dir are the daemon's settings; drop them, or drop --server/WASP_SERVER to run in process");
        }
        return kill_remote(&c, &a);
    }
    a.dirs.apply(&mut cfg);
    let state_dir = &cfg.state_dir.value;
    let (_lock, rep) = reconcile::at_start(&reconcile::Options::from_config(&cfg, false))
        .context("reconcile what an earlier run left")?;
    // Broken clones reconcile just removed count as killed.
    let removed: Vec<_> = rep.map(|r| r.removed).unwrap_or_default();
    let store = state::Store::open(state_dir)?;
    let (recs, _) = store.list()?;
    let mut out = Vec::new();
    let mut reconciled = |r: &reconcile::Removed| {
        if !a.json {
            println!("{}: was broken ({}); reconcile removed it", r.id, r.reason);
        }
        out.push(
            serde_json::json!({"id": r.id, "vmm": r.vmm, "errors": [], "reconciled": r.reason}),
        );
    };
    let targets: Vec<_> = if a.all {
        removed.iter().for_each(&mut reconciled);
        recs
    } else {
        let mut v = Vec::new();
        for id in &a.ids {
            match recs.iter().find(|r| &r.id == id) {
                Some(r) => v.push(r.clone()),
                None => match removed.iter().find(|r| &r.id == id) {
                    Some(r) => reconciled(r),
                    None => bail!(
                        "no clone {id} in {}; `wasp ls` lists the clones wasp started",
                        state_dir.display()
                    ),
                },
            }
        }
        v
    };
    let grace = Duration::from_secs_f64(a.grace.max(0.0));
    let mut failed = 0;
    // Every VMM is signalled before any is waited for.
    for (r, (fate, errors)) in targets
        .iter()
        .zip(teardown::teardown_many(&store, &targets, grace))
    {
        failed += usize::from(!errors.is_empty());
        let errs: Vec<String> = errors.iter().map(|e| wasp::error::chain(e)).collect();
        if !a.json {
            match (&fate, errs.is_empty()) {
                (Some(f), true) => println!("{}: {:?}; files and record removed", r.id, f),
                _ => println!("{}: errors: {}", r.id, errs.join("; ")),
            }
        }
        out.push(serde_json::json!({"id": r.id, "vmm": fate, "errors": errs}));
    }
    if a.json {
        super::print_json(&serde_json::json!({ "killed": out }))?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn kill_remote(c: &wasp::serve::client::Client, a: &KillArgs) -> anyhow::Result<ExitCode> {
    let ids: Vec<String> = if a.all {
        super::remote::list(c)?
            .iter()
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect()
    } else {
        a.ids.clone()
    };
    let mut out = Vec::new();
    let mut failed = 0;
    for id in &ids {
        let Some(r) = super::remote::kill(c, id)? else {
            if a.all {
                continue; // gone meanwhile
            }
            bail!(
                "no clone {id} in the wasp daemon at {}; `wasp ls` lists its clones",
                c.target()
            );
        };
        let fate: Option<wasp::vmm::VmmFate> = serde_json::from_value(r["vmm"].clone()).ok();
        let errs: Vec<String> = serde_json::from_value(r["errors"].clone()).unwrap_or_default();
        failed += usize::from(!errs.is_empty());
        if !a.json {
            match (&fate, errs.is_empty()) {
                (Some(f), true) => println!("{id}: {f:?}; files and record removed"),
                _ => println!("{id}: errors: {}", errs.join("; ")),
            }
        }
        out.push(serde_json::json!({"id": id, "vmm": fate, "errors": errs}));
    }
    if a.json {
        super::print_json(&serde_json::json!({ "killed": out }))?;
    }
    Ok(super::remote::exit(failed > 0))
}

/// Says on stderr what a killed demo or bench left and was removed.
pub fn report_leftovers(l: &demo::Leftovers) {
    if !l.dirs.is_empty() || !l.errors.is_empty() {
        eprintln!(
            "wasp: removed what {} killed demo/bench run(s) left: {} VMM(s), {} slot(s), host netns {:?}",
            l.dirs.len(),
            l.vmms,
            l.slots,
            l.host_netns
        );
    }
    for e in &l.errors {
        eprintln!("wasp: cleaning a killed run: {e}");
    }
}

/// Runs `wasp demo`.
pub fn demo_cmd(a: DemoArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    eprintln!(
        "wasp demo: {} clones on the stand-in VMM (not Firecracker: no Linux guest boots on this host class), in a private host netns; everything is removed at the end",
        a.count
    );
    report_leftovers(&demo::reconcile_leftovers(&cfg.runtime_dir.value));
    let work = cfg
        .runtime_dir
        .value
        .join(format!("demo-{}", std::process::id()));
    let bar = super::progress::bar(a.count, "clones");
    let r = demo::run_observed(
        &demo::DemoOptions {
            count: a.count,
            parallel: a.parallel,
            work_dir: work,
            vmm: demo::DemoVmm::Standin,
            driver: None,
            mem_mib: 64,
            hold: false,
            one_at_a_time: false,
            standby: 0,
            registry: Some(wasp::pipeline::registry::Registry::dir_of(
                &cfg.state_dir.value,
            )),
            layout: cfg.layout.value,
        },
        &mut |_| bar.inc(1),
    );
    bar.finish_and_clear();
    let r = r?;
    let ok = r.spawn.summary.failed == 0
        && r.agent_failures.is_empty()
        && r.agents_ok == r.spawn.summary.ready
        && r.cleanup_errors.is_empty();
    if a.json {
        super::print_json(&r)?;
    } else {
        print_report(&r.spawn);
        println!(
            "\nagents: {} of {} answered over TCP at their clone IP with their own AGENT_ID",
            r.agents_ok, r.spawn.summary.ready
        );
        for (id, why) in &r.agent_failures {
            println!("  {id}: {why}");
        }
        for e in &r.cleanup_errors {
            println!("cleanup error: {e}");
        }
        println!(
            "removed: clones, slots, bridge, host netns {}, snapshot",
            r.host_netns
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

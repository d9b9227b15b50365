//! `wasp spawn`, `wasp ls`, `wasp kill` and `wasp demo`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use wasp::env::Env;
use wasp::launch::Vmm;
use wasp::paths::{DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR};
use wasp::ready::Ready;
use wasp::restore::Timeouts;
use wasp::ring::DriverKind;
use wasp::slot::HostNet;
use wasp::spawn::{self, PhasesMs, PoolSlots, SpawnOptions, SpawnReport};
use wasp::stats::Percentiles;
use wasp::storage::clone::{CloneStore, Mode};
use wasp::{demo, state, teardown};

use super::pool::Where;

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

/// `wasp spawn`.
#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// Snapshot directory (with wasp-snapshot.json).
    #[arg(long, required_unless_present = "demo_snapshot")]
    pub snapshot: Option<PathBuf>,
    /// Use the demo's synthesized stand-in snapshot (made if missing); the
    /// clones live in the private host netns wasp-hostns-demo.
    #[arg(long, conflicts_with_all = ["snapshot", "vmm"])]
    pub demo_snapshot: bool,
    /// Number of clones.
    #[arg(long)]
    pub count: usize,
    /// The VMM.
    #[arg(long, value_enum)]
    pub vmm: Option<VmmArg>,
    /// Clones in flight at once.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
    /// Readiness: tcp:PORT, running or none.
    #[arg(long, default_value = "tcp:22")]
    pub ready: Ready,
    /// A non-secret KEY=VALUE for every clone (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A root-owned mode-0600 file of KEY=VALUE secrets (repeatable).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Pass wasp's own environment variable NAME as a secret (repeatable).
    #[arg(long = "secret-env", value_name = "NAME")]
    pub secret_env: Vec<String>,
    /// The firecracker binary (default: WASP_FIRECRACKER, then PATH).
    #[arg(long)]
    pub firecracker: Option<PathBuf>,
    /// Restore driver (default: io_uring when available).
    #[arg(long, value_enum)]
    pub driver: Option<DriverArg>,
    /// Per-clone files.
    #[arg(long, default_value = DEFAULT_RUNTIME_DIR)]
    pub runtime_dir: PathBuf,
    /// Clone records.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Extra arguments for the stand-in VMM (e.g. --fault load-400).
    #[arg(long = "standin-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub standin_args: Vec<String>,
    #[command(flatten)]
    pub at: Where,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `wasp ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Clone records.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
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
    /// Clone records.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
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

fn in_use(state_dir: &std::path::Path, pool: &str) -> HashSet<u32> {
    state::Store::open(state_dir)
        .and_then(|s| s.list())
        .map(|(recs, _)| {
            recs.into_iter()
                .filter(|r| r.pool == pool && state::same_process(r.pid, r.pid_start))
                .map(|r| r.slot)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `wasp spawn`.
pub fn spawn_cmd(mut a: SpawnArgs) -> anyhow::Result<ExitCode> {
    if a.count == 0 || a.count > spawn::MAX_COUNT {
        bail!(
            "--count {} is out of range: use 1 to {}",
            a.count,
            spawn::MAX_COUNT
        );
    }
    let env = build_env(&a).context("bad environment")?;
    let vmm_arg = if a.demo_snapshot {
        a.at.host_netns = Some(demo::DEMO_HOST_NETNS.into());
        a.at.pool = demo::DEMO_POOL.into();
        let dir = PathBuf::from(demo::DEMO_SNAPSHOT_DIR);
        demo::ensure_snapshot(&dir).context("make the demo snapshot")?;
        a.snapshot = Some(dir);
        eprintln!(
            "wasp: --demo-snapshot uses the stand-in VMM (not Firecracker) in host netns {}",
            demo::DEMO_HOST_NETNS
        );
        VmmArg::Standin
    } else {
        a.vmm.unwrap_or(VmmArg::Firecracker)
    };
    let snapshot = a.snapshot.clone().expect("clap requires it");
    let vmm = match vmm_arg {
        VmmArg::Firecracker => {
            let p = wasp::firecracker::locate_firecracker(a.firecracker.as_deref())?;
            wasp::firecracker::version_of(&p)?;
            Vmm::Firecracker(p)
        }
        VmmArg::Standin => {
            Vmm::Standin(wasp::standin::locate(&a.runtime_dir).context("find the stand-in VMM")?)
        }
    };
    let store =
        CloneStore::open(&snapshot, &a.runtime_dir, Mode::Auto).context("open the snapshot")?;
    let host = HostNet {
        netns: a.at.host_netns.clone(),
        egress_uplink: None,
    };
    let mut slots = PoolSlots::open(a.at.net(), &host, a.count, in_use(&a.state_dir, &a.at.pool))
        .context("prepare the slot pool")?;
    let opts = SpawnOptions {
        vmm,
        count: a.count,
        parallel: a.parallel,
        ready: a.ready,
        timeouts: Timeouts::default(),
        driver: a.driver.map(|d| match d {
            DriverArg::Uring => DriverKind::Uring,
            DriverArg::Syscalls => DriverKind::Syscalls,
        }),
        state_dir: a.state_dir.clone(),
        ready_retry: Duration::from_millis(5),
        vmm_args: a.standin_args.clone(),
    };
    let report = spawn::spawn(&opts, &store, &mut slots, &env)?;
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
pub fn ls(a: LsArgs) -> anyhow::Result<ExitCode> {
    let store = state::Store::open(&a.state_dir)?;
    let (recs, bad) = store.list()?;
    for e in &bad {
        eprintln!("warning: {}", wasp::doctor::error_chain(e));
    }
    let rows: Vec<serde_json::Value> = recs
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).expect("record");
            v["alive"] = state::same_process(r.pid, r.pid_start).into();
            v
        })
        .collect();
    if a.json {
        super::print_json(&serde_json::json!({ "clones": rows }))?;
    } else {
        println!(
            "{:<14} {:<8} {:<18} {:<13} {:>7} {:<6} host_netns",
            "id", "vmm", "netns", "clone_ip", "pid", "alive"
        );
        for r in &recs {
            println!(
                "{:<14} {:<8} {:<18} {:<13} {:>7} {:<6} {}",
                r.id,
                r.vmm,
                r.netns,
                r.clone_ip,
                r.pid,
                state::same_process(r.pid, r.pid_start),
                r.host_netns.as_deref().unwrap_or("-")
            );
        }
        println!("{} clone(s)", recs.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `wasp kill`.
pub fn kill(a: KillArgs) -> anyhow::Result<ExitCode> {
    let store = state::Store::open(&a.state_dir)?;
    let (recs, _) = store.list()?;
    let targets: Vec<_> = if a.all {
        recs
    } else {
        let mut v = Vec::new();
        for id in &a.ids {
            match recs.iter().find(|r| &r.id == id) {
                Some(r) => v.push(r.clone()),
                None => bail!(
                    "no clone {id} in {}; `wasp ls` lists the clones wasp started",
                    a.state_dir.display()
                ),
            }
        }
        v
    };
    let grace = Duration::from_secs_f64(a.grace.max(0.0));
    let mut out = Vec::new();
    let mut failed = 0;
    for r in &targets {
        let (fate, errors) = teardown::teardown(&store, r, grace);
        failed += usize::from(!errors.is_empty());
        let errs: Vec<String> = errors
            .iter()
            .map(|e| wasp::doctor::error_chain(e))
            .collect();
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

/// Runs `wasp demo`.
pub fn demo_cmd(a: DemoArgs) -> anyhow::Result<ExitCode> {
    eprintln!(
        "wasp demo: {} clones on the stand-in VMM (not Firecracker: no Linux guest boots on this host class), in a private host netns; everything is removed at the end",
        a.count
    );
    let work = PathBuf::from(DEFAULT_RUNTIME_DIR).join(format!("demo-{}", std::process::id()));
    let r = demo::run(&demo::DemoOptions {
        count: a.count,
        parallel: a.parallel,
        work_dir: work,
        vmm: demo::DemoVmm::Standin,
        driver: None,
        mem_mib: 64,
        hold: false,
    })?;
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

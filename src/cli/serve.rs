//! `wasp serve`: the per-host daemon (the library's `wasp::serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use wasp::config::{Config, Listen};
use wasp::engine::{Engine, EngineConfig, EngineError, PoolSetup};
use wasp::ops::reconcile;
use wasp::pipeline::launch::Vmm;
use wasp::pipeline::restore::Timeouts;
use wasp::serve::{
    Backend, EngineBackend, EngineBackendOptions, Limits, OpenBackend, ServeOptions, Server, Stop,
    Token,
};

use super::args::Where;
use super::spawn::{SpawnFlags, VmmArg};

const EXAMPLES: &str = r#"Examples (the default socket; on TCP add -H "Authorization: Bearer $(cat TOKEN_FILE)"):
  S=/run/wasp/wasp.sock
  curl --unix-socket $S -X POST http://wasp/v1/clones -H 'Content-Type: application/json' \
       -d '{"snapshot":"golden","count":1,"env":{"MODE":"a"},"secrets":{"API_KEY":"..."},"ready":"tcp:22","ttl_s":600,"labels":{"team":"x"}}'
  curl --unix-socket $S http://wasp/v1/clones?label=team=x
  curl --unix-socket $S -X DELETE http://wasp/v1/clones?label=team=x
  curl --unix-socket $S http://wasp/v1/clones/ID
  curl --unix-socket $S -X DELETE http://wasp/v1/clones/ID
  curl --unix-socket $S -X PATCH http://wasp/v1/clones/ID -H 'Content-Type: application/json' -d '{"ttl_s":3600}'
  curl --unix-socket $S -X POST http://wasp/v1/clones/ID/pause
  curl --unix-socket $S -X POST http://wasp/v1/clones/ID/resume
  curl --unix-socket $S http://wasp/v1/snapshots
  curl --unix-socket $S -X POST http://wasp/v1/snapshots -H 'Content-Type: application/json' \
       -d '{"name":"golden2","dir":"/var/lib/wasp/golden2"}'
  curl --unix-socket $S http://wasp/v1/pools
  curl --unix-socket $S -X PUT http://wasp/v1/pools/default -H 'Content-Type: application/json' \
       -d '{"size":64,"low_water":32,"high_water":256}'
  curl --unix-socket $S http://wasp/v1/capacity
  curl --unix-socket $S http://wasp/healthz
  curl --unix-socket $S http://wasp/readyz
  curl --unix-socket $S http://wasp/metrics
The API: docs/api/openapi.yaml. Running it under systemd, Nomad or Kubernetes: docs/operations.md."#;

/// `wasp serve`.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct ServeArgs {
    /// Where to listen: unix:PATH or tcp:ADDR:PORT (repeatable; TCP needs
    /// --token-file) [serve.listen; default: unix:/run/wasp/wasp.sock].
    #[arg(long, value_name = "unix:PATH|tcp:ADDR")]
    pub listen: Vec<Listen>,
    /// The bearer token for TCP listeners: a root-owned mode-0600 file of
    /// one line [serve.token_file].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A separate metrics-only listener, ADDR:PORT (GET /metrics is on the
    /// API listeners too) [serve.metrics].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// The unix sockets' group (mode 0660) [serve.socket_group; default: root].
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// A snapshot requests may name: NAME=DIR (repeatable; POST
    /// /v1/snapshots adds more).
    #[arg(long = "snapshot", value_name = "NAME=DIR")]
    pub snapshots: Vec<String>,
    /// The VMM every clone runs.
    #[arg(long, value_enum, default_value = "firecracker")]
    pub vmm: VmmArg,
    /// Kill every clone when the daemon exits (default: they keep running
    /// and the next daemon adopts them).
    #[arg(long)]
    pub kill_on_exit: bool,
    /// Largest `count` of one request [serve.max_count; default: 1000].
    #[arg(long)]
    pub max_count: Option<usize>,
    /// Largest request body, bytes [serve.body_limit; default: 65536].
    #[arg(long)]
    pub body_limit: Option<usize>,
    /// Free slots built at start and kept by the refill [serve.warm; default: 16].
    #[arg(long)]
    pub warm: Option<usize>,
    /// The refill starts below this many free slots [serve.low_water; default: 8].
    #[arg(long)]
    pub low_water: Option<usize>,
    /// Free slots above this are destroyed [serve.high_water; default: 256].
    #[arg(long)]
    pub high_water: Option<usize>,
    /// Experimental: VMMs to hold started ahead in their slots for the
    /// first --snapshot [serve.standby; default: 0].
    #[arg(long, value_name = "N")]
    pub standby: Option<usize>,
    /// HTTP worker threads (1 or 2; the restore itself runs on the
    /// engine's own threads).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub workers: u8,
    /// Accept snapshots on another filesystem than the runtime dir whose
    /// clones would copy their disks (refused by default with 409, as
    /// `wasp spawn` refuses them without --allow-copy) [serve.allow_copy].
    #[arg(long)]
    pub allow_copy: bool,
    /// Seconds between SIGTERM and SIGKILL when a clone is deleted.
    #[arg(long, default_value_t = 2.0)]
    pub grace: f64,
    #[command(flatten)]
    pub flags: SpawnFlags,
    #[command(flatten)]
    pub at: Where,
}

fn gid_of(group: &str) -> anyhow::Result<u32> {
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => bail!(
            "serve.socket_group {group:?} is not a group of this host (getent group {group}); create it or pick another"
        ),
        Err(e) => bail!("cannot look up group {group:?}: {e}"),
    }
}

fn parse_snapshots(v: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    v.iter()
        .map(|s| {
            let (n, d) = s
                .split_once('=')
                .with_context(|| format!("--snapshot {s:?} is not NAME=DIR"))?;
            if !wasp::serve::backend::valid_snapshot_name(n) {
                bail!("--snapshot {s:?}: the name is not 1 to 64 characters of [A-Za-z0-9_.-]");
            }
            let d = PathBuf::from(d);
            if !d.is_absolute() {
                bail!("--snapshot {s:?}: the directory must be absolute");
            }
            Ok((n.to_owned(), d))
        })
        .collect()
}

/// Runs `wasp serve`.
pub fn serve_cmd(a: ServeArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    a.at.apply(&mut cfg);
    a.flags.apply(&mut cfg);
    cfg.serve_listen
        .flag("--listen", (!a.listen.is_empty()).then(|| a.listen.clone()));
    cfg.serve_token_file
        .flag("--token-file", a.token_file.clone().map(Some));
    cfg.serve_metrics.flag("--metrics", a.metrics.map(Some));
    cfg.serve_socket_group
        .flag("--socket-group", a.socket_group.clone().map(Some));
    cfg.serve_max_count.flag("--max-count", a.max_count);
    cfg.serve_body_limit.flag("--body-limit", a.body_limit);
    cfg.serve_warm.flag("--warm", a.warm);
    cfg.serve_low_water.flag("--low-water", a.low_water);
    cfg.serve_high_water.flag("--high-water", a.high_water);
    cfg.serve_standby.flag("--standby", a.standby);
    cfg.serve_allow_copy
        .flag("--allow-copy", a.allow_copy.then_some(true));
    let (warm, low, high) = (
        cfg.serve_warm.value,
        cfg.serve_low_water.value,
        cfg.serve_high_water.value,
    );
    if !(low <= warm && warm <= high) {
        bail!(
            "the pool marks must hold low_water <= warm <= high_water, got {low} ({}), {warm} ({}), {high} ({})",
            cfg.serve_low_water.source,
            cfg.serve_warm.source,
            cfg.serve_high_water.source
        );
    }
    if cfg.serve_max_count.value == 0 || cfg.serve_max_count.value > wasp::engine::batch::MAX_COUNT
    {
        bail!(
            "serve.max_count {} is out of range: use 1 to {}",
            cfg.serve_max_count.value,
            wasp::engine::batch::MAX_COUNT
        );
    }
    cfg.slot_net().check_fits(warm.max(1))?;
    let token = match &cfg.serve_token_file.value {
        Some(p) => Some(Arc::new(Token::from_file(p)?)),
        None => None,
    };
    let socket_gid = cfg
        .serve_socket_group
        .value
        .as_deref()
        .map(gid_of)
        .transpose()?;
    let snapshots = parse_snapshots(&a.snapshots)?;
    let runtime_dir = cfg.runtime_dir.value.clone();
    let state_dir = cfg.state_dir.value.clone();
    let (vmm, vmm_name) = match a.vmm {
        VmmArg::Firecracker => {
            let p = wasp::vmm::firecracker::locate_checked(
                "firecracker",
                cfg.firecracker_choice().as_ref(),
                None,
            )?;
            wasp::vmm::firecracker::check_kvm()?;
            (Vmm::Firecracker(p), "firecracker")
        }
        VmmArg::Standin => (
            Vmm::Standin(wasp::standin::locate(&runtime_dir).context("find the stand-in VMM")?),
            "standin",
        ),
    };
    // What a killed daemon or command left is reconciled first (healthy
    // clones are kept, for the engine to adopt); the state dir's shared
    // lock is held for the daemon's life.
    let (_lock, _) = reconcile::at_start(&reconcile::Options::from_config(&cfg, true))
        .context("reconcile what an earlier run left")?;
    let server = Server::bind(ServeOptions {
        listen: cfg.serve_listen.value.clone(),
        token,
        metrics: cfg.serve_metrics.value,
        socket_gid,
        limits: Limits {
            max_count: cfg.serve_max_count.value,
            body_limit: cfg.serve_body_limit.value,
        },
        kill_on_exit: a.kill_on_exit,
        workers: a.workers as usize,
    })?;
    let mut engine_cfg = EngineConfig::new(vmm, state_dir.clone(), runtime_dir.clone());
    engine_cfg.parallel = cfg.parallel.value;
    engine_cfg.standby = cfg.serve_standby.value;
    engine_cfg.allow_copy = cfg.serve_allow_copy.value;
    if engine_cfg.standby > 0 && snapshots.is_empty() {
        bail!(
            "serve.standby ({}) holds VMMs for the first --snapshot NAME=DIR, and none is given",
            cfg.serve_standby.source
        );
    }
    let standby_for = snapshots.first().map(|(n, _)| n.clone());
    // The engine starts the refill once it has set aside the slots of the
    // live clones it adopts.
    let pool = PoolSetup {
        net: cfg.slot_net(),
        host: cfg.host_net(),
        warm,
        low_water: low,
        high_water: high,
    };
    let owner = wasp::state::Owner::of_state_dir(&state_dir)?;
    let check_cfg = cfg.clone();
    let opts = EngineBackendOptions {
        runtime_dir,
        owner: Some(owner),
        pool: cfg.pool.value.clone(),
        ready: cfg.ready.value,
        timeouts: Timeouts::default(),
        kill_grace: Duration::from_secs_f64(a.grace.clamp(0.0, 60.0)),
        check_guest: Some(Arc::new(move |m| {
            check_cfg.check_guest(m).map_err(|e| wasp::error::chain(&e))
        })),
        allow_copy: cfg.serve_allow_copy.value,
    };
    let open: OpenBackend = Box::new(move || {
        let engine = Engine::open(engine_cfg, pool).map_err(|e| match e {
            EngineError::Pool(e) => format!("prepare the slot pool: {}", wasp::error::chain(&e)),
            e => wasp::error::chain(&e),
        })?;
        let a = engine.adopted();
        if !a.adopted.is_empty() || !a.reclaimed.is_empty() {
            tracing::warn!(
                "adopted {} live clone(s) of an earlier daemon, reclaimed {}",
                a.adopted.len(),
                a.reclaimed.len()
            );
        }
        for e in &a.errors {
            tracing::warn!("adoption: {e}");
        }
        let b = EngineBackend::new(Arc::new(engine), vmm_name, opts, &snapshots)
            .map_err(|e| e.to_string())?;
        if let Some(name) = &standby_for {
            b.hold_standby(name).map_err(|e| e.to_string())?;
        }
        Ok(Arc::new(b) as Arc<dyn Backend>)
    });
    let rep = server.run(open, Stop::Signals)?;
    eprintln!(
        "wasp serve: stopped; {} clone(s) killed, {} left running{}",
        rep.killed,
        rep.left_running,
        if rep.left_running > 0 {
            " (the next `wasp serve` adopts them; `wasp kill --all` stops them)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

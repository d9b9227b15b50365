//! `wasp pool warm|status|drain`: the slot pool from the command line.

use std::net::SocketAddrV4;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::reconcile::Dirs;
use wasp::config::Config;
use wasp::pool::{Pool, PoolConfig};
use wasp::slot::{Cidr, ConnectUids, Kernel, SlotOps};
use wasp::{reconcile, teardown};

/// Where the pool lives; shared by every pool subcommand. Each flag
/// overrides the config file's `[pool]` value (see `wasp config show`).
#[derive(Debug, Clone, Args)]
pub struct Where {
    /// Pool name (slot namespaces are wasp-<pool>-<n>) [pool.name; default: default].
    #[arg(long)]
    pub pool: Option<String>,
    /// Host network namespace for the bridge (created if missing)
    /// [pool.host_netns; default: the current one].
    #[arg(long, value_name = "NAME")]
    pub host_netns: Option<String>,
    /// Clone address space; the bridge takes its first address
    /// [pool.cidr; default: 10.0.0.0/16].
    #[arg(long)]
    pub cidr: Option<Cidr>,
    /// Host bridge name [pool.bridge; default: wasp0].
    #[arg(long)]
    pub bridge: Option<String>,
    /// Host ports clones may reach (repeatable), e.g. 10.0.0.1:8080
    /// [pool.allow_host; default: the bridge address, port 8080].
    #[arg(long = "allow-host", value_name = "ADDR:PORT")]
    pub allow_host: Vec<SocketAddrV4>,
    /// Local uids of the host netns that may open connections to clones:
    /// `any`, or uids like 0,1000 (root is always allowed); applied to the
    /// host netns whenever the host side is set up (pool warm, spawn,
    /// snapshot create) [pool.connect_uids; default: root only].
    #[arg(long, value_name = "any|UID,...")]
    pub connect_uids: Option<ConnectUids>,
}

impl Where {
    /// Lays the flags the user gave over `cfg`.
    pub fn apply(&self, cfg: &mut Config) {
        cfg.pool.flag("--pool", self.pool.clone());
        cfg.host_netns
            .flag("--host-netns", self.host_netns.clone().map(Some));
        cfg.cidr.flag("--cidr", self.cidr);
        cfg.bridge.flag("--bridge", self.bridge.clone());
        cfg.allow_host.flag(
            "--allow-host",
            (!self.allow_host.is_empty()).then(|| Some(self.allow_host.clone())),
        );
        cfg.connect_uids
            .flag("--connect-uids", self.connect_uids.clone());
    }
}

/// `wasp pool ...`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    pub cmd: PoolCmd,
}

/// Pool subcommands.
#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Build N slots (kept after exit; `drain` removes them).
    Warm {
        /// Number of slots.
        #[arg(long)]
        size: usize,
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        dirs: Dirs,
        /// Masquerade the clone CIDR out of this uplink (host netns). It
        /// stays until `pool drain`; slots built later (by `spawn` too) get
        /// egress.
        #[arg(long, value_name = "IFNAME")]
        egress_uplink: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Show the slots wasp owns, found by names and ownership marks.
    Status {
        #[command(flatten)]
        at: Where,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Remove every slot of the pool, the bridge and wasp's host nft table.
    /// Refused while live clones use the pool (see --force).
    Drain {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        dirs: Dirs,
        /// Kill the pool's live clones first (like `wasp kill`: SIGTERM,
        /// then SIGKILL after 2 s), then drain. Without it, drain refuses
        /// while the state dir records live clones in the pool.
        #[arg(long)]
        force: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Serialize)]
struct StatusOut {
    pool: String,
    host_netns: Option<String>,
    cidr: String,
    slots: usize,
    healthy: usize,
    broken: Vec<u32>,
}

/// Runs `wasp pool`.
pub fn run(a: PoolArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    match a.cmd {
        PoolCmd::Warm {
            size,
            at,
            dirs,
            egress_uplink,
            json,
        } => {
            at.apply(&mut cfg);
            dirs.apply(&mut cfg);
            cfg.slot_net().check_fits(size)?;
            let (_lock, _) = reconcile::at_start(&super::reconcile::options(&cfg, true))
                .context("reconcile what an earlier run left")?;
            let mut host = cfg.host_net();
            host.egress_uplink = egress_uplink;
            let k = Kernel::setup(cfg.slot_net(), &host).context("set up the host side")?;
            let pool = Pool::new(k, PoolConfig::default());
            let rep = pool.reconcile().context("reconcile existing slots")?;
            let need = size.saturating_sub(pool.status().free);
            let t = std::time::Instant::now();
            pool.warm(need).context("warm the pool")?;
            let secs = t.elapsed().as_secs_f64();
            let out = serde_json::json!({
                "pool": cfg.pool.value,
                "adopted": rep.adopted.len(),
                "removed_broken": rep.removed.len(),
                "built": need,
                "free": pool.status().free,
                "seconds": secs,
            });
            if json {
                super::print_json(&out)?;
            } else {
                println!(
                    "pool {}: {} free slots ({} built in {:.3}s, {} adopted, {} broken removed)",
                    cfg.pool.value,
                    pool.status().free,
                    need,
                    secs,
                    rep.adopted.len(),
                    rep.removed.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PoolCmd::Status { at, json } => {
            at.apply(&mut cfg);
            let k = Kernel::attach(cfg.slot_net(), &cfg.host_net())
                .context("attach to the host side")?;
            let found = k.scan().context("scan for slots")?;
            let out = StatusOut {
                pool: cfg.pool.value.clone(),
                host_netns: cfg.host_netns.value.clone(),
                cidr: cfg.cidr.value.to_string(),
                slots: found.len(),
                healthy: found.iter().filter(|f| f.healthy()).count(),
                broken: found
                    .iter()
                    .filter(|f| !f.healthy())
                    .map(|f| f.index)
                    .collect(),
            };
            if json {
                super::print_json(&out)?;
            } else {
                println!(
                    "pool {}: {} slots ({} healthy, broken: {:?})",
                    out.pool, out.slots, out.healthy, out.broken
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PoolCmd::Drain {
            at,
            dirs,
            force,
            json,
        } => {
            at.apply(&mut cfg);
            dirs.apply(&mut cfg);
            let (_lock, _) = reconcile::at_start(&super::reconcile::options(&cfg, true))
                .context("reconcile what an earlier run left")?;
            let store = wasp::state::Store::open(&cfg.state_dir.value)?;
            let killed = teardown::clear_for_drain(
                &store,
                &cfg.pool.value,
                force,
                std::time::Duration::from_secs(2),
            )?;
            if !json {
                for k in &killed {
                    println!(
                        "{}: {}; files and record removed (--force)",
                        k.id,
                        k.vmm.map(|f| format!("{f:?}")).unwrap_or_default()
                    );
                }
            }
            let k = Kernel::attach(cfg.slot_net(), &cfg.host_net())
                .context("attach to the host side")?;
            let pool = Pool::new(k, PoolConfig::default());
            let removed = pool.drain().context("drain the pool")?;
            pool.ops()
                .remove_host()
                .context("remove the bridge and host nft table")?;
            if json {
                super::print_json(&serde_json::json!({
                    "pool": cfg.pool.value,
                    "removed": removed,
                    "killed": killed,
                }))?;
            } else {
                println!(
                    "pool {}: removed {removed} slots, the bridge and the host table",
                    cfg.pool.value
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

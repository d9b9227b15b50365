//! `wasp pool warm|status|drain`: the slot pool from the command line.

use std::net::SocketAddrV4;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::reconcile::Dirs;
use wasp::pool::{Pool, PoolConfig};
use wasp::reconcile;
use wasp::slot::{Cidr, HostNet, Kernel, SlotNet, SlotOps};

/// Where the pool lives; shared by every pool subcommand.
#[derive(Debug, Clone, Args)]
pub struct Where {
    /// Pool name (slot namespaces are wasp-<pool>-<n>).
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// Host network namespace for the bridge (created if missing); default:
    /// the current one.
    #[arg(long, value_name = "NAME")]
    pub host_netns: Option<String>,
    /// Clone address space; the bridge takes its first address.
    #[arg(long, default_value = "10.0.0.0/16")]
    pub cidr: Cidr,
    /// Host bridge name.
    #[arg(long, default_value = "wasp0")]
    pub bridge: String,
    /// Host ports clones may reach (repeatable), e.g. 10.0.0.1:8080.
    #[arg(
        long = "allow-host",
        value_name = "ADDR:PORT",
        default_value = "10.0.0.1:8080"
    )]
    pub allow_host: Vec<SocketAddrV4>,
}

impl Where {
    /// The slot configuration.
    pub fn net(&self) -> SlotNet {
        SlotNet {
            pool: self.pool.clone(),
            cidr: self.cidr,
            bridge: self.bridge.clone(),
            allow_host: self.allow_host.clone(),
            ..SlotNet::default()
        }
    }

    /// The host side.
    pub fn host(&self) -> HostNet {
        HostNet {
            netns: self.host_netns.clone(),
            egress_uplink: None,
        }
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
        /// Masquerade the clone CIDR out of this uplink (host netns).
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
    Drain {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        dirs: Dirs,
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
pub fn run(a: PoolArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        PoolCmd::Warm {
            size,
            at,
            dirs,
            egress_uplink,
            json,
        } => {
            at.net().check_fits(size)?;
            let (_lock, _) = reconcile::at_start(&super::reconcile::options(&dirs, Some(&at)))
                .context("reconcile what an earlier run left")?;
            let mut host = at.host();
            host.egress_uplink = egress_uplink;
            let k = Kernel::setup(at.net(), &host).context("set up the host side")?;
            let pool = Pool::new(k, PoolConfig::default());
            let rep = pool.reconcile().context("reconcile existing slots")?;
            let need = size.saturating_sub(pool.status().free);
            let t = std::time::Instant::now();
            pool.warm(need).context("warm the pool")?;
            let secs = t.elapsed().as_secs_f64();
            let out = serde_json::json!({
                "pool": at.pool,
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
                    at.pool,
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
            let k = Kernel::attach(at.net(), &at.host()).context("attach to the host side")?;
            let found = k.scan().context("scan for slots")?;
            let out = StatusOut {
                pool: at.pool.clone(),
                host_netns: at.host_netns.clone(),
                cidr: at.cidr.to_string(),
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
        PoolCmd::Drain { at, dirs, json } => {
            let (_lock, _) = reconcile::at_start(&super::reconcile::options(&dirs, Some(&at)))
                .context("reconcile what an earlier run left")?;
            let k = Kernel::attach(at.net(), &at.host()).context("attach to the host side")?;
            let pool = Pool::new(k, PoolConfig::default());
            let removed = pool.drain().context("drain the pool")?;
            pool.ops()
                .remove_host()
                .context("remove the bridge and host nft table")?;
            if json {
                super::print_json(&serde_json::json!({ "pool": at.pool, "removed": removed }))?;
            } else {
                println!(
                    "pool {}: removed {removed} slots, the bridge and the host table",
                    at.pool
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

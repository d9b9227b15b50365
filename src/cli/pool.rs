//! `wasp pool warm|status|drain`: the slot pool from the command line.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::args::{Dirs, Where};
use wasp::config::{Config, Source};
use wasp::pipeline::pool::{Pool, PoolConfig};
use wasp::pipeline::registry::Registry;
use wasp::pipeline::slot::{HostNet, Kernel, SlotNet, SlotOps};
use wasp::{ops::reconcile, ops::teardown};

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
    /// Show the slots wasp owns, found by names and ownership marks;
    /// without --pool, of every pool wasp has on this host.
    Status {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        dirs: Dirs,
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
        /// Drain every pool wasp has on this host (without --pool, drain
        /// names them and asks for --pool or --all).
        #[arg(long, conflicts_with = "pool")]
        all: bool,
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
            let (_lock, _) = reconcile::at_start(&reconcile::Options::from_config(&cfg, true))
                .context("reconcile what an earlier run left")?;
            let mut host = cfg.host_net();
            host.egress_uplink = egress_uplink;
            // Every host limit for `size` clones, before anything is built.
            let net = cfg.slot_net();
            wasp::pipeline::limits::check_pool(
                &net,
                &host,
                wasp::pipeline::limits::Demand::clones(size as u64, &net.cidr),
            )?;
            let k = Kernel::setup(net, &host).context("set up the host side")?;
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
        PoolCmd::Status { at, dirs, json } => {
            at.apply(&mut cfg);
            dirs.apply(&mut cfg);
            if !pool_given(&cfg) {
                return status_all(&cfg, json);
            }
            let out = status_of(&cfg.slot_net(), &cfg.host_net())?;
            if json {
                super::print_json(&out)?;
            } else {
                print_status(&out);
            }
            Ok(ExitCode::SUCCESS)
        }
        PoolCmd::Drain {
            at,
            dirs,
            force,
            all,
            json,
        } => {
            at.apply(&mut cfg);
            dirs.apply(&mut cfg);
            let targets = if pool_given(&cfg) {
                vec![(cfg.slot_net(), cfg.host_net())]
            } else {
                let found = existing_pools(&cfg);
                if found.is_empty() {
                    if json {
                        super::print_json(&serde_json::json!({ "drained": [] }))?;
                    } else {
                        println!("wasp has no pools on this host");
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                if !all {
                    let names: Vec<String> = found.iter().map(|(n, h)| where_is(n, h)).collect();
                    anyhow::bail!(
                        "pool drain removes one pool: name it with --pool NAME, or drain all with --all; wasp has {} pool(s) here: {}",
                        names.len(),
                        names.join(", ")
                    );
                }
                found
            };
            let (_lock, _) = reconcile::at_start(&reconcile::Options::from_config(&cfg, true))
                .context("reconcile what an earlier run left")?;
            let store = wasp::state::Store::open(&cfg.state_dir.value)?;
            let reg = Registry::of_state_dir(&cfg.state_dir.value);
            let mut drained = Vec::new();
            for (net, host) in targets {
                let out = drain_one(&store, &reg, &net, &host, force)
                    .with_context(|| format!("drain pool {}", net.pool))?;
                if !json {
                    for k in &out.killed {
                        println!(
                            "{}: {}; files and record removed (--force)",
                            k.id,
                            k.vmm.map(|f| format!("{f:?}")).unwrap_or_default()
                        );
                    }
                    println!(
                        "pool {}: removed {} slots, the bridge and the host table{}",
                        out.pool,
                        out.removed,
                        out.host_netns_removed
                            .as_ref()
                            .map(|n| format!(", and host netns {n}"))
                            .unwrap_or_default()
                    );
                }
                drained.push(out);
            }
            if json {
                if let [one] = drained.as_slice() {
                    super::print_json(one)?;
                } else {
                    super::print_json(&serde_json::json!({ "drained": drained }))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// True when the command names its pool (flag, environment or config
/// file); otherwise it covers every pool wasp has on this host.
fn pool_given(cfg: &Config) -> bool {
    cfg.pool.source != Source::Default
}

/// `pool` (in host netns `x`), for messages.
fn where_is(net: &SlotNet, host: &HostNet) -> String {
    match &host.netns {
        Some(ns) => format!("{} (host netns {ns})", net.pool),
        None => net.pool.clone(),
    }
}

/// The pools that exist on this host: every recorded one, and the
/// configured one when it has slots.
fn existing_pools(cfg: &Config) -> Vec<(SlotNet, HostNet)> {
    let reg = Registry::of_state_dir(&cfg.state_dir.value);
    let mut all = wasp::pipeline::slot::registered_pools(&reg, (cfg.slot_net(), cfg.host_net()));
    let configured_has_slots = reg.get(&cfg.pool.value).ok().flatten().is_some()
        || Kernel::attach(cfg.slot_net(), &cfg.host_net())
            .and_then(|k| k.scan())
            .is_ok_and(|f| !f.is_empty());
    if !configured_has_slots {
        all.remove(0);
    }
    all
}

fn status_of(net: &SlotNet, host: &HostNet) -> anyhow::Result<StatusOut> {
    let k = Kernel::attach(net.clone(), host).context("attach to the host side")?;
    let found = k.scan().context("scan for slots")?;
    Ok(StatusOut {
        pool: net.pool.clone(),
        host_netns: host.netns.clone(),
        cidr: net.cidr.to_string(),
        slots: found.len(),
        healthy: found.iter().filter(|f| f.healthy()).count(),
        broken: found
            .iter()
            .filter(|f| !f.healthy())
            .map(|f| f.index)
            .collect(),
    })
}

fn print_status(out: &StatusOut) {
    println!(
        "pool {}: {} slots ({} healthy, broken: {:?})",
        out.pool, out.slots, out.healthy, out.broken
    );
}

/// `pool status` without --pool: every pool wasp has on this host.
fn status_all(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let mut pools = Vec::new();
    let mut errors = Vec::new();
    for (net, host) in existing_pools(cfg) {
        match status_of(&net, &host) {
            Ok(o) => pools.push(o),
            Err(e) => errors.push(format!("pool {}: {e:#}", net.pool)),
        }
    }
    if json {
        super::print_json(&serde_json::json!({ "pools": pools, "errors": errors }))?;
    } else {
        if pools.is_empty() && errors.is_empty() {
            println!("wasp has no pools on this host");
        }
        for p in &pools {
            print_status(p);
        }
        for e in &errors {
            eprintln!("wasp: {e}");
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What draining one pool did.
#[derive(Debug, Serialize)]
struct Drained {
    pool: String,
    removed: usize,
    killed: Vec<teardown::Killed>,
    /// The host netns wasp made for the pool, removed with it.
    host_netns_removed: Option<String>,
}

/// Drains one pool: its live clones refused (or killed with `force`), its
/// slots, bridge and host table removed, its registry record and (when
/// wasp made it and no other pool uses it) its host netns.
fn drain_one(
    store: &wasp::state::Store,
    reg: &Registry,
    net: &SlotNet,
    host: &HostNet,
    force: bool,
) -> anyhow::Result<Drained> {
    let killed =
        teardown::clear_for_drain(store, &net.pool, force, std::time::Duration::from_secs(2))?;
    let k = Kernel::attach(net.clone(), host).context("attach to the host side")?;
    let pool = Pool::new(k, PoolConfig::default());
    let removed = pool.drain().context("drain the pool")?;
    pool.ops()
        .remove_host()
        .context("remove the bridge and host nft table")?;
    drop(pool);
    let entry = reg.get(&net.pool).ok().flatten();
    reg.remove(&net.pool)?;
    let mut host_netns_removed = None;
    if let (Some(e), Some(ns)) = (entry, &host.netns) {
        if e.host_netns_created
            && e.host_netns.as_ref() == Some(ns)
            && !reg.host_netns_shared(ns, &net.pool)
            && wasp::sys::netns::exists(ns)
        {
            wasp::sys::netns::delete_named(ns)
                .with_context(|| format!("delete host netns {ns}, which wasp made for the pool"))?;
            host_netns_removed = Some(ns.clone());
        }
    }
    Ok(Drained {
        pool: net.pool.clone(),
        removed,
        killed,
        host_netns_removed,
    })
}

//! Flags several subcommands share: where the pool lives, and the state
//! and runtime dirs.

use std::net::SocketAddrV4;
use std::path::PathBuf;

use clap::Args;
use wasp::config::Config;
use wasp::pipeline::slot::{Cidr, ConnectUids, Layout};

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
    /// How slots reach the host netns: `routed` (a /32 route per slot, no
    /// port limit) or `bridge` (one bridge, at most 1023 slots)
    /// [pool.layout; default: routed].
    #[arg(long)]
    pub layout: Option<Layout>,
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
        cfg.layout.flag("--layout", self.layout);
        cfg.allow_host.flag(
            "--allow-host",
            (!self.allow_host.is_empty()).then(|| Some(self.allow_host.clone())),
        );
        cfg.connect_uids
            .flag("--connect-uids", self.connect_uids.clone());
    }
}

/// The state and runtime dirs of commands that own state.
#[derive(Debug, Clone, Args)]
pub struct Dirs {
    /// Per-clone files [paths.runtime_dir; default: /var/lib/wasp].
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// Clone records, and the lock every state-owning command holds
    /// [paths.state_dir; default: /run/wasp].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl Dirs {
    /// Lays the flags the user gave over `cfg`.
    pub fn apply(&self, cfg: &mut Config) {
        cfg.runtime_dir
            .flag("--runtime-dir", self.runtime_dir.clone());
        cfg.state_dir.flag("--state-dir", self.state_dir.clone());
    }
}

//! `wasp snapshot create`: boot a guest in a slot, wait until it is ready,
//! snapshot it, write the manifest (see `wasp::snapshot::golden`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use wasp::config::Config;
use wasp::engine::batch::{PoolSlots, Slots};
use wasp::ops::reconcile;
use wasp::pipeline::launch::Vmm;
use wasp::pipeline::storage::probe::{probe_reflink, ReflinkProbe};
use wasp::snapshot::golden::{self, GoldenOptions, GoldenReady};

use super::args::Dirs;
use super::args::Where;
use super::spawn::VmmArg;

/// `wasp snapshot create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Guest kernel (an ELF for x86-64).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Root filesystem image (copied into the snapshot as its base).
    #[arg(long)]
    pub rootfs: PathBuf,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Guest memory (MiB).
    #[arg(long, default_value_t = 256)]
    pub mem_mib: u64,
    /// Extra kernel arguments (wasp adds console and the ip= clone addressing).
    #[arg(long, default_value = "")]
    pub boot_args: String,
    /// When the guest is ready: tcp:PORT, serial:REGEX or delay:MS.
    #[arg(long, default_value = "tcp:22")]
    pub ready: GoldenReady,
    /// Seconds readiness may take.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The VMM.
    #[arg(long, value_enum, default_value = "firecracker")]
    pub vmm: VmmArg,
    /// The firecracker binary [WASP_FIRECRACKER, then paths.firecracker;
    /// default: PATH].
    #[arg(long)]
    pub firecracker: Option<PathBuf>,
    /// Output directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub at: Where,
    #[command(flatten)]
    pub dirs: Dirs,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wasp snapshot create`.
pub fn create(a: CreateArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    a.at.apply(&mut cfg);
    a.dirs.apply(&mut cfg);
    cfg.firecracker
        .flag("--firecracker", a.firecracker.clone().map(Some));
    let vmm = match a.vmm {
        VmmArg::Firecracker => {
            let p = wasp::vmm::firecracker::locate_checked(
                "firecracker",
                cfg.firecracker_choice().as_ref(),
                None,
            )?;
            Vmm::Firecracker(p)
        }
        VmmArg::Standin => Vmm::Standin(
            wasp::standin::locate(&cfg.runtime_dir.value).context("find the stand-in VMM")?,
        ),
    };
    // Like spawn: the pool's slots are reconciled under the state lock, and
    // the slots live clones hold are never taken to boot in.
    let (_lock, _) = reconcile::at_start(&reconcile::Options::from_config(&cfg, true))
        .context("reconcile what an earlier run left")?;
    let net = cfg.slot_net();
    let in_use = wasp::state::Store::open(&cfg.state_dir.value)
        .map(|s| s.slots_in_use(&net.pool))
        .unwrap_or_default();
    let mut slots = PoolSlots::open(net.clone(), &cfg.host_net(), 1, in_use)
        .context("prepare a slot to boot in")?;
    let lease = slots
        .take()
        .map_err(|e| anyhow::anyhow!("take a slot: {e}"))?;
    let made = golden::create(&GoldenOptions {
        vmm,
        kernel: a.kernel,
        rootfs: a.rootfs,
        vcpus: a.vcpus,
        mem_mib: a.mem_mib,
        boot_args: a.boot_args,
        ready: a.ready,
        timeout: Duration::from_secs(a.timeout),
        out: a.out.clone(),
        netns: lease.netns.clone(),
        tap: lease.tap.clone(),
        guest: golden::GuestAddr::of(&net),
        sha256: true,
    });
    let back = slots.give_back(lease);
    let m = made?;
    back.map_err(|e| anyhow::anyhow!("give the slot back: {e}"))?;
    let parent = a
        .out
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    let placed = super::storage::place_if_store(&a.out, &cfg.runtime_dir.value)?;
    let reflink = placed.is_some() || matches!(probe_reflink(&parent), Ok(ReflinkProbe::Supported));
    if !reflink {
        eprintln!(
            "warning: {} has no reflink support; clones of this snapshot get copied disks (`wasp storage init` makes the runtime dir {} a reflink store, and snapshots created then are placed in it)",
            parent.display(),
            cfg.runtime_dir.value.display()
        );
    }
    if a.json {
        super::print_json(
            &serde_json::json!({ "out": a.out, "manifest": m, "reflink": reflink, "placed": placed }),
        )?;
    } else {
        println!(
            "snapshot {}: {} {} guest, {} MiB, {} vCPU; base files are read-only (clones share them)",
            a.out.display(),
            m.vmm,
            m.vmm_version,
            m.mem_mib,
            m.vcpus
        );
        if let Some(p) = &placed {
            super::storage::print_placement(p);
        }
    }
    Ok(ExitCode::SUCCESS)
}

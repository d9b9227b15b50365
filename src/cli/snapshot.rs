//! `wasp snapshot check|adopt|synth|warm`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use wasp::snapshot::{self, adopt, manifest, synth, warm};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub cmd: SnapshotCmd,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Validate a snapshot directory against its manifest.
    Check(CheckArgs),
    /// Write a manifest for an existing Firecracker snapshot directory.
    Adopt(Box<AdoptArgs>),
    /// Make a stand-in snapshot (stand-in VMM, benches).
    Synth(SynthArgs),
    /// Read memory and vmstate into the page cache (io_uring) and report MiB/s.
    Warm(WarmArgs),
    /// Boot a guest in a slot, wait until ready, and take a golden snapshot.
    Create(Box<super::snapshot_create::CreateArgs>),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Snapshot directory.
    pub dir: PathBuf,
    /// Also verify sha256 sums recorded in the manifest (reads every file).
    #[arg(long)]
    pub deep: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// Snapshot directory (e.g. holding vm.snapshot, vm.mem, rootfs.ext4).
    pub dir: PathBuf,
    /// The Firecracker version that made the snapshot, e.g. 1.12.1.
    #[arg(long)]
    pub vmm_version: Option<String>,
    /// vmstate file name in DIR.
    #[arg(long, default_value = "vm.snapshot")]
    pub vmstate: String,
    /// Memory file name in DIR.
    #[arg(long, default_value = "vm.mem")]
    pub memory: String,
    /// Rootfs image file name in DIR ("" for none).
    #[arg(long, default_value = "rootfs.ext4")]
    pub rootfs: String,
    /// Drive id of the rootfs.
    #[arg(long, default_value = "rootfs")]
    pub drive_id: String,
    /// The rootfs path_on_host the VMM recorded (it reopens exactly that
    /// path); wasp accepts only /run/wasp/drives/<drive id>, the path it
    /// binds each clone's own copy over.
    #[arg(long)]
    pub drive_path: Option<String>,
    /// The rootfs was attached read-only.
    #[arg(long)]
    pub read_only: bool,
    /// vCPUs (default 1; cannot be read from a Firecracker vmstate).
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Tap name the VM was attached to (omit if the VM had no network).
    #[arg(long)]
    pub tap: Option<String>,
    /// Firecracker iface id.
    #[arg(long, default_value = wasp::paths::GUEST_IFACE_ID)]
    pub iface_id: String,
    /// Guest MAC (required with --tap).
    #[arg(long)]
    pub guest_mac: Option<String>,
    /// Guest IPv4 address.
    #[arg(long)]
    pub guest_ip: Option<String>,
    /// MMDS version (V1 or V2), if the VM had MMDS configured.
    #[arg(long)]
    pub mmds_version: Option<String>,
    /// MMDS address.
    #[arg(long, default_value = wasp::paths::MMDS_IPV4)]
    pub mmds_address: String,
    /// Record sha256 sums (reads every file once).
    #[arg(long)]
    pub sha256: bool,
    /// Replace an existing manifest.
    #[arg(long)]
    pub force: bool,
    /// The runtime dir; when it is a reflink store (`wasp storage init`),
    /// the snapshot is copied into it once [paths.runtime_dir; default:
    /// /var/lib/wasp].
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// Do not place the snapshot in the store.
    #[arg(long)]
    pub no_place: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Snapshot directory to create (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Guest memory in MiB.
    #[arg(long)]
    pub mem_mib: u64,
    /// Rootfs size in MiB.
    #[arg(long)]
    pub rootfs_mib: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Record the rootfs read-only (for --strategy shared-readonly).
    #[arg(long)]
    pub rootfs_read_only: bool,
    /// Add an empty writable scratch drive of this many MiB.
    #[arg(long)]
    pub scratch_mib: Option<u64>,
    /// Record sha256 sums (for check --deep).
    #[arg(long)]
    pub sha256: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WarmMethodArg {
    Auto,
    UringRead,
    UringFadvise,
    Pread,
}

#[derive(Debug, Args)]
pub struct WarmArgs {
    /// Snapshot directory.
    pub dir: PathBuf,
    /// How to read.
    #[arg(long, value_enum, default_value = "auto")]
    pub method: WarmMethodArg,
    /// Drop the files' cached pages first, to measure a cold warm-up.
    #[arg(long)]
    pub cold: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SnapshotArgs, cfg: super::LoadConfig) -> anyhow::Result<ExitCode> {
    match a.cmd {
        SnapshotCmd::Check(a) => check(a),
        SnapshotCmd::Adopt(a) => adopt_cmd(*a, cfg),
        SnapshotCmd::Synth(a) => synth_cmd(a),
        SnapshotCmd::Warm(a) => warm_cmd(a),
        SnapshotCmd::Create(a) => super::snapshot_create::create(*a, cfg()?),
    }
}

fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    match snapshot::check(&a.dir, a.deep) {
        Ok(r) => {
            if a.json {
                super::print_json(&serde_json::json!({ "ok": true, "report": r }))?;
            } else {
                let m = &r.manifest;
                println!(
                    "ok  {}: {} {} snapshot, {} MiB memory, {} vCPU, {} drive(s), format {}",
                    a.dir.display(),
                    m.vmm,
                    m.vmm_version,
                    m.mem_mib,
                    m.vcpus,
                    m.drives.len(),
                    m.format_version
                );
                for f in &r.files {
                    println!(
                        "ok  {:14} {} ({} bytes, checksum {})",
                        f.role,
                        f.path.display(),
                        f.size,
                        f.checksum
                    );
                }
                for w in &r.warnings {
                    println!("warn  {w}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if a.json => {
            super::print_json(&serde_json::json!({
                "ok": false,
                "error": wasp::error::chain(&e),
            }))?;
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e).with_context(|| format!("snapshot {} failed the check", a.dir.display())),
    }
}

fn adopt_cmd(a: AdoptArgs, cfg: super::LoadConfig) -> anyhow::Result<ExitCode> {
    let iface = match (&a.tap, &a.guest_mac) {
        (Some(tap), Some(mac)) => Some(manifest::NetIface {
            iface_id: a.iface_id.clone(),
            host_dev_name: tap.clone(),
            guest_mac: mac.clone(),
            guest_ip: a.guest_ip.clone(),
        }),
        (Some(_), None) => anyhow::bail!(
            "--tap needs --guest-mac (the MAC the guest had when the snapshot was made)"
        ),
        (None, Some(_)) => {
            anyhow::bail!("--guest-mac needs --tap (the tap the VM was attached to)")
        }
        (None, None) => None,
    };
    let o = adopt::AdoptOptions {
        dir: a.dir.clone(),
        vmstate: a.vmstate,
        memory: a.memory,
        drives: if a.rootfs.is_empty() {
            Vec::new()
        } else {
            vec![adopt::AdoptDrive {
                drive_id: a.drive_id,
                file: a.rootfs,
                path_on_host: a.drive_path,
                read_only: a.read_only,
            }]
        },
        vmm_version: a.vmm_version,
        vcpus: a.vcpus,
        iface,
        mmds: a.mmds_version.map(|v| manifest::Mmds {
            version: v,
            ipv4_address: a.mmds_address,
        }),
        sha256: a.sha256,
        force: a.force,
    };
    let r = adopt::adopt(&o).with_context(|| format!("cannot adopt {}", a.dir.display()))?;
    let placed = if a.no_place {
        None
    } else {
        let mut cfg = cfg()?;
        cfg.runtime_dir.flag("--runtime-dir", a.runtime_dir.clone());
        super::storage::place_if_store(&a.dir, &cfg.runtime_dir.value)?
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let (Some(p), Some(obj)) = (&placed, v.as_object_mut()) {
            obj.insert("placed".into(), serde_json::to_value(p)?);
        }
        super::print_json(&v)?;
    } else {
        println!(
            "wrote {}: {} {} snapshot, {} MiB memory, {} drive(s)",
            a.dir.join(snapshot::MANIFEST_FILE).display(),
            r.manifest.vmm,
            r.manifest.vmm_version,
            r.manifest.mem_mib,
            r.manifest.drives.len()
        );
        for p in &r.made_read_only {
            println!("made read-only (0444): {} (clones share it; it must not change while any clone lives)", p.display());
        }
        if let Some(p) = &placed {
            super::storage::print_placement(p);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn synth_cmd(a: SynthArgs) -> anyhow::Result<ExitCode> {
    let start = std::time::Instant::now();
    let m = synth::synth(&synth::SynthOptions {
        out: a.out.clone(),
        mem_mib: a.mem_mib,
        rootfs_mib: a.rootfs_mib,
        vcpus: a.vcpus,
        rootfs_read_only: a.rootfs_read_only,
        scratch_mib: a.scratch_mib,
        sha256: a.sha256,
    })
    .with_context(|| format!("cannot synthesize a snapshot at {}", a.out.display()))?;
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        super::print_json(&serde_json::json!({
            "dir": a.out,
            "manifest": m,
            "seconds": secs,
            "read_only_files": true,
        }))?;
    } else {
        println!(
            "made stand-in snapshot {} in {secs:.2} s: {} MiB memory, {} MiB rootfs (recorded at {}; the spawn stage bind-mounts each clone's own rootfs there)",
            a.out.display(),
            a.mem_mib,
            a.rootfs_mib,
            snapshot::CLONE_ROOTFS_PATH
        );
        println!("base files are read-only (0444): clones map the memory file MAP_PRIVATE and share the rootfs blocks, so they must not change while any clone lives");
    }
    Ok(ExitCode::SUCCESS)
}

fn warm_cmd(a: WarmArgs) -> anyhow::Result<ExitCode> {
    let method = match a.method {
        WarmMethodArg::Auto => warm::WarmMethod::Auto,
        WarmMethodArg::UringRead => warm::WarmMethod::UringRead,
        WarmMethodArg::UringFadvise => warm::WarmMethod::UringFadvise,
        WarmMethodArg::Pread => warm::WarmMethod::Pread,
    };
    let r = warm::warm(&a.dir, method, a.cold)
        .with_context(|| format!("cannot warm {}", a.dir.display()))?;
    if a.json {
        super::print_json(&r)?;
    } else {
        let how = serde_json::to_value(r.method)?;
        match r.mib_per_s {
            Some(rate) => println!(
                "warmed {} MiB in {:.1} ms via {} ({rate:.0} MiB/s{})",
                r.bytes >> 20,
                r.seconds * 1e3,
                how.as_str().unwrap_or("?"),
                if r.dropped_first { ", cold start" } else { "" }
            ),
            None => println!(
                "asked the kernel to read ahead {} file(s) via {} ({:.2} ms to submit)",
                r.files.len(),
                how.as_str().unwrap_or("?"),
                r.seconds * 1e3
            ),
        }
        if let Some(why) = &r.fallback_reason {
            println!("note: {why}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `wasp storage init|status|remove`: the reflink store under the runtime
//! dir ([`wasp::pipeline::storage::store`] does the work).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use wasp::config::Config;
use wasp::pipeline::storage::store::{self, InitAction, InitOptions, Placement, StoreStatus};

#[derive(Debug, Args)]
pub struct StorageArgs {
    #[command(subcommand)]
    pub cmd: StorageCmd,
}

#[derive(Debug, Subcommand)]
pub enum StorageCmd {
    /// Make the runtime dir reflink-capable on any host: a sparse XFS
    /// (reflink=1) image on a loop device, mounted there. Idempotent; also
    /// re-attaches an existing image after a reboot.
    Init(InitArgs),
    /// Show the store: backing image, space used and free, clone disks and
    /// the space they share.
    Status(Common),
    /// Unmount, detach and delete the store (refused while clone disks are
    /// in it).
    Remove(Common),
}

#[derive(Debug, Args)]
pub struct Common {
    /// The runtime dir the store is mounted on [paths.runtime_dir;
    /// default: /var/lib/wasp].
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// The image file [default: <parent>/wasp-store-<name>.img beside the
    /// runtime dir].
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub common: Common,
    /// Apparent size of the image (sparse: blocks are used only as
    /// written), e.g. 64G, 500M.
    #[arg(long, default_value = "64G", value_parser = parse_size)]
    pub size: u64,
    /// A snapshot to size the store for and place in it (copied once).
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    store::parse_size(s).ok_or_else(|| format!("{s:?} is not a size (e.g. 64G, 500M, 1073741824)"))
}

pub fn run(a: StorageArgs, cfg: super::LoadConfig) -> anyhow::Result<ExitCode> {
    let runtime = |c: &Common| -> anyhow::Result<PathBuf> {
        let mut cfg: Config = cfg()?;
        cfg.runtime_dir.flag("--runtime-dir", c.runtime_dir.clone());
        Ok(cfg.runtime_dir.value.clone())
    };
    match a.cmd {
        StorageCmd::Init(a) => {
            super::require_root("storage init")?;
            let dir = runtime(&a.common)?;
            let r = store::init(&InitOptions {
                runtime_dir: dir.clone(),
                image: a.common.image.clone(),
                size: a.size,
                snapshot: a.snapshot.clone(),
            })
            .with_context(|| format!("cannot make a reflink store at {}", dir.display()))?;
            if a.common.json {
                super::print_json(&r)?;
            } else {
                println!(
                    "{}",
                    match r.action {
                        InitAction::Created => "made the reflink store",
                        InitAction::Reattached => "re-attached the existing store image",
                        InitAction::AlreadyMounted =>
                            "the store is set up already; nothing changed",
                    }
                );
                print_status(&r.status);
                if let Some(p) = &r.placed {
                    print_placement(p);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StorageCmd::Status(c) => {
            let dir = runtime(&c)?;
            let s = store::status(&dir, c.image.as_deref())
                .with_context(|| format!("cannot read the store at {}", dir.display()))?;
            if c.json {
                super::print_json(&serde_json::json!({ "store": s }))?;
            } else {
                match &s {
                    Some(s) => print_status(s),
                    None => println!(
                        "no store at {} (`wasp storage init --runtime-dir {}` makes one)",
                        dir.display(),
                        dir.display()
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StorageCmd::Remove(c) => {
            super::require_root("storage remove")?;
            let dir = runtime(&c)?;
            let r = store::remove(&dir, c.image.as_deref())
                .with_context(|| format!("cannot remove the store at {}", dir.display()))?;
            if c.json {
                super::print_json(&r)?;
            } else {
                if r.unmounted {
                    println!("unmounted {}", dir.display());
                }
                for d in &r.detached {
                    println!("detached {}", d.display());
                }
                for s in &r.snapshots_deleted {
                    println!("deleted the placed snapshot copy {}", s.display());
                }
                for f in &r.deleted {
                    println!("deleted {}", f.display());
                }
                if !r.unmounted && r.deleted.is_empty() && r.detached.is_empty() {
                    println!("no store at {}: nothing to remove", dir.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn print_status(s: &StoreStatus) {
    println!("runtime dir:   {}", s.runtime_dir.display());
    println!(
        "image:         {} ({} apparent, {} on disk)",
        s.image.display(),
        mib(s.image_size),
        mib(s.image_allocated)
    );
    match &s.loop_device {
        Some(d) if s.mounted => println!("mounted:       yes, XFS reflink=1 on {}", d.display()),
        _ => {
            println!(
                "mounted:       no (`wasp storage init --runtime-dir {}` re-attaches it)",
                s.runtime_dir.display()
            );
            return;
        }
    }
    println!(
        "space:         {} used, {} free of {}",
        mib(s.fs_used),
        mib(s.fs_free),
        mib(s.fs_size)
    );
    println!(
        "clone disks:   {} ({} as full copies)",
        s.clone_disks,
        mib(s.clone_disk_bytes)
    );
    println!(
        "shared:        {} (blocks clone disks and snapshots share)",
        mib(s.shared_bytes)
    );
    for p in &s.snapshots {
        println!("snapshot:      {}", p.display());
    }
}

/// Prints where a snapshot was placed (adopt, create, storage init).
pub fn print_placement(p: &Placement) {
    match &p.note {
        None => println!(
            "placed in the store: {} (copied {} once); spawn from there (`wasp spawn --snapshot {}`) so clone disks are reflinked",
            p.dir.display(),
            mib(p.bytes_copied),
            p.dir.display()
        ),
        Some(n) => println!("store: {n}: {}", p.dir.display()),
    }
}

/// Places a freshly adopted or created snapshot in the store of
/// `runtime_dir`, when one is mounted there.
pub fn place_if_store(snapshot: &Path, runtime_dir: &Path) -> anyhow::Result<Option<Placement>> {
    if !store::is_store(runtime_dir) {
        return Ok(None);
    }
    store::place_snapshot(snapshot, runtime_dir)
        .map(Some)
        .with_context(|| {
            format!(
                "cannot place snapshot {} in the store at {}",
                snapshot.display(),
                runtime_dir.display()
            )
        })
}

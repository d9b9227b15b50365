//! `wasp reconcile`: find what a crashed wasp left and adopt or remove it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use wasp::paths::{DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR};
use wasp::reconcile::{self, Options, Report};

use super::pool::Where;

/// The state and runtime dirs of commands that own state.
#[derive(Debug, Clone, Args)]
pub struct Dirs {
    /// Per-clone files.
    #[arg(long, default_value = DEFAULT_RUNTIME_DIR)]
    pub runtime_dir: PathBuf,
    /// Clone records (and the lock every state-owning command holds).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// `wasp reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub dirs: Dirs,
    #[command(flatten)]
    pub at: Where,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// The reconcile scope of a command.
pub fn options(dirs: &Dirs, at: Option<&Where>) -> Options {
    Options {
        state_dir: dirs.state_dir.clone(),
        runtime_dir: dirs.runtime_dir.clone(),
        tap: wasp::slot::SlotNet::default().tap,
        pool: at.map(|w| (w.net(), w.host())),
    }
}

/// Runs `wasp reconcile`.
pub fn run(a: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let rep = reconcile::reconcile(&options(&a.dirs, Some(&a.at)))?;
    if a.json {
        super::print_json(&rep)?;
    } else {
        print(&rep);
    }
    Ok(if rep.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print(r: &Report) {
    for c in &r.adopted {
        println!("adopted {} (VMM pid {}, slot {})", c.id, c.pid, c.netns);
    }
    for c in &r.removed {
        println!(
            "removed {}: {}; VMM {}",
            c.id,
            c.reason,
            c.vmm
                .map(|f| format!("{f:?}").to_lowercase())
                .unwrap_or_else(|| "not stopped".into())
        );
    }
    for o in &r.orphans_killed {
        println!(
            "killed orphan VMM pid {} (clone {}, no healthy record)",
            o.pid, o.clone_id
        );
    }
    for d in &r.dirs_removed {
        println!("removed clone files {}", d.display());
    }
    for c in &r.corrupt {
        println!(
            "moved corrupt record {} to {}: {}",
            c.path.display(),
            c.moved_to.display(),
            c.error
        );
    }
    if r.temp_removed > 0 {
        println!(
            "removed {} temp file(s) of interrupted record writes",
            r.temp_removed
        );
    }
    for e in &r.errors {
        println!("error: {e}");
    }
    println!("{}", r.summary());
}

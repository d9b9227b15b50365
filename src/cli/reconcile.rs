//! `wasp reconcile`: find what a crashed wasp left and adopt or remove it.

use std::process::ExitCode;

use clap::Args;

use wasp::config::Config;
use wasp::ops::reconcile::{self, Options, Report};

use super::args::{Dirs, Where};

/// `wasp reconcile`: without --pool, it covers every pool wasp has on
/// this host (the pool registry, [`wasp::pipeline::registry`]).
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

/// Runs `wasp reconcile`.
pub fn run(a: ReconcileArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    a.dirs.apply(&mut cfg);
    a.at.apply(&mut cfg);
    let mut o = Options::from_config(&cfg, true);
    if cfg.pool.source == wasp::config::Source::Default {
        // No pool named: every pool wasp has on this host.
        let reg = wasp::pipeline::registry::Registry::of_state_dir(&cfg.state_dir.value);
        o.pools = wasp::pipeline::slot::registered_pools(&reg, (cfg.slot_net(), cfg.host_net()));
    }
    // What killed demo and bench runs left under the runtime dir (their
    // VMMs, work dirs, host netns); their pools go with the registry's
    // orphaned pools in the reconcile below.
    super::spawn::report_leftovers(&wasp::bench::demo::reconcile_leftovers(
        &cfg.runtime_dir.value,
    ));
    let rep = reconcile::reconcile(&o)?;
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

//! Command-line parsing, one file per subcommand.

pub mod bench;
pub mod bench_clone;
mod bench_spawn;
mod doctor;
pub mod pool;
pub mod reconcile;
mod snapshot;
mod snapshot_create;
pub mod spawn;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// wasp: restore Firecracker microVM clones from one golden snapshot, fast and densely.
#[derive(Debug, Parser)]
#[command(name = "wasp", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the host and explain each failure with a fix.
    Doctor(doctor::DoctorArgs),
    /// The main job on a fresh machine: a self-contained demo on the stand-in VMM.
    Demo(spawn::DemoArgs),
    /// Restore clones from a snapshot.
    Spawn(Box<spawn::SpawnArgs>),
    /// List the clones wasp started.
    Ls(spawn::LsArgs),
    /// Stop clones (exactly the VMMs wasp started) and remove their files.
    Kill(spawn::KillArgs),
    /// Snapshot store: check, adopt, synth, warm.
    Snapshot(snapshot::SnapshotArgs),
    /// The pre-warmed pool of network slots.
    Pool(pool::PoolArgs),
    /// Find what a crashed wasp left: adopt healthy clones, remove broken
    /// ones, orphan VMMs, stray files and broken slots (also run at the
    /// start of spawn, kill, pool warm/drain).
    Reconcile(reconcile::ReconcileArgs),
    /// Measure wasp's stages.
    #[command(subcommand)]
    Bench(bench::Bench),
}

/// Logs go to stderr through tracing; `-v` raises the level, RUST_LOG wins.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor(a) => doctor::doctor(a),
        Command::Demo(a) => {
            require_root("demo")?;
            spawn::demo_cmd(a)
        }
        Command::Spawn(a) => {
            require_root("spawn")?;
            spawn::spawn_cmd(*a)
        }
        Command::Ls(a) => spawn::ls(a),
        Command::Kill(a) => {
            require_root("kill")?;
            spawn::kill(a)
        }
        Command::Snapshot(a) => snapshot::run(a),
        Command::Pool(a) => {
            require_root("pool")?;
            pool::run(a)
        }
        Command::Reconcile(a) => {
            require_root("reconcile")?;
            reconcile::run(a)
        }
        Command::Bench(b) => bench::run(b),
    }
}

/// Commands that create namespaces, links and nf_tables rules, or signal
/// VMMs, need root: say so once, clearly, before touching anything.
pub fn require_root(cmd: &str) -> anyhow::Result<()> {
    if wasp::sys::is_root() {
        return Ok(());
    }
    anyhow::bail!(
        "wasp {cmd} needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces, links and nf_tables rules and to start VMMs; run it as root (sudo), and see `wasp doctor`"
    )
}

/// Prints exactly one JSON document on stdout. A reader that went away
/// (`| head`) is not an error.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v)?;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

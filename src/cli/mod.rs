//! Command-line parsing, one file per subcommand.

mod args;
pub mod bench;
pub mod bench_clone;
mod bench_serve;
mod bench_spawn;
mod bench_tools;
mod completions;
mod config;
mod doctor;
pub mod pool;
mod progress;
pub mod reconcile;
mod remote;
pub mod serve;
mod snapshot;
mod snapshot_create;
pub mod spawn;
mod storage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wasp::config::Config;

/// wasp: restore Firecracker microVM clones from one golden snapshot, fast and densely.
#[derive(Debug, Parser)]
#[command(name = "wasp", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Config file (default: $WASP_CONFIG, else /etc/wasp/wasp.toml when it
    /// exists). Flags override it; `wasp config show` prints the result.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

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
    /// The per-host daemon: an HTTP API (unix socket, or TCP with a token)
    /// over one long-lived engine, with metrics.
    Serve(Box<serve::ServeArgs>),
    /// Snapshot store: check, adopt, synth, warm.
    Snapshot(snapshot::SnapshotArgs),
    /// The pre-warmed pool of network slots.
    Pool(pool::PoolArgs),
    /// The reflink store under the runtime dir: init, status, remove.
    Storage(storage::StorageArgs),
    /// Find what a crashed wasp left: adopt healthy clones, remove broken
    /// ones, orphan VMMs, stray files and broken slots (also run at the
    /// start of spawn, kill, snapshot create, pool warm/drain).
    Reconcile(reconcile::ReconcileArgs),
    /// Measure wasp's stages.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// The effective configuration and where each value comes from.
    Config(config::ConfigArgs),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions(completions::CompletionsArgs),
}

/// Reads the config file on demand, so commands that need none (and
/// `completions`) work even when it is broken.
pub type LoadConfig<'a> = &'a dyn Fn() -> anyhow::Result<Config>;

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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = cli.config;
    let cfg = move || Ok(Config::load(file.as_deref())?);
    match cli.command {
        Command::Doctor(a) => doctor::doctor(a, cfg()?),
        Command::Demo(a) => {
            require_root("demo")?;
            spawn::demo_cmd(a, cfg()?)
        }
        Command::Spawn(a) => {
            require_root("spawn")?;
            spawn::spawn_cmd(*a, cfg()?)
        }
        Command::Ls(a) => spawn::ls(a, cfg()?),
        Command::Kill(a) => {
            require_root("kill")?;
            spawn::kill(a, cfg()?)
        }
        Command::Serve(a) => {
            require_root("serve")?;
            serve::serve_cmd(*a, cfg()?)
        }
        Command::Snapshot(a) => snapshot::run(a, &cfg),
        Command::Pool(a) => {
            require_root("pool")?;
            pool::run(a, cfg()?)
        }
        Command::Storage(a) => storage::run(a, &cfg),
        Command::Reconcile(a) => {
            require_root("reconcile")?;
            reconcile::run(a, cfg()?)
        }
        Command::Bench(b) => bench::run(b, &cfg),
        Command::Config(a) => config::run(a, cfg()?),
        Command::Completions(a) => completions::run(a),
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
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    write_stdout(text.as_bytes())
}

/// Writes `bytes` to stdout; a reader that went away is not an error.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

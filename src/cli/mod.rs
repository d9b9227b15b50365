//! Command-line parsing, one file per subcommand.

mod bench_clone;
mod doctor;
mod snapshot;

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
    /// The main job on a fresh machine: a self-contained demo.
    Demo(doctor::DemoArgs),
    /// Snapshot store: check, adopt, synth, warm.
    Snapshot(snapshot::SnapshotArgs),
    /// Clone-storage bench (moves under `wasp bench clone` at merge).
    BenchClone(bench_clone::BenchCloneArgs),
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
        Command::Demo(a) => doctor::demo(a),
        Command::Snapshot(a) => snapshot::run(a),
        Command::BenchClone(a) => bench_clone::bench_clone(a),
    }
}

/// Prints exactly one JSON document on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

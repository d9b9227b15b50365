//! `wasp doctor`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wasp::config::Config;
use wasp::ops::doctor::{self, Status};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The firecracker binary [WASP_FIRECRACKER, then paths.firecracker;
    /// default: PATH].
    #[arg(long)]
    pub firecracker: Option<PathBuf>,
    /// Runtime directory whose filesystem holds clone disks
    /// [paths.runtime_dir; default: /var/lib/wasp].
    #[arg(long)]
    pub runtime_dir: Option<PathBuf>,
    /// A snapshot: say how many bytes each of its clones' disks copy in
    /// the runtime dir.
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
    /// Also check every host limit (pids, threads, fds, namespaces, ARP,
    /// conntrack, the CIDR, the layout, memory) for N clones of the
    /// configured pool.
    #[arg(long, value_name = "N")]
    pub clones: Option<u64>,
}

pub fn doctor(a: DoctorArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    cfg.firecracker
        .flag("--firecracker", a.firecracker.map(Some));
    cfg.runtime_dir.flag("--runtime-dir", a.runtime_dir);
    let report = doctor::run(&doctor::Options {
        firecracker: cfg.firecracker_choice(),
        jailer: cfg.jailer_choice(),
        runtime_dir: cfg.runtime_dir.value.clone(),
        snapshot: a.snapshot,
        clones: a.clones.map(|n| {
            let net = cfg.slot_net();
            wasp::pipeline::limits::Demand::clones(n, &net.cidr).with_layout(&net)
        }),
    });
    if a.json {
        super::print_json(&report)?;
    } else {
        print_table(&report);
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_table(report: &doctor::Report) {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &report.checks {
        let s = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        println!("{s}  {:width$}  {}", c.name, c.detail);
    }
    let fails = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .count();
    let warns = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Warn)
        .count();
    println!(
        "\n{} checks: {fails} failed, {warns} warnings",
        report.checks.len()
    );
}

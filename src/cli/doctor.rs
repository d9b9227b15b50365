//! `wasp doctor` and, until the spawn pipeline lands, `wasp demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wasp::doctor::{self, Status};
use wasp::paths::DEFAULT_RUNTIME_DIR;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The firecracker binary (default: WASP_FIRECRACKER, then PATH).
    #[arg(long)]
    pub firecracker: Option<PathBuf>,
    /// Runtime directory whose filesystem holds clone disks.
    #[arg(long, default_value = DEFAULT_RUNTIME_DIR)]
    pub runtime_dir: PathBuf,
}

pub fn doctor(a: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = doctor::run(&doctor::Options {
        firecracker: a.firecracker,
        runtime_dir: a.runtime_dir,
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

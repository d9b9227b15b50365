//! `wasp config show`: the effective configuration and each value's source.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use wasp::config::Config;

use super::args::Where;
use super::spawn::SpawnFlags;

/// `wasp config ...`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub cmd: ConfigCmd,
}

/// Config subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print every setting, its effective value and its source (default,
    /// the config file, an environment variable, or a flag given here).
    Show {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        flags: SpawnFlags,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `wasp config`.
pub fn run(a: ConfigArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    let ConfigCmd::Show { at, flags, json } = a.cmd;
    at.apply(&mut cfg);
    flags.apply(&mut cfg);
    let problem = cfg
        .slot_net()
        .validate()
        .err()
        .map(|e| wasp::error::chain(&e));
    let entries = cfg.entries();
    if json {
        super::print_json(&serde_json::json!({
            "file": cfg.file,
            "entries": entries,
            "problem": problem,
        }))?;
    } else {
        match &cfg.file {
            Some(f) => println!("config file: {}", f.display()),
            None => println!(
                "config file: none ({} does not exist and neither --config nor {} names one)",
                wasp::config::DEFAULT_CONFIG_PATH,
                wasp::config::CONFIG_ENV
            ),
        }
        let w = entries.iter().map(|e| e.key.len()).max().unwrap_or(0);
        let shown: Vec<String> = entries
            .iter()
            .map(|e| {
                let v = match &e.value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".into(),
                    v => v.to_string(),
                };
                match e.note {
                    Some(n) => format!("{v} ({n})"),
                    None => v,
                }
            })
            .collect();
        let vw = shown.iter().map(String::len).max().unwrap_or(0);
        for (e, v) in entries.iter().zip(&shown) {
            println!("{:w$}  {v:vw$}  {}", e.key, e.source);
        }
        if let Some(p) = &problem {
            println!("\nunusable: {p}");
        }
    }
    Ok(if problem.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

//! The `wasp-guest-env` binary: parse, run, print the error chain.

use std::process::ExitCode;

use wasp_guest_env::cli::{parse, Invocation, USAGE};
use wasp_guest_env::mmds::chain;

fn main() -> ExitCode {
    let inv = match parse(std::env::args_os().skip(1), |k| std::env::var_os(k)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("wasp-guest-env: {e}\nTry --help.");
            return ExitCode::from(2);
        }
    };
    let (config, action) = match inv {
        Invocation::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Invocation::Version => {
            println!("wasp-guest-env {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Invocation::Run { config, action } => (config, action),
    };
    let mut log = |m: &str| eprintln!("wasp-guest-env: {m}");
    match wasp_guest_env::run(&config, &action, &mut log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasp-guest-env: error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

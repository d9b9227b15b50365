//! The `wasp` command: parses arguments, calls the library, prints results
//! and the error chain. Exit codes: 0 success, 1 runtime failure, 2 usage.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!(": caused by {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}

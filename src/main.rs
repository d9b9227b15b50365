//! The `wasp` command: parses arguments, calls the library, prints results
//! and the error chain. Exit codes: 0 success, 1 runtime failure, 2 usage.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Run as the stand-in VMM when invoked under that name (see
    // `wasp::standin::cli`).
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name()
        == Some(std::ffi::OsStr::new(wasp::standin::STANDIN_NAME))
    {
        return wasp::standin::cli::main(std::env::args().skip(1));
    }
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
    // The daemon logs one line per request: info unless -v asks for more.
    let daemon = matches!(args.command, cli::Command::Serve(_));
    cli::init_logging(if daemon {
        args.verbose.max(1)
    } else {
        args.verbose
    });
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", wasp::error::chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

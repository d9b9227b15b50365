//! The stand-in's command line, shared by the `wasp-standin` binary and by
//! `wasp` itself when it runs under the name `wasp-standin` (busybox style,
//! so `cargo run -- demo` needs no second binary build).

use std::path::PathBuf;
use std::process::ExitCode;

use super::{server, Faults, FAULT_ENV, VERSION_LINE};

const USAGE: &str = "usage: wasp-standin --api-sock PATH [--id ID] [--log-path FILE] [--level L] [--fault SPEC]\n\
  a stand-in VMM speaking Firecracker's API subset; it is not Firecracker\n\
  --fault / WASP_STANDIN_FAULT: comma-separated exit-on-load, no-socket, load-400, hang-on-resume, no-guest, slow-load=MS";

/// The stand-in's command line; `args` excludes argv[0].
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let mut args = args;
    let mut sock: Option<PathBuf> = None;
    let mut id = "anonymous-instance".to_owned();
    let mut faults = Faults::default();
    if let Some(spec) = std::env::var_os(FAULT_ENV) {
        if let Err(e) = faults.add_spec(&spec.to_string_lossy()) {
            eprintln!("wasp-standin (stand-in): {FAULT_ENV}: {e}");
            return ExitCode::from(2);
        }
    }
    while let Some(a) = args.next() {
        let mut value = |flag: &str| match args.next() {
            Some(v) => Ok(v),
            None => Err(format!("{flag} needs a value\n{USAGE}")),
        };
        let r = match a.as_str() {
            "--version" | "-V" => {
                println!("{VERSION_LINE}");
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{VERSION_LINE}\n{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--api-sock" => value("--api-sock").map(|v| sock = Some(v.into())),
            "--id" => value("--id").map(|v| id = v),
            // Firecracker's logger flags, so a launcher can pass the same.
            "--log-path" => value("--log-path").and_then(|v| {
                super::host::set_log_path(std::path::Path::new(&v))
                    .map_err(|e| format!("--log-path {v}: {e}; create the file or fifo first"))
            }),
            "--level" => value("--level").map(drop),
            "--fault" => value("--fault")
                .and_then(|v| faults.add_spec(&v).map_err(|e| format!("--fault: {e}"))),
            other => Err(format!("unknown argument {other:?}\n{USAGE}")),
        };
        if let Err(msg) = r {
            eprintln!("wasp-standin (stand-in): {msg}");
            return ExitCode::from(2);
        }
    }
    let Some(api_sock) = sock else {
        eprintln!("wasp-standin (stand-in): --api-sock PATH is required\n{USAGE}");
        return ExitCode::from(2);
    };
    match server::run(server::Options {
        api_sock,
        id,
        faults,
    }) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("{}", crate::error::chain_with(&e, ": "));
            ExitCode::from(1)
        }
    }
}

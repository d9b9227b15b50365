//! `wasp-standin`: the stand-in VMM (not Firecracker). See `wasp::standin`.
//!
//! Usage: `wasp-standin --api-sock PATH [--id ID] [--fault SPEC]`,
//! `wasp-standin --version`. Faults also come from `WASP_STANDIN_FAULT`.

fn main() -> std::process::ExitCode {
    wasp::standin::cli::main(std::env::args().skip(1))
}

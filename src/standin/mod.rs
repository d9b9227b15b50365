//! The stand-in VMM: a separate binary (`wasp-standin`) that speaks
//! Firecracker's API on a unix socket for the subset wasp uses, and is
//! honest that it is a stand-in (`--version`, `GET /` and every log line say
//! so). It is chosen only by `--vmm standin` or by the demo, never as a
//! silent fallback.
//!
//! - [`http`]: the pure request parser and response encoder;
//! - [`api`]: routing, bodies and the VM state machine behind a [`api::Host`]
//!   trait;
//! - [`host`]: the real host side (files, taps, MAP_PRIVATE memory, the
//!   userspace guest);
//! - [`server`]: the single-threaded blocking accept loop;
//! - [`guestnet`]: the userspace TCP/IP guest (smoltcp) on a tap;
//! - [`vmstate`]: the stand-in's snapshot state file;
//! - [`testguest`]: the built-in idle x86-64 guest real Firecracker boots
//!   in tests.
//!
//! May use: `sys`, `vmm` (the API's wire types), `snapshot`, the leaves.

pub mod agent;
pub mod api;
pub mod cli;
pub mod guestnet;
pub mod host;
pub mod http;
pub mod server;
pub mod testguest;
pub mod vmstate;

use thiserror::Error;

/// `wasp-standin --version`.
pub const VERSION_LINE: &str = concat!(
    "wasp-standin v",
    env!("CARGO_PKG_VERSION"),
    " (stand-in VMM, not Firecracker)"
);

/// Environment variable holding fault-injection specs (same syntax as
/// `--fault`).
pub const FAULT_ENV: &str = "WASP_STANDIN_FAULT";

/// The stand-in's executable name. `wasp` runs as the stand-in when
/// invoked under this name.
pub const STANDIN_NAME: &str = "wasp-standin";

/// Finds a stand-in executable: `WASP_STANDIN`, else `wasp-standin` beside
/// the running binary, else a `wasp-standin` symlink to the running binary
/// made in `link_dir` (the same code, clearly named).
pub fn locate(link_dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("WASP_STANDIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    if let Some(dir) = exe.parent() {
        let sib = dir.join(STANDIN_NAME);
        if sib.is_file() {
            return Ok(sib);
        }
    }
    std::fs::create_dir_all(link_dir)?;
    let link = link_dir.join(STANDIN_NAME);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&exe, &link)?;
    Ok(link)
}

/// Injected faults, for the reliability tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// `exit-on-load`: exit(1) as soon as a load starts, without answering.
    pub exit_on_load: bool,
    /// `no-socket`: never create the API socket (the process stays up).
    pub no_socket: bool,
    /// `load-400`: answer 400 to the load (then exit 1, as Firecracker does
    /// after any failed load).
    pub load_400: bool,
    /// `hang-on-resume`: never answer `PATCH /vm Resumed` (or a load with
    /// `resume_vm`).
    pub hang_on_resume: bool,
    /// `slow-load=MS`: delay each load by MS milliseconds.
    pub slow_load_ms: Option<u64>,
    /// `no-guest`: resume answers as usual, but the userspace guest never
    /// starts, so a clone is never ready (nothing answers on its network).
    pub no_guest: bool,
}

/// A fault spec that was not understood.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown fault {0:?}: use a comma-separated list of exit-on-load, no-socket, load-400, hang-on-resume, no-guest, slow-load=MS")]
pub struct FaultSpecError(pub String);

impl Faults {
    /// Adds the faults in `spec` (comma-separated).
    pub fn add_spec(&mut self, spec: &str) -> Result<(), FaultSpecError> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "exit-on-load" => self.exit_on_load = true,
                "no-socket" => self.no_socket = true,
                "load-400" => self.load_400 = true,
                "hang-on-resume" => self.hang_on_resume = true,
                "no-guest" => self.no_guest = true,
                other => match other.strip_prefix("slow-load=").map(str::parse::<u64>) {
                    Some(Ok(ms)) => self.slow_load_ms = Some(ms),
                    _ => return Err(FaultSpecError(other.to_owned())),
                },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse() {
        let mut f = Faults::default();
        f.add_spec("exit-on-load, slow-load=25,hang-on-resume")
            .unwrap();
        assert!(f.exit_on_load && f.hang_on_resume && !f.load_400 && !f.no_guest);
        f.add_spec("no-guest").unwrap();
        assert!(f.no_guest);
        assert_eq!(f.slow_load_ms, Some(25));
        assert!(f.add_spec("slow-load=x").is_err());
        assert_eq!(f.add_spec("explode"), Err(FaultSpecError("explode".into())));
        assert!(VERSION_LINE.contains("stand-in"));
    }
}

//! `wasp-guest-env`: runs inside a wasp clone, fetches the clone's
//! environment from Firecracker's MMDS V2 (a fresh session token, bounded
//! retries while the store is empty) and hands it to the agent, either as a
//! mode-0600 `export K='V'` file or by exec'ing the agent with it set.
//!
//! Kept small for the guest image: std networking, a tiny HTTP/1.1 client,
//! `httparse` and `serde_json`; no async runtime. See docs/guest-env.md.

#![forbid(unsafe_code)]

pub mod cli;
pub mod deliver;
pub mod env;
pub mod http;
pub mod mmds;

use thiserror::Error;

/// Anything that stops a run.
#[derive(Debug, Error)]
pub enum Error {
    /// Fetching failed.
    #[error(transparent)]
    Fetch(#[from] mmds::FetchError),
    /// Delivering failed.
    #[error(transparent)]
    Deliver(#[from] deliver::DeliverError),
}

/// Fetches the environment and delivers it as `action` says. Progress goes
/// to `log` (never a value). For [`cli::Action::Exec`] this returns only on
/// failure.
pub fn run(
    config: &mmds::Config,
    action: &cli::Action,
    log: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    let env = mmds::fetch(config, &mut std::thread::sleep, log)?;
    match action {
        cli::Action::Write { out } => {
            deliver::write_env_file(out, &env)?;
            log(&format!(
                "wrote {} variables to {} ({})",
                env.len(),
                out.display(),
                env.keys().collect::<Vec<_>>().join(" ")
            ));
            Ok(())
        }
        cli::Action::Exec { program, args } => Err(deliver::exec(program, args, &env).into()),
    }
}

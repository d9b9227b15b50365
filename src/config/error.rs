//! Why the configuration could not be loaded: one error per mistake, each
//! naming the file (and, from the file's parser, the line and the key).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use thiserror::Error;

use super::{Source, MAX_FILE_BYTES};
use crate::pipeline::slot::SlotError;

/// Why the configuration could not be loaded. Every variant names the file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read (an explicitly named file must exist).
    #[error("cannot read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is too large to be a config file.
    #[error("the config file {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A key wasp does not know.
    #[error("config file {path}{}: unknown key `{key}` ({expected})", at_line(*.line))]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// Dotted key, e.g. `pool.cidrr`.
        key: String,
        /// The keys allowed there.
        expected: String,
    },
    /// A key whose value is not usable.
    #[error("config file {path}{}: `{key}`: {reason}", at_line(*.line))]
    BadValue {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// Dotted key, e.g. `spawn.parallel`.
        key: String,
        /// What is wrong and how to write it.
        reason: String,
    },
    /// Not TOML.
    #[error("config file {path}{} is not valid TOML: {message}", at_line(*.line))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// The snapshot's guest has another address than `guest.guest_ip`.
    #[error("the snapshot's guest has address {snapshot} (network_interfaces[0].guest_ip in its manifest), but guest.guest_ip is {configured} ({from}); set guest.guest_ip = \"{snapshot}\" and the tap addressing the guest was booted with, or use a snapshot made with this config")]
    GuestMismatch {
        /// What the manifest records.
        snapshot: String,
        /// The effective setting.
        configured: Ipv4Addr,
        /// Where the setting came from.
        from: Source,
    },
    /// Each value parses, but together they make no usable network.
    #[error("config file {path} describes an unusable slot network")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: SlotError,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

//! Replies: status codes and the `fault_message` texts, taken from the real
//! Firecracker 1.12.1 and held to it byte for byte by `tests/conformance.rs`.
//! Also how a request body is parsed (a failure is Firecracker's
//! deserialization fault) and what the server does after a reply.

use std::io;

use serde::Deserialize;
use serde_json::Value;

/// `vmm_version` reported by `GET /`: the Firecracker API version it speaks,
/// marked as a stand-in.
pub const VMM_VERSION: &str = "1.12.1-standin";
/// `app_name` reported by `GET /`.
pub const APP_NAME: &str = "wasp-standin (stand-in VMM, not Firecracker)";

/// What the server does after sending a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Keep serving.
    Continue,
    /// Close this connection (Firecracker does so after a bad method).
    Close,
    /// Exit the process with this code (Firecracker exits after a failed
    /// load: "the process is too dirty to recover").
    Exit(i32),
    /// Exit at once without answering (the `exit-on-load` fault).
    ExitSilently(i32),
    /// Never answer (the `hang-on-resume` fault).
    Hang,
}

/// A reply to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<Vec<u8>>,
    /// What happens next.
    pub after: After,
}

impl Reply {
    pub(super) fn no_content() -> Self {
        Reply {
            status: 204,
            body: None,
            after: After::Continue,
        }
    }
    /// Serializes a struct in its field order.
    pub(super) fn json_of<T: serde::Serialize>(v: &T) -> Self {
        Reply {
            status: 200,
            body: Some(serde_json::to_vec(v).expect("json")),
            after: After::Continue,
        }
    }
    pub(super) fn json(v: &Value) -> Self {
        Reply {
            status: 200,
            body: Some(serde_json::to_vec(v).expect("json")),
            after: After::Continue,
        }
    }
    /// A 400 with Firecracker's `{"fault_message": ...}` body.
    pub fn fault(msg: impl Into<String>) -> Self {
        let body = serde_json::json!({ "fault_message": msg.into() });
        Reply {
            status: 400,
            body: Some(serde_json::to_vec(&body).expect("json")),
            after: After::Continue,
        }
    }
    pub(super) fn then(mut self, after: After) -> Self {
        self.after = after;
        self
    }
}

pub(super) const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";
pub(super) const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
/// Firecracker's default MMDS data store limit, in bytes.
pub const MMDS_LIMIT: usize = 51_200;
pub(super) const MMDS_NOT_INIT: &str = "MMDS error: The MMDS data store is not initialized.";
pub(super) const LOAD_PREFIX: &str = "Load snapshot error: Failed to restore from snapshot: ";

/// An I/O error as Firecracker prints it. Firecracker is a static musl
/// binary, and musl words a few errno texts differently from glibc.
pub fn fc_io(e: &io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(libc::EBUSY) => "Resource busy",
        Some(libc::ENOMEM) => "Out of memory",
        Some(libc::ENOTSUP) => "Not supported",
        _ => return e.to_string(),
    };
    format!("{text} (os error {})", e.raw_os_error().unwrap_or(0))
}

pub(super) fn deser_err(e: serde_json::Error) -> Reply {
    Reply::fault(format!(
        "An error occurred when deserializing the json body of a request: {e}."
    ))
}

pub(super) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(deser_err)
}

//! A minimal blocking HTTP/1.1 client for Firecracker's API socket, and the
//! request/response bodies wasp uses (shared with the stand-in VMM's server).
//!
//! Wire format: `METHOD /path HTTP/1.1`, `Host: localhost`, JSON bodies with
//! `Content-Length`. Firecracker answers 2xx on success and 4xx/5xx with
//! `{"fault_message": "..."}`, which becomes [`ApiError::Fault`]. Bodies are
//! taken from Firecracker's `src/firecracker/swagger/firecracker.yaml` and
//! checked against v1.12.1 on this machine (see `tests/conformance.rs`).
//!
//! [`parse_response`] is a pure function over bytes so a fuzz target and an
//! io_uring driver can reuse it. Request and response bodies are never logged
//! or put into errors: MMDS bodies carry secrets.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Response framing (crate `wasp-http1`) is shared with the guest binary
/// (`wasp-guest-env`), which reads MMDS with the same parser.
pub use wasp_http1::{parse_response, ParseError, Response, MAX_BODY, MAX_HEAD};

/// Largest request body Firecracker accepts (its default payload limit).
/// Larger bodies are refused here: Firecracker would answer 400 after the
/// head and then parse the rest of the body as garbage requests.
pub const MAX_REQUEST_BODY: usize = 51_200;
/// Default read/write timeout; a Full snapshot of a large guest takes a while.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// HTTP methods Firecracker's API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

impl Method {
    /// The token on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// Encodes one request. A body gets `Content-Type: application/json`.
pub fn encode_request(method: Method, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.map_or(0, <[u8]>::len));
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b"Content-Type: application/json\r\n");
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
        out.extend_from_slice(b);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Errors of an API call.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Connecting to the socket failed.
    #[error("cannot connect to the VMM API socket {path}; is the VMM running?")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("{method} {uri} on {path}: socket I/O failed (did the VMM exit?)")]
    Io {
        /// Method.
        method: &'static str,
        /// Request path.
        uri: String,
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The VMM closed the connection before a full response.
    #[error("{method} {uri} on {path}: the VMM closed the connection without a full answer (it may have exited)")]
    Closed {
        /// Method.
        method: &'static str,
        /// Request path.
        uri: String,
        /// Socket path.
        path: PathBuf,
    },
    /// The response bytes were malformed.
    #[error("{method} {uri}: bad response from the VMM")]
    Parse {
        /// Method.
        method: &'static str,
        /// Request path.
        uri: String,
        /// Cause.
        #[source]
        source: ParseError,
    },
    /// The VMM refused the request with `{"fault_message": ...}`.
    #[error("{method} {uri}: the VMM answered {status}: {fault_message}")]
    Fault {
        /// Method.
        method: &'static str,
        /// Request path.
        uri: String,
        /// HTTP status.
        status: u16,
        /// Firecracker's `fault_message` (or the raw body when absent).
        fault_message: String,
    },
    /// The request body is over Firecracker's payload limit.
    #[error("{method} {uri}: the request body is {len} bytes, over the VMM's {MAX_REQUEST_BODY}-byte limit; send less (MMDS data is limited to the same size)")]
    BodyTooLarge {
        /// Method.
        method: &'static str,
        /// Request path.
        uri: String,
        /// Body length.
        len: usize,
    },
    /// Internal: a kept-alive connection turned out closed before any
    /// answer byte (mapped to a retry or [`ApiError::Closed`]; never
    /// returned by [`Client::raw`]).
    #[error("stale keep-alive connection")]
    Stale,
    /// A 2xx body was not the expected JSON.
    #[error("{method} {uri}: the VMM's answer is not the expected JSON")]
    Decode {
        /// Method.
        method: &'static str,
        /// Request path.
        uri: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl ApiError {
    /// The HTTP status and fault message, for a [`ApiError::Fault`].
    pub fn fault(&self) -> Option<(u16, &str)> {
        match self {
            ApiError::Fault {
                status,
                fault_message,
                ..
            } => Some((*status, fault_message)),
            _ => None,
        }
    }
}

/// `{"fault_message": ...}`, Firecracker's error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The message.
    pub fault_message: String,
}

/// The fault message of an error body; falls back to the raw body text.
pub fn fault_message_of(body: &[u8]) -> String {
    match serde_json::from_slice::<Fault>(body) {
        Ok(f) => f.fault_message,
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Instance id.
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
    /// VMM version (`1.12.1`, or one containing `standin`).
    pub vmm_version: String,
    /// `Firecracker` (or the stand-in's name).
    pub app_name: String,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs.
    pub vcpu_count: u8,
    /// Memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty page tracking (for Diff snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel (an ELF for x86-64).
    pub kernel_image_path: String,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Drive id (must match the path).
    pub drive_id: String,
    /// Backing file.
    pub path_on_host: String,
    /// The root device.
    pub is_root_device: bool,
    /// Read-only.
    pub is_read_only: bool,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Interface id (must match the path).
    pub iface_id: String,
    /// Host tap name.
    pub host_dev_name: String,
    /// Guest MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// `PUT /mmds/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmdsConfig {
    /// `V1` or `V2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Interfaces that forward MMDS traffic.
    pub network_interfaces: Vec<String>,
    /// MMDS address (default 169.254.169.254).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
}

/// `PATCH /vm` states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    /// Pause the vCPUs.
    Paused,
    /// Run them again.
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// Target state.
    pub state: VmRunState,
}

/// Snapshot kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// The whole memory.
    Full,
    /// Pages dirtied since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// Full or Diff (Firecracker's default is Full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
    /// Where the vmstate goes.
    pub snapshot_path: String,
    /// Where the memory goes.
    pub mem_file_path: String,
}

/// Memory backends on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    /// Map the file MAP_PRIVATE.
    File,
    /// Hand a userfaultfd to the process listening on `backend_path`.
    Uffd,
}

/// `mem_backend` of a load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// File or Uffd.
    pub backend_type: BackendType,
    /// Memory file, or the uffd handler's socket.
    pub backend_path: String,
}

/// One `network_overrides` entry (Firecracker >= 1.12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// Interface id recorded in the snapshot.
    pub iface_id: String,
    /// Tap to open instead of the recorded one.
    pub host_dev_name: String,
}

/// `PUT /snapshot/load` as wasp sends it. Firecracker 1.12.1 names dirty
/// page tracking `enable_diff_snapshots` on load (it refuses
/// `track_dirty_pages` there as an unknown field), so the field is renamed
/// on the wire and omitted when false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotLoad {
    /// The vmstate file.
    pub snapshot_path: String,
    /// The memory backend.
    pub mem_backend: MemBackend,
    /// Resume right after loading.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resume_vm: bool,
    /// Tap renames.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    /// Track dirty pages after load.
    #[serde(
        rename = "enable_diff_snapshots",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub track_dirty_pages: bool,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// `InstanceStart`, `FlushMetrics` or `SendCtrlAltDel`.
    pub action_type: ActionType,
}

/// Action kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Flush metrics.
    FlushMetrics,
    /// Boot.
    InstanceStart,
    /// Ctrl-Alt-Del to the guest.
    SendCtrlAltDel,
}

/// A client on one API socket. It keeps one connection open across calls
/// (Firecracker's server supports persistent connections) and reconnects
/// once if the VMM closed it between calls.
pub struct Client {
    path: PathBuf,
    stream: Option<UnixStream>,
    timeout: Duration,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("path", &self.path).finish()
    }
}

impl Client {
    /// Connects to the API socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ApiError> {
        let mut c = Self {
            path: path.to_owned(),
            stream: None,
            timeout: DEFAULT_TIMEOUT,
            buf: Vec::new(),
        };
        c.stream = Some(c.open()?);
        Ok(c)
    }

    /// Changes the read/write timeout for later calls.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
        if let Some(s) = &self.stream {
            let _ = s.set_read_timeout(Some(t));
            let _ = s.set_write_timeout(Some(t));
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<UnixStream, ApiError> {
        let s = UnixStream::connect(&self.path).map_err(|source| ApiError::Connect {
            path: self.path.clone(),
            source,
        })?;
        let _ = s.set_read_timeout(Some(self.timeout));
        let _ = s.set_write_timeout(Some(self.timeout));
        Ok(s)
    }

    /// Sends one request and reads its response, whatever the status. If
    /// the VMM had closed a kept-alive connection since the last call (the
    /// write fails, or EOF comes before any answer byte), it reconnects and
    /// sends once more.
    pub fn raw(
        &mut self,
        method: Method,
        uri: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ApiError> {
        if let Some(b) = body.filter(|b| b.len() > MAX_REQUEST_BODY) {
            return Err(ApiError::BodyTooLarge {
                method: method.as_str(),
                uri: uri.to_owned(),
                len: b.len(),
            });
        }
        let reused = self.stream.is_some();
        match self.raw_once(method, uri, body) {
            Err(ApiError::Stale) if reused => {
                self.stream = None;
                match self.raw_once(method, uri, body) {
                    Err(ApiError::Stale) => Err(ApiError::Closed {
                        method: method.as_str(),
                        uri: uri.to_owned(),
                        path: self.path.clone(),
                    }),
                    r => r,
                }
            }
            Err(ApiError::Stale) => Err(ApiError::Closed {
                method: method.as_str(),
                uri: uri.to_owned(),
                path: self.path.clone(),
            }),
            r => r,
        }
    }

    fn raw_once(
        &mut self,
        method: Method,
        uri: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ApiError> {
        let req = encode_request(method, uri, body);
        let io_err = |source| ApiError::Io {
            method: method.as_str(),
            uri: uri.to_owned(),
            path: self.path.clone(),
            source,
        };
        let stream = match self.stream.take() {
            Some(s) => s,
            None => self.open()?,
        };
        let mut stream = stream;
        self.buf.clear();
        if let Err(e) = stream.write_all(&req) {
            return Err(match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ApiError::Stale,
                _ => io_err(e),
            });
        }
        let mut chunk = [0u8; 4096];
        loop {
            match parse_response(&self.buf) {
                Ok(Some((resp, _used))) => {
                    self.stream = Some(stream);
                    return Ok(resp);
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(ApiError::Parse {
                        method: method.as_str(),
                        uri: uri.to_owned(),
                        source,
                    })
                }
            }
            let n = match stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset && self.buf.is_empty() => {
                    return Err(ApiError::Stale)
                }
                Err(e) => return Err(io_err(e)),
            };
            if n == 0 && self.buf.is_empty() {
                return Err(ApiError::Stale);
            }
            if n == 0 {
                return Err(ApiError::Closed {
                    method: method.as_str(),
                    uri: uri.to_owned(),
                    path: self.path.clone(),
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a request and maps a 4xx/5xx answer to [`ApiError::Fault`].
    pub fn call(
        &mut self,
        method: Method,
        uri: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ApiError> {
        let r = self.raw(method, uri, body)?;
        if r.status >= 300 {
            return Err(ApiError::Fault {
                method: method.as_str(),
                uri: uri.to_owned(),
                status: r.status,
                fault_message: fault_message_of(&r.body),
            });
        }
        Ok(r)
    }

    fn send<T: Serialize>(&mut self, method: Method, uri: &str, body: &T) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(body).expect("API bodies serialize");
        self.call(method, uri, Some(&bytes)).map(drop)
    }

    fn get_json<T: serde::de::DeserializeOwned>(&mut self, uri: &str) -> Result<T, ApiError> {
        let r = self.call(Method::Get, uri, None)?;
        serde_json::from_slice(&r.body).map_err(|source| ApiError::Decode {
            method: "GET",
            uri: uri.to_owned(),
            source,
        })
    }

    /// `GET /`.
    pub fn get_instance_info(&mut self) -> Result<InstanceInfo, ApiError> {
        self.get_json("/")
    }

    /// `PUT /machine-config`.
    pub fn put_machine_config(&mut self, c: &MachineConfig) -> Result<(), ApiError> {
        self.send(Method::Put, "/machine-config", c)
    }

    /// `PUT /boot-source`.
    pub fn put_boot_source(&mut self, b: &BootSource) -> Result<(), ApiError> {
        self.send(Method::Put, "/boot-source", b)
    }

    /// `PUT /drives/{drive_id}`.
    pub fn put_drive(&mut self, d: &Drive) -> Result<(), ApiError> {
        self.send(Method::Put, &format!("/drives/{}", d.drive_id), d)
    }

    /// `PUT /network-interfaces/{iface_id}`.
    pub fn put_network_interface(&mut self, n: &NetworkInterface) -> Result<(), ApiError> {
        self.send(
            Method::Put,
            &format!("/network-interfaces/{}", n.iface_id),
            n,
        )
    }

    /// `PUT /mmds/config`.
    pub fn put_mmds_config(&mut self, c: &MmdsConfig) -> Result<(), ApiError> {
        self.send(Method::Put, "/mmds/config", c)
    }

    /// `PUT /actions {"action_type":"InstanceStart"}`.
    pub fn instance_start(&mut self) -> Result<(), ApiError> {
        self.send(
            Method::Put,
            "/actions",
            &Action {
                action_type: ActionType::InstanceStart,
            },
        )
    }

    /// `PATCH /vm {"state": ...}`.
    pub fn patch_vm(&mut self, state: VmRunState) -> Result<(), ApiError> {
        self.send(Method::Patch, "/vm", &Vm { state })
    }

    /// `PUT /snapshot/create`.
    pub fn snapshot_create(&mut self, s: &SnapshotCreate) -> Result<(), ApiError> {
        self.send(Method::Put, "/snapshot/create", s)
    }

    /// `PUT /snapshot/load`.
    pub fn snapshot_load(&mut self, s: &SnapshotLoad) -> Result<(), ApiError> {
        self.send(Method::Put, "/snapshot/load", s)
    }

    /// `PUT /mmds` with a JSON document (replaces the store).
    pub fn put_mmds(&mut self, data: &serde_json::Value) -> Result<(), ApiError> {
        self.send(Method::Put, "/mmds", data)
    }

    /// `PATCH /mmds` (JSON merge patch).
    pub fn patch_mmds(&mut self, data: &serde_json::Value) -> Result<(), ApiError> {
        self.send(Method::Patch, "/mmds", data)
    }

    /// `GET /mmds`.
    pub fn get_mmds(&mut self) -> Result<serde_json::Value, ApiError> {
        self.get_json("/mmds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_request_with_length_and_host() {
        let r = encode_request(Method::Put, "/vm", Some(b"{}"));
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("PUT /vm HTTP/1.1\r\n"));
        assert!(s.contains("Host: localhost\r\n"));
        assert!(s.contains("Content-Length: 2\r\n\r\n{}"));
        let g = String::from_utf8(encode_request(Method::Get, "/", None)).unwrap();
        assert!(g.ends_with("\r\n\r\n") && !g.contains("Content-Length"));
    }

    #[test]
    fn parses_partial_then_complete_and_reports_consumed() {
        let full = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"fault_message\":\"x\"}\nHTTP/1.1 204";
        for cut in 0..(full.len() - 12) {
            let r = parse_response(&full[..cut]).unwrap();
            assert!(r.is_none(), "cut {cut}");
        }
        let (resp, used) = parse_response(full).unwrap().unwrap();
        assert_eq!(resp.status, 400);
        assert_eq!(used, full.len() - 12);
        assert_eq!(fault_message_of(&resp.body), "x");
    }

    #[test]
    fn no_content_204_needs_no_length() {
        let (r, n) = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.len(), n), (204, 0, 27));
    }

    #[test]
    fn rejects_bad_responses() {
        assert!(matches!(
            parse_response(b"garbage\r\n\r\n"),
            Err(ParseError::Head(_))
        ));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"),
            Err(ParseError::BodyTooLarge(99_999_999))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ParseError::TransferEncoding)
        );
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse_response(&big), Err(ParseError::HeadTooLarge));
    }

    #[test]
    fn load_body_matches_firecracker_1_12_names() {
        let l = SnapshotLoad {
            snapshot_path: "/s".into(),
            mem_backend: MemBackend {
                backend_type: BackendType::File,
                backend_path: "/m".into(),
            },
            resume_vm: false,
            network_overrides: vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "wasp-t1".into(),
            }],
            track_dirty_pages: true,
        };
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "snapshot_path": "/s",
                "mem_backend": {"backend_type": "File", "backend_path": "/m"},
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "wasp-t1"}],
                "enable_diff_snapshots": true
            })
        );
    }

    #[test]
    fn response_debug_hides_body() {
        let r = Response {
            status: 200,
            body: b"SECRET".to_vec(),
        };
        assert!(!format!("{r:?}").contains("SECRET"));
    }
}

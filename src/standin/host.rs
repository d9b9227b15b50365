//! The real host side of the stand-in: files, taps, guest memory and the
//! userspace guest.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use std::sync::{Arc, Mutex};

use super::agent;
use super::api::{GuestMem, GuestParams, Host, MemLoadError, RunningGuest};
use crate::standin::guestnet::{GuestNet, GuestNetConfig, Outbound};
use crate::standin::vmstate::{VmState, VmStateError};
use crate::sys::mem::GuestMapping;
use crate::sys::uffd_mem::Userfault;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

static LOG_FILE: std::sync::OnceLock<File> = std::sync::OnceLock::new();

/// Sends later log lines to `path` (Firecracker's `--log-path`: an existing
/// file or fifo, appended to) instead of stderr.
pub fn set_log_path(path: &Path) -> io::Result<()> {
    let f = OpenOptions::new().append(true).open(path)?;
    let _ = LOG_FILE.set(f);
    Ok(())
}

/// Writes one log line, marked as the stand-in's, to the log file or stderr.
pub fn log_line(id: &str, msg: &str) {
    // One write per line, so lines never interleave with other output.
    let line = format!("[{id}:wasp-standin] stand-in: {msg}\n");
    let _ = match LOG_FILE.get() {
        Some(mut f) => f.write_all(line.as_bytes()),
        None => io::stderr().lock().write_all(line.as_bytes()),
    };
}

/// The real host.
#[derive(Debug)]
pub struct RealHost {
    id: String,
}

impl RealHost {
    /// A host logging under instance id `id`.
    pub fn new(id: &str) -> Self {
        Self { id: id.to_owned() }
    }
}

impl Host for RealHost {
    fn read_kernel(&mut self, path: &str) -> io::Result<Vec<u8>> {
        let f = File::open(path)?;
        // An ELF test guest is tiny; read at most what fits a small guest.
        let mut v = Vec::new();
        use std::io::Read;
        f.take(64 << 20).read_to_end(&mut v)?;
        Ok(v)
    }

    fn open_drive(&mut self, path: &str, read_only: bool) -> io::Result<OwnedFd> {
        let f = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Ok(f.into())
    }

    fn open_tap(&mut self, name: &str) -> io::Result<OwnedFd> {
        // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, as Firecracker opens its taps.
        crate::sys::tap::open_tap(name, true)
    }

    fn anon_memory(&mut self, len: usize) -> io::Result<Box<dyn GuestMem>> {
        Ok(Box::new(GuestMapping::anon(len)?))
    }

    fn file_memory(&mut self, path: &str, len: usize) -> Result<Box<dyn GuestMem>, MemLoadError> {
        let f = File::open(path).map_err(MemLoadError::Open)?;
        let size = f.metadata().map_err(MemLoadError::Open)?.len();
        if size < len as u64 {
            return Err(MemLoadError::TooSmall);
        }
        Ok(Box::new(
            GuestMapping::file_private(&f, len).map_err(MemLoadError::Map)?,
        ))
    }

    fn uffd_memory(&mut self, socket: &str, len: usize) -> Result<Box<dyn GuestMem>, MemLoadError> {
        // As Firecracker: connect to the handler, map anonymous memory,
        // register it with a new userfaultfd, and send the region list with
        // the userfaultfd attached (SCM_RIGHTS).
        let stream = UnixStream::connect(socket).map_err(MemLoadError::UffdConnect)?;
        let setup = || -> io::Result<UffdMem> {
            let map = GuestMapping::anon(len)?;
            let uffd = Userfault::new()?;
            uffd.register_missing(&map)?;
            let page = crate::sys::mem::page_size();
            // Firecracker 1.12.1 sends `page_size_kib` with the size in
            // bytes too (seen on this machine); handlers read either.
            let msg = serde_json::json!([{
                "base_host_virt_addr": map.as_slice().as_ptr() as u64,
                "size": len,
                "offset": 0,
                "page_size": page,
                "page_size_kib": page,
            }]);
            let body = serde_json::to_vec(&msg).expect("json");
            let fds = [uffd.as_fd().as_raw_fd()];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[IoSlice::new(&body)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )?;
            Ok(UffdMem {
                map,
                _uffd: uffd,
                _stream: stream,
            })
        };
        Ok(Box::new(setup().map_err(MemLoadError::UffdSetup)?))
    }

    fn read_vmstate(&mut self, path: &str) -> Result<VmState, VmStateError> {
        VmState::read(Path::new(path))
    }

    fn write_file(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)?;
        f.sync_data()
    }

    fn start_guest(&mut self, tap: OwnedFd, p: GuestParams) -> io::Result<Box<dyn RunningGuest>> {
        start_userspace_guest(tap, p, &self.id)
    }

    fn delay_ms(&mut self, ms: u64) {
        // Fault injection only: this *is* the slowness being injected.
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }

    fn log(&mut self, msg: &str) {
        log_line(&self.id, msg);
    }
}

/// Guest memory served by an external page-fault handler.
struct UffdMem {
    map: GuestMapping,
    _uffd: Userfault,
    _stream: UnixStream,
}

impl GuestMem for UffdMem {
    fn bytes(&self) -> &[u8] {
        self.map.as_slice()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.map.as_mut_slice()
    }
}

struct Running(GuestNet);

impl RunningGuest for Running {
    fn stop(self: Box<Self>) -> io::Result<()> {
        self.0.stop()
    }
}

/// Starts the smoltcp guest on the tap: ICMP echo, TCP on the readiness
/// port, the agent endpoint (built from the live MMDS store, never echoing a
/// value), and one poll of `API_URL` when MMDS names one.
fn start_userspace_guest(
    tap: OwnedFd,
    p: GuestParams,
    id: &str,
) -> io::Result<Box<dyn RunningGuest>> {
    let lock = |m: &Mutex<Option<serde_json::Value>>| {
        m.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    };
    let mmds = Arc::clone(&p.mmds);
    let agent_body: Arc<dyn Fn() -> Vec<u8> + Send + Sync> =
        Arc::new(move || agent::agent_body(lock(&mmds).as_ref()));
    let outbound = agent::poll_request(lock(&p.mmds).as_ref()).map(|(to, request)| {
        let id = id.to_owned();
        Outbound {
            to,
            request,
            on_response: Box::new(move |r: io::Result<Vec<u8>>| match r {
                Ok(b) => log_line(
                    &id,
                    &format!("agent poll of {to} answered ({} bytes)", b.len()),
                ),
                Err(e) => log_line(&id, &format!("agent poll of {to} failed: {e}")),
            }),
        }
    });
    let net = GuestNet::start(
        tap,
        GuestNetConfig {
            addr: p.addr,
            agent_body,
            outbound,
        },
    )?;
    log_line(
        id,
        &format!(
            "userspace guest up at {}/{} (ready port {}, agent port {})",
            p.addr.ip, p.addr.prefix_len, p.addr.ready_port, p.addr.agent_port
        ),
    );
    Ok(Box::new(Running(net)))
}

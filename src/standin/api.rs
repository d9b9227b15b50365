//! The stand-in's API: routing, request bodies, and the VM state machine,
//! following Firecracker 1.12.1's rules and messages.
//!
//! Everything that touches the host (files, taps, memory, the userspace
//! guest) goes through the [`Host`] trait, so the state machine is tested
//! without root against a recording fake. Status codes and `fault_message`
//! texts were taken from the real Firecracker 1.12.1 on this machine; the
//! conformance suite (`tests/conformance.rs`) runs the same calls against
//! both and fails on any divergence.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::Value;

use super::http::Request;
use super::Faults;
use crate::standin::vmstate::{DriveState, GuestState, MmdsState, NetState, VmState, VmStateError};
use crate::vmm::api::{
    Action, ActionType, BackendType, MemBackend, NetworkOverride, SnapshotCreate, SnapshotType, Vm,
    VmRunState,
};

/// `vmm_version` reported by `GET /`: the Firecracker API version it speaks,
/// marked as a stand-in.
pub const VMM_VERSION: &str = "1.12.1-standin";
/// `app_name` reported by `GET /`.
pub const APP_NAME: &str = "wasp-standin (stand-in VMM, not Firecracker)";

/// Guest memory as the state machine sees it.
pub trait GuestMem: Send {
    /// The bytes.
    fn bytes(&self) -> &[u8];
    /// The bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl GuestMem for crate::sys::mem::GuestMapping {
    fn bytes(&self) -> &[u8] {
        self.as_slice()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl GuestMem for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// A running userspace guest.
pub trait RunningGuest: Send {
    /// Stops it (on pause).
    fn stop(self: Box<Self>) -> io::Result<()>;
}

/// What the userspace guest needs to run.
#[derive(Clone)]
pub struct GuestParams {
    /// Addressing and service ports.
    pub addr: crate::standin::guestnet::GuestIface,
    /// The MMDS data store (shared: the agent reads it live).
    pub mmds: Arc<Mutex<Option<Value>>>,
}

/// Why guest memory could not be set up on load.
#[derive(Debug)]
pub enum MemLoadError {
    /// The memory file could not be opened.
    Open(io::Error),
    /// The memory file is shorter than the guest.
    TooSmall,
    /// Mapping failed.
    Map(io::Error),
    /// The Uffd handler socket could not be reached.
    UffdConnect(io::Error),
    /// Setting up or handing over the userfaultfd failed.
    UffdSetup(io::Error),
    /// The Uffd backend is not available (test fakes).
    UffdUnsupported,
}

/// The stand-in's side effects.
pub trait Host {
    /// Reads the kernel image (Firecracker opens it at `PUT /boot-source`).
    fn read_kernel(&mut self, path: &str) -> io::Result<Vec<u8>>;
    /// Opens a drive's backing file.
    fn open_drive(&mut self, path: &str, read_only: bool) -> io::Result<OwnedFd>;
    /// Opens (as root: creates if missing) the tap `name` with TUNSETIFF.
    fn open_tap(&mut self, name: &str) -> io::Result<OwnedFd>;
    /// Fresh zeroed guest memory for a boot.
    fn anon_memory(&mut self, len: usize) -> io::Result<Box<dyn GuestMem>>;
    /// The File backend: checks the size, maps MAP_PRIVATE.
    fn file_memory(&mut self, path: &str, len: usize) -> Result<Box<dyn GuestMem>, MemLoadError>;
    /// The Uffd backend.
    fn uffd_memory(&mut self, socket: &str, len: usize) -> Result<Box<dyn GuestMem>, MemLoadError>;
    /// Reads a stand-in vmstate.
    fn read_vmstate(&mut self, path: &str) -> Result<VmState, VmStateError>;
    /// Writes a snapshot file (memory or vmstate), replacing it.
    fn write_file(&mut self, path: &str, data: &[u8]) -> io::Result<()>;
    /// Starts the userspace guest on `tap`.
    fn start_guest(&mut self, tap: OwnedFd, p: GuestParams) -> io::Result<Box<dyn RunningGuest>>;
    /// Waits `ms` milliseconds (the `slow-load` fault only).
    fn delay_ms(&mut self, ms: u64);
    /// One log line (the server prefixes "stand-in").
    fn log(&mut self, msg: &str);
}

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
    fn no_content() -> Self {
        Reply {
            status: 204,
            body: None,
            after: After::Continue,
        }
    }
    /// Serializes a struct in its field order.
    fn json_of<T: serde::Serialize>(v: &T) -> Self {
        Reply {
            status: 200,
            body: Some(serde_json::to_vec(v).expect("json")),
            after: After::Continue,
        }
    }
    fn json(v: &Value) -> Self {
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
    fn then(mut self, after: After) -> Self {
        self.after = after;
        self
    }
}

const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";
const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
/// Firecracker's default MMDS data store limit, in bytes.
pub const MMDS_LIMIT: usize = 51_200;
const MMDS_NOT_INIT: &str = "MMDS error: The MMDS data store is not initialized.";
const LOAD_PREFIX: &str = "Load snapshot error: Failed to restore from snapshot: ";

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

fn deser_err(e: serde_json::Error) -> Reply {
    Reply::fault(format!(
        "An error occurred when deserializing the json body of a request: {e}."
    ))
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(deser_err)
}

// Request bodies with Firecracker 1.12.1's field lists (order matters: serde
// names the expected fields in this order in "unknown field" errors).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineConfigWire {
    vcpu_count: u8,
    mem_size_mib: u64,
    #[serde(default)]
    smt: bool,
    #[serde(default)]
    #[allow(dead_code)]
    cpu_template: Option<Value>,
    #[serde(default)]
    track_dirty_pages: bool,
    #[serde(default)]
    #[allow(dead_code)]
    huge_pages: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootSourceWire {
    kernel_image_path: String,
    #[serde(default)]
    #[allow(dead_code)]
    initrd_path: Option<String>,
    #[serde(default)]
    boot_args: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct DriveWire {
    drive_id: String,
    #[serde(default)]
    partuuid: Option<String>,
    is_root_device: bool,
    #[serde(default)]
    cache_type: Option<Value>,
    #[serde(default)]
    is_read_only: Option<bool>,
    #[serde(default)]
    path_on_host: Option<String>,
    #[serde(default)]
    rate_limiter: Option<Value>,
    #[serde(default)]
    io_engine: Option<Value>,
    #[serde(default)]
    socket: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct NetWire {
    iface_id: String,
    host_dev_name: String,
    #[serde(default)]
    guest_mac: Option<String>,
    #[serde(default)]
    rx_rate_limiter: Option<Value>,
    #[serde(default)]
    tx_rate_limiter: Option<Value>,
}

#[derive(Deserialize)]
enum MmdsVersionWire {
    V1,
    V2,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MmdsConfigWire {
    #[serde(default)]
    version: Option<MmdsVersionWire>,
    network_interfaces: Vec<String>,
    #[serde(default)]
    ipv4_address: Option<Ipv4Addr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadWire {
    snapshot_path: String,
    #[serde(default)]
    mem_file_path: Option<String>,
    #[serde(default)]
    mem_backend: Option<MemBackend>,
    #[serde(default)]
    enable_diff_snapshots: bool,
    #[serde(default)]
    resume_vm: bool,
    #[serde(default)]
    network_overrides: Vec<NetworkOverride>,
}

struct MachineCfg {
    vcpu_count: u8,
    mem_size_mib: u64,
    smt: bool,
    track_dirty_pages: bool,
}

enum Phase {
    PreBoot,
    Started,
}

/// The stand-in VM.
pub struct Vmm<H: Host> {
    host: H,
    id: String,
    faults: Faults,
    phase: Phase,
    /// A boot-specific config call was made (load is then refused).
    boot_path: bool,
    paused: bool,
    machine: MachineCfg,
    kernel: Option<Vec<u8>>,
    boot_args: Option<String>,
    drives: Vec<(DriveState, OwnedFd)>,
    nets: Vec<(NetState, OwnedFd)>,
    mmds_config: Option<MmdsState>,
    mmds: Arc<Mutex<Option<Value>>>,
    mem: Option<Box<dyn GuestMem>>,
    guest: GuestState,
    running: Option<Box<dyn RunningGuest>>,
    resumes: u64,
}

/// The guest behaviour a booted (not loaded) stand-in VM records in its
/// snapshots: wasp's slot defaults, overridable from the kernel command line
/// (`ip=CLIENT::GW:NETMASK`, `wasp.ready_port=`, `wasp.agent_port=`,
/// `wasp.dirty=`).
pub fn guest_from_boot_args(args: Option<&str>) -> GuestState {
    let mut g = GuestState {
        ip: crate::paths::DEFAULT_GUEST_IP.to_string(),
        prefix_len: crate::paths::DEFAULT_TAP_PREFIX,
        gateway: crate::paths::DEFAULT_TAP_IP.to_string(),
        ready_port: 22,
        agent_port: 8080,
        dirty_fraction: 0.01,
    };
    for word in args.unwrap_or("").split_whitespace() {
        if let Some(v) = word.strip_prefix("ip=") {
            let f: Vec<&str> = v.split(':').collect();
            if let Some(ip) = f.first().and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                g.ip = ip.to_string();
            }
            if let Some(gw) = f.get(2).and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                g.gateway = gw.to_string();
            }
            if let Some(mask) = f.get(3).and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                g.prefix_len = u32::from(mask).count_ones() as u8;
            }
        } else if let Some(v) = word.strip_prefix("wasp.ready_port=") {
            g.ready_port = v.parse().unwrap_or(g.ready_port);
        } else if let Some(v) = word.strip_prefix("wasp.agent_port=") {
            g.agent_port = v.parse().unwrap_or(g.agent_port);
        } else if let Some(v) = word.strip_prefix("wasp.dirty=") {
            g.dirty_fraction = v
                .parse::<f64>()
                .ok()
                .filter(|f| (0.0..=1.0).contains(f))
                .unwrap_or(g.dirty_fraction);
        }
    }
    g
}

pub use crate::snapshot::manifest::parse_mac;

/// Writes one byte in `ceil(pages * fraction)` pages spread evenly over
/// `mem`, so that many pages become private (anonymous) copies. Returns the
/// number of pages written.
pub fn dirty_fraction(mem: &mut [u8], page: usize, fraction: f64, salt: u8) -> usize {
    let pages = mem.len() / page;
    if pages == 0 || fraction <= 0.0 {
        return 0;
    }
    let n = ((pages as f64 * fraction.min(1.0)).ceil() as usize).clamp(1, pages);
    let stride = pages / n;
    for i in 0..n {
        let off = i * stride * page + page - 1;
        mem[off] = mem[off].wrapping_add(salt.max(1));
    }
    n
}

/// A JSON merge patch (RFC 7396), as Firecracker's `PATCH /mmds` applies.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl<H: Host> Vmm<H> {
    /// A fresh VMM (nothing configured).
    pub fn new(host: H, id: &str, faults: Faults) -> Self {
        Self {
            host,
            id: id.to_owned(),
            faults,
            phase: Phase::PreBoot,
            boot_path: false,
            paused: false,
            machine: MachineCfg {
                vcpu_count: 1,
                mem_size_mib: 128,
                smt: false,
                track_dirty_pages: false,
            },
            kernel: None,
            boot_args: None,
            drives: Vec::new(),
            nets: Vec::new(),
            mmds_config: None,
            mmds: Arc::new(Mutex::new(None)),
            mem: None,
            guest: guest_from_boot_args(None),
            running: None,
            resumes: 0,
        }
    }

    /// The host (tests inspect their fake through it).
    pub fn host(&self) -> &H {
        &self.host
    }

    fn started(&self) -> bool {
        matches!(self.phase, Phase::Started)
    }

    /// Handles one request.
    pub fn handle(&mut self, req: &Request) -> Reply {
        let method = req.method.as_str();
        if !matches!(method, "GET" | "PUT" | "PATCH") {
            // Firecracker's HTTP layer answers this one without the
            // fault_message envelope and drops the connection.
            return Reply {
                status: 400,
                body: Some(
                    b"{ \"error\": \"Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered requests will be dropped.\" }".to_vec(),
                ),
                after: After::Close,
            };
        }
        let path = req.path.split('?').next().unwrap_or("");
        let path = path.strip_prefix('/').unwrap_or(path).trim_end_matches('/');
        let body = &req.body[..];
        if method != "GET" && body.is_empty() {
            return Reply::fault(format!("Empty {method} request."));
        }
        let (head, id) = match path.split_once('/') {
            Some((h, rest)) => (h, Some(rest)),
            None => (path, None),
        };
        match (method, head, id) {
            ("GET", "", None) => self.instance_info(),
            ("GET", "version", None) => {
                Reply::json(&serde_json::json!({ "firecracker_version": VMM_VERSION }))
            }
            ("GET", "machine-config", None) => {
                // A struct keeps Firecracker's key order (json! sorts keys).
                #[derive(serde::Serialize)]
                struct Out {
                    vcpu_count: u8,
                    mem_size_mib: u64,
                    smt: bool,
                    track_dirty_pages: bool,
                    huge_pages: &'static str,
                }
                let out = Out {
                    vcpu_count: self.machine.vcpu_count,
                    mem_size_mib: self.machine.mem_size_mib,
                    smt: self.machine.smt,
                    track_dirty_pages: self.machine.track_dirty_pages,
                    huge_pages: "None",
                };
                Reply::json_of(&out)
            }
            ("GET", "mmds", None) => {
                let d = self.mmds.lock().expect("mmds lock").clone();
                Reply::json(&d.unwrap_or_else(|| serde_json::json!({})))
            }
            ("PUT", "mmds", None) => match serde_json::from_slice::<Value>(body) {
                Ok(v) => {
                    *self.mmds.lock().expect("mmds lock") = Some(v);
                    Reply::no_content()
                }
                Err(e) => deser_err(e),
            },
            ("PATCH", "mmds", None) => match serde_json::from_slice::<Value>(body) {
                Ok(v) => {
                    let mut g = self.mmds.lock().expect("mmds lock");
                    match g.as_mut() {
                        Some(d) => {
                            let mut patched = d.clone();
                            merge_patch(&mut patched, &v);
                            let size = serde_json::to_vec(&patched).map_or(0, |b| b.len());
                            if size > MMDS_LIMIT {
                                let mut r = Reply::fault("MMDS limit exceeded error: The MMDS patch request doesn't fit.");
                                r.status = 413;
                                return r;
                            }
                            *d = patched;
                            Reply::no_content()
                        }
                        None => Reply::fault(MMDS_NOT_INIT),
                    }
                }
                Err(e) => deser_err(e),
            },
            ("PUT", "machine-config", None) => match parse::<MachineConfigWire>(body) {
                Ok(c) => self.put_machine_config(c),
                Err(r) => r,
            },
            ("PUT", "boot-source", None) => match parse::<BootSourceWire>(body) {
                Ok(b) => self.put_boot_source(b),
                Err(r) => r,
            },
            ("PUT", "drives", Some(id)) => match parse::<DriveWire>(body) {
                Ok(d) if d.drive_id != id => {
                    Reply::fault("The id from the path does not match the id from the body!")
                }
                Ok(d) => self.put_drive(d),
                Err(r) => r,
            },
            ("PUT", "network-interfaces", Some(id)) => match parse::<NetWire>(body) {
                Ok(n) if n.iface_id != id => Reply::fault(format!(
                    "The id from the path [{id}] does not match the id from the body [{}]!",
                    n.iface_id
                )),
                Ok(n) => self.put_net(n),
                Err(r) => r,
            },
            ("PUT", "mmds", Some("config")) => match parse::<MmdsConfigWire>(body) {
                Ok(c) => self.put_mmds_config(c),
                Err(r) => r,
            },
            ("PUT", "actions", None) => match parse::<Action>(body) {
                Ok(a) => self.action(a.action_type),
                Err(r) => r,
            },
            ("PATCH", "vm", None) => match parse::<Vm>(body) {
                Ok(v) => self.patch_vm(v.state),
                Err(r) => r,
            },
            ("PUT", "snapshot", Some("create")) => match parse::<SnapshotCreate>(body) {
                Ok(s) => self.snapshot_create(s),
                Err(r) => r,
            },
            ("PUT", "snapshot", Some("load")) => match parse::<LoadWire>(body) {
                Ok(l) => self.snapshot_load(l),
                Err(r) => r,
            },
            _ => Reply::fault(format!(
                "Invalid request method and/or path: {method} {path}."
            )),
        }
    }

    fn instance_info(&self) -> Reply {
        let state = match (&self.phase, self.paused) {
            (Phase::PreBoot, _) => "Not started",
            (Phase::Started, false) => "Running",
            (Phase::Started, true) => "Paused",
        };
        Reply::json_of(&crate::vmm::api::InstanceInfo {
            id: self.id.clone(),
            state: state.to_owned(),
            vmm_version: VMM_VERSION.to_owned(),
            app_name: APP_NAME.to_owned(),
        })
    }

    fn put_machine_config(&mut self, c: MachineConfigWire) -> Reply {
        if self.started() {
            return Reply::fault(NOT_AFTER_START);
        }
        self.boot_path = true;
        if c.vcpu_count == 0
            || c.vcpu_count > 32
            || (c.smt && c.vcpu_count > 1 && c.vcpu_count % 2 == 1)
        {
            return Reply::fault("Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.");
        }
        if c.mem_size_mib == 0 {
            return Reply::fault("Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.");
        }
        self.machine = MachineCfg {
            vcpu_count: c.vcpu_count,
            mem_size_mib: c.mem_size_mib,
            smt: c.smt,
            track_dirty_pages: c.track_dirty_pages,
        };
        Reply::no_content()
    }

    fn put_boot_source(&mut self, b: BootSourceWire) -> Reply {
        if self.started() {
            return Reply::fault(NOT_AFTER_START);
        }
        self.boot_path = true;
        match self.host.read_kernel(&b.kernel_image_path) {
            Ok(k) => {
                self.kernel = Some(k);
                self.boot_args = b.boot_args;
                Reply::no_content()
            }
            Err(e) => Reply::fault(format!(
                "Boot source error: The kernel file cannot be opened: {}",
                fc_io(&e)
            )),
        }
    }

    fn put_drive(&mut self, d: DriveWire) -> Reply {
        if self.started() {
            return Reply::fault(NOT_AFTER_START);
        }
        self.boot_path = true;
        let Some(path) = d.path_on_host else {
            return Reply::fault(
                "Drive config error: Unable to create the virtio block device: Invalid block config.",
            );
        };
        let ro = d.is_read_only.unwrap_or(false);
        match self.host.open_drive(&path, ro) {
            Ok(fd) => {
                self.drives.retain(|(s, _)| s.drive_id != d.drive_id);
                self.drives.push((
                    DriveState {
                        drive_id: d.drive_id,
                        path_on_host: path,
                        is_read_only: ro,
                        is_root_device: d.is_root_device,
                    },
                    fd,
                ));
                Reply::no_content()
            }
            Err(e) => Reply::fault(format!("Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: {} {path}", fc_io(&e))),
        }
    }

    fn put_net(&mut self, n: NetWire) -> Reply {
        if self.started() {
            return Reply::fault(NOT_AFTER_START);
        }
        self.boot_path = true;
        let mac = match n.guest_mac.as_deref() {
            Some(m) => match parse_mac(m) {
                Some(_) => m.to_owned(),
                None => {
                    return deser_err(serde::de::Error::custom(format!(
                        "invalid MAC address {m:?}"
                    )))
                }
            },
            None => crate::paths::GUEST_MAC.to_owned(),
        };
        // Replacing an interface closes its old tap first.
        self.nets.retain(|(s, _)| s.iface_id != n.iface_id);
        match self.host.open_tap(&n.host_dev_name) {
            Ok(fd) => {
                self.nets.push((
                    NetState {
                        iface_id: n.iface_id,
                        host_dev_name: n.host_dev_name,
                        guest_mac: mac,
                    },
                    fd,
                ));
                Reply::no_content()
            }
            Err(e) => Reply::fault(format!("Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: {}. Invalid TUN/TAP Backend provided by {}. Check our documentation on setting up the network devices.", fc_io(&e), n.host_dev_name)),
        }
    }

    fn put_mmds_config(&mut self, c: MmdsConfigWire) -> Reply {
        if self.started() {
            return Reply::fault(NOT_AFTER_START);
        }
        self.boot_path = true;
        if c.network_interfaces.is_empty() {
            return Reply::fault("MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.");
        }
        if !c
            .network_interfaces
            .iter()
            .all(|i| self.nets.iter().any(|(s, _)| &s.iface_id == i))
        {
            return Reply::fault("MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.");
        }
        self.mmds_config = Some(MmdsState {
            version: match c.version {
                Some(MmdsVersionWire::V2) => "V2".into(),
                _ => "V1".into(),
            },
            network_interfaces: c.network_interfaces,
            ipv4_address: c
                .ipv4_address
                .unwrap_or(Ipv4Addr::new(169, 254, 169, 254))
                .to_string(),
        });
        Reply::no_content()
    }

    fn action(&mut self, a: ActionType) -> Reply {
        match (a, self.started()) {
            (ActionType::InstanceStart, true) => Reply::fault(NOT_AFTER_START),
            (ActionType::InstanceStart, false) => self.instance_start(),
            (_, false) => Reply::fault(NOT_BEFORE_START),
            (_, true) => Reply::no_content(),
        }
    }

    fn instance_start(&mut self) -> Reply {
        let Some(kernel) = self.kernel.take() else {
            return Reply::fault(
                "Start microvm error: Cannot start microvm without kernel configuration.",
            );
        };
        let len = (self.machine.mem_size_mib as usize) << 20;
        let mut mem = match self.host.anon_memory(len) {
            Ok(m) => m,
            Err(e) => {
                return Reply::fault(format!(
                    "Start microvm error: Cannot allocate guest memory: {e}"
                ))
            }
        };
        // "Load" the kernel image where an ELF guest would sit, so the memory
        // file of a snapshot carries it.
        let at = crate::standin::testguest::LOAD_ADDR as usize;
        if at + kernel.len() <= len {
            mem.bytes_mut()[at..at + kernel.len()].copy_from_slice(&kernel);
        }
        self.mem = Some(mem);
        self.guest = guest_from_boot_args(self.boot_args.as_deref());
        self.phase = Phase::Started;
        self.paused = false;
        self.host.log("InstanceStart: stand-in VM running");
        self.start_guest();
        Reply::no_content()
    }

    fn start_guest(&mut self) {
        if self.faults.no_guest {
            self.host
                .log("fault injection no-guest: the userspace guest is not started");
            return;
        }
        let Some((net, tap)) = self.nets.first() else {
            return;
        };
        let params = (|| {
            Some(GuestParams {
                addr: crate::standin::guestnet::GuestIface {
                    mac: parse_mac(&net.guest_mac)?,
                    ip: self.guest.ip.parse().ok()?,
                    prefix_len: self.guest.prefix_len,
                    gateway: self.guest.gateway.parse().ok()?,
                    ready_port: self.guest.ready_port,
                    agent_port: self.guest.agent_port,
                },
                mmds: self.mmds.clone(),
            })
        })();
        let Some(params) = params else {
            self.host
                .log("userspace guest not started: the vmstate's guest MAC/IP/gateway is invalid");
            return;
        };
        let tap = match tap.try_clone() {
            Ok(t) => t,
            Err(e) => {
                self.host
                    .log(&format!("userspace guest not started: dup tap: {e}"));
                return;
            }
        };
        match self.host.start_guest(tap, params) {
            Ok(g) => self.running = Some(g),
            Err(e) => self.host.log(&format!("userspace guest not started: {e}")),
        }
    }

    fn stop_guest(&mut self) {
        if let Some(g) = self.running.take() {
            if let Err(e) = g.stop() {
                self.host.log(&format!("stopping the userspace guest: {e}"));
            }
        }
    }

    fn patch_vm(&mut self, s: VmRunState) -> Reply {
        if !self.started() {
            return Reply::fault(NOT_BEFORE_START);
        }
        match s {
            VmRunState::Paused => {
                if !self.paused {
                    self.stop_guest();
                    self.paused = true;
                }
                Reply::no_content()
            }
            VmRunState::Resumed => {
                if self.faults.hang_on_resume {
                    self.host.log("fault injection: hanging on resume");
                    return Reply::no_content().then(After::Hang);
                }
                if self.paused {
                    self.resume();
                }
                Reply::no_content()
            }
        }
    }

    fn resume(&mut self) {
        self.paused = false;
        self.resumes += 1;
        let salt = self.resumes as u8;
        let fraction = self.guest.dirty_fraction;
        if let Some(mem) = self.mem.as_mut() {
            let n = dirty_fraction(
                mem.bytes_mut(),
                crate::sys::mem::page_size(),
                fraction,
                salt,
            );
            self.host.log(&format!(
                "resumed; dirtied {n} guest pages ({fraction} of memory)"
            ));
        }
        self.start_guest();
    }

    fn snapshot_create(&mut self, s: SnapshotCreate) -> Reply {
        if !self.started() {
            return Reply::fault(NOT_BEFORE_START);
        }
        if s.snapshot_type == Some(SnapshotType::Diff) {
            return Reply::fault(if self.machine.track_dirty_pages {
                "The requested operation is not supported: the stand-in VMM makes Full snapshots only."
            } else {
                "The requested operation is not supported: Diff snapshots are not allowed on uVMs with dirty page tracking disabled."
            });
        }
        if !self.paused {
            return Reply::fault("Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running");
        }
        let state = VmState {
            version: crate::standin::vmstate::VERSION,
            mem_size_mib: self.machine.mem_size_mib,
            vcpu_count: self.machine.vcpu_count,
            drives: self.drives.iter().map(|(d, _)| d.clone()).collect(),
            network_interfaces: self.nets.iter().map(|(n, _)| n.clone()).collect(),
            mmds: self.mmds_config.clone(),
            guest: self.guest.clone(),
        };
        let mem = self.mem.as_ref().expect("a started VM has memory");
        if let Err(e) = self.host.write_file(&s.mem_file_path, mem.bytes()) {
            return Reply::fault(format!(
                "Create snapshot error: Cannot write memory file: {e}"
            ));
        }
        if let Err(e) = self.host.write_file(&s.snapshot_path, &state.to_bytes()) {
            return Reply::fault(format!(
                "Create snapshot error: Cannot save the microVM state: {e}"
            ));
        }
        self.host
            .log("snapshot created (Full, stand-in vmstate format)");
        Reply::no_content()
    }

    fn snapshot_load(&mut self, l: LoadWire) -> Reply {
        if self.started() {
            return Reply::fault(NOT_AFTER_START);
        }
        let backend = match (l.mem_backend, l.mem_file_path) {
            (Some(b), None) => b,
            (None, Some(p)) => MemBackend {
                backend_type: BackendType::File,
                backend_path: p,
            },
            (None, None) => return Reply::fault("An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required."),
            (Some(_), Some(_)) => return Reply::fault("An error occurred when deserializing the json body of a request: too many fields: either `mem_backend` or `mem_file_path` exclusively is required."),
        };
        if self.boot_path {
            return Reply::fault("Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.");
        }
        if self.faults.exit_on_load {
            self.host.log("fault injection: exiting during load");
            return Reply::no_content().then(After::ExitSilently(1));
        }
        if let Some(ms) = self.faults.slow_load_ms {
            self.host
                .log(&format!("fault injection: slowing load by {ms} ms"));
            self.host.delay_ms(ms);
        }
        // From here on a failure leaves the process unusable, as in
        // Firecracker: answer 400, then exit 1.
        let fatal = |msg: String| Reply::fault(msg).then(After::Exit(1));
        if self.faults.load_400 {
            self.host.log("fault injection: refusing load with 400");
            return fatal(format!(
                "{LOAD_PREFIX}stand-in fault injection: load refused"
            ));
        }
        let state = match self.host.read_vmstate(&l.snapshot_path) {
            Ok(s) => s,
            Err(VmStateError::Io { source, .. }) => {
                return fatal(format!(
                    "{LOAD_PREFIX}Failed to get snapshot state from file: Failed to open snapshot file: {}", fc_io(&source)
                ))
            }
            Err(e) => {
                let msg = crate::error::chain_with(&e, ": ");
                return fatal(format!(
                    "{LOAD_PREFIX}Failed to get snapshot state from file: Failed to load snapshot state from file: {msg}"
                ));
            }
        };
        for o in &l.network_overrides {
            if !state
                .network_interfaces
                .iter()
                .any(|n| n.iface_id == o.iface_id)
            {
                return fatal(format!(
                    "{LOAD_PREFIX}Failed to get snapshot state from file: Unknown Network Device."
                ));
            }
        }
        let len = (state.mem_size_mib as usize) << 20;
        let mem = match backend.backend_type {
            BackendType::File => self.host.file_memory(&backend.backend_path, len),
            BackendType::Uffd => self.host.uffd_memory(&backend.backend_path, len),
        };
        let mem = match mem {
            Ok(m) => m,
            Err(e) => {
                let detail = match e {
                    MemLoadError::Open(e) => format!("Error creating guest memory from file: Failed to load guest memory: {}", fc_io(&e)),
                    MemLoadError::TooSmall => "Error creating guest memory from file: Failed to restore guest memory: Cannot create mmap region: The specified file offset and length is greater then file length".to_owned(),
                    MemLoadError::Map(e) => format!("Error creating guest memory from file: Failed to restore guest memory: Cannot create mmap region: {}", fc_io(&e)),
                    MemLoadError::UffdConnect(e) => format!("Error creating guest memory from uffd: Failed to connect to UDS Unix stream: {}", fc_io(&e)),
                    MemLoadError::UffdSetup(e) => format!("Error creating guest memory from uffd: {}", fc_io(&e)),
                    MemLoadError::UffdUnsupported => "Error creating guest memory from uffd: not available".to_owned(),
                };
                return fatal(format!(
                    "{LOAD_PREFIX}Failed to load guest memory: {detail}"
                ));
            }
        };
        let mut drives = Vec::new();
        for d in &state.drives {
            match self.host.open_drive(&d.path_on_host, d.is_read_only) {
                Ok(fd) => drives.push((d.clone(), fd)),
                Err(e) => return fatal(format!(
                    "{LOAD_PREFIX}Failed to build microVM from snapshot: Failed to restore MMIO device: Cannot restore devices: Block: Virtio backend error: Error manipulating the backing file: {} {}",
                    fc_io(&e), d.path_on_host
                )),
            }
        }
        let mut nets = Vec::new();
        for n in &state.network_interfaces {
            let mut n = n.clone();
            if let Some(o) = l
                .network_overrides
                .iter()
                .find(|o| o.iface_id == n.iface_id)
            {
                n.host_dev_name = o.host_dev_name.clone();
            }
            match self.host.open_tap(&n.host_dev_name) {
                Ok(fd) => nets.push((n, fd)),
                Err(e) => return fatal(format!(
                    "{LOAD_PREFIX}Failed to build microVM from snapshot: Failed to restore MMIO device: Cannot restore devices: Net: Failed to create a network device: Open tap device failed: Error while creating ifreq structure: {}. Invalid TUN/TAP Backend provided by {}. Check our documentation on setting up the network devices.",
                    fc_io(&e), n.host_dev_name
                )),
            }
        }
        self.machine = MachineCfg {
            vcpu_count: state.vcpu_count,
            mem_size_mib: state.mem_size_mib,
            smt: false,
            track_dirty_pages: l.enable_diff_snapshots,
        };
        self.mem = Some(mem);
        self.drives = drives;
        self.nets = nets;
        self.mmds_config = state.mmds;
        self.guest = state.guest;
        self.phase = Phase::Started;
        self.paused = true;
        self.host
            .log("snapshot loaded (stand-in vmstate), VM paused");
        if l.resume_vm {
            if self.faults.hang_on_resume {
                self.host.log("fault injection: hanging on resume");
                return Reply::no_content().then(After::Hang);
            }
            self.resume();
        }
        Reply::no_content()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        files: HashMap<String, Vec<u8>>,
        calls: Vec<String>,
        missing_tap_ok: bool,
    }

    struct FakeGuest;
    impl RunningGuest for FakeGuest {
        fn stop(self: Box<Self>) -> io::Result<()> {
            Ok(())
        }
    }

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    impl Host for Fake {
        fn read_kernel(&mut self, path: &str) -> io::Result<Vec<u8>> {
            self.calls.push(format!("kernel {path}"));
            self.files
                .get(path)
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        }
        fn open_drive(&mut self, path: &str, ro: bool) -> io::Result<OwnedFd> {
            self.calls.push(format!("drive {path} ro={ro}"));
            if self.files.contains_key(path) {
                Ok(devnull())
            } else {
                Err(io::Error::from_raw_os_error(libc::ENOENT))
            }
        }
        fn open_tap(&mut self, name: &str) -> io::Result<OwnedFd> {
            self.calls.push(format!("tap {name}"));
            if self.missing_tap_ok {
                Ok(devnull())
            } else {
                Err(io::Error::from_raw_os_error(libc::EBUSY))
            }
        }
        fn anon_memory(&mut self, len: usize) -> io::Result<Box<dyn GuestMem>> {
            Ok(Box::new(vec![0u8; len.min(4 << 20)]))
        }
        fn file_memory(
            &mut self,
            path: &str,
            len: usize,
        ) -> Result<Box<dyn GuestMem>, MemLoadError> {
            self.calls.push(format!("mem {path}"));
            match self.files.get(path) {
                None => Err(MemLoadError::Open(io::Error::from_raw_os_error(
                    libc::ENOENT,
                ))),
                Some(f) if f.len() < len.min(4 << 20) => Err(MemLoadError::TooSmall),
                Some(f) => Ok(Box::new(f.clone())),
            }
        }
        fn uffd_memory(&mut self, _: &str, _: usize) -> Result<Box<dyn GuestMem>, MemLoadError> {
            Err(MemLoadError::UffdUnsupported)
        }
        fn read_vmstate(&mut self, path: &str) -> Result<VmState, VmStateError> {
            let b = self.files.get(path).ok_or_else(|| VmStateError::Io {
                path: path.into(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            })?;
            VmState::from_bytes(b, path)
        }
        fn write_file(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
            self.calls.push(format!("write {path}"));
            self.files.insert(path.into(), data.to_vec());
            Ok(())
        }
        fn start_guest(&mut self, _: OwnedFd, p: GuestParams) -> io::Result<Box<dyn RunningGuest>> {
            self.calls
                .push(format!("guest {} gw {}", p.addr.ip, p.addr.gateway));
            Ok(Box::new(FakeGuest))
        }
        fn delay_ms(&mut self, ms: u64) {
            self.calls.push(format!("delay {ms}"));
        }
        fn log(&mut self, _: &str) {}
    }

    fn req(m: &str, p: &str, b: &str) -> Request {
        Request {
            method: m.into(),
            path: p.into(),
            body: b.as_bytes().to_vec(),
        }
    }

    fn fault_of(r: &Reply) -> String {
        let v: Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
        v["fault_message"].as_str().unwrap().to_owned()
    }

    fn vmm() -> Vmm<Fake> {
        let mut f = Fake::default();
        f.files.insert("/k".into(), vec![0xf4; 16]);
        f.files.insert("/disk".into(), vec![]);
        f.missing_tap_ok = true;
        Vmm::new(f, "anonymous-instance", Faults::default())
    }

    #[test]
    fn preboot_rules_match_firecracker() {
        let mut v = vmm();
        let r = v.handle(&req("PATCH", "/vm", r#"{"state":"Paused"}"#));
        assert_eq!((r.status, fault_of(&r).as_str()), (400, NOT_BEFORE_START));
        let r = v.handle(&req("PATCH", "/mmds", r#"{"a":1}"#));
        assert_eq!(fault_of(&r), MMDS_NOT_INIT);
        assert_eq!(
            v.handle(&req("PUT", "/mmds", r#"{"a":{"b":1}}"#)).status,
            204
        );
        assert_eq!(
            v.handle(&req("PATCH", "/mmds", r#"{"a":{"c":2}}"#)).status,
            204
        );
        let r = v.handle(&req("GET", "/mmds", ""));
        assert_eq!(r.body.unwrap(), br#"{"a":{"b":1,"c":2}}"#);
        let r = v.handle(&req("PUT", "/machine-config", r#"{"vcpu_count":1}"#));
        assert_eq!(fault_of(&r), "An error occurred when deserializing the json body of a request: missing field `mem_size_mib` at line 1 column 16.");
        let r = v.handle(&req("PUT", "/machine-config", ""));
        assert_eq!(fault_of(&r), "Empty PUT request.");
        let r = v.handle(&req("PUT", "/nonexistent", "{}"));
        assert_eq!(
            fault_of(&r),
            "Invalid request method and/or path: PUT nonexistent."
        );
        // A failed config call still counts as "boot path": load is refused.
        let r = v.handle(&req(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":0,"mem_size_mib":128}"#,
        ));
        assert!(fault_of(&r).starts_with("Machine config error"));
        let r = v.handle(&req(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"}}"#,
        ));
        assert_eq!(fault_of(&r), "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.");
        assert_eq!(r.after, After::Continue);
        let r = v.handle(&req("DELETE", "/mmds", ""));
        assert_eq!((r.status, r.after), (400, After::Close));
    }

    #[test]
    fn boot_pause_create_then_load_in_a_fresh_vmm() {
        let mut v = vmm();
        for (p, b) in [
            ("/machine-config", r#"{"vcpu_count":1,"mem_size_mib":2}"#),
            (
                "/boot-source",
                r#"{"kernel_image_path":"/k","boot_args":"console=ttyS0 ip=10.1.2.3::10.1.2.1:255.255.255.0"}"#,
            ),
            (
                "/drives/rootfs",
                r#"{"drive_id":"rootfs","path_on_host":"/disk","is_root_device":true,"is_read_only":false}"#,
            ),
            (
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}"#,
            ),
            (
                "/mmds/config",
                r#"{"network_interfaces":["eth0"],"version":"V2"}"#,
            ),
            ("/actions", r#"{"action_type":"InstanceStart"}"#),
        ] {
            let r = v.handle(&req("PUT", p, b));
            assert_eq!(r.status, 204, "{p}: {:?}", r.body.map(String::from_utf8));
        }
        let info: Value =
            serde_json::from_slice(&v.handle(&req("GET", "/", "")).body.unwrap()).unwrap();
        assert_eq!(info["state"], "Running");
        assert!(info["vmm_version"].as_str().unwrap().contains("standin"));
        let create = r#"{"snapshot_path":"/vs","mem_file_path":"/mem"}"#;
        assert!(
            fault_of(&v.handle(&req("PUT", "/snapshot/create", create))).contains("while running")
        );
        assert_eq!(
            v.handle(&req("PATCH", "/vm", r#"{"state":"Paused"}"#))
                .status,
            204
        );
        assert_eq!(
            v.handle(&req("PUT", "/snapshot/create", create)).status,
            204
        );
        let r = v.handle(&req(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":2}"#,
        ));
        assert_eq!(fault_of(&r), NOT_AFTER_START);
        let files = v.host.files.clone();
        let st = VmState::from_bytes(&files["/vs"], "/vs").unwrap();
        assert_eq!(st.guest.ip, "10.1.2.3");
        assert_eq!(st.guest.prefix_len, 24);
        assert_eq!(st.mmds.as_ref().unwrap().version, "V2");
        assert_eq!(files["/mem"].len(), 2 << 20);

        let mut f = Fake {
            files,
            missing_tap_ok: true,
            ..Default::default()
        };
        f.calls.clear();
        let mut w = Vmm::new(f, "x", Faults::default());
        let load = r#"{"snapshot_path":"/vs","mem_backend":{"backend_type":"File","backend_path":"/mem"},"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}],"resume_vm":true}"#;
        let r = w.handle(&req("PUT", "/snapshot/load", load));
        assert_eq!(r.status, 204, "{:?}", r.body.map(String::from_utf8));
        assert_eq!(
            w.host().calls,
            [
                "mem /mem",
                "drive /disk ro=false",
                "tap tap9",
                "guest 10.1.2.3 gw 10.1.2.1"
            ]
        );
        let r = w.handle(&req("PUT", "/snapshot/load", load));
        assert_eq!(fault_of(&r), NOT_AFTER_START);
        assert_eq!(
            w.handle(&req("PUT", "/mmds", r#"{"AGENT_ID":"vm1"}"#))
                .status,
            204
        );
    }

    #[test]
    fn failed_loads_answer_then_exit() {
        let mut v = vmm();
        let r = v.handle(&req("PUT", "/snapshot/load", r#"{"snapshot_path":"/nope","mem_backend":{"backend_type":"File","backend_path":"/m"}}"#));
        assert_eq!(r.after, After::Exit(1));
        assert_eq!(fault_of(&r), "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to open snapshot file: No such file or directory (os error 2)");
        let mut v = vmm();
        let r = v.handle(&req("PUT", "/snapshot/load", r#"{"snapshot_path":"/s"}"#));
        assert_eq!((r.after, fault_of(&r).as_str()), (After::Continue, "An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required."));
        let r = v.handle(&req(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"/s","bogus":1,"mem_file_path":"/m"}"#,
        ));
        assert!(fault_of(&r).contains("unknown field `bogus`, expected one of `snapshot_path`, `mem_file_path`, `mem_backend`, `enable_diff_snapshots`, `resume_vm`, `network_overrides`"));
    }

    #[test]
    fn faults_are_injected() {
        let load =
            r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"}}"#;
        let mut v = Vmm::new(
            Fake::default(),
            "x",
            Faults {
                exit_on_load: true,
                ..Default::default()
            },
        );
        assert_eq!(
            v.handle(&req("PUT", "/snapshot/load", load)).after,
            After::ExitSilently(1)
        );
        let mut v = Vmm::new(
            Fake::default(),
            "x",
            Faults {
                load_400: true,
                slow_load_ms: Some(5),
                ..Default::default()
            },
        );
        let r = v.handle(&req("PUT", "/snapshot/load", load));
        assert_eq!((r.status, r.after), (400, After::Exit(1)));
        assert_eq!(v.host().calls, ["delay 5"]);
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut t = serde_json::json!({"a":"b","c":{"d":"e","f":"g"}});
        merge_patch(&mut t, &serde_json::json!({"a":"z","c":{"f":null}}));
        assert_eq!(t, serde_json::json!({"a":"z","c":{"d":"e"}}));
        merge_patch(&mut t, &serde_json::json!([1]));
        assert_eq!(t, serde_json::json!([1]));
    }

    #[test]
    fn dirtying_touches_the_requested_fraction() {
        let mut m = vec![0u8; 4096 * 200];
        assert_eq!(dirty_fraction(&mut m, 4096, 0.01, 1), 2);
        let touched = m.chunks(4096).filter(|p| p.iter().any(|&b| b != 0)).count();
        assert_eq!(touched, 2);
        assert_eq!(dirty_fraction(&mut m, 4096, 1.0, 1), 200);
        assert_eq!(dirty_fraction(&mut m, 4096, 0.0, 1), 0);
    }

    #[test]
    fn macs_and_boot_args_parse() {
        assert_eq!(
            parse_mac("06:00:c0:a8:f1:02"),
            Some([6, 0, 0xc0, 0xa8, 0xf1, 2])
        );
        assert_eq!(parse_mac("06:00:c0:a8:f1"), None);
        assert_eq!(parse_mac("06:00:c0:a8:f1:02:03"), None);
        let g = guest_from_boot_args(Some("wasp.ready_port=2222 wasp.dirty=0.5 wasp.dirty=7"));
        assert_eq!((g.ready_port, g.dirty_fraction), (2222, 0.5));
    }
}

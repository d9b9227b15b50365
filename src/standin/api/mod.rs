//! The stand-in's API: routing and the VM state machine, following
//! Firecracker 1.12.1's rules and messages.
//!
//! Everything that touches the host (files, taps, memory, the userspace
//! guest) goes through the [`Host`] trait, so the state machine is tested
//! without root against a recording fake. Status codes and `fault_message`
//! texts were taken from the real Firecracker 1.12.1 on this machine; the
//! conformance suite (`tests/conformance.rs`) runs the same calls against
//! both and fails on any divergence.
//!
//! - this file: the [`Vmm`] state and [`Vmm::handle`], the router;
//! - [`effects`]: the [`Host`] trait and what it hands back;
//! - [`replies`]: [`Reply`], status codes and Firecracker's fault messages;
//! - [`wire`]: request bodies with Firecracker's field lists;
//! - `configure`: the pre-boot configuration calls;
//! - `lifecycle`: start, pause/resume, the guest, snapshot create;
//! - `load`: snapshot load;
//! - [`guest`]: the modelled guest (boot args, dirtying, MMDS merge patch).

mod configure;
pub mod effects;
pub mod guest;
mod lifecycle;
mod load;
pub mod replies;
pub mod wire;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::http::Request;
use super::Faults;
use crate::standin::vmstate::{DriveState, GuestState, MmdsState, NetState};
use crate::vmm::api::{Action, SnapshotCreate, Vm};

pub use effects::{GuestMem, GuestParams, Host, MemLoadError, RunningGuest};
pub use guest::{dirty_fraction, guest_from_boot_args, merge_patch};
pub use replies::{fc_io, After, Reply, APP_NAME, MMDS_LIMIT, VMM_VERSION};

use replies::{deser_err, parse, MMDS_NOT_INIT};
use wire::{BootSourceWire, DriveWire, LoadWire, MachineConfigWire, MmdsConfigWire, NetWire};

pub use crate::snapshot::manifest::parse_mac;

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
}

#[cfg(test)]
mod tests {
    use super::replies::{NOT_AFTER_START, NOT_BEFORE_START};
    use super::*;
    use crate::standin::vmstate::{VmState, VmStateError};
    use std::collections::HashMap;
    use std::io;

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

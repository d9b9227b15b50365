//! `PUT /snapshot/load`: the memory backend, the stand-in vmstate, drives
//! and taps (with network overrides) restored, then optionally resumed. As
//! in Firecracker, a load that fails after the checks answers 400 and then
//! exits the process.

use super::effects::{Host, MemLoadError};
use super::replies::{fc_io, After, Reply, LOAD_PREFIX, NOT_AFTER_START};
use super::wire::LoadWire;
use super::{MachineCfg, Phase, Vmm};
use crate::standin::vmstate::VmStateError;
use crate::vmm::api::{BackendType, MemBackend};

impl<H: Host> Vmm<H> {
    pub(super) fn snapshot_load(&mut self, l: LoadWire) -> Reply {
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

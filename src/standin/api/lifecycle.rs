//! The running VM: `InstanceStart`, pause and resume (`PATCH /vm`), the
//! userspace guest started and stopped with them, and `PUT
//! /snapshot/create` of a paused VM.

use super::effects::{GuestParams, Host};
use super::guest::{dirty_fraction, guest_from_boot_args};
use super::replies::{After, Reply, NOT_AFTER_START, NOT_BEFORE_START};
use super::{Phase, Vmm};
use crate::snapshot::manifest::parse_mac;
use crate::standin::vmstate::VmState;
use crate::vmm::api::{ActionType, SnapshotCreate, SnapshotType, VmRunState};

impl<H: Host> Vmm<H> {
    pub(super) fn action(&mut self, a: ActionType) -> Reply {
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

    pub(super) fn patch_vm(&mut self, s: VmRunState) -> Reply {
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

    pub(super) fn resume(&mut self) {
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

    pub(super) fn snapshot_create(&mut self, s: SnapshotCreate) -> Reply {
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
}

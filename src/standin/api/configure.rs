//! Pre-boot configuration: `PUT /machine-config`, `/boot-source`,
//! `/drives/{id}`, `/network-interfaces/{id}` and `/mmds/config`. Each is
//! refused after start and marks the VM as on the boot path (a later load is
//! then refused, as in Firecracker).

use std::net::Ipv4Addr;

use super::effects::Host;
use super::replies::{deser_err, fc_io, Reply, NOT_AFTER_START};
use super::wire::{
    BootSourceWire, DriveWire, MachineConfigWire, MmdsConfigWire, MmdsVersionWire, NetWire,
};
use super::{MachineCfg, Vmm};
use crate::snapshot::manifest::parse_mac;
use crate::standin::vmstate::{DriveState, MmdsState, NetState};

impl<H: Host> Vmm<H> {
    pub(super) fn put_machine_config(&mut self, c: MachineConfigWire) -> Reply {
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

    pub(super) fn put_boot_source(&mut self, b: BootSourceWire) -> Reply {
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

    pub(super) fn put_drive(&mut self, d: DriveWire) -> Reply {
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

    pub(super) fn put_net(&mut self, n: NetWire) -> Reply {
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

    pub(super) fn put_mmds_config(&mut self, c: MmdsConfigWire) -> Reply {
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
}

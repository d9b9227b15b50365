//! Request bodies with Firecracker 1.12.1's field lists (order matters: serde
//! names the expected fields in this order in "unknown field" errors, and
//! the conformance suite compares those texts). Bodies wasp itself sends use
//! the types of `vmm::api` directly.

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_json::Value;

use crate::vmm::api::{MemBackend, NetworkOverride};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MachineConfigWire {
    pub(super) vcpu_count: u8,
    pub(super) mem_size_mib: u64,
    #[serde(default)]
    pub(super) smt: bool,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) cpu_template: Option<Value>,
    #[serde(default)]
    pub(super) track_dirty_pages: bool,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) huge_pages: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BootSourceWire {
    pub(super) kernel_image_path: String,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) initrd_path: Option<String>,
    #[serde(default)]
    pub(super) boot_args: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct DriveWire {
    pub(super) drive_id: String,
    #[serde(default)]
    pub(super) partuuid: Option<String>,
    pub(super) is_root_device: bool,
    #[serde(default)]
    pub(super) cache_type: Option<Value>,
    #[serde(default)]
    pub(super) is_read_only: Option<bool>,
    #[serde(default)]
    pub(super) path_on_host: Option<String>,
    #[serde(default)]
    pub(super) rate_limiter: Option<Value>,
    #[serde(default)]
    pub(super) io_engine: Option<Value>,
    #[serde(default)]
    pub(super) socket: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct NetWire {
    pub(super) iface_id: String,
    pub(super) host_dev_name: String,
    #[serde(default)]
    pub(super) guest_mac: Option<String>,
    #[serde(default)]
    pub(super) rx_rate_limiter: Option<Value>,
    #[serde(default)]
    pub(super) tx_rate_limiter: Option<Value>,
}

#[derive(Deserialize)]
pub(super) enum MmdsVersionWire {
    V1,
    V2,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MmdsConfigWire {
    #[serde(default)]
    pub(super) version: Option<MmdsVersionWire>,
    pub(super) network_interfaces: Vec<String>,
    #[serde(default)]
    pub(super) ipv4_address: Option<Ipv4Addr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoadWire {
    pub(super) snapshot_path: String,
    #[serde(default)]
    pub(super) mem_file_path: Option<String>,
    #[serde(default)]
    pub(super) mem_backend: Option<MemBackend>,
    #[serde(default)]
    pub(super) enable_diff_snapshots: bool,
    #[serde(default)]
    pub(super) resume_vm: bool,
    #[serde(default)]
    pub(super) network_overrides: Vec<NetworkOverride>,
}

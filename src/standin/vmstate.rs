//! The stand-in VMM's vmstate file: what `PUT /snapshot/load` needs to bring
//! a stand-in "VM" back, written by the stand-in's `PUT /snapshot/create` and
//! by `wasp snapshot synth`.
//!
//! Real Firecracker's vmstate is its own versioned binary format; wasp never
//! parses it. This format is JSON behind a fixed magic line, size-limited and
//! validated before any field is trusted (as Firecracker checks magic,
//! version and CRC).

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// First line of every stand-in vmstate file.
pub const MAGIC: &str = "wasp-standin-vmstate";
/// Current format version.
pub const VERSION: u32 = 1;
/// Files larger than this are refused before parsing.
pub const MAX_SIZE: u64 = 1 << 20;

/// A drive as recorded at snapshot time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveState {
    /// Firecracker drive id, e.g. `rootfs`.
    pub drive_id: String,
    /// The path the VMM reopens on load.
    pub path_on_host: String,
    /// Opened read-only.
    pub is_read_only: bool,
    /// The root device.
    #[serde(default)]
    pub is_root_device: bool,
}

/// A network interface as recorded at snapshot time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// Firecracker iface id, e.g. `eth0`.
    pub iface_id: String,
    /// The tap the VMM opens on load (unless overridden).
    pub host_dev_name: String,
    /// Guest MAC, `aa:bb:cc:dd:ee:ff`.
    pub guest_mac: String,
}

/// MMDS config, which (as in Firecracker) lives in the snapshot; the data
/// store's contents do not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsState {
    /// `V1` or `V2`.
    pub version: String,
    /// Interfaces MMDS answers on.
    pub network_interfaces: Vec<String>,
    /// MMDS IPv4 address (default 169.254.169.254).
    pub ipv4_address: String,
}

/// What the stand-in's userspace guest does once resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestState {
    /// The guest's IP on the tap link (every clone has the same one).
    pub ip: String,
    /// Prefix length of the tap link.
    pub prefix_len: u8,
    /// Default gateway (the tap's host-side address).
    pub gateway: String,
    /// TCP port the guest accepts on for readiness (like the seed's ssh).
    pub ready_port: u16,
    /// TCP port of the HTTP agent endpoint.
    pub agent_port: u16,
    /// Fraction of guest memory dirtied after resume (0.0..=1.0).
    pub dirty_fraction: f64,
}

/// The stand-in vmstate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// Format version.
    pub version: u32,
    /// Guest memory size; the memory file must be at least this large.
    pub mem_size_mib: u64,
    /// vCPUs.
    pub vcpu_count: u8,
    /// Drives.
    pub drives: Vec<DriveState>,
    /// Network interfaces.
    pub network_interfaces: Vec<NetState>,
    /// MMDS config, if the VM had one.
    pub mmds: Option<MmdsState>,
    /// Userspace guest behaviour.
    pub guest: GuestState,
}

/// Errors reading a vmstate.
#[derive(Debug, Error)]
pub enum VmStateError {
    /// I/O.
    #[error("cannot read vmstate {path}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Too large.
    #[error("vmstate {path} is {size} bytes, over the {MAX_SIZE}-byte limit; it is not a stand-in vmstate")]
    TooLarge {
        /// File.
        path: String,
        /// Size.
        size: u64,
    },
    /// Bad magic: not a stand-in vmstate (e.g. a real Firecracker one).
    #[error("vmstate {path} does not start with {MAGIC:?}: not a stand-in vmstate (a Firecracker snapshot needs --vmm firecracker)")]
    BadMagic {
        /// File.
        path: String,
    },
    /// Unknown version.
    #[error("vmstate {path} has format version {found}, this wasp reads version {VERSION}")]
    BadVersion {
        /// File.
        path: String,
        /// Found version.
        found: u32,
    },
    /// Truncated or malformed JSON.
    #[error("vmstate {path} is truncated or corrupt")]
    Parse {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

impl VmState {
    /// Serializes with the magic line.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = format!("{MAGIC}\n").into_bytes();
        v.extend_from_slice(&serde_json::to_vec_pretty(self).expect("vmstate serializes"));
        v.push(b'\n');
        v
    }

    /// Parses bytes read from `path` (used only in error messages).
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self, VmStateError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_bytes())
            .and_then(|r| r.strip_prefix(b"\n"))
            .ok_or_else(|| VmStateError::BadMagic { path: path.into() })?;
        #[derive(Deserialize)]
        struct V {
            version: u32,
        }
        let v: V = serde_json::from_slice(rest).map_err(|source| VmStateError::Parse {
            path: path.into(),
            source,
        })?;
        if v.version != VERSION {
            return Err(VmStateError::BadVersion {
                path: path.into(),
                found: v.version,
            });
        }
        serde_json::from_slice(rest).map_err(|source| VmStateError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Reads and validates a vmstate file.
    pub fn read(path: &Path) -> Result<Self, VmStateError> {
        let p = path.display().to_string();
        let io_err = |source| VmStateError::Io {
            path: p.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io_err)?.len();
        if size > MAX_SIZE {
            return Err(VmStateError::TooLarge { path: p, size });
        }
        let bytes = std::fs::read(path).map_err(io_err)?;
        Self::from_bytes(&bytes, &p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> VmState {
        VmState {
            version: VERSION,
            mem_size_mib: 128,
            vcpu_count: 1,
            drives: vec![DriveState {
                drive_id: "rootfs".into(),
                path_on_host: "/wasp/rootfs.ext4".into(),
                is_read_only: false,
                is_root_device: true,
            }],
            network_interfaces: vec![NetState {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: "06:00:c0:a8:f1:02".into(),
            }],
            mmds: Some(MmdsState {
                version: "V2".into(),
                network_interfaces: vec!["eth0".into()],
                ipv4_address: "169.254.169.254".into(),
            }),
            guest: GuestState {
                ip: "192.168.241.2".into(),
                prefix_len: 29,
                gateway: "192.168.241.1".into(),
                ready_port: 22,
                agent_port: 8080,
                dirty_fraction: 0.01,
            },
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(VmState::from_bytes(&s.to_bytes(), "x").unwrap(), s);
    }

    #[test]
    fn rejects_bad_input_with_named_errors() {
        let good = sample().to_bytes();
        assert!(matches!(
            VmState::from_bytes(b"\x00\x01binary", "x"),
            Err(VmStateError::BadMagic { .. })
        ));
        assert!(matches!(
            VmState::from_bytes(&good[..good.len() / 2], "x"),
            Err(VmStateError::Parse { .. })
        ));
        let mut s = sample();
        s.version = 99;
        assert!(matches!(
            VmState::from_bytes(&s.to_bytes(), "x"),
            Err(VmStateError::BadVersion { found: 99, .. })
        ));
    }
}

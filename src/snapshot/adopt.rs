//! `wasp snapshot adopt`: writes a manifest for an existing snapshot
//! directory such as the seed's (`vm.snapshot`, `vm.mem`, `rootfs.ext4`).
//!
//! What the files tell is inferred: sizes, `mem_mib` (memory file size),
//! and for a stand-in vmstate everything it records. Firecracker's vmstate
//! is an opaque binary format, so the VMM version, the drive path the VMM
//! recorded and the network interface must come from the command line.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use thiserror::Error;

use super::manifest::{self, Drive, FileEntry, Manifest, Mmds, NetIface, Vmm, MIB};
use super::{sha256_file, write_atomic, MANIFEST_FILE};
use crate::standin::vmstate::{self, VmState};

/// A drive to record.
#[derive(Debug, Clone)]
pub struct AdoptDrive {
    /// Drive id, e.g. `rootfs`.
    pub drive_id: String,
    /// Image file name inside the directory.
    pub file: String,
    /// The path the VMM recorded (and will reopen on load).
    pub path_on_host: Option<String>,
    /// Read-only.
    pub read_only: bool,
}

/// What to adopt.
#[derive(Debug, Clone)]
pub struct AdoptOptions {
    /// Snapshot directory.
    pub dir: PathBuf,
    /// vmstate file name.
    pub vmstate: String,
    /// Memory file name.
    pub memory: String,
    /// Drives (for a stand-in vmstate, missing paths come from it).
    pub drives: Vec<AdoptDrive>,
    /// The VMM version that made the snapshot (Firecracker: required).
    pub vmm_version: Option<String>,
    /// vCPUs (Firecracker: default 1; stand-in: from the vmstate).
    pub vcpus: Option<u8>,
    /// The network interface, if the VM had one.
    pub iface: Option<NetIface>,
    /// MMDS config, if the VM had one.
    pub mmds: Option<Mmds>,
    /// Record sha256 sums (reads every file once).
    pub sha256: bool,
    /// Replace an existing manifest.
    pub force: bool,
}

/// Why adopt failed; nothing was written.
#[derive(Debug, Error)]
pub enum AdoptError {
    /// A manifest is already there.
    #[error("{0} already exists (pass --force to replace it)")]
    ManifestExists(String),
    /// A file is missing.
    #[error("{what} {path} does not exist ({hint})")]
    Missing {
        /// Role.
        what: String,
        /// Path.
        path: String,
        /// Which flag names it.
        hint: String,
    },
    /// Something the files cannot tell.
    #[error("{flag} is required: {why}")]
    NeedFlag {
        /// Flag.
        flag: String,
        /// Why it cannot be inferred.
        why: String,
    },
    /// The memory file is not whole MiB.
    #[error("memory file {path} is {size} bytes, not a positive whole number of MiB: it is not a Firecracker guest memory file, or it is truncated")]
    MemNotMib {
        /// Path.
        path: String,
        /// Size.
        size: u64,
    },
    /// A stand-in vmstate that does not parse.
    #[error("cannot read the stand-in vmstate")]
    Vmstate(#[source] vmstate::VmStateError),
    /// I/O.
    #[error("cannot read or write {path}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The result is not a valid manifest (bad flag values, or a drive
    /// recorded at a path other than its per-clone path).
    #[error("the adopted manifest would be invalid")]
    Invalid(#[from] manifest::ManifestError),
    /// The vmstate does not record what the manifest would say.
    #[error("the snapshot does not match the manifest adopt would write")]
    Mismatch(#[source] super::CheckError),
}

/// The outcome: the manifest written and the files made read-only.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Adopted {
    /// The manifest written.
    pub manifest: Manifest,
    /// Base files whose mode was changed to 0444.
    pub made_read_only: Vec<PathBuf>,
}

/// Inspects `o.dir`, writes its manifest, makes its base files 0444.
pub fn adopt(o: &AdoptOptions) -> Result<Adopted, AdoptError> {
    let mpath = o.dir.join(MANIFEST_FILE);
    if mpath.exists() && !o.force {
        return Err(AdoptError::ManifestExists(mpath.display().to_string()));
    }
    let io_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| AdoptError::Io { path, source }
    };
    let size_of = |what: &str, file: &str, hint: &str| -> Result<u64, AdoptError> {
        let p = o.dir.join(file);
        match fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(AdoptError::Io {
                path: p.display().to_string(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(AdoptError::Missing {
                what: what.into(),
                path: p.display().to_string(),
                hint: format!("name it with {hint}"),
            }),
            Err(source) => Err(AdoptError::Io {
                path: p.display().to_string(),
                source,
            }),
        }
    };
    let sum = |file: &str| -> Result<Option<String>, AdoptError> {
        if !o.sha256 {
            return Ok(None);
        }
        let p = o.dir.join(file);
        sha256_file(&p).map(Some).map_err(io_err(&p))
    };

    let vs_size = size_of("vmstate", &o.vmstate, "--vmstate")?;
    let mem_size = size_of("memory file", &o.memory, "--memory")?;
    let mem_path = o.dir.join(&o.memory);
    if mem_size == 0 || mem_size % MIB != 0 {
        return Err(AdoptError::MemNotMib {
            path: mem_path.display().to_string(),
            size: mem_size,
        });
    }
    let vs_path = o.dir.join(&o.vmstate);
    let standin = is_standin_vmstate(&vs_path).map_err(io_err(&vs_path))?;
    let vs = if standin {
        Some(VmState::read(&vs_path).map_err(AdoptError::Vmstate)?)
    } else {
        None
    };

    let vmm_version = match (&o.vmm_version, standin) {
        (Some(v), _) => v.clone(),
        (None, true) => super::synth::STANDIN_VERSION.into(),
        (None, false) => {
            return Err(AdoptError::NeedFlag {
                flag: "--vmm-version".into(),
                why: "Firecracker snapshots load only in the version that made them, and the vmstate does not say which in a form wasp reads (e.g. --vmm-version 1.12.1)".into(),
            })
        }
    };

    let mut drives = Vec::new();
    for d in &o.drives {
        let size = size_of(&format!("drive {}", d.drive_id), &d.file, "--rootfs")?;
        let recorded = vs
            .as_ref()
            .and_then(|v| v.drives.iter().find(|x| x.drive_id == d.drive_id));
        let path_on_host = match (&d.path_on_host, recorded) {
            (Some(p), _) => p.clone(),
            (None, Some(r)) => r.path_on_host.clone(),
            (None, None) => {
                return Err(AdoptError::NeedFlag {
                    flag: "--drive-path".into(),
                    why: format!(
                        "drive {} is reopened at the path_on_host the VMM recorded when the snapshot was made; give that path. wasp accepts only {}, the path it binds each clone's own copy over (a snapshot made with the drive elsewhere, like the seed's $VM_DIR/rootfs.ext4, would have every clone open that one file: re-create it with `wasp snapshot create`)",
                        d.drive_id,
                        crate::paths::stable_drive_path(&d.drive_id).display()
                    ),
                })
            }
        };
        drives.push(Drive {
            drive_id: d.drive_id.clone(),
            path_on_host,
            file: d.file.clone(),
            size,
            sha256: sum(&d.file)?,
            read_only: recorded.map(|r| r.is_read_only).unwrap_or(d.read_only),
            is_root_device: recorded
                .map(|r| r.is_root_device)
                .unwrap_or(drives.is_empty()),
        });
    }

    let network_interfaces = match (&o.iface, &vs) {
        (Some(i), _) => vec![i.clone()],
        (None, Some(v)) => v
            .network_interfaces
            .iter()
            .map(|n| NetIface {
                iface_id: n.iface_id.clone(),
                host_dev_name: n.host_dev_name.clone(),
                guest_mac: n.guest_mac.clone(),
                guest_ip: Some(v.guest.ip.clone()),
            })
            .collect(),
        (None, None) => Vec::new(),
    };
    let mmds = match (&o.mmds, &vs) {
        (Some(m), _) => Some(m.clone()),
        (None, Some(v)) => v.mmds.as_ref().map(|m| Mmds {
            version: m.version.clone(),
            ipv4_address: m.ipv4_address.clone(),
        }),
        (None, None) => None,
    };
    let vcpus = o
        .vcpus
        .or_else(|| vs.as_ref().map(|v| v.vcpu_count))
        .unwrap_or(1);

    let m = Manifest {
        format_version: manifest::FORMAT_VERSION,
        vmm: if standin {
            Vmm::Standin
        } else {
            Vmm::Firecracker
        },
        vmm_version,
        vmstate: FileEntry {
            file: o.vmstate.clone(),
            size: vs_size,
            sha256: sum(&o.vmstate)?,
        },
        memory: FileEntry {
            file: o.memory.clone(),
            size: mem_size,
            sha256: sum(&o.memory)?,
        },
        mem_mib: mem_size / MIB,
        vcpus,
        drives,
        network_interfaces,
        mmds,
        created_at: manifest::rfc3339_utc(SystemTime::now()),
    };
    m.validate(&mpath.display().to_string())?;
    // A drive recorded anywhere but its per-clone path would be one file
    // shared by every clone: refuse it here, as `check` and spawn do.
    m.check_drive_paths(&mpath.display().to_string())?;
    if !standin {
        let f = fs::File::open(&vs_path).map_err(io_err(&vs_path))?;
        super::check_firecracker_vmstate(&f, &vs_path.display().to_string(), &m)
            .map_err(AdoptError::Mismatch)?;
    }

    let mut made_read_only = Vec::new();
    for (_, e) in m.files() {
        let p = o.dir.join(&e.file);
        let meta = fs::metadata(&p).map_err(io_err(&p))?;
        if meta.permissions().mode() & 0o222 != 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).map_err(io_err(&p))?;
            made_read_only.push(p);
        }
    }
    write_atomic(&o.dir, MANIFEST_FILE, &m.to_bytes(), 0o644).map_err(io_err(&mpath))?;
    Ok(Adopted {
        manifest: m,
        made_read_only,
    })
}

fn is_standin_vmstate(p: &Path) -> io::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 32];
    let mut f = fs::File::open(p)?;
    let mut n = 0;
    while n < head.len() {
        let k = f.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(head[..n].starts_with(format!("{}\n", vmstate::MAGIC).as_bytes()))
}

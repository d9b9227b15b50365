//! `wasp snapshot synth`: a stand-in snapshot for the stand-in VMM and for
//! benches. The memory file and rootfs hold real, non-zero content (every
//! 4 KiB page differs), so nothing downstream can get away with treating
//! them as holes.
//!
//! The directory is built under a temporary name beside `out` and renamed
//! into place only when complete: a failure leaves nothing behind. Base
//! files are made read-only (0444): clones map the memory file MAP_PRIVATE
//! and reflink the rootfs, so neither may change while clones live.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::manifest::{self, Drive, FileEntry, Manifest, Mmds, NetIface, Vmm, MIB};
use super::{hex, write_atomic, CLONE_ROOTFS_PATH, CLONE_SCRATCH_PATH, MANIFEST_FILE};
use crate::paths::{
    DEFAULT_GUEST_IP, DEFAULT_TAP, DEFAULT_TAP_IP, DEFAULT_TAP_PREFIX, GUEST_IFACE_ID as IFACE_ID,
    GUEST_MAC, MMDS_IPV4,
};
use crate::standin::vmstate::{self, DriveState, GuestState, MmdsState, NetState, VmState};

/// The stand-in VMM's version string.
pub const STANDIN_VERSION: &str = "0.1.0-standin";

/// File names inside a synthesized snapshot (the seed's names).
pub const VMSTATE_FILE: &str = "vm.snapshot";
/// Memory file name.
pub const MEMORY_FILE: &str = "vm.mem";
/// Rootfs image name.
pub const ROOTFS_FILE: &str = "rootfs.ext4";
/// Scratch image name.
pub const SCRATCH_FILE: &str = "scratch.img";

/// What to synthesize.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// The snapshot directory to create; must not exist.
    pub out: PathBuf,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Rootfs size in MiB.
    pub rootfs_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Record the rootfs read-only (needed for the shared-readonly clone
    /// strategy).
    pub rootfs_read_only: bool,
    /// Add a writable scratch drive of this many MiB (sparse, empty).
    pub scratch_mib: Option<u64>,
    /// Record sha256 sums (for `check --deep`).
    pub sha256: bool,
}

impl Default for SynthOptions {
    /// A small stand-in snapshot: 32 MiB of memory, a 4 MiB writable rootfs,
    /// one vCPU, no scratch drive, no sums. `out` is empty: set it.
    fn default() -> Self {
        Self {
            out: PathBuf::new(),
            mem_mib: 32,
            rootfs_mib: 4,
            vcpus: 1,
            rootfs_read_only: false,
            scratch_mib: None,
            sha256: false,
        }
    }
}

/// Why synth failed. Nothing is left behind.
#[derive(Debug, Error)]
pub enum SynthError {
    /// `out` exists.
    #[error(
        "{0} already exists; synth never overwrites a snapshot (pick a new --out or remove it)"
    )]
    Exists(String),
    /// Bad sizes.
    #[error("{0}")]
    BadOption(String),
    /// I/O while writing.
    #[error("cannot write {path} (nothing was left behind)")]
    Io {
        /// File or directory.
        path: String,
        /// Cause (ENOSPC: free space or pick a bigger filesystem).
        #[source]
        source: io::Error,
    },
    /// The result did not validate (a bug).
    #[error("the synthesized snapshot does not validate")]
    Invalid(#[from] manifest::ManifestError),
}

/// Builds the snapshot and returns its manifest.
pub fn synth(o: &SynthOptions) -> Result<Manifest, SynthError> {
    if o.mem_mib == 0 || o.mem_mib > 64 * 1024 {
        return Err(SynthError::BadOption(format!(
            "--mem-mib {} is out of range 1..=65536",
            o.mem_mib
        )));
    }
    if o.rootfs_mib == 0 || o.rootfs_mib > 1 << 20 {
        return Err(SynthError::BadOption(format!(
            "--rootfs-mib {} is out of range 1..=1048576",
            o.rootfs_mib
        )));
    }
    if o.vcpus == 0 || o.vcpus > 32 {
        return Err(SynthError::BadOption(format!(
            "--vcpus {} is out of range 1..=32",
            o.vcpus
        )));
    }
    if fs::symlink_metadata(&o.out).is_ok() {
        return Err(SynthError::Exists(o.out.display().to_string()));
    }
    let name = o
        .out
        .file_name()
        .ok_or_else(|| SynthError::BadOption(format!("--out {} has no name", o.out.display())))?
        .to_string_lossy()
        .into_owned();
    let parent = match o.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".wasp-synth-{}-{name}", std::process::id()));
    // 0755 whatever the umask: `check` refuses a snapshot directory that
    // group or others can write.
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&tmp)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)))
        .map_err(|source| SynthError::Io {
            path: tmp.display().to_string(),
            source,
        })?;
    let res = build(o, &tmp).and_then(|m| {
        fs::rename(&tmp, &o.out).map_err(|source| SynthError::Io {
            path: o.out.display().to_string(),
            source,
        })?;
        Ok(m)
    });
    if res.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    res
}

fn build(o: &SynthOptions, dir: &Path) -> Result<Manifest, SynthError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| SynthError::Io { path, source }
    };
    let mem_path = dir.join(MEMORY_FILE);
    let mem_sha = write_patterned(&mem_path, o.mem_mib * MIB, 0x9e37_79b9, o.sha256)
        .map_err(io_err(&mem_path))?;
    let rootfs_path = dir.join(ROOTFS_FILE);
    let rootfs_sha = write_patterned(&rootfs_path, o.rootfs_mib * MIB, 0x7f4a_7c15, o.sha256)
        .map_err(io_err(&rootfs_path))?;

    let mut drives = vec![Drive {
        drive_id: "rootfs".into(),
        path_on_host: CLONE_ROOTFS_PATH.into(),
        file: ROOTFS_FILE.into(),
        size: o.rootfs_mib * MIB,
        sha256: rootfs_sha,
        read_only: o.rootfs_read_only,
        is_root_device: true,
    }];
    if let Some(s) = o.scratch_mib {
        let p = dir.join(SCRATCH_FILE);
        let f = File::create(&p).map_err(io_err(&p))?;
        f.set_len(s * MIB).map_err(io_err(&p))?;
        let sha = if o.sha256 {
            Some(super::sha256_file(&p).map_err(io_err(&p))?)
        } else {
            None
        };
        drives.push(Drive {
            drive_id: "scratch".into(),
            path_on_host: CLONE_SCRATCH_PATH.into(),
            file: SCRATCH_FILE.into(),
            size: s * MIB,
            sha256: sha,
            read_only: false,
            is_root_device: false,
        });
    }

    let vs = VmState {
        version: vmstate::VERSION,
        mem_size_mib: o.mem_mib,
        vcpu_count: o.vcpus,
        drives: drives
            .iter()
            .map(|d| DriveState {
                drive_id: d.drive_id.clone(),
                path_on_host: d.path_on_host.clone(),
                is_read_only: d.read_only,
                is_root_device: d.is_root_device,
            })
            .collect(),
        network_interfaces: vec![NetState {
            iface_id: IFACE_ID.into(),
            host_dev_name: DEFAULT_TAP.into(),
            guest_mac: GUEST_MAC.into(),
        }],
        mmds: Some(MmdsState {
            version: "V2".into(),
            network_interfaces: vec![IFACE_ID.into()],
            ipv4_address: MMDS_IPV4.into(),
        }),
        guest: GuestState {
            ip: DEFAULT_GUEST_IP.to_string(),
            prefix_len: DEFAULT_TAP_PREFIX,
            gateway: DEFAULT_TAP_IP.to_string(),
            ready_port: 22,
            agent_port: 8080,
            dirty_fraction: 0.01,
        },
    };
    let vs_bytes = vs.to_bytes();
    let vs_path = dir.join(VMSTATE_FILE);
    fs::write(&vs_path, &vs_bytes).map_err(io_err(&vs_path))?;

    for f in [VMSTATE_FILE, MEMORY_FILE, ROOTFS_FILE, SCRATCH_FILE] {
        let p = dir.join(f);
        if p.exists() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).map_err(io_err(&p))?;
        }
    }

    let m = Manifest {
        format_version: manifest::FORMAT_VERSION,
        vmm: Vmm::Standin,
        vmm_version: STANDIN_VERSION.into(),
        vmstate: FileEntry {
            file: VMSTATE_FILE.into(),
            size: vs_bytes.len() as u64,
            sha256: o.sha256.then(|| hex(&Sha256::digest(&vs_bytes))),
        },
        memory: FileEntry {
            file: MEMORY_FILE.into(),
            size: o.mem_mib * MIB,
            sha256: mem_sha,
        },
        mem_mib: o.mem_mib,
        vcpus: o.vcpus,
        drives,
        network_interfaces: vec![NetIface {
            iface_id: IFACE_ID.into(),
            host_dev_name: DEFAULT_TAP.into(),
            guest_mac: GUEST_MAC.into(),
            guest_ip: Some(DEFAULT_GUEST_IP.to_string()),
        }],
        mmds: Some(Mmds {
            version: "V2".into(),
            ipv4_address: MMDS_IPV4.into(),
        }),
        created_at: manifest::rfc3339_utc(SystemTime::now()),
    };
    m.validate(MANIFEST_FILE)?;
    let mpath = dir.join(MANIFEST_FILE);
    write_atomic(dir, MANIFEST_FILE, &m.to_bytes(), 0o644).map_err(io_err(&mpath))?;
    // Make the directory entry durable before the caller renames it.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(m)
}

/// Writes `len` bytes of pseudo-random, non-zero content (each 4 KiB page
/// stamped with its index so no two pages are alike), fsyncs, and returns
/// the sha256 when asked.
fn write_patterned(path: &Path, len: u64, seed: u64, sha: bool) -> io::Result<Option<String>> {
    const CHUNK: usize = 1 << 20;
    let mut f = File::options().write(true).create_new(true).open(path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut x = seed | 1;
    for b in buf.chunks_exact_mut(8) {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&(x | 0x0101_0101_0101_0101).to_le_bytes());
    }
    let mut h = sha.then(Sha256::new);
    let mut page = 0u64;
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        for p in buf[..n].chunks_mut(4096) {
            // splitmix64 of the page index, with no zero byte.
            let mut z = page.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let stamp = ((z ^ (z >> 31)) | 0x0101_0101_0101_0101).to_le_bytes();
            let k = p.len().min(8);
            p[..k].copy_from_slice(&stamp[..k]);
            page += 1;
        }
        f.write_all(&buf[..n])?;
        if let Some(h) = h.as_mut() {
            h.update(&buf[..n]);
        }
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(h.map(|h| hex(&h.finalize())))
}

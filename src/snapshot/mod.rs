//! The snapshot store: a directory holding a golden snapshot (vmstate,
//! guest memory, drive images) and its manifest, [`MANIFEST_FILE`].
//!
//! - [`check`] validates a directory against its manifest and names the
//!   exact problem (missing file, wrong size, short memory file, truncated
//!   vmstate, unknown format version, with `deep` a checksum mismatch, and
//!   hostile layouts: symlinks leading outside the directory, files another
//!   user owns or can write).
//! - [`adopt`] writes a manifest for an existing Firecracker snapshot dir.
//! - [`synth`] makes a stand-in snapshot for the stand-in VMM and benches.
//! - [`warm`] reads memory and vmstate into the page cache.
//!
//! The memory file is never copied per clone: the VMM maps it MAP_PRIVATE,
//! so every clone shares its page cache. It must therefore stay immutable
//! while any clone lives; wasp makes base files read-only (0444).

pub mod adopt;
pub mod manifest;
pub mod synth;
pub mod warm;

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use adopt::{adopt, AdoptError, AdoptOptions};
pub use manifest::{Manifest, ManifestError, Vmm, FORMAT_VERSION, MANIFEST_FILE, MIB};
pub use synth::{synth, SynthError, SynthOptions};
pub use warm::{warm, WarmError, WarmMethod, WarmReport};

use crate::vmstate::{VmState, VmStateError};

/// The `path_on_host` that synthesized snapshots record for their rootfs.
///
/// Firecracker 1.12 reopens drives at the path recorded in the snapshot and
/// cannot override it on load, so the recorded path must resolve to each
/// clone's own disk. The spawn stage gives every clone a private mount
/// namespace and bind-mounts that clone's rootfs (from
/// [`crate::storage::CloneFiles`]) over this path before the VMM starts
/// (see [`crate::paths::STABLE_DRIVE_DIR`] and [`crate::launch`]).
pub const CLONE_ROOTFS_PATH: &str = "/run/wasp/drives/rootfs";

/// The `path_on_host` recorded for an optional per-clone scratch drive
/// (bind-mounted per clone like [`CLONE_ROOTFS_PATH`]).
pub const CLONE_SCRATCH_PATH: &str = "/run/wasp/drives/scratch";

#[cfg(test)]
mod stable_path_tests {
    #[test]
    fn recorded_paths_are_the_launch_stage_bind_targets() {
        assert_eq!(
            super::CLONE_ROOTFS_PATH,
            crate::paths::stable_drive_path("rootfs").to_str().unwrap()
        );
        assert_eq!(
            super::CLONE_SCRATCH_PATH,
            crate::paths::stable_drive_path("scratch").to_str().unwrap()
        );
    }
}

/// Why a snapshot directory failed [`check`].
#[derive(Debug, Error)]
pub enum CheckError {
    /// No manifest.
    #[error("{dir} has no {MANIFEST_FILE}: write one with `wasp snapshot adopt {dir}` (existing Firecracker snapshot) or make a snapshot with `wasp snapshot synth`")]
    NoManifest {
        /// Snapshot directory.
        dir: String,
    },
    /// Reading a file failed.
    #[error("cannot read {path}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The manifest is malformed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A file the manifest lists is not there.
    #[error("{role} file {path} is missing: the snapshot is incomplete (restore the file, or re-adopt the directory)")]
    Missing {
        /// `vmstate`, `memory`, `drive rootfs`.
        role: String,
        /// File.
        path: String,
    },
    /// A symlink that leads outside the snapshot directory.
    #[error("{role} file {path} is a symlink to {target}, outside the snapshot directory {dir}: wasp only uses files inside the directory (copy the file in)")]
    SymlinkOutside {
        /// Role.
        role: String,
        /// File.
        path: String,
        /// Where it resolves.
        target: String,
        /// Snapshot directory.
        dir: String,
    },
    /// Not a regular file (directory, device, fifo).
    #[error("{role} file {path} is not a regular file")]
    NotRegular {
        /// Role.
        role: String,
        /// File.
        path: String,
    },
    /// Owned by someone who could change it under running clones.
    #[error("{role} file {path} is owned by uid {uid}, not root: its owner could change it under running clones (chown root:root it)")]
    NotOwnedByRoot {
        /// Role.
        role: String,
        /// File.
        path: String,
        /// Owner.
        uid: u32,
    },
    /// Writable by group or others.
    #[error("{role} file {path} is writable by group or others (mode {mode:o}): anyone could change it under running clones (chmod go-w it)")]
    WritableByOthers {
        /// Role.
        role: String,
        /// File.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Size differs from the manifest.
    #[error("{role} file {path} is {actual} bytes, the manifest says {expected}: the file was replaced or damaged")]
    WrongSize {
        /// Role.
        role: String,
        /// File.
        path: String,
        /// Manifest size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// Memory file shorter than guest memory.
    #[error("memory file {path} is {actual} bytes, smaller than mem_mib {mem_mib} ({need} bytes): Firecracker would SIGBUS when the guest touches the missing pages (the file was truncated; restore it)")]
    MemoryTooSmall {
        /// File.
        path: String,
        /// Actual size.
        actual: u64,
        /// Manifest mem_mib.
        mem_mib: u64,
        /// Bytes needed.
        need: u64,
    },
    /// vmstate shorter than recorded.
    #[error(
        "vmstate {path} is truncated: {actual} of {expected} bytes (restore it or re-snapshot)"
    )]
    VmstateTruncated {
        /// File.
        path: String,
        /// Manifest size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// A stand-in vmstate that does not parse.
    #[error("stand-in vmstate {path} is invalid")]
    StandinVmstate {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: VmStateError,
    },
    /// The stand-in vmstate disagrees with the manifest.
    #[error("stand-in vmstate {path} says {what} is {found}, the manifest says {expected}")]
    VmstateMismatch {
        /// File.
        path: String,
        /// Field.
        what: String,
        /// Manifest value.
        expected: String,
        /// vmstate value.
        found: String,
    },
    /// `--deep`: the contents changed.
    #[error("{role} file {path} has sha256 {actual}, the manifest says {expected}: the file changed or is corrupt")]
    ChecksumMismatch {
        /// Role.
        role: String,
        /// File.
        path: String,
        /// Manifest hash.
        expected: String,
        /// Actual hash.
        actual: String,
    },
}

/// One checked file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// `vmstate`, `memory`, `drive rootfs`.
    pub role: String,
    /// Full path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// `verified`, `not-recorded` (deep but no sha256 in the manifest) or
    /// `not-checked` (not deep).
    pub checksum: &'static str,
}

/// A snapshot that passed [`check`].
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Snapshot directory.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// Every file.
    pub files: Vec<FileReport>,
    /// Whether checksums were checked.
    pub deep: bool,
    /// Things that work but deserve attention (e.g. a writable memory file).
    pub warnings: Vec<String>,
}

/// Reads and parses `dir`'s manifest (no file checks).
pub fn read_manifest(dir: &Path) -> Result<Manifest, CheckError> {
    let path = dir.join(MANIFEST_FILE);
    let p = path.display().to_string();
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CheckError::NoManifest {
                dir: dir.display().to_string(),
            })
        }
        Err(source) => return Err(CheckError::Io { path: p, source }),
    };
    // Read at most one byte past the limit, so a huge file is never slurped.
    let mut bytes = Vec::new();
    f.take(manifest::MAX_MANIFEST_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| CheckError::Io {
            path: p.clone(),
            source,
        })?;
    Ok(Manifest::from_bytes(&bytes, &p)?)
}

/// Validates `dir` against its manifest; `deep` also checks sha256 sums.
pub fn check(dir: &Path, deep: bool) -> Result<CheckReport, CheckError> {
    let manifest = read_manifest(dir)?;
    let canon_dir = fs::canonicalize(dir).map_err(|source| CheckError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    for (role, entry) in manifest.files() {
        let path = dir.join(&entry.file);
        let meta = file_meta(&role, &path, &canon_dir)?;
        let actual = meta.len();
        let p = path.display().to_string();
        if role == "memory" && actual < manifest.mem_bytes() {
            return Err(CheckError::MemoryTooSmall {
                path: p,
                actual,
                mem_mib: manifest.mem_mib,
                need: manifest.mem_bytes(),
            });
        }
        if role == "vmstate" && actual < entry.size {
            return Err(CheckError::VmstateTruncated {
                path: p,
                expected: entry.size,
                actual,
            });
        }
        if actual != entry.size {
            return Err(CheckError::WrongSize {
                role,
                path: p,
                expected: entry.size,
                actual,
            });
        }
        if role == "memory" && meta.mode() & 0o222 != 0 {
            warnings.push(format!(
                "memory file {p} is writable (mode {:o}): clones map it MAP_PRIVATE and it must not change while any clone lives; chmod 0444 it",
                meta.mode() & 0o7777
            ));
        }
        let checksum = if !deep {
            "not-checked"
        } else if let Some(expected) = &entry.sha256 {
            let actual = sha256_file(&path).map_err(|source| CheckError::Io {
                path: p.clone(),
                source,
            })?;
            if &actual != expected {
                return Err(CheckError::ChecksumMismatch {
                    role,
                    path: p,
                    expected: expected.clone(),
                    actual,
                });
            }
            "verified"
        } else {
            "not-recorded"
        };
        files.push(FileReport {
            role,
            path,
            size: actual,
            checksum,
        });
    }
    if manifest.vmm == Vmm::Standin {
        check_standin_vmstate(dir, &manifest)?;
    }
    Ok(CheckReport {
        dir: dir.to_path_buf(),
        manifest,
        files,
        deep,
        warnings,
    })
}

fn check_standin_vmstate(dir: &Path, m: &Manifest) -> Result<(), CheckError> {
    let path = dir.join(&m.vmstate.file);
    let p = path.display().to_string();
    let vs = VmState::read(&path).map_err(|source| CheckError::StandinVmstate {
        path: p.clone(),
        source,
    })?;
    let mismatch = |what: &str, expected: String, found: String| CheckError::VmstateMismatch {
        path: p.clone(),
        what: what.into(),
        expected,
        found,
    };
    if vs.mem_size_mib != m.mem_mib {
        return Err(mismatch(
            "mem_size_mib",
            m.mem_mib.to_string(),
            vs.mem_size_mib.to_string(),
        ));
    }
    if vs.vcpu_count != m.vcpus {
        return Err(mismatch(
            "vcpu_count",
            m.vcpus.to_string(),
            vs.vcpu_count.to_string(),
        ));
    }
    for d in &m.drives {
        match vs.drives.iter().find(|v| v.drive_id == d.drive_id) {
            Some(v) if v.path_on_host == d.path_on_host => {}
            Some(v) => {
                return Err(mismatch(
                    &format!("drive {} path_on_host", d.drive_id),
                    d.path_on_host.clone(),
                    v.path_on_host.clone(),
                ))
            }
            None => {
                return Err(mismatch(
                    &format!("drive {}", d.drive_id),
                    "present".into(),
                    "absent".into(),
                ))
            }
        }
    }
    Ok(())
}

/// Metadata of a snapshot file after the hostile-layout checks: symlinks
/// must stay inside the directory, the file must be regular, owned by root
/// (or, when wasp does not run as root, by the user running it) and not
/// writable by group or others.
fn file_meta(role: &str, path: &Path, canon_dir: &Path) -> Result<fs::Metadata, CheckError> {
    let p = path.display().to_string();
    let lmeta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CheckError::Missing {
                role: role.into(),
                path: p,
            })
        }
        Err(source) => return Err(CheckError::Io { path: p, source }),
    };
    if lmeta.file_type().is_symlink() {
        let target = match fs::canonicalize(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CheckError::Missing {
                    role: role.into(),
                    path: p,
                })
            }
            Err(source) => return Err(CheckError::Io { path: p, source }),
        };
        if target.parent() != Some(canon_dir) {
            return Err(CheckError::SymlinkOutside {
                role: role.into(),
                path: p,
                target: target.display().to_string(),
                dir: canon_dir.display().to_string(),
            });
        }
    }
    let meta = fs::metadata(path).map_err(|source| CheckError::Io {
        path: p.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(CheckError::NotRegular {
            role: role.into(),
            path: p,
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(CheckError::NotOwnedByRoot {
            role: role.into(),
            path: p,
            uid: meta.uid(),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(CheckError::WritableByOthers {
            role: role.into(),
            path: p,
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(meta)
}

/// Lower-case hex sha256 of a file, streamed in 1 MiB reads.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename, so a
/// reader never sees a half-written file.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    crate::state::write_atomic(dir, name, bytes, mode)
}

//! The snapshot store: a directory holding a golden snapshot (vmstate,
//! guest memory, drive images) and its manifest, [`MANIFEST_FILE`].
//!
//! - [`check`] validates a directory against its manifest and names the
//!   exact problem (missing file, wrong size, short memory file, truncated
//!   vmstate, unknown format version, with `deep` a checksum mismatch, and
//!   hostile layouts: a directory chain or files another user owns or can
//!   write, symlinks, drives recorded at a path other than their per-clone
//!   path). It opens each file once and hands the fds on
//!   ([`OpenedSnapshot`]).
//! - [`adopt`] writes a manifest for an existing Firecracker snapshot dir.
//! - [`synth`] makes a stand-in snapshot for the stand-in VMM and benches.
//! - [`warm`] reads memory and vmstate into the page cache.
//!
//! The memory file is never copied per clone: the VMM maps it MAP_PRIVATE,
//! so every clone shares its page cache. It must therefore stay immutable
//! while any clone lives; wasp makes base files read-only (0444).

pub mod adopt;
pub mod golden;
pub mod manifest;
pub mod synth;
pub mod warm;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use adopt::{adopt, AdoptError, AdoptOptions};
pub use manifest::{Manifest, ManifestError, Vmm, FORMAT_VERSION, MANIFEST_FILE, MIB};
pub use synth::{synth, SynthError, SynthOptions};
pub use warm::{warm, WarmError, WarmMethod, WarmReport};

use crate::standin::vmstate::{VmState, VmStateError};

/// The `path_on_host` that synthesized snapshots record for their rootfs.
///
/// Firecracker 1.12 reopens drives at the path recorded in the snapshot and
/// cannot override it on load, so the recorded path must resolve to each
/// clone's own disk. The spawn stage gives every clone a private mount
/// namespace and bind-mounts that clone's rootfs (from
/// [`crate::pipeline::storage::CloneFiles`]) over this path before the VMM starts
/// (see [`crate::paths::STABLE_DRIVE_DIR`] and [`crate::pipeline::launch`]).
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
    /// A symlink where a snapshot file should be.
    #[error("{role} file {path} is a symlink: wasp opens snapshot files without following links, so that no link can be pointed at another file under running clones (replace the link with the file itself, e.g. `cp --remove-destination \"$(readlink -f {path})\" {path}`)")]
    Symlink {
        /// Role.
        role: String,
        /// File.
        path: String,
    },
    /// The snapshot directory, or one of its ancestors, is owned or
    /// writable by a user other than root.
    #[error("snapshot directory {dir} is not safe to use: {path} is {reason} (owner uid {uid}, mode {mode:o}), so a user other than root could rename or replace the snapshot's files under running clones (fix: chown root:root {path} && chmod go-w {path})")]
    UntrustedDir {
        /// Snapshot directory.
        dir: String,
        /// The offending directory (the snapshot directory or an ancestor).
        path: String,
        /// What is wrong with it.
        reason: String,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// A Firecracker vmstate that does not record a drive's path.
    #[error("vmstate {path} does not record drive {drive_id} at {recorded}, the path the manifest gives: Firecracker reopens the path its vmstate recorded, so clones would not open their own copies (the manifest was written with a wrong --drive-path, or for another snapshot). Re-create the snapshot with `wasp snapshot create`, which records the per-clone path")]
    VmstateDrivePath {
        /// File.
        path: String,
        /// Drive.
        drive_id: String,
        /// The manifest's `path_on_host`.
        recorded: String,
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
    /// The files as opened by the check, for clone storage.
    #[serde(skip)]
    pub opened: OpenedSnapshot,
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
    parse_manifest(&f, &p)
}

fn parse_manifest(f: &File, p: &str) -> Result<Manifest, CheckError> {
    // Read at most one byte past the limit, so a huge file is never slurped.
    let mut bytes = Vec::new();
    f.take(manifest::MAX_MANIFEST_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| CheckError::Io {
            path: p.into(),
            source,
        })?;
    Ok(Manifest::from_bytes(&bytes, p)?)
}

/// The snapshot's files as [`check`] opened them: what clone storage
/// copies from, so that nothing is looked up by name again.
#[derive(Debug, Clone)]
pub struct OpenedSnapshot {
    /// The snapshot directory with every symlink resolved: the chain of
    /// directories [`check`] verified (each owned by root, none writable by
    /// group or others unless sticky). Paths the VMM opens itself (the
    /// vmstate, the memory file, read-only drives bound into its mount
    /// namespace) are built from it: no user but root can rename or
    /// replace anything along it, so such a path still names the file
    /// `check` verified.
    pub dir: PathBuf,
    /// Each drive's base image by drive id, opened once without following
    /// symlinks; clone disks are reflinked or copied from these fds.
    pub drives: BTreeMap<String, Arc<File>>,
}

/// Validates `dir` against its manifest; `deep` also checks sha256 sums.
///
/// The directory and each of its ancestors must be owned by root (or the
/// user running wasp) and not writable by group or others (an ancestor may
/// be if it is sticky, like `/tmp`), as sshd's `StrictModes` requires:
/// otherwise another user could rename the directory or swap a file in it
/// after the check. Each file is then opened once, relative to the
/// directory's fd and without following symlinks, and checked through
/// that fd (regular, owned by root, not writable by group or others, the
/// manifest's size); [`CheckReport::opened`] hands the fds on.
pub fn check(dir: &Path, deep: bool) -> Result<CheckReport, CheckError> {
    let canon_dir = fs::canonicalize(dir).map_err(|source| CheckError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let dir_fd = open_trusted_dir(&canon_dir)?;
    // The manifest decides which files clones use: hold it to the same
    // rules as the files it names.
    let (mf, _) = match open_checked("manifest", &dir_fd, &canon_dir, MANIFEST_FILE) {
        Err(CheckError::Missing { .. }) => {
            return Err(CheckError::NoManifest {
                dir: dir.display().to_string(),
            })
        }
        r => r?,
    };
    let manifest = parse_manifest(&mf, &canon_dir.join(MANIFEST_FILE).display().to_string())?;
    manifest.check_drive_paths(&canon_dir.join(MANIFEST_FILE).display().to_string())?;
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    let mut opened = OpenedSnapshot {
        dir: canon_dir.clone(),
        drives: BTreeMap::new(),
    };
    let mut vmstate = None;
    for (role, entry) in manifest.files() {
        let path = canon_dir.join(&entry.file);
        let (file, meta) = open_checked(&role, &dir_fd, &canon_dir, &entry.file)?;
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
            let actual = sha256_of(&file).map_err(|source| CheckError::Io {
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
        if role == "vmstate" {
            vmstate = Some(file);
        } else if let Some(id) = role.strip_prefix("drive ") {
            opened.drives.insert(id.to_string(), Arc::new(file));
        }
        files.push(FileReport {
            role,
            path,
            size: actual,
            checksum,
        });
    }
    let vs_path = canon_dir.join(&manifest.vmstate.file).display().to_string();
    let vs_file = vmstate.expect("manifest.files() lists the vmstate");
    match manifest.vmm {
        Vmm::Standin => check_standin_vmstate(&vs_file, &vs_path, &manifest)?,
        Vmm::Firecracker => check_firecracker_vmstate(&vs_file, &vs_path, &manifest)?,
    }
    Ok(CheckReport {
        dir: dir.to_path_buf(),
        manifest,
        files,
        deep,
        warnings,
        opened,
    })
}

/// Opens the canonical directory `canon` through a chain of directories
/// only root (or the user running wasp) can change
/// ([`crate::trust::open_dir`], no symlink followed: one swapped in
/// meanwhile fails): not writable by group or others, where an ancestor
/// may be if it is sticky (others cannot rename or remove what they do not
/// own in it) and the snapshot directory itself may not (they could add a
/// missing file).
fn open_trusted_dir(canon: &Path) -> Result<File, CheckError> {
    use crate::trust::{self, Rules, WalkError};
    let rules = Rules {
        also_owner: Some(nix::unistd::geteuid().as_raw()),
        follow_root_symlinks: false,
        last_strict: true,
    };
    trust::open_dir(canon, rules)
        .map(File::from)
        .map_err(|e| match e {
            WalkError::Untrusted(u) => CheckError::UntrustedDir {
                dir: canon.display().to_string(),
                path: u.dir.display().to_string(),
                reason: u.reason(),
                uid: u.uid,
                mode: u.mode,
            },
            WalkError::Io { dir, source } => CheckError::Io {
                path: dir.display().to_string(),
                source,
            },
        })
}

/// Opens the snapshot file `name` relative to the checked directory `dir`
/// without following symlinks, and checks it through the fd: a regular
/// file, owned by root (or, when wasp does not run as root, by the user
/// running it) and not writable by group or others.
fn open_checked(
    role: &str,
    dir: &File,
    canon_dir: &Path,
    name: &str,
) -> Result<(File, fs::Metadata), CheckError> {
    let p = canon_dir.join(name).display().to_string();
    let file = match crate::sys::fs::open_file_nofollow(dir.as_fd(), name.as_ref()) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CheckError::Missing {
                role: role.into(),
                path: p,
            })
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(CheckError::Symlink {
                role: role.into(),
                path: p,
            })
        }
        Err(source) => return Err(CheckError::Io { path: p, source }),
    };
    let meta = file.metadata().map_err(|source| CheckError::Io {
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
    Ok((file, meta))
}

/// Reads all of `f` from offset 0 (positional reads: the fd's offset is
/// left alone).
fn read_all_at(f: &File, limit: u64) -> io::Result<Vec<u8>> {
    let len = f.metadata()?.len().min(limit);
    let mut bytes = vec![0u8; len as usize];
    f.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

fn check_standin_vmstate(f: &File, p: &str, m: &Manifest) -> Result<(), CheckError> {
    let invalid = |source| CheckError::StandinVmstate {
        path: p.into(),
        source,
    };
    let size = m.vmstate.size;
    if size > crate::standin::vmstate::MAX_SIZE {
        return Err(invalid(VmStateError::TooLarge {
            path: p.into(),
            size,
        }));
    }
    let bytes = read_all_at(f, size).map_err(|source| CheckError::Io {
        path: p.into(),
        source,
    })?;
    let vs = VmState::from_bytes(&bytes, p).map_err(invalid)?;
    let mismatch = |what: &str, expected: String, found: String| CheckError::VmstateMismatch {
        path: p.into(),
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
            Some(v) if v.path_on_host != d.path_on_host => {
                return Err(mismatch(
                    &format!("drive {} path_on_host", d.drive_id),
                    d.path_on_host.clone(),
                    v.path_on_host.clone(),
                ))
            }
            // The VMM opens the drive as the vmstate says: a manifest
            // that calls it read-only would have it shared, read-write.
            Some(v) if v.is_read_only != d.read_only => {
                return Err(mismatch(
                    &format!("drive {} read_only", d.drive_id),
                    d.read_only.to_string(),
                    v.is_read_only.to_string(),
                ))
            }
            Some(_) => {}
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

/// Firecracker's vmstate is its own binary format (serde + bincode, strings
/// as a little-endian u64 length and the bytes), which wasp does not parse.
/// What it can check: each drive's recorded path, the path Firecracker
/// reopens on load, is in it as such a string. A manifest written with a
/// `path_on_host` the snapshot never recorded would otherwise pass while
/// Firecracker opened another file.
fn check_firecracker_vmstate(f: &File, p: &str, m: &Manifest) -> Result<(), CheckError> {
    if m.drives.is_empty() {
        return Ok(());
    }
    let bytes = read_all_at(f, m.vmstate.size).map_err(|source| CheckError::Io {
        path: p.into(),
        source,
    })?;
    for d in &m.drives {
        let mut needle = (d.path_on_host.len() as u64).to_le_bytes().to_vec();
        needle.extend_from_slice(d.path_on_host.as_bytes());
        if !bytes.windows(needle.len()).any(|w| w == needle) {
            return Err(CheckError::VmstateDrivePath {
                path: p.into(),
                drive_id: d.drive_id.clone(),
                recorded: d.path_on_host.clone(),
            });
        }
    }
    Ok(())
}

/// Lower-case hex sha256 of an open file, streamed in 1 MiB positional
/// reads from offset 0.
fn sha256_of(f: &File) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = f.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hex(&h.finalize()))
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

//! Per-clone disks: each clone gets its own writable copy of every writable
//! drive, made by the best strategy the runtime directory supports, chosen
//! once by [`probe_clone_strategy`] when the [`CloneStore`] opens.
//!
//! Memory is never copied: the VMM maps the snapshot's memory file
//! MAP_PRIVATE, so clones share its page cache and only their own dirty
//! pages are private. [`CloneFiles::mem_bytes_copied`] is therefore always 0
//! and is reported so that benches show it.
//!
//! Layout: `<runtime>/clones/wasp-<clone id>/<drive id>`. A drive file is
//! built under a temporary name and renamed when complete; any failure
//! (ENOSPC, EIO mid-copy) removes the clone's whole directory, so no
//! partial file is ever left. After a crash, [`CloneStore::reconcile`]
//! removes `wasp-*` directories whose clone is not live.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;

use super::probe::{explain_reflink_errno, ReflinkProbe, Strategy};
use crate::paths::PREFIX;
use crate::snapshot::{self, CheckError, Manifest};
use crate::state::Owner;
use crate::sweep::ReconcileReport;
use crate::sys::fs::{copy_file_range, ficlone, seek_data_hole, Whence};

/// Sub-directory of the runtime dir that holds clone directories.
pub const CLONES_SUBDIR: &str = "clones";
/// Sub-directory of a reflink store ([`super::store`]) that holds the
/// snapshots placed in it.
pub const SNAPSHOTS_SUBDIR: &str = "snapshots";

/// How the store picks its strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The best strategy the probe finds (reflink, copy_file_range, sparse copy).
    Auto,
    /// Exactly this strategy; fails at open if the filesystem cannot do it.
    /// `Force(SharedReadonly)` is the opt-in shared read-only mode.
    Force(Strategy),
}

/// The probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeOutcome {
    /// Best strategy that works.
    pub strategy: Strategy,
    /// Whether FICLONE worked, with the errno if not.
    pub reflink_errno: Option<i32>,
    /// Whether copy_file_range worked (None: not tried because reflink did).
    pub copy_file_range_errno: Option<i32>,
    /// One sentence on why this strategy.
    pub reason: String,
}

/// Why a storage operation failed.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The snapshot is unusable.
    #[error("the snapshot is not usable for clones")]
    Snapshot(#[from] CheckError),
    /// The runtime dir cannot be used.
    #[error("cannot use runtime directory {path}")]
    RuntimeDir {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A forced strategy the filesystem cannot do.
    #[error("strategy {wanted} was asked for, but {reason}")]
    StrategyUnavailable {
        /// Asked for.
        wanted: Strategy,
        /// Why not.
        reason: String,
    },
    /// shared-readonly with a writable drive that is not a scratch drive.
    #[error("shared-readonly mode shares drive {drive_id} between clones, but the snapshot recorded it writable: the VMM would open it read-write. Make the snapshot with the drive read-only (e.g. `wasp snapshot synth --rootfs-read-only`), or use a copying strategy")]
    WritableSharedDrive {
        /// Drive.
        drive_id: String,
    },
    /// Clone ids become directory names.
    #[error("clone id {0:?} is not 1-64 of A-Z a-z 0-9 _ -")]
    BadCloneId(String),
    /// The clone's directory already exists.
    #[error("clone directory {0} already exists: a clone with this id is live, or a crash left it (run reconcile)")]
    CloneExists(String),
    /// Making a drive failed; nothing of the clone is left.
    #[error("cannot make drive {drive_id} of clone {clone_id} from {base} by {strategy}; removed the clone's partial files ({hint})")]
    Copy {
        /// Clone.
        clone_id: String,
        /// Drive.
        drive_id: String,
        /// Base image.
        base: String,
        /// Strategy.
        strategy: Strategy,
        /// What to do.
        hint: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The snapshot is on another filesystem than the runtime dir and each
    /// clone would copy its writable drives (see [`CloneStore::copy_check`]).
    #[error("snapshot {snapshot} is on another filesystem than the runtime dir {runtime_dir}, so reflinks cannot reach it and each clone would copy {bytes_per_clone} bytes ({} MiB) of its writable drives by {strategy}. {hint}, or {allow} to copy anyway", bytes_per_clone.div_ceil(1 << 20))]
    WouldCopy {
        /// The snapshot.
        snapshot: String,
        /// The runtime dir.
        runtime_dir: String,
        /// Bytes each clone would copy.
        bytes_per_clone: u64,
        /// The copying strategy.
        strategy: Strategy,
        /// How to avoid it.
        hint: String,
        /// How to copy anyway (`pass --allow-copy` for `wasp spawn`).
        allow: String,
    },
    /// Removing a clone's directory failed.
    #[error("cannot remove clone directory {path}")]
    Cleanup {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// One drive of a clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloneDrive {
    /// Drive id.
    pub drive_id: String,
    /// The path the VMM opens; the spawn stage bind-mounts `file` there in
    /// the clone's mount namespace.
    pub path_on_host: String,
    /// The clone's own file, or the shared base for read-only drives.
    pub file: PathBuf,
    /// True when `file` is the clone's own.
    pub per_clone: bool,
    /// Read-only (as recorded in the snapshot).
    pub read_only: bool,
}

/// A prepared clone's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloneFiles {
    /// Clone id.
    pub clone_id: String,
    /// `<runtime>/clones/wasp-<id>`.
    pub dir: PathBuf,
    /// How the drives were made.
    pub strategy: Strategy,
    /// The snapshot's memory file, shared (never copied).
    pub memory: PathBuf,
    /// The snapshot's vmstate, shared.
    pub vmstate: PathBuf,
    /// Drives.
    pub drives: Vec<CloneDrive>,
    /// Bytes physically copied for this clone's disks (0 with reflink).
    pub bytes_copied: u64,
    /// Bytes of guest memory copied: always 0.
    pub mem_bytes_copied: u64,
}

/// Clone storage for one snapshot in one runtime directory.
#[derive(Debug, Clone)]
pub struct CloneStore {
    /// The checked snapshot directory, symlinks resolved
    /// ([`snapshot::OpenedSnapshot::dir`]).
    snapshot_dir: PathBuf,
    clones_dir: PathBuf,
    manifest: Manifest,
    /// Each drive's base image as `check` opened it (no symlink followed,
    /// checked through the fd): clone disks are made from these fds, never
    /// by opening the name again.
    bases: BTreeMap<String, Arc<File>>,
    probe: ProbeOutcome,
    strategy: Strategy,
    owner: Option<Owner>,
}

impl CloneStore {
    /// Checks the snapshot (which opens its files once: see
    /// [`snapshot::check`]), creates `<runtime>/clones` and probes once.
    pub fn open(snapshot_dir: &Path, runtime_dir: &Path, mode: Mode) -> Result<Self, StorageError> {
        let report = snapshot::check(snapshot_dir, false)?;
        let manifest = report.manifest;
        let snapshot_dir = report.opened.dir;
        let bases = report.opened.drives;
        let clones_dir = runtime_dir.join(CLONES_SUBDIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&clones_dir)
            .map_err(|source| StorageError::RuntimeDir {
                path: clones_dir.display().to_string(),
                source,
            })?;
        // Probe with the first writable drive (what prepare copies), else
        // any file of the snapshot.
        let writable = manifest.drives.iter().find(|d| !d.read_only);
        let base_path = snapshot_dir.join(writable.map_or(&manifest.memory.file, |d| &d.file));
        let probe = match writable.and_then(|d| bases.get(&d.drive_id)) {
            Some(f) => probe_clone_strategy(f, &base_path, &clones_dir),
            None => File::open(&base_path)
                .and_then(|f| probe_clone_strategy(&f, &base_path, &clones_dir)),
        }
        .map_err(|source| StorageError::RuntimeDir {
            path: clones_dir.display().to_string(),
            source,
        })?;
        let strategy = match mode {
            Mode::Auto => probe.strategy,
            Mode::Force(Strategy::SharedReadonly) => {
                if let Some(d) = manifest
                    .drives
                    .iter()
                    .find(|d| !d.read_only && d.drive_id != "scratch")
                {
                    return Err(StorageError::WritableSharedDrive {
                        drive_id: d.drive_id.clone(),
                    });
                }
                Strategy::SharedReadonly
            }
            Mode::Force(s) => {
                let rank = |s: Strategy| match s {
                    Strategy::Reflink => 0,
                    Strategy::CopyFileRange => 1,
                    Strategy::SparseCopy => 2,
                    Strategy::SharedReadonly => 3,
                };
                if rank(s) < rank(probe.strategy) {
                    return Err(StorageError::StrategyUnavailable {
                        wanted: s,
                        reason: probe.reason.clone(),
                    });
                }
                s
            }
        };
        Ok(Self {
            snapshot_dir,
            clones_dir,
            manifest,
            bases,
            probe,
            strategy,
            owner: None,
        })
    }

    /// Marks every clone dir this store creates as `owner`'s (the state
    /// dir whose records will name the clones), the moment it is created:
    /// reconcile removes only the clone dirs of its own state dir.
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The strategy every clone of this store uses.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The probe's verdict (for doctor, bench and spawn output).
    pub fn probe(&self) -> &ProbeOutcome {
        &self.probe
    }

    /// The snapshot directory.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    /// The snapshot's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// `<runtime>/clones`.
    pub fn clones_dir(&self) -> &Path {
        &self.clones_dir
    }

    /// Bytes each clone's disks copy: the allocated extents of every
    /// writable drive for a copying strategy (what `copy-file-range` and
    /// `sparse-copy` copy), 0 for reflink and shared-readonly.
    pub fn bytes_per_clone(&self) -> io::Result<u64> {
        if matches!(self.strategy, Strategy::Reflink | Strategy::SharedReadonly) {
            return Ok(0);
        }
        self.writable_bytes()
    }

    /// Allocated bytes of every writable drive of the snapshot: what one
    /// clone's disks hold as full copies, whatever the strategy.
    pub fn writable_bytes(&self) -> io::Result<u64> {
        let mut n = 0;
        for d in self.manifest.drives.iter().filter(|d| !d.read_only) {
            if let Some(f) = self.bases.get(&d.drive_id) {
                n += allocated_bytes(f)?;
            }
        }
        Ok(n)
    }

    /// The copy policy of `wasp spawn`: a snapshot on another filesystem
    /// than the runtime dir whose clones would copy their disks is refused
    /// ([`StorageError::WouldCopy`], naming the bytes per clone) unless
    /// `allow_copy`; then `Ok(Some(bytes per clone))` for the caller to
    /// say. `Ok(None)`: nothing is copied, or the snapshot shares the
    /// runtime dir's filesystem (a plain host without reflinks, which
    /// `wasp doctor` reports).
    pub fn copy_check(&self, allow_copy: bool) -> Result<Option<u64>, StorageError> {
        self.copy_check_as(allow_copy, "pass --allow-copy")
    }

    /// [`CloneStore::copy_check`] for a caller whose way to copy anyway is
    /// `allow` (the daemon's: its config key or flag), said in the refusal.
    pub fn copy_check_as(
        &self,
        allow_copy: bool,
        allow: &str,
    ) -> Result<Option<u64>, StorageError> {
        let runtime_err = |source| StorageError::RuntimeDir {
            path: self.clones_dir.display().to_string(),
            source,
        };
        let bytes = self.bytes_per_clone().map_err(runtime_err)?;
        if bytes == 0 {
            return Ok(None);
        }
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev());
        let same_fs = dev(&self.snapshot_dir).map_err(runtime_err)?
            == dev(&self.clones_dir).map_err(runtime_err)?;
        if same_fs {
            return Ok(None);
        }
        if allow_copy {
            return Ok(Some(bytes));
        }
        let runtime_dir = self.clones_dir.parent().unwrap_or(&self.clones_dir);
        let hint = format!(
            "Place it in the runtime dir's reflink store once: `wasp storage init --runtime-dir {}` makes the store if there is none, and `wasp snapshot adopt {}` copies the snapshot into {}; spawn from there",
            runtime_dir.display(),
            self.snapshot_dir.display(),
            runtime_dir.join(SNAPSHOTS_SUBDIR).display()
        );
        Err(StorageError::WouldCopy {
            snapshot: self.snapshot_dir.display().to_string(),
            runtime_dir: runtime_dir.display().to_string(),
            bytes_per_clone: bytes,
            strategy: self.strategy,
            hint,
            allow: allow.to_owned(),
        })
    }

    /// The directory of clone `id`.
    pub fn clone_dir(&self, clone_id: &str) -> PathBuf {
        self.clones_dir.join(format!("{PREFIX}-{clone_id}"))
    }

    /// Makes clone `clone_id`'s files. On failure nothing of the clone is
    /// left.
    pub fn prepare(&self, clone_id: &str) -> Result<CloneFiles, StorageError> {
        if !snapshot::manifest::is_id(clone_id) {
            return Err(StorageError::BadCloneId(clone_id.into()));
        }
        let dir = self.clone_dir(clone_id);
        let made = match &self.owner {
            // Marked before it has its name: a crash never leaves an
            // unmarked clone dir behind.
            Some(o) => o
                .make_marked_dir(&self.clones_dir, &format!("{PREFIX}-{clone_id}"), &[])
                .map(drop),
            None => fs::DirBuilder::new().mode(0o700).create(&dir),
        };
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StorageError::CloneExists(dir.display().to_string()))
            }
            Err(source) => {
                return Err(StorageError::RuntimeDir {
                    path: dir.display().to_string(),
                    source,
                })
            }
        }
        let mut drives = Vec::with_capacity(self.manifest.drives.len());
        let mut bytes_copied = 0u64;
        for d in &self.manifest.drives {
            let base = self.snapshot_dir.join(&d.file);
            if d.read_only {
                // Shared, and bound into the VMM's mount namespace by this
                // path (as the vmstate and memory file are opened by path):
                // `check` verified that root owns every directory along
                // it and no one else can write them, so no other user can
                // rename or swap what the path names.
                drives.push(CloneDrive {
                    drive_id: d.drive_id.clone(),
                    path_on_host: d.path_on_host.clone(),
                    file: base,
                    per_clone: false,
                    read_only: true,
                });
                continue;
            }
            let dest = dir.join(&d.drive_id);
            let tmp = dir.join(format!(".{}.tmp", d.drive_id));
            let made = self
                .base_file(&d.drive_id, d.size)
                .and_then(|src| make_drive(self.strategy, &src, &tmp, d.size));
            let made = made.and_then(|n| {
                fs::rename(&tmp, &dest)?;
                Ok(n)
            });
            match made {
                Ok(n) => bytes_copied += n,
                Err(source) => {
                    let _ = fs::remove_file(&tmp);
                    let _ = fs::remove_dir_all(&dir);
                    return Err(StorageError::Copy {
                        clone_id: clone_id.into(),
                        drive_id: d.drive_id.clone(),
                        base: base.display().to_string(),
                        strategy: self.strategy,
                        hint: copy_hint(&source),
                        source,
                    });
                }
            }
            drives.push(CloneDrive {
                drive_id: d.drive_id.clone(),
                path_on_host: d.path_on_host.clone(),
                file: dest,
                per_clone: true,
                read_only: false,
            });
        }
        Ok(CloneFiles {
            clone_id: clone_id.into(),
            dir,
            strategy: self.strategy,
            memory: self.snapshot_dir.join(&self.manifest.memory.file),
            vmstate: self.snapshot_dir.join(&self.manifest.vmstate.file),
            drives,
            bytes_copied,
            mem_bytes_copied: 0,
        })
    }

    /// The open base image of drive `drive_id`, still of the checked `size`
    /// (fstat on the fd: a base changed in place since the check is
    /// refused, not copied).
    fn base_file(&self, drive_id: &str, size: u64) -> io::Result<Arc<File>> {
        let f = self.bases.get(drive_id).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the check did not open this drive")
        })?;
        let len = f.metadata()?.len();
        if len != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the base image is {len} bytes now, {size} when the snapshot was checked: it changed in place (restore it, or re-create the snapshot)"),
            ));
        }
        Ok(Arc::clone(f))
    }

    /// Removes clone `clone_id`'s directory. A missing directory is fine.
    pub fn cleanup(&self, clone_id: &str) -> Result<(), StorageError> {
        if !snapshot::manifest::is_id(clone_id) {
            return Err(StorageError::BadCloneId(clone_id.into()));
        }
        remove_clone_dir(&self.clone_dir(clone_id))
    }

    /// Removes every `wasp-<id>` directory under `<runtime>/clones` that
    /// carries this store's owner mark ([`CloneStore::with_owner`]) and
    /// whose clone `is_live` says is gone, and leftovers of killed probes.
    /// Without an owner it removes no clone dir. Continues past errors and
    /// reports each.
    pub fn reconcile(&self, is_live: &dyn Fn(&str) -> bool) -> ReconcileReport {
        reconcile_dir(&self.clones_dir, is_live, self.owner.as_ref())
    }
}

/// [`CloneStore::reconcile`] for a clones directory, without a snapshot:
/// only the `wasp-<id>` dirs carrying `owner`'s mark are judged; the others
/// are listed in [`ReconcileReport::not_ours`] and left alone. `owner`'s
/// staging dirs (a crash inside [`Owner::make_marked_dir`]) are removed.
pub fn reconcile_dir(
    clones_dir: &Path,
    is_live: &dyn Fn(&str) -> bool,
    owner: Option<&Owner>,
) -> ReconcileReport {
    let owns = |d: &Path| owner.is_some_and(|o| o.owns(d));
    let staging = owner.map(Owner::staging_prefix);
    let mut r = ReconcileReport::default();
    let Some(entries) = r.list(clones_dir) else {
        return r;
    };
    let clone_prefix = format!("{PREFIX}-");
    let probe_prefix = format!(".{PREFIX}-probe-");
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                r.errors
                    .push(format!("cannot list {}: {e}", clones_dir.display()));
                continue;
            }
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if staging.as_deref().is_some_and(|p| name.starts_with(p)) {
            r.settle(false, path, remove_clone_dir);
        } else if let Some(id) = name.strip_prefix(&clone_prefix) {
            if !owns(&path) {
                r.not_ours.push(path);
                continue;
            }
            r.settle(is_live(id), path, remove_clone_dir);
        } else if let Some(pid) = name.strip_prefix(&probe_prefix) {
            let alive = pid
                .parse::<u32>()
                .map(|p| Path::new(&format!("/proc/{p}")).exists())
                .unwrap_or(true);
            if !alive {
                match fs::remove_file(&path) {
                    Ok(()) => r.removed.push(path),
                    Err(e) => r
                        .errors
                        .push(format!("cannot remove {}: {e}", path.display())),
                }
            }
        }
    }
    r
}

/// Removes clone `clone_id`'s directory `<clones_dir>/wasp-<id>` without
/// an opened snapshot (for a clone adopted from its record): only when it
/// carries `owner`'s mark; a missing directory is fine.
pub fn remove_owned_clone_dir(
    clones_dir: &Path,
    clone_id: &str,
    owner: &Owner,
) -> Result<(), StorageError> {
    if !snapshot::manifest::is_id(clone_id) {
        return Err(StorageError::BadCloneId(clone_id.into()));
    }
    let dir = clones_dir.join(format!("{PREFIX}-{clone_id}"));
    if !dir.exists() {
        return Ok(());
    }
    if !owner.owns(&dir) {
        return Err(StorageError::Cleanup {
            path: dir.display().to_string(),
            source: io::Error::other(
                "it does not carry this state dir's ownership mark; left alone",
            ),
        });
    }
    remove_clone_dir(&dir)
}

fn remove_clone_dir(dir: &Path) -> Result<(), StorageError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StorageError::Cleanup {
            path: dir.display().to_string(),
            source,
        }),
    }
}

fn copy_hint(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            "the runtime directory's filesystem is full: free space, or put the runtime dir on XFS with reflink=1 so clones share blocks".into()
        }
        Some(libc::EIO) => "the disk reported an I/O error: check dmesg and the device".into(),
        _ => "see the cause below".into(),
    }
}

/// Makes `dest` (which must not exist) from the open base image `src` by
/// `strategy`. Returns the bytes physically copied.
pub fn make_drive(strategy: Strategy, src: &File, dest: &Path, size: u64) -> io::Result<u64> {
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)?;
    match strategy {
        Strategy::Reflink => {
            ficlone(&dst, src)?;
            Ok(0)
        }
        Strategy::CopyFileRange => copy_data(src, &dst, true),
        Strategy::SparseCopy => copy_data(src, &dst, false),
        Strategy::SharedReadonly => {
            // Only scratch drives are per-clone in this mode: a fresh,
            // empty (sparse) file of the recorded size.
            dst.set_len(size)?;
            Ok(0)
        }
    }
}

/// Bytes in the allocated extents of `f` (SEEK_DATA/SEEK_HOLE): what
/// `copy-file-range` and `sparse-copy` copy of it.
pub fn allocated_bytes(f: &File) -> io::Result<u64> {
    let len = f.metadata()?.len() as i64;
    let (mut pos, mut n) = (0i64, 0u64);
    while pos < len {
        let Some(start) = seek_data_hole(f, pos, Whence::Data)? else {
            break;
        };
        let end = seek_data_hole(f, start, Whence::Hole)?
            .unwrap_or(len)
            .min(len);
        n += (end - start) as u64;
        pos = end;
    }
    Ok(n)
}

/// Copies the data ranges of `src` (skipping holes found with
/// SEEK_DATA/SEEK_HOLE) into `dst`, which ends up the same length.
fn copy_data(src: &File, dst: &File, use_cfr: bool) -> io::Result<u64> {
    let len = src.metadata()?.len() as i64;
    dst.set_len(len as u64)?;
    let mut copied = 0u64;
    let mut pos = 0i64;
    let mut buf = if use_cfr {
        Vec::new()
    } else {
        vec![0u8; 1 << 20]
    };
    while pos < len {
        let Some(start) = seek_data_hole(src, pos, Whence::Data)? else {
            break;
        };
        let end = seek_data_hole(src, start, Whence::Hole)?
            .unwrap_or(len)
            .min(len);
        let mut off = start;
        while off < end {
            let want = (end - off).min(1 << 30) as usize;
            let n = if use_cfr {
                let (mut so, mut doff) = (off, off);
                copy_file_range(src, &mut so, dst, &mut doff, want)?
            } else {
                let k = want.min(buf.len());
                let n = src.read_at(&mut buf[..k], off as u64)?;
                dst.write_all_at(&buf[..n], off as u64)?;
                n
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the base image shrank during the copy",
                ));
            }
            off += n as i64;
            copied += n as u64;
        }
        pos = end;
    }
    Ok(copied)
}

/// Finds the best strategy for copying the open base image `src` (named
/// `base` in messages) into `dir`, by trying it once on a scratch file:
/// FICLONE, then copy_file_range, else sparse copy. Tries the real base
/// file, so a runtime dir on another filesystem (EXDEV) is detected and
/// explained.
pub fn probe_clone_strategy(src: &File, base: &Path, dir: &Path) -> io::Result<ProbeOutcome> {
    let tmp = dir.join(format!(".{PREFIX}-probe-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let reflink = match ficlone(&dst, src) {
            Ok(()) => ReflinkProbe::Supported,
            Err(e) => ReflinkProbe::Unsupported(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        let errno = match reflink {
            ReflinkProbe::Supported => {
                return Ok(ProbeOutcome {
                    strategy: Strategy::Reflink,
                    reflink_errno: None,
                    copy_file_range_errno: None,
                    reason: format!(
                        "FICLONE works from {} into {}: clone disks share blocks until written",
                        base.display(),
                        dir.display()
                    ),
                })
            }
            ReflinkProbe::Unsupported(e) => e,
        };
        let why_no_reflink = if errno == libc::EXDEV {
            format!(
                "the runtime directory {} is on a different filesystem from the snapshot {} (EXDEV), so reflink is impossible",
                dir.display(),
                base.display()
            )
        } else {
            format!(
                "FICLONE into {} failed: {} ({})",
                dir.display(),
                explain_reflink_errno(errno),
                io::Error::from_raw_os_error(errno)
            )
        };
        dst.set_len(0)?;
        let (mut so, mut doff) = (0i64, 0i64);
        let want = src.metadata()?.len().min(4096) as usize;
        match copy_file_range(src, &mut so, &dst, &mut doff, want) {
            Ok(n) if n > 0 || want == 0 => Ok(ProbeOutcome {
                strategy: Strategy::CopyFileRange,
                reflink_errno: Some(errno),
                copy_file_range_errno: None,
                reason: format!("{why_no_reflink}; falling back to copy_file_range (in-kernel copy)"),
            }),
            Ok(_) => Ok(ProbeOutcome {
                strategy: Strategy::SparseCopy,
                reflink_errno: Some(errno),
                copy_file_range_errno: Some(0),
                reason: format!("{why_no_reflink}; copy_file_range copied nothing, so falling back to a sparse read/write copy"),
            }),
            Err(e) => Ok(ProbeOutcome {
                strategy: Strategy::SparseCopy,
                reflink_errno: Some(errno),
                copy_file_range_errno: e.raw_os_error(),
                reason: format!("{why_no_reflink}; copy_file_range failed too ({e}), so falling back to a sparse read/write copy"),
            }),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn copy_data_skips_holes_and_matches() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let mut f = File::create(&base).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1u8; 5000], 1 << 20).unwrap();
        f.write_all_at(&[2u8; 10], (8 << 20) - 10).unwrap();
        f.flush().unwrap();
        for (i, s) in [Strategy::CopyFileRange, Strategy::SparseCopy]
            .into_iter()
            .enumerate()
        {
            let dest = dir.path().join(format!("d{i}"));
            let n = make_drive(s, &File::open(&base).unwrap(), &dest, 8 << 20).unwrap();
            assert_eq!(fs::read(&dest).unwrap(), fs::read(&base).unwrap(), "{s}");
            // Holes are not copied: far less than the 8 MiB length.
            assert!((5010..(4 << 20)).contains(&n), "{s}: copied {n}");
            // What the copy copied is what the extents say it would.
            assert_eq!(n, allocated_bytes(&File::open(&base).unwrap()).unwrap());
        }
    }

    #[test]
    fn reconcile_removes_only_dead_wasp_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let me = Owner::of_state_dir(state.path()).unwrap();
        let other = tempfile::tempdir().unwrap();
        let them = Owner::of_state_dir(other.path()).unwrap();
        assert_ne!(me, them);
        for n in ["wasp-live", "wasp-dead", "other", ".wasp-probe-999999999"] {
            fs::create_dir(dir.path().join(n)).unwrap();
        }
        for n in ["wasp-live", "wasp-dead"] {
            me.mark(&dir.path().join(n), &[]).unwrap();
        }
        // Another state dir's dead clone, and an unmarked one: not ours.
        for n in ["wasp-theirs", "wasp-unmarked"] {
            fs::create_dir(dir.path().join(n)).unwrap();
        }
        them.mark(&dir.path().join("wasp-theirs"), &[]).unwrap();
        fs::write(dir.path().join("wasp-dead/rootfs"), b"x").unwrap();
        fs::remove_dir(dir.path().join(".wasp-probe-999999999")).unwrap();
        fs::write(dir.path().join(".wasp-probe-999999999"), b"").unwrap();
        let r = reconcile_dir(dir.path(), &|id| id == "live", Some(&me));
        assert_eq!(r.kept, 1);
        assert_eq!(r.not_ours.len(), 2, "{r:?}");
        assert!(dir.path().join("wasp-theirs").exists());
        assert!(dir.path().join("wasp-unmarked").exists());
        assert_eq!(r.removed.len(), 2, "{r:?}");
        assert!(r.errors.is_empty());
        assert!(dir.path().join("wasp-live").exists());
        assert!(dir.path().join("other").exists());
        assert!(!dir.path().join("wasp-dead").exists());
    }

    #[test]
    fn a_marked_dir_appears_whole_and_a_crashed_one_is_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let me = Owner::of_state_dir(state.path()).unwrap();
        let other = tempfile::tempdir().unwrap();
        let them = Owner::of_state_dir(other.path()).unwrap();
        let made = me.make_marked_dir(dir.path(), "wasp-a-0", &[]).unwrap();
        assert!(me.owns(&made));
        assert_eq!(
            fs::metadata(&made).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let again = me.make_marked_dir(dir.path(), "wasp-a-0", &[]).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        // Only the clone dir is left: no staging dir of either call.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["wasp-a-0"]);
        // A crash between making the staging dir and marking it: found by
        // its name, and only by its owner's reconcile.
        let mine = dir.path().join(format!("{}wasp-a-1", me.staging_prefix()));
        let theirs = dir
            .path()
            .join(format!("{}wasp-b-1", them.staging_prefix()));
        fs::create_dir(&mine).unwrap();
        fs::create_dir(&theirs).unwrap();
        let r = reconcile_dir(dir.path(), &|id| id == "a-0", Some(&me));
        assert_eq!(r.removed, vec![mine.clone()], "{r:?}");
        assert!(!mine.exists());
        assert!(theirs.exists());
        assert!(made.exists());
    }
}

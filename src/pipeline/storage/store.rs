//! The reflink store: makes a runtime directory reflink-capable on any
//! host (ext4 has no reflinks) with a sparse image file, formatted XFS with
//! `reflink=1`, attached to a loop device (raw ioctls, autoclear:
//! [`crate::sys::loopdev`]) and mounted on the runtime directory.
//!
//! - [`init`] makes (or re-attaches) it; idempotent: a store already
//!   mounted is reported, not made again. `mkfs.xfs` (package `xfsprogs`)
//!   runs once, on the image file, before anything is attached.
//! - [`reattach`] is what a service calls at start after a reboot: it
//!   mounts an existing image again and makes nothing new.
//! - [`status`] reads it back; [`remove`] unmounts, detaches and deletes,
//!   refusing while clone disks are in it.
//! - [`place_snapshot`] copies a snapshot's files into
//!   `<runtime>/snapshots/<name>` once, so clones reflink from it.
//!
//! Everything it makes is findable after a crash by name: the image is
//! `<parent of runtime dir>/wasp-store-<runtime dir name>.img` (built as
//! `….img.partial`), the filesystem label is `wasp-store`, and the loop
//! device is found from its backing file (`/sys/block/loopN/loop/
//! backing_file`). A crash at any point leaves only things a second `init`
//! or `remove` cleans up: a `.partial` image (removed), a formatted image
//! (re-used or deleted), a loop device (autoclear: gone with the killed
//! process's fd; a bound one nothing mounts is detached).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use super::clone::SNAPSHOTS_SUBDIR;
use super::clone::{allocated_bytes, make_drive, CLONES_SUBDIR};
use super::probe::Strategy;
use crate::paths::PREFIX;
use crate::snapshot::{self, MANIFEST_FILE};
use crate::sys::fs::{flock, FlockMode};
use crate::sys::{loopdev, mount};
use crate::testhook;

/// The store's filesystem label (XFS allows 12 bytes).
pub const LABEL: &str = "wasp-store";
/// The store's own record, in its root.
pub const META_FILE: &str = ".wasp-store.json";
/// The smallest image `mkfs.xfs` formats.
pub const MIN_SIZE: u64 = 300 << 20;
/// The default apparent size of the image (blocks are used only as
/// written).
pub const DEFAULT_SIZE: u64 = 64 << 30;
/// What formatting writes into the image whatever its size (mostly the
/// XFS log, ~65 MiB), and so what the image's own filesystem must have
/// free, plus [`HEADROOM`].
pub const FORMAT_BYTES: u64 = 80 << 20;
/// Free space wanted beyond the snapshot's bytes, in the store and on the
/// image's filesystem.
pub const HEADROOM: u64 = 64 << 20;
/// The package that ships `mkfs.xfs`.
pub const XFS_PACKAGE: &str = "xfsprogs";

/// Why a store operation failed. Nothing half-made is left behind.
#[derive(Debug, Error)]
pub enum StoreError {
    /// `--size` below what XFS formats.
    #[error("--size {size} is too small: mkfs.xfs formats at least {} MiB; give --size 300M or more", MIN_SIZE >> 20)]
    SizeBelowMinimum {
        /// Asked for.
        size: u64,
    },
    /// `--size` below what the snapshot needs.
    #[error("--size {} MiB is too small for snapshot {snapshot}: its files hold {} MiB, and the store needs about {} MiB more for XFS's own metadata and log; give --size {}M or more", size >> 20, need >> 20, (FORMAT_BYTES + HEADROOM) >> 20, (need + FORMAT_BYTES + HEADROOM).div_ceil(1 << 20))]
    SizeTooSmallForSnapshot {
        /// Asked for.
        size: u64,
        /// The snapshot.
        snapshot: String,
        /// The snapshot's allocated bytes.
        need: u64,
    },
    /// The runtime dir is already a mount point of something else.
    #[error("runtime dir {dir} is already a mount point of another filesystem ({fstype} from {source_dev}); `wasp storage init` mounts its store there itself. Unmount it, or pick another --runtime-dir")]
    ForeignMount {
        /// Runtime dir.
        dir: String,
        /// Its filesystem type.
        fstype: String,
        /// Its source.
        source_dev: String,
    },
    /// The runtime dir holds files the mount would hide.
    #[error("runtime dir {dir} is not empty ({example} and {more} more): mounting the store there would hide them. Stop its clones (`wasp kill --all`), move the files away, or pick another --runtime-dir")]
    NotEmpty {
        /// Runtime dir.
        dir: String,
        /// One entry.
        example: String,
        /// How many others.
        more: usize,
    },
    /// A file is where the image goes, and it is not a store image.
    #[error("{0} exists and is not a wasp store image (no XFS superblock labelled `wasp-store`): move it away or pass another --image")]
    NotAStoreImage(String),
    /// The image's filesystem has too little space.
    #[error("the filesystem holding {image} has {} MiB free; making the store needs {} MiB (formatting writes ~{} MiB{}). Free space there, or pass --image on a filesystem with room", free >> 20, need.div_ceil(1 << 20), FORMAT_BYTES >> 20, if *snapshot_bytes > 0 { format!(", the snapshot {} MiB", snapshot_bytes >> 20) } else { String::new() })]
    HostFull {
        /// The image path.
        image: String,
        /// Free bytes there.
        free: u64,
        /// Bytes needed.
        need: u64,
        /// Of which the snapshot's.
        snapshot_bytes: u64,
    },
    /// `mkfs.xfs` is not installed.
    #[error("mkfs.xfs is not installed (looked in $PATH, /usr/sbin, /sbin): install the `{XFS_PACKAGE}` package (apt-get install {XFS_PACKAGE}; dnf install {XFS_PACKAGE})")]
    NoMkfs,
    /// `mkfs.xfs` failed; the image was removed.
    #[error("mkfs.xfs failed on {image} (removed it again): {stderr}")]
    Mkfs {
        /// Image.
        image: String,
        /// What mkfs printed.
        stderr: String,
    },
    /// The store has clone disks in it.
    #[error("the store at {dir} holds {count} clone dir(s) (e.g. {example}): stop those clones first (`wasp kill --all`, or `wasp reconcile` for a crashed run's leftovers)")]
    InUse {
        /// Runtime dir.
        dir: String,
        /// Clone dirs.
        count: usize,
        /// One of them.
        example: String,
    },
    /// `remove` on a runtime dir whose mount is not a wasp store.
    #[error("runtime dir {dir} is a mount of {fstype} from {source_dev}, not a wasp store: `wasp storage remove` removes only what `wasp storage init` made")]
    NotAStore {
        /// Runtime dir.
        dir: String,
        /// Its filesystem type.
        fstype: String,
        /// Its source.
        source_dev: String,
    },
    /// A snapshot does not fit in the store.
    #[error("the store at {dir} has {} MiB free, and snapshot {snapshot} needs {} MiB: remove other placed snapshots or make a bigger store (`wasp storage remove`, then `wasp storage init --size …`)", free >> 20, need.div_ceil(1 << 20))]
    StoreFull {
        /// Runtime dir.
        dir: String,
        /// The snapshot.
        snapshot: String,
        /// Free bytes.
        free: u64,
        /// Needed.
        need: u64,
    },
    /// A different snapshot of the same name is in the store.
    #[error("{0} is in the store already with another manifest: remove it (it is a copy) or rename the snapshot directory")]
    PlacedDiffers(String),
    /// The snapshot cannot be read.
    #[error("cannot use snapshot {dir}")]
    Snapshot {
        /// The snapshot.
        dir: String,
        /// Why.
        #[source]
        source: Box<snapshot::CheckError>,
    },
    /// One step failed (`what` names it and the path).
    #[error("cannot {what}")]
    Io {
        /// The step.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn io_step(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// What `init` is asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The runtime directory to make reflink-capable (the mount point).
    pub runtime_dir: PathBuf,
    /// The image file (default: [`default_image`]).
    pub image: Option<PathBuf>,
    /// Apparent size of the image.
    pub size: u64,
    /// A snapshot to check the size against and place in the store.
    pub snapshot: Option<PathBuf>,
}

/// What `init` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitAction {
    /// Formatted a new image and mounted it.
    Created,
    /// Mounted an existing image again.
    Reattached,
    /// The store was mounted already; nothing changed.
    AlreadyMounted,
}

/// `init`'s report.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// What happened.
    pub action: InitAction,
    /// The store as it is now.
    pub status: StoreStatus,
    /// The snapshot placed in the store, if one was given.
    pub placed: Option<Placement>,
}

/// The store's own record, written in its root when it is made.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    /// The image file.
    image: PathBuf,
    /// Bytes the empty filesystem used (statfs), to tell the space clone
    /// disks share from the space they use.
    empty_used: u64,
}

/// `wasp storage status`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    /// The runtime dir (mount point).
    pub runtime_dir: PathBuf,
    /// Whether the store is mounted there.
    pub mounted: bool,
    /// The backing image.
    pub image: PathBuf,
    /// The loop device, when attached.
    pub loop_device: Option<PathBuf>,
    /// The image's apparent size.
    pub image_size: u64,
    /// Bytes the image really takes on its host filesystem.
    pub image_allocated: u64,
    /// The store's filesystem size, used and free bytes (statfs).
    pub fs_size: u64,
    /// Used.
    pub fs_used: u64,
    /// Free.
    pub fs_free: u64,
    /// Clone disks (files under `clones/wasp-*/`).
    pub clone_disks: usize,
    /// What those disks would take as full copies (their allocated bytes).
    pub clone_disk_bytes: u64,
    /// Bytes the clone disks and placed snapshots share (their allocated
    /// bytes minus what the filesystem really uses for data).
    pub shared_bytes: u64,
    /// Snapshots placed in the store.
    pub snapshots: Vec<PathBuf>,
}

/// Where a snapshot ended up.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    /// The snapshot directory clones should be spawned from.
    pub dir: PathBuf,
    /// Bytes copied into the store now (0: it was there already).
    pub bytes_copied: u64,
    /// Why nothing was copied, if nothing was.
    pub note: Option<String>,
}

/// `remove`'s report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoveReport {
    /// Unmounted the runtime dir.
    pub unmounted: bool,
    /// Loop devices detached (besides the one the unmount let go).
    pub detached: Vec<PathBuf>,
    /// Files deleted (the image, a leftover `.partial`).
    pub deleted: Vec<PathBuf>,
    /// Placed snapshots deleted with the store (copies).
    pub snapshots_deleted: Vec<PathBuf>,
}

/// `<parent>/wasp-store-<name>.img` for runtime dir `<parent>/<name>`.
pub fn default_image(runtime_dir: &Path) -> PathBuf {
    let name = runtime_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    runtime_dir
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!("{PREFIX}-store-{name}.img"))
}

fn partial_of(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// One line of /proc/self/mountinfo, the parts the store reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point.
    pub mount_point: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Source (device).
    pub source: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount on exactly `dir` (the last one, if mounts are stacked), from
/// the text of /proc/self/mountinfo.
pub fn mount_at(mountinfo: &str, dir: &Path) -> Option<MountEntry> {
    mountinfo
        .lines()
        .rev()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let source = post.next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mp)),
                fstype: fstype.into(),
                source: unescape(source),
            })
        })
        .find(|m| m.mount_point == dir)
}

fn mountinfo() -> Result<String, StoreError> {
    fs::read_to_string("/proc/self/mountinfo").map_err(io_step("read /proc/self/mountinfo"))
}

/// Whether the image file starts with an XFS superblock labelled
/// [`LABEL`].
pub fn is_store_image(image: &Path) -> io::Result<bool> {
    let mut f = File::open(image)?;
    let mut sb = [0u8; 120];
    let mut n = 0;
    while n < sb.len() {
        let k = f.read(&mut sb[n..])?;
        if k == 0 {
            return Ok(false);
        }
        n += k;
    }
    // struct xfs_dsb: sb_magicnum at 0, sb_fname[12] at 108.
    let label = &sb[108..120];
    let end = label.iter().position(|&c| c == 0).unwrap_or(12);
    Ok(&sb[..4] == b"XFSB" && &label[..end] == LABEL.as_bytes())
}

/// The loop device number of `/dev/loopN`.
fn loop_number(source: &str) -> Option<u32> {
    source.strip_prefix("/dev/loop")?.parse().ok()
}

/// A mount that is a wasp store: an XFS on a loop device whose backing
/// file is a `wasp-store-*.img` or carries the store's label. Returns the
/// image.
fn store_image_of(m: &MountEntry) -> Option<PathBuf> {
    if m.fstype != "xfs" {
        return None;
    }
    let n = loop_number(&m.source)?;
    let (_, file) = loopdev::attached()
        .ok()?
        .into_iter()
        .find(|(k, _)| *k == n)?;
    // The default name, or any name `--image` gave: the label `init`
    // formats every store with.
    let name = file.file_name()?.to_string_lossy().into_owned();
    let named = name.starts_with(&format!("{PREFIX}-store-")) && name.ends_with(".img");
    (named || is_store_image(&file).unwrap_or(false)).then_some(file)
}

/// Finds `mkfs.xfs`: `$PATH`, then the sbin directories a non-login root
/// shell may lack.
pub fn find_mkfs_xfs() -> Result<PathBuf, StoreError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join("mkfs.xfs"))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or(StoreError::NoMkfs)
}

/// Bytes the snapshot's files hold (allocated extents), what placing it in
/// the store copies.
pub fn snapshot_bytes(dir: &Path) -> Result<u64, StoreError> {
    let r = snapshot::check(dir, false).map_err(|source| StoreError::Snapshot {
        dir: dir.display().to_string(),
        source: Box::new(source),
    })?;
    let mut n = 0;
    for (_, e) in r.manifest.files() {
        let p = r.opened.dir.join(&e.file);
        let f = File::open(&p).map_err(io_step(format!("open {}", p.display())))?;
        n += allocated_bytes(&f).map_err(io_step(format!("read extents of {}", p.display())))?;
    }
    Ok(n)
}

fn statfs(dir: &Path) -> Result<(u64, u64, u64), StoreError> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(|e| StoreError::Io {
        what: format!("statfs {}", dir.display()),
        source: e.into(),
    })?;
    let f = s.fragment_size() as u64;
    let size = s.blocks() as u64 * f;
    let free = s.blocks_available() as u64 * f;
    let used = (s.blocks() as u64 - s.blocks_free() as u64) * f;
    Ok((size, used, free))
}

/// Holds an exclusive `flock` on the image's directory while a store is
/// made or removed, so two `init`s never race.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let f = File::open(dir).map_err(io_step(format!("open {}", dir.display())))?;
    flock(&f, FlockMode::Exclusive, true).map_err(io_step(format!("lock {}", dir.display())))?;
    Ok(f)
}

/// Detaches every loop device backed by `image` that nothing mounts (what
/// a crash between attach and mount could leave if autoclear did not).
fn detach_stale(image: &Path, info: &str) -> Result<Vec<PathBuf>, StoreError> {
    let deleted = {
        let mut s = image.as_os_str().to_owned();
        s.push(" (deleted)");
        PathBuf::from(s)
    };
    let mut out = Vec::new();
    for (n, file) in loopdev::attached().map_err(io_step("list loop devices in /sys/block"))? {
        if file != image && file != deleted {
            continue;
        }
        let dev = loopdev::device_path(n);
        let mounted = info
            .lines()
            .any(|l| l.split(" - ").nth(1).and_then(|p| p.split(' ').nth(1)) == dev.to_str());
        if !mounted && loopdev::detach(n).map_err(io_step(format!("detach {}", dev.display())))? {
            out.push(dev);
        }
    }
    Ok(out)
}

fn remove_file_if(p: &Path, deleted: &mut Vec<PathBuf>) -> Result<(), StoreError> {
    match fs::remove_file(p) {
        Ok(()) => {
            deleted.push(p.to_owned());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_step(format!("remove {}", p.display()))(e)),
    }
}

fn canonical_dir(dir: &Path, create: bool) -> Result<PathBuf, StoreError> {
    if create {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_step(format!("create runtime dir {}", dir.display())))?;
    }
    fs::canonicalize(dir).map_err(io_step(format!("resolve runtime dir {}", dir.display())))
}

/// The runtime dir resolved; one that does not exist is taken as given
/// (nothing can be mounted on it), so `status` and `remove` say there is
/// no store instead of failing.
fn resolve_dir(dir: &Path) -> Result<PathBuf, StoreError> {
    match fs::canonicalize(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(std::path::absolute(dir)
            .map_err(io_step(format!("resolve runtime dir {}", dir.display())))?),
        r => r.map_err(io_step(format!("resolve runtime dir {}", dir.display()))),
    }
}

fn image_path(runtime_dir: &Path, image: Option<&Path>) -> Result<PathBuf, StoreError> {
    let image = image.map_or_else(|| default_image(runtime_dir), Path::to_path_buf);
    let parent = image.parent().unwrap_or(Path::new("/"));
    let parent = fs::canonicalize(parent).map_err(io_step(format!(
        "resolve the image's directory {}",
        parent.display()
    )))?;
    Ok(parent.join(image.file_name().unwrap_or_default()))
}

/// Refuses a runtime dir holding anything but empty directories.
fn check_empty(dir: &Path) -> Result<(), StoreError> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir).map_err(io_step(format!("list {}", dir.display())))? {
        let e = e.map_err(io_step(format!("list {}", dir.display())))?;
        let p = e.path();
        let empty_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false)
            && fs::read_dir(&p)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !empty_dir {
            found.push(p);
        }
    }
    match found.first() {
        None => Ok(()),
        Some(p) => Err(StoreError::NotEmpty {
            dir: dir.display().to_string(),
            example: p.display().to_string(),
            more: found.len() - 1,
        }),
    }
}

/// Makes `runtime_dir` a reflink store (see the module docs), or finds it
/// made already. A failure leaves nothing it made.
pub fn init(o: &InitOptions) -> Result<InitReport, StoreError> {
    if o.size < MIN_SIZE {
        return Err(StoreError::SizeBelowMinimum { size: o.size });
    }
    let snap_bytes = match &o.snapshot {
        Some(s) => {
            let need = snapshot_bytes(s)?;
            if o.size < need + FORMAT_BYTES + HEADROOM {
                return Err(StoreError::SizeTooSmallForSnapshot {
                    size: o.size,
                    snapshot: s.display().to_string(),
                    need,
                });
            }
            need
        }
        None => 0,
    };
    let dir = canonical_dir(&o.runtime_dir, true)?;
    let image = image_path(&dir, o.image.as_deref())?;
    let _lock = lock_dir(image.parent().unwrap_or(Path::new("/")))?;
    let info = mountinfo()?;
    let action = match mount_at(&info, &dir) {
        Some(m) => match store_image_of(&m) {
            Some(_) => InitAction::AlreadyMounted,
            None => {
                return Err(StoreError::ForeignMount {
                    dir: dir.display().to_string(),
                    fstype: m.fstype,
                    source_dev: m.source,
                })
            }
        },
        None => {
            check_empty(&dir)?;
            let partial = partial_of(&image);
            remove_file_if(&partial, &mut Vec::new())?;
            detach_stale(&image, &info)?;
            let created = match fs::symlink_metadata(&image) {
                Ok(_) => {
                    if !is_store_image(&image)
                        .map_err(io_step(format!("read {}", image.display())))?
                    {
                        return Err(StoreError::NotAStoreImage(image.display().to_string()));
                    }
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    format_image(&image, o.size, snap_bytes)?;
                    true
                }
                Err(e) => return Err(io_step(format!("stat {}", image.display()))(e)),
            };
            if let Err(e) = attach_and_mount(&image, &dir) {
                if created {
                    let _ = fs::remove_file(&image);
                }
                return Err(e);
            }
            if created {
                InitAction::Created
            } else {
                InitAction::Reattached
            }
        }
    };
    finish_layout(&dir, &image)?;
    let placed = match &o.snapshot {
        Some(s) => Some(place_snapshot(s, &dir)?),
        None => None,
    };
    Ok(InitReport {
        action,
        status: status_of(&dir, Some(&image))?,
        placed,
    })
}

/// Makes the sparse image and formats it, under a `.partial` name renamed
/// into place only when formatted.
fn format_image(image: &Path, size: u64, snap_bytes: u64) -> Result<(), StoreError> {
    let parent = image.parent().unwrap_or(Path::new("/"));
    let (_, _, free) = statfs(parent)?;
    let need = FORMAT_BYTES + HEADROOM + snap_bytes;
    if free < need {
        return Err(StoreError::HostFull {
            image: image.display().to_string(),
            free,
            need,
            snapshot_bytes: snap_bytes,
        });
    }
    let mkfs = find_mkfs_xfs()?;
    let partial = partial_of(image);
    let made = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(io_step(format!("create {}", partial.display())))?;
        f.set_len(size).map_err(io_step(format!(
            "size {} to {size} bytes",
            partial.display()
        )))?;
        drop(f);
        let out = Command::new(&mkfs)
            .args(["-q", "-m", "reflink=1", "-L", LABEL])
            .arg(&partial)
            .output()
            .map_err(io_step(format!("run {}", mkfs.display())))?;
        if !out.status.success() {
            return Err(StoreError::Mkfs {
                image: partial.display().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io_step(format!("sync {}", partial.display())))?;
        fs::rename(&partial, image).map_err(io_step(format!(
            "rename {} to {}",
            partial.display(),
            image.display()
        )))?;
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_step(format!("sync {}", parent.display())))
    })();
    if made.is_err() {
        let _ = fs::remove_file(&partial);
    }
    made?;
    testhook::point("storage-formatted");
    Ok(())
}

/// Attaches `image` to a loop device (autoclear) and mounts it on `dir`.
/// The device is held open only until the mount: from then on the mount
/// holds it, and an unmount detaches it.
fn attach_and_mount(image: &Path, dir: &Path) -> Result<(), StoreError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(io_step(format!("open {}", image.display())))?;
    let dev = loopdev::attach(&f, loopdev::LO_FLAGS_AUTOCLEAR, image).map_err(io_step(format!(
        "attach {} to a loop device (LOOP_CTL_GET_FREE, LOOP_CONFIGURE)",
        image.display()
    )))?;
    drop(f);
    testhook::point("storage-attached");
    let flags = libc::MS_NOATIME | libc::MS_NODEV | libc::MS_NOSUID;
    mount::mount_device(&dev.path(), dir, c"xfs", flags, &CString::default()).map_err(io_step(
        format!(
            "mount {} (from {}) on {} as xfs",
            dev.path().display(),
            image.display(),
            dir.display()
        ),
    ))?;
    drop(dev);
    Ok(())
}

/// The store's sub-directories and record (made again if a crash came
/// between the mount and them).
fn finish_layout(dir: &Path, image: &Path) -> Result<(), StoreError> {
    let meta = dir.join(META_FILE);
    if !meta.exists() {
        let (_, used, _) = statfs(dir)?;
        let m = Meta {
            image: image.to_owned(),
            empty_used: used,
        };
        let bytes = serde_json::to_vec_pretty(&m).expect("plain struct");
        crate::state::write_atomic(dir, META_FILE, &bytes, 0o644)
            .map_err(io_step(format!("write {}", meta.display())))?;
    }
    for (sub, mode) in [(CLONES_SUBDIR, 0o700), (SNAPSHOTS_SUBDIR, 0o755)] {
        let p = dir.join(sub);
        match fs::DirBuilder::new().mode(mode).create(&p) {
            Ok(()) => fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                .map_err(io_step(format!("chmod {}", p.display())))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_step(format!("create {}", p.display()))(e)),
        }
    }
    Ok(())
}

/// What [`reattach`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reattach {
    /// The store was mounted already.
    AlreadyMounted,
    /// The image was attached and mounted again.
    Reattached,
    /// There is no store image for this runtime dir: nothing to do.
    NoStore,
}

/// After a reboot: mounts the store image of `runtime_dir` again (the
/// default image, or `image`), makes nothing new. `wasp storage init`
/// does the same when the image exists; a daemon calls this at start.
pub fn reattach(runtime_dir: &Path, image: Option<&Path>) -> Result<Reattach, StoreError> {
    let dir = resolve_dir(runtime_dir)?;
    let image = match image_path(&dir, image) {
        Ok(i) => i,
        // Not even the image's directory exists: no store.
        Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Reattach::NoStore)
        }
        Err(e) => return Err(e),
    };
    let _lock = lock_dir(image.parent().unwrap_or(Path::new("/")))?;
    let info = mountinfo()?;
    if let Some(m) = mount_at(&info, &dir) {
        return match store_image_of(&m) {
            Some(_) => Ok(Reattach::AlreadyMounted),
            None => Err(StoreError::ForeignMount {
                dir: dir.display().to_string(),
                fstype: m.fstype,
                source_dev: m.source,
            }),
        };
    }
    if !image.exists() {
        return Ok(Reattach::NoStore);
    }
    if !is_store_image(&image).map_err(io_step(format!("read {}", image.display())))? {
        return Err(StoreError::NotAStoreImage(image.display().to_string()));
    }
    let dir = canonical_dir(&dir, true)?;
    check_empty(&dir)?;
    detach_stale(&image, &info)?;
    attach_and_mount(&image, &dir)?;
    finish_layout(&dir, &image)?;
    Ok(Reattach::Reattached)
}

/// The store at `runtime_dir`: `Ok(None)` when none is mounted there and
/// no image exists for it.
pub fn status(runtime_dir: &Path, image: Option<&Path>) -> Result<Option<StoreStatus>, StoreError> {
    let dir = resolve_dir(runtime_dir)?;
    let info = mountinfo()?;
    match mount_at(&info, &dir) {
        Some(m) => match store_image_of(&m) {
            Some(img) => status_of(&dir, Some(&img)).map(Some),
            None => Err(StoreError::NotAStore {
                dir: dir.display().to_string(),
                fstype: m.fstype,
                source_dev: m.source,
            }),
        },
        None => {
            let img = match image_path(&dir, image) {
                Ok(i) => i,
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            if img.exists() {
                status_of(&dir, Some(&img)).map(Some)
            } else {
                Ok(None)
            }
        }
    }
}

fn allocated(meta: &fs::Metadata) -> u64 {
    meta.blocks() * 512
}

fn status_of(dir: &Path, image: Option<&Path>) -> Result<StoreStatus, StoreError> {
    let info = mountinfo()?;
    let m = mount_at(&info, dir);
    let image = match (image, m.as_ref().and_then(store_image_of)) {
        (_, Some(i)) => i,
        (Some(i), None) => i.to_owned(),
        (None, None) => default_image(dir),
    };
    let img_meta = fs::metadata(&image).ok();
    let mut st = StoreStatus {
        runtime_dir: dir.to_owned(),
        mounted: m.is_some(),
        loop_device: m
            .as_ref()
            .and_then(|m| loop_number(&m.source))
            .map(loopdev::device_path),
        image_size: img_meta.as_ref().map_or(0, |m| m.len()),
        image_allocated: img_meta.as_ref().map_or(0, allocated),
        image,
        fs_size: 0,
        fs_used: 0,
        fs_free: 0,
        clone_disks: 0,
        clone_disk_bytes: 0,
        shared_bytes: 0,
        snapshots: Vec::new(),
    };
    if !st.mounted {
        return Ok(st);
    }
    (st.fs_size, st.fs_used, st.fs_free) = statfs(dir)?;
    let mut logical = 0u64;
    let clones = dir.join(CLONES_SUBDIR);
    for c in read_dir_or_empty(&clones)? {
        if !c
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{PREFIX}-"))
        {
            continue;
        }
        for f in read_dir_or_empty(&c.path())? {
            let Ok(meta) = f.metadata() else { continue };
            if meta.is_file() && !f.file_name().to_string_lossy().starts_with('.') {
                st.clone_disks += 1;
                st.clone_disk_bytes += allocated(&meta);
            }
        }
    }
    logical += st.clone_disk_bytes;
    for s in read_dir_or_empty(&dir.join(SNAPSHOTS_SUBDIR))? {
        let p = s.path();
        if !p.join(MANIFEST_FILE).exists() {
            continue;
        }
        for f in read_dir_or_empty(&p)? {
            if let Ok(meta) = f.metadata() {
                if meta.is_file() {
                    logical += allocated(&meta);
                }
            }
        }
        st.snapshots.push(p);
    }
    st.snapshots.sort();
    let empty_used = fs::read(dir.join(META_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
        .map_or(0, |m| m.empty_used);
    let data_used = st.fs_used.saturating_sub(empty_used);
    st.shared_bytes = logical.saturating_sub(data_used);
    Ok(st)
}

fn read_dir_or_empty(p: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    match fs::read_dir(p) {
        Ok(d) => d
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_step(format!("list {}", p.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_step(format!("list {}", p.display()))(e)),
    }
}

/// Unmounts the store at `runtime_dir`, detaches its loop device and
/// deletes its image (and the snapshot copies placed in it). Refuses while
/// clone dirs are in it. Also cleans up what a crashed `init` left (a
/// `.partial` image, an unmounted image, a bound loop device). Nothing
/// there: an empty report.
pub fn remove(runtime_dir: &Path, image: Option<&Path>) -> Result<RemoveReport, StoreError> {
    let dir = resolve_dir(runtime_dir)?;
    let info = mountinfo()?;
    let mut r = RemoveReport::default();
    let mounted = match mount_at(&info, &dir) {
        Some(m) => match store_image_of(&m) {
            Some(img) => Some(img),
            None => {
                return Err(StoreError::NotAStore {
                    dir: dir.display().to_string(),
                    fstype: m.fstype,
                    source_dev: m.source,
                })
            }
        },
        None => None,
    };
    let image = match (&mounted, image) {
        (Some(i), _) => i.clone(),
        (None, i) => image_path(&dir, i)?,
    };
    let _lock = lock_dir(image.parent().unwrap_or(Path::new("/")))?;
    if mounted.is_some() {
        let busy: Vec<_> = read_dir_or_empty(&dir.join(CLONES_SUBDIR))?
            .into_iter()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{PREFIX}-"))
            })
            .map(|e| e.path())
            .collect();
        if let Some(first) = busy.first() {
            return Err(StoreError::InUse {
                dir: dir.display().to_string(),
                count: busy.len(),
                example: first.display().to_string(),
            });
        }
        r.snapshots_deleted = status_of(&dir, Some(&image))?.snapshots;
        mount::unmount(&dir, 0).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EBUSY) {
                " (a process has files open in it: `fuser -vm` names it)"
            } else {
                ""
            };
            StoreError::Io {
                what: format!("unmount {}{hint}", dir.display()),
                source: e,
            }
        })?;
        r.unmounted = true;
    }
    r.detached = detach_stale(&image, &mountinfo()?)?;
    remove_file_if(&partial_of(&image), &mut r.deleted)?;
    if image.exists() {
        if !is_store_image(&image).map_err(io_step(format!("read {}", image.display())))? {
            return Err(StoreError::NotAStoreImage(image.display().to_string()));
        }
        remove_file_if(&image, &mut r.deleted)?;
    }
    Ok(r)
}

/// Whether `runtime_dir` is a mounted wasp store.
pub fn is_store(runtime_dir: &Path) -> bool {
    let Ok(dir) = fs::canonicalize(runtime_dir) else {
        return false;
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mount_at(&info, &dir)
        .and_then(|m| store_image_of(&m))
        .is_some()
}

/// Places the snapshot at `snapshot_dir` in the store at `runtime_dir`:
/// copies its files (allocated extents only) once into
/// `<runtime>/snapshots/<name>`, so clone disks reflink from it. A
/// snapshot on the store's filesystem already, or placed before (same
/// manifest), is not copied again; without a store at `runtime_dir`
/// nothing is done (the `note` says so). A failed copy leaves nothing.
pub fn place_snapshot(snapshot_dir: &Path, runtime_dir: &Path) -> Result<Placement, StoreError> {
    let unchanged = |note: String| Placement {
        dir: snapshot_dir.to_owned(),
        bytes_copied: 0,
        note: Some(note),
    };
    if !is_store(runtime_dir) {
        return Ok(unchanged(format!(
            "{} is not a wasp store (`wasp storage init` makes one); the snapshot stays where it is",
            runtime_dir.display()
        )));
    }
    let dir = canonical_dir(runtime_dir, false)?;
    let checked = snapshot::check(snapshot_dir, false).map_err(|source| StoreError::Snapshot {
        dir: snapshot_dir.display().to_string(),
        source: Box::new(source),
    })?;
    let src = checked.opened.dir.clone();
    let dev_of = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.dev())
            .map_err(io_step(format!("stat {}", p.display())))
    };
    if dev_of(&src)? == dev_of(&dir)? {
        return Ok(Placement {
            dir: src,
            bytes_copied: 0,
            note: Some("the snapshot is in the store already".into()),
        });
    }
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    let snaps = dir.join(SNAPSHOTS_SUBDIR);
    let dest = snaps.join(&name);
    let manifest_bytes = fs::read(src.join(MANIFEST_FILE)).map_err(io_step(format!(
        "read {}",
        src.join(MANIFEST_FILE).display()
    )))?;
    if dest.exists() {
        return if fs::read(dest.join(MANIFEST_FILE)).ok().as_deref() == Some(&manifest_bytes[..]) {
            Ok(Placement {
                dir: dest,
                bytes_copied: 0,
                note: Some("placed in the store before (same manifest)".into()),
            })
        } else {
            Err(StoreError::PlacedDiffers(dest.display().to_string()))
        };
    }
    let need = snapshot_bytes(&src)?;
    let (_, _, free) = statfs(&dir)?;
    if free < need + HEADROOM {
        return Err(StoreError::StoreFull {
            dir: dir.display().to_string(),
            snapshot: src.display().to_string(),
            free,
            need: need + HEADROOM,
        });
    }
    sweep_placing(&snaps);
    let tmp = snaps.join(format!(".{PREFIX}-placing-{}-{name}", std::process::id()));
    let copied = (|| {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)))
            .map_err(io_step(format!("create {}", tmp.display())))?;
        let mut copied = 0;
        for (_, e) in checked.manifest.files() {
            let from = src.join(&e.file);
            let to = tmp.join(&e.file);
            let f = File::open(&from).map_err(io_step(format!("open {}", from.display())))?;
            let n = make_drive(Strategy::CopyFileRange, &f, &to, e.size)
                .or_else(|_| {
                    let _ = fs::remove_file(&to);
                    make_drive(Strategy::SparseCopy, &f, &to, e.size)
                })
                .map_err(io_step(format!(
                    "copy {} to {}",
                    from.display(),
                    to.display()
                )))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o444))
                .map_err(io_step(format!("chmod {}", to.display())))?;
            copied += n;
        }
        crate::state::write_atomic(&tmp, MANIFEST_FILE, &manifest_bytes, 0o644).map_err(
            io_step(format!("write {}", tmp.join(MANIFEST_FILE).display())),
        )?;
        fs::rename(&tmp, &dest).map_err(io_step(format!(
            "rename {} to {}",
            tmp.display(),
            dest.display()
        )))?;
        Ok(copied)
    })();
    match copied {
        Ok(bytes_copied) => Ok(Placement {
            dir: dest,
            bytes_copied,
            note: None,
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Removes placing dirs whose process is gone.
fn sweep_placing(snaps: &Path) {
    let prefix = format!(".{PREFIX}-placing-");
    let Ok(entries) = fs::read_dir(snaps) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Parses a size: bytes, or a number with `K`, `M`, `G`, `T` (powers of
/// 1024; an optional trailing `iB`/`B`).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_package_and_the_sizes() {
        let e = StoreError::NoMkfs.to_string();
        assert!(e.contains("install the `xfsprogs` package"), "{e}");
        let e = StoreError::SizeTooSmallForSnapshot {
            size: 400 << 20,
            snapshot: "/s".into(),
            need: 512 << 20,
        }
        .to_string();
        assert!(
            e.contains("--size 400 MiB is too small for snapshot /s: its files hold 512 MiB"),
            "{e}"
        );
        assert!(e.contains("give --size 656M or more"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64G"), Some(64 << 30));
        assert_eq!(parse_size("300M"), Some(300 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn mountinfo_finds_the_last_mount_on_a_dir() {
        let info = "22 1 8:1 / / rw - ext4 /dev/vda rw\n\
                    90 22 7:3 / /var/lib/wasp rw,noatime - xfs /dev/loop3 rw\n\
                    91 22 0:50 / /var/lib/my\\040dir rw - tmpfs tmpfs rw\n";
        let m = mount_at(info, Path::new("/var/lib/wasp")).unwrap();
        assert_eq!(
            (m.fstype.as_str(), m.source.as_str()),
            ("xfs", "/dev/loop3")
        );
        let m = mount_at(info, Path::new("/var/lib/my dir")).unwrap();
        assert_eq!(m.fstype, "tmpfs");
        assert!(mount_at(info, Path::new("/var/lib")).is_none());
        assert_eq!(loop_number("/dev/loop3"), Some(3));
        assert_eq!(loop_number("/dev/vda"), None);
    }

    #[test]
    fn default_image_sits_beside_the_runtime_dir() {
        assert_eq!(
            default_image(Path::new("/var/lib/wasp")),
            Path::new("/var/lib/wasp-store-wasp.img")
        );
        assert_eq!(
            partial_of(Path::new("/a/wasp-store-x.img")),
            Path::new("/a/wasp-store-x.img.partial")
        );
    }

    #[test]
    fn a_plain_file_is_not_a_store_image() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        fs::write(&p, vec![0u8; 4096]).unwrap();
        assert!(!is_store_image(&p).unwrap());
        let mut sb = vec![0u8; 4096];
        sb[..4].copy_from_slice(b"XFSB");
        sb[108..118].copy_from_slice(LABEL.as_bytes());
        fs::write(&p, &sb).unwrap();
        assert!(is_store_image(&p).unwrap());
    }

    #[test]
    fn a_non_empty_runtime_dir_is_refused_naming_an_entry() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("clones")).unwrap();
        check_empty(t.path()).unwrap();
        fs::write(t.path().join("clones/x"), b"").unwrap();
        let e = check_empty(t.path()).unwrap_err().to_string();
        assert!(e.contains("clones") && e.contains("not empty"), "{e}");
    }
}

//! Probing a directory's filesystem for the best per-clone disk strategy.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use crate::sys::fs::ficlone;

/// How a clone's writable disk is made, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// FICLONE reflink: O(1), blocks shared until written.
    Reflink,
    /// copy_file_range: in-kernel (or server-side) copy.
    CopyFileRange,
    /// Read/write copy that skips holes (SEEK_DATA/SEEK_HOLE).
    SparseCopy,
    /// The base disk is shared read-only; opt-in only.
    SharedReadonly,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Reflink => "reflink",
            Strategy::CopyFileRange => "copy-file-range",
            Strategy::SparseCopy => "sparse-copy",
            Strategy::SharedReadonly => "shared-readonly",
        })
    }
}

/// Result of probing reflink support in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReflinkProbe {
    /// FICLONE worked.
    Supported,
    /// FICLONE failed with this errno (EOPNOTSUPP, EINVAL, EXDEV, …).
    Unsupported(i32),
}

/// Tries FICLONE between two scratch files inside `dir` and removes them.
pub fn probe_reflink(dir: &Path) -> io::Result<ReflinkProbe> {
    fs::create_dir_all(dir)?;
    let pid = std::process::id();
    let a = dir.join(format!(".wasp-reflink-probe-{pid}-a"));
    let b = dir.join(format!(".wasp-reflink-probe-{pid}-b"));
    let result = (|| {
        let mut src = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&a)?;
        src.write_all(&[0x5a; 4096])?;
        src.sync_all()?;
        let dst = File::create(&b)?;
        Ok(match ficlone(&dst, &src) {
            Ok(()) => ReflinkProbe::Supported,
            Err(e) => ReflinkProbe::Unsupported(e.raw_os_error().unwrap_or(libc::EIO)),
        })
    })();
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    result
}

/// The strategy clone disks would use in `dir` (for `wasp doctor`): probes
/// FICLONE and then copy_file_range from a scratch base file made inside
/// `dir`, as [`super::CloneStore::open`] does with the real base. Removes
/// its scratch files.
pub fn probe_dir_strategy(dir: &Path) -> io::Result<super::ProbeOutcome> {
    fs::create_dir_all(dir)?;
    let base = dir.join(format!(".wasp-probe-base-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&base)?;
        f.write_all(&[0x5a; 4096])?;
        f.sync_all()?;
        super::probe_clone_strategy(&File::open(&base)?, &base, dir)
    })();
    let _ = fs::remove_file(&base);
    result
}

/// Words for an errno that FICLONE returned.
pub fn explain_reflink_errno(errno: i32) -> &'static str {
    match errno {
        libc::EOPNOTSUPP => "the filesystem does not support reflinks (ext4, tmpfs)",
        libc::EXDEV => "source and destination are on different filesystems",
        libc::EINVAL => {
            "the filesystem does not support reflinks, or reflink is off (mkfs.xfs -m reflink=1)"
        }
        libc::EPERM | libc::EACCES => "permission denied",
        _ => "FICLONE failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_cleans_up_and_classifies() {
        let dir = tempfile::tempdir().unwrap();
        let r = probe_reflink(dir.path()).unwrap();
        if let ReflinkProbe::Unsupported(e) = r {
            assert!(!explain_reflink_errno(e).is_empty());
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn dir_strategy_probe_picks_one_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let o = probe_dir_strategy(dir.path()).unwrap();
        assert_ne!(o.strategy, Strategy::SharedReadonly);
        assert!(!o.reason.is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn strategy_names() {
        assert_eq!(Strategy::Reflink.to_string(), "reflink");
        assert_eq!(
            serde_json::to_string(&Strategy::CopyFileRange).unwrap(),
            "\"copy-file-range\""
        );
    }
}

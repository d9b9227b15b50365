//! Private filesystems for storage tests and benches: an XFS image with
//! reflink or an ext4 image on a loop device, or a size-limited tmpfs, mounted on a
//! directory inside a throwaway temp dir under /var/tmp. Dropping the guard
//! unmounts (the loop device detaches itself: `mount -o loop` sets
//! autoclear) and removes the temp dir, also when the test panics.
//! `mkfs.xfs`/`mount`/`umount` are test tooling only.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted private filesystem; unmounted on drop.
#[derive(Debug)]
pub struct LoopFs {
    dir: Option<tempfile::TempDir>,
    mnt: PathBuf,
    mounted: bool,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LoopFs {
    fn new_dir() -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("wasptest-{}-fs-", std::process::id()))
            .tempdir_in("/var/tmp")
            .expect("temp dir under /var/tmp");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        Self {
            dir: Some(dir),
            mnt,
            mounted: false,
        }
    }

    /// An XFS filesystem with reflink=1 of `size_mib` (at least 300) on a
    /// sparse image file.
    pub fn xfs_reflink(size_mib: u64) -> Self {
        let mut fs = Self::new_dir();
        let img = fs.dir.as_ref().unwrap().path().join("xfs.img");
        let f = std::fs::File::create(&img).expect("image file");
        f.set_len(size_mib.max(300) << 20).expect("size image");
        drop(f);
        run(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img))
        .expect("mkfs.xfs -m reflink=1");
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&fs.mnt))
        .expect("mount -o loop");
        fs.mounted = true;
        fs
    }

    /// An ext4 filesystem of `size_mib` on a sparse image file
    /// (`wasp-ext4.img` in the temp dir), so storage tests do not depend on
    /// the machine's root filesystem.
    pub fn ext4(size_mib: u64) -> Self {
        let mut fs = Self::new_dir();
        let img = fs.dir.as_ref().unwrap().path().join("wasp-ext4.img");
        let f = std::fs::File::create(&img).expect("image file");
        f.set_len(size_mib << 20).expect("size image");
        drop(f);
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)).expect("mkfs.ext4");
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&fs.mnt))
        .expect("mount -o loop");
        fs.mounted = true;
        fs
    }

    /// A tmpfs limited to `size_mib`.
    pub fn tmpfs(size_mib: u64) -> Self {
        let mut fs = Self::new_dir();
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&fs.mnt))
        .expect("mount tmpfs");
        fs.mounted = true;
        fs
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Free bytes, from statvfs.
    pub fn free_bytes(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.mnt).expect("statvfs");
        s.blocks_available() as u64 * s.fragment_size() as u64
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = run(Command::new("umount").arg(&self.mnt)) {
                eprintln!("warning: {e}; detaching lazily");
                if let Err(e) = run(Command::new("umount").arg("-l").arg(&self.mnt)) {
                    eprintln!("warning: {e}");
                }
            }
        }
        if let Some(d) = self.dir.take() {
            if let Err(e) = d.close() {
                eprintln!("warning: cannot remove test fs dir: {e}");
            }
        }
    }
}

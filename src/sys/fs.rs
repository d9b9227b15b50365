//! File-level syscalls: FICLONE, copy_file_range, SEEK_DATA/SEEK_HOLE,
//! fadvise, flock, O_TMPFILE and linking an fd to a name, and opens that
//! never follow a symlink (`openat` with `O_NOFOLLOW`) for walking a
//! directory chain and opening the files in it.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::cvt;

/// An unnamed regular file (mode 0) in the directory `dir`
/// (`O_TMPFILE`), which [`link_fd`] can give names.
pub fn open_tmpfile(dir: &Path) -> io::Result<OwnedFd> {
    let c = super::c_path(dir)?;
    // SAFETY: c is a valid NUL-terminated path that outlives the call; open
    // reads only it.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            0 as libc::c_uint,
        )
    })?;
    // SAFETY: on success open returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the single name `name` in the directory `dir` (the working
/// directory when `None`; `name` may also be absolute, like `/`) with
/// `openat(flags | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC)`. When `name` is a
/// symlink the open fails with `ELOOP` (or, with `O_PATH`, returns the
/// link itself); it is never followed.
pub fn open_at_nofollow(
    dir: Option<BorrowedFd<'_>>,
    name: &OsStr,
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    let c = super::c_str(name)?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: c is a valid NUL-terminated string that outlives the call;
    // dirfd is AT_FDCWD or a descriptor borrowed for the call; openat reads
    // only the string.
    let fd = cvt(unsafe {
        libc::openat(
            dirfd,
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC,
            0 as libc::c_uint,
        )
    })?;
    // SAFETY: on success openat returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Gives the file behind `fd` the (new) name `path`: another hard link, on
/// the same mount (`linkat` with `AT_EMPTY_PATH`, which needs
/// `CAP_DAC_READ_SEARCH`). `AlreadyExists` when the name is taken.
pub fn link_fd(fd: impl AsFd, path: &Path) -> io::Result<()> {
    let c = super::c_path(path)?;
    // SAFETY: the empty string and c are valid NUL-terminated strings that
    // outlive the call; fd is a live descriptor borrowed for the call.
    cvt(unsafe {
        libc::linkat(
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Opens the file `name` (one component) inside `dir` read-only, without
/// following a symlink (`ELOOP` when it is one), close-on-exec, and
/// non-blocking so that a FIFO or device put in its place cannot block the
/// open (callers `fstat` the result and refuse anything but a regular
/// file; for a regular file `O_NONBLOCK` changes nothing).
pub fn open_file_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let fd = open_at_nofollow(Some(dir), name, libc::O_RDONLY | libc::O_NONBLOCK)?;
    Ok(File::from(fd))
}

/// Writes `data` to the existing file `rel` under the directory `dir`
/// (`openat(O_WRONLY)`, one write): for per-device sysctls through a
/// `/proc/sys` directory opened in another network namespace, whose
/// entries a lookup relative to it finds whatever namespace the calling
/// thread is in.
pub fn write_at(dir: BorrowedFd<'_>, rel: &OsStr, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let fd = open_at_nofollow(Some(dir), rel, libc::O_WRONLY)?;
    File::from(fd).write_all(data)
}

/// `FICLONE` from `<linux/fs.h>`: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Makes `dst` share all of `src`'s blocks (a reflink). O(1) on XFS with
/// reflink and on btrfs; fails with `EOPNOTSUPP`/`EINVAL` elsewhere and with
/// `EXDEV` across filesystems.
pub fn ficlone(dst: &File, src: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its integer argument and reads
    // no user memory; both fds are valid for the duration of the call.
    cvt(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) })?;
    Ok(())
}

/// One `copy_file_range` call between explicit offsets. Returns bytes copied
/// (0 at end of file).
pub fn copy_file_range(
    src: &File,
    src_off: &mut i64,
    dst: &File,
    dst_off: &mut i64,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: the offsets point to live i64s owned by the caller for the
    // duration of the call; the fds are valid; flags must be 0.
    let n = cvt(unsafe {
        libc::copy_file_range(
            src.as_fd().as_raw_fd(),
            src_off as *mut i64,
            dst.as_fd().as_raw_fd(),
            dst_off as *mut i64,
            len,
            0,
        )
    })?;
    Ok(n as usize)
}

/// Where to seek with [`seek_data_hole`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    /// Next offset holding data (`SEEK_DATA`).
    Data,
    /// Next hole (`SEEK_HOLE`); end of file counts as a hole.
    Hole,
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`. `Ok(None)` means no more data
/// (`ENXIO`).
pub fn seek_data_hole(f: &File, offset: i64, whence: Whence) -> io::Result<Option<i64>> {
    let w = match whence {
        Whence::Data => libc::SEEK_DATA,
        Whence::Hole => libc::SEEK_HOLE,
    };
    // SAFETY: lseek only reads its integer arguments.
    match cvt(unsafe { libc::lseek(f.as_raw_fd(), offset, w) }) {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `posix_fadvise` over the whole file with `advice`
/// (`POSIX_FADV_WILLNEED`, `POSIX_FADV_DONTNEED`, …).
pub fn fadvise(f: &File, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: fadvise only reads its integer arguments.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, advice) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// `posix_fadvise(WILLNEED)` over the whole file: asks for readahead into
/// the page cache.
pub fn fadvise_willneed(f: &File) -> io::Result<()> {
    fadvise(f, libc::POSIX_FADV_WILLNEED)
}

/// Opens (or creates, mode 0600) the lock file `path` for `flock`,
/// read-write, never through a symlink.
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// `flock(2)` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlockMode {
    /// `LOCK_SH`: many holders.
    Shared,
    /// `LOCK_EX`: one holder.
    Exclusive,
}

/// Takes (or converts to) a `flock(2)` lock on `f`. With `wait` false a
/// lock held elsewhere gives `Ok(false)` instead of blocking. The lock goes
/// with the open file description, so the kernel drops it when the process
/// dies, SIGKILL included.
pub fn flock(f: &File, mode: FlockMode, wait: bool) -> io::Result<bool> {
    let mut op = match mode {
        FlockMode::Shared => libc::LOCK_SH,
        FlockMode::Exclusive => libc::LOCK_EX,
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock reads only its integer arguments; the fd is open
        // for the duration of the call.
        match cvt(unsafe { libc::flock(f.as_raw_fd(), op) }) {
            Ok(_) => return Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) && !wait => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn copy_file_range_copies_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("a"))
            .unwrap();
        src.write_all(b"hello wasp").unwrap();
        let mut dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("b"))
            .unwrap();
        let (mut so, mut d) = (0i64, 0i64);
        let n = copy_file_range(&src, &mut so, &dst, &mut d, 64).unwrap();
        assert_eq!(n, 10);
        assert_eq!((so, d), (10, 10));
        let mut s = String::new();
        dst.seek(SeekFrom::Start(0)).unwrap();
        dst.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello wasp");
        src.seek(SeekFrom::Start(0)).unwrap();
    }

    #[test]
    fn seek_data_hole_finds_sparse_regions() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("sparse"))
            .unwrap();
        f.set_len(1 << 20).unwrap();
        // A fully sparse file has no data at all.
        assert_eq!(seek_data_hole(&f, 0, Whence::Data).unwrap(), None);
        assert_eq!(seek_data_hole(&f, 0, Whence::Hole).unwrap(), Some(0));
    }

    #[test]
    fn ficlone_on_a_non_reflink_fs_fails_cleanly_or_works() {
        // On ext4/tmpfs this fails with EOPNOTSUPP/EINVAL/EXDEV; on XFS or
        // btrfs it succeeds. Either way it must not panic and the error must
        // carry an errno the storage probe can classify.
        let dir = tempfile::tempdir().unwrap();
        let src = File::create(dir.path().join("s")).unwrap();
        let dst = File::create(dir.path().join("d")).unwrap();
        match ficlone(&dst, &src) {
            Ok(()) => {}
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }

    #[test]
    fn nofollow_opens_refuse_symlinks_and_walk_directories() {
        use std::ffi::OsStr;
        const DIR: libc::c_int = libc::O_PATH | libc::O_DIRECTORY;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        std::os::unix::fs::symlink(".", dir.path().join("dl")).unwrap();
        let root = open_at_nofollow(None, OsStr::new("/"), DIR).unwrap();
        let mut d = root;
        for c in dir.path().iter().skip(1) {
            d = open_at_nofollow(Some(d.as_fd()), c, DIR).unwrap();
        }
        let mut s = String::new();
        open_file_nofollow(d.as_fd(), OsStr::new("f"))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "x");
        let e = open_file_nofollow(d.as_fd(), OsStr::new("l")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let e = open_at_nofollow(Some(d.as_fd()), OsStr::new("dl"), DIR).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
            "{e}"
        );
        let e = open_at_nofollow(Some(d.as_fd()), OsStr::new("f"), DIR).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
    }

    #[test]
    fn fadvise_accepts_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("x")).unwrap();
        fadvise_willneed(&f).unwrap();
    }

    #[test]
    fn flock_excludes_across_open_files_and_converts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let a = File::create(&p).unwrap();
        let b = File::open(&p).unwrap();
        assert!(flock(&a, FlockMode::Exclusive, false).unwrap());
        assert!(!flock(&b, FlockMode::Shared, false).unwrap());
        // Converted to shared: other shared holders get in, exclusive not.
        assert!(flock(&a, FlockMode::Shared, false).unwrap());
        assert!(flock(&b, FlockMode::Shared, false).unwrap());
        let c = File::open(&p).unwrap();
        assert!(!flock(&c, FlockMode::Exclusive, false).unwrap());
        drop((a, b));
        assert!(flock(&c, FlockMode::Exclusive, false).unwrap());
    }
}

//! Network namespaces: named ones that `ip netns` sees, anonymous scratch
//! ones, and running code inside one on a dedicated thread.
//!
//! `setns(CLONE_NEWNET)` and `unshare(CLONE_NEWNET)` act on the calling
//! thread only, so every helper here runs the caller's closure on a fresh
//! thread and never changes the namespace of a thread it did not create.
//! Sockets opened inside the closure stay bound to that namespace for their
//! whole life, which is how wasp's netlink sockets are meant to be used.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::fs as sysfs;
use nix::sched::{setns, unshare, CloneFlags};

/// Where iproute2 keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Longest name we accept (a file name, and we keep it short for logs).
pub const MAX_NAME_LEN: usize = 64;

/// Path of the named namespace `name`.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Checks a namespace name: non-empty, at most [`MAX_NAME_LEN`] bytes, and
/// only `[A-Za-z0-9._-]` so it is a plain file name under /run/netns.
pub fn validate_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid netns name {name:?}: use 1-{MAX_NAME_LEN} characters from [A-Za-z0-9._-]"
            ),
        ))
    }
}

/// Makes /run/netns a shared mount point, as `ip netns add` does, so that
/// namespace mounts propagate into mount namespaces created later (a VMM's
/// private mount namespace still sees the slots).
fn prepare_run_dir() -> io::Result<()> {
    static DONE: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        let run = || -> io::Result<()> {
            fs::create_dir_all(NETNS_RUN_DIR)?;
            let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
            match mount(
                None::<&str>,
                NETNS_RUN_DIR,
                Some("none"),
                shared,
                None::<&str>,
            ) {
                Ok(()) => Ok(()),
                Err(nix::errno::Errno::EINVAL) => {
                    // Not a mount point yet: bind it onto itself, then share.
                    mount(
                        Some(NETNS_RUN_DIR),
                        NETNS_RUN_DIR,
                        Some("none"),
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None::<&str>,
                    )?;
                    mount(
                        None::<&str>,
                        NETNS_RUN_DIR,
                        Some("none"),
                        shared,
                        None::<&str>,
                    )?;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        };
        run().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    });
    r.map_err(io::Error::from_raw_os_error)
}

/// The unnamed inode in [`NETNS_RUN_DIR`] that new namespace files are
/// hard links of (see [`new_name_file`]).
static NAME_INODE: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Creates the empty file `path` in [`NETNS_RUN_DIR`] that a namespace is
/// bind-mounted on; a name clash is `AlreadyExists`, never a takeover.
///
/// Each file is a new hard link of one unnamed inode (`O_TMPFILE`, then
/// `linkat`), not a new inode: a bind mount sits on the name (the dentry),
/// so every link carries its own namespace, and `ip netns` sees names only.
/// Allocating an inode per namespace is what costs: on an ext4 without a
/// journal (this fleet's `/run`) every new inode scans past the recently
/// deleted ones, 0.28-0.46 ms per file after a few hundred slots came and
/// went, against ~5 us for a link. When the inode has no link left (every
/// namespace deleted) or is full (`EMLINK`), a fresh one is made; a
/// filesystem without `O_TMPFILE` gets plain files.
fn new_name_file(path: &Path) -> io::Result<()> {
    link_or_create(&NAME_INODE, Path::new(NETNS_RUN_DIR), path)
}

/// [`new_name_file`] with the inode kept in `inode`, made in `dir` (which
/// must hold `path`).
fn link_or_create(inode: &Mutex<Option<OwnedFd>>, dir: &Path, path: &Path) -> io::Result<()> {
    let mut slot = inode.lock().unwrap_or_else(|p| p.into_inner());
    for fresh in [false, true] {
        if fresh || slot.is_none() {
            match sysfs::open_tmpfile(dir) {
                Ok(fd) => *slot = Some(fd),
                // No O_TMPFILE here: plain files.
                Err(_) => break,
            }
        }
        let Some(fd) = slot.as_ref() else { break };
        match sysfs::link_fd(fd, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
            // ENOENT: the inode's last link is gone; EMLINK: it is full.
            Err(e) if !fresh && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EMLINK)) => {}
            // E.g. EPERM without CAP_DAC_READ_SEARCH: plain files.
            Err(_) => break,
        }
    }
    // O_EXCL: a name clash is an error, never a takeover.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map(drop)
}

/// Who owns a new network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The calling thread's user namespace (the host's).
    Host,
    /// wasp's own user namespace where one can be made (see
    /// `sys::nsowner`), else the host's: for slots, so the kernel's
    /// broadcast of unowned uevents (one per VMM start and exit) skips
    /// them.
    Wasp,
}

/// Creates the named namespace `name`, owned by `owner`, and runs `f`
/// inside it, on one fresh thread, before returning its result. The
/// namespace is visible to `ip netns` once this returns. If `f` fails,
/// the namespace is deleted again.
///
/// Fails with `AlreadyExists` when the name is taken.
pub fn create_named_with<T, E, F>(name: &str, owner: Owner, f: F) -> Result<T, CreateError<E>>
where
    T: Send,
    E: Send,
    F: FnOnce() -> Result<T, E> + Send,
{
    validate_name(name).map_err(CreateError::Io)?;
    prepare_run_dir().map_err(CreateError::Io)?;
    let path = path_of(name);
    new_name_file(&path).map_err(CreateError::Io)?;
    let result = std::thread::scope(|s| {
        s.spawn(|| -> Result<T, CreateError<E>> {
            new_current(owner).map_err(CreateError::Io)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| CreateError::Io(e.into()))?;
            f().map_err(CreateError::Inner)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    if result.is_err() {
        let _ = delete_named(name);
    }
    result
}

/// Moves the calling thread into a new network namespace owned by
/// `owner`.
fn new_current(owner: Owner) -> io::Result<()> {
    if owner == Owner::Wasp {
        match super::nsowner::new_netns() {
            Ok(fd) => return enter(&fd),
            Err(super::nsowner::NewNetnsError::Failed(e)) => return Err(e),
            Err(super::nsowner::NewNetnsError::Unavailable) => {}
        }
    }
    unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Creates the named slot namespace `name` (owned as with
/// [`Owner::Wasp`]) and moves the *calling thread* into
/// it, for long-lived worker threads that build many namespaces without a
/// thread spawn each. Only call this on a thread you own, and move it back
/// with [`enter`] when done. On failure the thread is moved back into
/// `back` (where it must have been) and nothing is left behind.
///
/// Fails with `AlreadyExists` when the name is taken.
pub fn create_named_here(name: &str, back: impl AsFd) -> io::Result<()> {
    validate_name(name)?;
    prepare_run_dir()?;
    let path = path_of(name);
    new_name_file(&path)?;
    let r = new_current(Owner::Wasp).and_then(|()| {
        let m = mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from);
        if m.is_err() {
            // Back out of the fresh namespace before reporting.
            enter(&back)?;
        }
        m
    });
    if r.is_err() {
        let _ = delete_named(name);
    }
    r
}

/// Creates the named namespace `name` (like `ip netns add`).
pub fn create_named(name: &str) -> io::Result<()> {
    create_named_with(name, Owner::Host, || Ok::<(), io::Error>(())).map_err(CreateError::into_io)
}

/// Error of [`create_named_with`]: the namespace itself, or the closure.
#[derive(Debug)]
pub enum CreateError<E> {
    /// Creating or mounting the namespace failed.
    Io(io::Error),
    /// The closure run inside the namespace failed.
    Inner(E),
}

impl CreateError<io::Error> {
    /// Flattens when the closure's error is itself an `io::Error`.
    pub fn into_io(self) -> io::Error {
        match self {
            CreateError::Io(e) | CreateError::Inner(e) => e,
        }
    }
}

/// Deletes the named namespace (like `ip netns delete`): detaches the bind
/// mount and removes the file. The namespace itself lives on while any
/// process or fd still holds it.
pub fn delete_named(name: &str) -> io::Result<()> {
    validate_name(name)?;
    let path = path_of(name);
    let umount = umount2(&path, MntFlags::MNT_DETACH);
    let rm = fs::remove_file(&path);
    match (umount, rm) {
        (_, Err(e)) => Err(e),
        // A file that was never mounted (a crash between create and mount)
        // is still removed, and that is success.
        (Err(nix::errno::Errno::EINVAL), Ok(())) | (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e.into()),
    }
}

/// True when `/run/netns/NAME` exists.
pub fn exists(name: &str) -> bool {
    path_of(name).exists()
}

/// Names of all named namespaces, sorted.
pub fn list_named() -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    match fs::read_dir(NETNS_RUN_DIR) {
        Ok(rd) => {
            for e in rd {
                if let Some(n) = e?.file_name().to_str() {
                    v.push(n.to_owned());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    v.sort();
    Ok(v)
}

/// Opens a handle on the named namespace.
pub fn open_named(name: &str) -> io::Result<OwnedFd> {
    validate_name(name)?;
    Ok(File::open(path_of(name))?.into())
}

/// Opens a handle on the calling thread's current namespace.
pub fn open_current() -> io::Result<OwnedFd> {
    Ok(File::open("/proc/thread-self/ns/net")?.into())
}

/// Inode of the user namespace that owns `ns` (`NS_GET_USERNS`): the
/// host's (`/proc/self/ns/user`) or, for a slot's, wasp's own.
pub fn owner_inode(ns: impl AsFd) -> io::Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::fs::MetadataExt;
    /// `NS_GET_USERNS` (linux/nsfs.h: `_IO(0xb7, 0x1)`).
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: the ioctl only reads the fd; it returns a new fd or -1.
    let u = super::cvt(unsafe { libc::ioctl(ns.as_fd().as_raw_fd(), NS_GET_USERNS) })?;
    // SAFETY: u is a fresh fd that nothing else owns.
    let u = File::from(unsafe { OwnedFd::from_raw_fd(u) });
    Ok(u.metadata()?.ino())
}

/// Moves the *calling thread* into `ns`. Only call this on a thread you own
/// (see [`run_in`]); in a forked child before exec it is also fine.
pub fn enter(ns: impl AsFd) -> io::Result<()> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Runs `f` on the *calling thread* inside `ns`, then moves the thread back
/// to the namespace it was in. Cheaper than [`run_in`] (no thread), for
/// short checks on a thread the caller owns. Fails, with the thread in
/// `ns`, only if the way back fails, which needs the handle on the old
/// namespace to have become unusable.
pub fn visit<T>(ns: impl AsFd, f: impl FnOnce() -> T) -> io::Result<T> {
    let home = open_current()?;
    enter(ns)?;
    let r = f();
    enter(&home)?;
    Ok(r)
}

/// Moves the calling thread into a new anonymous namespace.
pub fn unshare_current_thread() -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Runs `f` on a fresh thread inside the namespace `ns` and returns its
/// result.
pub fn run_in<T, F>(ns: impl AsFd + Send, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs `f` on a fresh thread inside a new anonymous namespace that vanishes
/// when `f` returns (unless `f` kept an fd to it).
pub fn run_in_scratch<T, F>(f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare_current_thread()?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The inode number identifying the namespace behind `ns`.
pub fn inode_of(ns: impl AsFd) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let f = File::from(ns.as_fd().try_clone_to_owned()?);
    Ok(f.metadata()?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_files_are_links_of_one_inode_and_clashes_are_refused() {
        use std::os::unix::fs::MetadataExt;
        /// Removes the scratch dir, also on panic.
        struct Dir(PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let guard =
            Dir(std::env::temp_dir().join(format!("wasptest-links-{}", std::process::id())));
        let dir = guard.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let inode = Mutex::new(None);
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        link_or_create(&inode, &dir, &a).unwrap();
        link_or_create(&inode, &dir, &b).unwrap();
        let clash = link_or_create(&inode, &dir, &a).unwrap_err();
        assert_eq!(clash.kind(), io::ErrorKind::AlreadyExists);
        let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
        if crate::sys::is_root() {
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, plain files.
            assert_eq!(ma.ino(), mb.ino());
            assert_eq!(ma.nlink(), 2);
        }
        // Every link gone: the next name gets a fresh inode.
        fs::remove_file(&a).unwrap();
        fs::remove_file(&b).unwrap();
        link_or_create(&inode, &dir, &c).unwrap();
        assert!(c.is_file());
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("wasp-p-1").is_ok());
        assert!(validate_name("a.b_c").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}

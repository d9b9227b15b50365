//! Optional jailer mode (`wasp spawn --jailer`): each Firecracker runs under
//! the official `jailer` (>= 1.12) as its own unprivileged uid and gid,
//! chrooted (pivot_root) into `<runtime>/jail/<exec name>/<clone id>/root`,
//! in the slot's network namespace (`--netns /run/netns/NAME`) and in a new
//! pid namespace of its own (`--new-pid-ns`), where it is init.
//!
//! **Ids.** Every clone gets its own number from the configured
//! [`IdRange`] (`jailer.id_range`, `--jailer-id-range`) as both uid and
//! gid, so no two VMMs share an id: one clone's VMM cannot connect to
//! another's API socket or read its files. A range that holds uid or gid 0,
//! or any id that `/etc/passwd`, `/etc/group`, `/etc/subuid` or
//! `/etc/subgid` gives to an account, a group or a user namespace, is
//! refused up front ([`Jailer::new`]): such an account would own the
//! chroot and the API socket, and could read the clone's MMDS secrets. An
//! id is claimed while its clone's jail directory exists: a symlink
//! `<runtime>/jail-ids/<id>` to that directory, made under a `flock` on
//! `<runtime>/jail-ids/.lock` (so concurrent `wasp spawn` runs never pick
//! the same id); a claim whose jail directory is gone (torn down, or
//! removed by reconcile after a crash) is free again. Nothing else needs
//! to be recorded.
//!
//! What wasp does around the jailer, per clone:
//! - makes the jail directory (mode 0700: no other host user can reach the
//!   chroot, its socket or its files), and the chroot's `run/wasp/drives`
//!   and `snapshot` directories, so the drive path the snapshot recorded
//!   (`/run/wasp/drives/<id>`) and the snapshot's vmstate and memory
//!   (`/snapshot/<file>`) exist inside it;
//! - bind-mounts the clone's own drive files and the shared vmstate and
//!   memory file onto them in a private mount namespace of the launched
//!   process (set up before exec, see `sys::spawn`): the jailer's
//!   `pivot_root` keeps them (it binds the chroot recursively), nothing is
//!   mounted in the host's namespace, and nothing is copied (the memory
//!   file stays the one shared inode). Every bind is `nosuid,nodev,noexec`;
//!   the shared files (vmstate, memory, read-only drives) are bound
//!   read-only, so even a VMM running as their owner could not write them
//!   (Firecracker maps the memory file `MAP_PRIVATE`, which needs no write
//!   access);
//! - chowns the clone's own drive files to the clone's uid/gid (shared,
//!   read-only files must be world-readable; checked up front);
//! - finds the API socket at `<chroot>/run/firecracker.socket`;
//! - removes `<runtime>/jail/<exec name>/<clone id>` on teardown.
//!
//! **pid namespace.** With `--new-pid-ns` the jailer clones Firecracker
//! into a new pid namespace, writes its pid (as seen from the jailer's,
//! that is wasp's, namespace) to `<chroot>/<exec name>.pid` and exits. The
//! VMM is then not wasp's child: wasp waits for the jailer to exit, reads
//! that pid, opens a pidfd on it and checks, while the pidfd pins it, that
//! the process's root directory is this clone's chroot ([`Jailer::vmm`]).
//! From there on wasp holds the VMM exactly as it holds a plain one: the
//! pidfd for supervision and kills, pid and start time in the record for
//! teardown and reconcile. Since it is init of its namespace, the VMM
//! ignores signals it has no handler for (SIGTERM) even from wasp; SIGKILL
//! always reaches it.
//!
//! cgroups: wasp starts the jailer with `clone3(CLONE_INTO_CGROUP)` into
//! the clone's own cgroup (see `cgroup`), so the jailer and the Firecracker
//! it starts are limited from their first instruction; the jailer's own
//! `--cgroup`/`--cgroup-version`/`--parent-cgroup` are not used (they
//! would place the process after it started, in a cgroup wasp would not
//! own). `--daemonize` is not used either.

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use thiserror::Error;

use crate::paths::STABLE_DRIVE_DIR;
use crate::state::Owner;
use crate::sweep::ReconcileReport;
use crate::sys::fs::{flock, FlockMode};
use crate::sys::pidfd;

/// The chroot base directory under the runtime dir (the jailer's
/// `--chroot-base-dir`).
pub const JAIL_DIR: &str = "jail";

/// The directory of id claims under the runtime dir (outside [`JAIL_DIR`],
/// whose entries are all jails).
pub const IDS_DIR: &str = "jail-ids";

/// The default [`IdRange`]: above 65535 (so clear of the system, user,
/// systemd DynamicUser and `nobody` ids), below 100000 (where `useradd`
/// starts `/etc/subuid` ranges).
pub const DEFAULT_ID_RANGE: IdRange = IdRange {
    first: 70_000,
    last: 79_999,
};

/// Where a snapshot file (vmstate, memory) shows inside the chroot.
pub const SNAPSHOT_DIR_IN_JAIL: &str = "/snapshot";

/// How long an exiting VMM whose root can no longer be read gets to show
/// its exit on its pidfd (see [`Jailer::vmm`]).
const VMM_EXIT_SHOW_MS: i32 = 2_000;

/// The API socket inside the chroot.
pub const API_SOCK_IN_JAIL: &str = "/run/firecracker.socket";

/// The host files whose ids a range must not touch: (file, what an entry
/// is, whether entries are `name:start:count` ranges).
const ID_FILES: [(&str, &str, bool); 4] = [
    ("/etc/passwd", "user", false),
    ("/etc/group", "group", false),
    ("/etc/subuid", "subordinate uid range of", true),
    ("/etc/subgid", "subordinate gid range of", true),
];

/// The ids jailed VMMs run as: each clone gets one number of the range as
/// its uid and its gid. Written `FIRST-LAST` (inclusive) or `ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id.
    pub first: u32,
    /// Last id (inclusive).
    pub last: u32,
}

impl IdRange {
    /// How many ids (clones at once).
    pub fn len(&self) -> u32 {
        self.last - self.first + 1
    }

    /// Never empty (kept for the `len` convention).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when `id` is in the range.
    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }

    /// Refuses the range when an entry of one of `files` (`(path, text)`,
    /// see [`ID_FILES`] for their order) uses an id of it. For tests; see
    /// [`IdRange::check_host`].
    fn check_files(
        &self,
        files: &[(&Path, &'static str, bool, String)],
    ) -> Result<(), JailerError> {
        for (path, what, ranges, text) in files {
            for line in text.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let f: Vec<&str> = line.split(':').collect();
                let name = f[0];
                let num = |i: usize| f.get(i).and_then(|v| v.trim().parse::<u64>().ok());
                let hit = if *ranges {
                    match (num(1), num(2)) {
                        (Some(start), Some(count)) if count > 0 => {
                            let end = start + count - 1;
                            (start <= u64::from(self.last) && end >= u64::from(self.first))
                                .then(|| ("id", start.max(u64::from(self.first))))
                        }
                        _ => None,
                    }
                } else {
                    // passwd: the uid, then the primary gid; group: the gid.
                    let fields: &[(&'static str, usize)] = if *what == "user" {
                        &[("uid", 2), ("primary gid", 3)]
                    } else {
                        &[("gid", 2)]
                    };
                    fields
                        .iter()
                        .filter_map(|(kind, i)| Some((*kind, num(*i)?)))
                        .find(|(_, id)| *id <= u64::from(u32::MAX) && self.contains(*id as u32))
                };
                if let Some((kind, id)) = hit {
                    return Err(JailerError::IdInUse {
                        range: *self,
                        id: id as u32,
                        entry: format!("{kind} {id} of {what} `{name}` in {}", path.display()),
                    });
                }
            }
        }
        Ok(())
    }

    /// Refuses the range when `/etc/passwd`, `/etc/group`, `/etc/subuid` or
    /// `/etc/subgid` gives one of its ids to a user, a group or a user
    /// namespace range (a file that does not exist holds none).
    pub fn check_host(&self) -> Result<(), JailerError> {
        let mut files = Vec::new();
        for (p, what, ranges) in ID_FILES {
            let path = Path::new(p);
            let text = match fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read", path)(e)),
            };
            files.push((path, what, ranges, text));
        }
        self.check_files(&files)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for IdRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |v: &str| {
            v.trim().parse::<u32>().map_err(|_| {
                format!("{s:?} is not an id range; write FIRST-LAST, e.g. 70000-79999")
            })
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if first > last {
            return Err(format!("{s:?} is empty: FIRST must not be above LAST"));
        }
        if first == 0 {
            return Err(format!(
                "{s:?} includes 0 (root): the jailer is there to drop root; start the range above 0, e.g. 70000-79999"
            ));
        }
        Ok(IdRange { first, last })
    }
}

/// Errors of jailer mode.
#[derive(Debug, Error)]
pub enum JailerError {
    /// A range that includes 0.
    #[error("the jailer id range {0} includes 0 (root): the jailer is there to drop root; set jailer.id_range (or --jailer-id-range) to ids above 0, e.g. {DEFAULT_ID_RANGE}")]
    Root(IdRange),
    /// A range that includes an id of an account, group or user namespace.
    #[error("the jailer id range {range} includes {entry}: a clone running as it would share that id (and could be reached by it); set jailer.id_range (or --jailer-id-range) to ids no entry of /etc/passwd, /etc/group, /etc/subuid or /etc/subgid uses (default {DEFAULT_ID_RANGE})")]
    IdInUse {
        /// The range.
        range: IdRange,
        /// The id in use.
        id: u32,
        /// Which entry, e.g. ``uid 65534 of user `nobody` in /etc/passwd``.
        entry: String,
    },
    /// Every id of the range is held by a live jail.
    #[error("every id of the jailer id range {range} ({n} ids) belongs to a live jailed clone (claims in {dir}); widen jailer.id_range (or --jailer-id-range), or kill clones")]
    RangeFull {
        /// The range.
        range: IdRange,
        /// Its size.
        n: u32,
        /// The claims directory.
        dir: PathBuf,
    },
    /// Not Firecracker.
    #[error("--jailer runs Firecracker only; the stand-in VMM cannot be jailed")]
    NotFirecracker,
    /// A file the jailed VMMs must read is not world-readable.
    #[error("the jailed VMMs (each its own uid and gid from {range}) cannot read {path} (owner {owner}:{group}, mode {mode:o}); make it readable by all (e.g. chmod 0444)")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The id range.
        range: IdRange,
        /// File owner.
        owner: u32,
        /// File group.
        group: u32,
        /// File mode.
        mode: u32,
    },
    /// A leftover chroot for this id exists.
    #[error("the chroot {0} already exists: a clone with this id is live, or a crash left it (run reconcile)")]
    Exists(PathBuf),
    /// The API socket path is too long for a unix socket address.
    #[error(
        "the jailed API socket path {0} is longer than 107 bytes; use a shorter --runtime-dir"
    )]
    SockPathTooLong(PathBuf),
    /// A path that is not a wasp chroot.
    #[error("{0} is not a wasp jail directory (<runtime>/{JAIL_DIR}/<exec>/<id>); left alone")]
    NotOurs(PathBuf),
    /// The jailed VMM exited before wasp could take hold of it.
    #[error("the jailed VMM (pid {pid}, from {pid_file}) exited already")]
    VmmGone {
        /// Its pid.
        pid: i32,
        /// The jailer's pid file.
        pid_file: PathBuf,
    },
    /// The pid file names a process that is not rooted in the chroot (the
    /// pid file's directory).
    #[error("pid {pid} in {pid_file} is not the jailed VMM (its root is not the chroot the file is in); left alone")]
    NotTheVmm {
        /// The pid.
        pid: i32,
        /// The pid file.
        pid_file: PathBuf,
    },
    /// Filesystem work failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JailerError + 'a {
    move |source| JailerError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Jailer mode for a batch.
#[derive(Debug)]
pub struct Jailer {
    jailer: PathBuf,
    exec_file: PathBuf,
    ids: IdRange,
    base: PathBuf,
    owner: Option<Owner>,
    /// `<runtime>/jail-ids`: one claim per id in use.
    claims: PathBuf,
    /// Where the next claim starts looking (spreads ids, keeps claims O(1)).
    cursor: AtomicU32,
}

/// One clone's jail, before launch: what to bind where, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPlan {
    /// `<base>/<exec name>/<id>`: removed on teardown.
    pub dir: PathBuf,
    /// `(host file, target inside the chroot as seen from the host,
    /// read-only)`.
    pub binds: Vec<(PathBuf, PathBuf, bool)>,
    /// The API socket as seen from the host.
    pub api_sock: PathBuf,
    /// The clone's uid and gid (one number).
    pub uid: u32,
}

impl Jailer {
    /// Jailer mode with `jailer` running `firecracker`, each clone as its
    /// own id from `ids`, chroots under `<runtime_dir>/jail` (created).
    /// Refuses a range with 0 or with an id the host's account files use
    /// ([`IdRange::check_host`]), before anything is made.
    pub fn new(
        jailer: &Path,
        firecracker: &Path,
        runtime_dir: &Path,
        ids: IdRange,
    ) -> Result<Self, JailerError> {
        if ids.first == 0 {
            return Err(JailerError::Root(ids));
        }
        ids.check_host()?;
        let base = runtime_dir.join(JAIL_DIR);
        fs::create_dir_all(&base).map_err(io_err("create", &base))?;
        // The jailer canonicalizes both; wasp must compute the same paths.
        let base = fs::canonicalize(&base).map_err(io_err("resolve", &base))?;
        let exec_file = fs::canonicalize(firecracker).map_err(io_err("resolve", firecracker))?;
        let claims = runtime_dir.join(IDS_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&claims)
            .map_err(io_err("create", &claims))?;
        Ok(Self {
            jailer: jailer.to_owned(),
            exec_file,
            ids,
            base,
            owner: None,
            claims,
            cursor: AtomicU32::new(ids.first),
        })
    }

    /// Marks every jail dir this jailer mode creates as `owner`'s (with the
    /// jailed uid/gid), the moment it is created: reconcile removes, and
    /// kills the VMMs of, only the jails of its own state dir.
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The jailer binary.
    pub fn binary(&self) -> &Path {
        &self.jailer
    }

    /// The id range.
    pub fn ids(&self) -> IdRange {
        self.ids
    }

    /// The chroot base (`--chroot-base-dir`).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `<base>/<exec file name>/<id>`.
    pub fn jail_dir(&self, id: &str) -> PathBuf {
        let name = self.exec_file.file_name().unwrap_or_default();
        self.base.join(name).join(id)
    }

    /// The chroot: `<jail dir>/root`.
    pub fn root(&self, id: &str) -> PathBuf {
        self.jail_dir(id).join("root")
    }

    /// Where the jailer writes the VMM's pid: `<chroot>/<exec name>.pid`.
    pub fn pid_file(&self, id: &str) -> PathBuf {
        let mut name = self.exec_file.file_name().unwrap_or_default().to_owned();
        name.push(".pid");
        self.root(id).join(name)
    }

    /// Where a snapshot file (vmstate, memory) shows inside the chroot.
    pub fn visible_path(host: &Path) -> PathBuf {
        Path::new(SNAPSHOT_DIR_IN_JAIL).join(host.file_name().unwrap_or_default())
    }

    /// Checks every jailed VMM can read each of `files` (the snapshot's
    /// shared files): each runs as its own uid and gid, so they must be
    /// readable by all.
    pub fn check_readable<P: AsRef<Path>>(&self, files: &[P]) -> Result<(), JailerError> {
        for f in files {
            let f = f.as_ref();
            let m = fs::metadata(f).map_err(io_err("stat", f))?;
            let mode = m.mode() & 0o7777;
            if mode & 0o004 == 0 {
                return Err(JailerError::Unreadable {
                    path: f.to_path_buf(),
                    range: self.ids,
                    owner: m.uid(),
                    group: m.gid(),
                    mode,
                });
            }
        }
        Ok(())
    }

    /// Claims a free id of the range for the jail `dir` (which exists): a
    /// symlink `<claims>/<id>` to it, under the claims lock. A claim whose
    /// jail is gone is free.
    fn claim(&self, dir: &Path) -> Result<u32, JailerError> {
        let lock_path = self.claims.join(".lock");
        let lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        flock(&lock, FlockMode::Exclusive, true).map_err(io_err("lock", &lock_path))?;
        let n = self.ids.len();
        let start = self
            .cursor
            .load(Ordering::Relaxed)
            .saturating_sub(self.ids.first)
            % n;
        for k in 0..n {
            let id = self.ids.first + (start + k) % n;
            let link = self.claims.join(id.to_string());
            match std::os::unix::fs::symlink(dir, &link) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Held, unless its jail is gone.
                    match fs::metadata(&link) {
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            fs::remove_file(&link).map_err(io_err("remove", &link))?;
                            std::os::unix::fs::symlink(dir, &link)
                                .map_err(io_err("create", &link))?;
                        }
                        _ => continue,
                    }
                }
                Err(e) => return Err(io_err("create", &link)(e)),
            }
            let next = self.ids.first + (start + k + 1) % n;
            self.cursor.store(next, Ordering::Relaxed);
            return Ok(id);
        }
        Err(JailerError::RangeFull {
            range: self.ids,
            n,
            dir: self.claims.clone(),
        })
    }

    /// Makes clone `id`'s chroot skeleton: the jail directory (0700), the
    /// bind targets' directories, and `run/` for the API socket (so its
    /// creation can be watched); claims the clone's uid/gid. `drives` are
    /// `(file, drive id)`; the clone's own ones (under `own_dir`) are
    /// chowned to its uid/gid and bound read-write, the others (shared,
    /// read-only drives) and `snapshot_files` read-only. On failure nothing
    /// is left (the claim of an id whose jail is gone is free).
    pub fn prepare(
        &self,
        id: &str,
        drives: &[(PathBuf, String)],
        own_dir: &Path,
        snapshot_files: &[PathBuf],
    ) -> Result<JailPlan, JailerError> {
        let dir = self.jail_dir(id);
        let root = dir.join("root");
        let api_sock = root.join(API_SOCK_IN_JAIL.trim_start_matches('/'));
        if api_sock.as_os_str().len() > 107 {
            return Err(JailerError::SockPathTooLong(api_sock));
        }
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(JailerError::Exists(dir))
            }
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        let made = (|| {
            // The mode is umask-proof.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("chmod", &dir))?;
            let uid = self.claim(&dir)?;
            if let Some(o) = &self.owner {
                let ids = [("uid", uid.to_string()), ("gid", uid.to_string())];
                o.mark(&dir, &ids).map_err(io_err("mark", &dir))?;
            }
            let drive_dir = root.join(STABLE_DRIVE_DIR.trim_start_matches('/'));
            let snap_dir = root.join(SNAPSHOT_DIR_IN_JAIL.trim_start_matches('/'));
            for d in [&drive_dir, &snap_dir, &root.join("run")] {
                fs::create_dir_all(d).map_err(io_err("create", d))?;
            }
            let mut binds = Vec::new();
            for (file, drive_id) in drives {
                let own = file.starts_with(own_dir);
                if own {
                    std::os::unix::fs::chown(file, Some(uid), Some(uid))
                        .map_err(io_err("chown", file))?;
                }
                binds.push((file.clone(), drive_dir.join(drive_id), !own));
            }
            for f in snapshot_files {
                let inside = Self::visible_path(f);
                binds.push((
                    f.clone(),
                    root.join(inside.strip_prefix("/").unwrap_or(&inside)),
                    true,
                ));
            }
            Ok((binds, uid))
        })();
        match made {
            Ok((binds, uid)) => Ok(JailPlan {
                dir,
                binds,
                api_sock,
                uid,
            }),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The jailer's arguments for clone `id` running as `uid` (as uid and
    /// gid), after the jailer binary.
    pub fn args(&self, id: &str, uid: u32, netns: Option<&str>) -> Vec<String> {
        let mut a = vec![
            "--id".into(),
            id.into(),
            "--exec-file".into(),
            self.exec_file.display().to_string(),
            "--uid".into(),
            uid.to_string(),
            "--gid".into(),
            uid.to_string(),
            "--chroot-base-dir".into(),
            self.base.display().to_string(),
            "--new-pid-ns".into(),
        ];
        if let Some(ns) = netns {
            a.push("--netns".into());
            a.push(crate::sys::netns::path_of(ns).display().to_string());
        }
        a.push("--".into());
        a.push("--api-sock".into());
        a.push(API_SOCK_IN_JAIL.into());
        a
    }

    /// Clone `id`'s VMM, after its jailer exited: the pid the jailer wrote
    /// to [`Jailer::pid_file`] and a pidfd on it, once checked (while the
    /// pidfd pins the process) that its root directory is the clone's
    /// chroot. Only this clone's jailer and VMM ever have that root, and
    /// the jailer is gone, so the process is exactly the VMM, whatever
    /// became of the pid meanwhile.
    pub fn vmm(&self, id: &str) -> Result<(i32, OwnedFd), JailerError> {
        let pid_file = self.pid_file(id);
        let text = fs::read_to_string(&pid_file).map_err(io_err("read", &pid_file))?;
        let pid: i32 = text.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            io_err("parse", &pid_file)(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{:?} is not a pid", text.trim()),
            ))
        })?;
        let gone = || JailerError::VmmGone {
            pid,
            pid_file: pid_file.clone(),
        };
        let fd = match pidfd::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(gone()),
            Err(e) => return Err(io_err("open a pidfd for the VMM in", &pid_file)(e)),
        };
        let root = self.root(id);
        let want = fs::metadata(&root).map_err(io_err("stat", &root))?;
        let theirs = fs::metadata(format!("/proc/{pid}/root"));
        // A process that is exiting has no root to show before its pidfd
        // turns readable: give the exit a bounded wait to show.
        let wait_ms = if theirs.is_err() { VMM_EXIT_SHOW_MS } else { 0 };
        let exited = pidfd::pidfd_exited(&fd, wait_ms)
            .map_err(io_err("poll the pidfd of the VMM in", &pid_file))?;
        if exited {
            return Err(gone());
        }
        // Alive after the stat: the /proc entry read was the pidfd's process.
        match theirs {
            Ok(m) if (m.dev(), m.ino()) == (want.dev(), want.ino()) => Ok((pid, fd)),
            _ => Err(JailerError::NotTheVmm { pid, pid_file }),
        }
    }
}

/// True when `dir` is `<...>/jail/<exec>/<id>`.
fn is_jail_dir(dir: &Path) -> bool {
    dir.parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .is_some_and(|n| n == JAIL_DIR)
        && dir.file_name().is_some()
}

/// Removes a clone's jail directory (the chroot, its dev nodes, the
/// jailer's copy of Firecracker). Only `<...>/jail/<exec>/<id>` paths.
pub fn remove_jail(dir: &Path) -> Result<(), JailerError> {
    if !is_jail_dir(dir) {
        return Err(JailerError::NotOurs(dir.to_owned()));
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", dir)(e)),
        _ => Ok(()),
    }
}

/// Removes every `<base>/<exec>/<id>` jail that `owns` accepts (it carries
/// the state dir's mark) and whose clone `is_live` says is gone; the
/// others are listed in [`ReconcileReport::not_ours`] and left alone.
/// Continues past errors and reports each.
pub fn reconcile(
    base: &Path,
    is_live: &dyn Fn(&str) -> bool,
    owns: &dyn Fn(&Path) -> bool,
) -> ReconcileReport {
    let mut r = ReconcileReport::default();
    let Some(execs) = r.list(base) else {
        return r;
    };
    for exec in execs.flatten() {
        let Some(jails) = r.list(&exec.path()) else {
            continue;
        };
        for j in jails.flatten() {
            let id = j.file_name().to_string_lossy().into_owned();
            if !owns(&j.path()) {
                r.not_ours.push(j.path());
                continue;
            }
            r.settle(is_live(&id), j.path(), remove_jail);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: IdRange = IdRange {
        first: 64_000,
        last: 64_002,
    };

    fn jailer(runtime: &Path) -> Jailer {
        let fc = runtime.join("firecracker");
        fs::write(&fc, b"").unwrap();
        Jailer::new(Path::new("/x/jailer"), &fc, runtime, IDS).unwrap()
    }

    #[test]
    fn args_paths_and_layout() {
        let t = tempfile::tempdir().unwrap();
        let j = jailer(t.path());
        let base = fs::canonicalize(t.path().join("jail")).unwrap();
        assert_eq!(j.jail_dir("ab-1"), base.join("firecracker/ab-1"));
        assert_eq!(
            j.pid_file("ab-1"),
            base.join("firecracker/ab-1/root/firecracker.pid")
        );
        let a = j.args("ab-1", 64_001, Some("wasp-p-3"));
        let s = a.join(" ");
        assert!(s.starts_with("--id ab-1 --exec-file "), "{s}");
        assert!(s.contains("--uid 64001 --gid 64001"), "{s}");
        assert!(
            s.contains(&format!(
                "--chroot-base-dir {} --new-pid-ns",
                base.display()
            )),
            "{s}"
        );
        assert!(
            s.ends_with("--netns /run/netns/wasp-p-3 -- --api-sock /run/firecracker.socket"),
            "{s}"
        );
        assert_eq!(
            Jailer::visible_path(Path::new("/snaps/g/vm.mem")),
            Path::new("/snapshot/vm.mem")
        );
        let zero = IdRange { first: 0, last: 9 };
        assert!(matches!(
            Jailer::new(
                Path::new("j"),
                &t.path().join("firecracker"),
                t.path(),
                zero
            ),
            Err(JailerError::Root(_))
        ));
    }

    #[test]
    fn id_ranges_parse_and_refuse_root() {
        assert_eq!("70000-79999".parse::<IdRange>().unwrap(), DEFAULT_ID_RANGE);
        assert_eq!(
            "64002".parse::<IdRange>().unwrap(),
            IdRange {
                first: 64_002,
                last: 64_002
            }
        );
        assert_eq!(IDS.len(), 3);
        assert_eq!(DEFAULT_ID_RANGE.to_string(), "70000-79999");
        for bad in ["0-10", "0", "9-3", "a-b", "-5", ""] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
        assert!("0-10".parse::<IdRange>().unwrap_err().contains("root"));
    }

    #[test]
    fn a_range_with_an_account_group_or_subordinate_id_is_refused() {
        let r = |f, l| IdRange { first: f, last: l };
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      alice:x:1000:64500::/home/alice:/bin/bash\n";
        let group = "# comment\nroot:x:0:\nkvm:x:64010:\n";
        let subuid = "alice:100000:65536\n";
        let files = |p: &str, g: &str, s: &str| {
            vec![
                (Path::new("/etc/passwd"), "user", false, p.to_owned()),
                (Path::new("/etc/group"), "group", false, g.to_owned()),
                (
                    Path::new("/etc/subuid"),
                    "subordinate uid range of",
                    true,
                    s.to_owned(),
                ),
            ]
        };
        let check = |range: IdRange| range.check_files(&files(passwd, group, subuid));
        check(r(70_000, 79_999)).unwrap();
        let e = check(r(65_530, 65_535)).unwrap_err().to_string();
        assert!(
            e.contains("uid 65534 of user `nobody`") && e.contains("/etc/passwd"),
            "{e}"
        );
        let e = check(r(64_400, 64_600)).unwrap_err().to_string();
        assert!(e.contains("primary gid 64500 of user `alice`"), "{e}");
        let e = check(r(64_010, 64_010)).unwrap_err().to_string();
        assert!(
            e.contains("gid 64010 of group `kvm`") && e.contains("/etc/group"),
            "{e}"
        );
        let e = check(r(99_000, 100_001)).unwrap_err().to_string();
        assert!(
            e.contains("100000") && e.contains("subordinate uid range of `alice`"),
            "{e}"
        );
        // This host's own files accept the default.
        DEFAULT_ID_RANGE.check_host().unwrap();
    }

    #[test]
    fn prepare_makes_the_skeleton_and_remove_takes_it_all() {
        let t = tempfile::tempdir().unwrap();
        let j = jailer(t.path());
        let own = t.path().join("clones/wasp-ab-1");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("rootfs"), b"x").unwrap();
        let shared = t.path().join("vm.mem");
        fs::write(&shared, b"m").unwrap();
        let ro_drive = t.path().join("data");
        fs::write(&ro_drive, b"d").unwrap();
        let p = j
            .prepare(
                "ab-1",
                &[
                    (own.join("rootfs"), "rootfs".into()),
                    (ro_drive.clone(), "data".into()),
                ],
                &own,
                std::slice::from_ref(&shared),
            )
            .unwrap();
        let root = p.dir.join("root");
        assert_eq!(p.api_sock, root.join("run/firecracker.socket"));
        assert_eq!(
            p.binds,
            vec![
                (
                    own.join("rootfs"),
                    root.join("run/wasp/drives/rootfs"),
                    false
                ),
                (ro_drive.clone(), root.join("run/wasp/drives/data"), true),
                (shared.clone(), root.join("snapshot/vm.mem"), true),
            ]
        );
        assert!(IDS.contains(p.uid));
        assert!(root.join("run/wasp/drives").is_dir());
        assert_eq!(fs::metadata(&p.dir).unwrap().mode() & 0o777, 0o700);
        let m = fs::metadata(own.join("rootfs")).unwrap();
        assert_eq!((m.uid(), m.gid()), (p.uid, p.uid), "own drive chowned");
        assert_eq!(
            fs::metadata(&shared).unwrap().uid(),
            0,
            "shared file untouched"
        );
        assert!(matches!(
            j.prepare("ab-1", &[], &own, &[]),
            Err(JailerError::Exists(_))
        ));
        // Unmarked (no owner): not ours, left alone.
        let owner = Owner::of_state_dir(&t.path().join("state")).unwrap();
        let owns = |d: &Path| owner.owns(d);
        let r = reconcile(j.base(), &|_| false, &owns);
        assert_eq!((r.kept, r.removed.len(), r.not_ours.len()), (0, 0, 1));
        assert!(p.dir.exists());
        remove_jail(&p.dir).unwrap();
        // Marked by its state dir: judged, with the jailed ids in the mark.
        let j = j.with_owner(owner.clone());
        let p = j.prepare("ab-1", &[], &own, &[]).unwrap();
        let mark = owner.marked(&p.dir).unwrap();
        let id = p.uid.to_string();
        assert!(mark.contains(&("uid".into(), id.clone())), "{mark:?}");
        assert!(mark.contains(&("gid".into(), id)), "{mark:?}");
        let other = Owner::of_state_dir(&t.path().join("other")).unwrap();
        let r = reconcile(j.base(), &|_| false, &|d| other.owns(d));
        assert_eq!(r.not_ours, vec![p.dir.clone()]);
        let r = reconcile(j.base(), &|id| id == "ab-1", &owns);
        assert_eq!((r.kept, r.removed.len()), (1, 0));
        let r = reconcile(j.base(), &|_| false, &owns);
        assert_eq!(r.removed, vec![p.dir.clone()], "{:?}", r.errors);
        assert!(!p.dir.exists());
        assert!(matches!(remove_jail(&own), Err(JailerError::NotOurs(_))));
    }

    #[test]
    fn each_live_jail_holds_its_own_id_until_it_is_gone() {
        let t = tempfile::tempdir().unwrap();
        let j = jailer(t.path());
        let own = t.path().join("own");
        let a = j.prepare("a", &[], &own, &[]).unwrap();
        let b = j.prepare("b", &[], &own, &[]).unwrap();
        let c = j.prepare("c", &[], &own, &[]).unwrap();
        let mut ids = vec![a.uid, b.uid, c.uid];
        ids.sort();
        assert_eq!(ids, vec![64_000, 64_001, 64_002]);
        // The range is full while all three jails exist; a failed prepare
        // leaves no jail.
        let e = j.prepare("d", &[], &own, &[]).unwrap_err().to_string();
        assert!(e.contains("64000-64002") && e.contains("3 ids"), "{e}");
        assert!(!j.jail_dir("d").exists());
        // Another process's view (a fresh Jailer on the same runtime dir)
        // sees the same claims.
        let other = jailer(t.path());
        assert!(other.prepare("e", &[], &own, &[]).is_err());
        // A jail removed (teardown, or reconcile after a crash) frees its id.
        remove_jail(&b.dir).unwrap();
        let e = other.prepare("e", &[], &own, &[]).unwrap();
        assert_eq!(e.uid, b.uid);
        assert!(j.prepare("f", &[], &own, &[]).is_err());
    }

    #[test]
    fn unreadable_shared_files_are_refused_up_front() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let j = jailer(t.path());
        let f = t.path().join("vm.mem");
        fs::write(&f, b"m").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        let e = j.check_readable(&[&f]).unwrap_err().to_string();
        assert!(
            e.contains("64000-64002") && e.contains("mode 640") && e.contains("vm.mem"),
            "{e}"
        );
        fs::set_permissions(&f, fs::Permissions::from_mode(0o444)).unwrap();
        j.check_readable(&[&f]).unwrap();
    }
}

//! Optional jailer mode (`wasp spawn --jailer`): each Firecracker runs under
//! the official `jailer` (>= 1.12) as an unprivileged uid/gid, chrooted
//! (pivot_root) into `<runtime>/jail/<exec name>/<clone id>/root`, in the
//! slot's network namespace (`--netns /run/netns/NAME`).
//!
//! What wasp does around the jailer, per clone:
//! - makes the chroot's `run/wasp/drives` and `snapshot` directories, so the
//!   drive path the snapshot recorded (`/run/wasp/drives/<id>`) and the
//!   snapshot's vmstate and memory (`/snapshot/<file>`) exist inside it;
//! - bind-mounts the clone's own drive files and the shared vmstate and
//!   memory file onto them in a private mount namespace of the launched
//!   process (set up before exec, see `sys::spawn`): the jailer's
//!   `pivot_root` keeps them (it binds the chroot recursively), nothing is
//!   mounted in the host's namespace, and nothing is copied (the memory
//!   file stays the one shared inode);
//! - chowns the clone's own drive files to the jailed uid/gid (shared,
//!   read-only files must be readable by it; checked up front);
//! - finds the API socket at `<chroot>/run/firecracker.socket`;
//! - removes `<runtime>/jail/<exec name>/<clone id>` on teardown.
//!
//! cgroups: wasp starts the jailer with `clone3(CLONE_INTO_CGROUP)` into
//! the clone's own cgroup (see `cgroup`), so the jailer and the Firecracker
//! it execs are limited from their first instruction; the jailer's own
//! `--cgroup`/`--cgroup-version`/`--parent-cgroup` are not used (they
//! would place the process after it started, in a cgroup wasp would not
//! own). `--daemonize` and `--new-pid-ns` are not used either: wasp
//! supervises the process it started through its pidfd, and with
//! `--new-pid-ns` the VMM would be a different process.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::paths::STABLE_DRIVE_DIR;
use crate::state::Owner;
use crate::storage::clone::ReconcileReport;

/// The chroot base directory under the runtime dir (the jailer's
/// `--chroot-base-dir`).
pub const JAIL_DIR: &str = "jail";

/// Default uid and gid of jailed VMMs: unprivileged, and not an account on
/// a stock system (system ids are below 1000, users from 1000, nobody is
/// 65534), so no other process shares it.
pub const DEFAULT_ID: u32 = 64_000;

/// Where the snapshot's vmstate and memory show inside the chroot.
pub const SNAPSHOT_DIR_IN_JAIL: &str = "/snapshot";

/// The API socket inside the chroot.
pub const API_SOCK_IN_JAIL: &str = "/run/firecracker.socket";

/// Errors of jailer mode.
#[derive(Debug, Error)]
pub enum JailerError {
    /// uid or gid 0.
    #[error("--jailer-uid/--jailer-gid must not be 0: the jailer is there to drop root; pick an unprivileged id (default {DEFAULT_ID})")]
    Root,
    /// Not Firecracker.
    #[error("--jailer runs Firecracker only; the stand-in VMM cannot be jailed")]
    NotFirecracker,
    /// A file the jailed VMM must read is not readable by its uid/gid.
    #[error("the jailed VMM (uid {uid}, gid {gid}) cannot read {path} (owner {owner}:{group}, mode {mode:o}); make it readable by that uid/gid (e.g. chmod 0444), or pick --jailer-uid/--jailer-gid that can read it")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Jailed uid.
        uid: u32,
        /// Jailed gid.
        gid: u32,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jailer {
    jailer: PathBuf,
    exec_file: PathBuf,
    uid: u32,
    gid: u32,
    base: PathBuf,
    owner: Option<Owner>,
}

/// One clone's jail, before launch: what to bind where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPlan {
    /// `<base>/<exec name>/<id>`: removed on teardown.
    pub dir: PathBuf,
    /// `(host file, target inside the chroot as seen from the host)`.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// The API socket as seen from the host.
    pub api_sock: PathBuf,
}

impl Jailer {
    /// Jailer mode with `jailer` running `firecracker` as `uid:gid`, chroots
    /// under `<runtime_dir>/jail` (created).
    pub fn new(
        jailer: &Path,
        firecracker: &Path,
        runtime_dir: &Path,
        uid: u32,
        gid: u32,
    ) -> Result<Self, JailerError> {
        if uid == 0 || gid == 0 {
            return Err(JailerError::Root);
        }
        let base = runtime_dir.join(JAIL_DIR);
        fs::create_dir_all(&base).map_err(io_err("create", &base))?;
        // The jailer canonicalizes both; wasp must compute the same paths.
        let base = fs::canonicalize(&base).map_err(io_err("resolve", &base))?;
        let exec_file = fs::canonicalize(firecracker).map_err(io_err("resolve", firecracker))?;
        Ok(Self {
            jailer: jailer.to_owned(),
            exec_file,
            uid,
            gid,
            base,
            owner: None,
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

    /// Jailed uid and gid.
    pub fn ids(&self) -> (u32, u32) {
        (self.uid, self.gid)
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

    /// Where a snapshot file (vmstate, memory) shows inside the chroot.
    pub fn visible_path(host: &Path) -> PathBuf {
        Path::new(SNAPSHOT_DIR_IN_JAIL).join(host.file_name().unwrap_or_default())
    }

    /// Checks the jailed uid/gid can read each of `files` (the snapshot's
    /// shared files), by their owner, group and mode.
    pub fn check_readable<P: AsRef<Path>>(&self, files: &[P]) -> Result<(), JailerError> {
        for f in files {
            let f = f.as_ref();
            let m = fs::metadata(f).map_err(io_err("stat", f))?;
            let mode = m.mode() & 0o7777;
            let ok = mode & 0o004 != 0
                || (m.gid() == self.gid && mode & 0o040 != 0)
                || (m.uid() == self.uid && mode & 0o400 != 0);
            if !ok {
                return Err(JailerError::Unreadable {
                    path: f.to_path_buf(),
                    uid: self.uid,
                    gid: self.gid,
                    owner: m.uid(),
                    group: m.gid(),
                    mode,
                });
            }
        }
        Ok(())
    }

    /// Makes clone `id`'s chroot skeleton: the bind targets' directories,
    /// and `run/` for the API socket (so its creation can be watched).
    /// `drives` are `(file, drive id)`; the clone's own ones (under
    /// `own_dir`) are chowned to the jailed uid/gid. On failure nothing is
    /// left.
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
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(JailerError::Exists(dir))
            }
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        let made = (|| {
            if let Some(o) = &self.owner {
                let ids = [("uid", self.uid.to_string()), ("gid", self.gid.to_string())];
                o.mark(&dir, &ids).map_err(io_err("mark", &dir))?;
            }
            let drive_dir = root.join(STABLE_DRIVE_DIR.trim_start_matches('/'));
            let snap_dir = root.join(SNAPSHOT_DIR_IN_JAIL.trim_start_matches('/'));
            for d in [&drive_dir, &snap_dir, &root.join("run")] {
                fs::create_dir_all(d).map_err(io_err("create", d))?;
            }
            let mut binds = Vec::new();
            for (file, drive_id) in drives {
                if file.starts_with(own_dir) {
                    std::os::unix::fs::chown(file, Some(self.uid), Some(self.gid))
                        .map_err(io_err("chown", file))?;
                }
                binds.push((file.clone(), drive_dir.join(drive_id)));
            }
            for f in snapshot_files {
                let inside = Self::visible_path(f);
                binds.push((
                    f.clone(),
                    root.join(inside.strip_prefix("/").unwrap_or(&inside)),
                ));
            }
            Ok(binds)
        })();
        match made {
            Ok(binds) => Ok(JailPlan {
                dir,
                binds,
                api_sock,
            }),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The jailer's arguments for clone `id` (after the jailer binary).
    pub fn args(&self, id: &str, netns: Option<&str>) -> Vec<String> {
        let mut a = vec![
            "--id".into(),
            id.into(),
            "--exec-file".into(),
            self.exec_file.display().to_string(),
            "--uid".into(),
            self.uid.to_string(),
            "--gid".into(),
            self.gid.to_string(),
            "--chroot-base-dir".into(),
            self.base.display().to_string(),
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

    fn jailer(runtime: &Path) -> Jailer {
        let fc = runtime.join("firecracker");
        fs::write(&fc, b"").unwrap();
        Jailer::new(Path::new("/x/jailer"), &fc, runtime, 64_000, 64_001).unwrap()
    }

    #[test]
    fn args_paths_and_layout() {
        let t = tempfile::tempdir().unwrap();
        let j = jailer(t.path());
        let base = fs::canonicalize(t.path().join("jail")).unwrap();
        assert_eq!(j.jail_dir("ab-1"), base.join("firecracker/ab-1"));
        let a = j.args("ab-1", Some("wasp-p-3"));
        let s = a.join(" ");
        assert!(s.starts_with("--id ab-1 --exec-file "), "{s}");
        assert!(s.contains("--uid 64000 --gid 64001"), "{s}");
        assert!(
            s.contains(&format!("--chroot-base-dir {}", base.display())),
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
        assert!(matches!(
            Jailer::new(
                Path::new("j"),
                &t.path().join("firecracker"),
                t.path(),
                0,
                1
            ),
            Err(JailerError::Root)
        ));
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
        let p = j
            .prepare(
                "ab-1",
                &[(own.join("rootfs"), "rootfs".into())],
                &own,
                std::slice::from_ref(&shared),
            )
            .unwrap();
        let root = p.dir.join("root");
        assert_eq!(p.api_sock, root.join("run/firecracker.socket"));
        assert_eq!(
            p.binds,
            vec![
                (own.join("rootfs"), root.join("run/wasp/drives/rootfs")),
                (shared.clone(), root.join("snapshot/vm.mem")),
            ]
        );
        assert!(root.join("run/wasp/drives").is_dir());
        let m = fs::metadata(own.join("rootfs")).unwrap();
        assert_eq!((m.uid(), m.gid()), (64_000, 64_001), "own drive chowned");
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
        assert!(mark.contains(&("uid".into(), "64000".into())), "{mark:?}");
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
    fn unreadable_shared_files_are_refused_up_front() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let j = jailer(t.path());
        let f = t.path().join("vm.mem");
        fs::write(&f, b"m").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        let e = j.check_readable(&[&f]).unwrap_err().to_string();
        assert!(
            e.contains("uid 64000") && e.contains("mode 600") && e.contains("vm.mem"),
            "{e}"
        );
        fs::set_permissions(&f, fs::Permissions::from_mode(0o444)).unwrap();
        j.check_readable(&[&f]).unwrap();
    }
}

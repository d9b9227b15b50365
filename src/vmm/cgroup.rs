//! Optional per-clone cgroup v2 limits (`memory.max`, `cpu.max`, or any
//! `controller.file=value`).
//!
//! Layout: `<cgroup2 mount>/wasp/<owner id>/wasp-<clone id>`, where the
//! owner id is the state dir's ([`crate::state::Owner`]). The cgroup2
//! mount is found in /proc/self/mountinfo (it is `/sys/fs/cgroup` on a
//! unified host, `/sys/fs/cgroup/unified` on a hybrid one); wasp never
//! assumes a path. Everything wasp creates carries its prefix, and each
//! state dir's clones sit under their own parent, so after a crash
//! [`reconcile`] finds a state dir's leftovers by name and never touches
//! the cgroups of another state dir sharing the host (a cgroup cannot hold
//! a mark file; its place in the tree is the mark).
//!
//! - [`CgroupParent::open`] runs once per batch, before any clone: it
//!   checks that every controller the limits need is available in cgroup v2
//!   (else one clear error naming the controller, the mount and what to do;
//!   nothing is created), creates the `wasp` parent and enables the
//!   controllers in `cgroup.subtree_control` from the mount's root down to
//!   it. wasp never moves a controller between hierarchies and never
//!   disables one.
//! - [`CgroupParent::create`] makes one clone's cgroup and writes its
//!   limits; the launch stage starts the VMM inside it with
//!   `clone3(CLONE_INTO_CGROUP)` (see `sys::spawn`).
//! - [`remove`] deletes it once the VMM is gone (teardown, kill, a failed
//!   clone's reclaim); [`reconcile`] deletes the ones of dead clones.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::paths::PREFIX;
use crate::state::Owner;
use crate::sweep::ReconcileReport;
use crate::sys;

/// The parent cgroup, directly under the cgroup2 mount; each state dir's
/// clones sit in its child named by the owner id ([`owner_dir`]).
pub const PARENT: &str = PREFIX;

/// `<mount>/wasp/<owner id>`: the parent of `owner`'s clone cgroups.
pub fn owner_dir(mount: &Path, owner: &Owner) -> PathBuf {
    mount.join(PARENT).join(owner.as_str())
}

/// `memory.max`: the clone's memory limit (bytes, `K`/`M`/`G` suffixes, or
/// `max`).
pub const MEMORY_MAX: &str = "memory.max";
/// `cpu.max`: `$QUOTA $PERIOD` in microseconds, e.g. `50000 100000`.
pub const CPU_MAX: &str = "cpu.max";

/// Longest accepted value.
const MAX_VALUE_LEN: usize = 256;

/// Errors of the cgroup stage.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// No cgroup2 line in /proc/self/mountinfo.
    #[error("per-clone cgroup limits need cgroup v2, but no cgroup2 filesystem is mounted (none in /proc/self/mountinfo); mount one (mount -t cgroup2 none /sys/fs/cgroup, or boot with systemd.unified_cgroup_hierarchy=1), or leave out --memory-max/--cpu-max/--cgroup")]
    NoCgroup2,
    /// A controller the limits need is not available in cgroup v2.
    #[error("{key} needs the cgroup v2 controller `{controller}`, but it is not available in the cgroup v2 hierarchy at {mount} {detail}")]
    ControllerUnavailable {
        /// The controller.
        controller: String,
        /// The limit that needs it.
        key: String,
        /// The cgroup2 mount.
        mount: PathBuf,
        /// What the mount offers, where the controller is bound instead,
        /// and what to do.
        detail: String,
    },
    /// A limit's key is not a cgroup interface file wasp writes.
    #[error("bad cgroup limit key {key:?}: {why}")]
    BadKey {
        /// The key.
        key: String,
        /// Why.
        why: &'static str,
    },
    /// A limit's value cannot be written.
    #[error("bad value for cgroup limit {key}: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// Why.
        why: &'static str,
    },
    /// A `KEY=VALUE` without `=`.
    #[error("bad --cgroup {0:?}: use KEY=VALUE, e.g. memory.max=256M")]
    Format(String),
    /// Filesystem work on the cgroup tree failed.
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
    /// The kernel refused a limit.
    #[error("cannot set {key}={value:?} in {path}: the kernel refused the value or the file does not exist for this controller")]
    Write {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A path that is not a wasp cgroup was given for removal.
    #[error("{0} is not a wasp clone cgroup (its name must start with {PREFIX}-); left alone")]
    NotOurs(PathBuf),
    /// The state dir's owner id, which names its clones' parent cgroup.
    #[error("cannot name the clones' parent cgroup after the state dir")]
    Owner(#[from] crate::state::StateError),
    /// Processes stayed in the cgroup after cgroup.kill.
    #[error("cgroup {0} still has processes after cgroup.kill; not removed")]
    Busy(PathBuf),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The limits every clone of a batch gets, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    entries: Vec<(String, String)>,
}

impl Limits {
    /// No limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key=value` (a later value for the same key replaces it).
    /// `key` is an interface file `controller.name` (no `cgroup.` core
    /// files, no paths).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), CgroupError> {
        let bad = |why| CgroupError::BadKey {
            key: key.to_owned(),
            why,
        };
        let (controller, rest) = key
            .split_once('.')
            .ok_or_else(|| bad("use an interface file named controller.file, e.g. memory.max"))?;
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        if !name_ok(controller) || !name_ok(rest) || controller.contains('.') {
            return Err(bad(
                "use only [A-Za-z0-9_.] in controller.file, e.g. memory.max",
            ));
        }
        if controller == "cgroup" {
            return Err(bad(
                "cgroup.* core files are wasp's to manage; set a controller's file",
            ));
        }
        let bad_value = |why| CgroupError::BadValue {
            key: key.to_owned(),
            why,
        };
        if value.trim().is_empty() {
            return Err(bad_value("it is empty"));
        }
        if value.len() > MAX_VALUE_LEN || value.contains(['\n', '\0']) {
            return Err(bad_value("use one line of at most 256 bytes"));
        }
        self.entries.retain(|(k, _)| k != key);
        self.entries.push((key.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Adds a `KEY=VALUE` string (`--cgroup`).
    pub fn set_kv(&mut self, kv: &str) -> Result<(), CgroupError> {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CgroupError::Format(kv.to_owned()))?;
        self.set(k, v)
    }

    /// True when there is nothing to set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `(key, value)` pairs, in order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The controllers the limits need, each once, with the first key that
    /// needs it.
    pub fn controllers(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = Vec::new();
        for (k, _) in &self.entries {
            let c = k.split_once('.').map(|(c, _)| c).unwrap_or(k);
            if !v.iter().any(|(x, _)| *x == c) {
                v.push((c, k));
            }
        }
        v
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One mountinfo line: (mount point, fstype, super options).
pub(crate) fn mountinfo_entry(line: &str) -> Option<(String, &str, &str)> {
    let (pre, post) = line.split_once(" - ")?;
    let dir = pre.split(' ').nth(4)?;
    let mut p = post.split(' ');
    let fstype = p.next()?;
    let _source = p.next()?;
    let opts = p.next().unwrap_or("");
    Some((unescape(dir), fstype, opts))
}

/// Finds the cgroup2 mount point in the text of /proc/self/mountinfo,
/// preferring /sys/fs/cgroup (unified) over another one (e.g. a hybrid
/// host's /sys/fs/cgroup/unified).
pub fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(mountinfo_entry)
        .filter(|(_, ty, _)| *ty == "cgroup2")
        .map(|(dir, _, _)| PathBuf::from(dir))
        .collect();
    found.sort_by_key(|p| p != Path::new("/sys/fs/cgroup"));
    found.into_iter().next()
}

/// Where a controller is mounted as cgroup v1, if it is.
pub fn v1_mount_of(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(mountinfo_entry)
        .find(|(_, ty, opts)| *ty == "cgroup" && opts.split(',').any(|o| o == controller))
        .map(|(dir, _, _)| PathBuf::from(dir))
}

/// The error for a controller missing from cgroup v2, with where it is
/// bound and what to do. Shared by spawn and `wasp doctor`.
pub fn unavailable(
    mountinfo: &str,
    mount: &Path,
    available: &str,
    controller: &str,
    key: &str,
) -> CgroupError {
    let available = if available.trim().is_empty() {
        "nothing".to_owned()
    } else {
        available.trim().to_owned()
    };
    let (bound, fix) = match v1_mount_of(mountinfo, controller) {
        Some(v1) => (
            format!(", because this host binds it to cgroup v1 at {}", v1.display()),
            format!("boot with systemd.unified_cgroup_hierarchy=1 (or cgroup_no_v1={controller}) so it moves to cgroup v2, or leave out {key}"),
        ),
        None => (
            String::new(),
            format!("enable it in the kernel (CONFIG for the {controller} controller) or leave out {key}"),
        ),
    };
    CgroupError::ControllerUnavailable {
        controller: controller.to_owned(),
        key: key.to_owned(),
        mount: mount.to_owned(),
        detail: format!("(its cgroup.controllers lists: {available}){bound}; {fix}"),
    }
}

/// Checks every controller `limits` needs against the cgroup2 mount at
/// `mount` whose root offers `available` (its cgroup.controllers).
pub fn check_controllers(
    mountinfo: &str,
    mount: &Path,
    available: &str,
    limits: &Limits,
) -> Result<(), CgroupError> {
    for (c, key) in limits.controllers() {
        if !available.split_whitespace().any(|a| a == c) {
            return Err(unavailable(mountinfo, mount, available, c, key));
        }
    }
    Ok(())
}

/// One clone's cgroup, ready for `clone3(CLONE_INTO_CGROUP)`.
#[derive(Debug)]
pub struct CloneCgroup {
    /// Its directory.
    pub path: PathBuf,
    /// An fd on the directory (for CLONE_INTO_CGROUP).
    pub dir: OwnedFd,
    /// Its `cgroup.procs`, open for writing (the fallback placement).
    pub procs: OwnedFd,
}

/// The `wasp` parent cgroup with the limits of a batch.
#[derive(Debug, Clone)]
pub struct CgroupParent {
    mount: PathBuf,
    dir: PathBuf,
    limits: Limits,
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

impl CgroupParent {
    /// The product's parent for the clones of `state_dir`,
    /// `wasp/<owner id>` ([`owner_dir`]), opened as
    /// [`CgroupParent::open_named`] does (the state dir's owner is read, or
    /// made, only once the controllers are known to be there).
    pub fn open(state_dir: &Path, limits: Limits) -> Result<Self, CgroupError> {
        Self::open_at(&[PARENT], Some(state_dir), limits)
    }

    /// Checks the controllers (nothing is created when one is missing),
    /// creates `<mount>/<name>` and enables the controllers down to it.
    /// `name` must start with wasp's prefix (tests use `wasptest-…`).
    pub fn open_named(name: &str, limits: Limits) -> Result<Self, CgroupError> {
        if !name.starts_with(PREFIX) || name.contains('/') || name.contains("..") {
            return Err(CgroupError::NotOurs(PathBuf::from(name)));
        }
        Self::open_at(&[name], None, limits)
    }

    /// Creates `<mount>/<parts…>[/<owner id of state_dir>]` level by level
    /// and enables the controllers from the mount down to the last.
    fn open_at(
        parts: &[&str],
        state_dir: Option<&Path>,
        limits: Limits,
    ) -> Result<Self, CgroupError> {
        let mi = Path::new("/proc/self/mountinfo");
        let mountinfo = fs::read_to_string(mi).map_err(io_err("read", mi))?;
        let mount = find_cgroup2(&mountinfo).ok_or(CgroupError::NoCgroup2)?;
        let ctl = mount.join("cgroup.controllers");
        let available = fs::read_to_string(&ctl).map_err(io_err("read", &ctl))?;
        check_controllers(&mountinfo, &mount, &available, &limits)?;
        let owner = state_dir.map(Owner::of_state_dir).transpose()?;
        let mut levels = vec![mount.clone()];
        for p in parts
            .iter()
            .copied()
            .chain(owner.as_ref().map(Owner::as_str))
        {
            let dir = levels[levels.len() - 1].join(p);
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io_err("create", &dir)(e))
                }
                _ => {}
            }
            levels.push(dir);
        }
        let dir = levels[levels.len() - 1].clone();
        let me = Self { mount, dir, limits };
        for d in &levels {
            me.enable_in(d)?;
        }
        Ok(me)
    }

    /// Enables the limits' controllers in `dir/cgroup.subtree_control`.
    fn enable_in(&self, dir: &Path) -> Result<(), CgroupError> {
        let sc = dir.join("cgroup.subtree_control");
        let on = fs::read_to_string(&sc).map_err(io_err("read", &sc))?;
        for (c, _) in self.limits.controllers() {
            if on.split_whitespace().any(|x| x == c) {
                continue;
            }
            write_file(&sc, &format!("+{c}")).map_err(io_err("enable the controller in", &sc))?;
        }
        Ok(())
    }

    /// The cgroup2 mount.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The parent directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Where clone `id`'s cgroup lives.
    pub fn clone_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{PREFIX}-{id}"))
    }

    /// Creates clone `id`'s cgroup and writes its limits. On failure
    /// nothing is left.
    pub fn create(&self, id: &str) -> Result<CloneCgroup, CgroupError> {
        let path = self.clone_path(id);
        fs::create_dir(&path).map_err(io_err("create", &path))?;
        let made = (|| {
            for (k, v) in self.limits.entries() {
                let f = path.join(k);
                write_file(&f, v).map_err(|source| CgroupError::Write {
                    key: k.clone(),
                    value: v.clone(),
                    path: f.clone(),
                    source,
                })?;
            }
            let dir = fs::File::open(&path).map_err(io_err("open", &path))?;
            let procs_path = path.join("cgroup.procs");
            let procs = OpenOptions::new()
                .write(true)
                .open(&procs_path)
                .map_err(io_err("open", &procs_path))?;
            Ok(CloneCgroup {
                path: path.clone(),
                dir: dir.into(),
                procs: procs.into(),
            })
        })();
        if made.is_err() {
            let _ = fs::remove_dir(&path);
        }
        made
    }
}

/// True when `path` is a wasp clone cgroup by name.
fn is_ours(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&format!("{PREFIX}-")))
}

/// Removes a clone's cgroup (only one named `wasp-…`). If processes are
/// still in it (a VMM that outlived its pidfd wait, or the jailer's
/// children), they are killed with `cgroup.kill` and their exit is awaited
/// on `cgroup.events` with inotify, up to `timeout`.
pub fn remove(path: &Path, timeout: Duration) -> Result<(), CgroupError> {
    if !is_ours(path) {
        return Err(CgroupError::NotOurs(path.to_owned()));
    }
    match fs::remove_dir(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        Err(e) => return Err(io_err("remove", path)(e)),
    }
    let events = path.join("cgroup.events");
    let ino = sys::inotify::init().map_err(io_err("watch", &events))?;
    sys::inotify::add_watch(&ino, &events, libc::IN_MODIFY).map_err(io_err("watch", &events))?;
    let kill = path.join("cgroup.kill");
    if kill.exists() {
        write_file(&kill, "1").map_err(io_err("write", &kill))?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(&events).map_err(io_err("read", &events))?;
        if text.lines().any(|l| l.trim() == "populated 0") {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CgroupError::Busy(path.to_owned()));
        }
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        if sys::poll::wait_readable(&[sys::poll::raw(&ino)], ms)
            .map_err(io_err("watch", &events))?
            .is_some()
        {
            let _ = sys::inotify::read_events(&ino);
        }
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Removes every `wasp-<id>` cgroup under `parent` whose clone `is_live`
/// says is gone. `parent` is one state dir's own ([`owner_dir`]): nothing
/// outside it is looked at. Continues past errors and reports each.
pub fn reconcile(parent: &Path, is_live: &dyn Fn(&str) -> bool) -> ReconcileReport {
    let mut r = ReconcileReport::default();
    let Some(entries) = r.list(parent) else {
        return r;
    };
    let prefix = format!("{PREFIX}-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix(&prefix) else {
            continue;
        };
        if !entry.path().is_dir() {
            continue;
        }
        r.settle(is_live(id), entry.path(), |p| {
            remove(p, Duration::from_secs(5))
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_mountinfo() {
        assert_eq!(find_cgroup2(HYBRID), Some("/sys/fs/cgroup/unified".into()));
        let unified = "\
30 1 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw
29 1 0:25 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(find_cgroup2(unified), Some("/sys/fs/cgroup".into()));
        let only = "30 1 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(only), Some("/mnt/my cg".into()));
        assert_eq!(find_cgroup2("22 27 0:21 / /proc rw - proc proc rw\n"), None);
        assert_eq!(
            v1_mount_of(HYBRID, "memory"),
            Some("/sys/fs/cgroup/memory".into())
        );
        assert_eq!(v1_mount_of(HYBRID, "pids"), None);
    }

    #[test]
    fn limits_validate_keys_and_values() {
        let mut l = Limits::new();
        l.set(MEMORY_MAX, "256M").unwrap();
        l.set(CPU_MAX, "50000 100000").unwrap();
        l.set_kv("hugetlb.2MB.max=0").unwrap();
        l.set(MEMORY_MAX, "512M").unwrap();
        assert_eq!(
            l.entries()
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["cpu.max", "hugetlb.2MB.max", "memory.max"]
        );
        assert_eq!(
            l.controllers().iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            ["cpu", "hugetlb", "memory"]
        );
        for bad in [
            "memory",
            "../x.max",
            "memory/x.max",
            "cgroup.procs",
            ".max",
            "memory.",
        ] {
            assert!(
                matches!(l.set(bad, "1"), Err(CgroupError::BadKey { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            l.set("memory.max", " "),
            Err(CgroupError::BadValue { .. })
        ));
        assert!(matches!(
            l.set("memory.max", "1\n2"),
            Err(CgroupError::BadValue { .. })
        ));
        assert!(matches!(
            l.set_kv("memory.max"),
            Err(CgroupError::Format(_))
        ));
    }

    #[test]
    fn a_controller_bound_to_v1_is_one_clear_error() {
        let mut l = Limits::new();
        l.set(MEMORY_MAX, "128M").unwrap();
        let mount = Path::new("/sys/fs/cgroup/unified");
        let e = check_controllers(HYBRID, mount, "hugetlb\n", &l).unwrap_err();
        let msg = e.to_string();
        for want in [
            "memory.max",
            "`memory`",
            "/sys/fs/cgroup/unified",
            "hugetlb",
            "cgroup v1 at /sys/fs/cgroup/memory",
            "systemd.unified_cgroup_hierarchy=1",
            "leave out memory.max",
        ] {
            assert!(msg.contains(want), "{want} missing from: {msg}");
        }
        assert!(check_controllers(HYBRID, mount, "cpu memory", &l).is_ok());
        let e = check_controllers(HYBRID, mount, "", &l)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lists: nothing"), "{e}");
    }

    #[test]
    fn reconcile_sweeps_only_its_own_state_dirs_parent() {
        // Plain directories stand in for the cgroup tree: the sweep's
        // decisions, not the kernel's cgroup.kill.
        let t = tempfile::tempdir().unwrap();
        let a = Owner::of_state_dir(&t.path().join("a")).unwrap();
        let b = Owner::of_state_dir(&t.path().join("b")).unwrap();
        let mount = t.path().join("cg");
        for (o, id) in [(&a, "a-1"), (&a, "a-2"), (&b, "b-1")] {
            fs::create_dir_all(owner_dir(&mount, o).join(format!("{PREFIX}-{id}"))).unwrap();
        }
        // The old flat layout, and a stranger: under no owner's parent.
        fs::create_dir_all(mount.join(PARENT).join("wasp-old-1")).unwrap();
        let r = reconcile(&owner_dir(&mount, &a), &|id| id == "a-1");
        assert_eq!(r.kept, 1);
        assert_eq!(
            r.removed,
            vec![owner_dir(&mount, &a).join("wasp-a-2")],
            "{:?}",
            r.errors
        );
        assert!(owner_dir(&mount, &b).join("wasp-b-1").is_dir());
        assert!(mount.join(PARENT).join("wasp-old-1").is_dir());
        assert!(owner_dir(&mount, &a).join("wasp-a-1").is_dir());
    }

    #[test]
    fn remove_refuses_foreign_names() {
        assert!(matches!(
            remove(
                Path::new("/sys/fs/cgroup/unified/system.slice"),
                Duration::ZERO
            ),
            Err(CgroupError::NotOurs(_))
        ));
    }
}

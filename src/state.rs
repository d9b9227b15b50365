//! Clone records under the state dir, written atomically (temp file, then
//! rename), so a crashed wasp leaves either the old record or the new one,
//! never a torn one. They are not fsynced: a record describes a live VMM,
//! and a host crash ends that VMM too. A record that is corrupt anyway (a
//! disk fault, a hand edit) gives a clear error naming the file and how to
//! recover, never a panic.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Sub-directory of the state dir holding one record per clone.
pub const CLONES: &str = "clones";
/// Largest record accepted.
pub const MAX_RECORD: u64 = 64 * 1024;

/// What wasp remembers about a live clone. Holds no secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneRecord {
    /// Clone id (`wasp-…`), also its AGENT_ID.
    pub id: String,
    /// VMM pid.
    pub pid: i32,
    /// The VMM's start time in clock ticks since boot (field 22 of
    /// /proc/PID/stat), so a recycled pid is never mistaken for it.
    pub pid_start: u64,
    /// `firecracker` or `standin`.
    pub vmm: String,
    /// The slot's netns.
    pub netns: String,
    /// Slot index in its pool.
    pub slot: u32,
    /// Pool name.
    pub pool: String,
    /// The host netns the bridge lives in, when not the current one.
    pub host_netns: Option<String>,
    /// The clone's address.
    pub clone_ip: Ipv4Addr,
    /// Readiness port, when `tcp:`.
    pub ready_port: Option<u16>,
    /// API socket.
    pub api_sock: PathBuf,
    /// The clone's directory of files.
    pub clone_dir: PathBuf,
    /// The snapshot it came from.
    pub snapshot: PathBuf,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// The clone's cgroup, when it has one (removed on teardown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// Its jailer chroot directory in jailer mode (removed on teardown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail_dir: Option<PathBuf>,
    /// The tag of the engine request that made it (clone ids are
    /// `<tag>-<i>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The request's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When its TTL ends (Unix epoch, ms), absolute, so an engine that
    /// adopts the clone after a restart keeps the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// True while its vCPUs are paused (`PATCH /vm Paused`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// Errors of the state store.
#[derive(Debug, Error)]
pub enum StateError {
    /// I/O on the state dir.
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
    /// A record that does not parse.
    #[error("clone record {path} is corrupt; wasp ignores it. Recover with `wasp reconcile`, which moves it aside as NAME.corrupt and stops and removes the clone it described (its VMM, files and slot)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The state dir's owner file is not an owner id.
    #[error("{0} is not a wasp owner id (32 hex digits in a root-owned regular file); it names this state dir's clone dirs, jails and cgroups. Restore it, or remove it only when this state dir has no clone left (reconcile then leaves the old clones' files alone)")]
    BadOwner(PathBuf),
    /// Too large to be a record.
    #[error("clone record {path} is {size} bytes, over {MAX_RECORD}; it is not a wasp record. Run `wasp reconcile`, which moves it aside as NAME.corrupt")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Size.
        size: u64,
    },
}

/// The state dir.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `dir/name` atomically with `mode`, durably (file and
/// directory synced before returning).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(dir, name, bytes, mode, true)
}

/// Writes `bytes` to `dir/name` atomically (temp file, then rename: a
/// reader sees the old content or the new, never a part). With `durable`,
/// the file and the directory are synced too.
fn write_atomic_with(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, dir.join(name))?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl Store {
    /// Opens (creating, mode 0700) `state_dir/clones`.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join(CLONES);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", &dir))?;
        Ok(Self { dir })
    }

    /// The records directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes (or replaces) a record atomically, mode 0600. Not synced to
    /// disk: a record describes a live process, which a host crash ends
    /// too, and a record that outlives its VMM is recognised by its pid
    /// start time. (Two syncs per clone cost more than the rest of the
    /// clone's admission on ext4.)
    pub fn put(&self, r: &CloneRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(r).expect("record serializes");
        write_atomic_with(&self.dir, &format!("{}.json", r.id), &bytes, 0o600, false)
            .map_err(io_err("write", &self.path(&r.id)))
    }

    /// Removes a record; a missing one is fine.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let p = self.path(id);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &p)(e)),
            _ => Ok(()),
        }
    }

    /// Reads one record.
    pub fn get(&self, id: &str) -> Result<CloneRecord, StateError> {
        read_record(&self.path(id))
    }

    /// Every record, sorted by id, with the corrupt ones reported apart.
    pub fn list(&self) -> Result<(Vec<CloneRecord>, Vec<StateError>), StateError> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err("read", &self.dir))? {
            let e = e.map_err(io_err("read", &self.dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match read_record(&e.path()) {
                Ok(r) => ok.push(r),
                Err(err) => bad.push(err),
            }
        }
        ok.sort_by(|a: &CloneRecord, b| a.id.cmp(&b.id));
        Ok((ok, bad))
    }

    /// The records of `pool`'s clones whose VMM is alive (the recorded
    /// process: pid and start time, [`same_process`]), sorted by id.
    /// Corrupt records are left out (`wasp reconcile` moves them aside).
    pub fn live_in_pool(&self, pool: &str) -> Result<Vec<CloneRecord>, StateError> {
        Ok(self
            .list()?
            .0
            .into_iter()
            .filter(|r| r.pool == pool && same_process(r.pid, r.pid_start))
            .collect())
    }

    /// The slot indexes of `pool` that live clones recorded here hold.
    pub fn slots_in_use(&self, pool: &str) -> std::collections::HashSet<u32> {
        self.live_in_pool(pool)
            .map(|recs| recs.into_iter().map(|r| r.slot).collect())
            .unwrap_or_default()
    }

    /// Removes temp files a crash left mid-write.
    pub fn sweep_temp(&self) -> usize {
        let mut n = 0;
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with('.')
                    && fs::remove_file(e.path()).is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }
}

fn read_record(path: &Path) -> Result<CloneRecord, StateError> {
    let size = fs::metadata(path).map_err(io_err("stat", path))?.len();
    if size > MAX_RECORD {
        return Err(StateError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
        path: path.to_owned(),
        source,
    })
}

/// The file in the state dir holding its owner id ([`Owner`]).
pub const OWNER_FILE: &str = "owner";
/// The ownership mark wasp writes into every clone dir and jail dir it
/// creates ([`Owner::mark`]).
pub const MARK_FILE: &str = ".wasp-owner";
/// Largest mark or owner file read.
const MAX_MARK: u64 = 4096;

/// The identity of one state dir: 32 random hex digits, written once to
/// `<state>/owner` (mode 0600). Every clone dir, jail dir and per-clone
/// cgroup parent wasp creates for this state dir carries it, so reconcile
/// acts only on what this state dir made, never on the objects of another
/// state dir sharing the host or the runtime dir. Not a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(String);

fn is_owner_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads a small regular file that is not a symlink and is owned by this
/// process's euid (nobody else can have written it).
fn read_owned(path: &Path) -> io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let m = f.metadata()?;
    if !m.is_file() || m.uid() != nix::unistd::geteuid().as_raw() || m.len() > MAX_MARK {
        return Err(io::Error::other(
            "not a regular file of this user's, or too large",
        ));
    }
    let mut s = String::new();
    f.take(MAX_MARK).read_to_string(&mut s)?;
    Ok(s)
}

impl Owner {
    /// The owner of `state_dir`: read from `<state>/owner`, or made (random,
    /// from /dev/urandom) and written there once when missing. Concurrent
    /// first calls agree: the file is published with a hard link, which
    /// never replaces one already there.
    pub fn of_state_dir(state_dir: &Path) -> Result<Self, StateError> {
        let path = state_dir.join(OWNER_FILE);
        fs::create_dir_all(state_dir).map_err(io_err("create", state_dir))?;
        match read_owned(&path) {
            Ok(s) => return Self::parse(&path, &s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StateError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        }
        let mut raw = [0u8; 16];
        {
            use std::io::Read;
            File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut raw))
                .map_err(io_err("read", Path::new("/dev/urandom")))?;
        }
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = state_dir.join(format!(".{OWNER_FILE}.tmp-{}", std::process::id()));
        let made = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(format!("{id}\n").as_bytes())?;
            f.sync_all()?;
            match fs::hard_link(&tmp, &path) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            File::open(state_dir)?.sync_all()
        })();
        let _ = fs::remove_file(&tmp);
        made.map_err(io_err("write", &path))?;
        let s = read_owned(&path).map_err(io_err("read", &path))?;
        Self::parse(&path, &s)
    }

    fn parse(path: &Path, s: &str) -> Result<Self, StateError> {
        let id = s.trim();
        if is_owner_id(id) {
            Ok(Self(id.to_owned()))
        } else {
            Err(StateError::BadOwner(path.to_owned()))
        }
    }

    /// The id (32 hex digits).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Writes the ownership mark into `dir`, which wasp has just created:
    /// `<dir>/.wasp-owner`, mode 0600, holding `owner=<id>` and then
    /// `extra` lines (`key=value`). Never replaces an existing file.
    pub fn mark(&self, dir: &Path, extra: &[(&str, String)]) -> io::Result<()> {
        let mut text = format!("owner={}\n", self.0);
        for (k, v) in extra {
            text.push_str(&format!("{k}={v}\n"));
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(MARK_FILE))?;
        f.write_all(text.as_bytes())
    }

    /// Makes the directory `parent/name` (mode 0700) already carrying this
    /// owner's mark: it is made and marked under a staging name
    /// ([`Owner::staging_prefix`] + `name`), then renamed into place
    /// without replacing anything. A crash leaves a marked directory or a
    /// staging one whose name says whose it is, never an unmarked
    /// `name` that no reconcile may touch. `AlreadyExists` when `name`
    /// is taken.
    pub fn make_marked_dir(
        &self,
        parent: &Path,
        name: &str,
        extra: &[(&str, String)],
    ) -> io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let staging = parent.join(format!("{}{name}", self.staging_prefix()));
        let dir = parent.join(name);
        fs::DirBuilder::new().mode(0o700).create(&staging)?;
        let made = (|| {
            // The mode is umask-proof.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&staging, fs::Permissions::from_mode(0o700))?;
            self.mark(&staging, extra)?;
            nix::fcntl::renameat2(
                None,
                &staging,
                None,
                &dir,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(io::Error::from)
        })();
        match made {
            Ok(()) => Ok(dir),
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// The name prefix of this owner's staging directories
    /// (`.wasp-new-<id>-`): what a crash inside [`Owner::make_marked_dir`]
    /// can leave, found again by name.
    pub fn staging_prefix(&self) -> String {
        format!(".{}-new-{}-", crate::paths::PREFIX, self.0)
    }

    /// The mark of `dir` when it names this owner: its `key=value` fields
    /// (`owner` included). `None` when `dir` has no mark, another owner's,
    /// or one this process's user did not write.
    pub fn marked(&self, dir: &Path) -> Option<Vec<(String, String)>> {
        let text = read_owned(&dir.join(MARK_FILE)).ok()?;
        let fields: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (fields.first().map(|(k, v)| (k.as_str(), v.as_str())) == Some(("owner", &self.0)))
            .then_some(fields)
    }

    /// True when `dir` carries this owner's mark.
    pub fn owns(&self, dir: &Path) -> bool {
        self.marked(dir).is_some()
    }
}

/// Start time (clock ticks since boot) of `pid`, from /proc/PID/stat.
pub fn pid_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a /proc/PID/stat line (the comm field may hold spaces and
/// parentheses, so parse after the last `)`).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The state letter (field 3) of a /proc/PID/stat line.
pub fn parse_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// True when `pid` is alive and is the same process that started at
/// `start`. A zombie (exited, not yet reaped by its parent) is not alive.
pub fn same_process(pid: i32, start: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    parse_start_time(&stat) == Some(start) && !matches!(parse_state(&stat), Some('Z' | 'X'))
}

/// Why the clone `r` describes is not alive in its slot, or `None` when
/// it is: its VMM is the recorded process (pid and start time,
/// [`same_process`]), that process lives in the recorded slot netns (the
/// namespace inode of `/run/netns/<slot>`), and the clone's directory
/// exists. Shared by reconcile and by an engine adopting clones after a
/// restart; the caller pins the process with a pidfd first.
pub fn clone_health(r: &CloneRecord) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| fs::metadata(p).ok().map(|m| m.ino());
    if !same_process(r.pid, r.pid_start) {
        return Some(format!("its VMM (pid {}) is gone", r.pid));
    }
    let Some(slot_ino) = ino(&crate::sys::netns::path_of(&r.netns)) else {
        return Some(format!("its slot netns {} is gone", r.netns));
    };
    if ino(Path::new(&format!("/proc/{}/ns/net", r.pid))) != Some(slot_ino) {
        return Some(format!(
            "its VMM (pid {}) is not in slot netns {}",
            r.pid, r.netns
        ));
    }
    if !r.clone_dir.is_dir() {
        return Some(format!("its directory {} is gone", r.clone_dir.display()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> CloneRecord {
        CloneRecord {
            id: id.into(),
            pid: 42,
            pid_start: 7,
            vmm: "standin".into(),
            netns: "wasp-p-0".into(),
            slot: 0,
            pool: "p".into(),
            host_netns: None,
            clone_ip: Ipv4Addr::new(10, 0, 0, 2),
            ready_port: Some(22),
            api_sock: "/x/api.sock".into(),
            clone_dir: "/x".into(),
            snapshot: "/snap".into(),
            created_at: "2026-11-28T00:00:00Z".into(),
            cgroup: None,
            jail_dir: None,
            request: None,
            labels: Default::default(),
            expires_at_ms: None,
            paused: false,
        }
    }

    #[test]
    fn put_get_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.put(&rec("wasp-b")).unwrap();
        s.put(&rec("wasp-a")).unwrap();
        assert_eq!(s.get("wasp-a").unwrap(), rec("wasp-a"));
        let (ok, bad) = s.list().unwrap();
        assert_eq!(
            ok.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["wasp-a", "wasp-b"]
        );
        assert!(bad.is_empty());
        s.remove("wasp-a").unwrap();
        s.remove("wasp-a").unwrap();
        assert_eq!(s.list().unwrap().0.len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(s.dir().join("wasp-b.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn live_in_pool_keeps_the_pools_clones_whose_recorded_process_lives() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let me = std::process::id() as i32;
        let start = pid_start_time(me).unwrap();
        let alive = |id: &str, pool: &str| CloneRecord {
            pid: me,
            pid_start: start,
            pool: pool.into(),
            ..rec(id)
        };
        s.put(&alive("wasp-a", "p")).unwrap();
        s.put(&alive("wasp-b", "other")).unwrap();
        // Same pid, another start time: a recycled pid, not the clone.
        s.put(&CloneRecord {
            pid_start: start + 1,
            ..alive("wasp-c", "p")
        })
        .unwrap();
        fs::write(s.dir().join("wasp-d.json"), b"{").unwrap();
        let live = s.live_in_pool("p").unwrap();
        assert_eq!(
            live.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["wasp-a"]
        );
        assert!(s.live_in_pool("none").unwrap().is_empty());
    }

    #[test]
    fn torn_and_corrupt_records_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let good = serde_json::to_vec(&rec("wasp-t")).unwrap();
        fs::write(s.dir().join("wasp-t.json"), &good[..good.len() / 2]).unwrap();
        fs::write(s.dir().join(".wasp-u.json.tmp-1"), b"partial").unwrap();
        let (ok, bad) = s.list().unwrap();
        assert!(ok.is_empty());
        assert_eq!(bad.len(), 1);
        let msg = bad[0].to_string();
        assert!(
            msg.contains("wasp-t.json") && msg.contains("wasp reconcile"),
            "{msg}"
        );
        assert_eq!(s.sweep_temp(), 1);
        fs::write(
            s.dir().join("big.json"),
            vec![b' '; MAX_RECORD as usize + 1],
        )
        .unwrap();
        assert!(matches!(s.get("big"), Err(StateError::TooLarge { .. })));
    }

    #[test]
    fn owner_is_made_once_and_marks_name_it() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let a = Owner::of_state_dir(&d.path().join("a")).unwrap();
        assert_eq!(Owner::of_state_dir(&d.path().join("a")).unwrap(), a);
        assert!(is_owner_id(a.as_str()), "{a:?}");
        let m = fs::metadata(d.path().join("a").join(OWNER_FILE)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let b = Owner::of_state_dir(&d.path().join("b")).unwrap();
        assert_ne!(a, b);

        let dir = d.path().join("clone");
        fs::create_dir(&dir).unwrap();
        assert!(!a.owns(&dir), "no mark yet");
        a.mark(&dir, &[("uid", "7".into())]).unwrap();
        assert!(a.owns(&dir) && !b.owns(&dir));
        assert_eq!(
            a.marked(&dir).unwrap(),
            [
                ("owner".into(), a.as_str().into()),
                ("uid".into(), "7".into())
            ]
        );
        assert!(a.mark(&dir, &[]).is_err(), "never replaced");
        // A symlinked mark is nobody's.
        let link = d.path().join("link");
        fs::create_dir(&link).unwrap();
        std::os::unix::fs::symlink(dir.join(MARK_FILE), link.join(MARK_FILE)).unwrap();
        assert!(!a.owns(&link));

        fs::write(d.path().join("a").join(OWNER_FILE), b"nonsense\n").unwrap();
        let e = Owner::of_state_dir(&d.path().join("a")).unwrap_err();
        assert!(matches!(e, StateError::BadOwner(_)), "{e}");
    }

    #[test]
    fn start_time_parsing_survives_odd_comm() {
        let line =
            "123 (a) b) (c) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(line), Some(98765));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_state(line), Some('S'));
        assert_eq!(parse_state("1 (x) Z 0"), Some('Z'));
        assert_eq!(parse_state("garbage"), None);
        let me = std::process::id() as i32;
        let t = pid_start_time(me).unwrap();
        assert!(same_process(me, t));
        assert!(!same_process(me, t + 1));
    }
}

//! Clone records under the state dir, written atomically (temp file, then
//! rename), so a crashed wasp leaves either the old record or the new one,
//! never a torn one. They are not fsynced: a record describes a live VMM,
//! and a host crash ends that VMM too. A record that is corrupt anyway (a
//! disk fault, a hand edit) gives a clear error naming the file and how to
//! recover, never a panic.

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

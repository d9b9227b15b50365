//! The pool registry: every pool wasp has set up on this host, with what
//! it takes to attach to it again.
//!
//! Slot names say which pool a slot belongs to, but not where its bridge
//! lives (a private host netns such as the demo's) nor the pool's
//! addressing, so a command run without `--pool` could not find a pool made
//! with other settings. Pool set-up (`slot::Kernel::setup`, under
//! the host set-up lock) writes one small record per pool to the state
//! dir's `pools/<pool>.json`; `pool drain` removes it with the pool.
//! `pool status`, `pool drain --all` and `reconcile` without `--pool`
//! cover every pool listed there: the pools that commands of this state
//! dir set up, never another state dir's. A pool made by a run that owns it alone (`wasp demo`,
//! `wasp bench`) records that process, so a reconcile can remove the pool
//! once its process is gone, whatever the pool's name.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The registry's folder inside a state dir.
pub const REGISTRY_SUBDIR: &str = "pools";

/// Errors reading or writing the registry.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// A record cannot be read or written.
    #[error("pool registry file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A record does not parse.
    #[error(
        "pool registry file {path} is corrupt; remove it (the pool is then found only with --pool)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The process that owns a pool alone (a demo or bench run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Its pid.
    pub pid: i32,
    /// Its start time (clock ticks after boot), so a reused pid is not
    /// taken for it.
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn me() -> Option<Owner> {
        let pid = std::process::id() as i32;
        crate::state::pid_start_time(pid).map(|start| Owner { pid, start })
    }

    /// True while that process runs.
    pub fn alive(&self) -> bool {
        crate::state::pid_start_time(self.pid) == Some(self.start)
    }
}

/// One pool's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    /// Pool name.
    pub pool: String,
    /// The host netns of its bridge (`None`: the machine's own).
    pub host_netns: Option<String>,
    /// wasp created that host netns, so draining the pool removes it.
    pub host_netns_created: bool,
    /// Clone CIDR.
    pub cidr: String,
    /// Bridge name.
    pub bridge: String,
    /// Tap name.
    pub tap: String,
    /// Tap address.
    pub tap_ip: Ipv4Addr,
    /// Tap prefix.
    pub tap_prefix: u8,
    /// Guest address.
    pub guest_ip: Ipv4Addr,
    /// Host ports clones may reach.
    pub allow_host: Vec<SocketAddrV4>,
    /// Clones may reach beyond the CIDR.
    pub egress: bool,
    /// The slots' layout, `bridge` or `routed` (records older than
    /// layouts are bridge pools).
    #[serde(default = "bridge")]
    pub layout: String,
    /// The process that owns the pool alone, if one does.
    pub owner: Option<Owner>,
}

fn bridge() -> String {
    "bridge".into()
}

impl PoolEntry {
    /// An owned pool whose owner is gone: its slots are leftovers.
    pub fn orphaned(&self) -> bool {
        self.owner.is_some_and(|o| !o.alive())
    }
}

/// The records in one folder (a state dir's [`REGISTRY_SUBDIR`]).
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    /// The registry of the state dir `state_dir`.
    pub fn of_state_dir(state_dir: &Path) -> Self {
        Registry::at(Self::dir_of(state_dir))
    }

    /// The registry's folder in the state dir `state_dir`.
    pub fn dir_of(state_dir: &Path) -> PathBuf {
        state_dir.join(REGISTRY_SUBDIR)
    }

    /// The registry kept in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Registry { dir: dir.into() }
    }

    fn path(&self, pool: &str) -> PathBuf {
        self.dir.join(format!("{pool}.json"))
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
        move |source| RegistryError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Writes (or replaces) `entry`, keeping what an earlier record knew:
    /// that wasp created the host netns, and the pool's owner unless
    /// `entry` names one.
    pub fn put(&self, mut entry: PoolEntry) -> Result<(), RegistryError> {
        if let Ok(Some(old)) = self.get(&entry.pool) {
            entry.host_netns_created |=
                old.host_netns_created && old.host_netns == entry.host_netns;
            if entry.owner.is_none() {
                entry.owner = old.owner;
            }
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(Self::io(&self.dir))?;
        let path = self.path(&entry.pool);
        let bytes = serde_json::to_vec_pretty(&entry).expect("a pool entry serializes");
        crate::state::write_atomic(&self.dir, &format!("{}.json", entry.pool), &bytes, 0o600)
            .map_err(Self::io(&path))
    }

    /// The record of `pool`, if there is one.
    pub fn get(&self, pool: &str) -> Result<Option<PoolEntry>, RegistryError> {
        let path = self.path(pool);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| RegistryError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }

    /// Every record, by pool name; the ones that do not parse as errors.
    pub fn list(&self) -> (Vec<PoolEntry>, Vec<RegistryError>) {
        let mut out = Vec::new();
        let mut errs = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (out, errs),
            Err(e) => return (out, vec![Self::io(&self.dir)(e)]),
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
            .collect();
        names.sort();
        for n in names {
            match self.get(&n) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => {}
                Err(e) => errs.push(e),
            }
        }
        (out, errs)
    }

    /// Removes the record of `pool` (none is fine).
    pub fn remove(&self, pool: &str) -> Result<(), RegistryError> {
        let path = self.path(pool);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Self::io(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Marks `pool` as owned by this process alone.
    pub fn set_owner_me(&self, pool: &str) -> Result<(), RegistryError> {
        match self.get(pool)? {
            Some(mut e) => {
                e.owner = Owner::me();
                self.put(e)
            }
            None => Ok(()),
        }
    }

    /// True when another recorded pool keeps its bridge in `host_netns`.
    pub fn host_netns_shared(&self, host_netns: &str, except: &str) -> bool {
        self.list()
            .0
            .iter()
            .any(|e| e.pool != except && e.host_netns.as_deref() == Some(host_netns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths;

    fn entry(pool: &str, host_netns: Option<&str>, created: bool) -> PoolEntry {
        PoolEntry {
            pool: pool.into(),
            host_netns: host_netns.map(str::to_owned),
            host_netns_created: created,
            cidr: "10.0.0.0/16".into(),
            bridge: paths::DEFAULT_BRIDGE.into(),
            tap: paths::DEFAULT_TAP.into(),
            tap_ip: paths::DEFAULT_TAP_IP,
            tap_prefix: paths::DEFAULT_TAP_PREFIX,
            guest_ip: paths::DEFAULT_GUEST_IP,
            allow_host: vec![],
            egress: false,
            layout: bridge(),
            owner: None,
        }
    }

    #[test]
    fn put_get_list_remove_and_what_a_rewrite_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::at(dir.path().join("pools"));
        r.put(entry("a", Some("wasp-hostns-x"), true)).unwrap();
        r.put(entry("b", None, false)).unwrap();
        assert_eq!(
            r.get("a").unwrap().unwrap(),
            entry("a", Some("wasp-hostns-x"), true)
        );
        // A later set-up that found the netns already there keeps the
        // fact that wasp made it.
        r.put(entry("a", Some("wasp-hostns-x"), false)).unwrap();
        assert!(r.get("a").unwrap().unwrap().host_netns_created);
        let (all, errs) = r.list();
        assert!(errs.is_empty());
        assert_eq!(
            all.iter().map(|e| e.pool.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(r.host_netns_shared("wasp-hostns-x", "b"));
        assert!(!r.host_netns_shared("wasp-hostns-x", "a"));
        r.remove("a").unwrap();
        r.remove("a").unwrap();
        assert!(r.get("a").unwrap().is_none());
    }

    #[test]
    fn an_owner_that_is_gone_orphans_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::at(dir.path());
        r.put(entry("mine", None, false)).unwrap();
        r.set_owner_me("mine").unwrap();
        let e = r.get("mine").unwrap().unwrap();
        assert!(!e.orphaned(), "this process runs");
        // A child that has exited: its pid and start time name no process.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let start = crate::state::pid_start_time(pid);
        child.wait().unwrap();
        let gone = PoolEntry {
            owner: Some(Owner {
                pid,
                start: start.unwrap_or(1),
            }),
            ..e
        };
        assert!(gone.orphaned());
    }

    #[test]
    fn a_corrupt_record_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::at(dir.path());
        std::fs::write(dir.path().join("bad.json"), b"{").unwrap();
        let (all, errs) = r.list();
        assert!(all.is_empty());
        assert!(
            errs[0].to_string().contains("bad.json is corrupt"),
            "{}",
            errs[0]
        );
    }
}

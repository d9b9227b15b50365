//! Crash recovery: `wasp reconcile`, also run at the start of every command
//! that owns state.
//!
//! Everything wasp owns is found again from names, marks and state files,
//! never from a process's memory:
//!
//! - **clone records** in the state dir ([`crate::state`]): a record is
//!   *healthy* when its VMM is the recorded process (pid + start time, then
//!   signalled only through a pidfd), that VMM lives in the recorded slot
//!   netns (same namespace inode as `/run/netns/<slot>`), the slot's tap
//!   exists there, the clone's directory exists, and, when the pool is in
//!   scope, the slot is wired to the bridge. Healthy clones are *adopted*
//!   (kept; `wasp ls` lists them). Broken ones are removed completely: VMM
//!   stopped, files and record removed, slot recycled (or destroyed).
//!   Records that do not parse are moved aside as `NAME.corrupt`.
//! - **VMM processes** without a healthy record (a crash between launch and
//!   record): a process whose `--api-sock` argument lies in
//!   `<runtime>/clones/wasp-<id>/` (or that runs in a jail
//!   `<runtime>/jail/<exec>/<id>/root`) is killed only when it is this
//!   state dir's ([`find_vmms`]): a pidfd is opened first, then its argv,
//!   root, executable (dev+ino of a configured Firecracker, jailer or
//!   stand-in, or the jailer's copy of Firecracker in the jail), uids
//!   (wasp's, or the jail's recorded in its mark) and start time are read,
//!   the clone dir (and jail dir) it names must carry this state dir's
//!   mark ([`Owner`]), and the pidfd must still be running afterwards; the
//!   start time is checked again before `pidfd_send_signal(SIGKILL)`.
//!   Anything else is left alone (logged), as is an adopted clone's VMM.
//! - **clone directories** `<runtime>/clones/wasp-<id>` and **jails** of
//!   clones that are not adopted, when they carry this state dir's mark
//!   ([`crate::pipeline::storage::clone::reconcile_dir`], [`crate::vmm::jailer::reconcile`]),
//!   and **cgroups** under this state dir's own parent
//!   `<cgroup2>/wasp/<owner id>` ([`crate::vmm::cgroup::reconcile`]). Several
//!   state dirs may share a host and a runtime dir: none touches another's.
//! - **slots** of the pool in scope ([`crate::pipeline::pool::Pool::reconcile`]):
//!   healthy ones stay (free ones are the warm pool), broken ones are
//!   removed, the slots of removed clones and killed orphans are recycled
//!   (tap free, conntrack flushed).
//!
//! Concurrency: every command that owns state holds a `flock` on
//! `<state>/lock` for its whole run (shared). Reconcile needs it exclusive,
//! so it never mistakes another command's clones in flight for a crash's
//! leftovers; when another command is running, the automatic reconcile is
//! skipped and `wasp reconcile` says so. The kernel drops the lock of a
//! killed process, so a crash never leaves it held.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use crate::ops::teardown;
use crate::paths::PREFIX;
use crate::pipeline::pool::{Pool, PoolConfig};
use crate::pipeline::slot::{HostNet, Kernel, SlotNet, SlotOps};
use crate::pipeline::storage::clone::{reconcile_dir, CLONES_SUBDIR};
use crate::state::{self, CloneRecord, Owner, StateError, Store};
use crate::sys::fs::{flock, FlockMode};
use crate::sys::{netns, pidfd};
use crate::vmm::firecracker::Chosen;
use crate::vmm::VmmFate;

/// The lock file in the state dir.
pub const LOCK_FILE: &str = "lock";
/// Suffix of records moved aside because they do not parse.
pub const CORRUPT_SUFFIX: &str = ".corrupt";
/// How long a killed VMM gets to show its exit on the pidfd.
const KILL_WAIT_MS: i32 = 5_000;

/// Errors that stop reconcile as a whole (per-object failures are listed
/// in [`Report::errors`]).
#[derive(Debug, Error)]
pub enum ReconcileError {
    /// The lock file cannot be opened or locked.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another wasp command holds the state dir.
    #[error("another wasp command is using the state dir {0} (it holds {0}/lock); run `wasp reconcile` again when it has finished")]
    Busy(PathBuf),
    /// The state dir cannot be used.
    #[error("cannot use the state dir")]
    State(#[from] StateError),
}

/// A `flock` on `<state>/lock`, held for a command's whole run.
#[derive(Debug)]
pub struct StateLock {
    file: File,
    path: PathBuf,
}

impl StateLock {
    fn open(state_dir: &Path) -> Result<Self, ReconcileError> {
        let path = state_dir.join(LOCK_FILE);
        let lock_err = |source| ReconcileError::Lock {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(lock_err)?;
        let file = crate::sys::fs::open_lock_file(&path).map_err(lock_err)?;
        Ok(Self { file, path })
    }

    fn take(&self, mode: FlockMode, wait: bool) -> Result<bool, ReconcileError> {
        flock(&self.file, mode, wait).map_err(|source| ReconcileError::Lock {
            path: self.path.clone(),
            source,
        })
    }

    /// The exclusive lock, or `None` when another command holds it.
    pub fn try_exclusive(state_dir: &Path) -> Result<Option<Self>, ReconcileError> {
        let l = Self::open(state_dir)?;
        Ok(l.take(FlockMode::Exclusive, false)?.then_some(l))
    }

    /// The shared lock, waiting while a reconcile holds it exclusively.
    pub fn shared(state_dir: &Path) -> Result<Self, ReconcileError> {
        let l = Self::open(state_dir)?;
        l.take(FlockMode::Shared, true)?;
        Ok(l)
    }

    /// Converts an exclusive lock to a shared one.
    pub fn downgrade(&self) -> Result<(), ReconcileError> {
        self.take(FlockMode::Shared, true).map(drop)
    }
}

/// What to reconcile.
#[derive(Debug, Clone)]
pub struct Options {
    /// Clone records.
    pub state_dir: PathBuf,
    /// Per-clone files (`<runtime>/clones`).
    pub runtime_dir: PathBuf,
    /// The slots' tap name.
    pub tap: String,
    /// The pools whose slots are checked too (none: clones only).
    pub pools: Vec<(SlotNet, HostNet)>,
    /// The VMM binaries wasp starts ([`vmm_binaries`]): a process is killed
    /// as an orphan VMM only when it runs one of them (or, jailed, the
    /// jailer's copy of Firecracker in a jail of this state dir's).
    pub vmm_binaries: Vec<PathBuf>,
}

impl Options {
    /// The reconcile scope of a command run with the effective `cfg`: its
    /// dirs, its VMM binaries, and its pool when the command owns slots
    /// (`with_pool`).
    pub fn from_config(cfg: &crate::config::Config, with_pool: bool) -> Options {
        Options {
            state_dir: cfg.state_dir.value.clone(),
            runtime_dir: cfg.runtime_dir.value.clone(),
            tap: cfg.tap.value.clone(),
            pools: if with_pool {
                vec![(cfg.slot_net(), cfg.host_net())]
            } else {
                vec![]
            },
            vmm_binaries: vmm_binaries(
                cfg.firecracker_choice().as_ref(),
                cfg.jailer_choice().as_ref(),
            ),
        }
    }
}

/// A healthy clone kept.
#[derive(Debug, Clone, Serialize)]
pub struct Adopted {
    /// Clone id.
    pub id: String,
    /// VMM pid.
    pub pid: i32,
    /// Slot netns.
    pub netns: String,
}

/// A broken clone removed.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    /// Clone id.
    pub id: String,
    /// Why it was judged broken.
    pub reason: String,
    /// What happened to its VMM.
    pub vmm: Option<VmmFate>,
}

/// A VMM of wasp's without a healthy record, killed.
#[derive(Debug, Clone, Serialize)]
pub struct Orphan {
    /// pid.
    pub pid: i32,
    /// The clone id its API socket names.
    pub clone_id: String,
}

/// A record that did not parse, moved aside.
#[derive(Debug, Clone, Serialize)]
pub struct Corrupt {
    /// The record.
    pub path: PathBuf,
    /// Where it went.
    pub moved_to: PathBuf,
    /// Why it is corrupt.
    pub error: String,
}

/// What happened to the pool's slots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlotsReport {
    /// Pool name.
    pub pool: String,
    /// Healthy slots left (held by adopted clones, or free).
    pub healthy: usize,
    /// Of those, held by adopted clones.
    pub held: usize,
    /// Broken slots removed.
    pub removed: Vec<u32>,
    /// Slots of removed clones and killed orphans, recycled for reuse.
    pub recycled: Vec<u32>,
}

/// Everything reconcile did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Healthy clones kept.
    pub adopted: Vec<Adopted>,
    /// Broken clones removed.
    pub removed: Vec<Removed>,
    /// VMMs without a healthy record, killed.
    pub orphans_killed: Vec<Orphan>,
    /// Clone directories removed.
    pub dirs_removed: Vec<PathBuf>,
    /// Records moved aside.
    pub corrupt: Vec<Corrupt>,
    /// Temp files of interrupted record writes removed.
    pub temp_removed: usize,
    /// The pools in scope, one report each.
    pub pools: Vec<SlotsReport>,
    /// Every error met (reconcile goes on past each).
    pub errors: Vec<String>,
}

impl Report {
    /// True when reconcile changed anything or met an error.
    pub fn acted(&self) -> bool {
        !(self.removed.is_empty()
            && self.orphans_killed.is_empty()
            && self.dirs_removed.is_empty()
            && self.corrupt.is_empty()
            && self.temp_removed == 0
            && self.errors.is_empty()
            && self
                .pools
                .iter()
                .all(|s| s.removed.is_empty() && s.recycled.is_empty()))
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} clone(s) adopted, {} broken clone(s) removed, {} orphan VMM(s) killed, {} clone dir(s) removed, {} corrupt record(s) moved aside",
            self.adopted.len(),
            self.removed.len(),
            self.orphans_killed.len(),
            self.dirs_removed.len(),
            self.corrupt.len()
        );
        for sl in &self.pools {
            s.push_str(&format!(
                "; pool {}: {} healthy slot(s) ({} held by clones), {} broken removed, {} recycled",
                sl.pool,
                sl.healthy,
                sl.held,
                sl.removed.len(),
                sl.recycled.len()
            ));
        }
        if !self.errors.is_empty() {
            s.push_str(&format!("; {} error(s)", self.errors.len()));
        }
        s
    }
}

/// Runs reconcile under the exclusive lock (for `wasp reconcile`).
pub fn reconcile(o: &Options) -> Result<Report, ReconcileError> {
    let _lock = StateLock::try_exclusive(&o.state_dir)?
        .ok_or_else(|| ReconcileError::Busy(o.state_dir.clone()))?;
    run(o)
}

/// At the start of a command that owns state: reconcile when no other
/// wasp command is running, then hold the shared lock for the command's
/// run. Returns the lock and the report (`None`: skipped, another command
/// is running).
pub fn at_start(o: &Options) -> Result<(StateLock, Option<Report>), ReconcileError> {
    match StateLock::try_exclusive(&o.state_dir)? {
        Some(l) => {
            let r = run(o);
            l.downgrade()?;
            let r = r?;
            if r.acted() {
                tracing::warn!("reconcile: {}", r.summary());
                for e in &r.errors {
                    tracing::warn!("reconcile: {e}");
                }
            }
            Ok((l, Some(r)))
        }
        None => {
            tracing::info!("reconcile skipped: another wasp command holds the state dir");
            Ok((StateLock::shared(&o.state_dir)?, None))
        }
    }
}

/// The pool's slot scan, for judging clones.
struct SlotView {
    kernel: Option<Kernel>,
    /// Healthy slot indexes.
    healthy: BTreeSet<u32>,
    /// Slot netns inode -> index.
    by_inode: BTreeMap<u64, u32>,
}

fn ino(p: impl AsRef<Path>) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.ino())
}

fn scan_pool(net: &SlotNet, host: &HostNet, rep: &mut Report) -> Option<SlotView> {
    if let Some(h) = &host.netns {
        if !netns::exists(h) {
            // No host side: nothing can be wired, every slot netns of the
            // pool is a leftover.
            remove_unwired(net, rep);
            return None;
        }
    }
    let attached = Kernel::attach(net.clone(), host).and_then(|k| {
        let found = k.scan()?;
        Ok((k, found))
    });
    let (kernel, found) = match attached {
        Ok(kf) => kf,
        Err(e) => {
            rep.errors
                .push(format!("pool {}: {}", net.pool, crate::error::chain(&e)));
            return None;
        }
    };
    let healthy = found
        .iter()
        .filter(|f| f.healthy())
        .map(|f| f.index)
        .collect();
    let by_inode = found
        .iter()
        .filter(|f| f.has_netns)
        .filter_map(|f| Some((ino(netns::path_of(&net.netns_name(f.index)))?, f.index)))
        .collect();
    Some(SlotView {
        kernel: Some(kernel),
        healthy,
        by_inode,
    })
}

fn remove_unwired(net: &SlotNet, rep: &mut Report) {
    let names = match netns::list_named() {
        Ok(n) => n,
        Err(e) => {
            rep.errors
                .push(format!("list {}: {e}", netns::NETNS_RUN_DIR));
            return;
        }
    };
    let mut sr = SlotsReport {
        pool: net.pool.clone(),
        ..Default::default()
    };
    let ours: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| net.index_of_netns(n).is_some())
        .collect();
    // A slot whose veth0 still exists is wired to some other host netns
    // (the same pool name used elsewhere): not ours to judge.
    for (n, gone) in ours
        .iter()
        .zip(links_missing(&ours, crate::pipeline::slot::VETH0))
    {
        let (Some(i), Some(_)) = (net.index_of_netns(n), gone) else {
            continue;
        };
        let lease_dir = Path::new(crate::pipeline::lease::LEASE_DIR);
        match crate::pipeline::lease::Lease::remove_leftover_slot(lease_dir, n) {
            Ok(true) => sr.removed.push(i),
            // Another process holds it: not a leftover.
            Ok(false) => {}
            Err(e) => rep.errors.push(format!("delete netns {n}: {e}")),
        }
    }
    rep.pools.push(sr);
}

/// Why a record is not healthy, or `None` when it is.
fn judge(r: &CloneRecord, view: Option<&SlotView>, scoped: bool) -> Option<String> {
    if let Some(why) = state::clone_health(r) {
        return Some(why);
    }
    if scoped {
        if let Some(v) = view {
            if !v.healthy.contains(&r.slot) {
                return Some(format!("its slot {} is not wired to the bridge", r.netns));
            }
        }
    }
    None
}

/// Which of `recs` lack their slot's tap, checked on one thread that
/// enters each slot netns in turn.
fn taps_missing(recs: &[&CloneRecord], tap: &str) -> Vec<Option<String>> {
    let names: Vec<&str> = recs.iter().map(|r| r.netns.as_str()).collect();
    links_missing(&names, tap)
}

/// For each named netns, `None` when it holds the link `link`, else why
/// not; one thread enters each namespace in turn.
fn links_missing(netns_names: &[&str], link: &str) -> Vec<Option<String>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            netns_names
                .iter()
                .map(|ns| {
                    let fd = match netns::open_named(ns) {
                        Ok(fd) => fd,
                        Err(e) => return Some(format!("cannot open slot netns {ns}: {e}")),
                    };
                    if let Err(e) = netns::enter(&fd) {
                        return Some(format!("cannot enter slot netns {ns}: {e}"));
                    }
                    match crate::sys::tap::ifindex(link) {
                        Ok(_) => None,
                        Err(_) => Some(format!("its {link} is gone from {ns}")),
                    }
                })
                .collect()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The clone id of an API socket path `<clones>/wasp-<id>/api.sock`, when
/// `<clones>` is one of `clones_dirs`.
pub fn clone_id_of_sock(sock: &Path, clones_dirs: &[PathBuf]) -> Option<String> {
    let dir = sock.parent()?;
    let parent = dir.parent()?;
    if !clones_dirs.iter().any(|c| c == parent) {
        return None;
    }
    let name = dir.file_name()?.to_str()?;
    name.strip_prefix(&format!("{PREFIX}-"))
        .filter(|id| crate::snapshot::manifest::is_id(id))
        .map(str::to_owned)
}

/// The clone id of a jailed VMM whose root is `root`
/// (`<runtime>/jail/<exec>/<id>/root`), when `<runtime>/clones` is one of
/// `clones_dirs`.
pub fn jailed_clone_id(root: &Path, clones_dirs: &[PathBuf]) -> Option<String> {
    let jail = root.parent()?;
    let base = jail.parent()?.parent()?;
    if base.file_name()? != crate::vmm::jailer::JAIL_DIR || root.file_name()? != "root" {
        return None;
    }
    let runtime = base.parent()?;
    if !clones_dirs.iter().any(|c| c.parent() == Some(runtime)) {
        return None;
    }
    jail.file_name()?
        .to_str()
        .filter(|id| crate::snapshot::manifest::is_id(id))
        .map(str::to_owned)
}

/// The `--api-sock` argument of a NUL-separated command line.
pub fn api_sock_arg(cmdline: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut it = cmdline.split(|b| *b == 0);
    while let Some(a) = it.next() {
        if a == b"--api-sock" {
            return it
                .next()
                .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)));
        }
        if let Some(p) = a.strip_prefix(b"--api-sock=") {
            return Some(PathBuf::from(std::ffi::OsStr::from_bytes(p)));
        }
    }
    None
}

/// What a process must be for reconcile to kill it as an orphan VMM of
/// this state dir.
#[derive(Debug)]
pub struct VmmScope<'a> {
    /// `<runtime>/clones`, as given and canonical.
    pub clones_dirs: Vec<PathBuf>,
    /// The state dir's owner: the clone dir (and jail dir) the process
    /// names must carry its mark.
    pub owner: &'a Owner,
    /// `(dev, ino)` of the VMM binaries wasp starts (Firecracker, the
    /// jailer, the stand-in), run as `uid`.
    pub exes: Vec<(u64, u64)>,
    /// The uid of a VMM that is not jailed (wasp's own euid).
    pub uid: u32,
}

/// A VMM process of this state dir's found in /proc, held by a pidfd.
#[derive(Debug)]
pub struct VmmProc {
    /// pid.
    pub pid: i32,
    /// Start time (clock ticks since boot).
    pub start: u64,
    /// Clone id from its API socket path.
    pub clone_id: String,
    /// Its network namespace inode.
    pub netns_ino: Option<u64>,
    /// A pidfd opened before anything of the process was read, so every
    /// read, and the kill, are of this one process.
    pub pidfd: OwnedFd,
}

/// A process that names a clone's API socket but is not a VMM of this
/// state dir's: left alone.
#[derive(Debug, Clone)]
pub struct LeftAlone {
    /// pid.
    pub pid: i32,
    /// The clone id its argv names.
    pub clone_id: String,
    /// Why it is not ours.
    pub why: String,
    /// True when the clone dir it names is this state dir's (so a wasp
    /// VMM may be running from a binary reconcile was not told of).
    pub names_ours: bool,
}

enum Inspected {
    NotAVmm,
    Ours(VmmProc),
    LeftAlone(LeftAlone),
}

fn dev_ino(p: impl AsRef<Path>) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// The real, effective, saved and fs uids of `pid`, when all four are one.
fn single_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_single_uid(&status)
}

fn parse_single_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let ids: Vec<u32> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (ids.len() == 4 && ids.iter().all(|u| *u == ids[0])).then_some(ids[0])
}

/// Looks at `pid`: a pidfd first, then its argv, root, executable, uids
/// and start time, then the pidfd again (still running, so every read was
/// of the process the pidfd holds, never of a process that took its pid).
fn inspect(pid: i32, s: &VmmScope) -> Inspected {
    let Ok(pidfd) = pidfd::pidfd_open(pid) else {
        return Inspected::NotAVmm;
    };
    // Gone meanwhile, or a kernel thread: no command line.
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return Inspected::NotAVmm;
    };
    let Some(sock) = api_sock_arg(&cmd) else {
        return Inspected::NotAVmm;
    };
    let sock = if sock.is_relative() {
        match std::fs::read_link(format!("/proc/{pid}/cwd")) {
            Ok(cwd) => cwd.join(sock),
            Err(_) => return Inspected::NotAVmm,
        }
    } else {
        sock
    };
    // A jailed Firecracker names its socket inside its chroot,
    // `<runtime>/jail/<exec>/<id>/root`: the jail names the clone.
    let root = std::fs::read_link(format!("/proc/{pid}/root")).ok();
    let jail_root = root
        .filter(|r| r != Path::new("/"))
        .and_then(|r| jailed_clone_id(&r, &s.clones_dirs).map(|id| (r, id)));
    let (clone_id, clone_dir) = match &jail_root {
        Some((r, id)) => {
            // <runtime>/jail/<exec>/<id>/root -> <runtime>/clones/wasp-<id>
            let runtime = r.ancestors().nth(4).unwrap_or(Path::new("/"));
            (
                id.clone(),
                runtime.join(CLONES_SUBDIR).join(format!("{PREFIX}-{id}")),
            )
        }
        None => match clone_id_of_sock(&sock, &s.clones_dirs) {
            Some(id) => (id, sock.parent().unwrap_or(Path::new("/")).to_owned()),
            None => return Inspected::NotAVmm,
        },
    };
    let left = |why: String, names_ours: bool| {
        Inspected::LeftAlone(LeftAlone {
            pid,
            clone_id: clone_id.clone(),
            why,
            names_ours,
        })
    };
    if !s.owner.owns(&clone_dir) {
        return left(
            format!(
                "the clone dir {} it names is missing or not marked as this state dir's",
                clone_dir.display()
            ),
            false,
        );
    }
    let exe = dev_ino(format!("/proc/{pid}/exe"));
    let uid = single_uid(pid);
    let wasp_binary = exe.is_some_and(|e| s.exes.contains(&e)) && uid == Some(s.uid);
    let jailed_vmm = match &jail_root {
        None => false,
        Some((r, _)) => {
            let jail = r.parent().unwrap_or(Path::new("/"));
            let Some(mark) = s.owner.marked(jail) else {
                return left(
                    format!(
                        "its jail {} is not marked as this state dir's",
                        jail.display()
                    ),
                    true,
                );
            };
            let field = |k: &str| {
                mark.iter()
                    .find(|(key, _)| key == k)
                    .and_then(|(_, v)| v.parse::<u32>().ok())
            };
            // The jailer's copy of Firecracker in that chroot, as the
            // jail's uid.
            let exec = jail.parent().and_then(Path::file_name).map(|n| r.join(n));
            exec.and_then(dev_ino).is_some_and(|c| exe == Some(c))
                && uid.is_some()
                && uid == field("uid")
        }
    };
    if !(wasp_binary || jailed_vmm) {
        return left(
            format!(
                "its executable or uid ({uid:?}) is not one of the VMMs wasp starts (Firecracker, the jailer, the stand-in, as configured)"
            ),
            true,
        );
    }
    let Some(start) = state::pid_start_time(pid) else {
        return Inspected::NotAVmm;
    };
    let netns_ino = ino(format!("/proc/{pid}/ns/net"));
    // Still running: the pid was never another process's while we read.
    if !matches!(pidfd::pidfd_exited(&pidfd, 0), Ok(false)) {
        return Inspected::NotAVmm;
    }
    Inspected::Ours(VmmProc {
        pid,
        start,
        clone_id,
        netns_ino,
        pidfd,
    })
}

/// Every VMM of this state dir (see [`VmmScope`]) whose API socket lies in
/// one of its clones dirs, and the processes that name such a socket but
/// are not ours.
pub fn find_vmms(s: &VmmScope) -> io::Result<(Vec<VmmProc>, Vec<LeftAlone>)> {
    let me = std::process::id() as i32;
    let (mut ours, mut left) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir("/proc")? {
        let Ok(e) = e else { continue };
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        match inspect(pid, s) {
            Inspected::NotAVmm => {}
            Inspected::Ours(p) => ours.push(p),
            Inspected::LeftAlone(l) => left.push(l),
        }
    }
    Ok((ours, left))
}

/// SIGKILLs `p` through its pidfd, if it is still the process found.
fn kill_exact(p: &VmmProc) -> io::Result<bool> {
    // The pidfd holds the process: it is alive and its pid still names it,
    // and its start time is the one inspected.
    if pidfd::pidfd_exited(&p.pidfd, 0)? || state::pid_start_time(p.pid) != Some(p.start) {
        return Ok(false);
    }
    match pidfd::pidfd_send_signal(&p.pidfd, libc::SIGKILL) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
        Err(e) => return Err(e),
    }
    if pidfd::pidfd_exited(&p.pidfd, KILL_WAIT_MS)? {
        Ok(true)
    } else {
        Err(io::Error::other("still running 5 s after SIGKILL"))
    }
}

/// The VMM binaries to accept as wasp's: Firecracker and the jailer as
/// configured (else `WASP_FIRECRACKER`/`WASP_JAILER`, beside Firecracker,
/// `PATH`) and the stand-in (`WASP_STANDIN`, `wasp-standin` beside this
/// executable, or this executable, which a stand-in link points to).
/// Missing ones are left out.
pub fn vmm_binaries(firecracker: Option<&Chosen>, jailer: Option<&Chosen>) -> Vec<PathBuf> {
    let from_env = |var: &str| {
        std::env::var_os(var).map(|p| Chosen {
            path: PathBuf::from(p),
            origin: var.to_owned(),
        })
    };
    let fc_env = from_env(crate::config::FIRECRACKER_ENV);
    let fc =
        crate::vmm::firecracker::locate("firecracker", firecracker.or(fc_env.as_ref()), None).ok();
    let jl_env = from_env(crate::config::JAILER_ENV);
    let jl = crate::vmm::firecracker::locate(
        "jailer",
        jailer.or(jl_env.as_ref()),
        fc.as_deref().and_then(Path::parent),
    )
    .ok();
    let mut v: Vec<PathBuf> = fc.into_iter().chain(jl).collect();
    v.extend(std::env::var_os("WASP_STANDIN").map(PathBuf::from));
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            v.push(dir.join(crate::standin::STANDIN_NAME));
        }
        v.push(exe);
    }
    v
}

fn clones_dirs(runtime_dir: &Path) -> Vec<PathBuf> {
    let d = runtime_dir.join(CLONES_SUBDIR);
    let mut v = vec![d.clone()];
    if let Ok(c) = d.canonicalize() {
        if c != d {
            v.push(c);
        }
    }
    v
}

/// Removes a whole pool that one process owned alone (`wasp demo`,
/// `wasp bench`): every slot of it (through the pool's drain when its host
/// side is there, then any slot namespace still named for it), and its host
/// netns when wasp created it (`delete_host_netns`; the bridge and the host
/// nft table go with it). A shared host netns keeps its bridge and table.
/// Goes on past every error and returns them all, with the slot count.
/// Used by [`run`] for pools whose owner is gone, and by demo and bench
/// runs on every exit path.
pub fn remove_owned_pool(
    net: &SlotNet,
    host: &HostNet,
    delete_host_netns: bool,
) -> (SlotsReport, Vec<String>) {
    let mut sr = SlotsReport {
        pool: net.pool.clone(),
        ..Default::default()
    };
    let mut errors = Vec::new();
    // A host netns of its own goes first: the kernel removes all of its
    // links (every slot's host veth, and with it the slot's veth0) in one
    // batch, far faster than deleting the slots' links one by one (each
    // waits out RCU grace periods under the RTNL lock). The slot
    // namespaces are then only names to remove.
    if delete_host_netns {
        if let Some(h) = host.netns.as_deref().filter(|h| netns::exists(h)) {
            if let Err(e) = netns::delete_named(h) {
                errors.push(format!("delete host netns {h}: {e}"));
            }
        }
    }
    let host_there = host.netns.as_deref().is_none_or(netns::exists);
    if host_there && !delete_host_netns {
        match Kernel::attach(net.clone(), host) {
            Ok(k) => {
                let found: Vec<u32> = k
                    .scan()
                    .map(|f| f.into_iter().map(|f| f.index).collect())
                    .unwrap_or_default();
                let pool = Pool::new(
                    k,
                    PoolConfig {
                        low_water: 0,
                        ..PoolConfig::default()
                    },
                );
                match pool.drain() {
                    Ok(_) => sr.removed.extend(found),
                    Err(e) => {
                        errors.push(format!("pool {}: {}", net.pool, crate::error::chain(&e)))
                    }
                }
            }
            Err(e) => errors.push(format!("pool {}: {}", net.pool, crate::error::chain(&e))),
        }
    }
    // Slot namespaces the drain did not find wired (a slot killed half
    // built, or the host netns already gone): the pool's by name.
    match netns::list_named() {
        Ok(names) => {
            let mine: Vec<(u32, String)> = names
                .into_iter()
                .filter_map(|n| Some((net.index_of_netns(&n)?, n)))
                .collect();
            for ((i, n), r) in mine.iter().zip(remove_leftover_slots(&mine)) {
                match r {
                    Ok(true) => sr.removed.push(*i),
                    Ok(false) => errors.push(format!(
                        "slot {n}: another process holds its lease; it is not a leftover"
                    )),
                    Err(e) => errors.push(format!("delete netns {n}: {e}")),
                }
            }
        }
        Err(e) => errors.push(format!("list {}: {e}", netns::NETNS_RUN_DIR)),
    }
    (sr, errors)
}

/// [`crate::pipeline::lease::Lease::remove_leftover_slot`] of each slot
/// namespace, one result per name, in order. On several threads: each
/// name's unmount waits out an RCU grace period in the kernel (not the
/// CPU), and waits on several threads overlap (5 000 names one after the
/// other took 15-23 s).
fn remove_leftover_slots(names: &[(u32, String)]) -> Vec<std::io::Result<bool>> {
    const THREADS: usize = 16;
    let lease_dir = Path::new(crate::pipeline::lease::LEASE_DIR);
    let one = |n: &String| crate::pipeline::lease::Lease::remove_leftover_slot(lease_dir, n);
    if names.len() < 2 {
        return names.iter().map(|(_, n)| one(n)).collect();
    }
    let per = names.len().div_ceil(THREADS);
    std::thread::scope(|s| {
        let hs: Vec<_> = names
            .chunks(per)
            .map(|c| s.spawn(move || c.iter().map(|(_, n)| one(n)).collect::<Vec<_>>()))
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Removes every pool the state dir's registry records whose owning
/// process is gone ([`remove_owned_pool`]), whatever its name; a pool
/// removed without error loses its record. Returns the pools' names.
fn remove_orphaned_pools(state_dir: &Path, rep: &mut Report) -> BTreeSet<String> {
    let reg = crate::pipeline::registry::Registry::of_state_dir(state_dir);
    let mut gone = BTreeSet::new();
    for e in reg.list().0.into_iter().filter(|e| e.orphaned()) {
        let Some((net, host)) = SlotNet::from_entry(&e) else {
            rep.errors.push(format!(
                "pool {}: its registry record names the CIDR {:?}, which does not parse",
                e.pool, e.cidr
            ));
            continue;
        };
        let (sr, errs) = remove_owned_pool(&net, &host, e.host_netns_created);
        if errs.is_empty() {
            if let Err(err) = reg.remove(&e.pool) {
                rep.errors.push(crate::error::chain(&err));
            }
        }
        tracing::info!(
            "reconcile: pool {} of a process that is gone (pid {}): {} slot(s) removed",
            e.pool,
            e.owner.map(|o| o.pid).unwrap_or_default(),
            sr.removed.len()
        );
        rep.errors.extend(errs);
        rep.pools.push(sr);
        gone.insert(e.pool);
    }
    gone
}

/// Runs reconcile; the caller holds the exclusive lock.
pub fn run(o: &Options) -> Result<Report, ReconcileError> {
    let mut rep = Report::default();
    // Pools of demo and bench runs that are gone, whatever their names.
    let gone = remove_orphaned_pools(&o.state_dir, &mut rep);
    let scoped: Vec<(SlotNet, HostNet)> = o
        .pools
        .iter()
        .filter(|(net, _)| !gone.contains(&net.pool))
        .cloned()
        .collect();
    let o = &Options {
        pools: scoped,
        ..o.clone()
    };
    let store = Store::open(&o.state_dir)?;
    let owner = Owner::of_state_dir(&o.state_dir)?;
    rep.temp_removed = store.sweep_temp();
    let (records, bad) = store.list()?;
    for e in bad {
        move_aside(&e, &mut rep);
    }

    // The slots of the pools in scope, to judge clones by.
    let mut views: Vec<Option<SlotView>> = o
        .pools
        .iter()
        .map(|(net, host)| scan_pool(net, host, &mut rep))
        .collect();
    // Which pool in scope a record's slot belongs to.
    let scope_of = |r: &CloneRecord| {
        o.pools
            .iter()
            .position(|(net, host)| r.pool == net.pool && r.host_netns == host.netns)
    };

    // Judge every record.
    let mut verdicts: Vec<Option<String>> = records
        .iter()
        .map(|r| {
            let scope = scope_of(r);
            judge(r, scope.and_then(|i| views[i].as_ref()), scope.is_some())
        })
        .collect();
    let alive: Vec<(usize, &CloneRecord)> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| verdicts[*i].is_none())
        .collect();
    let refs: Vec<&CloneRecord> = alive.iter().map(|(_, r)| *r).collect();
    for ((i, _), missing) in alive.iter().zip(taps_missing(&refs, &o.tap)) {
        verdicts[*i] = missing;
    }

    // Adopt the healthy, remove the broken.
    let mut to_recycle: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    let mut adopted_pids = BTreeMap::new();
    for (r, verdict) in records.iter().zip(verdicts) {
        match verdict {
            None => {
                adopted_pids.insert(r.id.clone(), r.pid);
                rep.adopted.push(Adopted {
                    id: r.id.clone(),
                    pid: r.pid,
                    netns: r.netns.clone(),
                });
            }
            Some(reason) => {
                let (fate, errors) = teardown::teardown(&store, r, Duration::ZERO);
                rep.errors
                    .extend(errors.iter().map(|e| crate::error::chain(e)));
                if let Some(i) = scope_of(r) {
                    to_recycle.entry(i).or_default().insert(r.slot);
                }
                rep.removed.push(Removed {
                    id: r.id.clone(),
                    reason,
                    vmm: fate,
                });
            }
        }
    }

    // VMMs of this state dir's with no healthy record.
    let scope = VmmScope {
        clones_dirs: clones_dirs(&o.runtime_dir),
        owner: &owner,
        exes: o.vmm_binaries.iter().filter_map(dev_ino).collect(),
        uid: nix::unistd::geteuid().as_raw(),
    };
    match find_vmms(&scope) {
        Ok((procs, left)) => {
            for l in left {
                if l.names_ours {
                    tracing::warn!(
                        "reconcile: pid {} names clone {}'s API socket, but {}; not ours, left alone",
                        l.pid, l.clone_id, l.why
                    );
                } else {
                    tracing::info!(
                        "reconcile: pid {} names clone {}'s API socket, but {}; not ours, left alone",
                        l.pid, l.clone_id, l.why
                    );
                }
            }
            for p in procs {
                if adopted_pids.get(&p.clone_id) == Some(&p.pid) {
                    continue;
                }
                match kill_exact(&p) {
                    Ok(true) => {
                        for (i, v) in views.iter().enumerate() {
                            let slot = v.as_ref().zip(p.netns_ino);
                            if let Some(idx) = slot.and_then(|(v, ino)| v.by_inode.get(&ino)) {
                                to_recycle.entry(i).or_default().insert(*idx);
                            }
                        }
                        rep.orphans_killed.push(Orphan {
                            pid: p.pid,
                            clone_id: p.clone_id,
                        });
                    }
                    Ok(false) => {}
                    Err(e) => rep.errors.push(format!(
                        "cannot kill orphan VMM pid {} (clone {}): {e}",
                        p.pid, p.clone_id
                    )),
                }
            }
        }
        Err(e) => rep.errors.push(format!("cannot scan /proc: {e}")),
    }

    // Clone directories, jails (`--jailer`) and per-clone cgroups of this
    // state dir's clones that are not adopted: the dirs and jails carrying
    // its mark, the cgroups under its own parent.
    let live = |id: &str| adopted_pids.contains_key(id);
    let owns = |d: &Path| owner.owns(d);
    let dirs = reconcile_dir(&o.runtime_dir.join(CLONES_SUBDIR), &live, Some(&owner));
    let jails = crate::vmm::jailer::reconcile(
        &o.runtime_dir.join(crate::vmm::jailer::JAIL_DIR),
        &live,
        &owns,
    );
    for r in [dirs, jails] {
        for p in &r.not_ours {
            tracing::info!(
                "reconcile: {} is not marked as this state dir's; not ours, left alone",
                p.display()
            );
        }
        rep.dirs_removed.extend(r.removed);
        rep.errors.extend(r.errors);
    }
    if let Some(mount) = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|mi| crate::vmm::cgroup::find_cgroup2(&mi))
    {
        let cgroups =
            crate::vmm::cgroup::reconcile(&crate::vmm::cgroup::owner_dir(&mount, &owner), &live);
        rep.dirs_removed.extend(cgroups.removed);
        rep.errors.extend(cgroups.errors);
    }

    // Each pool: remove broken slots, recycle freed ones.
    for (i, view) in views.iter_mut().enumerate() {
        let Some(kernel) = view.as_mut().and_then(|v| v.kernel.take()) else {
            continue;
        };
        let net = kernel.net().clone();
        let held: BTreeSet<u32> = records
            .iter()
            .filter(|r| scope_of(r) == Some(i) && adopted_pids.contains_key(&r.id))
            .map(|r| r.slot)
            .collect();
        let freed = to_recycle.remove(&i).unwrap_or_default();
        let sr = reconcile_slots(kernel, &net, &held, &freed, &mut rep.errors);
        rep.pools.push(sr);
    }
    Ok(rep)
}

fn reconcile_slots(
    kernel: Kernel,
    net: &SlotNet,
    held: &BTreeSet<u32>,
    to_recycle: &BTreeSet<u32>,
    errors: &mut Vec<String>,
) -> SlotsReport {
    let pool = Pool::new(
        kernel,
        PoolConfig {
            low_water: 0,
            ..PoolConfig::default()
        },
    );
    let mut sr = SlotsReport {
        pool: net.pool.clone(),
        ..Default::default()
    };
    let pr = match pool.reconcile() {
        Ok(r) => r,
        Err(e) => {
            errors.push(format!("pool {}: {}", net.pool, crate::error::chain(&e)));
            return sr;
        }
    };
    errors.extend(pr.errors);
    sr.removed = pr.removed;
    let mut healthy: BTreeSet<u32> = pr.adopted.into_iter().collect();
    let freed: Vec<u32> = to_recycle.intersection(&healthy).copied().collect();
    for i in freed {
        let r = pool.ops().describe(i).and_then(|s| pool.ops().recycle(&s));
        match r {
            Ok(()) => sr.recycled.push(i),
            Err(e) => {
                errors.push(format!(
                    "slot {i} could not be recycled, removing it: {}",
                    crate::error::chain(&e)
                ));
                healthy.remove(&i);
                match pool.ops().destroy(i) {
                    Ok(()) => sr.removed.push(i),
                    Err(e) => errors.push(format!("slot {i}: {}", crate::error::chain(&e))),
                }
            }
        }
    }
    sr.healthy = healthy.len();
    sr.held = held.intersection(&healthy).count();
    sr
}

fn move_aside(e: &StateError, rep: &mut Report) {
    let path = match e {
        StateError::Corrupt { path, .. } | StateError::TooLarge { path, .. } => path.clone(),
        StateError::BadOwner(_) => {
            rep.errors.push(crate::error::chain(e));
            return;
        }
        StateError::Io { path, .. } => {
            rep.errors.push(crate::error::chain(e));
            let _ = path;
            return;
        }
    };
    let mut to = path.clone().into_os_string();
    to.push(CORRUPT_SUFFIX);
    let to = PathBuf::from(to);
    match std::fs::rename(&path, &to) {
        Ok(()) => rep.corrupt.push(Corrupt {
            path,
            moved_to: to,
            error: crate::error::chain(e),
        }),
        Err(err) => rep.errors.push(format!(
            "cannot move corrupt record {} aside: {err}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_sock_args_and_clone_ids() {
        assert_eq!(
            api_sock_arg(b"/x/wasp-standin\0--api-sock\0/r/clones/wasp-ab-1/api.sock\0"),
            Some(PathBuf::from("/r/clones/wasp-ab-1/api.sock"))
        );
        assert_eq!(
            api_sock_arg(b"fc\0--api-sock=/s\0"),
            Some(PathBuf::from("/s"))
        );
        assert_eq!(api_sock_arg(b"sleep\x0010\0"), None);
        assert_eq!(api_sock_arg(b"x\0--api-sock"), None);
        let dirs = [PathBuf::from("/r/clones")];
        let id = |p: &str| clone_id_of_sock(Path::new(p), &dirs);
        assert_eq!(id("/r/clones/wasp-ab-1/api.sock").as_deref(), Some("ab-1"));
        // Another runtime dir, a foreign name, a bad id: not ours.
        assert_eq!(id("/q/clones/wasp-ab-1/api.sock"), None);
        assert_eq!(id("/r/clones/other-ab-1/api.sock"), None);
        assert_eq!(id("/r/clones/wasp-a b/api.sock"), None);
        assert_eq!(id("/r/clones/api.sock"), None);
        // A jailed VMM: its root names the clone.
        let jailed = |p: &str| jailed_clone_id(Path::new(p), &dirs);
        assert_eq!(
            jailed("/r/jail/firecracker/ab-1/root").as_deref(),
            Some("ab-1")
        );
        assert_eq!(jailed("/q/jail/firecracker/ab-1/root"), None);
        assert_eq!(jailed("/r/other/firecracker/ab-1/root"), None);
        assert_eq!(jailed("/r/jail/firecracker/ab-1/etc"), None);
        assert_eq!(jailed("/"), None);
    }

    #[test]
    fn uids_must_be_one() {
        let st = |u: &str| format!("Name:\tx\nUid:\t{u}\nGid:\t0\t0\t0\t0\n");
        assert_eq!(parse_single_uid(&st("0\t0\t0\t0")), Some(0));
        assert_eq!(
            parse_single_uid(&st("65534\t65534\t65534\t65534")),
            Some(65534)
        );
        // A setuid process, or one that dropped only some ids: not one uid.
        assert_eq!(parse_single_uid(&st("1000\t0\t0\t0")), None);
        assert_eq!(parse_single_uid(&st("0\t0")), None);
        assert_eq!(parse_single_uid("Name:\tx\n"), None);
    }

    fn clones_only(dir: &Path) -> Options {
        Options {
            state_dir: dir.join("state"),
            runtime_dir: dir.join("run"),
            tap: "tap0".into(),
            pools: vec![],
            vmm_binaries: vec![],
        }
    }

    fn record(dir: &Path, pid: i32, start: u64) -> CloneRecord {
        CloneRecord {
            id: "t-0".into(),
            pid,
            pid_start: start,
            vmm: "standin".into(),
            netns: "wasp-nonexistent-0".into(),
            slot: 0,
            pool: "nonexistent".into(),
            host_netns: None,
            clone_ip: std::net::Ipv4Addr::new(10, 0, 0, 2),
            ready_port: None,
            api_sock: dir.join("run/clones/wasp-t-0/api.sock"),
            clone_dir: dir.join("run/clones/wasp-t-0"),
            snapshot: "/snap".into(),
            created_at: "x".into(),
            cgroup: None,
            jail_dir: None,
            request: None,
            labels: Default::default(),
            expires_at_ms: None,
            paused: false,
        }
    }

    #[test]
    fn dead_records_corrupt_records_and_stray_dirs_are_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let o = clones_only(d.path());
        let store = Store::open(&o.state_dir).unwrap();
        let r = record(d.path(), i32::MAX, 1);
        std::fs::create_dir_all(&r.clone_dir).unwrap();
        store.put(&r).unwrap();
        let stray = d.path().join("run/clones/wasp-stray-1");
        std::fs::create_dir_all(&stray).unwrap();
        let owner = Owner::of_state_dir(&o.state_dir).unwrap();
        owner.mark(&stray, &[]).unwrap();
        // Another state dir's clone dir in the same runtime dir: left alone.
        let theirs = d.path().join("run/clones/wasp-theirs-1");
        std::fs::create_dir_all(&theirs).unwrap();
        Owner::of_state_dir(&d.path().join("other"))
            .unwrap()
            .mark(&theirs, &[])
            .unwrap();
        std::fs::write(store.dir().join("wasp-bad.json"), b"{\"id\": ").unwrap();
        std::fs::write(store.dir().join(".wasp-x.json.tmp-9"), b"").unwrap();

        let rep = reconcile(&o).unwrap();
        assert!(rep.errors.is_empty(), "{:?}", rep.errors);
        assert!(rep.adopted.is_empty());
        assert_eq!(rep.removed.len(), 1);
        assert!(rep.removed[0].reason.contains("gone"), "{:?}", rep.removed);
        assert_eq!(rep.removed[0].vmm, Some(VmmFate::AlreadyGone));
        assert_eq!(rep.dirs_removed.len(), 1, "{rep:?}");
        assert_eq!(rep.corrupt.len(), 1);
        assert!(rep.corrupt[0].moved_to.ends_with("wasp-bad.json.corrupt"));
        assert!(rep.corrupt[0].moved_to.exists());
        assert_eq!(rep.temp_removed, 1);
        assert!(!r.clone_dir.exists());
        assert!(!stray.exists());
        assert!(theirs.exists());
        assert!(rep.acted());
        // Idempotent: a second run has nothing to do.
        let again = reconcile(&o).unwrap();
        assert!(!again.acted(), "{again:?}");
        assert!(store.list().unwrap().0.is_empty());
    }

    #[test]
    fn the_lock_keeps_reconcile_away_from_running_commands() {
        let d = tempfile::tempdir().unwrap();
        let o = clones_only(d.path());
        let (held, rep) = at_start(&o).unwrap();
        assert!(rep.is_some());
        // A running command holds the shared lock: reconcile refuses, and
        // another command's start skips it.
        assert!(matches!(reconcile(&o), Err(ReconcileError::Busy(_))));
        let (_second, rep) = at_start(&o).unwrap();
        assert!(rep.is_none());
        drop(held);
        drop(_second);
        reconcile(&o).unwrap();
    }
}

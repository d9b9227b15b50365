//! `wasp doctor`: checks the host and explains each failure with a fix.
//!
//! Probing (touching the machine) and evaluation (turning probe results into
//! checks) are separate: [`probe`] gathers [`Probes`], and [`evaluate`] is a
//! pure function that unit tests drive with made-up probe results. The
//! checks are one table (`CHECKS`): each row names a check, the function
//! that reads its probe and judges it, and what a failed probe means (its
//! status and the fix); `evaluate` runs the rows in order.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::netlink::{self, nft};
use crate::pipeline::storage::probe::{
    explain_reflink_errno, probe_reflink, ReflinkProbe, Strategy,
};
use crate::sys;
use crate::vmm::firecracker::{self, Chosen, Version};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, with a caveat.
    Warn,
    /// wasp cannot work until this is fixed.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short stable name, e.g. `kvm`.
    pub name: &'static str,
    /// ok / warn / fail.
    pub status: Status,
    /// What was found, and for warn/fail, how to fix it.
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check failed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The check called `name`.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// What doctor should look at.
#[derive(Debug, Clone)]
pub struct Options {
    /// The firecracker binary chosen by flag, environment or config file
    /// (`None`: look on `PATH`).
    pub firecracker: Option<Chosen>,
    /// The jailer chosen by environment or config file (`None`: beside
    /// firecracker, then `PATH`).
    pub jailer: Option<Chosen>,
    /// The runtime directory whose filesystem holds clone disks.
    pub runtime_dir: PathBuf,
    /// A snapshot whose clones' cost to report (`--snapshot`).
    pub snapshot: Option<PathBuf>,
    /// `--clones N`: every host limit judged for N clones of the
    /// configured pool (`None`: not asked).
    pub clones: Option<crate::pipeline::limits::Demand>,
}

/// A probe's raw outcome: `Ok(value)` or the error text.
pub type Probe<T> = Result<T, String>;

/// Everything doctor measured, before interpretation.
#[derive(Debug, Clone)]
pub struct Probes {
    /// Effective uid.
    pub euid: u32,
    /// `CapEff` from /proc/self/status.
    pub cap_eff: Option<u64>,
    /// Opening /dev/kvm read-write.
    pub kvm_open: Probe<()>,
    /// /sys/module/kvm_pvm exists.
    pub kvm_pvm: bool,
    /// Opening /dev/net/tun.
    pub tun_open: Probe<()>,
    /// Creating and deleting a table in a scratch netns.
    pub nftables: Probe<()>,
    /// io_uring setup and the supported opcodes wasp cares about.
    pub io_uring: Probe<Vec<(&'static str, bool)>>,
    /// userfaultfd open.
    pub userfaultfd: Probe<()>,
    /// Where cgroup2 is mounted and its controllers, if it is mounted.
    pub cgroup2: Option<(PathBuf, String)>,
    /// /proc/self/mountinfo (where a controller missing from cgroup v2 is
    /// bound instead).
    pub mountinfo: String,
    /// firecracker path and version.
    pub firecracker: Probe<(PathBuf, Version)>,
    /// jailer path and version.
    pub jailer: Probe<(PathBuf, Version)>,
    /// Runtime directory and its reflink probe.
    pub reflink: (PathBuf, Probe<ReflinkProbe>),
    /// The clone-disk strategy the runtime directory gets.
    pub strategy: Probe<Strategy>,
    /// What each clone's disks cost (the `clone_disks` check).
    pub clone_cost: Probe<CloneCost>,
    /// RLIMIT_NOFILE (soft, hard) and open fds.
    pub nofile: Probe<(u64, u64, u64)>,
    /// `net.netfilter.nf_conntrack_max`; `Ok(None)` when nf_conntrack is
    /// not loaded yet (the first slot's NAT rules load it).
    pub conntrack_max: Probe<Option<u64>>,
    /// `user.max_net_namespaces`.
    pub max_netns: Probe<u64>,
    /// A slot namespace made in wasp's own user namespace
    /// (`sys::nsowner`), then dropped.
    pub slot_owner: Probe<()>,
    /// `kernel.pid_max`.
    pub pid_max: Probe<u64>,
    /// `net.ipv4.neigh.default.gc_thresh3`.
    pub neigh_max: Probe<u64>,
    /// `--clones N`: the demand and the host's values
    /// ([`crate::pipeline::limits`]).
    pub clones: Option<(
        crate::pipeline::limits::Demand,
        Probe<crate::pipeline::limits::HostValues>,
    )>,
}

/// What each clone's disks cost in the runtime dir (`clone_disks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneCost {
    /// The runtime dir.
    pub runtime_dir: PathBuf,
    /// It is a wasp reflink store (`wasp storage init`).
    pub is_store: bool,
    /// The strategy clone disks get (of the snapshot, when one is given).
    pub strategy: Strategy,
    /// The snapshot, when one was given, and its bytes copied per clone
    /// and whether it is on another filesystem than the runtime dir.
    pub snapshot: Option<(PathBuf, u64, bool)>,
}

fn probe_clone_cost(opts: &Options) -> Probe<CloneCost> {
    use crate::pipeline::storage::{store, CloneStore, Mode};
    use std::os::unix::fs::MetadataExt;
    let is_store = store::is_store(&opts.runtime_dir);
    let Some(snap) = &opts.snapshot else {
        let strategy = crate::pipeline::storage::probe::probe_dir_strategy(&opts.runtime_dir)
            .map_err(|e| format!("{}: {e}", opts.runtime_dir.display()))?
            .strategy;
        return Ok(CloneCost {
            runtime_dir: opts.runtime_dir.clone(),
            is_store,
            strategy,
            snapshot: None,
        });
    };
    let s = CloneStore::open(snap, &opts.runtime_dir, Mode::Auto)
        .map_err(|e| format!("snapshot {}: {}", snap.display(), crate::error::chain(&e)))?;
    let bytes = s.bytes_per_clone().map_err(|e| e.to_string())?;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let cross = dev(s.snapshot_dir()) != dev(s.clones_dir());
    Ok(CloneCost {
        runtime_dir: opts.runtime_dir.clone(),
        is_store,
        strategy: s.strategy(),
        snapshot: Some((s.snapshot_dir().to_owned(), bytes, cross)),
    })
}

/// Reads a numeric sysctl from /proc/sys; `Ok(None)` when it does not exist.
pub fn read_sysctl(path: &str) -> Probe<Option<u64>> {
    match std::fs::read_to_string(path) {
        Ok(t) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{path}: {t:?} is not a number")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

fn required_sysctl(path: &str) -> Probe<u64> {
    read_sysctl(path)?.ok_or_else(|| format!("{path} does not exist"))
}

/// Bit numbers from `<linux/capability.h>`.
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`.
pub const CAP_SYS_ADMIN: u32 = 21;

/// Reads `CapEff:` (hex) from the text of /proc/self/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The io_uring opcodes wasp's restore driver uses, by name.
pub fn io_uring_opcodes() -> Vec<(&'static str, u8)> {
    use io_uring::opcode;
    vec![
        ("read", opcode::Read::CODE),
        ("write", opcode::Write::CODE),
        ("socket", opcode::Socket::CODE),
        ("connect", opcode::Connect::CODE),
        ("send", opcode::Send::CODE),
        ("recv", opcode::Recv::CODE),
        ("poll_add", opcode::PollAdd::CODE),
        ("timeout", opcode::Timeout::CODE),
        ("link_timeout", opcode::LinkTimeout::CODE),
        ("close", opcode::Close::CODE),
        ("fadvise", opcode::Fadvise::CODE),
        ("async_cancel", opcode::AsyncCancel::CODE),
    ]
}

fn probe_io_uring() -> Probe<Vec<(&'static str, bool)>> {
    let ring = io_uring::IoUring::new(8).map_err(|e| e.to_string())?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    Ok(io_uring_opcodes()
        .into_iter()
        .map(|(n, c)| (n, probe.is_supported(c)))
        .collect())
}

/// Creates and deletes a table in a throwaway namespace, over raw netlink.
pub fn probe_nftables() -> Probe<()> {
    sys::netns::run_in_scratch(|| -> Result<(), netlink::NetlinkError> {
        let mut sock = netlink::Socket::netfilter()?;
        let seq = sock.next_seq(8);
        let mut b = nft::Batch::new(seq);
        b.new_table(nft::NFPROTO_INET, "wasp_doctor");
        b.commit(&mut sock)?;
        let seq = sock.next_seq(8);
        let mut b = nft::Batch::new(seq);
        b.del_table(nft::NFPROTO_INET, "wasp_doctor");
        b.commit(&mut sock)
    })
    .map_err(|e| format!("cannot create a scratch netns: {e}"))?
    .map_err(|e| crate::error::chain(&e))
}

fn open_rw(p: &str) -> Probe<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Gathers every probe. Needs no root to run, but most probes fail without it.
pub fn probe(opts: &Options) -> Probes {
    let fc = firecracker::locate("firecracker", opts.firecracker.as_ref(), None);
    let fc_path = fc.as_ref().ok().cloned();
    let with_version =
        |r: Result<PathBuf, firecracker::FirecrackerError>| -> Probe<(PathBuf, Version)> {
            let p = r.map_err(|e| e.to_string())?;
            let v = firecracker::version_of(&p).map_err(|e| crate::error::chain(&e))?;
            Ok((p, v))
        };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup2 = crate::vmm::cgroup::find_cgroup2(&mountinfo).map(|dir| {
        let ctrl = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        (dir, ctrl)
    });
    Probes {
        euid: nix::unistd::geteuid().as_raw(),
        cap_eff: std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_cap_eff(&s)),
        kvm_open: open_rw("/dev/kvm"),
        kvm_pvm: Path::new("/sys/module/kvm_pvm").exists(),
        tun_open: open_rw("/dev/net/tun"),
        nftables: probe_nftables(),
        io_uring: probe_io_uring(),
        userfaultfd: sys::uffd::open().map(drop).map_err(|e| e.to_string()),
        cgroup2,
        mountinfo,
        firecracker: with_version(fc),
        jailer: with_version(firecracker::locate(
            "jailer",
            opts.jailer.as_ref(),
            fc_path.as_deref().and_then(Path::parent),
        )),
        reflink: (
            opts.runtime_dir.clone(),
            probe_reflink(&opts.runtime_dir).map_err(|e| e.to_string()),
        ),
        strategy: crate::pipeline::storage::probe::probe_dir_strategy(&opts.runtime_dir)
            .map(|o| o.strategy)
            .map_err(|e| e.to_string()),
        clone_cost: probe_clone_cost(opts),
        nofile: sys::rlimit::nofile()
            .and_then(|(s, h)| Ok((s, h, sys::rlimit::open_fds()?)))
            .map_err(|e| e.to_string()),
        conntrack_max: read_sysctl(CONNTRACK_MAX),
        max_netns: required_sysctl(MAX_NETNS),
        slot_owner: match sys::nsowner::new_netns() {
            Ok(_ns) => Ok(()),
            Err(sys::nsowner::NewNetnsError::Unavailable) => Err(format!(
                "no user namespace of wasp's can be made here (user.max_user_namespaces is {})",
                read_sysctl(MAX_USERNS)
                    .ok()
                    .flatten()
                    .map_or_else(|| "unreadable".to_owned(), |n| n.to_string())
            )),
            Err(sys::nsowner::NewNetnsError::Failed(e)) => Err(e.to_string()),
        },
        pid_max: required_sysctl(PID_MAX),
        neigh_max: required_sysctl(NEIGH_MAX),
        clones: opts.clones.clone().map(|d| {
            let v = crate::pipeline::limits::HostValues::read(None)
                .map_err(|e| crate::error::chain(&e));
            (d, v)
        }),
    }
}

/// The clone count doctor sizes its limit checks for.
pub const DENSE_CLONES: u64 = 1000;
/// fds wasp wants to be able to open for a dense batch ([`DENSE_CLONES`]).
pub const NOFILE_WANTED: u64 = 16 * 1024;
/// `net.netfilter.nf_conntrack_max`.
pub const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
/// Tracked connections wanted: the limit is one value, but each namespace
/// counts its own entries, and the host netns tracks the connections to
/// every clone.
pub const CONNTRACK_WANTED: u64 = 64 * 1024;
/// `user.max_net_namespaces`.
pub const MAX_NETNS: &str = "/proc/sys/user/max_net_namespaces";
/// Namespaces wanted: one per slot plus a few (host, scratch).
pub const NETNS_WANTED: u64 = DENSE_CLONES + 64;
/// `kernel.pid_max`.
pub const PID_MAX: &str = "/proc/sys/kernel/pid_max";
/// `user.max_user_namespaces`.
pub const MAX_USERNS: &str = "/proc/sys/user/max_user_namespaces";
/// Tasks wanted: a Firecracker VMM runs about 3 threads plus one per vCPU.
pub const PIDS_WANTED: u64 = DENSE_CLONES * 8;
/// `net.ipv4.neigh.default.gc_thresh3` (exists only in the initial netns).
pub const NEIGH_MAX: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh3";
/// ARP entries wanted: the kernel's default. The table is shared by all
/// namespaces, but a clone's own path holds only entries that do not count
/// against it: permanent ones (the host's for the clone IP, the slot's for
/// its gateway) and, from its first restore, the slot's externally learned
/// one for the guest. Learned entries come from other traffic: the host's
/// uplink neighbours for egress, the host's own networks.
pub const NEIGH_WANTED: u64 = 1024;

/// A judged probe: its status and what was found (and, for warn/fail, the
/// fix).
type Verdict = (Status, String);

/// One row of [`CHECKS`]: a check's name, what it reads from the probes and
/// how it judges that reading, and what a failed probe means.
struct Spec {
    /// The check's name (stable: `--json` readers and tests use it).
    name: &'static str,
    /// Reads the probe and judges it. `Err` is a probe that failed, with
    /// its error text.
    judge: fn(&Probes) -> Result<Verdict, String>,
    /// The status of a failed probe.
    failed: Status,
    /// The fix appended to a failed probe's error (`"{error}; {fix}"`);
    /// `None`: the error alone.
    fix: Option<&'static str>,
}

/// Every check, in report order.
static CHECKS: &[Spec] = &[
    Spec {
        name: "root",
        judge: root,
        failed: Status::Fail,
        fix: None,
    },
    Spec {
        name: "kvm",
        judge: kvm,
        failed: Status::Fail,
        fix: Some("load kvm_intel or kvm_amd (modprobe) and run as root or a member of the kvm group"),
    },
    Spec {
        name: "tun",
        judge: |p| {
            opens(&p.tun_open, "/dev/net/tun: ")?;
            Ok((Status::Ok, "/dev/net/tun opens".into()))
        },
        failed: Status::Fail,
        fix: Some("run `modprobe tun`"),
    },
    Spec {
        name: "nftables",
        judge: |p| {
            opens(&p.nftables, "")?;
            Ok((
                Status::Ok,
                "created and deleted a table in a scratch netns over netlink".into(),
            ))
        },
        failed: Status::Fail,
        fix: Some("load nf_tables and nft_nat (modprobe nf_tables nft_nat) and run as root"),
    },
    Spec {
        name: "io_uring",
        judge: io_uring,
        failed: Status::Warn,
        fix: Some("wasp falls back to plain syscalls (check kernel.io_uring_disabled)"),
    },
    Spec {
        name: "userfaultfd",
        judge: |p| {
            opens(&p.userfaultfd, "")?;
            Ok((
                Status::Ok,
                "userfaultfd opens (Uffd memory backend available)".into(),
            ))
        },
        failed: Status::Warn,
        fix: Some("only the File memory backend is available (set vm.unprivileged_userfaultfd=1 or run as root)"),
    },
    Spec {
        name: "cgroup2",
        judge: cgroup2,
        failed: Status::Warn,
        fix: None,
    },
    Spec {
        name: "firecracker",
        judge: |p| installed(&p.firecracker),
        failed: Status::Warn,
        fix: Some("`--vmm standin` and `wasp demo` work without it"),
    },
    Spec {
        name: "jailer",
        judge: |p| installed(&p.jailer),
        failed: Status::Warn,
        fix: Some("needed only for `wasp spawn --jailer`"),
    },
    Spec {
        name: "reflink",
        judge: reflink,
        failed: Status::Fail,
        fix: Some("create it or pass --runtime-dir"),
    },
    Spec {
        name: "clone_disks",
        judge: clone_disks,
        failed: Status::Warn,
        fix: None,
    },
    Spec {
        name: "nofile",
        judge: |p| {
            let (soft, hard, open) = *p.nofile.as_ref()?;
            Ok(at_least(
                hard,
                NOFILE_WANTED,
                format!(
                    "RLIMIT_NOFILE soft {soft}, hard {hard}, {open} open, headroom {}",
                    soft.saturating_sub(open)
                ),
                "; wasp raises the soft limit as needed",
                format!("; dense batches want >= {NOFILE_WANTED}: raise the hard limit (ulimit -Hn, LimitNOFILE=)"),
            ))
        },
        failed: Status::Warn,
        fix: None,
    },
    Spec {
        name: "conntrack",
        judge: |p| {
            let Some(max) = *p.conntrack_max.as_ref()? else {
                return Ok((
                    Status::Ok,
                    "nf_conntrack is not loaded yet (the first slot's NAT rules load it); check again after `wasp pool warm`".into(),
                ));
            };
            Ok(at_least(
                max,
                CONNTRACK_WANTED,
                format!("net.netfilter.nf_conntrack_max is {max}"),
                " (each netns counts its own entries against it)",
                format!("; the host netns tracks every connection to the clones, so dense batches want >= {CONNTRACK_WANTED}: sysctl -w net.netfilter.nf_conntrack_max={CONNTRACK_WANTED} (it can only be set from the initial netns)"),
            ))
        },
        failed: Status::Warn,
        fix: None,
    },
    Spec {
        name: "netns_max",
        judge: |p| {
            let n = *p.max_netns.as_ref()?;
            Ok(at_least(
                n,
                NETNS_WANTED,
                format!("user.max_net_namespaces is {n}; each slot is one netns"),
                "",
                format!(", so {DENSE_CLONES} clones want >= {NETNS_WANTED}: sysctl -w user.max_net_namespaces={NETNS_WANTED}"),
            ))
        },
        failed: Status::Warn,
        fix: None,
    },
    Spec {
        name: "slot_owner",
        judge: |p| {
            opens(&p.slot_owner, "")?;
            Ok((
                Status::Ok,
                "slot namespaces are owned by wasp's user namespace (off the kernel's list for KVM's uevents)".into(),
            ))
        },
        failed: Status::Warn,
        fix: Some("slots are then owned by the host's user namespace, and every VMM start and exit costs the kernel one check per slot namespace (uevent broadcast): sysctl -w user.max_user_namespaces=15000"),
    },
    Spec {
        name: "pid_max",
        judge: |p| {
            let n = *p.pid_max.as_ref()?;
            Ok(at_least(
                n,
                PIDS_WANTED,
                format!("kernel.pid_max is {n}"),
                "",
                format!("; every VMM runs several threads, so {DENSE_CLONES} clones want >= {PIDS_WANTED}: sysctl -w kernel.pid_max=4194304"),
            ))
        },
        failed: Status::Warn,
        fix: None,
    },
    Spec {
        name: "neigh",
        judge: |p| {
            let n = *p.neigh_max.as_ref()?;
            Ok(at_least(
                n,
                NEIGH_WANTED,
                format!("net.ipv4.neigh.default.gc_thresh3 is {n}"),
                "",
                format!(", below the kernel's default {NEIGH_WANTED}; the ARP table is shared by every netns (wasp's slots use permanent and externally learned entries, exempt from it, but the host's other traffic is not; past the limit the kernel drops packets with \"neighbour table overflow\"): sysctl -w net.ipv4.neigh.default.gc_thresh3={NEIGH_WANTED} net.ipv4.neigh.default.gc_thresh2={}", NEIGH_WANTED / 2),
            ))
        },
        failed: Status::Warn,
        fix: None,
    },
    Spec {
        name: "clones",
        judge: clones,
        failed: Status::Fail,
        fix: None,
    },
];

/// `--clones N`: every host limit of [`crate::pipeline::limits`] for N
/// clones; fails naming each limit that is too low, its value, the need
/// and the fix.
fn clones(p: &Probes) -> Result<Verdict, String> {
    let Some((d, v)) = &p.clones else {
        return Ok((
            Status::Ok,
            "not asked: `wasp doctor --clones N` checks every host limit for N clones".into(),
        ));
    };
    let all = crate::pipeline::limits::evaluate(v.as_ref()?, d);
    let low: Vec<String> = all
        .iter()
        .filter(|l| !l.ok)
        .map(|l| l.to_string())
        .collect();
    if low.is_empty() {
        let fits: Vec<String> = all.iter().map(|l| l.to_string()).collect();
        Ok((
            Status::Ok,
            format!("{} clones fit: {}", d.clones, fits.join("; ")),
        ))
    } else {
        Ok((
            Status::Fail,
            format!("{} clones do not fit: {}", d.clones, low.join("; ")),
        ))
    }
}

/// Turns probe results into checks, one per row of [`CHECKS`]. Pure.
pub fn evaluate(p: &Probes) -> Report {
    let checks = CHECKS
        .iter()
        .map(|spec| {
            let (status, detail) = match (spec.judge)(p) {
                Ok(verdict) => verdict,
                Err(e) => (
                    spec.failed,
                    match spec.fix {
                        Some(fix) => format!("{e}; {fix}"),
                        None => e,
                    },
                ),
            };
            Check {
                name: spec.name,
                status,
                detail,
            }
        })
        .collect();
    Report { checks }
}

/// A probe that opens something: its error, prefixed, when it failed.
fn opens(r: &Probe<()>, prefix: &str) -> Result<(), String> {
    r.clone().map_err(|e| format!("{prefix}{e}"))
}

/// A limit: ok at `wanted` or above; `found` then says what was found,
/// followed by `ok_note`, or by `low_note` (why it matters and how to raise
/// it) when below.
fn at_least(have: u64, wanted: u64, found: String, ok_note: &str, low_note: String) -> Verdict {
    if have >= wanted {
        (Status::Ok, found + ok_note)
    } else {
        (Status::Warn, found + &low_note)
    }
}

/// Root with the two capabilities wasp needs (never a failed probe).
fn root(p: &Probes) -> Result<Verdict, String> {
    let caps = p.cap_eff.unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if p.euid == 0 && has(CAP_NET_ADMIN) && has(CAP_SYS_ADMIN) {
        return Ok((
            Status::Ok,
            "running as root with CAP_NET_ADMIN and CAP_SYS_ADMIN".into(),
        ));
    }
    let mut missing = Vec::new();
    if p.euid != 0 {
        missing.push(format!("euid is {}, not 0", p.euid));
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN missing".into());
    }
    if !has(CAP_SYS_ADMIN) {
        missing.push("CAP_SYS_ADMIN missing".into());
    }
    Ok((
        Status::Fail,
        format!(
            "{}; run wasp as root (sudo) so it can create namespaces, links and nf_tables rules",
            missing.join(", ")
        ),
    ))
}

/// /dev/kvm opens, and whether it is kvm_pvm.
fn kvm(p: &Probes) -> Result<Verdict, String> {
    opens(&p.kvm_open, "/dev/kvm: ")?;
    Ok(if p.kvm_pvm {
        (
            Status::Warn,
            "/dev/kvm is kvm_pvm (/sys/module/kvm_pvm exists): Firecracker runs, but only PVM-enlightened guest kernels boot; use the stand-in VMM for networked demos".into(),
        )
    } else {
        (Status::Ok, "/dev/kvm opens read-write".into())
    })
}

/// The io_uring opcodes the kernel supports.
fn io_uring(p: &Probes) -> Result<Verdict, String> {
    let ops = p.io_uring.as_ref()?;
    let missing: Vec<_> = ops.iter().filter(|(_, s)| !s).map(|(n, _)| *n).collect();
    let have: Vec<_> = ops.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
    Ok(if missing.is_empty() {
        (Status::Ok, format!("opcodes: {}", have.join(" ")))
    } else {
        (
            Status::Warn,
            format!(
                "opcodes: {}; missing: {} (wasp uses its plain-syscall fallback for those)",
                have.join(" "),
                missing.join(" ")
            ),
        )
    })
}

/// cgroup v2 with the controllers `--memory-max/--cpu-max` need (never a
/// failed probe: no cgroup2 is a warning).
fn cgroup2(p: &Probes) -> Result<Verdict, String> {
    let Some((dir, ctrl)) = &p.cgroup2 else {
        return Ok((
            Status::Warn,
            crate::vmm::cgroup::CgroupError::NoCgroup2.to_string(),
        ));
    };
    let shown = if ctrl.trim().is_empty() {
        "none"
    } else {
        ctrl.trim()
    };
    // The same check, and the same words, as `wasp spawn
    // --memory-max/--cpu-max`.
    let mut limits = crate::vmm::cgroup::Limits::new();
    for key in [crate::vmm::cgroup::MEMORY_MAX, crate::vmm::cgroup::CPU_MAX] {
        limits.set(key, "max").expect("valid key");
    }
    Ok(
        match crate::vmm::cgroup::check_controllers(&p.mountinfo, dir, ctrl, &limits) {
            Ok(()) => (
                Status::Ok,
                format!("cgroup v2 at {}, controllers: {shown}", dir.display()),
            ),
            Err(e) => (
                Status::Warn,
                format!(
                    "cgroup v2 at {}, controllers: {shown}; per-clone --memory-max/--cpu-max are unavailable: {e}",
                    dir.display()
                ),
            ),
        },
    )
}

/// A located binary and its version.
fn installed(r: &Probe<(PathBuf, Version)>) -> Result<Verdict, String> {
    let (path, ver) = r.as_ref()?;
    Ok((Status::Ok, format!("{} is v{ver}", path.display())))
}

/// FICLONE in the runtime directory, else the strategy clone disks get.
fn reflink(p: &Probes) -> Result<Verdict, String> {
    let (dir, r) = &p.reflink;
    let r = r.as_ref().map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(match r {
        ReflinkProbe::Supported => (
            Status::Ok,
            format!(
                "{}: FICLONE works; clone disks use strategy {}",
                dir.display(),
                Strategy::Reflink
            ),
        ),
        ReflinkProbe::Unsupported(errno) => (
            Status::Warn,
            format!(
                "{}: {}; clone disks fall back to {} (`wasp storage init` makes it a reflink store: see clone_disks)",
                dir.display(),
                explain_reflink_errno(*errno),
                p.strategy
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| format!("an unprobed strategy ({e})"))
            ),
        ),
    })
}

/// What each clone's disks cost, and the `wasp storage init` line that
/// makes it nothing.
fn clone_disks(p: &Probes) -> Result<Verdict, String> {
    let c = p.clone_cost.as_ref()?;
    let dir = c.runtime_dir.display();
    let init = format!("`wasp storage init --runtime-dir {dir}`");
    let readonly = "(or, when the guest mounts its root read-only, the no-copy `shared-readonly` strategy: a read-only rootfs plus a per-clone scratch drive)";
    Ok(match (&c.snapshot, c.strategy) {
        (None, Strategy::Reflink) => (
            Status::Ok,
            format!("{dir}: clone disks are reflinked: 0 bytes copied per clone{}", if c.is_store { " (a wasp store)" } else { "" }),
        ),
        (None, s) => (
            Status::Warn,
            format!("{dir}: no reflinks, so each clone copies every allocated byte of its snapshot's writable drives by {s} (pass --snapshot DIR for the figure); fix: {init} {readonly}"),
        ),
        (Some((snap, 0, _)), s) => (
            Status::Ok,
            format!("{dir}: clones of {} copy 0 bytes ({s})", snap.display()),
        ),
        (Some((snap, bytes, true)), s) if c.is_store => (
            Status::Warn,
            format!("snapshot {} is on another filesystem than the store {dir}: each clone would copy {bytes} bytes ({} MiB) by {s}, and `wasp spawn` refuses it without --allow-copy; fix: `wasp snapshot adopt {} --runtime-dir {dir}` places it in the store once", snap.display(), bytes.div_ceil(1 << 20), snap.display()),
        ),
        (Some((snap, bytes, cross)), s) => (
            Status::Warn,
            format!(
                "{dir}: each clone of {} copies {bytes} bytes ({} MiB) of its writable drives by {s}{}; fix: {init} --snapshot {} {readonly}",
                snap.display(),
                bytes.div_ceil(1 << 20),
                if *cross { " (the snapshot is on another filesystem, so `wasp spawn` refuses it without --allow-copy)" } else { "" },
                snap.display()
            ),
        ),
    })
}

/// Probes and evaluates.
pub fn run(opts: &Options) -> Report {
    evaluate(&probe(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Probes {
        Probes {
            euid: 0,
            cap_eff: Some(0x000001ffffffffff),
            kvm_open: Ok(()),
            kvm_pvm: false,
            tun_open: Ok(()),
            nftables: Ok(()),
            io_uring: Ok(vec![("read", true), ("socket", true)]),
            userfaultfd: Ok(()),
            cgroup2: Some((
                "/sys/fs/cgroup".into(),
                "cpuset cpu io memory pids\n".into(),
            )),
            mountinfo: "29 1 0:25 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n".into(),
            firecracker: Ok(("/usr/bin/firecracker".into(), Version(1, 12, 1))),
            jailer: Ok(("/usr/bin/jailer".into(), Version(1, 12, 1))),
            reflink: ("/var/lib/wasp".into(), Ok(ReflinkProbe::Supported)),
            strategy: Ok(Strategy::Reflink),
            clone_cost: Ok(CloneCost {
                runtime_dir: "/var/lib/wasp".into(),
                is_store: true,
                strategy: Strategy::Reflink,
                snapshot: None,
            }),
            nofile: Ok((1024, 1 << 20, 5)),
            conntrack_max: Ok(Some(262_144)),
            max_netns: Ok(96_365),
            slot_owner: Ok(()),
            pid_max: Ok(4_194_304),
            neigh_max: Ok(8192),
            clones: None,
        }
    }

    #[test]
    fn clones_judges_every_host_limit_for_n_clones() {
        use crate::pipeline::limits::{Demand, HostValues};
        let mut p = good();
        assert_eq!(evaluate(&p).get("clones").unwrap().status, Status::Ok);
        let v = HostValues {
            pid_max: 4_194_304,
            threads_max: 190_000,
            tasks_now: 300,
            nofile_hard: 1 << 20,
            fds_now: 8,
            max_net_namespaces: 2000,
            netns_now: 0,
            gc_thresh3: Some(1024),
            conntrack_max: Some(262_144),
            mem_available_kib: 20 << 20,
        };
        let d = Demand::clones(5000, &"10.0.0.0/16".parse().unwrap());
        p.clones = Some((d.clone(), Ok(v.clone())));
        let c = evaluate(&p).get("clones").unwrap().clone();
        assert_eq!(c.status, Status::Fail, "{}", c.detail);
        assert!(
            c.detail
                .contains("user.max_net_namespaces is 2000, 5256 needed")
                && c.detail.contains("sysctl -w user.max_net_namespaces=5256"),
            "{}",
            c.detail
        );
        p.clones = Some((
            d,
            Ok(HostValues {
                max_net_namespaces: 100_000,
                ..v
            }),
        ));
        let c = evaluate(&p).get("clones").unwrap().clone();
        assert_eq!(c.status, Status::Ok, "{}", c.detail);
        assert!(c.detail.starts_with("5000 clones fit"), "{}", c.detail);
    }

    #[test]
    fn cap_eff_parsing() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ffffffffff));
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        assert_eq!(parse_cap_eff(""), None);
    }

    #[test]
    fn a_hybrid_host_without_v2_memory_is_a_warning_with_the_fix() {
        let mut p = good();
        p.cgroup2 = Some(("/sys/fs/cgroup/unified".into(), "hugetlb\n".into()));
        p.mountinfo = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                       41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
            .into();
        let c = evaluate(&p).get("cgroup2").unwrap().clone();
        assert_eq!(c.status, Status::Warn);
        for want in [
            "controllers: hugetlb",
            "`memory`",
            "cgroup v1 at /sys/fs/cgroup/memory",
            "systemd.unified_cgroup_hierarchy=1",
        ] {
            assert!(c.detail.contains(want), "{want}: {}", c.detail);
        }
        p.cgroup2 = None;
        let c = evaluate(&p).get("cgroup2").unwrap().clone();
        assert!(
            c.detail.contains("no cgroup2 filesystem is mounted"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn all_good_is_ok_and_names_every_check() {
        let r = evaluate(&good());
        assert!(r.ok());
        let names: Vec<_> = r.checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "root",
                "kvm",
                "tun",
                "nftables",
                "io_uring",
                "userfaultfd",
                "cgroup2",
                "firecracker",
                "jailer",
                "reflink",
                "clone_disks",
                "nofile",
                "conntrack",
                "netns_max",
                "slot_owner",
                "pid_max",
                "neigh",
                "clones"
            ]
        );
        assert!(r.checks.iter().all(|c| c.status == Status::Ok), "{r:?}");
    }

    #[test]
    fn clone_disks_say_the_bytes_per_clone_and_the_storage_init_line() {
        let mut p = good();
        p.clone_cost = Ok(CloneCost {
            runtime_dir: "/var/lib/wasp".into(),
            is_store: false,
            strategy: Strategy::CopyFileRange,
            snapshot: Some(("/srv/golden".into(), 1 << 30, false)),
        });
        let c = evaluate(&p).get("clone_disks").unwrap().clone();
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail.contains("copies 1073741824 bytes (1024 MiB)"),
            "{}",
            c.detail
        );
        assert!(
            c.detail
                .contains("`wasp storage init --runtime-dir /var/lib/wasp` --snapshot /srv/golden"),
            "{}",
            c.detail
        );
        assert!(c.detail.contains("shared-readonly"), "{}", c.detail);
        // Without a snapshot: the fix, and how to get the figure.
        p.clone_cost = Ok(CloneCost {
            snapshot: None,
            ..p.clone_cost.clone().unwrap()
        });
        let c = evaluate(&p).get("clone_disks").unwrap().clone();
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("--snapshot DIR") && c.detail.contains("wasp storage init"));
        // A store, and a snapshot outside it: place it.
        p.clone_cost = Ok(CloneCost {
            is_store: true,
            strategy: Strategy::SparseCopy,
            snapshot: Some(("/srv/golden".into(), 4096, true)),
            ..p.clone_cost.clone().unwrap()
        });
        let c = evaluate(&p).get("clone_disks").unwrap().clone();
        assert!(
            c.detail.contains("4096 bytes") && c.detail.contains("wasp snapshot adopt /srv/golden"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn kvm_pvm_is_reported() {
        let mut p = good();
        p.kvm_pvm = true;
        let c = evaluate(&p).get("kvm").unwrap().clone();
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("kvm_pvm"));
    }

    #[test]
    fn not_root_fails_with_a_fix() {
        let mut p = good();
        p.euid = 1000;
        p.cap_eff = Some(0);
        let r = evaluate(&p);
        assert!(!r.ok());
        let c = r.get("root").unwrap();
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("CAP_NET_ADMIN missing"));
        assert!(c.detail.contains("run wasp as root"));
    }

    #[test]
    fn missing_opcodes_and_reflink_warn() {
        let mut p = good();
        p.io_uring = Ok(vec![("read", true), ("socket", false)]);
        p.reflink.1 = Ok(ReflinkProbe::Unsupported(libc::EOPNOTSUPP));
        p.strategy = Ok(Strategy::CopyFileRange);
        p.nofile = Ok((1024, 4096, 10));
        let r = evaluate(&p);
        assert!(r.ok());
        assert_eq!(r.get("io_uring").unwrap().status, Status::Warn);
        assert!(r
            .get("io_uring")
            .unwrap()
            .detail
            .contains("missing: socket"));
        assert!(r.get("reflink").unwrap().detail.contains("copy-file-range"));
        assert_eq!(r.get("nofile").unwrap().status, Status::Warn);
    }

    #[test]
    fn low_kernel_limits_warn_with_the_sysctl_to_raise_them() {
        let mut p = good();
        p.conntrack_max = Ok(Some(4096));
        p.max_netns = Ok(100);
        p.pid_max = Ok(4096);
        p.neigh_max = Ok(512);
        p.slot_owner = Err(
            "no user namespace of wasp's can be made here (user.max_user_namespaces is 0)".into(),
        );
        let r = evaluate(&p);
        assert!(r.ok());
        for (name, fix) in [
            ("slot_owner", "sysctl -w user.max_user_namespaces="),
            ("conntrack", "sysctl -w net.netfilter.nf_conntrack_max="),
            ("netns_max", "sysctl -w user.max_net_namespaces="),
            ("pid_max", "sysctl -w kernel.pid_max="),
            ("neigh", "sysctl -w net.ipv4.neigh.default.gc_thresh3="),
        ] {
            let c = r.get(name).unwrap();
            assert_eq!(c.status, Status::Warn, "{name}");
            assert!(c.detail.contains(fix), "{name}: {}", c.detail);
        }
        p.conntrack_max = Ok(None);
        let c = evaluate(&p).get("conntrack").unwrap().clone();
        assert_eq!(c.status, Status::Ok);
        assert!(c.detail.contains("not loaded"), "{}", c.detail);
    }

    #[test]
    fn sysctls_are_read_and_missing_ones_are_none() {
        assert!(read_sysctl(PID_MAX).unwrap().unwrap() > 0);
        assert_eq!(
            read_sysctl("/proc/sys/kernel/wasp-no-such-sysctl"),
            Ok(None)
        );
        assert!(required_sysctl("/proc/sys/kernel/wasp-no-such-sysctl")
            .unwrap_err()
            .contains("does not exist"));
    }

    #[test]
    fn tun_nft_kvm_failures_fail() {
        let mut p = good();
        p.tun_open = Err("No such file or directory (os error 2)".into());
        p.nftables = Err("Operation not permitted".into());
        p.kvm_open = Err("No such file or directory (os error 2)".into());
        let r = evaluate(&p);
        for n in ["tun", "nftables", "kvm"] {
            assert_eq!(r.get(n).unwrap().status, Status::Fail, "{n}");
        }
        assert!(r.get("tun").unwrap().detail.contains("modprobe tun"));
    }

    #[test]
    fn json_shape() {
        let r = evaluate(&good());
        let j = serde_json::to_value(&r).unwrap();
        let c = &j["checks"][0];
        assert_eq!(c["name"], "root");
        assert_eq!(c["status"], "ok");
        assert!(c["detail"].is_string());
    }
}

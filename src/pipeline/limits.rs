//! The host limits a pool of N clones runs into, checked before anything
//! is built: `pool warm`, `spawn`, `bench spawn`, `bench slots`, `demo` and
//! `wasp doctor --clones N` all go through [`check`].
//!
//! Reading ([`HostValues::read`]: /proc, sysctls, rlimits, the host netns
//! of the pool) and judging ([`evaluate`], pure, unit-tested on made-up
//! values) are separate. Each [`Limit`] names the limit, its value, what N
//! clones need and the fix; [`LimitsError::Exceeded`] lists every limit
//! that is too low at once, so one run tells the whole story.
//!
//! What one clone costs, and why (the `PER_CLONE_*` constants):
//! - tasks: a Firecracker VMM runs its main thread, the API thread and one
//!   thread per vCPU; each is a task counted against `kernel.pid_max` and
//!   `kernel.threads-max`;
//! - fds of wasp: the slot's lease (held open while the pool holds the
//!   slot), the VMM's pidfd in the reaper, and during a restore the API
//!   socket and a route socket per clone in flight;
//! - one network namespace per slot (`user.max_net_namespaces`);
//! - neighbour entries: none that count against `gc_thresh3` (the host's
//!   entry for the clone IP and the slot's for its gateway are permanent,
//!   the slot's for the guest externally learned: all exempt);
//! - conntrack: the host netns tracks one connection to each clone (the
//!   readiness probe, a user's connection); each netns counts its own
//!   entries against the one `nf_conntrack_max`;
//! - memory: the measured host memory per held Firecracker clone
//!   ([`MEASURED_CLONE_KIB`], docs/benchmarks.md) unless the caller knows
//!   better;
//! - addresses: one clone IP of the CIDR per slot; bridge ports: at most
//!   [`BRIDGE_MAX_SLOTS`] slots on one Linux bridge (`BR_MAX_PORTS` is 1 024
//!   port numbers, number 0 is never used), none in the routed layout.

use std::io;
use std::os::fd::OwnedFd;

use serde::Serialize;
use thiserror::Error;

use crate::sys;

/// Tasks per clone on top of one per vCPU (the VMM's main and API threads).
pub const PER_CLONE_BASE_TASKS: u64 = 2;
/// fds wasp holds per clone (slot lease, pidfd) at steady state.
pub const PER_CLONE_FDS: u64 = 2;
/// fds per clone in flight (API socket, route socket, spare).
pub const PER_INFLIGHT_FDS: u64 = 8;
/// fds wasp keeps for itself (engine, pool workers, stdio, netlink).
pub const BASE_FDS: u64 = 1024;
/// Host-netns conntrack entries per clone.
pub const PER_CLONE_CONNTRACK: u64 = 1;
/// Neighbour entries per clone that count against `gc_thresh3`.
pub const PER_CLONE_NEIGH: u64 = 0;
/// Host memory per held Firecracker clone measured on the reference host
/// (KiB): VMM PSS plus the kernel's share (slot, VMM kernel objects).
pub const MEASURED_CLONE_KIB: u64 = 1600;
/// Kernel memory per bare slot measured on the reference host (KiB).
pub const MEASURED_SLOT_KIB: u64 = 400;
pub use crate::pipeline::slot::BRIDGE_MAX_SLOTS;
/// Tasks and namespaces kept free for everything else on the host.
pub const HEADROOM: u64 = 256;

/// What the host offers, as read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostValues {
    /// `kernel.pid_max`.
    pub pid_max: u64,
    /// `kernel.threads-max`.
    pub threads_max: u64,
    /// Tasks that exist now (the total of /proc/loadavg's 4th field).
    pub tasks_now: u64,
    /// RLIMIT_NOFILE hard limit (wasp raises its soft limit up to it).
    pub nofile_hard: u64,
    /// fds this process has open now.
    pub fds_now: u64,
    /// `user.max_net_namespaces`.
    pub max_net_namespaces: u64,
    /// Named network namespaces now (`/run/netns`), a floor of those in use.
    pub netns_now: u64,
    /// `net.ipv4.neigh.default.gc_thresh3` (`None`: not readable).
    pub gc_thresh3: Option<u64>,
    /// `net.netfilter.nf_conntrack_max` (`None`: nf_conntrack not loaded).
    pub conntrack_max: Option<u64>,
    /// `MemAvailable` (KiB).
    pub mem_available_kib: u64,
}

/// What a pool of clones asks of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// Clones (slots) to add.
    pub clones: u64,
    /// Tasks each clone runs (0 for bare slots).
    pub tasks_per_clone: u64,
    /// Clones in flight at once.
    pub parallel: u64,
    /// Host memory per clone (KiB).
    pub per_clone_kib: u64,
    /// Slots the CIDR holds (its clone addresses).
    pub cidr_capacity: u64,
    /// The CIDR, for messages.
    pub cidr: String,
    /// Most slots the pool's layout takes (`None`: no limit of its own).
    pub layout_max: Option<u64>,
    /// The layout's name and how to lift its limit, for messages.
    pub layout: String,
}

impl Demand {
    /// `clones` of one vCPU each at [`MEASURED_CLONE_KIB`], 32 in flight.
    pub fn clones(clones: u64, cidr: &crate::pipeline::slot::Cidr) -> Demand {
        Demand {
            clones,
            tasks_per_clone: PER_CLONE_BASE_TASKS + 1,
            parallel: 32,
            per_clone_kib: MEASURED_CLONE_KIB,
            cidr_capacity: u64::from(cidr.capacity()),
            cidr: cidr.to_string(),
            layout_max: None,
            layout: "routed".into(),
        }
    }

    /// `slots` bare slots (no VMM: `bench slots`), at
    /// [`MEASURED_SLOT_KIB`] each.
    pub fn slots(slots: u64, cidr: &crate::pipeline::slot::Cidr) -> Demand {
        Demand {
            tasks_per_clone: 0,
            per_clone_kib: MEASURED_SLOT_KIB,
            ..Demand::clones(slots, cidr)
        }
    }

    /// Sets the pool's layout limit from its net settings.
    pub fn with_layout(mut self, net: &crate::pipeline::slot::SlotNet) -> Demand {
        self.layout = net.layout.to_string();
        self.layout_max = net.layout.max_slots();
        self
    }
}

/// One limit judged against a demand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limit {
    /// The limit's name (a sysctl, an rlimit, `pool.cidr`, ...).
    pub name: &'static str,
    /// Its value (`None`: could not be read, or not in force).
    pub value: Option<u64>,
    /// What the demand needs of it.
    pub need: u64,
    /// The value is at least the need (or the limit is not in force).
    pub ok: bool,
    /// How to raise it (or what to do instead).
    pub fix: String,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.value {
            Some(v) => write!(f, "{} is {v}, {} needed", self.name, self.need)?,
            None => write!(f, "{} is not set, {} needed", self.name, self.need)?,
        }
        if !self.ok {
            write!(f, ": {}", self.fix)?;
        }
        Ok(())
    }
}

/// Errors of [`check`].
#[derive(Debug, Error)]
pub enum LimitsError {
    /// The host's values could not be read.
    #[error("cannot read the host limit {what}")]
    Read {
        /// Which value.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Some limits are too low for the demand; nothing was built.
    #[error("{clones} clone(s) do not fit this host; nothing was built: {}", .limits.iter().map(Limit::to_string).collect::<Vec<_>>().join("; "))]
    Exceeded {
        /// Clones asked for.
        clones: u64,
        /// The limits too low (every one, not only the first).
        limits: Vec<Limit>,
    },
}

/// Judges every limit against `d`. Pure.
pub fn evaluate(v: &HostValues, d: &Demand) -> Vec<Limit> {
    let tasks = d.clones * d.tasks_per_clone;
    let mut out = Vec::new();
    let mut push = |name, value: Option<u64>, need: u64, fix: String| {
        out.push(Limit {
            name,
            value,
            need,
            ok: value.is_none_or(|v| v >= need),
            fix,
        })
    };
    push(
        "pool.cidr",
        Some(d.cidr_capacity),
        d.clones,
        format!(
            "the clone CIDR {} holds {} clone addresses; use a larger one (pool.cidr or --cidr; a /16 holds 65533, a /14 262141)",
            d.cidr, d.cidr_capacity
        ),
    );
    if let Some(max) = d.layout_max {
        push(
            "bridge ports",
            Some(max),
            d.clones,
            format!(
                "a Linux bridge takes at most {BRIDGE_MAX_SLOTS} ports, so the {} layout holds {max} slots; use the routed layout (pool.layout = \"routed\" or --layout routed), which has no such limit",
                d.layout
            ),
        );
    }
    let need = v.tasks_now + tasks + HEADROOM;
    push(
        "kernel.pid_max",
        Some(v.pid_max),
        need,
        format!(
            "every clone runs {} tasks and {} exist now: sysctl -w kernel.pid_max={}",
            d.tasks_per_clone,
            v.tasks_now,
            need.next_power_of_two().min(4_194_304)
        ),
    );
    push(
        "kernel.threads-max",
        Some(v.threads_max),
        need,
        format!("sysctl -w kernel.threads-max={}", need * 2),
    );
    let need = v.fds_now + BASE_FDS + d.clones * PER_CLONE_FDS + d.parallel * PER_INFLIGHT_FDS;
    push(
        "RLIMIT_NOFILE (hard)",
        Some(v.nofile_hard),
        need,
        format!("wasp raises its soft limit up to the hard one: raise the hard limit to {need} or more (ulimit -Hn {need}, LimitNOFILE={need} in a unit)"),
    );
    let need = v.netns_now + d.clones + HEADROOM;
    push(
        "user.max_net_namespaces",
        Some(v.max_net_namespaces),
        need,
        format!("each slot is one network namespace: sysctl -w user.max_net_namespaces={need}"),
    );
    push(
        "net.ipv4.neigh.default.gc_thresh3",
        v.gc_thresh3,
        d.clones * PER_CLONE_NEIGH,
        "wasp's neighbour entries are permanent or externally learned and do not count; raise it for the host's own traffic: sysctl -w net.ipv4.neigh.default.gc_thresh3=N".into(),
    );
    let need = d.clones * PER_CLONE_CONNTRACK + HEADROOM;
    push(
        "net.netfilter.nf_conntrack_max",
        v.conntrack_max,
        need,
        format!("the host netns tracks a connection to each clone: sysctl -w net.netfilter.nf_conntrack_max={} (from the initial netns)", (need * 2).max(65_536)),
    );
    let need = d.clones * d.per_clone_kib;
    push(
        "MemAvailable (KiB)",
        Some(v.mem_available_kib),
        need,
        format!(
            "{} clones at {} KiB each need {} MiB and {} MiB are available: spawn fewer clones, or free memory",
            d.clones,
            d.per_clone_kib,
            need / 1024,
            v.mem_available_kib / 1024
        ),
    );
    out
}

/// The limits of `evaluate` that are too low, as the error [`check`] gives.
pub fn refuse(v: &HostValues, d: &Demand) -> Result<Vec<Limit>, LimitsError> {
    let all = evaluate(v, d);
    let low: Vec<Limit> = all.iter().filter(|l| !l.ok).cloned().collect();
    if low.is_empty() {
        Ok(all)
    } else {
        Err(LimitsError::Exceeded {
            clones: d.clones,
            limits: low,
        })
    }
}

/// Reads the host's values and refuses `d` when any limit is too low
/// (every such limit named, with its value, the need and the fix). Reads
/// the network sysctls inside `host_netns` when given (the pool's host
/// netns), the others from this process. Returns every limit when all
/// fit.
pub fn check(host_netns: Option<&OwnedFd>, d: &Demand) -> Result<Vec<Limit>, LimitsError> {
    refuse(&HostValues::read(host_netns)?, d)
}

/// [`check`] for a pool: the demand gets the pool's layout limit, and
/// the network sysctls are read in the pool's host netns when it exists
/// already.
pub fn check_pool(
    net: &crate::pipeline::slot::SlotNet,
    host: &crate::pipeline::slot::HostNet,
    d: Demand,
) -> Result<Vec<Limit>, LimitsError> {
    // The layout the pool keeps (its record's), not only the one asked for.
    let mut net = net.clone();
    if let Some(dir) = &host.registry {
        let recorded = crate::pipeline::registry::Registry::at(dir)
            .get(&net.pool)
            .ok()
            .flatten();
        net.keep_recorded_layout(recorded.as_ref());
    }
    let d = d.with_layout(&net);
    let fd = match host.netns.as_deref().filter(|n| sys::netns::exists(n)) {
        Some(n) => Some(
            sys::netns::open_named(n).map_err(|source| LimitsError::Read {
                what: format!("host netns {n}"),
                source,
            })?,
        ),
        None => None,
    };
    check(fd.as_ref(), &d)
}

fn read_num(path: &str) -> Result<Option<u64>, LimitsError> {
    match std::fs::read_to_string(path) {
        Ok(t) => t.trim().parse().map(Some).map_err(|_| LimitsError::Read {
            what: path.into(),
            source: io::Error::new(io::ErrorKind::InvalidData, format!("{t:?} is not a number")),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LimitsError::Read {
            what: path.into(),
            source,
        }),
    }
}

fn required(path: &str) -> Result<u64, LimitsError> {
    read_num(path)?.ok_or_else(|| LimitsError::Read {
        what: path.into(),
        source: io::Error::new(io::ErrorKind::NotFound, "does not exist"),
    })
}

/// Total tasks from the text of /proc/loadavg (`0.1 0.2 0.3 2/345 678`).
pub fn parse_loadavg_tasks(s: &str) -> Option<u64> {
    s.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok()
}

/// `MemAvailable` (KiB) from the text of /proc/meminfo.
pub fn parse_mem_available(s: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `net.ipv4.neigh.default.gc_thresh3`.
pub const GC_THRESH3: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh3";
/// `net.netfilter.nf_conntrack_max`.
pub const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

impl HostValues {
    /// Reads the values (network sysctls inside `host_netns` when given;
    /// `gc_thresh3` exists only in the initial netns, where it is read when
    /// the host netns has none).
    pub fn read(host_netns: Option<&OwnedFd>) -> Result<HostValues, LimitsError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| LimitsError::Read { what, source }
        };
        let loadavg = std::fs::read_to_string("/proc/loadavg").map_err(io("/proc/loadavg"))?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(io("/proc/meminfo"))?;
        let net = || -> Result<(Option<u64>, Option<u64>), LimitsError> {
            Ok((read_num(GC_THRESH3)?, read_num(CONNTRACK_MAX)?))
        };
        let (mut gc, ct) = match host_netns {
            Some(fd) => sys::netns::run_in(fd, net).map_err(io("the host netns"))??,
            None => net()?,
        };
        if gc.is_none() {
            gc = read_num(GC_THRESH3)?;
        }
        let (_, hard) = sys::rlimit::nofile().map_err(io("RLIMIT_NOFILE"))?;
        Ok(HostValues {
            pid_max: required("/proc/sys/kernel/pid_max")?,
            threads_max: required("/proc/sys/kernel/threads-max")?,
            tasks_now: parse_loadavg_tasks(&loadavg).unwrap_or(0),
            nofile_hard: hard,
            fds_now: sys::rlimit::open_fds().map_err(io("/proc/self/fd"))?,
            max_net_namespaces: required("/proc/sys/user/max_net_namespaces")?,
            netns_now: sys::netns::list_named()
                .map(|v| v.len() as u64)
                .unwrap_or(0),
            gc_thresh3: gc,
            conntrack_max: ct,
            mem_available_kib: parse_mem_available(&meminfo).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's values, roughly: 24 GiB, stock sysctls.
    fn host() -> HostValues {
        HostValues {
            pid_max: 4_194_304,
            threads_max: 192_000,
            tasks_now: 400,
            nofile_hard: 1_048_576,
            fds_now: 10,
            max_net_namespaces: 95_000,
            netns_now: 3,
            gc_thresh3: Some(1024),
            conntrack_max: Some(262_144),
            mem_available_kib: 22 * 1024 * 1024,
        }
    }

    fn demand(n: u64) -> Demand {
        Demand::clones(n, &"10.0.0.0/16".parse().unwrap())
    }

    #[test]
    fn five_thousand_clones_fit_the_reference_host() {
        let all = refuse(&host(), &demand(5000)).unwrap();
        assert!(all.iter().all(|l| l.ok), "{all:?}");
        // Every limit the brief names is judged.
        let names: Vec<&str> = all.iter().map(|l| l.name).collect();
        for n in [
            "pool.cidr",
            "kernel.pid_max",
            "kernel.threads-max",
            "RLIMIT_NOFILE (hard)",
            "user.max_net_namespaces",
            "net.ipv4.neigh.default.gc_thresh3",
            "net.netfilter.nf_conntrack_max",
            "MemAvailable (KiB)",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn each_refusal_names_the_limit_its_value_the_need_and_the_fix() {
        let v = HostValues {
            pid_max: 16_384,
            nofile_hard: 4096,
            max_net_namespaces: 1000,
            conntrack_max: Some(2000),
            mem_available_kib: 1024 * 1024,
            ..host()
        };
        let e = refuse(&v, &demand(10_000)).unwrap_err();
        let LimitsError::Exceeded { clones, limits } = &e else {
            panic!("{e}")
        };
        assert_eq!(*clones, 10_000);
        let names: Vec<&str> = limits.iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            [
                "kernel.pid_max",
                "RLIMIT_NOFILE (hard)",
                "user.max_net_namespaces",
                "net.netfilter.nf_conntrack_max",
                "MemAvailable (KiB)"
            ]
        );
        let pid = &limits[0];
        // 10 000 clones x 3 tasks + the 400 running + headroom.
        assert_eq!(pid.need, 30_000 + 400 + HEADROOM);
        assert_eq!(pid.value, Some(16_384));
        let msg = e.to_string();
        assert!(msg.contains("nothing was built"), "{msg}");
        assert!(
            msg.contains("kernel.pid_max is 16384, 30656 needed: every clone runs 3 tasks"),
            "{msg}"
        );
        assert!(
            msg.contains("sysctl -w user.max_net_namespaces=10259"),
            "{msg}"
        );
        assert!(msg.contains("ulimit -Hn"), "{msg}");
        assert!(
            msg.contains("MemAvailable (KiB) is 1048576, 16000000 needed"),
            "{msg}"
        );
    }

    #[test]
    fn the_cidr_and_the_layout_limit_the_pool() {
        let mut d = Demand::clones(300, &"10.1.0.0/24".parse().unwrap());
        let e = refuse(&host(), &d).unwrap_err().to_string();
        assert!(
            e.contains("pool.cidr is 253, 300 needed: the clone CIDR 10.1.0.0/24 holds 253"),
            "{e}"
        );
        d = demand(3000);
        d.layout_max = Some(BRIDGE_MAX_SLOTS);
        d.layout = "bridge".into();
        let e = refuse(&host(), &d).unwrap_err().to_string();
        assert!(e.contains("bridge ports is 1023, 3000 needed"), "{e}");
        assert!(e.contains("routed layout"), "{e}");
        d.clones = 1023;
        refuse(&host(), &d).unwrap();
    }

    #[test]
    fn a_missing_conntrack_is_not_in_force_and_proc_texts_parse() {
        let v = HostValues {
            conntrack_max: None,
            ..host()
        };
        let all = refuse(&v, &demand(100)).unwrap();
        let ct = all
            .iter()
            .find(|l| l.name == "net.netfilter.nf_conntrack_max")
            .unwrap();
        assert!(ct.ok && ct.value.is_none());
        assert_eq!(
            parse_loadavg_tasks("0.52 0.61 0.70 3/1234 98765\n"),
            Some(1234)
        );
        assert_eq!(parse_loadavg_tasks("garbage"), None);
        assert_eq!(
            parse_mem_available("MemTotal: 10 kB\nMemAvailable:   2048 kB\n"),
            Some(2048)
        );
        assert_eq!(parse_mem_available("MemTotal: 10 kB\n"), None);
    }
}

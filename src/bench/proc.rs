//! The benches' host accounting from `/proc`: memory per VMM process
//! (`smaps_rollup`, `status`), CPU per process (`schedstat`), the kernel
//! counters of `/proc/meminfo`, and the figures `wasp demo` / `wasp bench
//! spawn` (and `--hold`) and `wasp bench slots` derive from them.

use std::path::Path;
use std::time::Duration;

use crate::state;
use crate::stats::Percentiles;

/// One process's memory from `/proc/PID/smaps_rollup` (KiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProcMem {
    /// Resident set (shared pages counted in full).
    pub rss: u64,
    /// Proportional set (shared pages divided among their users).
    pub pss: u64,
    /// Pages only this process maps (clean + dirty).
    pub private: u64,
    /// Anonymous pages (heap, stacks, copied-on-write guest pages).
    pub anon: u64,
}

/// The `Key: N kB` lines of a /proc file (`meminfo`, `smaps_rollup`) as
/// (key, N); a value that is not a number reads 0.
pub fn kib_fields(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once(':')?;
        Some((
            k,
            v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0),
        ))
    })
}

/// Parses `smaps_rollup` text.
pub fn parse_smaps_rollup(text: &str) -> ProcMem {
    let mut m = ProcMem::default();
    for (k, v) in kib_fields(text) {
        match k {
            "Rss" => m.rss = v,
            "Pss" => m.pss = v,
            "Private_Clean" | "Private_Dirty" => m.private += v,
            "Anonymous" => m.anon = v,
            _ => {}
        }
    }
    m
}

/// `/proc/PID/smaps_rollup` of a live process.
pub fn proc_mem(pid: i32) -> Option<ProcMem> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .map(|t| parse_smaps_rollup(&t))
}

/// The host counters the hold accounts with (`/proc/meminfo`, KiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct HostMem {
    /// `MemAvailable`.
    pub available: u64,
    /// Kernel memory no reclaim gives back: `SUnreclaim + KernelStack +
    /// PageTables + SecPageTables + VmallocUsed + Percpu`.
    pub kernel: u64,
}

/// Parses `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> HostMem {
    let mut h = HostMem::default();
    for (k, v) in kib_fields(text) {
        match k {
            "MemAvailable" => h.available = v,
            "SUnreclaim" | "KernelStack" | "PageTables" | "SecPageTables" | "VmallocUsed"
            | "Percpu" => h.kernel += v,
            _ => {}
        }
    }
    h
}

/// The host's counters now.
pub fn host_mem() -> Option<HostMem> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .map(|t| parse_meminfo(&t))
}

/// What a hold of every clone at once measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HoldFigures {
    /// Clones whose VMM answered `GET /` with state Running in the pass
    /// made after the whole batch was up.
    pub running_at_once: usize,
    /// Clones that did not, with what happened.
    pub not_running: Vec<(String, String)>,
    /// VMM RSS per clone, KiB.
    pub vmm_rss_kib: Percentiles,
    /// VMM PSS per clone, KiB.
    pub vmm_pss_kib: Percentiles,
    /// VMM private pages per clone, KiB.
    pub vmm_private_kib: Percentiles,
    /// Drop in MemAvailable per clone, KiB (noisy on a shared host).
    pub host_available_drop_kib_per_clone: f64,
    /// Growth of unreclaimable kernel memory per clone, KiB.
    pub kernel_kib_per_clone: f64,
    /// Mean VMM PSS plus kernel growth per clone, KiB: the accounted host
    /// memory per clone.
    pub accounted_kib_per_clone: f64,
    /// The goal: host memory per clone at most the VMM's RSS (p50) plus
    /// 256 KiB, by the accounted figure and by the MemAvailable drop.
    pub goal_kib: f64,
    /// Both figures within the goal.
    pub goal_met: bool,
    /// MemAvailable and kernel memory after everything was removed against
    /// before the bench made anything (KiB; positive: still in use), a
    /// check that nothing stayed. Other work on the host moves it too.
    pub residual_available_kib: i64,
    /// See `residual_available_kib`.
    pub residual_kernel_kib: i64,
}

/// Asks the VMM behind `api_sock` for its state.
fn vmm_state(api_sock: &Path) -> Result<String, String> {
    let mut c = crate::vmm::api::Client::connect(api_sock).map_err(|e| e.to_string())?;
    c.set_timeout(Duration::from_secs(5));
    c.get_instance_info()
        .map(|i| i.state)
        .map_err(|e| e.to_string())
}

/// The hold's pass over every live clone: state, and memory per process;
/// `before` and `during` are the host counters before the batch and now.
pub fn hold_figures(
    records: &[state::CloneRecord],
    before: HostMem,
    during: HostMem,
) -> HoldFigures {
    let mut h = HoldFigures::default();
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    let mut private = Vec::new();
    for r in records {
        match vmm_state(&r.api_sock) {
            Ok(s) if s == "Running" => h.running_at_once += 1,
            Ok(s) => h.not_running.push((r.id.clone(), format!("state {s}"))),
            Err(e) => h.not_running.push((r.id.clone(), e)),
        }
        if let Some(m) = proc_mem(r.pid) {
            rss.push(m.rss as f64);
            pss.push(m.pss as f64);
            private.push(m.private as f64);
        }
    }
    h.vmm_rss_kib = Percentiles::of(&rss);
    h.vmm_pss_kib = Percentiles::of(&pss);
    h.vmm_private_kib = Percentiles::of(&private);
    account(&mut h, records.len(), before, during);
    h
}

/// Host memory per clone from the counters before and during the hold of
/// `n` clones, and the verdict against the goal (VMM RSS p50 + 256 KiB).
fn account(h: &mut HoldFigures, n: usize, before: HostMem, during: HostMem) {
    let per = |d: f64| d / n.max(1) as f64;
    h.host_available_drop_kib_per_clone = per(before.available as f64 - during.available as f64);
    h.kernel_kib_per_clone = per(during.kernel as f64 - before.kernel as f64);
    h.accounted_kib_per_clone = h.vmm_pss_kib.mean + h.kernel_kib_per_clone;
    h.goal_kib = h.vmm_rss_kib.p50 + 256.0;
    h.goal_met = n > 0
        && h.accounted_kib_per_clone <= h.goal_kib
        && h.host_available_drop_kib_per_clone <= h.goal_kib;
}

/// Memory figures taken while every clone is alive.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct MemFigures {
    /// Median VMM resident set (KiB).
    pub vmm_rss_kib_p50: f64,
    /// Host memory used per clone beyond the VMM processes' own memory
    /// (KiB): the growth of unreclaimable kernel memory over the batch
    /// (the `kernel` sum of [`HostMem`]), per clone: the VMMs' page tables
    /// and kernel stacks, their sockets, tap queues, pipes. The MemAvailable
    /// drop was used before; page cache and the previous batch's namespaces
    /// being freed meanwhile made it swing by more than the figure itself
    /// (even below zero).
    pub host_kib_per_clone: f64,
    /// Mean VMM private memory (`RssAnon`, KiB).
    pub vmm_private_kib_mean: f64,
    /// Mean CPU time a VMM process had used when the batch ended (ms): its
    /// start, load, resume and guest so far, plus the child-side launch
    /// setup (netns, mount namespace) that ran in it before exec.
    pub vmm_cpu_ms_mean: f64,
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `RssAnon`, …).
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) process `pid` has used so far, summed over its
/// live threads (`/proc/PID/task/*/schedstat`, nanoseconds).
pub fn process_cpu(pid: i32) -> Option<Duration> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread that exits between the listing and the read is skipped
        // (its time is gone from the process's figure anyway).
        let Ok(stat) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// (unreclaimable kernel memory, slab) of `/proc/meminfo` text, KiB: the
/// `kernel` sum of [`HostMem`] and `Slab`.
pub fn kernel_and_slab(meminfo: &str) -> (u64, u64) {
    let slab = kib_fields(meminfo)
        .find(|(k, _)| *k == "Slab")
        .map_or(0, |(_, v)| v);
    (parse_meminfo(meminfo).kernel, slab)
}

/// The batch's [`MemFigures`], taken while every clone lives: the VMMs
/// `pids` (`/proc/PID/status`, schedstat) and the kernel counters now
/// against `before` (taken before the batch).
pub fn mem_figures(pids: &[i32], before: Option<HostMem>) -> MemFigures {
    let rss: Vec<f64> = pids
        .iter()
        .filter_map(|p| status_kib(*p, "VmRSS"))
        .map(|k| k as f64)
        .collect();
    let anon: Vec<f64> = pids
        .iter()
        .filter_map(|p| status_kib(*p, "RssAnon"))
        .map(|k| k as f64)
        .collect();
    let cpu: Vec<f64> = pids
        .iter()
        .filter_map(|p| process_cpu(*p))
        .map(crate::stats::ms)
        .collect();
    let now = if rss.is_empty() || anon.is_empty() {
        None
    } else {
        host_mem()
    };
    figures_of(&rss, &anon, &cpu, pids.len(), before, now)
}

/// [`mem_figures`] from what was read: VMM RSS, anonymous memory and CPU
/// (ms) per process, the batch's process count and the counters before
/// and now. Without RSS or anonymous figures only the CPU mean is set.
fn figures_of(
    rss: &[f64],
    anon: &[f64],
    cpu: &[f64],
    n: usize,
    before: Option<HostMem>,
    now: Option<HostMem>,
) -> MemFigures {
    let mut memory = MemFigures {
        vmm_cpu_ms_mean: Percentiles::of(cpu).mean,
        ..MemFigures::default()
    };
    if !rss.is_empty() && !anon.is_empty() {
        memory.vmm_rss_kib_p50 = Percentiles::of(rss).p50;
        memory.vmm_private_kib_mean = Percentiles::of(anon).mean;
        if let (Some(hb), Some(ha)) = (before, now) {
            memory.host_kib_per_clone = (ha.kernel as f64 - hb.kernel as f64) / n as f64;
        }
    }
    memory
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rollup_and_meminfo_are_read_by_field() {
        let smaps =
            "55d0c0a00000-7ffd5e1f3000 ---p 00000000 00:00 0                          [rollup]
Rss:                2644 kB
Pss:                 731 kB
Pss_Dirty:           530 kB
Shared_Clean:       2100 kB
Private_Clean:        12 kB
Private_Dirty:       530 kB
Anonymous:           522 kB
";
        assert_eq!(
            parse_smaps_rollup(smaps),
            ProcMem {
                rss: 2644,
                pss: 731,
                private: 542,
                anon: 522
            }
        );
        let meminfo = "MemTotal:       24684084 kB
MemAvailable:   23130000 kB
SReclaimable:     790264 kB
SUnreclaim:        99604 kB
KernelStack:        2576 kB
PageTables:         6884 kB
SecPageTables:         0 kB
VmallocUsed:       17512 kB
Percpu:             2064 kB
";
        assert_eq!(
            parse_meminfo(meminfo),
            HostMem {
                available: 23_130_000,
                kernel: 99_604 + 2_576 + 6_884 + 17_512 + 2_064
            }
        );
    }

    #[test]
    fn the_hold_goal_is_judged_on_both_figures() {
        let before = HostMem {
            available: 10_000_000,
            kernel: 100_000,
        };
        let during = HostMem {
            available: 10_000_000 - 2 * 900,
            kernel: 100_000 + 2 * 300,
        };
        let mut h = HoldFigures {
            vmm_rss_kib: Percentiles::of(&[2600.0, 2700.0]),
            vmm_pss_kib: Percentiles::of(&[700.0, 800.0]),
            ..HoldFigures::default()
        };
        account(&mut h, 2, before, during);
        assert_eq!(h.host_available_drop_kib_per_clone, 900.0);
        assert_eq!(h.kernel_kib_per_clone, 300.0);
        assert_eq!(h.accounted_kib_per_clone, 750.0 + 300.0);
        assert_eq!(h.goal_kib, 2600.0 + 256.0);
        assert!(h.goal_met);
        // A MemAvailable drop past the goal fails it, whatever the PSS says.
        let worse = HostMem {
            available: 10_000_000 - 2 * 3000,
            ..during
        };
        account(&mut h, 2, before, worse);
        assert!(!h.goal_met);
        // Nothing held: never met.
        account(&mut h, 0, before, before);
        assert!(!h.goal_met);
    }

    #[test]
    fn slab_and_kernel_come_from_meminfo() {
        let meminfo = "MemAvailable:   23130000 kB
Slab:             889868 kB
SReclaimable:     790264 kB
SUnreclaim:        99604 kB
KernelStack:        2576 kB
";
        assert_eq!(kernel_and_slab(meminfo), (99_604 + 2_576, 889_868));
        assert_eq!(kernel_and_slab("MemAvailable: 1 kB\n"), (0, 0));
    }

    #[test]
    fn batch_memory_is_per_clone_kernel_growth() {
        let before = HostMem {
            available: 1_000,
            kernel: 10_000,
        };
        let now = HostMem {
            available: 500,
            kernel: 10_000 + 4 * 150,
        };
        let m = figures_of(
            &[2000.0, 3000.0, 2500.0, 2600.0],
            &[500.0, 700.0, 600.0, 600.0],
            &[1.0, 3.0, 2.0, 2.0],
            4,
            Some(before),
            Some(now),
        );
        assert_eq!(m.host_kib_per_clone, 150.0);
        assert_eq!(m.vmm_private_kib_mean, 600.0);
        assert_eq!(m.vmm_cpu_ms_mean, 2.0);
        assert_eq!(
            m.vmm_rss_kib_p50,
            Percentiles::of(&[2000.0, 3000.0, 2500.0, 2600.0]).p50
        );
        // No RSS read (the VMMs were gone): only the CPU figure.
        let m = figures_of(&[], &[500.0], &[4.0], 1, Some(before), Some(now));
        assert_eq!(m.host_kib_per_clone, 0.0);
        assert_eq!(m.vmm_rss_kib_p50, 0.0);
        assert_eq!(m.vmm_cpu_ms_mean, 4.0);
        // No counters: no per-clone figure.
        let m = figures_of(&[1.0], &[1.0], &[], 1, None, Some(now));
        assert_eq!(m.host_kib_per_clone, 0.0);
    }

    #[test]
    fn live_process_figures_read_this_process() {
        let me = std::process::id() as i32;
        assert!(status_kib(me, "VmRSS").is_some_and(|k| k > 0));
        assert!(status_kib(me, "NoSuchField").is_none());
        assert!(process_cpu(me).is_some());
        assert!(proc_mem(me).is_some_and(|m| m.rss > 0));
        let m = mem_figures(&[me], host_mem());
        assert!(m.vmm_rss_kib_p50 > 0.0);
    }
}

//! `wasp bench serve`: request-to-response latency of a running daemon,
//! from a client's side, over its socket: `concurrency` clients each send
//! `POST /v1/clones` one after another until `requests` were sent (or for
//! `duration`), and every answer is set against the engine's own figures
//! in it (`summary.wall_ms`: submit to answer; `total_ms`: the clone's
//! admission to ready), so the figures say what the HTTP layer and the
//! transport add on top of the engine and the clone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{Client, ClientError};
use crate::stats::Percentiles;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The daemon.
    pub client: Client,
    /// Snapshot name (or directory) for every request.
    pub snapshot: String,
    /// Requests in all (ignored with `duration`).
    pub requests: usize,
    /// Clients at once.
    pub concurrency: usize,
    /// Clones per request.
    pub count: usize,
    /// Readiness (`None`: the daemon's).
    pub ready: Option<String>,
    /// Each clone's TTL (so the pool stays warm in long runs).
    pub ttl_s: Option<u64>,
    /// Run for this long instead of `requests`.
    pub duration: Option<Duration>,
    /// Length of the windows the report splits a run into.
    pub window: Duration,
    /// What else a timed run samples on this host per window.
    pub probe: HostProbe,
    /// Each client's pause after an answer before its next request (a
    /// request rate below the closed loop's, e.g. to let the daemon's
    /// standby VMMs refill while it is idle).
    pub gap: Duration,
}

/// The host-side counts a timed run samples per window besides the
/// daemon's `GET /v1/capacity` (the bench runs on the daemon's host, as
/// root for the conntrack count). Each part is optional.
#[derive(Debug, Clone, Default)]
pub struct HostProbe {
    /// The daemon's pid: its RSS (`VmRSS` of /proc/PID/status).
    pub daemon_pid: Option<u32>,
    /// Count the named network namespaces (/run/netns) whose name starts
    /// with this (e.g. `wasp-POOL-`: the pool's slots).
    pub netns_prefix: Option<String>,
    /// Read `nf_conntrack_count` inside this named netns (the pool's host
    /// netns, which tracks every connection to the clones); `""`: the
    /// bench's own netns.
    pub conntrack_netns: Option<String>,
    /// Count the files under this state dir (clone records and the rest).
    pub state_dir: Option<PathBuf>,
}

/// One sample of [`HostProbe`]; `None` where the part was not asked for
/// or could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HostCounts {
    /// The daemon's resident set, KiB.
    pub rss_kib: Option<u64>,
    /// Named netns with the prefix.
    pub netns: Option<u64>,
    /// Conntrack entries in the netns named.
    pub conntrack: Option<u64>,
    /// Files under the state dir.
    pub state_files: Option<u64>,
}

/// `VmRSS` (KiB) of a /proc/PID/status text.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Entries of `dir` whose name starts with `prefix`.
pub fn count_prefixed(dir: &Path, prefix: &str) -> std::io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        if e?.file_name().to_string_lossy().starts_with(prefix) {
            n += 1;
        }
    }
    Ok(n)
}

/// Regular files under `dir`, recursively (symlinks not followed).
pub fn count_files(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The conntrack count sysctl (per network namespace).
pub const CONNTRACK_COUNT: &str = "/proc/sys/net/netfilter/nf_conntrack_count";

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl HostProbe {
    /// Takes one sample.
    pub fn sample(&self) -> HostCounts {
        let conntrack = self.conntrack_netns.as_deref().and_then(|ns| {
            if ns.is_empty() {
                return read_u64(Path::new(CONNTRACK_COUNT));
            }
            let fd = crate::sys::netns::open_named(ns).ok()?;
            crate::sys::netns::run_in(fd, || read_u64(Path::new(CONNTRACK_COUNT)))
                .ok()
                .flatten()
        });
        HostCounts {
            rss_kib: self.daemon_pid.and_then(|p| {
                vm_rss_kib(&std::fs::read_to_string(format!("/proc/{p}/status")).ok()?)
            }),
            netns: self
                .netns_prefix
                .as_deref()
                .and_then(|p| count_prefixed(Path::new(crate::sys::netns::NETNS_RUN_DIR), p).ok()),
            conntrack,
            state_files: self.state_dir.as_deref().and_then(|d| count_files(d).ok()),
        }
    }
}

/// One answered request.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// When it was sent, seconds from the start.
    pub at_s: f64,
    /// Request to response, ms (client side).
    pub latency_ms: f64,
    /// The engine's `summary.wall_ms`.
    pub engine_ms: f64,
    /// The slowest clone's `total_ms`.
    pub clone_ms: f64,
}

/// p50/p99 of one window of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Window start, seconds.
    pub from_s: f64,
    /// Requests answered in it.
    pub requests: usize,
    /// Latency.
    pub latency_ms: Percentiles,
}

/// The daemon's `GET /v1/capacity` at one moment of a timed run.
#[derive(Debug, Clone, Serialize)]
pub struct HostSample {
    /// Seconds from the start.
    pub at_s: f64,
    /// The daemon's open fds.
    pub fds_open: u64,
    /// Its live clones.
    pub clones: u64,
    /// Slots its pool holds (free and taken).
    pub pool_slots: u64,
    /// Free slots.
    pub free_slots: u64,
    /// The host-side counts ([`HostProbe`]).
    #[serde(flatten)]
    pub counts: HostCounts,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Requests answered 2xx with every clone ready.
    pub ok: usize,
    /// Requests refused, failed, or with a failed clone.
    pub failed: usize,
    /// The first few failures, one line each.
    pub failures: Vec<String>,
    /// Wall time of the run, ms.
    pub wall_ms: f64,
    /// Answered requests per second.
    pub requests_per_s: f64,
    /// Request to response (client side).
    pub latency_ms: Percentiles,
    /// The engine: submit to answer.
    pub engine_ms: Percentiles,
    /// The clone: admission to ready (the slowest of the request's).
    pub clone_ms: Percentiles,
    /// What the daemon's HTTP layer and the transport add: latency minus
    /// the engine's wall, per request.
    pub http_ms: Percentiles,
    /// The engine around the clone: its wall minus the clone's total.
    pub engine_overhead_ms: Percentiles,
    /// The run in windows (p99 of the last against the first shows drift).
    pub windows: Vec<Window>,
    /// With a duration: the daemon's fds, clones and pool at the start and
    /// after each window (growth shows a leak).
    pub host: Vec<HostSample>,
    /// Every sample, in send order.
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The daemon does not answer.
    #[error("the daemon does not answer")]
    Client(#[source] ClientError),
}

fn one(o: &BenchOptions, body: &[u8]) -> Result<(f64, f64, f64), String> {
    let t = Instant::now();
    let r = o
        .client
        .request("POST", "/v1/clones", Some(body))
        .map_err(|e| crate::error::chain(&e))?;
    let latency = t.elapsed().as_secs_f64() * 1000.0;
    if r.status != 201 {
        return Err(format!("{} {}", r.status, r.detail()));
    }
    let v = r.json().map_err(|e| e.to_string())?;
    let failed = v["summary"]["failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        let why = v["clones"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find_map(|c| c["error"].as_str().map(str::to_owned))
            })
            .unwrap_or_default();
        return Err(format!("{failed} clone(s) failed: {why}"));
    }
    let engine = v["summary"]["wall_ms"].as_f64().unwrap_or(f64::NAN);
    let clone = v["clones"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["total_ms"].as_f64())
                .fold(0.0, f64::max)
        })
        .unwrap_or(f64::NAN);
    Ok((latency, engine, clone))
}

/// Runs the bench.
pub fn run(o: &BenchOptions) -> Result<BenchReport, BenchError> {
    if o.concurrency == 0 || o.count == 0 || (o.duration.is_none() && o.requests == 0) {
        return Err(BenchError::Options(
            "concurrency, count and requests must be at least 1".into(),
        ));
    }
    if o.window.is_zero() {
        return Err(BenchError::Options(
            "the window must be longer than 0".into(),
        ));
    }
    o.client.get("/healthz").map_err(BenchError::Client)?;
    let mut body = serde_json::json!({"snapshot": o.snapshot, "count": o.count});
    if let Some(r) = &o.ready {
        body["ready"] = r.clone().into();
    }
    if let Some(t) = o.ttl_s {
        body["ttl_s"] = t.into();
    }
    let body = serde_json::to_vec(&body).expect("JSON");
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    let start = Instant::now();
    let host = Mutex::new(Vec::new());
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        if o.duration.is_some() {
            // A timer, not a synchronisation: one capacity sample per window.
            let (host, stop_rx) = (&host, stop_rx);
            s.spawn(move || loop {
                if let Ok(r) = o.client.get("/v1/capacity") {
                    if let Ok(v) = r.json() {
                        let n = |k: &str| v[k].as_u64().unwrap_or(0);
                        host.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(HostSample {
                                at_s: start.elapsed().as_secs_f64(),
                                fds_open: n("fds_open"),
                                clones: n("clones"),
                                pool_slots: n("pool_slots"),
                                free_slots: n("free_slots"),
                                counts: o.probe.sample(),
                            });
                    }
                }
                match stop_rx.recv_timeout(o.window) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            });
        }
        let mut clients = Vec::new();
        for _ in 0..o.concurrency {
            clients.push(s.spawn(|| {
                let mut first = true;
                loop {
                    match o.duration {
                        Some(d) if start.elapsed() >= d => break,
                        None if next.fetch_add(1, Ordering::Relaxed) >= o.requests => break,
                        _ => {}
                    }
                    if !first && !o.gap.is_zero() {
                        // Pacing, not synchronisation: the request rate.
                        std::thread::sleep(o.gap);
                    }
                    first = false;
                    let at_s = start.elapsed().as_secs_f64();
                    match one(o, &body) {
                        Ok((latency_ms, engine_ms, clone_ms)) => samples
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Sample {
                                at_s,
                                latency_ms,
                                engine_ms,
                                clone_ms,
                            }),
                        Err(e) => failures.lock().unwrap_or_else(|p| p.into_inner()).push(e),
                    }
                }
            }));
        }
        for c in clients {
            let _ = c.join();
        }
        drop(stop_tx);
    });
    let wall = start.elapsed();
    let mut samples = samples.into_inner().unwrap_or_else(|p| p.into_inner());
    samples.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    let col = |f: fn(&Sample) -> f64| Percentiles::of(&samples.iter().map(f).collect::<Vec<_>>());
    let windows = windows(&samples, o.window);
    Ok(BenchReport {
        ok: samples.len(),
        failed: failures.len(),
        failures: failures.into_iter().take(5).collect(),
        wall_ms: wall.as_secs_f64() * 1000.0,
        requests_per_s: samples.len() as f64 / wall.as_secs_f64().max(1e-9),
        latency_ms: col(|s| s.latency_ms),
        engine_ms: col(|s| s.engine_ms),
        clone_ms: col(|s| s.clone_ms),
        http_ms: col(|s| s.latency_ms - s.engine_ms),
        engine_overhead_ms: col(|s| s.engine_ms - s.clone_ms),
        windows,
        host: host.into_inner().unwrap_or_else(|p| p.into_inner()),
        samples,
    })
}

/// Splits `samples` (sorted by `at_s`) into windows of `window` by send
/// time, aligned to multiples of it; windows with no sample are left out.
pub fn windows(samples: &[Sample], window: Duration) -> Vec<Window> {
    let win = window.as_secs_f64().max(1e-9);
    let mut out: Vec<Window> = Vec::new();
    let mut at = 0;
    while at < samples.len() {
        let from = (samples[at].at_s / win).floor() * win;
        let end = samples[at..]
            .iter()
            .position(|s| s.at_s >= from + win)
            .map_or(samples.len(), |p| at + p);
        let l: Vec<f64> = samples[at..end].iter().map(|s| s.latency_ms).collect();
        out.push(Window {
            from_s: from,
            requests: l.len(),
            latency_ms: Percentiles::of(&l),
        });
        at = end;
    }
    out
}

/// Draws p50 and p99 of each window against time (the window's middle)
/// into the SVG `path`: a soak's drift at a glance.
pub fn timeline_svg(
    path: &Path,
    title: &str,
    windows: &[Window],
    window: Duration,
) -> Result<(), crate::bench::plot::PlotError> {
    let half = window.as_secs_f64() / 2.0;
    let pick = |f: fn(&Percentiles) -> f64| -> Vec<(f64, f64)> {
        windows
            .iter()
            .map(|w| (w.from_s + half, f(&w.latency_ms)))
            .collect()
    };
    let (p50, p99) = (pick(|p| p.p50), pick(|p| p.p99));
    crate::bench::plot::lines_svg(
        path,
        title,
        "time into the run (s)",
        "request to response (ms)",
        &[("p50 per window", &p50), ("p99 per window", &p99)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_s: f64, latency_ms: f64) -> Sample {
        Sample {
            at_s,
            latency_ms,
            engine_ms: 0.0,
            clone_ms: 0.0,
        }
    }

    #[test]
    fn windows_split_by_send_time_and_skip_empty_ones() {
        let s = [
            at(0.1, 1.0),
            at(0.5, 3.0),
            at(0.99, 2.0),
            at(1.0, 10.0),
            at(3.2, 7.0),
        ];
        let w = windows(&s, Duration::from_secs(1));
        let got: Vec<(f64, usize, f64, f64)> = w
            .iter()
            .map(|w| (w.from_s, w.requests, w.latency_ms.p50, w.latency_ms.max))
            .collect();
        assert_eq!(
            got,
            vec![(0.0, 3, 2.0, 3.0), (1.0, 1, 10.0, 10.0), (3.0, 1, 7.0, 7.0)]
        );
        assert!(windows(&[], Duration::from_secs(1)).is_empty());
        let half = windows(&s, Duration::from_millis(500));
        assert_eq!(
            half.iter().map(|w| w.from_s).collect::<Vec<_>>(),
            vec![0.0, 0.5, 1.0, 3.0]
        );
    }

    #[test]
    fn timeline_plots_p50_and_p99_against_time() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("soak.svg");
        let s: Vec<Sample> = (0..300)
            .map(|i| at(f64::from(i) / 10.0, f64::from(i % 7)))
            .collect();
        let w = windows(&s, Duration::from_secs(10));
        assert_eq!(w.len(), 3);
        timeline_svg(&f, "soak", &w, Duration::from_secs(10)).unwrap();
        let svg = std::fs::read_to_string(&f).unwrap();
        for label in [
            "time into the run (s)",
            "request to response (ms)",
            "p50 per window",
            "p99 per window",
        ] {
            assert!(svg.contains(label), "no {label:?} in the SVG");
        }
        assert!(matches!(
            timeline_svg(&t.path().join("e.svg"), "soak", &[], Duration::from_secs(1)),
            Err(crate::bench::plot::PlotError::Empty(_))
        ));
    }

    #[test]
    fn host_counts_parse_and_count() {
        let status = "Name:\twasp\nVmPeak:\t  9999 kB\nVmRSS:\t   21504 kB\nThreads: 9\n";
        assert_eq!(vm_rss_kib(status), Some(21504));
        assert_eq!(vm_rss_kib("Name: x\n"), None);
        let t = tempfile::tempdir().unwrap();
        for n in ["wasp-p-1", "wasp-p-2", "wasp-q-1", "other"] {
            std::fs::write(t.path().join(n), b"").unwrap();
        }
        assert_eq!(count_prefixed(t.path(), "wasp-p-").unwrap(), 2);
        assert_eq!(count_prefixed(t.path(), "wasp").unwrap(), 3);
        let st = t.path().join("state");
        std::fs::create_dir_all(st.join("clones")).unwrap();
        std::fs::write(st.join("owner"), b"x").unwrap();
        std::fs::write(st.join("clones/wasp-a.json"), b"{}").unwrap();
        std::fs::write(st.join("clones/wasp-b.json"), b"{}").unwrap();
        assert_eq!(count_files(&st).unwrap(), 3);
        // Only the parts asked for are read.
        let probe = HostProbe {
            daemon_pid: Some(std::process::id()),
            state_dir: Some(st),
            ..HostProbe::default()
        };
        let c = probe.sample();
        assert!(c.rss_kib.unwrap() > 0);
        assert_eq!((c.state_files, c.netns, c.conntrack), (Some(3), None, None));
    }
}

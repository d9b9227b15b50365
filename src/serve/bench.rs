//! `wasp bench serve`: request-to-response latency of a running daemon,
//! from a client's side, over its socket: `concurrency` clients each send
//! `POST /v1/clones` one after another until `requests` were sent (or for
//! `duration`), and every answer is set against the engine's own figures
//! in it (`summary.wall_ms`: submit to answer; `total_ms`: the clone's
//! admission to ready), so the figures say what the HTTP layer and the
//! transport add on top of the engine and the clone.

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
            clients.push(s.spawn(|| loop {
                match o.duration {
                    Some(d) if start.elapsed() >= d => break,
                    None if next.fetch_add(1, Ordering::Relaxed) >= o.requests => break,
                    _ => {}
                }
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
    let win = o.window.as_secs_f64();
    let mut windows: Vec<Window> = Vec::new();
    let mut at = 0;
    while at < samples.len() {
        let from = (samples[at].at_s / win).floor() * win;
        let end = samples[at..]
            .iter()
            .position(|s| s.at_s >= from + win)
            .map_or(samples.len(), |p| at + p);
        let l: Vec<f64> = samples[at..end].iter().map(|s| s.latency_ms).collect();
        windows.push(Window {
            from_s: from,
            requests: l.len(),
            latency_ms: Percentiles::of(&l),
        });
        at = end;
    }
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

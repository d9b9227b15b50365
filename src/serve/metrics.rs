//! The daemon's Prometheus metrics (`prometheus-client`), in the text
//! format on `GET /metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `wasp_spawn_duration_seconds` | histogram, 0.5 ms to 5 s | `phase` (each of the pipeline's phases, and `total`) |
//! | `wasp_clones_running` | gauge | |
//! | `wasp_pool_slots` | gauge | `pool`, `state` (`free`, `in_use`) |
//! | `wasp_clone_failures_total` | counter | `phase`, `reason` |
//! | `wasp_vmm_exits_total` | counter | `cause` (`exited`, `killed`, `ttl_expired`, `shutdown`) |
//! | `wasp_ttl_expiries_total` | counter | |
//! | `wasp_http_requests_total` | counter | `method`, `route` (the matched template, `{id}` written `:id`), `status` |
//! | `wasp_http_request_duration_seconds` | histogram | `route` |
//! | `wasp_build_info` | info | `version` |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::engine::batch::{PhasesMs, SpawnReport};
use crate::engine::{ReapCause, Reaped};

/// Histogram buckets, seconds: 0.5 ms to 5 s.
pub const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failure {
    phase: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Slots {
    pool: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    spawn: Family<Phase, Histogram, fn() -> Histogram>,
    running: Gauge,
    slots: Family<Slots, Gauge>,
    failures: Family<Failure, Counter>,
    exits: Family<Cause, Counter>,
    ttl: Counter,
    requests: Family<Request, Counter>,
    request_s: Family<Route, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A low-cardinality reason for a failed clone, from its error text.
pub fn failure_reason(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("timed out") || e.contains("deadline") || e.contains("timeout") {
        "timeout"
    } else if e.contains("exited") || e.contains("died") || e.contains("killed") {
        "vmm_exited"
    } else if e.contains("answered") || e.contains("fault") {
        "vmm_api"
    } else if e.contains("slot") || e.contains("pool") {
        "slot"
    } else if e.contains("storage") || e.contains("space") || e.contains("copy") {
        "storage"
    } else {
        "other"
    }
}

fn cause_name(c: &ReapCause) -> &'static str {
    match c {
        ReapCause::Exited => "exited",
        ReapCause::Killed => "killed",
        ReapCause::TtlExpired => "ttl_expired",
        ReapCause::Shutdown => "shutdown",
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let spawn = Family::<Phase, Histogram, fn() -> Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        registry.register(
            "wasp_spawn_duration_seconds",
            "Time per clone phase (slot, storage, launch, socket, load, mmds, resume, ready) and in total, for ready clones",
            spawn.clone(),
        );
        let running = Gauge::default();
        registry.register("wasp_clones_running", "Live clones", running.clone());
        let slots = Family::<Slots, Gauge>::default();
        registry.register("wasp_pool_slots", "Pool slots by state", slots.clone());
        let failures = Family::<Failure, Counter>::default();
        registry.register(
            "wasp_clone_failures",
            "Clones that failed, by phase and reason",
            failures.clone(),
        );
        let exits = Family::<Cause, Counter>::default();
        registry.register(
            "wasp_vmm_exits",
            "VMMs reaped, by cause (exited on their own, killed by a request, TTL expired, shutdown)",
            exits.clone(),
        );
        let ttl = Counter::default();
        registry.register(
            "wasp_ttl_expiries",
            "Clones killed at their TTL",
            ttl.clone(),
        );
        let requests = Family::<Request, Counter>::default();
        registry.register(
            "wasp_http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        let request_s = Family::<Route, Histogram, fn() -> Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        registry.register(
            "wasp_http_request_duration_seconds",
            "HTTP request duration by route",
            request_s.clone(),
        );
        registry.register(
            "wasp_build",
            "wasp's version",
            Info::new(vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        );
        Self {
            registry,
            spawn,
            running,
            slots,
            failures,
            exits,
            ttl,
            requests,
            request_s,
        }
    }

    /// Counts one spawn request's clones: phases of the ready ones,
    /// failures of the others.
    pub fn observe_spawn(&self, r: &SpawnReport) {
        for c in &r.clones {
            if c.ok {
                for (name, v) in PhasesMs::NAMES.iter().zip(c.phases_ms.values()) {
                    self.spawn
                        .get_or_create(&Phase {
                            phase: (*name).to_owned(),
                        })
                        .observe(v / 1000.0);
                }
                self.spawn
                    .get_or_create(&Phase {
                        phase: "total".into(),
                    })
                    .observe(c.total_ms / 1000.0);
            } else {
                self.failures
                    .get_or_create(&Failure {
                        phase: c.failed_phase.clone().unwrap_or_else(|| "unknown".into()),
                        reason: failure_reason(c.error.as_deref().unwrap_or("")).into(),
                    })
                    .inc();
            }
        }
    }

    /// Counts one reaped VMM.
    pub fn observe_exit(&self, r: &Reaped) {
        self.exits
            .get_or_create(&Cause {
                cause: cause_name(&r.cause).into(),
            })
            .inc();
        if matches!(r.cause, ReapCause::TtlExpired) {
            self.ttl.inc();
        }
    }

    /// Counts one HTTP request. The route's `{param}` is written `:param`
    /// in the label (some text-format parsers split label values on
    /// braces).
    pub fn observe_request(&self, method: &str, route: &str, status: u16, secs: f64) {
        let route = route.replace('{', ":").replace('}', "");
        let route = route.as_str();
        self.requests
            .get_or_create(&Request {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.request_s
            .get_or_create(&Route {
                route: route.to_owned(),
            })
            .observe(secs);
    }

    /// Sets the gauges read at scrape time.
    pub fn set_state(&self, running: usize, pools: &[super::backend::PoolInfo]) {
        self.running.set(running as i64);
        for p in pools {
            for (state, n) in [("free", p.status.free), ("in_use", p.status.in_use)] {
                self.slots
                    .get_or_create(&Slots {
                        pool: p.name.clone(),
                        state: state.into(),
                    })
                    .set(n as i64);
            }
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

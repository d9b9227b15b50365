//! `wasp bench serve`: a running daemon's request-to-response latency
//! (`wasp::serve::bench`); the CLI parses, calls and prints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wasp::config::Listen;
use wasp::serve::bench::{self, BenchOptions, BenchReport};
use wasp::serve::client::Client;
use wasp::stats::Percentiles;

/// `wasp bench serve`.
#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// The daemon: unix:PATH or tcp:ADDR (TCP reads its token from the file
    /// $WASP_TOKEN_FILE names) [default: unix:/run/wasp/wasp.sock].
    #[arg(long, default_value = "unix:/run/wasp/wasp.sock")]
    pub server: Listen,
    /// Snapshot name (GET /v1/snapshots) or absolute directory.
    #[arg(long)]
    pub snapshot: String,
    /// Requests in all (ignored with --duration).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Clients sending at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Clones per request.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Readiness per request (default: the daemon's).
    #[arg(long)]
    pub ready: Option<String>,
    /// Each clone's TTL, seconds (0: none), so long runs keep the pool warm.
    #[arg(long, default_value_t = 2)]
    pub ttl_s: u64,
    /// Run this many seconds instead of --requests (a soak).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Report windows of this many seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub window: u64,
    /// Also draw the CDFs of request latency, engine wall and clone total.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Each client pauses this long after an answer (a paced rate; lets
    /// the daemon's standby VMMs refill between requests).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub gap_ms: u64,
    /// With --duration: draw p50 and p99 per window against time.
    #[arg(long, value_name = "FILE.svg")]
    pub plot_time: Option<PathBuf>,
    /// With --duration: sample this daemon's RSS per window.
    #[arg(long, value_name = "PID")]
    pub daemon_pid: Option<u32>,
    /// With --duration: count the named netns (/run/netns) starting with
    /// this per window (e.g. wasp-POOL-: the pool's slots).
    #[arg(long, value_name = "PREFIX")]
    pub netns_prefix: Option<String>,
    /// With --duration: read nf_conntrack_count in this named netns (the
    /// pool's host netns) per window; "" for the bench's own.
    #[arg(long, value_name = "NETNS")]
    pub conntrack_netns: Option<String>,
    /// With --duration: count the files under this state dir per window.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

fn row(name: &str, p: &Percentiles) {
    println!(
        "  {name:<34} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        p.p50, p.p90, p.p99, p.max, p.mean
    );
}

/// Runs `wasp bench serve`.
pub fn run(a: BenchServeArgs) -> anyhow::Result<ExitCode> {
    for p in [&a.plot, &a.plot_time].into_iter().flatten() {
        wasp::bench::plot::check_path(p)?;
    }
    let mut client = Client::new(a.server.clone());
    if matches!(a.server, Listen::Tcp(_)) {
        let f = std::env::var_os(super::remote::TOKEN_FILE_ENV).with_context(|| {
            format!(
                "a TCP daemon needs its token: name the file in {}",
                super::remote::TOKEN_FILE_ENV
            )
        })?;
        let t = std::fs::read_to_string(&f).context("read the token file")?;
        client = client.with_token(t.lines().next().unwrap_or("").trim());
    }
    let r = bench::run(&BenchOptions {
        client,
        snapshot: a.snapshot,
        requests: a.requests,
        concurrency: a.concurrency,
        count: a.count,
        ready: a.ready,
        ttl_s: (a.ttl_s > 0).then_some(a.ttl_s),
        duration: a.duration.map(Duration::from_secs),
        window: Duration::from_secs(a.window.max(1)),
        gap: Duration::from_millis(a.gap_ms),
        probe: bench::HostProbe {
            daemon_pid: a.daemon_pid,
            netns_prefix: a.netns_prefix,
            conntrack_netns: a.conntrack_netns,
            state_dir: a.state_dir,
        },
    })?;
    if let Some(p) = &a.plot_time {
        bench::timeline_svg(
            p,
            "wasp serve: request to response per window",
            &r.windows,
            Duration::from_secs(a.window.max(1)),
        )?;
    }
    if let Some(p) = &a.plot {
        let col = |f: fn(&bench::Sample) -> f64| r.samples.iter().map(f).collect::<Vec<_>>();
        let (l, e, c) = (
            col(|s| s.latency_ms),
            col(|s| s.engine_ms),
            col(|s| s.clone_ms),
        );
        wasp::bench::plot::cdf_svg(
            p,
            "wasp serve: request to response",
            "ms",
            &[
                ("request (client side)", &l),
                ("engine (summary.wall_ms)", &e),
                ("clone (total_ms)", &c),
            ],
        )?;
    }
    if a.json {
        super::print_json(&r)?;
    } else {
        print(&r);
    }
    Ok(if r.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print(r: &BenchReport) {
    println!(
        "{} requests answered, {} failed in {:.1} ms ({:.1} requests/s)",
        r.ok, r.failed, r.wall_ms, r.requests_per_s
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "ms", "p50", "p90", "p99", "max", "mean"
    );
    row("request to response (client)", &r.latency_ms);
    row("engine: submit to answer", &r.engine_ms);
    row("clone: admission to ready", &r.clone_ms);
    row("HTTP layer + transport", &r.http_ms);
    row("engine around the clone", &r.engine_overhead_ms);
    if r.windows.len() > 1 {
        println!("  windows (from s: requests, p50, p99 ms):");
        for w in &r.windows {
            println!(
                "    {:>7.0}: {:>6} {:>9.3} {:>9.3}",
                w.from_s, w.requests, w.latency_ms.p50, w.latency_ms.p99
            );
        }
    }
    if !r.host.is_empty() {
        println!(
            "  the daemon (at s: fds, clones, pool slots, free slots, RSS KiB, netns, conntrack, state files; - not sampled):"
        );
        let o = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        for h in &r.host {
            let c = &h.counts;
            println!(
                "    {:>7.1}: {:>6} {:>6} {:>6} {:>6} {:>8} {:>6} {:>6} {:>6}",
                h.at_s,
                h.fds_open,
                h.clones,
                h.pool_slots,
                h.free_slots,
                o(c.rss_kib),
                o(c.netns),
                o(c.conntrack),
                o(c.state_files)
            );
        }
    }
    for f in &r.failures {
        println!("  failed: {f}");
    }
}

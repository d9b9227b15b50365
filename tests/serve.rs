//! `wasp serve` as an operator runs it: the real binary on the stand-in
//! VMM, in a [`World`] (its own host netns, pool, state and runtime dirs),
//! driven by a real HTTP client over its real unix socket (and TCP).
//! Readiness is awaited on systemd's protocol (`READY=1` on a datagram
//! socket the test binds as `NOTIFY_SOCKET`), events on the daemon's log
//! lines or stop points: never a sleep.

use wasp_testkit as testkit;
use wasp_testkit::{root_or_skip, wasp_bin};

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::{json, Value};
use testkit::cli::World;
use wasp::serve::client::{Client, Response};
use wasp::serve::Listen;

/// A bound on waits for an event that must come (never a sleep).
const EVENT_BOUND: Duration = Duration::from_secs(90);

/// The daemons are small but share the host: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Daemon {
    child: Child,
    sock: PathBuf,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// `wasp serve` on the world's pool with the stand-in, snapshot `snap`,
    /// listening on `<tmp>/api.sock` (and `extra`); returns once the daemon
    /// told `READY=1`.
    fn start(w: &World, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_vmm(w, "standin", &w.snap(), extra, env)
    }

    /// [`Daemon::start`] with the VMM and the snapshot `snap` given.
    fn start_vmm(
        w: &World,
        vmm: &str,
        snap: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let sock = w.tmp.path().join("api.sock");
        let notify_path = w
            .tmp
            .path()
            .join(format!("notify-{}", testkit::unique_name("n")));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(EVENT_BOUND)).unwrap();
        let mut args = vec![
            "serve".to_owned(),
            "--vmm".into(),
            vmm.into(),
            "--listen".into(),
            format!("unix:{}", sock.display()),
            "--snapshot".into(),
            format!("snap={}", snap.display()),
            "--warm".into(),
            "2".into(),
            "--low-water".into(),
            "1".into(),
            "--high-water".into(),
            "32".into(),
            "--parallel".into(),
            "8".into(),
            "--ready".into(),
            "running".into(),
            "--max-count".into(),
            "16".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = w.wasp(&refs, true);
        c.env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push_str(&line);
                l.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        let mut buf = [0u8; 64];
        let got = notify.recv(&mut buf);
        let _ = std::fs::remove_file(&notify_path);
        match got {
            Ok(n) => assert_eq!(&buf[..n], b"READY=1"),
            Err(e) => panic!("no READY=1 ({e}); log:\n{}", log.lock().unwrap()),
        }
        Daemon {
            child,
            sock,
            lines,
            log,
        }
    }

    fn client(&self) -> Client {
        Client::unix(&self.sock)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let b = body.map(|v| serde_json::to_vec(&v).unwrap());
        self.client().request(method, path, b.as_deref()).unwrap()
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, body);
        assert!(
            r.status / 100 == 2,
            "{method} {path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        r.json().unwrap()
    }

    fn ids(&self, query: &str) -> BTreeSet<String> {
        let v = self.ok("GET", &format!("/v1/clones{query}"), None);
        testkit::cli::ids(&v["clones"])
    }

    /// Waits for a log line containing every one of `needles`.
    fn wait_line(&self, needles: &[&str]) -> String {
        loop {
            match self.lines.recv_timeout(EVENT_BOUND) {
                Ok(l) if needles.iter().all(|n| l.contains(n)) => return l,
                Ok(_) => {}
                Err(e) => panic!(
                    "no log line with {needles:?} ({e}); log:\n{}",
                    self.log.lock().unwrap()
                ),
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, and the daemon's exit status.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let st = self.child.wait().unwrap();
        // The reader thread ends with the pipe.
        while self.lines.recv_timeout(EVENT_BOUND).is_ok() {}
        (st, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn spawn_body(count: usize, team: &str) -> Value {
    json!({"snapshot": "snap", "count": count, "labels": {"team": team}})
}

#[test]
fn the_api_end_to_end_over_the_socket() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new(wasp_bin!(), "srvapi");
    let d = Daemon::start(&w, &[], &[]);
    assert_eq!(d.ok("GET", "/healthz", None)["status"], "ok");
    assert_eq!(d.ok("GET", "/readyz", None)["ready"], true);
    assert_eq!(
        d.ok("GET", "/v1/snapshots", None)["snapshots"][0]["name"],
        "snap"
    );
    // The socket: mode 0660.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");
    // A snapshot added by name; adopting a directory that has a manifest
    // goes through `snapshot adopt`, which refuses without force.
    let snap = w.snap().display().to_string();
    let s = d.ok(
        "POST",
        "/v1/snapshots",
        Some(json!({"name": "snap2", "dir": snap})),
    );
    assert_eq!(
        (s["name"].as_str(), s["vmm"].as_str()),
        (Some("snap2"), Some("standin"))
    );
    let r = d.call(
        "POST",
        "/v1/snapshots",
        Some(json!({"name": "snap3", "dir": snap, "adopt": {"vmm_version": "1"}})),
    );
    assert_eq!(r.status, 422, "{}", r.detail());
    assert!(r.detail().contains("--force"), "{}", r.detail());
    let r = d.call(
        "POST",
        "/v1/snapshots",
        Some(json!({"name": "snap2", "dir": snap})),
    );
    assert_eq!(r.status, 409, "{}", r.detail());

    // Bad bodies: a clear 4xx each, and nothing built.
    let before = w.seen();
    for (body, status, needle) in [
        (
            json!({"snapshot": "snap", "cuont": 1}),
            400,
            "unknown field `cuont`",
        ),
        (
            json!({"snapshot": "snap", "count": 17}),
            400,
            "count 17 is out of range: use 1 to 16",
        ),
        (
            json!({"snapshot": "snap", "env": {"NOT-A-KEY": "v"}}),
            422,
            "NOT-A-KEY",
        ),
        (
            json!({"snapshot": "missing"}),
            422,
            "no snapshot named \"missing\"",
        ),
        (
            json!({"snapshot": "/nonexistent/dir"}),
            422,
            "/nonexistent/dir",
        ),
    ] {
        let r = d.call("POST", "/v1/clones", Some(body));
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        let j = r.json().unwrap();
        assert!(j["error"].is_string());
        assert!(j["detail"].as_str().unwrap().contains(needle), "{j}");
    }
    assert_eq!(w.seen(), before, "a refused request built something");
    assert!(d.ids("").is_empty());

    // Spawn with env, a secret and labels: the same rows as `wasp spawn --json`.
    let secret = "zq-SECRET-7731-value";
    let body = json!({
        "snapshot": "snap", "count": 3, "vmm": "standin",
        "env": {"MODE": "test"}, "secrets": {"API_KEY": secret},
        "labels": {"team": "a", "run": "1"}
    });
    let r = d.call("POST", "/v1/clones", Some(body));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(!String::from_utf8_lossy(&r.body).contains(secret));
    let rep = r.json().unwrap();
    assert_eq!(rep["summary"]["ready"], 3, "{rep:#}");
    for c in rep["clones"].as_array().unwrap() {
        for key in [
            "id",
            "clone_ip",
            "host_netns",
            "ready_port",
            "phases_ms",
            "total_ms",
        ] {
            assert!(c.get(key).is_some(), "{key} missing: {c}");
        }
        assert!(alive(c["pid"].as_i64().unwrap()));
    }
    let a_ids = testkit::cli::ids(&rep["clones"]);
    let mut b = spawn_body(2, "b");
    b["snapshot"] = json!("snap2");
    let r = d.ok("POST", "/v1/clones", Some(b));
    let b_ids = testkit::cli::ids(&r["clones"]);

    // List, filter, get.
    assert_eq!(d.ids(""), a_ids.union(&b_ids).cloned().collect());
    assert_eq!(d.ids("?label=team=a"), a_ids);
    assert_eq!(d.ids("?label=team=a&label=run=1"), a_ids);
    assert!(d.ids("?label=team=c").is_empty());
    let one = a_ids.iter().next().unwrap().clone();
    let g = d.ok("GET", &format!("/v1/clones/{one}"), None);
    assert_eq!(g["id"], one.as_str());
    assert_eq!(g["state"], "running");
    assert_eq!(g["labels"]["team"], "a", "{g}");
    // The records on disk hold no secret.
    for f in std::fs::read_dir(w.state().join("clones")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(!text.contains(secret));
    }
    // TTL set and cleared.
    let p = d.ok(
        "PATCH",
        &format!("/v1/clones/{one}"),
        Some(json!({"ttl_s": 3600})),
    );
    assert!(p["expires_at_ms"].as_u64().is_some(), "{p}");
    let p = d.ok(
        "PATCH",
        &format!("/v1/clones/{one}"),
        Some(json!({"ttl_s": null})),
    );
    assert!(p.get("expires_at_ms").is_none_or(|v| v.is_null()), "{p}");
    // Pools and capacity.
    let pools = d.ok("GET", "/v1/pools", None);
    assert_eq!(pools["pools"][0]["name"], w.pool.as_str());
    assert_eq!(pools["pools"][0]["in_use"], 5, "{pools}");
    let cap = d.ok("GET", "/v1/capacity", None);
    assert_eq!(cap["clones"], 5, "{cap}");
    assert!(cap["clones_possible"].as_u64().unwrap() > 0, "{cap}");
    // The pool's marks at run time (the refill builds in the background).
    let p = d.ok(
        "PUT",
        &format!("/v1/pools/{}", w.pool),
        Some(json!({"size": 3, "low_water": 1, "high_water": 32})),
    );
    assert_eq!(p["size"], 3, "{p}");
    let r = d.call(
        "PUT",
        &format!("/v1/pools/{}", w.pool),
        Some(json!({"size": 40, "low_water": 1, "high_water": 32})),
    );
    assert_eq!(r.status, 422, "{}", r.detail());
    assert_eq!(d.call("PUT", "/v1/pools/nope", Some(json!({}))).status, 404);

    // Delete one, then by label.
    let k = d.ok("DELETE", &format!("/v1/clones/{one}"), None);
    let pid = k["killed"][0]["pid"].as_i64().unwrap();
    assert!(!alive(pid));
    let r = d.call("GET", &format!("/v1/clones/{one}"), None);
    assert_eq!(r.status, 404);
    let k = d.ok("DELETE", "/v1/clones?label=team=a", None);
    assert_eq!(k["killed"].as_array().unwrap().len(), 2);
    assert_eq!(d.ids(""), b_ids);

    // The metrics scrape parses; it counted the 5 clones and the requests.
    let text = String::from_utf8(d.call("GET", "/metrics", None).body).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let total = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "wasp_spawn_duration_seconds" && s.labels.get("phase") == Some("total")
        })
        .unwrap_or_else(|| panic!("{text}"));
    match &total.value {
        prometheus_parse::Value::Histogram(h) => {
            assert_eq!(h.iter().map(|b| b.count).fold(0.0, f64::max), 5.0)
        }
        v => panic!("{v:?}"),
    }
    let created = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "wasp_http_requests_total"
                && s.labels.get("route") == Some("/v1/clones")
                && s.labels.get("status") == Some("201")
        })
        .unwrap_or_else(|| panic!("{text}"));
    // (OpenMetrics names a counter's family without `_total`; the parser
    // then calls its samples untyped.)
    assert!(
        matches!(created.value, prometheus_parse::Value::Counter(c) | prometheus_parse::Value::Untyped(c) if c == 2.0),
        "{created:?}"
    );
    assert_eq!(
        scrape
            .samples
            .iter()
            .find(|s| s.metric == "wasp_clones_running")
            .map(|s| format!("{:?}", s.value)),
        Some("Gauge(2.0)".into())
    );

    // One log line per request, never the secret.
    d.wait_line(&["route=/v1/clones", "status=201", "clones="]);
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");
    assert!(!log.contains(secret), "{log}");
    assert!(log.contains("method=DELETE"), "{log}");
    // The socket is gone; the clones of team b keep running.
    assert!(!w.tmp.path().join("api.sock").exists());
    w.assert_only(&b_ids);
}

#[test]
fn a_ttl_expiry_reaps_the_clone_and_counts_it() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new(wasp_bin!(), "srvttl");
    let d = Daemon::start(&w, &[], &[]);
    let r = d.ok(
        "POST",
        "/v1/clones",
        Some(json!({"snapshot": "snap", "count": 1, "ttl_s": 1})),
    );
    let id = r["clones"][0]["id"].as_str().unwrap().to_owned();
    let pid = r["clones"][0]["pid"].as_i64().unwrap();
    // The reaper's exit event, as the daemon logs it.
    d.wait_line(&["clone reaped", &id, "TtlExpired"]);
    assert!(!alive(pid));
    assert_eq!(d.call("GET", &format!("/v1/clones/{id}"), None).status, 404);
    let text = String::from_utf8(d.call("GET", "/metrics", None).body).unwrap();
    assert!(text.contains("wasp_ttl_expiries_total 1"), "{text}");
    assert!(
        text.contains("wasp_vmm_exits_total{cause=\"ttl_expired\"} 1"),
        "{text}"
    );
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");
    w.assert_only(&BTreeSet::new());
}

fn token_file(w: &World, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = w.tmp.path().join("token");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn tcp_needs_a_token_file_and_the_token() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new(wasp_bin!(), "srvtcp");
    // TCP without a token file: one clear error, nothing served.
    let out = w
        .wasp(
            &["serve", "--vmm", "standin", "--listen", "tcp:127.0.0.1:0"],
            true,
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --token-file"), "{err}");
    // A token file others can read: refused.
    let tok = token_file(&w, "0123456789-token-abcdef\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = w
        .wasp(
            &["serve", "--vmm", "standin", "--listen", "tcp:127.0.0.1:0"],
            true,
        )
        .arg("--token-file")
        .arg(&tok)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();

    let tok_s = tok.display().to_string();
    let d = Daemon::start(
        &w,
        &[
            "--listen",
            "tcp:127.0.0.1:0",
            "--token-file",
            &tok_s,
            "--metrics",
            "127.0.0.1:0",
        ],
        &[],
    );
    let line = d.wait_line(&["listening on tcp:"]);
    let addr: std::net::SocketAddr = line
        .split("listening on tcp:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mline = d.wait_line(&["metrics on tcp:"]);
    let metrics_addr: std::net::SocketAddr = mline
        .split("metrics on tcp:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The metrics listener: /metrics only, no token.
    let m = Client::new(Listen::Tcp(metrics_addr));
    let r = m.get("/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("wasp_build_info"));
    assert_eq!(m.get("/v1/clones").unwrap().status, 404);
    assert_eq!(m.get("/readyz").unwrap().json().unwrap()["ready"], true);
    assert_eq!(m.get("/healthz").unwrap().status, 200);
    let tcp = Client::new(Listen::Tcp(addr));
    for c in [
        tcp.clone(),
        tcp.clone().with_token("the-wrong-token-1234567"),
    ] {
        let r = c.get("/v1/clones").unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.json().unwrap()["error"], "unauthorized");
        let r = c
            .request("POST", "/v1/clones", Some(br#"{"snapshot":"snap"}"#))
            .unwrap();
        assert_eq!(r.status, 401);
    }
    let good = tcp.with_token("0123456789-token-abcdef");
    let r = good.get("/v1/clones").unwrap();
    assert_eq!(r.status, 200, "{}", r.detail());
    // The unix socket needs none.
    assert_eq!(d.call("GET", "/v1/clones", None).status, 200);
    let (st, log) = d.stop();
    assert!(st.success());
    assert!(log.contains("refused"), "{log}");
    assert!(!log.contains("the-wrong-token"), "{log}");
    assert!(!log.contains("0123456789-token-abcdef"), "{log}");
}

/// Stops the daemon at `point` (its own SIGSTOP), waits for the stop.
fn wait_stopped(d: &Daemon, point: &str) {
    match waitpid(
        Pid::from_raw(d.child.id() as i32),
        Some(WaitPidFlag::WUNTRACED),
    )
    .unwrap()
    {
        WaitStatus::Stopped(_, Signal::SIGSTOP) => {}
        other => panic!("the daemon did not stop at {point}: {other:?}\n{}", d.log()),
    }
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_a_restart_adopts_the_clones() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new(wasp_bin!(), "srvterm");
    let d = Daemon::start(&w, &[], &[("WASP_STOP_AT", "clone-recorded:2")]);
    let c = d.client();
    let req = std::thread::spawn(move || {
        c.request(
            "POST",
            "/v1/clones",
            Some(&serde_json::to_vec(&spawn_body(6, "t")).unwrap()),
        )
    });
    // Mid-batch for sure: stopped after the 2nd of 6 records.
    wait_stopped(&d, "clone-recorded:2");
    let pid = Pid::from_raw(d.child.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    // The request in flight is answered in full before the daemon exits.
    let r = req.join().unwrap().unwrap();
    assert_eq!(r.status, 201, "{}", r.detail());
    let rep = r.json().unwrap();
    assert_eq!(rep["summary"]["ready"], 6, "{rep:#}");
    let ids = testkit::cli::ids(&rep["clones"]);
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    // Clones keep running without --kill-on-exit.
    w.assert_only(&ids);

    // A new daemon adopts them before it says ready.
    let d = Daemon::start(&w, &["--kill-on-exit"], &[]);
    let ready = d.ok("GET", "/readyz", None);
    assert_eq!(ready["adopted"], 6, "{ready}\n{}", d.log());
    assert_eq!(d.ids("?label=team=t"), ids);
    let one = ids.iter().next().unwrap();
    assert_eq!(
        d.ok("GET", &format!("/v1/clones/{one}"), None)["labels"]["team"],
        "t"
    );
    // --kill-on-exit: none left.
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");
    assert!(log.contains("6 clone(s) killed"), "{log}");
    w.assert_only(&BTreeSet::new());
}

#[test]
fn kill_9_mid_batch_loses_no_record_and_leaks_nothing() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new(wasp_bin!(), "srvkill");
    for point in ["clone-launched:3", "clone-recorded:1", "clone-recorded:4"] {
        let d = Daemon::start(&w, &[], &[("WASP_STOP_AT", point)]);
        let c = d.client();
        let req = std::thread::spawn(move || {
            c.request(
                "POST",
                "/v1/clones",
                Some(&serde_json::to_vec(&spawn_body(6, "k")).unwrap()),
            )
        });
        wait_stopped(&d, point);
        let mut d = d;
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        // The client sees the connection end, not an answer.
        assert!(req.join().unwrap().is_err(), "{point}");
        drop(d);

        // Restarted: every recorded clone is adopted and listed, nothing
        // else of wasp's is left (VMMs, clone dirs, records, slots).
        let d = Daemon::start(&w, &[], &[]);
        let listed = d.ids("");
        let n = w.assert_only(&listed);
        if point.starts_with("clone-recorded") {
            assert!(n >= 1, "{point}: a recorded clone was lost");
        }
        let (st, log) = d.stop();
        assert!(st.success(), "{log}");
        // Clean slate for the next point.
        w.json(w.wasp(&["kill", "--all", "--json"], false));
        w.assert_only(&BTreeSet::new());
    }
}

#[test]
fn a_client_that_goes_away_leaves_its_clones_listed() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new(wasp_bin!(), "srvgone");
    // Stopped once the request's first VMM is launched: the client goes
    // away while its request is surely in the engine.
    let d = Daemon::start(&w, &[], &[("WASP_STOP_AT", "clone-launched:1")]);
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
        let body = serde_json::to_vec(&spawn_body(3, "gone")).unwrap();
        write!(
            s,
            "POST /v1/clones HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        wait_stopped(&d, "clone-launched:1");
        s.shutdown(std::net::Shutdown::Both).unwrap();
    }
    kill(Pid::from_raw(d.child.id() as i32), Signal::SIGCONT).unwrap();
    // hyper drops the request's handler when its connection closes; the
    // request runs on in the engine, and its clones are kept and listed.
    let line = d.wait_line(&["client went away", "they are kept"]);
    let listed = d.ids("?label=team=gone");
    assert_eq!(listed.len(), 3, "{line}\n{}", d.log());
    for id in &listed {
        assert!(line.contains(id.as_str()), "{id} not in {line}");
    }
    let k = d.ok("DELETE", "/v1/clones?label=team=gone", None);
    assert_eq!(k["killed"].as_array().unwrap().len(), 3);
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");
    w.assert_only(&BTreeSet::new());
}

#[test]
fn spawn_ls_and_kill_go_through_the_daemon_named_by_server() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new(wasp_bin!(), "srvcli");
    let d = Daemon::start(&w, &[], &[]);
    let server = format!("unix:{}", d.sock.display());
    let run = |args: &[&str]| {
        let out = testkit::wasp_command(w.bin())
            .args(args)
            .args(["--server", &server])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let snap = w.snap().display().to_string();
    let out = run(&[
        "-v",
        "spawn",
        "--snapshot",
        &snap,
        "--count",
        "2",
        "--vmm",
        "standin",
        "--json",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("using the wasp daemon"));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["summary"]["ready"], 2, "{rep:#}");
    let ids = testkit::cli::ids(&rep["clones"]);
    // The daemon holds them: it lists them, and so does `wasp ls` through it.
    assert_eq!(d.ids(""), ids);
    let ls: Value = serde_json::from_slice(&run(&["ls", "--json"]).stdout).unwrap();
    assert_eq!(testkit::cli::ids(&ls["clones"]), ids);
    assert!(ls["clones"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["alive"] == true));
    let table = String::from_utf8(run(&["ls"]).stdout).unwrap();
    assert!(table.contains("2 clone(s)"), "{table}");
    let one = ids.iter().next().unwrap();
    let out = String::from_utf8(run(&["kill", one]).stdout).unwrap();
    assert!(
        out.contains(&format!("{one}: ")) && out.contains("files and record removed"),
        "{out}"
    );
    let k: Value = serde_json::from_slice(&run(&["kill", "--all", "--json"]).stdout).unwrap();
    assert_eq!(k["killed"].as_array().unwrap().len(), 1, "{k}");
    assert!(d.ids("").is_empty());
    // A named daemon that does not answer is an error, not a silent fallback.
    let out = testkit::wasp_command(w.bin())
        .args(["ls", "--server", "unix:/nonexistent/wasp.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no wasp daemon answers"));
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");
    w.assert_only(&BTreeSet::new());
}

#[test]
fn pause_and_resume_on_real_firecracker_keep_the_clone_and_its_slot() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new(wasp_bin!(), "srvfc");
    let (golden, _) = testkit::firecracker_golden(w.tmp.path());
    let fc = testkit::firecracker_bin().display().to_string();
    let d = Daemon::start_vmm(&w, "firecracker", &golden, &["--firecracker", &fc], &[]);
    let r = d.ok("POST", "/v1/clones", Some(spawn_body(1, "fc")));
    assert_eq!(r["summary"]["ready"], 1, "{r:#}");
    let id = r["clones"][0]["id"].as_str().unwrap().to_owned();
    let pid = r["clones"][0]["pid"].as_i64().unwrap();
    let netns = r["clones"][0]["netns"].as_str().unwrap().to_owned();
    let g = d.ok("GET", &format!("/v1/clones/{id}"), None);
    assert_eq!(
        (g["vmm"].as_str(), g["state"].as_str()),
        (Some("firecracker"), Some("running"))
    );
    let sock = std::path::PathBuf::from(g["api_sock"].as_str().unwrap());
    let vm_state = || {
        wasp::vmm::api::Client::connect(&sock)
            .unwrap()
            .get_instance_info()
            .unwrap()
            .state
    };
    assert_eq!(vm_state(), "Running");

    let p = d.ok("POST", &format!("/v1/clones/{id}/pause"), None);
    assert_eq!(p["state"], "paused");
    assert_eq!(vm_state(), "Paused");
    // Paused, it keeps its VMM and its slot.
    assert!(alive(pid));
    let again = d.ok("GET", &format!("/v1/clones/{id}"), None);
    assert_eq!(
        (again["state"].as_str(), again["netns"].as_str()),
        (Some("paused"), Some(netns.as_str()))
    );
    let pools = d.ok("GET", "/v1/pools", None);
    assert_eq!(pools["pools"][0]["in_use"], 1, "{pools}");
    let twice = d.call("POST", &format!("/v1/clones/{id}/pause"), None);
    assert_eq!(twice.status, 409, "{}", twice.detail());

    let p = d.ok("POST", &format!("/v1/clones/{id}/resume"), None);
    assert_eq!(p["state"], "running");
    assert_eq!(vm_state(), "Running");
    let twice = d.call("POST", &format!("/v1/clones/{id}/resume"), None);
    assert_eq!(twice.status, 409, "{}", twice.detail());
    d.ok("DELETE", &format!("/v1/clones/{id}"), None);
    assert!(!alive(pid));
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");
    w.assert_only(&BTreeSet::new());
}

#[test]
fn a_request_the_host_cannot_hold_gets_503_with_retry_after_and_builds_nothing() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new(wasp_bin!(), "srvfull");
    // A /28: room for a handful of slots only.
    let d = Daemon::start(&w, &["--cidr", "10.213.7.0/28"], &[]);
    let cap = d.ok("GET", "/v1/capacity", None);
    let possible = cap["clones_possible"].as_u64().unwrap() as usize;
    assert!(possible < 16, "{cap}");
    let before = w.seen();
    let r = d.call("POST", "/v1/clones", Some(spawn_body(possible + 1, "x")));
    assert_eq!(r.status, 503, "{}", r.detail());
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json().unwrap()["error"], "unavailable");
    assert!(
        r.detail().contains(&format!("{possible} more")),
        "{}",
        r.detail()
    );
    assert_eq!(w.seen(), before, "an overloaded request built something");
    // What fits is served, to the CIDR's last address (while the refill
    // builds too); then not one more.
    let ok = d.ok("POST", "/v1/clones", Some(spawn_body(possible, "x")));
    assert_eq!(
        ok["summary"]["ready"].as_u64().unwrap() as usize,
        possible,
        "{ok:#}"
    );
    let r = d.call("POST", "/v1/clones", Some(spawn_body(1, "x")));
    assert_eq!(r.status, 503, "{}", r.detail());
    d.ok("DELETE", "/v1/clones?label=team=x", None);
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");
}

#[test]
fn a_snapshot_on_another_filesystem_gets_409_unless_allow_copy() {
    root_or_skip!();
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // The snapshot on a scratch ext4 of its own: another filesystem than
    // the world's runtime dir, so each clone would copy its 8 MiB rootfs
    // (every block written).
    let ext4 = testkit::loopfs::LoopFs::ext4(128);
    let far = ext4.path().join("far");
    wasp::snapshot::synth(&wasp::snapshot::SynthOptions {
        out: far.clone(),
        mem_mib: 16,
        rootfs_mib: 8,
        ..Default::default()
    })
    .unwrap();
    let far_s = far.display().to_string();
    let w = World::new(wasp_bin!(), "srvcopy");
    let refused = |detail: &str| {
        for needle in [
            far_s.as_str(),
            "is on another filesystem than the runtime dir",
            "each clone would copy 8388608 bytes (8 MiB)",
            "wasp storage init",
            "wasp snapshot adopt",
            "`allow_copy = true`",
            "[serve]",
            "wasp serve --allow-copy",
        ] {
            assert!(detail.contains(needle), "no {needle:?} in: {detail}");
        }
    };

    // Named at start: the daemon does not start, and says why (a daemon
    // that starts is killed at the bound and fails the test).
    let c = w
        .wasp(
            &[
                "serve",
                "--vmm",
                "standin",
                "--listen",
                &format!("unix:{}", w.tmp.path().join("api.sock").display()),
                "--snapshot",
                &format!("far={far_s}"),
                "--warm",
                "1",
                "--low-water",
                "1",
            ],
            true,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(c.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(c.wait_with_output());
    });
    let o = rx.recv_timeout(EVENT_BOUND).unwrap_or_else(|e| {
        let _ = kill(pid, Signal::SIGKILL);
        panic!("the daemon started with a snapshot it must refuse ({e})")
    });
    let o = o.unwrap();
    assert!(!o.status.success());
    refused(&String::from_utf8_lossy(&o.stderr));

    // Added or named by a running daemon: 409, nothing known or built.
    let d = Daemon::start(&w, &[], &[]);
    let before = w.seen();
    let r = d.call(
        "POST",
        "/v1/snapshots",
        Some(json!({"name": "far", "dir": far_s})),
    );
    assert_eq!(r.status, 409, "{}", r.detail());
    assert_eq!(r.json().unwrap()["error"], "conflict");
    refused(&r.detail());
    let known = d.ok("GET", "/v1/snapshots", None);
    assert_eq!(known["snapshots"].as_array().unwrap().len(), 1, "{known}");
    let r = d.call(
        "POST",
        "/v1/clones",
        Some(json!({"snapshot": far_s, "count": 1})),
    );
    assert_eq!(r.status, 409, "{}", r.detail());
    refused(&r.detail());
    assert_eq!(w.seen(), before, "a refused snapshot built something");
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");

    // With --allow-copy: accepted, and each clone copies its rootfs.
    let d = Daemon::start(&w, &["--allow-copy"], &[]);
    let s = d.ok(
        "POST",
        "/v1/snapshots",
        Some(json!({"name": "far", "dir": far_s})),
    );
    assert_eq!(s["name"], "far");
    d.wait_line(&[
        "serve.allow_copy",
        &far_s,
        "each clone copies 8388608 bytes",
    ]);
    let r = d.ok(
        "POST",
        "/v1/clones",
        Some(json!({"snapshot": "far", "count": 1, "labels": {"team": "far"}})),
    );
    assert_eq!(r["summary"]["ready"], 1, "{r:#}");
    assert_eq!(r["clones"][0]["bytes_copied"], 8u64 << 20, "{r:#}");
    d.ok("DELETE", "/v1/clones?label=team=far", None);
    let (st, log) = d.stop();
    assert!(st.success(), "{log}");
    w.kill_drain_and_assert_zero();
}

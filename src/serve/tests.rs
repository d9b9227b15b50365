//! The HTTP layer over the recording fake: routing, checks, auth, errors,
//! metrics, logs. No root: requests go through the router itself
//! (`tower::ServiceExt::oneshot`); the server's life and `bench serve` over
//! a unix socket in a temp dir.

// `EVENTS` only keeps the log test apart (current-thread runtimes).
#![allow(clippy::await_holding_lock)]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use tower::ServiceExt;

use super::*;
use super::{bench, client, ServeError, ServeOptions, Server, Stop};

/// The log test captures events through a thread-scoped subscriber, and
/// tracing caches each callsite's interest process-wide: tests that send
/// requests through the router (the same callsites) take this for reading,
/// the log test for writing, so none runs beside it.
static EVENTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn events() -> std::sync::RwLockReadGuard<'static, ()> {
    EVENTS.read().unwrap_or_else(|p| p.into_inner())
}

const LIMITS: Limits = Limits {
    max_count: 10,
    body_limit: 4096,
};

fn app() -> (Arc<App>, Arc<FakeBackend>) {
    let app = App::new(LIMITS, Arc::new(Metrics::new()));
    let fake = Arc::new(FakeBackend::new());
    app.set_backend(fake.clone());
    (app, fake)
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

async fn call(r: &axum::Router, method: &str, uri: &str, body: Option<&str>) -> Reply {
    call_with(r, method, uri, body, &[]).await
}

async fn call_with(
    r: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = Request::builder().method(method).uri(uri);
    if body.is_some() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(body.map(|s| Body::from(s.to_owned())).unwrap_or_default())
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn assert_error(r: &Reply, status: u16, needle: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    let j = r.json();
    assert!(j["error"].is_string(), "{}", r.text);
    let d = j["detail"].as_str().unwrap();
    assert!(d.contains(needle), "{needle:?} not in {d:?}");
}

#[tokio::test]
async fn every_route_answers_and_others_get_json_404_and_405() {
    let _events = events();
    let (app, fake) = app();
    let r = router(app, None);
    let created = call(
        &r,
        "POST",
        "/v1/clones",
        Some(r#"{"snapshot":"snap","count":2,"labels":{"team":"a"}}"#),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let j = created.json();
    // The same document as `wasp spawn --json`.
    assert_eq!(j["clones"].as_array().unwrap().len(), 2);
    assert!(j["summary"]["ready"].as_u64() == Some(2));
    let id = j["clones"][0]["id"].as_str().unwrap().to_owned();
    for key in [
        "id",
        "clone_ip",
        "host_netns",
        "ready_port",
        "phases_ms",
        "total_ms",
    ] {
        assert!(j["clones"][0].get(key).is_some(), "no {key}: {j}");
    }
    let list = call(&r, "GET", "/v1/clones?label=team=a", None).await;
    assert_eq!(list.json()["clones"].as_array().unwrap().len(), 2);
    let none = call(&r, "GET", "/v1/clones?label=team=b", None).await;
    assert_eq!(none.json()["clones"].as_array().unwrap().len(), 0);
    let one = call(&r, "GET", &format!("/v1/clones/{id}"), None).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["id"], id.as_str());
    assert_eq!(one.json()["state"], "running");
    let p = call(&r, "POST", &format!("/v1/clones/{id}/pause"), None).await;
    assert_eq!(p.json()["state"], "paused");
    let again = call(&r, "POST", &format!("/v1/clones/{id}/pause"), None).await;
    assert_error(&again, 409, "paused");
    let p = call(&r, "POST", &format!("/v1/clones/{id}/resume"), None).await;
    assert_eq!(p.json()["state"], "running");
    let t = call(
        &r,
        "PATCH",
        &format!("/v1/clones/{id}"),
        Some(r#"{"ttl_s":30}"#),
    )
    .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    let d = call(&r, "DELETE", &format!("/v1/clones/{id}"), None).await;
    assert_eq!(d.json()["killed"][0]["id"], id.as_str());
    let gone = call(&r, "GET", &format!("/v1/clones/{id}"), None).await;
    assert_error(&gone, 404, &id);
    let d = call(&r, "DELETE", "/v1/clones?label=team=a", None).await;
    assert_eq!(d.json()["killed"].as_array().unwrap().len(), 1);
    let all = call(&r, "DELETE", "/v1/clones", None).await;
    assert_error(&all, 400, "label=KEY=VALUE");
    let s = call(&r, "GET", "/v1/snapshots", None).await;
    assert_eq!(s.json()["snapshots"][0]["name"], "snap");
    let s = call(
        &r,
        "POST",
        "/v1/snapshots",
        Some(r#"{"name":"two","dir":"/fake/two"}"#),
    )
    .await;
    assert_eq!(s.status, StatusCode::CREATED, "{}", s.text);
    let p = call(&r, "GET", "/v1/pools", None).await;
    assert_eq!(p.json()["pools"][0]["name"], "default");
    let p = call(
        &r,
        "PUT",
        "/v1/pools/default",
        Some(r#"{"size":6,"low_water":2,"high_water":8}"#),
    )
    .await;
    assert_eq!(p.json()["free"], 6, "{}", p.text);
    let p = call(
        &r,
        "PUT",
        "/v1/pools/default",
        Some(r#"{"low_water":9,"high_water":8}"#),
    )
    .await;
    assert_error(&p, 422, "low_water 9");
    let p = call(&r, "PUT", "/v1/pools/other", Some("{}")).await;
    assert_error(&p, 404, "other");
    let c = call(&r, "GET", "/v1/capacity", None).await;
    assert!(c.json()["clones_possible"].is_u64(), "{}", c.text);
    assert_eq!(
        call(&r, "GET", "/healthz", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&r, "GET", "/readyz", None).await.status,
        StatusCode::OK
    );
    assert_error(
        &call(&r, "GET", "/v2/clones", None).await,
        404,
        "/v2/clones",
    );
    assert_error(&call(&r, "PUT", "/v1/clones", None).await, 405, "method");
    // Every call reached the fake in order, nothing else.
    let calls = fake.calls();
    assert!(calls[0].starts_with("spawn snap count=2"), "{calls:?}");
}

#[tokio::test]
async fn bad_bodies_get_a_clear_4xx_and_nothing_is_built() {
    let _events = events();
    let (app, fake) = app();
    let r = router(app, None);
    let cases: &[(&str, u16, &str)] = &[
        (
            r#"{"snapshot":"snap","cuont":1}"#,
            400,
            "unknown field `cuont`",
        ),
        (
            r#"{"snapshot":"snap","count":11}"#,
            400,
            "count 11 is out of range: use 1 to 10",
        ),
        (
            r#"{"snapshot":"snap","count":0}"#,
            400,
            "count 0 is out of range",
        ),
        (
            r#"{"snapshot":"snap","env":{"BAD-KEY":"v"}}"#,
            422,
            "BAD-KEY",
        ),
        (
            r#"{"snapshot":"snap","env":{"AGENT_ID":"v"}}"#,
            422,
            "AGENT_ID",
        ),
        (r#"{"snapshot":"snap","ready":"tcp:x"}"#, 422, "ready"),
        (r#"{"snapshot":"snap","ttl_s":0}"#, 422, "ttl_s 0"),
        (
            r#"{"snapshot":"snap","labels":{"a b":"c"}}"#,
            422,
            "label key",
        ),
        (r#"{"snapshot":"snap","vmm":"firecracker"}"#, 422, "standin"),
        (r#"{"count":1}"#, 400, "snapshot"),
        (r#"{"snapshot":"snap""#, 400, "JSON"),
        (r#"[1]"#, 400, "one JSON object"),
    ];
    for (body, status, needle) in cases {
        let rep = call(&r, "POST", "/v1/clones", Some(body)).await;
        assert_error(&rep, *status, needle);
    }
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    // A snapshot the daemon does not know: refused by the backend, nothing made.
    let rep = call(&r, "POST", "/v1/clones", Some(r#"{"snapshot":"nope"}"#)).await;
    assert_error(&rep, 422, "nope");
    assert!(fake.list().is_empty());
    // Not JSON: 415. Over the body limit: 413.
    let rep = call_with(
        &r,
        "POST",
        "/v1/clones",
        None,
        &[("content-type", "text/plain")],
    )
    .await;
    assert_error(&rep, 415, "application/json");
    let big = format!(r#"{{"snapshot":"{}"}}"#, "x".repeat(5000));
    let rep = call(&r, "POST", "/v1/clones", Some(&big)).await;
    assert_error(&rep, 413, "4096 bytes");
    let rep = call(&r, "PATCH", "/v1/clones/x", Some(r#"{"ttl":1}"#)).await;
    assert_error(&rep, 400, "unknown field `ttl`");
    let rep = call(&r, "PUT", "/v1/pools/default", Some(r#"{"size":1,"x":2}"#)).await;
    assert_error(&rep, 400, "unknown field `x`");
    let rep = call(&r, "GET", "/v1/clones?owner=me", None).await;
    assert_error(&rep, 400, "owner");
}

#[tokio::test]
async fn overload_is_503_with_retry_after_and_starting_is_503() {
    let _events = events();
    let (app, fake) = app();
    let r = router(app, None);
    fake.overloaded.store(true, Ordering::Relaxed);
    let rep = call(
        &r,
        "POST",
        "/v1/clones",
        Some(r#"{"snapshot":"snap","count":5}"#),
    )
    .await;
    assert_error(&rep, 503, "asked 5");
    assert_eq!(rep.headers[header::RETRY_AFTER], "3");

    let starting = App::new(LIMITS, Arc::new(Metrics::new()));
    let r = router(starting, None);
    let rep = call(&r, "GET", "/v1/clones", None).await;
    assert_error(&rep, 503, "starting");
    assert!(rep.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(
        call(&r, "GET", "/healthz", None).await.status,
        StatusCode::OK
    );
    let ready = call(&r, "GET", "/readyz", None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["ready"], false);
}

#[tokio::test]
async fn a_token_listener_refuses_without_the_right_token() {
    let _events = events();
    let (app, _) = app();
    let token = Arc::new(Token::new("the-right-token-0123"));
    let r = router(app, Some(token));
    let none = call(&r, "GET", "/v1/clones", None).await;
    assert_error(&none, 401, "Bearer");
    let wrong = call_with(
        &r,
        "GET",
        "/v1/clones",
        None,
        &[("authorization", "Bearer the-wrong-token-0123")],
    )
    .await;
    assert_error(&wrong, 401, "Bearer");
    assert!(!wrong.text.contains("wrong-token"));
    let basic = call_with(
        &r,
        "GET",
        "/healthz",
        None,
        &[("authorization", "Basic the-right-token-0123")],
    )
    .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    let ok = call_with(
        &r,
        "GET",
        "/v1/clones",
        None,
        &[("authorization", "Bearer the-right-token-0123")],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

/// A tracing writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn one_log_line_per_request_and_never_a_secret() {
    let cap = Captured::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(cap.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _events = EVENTS.write().unwrap_or_else(|p| p.into_inner());
    let _g = tracing::subscriber::set_default(sub);
    tracing::callsite::rebuild_interest_cache();
    let (app, fake) = app();
    let token = Arc::new(Token::new("bearer-secret-value-77"));
    let r = router(app, Some(token));
    let auth = [("authorization", "Bearer bearer-secret-value-77")];
    let secret = "s3cr3t-VALUE-5512";
    let body = format!(
        r#"{{"snapshot":"snap","env":{{"PLAIN":"p"}},"secrets":{{"API_KEY":"{secret}"}}}}"#
    );
    let ok = call_with(&r, "POST", "/v1/clones", Some(&body), &auth).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert!(!ok.text.contains(secret));
    // Refused bodies that carry the secret: a bad key, a wrong type.
    let bad = format!(r#"{{"snapshot":"snap","secrets":{{"1KEY":"{secret}"}}}}"#);
    let rep = call_with(&r, "POST", "/v1/clones", Some(&bad), &auth).await;
    assert_eq!(rep.status.as_u16(), 422);
    assert!(!rep.text.contains(secret));
    let wrong = call_with(
        &r,
        "GET",
        "/v1/clones",
        None,
        &[("authorization", "Bearer guess-123")],
    )
    .await;
    assert_eq!(wrong.status.as_u16(), 401);
    let logs = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.contains(secret), "{logs}");
    assert!(!logs.contains("bearer-secret-value-77"), "{logs}");
    assert!(!logs.contains("guess-123"), "{logs}");
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("request")).collect();
    assert_eq!(lines.len(), 3, "{logs}");
    let first = lines[0];
    for want in [
        "method=POST",
        "route=/v1/clones",
        "status=201",
        "ms=",
        "clones=f00000-0",
    ] {
        assert!(first.contains(want), "{want} not in {first}");
    }
    assert!(lines[2].contains("status=401") && lines[2].contains("route=/v1/clones"));
    assert!(logs.contains("no bearer token") || logs.contains("wrong token"));
    // The backend got the key, never the value in its record of calls.
    let calls = fake.calls().join("\n");
    assert!(
        calls.contains("API_KEY") && !calls.contains(secret),
        "{calls}"
    );
}

#[tokio::test]
async fn metrics_scrape_parses_and_counts() {
    let _events = events();
    let (app, fake) = app();
    let exits = fake.exits().unwrap();
    let r = router(app.clone(), None);
    call(
        &r,
        "POST",
        "/v1/clones",
        Some(r#"{"snapshot":"snap","count":3}"#),
    )
    .await;
    call(&r, "GET", "/v1/clones/nope", None).await;
    // An expiry, seen as the daemon sees exits.
    let id = fake.list()[0].record.id.clone();
    fake.expire(&id).unwrap();
    app.metrics.observe_exit(&exits.try_recv().unwrap());
    let text = call(&r, "GET", "/metrics", None).await.text;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let find = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
            .value
            .clone()
    };
    use prometheus_parse::Value;
    match find("wasp_spawn_duration_seconds", &[("phase", "load")]) {
        Value::Histogram(h) => {
            let total = h.iter().map(|b| b.count).fold(0.0, f64::max);
            assert_eq!(total, 3.0, "{text}");
            assert_eq!(h.first().unwrap().less_than, 0.0005);
        }
        v => panic!("not a histogram: {v:?}"),
    }
    let counter = |v: Value| match v {
        Value::Counter(c) | Value::Untyped(c) | Value::Gauge(c) => c,
        v => panic!("{v:?}"),
    };
    assert_eq!(
        counter(find(
            "wasp_http_requests_total",
            &[
                ("route", "/v1/clones"),
                ("status", "201"),
                ("method", "POST")
            ]
        )),
        1.0
    );
    assert_eq!(
        counter(find(
            "wasp_http_requests_total",
            &[("route", "/v1/clones/:id"), ("status", "404")]
        )),
        1.0
    );
    assert_eq!(counter(find("wasp_ttl_expiries_total", &[])), 1.0);
    assert_eq!(
        counter(find("wasp_vmm_exits_total", &[("cause", "ttl_expired")])),
        1.0
    );
    assert_eq!(counter(find("wasp_clones_running", &[])), 2.0);
    assert_eq!(
        counter(find(
            "wasp_pool_slots",
            &[("pool", "default"), ("state", "free")]
        )),
        4.0
    );
    assert!(text.contains("wasp_build_info{version=\""), "{text}");
}

#[test]
fn the_openapi_document_lists_exactly_the_routes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api/openapi.yaml");
    let doc: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut documented = std::collections::BTreeSet::new();
    let paths = doc["paths"].as_mapping().expect("paths");
    for (p, ops) in paths {
        for (m, _) in ops.as_mapping().unwrap() {
            let m = m.as_str().unwrap();
            if ["get", "post", "put", "patch", "delete", "head", "options"].contains(&m) {
                documented.insert((m.to_owned(), p.as_str().unwrap().to_owned()));
            }
        }
    }
    assert_eq!(documented, routes::route_set());
}

fn opts(listen: Vec<Listen>) -> ServeOptions {
    ServeOptions {
        listen,
        token: None,
        metrics: None,
        socket_gid: None,
        limits: LIMITS,
        kill_on_exit: false,
        workers: 1,
    }
}

#[test]
fn the_server_binds_serves_over_its_socket_and_stops_in_order() {
    let _events = events();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("api.sock");
    // TCP without a token: refused before anything is bound.
    let e = Server::bind(opts(vec![Listen::Tcp("127.0.0.1:0".parse().unwrap())])).unwrap_err();
    assert!(e.to_string().contains("needs --token-file"), "{e}");
    // A file that is not a socket is left alone.
    let plain = tmp.path().join("plain");
    std::fs::write(&plain, "x").unwrap();
    let e = Server::bind(opts(vec![Listen::Unix(plain.clone())])).unwrap_err();
    assert!(matches!(e, ServeError::NotASocket(_)), "{e}");
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "x");

    let server = Server::bind(opts(vec![Listen::Unix(sock.clone())])).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A second daemon on the same socket: refused while the first answers
    // (once it serves).
    let fake = Arc::new(FakeBackend::new());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let f = fake.clone();
    let server = server.on_ready(Box::new(move || ready_tx.send(()).unwrap()));
    let run = std::thread::spawn(move || {
        server.run(
            Box::new(move || Ok(f as Arc<dyn Backend>)),
            Stop::Channel(stop_rx),
        )
    });
    ready_rx.recv().unwrap();
    let c = client::Client::unix(&sock);
    let ready = c.get("/readyz").unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json().unwrap()["ready"], true);
    let e = Server::bind(opts(vec![Listen::Unix(sock.clone())])).unwrap_err();
    assert!(matches!(e, ServeError::InUse(_)), "{e}");
    let r = c
        .request(
            "POST",
            "/v1/clones",
            Some(br#"{"snapshot":"snap","count":2}"#),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.detail());
    stop_tx.send(()).unwrap();
    let rep = run.join().unwrap().unwrap();
    assert_eq!((rep.killed, rep.left_running), (0, 2));
    assert!(!sock.exists(), "the socket is removed at the end");
    assert!(fake.calls().iter().any(|c| c == "shutdown kill=false"));
}

#[test]
fn bench_serve_measures_a_daemon_and_counts_its_refusals() {
    let _events = events();
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("api.sock");
    let server = Server::bind(opts(vec![Listen::Unix(sock.clone())])).unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let server = server.on_ready(Box::new(move || ready_tx.send(()).unwrap()));
    let run = std::thread::spawn(move || {
        server.run(
            Box::new(|| Ok(Arc::new(FakeBackend::new()) as Arc<dyn Backend>)),
            Stop::Channel(stop_rx),
        )
    });
    ready_rx.recv().unwrap();
    let o = bench::BenchOptions {
        client: client::Client::unix(&sock),
        snapshot: "snap".into(),
        requests: 20,
        concurrency: 3,
        count: 2,
        ready: Some("running".into()),
        ttl_s: Some(2),
        duration: None,
        window: std::time::Duration::from_secs(60),
        gap: std::time::Duration::ZERO,
        probe: bench::HostProbe {
            daemon_pid: Some(std::process::id()),
            state_dir: Some(tmp.path().to_owned()),
            ..bench::HostProbe::default()
        },
    };
    let r = bench::run(&o).unwrap();
    assert_eq!((r.ok, r.failed), (20, 0), "{:?}", r.failures);
    assert_eq!(r.latency_ms.n, 20);
    // The fake's engine wall and clone total come back from its answers.
    assert_eq!(r.engine_ms.p50, 3.0);
    assert_eq!(r.clone_ms.p50, 2.81);
    assert_eq!(r.windows.iter().map(|w| w.requests).sum::<usize>(), 20);
    let bad = bench::run(&bench::BenchOptions {
        snapshot: "nope".into(),
        requests: 4,
        ..o.clone()
    })
    .unwrap();
    assert_eq!((bad.ok, bad.failed), (0, 4));
    assert!(bad.failures[0].starts_with("422"), "{:?}", bad.failures);
    // A timed run samples the daemon's capacity: at the start, then per
    // window.
    let timed = bench::run(&bench::BenchOptions {
        duration: Some(std::time::Duration::from_millis(200)),
        window: std::time::Duration::from_millis(100),
        ..o.clone()
    })
    .unwrap();
    assert!(timed.ok > 0 && timed.failed == 0, "{:?}", timed.failures);
    assert!(!timed.host.is_empty());
    assert_eq!(timed.host[0].fds_open, 10, "the fake's capacity");
    // … and the host counts asked for (this process stands for the daemon).
    let c = timed.host[0].counts;
    assert!(c.rss_kib.is_some_and(|k| k > 0) && c.state_files.is_some());
    assert_eq!((c.netns, c.conntrack), (None, None));
    assert!(r.host.is_empty(), "a counted run takes no samples");
    assert!(bench::run(&bench::BenchOptions {
        concurrency: 0,
        ..o
    })
    .is_err());
    stop_tx.send(()).unwrap();
    run.join().unwrap().unwrap();
}

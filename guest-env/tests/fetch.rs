//! `mmds::fetch` against the loopback MMDS V2 server: tokens, retries while
//! the store is empty, the bound, both output forms, and errors that never
//! carry a value. Waits are recorded, not slept: the server changes state by
//! request count.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::MmdsServer;
use serde_json::{json, Value};
use wasp_guest_env::env::GuestEnv;
use wasp_guest_env::mmds::{chain, fetch, Config, FetchError, Format};

const CANARY: &str = "canary-s3cret-'\"$`\\";

fn config(s: &MmdsServer) -> Config {
    Config {
        addr: s.addr,
        attempts: 10,
        timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// Runs fetch, returning the result, the waits it asked for and its log.
fn run(cfg: &Config) -> (Result<GuestEnv, FetchError>, Vec<Duration>, Vec<String>) {
    let mut waits = Vec::new();
    let mut log = Vec::new();
    let r = fetch(cfg, &mut |d| waits.push(d), &mut |m| log.push(m.to_owned()));
    (r, waits, log)
}

fn doc() -> Value {
    json!({"env": {"AGENT_ID": "wasp-7", "ANTHROPIC_API_KEY": CANARY, "EMPTY": ""}})
}

fn assert_env(env: &GuestEnv) {
    assert_eq!(
        env.iter().collect::<Vec<_>>(),
        [
            ("AGENT_ID", "wasp-7"),
            ("ANTHROPIC_API_KEY", CANARY),
            ("EMPTY", "")
        ]
    );
}

#[test]
fn json_form_with_a_token() {
    let s = MmdsServer::with(doc());
    let (env, waits, _) = run(&config(&s));
    assert_env(&env.unwrap());
    assert!(waits.is_empty());
    let seen = s.seen();
    assert_eq!(
        seen.iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.status, r.json))
            .collect::<Vec<_>>(),
        [
            ("PUT", "/latest/api/token", 200, false),
            ("GET", "/env", 200, true)
        ]
    );
}

#[test]
fn plain_text_form_lists_then_reads_each_key() {
    let s = MmdsServer::with(doc());
    let cfg = Config {
        format: Format::Imds,
        ..config(&s)
    };
    let (env, _, _) = run(&cfg);
    assert_env(&env.unwrap());
    let paths: Vec<_> = s.seen().into_iter().map(|r| (r.path, r.json)).collect();
    assert_eq!(
        paths,
        [
            ("/latest/api/token".to_owned(), false),
            ("/env".to_owned(), false),
            ("/env/AGENT_ID".to_owned(), false),
            ("/env/ANTHROPIC_API_KEY".to_owned(), false),
            ("/env/EMPTY".to_owned(), false),
        ]
    );
    // Nested objects and non-strings have no plain-text value.
    s.put(json!({"env": {"A": {"B": "x"}}}));
    let e = run(&cfg).0.unwrap_err();
    assert!(
        chain(&e).contains("value of A is not a string"),
        "{}",
        chain(&e)
    );
    s.put(json!({"env": {"N": 1}}));
    let e = run(&cfg).0.unwrap_err();
    assert!(
        chain(&e).contains("answered GET /env/N with 501"),
        "{}",
        chain(&e)
    );
}

#[test]
fn empty_store_is_retried_until_filled() {
    let s = MmdsServer::start();
    s.fill_after_gets(3, doc());
    let (env, waits, log) = run(&config(&s));
    assert_env(&env.unwrap());
    // Three 404s, three waits (doubling), one token for all four GETs.
    assert_eq!(s.count("GET", 404), 3);
    assert_eq!(s.count("GET", 200), 1);
    assert_eq!(s.count("PUT", 200), 1);
    assert_eq!(waits, [10, 20, 40].map(Duration::from_millis).to_vec());
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0].contains("has nothing at /env yet (404)"), "{log:?}");
    assert!(log[1].contains("got 3 variables from MMDS after 4 attempts"));
}

#[test]
fn null_root_counts_as_empty() {
    let s = MmdsServer::start();
    s.fill_after_gets(1, json!({"AGENT_ID": "x"}));
    let cfg = Config {
        path: "/".into(),
        ..config(&s)
    };
    let (env, waits, log) = run(&cfg);
    assert_eq!(env.unwrap().get("AGENT_ID"), Some("x"));
    assert_eq!(waits.len(), 1);
    assert!(log[0].contains("empty (null at /)"), "{log:?}");
}

#[test]
fn the_bound_gives_one_clear_error() {
    let s = MmdsServer::start();
    let cfg = Config {
        attempts: 4,
        ..config(&s)
    };
    let (env, waits, _) = run(&cfg);
    let e = env.unwrap_err();
    assert!(matches!(e, FetchError::GaveUp { attempts: 4, .. }), "{e:?}");
    let msg = chain(&e);
    assert!(
        msg.contains(&format!(
            "no environment from MMDS at {}/env after 4 attempts (~70 ms of backoff)",
            s.addr
        )),
        "{msg}"
    );
    assert!(msg.contains("raise --attempts"), "{msg}");
    assert!(msg.contains("has not injected"), "{msg}");
    assert_eq!(s.count("GET", 404), 4);
    assert_eq!(waits.len(), 3);
}

#[test]
fn stale_token_is_replaced_once() {
    // A token fetched before a snapshot (or expired) is refused in the
    // clone: the client gets a new one and goes on.
    let s = MmdsServer::start();
    s.fill_after_gets(1, doc());
    let mut waits = 0;
    let mut first = true;
    let cfg = config(&s);
    let env = fetch(
        &cfg,
        &mut |_| {
            waits += 1;
            if first {
                // "Snapshot, restore into a clone": the old token is void.
                s.invalidate_tokens();
                first = false;
            }
        },
        &mut |_| {},
    );
    assert_env(&env.unwrap());
    assert_eq!(waits, 1);
    assert_eq!(s.count("PUT", 200), 2);
    assert_eq!(s.count("GET", 401), 1);
    assert_eq!(s.count("GET", 200), 1);
}

#[test]
fn a_fresh_token_refused_is_fatal() {
    let s = MmdsServer::with(doc());
    s.refuse_tokens();
    let (env, waits, _) = run(&config(&s));
    let msg = chain(&env.unwrap_err());
    assert!(
        msg.contains("refused a freshly issued token for GET /env with 401: MMDS token not valid."),
        "{msg}"
    );
    assert!(waits.is_empty());
    assert_eq!((s.count("PUT", 200), s.count("GET", 401)), (1, 1));
}

#[test]
fn token_request_errors_are_fatal_and_explained() {
    let s = MmdsServer::with(doc());
    // A TTL out of bounds never reaches the server.
    let bad = Config {
        token_ttl: 0,
        ..config(&s)
    };
    let msg = chain(&run(&bad).0.unwrap_err());
    assert!(
        msg.contains("outside Firecracker's bounds of 1..=21600"),
        "{msg}"
    );
    assert!(s.seen().is_empty());
    // MMDS V1 answers the token PUT with 405.
    s.v1();
    let (env, waits, _) = run(&config(&s));
    let msg = chain(&env.unwrap_err());
    assert!(
        msg.contains("refused PUT /latest/api/token with 405"),
        "{msg}"
    );
    assert!(msg.contains("wasp configures V2"), "{msg}");
    assert!(waits.is_empty());
}

#[test]
fn dropped_connections_are_retried() {
    let s = MmdsServer::with(doc());
    s.drop_next_connections(2);
    let (env, waits, log) = run(&config(&s));
    assert_env(&env.unwrap());
    assert_eq!(waits.len(), 2);
    assert!(log[0].contains("MMDS is not reachable"), "{log:?}");
}

#[test]
fn refused_connections_hit_the_bound() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = Config {
        addr,
        attempts: 3,
        ..Config::default()
    };
    let (env, waits, _) = run(&cfg);
    let msg = chain(&env.unwrap_err());
    assert!(msg.contains("after 3 attempts"), "{msg}");
    assert!(msg.contains(&format!("cannot connect to {addr}")), "{msg}");
    assert_eq!(waits.len(), 2);
}

#[test]
fn unusable_data_is_fatal_and_names_only_keys() {
    let s = MmdsServer::start();
    for (doc, want) in [
        (
            json!({"env": {"BAD-KEY": CANARY}}),
            "\"BAD-KEY\" is not a valid shell identifier",
        ),
        (json!({"env": {"K": 5}}), "value of K is not a string"),
        (
            json!({"env": {"K": format!("{CANARY}\u{0}")}}),
            "value of K holds a NUL byte",
        ),
        (json!({"env": [CANARY]}), "is a JSON array"),
        (json!({"env": {"A": CANARY}}), "MMDS has no AGENT_ID"),
    ] {
        s.put(doc);
        let cfg = Config {
            require: vec!["AGENT_ID".into()],
            ..config(&s)
        };
        let (env, waits, _) = run(&cfg);
        let e = env.unwrap_err();
        let msg = chain(&e);
        assert!(msg.contains(want), "{msg}");
        assert!(!msg.contains("canary") && !format!("{e:?}").contains("canary"));
        assert!(waits.is_empty(), "not retried: {want}");
    }
}

#[test]
fn a_server_ignoring_accept_is_reported() {
    let s = MmdsServer::with(json!({"env": {"A": "canary"}}));
    s.ignore_accept();
    let e = run(&config(&s)).0.unwrap_err();
    let msg = chain(&e);
    assert!(msg.contains("with something that is not JSON"), "{msg}");
    assert!(!msg.contains("canary"), "{msg}");
}

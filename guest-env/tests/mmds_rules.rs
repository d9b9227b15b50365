//! The loopback MMDS server follows Firecracker's V2 rules (so the client
//! tests against it mean something), checked with raw requests through the
//! crate's HTTP client on keep-alive connections.

mod common;

use std::time::Duration;

use common::MmdsServer;
use serde_json::json;
use wasp_guest_env::http::{roundtrip, Response};

fn send(s: &MmdsServer, req: &str) -> Response {
    let req = req.replace('\n', "\r\n");
    roundtrip(s.addr, req.as_bytes(), Duration::from_secs(5)).expect("roundtrip")
}

fn token(s: &MmdsServer, ttl: &str) -> Response {
    send(
        s,
        &format!("PUT /latest/api/token HTTP/1.1\nX-metadata-token-ttl-seconds: {ttl}\n\n"),
    )
}

fn get(s: &MmdsServer, path: &str, extra: &str) -> Response {
    send(s, &format!("GET {path} HTTP/1.1\n{extra}\n"))
}

fn text(r: &Response) -> String {
    String::from_utf8(r.body.clone()).unwrap()
}

#[test]
fn token_ttl_bounds_and_forwarded_for() {
    let s = MmdsServer::start();
    for ttl in ["0", "21601"] {
        let r = token(&s, ttl);
        assert_eq!(r.status, 400, "ttl {ttl}");
        assert_eq!(
            text(&r),
            format!("Invalid time to live value provided for token: {ttl}. Please provide a value between 1 and 21600.")
        );
    }
    for ttl in ["1", "21600"] {
        assert_eq!(token(&s, ttl).status, 200, "ttl {ttl}");
    }
    let r = send(&s, "PUT /latest/api/token HTTP/1.1\n\n");
    assert_eq!(r.status, 400);
    assert!(text(&r).starts_with("Token time to live value not found"));
    assert_eq!(token(&s, "ten").status, 400);
    let r = send(
        &s,
        "PUT /latest/api/token HTTP/1.1\nX-metadata-token-ttl-seconds: 60\nX-Forwarded-For: 10.0.0.9\n\n",
    );
    assert_eq!(r.status, 400);
    assert!(text(&r).contains("X-Forwarded-For"));
    let r = send(
        &s,
        "PUT /env HTTP/1.1\nX-metadata-token-ttl-seconds: 60\n\n",
    );
    assert_eq!(
        (r.status, text(&r).as_str()),
        (404, "Resource not found: /env.")
    );
    assert_eq!(send(&s, "PATCH /env HTTP/1.1\n\n").status, 405);
}

#[test]
fn get_needs_a_valid_token() {
    let s = MmdsServer::with(json!({"env": {"A": "1"}}));
    let r = get(&s, "/env", "");
    assert_eq!(r.status, 401);
    assert!(text(&r).starts_with("No MMDS token provided"));
    let r = get(&s, "/env", "X-metadata-token: forged\n");
    assert_eq!(
        (r.status, text(&r).as_str()),
        (401, "MMDS token not valid.")
    );
    let t = text(&token(&s, "60"));
    assert_eq!(
        get(&s, "/env", &format!("X-metadata-token: {t}\n")).status,
        200
    );
    // The AWS spelling works too.
    assert_eq!(
        get(&s, "/env", &format!("X-aws-ec2-metadata-token: {t}\n")).status,
        200
    );
    // Expired, or issued before a snapshot: refused.
    s.invalidate_tokens();
    assert_eq!(
        get(&s, "/env", &format!("X-metadata-token: {t}\n")).status,
        401
    );
}

#[test]
fn empty_store_json_and_plain_text_forms() {
    let s = MmdsServer::start();
    let t = text(&token(&s, "60"));
    let auth = format!("X-metadata-token: {t}\n");
    let json_auth = format!("{auth}Accept: application/json\n");
    // Empty store: `null` at the root in JSON, nothing at /env.
    let r = get(&s, "/", &json_auth);
    assert_eq!((r.status, text(&r).as_str()), (200, "null"));
    let r = get(&s, "/env", &json_auth);
    assert_eq!(
        (r.status, text(&r).as_str()),
        (404, "Resource not found: /env.")
    );
    assert_eq!(get(&s, "/", &auth).status, 501);

    s.put(json!({"env": {"AGENT_ID": "vm1", "Q": "a\nb"}, "n": 1}));
    let r = get(&s, "/env", &json_auth);
    assert_eq!(text(&r), r#"{"AGENT_ID":"vm1","Q":"a\nb"}"#);
    assert_eq!(text(&get(&s, "/", &auth)), "env/\nn");
    assert_eq!(text(&get(&s, "//env/", &auth)), "AGENT_ID\nQ");
    assert_eq!(text(&get(&s, "/env/Q", &auth)), "a\nb");
    assert_eq!(text(&get(&s, "/env/Q", &json_auth)), r#""a\nb""#);
    assert_eq!(get(&s, "/n", &auth).status, 501);
    assert_eq!(text(&get(&s, "/n", &json_auth)), "1");
}

//! What the stand-in guest's HTTP agent endpoint reports, computed from the
//! MMDS data store. It never echoes a value: only the agent id, the sorted
//! environment keys, and a SHA-256 over the canonical `KEY=VALUE\n` lines, so
//! tests can check that injection worked without printing a secret.
//!
//! Environment layout in MMDS: wasp's own object under `"env"` (see
//! `crate::pipeline::env`), else the top-level object; only string values count. `AGENT_ID` and `API_URL` are read from the same
//! place.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The environment (key -> value) carried by an MMDS document.
pub fn env_of(mmds: Option<&Value>) -> BTreeMap<String, String> {
    let Some(doc) = mmds else {
        return BTreeMap::new();
    };
    let obj = match (doc.get("env"), doc) {
        (Some(Value::Object(o)), _) | (_, Value::Object(o)) => o,
        _ => return BTreeMap::new(),
    };
    obj.iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect()
}

/// SHA-256 (hex) of the sorted `KEY=VALUE\n` lines.
pub fn env_sha256(env: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in env {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The agent endpoint's JSON body:
/// `{"agent_id": ..., "env_keys": [...], "env_sha256": "..."}`.
pub fn agent_body(mmds: Option<&Value>) -> Vec<u8> {
    let env = env_of(mmds);
    let body = serde_json::json!({
        "agent_id": env.get("AGENT_ID"),
        "env_keys": env.keys().collect::<Vec<_>>(),
        "env_sha256": env_sha256(&env),
    });
    serde_json::to_vec(&body).expect("json")
}

/// Where the guest polls, from `API_URL` (`http://A.B.C.D:PORT/path`; IPv4
/// only, port default 80), plus the HTTP request it sends, which names the
/// agent but carries no secret.
pub fn poll_request(mmds: Option<&Value>) -> Option<(std::net::SocketAddrV4, Vec<u8>)> {
    let env = env_of(mmds);
    let url = env.get("API_URL")?;
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match hostport.split_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 80),
    };
    let addr = std::net::SocketAddrV4::new(host.parse().ok()?, port);
    let id = env.get("AGENT_ID").map(String::as_str).unwrap_or("");
    let base = path.trim_end_matches('/');
    let req = format!(
        "GET {base}/agent/poll HTTP/1.1\r\nHost: {hostport}\r\nX-Agent-Id: {id}\r\nConnection: close\r\n\r\n"
    );
    Some((addr, req.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_never_echoes_values() {
        let doc = serde_json::json!({"env": {"AGENT_ID": "vm3", "GITHUB_TOKEN": "s3cret", "N": 1}});
        let b = String::from_utf8(agent_body(Some(&doc))).unwrap();
        assert!(!b.contains("s3cret"));
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["agent_id"], "vm3");
        assert_eq!(
            v["env_keys"],
            serde_json::json!(["AGENT_ID", "GITHUB_TOKEN"])
        );
        let mut env = BTreeMap::new();
        env.insert("AGENT_ID".to_owned(), "vm3".to_owned());
        env.insert("GITHUB_TOKEN".to_owned(), "s3cret".to_owned());
        assert_eq!(v["env_sha256"], env_sha256(&env));
        let wasp = serde_json::json!({"env": {"AGENT_ID": "wasp-7", "K": "v"}, "AGENT_ID": "no"});
        let w: Value = serde_json::from_slice(&agent_body(Some(&wasp))).unwrap();
        assert_eq!(w["agent_id"], "wasp-7");
        assert_eq!(w["env_keys"], serde_json::json!(["AGENT_ID", "K"]));
        let empty: Value = serde_json::from_slice(&agent_body(None)).unwrap();
        assert_eq!(empty["agent_id"], Value::Null);
    }

    #[test]
    fn poll_target_comes_from_api_url() {
        let doc = serde_json::json!({"API_URL": "http://10.0.0.1:8080/api/", "AGENT_ID": "vm1"});
        let (addr, req) = poll_request(Some(&doc)).unwrap();
        assert_eq!(addr.to_string(), "10.0.0.1:8080");
        let req = String::from_utf8(req).unwrap();
        assert!(req.starts_with("GET /api/agent/poll HTTP/1.1\r\n"));
        assert!(req.contains("X-Agent-Id: vm1\r\n"));
        assert!(poll_request(Some(&serde_json::json!({"API_URL": "https://x"}))).is_none());
    }
}

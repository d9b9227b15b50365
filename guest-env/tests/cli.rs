//! The `wasp-guest-env` binary end to end against the loopback MMDS V2
//! server: the env file round-trips through `sh`, exec mode hands the
//! variables to the program, and no value ever reaches stdout or stderr.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::MmdsServer;
use serde_json::{json, Map, Value};

/// Values that break naive quoting.
const TRICKY: &[(&str, &str)] = &[
    ("SINGLE", "it's 'quoted'"),
    ("DOUBLE", "say \"hi\""),
    ("NEWLINES", "line1\nline2\n\n"),
    ("DOLLAR", "$HOME ${PATH} $(id) $1"),
    ("BACKTICK", "`id` `"),
    ("BACKSLASH", "a\\b\\\\c\\n\\"),
    ("EMPTY", ""),
    ("MIXED", "'\"$`\\\n'\\''"),
    ("SPACES", "  lead and trail  "),
    ("GLOB", "* ? [a] ~"),
    ("UTF8", "héllo ✓"),
    ("AGENT_ID", "wasp-3f9a1c-7"),
];

fn doc() -> Value {
    let env: Map<String, Value> = TRICKY
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({ "env": env })
}

fn bin(s: &MmdsServer) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wasp-guest-env"));
    c.env("WASP_MMDS_ADDR", s.addr.to_string())
        .env_remove("WASP_ENV_FILE")
        .args(["--timeout-ms", "5000"]);
    c
}

/// Fails if any tricky value shows up in the process's output.
fn assert_no_values(out: &Output) {
    let all = [
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    ]
    .concat();
    for (k, v) in TRICKY {
        if v.len() > 3 && *k != "AGENT_ID" {
            assert!(!all.contains(v), "{k}'s value printed: {all}");
        }
    }
}

fn sh_value(file: &Path, key: &str) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(". \"$1\" && printf %s \"${key}\""))
        .arg("sh")
        .arg(file)
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[test]
fn env_file_round_trips_through_sh() {
    let s = MmdsServer::with(doc());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run/wasp/env");
    let out = bin(&s)
        .args(["--require", "AGENT_ID", "write", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_no_values(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("wrote {} variables", TRICKY.len())));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    for (k, v) in TRICKY {
        assert_eq!(
            String::from_utf8(sh_value(&file, k)).unwrap(),
            *v,
            "{k} after sh"
        );
    }
}

#[test]
fn out_from_the_environment() {
    let s = MmdsServer::with(json!({"env": {"A": "1"}}));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    let out = bin(&s).env("WASP_ENV_FILE", &file).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sh_value(&file, "A"), b"1");
}

#[test]
fn exec_hands_the_environment_to_the_program() {
    let s = MmdsServer::with(doc());
    let out = bin(&s)
        .env("KEPT", "from-parent")
        .env("AGENT_ID", "hostname-fallback")
        .args(["exec", "--", "sh", "-c"])
        .arg("printf '%s|%s|%s' \"$MIXED\" \"$KEPT\" \"$AGENT_ID\"")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // MMDS wins over the inherited AGENT_ID; the rest of the environment stays.
    assert_eq!(
        String::from_utf8(out.stdout.clone()).unwrap(),
        "'\"$`\\\n'\\''|from-parent|wasp-3f9a1c-7"
    );
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn exec_failure_names_the_program() {
    let s = MmdsServer::with(doc());
    let out = bin(&s)
        .args(["exec", "/nonexistent/agent", "--secret-arg"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: cannot exec \"/nonexistent/agent\": No such file"),
        "{err}"
    );
    assert!(!err.contains("--secret-arg"), "{err}");
}

#[test]
fn failures_exit_1_with_one_clear_line_and_no_values() {
    let s = MmdsServer::with(json!({"env": {"BAD KEY": "canary-value", "K": "canary-value"}}));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    let out = bin(&s).arg("--out").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("\"BAD KEY\" is not a valid shell identifier"),
        "{err}"
    );
    assert!(!err.contains("canary"), "{err}");
    assert!(!file.exists(), "nothing written on failure");

    // Empty store, bounded: the bound is reached quickly and explained.
    let empty = MmdsServer::start();
    let out = bin(&empty)
        .args(["--attempts", "3", "--backoff-ms", "1", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("after 3 attempts"), "{err}");
    assert_eq!(empty.count("GET", 404), 3);
}

#[test]
fn usage_errors_exit_2() {
    let s = MmdsServer::start();
    for args in [&["--token-ttl", "21601"][..], &["--frobnicate"], &["exec"]] {
        let out = bin(&s).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    assert!(s.seen().is_empty());
    let out = bin(&s).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("exec [--] PROG"));
}

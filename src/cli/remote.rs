//! `wasp spawn`, `ls` and `kill` as clients of a running `wasp serve`:
//! when `--server`/`WASP_SERVER` names a daemon, or the daemon's default
//! socket answers and the command names no world of its own (state or
//! runtime dir, pool, host netns, demo snapshot). The output is the same as
//! in process; `-v` says which way a command ran.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde::Serialize;
use wasp::config::{Config, Listen};
use wasp::engine::batch::SpawnReport;
use wasp::pipeline::env::{Env, Value};
use wasp::serve::client::{self, Client, Response};

/// The token a TCP client sends: the first line of this file.
pub const TOKEN_FILE_ENV: &str = "WASP_TOKEN_FILE";

/// The daemon to use, if any. `explicit` is `--server`; `implicit_ok`
/// says the command may go to the default socket when nothing names one
/// (it names no world of its own and asks nothing the API lacks). A named
/// daemon that does not answer is an error; the default one that does not
/// answer means "run in process".
pub fn pick(
    explicit: Option<&str>,
    cfg: &Config,
    implicit_ok: bool,
) -> anyhow::Result<Option<Client>> {
    let default_sock = cfg
        .serve_listen
        .value
        .iter()
        .find_map(|l| match l {
            Listen::Unix(p) => Some(p.clone()),
            Listen::Tcp(_) => None,
        })
        .unwrap_or_else(|| wasp::config::DEFAULT_SOCKET.into());
    let named =
        explicit.is_some() || std::env::var(wasp::serve::SERVER_ENV).is_ok_and(|v| !v.is_empty());
    let Some(to) = client::locate(explicit, &default_sock).map_err(anyhow::Error::msg)? else {
        tracing::info!(
            "no wasp daemon at {}: running in process",
            default_sock.display()
        );
        return Ok(None);
    };
    if !named && !implicit_ok {
        tracing::info!("this command names its own dirs, pool or options the API lacks: running in process, not through the daemon at {to}");
        return Ok(None);
    }
    let mut c = Client::new(to.clone());
    if matches!(to, Listen::Tcp(_)) {
        let f = std::env::var_os(TOKEN_FILE_ENV).with_context(|| {
            format!("the daemon at {to} is on TCP: name its bearer token file in {TOKEN_FILE_ENV}")
        })?;
        let t = std::fs::read_to_string(&f).with_context(|| {
            format!(
                "read {TOKEN_FILE_ENV} {}",
                std::path::Path::new(&f).display()
            )
        })?;
        c = c.with_token(t.lines().next().unwrap_or("").trim());
    }
    if c.answers() {
        tracing::info!("using the wasp daemon at {to}");
        Ok(Some(c))
    } else if named {
        bail!("no wasp daemon answers at {to} (named by --server or {}); start `wasp serve`, or drop it to run in process", wasp::serve::SERVER_ENV)
    } else {
        tracing::info!("the wasp daemon socket {to} does not answer: running in process");
        Ok(None)
    }
}

fn ok(c: &Client, r: Response, what: &str) -> anyhow::Result<Response> {
    if r.status / 100 == 2 {
        Ok(r)
    } else {
        let retry = r
            .header("retry-after")
            .map(|s| format!(" (retry after {s} s)"))
            .unwrap_or_default();
        bail!(
            "the wasp daemon at {} refused {what}: {} {}{retry}",
            c.target(),
            r.status,
            r.detail()
        )
    }
}

#[derive(Serialize)]
struct Body<'a> {
    snapshot: &'a str,
    count: usize,
    env: BTreeMap<&'a str, &'a str>,
    secrets: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vmm: Option<&'a str>,
}

/// `POST /v1/clones`; the report as the engine made it.
pub fn spawn(
    c: &Client,
    snapshot: &str,
    count: usize,
    env: &Env,
    ready: Option<String>,
    vmm: Option<&str>,
) -> anyhow::Result<SpawnReport> {
    let mut body = Body {
        snapshot,
        count,
        env: BTreeMap::new(),
        secrets: BTreeMap::new(),
        ready,
        vmm,
    };
    for (k, v) in env.iter() {
        match v {
            Value::Plain(s) => body.env.insert(k, s),
            Value::Secret(s) => body.secrets.insert(k, s.expose()),
        };
    }
    // The body carries secrets: serialized into a buffer that is zeroized.
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    serde_json::to_writer(&mut *buf, &body)?;
    drop(body);
    let r = ok(c, c.request("POST", "/v1/clones", Some(&buf))?, "the spawn")?;
    serde_json::from_slice(&r.body).context("the daemon's spawn report")
}

/// `GET /v1/clones`: the records (with `state`) as JSON values.
pub fn list(c: &Client) -> anyhow::Result<Vec<serde_json::Value>> {
    let r = ok(c, c.get("/v1/clones")?, "the listing")?;
    let v = r.json()?;
    Ok(v["clones"].as_array().cloned().unwrap_or_default())
}

/// `DELETE /v1/clones/{id}`: the reaped clone, or `None` when the daemon
/// has no such clone.
pub fn kill(c: &Client, id: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let r = c.request("DELETE", &format!("/v1/clones/{id}"), None)?;
    if r.status == 404 {
        return Ok(None);
    }
    let r = ok(c, r, "the kill")?;
    Ok(r.json()?["killed"]
        .as_array()
        .and_then(|a| a.first().cloned()))
}

/// Ends the process the same way in-process commands do.
pub fn exit(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

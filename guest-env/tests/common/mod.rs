//! A loopback MMDS V2 server with Firecracker's guest-facing rules, as its
//! `docs/mmds/mmds-user-guide.md` and `src/vmm/src/mmds/` state them:
//!
//! - `PUT /latest/api/token` needs `X-metadata-token-ttl-seconds` (or the
//!   `X-aws-ec2-` spelling) within 1..=21600, else 400; a PUT carrying
//!   `X-Forwarded-For` is refused with 400; PUT elsewhere is 404.
//! - `GET` needs a valid `X-metadata-token` (or `X-aws-ec2-metadata-token`):
//!   none or an unknown one is 401. Other methods are 405.
//! - The path is a JSON pointer (`//` collapsed, one trailing `/` ignored);
//!   nothing there is 404 `Resource not found: PATH.`. An empty store is
//!   JSON `null`, so `/` answers `null` and `/env` answers 404.
//! - `Accept: application/json` gives JSON; otherwise the IMDS plain-text
//!   form: an object's keys one per line (objects with a trailing `/`), a
//!   string raw, anything else 501.
//! - Connections stay open after a response (keep-alive), like Firecracker's.
//!
//! Token expiry is modelled without clocks: [`MmdsServer::invalidate_tokens`]
//! makes every issued token invalid, as a restored clone's new token key
//! (or expiry) does. The store can fill itself after the Nth data GET, so
//! retry tests are driven by request counts, never by time.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde_json::Value;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path as sent.
    pub path: String,
    /// Status answered.
    pub status: u16,
    /// Whether `Accept: application/json` was sent.
    pub json: bool,
}

#[derive(Default)]
struct State {
    store: Value,
    fill_after: Option<(u32, Value)>,
    data_gets: u32,
    tokens: HashSet<String>,
    issued: u64,
    drop_connections: u32,
    ignore_accept: bool,
    refuse_tokens: bool,
    v1: bool,
    seen: Vec<Seen>,
}

/// The server; stops and joins its threads on drop.
pub struct MmdsServer {
    /// Where it listens (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl MmdsServer {
    /// An empty store.
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = l.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let accept = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for c in l.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                {
                    let mut g = lock(&st);
                    if g.drop_connections > 0 {
                        g.drop_connections -= 1;
                        let _ = c.shutdown(Shutdown::Both);
                        continue;
                    }
                }
                let st = Arc::clone(&st);
                let keep = c.try_clone().unwrap();
                conns.push(keep);
                std::thread::spawn(move || serve(c, &st));
            }
            for c in conns {
                let _ = c.shutdown(Shutdown::Both);
            }
        });
        Self {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// A store holding `doc`.
    pub fn with(doc: Value) -> Self {
        let s = Self::start();
        s.put(doc);
        s
    }

    /// `PUT /mmds` on the host side.
    pub fn put(&self, doc: Value) {
        lock(&self.state).store = doc;
    }

    /// Fills the store with `doc` right after the `n`th data GET (an
    /// authorized GET) has been answered.
    pub fn fill_after_gets(&self, n: u32, doc: Value) {
        lock(&self.state).fill_after = Some((n, doc));
    }

    /// Every token issued so far becomes invalid (a clone's new token key,
    /// or expiry).
    pub fn invalidate_tokens(&self) {
        lock(&self.state).tokens.clear();
    }

    /// Closes the next `n` connections without answering.
    pub fn drop_next_connections(&self, n: u32) {
        lock(&self.state).drop_connections = n;
    }

    /// Answers in the IMDS form whatever `Accept` says (a misbehaving server).
    pub fn ignore_accept(&self) {
        lock(&self.state).ignore_accept = true;
    }

    /// Refuses every token, even one just issued.
    pub fn refuse_tokens(&self) {
        lock(&self.state).refuse_tokens = true;
    }

    /// Behaves as MMDS V1: GET without a token, PUT answered 405.
    pub fn v1(&self) {
        lock(&self.state).v1 = true;
    }

    /// Requests answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state).seen.clone()
    }

    /// How many requests of `method` were answered with `status`.
    pub fn count(&self, method: &str, status: u16) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.status == status)
            .count()
    }
}

impl Drop for MmdsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves requests on one connection until the peer closes it.
fn serve(mut c: TcpStream, state: &Mutex<State>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                match c.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
                continue;
            }
            Err(_) => {
                let _ = c.write_all(&response(400, "Bad request.", &[]));
                return;
            }
        };
        let method = req.method.unwrap_or("").to_owned();
        let path = req.path.unwrap_or("").to_owned();
        let hdrs: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_owned(),
                )
            })
            .collect();
        let body_len: usize = header(&hdrs, &["content-length"])
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < n + body_len {
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        buf.drain(..n + body_len);
        let (status, body, extra) = answer(state, &method, &path, &hdrs);
        if c.write_all(&response(status, &body, &extra)).is_err() {
            return;
        }
    }
}

fn header<'a>(h: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| names.contains(&k.as_str()))
        .map(|(_, v)| v.as_str())
}

fn response(status: u16, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Not Implemented",
    };
    let mut s = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: Firecracker API\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

const TTL_HEADERS: [&str; 2] = [
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];
const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];

type Answer = (u16, String, Vec<(&'static str, &'static str)>);

fn answer(state: &Mutex<State>, method: &str, path: &str, h: &[(String, String)]) -> Answer {
    let mut g = lock(state);
    let (status, body, extra) = decide(&mut g, method, path, h);
    let json = header(h, &["accept"]) == Some("application/json");
    g.seen.push(Seen {
        method: method.into(),
        path: path.into(),
        status,
        json,
    });
    (status, body, extra)
}

fn decide(g: &mut State, method: &str, path: &str, h: &[(String, String)]) -> Answer {
    let plain = |s: u16, b: String| (s, b, Vec::new());
    // Header checks come first, for every method (TokenHeaders::try_from).
    let ttl = match header(h, &TTL_HEADERS) {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(t) => Some(t),
            Err(_) => {
                return plain(
                    400,
                    format!("Invalid header. Reason: Invalid value. Key:X-metadata-token-ttl-seconds; Value:{v}"),
                )
            }
        },
    };
    let uri = collapse(path);
    match method {
        "PUT" if g.v1 => (
            405,
            "Not allowed HTTP method.".into(),
            vec![("Allow", "GET")],
        ),
        "PUT" => {
            if header(h, &["x-forwarded-for"]).is_some() {
                return plain(
                    400,
                    "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For".into(),
                );
            }
            if uri != "/latest/api/token" {
                return plain(404, format!("Resource not found: {path}."));
            }
            let Some(ttl) = ttl else {
                return plain(400, "Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to specify the token's lifetime.".into());
            };
            if !(1..=21600).contains(&ttl) {
                return plain(
                    400,
                    format!("Invalid time to live value provided for token: {ttl}. Please provide a value between 1 and 21600."),
                );
            }
            g.issued += 1;
            let token = format!("tok{:016x}", g.issued.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            g.tokens.insert(token.clone());
            (200, token, vec![("Content-Type", "text/plain")])
        }
        "GET" if g.v1 => get_value(g, path, &uri, h),
        "GET" => {
            let Some(token) = header(h, &TOKEN_HEADERS) else {
                return plain(
                    401,
                    "No MMDS token provided. Use `X-metadata-token` header to specify the session token.".into(),
                );
            };
            if g.refuse_tokens || !g.tokens.contains(token) {
                return plain(401, "MMDS token not valid.".into());
            }
            get_value(g, path, &uri, h)
        }
        _ => (
            405,
            "Not allowed HTTP method.".into(),
            vec![("Allow", "GET, PUT")],
        ),
    }
}

/// An authorized GET: the value at the path, in the form `Accept` asks for.
fn get_value(g: &mut State, path: &str, uri: &str, h: &[(String, String)]) -> Answer {
    let plain = |s: u16, b: String| (s, b, Vec::new());
    let json = !g.ignore_accept && header(h, &["accept"]) == Some("application/json");
    let pointer = uri.strip_suffix('/').unwrap_or(uri);
    let out = match g.store.pointer(pointer) {
        None => plain(404, format!("Resource not found: {path}.")),
        Some(v) if json => plain(200, v.to_string()),
        Some(Value::Object(m)) => plain(
            200,
            m.iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Some(Value::String(s)) => plain(200, s.clone()),
        Some(_) => plain(
            501,
            "Cannot retrieve value. The value has an unsupported type.".into(),
        ),
    };
    g.data_gets += 1;
    if let Some((n, _)) = &g.fill_after {
        if g.data_gets >= *n {
            let (_, doc) = g.fill_after.take().unwrap();
            g.store = doc;
        }
    }
    out
}

/// Firecracker's `sanitize_uri`: collapse every `//`.
fn collapse(p: &str) -> String {
    let mut s = p.to_owned();
    while s.contains("//") {
        s = s.replace("//", "/");
    }
    s
}

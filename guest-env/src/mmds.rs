//! Fetching the environment from Firecracker's MMDS V2.
//!
//! Each session starts with `PUT /latest/api/token` (TTL header, no
//! `X-Forwarded-For`), then `GET PATH` with `X-metadata-token`. The token is
//! kept for later attempts, but a token from before a snapshot is invalid in
//! every clone (the token key is not in the snapshot): on 401 the token is
//! fetched afresh once, and a fresh token refused again is an error.
//!
//! An empty store (a clone resumed before its data was injected, or the
//! golden VM itself) answers 404 at `/env`, or `null` for `/` in JSON form;
//! that, and MMDS being unreachable, is retried with a doubling, capped
//! backoff up to a bounded number of attempts.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::env::{check_key, EnvError, GuestEnv};
use crate::http::{roundtrip, HttpError, Response};

/// Where Firecracker's MMDS answers by default.
pub const DEFAULT_ADDR: &str = "169.254.169.254:80";
/// The path of wasp's env object (`{"env": {...}}` in the store).
pub const DEFAULT_PATH: &str = "/env";
/// Firecracker's token TTL bounds, in seconds.
pub const TTL_BOUNDS: std::ops::RangeInclusive<u32> = 1..=21600;
const TOKEN_PATH: &str = "/latest/api/token";
const MAX_TOKEN_LEN: usize = 4096;

/// Which MMDS output form to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Accept: application/json`: one request for the whole object.
    Json,
    /// No `Accept` header (IMDS plain text): list the keys, then one request
    /// per value.
    Imds,
}

/// How to reach MMDS and how long to wait for data.
#[derive(Debug, Clone)]
pub struct Config {
    /// MMDS address.
    pub addr: SocketAddr,
    /// The path of the env object (a JSON pointer as a URL path).
    pub path: String,
    /// Output form.
    pub format: Format,
    /// Token TTL in seconds (1..=21600).
    pub token_ttl: u32,
    /// Attempts before giving up (>= 1).
    pub attempts: u32,
    /// First wait between attempts; doubles each time.
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Bound on connect and on every read and write.
    pub timeout: Duration,
    /// Keys that must be present.
    pub require: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR.parse().expect("default address"),
            path: DEFAULT_PATH.into(),
            format: Format::Json,
            token_ttl: 60,
            attempts: 240,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(250),
            timeout: Duration::from_secs(2),
            require: Vec::new(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// TTL out of Firecracker's bounds.
    #[error("token TTL {0} s is outside Firecracker's bounds of 1..=21600 seconds")]
    Ttl(u32),
    /// Zero attempts.
    #[error("attempts must be at least 1")]
    Attempts,
    /// A path that is not a plain absolute URL path.
    #[error("MMDS path {0:?} must start with '/' and hold only visible ASCII without '?' or '#'")]
    Path(String),
    /// A `--require` key that is not an identifier.
    #[error("required key is invalid")]
    Key(#[source] EnvError),
}

impl Config {
    /// Checks the configuration before any request.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !TTL_BOUNDS.contains(&self.token_ttl) {
            return Err(ConfigError::Ttl(self.token_ttl));
        }
        if self.attempts == 0 {
            return Err(ConfigError::Attempts);
        }
        let p = self.path.as_bytes();
        if p.first() != Some(&b'/')
            || !p
                .iter()
                .all(|c| c.is_ascii_graphic() && *c != b'?' && *c != b'#')
        {
            return Err(ConfigError::Path(self.path.clone()));
        }
        for k in &self.require {
            check_key(k).map_err(ConfigError::Key)?;
        }
        Ok(())
    }

    /// The wait after failed attempt `n` (0-based): `initial * 2^n`, capped.
    pub fn backoff(&self, n: u32) -> Duration {
        self.backoff_initial
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .min(self.backoff_max)
    }
}

/// Why the data is not there yet (worth another attempt).
#[derive(Debug, Error)]
pub enum Pending {
    /// 404 at the path: the store is empty or lacks the env object.
    #[error("the MMDS data store has nothing at {path} yet (404): the host has not injected this VM's environment")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// `null` at the path (JSON form of an empty store at `/`).
    #[error("the MMDS data store is empty (null at {path}): the host has not injected this VM's environment")]
    Null {
        /// The path asked for.
        path: String,
    },
    /// MMDS not reachable (refused, reset, timed out).
    #[error("MMDS is not reachable")]
    Unreachable(#[source] HttpError),
}

/// Errors fetching the environment.
#[derive(Debug, Error)]
pub enum FetchError {
    /// Bad configuration.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The token request was refused.
    #[error("MMDS at {addr} refused PUT {TOKEN_PATH} with {status}: {message}{hint}")]
    TokenRefused {
        /// MMDS address.
        addr: SocketAddr,
        /// Status code.
        status: u16,
        /// MMDS's error message.
        message: String,
        /// What to do.
        hint: &'static str,
    },
    /// The token is not something a header can carry.
    #[error(
        "MMDS at {addr} answered PUT {TOKEN_PATH} with an empty, oversized or non-ASCII token"
    )]
    BadToken {
        /// MMDS address.
        addr: SocketAddr,
    },
    /// A token just issued was refused.
    #[error("MMDS at {addr} refused a freshly issued token for GET {path} with 401: {message}")]
    Unauthorized {
        /// MMDS address.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// MMDS's error message.
        message: String,
    },
    /// Any other unexpected status.
    #[error("MMDS at {addr} answered GET {path} with {status}: {message}")]
    Status {
        /// MMDS address.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// Status code.
        status: u16,
        /// MMDS's error message.
        message: String,
    },
    /// A 200 answer that is not JSON (the parser's message holds no data).
    #[error("MMDS at {addr} answered GET {path} with something that is not JSON")]
    NotJson {
        /// MMDS address.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The data is there but unusable.
    #[error("MMDS at {addr} holds an unusable environment at {path}")]
    Env {
        /// MMDS address.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// Cause.
        #[source]
        source: EnvError,
    },
    /// A malformed HTTP answer.
    #[error("MMDS at {addr} is not speaking HTTP as expected")]
    Http {
        /// MMDS address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: HttpError,
    },
    /// The bound was hit.
    #[error("no environment from MMDS at {addr}{path} after {attempts} attempts (~{waited_ms} ms of backoff); raise --attempts to wait longer")]
    GaveUp {
        /// MMDS address.
        addr: SocketAddr,
        /// The path asked for.
        path: String,
        /// Attempts made.
        attempts: u32,
        /// Total backoff slept.
        waited_ms: u128,
        /// Why the last attempt failed.
        #[source]
        last: Box<Pending>,
    },
}

/// One attempt's failure: retry or stop.
enum Step {
    Pending(Pending),
    Fatal(FetchError),
}

impl From<FetchError> for Step {
    fn from(e: FetchError) -> Self {
        Step::Fatal(e)
    }
}

/// Fetches the environment, waiting with `sleep` between attempts and
/// reporting progress (never values) through `log`.
pub fn fetch(
    cfg: &Config,
    sleep: &mut dyn FnMut(Duration),
    log: &mut dyn FnMut(&str),
) -> Result<GuestEnv, FetchError> {
    cfg.validate()?;
    let mut session = Session {
        cfg,
        host: cfg.addr.ip().to_string(),
        token: None,
    };
    let mut waited = Duration::ZERO;
    let mut attempt = 0;
    loop {
        let pending = match session.attempt() {
            Ok(env) => {
                env.require(&cfg.require)
                    .map_err(|source| FetchError::Env {
                        addr: cfg.addr,
                        path: cfg.path.clone(),
                        source,
                    })?;
                if attempt > 0 {
                    log(&format!(
                        "got {} variables from MMDS after {} attempts",
                        env.len(),
                        attempt + 1
                    ));
                }
                return Ok(env);
            }
            Err(Step::Fatal(e)) => return Err(e),
            Err(Step::Pending(p)) => p,
        };
        attempt += 1;
        if attempt >= cfg.attempts {
            return Err(FetchError::GaveUp {
                addr: cfg.addr,
                path: cfg.path.clone(),
                attempts: attempt,
                waited_ms: waited.as_millis(),
                last: Box::new(pending),
            });
        }
        if attempt == 1 {
            log(&format!(
                "waiting for MMDS at {}{} ({}); up to {} attempts",
                cfg.addr,
                cfg.path,
                chain(&pending),
                cfg.attempts
            ));
        }
        let d = cfg.backoff(attempt - 1);
        waited += d;
        sleep(d);
    }
}

/// `err: cause: cause` on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

struct Session<'a> {
    cfg: &'a Config,
    host: String,
    token: Option<String>,
}

impl Session<'_> {
    fn attempt(&mut self) -> Result<GuestEnv, Step> {
        let path = self.cfg.path.clone();
        match self.cfg.format {
            Format::Json => {
                let r = self.get(&path, true)?;
                let v: serde_json::Value =
                    serde_json::from_slice(&r.body).map_err(|source| FetchError::NotJson {
                        addr: self.cfg.addr,
                        path: path.clone(),
                        source,
                    })?;
                if v.is_null() {
                    return Err(Step::Pending(Pending::Null { path }));
                }
                GuestEnv::from_json(v, &path).map_err(|e| self.env_error(e))
            }
            Format::Imds => {
                let list = self.get(&path, false)?;
                let list = String::from_utf8(list.body).map_err(|_| {
                    self.env_error(EnvError::NotObject {
                        path: path.clone(),
                        kind: "non-UTF-8 listing",
                    })
                })?;
                let mut env = GuestEnv::default();
                for key in list.lines().filter(|l| !l.is_empty()) {
                    if let Some(k) = key.strip_suffix('/') {
                        return Err(self.env_error(EnvError::NotString { key: k.into() }));
                    }
                    check_key(key).map_err(|e| self.env_error(e))?;
                    let kpath = format!("{}/{key}", path.trim_end_matches('/'));
                    let r = self.get(&kpath, false)?;
                    let v = String::from_utf8(r.body)
                        .map_err(|_| self.env_error(EnvError::NotUtf8 { key: key.into() }))?;
                    env.insert(key, v).map_err(|e| self.env_error(e))?;
                }
                Ok(env)
            }
        }
    }

    fn env_error(&self, source: EnvError) -> Step {
        Step::Fatal(FetchError::Env {
            addr: self.cfg.addr,
            path: self.cfg.path.clone(),
            source,
        })
    }

    fn send(&self, request: &[u8]) -> Result<Response, Step> {
        roundtrip(self.cfg.addr, request, self.cfg.timeout).map_err(|e| {
            if e.is_transient() {
                Step::Pending(Pending::Unreachable(e))
            } else {
                Step::Fatal(FetchError::Http {
                    addr: self.cfg.addr,
                    source: e,
                })
            }
        })
    }

    fn new_token(&self) -> Result<String, Step> {
        let req = format!(
            "PUT {TOKEN_PATH} HTTP/1.1\r\nHost: {}\r\nX-metadata-token-ttl-seconds: {}\r\n\r\n",
            self.host, self.cfg.token_ttl
        );
        let r = self.send(req.as_bytes())?;
        if r.status != 200 {
            let hint = match r.status {
                405 => " (an MMDS V1 store answers PUT with 405; wasp configures V2)",
                400 => " (check --token-ttl)",
                _ => "",
            };
            return Err(Step::Fatal(FetchError::TokenRefused {
                addr: self.cfg.addr,
                status: r.status,
                message: r.error_text(),
                hint,
            }));
        }
        let token = String::from_utf8(r.body)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_LEN)
            .filter(|t| t.bytes().all(|c| c.is_ascii_graphic()))
            .ok_or(FetchError::BadToken {
                addr: self.cfg.addr,
            })?;
        Ok(token)
    }

    /// `GET path` with a token: the kept one, or a new one. A kept token
    /// refused with 401 (expired, or issued before a snapshot) is replaced
    /// once; a new token refused is an error.
    fn get(&mut self, path: &str, json: bool) -> Result<Response, Step> {
        loop {
            let (token, fresh) = match self.token.take() {
                Some(t) => (t, false),
                None => (self.new_token()?, true),
            };
            let accept = if json {
                "Accept: application/json\r\n"
            } else {
                ""
            };
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\n{accept}X-metadata-token: {token}\r\n\r\n",
                self.host
            );
            let r = self.send(req.as_bytes())?;
            match r.status {
                200 => {
                    self.token = Some(token);
                    return Ok(r);
                }
                401 if !fresh => continue,
                401 => {
                    return Err(Step::Fatal(FetchError::Unauthorized {
                        addr: self.cfg.addr,
                        path: path.into(),
                        message: r.error_text(),
                    }))
                }
                404 => {
                    self.token = Some(token);
                    return Err(Step::Pending(Pending::NotFound { path: path.into() }));
                }
                status => {
                    return Err(Step::Fatal(FetchError::Status {
                        addr: self.cfg.addr,
                        path: path.into(),
                        status,
                        message: r.error_text(),
                    }))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let cfg = Config::default();
        let ms: Vec<u128> = (0..8).map(|n| cfg.backoff(n).as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 250, 250, 250]);
        assert_eq!(cfg.backoff(u32::MAX), cfg.backoff_max);
    }

    #[test]
    fn config_is_checked_before_any_request() {
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.token_ttl = 0).contains("1..=21600"));
        assert!(bad(|c| c.token_ttl = 21601).contains("21601"));
        assert!(bad(|c| c.attempts = 0).contains("at least 1"));
        for p in ["env", "/a b", "/a?x", "/\n"] {
            let mut c = Config {
                path: p.into(),
                ..Config::default()
            };
            assert!(c.validate().is_err(), "{p:?}");
            c.path = "/".into();
            c.validate().unwrap();
        }
        let mut c = Config::default();
        c.require.push("A-B".into());
        assert!(chain(&c.validate().unwrap_err()).contains("\"A-B\""));
    }
}

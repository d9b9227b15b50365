//! A small blocking HTTP/1.1 client of the daemon's API (one request per
//! connection, `Connection: close`), over its unix socket or TCP: what the
//! CLI uses when a daemon answers, and what the tests drive it with.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::Listen;

/// Largest response read.
const MAX_RESPONSE: u64 = 64 << 20;

/// A client's failure (not an HTTP error status: see [`Response`]).
#[derive(Debug, Error)]
pub enum ClientError {
    /// Cannot connect.
    #[error("cannot connect to the wasp daemon at {0}")]
    Connect(String, #[source] std::io::Error),
    /// The exchange failed.
    #[error("the request to the wasp daemon failed")]
    Io(#[source] std::io::Error),
    /// Not an HTTP response.
    #[error("the wasp daemon's answer is not HTTP: {0}")]
    Bad(String),
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::Bad(format!(
                "status {}, body not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ))
        })
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let n = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
    }

    /// `detail` of an error body, else the body as text.
    pub fn detail(&self) -> String {
        self.json()
            .ok()
            .and_then(|j| j["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// Where the daemon is.
#[derive(Debug, Clone)]
pub struct Client {
    to: Listen,
    token: Option<String>,
    timeout: Option<Duration>,
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl Client {
    /// The daemon on a unix socket.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self {
            to: Listen::Unix(path.into()),
            token: None,
            timeout: None,
        }
    }

    /// The daemon at `to`.
    pub fn new(to: Listen) -> Self {
        Self {
            to,
            token: None,
            timeout: None,
        }
    }

    /// With a bearer token (TCP).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// With a read/write timeout (default: none; a spawn may take long).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Where it connects.
    pub fn target(&self) -> &Listen {
        &self.to
    }

    /// Whether a daemon accepts connections there.
    pub fn answers(&self) -> bool {
        self.get("/healthz").is_ok_and(|r| r.status == 200)
    }

    fn connect(&self) -> Result<Box<dyn Stream>, ClientError> {
        let err = |e| ClientError::Connect(self.to.to_string(), e);
        Ok(match &self.to {
            Listen::Unix(p) => {
                let s = UnixStream::connect(p).map_err(err)?;
                s.set_read_timeout(self.timeout).map_err(err)?;
                s.set_write_timeout(self.timeout).map_err(err)?;
                Box::new(s)
            }
            Listen::Tcp(a) => {
                let s = TcpStream::connect(a).map_err(err)?;
                s.set_read_timeout(self.timeout).map_err(err)?;
                s.set_write_timeout(self.timeout).map_err(err)?;
                Box::new(s)
            }
        })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path, None)
    }

    /// One request; `body` is sent as JSON.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let mut s = self.connect()?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: wasp\r\nConnection: close\r\n");
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        } else if method != "GET" {
            head.push_str("Content-Length: 0\r\n");
        }
        head.push_str("\r\n");
        let mut msg = zeroize::Zeroizing::new(head.into_bytes());
        if let Some(b) = body {
            msg.extend_from_slice(b);
        }
        s.write_all(&msg).map_err(ClientError::Io)?;
        let mut raw = Vec::new();
        s.take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .map_err(ClientError::Io)?;
        parse(&raw)
    }
}

fn parse(raw: &[u8]) -> Result<Response, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(ClientError::Bad("the answer was cut off".into()))
        }
        Err(e) => return Err(ClientError::Bad(e.to_string())),
    };
    let status = r.code.unwrap_or(0);
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let rest = &raw[n..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        match headers.iter().find(|(k, _)| k == "content-length") {
            Some((_, v)) => {
                let len: usize = v
                    .trim()
                    .parse()
                    .map_err(|_| ClientError::Bad(format!("content-length {v:?}")))?;
                rest.get(..len)
                    .ok_or_else(|| ClientError::Bad("the body was cut off".into()))?
                    .to_vec()
            }
            None => rest.to_vec(),
        }
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, ClientError> {
    let bad = || ClientError::Bad("bad chunked body".into());
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_s = std::str::from_utf8(&b[..line_end]).map_err(|_| bad())?;
        let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or_else(bad)?);
        b = b.get(size + 2..).ok_or_else(bad)?;
    }
}

/// The daemon the CLI should use: `explicit` (`--server`), else
/// `$WASP_SERVER`, else the default socket when it exists. `unix:PATH`,
/// `tcp:ADDR` or a bare path.
pub fn locate(explicit: Option<&str>, default_socket: &Path) -> Result<Option<Listen>, String> {
    let named = explicit.map(str::to_owned).or_else(|| {
        std::env::var(super::SERVER_ENV)
            .ok()
            .filter(|v| !v.is_empty())
    });
    match named {
        Some(s) if s.starts_with("unix:") || s.starts_with("tcp:") => s.parse().map(Some),
        Some(s) => {
            let p = PathBuf::from(&s);
            if p.is_absolute() {
                Ok(Some(Listen::Unix(p)))
            } else {
                Err(format!(
                    "server {s:?} is not unix:PATH, tcp:ADDR:PORT or an absolute socket path"
                ))
            }
        }
        None => Ok(default_socket
            .exists()
            .then(|| Listen::Unix(default_socket.to_owned()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited_answers() {
        let r = parse(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nRetry-After: 3\r\n\r\n{}")
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        assert_eq!(r.header("retry-after"), Some("3"));
        let r = parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse(b"HTTP/1.1 200 OK\r\n\r\nrest").unwrap();
        assert_eq!(r.body, b"rest");
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab").is_err());
        assert!(parse(b"garbage").is_err());
    }
}

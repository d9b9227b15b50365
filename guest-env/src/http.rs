//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`: one request
//! per connection, the response read up to its `Content-Length` (MMDS keeps
//! connections open, so reading to EOF would wait for the timeout).
//!
//! Bodies may hold secrets: [`Response`]'s `Debug` shows only their length,
//! and no error here carries body bytes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use thiserror::Error;

/// Largest response accepted (headers and body). Firecracker's default MMDS
/// data store limit is 51 200 bytes; this leaves room for a raised limit.
pub const MAX_RESPONSE: usize = 1024 * 1024;
const MAX_HEADERS: usize = 32;

/// One HTTP response.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body (may hold secrets).
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Response {
    /// The body as text for an error message: at most 200 characters, with
    /// control characters escaped. Only used for non-2xx answers, whose
    /// bodies are MMDS's own error messages, never stored data.
    pub fn error_text(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        let s = s.trim();
        let mut out: String = s.chars().take(200).flat_map(char::escape_default).collect();
        if s.chars().count() > 200 {
            out.push('…');
        }
        out
    }
}

/// Errors talking HTTP.
#[derive(Debug, Error)]
pub enum HttpError {
    /// TCP connect failed (refused, unreachable, timed out).
    #[error("cannot connect to {addr}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed (reset, timeout).
    #[error("I/O with {addr} failed")]
    Io {
        /// The server.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection closed before a whole response arrived.
    #[error("{addr} closed the connection before a complete HTTP response")]
    Truncated {
        /// The server.
        addr: SocketAddr,
    },
    /// Not an HTTP/1.x response.
    #[error("{addr} sent a malformed HTTP response ({reason})")]
    Malformed {
        /// The server.
        addr: SocketAddr,
        /// What is wrong (never body bytes).
        reason: String,
    },
    /// Response over [`MAX_RESPONSE`].
    #[error("{addr} sent a response over {MAX_RESPONSE} bytes")]
    TooLarge {
        /// The server.
        addr: SocketAddr,
    },
}

impl HttpError {
    /// True for failures worth retrying: the server not (yet) reachable or
    /// the connection dropped. A malformed answer will not get better.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HttpError::Connect { .. } | HttpError::Io { .. } | HttpError::Truncated { .. }
        )
    }
}

/// What [`parse_response`] found in the bytes so far.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A complete response.
    Complete(Response),
}

/// Parses a response from `buf`. `eof` says the peer closed the connection,
/// which ends a body without `Content-Length`. Pure: unit-tested and fuzzable.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Parsed, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(e.to_string()),
    };
    let status = r.code.ok_or("no status code")?;
    let mut length = None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("bad Content-Length")?;
            if length.is_some_and(|l| l != v) {
                return Err("conflicting Content-Length headers".into());
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("Transfer-Encoding is not supported".into());
        }
    }
    let rest = &buf[head_len..];
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    let body = match length {
        _ if no_body => &rest[..0],
        Some(n) if rest.len() >= n => &rest[..n],
        Some(_) => return Ok(Parsed::Partial),
        None if eof => rest,
        None => return Ok(Parsed::Partial),
    };
    Ok(Parsed::Complete(Response {
        status,
        body: body.to_vec(),
    }))
}

/// Sends `request` (a whole HTTP/1.1 request) on a new connection and reads
/// one response. `timeout` bounds the connect and every read and write.
pub fn roundtrip(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| HttpError::Connect { addr, source })?;
    let io = |source| HttpError::Io { addr, source };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.set_nodelay(true).map_err(io)?;
    s.write_all(request).map_err(io)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(io)?;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(HttpError::TooLarge { addr });
        }
        match parse_response(&buf, n == 0) {
            Ok(Parsed::Complete(r)) => return Ok(r),
            Ok(Parsed::Partial) if n == 0 => return Err(HttpError::Truncated { addr }),
            Ok(Parsed::Partial) => {}
            Err(reason) => return Err(HttpError::Malformed { addr, reason }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8], eof: bool) -> Response {
        match parse_response(buf, eof).unwrap() {
            Parsed::Complete(r) => r,
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn body_ends_at_content_length_not_eof() {
        let r = complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", false);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        // Bytes past the length are not part of this response.
        let r = complete(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nab", false);
        assert_eq!(r.body, b"a");
    }

    #[test]
    fn partial_until_whole() {
        for buf in [
            &b"HTTP/1.1 200 OK\r\nContent-Len"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\n\r\nabc",
        ] {
            assert!(matches!(parse_response(buf, false), Ok(Parsed::Partial)));
        }
        // Without a length, EOF ends the body.
        assert_eq!(complete(b"HTTP/1.1 200 OK\r\n\r\nabc", true).body, b"abc");
        assert!(complete(b"HTTP/1.1 204 No Content\r\n\r\n", false)
            .body
            .is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        for buf in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n",
        ] {
            assert!(parse_response(buf, false).is_err(), "{buf:?}");
        }
    }

    #[test]
    fn debug_and_error_text_hide_nothing_they_should_not() {
        let r = Response {
            status: 200,
            body: b"canary-secret".to_vec(),
        };
        assert!(!format!("{r:?}").contains("canary"));
        let e = Response {
            status: 400,
            body: format!("bad\n{}", "x".repeat(300)).into_bytes(),
        };
        let t = e.error_text();
        assert!(t.starts_with("bad\\n") && t.ends_with('…'), "{t}");
    }
}

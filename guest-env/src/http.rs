//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`: one request
//! per connection, the response read up to its `Content-Length` (MMDS keeps
//! connections open, so reading to EOF would wait for the timeout). Framing
//! is the shared [`wasp_http1`] parser.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use thiserror::Error;

pub use wasp_http1::{parse_response, ParseError, Response, MAX_BODY, MAX_HEAD};

/// Errors talking HTTP over TCP.
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
    /// Not an HTTP/1.x response we can frame.
    #[error("{addr} sent a response that cannot be read")]
    Malformed {
        /// The server.
        addr: SocketAddr,
        /// What is wrong (never body bytes).
        #[source]
        source: ParseError,
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
        match parse_response(&buf) {
            Ok(Some((r, _))) => return Ok(r),
            Ok(None) if n == 0 => return Err(HttpError::Truncated { addr }),
            Ok(None) => {}
            Err(source) => return Err(HttpError::Malformed { addr, source }),
        }
    }
}

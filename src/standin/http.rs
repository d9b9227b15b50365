//! The stand-in's HTTP/1.1 request parser and response encoder.
//!
//! [`parse_request`] is a pure function over bytes (fuzzable): it returns
//! `Ok(None)` until a whole request (head and `Content-Length` body) is in
//! the buffer, and then how many bytes it used.

use thiserror::Error;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted: Firecracker's default payload limit (it
/// is also the default MMDS data store limit).
pub const MAX_BODY: usize = 51_200;

/// One parsed request.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// Method token as sent.
    pub method: String,
    /// Request target (path and optional query).
    pub path: String,
    /// Body (may hold MMDS secrets: not shown by `Debug`).
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Malformed request bytes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// httparse rejected the head.
    #[error("malformed HTTP request head: {0}")]
    Head(String),
    /// Head larger than [`MAX_HEAD`].
    #[error("HTTP request head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// Content-Length not a number.
    #[error("invalid Content-Length")]
    ContentLength,
    /// Body over [`MAX_BODY`].
    #[error("request body of {0} bytes is over the {MAX_BODY}-byte limit")]
    BodyTooLarge(usize),
    /// Chunked bodies are not supported (Firecracker refuses them too).
    #[error("Transfer-Encoding is not supported")]
    TransferEncoding,
}

/// Parses one request from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(RequestError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(e) => return Err(RequestError::Head(e.to_string())),
    };
    let mut len = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(RequestError::ContentLength)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::TransferEncoding);
        }
    }
    if len > MAX_BODY {
        return Err(RequestError::BodyTooLarge(len));
    }
    if buf.len() < head_len + len {
        return Ok(None);
    }
    let r = Request {
        method: req.method.unwrap_or_default().to_owned(),
        path: req.path.unwrap_or_default().to_owned(),
        body: buf[head_len..head_len + len].to_vec(),
    };
    Ok(Some((r, head_len + len)))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// Encodes a response as Firecracker's server does: `Server:` header, JSON
/// body with `Content-Length`, no body on 204.
pub fn encode_response(status: u16, body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: wasp-standin (stand-in VMM, not Firecracker)\r\n",
        reason(status)
    )
    .into_bytes();
    match body {
        Some(b) => {
            out.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(b"\r\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_and_partial_requests() {
        let two = b"PUT /vm HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\n\r\n";
        let (r, n) = parse_request(two).unwrap().unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), &r.body[..]),
            ("PUT", "/vm", &b"{}"[..])
        );
        let (r2, n2) = parse_request(&two[n..]).unwrap().unwrap();
        assert_eq!(
            (r2.method.as_str(), r2.body.len(), n + n2),
            ("GET", 0, two.len())
        );
        for cut in 0..n {
            assert_eq!(parse_request(&two[..cut]).unwrap(), None, "cut {cut}");
        }
    }

    #[test]
    fn rejects_bad_requests() {
        assert!(matches!(
            parse_request(b"\x00\x01 x\r\n\r\n"),
            Err(RequestError::Head(_))
        ));
        assert_eq!(
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(RequestError::ContentLength)
        );
        assert_eq!(
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 51201\r\n\r\n"),
            Err(RequestError::BodyTooLarge(51_201))
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse_request(&big), Err(RequestError::HeadTooLarge));
    }

    #[test]
    fn responses_round_trip_through_the_client_parser() {
        let b = encode_response(400, Some(br#"{"fault_message":"x"}"#));
        let (r, n) = crate::vmm::api::parse_response(&b).unwrap().unwrap();
        assert_eq!((r.status, n), (400, b.len()));
        let b = encode_response(204, None);
        let (r, _) = crate::vmm::api::parse_response(&b).unwrap().unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    /// Fuzz-style smoke test (a cargo-fuzz target can reuse the same pure
    /// functions): mutated requests and responses never panic, and a
    /// reported length never exceeds the input.
    #[test]
    fn parsers_survive_mutated_input() {
        let seeds: [&[u8]; 3] = [
            b"PUT /snapshot/load HTTP/1.1\r\nHost: localhost\r\nContent-Length: 17\r\n\r\n{\"resume_vm\":true}",
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 21\r\n\r\n{\"fault_message\":\"x\"}",
            b"GET / HTTP/1.1\r\n\r\n",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let seed = seeds[(next() % 3) as usize];
            let mut b = seed.to_vec();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % b.len();
                match next() % 3 {
                    0 => b[i] = next() as u8,
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, next() as u8),
                }
            }
            let cut = (next() as usize) % (b.len() + 1);
            if let Ok(Some((_, n))) = parse_request(&b[..cut]) {
                assert!(n <= cut);
            }
            if let Ok(Some((_, n))) = crate::vmm::api::parse_response(&b[..cut]) {
                assert!(n <= cut);
            }
        }
    }
}

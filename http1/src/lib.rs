//! HTTP/1.1 response framing shared by wasp's Firecracker API client
//! (`wasp::vmm_api`) and the guest binary (`wasp-guest-env`).
//!
//! [`parse_response`] is a pure function over bytes (fuzzed through
//! `wasp::vmm_api`). Bodies may hold secrets: [`Response`]'s `Debug` shows
//! only their length, and no error here carries body bytes.

use thiserror::Error;

/// Largest response head we accept.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest response body we accept (MMDS documents are capped well below).
pub const MAX_BODY: usize = 1 << 20;

/// A parsed HTTP response.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes (may hold MMDS secrets: not shown by `Debug`).
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

/// Malformed response bytes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// httparse rejected the head.
    #[error("malformed HTTP response head: {0}")]
    Head(String),
    /// Head larger than [`MAX_HEAD`].
    #[error("HTTP response head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// Content-Length missing where a body is expected, or not a number.
    #[error("HTTP response has a missing or invalid Content-Length")]
    ContentLength,
    /// Body larger than [`MAX_BODY`].
    #[error("HTTP response body of {0} bytes is over the {MAX_BODY}-byte limit")]
    BodyTooLarge(usize),
    /// Transfer-Encoding (chunked) is not used by Firecracker.
    #[error("HTTP response uses Transfer-Encoding, which Firecracker never sends")]
    TransferEncoding,
}

/// Parses one response from the start of `buf`. `Ok(None)` means "need more
/// bytes"; `Ok(Some((response, consumed)))` hands back how many bytes it
/// used, so pipelined bytes after it stay in the caller's buffer.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(ParseError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(e) => return Err(ParseError::Head(e.to_string())),
    };
    let status = resp
        .code
        .ok_or_else(|| ParseError::Head("no status".into()))?;
    let mut content_length = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or(ParseError::ContentLength)?;
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::TransferEncoding);
        }
    }
    let len = match content_length {
        Some(n) => n,
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => return Err(ParseError::ContentLength),
    };
    if len > MAX_BODY {
        return Err(ParseError::BodyTooLarge(len));
    }
    if buf.len() < head_len + len {
        return Ok(None);
    }
    let body = buf[head_len..head_len + len].to_vec();
    Ok(Some((Response { status, body }, head_len + len)))
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! A fake VMM API server for driver tests and benches: reads HTTP requests
//! the way Firecracker's API does (head + Content-Length body) and answers
//! like a healthy Firecracker.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;

/// Reads one HTTP request (head + Content-Length body); None on EOF.
pub fn read_request(r: &mut BufReader<UnixStream>) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((line.trim_end().to_owned(), body))
}

/// A healthy Firecracker's answer to `line`: `GET /` reports Running,
/// everything else is 204.
pub fn good_response(line: &str) -> String {
    if line.starts_with("GET / ") {
        let b = r#"{"id":"x","state":"Running","vmm_version":"fake"}"#;
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len())
    } else {
        "HTTP/1.1 204 No Content\r\n\r\n".to_owned()
    }
}

//! The stand-in's server: one thread, a blocking accept loop, one
//! connection served at a time with keep-alive (wasp keeps one connection
//! per VMM).

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use thiserror::Error;

use super::api::{After, Host, Reply, Vmm};
use super::host::{log_line, RealHost};
use super::http::{encode_response, parse_request};
use super::Faults;

/// Server options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The API socket path.
    pub api_sock: PathBuf,
    /// Instance id (`GET /` `id`).
    pub id: String,
    /// Injected faults.
    pub faults: Faults,
}

/// Errors starting the server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// bind() failed.
    #[error(
        "stand-in: cannot listen on API socket {path}; remove a stale socket or pick another path"
    )]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Blocks this thread forever (the `no-socket` and `hang-on-resume` faults).
fn hang() -> ! {
    loop {
        std::thread::park();
    }
}

/// Runs the server; returns the process exit code when it should exit.
pub fn run(opts: Options) -> Result<i32, ServerError> {
    if opts.faults.no_socket {
        log_line(&opts.id, "fault injection: never creating the API socket");
        hang();
    }
    let listener = UnixListener::bind(&opts.api_sock).map_err(|source| ServerError::Bind {
        path: opts.api_sock.clone(),
        source,
    })?;
    log_line(
        &opts.id,
        &format!(
            "listening on API socket {} ({})",
            opts.api_sock.display(),
            super::VERSION_LINE
        ),
    );
    let mut vmm = Vmm::new(RealHost::new(&opts.id), &opts.id, opts.faults.clone());
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log_line(&opts.id, &format!("accept failed: {e}"));
                continue;
            }
        };
        if let Some(code) = serve_connection(&mut vmm, stream, &opts.id) {
            return Ok(code);
        }
    }
}

/// Serves one connection until it closes. Returns `Some(code)` when the
/// process must exit.
pub fn serve_connection<H: Host>(vmm: &mut Vmm<H>, mut s: UnixStream, id: &str) -> Option<i32> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        // Answer every complete request already buffered.
        loop {
            match parse_request(&buf) {
                Ok(Some((req, used))) => {
                    buf.drain(..used);
                    // Never log bodies: MMDS carries secrets.
                    log_line(id, &format!("{} {}", req.method, req.path));
                    let reply = vmm.handle(&req);
                    log_line(
                        id,
                        &format!("{} {} -> {}", req.method, req.path, reply.status),
                    );
                    match reply.after {
                        After::ExitSilently(code) => return Some(code),
                        After::Hang => hang(),
                        _ => {}
                    }
                    let wrote = send(&mut s, &reply);
                    match reply.after {
                        After::Exit(code) => {
                            log_line(id, &format!("exiting with code {code} after a failed load, as Firecracker does"));
                            return Some(code);
                        }
                        After::Close => return None,
                        _ => {}
                    }
                    if wrote.is_err() {
                        return None;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = send(&mut s, &Reply::fault(format!("{e}")));
                    return None;
                }
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn send(s: &mut UnixStream, r: &Reply) -> io::Result<()> {
    s.write_all(&encode_response(r.status, r.body.as_deref()))
}

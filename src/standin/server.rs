//! The stand-in's server: one thread, `poll(2)` over the listening socket
//! and all client connections (keep-alive), requests answered in order.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use thiserror::Error;

use super::api::{After, Host, Reply, Vmm};
use super::host::{log_line, RealHost};
use super::http::{encode_response, parse_request, RequestError, MAX_BODY};
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
    let mut conns: Vec<Conn> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // One thread, poll(2) over the listener and every open connection,
        // so an idle keep-alive client never blocks another.
        let ready: Vec<bool> = {
            let mut fds = Vec::with_capacity(conns.len() + 1);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            fds.extend(
                conns
                    .iter()
                    .map(|c| PollFd::new(c.s.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log_line(&opts.id, &format!("poll failed: {e}"));
                    continue;
                }
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut keep = Vec::with_capacity(conns.len() + 1);
        for (conn, r) in conns.drain(..).zip(&ready[1..]) {
            if !r {
                keep.push(conn);
                continue;
            }
            let mut conn = conn;
            match conn.s.read(&mut chunk) {
                Ok(0) | Err(_) => continue,
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            }
            match serve_buffered(&mut vmm, &mut conn, &opts.id) {
                ConnState::Open => keep.push(conn),
                ConnState::Closed => {}
                ConnState::Exit(code) => return Ok(code),
            }
        }
        conns = keep;
        if ready[0] {
            match listener.accept() {
                Ok((s, _)) => conns.push(Conn {
                    s,
                    buf: Vec::with_capacity(4096),
                }),
                Err(e) => log_line(&opts.id, &format!("accept failed: {e}")),
            }
        }
    }
}

/// One client connection and its unparsed bytes.
pub struct Conn {
    /// The stream.
    pub s: UnixStream,
    /// Bytes read but not yet parsed.
    pub buf: Vec<u8>,
}

/// What a connection does next.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Keep it.
    Open,
    /// Drop it.
    Closed,
    /// Exit the process with this code.
    Exit(i32),
}

/// Answers every complete request buffered on `conn`.
pub fn serve_buffered<H: Host>(vmm: &mut Vmm<H>, conn: &mut Conn, id: &str) -> ConnState {
    loop {
        match parse_request(&conn.buf) {
            Ok(Some((req, used))) => {
                conn.buf.drain(..used);
                // Never log bodies: MMDS carries secrets.
                log_line(id, &format!("{} {}", req.method, req.path));
                let reply = vmm.handle(&req);
                log_line(
                    id,
                    &format!("{} {} -> {}", req.method, req.path, reply.status),
                );
                match reply.after {
                    After::ExitSilently(code) => return ConnState::Exit(code),
                    After::Hang => hang(),
                    _ => {}
                }
                let wrote = send(&mut conn.s, &reply);
                match reply.after {
                    After::Exit(code) => {
                        log_line(
                            id,
                            &format!(
                                "exiting with code {code} after a failed load, as Firecracker does"
                            ),
                        );
                        return ConnState::Exit(code);
                    }
                    After::Close => return ConnState::Closed,
                    _ => {}
                }
                if wrote.is_err() {
                    return ConnState::Closed;
                }
            }
            Ok(None) => return ConnState::Open,
            Err(e) => {
                // Firecracker's HTTP layer answers these without the
                // fault_message envelope and drops the connection.
                let msg = match e {
                    RequestError::BodyTooLarge(n) => format!(
                        "Request payload with size {n} is larger than the limit of {MAX_BODY} allowed by server."
                    ),
                    other => other.to_string(),
                };
                let body = format!(
                    "{{ \"error\": \"{msg}\nAll previous unanswered requests will be dropped.\" }}"
                );
                let reply = Reply {
                    status: 400,
                    body: Some(body.into_bytes()),
                    after: After::Close,
                };
                log_line(id, &format!("bad request: {msg}"));
                let _ = send(&mut conn.s, &reply);
                return ConnState::Closed;
            }
        }
    }
}

fn send(s: &mut UnixStream, r: &Reply) -> io::Result<()> {
    s.write_all(&encode_response(r.status, r.body.as_deref()))
}

//! `wasp serve`: the per-host spawner service. An HTTP/JSON API (axum on
//! tokio) over the long-lived [`crate::engine::Engine`], with Prometheus
//! metrics, a bearer token on TCP, and an orderly life: bind, open the
//! engine (adopting the clones a previous daemon left), tell systemd
//! `READY=1`, serve, and on SIGTERM stop accepting, finish the requests in
//! flight and shut the engine down (clones keep running unless asked).
//!
//! ```text
//!  HTTP clients ──► tokio runtime (1-2 workers): axum router, auth, log,
//!                   metrics, body checks; never blocks a worker
//!                        │ spawn_blocking: Backend calls
//!                        ▼
//!                   Backend ── EngineBackend ──► Engine::spawn ─► Ticket::wait
//!                                               (admission workers, the
//!                                                io_uring restore driver
//!                                                thread, outcome, reaper)
//! ```
//!
//! The restore hot path stays on the engine's own driver thread: a handler
//! only validates, submits and waits for the request's ticket on tokio's
//! blocking pool.
//!
//! - `api`: request bodies and their checks (unknown fields refused,
//!   secrets zeroized and never quoted);
//! - `auth`: the TCP listener's token file and constant-time check;
//! - `client`: a small blocking client of the API (the CLI, the tests);
//! - `backend`: the [`Backend`] seam and [`EngineBackend`];
//! - `bench`: `wasp bench serve`, a running daemon's latency from a
//!   client's side;
//! - `error`: [`ApiError`], the `{error, detail}` body;
//! - `fake`: [`FakeBackend`], a recording fake for tests without root;
//! - `metrics`: the Prometheus registry;
//! - `routes`: [`ROUTES`] (the one route table), handlers and layers;
//! - this file: listeners and the daemon's life ([`Server`]).
//!
//! May use: `config`, `ops`, `bench` (its plots), `engine` and everything
//! below them. Not the CLI.

pub mod api;
pub mod auth;
pub mod backend;
pub mod bench;
pub mod client;
pub mod error;
pub mod fake;
pub mod metrics;
pub mod routes;

pub use api::SpawnSpec;
pub use auth::Token;
pub use backend::{Backend, BackendError, EngineBackend, EngineBackendOptions};
pub use error::ApiError;
pub use fake::FakeBackend;
pub use metrics::Metrics;
pub use routes::{router, App, Limits, Route, ROUTES};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

pub use crate::config::{Listen, DEFAULT_BODY_LIMIT, DEFAULT_MAX_COUNT, DEFAULT_SOCKET};

/// The variable naming a daemon for the CLI (`unix:PATH` or a path).
pub const SERVER_ENV: &str = "WASP_SERVER";

/// How the daemon serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The API listeners.
    pub listen: Vec<Listen>,
    /// The bearer token every TCP listener requires.
    pub token: Option<Arc<Token>>,
    /// A separate metrics-only listener.
    pub metrics: Option<SocketAddr>,
    /// The unix sockets' group (gid).
    pub socket_gid: Option<u32>,
    /// Request limits.
    pub limits: Limits,
    /// Kill the clones at exit (default: they keep running).
    pub kill_on_exit: bool,
    /// tokio worker threads (1 or 2).
    pub workers: usize,
}

/// Errors of the daemon's life.
#[derive(Debug, Error)]
pub enum ServeError {
    /// TCP without a token.
    #[error("--listen {0} needs --token-file FILE (a root-owned mode-0600 file holding the bearer token): TCP is never served without one")]
    TcpWithoutToken(Listen),
    /// A listener could not be bound.
    #[error("cannot listen on {what}")]
    Bind {
        /// The listener.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon answers on the socket.
    #[error("another wasp serve already answers on {0}; stop it first, or listen elsewhere")]
    InUse(PathBuf),
    /// A non-socket file is where the socket goes.
    #[error("{0} exists and is not a socket; remove it or listen elsewhere")]
    NotASocket(PathBuf),
    /// The runtime could not start.
    #[error("cannot start the HTTP runtime")]
    Runtime(#[source] std::io::Error),
    /// The backend (engine) could not be opened.
    #[error("cannot open the engine: {0}")]
    Backend(String),
}

/// What the daemon did at its end.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServeReport {
    /// Clones killed (`--kill-on-exit`).
    pub killed: usize,
    /// Clones left running.
    pub left_running: usize,
}

enum Bound {
    Unix(tokio::net::UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener, SocketAddr),
    Metrics(tokio::net::TcpListener, SocketAddr),
}

/// A daemon with its listeners bound ([`Server::bind`]), not serving yet.
pub struct Server {
    rt: tokio::runtime::Runtime,
    opts: ServeOptions,
    bound: Vec<Bound>,
    app: Arc<App>,
    on_ready: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.opts.listen)
            .finish_non_exhaustive()
    }
}

/// When the daemon stops.
pub enum Stop {
    /// SIGTERM or SIGINT.
    Signals,
    /// When this receiver fires (or its sender is dropped).
    Channel(tokio::sync::oneshot::Receiver<()>),
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Signals => "Signals",
            Stop::Channel(_) => "Channel",
        })
    }
}

/// Opens the backend (the engine: adoption, warm pool) once the listeners
/// are bound.
pub type OpenBackend = Box<dyn FnOnce() -> Result<Arc<dyn Backend>, String> + Send>;

fn bind_unix(path: &Path, gid: Option<u32>) -> Result<tokio::net::UnixListener, ServeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let bind_err = |source| ServeError::Bind {
        what: format!("unix:{}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse(path.to_owned()));
            }
            // A dead daemon's socket.
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let l = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    if let Some(g) = gid {
        std::os::unix::fs::chown(path, None, Some(g)).map_err(bind_err)?;
    }
    Ok(l)
}

impl Server {
    /// Starts the runtime and binds every listener: a unix socket (mode
    /// 0660, group `socket_gid`), TCP only with a token, the metrics
    /// listener. Nothing is served yet.
    pub fn bind(opts: ServeOptions) -> Result<Self, ServeError> {
        for l in &opts.listen {
            if matches!(l, Listen::Tcp(_)) && opts.token.is_none() {
                return Err(ServeError::TcpWithoutToken(l.clone()));
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.workers.clamp(1, 2))
            .max_blocking_threads(512)
            .thread_name("wasp-http")
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)?;
        let mut bound = Vec::new();
        {
            let _g = rt.enter();
            for l in &opts.listen {
                match l {
                    Listen::Unix(p) => {
                        bound.push(Bound::Unix(bind_unix(p, opts.socket_gid)?, p.clone()))
                    }
                    Listen::Tcp(a) => {
                        let t = std::net::TcpListener::bind(a)
                            .and_then(|t| {
                                t.set_nonblocking(true)?;
                                tokio::net::TcpListener::from_std(t)
                            })
                            .map_err(|source| ServeError::Bind {
                                what: l.to_string(),
                                source,
                            })?;
                        let a = t.local_addr().unwrap_or(*a);
                        bound.push(Bound::Tcp(t, a));
                    }
                }
            }
            if let Some(a) = opts.metrics {
                let t = std::net::TcpListener::bind(a)
                    .and_then(|t| {
                        t.set_nonblocking(true)?;
                        tokio::net::TcpListener::from_std(t)
                    })
                    .map_err(|source| ServeError::Bind {
                        what: format!("metrics tcp:{a}"),
                        source,
                    })?;
                let a = t.local_addr().unwrap_or(a);
                bound.push(Bound::Metrics(t, a));
            }
        }
        let app = App::new(opts.limits, Arc::new(Metrics::new()));
        Ok(Self {
            rt,
            opts,
            bound,
            app,
            on_ready: None,
        })
    }

    /// Calls `f` once the daemon is ready (the backend is open and every
    /// route answers), right after systemd's `READY=1`.
    pub fn on_ready(mut self, f: Box<dyn FnOnce() + Send>) -> Self {
        self.on_ready = Some(f);
        self
    }

    /// The bound TCP addresses (API and metrics), e.g. for port 0.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter_map(|b| match b {
                Bound::Tcp(_, a) | Bound::Metrics(_, a) => Some(*a),
                Bound::Unix(..) => None,
            })
            .collect()
    }

    /// The app (metrics, backend) the routers share.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `stop`: opens the backend (answering `/healthz` and a
    /// not-ready `/readyz` meanwhile), sends systemd `READY=1`, and at the
    /// stop stops accepting, finishes the requests in flight, shuts the
    /// backend down and removes the unix sockets.
    pub fn run(self, open: OpenBackend, stop: Stop) -> Result<ServeReport, ServeError> {
        let Server {
            rt,
            opts,
            bound,
            app,
            on_ready,
        } = self;
        let r = rt.block_on(async move {
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut tasks = Vec::new();
            let mut sockets = Vec::new();
            for b in bound {
                let mut rx = stop_rx.clone();
                let graceful = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                match b {
                    Bound::Unix(l, p) => {
                        tracing::info!("listening on unix:{}", p.display());
                        sockets.push(p);
                        let r = router(app.clone(), None);
                        tasks.push(tokio::spawn(async move {
                            axum::serve(l, r).with_graceful_shutdown(graceful).await
                        }));
                    }
                    Bound::Tcp(l, a) => {
                        tracing::info!("listening on tcp:{a} (bearer token required)");
                        let r = router(app.clone(), opts.token.clone());
                        tasks.push(tokio::spawn(async move {
                            axum::serve(l, r).with_graceful_shutdown(graceful).await
                        }));
                    }
                    Bound::Metrics(l, a) => {
                        tracing::info!("metrics on tcp:{a}");
                        let r = routes::metrics_router(app.clone());
                        tasks.push(tokio::spawn(async move {
                            axum::serve(l, r).with_graceful_shutdown(graceful).await
                        }));
                    }
                }
            }
            let stopped = async move {
                match stop {
                    Stop::Signals => {
                        use tokio::signal::unix::{signal, SignalKind};
                        match (
                            signal(SignalKind::terminate()),
                            signal(SignalKind::interrupt()),
                        ) {
                            (Ok(mut t), Ok(mut i)) => {
                                tokio::select! {
                                    _ = t.recv() => tracing::info!("SIGTERM: stopping"),
                                    _ = i.recv() => tracing::info!("SIGINT: stopping"),
                                }
                            }
                            _ => {
                                tracing::error!("cannot install the SIGTERM handler; stopping");
                            }
                        }
                    }
                    Stop::Channel(rx) => {
                        let _ = rx.await;
                    }
                }
            };
            tokio::pin!(stopped);
            let opened = tokio::task::spawn_blocking(open);
            tokio::pin!(opened);
            let backend = tokio::select! {
                r = &mut opened => Some(r),
                _ = &mut stopped => None,
            };
            let backend = match backend {
                // Stopped while opening: wait for the open, then shut down.
                None => match opened.await {
                    Ok(Ok(b)) => {
                        app.set_backend(b);
                        None
                    }
                    Ok(Err(e)) => Some(Err(ServeError::Backend(e))),
                    Err(e) => Some(Err(ServeError::Backend(e.to_string()))),
                },
                Some(Ok(Ok(b))) => {
                    app.set_backend(b.clone());
                    if let Some(rx) = b.exits() {
                        let m = app.metrics.clone();
                        let _ = std::thread::Builder::new().name("wasp-exits".into()).spawn(
                            move || {
                                for r in rx {
                                    tracing::info!(clone = %r.id, cause = ?r.cause, "clone reaped");
                                    m.observe_exit(&r);
                                }
                            },
                        );
                    }
                    match crate::sys::notify::notify("READY=1") {
                        Ok(true) => tracing::info!("told systemd READY=1"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!("cannot notify systemd: {e}"),
                    }
                    tracing::info!("ready");
                    if let Some(f) = on_ready {
                        f();
                    }
                    stopped.await;
                    None
                }
                Some(Ok(Err(e))) => Some(Err(ServeError::Backend(e))),
                Some(Err(e)) => Some(Err(ServeError::Backend(e.to_string()))),
            };
            let _ = crate::sys::notify::notify("STOPPING=1");
            // Stop accepting; each server finishes its requests in flight.
            let _ = stop_tx.send(true);
            for t in tasks {
                match t.await {
                    Ok(Err(e)) => tracing::warn!("a listener ended with: {e}"),
                    Err(e) => tracing::warn!("a listener task failed: {e}"),
                    Ok(Ok(())) => {}
                }
            }
            for p in &sockets {
                let _ = std::fs::remove_file(p);
            }
            if let Some(err) = backend {
                return err;
            }
            let mut rep = ServeReport::default();
            if let Some(b) = app.backend().cloned() {
                let kill = opts.kill_on_exit;
                let (killed, left) = tokio::task::spawn_blocking(move || b.shutdown(kill))
                    .await
                    .unwrap_or((0, 0));
                rep.killed = killed;
                rep.left_running = left;
            }
            Ok(rep)
        });
        r
    }
}

#[cfg(test)]
mod tests;

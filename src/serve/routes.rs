//! The route table (one list: the router is built from it and
//! `docs/api/openapi.yaml` is checked against it), the handlers, and the
//! layers every request goes through: request log and metrics, the body
//! limit, and on TCP the bearer token.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::Serialize;
use zeroize::Zeroize;

use super::api::{self, PatchBody, PoolBody, SnapshotBody, SpawnBody};
use super::auth::Token;
use super::backend::{Backend, BackendError};
use super::error::ApiError;
use super::metrics::Metrics;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `POST /v1/clones`.
    CreateClones,
    /// `GET /v1/clones`.
    ListClones,
    /// `DELETE /v1/clones?label=k=v`.
    DeleteClones,
    /// `GET /v1/clones/{id}`.
    GetClone,
    /// `DELETE /v1/clones/{id}`.
    DeleteClone,
    /// `PATCH /v1/clones/{id}`.
    PatchClone,
    /// `POST /v1/clones/{id}/pause`.
    PauseClone,
    /// `POST /v1/clones/{id}/resume`.
    ResumeClone,
    /// `GET /v1/snapshots`.
    ListSnapshots,
    /// `POST /v1/snapshots`.
    AddSnapshot,
    /// `GET /v1/pools`.
    ListPools,
    /// `PUT /v1/pools/{name}`.
    PutPool,
    /// `GET /v1/capacity`.
    Capacity,
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /metrics`.
    Metrics,
}

/// One route: method, path template (`{param}`), what it does.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template, as in the OpenAPI document.
    pub path: &'static str,
    /// The handler.
    pub op: Op,
}

const fn r(method: &'static str, path: &'static str, op: Op) -> Route {
    Route { method, path, op }
}

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    r("POST", "/v1/clones", Op::CreateClones),
    r("GET", "/v1/clones", Op::ListClones),
    r("DELETE", "/v1/clones", Op::DeleteClones),
    r("GET", "/v1/clones/{id}", Op::GetClone),
    r("DELETE", "/v1/clones/{id}", Op::DeleteClone),
    r("PATCH", "/v1/clones/{id}", Op::PatchClone),
    r("POST", "/v1/clones/{id}/pause", Op::PauseClone),
    r("POST", "/v1/clones/{id}/resume", Op::ResumeClone),
    r("GET", "/v1/snapshots", Op::ListSnapshots),
    r("POST", "/v1/snapshots", Op::AddSnapshot),
    r("GET", "/v1/pools", Op::ListPools),
    r("PUT", "/v1/pools/{name}", Op::PutPool),
    r("GET", "/v1/capacity", Op::Capacity),
    r("GET", "/healthz", Op::Healthz),
    r("GET", "/readyz", Op::Readyz),
    r("GET", "/metrics", Op::Metrics),
];

/// The limits a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest `count`.
    pub max_count: usize,
    /// Largest body, bytes.
    pub body_limit: usize,
}

/// What every handler shares.
pub struct App {
    backend: OnceLock<Arc<dyn Backend>>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    limits: Limits,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("ready", &self.backend.get().is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

impl App {
    /// An app with no backend yet: until [`App::set_backend`], every route
    /// but `/healthz`, `/readyz` and `/metrics` answers 503.
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            backend: OnceLock::new(),
            metrics,
            limits,
        })
    }

    /// Sets the backend once (the engine is open and has adopted).
    pub fn set_backend(&self, b: Arc<dyn Backend>) {
        let _ = self.backend.set(b);
    }

    /// The backend, once set.
    pub fn backend(&self) -> Option<&Arc<dyn Backend>> {
        self.backend.get()
    }

    fn need(&self) -> Result<Arc<dyn Backend>, ApiError> {
        self.backend.get().cloned().ok_or_else(|| {
            ApiError::unavailable(
                "the daemon is starting (adopting clones, warming the pool); GET /readyz says when it is ready",
                1,
            )
        })
    }
}

/// Clone ids a response concerns, for the request log line.
#[derive(Debug, Clone, Default)]
pub struct CloneIds(pub Vec<String>);

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotFound(d) => ApiError::not_found(d),
            BackendError::Invalid(d) => ApiError::unprocessable(d),
            BackendError::Conflict(d) => ApiError::conflict(d),
            BackendError::Overloaded {
                detail,
                retry_after_s,
            } => ApiError::unavailable(detail, retry_after_s),
            BackendError::Unavailable(d) => ApiError::unavailable(d, 1),
            BackendError::Internal(d) => ApiError::internal(d),
        }
    }
}

/// Runs `f` on the blocking pool (the engine's calls may block).
async fn blocking<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&dyn Backend) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let b = app.need()?;
    tokio::task::spawn_blocking(move || f(b.as_ref()))
        .await
        .map_err(|e| ApiError::internal(format!("the request's task failed: {e}")))
}

fn json<T: Serialize>(status: StatusCode, v: &T, ids: Vec<String>) -> Response {
    let mut r = (status, Json(v)).into_response();
    if !ids.is_empty() {
        r.extensions_mut().insert(CloneIds(ids));
    }
    r
}

/// The body's bytes: 415 unless JSON, 413 over the limit.
fn body(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<u8>, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let is_json = ct
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    let bytes = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::too_large(app.limits.body_limit))
        }
        Err(r) => return Err(ApiError::bad_request(format!("cannot read the body: {r}"))),
    };
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    // Into a Vec without a copy when the buffer is not shared, so the
    // caller can zeroize what held secrets.
    Ok(Vec::from(bytes))
}

fn one_or_more(filter: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if filter.is_empty() {
        return Err(ApiError::bad_request(
            "DELETE /v1/clones needs at least one label=KEY=VALUE filter; DELETE /v1/clones/{id} stops one clone",
        ));
    }
    Ok(())
}

async fn create_clones(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let backend = app.need()?;
    let mut buf = body(&app, &headers, raw)?;
    let parsed = api::parse_json::<SpawnBody>(&buf);
    buf.zeroize();
    let spec = parsed?.check(app.limits.max_count, backend.vmm())?;
    let metrics = app.metrics.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The request runs to its end on the blocking pool even if the client
    // goes away: its clones are then kept and listed (GET /v1/clones),
    // with their labels and TTL, and the log says so.
    tokio::task::spawn_blocking(move || {
        let r = backend.spawn(spec);
        if let Ok(rep) = &r {
            metrics.observe_spawn(rep);
        }
        if let Err(Ok(rep)) = tx.send(r) {
            let ids: Vec<&str> = rep
                .clones
                .iter()
                .filter(|c| c.ok)
                .map(|c| c.id.as_str())
                .collect();
            tracing::warn!(
                clones = ?ids,
                "the client went away before its clones were ready; they are kept (GET /v1/clones lists them, DELETE stops them)"
            );
        }
    });
    let report = rx
        .await
        .map_err(|_| ApiError::internal("the spawn task ended without an answer"))??;
    let ids = report.clones.iter().map(|c| c.id.clone()).collect();
    Ok(json(StatusCode::CREATED, &report, ids))
}

fn matches(labels: &BTreeMap<String, String>, filter: &BTreeMap<String, String>) -> bool {
    filter.iter().all(|(k, v)| labels.get(k) == Some(v))
}

async fn list_clones(
    State(app): State<Arc<App>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let filter = api::label_filter(q.as_deref())?;
    let clones = blocking(&app, |b| b.list()).await?;
    let clones: Vec<_> = clones
        .into_iter()
        .filter(|c| matches(&c.labels, &filter))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "clones": clones }),
        Vec::new(),
    ))
}

async fn delete_clones(
    State(app): State<Arc<App>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let filter = api::label_filter(q.as_deref())?;
    one_or_more(&filter)?;
    let killed = blocking(&app, move |b| b.kill_matching(&filter)).await?;
    let ids = killed.iter().map(|r| r.id.clone()).collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "killed": killed }),
        ids,
    ))
}

async fn get_clone(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let i = id.clone();
    let c = blocking(&app, move |b| b.get(&i)).await?.ok_or_else(|| {
        ApiError::not_found(format!("no live clone {id}; GET /v1/clones lists them"))
    })?;
    Ok(json(StatusCode::OK, &c, vec![id]))
}

async fn delete_clone(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let i = id.clone();
    let r = blocking(&app, move |b| b.kill(&i)).await??;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "killed": [r] }),
        vec![id],
    ))
}

async fn patch_clone(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.need()?;
    let buf = body(&app, &headers, raw)?;
    let ttl = api::parse_json::<PatchBody>(&buf)?.ttl()?;
    let i = id.clone();
    let c = blocking(&app, move |b| b.set_ttl(&i, ttl)).await??;
    Ok(json(StatusCode::OK, &c, vec![id]))
}

async fn pause_clone(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let i = id.clone();
    let c = blocking(&app, move |b| b.pause(&i)).await??;
    Ok(json(StatusCode::OK, &c, vec![id]))
}

async fn resume_clone(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let i = id.clone();
    let c = blocking(&app, move |b| b.resume(&i)).await??;
    Ok(json(StatusCode::OK, &c, vec![id]))
}

async fn list_snapshots(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let s = blocking(&app, |b| b.snapshots()).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "snapshots": s }),
        Vec::new(),
    ))
}

async fn add_snapshot(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.need()?;
    let buf = body(&app, &headers, raw)?;
    let b: SnapshotBody = api::parse_json(&buf)?;
    let s = blocking(&app, move |be| be.add_snapshot(b)).await??;
    Ok(json(StatusCode::CREATED, &s, Vec::new()))
}

async fn list_pools(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let p = blocking(&app, |b| b.pools()).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "pools": p }),
        Vec::new(),
    ))
}

async fn put_pool(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.need()?;
    let buf = body(&app, &headers, raw)?;
    let b: PoolBody = api::parse_json(&buf)?;
    if let (Some(l), Some(h)) = (b.low_water, b.high_water) {
        if l > h {
            return Err(ApiError::unprocessable(format!(
                "low_water {l} is above high_water {h}"
            )));
        }
    }
    let p = blocking(&app, move |be| be.set_pool(&name, &b)).await??;
    Ok(json(StatusCode::OK, &p, Vec::new()))
}

async fn capacity(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let c = blocking(&app, |b| b.capacity()).await?;
    Ok(json(StatusCode::OK, &c, Vec::new()))
}

async fn healthz() -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({ "status": "ok" }),
        Vec::new(),
    )
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let Some(b) = app.backend().cloned() else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "ready": false, "starting": true }),
            Vec::new(),
        );
    };
    match tokio::task::spawn_blocking(move || b.readiness()).await {
        Ok(r) if r.ready => json(StatusCode::OK, &r, Vec::new()),
        Ok(r) => json(StatusCode::SERVICE_UNAVAILABLE, &r, Vec::new()),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Some(b) = app.backend().cloned() {
        let m = app.metrics.clone();
        let _ = tokio::task::spawn_blocking(move || m.set_state(b.list().len(), &b.pools())).await;
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

fn handler(op: Op, filter: MethodFilter) -> MethodRouter<Arc<App>> {
    match op {
        Op::CreateClones => on(filter, create_clones),
        Op::ListClones => on(filter, list_clones),
        Op::DeleteClones => on(filter, delete_clones),
        Op::GetClone => on(filter, get_clone),
        Op::DeleteClone => on(filter, delete_clone),
        Op::PatchClone => on(filter, patch_clone),
        Op::PauseClone => on(filter, pause_clone),
        Op::ResumeClone => on(filter, resume_clone),
        Op::ListSnapshots => on(filter, list_snapshots),
        Op::AddSnapshot => on(filter, add_snapshot),
        Op::ListPools => on(filter, list_pools),
        Op::PutPool => on(filter, put_pool),
        Op::Capacity => on(filter, capacity),
        Op::Healthz => on(filter, healthz),
        Op::Readyz => on(filter, readyz),
        Op::Metrics => on(filter, metrics),
    }
}

fn method_filter(m: &str) -> MethodFilter {
    match m {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "PATCH" => MethodFilter::PATCH,
        "DELETE" => MethodFilter::DELETE,
        other => unreachable!("ROUTES holds method {other}"),
    }
}

/// Logs one line per request (method, matched route, status, duration,
/// clone ids; never a header or a body) and counts it.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let start = Instant::now();
    let resp = next.run(req).await;
    let secs = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    let ids = resp
        .extensions()
        .get::<CloneIds>()
        .map(|c| c.0.join(","))
        .unwrap_or_default();
    app.metrics
        .observe_request(method.as_str(), &route, status, secs);
    tracing::info!(
        target: "wasp::serve::request",
        method = %method,
        route = %route,
        status,
        ms = format_args!("{:.3}", secs * 1000.0),
        clones = %ids,
        "request"
    );
    resp
}

/// Refuses a request without the right bearer token (401, logged without
/// the token).
async fn authorize(State(token): State<Arc<Token>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if token.matches(t) => next.run(req).await,
        other => {
            tracing::warn!(
                target: "wasp::serve::auth",
                method = %req.method(),
                path = %req.uri().path(),
                reason = if other.is_some() { "wrong token" } else { "no bearer token" },
                "refused"
            );
            ApiError::unauthorized().into_response()
        }
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {}; the API is under /v1 (docs/api/openapi.yaml)",
        uri.path()
    ))
}

async fn not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// The API router built from [`ROUTES`], with the request log, metrics
/// and body limit; with `token`, every route needs it.
pub fn router(app: Arc<App>, token: Option<Arc<Token>>) -> Router {
    let mut r: Router<Arc<App>> = Router::new();
    for route in ROUTES {
        r = r.route(route.path, handler(route.op, method_filter(route.method)));
    }
    let mut r = r
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(app.limits.body_limit));
    if let Some(t) = token {
        r = r.layer(middleware::from_fn_with_state(t, authorize));
    }
    r.layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// The metrics-only router (`--metrics ADDR`): `/metrics`, and `/healthz`
/// and `/readyz` for probes, none with a token.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .fallback(not_found)
        .with_state(app)
}

/// `Method` names of [`ROUTES`], for the OpenAPI check.
pub fn route_set() -> std::collections::BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|r| (r.method.to_lowercase(), r.path.to_owned()))
        .collect()
}

//! The web dashboard: bangerd serves a few server-rendered pages on `127.0.0.1` (VMs, one
//! VM, images, kernels, operations, the live event log), kept current by Server-Sent Events
//! from the log, with stop / start / restart / delete on a VM.
//!
//! ```text
//!  banger dashboard ─▶ reads dashboard.json (port) + dashboard.token ─▶ prints / opens
//!      http://127.0.0.1:PORT/login?token=T
//!                          │ constant-time compare
//!                          ▼
//!  browser ◀─ Set-Cookie: banger_dashboard_PORT=v1.ISSUED.HMAC(T); HttpOnly; SameSite=Strict
//!     │ GET pages, GET /stream (SSE, id = seq)       POST /vms/NAME/ACTION (csrf, Origin)
//!     ▼                                                  │ the RPC handlers (daemon::vm)
//!  projections (copied out of the view)                  ▼
//!  journal subscription ◀──────────────────────── operations append to the log
//! ```
//!
//! # Security model
//!
//! Every local user can connect to a loopback port, and every web page the owner's browser
//! shows can make it send requests there; only the owner may see or change anything. So:
//!
//! - **A secret.** A random 256-bit token in `STATE/dashboard.token`, created 0600 (and
//!   replaced if it is ever readable by others, not a regular file, or not ours). Only the
//!   owner can read it, so only the owner can print the sign-in link (`banger dashboard`).
//!   `GET /login?token=T` compares it in constant time and answers with a session cookie.
//!   Replacing the file (and restarting bangerd) ends every session.
//! - **A session cookie**: `v1.ISSUED.MAC`, an HMAC of its issue time keyed by the token, so
//!   it survives restarts of bangerd (a page left open reconnects) yet expires
//!   ([`auth::SESSION_MAX_AGE`]) and cannot be made without the token. `HttpOnly` (no script
//!   reads it), `SameSite=Strict` (another site's page does not make the browser send it).
//!   Every route but `/login` answers 401 without a valid one, assets and the stream
//!   included.
//! - **Same-origin requests only.** Cookies are scoped to a host, not a port, and
//!   `SameSite` does not look at ports: a page on another local port (another user's web
//!   server) is the *same site*, and the browser sends it our cookie. Hence, on every
//!   request: the `Host` must be `127.0.0.1:PORT` or `localhost:PORT` (no DNS rebinding); an
//!   `Origin`, when present, must be the dashboard's own; and a request the browser marks
//!   (`Sec-Fetch-Site`) as made by another site or origin is refused unless it is a plain
//!   top-level navigation. There are no CORS headers, and every response says
//!   `Cross-Origin-Resource-Policy: same-origin`, `X-Content-Type-Options: nosniff`,
//!   `X-Frame-Options: DENY` and a `Content-Security-Policy` that allows only the dashboard's
//!   own script and style (no inline script: markup that slipped through could not run).
//! - **State changes** are POSTs only, and a POST must carry the dashboard's own `Origin`
//!   (browsers always send one), a valid session, and the form's CSRF token (an HMAC of the
//!   token that only the dashboard's pages contain). Form bodies are capped at 4 KiB.
//! - **Escaping.** Pages are rendered with [`html::Html`], which accepts runtime strings only
//!   as escaped text: VM names, console output, errors and kernel banners cannot become
//!   markup. The event page's script adds rows with `textContent`, never as HTML.
//!
//! What remains: because cookies ignore ports, a server on another port of this host that
//! the owner's browser visits *receives* the session cookie, and could replay it until it
//! expires. Do not browse other users' local web servers with the browser you use for the
//! dashboard, or replace the token (`rm STATE/dashboard.token`, restart bangerd) after doing
//! so.
//!
//! # Invariants
//!
//! - The dashboard appends nothing to the log itself: what it shows comes from the
//!   projections and the log, and its actions are the RPC methods' operations.
//! - It listens on 127.0.0.1 only; the address is not configurable, the port is.
//! - A failure to serve it (port taken, no token) is logged and written to
//!   `RUN/dashboard.json`; it never stops bangerd.
//! - It stops with bangerd: streams end at shutdown, and what is still open after
//!   [`STOP_TIMEOUT`] is cut, so the journal can close.

pub mod auth;
pub mod html;
pub mod pages;
pub mod stream;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Daemon;
use crate::paths::Layout;
use auth::{Refusal, Secret};
use html::Html;
use pages::{bare_page, html_response};

/// How long shutdown waits for the dashboard's connections before cutting them.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request body taken (the action forms carry one CSRF token).
const MAX_BODY_BYTES: usize = 4096;

/// What every handler shares.
pub struct Shared {
    pub daemon: Arc<Daemon>,
    pub secret: Secret,
    pub port: u16,
    /// Permits for event streams ([`stream::MAX_STREAMS`]).
    pub streams: Arc<Semaphore>,
}

/// What bangerd says about its dashboard in `RUN/dashboard.json`, for `banger dashboard`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardStatus {
    /// The bangerd that wrote it.
    pub pid: u32,
    #[serde(flatten)]
    pub state: DashboardState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DashboardState {
    Serving { url: String, port: u16 },
    Disabled,
    Failed { error: String },
}

impl DashboardStatus {
    /// Reads the status file of `layout`; `None` when there is none.
    pub fn read(layout: &Layout) -> io::Result<Option<DashboardStatus>> {
        match std::fs::read(layout.dashboard_status_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(io::Error::other),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn write(&self, path: &Path) {
        let result = (|| {
            let mut partial = PathBuf::from(path);
            partial.as_mut_os_string().push(".new");
            let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
            std::fs::write(&partial, bytes)?;
            std::fs::rename(&partial, path)
        })();
        if let Err(error) = result {
            tracing::warn!(%error, path = %path.display(), "cannot write the dashboard's status");
        }
    }
}

/// The running dashboard; [`Dashboard::stop`] waits for it after shutdown began.
pub struct Dashboard {
    task: tokio::task::JoinHandle<()>,
    status_path: PathBuf,
}

/// Starts serving the dashboard, if the configuration asks for it. Never fails bangerd: a
/// failure is logged and written to the status file.
pub async fn start(daemon: &Arc<Daemon>) -> Option<Dashboard> {
    let config = daemon.vms.config.dashboard.clone();
    let status_path = daemon.layout.dashboard_status_path();
    let pid = std::process::id();
    let fail = |error: String| {
        tracing::warn!(%error, "the dashboard is not served");
        DashboardStatus {
            pid,
            state: DashboardState::Failed { error },
        }
        .write(&status_path);
        None
    };
    if !config.enabled {
        DashboardStatus {
            pid,
            state: DashboardState::Disabled,
        }
        .write(&status_path);
        return None;
    }
    let token_path = daemon.layout.dashboard_token_path();
    let secret = match Secret::load_or_create(&token_path) {
        Ok(secret) => secret,
        Err(error) => {
            return fail(format!(
                "cannot read or make the token file {}: {error}",
                token_path.display()
            ));
        }
    };
    let listener = match bind(config.port, &daemon.layout).await {
        Ok(listener) => listener,
        Err(error) => {
            return fail(format!(
                "cannot listen on 127.0.0.1:{}: {error}; choose another [dashboard] port in {}",
                config.port,
                daemon.layout.config_path().display()
            ));
        }
    };
    let port = match listener.local_addr() {
        Ok(address) => address.port(),
        Err(error) => return fail(format!("cannot read the listening address: {error}")),
    };
    let url = format!("http://127.0.0.1:{port}");
    tracing::info!(%url, "dashboard ready (`banger dashboard` prints the sign-in link)");
    DashboardStatus {
        pid,
        state: DashboardState::Serving {
            url: url.clone(),
            port,
        },
    }
    .write(&status_path);
    let shared = Arc::new(Shared {
        daemon: daemon.clone(),
        secret,
        port,
        streams: Arc::new(Semaphore::new(stream::MAX_STREAMS)),
    });
    let shutdown = daemon.shutdown.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router(shared))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the dashboard stopped serving");
        }
    });
    Some(Dashboard { task, status_path })
}

impl Dashboard {
    /// Waits (at most [`STOP_TIMEOUT`]) for the server to finish after shutdown began, then
    /// cuts what is left, and removes the status file.
    pub async fn stop(mut self) {
        if tokio::time::timeout(STOP_TIMEOUT, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("the dashboard's connections did not close in time; cutting them");
            self.task.abort();
            let _ = self.task.await;
        }
        if let Err(error) = std::fs::remove_file(&self.status_path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(%error, "cannot remove the dashboard's status file");
        }
    }
}

/// Binds 127.0.0.1:`port`. Port 0 means any free port, but the one the previous bangerd of
/// this runtime directory served on first, so that a page left open finds a restarted
/// bangerd at the same origin.
async fn bind(port: u16, layout: &Layout) -> io::Result<TcpListener> {
    if port == 0
        && let Ok(Some(DashboardStatus {
            state: DashboardState::Serving { port: previous, .. },
            ..
        })) = DashboardStatus::read(layout)
        && let Ok(listener) =
            TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, previous))).await
    {
        return Ok(listener);
    }
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/login", get(login))
        .route("/", get(pages::vms))
        .route("/vms/{name}", get(pages::vm_page))
        .route("/vms/{name}/{action}", post(pages::action))
        .route("/images", get(pages::images))
        .route("/kernels", get(pages::kernels))
        .route("/operations", get(pages::operations))
        .route("/events", get(pages::events))
        .route("/stream", get(stream::events))
        .route("/assets/dashboard.js", get(script))
        .route("/assets/dashboard.css", get(stylesheet))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Every request goes through here first: the checks of [`auth::check_request`], then the
/// handler, then the security headers on whatever the answer is.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let verdict = auth::check_request(
        request.method(),
        request.headers(),
        request.uri().path(),
        shared.port,
        &shared.secret,
        now_unix_s(),
    );
    let mut response = match verdict {
        Ok(_) => next.run(request).await,
        Err(refusal) => {
            tracing::debug!(
                ?refusal,
                path = request.uri().path(),
                "dashboard request refused"
            );
            refused(refusal)
        }
    };
    security_headers(response.headers_mut());
    response
}

fn refused(refusal: Refusal) -> Response {
    html_response(
        refusal.status(),
        bare_page(
            if refusal.status() == StatusCode::UNAUTHORIZED {
                "Not signed in"
            } else {
                "Refused"
            },
            refusal.message(),
            None,
        ),
    )
}

fn security_headers(headers: &mut HeaderMap) {
    let fixed: [(HeaderName, &'static str); 7] = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // The sign-in URL holds the token: never send it on as a referrer.
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (header::VARY, "Cookie, Origin"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    // The stream says no-cache itself; pages and answers are never worth keeping.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    #[serde(default)]
    token: String,
}

/// `GET /login?token=T`: signs the browser in. The answer is a page that moves on to `/`
/// rather than a redirect: a sign-in opened from outside the browser (a file, a terminal)
/// counts as cross-site, and a `SameSite=Strict` cookie is not sent on a redirect that
/// continues such a navigation; a navigation the dashboard's own page starts is same-site.
async fn login(State(shared): State<Arc<Shared>>, Query(query): Query<LoginQuery>) -> Response {
    if !shared.secret.token_matches(&query.token) {
        return refused(Refusal::BadToken);
    }
    let mut html = Html::new();
    html.markup("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        .markup("<meta http-equiv=\"refresh\" content=\"0; url=/\">")
        .markup("<title>Signed in · banger</title></head><body><h1>Signed in</h1>")
        .markup("<p><a href=\"/\">Continue to the dashboard</a></p></body></html>\n");
    let mut response = html_response(StatusCode::OK, html);
    let cookie = auth::session_set_cookie(&shared.secret, shared.port, now_unix_s());
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        Err(error) => {
            tracing::error!(%error, "the session cookie is not a valid header");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    response
}

async fn not_found() -> Response {
    html_response(
        StatusCode::NOT_FOUND,
        bare_page(
            "Not found",
            "There is no such page here.",
            Some(("/", "The list of VMs")),
        ),
    )
}

/// The page script, compiled into bangerd (there is no front-end build step).
const SCRIPT: &str = include_str!("dashboard.js");
const STYLESHEET: &str = include_str!("dashboard.css");

async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

async fn stylesheet() -> Response {
    asset(STYLESHEET, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

//! The dashboard's HTTP server (hyper, already in the tree through tonic):
//! read-only, `GET` and `HEAD` only.
//!
//! | path | what |
//! |---|---|
//! | `/` | the page (embedded: no external assets) |
//! | `/events` | Server-Sent Events: `state` (at most 4 a second), `learned` (per epoch), `end` |
//! | `/state.json`, `/learned.json` | the same documents, once |
//! | `/metrics` | Prometheus exposition ([`super::prometheus`]): OpenMetrics if asked for, else the text format 0.0.4 |
//! | `/login?code=…` | trades the one-time code for a session cookie |
//!
//! **Host names.** Only requests whose `Host` is one of the dashboard's own
//! names are served ([`super::hosts`]): the rest get 421, against DNS
//! rebinding.
//!
//! **Limits.** At most [`crate::fds::Budget`]'s connections and event
//! streams at once; one more connection is closed at once, one more event
//! stream gets 503.
//!
//! **Access.** On loopback the page is open, as the gRPC port is. Bound to
//! any other interface it needs the run's token, as a `Authorization:
//! Bearer` header (scrapers, curl) or through a cookie that the one-time
//! link the coordinator prints sets (browsers); or `--insecure-no-token`
//! opens it to anyone who can reach it. The token never appears in a
//! response: the cookie holds a random session id, not the token.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::auth::Token;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use super::hosts::AllowedHosts;
use super::Published;

/// The page, embedded in the binary.
pub const PAGE: &str = include_str!("page.html");

/// The session cookie's name.
pub const COOKIE: &str = "ddp_dashboard";

/// Who may read the dashboard.
#[derive(Debug)]
pub enum Access {
    /// Anyone who can connect (loopback, or `--insecure-no-token`).
    Open,
    /// Holders of the run's token, or of the session cookie.
    Token(TokenAccess),
}

/// The secrets of a dashboard that needs the token.
pub struct TokenAccess {
    token: Token,
    /// The one-time login code, until used.
    code: Mutex<Option<String>>,
    /// The session id the login cookie carries.
    session: String,
}

impl std::fmt::Debug for TokenAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAccess(<redacted>)")
    }
}

fn random_hex() -> String {
    // OS randomness: these are secrets, not training data.
    format!("{:032x}", rand::random::<u128>())
}

impl Access {
    /// Access with `token`; returns it and the one-time login code.
    pub fn with_token(token: Token) -> (Access, String) {
        let code = random_hex();
        let access = Access::Token(TokenAccess {
            token,
            code: Mutex::new(Some(code.clone())),
            session: random_hex(),
        });
        (access, code)
    }

    /// Whether `req` may read.
    fn allows(&self, req: &Request<Incoming>) -> bool {
        let Access::Token(t) = self else {
            return true;
        };
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| t.token.verify(v));
        bearer || cookie(req).is_some_and(|c| same(&c, &t.session))
    }

    /// Trades a one-time login code for the session id.
    fn login(&self, code: &str) -> Option<String> {
        let Access::Token(t) = self else {
            return None;
        };
        let mut slot = t
            .code
            .lock()
            .expect("the login code lock is never poisoned");
        if slot.as_deref().is_some_and(|c| same(c, code)) {
            *slot = None;
            Some(t.session.clone())
        } else {
            None
        }
    }
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'",
        ),
    );
    r
}

/// What a dashboard serves besides its documents: who may read, under
/// which `Host` names, and how many connections and event streams at once.
pub struct Gate {
    /// Who may read.
    pub access: Access,
    /// The `Host` names served.
    pub hosts: AllowedHosts,
    /// Connections and event streams at once ([`crate::fds::Budget`]).
    pub budget: crate::fds::Budget,
}

/// Serves the dashboard on `listener` until the process exits. A
/// connection over the budget is closed as soon as it is accepted; a failed
/// accept (out of file descriptors) pauses the loop instead of spinning.
pub async fn serve(listener: tokio::net::TcpListener, gate: Gate, published: Published) {
    let connections = Arc::new(Semaphore::new(gate.budget.dashboard));
    let subscribers = Arc::new(Semaphore::new(gate.budget.subscribers));
    let gate = Arc::new(gate);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: accept failed; pausing");
                tokio::time::sleep(crate::fds::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!("dashboard: connection limit reached; closed");
            continue;
        };
        let (gate, published, subscribers) = (
            Arc::clone(&gate),
            published.clone(),
            Arc::clone(&subscribers),
        );
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (gate, published) = (Arc::clone(&gate), published.clone());
                let subscribers = Arc::clone(&subscribers);
                async move { Ok::<_, Infallible>(respond(req, &gate, &published, &subscribers)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

fn respond(
    req: Request<Incoming>,
    gate: &Gate,
    published: &Published,
    subscribers: &Arc<Semaphore>,
) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if !gate.hosts.allows(host) {
        return full(
            StatusCode::MISDIRECTED_REQUEST,
            "text/plain; charset=utf-8",
            "This dashboard does not serve that host name (see --dashboard-host).\n",
        );
    }
    let access = &gate.access;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "read-only\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if req.uri().path() == "/login" {
        let code = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("code="))
            .unwrap_or("");
        return match access.login(code) {
            Some(session) => {
                let mut r = full(StatusCode::SEE_OTHER, "text/plain", "");
                r.headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/"));
                let cookie = format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict");
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            None => unauthorized(),
        };
    }
    if !access.allows(&req) {
        return unauthorized();
    }
    match req.uri().path() {
        "/" | "/index.html" => full(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/events" => match Arc::clone(subscribers).try_acquire_owned() {
            Ok(slot) => events(published, slot),
            Err(_) => full(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "too many event streams open; try again later\n",
            ),
        },
        "/state.json" => full(
            StatusCode::OK,
            "application/json",
            published.state.borrow().to_string(),
        ),
        "/learned.json" => full(
            StatusCode::OK,
            "application/json",
            published.learned.borrow().to_string(),
        ),
        "/metrics" => {
            // Prometheus asks for OpenMetrics first; anyone else gets the classic text format.
            let openmetrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            if openmetrics {
                full(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    published.metrics.encode(),
                )
            } else {
                full(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    published.metrics.encode_text(),
                )
            }
        }
        _ => full(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn unauthorized() -> Response<Body> {
    let mut r = full(
        StatusCode::UNAUTHORIZED,
        "text/plain; charset=utf-8",
        "This dashboard needs the run's token: send it as `Authorization: Bearer <token>`, \
         or open the one-time link the coordinator printed.\n",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn sse(event: &str, data: &str) -> Result<Frame<Bytes>, Infallible> {
    Ok(Frame::data(Bytes::from(format!(
        "event: {event}\ndata: {data}\n\n"
    ))))
}

/// The event stream: the current documents at once, then each change, then
/// `end` when the run is over (so the page stops listening instead of reconnecting).
fn events(published: &Published, slot: OwnedSemaphorePermit) -> Response<Body> {
    let (tx, rx) = mpsc::channel(4);
    let mut state = published.state.clone();
    let mut learned = published.learned.clone();
    tokio::spawn(async move {
        let _slot = slot; // held while the stream lasts
        let first = learned.borrow_and_update().clone();
        if &*first != "null" && tx.send(sse("learned", &first)).await.is_err() {
            return;
        }
        let now = state.borrow_and_update().clone();
        if tx.send(sse("state", &now)).await.is_err() {
            return;
        }
        loop {
            let frame = tokio::select! {
                changed = state.changed() => match changed {
                    Ok(()) => sse("state", &state.borrow_and_update().clone()),
                    Err(_) => break,
                },
                Ok(()) = learned.changed() => sse("learned", &learned.borrow_and_update().clone()),
            };
            if tx.send(frame).await.is_err() {
                return; // the page went away
            }
        }
        let last = state.borrow().clone();
        let _ = tx.send(sse("state", &last)).await;
        let _ = tx.send(sse("end", "{}")).await;
    });
    let mut r = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

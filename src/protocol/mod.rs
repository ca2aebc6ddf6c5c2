//! HTTP in, state calls out. [`route`] turns a method and URL into an
//! [`Endpoint`]; one `handle_*` function per operation calls
//! [`crate::state::States`]; [`error::ProtocolError`] turns every failure
//! into a status in one place.
//!
//! URLs (see the README): `/states/<key>[?workspace=<name>]` takes GET
//! (and HEAD), POST/PUT (write, with Terraform's `?ID=<lock id>`), DELETE, LOCK and
//! UNLOCK; `?history` and `?version=N` read history. `/locks/<key>` serves
//! gateways that refuse custom verbs: POST or LOCK locks, DELETE or UNLOCK
//! unlocks, GET shows the holder. `/healthz` answers 200.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytes::BytesMut;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use md5::{Digest, Md5};

use crate::config::Limits;
use crate::state::{StateRef, States, WriteOptions, history};

pub mod error;

pub use error::ProtocolError;
use error::text;

/// What the server needs to answer requests.
pub struct App {
    /// The states, with the rules applied.
    pub states: States,
    /// Body sizes and rates; the server reads the connection limits.
    pub limits: Limits,
}

/// A request, understood.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    GetState(StateRef),
    History(StateRef),
    GetVersion(StateRef, u64),
    WriteState {
        state: StateRef,
        lock_id: Option<String>,
    },
    DeleteState {
        state: StateRef,
        lock_id: Option<String>,
    },
    Lock(StateRef),
    Unlock(StateRef),
    GetLock(StateRef),
}

const STATE_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, LOCK, UNLOCK";
const LOCK_METHODS: &str = "GET, HEAD, POST, DELETE, LOCK, UNLOCK";

/// The query parameters stategate reads; others are ignored.
#[derive(Default)]
struct Query {
    workspace: Option<String>,
    lock_id: Option<String>,
    history: bool,
    version: Option<String>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        let mut q = Query::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "workspace" => q.workspace = Some(v.into_owned()),
                "ID" => q.lock_id = Some(v.into_owned()).filter(|id| !id.is_empty()),
                "history" => q.history = true,
                "version" => q.version = Some(v.into_owned()),
                _ => {}
            }
        }
        q
    }
}

/// Percent-decodes a URL path segment run into the key it names. Decoding
/// happens before validation, so `%2e%2e` is refused like `..`.
fn decode_key(raw: &str) -> Result<String, ProtocolError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| ProtocolError::BadRequest("the state key is not valid UTF-8".into()))
}

/// Maps a method and URL to an endpoint.
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Endpoint, ProtocolError> {
    if path == "/healthz" {
        return match *method {
            Method::GET | Method::HEAD => Ok(Endpoint::Health),
            _ => Err(ProtocolError::MethodNotAllowed("GET")),
        };
    }
    let (is_lock_url, raw_key) = if let Some(k) = path.strip_prefix("/states/") {
        (false, k)
    } else if let Some(k) = path.strip_prefix("/locks/") {
        (true, k)
    } else {
        return Err(ProtocolError::NotFound(format!(
            "no such URL {path:?}; states live at /states/<key>, locks at /locks/<key>"
        )));
    };
    let q = Query::parse(query);
    let state = StateRef::parse(&decode_key(raw_key)?, q.workspace.as_deref())
        .map_err(|e| ProtocolError::BadRequest(e.0))?;
    let method = method.as_str();
    if is_lock_url {
        return match method {
            "POST" | "LOCK" => Ok(Endpoint::Lock(state)),
            "DELETE" | "UNLOCK" => Ok(Endpoint::Unlock(state)),
            "GET" | "HEAD" => Ok(Endpoint::GetLock(state)),
            _ => Err(ProtocolError::MethodNotAllowed(LOCK_METHODS)),
        };
    }
    match method {
        "GET" | "HEAD" if q.history => Ok(Endpoint::History(state)),
        "GET" | "HEAD" => match q.version {
            Some(v) => match v.parse::<u64>() {
                Ok(n) => Ok(Endpoint::GetVersion(state, n)),
                Err(_) => Err(ProtocolError::BadRequest(format!(
                    "version {v:?} is not a number"
                ))),
            },
            None => Ok(Endpoint::GetState(state)),
        },
        "POST" | "PUT" => Ok(Endpoint::WriteState {
            state,
            lock_id: q.lock_id,
        }),
        "DELETE" => Ok(Endpoint::DeleteState {
            state,
            lock_id: q.lock_id,
        }),
        "LOCK" => Ok(Endpoint::Lock(state)),
        "UNLOCK" => Ok(Endpoint::Unlock(state)),
        _ => Err(ProtocolError::MethodNotAllowed(STATE_METHODS)),
    }
}

/// Answers one request. Never fails: errors become responses here.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (response, reason) = match dispatch(&app, req).await {
        Ok(r) => (r, None),
        Err(e) => {
            let reason = e.to_string();
            (e.into_response(), Some(reason))
        }
    };
    let status = response.status();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match reason {
        Some(reason) if status.is_server_error() => {
            tracing::warn!(%method, %path, status = status.as_u16(), elapsed_ms, %reason, "request failed");
        }
        Some(reason) => {
            tracing::info!(%method, %path, status = status.as_u16(), elapsed_ms, %reason, "request refused");
        }
        None => tracing::info!(%method, %path, status = status.as_u16(), elapsed_ms, "request"),
    }
    Ok(response)
}

async fn dispatch(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let endpoint = route(req.method(), req.uri().path(), req.uri().query())?;
    match endpoint {
        Endpoint::Health => Ok(text("ok\n")),
        Endpoint::GetState(state) => handle_get(app, &state).await,
        Endpoint::History(state) => handle_history(app, &state).await,
        Endpoint::GetVersion(state, n) => handle_get_version(app, &state, n).await,
        Endpoint::WriteState { state, lock_id } => {
            let body = read_body(app, req, app.limits.max_body_bytes).await?;
            handle_write(app, &state, body, lock_id.as_deref()).await
        }
        Endpoint::DeleteState { state, lock_id } => {
            handle_delete(app, &state, lock_id.as_deref()).await
        }
        Endpoint::Lock(state) => {
            let body = read_body(app, req, app.limits.max_lock_bytes).await?;
            handle_lock(app, &state, body.bytes).await
        }
        Endpoint::Unlock(state) => {
            let body = read_body(app, req, app.limits.max_lock_bytes).await?;
            handle_unlock(app, &state, &body.bytes).await
        }
        Endpoint::GetLock(state) => handle_get_lock(app, &state).await,
    }
}

/// How far past the limit a body is still read (and dropped) before the
/// 413, so the client receives the answer.
const DRAIN_BYTES: u64 = 16 * 1024 * 1024;

/// The window over which `body_min_rate` is averaged.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Reads the whole body, refusing one over `limit` (by `Content-Length`
/// before reading, or while reading), one that arrives slower than
/// `body_min_rate` over any 10-second window, and one whose `Content-MD5`
/// does not match. Memory grows with the bytes received, never with the
/// length a client declares.
async fn read_body(app: &App, req: Request<Incoming>, limit: u64) -> Result<Body, ProtocolError> {
    let min_rate = app.limits.body_min_rate;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Far over the limit: answer at once. A little over: read and drop the
    // body first, so the client is still listening when the 413 arrives
    // (a server that closes while the client writes makes it see a broken
    // pipe instead of the reason).
    if declared.is_some_and(|n| n > limit.saturating_add(DRAIN_BYTES)) {
        return Err(ProtocolError::TooLarge(limit));
    }
    let content_md5 = match req.headers().get("content-md5") {
        None => None,
        Some(v) => {
            use base64::Engine;
            let digest = v
                .to_str()
                .ok()
                .and_then(|s| {
                    base64::engine::general_purpose::STANDARD
                        .decode(s.trim())
                        .ok()
                })
                .filter(|d| d.len() == 16)
                .ok_or_else(|| {
                    ProtocolError::BadRequest("Content-MD5 is not base64 of 16 bytes".into())
                })?;
            Some(digest)
        }
    };
    let mut incoming = req.into_body();
    let mut body = BytesMut::new();
    let mut seen: u64 = 0;
    let mut window_end = tokio::time::Instant::now() + RATE_WINDOW;
    let mut window_start_seen: u64 = 0;
    loop {
        let next = if min_rate == 0 {
            incoming.frame().await
        } else {
            match tokio::time::timeout_at(window_end, incoming.frame()).await {
                Ok(next) => next,
                Err(_) => {
                    // A whole window passed: it must have brought enough.
                    if seen - window_start_seen < min_rate * RATE_WINDOW.as_secs() {
                        return Err(ProtocolError::TooSlow(min_rate));
                    }
                    window_start_seen = seen;
                    window_end += RATE_WINDOW;
                    continue;
                }
            }
        };
        let Some(frame) = next else { break };
        let frame = frame
            .map_err(|e| ProtocolError::BadRequest(format!("reading the body failed: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > limit.saturating_add(DRAIN_BYTES) {
            break;
        }
        if seen <= limit {
            body.extend_from_slice(&data);
        }
        if min_rate > 0 && tokio::time::Instant::now() >= window_end {
            if seen - window_start_seen < min_rate * RATE_WINDOW.as_secs() {
                return Err(ProtocolError::TooSlow(min_rate));
            }
            window_start_seen = seen;
            window_end += RATE_WINDOW;
        }
    }
    if seen > limit {
        return Err(ProtocolError::TooLarge(limit));
    }
    let bytes = body.freeze();
    let digest = Md5::digest(&bytes);
    if let Some(expected) = content_md5
        && digest.as_slice() != expected.as_slice()
    {
        return Err(ProtocolError::BadRequest(
            "Content-MD5 does not match the body".into(),
        ));
    }
    Ok(Body {
        bytes,
        md5: history::hex(&digest),
    })
}

/// A request body, read whole and hashed once.
struct Body {
    bytes: Bytes,
    /// Hex MD5, handed on so a write does not hash the body again.
    md5: String,
}

fn json(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A state body with its `Content-Length` and an `ETag` (the quoted hex
/// MD5), set here so HEAD, which sends no body, carries them too.
fn state_body(body: Bytes) -> Response<Full<Bytes>> {
    let etag = format!("\"{}\"", history::md5_hex(&body));
    let length = body.len();
    let mut r = json(body);
    let headers = r.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        ETAG,
        HeaderValue::from_str(&etag).expect("hex is a header value"),
    );
    r
}

async fn handle_get(app: &App, state: &StateRef) -> Result<Response<Full<Bytes>>, ProtocolError> {
    match app.states.get(state).await? {
        Some(body) => Ok(state_body(body)),
        None => Err(ProtocolError::NotFound(format!(
            "no state stored for {state}"
        ))),
    }
}

async fn handle_history(
    app: &App,
    state: &StateRef,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let versions = app.states.history(state).await?;
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "key": state.key(),
        "workspace": state.workspace(),
        "versions": versions,
    }))
    .expect("history serialises");
    Ok(json(body))
}

async fn handle_get_version(
    app: &App,
    state: &StateRef,
    n: u64,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    Ok(state_body(app.states.version(state, n).await?))
}

async fn handle_write(
    app: &App,
    state: &StateRef,
    body: Body,
    lock_id: Option<&str>,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let opts = WriteOptions {
        lock_id,
        operation: "write",
        md5: Some(&body.md5),
        ..Default::default()
    };
    app.states.write(state, body.bytes, opts).await?;
    Ok(text(""))
}

async fn handle_delete(
    app: &App,
    state: &StateRef,
    lock_id: Option<&str>,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    app.states.delete(state, lock_id).await?;
    Ok(text(""))
}

async fn handle_lock(
    app: &App,
    state: &StateRef,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    app.states.lock(state, body).await?;
    Ok(text(""))
}

async fn handle_unlock(
    app: &App,
    state: &StateRef,
    body: &[u8],
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    app.states.unlock(state, body).await?;
    Ok(text(""))
}

async fn handle_get_lock(
    app: &App,
    state: &StateRef,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    match app.states.lock_holder(state).await? {
        Some(held) => Ok(json(held.body)),
        None => {
            let mut r = text(format!("{state} is not locked\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            Ok(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: &str, path: &str, query: Option<&str>) -> Result<Endpoint, ProtocolError> {
        route(&Method::from_bytes(method.as_bytes()).unwrap(), path, query)
    }

    fn st(key: &str, ws: Option<&str>) -> StateRef {
        StateRef::parse(key, ws).unwrap()
    }

    #[test]
    fn state_url_methods() {
        assert_eq!(
            r("GET", "/states/a/b", None).unwrap(),
            Endpoint::GetState(st("a/b", None))
        );
        assert_eq!(
            r("POST", "/states/a", Some("workspace=dev&ID=123")).unwrap(),
            Endpoint::WriteState {
                state: st("a", Some("dev")),
                lock_id: Some("123".into())
            }
        );
        assert_eq!(
            r("PUT", "/states/a", Some("ID=")).unwrap(),
            Endpoint::WriteState {
                state: st("a", None),
                lock_id: None
            }
        );
        assert_eq!(
            r("LOCK", "/states/a", None).unwrap(),
            Endpoint::Lock(st("a", None))
        );
        assert_eq!(
            r("UNLOCK", "/states/a", None).unwrap(),
            Endpoint::Unlock(st("a", None))
        );
        assert_eq!(
            r("GET", "/states/a", Some("history")).unwrap(),
            Endpoint::History(st("a", None))
        );
        assert_eq!(
            r("GET", "/states/a", Some("version=3")).unwrap(),
            Endpoint::GetVersion(st("a", None), 3)
        );
        assert_eq!(
            r("GET", "/states/a", Some("version=x"))
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(r("PATCH", "/states/a", None).unwrap_err().status(), 405);
    }

    #[test]
    fn lock_url_methods() {
        assert_eq!(
            r("POST", "/locks/a", None).unwrap(),
            Endpoint::Lock(st("a", None))
        );
        assert_eq!(
            r("DELETE", "/locks/a", Some("workspace=w")).unwrap(),
            Endpoint::Unlock(st("a", Some("w")))
        );
        assert_eq!(
            r("GET", "/locks/a", None).unwrap(),
            Endpoint::GetLock(st("a", None))
        );
        assert_eq!(r("PUT", "/locks/a", None).unwrap_err().status(), 405);
    }

    #[test]
    fn traversal_is_refused_after_decoding() {
        for path in [
            "/states/..%2fx",
            "/states/%2e%2e/etc",
            "/states//etc/passwd",
            "/states/a%00b",
            "/states/%ff",
            "/states/",
        ] {
            assert_eq!(r("GET", path, None).unwrap_err().status(), 400, "{path}");
        }
        assert_eq!(
            r("GET", "/states/a%2Fb", None).unwrap(),
            Endpoint::GetState(st("a/b", None))
        );
        assert_eq!(r("GET", "/elsewhere", None).unwrap_err().status(), 404);
    }
}

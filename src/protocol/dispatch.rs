//! One request from arrival to answer: the base path and listener, the
//! origin checks, the dashboard's URLs handed on, the route, access, the
//! handler; then the request id, `Cache-Control`, the metrics and the
//! access log line, whatever the outcome. Errors become responses here,
//! through [`ProtocolError::into_response`] only.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response};

use super::app::{App, Conn, PageRequest, Surface};
use super::body::read_body;
use super::error::text;
use super::log::{Answered, Exchange, client_addr, log_request, next_request_id};
use super::routes::{Endpoint, route_named};
use super::{ProtocolError, Reply, access, health, history, locks, origin, states};
use crate::metrics::{Metrics, Refusal, method_label};
use crate::state::StateError;

/// Answers one request. Never fails: errors become responses here.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    conn: Conn,
) -> Result<Response<Reply>, std::convert::Infallible> {
    let started = Instant::now();
    let request_id = next_request_id();
    let method = method_label(req.method());
    let path = req.uri().path().to_string();
    let client = client_addr(
        &app.trusted_proxies,
        app.client_ip_header,
        conn.peer.ip(),
        req.headers(),
    );
    let mut ex = Exchange {
        client,
        identity: None,
        route: "other",
        state: None,
        bytes_in: 0,
    };
    let (mut response, reason) = match dispatch(&app, req, &conn, &mut ex).await {
        Ok(r) => (r, None),
        Err(e) => {
            count_failure(&app.metrics, &e, ex.route);
            let reason = e.to_string();
            (e.into_response().map(Reply::from), Some(reason))
        }
    };
    response.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(&request_id).expect("hex is a header value"),
    );
    // States, their history and their locks carry secrets: no cache on the
    // way (a proxy, the client's disk) may keep a copy. The pages set their
    // own, the same.
    response
        .headers_mut()
        .entry(hyper::header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    let status = response.status().as_u16();
    let bytes_out = response.body().size_hint().exact().unwrap_or(0);
    let elapsed = started.elapsed();
    app.metrics
        .request(method, ex.route, status, elapsed, ex.bytes_in, bytes_out);
    let answered = Answered {
        method,
        path: &path,
        request_id: &request_id,
        status,
        elapsed,
        bytes_out,
        reason,
    };
    log_request(&ex, answered);
    Ok(response)
}

/// Counts what a failure says about locks, writes and the store.
fn count_failure(metrics: &Metrics, e: &ProtocolError, route: &str) {
    let writing = route == "/states/{key}";
    match e {
        ProtocolError::State(StateError::Locked(_)) => metrics.lock_conflict(),
        ProtocolError::State(StateError::Store(_)) => metrics.store_error(),
        ProtocolError::TooSlow(_) => metrics.request_timed_out(),
        ProtocolError::State(StateError::Stale(_)) if writing => {
            metrics.write_refused(Refusal::Stale)
        }
        ProtocolError::State(StateError::NotHolder(_)) if writing => {
            metrics.write_refused(Refusal::Locked)
        }
        ProtocolError::TooLarge(_) if writing => metrics.write_refused(Refusal::TooLarge),
        ProtocolError::BadRequest(_) | ProtocolError::State(StateError::BadRequest(_))
            if writing =>
        {
            metrics.write_refused(Refusal::Invalid)
        }
        _ => {}
    }
}

async fn dispatch(
    app: &App,
    req: Request<Incoming>,
    conn: &Conn,
    ex: &mut Exchange,
) -> Result<Response<Reply>, ProtocolError> {
    let surface = conn.surface;
    let full_path = req.uri().path();
    // The admin address is for probes and scrapers, which ask at its root.
    let path = if app.base_path.is_empty() || surface == Surface::Admin {
        full_path
    } else {
        full_path
            .strip_prefix(app.base_path.as_str())
            .filter(|rest| rest.starts_with('/'))
            .ok_or_else(|| {
                ProtocolError::NotFound(format!(
                    "no such URL {full_path:?}; stategate is served below {}",
                    app.base_path
                ))
            })?
    };
    origin::check_cross_site(&app.origins, req.method(), req.headers())?;
    if let Some(pages) = app.pages.clone()
        && surface != Surface::Admin
        && pages.serves(path)
    {
        origin::check_host(app, req.headers(), conn.peer.ip())?;
        let mut page = PageRequest {
            path: path.to_string(),
            client: ex.client,
            certificate_cn: conn.certificate_cn.clone(),
            route: "/ui",
            identity: None,
            state: None,
        };
        let response = pages.handle(app, req, &mut page).await;
        ex.route = page.route;
        ex.identity = page.identity;
        ex.state = page.state;
        return Ok(response.map(Reply::from));
    }
    let endpoint = route_named(req.method(), path, req.uri().query(), |state| {
        Ok(app.states.canonical(&state)?)
    })?;
    if !matches!(
        endpoint,
        Endpoint::Health | Endpoint::Ready | Endpoint::Metrics
    ) {
        origin::check_host(app, req.headers(), conn.peer.ip())?;
    }
    if !endpoint.served_on(surface) {
        return Err(ProtocolError::NotFound(format!(
            "no such URL {full_path:?} on this address"
        )));
    }
    ex.route = endpoint.route();
    ex.state = endpoint.state().map(ToString::to_string);
    let caller = access::authorize(
        app,
        &endpoint,
        req.headers(),
        conn.certificate_cn.as_deref(),
        ex.client,
    )
    .await?;
    ex.identity = caller.as_ref().map(|c| c.name().to_string());
    let caller = caller.as_ref();
    // Who the operations that change a state act for.
    let actor = ex.actor(caller.map(|c| c.level));
    let whole = match endpoint {
        Endpoint::GetState(state) if req.method() == Method::HEAD => {
            return states::handle_head(app, &state, caller, &actor).await;
        }
        Endpoint::GetState(state) => {
            return states::handle_get(app, &state, caller, &actor).await;
        }
        Endpoint::GetVersion(state, n) => return history::handle_get_version(app, &state, n).await,
        Endpoint::Health => Ok(text("ok\n")),
        Endpoint::Ready => health::handle_ready(app).await,
        Endpoint::Metrics => health::handle_metrics(app).await,
        Endpoint::History(state, window) => history::handle_history(app, &state, window).await,
        Endpoint::WriteState { state, lock_id } => {
            let body = read_body(app, req, app.limits.max_body_bytes, ex).await?;
            states::handle_write(app, &state, body, lock_id.as_deref(), &actor).await
        }
        Endpoint::DeleteState { state, lock_id } => {
            states::handle_delete(app, &state, lock_id.as_deref(), &actor).await
        }
        Endpoint::Lock(state) => {
            let body = read_body(app, req, app.limits.max_lock_bytes, ex).await?;
            let bytes = body.payload.to_bytes().await.map_err(StateError::Store)?;
            locks::handle_lock(app, &state, bytes, &actor).await
        }
        Endpoint::Unlock(state) => {
            let body = read_body(app, req, app.limits.max_lock_bytes, ex).await?;
            let bytes = body.payload.to_bytes().await.map_err(StateError::Store)?;
            locks::handle_unlock(app, &state, &bytes, &actor).await
        }
        Endpoint::GetLock(state) => locks::handle_get_lock(app, &state).await,
    };
    whole.map(|r| r.map(Reply::from))
}

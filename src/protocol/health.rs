//! The operational handlers: `/readyz`, which answers only while the store
//! does (probed at most once a second), and `/metrics`, whose state and
//! lock counts are refreshed when due. `/healthz` needs no handler.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CONTENT_TYPE, HeaderValue};

use super::ProtocolError;
use super::app::App;
use super::error::text;
use crate::state::StateError;

/// Ready while the store can be read and takes writes. A store that can be
/// read but takes no writes (degraded, or `read_only` on purpose) answers
/// 503 with the reason, while `/healthz` stays 200 and reads are served.
pub(super) async fn handle_ready(app: &App) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let not_ready = |reason: String| {
        Err(ProtocolError::State(StateError::Store(
            crate::stores::StoreError::Unavailable(format!("not ready: {reason}")),
        )))
    };
    if let Err(reason) = app.readiness.check(&app.states).await {
        return not_ready(reason);
    }
    match app.states.store().writes().refused {
        Some(refused) => not_ready(refused.to_string()),
        None => Ok(text("ready\n")),
    }
}

pub(super) async fn handle_metrics(app: &App) -> Result<Response<Full<Bytes>>, ProtocolError> {
    if app.metrics.counts_due() {
        match app.states.counts().await {
            Ok((states, locks)) => app.metrics.set_counts(states, locks),
            Err(e) => tracing::warn!(error = %e, "counting states for /metrics failed"),
        }
    }
    let writes = app.states.store().writes();
    app.metrics
        .set_store_writes(writes.refused.is_none(), writes.space.map(|s| s.free));
    let auth = app.auth.read().expect("auth lock").clone();
    app.metrics
        .set_oidc_stale_issuers(auth.map_or(0, |a| a.oidc_stale_issuers()));
    let mut r = text(app.metrics.render());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(r)
}

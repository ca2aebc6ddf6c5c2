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

pub(super) async fn handle_ready(app: &App) -> Result<Response<Full<Bytes>>, ProtocolError> {
    match app.readiness.check(&app.states).await {
        Ok(()) => Ok(text("ready\n")),
        Err(reason) => Err(ProtocolError::State(StateError::Store(
            crate::stores::StoreError::Unavailable(format!("not ready: {reason}")),
        ))),
    }
}

pub(super) async fn handle_metrics(app: &App) -> Result<Response<Full<Bytes>>, ProtocolError> {
    if app.metrics.counts_due() {
        match app.states.counts().await {
            Ok((states, locks)) => app.metrics.set_counts(states, locks),
            Err(e) => tracing::warn!(error = %e, "counting states for /metrics failed"),
        }
    }
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

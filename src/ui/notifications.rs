//! The notifications the server gave up on: a banner on every page counts
//! them, and `/ui/notifications` lists them, so a receiver that has been
//! down longer than the retries last is seen without reading logs.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use askama::Template;

use super::Viewer;
use super::pages::{Layout, html, render, state_url};
use crate::notify::Entry;
use crate::protocol::{App, ProtocolError};
use crate::state::StateRef;

/// Entries listed on the page at most, newest first.
const SHOWN: usize = 200;

/// One undelivered notification as the page shows it.
struct Row {
    destination: String,
    kind: &'static str,
    key: String,
    workspace: String,
    url: String,
    time: String,
    attempts: u32,
    error: String,
    id: String,
}

#[derive(Template)]
#[template(path = "notifications.html")]
struct NotificationsPage<'a> {
    layout: Layout<'a>,
    configured: bool,
    total: usize,
    rows: Vec<Row>,
}

/// The page: the undelivered notifications about states the viewer may
/// read.
pub async fn page(
    app: &App,
    base: &str,
    viewer: &Viewer,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let entries: Vec<Entry> = match app.notifier() {
        Some(notifier) => notifier
            .outbox()
            .undelivered(SHOWN)
            .await
            .map_err(|e| ProtocolError::Unavailable(e.to_string()))?,
        None => Vec::new(),
    };
    let rows: Vec<Row> = entries
        .into_iter()
        .filter_map(|e| {
            let workspace = e.record.state.workspace.as_str();
            let ws = (workspace != crate::state::key::DEFAULT_WORKSPACE).then_some(workspace);
            let state = StateRef::parse(&e.record.state.key, ws).ok()?;
            viewer.may_read(&state).then(|| Row {
                destination: e.destination,
                kind: e.record.kind.name(),
                key: e.record.state.key.clone(),
                workspace: e.record.state.workspace.clone(),
                url: state_url(base, &state),
                time: e.record.time,
                attempts: e.attempts,
                error: e.last_error.unwrap_or_default(),
                id: e.record.id,
            })
        })
        .collect();
    Ok(html(render(&NotificationsPage {
        layout: Layout::new(base, "Undelivered notifications", Some(viewer)),
        configured: app.notifier().is_some(),
        // Over every state: only for a viewer who may read them all.
        total: viewer.undelivered().max(rows.len()),
        rows,
    })))
}

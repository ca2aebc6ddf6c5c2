//! The confirmation step before a restore: the version, what the restore
//! would change from the current state, and, while the state is locked,
//! the `force` the restore then needs ([`crate::ops`] says why). Apart
//! from the other pages because it is the one page that asks for a change
//! of content.

use askama::Template;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use super::Viewer;
use super::api::VersionDiff;
use super::pages::{
    DiffView, Layout, diff_view, html, human_size, or_dash, render, restore_url, short_time,
    state_url,
};
use crate::state::StateRef;
use crate::state::VersionMeta;
use crate::state::summary::Summary;

#[derive(Template)]
#[template(path = "restore.html")]
struct RestorePage<'a> {
    layout: Layout<'a>,
    key: String,
    workspace: String,
    state_url: String,
    action: String,
    version: u64,
    serial: String,
    created: String,
    resources: usize,
    size: String,
    current_serial: String,
    locked: bool,
    change: Option<DiffView>,
    /// Why the change is not shown.
    change_refused: Option<String>,
    csrf: &'a str,
}

/// What the restore confirmation shows.
pub struct Restoring<'a> {
    /// The version to restore.
    pub record: &'a VersionMeta,
    /// The state it would replace.
    pub current: Option<&'a Summary>,
    pub locked: bool,
    /// What the restore changes, or why that is not shown.
    pub change: Option<&'a Result<VersionDiff, String>>,
}

/// The confirmation step before a restore.
pub fn page(
    base: &str,
    viewer: &Viewer,
    st: &StateRef,
    restoring: Restoring<'_>,
    csrf: &str,
) -> Response<Full<Bytes>> {
    let Restoring {
        record,
        current,
        locked,
        change,
    } = restoring;
    let (change, change_refused) = match change {
        Some(Ok(d)) => (Some(diff_view(d)), None),
        Some(Err(why)) => (None, Some(why.clone())),
        None => (None, None),
    };
    html(render(&RestorePage {
        layout: Layout::new(base, format!("Restore {}", st.key()), Some(viewer)),
        key: st.key().to_string(),
        workspace: st.workspace().to_string(),
        state_url: state_url(base, st),
        action: restore_url(base, st),
        version: record.version,
        serial: or_dash(record.serial),
        created: short_time(Some(&record.created)),
        resources: record.resources,
        size: human_size(record.size),
        current_serial: or_dash(current.and_then(|c| c.serial)),
        locked,
        change,
        change_refused,
        csrf,
    }))
}

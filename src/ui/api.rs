//! What the dashboard shows, gathered once for the pages and the JSON API
//! (`/api/v1/states`, `/api/v1/states/<key>`, `/api/v1/diff/<key>`,
//! `/api/v1/locks`), and the two changes an admin may make from a page.
//!
//! The state list reads one store listing, keeps the states the caller may
//! read that match the filter, sorts them by last write and reads only the
//! page's summaries and locks: never a state body.

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::Full;
use hyper::Response;
use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Query, Viewer};
use crate::protocol::{App, PageRequest, ProtocolError};
use crate::state::diff::{self, Diff, Overview};
use crate::state::summary::{Listed, Summary};
use crate::state::{StateError, StateRef, VersionMeta, WriteOptions};

/// States per page of the list.
pub const PAGE_SIZE: usize = 50;

/// A JSON answer.
pub fn json_body(value: &impl Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).expect("the API's answers serialise");
    body.push(b'\n');
    super::typed(body, "application/json")
}

/// A held lock as shown: the holder's LockInfo as it sent it, and its age.
#[derive(Debug, Clone, Serialize)]
pub struct LockView {
    #[serde(flatten)]
    pub info: Map<String, Value>,
    /// Seconds since `Created`, when that parses.
    pub age_seconds: Option<u64>,
    /// Older than `ui.stale_lock_hours`.
    pub stale: bool,
}

impl LockView {
    pub fn field(&self, name: &str) -> &str {
        self.info.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// One row of the state list.
#[derive(Debug, Serialize)]
pub struct StateRow {
    pub key: String,
    pub workspace: String,
    pub serial: Option<u64>,
    pub lineage: Option<String>,
    pub resources: usize,
    pub size: u64,
    /// Last write (RFC 3339).
    pub updated: Option<String>,
    /// The identity or LockInfo `Who` that wrote the current version.
    pub writer: Option<String>,
    pub lock: Option<LockView>,
    #[serde(skip)]
    pub state: Option<StateRef>,
}

/// One page of the state list.
#[derive(Debug)]
pub struct StateList {
    pub states: Vec<StateRow>,
    /// The states matching the filter that the caller may read.
    pub total: usize,
    pub page: usize,
    pub next_page: Option<usize>,
}

impl StateList {
    pub fn to_json(&self) -> Value {
        json!({
            "states": self.states,
            "total": self.total,
            "page": self.page,
            "next_page": self.next_page,
        })
    }
}

fn age_seconds(created: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(created, &Rfc3339).ok()?;
    let age = OffsetDateTime::now_utc() - t;
    u64::try_from(age.whole_seconds()).ok()
}

/// The lock on `state`, if one is held.
pub async fn lock_view(
    app: &App,
    state: &StateRef,
    stale_after_secs: u64,
) -> Result<Option<LockView>, ProtocolError> {
    let Some(held) = app.states.lock_holder(state).await? else {
        return Ok(None);
    };
    let info: Map<String, Value> = serde_json::from_slice(&held.body).unwrap_or_default();
    let age = age_seconds(&held.info.created);
    Ok(Some(LockView {
        info,
        age_seconds: age,
        stale: age.is_some_and(|a| a > stale_after_secs),
    }))
}

/// Summaries and locks read at once for one page of the list.
const READS_AT_ONCE: usize = 8;

/// One listed state's row: its summary and, when locked, its lock.
async fn state_row(
    app: &App,
    l: &Listed,
    stale_after_secs: u64,
) -> Result<Option<StateRow>, ProtocolError> {
    let Some(summary) = app.states.summary(&l.state, l).await? else {
        return Ok(None);
    };
    let lock = if l.locked {
        lock_view(app, &l.state, stale_after_secs).await?
    } else {
        None
    };
    let updated = Some(summary.updated.clone())
        .filter(|u| !u.is_empty())
        .or_else(|| l.modified.and_then(|m| m.format(&Rfc3339).ok()));
    Ok(Some(StateRow {
        key: l.state.key().to_string(),
        workspace: l.state.workspace().to_string(),
        serial: summary.serial,
        lineage: summary.lineage.clone(),
        resources: summary.resources,
        size: summary.size,
        updated,
        writer: summary.writer().map(str::to_string),
        lock,
        state: Some(l.state.clone()),
    }))
}

/// One page of the states the viewer may read, newest write first.
pub async fn list_states(
    app: &App,
    viewer: &Viewer,
    q: &Query,
    stale_after_secs: u64,
) -> Result<StateList, ProtocolError> {
    let mut listed = app.states.listing().await?;
    listed.retain(|l| {
        l.state.key().starts_with(&q.prefix)
            && q.workspace
                .as_deref()
                .is_none_or(|w| l.state.workspace() == w)
            && viewer.may_read(&l.state)
    });
    listed.sort_by(|a, b| {
        b.modified
            .cmp(&a.modified)
            .then_with(|| a.state.key().cmp(b.state.key()))
            .then_with(|| a.state.workspace().cmp(b.state.workspace()))
    });
    let total = listed.len();
    let start = (q.page - 1).saturating_mul(PAGE_SIZE);
    // On S3 and OSS each summary is a round trip: a few at a time.
    let page: Vec<Listed> = listed.into_iter().skip(start).take(PAGE_SIZE).collect();
    let rows: Vec<Result<Option<StateRow>, ProtocolError>> = stream::iter(page)
        .map(|l| async move { state_row(app, &l, stale_after_secs).await })
        .buffered(READS_AT_ONCE)
        .collect()
        .await;
    let mut states = Vec::new();
    for row in rows {
        // Deleted since the listing: left out.
        if let Some(row) = row? {
            states.push(row);
        }
    }
    Ok(StateList {
        states,
        total,
        page: q.page,
        next_page: (start + PAGE_SIZE < total).then_some(q.page + 1),
    })
}

/// One state: what it holds by name, its history and its lock.
#[derive(Debug, Serialize)]
pub struct StateDetail {
    pub key: String,
    pub workspace: String,
    /// The current version's summary; `None` for a deleted state whose
    /// history remains.
    pub current: Option<Summary>,
    pub overview: Overview,
    pub lock: Option<LockView>,
    /// Oldest first.
    pub history: Vec<VersionMeta>,
    #[serde(skip)]
    pub state: StateRef,
}

impl StateDetail {
    /// The versions to compare: the ones asked for, else the newest two.
    pub fn default_pair(&self, from: Option<u64>, to: Option<u64>) -> Option<(u64, u64)> {
        let newest = self.history.last()?.version;
        let to = to.unwrap_or(newest);
        let from = from.or_else(|| {
            self.history
                .iter()
                .rev()
                .map(|v| v.version)
                .find(|&v| v < to)
        })?;
        Some((from, to))
    }
}

/// Reads one state's overview, history and lock.
pub async fn state_detail(
    app: &App,
    state: &StateRef,
    stale_after_secs: u64,
) -> Result<StateDetail, ProtocolError> {
    let history = app.states.history(state).await?;
    let body = app.states.get(state).await?;
    if body.is_none() && history.is_empty() {
        return Err(ProtocolError::NotFound(format!(
            "no state stored for {state}"
        )));
    }
    let overview = body.as_deref().map(diff::overview).unwrap_or_default();
    let current = match (&body, history.last()) {
        (Some(b), Some(meta)) if meta.size == b.len() as u64 => Some(Summary::from(meta)),
        (Some(b), _) => {
            let head = crate::state::head::StateHead::parse(b).unwrap_or_default();
            Some(Summary {
                version: 0,
                serial: head.serial,
                lineage: head.lineage,
                resources: head.resources,
                size: b.len() as u64,
                updated: String::new(),
                who: None,
                identity: None,
                operation: "found".into(),
            })
        }
        (None, _) => None,
    };
    Ok(StateDetail {
        key: state.key().to_string(),
        workspace: state.workspace().to_string(),
        current,
        overview,
        lock: lock_view(app, state, stale_after_secs).await?,
        history,
        state: state.clone(),
    })
}

/// What changed between two versions.
#[derive(Debug, Serialize)]
pub struct VersionDiff {
    pub key: String,
    pub workspace: String,
    pub from: u64,
    pub to: u64,
    #[serde(flatten)]
    pub diff: Diff,
}

/// Compares two kept versions (by default the newest two).
pub async fn version_diff(
    app: &App,
    state: &StateRef,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<VersionDiff, ProtocolError> {
    let (from, to) = match (from, to) {
        (Some(f), Some(t)) => (f, t),
        _ => {
            let history = app.states.history(state).await?;
            let detail_pair = StateDetail {
                key: String::new(),
                workspace: String::new(),
                current: None,
                overview: Overview::default(),
                lock: None,
                history,
                state: state.clone(),
            }
            .default_pair(from, to);
            detail_pair.ok_or_else(|| {
                ProtocolError::NotFound(format!("{state} has fewer than two versions to compare"))
            })?
        }
    };
    let old = app.states.version(state, from).await?;
    let new = app.states.version(state, to).await?;
    Ok(VersionDiff {
        key: state.key().to_string(),
        workspace: state.workspace().to_string(),
        from,
        to,
        diff: diff::diff(&old, &new),
    })
}

/// One held lock in the lock list.
#[derive(Debug, Serialize)]
pub struct LockRow {
    pub key: String,
    pub workspace: String,
    pub lock: LockView,
    #[serde(skip)]
    pub state: StateRef,
}

/// Every lock on a state the viewer may read, oldest first.
pub async fn locks(
    app: &App,
    viewer: &Viewer,
    stale_after_secs: u64,
) -> Result<Vec<LockRow>, ProtocolError> {
    let mut out = Vec::new();
    for (state, _) in app.states.locks().await? {
        if !viewer.may_read(&state) {
            continue;
        }
        if let Some(lock) = lock_view(app, &state, stale_after_secs).await? {
            out.push(LockRow {
                key: state.key().to_string(),
                workspace: state.workspace().to_string(),
                lock,
                state,
            });
        }
    }
    out.sort_by_key(|l| std::cmp::Reverse(l.lock.age_seconds));
    Ok(out)
}

fn audit_fields(
    state: &StateRef,
    viewer: &Viewer,
    page: &PageRequest,
) -> Vec<(&'static str, Value)> {
    vec![
        ("state", json!(state.key())),
        ("workspace", json!(state.workspace())),
        ("identity", json!(viewer.identity.as_ref().map(|i| &i.name))),
        ("client", json!(page.client.to_string())),
        ("via", json!("dashboard")),
    ]
}

/// Releases the lock `id` on `state` (the one the page showed: a lock
/// taken since is left alone), audited as a force-unlock.
pub async fn release(
    app: &App,
    state: &StateRef,
    id: &str,
    viewer: &Viewer,
    page: &PageRequest,
) -> Result<(), ProtocolError> {
    let Some(held) = app.states.lock_holder(state).await? else {
        return Ok(());
    };
    if id.is_empty() {
        return Err(ProtocolError::BadRequest(
            "the form names no lock ID".into(),
        ));
    }
    app.states.release(state, Some(id)).await?;
    let mut fields = audit_fields(state, viewer, page);
    fields.push(("lock_id", json!(held.info.id)));
    fields.push(("previous_holder", json!(held.info.who)));
    app.audit.event("force_unlock", &fields);
    app.metrics.force_unlock();
    Ok(())
}

/// Makes version `n` the current state again; refused while the state is
/// locked (whoever holds the lock is in the middle of a change).
pub async fn restore(
    app: &App,
    state: &StateRef,
    n: u64,
    viewer: &Viewer,
    page: &PageRequest,
) -> Result<(), ProtocolError> {
    if let Some(held) = app.states.lock_holder(state).await? {
        return Err(StateError::Locked(held.body).into());
    }
    let body = app.states.version(state, n).await?;
    let opts = WriteOptions {
        skip_lineage_check: true,
        identity: viewer.identity.as_ref().map(|i| i.name.as_str()),
        operation: "restore",
        ..Default::default()
    };
    app.states.write(state, body, opts).await?;
    let mut fields = audit_fields(state, viewer, page);
    fields.push(("restored_version", json!(n)));
    app.audit.event("restore", &fields);
    Ok(())
}

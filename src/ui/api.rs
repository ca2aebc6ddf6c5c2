//! What the dashboard shows, gathered once for the pages and the JSON API
//! (`/api/v1/states`, `/api/v1/states/<key>`, `/api/v1/diff/<key>`,
//! `/api/v1/locks`). The changes an admin may make from a page (lock
//! release, restore) are [`crate::ops`]'s.
//!
//! The state list reads one store listing, keeps the states the caller may
//! read that match the filter, sorts them by last write and reads only the
//! page's summaries and locks: never a state body.
//!
//! The views that do read bodies (a state's overview, a diff) read them a
//! buffer at a time ([`crate::state::diff`]), so what they hold grows with
//! a state's number of resource instances, never with its size in bytes.
//! [`BodyViews`] bounds them further: a body above `ui.max_view_bytes` is
//! refused before it is read, only a few such views run at once, and
//! requests for the same view at once share one computation. A state's
//! history is shown a page at a time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::Full;
use hyper::Response;
use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::inflight::InFlight;
use super::{Query, Viewer};
use crate::protocol::{App, ProtocolError};
use crate::state::diff::{self, Diff, Overview};
use crate::state::head::StateHead;
use crate::state::history::HistoryWindow;
use crate::state::summary::{Listed, Summary};
use crate::state::{StateRef, VersionMeta};
use crate::stores::{Payload, Version};

/// States per page of the list.
pub const PAGE_SIZE: usize = 50;

/// Versions per page of a state's history.
pub const HISTORY_PAGE_SIZE: u64 = 50;

/// Views reading and parsing state bodies at once.
const BODY_VIEWS_AT_ONCE: usize = 2;

/// How long a view waits for its turn before answering 503.
const BODY_VIEW_WAIT: Duration = Duration::from_secs(30);

/// What bounds the views that read state bodies: their size, how many run
/// at once, and one computation for many requests of the same view. One
/// per dashboard.
pub struct BodyViews {
    /// `ui.max_view_bytes`.
    max_bytes: u64,
    /// A view reads every byte of its bodies and holds what it takes down
    /// of them (a diff, of two): few at a time keeps the time and memory
    /// they take bounded however many ask. A turn is held by the work
    /// itself, which goes on when its requests are gone.
    running: Arc<Semaphore>,
    /// Diffs being computed, by state and version pair.
    diffs: InFlight<(StateRef, u64, u64), Diff>,
    /// Overviews being computed, by state and store version of its body.
    overviews: InFlight<(StateRef, String), Overview>,
}

impl BodyViews {
    pub fn new(max_bytes: u64) -> Self {
        BodyViews {
            max_bytes,
            running: Arc::new(Semaphore::new(BODY_VIEWS_AT_ONCE)),
            diffs: InFlight::default(),
            overviews: InFlight::default(),
        }
    }

    /// A turn to read bodies, held until dropped; 503 when the others take
    /// longer than [`BODY_VIEW_WAIT`].
    async fn turn(&self) -> Result<OwnedSemaphorePermit, ProtocolError> {
        let busy = || {
            ProtocolError::Unavailable(
                "the dashboard is busy reading other states; try again shortly".into(),
            )
        };
        match tokio::time::timeout(BODY_VIEW_WAIT, Arc::clone(&self.running).acquire_owned()).await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy()),
        }
    }

    /// Refuses (413) a body of `size` bytes above the limit; `what` names it.
    fn check(&self, what: &str, size: u64) -> Result<(), ProtocolError> {
        if size > self.max_bytes {
            return Err(ProtocolError::TooLargeToShow(format!(
                "{what} is {size} bytes, more than the dashboard shows ({} bytes, ui.max_view_bytes)",
                self.max_bytes
            )));
        }
        Ok(())
    }
}

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

/// How long a lock has been held: since the store wrote it (`taken`),
/// or, where the store keeps no time, since the `Created` its client
/// wrote. A client's clock (or a hostile `Created`) made a live lock look
/// stale, inviting a force-unlock in the middle of an apply.
fn age_seconds(taken: Option<OffsetDateTime>, created: &str) -> Option<u64> {
    let t = taken.or_else(|| OffsetDateTime::parse(created, &Rfc3339).ok())?;
    let age = OffsetDateTime::now_utc() - t;
    u64::try_from(age.whole_seconds()).ok()
}

/// The lock on `state`, if one is held.
pub async fn lock_view(
    app: &App,
    state: &StateRef,
    stale_after_secs: u64,
) -> Result<Option<LockView>, ProtocolError> {
    let taken = app.states.lock_taken(state).await?;
    lock_view_taken(app, state, stale_after_secs, taken).await
}

/// [`lock_view`] of a lock the store wrote at `taken`.
async fn lock_view_taken(
    app: &App,
    state: &StateRef,
    stale_after_secs: u64,
    taken: Option<OffsetDateTime>,
) -> Result<Option<LockView>, ProtocolError> {
    let Some(held) = app.states.lock_holder(state).await? else {
        return Ok(None);
    };
    let info: Map<String, Value> = serde_json::from_slice(&held.body).unwrap_or_default();
    let age = age_seconds(taken, &held.info.created);
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
        lock_view_taken(app, &l.state, stale_after_secs, l.lock_taken).await?
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
    // A page number from the URL may be anything: one past every list is
    // an empty page, never an overflow.
    let start = q.page.saturating_sub(1).checked_mul(PAGE_SIZE);
    let end = start.and_then(|s| s.checked_add(PAGE_SIZE));
    // On S3 and OSS each summary is a round trip: a few at a time.
    let page: Vec<Listed> = match start {
        Some(start) => listed.into_iter().skip(start).take(PAGE_SIZE).collect(),
        None => Vec::new(),
    };
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
        next_page: end
            .filter(|&end| end < total)
            .and_then(|_| q.page.checked_add(1)),
    })
}

/// One state: what it holds by name, a page of its history and its lock.
#[derive(Debug, Serialize)]
pub struct StateDetail {
    pub key: String,
    pub workspace: String,
    /// The current version's summary; `None` for a deleted state whose
    /// history remains.
    pub current: Option<Summary>,
    /// `None` when the body is too large to show (`too_large` says why).
    pub overview: Option<Overview>,
    /// Why the body was not read, when it is too large to show.
    pub too_large: Option<String>,
    pub lock: Option<LockView>,
    /// One page of the history, oldest first.
    pub history: Vec<VersionMeta>,
    /// The `before` of the next (older) page, `None` on the oldest page.
    pub next_before: Option<u64>,
    /// The number of the newest kept version.
    pub newest: Option<u64>,
    #[serde(skip)]
    pub state: StateRef,
    /// The `before` this page was asked for.
    #[serde(skip)]
    pub before: Option<u64>,
}

impl StateDetail {
    /// The versions to compare: the ones asked for, else the newest two of
    /// this page.
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

/// The record of version `n`, `None` when it is not kept.
pub async fn version_record(
    app: &App,
    state: &StateRef,
    n: u64,
) -> Result<Option<VersionMeta>, ProtocolError> {
    // `before: None` starts from the newest, which is right for the
    // highest number there is.
    let window = HistoryWindow {
        before: n.checked_add(1),
        limit: 1,
    };
    let page = app.states.history_page(state, window).await?;
    Ok(page.versions.into_iter().next().filter(|v| v.version == n))
}

/// The newest version below `before` (the newest of all when `None`).
pub async fn newest_below(
    app: &App,
    state: &StateRef,
    before: Option<u64>,
) -> Result<Option<VersionMeta>, ProtocolError> {
    let page = app
        .states
        .history_page(state, HistoryWindow { before, limit: 1 })
        .await?;
    Ok(page.versions.into_iter().next())
}

/// A state's current body as the store hands it out (a large one may stay
/// in a file), with its store version and summary.
pub struct CurrentBody {
    pub body: Payload,
    pub version: Version,
    pub summary: Summary,
}

/// The current body and its summary, from `newest` when that record holds
/// it.
pub async fn current(
    app: &App,
    state: &StateRef,
    newest: Option<&VersionMeta>,
) -> Result<Option<CurrentBody>, ProtocolError> {
    let Some((body, version)) = app.states.read(state).await? else {
        return Ok(None);
    };
    let summary = match newest {
        Some(meta) if meta.size == body.len() => Summary::from(meta),
        _ => {
            // Written by another tool: its head, read a piece at a time.
            let head = StateHead::parse_payload(&body).await.unwrap_or_default();
            Summary {
                version: 0,
                serial: head.serial,
                lineage: head.lineage,
                resources: head.resources,
                size: body.len(),
                updated: String::new(),
                who: None,
                identity: None,
                operation: "found".into(),
            }
        }
    };
    Ok(Some(CurrentBody {
        body,
        version,
        summary,
    }))
}

/// What the current body of `state` holds, read in its turn, once for
/// all who ask at the same time.
async fn overview(
    views: &BodyViews,
    state: &StateRef,
    current: CurrentBody,
) -> Result<Arc<Overview>, ProtocolError> {
    let key = (state.clone(), current.version.0);
    let body = current.body;
    views
        .overviews
        .get_or_compute(key, async || {
            let turn = views.turn().await?;
            // The turn ends with the reading, not with the request: a
            // client that leaves does not free it for another reading.
            let overview = tokio::task::spawn_blocking(move || {
                let _turn = turn;
                diff::overview(&body)
            })
            .await
            .map_err(|e| ProtocolError::Unavailable(format!("reading the state failed: {e}")))??;
            Ok(overview)
        })
        .await
}

/// Reads one state's overview, one page of its history and its lock.
pub async fn state_detail(
    app: &App,
    views: &BodyViews,
    state: &StateRef,
    stale_after_secs: u64,
    window: HistoryWindow,
) -> Result<StateDetail, ProtocolError> {
    let page = app.states.history_page(state, window).await?;
    let newest = match window.before {
        None => page.versions.first().cloned(),
        Some(_) => newest_below(app, state, None).await?,
    };
    let current = current(app, state, newest.as_ref()).await?;
    if current.is_none() && newest.is_none() {
        return Err(ProtocolError::NotFound(format!(
            "no state stored for {state}"
        )));
    }
    let (overview, too_large, current) = match current {
        None => (Some(Overview::default()), None, None),
        Some(current) => {
            let summary = current.summary.clone();
            let size = current.body.len();
            match views.check(&format!("the current state of {state}"), size) {
                Err(e) => (None, Some(e.to_string()), Some(summary)),
                Ok(()) => {
                    let overview = overview(views, state, current).await?;
                    (Some(Arc::unwrap_or_clone(overview)), None, Some(summary))
                }
            }
        }
    };
    let mut history = page.versions;
    history.reverse();
    Ok(StateDetail {
        key: state.key().to_string(),
        workspace: state.workspace().to_string(),
        current,
        overview,
        too_large,
        lock: lock_view(app, state, stale_after_secs).await?,
        history,
        next_before: page.next_before,
        newest: newest.map(|v| v.version),
        state: state.clone(),
        before: window.before,
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
    pub diff: Arc<Diff>,
}

/// Compares two kept versions (by default the newest two); 413 when
/// either is larger than `ui.max_view_bytes`, found from its record before
/// the body is read. Runs in its turn, once for all who ask for the same
/// pair at the same time.
pub async fn version_diff(
    app: &App,
    views: &BodyViews,
    state: &StateRef,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<VersionDiff, ProtocolError> {
    let fewer =
        || ProtocolError::NotFound(format!("{state} has fewer than two versions to compare"));
    let missing = |n: u64| ProtocolError::NotFound(format!("{state} has no version {n}"));
    let to_meta = match to {
        Some(n) => version_record(app, state, n)
            .await?
            .ok_or_else(|| missing(n))?,
        None => newest_below(app, state, None).await?.ok_or_else(fewer)?,
    };
    let from_meta = match from {
        Some(n) => version_record(app, state, n)
            .await?
            .ok_or_else(|| missing(n))?,
        None => newest_below(app, state, Some(to_meta.version))
            .await?
            .ok_or_else(fewer)?,
    };
    for meta in [&from_meta, &to_meta] {
        views.check(&format!("version {} of {state}", meta.version), meta.size)?;
    }
    let (from, to) = (from_meta.version, to_meta.version);
    let diff = views
        .diffs
        .get_or_compute((state.clone(), from, to), async || {
            let turn = views.turn().await?;
            // Run to its end with its turn, whether or not anyone still
            // waits (see `overview`).
            let (states, state) = (app.states.clone(), state.clone());
            let diff = tokio::spawn(async move {
                let _turn = turn;
                states.version_diff(&state, from, to).await
            })
            .await
            .map_err(|e| ProtocolError::Unavailable(format!("the diff failed: {e}")))?;
            Ok::<_, ProtocolError>(diff?)
        })
        .await?;
    Ok(VersionDiff {
        key: state.key().to_string(),
        workspace: state.workspace().to_string(),
        from,
        to,
        diff,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::summary::Summary;

    /// A view's turn is held by its reading, not by its request: a client
    /// that leaves at once does not free the turn while the reading goes
    /// on, so clients that ask and leave cannot run more readings at once
    /// than [`BODY_VIEWS_AT_ONCE`].
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_view_keeps_its_turn_when_its_client_leaves() {
        let views = Arc::new(BodyViews::new(u64::MAX));
        let resource = r#"{"mode":"managed","type":"t","name":"n","provider":"p","instances":[{"attributes":{"v":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}]}"#;
        let body = format!(
            r#"{{"version":4,"serial":1,"lineage":"L","outputs":{{}},"resources":[{}]}}"#,
            vec![resource; 300_000].join(",")
        );
        let current = CurrentBody {
            body: Payload::Memory(bytes::Bytes::from(body)),
            version: Version("1".into()),
            summary: Summary {
                version: 1,
                serial: Some(1),
                lineage: Some("L".into()),
                resources: 300_000,
                size: 0,
                updated: String::new(),
                who: None,
                identity: None,
                operation: "write".into(),
            },
        };
        let asking = {
            let views = Arc::clone(&views);
            tokio::spawn(async move {
                let state = StateRef::parse("big", None).unwrap();
                let _ = overview(&views, &state, current).await;
            })
        };
        while views.running.available_permits() == BODY_VIEWS_AT_ONCE {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        asking.abort();
        let _ = asking.await;
        assert_eq!(
            views.running.available_permits(),
            BODY_VIEWS_AT_ONCE - 1,
            "the turn was given back while the reading went on"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while views.running.available_permits() < BODY_VIEWS_AT_ONCE {
            assert!(
                std::time::Instant::now() < deadline,
                "the reading never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

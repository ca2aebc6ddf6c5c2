//! The dashboard's HTML: askama templates in `src/ui/templates/`, compiled
//! into the binary and escaped by default. Each page is a view struct of
//! strings prepared here, so the templates only lay them out. No script:
//! every page works without JavaScript, and forms are plain POSTs.

use askama::Template;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::api::{LockRow, LockView, StateDetail, StateList, VersionDiff};
use super::{Query, Viewer};
use crate::state::StateRef;
use crate::state::diff::Diff;

/// Characters left as they are in a key's URL path (its `/` included).
const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn query_value(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// `?workspace=<w>` for a non-default workspace, else nothing.
fn workspace_query(state: &StateRef) -> String {
    if state.workspace() == crate::state::key::DEFAULT_WORKSPACE {
        String::new()
    } else {
        format!("?workspace={}", query_value(state.workspace()))
    }
}

fn with_param(url: String, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

fn key_path(state: &StateRef) -> String {
    percent_encoding::utf8_percent_encode(state.key(), PATH).to_string()
}

/// The state page's URL.
pub fn state_url(base: &str, state: &StateRef) -> String {
    format!(
        "{base}/ui/states/{}{}",
        key_path(state),
        workspace_query(state)
    )
}

fn lock_url(base: &str, state: &StateRef) -> String {
    format!(
        "{base}/ui/locks/{}{}",
        key_path(state),
        workspace_query(state)
    )
}

pub(super) fn restore_url(base: &str, state: &StateRef) -> String {
    format!(
        "{base}/ui/restore/{}{}",
        key_path(state),
        workspace_query(state)
    )
}

/// Bytes as people read them.
pub(super) fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// An age as people read it.
pub(super) fn human_age(secs: Option<u64>) -> String {
    let Some(s) = secs else {
        return "unknown".into();
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// An RFC 3339 time shortened to the minute, in UTC.
pub(super) fn short_time(t: Option<&str>) -> String {
    match t {
        Some(t) if t.len() >= 16 => format!("{} {}", &t[..10], &t[11..16]),
        Some(t) if !t.is_empty() => t.to_string(),
        _ => "-".into(),
    }
}

pub(super) fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

pub(super) fn html(body: String) -> Response<Full<Bytes>> {
    super::typed(body, "text/html; charset=utf-8")
}

pub(super) fn render(t: &impl Template) -> String {
    // The view structs hold only strings and numbers: rendering cannot fail.
    t.render()
        .unwrap_or_else(|e| format!("rendering failed: {e}"))
}

/// What the layout needs.
pub(super) struct Layout<'a> {
    pub(super) base: &'a str,
    pub(super) title: String,
    pub(super) who: String,
    /// Why the store takes no changes now (read-only, or degraded).
    pub(super) writes_refused: String,
    /// Notifications given up on, shown as a banner when there are any.
    pub(super) undelivered: usize,
}

impl<'a> Layout<'a> {
    pub(super) fn new(base: &'a str, title: impl Into<String>, viewer: Option<&Viewer>) -> Self {
        Layout {
            base,
            title: title.into(),
            who: viewer.map(|v| v.name().to_string()).unwrap_or_default(),
            writes_refused: viewer
                .and_then(|v| v.writes_refused.clone())
                .unwrap_or_default(),
            undelivered: viewer.map_or(0, |v| v.undelivered),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: Layout<'a>,
    status: u16,
    reason: String,
    message: &'a str,
}

/// An error page.
pub fn error_page(base: &str, status: StatusCode, message: &str) -> String {
    render(&ErrorPage {
        layout: Layout::new(
            base,
            format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ),
            None,
        ),
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_string(),
        message,
    })
}

struct LockCell {
    who: String,
    age: String,
    stale: bool,
    url: String,
}

struct RowView {
    key: String,
    workspace: String,
    url: String,
    serial: String,
    resources: usize,
    size: String,
    updated: String,
    writer: String,
    lock: Option<LockCell>,
}

#[derive(Template)]
#[template(path = "states.html")]
struct StatesPage<'a> {
    layout: Layout<'a>,
    rows: Vec<RowView>,
    prefix: String,
    workspace: String,
    total: usize,
    page: usize,
    prev_url: Option<String>,
    next_url: Option<String>,
    stale_hours: u64,
}

/// The state list.
pub fn states(
    base: &str,
    viewer: &Viewer,
    q: &Query,
    list: &StateList,
    stale_after_secs: u64,
) -> Response<Full<Bytes>> {
    let rows = list
        .states
        .iter()
        .filter_map(|r| {
            let state = r.state.as_ref()?;
            Some(RowView {
                key: r.key.clone(),
                workspace: r.workspace.clone(),
                url: state_url(base, state),
                serial: or_dash(r.serial),
                resources: r.resources,
                size: human_size(r.size),
                updated: short_time(r.updated.as_deref()),
                writer: r.writer.clone().unwrap_or_else(|| "-".into()),
                lock: r.lock.as_ref().map(|l| LockCell {
                    who: l.field("Who").to_string(),
                    age: human_age(l.age_seconds),
                    stale: l.stale,
                    url: lock_url(base, state),
                }),
            })
        })
        .collect();
    let page_url = |n: usize| {
        let mut url = format!("{base}/ui/?page={n}");
        if !q.prefix.is_empty() {
            url = with_param(url, &format!("prefix={}", query_value(&q.prefix)));
        }
        if let Some(w) = &q.workspace {
            url = with_param(url, &format!("workspace={}", query_value(w)));
        }
        url
    };
    html(render(&StatesPage {
        layout: Layout::new(base, "States", Some(viewer)),
        rows,
        prefix: q.prefix.clone(),
        workspace: q.workspace.clone().unwrap_or_default(),
        total: list.total,
        page: list.page,
        prev_url: (list.page > 1).then(|| page_url(list.page - 1)),
        next_url: list.next_page.map(page_url),
        stale_hours: stale_after_secs / 3600,
    }))
}

struct LockListRow {
    key: String,
    workspace: String,
    who: String,
    operation: String,
    age: String,
    stale: bool,
    url: String,
}

#[derive(Template)]
#[template(path = "locks.html")]
struct LocksPage<'a> {
    layout: Layout<'a>,
    rows: Vec<LockListRow>,
}

/// Every held lock.
pub fn locks(base: &str, viewer: &Viewer, locks: &[LockRow]) -> Response<Full<Bytes>> {
    let rows = locks
        .iter()
        .map(|l| LockListRow {
            key: l.key.clone(),
            workspace: l.workspace.clone(),
            who: l.lock.field("Who").to_string(),
            operation: l.lock.field("Operation").to_string(),
            age: human_age(l.lock.age_seconds),
            stale: l.lock.stale,
            url: lock_url(base, &l.state),
        })
        .collect();
    html(render(&LocksPage {
        layout: Layout::new(base, "Locks", Some(viewer)),
        rows,
    }))
}

/// A line chart of `values`, as SVG polyline points in a 300x60 box.
struct Chart {
    label: &'static str,
    points: String,
    max: String,
    min: String,
}

fn chart(label: &'static str, values: &[u64], show: fn(u64) -> String) -> Chart {
    let (w, h, pad) = (300.0, 60.0, 4.0);
    let max = values.iter().copied().max().unwrap_or(0);
    let min = values.iter().copied().min().unwrap_or(0);
    let span = (max - min).max(1) as f64;
    let step = if values.len() > 1 {
        (w - 2.0 * pad) / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let x = pad + step * i as f64;
            // A constant series is drawn across the middle.
            let y = if max == min {
                h / 2.0
            } else {
                h - pad - (v - min) as f64 / span * (h - 2.0 * pad)
            };
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    Chart {
        label,
        points,
        max: show(max),
        min: show(min),
    }
}

struct TypeRow {
    name: String,
    resources: usize,
    instances: usize,
}

struct VersionRow {
    number: u64,
    created: String,
    serial: String,
    writer: String,
    lock_id: String,
    size: String,
    resources: usize,
    operation: String,
    restore_url: Option<String>,
    current: bool,
}

pub(super) struct ChangedRow {
    pub(super) address: String,
    pub(super) attributes: String,
}

pub(super) struct DiffView {
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) added: Vec<String>,
    pub(super) removed: Vec<String>,
    pub(super) changed: Vec<ChangedRow>,
    pub(super) outputs_added: Vec<String>,
    pub(super) outputs_removed: Vec<String>,
    pub(super) outputs_changed: Vec<String>,
    pub(super) empty: bool,
}

pub(super) fn diff_view(d: &VersionDiff) -> DiffView {
    DiffView {
        from: d.from,
        to: d.to,
        added: d.diff.added.clone(),
        removed: d.diff.removed.clone(),
        changed: d
            .diff
            .changed
            .iter()
            .map(|c| ChangedRow {
                address: c.address.clone(),
                attributes: c.attributes.join(", "),
            })
            .collect(),
        outputs_added: d.diff.outputs_added.clone(),
        outputs_removed: d.diff.outputs_removed.clone(),
        outputs_changed: d.diff.outputs_changed.clone(),
        empty: *d.diff == Diff::default(),
    }
}

#[derive(Template)]
#[template(path = "state.html")]
struct StatePage<'a> {
    layout: Layout<'a>,
    key: String,
    workspace: String,
    serial: String,
    lineage: String,
    size: String,
    updated: String,
    writer: String,
    resources: usize,
    instances: usize,
    types: Vec<TypeRow>,
    outputs: Vec<String>,
    lock: Option<LockCell>,
    charts: Vec<Chart>,
    versions: Vec<VersionRow>,
    numbers: Vec<u64>,
    diff: Option<DiffView>,
    /// Why the diff is not shown.
    diff_refused: Option<String>,
    /// Why what the state holds is not shown.
    too_large: Option<String>,
    form_action: String,
    workspace_field: Option<String>,
    before_field: Option<u64>,
    /// The next (older) page of history.
    older_url: Option<String>,
    /// The first page of history, when this is not it.
    newest_url: Option<String>,
}

/// One state: what it holds, a page of its history, a diff (or why it is
/// not shown), its lock.
pub fn state(
    base: &str,
    viewer: &Viewer,
    detail: &StateDetail,
    diff: Option<&Result<VersionDiff, String>>,
) -> Response<Full<Bytes>> {
    let st = &detail.state;
    let admin = viewer.is_admin(st);
    let current_version = detail.current.as_ref().map(|c| c.version);
    let versions: Vec<VersionRow> = detail
        .history
        .iter()
        .rev()
        .map(|v| VersionRow {
            number: v.version,
            created: short_time(Some(&v.created)),
            serial: or_dash(v.serial),
            writer: v
                .identity
                .clone()
                .or_else(|| v.who.clone())
                .unwrap_or_else(|| "-".into()),
            lock_id: v.lock_id.clone().unwrap_or_else(|| "-".into()),
            size: human_size(v.size),
            resources: v.resources,
            operation: v.operation.clone(),
            restore_url: (admin && Some(v.version) != current_version)
                .then(|| with_param(restore_url(base, st), &format!("version={}", v.version))),
            current: Some(v.version) == current_version,
        })
        .collect();
    let resources: Vec<u64> = detail.history.iter().map(|v| v.resources as u64).collect();
    let sizes: Vec<u64> = detail.history.iter().map(|v| v.size).collect();
    let charts = if detail.history.len() > 1 {
        vec![
            chart("Resources", &resources, |v| v.to_string()),
            chart("Size", &sizes, human_size),
        ]
    } else {
        Vec::new()
    };
    let (diff, diff_refused) = match diff {
        Some(Ok(d)) => (Some(diff_view(d)), None),
        Some(Err(why)) => (None, Some(why.clone())),
        None => (None, None),
    };
    let current = detail.current.as_ref();
    let overview = detail.overview.clone().unwrap_or_default();
    html(render(&StatePage {
        layout: Layout::new(base, detail.key.clone(), Some(viewer)),
        key: detail.key.clone(),
        workspace: detail.workspace.clone(),
        serial: or_dash(current.and_then(|c| c.serial)),
        lineage: or_dash(current.and_then(|c| c.lineage.clone())),
        size: current.map_or("-".into(), |c| human_size(c.size)),
        updated: short_time(current.map(|c| c.updated.as_str())),
        writer: current.and_then(|c| c.writer()).unwrap_or("-").to_string(),
        resources: overview.resources,
        instances: overview.instances,
        types: overview
            .types
            .iter()
            .map(|t| TypeRow {
                name: t.type_name.clone(),
                resources: t.resources,
                instances: t.instances,
            })
            .collect(),
        outputs: overview.outputs.clone(),
        lock: detail.lock.as_ref().map(|l| LockCell {
            who: l.field("Who").to_string(),
            age: human_age(l.age_seconds),
            stale: l.stale,
            url: lock_url(base, st),
        }),
        charts,
        numbers: detail.history.iter().rev().map(|v| v.version).collect(),
        versions,
        diff,
        diff_refused,
        too_large: detail.too_large.clone(),
        form_action: format!("{base}/ui/states/{}", key_path(st)),
        workspace_field: (st.workspace() != crate::state::key::DEFAULT_WORKSPACE)
            .then(|| st.workspace().to_string()),
        before_field: detail.before,
        older_url: detail.next_before.map(|b| {
            format!(
                "{}#history",
                with_param(state_url(base, st), &format!("before={b}"))
            )
        }),
        newest_url: detail
            .before
            .map(|_| format!("{}#history", state_url(base, st))),
    }))
}

struct Field {
    name: String,
    value: String,
}

#[derive(Template)]
#[template(path = "lock.html")]
struct LockPage<'a> {
    layout: Layout<'a>,
    key: String,
    workspace: String,
    state_url: String,
    held: bool,
    fields: Vec<Field>,
    id: String,
    age: String,
    stale: bool,
    terraform_command: String,
    stategate_command: String,
    release_url: Option<String>,
    csrf: &'a str,
}

/// Shell-quotes a word for a command shown to copy.
fn shell_word(w: &str) -> String {
    if !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@".contains(&b))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// One lock, with the commands that release it.
pub fn lock(
    base: &str,
    viewer: &Viewer,
    state: &StateRef,
    lock: Option<&LockView>,
    csrf: &str,
) -> Response<Full<Bytes>> {
    let id = lock.map(|l| l.field("ID").to_string()).unwrap_or_default();
    let mut stategate_command = format!("stategate lock release {}", shell_word(state.key()));
    if state.workspace() != crate::state::key::DEFAULT_WORKSPACE {
        stategate_command.push_str(&format!(" --workspace {}", shell_word(state.workspace())));
    }
    // This lock and no other: one taken since the page was shown stays.
    if lock.is_some() {
        stategate_command.push_str(&format!(" --id {}", shell_word(&id)));
    }
    let fields = lock
        .map(|l| {
            l.info
                .iter()
                .map(|(k, v)| Field {
                    name: k.clone(),
                    value: match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    html(render(&LockPage {
        layout: Layout::new(base, format!("Lock on {}", state.key()), Some(viewer)),
        key: state.key().to_string(),
        workspace: state.workspace().to_string(),
        state_url: state_url(base, state),
        held: lock.is_some(),
        fields,
        terraform_command: format!("terraform force-unlock {}", shell_word(&id)),
        id,
        age: human_age(lock.and_then(|l| l.age_seconds)),
        stale: lock.is_some_and(|l| l.stale),
        stategate_command,
        release_url: (lock.is_some() && viewer.is_admin(state)).then(|| lock_url(base, state)),
        csrf,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_keys_and_workspaces() {
        let s = StateRef::parse("team-a/net.tfstate", Some("dev")).unwrap();
        assert_eq!(
            state_url("/tf", &s),
            "/tf/ui/states/team-a/net.tfstate?workspace=dev"
        );
        let d = StateRef::parse("x", None).unwrap();
        assert_eq!(
            with_param(state_url("", &d), "from=1"),
            "/ui/states/x?from=1"
        );
    }

    #[test]
    fn shell_words_are_quoted() {
        assert_eq!(shell_word("a/b.tfstate"), "a/b.tfstate");
        assert_eq!(shell_word("it's here"), r"'it'\''s here'");
    }

    #[test]
    fn charts_fit_the_box() {
        let c = chart("Resources", &[1, 3, 2], |v| v.to_string());
        assert_eq!(c.points, "4.0,56.0 150.0,4.0 296.0,30.0");
        assert_eq!((c.min.as_str(), c.max.as_str()), ("1", "3"));
    }

    #[test]
    fn pages_escape_what_they_show() {
        let page = error_page("", StatusCode::NOT_FOUND, "<script>alert(1)</script>");
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&#60;script&#62;"), "{page}");
    }
}

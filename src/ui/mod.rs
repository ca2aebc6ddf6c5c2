//! The dashboard: server-rendered pages at `/ui/` and the JSON API they
//! and scripts read at `/api/v1/`, both below `base_path`.
//!
//! The protocol hands these URLs over through [`crate::protocol::Pages`]
//! after its base path, listener and origin checks, so they share the
//! request id, the access log and the metrics. Here they get:
//!
//! - the same identities and read rules as the state URLs: a key the
//!   caller may not read is never listed, and asking for it is a 403, as
//!   on `/states/<key>`; with no authentication everyone is an admin;
//! - state content by name only: resource types and addresses, output
//!   names, attribute names in a diff, never a value ([`crate::state::diff`]);
//! - two changes an admin may make, lock release and restore, as form
//!   POSTs carrying a CSRF token ([`csrf`]), made by [`crate::ops`] as
//!   every other entry point makes them (a restore while the state is
//!   locked needs the form's `force`);
//! - security headers on every answer: a CSP allowing only the embedded
//!   stylesheet, no framing, no referrer.
//!
//! - [`explore`]: the fleet search, `/api/v1/search` and the Explore page,
//!   over [`crate::explore`]'s index.
//! - [`api`]: what the pages show, gathered once, and the JSON endpoints;
//!   [`inflight`] lets requests for the same view at once share one
//!   computation.
//! - [`pages`]: the HTML pages, compiled askama templates, and
//!   [`restore`], the restore confirmation.
//! - [`config`]: the `ui:` settings.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::auth::decide::{Decision, decide};
use crate::auth::{Access, Auth, Identity};
use crate::ops::{Actor, Target, Via};
use crate::protocol::{App, PageRequest, Pages, ProtocolError, access};
use crate::state::StateRef;
use crate::state::history::HistoryWindow;

pub mod api;
pub mod config;
pub mod csrf;
pub mod explore;
pub mod inflight;
pub mod notifications;
pub mod pages;
pub mod restore;

pub use config::UiSettings;

/// The dashboard and its API, as handed to [`App::pages`].
pub struct Dashboard {
    csrf: csrf::Csrf,
    /// Locks older than this are shown as stale.
    stale_after_secs: u64,
    /// Bounds on the views that read state bodies.
    views: api::BodyViews,
    /// The index fleet searches read.
    explorer: crate::explore::Explorer,
}

impl Dashboard {
    /// A dashboard with `settings`; makes a CSRF key when none is set
    /// (right for a single replica only: forms served by one replica
    /// would be refused by another).
    pub fn new(
        settings: &UiSettings,
        explorer: crate::explore::Explorer,
    ) -> Result<Self, getrandom::Error> {
        Ok(Dashboard {
            csrf: csrf::Csrf::new(settings.csrf_key.clone())?,
            stale_after_secs: settings.stale_lock_hours.saturating_mul(3600),
            views: api::BodyViews::new(settings.max_view_bytes),
            explorer,
        })
    }
}

/// Who is looking, and what they may see.
#[derive(Clone)]
pub struct Viewer {
    /// `None` when no authentication is configured: everyone is an admin.
    identity: Option<Identity>,
    auth: Option<Arc<Auth>>,
    /// Why the store takes no changes now, shown on every page.
    writes_refused: Option<String>,
    /// Notifications given up on, counted in a banner on every page; 0
    /// for a viewer who may not read every state (the count is over all).
    undelivered: usize,
}

impl Viewer {
    /// The caller's level on `state`.
    pub fn level(&self, state: &StateRef) -> Option<Access> {
        match &self.identity {
            None => Some(Access::Admin),
            Some(identity) => identity.access(state),
        }
    }

    /// Whether the caller may see `state` at all: read access, as the
    /// state's history needs.
    pub fn may_read(&self, state: &StateRef) -> bool {
        self.level(state).is_some_and(|l| l >= Access::Read)
    }

    /// Whether the caller may release locks and restore versions: admin
    /// access that the state's protection lets change it.
    pub fn is_admin(&self, state: &StateRef) -> bool {
        match (&self.auth, &self.identity) {
            (Some(auth), Some(identity)) => matches!(
                decide(auth, identity, state, Access::Admin, "administer"),
                Decision::Allow(_)
            ),
            _ => true,
        }
    }

    /// Notifications given up on, as this viewer may know the count.
    pub fn undelivered(&self) -> usize {
        self.undelivered
    }

    /// The identity's name, empty when no authentication is configured.
    pub fn name(&self) -> &str {
        self.identity.as_ref().map_or("", |i| i.name.as_str())
    }

    /// Refuses with 403 (audited) unless the caller may `verb` `state`,
    /// which needs `needed` (the same decision as on the state URLs);
    /// otherwise the caller as the operations see it.
    async fn require(
        &self,
        app: &App,
        state: &StateRef,
        needed: Access,
        verb: &str,
        page: &PageRequest,
    ) -> Result<Actor, ProtocolError> {
        let level = match (&self.auth, &self.identity) {
            (Some(auth), Some(identity)) => {
                let from = (page.client, Via::Dashboard);
                Some(access::permit(app, auth, identity, state, needed, verb, from).await?)
            }
            _ => None,
        };
        Ok(Actor {
            identity: self.identity.as_ref().map(|i| i.name.clone()),
            level,
            client: Some(page.client),
            via: Via::Dashboard,
        })
    }
}

/// Authenticates the request as the state URLs do.
async fn viewer(
    app: &App,
    req: &Request<Incoming>,
    page: &PageRequest,
) -> Result<Viewer, ProtocolError> {
    let writes_refused = app.states.store().writes().refused.map(|e| e.to_string());
    let undelivered = app.notifier().map_or(0, |n| n.undelivered());
    let auth = app.auth.read().expect("auth lock").clone();
    let Some(auth) = auth else {
        return Ok(Viewer {
            identity: None,
            auth: None,
            writes_refused,
            undelivered,
        });
    };
    let identity = access::authenticate(
        app,
        &auth,
        req.headers(),
        page.certificate_cn.as_deref(),
        page.client,
        Via::Dashboard,
        || Target::Url(page.path.clone()),
    )
    .await?;
    // A count over every state, shown to those who may read them all.
    let undelivered = if identity.reads_everything() {
        undelivered
    } else {
        0
    };
    Ok(Viewer {
        identity: Some(identity),
        auth: Some(auth),
        writes_refused,
        undelivered,
    })
}

/// The query parameters the dashboard reads.
#[derive(Debug, Default)]
pub struct Query {
    pub workspace: Option<String>,
    pub prefix: String,
    pub page: usize,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub version: Option<u64>,
    /// History page: versions numbered below this.
    pub before: Option<u64>,
    /// History page: how many versions.
    pub limit: Option<u64>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Result<Self, ProtocolError> {
        let number = |name: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| ProtocolError::BadRequest(format!("{name} {v:?} is not a number")))
        };
        let mut q = Query {
            page: 1,
            ..Default::default()
        };
        let known = [
            "workspace",
            "prefix",
            "page",
            "before",
            "limit",
            "from",
            "to",
            "version",
        ];
        for (k, v) in crate::protocol::routes::query_pairs(raw, &known)? {
            match k.as_ref() {
                "workspace" if !v.is_empty() => q.workspace = Some(v),
                "prefix" => q.prefix = v,
                "page" if !v.is_empty() => {
                    // Past the largest index there is no page: the last
                    // one possible stands for all of them (it is empty).
                    q.page = usize::try_from(number("page", &v)?.max(1)).unwrap_or(usize::MAX);
                }
                "before" if !v.is_empty() => q.before = Some(number("before", &v)?),
                "limit" if !v.is_empty() => q.limit = Some(number("limit", &v)?),
                "from" if !v.is_empty() => q.from = Some(number("from", &v)?),
                "to" if !v.is_empty() => q.to = Some(number("to", &v)?),
                "version" if !v.is_empty() => q.version = Some(number("version", &v)?),
                _ => {}
            }
        }
        Ok(q)
    }

    /// The page of history asked for: `limit` versions (by default
    /// [`api::HISTORY_PAGE_SIZE`]) below `before`.
    fn history_window(&self) -> Result<HistoryWindow, ProtocolError> {
        let limit = self.limit.unwrap_or(api::HISTORY_PAGE_SIZE);
        Ok(HistoryWindow::new(Some(limit), self.before)?)
    }

    /// The state named by a key from the path and this query's workspace.
    fn state(&self, raw_key: &str) -> Result<StateRef, ProtocolError> {
        let key = percent_encoding::percent_decode_str(raw_key)
            .decode_utf8()
            .map_err(|_| ProtocolError::BadRequest("the state key is not valid UTF-8".into()))?;
        StateRef::parse(&key, self.workspace.as_deref()).map_err(|e| ProtocolError::BadRequest(e.0))
    }
}

/// The largest form body accepted (a token and a number or an ID).
const MAX_FORM_BYTES: usize = 16 * 1024;

/// Reads a small `application/x-www-form-urlencoded` body.
async fn read_form(req: Request<Incoming>) -> Result<Vec<(String, String)>, ProtocolError> {
    let body = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| ProtocolError::TooLarge(MAX_FORM_BYTES as u64))?
        .to_bytes();
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

fn form_field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A yes-or-no form field: absent or `0`/`false`/`off` is no; `1`,
/// `true`, `on` (what a ticked checkbox sends) or `yes` is yes; anything
/// else is refused rather than guessed.
fn form_flag(form: &[(String, String)], name: &str) -> Result<bool, ProtocolError> {
    match form_field(form, name)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("" | "0" | "false" | "off" | "no") => Ok(false),
        Some("1" | "true" | "on" | "yes") => Ok(true),
        Some(other) => Err(ProtocolError::BadRequest(format!(
            "{name} must be true or false, not {other:?}"
        ))),
    }
}

/// What one dashboard URL is.
enum Route<'a> {
    RedirectHome,
    Style,
    StatesPage,
    StatePage(&'a str),
    LocksPage,
    NotificationsPage,
    ExplorePage,
    LockPage(&'a str),
    Release(&'a str),
    RestoreConfirm(&'a str),
    Restore(&'a str),
    ApiStates,
    ApiState(&'a str),
    ApiDiff(&'a str),
    ApiLocks,
    ApiSearch,
}

impl Route<'_> {
    fn template(&self) -> &'static str {
        match self {
            Route::RedirectHome | Route::StatesPage => "/ui/",
            Route::Style => "/ui/style.css",
            Route::StatePage(_) => "/ui/states/{key}",
            Route::LocksPage => "/ui/locks",
            Route::NotificationsPage => "/ui/notifications",
            Route::ExplorePage => "/ui/explore",
            Route::LockPage(_) | Route::Release(_) => "/ui/locks/{key}",
            Route::RestoreConfirm(_) | Route::Restore(_) => "/ui/restore/{key}",
            Route::ApiStates => "/api/v1/states",
            Route::ApiState(_) => "/api/v1/states/{key}",
            Route::ApiDiff(_) => "/api/v1/diff/{key}",
            Route::ApiLocks => "/api/v1/locks",
            Route::ApiSearch => "/api/v1/search",
        }
    }
}

fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, ProtocolError> {
    let get = matches!(*method, Method::GET | Method::HEAD);
    let post = *method == Method::POST;
    let not_found = || {
        ProtocolError::NotFound(format!(
            "no such URL {path:?}; the dashboard is at /ui/, its API at /api/v1/"
        ))
    };
    let key_after = |prefix: &str| path.strip_prefix(prefix).filter(|k| !k.is_empty());
    let r = if path == "/ui" {
        Route::RedirectHome
    } else if path == "/ui/" {
        Route::StatesPage
    } else if path == "/ui/style.css" {
        Route::Style
    } else if path == "/ui/locks" {
        Route::LocksPage
    } else if path == "/ui/notifications" {
        Route::NotificationsPage
    } else if path == "/ui/explore" {
        Route::ExplorePage
    } else if let Some(k) = key_after("/ui/states/") {
        Route::StatePage(k)
    } else if let Some(k) = key_after("/ui/locks/") {
        if post {
            return Ok(Route::Release(k));
        }
        Route::LockPage(k)
    } else if let Some(k) = key_after("/ui/restore/") {
        if post {
            return Ok(Route::Restore(k));
        }
        Route::RestoreConfirm(k)
    } else if path == "/api/v1/states" {
        Route::ApiStates
    } else if let Some(k) = key_after("/api/v1/states/") {
        Route::ApiState(k)
    } else if let Some(k) = key_after("/api/v1/diff/") {
        Route::ApiDiff(k)
    } else if path == "/api/v1/locks" {
        Route::ApiLocks
    } else if path == "/api/v1/search" {
        Route::ApiSearch
    } else {
        return Err(not_found());
    };
    if get {
        Ok(r)
    } else {
        Err(ProtocolError::MethodNotAllowed(match r {
            Route::LockPage(_) | Route::RestoreConfirm(_) => "GET, HEAD, POST",
            _ => "GET, HEAD",
        }))
    }
}

const STYLE: &str = include_str!("style.css");

/// The headers every dashboard answer carries.
fn secure(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = r.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// A response with `content_type`.
pub(crate) fn typed(body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A 303 to `location` (after a form POST, so a reload does not repeat it).
pub(crate) fn see_other(location: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// An error as JSON (`{"error": "..."}`) or as a page, with the status and
/// headers (`WWW-Authenticate`, `Allow`, `Retry-After`) the state URLs give.
fn error_response(e: ProtocolError, api: bool, base: &str) -> Response<Full<Bytes>> {
    let message = e.to_string();
    let status = e.status();
    let (mut parts, _) = e.into_response().into_parts();
    let body = if api {
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        serde_json::to_vec(&json!({ "error": message })).expect("JSON serialises")
    } else {
        parts.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        pages::error_page(base, status, &message).into_bytes()
    };
    Response::from_parts(parts, Full::new(Bytes::from(body)))
}

#[async_trait::async_trait]
impl Pages for Dashboard {
    fn serves(&self, path: &str) -> bool {
        path == "/ui" || path.starts_with("/ui/") || path.starts_with("/api/v1/")
    }

    async fn handle(
        &self,
        app: &App,
        req: Request<Incoming>,
        page: &mut PageRequest,
    ) -> Response<Full<Bytes>> {
        let api = page.path.starts_with("/api/");
        let path = page.path.clone();
        let result = match route(req.method(), &path) {
            Ok(r) => {
                page.route = r.template();
                self.answer(app, req, page, r).await
            }
            Err(e) => Err(e),
        };
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(url = %page.path, reason = %e, "dashboard request refused");
                error_response(e, api, &app.base_path)
            }
        };
        secure(response)
    }
}

/// The diff a page shows between two versions. One too large to show is
/// given as the reason instead, so the page still shows what it can.
async fn page_diff(
    app: &App,
    views: &api::BodyViews,
    state: &StateRef,
    from: u64,
    to: u64,
) -> Result<Result<api::VersionDiff, String>, ProtocolError> {
    match api::version_diff(app, views, state, Some(from), Some(to)).await {
        Ok(diff) => Ok(Ok(diff)),
        Err(e @ ProtocolError::TooLargeToShow(_)) => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

impl Dashboard {
    async fn answer(
        &self,
        app: &App,
        req: Request<Incoming>,
        page: &mut PageRequest,
        route: Route<'_>,
    ) -> Result<Response<Full<Bytes>>, ProtocolError> {
        let base = app.base_path.as_str();
        match route {
            Route::RedirectHome => return Ok(see_other(&format!("{base}/ui/"))),
            Route::Style => {
                let mut r = typed(STYLE, "text/css; charset=utf-8");
                r.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
                return Ok(r);
            }
            _ => {}
        }
        let viewer = viewer(app, &req, page).await?;
        page.identity = viewer.identity.as_ref().map(|i| i.name.clone());
        let q = Query::parse(req.uri().query())?;
        let stale = self.stale_after_secs;
        let views = &self.views;
        let keyed = |raw: &str, page: &mut PageRequest| -> Result<StateRef, ProtocolError> {
            let state = app.states.canonical(&q.state(raw)?)?;
            page.state = Some(state.to_string());
            Ok(state)
        };
        // A state the viewer may read.
        let readable =
            async |raw: &str, page: &mut PageRequest| -> Result<StateRef, ProtocolError> {
                let state = keyed(raw, page)?;
                viewer
                    .require(app, &state, Access::Read, "read", page)
                    .await?;
                Ok(state)
            };
        match route {
            Route::RedirectHome | Route::Style => unreachable!("answered above"),
            Route::ApiStates => {
                let list = api::list_states(app, &viewer, &q, stale).await?;
                Ok(api::json_body(&list.to_json()))
            }
            Route::ApiState(raw) => {
                let state = readable(raw, page).await?;
                let window = q.history_window()?;
                let detail = api::state_detail(app, views, &state, stale, window).await?;
                Ok(api::json_body(&detail))
            }
            Route::ApiDiff(raw) => {
                let state = readable(raw, page).await?;
                let diff = api::version_diff(app, views, &state, q.from, q.to).await?;
                Ok(api::json_body(&diff))
            }
            Route::ApiLocks => {
                let locks = api::locks(app, &viewer, stale).await?;
                Ok(api::json_body(&json!({ "locks": locks })))
            }
            Route::StatesPage => {
                let list = api::list_states(app, &viewer, &q, stale).await?;
                Ok(pages::states(
                    base,
                    &viewer,
                    &q,
                    &list,
                    self.stale_after_secs,
                ))
            }
            Route::LocksPage => {
                let locks = api::locks(app, &viewer, stale).await?;
                Ok(pages::locks(base, &viewer, &locks))
            }
            Route::NotificationsPage => notifications::page(app, base, &viewer).await,
            Route::ApiSearch => {
                explore::api(&self.explorer, &viewer, req.uri().query(), req.headers()).await
            }
            Route::ExplorePage => {
                Ok(explore::page(base, &self.explorer, &viewer, req.uri().query()).await)
            }
            Route::StatePage(raw) => {
                let state = readable(raw, page).await?;
                let window = q.history_window()?;
                let detail = api::state_detail(app, views, &state, stale, window).await?;
                let diff = match detail.default_pair(q.from, q.to) {
                    Some((from, to)) => Some(page_diff(app, views, &state, from, to).await?),
                    None => None,
                };
                Ok(pages::state(base, &viewer, &detail, diff.as_ref()))
            }
            Route::LockPage(raw) => {
                let state = readable(raw, page).await?;
                let lock = api::lock_view(app, &state, stale).await?;
                let token = self.csrf.token(viewer.name(), "release", &state);
                Ok(pages::lock(base, &viewer, &state, lock.as_ref(), &token))
            }
            Route::RestoreConfirm(raw) => {
                let state = keyed(raw, page)?;
                viewer
                    .require(app, &state, Access::Admin, "restore", page)
                    .await?;
                let n = q.version.ok_or_else(|| {
                    ProtocolError::BadRequest("say which version to restore: ?version=N".into())
                })?;
                let record = api::version_record(app, &state, n).await?.ok_or_else(|| {
                    ProtocolError::NotFound(format!("{state} has no version {n}"))
                })?;
                let newest = api::newest_below(app, &state, None).await?;
                let current = api::current(app, &state, newest.as_ref())
                    .await?
                    .map(|c| c.summary);
                // What the restore would change, from the current version.
                let change = match current.as_ref().map(|c| c.version) {
                    Some(now) if now != 0 && now != n => {
                        Some(page_diff(app, views, &state, now, n).await?)
                    }
                    _ => None,
                };
                let lock = api::lock_view(app, &state, stale).await?;
                let token = self.csrf.token(viewer.name(), "restore", &state);
                let restoring = restore::Restoring {
                    record: &record,
                    current: current.as_ref(),
                    locked: lock.is_some(),
                    change: change.as_ref(),
                };
                Ok(restore::page(base, &viewer, &state, restoring, &token))
            }
            Route::Release(raw) => {
                let state = keyed(raw, page)?;
                let actor = viewer
                    .require(app, &state, Access::Admin, "release the lock of", page)
                    .await?;
                let form = read_form(req).await?;
                self.csrf
                    .check(form_field(&form, "csrf"), viewer.name(), "release", &state)?;
                let id = form_field(&form, "lock_id")
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| ProtocolError::BadRequest("the form names no lock ID".into()))?;
                // Only the lock the page showed: one taken since stays.
                app.ops().force_unlock(&state, &actor, Some(id)).await?;
                Ok(see_other(&pages::state_url(base, &state)))
            }
            Route::Restore(raw) => {
                let state = keyed(raw, page)?;
                let actor = viewer
                    .require(app, &state, Access::Admin, "restore", page)
                    .await?;
                let form = read_form(req).await?;
                self.csrf
                    .check(form_field(&form, "csrf"), viewer.name(), "restore", &state)?;
                let n = form_field(&form, "version")
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| ProtocolError::BadRequest("the form names no version".into()))?;
                let force = form_flag(&form, "force")?;
                app.ops().restore(&state, &actor, n, force).await?;
                Ok(see_other(&pages::state_url(base, &state)))
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! HTTP in, state calls out. [`route`] turns a method and URL into an
//! [`Endpoint`]; one `handle_*` function per operation calls
//! [`crate::state::States`]; [`error::ProtocolError`] turns every failure
//! into a status in one place.
//!
//! URLs (see the README): `/states/<key>[?workspace=<name>]` takes GET
//! (and HEAD), POST/PUT (write, with Terraform's `?ID=<lock id>`), DELETE, LOCK and
//! UNLOCK; `?history` (whole, or paged with `&limit=N&before=V`) and
//! `?version=N` read history. `/locks/<key>` serves
//! gateways that refuse custom verbs: POST or LOCK locks, DELETE or UNLOCK
//! unlocks, GET shows the holder. `/healthz` answers 200 while the process
//! runs, `/readyz` only while the store answers, `/metrics` in the
//! Prometheus format. All of them live below `base_path` when one is set,
//! except on the admin address, which serves at its root.
//!
//! Every request gets an id (returned as `X-Request-Id`) and one log line
//! with the client (from `X-Forwarded-For` only when the peer is a trusted
//! proxy), method, route template, state, status, time and bytes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use md5::{Digest, Md5};

use crate::audit::Audit;
use crate::auth::{Access, Auth};
use crate::metrics::{Metrics, Refusal, method_label};
use crate::settings::Limits;
use crate::state::history::HistoryWindow;
use crate::state::{LockInfo, StateError, StateRef, States, Taken, WriteOptions, head};
use crate::stores::payload::spool_dir;
use crate::stores::{PROBE_PREFIX, Payload, Spooler, StoreError, Version};

pub mod access;
pub mod error;
pub mod origin;
pub mod reply;

pub use error::ProtocolError;
use error::text;
pub use reply::Reply;

/// What the server needs to answer requests.
pub struct App {
    /// The states, with the rules applied.
    pub states: States,
    /// Body sizes and rates; the server reads the connection limits.
    pub limits: Limits,
    /// Every URL lives below this path (`""` for the root).
    pub base_path: String,
    /// Peers whose forwarding header names the real client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which header that is.
    pub client_ip_header: ClientIpHeader,
    /// Counters and histograms for `/metrics`.
    pub metrics: Metrics,
    /// The last store probe, for `/readyz`.
    pub readiness: Readiness,
    /// Who may do what; `None` serves everyone (loopback, or `auth: none`).
    /// Replaced whole when the configuration is reloaded (SIGHUP).
    pub auth: RwLock<Option<Arc<Auth>>>,
    /// Where security-relevant actions are recorded.
    pub audit: Audit,
    /// The MD5 of each state's body by store version, so a GET's `ETag`
    /// does not hash a large state again.
    pub etags: EtagCache,
    /// The names the server answers to, against DNS rebinding and
    /// cross-site requests ([`origin`]).
    pub origins: origin::Origins,
    /// URLs served by a layer above this one (the dashboard and its API).
    pub pages: Option<Arc<dyn Pages>>,
}

/// URLs a layer above the protocol serves (the dashboard), handed the
/// request after the base path, listener and origin checks, so they share
/// the request id, the access log and the metrics. The protocol does not
/// know what they are.
#[async_trait::async_trait]
pub trait Pages: Send + Sync {
    /// Whether `path` (below the base path) is one of its URLs.
    fn serves(&self, path: &str) -> bool;
    /// Answers the request; never fails (errors are responses too).
    async fn handle(
        &self,
        app: &App,
        req: Request<Incoming>,
        page: &mut PageRequest,
    ) -> Response<Full<Bytes>>;
}

/// One request to [`Pages`]: what it needs to know of the connection, and
/// what it reports back for the access log.
#[derive(Debug)]
pub struct PageRequest {
    /// The path below the base path.
    pub path: String,
    /// The client's address (see [`client_addr`]).
    pub client: IpAddr,
    /// The subject CN of a verified client certificate.
    pub certificate_cn: Option<Arc<str>>,
    /// Set by the pages: the route template, for logs and metrics.
    pub route: &'static str,
    /// Set by the pages: the authenticated identity.
    pub identity: Option<String>,
    /// Set by the pages: the state concerned, if one.
    pub state: Option<String>,
}

/// Hex MD5s of state bodies by state and store version: filled by writes
/// (which hash the body anyway, for `Content-MD5`) and by reads. A version
/// names one content, so an entry is either right or unused.
#[derive(Default)]
pub struct EtagCache(Mutex<HashMap<StateRef, (Version, String)>>);

/// Entries beyond which the cache starts over.
const ETAG_CACHE_MAX: usize = 4096;

impl EtagCache {
    fn get(&self, state: &StateRef, version: &Version) -> Option<String> {
        let map = self.0.lock().expect("etag cache");
        map.get(state)
            .filter(|(v, _)| v == version)
            .map(|(_, md5)| md5.clone())
    }

    fn put(&self, state: &StateRef, version: Version, md5: String) {
        let mut map = self.0.lock().expect("etag cache");
        if map.len() >= ETAG_CACHE_MAX {
            map.clear();
        }
        map.insert(state.clone(), (version, md5));
    }
}

impl App {
    /// An app serving `states` (in a store of type `store`, for metrics)
    /// at the root, trusting no proxy.
    pub fn new(states: States, limits: Limits, store: &'static str) -> Self {
        App {
            states,
            limits,
            base_path: String::new(),
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeader::default(),
            metrics: Metrics::new(store),
            readiness: Readiness::default(),
            auth: RwLock::new(None),
            etags: EtagCache::default(),
            audit: Audit::open(None).expect("stderr needs no opening"),
            origins: origin::Origins::default(),
            pages: None,
        }
    }
}

/// Which URLs a listener serves: everything, or (with `admin_listen`) the
/// state URLs on the main address and the operational ones on the admin
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    All,
    Public,
    Admin,
}

/// One connection as the protocol sees it.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The peer's address (a proxy's, behind one).
    pub peer: SocketAddr,
    pub surface: Surface,
    /// The subject CN of the client certificate verified in the TLS
    /// handshake (only with `tls.client_ca`).
    pub certificate_cn: Option<Arc<str>>,
}

/// The store probe behind `/readyz`, cached for a second so a busy
/// load balancer does not turn into store traffic.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

const READY_CACHE: Duration = Duration::from_secs(1);

impl Readiness {
    async fn check(&self, states: &States) -> Result<(), String> {
        if let Some((at, result)) = &*self.last.lock().expect("readiness lock")
            && at.elapsed() < READY_CACHE
        {
            return result.clone();
        }
        let result = states
            .store()
            .stat(&format!("{PROBE_PREFIX}ready"))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        *self.last.lock().expect("readiness lock") = Some((Instant::now(), result.clone()));
        result
    }
}

/// A request, understood.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Metrics,
    GetState(StateRef),
    /// `?history`: the whole history (`None`), or one page of it.
    History(StateRef, Option<HistoryWindow>),
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
    /// `?history&limit=N`: the most versions in one page.
    limit: Option<String>,
    /// `?history&before=V`: only versions numbered below V.
    before: Option<String>,
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
                "limit" => q.limit = Some(v.into_owned()),
                "before" => q.before = Some(v.into_owned()),
                _ => {}
            }
        }
        q
    }

    /// The page `?history` asks for: `None` (the whole history, oldest
    /// first, as before paging existed) unless `limit` or `before` is given.
    fn history_window(&self) -> Result<Option<HistoryWindow>, ProtocolError> {
        if self.limit.is_none() && self.before.is_none() {
            return Ok(None);
        }
        let number = |name: &str, raw: &Option<String>| {
            raw.as_deref()
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        ProtocolError::BadRequest(format!("{name} {v:?} is not a number"))
                    })
                })
                .transpose()
        };
        let window = HistoryWindow::new(
            number("limit", &self.limit)?,
            number("before", &self.before)?,
        )?;
        Ok(Some(window))
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

impl Endpoint {
    /// The route template, for metrics and logs (never the key itself).
    pub fn route(&self) -> &'static str {
        match self {
            Endpoint::Health => "/healthz",
            Endpoint::Ready => "/readyz",
            Endpoint::Metrics => "/metrics",
            Endpoint::GetState(_) | Endpoint::WriteState { .. } | Endpoint::DeleteState { .. } => {
                "/states/{key}"
            }
            Endpoint::Lock(_) | Endpoint::Unlock(_) => "/states/{key} (lock)",
            Endpoint::History(..) => "/states/{key}?history",
            Endpoint::GetVersion(..) => "/states/{key}?version",
            Endpoint::GetLock(_) => "/locks/{key}",
        }
    }

    fn state(&self) -> Option<&StateRef> {
        match self {
            Endpoint::Health | Endpoint::Ready | Endpoint::Metrics => None,
            Endpoint::GetState(s)
            | Endpoint::History(s, _)
            | Endpoint::GetVersion(s, _)
            | Endpoint::WriteState { state: s, .. }
            | Endpoint::DeleteState { state: s, .. }
            | Endpoint::Lock(s)
            | Endpoint::Unlock(s)
            | Endpoint::GetLock(s) => Some(s),
        }
    }

    /// Whether a listener serving `surface` answers this endpoint.
    fn served_on(&self, surface: Surface) -> bool {
        let operational = matches!(self, Endpoint::Ready | Endpoint::Metrics);
        match surface {
            Surface::All => true,
            Surface::Public => !operational,
            Surface::Admin => operational || matches!(self, Endpoint::Health),
        }
    }
}

/// Maps a method and URL (below the base path) to an endpoint.
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Endpoint, ProtocolError> {
    route_named(method, path, query, Ok)
}

/// [`route`], with the state the URL names passed through `name` as soon
/// as it is parsed: the server gives it its one name
/// ([`States::canonical`]) there, before any rule, lock or log sees it.
pub fn route_named(
    method: &Method,
    path: &str,
    query: Option<&str>,
    name: impl FnOnce(StateRef) -> Result<StateRef, ProtocolError>,
) -> Result<Endpoint, ProtocolError> {
    let operational = match path {
        "/healthz" => Some(Endpoint::Health),
        "/readyz" => Some(Endpoint::Ready),
        "/metrics" => Some(Endpoint::Metrics),
        _ => None,
    };
    if let Some(endpoint) = operational {
        return match *method {
            Method::GET | Method::HEAD => Ok(endpoint),
            _ => Err(ProtocolError::MethodNotAllowed("GET, HEAD")),
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
    let state = name(state)?;
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
        "GET" | "HEAD" if q.history => Ok(Endpoint::History(state, q.history_window()?)),
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

/// What one request did, gathered for its log line and metrics.
struct Exchange {
    /// The client's address (see [`client_addr`]).
    client: IpAddr,
    /// The authenticated identity, when authentication is on.
    identity: Option<String>,
    route: &'static str,
    state: Option<String>,
    bytes_in: u64,
    /// An UNLOCK that released whoever held the lock.
    forced: bool,
}

/// Request ids: unique within the process, and across restarts (the start
/// time is mixed in).
pub fn next_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016x}",
        base.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    )
}

/// The header a trusted proxy names the client in (`client_ip_header`).
/// Only that one is read: a client may send the other itself, and a proxy
/// that sets only one passes the other on untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx's
    /// `$proxy_add_x_forwarded_for`, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ClientIpHeader {
    /// Parses the setting's value: `x-forwarded-for` or `forwarded`.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Some(ClientIpHeader::XForwardedFor),
            "forwarded" => Some(ClientIpHeader::Forwarded),
            _ => None,
        }
    }

    /// The addresses the header lists, nearest the client first; `None`
    /// for an entry that is not an address (`unknown`, an obfuscated node).
    fn hops(self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("").to_string())
                .collect()
        };
        match self {
            ClientIpHeader::XForwardedFor => values("x-forwarded-for")
                .iter()
                .flat_map(|v| v.split(','))
                .map(|a| a.trim().parse().ok())
                .collect(),
            ClientIpHeader::Forwarded => values("forwarded")
                .iter()
                .flat_map(|v| v.split(','))
                .filter_map(|element| {
                    let node = element.split(';').find_map(|pair| {
                        let (k, v) = pair.trim().split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
                    })?;
                    let node = node.trim_matches('"');
                    let addr = match node.strip_prefix('[') {
                        Some(rest) => rest.split(']').next().unwrap_or(""),
                        None => node.split(':').next().unwrap_or(""),
                    };
                    Some(addr.parse().ok())
                })
                .collect(),
        }
    }
}

/// The client's address: the peer itself, or, when the peer is a trusted
/// proxy, the address the operator's `client_ip_header` names. That header
/// is walked from the right, the end each proxy appends to, past trusted
/// proxies; the first address not trusted is the client. Whatever stands
/// left of it was written by the client and is never believed, and an
/// entry that is not an address ends the walk at the proxy that passed it.
pub fn client_addr(
    trusted: &[ipnet::IpNet],
    header: ClientIpHeader,
    peer: IpAddr,
    headers: &HeaderMap,
) -> IpAddr {
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    let mut client = peer;
    if !is_trusted(&client) {
        return client;
    }
    for hop in header.hops(headers).into_iter().rev() {
        let Some(addr) = hop else {
            break;
        };
        client = addr;
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

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
        forced: false,
    };
    let (mut response, reason) = match dispatch(&app, req, &conn, &mut ex).await {
        Ok(r) => (r, None),
        Err(e) => {
            count_failure(&app.metrics, &e, ex.route);
            let reason = e.to_string();
            (e.into_response().map(Reply::from), Some(reason))
        }
    };
    if ex.forced && response.status().is_success() {
        app.metrics.force_unlock();
    }
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
    let status = response.status();
    let bytes_out = response.body().size_hint().exact().unwrap_or(0);
    let elapsed = started.elapsed();
    app.metrics.request(
        method,
        ex.route,
        status.as_u16(),
        elapsed,
        ex.bytes_in,
        bytes_out,
    );
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    let state = ex.state.as_deref().unwrap_or("-");
    let identity = ex.identity.as_deref().unwrap_or("-");
    let (route, bytes_in, status) = (ex.route, ex.bytes_in, status.as_u16());
    match reason {
        Some(reason) if status >= 500 => tracing::warn!(
            %method, %path, status, %request_id, %client, %identity, %route, %state, elapsed_ms,
            bytes_in, bytes_out, %reason, "request failed"
        ),
        Some(reason) => tracing::info!(
            %method, %path, status, %request_id, %client, %identity, %route, %state, elapsed_ms,
            bytes_in, bytes_out, %reason, "request refused"
        ),
        None => tracing::info!(
            %method, %path, status, %request_id, %client, %identity, %route, %state, elapsed_ms,
            bytes_in, bytes_out, "request"
        ),
    }
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
    let whole = match endpoint {
        Endpoint::GetState(state) if req.method() == Method::HEAD => {
            return handle_head(app, &state, caller).await;
        }
        Endpoint::GetState(state) => return handle_get(app, &state, caller).await,
        Endpoint::GetVersion(state, n) => return handle_get_version(app, &state, n).await,
        Endpoint::Health => Ok(text("ok\n")),
        Endpoint::Ready => handle_ready(app).await,
        Endpoint::Metrics => handle_metrics(app).await,
        Endpoint::History(state, window) => handle_history(app, &state, window).await,
        Endpoint::WriteState { state, lock_id } => {
            let body = read_body(app, req, app.limits.max_body_bytes, ex).await?;
            handle_write(app, &state, body, lock_id.as_deref(), caller, ex).await
        }
        Endpoint::DeleteState { state, lock_id } => {
            handle_delete(app, &state, lock_id.as_deref(), caller, ex).await
        }
        Endpoint::Lock(state) => {
            let body = read_body(app, req, app.limits.max_lock_bytes, ex).await?;
            let bytes = body.payload.to_bytes().await.map_err(StateError::Store)?;
            handle_lock(app, &state, bytes, caller, ex).await
        }
        Endpoint::Unlock(state) => {
            let body = read_body(app, req, app.limits.max_lock_bytes, ex).await?;
            let bytes = body.payload.to_bytes().await.map_err(StateError::Store)?;
            ex.forced = bytes.iter().all(u8::is_ascii_whitespace)
                || LockInfo::parse(&bytes).is_ok_and(|i| i.id.is_empty());
            handle_unlock(app, &state, &bytes, caller, ex).await
        }
        Endpoint::GetLock(state) => handle_get_lock(app, &state).await,
    };
    whole.map(|r| r.map(Reply::from))
}

/// How far past the limit a body is still read (and dropped) before the
/// 413, so the client receives the answer.
const DRAIN_BYTES: u64 = 16 * 1024 * 1024;

/// The window over which `body_min_rate` is averaged.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Reads the whole body, refusing one over `limit` (by `Content-Length`
/// before reading, or while reading), one that arrives slower than
/// `body_min_rate` over any 10-second window, and one whose `Content-MD5`
/// does not match. A body over a megabyte is spooled to an unnamed file as
/// it arrives ([`Spooler`]), so memory does not grow with its size, nor
/// ever with the length a client declares. The MD5 is taken on the way.
async fn read_body(
    app: &App,
    req: Request<Incoming>,
    limit: u64,
    ex: &mut Exchange,
) -> Result<Body, ProtocolError> {
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
    let header_md5 = content_md5(req.headers())?;
    let mut incoming = req.into_body();
    let mut body = Spooler::new(&spool_dir());
    let mut hasher = Md5::new();
    let spool_failed = |e: std::io::Error| {
        ProtocolError::State(StateError::Store(StoreError::unavailable(format!(
            "spooling the body to {}: {e}",
            spool_dir().display()
        ))))
    };
    let mut trailer_md5 = None;
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
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Chunked trailers: a digest sent after the body binds it
                // as one sent before it does.
                if let Ok(trailers) = frame.into_trailers()
                    && let Some(digest) = content_md5(&trailers)?
                    && trailer_md5.replace(digest).is_some()
                {
                    return Err(ProtocolError::BadRequest(
                        "Content-MD5 is given more than once".into(),
                    ));
                }
                continue;
            }
        };
        seen += data.len() as u64;
        ex.bytes_in = seen;
        if seen > limit.saturating_add(DRAIN_BYTES) {
            break;
        }
        if seen <= limit {
            hasher.update(&data);
            body.push(&data).await.map_err(spool_failed)?;
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
    let payload = body.finish().await.map_err(spool_failed)?;
    let digest = hasher.finalize();
    if [header_md5, trailer_md5]
        .iter()
        .flatten()
        .any(|expected| digest.as_slice() != expected.as_slice())
    {
        return Err(ProtocolError::BadRequest(
            "Content-MD5 does not match the body".into(),
        ));
    }
    Ok(Body {
        payload,
        md5: head::hex(&digest),
    })
}

/// The digest a `Content-MD5` header (or trailer) gives, if one does. Two
/// are refused, not resolved: with only the first checked, a body could
/// carry a second digest that another reader of the request believes.
fn content_md5(headers: &HeaderMap) -> Result<Option<Vec<u8>>, ProtocolError> {
    use base64::Engine;
    let mut values = headers.get_all("content-md5").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProtocolError::BadRequest(
            "Content-MD5 is given more than once".into(),
        ));
    }
    value
        .to_str()
        .ok()
        .and_then(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok()
        })
        .filter(|d| d.len() == 16)
        .map(Some)
        .ok_or_else(|| ProtocolError::BadRequest("Content-MD5 is not base64 of 16 bytes".into()))
}

/// A request body, read whole (in memory or spooled) and hashed once.
struct Body {
    payload: Payload,
    /// Hex MD5, handed on so a write does not hash the body again.
    md5: String,
}

fn json(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// HEAD of a state: its length and `ETag` as a GET would give them, from
/// the newest history record when that record names the stored version,
/// so nothing is downloaded from a store across the network; otherwise,
/// and for the `outputs` view, whose length depends on the body, as GET.
async fn handle_head(
    app: &App,
    state: &StateRef,
    caller: Option<&access::Caller>,
) -> Result<Response<Reply>, ProtocolError> {
    if caller.is_some_and(|c| c.level == Access::Outputs) {
        return handle_get(app, state, caller).await;
    }
    match app.states.current_digest(state).await? {
        None => Err(ProtocolError::NotFound(format!(
            "no state stored for {state}"
        ))),
        Some((_, Some((md5, size)))) => {
            let mut r = state_body(Payload::Memory(Bytes::new()), &md5);
            r.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(size));
            Ok(r)
        }
        Some((_, None)) => handle_get(app, state, caller).await,
    }
}

/// A state body with its `Content-Length` and an `ETag` (the quoted hex
/// MD5), set here so HEAD, which sends no body, carries them too.
fn state_body(body: Payload, md5: &str) -> Response<Reply> {
    let etag = format!("\"{md5}\"");
    let length = body.len();
    let mut r = Response::new(Reply::payload(body));
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        ETAG,
        HeaderValue::from_str(&etag).expect("hex is a header value"),
    );
    r
}

async fn handle_ready(app: &App) -> Result<Response<Full<Bytes>>, ProtocolError> {
    match app.readiness.check(&app.states).await {
        Ok(()) => Ok(text("ready\n")),
        Err(reason) => Err(ProtocolError::State(StateError::Store(
            crate::stores::StoreError::Unavailable(format!("not ready: {reason}")),
        ))),
    }
}

async fn handle_metrics(app: &App) -> Result<Response<Full<Bytes>>, ProtocolError> {
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

async fn handle_get(
    app: &App,
    state: &StateRef,
    caller: Option<&access::Caller>,
) -> Result<Response<Reply>, ProtocolError> {
    let Some((body, version)) = app.states.read(state).await? else {
        return Err(ProtocolError::NotFound(format!(
            "no state stored for {state}"
        )));
    };
    if caller.is_some_and(|c| c.level == Access::Outputs) {
        let whole = body.to_bytes().await.map_err(StateError::Store)?;
        let outputs = access::outputs_only(&whole)?;
        let md5 = head::md5_hex(&outputs);
        return Ok(state_body(Payload::Memory(outputs), &md5));
    }
    let md5 = match app.etags.get(state, &version) {
        Some(md5) => md5,
        None => {
            let md5 = body.md5_hex().await.map_err(StateError::Store)?;
            app.etags.put(state, version, md5.clone());
            md5
        }
    };
    Ok(state_body(body, &md5))
}

/// The whole history oldest first, as it always was; or one page newest
/// first, with `next_before` for the next one (`null` after the last).
async fn handle_history(
    app: &App,
    state: &StateRef,
    window: Option<HistoryWindow>,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let doc = match window {
        None => serde_json::json!({
            "key": state.key(),
            "workspace": state.workspace(),
            "versions": app.states.history(state).await?,
        }),
        Some(window) => {
            let page = app.states.history_page(state, window).await?;
            serde_json::json!({
                "key": state.key(),
                "workspace": state.workspace(),
                "order": "newest_first",
                "versions": page.versions,
                "next_before": page.next_before,
            })
        }
    };
    Ok(json(
        serde_json::to_vec_pretty(&doc).expect("history serialises"),
    ))
}

async fn handle_get_version(
    app: &App,
    state: &StateRef,
    n: u64,
) -> Result<Response<Reply>, ProtocolError> {
    let (body, md5) = app.states.version_with_md5(state, n).await?;
    Ok(state_body(Payload::Memory(body), &md5))
}

/// The fields every audit event of a state carries.
fn audit_fields(state: &StateRef, ex: &Exchange) -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("state", serde_json::json!(state.key())),
        ("workspace", serde_json::json!(state.workspace())),
        ("identity", serde_json::json!(ex.identity)),
        ("client", serde_json::json!(ex.client.to_string())),
    ]
}

async fn handle_write(
    app: &App,
    state: &StateRef,
    body: Body,
    lock_id: Option<&str>,
    caller: Option<&access::Caller>,
    ex: &Exchange,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    if let (Some(caller), Some(id)) = (caller, lock_id) {
        access::check_lock_owner(app, state, id, caller, ex.client).await?;
    }
    // Checked once here, for the audit record, and handed on.
    let head = head::StateHead::parse_payload(&body.payload).await;
    let size = body.payload.len();
    let md5 = body.md5.clone();
    let mut fields = audit_fields(state, ex);
    let serial = head.as_ref().ok().and_then(|h| h.serial);
    fields.push(("serial", serde_json::json!(serial)));
    fields.push(("bytes", serde_json::json!(size)));
    let written = match head {
        Ok(head) => {
            let opts = WriteOptions {
                lock_id,
                identity: ex.identity.as_deref(),
                operation: "write",
                md5: Some(&body.md5),
                head: Some(&head),
                ..Default::default()
            };
            app.states.write(state, body.payload, opts).await
        }
        Err(refused) => Err(refused),
    };
    match written {
        Ok(outcome) => {
            if let crate::state::WriteOutcome::Written {
                version,
                previous_serial,
                stored,
            } = outcome
            {
                app.etags.put(state, stored, md5);
                fields.push(("previous_serial", serde_json::json!(previous_serial)));
                fields.push(("version", serde_json::json!(version)));
                app.audit.event("write", &fields);
            }
            Ok(text(""))
        }
        Err(e) => {
            if matches!(
                e,
                StateError::Stale(_) | StateError::NotHolder(_) | StateError::BadRequest(_)
            ) {
                fields.push(("reason", serde_json::json!(e.to_string())));
                app.audit.event("write_refused", &fields);
            }
            Err(e.into())
        }
    }
}

async fn handle_delete(
    app: &App,
    state: &StateRef,
    lock_id: Option<&str>,
    caller: Option<&access::Caller>,
    ex: &Exchange,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    if let (Some(caller), Some(id)) = (caller, lock_id) {
        access::check_lock_owner(app, state, id, caller, ex.client).await?;
    }
    app.states.delete(state, lock_id).await?;
    app.audit.event("delete", &audit_fields(state, ex));
    Ok(text(""))
}

async fn handle_lock(
    app: &App,
    state: &StateRef,
    body: Bytes,
    caller: Option<&access::Caller>,
    ex: &Exchange,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let id = LockInfo::parse(&body).map(|i| i.id).unwrap_or_default();
    // The owner rides in the lock object: no extra store call.
    let taken = app
        .states
        .lock(state, body, caller.map(access::Caller::name))
        .await?;
    if let (Some(caller), Taken::Already { owner }) = (caller, taken) {
        // A LOCK retried with the holder's ID succeeds in the state layer;
        // the ID alone must not make another identity the holder.
        access::check_owner(app, state, &id, owner, caller, ex.client)?;
    }
    let mut fields = audit_fields(state, ex);
    fields.push(("lock_id", serde_json::json!(id)));
    app.audit.event("lock", &fields);
    Ok(text(""))
}

async fn handle_unlock(
    app: &App,
    state: &StateRef,
    body: &[u8],
    caller: Option<&access::Caller>,
    ex: &Exchange,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let holder = app.states.lock_holder(state).await?;
    if let Some(caller) = caller {
        if ex.forced && caller.level < Access::Admin {
            return Err(access::forbid(
                app,
                &caller.identity,
                state,
                ex.client,
                format!(
                    "{} may not force-unlock {state}: that needs admin access",
                    caller.name()
                ),
            ));
        }
        if !ex.forced {
            let id = LockInfo::parse(body).map(|i| i.id).unwrap_or_default();
            if let Some(held) = holder.as_ref().filter(|h| h.info.id == id) {
                access::check_owner(app, state, &id, held.owner.clone(), caller, ex.client)?;
            }
        }
    }
    app.states.unlock(state, body).await?;
    if let Some(held) = holder {
        let mut fields = audit_fields(state, ex);
        fields.push(("lock_id", serde_json::json!(held.info.id)));
        if ex.forced {
            fields.push(("previous_holder", serde_json::json!(held.info.who)));
        }
        app.audit
            .event(if ex.forced { "force_unlock" } else { "unlock" }, &fields);
    }
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
            Endpoint::History(st("a", None), None)
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
    fn history_pages_are_checked_in_the_url() {
        let page = |limit, before| Some(HistoryWindow { limit, before });
        for (query, want) in [
            ("history", None),
            ("history&limit=10", page(10, None)),
            ("history&before=7", page(100, Some(7))),
            (
                "history&limit=1000&before=3&workspace=dev",
                page(1000, Some(3)),
            ),
        ] {
            let ws = query.contains("workspace").then_some("dev");
            assert_eq!(
                r("GET", "/states/a", Some(query)).unwrap(),
                Endpoint::History(st("a", ws), want),
                "{query}"
            );
        }
        for (query, reason) in [
            ("history&limit=0", "limit must be from 1 to 1000, not 0"),
            (
                "history&limit=1001",
                "limit must be from 1 to 1000, not 1001",
            ),
            ("history&limit=ten", "limit \"ten\" is not a number"),
            ("history&limit=", "limit \"\" is not a number"),
            ("history&limit=-1", "limit \"-1\" is not a number"),
            ("history&before=0", "before must be 1 or more"),
            ("history&before=99999999999999999999", "is not a number"),
        ] {
            let e = r("GET", "/states/a", Some(query)).unwrap_err();
            assert_eq!(e.status(), 400, "{query}");
            assert!(e.to_string().contains(reason), "{query}: {e}");
            assert!(!e.to_string().contains('\n'), "{query}: one line: {e}");
        }
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

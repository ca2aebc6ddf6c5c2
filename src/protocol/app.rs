//! What the server holds to answer requests ([`App`]): the states, the
//! limits, authentication, the audit log, the metrics, and the small
//! caches requests share (ETags, readiness). Also what the protocol knows
//! of a connection ([`Conn`], [`Surface`]) and the hook through which the
//! dashboard serves its URLs ([`Pages`]), so the protocol never names it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::log::ClientIpHeader;
use super::origin;
use crate::audit::Audit;
use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::ops::Ops;
use crate::settings::Limits;
use crate::state::{StateRef, States};
use crate::stores::{PROBE_PREFIX, Version};

/// What the server needs to answer requests. Built by
/// [`crate::app::Application`] from the settings; its parts are the
/// crate's own.
pub struct App {
    /// The states, with the rules applied.
    pub(crate) states: States,
    /// Body sizes and rates; the server reads the connection limits.
    pub(crate) limits: Limits,
    /// Every URL lives below this path (`""` for the root).
    pub(crate) base_path: String,
    /// Peers whose forwarding header names the real client.
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// Which header that is.
    pub(crate) client_ip_header: ClientIpHeader,
    /// Counters and histograms for `/metrics`.
    pub(crate) metrics: Metrics,
    /// The last store probe, for `/readyz`.
    pub(crate) readiness: Readiness,
    /// Who may do what; `None` serves everyone (loopback, or `auth: none`).
    /// Replaced whole when the configuration is reloaded (SIGHUP).
    pub(crate) auth: RwLock<Option<Arc<Auth>>>,
    /// Where security-relevant actions are recorded.
    pub(crate) audit: Audit,
    /// The MD5 of each state's body by store version, so a GET's `ETag`
    /// does not hash a large state again.
    pub(crate) etags: EtagCache,
    /// The names the server answers to, against DNS rebinding and
    /// cross-site requests ([`origin`]).
    pub(crate) origins: origin::Origins,
    /// URLs served by a layer above this one (the dashboard and its API).
    pub(crate) pages: Option<Arc<dyn Pages>>,
    /// Where the operations' events go to be notified; `None` when no
    /// destination is configured.
    pub(crate) notifier: Option<Arc<Notifier>>,
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
    /// The client's address (see [`super::client_addr`]).
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
    pub(super) fn get(&self, state: &StateRef, version: &Version) -> Option<String> {
        let map = self.0.lock().expect("etag cache");
        map.get(state)
            .filter(|(v, _)| v == version)
            .map(|(_, md5)| md5.clone())
    }

    pub(super) fn put(&self, state: &StateRef, version: Version, md5: String) {
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
    pub(crate) fn new(states: States, limits: Limits, store: &'static str, audit: Audit) -> Self {
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
            audit,
            origins: origin::Origins::default(),
            pages: None,
            notifier: None,
        }
    }

    /// The operations on this app's states, recorded in its audit log and
    /// counted in its metrics.
    pub fn ops(&self) -> Ops<'_> {
        Ops::new(&self.states, &self.audit, Some(&self.metrics)).notifying(self.notifier.as_deref())
    }

    /// The notifier, for the dashboard's count and list of undelivered
    /// notifications.
    pub fn notifier(&self) -> Option<&Notifier> {
        self.notifier.as_deref()
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
    pub(super) async fn check(&self, states: &States) -> Result<(), String> {
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

//! URLs and methods to [`Endpoint`]s: which state a URL names (decoded,
//! then validated, so an encoded `..` is refused like a plain one), what
//! the method asks of it, and the query parameters stategate reads. The
//! route template each endpoint reports is what logs and metrics show,
//! never the key itself.

use hyper::Method;

use super::ProtocolError;
use super::app::Surface;
use crate::state::StateRef;
use crate::state::history::HistoryWindow;

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
    fn parse(raw: Option<&str>) -> Result<Self, ProtocolError> {
        let mut q = Query::default();
        let known = ["workspace", "ID", "history", "version", "limit", "before"];
        for (k, v) in query_pairs(raw, &known)? {
            match k.as_ref() {
                "workspace" => q.workspace = Some(v),
                "ID" => q.lock_id = Some(v).filter(|id| !id.is_empty()),
                "history" => q.history = true,
                "version" => q.version = Some(v),
                "limit" => q.limit = Some(v),
                "before" => q.before = Some(v),
                _ => {}
            }
        }
        Ok(q)
    }

    /// The page `?history` asks for: `None` (the whole history, oldest
    /// first, which clients that do not page expect) unless `limit` or
    /// `before` is given.
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

/// The parameters of a query string, decoded, refusing any of `once`
/// given twice: a proxy or firewall in front that reads the first (as
/// nginx's `$arg_workspace` does) and a server that read the last would
/// judge two different states or locks.
pub fn query_pairs(
    raw: Option<&str>,
    once: &[&str],
) -> Result<Vec<(String, String)>, ProtocolError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    for (i, (name, _)) in pairs.iter().enumerate() {
        if once.contains(&name.as_str()) && pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(ProtocolError::BadRequest(format!(
                "the query gives `{name}` more than once"
            )));
        }
    }
    Ok(pairs)
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

    /// The state the endpoint names, if one.
    pub fn state(&self) -> Option<&StateRef> {
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
    pub(super) fn served_on(&self, surface: Surface) -> bool {
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
/// ([`crate::state::States::canonical`]) there, before any rule, lock or log sees it.
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
    let q = Query::parse(query)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: &str, path: &str, query: Option<&str>) -> Result<Endpoint, ProtocolError> {
        route(&Method::from_bytes(method.as_bytes()).unwrap(), path, query)
    }

    fn st(key: &str, ws: Option<&str>) -> StateRef {
        StateRef::parse(key, ws).unwrap()
    }

    /// Each `(method, path, query)` routes to its endpoint.
    fn assert_routes(cases: Vec<(&str, &str, Option<&str>, Endpoint)>) {
        for (method, path, query, want) in cases {
            assert_eq!(
                r(method, path, query).unwrap(),
                want,
                "{method} {path} {query:?}"
            );
        }
    }

    #[test]
    fn state_url_methods() {
        let write = |ws, lock_id: Option<&str>| Endpoint::WriteState {
            state: st("a", ws),
            lock_id: lock_id.map(Into::into),
        };
        assert_routes(vec![
            (
                "GET",
                "/states/a/b",
                None,
                Endpoint::GetState(st("a/b", None)),
            ),
            (
                "POST",
                "/states/a",
                Some("workspace=dev&ID=123"),
                write(Some("dev"), Some("123")),
            ),
            ("PUT", "/states/a", Some("ID="), write(None, None)),
            ("LOCK", "/states/a", None, Endpoint::Lock(st("a", None))),
            ("UNLOCK", "/states/a", None, Endpoint::Unlock(st("a", None))),
            (
                "GET",
                "/states/a",
                Some("history"),
                Endpoint::History(st("a", None), None),
            ),
            (
                "GET",
                "/states/a",
                Some("version=3"),
                Endpoint::GetVersion(st("a", None), 3),
            ),
        ]);
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
        assert_routes(vec![
            ("POST", "/locks/a", None, Endpoint::Lock(st("a", None))),
            (
                "DELETE",
                "/locks/a",
                Some("workspace=w"),
                Endpoint::Unlock(st("a", Some("w"))),
            ),
            ("GET", "/locks/a", None, Endpoint::GetLock(st("a", None))),
        ]);
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

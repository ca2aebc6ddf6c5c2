//! Keeping web pages the operator visits away from the server.
//!
//! - DNS rebinding: a page at `evil.example` whose name is made to resolve
//!   to 127.0.0.1 reaches a loopback server as same-origin, and with no
//!   `auth` section everyone may do everything. On a loopback listener
//!   without authentication, a request must name the server in `Host` as
//!   an IP address, `localhost`, or one of `ui.hosts`, also when a
//!   trusted proxy relays it: the proxy forwards the browser's name.
//! - Cross-site requests: a state-changing request (anything but GET and
//!   HEAD) carrying `Sec-Fetch-Site: cross-site` (or `same-site`: another
//!   port of the same host), or, from a browser without that header, an
//!   `Origin` that is not the server itself, is refused on every URL. Terraform and OpenTofu
//!   send neither header; browsers always send them on such requests.

use std::net::IpAddr;

use hyper::header::{HOST, ORIGIN};
use hyper::{HeaderMap, Method};

use super::{App, ProtocolError};

/// Which names the server answers to, and when `Host` is checked.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// Extra host names (no port) the server is reached by: `ui.hosts`.
    pub names: Vec<String>,
    /// Check `Host` when no authentication is configured (set for
    /// loopback listeners, where such a server is the default).
    pub rebinding_check: bool,
}

/// Splits `host[:port]` (or `[v6]:port`) into the host part.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // `[address]` or `[address]:port`, nothing else: `[::1]x.example`
        // stays whole, and names no address.
        let port_only = |p: &str| {
            p.strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
        };
        return match rest.split_once(']') {
            Some((address, after)) if after.is_empty() || port_only(after) => address,
            _ => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

impl Origins {
    /// Whether a `Host` value names this server: an IP address (which no
    /// rebinding can produce), `localhost`, or a configured name.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_part(host.trim());
        name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Refuses a request whose `Host` does not name this server, where that
/// matters (see the module documentation). A trusted proxy forwards the
/// browser's `Host` (`proxy_set_header Host $host`) or names it in
/// `X-Forwarded-Host`; either way the name is the browser's, and a page
/// whose name was rebound to the proxy's address sends its own. So the
/// check holds behind a proxy too: every name a request carries, `Host`
/// and (from a trusted proxy) the nearest `X-Forwarded-Host`, must be one
/// the server answers to.
pub fn check_host(app: &App, headers: &HeaderMap, peer: IpAddr) -> Result<(), ProtocolError> {
    if !app.origins.rebinding_check || app.auth.read().expect("auth lock").is_some() {
        return Ok(());
    }
    let mut names: Vec<&str> = Vec::with_capacity(2);
    // HTTP/1.0 clients may omit `Host`; browsers never do.
    if let Some(host) = headers.get(HOST) {
        names.push(host.to_str().unwrap_or(""));
    }
    if app.trusted_proxies.iter().any(|n| n.contains(&peer))
        && let Some(forwarded) = headers.get_all("x-forwarded-host").iter().next_back()
    {
        let forwarded = forwarded.to_str().unwrap_or("");
        names.push(forwarded.rsplit(',').next().unwrap_or("").trim());
    }
    match names
        .into_iter()
        .find(|name| !app.origins.host_allowed(name))
    {
        None => Ok(()),
        Some(host) => Err(ProtocolError::Forbidden(format!(
            "this server does not answer to the host {host:?} (a defence against DNS rebinding); \
             add the name to ui.hosts"
        ))),
    }
}

/// Refuses a state-changing request sent by a page of another site.
pub fn check_cross_site(
    origins: &Origins,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), ProtocolError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
    };
    // Browsers that send `Sec-Fetch-Site` say exactly where a request comes
    // from; their `Origin` may be `null` (pages sent with `no-referrer`).
    match header("sec-fetch-site") {
        Some("cross-site" | "same-site") => {
            return Err(ProtocolError::Forbidden(
                "a request from another site may not change anything here".into(),
            ));
        }
        Some("same-origin" | "none") => return Ok(()),
        _ => {}
    }
    let Some(origin) = header(ORIGIN.as_str()) else {
        return Ok(());
    };
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    let host = header(HOST.as_str()).unwrap_or("");
    let same = authority.is_some_and(|a| {
        let with_default_port = |scheme_port: &str| format!("{a}:{scheme_port}");
        a.eq_ignore_ascii_case(host)
            || (origin.starts_with("http://") && with_default_port("80").eq_ignore_ascii_case(host))
            || (origin.starts_with("https://")
                && with_default_port("443").eq_ignore_ascii_case(host))
            || origins
                .names
                .iter()
                .any(|n| n.eq_ignore_ascii_case(host_part(a)))
    });
    if same {
        Ok(())
    } else {
        Err(ProtocolError::Forbidden(format!(
            "a request from the page {origin:?} may not change anything here"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_name_the_server() {
        let o = Origins {
            names: vec!["tfstate.example.com".into()],
            rebinding_check: true,
        };
        for ok in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "10.1.2.3",
            "tfstate.example.com:443",
            "TFSTATE.example.com",
        ] {
            assert!(o.host_allowed(ok), "{ok}");
        }
        for refused in [
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "[::1]x.evil.example",
            "[::1]:8080.evil.example",
            "[::1",
            "",
        ] {
            assert!(!o.host_allowed(refused), "{refused}");
        }
    }

    #[test]
    fn cross_site_changes_are_refused() {
        let app = Origins::default();
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        let post = Method::POST;
        // Terraform sends neither header.
        assert!(check_cross_site(&app, &post, &headers(&[("host", "127.0.0.1:8080")])).is_ok());
        assert!(
            check_cross_site(
                &app,
                &post,
                &headers(&[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "http://127.0.0.1:8080")
                ])
            )
            .is_ok()
        );
        for bad in [
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://localhost:3000"),
            ][..],
            &[("host", "127.0.0.1:8080"), ("origin", "null")],
            &[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")],
            &[("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-site")],
        ] {
            let e = check_cross_site(&app, &post, &headers(bad)).unwrap_err();
            assert_eq!(e.status(), 403, "{bad:?}");
        }
        // A same-origin form of a page sent with `no-referrer`.
        assert!(
            check_cross_site(
                &app,
                &post,
                &headers(&[("origin", "null"), ("sec-fetch-site", "same-origin")])
            )
            .is_ok()
        );
        // Reading is not a change.
        assert!(
            check_cross_site(
                &app,
                &Method::GET,
                &headers(&[("sec-fetch-site", "cross-site")])
            )
            .is_ok()
        );
    }
}

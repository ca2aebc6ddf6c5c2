//! What the access log knows of a request: its id, the client's address
//! (believed from a forwarding header only when the peer is a trusted
//! proxy), and the [`Exchange`] gathered while it is answered, written as
//! one line when it is done.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::header::HeaderMap;

use crate::auth::Access;
use crate::ops::{Actor, Via};

/// What one request did, gathered for its log line and metrics.
pub(super) struct Exchange {
    /// The client's address (see [`client_addr`]).
    pub(super) client: IpAddr,
    /// The authenticated identity, when authentication is on.
    pub(super) identity: Option<String>,
    pub(super) route: &'static str,
    pub(super) state: Option<String>,
    pub(super) bytes_in: u64,
}

impl Exchange {
    /// The request's client, as the operations see it: `level` is its
    /// identity's level on the state, `None` without authentication.
    pub(super) fn actor(&self, level: Option<Access>) -> Actor {
        Actor {
            identity: self.identity.clone(),
            level,
            client: Some(self.client),
            via: Via::Http,
        }
    }
}

/// One request as the access log shows it, once answered.
pub(super) struct Answered<'a> {
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) request_id: &'a str,
    pub(super) status: u16,
    pub(super) elapsed: Duration,
    pub(super) bytes_out: u64,
    /// Why it failed, when it did.
    pub(super) reason: Option<String>,
}

/// Writes the access log line of a request: `warn` for a server failure,
/// `info` for the rest.
pub(super) fn log_request(ex: &Exchange, a: Answered<'_>) {
    let Answered {
        method,
        path,
        request_id,
        status,
        elapsed,
        bytes_out,
        reason,
    } = a;
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    let client = ex.client;
    let state = ex.state.as_deref().unwrap_or("-");
    let identity = ex.identity.as_deref().unwrap_or("-");
    let (route, bytes_in) = (ex.route, ex.bytes_in);
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
                .map(|a| a.trim().parse::<IpAddr>().ok().map(|a| a.to_canonical()))
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
                    Some(addr.parse::<IpAddr>().ok().map(|a| a.to_canonical()))
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
    // An IPv4 client of a listener on `[::]` arrives as `::ffff:a.b.c.d`.
    let mut client = peer.to_canonical();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 addresses written as IPv6 (`::ffff:a.b.c.d`, as a listener on
    /// `[::]` sees IPv4 peers, and as some proxies write them) are the
    /// IPv4 addresses to `trusted_proxies`.
    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_addresses() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "192.0.2.7, ::ffff:10.1.2.3".parse().unwrap(),
        );
        let peer: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let client = client_addr(&trusted, ClientIpHeader::XForwardedFor, peer, &headers);
        assert_eq!(client, "192.0.2.7".parse::<IpAddr>().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(
            "forwarded",
            "for=\"[::ffff:192.0.2.8]:1234\"".parse().unwrap(),
        );
        let client = client_addr(&trusted, ClientIpHeader::Forwarded, peer, &headers);
        assert_eq!(client, "192.0.2.8".parse::<IpAddr>().unwrap());
        // Not trusted: the peer, in its IPv4 form.
        let client = client_addr(&[], ClientIpHeader::Forwarded, peer, &headers);
        assert_eq!(client, "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}

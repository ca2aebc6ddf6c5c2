//! What `GET /metrics` shows, in the Prometheus text format
//! (prometheus-client). [`Metrics`] is shared by the server (connections
//! refused, requests timed out) and the protocol (requests, bodies, lock
//! conflicts, refusals, store errors). Labels come from small fixed sets:
//! routes are URL templates and methods a known list, never a key or a
//! client's string, so no label set can grow without bound.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Registers `metric` under `name` with its help line, and gives it back
/// to be counted: the registry holds a handle to the same metric.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Why a write was refused, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Lower serial, other lineage, or same serial with other bytes.
    Stale,
    /// Another client holds the lock.
    Locked,
    /// Not a state, bad key, `Content-MD5` mismatch and the like.
    Invalid,
    /// Over `max_body_bytes`.
    TooLarge,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Stale => "stale",
            Refusal::Locked => "locked",
            Refusal::Invalid => "invalid",
            Refusal::TooLarge => "too_large",
        }
    }
}

/// The notification counters, shared with the delivery loop (each handle
/// counts into the same metric).
#[derive(Clone, Default)]
pub struct NotifyMetrics {
    delivered: Counter,
    retried: Counter,
    given_up: Counter,
    pending: Gauge,
    undeliverable: Gauge,
}

impl NotifyMetrics {
    /// A notification was taken by its destination.
    pub fn delivered(&self) {
        self.delivered.inc();
    }

    /// An attempt failed and another is due later.
    pub fn retried(&self) {
        self.retried.inc();
    }

    /// The last attempt failed: the event is kept as undelivered.
    pub fn given_up(&self) {
        self.given_up.inc();
    }

    /// Sets the entries waiting in the outbox and those given up on, as
    /// the store lists them (every replica's).
    pub fn set_outbox(&self, pending: usize, undeliverable: usize) {
        self.pending.set(pending as i64);
        self.undeliverable.set(undeliverable as i64);
    }
}

/// Every metric stategate exposes.
pub struct Metrics {
    registry: Registry,
    /// The notification counters, handed to the delivery loop.
    pub notifications: NotifyMetrics,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    body_bytes: Family<DirectionLabels, Counter>,
    lock_conflicts: Counter,
    force_unlocks: Counter,
    writes_refused: Family<ReasonLabels, Counter>,
    store_errors: Family<StoreLabels, Counter>,
    connections_refused: Counter,
    requests_timed_out: Counter,
    downloads_cut: Counter,
    auth_failures: Counter,
    oidc_stale_issuers: Gauge,
    states: Gauge,
    locks_held: Gauge,
    store_writable: Family<StoreLabels, Gauge>,
    store_free_bytes: Family<StoreLabels, Gauge>,
    /// When the state and lock gauges were last counted.
    counted_at: Mutex<Option<Instant>>,
    /// The store's name for `stategate_store_errors_total`.
    store: &'static str,
}

/// How long the state and lock counts (a listing of the store) are reused.
pub const COUNT_EVERY: Duration = Duration::from_secs(15);

impl Metrics {
    /// The metrics of a server on the store named `store` (`local`, `s3`...).
    pub fn new(store: &'static str) -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        Metrics {
            requests: registered(
                r,
                "stategate_http_requests",
                "HTTP requests answered, by method, route template and status",
                Family::default(),
            ),
            durations: registered(
                r,
                "stategate_http_request_duration_seconds",
                "Time to answer a request, by method and route template",
                Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            ),
            body_bytes: registered(
                r,
                "stategate_http_body_bytes",
                "Request (in) and response (out) body bytes",
                Family::default(),
            ),
            lock_conflicts: registered(
                r,
                "stategate_lock_conflicts",
                "LOCK requests refused because another client holds the lock",
                Counter::default(),
            ),
            force_unlocks: registered(
                r,
                "stategate_force_unlocks",
                "Locks released by a force-unlock",
                Counter::default(),
            ),
            writes_refused: registered(
                r,
                "stategate_writes_refused",
                "State writes refused, by reason (stale, locked, invalid, too_large)",
                Family::default(),
            ),
            store_errors: registered(
                r,
                "stategate_store_errors",
                "Requests answered 503 because the store failed",
                Family::default(),
            ),
            connections_refused: registered(
                r,
                "stategate_connections_refused",
                "Connections answered 503 because max_connections were open",
                Counter::default(),
            ),
            requests_timed_out: registered(
                r,
                "stategate_requests_timed_out",
                "Connections closed by header_timeout and uploads cut off by body_min_rate",
                Counter::default(),
            ),
            downloads_cut: registered(
                r,
                "stategate_downloads_cut",
                "Responses cut off because the client stopped taking them (no byte for idle_timeout, or slower than body_min_rate)",
                Counter::default(),
            ),
            auth_failures: registered(
                r,
                "stategate_auth_failures",
                "Requests refused for missing or wrong credentials",
                Counter::default(),
            ),
            oidc_stale_issuers: registered(
                r,
                "stategate_oidc_stale_issuers",
                "OIDC issuers whose keys are past keys_max_age and still used because the issuer cannot be reached",
                Gauge::default(),
            ),
            states: registered(
                r,
                "stategate_states",
                "States in the store (counted at most every 15 s)",
                Gauge::default(),
            ),
            locks_held: registered(
                r,
                "stategate_locks_held",
                "Locks held in the store (counted at most every 15 s)",
                Gauge::default(),
            ),
            store_writable: registered(
                r,
                "stategate_store_writable",
                "1 while the store takes writes; 0 while it serves reads only (degraded, or read_only)",
                Family::default(),
            ),
            store_free_bytes: registered(
                r,
                "stategate_store_free_bytes",
                "Bytes free on the device holding a local or SQLite store",
                Family::default(),
            ),
            notifications: NotifyMetrics {
                delivered: registered(
                    r,
                    "stategate_notifications_delivered",
                    "Notifications taken by their destination (2xx)",
                    Counter::default(),
                ),
                retried: registered(
                    r,
                    "stategate_notifications_retried",
                    "Notification attempts that failed and were scheduled again",
                    Counter::default(),
                ),
                given_up: registered(
                    r,
                    "stategate_notifications_given_up",
                    "Notifications given up on after their last attempt by this server",
                    Counter::default(),
                ),
                pending: registered(
                    r,
                    "stategate_notifications_pending",
                    "Notifications waiting in the store's outbox",
                    Gauge::default(),
                ),
                undeliverable: registered(
                    r,
                    "stategate_notifications_undeliverable",
                    "Notifications given up on and kept in the store (shown on the dashboard)",
                    Gauge::default(),
                ),
            },
            counted_at: Mutex::new(None),
            store,
            registry: {
                let build = Family::<BuildLabels, Gauge>::default();
                build
                    .get_or_create(&BuildLabels {
                        version: env!("CARGO_PKG_VERSION"),
                    })
                    .set(1);
                registry.register("stategate_build_info", "The running version", build);
                registry
            },
        }
    }

    /// Counts one answered request.
    pub fn request(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        elapsed: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status: status.to_string(),
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels { method, route })
            .observe(elapsed.as_secs_f64());
        self.body_bytes
            .get_or_create(&DirectionLabels { direction: "in" })
            .inc_by(bytes_in);
        self.body_bytes
            .get_or_create(&DirectionLabels { direction: "out" })
            .inc_by(bytes_out);
    }

    pub fn lock_conflict(&self) {
        self.lock_conflicts.inc();
    }

    pub fn force_unlock(&self) {
        self.force_unlocks.inc();
    }

    pub fn write_refused(&self, why: Refusal) {
        self.writes_refused
            .get_or_create(&ReasonLabels {
                reason: why.label(),
            })
            .inc();
    }

    pub fn store_error(&self) {
        self.store_errors
            .get_or_create(&StoreLabels { store: self.store })
            .inc();
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    pub fn request_timed_out(&self) {
        self.requests_timed_out.inc();
    }

    /// A response was cut off because its client stopped reading it.
    pub fn download_cut(&self) {
        self.downloads_cut.inc();
    }

    /// Whether the state and lock counts are due for a refresh; marks them
    /// as being refreshed, so concurrent scrapes list the store once.
    pub fn counts_due(&self) -> bool {
        let mut at = self.counted_at.lock().expect("metrics lock");
        if at.is_some_and(|t| t.elapsed() < COUNT_EVERY) {
            return false;
        }
        *at = Some(Instant::now());
        true
    }

    pub fn set_oidc_stale_issuers(&self, issuers: usize) {
        self.oidc_stale_issuers.set(issuers as i64);
    }

    /// Sets the state and lock gauges.
    pub fn set_counts(&self, states: usize, locks: usize) {
        self.states.set(states as i64);
        self.locks_held.set(locks as i64);
    }

    /// Sets whether the store takes writes, and the free bytes on its
    /// device where it is on this machine's disk.
    pub fn set_store_writes(&self, writable: bool, free_bytes: Option<u64>) {
        let labels = StoreLabels { store: self.store };
        self.store_writable
            .get_or_create(&labels)
            .set(i64::from(writable));
        if let Some(free) = free_bytes {
            self.store_free_bytes
                .get_or_create(&labels)
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The `method` label: one of a known set, so clients cannot add labels.
pub fn method_label(method: &hyper::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "LOCK" => "LOCK",
        "UNLOCK" => "UNLOCK",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_bounded_labels() {
        let m = Metrics::new("local");
        m.request("GET", "/states/{key}", 200, Duration::from_millis(3), 0, 10);
        m.write_refused(Refusal::Stale);
        m.store_error();
        m.set_counts(4, 1);
        let text = m.render();
        for needle in [
            r#"stategate_http_requests_total{method="GET",route="/states/{key}",status="200"} 1"#,
            "stategate_http_request_duration_seconds_bucket",
            r#"stategate_http_body_bytes_total{direction="out"} 10"#,
            r#"stategate_writes_refused_total{reason="stale"} 1"#,
            r#"stategate_store_errors_total{store="local"} 1"#,
            "stategate_states 4",
            "stategate_locks_held 1",
            "stategate_build_info{version=",
            "stategate_lock_conflicts_total 0",
            "stategate_connections_refused_total 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert_eq!(
            method_label(&hyper::Method::from_bytes(b"BREW").unwrap()),
            "other"
        );
    }
}

//! The sending loop every server runs, off every request's path.
//!
//! A pass lists the outbox, skips what is not due (in this process's
//! memory of each entry's next attempt, so a long queue for a dead
//! receiver is not read again every pass), claims what is due with a
//! compare-and-swap write and sends it in a task of its own: a receiver
//! that hangs holds up only its own entries, at most
//! [`IN_FLIGHT_PER_DESTINATION`] at a time. A pass runs at once when this
//! server adds an entry, and every [`POLL`] for the entries other replicas
//! add or leave behind.
//!
//! An attempt that does not get a 2xx within [`ATTEMPT_TIMEOUT`] is tried
//! again after 1 s, then 2 s, 4 s... up to 5 min between attempts, until
//! `notification_max_attempts`; then the entry is moved to the undelivered
//! ones, counted and shown on the dashboard.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};

use super::destination::{Destination, Secret};
use super::outbox::Entry;
use super::{Notifier, NotifySettings, now_ms, wire};
use crate::metrics::NotifyMetrics;
use crate::stores::Version;

/// How often the outbox is listed when nothing wakes the loop sooner.
pub const POLL: Duration = Duration::from_secs(2);
/// The longest one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claim keeps other replicas off an entry: longer than an
/// attempt, so a live sender's claim never runs out under it.
const CLAIM: Duration = Duration::from_secs(25);
/// The first wait after a failed attempt, doubled after each.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Attempts in flight to one destination at once.
pub const IN_FLIGHT_PER_DESTINATION: usize = 4;

/// The wait after `attempts` failed attempts.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (FIRST_BACKOFF * (1u32 << doublings)).min(MAX_BACKOFF)
}

/// The sending side of the notifier.
pub struct Delivery {
    notifier: Arc<Notifier>,
    client: reqwest::Client,
    /// The signing secrets, by destination name.
    secrets: HashMap<String, Secret>,
    source: String,
    max_attempts: u32,
    metrics: NotifyMetrics,
    /// This process, in the claims it writes.
    replica: String,
    /// What this process knows of each entry: when it is next due.
    next_due: Mutex<HashMap<String, i64>>,
    /// Entries being sent by this process, by key, and their destination.
    in_flight: Mutex<HashMap<String, String>>,
}

impl Delivery {
    /// A sender for `notifier`'s destinations, with their `secrets`.
    pub fn new(
        notifier: Arc<Notifier>,
        settings: &NotifySettings,
        secrets: HashMap<String, Secret>,
        metrics: NotifyMetrics,
        replica: String,
    ) -> Result<Arc<Delivery>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            // A redirect would send a signed body where it was not meant to go.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Arc::new(Delivery {
            notifier,
            client,
            secrets,
            source: settings.source.clone(),
            max_attempts: settings.max_attempts.max(1),
            metrics,
            replica,
            next_due: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }))
    }

    /// Sends until `stop` turns true. Entries still in flight then are
    /// dropped with the runtime; their claims run out and they are sent
    /// again, by this server when it starts or by another replica.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let wait = self.pass().await;
            tokio::select! {
                () = self.notifier.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One pass over the outbox; returns how long until the next is due.
    async fn pass(self: &Arc<Self>) -> Duration {
        let outbox = self.notifier.outbox();
        let keys = match outbox.waiting().await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "the notification outbox could not be listed");
                return POLL;
            }
        };
        match outbox.undelivered_count().await {
            Ok(undelivered) => {
                self.notifier.set_undelivered(undelivered);
                self.metrics.set_outbox(keys.len(), undelivered);
            }
            Err(e) => tracing::warn!(error = %e, "undelivered notifications could not be counted"),
        }
        let now = now_ms();
        let mut soonest = now + POLL.as_millis() as i64;
        {
            let listed: HashSet<&String> = keys.iter().collect();
            self.next_due
                .lock()
                .expect("delivery lock")
                .retain(|k, _| listed.contains(k));
        }
        for key in keys {
            if let Some(due) = self.known_due(&key)
                && due > now
            {
                soonest = soonest.min(due);
                continue;
            }
            let destination = destination_of(&key);
            if !self.may_start(&key, destination) {
                continue;
            }
            match self.claim(&key).await {
                Claimed::Sending(entry, version) => {
                    let this = Arc::clone(self);
                    tokio::spawn(async move { this.send(key, *entry, version).await });
                }
                Claimed::NotDue(due) => {
                    self.remember(&key, due);
                    soonest = soonest.min(due);
                    self.finish(&key);
                }
                Claimed::Gone => self.finish(&key),
            }
        }
        Duration::from_millis((soonest - now_ms()).clamp(50, POLL.as_millis() as i64) as u64)
    }

    fn known_due(&self, key: &str) -> Option<i64> {
        self.next_due
            .lock()
            .expect("delivery lock")
            .get(key)
            .copied()
    }

    fn remember(&self, key: &str, due: i64) {
        self.next_due
            .lock()
            .expect("delivery lock")
            .insert(key.to_string(), due);
    }

    /// Marks `key` as being handled by this process unless it already is,
    /// or its destination has its fill of attempts in flight.
    fn may_start(&self, key: &str, destination: &str) -> bool {
        let mut in_flight = self.in_flight.lock().expect("delivery lock");
        if in_flight.contains_key(key)
            || in_flight.values().filter(|d| *d == destination).count() >= IN_FLIGHT_PER_DESTINATION
        {
            return false;
        }
        in_flight.insert(key.to_string(), destination.to_string());
        true
    }

    fn finish(&self, key: &str) {
        self.in_flight.lock().expect("delivery lock").remove(key);
    }

    /// Reads the entry at `key` and, when it is due, claims it.
    async fn claim(&self, key: &str) -> Claimed {
        let outbox = self.notifier.outbox();
        let (mut entry, version) = match outbox.read(key).await {
            Ok(Some(read)) => read,
            Ok(None) => return Claimed::Gone,
            Err(e) => {
                tracing::warn!(key, error = %e, "an outbox entry could not be read");
                return Claimed::NotDue(now_ms() + POLL.as_millis() as i64);
            }
        };
        let now = now_ms();
        if !entry.due(now) {
            return Claimed::NotDue(entry.next_attempt_ms.max(entry.claimed_until_ms));
        }
        if self.notifier.destination(&entry.destination).is_none() {
            // Another replica may have it configured; this one leaves it.
            return Claimed::NotDue(now + 60_000);
        }
        entry.claimed_until_ms = now + CLAIM.as_millis() as i64;
        entry.claimed_by = Some(self.replica.clone());
        match outbox.replace(key, &entry, &version).await {
            Ok(Some(claimed)) => Claimed::Sending(Box::new(entry), claimed),
            // Another replica claimed or sent it first.
            Ok(None) => Claimed::NotDue(now + POLL.as_millis() as i64),
            Err(e) => {
                tracing::warn!(key, error = %e, "an outbox entry could not be claimed");
                Claimed::NotDue(now + POLL.as_millis() as i64)
            }
        }
    }

    /// Sends a claimed entry once and records the outcome.
    async fn send(self: Arc<Self>, key: String, mut entry: Entry, claimed: Version) {
        let outbox = self.notifier.outbox();
        let destination = self
            .notifier
            .destination(&entry.destination)
            .expect("claimed entries have a destination");
        let attempt = self.attempt(destination, &entry).await;
        entry.attempts += 1;
        let outcome = match attempt {
            Ok(()) => {
                self.metrics.delivered();
                tracing::debug!(destination = %entry.destination, event = %entry.record.id, "notification delivered");
                outbox.remove(&key, &claimed).await
            }
            Err(why) if entry.attempts >= self.max_attempts => {
                tracing::warn!(
                    destination = %entry.destination,
                    event = %entry.record.id,
                    attempts = entry.attempts,
                    error = %why,
                    "notification given up on after its last attempt; kept as undelivered"
                );
                entry.last_error = Some(why);
                entry.claimed_until_ms = 0;
                entry.claimed_by = None;
                self.metrics.given_up();
                outbox.give_up(&key, &entry, &claimed).await
            }
            Err(why) => {
                let wait = backoff(entry.attempts);
                tracing::info!(
                    destination = %entry.destination,
                    event = %entry.record.id,
                    attempts = entry.attempts,
                    retry_in_ms = wait.as_millis() as u64,
                    error = %why,
                    "notification not delivered; will try again"
                );
                entry.last_error = Some(why);
                entry.next_attempt_ms = now_ms() + wait.as_millis() as i64;
                entry.claimed_until_ms = 0;
                entry.claimed_by = None;
                self.metrics.retried();
                self.remember(&key, entry.next_attempt_ms);
                outbox.replace(&key, &entry, &claimed).await.map(|_| ())
            }
        };
        if let Err(e) = outcome {
            // The claim runs out and the entry is sent again: at least once.
            tracing::warn!(key, error = %e, "the outbox could not be updated after an attempt");
        }
        self.finish(&key);
        // What this attempt changed may make others due.
        self.notifier.wake.notify_one();
    }

    /// One POST; the error names the status or the failure, never the URL
    /// or the secret.
    async fn attempt(&self, destination: &Destination, entry: &Entry) -> Result<(), String> {
        let body = wire::body(&entry.record, destination.format, &self.source);
        let mut request = self
            .client
            .post(destination.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static(body.content_type))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("stategate/", env!("CARGO_PKG_VERSION"))),
            )
            .header(wire::EVENT_ID_HEADER, entry.record.id.as_str());
        if let Some(secret) = self.secrets.get(&destination.name) {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            request = request.header(
                wire::SIGNATURE_HEADER,
                wire::signature(secret, now, &body.bytes),
            );
        }
        match request.body(body.bytes).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("the receiver answered {}", response.status())),
            Err(e) => Err(describe(&e)),
        }
    }
}

/// What claiming found.
enum Claimed {
    /// Claimed by this process, to be sent; the version of the claim.
    Sending(Box<Entry>, Version),
    /// Not due before then (Unix milliseconds), or claimed by another.
    NotDue(i64),
    /// Sent and removed meanwhile.
    Gone,
}

/// The destination part of an outbox key.
fn destination_of(key: &str) -> &str {
    key.strip_prefix(super::outbox::OUTBOX_PREFIX)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
}

/// A request failure without its URL (a Slack webhook's URL is its secret).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "was redirected"
    } else {
        "failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    match cause.is_empty() {
        true => format!("the request {what}"),
        false => format!("the request {what}: {cause}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_to_five_minutes() {
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn the_destination_is_read_from_the_key() {
        assert_eq!(
            destination_of(".stategate/outbox/prod-hooks/0189ab.json"),
            "prod-hooks"
        );
        assert_eq!(destination_of("elsewhere"), "");
    }
}

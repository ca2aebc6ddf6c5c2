//! Notifications that are never lost: each event a destination of the
//! `notifications:` section asks for is written to an outbox in the store
//! before the operation that made it answers, then sent by a background
//! loop, signed, at least once, retried with backoff, and kept where it
//! can be seen when it cannot be sent.
//!
//! The operations layer ([`crate::ops`]) turns each of its typed events
//! into a [`Record`] and hands it to the [`Notifier`]; the outbox write is
//! the only thing a request waits for, so a slow or dead receiver never
//! slows Terraform. Sending is [`deliver::Delivery`]'s: every server runs
//! one, the replicas of one store share the outbox, and a claim written
//! with compare-and-swap decides which of them sends a given entry.
//! [`held`] watches for locks held longer than `lock_held_too_long`, in
//! one replica at a time.
//!
//! - [`record`]: the event as receivers read it, and its id.
//! - [`destination`]: the `notifications:` section, checked.
//! - [`outbox`]: the objects in the store and their claims.
//! - [`wire`]: the CloudEvents and Slack bodies and the signature.
//! - [`deliver`]: the sending loop.
//! - [`held`]: the lock-age check and its lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::stores::Store;

pub mod deliver;
pub mod destination;
pub mod held;
pub mod outbox;
pub mod record;
pub mod wire;

pub use destination::{Destination, Format, Secret, parse_section};
pub use outbox::{Entry, Outbox};
pub use record::{ActorId, Kind, Record, StateId};

/// The checked `notifications:` section and the settings beside it.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub destinations: Vec<Destination>,
    /// Notify once per lock held longer than this; `None` never does.
    pub lock_held_too_long: Option<Duration>,
    /// Attempts per event and destination before it is given up on and
    /// kept as undelivered.
    pub max_attempts: u32,
    /// The CloudEvents `source` (`stategate://<host>`).
    pub source: String,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            destinations: Vec::new(),
            lock_held_too_long: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            source: "stategate://localhost".into(),
        }
    }
}

/// Attempts before an event is given up on: with the backoff of
/// [`deliver`] (1 s doubling to 5 min) about an hour and a half.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 24;

/// How long one event that the server noticed by itself (a key that does
/// not open a state) is not noticed again for the same state and reason.
const NOTICE_AGAIN_AFTER: Duration = Duration::from_secs(3600);

/// Takes records from the operations and puts each in the outbox of every
/// destination that wants it. Shared by the requests, the delivery loop and
/// the lock-age check.
pub struct Notifier {
    destinations: Vec<Destination>,
    outbox: Outbox,
    /// Wakes the delivery loop of this server at once.
    wake: Notify,
    /// Entries given up on, as the delivery loop last counted them.
    undelivered: AtomicUsize,
    /// When each noticed event was last recorded ([`Notifier::notice`]).
    noticed: Mutex<HashMap<String, Instant>>,
}

impl Notifier {
    /// A notifier over the outbox in `store`; `None` when no destination is
    /// configured, so the operations do nothing more than before.
    pub fn new(settings: &NotifySettings, store: Arc<dyn Store>) -> Option<Arc<Notifier>> {
        if settings.destinations.is_empty() {
            return None;
        }
        Some(Arc::new(Notifier {
            destinations: settings.destinations.clone(),
            outbox: Outbox::new(store),
            wake: Notify::new(),
            undelivered: AtomicUsize::new(0),
            noticed: Mutex::new(HashMap::new()),
        }))
    }

    /// Writes `record` to the outbox of each destination that wants it,
    /// and wakes the delivery loop. A store that fails loses the event for
    /// that destination only, and says so in the log: the operation it
    /// records has happened and cannot be taken back.
    pub async fn record(&self, record: Record) {
        let mut added = false;
        for destination in self.destinations.iter().filter(|d| d.wants(&record)) {
            match self.outbox.add(&destination.name, &record).await {
                Ok(()) => added = true,
                Err(e) => tracing::error!(
                    destination = %destination.name,
                    event = %record.id,
                    kind = record.kind.name(),
                    error = %e,
                    "a notification could not be written to the outbox and will not be sent"
                ),
            }
        }
        if added {
            self.wake.notify_one();
        }
    }

    /// Records an event the server noticed by itself, at most once per
    /// `dedupe` key an hour, so a broken state read over and over does not
    /// flood the receivers.
    pub async fn notice(&self, dedupe: String, record: Record) {
        {
            let mut noticed = self.noticed.lock().expect("notifier lock");
            if noticed
                .get(&dedupe)
                .is_some_and(|at| at.elapsed() < NOTICE_AGAIN_AFTER)
            {
                return;
            }
            if noticed.len() > 10_000 {
                noticed.retain(|_, at| at.elapsed() < NOTICE_AGAIN_AFTER);
            }
            noticed.insert(dedupe, Instant::now());
        }
        self.record(record).await;
    }

    /// The destination named `name`.
    pub fn destination(&self, name: &str) -> Option<&Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }

    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    /// The outbox, for the dashboard's list of undelivered events.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Entries given up on, as last counted (every few seconds).
    pub fn undelivered(&self) -> usize {
        self.undelivered.load(Ordering::Relaxed)
    }

    fn set_undelivered(&self, n: usize) {
        self.undelivered.store(n, Ordering::Relaxed);
    }
}

/// A name for this process among the replicas, in claims and leases.
pub fn replica_name() -> String {
    let mut random = [0u8; 6];
    let _ = getrandom::getrandom(&mut random);
    let host = hostname().unwrap_or_else(|| "stategate".into());
    let mut name = format!("{host}-");
    for b in random {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// This machine's name, where the system says it.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

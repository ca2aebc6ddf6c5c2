//! The lock-age check: once per lock held longer than
//! `lock_held_too_long`, a `lock.held_too_long` event.
//!
//! One replica checks at a time: the one holding the lease object
//! [`LEASE_KEY`], taken with a conditional create, renewed with
//! compare-and-swap, and taken over by another replica once it has run out
//! (its holder died). The check remembers which locks it has told about in
//! marker objects beside the lease, one per lock ID, so a new holder of the
//! lease does not tell again, and removes a marker once its lock is gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::record::{ActorId, Kind, Record, StateId};
use super::{Notifier, now_ms};
use crate::state::{LockInfo, StateRef, States};
use crate::stores::{Condition, OpDelete, OpList, StoreError, StoreExt};

/// The lease of the replica that checks.
pub const LEASE_KEY: &str = ".stategate/notify/lock-age-check.json";
/// One marker per lock already told about.
pub const MARKER_PREFIX: &str = ".stategate/notify/held/";

/// How often the check runs for a threshold: often enough to tell within
/// a quarter of it, at least every second and at most every minute.
pub fn check_every(threshold: Duration) -> Duration {
    (threshold / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseBody {
    holder: String,
    until_ms: i64,
}

/// Checks the locks of `states` every [`check_every`] while this replica
/// holds the lease, until `stop` turns true.
pub async fn watch(
    notifier: Arc<Notifier>,
    states: States,
    threshold: Duration,
    replica: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = check_every(threshold);
    // Three missed renewals before another replica takes over.
    let lease_for = every * 3 + Duration::from_secs(5);
    let mut first_seen: HashMap<String, OffsetDateTime> = HashMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match hold_lease(&states, &replica, lease_for).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "the lock-age check's lease could not be taken");
                continue;
            }
        }
        if let Err(e) = check(&notifier, &states, threshold, &mut first_seen).await {
            tracing::warn!(error = %e, "the lock-age check failed; trying again");
        }
    }
}

/// Takes or renews the lease; `false` while another replica holds it.
async fn hold_lease(
    states: &States,
    replica: &str,
    lease_for: Duration,
) -> Result<bool, StoreError> {
    let store = states.store();
    let now = now_ms();
    let body = Bytes::from(
        serde_json::to_vec(&LeaseBody {
            holder: replica.to_string(),
            until_ms: now + lease_for.as_millis() as i64,
        })
        .expect("a lease serialises"),
    );
    let condition = match store.get(LEASE_KEY).await? {
        None => Condition::IfAbsent,
        Some(object) => {
            let held: Option<LeaseBody> = serde_json::from_slice(&object.body).ok();
            match held {
                Some(h) if h.holder != replica && h.until_ms > now => return Ok(false),
                _ => Condition::IfMatch(object.version),
            }
        }
    };
    match store.put(LEASE_KEY, body, condition).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists | StoreError::PreconditionFailed) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The marker of the lock `id` on `state`.
fn marker_key(states: &States, state: &StateRef, id: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(states.object_key(state).as_bytes());
    hash.update([0]);
    hash.update(id.as_bytes());
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{MARKER_PREFIX}{hex}.json")
}

/// One check: an event for each lock older than `threshold` not told
/// about yet, then the markers of locks released since removed.
async fn check(
    notifier: &Notifier,
    states: &States,
    threshold: Duration,
    first_seen: &mut HashMap<String, OffsetDateTime>,
) -> Result<(), crate::state::StateError> {
    let store = states.store();
    let now = OffsetDateTime::now_utc();
    let mut held_markers = HashSet::new();
    let mut seen_now = HashSet::new();
    for (state, info, taken) in states.locks_taken().await? {
        let marker = marker_key(states, &state, &info.id);
        held_markers.insert(marker.clone());
        // Timed from when the store wrote the lock, not from its `Created`,
        // which the client wrote: one in the future would never be told,
        // one long past told at once. Where the store keeps no time, from
        // when this replica first saw the lock.
        let since = match taken {
            Some(taken) => taken,
            None => *first_seen.entry(marker.clone()).or_insert(now),
        };
        seen_now.insert(marker.clone());
        let held_for = now - since;
        if held_for < threshold || store.stat(&marker).await?.is_some() {
            continue;
        }
        let record = held_record(&state, &info, since, held_for);
        notifier.record(record).await;
        // After the event is in the outbox: a crash in between tells twice
        // rather than never.
        match store
            .put(&marker, Bytes::from_static(b"{}"), Condition::IfAbsent)
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    first_seen.retain(|m, _| seen_now.contains(m));
    for entry in store.list(MARKER_PREFIX, OpList::default()).await? {
        if !held_markers.contains(&entry.key) {
            store
                .delete(&entry.key, OpDelete::transient(Condition::Always))
                .await?;
        }
    }
    Ok(())
}

fn held_record(
    state: &StateRef,
    info: &LockInfo,
    since: OffsetDateTime,
    held_for: time::Duration,
) -> Record {
    let seconds = held_for.whole_seconds().max(0);
    let held = match seconds {
        s if s >= 3600 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    };
    Record::new(
        Kind::LockHeldTooLong,
        StateId {
            key: state.key().to_string(),
            workspace: state.workspace().to_string(),
        },
        ActorId {
            identity: None,
            client: "server".into(),
            via: "server".into(),
        },
    )
    .with("lock_id", info.id.clone())
    .with("holder", info.who.clone())
    .with("operation", info.operation.clone())
    .with("created", since.format(&Rfc3339).unwrap_or_default())
    .with("held_seconds", seconds)
    .with("held_for", held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_runs_often_enough_and_not_too_often() {
        assert_eq!(check_every(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(
            check_every(Duration::from_secs(120)),
            Duration::from_secs(30)
        );
        assert_eq!(
            check_every(Duration::from_secs(7200)),
            Duration::from_secs(60)
        );
    }
}

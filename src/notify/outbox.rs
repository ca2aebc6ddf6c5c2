//! The outbox: one object per event and destination in the store, written
//! before the operation that made the event answers, and removed once the
//! destination took it. Because it lives in the store, a restart, a crash
//! or another replica finds every event still to be sent.
//!
//! - `.stategate/outbox/<destination>/<id>.json`: waiting to be sent. Ids
//!   start with the time, so a listing is oldest first.
//! - `.stategate/undelivered/<destination>/<id>.json`: given up on after
//!   the last attempt; kept for the dashboard and for an operator.
//!
//! Replicas share the outbox. Whoever sends an entry first claims it: a
//! compare-and-swap write ([`Condition::IfMatch`] on the version it read)
//! setting `claimed_until`. Another replica leaves a claimed entry alone
//! until the claim runs out, then takes it over, so an entry whose sender
//! died is sent by someone else.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::record::Record;
use crate::stores::{Condition, OpDelete, OpList, Store, StoreError, StoreExt, Version};

/// Where entries wait.
pub const OUTBOX_PREFIX: &str = ".stategate/outbox/";
/// Where entries given up on are kept.
pub const UNDELIVERED_PREFIX: &str = ".stategate/undelivered/";

/// One event waiting for one destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The destination's name.
    pub destination: String,
    pub record: Record,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not to be tried before this (Unix milliseconds).
    #[serde(default)]
    pub next_attempt_ms: i64,
    /// A replica is sending it until then (Unix milliseconds); 0 when
    /// nobody is.
    #[serde(default)]
    pub claimed_until_ms: i64,
    /// The replica that claimed it.
    #[serde(default)]
    pub claimed_by: Option<String>,
    /// Why the last attempt failed: a status or a connection error, never
    /// the URL.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl Entry {
    /// Whether a sender may take this entry at `now`.
    pub fn due(&self, now_ms: i64) -> bool {
        self.next_attempt_ms <= now_ms && self.claimed_until_ms <= now_ms
    }
}

/// The outbox of one store.
#[derive(Clone)]
pub struct Outbox {
    store: Arc<dyn Store>,
}

fn key(prefix: &str, destination: &str, id: &str) -> String {
    format!("{prefix}{destination}/{id}.json")
}

fn encode(entry: &Entry) -> Bytes {
    Bytes::from(serde_json::to_vec(entry).expect("an entry serialises"))
}

impl Outbox {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Outbox { store }
    }

    /// Adds `record` for `destination`, durably, before the caller
    /// answers.
    pub async fn add(&self, destination: &str, record: &Record) -> Result<(), StoreError> {
        let entry = Entry {
            destination: destination.to_string(),
            record: record.clone(),
            attempts: 0,
            next_attempt_ms: 0,
            claimed_until_ms: 0,
            claimed_by: None,
            last_error: None,
        };
        let key = key(OUTBOX_PREFIX, destination, &record.id);
        match self
            .store
            .put(&key, encode(&entry), Condition::IfAbsent)
            .await
        {
            // Ids are unique: one already there is this very entry,
            // written by an earlier try of this call.
            Ok(_) | Err(StoreError::AlreadyExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The keys of the entries waiting, oldest first.
    pub async fn waiting(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .store
            .list(OUTBOX_PREFIX, OpList::default())
            .await?
            .into_iter()
            .map(|e| e.key)
            .filter(|k| k.ends_with(".json"))
            .collect())
    }

    /// How many entries were given up on.
    pub async fn undelivered_count(&self) -> Result<usize, StoreError> {
        Ok(self
            .store
            .list(UNDELIVERED_PREFIX, OpList::default())
            .await?
            .len())
    }

    /// The entries given up on, newest first, at most `limit`.
    pub async fn undelivered(&self, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut keys = self
            .store
            .list(UNDELIVERED_PREFIX, OpList::default())
            .await?;
        keys.sort_by(|a, b| b.key.rsplit('/').next().cmp(&a.key.rsplit('/').next()));
        let mut out = Vec::new();
        for listed in keys.into_iter().take(limit) {
            if let Some((entry, _)) = self.read(&listed.key).await? {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Reads one entry; `None` when it is gone (sent by someone else) or
    /// is not an entry.
    pub async fn read(&self, key: &str) -> Result<Option<(Entry, Version)>, StoreError> {
        let Some(object) = self.store.get(key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&object.body) {
            Ok(entry) => Ok(Some((entry, object.version))),
            Err(e) => {
                tracing::warn!(key, error = %e, "an outbox object that is not an entry is left alone");
                Ok(None)
            }
        }
    }

    /// Writes `entry` over the version `version` of `key`; `None` when the
    /// entry changed meanwhile (another replica claimed or sent it).
    pub async fn replace(
        &self,
        key: &str,
        entry: &Entry,
        version: &Version,
    ) -> Result<Option<Version>, StoreError> {
        match self
            .store
            .put(key, encode(entry), Condition::IfMatch(version.clone()))
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::PreconditionFailed | StoreError::AlreadyExists) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a sent entry, if it is still the version this replica
    /// claimed.
    pub async fn remove(&self, key: &str, version: &Version) -> Result<(), StoreError> {
        match self
            .store
            .delete(key, OpDelete::new(Condition::IfMatch(version.clone())))
            .await
        {
            Ok(()) | Err(StoreError::PreconditionFailed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves an entry given up on out of the way of the senders, kept
    /// under [`UNDELIVERED_PREFIX`].
    pub async fn give_up(
        &self,
        key: &str,
        entry: &Entry,
        version: &Version,
    ) -> Result<(), StoreError> {
        let kept = self::key(UNDELIVERED_PREFIX, &entry.destination, &entry.record.id);
        self.store
            .put(&kept, encode(entry), Condition::Always)
            .await?;
        self.remove(key, version).await
    }
}

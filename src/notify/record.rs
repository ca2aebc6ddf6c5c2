//! What a notification says: one [`Record`] per event, in the words a
//! receiver reads (the same JSON in the outbox, in a CloudEvent's `data`
//! and behind a Slack line). The operations layer turns its typed events
//! into records; the lock-age check makes its own.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The kinds of event a destination can ask for, by their configured name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A write became the current state (a client's, or an operator's push).
    #[serde(rename = "state.written")]
    Written,
    /// A write was refused: stale serial, other lineage, another's lock,
    /// not a state, or a protected state.
    #[serde(rename = "state.write_refused")]
    WriteRefused,
    /// An old version became the current state again.
    #[serde(rename = "state.restored")]
    Restored,
    /// A state was deleted (its history remains).
    #[serde(rename = "state.deleted")]
    Deleted,
    /// The history of a deleted state was removed.
    #[serde(rename = "state.purged")]
    Purged,
    #[serde(rename = "lock.taken")]
    LockTaken,
    /// The holder released its lock.
    #[serde(rename = "lock.released")]
    LockReleased,
    /// A lock was released without its ID, whoever held it.
    #[serde(rename = "lock.force_released")]
    LockForceReleased,
    /// A lock has been held longer than `lock_held_too_long`.
    #[serde(rename = "lock.held_too_long")]
    LockHeldTooLong,
    /// A state could not be read or changed because no configured
    /// encryption key opens it.
    #[serde(rename = "encryption.key_unusable")]
    KeyUnusable,
}

impl Kind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [Kind; 10] = [
        Kind::Written,
        Kind::WriteRefused,
        Kind::Restored,
        Kind::Deleted,
        Kind::Purged,
        Kind::LockTaken,
        Kind::LockReleased,
        Kind::LockForceReleased,
        Kind::LockHeldTooLong,
        Kind::KeyUnusable,
    ];

    /// The configured name (`state.written`), also the tail of the
    /// CloudEvents type.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Written => "state.written",
            Kind::WriteRefused => "state.write_refused",
            Kind::Restored => "state.restored",
            Kind::Deleted => "state.deleted",
            Kind::Purged => "state.purged",
            Kind::LockTaken => "lock.taken",
            Kind::LockReleased => "lock.released",
            Kind::LockForceReleased => "lock.force_released",
            Kind::LockHeldTooLong => "lock.held_too_long",
            Kind::KeyUnusable => "encryption.key_unusable",
        }
    }

    /// The kind a configured name names.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The state an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateId {
    pub key: String,
    /// `default` for the default workspace.
    pub workspace: String,
}

/// Who did it, as the audit log names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorId {
    /// `user:ann`, `token:ci`, `operator:root`; absent without
    /// authentication, and for what the server itself noticed.
    pub identity: Option<String>,
    /// The client's address, `local` for an operator's command, `server`
    /// for what the server noticed itself.
    pub client: String,
    /// `http`, `dashboard`, `cli` or `server`.
    pub via: String,
}

/// One event as receivers get it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique, and ordered by time: receivers drop an id seen before.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// RFC 3339, UTC.
    pub time: String,
    pub state: StateId,
    pub actor: ActorId,
    /// The history version the event made or restored, where history is
    /// kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The Terraform serial of the state written, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    /// What else the event knows: a refusal's reason, a lock's ID and
    /// holder, a restore's source version.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
}

impl Record {
    /// A record of `kind` about `state`, done by `actor`, now, with a new id.
    pub fn new(kind: Kind, state: StateId, actor: ActorId) -> Record {
        let now = OffsetDateTime::now_utc();
        Record {
            id: new_id(now),
            kind,
            time: now.format(&Rfc3339).unwrap_or_default(),
            state,
            actor,
            version: None,
            serial: None,
            details: Map::new(),
        }
    }

    /// Adds a detail; a `null` value is left out.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Record {
        let value = value.into();
        if !value.is_null() {
            self.details.insert(name.to_string(), value);
        }
        self
    }

    /// The state as people write it: `key`, or `key` in `workspace`.
    pub fn state_name(&self) -> String {
        match self.state.workspace.as_str() {
            "default" => self.state.key.clone(),
            ws => format!("{} (workspace {ws})", self.state.key),
        }
    }
}

/// A new event id: 128 bits as 32 hex digits, the first 48 the time in
/// milliseconds, so ids (and the outbox keys made from them) sort by time,
/// the other 80 random, so replicas never make the same one.
pub fn new_id(now: OffsetDateTime) -> String {
    let millis = (now.unix_timestamp_nanos() / 1_000_000) as u64 & 0xFFFF_FFFF_FFFF;
    let mut random = [0u8; 10];
    if getrandom::getrandom(&mut random).is_err() {
        // No randomness: the time and a counter still keep this process's
        // ids apart.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        random[..8].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    }
    let mut id = format!("{millis:012x}");
    for b in random {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names_and_json() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Some(kind));
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.name());
        }
        assert_eq!(Kind::parse("state.exploded"), None);
    }

    #[test]
    fn ids_are_unique_and_sort_by_time() {
        let early = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let late = early + time::Duration::milliseconds(1);
        let a = new_id(early);
        let b = new_id(early);
        let c = new_id(late);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(a < c && b < c, "{a} {b} {c}");
    }
}

//! Locks: the `<object key>.tflock` object holding the holder's LockInfo,
//! created with a conditional create so exactly one of many concurrent
//! lockers wins, in this process or any other sharing the store.
//!
//! The lock object holds the LockInfo bytes exactly as the client sent them,
//! so a 423 answer returns the holder's own JSON, and Terraform's native s3
//! backend (which writes the same object with `use_lockfile`) reads ours and
//! we read its.
//!
//! With authentication on, the lock also names the identity that took it,
//! so that knowing a lock's ID (which anyone who may read the state can
//! see) is not enough to write under it or release it. The identity rides
//! in the lock object itself, as one more member, [`OWNER_FIELD`], inserted
//! before the closing brace, so taking a lock stays one conditional create:
//! Terraform's native backends ignore a member they do not know, and every
//! answer that shows the LockInfo strips it again, giving back the bytes
//! the client sent. A client cannot send that member itself.

use bytes::Bytes;
use serde::Deserialize;

use super::{LeaseNeed, StateChange, StateError, States, key::StateRef};
use crate::stores::{Condition, OpDelete, StoreError, StoreExt, Version};

/// The fields of a LockInfo that stategate acts on. Field names are
/// Terraform's, capitalised; everything else in the body is kept verbatim.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Who", default)]
    pub who: String,
    #[serde(rename = "Operation", default)]
    pub operation: String,
    #[serde(rename = "Created", default)]
    pub created: String,
}

/// The member that names the identity holding a lock.
pub const OWNER_FIELD: &str = "StategateOwner";

/// The LockInfo to store for `body` taken by `owner`.
fn with_owner(body: &Bytes, owner: &str) -> Bytes {
    let close = body
        .iter()
        .rposition(|b| *b == b'}')
        .expect("a LockInfo is a JSON object");
    let member = format!(
        ",\"{OWNER_FIELD}\":{}",
        serde_json::to_string(owner).expect("a string serialises")
    );
    let mut out = Vec::with_capacity(body.len() + member.len());
    out.extend_from_slice(&body[..close]);
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(&body[close..]);
    Bytes::from(out)
}

/// Splits a stored lock into the client's bytes and the owner, undoing
/// [`with_owner`] exactly; a lock without the member (taken without
/// authentication, or by another tool) has no owner.
fn split_owner(stored: Bytes) -> (Bytes, Option<String>) {
    let marker = format!(",\"{OWNER_FIELD}\":");
    let Some(at) = stored
        .windows(marker.len())
        .rposition(|w| w == marker.as_bytes())
    else {
        return (stored, None);
    };
    let rest = &stored[at + marker.len()..];
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<String>();
    let (Some(Ok(owner)), end) = (values.next(), values.byte_offset()) else {
        return (stored, None);
    };
    if rest[end..].first() != Some(&b'}') {
        return (stored, None);
    }
    let mut client = Vec::with_capacity(stored.len());
    client.extend_from_slice(&stored[..at]);
    client.extend_from_slice(&rest[end..]);
    (Bytes::from(client), Some(owner))
}

/// The longest value of one LockInfo field, in bytes. Terraform's fields
/// are a UUID, a user@host, a version, a time, a path and free-text info;
/// a lock object is returned with every 409 and 423, so it stays small.
pub const MAX_LOCK_FIELD_BYTES: usize = 4096;

impl LockInfo {
    /// Parses a LockInfo body: a JSON object none of whose fields is longer
    /// than [`MAX_LOCK_FIELD_BYTES`].
    pub fn parse(body: &[u8]) -> Result<Self, StateError> {
        let bad = |e: serde_json::Error| {
            StateError::BadRequest(format!("the body is not a LockInfo: {e}"))
        };
        let members: Members = serde_json::from_slice(body).map_err(bad)?;
        let mut fields = serde_json::Map::new();
        let mut folded = std::collections::HashSet::new();
        for (name, value) in members.0 {
            // Terraform reads a holder's LockInfo with Go's decoder, which
            // matches names case-insensitively and keeps the last: a name
            // twice, in any spelling, would make the ID this server acts on
            // another than the one its taker reads back.
            let folded_name = super::scan::go_folded(&name).into_owned();
            let field = TERRAFORM_FIELDS
                .iter()
                .find(|f| super::scan::go_folded(f) == folded_name);
            if let Some(field) = field
                && let Some(should) = misfit(field, &value)
            {
                return Err(StateError::BadRequest(format!(
                    "the LockInfo field `{name}` must be {should}"
                )));
            }
            if !folded.insert(folded_name) {
                return Err(StateError::BadRequest(format!(
                    "the LockInfo has the field `{name}` twice (names differing only in case count as one)"
                )));
            }
            // Read under Terraform's name, as Terraform reads it (`id` is
            // the `ID`); the body kept is the one sent.
            fields.insert(field.map_or(name, |f| f.to_string()), value);
        }
        if fields.contains_key(OWNER_FIELD) {
            return Err(StateError::BadRequest(format!(
                "the LockInfo field `{OWNER_FIELD}` is reserved for stategate"
            )));
        }
        if let Some((name, _)) = fields.iter().find(|(_, v)| match v {
            serde_json::Value::String(s) => s.len() > MAX_LOCK_FIELD_BYTES,
            other => other.to_string().len() > MAX_LOCK_FIELD_BYTES,
        }) {
            return Err(StateError::BadRequest(format!(
                "the LockInfo field `{name}` is longer than {MAX_LOCK_FIELD_BYTES} bytes"
            )));
        }
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(bad)
    }

    /// Parses the LockInfo a lock object holds. A lock written by something
    /// else that does not parse still locks; its holder just has no ID.
    /// Its fields are read under Terraform's names, as Terraform reads
    /// them (`id` is the `ID`).
    pub fn of_holder(body: &[u8]) -> Self {
        let Ok(fields) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
        else {
            return serde_json::from_slice(body).unwrap_or_default();
        };
        let fields = fields
            .into_iter()
            .map(|(name, value)| (terraform_name(name), value))
            .collect();
        serde_json::from_value(serde_json::Value::Object(fields)).unwrap_or_default()
    }
}

/// `name` as Terraform's LockInfo field it decodes as, when it is one in
/// another spelling (`id` for `ID`); else as it is.
fn terraform_name(name: String) -> String {
    let folded = super::scan::go_folded(&name);
    TERRAFORM_FIELDS
        .iter()
        .find(|f| super::scan::go_folded(f) == folded)
        .map_or(name, |f| f.to_string())
}

/// The fields of Terraform's LockInfo, which it decodes from the holder's
/// LockInfo in a 409 or 423 answer to its LOCK: only when that decodes
/// does `-lock-timeout` wait and try again, so a holder whose field
/// Terraform cannot decode would make every other client fail at once.
const TERRAFORM_FIELDS: [&str; 7] = [
    "ID",
    "Operation",
    "Info",
    "Who",
    "Version",
    "Created",
    "Path",
];

/// What the Terraform LockInfo `field` must be, when `value` is not that:
/// a string (Go's decoder leaves a field alone for `null`), and `Created`
/// an RFC 3339 time, as Go's `time.Time` reads one.
fn misfit(field: &str, value: &serde_json::Value) -> Option<&'static str> {
    use serde_json::Value;
    match (field, value) {
        (_, Value::Null) => None,
        ("Created", Value::String(s)) => {
            let format = time::format_description::well_known::Rfc3339;
            match time::OffsetDateTime::parse(s, &format) {
                Ok(_) => None,
                Err(_) => Some("an RFC 3339 time (2026-11-23T22:19:50Z)"),
            }
        }
        (_, Value::String(_)) => None,
        _ => Some("a string"),
    }
}

/// The members of a JSON object in the order sent, repeats kept, so that
/// a repeated name can be refused rather than silently resolved.
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(member) = map.next_entry()? {
                    out.push(member);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// How a LOCK succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The lock was free and is now held.
    Now,
    /// The lock was already held with the same ID (a retried LOCK), by this
    /// owner (`None`: taken without authentication, or by another tool).
    Already { owner: Option<String> },
}

/// A lock that is held, as read from the store.
#[derive(Debug, Clone)]
pub struct Held {
    /// The holder's LockInfo bytes, as it sent them.
    pub body: Bytes,
    pub info: LockInfo,
    /// The identity that took it, when authentication was on.
    pub owner: Option<String>,
    /// The lock object's version when it was read: a release that read it
    /// already deletes only that version ([`States::release_read`]).
    pub version: Version,
}

impl Held {
    fn from_stored(stored: Bytes, version: Version) -> Self {
        let (body, owner) = split_owner(stored);
        Held {
            info: LockInfo::of_holder(&body),
            body,
            owner,
            version,
        }
    }
}

/// How many times a lock operation re-reads after racing another client
/// (the lock vanished between a failed create and the read, or changed
/// between the read and a conditional delete).
const RACE_RETRIES: usize = 20;

impl States {
    /// The current holder of a state's lock, if any.
    pub async fn lock_holder(&self, state: &StateRef) -> Result<Option<Held>, StateError> {
        let obj = self
            .store
            .get(&state.lock_key(&self.workspace_key_prefix))
            .await?;
        Ok(obj.map(|o| Held::from_stored(o.body, o.version)))
    }

    /// Takes the lock for the LockInfo in `body`, for `owner` when
    /// authentication is on. Succeeds when the lock was free or is already
    /// held with the same ID (a LOCK retried after its answer was lost);
    /// otherwise [`StateError::Locked`] with the holder.
    pub async fn lock(
        &self,
        state: &StateRef,
        body: Bytes,
        owner: Option<&str>,
    ) -> Result<Taken, StateError> {
        let info = LockInfo::parse(&body)?;
        if info.id.is_empty() {
            return Err(StateError::BadRequest(
                "the LockInfo has an empty ID".into(),
            ));
        }
        let body = match owner {
            Some(owner) => with_owner(&body, owner),
            None => body,
        };
        let lock_key = state.lock_key(&self.workspace_key_prefix);
        for _ in 0..RACE_RETRIES {
            match self
                .store
                .put(&lock_key, body.clone(), Condition::IfAbsent)
                .await
            {
                Ok(_) => {
                    tracing::info!(state = %state, id = %info.id, who = %info.who, op = %info.operation, "locked");
                    self.tell(StateChange::Lock {
                        state: state.clone(),
                        holder: Some(info),
                    });
                    return Ok(Taken::Now);
                }
                Err(StoreError::AlreadyExists) => {}
                Err(e) => return Err(e.into()),
            }
            match self.lock_holder(state).await? {
                // Released between our create and our read: try again.
                None => continue,
                Some(held) if held.info.id == info.id => {
                    return Ok(Taken::Already { owner: held.owner });
                }
                Some(held) => return Err(StateError::Locked(held.body)),
            }
        }
        Err(StateError::Store(StoreError::unavailable(
            "the lock kept changing; try again",
        )))
    }

    /// Releases the lock. `body` is the unlocker's LockInfo; an empty body or
    /// an empty ID is a force-unlock (Terraform's `force-unlock` sends no
    /// body, OpenTofu's sends an ID only). Unlocking a free lock succeeds.
    /// Another holder's lock is not released: [`StateError::NotHolder`].
    pub async fn unlock(&self, state: &StateRef, body: &[u8]) -> Result<(), StateError> {
        let requested = if body.iter().all(u8::is_ascii_whitespace) {
            String::new()
        } else {
            LockInfo::parse(body)?.id
        };
        self.release(state, (!requested.is_empty()).then_some(requested.as_str()))
            .await
    }

    /// Releases the lock if `id` holds it, or whoever holds it when `id` is
    /// `None` (force). Deletes only the lock object that was read, so a lock
    /// taken by someone else in between survives: by a conditional delete,
    /// or on stores without one under the state's write lease, which every
    /// stategate release also takes, so the lock read cannot be deleted and
    /// re-created by another client before this delete.
    ///
    /// The delete need not outlive a crash of the machine (no fsync on
    /// local disk): a lock that comes back after one keeps the state locked
    /// until someone unlocks it again, which is safe, where a lock that
    /// vanishes could let two applies run.
    pub async fn release(&self, state: &StateRef, id: Option<&str>) -> Result<(), StateError> {
        self.release_read(state, id, None).await.map(drop)
    }

    /// [`States::release`] of a lock the caller has just read as `read`
    /// ([`States::lock_holder`]), so it is not read again: the delete is
    /// conditional on the version read, so a lock released and taken again
    /// since is not deleted, but read afresh and judged as
    /// [`States::release`] judges it. Returns the lock this call deleted:
    /// `None` when there was none by then (its holder released it), so
    /// that only a release that happened is recorded, with its holder.
    pub async fn release_read(
        &self,
        state: &StateRef,
        id: Option<&str>,
        read: Option<Held>,
    ) -> Result<Option<Held>, StateError> {
        let mut read = read;
        self.with_lease(state, LeaseNeed::WithoutCompareAndSwap, async |lease| {
            let lock_key = state.lock_key(&self.workspace_key_prefix);
            for _ in 0..RACE_RETRIES {
                let held = match read.take() {
                    Some(held) => held,
                    None => match self.store.get(&lock_key).await? {
                        Some(obj) => Held::from_stored(obj.body, obj.version),
                        None => return Ok(None),
                    },
                };
                let holder = &held.info;
                if let Some(id) = id
                    && holder.id != id
                {
                    return Err(StateError::NotHolder(held.body));
                }
                if let Some(lease) = lease {
                    lease.check()?;
                }
                match self
                    .store
                    .delete(
                        &lock_key,
                        OpDelete::transient(Condition::IfMatch(held.version.clone())),
                    )
                    .await
                {
                    Ok(()) => {
                        if id.is_none() {
                            tracing::warn!(state = %state, id = %holder.id, who = %holder.who, "force-unlocked");
                        } else {
                            tracing::info!(state = %state, id = %holder.id, "unlocked");
                        }
                        self.tell(StateChange::Lock {
                            state: state.clone(),
                            holder: None,
                        });
                        return Ok(Some(held));
                    }
                    Err(StoreError::PreconditionFailed) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(StateError::Store(StoreError::unavailable(
                "the lock kept changing; try again",
            )))
        })
        .await
    }

    /// Checks that a change may happen now: when the state is locked, the
    /// caller must present the holder's ID. Returns the holder, if any, so
    /// history can record who wrote.
    pub(super) async fn check_holder(
        &self,
        state: &StateRef,
        id: Option<&str>,
    ) -> Result<Option<Held>, StateError> {
        match self.lock_holder(state).await? {
            None => Ok(None),
            Some(held) if id == Some(held.info.id.as_str()) && !held.info.id.is_empty() => {
                Ok(Some(held))
            }
            Some(held) => Err(StateError::NotHolder(held.body)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> Bytes {
        Bytes::from(format!(r#"{{"ID":"{id}","Who":"{id}@host"}}"#))
    }

    /// A release names the lock it deleted, not the one its caller read:
    /// a lock read, then released by its holder and taken by another, is
    /// the other's that goes; one read and released meanwhile is none.
    #[tokio::test]
    async fn a_release_returns_the_lock_it_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let states = crate::state::local_states_for_tests(dir.path(), 0);
        let state = StateRef::parse("app", None).unwrap();
        states.lock(&state, info("a"), None).await.unwrap();
        let read_a = states.lock_holder(&state).await.unwrap();
        states.release(&state, Some("a")).await.unwrap();
        states.lock(&state, info("b"), None).await.unwrap();
        let released = states.release_read(&state, None, read_a).await.unwrap();
        assert_eq!(released.map(|held| held.info.id).as_deref(), Some("b"));
        assert!(states.lock_holder(&state).await.unwrap().is_none());

        states.lock(&state, info("c"), None).await.unwrap();
        let read_c = states.lock_holder(&state).await.unwrap();
        states.release(&state, Some("c")).await.unwrap();
        let released = states.release_read(&state, None, read_c).await.unwrap();
        assert!(released.is_none(), "released a lock already gone");
    }

    /// A LockInfo's fields are read as Terraform reads them: `id` is the
    /// `ID`, so an UNLOCK naming another ID in lower case is no force-unlock.
    #[tokio::test]
    async fn lock_info_names_in_other_spellings_are_terraforms() {
        assert_eq!(LockInfo::parse(br#"{"id":"b"}"#).unwrap().id, "b");
        assert_eq!(LockInfo::of_holder(br#"{"Id":"c","who":"w"}"#).id, "c");
        let dir = tempfile::tempdir().unwrap();
        let states = crate::state::local_states_for_tests(dir.path(), 0);
        let state = StateRef::parse("app", None).unwrap();
        states.lock(&state, info("a"), None).await.unwrap();
        let e = states.unlock(&state, br#"{"id":"b"}"#).await.unwrap_err();
        assert!(matches!(e, StateError::NotHolder(_)), "{e}");
        states.unlock(&state, br#"{"iD":"a"}"#).await.unwrap();
        assert!(states.lock_holder(&state).await.unwrap().is_none());
        // Taken under `id`, it is held by that ID.
        let lower = Bytes::from_static(br#"{"id":"l","Who":"w"}"#);
        states.lock(&state, lower, None).await.unwrap();
        let e = states
            .unlock(&state, br#"{"ID":"other"}"#)
            .await
            .unwrap_err();
        assert!(matches!(e, StateError::NotHolder(_)), "{e}");
        states.unlock(&state, br#"{"ID":"l"}"#).await.unwrap();
    }

    #[test]
    fn lock_info_fields_are_bounded() {
        // An unbounded LockInfo would be stored, and returned with every
        // 409 and 423.
        let long = "x".repeat(MAX_LOCK_FIELD_BYTES + 1);
        let body = format!(r#"{{"ID":"a","Info":"{long}"}}"#);
        let e = LockInfo::parse(body.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("`Info`"), "{e}");
        let nested = format!(r#"{{"ID":"a","Extra":["{long}"]}}"#);
        assert!(LockInfo::parse(nested.as_bytes()).is_err());
        let ok = format!(r#"{{"ID":"a","Info":"{}"}}"#, &long[1..]);
        assert_eq!(LockInfo::parse(ok.as_bytes()).unwrap().id, "a");
        assert!(LockInfo::parse(b"[]").is_err());
    }

    #[test]
    fn repeated_lock_info_fields_are_refused() {
        for body in [
            &br#"{"ID":"a","Who":"w","ID":"b"}"#[..],
            br#"{"ID":"a","id":"b"}"#,
            br#"{"ID":"a","Who":"w","WHO":"v"}"#,
        ] {
            let e = LockInfo::parse(body).unwrap_err().to_string();
            assert!(e.contains("twice"), "{e}");
        }
        let info = LockInfo::parse(br#"{"ID":"a","Who":"w","Info":""}"#).unwrap();
        assert_eq!((info.id.as_str(), info.who.as_str()), ("a", "w"));
    }

    #[test]
    fn the_owner_rides_in_the_lock_and_comes_out_exactly() {
        for body in [
            &br#"{"ID":"a","Who":"x"}"#[..],
            b"{\"ID\":\"a\"}\n",
            b"{ \"ID\" : \"a\", \"Info\": \"}\" }  ",
        ] {
            let body = Bytes::copy_from_slice(body);
            let stored = with_owner(&body, "oidc:https://x#repo:o/r:ref:\"q\"");
            let info = LockInfo::of_holder(&stored);
            assert_eq!(info.id, "a", "{stored:?}");
            let (client, owner) = split_owner(stored);
            assert_eq!(client, body);
            assert_eq!(owner.as_deref(), Some("oidc:https://x#repo:o/r:ref:\"q\""));
        }
        let plain = Bytes::from_static(br#"{"ID":"a"}"#);
        assert_eq!(split_owner(plain.clone()), (plain, None));
        let forged = format!(r#"{{"ID":"a","{OWNER_FIELD}":"user:root"}}"#);
        assert!(
            LockInfo::parse(forged.as_bytes()).is_err(),
            "clients cannot name an owner"
        );
    }
}

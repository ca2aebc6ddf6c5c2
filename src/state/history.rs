//! Version history: every state stategate stores is kept as a numbered
//! version, in the same store, under `.stategate/history/<object key>/`,
//! a prefix no state key can reach. Each version is two objects:
//! `<n>.tfstate` (the exact bytes) and `<n>.json` ([`VersionMeta`]).
//!
//! The newest version is the current state, and its record names the store
//! version of the state object it was written as. That lets a write learn
//! the stored state's serial, lineage and MD5 from the small record instead
//! of reading and parsing the whole state ([`States::current`]). When the
//! record does not match (a state written by another tool, or one whose
//! record a crash lost), the state is read, parsed and recorded first, so
//! the state a write replaces is always kept. The copy of a just-written
//! state is a [`crate::stores::Store::snapshot`]: a hard link on local
//! disk, a row copy in SQLite. Retention keeps the newest `history_keep`.
//!
//! Appends are not atomic (list, then create the next number), so on
//! stores without compare-and-swap they run under the state's write lease
//! with the write they record ([`super::lease`]): each accepted write is
//! then exactly one record, in order, and retention is exact.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::head::{Current, Described, StateHead, Writer, md5_hex};
use super::{StateError, StateRef, States};
use crate::stores::{Condition, Payload, StoreError, Version};

/// Where history lives; inside the reserved prefix.
pub const HISTORY_PREFIX: &str = ".stategate/history/";

/// What is known about one kept version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionMeta {
    /// Number of the version, counting from 1 per state.
    pub version: u64,
    pub serial: Option<u64>,
    pub lineage: Option<String>,
    /// Number of resources in the state (decides whether another lineage
    /// may replace it).
    #[serde(default)]
    pub resources: usize,
    pub size: u64,
    /// Hex MD5 of the body.
    pub md5: String,
    /// When stategate recorded it (RFC 3339, UTC).
    pub created: String,
    /// LockInfo `Who` of the writer, when the write came under a lock.
    pub who: Option<String>,
    /// LockInfo `ID` of the writer, when the write came under a lock.
    pub lock_id: Option<String>,
    /// The authenticated identity that wrote it (`user:alice`,
    /// `oidc:<iss>#<sub>`), when authentication is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `write`, `push`, `restore`, or `found` for a state stategate did not
    /// write itself (recorded before it was replaced).
    pub operation: String,
    /// The store's version token of the state object holding these bytes,
    /// so the current state is recognised without reading it.
    #[serde(default)]
    pub object_version: Option<String>,
}

impl VersionMeta {
    /// The head of the body this version keeps.
    pub fn head(&self) -> StateHead {
        StateHead {
            lineage: self.lineage.clone(),
            serial: self.serial,
            resources: self.resources,
        }
    }
}

/// Formats a time as RFC 3339.
pub fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&Rfc3339).ok()
}

fn body_key(dir: &str, n: u64) -> String {
    format!("{dir}{n:010}.tfstate")
}

fn meta_key(dir: &str, n: u64) -> String {
    format!("{dir}{n:010}.json")
}

impl States {
    fn history_dir(&self, state: &StateRef) -> String {
        format!("{HISTORY_PREFIX}{}/", self.object_key(state))
    }

    /// The numbers of the versions kept for a state, oldest first.
    async fn version_numbers(&self, dir: &str) -> Result<Vec<u64>, StateError> {
        let mut numbers: Vec<u64> = self
            .store
            .list(dir)
            .await?
            .iter()
            .filter_map(|e| {
                e.key
                    .strip_prefix(dir)?
                    .strip_suffix(".tfstate")?
                    .parse()
                    .ok()
            })
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    async fn meta(&self, dir: &str, n: u64) -> Result<VersionMeta, StateError> {
        if let Some(obj) = self.store.get(&meta_key(dir, n)).await?
            && let Ok(meta) = serde_json::from_slice(&obj.body)
        {
            return Ok(meta);
        }
        // The record of a version whose metadata was never written (the
        // process died in between) is rebuilt from its body.
        let body = self
            .store
            .get(&body_key(dir, n))
            .await?
            .map(|o| o.body)
            .unwrap_or_default();
        let head = StateHead::parse(&body).unwrap_or_default();
        Ok(VersionMeta {
            version: n,
            serial: head.serial,
            lineage: head.lineage,
            resources: head.resources,
            size: body.len() as u64,
            md5: md5_hex(&body),
            created: String::new(),
            who: None,
            lock_id: None,
            identity: None,
            operation: "found".into(),
            object_version: None,
        })
    }

    /// The versions kept for a state, oldest first.
    pub async fn history(&self, state: &StateRef) -> Result<Vec<VersionMeta>, StateError> {
        let dir = self.history_dir(state);
        let mut out = Vec::new();
        for n in self.version_numbers(&dir).await? {
            out.push(self.meta(&dir, n).await?);
        }
        Ok(out)
    }

    /// The body of one kept version, checked against the MD5 recorded for
    /// it: a version changed outside stategate is refused, not served.
    pub async fn version(&self, state: &StateRef, n: u64) -> Result<Bytes, StateError> {
        let dir = self.history_dir(state);
        let Some(obj) = self.store.get(&body_key(&dir, n)).await? else {
            return Err(StateError::NotFound(format!("{state} has no version {n}")));
        };
        let recorded = self.meta(&dir, n).await?.md5;
        if md5_hex(&obj.body) != recorded {
            return Err(StateError::Store(StoreError::unavailable(format!(
                "version {n} of {state} was changed outside stategate (its MD5 no longer matches its record)"
            ))));
        }
        Ok(obj.body)
    }

    /// The stored state, `None` when there is none. It is always in history
    /// when this returns: recognised from the newest record when that
    /// record names its store version, otherwise read and recorded now.
    pub(super) async fn current(&self, state: &StateRef) -> Result<Option<Current>, StateError> {
        let object_key = self.object_key(state);
        let Some(version) = self.store.stat(&object_key).await? else {
            return Ok(None);
        };
        let dir = self.history_dir(state);
        let numbers = self.version_numbers(&dir).await?;
        let newest = match numbers.last() {
            Some(&n) => Some(self.meta(&dir, n).await?),
            None => None,
        };
        if let Some(meta) = &newest
            && meta.object_version.as_deref() == Some(version.0.as_str())
        {
            return Ok(Some(Current {
                version,
                head: meta.head(),
                md5: meta.md5.clone(),
            }));
        }
        let Some(obj) = self.store.get(&object_key).await? else {
            return Ok(None);
        };
        let head = StateHead::parse(&obj.body).unwrap_or_default();
        let md5 = md5_hex(&obj.body);
        if newest.is_none_or(|m| m.md5 != md5) {
            let found = Described {
                body: &Payload::Memory(obj.body),
                head: &head,
                md5: &md5,
            };
            self.record(
                state,
                &dir,
                numbers,
                &found,
                &obj.version,
                Writer::unknown(),
            )
            .await?;
        }
        Ok(Some(Current {
            version: obj.version,
            head,
            md5,
        }))
    }

    /// Records a state just written as `version`. The write has already
    /// succeeded, so a failure here is logged, not returned: the next write
    /// records the state through [`States::current`].
    pub(super) async fn record_after_write(
        &self,
        state: &StateRef,
        written: &Described<'_>,
        version: &Version,
        writer: Writer,
    ) -> Option<u64> {
        let dir = self.history_dir(state);
        let result = async {
            let numbers = self.version_numbers(&dir).await?;
            // A concurrent write may already have recorded this very store
            // version as `found` (possible where the store's compare-and-swap
            // makes the write lease unnecessary): one record per accepted
            // write, so that record becomes this write's.
            if let Some(&n) = numbers.last() {
                let newest = self.meta(&dir, n).await?;
                if newest.object_version.as_deref() == Some(version.0.as_str())
                    && newest.md5 == written.md5
                {
                    let meta = VersionMeta {
                        who: writer.who,
                        lock_id: writer.lock_id,
                        identity: writer.identity,
                        operation: writer.operation.to_string(),
                        ..newest
                    };
                    let meta_body = serde_json::to_vec(&meta).expect("version metadata serialises");
                    self.store
                        .put(
                            &meta_key(&dir, n),
                            Bytes::from(meta_body),
                            Condition::Always,
                        )
                        .await?;
                    self.put_summary(state, &meta).await;
                    return Ok(n);
                }
            }
            self.record(state, &dir, numbers, written, version, writer)
                .await
        }
        .await;
        match result {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(state = %state, error = %e, "state written but its history record failed");
                None
            }
        }
    }

    /// Keeps `item`, the state object's content at `version`, as the next
    /// version, then prunes.
    async fn record(
        &self,
        state: &StateRef,
        dir: &str,
        mut numbers: Vec<u64>,
        item: &Described<'_>,
        version: &Version,
        writer: Writer,
    ) -> Result<u64, StateError> {
        let object_key = self.object_key(state);
        let mut n = numbers.last().map_or(1, |last| last + 1);
        // Another process may take the same number at the same moment; the
        // create-if-absent gives it to one of us.
        loop {
            let copied = match self
                .store
                .snapshot(&object_key, version, &body_key(dir, n), item.body)
                .await
            {
                // Replaced since it was written: keep the bytes we have.
                Err(StoreError::PreconditionFailed) => self
                    .store
                    .put_payload(&body_key(dir, n), item.body, Condition::IfAbsent)
                    .await
                    .map(|_| ()),
                other => other,
            };
            match copied {
                Ok(()) => break,
                Err(StoreError::AlreadyExists) => n += 1,
                Err(e) => return Err(e.into()),
            }
        }
        let meta = VersionMeta {
            version: n,
            serial: item.head.serial,
            lineage: item.head.lineage.clone(),
            resources: item.head.resources,
            size: item.body.len(),
            md5: item.md5.to_string(),
            created: rfc3339(OffsetDateTime::now_utc()).unwrap_or_default(),
            who: writer.who,
            lock_id: writer.lock_id,
            identity: writer.identity,
            operation: writer.operation.to_string(),
            object_version: Some(version.0.clone()),
        };
        let meta_body = serde_json::to_vec(&meta).expect("version metadata serialises");
        self.store
            .put(&meta_key(dir, n), Bytes::from(meta_body), Condition::Always)
            .await?;
        self.put_summary(state, &meta).await;
        numbers.push(n);
        self.prune(dir, &numbers).await?;
        Ok(n)
    }

    /// Removes every kept version of a state that no longer exists (a
    /// deleted state stays readable through its history until then).
    /// Refused while the state exists or is locked. Returns how many
    /// versions were removed.
    pub async fn purge(&self, state: &StateRef) -> Result<usize, StateError> {
        if self.store.stat(&self.object_key(state)).await?.is_some() {
            return Err(StateError::BadRequest(format!(
                "{state} still exists; delete it before purging its history"
            )));
        }
        self.check_holder(state, None).await?;
        let dir = self.history_dir(state);
        let objects = self.store.list(&dir).await?;
        let versions = objects
            .iter()
            .filter(|e| e.key.ends_with(".tfstate"))
            .count();
        for entry in objects {
            self.store.delete(&entry.key, Condition::Always).await?;
        }
        tracing::warn!(state = %state, versions, "history purged");
        Ok(versions)
    }

    /// Deletes the oldest versions beyond `history_keep`.
    async fn prune(&self, dir: &str, numbers: &[u64]) -> Result<(), StateError> {
        let keep = self.history_keep as usize;
        if keep == 0 || numbers.len() <= keep {
            return Ok(());
        }
        for &n in &numbers[..numbers.len() - keep] {
            self.store
                .delete(&meta_key(dir, n), Condition::Always)
                .await?;
            self.store
                .delete(&body_key(dir, n), Condition::Always)
                .await?;
        }
        Ok(())
    }
}

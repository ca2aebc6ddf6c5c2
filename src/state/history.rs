//! Version history: every state stategate stores is kept as a numbered
//! version, in the same store, under `.stategate/history/<object key>/`,
//! a prefix no state key can reach. Each version is two objects:
//! `<n>.tfstate` (the exact bytes) and `<n>.json` ([`VersionMeta`]).
//!
//! The newest version is the current state. Before a state is replaced or
//! deleted, [`States::ensure_recorded`] checks that its bytes are the newest
//! version and records them if not (a state written by another tool, or one
//! whose history record was lost to a crash), so the state a write replaces
//! is always kept. Retention keeps the newest `history_keep` versions.

use bytes::Bytes;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Held, StateError, StateRef, States, write::StateHead};
use crate::stores::{Condition, StoreError};

/// Where history lives; inside the reserved prefix.
pub const HISTORY_PREFIX: &str = ".stategate/history/";

/// What is known about one kept version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionMeta {
    /// Number of the version, counting from 1 per state.
    pub version: u64,
    pub serial: Option<u64>,
    pub lineage: Option<String>,
    pub size: u64,
    /// Hex MD5 of the body.
    pub md5: String,
    /// When stategate recorded it (RFC 3339, UTC).
    pub created: String,
    /// LockInfo `Who` of the writer, when the write came under a lock.
    pub who: Option<String>,
    /// LockInfo `ID` of the writer, when the write came under a lock.
    pub lock_id: Option<String>,
    /// `write`, `push`, `restore`, or `found` for a state stategate did not
    /// write itself (recorded before it was replaced).
    pub operation: String,
}

/// Who made a write, for its history record.
pub(super) struct Writer {
    who: Option<String>,
    lock_id: Option<String>,
    operation: &'static str,
}

impl Writer {
    pub(super) fn from_holder(holder: Option<&Held>, operation: &'static str) -> Self {
        Writer {
            who: holder.map(|h| h.info.who.clone()).filter(|w| !w.is_empty()),
            lock_id: holder.map(|h| h.info.id.clone()),
            operation,
        }
    }

    fn unknown() -> Self {
        Writer {
            who: None,
            lock_id: None,
            operation: "found",
        }
    }
}

/// Formats a time as RFC 3339.
pub fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&Rfc3339).ok()
}

/// Hex MD5 of a body.
pub fn md5_hex(body: &[u8]) -> String {
    Md5::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn history_dir(object_key: &str) -> String {
    format!("{HISTORY_PREFIX}{object_key}/")
}

fn body_key(dir: &str, n: u64) -> String {
    format!("{dir}{n:010}.tfstate")
}

fn meta_key(dir: &str, n: u64) -> String {
    format!("{dir}{n:010}.json")
}

impl States {
    fn history_dir(&self, state: &StateRef) -> String {
        history_dir(&self.object_key(state))
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
            size: body.len() as u64,
            md5: md5_hex(&body),
            created: String::new(),
            who: None,
            lock_id: None,
            operation: "found".into(),
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

    /// The body of one kept version.
    pub async fn version(&self, state: &StateRef, n: u64) -> Result<Bytes, StateError> {
        let dir = self.history_dir(state);
        match self.store.get(&body_key(&dir, n)).await? {
            Some(obj) => Ok(obj.body),
            None => Err(StateError::NotFound(format!("{state} has no version {n}"))),
        }
    }

    /// Records `body` as a version unless it already is the newest one.
    pub(super) async fn ensure_recorded(
        &self,
        state: &StateRef,
        body: &Bytes,
    ) -> Result<(), StateError> {
        let dir = self.history_dir(state);
        let numbers = self.version_numbers(&dir).await?;
        if let Some(&last) = numbers.last()
            && self.meta(&dir, last).await?.md5 == md5_hex(body)
        {
            return Ok(());
        }
        let head = StateHead::parse(body).unwrap_or_default();
        self.record(&dir, body, &head, Writer::unknown(), numbers)
            .await
            .map(|_| ())
    }

    /// Records a state just written. The write has already succeeded, so a
    /// failure here is logged, not returned: the next write records the
    /// state through [`States::ensure_recorded`].
    pub(super) async fn record_after_write(
        &self,
        state: &StateRef,
        body: &Bytes,
        head: &StateHead,
        writer: Writer,
    ) -> Option<u64> {
        let dir = self.history_dir(state);
        let result = async {
            let numbers = self.version_numbers(&dir).await?;
            self.record(&dir, body, head, writer, numbers).await
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

    async fn record(
        &self,
        dir: &str,
        body: &Bytes,
        head: &StateHead,
        writer: Writer,
        mut numbers: Vec<u64>,
    ) -> Result<u64, StateError> {
        let mut n = numbers.last().map_or(1, |last| last + 1);
        // Another process may take the same number at the same moment; the
        // conditional create gives it to one of us.
        loop {
            match self
                .store
                .put(&body_key(dir, n), body.clone(), Condition::IfAbsent)
                .await
            {
                Ok(_) => break,
                Err(StoreError::AlreadyExists) => n += 1,
                Err(e) => return Err(e.into()),
            }
        }
        let meta = VersionMeta {
            version: n,
            serial: head.serial,
            lineage: head.lineage.clone(),
            size: body.len() as u64,
            md5: md5_hex(body),
            created: rfc3339(OffsetDateTime::now_utc()).unwrap_or_default(),
            who: writer.who,
            lock_id: writer.lock_id,
            operation: writer.operation.to_string(),
        };
        let meta_body = serde_json::to_vec(&meta).expect("version metadata serialises");
        self.store
            .put(&meta_key(dir, n), Bytes::from(meta_body), Condition::Always)
            .await?;
        numbers.push(n);
        self.prune(dir, &numbers).await?;
        Ok(n)
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

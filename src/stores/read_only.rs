//! A store opened for reading only (`stategate migrate --dry-run`): reads
//! pass through, every change is refused before it reaches the store, and
//! a store that does not exist yet reads as empty. So a dry run cannot
//! write, whatever the code above it asks for, and needs no more than
//! read access.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::keylock::KeyLock;
use super::{
    Capabilities, Change, Condition, Entry, Object, Payload, Stopped, Store, StoreError, Version,
};

/// Reads of `inner`, or of nothing when it does not exist; no writes.
pub struct ReadOnly {
    /// The opened store; `None` when it does not exist yet.
    inner: Option<Arc<dyn Store>>,
    /// What the store is, for `describe` when there is no store to ask.
    kind: &'static str,
}

impl ReadOnly {
    /// Reads `inner` (`None`: a `kind` store that does not exist yet).
    pub fn new(inner: Option<Arc<dyn Store>>, kind: &'static str) -> Self {
        ReadOnly { inner, kind }
    }

    fn refused(&self, key: &str) -> StoreError {
        StoreError::unavailable(format!(
            "{}: refusing to change {key}: the store is open for reading only",
            self.describe()
        ))
    }
}

#[async_trait]
impl Store for ReadOnly {
    fn describe(&self) -> String {
        match &self.inner {
            Some(inner) => format!("{} (read only)", inner.describe()),
            None => format!("{} store (does not exist yet)", self.kind),
        }
    }

    fn capabilities(&self) -> Capabilities {
        match &self.inner {
            Some(inner) => inner.capabilities(),
            // Nothing is ever written, so nothing is at stake.
            None => Capabilities {
                conditional_create: true,
                compare_and_swap: true,
                unique_versions: true,
            },
        }
    }

    fn operation_timeout(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(super::DEFAULT_OPERATION_TIMEOUT, |s| s.operation_timeout())
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        match &self.inner {
            Some(inner) => inner.get(key).await,
            None => Ok(None),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<(Payload, Version)>, StoreError> {
        match &self.inner {
            Some(inner) => inner.read(key).await,
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        match &self.inner {
            Some(inner) => inner.list(prefix).await,
            None => Ok(Vec::new()),
        }
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        match &self.inner {
            Some(inner) => inner.stat(key).await,
            None => Ok(None),
        }
    }

    async fn put(&self, key: &str, _: Bytes, _: Condition) -> Result<Version, StoreError> {
        Err(self.refused(key))
    }

    async fn put_payload(
        &self,
        key: &str,
        _: &Payload,
        _: Condition,
    ) -> Result<Version, StoreError> {
        Err(self.refused(key))
    }

    async fn put_transient(
        &self,
        key: &str,
        _: Bytes,
        _: Condition,
    ) -> Result<Version, StoreError> {
        Err(self.refused(key))
    }

    async fn delete(&self, key: &str, _: Condition) -> Result<(), StoreError> {
        Err(self.refused(key))
    }

    async fn delete_transient(&self, key: &str, _: Condition) -> Result<(), StoreError> {
        Err(self.refused(key))
    }

    async fn native_lease(&self, _: &str, _: Duration) -> Result<Option<KeyLock>, StoreError> {
        Ok(None)
    }

    async fn change_all(&self, changes: Vec<Change>) -> Result<(), Stopped> {
        let key = match changes.first() {
            Some(Change::Put { key, .. } | Change::Delete { key, .. }) => key.as_str(),
            Some(Change::Snapshot { to, .. }) => to.as_str(),
            None => return Ok(()),
        };
        Err(Stopped {
            at: 0,
            error: self.refused(key),
        })
    }

    async fn snapshot(
        &self,
        _: &str,
        _: &Version,
        to: &str,
        _: &Payload,
    ) -> Result<(), StoreError> {
        Err(self.refused(to))
    }
}

//! A store opened for reading only (`stategate migrate --dry-run`): reads
//! pass through, every change is refused before it reaches the store, and
//! a store that does not exist yet reads as empty. So a dry run cannot
//! write, whatever the code above it asks for, and needs no more than
//! read access.

use crate::stores::OpSnapshot;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Capabilities, Change, Entry, OpDelete, OpList, OpRead, OpWrite, Payload, Stopped, Store,
    StoreError, Version,
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

    /// No lease of its own: nothing is ever written, so no lease is taken.
    fn capabilities(&self) -> Capabilities {
        match &self.inner {
            Some(inner) => Capabilities {
                native_lease: false,
                ..inner.capabilities()
            },
            // Nothing is ever written, so nothing is at stake.
            None => Capabilities {
                conditional_create: true,
                compare_and_swap: true,
                unique_versions: true,
                native_lease: false,
            },
        }
    }

    fn operation_timeout(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(super::DEFAULT_OPERATION_TIMEOUT, |s| s.operation_timeout())
    }

    async fn read(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        match &self.inner {
            Some(inner) => inner.read(key, args).await,
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        match &self.inner {
            Some(inner) => inner.list(prefix, args).await,
            None => Ok(Vec::new()),
        }
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        match &self.inner {
            Some(inner) => inner.stat(key).await,
            None => Ok(None),
        }
    }

    async fn write(&self, key: &str, _: Payload, _: OpWrite) -> Result<Version, StoreError> {
        Err(self.refused(key))
    }

    async fn delete(&self, key: &str, _: OpDelete) -> Result<(), StoreError> {
        Err(self.refused(key))
    }

    async fn change_all(&self, changes: Vec<Change>) -> Result<(), Stopped> {
        match changes.first() {
            Some(change) => Err(Stopped {
                at: 0,
                error: self.refused(change.key()),
            }),
            None => Ok(()),
        }
    }

    async fn snapshot(&self, copy: OpSnapshot<'_>) -> Result<(), StoreError> {
        Err(self.refused(copy.to))
    }
}

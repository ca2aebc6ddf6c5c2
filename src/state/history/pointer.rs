//! Where a state's numbered versions begin and end: the pointer in its
//! history folder, read, rebuilt from one listing when it is missing or
//! unreadable, and written.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::{HISTORY_PREFIX, Pointer, VersionMeta, body_key, meta_key, pointer_key};
use crate::state::catalog::Catalog;
use crate::state::head::StateHead;
use crate::state::{StateError, StateRef, States};
use crate::stores::{Condition, OpList, OpRead, OpWrite, Payload, StoreExt};

/// The catalog a pointer carries, read apart from the rest.
#[derive(Deserialize)]
struct CatalogOf {
    catalog: Option<Arc<Catalog>>,
}

impl States {
    pub(in crate::state) fn history_dir(&self, state: &StateRef) -> String {
        format!("{HISTORY_PREFIX}{}/", self.object_key(state))
    }

    /// The numbers of the versions kept for a state, oldest first, from a
    /// listing: for the whole history, and to rebuild a [`Pointer`].
    pub(super) async fn version_numbers(&self, dir: &str) -> Result<Vec<u64>, StateError> {
        let mut numbers: Vec<u64> = self
            .store
            .list(dir, OpList::default())
            .await?
            .iter()
            .filter_map(|e| {
                e.key
                    .strip_prefix(dir)?
                    .strip_suffix(".tfstate")?
                    .parse()
                    .ok()
            })
            .filter(|&n| n > 0)
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The record of version `n`, `None` when the version is not kept (a
    /// gap, or pruned meanwhile).
    pub(super) async fn kept(&self, dir: &str, n: u64) -> Result<Option<VersionMeta>, StateError> {
        if let Some(obj) = self.store.get(&meta_key(dir, n)).await?
            && let Ok(meta) = serde_json::from_slice(&obj.body)
        {
            return Ok(Some(meta));
        }
        // The record of a version whose metadata was never written (the
        // process died in between) is rebuilt from its body.
        let Some((body, _)) = self
            .store
            .read(&body_key(dir, n), OpRead::streamed())
            .await?
        else {
            return Ok(None);
        };
        let head = StateHead::parse_found(&body).await;
        Ok(Some(VersionMeta {
            version: n,
            serial: head.serial,
            lineage: head.lineage,
            resources: head.resources,
            size: body.len(),
            md5: body.md5_hex().await?,
            created: String::new(),
            who: None,
            lock_id: None,
            identity: None,
            operation: "found".into(),
            object_version: None,
        }))
    }

    /// Where a state's history begins and ends, `None` when it has none:
    /// the pointer, walked forward past any number taken after it was
    /// written, or rebuilt from a listing when it is missing or unreadable.
    pub(super) async fn ends(&self, dir: &str) -> Result<Option<Pointer>, StateError> {
        self.ends_reading(dir, false).await
    }

    /// [`States::ends`], reading the catalog the pointer carries too when
    /// `catalog` (every other reader skips it: it is most of the pointer).
    pub(super) async fn ends_reading(
        &self,
        dir: &str,
        catalog: bool,
    ) -> Result<Option<Pointer>, StateError> {
        let Some(mut pointer) = self.stored_pointer_reading(dir, catalog).await? else {
            return self.rebuild_pointer(dir).await;
        };
        // Numbers are taken in order, so the versions made after the
        // pointer was written are the ones right above it.
        let mut n = pointer.newest.version;
        while let Some(next) = n.checked_add(1)
            && self.store.stat(&body_key(dir, next)).await?.is_some()
        {
            n = next;
        }
        if n > pointer.newest.version {
            let Some(newest) = self.kept(dir, n).await? else {
                // Pruned or purged while we looked: start over from the store.
                return self.rebuild_pointer(dir).await;
            };
            pointer.newest = newest;
            // It described the version the pointer named before.
            pointer.catalog = None;
            self.put_pointer(dir, &pointer).await;
        }
        Ok(Some(pointer))
    }

    /// The pointer as stored, with one read: `None` when it is missing or
    /// unreadable. It may be behind; only [`States::ends`] walks it forward.
    pub(in crate::state) async fn stored_pointer(
        &self,
        dir: &str,
    ) -> Result<Option<Pointer>, StateError> {
        self.stored_pointer_reading(dir, false).await
    }

    /// [`States::stored_pointer`], with the catalog it carries when
    /// `catalog`.
    async fn stored_pointer_reading(
        &self,
        dir: &str,
        catalog: bool,
    ) -> Result<Option<Pointer>, StateError> {
        Ok(self
            .store
            .get_bytes(&pointer_key(dir))
            .await?
            .and_then(|body| {
                let mut pointer = Pointer::parse(&body)?;
                if catalog {
                    pointer.catalog = serde_json::from_slice::<CatalogOf>(&body)
                        .ok()
                        .and_then(|c| c.catalog);
                }
                Some(pointer)
            })
            .filter(Pointer::is_sound))
    }

    /// Builds the pointer from one listing of the folder, and stores it.
    pub(super) async fn rebuild_pointer(&self, dir: &str) -> Result<Option<Pointer>, StateError> {
        let numbers = self.version_numbers(dir).await?;
        let (Some(&oldest), Some(&last)) = (numbers.first(), numbers.last()) else {
            return Ok(None);
        };
        let Some(newest) = self.kept(dir, last).await? else {
            return Ok(None);
        };
        tracing::info!(
            history = dir,
            versions = numbers.len(),
            "history pointer rebuilt from a listing"
        );
        let pointer = Pointer {
            oldest,
            newest,
            catalog: None,
        };
        self.put_pointer(dir, &pointer).await;
        Ok(Some(pointer))
    }

    /// Stores the pointer. It is a hint that [`States::ends`] recovers
    /// from, so it need not survive a crash of the machine (no fsync on
    /// local disk), and a failure is logged, not returned: the record it
    /// points to is already kept.
    pub(super) async fn put_pointer(&self, dir: &str, pointer: &Pointer) {
        let body = serde_json::to_vec(pointer).expect("a history pointer serialises");
        if let Err(e) = self
            .store
            .write(
                &pointer_key(dir),
                Payload::from(Bytes::from(body)),
                OpWrite::transient(Condition::Always),
            )
            .await
        {
            tracing::warn!(history = dir, error = %e, "writing the history pointer failed");
        }
    }
}

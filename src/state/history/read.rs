//! Reading history: pages of records, one kept version, and the current
//! state as its newest record describes it.

use std::sync::Arc;

use super::{Current, HistoryPage, HistoryWindow, VersionMeta, body_key};
use crate::state::catalog::Catalog;
use crate::state::head::{Described, StateHead, Writer};
use crate::state::{LeaseNeed, StateError, StateRef, States};
use crate::stores::{OpRead, Payload, StoreError, Version};

impl States {
    /// The stored version of a state, with the hex MD5 and size of its
    /// body when the newest history record names that version (so the
    /// body need not be read to know them); `None` when no state is
    /// stored.
    pub(in crate::state) async fn recorded_digest(
        &self,
        state: &StateRef,
    ) -> Result<Option<(Version, Option<(String, u64)>)>, StateError> {
        let Some(version) = self.store.stat(&self.object_key(state)).await? else {
            return Ok(None);
        };
        let known = self
            .newest_record(state)
            .await?
            .filter(|r| r.object_version.as_deref() == Some(version.0.as_str()))
            .map(|r| (r.md5, r.size));
        Ok(Some((version, known)))
    }

    /// The newest record of a state's history, `None` when it has none.
    pub(in crate::state) async fn newest_record(
        &self,
        state: &StateRef,
    ) -> Result<Option<VersionMeta>, StateError> {
        Ok(self.ends(&self.history_dir(state)).await?.map(|p| p.newest))
    }

    /// The newest record of a state's history with the catalog of its
    /// body when the pointer has one; `None` when it has no history.
    pub(in crate::state) async fn newest_catalogued(
        &self,
        state: &StateRef,
    ) -> Result<Option<(VersionMeta, Option<Arc<Catalog>>)>, StateError> {
        let ends = self.ends_reading(&self.history_dir(state), true).await?;
        Ok(ends.map(|p| (p.newest, p.catalog)))
    }

    /// The versions kept for a state, oldest first: every record, from one
    /// listing. For a long history ask for pages ([`States::history_page`]).
    pub async fn history(&self, state: &StateRef) -> Result<Vec<VersionMeta>, StateError> {
        let dir = self.history_dir(state);
        let mut out = Vec::new();
        for n in self.version_numbers(&dir).await? {
            out.extend(self.kept(&dir, n).await?);
        }
        Ok(out)
    }

    /// One page of a state's history, newest first: walks down from the
    /// newest number (or from below `window.before`), reading only the
    /// records it returns and skipping numbers no longer kept.
    pub async fn history_page(
        &self,
        state: &StateRef,
        window: HistoryWindow,
    ) -> Result<HistoryPage, StateError> {
        let dir = self.history_dir(state);
        let Some(ends) = self.ends(&dir).await? else {
            return Ok(HistoryPage {
                versions: Vec::new(),
                next_before: None,
            });
        };
        let top = match window.before {
            Some(before) => before.saturating_sub(1).min(ends.newest.version),
            None => ends.newest.version,
        };
        let mut versions = Vec::new();
        // `n` is the next number to look at; the walk stops below `oldest`.
        let mut n = top;
        while n >= ends.oldest && (versions.len() as u64) < window.limit {
            versions.extend(self.kept(&dir, n).await?);
            n -= 1;
        }
        Ok(HistoryPage {
            versions,
            next_before: (n >= ends.oldest).then_some(n + 1),
        })
    }

    /// The body of one kept version as the store hands it out (a large
    /// body as a file, never held whole), checked against the MD5 recorded
    /// for it a piece at a time before any of it is served: a version
    /// changed outside stategate is refused, not served.
    pub async fn version(&self, state: &StateRef, n: u64) -> Result<Payload, StateError> {
        self.version_with_md5(state, n).await.map(|(body, _)| body)
    }

    /// [`States::version`], with the body's hex MD5 (its ETag).
    pub async fn version_with_md5(
        &self,
        state: &StateRef,
        n: u64,
    ) -> Result<(Payload, String), StateError> {
        let (body, recorded) = self.version_unchecked(state, n).await?;
        if body.md5_hex().await? != recorded {
            return Err(StateError::Store(StoreError::unavailable(format!(
                "version {n} of {state} was changed outside stategate (its MD5 no longer matches its record)"
            ))));
        }
        Ok((body, recorded))
    }

    /// The body of one kept version as the store hands it out, with the
    /// MD5 recorded for it, not yet checked: for a reader that goes over
    /// the whole body anyway and checks it on the way.
    pub(in crate::state) async fn version_unchecked(
        &self,
        state: &StateRef,
        n: u64,
    ) -> Result<(Payload, String), StateError> {
        let dir = self.history_dir(state);
        let missing = || StateError::NotFound(format!("{state} has no version {n}"));
        let Some((body, _)) = self
            .store
            .read(&body_key(&dir, n), OpRead::streamed())
            .await?
        else {
            return Err(missing());
        };
        let recorded = self.kept(&dir, n).await?.ok_or_else(missing)?.md5;
        Ok((body, recorded))
    }

    /// The stored state, `None` when there is none. It is always in history
    /// when this returns: recognised from the newest record when that
    /// record names its store version, otherwise read and recorded now.
    pub(in crate::state) async fn current(
        &self,
        state: &StateRef,
    ) -> Result<Option<Current>, StateError> {
        Ok(self
            .current_as(state, None)
            .await?
            .map(|(current, _)| current))
    }

    /// [`States::current`] for a write of the body with MD5 `mine.0` by
    /// `mine.1`: a stored state that no record describes and that holds
    /// exactly these bytes is this write's own, made before its answer
    /// was lost (the client, or the store's client, then tries again), and
    /// is recorded as written by it rather than as found. The flag says
    /// whether it was.
    pub(in crate::state) async fn current_as(
        &self,
        state: &StateRef,
        mine: Option<(&str, &Writer)>,
    ) -> Result<Option<(Current, bool)>, StateError> {
        let object_key = self.object_key(state);
        let Some(version) = self.store.stat(&object_key).await? else {
            return Ok(None);
        };
        let dir = self.history_dir(state);
        let ends = self.ends(&dir).await?;
        if let Some(newest) = ends.as_ref().map(|p| &p.newest)
            && newest.object_version.as_deref() == Some(version.0.as_str())
        {
            let current = Current {
                version,
                head: newest.head(),
                md5: newest.md5.clone(),
                history: ends,
            };
            return Ok(Some((current, false)));
        }
        // Written by another tool (or before history was kept): read as the
        // store hands it out, a large body a piece at a time.
        // Through `read_as`, which refuses a sealed body no key opened.
        let Some((body, version)) = self.read_as(state, OpRead::streamed()).await? else {
            return Ok(None);
        };
        let head = StateHead::parse_found(&body).await;
        let md5 = body.md5_hex().await?;
        let mut ours = false;
        let history = if ends.as_ref().is_none_or(|p| p.newest.md5 != md5) {
            let found = Described {
                body: &body,
                head: &head,
                md5: &md5,
            };
            let writer = match mine {
                Some((mine, writer)) if mine == md5 => {
                    ours = true;
                    writer.clone()
                }
                _ => Writer::unknown(),
            };
            let pointer = self
                .record(state, &dir, ends, &found, &version, writer)
                .await?;
            Some(pointer)
        } else {
            ends
        };
        let current = Current {
            version,
            head,
            md5,
            history,
        };
        Ok(Some((current, ours)))
    }

    /// Records the stored state in history when its newest record does not
    /// describe it (written by another tool, or by a write cut off between
    /// the state and its record), under the write lease, as a write does
    /// before it replaces such a state.
    pub async fn record_found(&self, state: &StateRef) -> Result<(), StateError> {
        self.with_lease(state, LeaseNeed::Always, async |_| {
            self.current(state).await.map(drop)
        })
        .await
    }
}

//! Recording a version: the copy of a just-written state, its record,
//! the pruning of versions past `history_keep` and the pointer, made in
//! one `change_all`; and the removal of a deleted state's history.

use std::sync::Arc;

use bytes::Bytes;
use time::OffsetDateTime;

use super::{Pointer, VersionMeta, body_key, meta_key, pointer_key, rfc3339};
use crate::state::catalog::Catalog;
use crate::state::head::{Described, Writer};
use crate::state::{LeaseNeed, StateError, StateRef, States};
use crate::stores::{
    Change, Condition, OpDelete, OpList, OpWrite, Stopped, StoreError, StoreExt, ThenChange,
    Version,
};

/// The longest record that is also the pointer ([`States::after_copy`]):
/// history pages read a record per version, so a catalog of more than a
/// few dozen resource blocks stays in the pointer alone.
const RECORD_BYTES_MAX: usize = 8 * 1024;

/// The catalog a pointer carries: the version's, when it is small enough
/// ([`Catalog::fits_a_pointer`]).
fn pointer_catalog(catalog: &Option<Arc<Catalog>>) -> Option<Arc<Catalog>> {
    catalog.clone().filter(|c| c.fits_a_pointer())
}

impl States {
    /// Records a state just written as `version`. The write has already
    /// succeeded, so a failure here is logged, not returned: the next write
    /// records the state through [`States::current`]. `known` is where
    /// history ended when the write began ([`Current::history`]), read
    /// under the same write lease; `None` when not read yet. Returns the
    /// record made.
    pub(in crate::state) async fn record_after_write(
        &self,
        state: &StateRef,
        written: &Described<'_>,
        version: &Version,
        writer: Writer,
        known: Option<Option<Pointer>>,
    ) -> Option<VersionMeta> {
        let dir = self.history_dir(state);
        let result = async {
            let ends = match known {
                Some(ends) => ends,
                None => self.ends(&dir).await?,
            };
            // A concurrent write may already have recorded this very store
            // version as `found` (possible where the store's compare-and-swap
            // makes the write lease unnecessary): one record per accepted
            // write, so that record becomes this write's.
            if let Some(ends) = &ends
                && ends.newest.object_version.as_deref() == Some(version.0.as_str())
                && ends.newest.md5 == written.md5
            {
                let n = ends.newest.version;
                let meta = VersionMeta {
                    who: writer.who,
                    lock_id: writer.lock_id,
                    identity: writer.identity,
                    operation: writer.operation.to_string(),
                    ..ends.newest.clone()
                };
                let meta_body = serde_json::to_vec(&meta).expect("version metadata serialises");
                self.store
                    .put(
                        &meta_key(&dir, n),
                        Bytes::from(meta_body),
                        Condition::Always,
                    )
                    .await?;
                let pointer = Pointer {
                    oldest: ends.oldest,
                    newest: meta,
                    catalog: pointer_catalog(&written.head.catalog),
                };
                self.put_pointer(&dir, &pointer).await;
                debug_assert_eq!(pointer.newest.version, n);
                return Ok(pointer.newest);
            }
            self.record(state, &dir, ends, written, version, writer)
                .await
                .map(|pointer| pointer.newest)
        }
        .await;
        kept_or_logged(state, result)
    }

    /// Writes the state object under `args` and records the write as
    /// [`States::record_after_write`] does, the record's changes going with
    /// the write as one [`Store::write_then_change`]: on SQLite one
    /// transaction, so a crash never leaves the state without its record,
    /// and the writer waits for one commit. `known` is where history ended
    /// when the write began, read under the same write lease, or `None`
    /// when not read yet: it is read first, and when it cannot be, the
    /// write is made alone and recorded after it, so unreadable history
    /// never refuses a write. When the copy fails (another
    /// process took its number, or the state was replaced at once), the
    /// record is made as `record_after_write` makes it.
    pub(in crate::state) async fn write_recorded(
        &self,
        state: &StateRef,
        written: &Described<'_>,
        args: OpWrite,
        writer: Writer,
        known: Option<Option<Pointer>>,
    ) -> Result<(Version, Option<VersionMeta>), StateError> {
        let object_key = self.object_key(state);
        let dir = self.history_dir(state);
        let known = match known {
            Some(ends) => Some(ends),
            // Unreadable history does not refuse the write (a failure of
            // its record is logged, below).
            None => self.ends(&dir).await.ok(),
        };
        let Some(ends) = known else {
            let version = self
                .store
                .write(&object_key, written.body.clone(), args)
                .await?;
            let record = self
                .record_after_write(state, written, &version, writer, None)
                .await;
            return Ok((version, record));
        };
        let (then, unversioned) = self.recording(state, ends.as_ref(), written, writer.clone());
        let (version, changed) = self
            .store
            .write_then_change(&object_key, written.body.clone(), args, then)
            .await?;
        let meta = VersionMeta {
            object_version: Some(version.0.clone()),
            ..unversioned
        };
        let record = match changed {
            Ok(()) => Some(meta),
            Err(Stopped { at: 0, .. }) => {
                self.record_after_write(state, written, &version, writer, Some(ends))
                    .await
            }
            Err(Stopped { at, error }) => {
                let made = self.after_copy_failed(&dir, Stopped { at: at - 1, error });
                kept_or_logged(state, made.map(|()| meta).map_err(StateError::from))
            }
        };
        Ok((version, record))
    }

    /// The changes that keep `written` as the version after `ends` once the
    /// state object holds it (the copy, its record, the pruning and the
    /// pointer), for the store version the write makes; and the record,
    /// without that version.
    fn recording(
        &self,
        state: &StateRef,
        ends: Option<&Pointer>,
        written: &Described<'_>,
        writer: Writer,
    ) -> (ThenChange, VersionMeta) {
        let dir = self.history_dir(state);
        let oldest = ends.map_or(1, |p| p.oldest);
        // Everything but the store version, which the closure fills in.
        let unversioned = VersionMeta {
            object_version: None,
            ..self.new_meta(ends, written, &Version(String::new()), writer)
        };
        // Nothing of the store: the store keeps this closure until its
        // write is done, and a store that held the last reference to
        // itself would be dropped on its own writer thread.
        let (keep, meta) = (self.history_keep, unversioned.clone());
        let catalog = pointer_catalog(&written.head.catalog);
        let (from, body) = (self.object_key(state), written.body.clone());
        let then: ThenChange = Arc::new(move |version: &Version| {
            let meta = VersionMeta {
                object_version: Some(version.0.clone()),
                ..meta.clone()
            };
            let (rest, _) = after_copy(keep, &dir, oldest, &meta, &catalog);
            let copy = Change::Snapshot {
                from: from.clone(),
                from_version: version.clone(),
                to: body_key(&dir, meta.version),
                body: body.clone(),
            };
            [vec![copy], rest].concat()
        });
        (then, unversioned)
    }

    /// Keeps `item`, the state object's content at `version`, as the next
    /// version after `ends`, then prunes and moves the pointer, which it
    /// returns. The copy, its record, the pruning and the pointer go to the
    /// store as one [`Store::change_all`]: on SQLite one transaction, so a
    /// write waits for one commit for all of them.
    pub(super) async fn record(
        &self,
        state: &StateRef,
        dir: &str,
        ends: Option<Pointer>,
        item: &Described<'_>,
        version: &Version,
        writer: Writer,
    ) -> Result<Pointer, StateError> {
        let object_key = self.object_key(state);
        // A history that had no versions starts at 1 whatever number this
        // record gets: a concurrent appender may hold a lower one.
        let oldest = ends.as_ref().map_or(1, |p| p.oldest);
        let found = writer.operation == Writer::unknown().operation;
        let mut meta = self.new_meta(ends.as_ref(), item, version, writer);
        // Another process may take the same number at the same moment; the
        // create-if-absent of the copy gives it to one of us.
        loop {
            let n = meta.version;
            let catalog = pointer_catalog(&item.head.catalog);
            let (rest, pointer) = self.after_copy(dir, oldest, &meta, &catalog);
            let copy = Change::Snapshot {
                from: object_key.clone(),
                from_version: version.clone(),
                to: body_key(dir, n),
                body: item.body.clone(),
            };
            let changes = [vec![copy], rest.clone()].concat();
            let made = match self.store.change_all(changes).await {
                Ok(()) => Ok(()),
                // The copy itself: nothing after it was made.
                Err(Stopped { at: 0, error }) => Err(error),
                Err(Stopped { at, error }) => {
                    self.after_copy_failed(dir, Stopped { at: at - 1, error })
                }
            };
            let made = match made {
                // Replaced since it was written: keep the bytes we have.
                Err(StoreError::PreconditionFailed) => {
                    match self
                        .store
                        .write(
                            &body_key(dir, n),
                            item.body.clone(),
                            OpWrite::new(Condition::IfAbsent),
                        )
                        .await
                    {
                        Ok(_) => match self.store.change_all(rest).await {
                            Ok(()) => Ok(()),
                            Err(stopped) => self.after_copy_failed(dir, stopped),
                        },
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
            match made {
                Ok(()) => return Ok(pointer),
                Err(StoreError::AlreadyExists) => {
                    // A state found unrecorded may be the write of a holder
                    // recording it without the lease right now ([`States::
                    // record_unleased`]): when that number keeps these very
                    // bytes, the state is in history and is not kept twice.
                    if found
                        && let Some(taken) = self.kept(dir, n).await?
                        && taken.md5 == item.md5
                    {
                        return Ok(Pointer {
                            oldest,
                            newest: taken,
                            catalog,
                        });
                    }
                    meta.version += 1
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Records a lock holder's write already made as `version`, as
    /// [`States::write_recorded_unleased`] records it: the write and its
    /// record apart, as on a store where they are not one transaction and
    /// another writer can come between them.
    #[cfg(test)]
    pub(in crate::state) async fn record_unleased(
        &self,
        state: &StateRef,
        seen: &Pointer,
        written: &Described<'_>,
        version: &Version,
        writer: impl Fn() -> Writer,
    ) -> Option<VersionMeta> {
        let (then, unversioned) = self.recording(state, Some(seen), written, writer());
        let changed = self.store.change_all(then(version)).await;
        self.recorded_unleased(state, seen, written, version, writer, unversioned, changed)
            .await
    }

    /// Writes the state object under `args` (a compare-and-swap against
    /// the store version `seen` names) for the holder of the state's lock,
    /// without the write lease ([`States::write`]'s path for lock holders),
    /// and records it as the number after `seen`, the record's changes
    /// going with the write as one
    /// [`Store::write_then_change`](crate::stores::Store::write_then_change):
    /// in a database one transaction, so a connection lost mid-write never
    /// leaves the state without its record. Nothing is listed or walked:
    /// the copy is created only if absent, so when the number is free no
    /// other writer has recorded anything since `seen`, and this write,
    /// which replaced the state `seen` names, is the next version. When the
    /// number is taken (another writer recorded the state this write
    /// replaced or this one, or `seen` was behind), the record is made
    /// under the lease, where [`States::adopt_or_record`] finds out which.
    /// A failure to record is logged, as [`States::record_after_write`]
    /// logs it.
    pub(in crate::state) async fn write_recorded_unleased(
        &self,
        state: &StateRef,
        seen: &Pointer,
        written: &Described<'_>,
        args: OpWrite,
        writer: impl Fn() -> Writer,
    ) -> Result<(Version, Option<VersionMeta>), StoreError> {
        let (then, unversioned) = self.recording(state, Some(seen), written, writer());
        let (version, changed) = self
            .store
            .write_then_change(&self.object_key(state), written.body.clone(), args, then)
            .await?;
        let record = self
            .recorded_unleased(state, seen, written, &version, writer, unversioned, changed)
            .await;
        Ok((version, record))
    }

    /// Judges the changes that recorded a lock holder's write
    /// ([`States::write_recorded_unleased`]): when the number after `seen` was
    /// taken, the record is made under the lease.
    #[allow(clippy::too_many_arguments)]
    async fn recorded_unleased(
        &self,
        state: &StateRef,
        seen: &Pointer,
        written: &Described<'_>,
        version: &Version,
        writer: impl Fn() -> Writer,
        unversioned: VersionMeta,
        changed: Result<(), Stopped>,
    ) -> Option<VersionMeta> {
        let dir = self.history_dir(state);
        let meta = VersionMeta {
            object_version: Some(version.0.clone()),
            ..unversioned
        };
        let result = async {
            match changed {
                Ok(()) => Ok(meta),
                Err(Stopped {
                    at: 0,
                    error: StoreError::AlreadyExists | StoreError::PreconditionFailed,
                }) => {
                    self.with_lease(state, LeaseNeed::Always, async |_| {
                        self.adopt_or_record(state, &dir, seen, written, version, writer())
                            .await
                    })
                    .await
                }
                Err(Stopped { at: 0, error }) => Err(error.into()),
                Err(Stopped { at, error }) => self
                    .after_copy_failed(&dir, Stopped { at: at - 1, error })
                    .map(|()| meta)
                    .map_err(StateError::from),
            }
        }
        .await;
        kept_or_logged(state, result)
    }

    /// Under the lease, records a write whose number after `seen` was
    /// taken. Every version after `seen` is looked at: one that keeps this
    /// write's store version (a writer found the state unrecorded and kept
    /// it, as [`States::current`] does before replacing a state) becomes
    /// this write's record; otherwise none does, and the write is recorded
    /// after the newest. Holding the lease, no one else records meanwhile.
    async fn adopt_or_record(
        &self,
        state: &StateRef,
        dir: &str,
        seen: &Pointer,
        written: &Described<'_>,
        version: &Version,
        writer: Writer,
    ) -> Result<VersionMeta, StateError> {
        let ends = self.ends(dir).await?;
        let newest = ends.as_ref().map_or(0, |p| p.newest.version);
        for n in seen.newest.version + 1..=newest {
            let Some(kept) = self.kept(dir, n).await? else {
                continue;
            };
            let ours = match &kept.object_version {
                Some(v) => *v == version.0 && kept.md5 == written.md5,
                None => kept.md5 == written.md5,
            };
            if !ours {
                continue;
            }
            let meta = VersionMeta {
                who: writer.who,
                lock_id: writer.lock_id,
                identity: writer.identity,
                operation: writer.operation.to_string(),
                object_version: Some(version.0.clone()),
                ..kept
            };
            let body = serde_json::to_vec(&meta).expect("version metadata serialises");
            self.store
                .put(&meta_key(dir, n), Bytes::from(body), Condition::Always)
                .await?;
            if n == newest
                && let Some(ends) = ends
            {
                let pointer = Pointer {
                    oldest: ends.oldest,
                    newest: meta.clone(),
                    catalog: pointer_catalog(&written.head.catalog),
                };
                self.put_pointer(dir, &pointer).await;
            }
            return Ok(meta);
        }
        self.record(state, dir, ends, written, version, writer)
            .await
            .map(|pointer| pointer.newest)
    }

    /// The record of `item`, stored as `version`, as the number after
    /// `ends` (1 when there is no history).
    fn new_meta(
        &self,
        ends: Option<&Pointer>,
        item: &Described<'_>,
        version: &Version,
        writer: Writer,
    ) -> VersionMeta {
        VersionMeta {
            version: ends.map_or(1, |p| p.newest.version + 1),
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
        }
    }

    /// What follows the copy of version `meta.version`: its record, the
    /// pruning of what fell out of `history_keep`, and the new pointer,
    /// which it also returns. Numbers are consecutive, so the versions to
    /// delete are known without a listing: from `oldest` (where the last
    /// prune stopped) up to `newest - history_keep`, usually one; when
    /// `history_keep` was lowered, the first write after deletes the whole
    /// excess, once. A number already gone costs one delete of nothing.
    /// The pointer carries `catalog`, the version's.
    ///
    /// The record is the pointer's own bytes when they are no longer than
    /// [`RECORD_BYTES_MAX`] (the record's fields, `oldest` and the
    /// catalog), and the pointer is written as the same bytes as the
    /// record: the local store makes it a second name of the record's file
    /// rather than a new file, one file fewer per write, and none freed
    /// when the pointer moves on. A larger catalog stays out of the
    /// record, which history pages read, and the pointer is a file of its
    /// own.
    pub(super) fn after_copy(
        &self,
        dir: &str,
        oldest: u64,
        meta: &VersionMeta,
        catalog: &Option<Arc<Catalog>>,
    ) -> (Vec<Change>, Pointer) {
        after_copy(self.history_keep, dir, oldest, meta, catalog)
    }

    /// Judges a failure among [`States::after_copy`]'s changes: the record
    /// (the first) must be made; a prune or the pointer that failed is
    /// logged, since the next write prunes again and the pointer is found
    /// behind and walked forward.
    pub(super) fn after_copy_failed(&self, dir: &str, stopped: Stopped) -> Result<(), StoreError> {
        if stopped.at == 0 {
            return Err(stopped.error);
        }
        tracing::warn!(history = dir, error = %stopped.error, "pruning history or moving its pointer failed");
        Ok(())
    }

    /// Removes every kept version of a state that no longer exists (a
    /// deleted state stays readable through its history until then).
    /// Refused while the state exists or is locked. Returns how many
    /// versions were removed. Made under the write lease, which every write
    /// that creates the state takes: one made meanwhile would otherwise be
    /// recorded in the history being removed, and lose its record.
    pub async fn purge(&self, state: &StateRef) -> Result<usize, StateError> {
        self.with_lease(state, LeaseNeed::Always, async |_| {
            self.purge_leased(state).await
        })
        .await
    }

    async fn purge_leased(&self, state: &StateRef) -> Result<usize, StateError> {
        if self.store.stat(&self.object_key(state)).await?.is_some() {
            return Err(StateError::BadRequest(format!(
                "{state} still exists; delete it before purging its history"
            )));
        }
        self.check_holder(state, None).await?;
        let dir = self.history_dir(state);
        // The pointer goes first: left behind by a purge that stopped half
        // way, it would name versions that are gone.
        self.store
            .delete(&pointer_key(&dir), Condition::Always.into())
            .await?;
        // Only this state's own files: the history of the states below it
        // (`a/b` below `a`) lies in folders below its folder.
        let objects: Vec<_> = self
            .store
            .list(&dir, OpList::default())
            .await?
            .into_iter()
            .filter(|e| !e.key[dir.len()..].contains('/'))
            .collect();
        let versions = objects
            .iter()
            .filter(|e| e.key.ends_with(".tfstate"))
            .count();
        for entry in objects {
            self.store
                .delete(&entry.key, Condition::Always.into())
                .await?;
        }
        tracing::warn!(state = %state, versions, "history purged");
        Ok(versions)
    }
}

/// The record a write made, or `None` with the failure logged: the write
/// itself succeeded, and the next one records the state it left
/// ([`States::current`]).
fn kept_or_logged(
    state: &StateRef,
    result: Result<VersionMeta, StateError>,
) -> Option<VersionMeta> {
    result
        .inspect_err(|e| {
            tracing::warn!(state = %state, error = %e, "state written but its history record failed");
        })
        .ok()
}

/// [`States::after_copy`] with `keep` for the state layer's
/// `history_keep`: a function of its arguments alone, so the changes a
/// store builds from it (`write_recorded`) hold nothing of the store.
fn after_copy(
    keep: u64,
    dir: &str,
    oldest: u64,
    meta: &VersionMeta,
    catalog: &Option<Arc<Catalog>>,
) -> (Vec<Change>, Pointer) {
    let n = meta.version;
    let first_kept = if keep == 0 || n <= keep {
        oldest
    } else {
        n - keep + 1
    };
    let pointer = Pointer {
        oldest: oldest.max(first_kept),
        newest: meta.clone(),
        catalog: catalog.clone(),
    };
    let pointer_body =
        Bytes::from(serde_json::to_vec(&pointer).expect("a history pointer serialises"));
    let (record_body, same_as) = if pointer_body.len() <= RECORD_BYTES_MAX {
        (pointer_body.clone(), Some(meta_key(dir, n)))
    } else {
        let plain = serde_json::to_vec(meta).expect("version metadata serialises");
        (Bytes::from(plain), None)
    };
    let mut changes = vec![Change::Write {
        key: meta_key(dir, n),
        body: record_body,
        args: OpWrite::new(Condition::Always),
        same_as: None,
    }];
    // Not made durable (no fsync of the folder on local disk): a version
    // that comes back after a crash of the machine is only kept longer.
    for old in oldest..first_kept {
        for key in [meta_key(dir, old), body_key(dir, old)] {
            changes.push(Change::Delete {
                key,
                args: OpDelete::transient(Condition::Always),
            });
        }
    }
    changes.push(Change::Write {
        key: pointer_key(dir),
        body: pointer_body,
        args: OpWrite::transient(Condition::Always),
        same_as,
    });
    (changes, pointer)
}

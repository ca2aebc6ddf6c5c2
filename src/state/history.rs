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
//! Where the numbers end is kept in `newest.json` in the same folder (a
//! [`Pointer`]: the lowest number still kept and a copy of the newest
//! record), so a write costs the same whether a state has ten versions or
//! a hundred thousand: it reads the pointer and checks that the next
//! number is still free, instead of listing the folder. The pointer is a
//! hint, never the truth: numbers are taken with a create-if-absent, a
//! pointer that is behind (a crash between a version and its pointer, a
//! concurrent writer, a pointer write that failed) is walked forward to
//! the first free number, and a missing or unreadable one (a folder
//! written before pointers existed, one edited by hand) is rebuilt from
//! one listing. Numbers are consecutive, so retention deletes the numbers
//! that fell out of the window and paging walks down from the newest,
//! both without a listing.
//!
//! Appends are not atomic (read where history ends, then create the next
//! number), so they run under the state's write lease with the write they
//! record ([`super::lease`]): each accepted write is then exactly one
//! record, in order, and retention is exact.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::head::{Current, Described, StateHead, Writer, md5_hex};
use super::{StateError, StateRef, States};
use crate::stores::{
    Change, Condition, OpDelete, OpList, OpRead, OpWrite, Payload, Stopped, StoreError, StoreExt,
    Version,
};

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

/// The name of the [`Pointer`] inside a state's history folder.
pub const POINTER_NAME: &str = "newest.json";

/// The most versions one page of history holds.
pub const PAGE_LIMIT_MAX: u64 = 1000;

/// The versions in a page when only `before` is given.
pub const PAGE_LIMIT_DEFAULT: u64 = 100;

fn body_key(dir: &str, n: u64) -> String {
    format!("{dir}{n:010}.tfstate")
}

fn meta_key(dir: &str, n: u64) -> String {
    format!("{dir}{n:010}.json")
}

fn pointer_key(dir: &str) -> String {
    format!("{dir}{POINTER_NAME}")
}

/// `newest.json`: where a state's numbered versions begin and end, so
/// that appending, pruning and paging need no listing. Every record
/// rewrites it; see the module comment for how a pointer that is missing,
/// unreadable or behind is recovered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pointer {
    /// No kept version has a lower number: retention deletes from here
    /// and downward walks stop here. Never above a kept version (a
    /// pointer rebuilt from a listing takes the lowest number listed; one
    /// written by a late writer may be lower than needed, which costs a
    /// few reads of numbers already gone).
    oldest: u64,
    /// A copy of the newest record, so a write recognises the stored state
    /// from this one read.
    newest: VersionMeta,
}

impl Pointer {
    /// Whether the numbers make sense: versions count from 1 and the
    /// window is not empty. Anything else was not written by stategate.
    fn is_sound(&self) -> bool {
        (1..=self.newest.version).contains(&self.oldest)
    }
}

/// Which versions one page of history holds: at most `limit`, numbered
/// below `before` (from the newest when `None`), newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryWindow {
    pub before: Option<u64>,
    pub limit: u64,
}

impl HistoryWindow {
    /// Checks a client's `limit` and `before` (either may be absent):
    /// `limit` from 1 to [`PAGE_LIMIT_MAX`] (default
    /// [`PAGE_LIMIT_DEFAULT`]), `before` 1 or more (versions count from 1).
    /// [`StateError::BadRequest`] names the one that is wrong.
    pub fn new(limit: Option<u64>, before: Option<u64>) -> Result<Self, StateError> {
        let limit = limit.unwrap_or(PAGE_LIMIT_DEFAULT);
        if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
            return Err(StateError::BadRequest(format!(
                "limit must be from 1 to {PAGE_LIMIT_MAX}, not {limit}"
            )));
        }
        if before == Some(0) {
            return Err(StateError::BadRequest(
                "before must be 1 or more: versions are numbered from 1".into(),
            ));
        }
        Ok(HistoryWindow { before, limit })
    }
}

/// One page of a state's history.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HistoryPage {
    /// Newest first.
    pub versions: Vec<VersionMeta>,
    /// The `before` that asks for the next (older) page; `None` when this
    /// page reached the oldest kept version. The next page may come back
    /// empty: finding out would mean reading a record this page does not
    /// return.
    pub next_before: Option<u64>,
}

impl States {
    fn history_dir(&self, state: &StateRef) -> String {
        format!("{HISTORY_PREFIX}{}/", self.object_key(state))
    }

    /// The numbers of the versions kept for a state, oldest first, from a
    /// listing: for the whole history, and to rebuild a [`Pointer`].
    async fn version_numbers(&self, dir: &str) -> Result<Vec<u64>, StateError> {
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
    async fn kept(&self, dir: &str, n: u64) -> Result<Option<VersionMeta>, StateError> {
        if let Some(obj) = self.store.get(&meta_key(dir, n)).await?
            && let Ok(meta) = serde_json::from_slice(&obj.body)
        {
            return Ok(Some(meta));
        }
        // The record of a version whose metadata was never written (the
        // process died in between) is rebuilt from its body.
        let Some(body) = self.store.get(&body_key(dir, n)).await?.map(|o| o.body) else {
            return Ok(None);
        };
        let head = StateHead::parse(&body).unwrap_or_default();
        Ok(Some(VersionMeta {
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
        }))
    }

    /// Where a state's history begins and ends, `None` when it has none:
    /// the pointer, walked forward past any number taken after it was
    /// written, or rebuilt from a listing when it is missing or unreadable.
    async fn ends(&self, dir: &str) -> Result<Option<Pointer>, StateError> {
        let stored = self
            .store
            .get(&pointer_key(dir))
            .await?
            .and_then(|obj| serde_json::from_slice::<Pointer>(&obj.body).ok())
            .filter(Pointer::is_sound);
        let Some(mut pointer) = stored else {
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
            self.put_pointer(dir, &pointer).await;
        }
        Ok(Some(pointer))
    }

    /// Builds the pointer from one listing of the folder, and stores it.
    async fn rebuild_pointer(&self, dir: &str) -> Result<Option<Pointer>, StateError> {
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
        let pointer = Pointer { oldest, newest };
        self.put_pointer(dir, &pointer).await;
        Ok(Some(pointer))
    }

    /// Stores the pointer. It is a hint that [`States::ends`] recovers
    /// from, so it need not survive a crash of the machine (no fsync on
    /// local disk), and a failure is logged, not returned: the record it
    /// points to is already kept.
    async fn put_pointer(&self, dir: &str, pointer: &Pointer) {
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

    /// The stored version of a state, with the hex MD5 and size of its
    /// body when the newest history record names that version (so the
    /// body need not be read to know them); `None` when no state is
    /// stored.
    pub async fn current_digest(
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
    pub(super) async fn newest_record(
        &self,
        state: &StateRef,
    ) -> Result<Option<VersionMeta>, StateError> {
        Ok(self.ends(&self.history_dir(state)).await?.map(|p| p.newest))
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

    /// The body of one kept version, checked against the MD5 recorded for
    /// it: a version changed outside stategate is refused, not served.
    pub async fn version(&self, state: &StateRef, n: u64) -> Result<Bytes, StateError> {
        self.version_with_md5(state, n).await.map(|(body, _)| body)
    }

    /// [`States::version`], with the body's hex MD5 (its ETag), known from
    /// the check.
    pub async fn version_with_md5(
        &self,
        state: &StateRef,
        n: u64,
    ) -> Result<(Bytes, String), StateError> {
        let dir = self.history_dir(state);
        let missing = || StateError::NotFound(format!("{state} has no version {n}"));
        let Some(obj) = self.store.get(&body_key(&dir, n)).await? else {
            return Err(missing());
        };
        let recorded = self.kept(&dir, n).await?.ok_or_else(missing)?.md5;
        if md5_hex(&obj.body) != recorded {
            return Err(StateError::Store(StoreError::unavailable(format!(
                "version {n} of {state} was changed outside stategate (its MD5 no longer matches its record)"
            ))));
        }
        Ok((obj.body, recorded))
    }

    /// [`States::version`] as the store hands it out (a large body as a
    /// file), checked against its recorded MD5 a piece at a time: for
    /// copying versions without holding them in memory.
    pub async fn version_payload(&self, state: &StateRef, n: u64) -> Result<Payload, StateError> {
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
        if body.md5_hex().await? != recorded {
            return Err(StateError::Store(StoreError::unavailable(format!(
                "version {n} of {state} was changed outside stategate (its MD5 no longer matches its record)"
            ))));
        }
        Ok(body)
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
        let ends = self.ends(&dir).await?;
        if let Some(newest) = ends.as_ref().map(|p| &p.newest)
            && newest.object_version.as_deref() == Some(version.0.as_str())
        {
            return Ok(Some(Current {
                version,
                head: newest.head(),
                md5: newest.md5.clone(),
                history: ends,
            }));
        }
        let Some(obj) = self.store.get(&object_key).await? else {
            return Ok(None);
        };
        let head = StateHead::parse(&obj.body).unwrap_or_default();
        let md5 = md5_hex(&obj.body);
        let history = if ends.as_ref().is_none_or(|p| p.newest.md5 != md5) {
            let found = Described {
                body: &Payload::Memory(obj.body),
                head: &head,
                md5: &md5,
            };
            let pointer = self
                .record(state, &dir, ends, &found, &obj.version, Writer::unknown())
                .await?;
            Some(pointer)
        } else {
            ends
        };
        Ok(Some(Current {
            version: obj.version,
            head,
            md5,
            history,
        }))
    }

    /// Records a state just written as `version`. The write has already
    /// succeeded, so a failure here is logged, not returned: the next write
    /// records the state through [`States::current`]. `known` is where
    /// history ended when the write began ([`Current::history`]), read
    /// under the same write lease; `None` when not read yet.
    pub(super) async fn record_after_write(
        &self,
        state: &StateRef,
        written: &Described<'_>,
        version: &Version,
        writer: Writer,
        known: Option<Option<Pointer>>,
    ) -> Option<u64> {
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
                };
                self.put_pointer(&dir, &pointer).await;
                return Ok(n);
            }
            self.record(state, &dir, ends, written, version, writer)
                .await
                .map(|pointer| pointer.newest.version)
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
    /// version after `ends`, then prunes and moves the pointer, which it
    /// returns. The copy, its record, the pruning and the pointer go to the
    /// store as one [`Store::change_all`]: on SQLite one transaction, so a
    /// write waits for one commit for all of them.
    async fn record(
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
        let mut meta = VersionMeta {
            version: ends.as_ref().map_or(1, |p| p.newest.version + 1),
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
        // Another process may take the same number at the same moment; the
        // create-if-absent of the copy gives it to one of us.
        loop {
            let n = meta.version;
            let (rest, pointer) = self.after_copy(dir, oldest, &meta);
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
                Err(StoreError::AlreadyExists) => meta.version += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// What follows the copy of version `meta.version`: its record, the
    /// pruning of what fell out of `history_keep`, and the new pointer,
    /// which it also returns. Numbers are consecutive, so the versions to
    /// delete are known without a listing: from `oldest` (where the last
    /// prune stopped) up to `newest - history_keep`, usually one; when
    /// `history_keep` was lowered, the first write after deletes the whole
    /// excess, once. A number already gone costs one delete of nothing.
    fn after_copy(&self, dir: &str, oldest: u64, meta: &VersionMeta) -> (Vec<Change>, Pointer) {
        let n = meta.version;
        let meta_body = serde_json::to_vec(meta).expect("version metadata serialises");
        let mut changes = vec![Change::Write {
            key: meta_key(dir, n),
            body: Bytes::from(meta_body),
            args: OpWrite::new(Condition::Always),
        }];
        let keep = self.history_keep;
        let first_kept = if keep == 0 || n <= keep {
            oldest
        } else {
            n - keep + 1
        };
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
        let pointer = Pointer {
            oldest: oldest.max(first_kept),
            newest: meta.clone(),
        };
        changes.push(Change::Write {
            key: pointer_key(dir),
            body: Bytes::from(serde_json::to_vec(&pointer).expect("a history pointer serialises")),
            args: OpWrite::transient(Condition::Always),
        });
        (changes, pointer)
    }

    /// Judges a failure among [`States::after_copy`]'s changes: the record
    /// (the first) must be made; a prune or the pointer that failed is
    /// logged, since the next write prunes again and the pointer is found
    /// behind and walked forward.
    fn after_copy_failed(&self, dir: &str, stopped: Stopped) -> Result<(), StoreError> {
        if stopped.at == 0 {
            return Err(stopped.error);
        }
        tracing::warn!(history = dir, error = %stopped.error, "pruning history or moving its pointer failed");
        Ok(())
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
        // The pointer goes first: left behind by a purge that stopped half
        // way, it would name versions that are gone.
        self.store
            .delete(&pointer_key(&dir), Condition::Always.into())
            .await?;
        let objects = self.store.list(&dir, OpList::default()).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::WriteOptions;

    fn states(dir: &std::path::Path, history_keep: u64) -> States {
        crate::state::local_states_for_tests(dir, history_keep)
    }

    fn doc(serial: u64) -> Bytes {
        format!(r#"{{"version":4,"serial":{serial},"lineage":"L","resources":[]}}"#).into()
    }

    fn write(rt: &tokio::runtime::Runtime, states: &States, state: &StateRef, serial: u64) {
        let opts = WriteOptions {
            operation: "write",
            ..Default::default()
        };
        rt.block_on(states.write(state, doc(serial), opts)).unwrap();
    }

    fn numbers(rt: &tokio::runtime::Runtime, states: &States, state: &StateRef) -> Vec<u64> {
        let history = rt.block_on(states.history(state)).unwrap();
        history.iter().map(|v| v.version).collect()
    }

    #[test]
    fn history_windows_are_checked() {
        assert_eq!(
            HistoryWindow::new(None, Some(7)).unwrap(),
            HistoryWindow {
                limit: PAGE_LIMIT_DEFAULT,
                before: Some(7)
            }
        );
        assert_eq!(HistoryWindow::new(Some(1000), None).unwrap().limit, 1000);
        for (limit, before) in [(Some(0), None), (Some(1001), None), (None, Some(0))] {
            let e = HistoryWindow::new(limit, before).unwrap_err();
            assert!(matches!(e, StateError::BadRequest(_)), "{e}");
        }
    }

    #[test]
    fn lowering_history_keep_prunes_the_excess_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let state = StateRef::parse("a.tfstate", None).unwrap();
        let all = states(dir.path(), 0);
        for serial in 1..=10 {
            write(&rt, &all, &state, serial);
        }
        assert_eq!(numbers(&rt, &all, &state), (1..=10).collect::<Vec<_>>());

        let three = states(dir.path(), 3);
        write(&rt, &three, &state, 11);
        assert_eq!(numbers(&rt, &three, &state), [9, 10, 11]);
        write(&rt, &three, &state, 12);
        assert_eq!(numbers(&rt, &three, &state), [10, 11, 12]);
    }

    #[test]
    fn a_pointer_left_behind_is_walked_forward() {
        let dir = tempfile::TempDir::new().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let state = StateRef::parse("a.tfstate", None).unwrap();
        let states = states(dir.path(), 0);
        let pointer = dir.path().join(".stategate/history/a.tfstate/newest.json");
        write(&rt, &states, &state, 1);
        write(&rt, &states, &state, 2);
        let behind = std::fs::read(&pointer).unwrap();
        write(&rt, &states, &state, 3);
        write(&rt, &states, &state, 4);
        // As a writer whose pointer update landed last would leave it.
        std::fs::remove_file(&pointer).unwrap();
        std::fs::write(&pointer, &behind).unwrap();

        write(&rt, &states, &state, 5);
        let history = rt.block_on(states.history(&state)).unwrap();
        let got: Vec<(u64, Option<u64>, &str)> = history
            .iter()
            .map(|v| (v.version, v.serial, v.operation.as_str()))
            .collect();
        let want: Vec<(u64, Option<u64>, &str)> = (1..=5).map(|n| (n, Some(n), "write")).collect();
        assert_eq!(got, want, "no version taken twice, none recorded twice");
        let now: Pointer = serde_json::from_slice(&std::fs::read(&pointer).unwrap()).unwrap();
        assert_eq!((now.oldest, now.newest.version), (1, 5));
    }
}

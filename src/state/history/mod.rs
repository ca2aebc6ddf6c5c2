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
//! [`Pointer`]: the newest record with the lowest number still kept beside
//! it; on local disk usually a second name of that record's file), so a
//! write costs the same whether a state has ten versions or
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
//! record, in order, and retention is exact. A lock holder's write on a
//! store with compare-and-swap appends without the lease, at the number
//! after the pointer its compare-and-swap was checked against, and falls
//! back to the lease when that number is taken (`States::write_recorded_unleased`;
//! `States::write_as_holder` gives the argument).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::StateError;
use super::catalog::Catalog;
use super::head::StateHead;
use crate::stores::Version;

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
            catalog: None,
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

pub(super) fn body_key(dir: &str, n: u64) -> String {
    format!("{dir}{n:010}.tfstate")
}

pub(super) fn meta_key(dir: &str, n: u64) -> String {
    format!("{dir}{n:010}.json")
}

pub(super) fn pointer_key(dir: &str) -> String {
    format!("{dir}{POINTER_NAME}")
}

/// `newest.json`: where a state's numbered versions begin and end, so
/// that appending, pruning and paging need no listing. Every record
/// rewrites it; see the module comment for how a pointer that is missing,
/// unreadable or behind is recovered.
///
/// Stored as the newest record's fields with `oldest` and `catalog`
/// beside them, so that a record written in this form is the pointer
/// too: on local disk the pointer is then a second name of the record's
/// file, not a file of its own ([`States::after_copy`]). Pointers written
/// before were `{"oldest", "newest": {record}, "catalog"}`; both are read
/// ([`Pointer::parse`]).
#[derive(Debug, Clone)]
pub(super) struct Pointer {
    /// No kept version has a lower number: retention deletes from here
    /// and downward walks stop here. Never above a kept version (a
    /// pointer rebuilt from a listing takes the lowest number listed; one
    /// written by a late writer may be lower than needed, which costs a
    /// few reads of numbers already gone).
    pub(super) oldest: u64,
    /// The newest record, so a write recognises the stored state from
    /// this one read.
    pub(super) newest: VersionMeta,
    /// What a search needs of the newest version's body, taken down when
    /// it was written; `None` when that was not known (a pointer walked
    /// forward or rebuilt), and then the body is read when a search needs
    /// it. In the newest record too only while the whole stays small
    /// ([`States::after_copy`]), so history pages, which read a record per
    /// version, stay small. Read only by `States::ends_reading` when
    /// asked: the writes and reads that consult the pointer skip it
    /// unparsed.
    pub(super) catalog: Option<Arc<Catalog>>,
}

impl Serialize for Pointer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Stored<'a> {
            #[serde(flatten)]
            newest: &'a VersionMeta,
            oldest: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            catalog: &'a Option<Arc<Catalog>>,
        }
        Stored {
            newest: &self.newest,
            oldest: self.oldest,
            catalog: &self.catalog,
        }
        .serialize(s)
    }
}

impl Pointer {
    /// Reads a stored pointer in either form, without its catalog (the
    /// catalog is skipped unparsed); `None` when it is neither.
    pub(super) fn parse(body: &[u8]) -> Option<Pointer> {
        /// What both forms have at the top: `newest` only in the old one.
        #[derive(Deserialize)]
        struct Ends {
            oldest: u64,
            newest: Option<VersionMeta>,
        }
        let ends: Ends = serde_json::from_slice(body).ok()?;
        let newest = match ends.newest {
            Some(newest) => newest,
            None => serde_json::from_slice(body).ok()?,
        };
        Some(Pointer {
            oldest: ends.oldest,
            newest,
            catalog: None,
        })
    }

    /// Whether the numbers make sense: versions count from 1 and the
    /// window is not empty. Anything else was not written by stategate.
    pub(super) fn is_sound(&self) -> bool {
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

/// The stored state, as far as the rules need it.
pub(in crate::state) struct Current {
    /// Its version in the store, for the compare-and-swap.
    pub version: Version,
    pub head: StateHead,
    /// Hex MD5 of its bytes.
    pub md5: String,
    /// Where its history ended when it was read (it is in there).
    pub history: Option<Pointer>,
}

mod pointer;
mod read;
mod record;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::state::WriteOptions;
    use crate::state::{StateRef, States};

    /// A directory for local stores, a runtime to drive them, and the
    /// state the tests write.
    fn setting() -> (tempfile::TempDir, tokio::runtime::Runtime, StateRef) {
        let dir = tempfile::TempDir::new().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        (dir, rt, StateRef::parse("a.tfstate", None).unwrap())
    }

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
        let (dir, rt, state) = setting();
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

    /// A local store that shows the guarantees of S3: compare-and-swap,
    /// and no lease of its own, so writers use lease objects and a lock
    /// holder's write takes none.
    struct LikeS3(crate::stores::local::LocalStore);

    #[async_trait::async_trait]
    impl crate::stores::Store for LikeS3 {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn capabilities(&self) -> crate::stores::Capabilities {
            crate::stores::Capabilities {
                conditional_create: true,
                compare_and_swap: true,
                unique_versions: false,
                native_lease: false,
            }
        }
        async fn read(
            &self,
            key: &str,
            args: crate::stores::OpRead,
        ) -> Result<Option<(crate::stores::Payload, Version)>, crate::stores::StoreError> {
            self.0.read(key, args).await
        }
        async fn write(
            &self,
            key: &str,
            body: crate::stores::Payload,
            args: crate::stores::OpWrite,
        ) -> Result<Version, crate::stores::StoreError> {
            self.0.write(key, body, args).await
        }
        async fn delete(
            &self,
            key: &str,
            args: crate::stores::OpDelete,
        ) -> Result<(), crate::stores::StoreError> {
            self.0.delete(key, args).await
        }
        async fn list(
            &self,
            prefix: &str,
            args: crate::stores::OpList,
        ) -> Result<Vec<crate::stores::Entry>, crate::stores::StoreError> {
            self.0.list(prefix, args).await
        }
    }

    /// States on a local store in `dir` that answers like S3, keeping
    /// every version.
    fn like_s3_states(
        dir: &tempfile::TempDir,
    ) -> (std::sync::Arc<dyn crate::stores::Store>, States) {
        let store: std::sync::Arc<dyn crate::stores::Store> = std::sync::Arc::new(LikeS3(
            crate::stores::local::LocalStore::open_dir(dir.path()).unwrap(),
        ));
        let states = States::new(
            std::sync::Arc::clone(&store),
            store.capabilities(),
            crate::state::Policy {
                workspace_key_prefix: "workspaces".into(),
                history_keep: 0,
                protect_lineage: true,
            },
        );
        (store, states)
    }

    /// A lock holder's write replaced the state but has not recorded it
    /// yet when a writer under the lease finds the state unrecorded and
    /// keeps it (as found) at the number the holder was about to take,
    /// then writes its own state after it. The holder's record must become
    /// that found version, not a second record of the same write after
    /// the other writer's.
    #[test]
    fn a_holder_adopts_its_write_found_by_another_writer() {
        use crate::state::head::{Described, StateHead, Writer, md5_hex};
        use crate::stores::{Condition, OpWrite, Payload, StoreExt};

        let (dir, rt, state) = setting();
        let (store, states) = like_s3_states(&dir);
        write(&rt, &states, &state, 1);
        lock_as_holder(&rt, &states, &state);
        let hdir = states.history_dir(&state);
        let seen = rt.block_on(states.stored_pointer(&hdir)).unwrap().unwrap();

        // The holder's compare-and-swap, made; its record not yet.
        let body = doc(2);
        let stored = rt
            .block_on(store.get(&states.object_key(&state)))
            .unwrap()
            .unwrap()
            .version;
        let version = rt
            .block_on(store.write(
                &states.object_key(&state),
                Payload::from(body.clone()),
                OpWrite::new(Condition::IfMatch(stored)),
            ))
            .unwrap();
        // Another writer under the lease keeps it as found, then writes.
        let opts = WriteOptions {
            operation: "write",
            lock_id: Some("H"),
            ..Default::default()
        };
        rt.block_on(states.write(&state, doc(3), opts)).unwrap();

        // The holder now records its write.
        let head = StateHead::parse(&body).unwrap();
        let md5 = md5_hex(&body);
        let written = Described {
            body: &Payload::from(body.clone()),
            head: &head,
            md5: &md5,
        };
        let holder = rt.block_on(states.lock_holder(&state)).unwrap().unwrap();
        let writer = || Writer::from_holder(Some(&holder), None, "write");
        let record = rt.block_on(states.record_unleased(&state, &seen, &written, &version, writer));
        assert_eq!(record.map(|meta| meta.version), Some(2));
        let history = rt.block_on(states.history(&state)).unwrap();
        let got: Vec<(u64, Option<u64>, &str, Option<&str>)> = history
            .iter()
            .map(|v| {
                (
                    v.version,
                    v.serial,
                    v.operation.as_str(),
                    v.lock_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, Some(1), "write", None),
                (2, Some(2), "write", Some("H")),
                (3, Some(3), "write", Some("H")),
            ],
            "one record per accepted write, in order"
        );
    }

    /// A lock holder's write on a store like S3 takes no lease and reads
    /// neither the state nor the next version before writing: the lock,
    /// the pointer, the state, then the copy, its record and the pointer.
    /// `state` locked by the holder whose ID is `H`.
    fn lock_as_holder(rt: &tokio::runtime::Runtime, states: &States, state: &StateRef) {
        let lock = br#"{"ID":"H","Who":"holder@host"}"#;
        rt.block_on(states.lock(state, Bytes::from_static(lock), None))
            .unwrap();
    }

    /// The write lease of `a.tfstate`, held for an hour by another process.
    fn hold_the_lease_elsewhere(
        rt: &tokio::runtime::Runtime,
        store: &std::sync::Arc<dyn crate::stores::Store>,
    ) {
        let lease = ".stategate/lease/a.tfstate/other";
        let expires = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 + 3_600_000;
        let body = format!(r#"{{"owner":"other","expires_ms":{expires}}}"#);
        rt.block_on(crate::stores::StoreExt::put(
            store.as_ref(),
            lease,
            Bytes::from(body),
            crate::stores::Condition::IfAbsent,
        ))
        .unwrap();
    }

    /// A purge waits for the write lease: a write that holds it may be
    /// creating the state again, and recording it in the history a purge
    /// that went ahead would remove.
    #[test]
    fn a_purge_waits_for_the_write_lease() {
        let (dir, rt, state) = setting();
        let (store, states) = like_s3_states(&dir);
        write(&rt, &states, &state, 1);
        rt.block_on(states.delete(&state, None)).unwrap();
        hold_the_lease_elsewhere(&rt, &store);
        let purged = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(2), states.purge(&state)).await
        });
        assert!(
            purged.is_err(),
            "purged while the lease was held: {purged:?}"
        );
        assert_eq!(numbers(&rt, &states, &state), [1]);
    }

    #[test]
    fn a_holder_writes_without_the_lease() {
        let (dir, rt, state) = setting();
        let (store, states) = like_s3_states(&dir);
        write(&rt, &states, &state, 1);
        lock_as_holder(&rt, &states, &state);
        // A write that waited for the lease would not finish in time.
        hold_the_lease_elsewhere(&rt, &store);
        let opts = WriteOptions {
            operation: "write",
            lock_id: Some("H"),
            ..Default::default()
        };
        let written = rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                states.write(&state, doc(2), opts),
            )
            .await
        });
        assert!(
            matches!(
                written,
                Ok(Ok(crate::state::WriteOutcome::Written {
                    version: Some(2),
                    ..
                }))
            ),
            "{written:?}"
        );
        assert_eq!(numbers(&rt, &states, &state), [1, 2]);
    }

    #[test]
    fn a_pointer_left_behind_is_walked_forward() {
        let (dir, rt, state) = setting();
        let states = states(dir.path(), 0);
        let pointer = dir.path().join(".stategate/history/a.tfstate/newest.json+");
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
        let now = Pointer::parse(&std::fs::read(&pointer).unwrap()).unwrap();
        assert_eq!((now.oldest, now.newest.version), (1, 5));
    }

    /// The pointer is a second name of the newest record's file (one new
    /// file per write, not two), in the form that is both; a pointer in
    /// the form earlier releases wrote is read, and replaced at the next
    /// write.
    #[test]
    fn the_pointer_is_the_newest_record_and_the_older_form_is_read() {
        use std::os::unix::fs::MetadataExt;
        let (dir, rt, state) = setting();
        let states = states(dir.path(), 0);
        let folder = dir.path().join(".stategate/history/a.tfstate");
        for serial in 1..=3 {
            write(&rt, &states, &state, serial);
        }
        let inode = |name: &str| std::fs::metadata(folder.join(name)).unwrap().ino();
        assert_eq!(inode("newest.json+"), inode("0000000003.json+"));
        let flat = std::fs::read(folder.join("newest.json+")).unwrap();
        let pointer = Pointer::parse(&flat).unwrap();
        assert_eq!((pointer.oldest, pointer.newest.version), (1, 3));
        let record: VersionMeta = serde_json::from_slice(&flat).unwrap();
        assert_eq!(record, pointer.newest, "the record reads as before");

        let older = serde_json::json!({"oldest": 1, "newest": pointer.newest});
        let older = serde_json::to_vec(&older).unwrap();
        let parsed = Pointer::parse(&older).unwrap();
        assert_eq!((parsed.oldest, parsed.newest), (1, pointer.newest.clone()));
        std::fs::remove_file(folder.join("newest.json+")).unwrap();
        std::fs::write(folder.join("newest.json+"), &older).unwrap();
        write(&rt, &states, &state, 4);
        assert_eq!(inode("newest.json+"), inode("0000000004.json+"));
        assert_eq!(numbers(&rt, &states, &state), [1, 2, 3, 4]);
        assert!(Pointer::parse(b"{\"oldest\": 1}").is_none());
    }

    /// A state of many resource blocks: its catalog stays out of the
    /// records, which history pages read, and the pointer is a file of
    /// its own that carries it.
    #[test]
    fn a_large_catalog_stays_out_of_the_record() {
        use std::os::unix::fs::MetadataExt;
        let (dir, rt, state) = setting();
        let states = states(dir.path(), 0);
        let blocks: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    r#"{{"mode":"managed","type":"terraform_data","name":"block_{i}_{}","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{{}}]}}"#,
                    "x".repeat(40)
                )
            })
            .collect();
        let body = format!(
            r#"{{"version":4,"serial":1,"lineage":"L","resources":[{}]}}"#,
            blocks.join(",")
        );
        let opts = WriteOptions {
            operation: "write",
            ..Default::default()
        };
        rt.block_on(states.write(&state, Bytes::from(body), opts))
            .unwrap();
        let folder = dir.path().join(".stategate/history/a.tfstate");
        let read = |name: &str| std::fs::read(folder.join(name)).unwrap();
        let record: serde_json::Value = serde_json::from_slice(&read("0000000001.json+")).unwrap();
        assert!(record.get("catalog").is_none(), "{record}");
        let pointer: serde_json::Value = serde_json::from_slice(&read("newest.json+")).unwrap();
        assert!(
            pointer["catalog"]["entries"]
                .as_array()
                .is_some_and(|e| e.len() == 200)
        );
        let inode = |name: &str| std::fs::metadata(folder.join(name)).unwrap().ino();
        assert_ne!(inode("newest.json+"), inode("0000000001.json+"));
    }
}

//! A small summary of each state's current version, so a listing of
//! thousands of states reads one listing of the store and one small object
//! per state shown, never a state body.
//!
//! For a state stategate wrote, the summary is its newest history record,
//! which the history pointer (`newest.json`) already holds: a write makes
//! no separate summary. A state some other tool wrote (no record of it
//! matches the listing, by size) is read once and its summary kept at
//! `.stategate/history/<object key>/summary.json`, which a delete removes.
//! Writing that file may fail: it is logged, not returned, and the body is
//! read again next time.
//!
//! A search needs a little more of each state, its [`Catalog`]: the
//! pointer of a written state carries it, and `summary.json` keeps it for
//! a state whose body had to be read ([`States::catalogued`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::catalog::Catalog;
use super::head::StateHead;
use super::history::{HISTORY_PREFIX, VersionMeta, rfc3339};
use super::key::{LOCK_SUFFIX, RESERVED_PREFIX};
use super::{StateError, StateRef, States};
use crate::stores::{Condition, OpList, OpWrite, Payload, StoreExt};

/// The name of the summary inside a state's history folder.
pub const SUMMARY_NAME: &str = "summary.json";

/// What the listing shows of one state, without reading it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// The history version holding the current state (0 when not known:
    /// a state found without history).
    pub version: u64,
    pub serial: Option<u64>,
    pub lineage: Option<String>,
    /// Resource blocks in the state.
    pub resources: usize,
    /// Bytes of the state body; also how a stale summary is noticed.
    pub size: u64,
    /// When the version was recorded (RFC 3339, UTC).
    pub updated: String,
    /// LockInfo `Who` of the writer, when it wrote under a lock.
    pub who: Option<String>,
    /// The authenticated identity that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `write`, `push`, `restore` or `found`.
    pub operation: String,
}

impl From<&VersionMeta> for Summary {
    fn from(meta: &VersionMeta) -> Self {
        Summary {
            version: meta.version,
            serial: meta.serial,
            lineage: meta.lineage.clone(),
            resources: meta.resources,
            size: meta.size,
            updated: meta.created.clone(),
            who: meta.who.clone(),
            identity: meta.identity.clone(),
            operation: meta.operation.clone(),
        }
    }
}

impl Summary {
    /// Who wrote the version: the authenticated identity, else the
    /// LockInfo `Who`.
    pub fn writer(&self) -> Option<&str> {
        self.identity.as_deref().or(self.who.as_deref())
    }
}

/// One state as a single store listing shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub state: StateRef,
    pub size: u64,
    /// Last write, where the store records it.
    pub modified: Option<OffsetDateTime>,
    /// Whether a lock object exists for it.
    pub locked: bool,
    /// When the store wrote that lock object, where it keeps a time: when
    /// the lock was taken by the store's clock, whatever the `Created` its
    /// client wrote says.
    pub lock_taken: Option<OffsetDateTime>,
}

impl States {
    fn summary_key(&self, state: &StateRef) -> String {
        format!("{HISTORY_PREFIX}{}/{SUMMARY_NAME}", self.object_key(state))
    }

    /// Removes a deleted state's summary.
    pub(super) async fn drop_summary(&self, state: &StateRef) {
        if let Err(e) = self
            .store
            .delete(&self.summary_key(state), Condition::Always.into())
            .await
        {
            tracing::warn!(state = %state, error = %e, "removing the state's summary failed");
        }
    }

    /// Every state in the store, from one listing: no state, lock or
    /// summary is read.
    pub async fn listing(&self) -> Result<Vec<Listed>, StateError> {
        let entries = self.store.list("", OpList::outside_internal()).await?;
        let locks: std::collections::HashMap<&str, Option<OffsetDateTime>> = entries
            .iter()
            .filter(|e| !e.key.starts_with(RESERVED_PREFIX))
            .filter_map(|e| Some((e.key.strip_suffix(LOCK_SUFFIX)?, e.modified)))
            .collect();
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let state = StateRef::from_object_key(&entry.key, &self.workspace_key_prefix)?;
                let lock = locks.get(entry.key.as_str());
                Some(Listed {
                    locked: lock.is_some(),
                    lock_taken: lock.copied().flatten(),
                    state,
                    size: entry.size,
                    modified: entry.modified,
                })
            })
            .collect())
    }

    /// When the store wrote `state`'s lock object, where it keeps a time
    /// ([`Listed::lock_taken`]); one listing of that object.
    pub async fn lock_taken(&self, state: &StateRef) -> Result<Option<OffsetDateTime>, StateError> {
        let key = state.lock_key(&self.workspace_key_prefix);
        let entries = self.store.list(&key, OpList::outside_internal()).await?;
        Ok(entries
            .into_iter()
            .find(|e| e.key == key)
            .and_then(|e| e.modified))
    }

    /// The summary of a state the listing showed with `size` bytes: its
    /// newest history record when that matches, else the summary kept for
    /// a state found without one, else built from the body this once and
    /// kept. `None` when the state no longer exists.
    pub async fn summary(
        &self,
        state: &StateRef,
        listed: &Listed,
    ) -> Result<Option<Summary>, StateError> {
        Ok(self
            .summarise(state, listed, false)
            .await?
            .map(|(summary, _)| summary))
    }

    /// [`States::summary`] with the catalog of the same version: from the
    /// history pointer of a state stategate wrote, else from the kept
    /// summary, else the body is read this once (a state another tool
    /// wrote, or one written before pointers carried catalogs) and the
    /// catalog kept with the summary. A body that is not a state, or whose
    /// catalog is past its bound, gives an empty one.
    pub async fn catalogued(
        &self,
        state: &StateRef,
        listed: &Listed,
    ) -> Result<Option<(Summary, Arc<Catalog>)>, StateError> {
        Ok(self
            .summarise(state, listed, true)
            .await?
            .map(|(summary, catalog)| (summary, catalog.unwrap_or_default())))
    }

    async fn summarise(
        &self,
        state: &StateRef,
        listed: &Listed,
        need_catalog: bool,
    ) -> Result<Option<(Summary, Option<Arc<Catalog>>)>, StateError> {
        // The record's summary, when it describes the listed version but
        // the pointer has no catalog of it.
        let mut recorded = None;
        let usable = |catalog: &Option<Arc<Catalog>>, summary: &Summary| {
            !need_catalog
                || catalog
                    .as_ref()
                    .is_some_and(|c| !c.predates_v3_modules(summary.resources))
        };
        if let Some((meta, catalog)) = self.newest_catalogued(state).await?
            && meta.size == listed.size
        {
            let summary = Summary::from(&meta);
            if usable(&catalog, &summary) {
                return Ok(Some((summary, catalog)));
            }
            recorded = Some(summary);
        }
        if let Some(obj) = self.store.get(&self.summary_key(state)).await?
            && let Ok(kept) = serde_json::from_slice::<Kept>(&obj.body)
            && kept.summary.size == listed.size
            && usable(&kept.catalog, &kept.summary)
        {
            return Ok(Some((recorded.unwrap_or(kept.summary), kept.catalog)));
        }
        // Written by another tool: the body is read this once, a piece at
        // a time when the store hands it out as a file.
        let Some((body, _)) = self.read(state).await? else {
            return Ok(None);
        };
        let head = StateHead::parse_payload(&body).await.unwrap_or_default();
        let summary = recorded.unwrap_or_else(|| Summary {
            version: 0,
            serial: head.serial,
            lineage: head.lineage,
            resources: head.resources,
            size: body.len(),
            updated: listed.modified.and_then(rfc3339).unwrap_or_default(),
            who: None,
            identity: None,
            operation: "found".into(),
        });
        let kept = Kept {
            summary,
            catalog: head.catalog,
        };
        // Kept for the next listing, when the store takes writes: one that
        // serves reads only reads the body again next time.
        if self.store.writes().refused.is_some() {
            return Ok(Some((kept.summary, kept.catalog)));
        }
        let body = serde_json::to_vec(&kept).expect("a summary serialises");
        if let Err(e) = self
            .store
            .write(
                &self.summary_key(state),
                Payload::from(bytes::Bytes::from(body)),
                OpWrite::transient(Condition::Always),
            )
            .await
        {
            tracing::warn!(state = %state, error = %e, "writing the state's summary failed");
        }
        Ok(Some((kept.summary, kept.catalog)))
    }
}

/// What `summary.json` holds: the summary of a state found without a
/// matching record, and the catalog of its body (absent in summaries kept
/// before catalogs were).
#[derive(Serialize, Deserialize)]
struct Kept {
    #[serde(flatten)]
    summary: Summary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    catalog: Option<Arc<Catalog>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::WriteOptions;

    fn states(dir: &std::path::Path) -> States {
        crate::state::local_states_for_tests(dir, 0)
    }

    fn doc(serial: u64, resources: usize) -> bytes::Bytes {
        let resources: Vec<_> = (0..resources)
            .map(|i| serde_json::json!({"mode": "managed", "type": "t", "name": format!("r{i}"), "instances": []}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "version": 4, "serial": serial, "lineage": "L", "resources": resources,
        }))
        .unwrap()
        .into()
    }

    /// A store in a temporary directory holding `a.tfstate`, written
    /// once with `resources` resource blocks.
    fn written(resources: usize) -> (tempfile::TempDir, tokio::runtime::Runtime, States, StateRef) {
        let dir = tempfile::TempDir::new().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let states = states(dir.path());
        let a = StateRef::parse("a.tfstate", None).unwrap();
        let opts = WriteOptions {
            operation: "write",
            ..Default::default()
        };
        rt.block_on(states.write(&a, doc(1, resources), opts))
            .unwrap();
        (dir, rt, states, a)
    }

    /// A written state's catalog rides in its history pointer; a pointer
    /// without one (written before pointers carried catalogs) makes the
    /// body read once, and the catalog kept.
    #[test]
    fn catalogs_come_from_the_pointer_or_the_body_once() {
        let (dir, rt, states, a) = written(3);
        let pointer = dir.path().join(".stategate/history/a.tfstate/newest.json+");
        let text = std::fs::read_to_string(&pointer).unwrap();
        assert!(text.contains("\"catalog\""), "{text}");
        let row = listed(&states, &rt).pop().unwrap();
        let (summary, catalog) = rt.block_on(states.catalogued(&a, &row)).unwrap().unwrap();
        assert_eq!((summary.version, catalog.len()), (1, 3));
        let kept = dir
            .path()
            .join(".stategate/history/a.tfstate/summary.json+");
        assert!(!kept.exists(), "no body was read");

        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("catalog");
        std::fs::remove_file(&pointer).unwrap();
        std::fs::write(&pointer, serde_json::to_vec(&old).unwrap()).unwrap();
        let (summary, catalog) = rt.block_on(states.catalogued(&a, &row)).unwrap().unwrap();
        assert_eq!((summary.version, catalog.len()), (1, 3));
        assert!(kept.is_file(), "the catalog read from the body is kept");
        // The listing's summary still comes from the pointer alone.
        let summary = rt.block_on(states.summary(&a, &row)).unwrap().unwrap();
        assert_eq!(summary.operation, "write");
    }

    /// A version-3 state's pointer written before their modules were
    /// catalogued holds a catalog of no block: the body is read once more,
    /// and its blocks kept.
    #[test]
    fn a_version_3_states_empty_catalog_is_taken_down_again() {
        let (dir, rt, states, a) = written(0);
        let v3 = br#"{"version":3,"terraform_version":"0.11.14","serial":2,"lineage":"L",
            "modules":[{"path":["root"],"resources":{"t.a.0":{},"t.a.1":{},"t.b":{}}}]}"#;
        let opts = WriteOptions {
            operation: "write",
            ..Default::default()
        };
        rt.block_on(states.write(&a, bytes::Bytes::from_static(v3), opts))
            .unwrap();
        let row = listed(&states, &rt).pop().unwrap();
        let (summary, catalog) = rt.block_on(states.catalogued(&a, &row)).unwrap().unwrap();
        assert_eq!((summary.resources, catalog.len()), (2, 2));

        // As an older release wrote the pointer: the catalog without blocks.
        let pointer = dir.path().join(".stategate/history/a.tfstate/newest.json+");
        let mut old: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&pointer).unwrap()).unwrap();
        old["catalog"] = serde_json::json!({"terraform_version": "0.11.14"});
        std::fs::remove_file(&pointer).unwrap();
        std::fs::write(&pointer, serde_json::to_vec(&old).unwrap()).unwrap();
        let kept = pointer.with_file_name("summary.json+");
        assert!(!kept.exists());
        for _ in 0..2 {
            let (summary, catalog) = rt.block_on(states.catalogued(&a, &row)).unwrap().unwrap();
            assert_eq!((summary.version, catalog.len()), (2, 2));
        }
        assert!(kept.is_file(), "the blocks read from the body are kept");
    }

    /// A catalog too large for the pointer every read and write consults
    /// is read from the body once, and kept with the summary.
    #[test]
    fn a_large_catalog_is_kept_beside_the_pointer() {
        let (dir, rt, states, a) = written(60_000);
        let history = dir.path().join(".stategate/history/a.tfstate");
        let pointer = std::fs::read_to_string(history.join("newest.json+")).unwrap();
        assert!(pointer.len() < 4096, "{} bytes", pointer.len());
        let row = listed(&states, &rt).pop().unwrap();
        let (summary, catalog) = rt.block_on(states.catalogued(&a, &row)).unwrap().unwrap();
        assert_eq!((summary.version, catalog.len()), (1, 60_000));
        assert!(history.join("summary.json+").is_file());
    }

    fn listed(states: &States, rt: &tokio::runtime::Runtime) -> Vec<Listed> {
        rt.block_on(states.listing()).unwrap()
    }

    #[test]
    fn writes_keep_the_summary_and_listings_read_no_state() {
        let dir = tempfile::TempDir::new().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let states = states(dir.path());
        let a = StateRef::parse("team/a.tfstate", None).unwrap();
        let dev = StateRef::parse("team/a.tfstate", Some("dev")).unwrap();
        let opts = || WriteOptions {
            operation: "write",
            identity: Some("user:ann"),
            ..Default::default()
        };
        rt.block_on(states.write(&a, doc(1, 1), opts())).unwrap();
        rt.block_on(states.write(&a, doc(2, 3), opts())).unwrap();
        rt.block_on(states.write(&dev, doc(1, 0), opts())).unwrap();
        let list = listed(&states, &rt);
        assert_eq!(list.len(), 2, "{list:?}");
        let row = list.iter().find(|l| l.state == a).unwrap();
        assert!(!row.locked);
        let summary = rt.block_on(states.summary(&a, row)).unwrap().unwrap();
        assert_eq!(
            (summary.version, summary.serial, summary.resources),
            (2, Some(2), 3)
        );
        assert_eq!(summary.writer(), Some("user:ann"));
        // Read from the history pointer: writes make no summary of their own.
        let kept = dir
            .path()
            .join(".stategate/history/team/a.tfstate/summary.json+");
        assert!(!kept.exists());

        // Replaced by another tool: noticed by its size, rebuilt from the body.
        std::fs::write(dir.path().join("team/a.tfstate+"), doc(9, 5)).unwrap();
        let row = listed(&states, &rt)
            .into_iter()
            .find(|l| l.state == a)
            .unwrap();
        let summary = rt.block_on(states.summary(&a, &row)).unwrap().unwrap();
        assert_eq!(
            (summary.serial, summary.operation.as_str()),
            (Some(9), "found")
        );

        // Kept for the next listing, which reads no body.
        assert!(kept.is_file());
        std::fs::remove_file(dir.path().join("team/a.tfstate+")).unwrap();
        std::fs::write(dir.path().join("team/a.tfstate+"), doc(8, 5)).unwrap();
        let summary = rt.block_on(states.summary(&a, &row)).unwrap().unwrap();
        assert_eq!(summary.serial, Some(9), "the kept summary, not the body");

        // The catalog of a state found without a record comes from its
        // body, and is kept with its summary.
        let (_, catalog) = rt.block_on(states.catalogued(&a, &row)).unwrap().unwrap();
        assert_eq!(catalog.len(), 5);
        let on_disk = std::fs::read_to_string(&kept).unwrap();
        assert!(on_disk.contains("\"catalog\""), "{on_disk}");

        // A delete removes the summary with the state.
        rt.block_on(states.delete(&a, None)).unwrap();
        assert!(listed(&states, &rt).iter().all(|l| l.state != a));
        assert!(!kept.exists());
    }
}

//! `stategate rekey`: every sealed object sealed anew under the first
//! key, without losing a concurrent write.

use bytes::Bytes;

use super::format::{logical_key, record_state};
use super::keyring::{Keyring, Opened};
use crate::stores::{Condition, Entry, OpList, Store, StoreError, StoreExt};

/// What `stategate rekey` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    /// Bodies sealed anew under the first key.
    pub resealed: u64,
    /// Bodies found unsealed and sealed now.
    pub sealed: u64,
    /// Bodies already under the first key.
    pub current: u64,
    /// Bodies that changed while being re-sealed (a write landed): they
    /// were written by stategate, so under the first key already.
    pub raced: u64,
    /// History records whose MD5 was sealed anew under the first key (or
    /// sealed for the first time).
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
}

/// Re-seals every state body and kept version of `store` under the first
/// key, in key order, and the MD5 in every history record with them. Each
/// object is rewritten only if it still has the version that was read, so
/// a concurrent write is never lost; one already under the first key is
/// skipped, so a run that was interrupted resumes where it stopped.
/// `progress` is told each object's size.
pub async fn rekey(
    store: &dyn Store,
    keys: &Keyring,
    progress: &dyn Fn(u64, u64),
) -> Result<RekeyReport, StoreError> {
    let entries: Vec<Entry> = store
        .list("", OpList::default())
        .await?
        .into_iter()
        .filter(|e| logical_key(&e.key).is_some() || record_state(&e.key).is_some())
        .collect();
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let mut report = RekeyReport::default();
    for entry in &entries {
        if let Some(state) = record_state(&entry.key) {
            let Some(obj) = store.get(&entry.key).await? else {
                continue;
            };
            report.bytes += obj.body.len() as u64;
            if let Some(sealed) = keys.reseal_record(&entry.key, state, &obj.body)? {
                match store
                    .put(&entry.key, sealed, Condition::IfMatch(obj.version))
                    .await
                {
                    Ok(_) => report.records += 1,
                    // Rewritten meanwhile, by a write that sealed it.
                    Err(StoreError::PreconditionFailed) => report.raced += 1,
                    Err(e) => return Err(e),
                }
            }
            progress(obj.body.len() as u64, total);
            continue;
        }
        let logical = logical_key(&entry.key).expect("filtered");
        let Some(obj) = store.get(&entry.key).await? else {
            continue;
        };
        report.bytes += obj.body.len() as u64;
        // Unsealed bodies are what rekey is for, required or not.
        let plain = match keys.open_as(&entry.key, logical, &obj.body, false)? {
            Opened::Sealed {
                current_key: true, ..
            } => {
                report.current += 1;
                progress(obj.body.len() as u64, total);
                continue;
            }
            Opened::Sealed { plain, .. } => {
                report.resealed += 1;
                plain
            }
            Opened::Clear => {
                report.sealed += 1;
                obj.body.to_vec()
            }
        };
        let sealed = Bytes::from(keys.seal(logical, &plain)?);
        match store
            .put(&entry.key, sealed, Condition::IfMatch(obj.version))
            .await
        {
            Ok(_) => {}
            Err(StoreError::PreconditionFailed) => report.raced += 1,
            Err(e) => return Err(e),
        }
        progress(obj.body.len() as u64, total);
    }
    Ok(report)
}

//! Moving states between stores: `stategate migrate` copies every state
//! (and, when asked, its kept versions) from one configured store to
//! another, and [`copy_state`] is the step it shares with any other
//! importer: write what the target lacks, skip what it already has, refuse
//! to replace a newer state, and check what landed.
//!
//! A rerun resumes: a state whose target already holds the source's bytes
//! is skipped, and with history only the versions after the newest one the
//! target holds are written. The source state's lock is held while it is
//! copied, so no apply changes it mid-copy; a dry run reads only.

use bytes::Bytes;

use crate::state::head::{StateHead, md5_hex};
use crate::state::{LockInfo, StateError, StateRef, States, Taken, WriteOptions};

/// What happened to one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    /// Written to the target: how many versions, and their bytes.
    Written { versions: usize, bytes: u64 },
    /// The target already holds the same bytes.
    Identical,
    /// Dry run: this many versions would be written.
    WouldWrite { versions: usize, bytes: u64 },
    /// The target holds a newer state (or another lineage): left alone.
    TargetNewer(String),
    /// Someone holds the source state's lock: not copied this time.
    SourceLocked(String),
}

impl Copied {
    /// One word for the summary.
    pub fn outcome(&self) -> &'static str {
        match self {
            Copied::Written { .. } => "copied",
            Copied::Identical => "identical",
            Copied::WouldWrite { .. } => "would copy",
            Copied::TargetNewer(_) => "target newer",
            Copied::SourceLocked(_) => "locked",
        }
    }

    /// Whether the state still needs attention (a rerun, an operator).
    pub fn is_problem(&self) -> bool {
        matches!(self, Copied::TargetNewer(_) | Copied::SourceLocked(_))
    }
}

/// Why `versions` would overwrite a newer state on the target, if it would.
fn refusal(target: &StateHead, source: &StateHead) -> Option<String> {
    match (&target.lineage, &source.lineage) {
        (Some(t), Some(s)) if t != s => {
            return Some(format!("the target holds lineage {t}, the source {s}"));
        }
        _ => {}
    }
    match (target.serial, source.serial) {
        (Some(t), Some(s)) if t > s => Some(format!(
            "the target's serial {t} is newer than the source's {s}"
        )),
        _ => None,
    }
}

/// Copies one state into `to`. `versions` are its bodies, oldest first;
/// the last is the current state (a single body copies without history).
/// Writes only what the target lacks, refuses to replace a newer state,
/// and reads back what it wrote to compare MD5s. With `dry_run` nothing is
/// written.
pub async fn copy_state(
    to: &States,
    state: &StateRef,
    versions: &[Bytes],
    dry_run: bool,
) -> Result<Copied, StateError> {
    let Some(current) = versions.last() else {
        return Ok(Copied::Identical);
    };
    let source_md5 = md5_hex(current);
    let pending: &[Bytes] = match to.get(state).await? {
        None => versions,
        Some(existing) if md5_hex(&existing) == source_md5 => return Ok(Copied::Identical),
        Some(existing) => {
            let existing_md5 = md5_hex(&existing);
            match versions.iter().rposition(|v| md5_hex(v) == existing_md5) {
                // The target stopped at one of the source's versions (an
                // interrupted copy): go on after it.
                Some(i) => &versions[i + 1..],
                None => {
                    let target = StateHead::parse(&existing).unwrap_or_default();
                    let source = StateHead::parse(current).unwrap_or_default();
                    if let Some(why) = refusal(&target, &source) {
                        return Ok(Copied::TargetNewer(why));
                    }
                    // An older state of the same lineage: the newer versions.
                    let from = versions
                        .iter()
                        .position(|v| {
                            StateHead::parse(v).ok().and_then(|h| h.serial) > target.serial
                        })
                        .unwrap_or(versions.len() - 1);
                    &versions[from..]
                }
            }
        }
    };
    let bytes = pending.iter().map(|v| v.len() as u64).sum();
    if dry_run {
        return Ok(Copied::WouldWrite {
            versions: pending.len(),
            bytes,
        });
    }
    for body in pending {
        to.write(
            state,
            body.clone(),
            WriteOptions {
                lock_id: None,
                // Kept versions are stored as they were, whatever their
                // serials (a restore keeps an older serial); the refusal
                // above already guards the target's newer state.
                skip_lineage_check: true,
                ignore_lock: false,
                identity: None,
                operation: "migrate",
                md5: None,
                head: None,
            },
        )
        .await?;
    }
    match to.get(state).await? {
        Some(landed) if md5_hex(&landed) == source_md5 => Ok(Copied::Written {
            versions: pending.len(),
            bytes,
        }),
        _ => Err(StateError::Store(crate::stores::StoreError::unavailable(
            format!("{state}: the copy does not read back with the source's MD5"),
        ))),
    }
}

/// The bodies to copy for a state of `from`: its kept versions oldest
/// first, ending with the current state; or the current state alone.
pub async fn versions_of(
    from: &States,
    state: &StateRef,
    with_history: bool,
) -> Result<Vec<Bytes>, StateError> {
    let Some(current) = from.get(state).await? else {
        return Ok(Vec::new());
    };
    let mut versions = Vec::new();
    if with_history {
        for meta in from.history(state).await? {
            versions.push(from.version(state, meta.version).await?);
        }
    }
    if versions
        .last()
        .is_none_or(|v| md5_hex(v) != md5_hex(&current))
    {
        versions.push(current);
    }
    Ok(versions)
}

/// Copies one state of `from` into `to` under the source's lock (taken
/// with `lock_info`, released after), or reads only on a dry run.
pub async fn migrate_state(
    from: &States,
    to: &States,
    state: &StateRef,
    with_history: bool,
    dry_run: bool,
    lock_info: &[u8],
) -> Result<Copied, StateError> {
    if dry_run {
        let versions = versions_of(from, state, with_history).await?;
        return copy_state(to, state, &versions, true).await;
    }
    let id = LockInfo::parse(lock_info)?.id;
    match from
        .lock(state, Bytes::copy_from_slice(lock_info), None)
        .await
    {
        Ok(Taken::Now) => {}
        // Ours from an interrupted run: go on, and release it below.
        Ok(Taken::Already { .. }) => {}
        Err(StateError::Locked(holder)) => {
            let who = LockInfo::of_holder(&holder);
            return Ok(Copied::SourceLocked(format!(
                "locked by {} ({})",
                if who.who.is_empty() { "?" } else { &who.who },
                who.id
            )));
        }
        Err(e) => return Err(e),
    }
    let result = async {
        let versions = versions_of(from, state, with_history).await?;
        copy_state(to, state, &versions, false).await
    }
    .await;
    let released = from.release(state, Some(&id)).await;
    let copied = result?;
    released?;
    Ok(copied)
}

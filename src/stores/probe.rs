//! The start-up probe: a few writes of a probe object that show what a
//! store really guarantees (a conditional create refused a second time, a
//! stale write refused), whatever its settings claim. `stategate check`
//! prints its steps.

use bytes::Bytes;

use super::{Capabilities, Condition, Store, StoreError, StoreExt};

/// The key of the probe object `stategate check` and start-up write.
pub const PROBE_PREFIX: &str = ".stategate/probe/";

/// What a probe of a store found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// One line per step, for `stategate check`.
    pub steps: Vec<String>,
    /// What the store was seen to guarantee: its own findings at open
    /// (which conditional requests its server honours) confirmed by the
    /// probe's writes.
    pub capabilities: Capabilities,
    /// Whether a write against a stale version was refused.
    pub stale_write_refused: bool,
}

/// Exercises a store with a probe object named by `tag`, which no other
/// probe used: create, second create (must be refused), read back, a
/// compare-and-swap against a stale version (must be refused) and one
/// against the current version, delete. Fails on the first store error;
/// reports what the store was seen to guarantee.
pub async fn probe(store: &dyn Store, tag: &str) -> Result<ProbeReport, StoreError> {
    let key = format!("{PROBE_PREFIX}{tag}");
    let mut steps = Vec::new();
    let body = Bytes::from(format!("stategate probe {tag}\n"));
    // No object of this name can be there already: callers give a tag
    // no other probe had (their process and the time), so a probe left
    // behind by a killed process is another object, and none is deleted
    // first (one request fewer at every start).
    let first = store.put(&key, body.clone(), Condition::IfAbsent).await?;
    steps.push(format!("write {key}: ok"));
    let conditional_create = match store
        .put(&key, Bytes::from_static(b"x"), Condition::IfAbsent)
        .await
    {
        Err(StoreError::AlreadyExists) => {
            steps.push("conditional create of an existing object: refused (locks are safe)".into());
            true
        }
        Ok(_) => {
            steps.push(
                "conditional create of an existing object: NOT refused (locks would be unsafe)"
                    .into(),
            );
            false
        }
        Err(e) => return Err(e),
    };
    let current = match store.get(&key).await? {
        Some(obj) if conditional_create && obj.body != body => {
            return Err(StoreError::unavailable("probe read back different bytes"));
        }
        Some(obj) => {
            steps.push("read back: ok".into());
            obj.version
        }
        None => return Err(StoreError::unavailable("probe object vanished after write")),
    };
    let changed = store
        .put(&key, body.clone(), Condition::IfMatch(current.clone()))
        .await?;
    // The object's version after the stale write: `changed` unless that
    // write went through.
    let (stale_refused, last) = if changed == first {
        // The store cannot tell the two versions apart (same bytes, same
        // ETag): a stale check cannot be shown with this object.
        (true, changed.clone())
    } else {
        match store
            .put(&key, Bytes::from_static(b"x"), Condition::IfMatch(first))
            .await
        {
            Err(StoreError::PreconditionFailed) => (true, changed.clone()),
            Ok(overwritten) => (false, overwritten),
            Err(e) => return Err(e),
        }
    };
    let compare_and_swap = stale_refused && store.capabilities().compare_and_swap;
    steps.push(format!(
        "write against a stale version: {}",
        match (stale_refused, compare_and_swap) {
            (false, _) => "NOT refused",
            (true, true) => "refused (compare-and-swap)",
            (true, false) => "refused, by comparing first (not atomic: writes take a lease)",
        }
    ));
    store.delete(&key, Condition::IfMatch(last).into()).await?;
    steps.push("conditional delete: ok".into());
    // A store whose versions are hashes of the bytes says so itself; one
    // that claims unique versions is held to it: the same bytes written
    // again must be a new version.
    let unique_versions = store.capabilities().unique_versions && {
        let again = store.put(&key, body, Condition::IfAbsent).await?;
        store.delete(&key, Condition::Always.into()).await?;
        again != changed
    };
    steps.push(format!(
        "the same bytes written again: {}",
        if unique_versions {
            "a new version"
        } else {
            "the same version (versions are hashes of the bytes)"
        }
    ));
    Ok(ProbeReport {
        steps,
        capabilities: Capabilities {
            conditional_create: conditional_create && store.capabilities().conditional_create,
            compare_and_swap,
            unique_versions,
            native_lease: store.capabilities().native_lease,
        },
        stale_write_refused: stale_refused,
    })
}

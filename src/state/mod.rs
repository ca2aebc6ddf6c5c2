//! The rules, written once for every store: what a state's object key is,
//! who may lock and write, which writes are stale, and what history keeps.
//! Everything here is built from the primitives of [`crate::stores::Store`]
//! (get, conditional put and delete, list), so a new store gets all of it
//! and the shared conformance suite proves it.
//!
//! - [`key`]: state keys, workspaces and object keys.
//! - [`lock`]: LOCK / UNLOCK / force-unlock on `<object key>.tflock`, and
//!   which identity holds a lock when authentication is on.
//! - [`write`]: the write rules (lock holder, lineage and serial) applied as
//!   a compare-and-swap on what was read.
//! - [`history`]: every state ever stored, kept as numbered versions under
//!   the reserved `.stategate/history/` prefix.
//! - [`summary`]: a small per-state summary beside the history records,
//!   so listings never read state bodies.
//! - [`diff`]: what changed between two state bodies, by resource address,
//!   naming attributes but never their values; it reads bodies a buffer at
//!   a time through `inventory` (what a body holds, with where each
//!   instance's text lies) and `scan` (a forward-only JSON reader).
//! - [`lease`]: short write leases that make a read-check-change atomic on
//!   stores without compare-and-swap.
//! - [`catalog`]: what a search of the fleet needs of a body (resource
//!   addresses, types, providers, modules, `terraform_version`), taken
//!   down in the pass that checks it; [`States::follow`] tells whoever
//!   keeps such an index of every change made here, once it is made.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::stores::{Capabilities, OpList, OpRead, Payload, Store, StoreError, Version};

pub mod catalog;
pub mod diff;
pub mod head;
pub mod history;
mod inventory;
pub mod key;
pub mod lease;
pub mod lock;
mod scan;
pub mod seal;
pub mod summary;
pub mod write;

pub use history::VersionMeta;
pub use key::StateRef;
pub use lease::Lease;
pub use lock::{Held, LockInfo, Taken};
pub(crate) use scan::go_folded;
pub use write::{WriteOptions, WriteOutcome};

/// Why a state operation did not happen. [`crate::protocol`] maps each kind
/// to exactly one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The request itself is wrong (bad key, body not JSON, no lock ID).
    #[error("{0}")]
    BadRequest(String),
    /// LOCK found another holder; carries the holder's LockInfo bytes.
    #[error("the state is locked by another client")]
    Locked(Bytes),
    /// A write, delete or unlock from someone who does not hold the lock;
    /// carries the holder's LockInfo bytes.
    #[error("the state is locked by another client")]
    NotHolder(Bytes),
    /// The write would replace newer state; the reason names lineages or serials.
    #[error("{0}")]
    Stale(String),
    /// Nothing stored under that name (a state or a history version).
    #[error("{0}")]
    NotFound(String),
    /// The key's place in the store is taken by something the store did not
    /// make ([`StoreError::KeyConflict`]).
    #[error("{0}")]
    KeyConflict(String),
    /// The store failed; the message carries the store's reason.
    #[error("{0}")]
    Store(StoreError),
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::KeyConflict(reason) => StateError::KeyConflict(reason),
            other => StateError::Store(other),
        }
    }
}

impl From<key::KeyError> for StateError {
    fn from(e: key::KeyError) -> Self {
        StateError::BadRequest(e.0)
    }
}

/// When a state operation takes the state's write lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseNeed {
    /// A change that history records (write, delete): on every store,
    /// because a history append reads where history ends, then creates
    /// the next number, and only serialised appends give one record per
    /// accepted write, in order, within `history_keep`.
    /// Compare-and-swap alone keeps the state right but not its history.
    Always,
    /// A read-compare-delete (unlock): only where the store's conditional
    /// delete is not atomic.
    WithoutCompareAndSwap,
}

/// How the rules are tuned; from the top level of the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Object keys of non-default workspaces start with this.
    pub workspace_key_prefix: String,
    /// Versions kept per state; 0 keeps all.
    pub history_keep: u64,
    /// Refuse writes whose lineage or serial would replace newer state.
    pub protect_lineage: bool,
}

/// A change made through one [`States`] (or a clone of it), told to its
/// followers ([`States::follow`]) once the store took it.
#[derive(Debug, Clone)]
pub enum StateChange {
    /// A write, push or restore made a new current version: its summary
    /// and catalog, or `None` when its history record failed, so a
    /// follower must read the state to know it.
    Written {
        state: StateRef,
        current: Option<(summary::Summary, Option<Arc<catalog::Catalog>>)>,
    },
    /// The state was deleted (its history stays).
    Deleted { state: StateRef },
    /// Its lock was taken (by `holder`) or released (`None`).
    Lock {
        state: StateRef,
        holder: Option<LockInfo>,
    },
}

/// Changes a slow follower may fall behind by before it is told it lagged
/// (and must look at the store again).
const CHANGES_BUFFERED: usize = 4096;

/// The states held in one store, with the rules applied. Cheap to share:
/// a clone works on the same store and tells the same followers.
#[derive(Clone)]
pub struct States {
    store: Arc<dyn Store>,
    /// What the store was seen to guarantee when it was opened.
    capabilities: Capabilities,
    /// The store's [`Store::max_key_bytes`], which bounds state keys.
    max_store_key: Option<usize>,
    workspace_key_prefix: String,
    history_keep: u64,
    protect_lineage: bool,
    /// Where [`StateChange`]s go; sending with no follower costs nothing.
    changes: broadcast::Sender<StateChange>,
}

/// One state in a listing.
#[derive(Debug, Clone)]
pub struct StateSummary {
    pub state: StateRef,
    pub size: u64,
    /// Last write, where the store records it (RFC 3339).
    pub modified: Option<String>,
    /// The Terraform serial, when the body has one.
    pub serial: Option<u64>,
    /// Who holds the lock, if anyone.
    pub lock: Option<LockInfo>,
}

impl States {
    /// Applies `policy` to the states in `store`, which the start-up
    /// probe saw guarantee `capabilities` ([`crate::stores::open`]).
    pub fn new(store: Arc<dyn Store>, capabilities: Capabilities, policy: Policy) -> Self {
        States {
            max_store_key: store.max_key_bytes(),
            store,
            capabilities,
            workspace_key_prefix: policy.workspace_key_prefix,
            history_keep: policy.history_keep,
            protect_lineage: policy.protect_lineage,
            changes: broadcast::Sender::new(CHANGES_BUFFERED),
        }
    }

    /// Every change made through these states from now on. A receiver
    /// that falls more than a few thousand changes behind is told it
    /// lagged ([`broadcast::error::RecvError::Lagged`]).
    pub fn follow(&self) -> broadcast::Receiver<StateChange> {
        self.changes.subscribe()
    }

    /// Tells the followers of `change`; nobody following is no failure.
    pub(crate) fn tell(&self, change: StateChange) {
        let _ = self.changes.send(change);
    }

    /// What the store was seen to guarantee.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// The store underneath, for probes and diagnostics.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The one name of a state as a client spelled it (see
    /// [`StateRef::canonical`]); every entry point names states through
    /// this before any rule sees them. [`StateError::BadRequest`] when a
    /// name derived from the key would not fit in the store
    /// ([`StateRef::check_fits`]).
    pub fn canonical(&self, state: &StateRef) -> Result<StateRef, StateError> {
        if let Some(max) = self.max_store_key {
            state.check_fits(&self.workspace_key_prefix, max)?;
        }
        Ok(state.canonical(&self.workspace_key_prefix))
    }

    /// Where a state is stored.
    pub fn object_key(&self, state: &StateRef) -> String {
        state.object_key(&self.workspace_key_prefix)
    }

    /// Runs `op` under the state's write lease (see [`lease`]) where
    /// `need` calls for one, and releases the lease after it, but for a
    /// change that failed on a store without compare-and-swap, which may
    /// still land ([`Lease::end_after_failure`]). `op` gets `None` where
    /// the store's own conditions suffice.
    pub(super) async fn with_lease<T>(
        &self,
        state: &StateRef,
        need: LeaseNeed,
        op: impl AsyncFnOnce(Option<&Lease>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let cas = self.capabilities.compare_and_swap;
        let lease = match cas && need == LeaseNeed::WithoutCompareAndSwap {
            true => None,
            false => Some(Lease::acquire(&self.store, &self.object_key(state)).await?),
        };
        let result = op(lease.as_ref()).await;
        if let Some(lease) = lease {
            // A store without compare-and-swap gets plain requests, which
            // may land after their failure was reported; and a store that
            // failed is not waited for again.
            match &result {
                Err(StateError::Store(StoreError::Unavailable(_))) if !cas => {
                    lease.end_after_failure(&state.to_string())
                }
                Err(StateError::Store(StoreError::Unavailable(_))) => lease.release_in_background(),
                _ => lease.release().await,
            }
        }
        result
    }

    /// The stored version of a state, with the hex MD5 and size of its
    /// body when the newest history record names that version (so the
    /// body need not be read to know them); `None` when no state is
    /// stored. A record sealed where no key opened it is refused
    /// ([`seal::refuse_sealed_record`]).
    pub async fn current_digest(
        &self,
        state: &StateRef,
    ) -> Result<Option<(Version, Option<(String, u64)>)>, StateError> {
        let digest = self.recorded_digest(state).await?;
        if let Some((_, Some((md5, _)))) = &digest {
            seal::refuse_sealed_record(&state.to_string(), md5)?;
        }
        Ok(digest)
    }

    /// Reads a state's current body with its store version, as the store
    /// hands it out: a large body may be a file, read a piece at a time.
    pub async fn read(&self, state: &StateRef) -> Result<Option<(Payload, Version)>, StateError> {
        self.read_as(state, OpRead::streamed()).await
    }

    /// Reads a state's current body for a download, as [`States::read`]
    /// does, sharing a medium body with the other readers of the same
    /// version ([`OpRead::shared`]).
    pub async fn download(
        &self,
        state: &StateRef,
    ) -> Result<Option<(Payload, Version)>, StateError> {
        self.read_as(state, OpRead::shared()).await
    }

    async fn read_as(
        &self,
        state: &StateRef,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StateError> {
        let read = self.store.read(&self.object_key(state), args).await?;
        if let Some((body, _)) = &read {
            seal::refuse_sealed_body(&state.to_string(), body)?;
        }
        Ok(read)
    }

    /// Every state whose key starts with `prefix` (any workspace), with its
    /// serial and lock holder: the one store listing ([`States::listing`])
    /// the dashboard shows, with each state's summary (its newest history
    /// record, so no body is read for a state written through stategate).
    pub async fn list(&self, prefix: &str) -> Result<Vec<StateSummary>, StateError> {
        let mut out = Vec::new();
        for listed in self.listing().await? {
            if !listed.state.key().starts_with(prefix) {
                continue;
            }
            // A state whose history crosses something the store did not
            // make (a link put there by hand) is still listed, without
            // its serial; the reads of it are refused on their own.
            let serial = match self.summary(&listed.state, &listed).await {
                Ok(Some(summary)) => summary.serial,
                Ok(None) => continue,
                Err(StateError::KeyConflict(reason)) => {
                    tracing::warn!(state = %listed.state, %reason, "listed without its summary");
                    None
                }
                Err(e) => return Err(e),
            };
            let lock = match listed.locked {
                true => self.lock_holder(&listed.state).await?.map(|h| h.info),
                false => None,
            };
            out.push(StateSummary {
                size: listed.size,
                modified: listed.modified.and_then(history::rfc3339),
                serial,
                lock,
                state: listed.state,
            });
        }
        Ok(out)
    }

    /// How many states and held locks the store has, from one listing
    /// (no state is read).
    pub async fn counts(&self) -> Result<(usize, usize), StateError> {
        let entries = self.store.list("", OpList::outside_internal()).await?;
        let locks = entries
            .iter()
            .filter(|e| {
                e.key.ends_with(key::LOCK_SUFFIX) && !e.key.starts_with(key::RESERVED_PREFIX)
            })
            .count();
        let states = entries
            .iter()
            .filter(|e| StateRef::from_object_key(&e.key, &self.workspace_key_prefix).is_some())
            .count();
        Ok((states, locks))
    }

    /// Every lock currently held, with its state.
    pub async fn locks(&self) -> Result<Vec<(StateRef, LockInfo)>, StateError> {
        let locks = self.locks_taken().await?;
        Ok(locks
            .into_iter()
            .map(|(state, info, _)| (state, info))
            .collect())
    }

    /// [`States::locks`], each with when the store wrote its lock object,
    /// where the store keeps a time: when the lock was taken, by the
    /// store's clock, whatever its `Created` (which the client wrote) says.
    pub async fn locks_taken(
        &self,
    ) -> Result<Vec<(StateRef, LockInfo, Option<time::OffsetDateTime>)>, StateError> {
        let mut out = Vec::new();
        for entry in self.store.list("", OpList::outside_internal()).await? {
            let Some(object_key) = entry.key.strip_suffix(key::LOCK_SUFFIX) else {
                continue;
            };
            let Some(state) = StateRef::from_object_key(object_key, &self.workspace_key_prefix)
            else {
                continue;
            };
            if let Some(held) = self.lock_holder(&state).await? {
                out.push((state, held.info, entry.modified));
            }
        }
        Ok(out)
    }
}

/// The states of a local store in `dir`, as unit tests of the rules use
/// them: every guarantee the local store gives, `history_keep` as given.
#[cfg(test)]
pub(crate) fn local_states_for_tests(dir: &std::path::Path, history_keep: u64) -> States {
    States::new(
        Arc::new(crate::stores::local::LocalStore::open_dir(dir).unwrap()),
        Capabilities {
            conditional_create: true,
            compare_and_swap: true,
            unique_versions: true,
            native_lease: true,
        },
        Policy {
            workspace_key_prefix: "workspaces".into(),
            history_keep,
            protect_lineage: true,
        },
    )
}

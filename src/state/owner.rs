//! Who took a lock. With authentication on, a lock belongs to the identity
//! that took it: knowing the lock's ID is not enough to write under it or
//! release it, since anyone who may read a state can see its LockInfo. The
//! lock object itself stays the client's LockInfo, byte for byte (Terraform's
//! native backends read it), so the owner is kept beside it, under the
//! reserved prefix, together with the lock ID it is about: a record left by
//! a crash never speaks for a later lock with another ID.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{StateError, StateRef, States};
use crate::stores::Condition;

/// Where owner records live; inside the reserved prefix.
pub const OWNER_PREFIX: &str = ".stategate/owners/";

#[derive(Serialize, Deserialize)]
struct OwnerRecord {
    /// The LockInfo `ID` this record is about.
    id: String,
    /// The identity that took the lock (`user:alice`).
    identity: String,
}

impl States {
    fn owner_key(&self, state: &StateRef) -> String {
        format!("{OWNER_PREFIX}{}", self.object_key(state))
    }

    /// Records that `identity` took the lock `lock_id`.
    pub async fn record_lock_owner(
        &self,
        state: &StateRef,
        lock_id: &str,
        identity: &str,
    ) -> Result<(), StateError> {
        let record = OwnerRecord {
            id: lock_id.to_string(),
            identity: identity.to_string(),
        };
        let body = serde_json::to_vec(&record).expect("owner record serialises");
        self.store
            .put(&self.owner_key(state), Bytes::from(body), Condition::Always)
            .await?;
        Ok(())
    }

    /// The identity that took the lock `lock_id`, when stategate recorded one.
    pub async fn lock_owner(
        &self,
        state: &StateRef,
        lock_id: &str,
    ) -> Result<Option<String>, StateError> {
        let Some(obj) = self.store.get(&self.owner_key(state)).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<OwnerRecord>(&obj.body)
            .ok()
            .filter(|r| r.id == lock_id)
            .map(|r| r.identity))
    }
}

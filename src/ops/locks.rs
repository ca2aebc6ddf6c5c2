//! Lock, unlock and force-unlock, whichever entry point asks: the owner
//! rules of authenticated locks, and the one force-unlock that the state
//! URLs (an UNLOCK without an ID), the dashboard's release button and
//! `stategate lock release` all are.

use bytes::Bytes;

use super::{Actor, Event, OpError, Ops};
use crate::auth::Access;
use crate::auth::decide;
use crate::state::{Held, LockInfo, StateRef, Taken};

impl Ops<'_> {
    /// Takes the lock for the LockInfo in `body`; the owner is the actor's
    /// identity when authentication is on. A LOCK retried with the
    /// holder's ID succeeds in the state layer, so here the ID alone must
    /// not make another identity the holder.
    pub async fn lock(&self, state: &StateRef, actor: &Actor, body: Bytes) -> Result<(), OpError> {
        let id = LockInfo::parse(&body).map(|i| i.id).unwrap_or_default();
        // The owner rides in the lock object: no extra store call.
        let taken = self.states.lock(state, body, actor.authenticated()).await?;
        if let (Some(level), Taken::Already { owner }) = (actor.level, taken) {
            let name = actor.name();
            let decision = decide::lock_use(name, level, state, &id, owner.as_deref());
            self.check(actor, state, decision).await?;
        }
        self.emit(
            Event::Lock {
                state: state.clone(),
                lock_id: id,
            },
            actor,
        )
        .await;
        Ok(())
    }

    /// Releases the lock `id` when it holds the state: by the identity that
    /// took it, or an admin. Unlocking a free lock succeeds, with nothing
    /// to record; another holder's lock is refused (409, the holder).
    pub async fn unlock(&self, state: &StateRef, actor: &Actor, id: &str) -> Result<(), OpError> {
        let holder = self.states.lock_holder(state).await?;
        if let (Some(level), Some(held)) = (actor.level, &holder)
            && held.info.id == id
        {
            let decision = decide::lock_use(actor.name(), level, state, id, held.owner.as_deref());
            self.check(actor, state, decision).await?;
        }
        // Recorded only when this call released it: a force-unlock may
        // have got there first.
        let released = self.states.release_read(state, Some(id), holder).await?;
        if let Some(held) = released {
            self.emit(
                Event::Unlock {
                    state: state.clone(),
                    lock_id: held.info.id,
                },
                actor,
            )
            .await;
        }
        Ok(())
    }

    /// Releases whoever holds the lock: an admin's act. With `expected`,
    /// only the lock of that ID (the one a page showed) is released, and
    /// one taken since stays (409, its holder). Returns the lock this call
    /// released, `None` when there was none to release (none was held, or
    /// its holder released it meanwhile), and nothing is recorded then.
    /// The release and its record name the same lock: one taken again
    /// between the look and the delete is the one released and named.
    pub async fn force_unlock(
        &self,
        state: &StateRef,
        actor: &Actor,
        expected: Option<&str>,
    ) -> Result<Option<Held>, OpError> {
        let decision = actor.allows(state, Access::Admin, "force-unlock");
        self.check(actor, state, decision).await?;
        let read = self.states.lock_holder(state).await?;
        let Some(held) = self.states.release_read(state, expected, read).await? else {
            return Ok(None);
        };
        self.emit(
            Event::ForceUnlock {
                state: state.clone(),
                lock_id: held.info.id.clone(),
                previous_holder: held.info.who.clone(),
            },
            actor,
        )
        .await;
        Ok(Some(held))
    }
}

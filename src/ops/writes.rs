//! The operations that change what a state holds: a client's write, an
//! operator's push, a restore of an old version, a delete and a purge of a
//! deleted state's history. The rules themselves (lineage, serial, lock
//! holder) are the state layer's; here is who may use a lock, when a
//! restore may pass one, and what each records.

use super::{Actor, Event, OpError, Ops};
use crate::auth::Access;
use crate::auth::decide;
use crate::state::head::StateHead;
use crate::state::{StateError, StateRef, WriteOptions, WriteOutcome};
use crate::stores::Payload;

impl Ops<'_> {
    /// A client's write of `body` (whose hex MD5 is `md5`) under the lock
    /// `lock_id`, with every rule: the body must be a state, not stale,
    /// and the lock, when held, the actor's or the actor an admin. A
    /// refusal by the rules is audited as `write_refused`.
    pub async fn write(
        &self,
        state: &StateRef,
        actor: &Actor,
        body: Payload,
        md5: &str,
        lock_id: Option<&str>,
    ) -> Result<WriteOutcome, OpError> {
        if let Some(id) = lock_id {
            self.check_lock_use(state, actor, id).await?;
        }
        // Checked once here, for the audit record, and handed on.
        let head = StateHead::parse_payload(&body).await;
        let bytes = body.len();
        let serial = head.as_ref().ok().and_then(|h| h.serial);
        let written = match head {
            Ok(head) => {
                let opts = WriteOptions {
                    lock_id,
                    identity: actor.authenticated(),
                    operation: "write",
                    md5: Some(md5),
                    head: Some(&head),
                    ..Default::default()
                };
                self.states.write(state, body, opts).await
            }
            Err(refused) => Err(refused),
        };
        match written {
            Ok(outcome) => {
                if let WriteOutcome::Written {
                    version,
                    previous_serial,
                    ..
                } = &outcome
                {
                    let event = Event::Write {
                        state: state.clone(),
                        serial,
                        bytes,
                        previous_serial: *previous_serial,
                        version: *version,
                    };
                    self.emit(event, actor).await;
                }
                Ok(outcome)
            }
            Err(e) => {
                if matches!(
                    e,
                    StateError::Stale(_) | StateError::NotHolder(_) | StateError::BadRequest(_)
                ) {
                    let event = Event::WriteRefused {
                        state: state.clone(),
                        serial,
                        bytes,
                        reason: e.to_string(),
                    };
                    self.emit(event, actor).await;
                }
                Err(self.check_keys(state, actor, e).await.into())
            }
        }
    }

    /// Deletes a state (its history remains), under the lock `lock_id`
    /// with the same owner rule as a write. Deleting an absent state
    /// succeeds.
    pub async fn delete(
        &self,
        state: &StateRef,
        actor: &Actor,
        lock_id: Option<&str>,
    ) -> Result<(), OpError> {
        if let Some(id) = lock_id {
            self.check_lock_use(state, actor, id).await?;
        }
        if let Err(e) = self.states.delete(state, lock_id).await {
            return Err(self.check_keys(state, actor, e).await.into());
        }
        self.emit(
            Event::Delete {
                state: state.clone(),
            },
            actor,
        )
        .await;
        Ok(())
    }

    /// Makes version `version` the current state again, skipping the
    /// lineage and serial checks. Refused while the state is locked (423,
    /// the holder's LockInfo) unless `force`, which needs an admin (403
    /// otherwise) and writes past the lock.
    pub async fn restore(
        &self,
        state: &StateRef,
        actor: &Actor,
        version: u64,
        force: bool,
    ) -> Result<WriteOutcome, OpError> {
        if force {
            let decision = actor.allows(state, Access::Admin, "force a restore of");
            self.check(actor, state, decision).await?;
        } else if let Some(held) = self.states.lock_holder(state).await? {
            return Err(StateError::Locked(held.body).into());
        }
        let body = match self.states.version(state, version).await {
            Ok(body) => body,
            Err(e) => return Err(self.check_keys(state, actor, e).await.into()),
        };
        let opts = WriteOptions {
            skip_lineage_check: true,
            ignore_lock: force,
            ..Default::default()
        };
        let event = Event::Restore {
            state: state.clone(),
            restored_version: version,
            force,
            version: None,
        };
        self.operator_write(state, actor, body, opts, event).await
    }

    /// Stores `body` as the current state; `force` takes any JSON,
    /// skipping the lineage and serial checks. A held lock refuses it.
    pub async fn push(
        &self,
        state: &StateRef,
        actor: &Actor,
        body: impl Into<Payload>,
        force: bool,
    ) -> Result<WriteOutcome, OpError> {
        let opts = WriteOptions {
            skip_lineage_check: force,
            ..Default::default()
        };
        let event = Event::Push {
            state: state.clone(),
            force,
            version: None,
        };
        self.operator_write(state, actor, body, opts, event).await
    }

    /// An operator's write of `body` (a push or a restore) with `opts`,
    /// recorded in history under the actor's identity and the event's
    /// action, and audited as `event`, with the history version it made,
    /// once stored.
    async fn operator_write(
        &self,
        state: &StateRef,
        actor: &Actor,
        body: impl Into<Payload>,
        opts: WriteOptions<'_>,
        mut event: Event,
    ) -> Result<WriteOutcome, OpError> {
        let opts = WriteOptions {
            identity: actor.authenticated(),
            operation: event.action(),
            ..opts
        };
        let outcome = match self.states.write(state, body, opts).await {
            Ok(outcome) => outcome,
            Err(e) => return Err(self.check_keys(state, actor, e).await.into()),
        };
        if let (
            Event::Restore { version, .. } | Event::Push { version, .. },
            WriteOutcome::Written {
                version: written, ..
            },
        ) = (&mut event, &outcome)
        {
            *version = *written;
        }
        self.emit(event, actor).await;
        Ok(outcome)
    }

    /// Removes every kept version of a deleted state; returns how many.
    pub async fn purge(&self, state: &StateRef, actor: &Actor) -> Result<usize, OpError> {
        let versions = self.states.purge(state).await?;
        self.emit(
            Event::Purge {
                state: state.clone(),
                versions,
            },
            actor,
        )
        .await;
        Ok(versions)
    }

    /// Checks that the actor may act under the lock `lock_id`: when that
    /// lock is held now, it must have taken it, or be an admin. A lock no
    /// longer held is left to the state rules, as without authentication.
    async fn check_lock_use(
        &self,
        state: &StateRef,
        actor: &Actor,
        lock_id: &str,
    ) -> Result<(), OpError> {
        let Some(level) = actor.level.filter(|&l| l < Access::Admin) else {
            return Ok(());
        };
        match self.states.lock_holder(state).await? {
            Some(held) if held.info.id == lock_id => {
                let decision =
                    decide::lock_use(actor.name(), level, state, lock_id, held.owner.as_deref());
                self.check(actor, state, decision).await
            }
            _ => Ok(()),
        }
    }
}

//! The operations on states, each written once: write, lock, unlock,
//! force-unlock, restore, push, delete and purge. The state URLs
//! ([`crate::protocol`]), the dashboard ([`crate::ui`]) and the operator
//! commands (the binary's `state` and `lock`) are adapters: they parse
//! their medium, decide who is asking, call an operation here and map its
//! result back. Whatever they are, an operation applies the same rules
//! and records the same [`Event`], which the audit log, the force-unlock
//! counter of the metrics and the notifications ([`crate::notify`])
//! consume. A notification is in the store's outbox before the operation
//! answers; sending it is left to the delivery loop.
//!
//! Every operation takes a state already given its one name
//! ([`crate::state::States::canonical`]) and an [`Actor`]: who asks, from
//! where, through which entry point, and with which access level when
//! authentication decides what they may do. Whether the actor may ask at
//! all is decided before ([`crate::auth::decide`]); what an operation
//! itself checks is what depends on the state as stored: who took a lock.
//!
//! The rules that differ by operation:
//!
//! - **Write and delete** under a lock ID: when that lock is held, only
//!   the identity that took it, or an admin, may use it.
//! - **Unlock** with the holder's ID: the same; **force-unlock** (no ID)
//!   needs admin, and is audited with the holder it released.
//! - **Restore** makes an old version current again, skipping the lineage
//!   and serial checks (it goes back on purpose). It is refused while the
//!   state is locked (423, naming the holder): whoever holds the lock is in
//!   the middle of a change. An admin may force it past the lock, from the
//!   dashboard (the `force` field of the restore form) or the command line
//!   (`--force`; the local operator counts as an admin); a forced restore
//!   asked by a non-admin is refused (403).
//! - **Push** stores a file as the current state (`force` skips the
//!   lineage and serial checks); **purge** removes the history of a
//!   deleted state.
//!
//! - [`event`]: the typed events and their audit lines.
//! - [`locks`]: lock, unlock, force-unlock.
//! - [`writes`]: write, push, restore, delete, purge.

use std::net::IpAddr;

use crate::audit::Audit;
use crate::auth::Access;
use crate::auth::decide::{self, Decision};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::state::{StateError, StateRef, States};

pub mod event;
pub mod locks;
pub mod writes;

pub use event::{Event, Target};

/// The entry point an action came through; audited as `via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The state URLs (Terraform, OpenTofu, scripts).
    Http,
    /// The dashboard's forms.
    Dashboard,
    /// An operator command run on the server's machine.
    Cli,
}

impl Via {
    /// The name the audit log gives it.
    pub fn name(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Dashboard => "dashboard",
            Via::Cli => "cli",
        }
    }
}

/// Who asks for an operation.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The identity's name (`user:ann`, `token:ci`, `operator:root`);
    /// `None` on a server running without authentication.
    pub identity: Option<String>,
    /// The identity's level on the state acted on, when authentication
    /// decides what it may do. `None` checks nothing: a server without
    /// authentication, or the local operator, who works on the store
    /// directly and counts as an admin.
    pub level: Option<Access>,
    /// The client's address; `None` for the local operator.
    pub client: Option<IpAddr>,
    pub via: Via,
}

impl Actor {
    /// The local operator running a command, audited as `operator:<user>`.
    pub fn operator(user: &str) -> Self {
        Actor {
            identity: Some(format!("operator:{user}")),
            level: None,
            client: None,
            via: Via::Cli,
        }
    }

    /// The identity's name when authentication vouched for it: what a
    /// lock records as its owner and history as the writer's identity.
    /// The local operator is audited by name but not recorded so.
    fn authenticated(&self) -> Option<&str> {
        self.level.and(self.identity.as_deref())
    }

    /// Whether the actor may do what needs `needed`: always when nothing
    /// is checked.
    fn allows(&self, state: &StateRef, needed: Access, verb: &str) -> Decision {
        match self.level {
            None => Decision::Allow(Access::Admin),
            level => decide::level_allows(self.name(), level, state, needed, verb),
        }
    }

    fn name(&self) -> &str {
        self.identity.as_deref().unwrap_or("anonymous")
    }
}

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The state rules refused, or the store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The actor may not do this (already audited as `denied`).
    #[error("{0}")]
    Forbidden(String),
}

/// The operations, over one set of states, recording to one audit log.
#[derive(Clone, Copy)]
pub struct Ops<'a> {
    states: &'a States,
    audit: &'a Audit,
    /// The server's counters; `None` for operator commands, which serve
    /// no `/metrics`.
    metrics: Option<&'a Metrics>,
    /// Where events go to be notified; `None` when no destination is
    /// configured.
    notifier: Option<&'a Notifier>,
}

impl<'a> Ops<'a> {
    pub fn new(states: &'a States, audit: &'a Audit, metrics: Option<&'a Metrics>) -> Self {
        Ops {
            states,
            audit,
            metrics,
            notifier: None,
        }
    }

    /// These operations, with their events notified through `notifier`.
    pub fn notifying(self, notifier: Option<&'a Notifier>) -> Self {
        Ops { notifier, ..self }
    }

    /// Records `event`, done by `actor`, in the audit log and the metrics,
    /// and puts it in the outbox of the destinations that want it, before
    /// the operation answers.
    async fn emit(&self, event: Event, actor: &Actor) {
        if let Some(metrics) = self.metrics {
            match &event {
                Event::ForceUnlock { .. } => metrics.force_unlock(),
                Event::Denied {
                    credentials: true, ..
                } => metrics.auth_failure(),
                _ => {}
            }
        }
        self.audit.record(&event.entry(actor));
        if let Some(notifier) = self.notifier
            && let Some(record) = event.notification(actor)
        {
            match &event {
                // Noticed on every read of a state its keys do not open:
                // told once an hour per state and reason.
                Event::KeyUnusable { state, reason } => {
                    notifier.notice(format!("{state}\0{reason}"), record).await
                }
                _ => notifier.record(record).await,
            }
        }
    }

    /// Refuses `actor` on `state` with `reason` (403), audited; `protected`
    /// when the reason is the state's protection (`auth.protected`).
    pub async fn forbid(
        &self,
        actor: &Actor,
        state: &StateRef,
        reason: String,
        protected: bool,
    ) -> OpError {
        self.emit(
            Event::Denied {
                status: 403,
                target: Target::State(state.clone()),
                reason: reason.clone(),
                credentials: false,
                protected,
            },
            actor,
        )
        .await;
        OpError::Forbidden(reason)
    }

    /// Records that no configured encryption key opens `state` (a read or
    /// a change of it failed with `error`, which is returned): a key was
    /// removed, replaced or mistyped. Other errors pass unrecorded.
    pub async fn check_keys(
        &self,
        state: &StateRef,
        actor: &Actor,
        error: StateError,
    ) -> StateError {
        if let StateError::Store(e) = &error
            && let Some(reason) = crate::state::seal::key_unusable(e)
        {
            let event = Event::KeyUnusable {
                state: state.clone(),
                reason: reason.to_string(),
            };
            self.emit(event, actor).await;
        }
        error
    }

    /// Records credentials that did not authenticate (answered `status`,
    /// 401 or 429) at `target`, and counts them.
    pub async fn refuse_credentials(
        &self,
        actor: &Actor,
        target: Target,
        status: u16,
        reason: String,
    ) {
        self.emit(
            Event::Denied {
                status,
                target,
                reason,
                credentials: true,
                protected: false,
            },
            actor,
        )
        .await;
    }

    /// Records a state copied in by a migration from `source_workspace`.
    pub async fn migrated(&self, state: &StateRef, actor: &Actor, source_workspace: &str) {
        self.emit(
            Event::Migrate {
                state: state.clone(),
                source_workspace: source_workspace.to_string(),
            },
            actor,
        )
        .await;
    }

    /// Turns a refusal into an audited [`OpError::Forbidden`].
    async fn check(
        &self,
        actor: &Actor,
        state: &StateRef,
        decision: Decision,
    ) -> Result<(), OpError> {
        match decision {
            Decision::Allow(_) => Ok(()),
            Decision::Deny(reason) => Err(self.forbid(actor, state, reason, false).await),
            Decision::Protected(reason) => Err(self.forbid(actor, state, reason, true).await),
        }
    }
}

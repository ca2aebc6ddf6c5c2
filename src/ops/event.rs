//! What an operation did, as a typed [`Event`], and the one mapping from an
//! event and its [`Actor`] to an audit line. Every line of an action has
//! the same fields whichever entry point it came through: the state
//! (`state`, `workspace`), who (`identity`, absent without
//! authentication), from where (`client`: an address, or `local` for the
//! operator) and how (`via`: `http`, `dashboard` or `cli`), then the
//! action's own fields. The same event, with the same actor, is what a
//! notification says ([`Event::notification`]).

use serde_json::{Value, json};

use super::Actor;
use crate::audit::Entry;
use crate::notify::{ActorId, Kind, Record, StateId};
use crate::state::StateRef;

/// What a refusal was about.
#[derive(Debug, Clone)]
pub enum Target {
    /// A state.
    State(StateRef),
    /// A dashboard URL, refused before any state was named.
    Url(String),
}

/// Something an operation did, or refused, that the audit log records.
#[derive(Debug, Clone)]
pub enum Event {
    /// A client's write became the current state.
    Write {
        state: StateRef,
        serial: Option<u64>,
        bytes: u64,
        previous_serial: Option<u64>,
        /// The history version, where history is kept.
        version: Option<u64>,
    },
    /// A client's write was refused by the rules (stale, another's lock,
    /// not a state).
    WriteRefused {
        state: StateRef,
        serial: Option<u64>,
        bytes: u64,
        reason: String,
    },
    /// A state was deleted (its history remains).
    Delete { state: StateRef },
    /// A lock was taken (or a LOCK with the holder's ID retried).
    Lock { state: StateRef, lock_id: String },
    /// The holder released its lock.
    Unlock { state: StateRef, lock_id: String },
    /// A lock was released without its ID, whoever held it.
    ForceUnlock {
        state: StateRef,
        lock_id: String,
        /// The holder's LockInfo `Who`.
        previous_holder: String,
    },
    /// An old version became the current state again.
    Restore {
        state: StateRef,
        restored_version: u64,
        /// Forced past a held lock.
        force: bool,
        /// The history version the restore made, where history is kept.
        version: Option<u64>,
    },
    /// An operator stored a file as the current state.
    Push {
        state: StateRef,
        force: bool,
        /// The history version the push made, where history is kept.
        version: Option<u64>,
    },
    /// The history of a deleted state was removed.
    Purge { state: StateRef, versions: usize },
    /// A workspace of another backend was copied in.
    Migrate {
        state: StateRef,
        source_workspace: String,
    },
    /// A request was refused: bad credentials (401, 429) or not allowed
    /// (403).
    Denied {
        status: u16,
        target: Target,
        reason: String,
        /// Refused for its credentials, not its permissions.
        credentials: bool,
        /// Refused because the state is protected (`auth.protected`) and
        /// the identity may not change it.
        protected: bool,
    },
    /// No configured encryption key opens a state: a read or a change of
    /// it failed.
    KeyUnusable { state: StateRef, reason: String },
}

impl Event {
    /// The audit line's `audit` field.
    pub fn action(&self) -> &'static str {
        match self {
            Event::Write { .. } => "write",
            Event::WriteRefused { .. } => "write_refused",
            Event::Delete { .. } => "delete",
            Event::Lock { .. } => "lock",
            Event::Unlock { .. } => "unlock",
            Event::ForceUnlock { .. } => "force_unlock",
            Event::Restore { .. } => "restore",
            Event::Push { .. } => "push",
            Event::Purge { .. } => "purge",
            Event::Migrate { .. } => "migrate",
            Event::Denied { .. } => "denied",
            Event::KeyUnusable { .. } => "key_unusable",
        }
    }

    /// What the event is about.
    fn target(&self) -> Target {
        match self {
            Event::Write { state, .. }
            | Event::WriteRefused { state, .. }
            | Event::Delete { state }
            | Event::Lock { state, .. }
            | Event::Unlock { state, .. }
            | Event::ForceUnlock { state, .. }
            | Event::Restore { state, .. }
            | Event::Push { state, .. }
            | Event::Purge { state, .. }
            | Event::Migrate { state, .. }
            | Event::KeyUnusable { state, .. } => Target::State(state.clone()),
            Event::Denied { target, .. } => target.clone(),
        }
    }

    /// The action's own fields, after the common ones.
    fn own_fields(&self) -> Vec<(&'static str, Value)> {
        match self {
            Event::Write {
                serial,
                bytes,
                previous_serial,
                version,
                ..
            } => vec![
                ("serial", json!(serial)),
                ("bytes", json!(bytes)),
                ("previous_serial", json!(previous_serial)),
                ("version", json!(version)),
            ],
            Event::WriteRefused {
                serial,
                bytes,
                reason,
                ..
            } => vec![
                ("serial", json!(serial)),
                ("bytes", json!(bytes)),
                ("reason", json!(reason)),
            ],
            Event::Delete { .. } => vec![],
            Event::Lock { lock_id, .. } | Event::Unlock { lock_id, .. } => {
                vec![("lock_id", json!(lock_id))]
            }
            Event::ForceUnlock {
                lock_id,
                previous_holder,
                ..
            } => vec![
                ("lock_id", json!(lock_id)),
                ("previous_holder", json!(previous_holder)),
            ],
            Event::Restore {
                restored_version,
                force,
                version,
                ..
            } => vec![
                ("restored_version", json!(restored_version)),
                ("force", json!(force)),
                ("version", json!(version)),
            ],
            Event::Push { force, version, .. } => {
                vec![("force", json!(force)), ("version", json!(version))]
            }
            Event::Purge { versions, .. } => vec![("versions", json!(versions))],
            Event::Migrate {
                source_workspace, ..
            } => vec![("source_workspace", json!(source_workspace))],
            Event::Denied { status, reason, .. } => {
                vec![("status", json!(status)), ("reason", json!(reason))]
            }
            Event::KeyUnusable { reason, .. } => vec![("reason", json!(reason))],
        }
    }

    /// This event, done by `actor`, as a notification; `None` for the
    /// events nobody is notified of (a migration, a refusal of
    /// credentials or of a permission other than a state's protection).
    pub fn notification(&self, actor: &Actor) -> Option<Record> {
        let Target::State(state) = self.target() else {
            return None;
        };
        let (kind, version, serial) = match self {
            Event::Write {
                version, serial, ..
            } => (Kind::Written, *version, *serial),
            Event::Push { version, .. } => (Kind::Written, *version, None),
            Event::WriteRefused { serial, .. } => (Kind::WriteRefused, None, *serial),
            Event::Denied {
                protected: true, ..
            } => (Kind::WriteRefused, None, None),
            Event::Restore { version, .. } => (Kind::Restored, *version, None),
            Event::Delete { .. } => (Kind::Deleted, None, None),
            Event::Purge { .. } => (Kind::Purged, None, None),
            Event::Lock { .. } => (Kind::LockTaken, None, None),
            Event::Unlock { .. } => (Kind::LockReleased, None, None),
            Event::ForceUnlock { .. } => (Kind::LockForceReleased, None, None),
            Event::KeyUnusable { .. } => (Kind::KeyUnusable, None, None),
            Event::Migrate { .. } | Event::Denied { .. } => return None,
        };
        let mut record = Record::new(
            kind,
            StateId {
                key: state.key().to_string(),
                workspace: state.workspace().to_string(),
            },
            ActorId {
                identity: actor.identity.clone(),
                client: actor
                    .client
                    .map_or_else(|| "local".to_string(), |c| c.to_string()),
                via: actor.via.name().to_string(),
            },
        );
        record.version = version;
        record.serial = serial;
        record = match self {
            Event::Write { .. } => record.with("operation", "write"),
            Event::Push { force, .. } => record.with("operation", "push").with("force", *force),
            Event::WriteRefused { reason, .. } => record
                .with("refusal", refusal(reason))
                .with("reason", reason.clone()),
            Event::Denied { reason, .. } => record
                .with("refusal", "protected")
                .with("reason", reason.clone()),
            _ => record,
        };
        for (name, value) in self.own_fields() {
            if !matches!(name, "serial" | "version") && !record.details.contains_key(name) {
                record = record.with(name, value);
            }
        }
        Some(record)
    }

    /// This event, done by `actor`, as an audit line.
    pub fn entry<'a>(&'a self, actor: &'a Actor) -> Recorded<'a> {
        Recorded { event: self, actor }
    }
}

/// An event with its actor: what the audit log writes.
pub struct Recorded<'a> {
    event: &'a Event,
    actor: &'a Actor,
}

impl Entry for Recorded<'_> {
    fn action(&self) -> &'static str {
        self.event.action()
    }

    fn fields(&self) -> Vec<(&'static str, Value)> {
        let actor = self.actor;
        let client = actor
            .client
            .map_or_else(|| "local".to_string(), |c| c.to_string());
        let mut fields = match self.event.target() {
            Target::State(state) => vec![
                ("state", json!(state.key())),
                ("workspace", json!(state.workspace())),
            ],
            Target::Url(url) => vec![("url", json!(url))],
        };
        fields.extend([
            ("identity", json!(actor.identity)),
            ("client", json!(client)),
            ("via", json!(actor.via.name())),
        ]);
        fields.extend(self.event.own_fields());
        fields
    }
}

/// Why a write was refused, in one word, from the state rules' reason.
fn refusal(reason: &str) -> &'static str {
    if reason.starts_with("lineage mismatch") {
        "lineage"
    } else if reason.starts_with("stale write") || reason.starts_with("conflicting write") {
        "stale"
    } else if reason.contains("locked by another client") {
        "locked"
    } else {
        "invalid"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Via;

    fn keys(event: &Event, actor: &Actor) -> Vec<&'static str> {
        let mut keys: Vec<_> = event
            .entry(actor)
            .fields()
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, _)| k)
            .collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_force_unlock_has_one_shape_whatever_the_entry_point() {
        let event = Event::ForceUnlock {
            state: StateRef::parse("a", Some("dev")).unwrap(),
            lock_id: "L1".into(),
            previous_holder: "ann@host".into(),
        };
        let http = Actor {
            identity: Some("user:root".into()),
            level: Some(crate::auth::Access::Admin),
            client: Some("127.0.0.1".parse().unwrap()),
            via: Via::Http,
        };
        let dashboard = Actor {
            via: Via::Dashboard,
            ..http.clone()
        };
        let operator = Actor::operator("root");
        let want = [
            "client",
            "identity",
            "lock_id",
            "previous_holder",
            "state",
            "via",
            "workspace",
        ];
        for actor in [&http, &dashboard, &operator] {
            assert_eq!(keys(&event, actor), want, "{actor:?}");
        }
        let fields: std::collections::HashMap<_, _> =
            event.entry(&operator).fields().into_iter().collect();
        assert_eq!(fields["client"], "local");
        assert_eq!(fields["via"], "cli");
        assert_eq!(fields["identity"], "operator:root");
        assert_eq!(event.action(), "force_unlock");
    }

    #[test]
    fn each_notified_event_has_its_kind_and_the_rest_none() {
        let state = StateRef::parse("prod/net", Some("blue")).unwrap();
        let actor = Actor {
            identity: Some("token:ci".into()),
            level: Some(crate::auth::Access::Write),
            client: Some("10.0.0.7".parse().unwrap()),
            via: Via::Http,
        };
        let denied = |protected| Event::Denied {
            status: 403,
            target: Target::State(state.clone()),
            reason: "prod/net is protected by the rule prod/**".into(),
            credentials: false,
            protected,
        };
        let cases = [
            (
                Event::WriteRefused {
                    state: state.clone(),
                    serial: Some(3),
                    bytes: 10,
                    reason: "lineage mismatch: the stored state has lineage a".into(),
                },
                Some("state.write_refused"),
            ),
            (denied(true), Some("state.write_refused")),
            (denied(false), None),
            (
                Event::Migrate {
                    state: state.clone(),
                    source_workspace: "default".into(),
                },
                None,
            ),
            (
                Event::Restore {
                    state: state.clone(),
                    restored_version: 2,
                    force: false,
                    version: Some(9),
                },
                Some("state.restored"),
            ),
            (
                Event::Push {
                    state: state.clone(),
                    force: true,
                    version: Some(4),
                },
                Some("state.written"),
            ),
        ];
        for (event, kind) in &cases {
            let record = event.notification(&actor);
            assert_eq!(record.as_ref().map(|r| r.kind.name()), *kind, "{event:?}");
        }
        let refused = cases[0].0.notification(&actor).unwrap();
        assert_eq!(refused.details["refusal"], "lineage");
        assert_eq!(refused.serial, Some(3));
        assert_eq!(refused.state.workspace, "blue");
        assert_eq!(refused.actor.client, "10.0.0.7");
        let protected = cases[1].0.notification(&actor).unwrap();
        assert_eq!(protected.details["refusal"], "protected");
        assert!(protected.details.get("status").is_some());
        let restored = cases[4].0.notification(&actor).unwrap();
        assert_eq!(restored.version, Some(9));
        assert_eq!(restored.details["restored_version"], 2);
        let pushed = cases[5].0.notification(&actor).unwrap();
        assert_eq!(pushed.details["operation"], "push");
    }
}

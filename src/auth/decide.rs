//! Whether an authenticated identity may do something to a state: one pure
//! decision, allow or deny with a one-line reason, that the state URLs and
//! the dashboard both ask, so the two cannot drift apart. It reads only
//! the identity's grants, the protected key patterns and, for a lock, who
//! took it; recording a refusal and answering it belong to the caller.

use super::{Access, Auth, Identity};
use crate::state::StateRef;

/// The answer to "may this identity do that?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; carries the identity's level on the state, which decides
    /// what a read shows (the `outputs` view) and who may use others' locks.
    Allow(Access),
    /// Refused (403), with the reason to show.
    Deny(String),
    /// Refused (403) because the state is protected (`auth.protected`)
    /// and the identity may not change it, with the reason to show.
    Protected(String),
}

/// Whether `identity` may `verb` `state`, which needs `needed`: its grants
/// must reach that level and, for a change (write and above), every
/// protected pattern covering the state must let it.
pub fn decide(
    auth: &Auth,
    identity: &Identity,
    state: &StateRef,
    needed: Access,
    verb: &str,
) -> Decision {
    let level = match level_allows(&identity.name, identity.access(state), state, needed, verb) {
        Decision::Allow(level) => level,
        deny => return deny,
    };
    if needed >= Access::Write
        && let Some(why) = auth.protection(identity, state)
    {
        return Decision::Protected(why);
    }
    Decision::Allow(level)
}

/// Whether `level` (an identity's level on `state`, `None` for no grant)
/// reaches `needed` for `verb`; `name` is the identity, for the reason.
pub fn level_allows(
    name: &str,
    level: Option<Access>,
    state: &StateRef,
    needed: Access,
    verb: &str,
) -> Decision {
    match level {
        Some(level) if level >= needed => Decision::Allow(level),
        _ => Decision::Deny(format!(
            "{name} may not {verb} {state}: that needs {} access",
            needed.name()
        )),
    }
}

/// Whether `name`, at `level`, may act under the lock `lock_id` on `state`
/// that `owner` took (`None`: taken without authentication, or by another
/// tool): only the identity that took it, or an admin, may.
pub fn lock_use(
    name: &str,
    level: Access,
    state: &StateRef,
    lock_id: &str,
    owner: Option<&str>,
) -> Decision {
    if level >= Access::Admin {
        return Decision::Allow(level);
    }
    match owner {
        Some(owner) if owner == name => Decision::Allow(level),
        Some(owner) => Decision::Deny(format!(
            "the lock {lock_id} on {state} was taken by {owner}; only they or an admin may use it"
        )),
        None => Decision::Deny(format!(
            "the lock {lock_id} on {state} was not taken through stategate's authentication; only an admin may use it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(key: &str) -> StateRef {
        StateRef::parse(key, None).unwrap()
    }

    #[test]
    fn a_level_below_the_need_is_refused_naming_both() {
        let s = st("a");
        assert_eq!(
            level_allows("user:ann", Some(Access::Read), &s, Access::Read, "read"),
            Decision::Allow(Access::Read)
        );
        assert_eq!(
            level_allows("user:ann", Some(Access::Admin), &s, Access::Write, "write"),
            Decision::Allow(Access::Admin)
        );
        assert_eq!(
            level_allows(
                "user:ann",
                Some(Access::Write),
                &s,
                Access::Admin,
                "restore"
            ),
            Decision::Deny("user:ann may not restore a: that needs admin access".into())
        );
        assert!(matches!(
            level_allows("user:ann", None, &s, Access::Outputs, "read"),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn a_lock_is_used_by_its_owner_or_an_admin() {
        let s = st("a");
        let use_as = |name, level, owner| lock_use(name, level, &s, "L1", owner);
        assert_eq!(
            use_as("user:ann", Access::Write, Some("user:ann")),
            Decision::Allow(Access::Write)
        );
        assert_eq!(
            use_as("user:root", Access::Admin, Some("user:ann")),
            Decision::Allow(Access::Admin)
        );
        assert_eq!(
            use_as("user:bob", Access::Write, Some("user:ann")),
            Decision::Deny(
                "the lock L1 on a was taken by user:ann; only they or an admin may use it".into()
            )
        );
        assert!(matches!(
            use_as("user:bob", Access::Write, None),
            Decision::Deny(r) if r.contains("only an admin")
        ));
    }
}

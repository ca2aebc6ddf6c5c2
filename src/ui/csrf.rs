//! CSRF tokens for the dashboard's forms: an HMAC-SHA256, under a key
//! every replica shares (`ui.csrf_key`), of the identity, the action, the
//! state and an expiry time. Nothing is stored, so any replica checks a
//! token another one issued, and a token works only for the identity,
//! action and state it was made for, for two hours.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::protocol::ProtocolError;
use crate::state::StateRef;

/// How long a form stays valid.
const LIFETIME_SECS: i64 = 2 * 3600;

/// Issues and checks tokens under one key.
pub struct Csrf {
    key: Vec<u8>,
}

impl Csrf {
    /// Tokens under `key`, or under a random key made now.
    pub fn new(key: Option<Vec<u8>>) -> Result<Self, getrandom::Error> {
        let key = match key {
            Some(k) => k,
            None => {
                let mut k = vec![0u8; 32];
                getrandom::getrandom(&mut k)?;
                k
            }
        };
        Ok(Csrf { key })
    }

    fn mac(&self, identity: &str, action: &str, state: &StateRef, expires: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        // Each field is length-prefixed, so no two inputs run together.
        for field in [
            "stategate-csrf-v1",
            identity,
            action,
            state.key(),
            state.workspace(),
            &expires.to_string(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }

    /// A token for `identity` to do `action` on `state`.
    pub fn token(&self, identity: &str, action: &str, state: &StateRef) -> String {
        self.token_at(
            identity,
            action,
            state,
            OffsetDateTime::now_utc().unix_timestamp(),
        )
    }

    fn token_at(&self, identity: &str, action: &str, state: &StateRef, now: i64) -> String {
        let expires = now + LIFETIME_SECS;
        let tag = self
            .mac(identity, action, state, expires)
            .finalize()
            .into_bytes();
        format!("{expires}.{}", crate::state::head::hex(&tag))
    }

    /// Checks a token from a form; 403 when it is missing, wrong or old.
    pub fn check(
        &self,
        token: Option<&str>,
        identity: &str,
        action: &str,
        state: &StateRef,
    ) -> Result<(), ProtocolError> {
        self.check_at(
            token,
            identity,
            action,
            state,
            OffsetDateTime::now_utc().unix_timestamp(),
        )
    }

    fn check_at(
        &self,
        token: Option<&str>,
        identity: &str,
        action: &str,
        state: &StateRef,
        now: i64,
    ) -> Result<(), ProtocolError> {
        let refuse = |why: &str| {
            ProtocolError::Forbidden(format!(
                "the form's CSRF token {why}; reload the page and try again"
            ))
        };
        let (expires, tag) = token
            .and_then(|t| t.split_once('.'))
            .ok_or_else(|| refuse("is missing"))?;
        let expires: i64 = expires.parse().map_err(|_| refuse("is malformed"))?;
        let tag = decode_hex(tag).ok_or_else(|| refuse("is malformed"))?;
        if expires < now {
            return Err(refuse("has expired"));
        }
        self.mac(identity, action, state, expires)
            .verify_slice(&tag)
            .map_err(|_| refuse("does not match"))
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_identity_action_state_and_time() {
        let csrf = Csrf::new(Some(b"k".repeat(32))).unwrap();
        let a = StateRef::parse("a", None).unwrap();
        let b = StateRef::parse("a", Some("dev")).unwrap();
        let t = csrf.token_at("user:ann", "restore", &a, 1000);
        assert!(
            csrf.check_at(Some(&t), "user:ann", "restore", &a, 1000)
                .is_ok()
        );
        // Another replica with the same key accepts it.
        let other = Csrf::new(Some(b"k".repeat(32))).unwrap();
        assert!(
            other
                .check_at(Some(&t), "user:ann", "restore", &a, 1001)
                .is_ok()
        );
        for (identity, action, state) in [
            ("user:bob", "restore", &a),
            ("user:ann", "release", &a),
            ("user:ann", "restore", &b),
        ] {
            assert!(
                csrf.check_at(Some(&t), identity, action, state, 1000)
                    .is_err()
            );
        }
        assert!(
            csrf.check_at(
                Some(&t),
                "user:ann",
                "restore",
                &a,
                1000 + LIFETIME_SECS + 1
            )
            .is_err()
        );
        assert!(
            csrf.check_at(None, "user:ann", "restore", &a, 1000)
                .is_err()
        );
        assert!(
            csrf.check_at(Some("x.zz"), "user:ann", "restore", &a, 1000)
                .is_err()
        );
        let forged = t.replacen(&(1000 + LIFETIME_SECS).to_string(), "99999999", 1);
        assert!(
            csrf.check_at(Some(&forged), "user:ann", "restore", &a, 1000)
                .is_err()
        );
        let fresh = Csrf::new(None).unwrap();
        assert!(
            fresh
                .check_at(Some(&t), "user:ann", "restore", &a, 1000)
                .is_err()
        );
    }
}

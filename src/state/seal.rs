//! Encryption at rest: every state body and every kept version is sealed
//! with AES-256-GCM before it reaches the store, whatever the store is.
//!
//! A sealed object is a small header and the ciphertext:
//!
//! ```text
//! "SGSL" | format (1 byte, 1) | key id length (1 byte) | key id | nonce (12 bytes) | ciphertext and tag
//! ```
//!
//! The nonce is random and fresh for every object. The associated data is
//! the header followed by the state's *logical key*, the store key of the
//! state object, shared by the state and all its history versions: a
//! version kept by hard link or server-side copy still opens, and a
//! restore copies bytes that open where they land, but a sealed body moved
//! to another state does not open.
//!
//! Locks, leases and history records stay clear: they hold no secret, and
//! locks stay readable by Terraform's native backends. Which store keys
//! hold bodies is decided by [`logical_key`]: a state object, or a kept
//! version under the history prefix.
//!
//! The first key of `encryption.keys` seals; every listed key opens, so
//! keys rotate by putting the new one first and running `stategate rekey`.
//! A body found unsealed (a store being adopted) is served with a warning,
//! or refused with `require_sealed: true`. A body that does not open names
//! the key it was sealed with and answers 503: Terraform gets an error,
//! never garbage, and nothing is overwritten because every write reads the
//! current state first.

use std::sync::Arc;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;

use super::history::HISTORY_PREFIX;
use super::key::{LOCK_SUFFIX, RESERVED_PREFIX};
use crate::settings::{ConfigError, EncryptionSettings, KeySource};
use crate::stores::{Capabilities, Condition, Entry, Object, Payload, Store, StoreError, Version};

/// The first bytes of every sealed object (a state body starts with `{`).
const MAGIC: &[u8; 4] = b"SGSL";
/// The format this code writes.
const FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of a key in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// One key, by id.
struct Key {
    id: String,
    cipher: Aes256Gcm,
}

/// The configured keys: the first seals, all open.
pub struct Keyring {
    keys: Vec<Key>,
    require_sealed: bool,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring")
            .field("keys", &ids)
            .field("require_sealed", &self.require_sealed)
            .finish()
    }
}

/// Decodes one key: base64 of exactly 32 bytes, surrounding space ignored.
pub fn decode_key(text: &str) -> Result<[u8; KEY_LEN], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "is not base64".to_string())?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("holds {} bytes, not {KEY_LEN}", bytes.len()))
}

/// A new random key, base64, as `stategate gen-key` writes it.
pub fn generate_key() -> Result<String, String> {
    let mut key = [0u8; KEY_LEN];
    getrandom::getrandom(&mut key).map_err(|e| format!("no randomness: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

impl Keyring {
    /// Reads every key of the section; a missing or malformed key stops
    /// start-up naming it. `env` looks up environment variables.
    pub fn load(
        settings: &EncryptionSettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        for (i, k) in settings.keys.iter().enumerate() {
            let at = format!("encryption.keys[{i}]");
            let (text, from) = match &k.source {
                KeySource::File(path) => (
                    std::fs::read_to_string(path).map_err(|e| {
                        ConfigError::invalid(
                            &format!("{at}.file"),
                            format!("key `{}`: cannot read {}: {e}", k.id, path.display()),
                        )
                    })?,
                    format!("{at}.file"),
                ),
                KeySource::Env(var) => (
                    env(var).ok_or_else(|| {
                        ConfigError::invalid(
                            &format!("{at}.env"),
                            format!("key `{}`: the environment variable {var} is not set", k.id),
                        )
                    })?,
                    format!("{at}.env"),
                ),
            };
            let key = decode_key(&text)
                .map_err(|why| ConfigError::invalid(&from, format!("key `{}` {why}", k.id)))?;
            keys.push(Key {
                id: k.id.clone(),
                cipher: Aes256Gcm::new_from_slice(&key).expect("32-byte key"),
            });
        }
        if keys.is_empty() {
            return Err(ConfigError::invalid("encryption.keys", "lists no key"));
        }
        Ok(Keyring {
            keys,
            require_sealed: settings.require_sealed,
        })
    }

    /// A keyring from raw keys, first one sealing (tests, tools).
    pub fn from_keys(keys: &[(&str, [u8; KEY_LEN])], require_sealed: bool) -> Self {
        Keyring {
            keys: keys
                .iter()
                .map(|(id, k)| Key {
                    id: id.to_string(),
                    cipher: Aes256Gcm::new_from_slice(k).expect("32-byte key"),
                })
                .collect(),
            require_sealed,
        }
    }

    /// How many bytes sealing under the first key adds to a body.
    pub fn overhead(&self) -> u64 {
        (MAGIC.len() + 2 + self.keys[0].id.len() + NONCE_LEN + TAG_LEN) as u64
    }

    /// The id of the key that seals.
    pub fn sealing_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plain` for the state whose object key is `logical`.
    pub fn seal(&self, logical: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce)
            .map_err(|e| StoreError::unavailable(format!("sealing: no randomness: {e}")))?;
        let mut out = Vec::with_capacity(plain.len() + 6 + key.id.len() + NONCE_LEN + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.push(key.id.len() as u8);
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&nonce);
        let header_len = out.len();
        let aad = associated_data(&out, logical);
        let mut body = plain.to_vec();
        key.cipher
            .encrypt_in_place(&Nonce::from(nonce), &aad, &mut body)
            .map_err(|_| StoreError::unavailable("sealing failed"))?;
        out.truncate(header_len);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what the store holds at `store_key` (a state body of the state
    /// whose object key is `logical`): the plaintext, or a clear reason.
    /// Unsealed bytes come back as they are unless sealing is required.
    pub fn open(
        &self,
        store_key: &str,
        logical: &str,
        stored: &[u8],
    ) -> Result<Opened, StoreError> {
        self.open_as(store_key, logical, stored, self.require_sealed)
    }

    fn open_as(
        &self,
        store_key: &str,
        logical: &str,
        stored: &[u8],
        require_sealed: bool,
    ) -> Result<Opened, StoreError> {
        let Some(header) = Header::parse(stored) else {
            // An unsealed state is a JSON object; anything else here is a
            // damaged sealed body, never bytes to hand to Terraform.
            let first = stored.iter().find(|b| !b.is_ascii_whitespace());
            if first != Some(&b'{') {
                return Err(tampered(store_key, None));
            }
            if require_sealed {
                return Err(StoreError::ConfigInvalid {
                    setting: "encryption.require_sealed",
                    reason: format!(
                        "{store_key} is not sealed, and encryption.require_sealed refuses it \
                         (run `stategate rekey` to seal it)"
                    ),
                });
            }
            return Ok(Opened::Clear);
        };
        let Some(key) = self.keys.iter().find(|k| k.id == header.key_id) else {
            return Err(StoreError::ConfigInvalid {
                setting: "encryption.keys",
                reason: format!(
                    "{store_key} is sealed with key `{}`, which encryption.keys does not list",
                    header.key_id
                ),
            });
        };
        let aad = associated_data(&stored[..header.len], logical);
        let mut body = stored[header.len..].to_vec();
        key.cipher
            .decrypt_in_place(&Nonce::from(header.nonce), &aad, &mut body)
            .map_err(|_| tampered(store_key, Some(&key.id)))?;
        Ok(Opened::Sealed {
            plain: body,
            current_key: key.id == self.keys[0].id,
        })
    }
}

/// What opening a stored body found.
pub enum Opened {
    /// The body is not sealed: use the stored bytes as they are.
    Clear,
    /// The plaintext, and whether the sealing key sealed it.
    Sealed { plain: Vec<u8>, current_key: bool },
}

fn tampered(store_key: &str, key_id: Option<&str>) -> StoreError {
    StoreError::unavailable(format!(
        "{store_key} does not open{}: it was changed after sealing, or sealed for another state",
        key_id
            .map(|id| format!(" with key `{id}`"))
            .unwrap_or_default()
    ))
}

fn associated_data(header: &[u8], logical: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + logical.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(logical.as_bytes());
    aad
}

/// The header of a sealed object.
struct Header<'a> {
    key_id: &'a str,
    nonce: [u8; NONCE_LEN],
    /// Its length in bytes, where the ciphertext starts.
    len: usize,
}

impl<'a> Header<'a> {
    fn parse(stored: &'a [u8]) -> Option<Self> {
        let rest = stored.strip_prefix(MAGIC)?;
        let (&format, rest) = rest.split_first()?;
        let (&id_len, rest) = rest.split_first()?;
        if format != FORMAT || rest.len() < id_len as usize + NONCE_LEN + TAG_LEN {
            return None;
        }
        let key_id = std::str::from_utf8(&rest[..id_len as usize]).ok()?;
        let nonce = rest[id_len as usize..id_len as usize + NONCE_LEN]
            .try_into()
            .ok()?;
        Some(Header {
            key_id,
            nonce,
            len: MAGIC.len() + 2 + id_len as usize + NONCE_LEN,
        })
    }
}

/// The state a store key holds a body of: the state object's own key, or
/// that of the state a kept version belongs to. `None` for everything that
/// stays clear (locks, leases, history records, probes).
pub fn logical_key(store_key: &str) -> Option<&str> {
    if let Some(rest) = store_key.strip_prefix(HISTORY_PREFIX) {
        let (state, file) = rest.rsplit_once('/')?;
        let number = file.strip_suffix(".tfstate")?;
        return (!number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())).then_some(state);
    }
    if store_key.starts_with(RESERVED_PREFIX) || store_key.ends_with(LOCK_SUFFIX) {
        return None;
    }
    Some(store_key)
}

/// A store whose state bodies are sealed: every other object passes
/// through unchanged.
pub struct SealedStore {
    inner: Arc<dyn Store>,
    keys: Arc<Keyring>,
}

impl SealedStore {
    /// Seals the state bodies of `inner` with `keys`.
    pub fn new(inner: Arc<dyn Store>, keys: Arc<Keyring>) -> Self {
        SealedStore { inner, keys }
    }

    fn open_object(&self, key: &str, obj: Object) -> Result<Object, StoreError> {
        let Some(logical) = logical_key(key) else {
            return Ok(obj);
        };
        match self.keys.open(key, logical, &obj.body)? {
            Opened::Clear => {
                tracing::warn!(
                    key,
                    "read an unsealed state body; `stategate rekey` seals it"
                );
                Ok(obj)
            }
            Opened::Sealed { plain, .. } => Ok(Object {
                body: Bytes::from(plain),
                version: obj.version,
            }),
        }
    }

    fn seal_body(&self, key: &str, body: &[u8]) -> Result<Option<Bytes>, StoreError> {
        match logical_key(key) {
            Some(logical) => Ok(Some(Bytes::from(self.keys.seal(logical, body)?))),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Store for SealedStore {
    fn describe(&self) -> String {
        format!(
            "{} (state bodies sealed with key `{}`)",
            self.inner.describe(),
            self.keys.sealing_id()
        )
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn operation_timeout(&self) -> std::time::Duration {
        self.inner.operation_timeout()
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        match self.inner.get(key).await? {
            Some(obj) => self.open_object(key, obj).map(Some),
            None => Ok(None),
        }
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<Version, StoreError> {
        let body = self.seal_body(key, &body)?.unwrap_or(body);
        self.inner.put(key, body, condition).await
    }

    async fn delete(&self, key: &str, condition: Condition) -> Result<(), StoreError> {
        self.inner.delete(key, condition).await
    }

    async fn put_transient(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<Version, StoreError> {
        self.inner.put_transient(key, body, condition).await
    }

    async fn delete_transient(&self, key: &str, condition: Condition) -> Result<(), StoreError> {
        self.inner.delete_transient(key, condition).await
    }

    async fn native_lease(
        &self,
        key: &str,
        wait: std::time::Duration,
    ) -> Result<Option<crate::stores::keylock::KeyLock>, StoreError> {
        self.inner.native_lease(key, wait).await
    }

    /// Sizes of state bodies are those of the plaintext, as `get` returns
    /// it, for bodies sealed under the first key (any other body, sealed
    /// under an older key or not at all, until `stategate rekey`, is off by
    /// a few bytes; readers that compare sizes then read it once more).
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let overhead = self.keys.overhead();
        let mut entries = self.inner.list(prefix).await?;
        for entry in &mut entries {
            if logical_key(&entry.key).is_some() {
                entry.size = entry.size.saturating_sub(overhead);
            }
        }
        Ok(entries)
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        self.inner.stat(key).await
    }

    async fn snapshot(
        &self,
        from: &str,
        from_version: &Version,
        to: &str,
        body: &Payload,
    ) -> Result<(), StoreError> {
        // A store that copies in place keeps the sealed bytes, which open
        // under `to` too (same logical key); one that writes `body` must
        // get it sealed.
        let plain = body.to_bytes().await?;
        let sealed = self.seal_body(to, &plain)?.unwrap_or(plain);
        self.inner
            .snapshot(from, from_version, to, &Payload::Memory(sealed))
            .await
    }
}

/// What `stategate rekey` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    /// Bodies sealed anew under the first key.
    pub resealed: u64,
    /// Bodies found unsealed and sealed now.
    pub sealed: u64,
    /// Bodies already under the first key.
    pub current: u64,
    /// Bodies that changed while being re-sealed (a write landed): they
    /// were written by stategate, so under the first key already.
    pub raced: u64,
    /// Bytes read.
    pub bytes: u64,
}

/// Re-seals every state body and kept version of `store` under the first
/// key, in key order. Each object is rewritten only if it still has the
/// version that was read, so a concurrent write is never lost; a body
/// already under the first key is skipped, so a run that was interrupted
/// resumes where it stopped. `progress` is told each object's size.
pub async fn rekey(
    store: &dyn Store,
    keys: &Keyring,
    progress: &dyn Fn(u64, u64),
) -> Result<RekeyReport, StoreError> {
    let entries: Vec<Entry> = store
        .list("")
        .await?
        .into_iter()
        .filter(|e| logical_key(&e.key).is_some())
        .collect();
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let mut report = RekeyReport::default();
    for entry in &entries {
        let logical = logical_key(&entry.key).expect("filtered");
        let Some(obj) = store.get(&entry.key).await? else {
            continue;
        };
        report.bytes += obj.body.len() as u64;
        // Unsealed bodies are what rekey is for, required or not.
        let plain = match keys.open_as(&entry.key, logical, &obj.body, false)? {
            Opened::Sealed {
                current_key: true, ..
            } => {
                report.current += 1;
                progress(obj.body.len() as u64, total);
                continue;
            }
            Opened::Sealed { plain, .. } => {
                report.resealed += 1;
                plain
            }
            Opened::Clear => {
                report.sealed += 1;
                obj.body.to_vec()
            }
        };
        let sealed = Bytes::from(keys.seal(logical, &plain)?);
        match store
            .put(&entry.key, sealed, Condition::IfMatch(obj.version))
            .await
        {
            Ok(_) => {}
            Err(StoreError::PreconditionFailed) => report.raced += 1,
            Err(e) => return Err(e),
        }
        progress(obj.body.len() as u64, total);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; KEY_LEN] = [1; KEY_LEN];
    const K2: [u8; KEY_LEN] = [2; KEY_LEN];
    const STATE: &[u8] =
        br#"{"version":4,"serial":3,"lineage":"l","outputs":{"pw":{"value":"hunter2"}}}"#;

    #[test]
    fn sealed_bodies_round_trip_and_hide_the_plaintext() {
        let ring = Keyring::from_keys(&[("k1", K1)], false);
        let sealed = ring.seal("a/terraform.tfstate", STATE).unwrap();
        assert!(sealed.starts_with(b"SGSL\x01\x02k1"));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        let again = ring.seal("a/terraform.tfstate", STATE).unwrap();
        assert_ne!(sealed, again, "every seal has a fresh nonce");
        match ring.open("a/terraform.tfstate", "a/terraform.tfstate", &sealed) {
            Ok(Opened::Sealed { plain, current_key }) => {
                assert_eq!(plain, STATE);
                assert!(current_key);
            }
            _ => panic!("did not open"),
        }
    }

    #[test]
    fn one_flipped_byte_anywhere_is_refused() {
        let ring = Keyring::from_keys(&[("k1", K1)], false);
        let sealed = ring.seal("s", STATE).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = match ring.open("s", "s", &bad) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("byte {i} flipped and it still opened"),
            };
            assert!(
                err.contains("does not open") || err.contains("does not list"),
                "byte {i}: {err}"
            );
        }
        for cut in [0, 3, 10, sealed.len() - 1] {
            assert!(ring.open("s", "s", &sealed[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_body_moved_to_another_state_does_not_open() {
        let ring = Keyring::from_keys(&[("k1", K1)], false);
        let sealed = ring.seal("prod/terraform.tfstate", STATE).unwrap();
        let err = ring
            .open("dev/terraform.tfstate", "dev/terraform.tfstate", &sealed)
            .err()
            .expect("opened under another state");
        assert!(
            err.to_string().contains("sealed for another state"),
            "{err}"
        );
    }

    #[test]
    fn rotation_opens_old_keys_and_seals_with_the_first() {
        let old = Keyring::from_keys(&[("k1", K1)], false);
        let sealed = old.seal("s", STATE).unwrap();
        let rotated = Keyring::from_keys(&[("k2", K2), ("k1", K1)], false);
        match rotated.open("s", "s", &sealed) {
            Ok(Opened::Sealed { plain, current_key }) => {
                assert_eq!(plain, STATE);
                assert!(!current_key);
            }
            _ => panic!("the old key no longer opens"),
        }
        assert!(
            rotated
                .seal("s", STATE)
                .unwrap()
                .starts_with(b"SGSL\x01\x02k2")
        );
        let without_old = Keyring::from_keys(&[("k2", K2)], false);
        let err = without_old.open("s", "s", &sealed).err().unwrap();
        assert!(err.to_string().contains("key `k1`"), "{err}");
        assert_eq!(err.setting(), Some("encryption.keys"));
    }

    #[test]
    fn unsealed_bodies_pass_unless_sealing_is_required() {
        let lax = Keyring::from_keys(&[("k1", K1)], false);
        assert!(matches!(lax.open("s", "s", STATE), Ok(Opened::Clear)));
        let strict = Keyring::from_keys(&[("k1", K1)], true);
        let err = strict.open("s", "s", STATE).err().unwrap();
        assert!(err.to_string().contains("not sealed"), "{err}");
    }

    #[test]
    fn the_overhead_is_what_sealing_adds() {
        let ring = Keyring::from_keys(&[("k2026", K1)], false);
        let sealed = ring.seal("s", STATE).unwrap();
        assert_eq!(sealed.len() as u64, STATE.len() as u64 + ring.overhead());
    }

    #[test]
    fn only_state_bodies_are_sealed() {
        assert_eq!(logical_key("a/b.tfstate"), Some("a/b.tfstate"));
        assert_eq!(
            logical_key(".stategate/history/ws/x/a.tfstate/0000000003.tfstate"),
            Some("ws/x/a.tfstate")
        );
        assert_eq!(logical_key(".stategate/history/a/0000000003.json"), None);
        assert_eq!(logical_key("a/b.tfstate.tflock"), None);
        assert_eq!(logical_key(".stategate/lease/a"), None);
        assert_eq!(logical_key(".stategate/probe/x"), None);
    }

    #[test]
    fn keys_are_base64_of_32_bytes() {
        let key = generate_key().unwrap();
        assert_eq!(decode_key(&format!(" {key}\n")).unwrap().len(), KEY_LEN);
        assert!(decode_key("not base64!").is_err());
        assert!(
            decode_key("AAAA")
                .unwrap_err()
                .contains("holds 3 bytes, not 32")
        );
    }
}

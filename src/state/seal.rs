//! Encryption at rest: every state body and every kept version is sealed
//! with AES-256-GCM before it reaches the store, whatever the store is.
//!
//! A sealed object is a small header and the ciphertext. A body of up to
//! 1 MiB is one AES-GCM message (format 1):
//!
//! ```text
//! "SGSL" | 1 | key id length (1 byte) | key id | nonce (12 bytes) | ciphertext and tag
//! ```
//!
//! A larger body is sealed in segments of 64 KiB (format 2), so it is
//! sealed and opened a segment at a time, from a file to a file, and never
//! held whole in memory:
//!
//! ```text
//! "SGSL" | 2 | key id length (1 byte) | key id | nonce prefix (7 bytes) | segment ciphertext and tag ...
//! ```
//!
//! This is the STREAM construction (Hoang, Reyhanitabar, Rogaway and
//! Vizár, 2015) over AES-256-GCM, as RustCrypto's `aead-stream` builds it:
//! segment `i`'s nonce is the prefix, `i` as 4 big-endian bytes, and one
//! byte that is 1 for the last segment and 0 before it. A segment moved,
//! dropped, repeated or cut off, or a body cut at a segment boundary, does
//! not open. It is written here, a few lines over the AEAD already in use,
//! because `aead-stream` for this `aead` release is not yet published as a
//! stable version. The format follows from the size, so a reader of a
//! listing knows the plaintext size of either ([`Keyring::plain_size`]).
//!
//! The nonce (prefix) is random and fresh for every object. The associated data is
//! the header followed by the state's *logical key*, the store key of the
//! state object, shared by the state and all its history versions: a
//! version kept by hard link or server-side copy still opens, and a
//! restore copies bytes that open where they land, but a sealed body moved
//! to another state does not open.
//!
//! Locks and leases stay clear: they hold no secret, and locks stay
//! readable by Terraform's native backends. Which store keys hold bodies
//! is decided by [`logical_key`]: a state object, or a kept version under
//! the history prefix. History records stay clear but for their MD5 of the
//! body ([`record_state`] says which objects are records): an MD5 in clear
//! would confirm a guess of a state's content to anyone who can read the
//! store, so it is sealed too (bound to its state), and opened again on
//! its way out, so every reader above sees the record as it was written.
//! A record written in clear (before encryption, or by an older release)
//! is read as it is, and sealed by `stategate rekey`.
//!
//! The first key of `encryption.keys` seals; every listed key opens, so
//! keys rotate by putting the new one first and running `stategate rekey`.
//! A body found unsealed (a store being adopted) is served with a warning,
//! or refused with `require_sealed: true`. A body that does not open names
//! the key it was sealed with and answers 503: Terraform gets an error,
//! never garbage. Nor is such a body replaced or deleted: a key that is
//! missing, or configured with other material under the same id, would
//! otherwise accept writes its owner can read and no one else, and bury
//! the state that no longer opens. So every put or delete of a state object
//! first proves that the keys open the body it replaces (the first segment
//! of a large one, which opens only under the key that sealed it).
//!
//! A large body is opened into an unnamed file in the spool directory
//! (`TMPDIR`), as an upload is spooled there before it is sealed: with
//! encryption on, that directory belongs on memory (tmpfs) or an encrypted
//! disk.

use std::io::{BufWriter, Read, Write};
use std::sync::Arc;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;

use super::history::{HISTORY_PREFIX, POINTER_NAME};
use super::key::{LOCK_SUFFIX, RESERVED_PREFIX};
use crate::settings::{ConfigError, EncryptionSettings, KeySource};
use crate::stores::keylock::KeyLock;
use crate::stores::payload::{CHUNK_BYTES, FileBody, SPOOL_THRESHOLD, spool_dir};
use crate::stores::{
    Capabilities, Change, Condition, Entry, Object, OpDelete, OpList, OpRead, OpWrite, Payload,
    Stopped, Store, StoreError, StoreExt, Version,
};

/// The first bytes of every sealed object (a state body starts with `{`).
const MAGIC: &[u8; 4] = b"SGSL";
/// One AEAD message: bodies up to [`SPOOL_THRESHOLD`].
const FORMAT_WHOLE: u8 = 1;
/// Segments (STREAM): larger bodies.
const FORMAT_SEGMENTED: u8 = 2;
const NONCE_LEN: usize = 12;
/// The random part of a segmented body's nonces.
const PREFIX_LEN: usize = 7;
/// Plaintext bytes per segment of a segmented body.
const SEGMENT: usize = 64 * 1024;
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

/// Checks that only its owner may read or change a key file, as ssh does
/// for private keys: a key others can read is no secret, and one others
/// can change may be swapped. Such a file stops start-up under
/// `require_sealed` (naming `setting`) and is warned about otherwise.
fn check_key_file_mode(
    path: &std::path::Path,
    id: &str,
    setting: &str,
    require_sealed: bool,
) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| {
            ConfigError::invalid(
                setting,
                format!("key `{id}`: cannot read {}: {e}", path.display()),
            )
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let access = if mode & 0o044 != 0 {
        "readable"
    } else {
        "writable"
    };
    let why = format!(
        "key `{id}`: {} is {access} by group or others (mode {mode:04o}); `chmod 600` it",
        path.display()
    );
    if require_sealed {
        return Err(ConfigError::invalid(
            setting,
            format!("{why} (encryption.require_sealed refuses such a key)"),
        ));
    }
    tracing::warn!(setting, "{why}");
    Ok(())
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
                KeySource::File(path) => {
                    let from = format!("{at}.file");
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        ConfigError::invalid(
                            &from,
                            format!("key `{}`: cannot read {}: {e}", k.id, path.display()),
                        )
                    })?;
                    check_key_file_mode(path, &k.id, &from, settings.require_sealed)?;
                    (text, from)
                }
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

    /// How many bytes sealing under the first key adds to a body of up to
    /// [`SPOOL_THRESHOLD`] bytes.
    pub fn overhead(&self) -> u64 {
        (header_len(self.keys[0].id.len(), NONCE_LEN) + TAG_LEN) as u64
    }

    /// The plaintext size of a body the first key sealed into `stored`
    /// bytes, in either format (the format follows from the size).
    pub fn plain_size(&self, stored: u64) -> u64 {
        let whole = self.overhead();
        if stored <= SPOOL_THRESHOLD as u64 + whole {
            return stored.saturating_sub(whole);
        }
        let header = header_len(self.keys[0].id.len(), PREFIX_LEN) as u64;
        segmented_plain_len(stored.saturating_sub(header)).unwrap_or(0)
    }

    /// The id of the key that seals.
    pub fn sealing_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plain` for the state whose object key is `logical`.
    pub fn seal(&self, logical: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(plain.len() + plain.len() / SEGMENT * TAG_LEN + 64);
        self.seal_to(logical, &mut &plain[..], plain.len() as u64, &mut out)?;
        Ok(out)
    }

    /// Seals the `len` bytes `plain` gives into `out`: one message up to
    /// [`SPOOL_THRESHOLD`], segments beyond.
    fn seal_to(
        &self,
        logical: &str,
        plain: &mut dyn Read,
        len: u64,
        out: &mut dyn Write,
    ) -> Result<(), StoreError> {
        let key = &self.keys[0];
        let segmented = len > SPOOL_THRESHOLD as u64;
        let mut header = Vec::with_capacity(header_len(key.id.len(), NONCE_LEN));
        header.extend_from_slice(MAGIC);
        header.push(if segmented {
            FORMAT_SEGMENTED
        } else {
            FORMAT_WHOLE
        });
        header.push(key.id.len() as u8);
        header.extend_from_slice(key.id.as_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        let random = if segmented {
            &mut nonce[..PREFIX_LEN]
        } else {
            &mut nonce[..]
        };
        getrandom::getrandom(random)
            .map_err(|e| StoreError::unavailable(format!("sealing: no randomness: {e}")))?;
        header.extend_from_slice(random);
        let aad = associated_data(&header, logical);
        let io = |e: std::io::Error| StoreError::unavailable(format!("sealing: {e}"));
        out.write_all(&header).map_err(io)?;
        let sealing_failed = |_| StoreError::unavailable("sealing failed");
        if !segmented {
            let mut body = Vec::with_capacity(len as usize + TAG_LEN);
            (&mut *plain).take(len).read_to_end(&mut body).map_err(io)?;
            if body.len() as u64 != len {
                return Err(StoreError::unavailable("sealing: the body ended early"));
            }
            key.cipher
                .encrypt_in_place(&Nonce::from(nonce), &aad, &mut body)
                .map_err(sealing_failed)?;
            return out.write_all(&body).map_err(io);
        }
        let mut segment = Vec::with_capacity(SEGMENT + TAG_LEN);
        let mut left = len;
        let mut index: u32 = 0;
        while left > 0 {
            let size = left.min(SEGMENT as u64);
            segment.clear();
            (&mut *plain)
                .take(size)
                .read_to_end(&mut segment)
                .map_err(io)?;
            if segment.len() as u64 != size {
                return Err(StoreError::unavailable("sealing: the body ended early"));
            }
            left -= size;
            key.cipher
                .encrypt_in_place(
                    &Nonce::from(segment_nonce(&nonce, index, left == 0)),
                    &aad,
                    &mut segment,
                )
                .map_err(sealing_failed)?;
            out.write_all(&segment).map_err(io)?;
            index = index
                .checked_add(1)
                .ok_or_else(|| StoreError::unavailable("sealing: the body is too large"))?;
        }
        Ok(())
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
        let key = self.key_for(store_key, &header)?;
        let aad = associated_data(&stored[..header.len], logical);
        let sealed = &stored[header.len..];
        let plain = if header.format == FORMAT_SEGMENTED {
            let mut plain = Vec::with_capacity(sealed.len());
            open_segments(
                key,
                store_key,
                &header,
                &aad,
                &mut &sealed[..],
                sealed.len() as u64,
                &mut plain,
            )?;
            plain
        } else {
            let mut body = sealed.to_vec();
            key.cipher
                .decrypt_in_place(&Nonce::from(header.nonce), &aad, &mut body)
                .map_err(|_| tampered(store_key, Some(&key.id)))?;
            body
        };
        Ok(Opened::Sealed {
            plain,
            current_key: key.id == self.keys[0].id,
        })
    }

    /// The key that opens a body with `header`, or why none does.
    fn key_for(&self, store_key: &str, header: &Header) -> Result<&Key, StoreError> {
        self.keys
            .iter()
            .find(|k| k.id == header.key_id)
            .ok_or_else(|| StoreError::ConfigInvalid {
                setting: "encryption.keys",
                reason: format!(
                    "{store_key} is sealed with key `{}`, which encryption.keys does not list",
                    header.key_id
                ),
            })
    }

    /// Opens a large stored body (a file the store handed out) into an
    /// unnamed file in the spool directory, a segment at a time; a body in
    /// the older one-message format, or not sealed, is handled as
    /// [`Keyring::open`] does.
    fn open_payload(
        &self,
        store_key: &str,
        logical: &str,
        stored: &Payload,
    ) -> Result<Payload, StoreError> {
        let io = |e: std::io::Error| StoreError::unavailable(format!("reading {store_key}: {e}"));
        let mut head = vec![0u8; (header_len(255, NONCE_LEN) + TAG_LEN).min(stored.len() as usize)];
        stored.reader().read_exact(&mut head).map_err(io)?;
        let parsed = Header::parse(&head);
        if parsed.is_none() && head.iter().any(|b| !b.is_ascii_whitespace()) {
            // Not sealed: judged by its first bytes, served as it is.
            return match self.open(store_key, logical, &head)? {
                Opened::Clear => {
                    tracing::warn!(
                        key = store_key,
                        "read an unsealed state body; `stategate rekey` seals it"
                    );
                    Ok(stored.clone())
                }
                Opened::Sealed { .. } => Err(tampered(store_key, None)),
            };
        }
        let Some(header) = parsed.filter(|h| h.format == FORMAT_SEGMENTED) else {
            let mut whole = Vec::with_capacity(stored.len() as usize);
            stored.reader().read_to_end(&mut whole).map_err(io)?;
            return Ok(match self.open(store_key, logical, &whole)? {
                Opened::Clear => Payload::from(whole),
                Opened::Sealed { plain, .. } => Payload::from(plain),
            });
        };
        let key = self.key_for(store_key, &header)?;
        let aad = associated_data(&head[..header.len], logical);
        let spool =
            |e: std::io::Error| StoreError::unavailable(format!("spooling {store_key}: {e}"));
        let file = tempfile::tempfile_in(spool_dir()).map_err(spool)?;
        let mut out = BufWriter::with_capacity(CHUNK_BYTES, file);
        let sealed_len = stored.len() - header.len as u64;
        let mut reader = stored.reader().skip_to(header.len as u64);
        open_segments(
            key,
            store_key,
            &header,
            &aad,
            &mut reader,
            sealed_len,
            &mut out,
        )?;
        let file = out.into_inner().map_err(|e| spool(e.into_error()))?;
        let len = segmented_plain_len(sealed_len).expect("opened");
        Ok(Payload::File(Arc::new(FileBody::new(file, len))))
    }

    /// Proves that these keys open the state body `stored` at `store_key`
    /// (a state object) before a change replaces or deletes it, without
    /// opening all of a large one: the whole of a one-message body, the
    /// first segment of a segmented one, which opens only under the key
    /// that sealed the body. An unsealed body passes: replacing it seals
    /// it. The error names the key that sealed it.
    fn prove_opens(&self, store_key: &str, stored: &Payload) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError::unavailable(format!("reading {store_key}: {e}"));
        let mut head = vec![0u8; (header_len(255, NONCE_LEN) + TAG_LEN).min(stored.len() as usize)];
        stored.reader().read_exact(&mut head).map_err(io)?;
        let Some(header) = Header::parse(&head) else {
            return match self.open_as(store_key, store_key, &head, false)? {
                Opened::Clear => Ok(()),
                Opened::Sealed { .. } => Err(tampered(store_key, None)),
            };
        };
        let key = self.key_for(store_key, &header)?;
        let aad = associated_data(&head[..header.len], store_key);
        let refused = |_| tampered(store_key, Some(&key.id));
        let sealed_len = stored.len() - header.len as u64;
        let mut reader = stored.reader().skip_to(header.len as u64);
        let per = (SEGMENT + TAG_LEN) as u64;
        let (nonce, take) = if header.format == FORMAT_SEGMENTED {
            if segmented_plain_len(sealed_len).is_none() {
                return Err(tampered(store_key, Some(&key.id)));
            }
            let last = sealed_len <= per;
            (segment_nonce(&header.nonce, 0, last), sealed_len.min(per))
        } else {
            (header.nonce, sealed_len)
        };
        let mut sealed = Vec::with_capacity(take as usize);
        (&mut reader)
            .take(take)
            .read_to_end(&mut sealed)
            .map_err(io)?;
        key.cipher
            .decrypt_in_place(&Nonce::from(nonce), &aad, &mut sealed)
            .map_err(refused)
    }

    /// Seals a large body into an unnamed file in the spool directory.
    fn seal_payload(&self, logical: &str, plain: &Payload) -> Result<Payload, StoreError> {
        let spool =
            |e: std::io::Error| StoreError::unavailable(format!("spooling a sealed body: {e}"));
        let file = tempfile::tempfile_in(spool_dir()).map_err(spool)?;
        let mut out = BufWriter::with_capacity(CHUNK_BYTES, file);
        self.seal_to(logical, &mut plain.reader(), plain.len(), &mut out)?;
        let file = out.into_inner().map_err(|e| spool(e.into_error()))?;
        let len = file.metadata().map_err(spool)?.len();
        Ok(Payload::File(Arc::new(FileBody::new(file, len))))
    }
}

/// Bytes of a header with a key id of `id_len` bytes and `random` bytes
/// of nonce (the whole nonce, or a segmented body's prefix).
fn header_len(id_len: usize, random: usize) -> usize {
    MAGIC.len() + 2 + id_len + random
}

/// The nonce of segment `index` of a segmented body whose nonce prefix
/// begins `base`.
fn segment_nonce(base: &[u8; NONCE_LEN], index: u32, last: bool) -> [u8; NONCE_LEN] {
    let mut nonce = *base;
    nonce[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&index.to_be_bytes());
    nonce[NONCE_LEN - 1] = u8::from(last);
    nonce
}

/// The plaintext length of `sealed` bytes of segments; `None` when no
/// segmented body has that length.
fn segmented_plain_len(sealed: u64) -> Option<u64> {
    let per = (SEGMENT + TAG_LEN) as u64;
    let segments = sealed.div_ceil(per);
    let last = sealed - (segments.checked_sub(1)? * per);
    (last > TAG_LEN as u64).then(|| sealed - segments * TAG_LEN as u64)
}

/// Opens the `sealed_len` bytes of segments `sealed` gives into `out`.
/// Each segment is checked before its plaintext is written; the caller
/// discards `out` on an error.
fn open_segments(
    key: &Key,
    store_key: &str,
    header: &Header,
    aad: &[u8],
    sealed: &mut dyn Read,
    sealed_len: u64,
    out: &mut dyn Write,
) -> Result<(), StoreError> {
    let refused = || tampered(store_key, Some(&key.id));
    segmented_plain_len(sealed_len).ok_or_else(refused)?;
    let io = |e: std::io::Error| StoreError::unavailable(format!("reading {store_key}: {e}"));
    let per = (SEGMENT + TAG_LEN) as u64;
    let mut segment = Vec::with_capacity(SEGMENT + TAG_LEN);
    let mut left = sealed_len;
    let mut index: u32 = 0;
    while left > 0 {
        let size = left.min(per);
        segment.clear();
        (&mut *sealed)
            .take(size)
            .read_to_end(&mut segment)
            .map_err(io)?;
        if segment.len() as u64 != size {
            return Err(refused());
        }
        left -= size;
        key.cipher
            .decrypt_in_place(
                &Nonce::from(segment_nonce(&header.nonce, index, left == 0)),
                aad,
                &mut segment,
            )
            .map_err(|_| refused())?;
        out.write_all(&segment).map_err(io)?;
        index = index.checked_add(1).ok_or_else(refused)?;
    }
    Ok(())
}

/// What opening a stored body found.
pub enum Opened {
    /// The body is not sealed: use the stored bytes as they are.
    Clear,
    /// The plaintext, and whether the sealing key sealed it.
    Sealed { plain: Vec<u8>, current_key: bool },
}

fn tampered(store_key: &str, key_id: Option<&str>) -> StoreError {
    StoreError::unavailable(match key_id {
        Some(id) => format!(
            "{store_key} does not open with key `{id}`: the key configured as `{id}` is not \
             the one that sealed it, or it was changed after sealing, or sealed for another state"
        ),
        None => format!(
            "{store_key} does not open: it was changed after sealing, or sealed for another state"
        ),
    })
}

fn associated_data(header: &[u8], logical: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + logical.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(logical.as_bytes());
    aad
}

/// The header of a sealed object.
struct Header<'a> {
    format: u8,
    key_id: &'a str,
    /// The nonce; for a segmented body, its prefix followed by zeros.
    nonce: [u8; NONCE_LEN],
    /// Its length in bytes, where the ciphertext starts.
    len: usize,
}

impl<'a> Header<'a> {
    fn parse(stored: &'a [u8]) -> Option<Self> {
        let rest = stored.strip_prefix(MAGIC)?;
        let (&format, rest) = rest.split_first()?;
        let (&id_len, rest) = rest.split_first()?;
        let random = match format {
            FORMAT_WHOLE => NONCE_LEN,
            FORMAT_SEGMENTED => PREFIX_LEN,
            _ => return None,
        };
        let id_len = id_len as usize;
        if rest.len() < id_len + random + TAG_LEN {
            return None;
        }
        let key_id = std::str::from_utf8(&rest[..id_len]).ok()?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..random].copy_from_slice(&rest[id_len..id_len + random]);
        Some(Header {
            format,
            key_id,
            nonce,
            len: header_len(id_len, random),
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

/// The state a store key holds a history record of: a numbered version's
/// record (`<n>.json`) or the pointer holding a copy of the newest one.
/// `None` for everything else.
pub fn record_state(store_key: &str) -> Option<&str> {
    let rest = store_key.strip_prefix(HISTORY_PREFIX)?;
    let (state, file) = rest.rsplit_once('/')?;
    let numbered = file
        .strip_suffix(".json")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (numbered || file == POINTER_NAME).then_some(state)
}

/// Marks a sealed MD5 in a history record; a clear one is 32 hex digits.
const SEALED_DIGEST: &str = "sealed:";

/// The `md5` of a history record, or of the newest record a pointer
/// holds; `None` in anything else.
fn md5_field(record: &mut serde_json::Value) -> Option<&mut serde_json::Value> {
    let record = record.as_object_mut()?;
    if record.contains_key("newest") {
        record.get_mut("newest")?.get_mut("md5")
    } else {
        record.get_mut("md5")
    }
}

fn is_clear_md5(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What sealing an MD5 of `state` binds it to: the state, and that it is a
/// digest, so it never opens as a body.
fn digest_context(state: &str) -> String {
    format!("{state}\0md5")
}

impl Keyring {
    /// A history record (or pointer) of `state` as it is stored: its MD5
    /// sealed, since the MD5 of a state in clear confirms a guess of its
    /// content to whoever can read the store. `None`: nothing to seal (no
    /// MD5, or one sealed already).
    fn seal_record(&self, state: &str, record: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(record) else {
            return Ok(None);
        };
        let Some(field) = md5_field(&mut doc) else {
            return Ok(None);
        };
        let Some(md5) = field.as_str().filter(|m| is_clear_md5(m)) else {
            return Ok(None);
        };
        let sealed = self.seal(&digest_context(state), md5.as_bytes())?;
        *field = format!(
            "{SEALED_DIGEST}{}",
            base64::engine::general_purpose::STANDARD.encode(sealed)
        )
        .into();
        Ok(Some(
            serde_json::to_vec(&doc)
                .expect("a record serialises")
                .into(),
        ))
    }

    /// A stored history record (or pointer) of `state` with its MD5 opened,
    /// and whether the first key sealed it; `None` when its MD5 is not
    /// sealed (written before sealing or without encryption), to be used as
    /// it is. An MD5 that does not open is refused as a body would be.
    fn open_record(
        &self,
        store_key: &str,
        state: &str,
        record: &[u8],
    ) -> Result<Option<(Bytes, bool)>, StoreError> {
        let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(record) else {
            return Ok(None);
        };
        let Some(field) = md5_field(&mut doc) else {
            return Ok(None);
        };
        let Some(sealed) = field.as_str().and_then(|m| m.strip_prefix(SEALED_DIGEST)) else {
            return Ok(None);
        };
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| tampered(store_key, None))?;
        let (md5, current_key) =
            match self.open_as(store_key, &digest_context(state), &sealed, false)? {
                Opened::Sealed { plain, current_key } => (plain, current_key),
                Opened::Clear => return Err(tampered(store_key, None)),
            };
        let md5 = String::from_utf8(md5).map_err(|_| tampered(store_key, None))?;
        *field = md5.into();
        let opened = serde_json::to_vec(&doc).expect("a record serialises");
        Ok(Some((opened.into(), current_key)))
    }

    /// A stored history record of `state` with its MD5 sealed under the
    /// first key, for `stategate rekey`; `None` when it already is (or
    /// holds no MD5).
    fn reseal_record(
        &self,
        store_key: &str,
        state: &str,
        record: &[u8],
    ) -> Result<Option<Bytes>, StoreError> {
        match self.open_record(store_key, state, record)? {
            Some((_, true)) => Ok(None),
            Some((opened, false)) => self.seal_record(state, &opened),
            None => self.seal_record(state, record),
        }
    }
}

/// A store whose state bodies are sealed, and the MD5s in whose history
/// records are sealed too: every other object passes through unchanged.
/// A change that replaces or deletes a state body first proves that the
/// keys open the body it replaces.
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
        if let Some(state) = record_state(key) {
            return Ok(match self.keys.open_record(key, state, &obj.body)? {
                Some((body, _)) => Object {
                    body,
                    version: obj.version,
                },
                None => obj,
            });
        }
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

    /// `body` as it is stored at `key` when it is in memory; `None` when it
    /// is stored as it is.
    fn seal_body(&self, key: &str, body: &[u8]) -> Result<Option<Bytes>, StoreError> {
        if let Some(state) = record_state(key) {
            return self.keys.seal_record(state, body);
        }
        match logical_key(key) {
            Some(logical) => Ok(Some(Bytes::from(self.keys.seal(logical, body)?))),
            None => Ok(None),
        }
    }

    /// `body` as it is stored at `key`: sealed in memory when it is in
    /// memory, sealed into a spool file on a blocking thread when it is in
    /// a file, as it is when `key` holds no state body.
    async fn sealed_payload(&self, key: &str, body: &Payload) -> Result<Payload, StoreError> {
        if record_state(key).is_some() {
            let plain = body.to_bytes().await?;
            return Ok(Payload::Memory(
                self.seal_body(key, &plain)?.unwrap_or(plain),
            ));
        }
        let Some(logical) = logical_key(key) else {
            return Ok(body.clone());
        };
        if let Payload::Memory(plain) = body {
            return Ok(Payload::Memory(Bytes::from(
                self.keys.seal(logical, plain)?,
            )));
        }
        let (keys, logical, body) = (Arc::clone(&self.keys), logical.to_string(), body.clone());
        crate::stores::blocking(move || keys.seal_payload(&logical, &body)).await
    }

    /// Before a change under `condition` replaces or deletes the state
    /// object at `key`: proves that the keys open the body there, so a key
    /// that is missing or has other material refuses the change (naming
    /// the key) instead of putting a body its owner cannot read in place
    /// of one nobody can read any more. Kept versions and other objects
    /// are not checked, nor creations (nothing is replaced).
    async fn check_replaceable(&self, key: &str, condition: &Condition) -> Result<(), StoreError> {
        if matches!(condition, Condition::IfAbsent) || logical_key(key) != Some(key) {
            return Ok(());
        }
        // Whatever version is there now: one that changed since the caller
        // read it makes the change fail on its condition anyway.
        let Some((stored, _)) = self.inner.read(key, OpRead::streamed()).await? else {
            return Ok(());
        };
        if stored.as_memory().is_some() {
            return self.keys.prove_opens(key, &stored);
        }
        let (keys, key) = (Arc::clone(&self.keys), key.to_string());
        crate::stores::blocking(move || keys.prove_opens(&key, &stored)).await
    }
}

impl SealedStore {
    /// Listed sizes of sealed bodies as the sizes of what they hold.
    fn plain_sizes(&self, mut entries: Vec<Entry>) -> Vec<Entry> {
        for entry in &mut entries {
            if logical_key(&entry.key).is_some() {
                entry.size = self.keys.plain_size(entry.size);
            }
        }
        entries
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

    fn max_key_bytes(&self) -> Option<usize> {
        self.inner.max_key_bytes()
    }

    /// A large body the store hands out as a file is opened into another
    /// file, a segment at a time.
    async fn read(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        let Some((stored, version)) = self.inner.read(key, args).await? else {
            return Ok(None);
        };
        if record_state(key).is_some() {
            let body = stored.to_bytes().await?;
            let obj = self.open_object(key, Object { body, version })?;
            return Ok(Some((Payload::Memory(obj.body), obj.version)));
        }
        let Some(logical) = logical_key(key) else {
            return Ok(Some((stored, version)));
        };
        let opened = match stored {
            Payload::Memory(body) => {
                let obj = self.open_object(key, Object { body, version })?;
                return Ok(Some((Payload::Memory(obj.body), obj.version)));
            }
            file => {
                let (keys, key, logical) =
                    (Arc::clone(&self.keys), key.to_string(), logical.to_string());
                crate::stores::blocking(move || keys.open_payload(&key, &logical, &file)).await?
            }
        };
        Ok(Some((opened, version)))
    }

    /// History pointers are written transient; their copy of the newest
    /// record's MD5 is sealed as the record's is.
    async fn write(&self, key: &str, body: Payload, args: OpWrite) -> Result<Version, StoreError> {
        let sealed = self.sealed_payload(key, &body).await?;
        self.check_replaceable(key, &args.condition).await?;
        self.inner.write(key, sealed, args).await
    }

    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError> {
        self.check_replaceable(key, &args.condition).await?;
        self.inner.delete(key, args).await
    }

    /// Sealed as each method would seal, then made by the store underneath
    /// in one go.
    async fn change_all(&self, changes: Vec<Change>) -> Result<(), Stopped> {
        let mut sealed = Vec::with_capacity(changes.len());
        for (at, change) in changes.into_iter().enumerate() {
            let stopped = |error| Stopped { at, error };
            let change = match change {
                Change::Write { key, body, args } => {
                    let body = self
                        .seal_body(&key, &body)
                        .map_err(stopped)?
                        .unwrap_or(body);
                    self.check_replaceable(&key, &args.condition)
                        .await
                        .map_err(stopped)?;
                    Change::Write { key, body, args }
                }
                Change::Snapshot {
                    from,
                    from_version,
                    to,
                    body,
                } => Change::Snapshot {
                    body: self.sealed_payload(&to, &body).await.map_err(stopped)?,
                    from,
                    from_version,
                    to,
                },
                Change::Delete { key, args } => {
                    self.check_replaceable(&key, &args.condition)
                        .await
                        .map_err(stopped)?;
                    Change::Delete { key, args }
                }
            };
            sealed.push(change);
        }
        self.inner.change_all(sealed).await
    }

    async fn native_lease(
        &self,
        key: &str,
        wait: std::time::Duration,
    ) -> Result<KeyLock, StoreError> {
        self.inner.native_lease(key, wait).await
    }

    /// Sizes of state bodies are those of the plaintext, as `read` returns
    /// it, for bodies sealed under the first key (any other body, sealed
    /// under an older key, by an older release or not at all, until
    /// `stategate rekey`, is off by a few bytes; readers that compare sizes
    /// then read it once more).
    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        let entries = self.inner.list(prefix, args).await?;
        Ok(self.plain_sizes(entries))
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
        let sealed = self.sealed_payload(to, body).await?;
        self.inner.snapshot(from, from_version, to, &sealed).await
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
    /// History records whose MD5 was sealed anew under the first key (or
    /// sealed for the first time).
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
}

/// Re-seals every state body and kept version of `store` under the first
/// key, in key order, and the MD5 in every history record with them. Each
/// object is rewritten only if it still has the version that was read, so
/// a concurrent write is never lost; one already under the first key is
/// skipped, so a run that was interrupted resumes where it stopped.
/// `progress` is told each object's size.
pub async fn rekey(
    store: &dyn Store,
    keys: &Keyring,
    progress: &dyn Fn(u64, u64),
) -> Result<RekeyReport, StoreError> {
    let entries: Vec<Entry> = store
        .list("", OpList::default())
        .await?
        .into_iter()
        .filter(|e| logical_key(&e.key).is_some() || record_state(&e.key).is_some())
        .collect();
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let mut report = RekeyReport::default();
    for entry in &entries {
        if let Some(state) = record_state(&entry.key) {
            let Some(obj) = store.get(&entry.key).await? else {
                continue;
            };
            report.bytes += obj.body.len() as u64;
            if let Some(sealed) = keys.reseal_record(&entry.key, state, &obj.body)? {
                match store
                    .put(&entry.key, sealed, Condition::IfMatch(obj.version))
                    .await
                {
                    Ok(_) => report.records += 1,
                    // Rewritten meanwhile, by a write that sealed it.
                    Err(StoreError::PreconditionFailed) => report.raced += 1,
                    Err(e) => return Err(e),
                }
            }
            progress(obj.body.len() as u64, total);
            continue;
        }
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

    fn big(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 253) as u8).collect()
    }

    fn file_payload(bytes: &[u8]) -> Payload {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        Payload::File(Arc::new(FileBody::new(file, bytes.len() as u64)))
    }

    fn read_all(payload: &Payload) -> Vec<u8> {
        let mut out = Vec::new();
        payload.reader().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn large_bodies_are_sealed_in_segments_from_memory_or_file() {
        let ring = Keyring::from_keys(&[("k1", K1)], false);
        for (len, format) in [
            (SPOOL_THRESHOLD, FORMAT_WHOLE),
            (SPOOL_THRESHOLD + 1, FORMAT_SEGMENTED),
            (SEGMENT * 20, FORMAT_SEGMENTED),
            (3 * SPOOL_THRESHOLD + 17, FORMAT_SEGMENTED),
        ] {
            let plain = big(len);
            let sealed = ring.seal("s", &plain).unwrap();
            assert_eq!(sealed[4], format, "{len}");
            assert_eq!(ring.plain_size(sealed.len() as u64), len as u64, "{len}");
            match ring.open("s", "s", &sealed) {
                Ok(Opened::Sealed { plain: opened, .. }) => assert!(opened == plain, "{len}"),
                _ => panic!("{len}: did not open"),
            }
            // Through files, a segment at a time, both ways.
            let sealed_file = ring.seal_payload("s", &file_payload(&plain)).unwrap();
            assert!(sealed_file.as_memory().is_none());
            assert_eq!(sealed_file.len(), sealed.len() as u64);
            let opened = ring.open_payload("s", "s", &sealed_file).unwrap();
            assert!(read_all(&opened) == plain, "{len}");
            let opened = ring.open_payload("s", "s", &file_payload(&sealed)).unwrap();
            assert!(read_all(&opened) == plain, "{len}");
        }
        // Bodies sealed whole before segments existed still open from a file.
        let plain = big(2 * SPOOL_THRESHOLD);
        let mut whole = Vec::new();
        let key = &ring.keys[0];
        let nonce = [9u8; NONCE_LEN];
        whole.extend_from_slice(MAGIC);
        whole.extend_from_slice(&[FORMAT_WHOLE, 2]);
        whole.extend_from_slice(b"k1");
        whole.extend_from_slice(&nonce);
        let aad = associated_data(&whole, "s");
        let mut body = plain.clone();
        key.cipher
            .encrypt_in_place(&Nonce::from(nonce), &aad, &mut body)
            .unwrap();
        whole.extend_from_slice(&body);
        let opened = ring.open_payload("s", "s", &file_payload(&whole)).unwrap();
        assert!(read_all(&opened) == plain);
    }

    #[test]
    fn segments_cannot_be_changed_dropped_moved_or_cut() {
        let ring = Keyring::from_keys(&[("k1", K1)], false);
        let plain = big(SPOOL_THRESHOLD + 2 * SEGMENT + 5);
        let sealed = ring.seal("s", &plain).unwrap();
        let header = header_len(2, PREFIX_LEN);
        let per = SEGMENT + TAG_LEN;
        let segments: Vec<&[u8]> = sealed[header..].chunks(per).collect();
        let n = segments.len();
        assert_eq!(n, SPOOL_THRESHOLD / SEGMENT + 3);
        let joined = |parts: &[&[u8]]| [&sealed[..header], &parts.concat()].concat();
        let mut flipped = sealed.clone();
        flipped[header + per * 5 + 100] ^= 1;
        let mut swapped = segments.clone();
        swapped.swap(3, 4);
        let mut repeated = segments.clone();
        repeated.push(segments[n - 1]);
        let mut other_format = sealed.clone();
        other_format[4] = FORMAT_WHOLE;
        for (what, bad) in [
            ("a flipped byte", flipped),
            ("two segments swapped", joined(&swapped)),
            ("the last segment dropped", joined(&segments[..n - 1])),
            ("cut inside a segment", sealed[..sealed.len() - 7].to_vec()),
            ("the last segment repeated", joined(&repeated)),
            ("the format byte changed", other_format),
        ] {
            let refused = |r: Result<Opened, StoreError>| match r {
                Err(e) => assert!(e.to_string().contains("does not open"), "{what}: {e}"),
                Ok(_) => panic!("{what}: it still opened"),
            };
            refused(ring.open("s", "s", &bad));
            match ring.open_payload("s", "s", &file_payload(&bad)) {
                Err(e) => assert!(e.to_string().contains("does not open"), "{what}: {e}"),
                Ok(_) => panic!("{what}: it still opened from a file"),
            }
        }
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
    fn a_change_proves_the_keys_open_what_it_replaces() {
        let ring = Keyring::from_keys(&[("k1", K1)], false);
        let small = ring.seal("s", STATE).unwrap();
        let large = ring.seal("s", &big(SPOOL_THRESHOLD + 3 * SEGMENT)).unwrap();
        for sealed in [&small, &large] {
            ring.prove_opens("s", &Payload::from(sealed.clone()))
                .unwrap();
            ring.prove_opens("s", &file_payload(sealed)).unwrap();
        }
        // An unsealed state is replaced by a sealed one: nothing is lost.
        ring.prove_opens("s", &Payload::from(STATE.to_vec()))
            .unwrap();

        let other_material = Keyring::from_keys(&[("k1", K2)], false);
        let missing = Keyring::from_keys(&[("k2", K2)], false);
        for sealed in [&small, &large] {
            for payload in [Payload::from(sealed.clone()), file_payload(sealed)] {
                let err = other_material.prove_opens("s", &payload).unwrap_err();
                assert!(
                    err.to_string().contains("does not open with key `k1`"),
                    "{err}"
                );
                let err = missing.prove_opens("s", &payload).unwrap_err();
                assert!(err.to_string().contains("sealed with key `k1`"), "{err}");
            }
        }
        let mut flipped = large.clone();
        flipped[header_len(2, PREFIX_LEN) + 10] ^= 1;
        assert!(ring.prove_opens("s", &file_payload(&flipped)).is_err());
        assert!(
            ring.prove_opens("s", &Payload::from(b"junk".to_vec()))
                .is_err()
        );
    }

    const RECORD: &str =
        r#"{"version":3,"serial":3,"md5":"0123456789abcdef0123456789abcdef","size":9}"#;

    #[test]
    fn history_records_keep_their_md5_sealed() {
        let ring = Keyring::from_keys(&[("k1", K1)], false);
        let sealed = ring.seal_record("a/s", RECORD.as_bytes()).unwrap().unwrap();
        assert!(
            !text(&sealed).contains("0123456789abcdef"),
            "{}",
            text(&sealed)
        );
        let meta: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        assert_eq!(meta["serial"], 3, "the rest stays clear");
        assert!(
            ring.seal_record("a/s", &sealed).unwrap().is_none(),
            "sealed twice"
        );
        let (opened, current) = ring.open_record("r", "a/s", &sealed).unwrap().unwrap();
        assert!(current);
        let opened: serde_json::Value = serde_json::from_slice(&opened).unwrap();
        assert_eq!(
            opened,
            serde_json::from_str::<serde_json::Value>(RECORD).unwrap()
        );
        // Bound to its state.
        assert!(ring.open_record("r", "b/s", &sealed).is_err());
        // A record in clear reads as it is.
        assert!(
            ring.open_record("r", "a/s", RECORD.as_bytes())
                .unwrap()
                .is_none()
        );

        // A pointer's copy of the newest record is sealed the same way.
        let pointer = format!(r#"{{"oldest":1,"newest":{RECORD}}}"#);
        let sealed_pointer = ring
            .seal_record("a/s", pointer.as_bytes())
            .unwrap()
            .unwrap();
        assert!(!text(&sealed_pointer).contains("0123456789abcdef"));
        let (opened, _) = ring
            .open_record("p", "a/s", &sealed_pointer)
            .unwrap()
            .unwrap();
        let opened: serde_json::Value = serde_json::from_slice(&opened).unwrap();
        assert_eq!(opened["newest"]["md5"], "0123456789abcdef0123456789abcdef");

        // Rotation: the old key opens, rekey re-seals under the new one.
        let rotated = Keyring::from_keys(&[("k2", K2), ("k1", K1)], false);
        let (_, current) = rotated.open_record("r", "a/s", &sealed).unwrap().unwrap();
        assert!(!current);
        let resealed = rotated.reseal_record("r", "a/s", &sealed).unwrap().unwrap();
        assert!(
            rotated
                .reseal_record("r", "a/s", &resealed)
                .unwrap()
                .is_none()
        );
        let clear_resealed = rotated
            .reseal_record("r", "a/s", RECORD.as_bytes())
            .unwrap()
            .unwrap();
        let without_old = Keyring::from_keys(&[("k2", K2)], false);
        for record in [&resealed, &clear_resealed] {
            let (opened, _) = without_old
                .open_record("r", "a/s", record)
                .unwrap()
                .unwrap();
            assert!(text(&opened).contains("0123456789abcdef0123456789abcdef"));
        }
        let err = without_old.open_record("r", "a/s", &sealed).unwrap_err();
        assert!(err.to_string().contains("key `k1`"), "{err}");
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn only_history_records_carry_a_sealed_md5() {
        let dir = ".stategate/history/ws/x/a.tfstate/";
        assert_eq!(
            record_state(&format!("{dir}0000000003.json")),
            Some("ws/x/a.tfstate")
        );
        assert_eq!(
            record_state(&format!("{dir}newest.json")),
            Some("ws/x/a.tfstate")
        );
        assert_eq!(record_state(&format!("{dir}summary.json")), None);
        assert_eq!(record_state(&format!("{dir}0000000003.tfstate")), None);
        assert_eq!(record_state("a/0000000003.json"), None);
    }

    #[test]
    fn a_key_file_others_can_read_is_warned_about_or_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(&path, generate_key().unwrap()).unwrap();
        let mode = |m| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        for (m, lax, strict) in [
            (0o600, true, true),
            (0o400, true, true),
            (0o640, true, false),
            (0o644, true, false),
            (0o620, true, false),
        ] {
            mode(m);
            assert_eq!(
                check_key_file_mode(&path, "k", "s", false).is_ok(),
                lax,
                "{m:o}"
            );
            let strict_result = check_key_file_mode(&path, "k", "s", true);
            assert_eq!(strict_result.is_ok(), strict, "{m:o}");
            if let Err(e) = strict_result {
                let e = e.to_string();
                assert!(
                    e.contains(&path.display().to_string()) && e.contains("`s`"),
                    "{e}"
                );
            }
        }
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

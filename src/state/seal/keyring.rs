//! The configured keys and what they do to bytes: seal and open a body
//! whole or a segment at a time, seal and open the MD5 in a history
//! record.

use std::io::{BufWriter, Read, Write};
use std::sync::Arc;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use bytes::Bytes;

use super::format::{
    FORMAT_SEGMENTED, FORMAT_WHOLE, Header, KEY_LEN, MAGIC, NONCE_LEN, PREFIX_LEN, SEALED_DIGEST,
    SEGMENT, TAG_LEN, associated_data, digest_context, header_len, is_clear_md5, md5_field,
    segment_nonce, segmented_plain_len, tampered,
};
use crate::settings::{ConfigError, EncryptionSettings, KeySource};
use crate::stores::payload::{CHUNK_BYTES, FileBody, SPOOL_THRESHOLD, spool_dir};
use crate::stores::{Payload, StoreError};

/// One key, by id.
pub(super) struct Key {
    pub(super) id: String,
    pub(super) cipher: Aes256Gcm,
}

/// The configured keys: the first seals, all open.
pub struct Keyring {
    pub(super) keys: Vec<Key>,
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

/// Whether `text` ends in a key as [`decode_key`] reads one (base64 may
/// hold `/`, so a key given as a file's path may span its last names).
fn ends_in_a_key(text: &str) -> bool {
    let len = KEY_LEN.div_ceil(3) * 4;
    text.len() >= len
        && text.is_char_boundary(text.len() - len)
        && decode_key(&text[text.len() - len..]).is_ok()
}

/// Checks that only its owner may read or change a key file, as ssh does
/// for private keys: a key others can read is no secret, and one others
/// can change may be swapped. Such a file stops start-up under
/// `require_sealed` (naming `setting`) and is warned about otherwise.
pub(super) fn check_key_file_mode(
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
                        // A key written where its file's path goes is not shown.
                        let shown = match ends_in_a_key(&path.to_string_lossy()) {
                            true => "(not shown: it is shaped as a key)".to_string(),
                            false => path.display().to_string(),
                        };
                        ConfigError::invalid(
                            &from,
                            format!("key `{}`: cannot read {shown}: {e}", k.id),
                        )
                    })?;
                    check_key_file_mode(path, &k.id, &from, settings.require_sealed)?;
                    (text, from)
                }
                KeySource::Env(var) => (
                    env(var).ok_or_else(|| {
                        // A key written where its variable's name goes is not shown.
                        let var = match ends_in_a_key(var) {
                            true => "(not shown: it is shaped as a key)".to_string(),
                            false => crate::settings::shown_name(var),
                        };
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
    pub(super) fn seal_to(
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

    pub(super) fn open_as(
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
    pub(super) fn key_for(&self, store_key: &str, header: &Header) -> Result<&Key, StoreError> {
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
    pub(super) fn open_payload(
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
    pub(super) fn prove_opens(&self, store_key: &str, stored: &Payload) -> Result<(), StoreError> {
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
    pub(super) fn seal_payload(
        &self,
        logical: &str,
        plain: &Payload,
    ) -> Result<Payload, StoreError> {
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

/// Opens the `sealed_len` bytes of segments `sealed` gives into `out`.
/// Each segment is checked before its plaintext is written; the caller
/// discards `out` on an error.
pub(super) fn open_segments(
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

impl Keyring {
    /// A history record (or pointer) of `state` as it is stored: its MD5
    /// sealed, since the MD5 of a state in clear confirms a guess of its
    /// content to whoever can read the store. `None`: nothing to seal (no
    /// MD5, or one sealed already).
    pub(super) fn seal_record(
        &self,
        state: &str,
        record: &[u8],
    ) -> Result<Option<Bytes>, StoreError> {
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
    pub(super) fn open_record(
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
    pub(super) fn reseal_record(
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

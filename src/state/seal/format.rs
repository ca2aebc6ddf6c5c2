//! The sealed object format: the header, the nonces of a segmented
//! body, what a body is bound to, and which store keys hold what is
//! sealed (state bodies, kept versions, the MD5s in history records).

use crate::state::history::{HISTORY_PREFIX, POINTER_NAME};
use crate::state::key::{LOCK_SUFFIX, RESERVED_PREFIX};
use crate::stores::StoreError;

/// The first bytes of every sealed object (a state body starts with `{`).
pub(super) const MAGIC: &[u8; 4] = b"SGSL";
/// One AEAD message: bodies up to [`SPOOL_THRESHOLD`].
pub(super) const FORMAT_WHOLE: u8 = 1;
/// Segments (STREAM): larger bodies.
pub(super) const FORMAT_SEGMENTED: u8 = 2;
pub(super) const NONCE_LEN: usize = 12;
/// The random part of a segmented body's nonces.
pub(super) const PREFIX_LEN: usize = 7;
/// Plaintext bytes per segment of a segmented body.
pub(super) const SEGMENT: usize = 64 * 1024;
pub(super) const TAG_LEN: usize = 16;
/// Length of a key in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Bytes of a header with a key id of `id_len` bytes and `random` bytes
/// of nonce (the whole nonce, or a segmented body's prefix).
pub(super) fn header_len(id_len: usize, random: usize) -> usize {
    MAGIC.len() + 2 + id_len + random
}

/// The nonce of segment `index` of a segmented body whose nonce prefix
/// begins `base`.
pub(super) fn segment_nonce(base: &[u8; NONCE_LEN], index: u32, last: bool) -> [u8; NONCE_LEN] {
    let mut nonce = *base;
    nonce[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&index.to_be_bytes());
    nonce[NONCE_LEN - 1] = u8::from(last);
    nonce
}

/// The plaintext length of `sealed` bytes of segments; `None` when no
/// segmented body has that length.
pub(super) fn segmented_plain_len(sealed: u64) -> Option<u64> {
    let per = (SEGMENT + TAG_LEN) as u64;
    let segments = sealed.div_ceil(per);
    let last = sealed - (segments.checked_sub(1)? * per);
    (last > TAG_LEN as u64).then(|| sealed - segments * TAG_LEN as u64)
}

pub(super) fn tampered(store_key: &str, key_id: Option<&str>) -> StoreError {
    match key_id {
        // The keys are wrong, not the store: named as the setting to fix.
        Some(id) => StoreError::ConfigInvalid {
            setting: "encryption.keys",
            reason: format!(
                "{store_key} does not open with key `{id}`: the key configured as `{id}` is not \
                 the one that sealed it, or it was changed after sealing, or sealed for another state"
            ),
        },
        None => StoreError::unavailable(format!(
            "{store_key} does not open: it was changed after sealing, or sealed for another state"
        )),
    }
}

pub(super) fn associated_data(header: &[u8], logical: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + logical.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(logical.as_bytes());
    aad
}

/// The header of a sealed object.
pub(super) struct Header<'a> {
    pub(super) format: u8,
    pub(super) key_id: &'a str,
    /// The nonce; for a segmented body, its prefix followed by zeros.
    pub(super) nonce: [u8; NONCE_LEN],
    /// Its length in bytes, where the ciphertext starts.
    pub(super) len: usize,
}

impl<'a> Header<'a> {
    pub(super) fn parse(stored: &'a [u8]) -> Option<Self> {
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
pub(super) const SEALED_DIGEST: &str = "sealed:";

/// The `md5` of a history record, or of the newest record a pointer
/// holds; `None` in anything else.
pub(super) fn md5_field(record: &mut serde_json::Value) -> Option<&mut serde_json::Value> {
    let record = record.as_object_mut()?;
    if record.contains_key("newest") {
        record.get_mut("newest")?.get_mut("md5")
    } else {
        record.get_mut("md5")
    }
}

pub(super) fn is_clear_md5(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What sealing an MD5 of `state` binds it to: the state, and that it is a
/// digest, so it never opens as a body.
pub(super) fn digest_context(state: &str) -> String {
    format!("{state}\0md5")
}

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
//!
//! The format is in [`format`], the keys in [`keyring`], the store wrapper
//! in [`store`] and the rekey command in [`rekey`].

mod format;
mod keyring;
mod rekey;
mod store;
#[cfg(test)]
mod tests;

pub use format::{KEY_LEN, logical_key, record_state};
pub use keyring::{Keyring, Opened, decode_key, generate_key};
pub use rekey::{RekeyReport, rekey};
pub use store::SealedStore;

use crate::stores::{Payload, StoreError};

/// Refuses a body sealed where nothing opens it: a server started without
/// the `encryption` section on a store that has one. Above
/// [`SealedStore`] a body never starts with the seal's mark (it opened
/// it), so finding it means there are no keys. Serving the sealed bytes as
/// a state, or writing a clear one over it, would give Terraform garbage
/// and put secrets in clear beside the sealed history: 503 instead.
pub fn refuse_sealed_body(what: &str, body: &Payload) -> Result<(), StoreError> {
    let first = body
        .first_bytes(format::MAGIC.len())
        .map_err(|e| StoreError::unavailable(format!("reading {what}: {e}")))?;
    match first == format::MAGIC {
        true => Err(sealed_without_keys(what)),
        false => Ok(()),
    }
}

/// [`refuse_sealed_body`] for a history record's MD5, which above
/// [`SealedStore`] never starts with [`format::SEALED_DIGEST`].
pub fn refuse_sealed_record(what: &str, md5: &str) -> Result<(), StoreError> {
    match md5.starts_with(format::SEALED_DIGEST) {
        true => Err(sealed_without_keys(what)),
        false => Ok(()),
    }
}

fn sealed_without_keys(what: &str) -> StoreError {
    StoreError::unavailable(format!(
        "{what} is sealed (encryption at rest) and this server has no encryption keys; \
         start it with the `encryption` section that sealed it"
    ))
}

/// The reason, when `error` says that no configured key opens a stored
/// body: a key the body names is not listed, the listed key of that id is
/// not the one that sealed it, or `require_sealed` refuses a clear body.
/// A damaged body, or a store that failed, is not a key's fault.
pub fn key_unusable(error: &StoreError) -> Option<&str> {
    match error {
        StoreError::ConfigInvalid { setting, reason } if setting.starts_with("encryption") => {
            Some(reason)
        }
        _ => None,
    }
}

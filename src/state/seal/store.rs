//! [`SealedStore`]: the store wrapper that seals on the way in and opens
//! on the way out, as a layer over any store.

use crate::stores::OpSnapshot;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::format::{logical_key, record_state};
use super::keyring::{Keyring, Opened};
use crate::stores::keylock::KeyLock;
use crate::stores::{
    Capabilities, Change, Condition, Entry, Object, OpDelete, OpList, OpRead, OpWrite, Payload,
    Stopped, Store, StoreError, ThenChange, Version,
};

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

    pub(super) fn open_object(&self, key: &str, obj: Object) -> Result<Object, StoreError> {
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
    pub(super) fn seal_body(&self, key: &str, body: &[u8]) -> Result<Option<Bytes>, StoreError> {
        seal_bytes(&self.keys, key, body)
    }

    /// `body` as it is stored at `key`: sealed in memory when it is in
    /// memory, sealed into a spool file on a blocking thread when it is in
    /// a file, as it is when `key` holds no state body.
    pub(super) async fn sealed_payload(
        &self,
        key: &str,
        body: &Payload,
    ) -> Result<Payload, StoreError> {
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
    pub(super) async fn check_replaceable(
        &self,
        key: &str,
        condition: &Condition,
    ) -> Result<(), StoreError> {
        if !replaces_a_state(key, condition) {
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
    pub(super) fn plain_sizes(&self, mut entries: Vec<Entry>) -> Vec<Entry> {
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

    fn writes(&self) -> crate::stores::Writes {
        self.inner.writes()
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
        let mut writes = WriteSealer::new(&self.keys);
        for (at, change) in changes.into_iter().enumerate() {
            let stopped = |error| Stopped { at, error };
            let change = match change {
                Change::Write {
                    key,
                    body,
                    args,
                    same_as,
                } => {
                    self.check_replaceable(&key, &args.condition)
                        .await
                        .map_err(stopped)?;
                    writes.seal(key, body, args, same_as).map_err(stopped)?
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

    /// Sealed as `write` and `change_all` seal, then made by the store
    /// underneath as one `write_then_change` (on SQLite one transaction,
    /// so a crash keeps a state with its record or neither), when sealing
    /// the changes needs nothing read from the store: none replaces a
    /// state body, and every copy is of the body this call writes, whose
    /// sealed bytes open under the copy's key too (the same state). Any
    /// other changes are made after the write, as `change_all` makes them.
    async fn write_then_change(
        &self,
        key: &str,
        body: Payload,
        args: OpWrite,
        then: ThenChange,
    ) -> Result<(Version, Result<(), Stopped>), StoreError> {
        let sealed = self.sealed_payload(key, &body).await?;
        self.check_replaceable(key, &args.condition).await?;
        // The changes' shape does not depend on the version they name.
        let probe = Version(String::new());
        let in_step = then(&probe).iter().all(|change| match change {
            Change::Write { key, args, .. } => !replaces_a_state(key, &args.condition),
            Change::Delete { key, args } => !replaces_a_state(key, &args.condition),
            Change::Snapshot {
                from,
                from_version,
                to,
                ..
            } => copies_the_write(from, from_version, to, key, &probe),
        });
        if !in_step {
            let version = self.inner.write(key, sealed, args).await?;
            let changed = self.change_all(then(&version)).await;
            return Ok((version, changed));
        }
        // Where sealing stopped the changes, on the store's last build of
        // them; the changes before it are made.
        let stopped: Arc<Mutex<Option<Stopped>>> = Arc::default();
        let sealed_then: ThenChange = {
            let (keys, stopped) = (Arc::clone(&self.keys), Arc::clone(&stopped));
            let (written, sealed) = (key.to_string(), sealed.clone());
            Arc::new(move |version: &Version| {
                let mut writes = WriteSealer::new(&keys);
                let mut made = Vec::new();
                let mut stop = None;
                for (at, change) in then(version).into_iter().enumerate() {
                    let change = match change {
                        Change::Write {
                            key,
                            body,
                            args,
                            same_as,
                        } => writes.seal(key, body, args, same_as),
                        Change::Snapshot {
                            from,
                            from_version,
                            to,
                            ..
                        } => match copies_the_write(&from, &from_version, &to, &written, version) {
                            true => Ok(Change::Snapshot {
                                from,
                                from_version,
                                to,
                                body: sealed.clone(),
                            }),
                            false => Err(StoreError::unavailable(format!(
                                "{to}: a copy of another body than the one written is not sealed here"
                            ))),
                        },
                        delete @ Change::Delete { .. } => Ok(delete),
                    };
                    match change {
                        Ok(change) => made.push(change),
                        Err(error) => {
                            stop = Some(Stopped { at, error });
                            break;
                        }
                    }
                }
                *stopped.lock().unwrap_or_else(|e| e.into_inner()) = stop;
                made
            })
        };
        let (version, changed) = self
            .inner
            .write_then_change(key, sealed, args, sealed_then)
            .await?;
        let stop = stopped.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok((version, changed.and_then(|()| stop.map_or(Ok(()), Err))))
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

    async fn snapshot(&self, copy: OpSnapshot<'_>) -> Result<(), StoreError> {
        // A store that copies in place keeps the sealed bytes, which open
        // under `to` too (same logical key); one that writes `body` must
        // get it sealed.
        let sealed = self.sealed_payload(copy.to, copy.body).await?;
        self.inner
            .snapshot(OpSnapshot {
                body: &sealed,
                ..copy
            })
            .await
    }
}

/// `body` as it is stored at `key` when it is in memory: a record's MD5
/// sealed, a state body sealed; `None` when it is stored as it is.
fn seal_bytes(keys: &Keyring, key: &str, body: &[u8]) -> Result<Option<Bytes>, StoreError> {
    if let Some(state) = record_state(key) {
        return keys.seal_record(state, body);
    }
    match logical_key(key) {
        Some(logical) => Ok(Some(Bytes::from(keys.seal(logical, body)?))),
        None => Ok(None),
    }
}

/// Whether a change under `condition` at `key` replaces or deletes a state
/// object, which [`SealedStore::check_replaceable`] checks first.
fn replaces_a_state(key: &str, condition: &Condition) -> bool {
    !matches!(condition, Condition::IfAbsent) && logical_key(key) == Some(key)
}

/// Whether a copy of `from` at `from_version` into `to` copies the body
/// just written at `written` as `version`, into a key of the same state:
/// then its sealed bytes are the written ones.
fn copies_the_write(
    from: &str,
    from_version: &Version,
    to: &str,
    written: &str,
    version: &Version,
) -> bool {
    from == written && from_version == version && logical_key(to) == logical_key(written)
}

/// Seals the writes of one list of changes, in memory: each as
/// [`SealedStore::seal_body`] seals it, except that bytes an earlier write
/// of the list stored, named by `same_as`, are stored as that write's
/// sealed bytes (a record's MD5 is sealed to its state, which the pointer
/// shares), so the store may still link the two; sealed anew, they would
/// differ.
struct WriteSealer<'a> {
    keys: &'a Keyring,
    /// The writes sealed so far: key, bytes given, bytes stored.
    written: Vec<(String, Bytes, Bytes)>,
}

impl<'a> WriteSealer<'a> {
    fn new(keys: &'a Keyring) -> Self {
        WriteSealer {
            keys,
            written: Vec::new(),
        }
    }

    fn seal(
        &mut self,
        key: String,
        body: Bytes,
        args: OpWrite,
        same_as: Option<String>,
    ) -> Result<Change, StoreError> {
        let earlier = same_as.as_ref().and_then(|from| {
            self.written
                .iter()
                .find(|(k, given, _)| k == from && *given == body)
        });
        let (stored, same_as) = match earlier {
            Some((_, _, stored)) => (stored.clone(), same_as),
            None => {
                let stored = seal_bytes(self.keys, &key, &body)?;
                (stored.unwrap_or_else(|| body.clone()), None)
            }
        };
        self.written.push((key.clone(), body, stored.clone()));
        Ok(Change::Write {
            key,
            body: stored,
            args,
            same_as,
        })
    }
}

//! Bodies on their way into and out of a store, without holding them whole
//! in memory: a small body is a [`Bytes`], a large one an unnamed file.
//!
//! States of hundreds of megabytes exist, and a server that holds every
//! body in flight whole needs gigabytes for a handful of clients. An
//! incoming body is spooled ([`Spooler`]) to an unnamed temporary file
//! (`O_TMPFILE`: nothing is left behind by a crash) once it passes
//! [`SPOOL_THRESHOLD`]; the state layer checks it by reading it back in
//! small pieces, and stores that can stream copy it from there (the local
//! store in the kernel, with `copy_file_range`). A read that returns a file
//! (the local store's open file itself) is sent to the client a piece at a
//! time. Stores that cannot stream read a spooled body whole, once
//! ([`Payload::to_bytes`]): one copy per body in flight at most.
//!
//! A file payload is read with positioned reads (`pread`), so any number of
//! readers (a retried write, a history copy) can go over it independently.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};

use super::StoreError;

/// Bodies up to this size stay in memory; larger ones go to a file.
pub const SPOOL_THRESHOLD: usize = 1024 * 1024;

/// The size of the pieces a file payload is read and sent in.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Where spooled bodies go: the system's temporary directory (`TMPDIR`).
pub fn spool_dir() -> PathBuf {
    std::env::temp_dir()
}

/// A body: in memory, or in a file of known length.
#[derive(Clone, Debug)]
pub enum Payload {
    Memory(Bytes),
    File(Arc<FileBody>),
}

/// A body held in a file: an unnamed spool file, or a store's own file
/// opened for reading. Only read, never written, through this handle.
#[derive(Debug)]
pub struct FileBody {
    file: File,
    len: u64,
}

impl FileBody {
    /// A body of `len` bytes from the start of `file`.
    pub fn new(file: File, len: u64) -> Self {
        FileBody { file, len }
    }

    /// A name that opens the body's file again ([`reopen_path`]).
    pub(crate) fn reopen_path(&self) -> String {
        reopen_path(&self.file)
    }
}

/// The name through which this process opens `file` again, with an offset
/// of its own: `/proc/self/fd/N`, since a spool file has no name (for
/// clients that take a path, or that open a body once per attempt).
pub(crate) fn reopen_path(file: &impl std::os::fd::AsRawFd) -> String {
    format!("/proc/self/fd/{}", file.as_raw_fd())
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Payload::Memory(bytes)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload::Memory(Bytes::from(bytes))
    }
}

impl Payload {
    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Memory(b) => b.len() as u64,
            Payload::File(f) => f.len,
        }
    }

    /// Whether the body has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, where they are in memory.
    pub fn as_memory(&self) -> Option<&Bytes> {
        match self {
            Payload::Memory(b) => Some(b),
            Payload::File(_) => None,
        }
    }

    /// Up to `n` of the first bytes (fewer in a shorter body).
    pub fn first_bytes(&self, n: usize) -> io::Result<Vec<u8>> {
        match self {
            Payload::Memory(b) => Ok(b[..n.min(b.len())].to_vec()),
            Payload::File(f) => {
                let mut buf = vec![0u8; n.min(usize::try_from(f.len).unwrap_or(usize::MAX))];
                std::os::unix::fs::FileExt::read_exact_at(&f.file, &mut buf, 0)?;
                Ok(buf)
            }
        }
    }

    /// A reader from the first byte, independent of any other reader.
    pub fn reader(&self) -> PayloadReader {
        PayloadReader {
            payload: self.clone(),
            pos: 0,
        }
    }

    /// The whole body in memory: for stores that cannot stream, and for
    /// callers that need all of it at once. Reads a file on a blocking
    /// thread.
    pub async fn to_bytes(&self) -> Result<Bytes, StoreError> {
        match self {
            Payload::Memory(b) => Ok(b.clone()),
            Payload::File(_) => {
                let reader = self.reader();
                super::blocking(move || reader.read_all().map_err(read_failed)).await
            }
        }
    }

    /// The hex MD5 of the body, hashing a file a piece at a time on a
    /// blocking thread, and a large body in memory (a shared one: several
    /// megabytes) there too, so the threads serving connections are not
    /// held for milliseconds.
    pub async fn md5_hex(&self) -> Result<String, StoreError> {
        Ok(hex(&self.md5().await?))
    }

    /// The MD5 of the body, as [`Payload::md5_hex`] takes it.
    pub async fn md5(&self) -> Result<[u8; 16], StoreError> {
        match self {
            Payload::Memory(b) if b.len() <= CHUNK_BYTES => Ok(Md5::digest(b).into()),
            Payload::Memory(b) => {
                let b = b.clone();
                super::blocking(move || Ok(Md5::digest(&b).into())).await
            }
            Payload::File(_) => {
                let mut reader = self.reader();
                super::blocking(move || {
                    let mut hasher = Md5::new();
                    let mut buf = vec![0; CHUNK_BYTES];
                    loop {
                        let n = reader.read(&mut buf).map_err(read_failed)?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                    }
                    Ok(hasher.finalize().into())
                })
                .await
            }
        }
    }

    /// Writes the whole body to `out` at its current position: from
    /// memory, or from file to file inside the kernel where it can.
    pub fn copy_to(&self, out: &mut File) -> io::Result<()> {
        match self {
            Payload::Memory(b) => out.write_all(b),
            Payload::File(body) => {
                let mut offset = 0u64;
                while offset < body.len {
                    let want = usize::try_from(body.len - offset).unwrap_or(usize::MAX);
                    match rustix::fs::copy_file_range(
                        &body.file,
                        Some(&mut offset),
                        &*out,
                        None,
                        want,
                    ) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the body file ended early",
                            ));
                        }
                        Ok(_) => {}
                        // Another file system, or a kernel without it: copy
                        // through a buffer.
                        Err(
                            rustix::io::Errno::XDEV
                            | rustix::io::Errno::INVAL
                            | rustix::io::Errno::NOSYS
                            | rustix::io::Errno::OPNOTSUPP,
                        ) => {
                            let mut rest = PayloadReader {
                                payload: self.clone(),
                                pos: offset,
                            };
                            io::copy(&mut rest, out)?;
                            return Ok(());
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
        }
    }
}

fn read_failed(e: io::Error) -> StoreError {
    StoreError::unavailable(format!("reading a spooled body: {e}"))
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bodies read by the local and SQLite stores, kept so a state read again
/// and again (every plan, every `terraform_remote_state`) costs one copy
/// in memory rather than one per reader. A version names one content, so
/// an entry is either right or unused; only the stores whose versions are
/// never reused (local, SQLite) use it. A store still looks the version up
/// (a `stat`, a row's generation) on every read.
///
/// Two kinds, by size:
/// - small bodies (up to [`SPOOL_THRESHOLD`]) are held after their readers
///   are done, up to [`BODY_CACHE_BYTES`] in all;
/// - medium ones (up to [`SHARED_MAX`]) are held only while a reader is
///   sending them: the readers of one version share one copy, and it is
///   freed with the last of them, so a state fetched by hundreds of
///   clients at once is in memory once, and nothing stays once they are
///   served. Their bytes alive at once are bounded ([`SHARED_BYTES`]); a
///   reader past the bound, or of a larger body, streams its own.
#[derive(Default)]
pub struct BodyCache {
    held: std::sync::Mutex<CachedBodies>,
    shared: std::sync::Mutex<HashMap<String, Arc<SharedSlot>>>,
    /// Bytes of the shared bodies alive, counted down as each is freed.
    shared_live: Arc<AtomicUsize>,
}

#[derive(Default)]
struct CachedBodies {
    bodies: HashMap<String, (super::Version, Bytes)>,
    /// Bytes of all bodies held.
    bytes: usize,
}

/// Bytes the cache holds at most; it starts over when full.
const BODY_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Bodies up to this size are shared between their concurrent readers;
/// larger ones are sent a piece at a time, each reader on its own.
pub const SHARED_MAX: usize = 16 * 1024 * 1024;

/// Bytes of shared bodies alive at once at most.
const SHARED_BYTES: usize = 64 * 1024 * 1024;

/// Keys with a shared slot beyond which slots no reader holds are dropped.
const SHARED_SLOTS: usize = 256;

/// One key's shared body: the version it is of, and the body while anyone
/// sends it. Its lock is held while the body is read, so the other readers
/// of that version wait for it instead of reading it too.
struct SharedSlot {
    version: super::Version,
    body: std::sync::Mutex<Weak<SharedBody>>,
}

/// A shared body's bytes; freeing them gives their room back.
struct SharedBody {
    bytes: Vec<u8>,
    /// The room taken in `live` for these bytes.
    room: usize,
    live: Arc<AtomicUsize>,
}

impl Drop for SharedBody {
    fn drop(&mut self) {
        self.live.fetch_sub(self.room, Ordering::AcqRel);
    }
}

/// A reader's hold on a shared body, as the owner of its [`Bytes`].
struct SharedHold(Arc<SharedBody>);

impl AsRef<[u8]> for SharedHold {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes
    }
}

impl BodyCache {
    /// The body of `key` at `version`, if held.
    pub fn get(&self, key: &str, version: &super::Version) -> Option<Bytes> {
        let held = self.held.lock().expect("body cache");
        held.bodies
            .get(key)
            .filter(|(v, _)| v == version)
            .map(|(_, body)| body.clone())
    }

    /// Holds `body` as `key`'s content at `version` (bodies up to
    /// [`SPOOL_THRESHOLD`]).
    pub fn put(&self, key: &str, version: &super::Version, body: &Bytes) {
        if body.len() > SPOOL_THRESHOLD {
            return;
        }
        let mut held = self.held.lock().expect("body cache");
        if held.bytes + body.len() > BODY_CACHE_BYTES {
            held.bodies.clear();
            held.bytes = 0;
        }
        let old = held
            .bodies
            .insert(key.to_string(), (version.clone(), body.clone()));
        held.bytes = held.bytes + body.len() - old.map_or(0, |(_, b)| b.len());
    }

    /// The `len` bytes of `key` at `version` (at most [`SHARED_MAX`]),
    /// shared with the readers sending them now, or read by `load` when
    /// nobody is. A reader arriving while another loads that version waits
    /// for it. `Ok(None)` when the body is too large to share or the bound
    /// on shared bytes is reached: the caller sends its own copy a piece at
    /// a time. `load` must fill the buffer with exactly the version's body;
    /// it runs on the calling (blocking) thread.
    pub fn shared(
        &self,
        key: &str,
        version: &super::Version,
        len: u64,
        load: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<Option<Bytes>, StoreError> {
        let Ok(len) = usize::try_from(len) else {
            return Ok(None);
        };
        if len > SHARED_MAX {
            return Ok(None);
        }
        let slot = self.slot(key, version);
        // A reader that failed while loading leaves nothing behind: the
        // lock's poison says nothing about the weak reference it guards.
        let mut body = slot.body.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(alive) = body.upgrade() {
            return Ok(Some(Bytes::from_owner(SharedHold(alive))));
        }
        let before = self.shared_live.fetch_add(len, Ordering::AcqRel);
        if before + len > SHARED_BYTES {
            self.shared_live.fetch_sub(len, Ordering::AcqRel);
            return Ok(None);
        }
        // From here the room is given back when `loaded` is dropped,
        // whether or not the load succeeds.
        let mut loaded = SharedBody {
            bytes: Vec::new(),
            room: len,
            live: Arc::clone(&self.shared_live),
        };
        loaded.bytes.reserve_exact(len);
        load(&mut loaded.bytes)?;
        if loaded.bytes.len() != len {
            return Err(StoreError::unavailable(format!(
                "reading {key}: {} bytes where {len} were expected",
                loaded.bytes.len()
            )));
        }
        let loaded = Arc::new(loaded);
        *body = Arc::downgrade(&loaded);
        Ok(Some(Bytes::from_owner(SharedHold(loaded))))
    }

    /// `key`'s slot for `version`, replacing one of another version.
    fn slot(&self, key: &str, version: &super::Version) -> Arc<SharedSlot> {
        let mut slots = self.shared.lock().expect("shared bodies");
        if let Some(slot) = slots.get(key).filter(|s| &s.version == version) {
            return Arc::clone(slot);
        }
        if slots.len() >= SHARED_SLOTS {
            // Slots only this map holds, with no body alive, serve nobody.
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.body.try_lock().map_or(true, |b| b.strong_count() > 0)
            });
        }
        let slot = Arc::new(SharedSlot {
            version: version.clone(),
            body: std::sync::Mutex::new(Weak::new()),
        });
        slots.insert(key.to_string(), Arc::clone(&slot));
        slot
    }
}

/// Reads a [`Payload`] from a position of its own.
pub struct PayloadReader {
    payload: Payload,
    pos: u64,
}

impl PayloadReader {
    /// The same reader, moved on to byte `pos`.
    pub fn skip_to(mut self, pos: u64) -> Self {
        self.pos = pos.min(self.payload.len());
        self
    }

    /// The rest of the body, in memory.
    fn read_all(mut self) -> io::Result<Bytes> {
        let rest = self.payload.len().saturating_sub(self.pos);
        let mut out = Vec::with_capacity(usize::try_from(rest).unwrap_or(0));
        self.read_to_end(&mut out)?;
        Ok(Bytes::from(out))
    }

    /// The next piece of at most [`CHUNK_BYTES`], `None` at the end.
    pub fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let rest = self.payload.len().saturating_sub(self.pos);
        if rest == 0 {
            return Ok(None);
        }
        let size = usize::try_from(rest).unwrap_or(usize::MAX).min(CHUNK_BYTES);
        let mut buf = BytesMut::zeroed(size);
        let n = self.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the body file ended early",
            ));
        }
        buf.truncate(n);
        Ok(Some(buf.freeze()))
    }
}

impl Read for PayloadReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.payload.len().saturating_sub(self.pos);
        let want = usize::try_from(rest).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = match &self.payload {
            Payload::Memory(b) => {
                let start = self.pos as usize;
                buf[..want].copy_from_slice(&b[start..start + want]);
                want
            }
            Payload::File(f) => f.file.read_at(&mut buf[..want], self.pos)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// How much a [`Spooler`] gathers before it writes to its file.
const SPOOL_WRITE_BYTES: usize = 256 * 1024;

/// Builds a [`Payload`] from pieces as they arrive: in memory up to
/// [`SPOOL_THRESHOLD`], then in an unnamed file in `dir`, written on a
/// blocking thread a few hundred kilobytes at a time.
pub struct Spooler {
    dir: PathBuf,
    memory: BytesMut,
    file: Option<Arc<File>>,
    written: u64,
}

impl Spooler {
    /// A spooler whose files go to `dir` (the system's temporary directory
    /// unless configured).
    pub fn new(dir: &Path) -> Self {
        Spooler {
            dir: dir.to_path_buf(),
            memory: BytesMut::new(),
            file: None,
            written: 0,
        }
    }

    /// Takes the next piece of the body.
    pub async fn push(&mut self, piece: &[u8]) -> io::Result<()> {
        self.memory.extend_from_slice(piece);
        match self.file {
            None if self.memory.len() <= SPOOL_THRESHOLD => Ok(()),
            None => {
                let dir = self.dir.clone();
                let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
                    .await
                    .map_err(io::Error::other)??;
                self.file = Some(Arc::new(file));
                self.flush().await
            }
            Some(_) if self.memory.len() >= SPOOL_WRITE_BYTES => self.flush().await,
            Some(_) => Ok(()),
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        let Some(file) = self.file.clone() else {
            return Ok(());
        };
        let piece = self.memory.split().freeze();
        let at = self.written;
        self.written += piece.len() as u64;
        tokio::task::spawn_blocking(move || file.write_all_at(&piece, at))
            .await
            .map_err(io::Error::other)?
    }

    /// The whole body.
    pub async fn finish(mut self) -> io::Result<Payload> {
        if self.file.is_none() {
            return Ok(Payload::Memory(self.memory.freeze()));
        }
        self.flush().await?;
        let file = self.file.take().expect("spooling to a file");
        let file =
            Arc::try_unwrap(file).map_err(|_| io::Error::other("spool file still shared"))?;
        Ok(Payload::File(Arc::new(FileBody::new(file, self.written))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn spool(data: &[u8], piece: usize) -> Payload {
        let dir = tempfile::tempdir().unwrap();
        let mut spooler = Spooler::new(dir.path());
        for chunk in data.chunks(piece.max(1)) {
            spooler.push(chunk).await.unwrap();
        }
        let payload = spooler.finish().await.unwrap();
        // Unnamed: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        payload
    }

    #[tokio::test]
    async fn small_bodies_stay_in_memory_and_large_ones_spool() {
        let small = body(SPOOL_THRESHOLD);
        let p = spool(&small, 64 * 1024).await;
        assert!(p.as_memory().is_some());
        assert_eq!(p.to_bytes().await.unwrap(), small);

        let large = body(SPOOL_THRESHOLD * 3 + 17);
        let p = spool(&large, 65_537).await;
        assert!(p.as_memory().is_none());
        assert_eq!(p.len(), large.len() as u64);
        assert_eq!(p.to_bytes().await.unwrap(), large);
        assert_eq!(p.md5_hex().await.unwrap(), hex(&Md5::digest(&large)));
        let in_memory = Payload::from(large.clone());
        assert_eq!(
            in_memory.md5_hex().await.unwrap(),
            hex(&Md5::digest(&large))
        );
        // Readers are independent of each other.
        let mut a = p.reader();
        let mut b = p.reader();
        let mut first = [0u8; 10];
        a.read_exact(&mut first).unwrap();
        let mut all = Vec::new();
        b.read_to_end(&mut all).unwrap();
        assert_eq!(all, large);
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).unwrap();
        assert_eq!([&first[..], &rest[..]].concat(), large);
    }

    #[test]
    fn the_body_cache_answers_only_for_the_version_it_holds() {
        use super::super::Version;
        let cache = BodyCache::default();
        let (v1, v2) = (Version("1".into()), Version("2".into()));
        let body = Bytes::from_static(b"{\"serial\":1}");
        cache.put("a", &v1, &body);
        assert_eq!(cache.get("a", &v1), Some(body.clone()));
        assert_eq!(cache.get("a", &v2), None, "another version");
        assert_eq!(cache.get("b", &v1), None, "another key");
        cache.put("a", &v2, &Bytes::from_static(b"two"));
        assert_eq!(cache.get("a", &v1), None, "replaced");
        // Large bodies are not held; a full cache starts over.
        cache.put("big", &v1, &Bytes::from(vec![0u8; SPOOL_THRESHOLD + 1]));
        assert_eq!(cache.get("big", &v1), None);
        let mib = Bytes::from(vec![0u8; SPOOL_THRESHOLD]);
        for i in 0..BODY_CACHE_BYTES / SPOOL_THRESHOLD + 1 {
            cache.put(&format!("k{i}"), &v1, &mib);
        }
        assert_eq!(cache.get("a", &v2), None, "cleared when full");
        assert!(cache.held.lock().unwrap().bytes <= BODY_CACHE_BYTES);
    }

    #[test]
    fn readers_of_one_version_share_one_copy_while_they_hold_it() {
        use super::super::Version;
        let cache = BodyCache::default();
        let (v1, v2) = (Version("1".into()), Version("2".into()));
        let size = SPOOL_THRESHOLD * 5;
        let loads = std::cell::Cell::new(0);
        let load = |fill: u8| {
            let loads = &loads;
            move |buf: &mut Vec<u8>| {
                loads.set(loads.get() + 1);
                buf.resize(size, fill);
                Ok(())
            }
        };
        // A body shared by this cache (not too large, within the bound).
        let share = |key: &str, version: &Version, fill: u8| {
            cache
                .shared(key, version, size as u64, load(fill))
                .unwrap()
                .unwrap()
        };
        let a = share("s", &v1, 1);
        let b = share("s", &v1, 9);
        assert_eq!(loads.get(), 1, "the second reader shares the first's copy");
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(cache.shared_live.load(Ordering::Acquire), size);
        // Another version is another body.
        let c = share("s", &v2, 2);
        assert_eq!((loads.get(), c[0]), (2, 2));
        // Freed with its last reader, and read again after that.
        drop((a, b));
        assert_eq!(cache.shared_live.load(Ordering::Acquire), size);
        let d = share("s", &v1, 3);
        assert_eq!((loads.get(), d[0]), (3, 3));
        drop((c, d));
        assert_eq!(cache.shared_live.load(Ordering::Acquire), 0);
        // Too large to share, or past the bound: the caller streams.
        let big = (SHARED_MAX + 1) as u64;
        assert!(cache.shared("big", &v1, big, load(4)).unwrap().is_none());
        let held: Vec<Bytes> = (0..SHARED_BYTES / size)
            .map(|i| share(&format!("k{i}"), &v1, 5))
            .collect();
        assert!(
            cache
                .shared("one-more", &v1, size as u64, load(6))
                .unwrap()
                .is_none()
        );
        // A failed load gives its room back.
        drop(held);
        let failed = cache.shared("bad", &v1, size as u64, |_| {
            Err(StoreError::unavailable("the disk went away"))
        });
        assert!(failed.is_err());
        let short = cache.shared("short", &v1, size as u64, |buf| {
            buf.push(1);
            Ok(())
        });
        assert!(short.is_err(), "a body of another length is refused");
        assert_eq!(cache.shared_live.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn copies_and_chunks_give_the_same_bytes() {
        let large = body(SPOOL_THRESHOLD * 2 + 5);
        for p in [Payload::from(large.clone()), spool(&large, 4096).await] {
            let mut out = tempfile::tempfile().unwrap();
            p.copy_to(&mut out).unwrap();
            let mut copied = Vec::new();
            std::io::Seek::rewind(&mut out).unwrap();
            out.read_to_end(&mut copied).unwrap();
            assert_eq!(copied, large);
            let mut reader = p.reader();
            let mut chunked = Vec::new();
            while let Some(chunk) = reader.next_chunk().unwrap() {
                assert!(chunk.len() <= CHUNK_BYTES);
                chunked.extend_from_slice(&chunk);
            }
            assert_eq!(chunked, large);
        }
    }
}

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

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// blocking thread.
    pub async fn md5_hex(&self) -> Result<String, StoreError> {
        match self {
            Payload::Memory(b) => Ok(hex(&Md5::digest(b))),
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
                    Ok(hex(&hasher.finalize()))
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

/// Small bodies last read, by store key and version, so a state read
/// again and again (every plan, every `terraform_remote_state`) is sent
/// from memory while its version stays the same: a store still looks the
/// version up (a `stat`, a row's generation), but reads no bytes. A
/// version names one content, so an entry is either right or unused.
/// Only the stores whose versions are never reused (local, SQLite) use it.
#[derive(Default)]
pub struct BodyCache(std::sync::Mutex<CachedBodies>);

#[derive(Default)]
struct CachedBodies {
    bodies: std::collections::HashMap<String, (super::Version, Bytes)>,
    /// Bytes of all bodies held.
    bytes: usize,
}

/// Bytes the cache holds at most; it starts over when full.
const BODY_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl BodyCache {
    /// The body of `key` at `version`, if held.
    pub fn get(&self, key: &str, version: &super::Version) -> Option<Bytes> {
        let held = self.0.lock().expect("body cache");
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
        let mut held = self.0.lock().expect("body cache");
        if held.bytes + body.len() > BODY_CACHE_BYTES {
            held.bodies.clear();
            held.bytes = 0;
        }
        let old = held
            .bodies
            .insert(key.to_string(), (version.clone(), body.clone()));
        held.bytes = held.bytes + body.len() - old.map_or(0, |(_, b)| b.len());
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
        assert!(cache.0.lock().unwrap().bytes <= BODY_CACHE_BYTES);
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

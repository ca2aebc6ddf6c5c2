//! Exclusive locks per key between threads and processes on one machine,
//! for the stores that live in files (local, SQLite).
//!
//! A key's lock is a one-byte write lock, at an offset derived from the key,
//! on one shared lock file, taken as an open file description lock
//! (`F_OFD_SETLK`, Linux 3.15 and later). Such a lock belongs to the open
//! file description, not to the process, so two opens of the file in one
//! process exclude each other like two processes do, and it is released
//! when its description is closed: by the holder, or by the kernel when
//! the holder dies. Nothing is created or deleted per key, so a busy store
//! does not churn inodes or directory entries, and a crashed holder never
//! blocks anyone.
//!
//! The offset is the first 62 bits of the key's MD5, the same in every
//! process and every version of stategate; two keys sharing an offset
//! (about one pair in 2^31 among 2^16 busy keys) only wait for each other.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use rustix::fs::{Mode, OFlags};

use super::StoreError;

/// A lock file in a directory; each lock opens it anew.
pub struct KeyLocks {
    /// The directory holding the lock file.
    dir: OwnedFd,
    /// The lock file's name in `dir`.
    name: String,
}

/// A held key lock: released when dropped (its file description closes).
#[derive(Debug)]
pub struct KeyLock(#[allow(dead_code)] OwnedFd);

/// The byte of the lock file that stands for `key`.
fn offset(key: &str) -> i64 {
    let digest = Md5::digest(key.as_bytes());
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head >> 2) as i64
}

impl KeyLocks {
    /// Uses (creating if needed) the file `name` in `dir`.
    pub fn open(dir: OwnedFd, name: impl Into<String>) -> io::Result<Self> {
        let locks = KeyLocks {
            dir,
            name: name.into(),
        };
        drop(locks.open_file()?);
        Ok(locks)
    }

    /// Names the lock file in `dir` without creating it, for a store
    /// opened for reading only, which never locks (the file is created at
    /// the first lock all the same).
    pub fn unopened(dir: OwnedFd, name: impl Into<String>) -> Self {
        KeyLocks {
            dir,
            name: name.into(),
        }
    }

    fn open_file(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.dir,
            self.name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )?)
    }

    /// Takes `key`'s lock, waiting as long as it is held. For short
    /// critical sections only (a check and a rename): it blocks the thread.
    pub fn lock(&self, key: &str) -> io::Result<KeyLock> {
        let file = self.open_file()?;
        set_lock(&file, offset(key), true)?;
        Ok(KeyLock(file))
    }

    /// Takes `key`'s lock if nobody holds it; `None` otherwise.
    pub fn try_lock(&self, key: &str) -> io::Result<Option<KeyLock>> {
        let file = self.open_file()?;
        match set_lock(&file, offset(key), false) {
            Ok(()) => Ok(Some(KeyLock(file))),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes `key`'s lock for a long critical section (a write with its
    /// history), polling without holding a thread while it is held, for at
    /// most `wait`; then a 503 naming the key. Each try is made on the
    /// calling thread: it opens the lock file (made when the store opened)
    /// and asks for the lock without waiting, two system calls that never
    /// wait for the disk, where handing them to a blocking thread and back
    /// cost two switches of thread.
    pub async fn lease(&self, key: &str, wait: Duration) -> Result<KeyLock, StoreError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let taken = self
                .try_lock(key)
                .map_err(|e| StoreError::of_io(&format!("taking the lease of {key}"), &e))?;
            if let Some(lock) = taken {
                return Ok(lock);
            }
            if started.elapsed() >= wait {
                return Err(StoreError::unavailable(format!(
                    "{key} stayed busy for {}s; try again",
                    wait.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// Sets a one-byte write lock at `start` on the open file description of
/// `file`, waiting for it when `wait`.
fn set_lock(file: &OwnedFd, start: i64, wait: bool) -> io::Result<()> {
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct;
    // `l_pid` must be 0 for open file description locks.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start;
    lock.l_len = 1;
    let command = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: the descriptor is open for the whole call, and `lock` is a
        // valid `flock` that outlives it.
        let result = unsafe { libc::fcntl(file.as_raw_fd(), command, &lock) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn locks(dir: &std::path::Path) -> KeyLocks {
        let fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        KeyLocks::open(fd, "locks").unwrap()
    }

    #[test]
    fn a_key_is_held_once_until_dropped_and_other_keys_are_free() {
        let dir = tempfile::tempdir().unwrap();
        let a = locks(dir.path());
        // A second handle on the same file, as another process would have.
        let b = locks(dir.path());
        let held = a.try_lock("states/one").unwrap().expect("free at first");
        assert!(a.try_lock("states/one").unwrap().is_none(), "same handle");
        assert!(b.try_lock("states/one").unwrap().is_none(), "other handle");
        let other = b
            .try_lock("states/two")
            .unwrap()
            .expect("another key is free");
        drop(held);
        assert!(
            b.try_lock("states/one").unwrap().is_some(),
            "released on drop"
        );
        drop(other);
    }

    #[test]
    fn offsets_are_fixed_and_spread() {
        // Every process and every release must agree on a key's byte.
        assert_eq!(offset("a"), 0x0cc1_75b9_c0f1_b6a8 >> 2);
        assert_ne!(offset("states/one"), offset("states/two"));
        assert!(offset("x") >= 0);
    }

    #[test]
    fn a_blocking_lock_waits_for_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Arc::new(locks(dir.path()));
        let held = locks.lock("k").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let locks = Arc::clone(&locks);
            std::thread::spawn(move || {
                let lock = locks.lock("k").unwrap();
                tx.send(()).unwrap();
                drop(lock);
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "must wait"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("taken after release");
        waiter.join().unwrap();
    }

    #[tokio::test]
    async fn a_lease_gives_up_with_a_503_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Arc::new(locks(dir.path()));
        let _held = locks.lock("k").unwrap();
        let e = locks
            .lease("k", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(e.is_unavailable() && e.to_string().contains("busy"), "{e}");
        assert!(locks.lease("other", Duration::ZERO).await.is_ok());
    }
}

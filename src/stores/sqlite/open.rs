//! How the database file is opened besides the usual way: read-only (on a
//! full or read-only file system, or when the store takes no writes), and
//! the file of write leases beside it.

use std::path::Path;

use rusqlite::Connection;

use super::BUSY_TIMEOUT;
use super::schema::check_made_by_stategate;
use crate::stores::keylock::KeyLocks;

/// A read-only connection to the database file `path`. Reading a database
/// in WAL mode takes its shared-memory file (the log's index), which a full
/// or read-only file system may not let SQLite make. Without one the file
/// is read as it is on disk when no log could hold newer pages: the log is
/// empty or missing (SQLite removes both when the last connection closes
/// cleanly), or the index is missing (SQLite removes the index only once
/// that close has copied the whole log into the file, and the log right
/// after: a process that ended in between leaves a log with nothing new).
pub(super) fn read_only_connection(path: &Path) -> Result<Connection, rusqlite::Error> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let usable = |conn: Connection| -> Result<Connection, rusqlite::Error> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        check_made_by_stategate(&conn)?;
        conn.query_row("SELECT count(*) FROM generation", [], |_| Ok(()))?;
        Ok(conn)
    };
    let tried = Connection::open_with_flags(path, flags).and_then(usable);
    let beside = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let log_empty = std::fs::metadata(beside("-wal")).map_or(true, |m| m.len() == 0);
    let index_missing = !beside("-shm").exists();
    match tried {
        Err(_) if log_empty || index_missing => {
            let uri = format!("file:{}?immutable=1", uri_path(path));
            Connection::open_with_flags(uri, flags).and_then(usable)
        }
        tried => tried,
    }
}

/// `path` as the path of a `file:` URI: bytes other than unreserved ones
/// and `/` percent-encoded.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'_' | b'-' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The key locks on `<file>.leases` beside the database `path`.
pub(super) fn lease_file(path: &Path) -> std::io::Result<KeyLocks> {
    let dir = crate::settings::directory_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let dir = rustix::fs::open(
        dir,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    KeyLocks::open(dir, format!("{}.leases", name.to_string_lossy()))
}

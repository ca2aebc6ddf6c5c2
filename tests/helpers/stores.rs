//! Peers for the stores that need no server: a directory and a SQLite file,
//! each in its own temporary directory, inspected directly.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::Peer;

/// `storageType: local` in a fresh directory.
pub struct LocalPeer {
    dir: TempDir,
}

impl LocalPeer {
    pub fn new() -> LocalPeer {
        LocalPeer {
            dir: TempDir::new().expect("temp dir"),
        }
    }

    /// The store's root directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file holding the object `key`: the key with `+` appended, the
    /// mark that keeps the file of `a` off the directory of `a/b`.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root().join(format!("{key}+"))
    }
}

/// Sets the modification time of the file at `path` to `ago` before now,
/// as if the store had written it then.
pub fn backdate(path: &Path, ago: std::time::Duration) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.set_modified(std::time::SystemTime::now() - ago)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

/// Every file below `root`, as relative paths.
pub fn files_below(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

impl Peer for LocalPeer {
    fn storage_type(&self) -> &str {
        "local"
    }

    fn settings(&self) -> Vec<(String, String)> {
        vec![("path".into(), self.root().display().to_string())]
    }

    fn object_keys(&self) -> Vec<String> {
        // The store's own temporary and guard files are not objects; any
        // other file without the mark is shown as it is, so that a test
        // sees what should not be there.
        let mut keys: Vec<String> = files_below(&self.root())
            .into_iter()
            .filter(|k| !k.starts_with(".stategate/local/"))
            .map(|k| k.strip_suffix('+').map(str::to_string).unwrap_or(k))
            .collect();
        keys.sort();
        keys
    }

    /// Replaces the file as a careful tool does (new file, then rename),
    /// never in place: the README asks that of anything writing there.
    fn object_bytes(&self, key: &str) -> Vec<u8> {
        std::fs::read(self.object_path(key)).expect("read the object's file")
    }

    fn put_object(&self, key: &str, body: &[u8]) {
        let path = self.object_path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("external-tmp");
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
}

/// `storageType: sqlite` in a fresh directory.
pub struct SqlitePeer {
    dir: TempDir,
}

impl SqlitePeer {
    pub fn new() -> SqlitePeer {
        SqlitePeer {
            dir: TempDir::new().expect("temp dir"),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("states.db")
    }
}

impl Peer for SqlitePeer {
    fn storage_type(&self) -> &str {
        "sqlite"
    }

    fn settings(&self) -> Vec<(String, String)> {
        vec![("path".into(), self.db().display().to_string())]
    }

    fn object_keys(&self) -> Vec<String> {
        if !self.db().exists() {
            return Vec::new();
        }
        let conn = rusqlite::Connection::open(self.db()).expect("open database");
        let mut stmt = conn
            .prepare("SELECT key FROM objects ORDER BY key")
            .expect("query");
        stmt.query_map([], |r| r.get::<_, String>(0))
            .expect("rows")
            .map(Result::unwrap)
            .collect()
    }

    fn object_bytes(&self, key: &str) -> Vec<u8> {
        let conn = rusqlite::Connection::open(self.db()).expect("open database");
        conn.query_row(
            "SELECT b.body FROM objects o JOIN bodies b ON b.id = o.body_id WHERE o.key = ?1",
            [key],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .expect("the object's row")
    }

    fn put_object(&self, key: &str, body: &[u8]) {
        let mut conn = rusqlite::Connection::open(self.db()).expect("open database");
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let tx = conn.transaction().unwrap();
        let generation: i64 = tx
            .query_row(
                "UPDATE generation SET last = last + 1 RETURNING last",
                [],
                |r| r.get(0),
            )
            .unwrap();
        // As the store writes: a body row of its own, and the one the
        // object named before let go.
        let before: Option<i64> = tx
            .query_row("SELECT body_id FROM objects WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .ok();
        tx.execute("INSERT INTO bodies (body) VALUES (?1)", [body])
            .unwrap();
        tx.execute(
            "INSERT INTO objects (key, generation, modified_ns, size, body_id)
             VALUES (?1, ?2, 0, ?3, last_insert_rowid())
             ON CONFLICT (key) DO UPDATE SET
                 generation = excluded.generation, size = excluded.size,
                 body_id = excluded.body_id",
            rusqlite::params![key, generation, body.len() as i64],
        )
        .unwrap();
        if let Some(before) = before {
            tx.execute(
                "DELETE FROM bodies WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM objects WHERE body_id = ?1)",
                [before],
            )
            .unwrap();
        }
        tx.commit().expect("write a row behind stategate's back");
    }
}

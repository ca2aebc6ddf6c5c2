//! Private database servers for the db store's tests: one PostgreSQL and
//! one MariaDB per test binary, started on first use in temporary
//! directories, on free ports of 127.0.0.1, never the machine's own
//! services. Each [`DbPeer`] gets its own database on the shared server, so
//! tests run side by side without seeing each other's rows. A test that
//! stops its server (the outage test) starts a [`DbServer`] of its own.
//!
//! Statics are never dropped, so no destructor can stop a server when the
//! test binary exits: each server gets a small watchdog shell process that
//! waits for the test process to go, then stops the server and removes
//! its directory.
//!
//! Peers look into the store with the `psql` and `mariadb` command-line
//! clients as the administrator, independent of stategate's code.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Peer;

/// The login stategate uses, with every character a URL treats specially,
/// to prove the password is passed as it is.
pub const USER: &str = "stategate";
pub const PASSWORD: &str = "Sg@:/?#%&pw=1";

/// The table prefix of the peers (stategate's default).
pub const PREFIX: &str = "stategate_";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mariadb,
}

impl Engine {
    /// The `dbType` value.
    pub fn db_type(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mariadb => "mysql",
        }
    }
}

/// One private database server process.
pub struct DbServer {
    pub engine: Engine,
    pub port: u16,
    /// Holds the data directory, the socket and the logs.
    dir: PathBuf,
    child: Mutex<Option<Child>>,
    /// More server arguments (TLS files).
    extra: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn postgres_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.flatten()
                .map(|d| d.path().join("bin"))
                .filter(|b| b.join("postgres").exists() && b.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("PostgreSQL server binaries are missing under /usr/lib/postgresql/*/bin: install Debian's postgresql (postgresql-15) package, or run scripts/test.sh")
    })
}

fn mariadbd() -> PathBuf {
    ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("mariadbd is missing: install Debian's mariadb-server and mariadb-client packages, or run scripts/test.sh")
        })
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// uid and gid of the `postgres` user (initdb refuses to run as root).
pub fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id(1)");
        assert!(
            out.status.success(),
            "no `postgres` user to run PostgreSQL as: install Debian's postgresql package"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl DbServer {
    /// Starts a fresh server with the stategate login created.
    pub fn start(engine: Engine) -> DbServer {
        Self::start_with(engine, &[])
    }

    /// [`DbServer::start`] with more server arguments.
    pub fn start_with(engine: Engine, extra: &[String]) -> DbServer {
        let dir = tempfile::Builder::new()
            .prefix(match engine {
                Engine::Postgres => "stategate-pg-",
                Engine::Mariadb => "stategate-mariadb-",
            })
            .tempdir()
            .expect("temp dir")
            .keep();
        let server = DbServer {
            engine,
            port: free_port(),
            dir,
            child: Mutex::new(None),
            extra: extra.to_vec(),
        };
        server.init();
        server.spawn();
        server.watch();
        server.create_login();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn mariadb_socket(&self) -> PathBuf {
        self.socket_dir().join("mariadb.sock")
    }

    fn pid_file(&self) -> PathBuf {
        match self.engine {
            Engine::Postgres => self.data().join("postmaster.pid"),
            Engine::Mariadb => self.socket_dir().join("mariadb.pid"),
        }
    }

    fn as_postgres(&self, cmd: &mut Command) {
        if is_root() {
            let (uid, gid) = postgres_ids();
            cmd.uid(uid).gid(gid);
        }
    }

    fn init(&self) {
        std::fs::create_dir_all(self.socket_dir()).unwrap();
        match self.engine {
            Engine::Postgres => {
                let bin = postgres_bin();
                if is_root() {
                    let (uid, gid) = postgres_ids();
                    run_checked(
                        Command::new("chown").args([
                            "-R",
                            &format!("{uid}:{gid}"),
                            &self.dir.display().to_string(),
                        ]),
                        "chown the PostgreSQL directory",
                    );
                }
                let mut cmd = Command::new(bin.join("initdb"));
                cmd.args(["-D", &self.data().display().to_string()])
                    .args(["-U", "postgres", "-E", "UTF8", "--locale=C"])
                    .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
                self.as_postgres(&mut cmd);
                run_checked(&mut cmd, "initdb");
            }
            Engine::Mariadb => {
                let _ = mariadbd();
                run_checked(
                    Command::new("mariadb-install-db")
                        .arg("--no-defaults")
                        .arg(format!("--datadir={}", self.data().display()))
                        .args([
                            "--user=root",
                            "--auth-root-authentication-method=normal",
                            "--skip-test-db",
                        ]),
                    "mariadb-install-db",
                );
            }
        }
    }

    fn spawn(&self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let mut cmd = match self.engine {
            Engine::Postgres => {
                let mut cmd = Command::new(postgres_bin().join("postgres"));
                cmd.args(["-D", &self.data().display().to_string()])
                    .args(["-p", &self.port.to_string()])
                    .args(["-k", &self.socket_dir().display().to_string()])
                    .args(["-c", "listen_addresses=127.0.0.1"])
                    .args(["-c", "max_connections=300"])
                    // Test data need not survive a power cut.
                    .args(["-c", "fsync=off", "-c", "synchronous_commit=off"]);
                self.as_postgres(&mut cmd);
                cmd
            }
            Engine::Mariadb => {
                let mut cmd = Command::new(mariadbd());
                // Default settings otherwise: max_allowed_packet stays 16 MiB.
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", self.data().display()))
                    .arg(format!("--socket={}", self.mariadb_socket().display()))
                    .arg(format!("--pid-file={}", self.pid_file().display()))
                    .arg(format!("--port={}", self.port))
                    .args([
                        "--user=root",
                        "--bind-address=127.0.0.1",
                        "--skip-name-resolve",
                        "--max-connections=300",
                        "--innodb-flush-log-at-trx-commit=2",
                        "--innodb-buffer-pool-size=64M",
                    ]);
                cmd
            }
        };
        let child = cmd
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the database server");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.sql(None, "SELECT 1").is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
            {
                panic!(
                    "the {:?} server exited ({status}):\n{}",
                    self.engine,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the {:?} server did not come up:\n{}",
                self.engine,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server when the test process is gone, whatever way it
    /// ended, and removes its directory. The watchdog outlives this process
    /// by design, so it is never waited for.
    #[allow(clippy::zombie_processes)]
    fn watch(&self) {
        let script = format!(
            "while kill -0 {test} 2>/dev/null; do sleep 1; done; \
             pid=$(head -n 1 '{pidfile}' 2>/dev/null); \
             [ -n \"$pid\" ] && kill -{signal} \"$pid\" 2>/dev/null; \
             for i in 1 2 3 4 5 6 7 8 9 10; do [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null || break; sleep 1; done; \
             [ -n \"$pid\" ] && kill -KILL \"$pid\" 2>/dev/null; \
             rm -rf '{dir}'",
            test = std::process::id(),
            signal = match self.engine {
                Engine::Postgres => "INT",
                Engine::Mariadb => "TERM",
            },
            pidfile = self.pid_file().display(),
            dir = self.dir.display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the database watchdog");
    }

    fn create_login(&self) {
        let sql = match self.engine {
            Engine::Postgres => format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"),
            Engine::Mariadb => format!("CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'"),
        };
        self.sql(None, &sql).expect("create the stategate login");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Runs SQL as the administrator, in `database` or the default one;
    /// returns the output rows, tab-separated.
    pub fn sql(&self, database: Option<&str>, sql: &str) -> Result<String, String> {
        let mut cmd = match self.engine {
            Engine::Postgres => {
                let mut cmd = Command::new("psql");
                cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                    .args(["-h", &self.socket_dir().display().to_string()])
                    .args(["-p", &self.port.to_string(), "-U", "postgres"])
                    .args(["-d", database.unwrap_or("postgres")]);
                cmd
            }
            Engine::Mariadb => {
                let mut cmd = Command::new("mariadb");
                cmd.arg("--no-defaults")
                    .arg(format!("--socket={}", self.mariadb_socket().display()))
                    .args(["-u", "root", "--batch", "--skip-column-names"]);
                if let Some(db) = database {
                    cmd.arg(db);
                }
                cmd
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!("run the database client: {e} (install postgresql-client / mariadb-client)")
            })?;
        let mut stdin = child.stdin.take().unwrap();
        let input = sql.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let _ = writer.join();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Stops the server and waits for it: PostgreSQL's fast shutdown
    /// (SIGINT; SIGTERM would wait for every client to leave), MariaDB's
    /// normal one, both closing the open connections.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap();
        if let Some(mut c) = child.take() {
            let signal = match self.engine {
                Engine::Postgres => "INT",
                Engine::Mariadb => "TERM",
            };
            super::signal(c.id(), signal);
            let _ = c.wait();
        }
    }

    /// Starts the stopped server again on the same port and data.
    pub fn start_again(&self) {
        self.spawn();
    }

    /// A new empty database that the stategate login owns.
    pub fn create_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "sg_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let sql = match self.engine {
            Engine::Postgres => format!("CREATE DATABASE {name} OWNER {USER}"),
            Engine::Mariadb => {
                format!("CREATE DATABASE {name}; GRANT ALL PRIVILEGES ON {name}.* TO '{USER}'@'%'")
            }
        };
        self.sql(None, &sql).expect("create a database");
        name
    }

    /// The directory the server keeps its files in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The shared server of an engine, started on first use.
pub fn shared(engine: Engine) -> Arc<DbServer> {
    static POSTGRES: OnceLock<Arc<DbServer>> = OnceLock::new();
    static MARIADB: OnceLock<Arc<DbServer>> = OnceLock::new();
    let cell = match engine {
        Engine::Postgres => &POSTGRES,
        Engine::Mariadb => &MARIADB,
    };
    Arc::clone(cell.get_or_init(|| Arc::new(DbServer::start(engine))))
}

/// `storageType: db` in a fresh database of a server. The password reaches
/// stategate through `STATEGATE_DB_PASSWORD`.
pub struct DbPeer {
    pub server: Arc<DbServer>,
    pub database: String,
}

impl DbPeer {
    /// A fresh database on the engine's shared server.
    pub fn new(engine: Engine) -> DbPeer {
        Self::on(shared(engine))
    }

    /// A fresh database on a given server.
    pub fn on(server: Arc<DbServer>) -> DbPeer {
        let database = server.create_database();
        DbPeer { server, database }
    }

    /// Runs SQL in this peer's database as the administrator.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        self.server.sql(Some(&self.database), sql)
    }

    /// The connection settings without the password.
    pub fn connection_settings(&self) -> Vec<(String, String)> {
        vec![
            ("dbType".into(), self.server.engine.db_type().into()),
            ("dbHost".into(), "127.0.0.1".into()),
            ("dbPort".into(), self.server.port.to_string()),
            ("dbName".into(), self.database.clone()),
            ("dbUser".into(), USER.into()),
            ("dbSSLMode".into(), "disable".into()),
        ]
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Peer for DbPeer {
    fn storage_type(&self) -> &str {
        "db"
    }

    fn settings(&self) -> Vec<(String, String)> {
        self.connection_settings()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("STATEGATE_DB_PASSWORD".into(), PASSWORD.into())]
    }

    fn object_keys(&self) -> Vec<String> {
        match self.sql(&format!(
            "SELECT object_key FROM {PREFIX}objects ORDER BY object_key"
        )) {
            Ok(out) => out.lines().map(str::to_string).collect(),
            // Before stategate first started there are no tables.
            Err(e) if e.contains("does not exist") || e.contains("doesn't exist") => Vec::new(),
            Err(e) => panic!("list the objects: {e}"),
        }
    }

    /// The body's chunks in order, read with the engine's own client.
    fn object_bytes(&self, key: &str) -> Vec<u8> {
        let p = PREFIX;
        let hex_of = match self.server.engine {
            Engine::Postgres => "encode(c.data, 'hex')",
            Engine::Mariadb => "HEX(c.data)",
        };
        let out = self
            .sql(&format!(
                "SELECT {hex_of} FROM {p}chunks c JOIN {p}objects o ON o.generation = c.generation \
                 WHERE o.object_key = '{key}' ORDER BY c.seq"
            ))
            .expect("read the object's chunks");
        let digits: String = out.split_whitespace().collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Writes a row as another tool following the documented schema would:
    /// a new generation, the object row and its chunk, in one transaction.
    fn put_object(&self, key: &str, body: &[u8]) {
        let p = PREFIX;
        let size = body.len();
        let data = hex(body);
        let sql = match self.server.engine {
            Engine::Postgres => format!(
                "BEGIN;
                 SELECT nextval('{p}generation') AS g \\gset
                 DELETE FROM {p}chunks WHERE generation IN (SELECT generation FROM {p}objects WHERE object_key = '{key}');
                 INSERT INTO {p}objects (object_key, generation, size, modified_ns) VALUES ('{key}', :g, {size}, 0)
                   ON CONFLICT (object_key) DO UPDATE SET generation = EXCLUDED.generation, size = EXCLUDED.size;
                 INSERT INTO {p}chunks (generation, seq, data) VALUES (:g, 0, decode('{data}', 'hex'));
                 COMMIT;"
            ),
            Engine::Mariadb => format!(
                "START TRANSACTION;
                 UPDATE {p}generation SET last = LAST_INSERT_ID(last + 1) WHERE id = 1;
                 SET @g = LAST_INSERT_ID();
                 DELETE FROM {p}chunks WHERE generation IN (SELECT generation FROM {p}objects WHERE object_key = '{key}');
                 INSERT INTO {p}objects (object_key, generation, size, modified_ns) VALUES ('{key}', @g, {size}, 0)
                   ON DUPLICATE KEY UPDATE generation = VALUES(generation), size = VALUES(size);
                 INSERT INTO {p}chunks (generation, seq, data) VALUES (@g, 0, X'{data}');
                 COMMIT;"
            ),
        };
        self.sql(&sql).expect("write a row behind stategate's back");
    }
}

//! The moto S3 server (`tests/peers/moto_server.py`) as the tests share
//! it: started once per test binary, with boto3 (`tests/peers/s3_inspect.py`)
//! to look inside its buckets independently of stategate.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use super::{python, repo, text};

/// A moto S3 server run by `tests/peers/moto_server.py`. It exits when its
/// stdin closes, i.e. when this process ends.
pub struct Moto {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// With auth: the key of a user who may read and list only, until
    /// [`Moto::reader_writes`] lets it write.
    pub reader_key: Option<(String, String)>,
    control: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    _child: Child,
}

impl Moto {
    /// Starts a server; with `auth` it checks SigV4 signatures against the
    /// key it reports (see the launcher for why not every test uses that).
    pub fn start(auth: bool) -> Moto {
        Self::start_with(&[if auth { "--auth" } else { "" }])
    }

    /// Starts a server with launcher flags.
    pub fn start_with(flags: &[&str]) -> Moto {
        let script = repo().join("tests/peers/moto_server.py");
        let mut child = Command::new(python())
            .arg(&script)
            .args(flags.iter().filter(|f| !f.is_empty()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the moto server");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read moto's ready line");
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "moto did not start ({e}): {line:?}; install the test peers with \
                 `python3 -m venv .venv && .venv/bin/pip install -r tests/peers/requirements.txt`"
            )
        });
        let field = |name: &str| ready[name].as_str().expect(name).to_string();
        Moto {
            endpoint: format!("http://127.0.0.1:{}", ready["port"]),
            access_key: field("access_key"),
            secret_key: field("secret_key"),
            reader_key: ready["reader_access_key"]
                .as_str()
                .map(|id| (id.to_string(), field("reader_secret_key"))),
            control: Mutex::new((stdin, stdout)),
            _child: child,
        }
    }

    /// The server most tests share.
    pub fn shared() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(|| Moto::start(false))
    }

    /// The shared server that checks signatures.
    pub fn shared_with_auth() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(|| Moto::start(true))
    }

    /// The shared server that ignores `If-Match` (but honours
    /// `If-None-Match`): an S3-compatible server without compare-and-swap.
    pub fn shared_ignoring_if_match() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(|| Moto::start_with(&["--ignore-if-match"]))
    }

    /// The server's process id, to pause it with SIGSTOP.
    pub fn pid(&self) -> u32 {
        self._child.id()
    }

    fn command(&self, command: &str) {
        let mut control = self.control.lock().unwrap();
        writeln!(control.0, "{command}").expect("write to moto");
        let mut answer = String::new();
        control.1.read_line(&mut answer).expect("moto answers");
        assert_eq!(answer.trim(), "ok", "moto {command}");
    }

    /// How many object listings the server has served so far.
    pub fn lists(&self) -> u64 {
        self.count("lists")
    }

    /// How many GetObject requests the server has served so far for keys
    /// ending with `suffix`.
    pub fn object_gets(&self, suffix: &str) -> u64 {
        self.count(&format!("gets {suffix}"))
    }

    /// Every request the server has served so far, in order of arrival,
    /// each `{"method", "path", "query", "conditions"}` (`path` is
    /// `bucket/key`, or `bucket` for a listing; `query` the parameter
    /// names; `conditions` the conditional headers sent).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.requests_to("")
    }

    /// [`Moto::requests`] to `bucket` only (all with `""`).
    fn requests_to(&self, bucket: &str) -> Vec<serde_json::Value> {
        let mut control = self.control.lock().unwrap();
        writeln!(control.0, "requests {bucket}").expect("write to moto");
        let mut answer = String::new();
        control.1.read_line(&mut answer).expect("moto answers");
        serde_json::from_str(&answer).expect("a JSON array of requests")
    }

    /// The requests served so far about `bucket` (its objects and its
    /// listings), each as `METHOD key [query names] [conditions]`.
    pub fn requests_for(&self, bucket: &str) -> Vec<String> {
        self.requests_to(bucket)
            .into_iter()
            .filter_map(|r| {
                let path = r["path"].as_str()?;
                let key = match path.strip_prefix(bucket)? {
                    "" => "",
                    rest => rest.strip_prefix('/')?,
                };
                let names = |field: &str| {
                    r[field]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default()
                };
                Some(
                    format!(
                        "{} {key} [{}] [{}]",
                        r["method"].as_str()?,
                        names("query"),
                        names("conditions")
                    )
                    .replace(" [] []", "")
                    .replace(" []", ""),
                )
            })
            .collect()
    }

    fn count(&self, command: &str) -> u64 {
        let mut control = self.control.lock().unwrap();
        writeln!(control.0, "{command}").expect("write to moto");
        let mut answer = String::new();
        control.1.read_line(&mut answer).expect("moto answers");
        answer.trim().parse().expect("a count")
    }

    /// Lets the reader's key write and delete objects, or takes that away
    /// (credentials that lost `PutObject`).
    pub fn reader_writes(&self, allowed: bool) {
        self.command(if allowed {
            "reader-writes on"
        } else {
            "reader-writes off"
        });
    }

    /// Answers the next `n` requests that carry `header` (`if-match`,
    /// `x-amz-acl`, ...) with HTTP `status` and the S3 error `code`.
    pub fn fault(&self, n: u32, header: &str, status: u16, code: &str) {
        self.command(&format!("fault {n} {header} {status} {code}"));
    }

    /// Makes the next `n` requests carrying `header`, then answers each
    /// with a 500 instead of its answer: a change whose answer was lost.
    pub fn lose(&self, n: u32, header: &str) {
        self.command(&format!("lose {n} {header}"));
    }

    /// Holds the next `n` requests carrying `header` for `seconds`, with
    /// the whole server silent meanwhile (it serves one request at a time).
    pub fn hold(&self, n: u32, header: &str, seconds: u64) {
        self.command(&format!("hold {n} {header} {seconds}"));
    }

    /// Closes the listening socket; objects are kept.
    pub fn stop(&self) {
        self.command("stop");
    }

    /// Listens again on the same port.
    pub fn resume(&self) {
        self.command("start");
    }

    /// Runs `s3_inspect.py` (boto3) and returns its stdout; panics on failure.
    pub fn inspect(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let mut child = Command::new(python())
            .arg(repo().join("tests/peers/s3_inspect.py"))
            .args(args)
            .env("S3_ENDPOINT", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run s3_inspect.py");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "s3_inspect {args:?}: {}",
            text(&out.stderr)
        );
        out.stdout
    }

    /// A new, empty bucket.
    pub fn new_bucket(&self) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "stategate-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.inspect(&["create-bucket", &name], b"");
        name
    }

    /// Every key in `bucket`, prefix included.
    pub fn all_keys(&self, bucket: &str) -> Vec<String> {
        text(&self.inspect(&["keys", bucket, ""], b""))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// HeadObject's answer, as boto3 gives it.
    pub fn head(&self, bucket: &str, key: &str) -> serde_json::Value {
        serde_json::from_slice(&self.inspect(&["head", bucket, key], b"")).expect("head JSON")
    }

    /// GetObjectAcl's grants.
    pub fn acl(&self, bucket: &str, key: &str) -> serde_json::Value {
        serde_json::from_slice(&self.inspect(&["acl", bucket, key], b"")).expect("acl JSON")
    }

    /// Credentials as the AWS SDKs and Terraform read them from the environment.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
        ]
    }
}

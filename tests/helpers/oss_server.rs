//! The OSS protocol test server (`tests/peers/oss_server.py`, checked
//! against Alibaba's own SDKs by `tests/peers/test_oss_server.py`) as the
//! tests share it, with the endpoint, region and credentials it accepts.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{http, python, repo, text};

/// The endpoint stategate is given; the test server treats its subdomains as
/// buckets. `.invalid` never resolves, so nothing can reach real OSS.
pub const ENDPOINT: &str = "oss-test.invalid";
pub const REGION: &str = "cn-beijing";
/// STS credentials: the suite runs with a security token throughout.
pub const STS_AK: &str = "STS.stategate-test";
pub const STS_SECRET: &str = "sts-secret-for-tests";
pub const STS_TOKEN: &str = "CAIS+sts/token=for-tests";
/// Long-term credentials, without a token.
pub const AK: &str = "LTAI-stategate-test";
pub const SECRET: &str = "long-term-secret-for-tests";

/// The OSS test server every test in this process shares. It exits when its
/// stdin closes, i.e. when this process ends.
pub struct OssServer {
    /// `127.0.0.1:PORT`
    pub addr: String,
    _stdin: ChildStdin,
    child: Child,
}

impl OssServer {
    /// A server of its own, for tests that stop it.
    pub fn start() -> OssServer {
        let script = repo().join("tests/peers/oss_server.py");
        let mut child = Command::new(python())
            .arg(&script)
            .args(["--endpoint", ENDPOINT, "--region", REGION])
            .args([
                "--credential",
                &format!("{STS_AK}:{STS_SECRET}:{STS_TOKEN}"),
            ])
            .args(["--credential", &format!("{AK}:{SECRET}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/peers/oss_server.py");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the OSS server's first line");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the OSS test server did not start: {line:?}"))
            .trim()
            .to_string();
        OssServer {
            addr,
            _stdin: stdin,
            child,
        }
    }

    /// The server's process id, to pause it with SIGSTOP.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Deletes a bucket and its objects while everything keeps running.
    pub fn delete_bucket(&self, bucket: &str) {
        let url = format!("http://{}/-/buckets?name={bucket}", self.addr);
        let (status, body) = http("DELETE", &url, b"");
        assert_eq!(status, 200, "delete bucket: {}", text(&body));
    }

    pub fn shared() -> &'static OssServer {
        static SERVER: OnceLock<OssServer> = OnceLock::new();
        SERVER.get_or_init(OssServer::start)
    }

    /// A new, empty bucket; `versioning` is `""`, `Enabled` or `Suspended`.
    /// Every request made to `bucket` so far, in order, each as
    /// `METHOD key [query names]` (the key empty for a listing, which ends
    /// with ` prefix=<its prefix>`).
    pub fn requests(&self, bucket: &str) -> Vec<String> {
        let url = format!("http://{}/-/requests?bucket={bucket}", self.addr);
        let (status, body) = http("GET", &url, b"");
        assert_eq!(status, 200, "requests: {}", text(&body));
        let all: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("requests JSON");
        all.iter()
            .map(|r| {
                let query: Vec<&str> = r["query"]
                    .as_array()
                    .map(|q| q.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                let mut line = format!(
                    "{} {} [{}]",
                    r["method"].as_str().unwrap_or(""),
                    r["key"].as_str().unwrap_or(""),
                    query.join(",")
                );
                if let Some(prefix) = r["prefix"].as_str() {
                    line.push_str(&format!(" prefix={prefix}"));
                }
                line
            })
            .collect()
    }

    pub fn new_bucket(&self, versioning: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "stategate-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let url = format!(
            "http://{}/-/buckets?name={name}&versioning={versioning}",
            self.addr
        );
        let (status, body) = http("POST", &url, b"");
        assert_eq!(status, 200, "create bucket: {}", text(&body));
        name
    }

    /// Turns on `bucket`'s versioning (`Enabled` or `Suspended`), as an
    /// operator would while stategate serves it.
    pub fn set_versioning(&self, bucket: &str, versioning: &str) {
        let url = format!(
            "http://{}/-/buckets?name={bucket}&versioning={versioning}",
            self.addr
        );
        let (status, body) = http("PUT", &url, b"");
        assert_eq!(status, 200, "set versioning: {}", text(&body));
    }

    /// Makes the next PUT under `prefix` in `bucket`, and answers nothing.
    pub fn lose_next_answer(&self, bucket: &str, prefix: &str) {
        let url = format!(
            "http://{}/-/unanswered?bucket={bucket}&prefix={prefix}",
            self.addr
        );
        let (status, body) = http("POST", &url, b"");
        assert_eq!(status, 200, "unanswered: {}", text(&body));
    }

    /// Holds the next `method` request under `prefix` in `bucket` for
    /// `seconds`, then makes it: a request that lands after its client
    /// gave up on it.
    pub fn delay_next(&self, bucket: &str, prefix: &str, method: &str, seconds: u64) {
        let url = format!(
            "http://{}/-/late?bucket={bucket}&prefix={prefix}&method={method}&seconds={seconds}",
            self.addr
        );
        let (status, body) = http("POST", &url, b"");
        assert_eq!(status, 200, "late: {}", text(&body));
    }

    /// Answers the next request for `key` in `bucket` with a redirect to `to`.
    pub fn redirect_next(&self, bucket: &str, key: &str, to: &str) {
        let url = format!(
            "http://{}/-/redirect?bucket={bucket}&key={key}&to={to}",
            self.addr
        );
        let (status, body) = http("POST", &url, b"");
        assert_eq!(status, 200, "redirect: {}", text(&body));
    }

    /// Stores an object as another client would, without stategate.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let url = format!("http://{}/-/objects?bucket={bucket}&key={key}", self.addr);
        let (status, reply) = http("PUT", &url, body);
        assert_eq!(status, 200, "put object: {}", text(&reply));
    }

    /// The stored bytes of one object.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let url = format!("http://{}/-/objects?bucket={bucket}&key={key}", self.addr);
        let (status, body) = http("GET", &url, b"");
        assert_eq!(status, 200, "get object {key}: {}", text(&body));
        body
    }

    /// Every object in `bucket` with what OSS recorded for it: key, size,
    /// acl, sse, content_type.
    pub fn objects(&self, bucket: &str) -> Vec<serde_json::Value> {
        let (status, body) = http(
            "GET",
            &format!("http://{}/-/objects?bucket={bucket}", self.addr),
            b"",
        );
        assert_eq!(status, 200, "list objects: {}", text(&body));
        serde_json::from_slice(&body).expect("objects JSON")
    }
}

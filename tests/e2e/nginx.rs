//! stategate behind a real nginx, mounted under `/tfstate/` with
//! `--base-path /tfstate`, configured by `terraform-examples/nginx/nginx.conf`
//! exactly as users copy it (only the listen port and the upstream address
//! are put in, plus where nginx keeps its files). The real `terraform` CLI
//! runs `terraform-examples/nginx/main.tf` through it: LOCK and UNLOCK pass,
//! the POST/DELETE lock URLs pass, a held lock and force-unlock pass, a
//! 64 MiB state streams both ways without touching nginx's disk, nothing
//! outside the base path is served, connections to stategate are kept
//! alive, stategate logs the client address nginx forwards, and Terraform's
//! credentials reach stategate. nginx's access log shows that each request really went
//! through it; the store shows where it landed.
//!
//! Each test starts its own stategate and its own nginx (a single process,
//! `master_process off`, killed by its id when the test ends); nginx starts
//! in milliseconds.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use md5::{Digest, Md5};
use tempfile::TempDir;

use crate::support::stores::LocalPeer;
use crate::support::*;

const NGINX: &str = "/usr/sbin/nginx";
const BASE: &str = "/tfstate";
/// The key `terraform-examples/nginx/main.tf` uses.
const KEY: &str = "nginx/terraform.tfstate";
/// nginx's address in the example configurations; tests put theirs in.
const EXAMPLE_NGINX: &str = "http://127.0.0.1:8081";

/// A running nginx with the example configuration in front of one
/// stategate. Killed when dropped.
struct Nginx {
    /// `http://127.0.0.1:PORT`
    url: String,
    child: Child,
    /// The prefix directory: configuration, logs, pid and temporary files.
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx on a free port in front of `upstream` (`host:port`).
    /// Panics naming the package when nginx is not installed, and with
    /// nginx's error log when it does not come up.
    fn start(upstream: &str) -> Nginx {
        assert!(
            Path::new(NGINX).is_file(),
            "{NGINX} is missing: the nginx tests need Debian's nginx \
             (`apt-get install nginx`, which scripts/test.sh does)"
        );
        // The port is free when chosen and taken by nginx a moment later;
        // another process may take it in between, so try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new().expect("temp dir");
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, render_config(dir.path(), port, upstream))
                .expect("write nginx.conf");
            let error_log = dir.path().join("error.log");
            // Warnings too: spooling a body to disk is one.
            let globals = format!(
                "daemon off; master_process off; pid {}; error_log {} warn;",
                dir.path().join("nginx.pid").display(),
                error_log.display()
            );
            let mut child = Command::new(NGINX)
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(&error_log)
                .arg("-c")
                .arg(&conf)
                .args(["-g", &globals])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().expect("wait for nginx") {
                    last_log = std::fs::read_to_string(&error_log).unwrap_or_default();
                    assert!(
                        last_log.contains("Address already in use"),
                        "nginx exited ({status}):\n{last_log}"
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx {
                        url: format!("http://127.0.0.1:{port}"),
                        child,
                        dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "nginx did not listen on 127.0.0.1:{port} within 20 s:\n{}",
                        std::fs::read_to_string(&error_log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx found no free port in 5 tries:\n{last_log}");
    }

    /// `URL<path>`, through nginx.
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// What nginx wrote to its error log so far.
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Waits until nginx's access log has a line containing every one of
    /// `parts` (nginx writes it once the response is sent, so it may trail
    /// the client by a moment); panics with the log otherwise.
    fn assert_logged(&self, parts: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(self.access_log_path()).unwrap_or_default();
            if log.lines().any(|l| parts.iter().all(|p| l.contains(p))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx's access log has no request with {parts:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `"METHOD PATH HTTP/1.1" STATUS ` as the access log writes it.
    fn assert_passed(&self, method: &str, path: &str, status: u16) {
        self.assert_logged(&[&format!("\"{method} {path} HTTP/1.1\" {status} ")]);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port the OS reports free on 127.0.0.1.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// `terraform-examples/nginx/nginx.conf` with this test's listen port and
/// upstream, and nginx's logs and temporary files in `dir` rather than in
/// the system's directories. Fails if the example no longer has the lines
/// a user is told to change.
fn render_config(dir: &Path, port: u16, upstream: &str) -> String {
    let path = repo().join("terraform-examples/nginx/nginx.conf");
    let example =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let replace_once = |text: &str, from: &str, to: &str| {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{} must contain `{from}` once",
            path.display()
        );
        text.replace(from, to)
    };
    let d = dir.display();
    let local_paths = format!(
        "http {{\n    access_log {d}/access.log;\n    client_body_temp_path {d}/client_body;\n    \
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
         uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
    );
    let text = replace_once(
        &example,
        "listen 127.0.0.1:8081;",
        &format!("listen 127.0.0.1:{port};"),
    );
    let text = replace_once(
        &text,
        "server 127.0.0.1:8080;",
        &format!("server {upstream};"),
    );
    replace_once(&text, "http {\n", &local_paths)
}

/// stategate on a fresh local store with `--base-path /tfstate`, and nginx
/// in front of it.
struct Stack {
    peer: LocalPeer,
    server: Server,
    nginx: Nginx,
}

impl Stack {
    fn start() -> Stack {
        Self::start_with(&[])
    }

    /// Like [`Stack::start`], with more stategate arguments.
    fn start_with(extra: &[&str]) -> Stack {
        let peer = LocalPeer::new();
        let mut args = vec!["--base-path", BASE];
        args.extend_from_slice(extra);
        let server = Server::start_with(&peer, &args);
        let nginx = Nginx::start(&upstream(&server));
        Stack {
            peer,
            server,
            nginx,
        }
    }

    /// `http://<stategate itself><path>`, bypassing nginx.
    fn direct(&self, path: &str) -> String {
        format!("http://{}{path}", upstream(&self.server))
    }

    fn keys(&self) -> Vec<String> {
        self.peer.object_keys()
    }

    fn assert_no_lock_left(&self) {
        assert!(
            !self.keys().iter().any(|k| k.ends_with(".tflock")),
            "a lock was left behind: {:?}",
            self.keys()
        );
    }
}

/// stategate's `host:port`, whatever path its announced URL carries.
fn upstream(server: &Server) -> String {
    let rest = server.url.trim_start_matches("http://");
    rest.split('/').next().unwrap().to_string()
}

/// `terraform-examples/nginx/main.tf` with `nginx`'s address in place of
/// the documented one.
fn nginx_example(nginx: &Nginx) -> String {
    let text = example_text("nginx");
    assert!(
        text.contains(EXAMPLE_NGINX) && !text.contains("127.0.0.1:8080"),
        "the nginx example must address nginx ({EXAMPLE_NGINX}), never stategate directly"
    );
    text.replace(EXAMPLE_NGINX, &nginx.url)
}

/// The example with the commented gateway lines in force: lock by POST and
/// unlock by DELETE on `/tfstate/locks/...`.
fn gateway_variant(hcl: &str) -> String {
    let mut out = String::new();
    let mut swapped = 0;
    for line in hcl.lines() {
        let t = line.trim_start();
        if t.starts_with("lock_address") || t.starts_with("unlock_address") {
            continue;
        }
        if let Some(setting) = t.strip_prefix("# ").filter(|s| {
            [
                "lock_address",
                "lock_method",
                "unlock_address",
                "unlock_method",
            ]
            .iter()
            .any(|k| s.starts_with(k))
        }) {
            out.push_str("    ");
            out.push_str(setting);
            swapped += 1;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert_eq!(swapped, 4, "main.tf's commented gateway lines:\n{hcl}");
    out
}

fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

#[test]
fn terraform_lifecycle_through_nginx_with_lock_and_unlock() {
    let stack = Stack::start();
    let tf = Terraform::new(&nginx_example(&stack.nginx));
    tf.init_apply(&[]);
    assert_eq!(
        tf.ok(&["output", "-raw", "greeting"]),
        "hello through nginx"
    );
    let plan = tf.run(&["plan", "-detailed-exitcode", "-no-color"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "plan after apply must show no changes:\n{}{}",
        text(&plan.stdout),
        text(&plan.stderr)
    );
    assert!(
        stack.keys().contains(&KEY.to_string()),
        "state not at {KEY}: {:?}",
        stack.keys()
    );
    let state_path = format!("{BASE}/states/{KEY}");
    stack.nginx.assert_passed("LOCK", &state_path, 200);
    stack.nginx.assert_passed("UNLOCK", &state_path, 200);
    // Written under the lock: Terraform adds `?ID=<lock id>`, which nginx
    // passes on with the path.
    stack
        .nginx
        .assert_logged(&[&format!("\"POST {state_path}?ID="), " HTTP/1.1\" 200 "]);
    stack.nginx.assert_passed("GET", &state_path, 200);

    tf.ok(&["destroy", "-auto-approve", "-no-color"]);
    let (status, body) = http("GET", &stack.nginx.at(&state_path), b"");
    assert_eq!(status, 200, "{}", text(&body));
    let state: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        state["resources"].as_array().map(Vec::len),
        Some(0),
        "destroy leaves no resources"
    );
    stack.assert_no_lock_left();
}

#[test]
fn gateway_lock_urls_through_nginx() {
    let stack = Stack::start();
    let hcl = gateway_variant(&nginx_example(&stack.nginx));
    let tf = Terraform::new(&hcl);
    tf.init_apply(&["greeting=locked by POST"]);
    assert_eq!(tf.ok(&["output", "-raw", "greeting"]), "locked by POST");
    let lock_path = format!("{BASE}/locks/{KEY}");
    stack.nginx.assert_passed("POST", &lock_path, 200);
    stack.nginx.assert_passed("DELETE", &lock_path, 200);
    let log = std::fs::read_to_string(stack.nginx.access_log_path()).unwrap();
    assert!(
        !log.contains("\"LOCK ") && !log.contains("\"UNLOCK "),
        "the gateway variant sends no LOCK or UNLOCK:\n{log}"
    );
    assert!(
        stack.keys().contains(&KEY.to_string()),
        "{:?}",
        stack.keys()
    );
    stack.assert_no_lock_left();

    // A lock held by POST on the lock URL is seen and released the same way.
    let lock_url = stack.nginx.at(&lock_path);
    let info = lock_info("gateway-through-nginx-1", "bob@gateway");
    assert_eq!(http("POST", &lock_url, &info).0, 200);
    assert_eq!(http("GET", &lock_url, b""), (200, info.clone()));
    let out = tf.run(&["apply", "-auto-approve", "-lock-timeout=0", "-no-color"]);
    assert!(
        !out.status.success(),
        "apply must fail while the lock is held"
    );
    assert!(
        text(&out.stderr).contains("gateway-through-nginx-1"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(http("DELETE", &lock_url, &info).0, 200);
    assert_eq!(http("GET", &lock_url, b"").0, 404);
    stack.assert_no_lock_left();
}

#[test]
fn held_lock_through_nginx_blocks_apply_until_force_unlock() {
    let stack = Stack::start();
    let tf = Terraform::new(&nginx_example(&stack.nginx));
    tf.init_apply(&[]);
    let url = stack.nginx.at(&format!("{BASE}/states/{KEY}"));
    let holder = lock_info("held-through-nginx-1234", "alice@ci-runner");
    assert_eq!(http("LOCK", &url, &holder).0, 200);
    assert!(
        stack.keys().contains(&format!("{KEY}.tflock")),
        "lock object at <key>.tflock: {:?}",
        stack.keys()
    );
    // nginx hands stategate's 423 and its body to the client unchanged.
    let (status, body) = http("LOCK", &url, &lock_info("second-locker", "bob@laptop"));
    assert_eq!((status, body), (423, holder.clone()));

    let out = tf.run(&[
        "apply",
        "-auto-approve",
        "-lock-timeout=0",
        "-no-color",
        "-var",
        "greeting=blocked",
    ]);
    assert!(
        !out.status.success(),
        "apply must fail while another client holds the lock"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Error acquiring the state lock")
            && stderr.contains("held-through-nginx-1234"),
        "holder not named:\n{stderr}"
    );

    tf.ok(&["force-unlock", "-force", "held-through-nginx-1234"]);
    stack.assert_no_lock_left();
    stack
        .nginx
        .assert_passed("UNLOCK", &format!("{BASE}/states/{KEY}"), 200);
    tf.apply(&["greeting=after unlock"]);
    assert_eq!(tf.ok(&["output", "-raw", "greeting"]), "after unlock");
    stack.assert_no_lock_left();
}

#[test]
fn large_state_streams_through_nginx_byte_identical() {
    let stack = Stack::start();
    // Over nginx's default client_max_body_size (1 MiB) by far, and made of
    // varied bytes so that nothing on the way can shortcut it.
    const SIZE: usize = 64 * 1024 * 1024;
    let head = b"{\"version\":4,\"serial\":1,\"lineage\":\"through-nginx\",\"resources\":[],\"outputs\":{\"blob\":{\"type\":\"string\",\"value\":\"";
    let tail = b"\"}}}\n";
    let mut body = Vec::with_capacity(SIZE);
    body.extend_from_slice(head);
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";
    let mut x: u32 = 4242;
    while body.len() < SIZE - tail.len() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        body.push(alphabet[(x >> 16) as usize % alphabet.len()]);
    }
    body.extend_from_slice(tail);
    assert_eq!(body.len(), SIZE);

    let path = format!("{BASE}/states/nginx/large.tfstate");
    let url = stack.nginx.at(&path);
    let md5 = content_md5(&body);
    let (status, reason) = http_with(
        "POST",
        &url,
        &[("Content-Type", "application/json"), ("Content-MD5", &md5)],
        &body,
    );
    assert_eq!(status, 200, "{}", text(&reason));
    let stored = std::fs::read(stack.peer.object_path("nginx/large.tfstate"))
        .expect("the state is in the store at its key");
    assert!(
        stored == body,
        "stored state differs ({} bytes)",
        stored.len()
    );

    let (status, got) = http("GET", &url, b"");
    assert_eq!(status, 200);
    assert!(
        got == body,
        "64 MiB state came back through nginx different ({} bytes)",
        got.len()
    );
    stack.nginx.assert_passed("POST", &path, 200);
    // Streamed, not spooled: nginx warns in its error log whenever it
    // buffers a request or response body to a temporary file.
    let errors = stack.nginx.error_log();
    assert!(
        !errors.contains("buffered to a temporary file"),
        "nginx spooled the state to disk:\n{errors}"
    );
    stack
        .nginx
        .assert_logged(&[&format!("\"GET {path} HTTP/1.1\" 200 {SIZE} ")]);
}

#[test]
fn only_the_base_path_is_served() {
    let stack = Stack::start();
    let (status, body) = http("GET", &stack.nginx.at(&format!("{BASE}/healthz")), b"");
    assert_eq!(status, 200, "{}", text(&body));
    stack
        .nginx
        .assert_passed("GET", &format!("{BASE}/healthz"), 200);

    // stategate itself serves nothing outside its base path: not the
    // health check, not a write, not a lock.
    let before = stack.keys();
    assert_eq!(http("GET", &stack.direct("/healthz"), b"").0, 404);
    let state = state_doc("outside", 1, "x");
    assert_eq!(
        http("POST", &stack.direct("/states/outside"), &state).0,
        404
    );
    assert_eq!(
        http(
            "LOCK",
            &stack.direct("/states/outside"),
            &lock_info("o-1", "x@y")
        )
        .0,
        404
    );
    assert_eq!(
        http(
            "POST",
            &stack.direct("/locks/outside"),
            &lock_info("o-2", "x@y")
        )
        .0,
        404
    );
    assert_eq!(http("GET", &stack.direct("/tfstatex/healthz"), b"").0, 404);
    assert_eq!(
        http("POST", &stack.direct("/tfstatex/states/outside"), &state).0,
        404
    );
    assert_eq!(
        stack.keys(),
        before,
        "nothing outside the base path is stored"
    );
    assert_eq!(
        http("GET", &stack.direct(&format!("{BASE}/healthz")), b"").0,
        200
    );

    // Through nginx, only /tfstate/ reaches stategate; the rest is nginx's
    // own 404 page.
    std::thread::sleep(Duration::from_millis(200));
    let server_log_before = stack.server.log().lines().count();
    for path in ["/healthz", "/states/outside", "/tfstatex/healthz", "/"] {
        let (status, body) = http("GET", &stack.nginx.at(path), b"");
        assert_eq!(status, 404, "{path}: {}", text(&body));
        assert!(
            text(&body).contains("<center>nginx"),
            "{path}: {}",
            text(&body)
        );
        stack.nginx.assert_passed("GET", path, 404);
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = stack.server.log();
    let later: Vec<&str> = log.lines().skip(server_log_before).collect();
    // stategate logs every request it answers with its id.
    assert!(
        !later.iter().any(|l| l.contains("request_id=")),
        "nginx passed a path outside /tfstate/ to stategate:\n{}",
        later.join("\n")
    );
    // A state written through nginx lands at its key, without the base path.
    let (status, reason) = http(
        "POST",
        &stack
            .nginx
            .at(&format!("{BASE}/states/inside/terraform.tfstate")),
        &state_doc("inside", 1, "x"),
    );
    assert_eq!(status, 200, "{}", text(&reason));
    assert!(
        stack
            .keys()
            .contains(&"inside/terraform.tfstate".to_string()),
        "{:?}",
        stack.keys()
    );
}

/// Sends `request` (a whole HTTP/1.1 request) to `to` from the local address
/// `from` (any 127.x.y.z reaches 127.0.0.1 on Linux) and returns the whole
/// response. std cannot bind before connecting; tokio's socket can.
fn request_from(from: &str, to: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{from}:0").parse().unwrap())
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        socket.connect(to.parse().unwrap()).await.unwrap()
    });
    let mut stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    text(&response)
}

#[test]
fn stategate_logs_the_client_nginx_forwarded_for() {
    let peer = LocalPeer::new();
    let server = Server::start_with(
        &peer,
        &["--base-path", BASE, "--trusted-proxies", "127.0.0.1/32"],
    );
    let nginx = Nginx::start(&upstream(&server));
    let to = nginx.url.trim_start_matches("http://");
    // The client's own X-Forwarded-For is kept by nginx but the address
    // nginx appends, the one it saw, is what a trusted proxy vouches for.
    let response = request_from(
        "127.0.0.3",
        to,
        &format!(
            "GET {BASE}/healthz HTTP/1.1\r\nHost: {to}\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let request_id = response
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no X-Request-Id through nginx:\n{response}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = server.log();
        if let Some(line) = log.lines().find(|l| l.contains(&request_id)) {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "request {request_id} not logged:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        line.contains("client=127.0.0.3"),
        "stategate did not log the address nginx saw: {line}"
    );
}

/// How many TCP connections to 127.0.0.1:`port` are established, seen from
/// the connecting side (`/proc/net/tcp`, remote address = that port).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01")
        })
        .count()
}

#[test]
fn nginx_keeps_connections_to_stategate_alive() {
    let stack = Stack::start();
    let port: u16 = upstream(&stack.server)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let url = stack.nginx.at(&format!("{BASE}/states/{KEY}"));
    let state = state_doc("keepalive", 1, "x");
    assert_eq!(http("POST", &url, &state).0, 200);
    for _ in 0..5 {
        assert_eq!(http("GET", &url, b""), (200, state.clone()));
    }
    // One request at a time: nginx reuses one idle connection and keeps it
    // open between requests (stategate closes it after idle_timeout, 60 s).
    let open = established_to(port);
    assert!(
        open >= 1,
        "nginx closed its connections to stategate after each request ({open} open):\n{}",
        std::fs::read_to_string("/proc/net/tcp").unwrap()
    );
}

/// Runs terraform with `env`, asserting success.
fn tf_ok_env(tf: &Terraform, args: &[&str], env: &[(&str, &str)]) {
    let out = tf.run_env(args, env);
    assert!(
        out.status.success(),
        "terraform {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn credentials_pass_through_nginx() {
    use std::io::Write;
    let password = "correct horse battery staple";
    let mut hasher = Command::new(bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stategate hash-password");
    hasher
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = hasher.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = text(&out.stdout).trim().to_string();
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("stategate.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  users:\n    - name: alice\n      password_hash: \"{hash}\"\n      rules:\n        - {{keys: \"**\", access: write}}\n"
        ),
    )
    .unwrap();

    let peer = LocalPeer::new();
    let server = Server::start_with(
        &peer,
        &[
            "--config",
            config.to_str().unwrap(),
            "--base-path",
            BASE,
            "--trusted-proxies",
            "127.0.0.1",
        ],
    );
    let nginx = Nginx::start(&upstream(&server));

    // nginx hands stategate's 401 and its challenge to the client.
    let url = nginx.at(&format!("{BASE}/states/{KEY}"));
    let (status, headers, _) = http_full("GET", &url, &[], b"");
    assert_eq!(status, 401);
    assert!(
        headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("www-authenticate") && v.starts_with("Basic")),
        "{headers:?}"
    );

    // Terraform's Basic credentials reach stategate through nginx.
    let tf = Terraform::new(&nginx_example(&nginx));
    let creds = [
        ("TF_HTTP_USERNAME", "alice"),
        ("TF_HTTP_PASSWORD", password),
    ];
    tf_ok_env(&tf, &["init", "-no-color"], &creds);
    tf_ok_env(
        &tf,
        &[
            "apply",
            "-auto-approve",
            "-no-color",
            "-var",
            "greeting=as alice",
        ],
        &creds,
    );
    assert!(peer.object_keys().contains(&KEY.to_string()));
    nginx.assert_passed("LOCK", &format!("{BASE}/states/{KEY}"), 200);
    let wrong = [("TF_HTTP_USERNAME", "alice"), ("TF_HTTP_PASSWORD", "wrong")];
    let out = tf.run_env(&["plan", "-no-color", "-lock=false"], &wrong);
    assert!(!out.status.success(), "a wrong password must be refused");
    let (status, body) = http_with(
        "GET",
        &url,
        &[(
            "Authorization",
            &format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"))
            ),
        )],
        b"",
    );
    assert_eq!(status, 200, "{}", text(&body));
    let state: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(state["outputs"]["greeting"]["value"], "as alice");
}

/// The hardening limits answer through nginx as they do directly: bodies
/// over the limits get 413, bodies that are not states 400, an upload
/// slower than body_min_rate 408 (nginx streams the body, so stategate's
/// clock runs), and the metrics count what was cut off.
#[test]
fn stategate_limits_hold_through_nginx() {
    let stack = Stack::start_with(&["--max-body-bytes", "65536", "--body-min-rate", "2048"]);
    let url = format!("{}{BASE}/states/limits/terraform.tfstate", stack.nginx.url);
    let big = state_doc("limits", 1, &"v".repeat(100 * 1024));
    assert_eq!(http("POST", &url, &big).0, 413, "state over max_body_bytes");
    let huge_lock = format!(r#"{{"ID":"x","Info":"{}"}}"#, "i".repeat(200 * 1024));
    assert_eq!(
        http("LOCK", &url, huge_lock.as_bytes()).0,
        413,
        "LockInfo over max_lock_bytes"
    );
    let (status, reason) = http("POST", &url, b"{}");
    assert_eq!(status, 400, "{}", text(&reason));
    assert!(
        text(&reason).contains("not a Terraform state"),
        "{}",
        text(&reason)
    );

    // 500 bytes a second against a floor of 2048, through nginx.
    use std::io::{Read, Write};
    let to = stack.nginx.url.trim_start_matches("http://");
    let mut slow = std::net::TcpStream::connect(to).unwrap();
    let head = format!(
        "POST {BASE}/states/limits/slow HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    );
    slow.write_all(head.as_bytes()).unwrap();
    slow.set_nonblocking(true).unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    while started.elapsed() < Duration::from_secs(25) && !text(&got).contains("HTTP/1.1 ") {
        if slow.write_all(&[b' '; 50]).is_err() {
            break;
        }
        let mut buf = [0u8; 2048];
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let answer = text(&got);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "through nginx: {answer:?}"
    );
    assert_eq!(
        http(
            "GET",
            &format!("{}{BASE}/states/limits/slow", stack.nginx.url),
            b""
        )
        .0,
        404
    );

    let (_, metrics) = http("GET", &format!("{}{BASE}/metrics", stack.nginx.url), b"");
    let metrics = text(&metrics);
    assert!(
        metrics.contains("stategate_requests_timed_out_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"stategate_writes_refused_total{reason="too_large"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"stategate_writes_refused_total{reason="invalid"} 1"#),
        "{metrics}"
    );
}

//! What an operator relies on: a base path behind a proxy, readiness,
//! Prometheus metrics, a separate admin address, request ids in the access
//! log, and client addresses believed only from trusted proxies.

use std::time::{Duration, Instant};

use crate::support::stores::{LocalPeer, SqlitePeer};
use crate::support::*;

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

#[test]
fn base_path_serves_every_url_below_it() {
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--base-path", "/tfstate/"]);
    let base = format!("{}/tfstate", server.url);
    assert_eq!(http("GET", &format!("{base}/healthz"), b"").0, 200);
    assert_eq!(http("GET", &format!("{base}/readyz"), b"").0, 200);
    assert_eq!(http("GET", &format!("{}/healthz", server.url), b"").0, 404);
    assert_eq!(
        http("GET", &format!("{}/tfstatex/healthz", server.url), b"").0,
        404
    );
    assert_eq!(
        http(
            "POST",
            &format!("{}/states/x", server.url),
            &state_doc("b", 1, "x")
        )
        .0,
        404
    );
    // Real terraform through the base path, with the gateway lock URLs.
    let tf = Terraform::new(&example_text("gateway-locks").replace("http://127.0.0.1:8080", &base));
    tf.init_apply(&[]);
    assert!(peer.object_path("gateway/terraform.tfstate").is_file());
    let out = tf.ok(&["plan", "-detailed-exitcode", "-no-color"]);
    assert!(out.contains("No changes"), "{out}");
    assert!(
        !peer
            .root()
            .join("gateway/terraform.tfstate.tflock")
            .exists()
    );
}

#[test]
fn readyz_follows_the_store_and_healthz_the_process() {
    let peer = SqlitePeer::new();
    let server = Server::start(&peer);
    let url = |p: &str| format!("{}{p}", server.url);
    assert_eq!(http("GET", &url("/readyz"), b"").0, 200);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", peer.db().display()));
    }
    // The probe is cached for a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, reason) = loop {
        let (status, reason) = http("GET", &url("/readyz"), b"");
        if status != 200 || Instant::now() > deadline {
            break (status, reason);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 503, "{}", text(&reason));
    assert!(
        text(&reason).contains("removed or replaced"),
        "{}",
        text(&reason)
    );
    assert_eq!(
        http("GET", &url("/healthz"), b"").0,
        200,
        "the process still lives"
    );
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_requests_conflicts_and_refusals_by_route() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let secret_key = "team-secret-name/terraform.tfstate";
    let url = server.state_url(secret_key);
    assert_eq!(http("POST", &url, &state_doc("m", 2, "x")).0, 200);
    assert_eq!(http("POST", &url, &state_doc("m", 1, "x")).0, 409);
    assert_eq!(http("POST", &url, b"{}").0, 400);
    assert_eq!(http("LOCK", &url, &lock_info("A", "a")).0, 200);
    assert_eq!(http("LOCK", &url, &lock_info("B", "b")).0, 423);
    assert_eq!(http("UNLOCK", &url, b"").0, 200);
    assert_eq!(
        http("POST", &server.state_url("other"), &state_doc("o", 1, "o")).0,
        200
    );
    assert_eq!(
        http("LOCK", &server.state_url("other"), &lock_info("C", "c")).0,
        200
    );

    let (status, headers, body) = http_full("GET", &format!("{}/metrics", server.url), &[], b"");
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .contains("openmetrics")
    );
    let m = text(&body);
    let get = |l: &str| metric(&m, l).unwrap_or_else(|| panic!("{l} missing:\n{m}"));
    assert_eq!(
        get(r#"stategate_http_requests_total{method="POST",route="/states/{key}",status="200"}"#),
        2.0
    );
    assert_eq!(get("stategate_lock_conflicts_total"), 1.0);
    assert_eq!(get("stategate_force_unlocks_total"), 1.0);
    assert_eq!(
        get(r#"stategate_writes_refused_total{reason="stale"}"#),
        1.0
    );
    assert_eq!(
        get(r#"stategate_writes_refused_total{reason="invalid"}"#),
        1.0
    );
    assert_eq!(get("stategate_states"), 2.0);
    assert_eq!(get("stategate_locks_held"), 1.0);
    assert!(get(r#"stategate_http_body_bytes_total{direction="in"}"#) > 0.0);
    assert!(
        m.contains("stategate_http_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(m.contains("stategate_build_info{version="), "{m}");
    assert!(
        !m.contains("team-secret-name"),
        "a key leaked into a label:\n{m}"
    );
}

#[test]
fn admin_listen_moves_metrics_and_readiness_off_the_main_address() {
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--admin-listen", "127.0.0.1:0"]);
    let log = server.log();
    let admin = log
        .split("serving /metrics and /readyz on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("admin address not logged:\n{log}"))
        .to_string();
    let admin = admin.trim_end_matches('"').to_string();
    assert_eq!(http("GET", &format!("{admin}/metrics"), b"").0, 200);
    assert_eq!(http("GET", &format!("{admin}/readyz"), b"").0, 200);
    assert_eq!(http("GET", &format!("{admin}/states/x"), b"").0, 404);
    assert_eq!(http("GET", &format!("{}/metrics", server.url), b"").0, 404);
    assert_eq!(http("GET", &format!("{}/readyz", server.url), b"").0, 404);
    assert_eq!(
        http("POST", &server.state_url("x"), &state_doc("x", 1, "x")).0,
        200
    );
}

#[test]
fn request_ids_and_client_addresses_reach_the_log() {
    let peer = LocalPeer::new();
    let trusting = Server::start_with(&peer, &["--trusted-proxies", "127.0.0.0/8"]);
    let spoof = [("X-Forwarded-For", "198.51.100.9, 203.0.113.7")];
    let (_, headers, _) = http_full("GET", &format!("{}/healthz", trusting.url), &spoof, b"");
    let id = header(&headers, "x-request-id").expect("X-Request-Id");
    let (_, headers2, _) = http_full("GET", &format!("{}/healthz", trusting.url), &[], b"");
    assert_ne!(
        header(&headers2, "x-request-id").unwrap(),
        id,
        "ids are unique"
    );
    assert!(trusting.logs(&id), "no log line with request id {id}");
    let log = trusting.log();
    let line = log
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no log line with request id {id}:\n{log}"));
    assert!(line.contains("client=203.0.113.7"), "{line}");
    assert!(
        line.contains("route=\"/healthz\"") || line.contains("route=/healthz"),
        "{line}"
    );

    let other = LocalPeer::new();
    let wary = Server::start(&other);
    let (_, headers, _) = http_full("GET", &format!("{}/healthz", wary.url), &spoof, b"");
    let id = header(&headers, "x-request-id").unwrap();
    assert!(wary.logs(&id), "no log line with request id {id}");
    let log = wary.log();
    let line = log.lines().find(|l| l.contains(&id)).expect("log line");
    assert!(
        line.contains("client=127.0.0.1"),
        "an untrusted peer's header was believed: {line}"
    );
}

fn loadtest(url: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(["loadtest", url])
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run stategate loadtest")
}

#[test]
fn loadtest_runs_terraform_cycles_and_counts_lock_conflicts() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let url = server.state_url("load");

    let out = loadtest(&url, &["--clients", "3", "--duration", "2s"], &[]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", text(&out.stderr));
    assert!(
        report.contains("cycles/s") && report.contains("no unexpected answers"),
        "{report}"
    );
    for verb in ["LOCK", "GET", "POST", "UNLOCK"] {
        assert!(
            report.lines().any(|l| l.starts_with(verb)),
            "{verb}: {report}"
        );
    }
    // Each client's state moved on, one serial per cycle, and no lock is left.
    let (status, body) = http("GET", &server.state_url("load/c0"), b"");
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(state["serial"].as_u64().unwrap() > 1, "{state}");
    assert!(!peer.object_keys().iter().any(|k| k.ends_with(".tflock")));

    // One key for all: 423s are expected, counted, and not failures.
    let shared = server.state_url("shared/terraform.tfstate");
    let out = loadtest(
        &shared,
        &["--clients", "4", "--duration", "2", "--shared-key"],
        &[],
    );
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", text(&out.stderr));
    let conflicts: u64 = report
        .split(" lock conflicts")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no conflict count: {report}"));
    assert!(conflicts > 0, "{report}");

    // An answer Terraform would not expect fails the run, naming it.
    let small_peer = LocalPeer::new();
    let small = Server::start_with(&small_peer, &["--max-body-bytes", "1000"]);
    let out = loadtest(
        &small.state_url("load"),
        &[
            "--clients",
            "1",
            "--duration",
            "1s",
            "--state-bytes",
            "5000",
        ],
        &[("TF_HTTP_PASSWORD", "unused")],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("unexpected: POST answered 413"),
        "{}",
        text(&out.stdout)
    );
}

/// `--new-states`: every POST a new state at a fresh key, no lock taken,
/// counted as new states per second; an answer other than 200 fails it.
#[test]
fn loadtest_new_states_creates_states_at_fresh_keys() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let out = loadtest(
        &server.state_url("fresh"),
        &["--new-states", "--clients", "2", "--duration", "1s"],
        &[],
    );
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", text(&out.stderr));
    let made: u64 = report
        .split(" new states in ")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of new states: {report}"));
    assert!(
        made >= 2 && report.contains("no unexpected answers"),
        "{report}"
    );
    let keys = peer.object_keys();
    let states: Vec<&String> = keys.iter().filter(|k| k.starts_with("fresh/")).collect();
    assert_eq!(states.len() as u64, made, "{states:?}");
    let (status, body) = http("GET", &server.state_url("fresh/c1-1"), b"");
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(state["serial"], 1, "{state}");
    assert!(!keys.iter().any(|k| k.ends_with(".tflock")), "{keys:?}");

    let small_peer = LocalPeer::new();
    let small = Server::start_with(&small_peer, &["--max-body-bytes", "1000"]);
    let out = loadtest(
        &small.state_url("fresh"),
        &["--new-states", "--clients", "1", "--duration", "1s"],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("unexpected: POST answered 413"),
        "{}",
        text(&out.stdout)
    );
}

/// A loadtest on `URL` (client i on `URL/c<i>`) and then a shared-key one
/// on `URL` itself: the state `load` sits above the states `load/c<i>`,
/// which the local store holds beside one another as every store does.
#[test]
fn loadtest_on_a_url_and_then_shared_on_it_both_succeed() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let url = server.state_url("load");
    for args in [
        &["--duration", "2s"][..],
        &["--duration", "2s", "--shared-key"],
    ] {
        let out = loadtest(&url, args, &[]);
        let report = text(&out.stdout);
        assert!(
            out.status.success() && report.contains("no unexpected answers"),
            "loadtest {args:?}:\n{report}\n{}",
            text(&out.stderr)
        );
    }
    let keys = peer.object_keys();
    assert!(
        keys.contains(&"load".to_string()) && keys.contains(&"load/c0".to_string()),
        "{keys:?}"
    );
}

#[test]
fn a_force_unlock_is_one_event_from_the_state_urls_the_dashboard_and_the_cli() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("stategate.yaml");
    let audit = dir.path().join("audit.log");
    std::fs::write(
        &config,
        format!(
            "auth:\n  users:\n    - name: root\n      password_hash: \"{}\"\n      rules: [{{keys: \"**\", access: admin}}]\n",
            hash_password("root-pass-2v8n")
        ),
    )
    .unwrap();
    let peer = LocalPeer::new();
    let server = Server::start_with(
        &peer,
        &[
            "--config",
            config.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    let root = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "root:root-pass-2v8n"
        )
    );
    let as_root = [("Authorization", root.as_str())];
    let key = "shared/app.tfstate";
    let url = server.state_url(key);
    let lock = |id: &str| {
        let info = lock_info(id, "ann@host");
        assert_eq!(http_with("LOCK", &url, &as_root, &info).0, 200, "{id}");
    };

    // Terraform's `force-unlock`: an UNLOCK with no body.
    lock("lock-http");
    assert_eq!(http_with("UNLOCK", &url, &as_root, b"").0, 200);
    // The dashboard's release button.
    lock("lock-dashboard");
    let page_url = format!("{}/ui/locks/{key}", server.url);
    let page = text(&http_with("GET", &page_url, &as_root, b"").1);
    let token = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no release form:\n{page}"));
    let form = format!("csrf={token}&lock_id=lock-dashboard");
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let released = agent
        .post(&page_url)
        .set("Authorization", &root)
        .set("Content-Type", "application/x-www-form-urlencoded")
        .send_string(&form);
    match released {
        Ok(r) | Err(ureq::Error::Status(_, r)) => assert_eq!(r.status(), 303),
        Err(e) => panic!("{e}"),
    }
    // The operator's command on the server's machine.
    lock("lock-cli");
    let out = stategate(
        &peer,
        &[
            "lock",
            "release",
            key,
            "--audit-log",
            audit.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        http_with("GET", &format!("{}/locks/{key}", server.url), &as_root, b"").0,
        404
    );

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let forced: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["audit"] == "force_unlock")
        .collect();
    assert_eq!(forced.len(), 3, "{lines:#?}");
    let shape = |l: &serde_json::Value| {
        let mut keys: Vec<String> = l.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let want = [
        "audit",
        "client",
        "identity",
        "lock_id",
        "previous_holder",
        "state",
        "time",
        "via",
        "workspace",
    ];
    for (line, (via, id)) in forced.iter().zip([
        ("http", "lock-http"),
        ("dashboard", "lock-dashboard"),
        ("cli", "lock-cli"),
    ]) {
        assert_eq!(shape(line), want, "{line}");
        assert_eq!(line["via"], via, "{line}");
        assert_eq!(line["lock_id"], id, "{line}");
        assert_eq!(line["previous_holder"], "ann@host", "{line}");
        assert_eq!(line["state"], key, "{line}");
        assert_eq!(line["workspace"], "default", "{line}");
    }
    assert_eq!(forced[0]["identity"], "user:root");
    assert_eq!(forced[1]["identity"], "user:root");
    assert!(
        forced[2]["identity"]
            .as_str()
            .unwrap()
            .starts_with("operator:")
    );
    assert_eq!(forced[0]["client"], "127.0.0.1");
    assert_eq!(forced[1]["client"], "127.0.0.1");
    assert_eq!(forced[2]["client"], "local");

    // The server counted its two; the command serves no metrics.
    let (_, body) = http("GET", &format!("{}/metrics", server.url), b"");
    assert_eq!(
        metric(&text(&body), "stategate_force_unlocks_total"),
        Some(2.0)
    );
}

/// A server whose log can no longer be written (stderr closed: a log
/// collector that went away) goes on serving: every request failed,
/// closed without an answer, as reporting the failed log write panicked.
#[test]
fn a_server_whose_log_is_closed_goes_on_serving() {
    use std::io::BufRead;
    let peer = crate::support::stores::LocalPeer::new();
    /// Killed when dropped, also when the test fails.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        std::process::Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "-C"])
            .arg(format!("path={}", peer.root().display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut log = std::io::BufReader::new(child.0.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "did not start");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    drop(log);
    let url = format!("{addr}/states/closed-log");
    let answers = [
        http("GET", &format!("{addr}/healthz"), b"").0,
        http("POST", &url, &state_doc("c", 1, "v")).0,
        http("GET", &url, b"").0,
    ];
    drop(child);
    assert_eq!(answers, [200, 200, 200]);
}

//! What an attacker tries against names, headers, bodies and logs: a page
//! whose name was rebound to loopback behind a trusted proxy, one state
//! reached under two names, the outputs level on a state of an older
//! format, log lines forged through client-chosen values, a client that
//! names its own address, caches that would keep a copy of a state, state
//! members Terraform reads under another spelling, a LockInfo with its ID
//! twice, and a `Content-MD5` given twice or in the trailers.

use base64::Engine;

use crate::support::stores::LocalPeer;
use crate::support::*;

/// Sends `head` (request line and headers, without the blank line) and
/// `body` over one connection, exactly as written; returns the status, the
/// response head and the body.
fn exchange(url: &str, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut request = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw_exchange(url, &request)
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// A config file in `dir` with `yaml`, and its path.
fn config_file(dir: &tempfile::TempDir, yaml: &str) -> String {
    let path = dir.path().join("stategate.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn attack_rebound_host_is_refused_behind_a_trusted_proxy() {
    // The README's nginx setup: loopback, a base path, loopback trusted,
    // no auth section. A page whose name was rebound to 127.0.0.1 sends its
    // own name in Host (directly, or relayed by the proxy's `Host $host`).
    let dir = tempfile::TempDir::new().unwrap();
    let config = config_file(&dir, "ui:\n  hosts: [tfstate.example.com]\n");
    let peer = LocalPeer::new();
    let server = Server::start_with(
        &peer,
        &[
            "--base-path",
            "/tfstate",
            "--trusted-proxies",
            "127.0.0.1",
            "--config",
            &config,
        ],
    );
    let body = state_doc("a0000000-0000-4000-8000-000000000001", 1, "secret-pw");
    let own = server.url.trim_start_matches("http://").to_string();
    let (status, _, _) = exchange(
        &server.url,
        &format!("POST /tfstate/states/prod/db HTTP/1.1\r\nHost: {own}"),
        &body,
    );
    assert_eq!(status, 200);

    let port = own.rsplit(':').next().unwrap();
    let evil = format!("rebind.attacker.example:{port}");
    let browser = |method: &str, path: &str, body: &[u8]| {
        exchange(
            &server.url,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: {evil}\r\nOrigin: http://{evil}\r\n\
                 Sec-Fetch-Site: same-origin\r\nContent-Type: application/json"
            ),
            body,
        )
    };
    let newer = state_doc("b0000000-0000-4000-8000-000000000002", 1, "mine");
    for (method, path, body) in [
        ("GET", "/tfstate/states/prod/db", &b""[..]),
        ("GET", "/tfstate/api/v1/states", &b""[..]),
        ("POST", "/tfstate/states/prod/db", &newer[..]),
        ("DELETE", "/tfstate/states/prod/db", &b""[..]),
    ] {
        let (status, _, answer) = browser(method, path, body);
        assert_eq!(status, 403, "{method} {path}: {}", text(&answer));
        assert!(
            !text(&answer).contains("secret-pw"),
            "{method} {path} leaked the state"
        );
    }
    // A trusted proxy that names the browser's host in X-Forwarded-Host
    // and its own upstream name in Host is held to the browser's name.
    let (status, _, _) = exchange(
        &server.url,
        &format!("GET /tfstate/states/prod/db HTTP/1.1\r\nHost: {own}\r\nX-Forwarded-Host: {evil}"),
        b"",
    );
    assert_eq!(status, 403);
    // The names the operator lists in ui.hosts, and loopback, still work
    // through the proxy.
    for host in [
        format!("tfstate.example.com:{port}"),
        "tfstate.example.com".to_string(),
        format!("localhost:{port}"),
        own.clone(),
    ] {
        let (status, _, answer) = exchange(
            &server.url,
            &format!("GET /tfstate/states/prod/db HTTP/1.1\r\nHost: {host}"),
            b"",
        );
        assert_eq!(status, 200, "{host}: {}", text(&answer));
    }
    let (_, _, stored) = exchange(
        &server.url,
        &format!("GET /tfstate/states/prod/db HTTP/1.1\r\nHost: {own}"),
        b"",
    );
    assert!(
        text(&stored).contains("secret-pw"),
        "the refused write replaced the state"
    );
}

#[test]
fn attack_a_workspace_state_has_one_name() {
    let dir = tempfile::TempDir::new().unwrap();
    let root_pw = "root-pass-3n6v";
    let dev_pw = "dev-pass-8a1q";
    let yaml = format!(
        "auth:\n  users:\n\
         \x20   - name: root\n      password_hash: \"{}\"\n      rules: [{{keys: \"**\", access: admin}}]\n\
         \x20   - name: dev\n      password_hash: \"{}\"\n      rules: [{{keys: \"**\", workspaces: [default], access: write}}]\n\
         \x20 protected:\n    - keys: \"prod/**\"\n      writers: {{claims: {{ref_protected: \"true\"}}}}\n",
        hash_password(root_pw),
        hash_password(dev_pw),
    );
    let config = config_file(&dir, &yaml);
    let audit = dir.path().join("audit.log");
    let peer = LocalPeer::new();
    let server = Server::start_with(
        &peer,
        &["--config", &config, "--audit-log", audit.to_str().unwrap()],
    );
    let root = basic("root", root_pw);
    let dev = basic("dev", dev_pw);
    let call = |method: &str, path: &str, who: &str, body: &[u8]| {
        http_with(
            method,
            &format!("{}{path}", server.url),
            &[("Authorization", who)],
            body,
        )
    };
    let doc = state_doc("c0000000-0000-4000-8000-000000000003", 1, "v");

    // Protection covers the workspace form and its alias alike.
    let (status, _) = call("POST", "/states/prod/app?workspace=staging", &root, &doc);
    assert_eq!(status, 403);
    for (method, body) in [
        ("POST", &doc[..]),
        (
            "LOCK",
            &lock_info("f0000000-0000-4000-8000-000000000001", "root@host")[..],
        ),
        ("DELETE", &b""[..]),
    ] {
        let (status, answer) = call(method, "/states/workspaces/staging/prod/app", &root, body);
        assert_eq!(status, 403, "{method} through the alias: {}", text(&answer));
    }
    // A rule narrowed to the default workspace does not reach another
    // workspace through the alias, for writing or reading.
    let (status, _) = call("POST", "/states/app?workspace=prod", &root, &doc);
    assert_eq!(status, 200);
    let (status, _) = call("POST", "/states/app?workspace=prod", &dev, &doc);
    assert_eq!(status, 403);
    let (status, _) = call("POST", "/states/workspaces/prod/app", &dev, &doc);
    assert_eq!(status, 403);
    let (status, _) = call("GET", "/states/workspaces/prod/app", &dev, b"");
    assert_eq!(status, 403);
    let (status, _) = call("GET", "/api/v1/states/workspaces/prod/app", &dev, b"");
    assert_eq!(status, 403);
    // One workspace per request: a proxy that judged the first of two and
    // a server that took the last would name two states.
    for path in [
        "/states/app?workspace=default&workspace=prod",
        "/states/app?workspace=prod&ID=a&ID=b",
        "/ui/states/app?workspace=default&workspace=prod",
        "/api/v1/states/app?workspace=default&workspace=prod",
    ] {
        let (status, answer) = call("GET", path, &dev, b"");
        assert_eq!(status, 400, "{path}: {}", text(&answer));
        assert!(
            text(&answer).contains("more than once"),
            "{path}: {}",
            text(&answer)
        );
    }
    // The admin reaches it under either spelling: one state, one lock.
    let (status, body) = call("GET", "/states/workspaces/prod/app", &root, b"");
    assert_eq!(status, 200, "{}", text(&body));
    let lock = lock_info("f0000000-0000-4000-8000-000000000002", "root@host");
    let (status, _) = call("LOCK", "/states/workspaces/prod/app", &root, &lock);
    assert_eq!(status, 200);
    let other = lock_info("f0000000-0000-4000-8000-000000000009", "root@other");
    let (status, _) = call("LOCK", "/states/app?workspace=prod", &root, &other);
    assert_eq!(status, 423, "the other spelling took a second lock");
    let (status, _) = call("UNLOCK", "/states/app?workspace=prod", &root, &lock);
    assert_eq!(status, 200);
    // The audit log names the state once, the canonical way.
    assert!(server.logs("state=app (workspace prod)"));
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(!audit.contains("workspaces/"), "{audit}");
    assert!(audit.contains("\"workspace\":\"prod\""), "{audit}");
    assert!(audit.contains("\"state\":\"prod/app\""), "{audit}");
    // The listing shows one state.
    let (status, listing) = call("GET", "/api/v1/states", &root, b"");
    assert_eq!(status, 200);
    let listing: serde_json::Value = serde_json::from_slice(&listing).unwrap();
    let keys: Vec<String> = listing["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}@{}", s["key"], s["workspace"]))
        .collect();
    assert_eq!(keys, vec!["\"app\"@\"prod\"".to_string()], "{listing}");
}

#[test]
fn attack_outputs_level_sees_no_attribute_of_an_old_format_state() {
    let dir = tempfile::TempDir::new().unwrap();
    let pw = "olga-pass-8w4c";
    let yaml = format!(
        "auth:\n  users:\n    - name: olga\n      password_hash: \"{}\"\n      rules: [{{keys: \"**\", access: outputs}}]\n",
        hash_password(pw)
    );
    let config = config_file(&dir, &yaml);
    let peer = LocalPeer::new();
    // A state of Terraform 0.11 (format 3), with a member no one named.
    let old = br#"{
  "version": 3,
  "terraform_version": "0.11.14",
  "serial": 4,
  "lineage": "d0000000-0000-4000-8000-000000000004",
  "smuggled": {"password": "top-level-secret"},
  "modules": [
    {
      "path": ["root"],
      "outputs": {"endpoint": {"sensitive": false, "type": "string", "value": "db.internal:5432"}},
      "resources": {
        "aws_db_instance.main": {
          "type": "aws_db_instance",
          "depends_on": [],
          "primary": {"id": "db-1", "attributes": {"password": "attribute-secret"}, "meta": {}, "tainted": false},
          "deposed": [],
          "provider": "provider.aws"
        }
      },
      "depends_on": []
    },
    {
      "path": ["root", "child"],
      "outputs": {"inner": {"sensitive": true, "type": "string", "value": "child-secret"}},
      "resources": {},
      "depends_on": []
    }
  ]
}
"#;
    peer.put_object("legacy/app", old);
    let modern = String::from_utf8(state_doc(
        "e0000000-0000-4000-8000-000000000005",
        2,
        "attr-v4",
    ))
    .unwrap()
    .replacen('{', "{\"smuggled\": \"extra-secret\",", 1);
    peer.put_object("modern/app", modern.as_bytes());
    let server = Server::start_with(&peer, &["--config", &config]);
    let olga = basic("olga", pw);

    let (status, body) = http_with(
        "GET",
        &server.state_url("legacy/app"),
        &[("Authorization", &olga)],
        b"",
    );
    assert_eq!(status, 200, "{}", text(&body));
    let seen = text(&body);
    for secret in [
        "attribute-secret",
        "top-level-secret",
        "child-secret",
        "db-1",
    ] {
        assert!(!seen.contains(secret), "{secret} passed: {seen}");
    }
    assert!(seen.contains("db.internal:5432"), "{seen}");

    let (status, body) = http_with(
        "GET",
        &server.state_url("modern/app"),
        &[("Authorization", &olga)],
        b"",
    );
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(seen.get("smuggled").is_none(), "{seen}");
    assert_eq!(seen["resources"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["serial"], 2, "{seen}");

    // Terraform itself reads the root outputs of the old state through
    // the outputs view.
    let tf = Terraform::new(&format!(
        r#"data "terraform_remote_state" "old" {{
  backend = "http"
  config = {{
    address  = "{}"
    username = "olga"
    password = "{pw}"
  }}
}}
output "seen" {{
  value = data.terraform_remote_state.old.outputs.endpoint
}}
"#,
        server.state_url("legacy/app")
    ));
    tf.ok(&["init", "-no-color"]);
    let out = tf.ok(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains("db.internal:5432"), "{out}");
}

#[test]
fn attack_client_values_cannot_forge_log_lines() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let forged = "FORGED level=INFO request status=200";
    let who = format!("mallory\\n{forged}\\r\\u001b[2K");
    let (status, _) = http(
        "LOCK",
        &server.state_url("logs/app"),
        &lock_info("f0000000-0000-4000-8000-000000000003", &who),
    );
    assert_eq!(status, 200);
    // A bearer token that is not a JWT, and a query and path with escapes.
    let (status, _) = http_with(
        "GET",
        &format!(
            "{}/states/logs/app%0A{}",
            server.url,
            forged.replace(' ', "%20")
        ),
        &[],
        b"",
    );
    assert_eq!(status, 400);
    assert!(server.logs("mallory"));
    let log = server.log();
    for line in log.lines() {
        assert!(
            !line.starts_with("FORGED"),
            "a forged line: {line:?}\n{log}"
        );
        assert!(
            !line.contains('\u{1b}'),
            "a terminal escape reached the log: {line:?}"
        );
    }
    assert!(log.contains("mallory\\n"), "{log}");
}

/// The `client=` of the log line of the request that carried `marker` in
/// its path.
fn logged_client(server: &Server, marker: &str) -> String {
    assert!(server.logs(marker), "{}", server.log());
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains(marker) && l.contains("client="))
        .unwrap_or_else(|| panic!("no request line for {marker}:\n{log}"));
    line.split("client=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string()
}

#[test]
fn attack_only_the_operators_header_names_the_client() {
    let peer = LocalPeer::new();
    // nginx's `$proxy_add_x_forwarded_for` appends the peer it saw; the
    // client wrote everything to its left, and a `Forwarded` of its own.
    let server = Server::start_with(&peer, &["--trusted-proxies", "127.0.0.1"]);
    let (status, _) = http_with(
        "GET",
        &server.state_url("who/one"),
        &[
            ("X-Forwarded-For", "6.6.6.6, 203.0.113.9"),
            ("Forwarded", "for=6.6.6.7"),
        ],
        b"",
    );
    assert_eq!(status, 404);
    assert_eq!(logged_client(&server, "who/one"), "203.0.113.9");
    // Behind a proxy that sets only `Forwarded`, the client's own
    // X-Forwarded-For is not read.
    let server = Server::start_with(
        &peer,
        &[
            "--trusted-proxies",
            "127.0.0.1",
            "--client-ip-header",
            "forwarded",
        ],
    );
    let (status, _) = http_with(
        "GET",
        &server.state_url("who/two"),
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            (
                "Forwarded",
                "for=6.6.6.7, for=\"198.51.100.4:4711\";proto=https",
            ),
        ],
        b"",
    );
    assert_eq!(status, 404);
    assert_eq!(logged_client(&server, "who/two"), "198.51.100.4");
    // A hop that is not an address ends the walk at the proxy that passed it.
    let (status, _) = http_with(
        "GET",
        &server.state_url("who/three"),
        &[("Forwarded", "for=6.6.6.7, for=unknown")],
        b"",
    );
    assert_eq!(status, 404);
    assert_eq!(logged_client(&server, "who/three"), "127.0.0.1");
    // A mistyped header name stops start-up naming the setting.
    let refused = Server::try_start(&peer, &["--client-ip-header", "x-real-ip"], &[])
        .err()
        .expect("start-up refused");
    assert!(refused.contains("client_ip_header"), "{refused}");
}

#[test]
fn attack_state_answers_are_never_cached() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let doc = state_doc("a1000000-0000-4000-8000-000000000006", 1, "cached-secret");
    assert_eq!(http("POST", &server.state_url("cache/app"), &doc).0, 200);
    for url in [
        server.state_url("cache/app"),
        format!("{}?history", server.state_url("cache/app")),
        format!("{}?version=1", server.state_url("cache/app")),
        format!("{}/locks/cache/app", server.url),
        server.state_url("cache/missing"),
    ] {
        let (_, headers, _) = http_full("GET", &url, &[], b"");
        let cache = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
            .map(|(_, v)| v.as_str());
        assert_eq!(cache, Some("no-store"), "{url}");
    }
}

#[test]
fn attack_case_variants_of_serial_and_lineage_are_refused() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let url = server.state_url("fold/app");
    let first = state_doc("a2000000-0000-4000-8000-000000000007", 5, "kept");
    assert_eq!(http("POST", &url, &first).0, 200);
    // stategate would read serial 50; Terraform, which matches member
    // names case-insensitively and keeps the last, would read 3.
    let text_of = |doc: &[u8]| String::from_utf8(doc.to_vec()).unwrap();
    for smuggled in [
        text_of(&state_doc("a2000000-0000-4000-8000-000000000007", 50, "x")).replacen(
            '{',
            "{\"SERIAL\": 3,",
            1,
        ),
        text_of(&state_doc("a2000000-0000-4000-8000-000000000007", 50, "x")).replacen(
            '{',
            "{\"Lineage\": \"other\",",
            1,
        ),
        text_of(&state_doc("a2000000-0000-4000-8000-000000000007", 50, "x")).replacen(
            '{',
            "{\"\u{17f}erial\": 3,",
            1,
        ),
    ] {
        let (status, answer) = http("POST", &url, smuggled.as_bytes());
        assert_eq!(status, 400, "{smuggled}: {}", text(&answer));
        assert!(
            text(&answer).contains("Terraform reads as"),
            "{}",
            text(&answer)
        );
    }
    assert_eq!(http("GET", &url, b"").1, first, "a refused body was stored");
}

#[test]
fn attack_lock_info_terraform_could_not_read_back_is_refused() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let url = server.state_url("dup/app");
    for body in [
        r#"{"ID":"f0000000-0000-4000-8000-00000000000a","Who":"a","ID":"f0000000-0000-4000-8000-00000000000b"}"#,
        r#"{"ID":"f0000000-0000-4000-8000-00000000000a","id":"f0000000-0000-4000-8000-00000000000b"}"#,
    ] {
        let (status, answer) = http("LOCK", &url, body.as_bytes());
        assert_eq!(status, 400, "{body}: {}", text(&answer));
        assert!(text(&answer).contains("twice"), "{}", text(&answer));
    }
    // A field Terraform could not decode from the holder's LockInfo would
    // make every other client's LOCK fail instead of waiting its turn.
    for (body, field) in [
        (
            r#"{"ID":"f0000000-0000-4000-8000-00000000000d","Info":{"a":1}}"#,
            "Info",
        ),
        (
            r#"{"ID":"f0000000-0000-4000-8000-00000000000d","who":7}"#,
            "who",
        ),
        (
            r#"{"ID":"f0000000-0000-4000-8000-00000000000d","Created":"yesterday"}"#,
            "Created",
        ),
    ] {
        let (status, answer) = http("LOCK", &url, body.as_bytes());
        assert_eq!(status, 400, "{body}: {}", text(&answer));
        assert!(
            text(&answer).contains(&format!("`{field}` must be")),
            "{}",
            text(&answer)
        );
    }
    // As OpenTofu's force-unlock and a Terraform LOCK send them.
    for body in [
        r#"{"ID":"f0000000-0000-4000-8000-00000000000e","Operation":"","Info":"","Who":"","Version":"","Created":"0001-01-01T00:00:00Z","Path":""}"#,
        r#"{"ID":"f0000000-0000-4000-8000-00000000000e","Info":null,"Created":"2026-11-23T22:19:50.653862037Z","Extra":{"a":1}}"#,
    ] {
        assert_eq!(http("LOCK", &url, body.as_bytes()).0, 200, "{body}");
        assert_eq!(http("UNLOCK", &url, body.as_bytes()).0, 200, "{body}");
    }
    // Nothing was locked: a lock can be taken and released as usual.
    let lock = lock_info("f0000000-0000-4000-8000-00000000000c", "me");
    assert_eq!(http("LOCK", &url, &lock).0, 200);
    assert_eq!(http("UNLOCK", &url, &lock).0, 200);
}

/// Sends a chunked request whose body is `body` in one chunk and whose
/// trailers are `trailers`; returns the status and the response body.
fn chunked_with_trailers(url: &str, path: &str, body: &[u8], trailers: &str) -> (u16, Vec<u8>) {
    let addr = url.trim_start_matches("http://");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nTrailer: Content-MD5\r\nConnection: close\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request.extend_from_slice(format!("\r\n0\r\n{trailers}\r\n").as_bytes());
    let (status, _, answer) = raw_exchange(url, &request);
    (status, answer)
}

#[test]
fn attack_content_md5_is_checked_wherever_it_is_sent() {
    use md5::{Digest, Md5};
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let doc = state_doc("a3000000-0000-4000-8000-000000000008", 1, "md5");
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let right = b64(&Md5::digest(&doc));
    let wrong = b64(&Md5::digest(b"something else"));
    // Two headers: refused, whichever comes first.
    let own = server.url.trim_start_matches("http://").to_string();
    for (a, b) in [(&right, &wrong), (&wrong, &right)] {
        let (status, _, answer) = exchange(
            &server.url,
            &format!(
                "POST /states/md5/two HTTP/1.1\r\nHost: {own}\r\nContent-MD5: {a}\r\nContent-MD5: {b}"
            ),
            &doc,
        );
        assert_eq!(status, 400, "{}", text(&answer));
    }
    assert_eq!(http("GET", &server.state_url("md5/two"), b"").0, 404);
    // A digest in the trailers binds the body like one in the head.
    let (status, answer) = chunked_with_trailers(
        &server.url,
        "/states/md5/trailer",
        &doc,
        &format!("Content-MD5: {wrong}\r\n"),
    );
    assert_eq!(status, 400, "{}", text(&answer));
    assert_eq!(http("GET", &server.state_url("md5/trailer"), b"").0, 404);
    let (status, answer) = chunked_with_trailers(
        &server.url,
        "/states/md5/trailer",
        &doc,
        &format!("Content-MD5: {right}\r\n"),
    );
    assert_eq!(status, 200, "{}", text(&answer));
}

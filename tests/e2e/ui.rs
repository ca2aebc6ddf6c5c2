//! The dashboard: states written by real `terraform` runs, the
//! pages driven in headless Chromium (`tests/ui/dashboard.mjs`, Playwright
//! on the system's Chromium), the JSON API, what the pages never show, and
//! who sees what once authentication is on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::support::stores::LocalPeer;
use crate::support::*;

/// Planted in attributes and outputs; must never reach a page or the API.
const SECRET: &str = "s3cr3t";

const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser and the driver, or a failure naming what to install.
fn browser_tools() -> (PathBuf, PathBuf) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "the dashboard tests need Chromium at {CHROMIUM}: install Debian's `chromium` package (scripts/test.sh does)"
    );
    let node = ["/usr/bin/node", "/usr/local/bin/node"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("the dashboard tests need Node.js: install Debian's `nodejs` and `npm` packages");
    let ui = repo().join("tests/ui");
    assert!(
        ui.join("node_modules/playwright-core").is_dir(),
        "the dashboard tests need playwright-core: run `npm ci` in tests/ui (scripts/test.sh does)"
    );
    (node, ui)
}

/// Where screenshots are kept: `<target>/ui-screenshots`.
fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("ui-screenshots")
}

fn backend(address: &str) -> String {
    format!(
        r#"terraform {{
  backend "http" {{
    address        = "{address}"
    lock_address   = "{address}"
    unlock_address = "{address}"
  }}
}}
"#
    )
}

/// A configuration with `count`, `for_each`, a module, and secrets in
/// attributes and outputs (sensitive and not).
fn config(address: &str) -> Terraform {
    let hcl = format!(
        r#"{}
variable "n" {{
  default = 1
}}
variable "v" {{
  default = "a"
}}
resource "terraform_data" "secret" {{
  input = "{SECRET}-attr-${{var.v}}"
}}
resource "terraform_data" "counted" {{
  count = var.n
  input = "{SECRET}-count-${{count.index}}"
}}
resource "terraform_data" "each" {{
  for_each = toset(["blue", "green"])
  input    = "{SECRET}-each-${{each.key}}"
}}
module "net" {{
  source = "./net"
  v      = var.v
}}
output "password" {{
  value     = "{SECRET}-output-${{var.v}}"
  sensitive = true
}}
output "endpoint" {{
  value = "{SECRET}-plain-${{var.v}}"
}}
"#,
        backend(address)
    );
    let tf = Terraform::new(&hcl);
    std::fs::create_dir_all(tf.dir.path().join("net")).unwrap();
    tf.write(
        "net/main.tf",
        format!(
            "variable \"v\" {{}}\nresource \"terraform_data\" \"inner\" {{\n  input = \"{SECRET}-module-${{var.v}}\"\n}}\n"
        )
        .as_bytes(),
    );
    tf
}

fn get_json(url: &str, headers: &[(&str, &str)]) -> (u16, Value, String) {
    let (status, body) = http_with("GET", url, headers, b"");
    let text = text(&body);
    let json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"));
    (status, json, text)
}

/// One raw request with the given headers (ureq would set `Host` itself).
fn raw(server: &Server, request: &str) -> u16 {
    let addr = server.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let line = String::from_utf8_lossy(&out);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line}"))
}

#[test]
fn ui_dashboard_in_chromium_over_real_terraform_states() {
    let (node, ui_dir) = browser_tools();
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let app = "app/net.tfstate";
    let locked = "team-b/db.tfstate";

    // Three applies with changes in between: v1 n=1; v2 adds two counted
    // instances; v3 drops one and changes the secret and the module.
    let tf = config(&server.state_url(app));
    tf.init_apply(&["n=1", "v=a"]);
    tf.apply(&["n=3", "v=a"]);
    tf.apply(&["n=2", "v=b"]);
    let dev = config(&format!("{}?workspace=dev", server.state_url(app)));
    dev.init_apply(&[]);
    let db = config(&server.state_url(locked));
    db.init_apply(&[]);
    // A lock held since long ago by a CI run that died.
    let lock_id = "8d6a0f0e-5c1b-4f43-9d0e-2b7c1a9e4f11";
    let info = format!(
        r#"{{"ID":"{lock_id}","Operation":"OperationTypeApply","Info":"","Who":"ci@runner-7","Version":"1.11.4","Created":"2026-01-02T03:04:05.123456789Z","Path":""}}"#
    );
    assert_eq!(
        http("LOCK", &server.state_url(locked), info.as_bytes()).0,
        200
    );
    // Its age is the store's: the lock object written months ago.
    crate::support::stores::backdate(
        &peer.object_path(&format!("{locked}.tflock")),
        Duration::from_secs(90 * 24 * 3600),
    );

    let api = |path: &str| get_json(&format!("{}/api/v1/{path}", server.url), &[]);
    let (status, detail, _) = api(&format!("states/{app}"));
    assert_eq!(status, 200);
    let versions: Vec<u64> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert!(versions.len() >= 3, "{versions:?}");
    let (from, to) = (versions[0], *versions.last().unwrap());

    // The API: list, filters, one state, a diff, the locks, errors.
    let mut api_texts = Vec::new();
    let (status, list, t) = api("states");
    assert_eq!(status, 200, "{t}");
    api_texts.push(t);
    let states = list["states"].as_array().unwrap();
    assert_eq!(states.len(), 3, "{list}");
    assert_eq!(list["next_page"], Value::Null);
    let db_row = states.iter().find(|s| s["key"] == locked).unwrap();
    assert_eq!(db_row["lock"]["ID"], lock_id);
    assert_eq!(db_row["lock"]["Who"], "ci@runner-7");
    assert!(db_row["lock"]["age_seconds"].as_u64().unwrap() > 3600);
    let app_row = states
        .iter()
        .find(|s| s["key"] == app && s["workspace"] == "default")
        .unwrap();
    assert_eq!(app_row["resources"], 4, "{app_row}");
    assert!(app_row["serial"].as_u64().unwrap() >= 3, "{app_row}");
    assert_eq!(app_row["lock"], Value::Null);
    for (query, expected) in [
        ("states?prefix=team-b", vec![locked]),
        ("states?workspace=dev", vec![app]),
    ] {
        let (_, l, t) = api(query);
        let keys: Vec<&str> = l["states"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, expected, "{query}");
        api_texts.push(t);
    }
    let (status, diff, t) = api(&format!("diff/{app}?from={from}&to={to}"));
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        diff["added"],
        serde_json::json!(["terraform_data.counted[1]"])
    );
    let changed: Vec<&str> = diff["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    assert!(changed.contains(&"terraform_data.secret"), "{diff}");
    assert!(
        changed.contains(&"module.net.terraform_data.inner"),
        "{diff}"
    );
    assert_eq!(
        diff["outputs_changed"],
        serde_json::json!(["endpoint", "password"])
    );
    api_texts.push(t);
    let (_, mid, t) = api(&format!("diff/{app}?from={}&to={}", versions[1], to));
    assert_eq!(
        mid["removed"],
        serde_json::json!(["terraform_data.counted[2]"]),
        "{mid}"
    );
    api_texts.push(t);
    let (status, locks, t) = api("locks");
    assert_eq!(status, 200);
    assert_eq!(locks["locks"][0]["key"], locked, "{locks}");
    api_texts.push(t);
    api_texts.push(api(&format!("states/{app}")).2);
    api_texts.push(api(&format!("states/{app}?workspace=dev")).2);
    let (status, missing, _) = api("states/no/such.tfstate");
    assert_eq!(status, 404);
    assert!(
        missing["error"].as_str().unwrap().contains("no/such"),
        "{missing}"
    );
    let (status, bad, _) = api("states/..%2fx");
    assert_eq!(status, 400, "{bad}");
    for t in &api_texts {
        assert!(!t.contains(SECRET), "the API showed a secret value:\n{t}");
    }

    // Pages carry the security headers; other hosts and other sites are
    // refused (DNS rebinding, cross-site forms).
    let (status, headers, _) = http_full("GET", &format!("{}/ui/", server.url), &[], b"");
    assert_eq!(status, 200);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
    assert!(!header("content-security-policy").contains("unsafe"));
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("x-frame-options"), "DENY");
    let port = server.url.rsplit(':').next().unwrap();
    let get_as = |host: &str, path: &str| {
        raw(
            &server,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(get_as(&format!("rebound.example:{port}"), "/ui/"), 403);
    assert_eq!(
        get_as(&format!("rebound.example:{port}"), "/api/v1/states"),
        403
    );
    assert_eq!(
        get_as(
            &format!("rebound.example:{port}"),
            &format!("/states/{app}")
        ),
        403
    );
    assert_eq!(get_as(&format!("localhost:{port}"), "/ui/"), 200);
    assert_eq!(
        get_as(&format!("127.0.0.1:{port}"), &format!("/states/{app}")),
        200
    );
    let post_from = |origin_header: &str, path: &str| {
        raw(
            &server,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{origin_header}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\nConnection: close\r\n\r\nversion=1"
            ),
        )
    };
    let restore_path = format!("/ui/restore/{app}");
    assert_eq!(post_from("Origin: http://evil.example", &restore_path), 403);
    assert_eq!(post_from("Sec-Fetch-Site: cross-site", &restore_path), 403);
    assert_eq!(
        post_from("Sec-Fetch-Site: cross-site", &format!("/states/{app}")),
        403
    );
    // Same origin, but no CSRF token.
    assert_eq!(
        post_from(&format!("Origin: http://127.0.0.1:{port}"), &restore_path),
        403
    );

    // The browser run.
    let shots = screenshot_dir();
    let expect = serde_json::json!({
        "app": app,
        "locked": locked,
        "lock_id": lock_id,
        "from": from,
        "to": to,
        "added": ["terraform_data.counted[1]"],
        "removed": [],
        "changed": ["terraform_data.secret", "module.net.terraform_data.inner"],
    });
    let started = Instant::now();
    let out = Command::new(node)
        .arg("dashboard.mjs")
        .current_dir(&ui_dir)
        .env("STATEGATE_URL", &server.url)
        .env("SHOTS_DIR", &shots)
        .env("EXPECT", expect.to_string())
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    let stdout = text(&out.stdout);
    let result: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "the browser script printed no result ({e}); exit {}:\n{stdout}\n{}",
            out.status,
            text(&out.stderr)
        )
    });
    eprintln!(
        "browser run: {:.1}s, screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
    assert_eq!(
        result["failures"],
        serde_json::json!([]),
        "browser checks failed; stderr:\n{}",
        text(&out.stderr)
    );
    assert!(out.status.success());
    let pages = result["pages"].as_array().unwrap();
    assert!(pages.len() >= 9, "{} pages", pages.len());
    for p in pages {
        let html = p["html"].as_str().unwrap();
        assert!(
            !html.contains(SECRET),
            "the page {} ({}) showed a secret value",
            p["name"],
            p["url"]
        );
    }
    for name in ["states", "state", "diff", "lock", "restore"] {
        for width in ["desktop", "phone"] {
            assert!(shots.join(format!("{name}-{width}.png")).is_file());
        }
    }

    // The release and the restore happened, were audited, and terraform
    // sees the restored state: version `from` had one counted instance,
    // the configuration wants two.
    assert_eq!(
        http("GET", &format!("{}/locks/{locked}", server.url), b"").0,
        404
    );
    for line in ["\"audit\":\"force_unlock\"", "\"restored_version\":"] {
        assert!(server.logs(line), "{line}:\n{}", server.log());
    }
    let plan = tf.run(&[
        "plan",
        "-no-color",
        "-detailed-exitcode",
        "-var",
        "n=2",
        "-var",
        "v=b",
    ]);
    let plan_text = text(&plan.stdout);
    assert_eq!(
        plan.status.code(),
        Some(2),
        "{plan_text}{}",
        text(&plan.stderr)
    );
    assert!(
        plan_text.contains("terraform_data.counted[1] will be created"),
        "{plan_text}"
    );
}

#[test]
fn ui_lists_thousands_of_states_a_page_at_a_time_without_reading_them() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    const N: usize = 1200;
    for i in 0..N {
        let url = server.state_url(&format!("fleet/svc-{i:04}.tfstate"));
        assert_eq!(
            http("POST", &url, &state_doc("lineage-fleet", 1, "v")).0,
            200
        );
    }
    // One written by another tool: no history, no summary; built once.
    std::fs::create_dir_all(peer.root().join("other")).unwrap();
    std::fs::write(
        peer.object_path("other/found.tfstate"),
        state_doc("lineage-other", 7, "v"),
    )
    .unwrap();

    let timed = |path: &str| {
        let started = Instant::now();
        let (status, body) = http("GET", &format!("{}{path}", server.url), b"");
        assert_eq!(status, 200, "{path}: {}", text(&body));
        (started.elapsed(), body)
    };
    // The first listing builds the missing summary; later ones only read.
    let (_, first) = timed("/api/v1/states");
    let list: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(list["total"], N + 1);
    assert_eq!(list["states"].as_array().unwrap().len(), 50);
    assert_eq!(list["next_page"], 2);
    let found = timed("/api/v1/states?prefix=other/").1;
    let found: Value = serde_json::from_slice(&found).unwrap();
    assert_eq!(found["states"][0]["serial"], 7, "{found}");
    assert!(
        peer.object_path(".stategate/history/other/found.tfstate/summary.json")
            .is_file()
    );
    let (last_page, body) = timed(&format!("/api/v1/states?page={}", N / 50 + 1));
    let last: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(last["next_page"], Value::Null);
    assert_eq!(last["states"].as_array().unwrap().len(), (N + 1) % 50);
    let (html_time, html) = timed("/ui/?page=3");
    let html = text(&html);
    assert_eq!(html.matches("<td class=\"key\">").count(), 50);
    assert!(html.contains("Page 3"));
    eprintln!(
        "{} states: /ui/?page=3 in {} ms, /api/v1/states last page in {} ms",
        N + 1,
        html_time.as_millis(),
        last_page.as_millis()
    );
    assert!(html_time < Duration::from_secs(3), "{html_time:?}");
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[test]
fn ui_shows_a_user_only_the_states_they_may_read() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("stategate.yaml");
    let users = [
        ("ann", "ann-pass-4k2m", "team-a/**", "read"),
        ("root", "root-pass-9q1z", "**", "admin"),
    ];
    let mut yaml = String::from("auth:\n  users:\n");
    for (user, pass, keys, access) in users {
        yaml.push_str(&format!(
            "    - name: {user}\n      password_hash: \"{}\"\n      rules: [{{keys: \"{keys}\", access: {access}}}]\n",
            hash_password(pass)
        ));
    }
    std::fs::write(&config, yaml).unwrap();
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--config", config.to_str().unwrap()]);
    let ann = basic("ann", "ann-pass-4k2m");
    let root = basic("root", "root-pass-9q1z");
    for key in ["team-a/web.tfstate", "team-b/hidden-db.tfstate"] {
        let (status, _) = http_with(
            "POST",
            &server.state_url(key),
            &[("Authorization", &root)],
            &state_doc("lineage-auth", 1, "v"),
        );
        assert_eq!(status, 200);
        let (status, _) = http_with(
            "POST",
            &server.state_url(key),
            &[("Authorization", &root)],
            &state_doc("lineage-auth", 2, "w"),
        );
        assert_eq!(status, 200);
    }
    let lock = lock_info("a7c1e5d2-0000-4000-8000-000000000001", "root@host");
    let (status, _) = http_with(
        "LOCK",
        &server.state_url("team-b/hidden-db.tfstate"),
        &[("Authorization", &root)],
        &lock,
    );
    assert_eq!(status, 200);

    let url = |path: &str| format!("{}{path}", server.url);
    // No credentials: 401 with a Basic challenge, so a browser asks.
    let (status, headers, _) = http_full("GET", &url("/ui/"), &[], b"");
    assert_eq!(status, 401);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("www-authenticate") && v.starts_with("Basic"))
    );
    let (status, body) = http("GET", &url("/api/v1/states"), b"");
    assert_eq!(status, 401);
    assert!(text(&body).contains("\"error\""));

    // ann reads team-a only: team-b is in no page and no answer.
    let as_ann = [("Authorization", ann.as_str())];
    for path in [
        "/ui/",
        "/ui/locks",
        "/api/v1/states",
        "/api/v1/locks",
        "/ui/states/team-a/web.tfstate",
    ] {
        let (status, body) = http_with("GET", &url(path), &as_ann, b"");
        assert_eq!(status, 200, "{path}");
        let body = text(&body);
        assert!(
            !body.contains("team-b") && !body.contains("hidden-db"),
            "{path}:\n{body}"
        );
    }
    let (_, list) = http_with("GET", &url("/api/v1/states"), &as_ann, b"");
    let list: Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["total"], 1);
    for path in [
        "/api/v1/states/team-b/hidden-db.tfstate",
        "/api/v1/diff/team-b/hidden-db.tfstate?from=1&to=2",
        "/ui/states/team-b/hidden-db.tfstate",
        "/ui/locks/team-b/hidden-db.tfstate",
    ] {
        let (status, body) = http_with("GET", &url(path), &as_ann, b"");
        assert_eq!(status, 403, "{path}: {}", text(&body));
    }
    // Reading is not administering: no restore, no release, for ann.
    let (status, _) = http_with(
        "GET",
        &url("/ui/restore/team-a/web.tfstate?version=1"),
        &as_ann,
        b"",
    );
    assert_eq!(status, 403);
    let page = text(&http_with("GET", &url("/ui/states/team-a/web.tfstate"), &as_ann, b"").1);
    assert!(!page.contains("Restore…"), "{page}");

    // root sees both and may restore, with a token made for root.
    let as_root = [("Authorization", root.as_str())];
    let (_, list) = http_with("GET", &url("/api/v1/states"), &as_root, b"");
    let list: Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list["total"], 2);
    let confirm = text(
        &http_with(
            "GET",
            &url("/ui/restore/team-a/web.tfstate?version=1"),
            &as_root,
            b"",
        )
        .1,
    );
    let token = confirm
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the form")
        .to_string();
    let form = format!("csrf={token}&version=1");
    // The answer is a 303 to the state page, not followed here. Each POST
    // on a connection of its own: the server may close the one a refusal
    // went out on before reading the form, and a POST is not sent again.
    let post = |auth: &str| {
        let agent = ureq::AgentBuilder::new().redirects(0).build();
        let result = agent
            .post(&url("/ui/restore/team-a/web.tfstate"))
            .set("Authorization", auth)
            .set("Content-Type", "application/x-www-form-urlencoded")
            .send_string(&form);
        match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r.status(),
            Err(e) => panic!("{e}"),
        }
    };
    // ann may not use it (not an admin), and it is root's token anyway.
    assert_eq!(post(&ann), 403);
    assert_eq!(post(&root), 303);
    let (_, detail) = http_with(
        "GET",
        &url("/api/v1/states/team-a/web.tfstate"),
        &as_root,
        b"",
    );
    let detail: Value = serde_json::from_slice(&detail).unwrap();
    assert_eq!(detail["current"]["serial"], 1, "{detail}");
    assert_eq!(detail["current"]["operation"], "restore");
    assert_eq!(detail["current"]["identity"], "user:root");
}

#[test]
fn ui_lives_below_the_base_path_and_not_on_the_admin_address() {
    let peer = LocalPeer::new();
    let server = Server::start_with(
        &peer,
        &["--base-path", "/tfstate", "--admin-listen", "127.0.0.1:0"],
    );
    let base = format!("{}/tfstate", server.url);
    let key = "below/base.tfstate";
    let url = format!("{base}/states/{key}");
    assert_eq!(
        http("POST", &url, &state_doc("lineage-base", 1, "v")).0,
        200
    );
    assert_eq!(
        http("POST", &url, &state_doc("lineage-base", 2, "w")).0,
        200
    );

    let (status, body) = http("GET", &format!("{base}/ui/"), b"");
    assert_eq!(status, 200);
    let html = text(&body);
    assert!(
        html.contains(&format!("href=\"/tfstate/ui/states/{key}\"")),
        "{html}"
    );
    assert!(html.contains("href=\"/tfstate/ui/style.css\""), "{html}");
    let (status, css) = http("GET", &format!("{base}/ui/style.css"), b"");
    assert_eq!(status, 200);
    assert!(text(&css).contains("font-family"));
    assert_eq!(http("GET", &format!("{}/ui/", server.url), b"").0, 404);
    assert_eq!(
        http("GET", &format!("{}/api/v1/states", server.url), b"").0,
        404
    );
    let (status, headers, _) = http_full("GET", &format!("{base}/api/v1/diff/{key}"), &[], b"");
    assert_eq!(status, 200, "{headers:?}");
    let page = text(&http("GET", &format!("{base}/ui/states/{key}"), b"").1);
    assert!(
        page.contains("/tfstate/ui/restore/below/base.tfstate?version=1"),
        "{page}"
    );
    let (status, _) = http("DELETE", &format!("{base}/api/v1/states"), b"");
    assert_eq!(status, 405);

    // The admin address serves /metrics, /readyz and /healthz only, at its
    // root, where probes and scrapers ask.
    let admin = server
        .log()
        .lines()
        .find_map(|l| l.split("serving /metrics and /readyz on ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        .expect("the admin address in the log");
    assert_eq!(http("GET", &format!("{admin}/metrics"), b"").0, 200);
    assert_eq!(http("GET", &format!("{admin}/ui/"), b"").0, 404);
    assert_eq!(http("GET", &format!("{admin}/tfstate/ui/"), b"").0, 404);
}

/// A state of `resources` resource blocks, one instance each, whose
/// attributes depend on `serial` (so two serials differ everywhere).
fn many_resources(lineage: &str, serial: u64, resources: usize) -> Vec<u8> {
    let blocks: Vec<Value> = (0..resources)
        .map(|i| {
            serde_json::json!({
                "mode": "managed", "type": format!("t{}", i % 7), "name": format!("r{i}"),
                "provider": "provider[\"terraform.io/builtin/terraform\"]",
                "instances": [{"schema_version": 0, "attributes": {
                    "id": format!("{i}-{serial}"), "input": {"value": "v", "type": "string"},
                    "tags": ["a", "b", serial.to_string()], "size": i,
                }}]
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "version": 4, "serial": serial, "lineage": lineage,
        "outputs": {"o": {"value": serial, "type": "number"}},
        "resources": blocks,
    }))
    .unwrap()
}

fn hwm_mib(server: &Server) -> u64 {
    proc_status_kib(server.pid(), "VmHWM") / 1024
}

#[test]
fn ui_refuses_to_parse_a_state_above_max_view_bytes_and_memory_stays_bounded() {
    const LIMIT: usize = 4 * 1024 * 1024;
    let peer = LocalPeer::new();
    let start = |peer: &LocalPeer| {
        Server::try_start(
            peer,
            &[],
            &[("STATEGATE_UI_MAX_VIEW_BYTES", &LIMIT.to_string())],
        )
        .unwrap_or_else(|log| panic!("stategate did not start:\n{log}"))
    };
    let writer = start(&peer);

    // Two versions of a state three times the limit, and two of one below it.
    let big = "big/fleet.tfstate";
    let mut big_size = 0;
    for serial in 1..=2 {
        let body = many_resources("lineage-big", serial, 60_000);
        big_size = body.len();
        assert_eq!(http("POST", &writer.state_url(big), &body).0, 200);
    }
    assert!(big_size > 3 * LIMIT, "{big_size}");
    let small = "small/fleet.tfstate";
    for serial in 1..=2 {
        let body = many_resources("lineage-small", serial, 12_000);
        assert!(body.len() < LIMIT, "{}", body.len());
        assert_eq!(http("POST", &writer.state_url(small), &body).0, 200);
    }
    // A fresh process, so that its peak is the views' alone.
    assert!(writer.terminate());
    let server = start(&peer);
    let url = |path: &str| format!("{}{path}", server.url);
    let before = hwm_mib(&server);

    // The diff API refuses with 413, naming the size, the limit and the setting.
    for _ in 0..3 {
        let (status, diff, t) = get_json(&url(&format!("/api/v1/diff/{big}")), &[]);
        assert_eq!(status, 413, "{t}");
        let why = diff["error"].as_str().unwrap();
        assert!(
            why.contains("ui.max_view_bytes") && why.contains(&LIMIT.to_string()),
            "{why}"
        );
        assert!(!why.contains('\n'), "{why}");
    }
    // The page shows what it knows without the body, and says why not more.
    for _ in 0..3 {
        let (status, page) = http("GET", &url(&format!("/ui/states/{big}")), b"");
        let page = text(&page);
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("ui.max_view_bytes"), "{page}");
        assert!(
            page.contains("Resources and outputs are not shown"),
            "{page}"
        );
        assert!(page.contains("The diff is not shown"), "{page}");
        assert!(page.contains("<dt>Serial</dt><dd>2</dd>"), "{page}");
    }
    let (status, detail, t) = get_json(&url(&format!("/api/v1/states/{big}")), &[]);
    assert_eq!(status, 200, "{t}");
    assert_eq!(detail["overview"], Value::Null, "{t}");
    assert_eq!(detail["current"]["serial"], 2, "{t}");
    assert!(
        detail["too_large"]
            .as_str()
            .unwrap()
            .contains("ui.max_view_bytes")
    );
    let after_big = hwm_mib(&server);
    eprintln!(
        "peak RSS: {before} MiB after the writes, {after_big} MiB after refusing the large state"
    );
    // Refusing reads no body: the peak stays below one body's size.
    assert!(
        after_big - before < (big_size / (1024 * 1024)) as u64,
        "{before} -> {after_big} MiB for a {big_size}-byte state"
    );

    // Below the limit the views work, and six at once stay within a fixed
    // multiple of the limit (two run at a time, each holding at most two
    // bodies and what is parsed from them).
    let views: Vec<_> = (0..6)
        .map(|i| {
            let u = if i % 2 == 0 {
                url(&format!("/api/v1/diff/{small}"))
            } else {
                url(&format!("/ui/states/{small}"))
            };
            std::thread::spawn(move || http("GET", &u, b""))
        })
        .collect();
    for v in views {
        let (status, body) = v.join().unwrap();
        assert_eq!(status, 200, "{}", text(&body));
    }
    let (_, diff, _) = get_json(&url(&format!("/api/v1/diff/{small}")), &[]);
    assert_eq!(diff["changed"].as_array().unwrap().len(), 12_000);
    assert_eq!(diff["outputs_changed"], serde_json::json!(["o"]));
    let after_small = hwm_mib(&server);
    eprintln!("peak RSS: {after_small} MiB after six views of a state below the limit");
    assert!(
        after_small - before < 64 * (LIMIT / (1024 * 1024)) as u64,
        "{before} -> {after_small} MiB"
    );
}

#[test]
fn ui_paging_numbers_past_any_list_answer_instead_of_overflowing() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let key = "paging/over.tfstate";
    for serial in 1..=2 {
        let body = state_doc("lineage-paging", serial, "v");
        assert_eq!(http("POST", &server.state_url(key), &body).0, 200);
    }
    for path in [
        "/api/v1/states?page=368934881474191033",
        "/api/v1/states?page=18446744073709551615",
    ] {
        let (status, body) = raw_request(&server.url, "GET", path, b"");
        let list: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "{path}: {list}");
        assert_eq!(list["states"], serde_json::json!([]), "{path}: {list}");
        assert_eq!(list["next_page"], Value::Null, "{path}: {list}");
        assert_eq!(list["total"], 1, "{path}: {list}");
    }
    for path in [
        "/ui/?page=18446744073709551615",
        "/ui/?page=368934881474191033",
    ] {
        let (status, body) = raw_request(&server.url, "GET", path, b"");
        let page = text(&body);
        assert_eq!(status, 200, "{path}: {page}");
        assert!(page.contains("No state matches."), "{path}: {page}");
    }
    // Other numbers from the URL: too large to be numbers, or versions
    // and history pages that do not exist.
    for (path, expected) in [
        ("/ui/?page=18446744073709551616", 400),
        (
            "/api/v1/diff/paging/over.tfstate?from=18446744073709551615&to=1",
            404,
        ),
        (
            "/api/v1/diff/paging/over.tfstate?from=1&to=18446744073709551615",
            404,
        ),
        (
            "/ui/states/paging/over.tfstate?before=18446744073709551615",
            200,
        ),
        (
            "/ui/states/paging/over.tfstate?from=18446744073709551615",
            404,
        ),
        (
            "/api/v1/states/paging/over.tfstate?limit=18446744073709551615",
            400,
        ),
        ("/api/v1/states/paging/over.tfstate?before=0", 400),
        (
            "/ui/restore/paging/over.tfstate?version=18446744073709551615",
            404,
        ),
    ] {
        let (status, body) = raw_request(&server.url, "GET", path, b"");
        assert_eq!(status, expected, "{path}: {}", text(&body));
    }
}

#[test]
fn ui_state_page_shows_history_a_page_at_a_time() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let key = "long/history.tfstate";
    const VERSIONS: u64 = 60;
    for serial in 1..=VERSIONS {
        let body = state_doc("lineage-long", serial, &format!("v{serial}"));
        assert_eq!(http("POST", &server.state_url(key), &body).0, 200);
    }
    let rows = |page: &str| -> Vec<u64> {
        let history = page.split("<table class=\"history\">").nth(1).unwrap();
        let body = history.split("</tbody>").next().unwrap();
        body.split("<tr")
            .skip(2)
            .map(|row| {
                row.split("<td class=\"num\">")
                    .nth(1)
                    .unwrap()
                    .split('<')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    let (status, first) = http("GET", &format!("{}/ui/states/{key}", server.url), b"");
    let first = text(&first);
    assert_eq!(status, 200, "{first}");
    let shown = rows(&first);
    assert_eq!(shown, (11..=VERSIONS).rev().collect::<Vec<_>>(), "{first}");
    // The newest two are compared; the latest is current.
    assert!(first.contains("Version 59 → 60"), "{first}");
    let older = first
        .split("<a href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|href| href.contains("before="))
        .expect("a link to older versions")
        .replace("&amp;", "&");
    assert!(older.contains("before=11"), "{older}");
    let (status, second) = http("GET", &format!("{}{older}", server.url), b"");
    let second = text(&second);
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        rows(&second),
        (1..=10).rev().collect::<Vec<_>>(),
        "{second}"
    );
    assert!(!second.contains("Older →"), "{second}");
    assert!(second.contains("← Newest"), "{second}");
    assert!(second.contains("name=\"before\" value=\"11\""), "{second}");
    // The facts at the top are the current state's, whichever page.
    assert!(second.contains("<dt>Serial</dt><dd>60</dd>"), "{second}");

    let api = |q: &str| get_json(&format!("{}/api/v1/states/{key}{q}", server.url), &[]).1;
    let page = api("");
    let versions: Vec<u64> = page["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (11..=VERSIONS).collect::<Vec<_>>());
    assert_eq!(page["next_before"], 11);
    assert_eq!(page["newest"], VERSIONS);
    let last = api("?before=11");
    assert_eq!(last["history"].as_array().unwrap().len(), 10);
    assert_eq!(last["next_before"], Value::Null);
    assert_eq!(api("?limit=5")["history"].as_array().unwrap().len(), 5);
}

/// The CSRF token of the form on `page`.
fn csrf_token(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in the form:\n{page}"))
        .to_string()
}

/// POSTs a form as `auth`, not following the 303; returns status and body.
fn post_form(url: &str, auth: &str, form: &str) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let result = agent
        .post(url)
        .set("Authorization", auth)
        .set("Content-Type", "application/x-www-form-urlencoded")
        .send_string(form);
    match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => {
            let status = r.status();
            (status, r.into_string().unwrap_or_default())
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn ui_restore_while_locked_needs_an_admin_and_force() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("stategate.yaml");
    let audit = dir.path().join("audit.log");
    let mut yaml = String::from("auth:\n  users:\n");
    for (user, pass, access) in [
        ("wes", "wes-pass-7t3b", "write"),
        ("root", "root-pass-9q1z", "admin"),
    ] {
        yaml.push_str(&format!(
            "    - name: {user}\n      password_hash: \"{}\"\n      rules: [{{keys: \"**\", access: {access}}}]\n",
            hash_password(pass)
        ));
    }
    std::fs::write(&config, yaml).unwrap();
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
    let wes = basic("wes", "wes-pass-7t3b");
    let root = basic("root", "root-pass-9q1z");
    let state = server.state_url("team/app.tfstate");
    for serial in [1, 2] {
        let doc = state_doc("lineage-restore", serial, &format!("v{serial}"));
        assert_eq!(
            http_with("POST", &state, &[("Authorization", &wes)], &doc).0,
            200
        );
    }
    let lock = lock_info("b1c2d3e4-0000-4000-8000-000000000001", "wes@laptop");
    assert_eq!(
        http_with("LOCK", &state, &[("Authorization", &wes)], &lock).0,
        200
    );

    let url = |path: &str| format!("{}{path}", server.url);
    let confirm_url = url("/ui/restore/team/app.tfstate?version=1");
    let restore_url = url("/ui/restore/team/app.tfstate");
    let serial_now = || {
        let (_, detail) = http_with(
            "GET",
            &url("/api/v1/states/team/app.tfstate"),
            &[("Authorization", &root)],
            b"",
        );
        let detail: Value = serde_json::from_slice(&detail).unwrap();
        detail["current"]["serial"].as_u64().unwrap()
    };

    // wes, who holds the lock but is not an admin, may not restore, forced
    // or not.
    assert_eq!(
        http_with("GET", &confirm_url, &[("Authorization", &wes)], b"").0,
        403
    );
    let root_page = text(&http_with("GET", &confirm_url, &[("Authorization", &root)], b"").1);
    assert!(
        root_page.contains("name=\"force\""),
        "the confirmation of a locked state offers the force: {root_page}"
    );
    let token = csrf_token(&root_page);
    for form in ["version=1", "version=1&force=true"] {
        let form = format!("csrf={token}&{form}");
        assert_eq!(post_form(&restore_url, &wes, &form).0, 403, "{form}");
    }
    // root without force: refused while locked, with the one-line reason
    // every refusal of the dashboard gives, and nothing written.
    let (status, body) = post_form(&restore_url, &root, &format!("csrf={token}&version=1"));
    assert_eq!(status, 423, "{body}");
    assert!(body.contains("locked"), "{body}");
    assert_eq!(serial_now(), 2);
    let (status, body) = post_form(
        &restore_url,
        &root,
        &format!("csrf={token}&version=1&force=maybe"),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(serial_now(), 2);
    // root with force: restored past the lock, which stays with wes.
    let (status, body) = post_form(
        &restore_url,
        &root,
        &format!("csrf={token}&version=1&force=true"),
    );
    assert_eq!(status, 303, "{body}");
    assert_eq!(serial_now(), 1);
    let (status, holder) = http_with(
        "GET",
        &url("/locks/team/app.tfstate"),
        &[("Authorization", &root)],
        b"",
    );
    assert_eq!(status, 200);
    assert!(text(&holder).contains("wes@laptop"));

    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let restores: Vec<&Value> = lines.iter().filter(|l| l["audit"] == "restore").collect();
    assert_eq!(
        restores.len(),
        1,
        "only the forced restore happened: {lines:#?}"
    );
    let restore = restores[0];
    assert_eq!(restore["identity"], "user:root");
    assert_eq!(restore["restored_version"], 1);
    assert_eq!(restore["force"], true);
    assert_eq!(restore["via"], "dashboard");
    assert!(
        lines.iter().any(|l| l["audit"] == "denied"
            && l["identity"] == "user:wes"
            && l["status"] == 403
            && l["via"] == "dashboard"),
        "{lines:#?}"
    );
}

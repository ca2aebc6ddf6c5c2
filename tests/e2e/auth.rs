//! Authentication and permissions, with the real `terraform`: users by
//! Basic auth, tokens as Bearer or as the Basic password of `token`,
//! levels on key patterns (outputs, read, write, admin), locks that belong
//! to the identity that took them, the audit log, and start-up refusals.
//! Hashes are made with `stategate hash-password` and `stategate token
//! new`, as an operator would.

use std::process::{Command, Stdio};

use base64::Engine;

use crate::support::stores::LocalPeer;
use crate::support::*;

const PASSWORDS: &[(&str, &str)] = &[
    ("alice", "alice-pass-7f3k"),
    ("carol", "carol-pass-2m9x"),
    ("bob", "bob-pass-5q1z"),
    ("olga", "olga-pass-8w4c"),
    ("root", "root-pass-3n6v"),
];

fn password(user: &str) -> &'static str {
    PASSWORDS.iter().find(|(u, _)| *u == user).unwrap().1
}

/// `stategate token new NAME`: the token and its hash.
fn new_token(name: &str) -> (String, String) {
    let (shown, token) = token_new(name);
    let hash = shown
        .split('"')
        .find(|w| w.starts_with("$argon2id$"))
        .unwrap_or_else(|| panic!("no hash in {shown}"))
        .to_string();
    (token, hash)
}

/// A server with users alice and carol (write on team-a), bob (read on
/// team-a), olga (outputs everywhere), root (admin everywhere) and the
/// token `ci` (write on ci/**).
struct Secured {
    peer: LocalPeer,
    server: Server,
    token: String,
    audit: std::path::PathBuf,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Secured {
    fn start() -> Secured {
        Self::start_with(&[])
    }

    /// [`Secured::start`] with extra command-line arguments.
    fn start_with(extra: &[&str]) -> Secured {
        let levels = [
            ("alice", "team-a/**", "write"),
            ("carol", "team-a/**", "write"),
            ("bob", "team-a/**", "read"),
            ("olga", "**", "outputs"),
            ("root", "**", "admin"),
        ];
        let mut yaml = String::from("auth:\n  users:\n");
        for (user, keys, access) in levels {
            yaml.push_str(&format!(
                "    - name: {user}\n      password_hash: \"{}\"\n      rules: [{{keys: \"{keys}\", access: {access}}}]\n",
                hash_password(password(user))
            ));
        }
        let (token, token_hash) = new_token("ci");
        yaml.push_str(&format!(
            "  tokens:\n    - name: ci\n      token_hash: \"{token_hash}\"\n      rules: [{{keys: \"ci/**\", access: write}}]\n"
        ));
        let dir = tempfile::TempDir::new().unwrap();
        let config = dir.path().join("stategate.yaml");
        std::fs::write(&config, yaml).unwrap();
        let audit = dir.path().join("audit.log");
        let peer = LocalPeer::new();
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let server = Server::start_with(&peer, &args);
        Secured {
            peer,
            server,
            token,
            audit,
            config,
            _dir: dir,
        }
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

fn as_user(user: &str) -> String {
    basic(user, password(user))
}

fn call(method: &str, url: &str, auth: &str, body: &[u8]) -> (u16, Vec<u8>) {
    http_with(method, url, &[("Authorization", auth)], body)
}

fn tf_env(user: &str, pass: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TF_HTTP_USERNAME", user.to_string()),
        ("TF_HTTP_PASSWORD", pass.to_string()),
    ]
}

fn run_tf(tf: &Terraform, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    tf.run_env(args, &env)
}

fn ok_tf(tf: &Terraform, args: &[&str], env: &[(&str, String)]) -> String {
    let out = run_tf(tf, args, env);
    assert!(
        out.status.success(),
        "terraform {args:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn backend(url: &str, key: &str) -> String {
    format!(
        r#"terraform {{
  backend "http" {{
    address        = "{url}/states/{key}"
    lock_address   = "{url}/states/{key}"
    unlock_address = "{url}/states/{key}"
  }}
}}
resource "terraform_data" "db" {{
  input = "db-password-Zx81"
}}
output "endpoint" {{
  value = "db.internal:5432"
}}
"#
    )
}

fn remote_state(url: &str, key: &str, user: &str) -> String {
    format!(
        r#"data "terraform_remote_state" "app" {{
  backend = "http"
  config = {{
    address  = "{url}/states/{key}"
    username = "{user}"
    password = "{}"
  }}
}}
output "seen" {{
  value = data.terraform_remote_state.app.outputs.endpoint
}}
"#,
        password(user)
    )
}

/// `terraform init` and `apply` of [`backend`] at `key`, as alice.
fn apply_as_alice(s: &Secured, key: &str) {
    let tf = Terraform::new(&backend(&s.server.url, key));
    let env = tf_env("alice", password("alice"));
    ok_tf(&tf, &["init", "-no-color"], &env);
    ok_tf(&tf, &["apply", "-auto-approve", "-no-color"], &env);
}

#[test]
fn auth_right_credentials_apply_and_wrong_ones_get_401() {
    let s = Secured::start();
    apply_as_alice(&s, "team-a/app");
    assert!(s.peer.object_path("team-a/app").is_file());

    let wrong = Terraform::new(&backend(&s.server.url, "team-a/app"));
    let out = run_tf(
        &wrong,
        &["init", "-no-color"],
        &tf_env("alice", "not-her-password"),
    );
    let out2 = run_tf(
        &wrong,
        &["plan", "-no-color"],
        &tf_env("alice", "not-her-password"),
    );
    assert!(!out2.status.success(), "a wrong password planned");
    let shown = format!("{}{}", text(&out.stderr), text(&out2.stderr));
    // Terraform's words for a 401.
    assert!(shown.contains("requires auth"), "{shown}");

    let (status, headers, _) = http_full("GET", &s.server.state_url("team-a/app"), &[], b"");
    assert_eq!(status, 401);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("www-authenticate") && v.contains("Basic"))
    );
    assert_eq!(
        http("GET", &format!("{}/healthz", s.server.url), b"").0,
        200,
        "health needs no credentials"
    );
    // Another team's key: 403 naming the permission, for every verb.
    let (status, reason) = call(
        "GET",
        &s.server.state_url("team-b/x"),
        &as_user("alice"),
        b"",
    );
    assert_eq!(status, 403);
    assert!(text(&reason).contains("read"), "{}", text(&reason));
}

#[test]
fn auth_read_only_user_reads_remote_state_but_cannot_apply() {
    let s = Secured::start();
    apply_as_alice(&s, "team-a/app");

    let reader = Terraform::new(&remote_state(&s.server.url, "team-a/app", "bob"));
    reader.ok(&["init", "-no-color"]);
    let out = reader.ok(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains("db.internal:5432"), "{out}");

    let writer = Terraform::new(&backend(&s.server.url, "team-a/app"));
    ok_tf(
        &writer,
        &["init", "-no-color"],
        &tf_env("bob", password("bob")),
    );
    let out = run_tf(
        &writer,
        &["apply", "-auto-approve", "-no-color"],
        &tf_env("bob", password("bob")),
    );
    assert!(!out.status.success(), "a read-only user applied");
    // Terraform's words for a 403.
    assert!(
        text(&out.stderr).contains("invalid auth"),
        "{}",
        text(&out.stderr)
    );
}

/// The outputs view is built from the outputs' text, not from values:
/// an output of four million small elements (8 MB of state) raised the
/// server's peak by about 250 MB for each request of the least trusted
/// identity there is.
#[test]
fn auth_outputs_view_costs_about_the_size_of_the_outputs() {
    let s = Secured::start();
    let elements = 4_000_000;
    let value = format!("[{}0]", "0,".repeat(elements - 1));
    let body = format!(
        r#"{{"version":4,"terraform_version":"1.9.0","serial":1,"lineage":"big","outputs":{{"list":{{"value":{value},"type":["list","number"]}}}},"resources":[]}}"#
    );
    let url = s.server.state_url("team-a/big");
    assert_eq!(call("POST", &url, &as_user("root"), body.as_bytes()).0, 200);
    let before = proc_status_kib(s.server.pid(), "VmHWM");
    let (status, view) = call("GET", &url, &as_user("olga"), b"");
    assert_eq!(status, 200, "{}", text(&view[..view.len().min(300)]));
    let after = proc_status_kib(s.server.pid(), "VmHWM");
    let shown: serde_json::Value = serde_json::from_slice(&view).unwrap();
    assert_eq!(
        shown["outputs"]["list"]["value"].as_array().map(Vec::len),
        Some(elements)
    );
    assert_eq!(shown["resources"], serde_json::json!([]));
    assert!(
        after.saturating_sub(before) <= 48 * 1024,
        "the outputs view of an {} MB state raised the peak resident size by {} KiB",
        body.len() / 1_000_000,
        after.saturating_sub(before)
    );
}

#[test]
fn auth_outputs_level_sees_outputs_and_no_resource_attribute() {
    let s = Secured::start();
    apply_as_alice(&s, "team-a/app");

    let (status, body) = call(
        "GET",
        &s.server.state_url("team-a/app"),
        &as_user("olga"),
        b"",
    );
    assert_eq!(status, 200);
    let body = text(&body);
    assert!(body.contains("db.internal:5432"), "{body}");
    assert!(
        !body.contains("db-password-Zx81"),
        "a resource attribute was shown: {body}"
    );
    let (status, _) = call(
        "GET",
        &format!("{}?history", s.server.state_url("team-a/app")),
        &as_user("olga"),
        b"",
    );
    assert_eq!(status, 403, "history holds whole states");

    let reader = Terraform::new(&remote_state(&s.server.url, "team-a/app", "olga"));
    reader.ok(&["init", "-no-color"]);
    let out = reader.ok(&["apply", "-auto-approve", "-no-color"]);
    assert!(out.contains("db.internal:5432"), "{out}");
}

#[test]
fn auth_locks_belong_to_the_identity_that_took_them() {
    let s = Secured::start();
    let url = s.server.state_url("team-a/locked");
    assert_eq!(
        call("POST", &url, &as_user("alice"), &state_doc("l", 1, "x")).0,
        200
    );
    let info = lock_info("alice-lock", "alice@host");
    assert_eq!(call("LOCK", &url, &as_user("alice"), &info).0, 200);
    // carol may write to team-a, but the lock is alice's: its ID is not enough.
    assert_eq!(call("UNLOCK", &url, &as_user("carol"), &info).0, 403);
    assert_eq!(call("LOCK", &url, &as_user("carol"), &info).0, 403);
    let (status, _) = call(
        "POST",
        &format!("{url}?ID=alice-lock"),
        &as_user("carol"),
        &state_doc("l", 2, "y"),
    );
    assert_eq!(status, 403);
    assert_eq!(
        call("UNLOCK", &url, &as_user("carol"), b"").0,
        403,
        "force-unlock needs admin"
    );
    assert_eq!(
        call("UNLOCK", &url, &as_user("bob"), &info).0,
        403,
        "read cannot unlock"
    );
    // alice writes and unlocks her own lock.
    let (status, _) = call(
        "POST",
        &format!("{url}?ID=alice-lock"),
        &as_user("alice"),
        &state_doc("l", 2, "y"),
    );
    assert_eq!(status, 200);
    assert_eq!(call("UNLOCK", &url, &as_user("alice"), &info).0, 200);

    // With terraform: a write user's force-unlock of another's lock is
    // refused, an admin's is accepted.
    assert_eq!(call("LOCK", &url, &as_user("alice"), &info).0, 200);
    let tf = Terraform::new(&backend(&s.server.url, "team-a/locked"));
    ok_tf(
        &tf,
        &["init", "-no-color"],
        &tf_env("carol", password("carol")),
    );
    let out = run_tf(
        &tf,
        &["force-unlock", "-force", "alice-lock"],
        &tf_env("carol", password("carol")),
    );
    assert!(
        !out.status.success(),
        "a write user force-unlocked: {}",
        text(&out.stdout)
    );
    assert!(s.peer.object_path("team-a/locked.tflock").is_file());
    let admin = Terraform::new(&backend(&s.server.url, "team-a/locked"));
    ok_tf(
        &admin,
        &["init", "-no-color"],
        &tf_env("root", password("root")),
    );
    ok_tf(
        &admin,
        &["force-unlock", "-force", "alice-lock"],
        &tf_env("root", password("root")),
    );
    assert!(!s.peer.object_path("team-a/locked.tflock").exists());
}

#[test]
fn auth_tokens_work_as_bearer_and_as_the_basic_password() {
    let s = Secured::start();
    let url = s.server.state_url("ci/pipeline");
    let bearer = format!("Bearer {}", s.token);
    assert_eq!(call("POST", &url, &bearer, &state_doc("c", 1, "x")).0, 200);
    assert_eq!(call("GET", &url, &basic("token", &s.token), b"").0, 200);
    assert_eq!(
        call("GET", &s.server.state_url("team-a/app"), &bearer, b"").0,
        403
    );
    let forged = format!("Bearer {}x", s.token);
    assert_eq!(call("GET", &url, &forged, b"").0, 401);

    let tf = Terraform::new(&backend(&s.server.url, "ci/terraform"));
    ok_tf(&tf, &["init", "-no-color"], &tf_env("token", &s.token));
    ok_tf(
        &tf,
        &["apply", "-auto-approve", "-no-color"],
        &tf_env("token", &s.token),
    );
    assert!(s.peer.object_path("ci/terraform").is_file());
}

#[test]
fn auth_audit_log_records_actions_and_never_a_secret() {
    let s = Secured::start();
    let url = s.server.state_url("team-a/audited");
    let info = lock_info("L1", "alice@host");
    assert_eq!(call("LOCK", &url, &as_user("alice"), &info).0, 200);
    assert_eq!(
        call(
            "POST",
            &format!("{url}?ID=L1"),
            &as_user("alice"),
            &state_doc("a", 4, "x")
        )
        .0,
        200
    );
    assert_eq!(
        call(
            "POST",
            &format!("{url}?ID=L1"),
            &as_user("alice"),
            &state_doc("a", 2, "x")
        )
        .0,
        409
    );
    let next = state_doc("a", 5, "y");
    assert_eq!(
        call("POST", &format!("{url}?ID=L1"), &as_user("alice"), &next).0,
        200
    );
    assert_eq!(call("UNLOCK", &url, &as_user("alice"), &info).0, 200);
    assert_eq!(
        call(
            "LOCK",
            &url,
            &as_user("alice"),
            &lock_info("L2", "alice@host")
        )
        .0,
        200
    );
    assert_eq!(call("UNLOCK", &url, &as_user("root"), b"").0, 200);
    assert_eq!(
        call("GET", &url, &basic("alice", "wrong-guess-123"), b"").0,
        401
    );
    assert_eq!(call("DELETE", &url, &as_user("alice"), b"").0, 403);
    assert_eq!(
        call("GET", &url, &format!("Bearer {}", s.token), b"").0,
        403
    );

    let lines = s.audit_lines();
    let find = |action: &str| {
        lines
            .iter()
            .find(|l| l["audit"] == action)
            .unwrap_or_else(|| panic!("no {action} event in {lines:#?}"))
            .clone()
    };
    let lock = find("lock");
    assert_eq!(lock["identity"], "user:alice");
    assert_eq!(lock["state"], "team-a/audited");
    assert_eq!(lock["lock_id"], "L1");
    assert_eq!(lock["client"], "127.0.0.1");
    assert_eq!(find("write")["serial"], 4);
    assert!(
        find("write")["previous_serial"].is_null(),
        "the first write replaced nothing"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["audit"] == "write" && l["serial"] == 5 && l["previous_serial"] == 4),
        "{lines:#?}"
    );
    assert!(
        find("write_refused")["reason"]
            .as_str()
            .unwrap()
            .contains("serial")
    );
    assert_eq!(find("unlock")["identity"], "user:alice");
    let forced = find("force_unlock");
    assert_eq!(forced["identity"], "user:root");
    assert_eq!(forced["previous_holder"], "alice@host");
    let denied: Vec<_> = lines.iter().filter(|l| l["audit"] == "denied").collect();
    assert!(denied.iter().any(|l| l["status"] == 401), "{denied:?}");
    assert!(
        denied
            .iter()
            .any(|l| l["status"] == 403 && l["identity"] == "token:ci"),
        "{denied:?}"
    );

    // History records the identity beside the LockInfo's Who.
    let (status, history) = call("GET", &format!("{url}?history"), &as_user("alice"), b"");
    assert_eq!(status, 200);
    let history: serde_json::Value = serde_json::from_slice(&history).unwrap();
    let newest = history["versions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(newest["identity"], "user:alice", "{newest}");
    assert_eq!(newest["who"], "alice@host", "{newest}");
    let raw = std::fs::read_to_string(&s.audit).unwrap();
    let log = s.server.log();
    for (_, pass) in PASSWORDS {
        assert!(
            !raw.contains(pass) && !log.contains(pass),
            "a password reached a log"
        );
    }
    assert!(!raw.contains("wrong-guess-123") && !log.contains("wrong-guess-123"));
    let secret_part = s.token.rsplit('_').next().unwrap();
    assert!(
        !raw.contains(secret_part) && !log.contains(secret_part),
        "a token reached a log"
    );
}

#[test]
fn auth_configuration_mistakes_stop_start_up() {
    let peer = LocalPeer::new();
    let dir = tempfile::TempDir::new().unwrap();
    let write = |name: &str, yaml: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        p.display().to_string()
    };
    let plain = write(
        "plain.yaml",
        "auth:\n  users:\n    - name: alice\n      password: hunter2\n      rules: [{keys: \"**\", access: read}]\n",
    );
    let log = Server::try_start(&peer, &["--config", &plain], &[])
        .err()
        .expect("refused");
    assert!(
        log.contains("setting `auth.users[alice].password_hash`"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
    let bad_level = write(
        "level.yaml",
        &format!(
            "auth:\n  users:\n    - name: alice\n      password_hash: \"{}\"\n      rules: [{{keys: \"**\", access: owner}}]\n",
            hash_password("level-test-pass")
        ),
    );
    let log = Server::try_start(&peer, &["--config", &bad_level], &[])
        .err()
        .expect("refused");
    assert!(log.contains("auth.users[alice].rules"), "{log}");

    // Beyond loopback without an auth section: refused, unless auth: none.
    let out = Command::new(bin())
        .args(["serve", "--listen", "0.0.0.0:0", "-C"])
        .arg(format!("path={}", peer.root().display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("setting `auth`"),
        "{}",
        text(&out.stderr)
    );
    let mut open = Command::new(bin());
    open.args(["serve", "--listen", "0.0.0.0:0", "--auth", "none", "-C"])
        .arg(format!("path={}", peer.root().display()));
    let (open, seen) = spawn_until_listening(open);
    drop(open);
    assert!(seen.contains("anyone who reaches this port"), "{seen}");
}

#[test]
fn auth_section_reloads_on_sighup_and_a_broken_one_is_kept_out() {
    let s = Secured::start();
    let url = s.server.state_url("team-a/reload");
    assert_eq!(
        call("POST", &url, &as_user("bob"), &state_doc("r", 1, "x")).0,
        403
    );
    let yaml = std::fs::read_to_string(&s.config).unwrap();
    assert_eq!(yaml.matches("access: read").count(), 1, "{yaml}");
    std::fs::write(&s.config, yaml.replace("access: read", "access: write")).unwrap();
    signal(s.server.pid(), "HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while call("POST", &url, &as_user("bob"), &state_doc("r", 1, "x")).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new section was not applied:\n{}",
            s.server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A broken section is logged and the one in force stays.
    std::fs::write(
        &s.config,
        "auth:\n  users:\n    - name: bob\n      password: plain\n",
    )
    .unwrap();
    signal(s.server.pid(), "HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s.server.log().contains("auth reload failed") {
        assert!(std::time::Instant::now() < deadline, "{}", s.server.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!s.server.log().contains("password: plain") && !s.server.log().contains("plain\""));
    assert_eq!(
        call("POST", &url, &as_user("bob"), &state_doc("r", 2, "y")).0,
        200
    );
    assert_eq!(call("GET", &url, &as_user("olga"), b"").0, 200);
}

/// Failed credentials one address may have hashed within a minute; the
/// budget README.md states.
const FAILURE_BUDGET: usize = 10;

/// A request as if relayed by the trusted proxy 127.0.0.1 for `client`.
fn call_from(client: &str, url: &str, auth: &str) -> (u16, Option<String>, Vec<u8>) {
    let (status, headers, body) = http_full(
        "GET",
        url,
        &[("Authorization", auth), ("X-Forwarded-For", client)],
        b"",
    );
    let retry_after = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .map(|(_, v)| v.clone());
    (status, retry_after, body)
}

#[test]
fn auth_concurrent_guesses_from_one_address_are_counted_before_hashing() {
    let s = Secured::start_with(&["--trusted-proxies", "127.0.0.1"]);
    let url = s.server.state_url("team-a/guarded");
    let attacker = "127.0.0.66";
    const GUESSES: usize = 60;
    let answers: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let guesses: Vec<_> = (0..GUESSES)
            .map(|i| {
                let url = &url;
                scope.spawn(move || {
                    let (status, retry_after, _) =
                        call_from(attacker, url, &basic("alice", &format!("guess-{i}")));
                    (status, retry_after)
                })
            })
            .collect();
        guesses.into_iter().map(|g| g.join().unwrap()).collect()
    });
    // Only guesses that were hashed can be answered 401; every other one
    // was turned away before argon2 ran.
    let hashed = answers.iter().filter(|(status, _)| *status != 429).count();
    assert!(
        answers
            .iter()
            .all(|(status, _)| *status == 401 || *status == 429),
        "{answers:?}"
    );
    assert!(
        hashed <= FAILURE_BUDGET,
        "{hashed} of {GUESSES} concurrent guesses were hashed: {answers:?}"
    );
    for (_, retry_after) in answers.iter().filter(|(status, _)| *status == 429) {
        let seconds: u64 = retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a 429 without a Retry-After in seconds: {retry_after:?}"));
        assert!((1..=60).contains(&seconds), "Retry-After: {seconds}");
    }
    // The address is over its budget: even the right password is not
    // hashed for it until the window has passed.
    let (status, retry_after, body) = call_from(attacker, &url, &as_user("alice"));
    assert_eq!(status, 429, "{}", text(&body));
    assert!(retry_after.is_some());
    assert!(text(&body).contains("try again"), "{}", text(&body));
    // Another address in good standing logs in (404: nothing stored yet).
    let (status, _, body) = call_from("127.0.0.77", &url, &as_user("alice"));
    assert_eq!(status, 404, "{}", text(&body));
    let throttled = s
        .audit_lines()
        .into_iter()
        .filter(|l| l["audit"] == "denied" && l["status"] == 429)
        .count();
    assert!(throttled >= GUESSES - FAILURE_BUDGET, "{throttled} audited");
}

#[test]
fn auth_guesses_from_many_addresses_do_not_hold_up_an_address_that_logged_in() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = Secured::start_with(&["--trusted-proxies", "127.0.0.1"]);
    let url = s.server.state_url("team-a/guarded");
    let client = "127.0.0.9";
    // It logs in once (404: nothing stored yet): its address is trusted.
    assert_eq!(call_from(client, &url, &as_user("alice")).0, 404);
    // One guess from each of many addresses, each its first: all in good
    // standing, so budgets do not stop them.
    const GUESSERS: usize = 200;
    let (sent, answered) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for i in 0..GUESSERS {
            let (url, sent, answered) = (&url, &sent, &answered);
            scope.spawn(move || {
                let guesser = format!("10.9.{}.{}", i / 200, i % 200 + 1);
                sent.fetch_add(1, Ordering::SeqCst);
                let (status, _, body) =
                    call_from(&guesser, url, &basic("alice", &format!("guess-{i}")));
                assert_eq!(status, 401, "{}", text(&body));
                answered.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Once every guess is sent and the first is answered, the others
        // wait for a hasher.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while sent.load(Ordering::SeqCst) < GUESSERS || answered.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the guesses were not answered"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        // The trusted address logs in with a credential not cached (bob
        // reads team-a): it waits for at most the verifications under way,
        // not for the guesses queued before it.
        let (status, _, body) = call_from(client, &url, &as_user("bob"));
        assert_eq!(status, 404, "{}", text(&body));
        let before = answered.load(Ordering::SeqCst);
        assert!(
            before < GUESSERS / 2,
            "the login waited for {before} of {GUESSERS} guesses to be answered first"
        );
    });
}

/// A server whose configuration file is `yaml`.
fn start_configured(yaml: &str) -> (LocalPeer, Server, tempfile::TempDir) {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("stategate.yaml");
    std::fs::write(&config, yaml).unwrap();
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--config", config.to_str().unwrap()]);
    (peer, server, dir)
}

/// The start-up refusal of a configuration file `yaml`.
fn refusal(yaml: &str) -> String {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("stategate.yaml");
    std::fs::write(&config, yaml).unwrap();
    Server::try_start(
        &LocalPeer::new(),
        &["--config", config.to_str().unwrap()],
        &[],
    )
    .err()
    .unwrap_or_else(|| panic!("started with:\n{yaml}"))
}

/// An `auth.oidc` entry granting my-org's pipelines write on `prod/**`.
fn prod_writers_issuer(url: &str) -> String {
    format!(
        "    - issuer: {url}\n      audience: stategate\n      rules:\n        - claims: {{repository_owner: my-org}}\n          keys: \"prod/**\"\n          access: write\n"
    )
}

fn write_as(server: &Server, key: &str, token: &str) -> (u16, String) {
    let (status, body) = call(
        "POST",
        &server.state_url(key),
        &format!("Bearer {token}"),
        &state_doc(&key.replace('/', "-"), 1, "x"),
    );
    (status, text(&body))
}

#[test]
fn auth_every_matching_protected_entry_must_allow_the_writer_in_either_order() {
    use crate::oidc::Issuer;
    use serde_json::json;

    let issuer = Issuer::start();
    let broad = "    - keys: \"prod/**\"\n      writers: {claims: {ref_protected: \"true\"}}\n";
    let narrow = "    - keys: \"prod/db/**\"\n      writers: {claims: {repository: my-org/db}}\n";
    for (order, first, second) in [
        ("broad first", broad, narrow),
        ("narrow first", narrow, broad),
    ] {
        let yaml = format!(
            "auth:\n  oidc:\n{}  protected:\n{first}{second}",
            prod_writers_issuer(&issuer.url)
        );
        let (_peer, server, _dir) = start_configured(&yaml);
        let app_on_main = issuer.mint(json!({}), json!({}));
        let db_on_main = issuer.mint(json!({"repository": "my-org/db"}), json!({}));
        let db_on_a_branch = issuer.mint(
            json!({"repository": "my-org/db", "ref": "refs/heads/feature", "ref_protected": "false"}),
            json!({}),
        );
        let (status, why) = write_as(&server, "prod/network", &app_on_main);
        assert_eq!(status, 200, "{order}: {why}");
        // prod/** allows it, prod/db/** does not.
        let (status, why) = write_as(&server, "prod/db/main", &app_on_main);
        assert_eq!(status, 403, "{order}: {why}");
        assert!(why.contains("keys prod/db/**"), "{order}: {why}");
        // prod/db/** allows it, prod/** does not.
        let (status, why) = write_as(&server, "prod/db/main", &db_on_a_branch);
        assert_eq!(status, 403, "{order}: {why}");
        assert!(why.contains("keys prod/**"), "{order}: {why}");
        // Both allow it.
        let (status, why) = write_as(&server, "prod/db/main", &db_on_main);
        assert_eq!(status, 200, "{order}: {why}");
    }
}

#[test]
fn auth_protected_writers_match_only_tokens_of_their_issuer() {
    use crate::oidc::Issuer;
    use serde_json::json;

    let ci = Issuer::start();
    let other = Issuer::start();
    let issuers = format!(
        "  oidc:\n{}{}",
        prod_writers_issuer(&ci.url),
        prod_writers_issuer(&other.url)
    );
    let yaml = format!(
        "auth:\n{issuers}  protected:\n    - keys: \"prod/**\"\n      writers: {{issuer: \"{}/\", claims: {{ref_protected: \"true\"}}}}\n",
        ci.url
    );
    let (_peer, server, _dir) = start_configured(&yaml);
    // The same claims from the other issuer: its rules grant write, but
    // the protected entry names the CI issuer.
    let (status, why) = write_as(&server, "prod/network", &other.mint(json!({}), json!({})));
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("protected"), "{why}");
    let (status, why) = write_as(&server, "prod/network", &ci.mint(json!({}), json!({})));
    assert_eq!(status, 200, "{why}");

    // With two issuers a writers entry must say which one it trusts.
    let log = refusal(&format!(
        "auth:\n{issuers}  protected:\n    - keys: \"prod/**\"\n      writers: {{claims: {{ref_protected: \"true\"}}}}\n"
    ));
    assert!(
        log.contains("setting `auth.protected[prod/**].writers.issuer`"),
        "{log}"
    );
    // And it must be one that is configured, with one issuer too.
    let log = refusal(&format!(
        "auth:\n  oidc:\n{}  protected:\n    - keys: \"prod/**\"\n      writers: {{issuer: \"https://gitlab.example.com\", claims: {{ref_protected: \"true\"}}}}\n",
        prod_writers_issuer(&ci.url)
    ));
    assert!(
        log.contains("setting `auth.protected[prod/**].writers.issuer`")
            && log.contains("gitlab.example.com"),
        "{log}"
    );
}

#[test]
fn auth_unknown_users_are_verified_with_the_strongest_configured_parameters() {
    use argon2::password_hash::{PasswordHasher, SaltString};

    // 64 MiB and three passes, against the default 19 MiB and two: an
    // unknown name must cost what this user's wrong password costs. The
    // cost shows in the memory argon2 fills, which the process's peak
    // resident size records without any clock.
    let strong = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(65536, 3, 1, None).unwrap(),
    )
    .hash_password(
        b"dora-pass-6t1e",
        &SaltString::encode_b64(b"a fixed salt 16b").unwrap(),
    )
    .unwrap()
    .to_string();
    let yaml = format!(
        "auth:\n  users:\n    - name: dora\n      password_hash: \"{strong}\"\n      rules: [{{keys: \"**\", access: read}}]\n    - name: alice\n      password_hash: \"{}\"\n      rules: [{{keys: \"**\", access: read}}]\n",
        hash_password(password("alice"))
    );
    let (_peer, server, _dir) = start_configured(&yaml);
    let before = proc_status_kib(server.pid(), "VmHWM");
    let (status, _) = call(
        "GET",
        &server.state_url("x"),
        &basic("nobody", "anything-at-all"),
        b"",
    );
    assert_eq!(status, 401);
    let after = proc_status_kib(server.pid(), "VmHWM");
    assert!(
        after >= before + 48 * 1024,
        "verifying an unknown name raised the peak resident size by {} KiB, from {before} KiB; 64 MiB of argon2 memory would show",
        after.saturating_sub(before)
    );
}

/// A token past its `expires` is refused like a wrong one: its attempts
/// count against the address's budget (each was forgiven once its hash
/// matched, so an expired token could be tried without end, and made its
/// address one that had logged in).
#[test]
fn auth_an_expired_token_counts_as_a_failed_attempt() {
    let (token, token_hash) = new_token("gone");
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("stategate.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  tokens:\n    - name: gone\n      token_hash: \"{token_hash}\"\n      expires: 2020-01-01T00:00:00Z\n      rules: [{{keys: \"**\", access: read}}]\n"
        ),
    )
    .unwrap();
    let peer = LocalPeer::new();
    let server = Server::start_with(
        &peer,
        &[
            "--config",
            config.to_str().unwrap(),
            "--trusted-proxies",
            "127.0.0.1",
        ],
    );
    let url = server.state_url("team-a/guarded");
    let bearer = format!("Bearer {token}");
    for attempt in 1..=FAILURE_BUDGET {
        let (status, _, body) = call_from("127.0.0.50", &url, &bearer);
        assert_eq!(status, 401, "attempt {attempt}: {}", text(&body));
        assert!(text(&body).contains("has expired"), "{}", text(&body));
    }
    let (status, retry_after, body) = call_from("127.0.0.50", &url, &bearer);
    assert_eq!(status, 429, "over the budget: {}", text(&body));
    assert!(retry_after.is_some());
}

/// On a listener for both IPv4 and IPv6 (`[::]`), an IPv4 proxy arrives as
/// `::ffff:127.0.0.1`: it is still the trusted proxy `127.0.0.1`, so the
/// clients it names keep budgets of their own (the proxy's was shared by
/// all of them, and one client's guesses locked every other one out).
#[test]
fn auth_an_ipv4_proxy_on_a_dual_stack_listener_is_trusted() {
    let peer = LocalPeer::new();
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("stategate.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  users:\n    - name: alice\n      password_hash: \"{}\"\n      rules: [{{keys: \"**\", access: read}}]\n",
            hash_password(password("alice"))
        ),
    )
    .unwrap();
    let mut server = Command::new(bin());
    server
        .args([
            "serve",
            "--listen",
            "[::]:0",
            "--trusted-proxies",
            "127.0.0.1",
        ])
        .arg("--config")
        .arg(&config)
        .arg("-C")
        .arg(format!("path={}", peer.root().display()));
    let (server, seen) = spawn_until_listening(server);
    let port = seen
        .split("listening on http://[::]:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("not listening on [::] (is IPv6 on?):\n{seen}"))
        .to_string();
    // Over IPv4, as a proxy on the same machine reaches it.
    let url = format!("http://127.0.0.1:{port}/states/app");
    for _ in 0..=FAILURE_BUDGET {
        call_from("127.0.0.2", &url, &basic("alice", "a guess"));
    }
    let (status, _, body) = call_from("127.0.0.3", &url, &as_user("alice"));
    drop(server);
    // 404: nothing stored yet.
    assert_eq!(status, 404, "another client of the proxy: {}", text(&body));
}

/// A server started by a test itself, killed when dropped (also when the
/// test fails).
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` (a `serve`) and reads its log until it says where it
/// listens: the process, and the log so far. The rest of the log is read
/// and dropped, so the server never waits on a full pipe, nor writes to
/// a closed one.
fn spawn_until_listening(mut cmd: Command) -> (Spawned, String) {
    let mut child = Spawned(
        cmd.stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut seen = String::new();
    let mut stderr = std::io::BufReader::new(child.0.stderr.take().unwrap());
    while !seen.contains("listening on") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "the server did not start:\n{seen}");
        seen.push_str(&line);
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, seen)
}

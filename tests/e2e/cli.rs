//! The command line and start-up: defaults, the merge of file, environment
//! and `-C`, refusals that name the setting, graceful shutdown, `check`.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use crate::support::stores::LocalPeer;
use crate::support::*;

/// Runs `stategate serve` with `args` expecting it to refuse to start;
/// returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::TempDir::new().unwrap();
    let out = Command::new(bin())
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "stategate serve {args:?} should have refused to start"
    );
    text(&out.stderr)
}

#[test]
fn wrong_settings_stop_start_up_naming_the_setting() {
    let e = refused(&["--storage-type", "floppy"], &[]);
    assert!(
        e.contains("storageType") && e.contains("floppy") && e.contains("local"),
        "{e}"
    );
    let e = refused(&["--listen", "127.0.0.1:0", "-C", "bucket=x"], &[]);
    assert!(e.contains("unknown setting `bucket`"), "{e}");
    let e = refused(&["--listen", "not-an-address"], &[]);
    assert!(e.contains("setting `listen`"), "{e}");
    let e = refused(
        &[
            "--listen",
            "127.0.0.1:0",
            "-C",
            "path=/proc/stategate-cannot-be-here",
        ],
        &[],
    );
    assert!(e.contains("setting `path`"), "{e}");
    let e = refused(&["--listen", "127.0.0.1:0", "--log-format", "xml"], &[]);
    assert!(e.contains("setting `log_format`"), "{e}");
    let e = refused(
        &["--listen", "127.0.0.1:0", "-C", "allow_unsafe_locks=maybe"],
        &[],
    );
    assert!(e.contains("allow_unsafe_locks"), "{e}");
    let e = refused(
        &["--listen", "127.0.0.1:0"],
        &[("STATEGATE_HISTORY_KEEP", "lots")],
    );
    assert!(e.contains("setting `history_keep`"), "{e}");
    let e = refused(&["--config", "/nonexistent/stategate.yaml"], &[]);
    assert!(e.contains("config file /nonexistent/stategate.yaml"), "{e}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = refused(&["--listen", &addr], &[]);
    assert!(e.contains("setting `listen`") && e.contains(&addr), "{e}");
}

#[test]
fn config_file_keys_are_checked() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("stategate.yaml");
    std::fs::write(
        &file,
        "listen: 127.0.0.1:0\nbackend:\n  storageType: local\n  config:\n    paht: x\n",
    )
    .unwrap();
    let e = refused(&["--config", file.to_str().unwrap()], &[]);
    assert!(e.contains("unknown setting `paht`"), "{e}");
    std::fs::write(&file, "lisen: 127.0.0.1:0\n").unwrap();
    let e = refused(&["--config", file.to_str().unwrap()], &[]);
    assert!(e.contains("lisen"), "{e}");
}

/// The store path the server announces on start.
fn announced_path(server: &Server) -> String {
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap()
        .to_string();
    line.split("local store at ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn command_line_beats_environment_beats_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let file = root.join("stategate.yaml");
    std::fs::write(
        &file,
        format!("listen: 127.0.0.1:0\nbackend:\n  storageType: local\n  config:\n    path: {}/from-file\n", root.display()),
    )
    .unwrap();
    let peer = ConfigPeer { args: vec![] };
    let config = ["--config", file.to_str().unwrap()];
    let env_path = format!("{}/from-env", root.display());
    let cli_path = format!("path={}/from-cli", root.display());

    let s = Server::try_start(&peer, &config, &[]).unwrap();
    assert_eq!(announced_path(&s), format!("{}/from-file", root.display()));
    let s = Server::try_start(&peer, &config, &[("STATEGATE_LOCAL_PATH", &env_path)]).unwrap();
    assert_eq!(announced_path(&s), env_path);
    let with_cli = [&config[..], &["-C", &cli_path]].concat();
    let s = Server::try_start(&peer, &with_cli, &[("STATEGATE_LOCAL_PATH", &env_path)]).unwrap();
    assert_eq!(announced_path(&s), format!("{}/from-cli", root.display()));
}

/// A peer that adds nothing, so the test's own arguments decide.
struct ConfigPeer {
    args: Vec<(String, String)>,
}

impl Peer for ConfigPeer {
    fn storage_type(&self) -> &str {
        "local"
    }
    fn settings(&self) -> Vec<(String, String)> {
        self.args.clone()
    }
    fn object_keys(&self) -> Vec<String> {
        Vec::new()
    }
    fn put_object(&self, _key: &str, _body: &[u8]) {
        unimplemented!("this peer only starts servers")
    }
    fn object_bytes(&self, _key: &str) -> Vec<u8> {
        unimplemented!("this peer only starts servers")
    }
}

#[test]
fn serve_with_no_arguments_uses_the_local_store_on_8080() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut child = Command::new(bin())
        .arg("serve")
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("listening on") {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "stategate serve exited: {}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let log = text(&seen);
    let root = dir.path().canonicalize().unwrap();
    assert!(log.contains("listening on http://127.0.0.1:8080"), "{log}");
    assert!(
        log.contains(&format!("local store at {}/stategate-data", root.display())),
        "{log}"
    );
    assert_eq!(http("GET", "http://127.0.0.1:8080/healthz", b"").0, 200);
    // The README's quickstart block, exactly as pasted.
    let tf = Terraform::new(&example_text("quickstart"));
    tf.init_apply(&[]);
    assert!(
        root.join("stategate-data/quickstart/terraform.tfstate+")
            .is_file()
    );
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success(), "SIGTERM exits 0");
}

#[test]
fn sigterm_finishes_requests_in_flight() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let addr = server.url.trim_start_matches("http://").to_string();
    let body = state_doc("inflight", 1, &"z".repeat(4 * 1024 * 1024));
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /states/inflight HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = server.pid();
    signal(pid, "TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    stream.write_all(&body[body.len() / 2..]).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "in-flight write finished: {response}"
    );
    assert!(server.wait(), "exit status 0 after SIGTERM");
    assert!(peer.object_path("inflight").is_file());
}

#[test]
fn check_probes_the_store() {
    let peer = LocalPeer::new();
    std::fs::create_dir_all(peer.root()).unwrap();
    let out = stategate_ok(&peer, &["check"]);
    assert!(
        out.contains("conditional create of an existing object: refused"),
        "{out}"
    );
    assert!(
        out.contains("local store at") && out.trim_end().ends_with("ok"),
        "{out}"
    );
    assert!(
        !peer.object_keys().iter().any(|k| k.contains("probe")),
        "the probe cleans up: {:?}",
        peer.object_keys()
    );
}

#[test]
fn json_logs_are_json() {
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--log-format", "json"]);
    assert_eq!(http("GET", &server.state_url("x"), b"").0, 404);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.log();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    assert!(log.contains("\"status\":404"), "{log}");
}

#[test]
fn operator_actions_name_the_local_user_without_a_user_variable() {
    let peer = LocalPeer::new();
    let dir = tempfile::TempDir::new().unwrap();
    let audit = dir.path().join("audit.log");
    let body = dir.path().join("state.json");
    std::fs::write(
        &body,
        state_doc("a6000000-0000-4000-8000-000000000001", 1, "op"),
    )
    .unwrap();
    std::fs::create_dir_all(peer.root()).unwrap();
    // Under cron, `sudo` or in a container, no USER or LOGNAME may be set.
    let out = Command::new(bin())
        .args(["state", "push", "ops/app", body.to_str().unwrap()])
        .args(["--storage-type", peer.storage_type()])
        .args(
            peer.settings()
                .iter()
                .flat_map(|(k, v)| ["-C".to_string(), format!("{k}={v}")]),
        )
        .args(["--audit-log", audit.to_str().unwrap()])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let who = Command::new("id").arg("-un").output().expect("id -un");
    let expected = format!("operator:{}", text(&who.stdout).trim());
    let line = std::fs::read_to_string(&audit).unwrap();
    let event: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(event["identity"], expected.as_str(), "{line}");
}

#[cfg(feature = "db")]
#[test]
fn migrate_from_terraform_pg_refuses_a_url_of_another_database() {
    let peer = LocalPeer::new();
    let out = stategate(
        &peer,
        &[
            "migrate-from-terraform-pg",
            "--conn-str",
            "mysql://tf:s3cret-pw@127.0.0.1:1/terraform",
            "--key",
            "app",
        ],
        &[],
    );
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("postgres://"), "{all}");
    assert!(
        !all.contains("s3cret-pw"),
        "the password was printed: {all}"
    );
    // No connection was tried: the message is about the URL, not a server.
    assert!(
        !all.contains("refused") && !all.contains("unreachable"),
        "{all}"
    );
}

#[cfg(all(feature = "s3", feature = "oss"))]
#[test]
fn store_timeouts_take_durations_on_every_store() {
    use crate::oss::OssPeer;
    use crate::s3::{Moto, S3Peer};
    let peers: Vec<Box<dyn Peer>> = vec![
        Box::new(S3Peer::on(Moto::shared())),
        Box::new(OssPeer::new()),
        Box::new(LocalPeer::new()),
    ];
    for peer in peers {
        if peer.storage_type() == "local" {
            // The local store has no timeout: the setting is refused there.
            let refused = Server::try_start(peer.as_ref(), &["-C", "timeout=60s"], &[])
                .err()
                .expect("refused");
            assert!(refused.contains("timeout"), "{refused}");
            continue;
        }
        for value in ["60s", "2m", "90"] {
            let server =
                Server::try_start(peer.as_ref(), &["-C", &format!("timeout={value}")], &[])
                    .unwrap_or_else(|log| {
                        panic!("{} timeout={value}:\n{log}", peer.storage_type())
                    });
            assert_eq!(http("GET", &server.state_url("none"), b"").0, 404);
        }
        let refused = Server::try_start(peer.as_ref(), &["-C", "timeout=0s"], &[])
            .err()
            .expect("timeout=0s refused");
        assert!(refused.contains("setting `timeout`"), "{refused}");
    }
}

#[test]
fn a_token_entry_from_token_new_works_as_printed() {
    let (shown, token) = token_new("deploy");
    // Everything from the `auth:` line on is pasted into the file as is.
    let entry = &shown[shown
        .find("auth:\n")
        .unwrap_or_else(|| panic!("no entry: {shown}"))..];
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("stategate.yaml");
    std::fs::write(&config, entry).unwrap();
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--config", config.to_str().unwrap()]);
    let bearer = format!("Bearer {token}");
    let doc = state_doc("a7000000-0000-4000-8000-000000000001", 1, "t");
    let (status, body) = http_with(
        "POST",
        &server.state_url("deploy/app"),
        &[("Authorization", &bearer)],
        &doc,
    );
    assert_eq!(status, 200, "{}", text(&body));
    let (status, _) = http_with(
        "POST",
        &server.state_url("other/app"),
        &[("Authorization", &bearer)],
        &doc,
    );
    assert_eq!(status, 403);
    assert!(!server.log().contains("has no rules"), "{}", server.log());

    // An entry without rules starts, and says at once why it will get 403.
    let bare = entry.split("      rules:").next().unwrap();
    std::fs::write(&config, bare).unwrap();
    let server = Server::start_with(&peer, &["--config", config.to_str().unwrap()]);
    assert!(
        server.logs("auth.tokens[deploy]") && server.logs("has no rules"),
        "{}",
        server.log()
    );
}

#[test]
fn check_refuses_what_serve_refuses() {
    let peer = LocalPeer::new();
    let dir = tempfile::TempDir::new().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = dir.path().join("missing.pem");
    // A directory cannot be opened as the audit log.
    let audit_dir = dir.path().join("audit");
    std::fs::create_dir(&audit_dir).unwrap();
    for (args, setting) in [
        (
            vec![
                "--tls-cert",
                garbage.to_str().unwrap(),
                "--tls-key",
                garbage.to_str().unwrap(),
            ],
            "tls",
        ),
        (
            vec![
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                missing.to_str().unwrap(),
            ],
            "tls",
        ),
        (
            vec!["--audit-log", audit_dir.to_str().unwrap()],
            "audit_log",
        ),
    ] {
        let mut check = vec!["check"];
        check.extend(&args);
        let out = stategate(&peer, &check, &[]);
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "check said ok for {args:?}: {said}");
        assert!(said.contains(setting), "{args:?}: {said}");
        // serve refuses the same.
        let refused = Server::try_start(&peer, &args, &[])
            .err()
            .expect("serve refused");
        assert!(refused.contains(setting), "{refused}");
    }
}

#[cfg(feature = "s3")]
#[test]
fn s3_without_credentials_names_the_credentials_not_the_endpoint() {
    let moto = crate::s3::Moto::shared();
    let home = tempfile::TempDir::new().unwrap();
    let missing = home.path().join("none");
    let out = Command::new(bin())
        .args(["check", "--storage-type", "s3"])
        .args(["-C", "bucket=no-credentials", "-C", "region=us-east-1"])
        .args(["-C", &format!("endpoint={}", moto.endpoint)])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", &missing)
        .env("AWS_SHARED_CREDENTIALS_FILE", &missing)
        // The instance role is asked for over the network: not here.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = text(&out.stderr);
    assert!(!out.status.success(), "{said}");
    let last = said.lines().last().unwrap_or("");
    assert!(last.contains("setting `accessKeyID`"), "{last}");
    assert!(last.contains("credentials"), "{last}");
    assert!(!last.contains("setting `endpoint`"), "{last}");
}

#[test]
fn operator_restore_while_locked_needs_force_and_is_audited() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let dir = tempfile::TempDir::new().unwrap();
    let audit = dir.path().join("audit.log");
    let audit_arg = ["--audit-log", audit.to_str().unwrap()];
    let url = server.state_url("ops/restore.tfstate");
    for serial in [1, 2] {
        let doc = state_doc("lineage-op-restore", serial, &format!("v{serial}"));
        assert_eq!(http("POST", &url, &doc).0, 200);
    }
    let holder = lock_info("c9d8e7f6-0000-4000-8000-000000000001", "erin@ci");
    assert_eq!(http("LOCK", &url, &holder).0, 200);
    let restore = ["state", "restore", "ops/restore.tfstate", "--version", "1"];

    let refused = stategate(&peer, &[&restore[..], &audit_arg].concat(), &[]);
    assert!(
        !refused.status.success(),
        "a restore while locked is refused"
    );
    let reason = text(&refused.stderr);
    assert!(
        reason.contains("erin@ci") && reason.contains("--force"),
        "the refusal names the holder and the way past it: {reason}"
    );
    assert_eq!(
        http("GET", &url, b"").1,
        state_doc("lineage-op-restore", 2, "v2")
    );
    assert!(
        !std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .contains("\"restore\""),
        "nothing restored, nothing audited"
    );

    stategate_ok(&peer, &[&restore[..], &audit_arg, &["--force"]].concat());
    assert_eq!(
        http("GET", &url, b"").1,
        state_doc("lineage-op-restore", 1, "v1")
    );
    assert_eq!(
        http(
            "GET",
            &format!("{}/locks/ops/restore.tfstate", server.url),
            b""
        )
        .0,
        200,
        "the lock stays with its holder"
    );
    let line = std::fs::read_to_string(&audit).unwrap();
    let event: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(event["audit"], "restore", "{line}");
    assert_eq!(event["restored_version"], 1, "{line}");
    assert_eq!(event["force"], true, "{line}");
    assert_eq!(event["via"], "cli", "{line}");
    assert_eq!(event["client"], "local", "{line}");
    assert!(
        event["identity"].as_str().unwrap().starts_with("operator:"),
        "{line}"
    );
}

/// `state push -` reads the state from standard input, a large one
/// spooled a piece at a time, and stores exactly those bytes.
#[test]
fn state_push_reads_standard_input() {
    let peer = LocalPeer::new();
    std::fs::create_dir_all(peer.root()).unwrap();
    for size in [2_000, 3 * 1024 * 1024] {
        let body = sized_state("stdin", 1, size);
        let mut child = Command::new(bin())
            .args(["state", "push", &format!("ops/stdin-{size}"), "-"])
            .args(["--storage-type", peer.storage_type()])
            .args(settings_args(&peer))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let sent = body.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&sent).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let got = stategate_ok(&peer, &["state", "get", &format!("ops/stdin-{size}")]);
        assert!(
            got.as_bytes() == body,
            "{size} bytes from stdin read back other bytes"
        );
    }
}

//! Where settings come from, as a new user meets it: each subcommand's own
//! `--help` (made from the settings table), relative paths taken from the
//! configuration file's directory, operator commands that refuse a store
//! that is not there instead of creating an empty one, and the container
//! image's default command with a mounted configuration.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use stategate::config::table::{SERVER_SETTINGS, Scope};

use crate::support::stores::{self, LocalPeer, files_below};
use crate::support::*;

/// The command for `args` in `dir`, with no configuration from around it.
fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("STATEGATE_CONFIG")
        .env_remove("STATEGATE_DEFAULTS")
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(dir, args, env).output().expect("run stategate")
}

fn help(args: &[&str]) -> String {
    let dir = tempfile::TempDir::new().unwrap();
    let out = run(dir.path(), args, &[]);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn each_subcommand_shows_its_own_settings_with_their_variables() {
    let serve = help(&["serve", "--help"]);
    for s in SERVER_SETTINGS {
        assert!(
            serve.contains(&format!("--{} ", s.flag)),
            "serve --help lacks --{}",
            s.flag
        );
        assert!(
            serve.contains(&format!("[env: {}]", s.env)),
            "serve --help lacks {}",
            s.env
        );
    }
    // Every store's settings, with their variables.
    for backend in stategate::stores::backends() {
        for setting in backend.settings {
            assert!(
                serve.contains(&format!("    {} ", setting.name)),
                "{} {}",
                backend.name,
                setting.name
            );
            for var in setting.env {
                assert!(serve.contains(var), "{var}");
            }
        }
    }
    // Commands that open the store take the store's settings, not the
    // server's.
    let state = help(&["state", "list", "--help"]);
    for s in SERVER_SETTINGS {
        let shown = state.contains(&format!("--{} ", s.flag));
        assert_eq!(shown, s.scope == Scope::Store, "state list --{}", s.flag);
    }
    assert!(state.contains("[env: STATEGATE_STORAGE_TYPE]"), "{state}");
    // Commands that open no store take none of them.
    for args in [
        ["hash-password", "--help"].as_slice(),
        &["token", "new", "--help"],
        &["gen-key", "--help"],
        &["migrate", "--help"],
        &["loadtest", "--help"],
    ] {
        let text = help(args);
        for flag in ["--tls-cert", "--listen", "--storage-type", "--config"] {
            assert!(!text.contains(flag), "{args:?} lists {flag}:\n{text}");
        }
    }
    // A flag of another command is refused, naming it.
    let dir = tempfile::TempDir::new().unwrap();
    let out = run(dir.path(), &["hash-password", "--tls-cert", "x"], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--tls-cert"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn relative_paths_start_at_the_config_file_and_only_serve_creates_a_store() {
    let root = tempfile::TempDir::new().unwrap();
    let t = root.path();
    std::fs::create_dir(t.join("b")).unwrap();
    std::fs::write(
        t.join("b/new.yaml"),
        "backend:\n  storageType: sqlite\n  config:\n    path: states.db\n",
    )
    .unwrap();
    let nothing_created = || {
        assert!(!t.join("states.db").exists(), "created ./states.db");
        assert!(!t.join("b/states.db").exists(), "created b/states.db");
    };

    // Operator commands refuse a store that is not there, naming it.
    for args in [
        ["state", "history", "app", "-c", "b/new.yaml"].as_slice(),
        &["state", "list", "-c", "b/new.yaml"],
        &["lock", "list", "-c", "b/new.yaml"],
    ] {
        let out = run(t, args, &[]);
        let said = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded on no store");
        assert!(said.contains("no sqlite store here"), "{said}");
        assert!(said.contains("b/states.db"), "{said}");
        nothing_created();
    }
    // `check` says what serve would do, and creates nothing either.
    let out = run(t, &["check", "-c", "b/new.yaml"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("not created yet"),
        "{}",
        text(&out.stdout)
    );
    nothing_created();

    // `serve` creates it beside the file, wherever it is started from.
    let (mut child, url) = spawn_serving(
        t,
        &["serve", "-c", "b/new.yaml", "--listen", "127.0.0.1:0"],
        &[],
    );
    assert!(t.join("b/states.db").is_file());
    assert!(!t.join("states.db").exists());
    let (status, _) = http(
        "POST",
        &format!("{url}/states/app"),
        &state_doc("app", 1, "x"),
    );
    assert_eq!(status, 200);
    stop(&mut child);

    // From the parent and from the file's own directory, one store.
    for (dir, config) in [(t.to_path_buf(), "b/new.yaml"), (t.join("b"), "new.yaml")] {
        let out = run(&dir, &["state", "list", "-c", config], &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("app"), "{}", text(&out.stdout));
    }
    // A path typed on the command line is taken from where it is typed.
    let out = run(
        &t.join("b"),
        &[
            "state",
            "list",
            "-c",
            "new.yaml",
            "-C",
            "path=../b/states.db",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("app"));
}

#[test]
fn a_local_path_holding_other_files_stops_every_command_and_renames_nothing() {
    let dir = tempfile::TempDir::new().unwrap();
    // A home directory, named as `path` by mistake.
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("projects")).unwrap();
    std::fs::write(home.join(".profile"), "PATH=x").unwrap();
    std::fs::write(home.join("projects/main.tf"), "terraform {}").unwrap();
    let names = || {
        let mut names: Vec<String> = ["", "projects"]
            .iter()
            .flat_map(|sub| std::fs::read_dir(home.join(sub)).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    for args in [
        ["serve", "--listen", "127.0.0.1:0", "-C", "path=home"].as_slice(),
        &["check", "-C", "path=home"],
        &["state", "list", "-C", "path=home"],
    ] {
        let out = run_within(dir.path(), args, Duration::from_secs(60));
        let said = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} took a home directory");
        assert!(said.contains("`path`"), "{args:?}: {said}");
        assert!(
            said.contains("did not make (such as `.profile`)"),
            "{args:?}: {said}"
        );
        assert_eq!(names(), [".profile", "main.tf", "projects"], "{args:?}");
    }
}

/// A local store whose root lies inside another's would have its files
/// served by the outer one as states of its own, written and deleted past
/// both stores' locks and history: it does not start, and nothing is made
/// in the outer store, whether the inner root exists yet or not, or is
/// reached through a symbolic link.
#[test]
fn a_local_store_inside_another_ones_root_does_not_start() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    assert_eq!(
        http("POST", &server.state_url("app"), &state_doc("app", 1, "x")).0,
        200
    );
    let outer = peer.root();
    let dir = tempfile::TempDir::new().unwrap();
    std::os::unix::fs::symlink(&outer, dir.path().join("link")).unwrap();
    let before = files_below(&outer);
    for path in [
        outer.join("inner").display().to_string(),
        outer.join("a/b/inner").display().to_string(),
        "link/inner".to_string(),
    ] {
        let out = run_within(
            dir.path(),
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "-C",
                &format!("path={path}"),
            ],
            Duration::from_secs(60),
        );
        let said = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{path}: started inside another store"
        );
        assert!(said.contains("`path`"), "{path}: {said}");
        assert!(
            said.contains(&format!(
                "inside the local store at {}",
                outer.canonicalize().unwrap().display()
            )),
            "{path}: {said}"
        );
        assert_eq!(files_below(&outer), before, "{path}");
        assert!(
            !outer.join("inner").exists() && !outer.join("a").exists(),
            "{path}"
        );
    }
    // The outer store itself, and a store beside it, start as before.
    let beside = dir.path().join("beside");
    let out = run_within(
        dir.path(),
        &["check", "-C", &format!("path={}", beside.display())],
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(server);
    let again = Server::start(&peer);
    assert_eq!(http("GET", &again.state_url("app"), b"").0, 200);
}

/// The spare file kept against a full device is the store's own: closed
/// to others, and given up only when the device is full. Any failure to
/// open the store gave it up: a file of the operator's named like it
/// (`<path>.spare` beside a wrong SQLite `path`), or one reached through
/// a link planted in the root, was removed by `check`.
#[test]
fn the_spare_file_is_the_stores_own() {
    let peer = LocalPeer::new();
    drop(Server::start(&peer));
    let spare = peer.root().join(".stategate/local/spare");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&spare).unwrap().permissions());
    assert_eq!(
        mode & 0o077,
        0,
        "the spare file is open to others: {mode:o}"
    );

    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a database").unwrap();
    std::fs::write(dir.path().join("notes.txt.spare"), [0u8; 4096]).unwrap();
    let out = run_within(
        dir.path(),
        &["check", "--storage-type", "sqlite", "-C", "path=notes.txt"],
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("device is full"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        dir.path().join("notes.txt.spare").exists(),
        "the operator's file was removed"
    );

    // A root whose own directory is a link to somewhere else.
    let root = dir.path().join("root");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join(".stategate/local")).unwrap();
    std::fs::write(elsewhere.join(".stategate/local/spare"), [0u8; 4096]).unwrap();
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(elsewhere.join(".stategate"), root.join(".stategate")).unwrap();
    let out = run_within(
        dir.path(),
        &["check", "-C", "path=root"],
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "{}", text(&out.stderr));
    assert!(
        elsewhere.join(".stategate/local/spare").exists(),
        "a file outside the root was removed: {}",
        text(&out.stderr)
    );
}

/// An operator command run as another user than the store's owner (root,
/// over a server's store) made files only it could read: the server
/// answered 503 for those states from then on. It is refused, changing
/// nothing; reading is not, and a server so started serves reads only.
#[test]
fn writing_into_another_users_store_is_refused() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test gives a store to another user: run the tests as root"
    );
    let nobody = 65534;
    let local = LocalPeer::new();
    let sqlite = stores::SqlitePeer::new();
    let state = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(state.path(), state_doc("pushed", 2, "x")).unwrap();
    let pushed = state.path().to_str().unwrap();
    for (peer, place) in [
        (&local as &dyn Peer, local.root()),
        (&sqlite as &dyn Peer, sqlite.db()),
    ] {
        {
            let server = Server::start(peer);
            let doc = state_doc("pushed", 1, "x");
            assert_eq!(http("POST", &server.state_url("team/app"), &doc).0, 200);
        }
        let owned = std::process::Command::new("chown")
            .args(["-R", &nobody.to_string()])
            .arg(place.parent().unwrap())
            .status()
            .expect("chown(1)");
        assert!(owned.success());
        let before = files_below(place.parent().unwrap());
        let refusal = format!("belongs to user {nobody}, and this runs as user 0");
        let out = stategate(peer, &["state", "push", "team/app", pushed], &[]);
        let said = text(&out.stderr);
        assert!(!out.status.success(), "state push ran as another user");
        assert!(said.contains(&refusal), "{said}");
        // A server started so serves reads, and refuses changes saying why.
        let server = Server::start(peer);
        let url = server.state_url("team/app");
        assert_eq!(http("GET", &url, b"").0, 200);
        let (status, reason) = http("POST", &url, &state_doc("pushed", 2, "x"));
        assert_eq!(status, 503, "{}", text(&reason));
        assert!(text(&reason).contains(&refusal), "{}", text(&reason));
        drop(server);
        assert_eq!(files_below(place.parent().unwrap()), before);
        let listed = stategate_ok(peer, &["state", "list"]);
        assert!(listed.contains("team/app"), "{listed}");
    }
}

#[test]
fn settings_refused_for_their_shape_are_not_repeated() {
    let dir = tempfile::TempDir::new().unwrap();
    let secret = "SECRETVAL-q83vEjRWeJA";
    // A setting mistyped on the command line.
    let out = run(
        dir.path(),
        &["check", "-C", &format!("accessKeySecret:{secret}")],
        &[],
    );
    let said = text(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("-C takes key=value"), "{said}");
    assert!(!said.contains(secret), "{said}");
    // Secrets written where the file expects a section.
    for (section, yaml) in [
        (
            "encryption",
            format!("encryption:\n  keys:\n    - \"{secret}=\"\n"),
        ),
        ("encryption", format!("encryption:\n  keys: \"{secret}\"\n")),
        (
            "auth",
            format!("auth:\n  tokens:\n    - \"sgt_{secret}\"\n"),
        ),
        (
            "notifications",
            format!("notifications: \"https://hooks.example.com/{secret}\"\n"),
        ),
    ] {
        std::fs::write(dir.path().join("c.yaml"), &yaml).unwrap();
        let out = run(dir.path(), &["check", "-c", "c.yaml"], &[]);
        let said = text(&out.stderr);
        assert!(!out.status.success(), "{yaml}");
        assert!(said.contains(&format!("`{section}`")), "{yaml}: {said}");
        assert!(said.contains("invalid type"), "{yaml}: {said}");
        assert!(!said.contains(secret), "{yaml}: {said}");
    }
    // A mistyped name holding a secret after it, on the command line.
    let out = run(
        dir.path(),
        &["check", "-C", &format!("accessKeySecret:{secret}=x")],
        &[],
    );
    let said = text(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("unknown setting"), "{said}");
    assert!(!said.contains(secret), "{said}");
    // A secret written where a name goes, or where a string goes as a
    // number.
    let key = "o93+Y9IchprpOq93x8VOD6Dz7C+jLnRZfbCKG3l5mnk=";
    for (yaml, secret, setting) in [
        (
            format!("encryption:\n  keys:\n    - id: k1\n      env: \"{key}\"\n"),
            key,
            "encryption.keys[0].env",
        ),
        (
            format!("encryption:\n  keys:\n    - id: k1\n      file: \"{key}\"\n"),
            key,
            "encryption.keys[0].file",
        ),
        (
            "auth:\n  users:\n    - name: ann\n      password_hash: 8675309123456789\n".to_string(),
            "8675309123456789",
            "auth",
        ),
    ] {
        std::fs::write(dir.path().join("c.yaml"), &yaml).unwrap();
        let out = run(dir.path(), &["check", "-c", "c.yaml"], &[]);
        let said = text(&out.stderr);
        assert!(!out.status.success(), "{yaml}");
        assert!(said.contains(&format!("`{setting}`")), "{yaml}: {said}");
        assert!(!said.contains(secret), "{yaml}: {said}");
    }
    // `check` of a store not created yet refuses what `serve` would.
    for (flag, setting) in [
        ("min_free_bytes=abc", "`min_free_bytes`"),
        ("allow_unsafe_locks=maybe", "`allow_unsafe_locks`"),
    ] {
        let out = run(dir.path(), &["check", "-C", flag], &[]);
        let said = text(&out.stderr);
        assert!(!out.status.success(), "{flag}: {}", text(&out.stdout));
        assert!(said.contains(setting), "{flag}: {said}");
    }
}

/// Runs a command that should end by itself; one still running after
/// `limit` is killed and fails the test.
fn run_within(dir: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = command(dir, args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stategate");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("stategate {args:?} was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn check_names_what_the_auth_section_admits() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("oidc.yaml"),
        "backend:\n  config:\n    path: data\nauth:\n  oidc:\n    - issuer: https://token.actions.githubusercontent.com\n      \
         audience: stategate\n      rules:\n        - claims: {repository_owner: my-org}\n          keys: \"ci/**\"\n          access: write\n",
    )
    .unwrap();
    let out = run(dir.path(), &["check", "-c", "oidc.yaml"], &[]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(said.contains("auth: 1 CI issuer"), "{said}");
    assert!(!said.contains("users"), "{said}");
}

/// The container image's default command, from packaging/Dockerfile: its
/// `ENV` lines (files it copies in mapped back to the repository) and its
/// `CMD`.
struct Image {
    env: Vec<(String, String)>,
    cmd: Vec<String>,
}

impl Image {
    fn read() -> Image {
        let dockerfile = std::fs::read_to_string(repo().join("packaging/Dockerfile")).unwrap();
        let mut copied = Vec::new();
        let mut env = Vec::new();
        let mut cmd = None;
        for line in dockerfile.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["COPY", from, to] if !from.starts_with("--") => {
                    copied.push((to.to_string(), repo().join(from)))
                }
                ["ENV", assignment] => {
                    let (k, v) = assignment.split_once('=').expect("ENV KEY=VALUE");
                    env.push((k.to_string(), v.to_string()));
                }
                ["CMD", ..] => {
                    let json = line.trim_start_matches("CMD").trim();
                    cmd = Some(serde_json::from_str::<Vec<String>>(json).expect("CMD as JSON"));
                }
                _ => {}
            }
        }
        for (_, value) in &mut env {
            if let Some((_, source)) = copied.iter().find(|(to, _)| to == value) {
                *value = source.display().to_string();
            }
        }
        Image {
            env,
            cmd: cmd.expect("the Dockerfile has a CMD"),
        }
    }
}

#[cfg(feature = "s3")]
#[test]
fn the_container_command_takes_its_settings_from_the_mounted_file() {
    let image = Image::read();
    assert_eq!(
        image.cmd,
        ["serve"],
        "CMD adds nothing a mounted file could not override"
    );
    let moto = crate::s3::Moto::shared();
    let bucket = moto.new_bucket();
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("stategate.yaml");
    let s3 = format!(
        "backend:\n  storageType: s3\n  config:\n    bucket: {bucket}\n    endpoint: {}\n    region: us-east-1\n",
        moto.endpoint
    );
    std::fs::write(&config, format!("listen: 127.0.0.1:0\n{s3}")).unwrap();
    let mut env: Vec<(String, String)> = image.env.clone();
    env.push(("STATEGATE_CONFIG".into(), config.display().to_string()));
    env.extend(moto.aws_env());
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cmd: Vec<&str> = image.cmd.iter().map(String::as_str).collect();

    // The file's listen and its S3 store are used.
    let (mut child, url) = spawn_serving(dir.path(), &cmd, &env_ref);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (status, _) = http(
        "POST",
        &format!("{url}/states/app"),
        &state_doc("app", 1, "x"),
    );
    assert_eq!(status, 200);
    assert!(
        moto.all_keys(&bucket).iter().any(|k| k == "app"),
        "written to S3"
    );
    stop(&mut child);

    // What the file leaves unset comes from the image: 0.0.0.0:8080.
    std::fs::write(&config, format!("auth: none\n{s3}")).unwrap();
    let mut check = cmd.clone();
    check[0] = "check";
    let out = run(dir.path(), &check, &env_ref);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(said.contains("listen: 0.0.0.0:8080"), "{said}");
    assert!(said.contains("storageType: s3"), "{said}");

    // With no store in the file, the image's local store in its volume.
    std::fs::write(&config, "auth: none\n").unwrap();
    let out = run(dir.path(), &check, &env_ref);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(said.contains("storageType: local"), "{said}");
    assert!(said.contains("/var/lib/stategate"), "{said}");
}

/// Starts a serving command; returns it and the URL it announced.
fn spawn_serving(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stategate");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(Ok(rest.split_whitespace().next().unwrap_or("").to_string()));
            }
        }
        let _ = tx.send(Err(log));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(url)) => (child, url),
        other => {
            let _ = child.kill();
            panic!("stategate {args:?} did not start: {other:?}");
        }
    }
}

fn stop(child: &mut Child) {
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success(), "SIGTERM exits 0");
}

/// A variable set to nothing (a deployment passing every variable through)
/// counts as unset: the file's value stands.
#[test]
fn an_empty_variable_leaves_the_files_value() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("c.yaml"), "history_keep: 7\n").unwrap();
    let out = run(
        dir.path(),
        &["check", "-c", "c.yaml"],
        &[("STATEGATE_HISTORY_KEEP", "")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("history_keep: 7,"),
        "{}",
        text(&out.stdout)
    );
}

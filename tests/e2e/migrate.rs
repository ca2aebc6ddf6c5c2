//! Moving states between stores: `stategate migrate` from local to SQLite
//! to S3 (moto) and back to local with history, interrupted and resumed; a
//! dry run; refusals; serving a bucket Terraform's native s3 backend wrote,
//! in place; and `terraform init -migrate-state` from the local backend.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::s3::{Moto, S3Peer};
use crate::support::stores::{LocalPeer, SqlitePeer};
use crate::support::*;

/// The states the round trip carries: (key, workspace).
const STATES: &[(&str, Option<&str>)] = &[
    ("net/terraform.tfstate", None),
    ("net/terraform.tfstate", Some("staging")),
    ("app/terraform.tfstate", None),
    ("app/terraform.tfstate", Some("staging")),
    ("app/terraform.tfstate", Some("prod")),
    ("db/main.tfstate", None),
];
const VERSIONS: u64 = 3;

fn url_of(server: &Server, key: &str, workspace: Option<&str>) -> String {
    let url = server.state_url(key);
    match workspace {
        Some(ws) => format!("{url}?workspace={ws}"),
        None => url,
    }
}

fn with_query(url: &str, query: &str) -> String {
    if url.contains('?') {
        format!("{url}&{query}")
    } else {
        format!("{url}?{query}")
    }
}

/// A whole configuration file for `peer`'s store.
fn config_file(dir: &std::path::Path, name: &str, peer: &dyn Peer) -> String {
    let mut yaml = format!(
        "backend:\n  storageType: {}\n  config:\n",
        peer.storage_type()
    );
    for (k, v) in peer.settings() {
        yaml.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

fn migrate(from: &str, to: &str, extra: &[&str], env: &[(String, String)]) -> Output {
    Command::new(bin())
        .args(["migrate", "--from", from, "--to", to])
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("run stategate migrate")
}

fn migrate_ok(from: &str, to: &str, extra: &[&str], env: &[(String, String)]) -> String {
    let out = migrate(from, to, extra, env);
    assert!(
        out.status.success(),
        "migrate failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every state's current body and kept versions, read through a server, as
/// text so that a failed comparison reads.
fn contents(peer: &dyn Peer) -> BTreeMap<String, (String, Vec<String>)> {
    let server = Server::start(peer);
    let mut out = BTreeMap::new();
    for (key, ws) in STATES {
        let url = url_of(&server, key, *ws);
        let (status, body) = http("GET", &url, b"");
        if status == 404 {
            continue;
        }
        assert_eq!(status, 200, "{key} {ws:?}: {}", text(&body));
        let (status, history) = http("GET", &with_query(&url, "history"), b"");
        assert_eq!(status, 200, "{}", text(&history));
        let doc: serde_json::Value = serde_json::from_slice(&history).unwrap();
        let mut versions = Vec::new();
        for v in doc["versions"].as_array().unwrap() {
            let n = v["version"].as_u64().unwrap();
            let (status, old) = http("GET", &with_query(&url, &format!("version={n}")), b"");
            assert_eq!(status, 200);
            versions.push(text(&old));
        }
        out.insert(format!("{key} {ws:?}"), (text(&body), versions));
    }
    out
}

#[test]
fn migrate_round_trips_local_sqlite_s3_local_with_history_and_resumes() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = LocalPeer::new();
    {
        let server = Server::start(&a);
        for (i, (key, ws)) in STATES.iter().enumerate() {
            let url = url_of(&server, key, *ws);
            for serial in 1..=VERSIONS {
                let ws = ws.unwrap_or("default");
                let doc = state_doc(&format!("m{i}"), serial, &format!("{key}-{ws}-{serial}"));
                assert_eq!(http("POST", &url, &doc).0, 200);
            }
        }
    }
    let original = contents(&a);
    assert_eq!(original.len(), STATES.len());
    assert!(original.values().all(|(_, v)| v.len() == VERSIONS as usize));

    let b = SqlitePeer::new();
    let moto = Moto::shared();
    let c = S3Peer::on(moto).with("timeout", "2");
    let d = LocalPeer::new();
    let a_yaml = config_file(dir.path(), "a.yaml", &a);
    let b_yaml = config_file(dir.path(), "b.yaml", &b);
    let c_yaml = config_file(dir.path(), "c.yaml", &c);
    let d_yaml = config_file(dir.path(), "d.yaml", &d);
    let aws = c.env();

    // A dry run reports and changes nothing.
    let dry = migrate_ok(&a_yaml, &b_yaml, &["--with-history", "--dry-run"], &[]);
    assert!(
        dry.contains(&format!("{} would copy", STATES.len())) && dry.contains("dry run"),
        "{dry}"
    );
    assert!(b.object_keys().is_empty(), "{:?}", b.object_keys());

    migrate_ok(&a_yaml, &b_yaml, &["--with-history"], &[]);
    assert_eq!(contents(&b), original, "SQLite");
    // The source's locks were all released.
    assert!(
        !a.object_keys().iter().any(|k| k.ends_with(".tflock")),
        "{:?}",
        a.object_keys()
    );

    // Interrupted: killed once it has copied something, then resumed. A
    // write cut off holds its lease until it expires, which the S3 store's
    // short `timeout` keeps to seconds.
    let mut child = Command::new(bin())
        .args([
            "migrate",
            "--from",
            &b_yaml,
            "--to",
            &c_yaml,
            "--with-history",
        ])
        .envs(aws.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !c
        .object_keys()
        .iter()
        .any(|k| k.ends_with(".tfstate") && !k.starts_with(".stategate/"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing copied"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let partial = c
        .object_keys()
        .iter()
        .filter(|k| k.ends_with(".tfstate") && !k.starts_with(".stategate/"))
        .count();
    assert!(
        partial < STATES.len(),
        "not interrupted: {partial} states copied"
    );
    let resumed = migrate_ok(&b_yaml, &c_yaml, &["--with-history"], &aws);
    assert!(
        resumed.contains(&format!("{} states:", STATES.len())),
        "{resumed}"
    );
    assert_eq!(contents(&c), original, "S3 after the resumed copy");
    assert!(
        !b.object_keys().iter().any(|k| k.ends_with(".tflock")),
        "the interrupted run's source lock was left: {:?}",
        b.object_keys()
    );

    migrate_ok(&c_yaml, &d_yaml, &["--with-history"], &aws);
    assert_eq!(contents(&d), original, "back on local");

    // A rerun finds everything in place.
    let again = migrate_ok(&c_yaml, &d_yaml, &["--with-history"], &aws);
    assert!(
        again.contains(&format!("0 copied, {} identical", STATES.len())),
        "{again}"
    );

    // A newer state on the target is left alone, and the run says so.
    {
        let server = Server::start(&d);
        let url = url_of(&server, "db/main.tfstate", None);
        assert_eq!(http("POST", &url, &state_doc("m5", 9, "newer")).0, 200);
    }
    let out = migrate(&c_yaml, &d_yaml, &[], &aws);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("target newer") && text(&out.stdout).contains("serial 9"),
        "{}",
        text(&out.stdout)
    );

    // A source state someone holds the lock of is not copied.
    let e = LocalPeer::new();
    let e_yaml = config_file(dir.path(), "e.yaml", &e);
    {
        let server = Server::start(&a);
        let url = url_of(&server, "app/terraform.tfstate", Some("prod"));
        assert_eq!(
            http("LOCK", &url, &lock_info("apply-1", "ci@runner")).0,
            200
        );
    }
    let out = migrate(&a_yaml, &e_yaml, &[], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("locked by ci@runner (apply-1)"),
        "{}",
        text(&out.stdout)
    );
}

/// The s3 backend block for Terraform's own backend on moto.
fn native_s3_backend(moto: &Moto, bucket: &str) -> String {
    format!(
        r#"terraform {{
  backend "s3" {{
    bucket                      = "{bucket}"
    key                         = "app/terraform.tfstate"
    region                      = "us-east-1"
    endpoints                   = {{ s3 = "{endpoint}" }}
    use_path_style              = true
    use_lockfile                = true
    skip_credentials_validation = true
    skip_requesting_account_id  = true
    skip_metadata_api_check     = true
    skip_region_validation      = true
  }}
}}
"#,
        endpoint = moto.endpoint
    )
}

const RESOURCES: &str = r#"
resource "terraform_data" "app" {
  input = "app-${terraform.workspace}"
}
output "where" {
  value = terraform_data.app.output
}
"#;

fn http_backend(url: &str) -> String {
    format!(
        r#"terraform {{
  backend "http" {{
    address        = "{url}"
    lock_address   = "{url}"
    unlock_address = "{url}"
  }}
}}
"#
    )
}

#[test]
fn migrate_serves_a_bucket_of_the_native_s3_backend_in_place() {
    let moto = Moto::shared();
    let peer = S3Peer {
        prefix: String::new(),
        ..S3Peer::on(moto)
    };
    let aws: Vec<(String, String)> = peer.env();
    let env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let native = Terraform::new(&format!(
        "{}{RESOURCES}",
        native_s3_backend(moto, &peer.bucket)
    ));
    let run = |tf: &Terraform, args: &[&str]| {
        let out = tf.run_env(args, &env);
        assert!(
            out.status.success(),
            "terraform {args:?}:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    run(&native, &["init", "-input=false"]);
    run(&native, &["apply", "-auto-approve", "-input=false"]);
    for ws in ["staging", "prod"] {
        run(&native, &["workspace", "new", ws]);
        run(&native, &["apply", "-auto-approve", "-input=false"]);
    }

    // stategate on the same bucket, Terraform's layout: nothing copied.
    let server = Server::start_with(&peer, &["-C", "workspace_key_prefix=env:"]);
    let listed = stategate_ok(
        &S3Peer {
            extra: vec![("workspace_key_prefix".into(), "env:".into())],
            prefix: String::new(),
            moto,
            bucket: peer.bucket.clone(),
        },
        &["state", "list"],
    );
    for ws in ["default", "staging", "prod"] {
        assert!(listed.contains(ws), "{listed}");
    }
    for ws in [None, Some("staging"), Some("prod")] {
        let url = url_of(&server, "app/terraform.tfstate", ws);
        // Through the http backend `terraform.workspace` is `default`, so
        // the configuration names each workspace's input itself.
        let ws_name = ws.unwrap_or("default");
        let tf = Terraform::new(&format!(
            "{}{}",
            http_backend(&url),
            RESOURCES.replace("${terraform.workspace}", ws_name)
        ));
        run(&tf, &["init", "-input=false"]);
        let plan = run(&tf, &["plan", "-input=false"]);
        assert!(plan.contains("No changes"), "{ws:?}: {plan}");
    }
    // Native runs and stategate exclude each other through the same lock.
    let url = url_of(&server, "app/terraform.tfstate", Some("prod"));
    assert_eq!(http("LOCK", &url, &lock_info("held", "op@host")).0, 200);
    run(&native, &["workspace", "select", "prod"]);
    let out = native.run_env(
        &["apply", "-auto-approve", "-input=false", "-lock-timeout=0s"],
        &env,
    );
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("held") || text(&out.stderr).contains("lock"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(http("UNLOCK", &url, &lock_info("held", "op@host")).0, 200);
}

#[test]
fn migrate_terraform_init_moves_a_local_backend_state_to_stategate() {
    let peer = LocalPeer::new();
    let server = Server::start(&peer);
    let tf = Terraform::new(RESOURCES);
    tf.ok(&["init", "-input=false"]);
    tf.ok(&["apply", "-auto-approve", "-input=false"]);
    let local = std::fs::read(tf.dir.path().join("terraform.tfstate")).unwrap();

    // The README's three lines: add the backend block, then init.
    let url = server.state_url("moved/terraform.tfstate");
    tf.write(
        "main.tf",
        format!("{}{RESOURCES}", http_backend(&url)).as_bytes(),
    );
    tf.ok(&["init", "-migrate-state", "-force-copy", "-input=false"]);
    let (status, body) = http("GET", &url, b"");
    assert_eq!(status, 200, "{}", text(&body));
    let moved: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let before: serde_json::Value = serde_json::from_slice(&local).unwrap();
    // Terraform gives a state copied into the http backend a new lineage
    // and serial (the backend cannot take them over); the contents move.
    assert_eq!(moved["resources"], before["resources"], "moved: {moved}");
    assert_eq!(moved["outputs"], before["outputs"]);
    let plan = tf.ok(&["plan", "-input=false", "-detailed-exitcode"]);
    assert!(plan.contains("No changes"), "{plan}");
}

/// Runs `stategate migrate` and gives whether it succeeded, its output,
/// and its peak resident memory in MiB as the kernel measured it for this
/// one child (`wait4`).
fn migrate_measured(from: &str, to: &str, extra: &[&str]) -> (bool, String, u64) {
    // The peak is read by a small parent process of the migration: a child
    // spawned straight from this test process starts its high-water mark
    // from this process's own memory (the kernel carries it across exec),
    // and this process holds what other tests running beside it hold.
    const MEASURE: &str = "import resource, subprocess, sys\n\
        code = subprocess.call(sys.argv[2:])\n\
        open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n\
        sys.exit(code)\n";
    let dir = tempfile::TempDir::new().unwrap();
    let (out_path, err_path, peak_path) = (
        dir.path().join("out"),
        dir.path().join("err"),
        dir.path().join("peak"),
    );
    let status = Command::new("python3")
        .args(["-c", MEASURE])
        .arg(&peak_path)
        .arg(bin())
        .args(["migrate", "--from", from, "--to", to])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .expect("run python3 (needed to measure the migration's peak memory)");
    let output = format!(
        "{}\n{}",
        text(&std::fs::read(&out_path).unwrap()),
        text(&std::fs::read(&err_path).unwrap())
    );
    let peak_kib: u64 = std::fs::read_to_string(&peak_path)
        .unwrap_or_else(|e| panic!("no peak measured ({e}): {output}"))
        .trim()
        .parse()
        .expect("a peak in KiB");
    // Linux gives ru_maxrss in KiB.
    (status.success(), output, peak_kib / 1024)
}

/// Six kept versions of 24 MiB: copied (and planned in a dry run) one
/// version at a time, as files, so the migration's peak memory stays far
/// below the 144 MiB they add up to.
#[test]
fn migrate_with_history_holds_one_version_at_a_time() {
    const MIB: usize = 1024 * 1024;
    const SIZE: usize = 24 * MIB;
    const KEPT: u64 = 6;
    let dir = tempfile::TempDir::new().unwrap();
    let a = LocalPeer::new();
    let key = "big/terraform.tfstate";
    {
        let server = Server::start(&a);
        let url = server.state_url(key);
        for serial in 1..=KEPT {
            let (status, reply) = http("POST", &url, &sized_state("big", serial, SIZE));
            assert_eq!(status, 200, "{}", text(&reply));
        }
    }
    let b = SqlitePeer::new();
    let a_yaml = config_file(dir.path(), "a.yaml", &a);
    let b_yaml = config_file(dir.path(), "b.yaml", &b);
    // Two versions' worth, and room for the process itself.
    let limit = (2 * SIZE / MIB) as u64 + 40;

    let (ok, out, peak) = migrate_measured(&a_yaml, &b_yaml, &["--with-history", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 would copy"), "{out}");
    assert!(
        peak < limit,
        "the dry run peaked at {peak} MiB for {KEPT} versions of 24 MiB (limit {limit} MiB)"
    );

    let (ok, out, peak) = migrate_measured(&a_yaml, &b_yaml, &["--with-history"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 copied"), "{out}");
    assert!(
        peak < limit,
        "the copy peaked at {peak} MiB for {KEPT} versions of 24 MiB (limit {limit} MiB)"
    );

    // Every version landed whole, in order.
    let server = Server::start(&b);
    let url = server.state_url(key);
    let (status, history) = http("GET", &with_query(&url, "history"), b"");
    assert_eq!(status, 200, "{}", text(&history));
    let doc: serde_json::Value = serde_json::from_slice(&history).unwrap();
    let mut numbers: Vec<u64> = doc["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers.len() as u64, KEPT, "{doc}");
    for (serial, n) in (1..=KEPT).zip(numbers) {
        let (status, body) = http("GET", &with_query(&url, &format!("version={n}")), b"");
        assert_eq!(status, 200);
        assert!(
            body == sized_state("big", serial, SIZE),
            "version {n} is not serial {serial}"
        );
    }
}

/// Both sides applied once after they parted: the target holds the
/// source's lineage and serial with other content. The server would
/// refuse that write (409); so does migrate, naming it, until told to
/// overwrite.
#[test]
fn migrate_refuses_the_same_serial_with_other_content_unless_overwrite() {
    let dir = tempfile::TempDir::new().unwrap();
    let (a, b) = (LocalPeer::new(), SqlitePeer::new());
    let app = "app/terraform.tfstate";
    let same = "same/terraform.tfstate";
    for (peer, side) in [(&a as &dyn Peer, "source"), (&b, "target")] {
        let server = Server::start(peer);
        let url = server.state_url(app);
        assert_eq!(http("POST", &url, &state_doc("L", 1, "one")).0, 200);
        assert_eq!(http("POST", &url, &state_doc("L", 2, side)).0, 200);
        let url = server.state_url(same);
        assert_eq!(http("POST", &url, &state_doc("S", 1, "same")).0, 200);
    }
    let a_yaml = config_file(dir.path(), "a.yaml", &a);
    let b_yaml = config_file(dir.path(), "b.yaml", &b);
    let target_app = || {
        let server = Server::start(&b);
        http("GET", &server.state_url(app), b"").1
    };

    for extra in [&["--with-history"][..], &[], &["--dry-run"]] {
        let out = migrate(&a_yaml, &b_yaml, extra, &[]);
        let stdout = text(&out.stdout);
        assert!(!out.status.success(), "{extra:?}: {stdout}");
        let row = stdout
            .lines()
            .find(|l| l.starts_with(app))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(
            row.contains("conflict") && row.contains("serial 2") && row.contains("--overwrite"),
            "{extra:?}: {row}"
        );
        let row = stdout.lines().find(|l| l.starts_with(same)).unwrap();
        assert!(row.contains("identical"), "{row}");
        assert_eq!(target_app(), state_doc("L", 2, "target"), "{extra:?}");
    }

    let out = migrate_ok(&a_yaml, &b_yaml, &["--overwrite"], &[]);
    assert!(out.contains("1 copied, 1 identical"), "{out}");
    assert_eq!(target_app(), state_doc("L", 2, "source"));
    // The replaced state is kept in the target's history.
    let server = Server::start(&b);
    let url = server.state_url(app);
    let (status, history) = http("GET", &with_query(&url, "history"), b"");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&history).unwrap();
    let kept = doc["versions"].as_array().unwrap().iter().any(|v| {
        let n = v["version"].as_u64().unwrap();
        http("GET", &with_query(&url, &format!("version={n}")), b"").1
            == state_doc("L", 2, "target")
    });
    assert!(kept, "{doc}");
    drop(server);
    let again = migrate_ok(&a_yaml, &b_yaml, &[], &[]);
    assert!(again.contains("0 copied, 2 identical"), "{again}");
}

/// Every file and directory below `root` with its size and modification
/// time, to show that nothing was created, changed or removed.
fn tree_with_mtimes(root: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut Vec<(String, u64, std::time::SystemTime)>,
    ) {
        let meta = std::fs::symlink_metadata(dir).unwrap();
        let rel = dir.strip_prefix(root).unwrap().display().to_string();
        out.push((rel, meta.len(), meta.modified().unwrap()));
        if !meta.is_dir() {
            return;
        }
        for entry in std::fs::read_dir(dir).unwrap() {
            walk(root, &entry.unwrap().path(), out);
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A dry run only reads: a target that does not exist yet is reported as
/// empty and not created (neither a SQLite file nor a directory), and in
/// an existing read-only directory, and in the source, not one file is
/// created, changed or removed: no probe, no lock, no temporaries.
#[test]
fn migrate_dry_run_creates_and_changes_nothing() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = LocalPeer::new();
    {
        let server = Server::start(&a);
        for (i, (key, ws)) in STATES.iter().take(3).enumerate() {
            let url = url_of(&server, key, *ws);
            for serial in 1..=2 {
                let doc = state_doc(&format!("d{i}"), serial, &format!("{key}-{serial}"));
                assert_eq!(http("POST", &url, &doc).0, 200);
            }
        }
    }
    let a_yaml = config_file(dir.path(), "a.yaml", &a);
    let source_before = tree_with_mtimes(&a.root());

    let (b, d) = (SqlitePeer::new(), LocalPeer::new());
    let b_dir = b.db().parent().unwrap().to_path_buf();
    assert_eq!(std::fs::read_dir(&b_dir).unwrap().count(), 0);
    assert!(!d.root().exists());
    for target in [&b as &dyn Peer, &d] {
        let yaml = config_file(dir.path(), "target.yaml", target);
        let out = migrate_ok(&a_yaml, &yaml, &["--with-history", "--dry-run"], &[]);
        assert!(
            out.contains("3 states: 0 copied, 0 identical, 3 would copy")
                && out.contains("dry run"),
            "{out}"
        );
        for (key, ws) in STATES.iter().take(3) {
            let row = out
                .lines()
                .find(|l| l.starts_with(key) && l.contains(ws.unwrap_or("default")))
                .unwrap_or_else(|| panic!("{key} {ws:?} missing: {out}"));
            assert!(row.contains("would copy"), "{row}");
        }
    }
    let left: Vec<_> = std::fs::read_dir(&b_dir).unwrap().collect();
    assert!(left.is_empty(), "the dry run made {left:?}");
    assert!(
        !d.root().exists(),
        "the dry run created the target directory"
    );

    // An existing target in a read-only directory. Tests run as root,
    // where the mode does not stop a write, so what is compared is the
    // tree itself.
    let e = LocalPeer::new();
    {
        let server = Server::start(&e);
        let (key, ws) = STATES[0];
        let url = url_of(&server, key, ws);
        assert_eq!(
            http("POST", &url, &state_doc("d0", 1, &format!("{key}-1"))).0,
            200
        );
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(e.root(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let target_before = tree_with_mtimes(&e.root());
    let e_yaml = config_file(dir.path(), "e.yaml", &e);
    let out = migrate_ok(&a_yaml, &e_yaml, &["--with-history", "--dry-run"], &[]);
    assert!(out.contains("3 would copy"), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with(STATES[0].0) && l.contains("default"))
        .unwrap();
    assert!(
        row.contains("would copy") && row.split_whitespace().any(|w| w == "1"),
        "only the version the target lacks: {row}"
    );
    assert_eq!(
        tree_with_mtimes(&e.root()),
        target_before,
        "the target changed"
    );
    std::fs::set_permissions(e.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        tree_with_mtimes(&a.root()),
        source_before,
        "the source changed"
    );
}

#[cfg(feature = "db")]
#[test]
fn migrate_dry_run_into_an_unused_database_creates_no_table() {
    use crate::support::db::{DbPeer, Engine, PASSWORD};
    let dir = tempfile::TempDir::new().unwrap();
    let a = LocalPeer::new();
    {
        let server = Server::start(&a);
        let doc = state_doc("d9", 1, "db-dry-run");
        assert_eq!(http("POST", &server.state_url("dry/app"), &doc).0, 200);
    }
    let a_yaml = config_file(dir.path(), "a.yaml", &a);
    for (engine, tables) in [
        (
            Engine::Postgres,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        ),
        (
            Engine::Mariadb,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE()",
        ),
    ] {
        let target = DbPeer::new(engine);
        // migrate reads each store's settings from its file alone.
        let yaml = config_file(dir.path(), "db.yaml", &target);
        let mut text = std::fs::read_to_string(&yaml).unwrap();
        text.push_str(&format!("    dbPassword: \"{PASSWORD}\"\n"));
        std::fs::write(&yaml, text).unwrap();
        let out = migrate_ok(&a_yaml, &yaml, &["--dry-run"], &[]);
        assert!(out.contains("would copy"), "{engine:?}: {out}");
        let count = target.sql(tables).unwrap();
        assert_eq!(count.trim(), "0", "{engine:?}: the dry run created tables");
    }
}

/// Two stores on local disk where one lies in the other (or both are one)
/// are refused before either is opened: the copy would land in the store
/// it reads, and each would take the other's files for states.
#[test]
fn migrate_refuses_stores_one_inside_the_other() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = LocalPeer::new();
    {
        let server = Server::start(&a);
        let doc = state_doc("n0", 1, "x");
        assert_eq!(http("POST", &server.state_url("app"), &doc).0, 200);
    }
    let a_yaml = config_file(dir.path(), "a.yaml", &a);
    let before = a.object_keys();
    let store_at = |name: &str, kind: &str, path: &std::path::Path| {
        let yaml = format!(
            "backend:\n  storageType: {kind}\n  config:\n    path: \"{}\"\n",
            path.display()
        );
        let file = dir.path().join(name);
        std::fs::write(&file, yaml).unwrap();
        file.display().to_string()
    };
    let inner = a.root().join("copy");
    for (target, why) in [
        (store_at("inner.yaml", "local", &inner), "inside"),
        (
            store_at("db.yaml", "sqlite", &a.root().join("states.db")),
            "inside",
        ),
        (
            store_at("outer.yaml", "local", a.root().parent().unwrap()),
            "inside",
        ),
        (
            store_at("same.yaml", "local", &a.root().join("..").join("data")),
            "the same as",
        ),
    ] {
        let out = migrate(&a_yaml, &target, &["--with-history"], &[]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{target}: {}", text(&out.stdout));
        assert!(
            err.contains(why) && err.contains("--from and --to"),
            "{target}: {err}"
        );
    }
    assert!(!inner.exists(), "the refused target was created");
    assert!(!a.root().join("states.db").exists());
    assert_eq!(a.object_keys(), before, "the source changed");
}

/// Two bucket stores of one bucket, one prefix inside the other: each run
/// copied the copies of the run before, one prefix deeper.
#[test]
fn migrate_refuses_prefixes_one_inside_the_other() {
    let dir = tempfile::TempDir::new().unwrap();
    let moto = Moto::shared();
    let outer = S3Peer::on(moto);
    let inner = S3Peer {
        prefix: "team/new/".into(),
        bucket: outer.bucket.clone(),
        ..S3Peer::on(moto)
    };
    let beside = S3Peer {
        prefix: "team-b/".into(),
        bucket: outer.bucket.clone(),
        ..S3Peer::on(moto)
    };
    {
        let server = Server::start(&outer);
        let doc = state_doc("n0", 1, "x");
        assert_eq!(http("POST", &server.state_url("app"), &doc).0, 200);
    }
    let env = outer.env();
    let outer_yaml = config_file(dir.path(), "outer.yaml", &outer);
    let inner_yaml = config_file(dir.path(), "inner.yaml", &inner);
    for (from, to) in [
        (&outer_yaml, &inner_yaml),
        (&inner_yaml, &outer_yaml),
        (&outer_yaml, &outer_yaml),
    ] {
        let out = migrate(from, to, &[], &env);
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{from} -> {to}: {}",
            text(&out.stdout)
        );
        assert!(
            err.contains("--from and --to are the bucket") && err.contains("prefix outside"),
            "{err}"
        );
    }
    let keys = moto.requests_for(&outer.bucket);
    assert!(
        !keys.iter().any(|r| r.starts_with("PUT team/new/")),
        "the refused target was written: {keys:#?}"
    );
    let beside_yaml = config_file(dir.path(), "beside.yaml", &beside);
    let copied = migrate_ok(&outer_yaml, &beside_yaml, &[], &env);
    assert!(copied.contains("1 copied"), "{copied}");
}

/// What the target's server would refuse is not copied into it: a body
/// that is no Terraform state (it replaced a good state, and exited 0),
/// and two source states that are one state in the target (the second
/// replaced the first).
#[test]
fn migrate_copies_nothing_the_target_would_refuse() {
    let dir = tempfile::TempDir::new().unwrap();
    let source = LocalPeer::new();
    let target = SqlitePeer::new();
    {
        let server = Server::start(&source);
        for key in ["prod/net", "prod/app"] {
            assert_eq!(
                http("POST", &server.state_url(key), &state_doc(key, 1, "x")).0,
                200
            );
        }
    }
    let good = state_doc("kept", 42, "kept");
    {
        let server = Server::start(&target);
        assert_eq!(http("POST", &server.state_url("prod/net"), &good).0, 200);
    }
    // A proxy's error page where the state was, left by another tool.
    let file = source.object_path("prod/net");
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, "<html>502 Bad Gateway</html>").unwrap();
    let from = config_file(dir.path(), "from.yaml", &source);
    let to = config_file(dir.path(), "to.yaml", &target);
    let out = migrate(&from, &to, &[], &[]);
    let said = text(&out.stdout);
    assert!(!out.status.success(), "{said}");
    let row = said
        .lines()
        .find(|l| l.starts_with("prod/net "))
        .unwrap_or_default();
    assert!(
        row.contains("refused") && row.contains("no Terraform state"),
        "{said}"
    );
    assert!(
        said.contains("prod/app") && said.contains("1 copied"),
        "{said}"
    );
    let server = Server::start(&target);
    assert_eq!(http("GET", &server.state_url("prod/net"), b""), (200, good));
    drop(server);

    // `app` in workspace `dev` under the source's `env:`, and the
    // default-workspace key `workspaces/dev/app`: one state in a target
    // whose workspace_key_prefix is `workspaces`.
    let twins = LocalPeer::new();
    let twins_yaml = format!(
        "{}workspace_key_prefix: \"env:\"\n",
        std::fs::read_to_string(config_file(dir.path(), "twins.yaml", &twins)).unwrap()
    );
    let twins_file = dir.path().join("twins.yaml");
    std::fs::write(&twins_file, twins_yaml).unwrap();
    {
        let server = Server::start_with(&twins, &["--config", twins_file.to_str().unwrap()]);
        let dev = format!("{}?workspace=dev", server.state_url("app"));
        assert_eq!(http("POST", &dev, &state_doc("ws", 1, "ws")).0, 200);
        let plain = server.state_url("workspaces/dev/app");
        assert_eq!(http("POST", &plain, &state_doc("plain", 7, "plain")).0, 200);
    }
    // A key longer than the target's store holds, with its history and
    // leases beside it: the target's server would refuse it with 400.
    let long = LocalPeer::new();
    let key = format!("{}/{}", "k".repeat(200), vec!["l".repeat(200); 4].join("/"));
    {
        let server = Server::start(&long);
        assert_eq!(
            http("POST", &server.state_url(&key), &state_doc("long", 1, "x")).0,
            200
        );
    }
    let moto = Moto::shared();
    let bucket = S3Peer::on(moto);
    let out = migrate(
        &config_file(dir.path(), "long.yaml", &long),
        &config_file(dir.path(), "bucket.yaml", &bucket),
        &[],
        &bucket.env(),
    );
    let said = text(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("refused") && said.contains("the longest key"),
        "{said}"
    );
    assert!(
        !moto
            .requests_for(&bucket.bucket)
            .iter()
            .any(|r| r.starts_with("PUT team/kkk")),
        "the key was written"
    );

    let fresh = SqlitePeer::new();
    let fresh_yaml = config_file(dir.path(), "fresh.yaml", &fresh);
    let out = migrate(twins_file.to_str().unwrap(), &fresh_yaml, &[], &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(err.contains("are one state in the target"), "{err}");
    assert!(
        !fresh.db().exists() || {
            let server = Server::start(&fresh);
            http(
                "GET",
                &format!("{}?workspace=dev", server.state_url("app")),
                b"",
            )
            .0 == 404
        }
    );
}

/// A client writing to the target while `migrate` copies a state's
/// versions into it: its write is never replaced by an older version of
/// the source. The copy stops at it and reports the state `target
/// newer` (each version was written unconditionally, and the source's
/// newest one replaced the client's newer state).
#[test]
fn migrate_never_replaces_a_write_made_to_the_target_during_the_copy() {
    let dir = tempfile::TempDir::new().unwrap();
    let (a, b) = (LocalPeer::new(), LocalPeer::new());
    let key = "app/terraform.tfstate";
    // Enough versions, and large enough, that the copy takes a while.
    const SOURCE_VERSIONS: u64 = 100;
    {
        let source = Server::start(&a);
        let url = source.state_url(key);
        for serial in 1..=SOURCE_VERSIONS {
            let body = sized_state("L", serial, 256 * 1024);
            assert_eq!(http("POST", &url, &body).0, 200);
        }
    }
    let a_yaml = config_file(dir.path(), "a.yaml", &a);
    let b_yaml = config_file(dir.path(), "b.yaml", &b);
    let target = Server::start(&b);
    let url = target.state_url(key);
    let run = Command::new(bin())
        .args([
            "migrate",
            "--from",
            &a_yaml,
            "--to",
            &b_yaml,
            "--with-history",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stategate migrate");
    // As soon as the first versions are there, a client writes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http("HEAD", &url, b"").0 != 200 {
        assert!(Instant::now() < deadline, "nothing was copied");
        std::thread::sleep(Duration::from_millis(1));
    }
    let client = state_doc("L", 1000, "the client's");
    let (status, body) = http("POST", &url, &client);
    assert_eq!(status, 200, "{}", text(&body));
    let out = run.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        http("GET", &url, b"").1,
        client,
        "the client's write was replaced:\n{stdout}{}",
        text(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        row.contains("target newer") && row.contains("serial 1000"),
        "the client wrote after the copy ended, or it was not reported: {row}"
    );
    assert!(!out.status.success(), "{stdout}");
}

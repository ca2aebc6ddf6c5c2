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

/// Every state's current body and kept versions, read through a server.
fn contents(peer: &dyn Peer) -> BTreeMap<String, (Vec<u8>, Vec<Vec<u8>>)> {
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
            versions.push(old);
        }
        out.insert(format!("{key} {ws:?}"), (body, versions));
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

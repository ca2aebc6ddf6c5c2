//! The documents, run as a reader would run them, so that none of what they
//! show can rot:
//!
//! - every `hcl`/`terraform` block of `README.md` and `docs/*.md` is written
//!   to a `main.tf`, its documented addresses pointed at a running
//!   stategate (plain, below `/tfstate`, or HTTPS with the certificate
//!   recipe's files), and `terraform init` and `apply` must succeed with the
//!   real CLI and reach the state the block names;
//! - every `yaml` block is a configuration `stategate check -c` must accept,
//!   its documented paths mapped into a temporary directory, its key files
//!   made by `stategate gen-key`, its store given a real peer (moto, the OSS
//!   test server, a private PostgreSQL or MariaDB);
//! - a block that cannot run as it is carries a visible marker on the line
//!   above its fence, `<!-- snippet: why -->`, and must still parse
//!   (`terraform fmt -`, serde_yaml_ng); a block neither run nor marked
//!   fails the inventory test, which names it;
//! - the certificate recipe of `docs/operations.md` is run, and its files
//!   serve HTTPS that accepts the client certificate and refuses a client
//!   without one; the commands that create a bucket on moto are run;
//! - every relative link of the documents, `bench/README.md` and the
//!   comments of `terraform-examples/` leads to a file, and to a heading
//!   when it names one.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::db::{self, Engine};
use crate::support::stores::LocalPeer;
use crate::support::*;

/// The server addresses the documents use; each is replaced by a running
/// stategate's.
const PLAIN: &str = "http://127.0.0.1:8080";
/// nginx's address in the documents; stategate serves the same URLs itself
/// with `--base-path /tfstate`.
const BASED: &str = "http://127.0.0.1:8081";
const HTTPS: &str = "https://stategate.example.com:8443";

/// Link targets that another change adds: allowed while missing, and to be
/// taken off this list once they exist.
const PENDING: &[&str] = &[];

/// The documents whose blocks are run: the README and every `docs/*.md`.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("read docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    docs.insert(0, repo().join("README.md"));
    docs
}

/// A fenced block of a document.
#[derive(Debug, Clone)]
struct Block {
    /// `docs/guide.md:37`, for messages.
    place: String,
    /// The first word of the fence's info string: `hcl`, `yaml`, `sh`, ...
    lang: String,
    /// The block's lines, without the fence's indentation.
    text: String,
    /// Why the block cannot run as it is, from `<!-- snippet: ... -->` on
    /// the last non-blank line above the fence.
    marker: Option<String>,
    /// The nearest heading above the block.
    heading: String,
}

impl Block {
    fn is_hcl(&self) -> bool {
        matches!(self.lang.as_str(), "hcl" | "terraform")
    }

    fn is_yaml(&self) -> bool {
        matches!(self.lang.as_str(), "yaml" | "yml")
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The fenced blocks of a markdown file.
fn blocks(path: &Path) -> Vec<Block> {
    let text = read(path);
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut last_nonblank = String::new();
    // The block being read, and the indentation of its fence.
    let mut open: Option<(usize, Block)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some((indent, block)) = &mut open {
            if trimmed.trim_end() == "```" {
                out.extend(open.take().map(|(_, b)| b));
            } else {
                let cut = (line.len() - trimmed.len()).min(*indent);
                block.text.push_str(&line[cut..]);
                block.text.push('\n');
            }
            continue;
        }
        if let Some(info) = trimmed.strip_prefix("```") {
            let marker = last_nonblank
                .trim()
                .strip_prefix("<!-- snippet:")
                .and_then(|m| m.strip_suffix("-->"))
                .map(|m| m.trim().to_string());
            let block = Block {
                place: format!("{}:{}", relative(path), n + 1),
                lang: info.split_whitespace().next().unwrap_or("").to_string(),
                text: String::new(),
                marker,
                heading: heading.clone(),
            };
            open = Some((line.len() - trimmed.len(), block));
            continue;
        }
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_string();
        }
        if !line.trim().is_empty() {
            last_nonblank = line.to_string();
        }
    }
    assert!(
        open.is_none(),
        "{}: a fence is never closed",
        relative(path)
    );
    out
}

/// Every block of every document.
fn all_blocks() -> Vec<Block> {
    documents().iter().flat_map(|d| blocks(d)).collect()
}

/// What a block is run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Snippet {
    /// A configuration with `backend "http"`: init and apply against stategate.
    HttpBackend,
    /// Terraform's own `backend "s3"`: init and apply against moto.
    S3Backend,
    /// A `terraform_remote_state` of the http backend: init and apply
    /// against stategate holding that state.
    RemoteState,
    /// A stategate configuration file: `stategate check -c`.
    Config,
}

/// The top-level keys of a stategate configuration file.
const CONFIG_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "base_path",
    "trusted_proxies",
    "client_ip_header",
    "tls",
    "auth",
    "audit_log",
    "max_body_bytes",
    "max_lock_bytes",
    "max_header_bytes",
    "header_timeout",
    "body_min_rate",
    "idle_timeout",
    "max_connections",
    "shutdown_grace",
    "log_format",
    "history_keep",
    "workspace_key_prefix",
    "protect_lineage",
    "encryption",
    "backend",
    "ui",
    "notifications",
    "lock_held_too_long",
    "notification_max_attempts",
];

/// How an unmarked block is run, or why it cannot be.
fn classify(block: &Block) -> Result<Snippet, String> {
    if block.is_hcl() {
        for url in urls(&block.text) {
            if ![PLAIN, BASED, HTTPS]
                .iter()
                .any(|known| url.starts_with(known))
            {
                return Err(format!(
                    "it names {url}, which the test cannot serve (use {PLAIN}, {BASED} or {HTTPS})"
                ));
            }
        }
        return if block.text.contains("backend \"http\"") {
            Ok(Snippet::HttpBackend)
        } else if block.text.contains("backend \"s3\"") {
            Ok(Snippet::S3Backend)
        } else if block.text.contains("data \"terraform_remote_state\"")
            && block.text.contains("backend = \"http\"")
        {
            Ok(Snippet::RemoteState)
        } else {
            Err("it has no backend \"http\" or \"s3\" and no terraform_remote_state".into())
        };
    }
    if block.is_yaml() {
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&block.text).map_err(|e| format!("not YAML: {e}"))?;
        let is_config = value.as_mapping().is_some_and(|m| {
            m.keys()
                .any(|k| k.as_str().is_some_and(|k| CONFIG_KEYS.contains(&k)))
        });
        return if is_config {
            Ok(Snippet::Config)
        } else {
            Err("it is not a stategate configuration (no top-level key of one)".into())
        };
    }
    Err(format!("```{} blocks are not run", block.lang))
}

/// The `http://` and `https://` URLs in a text.
fn urls(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for scheme in ["http://", "https://"] {
        let mut rest = text;
        while let Some(at) = rest.find(scheme) {
            let url: String = rest[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | ')'))
                .collect();
            rest = &rest[at + url.len()..];
            out.push(url);
        }
    }
    out
}

/// Whether a block parses: `terraform fmt -` for HCL,
/// serde_yaml_ng for YAML.
fn parses(block: &Block) -> Result<(), String> {
    if block.is_hcl() {
        let mut child = Command::new(terraform_bin())
            .args(["fmt", "-no-color", "-"])
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_CLI_CONFIG_FILE", "/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run terraform fmt");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), block.text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            return Err(format!("terraform fmt refuses it:\n{}", text(&out.stderr)));
        }
    } else if block.is_yaml() {
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&block.text)
            .map_err(|e| format!("not YAML: {e}"))?;
    }
    Ok(())
}

#[test]
fn docs_every_block_is_run_or_marked() {
    let mut problems = Vec::new();
    let mut snippets = 0;
    for block in all_blocks() {
        if !block.is_hcl() && !block.is_yaml() {
            continue;
        }
        snippets += 1;
        // Every HCL block must parse, run or marked: `terraform init`
        // names only the first error of a block it cannot read.
        if let Err(e) = parses(&block) {
            problems.push(format!("{}: {e}", block.place));
            continue;
        }
        match &block.marker {
            Some(why) if why.is_empty() => problems.push(format!(
                "{}: the snippet marker says nothing; write why the block cannot run",
                block.place
            )),
            Some(_) => {}
            None => {
                if let Err(e) = classify(&block) {
                    problems.push(format!(
                        "{}: a ```{} block that is neither run nor marked: {e}; make it runnable, \
                         or put `<!-- snippet: why it cannot run -->` on the line above it",
                        block.place, block.lang
                    ));
                }
            }
        }
    }
    assert!(snippets >= 20, "only {snippets} hcl and yaml blocks found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The certificate recipe of `docs/operations.md`, run once in a directory
/// of its own: `ca.pem`, `server.pem`, `server.key`, `ci-runner.pem`,
/// `ci-runner.key` and the rest of what it makes.
fn recipe() -> &'static Path {
    static PKI: OnceLock<TempDir> = OnceLock::new();
    PKI.get_or_init(|| {
        tool("openssl", "openssl");
        let block = blocks(&repo().join("docs/operations.md"))
            .into_iter()
            .find(|b| b.lang == "sh" && b.heading == "Certificates for HTTPS and mutual TLS")
            .expect("docs/operations.md has a ```sh block under `Certificates for HTTPS and mutual TLS`");
        let dir = TempDir::new().expect("temp dir");
        let out = Command::new("sh")
            .args(["-eu", "-c", &block.text])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "{}: the certificate recipe failed:\n{}",
            block.place,
            text(&out.stderr)
        );
        for file in ["ca.pem", "server.pem", "server.key", "ci-runner.pem", "ci-runner.key"] {
            assert!(dir.path().join(file).is_file(), "the recipe made no {file}");
        }
        dir
    })
    .path()
}

/// A command-line tool the tests need; fails naming the package.
fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "`{name}` is required by the documentation tests: install it (apt-get install {package})"
    );
}

/// Runs `make` the first time `name` is asked for in this process; later
/// callers wait until it is done, so blocks naming one bucket share it.
fn once(name: &str, make: impl FnOnce()) {
    static MADE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut made = MADE.get_or_init(Default::default).lock().unwrap();
    if made.insert(name.to_string()) {
        make();
    }
}

/// The shared moto server, with `bucket` on it.
fn moto_with(bucket: &str) -> &'static crate::s3::Moto {
    let moto = crate::s3::Moto::shared();
    once(&format!("s3/{bucket}"), || {
        moto.inspect(&["create-bucket", bucket], b"");
    });
    moto
}

/// The shared OSS test server, with an unversioned `bucket` on it.
fn oss_with(bucket: &str) -> &'static crate::oss::OssServer {
    let server = crate::oss::OssServer::shared();
    once(&format!("oss/{bucket}"), || {
        let url = format!("http://{}/-/buckets?name={bucket}&versioning=", server.addr);
        let (status, body) = http("POST", &url, b"");
        assert_eq!(status, 200, "create OSS bucket {bucket}: {}", text(&body));
    });
    server
}

/// `terraform` with `args` in `tf`'s directory; stdout, or what went wrong.
fn terraform(tf: &Terraform, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let out = tf.run_env(args, env);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!(
            "terraform {}: {}\n{}{}",
            args.join(" "),
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        ))
    }
}

/// Replaces the lines from `-----BEGIN CERTIFICATE-----` to `-----END
/// CERTIFICATE-----` (a documented placeholder) with `pem`, indented alike.
fn put_certificate(hcl: &str, pem: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in hcl.lines() {
        if skipping {
            skipping = line.trim() != "-----END CERTIFICATE-----";
            continue;
        }
        if line.trim() == "-----BEGIN CERTIFICATE-----" {
            let indent = &line[..line.len() - line.trim_start().len()];
            for l in pem.lines() {
                out.push_str(indent);
                out.push_str(l);
                out.push('\n');
            }
            skipping = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The state keys of the `/states/` URLs in a text.
fn state_keys(text: &str) -> Vec<String> {
    urls(text)
        .iter()
        .filter_map(|u| u.split_once("/states/"))
        .map(|(_, key)| key.split('?').next().unwrap_or(key).to_string())
        .collect()
}

/// Runs one HCL block: its documented addresses pointed at stategate
/// servers of their own, then `terraform init` and `apply`.
fn run_hcl(block: &Block, kind: Snippet) -> Result<(), String> {
    let pki = recipe();
    let ca = pki.join("ca.pem");
    let mut peers = Vec::new();
    let mut servers: Vec<Server> = Vec::new();
    let mut hcl = block.text.clone();
    for (documented, extra) in [
        (PLAIN, Vec::new()),
        (
            BASED,
            vec!["--base-path".to_string(), "/tfstate".to_string()],
        ),
        (
            HTTPS,
            vec![
                "--tls-cert".to_string(),
                pki.join("server.pem").display().to_string(),
                "--tls-key".to_string(),
                pki.join("server.key").display().to_string(),
            ],
        ),
    ] {
        if hcl.contains(documented) {
            let peer = LocalPeer::new();
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let server = Server::start_with(&peer, &extra);
            hcl = hcl.replace(documented, &server.url);
            peers.push(peer);
            servers.push(server);
        }
    }
    hcl = put_certificate(&hcl, &read(&ca));
    let ca_file = ca.display().to_string();
    // A block without client_ca_certificate_pem trusts the recipe's CA as
    // a system root, as a machine whose administrator installed it would.
    let mut env: Vec<(String, String)> = vec![("SSL_CERT_FILE".into(), ca_file)];
    match kind {
        Snippet::RemoteState => {
            for url in urls(&hcl) {
                let (status, body) = http("POST", &url, &state_doc("docs", 1, "from the docs"));
                if status != 200 {
                    return Err(format!(
                        "storing the state {url} reads: {status} {}",
                        text(&body)
                    ));
                }
            }
        }
        Snippet::S3Backend => {
            let bucket = hcl
                .lines()
                .find_map(|l| l.trim().strip_prefix("bucket"))
                .and_then(|v| v.split('"').nth(1))
                .ok_or("the s3 backend names no bucket")?;
            let moto = moto_with(bucket);
            env.extend(moto.aws_env());
            env.push(("AWS_ENDPOINT_URL_S3".into(), moto.endpoint.clone()));
        }
        _ => {}
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let tf = Terraform::new(&hcl);
    terraform(&tf, &["init", "-no-color", "-input=false"], &env)?;
    terraform(
        &tf,
        &["apply", "-auto-approve", "-no-color", "-input=false"],
        &env,
    )?;
    for key in state_keys(&hcl) {
        let reached = |s: &Server| s.log().contains(&format!("state={key} "));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !servers.iter().any(reached) {
            if Instant::now() > deadline {
                return Err(format!("no server logged a request for the state {key}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

#[test]
fn docs_hcl_blocks_init_and_apply_with_terraform() {
    let mut failures = Vec::new();
    let mut ran = BTreeMap::new();
    for block in all_blocks() {
        if !block.is_hcl() || block.marker.is_some() {
            continue;
        }
        // A block that cannot be classified is the inventory test's to report.
        let Ok(kind) = classify(&block) else { continue };
        *ran.entry(format!("{kind:?}")).or_insert(0) += 1;
        if let Err(e) = run_hcl(&block, kind) {
            failures.push(format!("{}: {e}", block.place));
        }
    }
    eprintln!("ran HCL blocks: {ran:?}");
    for kind in ["HttpBackend", "S3Backend", "RemoteState"] {
        assert!(ran.contains_key(kind), "no {kind} block ran: {ran:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `stategate gen-key`: a fresh key, written to `file` or returned.
fn gen_key(file: Option<&str>) -> Result<String, String> {
    let out = Command::new(bin())
        .arg("gen-key")
        .args(file)
        .stdin(Stdio::null())
        .output()
        .expect("run stategate gen-key");
    if out.status.success() {
        Ok(text(&out.stdout).trim().to_string())
    } else {
        Err(format!("gen-key: {}", text(&out.stderr)))
    }
}

/// Runs one configuration block with `stategate check -c`: documented
/// paths in a temporary directory (TLS files from the recipe), key files
/// made, the store given a real peer.
fn run_yaml(block: &Block) -> Result<(), String> {
    let pki = recipe();
    let dir = TempDir::new().expect("temp dir");
    let root = dir.path();
    for sub in ["etc/stategate", "var/lib/stategate", "var/log/stategate"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let yaml = block
        .text
        .replace("/etc/stategate/tls/", &format!("{}/", pki.display()))
        .replace(
            "/etc/stategate/",
            &format!("{}/etc/stategate/", root.display()),
        )
        .replace(
            "/var/lib/stategate",
            &format!("{}/var/lib/stategate", root.display()),
        )
        .replace(
            "/var/log/stategate/",
            &format!("{}/var/log/stategate/", root.display()),
        );
    let config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&yaml).map_err(|e| format!("not YAML: {e}"))?;
    let mut args: Vec<String> = Vec::new();
    let mut env: Vec<(String, String)> = Vec::new();
    let str_at =
        |v: &serde_yaml_ng::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    if let Some(keys) = config
        .get("encryption")
        .and_then(|e| e.get("keys"))
        .and_then(|k| k.as_sequence())
    {
        for key in keys {
            if let Some(file) = str_at(key, "file") {
                gen_key(Some(&file))?;
            }
            if let Some(var) = str_at(key, "env") {
                env.push((var, gen_key(None)?));
            }
        }
    }
    // A notification destination's signing secret, from the variable it names.
    if let Some(destinations) = config.get("notifications").and_then(|n| n.as_sequence()) {
        for destination in destinations {
            if let Some(var) = str_at(destination, "secret_env") {
                env.push((var, "a-secret-from-the-docs".into()));
            }
        }
    }
    let backend = config.get("backend").cloned().unwrap_or_default();
    let store = backend.get("config").cloned().unwrap_or_default();
    let storage = str_at(&backend, "storageType")
        .or_else(|| str_at(&backend, "storage_type"))
        .unwrap_or_else(|| "local".into());
    let bucket = str_at(&store, "bucket").unwrap_or_default();
    match storage.as_str() {
        "s3" => {
            let moto = moto_with(&bucket);
            if store.get("endpoint").is_none() {
                args.extend(["-C".into(), format!("endpoint={}", moto.endpoint)]);
            }
            env.extend(moto.aws_env());
        }
        "oss" => {
            let server = oss_with(&bucket);
            args.extend([
                "-C".into(),
                format!("endpoint=http://{}", crate::oss::ENDPOINT),
            ]);
            let proxy = format!("http://{}", server.addr);
            env.extend([
                ("HTTP_PROXY".into(), proxy.clone()),
                ("http_proxy".into(), proxy),
                ("NO_PROXY".into(), String::new()),
                ("no_proxy".into(), String::new()),
                ("ALICLOUD_ACCESS_KEY".into(), crate::oss::STS_AK.into()),
                ("ALICLOUD_SECRET_KEY".into(), crate::oss::STS_SECRET.into()),
                (
                    "ALICLOUD_SECURITY_TOKEN".into(),
                    crate::oss::STS_TOKEN.into(),
                ),
            ]);
        }
        "db" => {
            let engine = match str_at(&store, "dbType").as_deref() {
                Some("postgres") => Engine::Postgres,
                _ => Engine::Mariadb,
            };
            let server = db::shared(engine);
            let name = server.create_database();
            for (k, v) in [
                ("dbHost", "127.0.0.1".to_string()),
                ("dbPort", server.port.to_string()),
                ("dbName", name),
                ("dbUser", db::USER.to_string()),
                ("dbSSLMode", "disable".to_string()),
            ] {
                args.extend(["-C".into(), format!("{k}={v}")]);
            }
            env.push(("STATEGATE_DB_PASSWORD".into(), db::PASSWORD.into()));
        }
        _ => {}
    }
    let file = root.join("stategate.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&file)
        .args(&args)
        .envs(env)
        .env("RUST_LOG", "warn")
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .expect("run stategate check");
    let stdout = text(&out.stdout);
    if out.status.success() && stdout.trim_end().ends_with("ok") {
        Ok(())
    } else {
        Err(format!(
            "stategate check -c (with {args:?}): {}\n{stdout}{}",
            out.status,
            text(&out.stderr)
        ))
    }
}

#[test]
fn docs_yaml_configurations_pass_check() {
    let mut failures = Vec::new();
    let mut stores = BTreeMap::new();
    for block in all_blocks() {
        if !block.is_yaml() || block.marker.is_some() || classify(&block).is_err() {
            continue;
        }
        let storage = block
            .text
            .lines()
            .find_map(|l| l.trim().strip_prefix("storageType:"))
            .map_or("local", str::trim)
            .to_string();
        *stores.entry(storage).or_insert(0) += 1;
        if let Err(e) = run_yaml(&block) {
            failures.push(format!("{}: {e}", block.place));
        }
    }
    eprintln!("checked configurations per store: {stores:?}");
    for store in ["local", "s3", "oss", "db"] {
        assert!(
            stores.contains_key(store),
            "no {store} configuration ran: {stores:?}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// curl against the recipe's server; exit status and `<body>\n<status>`.
fn curl(args: &[&str], url: &str) -> (bool, String) {
    let out = Command::new(tool("curl", "curl"))
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    (out.status.success(), text(&out.stdout) + &text(&out.stderr))
}

#[test]
fn docs_certificate_recipe_serves_mutual_tls() {
    let pki = recipe();
    let file = |name: &str| pki.join(name).display().to_string();
    // The client-certificate configuration of docs/authentication.md, on
    // the recipe's files.
    let block = blocks(&repo().join("docs/authentication.md"))
        .into_iter()
        .find(|b| b.is_yaml() && b.heading == "Client certificates")
        .expect("docs/authentication.md has a yaml block under `Client certificates`");
    let config = pki.join("client-certificates.yaml");
    std::fs::write(
        &config,
        block
            .text
            .replace("/etc/stategate/tls/", &format!("{}/", pki.display())),
    )
    .unwrap();
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--config", config.to_str().unwrap()]);
    let port = server
        .url
        .strip_prefix("https://127.0.0.1:")
        .unwrap_or_else(|| panic!("not serving HTTPS: {}", server.url));
    let (ca, cert, key) = (file("ca.pem"), file("ci-runner.pem"), file("ci-runner.key"));
    let with_cert = ["--cacert", &ca, "--cert", &cert, "--key", &key];

    let (ok, out) = curl(&with_cert, &format!("{}/healthz", server.url));
    assert!(
        ok && out.ends_with("\n200"),
        "with the client certificate: {out}"
    );
    // The certificate names the server by its documented name too.
    let resolve = format!("stategate.example.com:{port}:127.0.0.1");
    let mut by_name = with_cert.to_vec();
    by_name.extend(["--resolve", &resolve]);
    let (ok, out) = curl(
        &by_name,
        &format!("https://stategate.example.com:{port}/healthz"),
    );
    assert!(
        ok && out.ends_with("\n200"),
        "by the name in the certificate: {out}"
    );
    // The client certificate is the identity cert:ci-runner, which may
    // reach ci/** and nothing else.
    let (ok, out) = curl(&with_cert, &format!("{}/states/ci/app", server.url));
    assert!(
        ok && out.ends_with("\n404"),
        "cert:ci-runner reads ci/app: {out}"
    );
    let (ok, out) = curl(&with_cert, &format!("{}/states/team/app", server.url));
    assert!(
        ok && out.ends_with("\n403"),
        "cert:ci-runner reads team/app: {out}"
    );
    // Without a client certificate the handshake fails before any HTTP.
    let (ok, out) = curl(&["--cacert", &ca], &format!("{}/healthz", server.url));
    assert!(
        !ok && !out.ends_with("\n200"),
        "without a client certificate: {out}"
    );
    // And a client that does not trust the recipe's CA refuses the server.
    let (ok, out) = curl(
        &["--cert", &cert, "--key", &key],
        &format!("{}/healthz", server.url),
    );
    assert!(!ok, "without the CA: {out}");
}

#[test]
fn docs_moto_bucket_commands_work() {
    let block = blocks(&repo().join("docs/operations.md"))
        .into_iter()
        .find(|b| b.lang == "sh" && b.text.contains("moto_server"))
        .expect("docs/operations.md has a ```sh block starting moto_server");
    let moto_server = repo().join(".venv/bin/moto_server");
    assert!(
        moto_server.exists(),
        "{} is missing: run scripts/test.sh (or `.venv/bin/pip install -r tests/peers/requirements.txt`)",
        moto_server.display()
    );
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut moto = Command::new(&moto_server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The block's own lines but those that install and start moto, with
    // its port, and `check` for `serve` so the script ends.
    let script: Vec<&str> = block
        .text
        .lines()
        .filter(|l| !l.contains("pip install") && !l.contains("moto_server"))
        .collect();
    let script = script
        .join("\n")
        .replace("127.0.0.1:5000", &format!("127.0.0.1:{port}"))
        .replace("stategate serve", "stategate check");
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = TempDir::new().unwrap();
    let out = Command::new("sh")
        .args(["-eu", "-c", &script])
        .env("PATH", path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    let _ = moto.kill();
    let _ = moto.wait();
    assert!(
        out.status.success() && text(&out.stdout).trim_end().ends_with("ok"),
        "{}: the moto commands failed:\n{script}\n{}{}",
        block.place,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A line without its inline code spans (`` `a` `` or ``` ``a`b`` ```).
fn without_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        // The closing run has exactly as many backticks.
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let n = chars[j..].iter().take_while(|c| **c == '`').count();
                if n == run {
                    close = Some(j);
                    break;
                }
                j += n;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                out.push(' ');
                i = j + run;
            }
            None => {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// The targets of the markdown links `[text](target)` in lines, with
/// their line numbers; code spans and fenced blocks are not looked into.
fn markdown_links(text: &str, fenced: bool) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for (n, line) in text.lines().enumerate() {
        if fenced && line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((n + 1, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// The anchors GitHub gives a markdown file's headings.
fn anchors(path: &Path) -> HashSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = HashSet::new();
    let mut in_fence = false;
    for line in read(path).lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .flat_map(char::to_lowercase)
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// A path with `.` and `..` taken out, without asking the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether a relative link target from `from` leads to a file, and to a
/// heading when it names one.
fn resolve(from: &Path, target: &str) -> Result<(), String> {
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        normalize(&from.parent().unwrap().join(path))
    };
    let from_repo = relative(&file);
    if PENDING.contains(&from_repo.as_str()) {
        return if file.exists() {
            Err(format!(
                "{from_repo} exists now: take it off PENDING in tests/e2e/docs.rs"
            ))
        } else {
            Ok(())
        };
    }
    if !file.exists() {
        return Err(format!("{from_repo} does not exist"));
    }
    if let Some(anchor) = anchor
        && file.extension().is_some_and(|e| e == "md")
        && !anchors(&file).contains(anchor)
    {
        return Err(format!("{from_repo} has no heading #{anchor}"));
    }
    Ok(())
}

/// Every `.tf` file below `dir`.
fn tf_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            tf_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "tf") {
            out.push(path);
        }
    }
}

#[test]
fn docs_relative_links_resolve() {
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut markdown = documents();
    markdown.push(repo().join("bench/README.md"));
    for md in &markdown {
        for (line, target) in markdown_links(&read(md), true) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            if let Err(e) = resolve(md, &target) {
                problems.push(format!("{}:{line}: ({target}): {e}", relative(md)));
            }
        }
    }
    let mut tfs = Vec::new();
    tf_files(&repo().join("terraform-examples"), &mut tfs);
    for tf in &tfs {
        let comments: String = read(tf)
            .lines()
            .map(|l| {
                let t = l.trim_start();
                if t.starts_with('#') || t.starts_with("//") {
                    t
                } else {
                    ""
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        for (line, target) in markdown_links(&comments, false) {
            if target.contains("://") {
                continue;
            }
            checked += 1;
            if let Err(e) = resolve(tf, &target) {
                problems.push(format!("{}:{line}: ({target}): {e}", relative(tf)));
            }
        }
        // A document named in passing, without a link, must exist too:
        // beside the file or from the repository's root.
        for (n, line) in comments.lines().enumerate() {
            for word in line.split(|c: char| c.is_whitespace() || "()[]\"'`,;".contains(c)) {
                let word = word.trim_end_matches(['.', ':']);
                let path = word.split('#').next().unwrap_or(word);
                if !path.ends_with(".md") || word.contains("://") {
                    continue;
                }
                checked += 1;
                let beside = normalize(&tf.parent().unwrap().join(path));
                if !beside.exists() && !repo().join(path).exists() {
                    problems.push(format!("{}:{}: {word} does not exist", relative(tf), n + 1));
                }
            }
        }
    }
    assert!(checked >= 30, "only {checked} links found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

//! HTTPS: the real `terraform` trusting a test CA through
//! `client_ca_certificate_pem`, client certificates required with
//! `tls.client_ca`, certificates reloaded on SIGHUP, and wrong files
//! refused at start-up. Certificates are made per test with the `openssl`
//! command; `curl` and `openssl s_client` are the second and third clients.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::stores::LocalPeer;
use crate::support::*;

/// A command-line tool the tests need; fails naming the package.
fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("`{name}` is required by the TLS tests: install it (apt-get install {package})");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(tool("openssl", "openssl"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        text(&out.stderr)
    );
}

/// A test CA with server and client certificates, in a temporary directory.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::TempDir::new().unwrap(),
        };
        let d = pki.dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=stategate test CA",
            ],
        );
        pki.issue(
            "server",
            "server-one",
            "serverAuth",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        );
        pki.issue(
            "client",
            "ci-runner",
            "clientAuth",
            "subjectAltName=DNS:ci-runner",
        );
        pki
    }

    /// Issues `<name>.pem` and `<name>.key` for `cn`.
    fn issue(&self, name: &str, cn: &str, usage: &str, san: &str) {
        let d = self.dir.path();
        let ext = d.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n{san}\n"
            ),
        )
        .unwrap();
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
            ],
        );
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap()
    }

    fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("server.pem"),
            "--tls-key".into(),
            self.path("server.key"),
        ]
    }
}

fn start(peer: &LocalPeer, args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with(peer, &args);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    server
}

/// A backend block over HTTPS, with the PEM settings given.
fn backend(url: &str, pems: &[(&str, String)]) -> String {
    let mut extra = String::new();
    for (setting, pem) in pems {
        extra.push_str(&format!("    {setting} = <<-EOT\n{pem}    EOT\n"));
    }
    let address = format!("{url}/states/tls/terraform.tfstate");
    format!(
        r#"terraform {{
  backend "http" {{
    address        = "{address}"
    lock_address   = "{address}"
    unlock_address = "{address}"
{extra}  }}
}}

resource "terraform_data" "x" {{
  input = "over tls"
}}
"#
    )
}

fn curl(pki: &Pki, url: &str, client_cert: bool) -> std::process::Output {
    let mut cmd = Command::new(tool("curl", "curl"));
    cmd.args([
        "--silent",
        "--show-error",
        "--fail",
        "--max-time",
        "10",
        "--cacert",
    ])
    .arg(pki.path("ca.pem"));
    if client_cert {
        cmd.args([
            "--cert",
            &pki.path("client.pem"),
            "--key",
            &pki.path("client.key"),
        ]);
    }
    cmd.arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run curl")
}

#[test]
fn tls_terraform_trusts_the_server_through_its_ca() {
    let pki = Pki::new();
    let peer = LocalPeer::new();
    let server = start(&peer, &pki.server_args());
    let tf = Terraform::new(&backend(
        &server.url,
        &[("client_ca_certificate_pem", pki.read("ca.pem"))],
    ));
    tf.init_apply(&[]);
    assert!(peer.object_path("tls/terraform.tfstate").is_file());
    assert!(tf.ok(&["plan", "-no-color"]).contains("No changes"));

    // Without the CA, terraform does not trust the server.
    let untrusting = Terraform::new(&backend(&server.url, &[]));
    let init = untrusting.run(&["init", "-no-color"]);
    let plan = untrusting.run(&["plan", "-no-color"]);
    let out = format!("{}{}", text(&init.stderr), text(&plan.stderr));
    assert!(!plan.status.success(), "plan trusted an unknown CA");
    assert!(out.contains("certificate"), "{out}");
    // A second client, curl, trusts it through the same CA.
    assert!(
        curl(&pki, &format!("{}/healthz", server.url), false)
            .status
            .success()
    );
}

#[test]
fn tls_client_certificates_are_required_when_configured() {
    let pki = Pki::new();
    let peer = LocalPeer::new();
    let mut args = pki.server_args();
    args.extend(["--tls-client-ca".to_string(), pki.path("ca.pem")]);
    let server = start(&peer, &args);
    let healthz = format!("{}/healthz", server.url);

    let without = curl(&pki, &healthz, false);
    assert!(
        !without.status.success(),
        "a client without a certificate got in"
    );
    assert!(server.logs("TLS handshake refused"), "{}", server.log());
    assert!(curl(&pki, &healthz, true).status.success());

    let tf = Terraform::new(&backend(
        &server.url,
        &[
            ("client_ca_certificate_pem", pki.read("ca.pem")),
            ("client_certificate_pem", pki.read("client.pem")),
            ("client_private_key_pem", pki.read("client.key")),
        ],
    ));
    tf.init_apply(&[]);
    assert!(peer.object_path("tls/terraform.tfstate").is_file());

    let no_cert = Terraform::new(&backend(
        &server.url,
        &[("client_ca_certificate_pem", pki.read("ca.pem"))],
    ));
    let _ = no_cert.run(&["init", "-no-color"]);
    let plan = no_cert.run(&["plan", "-no-color"]);
    assert!(
        !plan.status.success(),
        "terraform without a client certificate got in"
    );
}

/// The subject of the certificate the server presents now.
fn served_subject(server: &Server, pki: &Pki) -> String {
    let addr = server.url.trim_start_matches("https://");
    let out = Command::new(tool("openssl", "openssl"))
        .args([
            "s_client",
            "-connect",
            addr,
            "-servername",
            "localhost",
            "-CAfile",
        ])
        .arg(pki.path("ca.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let shown = text(&out.stdout);
    shown
        .lines()
        .find(|l| l.trim_start().starts_with("subject="))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn tls_certificates_reload_on_sighup_and_a_bad_file_keeps_the_old_one() {
    let pki = Pki::new();
    let peer = LocalPeer::new();
    let server = start(&peer, &pki.server_args());
    assert!(served_subject(&server, &pki).contains("server-one"));

    pki.issue(
        "server",
        "server-two",
        "serverAuth",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
    );
    signal(server.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served_subject(&server, &pki).contains("server-two") {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    std::fs::write(pki.dir.path().join("server.pem"), b"not a certificate").unwrap();
    signal(server.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("TLS reload failed") {
        assert!(
            Instant::now() < deadline,
            "a bad reload was not logged:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served_subject(&server, &pki).contains("server-two"));
    assert!(
        curl(&pki, &format!("{}/healthz", server.url), false)
            .status
            .success()
    );
}

#[test]
fn tls_wrong_files_stop_start_up_naming_the_setting() {
    let pki = Pki::new();
    let peer = LocalPeer::new();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--tls-cert".into(),
                pki.path("missing.pem"),
                "--tls-key".into(),
                pki.path("server.key"),
            ],
            "tls.cert",
        ),
        (
            vec![
                "--tls-cert".into(),
                pki.path("server.pem"),
                "--tls-key".into(),
                pki.path("ca.pem"),
            ],
            "tls.key",
        ),
        (
            vec![
                "--tls-cert".into(),
                pki.path("server.pem"),
                "--tls-key".into(),
                pki.path("client.key"),
            ],
            "tls.key",
        ),
        (vec!["--tls-cert".into(), pki.path("server.pem")], "tls.key"),
        (
            vec!["--tls-client-ca".into(), pki.path("ca.pem")],
            "tls.client_ca",
        ),
    ];
    for (args, setting) in cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = Server::try_start(&peer, &argv, &[])
            .err()
            .unwrap_or_else(|| panic!("started with {args:?}"));
        assert!(
            log.contains(&format!("setting `{setting}`")),
            "{args:?}: {log}"
        );
    }
}

#[test]
fn tls_client_certificates_map_to_identities() {
    let pki = Pki::new();
    let peer = LocalPeer::new();
    let config = pki.dir.path().join("stategate.yaml");
    std::fs::write(
        &config,
        "auth:\n  certificates:\n    - cn: ci-runner\n      rules: [{keys: \"tls/**\", access: write}]\n",
    )
    .unwrap();
    let mut args = pki.server_args();
    args.extend([
        "--tls-client-ca".to_string(),
        pki.path("ca.pem"),
        "--config".to_string(),
        config.display().to_string(),
    ]);
    let server = start(&peer, &args);
    // The certificate is the only credential terraform sends.
    let tf = Terraform::new(&backend(
        &server.url,
        &[
            ("client_ca_certificate_pem", pki.read("ca.pem")),
            ("client_certificate_pem", pki.read("client.pem")),
            ("client_private_key_pem", pki.read("client.key")),
        ],
    ));
    tf.init_apply(&[]);
    assert!(peer.object_path("tls/terraform.tfstate").is_file());
    assert!(server.logs("identity=cert:ci-runner"), "{}", server.log());
    // Outside its rules: 403.
    let other = curl(&pki, &format!("{}/states/elsewhere", server.url), true);
    assert!(!other.status.success());
    assert!(
        text(&other.stderr).contains("403"),
        "{}",
        text(&other.stderr)
    );

    // auth.certificates without tls.client_ca is refused at start-up.
    let log = Server::try_start(
        &peer,
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    )
    .err()
    .expect("refused");
    assert!(log.contains("setting `auth.certificates`"), "{log}");
}

/// The address `serve` logs for /metrics and /readyz.
fn admin_address(server: &Server) -> String {
    let log = server.log();
    log.split("serving /metrics and /readyz on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("admin address not logged:\n{log}"))
        .trim_end_matches('"')
        .to_string()
}

#[test]
fn tls_the_admin_address_serves_at_its_root_without_client_certificates() {
    let pki = Pki::new();
    let peer = LocalPeer::new();
    let mut args = pki.server_args();
    args.extend([
        "--tls-client-ca".into(),
        pki.path("ca.pem"),
        "--base-path".into(),
        "/tfstate".into(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    let server = start(&peer, &args);
    // Probes and scrapers ask at the root, over plain HTTP, with no
    // certificate: the main address's TLS settings are its own.
    let admin = admin_address(&server);
    assert!(admin.starts_with("http://"), "{admin}");
    assert_eq!(http("GET", &format!("{admin}/metrics"), b"").0, 200);
    assert_eq!(http("GET", &format!("{admin}/readyz"), b"").0, 200);
    assert_eq!(http("GET", &format!("{admin}/tfstate/metrics"), b"").0, 404);
    // The main address still demands a client certificate.
    assert!(
        !curl(&pki, &format!("{}/tfstate/healthz", server.url), false)
            .status
            .success()
    );
    assert!(
        curl(&pki, &format!("{}/tfstate/healthz", server.url), true)
            .status
            .success()
    );
    drop(server);

    // With its own certificate the admin address speaks HTTPS, still
    // asking for no client certificate.
    args.extend([
        "--admin-tls-cert".into(),
        pki.path("server.pem"),
        "--admin-tls-key".into(),
        pki.path("server.key"),
    ]);
    let server = start(&peer, &args);
    let admin = admin_address(&server);
    assert!(admin.starts_with("https://"), "{admin}");
    let scraped = curl(&pki, &format!("{admin}/metrics"), false);
    assert!(scraped.status.success(), "{}", text(&scraped.stderr));
    assert!(
        text(&scraped.stdout).contains("stategate_"),
        "metrics served"
    );

    // A wrong admin certificate stops start-up naming its setting.
    let mut wrong: Vec<&str> = args.iter().map(String::as_str).collect();
    *wrong.last_mut().unwrap() = "/nonexistent.key";
    let refused = Server::try_start(&peer, &wrong, &[])
        .err()
        .expect("serve refused");
    assert!(refused.contains("setting `admin_tls.key`"), "{refused}");
}

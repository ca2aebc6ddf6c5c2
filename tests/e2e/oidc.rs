//! CI identity tokens and protected states, against a local OIDC issuer
//! (`tests/support/oidc_issuer.py`, proven against PyJWT's own client by
//! its pytest): real `terraform` with `TF_HTTP_USERNAME=oidc` applies within
//! its claim-derived keys and is refused outside them; expired, wrong
//! audience or issuer, unknown key, `alg: none`, HMAC and tampered tokens
//! are refused; key rotation is picked up; an unreachable issuer is 503;
//! protected states change only for matching CI identities.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::stores::LocalPeer;
use crate::support::*;

/// The local issuer, killed when dropped.
pub(crate) struct Issuer {
    pub(crate) url: String,
    child: Child,
}

impl Issuer {
    pub(crate) fn start() -> Issuer {
        let mut child = Command::new(python())
            .arg(repo().join("tests/support/oidc_issuer.py"))
            .args(["--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OIDC test issuer");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("the issuer said {line:?}"))
            .to_string();
        Issuer { url, child }
    }

    fn control(&self, what: &str, body: Value) -> Value {
        let (status, out) = http(
            "POST",
            &format!("{}/-/{what}", self.url),
            body.to_string().as_bytes(),
        );
        assert_eq!(status, 200, "{what}: {}", text(&out));
        serde_json::from_slice(&out).unwrap()
    }

    /// A token with GitHub-Actions-like claims, overridden by `extra`.
    pub(crate) fn mint(&self, extra: Value, options: Value) -> String {
        let mut claims = json!({
            "aud": "stategate",
            "sub": "repo:my-org/app:ref:refs/heads/main",
            "repository": "my-org/app",
            "repository_owner": "my-org",
            "ref": "refs/heads/main",
            "ref_protected": "true",
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let mut request = json!({ "claims": claims });
        for (k, v) in options.as_object().unwrap() {
            request[k] = v.clone();
        }
        self.control("mint", request)["token"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    issuer: Issuer,
    peer: LocalPeer,
    server: Server,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let issuer = Issuer::start();
    let dir = tempfile::TempDir::new().unwrap();
    let alice_hash = {
        let out = Command::new(bin())
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"alice-pass-4k2j\n")?;
                c.wait_with_output()
            })
            .unwrap();
        text(&out.stdout).trim().to_string()
    };
    let yaml = format!(
        r#"auth:
  users:
    - name: alice
      password_hash: "{alice_hash}"
      rules: [{{keys: "**", access: write}}]
  oidc:
    - issuer: {url}
      audience: stategate
      rules:
        - claims: {{repository_owner: my-org, ref: "refs/heads/*"}}
          keys: "ci/{{repository}}/**"
          access: write
        - claims: {{repository_owner: my-org}}
          keys: "prod/**"
          access: write
  protected:
    - keys: "prod/**"
      writers: {{claims: {{ref_protected: "true"}}}}
"#,
        url = issuer.url
    );
    let config = dir.path().join("stategate.yaml");
    std::fs::write(&config, yaml).unwrap();
    let peer = LocalPeer::new();
    let server = Server::start_with(&peer, &["--config", config.to_str().unwrap()]);
    Setup {
        issuer,
        peer,
        server,
        _dir: dir,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn call(method: &str, url: &str, token: &str, body: &[u8]) -> (u16, Vec<u8>) {
    http_with(method, url, &[("Authorization", &bearer(token))], body)
}

#[test]
fn oidc_terraform_applies_within_its_claim_derived_keys() {
    let s = setup();
    let token = s.issuer.mint(json!({}), json!({"alg": "RS256"}));
    let address = |key: &str| {
        format!(
            r#"terraform {{
  backend "http" {{
    address        = "{url}/states/{key}"
    lock_address   = "{url}/states/{key}"
    unlock_address = "{url}/states/{key}"
  }}
}}
resource "terraform_data" "x" {{
  input = "from ci"
}}
"#,
            url = s.server.url
        )
    };
    let env = [
        ("TF_HTTP_USERNAME", "oidc"),
        ("TF_HTTP_PASSWORD", token.as_str()),
    ];
    let tf = Terraform::new(&address("ci/my-org/app/terraform.tfstate"));
    let ok = |args: &[&str]| {
        let out = tf.run_env(args, &env);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    ok(&["init", "-no-color"]);
    ok(&["apply", "-auto-approve", "-no-color"]);
    assert!(
        s.peer
            .root()
            .join("ci/my-org/app/terraform.tfstate")
            .is_file()
    );
    assert!(
        s.server.logs(&format!(
            "identity=oidc:{}#repo:my-org/app:ref:refs/heads/main",
            s.issuer.url
        )),
        "{}",
        s.server.log()
    );
    // Another repository's keys: refused.
    let outside = Terraform::new(&address("ci/my-org/other/terraform.tfstate"));
    let _ = outside.run_env(&["init", "-no-color"], &env);
    let out = outside.run_env(&["apply", "-auto-approve", "-no-color"], &env);
    assert!(!out.status.success(), "applied outside its keys");
    assert!(
        text(&out.stderr).contains("invalid auth"),
        "{}",
        text(&out.stderr)
    );
    // ES256 as a Bearer token works too.
    let es = s.issuer.mint(json!({}), json!({"alg": "ES256"}));
    assert_eq!(
        call(
            "GET",
            &s.server.state_url("ci/my-org/app/terraform.tfstate"),
            &es,
            b""
        )
        .0,
        200
    );
}

#[test]
fn oidc_bad_tokens_are_refused() {
    let s = setup();
    let url = s.server.state_url("ci/my-org/app/x");
    let good = s.issuer.mint(json!({}), json!({}));
    assert_eq!(
        call("GET", &url, &good, b"").0,
        404,
        "a good token reads (nothing there yet)"
    );
    let bad = [
        ("expired", s.issuer.mint(json!({}), json!({"ttl": -600}))),
        (
            "not yet valid",
            s.issuer.mint(json!({}), json!({"nbf_offset": 600})),
        ),
        (
            "wrong audience",
            s.issuer.mint(json!({"aud": "someone-else"}), json!({})),
        ),
        (
            "wrong issuer",
            s.issuer.mint(
                json!({"iss": "https://token.actions.githubusercontent.com"}),
                json!({}),
            ),
        ),
        (
            "unknown key",
            s.issuer.mint(json!({}), json!({"key": "unknown"})),
        ),
        ("alg none", s.issuer.mint(json!({}), json!({"alg": "none"}))),
        (
            "HMAC with the public key",
            s.issuer.mint(json!({}), json!({"alg": "HS256"})),
        ),
        (
            "tampered",
            s.issuer.mint(json!({}), json!({"tamper": true})),
        ),
        ("no kid", s.issuer.mint(json!({}), json!({"kid": null}))),
        ("no exp", s.issuer.mint(json!({"exp": null}), json!({}))),
    ];
    for (what, token) in bad {
        let (status, reason) = call("GET", &url, &token, b"");
        assert_eq!(status, 401, "{what}: {}", text(&reason));
        // The same token as the Basic password of `oidc`.
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("oidc:{token}")
            )
        );
        assert_eq!(
            http_with("GET", &url, &[("Authorization", &basic)], b"").0,
            401,
            "{what}"
        );
    }
}

#[test]
fn oidc_rotation_is_picked_up_and_an_unreachable_issuer_is_503() {
    let s = setup();
    let url = s.server.state_url("ci/my-org/app/rot");
    let before = s.issuer.mint(json!({}), json!({}));
    assert_eq!(call("GET", &url, &before, b"").0, 404);
    s.issuer.control("rotate", json!({}));
    std::thread::sleep(Duration::from_millis(1100));
    let after = s.issuer.mint(json!({"jti": "after-rotation"}), json!({}));
    assert_eq!(
        call("GET", &url, &after, b"").0,
        404,
        "the new key was fetched"
    );
    let retired = s
        .issuer
        .mint(json!({"jti": "retired"}), json!({"key": "retired"}));
    assert_eq!(
        call("GET", &url, &retired, b"").0,
        404,
        "the previous key still listed"
    );

    s.issuer.control("fail", json!({"status": 503}));
    std::thread::sleep(Duration::from_millis(1100));
    let unknown = s
        .issuer
        .mint(json!({"jti": "unknown"}), json!({"key": "unknown"}));
    let (status, reason) = call("GET", &url, &unknown, b"");
    assert_eq!(
        status,
        503,
        "an unreachable issuer is not a wrong token: {}",
        text(&reason)
    );
    let known = s.issuer.mint(json!({"jti": "known-while-down"}), json!({}));
    assert_eq!(
        call("GET", &url, &known, b"").0,
        404,
        "known keys work while the issuer is down"
    );
}

#[test]
fn oidc_protected_states_change_only_for_matching_ci_identities() {
    let s = setup();
    let url = s.server.state_url("prod/network");
    let alice = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "alice:alice-pass-4k2j"
        )
    );
    let as_alice =
        |method: &str, body: &[u8]| http_with(method, &url, &[("Authorization", &alice)], body);
    let (status, reason) = as_alice("POST", &state_doc("p", 1, "x"));
    assert_eq!(status, 403, "{}", text(&reason));
    assert!(text(&reason).contains("protected"), "{}", text(&reason));
    assert_eq!(as_alice("LOCK", &lock_info("A", "alice")).0, 403);

    let unprotected_branch = s.issuer.mint(
        json!({"ref": "refs/heads/feature", "ref_protected": "false"}),
        json!({}),
    );
    assert_eq!(
        call("POST", &url, &unprotected_branch, &state_doc("p", 1, "x")).0,
        403
    );
    let main = s.issuer.mint(json!({}), json!({}));
    assert_eq!(call("POST", &url, &main, &state_doc("p", 1, "x")).0, 200);
    assert_eq!(as_alice("GET", b"").0, 200, "humans keep reading");

    // A lock taken under one token is released with the next one.
    assert_eq!(call("LOCK", &url, &main, &lock_info("CI", "runner")).0, 200);
    let next = s.issuer.mint(json!({"jti": "next-token"}), json!({}));
    assert_eq!(
        call("UNLOCK", &url, &next, &lock_info("CI", "runner")).0,
        200
    );
}

#[test]
fn oidc_configuration_mistakes_stop_start_up() {
    let peer = LocalPeer::new();
    let dir = tempfile::TempDir::new().unwrap();
    for (yaml, setting) in [
        (
            "auth:\n  oidc:\n    - issuer: https://gitlab.example.com\n      rules: []\n",
            "audience",
        ),
        (
            "auth:\n  oidc:\n    - issuer: http://gitlab.example.com\n      audience: stategate\n",
            "issuer",
        ),
        (
            "auth:\n  oidc:\n    - issuer: https://gitlab.example.com\n      audience: s\n      rules: [{keys: \"ci/{project_path\", access: write}]\n",
            "rules",
        ),
        (
            "auth:\n  protected:\n    - keys: \"prod/**\"\n      writers: {claims: {}}\n",
            "writers",
        ),
    ] {
        let config = dir.path().join("c.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = Server::try_start(&peer, &["--config", config.to_str().unwrap()], &[])
            .err()
            .unwrap_or_else(|| panic!("started with {yaml}"));
        assert!(
            log.contains("setting `auth.") && log.contains(setting),
            "{yaml}: {log}"
        );
    }
}

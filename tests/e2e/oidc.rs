//! CI identity tokens and protected states, against a local OIDC issuer
//! (`tests/peers/oidc_issuer.py`, proven against PyJWT's own client by
//! its pytest): real `terraform` with `TF_HTTP_USERNAME=oidc` applies within
//! its claim-derived keys and is refused outside them; expired, wrong
//! audience or issuer, unknown key, `alg: none`, HMAC and tampered tokens
//! are refused; key rotation is picked up; an unreachable issuer is 503;
//! made-up key ids cannot make stategate hammer the issuer, and an issuer
//! that fails or hangs does not hold up tokens whose keys are cached; keys
//! come over https only; protected states change only for matching CI
//! identities.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
            .arg(repo().join("tests/peers/oidc_issuer.py"))
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

    /// Requests the issuer received: (JWKS, discovery).
    fn stats(&self) -> (u64, u64) {
        let (status, out) = http("GET", &format!("{}/-/stats", self.url), b"");
        assert_eq!(status, 200, "stats: {}", text(&out));
        let stats: Value = serde_json::from_slice(&out).unwrap();
        (
            stats["jwks_requests"].as_u64().unwrap(),
            stats["discovery_requests"].as_u64().unwrap(),
        )
    }

    /// A token naming this issuer but a key id it never had, with a
    /// signature that matches nothing: what an attacker can make at will.
    fn forged(&self, n: usize) -> String {
        self.mint(
            json!({"jti": format!("forged-{n}")}),
            json!({"kid": format!("made-up-{n}"), "tamper": true}),
        )
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
    setup_with("")
}

/// [`setup`] with more settings for the issuer (lines of YAML under it).
fn setup_with(issuer_settings: &str) -> Setup {
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
{issuer_settings}      rules:
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
            .object_path("ci/my-org/app/terraform.tfstate")
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
            "auth:\n  oidc:\n    - issuer: https://gitlab.example.com\n      audience: s\n      rules: [{claims: {namespace_path: g}, keys: \"ci/{project_path\", access: write}]\n",
            "rules",
        ),
        // Every project on the issuer could have it sign such a token.
        (
            "auth:\n  oidc:\n    - issuer: https://gitlab.com\n      audience: s\n      rules: [{keys: \"shared/**\", access: read}]\n",
            "names no claims",
        ),
        (
            "auth:\n  protected:\n    - keys: \"prod/**\"\n      writers: {claims: {}}\n",
            "writers",
        ),
        (
            "auth:\n  oidc:\n    - issuer: https://gitlab.example.com\n      audience: s\n      jwks_uri: http://keys.example.com/jwks\n",
            "jwks_uri",
        ),
        (
            "auth:\n  oidc:\n    - issuer: https://gitlab.example.com\n      audience: s\n      keys_max_age: 0s\n",
            "keys_max_age",
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

/// Waits (up to a minute) until `done` holds; panics naming `what`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metrics(server: &Server) -> String {
    let (status, body) = http("GET", &format!("{}/metrics", server.url), b"");
    assert_eq!(status, 200);
    text(&body)
}

#[test]
fn oidc_made_up_key_ids_fetch_the_keys_at_most_once_a_second() {
    let s = setup();
    let url = s.server.state_url("ci/my-org/app/storm");
    let good = s.issuer.mint(json!({}), json!({}));
    assert_eq!(call("GET", &url, &good, b"").0, 404);
    // First the JWKS fails while discovery answers, then discovery fails.
    for (round, failing) in ["jwks", "discovery"].into_iter().enumerate() {
        s.issuer
            .control("fail", json!({"status": 500, "only": failing}));
        let forged: Vec<String> = (0..40).map(|n| s.issuer.forged(100 * round + n)).collect();
        // Past the second of the last fetch, a made-up id may cause one
        // attempt.
        std::thread::sleep(Duration::from_millis(1100));
        let (jwks_before, discovery_before) = s.issuer.stats();
        let started = Instant::now();
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let workers: Vec<_> = forged
                .chunks(5)
                .map(|chunk| {
                    let url = &url;
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|token| call("GET", url, token, b"").0)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let seconds = started.elapsed().as_secs();
        let (jwks_after, discovery_after) = s.issuer.stats();
        assert!(
            statuses.iter().all(|s| matches!(s, 401 | 503)),
            "{failing}: {statuses:?}"
        );
        let (jwks, discovery) = (jwks_after - jwks_before, discovery_after - discovery_before);
        let asked = if failing == "jwks" { jwks } else { discovery };
        assert!(asked >= 1, "{failing}: not asked at all");
        // Attempts are at least a second apart, failed ones included.
        assert!(
            jwks <= 1 + seconds && discovery <= 1 + seconds,
            "{failing} failing: 40 made-up key ids in {seconds}s made {jwks} JWKS and {discovery} discovery requests"
        );
        let after = s
            .issuer
            .mint(json!({"jti": format!("after-{failing}")}), json!({}));
        assert_eq!(
            call("GET", &url, &after, b"").0,
            404,
            "{failing}: the cached key works"
        );
    }
}

#[test]
fn oidc_a_hanging_issuer_does_not_hold_up_tokens_whose_keys_are_cached() {
    let s = setup();
    let url = s.server.state_url("ci/my-org/app/hang");
    let good = s.issuer.mint(json!({}), json!({}));
    assert_eq!(call("GET", &url, &good, b"").0, 404);
    let forged: Vec<String> = (0..3).map(|n| s.issuer.forged(n)).collect();
    let legit = s.issuer.mint(json!({"jti": "while-hanging"}), json!({}));
    // The JWKS now answers only after stategate's fetch has given up.
    s.issuer
        .control("fail", json!({"status": 0, "delay": 120, "only": "jwks"}));
    std::thread::sleep(Duration::from_millis(1100));
    let (jwks_before, _) = s.issuer.stats();
    let stuck: Vec<_> = forged
        .into_iter()
        .map(|token| {
            let url = url.clone();
            std::thread::spawn(move || call("GET", &url, &token, b""))
        })
        .collect();
    eventually("stategate asks the hanging issuer for its keys", || {
        s.issuer.stats().0 > jwks_before
    });
    let (status, reason) = call("GET", &url, &legit, b"");
    assert_eq!(status, 404, "{}", text(&reason));
    assert!(
        stuck.iter().all(|t| !t.is_finished()),
        "the token with a cached key was answered only after a made-up one"
    );
    for t in stuck {
        let (status, reason) = t.join().unwrap();
        assert_eq!(status, 503, "{}", text(&reason));
    }
    assert_eq!(
        s.issuer.stats().0,
        jwks_before + 1,
        "the requests that waited took the answer of the fetch in flight"
    );
}

#[test]
fn oidc_old_keys_keep_working_while_the_issuer_is_down() {
    let s = setup_with("      keys_max_age: 1s\n");
    let url = s.server.state_url("ci/my-org/app/old-keys");
    let first = s.issuer.mint(json!({}), json!({}));
    assert_eq!(call("GET", &url, &first, b"").0, 404);
    assert!(metrics(&s.server).contains("stategate_oidc_stale_issuers 0"));
    s.issuer.control("fail", json!({"status": 500}));
    std::thread::sleep(Duration::from_millis(1500));
    let old = s.issuer.mint(json!({"jti": "with-old-keys"}), json!({}));
    assert_eq!(
        call("GET", &url, &old, b"").0,
        404,
        "keys past their age still verify while the issuer is down"
    );
    assert!(
        s.server.logs("past keys_max_age and cannot be refreshed"),
        "{}",
        s.server.log()
    );
    eventually("the metric shows the old keys in use", || {
        metrics(&s.server).contains("stategate_oidc_stale_issuers 1")
    });
    // Back up: the next token refreshes the keys.
    s.issuer.control("fail", json!({"status": 0}));
    std::thread::sleep(Duration::from_millis(1100));
    let fresh = s.issuer.mint(json!({"jti": "issuer-back"}), json!({}));
    assert_eq!(call("GET", &url, &fresh, b"").0, 404);
    eventually("the metric shows fresh keys", || {
        metrics(&s.server).contains("stategate_oidc_stale_issuers 0")
    });
    assert!(s.server.logs("the issuer's keys were fetched again"));
}

#[test]
fn oidc_a_plain_http_jwks_uri_off_loopback_is_refused() {
    let s = setup();
    let url = s.server.state_url("ci/my-org/app/jwks-uri");
    s.issuer.control(
        "discovery",
        json!({"jwks_uri": "http://keys.example.com/jwks"}),
    );
    let token = s.issuer.mint(json!({}), json!({}));
    let (status, reason) = call("GET", &url, &token, b"");
    let reason = text(&reason);
    assert_eq!(status, 503, "{reason}");
    assert!(
        reason.contains("jwks_uri `http://keys.example.com/jwks` must be an https URL"),
        "{reason}"
    );
    // The issuer's own (loopback) address is fine.
    s.issuer.control("discovery", json!({"jwks_uri": null}));
    std::thread::sleep(Duration::from_millis(1100));
    let next = s.issuer.mint(json!({"jti": "own-jwks"}), json!({}));
    assert_eq!(call("GET", &url, &next, b"").0, 404);
}

use base64::Engine;

use super::file::{FileToken, FileUser};
use super::*;

fn glob(p: &str) -> Glob {
    Glob::parse("keys", p).unwrap()
}

/// A pattern with many stars against a name that almost matches: trying
/// every split at every star took minutes for a dozen stars (and a search
/// sends any pattern); each answer here takes microseconds.
#[test]
fn globs_with_many_stars_are_matched_in_bounded_time() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let name = format!("aws_{}", "a".repeat(200));
        let stars = Glob::parse_name("type", &format!("{}b", "*a".repeat(30))).unwrap();
        let segments = Glob::parse("keys", &format!("{}/z", ["**"; 30].join("/x/"))).unwrap();
        let path = ["x"; 200].join("/");
        let answers = (
            stars.matches(&name),
            stars.matches(&format!("{name}b")),
            segments.matches(&path),
            segments.matches(&format!("{path}/z")),
        );
        let _ = done.send(answers);
    });
    let answers = finished
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a match still running after 30 s");
    assert_eq!(answers, (false, true, false, true));
}

/// A long pattern against long names: going back star by star took
/// pattern times name steps, and one search of a 40 KB pattern over a
/// 2 MB resource type held the index for a minute. A hundred such matches
/// now take well under the time limit here (about a millisecond each).
#[test]
fn long_patterns_over_long_names_are_matched_in_linear_time() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let name = "a".repeat(2_000_000);
        let glob = Glob::parse_name("type", &format!("*{}b", "a".repeat(40_000))).unwrap();
        let hits = (0..100).filter(|_| glob.matches(&name)).count();
        let _ = done.send(hits);
    });
    let hits = finished
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the matches still running after 30 s");
    assert_eq!(hits, 0);
}

/// Matching within a segment agrees with going back star by star (the
/// definition) on every pattern and text over a small alphabet.
#[test]
fn matching_within_a_segment_agrees_with_the_definition() {
    fn words(alphabet: &[u8], longest: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..longest {
            last = last
                .iter()
                .flat_map(|w| alphabet.iter().map(move |&c| format!("{w}{}", c as char)))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }
    let texts = words(b"ab", 5);
    for pattern in words(b"ab*", 5) {
        for text in &texts {
            let defined = super::access::wildcard_for_tests(pattern.as_bytes(), text.as_bytes());
            assert_eq!(
                super::access::match_one(&pattern, text),
                defined,
                "{pattern:?} against {text:?}"
            );
        }
    }
}

#[test]
fn globs_match_segments() {
    assert!(glob("team-a/**").matches("team-a/x"));
    assert!(glob("team-a/**").matches("team-a/x/y/z"));
    assert!(glob("team-a/**").matches("team-a"));
    assert!(!glob("team-a/**").matches("team-ab/x"));
    assert!(glob("*/net").matches("prod/net"));
    assert!(!glob("*/net").matches("a/b/net"));
    assert!(glob("**/terraform.tfstate").matches("a/b/terraform.tfstate"));
    assert!(glob("app-*").matches("app-1"));
    assert!(!glob("app-*").matches("app-1/x"));
    assert!(glob("**").matches("anything/at/all"));
    assert!(glob("shared/network").matches("shared/network"));
    assert!(!glob("shared/network").matches("shared/network2"));
    for bad in ["", "a//b", "a**/b", "a b", "a/%"] {
        assert!(Glob::parse("keys", bad).is_err(), "{bad:?}");
    }
}

fn section(users: Vec<FileUser>, tokens: Vec<FileToken>) -> FileAuth {
    FileAuth {
        users,
        tokens,
        ..Default::default()
    }
}

/// A user of the file section with a password hash.
fn user(name: &str, password_hash: String, rules: Vec<FileRule>) -> FileUser {
    FileUser {
        name: name.into(),
        password_hash: Some(password_hash),
        password: None,
        rules,
    }
}

/// A token of the file section, by its hash, without expiry.
fn token(name: &str, token_hash: String, rules: Vec<FileRule>) -> FileToken {
    FileToken {
        name: name.into(),
        token_hash: Some(token_hash),
        token: None,
        expires: None,
        rules,
    }
}

/// An `Authorization` header of user (or `token`) and password.
fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn rule(keys: &str, access: &str) -> FileRule {
    FileRule {
        keys: keys.into(),
        access: access.into(),
        workspaces: Vec::new(),
    }
}

#[test]
fn configuration_mistakes_name_the_setting() {
    let user = |name: &str, hash: Option<&str>, password: Option<&str>, rules| FileUser {
        name: name.into(),
        password_hash: hash.map(Into::into),
        password: password.map(Into::into),
        rules,
    };
    let good = hash_secret("pw").unwrap();
    let cases = [
        (
            user("alice", None, Some("pw"), vec![]),
            "auth.users[alice].password_hash",
        ),
        (
            user("alice", Some("$2b$12$abc"), None, vec![]),
            "auth.users[alice].password_hash",
        ),
        (
            user("token", Some(&good), None, vec![]),
            "auth.users[token]",
        ),
        (
            user("alice", Some(&good), None, vec![rule("a//b", "read")]),
            "auth.users[alice].rules",
        ),
        (
            user("alice", Some(&good), None, vec![rule("a", "owner")]),
            "auth.users[alice].rules",
        ),
    ];
    for (u, setting) in cases {
        let e = Auth::new(&section(vec![u], vec![]))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(setting), "{e}");
    }
}

#[tokio::test]
async fn credentials_map_to_identities_and_levels() {
    let ci_token = new_token("ci").unwrap();
    let auth = Auth::new(&section(
        vec![user(
            "alice",
            hash_secret("s3cret").unwrap(),
            vec![rule("team-a/**", "write"), rule("shared/*", "read")],
        )],
        vec![token(
            "ci",
            hash_secret(&ci_token).unwrap(),
            vec![rule("**", "outputs")],
        )],
    ))
    .unwrap();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let alice = auth
        .authenticate(Some(&basic("alice", "s3cret")), None, ip)
        .await
        .unwrap();
    assert_eq!(alice.name, "user:alice");
    let st = |k: &str| StateRef::parse(k, None).unwrap();
    assert_eq!(alice.access(&st("team-a/x")), Some(Access::Write));
    assert_eq!(alice.access(&st("shared/net")), Some(Access::Read));
    assert_eq!(alice.access(&st("team-b/x")), None);
    // Cached: the same answer without hashing again.
    assert!(
        auth.authenticate(Some(&basic("alice", "s3cret")), None, ip)
            .await
            .is_ok()
    );
    assert!(matches!(
        auth.authenticate(Some(&basic("alice", "wrong")), None, ip)
            .await,
        Err(AuthError::Invalid(_))
    ));
    assert_eq!(
        auth.authenticate(None, None, ip).await.unwrap_err(),
        AuthError::Missing
    );
    let ci = auth
        .authenticate(Some(&format!("Bearer {ci_token}")), None, ip)
        .await
        .unwrap();
    assert_eq!(ci.name, "token:ci");
    assert_eq!(ci.access(&st("team-a/x")), Some(Access::Outputs));
    let ci2 = auth
        .authenticate(Some(&basic("token", &ci_token)), None, ip)
        .await
        .unwrap();
    assert_eq!(ci2.name, "token:ci");
    assert!(
        auth.authenticate(Some("Bearer sgt_ci_nope"), None, ip)
            .await
            .is_err()
    );
}

/// A token's name may hold dots, and then the token has three dotted
/// parts, as a CI identity token does; it is still a token as Bearer.
#[tokio::test]
async fn a_token_named_with_dots_is_a_token_as_bearer_too() {
    let secret = new_token("deploy.prod.eu").unwrap();
    let auth = Auth::new(&section(
        vec![],
        vec![token(
            "deploy.prod.eu",
            hash_secret(&secret).unwrap(),
            vec![rule("**", "read")],
        )],
    ))
    .unwrap();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    for header in [format!("Bearer {secret}"), basic("token", &secret)] {
        let who = auth.authenticate(Some(&header), None, ip).await.unwrap();
        assert_eq!(who.name, "token:deploy.prod.eu", "{}", &header[..6]);
    }
}

/// A PHC string with these parameters; its salt and output are
/// arbitrary, as no test verifies against it.
fn phc(m: u32, t: u32, p: u32) -> String {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "$argon2id$v=19$m={m},t={t},p={p}${}${}",
        b64.encode([1u8; 16]),
        b64.encode([2u8; 32])
    )
}

fn costs(hash: &str) -> (u32, u32, u32) {
    let params = argon2::Params::try_from(&PasswordHash::new(hash).unwrap()).unwrap();
    (params.m_cost(), params.t_cost(), params.p_cost())
}

#[test]
fn unknown_names_are_verified_with_the_costliest_configured_parameters() {
    let user = |name: &str, hash: String| user(name, hash, vec![]);
    let auth = Auth::new(&section(
        vec![
            user("light", phc(8192, 1, 4)),
            user("heavy", phc(65536, 3, 1)),
            user("default", hash_secret("pw").unwrap()),
        ],
        vec![token("wide", phc(32768, 2, 8), vec![])],
    ))
    .unwrap();
    assert_eq!(costs(&auth.dummy_hash), (65536, 3, 1));
    // A token's hash counts as much as a user's.
    let auth = Auth::new(&section(
        vec![user("default", hash_secret("pw").unwrap())],
        vec![token("heavy", phc(131072, 2, 1), vec![])],
    ))
    .unwrap();
    assert_eq!(costs(&auth.dummy_hash), (131072, 2, 1));
    // Nothing configured: argon2's defaults, which `hash_secret` uses.
    let auth = Auth::new(&section(vec![], vec![])).unwrap();
    let defaults = argon2::Params::default();
    assert_eq!(
        costs(&auth.dummy_hash),
        (defaults.m_cost(), defaults.t_cost(), defaults.p_cost())
    );
    // Each start draws a fresh salt and output.
    let again = Auth::new(&section(vec![], vec![])).unwrap();
    assert_ne!(auth.dummy_hash, again.dummy_hash);
}

#[test]
fn attempts_are_counted_before_hashing_and_the_budget_is_per_address() {
    let auth = Auth::new(&section(vec![], vec![])).unwrap();
    let guesser: IpAddr = "192.0.2.1".parse().unwrap();
    let other: IpAddr = "192.0.2.2".parse().unwrap();
    assert_eq!(auth.count_attempt(guesser), Ok(Standing::Good));
    for _ in 1..FAILURE_BUDGET {
        assert_eq!(auth.count_attempt(guesser), Ok(Standing::Doubtful));
    }
    match auth.count_attempt(guesser) {
        Err(AuthError::Throttled { retry_after }) => {
            assert!((1..=60).contains(&retry_after), "{retry_after}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(auth.count_attempt(other), Ok(Standing::Good));
    // A success gives its attempt back.
    auth.forgive_attempt(guesser);
    assert_eq!(auth.count_attempt(guesser), Ok(Standing::Doubtful));
    assert!(auth.count_attempt(guesser).is_err());
    // Failed CI identity tokens count against the same budget.
    for _ in 0..FAILURE_BUDGET {
        auth.note_failure(other);
    }
    assert!(auth.count_attempt(other).is_err());
}

#[test]
fn an_address_that_logged_in_is_trusted_until_it_fails() {
    let auth = Auth::new(&section(vec![], vec![])).unwrap();
    let client: IpAddr = "2001:db8:5:6::1".parse().unwrap();
    let same_64: IpAddr = "2001:db8:5:6::2".parse().unwrap();
    assert_eq!(auth.count_attempt(client), Ok(Standing::Good));
    auth.forgive_attempt(client);
    // Its first attempt of a window, from anywhere in its /64.
    assert_eq!(auth.count_attempt(same_64), Ok(Standing::Trusted));
    // A second attempt while that one fails or is pending is doubtful.
    assert_eq!(auth.count_attempt(client), Ok(Standing::Doubtful));
    // Trust lasts TRUSTED_FOR.
    let stranger: IpAddr = "192.0.2.77".parse().unwrap();
    auth.trusted.lock().unwrap().insert(
        stranger,
        Instant::now()
            .checked_sub(TRUSTED_FOR + Duration::from_secs(1))
            .unwrap(),
    );
    assert_eq!(auth.count_attempt(stranger), Ok(Standing::Good));
    // The map of trusted addresses stays bounded.
    {
        let mut trusted = auth.trusted.lock().unwrap();
        for n in 0..TRUSTED_MAX as u32 {
            trusted.insert(IpAddr::V4(std::net::Ipv4Addr::from(n)), Instant::now());
        }
    }
    auth.forgive_attempt(stranger);
    assert!(auth.trusted.lock().unwrap().len() <= TRUSTED_MAX);
}

#[test]
fn an_ipv6_client_has_one_budget_for_its_whole_64() {
    // Each address of a /64 had a budget of its own: one host guessed
    // without limit by changing its address.
    let auth = Auth::new(&section(vec![], vec![])).unwrap();
    for n in 0..FAILURE_BUDGET {
        let address: IpAddr = format!("2001:db8:1:2::{:x}", n + 1).parse().unwrap();
        assert!(auth.count_attempt(address).is_ok(), "attempt {n}");
    }
    let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
    assert!(matches!(
        auth.count_attempt(same_64),
        Err(AuthError::Throttled { .. })
    ));
    let next_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(auth.count_attempt(next_64), Ok(Standing::Good));
    // An IPv4 client seen through an IPv6 socket is the IPv4 address.
    let v4: IpAddr = "192.0.2.9".parse().unwrap();
    let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
    assert_eq!(auth.count_attempt(v4), Ok(Standing::Good));
    assert_eq!(auth.count_attempt(mapped), Ok(Standing::Doubtful));
}

#[test]
fn budgets_beyond_the_largest_count_share_one() {
    // The map of budgets grew with every new address and was scanned on
    // every attempt once large.
    let auth = Auth::new(&section(vec![], vec![])).unwrap();
    {
        let mut failures = auth.failures.lock().unwrap();
        let now = Instant::now();
        for n in 0..FAILURES_MAX as u32 {
            failures
                .counts
                .insert(IpAddr::V4(std::net::Ipv4Addr::from(n)), (1, now));
        }
    }
    let newcomer: IpAddr = "2001:db8::1".parse().unwrap();
    let another: IpAddr = "2001:db8:9::1".parse().unwrap();
    assert_eq!(auth.count_attempt(newcomer), Ok(Standing::Good));
    assert_eq!(auth.count_attempt(another), Ok(Standing::Doubtful));
    let failures = auth.failures.lock().unwrap();
    assert_eq!(failures.counts.len(), FAILURES_MAX + 1);
    assert!(failures.counts.contains_key(&OVERFLOW));
}

fn ci_identity(iss: &str, claims: &[(&str, &str)]) -> Identity {
    let mut map = serde_json::Map::new();
    map.insert("iss".into(), iss.into());
    for (k, v) in claims {
        map.insert(k.to_string(), (*v).into());
    }
    Identity {
        name: format!("oidc:{iss}#x"),
        rules: Arc::from(Vec::new()),
        claims: Some(Arc::new(map)),
    }
}

fn protected(keys: &str, issuer: Option<&str>, claims: &[(&str, &str)]) -> FileProtected {
    FileProtected {
        keys: keys.into(),
        writers: file::FileWriters {
            issuer: issuer.map(Into::into),
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
    }
}

fn issuer(url: &str) -> file::FileIssuer {
    file::FileIssuer {
        issuer: url.into(),
        audience: Some("stategate".into()),
        jwks_uri: None,
        keys_max_age: None,
        rules: vec![],
    }
}

#[test]
fn every_matching_protected_entry_applies_whatever_the_order() {
    let gh = "https://token.actions.githubusercontent.com";
    let broad = protected("prod/**", None, &[("ref_protected", "true")]);
    let narrow = protected("prod/db/**", None, &[("repository", "my-org/db")]);
    for entries in [
        vec![broad.clone(), narrow.clone()],
        vec![narrow.clone(), broad.clone()],
    ] {
        let auth = Auth::new(&FileAuth {
            oidc: vec![issuer(gh)],
            protected: entries,
            ..Default::default()
        })
        .unwrap();
        let st = |k: &str| StateRef::parse(k, None).unwrap();
        let app = ci_identity(
            gh,
            &[("ref_protected", "true"), ("repository", "my-org/app")],
        );
        let db = ci_identity(
            gh,
            &[("ref_protected", "true"), ("repository", "my-org/db")],
        );
        let db_branch = ci_identity(
            gh,
            &[("ref_protected", "false"), ("repository", "my-org/db")],
        );
        assert_eq!(auth.protection(&app, &st("prod/net")), None);
        let why = auth.protection(&app, &st("prod/db/main")).expect("refused");
        assert!(
            why.contains("keys prod/db/**") && !why.contains("keys prod/**"),
            "{why}"
        );
        let why = auth
            .protection(&db_branch, &st("prod/db/main"))
            .expect("refused");
        assert!(why.contains("keys prod/**"), "{why}");
        assert_eq!(auth.protection(&db, &st("prod/db/main")), None);
        assert_eq!(auth.protection(&app, &st("staging/x")), None);
    }
}

#[test]
fn protected_writers_are_tied_to_one_issuer() {
    let gh = "https://token.actions.githubusercontent.com";
    let gl = "https://gitlab.com";
    let claims = [("ref_protected", "true")];
    let two = |entry: FileProtected| {
        Auth::new(&FileAuth {
            oidc: vec![issuer(gh), issuer(&format!("{gl}/"))],
            protected: vec![entry],
            ..Default::default()
        })
    };
    // No issuer named among two, and one that is not configured.
    for named in [None, Some("https://example.com")] {
        let e = two(protected("prod/**", named, &claims))
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .contains("auth.protected[prod/**].writers.issuer"),
            "{e}"
        );
    }
    let auth = two(protected("prod/**", Some(gl), &claims)).unwrap();
    let st = StateRef::parse("prod/x", None).unwrap();
    assert!(auth.protection(&ci_identity(gh, &claims), &st).is_some());
    assert_eq!(
        auth.protection(&ci_identity(&format!("{gl}/"), &claims), &st),
        None
    );
    // With one issuer, the entry is that issuer's.
    let auth = Auth::new(&FileAuth {
        oidc: vec![issuer(gh)],
        protected: vec![protected("prod/**", None, &claims)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(auth.protection(&ci_identity(gh, &claims), &st), None);
    assert!(auth.protection(&ci_identity(gl, &claims), &st).is_some());
}

//! CI identity tokens: OIDC JWTs from GitHub Actions, GitLab CI or any
//! issuer, so pipelines need no stored secret. A token is accepted when its
//! signature verifies (RS256 or ES256; `none` and HMAC algorithms never)
//! against a key of the issuer's JWKS, found through its discovery document
//! (or configured) and cached, and when `iss`, `aud`, `exp` and `nbf` hold,
//! with a small leeway for clocks. Verification itself is jsonwebtoken's,
//! on RustCrypto.
//!
//! The key cache is shaped by what an attacker can send: tokens naming the
//! issuer but made-up key ids, as many as they like. So fetches are limited
//! per issuer to one at a time and one attempt a second, failed attempts
//! counted like successful ones; a token whose key is cached never waits
//! for a fetch (the cache sits behind a lock held only to read or replace
//! it, and old keys are refreshed in the background); and keys past their
//! age stay in use while the issuer cannot be reached, with a warning and
//! a metric, since refusing every pipeline would not make them safer.
//!
//! The identity is `oidc:<iss>#<sub>`, stable across the short-lived tokens
//! of one pipeline, so a lock taken under one token is released with the
//! next. Its rules are the issuer's rules whose claim patterns match; a
//! rule's key pattern may hold `{claim}`, replaced by the claim's value
//! (which may never act as a wildcard: a value with characters that cannot
//! be in a key makes the rule match nothing).
//!
//! When the issuer cannot be reached the answer is 503 (Terraform retries),
//! never 401.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::OwnedMutexGuard;

use super::access::{level_and_workspaces, match_one};
use super::file::{FileClaimRule, FileIssuer};
use super::{Access, AuthError, Glob, Identity, Rule};
use crate::settings::{ConfigError, parse_duration};

/// Clock skew forgiven on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// A JWKS is fetched again after this, whatever the ids, unless the issuer
/// sets `keys_max_age`.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// An issuer's keys are fetched at most this often, whether the last
/// attempt worked or not.
const REFETCH_EVERY: Duration = Duration::from_secs(1);
/// Time for one request to an issuer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Claim patterns: `*` matches any run of characters.
type ClaimPatterns = Vec<(String, String)>;

/// Whether every pattern matches the claim of its name.
pub(super) fn claims_match(patterns: &ClaimPatterns, claims: &Map<String, Value>) -> bool {
    patterns
        .iter()
        .all(|(name, pattern)| claim_text(claims.get(name)).is_some_and(|v| match_one(pattern, &v)))
}

/// A claim as text: strings as they are, booleans and numbers written out.
fn claim_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn patterns(map: &BTreeMap<String, String>) -> ClaimPatterns {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

struct ClaimRule {
    claims: ClaimPatterns,
    /// The key pattern, with `{claim}` placeholders.
    keys: String,
    workspaces: Vec<Glob>,
    access: Access,
}

impl ClaimRule {
    fn parse(setting: &str, rule: &FileClaimRule) -> Result<Self, ConfigError> {
        let invalid = |why: String| ConfigError::invalid(setting, why);
        // Anyone can have GitHub or GitLab.com sign a token with any
        // audience: a rule that names no claim admits them all.
        if rule.claims.is_empty() {
            return Err(invalid(format!(
                "the rule for keys `{}` names no claims, so every token the issuer signs would \
                 match, from any repository or project it serves; name the claims of the \
                 pipelines it admits (`repository_owner` on GitHub Actions, `namespace_path` on \
                 GitLab), or `sub: \"*\"` to admit them all",
                rule.keys
            )));
        }
        // Check the pattern with every placeholder standing for one segment.
        let mut probe = String::new();
        let mut rest = rule.keys.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| invalid(format!("keys `{}` has an unclosed `{{`", rule.keys)))?;
            probe.push_str(&rest[..open]);
            probe.push('x');
            rest = &rest[open + close + 1..];
        }
        probe.push_str(rest);
        Glob::parse("keys", &probe).map_err(invalid)?;
        let (access, workspaces) = level_and_workspaces(setting, &rule.access, &rule.workspaces)?;
        Ok(ClaimRule {
            claims: patterns(&rule.claims),
            keys: rule.keys.clone(),
            workspaces,
            access,
        })
    }

    /// The rule for a token with these claims, `None` when it does not apply.
    fn grant(&self, claims: &Map<String, Value>) -> Option<Rule> {
        if !claims_match(&self.claims, claims) {
            return None;
        }
        let mut keys = String::new();
        let mut rest = self.keys.as_str();
        while let Some(open) = rest.find('{') {
            let close = open + rest[open..].find('}')?;
            let value = claim_text(claims.get(&rest[open + 1..close]))?;
            // Literal text only: no wildcard, no empty or dot segment.
            let literal = !value.is_empty()
                && value
                    .split('/')
                    .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
            if !literal {
                return None;
            }
            keys.push_str(&rest[..open]);
            keys.push_str(&value);
            rest = &rest[close + 1..];
        }
        keys.push_str(rest);
        Some(Rule {
            keys: Glob::parse("keys", &keys).ok()?,
            workspaces: self.workspaces.clone(),
            access: self.access,
        })
    }
}

/// What is known of an issuer's keys; behind a lock that is never held
/// across a fetch.
#[derive(Default)]
struct KeyCache {
    /// The last JWKS fetched, and when; kept when a refresh fails.
    keys: Option<(Arc<JwkSet>, Instant)>,
    /// The `jwks_uri` of the last discovery document, and when it was read.
    discovered: Option<(reqwest::Url, Instant)>,
    /// When the last fetch started, whatever came of it: the rate limit
    /// counts attempts, so an issuer that fails is not asked more often.
    attempted: Option<Instant>,
    /// When the last fetch ended: requests that waited for it take its
    /// answer rather than asking again.
    settled: Option<Instant>,
    /// Why the last fetch failed; `None` once one succeeds.
    failure: Option<String>,
}

impl KeyCache {
    fn may_fetch(&self) -> bool {
        self.attempted.is_none_or(|t| t.elapsed() >= REFETCH_EVERY)
    }
}

/// One configured issuer.
struct Issuer {
    /// As configured, without a trailing `/`; tokens' `iss` must equal it.
    url: String,
    audience: String,
    rules: Vec<ClaimRule>,
    /// `jwks_uri` as configured; without it, discovery names it.
    jwks_uri: Option<reqwest::Url>,
    /// After this, keys (and the discovered `jwks_uri`) are refreshed.
    keys_max_age: Duration,
    cache: std::sync::Mutex<KeyCache>,
    /// Held by the one fetch in flight. Only requests that need its result
    /// (a token naming a key not in the cache) wait for it.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

impl Issuer {
    fn cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        // The cache is replaced whole, never left half-written, so a panic
        // elsewhere while it was held does not make it wrong.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key `kid` of the cached JWKS, and whether that JWKS is past its
    /// age; `None` when the cache does not have it.
    fn cached_key(&self, kid: &str) -> Option<(Result<DecodingKey, AuthError>, bool)> {
        let cache = self.cache();
        let (set, fetched) = cache.keys.as_ref()?;
        let key = decoding_key(kid, set.find(kid)?);
        Some((key, fetched.elapsed() > self.keys_max_age))
    }

    /// Whether the keys in use are past their age because refreshing them
    /// failed.
    fn serving_stale_keys(&self) -> bool {
        let cache = self.cache();
        cache.failure.is_some()
            && cache
                .keys
                .as_ref()
                .is_some_and(|(_, fetched)| fetched.elapsed() > self.keys_max_age)
    }

    /// Fetches the issuer's keys into its cache, holding `turn` (of
    /// `fetching`) until the answer is in; the caller has marked the
    /// attempt. On failure the cached keys stay, and the failure is logged
    /// and kept to answer with.
    async fn refresh(self: Arc<Self>, http: reqwest::Client, turn: OwnedMutexGuard<()>) {
        let fetched = self.fetch_keys(&http).await;
        let mut cache = self.cache();
        cache.settled = Some(Instant::now());
        match fetched {
            Ok(set) => {
                if cache.failure.take().is_some() {
                    tracing::info!(issuer = %self.url, "the issuer's keys were fetched again");
                }
                cache.keys = Some((Arc::new(set), Instant::now()));
            }
            Err(why) => {
                match &cache.keys {
                    Some((_, fetched)) if fetched.elapsed() > self.keys_max_age => {
                        tracing::warn!(
                            issuer = %self.url,
                            age_secs = fetched.elapsed().as_secs(),
                            error = %why,
                            "the issuer's keys are past keys_max_age and cannot be refreshed: still verifying tokens with them"
                        );
                    }
                    _ => {
                        tracing::warn!(issuer = %self.url, error = %why, "fetching the issuer's keys failed");
                    }
                }
                cache.failure = Some(why);
            }
        }
        drop(turn);
    }

    /// The issuer's JWKS, from the configured `jwks_uri` or the one its
    /// discovery document names (read again once past `keys_max_age`, or
    /// after the JWKS could not be fetched from it).
    async fn fetch_keys(&self, http: &reqwest::Client) -> Result<JwkSet, String> {
        let (jwks_uri, discovered) = match &self.jwks_uri {
            Some(uri) => (uri.clone(), false),
            None => {
                let known = self
                    .cache()
                    .discovered
                    .clone()
                    .filter(|(_, read)| read.elapsed() <= self.keys_max_age);
                let uri = match known {
                    Some((uri, _)) => uri,
                    None => {
                        let uri = self.discover(http).await?;
                        self.cache().discovered = Some((uri.clone(), Instant::now()));
                        uri
                    }
                };
                (uri, true)
            }
        };
        let fetched = get_json(http, jwks_uri.as_str()).await.and_then(|set| {
            serde_json::from_value(set).map_err(|e| format!("the JWKS does not parse: {e}"))
        });
        if fetched.is_err() && discovered {
            self.cache().discovered = None;
        }
        fetched
    }

    /// The `jwks_uri` of the issuer's discovery document.
    async fn discover(&self, http: &reqwest::Client) -> Result<reqwest::Url, String> {
        let discovery = get_json(
            http,
            &format!("{}/.well-known/openid-configuration", self.url),
        )
        .await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the discovery document has no jwks_uri")?;
        fetchable(jwks_uri).map_err(|why| format!("the discovery document's jwks_uri {why}"))
    }
}

/// The configured issuers.
pub struct Oidc {
    issuers: Vec<Arc<Issuer>>,
    http: reqwest::Client,
}

/// A verified token.
pub struct Verified {
    pub identity: Identity,
    /// Its `exp`, as a Unix time.
    pub expires: i64,
}

/// `url` as an address stategate fetches keys from: https, or http only on
/// a loopback host (a test issuer), since keys fetched in clear could be
/// swapped on the way for an attacker's.
fn fetchable(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback_host(&parsed) => Ok(parsed),
        _ => Err(format!(
            "`{url}` must be an https URL (http only on a loopback host)"
        )),
    }
}

fn loopback_host(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

impl Oidc {
    /// Checks `auth.oidc`: every issuer (and `jwks_uri`, if set) an https
    /// URL (http only on a loopback host, for tests) with an audience,
    /// valid rules and a `keys_max_age` of at least a second.
    pub fn new(issuers: &[FileIssuer]) -> Result<Self, ConfigError> {
        let mut out = Vec::new();
        for issuer in issuers {
            let url_text = issuer.issuer.trim_end_matches('/').to_string();
            let setting = format!("auth.oidc[{url_text}]");
            fetchable(&url_text)
                .map_err(|why| ConfigError::invalid(&format!("{setting}.issuer"), why))?;
            let audience = issuer
                .audience
                .clone()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| ConfigError::Missing {
                    setting: format!("{setting}.audience"),
                    help: "the audience tokens must be issued for, e.g. stategate".into(),
                })?;
            let rules = issuer
                .rules
                .iter()
                .map(|r| ClaimRule::parse(&format!("{setting}.rules"), r))
                .collect::<Result<_, _>>()?;
            let jwks_uri = issuer
                .jwks_uri
                .as_deref()
                .map(fetchable)
                .transpose()
                .map_err(|why| ConfigError::invalid(&format!("{setting}.jwks_uri"), why))?;
            let keys_max_age = match &issuer.keys_max_age {
                None => KEYS_MAX_AGE,
                Some(text) => {
                    let name = format!("{setting}.keys_max_age");
                    let age = parse_duration(&name, text)?;
                    if age < REFETCH_EVERY {
                        return Err(ConfigError::invalid(&name, "must be at least 1s"));
                    }
                    age
                }
            };
            out.push(Arc::new(Issuer {
                url: url_text,
                audience,
                rules,
                jwks_uri,
                keys_max_age,
                cache: std::sync::Mutex::new(KeyCache::default()),
                fetching: Arc::new(tokio::sync::Mutex::new(())),
            }));
        }
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::invalid("auth.oidc", e))?;
        Ok(Oidc { issuers: out, http })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// How many issuers' tokens are verified with keys past their
    /// `keys_max_age`, because the issuer could not be reached to refresh
    /// them.
    pub fn stale_issuers(&self) -> usize {
        self.issuers
            .iter()
            .filter(|i| i.serving_stale_keys())
            .count()
    }

    /// Verifies a token and returns its identity.
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let invalid = |why: String| AuthError::Invalid(format!("CI identity token refused: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("the token names no key (kid)".into()))?;
        let unverified: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| invalid(e.to_string()))?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .map(|i| i.trim_end_matches('/'))
            .ok_or_else(|| invalid("the token has no issuer".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.url == iss)
            .ok_or_else(|| invalid(format!("issuer {iss} is not configured")))?;
        let key = self.key(issuer, &kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[issuer.audience.as_str()]);
        validation.set_issuer(&[issuer.url.as_str(), &format!("{}/", issuer.url)]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| invalid(e.to_string()))?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let expires = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let rules: Vec<Rule> = issuer
            .rules
            .iter()
            .filter_map(|r| r.grant(&claims))
            .collect();
        Ok(Verified {
            identity: Identity {
                name: format!("oidc:{}#{sub}", issuer.url),
                rules: rules.into(),
                claims: Some(Arc::new(claims)),
            },
            expires,
        })
    }

    /// The issuer's key `kid`, from the cached JWKS or a fresh one. A
    /// cached key is returned at once, whatever fetch is under way; an
    /// unknown one waits for the fetch in flight or makes one, at most one
    /// attempt a second. `Unavailable` when the last attempt failed (the
    /// key may well exist), `Invalid` when the issuer's keys, fetched
    /// within the second, do not have it.
    async fn key(&self, issuer: &Arc<Issuer>, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Some((key, stale)) = issuer.cached_key(kid) {
            if stale {
                self.refresh_in_background(issuer);
            }
            return key;
        }
        let asked = Instant::now();
        let turn = Arc::clone(&issuer.fetching).lock_owned().await;
        {
            let mut cache = issuer.cache();
            // Another request's fetch may have brought the key meanwhile.
            if let Some(jwk) = cache.keys.as_ref().and_then(|(set, _)| set.find(kid)) {
                return decoding_key(kid, jwk);
            }
            // A fetch that ended while this request waited answered its
            // question, and a recent one stands for a second.
            let answered = cache.settled.is_some_and(|t| t >= asked);
            if answered || !cache.may_fetch() {
                return Err(no_key(issuer, kid, &cache));
            }
            cache.attempted = Some(Instant::now());
        }
        // A task of its own, so that the fetch (and the turn) outlives this
        // request if its client goes away: the requests queued behind it
        // are owed its answer.
        let fetch = tokio::spawn(Arc::clone(issuer).refresh(self.http.clone(), turn));
        if let Err(e) = fetch.await {
            tracing::error!(issuer = %issuer.url, error = %e, "fetching the issuer's keys panicked");
        }
        let cache = issuer.cache();
        match cache.keys.as_ref().and_then(|(set, _)| set.find(kid)) {
            Some(jwk) => decoding_key(kid, jwk),
            None => Err(no_key(issuer, kid, &cache)),
        }
    }

    /// Refreshes keys past their age without holding up the request that
    /// noticed: it goes on with the old keys. Skipped when a fetch is in
    /// flight or one started within the second.
    fn refresh_in_background(&self, issuer: &Arc<Issuer>) {
        let Ok(turn) = Arc::clone(&issuer.fetching).try_lock_owned() else {
            return;
        };
        {
            let mut cache = issuer.cache();
            if !cache.may_fetch() {
                return;
            }
            cache.attempted = Some(Instant::now());
        }
        tokio::spawn(Arc::clone(issuer).refresh(self.http.clone(), turn));
    }
}

fn decoding_key(kid: &str, jwk: &Jwk) -> Result<DecodingKey, AuthError> {
    DecodingKey::from_jwk(jwk)
        .map_err(|e| AuthError::Invalid(format!("CI identity token refused: key {kid}: {e}")))
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let response = http.get(url).send().await.map_err(|e| {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        cause.to_string()
    })?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    response.json().await.map_err(|e| format!("{url}: {e}"))
}

/// Why `kid` cannot be had: the issuer unreachable (503, Terraform retries)
/// or, its keys in hand, not among them (401).
fn no_key(issuer: &Issuer, kid: &str, cache: &KeyCache) -> AuthError {
    match &cache.failure {
        Some(why) => AuthError::Unavailable(format!(
            "cannot fetch the keys of issuer {}: {why}",
            issuer.url
        )),
        None => AuthError::Invalid(format!(
            "CI identity token refused: issuer {} has no key {kid}",
            issuer.url
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule as the file gives it, granting `access`.
    fn file_rule(claims: &[(&str, &str)], keys: &str, access: &str) -> FileClaimRule {
        FileClaimRule {
            claims: claims
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            keys: keys.into(),
            access: access.into(),
            workspaces: vec![],
        }
    }

    fn rule(claims: &[(&str, &str)], keys: &str) -> ClaimRule {
        ClaimRule::parse("r", &file_rule(claims, keys, "write")).unwrap()
    }

    fn claims(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn a_rule_names_its_claims_or_admits_everyone_in_so_many_words() {
        let parse = |claims: &[(&str, &str)]| {
            ClaimRule::parse(
                "auth.oidc[https://token.actions.githubusercontent.com].rules",
                &file_rule(claims, "shared/**", "read"),
            )
        };
        let e = parse(&[]).err().expect("a rule without claims").to_string();
        assert!(
            e.contains("auth.oidc[https://token.actions.githubusercontent.com].rules"),
            "{e}"
        );
        assert!(e.contains("`shared/**` names no claims"), "{e}");
        let everyone = parse(&[("sub", "*")]).expect("every subject, said so");
        assert!(
            everyone
                .grant(&claims(&[(
                    "sub",
                    "repo:anyone/anything:ref:refs/heads/x".into()
                )]))
                .is_some()
        );
    }

    #[test]
    fn keys_come_over_https_or_from_a_loopback_host() {
        for (url, allowed) in [
            (
                "https://token.actions.githubusercontent.com/.well-known/jwks",
                true,
            ),
            ("http://127.0.0.1:8080/jwks", true),
            ("http://[::1]:8080/jwks", true),
            ("http://localhost/jwks", true),
            ("http://keys.example.com/jwks", false),
            ("http://10.0.0.1/jwks", false),
            ("ftp://keys.example.com/jwks", false),
            ("/jwks", false),
        ] {
            assert_eq!(fetchable(url).is_ok(), allowed, "{url}");
        }
    }

    #[test]
    fn claim_values_fill_key_patterns_literally() {
        let r = rule(
            &[("repository_owner", "my-org"), ("ref", "refs/heads/*")],
            "ci/{repository}/**",
        );
        let c = claims(&[
            ("repository_owner", "my-org".into()),
            ("repository", "my-org/app".into()),
            ("ref", "refs/heads/main".into()),
        ]);
        let granted = r.grant(&c).expect("matches");
        assert!(granted.keys.matches("ci/my-org/app/terraform.tfstate"));
        assert!(!granted.keys.matches("ci/my-org/other/x"));
        let other_owner = claims(&[
            ("repository_owner", "evil".into()),
            ("repository", "x/y".into()),
            ("ref", "refs/heads/main".into()),
        ]);
        assert!(r.grant(&other_owner).is_none());
        // A claim value cannot widen the pattern.
        for sneaky in ["*", "**", "a/../b", "a/*", "", "a//b", "a:b"] {
            let c = claims(&[
                ("repository_owner", "my-org".into()),
                ("repository", sneaky.into()),
                ("ref", "refs/heads/main".into()),
            ]);
            assert!(r.grant(&c).is_none(), "{sneaky:?}");
        }
        let b = rule(&[("ref_protected", "true")], "prod/**");
        assert!(
            b.grant(&claims(&[("ref_protected", Value::Bool(true))]))
                .is_some()
        );
        assert!(
            b.grant(&claims(&[("ref_protected", "false".into())]))
                .is_none()
        );
        assert!(
            ClaimRule::parse(
                "r",
                &FileClaimRule {
                    claims: BTreeMap::new(),
                    keys: "ci/{x".into(),
                    access: "read".into(),
                    workspaces: vec![]
                }
            )
            .is_err()
        );
    }
}

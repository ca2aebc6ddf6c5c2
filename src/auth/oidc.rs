//! CI identity tokens: OIDC JWTs from GitHub Actions, GitLab CI or any
//! issuer, so pipelines need no stored secret. A token is accepted when its
//! signature verifies (RS256 or ES256; `none` and HMAC algorithms never)
//! against a key of the issuer's JWKS, found through its discovery document
//! and cached (fetched again for an unknown `kid`, at most every few
//! seconds, so a stream of made-up ids cannot hammer the issuer), and when
//! `iss`, `aud`, `exp` and `nbf` hold, with a small leeway for clocks.
//! Verification itself is jsonwebtoken's, on RustCrypto.
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

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::file::{FileClaimRule, FileIssuer};
use super::{Access, AuthError, Glob, Identity, Rule, level_and_workspaces, match_one};
use crate::settings::ConfigError;

/// Clock skew forgiven on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// A JWKS is fetched again after this, whatever the ids.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Unknown ids refetch the JWKS at most this often.
const REFETCH_EVERY: Duration = Duration::from_secs(1);
/// Time for one request to an issuer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Claim patterns: `*` matches any run of characters.
type ClaimPatterns = Vec<(String, String)>;

/// Whether every pattern matches the claim of its name.
pub(super) fn claims_match(patterns: &ClaimPatterns, claims: &Map<String, Value>) -> bool {
    patterns.iter().all(|(name, pattern)| {
        claim_text(claims.get(name)).is_some_and(|v| match_one(pattern.as_bytes(), v.as_bytes()))
    })
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

struct Keys {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

/// One configured issuer.
struct Issuer {
    /// As configured, without a trailing `/`; tokens' `iss` must equal it.
    url: String,
    audience: String,
    rules: Vec<ClaimRule>,
    keys: tokio::sync::Mutex<Keys>,
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
    /// Checks `auth.oidc`: every issuer an https URL (http only on a
    /// loopback host, for tests) with an audience and valid rules.
    pub fn new(issuers: &[FileIssuer]) -> Result<Self, ConfigError> {
        let mut out = Vec::new();
        for issuer in issuers {
            let url_text = issuer.issuer.trim_end_matches('/').to_string();
            let setting = format!("auth.oidc[{url_text}]");
            let url = reqwest::Url::parse(&url_text).map_err(|e| {
                ConfigError::invalid(&format!("{setting}.issuer"), format!("not a URL: {e}"))
            })?;
            match url.scheme() {
                "https" => {}
                "http" if loopback_host(&url) => {}
                _ => {
                    return Err(ConfigError::invalid(
                        &format!("{setting}.issuer"),
                        "must be an https URL (http only on a loopback host)",
                    ));
                }
            }
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
            out.push(Arc::new(Issuer {
                url: url_text,
                audience,
                rules,
                keys: tokio::sync::Mutex::new(Keys {
                    set: None,
                    fetched: None,
                }),
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

    /// The issuer's key `kid`, from the cached JWKS or a fresh one.
    async fn key(&self, issuer: &Issuer, kid: &str) -> Result<DecodingKey, AuthError> {
        let mut keys = issuer.keys.lock().await;
        let stale = keys.fetched.is_none_or(|t| t.elapsed() > KEYS_MAX_AGE);
        let known = keys.set.as_ref().and_then(|s| s.find(kid)).is_some();
        let may_refetch = keys.fetched.is_none_or(|t| t.elapsed() > REFETCH_EVERY);
        if stale || (!known && may_refetch) {
            match self.fetch_keys(issuer).await {
                Ok(set) => {
                    keys.set = Some(set);
                    keys.fetched = Some(Instant::now());
                }
                // Known keys keep working while the issuer is away.
                Err(e) if !known => return Err(e),
                Err(e) => {
                    tracing::warn!(issuer = %issuer.url, error = %e, "refreshing the issuer's keys failed")
                }
            }
        }
        let jwk = keys.set.as_ref().and_then(|s| s.find(kid)).ok_or_else(|| {
            AuthError::Invalid(format!(
                "CI identity token refused: issuer {} has no key {kid}",
                issuer.url
            ))
        })?;
        DecodingKey::from_jwk(jwk)
            .map_err(|e| AuthError::Invalid(format!("CI identity token refused: key {kid}: {e}")))
    }

    async fn fetch_keys(&self, issuer: &Issuer) -> Result<JwkSet, AuthError> {
        let unavailable = |e: String| {
            AuthError::Unavailable(format!(
                "cannot fetch the keys of issuer {}: {e}",
                issuer.url
            ))
        };
        let discovery: Value = self
            .get_json(&format!("{}/.well-known/openid-configuration", issuer.url))
            .await
            .map_err(unavailable)?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| unavailable("the discovery document has no jwks_uri".into()))?;
        let set: Value = self.get_json(jwks_uri).await.map_err(unavailable)?;
        serde_json::from_value(set)
            .map_err(|e| unavailable(format!("the JWKS does not parse: {e}")))
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self.http.get(url).send().await.map_err(|e| {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(claims: &[(&str, &str)], keys: &str) -> ClaimRule {
        ClaimRule::parse(
            "r",
            &FileClaimRule {
                claims: claims
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                keys: keys.into(),
                access: "write".into(),
                workspaces: vec![],
            },
        )
        .unwrap()
    }

    fn claims(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
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

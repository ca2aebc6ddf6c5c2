//! Who is asking, and what they may do. [`Auth`] is built from the `auth`
//! section of the configuration and answers one question per request:
//! which [`Identity`] the credentials name. The identity then says which
//! [`Access`] level it has on a state.
//!
//! Credentials are what Terraform and OpenTofu can send without new tools:
//! Basic auth (`username`/`password`, `TF_HTTP_USERNAME`/`TF_HTTP_PASSWORD`)
//! for users, and static tokens as `Authorization: Bearer` (OpenTofu's
//! `headers`) or as the Basic password with the username `token`
//! (Terraform has no header setting). The configuration holds only argon2id
//! hashes in PHC form; a plain password or token there stops start-up.
//!
//! CI identity tokens (OIDC JWTs, [`oidc`]) come as `Bearer` or as the Basic
//! password of the username `oidc`. Protected states change only for CI
//! identities that every protecting entry allows: a token of the entry's
//! issuer whose claims match.
//!
//! argon2 is slow on purpose, so a verified credential is remembered for a
//! minute under an HMAC of it (a key drawn at start-up, so the cache holds
//! nothing that could be replayed), argon2 runs on at most two blocking
//! threads at once, one of them kept for addresses in good standing, and
//! each address has a budget of failed credentials that is spent before
//! hashing, not after: a wrong password is not a cheap way to burn CPU or
//! to make others wait. Unknown names are verified against a hash as
//! costly as the costliest configured one, so they take as long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::settings::ConfigError;
use crate::state::StateRef;
use file::{FileAuth, FileProtected, FileRule};

pub mod decide;
pub mod file;
mod oidc;

use oidc::{Oidc, claims_match, patterns};

/// Permission levels, each including the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// GET of a state with its `resources` emptied: all
    /// `terraform_remote_state` needs, and none of the resource attributes
    /// where secrets live.
    Outputs,
    /// GET of states, history and versions, and of lock holders.
    Read,
    /// Read, plus writes, LOCK, and UNLOCK of a lock this identity took.
    Write,
    /// Write, plus DELETE, force-unlock and unlocking another's lock.
    Admin,
}

impl Access {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "outputs" => Some(Access::Outputs),
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "admin" => Some(Access::Admin),
            _ => None,
        }
    }

    /// The level's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            Access::Outputs => "outputs",
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }
}

/// A key or workspace pattern: `/`-separated segments where `*` matches
/// within one segment and a `**` segment matches any number of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<String>);

impl Glob {
    /// Parses a pattern; `what` names it in the error.
    pub fn parse(what: &str, text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err(format!("{what} is empty"));
        }
        let segs: Vec<String> = text.split('/').map(str::to_string).collect();
        for seg in &segs {
            if seg.is_empty() {
                return Err(format!("{what} `{text}` has an empty segment"));
            }
            if seg.contains("**") && seg != "**" {
                return Err(format!("{what} `{text}`: `**` must be a whole segment"));
            }
            if let Some(c) = seg
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*')))
            {
                return Err(format!("{what} `{text}` has the character {c:?}"));
            }
        }
        Ok(Glob(segs))
    }

    /// Whether `path` (a key or a workspace name) matches.
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        match_segments(&self.0, &parts)
    }
}

fn match_segments(pattern: &[String], parts: &[&str]) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=parts.len()).any(|skip| match_segments(rest, &parts[skip..]))
        }
        Some((first, rest)) => match parts.split_first() {
            Some((part, more)) => {
                match_one(first.as_bytes(), part.as_bytes()) && match_segments(rest, more)
            }
            None => false,
        },
    }
}

/// `*` within one segment.
fn match_one(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| match_one(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && match_one(rest, &text[1..]),
    }
}

/// The level and workspace patterns of a rule, checked.
fn level_and_workspaces(
    setting: &str,
    access: &str,
    workspaces: &[String],
) -> Result<(Access, Vec<Glob>), ConfigError> {
    let invalid = |why: String| ConfigError::invalid(setting, why);
    let level = Access::parse(access).ok_or_else(|| {
        invalid(format!(
            "access `{access}` is not one of outputs, read, write, admin"
        ))
    })?;
    let workspaces = workspaces
        .iter()
        .map(|w| Glob::parse("workspaces", w))
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    Ok((level, workspaces))
}

/// One grant: a level on the states whose key (and workspace) match.
#[derive(Debug, Clone)]
pub struct Rule {
    keys: Glob,
    /// Empty: every workspace.
    workspaces: Vec<Glob>,
    access: Access,
}

impl Rule {
    fn parse(owner: &str, rule: &FileRule) -> Result<Self, ConfigError> {
        let setting = format!("{owner}.rules");
        let keys =
            Glob::parse("keys", &rule.keys).map_err(|e| ConfigError::invalid(&setting, e))?;
        let (access, workspaces) = level_and_workspaces(&setting, &rule.access, &rule.workspaces)?;
        Ok(Rule {
            keys,
            workspaces,
            access,
        })
    }

    fn grants(&self, state: &StateRef) -> Option<Access> {
        let ws_ok = self.workspaces.is_empty()
            || self.workspaces.iter().any(|w| w.matches(state.workspace()));
        (ws_ok && self.keys.matches(state.key())).then_some(self.access)
    }
}

/// Someone who authenticated, with what they were granted.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `user:<name>`, `token:<name>`, `cert:<CN>` or `oidc:<iss>#<sub>`;
    /// what logs, audit and lock records show.
    pub name: String,
    rules: Arc<[Rule]>,
    /// The verified claims of a CI identity token.
    claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

impl Identity {
    /// The highest level any rule grants on `state`, `None` when none does.
    pub fn access(&self, state: &StateRef) -> Option<Access> {
        self.rules.iter().filter_map(|r| r.grants(state)).max()
    }
}

/// Why a request did not authenticate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials were sent.
    #[error("credentials are required")]
    Missing,
    /// The client's address has used up its budget of failed credentials;
    /// nothing was verified.
    #[error("too many failed credentials from this address; try again in {retry_after} seconds")]
    Throttled {
        /// Seconds until the address's window has passed.
        retry_after: u64,
    },
    /// The credentials are wrong, unknown or expired.
    #[error("{0}")]
    Invalid(String),
    /// The credentials cannot be checked now (an OIDC issuer is down).
    #[error("{0}")]
    Unavailable(String),
}

/// A key pattern whose states only matching CI identities may change.
struct Protected {
    keys: Glob,
    /// The issuer (as configured, without a trailing `/`) whose tokens
    /// may carry `claims`; `None` only when no issuer is configured, and
    /// then no identity matches.
    issuer: Option<String>,
    claims: Vec<(String, String)>,
    /// How the rule is shown in refusals.
    shown: String,
}

impl Protected {
    fn parse(p: &FileProtected, issuers: &[&str]) -> Result<Self, ConfigError> {
        let setting = format!("auth.protected[{}]", p.keys);
        let keys = Glob::parse("keys", &p.keys).map_err(|e| ConfigError::invalid(&setting, e))?;
        if p.writers.claims.is_empty() {
            return Err(ConfigError::invalid(
                &format!("{setting}.writers"),
                "names no claims: say which CI identities may change these states",
            ));
        }
        let issuer_setting = format!("{setting}.writers.issuer");
        // A claim means something only to the issuer that signed it: a
        // second issuer could put any value in `ref_protected`.
        let issuer = match (p.writers.issuer.as_deref(), issuers) {
            (Some(named), _) => {
                let named = named.trim_end_matches('/');
                if !issuers.contains(&named) {
                    return Err(ConfigError::invalid(
                        &issuer_setting,
                        format!("`{named}` is not one of the issuers of auth.oidc"),
                    ));
                }
                Some(named.to_string())
            }
            (None, []) => None,
            (None, [only]) => Some(only.to_string()),
            (None, _) => {
                return Err(ConfigError::Missing {
                    setting: issuer_setting,
                    help: "auth.oidc lists more than one issuer; name the one whose tokens may carry these claims".into(),
                });
            }
        };
        let claims = p
            .writers
            .claims
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let from = issuer
            .as_deref()
            .map(|i| format!(" from {i}"))
            .unwrap_or_default();
        Ok(Protected {
            keys,
            issuer,
            claims: patterns(&p.writers.claims),
            shown: format!(
                "keys {} (writers: CI identities{from} with {claims})",
                p.keys
            ),
        })
    }

    /// Whether the identity's token came from this entry's issuer and its
    /// claims match.
    fn allows(&self, identity: &Identity) -> bool {
        let Some(claims) = identity.claims.as_ref() else {
            return false;
        };
        // `iss` was checked against the configured issuer when the token
        // was verified; the issuer may have written it with a trailing `/`.
        let from = claims
            .get("iss")
            .and_then(serde_json::Value::as_str)
            .map(|i| i.trim_end_matches('/'));
        from.is_some() && from == self.issuer.as_deref() && claims_match(&self.claims, claims)
    }
}

/// A user or token from the configuration.
struct Principal {
    identity: Identity,
    /// The argon2id PHC string.
    hash: String,
    expires: Option<OffsetDateTime>,
}

/// Usernames that name a kind of credential, not a user.
const RESERVED_USERS: &[&str] = &["token", "oidc"];

/// How long a verified credential is remembered.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Entries beyond which the cache is emptied (a flood of distinct valid
/// credentials is not a thing; distinct invalid ones are never cached).
const CACHE_MAX: usize = 10_000;
/// Credentials from one address that may fail, or be under verification,
/// within [`FAILURE_WINDOW`]; past that the address gets 429 until the
/// window has passed, without any hashing.
const FAILURE_BUDGET: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Concurrent argon2 verifications.
const HASHERS: usize = 2;
/// Of [`HASHERS`], how many only addresses in good standing (nothing
/// failed or under verification in the window) may use, so that one
/// address's guesses cannot keep everyone else waiting for a hasher.
const GOOD_STANDING_HASHERS: usize = 1;

/// A credential verified a moment ago.
struct Verified {
    identity: Identity,
    expires: Option<OffsetDateTime>,
    at: Instant,
}

/// The configured identities, and the machinery to check credentials.
pub struct Auth {
    users: HashMap<String, Principal>,
    tokens: HashMap<String, Principal>,
    /// Identities of verified client certificates, by subject CN.
    certificates: HashMap<String, Identity>,
    oidc: Oidc,
    protected: Vec<Protected>,
    /// Key of the cache's HMAC, drawn at start-up.
    cache_key: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], Verified>>,
    /// Per address: credentials failed or under verification, and since
    /// when they are counted.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    hashers: tokio::sync::Semaphore,
    /// Held, besides a hasher, by addresses not in good standing.
    doubtful_hashers: tokio::sync::Semaphore,
    /// A PHC string that no secret verifies against, with the costliest
    /// parameters of the configured hashes; verified for unknown names so
    /// that they take as long as known ones.
    dummy_hash: String,
}

fn check_hash(
    setting: &str,
    hash: Option<&str>,
    plain: bool,
    make: &str,
) -> Result<String, ConfigError> {
    if plain {
        return Err(ConfigError::invalid(
            setting,
            format!(
                "plain secrets are refused in the configuration; store an argon2id hash made with `{make}`"
            ),
        ));
    }
    let hash = hash.ok_or_else(|| ConfigError::Missing {
        setting: setting.to_string(),
        help: format!("an argon2id hash made with `{make}`"),
    })?;
    match PasswordHash::new(hash) {
        Ok(parsed) if parsed.algorithm.as_str() == "argon2id" => Ok(hash.to_string()),
        _ => Err(ConfigError::invalid(
            setting,
            format!(
                "is not an argon2id hash in PHC form ($argon2id$v=19$...); make one with `{make}`"
            ),
        )),
    }
}

fn check_name(setting: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            setting,
            format!("`{name}` may hold only letters, digits, `.`, `-` and `@`"),
        ))
    }
}

impl Auth {
    /// Checks the `auth` section and builds it. Every mistake names the
    /// setting: unknown keys, bad patterns or levels, plain secrets, hashes
    /// that are not argon2id, reserved or repeated names.
    pub fn new(file: &FileAuth) -> Result<Self, ConfigError> {
        let oidc = Oidc::new(&file.oidc)?;
        let issuers: Vec<&str> = file
            .oidc
            .iter()
            .map(|i| i.issuer.trim_end_matches('/'))
            .collect();
        let protected = file
            .protected
            .iter()
            .map(|p| Protected::parse(p, &issuers))
            .collect::<Result<Vec<_>, _>>()?;
        let mut users = HashMap::new();
        for user in &file.users {
            let setting = format!("auth.users[{}]", user.name);
            check_name(&format!("{setting}.name"), &user.name)?;
            if RESERVED_USERS.contains(&user.name.as_str()) {
                return Err(ConfigError::invalid(
                    &setting,
                    format!(
                        "the username `{}` is reserved for credentials of that kind",
                        user.name
                    ),
                ));
            }
            let hash = check_hash(
                &format!("{setting}.password_hash"),
                user.password_hash.as_deref(),
                user.password.is_some(),
                "stategate hash-password",
            )?;
            let rules = rules(&setting, &user.rules)?;
            warn_without_rules(&setting, &user.rules);
            let principal = Principal {
                identity: Identity {
                    name: format!("user:{}", user.name),
                    rules,
                    claims: None,
                },
                hash,
                expires: None,
            };
            if users.insert(user.name.clone(), principal).is_some() {
                return Err(ConfigError::invalid(&setting, "the name is used twice"));
            }
        }
        let mut tokens = HashMap::new();
        for token in &file.tokens {
            let setting = format!("auth.tokens[{}]", token.name);
            check_name(&format!("{setting}.name"), &token.name)?;
            let hash = check_hash(
                &format!("{setting}.token_hash"),
                token.token_hash.as_deref(),
                token.token.is_some(),
                "stategate token new NAME",
            )?;
            let expires = token
                .expires
                .as_deref()
                .map(|t| {
                    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| {
                            ConfigError::invalid(
                                &format!("{setting}.expires"),
                                format!("`{t}` is not an RFC 3339 time: {e}"),
                            )
                        })
                })
                .transpose()?;
            warn_without_rules(&setting, &token.rules);
            let principal = Principal {
                identity: Identity {
                    name: format!("token:{}", token.name),
                    rules: rules(&setting, &token.rules)?,
                    claims: None,
                },
                hash,
                expires,
            };
            if tokens.insert(token.name.clone(), principal).is_some() {
                return Err(ConfigError::invalid(&setting, "the name is used twice"));
            }
        }
        let mut certificates = HashMap::new();
        for cert in &file.certificates {
            let setting = format!("auth.certificates[{}]", cert.cn);
            if cert.cn.is_empty() {
                return Err(ConfigError::invalid("auth.certificates", "a cn is empty"));
            }
            let identity = Identity {
                name: format!("cert:{}", cert.cn),
                rules: rules(&setting, &cert.rules)?,
                claims: None,
            };
            if certificates.insert(cert.cn.clone(), identity).is_some() {
                return Err(ConfigError::invalid(&setting, "the cn is used twice"));
            }
        }
        let dummy_hash = unmatchable_hash(
            users
                .values()
                .chain(tokens.values())
                .map(|p| p.hash.as_str()),
        )
        .map_err(|e| ConfigError::invalid("auth", format!("no randomness: {e}")))?;
        let mut cache_key = [0u8; 32];
        getrandom::getrandom(&mut cache_key).map_err(|e| {
            ConfigError::invalid(
                "auth",
                format!("no randomness for the credential cache: {e}"),
            )
        })?;
        Ok(Auth {
            users,
            tokens,
            certificates,
            oidc,
            protected,
            cache_key,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            hashers: tokio::sync::Semaphore::new(HASHERS),
            doubtful_hashers: tokio::sync::Semaphore::new(HASHERS - GOOD_STANDING_HASHERS),
            dummy_hash,
        })
    }

    /// Whether client certificates map to identities (then `tls.client_ca`
    /// must be set, or no certificate is ever verified).
    pub fn uses_certificates(&self) -> bool {
        !self.certificates.is_empty()
    }

    /// OIDC issuers whose keys are past their age and still in use, the
    /// issuer being unreachable.
    pub fn oidc_stale_issuers(&self) -> usize {
        self.oidc.stale_issuers()
    }

    /// The identity an `Authorization` header value names or, without one,
    /// the identity of the verified client certificate's subject CN.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        certificate_cn: Option<&str>,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        let Some(header) = authorization else {
            return match certificate_cn {
                Some(cn) => self.certificates.get(cn).cloned().ok_or_else(|| {
                    AuthError::Invalid(format!(
                        "the client certificate of `{cn}` is not mapped to an identity"
                    ))
                }),
                None => Err(AuthError::Missing),
            };
        };
        let (kind, name, secret) = parse_authorization(header)?;
        let cache_id = self.cache_id(kind, &name, &secret);
        if let Some(identity) = self.cached(&cache_id) {
            return Ok(identity);
        }
        let principal = match kind {
            Kind::User => self.users.get(&name),
            Kind::Token => self.tokens.get(&name),
            Kind::Jwt => {
                if self.oidc.is_empty() {
                    return Err(AuthError::Invalid(
                        "CI identity tokens are not accepted: no issuer is configured".into(),
                    ));
                }
                let verified = match self.oidc.verify(&secret).await {
                    Ok(v) => v,
                    Err(e) => {
                        if matches!(e, AuthError::Invalid(_)) {
                            self.note_failure(client);
                        }
                        return Err(e);
                    }
                };
                let expires = OffsetDateTime::from_unix_timestamp(verified.expires).ok();
                self.remember(cache_id, &verified.identity, expires);
                return Ok(verified.identity);
            }
        };
        // Counted before hashing, so that concurrent guesses cannot all
        // pass a check made before any of them has failed.
        let standing = self.count_attempt(client)?;
        let verified = match principal {
            Some(p) => self.verify(&p.hash, secret, standing).await,
            None => {
                // Hash anyway, so an unknown name costs what a known one does.
                self.verify(&self.dummy_hash, secret, standing).await;
                false
            }
        };
        let principal = match principal {
            Some(p) if verified => p,
            // The attempt stays counted as a failure.
            _ => {
                return Err(AuthError::Invalid(match kind {
                    Kind::User => "wrong username or password".into(),
                    _ => "unknown token".into(),
                }));
            }
        };
        self.forgive_attempt(client);
        if principal
            .expires
            .is_some_and(|e| e <= OffsetDateTime::now_utc())
        {
            return Err(AuthError::Invalid(format!(
                "{} has expired",
                principal.identity.name
            )));
        }
        self.remember(cache_id, &principal.identity, principal.expires);
        Ok(principal.identity.clone())
    }

    fn remember(&self, cache_id: [u8; 32], identity: &Identity, expires: Option<OffsetDateTime>) {
        let mut cache = self.cache.lock().expect("auth cache");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            cache_id,
            Verified {
                identity: identity.clone(),
                expires,
                at: Instant::now(),
            },
        );
    }

    /// Why `identity` may not change `state`: every protected entry whose
    /// keys cover the state must allow the identity (a token of the
    /// entry's issuer with matching claims), whatever their order, and
    /// the refusal names each entry that does not.
    pub fn protection(&self, identity: &Identity, state: &StateRef) -> Option<String> {
        let refusing: Vec<&str> = self
            .protected
            .iter()
            .filter(|p| p.keys.matches(state.key()) && !p.allows(identity))
            .map(|p| p.shown.as_str())
            .collect();
        (!refusing.is_empty()).then(|| {
            format!(
                "{state} is protected by the rule {}; {} may only read it",
                refusing.join(" and the rule "),
                identity.name
            )
        })
    }

    fn cache_id(&self, kind: Kind, name: &str, secret: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.cache_key).expect("any key length");
        mac.update(&[kind as u8]);
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn cached(&self, id: &[u8; 32]) -> Option<Identity> {
        let mut cache = self.cache.lock().expect("auth cache");
        match cache.get(id) {
            Some(v)
                if v.at.elapsed() < CACHE_TTL
                    && v.expires.is_none_or(|e| e > OffsetDateTime::now_utc()) =>
            {
                Some(v.identity.clone())
            }
            Some(_) => {
                cache.remove(id);
                None
            }
            None => None,
        }
    }

    async fn verify(&self, hash: &str, secret: String, standing: Standing) -> bool {
        let _doubtful = match standing {
            Standing::Good => None,
            Standing::Doubtful => match self.doubtful_hashers.acquire().await {
                Ok(permit) => Some(permit),
                Err(_) => return false,
            },
        };
        let Ok(_permit) = self.hashers.acquire().await else {
            return false;
        };
        let hash = hash.to_string();
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }

    /// Counts an attempt of `client` that is about to be hashed, as a
    /// failure until [`Auth::forgive_attempt`] says otherwise. An address
    /// whose failed and pending attempts in the window have reached
    /// [`FAILURE_BUDGET`] is refused instead, naming when to try again.
    fn count_attempt(&self, client: IpAddr) -> Result<Standing, AuthError> {
        self.with_failures_of(client, |count, since| {
            if *count >= FAILURE_BUDGET {
                let left = FAILURE_WINDOW.saturating_sub(since.elapsed());
                return Err(AuthError::Throttled {
                    retry_after: left.as_secs_f64().ceil().max(1.0) as u64,
                });
            }
            *count += 1;
            Ok(if *count == 1 {
                Standing::Good
            } else {
                Standing::Doubtful
            })
        })
    }

    /// Takes back an attempt of `client` that succeeded.
    fn forgive_attempt(&self, client: IpAddr) {
        let mut map = self.failures.lock().expect("auth failures");
        if let Some((count, _)) = map.get_mut(&client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&client);
            }
        }
    }

    /// Counts a failure of a credential that needed no hashing (a CI
    /// identity token), so an address spraying them is held to the same
    /// budget for credentials that do.
    fn note_failure(&self, client: IpAddr) {
        self.with_failures_of(client, |count, _| *count += 1);
    }

    /// Runs `f` on the count of `client` and the start of its window,
    /// both started afresh when the window has passed.
    fn with_failures_of<R>(&self, client: IpAddr, f: impl FnOnce(&mut u32, &Instant) -> R) -> R {
        let mut map = self.failures.lock().expect("auth failures");
        if map.len() > CACHE_MAX {
            map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let entry = map.entry(client).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        f(&mut entry.0, &entry.1)
    }
}

fn rules(owner: &str, rules: &[FileRule]) -> Result<Arc<[Rule]>, ConfigError> {
    rules
        .iter()
        .map(|r| Rule::parse(owner, r))
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::from)
}

/// Whether an address has failed or pending attempts in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Good,
    Doubtful,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    User = 1,
    Token = 2,
    Jwt = 3,
}

/// Three base64url parts separated by dots.
fn looks_like_jwt(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Reads `Basic` (user and password, or `token` and a token) and `Bearer`
/// (a token). A token names its principal: `sgt_<name>_<secret>`.
fn parse_authorization(header: &str) -> Result<(Kind, String, String), AuthError> {
    let invalid = |why: &str| AuthError::Invalid(why.to_string());
    let (scheme, value) = header
        .trim()
        .split_once(' ')
        .ok_or_else(|| invalid("the Authorization header is not `Basic ...` or `Bearer ...`"))?;
    let token = if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| invalid("the Basic credentials are not base64 of user:password"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| invalid("the Basic credentials are not user:password"))?;
        match user {
            "token" => password.to_string(),
            "oidc" => return Ok((Kind::Jwt, String::new(), password.to_string())),
            _ => return Ok((Kind::User, user.to_string(), password.to_string())),
        }
    } else if scheme.eq_ignore_ascii_case("bearer") {
        let value = value.trim();
        if looks_like_jwt(value) {
            return Ok((Kind::Jwt, String::new(), value.to_string()));
        }
        value.to_string()
    } else {
        return Err(invalid("the Authorization scheme is not Basic or Bearer"));
    };
    let (name, _) = token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.rsplit_once('_'))
        .ok_or_else(|| invalid("unknown token"))?;
    Ok((Kind::Token, name.to_string(), token))
}

/// What every token starts with, so it is recognisable in a leak scan.
pub const TOKEN_PREFIX: &str = "sgt_";

/// A user or token with no rules may do nothing: accepted (an operator
/// may keep one ready before granting it anything), but said at start-up,
/// since an entry pasted without its rules looks like a broken server.
fn warn_without_rules<T>(setting: &str, rules: &[T]) {
    if rules.is_empty() {
        tracing::warn!(
            setting,
            "this entry has no rules: every request it authenticates gets 403; give it rules: [{{keys, access}}]"
        );
    }
}

/// Hashes a password or token as argon2id in PHC form, with a fresh salt.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// An argon2id PHC string with the costliest parameters among `hashes`
/// (the defaults without any) and a random salt and output, so that no
/// secret verifies against it and verifying one costs what verifying
/// against the dearest configured hash does. Cost is memory times passes;
/// lanes run one after another here, so they add none.
fn unmatchable_hash<'a>(hashes: impl Iterator<Item = &'a str>) -> Result<String, String> {
    let strongest = hashes
        .filter_map(|h| {
            let parsed = PasswordHash::new(h).ok()?;
            argon2::Params::try_from(&parsed).ok()
        })
        .max_by_key(|p| {
            (
                u64::from(p.m_cost()) * u64::from(p.t_cost()),
                p.m_cost(),
                p.p_cost(),
            )
        })
        .unwrap_or_default();
    let mut salt = [0u8; 16];
    let mut output = vec![
        0u8;
        strongest
            .output_len()
            .unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN)
    ];
    getrandom::getrandom(&mut salt).map_err(|e| e.to_string())?;
    getrandom::getrandom(&mut output).map_err(|e| e.to_string())?;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        strongest.m_cost(),
        strongest.t_cost(),
        strongest.p_cost(),
        b64.encode(salt),
        b64.encode(output)
    ))
}

/// A fresh token for `name`: `sgt_<name>_<32 random bytes, base64url>`.
pub fn new_token(name: &str) -> Result<String, String> {
    check_name("name", name).map_err(|e| e.to_string())?;
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| e.to_string())?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Ok(format!("{TOKEN_PREFIX}{name}_{}", secret.replace('_', "-")))
}

#[cfg(test)]
mod tests {
    use super::file::{FileToken, FileUser};
    use super::*;

    fn glob(p: &str) -> Glob {
        Glob::parse("keys", p).unwrap()
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
        let token = new_token("ci").unwrap();
        let auth = Auth::new(&section(
            vec![FileUser {
                name: "alice".into(),
                password_hash: Some(hash_secret("s3cret").unwrap()),
                password: None,
                rules: vec![rule("team-a/**", "write"), rule("shared/*", "read")],
            }],
            vec![FileToken {
                name: "ci".into(),
                token_hash: Some(hash_secret(&token).unwrap()),
                token: None,
                expires: None,
                rules: vec![rule("**", "outputs")],
            }],
        ))
        .unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
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
            .authenticate(Some(&format!("Bearer {token}")), None, ip)
            .await
            .unwrap();
        assert_eq!(ci.name, "token:ci");
        assert_eq!(ci.access(&st("team-a/x")), Some(Access::Outputs));
        let ci2 = auth
            .authenticate(Some(&basic("token", &token)), None, ip)
            .await
            .unwrap();
        assert_eq!(ci2.name, "token:ci");
        assert!(
            auth.authenticate(Some("Bearer sgt_ci_nope"), None, ip)
                .await
                .is_err()
        );
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
        let user = |name: &str, hash: String| FileUser {
            name: name.into(),
            password_hash: Some(hash),
            password: None,
            rules: vec![],
        };
        let auth = Auth::new(&section(
            vec![
                user("light", phc(8192, 1, 4)),
                user("heavy", phc(65536, 3, 1)),
                user("default", hash_secret("pw").unwrap()),
            ],
            vec![FileToken {
                name: "wide".into(),
                token_hash: Some(phc(32768, 2, 8)),
                token: None,
                expires: None,
                rules: vec![],
            }],
        ))
        .unwrap();
        assert_eq!(costs(&auth.dummy_hash), (65536, 3, 1));
        // A token's hash counts as much as a user's.
        let auth = Auth::new(&section(
            vec![user("default", hash_secret("pw").unwrap())],
            vec![FileToken {
                name: "heavy".into(),
                token_hash: Some(phc(131072, 2, 1)),
                token: None,
                expires: None,
                rules: vec![],
            }],
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
        let e = two(protected("prod/**", None, &claims))
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .contains("auth.protected[prod/**].writers.issuer"),
            "{e}"
        );
        let e = two(protected("prod/**", Some("https://example.com"), &claims))
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .contains("auth.protected[prod/**].writers.issuer"),
            "{e}"
        );
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
}

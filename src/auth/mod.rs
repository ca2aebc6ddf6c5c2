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
//! threads at once, an address's first attempt on at most one of them and
//! its further attempts in the window on at most one, so that addresses
//! that logged in within the hour, taking either, never queue behind
//! guesses from however many addresses; and each address has a budget of
//! failed credentials that is spent before hashing, not after: a wrong
//! password is not a cheap way to burn CPU or to make others wait. Unknown
//! names are verified against a hash as costly as the costliest configured
//! one, so they take as long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::settings::ConfigError;
use crate::state::StateRef;
use credentials::{Kind, check_hash, check_name, parse_authorization, unmatchable_hash};
use file::{FileAuth, FileProtected, FileRule};

pub mod decide;
pub mod file;
mod oidc;

use oidc::{Oidc, claims_match, patterns};

mod access;
mod credentials;
#[cfg(test)]
mod tests;

pub use access::{Access, Glob, Identity, Rule};
pub use credentials::{TOKEN_PREFIX, hash_secret, new_token};

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
/// Credentials from one address (an IPv6 /64 counting as one) that may
/// fail, or be under verification, within [`FAILURE_WINDOW`]; past that the address gets 429 until the
/// window has passed, without any hashing.
const FAILURE_BUDGET: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Concurrent argon2 verifications.
const HASHERS: usize = 2;
/// Of [`HASHERS`], how many first attempts of addresses not trusted
/// ([`Standing::Good`]) may use at once, and how many further attempts
/// ([`Standing::Doubtful`]): so that one address's guesses cannot keep
/// newcomers waiting, and guesses spread over many addresses cannot keep a
/// trusted address waiting for more than two verifications.
const UNTRUSTED_HASHERS: usize = 1;
/// How long an address that logged in stays trusted ([`Standing::Trusted`]).
const TRUSTED_FOR: Duration = Duration::from_secs(3600);
/// Addresses remembered as trusted at most; only a login adds one.
const TRUSTED_MAX: usize = 10_000;

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
    /// Per address ([`budget_of`]): credentials failed or under
    /// verification, and since when they are counted.
    failures: Mutex<Failures>,
    hashers: tokio::sync::Semaphore,
    /// Held, besides a hasher, by first attempts of addresses not trusted.
    first_hashers: tokio::sync::Semaphore,
    /// Held, besides a hasher, by addresses not in good standing.
    doubtful_hashers: tokio::sync::Semaphore,
    /// Budgets ([`budget_of`]) that logged in, and when they last did.
    trusted: Mutex<HashMap<IpAddr, Instant>>,
    /// A PHC string that no secret verifies against, with the costliest
    /// parameters of the configured hashes; verified for unknown names so
    /// that they take as long as known ones.
    dummy_hash: String,
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
            failures: Mutex::new(Failures::default()),
            hashers: tokio::sync::Semaphore::new(HASHERS),
            first_hashers: tokio::sync::Semaphore::new(UNTRUSTED_HASHERS),
            doubtful_hashers: tokio::sync::Semaphore::new(UNTRUSTED_HASHERS),
            trusted: Mutex::new(HashMap::new()),
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
        // An expired credential is a failure like a wrong one: still
        // counted, and no reason to trust the address.
        if principal
            .expires
            .is_some_and(|e| e <= OffsetDateTime::now_utc())
        {
            return Err(AuthError::Invalid(format!(
                "{} has expired",
                principal.identity.name
            )));
        }
        self.forgive_attempt(client);
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
        let gate = match standing {
            Standing::Trusted => None,
            Standing::Good => Some(&self.first_hashers),
            Standing::Doubtful => Some(&self.doubtful_hashers),
        };
        let _gate = match gate {
            Some(gate) => match gate.acquire().await {
                Ok(permit) => Some(permit),
                Err(_) => return false,
            },
            None => None,
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
        let standing = self.with_failures_of(client, |count, since| {
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
        })?;
        let trusted = || {
            let trusted = self.trusted.lock().expect("auth trusted");
            trusted
                .get(&budget_of(client))
                .is_some_and(|at| at.elapsed() < TRUSTED_FOR)
        };
        Ok(match standing {
            Standing::Good if trusted() => Standing::Trusted,
            standing => standing,
        })
    }

    /// Takes back an attempt of `client` that succeeded, and trusts the
    /// address for [`TRUSTED_FOR`].
    fn forgive_attempt(&self, client: IpAddr) {
        {
            let mut trusted = self.trusted.lock().expect("auth trusted");
            if trusted.len() >= TRUSTED_MAX {
                trusted.retain(|_, at| at.elapsed() < TRUSTED_FOR);
                if trusted.len() >= TRUSTED_MAX {
                    trusted.clear();
                }
            }
            trusted.insert(budget_of(client), Instant::now());
        }
        let mut failures = self.failures.lock().expect("auth failures");
        let map = &mut failures.counts;
        let client = budget_of(client);
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

    /// Runs `f` on the count of `client`'s budget and the start of its
    /// window, both started afresh when the window has passed.
    fn with_failures_of<R>(&self, client: IpAddr, f: impl FnOnce(&mut u32, &Instant) -> R) -> R {
        let mut failures = self.failures.lock().expect("auth failures");
        let client = failures.budget(budget_of(client));
        let entry = failures.counts.entry(client).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        f(&mut entry.0, &entry.1)
    }
}

/// The budgets of failed attempts, by address.
#[derive(Default)]
struct Failures {
    counts: HashMap<IpAddr, (u32, Instant)>,
    /// When windows that have passed were last swept out.
    swept: Option<Instant>,
}

/// Addresses counted at most: beyond them, addresses not counted yet share
/// one budget ([`OVERFLOW`]) until a sweep makes room.
const FAILURES_MAX: usize = 100_000;
/// The budget shared by addresses beyond [`FAILURES_MAX`].
const OVERFLOW: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
/// The shortest time between two sweeps of the budgets.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Failures {
    /// The budget `client` counts against: its own, or the shared one when
    /// the map is full. Passed windows are swept out at most once a
    /// [`SWEEP_EVERY`] once the map is large, never on every attempt: a
    /// flood from many addresses made each request scan them all.
    fn budget(&mut self, client: IpAddr) -> IpAddr {
        let due = self.swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
        if self.counts.len() > CACHE_MAX && due {
            self.counts
                .retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            self.swept = Some(Instant::now());
        }
        if self.counts.len() >= FAILURES_MAX && !self.counts.contains_key(&client) {
            return OVERFLOW;
        }
        client
    }
}

/// The address whose budget an attempt counts against: an IPv4 address,
/// or the /64 an IPv6 address is in (one host holds a /64 at least, so
/// counting each address let a single client guess without limit).
fn budget_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
    }
}

fn rules(owner: &str, rules: &[FileRule]) -> Result<Arc<[Rule]>, ConfigError> {
    rules
        .iter()
        .map(|r| Rule::parse(owner, r))
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::from)
}

/// Whether an address has failed or pending attempts in its window, and
/// whether it logged in lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Nothing else failed or pending, and a login within [`TRUSTED_FOR`].
    Trusted,
    /// Nothing else failed or pending.
    Good,
    Doubtful,
}

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

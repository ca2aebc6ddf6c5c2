//! Credentials as they arrive and as they are kept: the `Authorization`
//! header read apart, argon2id hashes checked at start-up, and new hashes
//! and tokens made for `stategate` commands.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use base64::Engine;

use super::AuthError;
use crate::settings::ConfigError;

pub(super) fn check_hash(
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

pub(super) fn check_name(setting: &str, name: &str) -> Result<(), ConfigError> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    User = 1,
    Token = 2,
    Jwt = 3,
}

/// Three base64url parts separated by dots.
pub(super) fn looks_like_jwt(text: &str) -> bool {
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
pub(super) fn parse_authorization(header: &str) -> Result<(Kind, String, String), AuthError> {
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
        // A token named with dots has dotted parts too; an identity token
        // begins with the base64 of `{`, never with the token prefix.
        if !value.starts_with(TOKEN_PREFIX) && looks_like_jwt(value) {
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
pub(super) fn unmatchable_hash<'a>(
    hashes: impl Iterator<Item = &'a str>,
) -> Result<String, String> {
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

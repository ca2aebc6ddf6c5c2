//! The `auth:` section of the configuration file, as written: users,
//! tokens, client certificates, OIDC issuers and protected states.
//! [`crate::auth::Auth::new`] checks it and builds what requests are
//! matched against.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The `auth:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    #[serde(default)]
    pub users: Vec<FileUser>,
    #[serde(default)]
    pub tokens: Vec<FileToken>,
    /// Client certificates (with `tls.client_ca`) by subject CN.
    #[serde(default)]
    pub certificates: Vec<FileCertificate>,
    #[serde(default)]
    pub oidc: Vec<FileIssuer>,
    #[serde(default)]
    pub protected: Vec<FileProtected>,
}

/// One OIDC issuer of `auth.oidc` (GitHub Actions, GitLab CI, ...).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIssuer {
    pub issuer: String,
    pub audience: Option<String>,
    /// The keys' address, for an issuer without a discovery document.
    pub jwks_uri: Option<String>,
    /// How long fetched keys are used before they are refreshed (`1h`).
    pub keys_max_age: Option<String>,
    #[serde(default)]
    pub rules: Vec<FileClaimRule>,
}

/// A grant to the tokens whose claims match; `keys` may hold `{claim}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClaimRule {
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    pub keys: String,
    pub access: String,
    #[serde(default)]
    pub workspaces: Vec<String>,
}

/// One entry of `auth.protected`: states only matching CI identities change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProtected {
    pub keys: String,
    pub writers: FileWriters,
}

/// Who may change a protected state: CI identities of one issuer whose
/// claims match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWriters {
    /// The issuer whose tokens may carry the claims; required when
    /// `auth.oidc` lists more than one, the only one otherwise.
    pub issuer: Option<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// One user of `auth.users`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUser {
    pub name: String,
    pub password_hash: Option<String>,
    /// Never accepted; present so that a plain password is named and refused.
    pub password: Option<String>,
    #[serde(default)]
    pub rules: Vec<FileRule>,
}

/// One client certificate subject of `auth.certificates`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    pub cn: String,
    #[serde(default)]
    pub rules: Vec<FileRule>,
}

/// One token of `auth.tokens`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileToken {
    pub name: String,
    pub token_hash: Option<String>,
    /// Never accepted; present so that a plain token is named and refused.
    pub token: Option<String>,
    /// RFC 3339 time after which the token is refused.
    pub expires: Option<String>,
    #[serde(default)]
    pub rules: Vec<FileRule>,
}

/// One permission: a level on key patterns (and workspace patterns).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    pub keys: String,
    pub access: String,
    #[serde(default)]
    pub workspaces: Vec<String>,
}

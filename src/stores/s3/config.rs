//! The S3 store's settings, validated into [`S3Config`].

use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::types::ObjectCannedAcl;

use crate::settings::{ConfigError, Endpoint, StoreSettings, bucket_prefix};

/// The longest object name S3 accepts, in bytes, the prefix included.
pub const MAX_OBJECT_NAME_BYTES: usize = 1024;

/// only whether credentials were given.
#[derive(Clone)]
pub struct S3Config {
    /// `None` for AWS S3; otherwise `http(s)://host[:port]` without a trailing `/`.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// `None` leaves credentials to the standard AWS chain (environment,
    /// profile, web identity, container and instance metadata).
    pub credentials: Option<Credentials>,
    /// Send `x-amz-server-side-encryption: AES256` with every write.
    pub encrypt: bool,
    /// Canned ACL sent with every write.
    pub acl: Option<ObjectCannedAcl>,
    /// Empty, or ends with `/`; prepended to every store key.
    pub prefix: String,
    /// `<endpoint>/<bucket>/<key>` instead of `<bucket>.<endpoint>/<key>`.
    pub path_style: bool,
    /// Limit for one operation, every attempt and the transfer included.
    pub timeout: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field(
                "credentials",
                &match &self.credentials {
                    Some(c) => format!("access key {} (secret redacted)", c.access_key_id()),
                    None => "AWS credential chain".to_string(),
                },
            )
            .field("encrypt", &self.encrypt)
            .field("acl", &self.acl.as_ref().map(ObjectCannedAcl::as_str))
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl S3Config {
    /// Validates the merged settings; every mistake names its setting.
    pub fn from_settings(settings: &StoreSettings) -> Result<Self, ConfigError> {
        let endpoint = settings
            .get("endpoint")
            .map(|e| Endpoint::parse(e).map(|e| e.url()))
            .transpose()?;
        let bucket = settings.require("bucket")?.to_string();
        if bucket.contains('/') || bucket.trim() != bucket {
            return Err(ConfigError::invalid(
                "bucket",
                format!("`{bucket}` is not a bucket name (put key prefixes in `prefix`)"),
            ));
        }
        let region = settings.require("region")?.to_string();

        let key_id = settings.credential("accessKeyID")?;
        let secret = settings.credential("accessKeySecret")?;
        let token = settings.credential("session_token")?;
        let credentials = match (key_id, secret) {
            (Some(id), Some(secret)) => Some(Credentials::new(
                id,
                secret,
                token,
                None,
                "stategate settings",
            )),
            (None, None) if token.is_some() => {
                return Err(ConfigError::invalid(
                    "session_token",
                    "is only used together with accessKeyID and accessKeySecret",
                ));
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    setting: "accessKeySecret".into(),
                    help: "accessKeyID is set, so its secret is needed too".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    setting: "accessKeyID".into(),
                    help: "accessKeySecret is set, so its key id is needed too".into(),
                });
            }
        };

        let acl = settings.get("acl").map(parse_acl).transpose()?;
        let prefix = settings
            .get("prefix")
            .map(|p| bucket_prefix(p, "S3", MAX_OBJECT_NAME_BYTES))
            .transpose()?;
        let path_style = match settings.get("force_path_style") {
            Some(_) => settings.bool("force_path_style")?,
            None => endpoint.is_some(),
        };
        let timeout = settings.duration("timeout")?;
        Ok(S3Config {
            endpoint,
            bucket,
            region,
            credentials,
            encrypt: settings.bool("encrypt")?,
            acl,
            prefix: prefix.unwrap_or_default(),
            path_style,
            timeout,
        })
    }
}

impl S3Config {
    /// The longest store key that fits in an object name below `prefix`.
    pub fn max_key_bytes(&self) -> usize {
        MAX_OBJECT_NAME_BYTES.saturating_sub(self.prefix.len())
    }
}

/// A canned ACL S3 knows; anything else would be refused at the first write.
fn parse_acl(raw: &str) -> Result<ObjectCannedAcl, ConfigError> {
    let known = ObjectCannedAcl::values();
    if known.contains(&raw) {
        Ok(ObjectCannedAcl::from(raw))
    } else {
        Err(ConfigError::invalid(
            "acl",
            format!("`{raw}` is not a canned ACL (one of: {})", known.join(", ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::MAX_BUCKET_PREFIX_BYTES;

    fn config(pairs: &[(&'static str, &str)]) -> Result<S3Config, ConfigError> {
        S3Config::from_settings(&StoreSettings::from_table(
            "s3",
            super::super::SETTINGS,
            pairs,
        )?)
    }

    #[test]
    fn bucket_is_required() {
        let err = config(&[]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Missing { setting, .. } if setting == "bucket"),
            "{err}"
        );
    }

    #[test]
    fn endpoint_turns_on_path_style_unless_told_otherwise() {
        let c = config(&[("bucket", "b"), ("endpoint", "http://127.0.0.1:9000/")]).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(c.path_style);
        let c = config(&[
            ("bucket", "b"),
            ("endpoint", "s3.example.com"),
            ("force_path_style", "false"),
        ])
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://s3.example.com"));
        assert!(!c.path_style);
        let c = config(&[("bucket", "b")]).unwrap();
        assert!(c.endpoint.is_none() && !c.path_style);
        assert_eq!(c.region, "us-east-1");
    }

    #[test]
    fn bad_endpoint_is_named() {
        let err = config(&[("bucket", "b"), ("endpoint", "ftp://x/y")]).unwrap_err();
        assert!(err.to_string().starts_with("setting `endpoint`"), "{err}");
    }

    #[test]
    fn invalid_acl_is_refused_naming_acl() {
        let err = config(&[("bucket", "b"), ("acl", "everyone")]).unwrap_err();
        assert!(err.to_string().starts_with("setting `acl`"), "{err}");
        assert!(
            err.to_string().contains("bucket-owner-full-control"),
            "{err}"
        );
        let c = config(&[("bucket", "b"), ("acl", "bucket-owner-full-control")]).unwrap();
        assert_eq!(c.acl, Some(ObjectCannedAcl::BucketOwnerFullControl));
    }

    #[test]
    fn prefix_gets_one_trailing_slash_and_no_traversal() {
        assert_eq!(
            config(&[("bucket", "b"), ("prefix", "/team/states/")])
                .unwrap()
                .prefix,
            "team/states/"
        );
        assert_eq!(config(&[("bucket", "b")]).unwrap().prefix, "");
        for bad in ["a//b", "../x", "a/./b"] {
            let err = config(&[("bucket", "b"), ("prefix", bad)]).unwrap_err();
            assert!(
                err.to_string().starts_with("setting `prefix`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_prefix_leaving_too_little_room_is_refused() {
        let longest = format!("{}/", "p".repeat(MAX_BUCKET_PREFIX_BYTES - 1));
        let c = config(&[("bucket", "b"), ("prefix", &longest)]).unwrap();
        assert_eq!(c.max_key_bytes(), 1024 - MAX_BUCKET_PREFIX_BYTES);
        let over = format!("{}/", "p".repeat(MAX_BUCKET_PREFIX_BYTES));
        let err = config(&[("bucket", "b"), ("prefix", &over)]).unwrap_err();
        assert!(err.to_string().starts_with("setting `prefix`"), "{err}");
        assert!(err.to_string().contains("at most 256"), "{err}");
    }

    #[test]
    fn half_a_key_pair_is_refused() {
        let err = config(&[("bucket", "b"), ("accessKeyID", "AKIA")]).unwrap_err();
        assert!(err.to_string().contains("accessKeySecret"), "{err}");
        let err = config(&[("bucket", "b"), ("session_token", "t")]).unwrap_err();
        assert!(err.to_string().contains("session_token"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = config(&[
            ("bucket", "b"),
            ("accessKeyID", "AKIAEXAMPLE"),
            ("accessKeySecret", "hunter2-secret"),
            ("session_token", "token-secret"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("token-secret"),
            "{shown}"
        );
        assert!(shown.contains("AKIAEXAMPLE"), "{shown}");
    }

    #[test]
    fn timeout_is_a_positive_duration() {
        assert_eq!(
            config(&[("bucket", "b"), ("timeout", "5")])
                .unwrap()
                .timeout,
            Duration::from_secs(5)
        );
        assert_eq!(
            config(&[("bucket", "b"), ("timeout", "60s")])
                .unwrap()
                .timeout,
            Duration::from_secs(60)
        );
        let err = config(&[("bucket", "b"), ("timeout", "0")]).unwrap_err();
        assert!(err.to_string().starts_with("setting `timeout`"), "{err}");
    }
}

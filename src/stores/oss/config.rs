//! The OSS store's settings, validated into [`OssConfig`].

use std::fmt;
use std::time::Duration;

use ali_oss_rs::object_common::ObjectAcl;

use crate::settings::{ConfigError, Endpoint, StoreSettings, bucket_prefix};

/// The longest object name OSS accepts, in bytes, the prefix included.
pub const MAX_OBJECT_NAME_BYTES: usize = 1023;

/// The longest store key that fits in an object name below `prefix`.
pub fn max_key_bytes(prefix: &str) -> usize {
    MAX_OBJECT_NAME_BYTES.saturating_sub(prefix.len())
}

/// Region used when neither `region` nor a standard `endpoint` names one,
/// as in Terraform's oss backend.
const DEFAULT_REGION: &str = "cn-beijing";

/// The validated settings of an OSS store. Secrets are hidden from `Debug`.
pub struct OssConfig {
    pub bucket: String,
    /// `""` or a prefix ending in `/`.
    pub prefix: String,
    pub region: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Host (and port) without scheme; buckets are its subdomains.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub security_token: Option<String>,
    pub encrypt: bool,
    pub acl: Option<ObjectAcl>,
    pub allow_unsafe_locks: bool,
    /// Limit for one store operation, every request and the transfer included.
    pub timeout: Duration,
}

impl fmt::Debug for OssConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OssConfig")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field(
                "endpoint",
                &format_args!("{}://{}", self.scheme, self.endpoint),
            )
            .field("access_key", &"<redacted>")
            .field("secret_key", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .field("encrypt", &self.encrypt)
            .field("acl", &self.acl.map(|a| a.as_str().to_string()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl OssConfig {
    /// Validates the merged settings; every mistake names its setting.
    pub fn from_settings(settings: &StoreSettings) -> Result<Self, ConfigError> {
        let bucket = settings.require("bucket")?.to_string();
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !bucket.starts_with('-')
            && !bucket.ends_with('-');
        if !valid_bucket {
            return Err(ConfigError::invalid(
                "bucket",
                format!(
                    "`{bucket}` is not an OSS bucket name (3-63 lowercase letters, digits and -)"
                ),
            ));
        }

        // The same rules as every bucket store: `..` would be resolved by
        // the HTTP client and break the signature.
        let prefix = settings
            .get("prefix")
            .map(|p| bucket_prefix(p, "OSS", MAX_OBJECT_NAME_BYTES))
            .transpose()?
            .unwrap_or_default();
        // The OSS client puts object names into the request's URL as they
        // are: these would end its path or escape, and every request
        // would fail as a signature mismatch blamed on `secret_key`.
        if let Some(c) = prefix.chars().find(|c| matches!(c, '#' | '?' | '%')) {
            return Err(ConfigError::invalid(
                "prefix",
                format!("has `{c}`, which OSS object names cannot carry through its client"),
            ));
        }

        let (scheme, endpoint) = match settings.get("endpoint") {
            None => (
                "https".to_string(),
                format!(
                    "oss-{}.aliyuncs.com",
                    settings.get("region").unwrap_or(DEFAULT_REGION)
                ),
            ),
            Some(e) => {
                let e = Endpoint::parse(e)?;
                (e.scheme, e.host)
            }
        };
        // V4 signatures name the region, so it must match the endpoint's.
        // Terraform ignores `region` when `endpoint` is set: a standard
        // endpoint names its region; a custom one needs `region`.
        let region = region_of_endpoint(&endpoint)
            .or_else(|| settings.get("region").map(str::to_string))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());

        let access_key = settings.require_credential("access_key")?;
        let secret_key = settings.require_credential("secret_key")?;
        let security_token = settings.credential("security_token")?;

        let acl = match settings.get("acl") {
            None => None,
            Some("private") => Some(ObjectAcl::Private),
            Some("public-read") => Some(ObjectAcl::PublicRead),
            Some("public-read-write") => Some(ObjectAcl::PublicReadWrite),
            Some("default") => Some(ObjectAcl::Default),
            Some(other) => {
                return Err(ConfigError::invalid(
                    "acl",
                    format!(
                        "`{other}` is not one of private, public-read, public-read-write, default"
                    ),
                ));
            }
        };

        let timeout = settings.duration("timeout")?;

        Ok(OssConfig {
            bucket,
            prefix,
            region,
            scheme,
            endpoint,
            access_key,
            secret_key,
            security_token,
            encrypt: settings.bool("encrypt")?,
            acl,
            allow_unsafe_locks: settings.bool("allow_unsafe_locks")?,
            timeout,
        })
    }
}

/// `cn-hangzhou` from `oss-cn-hangzhou.aliyuncs.com` or
/// `oss-cn-hangzhou-internal.aliyuncs.com`; `None` for custom endpoints.
fn region_of_endpoint(endpoint: &str) -> Option<String> {
    let host = endpoint.split(':').next()?;
    let first = host.strip_suffix(".aliyuncs.com")?.strip_prefix("oss-")?;
    if first.contains('.') || first == "accelerate" || first.starts_with("accelerate-") {
        return None;
    }
    Some(first.strip_suffix("-internal").unwrap_or(first).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::MAX_BUCKET_PREFIX_BYTES;

    fn settings(pairs: &[(&'static str, &str)]) -> StoreSettings {
        let mut all = vec![
            ("bucket", "states"),
            ("access_key", "AKID"),
            ("secret_key", "s3cr3t-value"),
        ];
        all.extend_from_slice(pairs);
        StoreSettings::from_table("oss", super::super::SETTINGS, &all).unwrap()
    }

    /// The config of the base settings with `pairs` added.
    fn config(pairs: &[(&'static str, &str)]) -> OssConfig {
        OssConfig::from_settings(&settings(pairs)).unwrap()
    }

    #[test]
    fn defaults_follow_terraform() {
        let cfg = config(&[]);
        assert_eq!(cfg.region, "cn-beijing");
        assert_eq!(
            (cfg.scheme.as_str(), cfg.endpoint.as_str()),
            ("https", "oss-cn-beijing.aliyuncs.com")
        );
        assert_eq!(cfg.prefix, "");
        assert!(!cfg.encrypt);
        assert!(cfg.acl.is_none());
    }

    #[test]
    fn a_prefix_leaving_too_little_room_is_refused() {
        let longest = format!("{}/", "p".repeat(MAX_BUCKET_PREFIX_BYTES - 1));
        let cfg = config(&[("prefix", &longest)]);
        assert_eq!(max_key_bytes(&cfg.prefix), 1023 - MAX_BUCKET_PREFIX_BYTES);
        let over = format!("{}/", "p".repeat(MAX_BUCKET_PREFIX_BYTES));
        let err = OssConfig::from_settings(&settings(&[("prefix", &over)])).expect_err("refused");
        assert!(err.to_string().starts_with("setting `prefix`"), "{err}");
        assert!(err.to_string().contains("at most 256"), "{err}");
    }

    #[test]
    fn a_prefix_the_client_cannot_put_in_a_url_is_refused() {
        for prefix in ["team#x", "team?x", "a%2F..", "ok/b%c"] {
            let err = OssConfig::from_settings(&settings(&[("prefix", prefix)]))
                .expect_err(prefix)
                .to_string();
            assert!(err.starts_with("setting `prefix`"), "{err}");
        }
        assert_eq!(config(&[("prefix", "te am/x")]).prefix, "te am/x/");
    }

    #[test]
    fn endpoint_and_region_follow_each_other() {
        for (pairs, want) in [
            // The region builds the default endpoint.
            (
                &[("region", "cn-hangzhou")][..],
                ("https", "oss-cn-hangzhou.aliyuncs.com", "cn-hangzhou"),
            ),
            // A standard endpoint names the region.
            (
                &[
                    ("region", "cn-beijing"),
                    ("endpoint", "oss-cn-shanghai-internal.aliyuncs.com"),
                ],
                (
                    "https",
                    "oss-cn-shanghai-internal.aliyuncs.com",
                    "cn-shanghai",
                ),
            ),
            // A custom endpoint keeps its scheme, and the region given.
            (
                &[
                    ("region", "ap-southeast-1"),
                    ("endpoint", "http://oss.internal.example:8080/"),
                ],
                ("http", "oss.internal.example:8080", "ap-southeast-1"),
            ),
        ] {
            let cfg = config(pairs);
            let got = (
                cfg.scheme.as_str(),
                cfg.endpoint.as_str(),
                cfg.region.as_str(),
            );
            assert_eq!(got, want, "{pairs:?}");
        }
    }

    #[test]
    fn prefix_is_normalised() {
        let cfg = config(&[("prefix", "/team/a/")]);
        assert_eq!(cfg.prefix, "team/a/");
        for bad in ["a//b", "team-a/..", "./x"] {
            let err = OssConfig::from_settings(&settings(&[("prefix", bad)])).unwrap_err();
            assert!(
                err.to_string().starts_with("setting `prefix`"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn acl_values_are_checked() {
        for (value, acl) in [
            ("private", ObjectAcl::Private),
            ("public-read", ObjectAcl::PublicRead),
            ("public-read-write", ObjectAcl::PublicReadWrite),
            ("default", ObjectAcl::Default),
        ] {
            let cfg = config(&[("acl", value)]);
            assert_eq!(cfg.acl, Some(acl));
        }
        let err =
            OssConfig::from_settings(&settings(&[("acl", "authenticated-read")])).unwrap_err();
        assert!(err.to_string().starts_with("setting `acl`"), "{err}");
    }

    #[test]
    fn credentials_and_bucket_are_required() {
        let err = OssConfig::from_settings(&StoreSettings::from_pairs("oss", &[])).unwrap_err();
        assert!(err.to_string().contains("`bucket`"), "{err}");
        let err = OssConfig::from_settings(&StoreSettings::from_pairs("oss", &[("bucket", "abc")]))
            .unwrap_err();
        assert!(err.to_string().contains("`access_key`"), "{err}");
        let err = OssConfig::from_settings(&settings(&[("bucket", "Bad_Bucket")])).unwrap_err();
        assert!(err.to_string().contains("`bucket`"), "{err}");
    }

    #[test]
    fn secrets_are_hidden_from_debug() {
        let cfg = config(&[("security_token", "tok-value")]);
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("tok-value") && !shown.contains("AKID"),
            "{shown}"
        );
        assert!(shown.contains("states"), "{shown}");
    }

    #[test]
    fn region_of_standard_endpoints_only() {
        assert_eq!(
            region_of_endpoint("oss-cn-hangzhou.aliyuncs.com").as_deref(),
            Some("cn-hangzhou")
        );
        assert_eq!(
            region_of_endpoint("oss-us-west-1-internal.aliyuncs.com").as_deref(),
            Some("us-west-1")
        );
        assert_eq!(region_of_endpoint("oss-accelerate.aliyuncs.com"), None);
        assert_eq!(region_of_endpoint("127.0.0.1:9000"), None);
        assert_eq!(region_of_endpoint("oss.example.com"), None);
    }
}

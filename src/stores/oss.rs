//! `storageType: oss`: objects in an Alibaba Cloud OSS bucket, under an
//! optional key prefix, through the `ali-oss-rs` SDK (V4 signing, STS
//! tokens, typed put options, structured error codes).
//!
//! Settings follow Terraform's own `oss` backend (bucket, prefix, region,
//! endpoint, access_key, secret_key, security_token, encrypt, acl) plus
//! Kusion's `accessKeyID`/`accessKeySecret`, so a state written by either
//! can be served.
//!
//! What OSS can and cannot do decides the shape of this store:
//!
//! - PutObject has no `If-None-Match`/`If-Match` (400 NotImplemented). The
//!   only atomic create is `x-oss-forbid-overwrite: true`, answered with
//!   409 `FileAlreadyExists` when the object exists, so
//!   [`Condition::IfAbsent`] (every lock) maps to it.
//! - OSS ignores `x-oss-forbid-overwrite` on buckets whose versioning is
//!   Enabled or Suspended. [`OssStore::open`] therefore reads the bucket's
//!   versioning first and refuses such a bucket unless
//!   `allow_unsafe_locks: true`; the start-up probe then proves on the real
//!   bucket that a second create is refused.
//! - There is no compare-and-swap. [`Condition::IfMatch`] is a HEAD, a
//!   comparison of ETags, then the put or delete: another writer could slip
//!   in between. [`Capabilities::compare_and_swap`] says so, and the state
//!   layer runs every such step under its write lease
//!   ([`crate::state::lease`]), built on the atomic create above.
//! - HEAD answers a 404 without a body for a missing object and for a
//!   missing bucket alike, so before a HEAD 404 means "no such object" the
//!   bucket must have been seen recently ([`super::BucketSeen`]).
//!
//! A version is the object's ETag (the MD5 of the body for a simple put).
//! A read is a HEAD followed by a GET with `If-Match` on that ETag, so the
//! bytes and the version returned always belong together.
//!
//! Every store operation runs within the `timeout` setting (its requests
//! and the transfer), so an unreachable or silent endpoint answers 503
//! instead of hanging. Secrets are kept inside the SDK client
//! (which has no `Debug`), never formatted into messages or logs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ali_oss_rs::bucket::BucketOperations;
use ali_oss_rs::bucket_common::ListObjectsOptionsBuilder;
use ali_oss_rs::common::ServerSideEncryptionAlgorithm;
use ali_oss_rs::error::{Error as OssError, ErrorResponse};
use ali_oss_rs::object::ObjectOperations;
use ali_oss_rs::object_common::{
    GetObjectOptionsBuilder, ObjectAcl, PutObjectOptionsBuilder, PutObjectResult,
};
use ali_oss_rs::request::{OssRequest, RequestMethod};
use ali_oss_rs::{Client, ClientBuilder};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{
    Backend, BucketSeen, Capabilities, Condition, Entry, Object, Store, StoreError, Version,
    network_cause, normalise_prefix,
};
use crate::config::{ConfigError, Setting, StoreSettings};

/// Registration of the OSS store.
pub static BACKEND: Backend = Backend {
    name: "oss",
    summary: "an Alibaba Cloud OSS bucket (locks with x-oss-forbid-overwrite)",
    settings: SETTINGS,
    open: |settings| {
        Box::pin(async move { Ok(Arc::new(OssStore::open(&settings).await?) as Arc<dyn Store>) })
    },
};

const SETTINGS: &[Setting] = &[
    Setting {
        name: "bucket",
        aliases: &[],
        env: &["STATEGATE_OSS_BUCKET"],
        secret: false,
        default: None,
        help: "(required) the OSS bucket that holds the states",
    },
    Setting {
        name: "prefix",
        aliases: &[],
        env: &["STATEGATE_OSS_PREFIX"],
        secret: false,
        default: None,
        help: "key prefix inside the bucket, e.g. `terraform/` (default: none)",
    },
    Setting {
        name: "region",
        aliases: &[],
        env: &["ALICLOUD_REGION"],
        secret: false,
        default: None,
        help: "region of the bucket (default cn-beijing); with a standard `endpoint` the region is taken from it",
    },
    Setting {
        name: "endpoint",
        aliases: &[],
        env: &["ALICLOUD_OSS_ENDPOINT"],
        secret: false,
        default: None,
        help: "custom OSS endpoint, e.g. oss-cn-hangzhou-internal.aliyuncs.com or http://host:port (default https://oss-<region>.aliyuncs.com)",
    },
    Setting {
        name: "access_key",
        aliases: &["accessKeyID"],
        env: &["ALICLOUD_ACCESS_KEY"],
        secret: true,
        default: None,
        help: "(required) Alibaba Cloud access key ID",
    },
    Setting {
        name: "secret_key",
        aliases: &["accessKeySecret"],
        env: &["ALICLOUD_SECRET_KEY"],
        secret: true,
        default: None,
        help: "(required) Alibaba Cloud access key secret",
    },
    Setting {
        name: "security_token",
        aliases: &["securityToken"],
        env: &["ALICLOUD_SECURITY_TOKEN"],
        secret: true,
        default: None,
        help: "STS security token, for temporary credentials",
    },
    Setting {
        name: "encrypt",
        aliases: &[],
        env: &[],
        secret: false,
        default: Some("false"),
        help: "true: every object is written with x-oss-server-side-encryption: AES256",
    },
    Setting {
        name: "acl",
        aliases: &[],
        env: &[],
        secret: false,
        default: None,
        help: "object ACL sent on every write: private, public-read, public-read-write or default (default: none sent, the bucket's ACL applies)",
    },
    Setting {
        name: "timeout",
        aliases: &[],
        env: &["STATEGATE_OSS_TIMEOUT"],
        secret: false,
        default: Some("60"),
        help: "seconds one operation on OSS may take, the transfer included, before it answers 503",
    },
];

/// Region used when neither `region` nor a standard `endpoint` names one,
/// as in Terraform's oss backend.
const DEFAULT_REGION: &str = "cn-beijing";
/// How long to wait for a TCP/TLS connection to the endpoint (less when
/// `timeout` is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest page OSS returns from ListObjectsV2.
const LIST_PAGE: u32 = 1000;
/// How often a read retries when the object changes between its HEAD and
/// its GET.
const READ_RETRIES: usize = 5;

/// The validated settings of an OSS store. Secrets are hidden from `Debug`.
struct OssConfig {
    bucket: String,
    /// `""` or a prefix ending in `/`.
    prefix: String,
    region: String,
    /// `http` or `https`.
    scheme: String,
    /// Host (and port) without scheme; buckets are its subdomains.
    endpoint: String,
    access_key: String,
    secret_key: String,
    security_token: Option<String>,
    encrypt: bool,
    acl: Option<ObjectAcl>,
    allow_unsafe_locks: bool,
    /// Limit for one store operation, every request and the transfer included.
    timeout: Duration,
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
    fn from_settings(settings: &StoreSettings) -> Result<Self, ConfigError> {
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
        // the HTTP client and break the signature (issue 16).
        let prefix = settings
            .get("prefix")
            .map(normalise_prefix)
            .transpose()?
            .unwrap_or_default();

        let (scheme, endpoint) = match settings.get("endpoint") {
            None => (
                "https".to_string(),
                format!(
                    "oss-{}.aliyuncs.com",
                    settings.get("region").unwrap_or(DEFAULT_REGION)
                ),
            ),
            Some(e) => {
                let (scheme, rest) = match e.split_once("://") {
                    Some(("http", rest)) => ("http", rest),
                    Some(("https", rest)) => ("https", rest),
                    Some((other, _)) => {
                        return Err(ConfigError::invalid(
                            "endpoint",
                            format!("scheme `{other}` is not http or https"),
                        ));
                    }
                    None => ("https", e),
                };
                let host = rest.trim_end_matches('/');
                if host.is_empty() || host.contains('/') {
                    return Err(ConfigError::invalid(
                        "endpoint",
                        format!("`{e}` is not a host name like oss-cn-hangzhou.aliyuncs.com"),
                    ));
                }
                (scheme.to_string(), host.to_string())
            }
        };
        // V4 signatures name the region, so it must match the endpoint's.
        // Terraform ignores `region` when `endpoint` is set: a standard
        // endpoint names its region; a custom one needs `region`.
        let region = region_of_endpoint(&endpoint)
            .or_else(|| settings.get("region").map(str::to_string))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());

        let access_key = settings.require("access_key")?.to_string();
        let secret_key = settings.require("secret_key")?.to_string();
        let security_token = settings.get("security_token").map(str::to_string);

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

        let timeout = settings.get("timeout").unwrap_or("60");
        let timeout = match timeout.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Duration::from_secs(secs),
            _ => {
                return Err(ConfigError::invalid(
                    "timeout",
                    format!("`{timeout}` is not a whole number of seconds greater than 0"),
                ));
            }
        };

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

/// An OSS bucket (under a prefix) as a store.
pub struct OssStore {
    client: Client,
    /// The same HTTP client the SDK uses, for the one request it lacks
    /// (GetBucketVersioning), sent pre-signed by the SDK.
    http: reqwest::Client,
    bucket: String,
    prefix: String,
    /// `scheme://endpoint`, for messages.
    endpoint_url: String,
    region: String,
    encrypt: bool,
    acl: Option<ObjectAcl>,
    /// False only on a versioned bucket opened with `allow_unsafe_locks`.
    atomic_create: bool,
    /// Limit for one store operation (the `timeout` setting).
    timeout: Duration,
    /// When the bucket was last seen to exist: HEAD answers a bodiless 404
    /// for a missing object and a missing bucket alike.
    bucket_seen: BucketSeen,
}

impl fmt::Debug for OssStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What the bucket's versioning status is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Versioning {
    /// Never enabled: `x-oss-forbid-overwrite` works.
    Off,
    /// `Enabled` or `Suspended`: OSS ignores `x-oss-forbid-overwrite`.
    On(String),
}

impl OssStore {
    /// Opens the bucket named by the settings: checks the settings, reads the
    /// bucket's versioning status (which also proves the endpoint, the
    /// credentials and the bucket), and refuses a versioned bucket unless
    /// `allow_unsafe_locks` is set.
    pub async fn open(settings: &StoreSettings) -> Result<Self, ConfigError> {
        let cfg = OssConfig::from_settings(settings)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(cfg.timeout))
            .read_timeout(cfg.timeout)
            .build()
            .map_err(|e| ConfigError::invalid("endpoint", format!("HTTP client: {e}")))?;
        let mut builder = ClientBuilder::new(
            &cfg.access_key,
            &cfg.secret_key,
            format!("{}://{}", cfg.scheme, cfg.endpoint),
        )
        .region(&cfg.region)
        .scheme(&cfg.scheme)
        .client(http.clone());
        if let Some(token) = &cfg.security_token {
            builder = builder.sts_token(token);
        }
        let client = builder
            .build()
            .map_err(|e| ConfigError::invalid("endpoint", e))?;
        let mut store = OssStore {
            client,
            http,
            endpoint_url: format!("{}://{}", cfg.scheme, cfg.endpoint),
            bucket: cfg.bucket,
            prefix: cfg.prefix,
            region: cfg.region,
            encrypt: cfg.encrypt,
            acl: cfg.acl,
            atomic_create: true,
            timeout: cfg.timeout,
            bucket_seen: BucketSeen::default(),
        };

        let context = "reading the bucket's versioning";
        let versioning = store
            .bounded(
                context,
                async {
                    store.versioning().await.map_err(|(setting, e)| {
                        let reason = match e {
                            StoreError::Unavailable(reason) => reason,
                            other => other.to_string(),
                        };
                        ConfigError::invalid(setting, reason)
                    })
                },
                |reason| ConfigError::invalid("endpoint", reason),
            )
            .await?;
        if let Versioning::On(status) = versioning {
            if !cfg.allow_unsafe_locks {
                return Err(ConfigError::invalid(
                    "bucket",
                    format!(
                        "versioning is {status} on bucket `{}`, and OSS ignores x-oss-forbid-overwrite on \
                         versioned buckets, so two clients could both get a lock: locks would be unsafe. \
                         Use a bucket that never had versioning, or set allow_unsafe_locks: true to start anyway",
                        store.bucket
                    ),
                ));
            }
            tracing::warn!(
                bucket = %store.bucket,
                versioning = %status,
                "allow_unsafe_locks is set: OSS ignores x-oss-forbid-overwrite on this versioned bucket, locks are not safe"
            );
            store.atomic_create = false;
        }
        Ok(store)
    }

    /// Reads the bucket's versioning status. `ali-oss-rs` has no
    /// GetBucketVersioning (and its bucket info leaves versioning empty), so
    /// the SDK pre-signs the raw request and the shared HTTP client sends it.
    /// On failure, also names the setting most likely at fault.
    async fn versioning(&self) -> Result<Versioning, (&'static str, StoreError)> {
        let request = OssRequest::new()
            .method(RequestMethod::Get)
            .bucket(&self.bucket)
            .add_query("versioning", "");
        let signed = self.client.presign_raw_request(request);
        let mut builder = self.http.get(&signed.url);
        for (name, value) in &signed.headers {
            builder = builder.header(name, value);
        }
        let context = "reading the bucket's versioning";
        let failed = |e: OssError| {
            let setting = setting_at_fault(&e);
            (setting, self.error(context, e))
        };
        let response = builder
            .send()
            .await
            .map_err(|e| failed(OssError::ReqwestError(e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| failed(OssError::ReqwestError(e)))?;
        if !status.is_success() {
            return Err(failed(match ErrorResponse::from_xml(&text) {
                Ok(body) if !body.code.is_empty() => OssError::ApiError(Box::new(body)),
                _ => OssError::StatusError(status),
            }));
        }
        Ok(match xml_text(&text, "Status") {
            Some(s @ ("Enabled" | "Suspended")) => Versioning::On(s.to_string()),
            _ => Versioning::Off,
        })
    }

    /// Runs one store operation within the `timeout` budget: OSS requests
    /// are not retried by the SDK, but one operation can be several
    /// requests (HEAD then GET, list pages), and a server that accepts the
    /// connection and never answers must still give a prompt 503.
    async fn bounded<T, E>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, E>>,
        timed_out: impl FnOnce(String) -> E,
    ) -> Result<T, E> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => result,
            Err(_) => {
                let reason = format!(
                    "{what}: OSS at {} did not answer within {}s",
                    self.endpoint_url,
                    self.timeout.as_secs()
                );
                tracing::warn!(store = "oss", "{reason}");
                Err(timed_out(reason))
            }
        }
    }

    /// Before a bodiless 404 from HEAD is taken for "no such object", the
    /// bucket must have been seen in the last few seconds or be seen now;
    /// a missing bucket is a store failure, never "no state" (issue 16).
    async fn check_bucket(&self, what: &str) -> Result<(), StoreError> {
        if self.bucket_seen.recently() {
            return Ok(());
        }
        match self.versioning().await {
            Ok(_) => {
                self.bucket_seen.seen();
                Ok(())
            }
            Err(("bucket", _)) => Err(StoreError::unavailable(format!(
                "{what}: bucket `{}` does not exist at {} (NoSuchBucket)",
                self.bucket, self.endpoint_url
            ))),
            Err((_, StoreError::Unavailable(reason))) => Err(StoreError::unavailable(format!(
                "{what}: {}",
                reason
                    .strip_prefix("reading the bucket's versioning: ")
                    .unwrap_or(&reason)
            ))),
            Err((_, other)) => Err(other),
        }
    }

    fn object_name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The object's current ETag, `None` when it does not exist.
    async fn head_etag(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.client.head_object(&self.bucket, name, None).await {
            Ok(meta) => Ok(Some(meta.etag)),
            Err(OssError::StatusError(s)) if s == reqwest::StatusCode::NOT_FOUND => {
                self.check_bucket(&format!("reading {name}")).await?;
                Ok(None)
            }
            Err(e) => Err(self.error(&format!("reading {name}"), e)),
        }
    }

    /// Translates an SDK error into one clear [`StoreError::Unavailable`]
    /// reason. Messages name the bucket and endpoint, never a secret.
    fn error(&self, context: &str, e: OssError) -> StoreError {
        let reason = match &e {
            OssError::ApiError(api) => match api.code.as_str() {
                "InvalidAccessKeyId" => "OSS does not know the access key (InvalidAccessKeyId; \
                    with STS credentials, security_token must be set): check access_key"
                    .to_string(),
                "SignatureDoesNotMatch" => "OSS refused the request signature \
                    (SignatureDoesNotMatch): secret_key does not belong to access_key"
                    .to_string(),
                "InvalidSecurityToken"
                | "SecurityTokenExpired"
                | "AccessKeyIdAndSecurityTokenNotMatch" => {
                    format!(
                        "OSS refused the STS token ({}): check security_token",
                        api.code
                    )
                }
                "NoSuchBucket" => format!(
                    "bucket `{}` does not exist at {} (NoSuchBucket)",
                    self.bucket, self.endpoint_url
                ),
                "AccessDenied" => format!(
                    "OSS denied access to bucket `{}` (AccessDenied: {})",
                    self.bucket, api.message
                ),
                code => format!(
                    "OSS answered {code}: {} (request id {})",
                    api.message, api.request_id
                ),
            },
            OssError::StatusError(s) if *s == reqwest::StatusCode::FORBIDDEN => {
                "OSS refused the request (403): check access_key, secret_key and security_token"
                    .to_string()
            }
            OssError::StatusError(s) => format!("OSS answered HTTP {s}"),
            OssError::ReqwestError(r) if r.is_timeout() => format!(
                "OSS at {} did not answer within {}s",
                self.endpoint_url,
                self.timeout.as_secs()
            ),
            OssError::ReqwestError(r) if r.is_connect() => {
                format!(
                    "cannot connect to {}: {}",
                    self.endpoint_url,
                    network_cause(r)
                )
            }
            OssError::ReqwestError(r) => {
                format!(
                    "the connection to {} failed: {}",
                    self.endpoint_url,
                    network_cause(r)
                )
            }
            other => network_cause(other),
        };
        StoreError::unavailable(format!("{context}: {reason}"))
    }

    fn put_options(
        &self,
        body: &[u8],
        forbid_overwrite: bool,
    ) -> ali_oss_rs::object_common::PutObjectOptions {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body));
        // Every stored object is a JSON document (states, LockInfo, history).
        let mut options = PutObjectOptionsBuilder::new()
            .mime_type("application/json")
            .content_md5(md5);
        if forbid_overwrite {
            options = options.forbid_overwrite(true);
        }
        if self.encrypt {
            options = options.server_side_encryption(ServerSideEncryptionAlgorithm::AES256);
        }
        if let Some(acl) = self.acl {
            options = options.object_acl(acl);
        }
        options.build()
    }
}

/// Which setting an error at start-up most likely points at.
fn setting_at_fault(e: &OssError) -> &'static str {
    match e {
        OssError::ApiError(api) => match api.code.as_str() {
            "InvalidAccessKeyId" | "AccessDenied" => "access_key",
            "SignatureDoesNotMatch" => "secret_key",
            "InvalidSecurityToken"
            | "SecurityTokenExpired"
            | "AccessKeyIdAndSecurityTokenNotMatch" => "security_token",
            "NoSuchBucket" => "bucket",
            _ => "endpoint",
        },
        OssError::StatusError(s) if *s == reqwest::StatusCode::FORBIDDEN => "secret_key",
        _ => "endpoint",
    }
}

/// The text of the first `<tag>…</tag>` in a small XML document.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim())
}

fn api_code(e: &OssError) -> Option<&str> {
    match e {
        OssError::ApiError(api) => Some(api.code.as_str()),
        _ => None,
    }
}

#[async_trait]
impl Store for OssStore {
    fn describe(&self) -> String {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!(" under `{}`", self.prefix)
        };
        format!(
            "oss store: bucket `{}`{prefix} at {} (region {})",
            self.bucket, self.endpoint_url, self.region
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_create: self.atomic_create,
            // IfMatch is HEAD-compare-then-act, not atomic: OSS has no
            // conditional PutObject or DeleteObject.
            compare_and_swap: false,
        }
    }

    fn operation_timeout(&self) -> Duration {
        self.timeout
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let what = format!("reading {}", self.object_name(key));
        self.bounded(&what, self.get_unbounded(key), StoreError::Unavailable)
            .await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<Version, StoreError> {
        let what = format!("writing {}", self.object_name(key));
        self.bounded(
            &what,
            self.put_unbounded(key, body, condition),
            StoreError::Unavailable,
        )
        .await
    }

    async fn delete(&self, key: &str, condition: Condition) -> Result<(), StoreError> {
        let what = format!("deleting {}", self.object_name(key));
        self.bounded(
            &what,
            self.delete_unbounded(key, condition),
            StoreError::Unavailable,
        )
        .await
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        let what = format!("reading {}", self.object_name(key));
        self.bounded(&what, self.stat_unbounded(key), StoreError::Unavailable)
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        self.bounded(
            "listing objects",
            self.list_unbounded(prefix),
            StoreError::Unavailable,
        )
        .await
    }
}

/// The operations themselves; [`Store`] runs each within `timeout`.
impl OssStore {
    async fn get_unbounded(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let name = self.object_name(key);
        for _ in 0..READ_RETRIES {
            let Some(etag) = self.head_etag(&name).await? else {
                return Ok(None);
            };
            let options = GetObjectOptionsBuilder::new()
                .if_match(format!("\"{etag}\""))
                .build();
            match self
                .client
                .get_object_to_buffer(&self.bucket, &name, Some(options))
                .await
            {
                Ok(body) => {
                    return Ok(Some(Object {
                        body: Bytes::from(body),
                        version: Version(etag),
                    }));
                }
                // Replaced or deleted between the HEAD and the GET: look again.
                Err(e) if matches!(api_code(&e), Some("PreconditionFailed" | "NoSuchKey")) => {
                    continue;
                }
                Err(e) => return Err(self.error(&format!("reading {name}"), e)),
            }
        }
        Err(StoreError::unavailable(format!(
            "reading {name}: the object kept changing; try again"
        )))
    }

    async fn put_unbounded(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<Version, StoreError> {
        let name = self.object_name(key);
        if let Condition::IfMatch(expected) = &condition {
            // Not atomic (see the module comment): a write landing between
            // this HEAD and the put below is overwritten.
            if self.head_etag(&name).await?.as_deref() != Some(expected.0.as_str()) {
                return Err(StoreError::PreconditionFailed);
            }
        }
        let options = self.put_options(&body, condition == Condition::IfAbsent);
        match self
            .client
            .put_object_from_buffer(&self.bucket, &name, body.to_vec(), Some(options))
            .await
        {
            Ok(PutObjectResult::ApiResponse(r)) if !r.etag.is_empty() => Ok(Version(r.etag)),
            // A simple put's ETag is the body's MD5 in upper-case hex.
            Ok(_) => Ok(Version(
                Md5::digest(&body)
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect(),
            )),
            Err(e) if api_code(&e) == Some("FileAlreadyExists") => Err(StoreError::AlreadyExists),
            Err(e) => Err(self.error(&format!("writing {name}"), e)),
        }
    }

    async fn delete_unbounded(&self, key: &str, condition: Condition) -> Result<(), StoreError> {
        let name = self.object_name(key);
        if let Condition::IfMatch(expected) = &condition {
            // Not atomic either: a lock re-taken between this HEAD and the
            // delete would be removed. The window is one round trip.
            if self.head_etag(&name).await?.as_deref() != Some(expected.0.as_str()) {
                return Err(StoreError::PreconditionFailed);
            }
        }
        // OSS answers 204 whether or not the object existed.
        self.client
            .delete_object(&self.bucket, &name, None)
            .await
            .map(|_| ())
            .map_err(|e| self.error(&format!("deleting {name}"), e))
    }

    async fn stat_unbounded(&self, key: &str) -> Result<Option<Version>, StoreError> {
        Ok(self.head_etag(&self.object_name(key)).await?.map(Version))
    }

    async fn list_unbounded(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let full = self.object_name(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut options = ListObjectsOptionsBuilder::new().max_keys(LIST_PAGE);
            if !full.is_empty() {
                options = options.prefix(&full);
            }
            if let Some(t) = token.take() {
                options = options.continuation_token(t);
            }
            let page = self
                .client
                .list_objects(&self.bucket, Some(options.build()))
                .await
                .map_err(|e| self.error("listing objects", e))?;
            for summary in page.contents {
                let Some(key) = summary.key.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.push(Entry {
                    key: key.to_string(),
                    size: summary.size,
                    modified: OffsetDateTime::parse(&summary.last_modified, &Rfc3339).ok(),
                });
            }
            match page.next_continuation_token {
                Some(t) if page.is_truncated => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&'static str, &str)]) -> StoreSettings {
        let mut all = vec![
            ("bucket", "states"),
            ("access_key", "AKID"),
            ("secret_key", "s3cr3t-value"),
        ];
        all.extend_from_slice(pairs);
        StoreSettings::from_pairs("oss", &all)
    }

    #[test]
    fn defaults_follow_terraform() {
        let cfg = OssConfig::from_settings(&settings(&[])).unwrap();
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
    fn region_builds_the_default_endpoint() {
        let cfg = OssConfig::from_settings(&settings(&[("region", "cn-hangzhou")])).unwrap();
        assert_eq!(cfg.endpoint, "oss-cn-hangzhou.aliyuncs.com");
        assert_eq!(cfg.region, "cn-hangzhou");
    }

    #[test]
    fn standard_endpoint_names_the_region() {
        let cfg = OssConfig::from_settings(&settings(&[
            ("region", "cn-beijing"),
            ("endpoint", "oss-cn-shanghai-internal.aliyuncs.com"),
        ]))
        .unwrap();
        assert_eq!(cfg.region, "cn-shanghai");
        assert_eq!(cfg.scheme, "https");
    }

    #[test]
    fn custom_endpoint_keeps_scheme_and_region() {
        let cfg = OssConfig::from_settings(&settings(&[
            ("region", "ap-southeast-1"),
            ("endpoint", "http://oss.internal.example:8080/"),
        ]))
        .unwrap();
        assert_eq!(
            (
                cfg.scheme.as_str(),
                cfg.endpoint.as_str(),
                cfg.region.as_str()
            ),
            ("http", "oss.internal.example:8080", "ap-southeast-1")
        );
    }

    #[test]
    fn prefix_is_normalised() {
        let cfg = OssConfig::from_settings(&settings(&[("prefix", "/team/a/")])).unwrap();
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
            let cfg = OssConfig::from_settings(&settings(&[("acl", value)])).unwrap();
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
        let cfg = OssConfig::from_settings(&settings(&[("security_token", "tok-value")])).unwrap();
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

    #[test]
    fn versioning_status_is_read_from_xml() {
        let xml = "<?xml version=\"1.0\"?><VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>";
        assert_eq!(xml_text(xml, "Status"), Some("Suspended"));
        assert_eq!(xml_text("<VersioningConfiguration/>", "Status"), None);
    }
}

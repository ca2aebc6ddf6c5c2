//! `storageType: s3`: objects in a bucket on AWS S3 or any S3-compatible
//! server, under an optional key prefix that nothing outside is ever read
//! from or written to.
//!
//! The conditions map onto S3's own conditional requests, so they hold
//! across every process sharing the bucket, stategate or not:
//! `Condition::IfAbsent` is PutObject with `If-None-Match: *` (the same
//! request Terraform's native s3 backend makes for its `.tflock` with
//! `use_lockfile`), `Condition::IfMatch` sends `If-Match: <ETag>`, and a
//! version is the object's ETag. S3 answers 412 when a condition fails and
//! 409 `ConditionalRequestConflict` when two conditional writes race; the
//! latter is retried here.
//!
//! Not every S3-compatible server honours `If-Match`. Opening the store
//! tries both conditional writes against a probe object and, where the
//! server ignores or refuses them, falls back to reading the ETag and
//! comparing before writing or deleting, and says so in
//! [`Store::capabilities`] (whose compare-and-swap then is false, so the
//! state layer takes its write lease around such steps) and
//! [`Store::describe`]. Whether `If-None-Match`
//! is honoured (which locks depend on) is checked by the generic start-up
//! probe in [`super::open`].
//!
//! Every SDK error is translated next to its call into a [`StoreError`];
//! authentication failures, a missing bucket and an unreachable server each
//! get one plain reason, and no message ever carries a secret. A HEAD's
//! bodiless 404 is only "no such object" once the bucket is known to exist.
//! The `timeout` setting bounds each store operation as a whole, retries
//! included.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ObjectCannedAcl, ServerSideEncryption};
use aws_smithy_http_client::tls;
use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};
use time::OffsetDateTime;

use super::{
    Backend, BucketSeen, Capabilities, Condition, Entry, Object, PROBE_PREFIX, Store, StoreError,
    Version, network_cause, normalise_prefix,
};
use crate::config::{ConfigError, Setting, StoreSettings};

/// Registration of the S3 store.
pub static BACKEND: Backend = Backend {
    name: "s3",
    summary: "a bucket on AWS S3 or any S3-compatible server",
    settings: SETTINGS,
    open: |settings| {
        Box::pin(async move { Ok(Arc::new(S3Store::open(&settings).await?) as Arc<dyn Store>) })
    },
};

const SETTINGS: &[Setting] = &[
    Setting {
        name: "endpoint",
        aliases: &[],
        env: &["STATEGATE_S3_ENDPOINT"],
        secret: false,
        default: None,
        help: "URL of an S3-compatible server (path-style addressing); unset for AWS S3",
    },
    Setting {
        name: "bucket",
        aliases: &[],
        env: &["STATEGATE_S3_BUCKET"],
        secret: false,
        default: None,
        help: "the bucket that holds the states (must exist)",
    },
    Setting {
        name: "region",
        aliases: &[],
        env: &["STATEGATE_S3_REGION"],
        secret: false,
        default: Some("us-east-1"),
        help: "the bucket's region, used for signing",
    },
    Setting {
        name: "accessKeyID",
        aliases: &["access_key", "accessKeyId", "access_key_id"],
        env: &["STATEGATE_S3_ACCESS_KEY_ID"],
        secret: false,
        default: None,
        help: "access key id; unset = AWS_ACCESS_KEY_ID or the standard AWS credential chain",
    },
    Setting {
        name: "accessKeySecret",
        aliases: &["secret_key", "secretAccessKey", "secret_access_key"],
        env: &["STATEGATE_S3_SECRET_ACCESS_KEY"],
        secret: true,
        default: None,
        help: "secret access key, with accessKeyID",
    },
    Setting {
        name: "session_token",
        aliases: &["sessionToken"],
        env: &["STATEGATE_S3_SESSION_TOKEN"],
        secret: true,
        default: None,
        help: "session token of temporary credentials, with accessKeyID",
    },
    Setting {
        name: "encrypt",
        aliases: &[],
        env: &["STATEGATE_S3_ENCRYPT"],
        secret: false,
        default: Some("false"),
        help: "write every object with x-amz-server-side-encryption: AES256",
    },
    Setting {
        name: "acl",
        aliases: &[],
        env: &["STATEGATE_S3_ACL"],
        secret: false,
        default: None,
        help: "canned ACL sent with every write, e.g. private or bucket-owner-full-control",
    },
    Setting {
        name: "prefix",
        aliases: &[],
        env: &["STATEGATE_S3_PREFIX"],
        secret: false,
        default: None,
        help: "key prefix inside the bucket; nothing outside it is read or written",
    },
    Setting {
        name: "force_path_style",
        aliases: &["forcePathStyle", "use_path_style"],
        env: &["STATEGATE_S3_FORCE_PATH_STYLE"],
        secret: false,
        default: None,
        help: "address the bucket as <endpoint>/<bucket>; default: true when endpoint is set",
    },
    Setting {
        name: "timeout",
        aliases: &[],
        env: &["STATEGATE_S3_TIMEOUT"],
        secret: false,
        default: Some("60"),
        help: "seconds one operation on S3 may take, its retries included, before it answers 503",
    },
];

/// Longest wait for a TCP connection to the S3 server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per S3 request (the SDK retries 5xx, throttling and network errors).
const MAX_ATTEMPTS: u32 = 3;
/// How often a conditional write that lost a race with another conditional
/// write (409 `ConditionalRequestConflict`) is tried again.
const CONFLICT_RETRIES: u32 = 5;

/// The validated S3 settings. The secret is kept only inside the SDK's
/// [`Credentials`], whose `Debug` redacts it, and this type's `Debug` says
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
            .map(normalise_endpoint)
            .transpose()?;
        let bucket = settings.require("bucket")?.to_string();
        if bucket.contains('/') || bucket.trim() != bucket {
            return Err(ConfigError::invalid(
                "bucket",
                format!("`{bucket}` is not a bucket name (put key prefixes in `prefix`)"),
            ));
        }
        let region = settings.get("region").unwrap_or("us-east-1").to_string();

        let key_id = settings.get("accessKeyID");
        let secret = settings.get("accessKeySecret");
        let token = settings.get("session_token");
        let credentials = match (key_id, secret) {
            (Some(id), Some(secret)) => Some(Credentials::new(
                id,
                secret,
                token.map(str::to_string),
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
        let prefix = settings.get("prefix").map(normalise_prefix).transpose()?;
        let path_style = match settings.get("force_path_style") {
            Some(_) => settings.bool("force_path_style")?,
            None => endpoint.is_some(),
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

/// Accepts `host[:port]` (HTTPS assumed) or an `http(s)://` URL.
fn normalise_endpoint(raw: &str) -> Result<String, ConfigError> {
    let raw = raw.trim().trim_end_matches('/');
    let url = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => Ok(url),
        _ => Err(ConfigError::invalid(
            "endpoint",
            format!("`{raw}` is not a URL like https://s3.example.com or http://127.0.0.1:9000"),
        )),
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

/// A bucket (or part of one) on an S3-compatible server; cheap to clone.
#[derive(Clone)]
pub struct S3Store(Arc<Bucket>);

/// Everything an operation needs; shared by clones of the store.
struct Bucket {
    client: Client,
    config: S3Config,
    /// Where errors say the server is: the endpoint, or AWS and the region.
    location: String,
    /// The server refuses a PutObject whose `If-Match` does not match. When
    /// false, `Condition::IfMatch` puts compare the ETag first (not atomic).
    put_if_match: bool,
    /// The same for DeleteObject.
    delete_if_match: bool,
    /// When the bucket was last seen to exist, to tell a HEAD's bodiless
    /// 404 for a missing object from one for a missing bucket.
    bucket_seen: BucketSeen,
}

/// What a failed S3 request means to this store.
#[derive(Debug)]
enum Failure {
    /// 412: the request's condition did not hold.
    Precondition,
    /// 409 `ConditionalRequestConflict`: another conditional write to the
    /// same key was in flight; try again.
    Conflict,
    /// 404 `NoSuchKey` (or a 404 without a body, from HEAD).
    NoSuchKey,
    /// The store cannot serve requests. `setting` names the setting to
    /// check when the cause is a setting (credentials, bucket, endpoint).
    Unavailable {
        setting: Option<&'static str>,
        reason: String,
    },
}

impl Failure {
    /// The store error for a failure the caller did not expect.
    fn into_store_error(self, what: &str) -> StoreError {
        match self {
            Failure::Precondition => StoreError::PreconditionFailed,
            Failure::Conflict => {
                StoreError::unavailable(format!("{what}: kept conflicting with another write"))
            }
            Failure::NoSuchKey => StoreError::unavailable(format!("{what}: the object is gone")),
            Failure::Unavailable { reason, .. } => {
                // The HTTP layer logs the status; the cause is only known here.
                tracing::warn!(store = "s3", "{reason}");
                StoreError::Unavailable(reason)
            }
        }
    }
}

impl S3Store {
    /// Opens the bucket named by the settings and finds out which
    /// conditional requests its server honours (see the module comment).
    pub async fn open(settings: &StoreSettings) -> Result<Self, ConfigError> {
        Self::connect(S3Config::from_settings(settings)?).await
    }

    /// Opens a bucket from validated settings.
    pub async fn connect(config: S3Config) -> Result<Self, ConfigError> {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        // `timeout` bounds the whole operation, retries included (issue 16:
        // a per-attempt limit made a stopped server take 3 x 60 s to answer).
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
            .operation_timeout(config.timeout)
            .operation_attempt_timeout(config.timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .http_client(http_client)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        if let Some(credentials) = &config.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        let shared = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.path_style)
            // S3-compatible servers often refuse aws-chunked uploads with
            // trailing checksums, the SDK's default; Content-MD5 is sent instead.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &config.endpoint {
            s3 = s3.endpoint_url(endpoint);
        }
        let location = match &config.endpoint {
            Some(e) => e.clone(),
            None => format!("AWS S3 ({})", config.region),
        };
        let mut bucket = Bucket {
            client: Client::from_conf(s3.build()),
            config,
            location,
            put_if_match: true,
            delete_if_match: true,
            bucket_seen: BucketSeen::default(),
        };
        bucket.detect_conditions().await.map_err(|f| match f {
            Failure::Unavailable {
                setting: Some(setting),
                reason,
            } => ConfigError::invalid(setting, reason),
            other => ConfigError::invalid(
                "endpoint",
                other.into_store_error("probing conditional requests"),
            ),
        })?;
        if !bucket.put_if_match {
            tracing::warn!(store = %bucket.describe(), "the server ignores If-Match on PutObject: checked writes compare the ETag first, which is not atomic");
        }
        if !bucket.delete_if_match {
            tracing::warn!(store = %bucket.describe(), "the server ignores If-Match on DeleteObject: unlock compares the ETag first, which is not atomic");
        }
        Ok(S3Store(Arc::new(bucket)))
    }
}

impl Bucket {
    fn describe(&self) -> String {
        let mut text = format!("s3 store bucket `{}`", self.config.bucket);
        if !self.config.prefix.is_empty() {
            text.push_str(&format!(" under `{}`", self.config.prefix));
        }
        text.push_str(&format!(" at {}", self.location));
        if !self.delete_if_match {
            text.push_str(" (no conditional delete: unlock compares, then deletes)");
        }
        text
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.config.prefix)
    }

    /// Writes a probe object with a condition that cannot hold, once for
    /// PutObject and once for DeleteObject: a server that honours `If-Match`
    /// refuses both. Also proves the bucket is reachable with these
    /// credentials before anything else runs.
    async fn detect_conditions(&mut self) -> Result<(), Failure> {
        let key = format!(
            "{PROBE_PREFIX}s3-conditions-{}-{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        let absent = Version("\"00000000000000000000000000000000\"".into());
        self.put_once(&key, Bytes::from_static(b"probe\n"), &Condition::Always)
            .await?;
        self.put_if_match = match self
            .put_once(
                &key,
                Bytes::from_static(b"x"),
                &Condition::IfMatch(absent.clone()),
            )
            .await
        {
            Err(Failure::Precondition) => true,
            Ok(_) => false,
            Err(f) => refused_or(f)?,
        };
        self.delete_if_match = match self.delete_once(&key, Some(&absent)).await {
            Err(Failure::Precondition) => true,
            // Deleted although the ETag cannot have matched.
            Ok(()) => self.get_once(&key).await?.is_some(),
            Err(f) => refused_or(f)?,
        };
        self.delete_once(&key, None).await
    }

    /// One PutObject carrying the condition as a header.
    async fn put_once(
        &self,
        key: &str,
        body: Bytes,
        condition: &Condition,
    ) -> Result<Version, Failure> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
        let mut request = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .content_type("application/json")
            .content_md5(md5)
            .body(ByteStream::from(body));
        if self.config.encrypt {
            request = request.server_side_encryption(ServerSideEncryption::Aes256);
        }
        if let Some(acl) = &self.config.acl {
            request = request.acl(acl.clone());
        }
        request = match condition {
            Condition::Always => request,
            Condition::IfAbsent => request.if_none_match("*"),
            Condition::IfMatch(v) => request.if_match(&v.0),
        };
        let output = request
            .send()
            .await
            .map_err(|e| self.failure(&format!("writing {key}"), e))?;
        match output.e_tag() {
            Some(etag) => Ok(Version(etag.to_string())),
            None => Err(Failure::Unavailable {
                setting: None,
                reason: format!("writing {key}: the server answered without an ETag"),
            }),
        }
    }

    /// One DeleteObject, with `If-Match` when `version` is given.
    async fn delete_once(&self, key: &str, version: Option<&Version>) -> Result<(), Failure> {
        let result = self
            .client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .set_if_match(version.map(|v| v.0.clone()))
            .send()
            .await;
        match result.map_err(|e| self.failure(&format!("deleting {key}"), e)) {
            Ok(_) => Ok(()),
            // S3 deletes a missing key with 204; a 404 may be the bucket.
            Err(Failure::NoSuchKey) if version.is_none() => {
                self.check_bucket(&format!("deleting {key}")).await
            }
            Err(Failure::NoSuchKey) => {
                self.check_bucket(&format!("deleting {key}")).await?;
                Err(Failure::Precondition)
            }
            Err(f) => Err(f),
        }
    }

    async fn get_once(&self, key: &str) -> Result<Option<Object>, Failure> {
        let what = format!("reading {key}");
        let result = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        let output = match result.map_err(|e| self.failure(&what, e)) {
            Ok(o) => o,
            Err(Failure::NoSuchKey) => {
                // Servers that answer a missing bucket without a code look
                // like a missing object.
                self.check_bucket(&what).await?;
                return Ok(None);
            }
            Err(f) => return Err(f),
        };
        let version = Version(output.e_tag().unwrap_or_default().to_string());
        if version.0.is_empty() {
            return Err(Failure::Unavailable {
                setting: None,
                reason: format!("{what}: the server answered without an ETag"),
            });
        }
        let body = output
            .body
            .collect()
            .await
            .map_err(|e| Failure::Unavailable {
                setting: Some("endpoint"),
                reason: format!(
                    "{what}: the connection to {} broke: {}",
                    self.location,
                    network_cause(&e)
                ),
            })?
            .into_bytes();
        Ok(Some(Object { body, version }))
    }

    /// The ETag of an object, `None` when it does not exist (for the
    /// compare-first fallbacks).
    /// The fallback for a server that ignores `If-Match`: compares the
    /// current ETag before the change. Not atomic (see the module comment).
    async fn compare_etag(
        &self,
        key: &str,
        expected: &Version,
        what: &str,
    ) -> Result<(), StoreError> {
        let current = self.etag(key).await.map_err(|f| f.into_store_error(what))?;
        Condition::IfMatch(expected.clone()).check(current.as_ref(), true)
    }

    async fn etag(&self, key: &str) -> Result<Option<Version>, Failure> {
        let result = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        let what = format!("reading {key}");
        match result.map_err(|e| self.failure(&what, e)) {
            Ok(o) => Ok(o.e_tag().map(|e| Version(e.to_string()))),
            Err(Failure::NoSuchKey) => {
                self.check_bucket(&what).await?;
                Ok(None)
            }
            Err(f) => Err(f),
        }
    }

    /// HEAD answers 404 without a body for a missing object and for a
    /// missing bucket alike. Before a bodiless 404 is taken for "no such
    /// object", the bucket must have been seen in the last few seconds, or
    /// be seen now (HeadBucket); a missing bucket is then a store failure,
    /// never "no state" (issue 16).
    async fn check_bucket(&self, what: &str) -> Result<(), Failure> {
        if self.bucket_seen.recently() {
            return Ok(());
        }
        let result = self
            .client
            .head_bucket()
            .bucket(&self.config.bucket)
            .send()
            .await;
        match result.map_err(|e| self.failure(what, e)) {
            Ok(_) => {
                self.bucket_seen.seen();
                Ok(())
            }
            Err(Failure::NoSuchKey) => Err(Failure::Unavailable {
                setting: Some("bucket"),
                reason: format!(
                    "{what}: bucket `{}` does not exist at {}",
                    self.config.bucket, self.location
                ),
            }),
            Err(f) => Err(f),
        }
    }

    /// Translates an SDK error. `what` says what was being done, e.g.
    /// `writing states/a.tflock`.
    fn failure<E>(
        &self,
        what: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().unwrap_or_default().to_string();
        let detail = match err.message().filter(|m| !m.trim().is_empty()) {
            Some(m) if !code.is_empty() => format!("{code}: {m}"),
            Some(m) => m.to_string(),
            None => code.clone(),
        };
        let unavailable = |setting: Option<&'static str>, reason: String| Failure::Unavailable {
            setting,
            reason: format!("{what}: {reason}"),
        };
        let bucket = &self.config.bucket;
        let location = &self.location;
        match status {
            Some(412) => Failure::Precondition,
            Some(409) if code == "ConditionalRequestConflict" => Failure::Conflict,
            Some(404) if code == "NoSuchBucket" => unavailable(
                Some("bucket"),
                format!("bucket `{bucket}` does not exist at {location}"),
            ),
            Some(404) => Failure::NoSuchKey,
            Some(401 | 403) => unavailable(
                Some("accessKeyID"),
                format!(
                    "the S3 server at {location} refused the credentials or denied access to bucket `{bucket}` ({})",
                    if detail.is_empty() {
                        format!("HTTP {}", status.unwrap_or_default())
                    } else {
                        detail
                    }
                ),
            ),
            Some(301) | Some(400)
                if matches!(
                    code.as_str(),
                    "PermanentRedirect"
                        | "AuthorizationHeaderMalformed"
                        | "IllegalLocationConstraintException"
                ) || (status == Some(301) && code.is_empty()) =>
            {
                unavailable(
                    Some("region"),
                    format!(
                        "bucket `{bucket}` is not in region `{}` ({detail})",
                        self.config.region
                    ),
                )
            }
            Some(s) => unavailable(
                None,
                format!(
                    "the S3 server at {location} answered HTTP {s}{}",
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({detail})")
                    }
                ),
            ),
            None => match &err {
                SdkError::TimeoutError(_) => unavailable(
                    Some("endpoint"),
                    format!(
                        "the S3 server at {location} did not answer within {}s",
                        self.config.timeout.as_secs()
                    ),
                ),
                SdkError::DispatchFailure(d) if d.is_timeout() => unavailable(
                    Some("endpoint"),
                    format!(
                        "the S3 server at {location} did not answer within {}s",
                        self.config.timeout.as_secs()
                    ),
                ),
                SdkError::DispatchFailure(_) => unavailable(
                    Some("endpoint"),
                    format!(
                        "cannot reach the S3 server at {location}: {}",
                        network_cause(&err)
                    ),
                ),
                SdkError::ResponseError(_) => unavailable(
                    Some("endpoint"),
                    format!(
                        "the S3 server at {location} sent an answer that could not be read: {}",
                        network_cause(&err)
                    ),
                ),
                _ => {
                    // Construction failures: in practice the credential
                    // chain found no credentials or could not load them.
                    let cause = network_cause(&err);
                    if DisplayErrorContext(&err)
                        .to_string()
                        .to_ascii_lowercase()
                        .contains("credentials")
                    {
                        unavailable(
                            Some("accessKeyID"),
                            format!("no usable S3 credentials: {cause}"),
                        )
                    } else {
                        unavailable(None, format!("the S3 request could not be made: {cause}"))
                    }
                }
            },
        }
    }
}

/// During detection: a server that refuses a conditional header outright
/// (400, 501) does not support it; failures of access are real errors.
fn refused_or(f: Failure) -> Result<bool, Failure> {
    match f {
        Failure::Unavailable {
            setting: Some(_), ..
        } => Err(f),
        _ => Ok(false),
    }
}

#[async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        self.0.describe()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Decided by the generic start-up probe, which refuses to start
            // on a server that ignores If-None-Match unless told otherwise.
            conditional_create: true,
            // Both conditional puts and conditional deletes must be atomic
            // for the state layer to do without its write lease: unlock is
            // a conditional delete.
            compare_and_swap: self.0.put_if_match && self.0.delete_if_match,
        }
    }

    fn operation_timeout(&self) -> Duration {
        self.0.config.timeout
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let what = format!("reading {key}");
        self.bounded(&what, async {
            self.0
                .get_once(key)
                .await
                .map_err(|f| f.into_store_error(&what))
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> Result<Version, StoreError> {
        let what = format!("writing {key}");
        self.bounded(&what, self.put_unbounded(key, body, condition, &what))
            .await
    }

    async fn delete(&self, key: &str, condition: Condition) -> Result<(), StoreError> {
        let what = format!("deleting {key}");
        self.bounded(&what, self.delete_unbounded(key, condition, &what))
            .await
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        let what = format!("reading {key}");
        self.bounded(&what, async {
            self.0
                .etag(key)
                .await
                .map_err(|f| f.into_store_error(&what))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let what = format!("listing `{prefix}`");
        self.bounded(&what, self.list_unbounded(prefix, &what))
            .await
    }
}

impl S3Store {
    /// Answers 503 when `op` takes longer than `timeout`: the setting bounds
    /// a whole store operation (several S3 requests, their retries and the
    /// transfer), whatever the SDK's own limits did.
    async fn bounded<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.0.config.timeout;
        match tokio::time::timeout(limit, op).await {
            Ok(result) => result,
            Err(_) => {
                let reason = format!(
                    "{what}: the S3 server at {} did not answer within {}s",
                    self.0.location,
                    limit.as_secs()
                );
                tracing::warn!(store = "s3", "{reason}");
                Err(StoreError::Unavailable(reason))
            }
        }
    }

    async fn put_unbounded(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
        what: &str,
    ) -> Result<Version, StoreError> {
        let bucket = &self.0;
        if let Condition::IfMatch(expected) = &condition
            && !bucket.put_if_match
        {
            bucket.compare_etag(key, expected, what).await?;
        }
        for attempt in 0..=CONFLICT_RETRIES {
            match bucket.put_once(key, body.clone(), &condition).await {
                Ok(v) => return Ok(v),
                Err(Failure::Precondition) if condition == Condition::IfAbsent => {
                    return Err(StoreError::AlreadyExists);
                }
                Err(Failure::Conflict) if attempt < CONFLICT_RETRIES => {
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(f) => return Err(f.into_store_error(what)),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn delete_unbounded(
        &self,
        key: &str,
        condition: Condition,
        what: &str,
    ) -> Result<(), StoreError> {
        let bucket = &self.0;
        let version = match &condition {
            Condition::IfMatch(v) => Some(v),
            Condition::Always | Condition::IfAbsent => None,
        };
        if let Some(expected) = version
            && !bucket.delete_if_match
        {
            bucket.compare_etag(key, expected, what).await?;
            return bucket
                .delete_once(key, None)
                .await
                .map_err(|f| f.into_store_error(what));
        }
        for attempt in 0..=CONFLICT_RETRIES {
            match bucket.delete_once(key, version).await {
                Ok(()) => return Ok(()),
                Err(Failure::Conflict) if attempt < CONFLICT_RETRIES => {
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(f) => return Err(f.into_store_error(what)),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn list_unbounded(&self, prefix: &str, what: &str) -> Result<Vec<Entry>, StoreError> {
        let bucket = &self.0;
        let store_prefix = &bucket.config.prefix;
        let mut entries = Vec::new();
        let mut token = None;
        loop {
            let page = bucket
                .client
                .list_objects_v2()
                .bucket(&bucket.config.bucket)
                .prefix(bucket.full_key(prefix))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| bucket.failure(what, e).into_store_error(what))?;
            for object in page.contents() {
                let Some(key) = object
                    .key()
                    .and_then(|k| k.strip_prefix(store_prefix.as_str()))
                else {
                    continue;
                };
                entries.push(Entry {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: object
                        .last_modified()
                        .and_then(|t| OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).ok()),
                });
            }
            token = page.next_continuation_token().map(str::to_string);
            if !page.is_truncated().unwrap_or(false) || token.is_none() {
                break;
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&'static str, &str)]) -> Result<S3Config, ConfigError> {
        S3Config::from_settings(&StoreSettings::from_pairs("s3", pairs))
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
    fn timeout_must_be_positive_seconds() {
        assert_eq!(
            config(&[("bucket", "b"), ("timeout", "5")])
                .unwrap()
                .timeout,
            Duration::from_secs(5)
        );
        let err = config(&[("bucket", "b"), ("timeout", "0")]).unwrap_err();
        assert!(err.to_string().starts_with("setting `timeout`"), "{err}");
    }
}

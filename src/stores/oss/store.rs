//! The OSS store: the client, the bucket's versioning, and the [`Store`]
//! operations on it.

use std::fmt;
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

use super::config::OssConfig;
use super::error::{Site, api_code, xml_text};
use crate::stores::bucket::{BucketSeen, bounded, compare_first};
use crate::stores::payload::{FileBody, SPOOL_THRESHOLD, reopen_path, spool_dir};
use crate::stores::{
    Capabilities, Condition, Entry, OpDelete, OpList, OpRead, OpWrite, Payload, Store, StoreError,
    Version,
};

/// How long to wait for a TCP/TLS connection to the endpoint (less when
/// `timeout` is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest page OSS returns from ListObjectsV2.
const LIST_PAGE: u32 = 1000;
/// How often a read retries when the object changes between its HEAD and
/// its GET.
const READ_RETRIES: usize = 5;
/// What reading the versioning status is called in messages.
const VERSIONING: &str = "reading the bucket's versioning";

/// An OSS bucket (under a prefix) as a store.
pub struct OssStore {
    client: Client,
    /// The same HTTP client the SDK uses, for the one request it lacks
    /// (GetBucketVersioning), sent pre-signed by the SDK.
    http: reqwest::Client,
    pub(super) bucket: String,
    prefix: String,
    /// `scheme://endpoint`, for messages.
    pub(super) endpoint_url: String,
    region: String,
    encrypt: bool,
    acl: Option<ObjectAcl>,
    /// False only on a versioned bucket opened with `allow_unsafe_locks`.
    atomic_create: bool,
    /// Limit for one store operation (the `timeout` setting).
    pub(super) timeout: Duration,
    /// When the bucket was last seen to exist: HEAD answers a bodiless 404
    /// for a missing object and a missing bucket alike.
    bucket_seen: BucketSeen,
    /// The versioning status seen since start on a bucket opened without
    /// it: versioning can be turned on at any time (and never off again),
    /// and OSS then ignores `x-oss-forbid-overwrite`, so creates are
    /// refused from then on ([`OssStore::check_creates`]).
    versioned_since: std::sync::Mutex<Option<String>>,
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
    /// Opens the bucket the settings name: reads the bucket's versioning
    /// status (which also proves the endpoint, the credentials and the
    /// bucket), and refuses a versioned bucket unless `allow_unsafe_locks`
    /// is set. A server that cannot be reached names `endpoint`.
    pub async fn connect(cfg: OssConfig) -> Result<Self, StoreError> {
        Self::connect_to(cfg, false).await
    }

    /// [`OssStore::connect`] for a store that is only read (a read-only
    /// server, a dry run): a versioned bucket is not refused, since
    /// nothing is locked there.
    pub async fn connect_for_reading(cfg: OssConfig) -> Result<Self, StoreError> {
        Self::connect_to(cfg, true).await
    }

    async fn connect_to(cfg: OssConfig, reading: bool) -> Result<Self, StoreError> {
        let invalid_endpoint = |e: &dyn std::fmt::Display| StoreError::ConfigInvalid {
            setting: "endpoint",
            reason: format!("HTTP client: {e}"),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(cfg.timeout))
            .read_timeout(cfg.timeout)
            // A 3xx is an answer, not a place to send the body and the
            // security token to.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| invalid_endpoint(&e))?;
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
        let client = builder.build().map_err(|e| invalid_endpoint(&e))?;
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
            versioned_since: Default::default(),
        };

        let versioning = store
            .bounded(VERSIONING, store.versioning())
            .await
            .map_err(|e| e.at_setting("endpoint"))?;
        if let Versioning::On(status) = versioning {
            if reading {
                store.atomic_create = false;
                return Ok(store);
            }
            if !cfg.allow_unsafe_locks {
                return Err(StoreError::ConfigInvalid {
                    setting: "bucket",
                    reason: format!(
                        "versioning is {status} on bucket `{}`, and OSS ignores x-oss-forbid-overwrite on \
                         versioned buckets, so two clients could both get a lock: locks would be unsafe. \
                         Use a bucket that never had versioning, or set allow_unsafe_locks: true to start anyway",
                        store.bucket
                    ),
                });
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
    async fn versioning(&self) -> Result<Versioning, StoreError> {
        let request = OssRequest::new()
            .method(RequestMethod::Get)
            .bucket(&self.bucket)
            .add_query("versioning", "");
        let signed = self.client.presign_raw_request(request);
        let mut builder = self.http.get(&signed.url);
        for (name, value) in &signed.headers {
            builder = builder.header(name, value);
        }
        let failed = |e: OssError| self.error(VERSIONING, e);
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
    /// requests (HEAD then GET, list pages).
    async fn bounded<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let server = format!("OSS at {}", self.endpoint_url);
        bounded(self.timeout, what, &server, op).await
    }

    /// Before a bodiless 404 from HEAD is taken for "no such object", the
    /// bucket must have been seen in the last few seconds or be seen now;
    /// a missing bucket is a store failure, never "no state", which would let a client start over on an empty
    /// state.
    async fn check_bucket(&self, what: &str) -> Result<(), StoreError> {
        if self.bucket_seen.recently() {
            return Ok(());
        }
        match self.versioning().await {
            Ok(versioning) => {
                self.bucket_seen.seen();
                if let Versioning::On(status) = versioning
                    && self.atomic_create
                {
                    let mut since = self.versioned_since.lock().expect("versioning mutex");
                    if since.is_none() {
                        tracing::error!(
                            bucket = %self.bucket,
                            versioning = %status,
                            "versioning was turned on for the bucket while stategate serves it: OSS ignores \
                             x-oss-forbid-overwrite on versioned buckets, so locks are refused from now on"
                        );
                    }
                    *since = Some(status);
                }
                Ok(())
            }
            Err(e) => {
                // Said of what was being done, not of the bucket check.
                let prefix = format!("{VERSIONING}: ");
                let reframe = |reason: String| {
                    format!(
                        "{what}: {}",
                        reason.strip_prefix(&prefix).unwrap_or(&reason)
                    )
                };
                Err(match e {
                    StoreError::BucketMissing { setting, reason } => StoreError::BucketMissing {
                        setting,
                        reason: reframe(reason),
                    },
                    StoreError::Unavailable(reason) => StoreError::Unavailable(reframe(reason)),
                    other => other,
                })
            }
        }
    }

    /// Translates an SDK error from a call on this bucket.
    pub(super) fn error(&self, context: &str, e: OssError) -> StoreError {
        let site = Site {
            bucket: &self.bucket,
            endpoint_url: &self.endpoint_url,
            timeout: self.timeout,
        };
        site.error(context, e)
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
    fn put_options(
        &self,
        md5: &[u8; 16],
        forbid_overwrite: bool,
    ) -> ali_oss_rs::object_common::PutObjectOptions {
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5);
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
            // A version is the ETag, the MD5 of the bytes.
            unique_versions: false,
            native_lease: false,
        }
    }

    fn operation_timeout(&self) -> Duration {
        self.timeout
    }

    fn max_key_bytes(&self) -> Option<usize> {
        Some(super::config::max_key_bytes(&self.prefix))
    }

    async fn read(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        let what = format!("reading {}", self.object_name(key));
        self.bounded(&what, self.read_unbounded(key, args)).await
    }

    async fn write(&self, key: &str, body: Payload, args: OpWrite) -> Result<Version, StoreError> {
        let what = format!("writing {}", self.object_name(key));
        self.bounded(&what, async {
            // A large body is sent from its file, never held whole.
            let md5 = body.md5().await?;
            self.put_unbounded(key, &body, &md5, args.condition).await
        })
        .await
    }

    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError> {
        let what = format!("deleting {}", self.object_name(key));
        self.bounded(&what, self.delete_unbounded(key, args.condition))
            .await
    }

    async fn stat(&self, key: &str) -> Result<Option<Version>, StoreError> {
        let what = format!("reading {}", self.object_name(key));
        self.bounded(&what, self.stat_unbounded(key)).await
    }

    /// Outside the internal area: lists up to it, then from just past it
    /// (OSS lists in key order, as S3 does), so the pages of history are
    /// never asked for.
    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        let ranges = match args.outside_internal {
            true => crate::stores::ranges_outside_internal(prefix),
            false => vec![(prefix.to_string(), None)],
        };
        self.bounded("listing objects", async {
            let mut out = Vec::new();
            for (from, before) in ranges {
                // Keys are ASCII up to `~`: no internal key sorts after
                // `.stategate/~`, and no other key between it and `from`.
                let start_after =
                    (from != prefix).then(|| format!("{}~", crate::stores::INTERNAL_PREFIX));
                out.extend(
                    self.list_range(prefix, start_after.as_deref(), before.as_deref())
                        .await?,
                );
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }
}

/// The operations themselves; [`Store`] runs each within `timeout`.
impl OssStore {
    /// Reads the object version a HEAD found, with `If-Match` so a body
    /// replaced in between is not taken for that version. A streamed read
    /// writes the body as it arrives into an unnamed file: the SDK streams
    /// a download only into a file it names, so it is given the unnamed
    /// file's `/proc/self/fd` name. A state is never held whole in memory
    /// while a client downloads it, and a crash leaves nothing behind.
    /// Bodies up to [`SPOOL_THRESHOLD`] are then read into memory.
    async fn read_unbounded(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        enum Fetched {
            Memory(Bytes),
            File(std::fs::File),
        }
        let name = self.object_name(key);
        if args.bytes_only && !args.streamed {
            // One GET: the version would cost a HEAD first.
            return match self
                .client
                .get_object_to_buffer(&self.bucket, &name, None)
                .await
            {
                Ok(body) => {
                    let version = Version(simple_put_etag(&Md5::digest(&body).into()));
                    Ok(Some((Payload::Memory(Bytes::from(body)), version)))
                }
                Err(e) if api_code(&e) == Some("NoSuchKey") => Ok(None),
                Err(e) => Err(self.error(&format!("reading {name}"), e)),
            };
        }
        let spool_err = |e: std::io::Error| {
            StoreError::unavailable(format!("reading {name}: spooling the body: {e}"))
        };
        for _ in 0..READ_RETRIES {
            let Some(etag) = self.head_etag(&name).await? else {
                return Ok(None);
            };
            let options = GetObjectOptionsBuilder::new()
                .if_match(format!("\"{etag}\""))
                .build();
            let fetched = if args.streamed {
                let file = tempfile::tempfile_in(spool_dir()).map_err(spool_err)?;
                let path = reopen_path(&file);
                self.client
                    .get_object_to_file(&self.bucket, &name, &path, Some(options))
                    .await
                    .map(|_| Fetched::File(file))
            } else {
                self.client
                    .get_object_to_buffer(&self.bucket, &name, Some(options))
                    .await
                    .map(|body| Fetched::Memory(Bytes::from(body)))
            };
            match fetched {
                Ok(Fetched::Memory(body)) => {
                    return Ok(Some((Payload::Memory(body), Version(etag))));
                }
                Ok(Fetched::File(file)) => {
                    let len = file.metadata().map_err(spool_err)?.len();
                    let body = Payload::File(std::sync::Arc::new(FileBody::new(file, len)));
                    let body = if len <= SPOOL_THRESHOLD as u64 {
                        Payload::Memory(body.to_bytes().await?)
                    } else {
                        body
                    };
                    return Ok(Some((body, Version(etag))));
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

    /// Before a create that only `x-oss-forbid-overwrite` makes safe (a
    /// lock, a lease): the bucket's versioning is read again when it was
    /// not in the last few seconds ([`OssStore::check_bucket`]), and once it
    /// has been seen turned on, every such create is refused, since two
    /// clients could each be told they hold the same lock.
    async fn check_creates(&self, name: &str) -> Result<(), StoreError> {
        if !self.atomic_create {
            return Ok(());
        }
        self.check_bucket(&format!("writing {name}")).await?;
        match &*self.versioned_since.lock().expect("versioning mutex") {
            None => Ok(()),
            Some(status) => Err(StoreError::unavailable(format!(
                "writing {name}: versioning is {status} on bucket `{}` since stategate started, and OSS \
                 ignores x-oss-forbid-overwrite on versioned buckets, so two clients could both get a \
                 lock; move the states to a bucket that never had versioning (stategate migrate), or \
                 restart with allow_unsafe_locks: true",
                self.bucket
            ))),
        }
    }

    async fn put_unbounded(
        &self,
        key: &str,
        body: &Payload,
        md5: &[u8; 16],
        condition: Condition,
    ) -> Result<Version, StoreError> {
        let name = self.object_name(key);
        if condition == Condition::IfAbsent {
            self.check_creates(&name).await?;
        }
        if let Condition::IfMatch(expected) = &condition {
            // Not atomic (see the module comment): a change landing between
            // this HEAD and the request below is lost.
            compare_first(self.stat_unbounded(key), expected).await?;
        }
        let options = Some(self.put_options(md5, condition == Condition::IfAbsent));
        let put = match body {
            Payload::Memory(bytes) => {
                self.client
                    .put_object_from_buffer(&self.bucket, &name, bytes.to_vec(), options)
                    .await
            }
            // Sent as it is read, with its length.
            Payload::File(file) => {
                self.client
                    .put_object_from_file(&self.bucket, &name, file.reopen_path(), options)
                    .await
            }
        };
        match put {
            Ok(PutObjectResult::ApiResponse(r)) if !r.etag.is_empty() => Ok(Version(r.etag)),
            // A simple put's ETag is the body's MD5 in upper-case hex.
            Ok(_) => Ok(Version(simple_put_etag(md5))),
            Err(e) if api_code(&e) == Some("FileAlreadyExists") => Err(StoreError::AlreadyExists),
            Err(e) => Err(self.error(&format!("writing {name}"), e)),
        }
    }

    async fn delete_unbounded(&self, key: &str, condition: Condition) -> Result<(), StoreError> {
        let name = self.object_name(key);
        if let Condition::IfMatch(expected) = &condition {
            // Not atomic (see the module comment): a change landing between
            // this HEAD and the request below is lost.
            compare_first(self.stat_unbounded(key), expected).await?;
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

    /// The objects under `prefix` from just after `start_after` up to,
    /// not including, `stop_at`: pages stop being asked for once one
    /// reaches it.
    async fn list_range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        stop_at: Option<&str>,
    ) -> Result<Vec<Entry>, StoreError> {
        let full = self.object_name(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut options = ListObjectsOptionsBuilder::new().max_keys(LIST_PAGE);
            if !full.is_empty() {
                options = options.prefix(&full);
            }
            if let Some(after) = start_after {
                options = options.start_after(self.object_name(after));
            }
            if let Some(t) = token.take() {
                options = options.continuation_token(t);
            }
            let page = self
                .client
                .list_objects(&self.bucket, Some(options.build()))
                .await
                .map_err(|e| self.error("listing objects", e))?;
            let mut reached_stop = false;
            for summary in page.contents {
                // A listing under the prefix holds nothing else: a key that
                // does not begin with it was changed on the way, and
                // skipping it would hide history and leases.
                let Some(key) = summary.key.strip_prefix(&self.prefix) else {
                    return Err(StoreError::unavailable(format!(
                        "listing objects: OSS listed {:?}, which is not under the prefix {:?}",
                        summary.key, self.prefix
                    )));
                };
                if stop_at.is_some_and(|stop| key >= stop) {
                    reached_stop = true;
                    break;
                }
                out.push(Entry {
                    key: key.to_string(),
                    size: summary.size,
                    modified: OffsetDateTime::parse(&summary.last_modified, &Rfc3339).ok(),
                });
            }
            match page.next_continuation_token {
                Some(t) if page.is_truncated && !reached_stop => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// The ETag OSS gives an object made by a simple put: the MD5 of its body
/// in upper-case hex.
fn simple_put_etag(md5: &[u8; 16]) -> String {
    md5.iter().map(|b| format!("{b:02X}")).collect()
}

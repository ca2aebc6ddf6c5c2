//! The S3 store: the client, what the server honours, and the
//! [`Store`] operations on it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::types::ServerSideEncryption;
use bytes::{Bytes, BytesMut};
use time::OffsetDateTime;

use super::config::S3Config;
use super::error::{Failure, Site};
use super::upload::Upload;
use crate::stores::bucket::{
    BucketSeen, CONFLICT_RETRIES, bounded, compare_first, conflict_backoff, network_cause,
};
use crate::stores::payload::spool_dir;
use crate::stores::{
    Capabilities, Condition, Entry, INTERNAL_PREFIX, OpDelete, OpList, OpRead, OpWrite,
    PROBE_PREFIX, Payload, Spooler, Store, StoreError, Version,
};

/// Longest wait for a TCP connection to the S3 server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per S3 request (the SDK retries 5xx, throttling and network errors).
const MAX_ATTEMPTS: u32 = 3;

/// A bucket (or part of one) on an S3-compatible server; cheap to clone.

#[derive(Clone)]
pub struct S3Store(Arc<Bucket>);

/// Everything an operation needs; shared by clones of the store.
pub(super) struct Bucket {
    client: Client,
    pub(super) config: S3Config,
    /// Where errors say the server is: the endpoint, or AWS and the region.
    pub(super) location: String,
    /// The server refuses a PutObject with `If-None-Match: *` on an
    /// existing object (which locks depend on).
    put_if_none_match: bool,
    /// The server refuses a PutObject whose `If-Match` does not match. When
    /// false, `Condition::IfMatch` puts compare the ETag first (not atomic).
    put_if_match: bool,
    /// The same for DeleteObject.
    delete_if_match: bool,
    /// When the bucket was last seen to exist, to tell a HEAD's bodiless
    /// 404 for a missing object from one for a missing bucket.
    bucket_seen: BucketSeen,
}

impl S3Store {
    /// Opens a bucket from validated settings and finds out which
    /// conditional requests its server honours (see the module comment).
    /// A server that cannot be reached names `endpoint`.
    pub async fn connect(config: S3Config) -> Result<Self, StoreError> {
        // `timeout` bounds the whole operation, retries included: a limit
        // per attempt would make a stopped server take 3 x 60 s to answer.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
            .operation_timeout(config.timeout)
            .operation_attempt_timeout(config.timeout)
            .build();
        let clients = super::http::clients(config.endpoint.as_deref());
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .http_client(clients.credentials)
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
        s3 = s3.http_client(clients.requests);
        let location = match &config.endpoint {
            Some(e) => e.clone(),
            None => format!("AWS S3 ({})", config.region),
        };
        let mut bucket = Bucket {
            client: Client::from_conf(s3.build()),
            config,
            location,
            put_if_none_match: true,
            put_if_match: true,
            delete_if_match: true,
            bucket_seen: BucketSeen::default(),
        };
        bucket.detect_conditions().await.map_err(|f| {
            f.into_store_error("probing conditional requests")
                .at_setting("endpoint")
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
    /// Translates an SDK error. `what` says what was being done, e.g.
    /// `writing states/a.tflock`.
    pub(super) fn failure<E>(
        &self,
        what: &str,
        err: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Failure
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let site = Site {
            bucket: &self.config.bucket,
            location: &self.location,
            timeout: self.config.timeout,
            region: &self.config.region,
        };
        site.failure(what, err)
    }

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

    /// Writes a probe object with conditions that cannot hold: a second
    /// create with `If-None-Match: *`, then `If-Match` on PutObject and on
    /// DeleteObject; a server that honours them refuses all three. Also proves the bucket is reachable with these
    /// credentials before anything else runs.
    async fn detect_conditions(&mut self) -> Result<(), Failure> {
        let key = format!(
            "{PROBE_PREFIX}s3-conditions-{}-{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        let absent = Version("\"00000000000000000000000000000000\"".into());
        let body = Upload::small(Bytes::from_static(b"probe\n"));
        match self.put_once(&key, &body, &Condition::Always).await {
            Ok(_) => {}
            // Credentials that may read but not write (a replica's reader,
            // a key that lost PutObject): what the server honours cannot be
            // seen now. The start-up probe finds the store takes no writes,
            // and it is measured again when the store is opened for writing.
            Err(Failure::Store(StoreError::PermissionDenied { reason, .. }))
                if reason.contains("(AccessDenied)") =>
            {
                return Ok(());
            }
            // A plain write refused as it is carries nothing but the
            // canned ACL the settings add (buckets made since 2023 refuse
            // ACLs: AccessControlListNotSupported).
            Err(Failure::Refused(StoreError::Unavailable(reason))) if self.config.acl.is_some() => {
                return Err(Failure::Store(StoreError::ConfigInvalid {
                    setting: "acl",
                    reason,
                }));
            }
            Err(f) => return Err(f),
        }
        self.put_if_none_match = match self.put_once(&key, &body, &Condition::IfAbsent).await {
            Err(Failure::Precondition) => true,
            Ok(_) => false,
            Err(f) => refused_or(f)?,
        };
        self.put_if_match = match self
            .put_once(
                &key,
                &Upload::small(Bytes::from_static(b"x")),
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
            Ok(()) => self.fetch_once(&key, false).await?.is_some(),
            Err(f) => refused_or(f)?,
        };
        self.delete_once(&key, None).await
    }

    /// One PutObject carrying the condition as a header.
    async fn put_once(
        &self,
        key: &str,
        body: &Upload,
        condition: &Condition,
    ) -> Result<Version, Failure> {
        let stream = body.stream().await.map_err(Failure::Store)?;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .content_type("application/json")
            .content_md5(body.md5())
            .body(stream);
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
            None => Err(Failure::Store(StoreError::unavailable(format!(
                "writing {key}: the server answered without an ETag"
            )))),
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

    /// Reads an object as its bytes arrive: into memory, or, with `spool`,
    /// into an unnamed file once it passes
    /// [`crate::stores::payload::SPOOL_THRESHOLD`], so a large
    /// state is never held whole in memory while a client downloads it.
    async fn fetch_once(
        &self,
        key: &str,
        spool: bool,
    ) -> Result<Option<(Payload, Version)>, Failure> {
        let what = format!("reading {key}");
        let result = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        let Some(output) = self.found(result, &what).await? else {
            return Ok(None);
        };
        let version = Version(output.e_tag().unwrap_or_default().to_string());
        if version.0.is_empty() {
            return Err(Failure::Store(StoreError::unavailable(format!(
                "{what}: the server answered without an ETag"
            ))));
        }
        let broke = |cause: String| {
            Failure::Store(StoreError::unavailable(format!(
                "{what}: the connection to {} broke: {cause}",
                self.location
            )))
        };
        let mut stream = output.body;
        let mut memory = BytesMut::new();
        let mut spooler = spool.then(|| Spooler::new(&spool_dir()));
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| broke(network_cause(&e)))?;
            match spooler.as_mut() {
                Some(spooler) => spooler
                    .push(&piece)
                    .await
                    .map_err(|e| broke(format!("spooling the body: {e}")))?,
                None => memory.extend_from_slice(&piece),
            }
        }
        let body = match spooler {
            Some(spooler) => spooler
                .finish()
                .await
                .map_err(|e| broke(format!("spooling the body: {e}")))?,
            None => Payload::Memory(memory.freeze()),
        };
        Ok(Some((body, version)))
    }

    /// The ETag of an object, `None` when it does not exist, as the
    /// compare-first stand-in for a server that ignores `If-Match` reads it.
    async fn etag_of(&self, key: &str, what: &str) -> Result<Option<Version>, StoreError> {
        self.etag(key).await.map_err(|f| f.into_store_error(what))
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
        let found = self.found(result, &what).await?;
        Ok(found.and_then(|o| o.e_tag().map(|e| Version(e.to_string()))))
    }

    /// The answer to a request about one object, `None` when the object
    /// does not exist. Servers that answer a missing bucket without a code
    /// make it look like a missing object, so the bucket is checked then.
    async fn found<T, E>(
        &self,
        result: Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
        what: &str,
    ) -> Result<Option<T>, Failure>
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match result.map_err(|e| self.failure(what, e)) {
            Ok(o) => Ok(Some(o)),
            Err(Failure::NoSuchKey) => {
                self.check_bucket(what).await?;
                Ok(None)
            }
            Err(f) => Err(f),
        }
    }

    /// HEAD answers 404 without a body for a missing object and for a
    /// missing bucket alike. Before a bodiless 404 is taken for "no such
    /// object", the bucket must have been seen in the last few seconds, or
    /// be seen now (HeadBucket); a missing bucket is then a store failure,
    /// never "no state", which would let a client start over on an empty
    /// state.
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
            Err(Failure::NoSuchKey) => Err(Failure::Store(StoreError::BucketMissing {
                setting: "bucket",
                reason: format!(
                    "{what}: bucket `{}` does not exist at {}",
                    self.config.bucket, self.location
                ),
            })),
            Err(f) => Err(f),
        }
    }
}

/// During detection: a server that refuses a conditional header outright
/// (400, 501) does not support it. Anything else is a real error, a 5xx,
/// throttling or a timeout included: taken for "unsupported", a moment's
/// failure turned compare-and-swap off for the life of the process, or
/// refused the start as if locks were unsafe.
fn refused_or(f: Failure) -> Result<bool, Failure> {
    match f {
        Failure::Refused(_) => Ok(false),
        f => Err(f),
    }
}

#[async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        self.0.describe()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Measured when the store was opened; the generic start-up
            // probe confirms it on an object of its own.
            conditional_create: self.0.put_if_none_match,
            // Both conditional puts and conditional deletes must be atomic
            // for the state layer to do without its write lease: unlock is
            // a conditional delete.
            compare_and_swap: self.0.put_if_match && self.0.delete_if_match,
            // A version is the ETag, the MD5 of the bytes for a simple put.
            unique_versions: false,
            native_lease: false,
        }
    }

    fn max_key_bytes(&self) -> Option<usize> {
        Some(self.0.config.max_key_bytes())
    }

    fn operation_timeout(&self) -> Duration {
        self.0.config.timeout
    }

    async fn read(
        &self,
        key: &str,
        args: OpRead,
    ) -> Result<Option<(Payload, Version)>, StoreError> {
        let what = format!("reading {key}");
        self.bounded(&what, async {
            self.0
                .fetch_once(key, args.streamed)
                .await
                .map_err(|f| f.into_store_error(&what))
        })
        .await
    }

    async fn write(&self, key: &str, body: Payload, args: OpWrite) -> Result<Version, StoreError> {
        let what = format!("writing {key}");
        self.bounded(&what, async {
            // A large body is sent from its file, never held whole.
            let body = Upload::of(body).await?;
            self.put_unbounded(key, &body, args.condition, &what).await
        })
        .await
    }

    async fn delete(&self, key: &str, args: OpDelete) -> Result<(), StoreError> {
        let what = format!("deleting {key}");
        self.bounded(&what, self.delete_unbounded(key, args.condition, &what))
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

    /// Outside the internal area: lists up to it, then from just past it.
    /// S3 lists in key order, so the pages of history are never asked for
    /// (at most the one page that runs into the area).
    async fn list(&self, prefix: &str, args: OpList) -> Result<Vec<Entry>, StoreError> {
        let what = format!("listing `{prefix}`");
        if !args.outside_internal {
            return self
                .bounded(&what, self.list_unbounded(prefix, &what))
                .await;
        }
        self.bounded(&what, async {
            let mut entries = Vec::new();
            for (from, before) in crate::stores::ranges_outside_internal(prefix) {
                // Keys are ASCII up to `~`: no internal key sorts after
                // `.stategate/~`, and no other key between it and `from`.
                let start_after = (from != prefix).then(|| format!("{INTERNAL_PREFIX}~"));
                entries.extend(
                    self.list_range(prefix, start_after.as_deref(), before.as_deref(), &what)
                        .await?,
                );
            }
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(entries)
        })
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
        let server = format!("the S3 server at {}", self.0.location);
        bounded(self.0.config.timeout, what, &server, op).await
    }

    async fn put_unbounded(
        &self,
        key: &str,
        body: &Upload,
        condition: Condition,
        what: &str,
    ) -> Result<Version, StoreError> {
        let bucket = &self.0;
        if let Condition::IfMatch(expected) = &condition
            && !bucket.put_if_match
        {
            compare_first(bucket.etag_of(key, what), expected).await?;
        }
        for attempt in 0..=CONFLICT_RETRIES {
            match bucket.put_once(key, body, &condition).await {
                Ok(v) => return Ok(v),
                Err(Failure::Precondition) if condition == Condition::IfAbsent => {
                    return Err(StoreError::AlreadyExists);
                }
                Err(Failure::Conflict) if attempt < CONFLICT_RETRIES => {
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                }
                // S3 answers a conditional write to a missing key with 404:
                // the object the condition names is gone (or the bucket).
                Err(Failure::NoSuchKey) if matches!(condition, Condition::IfMatch(_)) => {
                    bucket
                        .check_bucket(what)
                        .await
                        .map_err(|f| f.into_store_error(what))?;
                    return Err(StoreError::PreconditionFailed);
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
            compare_first(bucket.etag_of(key, what), expected).await?;
            return bucket
                .delete_once(key, None)
                .await
                .map_err(|f| f.into_store_error(what));
        }
        for attempt in 0..=CONFLICT_RETRIES {
            match bucket.delete_once(key, version).await {
                Ok(()) => return Ok(()),
                Err(Failure::Conflict) if attempt < CONFLICT_RETRIES => {
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                }
                Err(f) => return Err(f.into_store_error(what)),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn list_unbounded(&self, prefix: &str, what: &str) -> Result<Vec<Entry>, StoreError> {
        let mut entries = self.list_range(prefix, None, None, what).await?;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// The objects under `prefix` from just after `start_after` (S3's
    /// `StartAfter`) up to, not including, `stop_at`: pages stop being
    /// asked for once one reaches it.
    async fn list_range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        stop_at: Option<&str>,
        what: &str,
    ) -> Result<Vec<Entry>, StoreError> {
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
                .set_start_after(start_after.map(|k| bucket.full_key(k)))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| bucket.failure(what, e).into_store_error(what))?;
            let mut reached_stop = false;
            for object in page.contents() {
                let Some(key) = object
                    .key()
                    .and_then(|k| k.strip_prefix(store_prefix.as_str()))
                else {
                    continue;
                };
                if stop_at.is_some_and(|stop| key >= stop) {
                    reached_stop = true;
                    break;
                }
                entries.push(Entry {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: object
                        .last_modified()
                        .and_then(|t| OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).ok()),
                });
            }
            token = page.next_continuation_token().map(str::to_string);
            if reached_stop || !page.is_truncated().unwrap_or(false) || token.is_none() {
                break;
            }
        }
        Ok(entries)
    }
}

//! Translating the SDK's errors into [`StoreError`]s, next to the calls:
//! the answers the store handles itself (a failed condition, a raced
//! conditional write, a missing object) stay apart as [`Failure`]s, the
//! rest become the store's answer with one plain reason naming the bucket
//! and the server, never a secret.

use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::stores::StoreError;
use crate::stores::bucket::network_cause;

/// What a failed S3 request means to this store.
#[derive(Debug)]
pub(super) enum Failure {
    /// 412: the request's condition did not hold.
    Precondition,
    /// 409 `ConditionalRequestConflict`: another conditional write to the
    /// same key was in flight; try again.
    Conflict,
    /// 404 `NoSuchKey` (or a 404 without a body, from HEAD).
    NoSuchKey,
    /// 400 or 501 of another kind than those above: the server refuses the
    /// request as it is (a header it does not implement, say); the store
    /// error says so. Only this tells a server without conditional
    /// requests from one failing for a while.
    Refused(StoreError),
    /// The store cannot serve the request.
    Store(StoreError),
}

impl Failure {
    /// The store error for a failure the caller did not handle.
    pub(super) fn into_store_error(self, what: &str) -> StoreError {
        match self {
            Failure::Precondition => StoreError::PreconditionFailed,
            Failure::Conflict => {
                StoreError::unavailable(format!("{what}: kept conflicting with another write"))
            }
            Failure::NoSuchKey => StoreError::unavailable(format!("{what}: the object is gone")),
            Failure::Refused(e) | Failure::Store(e) => {
                // The HTTP layer logs the status; the cause is only known here.
                tracing::warn!(store = "s3", "{e}");
                e
            }
        }
    }
}

/// The bucket a failed call was made on, as its messages name it.
pub(super) struct Site<'a> {
    pub bucket: &'a str,
    /// The server, as the store describes it.
    pub location: &'a str,
    /// The store's `timeout`, named when the server did not answer within it.
    pub timeout: Duration,
    /// The configured region, named when the server wants another.
    pub region: &'a str,
}

impl Site<'_> {
    /// Translates an SDK error. `what` says what was being done, e.g.
    /// `writing states/a.tflock`.
    pub(super) fn failure<E>(
        &self,
        what: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().unwrap_or_default().to_string();
        // The error code says what failed. S3's own message goes to the
        // log only: the reason reaches clients in 503 answers, and the
        // message can name the account and role the server runs as
        // (`User: arn:aws:sts::123456789012:assumed-role/...`).
        if let Some(message) = err.message().filter(|m| !m.trim().is_empty()) {
            tracing::info!(store = "s3", %what, status, %code, message, "the S3 server refused a request");
        }
        let reason = |text: String| format!("{what}: {text}");
        let unavailable = |text: String| Failure::Store(StoreError::Unavailable(reason(text)));
        let bucket = self.bucket;
        let location = self.location;
        let silent = || {
            unavailable(format!(
                "the S3 server at {location} did not answer within {}s",
                self.timeout.as_secs()
            ))
        };
        match status {
            Some(412) => Failure::Precondition,
            Some(409) if code == "ConditionalRequestConflict" => Failure::Conflict,
            Some(404) if code == "NoSuchBucket" => Failure::Store(StoreError::BucketMissing {
                setting: "bucket",
                reason: reason(format!("bucket `{bucket}` does not exist at {location}")),
            }),
            Some(404) => Failure::NoSuchKey,
            Some(401 | 403) => Failure::Store(StoreError::PermissionDenied {
                setting: "accessKeyID",
                reason: reason(format!(
                    "the S3 server at {location} refused the credentials or denied access to bucket `{bucket}` ({})",
                    if code.is_empty() {
                        format!("HTTP {}", status.unwrap_or_default())
                    } else {
                        code
                    }
                )),
            }),
            Some(301) | Some(400)
                if matches!(
                    code.as_str(),
                    "PermanentRedirect"
                        | "AuthorizationHeaderMalformed"
                        | "IllegalLocationConstraintException"
                ) || (status == Some(301) && code.is_empty()) =>
            {
                Failure::Store(StoreError::ConfigInvalid {
                    setting: "region",
                    reason: reason(format!(
                        "bucket `{bucket}` is not in region `{}` ({code})",
                        self.region
                    )),
                })
            }
            Some(s) => {
                let answered = unavailable(format!(
                    "the S3 server at {location} answered HTTP {s}{}",
                    if code.is_empty() {
                        String::new()
                    } else {
                        format!(" ({code})")
                    }
                ));
                match (s, answered) {
                    (400 | 501, Failure::Store(e)) => Failure::Refused(e),
                    (_, answered) => answered,
                }
            }
            None => match &err {
                SdkError::TimeoutError(_) => silent(),
                SdkError::DispatchFailure(d) if d.is_timeout() => silent(),
                // The credential chain is asked while the request is
                // dispatched: its failure is no fault of the endpoint.
                _ if DisplayErrorContext(&err)
                    .to_string()
                    .to_ascii_lowercase()
                    .contains("credentials") =>
                {
                    Failure::Store(StoreError::PermissionDenied {
                        setting: "accessKeyID",
                        reason: reason(format!(
                            "no usable S3 credentials: {}; set accessKeyID and accessKeySecret \
                             (access_key, secret_key), or give the AWS credential chain what it reads: \
                             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, web identity, \
                             or a container or instance role",
                            network_cause(&err)
                        )),
                    })
                }
                SdkError::DispatchFailure(_) => unavailable(format!(
                    "cannot reach the S3 server at {location}: {}",
                    network_cause(&err)
                )),
                SdkError::ResponseError(_) => unavailable(format!(
                    "the S3 server at {location} sent an answer that could not be read: {}",
                    network_cause(&err)
                )),
                _ => unavailable(format!(
                    "the S3 request could not be made: {}",
                    network_cause(&err)
                )),
            },
        }
    }
}

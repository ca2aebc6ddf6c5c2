//! Translating the SDK's errors into [`StoreError`]s, next to the calls,
//! each naming the setting to check where one is at fault.

use ali_oss_rs::error::Error as OssError;

use std::time::Duration;

use crate::stores::StoreError;
use crate::stores::bucket::network_cause;

/// The bucket a failed call was made on, as its messages name it.
pub(super) struct Site<'a> {
    pub bucket: &'a str,
    pub endpoint_url: &'a str,
    /// The store's `timeout`, named when OSS did not answer within it.
    pub timeout: Duration,
}

impl Site<'_> {
    /// Translates an SDK error into one clear reason, of the kind that
    /// names the setting at fault. Messages name the bucket and endpoint,
    /// never a secret.
    pub(super) fn error(&self, context: &str, e: OssError) -> StoreError {
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
        let reason = format!("{context}: {reason}");
        let denied = |setting| StoreError::PermissionDenied {
            setting,
            reason: reason.clone(),
        };
        match &e {
            OssError::ApiError(api) => match api.code.as_str() {
                "InvalidAccessKeyId" | "AccessDenied" => denied("access_key"),
                "SignatureDoesNotMatch" => denied("secret_key"),
                "InvalidSecurityToken"
                | "SecurityTokenExpired"
                | "AccessKeyIdAndSecurityTokenNotMatch" => denied("security_token"),
                "NoSuchBucket" => StoreError::BucketMissing {
                    setting: "bucket",
                    reason,
                },
                _ => StoreError::Unavailable(reason),
            },
            OssError::StatusError(s) if *s == reqwest::StatusCode::FORBIDDEN => {
                denied("secret_key")
            }
            _ => StoreError::Unavailable(reason),
        }
    }
}

/// The text of the first `<tag>…</tag>` in a small XML document.
pub(super) fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim())
}

pub(super) fn api_code(e: &OssError) -> Option<&str> {
    match e {
        OssError::ApiError(api) => Some(api.code.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioning_status_is_read_from_xml() {
        let xml = "<?xml version=\"1.0\"?><VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>";
        assert_eq!(xml_text(xml, "Status"), Some("Suspended"));
        assert_eq!(xml_text("<VersioningConfiguration/>", "Status"), None);
    }
}

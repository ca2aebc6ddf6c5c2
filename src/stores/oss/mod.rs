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
//! bytes and the version returned always belong together; a read of the
//! bytes alone ([`crate::stores::OpRead::bytes_only`], a history pointer)
//! is the GET only.
//!
//! Every store operation runs within the `timeout` setting (its requests
//! and the transfer), so an unreachable or silent endpoint answers 503
//! instead of hanging. Secrets are kept inside the SDK client
//! (which has no `Debug`), never formatted into messages or logs.

mod config;
mod error;
mod store;

pub use config::OssConfig;
pub use store::OssStore;

use super::{Backend, OpenError, open_with};
use crate::settings::Setting;

/// Registration of the OSS store.
pub static BACKEND: Backend = Backend {
    name: "oss",
    summary: "an Alibaba Cloud OSS bucket (locks with x-oss-forbid-overwrite)",
    settings: SETTINGS,
    open: |settings| {
        open_with(settings, OssConfig::from_settings, |config| async move {
            OssStore::connect(config)
                .await
                .map_err(|reason| OpenError::store("oss store", reason))
        })
    },
};

pub(crate) const SETTINGS: &[Setting] = &[
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
        default: Some("60s"),
        help: "how long one operation on OSS may take, the transfer included, before it answers 503 (60, 60s, 2m)",
    },
];

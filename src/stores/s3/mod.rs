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

mod config;
mod error;
mod http;
mod store;
mod upload;

pub use config::S3Config;
pub use store::S3Store;

use super::{Backend, OpenError, open_with};
use crate::settings::Setting;

/// Registration of the S3 store.
pub static BACKEND: Backend = Backend {
    name: "s3",
    summary: "a bucket on AWS S3 or any S3-compatible server",
    settings: SETTINGS,
    open: |settings| {
        open_with(settings, S3Config::from_settings, |config| async move {
            S3Store::connect(config)
                .await
                .map_err(|reason| OpenError::store("s3 store", reason))
        })
    },
};

pub(crate) const SETTINGS: &[Setting] = &[
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
        default: Some("60s"),
        help: "how long one operation on S3 may take, its retries included, before it answers 503 (60, 60s, 2m)",
    },
];

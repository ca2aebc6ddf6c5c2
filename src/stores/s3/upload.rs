//! The body of a PutObject, a large one sent from its file.
//!
//! S3 checks `Content-MD5` against what arrives, so the digest is taken
//! first (a file a piece at a time). A body in memory is sent as it is and
//! signed with its SHA-256; a body in a file is read from the file as it is
//! sent, never held whole, and signed as `UNSIGNED-PAYLOAD` (what the SDK
//! does for any body it cannot hash in advance), the MD5 still binding it.

use aws_sdk_s3::primitives::{ByteStream, Length};
use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};

use crate::stores::{Payload, StoreError};

/// A body ready to send, with its `Content-MD5`.
pub(super) struct Upload {
    body: Payload,
    md5: String,
}

impl Upload {
    /// A small body in memory (the store's own probe objects).
    pub(super) fn small(body: Bytes) -> Self {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
        Upload {
            body: Payload::Memory(body),
            md5,
        }
    }

    /// Any body, its digest taken a piece at a time.
    pub(super) async fn of(body: Payload) -> Result<Self, StoreError> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(body.md5().await?);
        Ok(Upload { body, md5 })
    }

    /// The base64 MD5 of the body.
    pub(super) fn md5(&self) -> &str {
        &self.md5
    }

    /// The body as the SDK sends it. A file is opened again for each
    /// attempt, so an attempt the SDK retries starts from the first byte.
    pub(super) async fn stream(&self) -> Result<ByteStream, StoreError> {
        match &self.body {
            Payload::Memory(bytes) => Ok(ByteStream::from(bytes.clone())),
            Payload::File(file) => ByteStream::read_from()
                .path(file.reopen_path())
                .length(Length::Exact(self.body.len()))
                .build()
                .await
                .map_err(|e| StoreError::unavailable(format!("reading a spooled body: {e}"))),
        }
    }
}

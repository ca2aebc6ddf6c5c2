//! `storageType: s3` (placeholder until the store lands).

use super::Backend;

/// Registration of the s3 store.
pub static BACKEND: Backend = Backend {
    name: "s3",
    summary: "not yet available",
    settings: &[],
    open: |_| {
        Box::pin(async {
            Err(crate::config::ConfigError::invalid(
                "storageType",
                "s3 is not built yet",
            ))
        })
    },
};

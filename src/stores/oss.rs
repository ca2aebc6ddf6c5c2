//! `storageType: oss` (placeholder until the store lands).

use super::Backend;

/// Registration of the oss store.
pub static BACKEND: Backend = Backend {
    name: "oss",
    summary: "not yet available",
    settings: &[],
    open: |_| {
        Box::pin(async {
            Err(crate::config::ConfigError::invalid(
                "storageType",
                "oss is not built yet",
            ))
        })
    },
};

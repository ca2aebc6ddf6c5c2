//! End-to-end tests: the built `stategate` binary, driven by the real
//! `terraform` CLI and raw HTTP, against every store with its real peer.
//! `conformance` is the suite every store must pass over HTTP; the other
//! modules hold what is specific to one store or one concern. The helpers
//! (`support`, in `tests/helpers/`) are shared with the `contract` target,
//! which calls the `Store` trait of every store directly.

#[macro_use]
mod conformance;
#[path = "../helpers/mod.rs"]
mod support;

mod attacks;
mod auth;
mod cli;
#[cfg(all(feature = "s3", feature = "oss"))]
mod cloud_races;
mod configuration;
mod crash;
#[cfg(feature = "db")]
mod db;
mod degraded;
// The documents show every store, so their snippets need every store's peer.
#[cfg(all(feature = "s3", feature = "oss", feature = "db"))]
mod docs;
mod downloads;
mod encryption;
mod explore;
mod history_paging;
mod hostile;
mod large_views;
mod limits;
mod listing;
mod local_sqlite;
#[cfg(feature = "s3")]
mod migrate;
mod nginx;
mod notify;
mod oidc;
mod operations;
#[cfg(feature = "oss")]
mod oss;
#[cfg(feature = "s3")]
mod s3;
mod sqlite_upgrade;
mod streaming;
mod tls;
mod ui;

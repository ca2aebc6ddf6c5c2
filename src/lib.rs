//! stategate: a remote state server for Terraform and OpenTofu's built-in
//! `backend "http"`, with locking, version history and stale-write
//! protection, storing states on local disk, SQLite, S3, OSS or a MySQL,
//! MariaDB or PostgreSQL database.
//!
//! How a request flows, and which module owns each step:
//!
//! - [`server`] accepts connections (hyper 1 on tokio, HTTPS through
//!   [`tls`]), guards them with limits and shuts down gracefully; it hands
//!   each request to [`protocol`].
//! - [`protocol`] turns HTTP into calls on [`state::States`] and results back
//!   into HTTP: URL and key parsing, LockInfo, and the one place where errors
//!   become status codes.
//! - [`state`] holds the rules, written once for every store: object keys
//!   and workspaces, locking, the write rules (lock holder, lineage and
//!   serial), and version history.
//! - [`stores`] holds the storage primitives (get, conditional put and
//!   delete, list) and one module per backend; it knows nothing of HTTP or
//!   Terraform.
//! - [`auth`] turns credentials into an identity with access levels on
//!   key patterns; [`audit`] writes one JSON line per security-relevant
//!   action.
//! - [`metrics`] counts what `/metrics` shows, for the server and the
//!   protocol.
//! - `migrate_pg` (with the `db` feature) copies the workspaces of
//!   Terraform's own `pg` backend into the configured store.
//! - [`config`] merges the YAML file, the environment and the command line
//!   into validated settings; the binary's `cli` module is the command line.
//!
//! Dependencies point one way: `server -> protocol -> state -> stores`.

pub mod audit;
pub mod auth;
pub mod config;
pub mod metrics;
#[cfg(feature = "db")]
pub mod migrate_pg;
pub mod protocol;
pub mod server;
pub mod state;
pub mod stores;
pub mod tls;

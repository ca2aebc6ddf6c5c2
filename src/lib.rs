//! stategate: a remote state server for Terraform and OpenTofu's built-in
//! `backend "http"`, with locking, version history and stale-write
//! protection, storing states on local disk, SQLite, S3, OSS or a MySQL,
//! MariaDB or PostgreSQL database.
//!
//! How a request flows, and which module owns each step:
//!
//! - [`app`] builds the running application from validated settings (the
//!   certificates, the `auth` section, the audit log, the store and its
//!   rules, the dashboard) in one place, for `serve`, `check`, tests and
//!   benchmarks alike.
//! - [`server`] accepts connections (hyper 1 on tokio, HTTPS through
//!   [`tls`]), guards them with limits and shuts down gracefully; it hands
//!   each request to [`protocol`].
//! - [`protocol`] turns HTTP into reads of [`state::States`] and calls of
//!   [`ops`], and results back into HTTP: URL and key parsing, LockInfo,
//!   and the one place where errors become status codes.
//! - [`ops`] holds each change to a state once (write, lock, unlock,
//!   force-unlock, restore, push, delete, purge) for every entry point:
//!   the state URLs, the dashboard and the operator commands. It records
//!   each as a typed event, which [`audit`] writes and [`metrics`] counts.
//! - [`state`] holds the rules, written once for every store: object keys
//!   and workspaces, locking, the write rules (lock holder, lineage and
//!   serial), and version history.
//! - [`stores`] holds the storage primitives (get, conditional put and
//!   delete, list) and one module per backend; it knows nothing of HTTP or
//!   Terraform.
//! - [`auth`] turns credentials into an identity with access levels on
//!   key patterns, and decides, in one pure function, what it may do;
//!   [`audit`] writes one JSON line per security-relevant action.
//! - [`ui`] is the dashboard at `/ui/` and its JSON API at `/api/v1/`:
//!   it plugs into [`protocol`] as [`protocol::Pages`], reads through
//!   [`state`] and changes through [`ops`]; nothing below imports it.
//! - [`notify`] sends the events of [`ops`] that the `notifications:`
//!   section asks for, through an outbox in the store, signed and at
//!   least once, from a loop beside the server (never in a request).
//! - [`explore`] keeps an index of what every state holds (resource
//!   types, providers, modules, addresses, `terraform_version`, writers and
//!   locks) for fleet-wide searches, following this server's changes and
//!   listing the store for other replicas'; it reads through [`state`]
//!   and decides visibility with [`auth`]'s globs.
//! - [`logging`] writes the text log's fields, one event to a line
//!   whatever a client put in them.
//! - [`metrics`] counts what `/metrics` shows, for the server and the
//!   protocol.
//! - [`settings`] is the leaf every layer may read: store setting tables
//!   and their merged values, the typed server sections, and
//!   [`settings::ConfigError`]. [`config`] merges the YAML file, the
//!   environment and the command line into validated settings; the
//!   binary's `cli` module is the command line.
//! - [`migrate`] copies states between stores, and `migrate_pg` (with the
//!   `db` feature) the workspaces of Terraform's own `pg` backend, through
//!   the state rules; [`loadtest`] drives a deployment as Terraform does.
//!
//! Dependencies point one way: `server -> protocol -> ops -> state ->
//! stores -> settings`, with `config` on top reading every layer's settings and
//! nothing below importing it; a test of the `crate::` paths in `src/`
//! keeps it so.

pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod explore;
pub mod loadtest;
pub mod logging;
pub mod metrics;
pub mod migrate;
#[cfg(feature = "db")]
pub mod migrate_pg;
pub mod notify;
pub mod ops;
pub mod protocol;
pub mod server;
pub mod settings;
pub mod state;
pub mod stores;
pub mod tls;
pub mod ui;

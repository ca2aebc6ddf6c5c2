//! `storageType: db`: objects as rows of a MySQL, MariaDB or PostgreSQL
//! database, so several stategate replicas behind one load balancer share
//! one store (the Kusion seed's `db` backend: `dbHost`, `dbName`, `dbPort`,
//! `dbUser`, `dbPassword`).
//!
//! - `config` turns the merged settings into a typed [`DbConfig`].
//! - `store` is the [`Store`](super::Store) on a connection pool: the
//!   schema and its migrations, conditional writes as transactions, and
//!   the translation of database errors into [`StoreError`](super::StoreError).
//!
//! Tables (all names start with `dbTablePrefix`): `objects` holds one row
//! per key with its generation (the version token), `chunks` holds the
//! bodies in rows of at most 4 MiB keyed by generation (so states far larger
//! than MariaDB's default 16 MiB packet fit), `generation` (a counter on
//! MySQL, a sequence on PostgreSQL) hands out generations that are never
//! reused, and `schema_version` says which migrations ran.

use std::sync::Arc;

use super::{Backend, Store};

pub mod config;
mod store;

pub use config::{DbConfig, Engine};
pub use store::{DbStore, SCHEMA_VERSION};

/// Registration of the db store.
pub static BACKEND: Backend = Backend {
    name: "db",
    summary: "a MySQL, MariaDB or PostgreSQL database shared by every replica",
    settings: config::SETTINGS,
    open: |settings| {
        Box::pin(async move {
            let config = DbConfig::from_settings(&settings)?;
            Ok(Arc::new(DbStore::open(config).await?) as Arc<dyn Store>)
        })
    },
};

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

use super::{Backend, open_with};

/// Runs the same code on whichever pool the store has; the two arms differ
/// only in the types sqlx infers.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::stores::db::connect::Pool::Mysql($p) => $body,
            $crate::stores::db::connect::Pool::Postgres($p) => $body,
        }
    };
}

/// Listing rows (`object_key, size, modified_ns`) as entries, for either
/// engine's row type.
macro_rules! entries {
    ($rows:expr) => {
        $rows
            .into_iter()
            .map(|r| {
                let ns: i64 = r.try_get(2)?;
                Ok(Entry {
                    key: r.try_get(0)?,
                    size: r.try_get::<i64, _>(1)? as u64,
                    modified: OffsetDateTime::from_unix_timestamp_nanos(ns as i128).ok(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
    };
}

pub mod config;
mod connect;
mod failure;
mod rows;
mod sql;
mod store;

pub use config::{DbConfig, Engine};
pub use sql::SCHEMA_VERSION;
pub use store::DbStore;

/// Registration of the db store.
pub static BACKEND: Backend = Backend {
    name: "db",
    summary: "a MySQL, MariaDB or PostgreSQL database shared by every replica",
    settings: config::SETTINGS,
    open: |settings| {
        open_with(settings, DbConfig::from_settings, |config| async move {
            Ok(DbStore::open(config).await?)
        })
    },
};

//! `stategate migrate-from-terraform-pg`: copies every workspace that
//! Terraform's own `pg` backend keeps into the configured store, through
//! the copy step `stategate migrate` uses ([`crate::migrate::copy_state`]):
//! written through the state rules with history, skipped when identical,
//! never over a newer serial, another lineage or the same serial with
//! other content, read back after.
//!
//! Terraform's pg backend keeps one row per workspace in
//! `<schema>.states (id bigserial, name text unique, data text)`; the
//! default workspace is the row named `default`. A run of `terraform` locks
//! a workspace with `pg_try_advisory_lock(<row id>)` on its own session,
//! so this command takes the same lock while it copies a row: no native
//! apply can write mid-copy, and a workspace that stays locked is reported,
//! not copied.
//!
//! The `default` workspace lands at `KEY`, every other one at `KEY` in that
//! workspace (reached over HTTP with `?workspace=<name>`). Running it again
//! is safe: a state already identical is skipped, and one that stategate
//! holds with a newer serial (or another lineage) is refused, not
//! overwritten.

use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use crate::migrate::Copied;
use crate::state::{StateError, StateRef, States};

/// What happened to one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Copied and read back identical; the state's serial.
    Copied { serial: Option<u64> },
    /// stategate already held exactly these bytes.
    Identical,
    /// The workspace row has no state yet.
    Empty,
    /// stategate holds a newer serial or another lineage, or the state is
    /// locked in stategate: left as it is.
    Refused(String),
    /// The copy did not happen (locked in PostgreSQL, bad name, store error).
    Failed(String),
}

impl Outcome {
    /// Whether a rerun would have something left to do.
    pub fn is_problem(&self) -> bool {
        matches!(self, Outcome::Refused(_) | Outcome::Failed(_))
    }
}

/// One workspace of the source and what happened to it.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The workspace name in Terraform's `states` table.
    pub workspace: String,
    /// Where it went, when the name is a valid stategate workspace.
    pub target: Option<StateRef>,
    pub outcome: Outcome,
}

/// Why the migration could not start or go on at all.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// `--conn-str` is not a PostgreSQL URL.
    #[error("--conn-str: {0}")]
    ConnStr(String),
    /// `--schema` is not a plain identifier.
    #[error("--schema: {0}")]
    Schema(String),
    /// The source database failed.
    #[error("the Terraform pg database: {0}")]
    Source(String),
}

/// Where to read from and how long to wait for a workspace that Terraform
/// has locked.
#[derive(Debug, Clone)]
pub struct Source {
    /// Terraform's `conn_str`, a `postgres://` URL. Never printed: it may
    /// hold a password.
    pub conn_str: String,
    /// Terraform's `schema_name`.
    pub schema: String,
    /// How long to wait for a workspace's advisory lock.
    pub lock_wait: Duration,
}

/// Terraform's default `schema_name`.
pub const DEFAULT_SCHEMA: &str = "terraform_remote_state";

fn source_error(e: sqlx::Error) -> MigrateError {
    let reason = match &e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::Io(io) => crate::stores::network_cause(io),
        other => other.to_string(),
    };
    MigrateError::Source(reason)
}

/// Copies every workspace of `source` to `key` in `states`, in name order.
pub async fn migrate(
    states: &States,
    source: &Source,
    key: &str,
) -> Result<Vec<Migrated>, MigrateError> {
    let schema = &source.schema;
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(MigrateError::Schema(format!(
            "`{schema}` is not a plain PostgreSQL name (letters, digits, _)"
        )));
    }
    // The parser takes other schemes too (a `mysql://` URL would be tried
    // as PostgreSQL); Terraform's pg backend takes only these.
    if !["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| source.conn_str.starts_with(scheme))
    {
        return Err(MigrateError::ConnStr(
            "must be a postgres:// (or postgresql://) URL, as Terraform's pg backend takes".into(),
        ));
    }
    // The parser's messages may quote the URL, password included.
    let options = PgConnectOptions::from_str(&source.conn_str)
        .map_err(|_| MigrateError::ConnStr("is not a postgres:// URL that can be parsed".into()))?;
    // One session: the advisory locks belong to it.
    let mut conn = PgConnection::connect_with(&options)
        .await
        .map_err(source_error)?;
    let table = format!("\"{schema}\".states");
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, name FROM {table} ORDER BY name"
    )))
    .fetch_all(&mut conn)
    .await
    .map_err(source_error)?;
    let mut workspaces = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0).map_err(source_error)?;
        let name: String = row.try_get(1).map_err(source_error)?;
        workspaces.push((id, name));
    }

    let mut report = Vec::new();
    for (id, name) in workspaces {
        let target = if name == "default" {
            StateRef::parse(key, None)
        } else {
            StateRef::parse(key, Some(&name))
        };
        let target = target
            .map_err(|e| e.0)
            .and_then(|t| states.canonical(&t).map_err(|e| e.to_string()));
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                report.push(Migrated {
                    workspace: name,
                    target: None,
                    outcome: Outcome::Failed(format!("cannot be a stategate state: {e}")),
                });
                continue;
            }
        };
        if !lock(&mut conn, id, source.lock_wait).await? {
            report.push(Migrated {
                workspace: name,
                target: Some(target),
                outcome: Outcome::Failed(format!(
                    "locked by a running terraform for over {} s; run again when it is done",
                    source.lock_wait.as_secs()
                )),
            });
            continue;
        }
        let outcome = copy_one(&mut conn, &table, id, states, &target).await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(id)
            .execute(&mut conn)
            .await
            .map_err(source_error)?;
        report.push(Migrated {
            workspace: name,
            target: Some(target),
            outcome: outcome?,
        });
    }
    let _ = conn.close().await;
    Ok(report)
}

/// Takes Terraform's lock on a workspace row, as its pg backend does,
/// waiting up to `wait` for a running terraform to finish.
async fn lock(conn: &mut PgConnection, id: i64, wait: Duration) -> Result<bool, MigrateError> {
    let deadline = Instant::now() + wait;
    loop {
        let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(source_error)?;
        if got {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Copies one row while its lock is held: read, write through the state
/// rules, read back.
async fn copy_one(
    conn: &mut PgConnection,
    table: &str,
    id: i64,
    states: &States,
    target: &StateRef,
) -> Result<Outcome, MigrateError> {
    let data: Option<String> = sqlx::query(AssertSqlSafe(format!(
        "SELECT data FROM {table} WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .and_then(|r| r.map(|r| r.try_get::<Option<String>, _>(0)).transpose())
    .map_err(source_error)?
    .flatten();
    let Some(data) = data.filter(|d| !d.trim().is_empty()) else {
        return Ok(Outcome::Empty);
    };
    let body = Bytes::from(data);
    // The same step as `stategate migrate`: write what stategate lacks,
    // never over a newer serial or another lineage, then read back.
    let source = crate::migrate::Source::body(body.clone());
    match crate::migrate::copy_state(states, target, &source, false, false).await {
        Ok(Copied::Written { .. }) => {}
        Ok(Copied::Identical) => return Ok(Outcome::Identical),
        Ok(
            Copied::TargetNewer(why)
            | Copied::Conflict(why)
            | Copied::SourceLocked(why)
            | Copied::Refused(why),
        ) => {
            return Ok(Outcome::Refused(why));
        }
        Ok(Copied::WouldWrite { .. }) => unreachable!("not a dry run"),
        Err(e @ (StateError::Stale(_) | StateError::NotHolder(_) | StateError::Locked(_))) => {
            return Ok(Outcome::Refused(e.to_string()));
        }
        Err(e) => return Ok(Outcome::Failed(e.to_string())),
    }
    let serial = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["serial"].as_u64());
    Ok(Outcome::Copied { serial })
}

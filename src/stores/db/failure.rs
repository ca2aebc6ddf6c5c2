//! Translating sqlx errors into the store's answers, naming the
//! operation, the cause and the setting to check, never a password or a
//! URL; and telling a failed attempt worth repeating from a final one.

use time::OffsetDateTime;

use crate::stores::{StoreError, Version, network_cause};

/// How one attempt at a write ended, when not with success.
pub(super) enum Failed {
    /// For good: this is the answer.
    Store(StoreError),
    /// Lost a race the database resolved by rolling back (deadlock,
    /// serialization failure, a concurrent first create): try again.
    Retry(String),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Store(e)
    }
}

/// Translates a database error: `what` names the operation ("writing
/// x.tfstate"). The text comes from the driver and the server, which
/// never repeat a password.
pub(super) fn unavailable(what: &str, e: &sqlx::Error) -> StoreError {
    StoreError::unavailable(format!("{what}: {}", cause(e)))
}

/// What [`cause`] says of a pool that handed out no connection in time.
/// [`DbStore::bounded`] recognises it and finds out why.
pub(super) const POOL_TIMED_OUT: &str = "no database connection could be made in time";

/// Why a database call failed, in words for the 503.
pub(super) fn cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => format!("the database cannot be reached: {}", network_cause(io)),
        sqlx::Error::PoolTimedOut => POOL_TIMED_OUT.into(),
        sqlx::Error::PoolClosed => "the connection pool is closed (shutting down)".into(),
        sqlx::Error::Tls(t) => format!("TLS to the database failed: {t}"),
        sqlx::Error::Database(d) => {
            let number = d
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|m| m.number());
            refusal(d.code().as_deref(), number, d.message())
        }
        other => other.to_string(),
    }
}

/// The words for a refusal by the database server, from its SQLSTATE
/// `code`, MySQL's error `number` and its message.
pub(super) fn refusal(code: Option<&str>, number: Option<u16>, message: &str) -> String {
    // PostgreSQL's too_many_connections also covers the last slots kept
    // for superusers; MySQL and MariaDB send error 1040 (SQLSTATE 08004,
    // which other rejections share).
    if code == Some("53300") || number == Some(1040) {
        return format!(
            "too many connections: the database server is full and refuses new ones ({message}); \
             raise its connection limit or lower dbMaxConnections on the servers sharing it"
        );
    }
    match code {
        Some(code) => format!("the database refused it: {message} ({code})"),
        None => format!("the database refused it: {message}"),
    }
}

/// A deadlock or serialization failure: the transaction was rolled back
/// whole and may be run again.
pub(super) fn is_retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| matches!(c.as_ref(), "40001" | "40P01"))
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Maps an error inside a write attempt.
pub(super) fn failed(what: &str) -> impl Fn(sqlx::Error) -> Failed + '_ {
    move |e| {
        if is_retryable(&e) {
            Failed::Retry(unavailable(what, &e).to_string())
        } else {
            Failed::Store(unavailable(what, &e))
        }
    }
}

pub(super) fn generation_of(version: &Version) -> Option<i64> {
    version.0.parse().ok()
}

pub(super) fn now_ns() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}

/// A `LIKE` pattern matching exactly the keys that start with `prefix`.
pub(super) fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '!' | '%' | '_') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::db::Engine;
    use crate::stores::db::sql::Sql;

    #[test]
    fn a_full_server_is_named_as_such() {
        let pg = refusal(Some("53300"), None, "sorry, too many clients already");
        let mysql = refusal(Some("08004"), Some(1040), "Too many connections");
        for said in [&pg, &mysql] {
            assert!(said.starts_with("too many connections: "), "{said}");
            assert!(said.contains("dbMaxConnections"), "{said}");
        }
        assert!(pg.contains("sorry, too many clients already"));
        let other = refusal(Some("08004"), Some(1130), "Host is not allowed");
        assert_eq!(
            other,
            "the database refused it: Host is not allowed (08004)"
        );
        assert!(!cause(&sqlx::Error::PoolTimedOut).contains("unreachable"));
    }

    #[test]
    fn like_patterns_match_plain_prefixes_only() {
        assert_eq!(like_prefix("a_b%c!d/"), "a!_b!%c!!d/%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn postgres_placeholders_are_numbered() {
        let sql = Sql::new(Engine::Postgres, "sg_");
        assert_eq!(
            sql.update_object,
            "UPDATE sg_objects SET generation = $1, size = $2, modified_ns = $3 \
             WHERE object_key = $4 AND generation = $5"
        );
        assert!(
            Sql::new(Engine::Mysql, "sg_")
                .update_object
                .contains("generation = ?")
        );
    }
}

//! Opening the connection pool of either engine, with TLS as configured;
//! a server that cannot be reached names the setting to fix.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlSslMode};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgSslMode};
use sqlx::{ConnectOptions as _, Connection as _, Database};

use super::config::{Connection, DbConfig, Engine, SslMode, url_names_ssl_mode};
use super::failure::{POOL_TIMED_OUT, cause, unavailable};
use crate::settings::ConfigError;
use crate::stores::network_cause;

/// One engine's connection options: `$Options` parsed from `dbURL` (with
/// `$ssl_mode` when the URL names none), or `$new` given the separate
/// settings, with `$ssl_mode` and the CA file
/// through the setter `$ca`. A macro because the two drivers name these
/// setters alike on types that share no trait for them.
macro_rules! options {
    ($config:expr, $Options:ty, $new:expr, $ssl_mode:expr, $ca:ident) => {
        match &$config.connection {
            // The parser's message may quote the URL, password included.
            Connection::Url(url) => {
                let o = <$Options>::from_str(url).map_err(|_| {
                    ConfigError::invalid("dbURL", "cannot be parsed as a database URL")
                })?;
                // dbSSLMode, unless the URL says (`DbConfig` refuses both).
                match url_names_ssl_mode(url) {
                    true => o,
                    false => o.ssl_mode($ssl_mode),
                }
            }
            Connection::Parts {
                host,
                port,
                database,
                user,
                password,
                ssl_root_cert,
            } => {
                let mut o = $new
                    .host(host)
                    .port(*port)
                    .database(database)
                    .username(user)
                    .ssl_mode($ssl_mode);
                if let Some(password) = password {
                    o = o.password(password);
                }
                if let Some(ca) = ssl_root_cert {
                    o = o.$ca(ca);
                }
                o
            }
        }
    };
}

/// Opens the pool and checks one connection, so a wrong host, password or
/// database name stops start-up with the setting to fix.
pub(super) async fn connect(config: &DbConfig) -> Result<Pool, ConfigError> {
    let (mysql_ssl, pg_ssl) = ssl_modes(config.ssl_mode);
    let pool = match config.engine {
        Engine::Mysql => Pool::Mysql(lazy_pool(
            config,
            options!(
                config,
                MySqlConnectOptions,
                MySqlConnectOptions::new(),
                mysql_ssl,
                ssl_ca
            ),
        )),
        Engine::Postgres => {
            let new = PgConnectOptions::new_without_pgpass().application_name("stategate");
            Pool::Postgres(lazy_pool(
                config,
                options!(config, PgConnectOptions, new, pg_ssl, ssl_root_cert),
            ))
        }
    };
    // One real connection now: a refused login is a configuration error
    // the operator must see at start-up, not a 503 later.
    let checked = on_pool!(&pool, p => p.acquire().await.map(drop));
    if let Err(e) = checked {
        let setting = connection_setting(config, &e);
        let cause = match &e {
            // The pool retries a refused connection until its deadline and
            // then reports only the time-out.
            sqlx::Error::PoolTimedOut => match why_no_connection(&pool, config).await {
                full if full.starts_with("too many connections") => format!("connecting: {full}"),
                _ => format!(
                    "no connection to the {} server within {} s (is it running, and are {} right?)",
                    config.engine.name(),
                    config.connect_timeout.as_secs(),
                    match config.connection {
                        Connection::Url(_) => "the host and port in dbURL",
                        Connection::Parts { .. } => "dbHost and dbPort",
                    }
                ),
            },
            other => unavailable("connecting", other).to_string(),
        };
        return Err(ConfigError::invalid(setting, cause));
    }
    Ok(pool)
}

/// `dbSSLMode` in each driver's words.
fn ssl_modes(mode: SslMode) -> (MySqlSslMode, PgSslMode) {
    match mode {
        SslMode::Disable => (MySqlSslMode::Disabled, PgSslMode::Disable),
        SslMode::Prefer => (MySqlSslMode::Preferred, PgSslMode::Prefer),
        SslMode::Require => (MySqlSslMode::Required, PgSslMode::Require),
        SslMode::VerifyCa => (MySqlSslMode::VerifyCa, PgSslMode::VerifyCa),
        SslMode::VerifyFull => (MySqlSslMode::VerifyIdentity, PgSslMode::VerifyFull),
    }
}

/// A pool of at most `dbMaxConnections` that connects when first used and
/// waits `connect_timeout` for a connection.
fn lazy_pool<DB: Database>(
    config: &DbConfig,
    options: <DB::Connection as sqlx::Connection>::Options,
) -> sqlx::Pool<DB> {
    PoolOptions::<DB>::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.connect_timeout)
        .connect_lazy_with(options)
}

/// Largest chunk row: well under MariaDB's default 16 MiB packet (and
/// less where the server's `max_allowed_packet` is smaller, see
/// [`chunk_bytes`]).
pub(super) const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// The smallest chunk row, whatever the packet limit says.
pub(super) const MIN_CHUNK_BYTES: usize = 64 * 1024;

/// The largest chunk row this server takes: [`CHUNK_BYTES`], or on MySQL
/// and MariaDB half their `max_allowed_packet` when that is less (MySQL
/// 5.7's default is 4 MiB, which a 4 MiB chunk and its statement exceed:
/// every state over 4 MiB failed as if the connection were lost).
pub(super) async fn chunk_bytes(config: &DbConfig, pool: &Pool) -> Result<usize, ConfigError> {
    let Pool::Mysql(pool) = pool else {
        return Ok(CHUNK_BYTES);
    };
    let packet: u64 = sqlx::query_scalar("SELECT @@max_allowed_packet")
        .fetch_one(pool)
        .await
        .map_err(|e| {
            ConfigError::invalid(
                connection_setting(config, &e),
                unavailable("reading max_allowed_packet", &e).to_string(),
            )
        })?;
    Ok(usize::try_from(packet / 2)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CHUNK_BYTES, CHUNK_BYTES))
}

pub(super) enum Pool {
    Mysql(MySqlPool),
    Postgres(PgPool),
}

/// Which setting a failure to connect points at.
pub(super) fn connection_setting(config: &DbConfig, e: &sqlx::Error) -> &'static str {
    if let Connection::Url(url) = &config.connection {
        // A mode the URL does not name came from dbSSLMode.
        return match is_tls_failure(e) && !url_names_ssl_mode(url) {
            true => "dbSSLMode",
            false => "dbURL",
        };
    }
    let code = e
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_default();
    let message = e
        .as_database_error()
        .map(|d| d.message().to_ascii_lowercase())
        .unwrap_or_default();
    match code.as_str() {
        // Login refused (PostgreSQL 28P01/28000, MySQL 1045 = 28000).
        "28P01" | "28000" => "dbPassword",
        // Unknown database (PostgreSQL 3D000, MySQL 1049 = 42000).
        "3D000" => "dbName",
        _ if message.contains("unknown database") => "dbName",
        // No access to the database (MySQL 1044, which it also answers for
        // a database that does not exist).
        _ if message.contains("access denied for user") && message.contains("to database") => {
            "dbName"
        }
        // The user may not create or change the tables (PostgreSQL 42501,
        // MySQL 1142 "command denied").
        "42501" => "dbUser",
        _ if message.contains("command denied") => "dbUser",
        _ if is_tls_failure(e) => match &config.connection {
            Connection::Parts {
                ssl_root_cert: Some(_),
                ..
            } => "dbSSLRootCert",
            _ => "dbSSLMode",
        },
        _ => "dbHost",
    }
}

/// A failed TLS handshake or certificate check (the driver reports some as
/// I/O errors).
pub(super) fn is_tls_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(io) => network_cause(io).starts_with("TLS failed"),
        _ => false,
    }
}

/// Why `pool` handed out no connection in time. The pool retries a
/// refused connection until its deadline and then reports only the
/// time-out, so one connection made here, outside it, tells a server that
/// is full (its refusal says so), one that is down, and a pool whose own
/// connections all stayed busy apart.
pub(super) async fn why_no_connection(pool: &Pool, config: &DbConfig) -> String {
    let limit = config.connect_timeout;
    let tried = on_pool!(pool, p => {
        let options = p.connect_options();
        tokio::time::timeout(limit, async {
            let connection = options.connect().await?;
            connection.close().await
        })
        .await
    });
    match tried {
        Ok(Ok(())) => format!(
            "all {} connections of the pool stayed busy for {} s (setting `dbMaxConnections`)",
            config.max_connections,
            limit.as_secs()
        ),
        Ok(Err(e)) => cause(&e),
        Err(_) => format!(
            "{POOL_TIMED_OUT}: the {} server did not answer within {} s; it is down or unreachable",
            config.engine.name(),
            limit.as_secs()
        ),
    }
}

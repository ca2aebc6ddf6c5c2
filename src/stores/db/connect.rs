//! Opening the connection pool of either engine, with TLS as configured;
//! a server that cannot be reached names the setting to fix.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions as _, Connection as _};

use super::config::{Connection, DbConfig, Engine, SslMode};
use super::failure::{POOL_TIMED_OUT, cause, unavailable};
use crate::settings::ConfigError;
use crate::stores::network_cause;

/// Opens the pool and checks one connection, so a wrong host, password or
/// database name stops start-up with the setting to fix.
pub(super) async fn connect(config: &DbConfig) -> Result<Pool, ConfigError> {
    let url_error = |_| {
        // The parser's message may quote the URL, password included.
        ConfigError::invalid("dbURL", "cannot be parsed as a database URL")
    };
    let pool = match config.engine {
        Engine::Mysql => {
            let options = match &config.connection {
                Connection::Url(url) => MySqlConnectOptions::from_str(url).map_err(url_error)?,
                Connection::Parts {
                    host,
                    port,
                    database,
                    user,
                    password,
                    ssl_root_cert,
                } => {
                    let mut o = MySqlConnectOptions::new()
                        .host(host)
                        .port(*port)
                        .database(database)
                        .username(user)
                        .ssl_mode(match config.ssl_mode {
                            SslMode::Disable => MySqlSslMode::Disabled,
                            SslMode::Prefer => MySqlSslMode::Preferred,
                            SslMode::Require => MySqlSslMode::Required,
                            SslMode::VerifyCa => MySqlSslMode::VerifyCa,
                            SslMode::VerifyFull => MySqlSslMode::VerifyIdentity,
                        });
                    if let Some(password) = password {
                        o = o.password(password);
                    }
                    if let Some(ca) = ssl_root_cert {
                        o = o.ssl_ca(ca);
                    }
                    o
                }
            };
            Pool::Mysql(
                MySqlPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.connect_timeout)
                    .connect_lazy_with(options),
            )
        }
        Engine::Postgres => {
            let options = match &config.connection {
                Connection::Url(url) => PgConnectOptions::from_str(url).map_err(url_error)?,
                Connection::Parts {
                    host,
                    port,
                    database,
                    user,
                    password,
                    ssl_root_cert,
                } => {
                    let mut o = PgConnectOptions::new_without_pgpass()
                        .host(host)
                        .port(*port)
                        .database(database)
                        .username(user)
                        .ssl_mode(match config.ssl_mode {
                            SslMode::Disable => PgSslMode::Disable,
                            SslMode::Prefer => PgSslMode::Prefer,
                            SslMode::Require => PgSslMode::Require,
                            SslMode::VerifyCa => PgSslMode::VerifyCa,
                            SslMode::VerifyFull => PgSslMode::VerifyFull,
                        })
                        .application_name("stategate");
                    if let Some(password) = password {
                        o = o.password(password);
                    }
                    if let Some(ca) = ssl_root_cert {
                        o = o.ssl_root_cert(ca);
                    }
                    o
                }
            };
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.connect_timeout)
                    .connect_lazy_with(options),
            )
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
                    "no connection to the {} server within {} s (is it running, and are dbHost and dbPort right?)",
                    config.engine.name(),
                    config.connect_timeout.as_secs()
                ),
            },
            other => unavailable("connecting", other).to_string(),
        };
        return Err(ConfigError::invalid(setting, cause));
    }
    Ok(pool)
}

pub(super) enum Pool {
    Mysql(MySqlPool),
    Postgres(PgPool),
}

/// Which setting a failure to connect points at.
pub(super) fn connection_setting(config: &DbConfig, e: &sqlx::Error) -> &'static str {
    if matches!(config.connection, Connection::Url(_)) {
        return "dbURL";
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

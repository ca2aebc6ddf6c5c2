//! Opening the connection pool of either engine, with TLS as configured;
//! a server that cannot be reached names the setting to fix.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use super::config::{Connection, DbConfig, Engine, SslMode};
use super::failure::{connection_setting, unavailable, why_no_connection};
use super::store::Pool;
use crate::settings::ConfigError;

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

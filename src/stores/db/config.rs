//! The db store's settings, in two stages: the raw values of the
//! [`SETTINGS`] table (merged from the file, `STATEGATE_DB_*` and `-C`), then
//! a typed [`DbConfig`] whose every check names the setting it refuses.
//! Defaults are declared once, in the table; the port's default depends on
//! the engine, so it lives in [`Engine::default_port`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::settings::{ConfigError, Setting, StoreSettings};

/// Everything `storageType: db` accepts, beyond the common settings.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "dbType",
        aliases: &["db_type"],
        env: &["STATEGATE_DB_TYPE"],
        secret: false,
        default: Some("mysql"),
        help: "the database engine: mysql (also MariaDB, port 3306) or postgres (port 5432)",
    },
    Setting {
        name: "dbURL",
        aliases: &["dbUrl", "db_url"],
        env: &["STATEGATE_DB_URL"],
        // It may carry the password.
        secret: true,
        default: None,
        help: "the whole connection as one URL (mysql://, mariadb://, postgres://); then dbHost, dbPort, dbName, dbUser, dbPassword and dbSSLRootCert must not be set",
    },
    Setting {
        name: "dbHost",
        aliases: &["db_host"],
        env: &["STATEGATE_DB_HOST"],
        secret: false,
        default: None,
        help: "the database server's host name or address",
    },
    Setting {
        name: "dbPort",
        aliases: &["db_port"],
        env: &["STATEGATE_DB_PORT"],
        secret: false,
        default: None,
        help: "the database server's port (3306 for mysql, 5432 for postgres when unset)",
    },
    Setting {
        name: "dbName",
        aliases: &["db_name"],
        env: &["STATEGATE_DB_NAME"],
        secret: false,
        default: None,
        help: "the database (schema) that holds stategate's tables",
    },
    Setting {
        name: "dbUser",
        aliases: &["db_user"],
        env: &["STATEGATE_DB_USER"],
        secret: false,
        default: None,
        help: "the user stategate logs in as",
    },
    Setting {
        name: "dbPassword",
        aliases: &["db_password"],
        env: &["STATEGATE_DB_PASSWORD"],
        secret: true,
        default: None,
        help: "that user's password (never logged)",
    },
    Setting {
        name: "dbSSLMode",
        aliases: &["dbSslMode", "db_ssl_mode"],
        env: &["STATEGATE_DB_SSL_MODE"],
        secret: false,
        default: Some("prefer"),
        help: "TLS to the database: disable, prefer, require, verify-ca or verify-full",
    },
    Setting {
        name: "dbSSLRootCert",
        aliases: &["dbSslRootCert", "db_ssl_root_cert"],
        env: &["STATEGATE_DB_SSL_ROOT_CERT"],
        secret: false,
        default: None,
        help: "PEM file of the CA that signed the database server's certificate (for verify-ca and verify-full)",
    },
    Setting {
        name: "dbMaxConnections",
        aliases: &["db_max_connections"],
        env: &["STATEGATE_DB_MAX_CONNECTIONS"],
        secret: false,
        default: Some("10"),
        help: "the most connections this process opens to the database",
    },
    Setting {
        name: "dbConnectTimeout",
        aliases: &["db_connect_timeout"],
        env: &["STATEGATE_DB_CONNECT_TIMEOUT"],
        secret: false,
        default: Some("5s"),
        help: "how long a request waits for a database connection before it is answered 503",
    },
    Setting {
        name: "dbTablePrefix",
        aliases: &["db_table_prefix"],
        env: &["STATEGATE_DB_TABLE_PREFIX"],
        secret: false,
        default: Some("stategate_"),
        help: "prefix of stategate's table names, so several installations can share one database",
    },
    Setting {
        name: "timeout",
        aliases: &[],
        env: &["STATEGATE_DB_TIMEOUT"],
        secret: false,
        default: Some("60s"),
        help: "the longest one store operation may take (a 512 MiB state must fit in it)",
    },
];

/// The connection settings that a `dbURL` replaces.
const SEPARATE_CONNECTION_SETTINGS: &[&str] = &[
    "dbHost",
    "dbPort",
    "dbName",
    "dbUser",
    "dbPassword",
    "dbSSLRootCert",
];

/// The database engine behind the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// MySQL 8 or MariaDB.
    Mysql,
    /// PostgreSQL.
    Postgres,
}

impl Engine {
    /// The server's usual port.
    pub fn default_port(self) -> u16 {
        match self {
            Engine::Mysql => 3306,
            Engine::Postgres => 5432,
        }
    }

    /// The `dbType` value.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Mysql => "mysql",
            Engine::Postgres => "postgres",
        }
    }
}

/// `dbSSLMode`, in PostgreSQL's words; MySQL's modes map one to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Whether a database URL sets its own TLS mode (`sslmode` or `ssl-mode`
/// in its query, as both drivers read it).
pub(super) fn url_names_ssl_mode(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            ["sslmode", "ssl-mode"].contains(&name.to_ascii_lowercase().as_str())
        })
    })
}

/// Where to connect: separate settings, or one URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Connection {
    Parts {
        host: String,
        port: u16,
        database: String,
        user: String,
        password: Option<String>,
        ssl_root_cert: Option<PathBuf>,
    },
    /// A `dbURL`, with `mariadb://` already spelled `mysql://`.
    Url(String),
}

/// The validated settings of `storageType: db`.
#[derive(Clone, PartialEq, Eq)]
pub struct DbConfig {
    pub engine: Engine,
    pub connection: Connection,
    pub ssl_mode: SslMode,
    /// Connections this process may open at most.
    pub max_connections: u32,
    /// How long a request waits for a connection.
    pub connect_timeout: Duration,
    /// Prefix of every table name: ASCII letters, digits and `_`.
    pub table_prefix: String,
    /// Bound on one store operation.
    pub timeout: Duration,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DbConfig");
        d.field("engine", &self.engine);
        match &self.connection {
            Connection::Parts {
                host,
                port,
                database,
                user,
                password,
                ssl_root_cert,
            } => {
                d.field("host", host)
                    .field("port", port)
                    .field("database", database)
                    .field("user", user)
                    .field("password", &password.as_ref().map(|_| "<redacted>"))
                    .field("ssl_root_cert", ssl_root_cert);
            }
            Connection::Url(_) => {
                d.field("url", &"<redacted>");
            }
        }
        d.field("ssl_mode", &self.ssl_mode)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("table_prefix", &self.table_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl DbConfig {
    /// Validates the merged settings.
    pub fn from_settings(s: &StoreSettings) -> Result<DbConfig, ConfigError> {
        let declared = parse_engine("dbType", s.require("dbType")?)?;
        let connection;
        let engine;
        if let Some(url) = s.get("dbURL") {
            if let Some(other) = SEPARATE_CONNECTION_SETTINGS
                .iter()
                .find(|name| s.get(name).is_some())
            {
                return Err(ConfigError::invalid(
                    "dbURL",
                    format!(
                        "set together with `{other}`: give either dbURL or the separate settings"
                    ),
                ));
            }
            let (scheme, rest) = url.split_once("://").ok_or_else(|| {
                ConfigError::invalid("dbURL", "is not a URL like postgres://user@host/name")
            })?;
            engine = parse_engine("dbURL", scheme)?;
            // dbType defaults to mysql; only an explicit postgres beside a
            // mysql URL is a contradiction worth refusing.
            if declared == Engine::Postgres && engine == Engine::Mysql {
                return Err(ConfigError::invalid(
                    "dbType",
                    "is postgres but dbURL is a mysql URL",
                ));
            }
            connection = Connection::Url(format!("{}://{rest}", engine.name()));
        } else {
            engine = declared;
            let port = match s.get("dbPort") {
                None => engine.default_port(),
                Some(v) => v
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        ConfigError::invalid("dbPort", format!("`{v}` is not a port number"))
                    })?,
            };
            connection = Connection::Parts {
                host: s.require("dbHost")?.to_string(),
                port,
                database: s.require("dbName")?.to_string(),
                user: s.require("dbUser")?.to_string(),
                password: s.get("dbPassword").map(str::to_string),
                ssl_root_cert: s.path("dbSSLRootCert"),
            };
        }
        let ssl_mode = match s.require("dbSSLMode")?.to_ascii_lowercase().as_str() {
            "disable" | "disabled" => SslMode::Disable,
            "prefer" | "preferred" => SslMode::Prefer,
            "require" | "required" => SslMode::Require,
            "verify-ca" | "verify_ca" => SslMode::VerifyCa,
            "verify-full" | "verify_identity" | "verify-identity" => SslMode::VerifyFull,
            other => {
                return Err(ConfigError::invalid(
                    "dbSSLMode",
                    format!("`{other}` is not disable, prefer, require, verify-ca or verify-full"),
                ));
            }
        };
        // A URL's own sslmode stands; without one, dbSSLMode applies to it
        // too. Both, and differing from the default: a contradiction.
        if let Connection::Url(url) = &connection
            && url_names_ssl_mode(url)
            && ssl_mode != SslMode::Prefer
        {
            return Err(ConfigError::invalid(
                "dbSSLMode",
                "is set, and dbURL names an sslmode of its own: give it in one place",
            ));
        }
        let max_connections = s
            .require("dbMaxConnections")?
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ConfigError::invalid("dbMaxConnections", "must be a whole number from 1 to 1000")
            })?;
        let connect_timeout = s.duration("dbConnectTimeout")?;
        let timeout = s.duration("timeout")?;
        let table_prefix = s.get("dbTablePrefix").unwrap_or_default().to_string();
        let prefix_ok = table_prefix.len() <= 32
            && table_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !table_prefix.starts_with(|c: char| c.is_ascii_digit());
        if !prefix_ok {
            return Err(ConfigError::invalid(
                "dbTablePrefix",
                format!(
                    "`{table_prefix}` must be at most 32 ASCII letters, digits and `_`, not starting with a digit"
                ),
            ));
        }
        // PostgreSQL folds unquoted names to lower case (MySQL does where
        // lower_case_table_names is set), so `Team_` would share the tables
        // of `team_` while its schema lock, keyed by the spelling, did not
        // keep the two from migrating at once.
        if table_prefix.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError::invalid(
                "dbTablePrefix",
                format!(
                    "`{table_prefix}` has upper-case letters; use `{}`: the database folds unquoted \
                     table names to lower case, so prefixes differing in case would share tables",
                    table_prefix.to_ascii_lowercase()
                ),
            ));
        }
        Ok(DbConfig {
            engine,
            connection,
            ssl_mode,
            max_connections,
            connect_timeout,
            table_prefix,
            timeout,
        })
    }

    /// Where the store is, for logs: engine, host, port and database, never
    /// a user's password.
    pub fn describe(&self) -> String {
        match &self.connection {
            Connection::Parts {
                host,
                port,
                database,
                ..
            } => format!(
                "db store ({}) at {host}:{port}/{database}, tables {}*",
                self.engine.name(),
                self.table_prefix
            ),
            Connection::Url(_) => format!(
                "db store ({}) at dbURL, tables {}*",
                self.engine.name(),
                self.table_prefix
            ),
        }
    }
}

fn parse_engine(setting: &str, v: &str) -> Result<Engine, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "mysql" | "mariadb" => Ok(Engine::Mysql),
        "postgres" | "postgresql" | "pg" => Ok(Engine::Postgres),
        _ => Err(ConfigError::invalid(
            setting,
            format!("`{v}` is not mysql, mariadb or postgres"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::merge_store_settings;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn config(env: &[(&str, &str)], cli: &[(&str, &str)]) -> Result<DbConfig, ConfigError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cli: Vec<(String, String)> = cli
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let table: Vec<&Setting> = super::super::BACKEND.settings.iter().collect();
        let settings = merge_store_settings(
            "db",
            &table,
            &BTreeMap::new(),
            &|name| env.get(name).cloned(),
            &cli,
            Path::new("/etc/stategate"),
        )?;
        DbConfig::from_settings(&settings)
    }

    const BASIC: &[(&str, &str)] = &[
        ("dbHost", "db.internal"),
        ("dbName", "states"),
        ("dbUser", "sg"),
    ];

    #[test]
    fn defaults_are_mysql_on_3306_with_the_table_prefix() {
        let c = config(&[], BASIC).unwrap();
        assert_eq!(c.engine, Engine::Mysql);
        assert_eq!(c.ssl_mode, SslMode::Prefer);
        assert_eq!(c.table_prefix, "stategate_");
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        match c.connection {
            Connection::Parts { port, ref host, .. } => {
                assert_eq!((host.as_str(), port), ("db.internal", 3306));
            }
            Connection::Url(_) => panic!("parts expected"),
        }
        let pg = config(&[("STATEGATE_DB_TYPE", "postgres")], BASIC).unwrap();
        assert!(matches!(
            pg.connection,
            Connection::Parts { port: 5432, .. }
        ));
    }

    #[test]
    fn password_comes_from_the_environment_and_never_shows() {
        let secret = "p@ss:w/rd?#%";
        let c = config(&[("STATEGATE_DB_PASSWORD", secret)], BASIC).unwrap();
        assert!(
            matches!(&c.connection, Connection::Parts { password: Some(p), .. } if p == secret)
        );
        let shown = format!("{c:?} {}", c.describe());
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn url_is_exclusive_with_the_separate_settings() {
        let err = config(
            &[("STATEGATE_DB_URL", "postgres://u:pw@h/d")],
            &[("dbHost", "x")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("setting `dbURL`") && err.contains("dbHost"),
            "{err}"
        );
        assert!(!err.contains("pw"), "{err}");
        let c = config(&[], &[("dbURL", "postgres://u:pw@h/d")]).unwrap();
        assert_eq!(c.engine, Engine::Postgres);
        assert!(!format!("{c:?}").contains("pw"));
        let c = config(&[], &[("dbURL", "mariadb://u:pw@h/d")]).unwrap();
        assert!(c.connection == Connection::Url("mysql://u:pw@h/d".into()));
        let err = config(&[], &[("dbURL", "redis://h")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("setting `dbURL`"), "{err}");
        let err = config(&[], &[("dbType", "postgres"), ("dbURL", "mysql://h/d")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("setting `dbType`"), "{err}");
    }

    #[test]
    fn a_url_names_its_tls_mode_or_takes_db_ssl_mode() {
        for url in [
            "postgres://u@h/d?sslmode=disable",
            "mysql://u@h/d?x=1&SSL-MODE=DISABLED",
        ] {
            assert!(url_names_ssl_mode(url), "{url}");
            let err = config(&[], &[("dbURL", url), ("dbSSLMode", "verify-full")])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("setting `dbSSLMode`"), "{err}");
            assert!(config(&[], &[("dbURL", url)]).is_ok(), "{url}");
        }
        assert!(!url_names_ssl_mode(
            "postgres://u:ssl-mode@h/d?application_name=x"
        ));
        let c = config(
            &[],
            &[("dbURL", "postgres://u@h/d"), ("dbSSLMode", "require")],
        )
        .unwrap();
        assert_eq!(c.ssl_mode, SslMode::Require);
    }

    #[test]
    fn every_refusal_names_its_setting() {
        for (name, value) in [
            ("dbType", "oracle"),
            ("dbPort", "70000"),
            ("dbSSLMode", "sometimes"),
            ("dbMaxConnections", "0"),
            ("dbConnectTimeout", "soon"),
            ("dbTablePrefix", "x; DROP TABLE"),
            ("dbTablePrefix", "Team_"),
            ("timeout", "0"),
        ] {
            let mut cli = BASIC.to_vec();
            cli.push((name, value));
            let err = config(&[], &cli).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("setting `{name}`")),
                "{name}: {err}"
            );
        }
        let err = config(&[], &[("dbHost", "h"), ("dbUser", "u")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("setting `dbName` is required"), "{err}");
    }
}

//! Every server setting, defined once: its place in the YAML file, its
//! flag, its environment variable, its default, its help, which commands
//! take it and whether SIGHUP reloads it. The command line's flags, its
//! `--help`, the precedence engine ([`super::sources`]) and the
//! configuration reference (`docs/configuration.md`, [`reference`]) are all
//! made from this table, so none of them can forget a setting or disagree
//! about one.
//!
//! Store settings (`backend.config`, `-C key=value`) are tables of their
//! own, one per storage type ([`crate::settings::Setting`]), because which
//! ones exist depends on `storageType`; the reference lists them too.

/// Which commands take a setting as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every command that opens the configured store: `serve`, `check`,
    /// `state`, `lock`, `rekey`, `migrate-from-terraform-pg`.
    Store,
    /// Only the commands that serve or check serving: `serve` and `check`.
    Server,
}

/// What a value is, for the reference and for how relative paths and
/// lists are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A word or address, taken as written.
    Text,
    /// A file name: relative to the configuration file's directory when it
    /// comes from the file, to the working directory otherwise.
    Path,
    /// A whole number.
    Number,
    /// `15s`, `500ms`, `2m`, or seconds.
    Duration,
    /// `true` or `false`.
    Bool,
    /// A YAML list in the file; comma-separated in a flag or variable.
    List,
}

/// Whether a running server picks a change up on SIGHUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Needs a restart.
    Restart,
    /// The setting is kept, but the files it names are read again.
    Files,
}

/// One server setting.
#[derive(Debug)]
pub struct ServerSetting {
    /// Its place in the file, `.`-separated (`tls.cert`); also its name in
    /// every error message.
    pub path: &'static str,
    /// Other spellings accepted in the file (the seed's camelCase).
    pub aliases: &'static [&'static str],
    /// The long flag, without `--`.
    pub flag: &'static str,
    pub env: &'static str,
    /// The placeholder in `--help` (`ADDR`, `FILE`).
    pub value: &'static str,
    /// Used when no source sets it; `None` means unset.
    pub default: Option<&'static str>,
    pub help: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    pub reload: Reload,
    /// Never shown: not in `check`'s output, not in errors.
    pub secret: bool,
}

const fn server(
    path: &'static str,
    flag: &'static str,
    env: &'static str,
    value: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    help: &'static str,
) -> ServerSetting {
    ServerSetting {
        path,
        aliases: &[],
        flag,
        env,
        value,
        default,
        help,
        kind,
        scope: Scope::Server,
        reload: Reload::Restart,
        secret: false,
    }
}

const fn store_scope(setting: ServerSetting) -> ServerSetting {
    ServerSetting {
        scope: Scope::Store,
        ..setting
    }
}

const fn reloads_files(setting: ServerSetting) -> ServerSetting {
    ServerSetting {
        reload: Reload::Files,
        ..setting
    }
}

pub const CONFIG: ServerSetting = store_scope(server(
    "",
    "config",
    "STATEGATE_CONFIG",
    "FILE",
    Kind::Path,
    None,
    "the YAML configuration file; SIGHUP reads it again for the `auth` section",
));
pub const DEFAULTS: ServerSetting = store_scope(server(
    "",
    "defaults",
    "STATEGATE_DEFAULTS",
    "FILE",
    Kind::Path,
    None,
    "a YAML file of defaults in the configuration's format (a container image's): its values \
     apply where the configuration file, the environment and the flags set nothing, and its \
     `backend` where the configuration names no store",
));
pub const LISTEN: ServerSetting = server(
    "listen",
    "listen",
    "STATEGATE_LISTEN",
    "ADDR",
    Kind::Text,
    Some("127.0.0.1:8080"),
    "address to serve on",
);
pub const ADMIN_LISTEN: ServerSetting = server(
    "admin_listen",
    "admin-listen",
    "STATEGATE_ADMIN_LISTEN",
    "ADDR",
    Kind::Text,
    None,
    "serve /metrics and /readyz at the root of this address instead of the main one",
);
pub const ADMIN_TLS_CERT: ServerSetting = reloads_files(server(
    "admin_tls.cert",
    "admin-tls-cert",
    "STATEGATE_ADMIN_TLS_CERT",
    "FILE",
    Kind::Path,
    None,
    "serve the admin address over HTTPS with this certificate chain (PEM); plain HTTP without it",
));
pub const ADMIN_TLS_KEY: ServerSetting = reloads_files(server(
    "admin_tls.key",
    "admin-tls-key",
    "STATEGATE_ADMIN_TLS_KEY",
    "FILE",
    Kind::Path,
    None,
    "the private key of admin_tls.cert (PEM)",
));
pub const BASE_PATH: ServerSetting = server(
    "base_path",
    "base-path",
    "STATEGATE_BASE_PATH",
    "PATH",
    Kind::Text,
    None,
    "serve every URL of the main address below this path, e.g. /tfstate (behind a proxy)",
);
pub const TRUSTED_PROXIES: ServerSetting = server(
    "trusted_proxies",
    "trusted-proxies",
    "STATEGATE_TRUSTED_PROXIES",
    "CIDRS",
    Kind::List,
    None,
    "proxies whose client_ip_header is believed: addresses or CIDR ranges",
);
pub const CLIENT_IP_HEADER: ServerSetting = server(
    "client_ip_header",
    "client-ip-header",
    "STATEGATE_CLIENT_IP_HEADER",
    "HEADER",
    Kind::Text,
    Some("x-forwarded-for"),
    "the header trusted proxies name the client in: x-forwarded-for or forwarded",
);
pub const TLS_CERT: ServerSetting = reloads_files(server(
    "tls.cert",
    "tls-cert",
    "STATEGATE_TLS_CERT",
    "FILE",
    Kind::Path,
    None,
    "serve HTTPS with this certificate chain (PEM)",
));
pub const TLS_KEY: ServerSetting = reloads_files(server(
    "tls.key",
    "tls-key",
    "STATEGATE_TLS_KEY",
    "FILE",
    Kind::Path,
    None,
    "the private key of tls.cert (PEM)",
));
pub const TLS_CLIENT_CA: ServerSetting = reloads_files(server(
    "tls.client_ca",
    "tls-client-ca",
    "STATEGATE_TLS_CLIENT_CA",
    "FILE",
    Kind::Path,
    None,
    "require client certificates signed by these CAs (PEM) on the main address",
));
pub const AUTH: ServerSetting = server(
    "auth",
    "auth",
    "STATEGATE_AUTH",
    "none",
    Kind::Text,
    None,
    "`none` serves without authentication, even beyond loopback; users, tokens, issuers and \
     rules are a section of the file, reloaded on SIGHUP",
);
pub const AUDIT_LOG: ServerSetting = store_scope(server(
    "audit_log",
    "audit-log",
    "STATEGATE_AUDIT_LOG",
    "FILE",
    Kind::Path,
    None,
    "append audit events (JSON lines) to this file instead of stderr",
));
pub const LOG_FORMAT: ServerSetting = store_scope(server(
    "log_format",
    "log-format",
    "STATEGATE_LOG_FORMAT",
    "FORMAT",
    Kind::Text,
    Some("text"),
    "log line format: text or json",
));
pub const MAX_BODY_BYTES: ServerSetting = server(
    "max_body_bytes",
    "max-body-bytes",
    "STATEGATE_MAX_BODY_BYTES",
    "BYTES",
    Kind::Number,
    Some("536870912"),
    "largest state body accepted; larger gets 413",
);
pub const MAX_LOCK_BYTES: ServerSetting = server(
    "max_lock_bytes",
    "max-lock-bytes",
    "STATEGATE_MAX_LOCK_BYTES",
    "BYTES",
    Kind::Number,
    Some("65536"),
    "largest LOCK or UNLOCK body accepted (at least 256); larger gets 413",
);
pub const MAX_HEADER_BYTES: ServerSetting = server(
    "max_header_bytes",
    "max-header-bytes",
    "STATEGATE_MAX_HEADER_BYTES",
    "BYTES",
    Kind::Number,
    Some("65536"),
    "largest request head (at least 8192); larger gets 431",
);
pub const HEADER_TIMEOUT: ServerSetting = server(
    "header_timeout",
    "header-timeout",
    "STATEGATE_HEADER_TIMEOUT",
    "DURATION",
    Kind::Duration,
    Some("15s"),
    "time a request's head may take to arrive",
);
pub const BODY_MIN_RATE: ServerSetting = server(
    "body_min_rate",
    "body-min-rate",
    "STATEGATE_BODY_MIN_RATE",
    "BYTES",
    Kind::Number,
    Some("1024"),
    "slowest upload accepted, bytes/s averaged over 10 s, else 408; 0 is off",
);
pub const IDLE_TIMEOUT: ServerSetting = server(
    "idle_timeout",
    "idle-timeout",
    "STATEGATE_IDLE_TIMEOUT",
    "DURATION",
    Kind::Duration,
    Some("60s"),
    "an idle keep-alive connection closes after this",
);
pub const MAX_CONNECTIONS: ServerSetting = server(
    "max_connections",
    "max-connections",
    "STATEGATE_MAX_CONNECTIONS",
    "N",
    Kind::Number,
    Some("512"),
    "connections served at once; more get 503",
);
pub const SHUTDOWN_GRACE: ServerSetting = server(
    "shutdown_grace",
    "shutdown-grace",
    "STATEGATE_SHUTDOWN_GRACE",
    "DURATION",
    Kind::Duration,
    Some("30s"),
    "time requests in flight get to finish after SIGTERM",
);
pub const HISTORY_KEEP: ServerSetting = store_scope(server(
    "history_keep",
    "history-keep",
    "STATEGATE_HISTORY_KEEP",
    "N",
    Kind::Number,
    Some("100"),
    "versions kept per state; 0 keeps all",
));
pub const PROTECT_LINEAGE: ServerSetting = store_scope(server(
    "protect_lineage",
    "protect-lineage",
    "STATEGATE_PROTECT_LINEAGE",
    "BOOL",
    Kind::Bool,
    Some("true"),
    "refuse writes whose lineage or serial would overwrite newer state",
));
pub const READ_ONLY: ServerSetting = store_scope(server(
    "read_only",
    "read-only",
    "STATEGATE_READ_ONLY",
    "BOOL",
    Kind::Bool,
    Some("false"),
    "serve the store read-only: reads work, every change is refused with 503 and nothing is written (a disaster-recovery copy, a replica beside a bucket replica or a database standby)",
));
pub const STORAGE_TYPE: ServerSetting = ServerSetting {
    aliases: &["backend.storage_type"],
    ..store_scope(server(
        "backend.storageType",
        "storage-type",
        "STATEGATE_STORAGE_TYPE",
        "TYPE",
        Kind::Text,
        Some("local"),
        "where states are kept: local, sqlite, s3, oss or db",
    ))
};
pub const UI_CSRF_KEY: ServerSetting = ServerSetting {
    secret: true,
    ..server(
        "ui.csrf_key",
        "ui-csrf-key",
        "STATEGATE_UI_CSRF_KEY",
        "KEY",
        Kind::Text,
        None,
        "the dashboard's form-signing key (32+ characters), shared by replicas behind one name; \
         made at start when unset",
    )
};
pub const UI_STALE_LOCK_HOURS: ServerSetting = server(
    "ui.stale_lock_hours",
    "ui-stale-lock-hours",
    "STATEGATE_UI_STALE_LOCK_HOURS",
    "HOURS",
    Kind::Number,
    Some("4"),
    "the dashboard shows locks older than this as stale",
);
pub const UI_HOSTS: ServerSetting = server(
    "ui.hosts",
    "ui-hosts",
    "STATEGATE_UI_HOSTS",
    "NAMES",
    Kind::List,
    None,
    "host names the server is reached by, beyond IP addresses and localhost (DNS rebinding guard)",
);
pub const UI_MAX_VIEW_BYTES: ServerSetting = server(
    "ui.max_view_bytes",
    "ui-max-view-bytes",
    "STATEGATE_UI_MAX_VIEW_BYTES",
    "BYTES",
    Kind::Number,
    Some("536870912"),
    "largest state body a dashboard view or API answer reads to show its contents",
);
pub const LOCK_HELD_TOO_LONG: ServerSetting = server(
    "lock_held_too_long",
    "lock-held-too-long",
    "STATEGATE_LOCK_HELD_TOO_LONG",
    "DURATION",
    Kind::Duration,
    Some("2h"),
    "send the `lock.held_too_long` notification once per lock held longer than this; 0 never does",
);
pub const NOTIFICATION_MAX_ATTEMPTS: ServerSetting = server(
    "notification_max_attempts",
    "notification-max-attempts",
    "STATEGATE_NOTIFICATION_MAX_ATTEMPTS",
    "N",
    Kind::Number,
    Some("24"),
    "attempts to send one notification (1 s apart, doubling to 5 min) before it is kept as \
     undelivered and shown on the dashboard",
);

pub const EXPLORE_REFRESH: ServerSetting = server(
    "explore.refresh",
    "explore-refresh",
    "STATEGATE_EXPLORE_REFRESH",
    "DURATION",
    Kind::Duration,
    Some("30s"),
    "how often the explorer lists the store for states other replicas changed (this server's \
     own changes reach it at once); 0 lists it only at start, for a server alone on its store",
);

/// Every server setting, in the order of the reference and of `--help`.
pub static SERVER_SETTINGS: &[&ServerSetting] = &[
    &CONFIG,
    &DEFAULTS,
    &LISTEN,
    &ADMIN_LISTEN,
    &ADMIN_TLS_CERT,
    &ADMIN_TLS_KEY,
    &BASE_PATH,
    &TRUSTED_PROXIES,
    &CLIENT_IP_HEADER,
    &TLS_CERT,
    &TLS_KEY,
    &TLS_CLIENT_CA,
    &AUTH,
    &AUDIT_LOG,
    &LOG_FORMAT,
    &MAX_BODY_BYTES,
    &MAX_LOCK_BYTES,
    &MAX_HEADER_BYTES,
    &HEADER_TIMEOUT,
    &BODY_MIN_RATE,
    &IDLE_TIMEOUT,
    &MAX_CONNECTIONS,
    &SHUTDOWN_GRACE,
    &HISTORY_KEEP,
    &PROTECT_LINEAGE,
    &READ_ONLY,
    &STORAGE_TYPE,
    &UI_CSRF_KEY,
    &UI_STALE_LOCK_HOURS,
    &UI_HOSTS,
    &UI_MAX_VIEW_BYTES,
    &LOCK_HELD_TOO_LONG,
    &NOTIFICATION_MAX_ATTEMPTS,
    &EXPLORE_REFRESH,
];

/// Sections of the file that are not single values: read by their own
/// parsers, documented in the reference by name.
pub const SECTIONS: &[(&str, &str)] = &[
    (
        "auth",
        "users, tokens, CI issuers, client certificates, rules and protected states \
         (docs/authentication.md); `auth: none` is the same as --auth none; reloaded on SIGHUP",
    ),
    (
        "encryption",
        "`keys` (a list of `{id, file}` or `{id, env}`; the first seals, every one opens) and \
         `require_sealed`",
    ),
    (
        "notifications",
        "where events are sent: a list of `{name, url, events, keys, workspaces, secret_env, \
         format}` (docs/notifications.md)",
    ),
    (
        "backend.config",
        "the store's settings, below; also `-C key=value` on the command line",
    ),
];

/// The setting a file path (or one of its aliases) names.
pub fn by_path(path: &str) -> Option<&'static ServerSetting> {
    SERVER_SETTINGS
        .iter()
        .copied()
        .find(|s| !s.path.is_empty() && (s.path == path || s.aliases.contains(&path)))
}

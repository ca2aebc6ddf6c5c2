//! The command-line tree. Subcommands and their own arguments are derived
//! here; the settings flags are made from the settings table
//! ([`stategate::config::table`]) and given to exactly the subcommands that
//! read them: every command that opens the store takes the store's, `serve`
//! and `check` also the server's. Each flag's help names its environment
//! variable and its default, from the same table.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use stategate::config::table::{Kind, Reload, SERVER_SETTINGS, Scope, ServerSetting};
use stategate::config::{self, CommandLine};

/// The subcommands that open the configured store, and which settings
/// each takes as flags.
const SETTINGS_OF: &[(&str, Scope)] = &[
    ("serve", Scope::Server),
    ("check", Scope::Server),
    ("state", Scope::Store),
    ("lock", Scope::Store),
    ("rekey", Scope::Store),
    ("migrate-from-terraform-pg", Scope::Store),
];

/// Parses the command line (exiting with clap's message on a mistake):
/// the subcommand, and the settings given as flags.
pub fn parse() -> (Cli, CommandLine) {
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    (cli, settings_given(&matches))
}

/// The whole tree, with the settings flags added.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for (name, scope) in SETTINGS_OF {
        if cmd.find_subcommand(name).is_some() {
            cmd = cmd.mut_subcommand(*name, |sub| with_settings(sub, *scope));
        }
    }
    cmd
}

fn with_settings(mut sub: clap::Command, scope: Scope) -> clap::Command {
    // Nested subcommands (`state list`) take them too, after their name.
    let global = sub.has_subcommands();
    for s in SERVER_SETTINGS {
        if scope == Scope::Store && s.scope == Scope::Server {
            continue;
        }
        let mut arg = Arg::new(s.flag)
            .long(s.flag)
            .value_name(s.value)
            .help(help_line(s))
            .global(global)
            .action(ArgAction::Set);
        if s.flag == "config" {
            arg = arg.short('c');
        }
        sub = sub.arg(arg);
    }
    sub.arg(
        Arg::new("set")
            .short('C')
            .value_name("KEY=VALUE")
            .help("A store setting (see `stategate serve --help`); repeatable")
            .global(global)
            .action(ArgAction::Append)
            .value_parser(Override),
    )
    .after_long_help(if scope == Scope::Server {
        store_settings_help()
    } else {
        String::new()
    })
}

/// A flag's help: what it does, its variable, its default, and whether
/// SIGHUP reloads it.
fn help_line(s: &ServerSetting) -> String {
    let mut line = capitalised(s.help);
    if s.kind == Kind::List {
        line.push_str(" (comma-separated)");
    }
    line.push_str(&format!(" [env: {}]", s.env));
    if let Some(d) = s.default {
        line.push_str(&format!(" [default: {d}]"));
    }
    if !s.path.is_empty() {
        line.push_str(&format!(" [file: {}]", s.path));
    }
    if s.reload == Reload::Files {
        line.push_str(" [files re-read on SIGHUP]");
    }
    line
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Every storage type's settings, for `serve --help` and `check --help`.
fn store_settings_help() -> String {
    let mut out = String::from(
        "Store settings, under backend.config in the file, as -C key=value, or in the variables named:\n",
    );
    let common = stategate::stores::COMMON_SETTINGS
        .iter()
        .chain([&stategate::config::WORKSPACE_KEY_PREFIX]);
    let mut section =
        |title: String, settings: &mut dyn Iterator<Item = &stategate::settings::Setting>| {
            out.push_str(&format!("\n  {title}\n"));
            for s in settings {
                let env = if s.env.is_empty() {
                    String::new()
                } else {
                    format!(" [env: {}]", s.env.join(", "))
                };
                let default = s
                    .default
                    .map(|d| format!(" [default: {d}]"))
                    .unwrap_or_default();
                out.push_str(&format!("    {:<22} {}{env}{default}\n", s.name, s.help));
            }
        };
    section("every storage type:".into(), &mut common.into_iter());
    for backend in stategate::stores::backends() {
        section(
            format!("storageType {} ({}):", backend.name, backend.summary),
            &mut backend.settings.iter(),
        );
    }
    out
}

/// Parses `-C key=value` ([`config::parse_override`]). clap would quote
/// a value it refuses in its message, and a mistyped setting holds a
/// secret as often as not: this refuses in its own words.
#[derive(Clone)]
struct Override;

impl clap::builder::TypedValueParser for Override {
    type Value = (String, String);

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let refused = |why: String| clap::Error::raw(clap::error::ErrorKind::ValueValidation, why);
        let text = value
            .to_str()
            .ok_or_else(|| refused("an argument of -C is not UTF-8\n".into()))?;
        config::parse_override(text).map_err(|why| refused(format!("{why}\n")))
    }
}

/// The settings given as flags, from the innermost subcommand's matches
/// (global flags of `state` reach `state list`).
fn settings_given(matches: &ArgMatches) -> CommandLine {
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    let mut line = CommandLine::default();
    for s in SERVER_SETTINGS {
        if let Ok(Some(v)) = m.try_get_one::<String>(s.flag) {
            line.flags.insert(s.flag, v.clone());
        }
    }
    if let Ok(Some(pairs)) = m.try_get_many::<(String, String)>("set") {
        line.store = pairs.cloned().collect();
    }
    line
}

/// The configuration file named by `-c` or `STATEGATE_CONFIG`.
pub fn config_file(line: &CommandLine) -> Option<PathBuf> {
    file_named(line, &stategate::config::table::CONFIG)
}

/// The defaults file named by `--defaults` or `STATEGATE_DEFAULTS`.
pub fn defaults_file(line: &CommandLine) -> Option<PathBuf> {
    file_named(line, &stategate::config::table::DEFAULTS)
}

fn file_named(line: &CommandLine, table: &ServerSetting) -> Option<PathBuf> {
    line.flags
        .get(table.flag)
        .cloned()
        .or_else(|| std::env::var(table.env).ok())
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from)
}

/// A remote state server for Terraform and OpenTofu's `backend "http"`.
#[derive(Debug, Parser)]
#[command(name = "stategate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve states over HTTP.
    Serve,
    /// Validate the configuration and probe the store.
    Check,
    /// Inspect, restore and push states directly in the store.
    #[command(subcommand)]
    State(StateCommand),
    /// Inspect and release locks directly in the store.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Read a password from standard input (no echo on a terminal) and
    /// print its argon2id hash for `auth.users[].password_hash`.
    HashPassword,
    /// Make tokens for `auth.tokens`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Make a random encryption key (base64 of 32 bytes) for
    /// `encryption.keys`: written to FILE (created with mode 0600, never
    /// overwritten), or printed.
    GenKey {
        /// Where to write the key (created with mode 0600); printed when omitted.
        file: Option<PathBuf>,
    },
    /// Copy every state (and with --with-history its kept versions) from
    /// one configured store to another. Reruns skip what is already
    /// there; each source state is locked while it is copied.
    Migrate(MigrateArgs),
    /// Drive a deployment with Terraform's cycle (LOCK, GET, POST, UNLOCK)
    /// from many clients and print cycles/s and latency per verb.
    Loadtest(LoadtestArgs),
    /// Seal every state body and kept version under the first key of
    /// `encryption.keys` (after adding a key, or to seal a store being
    /// adopted). Safe to run while serving; rerun after an interruption.
    Rekey,
    /// Copy every workspace of Terraform's own `pg` backend into the
    /// configured store (safe to run again).
    #[cfg(feature = "db")]
    MigrateFromTerraformPg(MigratePgArgs),
}

/// The arguments of `stategate migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Configuration file of the store to copy from.
    #[arg(long)]
    pub from: PathBuf,
    /// Configuration file of the store to copy to.
    #[arg(long)]
    pub to: PathBuf,
    /// Only states whose key starts with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Copy each state's kept versions too, oldest first.
    #[arg(long)]
    pub with_history: bool,
    /// Show what would be copied; change nothing. Opens both stores
    /// for reading only (no start-up probe; a target that does not
    /// exist yet is taken as empty, not created).
    #[arg(long)]
    pub dry_run: bool,
    /// Replace a target state that has the source's lineage and serial
    /// but other content (a "conflict"); without it such a state is
    /// left alone and the run fails.
    #[arg(long)]
    pub overwrite: bool,
}

/// The arguments of `stategate loadtest`.
#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// A state URL, e.g. https://stategate.example/states/loadtest;
    /// client i works on <URL>/c<i>.
    pub url: String,
    /// Clients running the cycle at once.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Bytes of every state written.
    #[arg(long, default_value_t = 100 * 1024)]
    pub state_bytes: usize,
    /// How long to run: `30s`, `30`, `2m`.
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// All clients on <URL> itself, contending for its lock (423s are
    /// expected and counted).
    #[arg(long)]
    pub shared_key: bool,
    /// Each client POSTs new states to fresh keys <URL>/c<i>-<n>, without
    /// a lock: how fast the deployment takes new states.
    #[arg(long, conflicts_with = "shared_key")]
    pub new_states: bool,
    /// The user name sent with HTTP basic auth, as Terraform's `username`.
    #[arg(long)]
    pub user: Option<String>,
    /// Also read from TF_HTTP_PASSWORD, as Terraform does.
    #[arg(long, env = "TF_HTTP_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// `stategate migrate-from-terraform-pg`.
#[cfg(feature = "db")]
#[derive(Debug, clap::Args)]
pub struct MigratePgArgs {
    /// The pg backend's `conn_str`, a postgres:// URL (never printed).
    #[arg(
        long,
        value_name = "URL",
        env = "STATEGATE_MIGRATE_PG_CONN_STR",
        hide_env_values = true
    )]
    pub conn_str: String,
    /// The state key in stategate: the `default` workspace lands here,
    /// every other workspace at this key in that workspace.
    #[arg(long)]
    pub key: String,
    /// The pg backend's `schema_name`.
    #[arg(long, default_value = stategate::migrate_pg::DEFAULT_SCHEMA)]
    pub schema: String,
    /// Seconds to wait for a workspace a running terraform has locked.
    #[arg(long, default_value_t = 60)]
    pub lock_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random token (once: it is not stored) and its hash.
    New {
        /// The token's name: its identity in the audit log and rules.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List states: key, workspace, serial, size, last write, lock holder.
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// List the kept versions of a state: all of them oldest first, or with
    /// --limit or --before one page, newest first.
    History {
        /// The state key, as in its URL.
        key: String,
        /// The workspace (default: `default`).
        #[arg(long, short)]
        workspace: Option<String>,
        /// Show at most this many versions, newest first (1 to 1000; 100
        /// when only --before is given).
        #[arg(long)]
        limit: Option<u64>,
        /// Show only versions numbered below this, newest first (the next
        /// page is named after the listing).
        #[arg(long)]
        before: Option<u64>,
    },
    /// Find the states holding resources of a type, provider, module or
    /// address, or by Terraform version, age or lock: a table of the
    /// matching resources, or JSON. Names take globs (`aws_*`, `prod/**`).
    Find {
        /// Resource type (`aws_db_instance`).
        #[arg(long = "type")]
        resource_type: Option<String>,
        /// Provider source, with or without its host (`hashicorp/aws`).
        #[arg(long)]
        provider: Option<String>,
        /// Module path (`module.db`).
        #[arg(long)]
        module: Option<String>,
        /// Resource address (`module.db.*`).
        #[arg(long)]
        address: Option<String>,
        /// State key (`prod/**`).
        #[arg(long)]
        key: Option<String>,
        /// Workspace name.
        #[arg(long, short)]
        workspace: Option<String>,
        /// Terraform version or range (`<1.5`, `>=1.5,<1.7`).
        #[arg(long)]
        terraform_version: Option<String>,
        /// Last written before a time (`2024-06-01`) or an age ago (`90d`).
        #[arg(long)]
        written_before: Option<String>,
        /// Locked for at least this long (`2h`).
        #[arg(long)]
        locked_for: Option<String>,
        /// Print the result as JSON (the answer of `/api/v1/search`).
        #[arg(long)]
        json: bool,
    },
    /// Print a state (or one of its versions) to stdout.
    Get {
        /// The state key, as in its URL.
        key: String,
        /// The workspace (default: `default`).
        #[arg(long, short)]
        workspace: Option<String>,
        /// A version number from `state history`.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Make an earlier version the current state (itself kept as a new version).
    Restore {
        /// The state key, as in its URL.
        key: String,
        /// The version to make current, from `state history`.
        #[arg(long)]
        version: u64,
        /// The workspace (default: `default`).
        #[arg(long, short)]
        workspace: Option<String>,
        /// Restore even while the state is locked.
        #[arg(long)]
        force: bool,
    },
    /// Remove every kept version of a deleted state (logged as a warning).
    Purge {
        /// The state key, as in its URL.
        key: String,
        /// The workspace (default: `default`).
        #[arg(long, short)]
        workspace: Option<String>,
    },
    /// Store a state from a file (`-` for stdin).
    Push {
        /// The state key, as in its URL.
        key: String,
        /// The state file to store (`-` reads standard input).
        file: PathBuf,
        /// The workspace (default: `default`).
        #[arg(long, short)]
        workspace: Option<String>,
        /// Skip the shape, lineage and serial checks: store any JSON, or
        /// replace newer state on purpose.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// List held locks.
    List,
    /// Force-release a state's lock, whoever holds it (logged as a warning).
    Release {
        /// The state key, as in its URL.
        key: String,
        /// The workspace (default: `default`).
        #[arg(long, short)]
        workspace: Option<String>,
        /// Release only the lock of this ID (as `lock list` shows it, or
        /// as `terraform force-unlock` takes it): a lock taken since
        /// stays, and the command fails naming its holder.
        #[arg(long)]
        id: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand, with its path from the top (`state list`).
    fn walk(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            let name = format!("{path} {}", sub.get_name()).trim().to_string();
            out.push((name.clone(), sub.clone()));
            walk(sub, name, out);
        }
    }

    fn built() -> clap::Command {
        let mut cmd = command();
        cmd.build();
        cmd
    }

    #[test]
    fn the_tree_is_consistent_and_every_argument_says_what_it_is() {
        let cmd = built();
        cmd.clone().debug_assert();
        let mut all = Vec::new();
        walk(&cmd, String::new(), &mut all);
        let mut missing = Vec::new();
        for (path, sub) in &all {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
        }
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn settings_flags_reach_only_the_commands_that_read_them() {
        let mut all = Vec::new();
        walk(&built(), String::new(), &mut all);
        let takes = |path: &str, flag: &str| {
            all.iter()
                .find(|(p, _)| p == path)
                .unwrap_or_else(|| panic!("no subcommand {path}"))
                .1
                .get_arguments()
                .any(|a| a.get_long() == Some(flag))
        };
        for s in SERVER_SETTINGS {
            assert!(takes("serve", s.flag), "serve --{}", s.flag);
            assert!(takes("check", s.flag), "check --{}", s.flag);
            assert_eq!(
                takes("state list", s.flag),
                s.scope == Scope::Store,
                "--{}",
                s.flag
            );
            assert!(
                !takes("hash-password", s.flag),
                "hash-password --{}",
                s.flag
            );
            assert!(!takes("migrate", s.flag), "migrate --{}", s.flag);
        }
    }
}

//! The configuration reference, `docs/configuration.md`, written from the
//! settings tables, so the document cannot drift from the code: a test
//! compares the checked-in file with [`markdown`], and
//! `STATEGATE_WRITE_REFERENCE=1 cargo test --lib reference` rewrites it.

use std::fmt::Write;

use super::WORKSPACE_KEY_PREFIX;
use super::table::{Kind, Reload, SECTIONS, SERVER_SETTINGS, Scope, ServerSetting};
use crate::settings::Setting;
use crate::stores::{self, COMMON_SETTINGS};

/// The whole reference, as Markdown.
pub fn markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\n\
         <!-- Written from the settings tables in src/config/table.rs and each store's table; \
         regenerate with `STATEGATE_WRITE_REFERENCE=1 cargo test --lib reference`. -->\n\n\
         Every setting can be given in the YAML file (`-c FILE`), \
         in an environment variable, or as a flag. A flag beats its environment variable, \
         which beats the file, which beats the default; a variable set to nothing counts as \
         unset. A relative file name is taken from \
         the configuration file's directory when it is written in the file, and from the \
         working directory when it comes from a flag or a variable. Unknown keys stop \
         start-up, naming the key.\n\n\
         `stategate check` reads the configuration exactly as `serve` does and runs the same \
         checks, short of binding the port.\n\n",
    );
    out.push_str("## Server settings\n\n");
    out.push_str(
        "*Commands*: `all` is every command that opens the store (`serve`, `check`, `state`, \
         `lock`, `rekey`, `migrate-from-terraform-pg`); `serve` is `serve` and `check`. \
         *SIGHUP*: `files` means the files it names are read again on SIGHUP; anything else \
         needs a restart. The `auth` section is also read again on SIGHUP.\n\n",
    );
    out.push_str(
        "| YAML path | flag | environment | default | commands | SIGHUP | what it does |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for s in SERVER_SETTINGS {
        server_row(&mut out, s);
    }
    out.push_str("\n## Sections\n\n| YAML path | what it holds |\n|---|---|\n");
    for (path, help) in SECTIONS {
        let _ = writeln!(out, "| `{path}` | {} |", cell(help));
    }
    out.push_str(
        "\n## Store settings\n\n\
         Written under `backend.config` in the file, as `-C key=value` on the command line \
         (repeatable), or in the environment variables named. Where Kusion's and Terraform's backend documents spell \
         a setting differently, every spelling is accepted (once per source). Secret settings \
         never appear in logs, errors or `check`'s output.\n\n\
         ### Every storage type\n\n",
    );
    store_table(
        &mut out,
        COMMON_SETTINGS.iter().chain([&WORKSPACE_KEY_PREFIX]),
    );
    out.push_str(
        "\n`workspace_key_prefix` may also be written at the top of the file (not both).\n",
    );
    for backend in stores::backends() {
        let _ = write!(
            out,
            "\n### `storageType: {}`\n\n{}.\n\n",
            backend.name, backend.summary
        );
        store_table(&mut out, backend.settings.iter());
    }
    out
}

fn server_row(out: &mut String, s: &ServerSetting) {
    let path = match s.path {
        "" => "—".to_string(),
        p => format!("`{p}`"),
    };
    let value = match s.kind {
        Kind::Bool => String::new(),
        _ => format!(" {}", s.value),
    };
    let default = match (s.default, s.secret) {
        (_, true) => "(made at start)".to_string(),
        (Some(d), _) => format!("`{d}`"),
        (None, _) => String::new(),
    };
    let scope = match s.scope {
        Scope::Store => "all",
        Scope::Server => "serve",
    };
    let reload = match s.reload {
        Reload::Files => "files",
        Reload::Restart => "",
    };
    let _ = writeln!(
        out,
        "| {path} | `--{}{value}` | `{}` | {default} | {scope} | {reload} | {} |",
        s.flag,
        s.env,
        cell(s.help)
    );
}

fn store_table<'a>(out: &mut String, settings: impl Iterator<Item = &'a Setting>) {
    out.push_str(
        "| name | other spellings | environment | default | what it does |\n\
         |---|---|---|---|---|\n",
    );
    for s in settings {
        let list = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let default = s.default.map(|d| format!("`{d}`")).unwrap_or_default();
        let secret = if s.secret { " (secret)" } else { "" };
        let _ = writeln!(
            out,
            "| `{}`{secret} | {} | {} | {default} | {} |",
            s.name,
            list(s.aliases),
            list(s.env),
            cell(s.help)
        );
    }
}

/// Text safe inside a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn reference_in_docs_is_written_from_the_tables() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
        let fresh = super::markdown();
        if std::env::var_os("STATEGATE_WRITE_REFERENCE").is_some() {
            std::fs::write(&path, &fresh).expect("write docs/configuration.md");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == fresh,
            "docs/configuration.md differs from the settings tables; rewrite it with \
             `STATEGATE_WRITE_REFERENCE=1 cargo test --lib reference`"
        );
    }

    #[test]
    fn every_server_setting_is_in_the_reference_once() {
        let text = super::markdown();
        for s in super::SERVER_SETTINGS {
            let flag = format!("`--{}", s.flag);
            assert_eq!(text.matches(&flag).count(), 1, "{flag}");
            assert_eq!(
                text.matches(&format!("`{}`", s.env)).count(),
                1,
                "{}",
                s.env
            );
        }
    }
}

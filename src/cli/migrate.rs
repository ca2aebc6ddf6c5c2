//! `migrate` (every state from one configured store to another) and
//! `migrate-from-terraform-pg` (every workspace of Terraform's own `pg`
//! backend into the configured store).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

use stategate::config::{self, CommandLine, FileConfig, Settings};
use stategate::migrate;
use stategate::settings::ConfigError;
use stategate::state::{StateRef, States};

use super::args::MigrateArgs;
#[cfg(feature = "db")]
use super::args::MigratePgArgs;
#[cfg(feature = "db")]
use super::state::{operator, operator_audit};
use stategate::app::{Create, open_states, open_states_for_reading};

/// Settings from one whole configuration file (`migrate --from/--to`):
/// the environment is not read, so one variable cannot apply to both
/// stores; relative paths start at the file's directory.
fn settings_of_file(path: &Path) -> Result<Settings> {
    let file = FileConfig::load(path)?;
    config::resolve(&file, &|_| None, &CommandLine::default())
        .with_context(|| format!("{}", path.display()))
}

/// Refuses two stores on local disk (local or SQLite) where one lies in
/// the other, or both are one: the copy would write into the store it
/// reads (every rerun copying the copies again), and each store would
/// take the other's files for states of its own.
fn refuse_overlap(from: &Settings, to: &Settings) -> Result<()> {
    let on_disk = |s: &Settings| {
        matches!(s.backend.name, "local" | "sqlite")
            .then(|| s.store.path("path"))
            .flatten()
            .map(|p| stategate::settings::resolved_path(&p))
    };
    refuse_bucket_overlap(from, to)?;
    let (Some(a), Some(b)) = (on_disk(from), on_disk(to)) else {
        return Ok(());
    };
    if a.starts_with(&b) || b.starts_with(&a) {
        bail!(
            "--from and --to are stores at {} and {}, one {} the other: \
             give the target a path outside the source",
            a.display(),
            b.display(),
            if a == b { "the same as" } else { "inside" }
        );
    }
    Ok(())
}

/// Refuses two bucket stores of one bucket whose prefixes are the same or
/// one inside the other: the outer one lists the inner one's states as its
/// own, so each run copies the copies of the run before, below the prefix
/// again.
fn refuse_bucket_overlap(from: &Settings, to: &Settings) -> Result<()> {
    fn place(s: &Settings) -> Option<(&str, &str, String, Result<String, ConfigError>)> {
        let store = &s.store;
        matches!(s.backend.name, "s3" | "oss").then(|| {
            let endpoint = store.get("endpoint").unwrap_or_default();
            let endpoint = endpoint.trim_end_matches('/').to_ascii_lowercase();
            let prefix =
                stategate::settings::normalise_prefix(store.get("prefix").unwrap_or_default());
            (
                s.backend.name,
                store.get("bucket").unwrap_or_default(),
                endpoint,
                prefix,
            )
        })
    }
    let (Some((kind_a, bucket_a, endpoint_a, Ok(a))), Some((kind_b, bucket_b, endpoint_b, Ok(b)))) =
        (place(from), place(to))
    else {
        return Ok(());
    };
    if (kind_a, bucket_a, endpoint_a) != (kind_b, bucket_b, endpoint_b) {
        return Ok(());
    }
    if a.starts_with(&b) || b.starts_with(&a) {
        let shown = |p: &str| {
            if p.is_empty() {
                "(none)".to_string()
            } else {
                format!("`{p}`")
            }
        };
        bail!(
            "--from and --to are the bucket `{bucket_a}` with the prefixes {} and {}, one {} the \
             other: give the target a prefix outside the source's",
            shown(&a),
            shown(&b),
            if a == b { "the same as" } else { "inside" }
        );
    }
    Ok(())
}

/// `stategate migrate`.
pub async fn migrate(args: MigrateArgs) -> Result<()> {
    let MigrateArgs {
        from,
        to,
        prefix,
        with_history,
        dry_run,
        overwrite,
    } = args;
    let (from, to, prefix) = (from.as_path(), to.as_path(), prefix.as_str());
    let from_settings =
        settings_of_file(from).with_context(|| format!("--from {}", from.display()))?;
    let to_settings = settings_of_file(to).with_context(|| format!("--to {}", to.display()))?;
    refuse_overlap(&from_settings, &to_settings)?;
    // A dry run only reads: no probe, nothing created, read-only
    // credentials suffice. A real run creates its target, never its source.
    let open = async |settings: &Settings, create: Create| {
        anyhow::Ok(match dry_run {
            true => open_states_for_reading(settings).await?,
            false => open_states(settings, create).await?.0,
        })
    };
    let source = open(&from_settings, Create::No)
        .await
        .with_context(|| format!("--from {}", from.display()))?;
    let target = open(&to_settings, Create::Yes)
        .await
        .with_context(|| format!("--to {}", to.display()))?;
    // Keys from the one store listing; each state is read when copied.
    let states: Vec<_> = source
        .listing()
        .await?
        .into_iter()
        .filter(|l| l.state.key().starts_with(prefix))
        .collect();
    let bar = indicatif::ProgressBar::new(states.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} states {msg}")
            .expect("progress template"),
    );
    let lock = migrate::run_lock(&format!("stategate migrate to {}", to.display()));
    let names = target_names(&target, states.into_iter().map(|l| l.state))?;
    let mut rows = Vec::new();
    let mut total_bytes = 0u64;
    for (state, named) in names {
        let copied = match &named {
            Err(why) => migrate::Copied::Refused(why.clone()),
            Ok(name) => migrate::migrate_state(
                &source,
                &target,
                &state,
                name,
                with_history,
                dry_run,
                overwrite,
                lock.as_bytes(),
            )
            .await
            .with_context(|| format!("{state}"))?,
        };
        if let migrate::Copied::Written { bytes, .. } | migrate::Copied::WouldWrite { bytes, .. } =
            copied
        {
            total_bytes += bytes;
        }
        bar.inc(1);
        bar.set_message(format!("{total_bytes} bytes"));
        rows.push((state, copied, named.ok()));
    }
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<40} {:<12} {:<13} {:>8} {:>12}  NOTE",
        "KEY", "WORKSPACE", "OUTCOME", "VERSIONS", "BYTES"
    )?;
    let mut problems = 0;
    for (state, copied, named) in &rows {
        let (versions, bytes, note) = match copied {
            migrate::Copied::Written { versions, bytes }
            | migrate::Copied::WouldWrite { versions, bytes } => {
                (versions.to_string(), bytes.to_string(), String::new())
            }
            migrate::Copied::TargetNewer(why)
            | migrate::Copied::Conflict(why)
            | migrate::Copied::SourceLocked(why)
            | migrate::Copied::Refused(why) => ("-".into(), "-".into(), why.clone()),
            migrate::Copied::Identical => ("0".into(), "0".into(), String::new()),
        };
        // A state the target names otherwise (its `workspace_key_prefix`).
        let note = match named.as_ref().filter(|n| *n != state) {
            Some(name) => format!("as {name} in the target; {note}")
                .trim_end_matches("; ")
                .to_string(),
            None => note,
        };
        problems += usize::from(copied.is_problem());
        writeln!(
            out,
            "{:<40} {:<12} {:<13} {:>8} {:>12}  {}",
            state.key(),
            state.workspace(),
            copied.outcome(),
            versions,
            bytes,
            note
        )?;
    }
    let count = |word: &str| rows.iter().filter(|(_, c, _)| c.outcome() == word).count();
    writeln!(
        out,
        "{} states: {} copied, {} identical, {} would copy, {} left alone; {total_bytes} bytes{}",
        rows.len(),
        count("copied"),
        count("identical"),
        count("would copy"),
        problems,
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    )?;
    if problems > 0 {
        bail!("{problems} states were not copied (see NOTE); rerun once they are resolved");
    }
    Ok(())
}

/// Each source state with its one name in the target
/// ([`States::canonical`]), or why it has none there (too long for the
/// target's store). Refuses the run when two source states are one state
/// in the target (`workspaces/dev/app` and `app` in workspace `dev`, under
/// the target's `workspace_key_prefix`): copying both would replace one
/// with the other.
fn target_names(
    target: &States,
    states: impl Iterator<Item = StateRef>,
) -> Result<Vec<(StateRef, std::result::Result<StateRef, String>)>> {
    let mut seen: std::collections::HashMap<StateRef, StateRef> = Default::default();
    let mut names = Vec::new();
    for state in states {
        let named = target.canonical(&state).map_err(|e| e.to_string());
        if let Ok(name) = &named
            && let Some(other) = seen.insert(name.clone(), state.clone())
        {
            bail!(
                "the source states {other} and {state} are one state in the target ({name}) \
                 under its workspace_key_prefix: give the target another \
                 workspace_key_prefix, or move one of them first"
            );
        }
        names.push((state, named));
    }
    Ok(names)
}

/// `stategate migrate-from-terraform-pg`: one line per workspace, then a
/// summary; fails when any workspace was refused or failed.
#[cfg(feature = "db")]
pub async fn migrate_from_terraform_pg(settings: &Settings, args: MigratePgArgs) -> Result<()> {
    use stategate::migrate_pg::{self, Outcome, Source};
    use stategate::ops::Ops;
    let (states, _) = open_states(settings, Create::Yes).await?;
    let audit = operator_audit(settings)?;
    let source = Source {
        conn_str: args.conn_str,
        schema: args.schema,
        lock_wait: std::time::Duration::from_secs(args.lock_timeout),
    };
    let report = migrate_pg::migrate(&states, &source, &args.key).await?;
    let mut out = std::io::stdout().lock();
    let (mut copied, mut skipped, mut problems) = (0, 0, 0);
    for m in &report {
        let target = m
            .target
            .as_ref()
            .map_or_else(|| "-".to_string(), |t| t.to_string());
        let what = match &m.outcome {
            Outcome::Copied { serial } => {
                copied += 1;
                if let Some(state) = &m.target {
                    Ops::new(&states, &audit, None)
                        .migrated(state, &operator(), &m.workspace)
                        .await;
                }
                match serial {
                    Some(s) => format!("copied (serial {s})"),
                    None => "copied".to_string(),
                }
            }
            Outcome::Identical => {
                skipped += 1;
                "skipped: already identical".to_string()
            }
            Outcome::Empty => {
                skipped += 1;
                "skipped: no state in this workspace".to_string()
            }
            Outcome::Refused(why) => {
                problems += 1;
                format!("REFUSED: {why}")
            }
            Outcome::Failed(why) => {
                problems += 1;
                format!("FAILED: {why}")
            }
        };
        writeln!(out, "{:<20} -> {:<50} {what}", m.workspace, target)?;
    }
    writeln!(
        out,
        "{} workspaces: {copied} copied, {skipped} skipped, {problems} refused or failed",
        report.len()
    )?;
    if problems > 0 {
        bail!("{problems} workspaces were not copied; see above");
    }
    Ok(())
}

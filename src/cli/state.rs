//! The operator commands `state …` and `lock …`: they work on the
//! configured store directly, through the same operations as the server
//! ([`stategate::ops`]), as the local user who ran them, who counts as an
//! admin: `--force` passes a lock where an admin may.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};

use stategate::audit::Audit;
use stategate::config::Settings;
use stategate::explore::query::LIMIT_MAX;
use stategate::explore::{ExploreSettings, Explorer, Found, Search};
use stategate::notify::Notifier;
use stategate::ops::{Actor, OpError, Ops};
use stategate::state::history::HistoryWindow;
use stategate::state::{LockInfo, StateError, StateRef, States, WriteOutcome};
use stategate::stores::payload::spool_dir;
use stategate::stores::{Payload, Spooler};

use super::args::{LockCommand, StateCommand};
use stategate::app::{Create, open_states};

/// The state an operator named, under its one name ([`States::canonical`]).
pub(super) fn state_ref(states: &States, key: &str, workspace: Option<&str>) -> Result<StateRef> {
    let state =
        StateRef::parse(key, workspace).with_context(|| format!("invalid state key {key:?}"))?;
    states
        .canonical(&state)
        .with_context(|| format!("invalid state key {key:?}"))
}

/// Every state matching `filters`, all pages in one: the index is built
/// once from the store, as the server builds it at start.
async fn find(states: &States, filters: &[(&str, Option<String>)]) -> Result<Found> {
    let explorer = Explorer::new(states.clone(), &ExploreSettings::default());
    explorer.refresh().await?;
    let mut params: Vec<(&str, &str)> = filters
        .iter()
        .filter_map(|(name, value)| Some((*name, value.as_deref()?)))
        .collect();
    let limit = LIMIT_MAX.to_string();
    params.push(("limit", &limit));
    let now = time::OffsetDateTime::now_utc();
    let search = Search::parse(params.iter().copied(), now)?;
    let mut found = explorer.search(&search, &|_| true);
    while let Some(cursor) = found.next_cursor.take() {
        let mut next = params.clone();
        next.push(("cursor", &cursor));
        let page = explorer.search(&Search::parse(next.iter().copied(), now)?, &|_| true);
        let mut states = page.states.into_iter();
        // A state of more resources than a page lists goes on on the next.
        if let (Some(last), Some(first)) = (found.states.last_mut(), states.as_slice().first())
            && first.state == last.state
        {
            let first = states.next().expect("looked at above");
            last.resources.extend(first.resources);
        }
        found.states.extend(states);
        found.next_cursor = page.next_cursor;
    }
    Ok(found)
}

/// One line per matching resource (a matching state without resources
/// gets one line of its own), then the counts on stderr.
fn print_found(out: &mut impl Write, found: &Found) -> Result<()> {
    writeln!(
        out,
        "{:<32} {:<10} {:>6} {:<9} {:<48} {:<28} PROVIDER",
        "KEY", "WORKSPACE", "SERIAL", "TERRAFORM", "ADDRESS", "TYPE"
    )?;
    for s in &found.states {
        let serial = s.serial.map_or("-".to_string(), |n| n.to_string());
        let version = s.terraform_version.as_deref().unwrap_or("-");
        let line = |address: &str, type_name: &str, provider: &str| {
            format!(
                "{:<32} {:<10} {:>6} {:<9} {:<48} {:<28} {}",
                s.key, s.workspace, serial, version, address, type_name, provider
            )
        };
        if s.resources.is_empty() {
            writeln!(out, "{}", line("-", "-", "-").trim_end())?;
        }
        for r in &s.resources {
            writeln!(out, "{}", line(&r.address, &r.type_name, &r.provider))?;
        }
    }
    // On stderr, so stdout stays one table for scripts.
    eprintln!(
        "{} states, {} resources",
        found.total_states, found.total_resources
    );
    Ok(())
}

/// `stategate state …`.
pub async fn state(settings: &Settings, cmd: StateCommand) -> Result<()> {
    let (states, _) = open_states(settings, Create::No).await?;
    let audit = operator_audit(settings)?;
    // An operator's change is notified like any other: it waits in the
    // store's outbox until a server sends it.
    let notifier = Notifier::new(&settings.notifications, Arc::clone(states.store()));
    let ops = Ops::new(&states, &audit, None).notifying(notifier.as_deref());
    let actor = operator();
    let mut out = std::io::stdout().lock();
    match cmd {
        StateCommand::List { prefix } => {
            writeln!(
                out,
                "{:<40} {:<12} {:>8} {:>12}  {:<25} LOCKED BY",
                "KEY", "WORKSPACE", "SERIAL", "SIZE", "LAST WRITE"
            )?;
            for s in states.list(&prefix).await? {
                let serial = s.serial.map_or("-".to_string(), |n| n.to_string());
                let lock = s
                    .lock
                    .map_or("-".to_string(), |l| format!("{} ({})", l.who, l.id));
                let modified = s.modified.unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{:<40} {:<12} {:>8} {:>12}  {:<25} {}",
                    s.state.key(),
                    s.state.workspace(),
                    serial,
                    s.size,
                    modified,
                    lock
                )?;
            }
        }
        StateCommand::History {
            key,
            workspace,
            limit,
            before,
        } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            let (versions, next_before) = if limit.is_none() && before.is_none() {
                (states.history(&state).await?, None)
            } else {
                let page = states
                    .history_page(&state, HistoryWindow::new(limit, before)?)
                    .await?;
                (page.versions, page.next_before)
            };
            writeln!(
                out,
                "{:>7} {:>8} {:>12}  {:<32} {:<25} {:<8} WHO",
                "VERSION", "SERIAL", "SIZE", "MD5", "RECORDED", "OP"
            )?;
            for v in versions {
                let serial = v.serial.map_or("-".to_string(), |n| n.to_string());
                let who = v.who.unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{:>7} {:>8} {:>12}  {:<32} {:<25} {:<8} {}",
                    v.version, serial, v.size, v.md5, v.created, v.operation, who
                )?;
            }
            // On stderr, so stdout stays one table for scripts.
            if let Some(n) = next_before {
                eprintln!("older versions: --before {n}");
            }
        }
        StateCommand::Find {
            resource_type,
            provider,
            module,
            address,
            key,
            workspace,
            terraform_version,
            written_before,
            locked_for,
            json,
        } => {
            let filters = [
                ("type", resource_type),
                ("provider", provider),
                ("module", module),
                ("address", address),
                ("key", key),
                ("workspace", workspace),
                ("terraform_version", terraform_version),
                ("written_before", written_before),
                ("locked_for", locked_for),
            ];
            let found = find(&states, &filters).await?;
            if json {
                serde_json::to_writer_pretty(&mut out, &found)?;
                writeln!(out)?;
            } else {
                print_found(&mut out, &found)?;
            }
        }
        StateCommand::Get {
            key,
            workspace,
            version,
        } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            // Copied a piece at a time: a state of any size is never held whole.
            let body = match version {
                Some(n) => states.version(&state, n).await?,
                None => {
                    states
                        .read(&state)
                        .await?
                        .with_context(|| format!("no state stored for {state}"))?
                        .0
                }
            };
            std::io::copy(&mut body.reader(), &mut out)?;
        }
        StateCommand::Restore {
            key,
            version,
            workspace,
            force,
        } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            let outcome = ops
                .restore(&state, &actor, version, force)
                .await
                .map_err(|e| restore_refused(&state, e))?;
            report_write(
                &mut out,
                &state,
                outcome,
                &format!("restored version {version} of"),
            )?;
        }
        StateCommand::Purge { key, workspace } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            let n = ops.purge(&state, &actor).await?;
            writeln!(out, "purged {n} versions of {state}")?;
        }
        StateCommand::Push {
            key,
            file,
            workspace,
            force,
        } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            // Copied to a spool a piece at a time (a large state to an
            // unnamed file): never held whole, and not read again from a
            // file that may change meanwhile.
            let body = if file.as_os_str() == "-" {
                spool(std::io::stdin()).await
            } else {
                let from = std::fs::File::open(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                spool(from).await
            }
            .with_context(|| format!("reading {}", file.display()))?;
            let outcome = ops.push(&state, &actor, body, force).await?;
            report_write(&mut out, &state, outcome, "pushed")?;
        }
    }
    Ok(())
}

/// The audit log for operator commands: the same file as the server's.
pub(super) fn operator_audit(settings: &Settings) -> Result<Audit> {
    Audit::open(settings.audit_log.as_deref())
        .with_context(|| "setting `audit_log`: cannot open the audit log")
}

/// Copies `from` into a spool: memory, then an unnamed file past 1 MiB.
async fn spool(mut from: impl std::io::Read) -> std::io::Result<Payload> {
    let mut spooler = Spooler::new(&spool_dir());
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return spooler.finish().await;
        }
        spooler.push(&buf[..n]).await?;
    }
}

/// The name of the local user running this process, from the password
/// database (a shell under `sudo`, cron or a container may set no `USER`).
fn local_user_name() -> Option<String> {
    let uid = rustix::process::getuid().as_raw();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value of that plain C struct.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the size given, and
    // getpwuid_r writes only within them.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string in buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    name.to_str()
        .ok()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// The local user running this command, as the operations see it:
/// audited as `operator:<user>`.
pub(super) fn operator() -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(local_user_name)
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()));
    Actor::operator(&user)
}

/// A restore refused while the state is locked, with what to do about it.
fn restore_refused(state: &StateRef, e: OpError) -> anyhow::Error {
    match e {
        OpError::State(StateError::Locked(holder)) => {
            let holder = LockInfo::of_holder(&holder);
            anyhow::anyhow!(
                "{state} is locked by {} (ID {}): a restore is refused while the state is locked; \
                 wait for the lock's release, or pass --force to restore anyway",
                holder.who,
                holder.id
            )
        }
        other => other.into(),
    }
}

/// A release refused because another lock than the one named is held,
/// naming its holder.
fn held_by_another(state: &StateRef, e: OpError) -> anyhow::Error {
    match e {
        OpError::State(StateError::Locked(holder) | StateError::NotHolder(holder)) => {
            let holder = LockInfo::of_holder(&holder);
            anyhow::anyhow!(
                "{state} is locked by {} (ID {}), not by the lock named: nothing was released",
                holder.who,
                holder.id
            )
        }
        other => other.into(),
    }
}

pub(super) fn report_write(
    out: &mut impl Write,
    state: &StateRef,
    outcome: WriteOutcome,
    what: &str,
) -> Result<()> {
    match outcome {
        WriteOutcome::Written {
            version: Some(v), ..
        } => writeln!(out, "{what} {state} (now version {v})")?,
        WriteOutcome::Written { version: None, .. } => writeln!(out, "{what} {state}")?,
        WriteOutcome::Unchanged => writeln!(
            out,
            "{state} already had exactly this content; nothing written"
        )?,
    }
    Ok(())
}

/// `stategate lock …`.
pub async fn lock(settings: &Settings, cmd: LockCommand) -> Result<()> {
    let (states, _) = open_states(settings, Create::No).await?;
    let audit = operator_audit(settings)?;
    // An operator's change is notified like any other: it waits in the
    // store's outbox until a server sends it.
    let notifier = Notifier::new(&settings.notifications, Arc::clone(states.store()));
    match cmd {
        LockCommand::List => {
            println!(
                "{:<40} {:<12} {:<38} {:<24} {:<22} CREATED",
                "KEY", "WORKSPACE", "ID", "WHO", "OPERATION"
            );
            for (state, info) in states.locks().await? {
                println!(
                    "{:<40} {:<12} {:<38} {:<24} {:<22} {}",
                    state.key(),
                    state.workspace(),
                    info.id,
                    info.who,
                    info.operation,
                    info.created
                );
            }
        }
        LockCommand::Release { key, workspace, id } => {
            let state = state_ref(&states, &key, workspace.as_deref())?;
            let ops = Ops::new(&states, &audit, None).notifying(notifier.as_deref());
            let released = ops.force_unlock(&state, &operator(), id.as_deref()).await;
            match released.map_err(|e| held_by_another(&state, e))? {
                None => println!("{state} is not locked"),
                Some(held) => println!(
                    "released the lock on {state} held by {} (ID {})",
                    held.info.who, held.info.id
                ),
            }
        }
    }
    Ok(())
}

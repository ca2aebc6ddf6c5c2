//! Moving states between stores: `stategate migrate` copies every state
//! (and, when asked, its kept versions) from one configured store to
//! another, and [`copy_state`] is the step it shares with any other
//! importer: write what the target lacks, skip what it already has, refuse
//! to replace a newer or conflicting state (or one written to the target
//! while the copy runs: each version replaces only what the copy found or
//! wrote before it), and check what landed.
//!
//! A rerun resumes: a state whose target already holds the source's bytes
//! is skipped, and with history only the versions after the newest one the
//! target holds are written. The source state's lock is held while it is
//! copied, so no apply changes it mid-copy; a dry run reads only. Each run
//! locks under an ID of its own ([`run_lock`]): two runs from one source
//! never release each other's locks, and a rerun takes over the locks a
//! run on this machine, in this container, left when its process ended.
//!
//! Versions are planned from their history records (MD5, lineage, serial,
//! size), so deciding what to copy reads no body; each body is then read
//! and written one at a time, as the stores hand it out (a large one as a
//! file), so memory does not grow with the number or size of versions.

use bytes::Bytes;

use crate::state::head::{StateHead, md5_hex, shown_lineage};
use crate::state::history::HistoryWindow;
use crate::state::{LockInfo, StateError, StateRef, States, Taken, WriteOptions};
use crate::stores::Payload;

/// What happened to one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    /// Written to the target: how many versions, and their bytes.
    Written { versions: usize, bytes: u64 },
    /// The target already holds the same bytes.
    Identical,
    /// Dry run: this many versions would be written.
    WouldWrite { versions: usize, bytes: u64 },
    /// The target holds a newer state (or another lineage): left alone.
    TargetNewer(String),
    /// The target holds the source's lineage and serial with other
    /// content (both sides were written since they parted): left alone
    /// unless the copy was told to overwrite.
    Conflict(String),
    /// Someone holds the source state's lock: not copied this time.
    SourceLocked(String),
    /// Never copied as it is: the source's current body is no state the
    /// server would take (a write of it is refused with 400, and Terraform
    /// could not read it back), or the state's name does not fit the
    /// target.
    Refused(String),
}

impl Copied {
    /// One word for the summary.
    pub fn outcome(&self) -> &'static str {
        match self {
            Copied::Written { .. } => "copied",
            Copied::Identical => "identical",
            Copied::WouldWrite { .. } => "would copy",
            Copied::TargetNewer(_) => "target newer",
            Copied::Conflict(_) => "conflict",
            Copied::SourceLocked(_) => "locked",
            Copied::Refused(_) => "refused",
        }
    }

    /// Whether the state still needs attention (a rerun, an operator).
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            Copied::TargetNewer(_)
                | Copied::Conflict(_)
                | Copied::SourceLocked(_)
                | Copied::Refused(_)
        )
    }
}

/// Where the body of a [`SourceVersion`] is.
#[derive(Debug, Clone)]
enum Body {
    /// Kept version `n` of the source state's history, read when written.
    Kept(u64),
    /// In hand: the source's current state as its store handed it out (a
    /// large one is a file), or a body given whole.
    Held(Payload),
}

/// One version of a source state, known by what its history record says
/// of it; its body is read only when it is written.
#[derive(Debug, Clone)]
struct SourceVersion {
    md5: String,
    head: StateHead,
    size: u64,
    body: Body,
}

/// The versions of one source state to copy, oldest first, ending with
/// its current state.
pub struct Source<'a> {
    /// Where kept versions are read from, and the state they are kept
    /// for; `None` when every body is held.
    from: Option<(&'a States, StateRef)>,
    versions: Vec<SourceVersion>,
}

impl<'a> Source<'a> {
    /// A state of `from`: its kept versions oldest first, ending with the
    /// current state; or the current state alone. Reads the history
    /// records and hashes the current state; holds no body in memory.
    pub async fn of(
        from: &'a States,
        state: &StateRef,
        with_history: bool,
    ) -> Result<Source<'a>, StateError> {
        let mut source = Source {
            from: Some((from, state.clone())),
            versions: Vec::new(),
        };
        let Some((current, _)) = from.read(state).await? else {
            return Ok(source);
        };
        let md5 = current.md5_hex().await?;
        let records = if with_history {
            from.history(state).await?
        } else {
            let newest = HistoryWindow::new(Some(1), None)?;
            from.history_page(state, newest).await?.versions
        };
        if with_history {
            source.versions = records
                .iter()
                .map(|r| SourceVersion {
                    md5: r.md5.clone(),
                    head: r.head(),
                    size: r.size,
                    body: Body::Kept(r.version),
                })
                .collect();
        }
        if source.versions.last().is_none_or(|v| v.md5 != md5) {
            let head = match records.iter().rfind(|r| r.md5 == md5) {
                Some(record) => record.head(),
                // Not recorded yet (written by another tool): parsed once.
                None => StateHead::parse_found(&current).await,
            };
            source.versions.push(SourceVersion {
                md5,
                head,
                size: current.len(),
                body: Body::Held(current),
            });
        }
        Ok(source)
    }

    /// One body given whole (an importer's row), copied without history.
    pub fn body(body: Bytes) -> Source<'static> {
        Source {
            from: None,
            versions: vec![SourceVersion {
                md5: md5_hex(&body),
                head: StateHead::parse(&body).unwrap_or_default(),
                size: body.len() as u64,
                body: Body::Held(Payload::Memory(body)),
            }],
        }
    }

    /// The body of `version`, as the source store hands it out.
    async fn payload(&self, version: &SourceVersion) -> Result<Payload, StateError> {
        match (&version.body, &self.from) {
            (Body::Held(body), _) => Ok(body.clone()),
            (Body::Kept(n), Some((from, state))) => from.version(state, *n).await,
            (Body::Kept(n), None) => Err(StateError::NotFound(format!(
                "the source has no version {n} here"
            ))),
        }
    }
}

/// Why the source would overwrite a newer state on the target, if it would.
fn refusal(target: &StateHead, source: &StateHead) -> Option<String> {
    match (&target.lineage, &source.lineage) {
        (Some(t), Some(s)) if t != s => {
            return Some(format!(
                "the target holds lineage {}, the source {}",
                shown_lineage(t),
                shown_lineage(s)
            ));
        }
        _ => {}
    }
    match (target.serial, source.serial) {
        (Some(t), Some(s)) if t > s => Some(format!(
            "the target's serial {t} is newer than the source's {s}"
        )),
        _ => None,
    }
}

/// Why the source conflicts with the target's state, if it does: the same
/// serial (and lineage, checked before) with other bytes, the shape of a
/// cutover where both sides applied. The server refuses such a write; so
/// does a copy not told to overwrite.
fn conflict(target: &StateHead, source: &StateHead) -> Option<String> {
    match (target.serial, source.serial) {
        (Some(t), Some(s)) if t == s => Some(format!(
            "the target holds serial {t} of lineage {} with other content; \
             rerun with --overwrite to replace it with the source's",
            shown_lineage(source.lineage.as_deref().unwrap_or("?"))
        )),
        _ => None,
    }
}

/// The target's current state as a copy sees it.
struct TargetState {
    md5: String,
    head: StateHead,
    /// Whether the newest history record describes it: not when another
    /// tool wrote it, or a copy was cut off between it and its record.
    recorded: bool,
}

/// The target's current state, read without holding it in memory where
/// the newest history record describes it.
async fn target_state(to: &States, state: &StateRef) -> Result<Option<TargetState>, StateError> {
    let Some((body, _)) = to.read(state).await? else {
        return Ok(None);
    };
    let md5 = body.md5_hex().await?;
    let newest = HistoryWindow::new(Some(1), None)?;
    let recorded = to.history_page(state, newest).await?.versions;
    Ok(Some(match recorded.into_iter().find(|r| r.md5 == md5) {
        Some(record) => TargetState {
            md5,
            head: record.head(),
            recorded: true,
        },
        None => TargetState {
            head: StateHead::parse_found(&body).await,
            md5,
            recorded: false,
        },
    }))
}

/// Copies one state into `to`, as `state` there: the versions of
/// `source`, oldest first. Writes only what the target lacks, one body at
/// a time; refuses a current body that is no state the server would take,
/// to replace a newer state, and one of the same serial with other content
/// unless `overwrite`; and reads back what it wrote to compare MD5s. With
/// `dry_run` nothing is written.
pub async fn copy_state(
    to: &States,
    state: &StateRef,
    source: &Source<'_>,
    dry_run: bool,
    overwrite: bool,
) -> Result<Copied, StateError> {
    let versions = &source.versions;
    let Some(current) = versions.last() else {
        return Ok(Copied::Identical);
    };
    // The rules of a write over the state URLs: a body that breaks them
    // would replace a good state with one Terraform cannot read.
    if let Err(StateError::BadRequest(why)) =
        StateHead::parse_payload(&source.payload(current).await?).await
    {
        return Ok(Copied::Refused(format!(
            "the source's current body is no Terraform state ({why})"
        )));
    }
    let found = target_state(to, state).await?;
    // Each write replaces only what the one before it left, the first
    // what was found here: a client's write to the target meanwhile is
    // never replaced.
    let mut replacing = found.as_ref().map(|t| t.md5.clone());
    let pending: &[SourceVersion] = match found {
        None => versions,
        Some(target) if target.md5 == current.md5 => {
            // A copy cut off after the state was written and before its
            // record: the record is made now, so history keeps it.
            if !target.recorded && !dry_run {
                to.record_found(state).await?;
            }
            return Ok(Copied::Identical);
        }
        Some(TargetState {
            md5: existing_md5,
            head: target,
            ..
        }) => {
            match versions.iter().rposition(|v| v.md5 == existing_md5) {
                // The target stopped at one of the source's versions (an
                // interrupted copy): go on after it.
                Some(i) => &versions[i + 1..],
                None => {
                    if let Some(why) = refusal(&target, &current.head) {
                        return Ok(Copied::TargetNewer(why));
                    }
                    if !overwrite && let Some(why) = conflict(&target, &current.head) {
                        return Ok(Copied::Conflict(why));
                    }
                    // An older state of the same lineage: the newer versions.
                    let from = versions
                        .iter()
                        .position(|v| v.head.serial > target.serial)
                        .unwrap_or(versions.len() - 1);
                    &versions[from..]
                }
            }
        }
    };
    let bytes = pending.iter().map(|v| v.size).sum();
    if dry_run {
        return Ok(Copied::WouldWrite {
            versions: pending.len(),
            bytes,
        });
    }
    for version in pending {
        let body = source.payload(version).await?;
        let written = to
            .write(
                state,
                body,
                WriteOptions {
                    lock_id: None,
                    // Kept versions are stored as they were, whatever their
                    // serials (a restore keeps an older serial); the refusals
                    // above already guard the target's newer state.
                    skip_lineage_check: true,
                    ignore_lock: false,
                    identity: None,
                    operation: "migrate",
                    md5: Some(&version.md5),
                    head: Some(&version.head),
                    replacing: Some(replacing.as_deref()),
                },
            )
            .await;
        match written {
            Ok(_) => replacing = Some(version.md5.clone()),
            Err(StateError::Stale(why)) => return Ok(Copied::TargetNewer(why)),
            Err(e) => return Err(e),
        }
    }
    match target_state(to, state).await? {
        Some(landed) if landed.md5 == current.md5 => Ok(Copied::Written {
            versions: pending.len(),
            bytes,
        }),
        _ => Err(StateError::Store(crate::stores::StoreError::unavailable(
            format!("{state}: the copy does not read back with the source's MD5"),
        ))),
    }
}

/// What a migration run's locks on its source states begin their ID with
/// ([`run_lock`]).
const RUN_LOCK_ID: &str = "stategate-migrate";

/// The LockInfo a migration run holds on each source state while it copies
/// it: its ID names this run (`stategate-migrate/<pid>/<start>/<place>/<boot>`)
/// and its `Who` this machine, so that two runs from one source never take
/// each other's locks, and a rerun takes over only the locks of a run in
/// the same place whose process has ended ([`migrate_state`]).
pub fn run_lock(info: &str) -> String {
    let started = time::OffsetDateTime::now_utc();
    let (place, boot) = this_place();
    serde_json::json!({
        "ID": format!(
            "{RUN_LOCK_ID}/{}/{}/{place}/{boot}",
            std::process::id(),
            started.unix_timestamp_nanos()
        ),
        "Operation": "migrate",
        "Info": info,
        "Who": format!("{RUN_LOCK_ID}@{}", machine_name()),
        "Version": env!("CARGO_PKG_VERSION"),
        "Created": crate::state::history::rfc3339(started).unwrap_or_default(),
        "Path": "",
    })
    .to_string()
}

/// This machine's name, as a lock's `Who` gives it.
fn machine_name() -> String {
    crate::notify::hostname().unwrap_or_else(|| "localhost".into())
}

/// Where this process's PIDs mean something, and since when: digests of
/// the machine's ID with this process's PID namespace (two machines that
/// share a host name, or two containers of one machine, differ in one of
/// them), and of the boot's ID (a machine restarted since a lock was
/// taken has ended every process of before). Digests, since the machine's
/// ID is not to be shown.
fn this_place() -> (String, String) {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let pid_namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|link| link.display().to_string())
        .unwrap_or_default();
    let digest = |text: String| md5_hex(text.as_bytes())[..16].to_string();
    (
        digest(format!(
            "{RUN_LOCK_ID}\n{}\n{pid_namespace}",
            read("/etc/machine-id").trim()
        )),
        digest(format!(
            "{RUN_LOCK_ID}\n{}",
            read("/proc/sys/kernel/random/boot_id").trim()
        )),
    )
}

/// Whether `held` is the lock of a migration run in this place (see
/// [`this_place`]; the `Who` of `ours` too) whose process has ended, or
/// of a run of a version whose locks named no process (one ID for every
/// run). The locks of runs of the version that named a process but not
/// its place are not taken over: they may be another container's.
fn left_by_an_ended_run(held: &LockInfo, ours: &LockInfo) -> bool {
    if held.operation != "migrate" || held.who != ours.who || held.id == ours.id {
        return false;
    }
    let Some(rest) = held.id.strip_prefix(RUN_LOCK_ID) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let parts: Vec<&str> = rest.strip_prefix('/').unwrap_or("").split('/').collect();
    let [pid, _started, place, boot] = parts[..] else {
        return false;
    };
    let (here, this_boot) = this_place();
    if place != here {
        return false;
    }
    boot != this_boot
        || pid
            .parse::<u32>()
            .is_ok_and(|pid| pid != std::process::id() && !crate::stores::process_alive(pid))
}

/// Copies the state `state` of `from` into `to`, as `target` there (its
/// one name in the target, [`States::canonical`]), under the source's lock
/// (taken with `lock_info`, released after), or reads only on a dry run.
#[allow(clippy::too_many_arguments)]
pub async fn migrate_state(
    from: &States,
    to: &States,
    state: &StateRef,
    target: &StateRef,
    with_history: bool,
    dry_run: bool,
    overwrite: bool,
    lock_info: &[u8],
) -> Result<Copied, StateError> {
    if dry_run {
        let source = Source::of(from, state, with_history).await?;
        return copy_state(to, target, &source, true, overwrite).await;
    }
    let ours = LockInfo::parse(lock_info)?;
    let mut taken = from
        .lock(state, Bytes::copy_from_slice(lock_info), None)
        .await;
    // A lock left by a run that ended on this machine before releasing it
    // is taken over once; a live run's, or another machine's, is not.
    let left = match &taken {
        Err(StateError::Locked(holder)) => Some(LockInfo::of_holder(holder)),
        _ => None,
    };
    if let Some(left) = left.filter(|left| left_by_an_ended_run(left, &ours)) {
        match from.release(state, Some(&left.id)).await {
            Ok(()) | Err(StateError::NotHolder(_)) => {}
            Err(e) => return Err(e),
        }
        taken = from
            .lock(state, Bytes::copy_from_slice(lock_info), None)
            .await;
    }
    match taken {
        Ok(Taken::Now | Taken::Already { .. }) => {}
        Err(StateError::Locked(holder)) => {
            let who = LockInfo::of_holder(&holder);
            return Ok(Copied::SourceLocked(format!(
                "locked by {} ({})",
                if who.who.is_empty() { "?" } else { &who.who },
                who.id
            )));
        }
        Err(e) => return Err(e),
    }
    let id = ours.id;
    let result = async {
        let source = Source::of(from, state, with_history).await?;
        copy_state(to, target, &source, false, overwrite).await
    }
    .await;
    let released = from.release(state, Some(&id)).await;
    let copied = result?;
    released?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::WriteOptions;
    use crate::stores::{Condition, StoreExt};

    fn doc(serial: u64) -> Bytes {
        format!(r#"{{"version":4,"serial":{serial},"lineage":"L","resources":[]}}"#).into()
    }

    async fn write(states: &States, state: &StateRef, serial: u64) {
        let opts = WriteOptions {
            operation: "write",
            ..Default::default()
        };
        states.write(state, doc(serial), opts).await.unwrap();
    }

    async fn kept_md5s(states: &States, state: &StateRef) -> Vec<String> {
        let history = states.history(state).await.unwrap();
        history.into_iter().map(|r| r.md5).collect()
    }

    /// A copy cut off after it wrote the source's current state and before
    /// that state's record: the rerun finds the target identical, and the
    /// target's history must still end with that version.
    #[tokio::test]
    async fn a_rerun_records_a_copied_state_whose_record_was_cut_off() {
        let (a, b) = (
            tempfile::TempDir::new().unwrap(),
            tempfile::TempDir::new().unwrap(),
        );
        let from = crate::state::local_states_for_tests(a.path(), 0);
        let to = crate::state::local_states_for_tests(b.path(), 0);
        let state = StateRef::parse("net/terraform.tfstate", None).unwrap();
        for serial in 1..=2 {
            write(&from, &state, serial).await;
        }
        write(&to, &state, 1).await;
        // The cut-off copy: the state written, no record.
        let raw = crate::stores::local::LocalStore::open_dir(b.path()).unwrap();
        raw.put(&to.object_key(&state), doc(2), Condition::Always)
            .await
            .unwrap();

        let info = br#"{"ID":"m","Operation":"migrate","Who":"t"}"#;
        let copied = migrate_state(&from, &to, &state, &state, true, false, false, info)
            .await
            .unwrap();
        assert_eq!(copied, Copied::Identical);
        assert_eq!(kept_md5s(&to, &state).await, kept_md5s(&from, &state).await);
    }

    /// A migration run takes over a lock left on its source by a run in
    /// the same place (machine and PID namespace) whose process has ended,
    /// or that ran before the machine restarted, and leaves alone the lock
    /// of a run still going (here this process itself), or of another
    /// machine or container, even of the same name.
    #[tokio::test]
    async fn a_run_takes_over_only_the_locks_of_ended_runs_in_its_place() {
        let (a, b) = (
            tempfile::TempDir::new().unwrap(),
            tempfile::TempDir::new().unwrap(),
        );
        let from = crate::state::local_states_for_tests(a.path(), 0);
        let to = crate::state::local_states_for_tests(b.path(), 0);
        let ours = run_lock("test");
        let who = LockInfo::parse(ours.as_bytes()).unwrap().who;
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        ended.wait().unwrap();
        let dead = ended.id();
        let live = std::process::id();
        // Another run in this very process: a run still going.
        let other = LockInfo::parse(run_lock("another run").as_bytes()).unwrap();
        let (place, boot) = this_place();
        let cases = [
            (other.id, other.who, false),
            (
                format!("stategate-migrate/{live}/1/{place}/{boot}"),
                who.clone(),
                false,
            ),
            (
                format!("stategate-migrate/{dead}/1/{place}/{boot}"),
                "stategate-migrate@elsewhere".into(),
                false,
            ),
            (
                format!("stategate-migrate/{dead}/1/{place}/{boot}"),
                who.clone(),
                true,
            ),
            // Another PID namespace or machine of the same name: its PIDs
            // cannot be looked up here.
            (
                format!("stategate-migrate/{dead}/1/0123456789abcdef/{boot}"),
                who.clone(),
                false,
            ),
            // Before this machine restarted: every process of then ended.
            (
                format!("stategate-migrate/{live}/1/{place}/0123456789abcdef"),
                who.clone(),
                true,
            ),
            // A version that did not name the place.
            (format!("stategate-migrate/{dead}/1"), who.clone(), false),
            ("stategate-migrate".to_string(), who.clone(), true),
        ];
        for (n, (id, holder, taken_over)) in cases.into_iter().enumerate() {
            let state = StateRef::parse(&format!("s{n}"), None).unwrap();
            write(&from, &state, 1).await;
            let left = serde_json::json!({"ID": id, "Operation": "migrate", "Who": holder});
            let left = Bytes::from(left.to_string());
            from.lock(&state, left, None).await.unwrap();
            let copied = migrate_state(
                &from,
                &to,
                &state,
                &state,
                false,
                false,
                false,
                ours.as_bytes(),
            )
            .await
            .unwrap();
            let held = from.lock_holder(&state).await.unwrap().map(|h| h.info.id);
            match taken_over {
                true => {
                    assert!(matches!(copied, Copied::Written { .. }), "{id}: {copied:?}");
                    assert_eq!(held, None, "{id}: the lock taken over is released");
                }
                false => {
                    assert!(
                        matches!(copied, Copied::SourceLocked(_)),
                        "{id}: {copied:?}"
                    );
                    assert_eq!(held.as_deref(), Some(id.as_str()), "{id}: the lock stays");
                }
            }
        }
    }
}

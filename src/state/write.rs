//! The write rules. A write is accepted when:
//!
//! 1. the state is not locked, or the write carries the holder's ID;
//! 2. the body is a state: a JSON object with an integer `serial` of 0 or
//!    more and a string `lineage`, or OpenTofu's client-side encrypted
//!    envelope (`encryption_version`, `encrypted_data`, `meta`), whose
//!    `serial` and `lineage` are checked when present. Anything else (`{}`,
//!    `[]`, `null`, a string serial) would replace a state with something
//!    Terraform cannot read, so it is refused naming what is missing; an
//!    operator can still store it with `stategate state push --force`;
//! 3. with `protect_lineage` on, and both the stored and the incoming body
//!    being Terraform states with `lineage` and `serial`: the lineage is the
//!    same (or the stored state has no resources), the serial does not go
//!    down, and an equal serial comes with identical bytes (a retry).
//!    Encrypted envelopes without them are stored as they are.
//!
//! The check and the write are one atomic step: the write is a
//! compare-and-swap on the version that was checked, retried from a fresh
//! look when another writer got in between. The whole step, with the
//! history records it makes, runs under the state's write lease
//! ([`super::lease`]): on stores without compare-and-swap that is what
//! makes it atomic, and on every store it keeps history exact. The one
//! exception is the holder of the state's lock on a store with
//! compare-and-swap and lease objects (S3, the database store), whose
//! write costs what its history costs and no more:
//! `States::write_as_holder` says why it keeps every guarantee without
//! the lease. The stored state is in history
//! before it is replaced ([`States::current`] sees to it), so no accepted
//! state is ever lost. A body identical to the stored one (same MD5) is a
//! retried write and changes nothing.

use super::head::{Described, StateHead, Writer, shown_lineage};
use super::history::VersionMeta;
use super::summary::Summary;
use super::{Lease, LeaseNeed, StateChange, StateError, StateRef, States};
use crate::stores::{Condition, OpWrite, Payload, StoreError, Version};

/// Refuses a write that would replace newer state (rule 3 above). Identical
/// bodies never reach this.
pub fn check_stale(stored: &StateHead, incoming: &StateHead) -> Result<(), StateError> {
    let (Some(sl), Some(ss), Some(il), Some(is)) = (
        &stored.lineage,
        stored.serial,
        &incoming.lineage,
        incoming.serial,
    ) else {
        return Ok(());
    };
    if sl != il {
        if stored.resources == 0 {
            return Ok(());
        }
        let (sl, il) = (shown_lineage(sl), shown_lineage(il));
        return Err(StateError::Stale(format!(
            "lineage mismatch: the stored state has lineage {sl}, this write has lineage {il}; \
             refusing to replace a state that has resources"
        )));
    }
    let sl = shown_lineage(sl);
    if is < ss {
        return Err(StateError::Stale(format!(
            "stale write: serial {is} is older than the stored serial {ss} (lineage {sl})"
        )));
    }
    if is == ss {
        return Err(StateError::Stale(format!(
            "conflicting write: serial {is} equals the stored serial but the content differs (lineage {sl})"
        )));
    }
    Ok(())
}

/// How a write is made.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions<'a> {
    /// The `ID` the client presented (Terraform's `?ID=`).
    pub lock_id: Option<&'a str>,
    /// Skip the shape, lineage and serial checks (`stategate state push
    /// --force`, restore): any JSON is stored.
    pub skip_lineage_check: bool,
    /// Write even while another client holds the lock (`restore --force`).
    pub ignore_lock: bool,
    /// The authenticated identity making the write, for history.
    pub identity: Option<&'a str>,
    /// Recorded in history: `write`, `push`, `restore`.
    pub operation: &'static str,
    /// Hex MD5 of the body when the caller has already computed it (the
    /// protocol does, to check `Content-MD5`), so a large state is not
    /// hashed twice.
    pub md5: Option<&'a str>,
    /// The body's head when the caller has already checked the body with
    /// [`StateHead::parse_payload`] (or, with `skip_lineage_check`, knows
    /// it from a history record), so a large state is not parsed twice.
    pub head: Option<&'a StateHead>,
    /// Write only over this state: `Some(None)` when there is none,
    /// `Some(Some(md5))` over the state with that MD5; anything else is
    /// refused as [`StateError::Stale`]. For a copy planned against what
    /// it found (`stategate migrate`), so a write made meanwhile is never
    /// replaced. Checked under the write lease, against the state as
    /// stored.
    pub replacing: Option<Option<&'a str>>,
}

/// What a successful write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The body became the current state: its history version number, and
    /// the serial of the state it replaced.
    Written {
        version: Option<u64>,
        previous_serial: Option<u64>,
        /// The store's version of the state object now holding the body.
        stored: Version,
    },
    /// The stored body was already byte-identical (a retried write).
    Unchanged,
}

/// How many times a write re-reads after losing a compare-and-swap race.
const CAS_RETRIES: usize = 10;

impl States {
    /// Writes a state under the rules above. A body in a file (a large
    /// upload, spooled) is checked and stored a piece at a time.
    pub async fn write(
        &self,
        state: &StateRef,
        body: impl Into<Payload>,
        opts: WriteOptions<'_>,
    ) -> Result<WriteOutcome, StateError> {
        let body = body.into();
        // Refused before any lease is taken. The operator's overrides take
        // any JSON (rule 2 is about clients).
        let incoming = match opts.head {
            Some(head) => head.clone(),
            None if opts.skip_lineage_check => StateHead::parse_any(&body).await?,
            None => StateHead::parse_payload(&body).await?,
        };
        if let Some(outcome) = self.write_as_holder(state, &body, &incoming, &opts).await? {
            return Ok(outcome);
        }
        self.with_lease(state, LeaseNeed::Always, async |lease| {
            self.write_leased(state, body, incoming, opts, lease).await
        })
        .await
    }

    /// The write of a lock holder on a store with compare-and-swap and
    /// lease objects (S3, the database store), made without taking the
    /// write lease: the lock read, the pointer read, the state's
    /// compare-and-swap, then the history copy, its record and the
    /// pointer, each one request. `None`
    /// when it cannot be made this way, and nothing was written: the
    /// caller makes the write under the lease, where every rule is checked
    /// against the store as it is.
    ///
    /// Why no lease is needed, guarantee by guarantee:
    ///
    /// - *The stored state is in history before it is replaced.* The state
    ///   is replaced only if it still has the store version named by the
    ///   newest record the pointer holds, so it holds bytes history keeps.
    ///   A pointer that is missing or names no store version sends the
    ///   write to the lease; one that is behind does too, since the state
    ///   has changed since it was written (the compare-and-swap fails) or
    ///   was written back to bytes that number already keeps (then the
    ///   number after it is taken, below).
    /// - *Stale writes are refused.* The rules are checked against that
    ///   record, which describes the very state the compare-and-swap
    ///   replaces; a refusal, or a body equal to the record's, is judged
    ///   again under the lease, against the state as stored.
    /// - *One record per accepted write, in order.* Of the writers that
    ///   read the same pointer, only the first compare-and-swap succeeds;
    ///   a writer under the lease that finds the state replaced and not
    ///   yet recorded keeps it (as found) at the next number. The copy of
    ///   this write is created only if absent at the number after the
    ///   pointer's newest, so exactly one of the two keeps that number;
    ///   if it is not this write, [`States::write_recorded_unleased`] takes the
    ///   lease, which the other holds until its record is made, and adopts
    ///   the version that keeps this write's store version instead of
    ///   adding a second (and a writer recording a found state whose number
    ///   this write took sees its own bytes there and adds nothing). A
    ///   later writer can only replace this state after reading a pointer
    ///   that names it, written after its record.
    /// - *A force-unlock between the lock check and the write.* The lock
    ///   decides who may write, as it does under the lease (LOCK never
    ///   takes the lease, so the check was never atomic with the write);
    ///   history never depended on it. Two writers admitted by two holders
    ///   in turn are ordered as any two writers are, by the
    ///   compare-and-swap and the create-if-absent above.
    ///
    /// Unlocked writers, operators' writes (restore, push) and stores with
    /// a lease of their own (local, SQLite) or without compare-and-swap
    /// (OSS, S3 servers that ignore `If-Match`) keep the lease.
    async fn write_as_holder(
        &self,
        state: &StateRef,
        body: &Payload,
        incoming: &StateHead,
        opts: &WriteOptions<'_>,
    ) -> Result<Option<WriteOutcome>, StateError> {
        let caps = self.capabilities;
        let eligible = caps.compare_and_swap
            && caps.conditional_create
            && !caps.native_lease
            && opts.lock_id.is_some()
            && !opts.ignore_lock
            && !opts.skip_lineage_check;
        if !eligible {
            return Ok(None);
        }
        let Some(holder) = self.check_holder(state, opts.lock_id).await? else {
            // Not locked: unlocked writers take the lease.
            return Ok(None);
        };
        let Some(seen) = self.stored_pointer(&self.history_dir(state)).await? else {
            return Ok(None);
        };
        // As under the lease: no clear state over a sealed one.
        super::seal::refuse_sealed_record(&state.to_string(), &seen.newest.md5)?;
        let Some(stored) = seen.newest.object_version.clone() else {
            return Ok(None);
        };
        let md5 = match opts.md5 {
            Some(md5) => md5.to_string(),
            None => body.md5_hex().await?,
        };
        if seen.newest.md5 == md5
            || (self.protect_lineage && check_stale(&seen.newest.head(), incoming).is_err())
        {
            return Ok(None);
        }
        let space = self.store.writes().space;
        if let Some(refused) = space.and_then(|s| s.refusal(body.len())) {
            return Err(refused.into());
        }
        let written = Described {
            body,
            head: incoming,
            md5: &md5,
        };
        let writer = || Writer::from_holder(Some(&holder), opts.identity, opts.operation);
        let args = OpWrite::new(Condition::IfMatch(Version(stored)));
        let (version, record) = match self
            .write_recorded_unleased(state, &seen, &written, args, writer)
            .await
        {
            Ok(made) => made,
            Err(StoreError::PreconditionFailed | StoreError::AlreadyExists) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(self.written(
            state,
            body.len(),
            incoming,
            opts.operation,
            record,
            seen.newest.serial,
            version,
        )))
    }

    /// Logs a write that became the current state, tells those following
    /// the states, and says what it made: whichever way it was written.
    #[allow(clippy::too_many_arguments)]
    fn written(
        &self,
        state: &StateRef,
        bytes: u64,
        incoming: &StateHead,
        operation: &str,
        record: Option<VersionMeta>,
        previous_serial: Option<u64>,
        stored: Version,
    ) -> WriteOutcome {
        tracing::info!(
            state = %state, bytes, serial = ?incoming.serial, op = operation, "state written"
        );
        let version = record.as_ref().map(|meta| meta.version);
        self.tell(StateChange::Written {
            state: state.clone(),
            current: record.map(|meta| (Summary::from(&meta), incoming.catalog.clone())),
        });
        WriteOutcome::Written {
            version,
            previous_serial,
            stored,
        }
    }

    async fn write_leased(
        &self,
        state: &StateRef,
        body: Payload,
        incoming: StateHead,
        opts: WriteOptions<'_>,
        lease: Option<&Lease>,
    ) -> Result<WriteOutcome, StateError> {
        let md5 = match opts.md5 {
            Some(md5) => md5.to_string(),
            None => body.md5_hex().await?,
        };
        let holder = if opts.ignore_lock {
            None
        } else {
            self.check_holder(state, opts.lock_id).await?
        };
        let writer = Writer::from_holder(holder.as_ref(), opts.identity, opts.operation);
        for _ in 0..CAS_RETRIES {
            // Stores without compare-and-swap emulate `IfMatch` as closely as
            // they can (see `Capabilities`); the condition is always sent.
            let (mut current, ours) = match self.current_as(state, Some((&md5, &writer))).await? {
                Some((current, ours)) => (Some(current), ours),
                None => (None, false),
            };
            let previous_serial = current.as_ref().and_then(|c| c.head.serial);
            // Under the lease, history stays where `current` found it.
            let history = current.as_mut().map(|c| c.history.take());
            if let Some(expected) = opts.replacing {
                let found = current.as_ref().map(|c| c.md5.as_str());
                if found != expected && found != Some(md5.as_str()) {
                    let now = match current.as_ref().map(|c| c.head.serial) {
                        Some(Some(serial)) => format!("a state of serial {serial}"),
                        Some(None) => "a state without a serial".into(),
                        None => "no state".into(),
                    };
                    return Err(StateError::Stale(format!(
                        "{state} was changed since this write was planned: it holds {now}"
                    )));
                }
            }
            let condition = match current {
                None => Condition::IfAbsent,
                // This write, made before its answer was lost, and just
                // recorded as this writer's: answered as written, so it is
                // audited and told like any other.
                Some(cur) if cur.md5 == md5 && ours => {
                    let record = history.flatten().map(|pointer| pointer.newest);
                    return Ok(self.written(
                        state,
                        body.len(),
                        &incoming,
                        opts.operation,
                        record,
                        None,
                        cur.version,
                    ));
                }
                Some(cur) if cur.md5 == md5 => return Ok(WriteOutcome::Unchanged),
                Some(cur) => {
                    super::seal::refuse_sealed_record(&state.to_string(), &cur.md5)?;
                    if self.protect_lineage
                        && !opts.skip_lineage_check
                        && let Err(refused) = check_stale(&cur.head, &incoming)
                    {
                        tracing::warn!(state = %state, reason = %refused, "refused write");
                        return Err(refused);
                    }
                    Condition::IfMatch(cur.version)
                }
            };
            if let Some(lease) = lease {
                lease.check()?;
            }
            // A new version needs room; a repeated one (above) needs none.
            let space = self.store.writes().space;
            if let Some(refused) = space.and_then(|s| s.refusal(body.len())) {
                return Err(refused.into());
            }
            let written = Described {
                body: &body,
                head: &incoming,
                md5: &md5,
            };
            let args = OpWrite::new(condition);
            let (version, record) = match self
                .write_recorded(state, &written, args, writer.clone(), history)
                .await
            {
                Ok(made) => made,
                Err(StateError::Store(
                    StoreError::PreconditionFailed | StoreError::AlreadyExists,
                )) => continue,
                Err(e) => return Err(e),
            };
            return Ok(self.written(
                state,
                body.len(),
                &incoming,
                opts.operation,
                record,
                previous_serial,
                version,
            ));
        }
        Err(StateError::Store(StoreError::unavailable(
            "the state kept changing during the write; try again",
        )))
    }

    /// Deletes a state, keeping it in history first. Deleting an absent
    /// state succeeds.
    pub async fn delete(&self, state: &StateRef, lock_id: Option<&str>) -> Result<(), StateError> {
        self.with_lease(state, LeaseNeed::Always, async |lease| {
            self.check_holder(state, lock_id).await?;
            let object_key = self.object_key(state);
            for _ in 0..CAS_RETRIES {
                let Some(cur) = self.current(state).await? else {
                    return Ok(());
                };
                super::seal::refuse_sealed_record(&state.to_string(), &cur.md5)?;
                if let Some(lease) = lease {
                    lease.check()?;
                }
                match self
                    .store
                    .delete(&object_key, Condition::IfMatch(cur.version).into())
                    .await
                {
                    Ok(()) => {
                        self.drop_summary(state).await;
                        tracing::info!(state = %state, "state deleted");
                        self.tell(StateChange::Deleted {
                            state: state.clone(),
                        });
                        return Ok(());
                    }
                    Err(StoreError::PreconditionFailed) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(StateError::Store(StoreError::unavailable(
                "the state kept changing during the delete; try again",
            )))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lineage: &str, serial: u64, resources: usize) -> StateHead {
        StateHead {
            lineage: Some(lineage.into()),
            serial: Some(serial),
            resources,
            catalog: None,
        }
    }

    #[test]
    fn parses_terraform_state() {
        let body =
            br#"{"version":4,"serial":7,"lineage":"L","resources":[{"a":1},{"b":2}],"outputs":{}}"#;
        assert_eq!(StateHead::parse(body).unwrap(), head("L", 7, 2));
    }

    #[test]
    fn other_json_is_unchecked_and_non_json_refused() {
        let enc = br#"{"meta":{"k":"v"},"encrypted_data":"AAAA","encryption_version":"v0"}"#;
        assert_eq!(StateHead::parse(enc).unwrap(), StateHead::default());
        assert_eq!(StateHead::parse(b"[1,2]").unwrap(), StateHead::default());
        assert_eq!(
            StateHead::parse(br#"{"serial":"x"}"#).unwrap(),
            StateHead::default()
        );
        for bad in [
            &b"not json"[..],
            b"",
            b"{\"a\":1} trailing",
            b"{\"serial\":1",
        ] {
            assert!(
                matches!(StateHead::parse(bad), Err(StateError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_states_are_accepted_from_clients() {
        // None of these is a state: each must be refused, not stored in
        // place of one.
        for bad in [
            &b"{}"[..],
            b"[]",
            b"null",
            b"42",
            br#""text""#,
            br#"{"serial":"4","lineage":"L"}"#,
            br#"{"serial":-1,"lineage":"L"}"#,
            br#"{"serial":1.5,"lineage":"L"}"#,
            br#"{"serial":1}"#,
            br#"{"lineage":"L"}"#,
            br#"{"serial":1,"lineage":7}"#,
            br#"{"encrypted_data":"AAAA","meta":{}}"#,
            br#"{"meta":{},"encrypted_data":"A","encryption_version":"v0","serial":"x"}"#,
            b"not json",
            // Invalid UTF-8 inside a string serde would skip (found by fuzzing).
            b"{\"serial\":1,\"lineage\":\"x\",\"junk\":\"\xff\"}",
        ] {
            let e = StateHead::parse_incoming(bad).unwrap_err();
            assert!(matches!(e, StateError::BadRequest(_)), "{bad:?}: {e}");
        }
        let e = StateHead::parse_incoming(b"{}").unwrap_err().to_string();
        assert!(e.contains("serial"), "{e}");
        assert_eq!(
            StateHead::parse_incoming(br#"{"serial":0,"lineage":"L"}"#).unwrap(),
            StateHead {
                lineage: Some("L".into()),
                serial: Some(0),
                resources: 0,
                catalog: None,
            }
        );
        let enc = br#"{"meta":{"k":"v"},"encrypted_data":"AAAA","encryption_version":"v0"}"#;
        assert_eq!(
            StateHead::parse_incoming(enc).unwrap(),
            StateHead::default()
        );
        let enc_with_head = br#"{"serial":3,"lineage":"L","meta":{},"encrypted_data":"A","encryption_version":"v0"}"#;
        assert_eq!(
            StateHead::parse_incoming(enc_with_head).unwrap().serial,
            Some(3)
        );
    }

    #[test]
    fn stale_rules() {
        assert!(check_stale(&head("L", 5, 1), &head("L", 6, 1)).is_ok());
        assert!(
            check_stale(&head("L", 5, 1), &head("L", 4, 1))
                .unwrap_err()
                .to_string()
                .contains("serial 4")
        );
        assert!(check_stale(&head("L", 5, 1), &head("L", 5, 1)).is_err());
        let e = check_stale(&head("A", 5, 1), &head("B", 9, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("A") && e.contains("B"), "{e}");
        assert!(check_stale(&head("A", 5, 0), &head("B", 1, 0)).is_ok());
        assert!(check_stale(&StateHead::default(), &head("B", 1, 0)).is_ok());
        assert!(check_stale(&head("A", 5, 3), &StateHead::default()).is_ok());
    }
}

//! What identifies one state body to the rules and to history: its head
//! (lineage, serial, how many resources), its MD5, and who wrote it. The
//! write rules and history both read these; neither imports the other.

use bytes::Bytes;
use md5::{Digest, Md5};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{Held, StateError};
use crate::stores::Version;

/// The top-level fields of a Terraform state that the rules look at.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
pub struct StateHead {
    pub lineage: Option<String>,
    pub serial: Option<u64>,
    /// Only counted: a state with no resources may be replaced by another lineage.
    #[serde(default, deserialize_with = "count_items")]
    pub resources: usize,
}

fn count_items<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    Ok(Option::<Vec<IgnoredAny>>::deserialize(d)?.map_or(0, |v| v.len()))
}

impl StateHead {
    /// Checks that `body` is JSON and reads its lineage and serial where it
    /// is a Terraform state. Valid JSON of another shape gives an empty head.
    pub fn parse(body: &[u8]) -> Result<Self, StateError> {
        let not_json =
            |e: serde_json::Error| StateError::BadRequest(format!("the body is not JSON: {e}"));
        match serde_json::from_slice::<StateHead>(body) {
            Ok(head) => Ok(head),
            Err(e) if e.is_data() => {
                serde_json::from_slice::<IgnoredAny>(body).map_err(not_json)?;
                Ok(StateHead::default())
            }
            Err(e) => Err(not_json(e)),
        }
    }
}

/// The top level of an incoming body, as far as deciding whether it is a
/// state goes. `serial` and `lineage` are kept raw so that a wrong type is
/// reported as such rather than as a parse failure.
#[derive(Deserialize)]
struct Incoming {
    serial: Option<serde_json::Value>,
    lineage: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "count_items")]
    resources: usize,
    encryption_version: Option<IgnoredAny>,
    encrypted_data: Option<IgnoredAny>,
    meta: Option<IgnoredAny>,
}

impl StateHead {
    /// Checks that an incoming body is a state (rule 2 above) and reads its
    /// head; [`StateError::BadRequest`] names what is wrong.
    pub fn parse_incoming(body: &[u8]) -> Result<Self, StateError> {
        let refuse = |what: String| {
            StateError::BadRequest(format!("the body is not a Terraform state: {what}"))
        };
        // serde skips the strings it ignores without decoding them; JSON is
        // UTF-8, and a state must read back as JSON anywhere.
        if let Err(e) = std::str::from_utf8(body) {
            return Err(StateError::BadRequest(format!(
                "the body is not JSON: invalid UTF-8 at byte {}",
                e.valid_up_to()
            )));
        }
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            // Not an object: say whether it is JSON at all.
            serde_json::from_slice::<IgnoredAny>(body)
                .map_err(|e| StateError::BadRequest(format!("the body is not JSON: {e}")))?;
            return Err(refuse("expected a JSON object".into()));
        }
        let top: Incoming = serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                refuse(e.to_string())
            } else {
                StateError::BadRequest(format!("the body is not JSON: {e}"))
            }
        })?;
        let encrypted =
            top.encryption_version.is_some() && top.encrypted_data.is_some() && top.meta.is_some();
        let serial = match top.serial {
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                refuse(format!(
                    "`serial` must be a whole number of 0 or more, not {v}"
                ))
            })?),
            None if encrypted => None,
            None => return Err(refuse("it has no `serial`".into())),
        };
        let lineage = match top.lineage {
            Some(serde_json::Value::String(l)) => Some(l),
            Some(v) => return Err(refuse(format!("`lineage` must be a string, not {v}"))),
            None if encrypted => None,
            None => return Err(refuse("it has no `lineage`".into())),
        };
        Ok(StateHead {
            lineage,
            serial,
            resources: top.resources,
        })
    }
}

/// Hex MD5 of a body.
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who made a write, for its history record.
pub(super) struct Writer {
    pub who: Option<String>,
    pub lock_id: Option<String>,
    pub identity: Option<String>,
    pub operation: &'static str,
}

impl Writer {
    pub(super) fn from_holder(
        holder: Option<&Held>,
        identity: Option<&str>,
        operation: &'static str,
    ) -> Self {
        Writer {
            who: holder.map(|h| h.info.who.clone()).filter(|w| !w.is_empty()),
            lock_id: holder.map(|h| h.info.id.clone()),
            identity: identity.map(str::to_string),
            operation,
        }
    }

    /// A writer nobody knows: the state was found, not written here.
    pub(super) fn unknown() -> Self {
        Writer {
            who: None,
            lock_id: None,
            identity: None,
            operation: "found",
        }
    }
}

/// The stored state, as far as the rules need it.
pub(super) struct Current {
    /// Its version in the store, for the compare-and-swap.
    pub version: Version,
    pub head: StateHead,
    /// Hex MD5 of its bytes.
    pub md5: String,
}

/// A state body with what the rules and history know of it.
pub(super) struct Described<'a> {
    pub body: &'a Bytes,
    pub head: &'a StateHead,
    pub md5: &'a str,
}

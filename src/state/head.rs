//! What identifies one state body to the rules and to history: its head
//! (lineage, serial, how many resources, and the [`Catalog`] a search
//! reads), its MD5, and who wrote it. The write rules and history both
//! read these; neither imports the other.

use std::io::BufRead;
use std::sync::Arc;

use md5::{Digest, Md5};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::catalog::{self, Blocks, Catalog, V3Blocks};
use super::scan::go_folded;
use super::{Held, StateError};
use crate::settings::without_quoted_text;
use crate::stores::payload::CHUNK_BYTES;
use crate::stores::{Payload, StoreError};

/// The top-level fields of a Terraform state that the rules look at.
#[derive(Debug, Default, Clone)]
pub struct StateHead {
    pub lineage: Option<String>,
    pub serial: Option<u64>,
    /// Only counted: a state with no resources may be replaced by another lineage.
    pub resources: usize,
    /// What a search needs of the body, taken down in the same pass;
    /// `None` when not known (a head rebuilt from a history record) or
    /// past [`catalog::CATALOG_BYTES_MAX`].
    pub catalog: Option<Arc<Catalog>>,
}

/// Heads are equal when the rules judge them alike: the catalog is what
/// the same body holds besides, and a head rebuilt from a record has none.
impl PartialEq for StateHead {
    fn eq(&self, other: &Self) -> bool {
        (&self.lineage, self.serial, self.resources)
            == (&other.lineage, other.serial, other.resources)
    }
}

impl Eq for StateHead {}

/// The members [`StateHead::parse`] reads; the others are skipped unread.
#[derive(Deserialize)]
struct Plain {
    lineage: Option<String>,
    serial: Option<u64>,
    #[serde(default)]
    resources: Option<Blocks>,
    #[serde(default, deserialize_with = "catalog::lenient_text")]
    terraform_version: Option<String>,
    #[serde(default)]
    modules: V3Blocks,
}

impl StateHead {
    /// A head of what a body holds: the blocks of its `resources` and of
    /// a version-3 state's `modules` ([`V3Blocks`]).
    fn of(
        lineage: Option<String>,
        serial: Option<u64>,
        resources: Option<Blocks>,
        terraform_version: Option<String>,
        v3: V3Blocks,
    ) -> Self {
        let mut blocks = resources.unwrap_or_default();
        blocks.extend(v3.0, None);
        StateHead {
            lineage,
            serial,
            resources: blocks.count,
            catalog: Catalog::build(terraform_version, blocks),
        }
    }

    /// Checks that `body` is JSON and reads its lineage and serial where it
    /// is a Terraform state. Valid JSON of another shape gives an empty head.
    pub fn parse(body: &[u8]) -> Result<Self, StateError> {
        Self::parse_with(
            || serde_json::from_slice(body),
            || serde_json::from_slice::<IgnoredAny>(body).map(drop),
        )
    }

    /// [`StateHead::parse`]'s judgement of a body that `plain` reads as a
    /// state and, when it is JSON of another shape, `any` reads as JSON.
    fn parse_with(
        plain: impl FnOnce() -> serde_json::Result<Plain>,
        any: impl FnOnce() -> serde_json::Result<()>,
    ) -> Result<Self, StateError> {
        let judged = |e: serde_json::Error| match e.is_io() {
            true => StateError::Store(StoreError::unavailable(format!("reading the body: {e}"))),
            false => not_json(e),
        };
        match plain() {
            Ok(p) => Ok(StateHead::of(
                p.lineage,
                p.serial,
                p.resources,
                p.terraform_version,
                p.modules,
            )),
            Err(e) if e.is_data() => {
                any().map_err(judged)?;
                Ok(StateHead::default())
            }
            Err(e) => Err(judged(e)),
        }
    }
}

/// The top level of an incoming body, as far as deciding whether it is a
/// state goes. `serial` and `lineage` are kept raw so that a wrong type is
/// reported as such rather than as a parse failure.
#[derive(Default)]
struct Incoming {
    serial: Option<serde_json::Value>,
    lineage: Option<serde_json::Value>,
    resources: Option<Blocks>,
    /// Read for the catalog only: not one of the [`READ_MEMBERS`] whose
    /// other spellings are refused, since no rule judges it.
    terraform_version: Option<String>,
    /// A version-3 state's resource blocks.
    modules: V3Blocks,
    encryption_version: bool,
    encrypted_data: bool,
    meta: bool,
    /// A member Terraform reads a state's contents from is present (in
    /// any spelling): the body is a state, whatever else it holds.
    state_members: bool,
}

/// The members that make a body a state to Terraform, beside the
/// members of an encrypted envelope: such a body is no envelope.
const STATE_MEMBERS: &[&str] = &[
    "version",
    "outputs",
    "resources",
    "modules",
    "check_results",
];

/// The members [`Incoming`] reads.
const READ_MEMBERS: &[&str] = &[
    "serial",
    "lineage",
    "resources",
    "modules",
    "encryption_version",
    "encrypted_data",
    "meta",
];

impl<'de> Deserialize<'de> for Incoming {
    /// Reads the members the rules look at and skips the rest unread. A
    /// member repeated, or spelled so that Terraform would take it for one
    /// of them (`SERIAL`, `Lineage`), is refused: Terraform keeps the last
    /// of such spellings, so the rules would judge another serial or
    /// lineage than the one Terraform reads back.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Incoming;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Incoming, A::Error> {
                use serde::de::Error;
                let mut out = Incoming::default();
                let mut seen = [false; READ_MEMBERS.len()];
                let mut outputs = false;
                while let Some(name) = map.next_key::<String>()? {
                    let folded = go_folded(&name);
                    out.state_members |= STATE_MEMBERS.contains(&&*folded);
                    if folded == "outputs" && name != "outputs" {
                        return Err(A::Error::custom(format!(
                            "it has a member `{name}`, which Terraform reads as `outputs`; \
                             only the exact name is accepted"
                        )));
                    }
                    // Repeated, the diff and the state page read one of
                    // them and Terraform the last: what a write changed
                    // could be hidden from whoever reviews it.
                    if name == "outputs" {
                        if std::mem::replace(&mut outputs, true) {
                            return Err(A::Error::duplicate_field("outputs"));
                        }
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    if name == "terraform_version" {
                        out.terraform_version = map.next_value::<catalog::LenientText>()?.0;
                        continue;
                    }
                    let Some(at) = READ_MEMBERS.iter().position(|m| *m == name) else {
                        if let Some(member) = READ_MEMBERS.iter().find(|m| **m == folded) {
                            // Only spellings of a member's name get here.
                            return Err(A::Error::custom(format!(
                                "it has a member `{name}`, which Terraform reads as `{member}`; \
                                 only the exact name is accepted"
                            )));
                        }
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    if std::mem::replace(&mut seen[at], true) {
                        return Err(A::Error::duplicate_field(READ_MEMBERS[at]));
                    }
                    match READ_MEMBERS[at] {
                        "serial" => out.serial = map.next_value()?,
                        "lineage" => out.lineage = map.next_value()?,
                        "resources" => out.resources = map.next_value()?,
                        "modules" => out.modules = map.next_value()?,
                        member => {
                            let present = map.next_value::<Option<IgnoredAny>>()?.is_some();
                            match member {
                                "encryption_version" => out.encryption_version = present,
                                "encrypted_data" => out.encrypted_data = present,
                                _ => out.meta = present,
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Members)
    }
}

impl StateHead {
    /// Checks that an incoming body is a state (rule 2 above) and reads its
    /// head; [`StateError::BadRequest`] names what is wrong. A body in a
    /// file is read a piece at a time on a blocking thread.
    pub async fn parse_payload(body: &Payload) -> Result<Self, StateError> {
        Self::judge(body, Self::parse_incoming, Self::parse_incoming_reader).await
    }

    /// [`StateHead::parse`] of a body as a store hands it out: a body in a
    /// file is read a piece at a time on a blocking thread, so a state of
    /// any size is never held whole.
    pub async fn parse_any(body: &Payload) -> Result<Self, StateError> {
        Self::judge(body, Self::parse, Self::parse_any_reader).await
    }

    /// Judges a body in memory with `in_memory`, or one in a file with
    /// `in_file` on a blocking thread.
    async fn judge(
        body: &Payload,
        in_memory: fn(&[u8]) -> Result<Self, StateError>,
        in_file: fn(&Payload) -> Result<Self, StateError>,
    ) -> Result<Self, StateError> {
        if let Some(bytes) = body.as_memory() {
            return in_memory(bytes);
        }
        let body = body.clone();
        tokio::task::spawn_blocking(move || in_file(&body))
            .await
            .map_err(|e| {
                StateError::Store(StoreError::unavailable(format!("worker failed: {e}")))
            })?
    }

    /// The head of a body found in the store rather than sent (a state
    /// another tool wrote, a version whose record was lost): what
    /// [`StateHead::parse_any`] reads, an empty head when it is not JSON.
    pub async fn parse_found(body: &Payload) -> Self {
        Self::parse_any(body).await.unwrap_or_default()
    }

    /// [`StateHead::parse`] over a reader: the same judgement, bytes in the
    /// strings it skips included (not checked as UTF-8 there either).
    fn parse_any_reader(body: &Payload) -> Result<Self, StateError> {
        let reader = || std::io::BufReader::with_capacity(CHUNK_BYTES, body.reader());
        Self::parse_with(
            || serde_json::from_reader(reader()),
            || serde_json::from_reader::<_, IgnoredAny>(reader()).map(drop),
        )
    }

    /// [`StateHead::parse_payload`] of a body in memory.
    pub fn parse_incoming(body: &[u8]) -> Result<Self, StateError> {
        // serde skips the strings it ignores without decoding them; JSON is
        // UTF-8, and a state must read back as JSON anywhere.
        if let Err(e) = std::str::from_utf8(body) {
            return Err(invalid_utf8(e.valid_up_to() as u64));
        }
        let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first != Some(b'{') {
            // Not an object: say whether it is JSON at all.
            serde_json::from_slice::<IgnoredAny>(body).map_err(not_json)?;
            return Err(not_a_state("expected a JSON object".into()));
        }
        serde_json::from_slice(body)
            .map_err(not_a_state_or_json)
            .and_then(Incoming::head)
    }

    /// The same checks over a reader, keeping a few hundred kilobytes in
    /// memory whatever the body's size.
    fn parse_incoming_reader(body: &Payload) -> Result<Self, StateError> {
        let checked = Utf8Checked::new(body.reader());
        let mut reader = std::io::BufReader::with_capacity(CHUNK_BYTES, checked);
        let read_failed = |e: std::io::Error| {
            StateError::Store(StoreError::unavailable(format!("reading the body: {e}")))
        };
        let first = loop {
            let buf = reader.fill_buf().map_err(read_failed)?;
            if buf.is_empty() {
                break None;
            }
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => break Some(buf[i]),
                None => {
                    let n = buf.len();
                    reader.consume(n);
                }
            }
        };
        if first != Some(b'{') {
            let any = serde_json::from_reader::<_, IgnoredAny>(&mut reader);
            if let Some(at) = reader.get_ref().invalid_at {
                return Err(invalid_utf8(at));
            }
            any.map_err(not_json)?;
            return Err(not_a_state("expected a JSON object".into()));
        }
        let top = serde_json::from_reader::<_, Incoming>(&mut reader);
        if let Some(at) = reader.get_ref().invalid_at {
            return Err(invalid_utf8(at));
        }
        top.map_err(not_a_state_or_json).and_then(Incoming::head)
    }
}

/// The longest lineage quoted whole in a message; Terraform's are UUIDs (36).
const LINEAGE_SHOWN_MAX: usize = 64;

/// A lineage as messages quote it: whole up to [`LINEAGE_SHOWN_MAX`]
/// characters, otherwise its start and its length, so a refusal of a cheap
/// write never carries a state-sized lineage into a response, a log line
/// and every notification.
pub fn shown_lineage(lineage: &str) -> std::borrow::Cow<'_, str> {
    match lineage.char_indices().nth(LINEAGE_SHOWN_MAX) {
        None => lineage.into(),
        Some((end, _)) => format!("{}... ({} bytes)", &lineage[..end], lineage.len()).into(),
    }
}

fn not_a_state(what: String) -> StateError {
    StateError::BadRequest(format!("the body is not a Terraform state: {what}"))
}

fn not_json(e: serde_json::Error) -> StateError {
    StateError::BadRequest(format!("the body is not JSON: {e}"))
}

fn not_a_state_or_json(e: serde_json::Error) -> StateError {
    if e.is_data() {
        not_a_state(without_quoted_text(&e.to_string()))
    } else {
        not_json(e)
    }
}

/// What a value is, without what it holds.
fn kind_of(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "true or false".into(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn invalid_utf8(at: u64) -> StateError {
    StateError::BadRequest(format!("the body is not JSON: invalid UTF-8 at byte {at}"))
}

impl Incoming {
    /// The head of a body that parsed as an object: an encrypted envelope
    /// may lack `serial` and `lineage`, a plain state may not. A body with
    /// the envelope's members and a state's is a state to Terraform, which
    /// ignores the envelope's: it is judged as one.
    fn head(self) -> Result<StateHead, StateError> {
        let encrypted =
            self.encryption_version && self.encrypted_data && self.meta && !self.state_members;
        let serial = match self.serial {
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                not_a_state(format!(
                    "`serial` must be a whole number of 0 or more, not {}",
                    kind_of(&v)
                ))
            })?),
            None if encrypted => None,
            None => return Err(not_a_state("it has no `serial`".into())),
        };
        let lineage = match self.lineage {
            Some(serde_json::Value::String(l)) => Some(l),
            Some(v) => {
                return Err(not_a_state(format!(
                    "`lineage` must be a string, not {}",
                    kind_of(&v)
                )));
            }
            None if encrypted => None,
            None => return Err(not_a_state("it has no `lineage`".into())),
        };
        Ok(StateHead::of(
            lineage,
            serial,
            self.resources,
            self.terraform_version,
            self.modules,
        ))
    }
}

/// Validates UTF-8 as bytes pass through, a piece at a time (a character
/// may be split between two reads).
struct Utf8Checked<R> {
    inner: R,
    /// The start of a character whose last bytes have not been read yet.
    pending: [u8; 4],
    pending_len: usize,
    /// Bytes seen so far.
    offset: u64,
    /// Where the first invalid sequence starts.
    invalid_at: Option<u64>,
}

impl<R> Utf8Checked<R> {
    fn new(inner: R) -> Self {
        Utf8Checked {
            inner,
            pending: [0; 4],
            pending_len: 0,
            offset: 0,
            invalid_at: None,
        }
    }

    fn check(&mut self, mut data: &[u8]) {
        if self.invalid_at.is_some() {
            return;
        }
        if data.is_empty() {
            // The end: a character left unfinished is invalid.
            if self.pending_len > 0 {
                self.invalid_at = Some(self.offset - self.pending_len as u64);
            }
            return;
        }
        while self.pending_len > 0 && !data.is_empty() {
            self.pending[self.pending_len] = data[0];
            self.pending_len += 1;
            data = &data[1..];
            self.offset += 1;
            match std::str::from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() => {}
                Err(_) => {
                    self.invalid_at = Some(self.offset - self.pending_len as u64);
                    return;
                }
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => self.offset += data.len() as u64,
            Err(e) if e.error_len().is_none() => {
                let rest = &data[e.valid_up_to()..];
                self.pending[..rest.len()].copy_from_slice(rest);
                self.pending_len = rest.len();
                self.offset += data.len() as u64;
            }
            Err(e) => self.invalid_at = Some(self.offset + e.valid_up_to() as u64),
        }
    }
}

impl<R: std::io::Read> std::io::Read for Utf8Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check(&buf[..n]);
        Ok(n)
    }
}

/// Hex MD5 of a body.
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

pub use crate::stores::payload::hex;

/// Who made a write, for its history record.
#[derive(Clone)]
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

/// A state body with what the rules and history know of it.
pub(super) struct Described<'a> {
    pub body: &'a Payload,
    pub head: &'a StateHead,
    pub md5: &'a str,
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use super::*;
    use crate::stores::payload::FileBody;

    fn in_file(body: &[u8]) -> Payload {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(body).unwrap();
        Payload::File(Arc::new(FileBody::new(file, body.len() as u64)))
    }

    /// Hands out one byte per read, so characters split between reads.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((&first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buf[0] = first;
            self.0 = rest;
            Ok(1)
        }
    }

    fn utf8_error_at(body: &[u8]) -> Option<u64> {
        let mut checked = Utf8Checked::new(Trickle(body));
        std::io::copy(&mut checked, &mut std::io::sink()).unwrap();
        checked.invalid_at
    }

    #[test]
    fn utf8_is_checked_across_reads() {
        for body in [
            "plain".as_bytes(),
            "é".as_bytes(),
            "a€b𝄞c".as_bytes(),
            b"",
            b"ok\xff",
            b"\xe2\x82",
            b"ab\xe2\x28\xa1",
            b"\xf0\x9d\x84\x9e\xc3",
            b"\xed\xa0\x80",
        ] {
            let expected = std::str::from_utf8(body)
                .err()
                .map(|e| e.valid_up_to() as u64);
            assert_eq!(utf8_error_at(body), expected, "{body:?}");
        }
    }

    /// A body in a file is judged exactly as the same body in memory.
    #[test]
    fn bodies_in_files_are_judged_as_in_memory() {
        let big_junk = format!(
            r#"{{"serial":1,"lineage":"L","resources":[{}],"junk":"{}"}}"#,
            vec!["{}"; 3000].join(","),
            "é".repeat(400_000)
        );
        let cases: Vec<&[u8]> = vec![
            br#"{"version":4,"serial":7,"lineage":"L","resources":[{"a":1},{"b":2}]}"#,
            b"  \n {\"serial\":0,\"lineage\":\"L\"}  ",
            br#"{"meta":{"k":"v"},"encrypted_data":"AAAA","encryption_version":"v0"}"#,
            big_junk.as_bytes(),
            b"{}",
            b"[]",
            b"[0,\"L\",[],null,null,null]",
            b"null",
            b"   ",
            b"",
            br#"{"serial":"4","lineage":"L"}"#,
            br#"{"serial":-1,"lineage":"L"}"#,
            br#"{"serial":1}"#,
            br#"{"serial":1,"lineage":7}"#,
            b"not json",
            b"{\"serial\":1,\"lineage\":\"L\"} trailing",
            b"{\"serial\":1,\"lineage\":\"x\",\"junk\":\"\xff\"}",
            b"{\"serial\":1,\"lineage\":\"x\"}\xc3",
            b"[\"\xff\"]",
        ];
        type Judged = Result<StateHead, StateError>;
        let agree = |body: &[u8], in_memory: Judged, from_file: Judged| {
            let in_memory = in_memory.map_err(|e| e.to_string());
            let from_file = from_file.map_err(|e| {
                assert!(matches!(e, StateError::BadRequest(_)), "{e}");
                e.to_string()
            });
            match (&in_memory, &from_file) {
                (Ok(a), Ok(b)) => assert_eq!((a, &a.catalog), (b, &b.catalog)),
                (Err(_), Err(_)) => {}
                _ => panic!(
                    "{:?}: in memory {in_memory:?}, from a file {from_file:?}",
                    String::from_utf8_lossy(&body[..body.len().min(80)])
                ),
            }
        };
        for body in &cases {
            // As a client's body is judged, and as any JSON is read.
            let file = in_file(body);
            agree(
                body,
                StateHead::parse_incoming(body),
                StateHead::parse_incoming_reader(&file),
            );
            agree(
                body,
                StateHead::parse(body),
                StateHead::parse_any_reader(&file),
            );
        }
        let head = StateHead::parse_incoming_reader(&in_file(big_junk.as_bytes())).unwrap();
        assert_eq!((head.serial, head.resources), (Some(1), 3000));
    }

    /// A version-3 state keeps its resources in its modules: they count,
    /// so another lineage cannot replace it as if it held none, and any
    /// other shape of `modules` counts none without refusing the body.
    #[test]
    fn a_version_3_states_resources_are_counted() {
        let v3 = br#"{"version":3,"serial":5,"lineage":"AAA","modules":[
            {"path":["root"],"outputs":{},"resources":{
                "aws_instance.web":{"type":"aws_instance","primary":{"id":"i-1"}},
                "aws_eip.ip":{"type":"aws_eip","primary":{"id":"e-1"}}}},
            {"path":["root","db"],"resources":{"aws_db_instance.main":{}}}]}"#;
        let empty = br#"{"version":3,"serial":1,"lineage":"AAA","modules":[
            {"path":["root"],"outputs":{},"resources":{},"depends_on":[]}]}"#;
        for (body, n) in [
            (&v3[..], 3),
            (&empty[..], 0),
            (br#"{"serial":1,"lineage":"L","modules":"odd"}"#, 0),
            (
                br#"{"serial":1,"lineage":"L","modules":[1,null,{"resources":[1]}]}"#,
                0,
            ),
        ] {
            for head in [
                StateHead::parse(body).unwrap(),
                StateHead::parse_incoming(body).unwrap(),
                StateHead::parse_incoming_reader(&in_file(body)).unwrap(),
            ] {
                assert_eq!(head.resources, n, "{}", String::from_utf8_lossy(body));
            }
        }
        let other = StateHead::parse_incoming(br#"{"version":4,"serial":1,"lineage":"BBB"}"#);
        let e = crate::state::write::check_stale(&StateHead::parse(v3).unwrap(), &other.unwrap());
        assert!(e.unwrap_err().to_string().contains("lineage mismatch"));
    }

    /// `modules` given twice, or under another spelling Terraform reads
    /// as it, is refused as `resources` is: the views would read other
    /// resources than Terraform. With `resources` beside it, both count.
    #[test]
    fn modules_are_one_member_and_count_beside_resources() {
        for body in [
            &br#"{"serial":1,"lineage":"L","modules":[],"modules":[]}"#[..],
            br#"{"serial":1,"lineage":"L","Modules":[{"resources":{"t.a":{}}}]}"#,
        ] {
            for e in [
                StateHead::parse_incoming(body).unwrap_err(),
                StateHead::parse_incoming_reader(&in_file(body)).unwrap_err(),
            ] {
                assert!(matches!(e, StateError::BadRequest(_)), "{e}");
                assert!(e.to_string().contains("modules"), "{e}");
            }
        }
        let both = br#"{"serial":1,"lineage":"L","resources":[{"type":"t","name":"a"}],
            "modules":[{"path":["root","m"],"resources":{"u.b.0":{},"u.b.1":{}}}]}"#;
        let head = StateHead::parse_incoming(both).unwrap();
        assert_eq!(head.resources, 2);
        let blocks: Vec<_> = head
            .catalog
            .unwrap()
            .blocks()
            .map(|b| (b.address(), b.instances))
            .collect();
        assert_eq!(
            blocks,
            [("t.a".to_string(), 0), ("module.m.u.b".to_string(), 2)]
        );
    }

    /// A version-3 state's blocks are what a search finds: the instances
    /// of one name (`<name>.<index>`) one block, by module, mode and
    /// legacy provider.
    #[test]
    fn a_version_3_states_blocks_are_catalogued() {
        let body = br#"{"version":3,"terraform_version":"0.11.14","serial":5,"lineage":"A",
            "modules":[
            {"resources":{"aws_instance.web.0":{"provider":"provider.aws"},
                "aws_instance.web.1":{"provider":"provider.aws"},
                "data.aws_ami.ubuntu":{"provider":"provider.aws.west"}},"path":["root"]},
            {"path":["root","net","sub"],"resources":{"aws_subnet.private":{}}},
            "odd", {"path":"odd","resources":{"t.x":5}}]}"#;
        for head in [
            StateHead::parse(body).unwrap(),
            StateHead::parse_incoming(body).unwrap(),
            StateHead::parse_incoming_reader(&in_file(body)).unwrap(),
        ] {
            assert_eq!(head.resources, 4);
            let catalog = head.catalog.unwrap();
            assert_eq!(catalog.terraform_version.as_deref(), Some("0.11.14"));
            let blocks: Vec<_> = catalog
                .blocks()
                .map(|b| (b.address(), b.mode(), b.provider, b.instances))
                .collect();
            let aws = "registry.terraform.io/-/aws".to_string();
            assert_eq!(
                blocks,
                [
                    ("aws_instance.web".into(), "managed", aws.clone(), 2),
                    ("data.aws_ami.ubuntu".into(), "data", aws, 1),
                    (
                        "module.net.module.sub.aws_subnet.private".into(),
                        "managed",
                        String::new(),
                        1
                    ),
                    ("t.x".into(), "managed", String::new(), 1),
                ]
            );
        }
    }

    /// A refusal names what is wrong with a body and holds nothing of it,
    /// however the body is read.
    #[test]
    fn refusals_hold_nothing_of_the_body() {
        let secret = "hunter2-SECRET";
        let bodies = [
            format!(r#"{{"serial":{{"outputs":{{"pw":{{"value":"{secret}"}}}}}},"lineage":"L"}}"#),
            format!(r#"{{"serial":"{secret}","lineage":"L"}}"#),
            format!(r#"{{"serial":1,"lineage":["{secret}"]}}"#),
            format!(r#"{{"serial":1,"lineage":"L","resources":"{secret} \" {secret}"}}"#),
        ];
        for body in &bodies {
            for refused in [
                StateHead::parse_incoming(body.as_bytes()),
                StateHead::parse_incoming_reader(&in_file(body.as_bytes())),
            ] {
                let said = refused.unwrap_err().to_string();
                assert!(said.contains("not a Terraform state"), "{said}");
                assert!(!said.contains("hunter2"), "{said}");
            }
        }
        let said = StateHead::parse_incoming(bodies[0].as_bytes())
            .unwrap_err()
            .to_string();
        assert!(said.ends_with("not an object"), "{said}");
        let said = StateHead::parse_incoming(bodies[3].as_bytes())
            .unwrap_err()
            .to_string();
        assert!(said.contains("invalid type: string, expected"), "{said}");
        assert_eq!(
            without_quoted_text(r#"a "b \" c" d "e"#),
            "a d",
            "an unclosed quote runs to the end"
        );
        assert_eq!(
            without_quoted_text("invalid type: integer `8675309`, expected a string at `auth`"),
            "invalid type: integer, expected a string at `auth`",
            "a number is a value too; other backticks name things"
        );
    }

    /// The catalog comes from the same pass as the head, alike whichever
    /// way the body is read, and holds no value.
    #[test]
    fn the_catalog_is_taken_down_with_the_head() {
        let body = br#"{"version":4,"terraform_version":"1.5.7","serial":3,"lineage":"L",
            "outputs":{"pw":{"value":"hunter2"}},
            "resources":[{"module":"module.db","mode":"managed","type":"aws_db_instance",
              "name":"main","provider":"provider[\"registry.terraform.io/hashicorp/aws\"]",
              "instances":[{"attributes":{"password":"hunter2"}}]},
             {"mode":"data","type":"aws_ami","name":"u","instances":[]}]}"#;
        let heads = [
            StateHead::parse_incoming(body).unwrap(),
            StateHead::parse_incoming_reader(&in_file(body)).unwrap(),
            StateHead::parse(body).unwrap(),
        ];
        for head in &heads {
            let catalog = head.catalog.as_deref().unwrap();
            assert_eq!(catalog, heads[0].catalog.as_deref().unwrap());
            assert_eq!(catalog.terraform_version.as_deref(), Some("1.5.7"));
            let addresses: Vec<String> = catalog.blocks().map(|b| b.address()).collect();
            assert_eq!(
                addresses,
                ["module.db.aws_db_instance.main", "data.aws_ami.u"]
            );
            assert_eq!(catalog.entries()[0].instances, 1);
            let kept = serde_json::to_string(catalog).unwrap();
            assert!(!kept.contains("hunter2"), "{kept}");
        }
        // Another spelling of `terraform_version` is no rule's business.
        let head =
            StateHead::parse_incoming(br#"{"serial":1,"lineage":"L","Terraform_Version":"9"}"#)
                .unwrap();
        assert_eq!(head.catalog.unwrap().terraform_version, None);
    }

    #[test]
    fn members_terraform_would_read_otherwise_are_refused() {
        for body in [
            &br#"{"serial":50,"lineage":"L","SERIAL":3}"#[..],
            br#"{"Serial":3,"lineage":"L"}"#,
            br#"{"serial":1,"lineage":"L","LINEAGE":"M"}"#,
            "{\"\u{17f}erial\":3,\"serial\":4,\"lineage\":\"L\"}".as_bytes(),
            br#"{"serial":1,"lineage":"L","Resources":[]}"#,
            br#"{"serial":1,"serial":2,"lineage":"L"}"#,
            br#"{"serial":1,"lineage":"L","resources":[],"resources":[{}]}"#,
            br#"{"serial":1,"lineage":"L","outputs":{"o":{"value":1}},"outputs":{}}"#,
            // Terraform merges it into `outputs`, which the views read alone.
            br#"{"serial":1,"lineage":"L","outputs":{},"Outputs":{"o":{"value":1}}}"#,
        ] {
            for result in [
                StateHead::parse_incoming(body),
                StateHead::parse_incoming_reader(&in_file(body)),
            ] {
                let e = result.expect_err(&String::from_utf8_lossy(body));
                assert!(matches!(e, StateError::BadRequest(_)), "{e}");
            }
        }
        let e = StateHead::parse_incoming(br#"{"serial":1,"lineage":"L","SERIAL":3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`SERIAL`") && e.contains("`serial`"), "{e}");
        // Other members are Terraform's business, in any spelling.
        let head = StateHead::parse_incoming(
            br#"{"serial":1,"lineage":"L","Check_Results":[],"VERSION":4}"#,
        )
        .unwrap();
        assert_eq!(head.serial, Some(1));
    }

    /// A body with an encrypted envelope's members and a state's is a
    /// state to Terraform, which ignores the envelope's: it needs a serial
    /// and a lineage, which the stale-write rules then judge.
    #[test]
    fn an_envelope_beside_a_state_is_a_state() {
        let envelope = r#""encryption_version":"v0","encrypted_data":"AA==","meta":{}"#;
        let alone = format!("{{{envelope}}}");
        let head = StateHead::parse_incoming(alone.as_bytes()).unwrap();
        assert_eq!((head.serial, head.lineage), (None, None));
        for member in [
            r#""version":4"#,
            r#""Outputs":{}"#,
            r#""resources":[]"#,
            r#""modules":[]"#,
            r#""check_results":null"#,
        ] {
            let body = format!("{{{member},{envelope}}}");
            for result in [
                StateHead::parse_incoming(body.as_bytes()),
                StateHead::parse_incoming_reader(&in_file(body.as_bytes())),
            ] {
                let e = result.expect_err(&body);
                assert!(matches!(e, StateError::BadRequest(_)), "{e}");
            }
        }
    }
}

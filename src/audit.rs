//! The audit log: one JSON line per security-relevant action (locks,
//! unlocks, force-unlocks, accepted and refused writes, deletes, refused
//! credentials and permissions), with the identity and the client address.
//! It goes to its own file (`audit_log`) or to stderr, apart from the
//! request log, and never carries a credential or any state content.
//!
//! The log does not know what happened: it writes whatever [`Entry`] it is
//! handed, and [`crate::ops`], where every audited action happens, is the
//! one implementor, turning its typed events into entries. So the field
//! names of each action are spelt in one place, and this module depends
//! on nothing above it.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One audit line's content: the action it names and its fields. Fields
/// whose value is `null` are left out of the line.
pub trait Entry {
    /// The value of the line's `audit` field (`write`, `force_unlock`, ...).
    fn action(&self) -> &'static str;
    /// The other fields, by name.
    fn fields(&self) -> Vec<(&'static str, Value)>;
}

/// Where audit events are written.
pub struct Audit {
    sink: Mutex<Box<dyn Write + Send>>,
}

impl Audit {
    /// Appends to `path` (created with mode 0600), or writes to stderr.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match path {
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                Box::new(
                    File::options()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(p)?,
                )
            }
            None => Box::new(std::io::stderr()),
        };
        Ok(Audit {
            sink: Mutex::new(sink),
        })
    }

    /// Writes one line: the entry's action and fields, with the time.
    pub fn record(&self, entry: &dyn Entry) {
        let mut line = Map::new();
        line.insert(
            "time".into(),
            Value::String(
                OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default(),
            ),
        );
        line.insert("audit".into(), Value::String(entry.action().to_string()));
        for (k, v) in entry.fields() {
            if !v.is_null() {
                line.insert(k.to_string(), v);
            }
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let mut sink = self.sink.lock().expect("audit lock");
        if let Err(e) = sink.write_all(text.as_bytes()).and_then(|()| sink.flush()) {
            tracing::error!(error = %e, "writing the audit log failed");
        }
    }
}

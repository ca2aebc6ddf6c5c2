//! The audit log: one JSON line per security-relevant action (locks,
//! unlocks, force-unlocks, accepted and refused writes, deletes, refused
//! credentials and permissions), with the identity and the client address.
//! It goes to its own file (`audit_log`) or to stderr, apart from the
//! request log, and never carries a credential or any state content: the
//! callers pass only names, keys, numbers and reasons.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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

    /// Writes one event: `action` plus `fields`, with the time.
    pub fn event(&self, action: &str, fields: &[(&str, Value)]) {
        let mut line = Map::new();
        line.insert(
            "time".into(),
            Value::String(
                OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default(),
            ),
        );
        line.insert("audit".into(), Value::String(action.to_string()));
        for (k, v) in fields {
            if !v.is_null() {
                line.insert((*k).to_string(), v.clone());
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

//! What goes on the wire: the body of each format and the signature.
//!
//! The signature is Stripe's scheme: `Stategate-Signature: t=<unix
//! seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. Signing the time with
//! the body lets a receiver refuse a replay of an old notification; the
//! event id (`Stategate-Event-Id`, also in the body) lets it drop the
//! repeats that at-least-once delivery sends.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::destination::{Format, Secret};
use super::record::{Kind, Record};

/// The header naming the event.
pub const EVENT_ID_HEADER: &str = "Stategate-Event-Id";
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Stategate-Signature";

/// The prefix of every CloudEvents `type`.
pub const CLOUDEVENTS_TYPE_PREFIX: &str = "dev.stategate.";

/// A body and its content type.
pub struct Body {
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// `record` written in `format`; `source` is the CloudEvents source
/// (`stategate://<host>`).
pub fn body(record: &Record, format: Format, source: &str) -> Body {
    let value = match format {
        Format::CloudEvents => cloudevent(record, source),
        Format::Slack => json!({ "text": slack_text(record) }),
    };
    Body {
        content_type: match format {
            Format::CloudEvents => "application/cloudevents+json",
            Format::Slack => "application/json",
        },
        bytes: serde_json::to_vec(&value).expect("a JSON value serialises"),
    }
}

/// CloudEvents 1.0 in structured JSON mode: the context attributes at the
/// top, the record as `data`.
fn cloudevent(record: &Record, source: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": record.id,
        "source": source,
        "type": format!("{CLOUDEVENTS_TYPE_PREFIX}{}", record.kind.name()),
        "time": record.time,
        "subject": record.state_name(),
        "datacontenttype": "application/json",
        "data": record,
    })
}

/// One readable line. Every value in it is as Slack shows text ([`inert`]):
/// a lock holder's `Who`, a key or a reason cannot mention anyone, make a
/// link of its own text or start a line of its own. (A bare URL in it is
/// still shown as a link, as in any text.)
pub fn slack_text(record: &Record) -> String {
    let state = inert(&record.state_name());
    let who = inert(record.actor.identity.as_deref().unwrap_or("someone"));
    let via = match record.actor.via.as_str() {
        "server" => String::new(),
        via => format!(" via {} from {}", inert(via), inert(&record.actor.client)),
    };
    let detail = |name: &str| {
        record
            .details
            .get(name)
            .map(|v| match v {
                Value::String(s) => inert(s),
                other => inert(&other.to_string()),
            })
            .unwrap_or_default()
    };
    let serial = record
        .serial
        .map(|s| format!(" (serial {s})"))
        .unwrap_or_default();
    let line = match record.kind {
        Kind::Written => format!("{state} was written by {who}{via}{serial}"),
        Kind::WriteRefused => format!(
            "A write to {state} by {who}{via} was refused ({}): {}",
            detail("refusal"),
            detail("reason")
        ),
        Kind::Restored => format!(
            "{state} was restored to version {} by {who}{via}",
            detail("restored_version")
        ),
        Kind::Deleted => format!("{state} was deleted by {who}{via}"),
        Kind::Purged => format!(
            "The history of {state} ({} versions) was purged by {who}{via}",
            detail("versions")
        ),
        Kind::LockTaken => format!("{state} was locked by {who}{via}"),
        Kind::LockReleased => format!("{state} was unlocked by {who}{via}"),
        Kind::LockForceReleased => format!(
            "The lock of {state} held by {} was force-released by {who}{via}",
            detail("previous_holder")
        ),
        Kind::LockHeldTooLong => format!(
            "The lock of {state} has been held by {} for {} (since {})",
            detail("holder"),
            detail("held_for"),
            detail("created")
        ),
        Kind::KeyUnusable => format!(
            "{state} cannot be opened with the configured encryption keys: {}",
            detail("reason")
        ),
    };
    format!("stategate: {line}")
}

/// `text` as Slack and the services that take its webhooks show it, not as
/// markup: `&`, `<` and `>` escaped as Slack asks (its mentions and links
/// are written inside `<` `>`); an `@` that starts a word, which
/// Mattermost, Rocket.Chat and Discord read as a mention (`@channel`,
/// `@here`, `@everyone`), as the full-width `＠`; control characters and
/// Unicode's line and paragraph separators as spaces.
fn inert(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_word = false;
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' if !in_word => out.push('\u{FF20}'),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => out.push(' '),
            c => out.push(c),
        }
        in_word = c.is_alphanumeric() || matches!(c, '.' | '_' | '-');
    }
    out
}

/// The `Stategate-Signature` value of `body` sent at `unix_seconds`.
pub fn signature(secret: &Secret, unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes any key length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("t={unix_seconds},v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::record::{ActorId, StateId};

    fn record() -> Record {
        let mut r = Record::new(
            Kind::Written,
            StateId {
                key: "prod/net".into(),
                workspace: "default".into(),
            },
            ActorId {
                identity: Some("user:ann".into()),
                client: "10.0.0.7".into(),
                via: "http".into(),
            },
        );
        r.serial = Some(7);
        r.version = Some(3);
        r
    }

    #[test]
    fn the_signature_is_stripes_scheme() {
        // HMAC-SHA256("key", "1700000000.{}"), computed independently
        // (python3 -c 'import hmac,hashlib;print(hmac.new(b"key",b"1700000000.{}",hashlib.sha256).hexdigest())').
        let sig = signature(&Secret(b"key".to_vec()), 1_700_000_000, b"{}");
        assert_eq!(
            sig,
            "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_ne!(
            sig,
            signature(&Secret(b"other".to_vec()), 1_700_000_000, b"{}")
        );
        assert_ne!(
            sig,
            signature(&Secret(b"key".to_vec()), 1_700_000_001, b"{}")
        );
    }

    #[test]
    fn a_cloudevent_has_the_required_attributes_and_the_record_as_data() {
        let r = record();
        let b = body(&r, Format::CloudEvents, "stategate://ci.example");
        assert_eq!(b.content_type, "application/cloudevents+json");
        let v: Value = serde_json::from_slice(&b.bytes).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], r.id.as_str());
        assert_eq!(v["type"], "dev.stategate.state.written");
        assert_eq!(v["source"], "stategate://ci.example");
        assert_eq!(v["subject"], "prod/net");
        assert_eq!(v["data"]["serial"], 7);
        assert_eq!(v["data"]["actor"]["identity"], "user:ann");
    }

    /// A lock holder's `Who` is the client's to write: in a Slack message
    /// it stays text, with no mention, link or line of its own.
    #[test]
    fn a_slack_message_shows_a_clients_markup_as_text() {
        let mut r = record();
        r.kind = Kind::LockHeldTooLong;
        r.actor.via = "server".into();
        let who = "<!channel> @here rotate keys at <https://evil.example|the portal>\nstategate:\u{2028}& more, ci@runner";
        r.details.insert("holder".into(), Value::String(who.into()));
        let b = body(&r, Format::Slack, "x");
        let v: Value = serde_json::from_slice(&b.bytes).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(
            text.contains("held by &lt;!channel&gt; \u{FF20}here rotate keys at &lt;https://evil.example|the portal&gt; stategate: &amp; more, ci@runner for"),
            "{text}"
        );
        assert!(!text.contains(['<', '>', '\n', '\u{2028}']), "{text}");
    }

    #[test]
    fn a_slack_message_is_one_readable_line() {
        let b = body(&record(), Format::Slack, "x");
        let v: Value = serde_json::from_slice(&b.bytes).unwrap();
        assert_eq!(
            v["text"],
            "stategate: prod/net was written by user:ann via http from 10.0.0.7 (serial 7)"
        );
    }
}

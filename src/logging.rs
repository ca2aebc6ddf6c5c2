//! How log fields are written in the text format. Many logged values come
//! from clients (a LockInfo `Who`, a token's claims, a key in an error), and
//! a newline in one of them would end the line and start one of the
//! client's choosing. Every field value, the message included, is written
//! with its control characters escaped, so one event is always one line.
//! The JSON format escapes them already.

use std::fmt;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

/// Writes `s` with every control character as an escape (`\n`, `\u{1b}`).
pub fn escape_control(s: &str, out: &mut impl fmt::Write) -> fmt::Result {
    for c in s.chars() {
        if c.is_control() {
            write!(out, "{}", c.escape_default())?;
        } else {
            out.write_char(c)?;
        }
    }
    Ok(())
}

/// The text format's field writer: `name=value` pairs separated by spaces,
/// the message bare, every value escaped (see the module documentation).
pub fn text_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    debug_fn(
        |writer: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn fmt::Debug| {
            let value = format!("{value:?}");
            if field.name() != "message" {
                write!(writer, "{}=", field.name())?;
            }
            escape_control(&value, writer)
        },
    )
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        escape_control("a\nb\r\u{1b}[31mc\td é", &mut out).unwrap();
        assert_eq!(out, "a\\nb\\r\\u{1b}[31mc\\td é");
        assert!(!out.contains('\n'));
    }
}

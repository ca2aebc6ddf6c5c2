//! One plain sentence for a network failure, for every store that talks
//! to a server (S3, OSS, databases).

/// One plain sentence for a network failure of a store's HTTP client:
/// the innermost cause of an error chain, by kind where it is an I/O error
/// (the SDKs' own `Display` nests every layer and its `Debug`).
pub fn network_cause(err: &(dyn std::error::Error + 'static)) -> String {
    use std::io::ErrorKind;
    let mut inner = err;
    let mut io_kind = None;
    loop {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        match inner.source() {
            Some(source) => inner = source,
            None => break,
        }
    }
    let text = inner.to_string();
    let lower = text.to_ascii_lowercase();
    match io_kind {
        Some(ErrorKind::ConnectionRefused) => "connection refused".into(),
        Some(ErrorKind::ConnectionReset) => "connection reset".into(),
        Some(ErrorKind::ConnectionAborted) => "connection aborted".into(),
        Some(ErrorKind::BrokenPipe) => "connection closed while sending".into(),
        Some(ErrorKind::UnexpectedEof) => "connection closed before the answer was complete".into(),
        Some(ErrorKind::TimedOut) => "timed out".into(),
        Some(ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable) => {
            "host unreachable".into()
        }
        _ if lower.contains("dns")
            || lower.contains("failed to lookup")
            || lower.contains("name or service not known") =>
        {
            format!("the host name could not be resolved ({text})")
        }
        _ if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake") =>
        {
            format!("TLS failed ({text})")
        }
        _ if lower.contains("connection closed before message completed") => {
            "connection closed before the answer was complete".into()
        }
        _ => {
            // One line, without the SDKs' struct dumps.
            let first = text.lines().next().unwrap_or_default();
            first.split(" (").next().unwrap_or(first).trim().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_causes_are_one_plain_sentence() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(network_cause(&refused), "connection refused");
        let closed = std::io::Error::other("connection closed before message completed");
        assert_eq!(
            network_cause(&closed),
            "connection closed before the answer was complete"
        );
    }
}

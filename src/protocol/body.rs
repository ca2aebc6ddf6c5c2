//! Request bodies, read whole within the limits: a size cap checked
//! before and while reading, a minimum rate against clients that trickle,
//! spooling to a file past a megabyte so memory does not grow with the
//! body, and the MD5 taken on the way, checked against `Content-MD5` and
//! handed on so a write does not hash the body again.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderMap};
use md5::{Digest, Md5};

use super::ProtocolError;
use super::app::App;
use super::log::Exchange;
use crate::state::{StateError, head};
use crate::stores::payload::spool_dir;
use crate::stores::{Payload, Spooler, StoreError};

/// How far past the limit (or past a spool that failed) a body is still
/// read, and dropped, before the 413 (or 503), so the client receives the
/// answer.
const DRAIN_BYTES: u64 = 16 * 1024 * 1024;

/// The window over which `body_min_rate` is averaged.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Reads the whole body, refusing one over `limit` (by `Content-Length`
/// before reading, or while reading), one that arrives slower than
/// `body_min_rate` over any 10-second window, and one whose `Content-MD5`
/// does not match. A body over a megabyte is spooled to an unnamed file as
/// it arrives ([`Spooler`]), so memory does not grow with its size, nor
/// ever with the length a client declares. The MD5 is taken on the way.
pub(super) async fn read_body(
    app: &App,
    req: Request<Incoming>,
    limit: u64,
    ex: &mut Exchange,
) -> Result<Body, ProtocolError> {
    let min_rate = app.limits.body_min_rate;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Far over the limit: answer at once. A little over: read and drop the
    // body first, so the client is still listening when the 413 arrives
    // (a server that closes while the client writes makes it see a broken
    // pipe instead of the reason).
    if declared.is_some_and(|n| n > limit.saturating_add(DRAIN_BYTES)) {
        return Err(ProtocolError::TooLarge(limit));
    }
    let header_md5 = content_md5(req.headers())?;
    let mut incoming = req.into_body();
    let mut body = Spooler::new(&spool_dir());
    let mut hasher = Md5::new();
    let spool_failed = |e: std::io::Error| {
        ProtocolError::State(StateError::Store(StoreError::unavailable(format!(
            "spooling the body to {}: {e}",
            spool_dir().display()
        ))))
    };
    let mut trailer_md5 = None;
    // A spool that failed: the rest of the body is read and dropped (up
    // to `DRAIN_BYTES` more) before the answer, as for a body a little
    // over the limit, so the client hears the reason.
    let mut spool_error: Option<(u64, std::io::Error)> = None;
    let mut seen: u64 = 0;
    let mut window_end = tokio::time::Instant::now() + RATE_WINDOW;
    let mut window_start_seen: u64 = 0;
    loop {
        let next = if min_rate == 0 {
            incoming.frame().await
        } else {
            match tokio::time::timeout_at(window_end, incoming.frame()).await {
                Ok(next) => next,
                Err(_) => {
                    // A whole window passed: it must have brought enough.
                    if seen - window_start_seen < min_rate * RATE_WINDOW.as_secs() {
                        return Err(ProtocolError::TooSlow(min_rate));
                    }
                    window_start_seen = seen;
                    window_end += RATE_WINDOW;
                    continue;
                }
            }
        };
        let Some(frame) = next else { break };
        let frame = frame
            .map_err(|e| ProtocolError::BadRequest(format!("reading the body failed: {e}")))?;
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Chunked trailers: a digest sent after the body binds it
                // as one sent before it does.
                if let Ok(trailers) = frame.into_trailers()
                    && let Some(digest) = content_md5(&trailers)?
                    && trailer_md5.replace(digest).is_some()
                {
                    return Err(ProtocolError::BadRequest(
                        "Content-MD5 is given more than once".into(),
                    ));
                }
                continue;
            }
        };
        seen += data.len() as u64;
        ex.bytes_in = seen;
        if seen > limit.saturating_add(DRAIN_BYTES)
            || spool_error
                .as_ref()
                .is_some_and(|(at, _)| seen > at.saturating_add(DRAIN_BYTES))
        {
            break;
        }
        if seen <= limit && spool_error.is_none() {
            hasher.update(&data);
            if let Err(e) = body.push(&data).await {
                spool_error = Some((seen, e));
            }
        }
        if min_rate > 0 && tokio::time::Instant::now() >= window_end {
            if seen - window_start_seen < min_rate * RATE_WINDOW.as_secs() {
                return Err(ProtocolError::TooSlow(min_rate));
            }
            window_start_seen = seen;
            window_end += RATE_WINDOW;
        }
    }
    if seen > limit {
        return Err(ProtocolError::TooLarge(limit));
    }
    if let Some((_, e)) = spool_error {
        return Err(spool_failed(e));
    }
    let payload = body.finish().await.map_err(spool_failed)?;
    let digest = hasher.finalize();
    if [header_md5, trailer_md5]
        .iter()
        .flatten()
        .any(|expected| digest.as_slice() != expected.as_slice())
    {
        return Err(ProtocolError::BadRequest(
            "Content-MD5 does not match the body".into(),
        ));
    }
    Ok(Body {
        payload,
        md5: head::hex(&digest),
    })
}

/// The digest a `Content-MD5` header (or trailer) gives, if one does. Two
/// are refused, not resolved: with only the first checked, a body could
/// carry a second digest that another reader of the request believes.
fn content_md5(headers: &HeaderMap) -> Result<Option<Vec<u8>>, ProtocolError> {
    use base64::Engine;
    let mut values = headers.get_all("content-md5").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProtocolError::BadRequest(
            "Content-MD5 is given more than once".into(),
        ));
    }
    value
        .to_str()
        .ok()
        .and_then(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok()
        })
        .filter(|d| d.len() == 16)
        .map(Some)
        .ok_or_else(|| ProtocolError::BadRequest("Content-MD5 is not base64 of 16 bytes".into()))
}

/// A request body, read whole (in memory or spooled) and hashed once.
pub(super) struct Body {
    pub(super) payload: Payload,
    /// Hex MD5, handed on so a write does not hash the body again.
    pub(super) md5: String,
}

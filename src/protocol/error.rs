//! The one place where failures become HTTP statuses.
//!
//! Client mistakes are 4xx with a one-line reason, never 5xx: Terraform's
//! client retries 5xx (go-retryablehttp) and would hide the reason behind
//! "giving up after 3 attempt(s)". Store failures are 503 with
//! `Retry-After`, which the client honours. Lock conflicts carry the
//! holder's LockInfo JSON as the body, which Terraform shows the user and
//! `-lock-timeout` needs to retry.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::auth::AuthError;
use crate::ops::OpError;
use crate::state::StateError;
use crate::state::diff::ViewError;

/// Why a request failed, as the protocol sees it.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The state layer refused or failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The request is malformed (URL, query, headers, body).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than `max_body_bytes` (or `max_lock_bytes` for
    /// LOCK and UNLOCK).
    #[error("the body is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// A stored state is too large for a view to show; the reason names
    /// the size, the limit and its setting.
    #[error("{0}")]
    TooLargeToShow(String),
    /// The body arrived slower than `body_min_rate`; the connection closes.
    #[error("the body arrived slower than {0} bytes per second; giving up")]
    TooSlow(u64),
    /// The method is not served on this URL; carries the `Allow` value.
    #[error("method not allowed here; allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// No such URL, or no state at it.
    #[error("{0}")]
    NotFound(String),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the permission needed.
    #[error("{0}")]
    Forbidden(String),
    /// The client's address failed too often to have its credentials
    /// checked now; carries the seconds for `Retry-After`.
    #[error("{0}")]
    TooManyRequests(String, u64),
    /// Something the request needs beyond the store is down (an OIDC
    /// issuer's keys cannot be fetched).
    #[error("{0}")]
    Unavailable(String),
}

/// How a failed authentication answers, on every URL: 401 for missing or
/// wrong credentials, 429 for an address over its failure budget, 503
/// when the credentials cannot be checked now. The message is the
/// authentication error's own.
impl From<AuthError> for ProtocolError {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::Throttled { retry_after } => {
                ProtocolError::TooManyRequests(message, retry_after)
            }
            AuthError::Missing | AuthError::Invalid(_) => ProtocolError::Unauthorized(message),
            AuthError::Unavailable(_) => ProtocolError::Unavailable(message),
        }
    }
}

/// An operation's refusal: the state layer's kinds as they are, and a
/// permission refused as 403.
impl From<OpError> for ProtocolError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::State(e) => ProtocolError::State(e),
            OpError::Forbidden(reason) => ProtocolError::Forbidden(reason),
        }
    }
}

/// A view of a state's contents not made: the state layer's kinds as
/// they are, and a body too dense to take down as too large to show.
impl From<ViewError> for ProtocolError {
    fn from(e: ViewError) -> Self {
        match e {
            ViewError::State(e) => ProtocolError::State(e),
            ViewError::TooDense(reason) => ProtocolError::TooLargeToShow(reason),
        }
    }
}

impl ProtocolError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProtocolError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProtocolError::TooLarge(_) | ProtocolError::TooLargeToShow(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ProtocolError::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
            ProtocolError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProtocolError::NotFound(_) => StatusCode::NOT_FOUND,
            ProtocolError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProtocolError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProtocolError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            ProtocolError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProtocolError::State(e) => match e {
                StateError::BadRequest(_) => StatusCode::BAD_REQUEST,
                StateError::Locked(_) => StatusCode::LOCKED,
                StateError::NotHolder(_) | StateError::Stale(_) | StateError::KeyConflict(_) => {
                    StatusCode::CONFLICT
                }
                StateError::NotFound(_) => StatusCode::NOT_FOUND,
                StateError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    /// The whole response: status, reason or holder LockInfo, headers.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let mut response = match &self {
            ProtocolError::State(StateError::Locked(holder) | StateError::NotHolder(holder)) => {
                let mut r = Response::new(Full::new(holder.clone()));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            other => text(format!("{other}\n")),
        };
        *response.status_mut() = status;
        match self {
            ProtocolError::MethodNotAllowed(allow) => {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            ProtocolError::State(StateError::Store(_)) | ProtocolError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProtocolError::TooManyRequests(_, seconds) => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
            ProtocolError::Unauthorized(_) => {
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"stategate\""),
                );
            }
            // The rest of a slow body is not waited for.
            ProtocolError::TooSlow(_) => {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// A plain-text response with status 200.
pub fn text(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::StoreError;

    #[test]
    fn client_mistakes_are_never_5xx() {
        let client_errors = [
            ProtocolError::BadRequest("x".into()),
            ProtocolError::TooLarge(1),
            ProtocolError::TooSlow(1),
            ProtocolError::Unauthorized("x".into()),
            ProtocolError::Forbidden("x".into()),
            ProtocolError::TooManyRequests("x".into(), 1),
            ProtocolError::MethodNotAllowed("GET"),
            ProtocolError::NotFound("x".into()),
            StateError::BadRequest("x".into()).into(),
            StateError::Locked(Bytes::new()).into(),
            StateError::NotHolder(Bytes::new()).into(),
            StateError::Stale("x".into()).into(),
            StateError::KeyConflict("x".into()).into(),
            StateError::NotFound("x".into()).into(),
        ];
        for e in client_errors {
            assert!(e.status().is_client_error(), "{e:?}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(
            ProtocolError::from(StateError::Locked(Bytes::new())).status(),
            423
        );
        assert_eq!(
            ProtocolError::from(StateError::NotHolder(Bytes::new())).status(),
            409
        );
        assert_eq!(
            ProtocolError::from(StateError::Stale("s".into())).status(),
            409
        );
        assert_eq!(ProtocolError::TooLarge(5).status(), 413);
        let unavailable = ProtocolError::from(StateError::Store(StoreError::unavailable("down")));
        assert_eq!(unavailable.status(), 503);
        let r = unavailable.into_response();
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn lock_conflicts_carry_the_holder() {
        let holder = Bytes::from_static(br#"{"ID":"abc"}"#);
        let r = ProtocolError::from(StateError::Locked(holder)).into_response();
        assert_eq!(r.status(), 423);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn method_not_allowed_says_what_is() {
        let r = ProtocolError::MethodNotAllowed("GET, POST").into_response();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[ALLOW], "GET, POST");
    }
}

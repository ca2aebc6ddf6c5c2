//! The handlers of `/states/<key>` itself: GET and HEAD (the whole state,
//! or the `outputs` view for identities granted only that), a write and a
//! delete. Reads go to [`crate::state::States`], changes to
//! [`crate::ops`]; ETags come from a cache of body MD5s by store version,
//! so a large state is not hashed on every read.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderValue};

use super::access::{self, Caller};
use super::app::App;
use super::body::Body;
use super::error::text;
use super::{ProtocolError, Reply};
use crate::auth::Access;
use crate::ops::Actor;
use crate::state::{StateError, StateRef, WriteOutcome, head};
use crate::stores::Payload;

/// A JSON response with status 200.
pub(super) fn json(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// HEAD of a state: its length and `ETag` as a GET would give them, from
/// the newest history record when that record names the stored version,
/// so nothing is downloaded from a store across the network; otherwise,
/// and for the `outputs` view, whose length depends on the body, as GET.
pub(super) async fn handle_head(
    app: &App,
    state: &StateRef,
    caller: Option<&Caller>,
    actor: &Actor,
) -> Result<Response<Reply>, ProtocolError> {
    if caller.is_some_and(|c| c.level == Access::Outputs) {
        return handle_get(app, state, caller, actor).await;
    }
    match app.states.current_digest(state).await? {
        None => Err(ProtocolError::NotFound(format!(
            "no state stored for {state}"
        ))),
        Some((_, Some((md5, size)))) => {
            let mut r = state_body(Payload::Memory(Bytes::new()), &md5);
            r.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(size));
            Ok(r)
        }
        Some((_, None)) => handle_get(app, state, caller, actor).await,
    }
}

/// A state body with its `Content-Length` and an `ETag` (the quoted hex
/// MD5), set here so HEAD, which sends no body, carries them too.
pub(super) fn state_body(body: Payload, md5: &str) -> Response<Reply> {
    let etag = format!("\"{md5}\"");
    let length = body.len();
    let mut r = Response::new(Reply::payload(body));
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        ETAG,
        HeaderValue::from_str(&etag).expect("hex is a header value"),
    );
    r
}

/// A state's body. A body no configured key opens is notified
/// (`encryption.key_unusable`) as well as refused.
pub(super) async fn handle_get(
    app: &App,
    state: &StateRef,
    caller: Option<&Caller>,
    actor: &Actor,
) -> Result<Response<Reply>, ProtocolError> {
    let downloaded = match app.states.download(state).await {
        Ok(downloaded) => downloaded,
        Err(e) => return Err(app.ops().check_keys(state, actor, e).await.into()),
    };
    let Some((body, version)) = downloaded else {
        return Err(ProtocolError::NotFound(format!(
            "no state stored for {state}"
        )));
    };
    if caller.is_some_and(|c| c.level == Access::Outputs) {
        let outputs = access::outputs_only(&body).await?;
        let md5 = head::md5_hex(&outputs);
        return Ok(state_body(Payload::Memory(outputs), &md5));
    }
    let md5 = match app.etags.get(state, &version) {
        Some(md5) => md5,
        None => {
            let md5 = body.md5_hex().await.map_err(StateError::Store)?;
            app.etags.put(state, version, md5.clone());
            md5
        }
    };
    Ok(state_body(body, &md5))
}

/// A client's write: the body's MD5 fills the ETag cache when it becomes
/// the current state.
pub(super) async fn handle_write(
    app: &App,
    state: &StateRef,
    body: Body,
    lock_id: Option<&str>,
    actor: &Actor,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let outcome = app
        .ops()
        .write(state, actor, body.payload, &body.md5, lock_id)
        .await?;
    if let WriteOutcome::Written { stored, .. } = outcome {
        app.etags.put(state, stored, body.md5);
    }
    Ok(text(""))
}

pub(super) async fn handle_delete(
    app: &App,
    state: &StateRef,
    lock_id: Option<&str>,
    actor: &Actor,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    app.ops().delete(state, actor, lock_id).await?;
    Ok(text(""))
}

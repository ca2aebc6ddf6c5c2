//! The lock handlers, for `/states/<key>` (LOCK, UNLOCK) and `/locks/<key>`
//! (the same by POST and DELETE, and GET for the holder). An UNLOCK with
//! no body, or a LockInfo with an empty ID, is a force-unlock: Terraform's
//! `force-unlock` sends no body, OpenTofu's an ID only.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::ProtocolError;
use super::app::App;
use super::error::text;
use super::states::json;
use crate::ops::Actor;
use crate::state::{LockInfo, StateRef};

pub(super) async fn handle_lock(
    app: &App,
    state: &StateRef,
    body: Bytes,
    actor: &Actor,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    app.ops().lock(state, actor, body).await?;
    Ok(text(""))
}

/// The lock ID an UNLOCK body names; `None` for a force-unlock.
pub(super) fn unlock_id(body: &[u8]) -> Result<Option<String>, ProtocolError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let id = LockInfo::parse(body)?.id;
    Ok(Some(id).filter(|id| !id.is_empty()))
}

pub(super) async fn handle_unlock(
    app: &App,
    state: &StateRef,
    body: &[u8],
    actor: &Actor,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    match unlock_id(body)? {
        Some(id) => app.ops().unlock(state, actor, &id).await?,
        None => {
            app.ops().force_unlock(state, actor, None).await?;
        }
    }
    Ok(text(""))
}

pub(super) async fn handle_get_lock(
    app: &App,
    state: &StateRef,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    match app.states.lock_holder(state).await? {
        Some(held) => Ok(json(held.body)),
        None => {
            let mut r = text(format!("{state} is not locked\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            Ok(r)
        }
    }
}

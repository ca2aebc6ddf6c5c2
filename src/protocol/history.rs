//! The handlers that read a state's history: `?history` (the whole of it
//! oldest first, or one page newest first) and `?version=N`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use super::app::App;
use super::states::{json, state_body};
use super::{ProtocolError, Reply};
use crate::state::StateRef;
use crate::state::history::HistoryWindow;

/// The whole history oldest first; or one page newest
/// first, with `next_before` for the next one (`null` after the last).
pub(super) async fn handle_history(
    app: &App,
    state: &StateRef,
    window: Option<HistoryWindow>,
) -> Result<Response<Full<Bytes>>, ProtocolError> {
    let doc = match window {
        None => serde_json::json!({
            "key": state.key(),
            "workspace": state.workspace(),
            "versions": app.states.history(state).await?,
        }),
        Some(window) => {
            let page = app.states.history_page(state, window).await?;
            serde_json::json!({
                "key": state.key(),
                "workspace": state.workspace(),
                "order": "newest_first",
                "versions": page.versions,
                "next_before": page.next_before,
            })
        }
    };
    Ok(json(
        serde_json::to_vec_pretty(&doc).expect("history serialises"),
    ))
}

pub(super) async fn handle_get_version(
    app: &App,
    state: &StateRef,
    n: u64,
) -> Result<Response<Reply>, ProtocolError> {
    let (body, md5) = app.states.version_with_md5(state, n).await?;
    Ok(state_body(body, &md5))
}

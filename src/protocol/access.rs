//! Who may do what, applied to one request: authentication (when an `auth`
//! section is configured), the access level each endpoint needs, lock
//! ownership (a write, or an UNLOCK, under a lock another identity took
//! needs `admin`, whatever ID it presents), and the `outputs` view of a
//! state. `/healthz`, `/readyz` and `/metrics` carry no state data and
//! need no credentials.

use std::net::IpAddr;

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use serde_json::json;

use super::{App, Endpoint, ProtocolError};
use crate::auth::{Access, AuthError, Identity};
use crate::state::StateRef;

/// An authenticated caller and its level on the state at hand.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub level: Access,
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.identity.name
    }
}

/// The level an endpoint needs.
fn needs(endpoint: &Endpoint) -> Option<(Access, &'static str)> {
    Some(match endpoint {
        Endpoint::Health | Endpoint::Ready | Endpoint::Metrics => return None,
        Endpoint::GetState(_) => (Access::Outputs, "read"),
        Endpoint::History(..) | Endpoint::GetVersion(..) | Endpoint::GetLock(_) => {
            (Access::Read, "read")
        }
        Endpoint::WriteState { .. } => (Access::Write, "write"),
        Endpoint::Lock(_) => (Access::Write, "lock"),
        Endpoint::Unlock(_) => (Access::Write, "unlock"),
        Endpoint::DeleteState { .. } => (Access::Admin, "delete"),
    })
}

/// Authenticates the request and checks the endpoint's level. `None` when
/// no `auth` section is configured (or the endpoint needs none).
pub async fn authorize(
    app: &App,
    endpoint: &Endpoint,
    headers: &HeaderMap,
    certificate_cn: Option<&str>,
    client: IpAddr,
) -> Result<Option<Caller>, ProtocolError> {
    let auth = app.auth.read().expect("auth lock").clone();
    let (Some(auth), Some((needed, verb)), Some(state)) = (auth, needs(endpoint), endpoint.state())
    else {
        return Ok(None);
    };
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let identity = match auth.authenticate(header, certificate_cn, client).await {
        Ok(identity) => identity,
        Err(e @ AuthError::Unavailable(_)) => return Err(e.into()),
        Err(e) => {
            let e = ProtocolError::from(e);
            app.metrics.auth_failure();
            app.audit.event(
                "denied",
                &[
                    ("status", json!(e.status().as_u16())),
                    ("state", json!(state.key())),
                    ("workspace", json!(state.workspace())),
                    ("reason", json!(e.to_string())),
                    ("client", json!(client.to_string())),
                ],
            );
            return Err(e);
        }
    };
    let level = identity.access(state);
    let changes = matches!(
        endpoint,
        Endpoint::WriteState { .. }
            | Endpoint::DeleteState { .. }
            | Endpoint::Lock(_)
            | Endpoint::Unlock(_)
    );
    if changes
        && level.is_some_and(|l| l >= needed)
        && let Some(why) = auth.protection(&identity, state)
    {
        return Err(forbid(app, &identity, state, client, why));
    }
    match level {
        Some(level) if level >= needed => Ok(Some(Caller { identity, level })),
        _ => Err(forbid(
            app,
            &identity,
            state,
            client,
            format!(
                "{} may not {verb} {state}: that needs {} access",
                identity.name,
                needed.name()
            ),
        )),
    }
}

/// Refuses with 403, audited.
pub fn forbid(
    app: &App,
    identity: &Identity,
    state: &StateRef,
    client: IpAddr,
    reason: String,
) -> ProtocolError {
    app.audit.event(
        "denied",
        &[
            ("status", json!(403)),
            ("identity", json!(identity.name)),
            ("state", json!(state.key())),
            ("workspace", json!(state.workspace())),
            ("reason", json!(reason)),
            ("client", json!(client.to_string())),
        ],
    );
    ProtocolError::Forbidden(reason)
}

/// Checks that `caller` may act under the lock `lock_id` on `state`: when
/// that lock is held now, it must have taken it, or be an admin.
pub async fn check_lock_owner(
    app: &App,
    state: &StateRef,
    lock_id: &str,
    caller: &Caller,
    client: IpAddr,
) -> Result<(), ProtocolError> {
    if caller.level >= Access::Admin {
        return Ok(());
    }
    let held = app.states.lock_holder(state).await?;
    match held {
        // Not that lock any more: the state layer answers as it does
        // without authentication.
        Some(h) if h.info.id == lock_id => {
            check_owner(app, state, lock_id, h.owner, caller, client)
        }
        _ => Ok(()),
    }
}

/// Checks that `owner`, the recorded owner of the lock `lock_id`, is
/// `caller` (or that the caller is an admin).
pub fn check_owner(
    app: &App,
    state: &StateRef,
    lock_id: &str,
    owner: Option<String>,
    caller: &Caller,
    client: IpAddr,
) -> Result<(), ProtocolError> {
    if caller.level >= Access::Admin {
        return Ok(());
    }
    match owner {
        Some(owner) if owner == caller.name() => Ok(()),
        Some(owner) => Err(forbid(
            app,
            &caller.identity,
            state,
            client,
            format!(
                "the lock {lock_id} on {state} was taken by {owner}; only they or an admin may use it"
            ),
        )),
        None => Err(forbid(
            app,
            &caller.identity,
            state,
            client,
            format!(
                "the lock {lock_id} on {state} was not taken through stategate's authentication; only an admin may use it"
            ),
        )),
    }
}

/// The `outputs` view of a state: what `terraform_remote_state` reads,
/// built from an allow-list so nothing else a state holds can pass. From a
/// state of format 4 it keeps `version`, `terraform_version`, `serial`,
/// `lineage` and `outputs`, with no resources; from the older formats
/// (Terraform 0.11 and before: `modules`) the root module's outputs only,
/// each module's resources and attributes left out. Members nobody named
/// are dropped. A body that is not a JSON object (an OpenTofu encrypted
/// state) has no outputs to show and is withheld.
pub fn outputs_only(body: &Bytes) -> Result<Bytes, ProtocolError> {
    use serde_json::{Map, Value, json};
    let mut doc: Map<String, Value> = serde_json::from_slice(body).map_err(|_| {
        ProtocolError::Forbidden("this state's outputs cannot be shown alone".into())
    })?;
    if doc.contains_key("encrypted_data") {
        return Err(ProtocolError::Forbidden(
            "this state is encrypted by the client; its outputs cannot be shown alone".into(),
        ));
    }
    let mut view = Map::new();
    for member in ["version", "terraform_version", "serial", "lineage"] {
        if let Some(value) = doc.remove(member) {
            view.insert(member.into(), value);
        }
    }
    match doc.remove("modules") {
        Some(Value::Array(modules)) => {
            let root_outputs = modules
                .into_iter()
                .find(|m| m.get("path") == Some(&json!(["root"])))
                .and_then(|mut m| m.get_mut("outputs").map(Value::take))
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            view.insert(
                "modules".into(),
                json!([{
                    "path": ["root"],
                    "outputs": root_outputs,
                    "resources": {},
                    "depends_on": [],
                }]),
            );
        }
        _ => {
            let outputs = doc
                .remove("outputs")
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            view.insert("outputs".into(), outputs);
            view.insert("resources".into(), json!([]));
        }
    }
    let mut out = serde_json::to_vec_pretty(&view).expect("a JSON map serialises");
    out.push(b'\n');
    Ok(Bytes::from(out))
}

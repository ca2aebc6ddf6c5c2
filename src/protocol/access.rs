//! Who may do what, applied to one request: authentication (when an `auth`
//! section is configured), the access level each endpoint needs, and the
//! `outputs` view of a state. The decision itself is
//! [`crate::auth::decide`]'s, and the dashboard asks it through the same
//! [`authenticate`] and [`permit`]; lock ownership depends on the lock as
//! stored and is checked by the operations ([`crate::ops`]). `/healthz`,
//! `/readyz` and `/metrics` carry no state data and need no credentials.

use std::net::IpAddr;

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;

use super::{App, Endpoint, ProtocolError};
use crate::auth::decide::{Decision, decide};
use crate::auth::{Access, Auth, AuthError, Identity};
use crate::ops::{Actor, Target, Via};
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
    let target = || Target::State(state.clone());
    let identity = authenticate(
        app,
        &auth,
        headers,
        certificate_cn,
        client,
        Via::Http,
        target,
    )
    .await?;
    let level = permit(
        app,
        &auth,
        &identity,
        state,
        needed,
        verb,
        (client, Via::Http),
    )?;
    Ok(Some(Caller { identity, level }))
}

/// Authenticates a request, for the state URLs and the dashboard alike.
/// Credentials refused (401, or 429 for an address over its budget of
/// failures) are audited against `target` and counted; credentials that
/// cannot be checked now (503) are neither: the client did nothing wrong.
pub async fn authenticate(
    app: &App,
    auth: &Auth,
    headers: &HeaderMap,
    certificate_cn: Option<&str>,
    client: IpAddr,
    via: Via,
    target: impl FnOnce() -> Target,
) -> Result<Identity, ProtocolError> {
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match auth.authenticate(header, certificate_cn, client).await {
        Ok(identity) => Ok(identity),
        Err(e @ AuthError::Unavailable(_)) => Err(e.into()),
        Err(e) => {
            let e = ProtocolError::from(e);
            let actor = Actor {
                identity: None,
                level: None,
                client: Some(client),
                via,
            };
            let status = e.status().as_u16();
            app.ops()
                .refuse_credentials(&actor, target(), status, e.to_string());
            Err(e)
        }
    }
}

/// Whether `identity` may `verb` `state`, which needs `needed` ([`decide`]):
/// its level on the state, or a 403, audited, from `(client, via)`.
pub fn permit(
    app: &App,
    auth: &Auth,
    identity: &Identity,
    state: &StateRef,
    needed: Access,
    verb: &str,
    (client, via): (IpAddr, Via),
) -> Result<Access, ProtocolError> {
    match decide(auth, identity, state, needed, verb) {
        Decision::Allow(level) => Ok(level),
        Decision::Deny(reason) => {
            let actor = Actor {
                identity: Some(identity.name.clone()),
                level: identity.access(state),
                client: Some(client),
                via,
            };
            Err(app.ops().forbid(&actor, state, reason).into())
        }
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

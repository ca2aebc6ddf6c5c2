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
use serde::Deserialize;
use serde::Serialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{App, Endpoint, ProtocolError};
use crate::auth::decide::{Decision, decide};
use crate::auth::{Access, Auth, AuthError, Identity};
use crate::ops::{Actor, Target, Via};
use crate::state::{StateError, StateRef};
use crate::stores::payload::CHUNK_BYTES;
use crate::stores::{Payload, StoreError};

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
    )
    .await?;
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
                .refuse_credentials(&actor, target(), status, e.to_string())
                .await;
            Err(e)
        }
    }
}

/// Whether `identity` may `verb` `state`, which needs `needed` ([`decide`]):
/// its level on the state, or a 403, audited, from `(client, via)`.
pub async fn permit(
    app: &App,
    auth: &Auth,
    identity: &Identity,
    state: &StateRef,
    needed: Access,
    verb: &str,
    (client, via): (IpAddr, Via),
) -> Result<Access, ProtocolError> {
    let (reason, protected) = match decide(auth, identity, state, needed, verb) {
        Decision::Allow(level) => return Ok(level),
        Decision::Deny(reason) => (reason, false),
        Decision::Protected(reason) => (reason, true),
    };
    let actor = Actor {
        identity: Some(identity.name.clone()),
        level: identity.access(state),
        client: Some(client),
        via,
    };
    Err(app
        .ops()
        .forbid(&actor, state, reason, protected)
        .await
        .into())
}

/// The `outputs` view of a state: what `terraform_remote_state` reads,
/// built from an allow-list so nothing else a state holds can pass. From a
/// state of format 4 it keeps `version`, `terraform_version`, `serial`,
/// `lineage` and `outputs`, with no resources; from the older formats
/// (Terraform 0.11 and before: `modules`) the root module's outputs only,
/// each module's resources and attributes left out. Members nobody named
/// are dropped. A body that is not a JSON object (an OpenTofu encrypted
/// state) has no outputs to show and is withheld.
///
/// The body is read once, a buffer at a time when it is in a file, and
/// only the members shown are built: resources are skipped unparsed, so
/// the view of a state of hundreds of megabytes holds its outputs alone.
pub async fn outputs_only(body: &Payload) -> Result<Bytes, ProtocolError> {
    let shown = match body.as_memory() {
        Some(bytes) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            Shown::read(&mut de)
        }
        None => {
            let reader = std::io::BufReader::with_capacity(CHUNK_BYTES, body.reader());
            tokio::task::spawn_blocking(move || {
                Shown::read(&mut serde_json::Deserializer::from_reader(reader))
            })
            .await
            .map_err(|e| ProtocolError::Unavailable(format!("reading the state failed: {e}")))?
        }
    };
    let shown = match shown {
        Ok(shown) => shown,
        Err(e) if e.is_io() => {
            return Err(StateError::Store(StoreError::unavailable(format!(
                "reading the state: {e}"
            )))
            .into());
        }
        Err(_) => {
            return Err(ProtocolError::Forbidden(
                "this state's outputs cannot be shown alone".into(),
            ));
        }
    };
    shown.view()
}

/// The members of a state the `outputs` view is built from.
#[derive(Default)]
struct Shown {
    /// `version`, `terraform_version`, `serial` and `lineage`, as present.
    head: Map<String, Value>,
    /// `encrypted_data` is present: an OpenTofu encrypted state.
    encrypted: bool,
    /// Kept as the text it is: built into values, an output of many small
    /// elements took sixteen times its size, for the least trusted
    /// identity there is.
    outputs: Option<Box<RawValue>>,
    modules: Option<Modules>,
    /// A member read under another spelling ([`other_spelling`]).
    other_spelling: bool,
}

/// `modules`, as far as the view goes.
enum Modules {
    /// An array: the `outputs` of its first module whose `path` is
    /// `["root"]`, if any.
    Array(Option<Box<RawValue>>),
    /// A module with another spelling of `path` or `outputs`.
    OtherSpelling,
    /// Something else, which the view reads as no `modules`.
    Other,
}

impl Shown {
    fn read<'de, R: serde_json::de::Read<'de>>(
        de: &mut serde_json::Deserializer<R>,
    ) -> Result<Shown, serde_json::Error> {
        let shown = de.deserialize_map(ShownVisitor)?;
        de.end()?;
        Ok(shown)
    }

    fn view(self) -> Result<Bytes, ProtocolError> {
        if self.encrypted {
            return Err(ProtocolError::Forbidden(
                "this state is encrypted by the client; its outputs cannot be shown alone".into(),
            ));
        }
        if self.other_spelling || matches!(self.modules, Some(Modules::OtherSpelling)) {
            return Err(ProtocolError::Forbidden(
                "this state has members under other spellings, which Terraform reads as the \
                 outputs' or modules'; its outputs cannot be shown alone"
                    .into(),
            ));
        }
        let empty = || RawValue::from_string("{}".into()).expect("`{}` is JSON");
        let only_objects = |v: Option<Box<RawValue>>| {
            v.filter(|raw| raw.get().trim_start().starts_with('{'))
                .unwrap_or_else(empty)
        };
        let mut out = match self.modules {
            Some(Modules::Array(root_outputs)) => serde_json::to_vec_pretty(&View3 {
                head: &self.head,
                modules: [Module3 {
                    path: ["root"],
                    outputs: &only_objects(root_outputs),
                    resources: Map::new(),
                    depends_on: [],
                }],
            }),
            Some(Modules::Other | Modules::OtherSpelling) | None => {
                serde_json::to_vec_pretty(&View4 {
                    head: &self.head,
                    outputs: &only_objects(self.outputs),
                    resources: [],
                })
            }
        }
        .expect("the view serialises");
        out.push(b'\n');
        Ok(Bytes::from(out))
    }
}

/// The view of a state of format 4.
#[derive(Serialize)]
struct View4<'a> {
    #[serde(flatten)]
    head: &'a Map<String, Value>,
    outputs: &'a RawValue,
    resources: [(); 0],
}

/// The view of a state of an older format: its root module.
#[derive(Serialize)]
struct View3<'a> {
    #[serde(flatten)]
    head: &'a Map<String, Value>,
    modules: [Module3<'a>; 1],
}

#[derive(Serialize)]
struct Module3<'a> {
    path: [&'static str; 1],
    outputs: &'a RawValue,
    resources: Map<String, Value>,
    depends_on: [(); 0],
}

/// The top-level object: the members shown, each kept as a JSON object
/// keeps a repeated member (the last), and everything else skipped.
struct ShownVisitor;

impl<'de> Visitor<'de> for ShownVisitor {
    type Value = Shown;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shown, A::Error> {
        let mut shown = Shown::default();
        while let Some(name) = map.next_key::<String>()? {
            shown.other_spelling |= other_spelling(&name, SHOWN_MEMBERS);
            match name.as_str() {
                "version" | "terraform_version" | "serial" | "lineage" => {
                    let value = map.next_value()?;
                    shown.head.insert(name, value);
                }
                "encrypted_data" => {
                    map.next_value::<IgnoredAny>()?;
                    shown.encrypted = true;
                }
                "outputs" => shown.outputs = Some(map.next_value()?),
                "modules" => shown.modules = Some(map.next_value_seed(ModulesSeed)?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(shown)
    }
}

/// The members the view reads, at the top level.
const SHOWN_MEMBERS: &[&str] = &[
    "version",
    "terraform_version",
    "serial",
    "lineage",
    "encrypted_data",
    "outputs",
    "modules",
];

/// Whether `name` is another spelling of one of `members`, which Terraform
/// reads as it (`Outputs`, `Path`): the view would show other members than
/// Terraform reads, so it is not made.
fn other_spelling(name: &str, members: &[&str]) -> bool {
    !members.contains(&name) && members.contains(&&*crate::state::go_folded(name))
}

/// Reads `modules`, keeping only the root module's outputs.
struct ModulesSeed;

impl<'de> DeserializeSeed<'de> for ModulesSeed {
    type Value = Modules;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Modules, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ModulesSeed {
    type Value = Modules;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Modules, A::Error> {
        let mut root = None;
        let mut other_spelling = false;
        while let Some(module) = seq.next_element::<Module>()? {
            match module {
                Module::Object { path, outputs }
                    if root.is_none() && path == Some(json!(["root"])) =>
                {
                    root = Some(outputs);
                }
                Module::OtherSpelling => other_spelling = true,
                _ => {}
            }
        }
        match other_spelling {
            true => Ok(Modules::OtherSpelling),
            false => Ok(Modules::Array(root.flatten())),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Modules, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Modules::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Modules, E> {
        Ok(Modules::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Modules, E> {
        Ok(Modules::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Modules, E> {
        Ok(Modules::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Modules, E> {
        Ok(Modules::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Modules, E> {
        Ok(Modules::Other)
    }

    fn visit_unit<E>(self) -> Result<Modules, E> {
        Ok(Modules::Other)
    }
}

/// One element of `modules`: an object's `path` and `outputs` (the last
/// of each), its resources skipped; anything else is no module.
enum Module {
    Object {
        path: Option<Value>,
        outputs: Option<Box<RawValue>>,
    },
    /// An object with another spelling of `path` or `outputs`.
    OtherSpelling,
    Other,
}

impl<'de> Deserialize<'de> for Module {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Module, D::Error> {
        struct ModuleVisitor;
        impl<'de> Visitor<'de> for ModuleVisitor {
            type Value = Module;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Module, A::Error> {
                let (mut path, mut outputs, mut other) = (None, None, false);
                while let Some(name) = map.next_key::<String>()? {
                    other |= other_spelling(&name, &["path", "outputs"]);
                    match name.as_str() {
                        "path" => path = Some(map.next_value()?),
                        "outputs" => outputs = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                match other {
                    true => Ok(Module::OtherSpelling),
                    false => Ok(Module::Object { path, outputs }),
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Module, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Module::Other)
            }

            fn visit_bool<E>(self, _: bool) -> Result<Module, E> {
                Ok(Module::Other)
            }

            fn visit_i64<E>(self, _: i64) -> Result<Module, E> {
                Ok(Module::Other)
            }

            fn visit_u64<E>(self, _: u64) -> Result<Module, E> {
                Ok(Module::Other)
            }

            fn visit_f64<E>(self, _: f64) -> Result<Module, E> {
                Ok(Module::Other)
            }

            fn visit_str<E>(self, _: &str) -> Result<Module, E> {
                Ok(Module::Other)
            }

            fn visit_unit<E>(self) -> Result<Module, E> {
                Ok(Module::Other)
            }
        }
        d.deserialize_any(ModuleVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;
    use crate::stores::payload::FileBody;

    async fn view(body: &[u8]) -> Result<Value, u16> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(body).unwrap();
        let in_file = Payload::File(Arc::new(FileBody::new(file, body.len() as u64)));
        let in_memory = Payload::from(body.to_vec());
        let (a, b) = (outputs_only(&in_memory).await, outputs_only(&in_file).await);
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "the same view from memory and from a file");
                Ok(serde_json::from_slice(&a).unwrap())
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                Err(a.status().as_u16())
            }
            (a, b) => panic!("from memory {a:?}, from a file {b:?}"),
        }
    }

    /// A member under another spelling, which Terraform reads as the
    /// outputs, the modules or a module's path, makes no view: the view
    /// would show what Terraform does not read as root outputs.
    #[tokio::test]
    async fn members_under_other_spellings_make_no_view() {
        let child = br#"{"version":3,"serial":3,"lineage":"L","modules":[
            {"path":["root"],"Path":["root","child"],"outputs":{"secret":{"value":"S"}}},
            {"path":["root"],"outputs":{"pub":{"value":"p"}}}]}"#;
        let top =
            br#"{"version":4,"serial":3,"lineage":"L","outputs":{},"Outputs":{"o":{"value":1}}}"#;
        for body in [&child[..], &top[..]] {
            assert_eq!(
                view(body).await,
                Err(403),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let plain = br#"{"version":3,"serial":3,"lineage":"L","modules":[
            {"path":["root"],"outputs":{"pub":{"value":"p"}},"Depends_On":[]}]}"#;
        let shown = view(plain).await.unwrap();
        assert_eq!(shown["modules"][0]["outputs"]["pub"]["value"], "p");
    }

    #[tokio::test]
    async fn only_the_named_members_pass() {
        let state = br#"{"version": 4, "terraform_version": "1.9.0", "serial": 3,
            "lineage": "L", "check_results": [{"x": 1}],
            "outputs": {"a": {"value": "v", "type": "string"}},
            "resources": [{"mode": "managed", "type": "t", "name": "n",
                "instances": [{"attributes": {"password": "secret"}}]}]}"#;
        assert_eq!(
            view(state).await.unwrap(),
            json!({"version": 4, "terraform_version": "1.9.0", "serial": 3, "lineage": "L",
                "outputs": {"a": {"value": "v", "type": "string"}}, "resources": []})
        );
        let old = br#"{"version": 3, "serial": 1, "lineage": "L", "modules": [
            {"path": ["root", "child"], "outputs": {"inner": {"value": "child-secret"}}},
            {"resources": {"r": {"primary": {"attributes": {"p": "secret"}}}},
             "outputs": {"o": {"value": 1}}, "path": ["root"]},
            {"path": ["root"], "outputs": {"later": {"value": 2}}}]}"#;
        assert_eq!(
            view(old).await.unwrap(),
            json!({"version": 3, "serial": 1, "lineage": "L", "modules": [{"path": ["root"],
                "outputs": {"o": {"value": 1}}, "resources": {}, "depends_on": []}]})
        );
        // Outputs that are not an object, and modules that are not an
        // array, show as none.
        assert_eq!(
            view(br#"{"serial": 1, "outputs": [1], "modules": {"path": ["root"]}}"#)
                .await
                .unwrap(),
            json!({"serial": 1, "outputs": {}, "resources": []})
        );
    }

    #[tokio::test]
    async fn bodies_without_outputs_to_show_are_withheld() {
        for body in [
            &br#"{"meta":{},"encrypted_data":"AAAA","encryption_version":"v0"}"#[..],
            b"[]",
            b"not json",
            b"{\"outputs\": {}} trailing",
        ] {
            assert_eq!(
                view(body).await,
                Err(403),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

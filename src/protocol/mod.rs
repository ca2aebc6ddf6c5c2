//! HTTP in, state calls out. [`route`] turns a method and URL into an
//! [`Endpoint`]; one `handle_*` function per operation reads through
//! [`crate::state::States`] or changes through [`crate::ops`];
//! [`error::ProtocolError`] turns every failure into a status in one place.
//!
//! URLs (see the README): `/states/<key>[?workspace=<name>]` takes GET
//! (and HEAD), POST/PUT (write, with Terraform's `?ID=<lock id>`), DELETE, LOCK and
//! UNLOCK; `?history` (whole, or paged with `&limit=N&before=V`) and
//! `?version=N` read history. `/locks/<key>` serves
//! gateways that refuse custom verbs: POST or LOCK locks, DELETE or UNLOCK
//! unlocks, GET shows the holder. `/healthz` answers 200 while the process
//! runs, `/readyz` only while the store answers, `/metrics` in the
//! Prometheus format. All of them live below `base_path` when one is set,
//! except on the admin address, which serves at its root.
//!
//! Every request gets an id (returned as `X-Request-Id`) and one log line
//! with the client (from `X-Forwarded-For` only when the peer is a trusted
//! proxy), method, route template, state, status, time and bytes.
//!
//! - [`app`]: what the server holds to answer ([`App`]), connections and
//!   the pages a layer above serves.
//! - [`routes`]: URLs and methods to [`Endpoint`]s.
//! - [`dispatch`]: one request from arrival to answer: checks, access,
//!   the handler, metrics and the access log line.
//! - [`log`]: request ids, the client's address, the access log line.
//! - [`body`]: request bodies read within limits, with their MD5.
//! - [`access`]: who is asking and whether they may.
//! - [`states`], [`locks`], [`history`], [`health`]: the handlers.
//! - [`error`], [`reply`], [`origin`]: statuses, bodies, origin checks.

pub mod access;
pub mod app;
pub mod body;
pub mod dispatch;
pub mod error;
pub mod health;
pub mod history;
pub mod locks;
pub mod log;
pub mod origin;
pub mod reply;
pub mod routes;
pub mod states;

pub use app::{App, Conn, EtagCache, PageRequest, Pages, Readiness, Surface};
pub use dispatch::handle;
pub use error::ProtocolError;
pub use log::{ClientIpHeader, client_addr, next_request_id};
pub use reply::Reply;
pub use routes::{Endpoint, route, route_named};

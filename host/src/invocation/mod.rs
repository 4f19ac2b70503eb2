//! The lattice invocation protocol: how a component's import is served by a target on any
//! host of the lattice, over NATS.
//!
//! - [`codec`]: component-model values <-> compact bytes, driven by the function's WIT types;
//!   [`json`]: the same values <-> JSON (CLI arguments, printing results).
//! - [`InvocationClient::invoke`] sends one call; [`InvocationServer::serve`] answers the calls
//!   to one target id.
//!
//! # Wire protocol
//!
//! **Subject**: `trellis.rpc.{lattice}.{target_id}.{interface}.{function}`, every token escaped
//! by [`subject::escape_token`] (`.`, `*`, `>`, `%`, whitespace, control -> `%XX`). Servers
//! subscribe to `trellis.rpc.{lattice}.{target_id}.*.*` in queue group `{target_id}`.
//!
//! **Request headers**: `traceparent`, `trellis-source` (caller id), `trellis-link` (link name),
//! `trellis-deadline` (absolute unix ms), `content-encoding` (`trellis-cv1` = [`codec`]).
//! The body is the encoded parameter list.
//!
//! **Reply**: the encoded result list with no headers; or an error: header
//! `trellis-error: <kind>` (`link-not-found`, `no-responders`, `deadline-exceeded`, `trap`,
//! `payload-too-large` (+ `trellis-size`, `trellis-limit`), `bad-request`, `transport`) and a
//! UTF-8 message body. A request nobody subscribes to gets the NATS 503 status, which the
//! client turns into [`InvocationError::NoResponders`].
//!
//! **Large params** (headers + body over the server's `max_payload`): the first request has
//! `trellis-size: N` and no body; the server checks N against its cap (else
//! `payload-too-large`), subscribes to a fresh inbox and replies `trellis-upload: <inbox>`.
//! The caller then sends the chunks as requests to that inbox with `trellis-seq: 0, 1, ...`;
//! each is acknowledged by an empty reply (stop-and-wait: flow control without JetStream);
//! the reply to the last chunk is the call's reply.
//!
//! **Large results**: the reply has `trellis-size: N` and `trellis-download: <inbox>` and no
//! body; the caller pulls chunk `i` by a request to the inbox with `trellis-seq: i` until it
//! has N bytes. Both sides check N against their cap before accepting, grow buffers only as
//! bytes arrive, and stop waiting at the call's deadline.
//!
//! **Direct calls**: a call may carry `trellis-peer: ask`; a server with a direct listener then
//! adds `trellis-peer: <address> <token> <machine>` to its reply, and the caller sends later
//! calls to that target over a TCP connection of its own, skipping the nats-server hop. See
//! [`direct`] for the frames, the fallbacks and the trust model.

pub mod client;
pub mod codec;
pub mod direct;
pub mod error;
pub mod json;
pub mod linking;
pub mod server;
pub mod subject;
pub mod wire;

#[cfg(test)]
mod callee_tests;
#[cfg(test)]
mod direct_tests;
#[cfg(test)]
mod fixture_types;
#[cfg(test)]
mod nats_tests;

pub use client::InvocationClient;
pub use error::InvocationError;
pub use server::{AfterSend, IncomingCall, InvocationServer, Reply, ServerOptions};
pub use wire::CallContext;

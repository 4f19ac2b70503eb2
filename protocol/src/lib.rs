//! The wire contract of a Trellis lattice.
//!
//! Trellis speaks wasmCloud 1.x's control interface so existing tooling keeps working. This
//! crate holds only the shapes that cross the wire: NATS subjects ([`subjects`]), the
//! control-interface request and response bodies ([`ctl`]), lattice events ([`events`]), and the
//! limits every request is checked against ([`limits`]), and the secrets protocol ([`secrets`]).
//! It has no I/O, so the host, the reconciler and the CLI all share it cheaply; the optional
//! `nats` feature adds [`nats`], the connection options every Trellis process shares.

pub mod ctl;
pub mod events;
#[cfg(feature = "nats")]
pub mod jetstream;
pub mod limits;
#[cfg(feature = "nats")]
pub mod nats;
pub mod secrets;
#[cfg(feature = "nats")]
pub mod secrets_client;
pub mod subjects;

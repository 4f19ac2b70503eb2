//! Trellis' built-in secrets backend, `nats-kv`: wasmCloud's secrets protocol
//! (`wasmcloud.secrets.v1alpha1.{backend}.*`) served over NATS, with values sealed at rest in a
//! JetStream KV bucket, so wasmCloud hosts and Trellis hosts can both fetch secrets from it.
//!
//! - [`server`]: the backend ([`server::Backend`]), with Trellis' grant rules (the application's
//!   deployed manifest must declare the key; mappings restrict it to entities).
//! - [`client`]: the admin client ([`client::AdminClient`]): put, list, delete, map.
//! - [`admin`]: the admin operations' wire shapes and name checks.
//! - [`grants`]: what the reconciler says an application may read.
//! - [`jwt`]: checking the entity's and host's wascap JWTs.
//!
//! `trellis secrets serve` runs the backend; `trellis secret ...` administers it; `trellis up`
//! runs one by default. See docs/secrets-backend.md.

pub mod admin;
pub mod client;
pub mod grants;
pub mod jwt;
pub mod server;

pub use client::{AdminClient, SecretValue};
pub use server::{Backend, BackendConfig};

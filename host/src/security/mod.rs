//! Signed components and identities: wasmCloud-compatible claims and what a host admits.
//!
//! - [`claims`]: the wascap JWT format (embed, read, verify, module hash).
//! - [`admission`]: the load-time check (`--require-signed`, `--allowed-issuer`).
//! - [`policy`]: wasmCloud's policy service over NATS (`--policy-topic`).
//! - [`host_token`]: the host's own JWT, its identity towards secrets backends.

pub mod admission;
pub mod claims;
pub mod host_token;
pub mod policy;

pub use admission::ClaimsPolicy;
pub use claims::{ClaimsError, ComponentClaims};
pub use host_token::HostToken;
pub use policy::{PolicyClient, PolicyConfig};

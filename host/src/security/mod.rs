//! Signed components: wasmCloud-compatible claims and what a host admits.
//!
//! - [`claims`]: the wascap JWT format (embed, read, verify, module hash).
//! - [`admission`]: the load-time check (`--require-signed`, `--allowed-issuer`).
//! - [`policy`]: wasmCloud's policy service over NATS (`--policy-topic`).

pub mod admission;
pub mod claims;
pub mod policy;

pub use admission::ClaimsPolicy;
pub use claims::{ClaimsError, ComponentClaims};
pub use policy::{PolicyClient, PolicyConfig};

//! Signed components: wasmCloud-compatible claims and what a host admits.
//!
//! - [`claims`]: the wascap JWT format (embed, read, verify, module hash).
//! - [`admission`]: the load-time check (`--require-signed`, `--allowed-issuer`).

pub mod admission;
pub mod claims;

pub use admission::ClaimsPolicy;
pub use claims::{ClaimsError, ComponentClaims};

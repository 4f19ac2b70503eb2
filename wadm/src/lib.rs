//! The Trellis reconciler, compatible with wasmCloud's wadm.
//!
//! - [`model`] and [`validation`]: OAM `Application` manifests in YAML or JSON, with errors that
//!   name the field path and line; [`limits`] bounds their size and nesting before parsing.
//! - [`api`]: the wadm API over NATS (`wadm.api.{lattice}.model.*`); [`api::types`] holds the
//!   request and response bodies.
//! - [`lattice`]: the observed lattice, fed by events and queries.
//! - [`planner`]: a pure function from desired and observed state to control commands and status.
//! - [`store`]: manifests, versions, status and the leader lease in JetStream KV.
//! - [`reconciler`]: the process: [`run`] ties it all together.

pub mod api;
pub mod lattice;
pub mod limits;
pub mod model;
pub mod planner;
pub mod reconciler;
pub mod store;
pub mod validation;

pub use reconciler::{run, WadmOptions};

#[cfg(test)]
mod tests;

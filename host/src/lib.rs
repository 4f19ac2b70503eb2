//! The Trellis host: runs WebAssembly components on a NATS lattice.
//!
//! - [`runtime`]: wasmtime, the component runtime (instances, limits, compile cache, WASI).
//! - [`lattice`]: the lattice connection (control interface, events, heartbeats, shared state).
//! - [`components`] and [`providers`]: what this host runs.
//! - [`routing`]: component-to-component calls (imports forwarded to link targets, exports
//!   served on the lattice, co-located calls in-process).
//! - [`host`]: the lifecycle tying them together.

pub mod components;
pub mod host;
pub mod identity;
pub mod invocation;
pub mod lattice;
pub mod providers;
pub mod routing;
pub mod runtime;

pub use host::{Host, HostConfig, HostHandle, HostSlot};

/// The host software version reported in inventories and events.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

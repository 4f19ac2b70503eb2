//! The host's side of the lattice: the NATS connection, the control interface, events,
//! heartbeats, the shared state in JetStream KV, and the snapshot a host serves from when that
//! state cannot be reached.

pub mod connection;
pub mod control;
pub mod events;
pub mod heartbeat;
mod paging;
pub mod snapshot;
pub mod store;

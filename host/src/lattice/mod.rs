//! The host's side of the lattice: the NATS connection, the control interface, events,
//! heartbeats, and the shared state in JetStream KV.

pub mod connection;
pub mod control;
pub mod events;
pub mod heartbeat;
mod paging;
pub mod store;

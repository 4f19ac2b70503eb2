//! Property-based fuzz tests of the decoders that read bytes from the network.
//!
//! - [`control`]: control-interface request bodies, every request type `dispatch` decodes;
//! - [`codec`]: the invocation codec (binary and JSON) over generated WIT types and values;
//! - [`frame`]: the direct-call frames, handshake and stream reader.
//!
//! They run as ordinary tests with a small, fixed-seed case count (so CI stays fast and
//! deterministic); `TRELLIS_FUZZ_CASES=N` runs N cases per property with a fresh random seed.
//! Failures are shrunk and their seeds kept in `host/proptest-regressions/`, which is committed
//! and replayed on every run. See `docs/fuzzing.md`.

mod codec;
mod control;
mod frame;
mod support;

use support::*;

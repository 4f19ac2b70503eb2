//! `wasi:logging/logging@0.1.0-draft`: guest log lines become `tracing` events on the host,
//! tagged with the component id and the guest's context string.

use wasmtime::component::{HasSelf, Linker};

use trellis_host::runtime::{Capability, InstanceState};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/wasi-logging",
        world: "wasi:logging/imports",
    });
}

use bindings::wasi::logging::logging::{self, Level};

/// Longest message logged as is; longer ones are cut (a guest must not flood the host's logs
/// with one multi-megabyte line).
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Serves `wasi:logging/logging` to every component.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoggingCapability;

impl Capability for LoggingCapability {
    fn name(&self) -> &str {
        "wasi:logging"
    }

    fn add_to_linker(&self, linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
        logging::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |state| state)?;
        Ok(())
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl logging::Host for InstanceState {
    fn log(&mut self, level: Level, context: String, message: String) {
        let component_id = self.component_id();
        let context = truncated(&context, 256);
        let message = truncated(&message, MAX_MESSAGE_BYTES);
        // In the invocation's trace when logs are exported (its span is current here).
        trellis_telemetry::propagation::in_current_trace(|| match level {
            Level::Trace => {
                tracing::trace!(target: "guest", component_id, context, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "guest", component_id, context, "{message}")
            }
            Level::Info => tracing::info!(target: "guest", component_id, context, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", component_id, context, "{message}"),
            Level::Error => {
                tracing::error!(target: "guest", component_id, context, "{message}")
            }
            Level::Critical => {
                tracing::error!(target: "guest", component_id, context, critical = true, "{message}")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::truncated;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("héllo", 3), "hé");
        assert_eq!(truncated("short", 100), "short");
    }
}

//! Guest stdout/stderr, line-buffered into the host's logs and tagged with the component id.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept in the buffer; longer output is logged in pieces of this size.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which guest stream a [`GuestLog`] captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuestStream {
    /// `wasi:cli/stdout`.
    Stdout,
    /// `wasi:cli/stderr`.
    Stderr,
}

impl GuestStream {
    fn name(self) -> &'static str {
        match self {
            GuestStream::Stdout => "stdout",
            GuestStream::Stderr => "stderr",
        }
    }
}

/// A `wasi:cli` output that turns each line the guest writes into a `tracing` event
/// (`info` for stdout, `warn` for stderr) with the `component_id` field.
#[derive(Clone)]
pub(crate) struct GuestLog {
    component_id: Arc<str>,
    stream: GuestStream,
}

impl GuestLog {
    /// A log sink for `stream` of `component_id`.
    pub(crate) fn new(component_id: Arc<str>, stream: GuestStream) -> Self {
        Self {
            component_id,
            stream,
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            sink: self.clone(),
            buffer: Vec::new(),
            // The guest asks for its stream while it runs: the invocation's span is current.
            // The writes themselves happen on a wasmtime worker task, outside that span, so
            // the lines are emitted in it explicitly (they then carry its trace id).
            span: trellis_telemetry::traces_enabled().then(tracing::Span::current),
        })
    }
}

/// Buffers output until a newline, then emits the line; the rest is emitted on flush-less drop.
struct LineWriter {
    sink: GuestLog,
    buffer: Vec<u8>,
    span: Option<tracing::Span>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        let component_id = &*self.sink.component_id;
        let stream = self.sink.stream.name();
        let log = || match self.sink.stream {
            GuestStream::Stdout => tracing::info!(component_id, stream, "{text}"),
            GuestStream::Stderr => tracing::warn!(component_id, stream, "{text}"),
        };
        match &self.span {
            Some(span) => span.in_scope(|| trellis_telemetry::propagation::in_current_trace(log)),
            None => log(),
        }
    }

    fn absorb(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            let (line, rest) = bytes.split_at(newline + 1);
            if self.buffer.is_empty() {
                self.emit(line);
            } else {
                self.buffer.extend_from_slice(line);
                let full = std::mem::take(&mut self.buffer);
                self.emit(&full);
            }
            bytes = rest;
        }
        self.buffer.extend_from_slice(bytes);
        while self.buffer.len() >= MAX_LINE_BYTES {
            let rest = self.buffer.split_off(MAX_LINE_BYTES);
            let piece = std::mem::replace(&mut self.buffer, rest);
            self.emit(&piece);
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().absorb(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Lines are emitted as they complete; a partial line waits for its newline or the end.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buffer.is_empty() {
            let rest = std::mem::take(&mut this.buffer);
            this.emit(&rest);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            self.emit(&rest);
        }
    }
}

//! The bounded pipe between a guest's `outgoing-value` output stream and the backend upload
//! that consumes it.
//!
//! The guest writes into [`GuestWriter`] (a `wasi:io` output stream); the backend reads from
//! [`PipeReader`] (a tokio `AsyncRead`). At most [`PIPE_CAPACITY`] bytes sit in between once
//! `write-data` has started the upload, so an object of any size streams through a fixed amount
//! of host memory: when the pipe is full the guest's stream reports no write capacity and its
//! pollable waits until the upload drained some.
//!
//! Before `write-data` is called nothing reads the pipe. wasmCloud's own examples write the
//! body both before and after `write-data`, so up to [`UNATTACHED_LIMIT`] bytes are buffered
//! while waiting; past that the stream fails with an error that says to call `write-data`
//! first (instead of blocking forever, which is what an unread bounded pipe would do).
//!
//! The end of the data is `outgoing-value.finish`, not the end of the stream: a value dropped
//! without `finish` (or an instance that ends mid-write) aborts the upload, so a partial object
//! is never committed.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Bytes buffered between the guest and a running upload.
pub(crate) const PIPE_CAPACITY: usize = 1 << 20;

/// Bytes a guest may write before it calls `write-data` (which starts the upload).
pub(crate) const UNATTACHED_LIMIT: usize = 8 << 20;

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    buffered: usize,
    /// `write-data` started an upload that reads the pipe.
    attached: bool,
    /// `finish` was called: the reader sees the end of the data once the queue is empty.
    finished: bool,
    /// The value was dropped without `finish`: the reader fails.
    aborted: bool,
    /// The reader is gone (the upload ended, usually with an error).
    reader_gone: bool,
    /// Why the upload ended early, for the guest's next write.
    upload_error: Option<String>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl State {
    fn limit(&self) -> usize {
        if self.attached {
            PIPE_CAPACITY
        } else {
            UNATTACHED_LIMIT
        }
    }

    fn wake_reader(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }
}

/// The state both ends share.
#[derive(Clone, Default)]
pub(crate) struct Pipe {
    state: Arc<Mutex<State>>,
}

impl Pipe {
    /// A new, empty pipe.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The end the guest writes to.
    pub(crate) fn writer(&self) -> GuestWriter {
        GuestWriter { pipe: self.clone() }
    }

    /// The end an upload reads from; marks the pipe as attached (read from now on).
    pub(crate) fn attach_reader(&self) -> PipeReader {
        let mut state = self.lock();
        state.attached = true;
        state.wake_writer();
        PipeReader { pipe: self.clone() }
    }

    /// No more data: the reader reaches its end once it drained the queue.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        state.finished = true;
        state.wake_reader();
    }

    /// The value was abandoned: the reader fails, so nothing partial is stored.
    pub(crate) fn abort(&self) {
        let mut state = self.lock();
        if !state.finished {
            state.aborted = true;
        }
        state.queue.clear();
        state.buffered = 0;
        state.wake_reader();
        state.wake_writer();
    }

    /// Records why the upload stopped, for the guest's next write.
    pub(crate) fn set_upload_error(&self, error: &str) {
        self.lock().upload_error = Some(error.to_string());
    }
}

/// The guest's output stream (`outgoing-value-write-body`).
pub(crate) struct GuestWriter {
    pipe: Pipe,
}

impl GuestWriter {
    fn capacity(state: &State) -> StreamResult<usize> {
        if state.aborted || state.finished {
            return Err(StreamError::Closed);
        }
        if state.reader_gone {
            let why = state
                .upload_error
                .clone()
                .unwrap_or_else(|| "the blobstore upload stopped".to_string());
            return Err(StreamError::LastOperationFailed(wasmtime::format_err!(
                "{why}"
            )));
        }
        let limit = state.limit();
        if state.buffered >= limit {
            if !state.attached {
                return Err(StreamError::LastOperationFailed(wasmtime::format_err!(
                    "more than {} MiB were written to an outgoing-value before container.write-data \
                     was called: call write-data right after outgoing-value-write-body, then write \
                     the data, so objects of any size stream to the store",
                    UNATTACHED_LIMIT >> 20
                )));
            }
            return Ok(0);
        }
        Ok(limit - state.buffered)
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let mut state = self.pipe.lock();
        Self::capacity(&state)?;
        if bytes.is_empty() {
            return Ok(());
        }
        state.buffered += bytes.len();
        state.queue.push_back(bytes);
        state.wake_reader();
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        // The data is in the pipe; the upload's own completion is what `finish` waits for.
        let state = self.pipe.lock();
        Self::capacity(&state).map(|_| ())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let state = self.pipe.lock();
        Self::capacity(&state)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestWriter {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| {
            let mut state = self.pipe.lock();
            match Self::capacity(&state) {
                Ok(0) => {
                    state.write_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        })
        .await
    }
}

/// The upload's end of the pipe.
pub(crate) struct PipeReader {
    pipe: Pipe,
}

impl AsyncRead for PipeReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.pipe.lock();
        if state.aborted {
            return Poll::Ready(Err(io::Error::other(
                "the component dropped the outgoing-value without calling finish; \
                 the object was not stored",
            )));
        }
        let mut copied = 0;
        while buf.remaining() > 0 {
            let Some(front) = state.queue.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                state.queue.pop_front();
            }
            copied += n;
        }
        if copied > 0 {
            state.buffered -= copied;
            state.wake_writer();
            return Poll::Ready(Ok(()));
        }
        if state.finished {
            return Poll::Ready(Ok(()));
        }
        state.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        let mut state = self.pipe.lock();
        state.reader_gone = true;
        state.queue.clear();
        state.buffered = 0;
        state.wake_writer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn data_flows_and_ends_at_finish() {
        let pipe = Pipe::new();
        let mut writer = pipe.writer();
        let mut reader = pipe.attach_reader();
        let reading = tokio::spawn(async move {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).await.map(|_| out)
        });
        let mut sent = 0usize;
        for i in 0..64u8 {
            loop {
                let room = writer.check_write().expect("writable");
                if room > 0 {
                    break;
                }
                writer.ready().await;
            }
            writer
                .write(Bytes::from(vec![i; 64 * 1024]))
                .expect("write");
            sent += 64 * 1024;
        }
        drop(writer);
        pipe.finish();
        let out = reading.await.expect("join").expect("read");
        assert_eq!(out.len(), sent);
        assert!(out
            .chunks(64 * 1024)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b as usize == i)));
    }

    #[tokio::test]
    async fn capacity_is_bounded_once_attached() {
        let pipe = Pipe::new();
        let mut writer = pipe.writer();
        let _reader = pipe.attach_reader();
        writer
            .write(Bytes::from(vec![0; PIPE_CAPACITY]))
            .expect("write");
        assert_eq!(writer.check_write().expect("open"), 0);
    }

    #[tokio::test]
    async fn writing_too_much_before_write_data_fails_clearly() {
        let pipe = Pipe::new();
        let mut writer = pipe.writer();
        writer
            .write(Bytes::from(vec![0; UNATTACHED_LIMIT]))
            .expect("write");
        let error = writer.check_write().expect_err("over the limit");
        assert!(format!("{error:?}").contains("write-data"), "{error:?}");
    }

    #[tokio::test]
    async fn abort_fails_the_reader() {
        let pipe = Pipe::new();
        let mut writer = pipe.writer();
        let mut reader = pipe.attach_reader();
        writer.write(Bytes::from_static(b"partial")).expect("write");
        pipe.abort();
        let mut out = Vec::new();
        let error = reader.read_to_end(&mut out).await.expect_err("aborted");
        assert!(error.to_string().contains("finish"), "{error}");
    }
}

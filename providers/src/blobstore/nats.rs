//! The NATS backend: each container is a JetStream object store (stream `OBJ_{container}`) on
//! the lattice's own NATS connection, as wasmCloud's `blobstore-nats` keeps them.
//!
//! Objects use the NATS object store layout (the one async-nats, the Go client and the `nats`
//! CLI read): 128 KiB chunks on `$O.{container}.C.{nuid}`, then the object's info (size, chunk
//! count, `SHA-256=` digest) on `$O.{container}.M.{base64url(name)}` as a subject rollup, then
//! the previous version's chunks purged. Trellis publishes the chunks itself rather than
//! through `ObjectStore::put` for two reasons: up to [`WRITE_IN_FLIGHT`] chunks await their
//! acknowledgements at once (`put` waits for each in turn), and an upload that fails or is
//! abandoned purges the chunks it already sent (`put` leaves them in the stream for good).
//! Either way an upload holds at most a few chunks in memory.
//!
//! Reads use a pull consumer on the object's chunk subject fetching [`READ_BATCH`] chunks at a
//! time, so a download holds a few chunks however large the object is (async-nats' own
//! `Object` reader uses a push consumer that the server may run far ahead of a slow reader).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, object_store, stream::StorageType};
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};

use super::backend::{missing_object, range_len, BlobResult, ObjectMeta, Reader};

/// Chunks requested per pull while reading (128 KiB each by default).
const READ_BATCH: usize = 4;

/// Size of the chunks Trellis writes (the object store's default).
const CHUNK_SIZE: usize = 128 * 1024;

/// Chunks published and not yet acknowledged, at most, during an upload.
const WRITE_IN_FLIGHT: usize = 8;

/// How long an abandoned read's consumer lives on the server.
const READ_CONSUMER_IDLE: Duration = Duration::from_secs(60);

/// Storage settings for new containers, from the link config (wasmCloud's keys).
#[derive(Debug, Clone)]
pub(crate) struct NatsSettings {
    max_age: Duration,
    storage: StorageType,
    num_replicas: usize,
    compression: bool,
    js_domain: Option<String>,
}

impl NatsSettings {
    /// Reads `max_age` (seconds), `storage_type` (`file` | `memory`), `num_replicas`,
    /// `compression` and `js_domain` from normalized settings. `cluster_uri` is accepted and
    /// ignored: the lattice's own connection is used.
    pub(crate) fn parse(settings: &HashMap<String, String>) -> BlobResult<Self> {
        let max_age = match settings.get("max_age") {
            None => Duration::ZERO,
            Some(v) => Duration::from_secs(v.trim().parse().map_err(|_| {
                format!("the blobstore setting max_age=`{v}` is not a number of seconds")
            })?),
        };
        let storage = match settings
            .get("storage_type")
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => StorageType::File,
            Some(v) if v == "file" || v == "0" => StorageType::File,
            Some(v) if v == "memory" || v == "1" => StorageType::Memory,
            Some(v) => {
                return Err(format!(
                "the blobstore setting storage_type=`{v}` is not supported: use `file` or `memory`"
            ))
            }
        };
        let num_replicas = match settings.get("num_replicas") {
            None => 1,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n @ 1..=5) => n,
                _ => {
                    return Err(format!(
                        "the blobstore setting num_replicas=`{v}` must be a number from 1 to 5"
                    ))
                }
            },
        };
        let compression = settings
            .get("compression")
            .is_some_and(|v| crate::http_server::settings::is_truthy(v));
        let js_domain = settings
            .get("js_domain")
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty());
        Ok(Self {
            max_age,
            storage,
            num_replicas,
            compression,
            js_domain,
        })
    }
}

/// Containers as JetStream object stores.
#[derive(Clone)]
pub(crate) struct NatsStore {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: NatsSettings,
}

/// Container names the object store accepts (they become stream names and subjects).
fn check_container(name: &str) -> BlobResult<()> {
    if name.is_empty()
        || name.len() > 200
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "container name `{name}` is not valid for the NATS object store: use 1 to 200 \
             letters, digits, `-` or `_`"
        ));
    }
    Ok(())
}

fn check_object(name: &str) -> BlobResult<()> {
    if name.is_empty() {
        return Err("object names must not be empty".to_string());
    }
    Ok(())
}

/// Refuses a container or object name the object store cannot hold.
pub(crate) fn check_names(container: &str, object: &str) -> BlobResult<()> {
    check_container(container)?;
    check_object(object)
}

fn stream_name(container: &str) -> String {
    format!("OBJ_{container}")
}

/// Seconds since the Unix epoch of a NATS timestamp (0 before the epoch).
fn unix_seconds(timestamp: i64) -> u64 {
    u64::try_from(timestamp).unwrap_or(0)
}

impl NatsStore {
    /// A store on `client`'s JetStream (in `js_domain` when set).
    pub(crate) fn new(client: &async_nats::Client, settings: NatsSettings) -> Self {
        let js = match &settings.js_domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain),
            None => jetstream::new(client.clone()),
        };
        Self {
            client: client.clone(),
            js,
            settings,
        }
    }

    /// Opens an existing container: one lookup on the usual path; a second only to tell a
    /// missing container from another failure.
    async fn bucket(&self, container: &str) -> BlobResult<object_store::ObjectStore> {
        check_container(container)?;
        match self.js.get_object_store(container).await {
            Ok(store) => Ok(store),
            Err(_) if !self.container_exists(container).await? => Err(format!(
                "container `{container}` does not exist: create it with create-container first"
            )),
            Err(e) => Err(format!("cannot open container `{container}` in NATS: {e}")),
        }
    }

    pub(crate) async fn create_container(&self, name: &str) -> BlobResult<()> {
        check_container(name)?;
        if self.container_exists(name).await? {
            return Ok(());
        }
        self.js
            .create_object_store(object_store::Config {
                bucket: name.to_string(),
                description: Some("wasi:blobstore container (Trellis)".to_string()),
                max_age: self.settings.max_age,
                max_bytes: -1,
                storage: self.settings.storage,
                num_replicas: self.settings.num_replicas,
                compression: self.settings.compression,
                placement: None,
            })
            .await
            .map(|_| ())
            .map_err(|e| {
                format!("cannot create container `{name}` in NATS (is JetStream enabled?): {e}")
            })
    }

    pub(crate) async fn container_exists(&self, name: &str) -> BlobResult<bool> {
        check_container(name)?;
        match self.js.get_stream(stream_name(name)).await {
            Ok(_) => Ok(true),
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(format!("cannot look up container `{name}` in NATS: {e}")),
            },
        }
    }

    pub(crate) async fn delete_container(&self, name: &str) -> BlobResult<()> {
        check_container(name)?;
        if !self.container_exists(name).await? {
            return Ok(());
        }
        self.js
            .delete_object_store(name)
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot delete container `{name}` in NATS: {e}"))
    }

    pub(crate) async fn container_created_at(&self, name: &str) -> BlobResult<u64> {
        check_container(name)?;
        let mut stream = self.js.get_stream(stream_name(name)).await.map_err(|e| {
            format!("container `{name}` does not exist or cannot be read in NATS: {e}")
        })?;
        let info = stream
            .info()
            .await
            .map_err(|e| format!("cannot read container `{name}`'s info in NATS: {e}"))?;
        Ok(unix_seconds(info.created.unix_timestamp()))
    }

    /// The object's info, `None` when absent or deleted.
    async fn info(
        &self,
        bucket: &object_store::ObjectStore,
        container: &str,
        object: &str,
    ) -> BlobResult<Option<object_store::ObjectInfo>> {
        check_object(object)?;
        match bucket.info(object).await {
            Ok(info) if info.deleted => Ok(None),
            Ok(info) => Ok(Some(info)),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "cannot read object `{object}` in container `{container}`: {e}"
            )),
        }
    }

    pub(crate) async fn read(
        &self,
        container: &str,
        object: &str,
        start: u64,
        end: u64,
    ) -> BlobResult<(Reader, u64)> {
        let bucket = self.bucket(container).await?;
        let info = self
            .info(&bucket, container, object)
            .await?
            .ok_or_else(|| missing_object(container, object))?;
        if info.options.as_ref().is_some_and(|o| o.link.is_some()) {
            return Err(format!(
                "object `{object}` in container `{container}` is a NATS object link, which \
                 wasi:blobstore cannot read"
            ));
        }
        let size = info.size as u64;
        let len = range_len(size, start, end);
        if len == 0 {
            return Ok((Box::new(tokio::io::empty()), 0));
        }
        let stream = self
            .js
            .get_stream(stream_name(container))
            .await
            .map_err(|e| format!("cannot open container `{container}` in NATS: {e}"))?;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: format!("$O.{container}.C.{}", info.nuid),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: READ_CONSUMER_IDLE,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot start reading `{object}` from NATS: {e}"))?;
        let consumer_name = consumer.cached_info().name.clone();
        let messages = consumer
            .stream()
            .max_messages_per_batch(READ_BATCH)
            .messages()
            .await
            .map_err(|e| format!("cannot start reading `{object}` from NATS: {e}"))?;
        let reader = ChunkReader {
            messages: Box::pin(messages.map(|m| {
                m.map(|m| m.message.payload)
                    .map_err(|e| io::Error::other(format!("reading from NATS: {e}")))
            })),
            current: Bytes::new(),
            skip: start,
            remaining: len,
            object: object.to_string(),
            consumer: Some((stream, consumer_name)),
        };
        Ok((Box::new(reader), len))
    }

    pub(crate) async fn write(
        &self,
        container: &str,
        object: &str,
        data: &mut (dyn AsyncRead + Send + Unpin),
    ) -> BlobResult<u64> {
        check_object(object)?;
        let bucket = self.bucket(container).await?;
        let previous = self.info(&bucket, container, object).await?;
        // A fresh NUID names this version's chunks (the inbox suffix is one).
        let inbox = self.client.new_inbox();
        let nuid = inbox.rsplit('.').next().unwrap_or(&inbox).to_string();
        let chunk_subject = format!("$O.{container}.C.{nuid}");
        let uploaded = self.publish_chunks(&chunk_subject, data).await;
        let (size, chunks, digest) = match uploaded {
            Ok(done) => done,
            Err(e) => {
                self.purge(container, &chunk_subject).await;
                return Err(format!(
                    "object `{object}` was not stored in container `{container}`: {e}"
                ));
            }
        };
        let info = object_store::ObjectInfo {
            name: object.to_string(),
            description: None,
            metadata: HashMap::new(),
            headers: None,
            options: Some(object_store::ObjectOptions {
                link: None,
                max_chunk_size: Some(CHUNK_SIZE),
            }),
            bucket: container.to_string(),
            nuid,
            size: usize::try_from(size).unwrap_or(usize::MAX),
            chunks,
            modified: Some(time::OffsetDateTime::now_utc()),
            digest: Some(format!("SHA-256={}", URL_SAFE.encode(digest))),
            deleted: false,
        };
        let meta = match serde_json::to_vec(&info) {
            Ok(meta) => meta,
            Err(e) => {
                self.purge(container, &chunk_subject).await;
                return Err(format!("cannot encode the info of object `{object}`: {e}"));
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        let meta_subject = format!("$O.{container}.M.{}", URL_SAFE.encode(object));
        let committed = match self
            .js
            .publish_with_headers(meta_subject, headers, meta.into())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = committed {
            self.purge(container, &chunk_subject).await;
            return Err(format!(
                "object `{object}` was not stored in container `{container}`: publishing its \
                 info failed: {e}"
            ));
        }
        if let Some(previous) = previous {
            self.purge(container, &format!("$O.{container}.C.{}", previous.nuid))
                .await;
        }
        Ok(size)
    }

    /// Publishes `data` as chunks on `subject`, a few acknowledgements in flight; returns the
    /// size, the chunk count and the SHA-256.
    async fn publish_chunks(
        &self,
        subject: &str,
        data: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<(u64, usize, Vec<u8>), String> {
        let mut in_flight = VecDeque::with_capacity(WRITE_IN_FLIGHT);
        let mut sha = Sha256::new();
        let mut size = 0u64;
        let mut chunks = 0usize;
        let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
        loop {
            while buf.len() < CHUNK_SIZE {
                let mut limited = (&mut *data).take((CHUNK_SIZE - buf.len()) as u64);
                if limited
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| e.to_string())?
                    == 0
                {
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            let chunk = buf.split().freeze();
            let last = chunk.len() < CHUNK_SIZE;
            sha.update(&chunk);
            size += chunk.len() as u64;
            chunks += 1;
            if in_flight.len() == WRITE_IN_FLIGHT {
                if let Some(ack) = in_flight.pop_front() {
                    wait_ack(ack).await?;
                }
            }
            let ack = self
                .js
                .publish(subject.to_string(), chunk)
                .await
                .map_err(|e| format!("publishing a chunk failed: {e}"))?;
            in_flight.push_back(ack);
            if last {
                break;
            }
            buf.reserve(CHUNK_SIZE);
        }
        for ack in in_flight {
            wait_ack(ack).await?;
        }
        Ok((size, chunks, sha.finalize().to_vec()))
    }

    /// Removes a subject's messages (chunks of a failed upload or of a replaced version).
    async fn purge(&self, container: &str, subject: &str) {
        let purged = match self.js.get_stream(stream_name(container)).await {
            Ok(stream) => stream
                .purge()
                .filter(subject)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = purged {
            tracing::warn!(container, subject, error = %e, "cannot purge object chunks");
        }
    }

    pub(crate) async fn list(&self, container: &str) -> BlobResult<Vec<String>> {
        let bucket = self.bucket(container).await?;
        let mut list = bucket
            .list()
            .await
            .map_err(|e| format!("cannot list container `{container}`: {e}"))?;
        let mut names = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| format!("cannot list container `{container}`: {e}"))?;
            names.push(info.name);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub(crate) async fn delete_object(&self, container: &str, object: &str) -> BlobResult<()> {
        let bucket = self.bucket(container).await?;
        if self.info(&bucket, container, object).await?.is_none() {
            return Ok(());
        }
        match bucket.delete(object).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!(
                "cannot delete object `{object}` in container `{container}`: {e}"
            )),
        }
    }

    pub(crate) async fn object_meta(
        &self,
        container: &str,
        object: &str,
    ) -> BlobResult<Option<ObjectMeta>> {
        let bucket = self.bucket(container).await?;
        Ok(self
            .info(&bucket, container, object)
            .await?
            .map(|info| ObjectMeta {
                created_at: info
                    .modified
                    .map_or(0, |t| unix_seconds(t.unix_timestamp())),
                size: info.size as u64,
            }))
    }
}

/// Waits for one chunk's acknowledgement.
async fn wait_ack(ack: jetstream::context::PublishAckFuture) -> Result<(), String> {
    ack.await
        .map(|_| ())
        .map_err(|e| format!("a chunk was not acknowledged: {e}"))
}

type Chunks = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// An object's chunks as bytes, skipping `skip` bytes and ending after `remaining`.
struct ChunkReader {
    messages: Chunks,
    current: Bytes,
    skip: u64,
    remaining: u64,
    object: String,
    /// The server-side consumer, deleted when the reader goes (else it idles out).
    consumer: Option<(jetstream::stream::Stream, String)>,
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        if let (Some((stream, name)), Ok(runtime)) =
            (self.consumer.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                if let Err(e) = stream.delete_consumer(&name).await {
                    tracing::debug!(consumer = name, error = %e, "cannot delete a read consumer; it idles out");
                }
            });
        }
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.remaining == 0 {
                return Poll::Ready(Ok(()));
            }
            if !self.current.is_empty() {
                let n = (self.current.len() as u64)
                    .min(self.remaining)
                    .min(buf.remaining() as u64) as usize;
                buf.put_slice(&self.current[..n]);
                self.current.advance(n);
                self.remaining -= n as u64;
                return Poll::Ready(Ok(()));
            }
            match self.messages.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(mut chunk))) => {
                    let len = chunk.len() as u64;
                    if self.skip >= len {
                        self.skip -= len;
                        continue;
                    }
                    chunk.advance(self.skip as usize);
                    self.skip = 0;
                    self.current = chunk;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(io::Error::other(format!(
                        "the NATS object store ended object `{}` early ({} bytes missing)",
                        self.object, self.remaining
                    ))))
                }
            }
        }
    }
}

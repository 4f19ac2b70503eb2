//! The storage behind `wasi:keyvalue`: NATS JetStream KV, Redis, or memory.
//!
//! A bucket opened by a component becomes an [`OpenBucket`]: a JetStream KV bucket, one Redis
//! database (keys as the component names them, or behind the link's `key_prefix`), or a map
//! in this process. Connections and bucket handles are shared by every instance through
//! [`BackendPool`], so opening a bucket in a fresh instance (one per invocation) costs no
//! network round trip after the first time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;

use super::combiner::{CasStore, Combiner, Versioned};

/// How long one storage operation may take before the guest gets an error.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Most keys returned by one `list-keys` page.
pub(crate) const LIST_PAGE_SIZE: usize = 1000;

/// An error a storage operation reports to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StorageError {
    /// The bucket does not exist and cannot be created.
    NoSuchStore,
    /// The bucket is not the guest's to use.
    AccessDenied(String),
    /// Anything else.
    Other(String),
}

impl StorageError {
    pub(crate) fn other(context: &str, error: impl std::fmt::Display) -> Self {
        StorageError::Other(format!("{context}: {error}"))
    }
}

/// Which storage a link selects.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// JetStream KV on the lattice's own NATS connection.
    Nats,
    /// A Redis server at the URL.
    Redis { url: String },
    /// A map in this host process (lost on restart), scoped by the link's target.
    Memory { scope: String },
}

/// Shown in logs and errors: a Redis URL without its password.
impl std::fmt::Debug for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendKind::Nats => f.write_str("Nats"),
            BackendKind::Redis { url } => write!(f, "Redis({})", redacted(url)),
            BackendKind::Memory { scope } => write!(f, "Memory({scope})"),
        }
    }
}

/// `url` with any credentials (`user:password@`) replaced by `***@`, for logs and errors.
pub(crate) fn redacted(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &rest[at..]).into(),
        None => url.into(),
    }
}

/// The settings a link resolves to: where the data lives and the bucket to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BucketTarget {
    /// The storage.
    pub(crate) kind: BackendKind,
    /// The bucket name (JetStream bucket, map name; on Redis only `{bucket}` in `key_prefix`).
    pub(crate) bucket: String,
    /// What Redis keys start with (`key_prefix` with `{bucket}` filled in); empty: none.
    pub(crate) key_prefix: String,
}

/// Config key choosing the backend explicitly: `nats`, `redis` or `memory`.
pub(crate) const BACKEND_KEY: &str = "backend";
/// Config key naming the bucket; when absent, the identifier given to `open` is used.
pub(crate) const BUCKET_KEY: &str = "bucket";
/// Config key holding the Redis URL, in any letter case (as wasmCloud's keyvalue-redis).
pub(crate) const URL_KEY: &str = "URL";
/// Config key putting a prefix before every Redis key; `{bucket}` in it stands for the bucket
/// name. Absent or empty: keys are stored as the component names them (wasmCloud's layout).
pub(crate) const KEY_PREFIX_KEY: &str = "key_prefix";
/// What `{bucket}` in a `key_prefix` stands for.
const BUCKET_PLACEHOLDER: &str = "{bucket}";

/// The backend the provider ref implies, if it implies one.
pub(crate) fn kind_from_image_ref(image_ref: &str) -> Option<&'static str> {
    if image_ref.contains("keyvalue-redis") {
        Some("redis")
    } else if image_ref.contains("keyvalue-nats") {
        Some("nats")
    } else if image_ref.contains("keyvalue-inmemory") || image_ref.contains("keyvalue-memory") {
        Some("memory")
    } else {
        None
    }
}

/// Resolves the target of a link from its merged settings.
///
/// `implied` is the backend implied by the provider's image ref when the provider runs on
/// this host. `scope` identifies the link target (for memory buckets). `identifier` is what
/// the guest passed to `open`.
pub(crate) fn resolve_target(
    settings: &HashMap<String, String>,
    implied: Option<&str>,
    scope: &str,
    identifier: &str,
) -> Result<BucketTarget, StorageError> {
    let url = crate::http_server::settings::get_ci(settings, URL_KEY).map(str::to_string);
    let explicit = settings
        .get(BACKEND_KEY)
        .map(|b| b.trim().to_ascii_lowercase());
    let chosen = match (explicit.as_deref(), implied, url.as_deref()) {
        (Some(b), _, _) => b.to_string(),
        (None, Some(b), _) => b.to_string(),
        (None, None, Some(u)) if u.starts_with("redis://") || u.starts_with("rediss://") => {
            "redis".to_string()
        }
        _ => "nats".to_string(),
    };
    let kind = match chosen.as_str() {
        "nats" | "jetstream" => BackendKind::Nats,
        "redis" => BackendKind::Redis {
            url: url.unwrap_or_else(|| "redis://127.0.0.1:6379".to_string()),
        },
        "memory" | "inmemory" | "in-memory" => BackendKind::Memory {
            scope: scope.to_string(),
        },
        other => {
            return Err(StorageError::Other(format!(
                "the keyvalue link selects backend `{other}`; use `nats`, `redis` or `memory`"
            )))
        }
    };
    let requested = settings
        .get(BUCKET_KEY)
        .map(String::as_str)
        .unwrap_or(identifier)
        .trim();
    let bucket = if requested.is_empty() {
        "default".to_string()
    } else {
        requested.to_string()
    };
    let key_prefix = match settings.get(KEY_PREFIX_KEY).map(String::as_str) {
        None | Some("") => String::new(),
        Some(_) if !matches!(kind, BackendKind::Redis { .. }) => {
            return Err(StorageError::Other(format!(
                "`{KEY_PREFIX_KEY}` applies to the Redis backend only, and this keyvalue link \
                 selects {kind:?}: remove `{KEY_PREFIX_KEY}` or set `{BACKEND_KEY}=redis`"
            )))
        }
        Some(template) => template.replace(BUCKET_PLACEHOLDER, &bucket),
    };
    Ok(BucketTarget {
        kind,
        bucket,
        key_prefix,
    })
}

/// Maps a bucket name to a JetStream KV bucket name (letters, digits, `-`, `_`), refusing the
/// lattice's own buckets so a component can never read or change links and configs.
pub(crate) fn jetstream_bucket_name(bucket: &str) -> Result<String, StorageError> {
    let name: String = bucket
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CONFIGDATA_")
        || upper.starts_with("LATTICEDATA_")
        || upper.starts_with("WADM")
    {
        return Err(StorageError::AccessDenied(format!(
            "bucket `{bucket}` is reserved for the lattice's own state"
        )));
    }
    Ok(name)
}

/// The keys and values of one in-memory bucket.
pub(crate) type MemoryMap = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// A JetStream KV bucket and the combiner its increments go through.
pub(crate) struct NatsBucket {
    store: Arc<kv::Store>,
    increments: Arc<Combiner<kv::Store>>,
}

impl NatsBucket {
    fn new(store: kv::Store) -> Self {
        let store = Arc::new(store);
        Self {
            increments: Arc::new(Combiner::new(store.clone())),
            store,
        }
    }
}

/// A bucket a guest has opened.
#[derive(Clone)]
pub(crate) enum OpenBucket {
    /// A JetStream KV bucket.
    Nats(Arc<NatsBucket>),
    /// Keys `{prefix}{key}` in a Redis database.
    Redis {
        /// The shared connection.
        connection: redis::aio::MultiplexedConnection,
        /// The resolved `key_prefix` (usually empty).
        prefix: Arc<str>,
        /// The server's URL, to reconnect after a broken connection.
        url: String,
        /// The pool the connection came from.
        pool: Arc<BackendPool>,
    },
    /// A map in this process.
    Memory(MemoryMap),
}

impl std::fmt::Debug for OpenBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenBucket::Nats(_) => f.write_str("OpenBucket::Nats"),
            OpenBucket::Redis { prefix, url, .. } => {
                write!(f, "OpenBucket::Redis({}, prefix {prefix:?})", redacted(url))
            }
            OpenBucket::Memory(_) => f.write_str("OpenBucket::Memory"),
        }
    }
}

/// Connections and bucket handles shared by every instance of every component.
#[derive(Default)]
pub(crate) struct BackendPool {
    nats_buckets: Mutex<HashMap<String, Arc<NatsBucket>>>,
    redis: Mutex<HashMap<String, redis::aio::MultiplexedConnection>>,
    memory: Mutex<HashMap<(String, String), MemoryMap>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Runs a storage future under [`OPERATION_TIMEOUT`].
pub(crate) async fn timed<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let bounded = async {
        match tokio::time::timeout(OPERATION_TIMEOUT, fut).await {
            Ok(result) => result,
            Err(_) => Err(StorageError::Other(format!(
                "{what} did not finish within {}s",
                OPERATION_TIMEOUT.as_secs()
            ))),
        }
    };
    if !trellis_telemetry::traces_enabled() {
        return bounded.await;
    }
    // A client span per operation (`keyvalue get` -> `wasi:keyvalue.get`).
    let span = trellis_telemetry::spans::capability(
        "wasi:keyvalue",
        what.strip_prefix("keyvalue ").unwrap_or(what),
    );
    let result = tracing::Instrument::instrument(bounded, span.clone()).await;
    if let Err(error) = &result {
        trellis_telemetry::spans::record_error(&span, &format!("{error:?}"));
    }
    result
}

impl BackendPool {
    /// Opens (creating when needed) the bucket `target` names.
    pub(crate) async fn open(
        self: &Arc<Self>,
        client: &async_nats::Client,
        replicas: u8,
        target: &BucketTarget,
    ) -> Result<OpenBucket, StorageError> {
        match &target.kind {
            BackendKind::Nats => {
                let name = jetstream_bucket_name(&target.bucket)?;
                if let Some(store) = lock(&self.nats_buckets).get(&name) {
                    return Ok(OpenBucket::Nats(store.clone()));
                }
                let store = timed(
                    "opening the JetStream KV bucket",
                    open_nats_bucket(client, replicas, &name),
                )
                .await?;
                // Two first opens may race: keep the bucket (and combiner) that got in first.
                let bucket = lock(&self.nats_buckets)
                    .entry(name)
                    .or_insert_with(|| Arc::new(NatsBucket::new(store)))
                    .clone();
                Ok(OpenBucket::Nats(bucket))
            }
            BackendKind::Redis { url } => {
                let connection = self.redis_connection(url).await?;
                Ok(OpenBucket::Redis {
                    connection,
                    prefix: Arc::from(target.key_prefix.as_str()),
                    url: url.clone(),
                    pool: self.clone(),
                })
            }
            BackendKind::Memory { scope } => {
                let map = lock(&self.memory)
                    .entry((scope.clone(), target.bucket.clone()))
                    .or_default()
                    .clone();
                Ok(OpenBucket::Memory(map))
            }
        }
    }

    async fn redis_connection(
        &self,
        url: &str,
    ) -> Result<redis::aio::MultiplexedConnection, StorageError> {
        if let Some(c) = lock(&self.redis).get(url) {
            return Ok(c.clone());
        }
        let client = redis::Client::open(url).map_err(|e| {
            StorageError::other(
                &format!("the Redis URL `{}` is not valid", redacted(url)),
                e,
            )
        })?;
        let connection = timed("connecting to Redis", async {
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| {
                    StorageError::other(&format!("cannot connect to Redis at {}", redacted(url)), e)
                })
        })
        .await?;
        lock(&self.redis).insert(url.to_string(), connection.clone());
        Ok(connection)
    }

    /// Forgets a Redis connection that failed, so the next open reconnects.
    pub(crate) fn forget_redis(&self, url: &str) {
        lock(&self.redis).remove(url);
    }
}

async fn open_nats_bucket(
    client: &async_nats::Client,
    replicas: u8,
    name: &str,
) -> Result<kv::Store, StorageError> {
    let placement = trellis_protocol::jetstream::JetStreamPlacement {
        js_domain: None,
        kv_replicas: replicas,
    };
    let config = kv::Config {
        bucket: name.to_string(),
        description: "Trellis wasi:keyvalue bucket".to_string(),
        history: 1,
        ..Default::default()
    };
    placement
        .open_or_create_kv(&placement.context(client), config)
        .await
        .map_err(|e| {
            tracing::warn!(bucket = name, error = %format!("{e:#}"), "cannot open or create a JetStream KV bucket");
            StorageError::NoSuchStore
        })
}

fn nats_key_error(key: &str) -> StorageError {
    StorageError::Other(format!(
        "key `{key}` is not valid for NATS KV: use letters, digits and `-/_=.`, not starting or ending with `.`"
    ))
}

/// Parses a stored counter (decimal text; an empty value counts as 0).
pub(crate) fn parse_counter(key: &str, value: &[u8]) -> Result<i128, StorageError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| StorageError::Other(format!("the value of `{key}` is not a number")))?
        .trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<i128>().map_err(|_| {
        StorageError::Other(format!("the value of `{key}` is not an integer: `{text}`"))
    })
}

/// The range a counter must stay in (`u64` for 0.2.0-draft, `i64` for 0.2.0-draft2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CounterRange {
    /// Smallest allowed value.
    pub(crate) min: i128,
    /// Largest allowed value.
    pub(crate) max: i128,
}

impl CounterRange {
    /// Unsigned 64-bit counters.
    pub(crate) const U64: CounterRange = CounterRange {
        min: 0,
        max: u64::MAX as i128,
    };
    /// Signed 64-bit counters.
    pub(crate) const I64: CounterRange = CounterRange {
        min: i64::MIN as i128,
        max: i64::MAX as i128,
    };
}

/// `current + delta`, refusing a current value or a result outside `range`.
pub(crate) fn add(
    key: &str,
    current: i128,
    delta: i128,
    range: CounterRange,
) -> Result<i128, StorageError> {
    if current < range.min || current > range.max {
        return Err(StorageError::Other(format!(
            "the value of `{key}` ({current}) is out of range for this counter"
        )));
    }
    current
        .checked_add(delta)
        .filter(|next| (range.min..=range.max).contains(next))
        .ok_or_else(|| StorageError::Other(format!("adding {delta} to `{key}` would overflow")))
}

/// The state of a key when a compare-and-swap started.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// The value then, if any.
    pub(crate) value: Option<Vec<u8>>,
    /// The NATS KV revision then (0 when the key did not exist or on other backends).
    revision: u64,
}

fn valid_nats_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
}

impl OpenBucket {
    /// Turns a Redis failure into a guest error; a broken connection is forgotten so the next
    /// `open` reconnects.
    fn redis_failed(&self, what: &str, error: redis::RedisError) -> StorageError {
        if let OpenBucket::Redis { url, pool, .. } = self {
            if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal()
            {
                pool.forget_redis(url);
            }
        }
        StorageError::other(&format!("Redis {what} failed"), error)
    }

    /// The value of `key`.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            OpenBucket::Nats(nats) => {
                let store = &nats.store;
                if !valid_nats_key(key) {
                    return Err(nats_key_error(key));
                }
                store
                    .get(key)
                    .await
                    .map(|v| v.map(|b| b.to_vec()))
                    .map_err(|e| StorageError::other("NATS KV get failed", e))
            }
            OpenBucket::Redis {
                connection, prefix, ..
            } => {
                let mut c = connection.clone();
                redis::cmd("GET")
                    .arg(redis_key(prefix, key).as_ref())
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
                    .map_err(|e| self.redis_failed("GET", e))
            }
            OpenBucket::Memory(map) => Ok(lock(map).get(key).cloned()),
        }
    }

    /// Sets `key` to `value`.
    pub(crate) async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        match self {
            OpenBucket::Nats(nats) => {
                let store = &nats.store;
                if !valid_nats_key(key) {
                    return Err(nats_key_error(key));
                }
                store
                    .put(key, Bytes::from(value))
                    .await
                    .map(|_| ())
                    .map_err(|e| StorageError::other("NATS KV put failed", e))
            }
            OpenBucket::Redis {
                connection, prefix, ..
            } => {
                let mut c = connection.clone();
                redis::cmd("SET")
                    .arg(redis_key(prefix, key).as_ref())
                    .arg(value)
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| self.redis_failed("SET", e))
            }
            OpenBucket::Memory(map) => {
                lock(map).insert(key.to_string(), value);
                Ok(())
            }
        }
    }

    /// Removes `key` (a missing key is fine).
    pub(crate) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self {
            OpenBucket::Nats(nats) => {
                let store = &nats.store;
                if !valid_nats_key(key) {
                    return Err(nats_key_error(key));
                }
                store
                    .delete(key)
                    .await
                    .map_err(|e| StorageError::other("NATS KV delete failed", e))
            }
            OpenBucket::Redis {
                connection, prefix, ..
            } => {
                let mut c = connection.clone();
                redis::cmd("DEL")
                    .arg(redis_key(prefix, key).as_ref())
                    .query_async::<i64>(&mut c)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.redis_failed("DEL", e))
            }
            OpenBucket::Memory(map) => {
                lock(map).remove(key);
                Ok(())
            }
        }
    }

    /// Whether `key` is set.
    pub(crate) async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self {
            OpenBucket::Redis {
                connection, prefix, ..
            } => {
                let mut c = connection.clone();
                redis::cmd("EXISTS")
                    .arg(redis_key(prefix, key).as_ref())
                    .query_async::<i64>(&mut c)
                    .await
                    .map(|n| n > 0)
                    .map_err(|e| self.redis_failed("EXISTS", e))
            }
            _ => Ok(self.get(key).await?.is_some()),
        }
    }

    /// Every key, sorted.
    pub(crate) async fn keys(&self) -> Result<Vec<String>, StorageError> {
        let mut keys = match self {
            OpenBucket::Nats(nats) => {
                let store = &nats.store;
                let stream = store
                    .keys()
                    .await
                    .map_err(|e| StorageError::other("NATS KV key listing failed", e))?;
                let all: Vec<Result<String, _>> = stream.collect().await;
                let mut keys = Vec::with_capacity(all.len());
                for key in all {
                    keys.push(
                        key.map_err(|e| StorageError::other("NATS KV key listing failed", e))?,
                    );
                }
                keys
            }
            OpenBucket::Redis {
                connection, prefix, ..
            } => {
                let mut c = connection.clone();
                let pattern = format!("{}*", redis_glob_escape(prefix));
                let mut cursor: u64 = 0;
                let mut keys = Vec::new();
                loop {
                    let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut c)
                        .await
                        .map_err(|e| self.redis_failed("SCAN", e))?;
                    // Keys that are not UTF-8 cannot be WIT strings: a component cannot have
                    // written them, and they are left out.
                    keys.extend(page.into_iter().filter_map(|k| {
                        String::from_utf8(k)
                            .ok()?
                            .strip_prefix(prefix.as_ref())
                            .map(str::to_string)
                    }));
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                keys
            }
            OpenBucket::Memory(map) => lock(map).keys().cloned().collect(),
        };
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Adds `delta` to the counter at `key` atomically and returns the new value, which must
    /// stay within `range`.
    pub(crate) async fn increment(
        &self,
        key: &str,
        delta: i128,
        range: CounterRange,
    ) -> Result<i128, StorageError> {
        match self {
            OpenBucket::Nats(nats) => {
                if !valid_nats_key(key) {
                    return Err(nats_key_error(key));
                }
                nats.increments.increment(key, delta, range).await
            }
            OpenBucket::Redis {
                connection, prefix, ..
            } => {
                let delta = i64::try_from(delta).map_err(|_| {
                    StorageError::Other(format!(
                        "Redis cannot add {delta}: deltas stop at {}",
                        i64::MAX
                    ))
                })?;
                let mut c = connection.clone();
                let value: i64 = redis::cmd("INCRBY")
                    .arg(redis_key(prefix, key).as_ref())
                    .arg(delta)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| self.redis_failed("INCRBY", e))?;
                let value = i128::from(value);
                if value < range.min || value > range.max {
                    return Err(StorageError::Other(format!(
                        "the value of `{key}` ({value}) is out of range for this counter"
                    )));
                }
                Ok(value)
            }
            OpenBucket::Memory(map) => {
                let mut map = lock(map);
                let current = match map.get(key) {
                    Some(v) => parse_counter(key, v)?,
                    None => 0,
                };
                let next = add(key, current, delta, range)?;
                map.insert(key.to_string(), next.to_string().into_bytes());
                Ok(next)
            }
        }
    }

    /// The value of `key` now, remembered for [`OpenBucket::swap`].
    pub(crate) async fn snapshot(&self, key: &str) -> Result<Snapshot, StorageError> {
        match self {
            OpenBucket::Nats(nats) => {
                let store = &nats.store;
                if !valid_nats_key(key) {
                    return Err(nats_key_error(key));
                }
                let entry = store
                    .entry(key)
                    .await
                    .map_err(|e| StorageError::other("NATS KV read failed", e))?;
                Ok(match entry {
                    Some(e) if e.operation == kv::Operation::Put => Snapshot {
                        value: Some(e.value.to_vec()),
                        revision: e.revision,
                    },
                    Some(e) => Snapshot {
                        value: None,
                        revision: e.revision,
                    },
                    None => Snapshot {
                        value: None,
                        revision: 0,
                    },
                })
            }
            _ => Ok(Snapshot {
                value: self.get(key).await?,
                revision: 0,
            }),
        }
    }

    /// Sets `key` to `value` if it has not changed since `snapshot`; false when it had.
    pub(crate) async fn swap(
        &self,
        key: &str,
        snapshot: &Snapshot,
        value: Vec<u8>,
    ) -> Result<bool, StorageError> {
        match self {
            OpenBucket::Nats(nats) => {
                let store = &nats.store;
                let value = Bytes::from(value);
                if snapshot.revision == 0 {
                    return match store.create(key, value).await {
                        Ok(_) => Ok(true),
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                        Err(e) => Err(StorageError::other("NATS KV create failed", e)),
                    };
                }
                match store.update(key, value, snapshot.revision).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                    Err(e) => Err(StorageError::other("NATS KV update failed", e)),
                }
            }
            OpenBucket::Redis {
                connection, prefix, ..
            } => {
                // One script, so the comparison and the write are atomic in Redis.
                const SWAP: &str = "local current = redis.call('GET', KEYS[1]) \
                    if ARGV[1] == '0' then if current then return 0 end \
                    elseif (not current) or current ~= ARGV[2] then return 0 end \
                    redis.call('SET', KEYS[1], ARGV[3]) return 1";
                let mut c = connection.clone();
                let (present, expected) = match &snapshot.value {
                    Some(v) => ("1", v.clone()),
                    None => ("0", Vec::new()),
                };
                let swapped: i64 = redis::cmd("EVAL")
                    .arg(SWAP)
                    .arg(1)
                    .arg(redis_key(prefix, key).as_ref())
                    .arg(present)
                    .arg(expected)
                    .arg(value)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| self.redis_failed("EVAL (swap)", e))?;
                Ok(swapped == 1)
            }
            OpenBucket::Memory(map) => {
                let mut map = lock(map);
                if map.get(key) != snapshot.value.as_ref() {
                    return Ok(false);
                }
                map.insert(key.to_string(), value);
                Ok(true)
            }
        }
    }
}

/// Versioned reads and compare-and-set writes on the key's JetStream revision, for the
/// increment combiner.
impl CasStore for kv::Store {
    async fn read(&self, key: &str) -> Result<Versioned, StorageError> {
        let entry = self
            .entry(key)
            .await
            .map_err(|e| StorageError::other("NATS KV read failed", e))?;
        Ok(match entry {
            Some(e) => Versioned {
                version: e.revision,
                value: (e.operation == kv::Operation::Put).then_some(e.value),
            },
            None => Versioned {
                version: 0,
                value: None,
            },
        })
    }

    async fn write(
        &self,
        key: &str,
        version: u64,
        value: Bytes,
    ) -> Result<Option<u64>, StorageError> {
        if version == 0 {
            return match self.create(key, value).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(StorageError::other("NATS KV create failed", e)),
            };
        }
        match self.update(key, value, version).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(StorageError::other("NATS KV update failed", e)),
        }
    }
}

/// The Redis key for `key` behind `prefix`, copying only when there is a prefix.
fn redis_key<'a>(prefix: &str, key: &'a str) -> std::borrow::Cow<'a, str> {
    if prefix.is_empty() {
        std::borrow::Cow::Borrowed(key)
    } else {
        std::borrow::Cow::Owned(format!("{prefix}{key}"))
    }
}

/// Escapes Redis glob characters so a bucket name matches itself only.
fn redis_glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nats_is_the_default_backend_and_open_names_the_bucket() {
        let target = resolve_target(&settings(&[]), None, "kv", "counts").expect("target");
        assert_eq!(target.kind, BackendKind::Nats);
        assert_eq!(target.bucket, "counts");
        let target = resolve_target(&settings(&[]), None, "kv", "").expect("target");
        assert_eq!(target.bucket, "default");
    }

    #[test]
    fn configured_bucket_wins_over_the_identifier() {
        let target =
            resolve_target(&settings(&[("bucket", "shared")]), None, "kv", "mine").expect("target");
        assert_eq!(target.bucket, "shared");
    }

    #[test]
    fn redis_is_chosen_by_url_image_or_backend_key() {
        let url = settings(&[("URL", "redis://127.0.0.1:7000")]);
        let by_url = resolve_target(&url, None, "kv", "b").expect("target");
        assert_eq!(
            by_url.kind,
            BackendKind::Redis {
                url: "redis://127.0.0.1:7000".into()
            }
        );
        let by_image = resolve_target(&settings(&[]), Some("redis"), "kv", "b").expect("target");
        assert!(matches!(by_image.kind, BackendKind::Redis { .. }));
        let explicit = resolve_target(
            &settings(&[("backend", "memory")]),
            Some("redis"),
            "kv",
            "b",
        )
        .expect("target");
        assert_eq!(explicit.kind, BackendKind::Memory { scope: "kv".into() });
        assert!(resolve_target(&settings(&[("backend", "etcd")]), None, "kv", "b").is_err());
    }

    #[test]
    fn redis_keys_have_no_prefix_unless_one_is_set() {
        let url = [("URL", "redis://127.0.0.1:7000")];
        let plain = resolve_target(&settings(&url), None, "kv", "counts").expect("target");
        assert_eq!(plain.key_prefix, "", "keys as the component names them");
        assert_eq!(redis_key(&plain.key_prefix, "hits"), "hits");

        let per_bucket = [
            ("url", "redis://127.0.0.1:7000"),
            ("key_prefix", "{bucket}:"),
        ];
        let old_layout =
            resolve_target(&settings(&per_bucket), None, "kv", "counts").expect("target");
        assert!(
            matches!(old_layout.kind, BackendKind::Redis { .. }),
            "url in any case"
        );
        assert_eq!(old_layout.key_prefix, "counts:");
        assert_eq!(redis_key(&old_layout.key_prefix, "hits"), "counts:hits");

        let fixed = [("Url", "redis://127.0.0.1:7000"), ("key_prefix", "app1/")];
        let fixed = resolve_target(&settings(&fixed), None, "kv", "counts").expect("target");
        assert!(matches!(fixed.kind, BackendKind::Redis { .. }));
        assert_eq!(fixed.key_prefix, "app1/");
    }

    #[test]
    fn redis_passwords_stay_out_of_logs_and_errors() {
        assert_eq!(
            redacted("redis://user:s3cret@db.example:6379/2"),
            "redis://***@db.example:6379/2"
        );
        assert_eq!(
            redacted("rediss://:s3cret@db/0?x=a@b"),
            "rediss://***@db/0?x=a@b"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let kind = BackendKind::Redis {
            url: "redis://:s3cret@h".into(),
        };
        assert!(!format!("{kind:?}").contains("s3cret"));
    }

    #[test]
    fn key_prefix_is_refused_on_backends_other_than_redis() {
        let StorageError::Other(message) =
            resolve_target(&settings(&[("key_prefix", "x:")]), None, "kv", "b")
                .expect_err("nats has no key prefix")
        else {
            panic!("unexpected error kind");
        };
        assert!(message.contains("Redis backend only"), "{message}");
    }

    #[test]
    fn image_refs_imply_backends() {
        assert_eq!(
            kind_from_image_ref("ghcr.io/wasmcloud/keyvalue-redis:0.28.1"),
            Some("redis")
        );
        assert_eq!(
            kind_from_image_ref("ghcr.io/wasmcloud/keyvalue-nats:0.3.1"),
            Some("nats")
        );
        assert_eq!(kind_from_image_ref("trellis+builtin://keyvalue"), None);
    }

    #[test]
    fn lattice_buckets_are_refused_and_names_are_sanitised() {
        assert!(matches!(
            jetstream_bucket_name("CONFIGDATA_default"),
            Err(StorageError::AccessDenied(_))
        ));
        assert!(matches!(
            jetstream_bucket_name("latticedata_x"),
            Err(StorageError::AccessDenied(_))
        ));
        assert_eq!(
            jetstream_bucket_name("my.bucket/1").expect("name"),
            "my_bucket_1"
        );
    }

    #[test]
    fn counters_parse_and_refuse_garbage() {
        assert_eq!(parse_counter("k", b"41").expect("n"), 41);
        assert_eq!(parse_counter("k", b"-3").expect("n"), -3);
        assert_eq!(parse_counter("k", b"").expect("n"), 0);
        assert!(parse_counter("k", b"abc").is_err());
        assert!(add("k", u64::MAX as i128, 1, CounterRange::U64).is_err());
        assert!(add("k", 0, -1, CounterRange::U64).is_err());
        assert_eq!(add("k", 0, -1, CounterRange::I64).expect("n"), -1);
        assert!(add("k", i64::MAX as i128, 1, CounterRange::I64).is_err());
    }

    #[test]
    fn nats_keys_are_checked() {
        assert!(valid_nats_key("counter/a.b"));
        assert!(!valid_nats_key(".hidden"));
        assert!(!valid_nats_key("with space"));
        assert!(!valid_nats_key(""));
    }

    #[tokio::test]
    async fn memory_buckets_count_and_list() {
        let pool = BackendPool::default();
        let target = BucketTarget {
            kind: BackendKind::Memory { scope: "p".into() },
            bucket: "b".into(),
            key_prefix: String::new(),
        };
        // The memory backend never touches NATS; any client handle would do, but we have none
        // here, so exercise the bucket directly.
        let map = lock(&pool.memory)
            .entry(("p".into(), target.bucket.clone()))
            .or_default()
            .clone();
        let bucket = OpenBucket::Memory(map);
        assert_eq!(
            bucket
                .increment("c", 2, CounterRange::U64)
                .await
                .expect("inc"),
            2
        );
        assert_eq!(
            bucket
                .increment("c", 3, CounterRange::U64)
                .await
                .expect("inc"),
            5
        );
        assert_eq!(
            bucket
                .increment("c", -6, CounterRange::I64)
                .await
                .expect("inc"),
            -1
        );
        let before = bucket.snapshot("c").await.expect("snapshot");
        assert!(bucket
            .swap("c", &before, b"10".to_vec())
            .await
            .expect("swap"));
        assert!(
            !bucket
                .swap("c", &before, b"11".to_vec())
                .await
                .expect("swap"),
            "stale snapshot"
        );
        let fresh = bucket.snapshot("c").await.expect("snapshot");
        assert_eq!(fresh.value.as_deref(), Some(&b"10"[..]));
        bucket.set("a", b"x".to_vec()).await.expect("set");
        assert_eq!(
            bucket.keys().await.expect("keys"),
            vec!["a".to_string(), "c".to_string()]
        );
        assert!(bucket.exists("a").await.expect("exists"));
        bucket.delete("a").await.expect("delete");
        assert!(!bucket.exists("a").await.expect("exists"));
    }
}

//! `wasi:keyvalue` end to end: the `http_keyvalue_counter` component behind the HTTP server
//! provider, counting in NATS JetStream KV (surviving a host restart) and in Redis (with
//! wasmCloud's key layout, or behind a `key_prefix`), 50 concurrent increments of one key
//! on either, and a clear error when the component has no keyvalue link.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use trellis_integration::{
    control_ok as ok, free_port, guest, put_config, HostProcess, Lattice, NatsServer,
};

/// One HTTP/1.1 request with `connection: close`; returns the status and the body.
async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("the response has no end of headers")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Ok::<_, anyhow::Error>((
            status,
            if chunked {
                dechunk(body)?
            } else {
                body.to_string()
            },
        ))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .context("no response within 30 s")?
}

/// Decodes a chunked body.
fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("chunk size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("chunk end")?;
    }
}

async fn start_provider(
    lattice: &Lattice,
    host: &HostProcess,
    id: &str,
    image: &str,
    config: &[&str],
) {
    let mut events = lattice.events().await;
    let mut failures = lattice.events().await;
    ok(
        lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": id, "provider_ref": image, "config": config}),
    )
    .await;
    tokio::select! {
        started = events.wait_for("provider_started", |d| d["provider_id"] == id) => {
            started.unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
        }
        failed = failures.wait_for("provider_start_failed", |d| d["provider_id"] == id) => {
            let failed = failed.unwrap_or_else(|e| panic!("{e:#}"));
            panic!("provider {id} did not start: {}\nhost log:\n{}", failed.data["error"], host.logs());
        }
    }
}

/// Instances of the counter: enough for every request of [`concurrent_increments`] at once.
const COUNTER_INSTANCES: u32 = 50;

async fn scale_counter(lattice: &Lattice, host: &HostProcess, component_id: &str) {
    let mut events = lattice.events().await;
    let component_ref = format!("file://{}", guest("http_keyvalue_counter").display());
    ok(
        lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": component_ref, "component_id": component_id,
               "count": COUNTER_INSTANCES}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == component_id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
}

async fn put_link(
    lattice: &Lattice,
    source: &str,
    target: &str,
    package: (&str, &str),
    interfaces: &[&str],
    source_config: &[&str],
) {
    ok(
        lattice,
        lattice.subjects.link_put(),
        json!({"source_id": source, "target": target, "wit_namespace": package.0,
               "wit_package": package.1, "interfaces": interfaces,
               "source_config": source_config}),
    )
    .await;
}

/// Starts the HTTP server provider, the keyvalue provider and the counter, and links them.
async fn deploy_counter(
    lattice: &Lattice,
    host: &HostProcess,
    addr_config: &str,
    kv_image: &str,
    kv_config: &[&str],
) {
    start_provider(
        lattice,
        host,
        "http-server",
        "ghcr.io/wasmcloud/http-server:0.23.0",
        &[],
    )
    .await;
    start_provider(lattice, host, "kv", kv_image, kv_config).await;
    scale_counter(lattice, host, "counter").await;
    put_link(
        lattice,
        "http-server",
        "counter",
        ("wasi", "http"),
        &["incoming-handler"],
        &[addr_config],
    )
    .await;
    put_link(
        lattice,
        "counter",
        "kv",
        ("wasi", "keyvalue"),
        &["store", "atomics", "batch"],
        &[],
    )
    .await;
}

/// GETs `path` until the server answers (the listener opens asynchronously after the link).
async fn first_answer(addr: &str, path: &str, host: &HostProcess) -> (u16, String) {
    let started = Instant::now();
    loop {
        if let Ok(answer) = http_get(addr, path).await {
            if answer.0 != 404 && answer.0 != 503 {
                return answer;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{addr} did not serve {path} within 20 s\nhost log:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `path`, expecting 200, and returns the body.
async fn text(addr: &str, path: &str, host: &HostProcess) -> String {
    let (status, body) = http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}\nhost log:\n{}", host.logs()));
    assert_eq!(
        status,
        200,
        "GET {path}: {body}\nhost log:\n{}",
        host.logs()
    );
    body
}

async fn count(addr: &str, path: &str, host: &HostProcess) -> u64 {
    let (status, body) = http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}\nhost log:\n{}", host.logs()));
    assert_eq!(
        status,
        200,
        "GET {path}: {body}\nhost log:\n{}",
        host.logs()
    );
    body.trim()
        .parse()
        .unwrap_or_else(|_| panic!("GET {path} did not answer a number: {body:?}"))
}

/// Sends `n` increments of `path` at once; every one must answer 200 with a number. Returns
/// the answers, sorted.
async fn concurrent_increments(addr: &str, path: &str, n: usize, host: &HostProcess) -> Vec<u64> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let addr = addr.to_string();
        let path = path.to_string();
        all.push(tokio::spawn(async move { http_get(&addr, &path).await }));
    }
    let mut answers = Vec::with_capacity(n);
    for request in all {
        let (status, body) = request
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}\nhost log:\n{}", host.logs()));
        assert_eq!(
            status,
            200,
            "an increment failed: {body}\nhost log:\n{}",
            host.logs()
        );
        answers.push(
            body.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("GET {path} did not answer a number: {body:?}")),
        );
    }
    answers.sort_unstable();
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_nats_increments_of_one_key_all_count_once() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());
    put_config(&lattice, "counter-addr", &[("address", &addr)]).await;
    deploy_counter(
        &lattice,
        &host,
        "counter-addr",
        "ghcr.io/wasmcloud/keyvalue-nats:0.3.1",
        &[],
    )
    .await;
    let (status, body) = first_answer(&addr, "/warmup", &host).await;
    assert_eq!(status, 200, "{body}\nhost log:\n{}", host.logs());

    for round in 0..3u64 {
        let answers = concurrent_increments(&addr, "/hot", 50, &host).await;
        let expected: Vec<u64> = (round * 50 + 1..=round * 50 + 50).collect();
        assert_eq!(
            answers, expected,
            "each increment has its own result, none lost or counted twice"
        );
    }
    assert_eq!(count(&addr, "/get/hot", &host).await, 150);
    let js = async_nats::jetstream::new(nats.client().await);
    let stored = js
        .get_key_value("default")
        .await
        .expect("the `default` KV bucket exists")
        .get("hot")
        .await
        .expect("read")
        .expect("the key is stored");
    assert_eq!(&stored[..], b"150");
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_counter_survives_a_host_restart() {
    let nats = NatsServer::start().await;
    let mut host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());
    put_config(&lattice, "counter-addr", &[("address", &addr)]).await;

    deploy_counter(
        &lattice,
        &host,
        "counter-addr",
        "ghcr.io/wasmcloud/keyvalue-nats:0.3.1",
        &[],
    )
    .await;
    let (status, body) = first_answer(&addr, "/visits", &host).await;
    assert_eq!(
        (status, body.trim()),
        (200, "1"),
        "host log:\n{}",
        host.logs()
    );
    assert_eq!(count(&addr, "/visits", &host).await, 2);
    assert_eq!(count(&addr, "/visits", &host).await, 3);
    assert_eq!(
        count(&addr, "/other", &host).await,
        1,
        "keys are counted separately"
    );
    assert_eq!(
        count(&addr, "/get/visits", &host).await,
        3,
        "get does not count"
    );
    let batch = "batch-a=1,batch-b=2,batch-missing=-;exists-after-delete=false";
    assert_eq!(text(&addr, "/batch", &host).await, batch);
    assert_eq!(
        text(&addr, "/keys", &host).await,
        "other\nvisits",
        "list-keys after batch deletes"
    );

    // The data lives in a JetStream KV bucket named after the bucket the component opened.
    let js = async_nats::jetstream::new(nats.client().await);
    let bucket = js
        .get_key_value("default")
        .await
        .expect("the `default` KV bucket exists");
    let stored = bucket
        .get("visits")
        .await
        .expect("read")
        .expect("the key is stored");
    assert_eq!(&stored[..], b"3");

    // A host restart loses everything in memory; the counts live in NATS.
    host.restart(&nats.url(), "default").await;
    deploy_counter(
        &lattice,
        &host,
        "counter-addr",
        "ghcr.io/wasmcloud/keyvalue-nats:0.3.1",
        &[],
    )
    .await;
    let (status, body) = first_answer(&addr, "/visits", &host).await;
    assert_eq!(
        (status, body.trim()),
        (200, "4"),
        "host log:\n{}",
        host.logs()
    );

    // Concurrent increments are not lost.
    let mut all = Vec::new();
    for _ in 0..20 {
        let addr = addr.clone();
        all.push(tokio::spawn(async move { http_get(&addr, "/race").await }));
    }
    for request in all {
        let (status, body) = request.await.expect("task").expect("request");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(count(&addr, "/get/race", &host).await, 20);

    // wasi:keyvalue@0.2.0-draft2 on the same data: compare-and-swap and signed increments.
    assert_eq!(count(&addr, "/cas/visits", &host).await, 5);
    assert_eq!(count(&addr, "/dec/visits", &host).await, 4);
    let mut all = Vec::new();
    for _ in 0..10 {
        let addr = addr.clone();
        all.push(tokio::spawn(async move {
            http_get(&addr, "/cas/swapped").await
        }));
    }
    for request in all {
        let (status, body) = request.await.expect("task").expect("request");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        count(&addr, "/get/swapped", &host).await,
        10,
        "a swap was lost"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_without_a_keyvalue_link_gets_a_clear_error() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());
    put_config(&lattice, "counter-addr", &[("address", &addr)]).await;
    start_provider(
        &lattice,
        &host,
        "http-server",
        "ghcr.io/wasmcloud/http-server:0.23.0",
        &[],
    )
    .await;
    scale_counter(&lattice, &host, "unlinked").await;
    put_link(
        &lattice,
        "http-server",
        "unlinked",
        ("wasi", "http"),
        &["incoming-handler"],
        &["counter-addr"],
    )
    .await;

    let started = Instant::now();
    let (status, body) = first_answer(&addr, "/visits", &host).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("no wasi:keyvalue link") && body.contains("unlinked"),
        "the error does not name the missing link: {body}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "the call hung");
}

/// A `redis-server` child on a free port with persistence off; killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one; a machine without redis-server fails the test, saying how to install it.
    async fn start() -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: `apt-get install -y redis-server` (scripts/install-deps.sh does)");
        let server = Self { child, port };
        let started = Instant::now();
        while server.command(&["PING"]).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command in RESP and returns the raw reply.
    async fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_counter_uses_wasmclouds_key_layout() {
    let redis = RedisServer::start().await;
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());
    put_config(&lattice, "counter-addr", &[("address", &addr)]).await;
    put_config(&lattice, "redis-url", &[("URL", &redis.url())]).await;

    // A counter as a wasmCloud application left it: the key exactly as the component names
    // it, no bucket prefix.
    assert_eq!(
        redis.command(&["SET", "counter", "41"]).await.expect("SET"),
        "+OK\r\n"
    );
    deploy_counter(
        &lattice,
        &host,
        "counter-addr",
        "ghcr.io/wasmcloud/keyvalue-redis:0.28.1",
        &["redis-url"],
    )
    .await;
    let (status, body) = first_answer(&addr, "/", &host).await;
    assert_eq!(
        (status, body.trim()),
        (200, "42"),
        "host log:\n{}",
        host.logs()
    );
    let stored = redis.command(&["GET", "counter"]).await.expect("GET");
    assert_eq!(stored, "$2\r\n42\r\n");

    assert_eq!(count(&addr, "/hits", &host).await, 1);
    assert_eq!(count(&addr, "/hits", &host).await, 2);
    let stored = redis.command(&["GET", "hits"]).await.expect("GET");
    assert_eq!(stored, "$1\r\n2\r\n", "stored under the key itself");
    let prefixed = redis
        .command(&["EXISTS", "default:hits"])
        .await
        .expect("EXISTS");
    assert_eq!(prefixed, ":0\r\n", "no bucket prefix");
    let js = async_nats::jetstream::new(nats.client().await);
    assert!(
        js.get_key_value("default").await.is_err(),
        "nothing went to NATS KV"
    );

    let batch = "batch-a=1,batch-b=2,batch-missing=-;exists-after-delete=false";
    assert_eq!(text(&addr, "/batch", &host).await, batch);
    assert_eq!(text(&addr, "/keys", &host).await, "counter\nhits");

    // A value set in Redis directly is what the component sees next.
    redis.command(&["SET", "hits", "41"]).await.expect("SET");
    assert_eq!(count(&addr, "/hits", &host).await, 42);
    assert_eq!(
        count(&addr, "/cas/hits", &host).await,
        43,
        "draft2 compare-and-swap"
    );
    assert_eq!(
        count(&addr, "/dec/hits", &host).await,
        42,
        "draft2 signed increment"
    );

    // INCRBY: 50 concurrent increments of one key each count once.
    let answers = concurrent_increments(&addr, "/hot", 50, &host).await;
    assert_eq!(answers, (1..=50).collect::<Vec<u64>>());
    let stored = redis.command(&["GET", "hot"]).await.expect("GET");
    assert_eq!(stored, "$2\r\n50\r\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_key_prefix_reads_data_in_the_old_trellis_layout() {
    let redis = RedisServer::start().await;
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());
    put_config(&lattice, "counter-addr", &[("address", &addr)]).await;
    put_config(
        &lattice,
        "redis-prefixed",
        &[("URL", &redis.url()), ("key_prefix", "{bucket}:")],
    )
    .await;

    // Written by an earlier Trellis, which stored every key as `{bucket}:{key}`; and a key of
    // another application in the same database.
    redis
        .command(&["SET", "default:visits", "7"])
        .await
        .expect("SET");
    redis
        .command(&["SET", "visits", "1000"])
        .await
        .expect("SET");
    deploy_counter(
        &lattice,
        &host,
        "counter-addr",
        "ghcr.io/wasmcloud/keyvalue-redis:0.28.1",
        &["redis-prefixed"],
    )
    .await;
    let (status, body) = first_answer(&addr, "/visits", &host).await;
    assert_eq!(
        (status, body.trim()),
        (200, "8"),
        "host log:\n{}",
        host.logs()
    );
    let stored = redis
        .command(&["GET", "default:visits"])
        .await
        .expect("GET");
    assert_eq!(stored, "$1\r\n8\r\n");
    let other = redis.command(&["GET", "visits"]).await.expect("GET");
    assert_eq!(
        other, "$4\r\n1000\r\n",
        "keys outside the prefix are untouched"
    );
    assert_eq!(
        text(&addr, "/keys", &host).await,
        "visits",
        "list-keys sees only the bucket's keys, without the prefix"
    );
}

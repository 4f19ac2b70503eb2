//! The HTTP server provider end to end: real nats-server, real `trellis host` processes, the
//! real `http_hello` component, and requests over real sockets.
//!
//! Covers the co-located fast path (provider and component in one host), the remote path
//! (component on another host, requests over NATS), and the provider as a separate,
//! supervised process.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use trellis_integration::{eventually, free_port, guest, HostProcess, Lattice, NatsServer};

/// A minimal HTTP/1.1 client over a raw socket (keep-alive, Content-Length and chunked
/// responses), so the tests exercise the server exactly as curl would.
mod raw_http {
    use std::time::Duration;

    use anyhow::{bail, Context as _};
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::TcpStream;

    /// A response: status, lower-case headers and body.
    #[derive(Debug)]
    pub struct Reply {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Reply {
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// One keep-alive connection.
    pub struct Connection {
        stream: BufReader<TcpStream>,
        host: String,
    }

    impl Connection {
        pub async fn open(addr: &str) -> anyhow::Result<Self> {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            Ok(Self {
                stream: BufReader::new(stream),
                host: addr.to_string(),
            })
        }

        pub async fn send(
            &mut self,
            method: &str,
            path: &str,
            body: &[u8],
        ) -> anyhow::Result<Reply> {
            tokio::time::timeout(Duration::from_secs(30), self.send_inner(method, path, body))
                .await
                .context("no response within 30 s")?
        }

        async fn send_inner(
            &mut self,
            method: &str,
            path: &str,
            body: &[u8],
        ) -> anyhow::Result<Reply> {
            let head = format!(
                "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\r\n",
                self.host,
                body.len()
            );
            let stream = self.stream.get_mut();
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            stream.flush().await?;

            let mut line = String::new();
            self.stream.read_line(&mut line).await?;
            if line.is_empty() {
                bail!("the server closed the connection");
            }
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .context("status line")?
                .parse()?;
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                self.stream.read_line(&mut line).await?;
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').context("header line")?;
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            let mut body = Vec::new();
            if let Some(len) = header("content-length") {
                body.resize(len.parse()?, 0);
                self.stream.read_exact(&mut body).await?;
            } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                loop {
                    let mut size = String::new();
                    self.stream.read_line(&mut size).await?;
                    let size =
                        usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)?;
                    if size == 0 {
                        let mut end = String::new();
                        self.stream.read_line(&mut end).await?;
                        break;
                    }
                    let start = body.len();
                    body.resize(start + size, 0);
                    self.stream.read_exact(&mut body[start..]).await?;
                    let mut crlf = [0u8; 2];
                    self.stream.read_exact(&mut crlf).await?;
                }
            } else {
                self.stream.read_to_end(&mut body).await?;
            }
            Ok(Reply {
                status,
                headers,
                body,
            })
        }
    }

    /// One request on a fresh connection.
    pub async fn request(
        addr: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<Reply> {
        Connection::open(addr).await?.send(method, path, body).await
    }
}

use raw_http::request;

fn file_ref(name: &str) -> String {
    format!("file://{}", guest(name).display())
}

async fn ok<T: serde::de::DeserializeOwned>(
    lattice: &Lattice,
    subject: String,
    body: serde_json::Value,
) {
    let reply = lattice
        .request::<T>(subject.clone(), &body)
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e:#}"));
    assert!(reply.success, "{subject} refused: {}", reply.message);
}

async fn put_config(lattice: &Lattice, name: &str, values: &[(&str, &str)]) {
    let values: HashMap<String, String> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ok::<()>(lattice, lattice.subjects.config_put(name), json!(values)).await;
}

async fn start_provider(
    lattice: &Lattice,
    host: &HostProcess,
    provider_id: &str,
    provider_ref: &str,
    config: &[&str],
) {
    let mut events = lattice.events().await;
    let mut failures = lattice.events().await;
    ok::<()>(
        lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": provider_id, "provider_ref": provider_ref, "config": config}),
    )
    .await;
    tokio::select! {
        started = events.wait_for("provider_started", |d| d["provider_id"] == provider_id) => {
            started.unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
        }
        failed = failures.wait_for("provider_start_failed", |d| d["provider_id"] == provider_id) => {
            let failed = failed.unwrap_or_else(|e| panic!("{e:#}"));
            panic!("provider start failed: {}\nhost log:\n{}", failed.data["error"], host.logs());
        }
    }
}

async fn scale(
    lattice: &Lattice,
    host: &HostProcess,
    component_id: &str,
    count: u32,
    limits: serde_json::Value,
) {
    let mut events = lattice.events().await;
    ok::<()>(
        lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": file_ref("http_hello"), "component_id": component_id,
               "count": count, "component_limits": limits}),
    )
    .await;
    let scaled = events
        .wait_for("component_scaled", |d| {
            d["component_id"] == component_id && d["max_instances"] == count
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    assert_eq!(scaled.data["host_id"], host.id);
}

async fn link(lattice: &Lattice, provider_id: &str, component_id: &str, source_config: &[&str]) {
    ok::<()>(
        lattice,
        lattice.subjects.link_put(),
        json!({"source_id": provider_id, "target": component_id, "wit_namespace": "wasi",
               "wit_package": "http", "interfaces": ["incoming-handler"],
               "source_config": source_config}),
    )
    .await;
}

/// Waits until `addr` serves the hello route.
async fn wait_for_hello(addr: &str, host: &HostProcess) {
    let started = Instant::now();
    loop {
        if let Ok(reply) = request(addr, "GET", "/", b"").await {
            if reply.status == 200 {
                assert_eq!(reply.text(), "Hello from Trellis!\n");
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{addr} did not serve the hello route within 20 s\nhost log:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 5 MB body with a pattern, so a reordered or truncated echo shows.
fn big_body() -> Vec<u8> {
    (0..5_000_000u32).map(|i| (i % 251) as u8).collect()
}

/// The behaviours every path must have: hello, keep-alive, a 5 MB echo, trap -> 500, a
/// deadline -> 504/500, unbounded memory growth -> 500 naming the limit, each followed by a
/// healthy request.
async fn check_routes(addr: &str) {
    let mut conn = raw_http::Connection::open(addr).await.unwrap();
    for _ in 0..3 {
        let reply = conn.send("GET", "/", b"").await.unwrap();
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "Hello from Trellis!\n")
        );
    }

    let body = big_body();
    let reply = request(addr, "POST", "/echo", &body).await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body[..reply.body.len().min(500)])
    );
    assert_eq!(reply.body.len(), body.len(), "the echo was truncated");
    assert!(reply.body == body, "the echo came back different");

    let reply = request(addr, "GET", "/trap", b"").await.unwrap();
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(
        reply.text().contains("trap"),
        "no message: {}",
        reply.text()
    );
    let reply = request(addr, "GET", "/", b"").await.unwrap();
    assert_eq!(reply.status, 200);

    let started = Instant::now();
    let reply = request(addr, "GET", "/loop", b"").await.unwrap();
    assert!(
        reply.status == 504 || reply.status == 500,
        "{} {}",
        reply.status,
        reply.text()
    );
    assert!(
        !reply.text().trim().is_empty(),
        "no message with {}",
        reply.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the deadline was not enforced"
    );
    let reply = request(addr, "GET", "/", b"").await.unwrap();
    assert_eq!(reply.status, 200);

    // The component is scaled with max_memory_mb = 32.
    let reply = request(addr, "GET", "/grow", b"").await.unwrap();
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(
        reply.text().contains("memory") && reply.text().contains("32"),
        "the message does not name the memory limit: {}",
        reply.text()
    );
    let reply = request(addr, "GET", "/", b"").await.unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn colocated_provider_serves_the_component() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());

    put_config(&lattice, "http-addr", &[("address", &addr)]).await;
    start_provider(
        &lattice,
        &host,
        "http-server",
        "ghcr.io/wasmcloud/http-server:0.23.0",
        &[],
    )
    .await;
    scale(
        &lattice,
        &host,
        "hello",
        4,
        json!({"max_execution_time_ms": "500", "max_memory_mb": "32"}),
    )
    .await;
    link(&lattice, "http-server", "hello", &["http-addr"]).await;

    wait_for_hello(&addr, &host).await;
    check_routes(&addr).await;

    // Scaled to zero: 503 at once, with a message.
    scale(&lattice, &host, "hello", 0, json!(null)).await;
    let started = Instant::now();
    let reply = request(&addr, "GET", "/", b"").await.unwrap();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.text().contains("hello"), "{}", reply.text());
    assert!(
        reply
            .headers
            .iter()
            .any(|(name, value)| name == "content-type" && value.starts_with("text/plain")),
        "{:?}",
        reply.headers
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // Deleting the link closes the listener; a new link on another address opens one.
    ok::<()>(
        &lattice,
        lattice.subjects.link_del(),
        json!({"source_id": "http-server", "wit_namespace": "wasi", "wit_package": "http"}),
    )
    .await;
    eventually("the listener to close", || async {
        request(&addr, "GET", "/", b"").await.is_err().then_some(())
    })
    .await;
    scale(&lattice, &host, "hello", 1, json!(null)).await;
    let addr2 = format!("127.0.0.1:{}", free_port());
    put_config(&lattice, "http-addr2", &[("ADDRESS", &addr2)]).await;
    link(&lattice, "http-server", "hello", &["http-addr2"]).await;
    wait_for_hello(&addr2, &host).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_reach_a_component_on_another_host() {
    let nats = NatsServer::start().await;
    let front = HostProcess::start(&nats.url(), "default", &[]).await;
    let back = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());

    put_config(&lattice, "http-addr", &[("address", &addr)]).await;
    start_provider(
        &lattice,
        &front,
        "http-server",
        "wasmcloud+builtin://http-server",
        &[],
    )
    .await;
    scale(
        &lattice,
        &back,
        "hello",
        4,
        json!({"max_execution_time_ms": "500", "max_memory_mb": "32"}),
    )
    .await;
    link(&lattice, "http-server", "hello", &["http-addr"]).await;

    wait_for_hello(&addr, &front).await;
    check_routes(&addr).await;

    scale(&lattice, &back, "hello", 0, json!(null)).await;
    // The serving host drops its subscription within a moment; until then it answers 503
    // itself, so every answer is 503 with a message.
    eventually("a 503 for a component running nowhere", || async {
        let reply = request(&addr, "GET", "/", b"").await.ok()?;
        assert_eq!(reply.status, 503, "{}", reply.text());
        reply.text().contains("not running").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_runs_as_a_supervised_process() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());

    put_config(&lattice, "http-addr", &[("address", &addr)]).await;
    put_config(
        &lattice,
        "http-process",
        &[("process", "true"), ("timeout_ms", "5000")],
    )
    .await;
    start_provider(
        &lattice,
        &host,
        "http-proc",
        "ghcr.io/wasmcloud/http-server:0.23.0",
        &["http-process"],
    )
    .await;
    scale(
        &lattice,
        &host,
        "hello",
        2,
        json!({"max_execution_time_ms": "500", "max_memory_mb": "32"}),
    )
    .await;
    link(&lattice, "http-proc", "hello", &["http-addr"]).await;
    wait_for_hello(&addr, &host).await;
    check_routes(&addr).await;

    // The process goes away: the host sees it, restarts it, and it serves again.
    let mut events = lattice.events().await;
    let _ = lattice
        .client
        .request(
            "trellis.provider.default.http-proc.shutdown".to_string(),
            Vec::new().into(),
        )
        .await;
    events
        .wait_for("health_check_failed", |d| d["provider_id"] == "http-proc")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    events
        .wait_for("health_check_passed", |d| d["provider_id"] == "http-proc")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    wait_for_hello(&addr, &host).await;

    // Stopping the provider closes its listener.
    ok::<()>(
        &lattice,
        lattice.subjects.provider_stop(&host.id),
        json!({"provider_id": "http-proc"}),
    )
    .await;
    eventually("the provider process to stop serving", || async {
        request(&addr, "GET", "/", b"").await.is_err().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_provider_refs_fail_with_the_supported_list() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;
    ok::<()>(
        &lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": "nope", "provider_ref": "ghcr.io/wasmcloud/blobstore-fs:0.1"}),
    )
    .await;
    let failed = events
        .wait_for("provider_start_failed", |d| d["provider_id"] == "nope")
        .await
        .unwrap();
    let error = failed.data["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not supported") && error.contains("http-server"),
        "{error}"
    );
}

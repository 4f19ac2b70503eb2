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
        /// The socket, to watch it close.
        pub fn stream_mut(&mut self) -> &mut TcpStream {
            self.stream.get_mut()
        }

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

    /// A response read leniently: how far it got and whether it was complete (a
    /// `Content-Length` body in full, or a chunked body up to its final `0` chunk).
    #[derive(Debug)]
    pub struct Exchange {
        pub status: u16,
        pub body: Vec<u8>,
        pub complete: bool,
    }

    impl Exchange {
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// Reads one response; a body that stops early (EOF, reset) makes an incomplete
    /// [`Exchange`], not an error. Errors only when no status line arrives.
    pub async fn read_exchange<R>(stream: &mut BufReader<R>) -> anyhow::Result<Exchange>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("no status line: {line:?}"))?
            .parse()?;
        let mut content_length = None;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').context("header line")?;
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                content_length = Some(value.parse::<usize>()?);
            } else if name == "transfer-encoding" && value.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        let complete = if let Some(len) = content_length {
            let mut limited = stream.take(len as u64);
            let _ = limited.read_to_end(&mut body).await;
            body.len() == len
        } else if chunked {
            read_chunks(stream, &mut body).await.unwrap_or(false)
        } else {
            let _ = stream.read_to_end(&mut body).await;
            true
        };
        Ok(Exchange {
            status,
            body,
            complete,
        })
    }

    /// Reads chunks into `body`: true after the final `0` chunk, false at an early EOF.
    async fn read_chunks<R>(stream: &mut BufReader<R>, body: &mut Vec<u8>) -> anyhow::Result<bool>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        loop {
            let mut size = String::new();
            if stream.read_line(&mut size).await? == 0 {
                return Ok(false);
            }
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)?;
            if size == 0 {
                let mut end = String::new();
                stream.read_line(&mut end).await?;
                return Ok(end == "\r\n");
            }
            let start = body.len();
            body.resize(start + size, 0);
            stream.read_exact(&mut body[start..]).await?;
            let mut crlf = [0u8; 2];
            stream.read_exact(&mut crlf).await?;
        }
    }

    /// Sends `body` chunked (64 KiB chunks) on a fresh connection while reading the response,
    /// as a client streaming an upload would. Write errors are ignored: the server may answer
    /// and close before the whole body is sent.
    pub async fn chunked_exchange(
        addr: &str,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Exchange> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (read, mut write) = stream.into_split();
        let head =
            format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\n\r\n");
        let writer = tokio::spawn(async move {
            write.write_all(head.as_bytes()).await?;
            for chunk in body.chunks(64 * 1024) {
                write
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                write.write_all(chunk).await?;
                write.write_all(b"\r\n").await?;
            }
            write.write_all(b"0\r\n\r\n").await?;
            // Keep the write half open until the response is read.
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        });
        let mut reader = BufReader::new(read);
        let exchange = tokio::time::timeout(Duration::from_secs(60), read_exchange(&mut reader))
            .await
            .context("no response within 60 s");
        writer.abort();
        exchange?
    }

    /// `GET path` on a fresh connection, read leniently.
    pub async fn get_exchange(addr: &str, path: &str) -> anyhow::Result<Exchange> {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut reader = BufReader::new(stream);
        tokio::time::timeout(Duration::from_secs(60), read_exchange(&mut reader))
            .await
            .context("no response within 60 s")?
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

// Scaling the serving host's component to 0 must not lose a request that NATS delivered just
// before the unsubscription: it once did (about one run in four), leaving the front host waiting
// out its 60 s forward timeout.
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
    // The serving host drains its subscription: a request it still takes gets a 503 saying the
    // component is not running there (and is sent once more), later ones get NATS' no
    // responders; every answer is a 503 with a message, and none is lost.
    let last = std::sync::Mutex::new(String::new());
    let answered = tokio::time::timeout(trellis_integration::WAIT, async {
        loop {
            if let Ok(reply) = request(&addr, "GET", "/", b"").await {
                assert_eq!(reply.status, 503, "{}", reply.text());
                if reply.text().contains("not running") {
                    return;
                }
                *last.lock().unwrap_or_else(|p| p.into_inner()) = reply.text();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "no 503 saying the component is not running; the last answer was: {}\nfront log:\n{}\nback log:\n{}",
        last.lock().unwrap_or_else(|p| p.into_inner()),
        front.logs(),
        back.logs()
    );
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
        json!({"provider_id": "nope", "provider_ref": "ghcr.io/wasmcloud/blobstore-s3:0.1"}),
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

/// An 11 MB body with a pattern (past the default 10 MiB `max_content_len`).
fn oversized_body() -> Vec<u8> {
    (0..11_000_000u32).map(|i| (i % 251) as u8).collect()
}

/// No response passes for complete when it is not: a chunked body over `max_content_len` gets
/// 413 (or, once the component has started answering, a cut-off response), never the
/// component's success; a component trapping mid-body cuts the response off (no final chunk).
async fn check_cut_offs(addr: &str) {
    // `/count` answers only after reading the whole body: nothing has started, so 413.
    let reply = raw_http::chunked_exchange(addr, "/count", oversized_body())
        .await
        .unwrap();
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(
        reply.text().contains("max_content_len") && !reply.text().contains("read "),
        "{}",
        reply.text()
    );

    // `/echo` answers at once and streams: it is either refused or visibly cut off.
    let body = oversized_body();
    let reply = raw_http::chunked_exchange(addr, "/echo", body.clone())
        .await
        .unwrap();
    assert!(
        reply.status == 413 || (reply.status == 200 && !reply.complete),
        "an oversized chunked echo must not come back complete: {} complete={} ({} bytes)",
        reply.status,
        reply.complete,
        reply.body.len()
    );
    assert!(reply.body.len() < body.len());

    // A trap after the first parts: the parts arrive, the final chunk never does.
    let reply = raw_http::get_exchange(addr, "/stream-trap").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        !reply.complete,
        "a response cut off by a trap looked complete: {:?}",
        reply.text()
    );
    assert!(reply.text().starts_with("first part"), "{:?}", reply.text());

    // The server and the component are fine afterwards.
    let reply = request(addr, "GET", "/", b"").await.unwrap();
    assert_eq!(reply.status, 200);
    let reply = request(addr, "POST", "/count", b"12345").await.unwrap();
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "read 5 bytes\n")
    );
}

/// Limits for the cut-off checks: time to move 11 MB through a debug-built host.
fn roomy_limits() -> serde_json::Value {
    json!({"max_execution_time_ms": "20000", "max_memory_mb": "64"})
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_off_responses_are_never_complete_in_process() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());

    put_config(&lattice, "http-addr", &[("address", &addr)]).await;
    put_config(&lattice, "http-limits", &[("max_content_len", "10M")]).await;
    start_provider(
        &lattice,
        &host,
        "http-server",
        "wasmcloud+builtin://http-server",
        &["http-limits"],
    )
    .await;
    scale(&lattice, &host, "hello", 4, roomy_limits()).await;
    link(&lattice, "http-server", "hello", &["http-addr"]).await;
    wait_for_hello(&addr, &host).await;
    check_cut_offs(&addr).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_off_responses_are_never_complete_over_the_lattice() {
    let nats = NatsServer::start().await;
    let front = HostProcess::start(&nats.url(), "default", &[]).await;
    let back = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());

    put_config(&lattice, "http-addr", &[("address", &addr)]).await;
    put_config(&lattice, "http-limits", &[("max_content_len", "10M")]).await;
    start_provider(
        &lattice,
        &front,
        "http-server",
        "wasmcloud+builtin://http-server",
        &["http-limits"],
    )
    .await;
    scale(&lattice, &back, "hello", 4, roomy_limits()).await;
    link(&lattice, "http-server", "hello", &["http-addr"]).await;
    wait_for_hello(&addr, &front).await;
    check_cut_offs(&addr).await;

    // The same through the provider running as its own process.
    let addr2 = format!("127.0.0.1:{}", free_port());
    put_config(&lattice, "http-addr2", &[("address", &addr2)]).await;
    put_config(&lattice, "http-process", &[("process", "true")]).await;
    start_provider(
        &lattice,
        &front,
        "http-proc",
        "wasmcloud+builtin://http-server",
        &["http-process"],
    )
    .await;
    link(&lattice, "http-proc", "hello", &["http-addr2"]).await;
    wait_for_hello(&addr2, &front).await;
    let reply = raw_http::get_exchange(&addr2, "/stream-trap")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(!reply.complete, "{:?}", reply.text());
}

/// Waits until the server closes `stream` (EOF or reset), up to a generous bound.
async fn wait_closed(stream: &mut tokio::net::TcpStream, what: &str) {
    use tokio::io::AsyncReadExt as _;
    let mut sink = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server did not close {what} within 30 s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listeners_bound_slow_idle_and_excess_connections() {
    use tokio::io::AsyncWriteExt as _;

    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());
    let idle_addr = format!("127.0.0.1:{}", free_port());

    put_config(&lattice, "http-addr", &[("address", &addr)]).await;
    put_config(&lattice, "http-idle-addr", &[("address", &idle_addr)]).await;
    put_config(
        &lattice,
        "http-tight",
        &[("header_read_timeout_ms", "300"), ("max_connections", "2")],
    )
    .await;
    put_config(&lattice, "http-idle", &[("idle_timeout_ms", "300")]).await;
    start_provider(
        &lattice,
        &host,
        "http-server",
        "wasmcloud+builtin://http-server",
        &["http-tight"],
    )
    .await;
    start_provider(
        &lattice,
        &host,
        "http-idle",
        "wasmcloud+builtin://http-server",
        &["http-idle"],
    )
    .await;
    scale(&lattice, &host, "hello", 4, json!(null)).await;
    link(&lattice, "http-server", "hello", &["http-addr"]).await;
    link(&lattice, "http-idle", "hello", &["http-idle-addr"]).await;
    wait_for_hello(&addr, &host).await;
    wait_for_hello(&idle_addr, &host).await;

    // A client that sends part of a head and stalls is disconnected.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: slow\r\n")
        .await
        .unwrap();
    wait_closed(&mut slow, "a connection with a stalled request head").await;

    // A keep-alive connection left idle is closed (the other listener's idle timeout).
    let mut idle = raw_http::Connection::open(&idle_addr).await.unwrap();
    assert_eq!(idle.send("GET", "/", b"").await.unwrap().status, 200);
    wait_closed(idle.stream_mut(), "an idle keep-alive connection").await;

    // Two connections fill the cap (connections from earlier requests may still be closing:
    // those get 503 until they are gone).
    let mut held = Vec::new();
    let started = Instant::now();
    while held.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "two connections were not served under the cap within 20 s"
        );
        let mut conn = raw_http::Connection::open(&addr).await.unwrap();
        let reply = conn.send("GET", "/", b"").await.unwrap();
        if reply.status == 200 {
            held.push(conn);
        } else {
            assert_eq!(reply.status, 503, "{}", reply.text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A third is refused at once with a message naming the limit...
    let reply = request(&addr, "GET", "/", b"").await.unwrap();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.text().contains("max_connections"), "{}", reply.text());
    // ...while the open ones keep being served.
    for conn in &mut held {
        let reply = conn.send("GET", "/", b"").await.unwrap();
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "Hello from Trellis!\n")
        );
    }
    // Closing one makes room again.
    held.pop();
    eventually("a new connection served after one closed", || async {
        let reply = request(&addr, "GET", "/", b"").await.ok()?;
        (reply.status == 200).then_some(())
    })
    .await;
}

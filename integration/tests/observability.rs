//! Observability end to end: real `trellis host` processes exporting over OTLP/HTTP to a real
//! receiver (`oteltap` from PyPI, printing what it receives as JSON lines), real guests, real
//! sockets.
//!
//! - An HTTP request entering at host A (http-server) for `caller` on host B, which calls
//!   `callee` on host C, makes one trace with spans from all three hosts, each with the right
//!   parent; the callee's stdout line is exported as a log record with that trace id; the
//!   invocation metrics arrive with the component ids; `--metrics-listen` serves them as
//!   Prometheus text.
//! - With the collector down, requests still work, nothing panics, and the host warns about
//!   the export at most once a minute per signal.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use trellis_integration::{free_port, guest, HostProcess, Lattice, NatsServer, OtlpReceiver};

/// Telemetry settings of the hosts under test: frequent exports so the test is quick.
fn otel_env() -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ("OTEL_BLRP_SCHEDULE_DELAY", "200".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500".into()),
        ("OTEL_TRACES_SAMPLER", "always_on".into()),
    ]
}

fn file_ref(name: &str) -> String {
    format!("file://{}", guest(name).display())
}

async fn ok(lattice: &Lattice, subject: String, body: Value) {
    let reply = lattice
        .request::<()>(subject.clone(), &body)
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e:#}"));
    assert!(reply.success, "{subject} refused: {}", reply.message);
}

async fn scale(lattice: &Lattice, host: &HostProcess, guest_name: &str, id: &str) {
    let mut events = lattice.events().await;
    ok(
        lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": file_ref(guest_name), "component_id": id, "count": 4}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
}

/// Starts the in-process http-server on `host` for `caller` at `addr`, and links the caller
/// to the callee.
async fn wire_up(lattice: &Lattice, host: &HostProcess, addr: &str) {
    ok(
        lattice,
        lattice.subjects.config_put("http-addr"),
        json!({"address": addr}),
    )
    .await;
    let mut events = lattice.events().await;
    ok(
        lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": "http-server", "provider_ref": "trellis+builtin://http-server"}),
    )
    .await;
    events
        .wait_for("provider_started", |d| d["provider_id"] == "http-server")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    ok(
        lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "http-server", "target": "caller", "wit_namespace": "wasi",
               "wit_package": "http", "interfaces": ["incoming-handler"],
               "source_config": ["http-addr"]}),
    )
    .await;
    ok(
        lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "caller", "target": "callee", "wit_namespace": "trellis",
               "wit_package": "demo", "interfaces": ["inventory"]}),
    )
    .await;
}

/// One `GET` on a fresh connection: status and body.
async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("no status in {text:?}"))?
            .parse()?;
        anyhow::Ok((status, text))
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no response to {path} within 60 s"))?
}

/// Waits until `GET /all` answers 200 (every call of the caller checked out).
async fn wait_all_ok(addr: &str, logs: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match get(addr, "/all").await {
            Ok((200, _)) => return,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "GET /all never answered 200: {other:?}\nlogs:\n{}",
                    logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An OTLP id as lower-case hex (the receiver prints hex; base64 is accepted too).
fn id_hex(value: &Value) -> String {
    let text = value.as_str().unwrap_or_default();
    if text.chars().all(|c| c.is_ascii_hexdigit()) {
        return text.to_ascii_lowercase();
    }
    base64_to_hex(text)
}

fn base64_to_hex(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = String::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            return String::new();
        };
        bits = (bits << 6) | v as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push_str(&format!("{:02x}", (bits >> count) & 0xff));
        }
    }
    out
}

/// A string, int or bool attribute of an OTLP object, as text.
fn attr(record: &Value, key: &str) -> Option<String> {
    record["attributes"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .and_then(|kv| {
            let v = &kv["value"];
            v.get("stringValue")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| {
                    v.get("intValue")
                        .map(|i| i.to_string().trim_matches('"').to_owned())
                })
                .or_else(|| v.get("boolValue").map(|b| b.to_string()))
        })
}

fn is_span(record: &Value) -> bool {
    record.get("spanId").is_some() && record.get("startTimeUnixNano").is_some()
}

fn is_log(record: &Value) -> bool {
    record.get("body").is_some() && record.get("startTimeUnixNano").is_none()
}

/// A span's kind (OTLP: 1 internal, 2 server, 3 client, 4 producer, 5 consumer), whether the
/// receiver prints the number or the enum name.
fn kind(span: &Value) -> i64 {
    match &span["kind"] {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.as_str() {
            "SPAN_KIND_INTERNAL" => 1,
            "SPAN_KIND_SERVER" => 2,
            "SPAN_KIND_CLIENT" => 3,
            "SPAN_KIND_PRODUCER" => 4,
            "SPAN_KIND_CONSUMER" => 5,
            _ => 0,
        },
        _ => 0,
    }
}

fn log_body(record: &Value) -> String {
    record["body"]["stringValue"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| record["body"].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_across_three_hosts_with_guest_log_and_metrics() {
    let receiver = OtlpReceiver::start().await;
    let nats = NatsServer::start().await;
    let name = "otel-three";
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let endpoint = receiver.endpoint();
    let flags = ["--otel", "--otel-endpoint", endpoint.as_str()];
    let env = otel_env();
    let host_a = HostProcess::start_with_env(&nats.url(), name, &flags, &env).await;
    let flags_b = [
        "--otel",
        "--otel-endpoint",
        endpoint.as_str(),
        "--metrics-listen",
        metrics_addr.as_str(),
    ];
    let host_b = HostProcess::start_with_env(&nats.url(), name, &flags_b, &env).await;
    let host_c = HostProcess::start_with_env(&nats.url(), name, &flags, &env).await;
    let logs = || {
        format!(
            "host A:\n{}\nhost B:\n{}\nhost C:\n{}\nreceiver:\n{}",
            host_a.logs(),
            host_b.logs(),
            host_c.logs(),
            receiver.raw().chars().take(20_000).collect::<String>()
        )
    };
    let lattice = Lattice::connect(&nats.url(), name).await;
    scale(&lattice, &host_b, "demo_caller", "caller").await;
    scale(&lattice, &host_c, "demo_callee", "callee").await;
    let addr = format!("127.0.0.1:{}", free_port());
    wire_up(&lattice, &host_a, &addr).await;
    wait_all_ok(&addr, &logs).await;

    // A request with a trace of our own: the ingress makes its server span a child of it.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_parent = "00f067aa0ba902b7";
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await?;
        let head = format!(
            "GET /all HTTP/1.1\r\nhost: {addr}\r\ntraceparent: 00-{client_trace}-{client_parent}-01\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(String::from_utf8_lossy(&raw).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(60), request)
        .await
        .expect("no answer in 60 s")
        .expect("request");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{response}\n{}",
        logs()
    );

    // Wait until the whole trace has arrived: spans of all three hosts and the guest's line.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (spans, trace_logs) = loop {
        let records = receiver.records();
        let spans: Vec<Value> = records
            .iter()
            .filter(|r| is_span(r) && id_hex(&r["traceId"]) == client_trace)
            .cloned()
            .collect();
        let trace_logs: Vec<Value> = records
            .iter()
            .filter(|r| is_log(r) && id_hex(&r["traceId"]) == client_trace)
            .cloned()
            .collect();
        let host_of = |s: &Value| attr(s, "trellis.host.id").unwrap_or_default();
        let on = |id: &str| spans.iter().any(|s| host_of(s) == id);
        let shout_logged = trace_logs
            .iter()
            .any(|l| log_body(l).contains("demo-callee: shouting"));
        let callee_invoked = spans.iter().any(|s| {
            attr(s, "trellis.component.id").as_deref() == Some("callee")
                && attr(s, "trellis.function").as_deref() == Some("shout")
        });
        if on(&host_a.id) && on(&host_b.id) && on(&host_c.id) && shout_logged && callee_invoked {
            break (spans, trace_logs);
        }
        assert!(
            Instant::now() < deadline,
            "the trace did not arrive whole within 60 s ({} spans, {} logs of it)\n{}",
            spans.len(),
            trace_logs.len(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let by_id: HashMap<String, &Value> = spans.iter().map(|s| (id_hex(&s["spanId"]), s)).collect();
    let parent_of = |s: &Value| by_id.get(&id_hex(&s["parentSpanId"])).copied();
    let host_of = |s: &Value| attr(s, "trellis.host.id").unwrap_or_default();

    // A: the HTTP server span, child of the client's span.
    let ingress = spans
        .iter()
        .find(|s| kind(s) == 2 && attr(s, "http.request.method").as_deref() == Some("GET"))
        .unwrap_or_else(|| panic!("no HTTP server span: {spans:#?}"));
    assert_eq!(host_of(ingress), host_a.id);
    assert_eq!(id_hex(&ingress["parentSpanId"]), client_parent);
    assert_eq!(
        attr(ingress, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(ingress, "url.path").as_deref(), Some("/all"));

    // B: the caller's HTTP invocation, child of A's server span.
    let caller = spans
        .iter()
        .find(|s| {
            attr(s, "trellis.component.id").as_deref() == Some("caller")
                && attr(s, "trellis.interface").as_deref() == Some("wasi:http/incoming-handler")
        })
        .unwrap_or_else(|| panic!("no invocation span of the caller: {spans:#?}"));
    assert_eq!(host_of(caller), host_b.id);
    assert_eq!(
        parent_of(caller).map(|p| id_hex(&p["spanId"])),
        Some(id_hex(&ingress["spanId"])),
        "the caller's invocation is not a child of the ingress span"
    );

    // C: the callee's `shout` invocation <- C's server span <- B's client span <- caller.
    let shout = spans
        .iter()
        .find(|s| {
            attr(s, "trellis.component.id").as_deref() == Some("callee")
                && attr(s, "trellis.function").as_deref() == Some("shout")
        })
        .expect("shout invocation span");
    assert_eq!(host_of(shout), host_c.id);
    let server = parent_of(shout).expect("the shout invocation has a parent in the trace");
    assert_eq!(kind(server), 2, "{server:#}");
    assert_eq!(host_of(server), host_c.id);
    assert_eq!(attr(server, "rpc.method").as_deref(), Some("shout"));
    let client = parent_of(server).expect("the server span has a parent in the trace");
    assert_eq!(kind(client), 3, "{client:#}");
    assert_eq!(host_of(client), host_b.id);
    assert_eq!(attr(client, "trellis.target.id").as_deref(), Some("callee"));
    assert!(
        matches!(
            attr(client, "trellis.transport").as_deref(),
            Some("nats" | "direct")
        ),
        "{client:#}"
    );
    assert_eq!(
        parent_of(client).map(|p| id_hex(&p["spanId"])),
        Some(id_hex(&caller["spanId"])),
        "the client span is not a child of the caller's invocation"
    );

    // The guest's stdout line carries the trace and the shout invocation's span.
    let line = trace_logs
        .iter()
        .find(|l| log_body(l).contains("demo-callee: shouting"))
        .expect("guest log line");
    assert_eq!(
        id_hex(&line["spanId"]),
        id_hex(&shout["spanId"]),
        "{line:#}"
    );

    // Metrics: the invocation counter arrives with the component ids.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = receiver.records();
        let has_callee_count = records.iter().any(|m| {
            m["name"] == "trellis.component.invocations" && m.to_string().contains("\"callee\"")
        });
        if has_callee_count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trellis.component.invocations metric for callee within 30 s\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Prometheus text on host B.
    let (status, text) = get(&metrics_addr, "/metrics").await.expect("scrape");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("trellis_component_invocations_total{component_id=\"caller\""),
        "{text}"
    );
    assert!(
        text.contains("trellis_component_invocation_duration_seconds_bucket"),
        "{text}"
    );
    let (status, text) = get(&metrics_addr, "/other").await.expect("scrape");
    assert_eq!(status, 404, "{text}");
    assert!(!logs().contains("panicked"), "{}", logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_down_costs_requests_nothing() {
    let nats = NatsServer::start().await;
    let name = "otel-down";
    // A port nothing listens on.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let flags = ["--otel", "--otel-endpoint", endpoint.as_str()];
    let host_a = HostProcess::start_with_env(&nats.url(), name, &flags, &otel_env()).await;
    let host_b = HostProcess::start_with_env(&nats.url(), name, &flags, &otel_env()).await;
    let logs = || format!("host A:\n{}\nhost B:\n{}", host_a.logs(), host_b.logs());
    let lattice = Lattice::connect(&nats.url(), name).await;
    scale(&lattice, &host_a, "demo_caller", "caller").await;
    scale(&lattice, &host_b, "demo_callee", "callee").await;
    let addr = format!("127.0.0.1:{}", free_port());
    wire_up(&lattice, &host_a, &addr).await;
    wait_all_ok(&addr, &logs).await;
    // Requests across several export attempts (every 200 ms) all answer, quickly.
    let started = Instant::now();
    for _ in 0..20 {
        let (status, text) = get(&addr, "/all").await.expect("request");
        assert_eq!(status, 200, "{text}\n{}", logs());
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(30),
        "20 requests took {elapsed:?}"
    );
    // Let the exporters fail a few more times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = host_a.logs();
    assert!(!log.contains("panicked"), "{log}");
    let warnings = log
        .lines()
        .filter(|l| l.contains("cannot export telemetry to the OTLP collector"))
        .count();
    // One per signal (traces, metrics, logs) at most within the first minute.
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} export warnings:\n{log}"
    );
    let mut host_a = host_a;
    assert!(host_a.is_running(), "{}", host_a.logs());
}

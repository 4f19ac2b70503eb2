//! wasmCloud 1.x concurrency semantics end to end: a component's `count` is how many of its
//! instances run at once; requests beyond that wait for one instead of being refused, and a
//! stuck instance does not keep the others from serving.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;
use trellis_integration::{
    control_ok as control, free_port, guest_ref, http_ok, HostProcess, Lattice, NatsServer,
};

/// Generous bound for any single request of these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Scales `component_id` (http_hello) to `count` and waits for the host to confirm it.
async fn scale(
    lattice: &Lattice,
    host: &HostProcess,
    component_id: &str,
    count: u32,
    limits: serde_json::Value,
) {
    let mut events = lattice.events().await;
    control(
        lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": guest_ref("http_hello"), "component_id": component_id,
               "count": count, "component_limits": limits}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| {
            d["component_id"] == component_id && d["max_instances"] == count
        })
        .await
        .unwrap_or_else(|error| panic!("{error:#}\nhost log:\n{}", host.logs()));
}

/// Starts the built-in HTTP server on `host` and routes `addr` to `component_id`; returns
/// once it answers.
async fn serve_http(lattice: &Lattice, host: &HostProcess, component_id: &str, addr: &str) {
    let config = format!("{component_id}-addr");
    control(
        lattice,
        lattice.subjects.config_put(&config),
        json!({"address": addr}),
    )
    .await;
    let mut events = lattice.events().await;
    control(
        lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": "http-server", "provider_ref": "trellis+builtin://http-server",
               "config": []}),
    )
    .await;
    events
        .wait_for("provider_started", |d| d["provider_id"] == "http-server")
        .await
        .unwrap_or_else(|error| panic!("{error:#}\nhost log:\n{}", host.logs()));
    control(
        lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "http-server", "target": component_id, "wit_namespace": "wasi",
               "wit_package": "http", "interfaces": ["incoming-handler"],
               "source_config": [config]}),
    )
    .await;
    trellis_integration::eventually("the HTTP server to answer", || http_ok(addr, "/")).await;
}

/// One keep-alive HTTP/1.1 connection to `addr`.
async fn connect(addr: &str) -> http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|error| panic!("connecting to {addr}: {error}"));
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

/// A response's status, `Retry-After` header and body.
async fn get(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    addr: &str,
    path: &str,
) -> (u16, Option<String>, String) {
    let exchange = async {
        sender.ready().await.expect("the connection is usable");
        let request = http::Request::get(path)
            .header(http::header::HOST, addr)
            .body(Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("a response");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .map(|value| value.to_str().unwrap_or("not text").to_string());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("the response body")
            .to_bytes();
        (
            status,
            retry_after,
            String::from_utf8_lossy(&body).into_owned(),
        )
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path} within {REQUEST_TIMEOUT:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_clients_on_one_instance_all_get_200() {
    const CLIENTS: usize = 50;
    const REQUESTS_EACH: usize = 20;
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());
    // Default limits: the default wait queue must absorb 50 clients on one instance.
    scale(&lattice, &host, "hello", 1, json!(null)).await;
    serve_http(&lattice, &host, "hello", &addr).await;

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let mut sender = connect(&addr).await;
            let mut answers = Vec::new();
            for _ in 0..REQUESTS_EACH {
                answers.push(get(&mut sender, &addr, "/").await);
            }
            answers
        }));
    }
    let mut served = 0;
    for client in clients {
        for (status, retry_after, body) in client.await.expect("client task") {
            assert_eq!(
                (status, body.as_str(), retry_after),
                (200, "Hello from Trellis!\n", None),
                "every request waits for the instance instead of being refused\nhost log:\n{}",
                host.logs()
            );
            served += 1;
        }
    }
    assert_eq!(served, CLIENTS * REQUESTS_EACH);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_looping_request_leaves_the_other_instances_serving() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());
    // No waiting room, so a busy instance shows as a 503; a deadline longer than the test,
    // so the loop holds its instance throughout.
    let limits = json!({"max_execution_time_ms": "600000", "max_queued_requests": "0"});
    scale(&lattice, &host, "looper", 1, limits).await;
    serve_http(&lattice, &host, "looper", &addr).await;

    let looping = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut sender = connect(&addr).await;
            loop {
                // Refused only if a probe below held the instance at that moment.
                let answer = get(&mut sender, &addr, "/loop").await;
                if answer.0 != 503 {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    // The loop holds the only instance once requests are refused: 503 with Retry-After.
    let mut probe = connect(&addr).await;
    let started = std::time::Instant::now();
    let refused = loop {
        let answer = get(&mut probe, &addr, "/").await;
        if answer.0 == 503 {
            break answer;
        }
        assert!(
            started.elapsed() < REQUEST_TIMEOUT,
            "the loop never held the instance\nhost log:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(refused.1.as_deref(), Some("1"), "Retry-After: {refused:?}");
    assert!(refused.2.contains("max_queued_requests"), "{}", refused.2);

    // A second instance serves beside the loop, request after request.
    scale(&lattice, &host, "looper", 2, json!(null)).await;
    for _ in 0..5 {
        let (status, _, body) = get(&mut probe, &addr, "/").await;
        assert_eq!((status, body.as_str()), (200, "Hello from Trellis!\n"));
    }
    assert!(!looping.is_finished(), "the loop still holds its instance");
    looping.abort();
}

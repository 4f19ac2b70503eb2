//! Outgoing HTTP through an http-client link, end to end: a real nats-server, a real
//! `trellis host`, the real `http_fetch` component behind the http-server provider, and an
//! upstream HTTP server this test runs on a local socket.
//!
//! Covers: refused without the link (with or without `allowed_hosts`), granted by the link,
//! connections pooled across requests and instances, `allowed_hosts` restricting a linked
//! component, the per-request timeout from the link's config, and revocation when the link
//! is deleted.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use trellis_integration::{
    control_ok as ok, free_port, guest_ref, http_get, put_config, HostProcess, Lattice, NatsServer,
    WAIT,
};

/// A local HTTP/1.1 server (keep-alive) counting the connections and requests it gets.
/// `/slow` answers after 5 s; anything else answers `hello from upstream` at once.
struct Upstream {
    addr: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream address").to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let task = {
            let connections = connections.clone();
            let requests = requests.clone();
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request: hyper::Request<_>| {
                            requests.fetch_add(1, Ordering::SeqCst);
                            async move {
                                if request.uri().path() == "/slow" {
                                    tokio::time::sleep(Duration::from_secs(5)).await;
                                }
                                Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from_static(b"hello from upstream"),
                                )))
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(socket), service)
                            .await;
                    });
                }
            })
        };
        Self {
            addr,
            connections,
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_provider(lattice: &Lattice, host: &HostProcess, id: &str, image: &str) {
    let mut events = lattice.events().await;
    ok(
        lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": id, "provider_ref": image}),
    )
    .await;
    events
        .wait_for("provider_started", |d| d["provider_id"] == id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
}

async fn scale_fetcher(lattice: &Lattice, host: &HostProcess, id: &str, config: &[&str]) {
    let mut events = lattice.events().await;
    ok(
        lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": guest_ref("http_fetch"), "component_id": id, "count": 4,
               "config": config}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
}

/// Routes `address` to component `id` through the http-server provider (one link per
/// component, named after it).
async fn serve_on(lattice: &Lattice, id: &str, address: &str) {
    let config = format!("addr-{id}");
    put_config(lattice, &config, &[("address", address)]).await;
    ok(
        lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "http-server", "target": id, "name": id, "wit_namespace": "wasi",
               "wit_package": "http", "interfaces": ["incoming-handler"],
               "source_config": [config]}),
    )
    .await;
}

/// Links component `id` to the http-client provider, with `target_config`.
async fn link_client(lattice: &Lattice, id: &str, target_config: &[&str]) {
    ok(
        lattice,
        lattice.subjects.link_put(),
        json!({"source_id": id, "target": "httpclient", "wit_namespace": "wasi",
               "wit_package": "http", "interfaces": ["outgoing-handler"],
               "target_config": target_config}),
    )
    .await;
}

/// `GET /fetch?url=URL` on `address`, retried until `done` accepts the answer.
async fn fetch_until(
    address: &str,
    url: &str,
    host: &HostProcess,
    what: &str,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let path = format!("/fetch?url={url}");
    let started = Instant::now();
    let mut last = None;
    loop {
        if let Some((status, body)) = http_get(address, &path).await {
            if done(status, &body) {
                return (status, body);
            }
            last = Some((status, body));
        }
        assert!(
            started.elapsed() < WAIT,
            "{what}: never happened within {WAIT:?}; last answer {last:?}\nhost log:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_link_grants_outgoing_http_and_allowed_hosts_restricts_it() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let upstream = Upstream::start().await;
    let hello_url = format!("http://{}/hello", upstream.addr);

    start_provider(
        &lattice,
        &host,
        "http-server",
        "ghcr.io/wasmcloud/http-server:0.23.0",
    )
    .await;
    start_provider(
        &lattice,
        &host,
        "httpclient",
        "ghcr.io/wasmcloud/http-client:0.13.1",
    )
    .await;
    scale_fetcher(&lattice, &host, "fetcher", &[]).await;
    let fetcher_addr = format!("127.0.0.1:{}", free_port());
    serve_on(&lattice, "fetcher", &fetcher_addr).await;

    // Neither a link nor allowed_hosts: refused, and the error says which link is missing.
    let (status, body) = fetch_until(&fetcher_addr, &hello_url, &host, "a refusal", |s, _| {
        s == 502
    })
    .await;
    assert_eq!(status, 502);
    assert!(
        body.contains("no link named `default` on wasi:http/outgoing-handler")
            && body.contains("fetcher"),
        "{body}"
    );
    assert_eq!(
        upstream.requests(),
        0,
        "a refused request reached the upstream"
    );

    // The link grants it.
    link_client(&lattice, "fetcher", &[]).await;
    let (_, body) = fetch_until(
        &fetcher_addr,
        &hello_url,
        &host,
        "a fetch through the link",
        |s, _| s == 200,
    )
    .await;
    assert_eq!(body, "hello from upstream");

    // One pool per host: further requests, each from a fresh instance, reuse the connection.
    let before = upstream.requests();
    for _ in 0..5 {
        let (status, body) = http_get(&fetcher_addr, &format!("/fetch?url={hello_url}"))
            .await
            .expect("the fetcher answers");
        assert_eq!((status, body.as_str()), (200, "hello from upstream"));
    }
    assert_eq!(upstream.requests(), before + 5);
    assert!(
        upstream.connections() < upstream.requests(),
        "no connection was reused: {} connections for {} requests",
        upstream.connections(),
        upstream.requests()
    );

    // The link's config sets the request timeout: a slow upstream fails fast.
    put_config(&lattice, "client-fast", &[("timeout_ms", "500")]).await;
    link_client(&lattice, "fetcher", &["client-fast"]).await;
    let slow_url = format!("http://{}/slow", upstream.addr);
    let started = Instant::now();
    let (_, body) = fetch_until(&fetcher_addr, &slow_url, &host, "a timeout", |s, b| {
        s == 502 && b.contains("HttpResponseTimeout")
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the timeout took {:?}: {body}",
        started.elapsed()
    );
    let timed = Instant::now();
    let (status, body) = http_get(&fetcher_addr, &format!("/fetch?url={slow_url}"))
        .await
        .expect("the fetcher answers");
    assert_eq!(status, 502, "{body}");
    assert!(
        timed.elapsed() < Duration::from_secs(3),
        "a 500 ms timeout took {:?}",
        timed.elapsed()
    );

    // allowed_hosts, when set, restricts a linked component; alone it grants nothing.
    put_config(&lattice, "fence", &[("allowed_hosts", "localhost")]).await;
    scale_fetcher(&lattice, &host, "fenced", &["fence"]).await;
    let fenced_addr = format!("127.0.0.1:{}", free_port());
    serve_on(&lattice, "fenced", &fenced_addr).await;
    let localhost_url = hello_url.replace("127.0.0.1", "localhost");
    let (_, body) = fetch_until(&fenced_addr, &localhost_url, &host, "a refusal", |s, _| {
        s == 502
    })
    .await;
    assert!(body.contains("no link named `default`"), "{body}");
    link_client(&lattice, "fenced", &[]).await;
    let (_, body) = fetch_until(
        &fenced_addr,
        &localhost_url,
        &host,
        "a fenced fetch",
        |s, _| s == 200,
    )
    .await;
    assert_eq!(body, "hello from upstream");
    let (status, body) = http_get(&fenced_addr, &format!("/fetch?url={hello_url}"))
        .await
        .expect("the fenced component answers");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");

    // Deleting the link revokes the grant for the next request.
    ok(
        &lattice,
        lattice.subjects.link_del(),
        json!({"source_id": "fetcher", "name": "default", "wit_namespace": "wasi",
               "wit_package": "http"}),
    )
    .await;
    let (_, body) = fetch_until(&fetcher_addr, &hello_url, &host, "revocation", |s, _| {
        s == 502
    })
    .await;
    assert!(body.contains("no link named `default`"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_http_client_config_fails_the_provider_start() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    put_config(&lattice, "bad-client", &[("timeout_ms", "soon")]).await;
    let mut events = lattice.events().await;
    ok(
        &lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": "httpclient", "provider_ref": "wasmcloud+builtin://http-client",
               "config": ["bad-client"]}),
    )
    .await;
    let failed = events
        .wait_for("provider_start_failed", |d| {
            d["provider_id"] == "httpclient"
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    let error = failed.data["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("timeout_ms") && error.contains("soon"),
        "{error}"
    );
}

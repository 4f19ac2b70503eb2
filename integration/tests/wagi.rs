//! Wagi end to end: a plain WASI command program (`wagi_echo`, a Rust `fn main`) linked to
//! the http-server with `executor=wagi` answers HTTP the CGI way: request metadata in its
//! environment, the body on stdin, status, headers and body from its stdout. Output that is
//! not a CGI response, or too much of it, is a 502.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use trellis_integration::{
    control_ok as ok, free_port, guest, put_config, HostProcess, Lattice, NatsServer, WAIT,
};

/// Status, headers and body of one answer.
struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

/// Sends one request on a fresh connection.
async fn send(addr: &str, method: &str, path: &str, body: &str) -> anyhow::Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("user-agent", "trellis-wagi-test")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = tokio::time::timeout(WAIT, sender.send_request(request)).await??;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasi_command_answers_http_the_cgi_way() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());
    put_config(
        &lattice,
        "wagi-link",
        &[("address", &addr), ("executor", "wagi")],
    )
    .await;

    let mut events = lattice.events().await;
    ok(
        &lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": "http-server", "provider_ref": "trellis+builtin://http-server"}),
    )
    .await;
    events
        .wait_for("provider_started", |d| d["provider_id"] == "http-server")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    let mut events = lattice.events().await;
    ok(
        &lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": format!("file://{}", guest("wagi_echo").display()),
               "component_id": "echo", "count": 4}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == "echo")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    ok(
        &lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "http-server", "target": "echo", "wit_namespace": "wasi",
               "wit_package": "http", "interfaces": ["incoming-handler"],
               "source_config": ["wagi-link"]}),
    )
    .await;

    // The listener opens once the provider has seen the link.
    let deadline = Instant::now() + WAIT;
    let reply = loop {
        if let Ok(reply) = send(&addr, "POST", "/echo/path?x=1", "hello wagi").await {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr}\nhost log:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        reply.status,
        200,
        "{}\nhost log:\n{}",
        reply.body,
        host.logs()
    );
    assert_eq!(reply.headers["x-wagi-method"], "POST");
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        reply.body,
        "method=POST path=/echo/path query=x=1 user-agent=trellis-wagi-test content-length=10\n\
         body=hello wagi"
    );

    let started = Instant::now();
    let teapot = send(&addr, "GET", "/?status=418", "")
        .await
        .expect("answer");
    let one_request = started.elapsed();
    assert_eq!(teapot.status, 418, "{}", teapot.body);
    eprintln!("one Wagi request (fresh instance, debug host): {one_request:?}");

    let redirect = send(&addr, "GET", "/?redirect=/elsewhere", "")
        .await
        .expect("answer");
    assert_eq!(redirect.status, 302);
    assert_eq!(redirect.headers["location"], "/elsewhere");

    let garbage = send(&addr, "GET", "/?garbage", "").await.expect("answer");
    assert_eq!(garbage.status, 502);
    assert!(garbage.body.contains("no blank line"), "{}", garbage.body);

    let flood = send(&addr, "GET", "/?flood=20000000", "")
        .await
        .expect("answer");
    assert_eq!(flood.status, 502);
    assert!(flood.body.contains("more than"), "{}", flood.body);

    // The server still serves after the failures.
    let again = send(&addr, "PUT", "/again", "x").await.expect("answer");
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(again.body.ends_with("body=x"), "{}", again.body);
}

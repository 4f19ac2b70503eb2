//! Component-to-component calls end to end: real nats-server, real `trellis host` processes,
//! the real `demo_caller` (imports `trellis:demo/inventory`, serves HTTP) and `demo_callee`
//! (exports it) components, requests through the HTTP server provider over real sockets.
//!
//! Covers the caller and callee on two hosts (every value kind crosses the lattice), directly
//! between the hosts once NATS has said where the callee runs, and with `--no-direct-calls`
//! (every call over NATS); both on one host (in-process call), and both on one host with
//! `--disable-colocation --no-direct-calls` (over NATS);
//! a deleted link and a callee scaled to zero fail the next request at once, with a message;
//! `wasmcloud:bus/lattice` `set-link-name` routes calls through a named link.

use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use trellis_integration::{eventually, free_port, guest, HostProcess, Lattice, NatsServer};

/// A response's status and body.
struct Reply {
    status: u16,
    body: String,
}

/// One `GET` on a fresh connection (`connection: close`, body read to the end).
async fn get(addr: &str, path: &str) -> anyhow::Result<Reply> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("no end of headers in {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?
            .parse()?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        anyhow::Ok(Reply { status, body })
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no response to {path} within 60 s"))?
}

/// Decodes a chunked body (small test bodies: good enough).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn file_ref(name: &str) -> String {
    format!("file://{}", guest(name).display())
}

async fn ok(lattice: &Lattice, subject: String, body: serde_json::Value) {
    let reply = lattice
        .request::<()>(subject.clone(), &body)
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e:#}"));
    assert!(reply.success, "{subject} refused: {}", reply.message);
}

async fn scale(lattice: &Lattice, host: &HostProcess, guest_name: &str, id: &str, count: u32) {
    let mut events = lattice.events().await;
    ok(
        lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": file_ref(guest_name), "component_id": id, "count": count}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| {
            d["component_id"] == id && d["max_instances"] == count
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
}

async fn start_http_server(lattice: &Lattice, host: &HostProcess, addr: &str) {
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
}

async fn link_caller_to_callee(lattice: &Lattice) {
    ok(
        lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "caller", "target": "callee", "wit_namespace": "trellis",
               "wit_package": "demo", "interfaces": ["inventory"]}),
    )
    .await;
}

/// Waits until every inventory call made by the caller checks out.
async fn wait_all_checked(addr: &str, logs: impl Fn() -> String) {
    let started = Instant::now();
    loop {
        let reply = get(addr, "/").await;
        if let Ok(reply) = &reply {
            if reply.status == 200 {
                assert_eq!(reply.body.trim_end(), "ok: 17 calls checked");
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the caller never answered 200: last {:?}\nlogs:\n{}",
            reply.map(|r| (r.status, r.body)),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks values and a large payload, measures calls, then deletes the caller's link and
/// checks the next request fails at once naming it; restores the link.
async fn exercise(addr: &str, lattice: &Lattice, label: &str) {
    let values = get(addr, "/values").await.unwrap();
    assert_eq!(values.status, 200, "{}", values.body);
    assert!(values.body.contains("floats = "), "{}", values.body);

    let blob = get(addr, "/blob?len=3000000").await.unwrap();
    assert_eq!(blob.status, 200, "{}", blob.body);
    assert!(blob.body.starts_with("ok: 3000000 bytes"), "{}", blob.body);

    // Measured, not asserted: the mean time of one call inside /bench?n=1000, median of 5.
    let mut per_call = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let reply = get(addr, "/bench?n=1000").await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        per_call.push(started.elapsed() / 1000);
    }
    per_call.sort();
    eprintln!(
        "[{label}] mean call time in /bench?n=1000 (median of 5 runs): {:?} (all: {per_call:?})",
        per_call[2]
    );

    ok(
        lattice,
        lattice.subjects.link_del(),
        json!({"source_id": "caller", "wit_namespace": "trellis", "wit_package": "demo"}),
    )
    .await;
    let reply = eventually("a failure once the link is gone", || async {
        let reply = get(addr, "/").await.ok()?;
        (reply.status != 200).then_some(reply)
    })
    .await;
    let started = Instant::now();
    let reply = if reply.status == 500 {
        reply
    } else {
        get(addr, "/").await.unwrap()
    };
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply.body.contains("no link named `default`")
            && reply.body.contains("trellis:demo/inventory")
            && reply.body.contains("caller"),
        "{}",
        reply.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the failure was not immediate"
    );
    link_caller_to_callee(lattice).await;
    choose_links_by_name(addr, lattice).await;
}

/// `wasmcloud:bus/lattice@2.0.0` `set-link-name` picks the link the next call follows: a
/// name with no link is refused; with a link `alt` the call goes through it, even after the
/// `default` link is deleted.
async fn choose_links_by_name(addr: &str, lattice: &Lattice) {
    let reply = get(addr, "/via?link=alt").await.unwrap();
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        reply.body.contains("set-link-name alt")
            && reply
                .body
                .contains("has no link named `alt` for trellis:demo/inventory"),
        "the refusal must carry the host's reason: {}",
        reply.body
    );

    ok(
        lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "caller", "target": "callee", "name": "alt",
               "wit_namespace": "trellis", "wit_package": "demo", "interfaces": ["inventory"]}),
    )
    .await;
    eventually("a call through the link named alt", || async {
        let reply = get(addr, "/via?link=alt").await.ok()?;
        (reply.status == 200 && reply.body.trim_end() == "via alt: ok").then_some(())
    })
    .await;

    ok(
        lattice,
        lattice.subjects.link_del(),
        json!({"source_id": "caller", "wit_namespace": "trellis", "wit_package": "demo"}),
    )
    .await;
    eventually("the default link gone", || async {
        let reply = get(addr, "/").await.ok()?;
        reply.body.contains("no link named `default`").then_some(())
    })
    .await;
    let reply = get(addr, "/via?link=alt").await.unwrap();
    assert_eq!(
        (reply.status, reply.body.trim_end()),
        (200, "via alt: ok"),
        "the named link must not depend on the default one"
    );

    link_caller_to_callee(lattice).await;
    ok(
        lattice,
        lattice.subjects.link_del(),
        json!({"source_id": "caller", "wit_namespace": "trellis", "wit_package": "demo",
               "name": "alt"}),
    )
    .await;
    eventually("the link named alt gone", || async {
        let reply = get(addr, "/via?link=alt").await.ok()?;
        (reply.status == 409).then_some(())
    })
    .await;
}

/// After the callee is scaled to zero everywhere, the next requests fail at once.
async fn expect_not_running(addr: &str) {
    let reply = eventually("a failure once the callee is gone", || async {
        let reply = get(addr, "/").await.ok()?;
        reply.body.contains("not running anywhere").then_some(reply)
    })
    .await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    let started = Instant::now();
    let reply = get(addr, "/").await.unwrap();
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(reply.body.contains("callee"), "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the failure was not immediate"
    );
}

/// How the calls between the two hosts should travel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Between {
    /// Straight from host to host after the first call (the default).
    Direct,
    /// Every call through NATS (`--no-direct-calls`).
    Nats,
}

/// Counts, from outside, the calls to `callee` that cross NATS during `/bench?n=1000`.
async fn calls_over_nats_in_a_bench(lattice: &Lattice, addr: &str) -> usize {
    let mut calls = lattice
        .client
        .subscribe("trellis.rpc.default.callee.>")
        .await
        .unwrap();
    let mut marks = lattice.client.subscribe("test.marks").await.unwrap();
    // A mark coming back means the server has both subscriptions (and, later, that every
    // call message it sent before the mark has arrived).
    let mark = || async {
        lattice
            .client
            .publish("test.marks", Default::default())
            .await
            .unwrap();
    };
    mark().await;
    tokio::time::timeout(Duration::from_secs(10), marks.next())
        .await
        .expect("mark");
    let reply = get(addr, "/bench?n=1000").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    mark().await;
    tokio::time::timeout(Duration::from_secs(10), marks.next())
        .await
        .expect("mark");
    let mut seen = 0;
    // Unconstrained: tokio's co-operative budget would end the loop after ~128 polls.
    while let Some(Some(_)) = tokio::task::unconstrained(calls.next()).now_or_never() {
        seen += 1;
    }
    seen
}

async fn two_hosts(between: Between) {
    let nats = NatsServer::start().await;
    let flags: &[&str] = match between {
        Between::Direct => &[],
        Between::Nats => &["--no-direct-calls"],
    };
    let front = HostProcess::start(&nats.url(), "default", flags).await;
    let back = HostProcess::start(&nats.url(), "default", flags).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());

    scale(&lattice, &back, "demo_callee", "callee", 4).await;
    scale(&lattice, &front, "demo_caller", "caller", 4).await;
    link_caller_to_callee(&lattice).await;
    start_http_server(&lattice, &front, &addr).await;
    let logs = || format!("front:\n{}\nback:\n{}", front.logs(), back.logs());
    wait_all_checked(&addr, logs).await;
    let over_nats = calls_over_nats_in_a_bench(&lattice, &addr).await;
    match between {
        // One call in 32 probes through NATS; allow for a few first calls.
        Between::Direct => assert!(
            over_nats <= 1000 / 32 + 5,
            "{over_nats} of 1000 calls crossed NATS with the direct path on"
        ),
        Between::Nats => assert!(
            over_nats >= 1000,
            "only {over_nats} of 1000 calls crossed NATS with --no-direct-calls"
        ),
    }
    let label = match between {
        Between::Direct => "two hosts, direct",
        Between::Nats => "two hosts, over NATS",
    };
    exercise(&addr, &lattice, label).await;
    wait_all_checked(&addr, logs).await;

    scale(&lattice, &back, "demo_callee", "callee", 0).await;
    expect_not_running(&addr).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_and_callee_on_two_hosts_calling_directly() {
    two_hosts(Between::Direct).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_and_callee_on_two_hosts_over_nats_only() {
    two_hosts(Between::Nats).await;
}

async fn one_host(extra_flags: &[&str], label: &str) {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", extra_flags).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());

    scale(&lattice, &host, "demo_callee", "callee", 4).await;
    scale(&lattice, &host, "demo_caller", "caller", 4).await;
    link_caller_to_callee(&lattice).await;
    start_http_server(&lattice, &host, &addr).await;
    wait_all_checked(&addr, || host.logs()).await;
    exercise(&addr, &lattice, label).await;
    wait_all_checked(&addr, || host.logs()).await;

    scale(&lattice, &host, "demo_callee", "callee", 0).await;
    expect_not_running(&addr).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_and_callee_on_one_host_in_process() {
    one_host(&[], "one host, in-process").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_and_callee_on_one_host_over_nats() {
    one_host(
        &["--disable-colocation", "--no-direct-calls"],
        "one host, colocation disabled",
    )
    .await;
}

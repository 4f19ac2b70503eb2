//! Section 2: component-to-component calls (`trellis:demo/inventory`), the invocation
//! protocol round trip (over NATS, and direct between hosts), and plain NATS request/reply of
//! the same size as the floor.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;

use trellis_host::invocation::direct::{DirectListener, DirectPeers};
use trellis_host::invocation::{CallContext, InvocationClient, InvocationServer, ServerOptions};
use trellis_integration::{free_port, HostProcess, Lattice, NatsServer};

use crate::drive::{closed_loop, LoadReport};
use crate::lattice;
use crate::report::Figure;
use crate::{file_ref, Bench};

const SECTION: &str = "2. Component-to-component calls";
const IN_FLIGHT: [usize; 2] = [1, 16];
/// The encoded params of `integers(1, 2, 3, 4, 5, 6, 7, n)` in `trellis-cv1`: one byte each
/// (two for the last once n >= 128).
const PAYLOAD: &[u8] = &[1, 2, 6, 4, 10, 6, 14, 200, 1];
const INTERFACE: &str = "trellis:demo/inventory@0.1.0";
/// Calls per HTTP request in the component measurement (`/bench?n=`).
const CALLS_PER_REQUEST: u32 = 50;

/// Measures the floor, the protocol round trip, and (when the host wires imports to the
/// lattice) real component calls co-located and across hosts.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let nats = NatsServer::start().await;
    floor(bench, &nats).await?;
    invocation(bench, &nats).await?;
    if let Err(e) = components(bench, &nats).await {
        bench.problem(format!(
            "Component-to-component calls through hosts could not be measured: {e:#}. \
             The rows above measure the invocation protocol (InvocationClient -> \
             InvocationServer over NATS) and the NATS floor instead."
        ));
    }
    Ok(())
}

fn figure(scenario: &str, in_flight: usize, r: &LoadReport, note: &str) -> Figure {
    let mut note = note.to_string();
    if r.errors > 0 {
        note.push_str(&format!(
            " {} errors, first: {}",
            r.errors,
            r.first_error.as_deref().unwrap_or("")
        ));
    }
    Figure {
        section: SECTION.into(),
        scenario: scenario.into(),
        load: format!("{in_flight} in flight"),
        rate: Some(r.ops_per_sec),
        p50_ms: Some(r.p50_ms),
        p99_ms: Some(r.p99_ms),
        note,
        ..Figure::default()
    }
}

/// Plain NATS request/reply with a responder on its own connection.
async fn floor(bench: &mut Bench, nats: &NatsServer) -> anyhow::Result<()> {
    let responder = nats.client().await;
    let mut sub = responder
        .subscribe("bench.floor")
        .await
        .context("subscribe")?;
    responder.flush().await?;
    let echo = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });
    let client = nats.client().await;
    for in_flight in IN_FLIGHT {
        let client = client.clone();
        let r = closed_loop(in_flight, bench.call_duration, move || {
            let client = client.clone();
            async move {
                let reply = client
                    .request("bench.floor", Bytes::from_static(PAYLOAD))
                    .await?;
                anyhow::ensure!(reply.payload.len() == PAYLOAD.len(), "short reply");
                Ok(())
            }
        })
        .await?;
        bench.push(figure(
            "NATS request/reply (floor)",
            in_flight,
            &r,
            "9-byte payload both ways, responder on its own connection",
        ));
    }
    echo.abort();
    tcp_floor(bench).await
}

/// Plain request/response over one loopback TCP connection: the floor of the direct path.
async fn tcp_floor(bench: &mut Bench) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let mut buf = [0u8; PAYLOAD.len()];
        while stream.read_exact(&mut buf).await.is_ok() {
            if stream.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let stream = Arc::new(tokio::sync::Mutex::new(stream));
    let r = closed_loop(1, bench.call_duration, move || {
        let stream = stream.clone();
        async move {
            let mut stream = stream.lock().await;
            stream.write_all(PAYLOAD).await?;
            let mut buf = [0u8; PAYLOAD.len()];
            stream.read_exact(&mut buf).await?;
            Ok(())
        }
    })
    .await?;
    bench.push(figure(
        "TCP request/response on loopback (floor of the direct path)",
        1,
        &r,
        "9-byte payload both ways over one tokio TCP connection, echo task in this process",
    ));
    echo.abort();
    Ok(())
}

/// `InvocationClient::invoke` against an `InvocationServer` echo handler on another
/// connection: every call over NATS, then with the direct path (after the first call, calls go
/// over the listener's TCP connection; one in 32 still crosses NATS).
async fn invocation(bench: &mut Bench, nats: &NatsServer) -> anyhow::Result<()> {
    let listener = DirectListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), None)
        .await
        .context("cannot start the direct listener")?;
    let server = InvocationServer::serve(
        nats.client().await,
        "bench",
        "callee",
        ServerOptions {
            direct: Some(listener),
            ..ServerOptions::default()
        },
        |call| async move { Ok(call.params) },
    )
    .await
    .context("cannot start the invocation server")?;
    let over_nats = InvocationClient::new(nats.client().await, "bench");
    let direct = InvocationClient::new(nats.client().await, "bench")
        .with_direct_peers(Arc::new(DirectPeers::default()));
    let paths = [
        (
            "Invocation protocol round trip over NATS (client -> server)",
            "InvocationClient -> InvocationServer, separate connections, echo handler (no wasm)",
            over_nats,
        ),
        (
            "Invocation protocol round trip, direct (client -> server over TCP)",
            "as above with DirectPeers and a DirectListener: NATS only to learn where, then \
             one call in 32",
            direct,
        ),
    ];
    for (scenario, note, client) in paths {
        for in_flight in IN_FLIGHT {
            let client = client.clone();
            let r = closed_loop(in_flight, bench.call_duration, move || {
                let client = client.clone();
                async move {
                    let result = client
                        .invoke(
                            "callee",
                            INTERFACE,
                            "integers",
                            Bytes::from_static(PAYLOAD),
                            CallContext::default(),
                        )
                        .await?;
                    anyhow::ensure!(result.len() == PAYLOAD.len(), "short result");
                    Ok(())
                }
            })
            .await?;
            bench.push(figure(scenario, in_flight, &r, note));
        }
    }
    drop(server);
    Ok(())
}

/// demo-caller calling demo-callee through the hosts, driven over HTTP (`/bench?n=`).
async fn components(bench: &mut Bench, nats: &NatsServer) -> anyhow::Result<()> {
    let name = "bench-calls";
    let host_a = HostProcess::start(&nats.url(), name, &[]).await;
    let host_b = HostProcess::start(&nats.url(), name, &[]).await;
    // Host C calls only through NATS, for comparison with host A's direct calls.
    let host_c = HostProcess::start(&nats.url(), name, &["--no-direct-calls"]).await;
    let lattice = Lattice::connect(&nats.url(), name).await;
    let caller = file_ref(&trellis_integration::guest("demo_caller"));
    let callee = file_ref(&trellis_integration::guest("demo_callee"));
    lattice::scale(&lattice, &host_a, &callee, "callee", 32).await?;
    lattice::scale(&lattice, &host_b, &callee, "callee-b", 32).await?;
    let cases = [
        (
            "co-located (caller and callee on one host)",
            "caller",
            "callee",
            &host_a,
        ),
        (
            "across hosts (callee only on host B)",
            "caller-x",
            "callee-b",
            &host_a,
        ),
        (
            "NATS only across hosts (caller's host has --no-direct-calls)",
            "caller-n",
            "callee-b",
            &host_c,
        ),
    ];
    let mut addrs = Vec::new();
    for (_, caller_id, callee_id, caller_host) in cases {
        lattice::scale(&lattice, caller_host, &caller, caller_id, 32).await?;
        lattice::link(
            &lattice,
            caller_id,
            callee_id,
            ("trellis", "demo"),
            &["inventory"],
            &[],
        )
        .await?;
        let addr = format!("127.0.0.1:{}", free_port());
        let provider = format!("http-{caller_id}");
        let config = format!("{provider}-addr");
        lattice::put_config(&lattice, &config, &[("address", &addr)]).await?;
        lattice::start_provider(
            &lattice,
            caller_host,
            &provider,
            "trellis+builtin://http-server",
            &[],
        )
        .await?;
        lattice::link(
            &lattice,
            &provider,
            caller_id,
            ("wasi", "http"),
            &["incoming-handler"],
            &[&config],
        )
        .await?;
        let answered = lattice::wait_http_ok(
            &addr,
            "/",
            Duration::from_millis(50),
            Duration::from_secs(15),
        )
        .await;
        if let Err(e) = answered {
            let last = lattice::http_get(&addr, "/")
                .await
                .map(|(s, b)| format!("{s} {}", b.trim()))
                .unwrap_or_else(|e| format!("{e:#}"));
            bail!(
                "{caller_id} -> {callee_id}: GET / does not pass ({e:#}); it answers: {last}; \
                 caller host's log tail:\n{}",
                lattice::tail(&caller_host.logs())
            );
        }
        addrs.push(addr);
    }
    for ((label, _, _, _), addr) in cases.iter().zip(&addrs) {
        for in_flight in IN_FLIGHT {
            let url = format!("http://{addr}/bench?n={CALLS_PER_REQUEST}");
            let r = crate::wrk::run(&url, in_flight as u32, bench.wrk_duration).await?;
            let n = f64::from(CALLS_PER_REQUEST);
            let mut f = Figure {
                section: SECTION.into(),
                scenario: format!("demo-caller -> demo-callee, {label}"),
                load: format!("{in_flight} in flight"),
                rate: Some(r.requests_per_sec * n),
                p50_ms: Some(r.p50_ms / n),
                p99_ms: Some(r.p99_ms / n),
                note: format!(
                    "wrk on /bench?n={CALLS_PER_REQUEST}: each request makes \
                     {CALLS_PER_REQUEST} sequential calls; per-call latency = request \
                     latency / {CALLS_PER_REQUEST} (HTTP share included){}",
                    if r.errors > 0 {
                        format!("; {} errors", r.errors)
                    } else {
                        String::new()
                    }
                ),
                ..Figure::default()
            };
            if label.starts_with("across") && in_flight == 1 {
                f.budget = Some("p50 < 200 µs".into());
                f.met = Some(r.p50_ms / n < 0.2);
            }
            bench.push(f);
        }
    }
    Ok(())
}

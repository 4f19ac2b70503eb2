//! Section 2: component-to-component calls (`trellis:demo/inventory`), the invocation
//! protocol round trip, and plain NATS request/reply of the same size as the floor.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
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
    Ok(())
}

/// `InvocationClient::invoke` against an `InvocationServer` echo handler on another connection.
async fn invocation(bench: &mut Bench, nats: &NatsServer) -> anyhow::Result<()> {
    let server = InvocationServer::serve(
        nats.client().await,
        "bench",
        "callee",
        ServerOptions::default(),
        |call| async move { Ok(call.params) },
    )
    .await
    .context("cannot start the invocation server")?;
    let client = InvocationClient::new(nats.client().await, "bench");
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
        let mut f = figure(
            "Invocation protocol round trip (client -> server over NATS)",
            in_flight,
            &r,
            "InvocationClient -> InvocationServer, separate connections, echo handler (no wasm)",
        );
        if in_flight == 1 {
            f.budget = Some("cross-host p50 < 200 µs".into());
            f.met = Some(r.p50_ms < 0.2);
        }
        bench.push(f);
    }
    drop(server);
    Ok(())
}

/// demo-caller calling demo-callee through the hosts, driven over HTTP (`/bench?n=`).
async fn components(bench: &mut Bench, nats: &NatsServer) -> anyhow::Result<()> {
    let name = "bench-calls";
    let host_a = HostProcess::start(&nats.url(), name, &[]).await;
    let host_b = HostProcess::start(&nats.url(), name, &[]).await;
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
        ),
        (
            "across hosts (callee only on host B)",
            "caller-x",
            "callee-b",
        ),
    ];
    let mut addrs = Vec::new();
    for (_, caller_id, callee_id) in cases {
        lattice::scale(&lattice, &host_a, &caller, caller_id, 32).await?;
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
            &host_a,
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
                 host A log tail:\n{}",
                lattice::tail(&host_a.logs())
            );
        }
        addrs.push(addr);
    }
    for ((label, _, _), addr) in cases.iter().zip(&addrs) {
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

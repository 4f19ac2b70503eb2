//! Section 3: key-value increments through the lattice (NATS JetStream KV backend), driven
//! over HTTP by the `http-keyvalue-counter` component.

use std::time::Duration;

use trellis_integration::{free_port, HostProcess, Lattice, NatsServer};

use crate::lattice;
use crate::report::Figure;
use crate::{file_ref, Bench};

const SECTION: &str = "3. Key-value increment (NATS KV)";

/// Increments one key under load at 1 and 50 connections and checks the final count.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let nats = NatsServer::start().await;
    let name = "bench-kv";
    let host = HostProcess::start(&nats.url(), name, &[]).await;
    let lattice = Lattice::connect(&nats.url(), name).await;
    let addr = format!("127.0.0.1:{}", free_port());
    lattice::put_config(&lattice, "kv-addr", &[("address", &addr)]).await?;
    lattice::start_provider(
        &lattice,
        &host,
        "http-kv",
        "trellis+builtin://http-server",
        &[],
    )
    .await?;
    lattice::start_provider(
        &lattice,
        &host,
        "kv",
        "ghcr.io/wasmcloud/keyvalue-nats:0.3.1",
        &[],
    )
    .await?;
    let counter = file_ref(&trellis_integration::guest("http_keyvalue_counter"));
    lattice::scale(&lattice, &host, &counter, "counter", 100).await?;
    lattice::link(
        &lattice,
        "http-kv",
        "counter",
        ("wasi", "http"),
        &["incoming-handler"],
        &["kv-addr"],
    )
    .await?;
    lattice::link(
        &lattice,
        "counter",
        "kv",
        ("wasi", "keyvalue"),
        &["store", "atomics", "batch"],
        &[],
    )
    .await?;
    lattice::wait_http_ok(
        &addr,
        "/warmup",
        Duration::from_millis(50),
        Duration::from_secs(30),
    )
    .await?;
    let mut total = 0u64;
    for connections in [1u32, 50] {
        let r = crate::wrk::run(
            &format!("http://{addr}/bench"),
            connections,
            bench.wrk_duration,
        )
        .await?;
        total += r.requests.saturating_sub(r.errors);
        let mut f = crate::http::wrk_figure(
            "increment one key via http-keyvalue-counter",
            connections,
            &r,
        );
        f.section = SECTION.into();
        bench.push(f);
    }
    // The same load spread over 64 keys: increments of one key contend (compare-and-swap
    // retries); distinct keys show the path itself.
    let script = tempfile::Builder::new().suffix(".lua").tempfile()?;
    std::fs::write(
        script.path(),
        "request = function()\n  return wrk.format(\"GET\", \"/spread-\" .. math.random(1, 64))\nend\n",
    )?;
    let r = crate::wrk::run_script(
        &format!("http://{addr}/"),
        50,
        bench.wrk_duration,
        Some(script.path()),
    )
    .await?;
    let mut f = crate::http::wrk_figure("increment 64 keys at random", 50, &r);
    f.section = SECTION.into();
    bench.push(f);

    // Every answered increment must have counted (wrk may stop with requests unanswered,
    // which may or may not have reached the store, so the store can only be ahead).
    let (status, body) = lattice::http_get(&addr, "/get/bench").await?;
    let stored: u64 = body.trim().parse().unwrap_or(0);
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "counter check after the runs".into(),
        load: String::new(),
        value: Some(stored as f64),
        unit: "stored".into(),
        note: format!(
            "GET /get/bench -> {status}; wrk counted {total} answered increments{}",
            if stored >= total {
                " (none lost)"
            } else {
                " — **increments were lost**"
            }
        ),
        ..Figure::default()
    });
    Ok(())
}

//! Section 1: HTTP hello against the anchor, in-process provider, provider process over NATS,
//! and a component on another host; host memory under load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use trellis_integration::{free_port, HostProcess, Lattice, NatsServer};

use crate::anchor::Anchor;
use crate::lattice::{self, rss_mib};
use crate::report::Figure;
use crate::{file_ref, Bench};

const SECTION: &str = "1. HTTP hello (requests/s, latency)";
const LOADS: [u32; 2] = [1, 50];
/// The in-process row with the component at `instances: 1` (measured at 50 connections only).
const SINGLE_INSTANCE: &str = "Trellis in-process http-server, instances: 1";
/// Least share of the 100-instance throughput the 1-instance row must reach, every request
/// answered 200.
const SINGLE_INSTANCE_SHARE: f64 = 0.7;

/// Measures the anchor (unless skipped) and the three Trellis paths side by side.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let hello = trellis_integration::guest("http_hello");
    let mut anchor_rates: HashMap<u32, f64> = HashMap::new();
    if let Some(bin) = bench.anchor_bin.clone() {
        let anchor = Anchor::start(&bin, &hello).await?;
        for connections in LOADS {
            let r = crate::wrk::run(
                &format!("http://{}/", anchor.addr),
                connections,
                bench.wrk_duration,
            )
            .await?;
            anchor_rates.insert(connections, r.requests_per_sec);
            bench.push(Figure {
                ratio: Some(1.0),
                ..wrk_figure("wasmtime serve (anchor)", connections, &r)
            });
        }
        drop(anchor);
    }

    let nats = NatsServer::start().await;
    let name = "bench-http";
    let host_a = HostProcess::start(&nats.url(), name, &[]).await;
    let host_b = HostProcess::start(&nats.url(), name, &[]).await;
    let lattice = Lattice::connect(&nats.url(), name).await;
    let wasm = file_ref(&hello);
    // As many instances as connections, so the limit is the work, not the instance count
    // (wasmtime serve has no limit at all).
    lattice::scale(&lattice, &host_a, &wasm, "hello", 100).await?;
    lattice::scale(&lattice, &host_b, &wasm, "hello-b", 100).await?;
    // The same app at one instance: requests queue for it (wasmCloud 1.x semantics) and must
    // all be answered, at close to the throughput of 100 instances.
    lattice::scale(&lattice, &host_a, &wasm, "hello-1", 1).await?;

    let paths = [
        (
            "Trellis in-process http-server",
            "http-inproc",
            "trellis+builtin://http-server",
            "hello",
        ),
        (
            SINGLE_INSTANCE,
            "http-inproc-1",
            "trellis+builtin://http-server",
            "hello-1",
        ),
        (
            "Trellis http-server process over NATS",
            "http-proc",
            "trellis+process://http-server",
            "hello",
        ),
        (
            "Trellis in-process http-server, component on 2nd host",
            "http-remote",
            "trellis+builtin://http-server",
            "hello-b",
        ),
    ];
    let mut addrs = Vec::new();
    for (_, provider, provider_ref, component) in paths {
        let addr = format!("127.0.0.1:{}", free_port());
        let config = format!("{provider}-addr");
        lattice::put_config(&lattice, &config, &[("address", &addr)]).await?;
        lattice::start_provider(&lattice, &host_a, provider, provider_ref, &[]).await?;
        lattice::link(
            &lattice,
            provider,
            component,
            ("wasi", "http"),
            &["incoming-handler"],
            &[&config],
        )
        .await?;
        lattice::wait_http_ok(
            &addr,
            "/",
            Duration::from_millis(20),
            Duration::from_secs(30),
        )
        .await?;
        addrs.push(addr);
    }

    let idle_a = rss_mib(host_a.pid())?;
    // Requests/s of the in-process path at 100 instances, 50 connections.
    let mut many_instances_rate = None;
    for ((label, provider, _, _), addr) in paths.iter().zip(&addrs) {
        for connections in LOADS {
            if *provider == "http-inproc-1" && connections != 50 {
                continue;
            }
            // Sample host A's memory while it serves (the in-process path at full load is
            // the footprint "under load").
            let sampling = Arc::new(AtomicBool::new(true));
            let sampler = {
                let sampling = sampling.clone();
                let pid = host_a.pid();
                tokio::spawn(async move {
                    let mut peak = 0f64;
                    while sampling.load(Ordering::Relaxed) {
                        if let Ok(rss) = rss_mib(pid) {
                            peak = peak.max(rss);
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    peak
                })
            };
            let r =
                crate::wrk::run(&format!("http://{addr}/"), connections, bench.wrk_duration).await;
            sampling.store(false, Ordering::Relaxed);
            let peak = sampler.await.unwrap_or(0.0);
            let r = r?;
            let ratio = anchor_rates
                .get(&connections)
                .map(|anchor| r.requests_per_sec / anchor);
            let mut figure = Figure {
                ratio,
                ..wrk_figure(label, connections, &r)
            };
            // The budgets: throughput ratios as measured there (wrk -c50), latency
            // at one connection.
            match (*provider, connections) {
                ("http-inproc", 50) => {
                    figure.budget = Some(">= 1.3x anchor".into());
                    figure.met = ratio.map(|x| x >= 1.3);
                    many_instances_rate = Some(r.requests_per_sec);
                }
                ("http-inproc-1", 50) => {
                    let share = many_instances_rate.map(|rate| r.requests_per_sec / rate);
                    figure.budget = Some(format!(
                        ">= {SINGLE_INSTANCE_SHARE}x of instances: 100, all 200"
                    ));
                    figure.met = share.map(|x| x >= SINGLE_INSTANCE_SHARE && r.errors == 0);
                    let answered = if r.errors == 0 {
                        format!("all {} requests 200", r.requests)
                    } else {
                        format!("{} errors of {} requests", r.errors, r.requests)
                    };
                    figure.note = match share {
                        Some(x) => format!("{x:.2}x of instances: 100; {answered}"),
                        None => format!("instances: 100 not measured; {answered}"),
                    };
                }
                ("http-proc", 50) => {
                    figure.budget = Some(">= 0.6x anchor".into());
                    figure.met = ratio.map(|x| x >= 0.6);
                }
                ("http-proc", 1) => {
                    figure.budget = Some("p50 < 0.4 ms".into());
                    figure.met = Some(r.p50_ms < 0.4);
                }
                _ => {}
            }
            bench.push(figure);
            if *provider == "http-inproc" && connections == 50 {
                // The same path on a host exporting traces of every request (see below).
                telemetry_row(bench, &nats.url(), name, &wasm, addr).await?;
            }
            if *provider == "http-inproc" && connections == 50 {
                bench.push(Figure {
                    section: crate::footprint::SECTION.into(),
                    scenario: "host RSS under load (in-process HTTP, 50 conn)".into(),
                    load: "peak while serving".into(),
                    value: Some(peak),
                    unit: "MiB".into(),
                    note: format!(
                        "host A runs hello (100 instances) and hello-1 (1), 4 http-server \
                         providers; {idle_a:.1} MiB before load"
                    ),
                    ..Figure::default()
                });
            }
        }
    }
    Ok(())
}

/// The in-process path with telemetry on (`--otel`, every request sampled), 50 connections,
/// against the same path with telemetry off (`off_addr`, host A's listener). Spans are
/// made, batched and encoded as in production; the collector is a closed port, so the cost
/// of a collector process on this 2-core machine stays out of the figure (export failures
/// cost one warning a minute).
///
/// Off and on run in turn, [`TELEMETRY_PAIRS`] times each, and the figure is the median of
/// the pairs' ratios: on a shared machine the load drifts within seconds, and two runs side
/// by side see the same drift where two runs a minute apart do not.
async fn telemetry_row(
    bench: &mut Bench,
    nats_url: &str,
    lattice_name: &str,
    wasm: &str,
    off_addr: &str,
) -> anyhow::Result<()> {
    let collector = format!("http://127.0.0.1:{}", free_port());
    let host = HostProcess::start_with_env(
        nats_url,
        lattice_name,
        &["--otel", "--otel-endpoint", &collector],
        &[("OTEL_TRACES_SAMPLER", "always_on".to_string())],
    )
    .await;
    let lattice = Lattice::connect(nats_url, lattice_name).await;
    lattice::scale(&lattice, &host, wasm, "hello-otel", 100).await?;
    let addr = format!("127.0.0.1:{}", free_port());
    lattice::put_config(&lattice, "http-otel-addr", &[("address", &addr)]).await?;
    lattice::start_provider(
        &lattice,
        &host,
        "http-otel",
        "trellis+builtin://http-server",
        &[],
    )
    .await?;
    lattice::link(
        &lattice,
        "http-otel",
        "hello-otel",
        ("wasi", "http"),
        &["incoming-handler"],
        &["http-otel-addr"],
    )
    .await?;
    lattice::wait_http_ok(
        &addr,
        "/",
        Duration::from_millis(20),
        Duration::from_secs(30),
    )
    .await?;
    let duration = (bench.wrk_duration / 2).max(Duration::from_secs(2));
    let mut pairs = Vec::with_capacity(TELEMETRY_PAIRS);
    for _ in 0..TELEMETRY_PAIRS {
        let off = crate::wrk::run(&format!("http://{off_addr}/"), 50, duration).await?;
        let on = crate::wrk::run(&format!("http://{addr}/"), 50, duration).await?;
        pairs.push((on.requests_per_sec / off.requests_per_sec, on));
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let shares: Vec<String> = pairs.iter().map(|(x, _)| format!("{x:.2}")).collect();
    let errors: u64 = pairs.iter().map(|(_, on)| on.errors).sum();
    let (share, median) = &pairs[pairs.len() / 2];
    bench.push(Figure {
        budget: Some(">= 0.85x of telemetry off".into()),
        met: Some(*share >= 0.85 && errors == 0),
        note: format!(
            "{share:.2}x of the same path with telemetry off (median of {TELEMETRY_PAIRS} \
             off/on pairs: {})",
            shares.join(", ")
        ),
        ..wrk_figure(
            "Trellis in-process http-server, traces on (all sampled)",
            50,
            median,
        )
    });
    Ok(())
}

/// How many off/on pairs [`telemetry_row`] runs (odd, for a median).
const TELEMETRY_PAIRS: usize = 3;

/// A figure from one `wrk` run.
pub fn wrk_figure(scenario: &str, connections: u32, r: &crate::wrk::WrkReport) -> Figure {
    Figure {
        section: SECTION.into(),
        scenario: scenario.into(),
        load: format!("{connections} conn"),
        rate: Some(r.requests_per_sec),
        p50_ms: Some(r.p50_ms),
        p99_ms: Some(r.p99_ms),
        note: if r.errors > 0 {
            format!("{} errors of {} requests", r.errors, r.requests)
        } else {
            String::new()
        },
        ..Figure::default()
    }
}

//! Section 5: host memory idle and with many components, and the binary's size.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use trellis_integration::{HostProcess, Lattice, NatsServer};
use trellis_protocol::events::CloudEvent;

use crate::lattice::{self, rss_mib};
use crate::report::Figure;
use crate::{file_ref, Bench};

/// Section heading (also used by the HTTP section for memory under load).
pub const SECTION: &str = "5. Footprint";

/// Idle RSS of a fresh host, RSS with `bench.components` components scaled, binary size.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let size = std::fs::metadata(&bench.trellis_bin)
        .with_context(|| format!("{}", bench.trellis_bin.display()))?
        .len();
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "`trellis` binary size (release)".into(),
        value: Some(size as f64 / 1024.0 / 1024.0),
        unit: "MiB".into(),
        note: "one binary: host, CLI, wadm, http-server provider process".into(),
        ..Figure::default()
    });

    let nats = NatsServer::start().await;
    let name = "bench-footprint";
    let host = HostProcess::start(&nats.url(), name, &[]).await;
    let lattice = Lattice::connect(&nats.url(), name).await;
    // Let start-up allocations settle (heartbeats, KV watchers).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib(host.pid())?;
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "host RSS idle".into(),
        load: "fresh host, nothing running".into(),
        value: Some(idle),
        unit: "MiB".into(),
        budget: Some("< 30 MiB".into()),
        met: Some(idle < 30.0),
        ..Figure::default()
    });

    let wasm = file_ref(&trellis_integration::guest("http_hello"));
    let count = bench.components;
    let mut sub = lattice::events(&lattice).await?;
    let started = Instant::now();
    // Requests go out a few at a time (the host compiles or loads each once) and stop when
    // the time box is used up; completions are counted from the events.
    let time_box = bench.footprint_time_box;
    let mut pending = futures::stream::iter(0..count)
        .map(|i| {
            let lattice = &lattice;
            let wasm = &wasm;
            let host_id = host.id.clone();
            async move {
                if started.elapsed() > time_box {
                    return Ok(false);
                }
                lattice::request_scale(lattice, &host_id, wasm, &format!("c{i}"), 1).await?;
                Ok::<_, anyhow::Error>(true)
            }
        })
        .buffer_unordered(4);
    let mut requested = 0usize;
    while let Some(result) = pending.next().await {
        if result? {
            requested += 1;
        }
    }
    drop(pending);
    let mut scaled = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while scaled.len() < requested {
        let msg = tokio::time::timeout_at(deadline, sub.next())
            .await
            .with_context(|| format!("only {} of {requested} components scaled", scaled.len()))?
            .context("event subscription closed")?;
        let Ok(event) = serde_json::from_slice::<CloudEvent>(&msg.payload) else {
            continue;
        };
        if event.name() == "component_scale_failed" {
            anyhow::bail!("scaling failed: {}", event.data["error"]);
        }
        if event.name() == "component_scaled" {
            if let Some(id) = event.data["component_id"].as_str() {
                scaled.insert(id.to_string());
            }
        }
    }
    let count = scaled.len();
    if count < bench.components {
        bench.problem(format!(
            "Footprint: only {count} of {} components were scaled within the {:?} time box \
             (scaling is slow: {:.0} ms per component); the RSS figure is for {count}.",
            bench.components,
            time_box,
            started.elapsed().as_secs_f64() * 1000.0 / count.max(1) as f64
        ));
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = rss_mib(host.pid())?;
    bench.push(Figure {
        section: SECTION.into(),
        scenario: format!("host RSS with {count} components scaled"),
        load: format!("{count} ids of http_hello.wasm, count 1 each"),
        value: Some(loaded),
        unit: "MiB".into(),
        note: format!(
            "{:.1} KiB per component over idle; all {count} scaled in {:.2} s",
            (loaded - idle) * 1024.0 / count as f64,
            took.as_secs_f64()
        ),
        ..Figure::default()
    });
    Ok(())
}

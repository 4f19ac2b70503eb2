//! Section 7: components from an OCI registry. A real `docker-registry` on loopback serves a
//! 2 MiB component (http-hello padded with a custom section); a fresh host scales it by digest
//! (pull, verify, cache, compile) to its first HTTP 200, then scales the same digest under new
//! component ids (OCI cache and compiled-code cache hits, no registry contact).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trellis_integration::oci::{trellis_with_env, EnvHost, Registry};
use trellis_integration::{free_port, Lattice, NatsServer};

use crate::lattice;
use crate::report::Figure;
use crate::Bench;

const DIST: &str = "7. Distribution";
/// The size of the pushed component, as the budget names it.
const COMPONENT_BYTES: usize = 2 * 1024 * 1024;

/// Appends a custom section named `padding` to `wasm` so it is at least `size` bytes; the
/// component stays valid (custom sections may follow any section).
fn padded(mut wasm: Vec<u8>, size: usize) -> Vec<u8> {
    let name = b"padding";
    let fill = size.saturating_sub(wasm.len() + 16).max(1);
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.resize(payload.len() + fill, 0);
    wasm.push(0);
    let mut n = payload.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            wasm.push(byte);
            break;
        }
        wasm.push(byte | 0x80);
    }
    wasm.extend_from_slice(&payload);
    wasm
}

/// Scales `id` from `image_ref` behind a freshly linked route; returns milliseconds from the
/// scale request to the first 200.
async fn scale_to_first_200(
    lattice: &Lattice,
    host: &EnvHost,
    image_ref: &str,
    id: &str,
    relink: bool,
) -> anyhow::Result<f64> {
    if relink {
        lattice::unlink(lattice, "http-dist", ("wasi", "http")).await?;
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let config = format!("{id}-addr");
    lattice::put_config(lattice, &config, &[("address", &addr)]).await?;
    lattice::link(
        lattice,
        "http-dist",
        id,
        ("wasi", "http"),
        &["incoming-handler"],
        &[&config],
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while lattice::http_get(&addr, "/").await.is_err() {
        if Instant::now() > deadline {
            bail!("the listener on {addr} did not open");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    lattice::request_scale(lattice, &host.id, image_ref, id, 1).await?;
    let served = lattice::wait_http_ok(
        &addr,
        "/",
        Duration::from_millis(1),
        Duration::from_secs(30),
    )
    .await
    .inspect_err(|_| eprintln!("host log (tail):\n{}", lattice::tail(&host.logs())))?;
    Ok(served.duration_since(started).as_secs_f64() * 1000.0)
}

/// Measures the uncached and the cached pull of a digest-pinned 2 MiB component.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let registry_installed = std::env::var_os("DOCKER_REGISTRY_BIN").is_some()
        || std::path::Path::new("/usr/bin/docker-registry").is_file();
    if !registry_installed {
        bail!("docker-registry is not installed (scripts/install-deps.sh installs it)");
    }
    let registry = Registry::start().await;
    let dir = tempfile::tempdir()?;
    let wasm = std::fs::read(trellis_integration::guest("http_hello"))
        .context("cannot read the http_hello component: build it with components/build.sh")?;
    let file = dir.path().join("hello-2mib.wasm");
    std::fs::write(&file, padded(wasm, COMPONENT_BYTES))?;
    let reference = format!("{}/bench/hello:2mib", registry.addr());
    let (ok, stdout, stderr) = trellis_with_env(
        &[
            "push",
            "--insecure",
            &reference,
            &file.display().to_string(),
            "--output",
            "json",
        ],
        &[],
    )
    .await;
    if !ok {
        bail!("trellis push failed: {stderr}");
    }
    let report: serde_json::Value = serde_json::from_str(&stdout).context("push output")?;
    let pinned = report["pinned"]
        .as_str()
        .context("push printed no pinned ref")?
        .to_string();

    let nats = NatsServer::start().await;
    let name = "bench-dist";
    let host = EnvHost::start(
        &nats.url(),
        name,
        &["--allowed-insecure", &registry.addr()],
        &[],
    )
    .await;
    let lattice = Lattice::connect(&nats.url(), name).await;
    lattice::start_provider_on(
        &lattice,
        &host.id,
        &|| host.logs(),
        "http-dist",
        "trellis+builtin://http-server",
        &[],
    )
    .await?;

    let uncached = scale_to_first_200(&lattice, &host, &pinned, "dist-0", false).await?;
    bench.push(Figure {
        section: DIST.into(),
        scenario: "component.scale by digest -> first 200, uncached 2 MiB component".into(),
        load: "1 sample".into(),
        value: Some(uncached),
        unit: "ms".into(),
        budget: Some("< 300 ms".into()),
        met: Some(uncached < 300.0),
        note: "local docker-registry on loopback: resolve, download, verify, cache, compile".into(),
        ..Figure::default()
    });

    let mut samples = Vec::new();
    for i in 1..=bench.cold_repeats {
        let id = format!("dist-{i}");
        samples.push(scale_to_first_200(&lattice, &host, &pinned, &id, true).await?);
    }
    samples.sort_by(f64::total_cmp);
    let median = samples.get(samples.len() / 2).copied().unwrap_or(uncached);
    bench.push(Figure {
        section: DIST.into(),
        scenario: "component.scale by digest -> first 200, cached (new component id)".into(),
        load: format!("median of {}", samples.len()),
        value: Some(median),
        unit: "ms".into(),
        budget: Some("< 5 ms".into()),
        met: Some(median < 5.0),
        note: format!(
            "OCI cache and compiled-code cache hits, no registry contact; min {:.1} ms, max {:.1} ms",
            samples.first().copied().unwrap_or(0.0),
            samples.last().copied().unwrap_or(0.0)
        ),
        ..Figure::default()
    });
    Ok(())
}

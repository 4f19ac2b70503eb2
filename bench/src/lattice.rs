//! A real lattice for measuring: control requests with the trellis-protocol types over plain
//! async-nats, event waits that fail fast, HTTP probes and process memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use trellis_integration::{HostProcess, Lattice};
use trellis_protocol::ctl::{Link, ScaleComponentCommand, StartProviderCommand};
use trellis_protocol::events::CloudEvent;
use trellis_protocol::subjects;

/// How long any single setup step may take before the harness gives up.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends a control request and fails unless the host accepted it.
pub async fn ctl(lattice: &Lattice, subject: String, body: &impl Serialize) -> anyhow::Result<()> {
    let reply = lattice
        .request::<serde_json::Value>(subject.clone(), body)
        .await?;
    if !reply.success {
        bail!("{subject} refused: {}", reply.message);
    }
    Ok(())
}

/// Stores named config `name`.
pub async fn put_config(
    lattice: &Lattice,
    name: &str,
    values: &[(&str, &str)],
) -> anyhow::Result<()> {
    let values: HashMap<&str, &str> = values.iter().copied().collect();
    ctl(lattice, lattice.subjects.config_put(name), &values).await
}

/// Subscribes to the lattice's events; call before the request whose outcome it waits for.
pub async fn events(lattice: &Lattice) -> anyhow::Result<async_nats::Subscriber> {
    let sub = lattice
        .client
        .subscribe(subjects::all_events(&lattice.name))
        .await
        .context("cannot subscribe to lattice events")?;
    lattice.client.flush().await.context("flush")?;
    Ok(sub)
}

/// Waits for event `ok` (success) or `failed` (returned as an error) about `id` in field `key`.
pub async fn outcome(
    sub: &mut async_nats::Subscriber,
    ok: &str,
    failed: &str,
    key: &str,
    id: &str,
) -> anyhow::Result<CloudEvent> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, sub.next())
            .await
            .with_context(|| format!("no {ok} event for {id} within {STEP_TIMEOUT:?}"))?
            .context("event subscription closed")?;
        let Ok(event) = serde_json::from_slice::<CloudEvent>(&msg.payload) else {
            continue;
        };
        if event.data[key] != id {
            continue;
        }
        if event.name() == ok {
            return Ok(event);
        }
        if event.name() == failed {
            bail!("{failed} for {id}: {}", event.data["error"]);
        }
    }
}

/// Starts provider `id` from `provider_ref` on `host` and waits until it runs.
pub async fn start_provider(
    lattice: &Lattice,
    host: &HostProcess,
    id: &str,
    provider_ref: &str,
    config: &[&str],
) -> anyhow::Result<()> {
    start_provider_on(lattice, &host.id, &|| host.logs(), id, provider_ref, config).await
}

/// [`start_provider`] on any host process: its id and a way to read its log.
pub async fn start_provider_on(
    lattice: &Lattice,
    host_id: &str,
    logs: &dyn Fn() -> String,
    id: &str,
    provider_ref: &str,
    config: &[&str],
) -> anyhow::Result<()> {
    let mut sub = events(lattice).await?;
    let command = StartProviderCommand {
        provider_id: id.to_string(),
        provider_ref: provider_ref.to_string(),
        host_id: host_id.to_string(),
        config: config.iter().map(|c| c.to_string()).collect(),
        annotations: None,
    };
    ctl(lattice, lattice.subjects.provider_start(host_id), &command).await?;
    outcome(
        &mut sub,
        "provider_started",
        "provider_start_failed",
        "provider_id",
        id,
    )
    .await
    .inspect_err(|_| eprintln!("host log (tail):\n{}", tail(&logs())))?;
    Ok(())
}

/// Sends `component.scale` without waiting for the outcome.
pub async fn request_scale(
    lattice: &Lattice,
    host_id: &str,
    wasm_ref: &str,
    id: &str,
    count: u32,
) -> anyhow::Result<()> {
    let command = ScaleComponentCommand {
        component_ref: wasm_ref.to_string(),
        component_id: id.to_string(),
        max_instances: count,
        host_id: host_id.to_string(),
        ..ScaleComponentCommand::default()
    };
    // Scaling may wait for a compilation: a longer bound than async-nats' default.
    let subject = lattice.subjects.component_scale(host_id);
    let request = async_nats::Request::new()
        .payload(serde_json::to_vec(&command)?.into())
        .timeout(Some(STEP_TIMEOUT));
    let msg = lattice
        .client
        .send_request(subject.clone(), request)
        .await
        .with_context(|| format!("request on {subject} failed"))?;
    let reply: trellis_protocol::ctl::CtlResponse<serde_json::Value> =
        serde_json::from_slice(&msg.payload)
            .with_context(|| format!("reply on {subject} is not a control envelope"))?;
    if !reply.success {
        bail!("{subject} refused: {}", reply.message);
    }
    Ok(())
}

/// Deletes the default link of `source` on `namespace:package`.
pub async fn unlink(
    lattice: &Lattice,
    source: &str,
    (namespace, package): (&str, &str),
) -> anyhow::Result<()> {
    let request = trellis_protocol::ctl::DeleteLinkRequest {
        source_id: source.to_string(),
        name: "default".to_string(),
        wit_namespace: namespace.to_string(),
        wit_package: package.to_string(),
    };
    ctl(lattice, lattice.subjects.link_del(), &request).await
}

/// Scales component `id` from `wasm_ref` to `count` on `host` and waits until it is scaled.
pub async fn scale(
    lattice: &Lattice,
    host: &HostProcess,
    wasm_ref: &str,
    id: &str,
    count: u32,
) -> anyhow::Result<()> {
    let mut sub = events(lattice).await?;
    request_scale(lattice, &host.id, wasm_ref, id, count).await?;
    outcome(
        &mut sub,
        "component_scaled",
        "component_scale_failed",
        "component_id",
        id,
    )
    .await
    .inspect_err(|_| eprintln!("host log (tail):\n{}", tail(&host.logs())))?;
    Ok(())
}

/// Puts a link from `source` to `target` on `namespace:package/{interfaces}`.
pub async fn link(
    lattice: &Lattice,
    source: &str,
    target: &str,
    (namespace, package): (&str, &str),
    interfaces: &[&str],
    source_config: &[&str],
) -> anyhow::Result<()> {
    let link = Link {
        source_id: source.to_string(),
        target: target.to_string(),
        name: "default".to_string(),
        wit_namespace: namespace.to_string(),
        wit_package: package.to_string(),
        interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
        source_config: source_config.iter().map(|c| c.to_string()).collect(),
        target_config: Vec::new(),
    };
    ctl(lattice, lattice.subjects.link_put(), &link).await
}

/// One `GET` with `connection: close`: status and body.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("the response has no end of headers")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()
            .context("bad status")?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)?
        } else {
            body.to_string()
        };
        Ok::<_, anyhow::Error>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("no response within 10 s")?
}

/// Decodes a chunked body.
fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("chunk size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("chunk end")?;
    }
}

/// Polls `GET path` every `interval` until it answers 200; returns when it did.
pub async fn wait_http_ok(
    addr: &str,
    path: &str,
    interval: Duration,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let started = Instant::now();
    let mut last;
    loop {
        match http_get(addr, path).await {
            Ok((200, _)) => return Ok(Instant::now()),
            Ok((status, body)) => last = format!("{status} {}", body.trim()),
            Err(e) => last = format!("{e:#}"),
        }
        if started.elapsed() > limit {
            bail!("{addr}{path} did not answer 200 within {limit:?}; last: {last}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// Resident memory of process `pid` in MiB (`VmRSS` of /proc/PID/status).
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS line")?
        .parse()
        .context("bad VmRSS value")?;
    Ok(kb / 1024.0)
}

/// The last lines of a log, for error messages.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

//! The http-server provider as its own process: the child side ([`run_provider_process`],
//! behind `trellis provider http-server`) and the host side that starts and supervises it
//! ([`start_supervised`]).
//!
//! Start-up follows wasmCloud: the host writes one line of base64-encoded JSON host data
//! ([`ProviderHostData`]) on the child's stdin and keeps stdin open; the child exits when it
//! reads end-of-file (its host is gone), on SIGTERM/SIGINT, or when asked on its shutdown
//! subject. The host health-checks it on `trellis.provider.{lattice}.{provider_id}.health`,
//! publishes `health_check_passed`/`health_check_failed` when that changes, and restarts a
//! dead or unresponsive child with exponential back-off.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use trellis_host::providers::{ProviderSpec, RunningProvider};
use trellis_host::Host;
use trellis_protocol::events::names;

use super::NAME;

/// Overrides the executable spawned for provider processes (default: this executable).
pub const PROVIDER_EXE_ENV: &str = "TRELLIS_PROVIDER_EXE";
/// How often the host health-checks a provider process.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long one health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed checks in a row after which a live but unresponsive child is killed and restarted.
const UNHEALTHY_LIMIT: u32 = 3;
/// How long a freshly started child may take to answer its first health check.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// First and largest restart back-off.
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A child healthy this long resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Largest host-data line accepted on stdin.
const MAX_HOST_DATA: u64 = 1024 * 1024;

/// What the host tells a provider process at start (one base64 JSON line on stdin). Field
/// names follow wasmCloud's host data; unknown fields are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderHostData {
    /// The host that started the provider.
    #[serde(default)]
    pub host_id: String,
    /// The lattice name.
    #[serde(default)]
    pub lattice_rpc_prefix: String,
    /// The NATS URL.
    #[serde(default)]
    pub lattice_rpc_url: String,
    /// The provider id.
    #[serde(default)]
    pub provider_key: String,
    /// The provider's merged config.
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// The JetStream domain holding the lattice's state (wasmCloud's `js_domain`), when the
    /// host was started with `--js-domain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub js_domain: Option<String>,
}

impl ProviderHostData {
    /// The stdin line: base64 of the JSON, newline-terminated.
    pub fn encode_line(&self) -> anyhow::Result<String> {
        let json = serde_json::to_vec(self).context("encoding the provider host data")?;
        Ok(format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(json)
        ))
    }

    /// Parses the stdin line.
    pub fn decode_line(line: &str) -> anyhow::Result<Self> {
        let json = base64::engine::general_purpose::STANDARD
            .decode(line.trim())
            .context("the host data on stdin is not base64")?;
        let data: Self = serde_json::from_slice(&json)
            .context("the host data on stdin is not the expected JSON")?;
        if data.lattice_rpc_url.is_empty()
            || data.lattice_rpc_prefix.is_empty()
            || data.provider_key.is_empty()
        {
            bail!("the host data must name `lattice_rpc_url`, `lattice_rpc_prefix` and `provider_key`");
        }
        Ok(data)
    }
}

/// The subject a provider process answers health checks on.
pub fn health_subject(lattice: &str, provider_id: &str) -> String {
    format!("trellis.provider.{lattice}.{provider_id}.health")
}

/// The subject a provider process accepts a shutdown request on.
pub fn shutdown_subject(lattice: &str, provider_id: &str) -> String {
    format!("trellis.provider.{lattice}.{provider_id}.shutdown")
}

/// True for the names `trellis provider NAME` accepts for the HTTP server.
fn is_http_server_name(name: &str) -> bool {
    matches!(name, "http-server" | "http_server" | "httpserver")
}

/// Runs provider `name` as this process (`trellis provider NAME`): reads the host data line
/// on stdin, connects to NATS and serves until stdin closes, SIGTERM/SIGINT, or a shutdown
/// request. Only `http-server` runs this way.
pub async fn run_provider_process(name: &str) -> anyhow::Result<()> {
    if !is_http_server_name(name) {
        bail!("provider `{name}` cannot run as a separate process; only `http-server` can");
    }
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).take(MAX_HOST_DATA);
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .await
        .context("reading the host data from stdin")?;
    let data = ProviderHostData::decode_line(&line)?;
    // EOF on stdin means the host is gone. It is watched from here on, so a host killed while
    // this process still starts (say, waiting for a NATS server that is gone too) cannot leave
    // it behind.
    let (gone_tx, host_gone) = tokio::sync::watch::channel(false);
    let mut stdin = stdin.into_inner();
    let watcher = tokio::spawn(async move {
        let mut sink = [0u8; 256];
        while let Ok(1..) = stdin.read(&mut sink).await {}
        let _ = gone_tx.send(true);
    });
    let served = serve_for_host(&data, host_gone).await;
    watcher.abort();
    served
}

/// Serves the lattice `data` names until the host is gone, a signal, or a shutdown request.
async fn serve_for_host(
    data: &ProviderHostData,
    mut host_gone: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let terminate = terminate_signal();
    tokio::pin!(terminate);
    let started = tokio::select! {
        started = start_for_host(data) => started?,
        _ = host_gone.wait_for(|gone| *gone) => {
            tracing::info!("stdin closed while starting: the host is gone; stopping");
            return Ok(());
        }
        () = &mut terminate => {
            tracing::info!("signal received while starting; stopping");
            return Ok(());
        }
    };
    let Started {
        client,
        mut health,
        mut shutdown,
        server,
    } = started;
    loop {
        tokio::select! {
            Some(ping) = health.next() => {
                if let Some(reply) = ping.reply {
                    let _ = client.publish(reply, Bytes::from_static(b"ok")).await;
                }
            }
            Some(request) = shutdown.next() => {
                if let Some(reply) = request.reply {
                    let _ = client.publish(reply, Bytes::from_static(b"stopping")).await;
                }
                tracing::info!("shutdown requested by the host");
                break;
            }
            _ = host_gone.wait_for(|gone| *gone) => {
                tracing::info!("stdin closed: the host is gone; stopping");
                break;
            }
            () = &mut terminate => {
                tracing::info!("signal received; stopping");
                break;
            }
        }
    }
    Box::new(server).stop().await;
    let _ = client.flush().await;
    Ok(())
}

/// What a provider process runs once started: its lattice connection, the subscriptions the
/// host talks to it on, and the provider itself.
struct Started {
    client: async_nats::Client,
    health: async_nats::Subscriber,
    shutdown: async_nats::Subscriber,
    server: super::HttpServer,
}

/// Connects to the lattice and starts the http-server provider.
async fn start_for_host(data: &ProviderHostData) -> anyhow::Result<Started> {
    // Credentials and TLS come from the environment the host set (TRELLIS_NATS_*).
    let (url, options) = trellis_protocol::nats::NatsAuth::from_env()
        .connect_options(&data.lattice_rpc_url)
        .await?;
    let client = options
        .name(format!("trellis provider {NAME} {}", data.provider_key))
        .connect(trellis_protocol::nats::server_list(&url))
        .await
        .map_err(|e| trellis_protocol::nats::connect_error(&data.lattice_rpc_url, e, ""))?;
    let lattice = data.lattice_rpc_prefix.clone();
    let provider_id = data.provider_key.clone();
    let health = client
        .subscribe(health_subject(&lattice, &provider_id))
        .await
        .context("subscribing to health checks")?;
    let shutdown = client
        .subscribe(shutdown_subject(&lattice, &provider_id))
        .await
        .context("subscribing to shutdown requests")?;
    let mut placement = trellis_protocol::jetstream::JetStreamPlacement::from_env();
    if data.js_domain.is_some() {
        placement.js_domain = data.js_domain.clone();
    }
    let server = super::start_standalone(
        client.clone(),
        &lattice,
        &placement,
        &provider_id,
        &data.config,
    )
    .await?;
    client.flush().await.context("flushing subscriptions")?;
    tracing::info!(provider_id, lattice, "http-server provider process ready");
    Ok(Started {
        client,
        health,
        shutdown,
        server,
    })
}

async fn terminate_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A provider process started and supervised by the host.
pub struct SupervisedProcess {
    name: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for SupervisedProcess {
    fn drop(&mut self) {
        // Aborting drops the child, which is killed on drop.
        self.task.abort();
    }
}

impl RunningProvider for SupervisedProcess {
    fn name(&self) -> &str {
        &self.name
    }

    fn stop(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let task = &mut self.task;
            if tokio::time::timeout(Duration::from_secs(6), task)
                .await
                .is_err()
            {
                self.task.abort();
            }
        })
    }
}

/// A running child and the stdin that keeps it alive.
struct ChildProcess {
    child: Child,
    _stdin: ChildStdin,
}

struct Supervisor {
    host: Arc<Host>,
    spec: ProviderSpec,
    provider_name: String,
}

impl Supervisor {
    fn data_line(&self) -> anyhow::Result<String> {
        ProviderHostData {
            host_id: self.host.identity.host_id.clone(),
            lattice_rpc_prefix: self.host.lattice.clone(),
            lattice_rpc_url: self.host.nats_url_bare(),
            provider_key: self.spec.id.clone(),
            config: self.spec.config.clone(),
            js_domain: self.host.jetstream.js_domain.clone(),
        }
        .encode_line()
    }

    /// Spawns the child and writes its host data.
    async fn spawn(&self) -> anyhow::Result<ChildProcess> {
        let exe = match std::env::var_os(PROVIDER_EXE_ENV) {
            Some(exe) => exe.into(),
            None => std::env::current_exe()
                .context("cannot find this executable to start the provider process")?,
        };
        let mut command = Command::new(&exe);
        // The host's own NATS credentials and TLS settings, through the environment only
        // (never argv, which any local user can read): the child reads them back with
        // `NatsAuth::from_env`.
        for name in trellis_protocol::nats::ENV_VARS {
            command.env_remove(name);
        }
        command.envs(self.host.child_nats_env());
        // The host's telemetry settings (`--otel`...), so the provider exports the same way.
        command.envs(trellis_telemetry::child_env());
        // Where the lattice's state lives (`--js-domain`, `--kv-replicas`).
        command.envs(self.host.jetstream.child_env());
        let mut child = command
            .args(["provider", &self.provider_name])
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start `{} provider {}`",
                    exe.display(),
                    self.provider_name
                )
            })?;
        let mut stdin = child
            .stdin
            .take()
            .context("the provider process has no stdin")?;
        stdin
            .write_all(self.data_line()?.as_bytes())
            .await
            .context("writing the host data to the provider process")?;
        stdin
            .flush()
            .await
            .context("writing the host data to the provider process")?;
        Ok(ChildProcess {
            child,
            _stdin: stdin,
        })
    }

    async fn check_health(&self) -> bool {
        let request = async_nats::Request::new().timeout(Some(HEALTH_TIMEOUT));
        self.host
            .client
            .send_request(health_subject(&self.host.lattice, &self.spec.id), request)
            .await
            .is_ok()
    }

    /// Waits for the first successful health check; fails if the child exits or it takes
    /// too long.
    async fn wait_healthy(&self, process: &mut ChildProcess) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = process
                .child
                .try_wait()
                .context("checking the provider process")?
            {
                bail!("the provider process exited during start-up ({status})");
            }
            if self.check_health().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the provider process did not answer health checks within {} s",
                    START_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn publish_health(&self, passed: bool, reason: &str) {
        let name = if passed {
            names::HEALTH_CHECK_PASSED
        } else {
            names::HEALTH_CHECK_FAILED
        };
        self.host
            .events
            .publish(
                name,
                serde_json::json!({
                    "provider_id": self.spec.id,
                    "host_id": self.host.identity.host_id,
                    "image_ref": self.spec.image_ref,
                    "reason": reason,
                }),
            )
            .await;
    }

    /// Asks the child to stop, then kills it if it does not.
    async fn stop_child(&self, mut process: ChildProcess) {
        let request = async_nats::Request::new().timeout(Some(Duration::from_secs(1)));
        let _ = self
            .host
            .client
            .send_request(shutdown_subject(&self.host.lattice, &self.spec.id), request)
            .await;
        if tokio::time::timeout(Duration::from_secs(4), process.child.wait())
            .await
            .is_err()
        {
            let _ = process.child.kill().await;
        }
    }

    /// Supervises `process` until `stop`: health checks, restarts with back-off.
    async fn run(self, first: ChildProcess, mut stop: oneshot::Receiver<()>) {
        let mut process = Some(first);
        let mut healthy = true;
        let mut failures = 0u32;
        let mut backoff = BACKOFF_START;
        let mut healthy_since = tokio::time::Instant::now();
        self.publish_health(true, "started").await;
        loop {
            let Some(current) = process.as_mut() else {
                // Restart after the back-off, unless told to stop.
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                match self.spawn().await {
                    Ok(mut started) => match self.wait_healthy(&mut started).await {
                        Ok(()) => {
                            tracing::info!(provider_id = %self.spec.id, "provider process restarted");
                            healthy = true;
                            failures = 0;
                            healthy_since = tokio::time::Instant::now();
                            self.publish_health(true, "restarted").await;
                            process = Some(started);
                        }
                        Err(error) => {
                            tracing::warn!(provider_id = %self.spec.id, error = %format!("{error:#}"), "provider process restart failed");
                            let _ = started.child.kill().await;
                        }
                    },
                    Err(error) => {
                        tracing::warn!(provider_id = %self.spec.id, error = %format!("{error:#}"), "cannot restart the provider process");
                    }
                }
                continue;
            };
            tokio::select! {
                _ = &mut stop => {
                    if let Some(current) = process.take() {
                        self.stop_child(current).await;
                    }
                    return;
                }
                status = current.child.wait() => {
                    let reason = match status {
                        Ok(status) => format!("the provider process exited ({status})"),
                        Err(error) => format!("the provider process could not be waited for: {error}"),
                    };
                    tracing::warn!(provider_id = %self.spec.id, %reason, "restarting the provider process");
                    process = None;
                    if healthy_since.elapsed() >= STABLE_AFTER {
                        backoff = BACKOFF_START;
                    }
                    self.publish_health(false, &reason).await;
                    healthy = false;
                }
                () = tokio::time::sleep(HEALTH_INTERVAL) => {
                    if self.check_health().await {
                        failures = 0;
                        if !healthy {
                            healthy = true;
                            healthy_since = tokio::time::Instant::now();
                            self.publish_health(true, "health check answered").await;
                        }
                    } else {
                        failures += 1;
                        if healthy {
                            healthy = false;
                            self.publish_health(false, "health check not answered").await;
                        }
                        if failures >= UNHEALTHY_LIMIT {
                            tracing::warn!(provider_id = %self.spec.id, failures, "the provider process stopped answering; killing it to restart");
                            let _ = current.child.kill().await;
                        }
                    }
                }
            }
        }
    }
}

/// Starts provider `provider_name` as a child process of `host` and supervises it. Returns
/// once the child answers its first health check.
pub async fn start_supervised(
    host: Arc<Host>,
    spec: ProviderSpec,
    provider_name: &str,
) -> anyhow::Result<Box<dyn RunningProvider>> {
    if !is_http_server_name(provider_name) {
        bail!(
            "provider `{provider_name}` cannot run as a separate process; only `http-server` can"
        );
    }
    let supervisor = Supervisor {
        host,
        spec,
        provider_name: NAME.to_string(),
    };
    let mut first = supervisor.spawn().await?;
    if let Err(error) = supervisor.wait_healthy(&mut first).await {
        let _ = first.child.kill().await;
        return Err(error);
    }
    let (stop, stop_rx) = oneshot::channel();
    let task = tokio::spawn(supervisor.run(first, stop_rx));
    Ok(Box::new(SupervisedProcess {
        name: NAME.to_string(),
        stop: Some(stop),
        task,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_data_round_trips_and_rejects_garbage() {
        let data = ProviderHostData {
            host_id: "NHOST".into(),
            lattice_rpc_prefix: "default".into(),
            lattice_rpc_url: "nats://127.0.0.1:4222".into(),
            provider_key: "http".into(),
            config: HashMap::from([("routing_mode".into(), "path".into())]),
            js_domain: Some("hub".into()),
        };
        let line = data.encode_line().unwrap();
        let back = ProviderHostData::decode_line(&line).unwrap();
        assert_eq!(back.provider_key, "http");
        assert_eq!(back.js_domain.as_deref(), Some("hub"));
        assert_eq!(
            back.config.get("routing_mode").map(String::as_str),
            Some("path")
        );
        assert!(ProviderHostData::decode_line("not base64!").is_err());
        assert!(ProviderHostData::decode_line("e30=").is_err()); // {}
    }
}

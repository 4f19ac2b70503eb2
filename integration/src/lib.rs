//! Test support for the end-to-end tests: a real `nats-server` per test, real `trellis`
//! processes, and the guest components built from this repository.
//!
//! Everything here talks to the system from outside, the way a user or a third-party client
//! would: NATS requests and events, HTTP over sockets, process signals.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use trellis_protocol::ctl::{CtlResponse, Host};
use trellis_protocol::events::CloudEvent;
use trellis_protocol::nats::NatsAuth;
use trellis_protocol::subjects::{self, CtlSubjects};

pub mod oci;
pub mod relay;

/// A generous bound for anything a test waits on. Tests wait on events, not on sleeps; this
/// only keeps a broken build from hanging CI.
pub const WAIT: Duration = Duration::from_secs(30);

/// The repository root. Cargo sets `CARGO_MANIFEST_DIR` when it runs a test, so that wins
/// over the directory this crate was compiled in: a shared target dir can hold test binaries
/// built from another checkout of the same sources.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free local port")
}

fn find_nats_server() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = Path::new(dir).join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("nats-server not found: install it with `sudo apt-get install -y nats-server`");
}

/// A `nats-server` child process with JetStream in a temporary directory; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    max_payload: Option<usize>,
    /// Extra nats-server configuration (authorization, accounts, TLS...).
    config: Option<String>,
    /// How the harness itself connects (the readiness check, [`NatsServer::client`]).
    auth: NatsAuth,
    /// The HTTP monitoring port (`-m`), when asked for.
    monitor_port: Option<u16>,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Like [`NatsServer::start`] with the server's `max_payload` (largest message) set to
    /// `bytes` instead of the default 1 MiB.
    pub async fn start_with_max_payload(bytes: usize) -> Self {
        Self::start_with(Some(bytes)).await
    }

    /// Like [`NatsServer::start`] with `config` as the server's configuration file (an
    /// `authorization {}`, `accounts {}` or `tls {}` block: the port and JetStream store still
    /// come from the command line). The harness connects with `auth`, which must be allowed
    /// and see JetStream.
    pub async fn start_with_config(config: &str, auth: NatsAuth) -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        let mut server = Self {
            child: None,
            port: free_port(),
            store,
            max_payload: None,
            config: Some(config.to_string()),
            auth,
            monitor_port: None,
        };
        server.spawn().await;
        server
    }

    async fn start_with(max_payload: Option<usize>) -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        let mut server = Self {
            child: None,
            port: free_port(),
            store,
            max_payload,
            config: None,
            auth: NatsAuth::default(),
            monitor_port: None,
        };
        server.spawn().await;
        server
    }

    /// Like [`NatsServer::start`] with the server's HTTP monitoring endpoint on a free port, for
    /// [`NatsServer::monitor`].
    pub async fn start_monitored() -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        let mut server = Self {
            child: None,
            port: free_port(),
            store,
            max_payload: None,
            config: None,
            auth: NatsAuth::default(),
            monitor_port: Some(free_port()),
        };
        server.spawn().await;
        server
    }

    /// The JSON the server's monitoring endpoint answers for `path` (`/varz`, `/jsz`, `/connz?subs=1`
    /// ...); the server must have been started with [`NatsServer::start_monitored`].
    pub async fn monitor(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let port = self
            .monitor_port
            .context("this nats-server was started without a monitoring port")?;
        let (status, body) = http_get(&format!("127.0.0.1:{port}"), path)
            .await
            .with_context(|| format!("the monitoring endpoint did not answer {path}"))?;
        anyhow::ensure!(status == 200, "{path} answered {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("{path} answered no JSON: {body}"))
    }

    async fn spawn(&mut self) {
        let mut command = Command::new(find_nats_server());
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path());
        if let Some(port) = self.monitor_port {
            command.args(["-m", &port.to_string()]);
        }
        if let Some(max) = self.max_payload {
            let config = self.store.path().join("nats.conf");
            std::fs::write(&config, format!("max_payload: {max}\n")).expect("nats config");
            command.arg("-c").arg(config);
        }
        if let Some(text) = &self.config {
            let config = self.store.path().join("nats-auth.conf");
            std::fs::write(&config, text).expect("nats config");
            command.arg("-c").arg(config);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                // JetStream may still be starting: wait until it answers.
                if let Ok(client) = connect_with(&self.url(), &self.auth).await {
                    let js = async_nats::jetstream::new(client);
                    if js.query_account().await.is_ok() {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (abruptly) without restarting it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port with the same JetStream store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A client connection (with the harness's credentials, if the server wants some).
    pub async fn client(&self) -> async_nats::Client {
        connect_with(&self.url(), &self.auth)
            .await
            .expect("cannot connect to test nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connects to `url` with `auth`, the way every Trellis process does.
pub async fn connect_with(url: &str, auth: &NatsAuth) -> anyhow::Result<async_nats::Client> {
    let (url, options) = auth.connect_options(url).await?;
    Ok(options
        .connect(trellis_protocol::nats::server_list(&url))
        .await?)
}

/// The `trellis` binary built from this workspace.
pub fn trellis_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TRELLIS_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().expect("current_exe");
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("trellis"))
        .expect("target dir");
    assert!(
        candidate.is_file(),
        "{} is missing: build it first with `cargo build -p trellis-cli` (scripts/test.sh does this)",
        candidate.display()
    );
    candidate
}

/// Builds the guest components once per test process and returns the directory of the
/// `.wasm` files.
pub fn guest_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = repo_root();
            let status = Command::new("bash")
                .arg(root.join("components/build.sh"))
                .stdout(Stdio::null())
                .status()
                .expect("cannot run components/build.sh");
            assert!(status.success(), "building the guest components failed");
            root.join("components/target/wasm32-wasip2/release")
        })
        .clone()
}

/// The path of guest component `name` (e.g. `http_hello`), built from source.
pub fn guest(name: &str) -> PathBuf {
    let path = guest_dir().join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A `trellis host` child process; killed on drop.
pub struct HostProcess {
    child: Option<Child>,
    /// The host id (from the seed the harness gave it).
    pub id: String,
    seed: String,
    args: Vec<String>,
    /// NATS credentials, handed over in the environment.
    env: Vec<(&'static str, String)>,
    /// Where its logs go.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl HostProcess {
    /// Starts `trellis host` on `nats_url`/`lattice` with file loading allowed, a 500 ms
    /// heartbeat (unless `extra` sets one) and `extra` flags, and waits until it answers
    /// `host.ping`.
    pub async fn start(nats_url: &str, lattice: &str, extra: &[&str]) -> Self {
        let seed = nkeys::KeyPair::new_server().seed().expect("seed");
        Self::start_with_seed(nats_url, lattice, extra, seed, true).await
    }

    /// Like [`HostProcess::start`] with a given nkeys server seed, and file loading allowed
    /// or not.
    pub async fn start_with_seed(
        nats_url: &str,
        lattice: &str,
        extra: &[&str],
        seed: String,
        allow_file_load: bool,
    ) -> Self {
        Self::start_full(
            nats_url,
            lattice,
            extra,
            seed,
            allow_file_load,
            &NatsAuth::default(),
            &[],
        )
        .await
    }

    /// Like [`HostProcess::start`] with extra environment variables (e.g. `OTEL_*`).
    pub async fn start_with_env(
        nats_url: &str,
        lattice: &str,
        extra: &[&str],
        env: &[(&'static str, String)],
    ) -> Self {
        let seed = nkeys::KeyPair::new_server().seed().expect("seed");
        Self::start_full(
            nats_url,
            lattice,
            extra,
            seed,
            true,
            &NatsAuth::default(),
            env,
        )
        .await
    }

    /// Like [`HostProcess::start`] with NATS credentials and TLS settings `auth`, which the
    /// host gets through its environment (TRELLIS_NATS_*); the harness waits for it with the
    /// same credentials.
    pub async fn start_with_auth(
        nats_url: &str,
        lattice: &str,
        extra: &[&str],
        auth: &NatsAuth,
    ) -> Self {
        let seed = nkeys::KeyPair::new_server().seed().expect("seed");
        Self::start_full(nats_url, lattice, extra, seed, true, auth, &[]).await
    }

    async fn start_full(
        nats_url: &str,
        lattice: &str,
        extra: &[&str],
        seed: String,
        allow_file_load: bool,
        auth: &NatsAuth,
        extra_env: &[(&'static str, String)],
    ) -> Self {
        let id = nkeys::KeyPair::from_seed(&seed).expect("seed").public_key();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec![
            "host".to_string(),
            "--nats-url".into(),
            nats_url.into(),
            "--lattice".into(),
            lattice.into(),
        ];
        // A fast heartbeat keeps tests short; a caller that sets its own (the benchmark's
        // fleet runs the default) keeps it, as the flag may be given only once.
        if !extra
            .iter()
            .any(|a| a.starts_with("--heartbeat-interval-ms"))
        {
            args.extend(["--heartbeat-interval-ms".into(), "500".into()]);
        }
        if allow_file_load {
            args.push("--allow-file-load".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut host = Self {
            child: None,
            id,
            seed,
            args,
            env: auth
                .child_env(nats_url)
                .into_iter()
                .chain(extra_env.iter().cloned())
                .collect(),
            log: dir.path().join("host.log"),
            _dir: dir,
        };
        host.spawn();
        let lattice_client = Lattice::connect_with(nats_url, lattice, auth).await;
        lattice_client
            .wait_for_host(&host.id)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
        host
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(trellis_bin())
            .args(&self.args)
            // As a user would: from the repository root, where manifests' relative
            // `file://./components/...` refs resolve.
            .current_dir(repo_root())
            .env("TRELLIS_HOST_SEED", &self.seed)
            .envs(self.env.iter().cloned())
            .env("TRELLIS_CACHE_DIR", self._dir.path().join("cache"))
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("cannot start trellis host");
        self.child = Some(child);
    }

    /// The host's log so far (for failure messages).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends a signal (e.g. `TERM`, `KILL`) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status();
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + WAIT;
        let child = self.child.as_mut().context("not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("host did not exit; log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process and starts it again with the same identity and flags.
    pub async fn restart(&mut self, nats_url: &str, lattice: &str) {
        self.kill();
        self.spawn();
        Lattice::connect(nats_url, lattice)
            .await
            .wait_for_host(&self.id)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", self.logs()));
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `body` to the wadm API operation `op` (`put`, `get`, `versions`, ...) on model
/// `name` (none for `put` and the list) and returns the JSON reply. Retries while nobody
/// serves the API yet; panics when nothing answers within [`WAIT`].
pub async fn wadm_request(
    client: &async_nats::Client,
    lattice: &str,
    op: &str,
    name: Option<&str>,
    body: Vec<u8>,
) -> serde_json::Value {
    let subject = match name {
        Some(n) => format!("wadm.api.{lattice}.model.{op}.{n}"),
        None => format!("wadm.api.{lattice}.model.{op}"),
    };
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout(WAIT, client.request(subject.clone(), body.clone().into())).await
        {
            Ok(Ok(msg)) => {
                return serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
                    panic!(
                        "reply on {subject} is not JSON ({e}): {}",
                        String::from_utf8_lossy(&msg.payload)
                    )
                })
            }
            Ok(Err(e)) => {
                assert!(Instant::now() < deadline, "no API on {subject}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => panic!("no reply on {subject} within {WAIT:?}"),
        }
    }
}

/// Sends one control request on `subject` and asserts the lattice accepted it (panics with the
/// reply's message otherwise).
pub async fn control_ok(lattice: &Lattice, subject: String, body: serde_json::Value) {
    let reply = lattice
        .request::<serde_json::Value>(subject.clone(), &body)
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e:#}"));
    assert!(reply.success, "{subject} refused: {}", reply.message);
}

/// Puts the named config `name` with `values` (`config.put`), asserting it was accepted.
pub async fn put_config(lattice: &Lattice, name: &str, values: &[(&str, &str)]) {
    let values: std::collections::HashMap<&str, &str> = values.iter().copied().collect();
    control_ok(
        lattice,
        lattice.subjects.config_put(name),
        serde_json::json!(values),
    )
    .await;
}

/// A third-party view of one lattice: control requests and events over plain NATS.
pub struct Lattice {
    /// The NATS client.
    pub client: async_nats::Client,
    /// The lattice name.
    pub name: String,
    /// Control subjects.
    pub subjects: CtlSubjects,
}

impl Lattice {
    /// Connects to `nats_url` for lattice `name`.
    pub async fn connect(nats_url: &str, name: &str) -> Self {
        Self::connect_with(nats_url, name, &NatsAuth::default()).await
    }

    /// Connects to `nats_url` for lattice `name` with credentials and TLS settings `auth`.
    pub async fn connect_with(nats_url: &str, name: &str, auth: &NatsAuth) -> Self {
        let client = connect_with(nats_url, auth)
            .await
            .expect("cannot connect to NATS");
        Self {
            client,
            name: name.to_string(),
            subjects: CtlSubjects::new(name),
        }
    }

    /// Sends raw bytes to a control subject and decodes the envelope.
    pub async fn request_raw<T: DeserializeOwned>(
        &self,
        subject: String,
        body: Vec<u8>,
    ) -> anyhow::Result<CtlResponse<T>> {
        let msg = tokio::time::timeout(WAIT, self.client.request(subject.clone(), body.into()))
            .await
            .with_context(|| format!("no reply on {subject}"))?
            .with_context(|| format!("request on {subject} failed"))?;
        serde_json::from_slice(&msg.payload).with_context(|| {
            format!(
                "reply on {subject} is not a control envelope: {}",
                String::from_utf8_lossy(&msg.payload)
            )
        })
    }

    /// Sends a JSON body to a control subject.
    pub async fn request<T: DeserializeOwned>(
        &self,
        subject: String,
        body: &impl Serialize,
    ) -> anyhow::Result<CtlResponse<T>> {
        self.request_raw(subject, serde_json::to_vec(body)?).await
    }

    /// Every host answering `host.ping` within `window`.
    pub async fn ping(&self, window: Duration) -> anyhow::Result<Vec<Host>> {
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await?;
        self.client
            .publish_with_reply(self.subjects.host_ping(), inbox, Vec::new().into())
            .await?;
        self.client.flush().await?;
        let mut hosts = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
            if msg.status.is_some() || msg.payload.is_empty() {
                // "No responders": nobody is in this lattice.
                continue;
            }
            let reply: CtlResponse<Host> = serde_json::from_slice(&msg.payload)?;
            if let Some(h) = reply.response {
                hosts.push(h);
            }
        }
        Ok(hosts)
    }

    /// Waits until host `id` answers `host.ping`.
    pub async fn wait_for_host(&self, id: &str) -> anyhow::Result<Host> {
        let deadline = Instant::now() + WAIT;
        loop {
            let hosts = self
                .ping(Duration::from_millis(200))
                .await
                .unwrap_or_default();
            if let Some(h) = hosts.into_iter().find(|h| h.id == id) {
                return Ok(h);
            }
            if Instant::now() > deadline {
                bail!("host {id} did not answer host.ping within {WAIT:?}");
            }
        }
    }

    /// Starts collecting this lattice's events (subscribe before acting, then wait).
    pub async fn events(&self) -> EventStream {
        let sub = self
            .client
            .subscribe(subjects::all_events(&self.name))
            .await
            .expect("cannot subscribe to events");
        self.client.flush().await.expect("flush");
        EventStream { sub }
    }
}

/// Events of one lattice, in arrival order.
pub struct EventStream {
    sub: async_nats::Subscriber,
}

impl EventStream {
    /// The names of the events that arrived since the last read, without waiting for more
    /// than `quiet` between two of them.
    pub async fn names_so_far(&mut self, quiet: Duration) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(quiet, self.sub.next()).await {
            match serde_json::from_slice::<CloudEvent>(&msg.payload) {
                Ok(event) => names.push(event.name().to_string()),
                Err(_) => names.push(format!("malformed event on {}", msg.subject)),
            }
        }
        names
    }

    /// Waits for the first event named `name` whose data satisfies `pred`, skipping others.
    pub async fn wait_for(
        &mut self,
        name: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<CloudEvent> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.sub.next())
                .await
                .with_context(|| format!("no {name} event within {WAIT:?}"))?
                .context("event subscription closed")?;
            let event: CloudEvent = serde_json::from_slice(&msg.payload).with_context(|| {
                format!(
                    "event on {} is not a CloudEvent: {}",
                    msg.subject,
                    String::from_utf8_lossy(&msg.payload)
                )
            })?;
            anyhow::ensure!(
                msg.subject.as_str().ends_with(event.name()),
                "event subject {} does not match its type {}",
                msg.subject,
                event.event_type
            );
            if event.name() == name && pred(&event.data) {
                return Ok(event);
            }
        }
    }
}

/// Polls `f` until it yields `Some`, for state reached through several events (an inventory
/// changing, a service answering again). Bounded by [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An app for an edge site: `http_hello` with `instances` per host and the built-in HTTP
/// server on `address`, both placed by daemonscalers on the hosts labelled `site=SITE`.
pub fn site_app_manifest(app: &str, site: &str, instances: u32, address: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
  annotations:
    version: v1
spec:
  components:
    - name: hello
      type: component
      properties:
        image: file://{wasm}
      traits:
        - type: daemonscaler
          properties:
            instances: {instances}
            spread:
              - name: site
                requirements:
                  site: {site}
    - name: httpserver
      type: capability
      properties:
        image: trellis+builtin://http-server
      traits:
        - type: daemonscaler
          properties:
            instances: 1
            spread:
              - name: site
                requirements:
                  site: {site}
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: hello
            source:
              config:
                - name: {app}-http
                  properties:
                    address: {address}
"#,
        wasm = guest("http_hello").display()
    )
}

/// `file://` URL of guest component `name`, as control requests and manifests name it.
pub fn guest_ref(name: &str) -> String {
    format!("file://{}", guest(name).display())
}

/// Stops whatever `trellis up` left running in a data directory when dropped (the end of a
/// test, even a failed one): SIGTERM to the pid in `up.json`, then up to 30 s for it to exit.
pub struct StopOnDrop<'a>(pub &'a Path);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(self.0.join("up.json")) else {
            return;
        };
        let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
            return;
        };
        let Some(pid) = state["pid"].as_u64() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// True while process `pid` exists and is not a zombie.
pub fn is_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Runs the `trellis` CLI as a user would: from the repository root (where manifests'
/// relative `file://./components/...` refs resolve), with a private data directory so no
/// other `trellis up` state leaks in. Returns (success, stdout, stderr).
pub async fn trellis_cli(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    trellis_cli_env(data_dir, args, &[]).await
}

/// Like [`trellis_cli`] with extra environment variables (e.g. TRELLIS_NATS_SEED); no
/// TRELLIS_NATS_* variable of the test's own environment leaks in.
pub async fn trellis_cli_env(
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(trellis_bin());
    command
        .args(args)
        .current_dir(repo_root())
        .env("TRELLIS_DATA_DIR", data_dir)
        .env_remove("TRELLIS_NATS_URL")
        .env_remove("TRELLIS_LATTICE");
    for name in trellis_protocol::nats::ENV_VARS {
        command.env_remove(name);
    }
    let output = command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .expect("cannot run trellis");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `GET path` over a plain socket (HTTP/1.0, so the body is not chunked): the status code
/// and body, or `None` when nothing answers.
pub async fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The body of a `200` answer to `GET path`, or `None` (for [`eventually`]).
pub async fn http_ok(address: &str, path: &str) -> Option<String> {
    match http_get(address, path).await {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// A `trellis wadm` (reconciler) child process; killed on drop.
pub struct WadmProcess {
    child: Option<Child>,
    /// Where its logs go.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WadmProcess {
    /// Starts `trellis wadm` on `nats_url`/`lattice` with `extra` flags. It is ready once
    /// [`WadmProcess::wait_ready`] sees its API answer.
    pub fn start(nats_url: &str, lattice: &str, extra: &[&str]) -> Self {
        Self::start_with_auth(nats_url, lattice, extra, &NatsAuth::default())
    }

    /// Like [`WadmProcess::start`] with NATS credentials and TLS settings `auth`, handed over
    /// in the environment (TRELLIS_NATS_*).
    pub fn start_with_auth(nats_url: &str, lattice: &str, extra: &[&str], auth: &NatsAuth) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("wadm.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(trellis_bin())
            .args(["wadm", "--nats-url", nats_url, "--lattice", lattice])
            .args(extra)
            .current_dir(repo_root())
            .envs(auth.child_env(nats_url))
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("cannot start trellis wadm");
        Self {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    /// Waits until the reconciler's API answers `model.list` on `lattice`.
    pub async fn wait_ready(&self, client: &async_nats::Client, lattice: &str) {
        let subject = format!("wadm.api.{lattice}.model.list");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_secs(2),
                client.request(subject.clone(), Vec::new().into()),
            )
            .await
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "trellis wadm did not answer {subject}\nlog:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The reconciler's log so far (for failure messages).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process (SIGKILL, as a crash would) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for WadmProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real OTLP/HTTP (protobuf) receiver: the `oteltap` program from PyPI
/// (scripts/install-deps.sh installs it), printing every span, log record and metric it
/// receives as one JSON object per line. Killed on drop.
pub struct OtlpReceiver {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl OtlpReceiver {
    /// Starts `oteltap --port <free port>` and waits until it accepts connections.
    pub async fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("otlp.ndjson");
        let file = std::fs::File::create(&out).expect("receiver output file");
        let child = Command::new("oteltap")
            .args(["--port", &port.to_string()])
            .stdout(file.try_clone().expect("file"))
            .stderr(file)
            .spawn()
            .expect("cannot start oteltap: run scripts/install-deps.sh (pip install oteltap)");
        let receiver = Self {
            child,
            port,
            out,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "oteltap did not listen on {port} within 30 s:\n{}",
                receiver.raw()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        receiver
    }

    /// Its base URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything it printed so far.
    pub fn raw(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The JSON objects it printed so far (other lines skipped).
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.raw()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(serde_json::Value::is_object)
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! `trellis up` and `trellis down`: a whole lattice on this machine in one process tree.
//!
//! `trellis up` starts nats-server (JetStream, state in the data directory) unless told to join
//! an existing NATS, then runs `trellis host` and `trellis wadm` as its own children. It waits
//! until each answers on the lattice, records pids and urls in `up.json` in the data directory,
//! and stops everything in reverse order on Ctrl-C, SIGTERM or when a child dies.
//! `--detach` re-runs `trellis up` in a new session with its output in `logs/up.log`, and
//! returns once it is ready; `trellis down` stops it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

mod leaf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use crate::app_cmds::{deploy_app, DeployArgs};
use crate::lattice_client::{ConnectArgs, LatticeClient};
use crate::lattice_cmds::parse_key_value;
use crate::output::{print_json, OutputFormat};
use crate::wadm_api::model_subject;
use trellis_protocol::nats::{strip_url_credentials, NatsAuth};

/// The NATS port `trellis up` prefers, as wasmCloud does.
pub const DEFAULT_NATS_PORT: u16 = 4222;
/// The state file's name in the data directory.
const STATE_FILE: &str = "up.json";
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Flags of `trellis up`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:
  trellis up                                   # NATS, a host and the reconciler; Ctrl-C stops all
  trellis up --deploy manifests/hello.yaml     # ...and deploy an app once ready
  trellis up --detach && trellis get hosts     # in the background; stop with `trellis down`
  trellis up --allow-mount ./site --allow-mount /var/lib/app:rw   # directories components may mount
  trellis up --nats-url nats://10.0.0.2:4222 --label zone=edge   # join an existing NATS
  TRELLIS_NATS_CREDS=lattice.creds trellis up --nats-url tls://nats.example:4222
  trellis up --leaf-listen 0.0.0.0:7422        # a hub that edge sites join
  trellis up --leaf-of nats-leaf://hub:7422 --leaf-password-file leaf.password --label site=shop1

The NATS `trellis up` starts listens on 127.0.0.1 only and admits only the nkey users it
generates on first start (host, wadm, cli, secrets; seeds in <data-dir>/auth, mode 0600). It
also runs the nats-kv secrets backend (--no-secrets to skip), whose xkeys are kept there too:
back up auth/secrets-encryption.xk, which seals every stored secret. Other trellis
commands on this machine find the CLI's key by themselves. --insecure starts it without
authentication. When joining with --nats-url, the --nats-* options (or TRELLIS_NATS_*) say
how to authenticate, and the host and reconciler get them through their environment.")]
pub struct UpArgs {
    /// Join this NATS server instead of starting one
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// Port of the NATS server to start [default: 4222, or a free port when 4222 is busy]
    #[arg(long, value_name = "PORT", conflicts_with = "nats_url")]
    pub nats_port: Option<u16>,
    /// Lattice name
    #[arg(
        long,
        env = "TRELLIS_LATTICE",
        default_value = "default",
        value_name = "NAME"
    )]
    pub lattice: String,
    /// Label for the host (repeatable)
    #[arg(long = "label", short = 'l', value_parser = parse_key_value, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,
    /// Run in the background and return once ready; stop with `trellis down`
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Deploy this manifest once the lattice is ready
    #[arg(long, value_name = "FILE")]
    pub deploy: Option<PathBuf>,
    /// Start NATS without authentication, as before (anyone who can reach the port may control
    /// the lattice)
    #[arg(long, conflicts_with = "nats_url")]
    pub insecure: bool,
    /// How to authenticate to the NATS given with --nats-url
    #[command(flatten)]
    pub nats_auth: NatsAuth,
    /// Refuse file:// component references (allowed by default on a local lattice)
    #[arg(long)]
    pub no_file_load: bool,
    /// Let components mount DIR or a directory under it (repeatable; `DIR:rw` allows
    /// writable mounts) [default: the working directory, read-only, when `up` starts its own
    /// authenticated NATS; nothing otherwise]
    #[arg(long = "allow-mount", value_name = "DIR[:rw]", value_parser = trellis_host::runtime::MountRoot::parse, conflicts_with = "no_mounts")]
    pub allow_mounts: Vec<trellis_host::runtime::MountRoot>,
    /// Let no component mount a directory
    #[arg(long)]
    pub no_mounts: bool,
    /// Do not run the built-in nats-kv secrets backend
    #[arg(long)]
    pub no_secrets: bool,
    /// Where state, NATS data and logs go [default: $XDG_DATA_HOME/trellis or ~/.local/share/trellis]
    #[arg(long, env = "TRELLIS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long to wait for everything to be ready, in seconds
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub ready_secs: u64,
    /// Output format of the summary
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Edge sites: a hub accepting leaf nodes, or a leaf joined to a hub.
    #[command(flatten)]
    pub leaf: leaf::LeafArgs,
    /// Serve the web dashboard here (loopback only) [default: 127.0.0.1:3030, or a free
    /// loopback port when 3030 is busy]
    #[arg(long, value_name = "ADDR", conflicts_with = "no_ui")]
    pub ui_listen: Option<std::net::SocketAddr>,
    /// Do not serve the web dashboard
    #[arg(long)]
    pub no_ui: bool,
}

/// The `--allow-mount` values `up` gives its host, as absolute paths (the host may resolve
/// them from another directory). Without `--allow-mount`, the working directory, read-only,
/// when `up` starts its own NATS with authentication (only this user holds the keys that can
/// deploy); nothing when that NATS is open (`--insecure`) or shared (`--nats-url`).
fn mount_roots(args: &UpArgs) -> anyhow::Result<Vec<std::ffi::OsString>> {
    if args.no_mounts {
        return Ok(Vec::new());
    }
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    if args.allow_mounts.is_empty() {
        if args.insecure || args.nats_url.is_some() {
            return Ok(Vec::new());
        }
        return Ok(vec![cwd.into_os_string()]);
    }
    Ok(args
        .allow_mounts
        .iter()
        .map(|root| {
            let mut path = cwd.join(&root.path).into_os_string();
            if root.writable {
                path.push(":rw");
            }
            path
        })
        .collect())
}

/// Flags of `trellis down`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownArgs {
    /// The data directory of the `trellis up` to stop
    #[arg(long, env = "TRELLIS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// What a running `trellis up` records in `up.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpState {
    /// The supervising `trellis up` process.
    pub pid: u32,
    /// True once every part answered.
    pub ready: bool,
    /// The NATS url of the lattice.
    pub nats_url: String,
    /// The lattice name.
    pub lattice: String,
    /// The nats-server child, when `up` started one.
    #[serde(default)]
    pub nats_pid: Option<u32>,
    /// The host child.
    #[serde(default)]
    pub host_pid: Option<u32>,
    /// The reconciler child.
    #[serde(default)]
    pub wadm_pid: Option<u32>,
    /// The host id, once it answered.
    #[serde(default)]
    pub host_id: String,
    /// The host's friendly name.
    #[serde(default)]
    pub host_name: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where logs go.
    pub log_dir: PathBuf,
    /// The CLI's nkey seed file, when `up` started a NATS that requires authentication.
    #[serde(default)]
    pub cli_seed_file: Option<PathBuf>,
    /// The secrets backend child (`trellis secrets serve`).
    #[serde(default)]
    pub secrets_pid: Option<u32>,
    /// The secrets backend's name, when `up` runs one.
    #[serde(default)]
    pub secrets_backend: Option<String>,
    /// The admin xkey seed file of the secrets backend `up` runs (`trellis secret ...` use it).
    #[serde(default)]
    pub secrets_admin_seed_file: Option<PathBuf>,
    /// The web dashboard's URL, when `up` serves it.
    #[serde(default)]
    pub ui_url: Option<String>,
}

/// The nkey users of a NATS that `trellis up` starts, in `<data-dir>/auth`.
const AUTH_USERS: [&str; 4] = ["host", "wadm", "cli", "secrets"];

/// The xkeys of the secrets backend `trellis up` runs, generated on first start and kept in
/// `<data-dir>/auth/secrets-<name>.xk` with mode 0600. The encryption key seals every stored
/// value: it is the one to back up.
struct SecretsKeys {
    transit: nkeys::XKey,
    encryption: nkeys::XKey,
    admin: nkeys::XKey,
    admin_file: PathBuf,
}

impl SecretsKeys {
    fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("auth");
        let load = |name: &str| {
            let path = dir.join(format!("secrets-{name}.xk"));
            if path.exists() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
            }
            crate::seed_files::read_or_generate_xkey(&path, true).map(|(key, _)| key)
        };
        Ok(Self {
            transit: load("transit")?,
            encryption: load("encryption")?,
            admin: load("admin")?,
            admin_file: dir.join("secrets-admin.xk"),
        })
    }

    /// The backend's seeds as environment variables (never argv).
    fn child_env(&self) -> anyhow::Result<[(&'static str, String); 2]> {
        let seed = |key: &nkeys::XKey| key.seed().context("cannot read an xkey seed");
        Ok([
            (crate::secrets_serve::ENV_TRANSIT_SEED, seed(&self.transit)?),
            (
                crate::secrets_serve::ENV_ENCRYPTION_SEED,
                seed(&self.encryption)?,
            ),
        ])
    }
}

/// The seeds of the lattice's users (host, reconciler, CLI), generated on first start and kept
/// in `<data-dir>/auth/<user>.nk` with mode 0600.
struct LatticeKeys {
    dir: PathBuf,
    seeds: Vec<(&'static str, String)>,
}

impl LatticeKeys {
    /// Reads the seeds, generating the missing ones.
    fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = data_dir.join("auth");
        if dir.exists() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
        }
        let mut seeds = Vec::new();
        for user in AUTH_USERS {
            let path = dir.join(format!("{user}.nk"));
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
            }
            let (pair, _) =
                crate::seed_files::read_or_generate(&path, Some(nkeys::KeyPair::new_user))?;
            seeds.push((user, pair.seed().context("cannot read an nkey seed")?));
        }
        Ok(Self { dir, seeds })
    }

    fn seed(&self, user: &str) -> String {
        self.seeds
            .iter()
            .find(|(u, _)| *u == user)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    fn auth(&self, user: &str) -> NatsAuth {
        NatsAuth {
            nkey_seed: Some(self.seed(user)),
            ..Default::default()
        }
    }

    /// The `authorization` block that admits only these users.
    fn authorization(&self) -> anyhow::Result<String> {
        let mut users = String::new();
        for (user, seed) in &self.seeds {
            let public = nkeys::KeyPair::from_seed(seed)
                .with_context(|| format!("the {user} nkey is not valid"))?
                .public_key();
            users.push_str(&format!("    {{ nkey: \"{public}\" }}  # {user}\n"));
        }
        Ok(format!("authorization {{\n  users = [\n{users}  ]\n}}\n"))
    }
}

/// The configuration of the nats-server `trellis up` starts: loopback only, JetStream in
/// `store` (in `domain` when given), then `extra` blocks (authorization, leaf nodes).
fn nats_config(
    port: u16,
    store: &Path,
    domain: Option<&str>,
    extra: &str,
) -> anyhow::Result<String> {
    let store = serde_json::to_string(&store.display().to_string())?;
    let domain = match domain {
        Some(domain) => format!("    domain: {}\n", serde_json::to_string(domain)?),
        None => String::new(),
    };
    Ok(format!(
        "# Written by `trellis up` on every start; edits are lost.\n\
         listen: \"127.0.0.1:{port}\"\n\
         jetstream {{\n    store_dir: {store}\n{domain}}}\n\
         {extra}"
    ))
}

/// Reads an nkey seed file (one `SU...` line); errors name the file, never its content.
pub fn read_seed(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the nkey seed file {}", path.display()))?;
    let seed = text.trim().to_string();
    nkeys::KeyPair::from_seed(&seed)
        .map_err(|_| anyhow::anyhow!("{} does not hold a valid nkey seed", path.display()))?;
    Ok(seed)
}

/// Gives a child `auth` through its environment only, replacing any inherited TRELLIS_NATS_*.
fn set_child_auth(cmd: &mut Command, auth: &NatsAuth, url: &str) {
    for name in trellis_protocol::nats::ENV_VARS {
        cmd.env_remove(name);
    }
    cmd.envs(auth.child_env(url));
}

/// The data directory: `$TRELLIS_DATA_DIR`, else `$XDG_DATA_HOME/trellis`, else
/// `~/.local/share/trellis`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    data_dir_from(
        std::env::var_os("TRELLIS_DATA_DIR"),
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
    )
}

fn data_dir_from(
    explicit: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> anyhow::Result<PathBuf> {
    let non_empty = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(explicit) {
        return Ok(dir);
    }
    if let Some(xdg) = non_empty(xdg) {
        return Ok(xdg.join("trellis"));
    }
    if let Some(home) = non_empty(home) {
        return Ok(home.join(".local/share/trellis"));
    }
    bail!("cannot find a data directory: set HOME, XDG_DATA_HOME or pass --data-dir")
}

/// The state of the `trellis up` running for the default data directory, if one is alive.
pub fn running_state() -> Option<UpState> {
    let dir = default_data_dir().ok()?;
    read_state(&dir).filter(|s| is_up_process(s.pid))
}

fn read_state(data_dir: &Path) -> Option<UpState> {
    let text = std::fs::read_to_string(data_dir.join(STATE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(state: &UpState) -> anyhow::Result<()> {
    let path = state.data_dir.join(STATE_FILE);
    let tmp = state.data_dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

fn remove_state(data_dir: &Path, pid: u32) {
    // Only remove our own state: a later `up` may have replaced it.
    if read_state(data_dir).is_some_and(|s| s.pid == pid) {
        let _ = std::fs::remove_file(data_dir.join(STATE_FILE));
    }
}

/// True when `pid` is alive.
fn is_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// True when `pid` is alive and, where /proc tells, is a `trellis up` (not a reused pid).
fn is_up_process(pid: u32) -> bool {
    if !is_alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline.split(|b| *b == 0).any(|arg| arg == b"up"),
        Err(_) => true,
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 0 {
            // SAFETY: plain kill(2) on a pid we started or recorded.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
}

/// Runs `trellis up`.
pub async fn run_up(args: UpArgs) -> anyhow::Result<()> {
    if !trellis_protocol::subjects::is_valid_token(&args.lattice) {
        bail!(
            "invalid lattice name {:?}: no '.', '*', '>' or spaces",
            args.lattice
        );
    }
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir()?,
    };
    let log_dir = data_dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
    let log_dir = data_dir.join("logs");

    if let Some(state) = read_state(&data_dir) {
        if is_up_process(state.pid) {
            bail!(
                "trellis is already up (pid {}): lattice {} at {}{}; stop it with `trellis down`",
                state.pid,
                state.lattice,
                state.nats_url,
                if state.ready { "" } else { " (still starting)" }
            );
        }
        let _ = std::fs::remove_file(data_dir.join(STATE_FILE));
    }

    if args.detach {
        return run_detached(args, data_dir, log_dir).await;
    }

    let mut state = UpState {
        pid: std::process::id(),
        ready: false,
        nats_url: String::new(),
        lattice: args.lattice.clone(),
        nats_pid: None,
        host_pid: None,
        wadm_pid: None,
        host_id: String::new(),
        host_name: String::new(),
        data_dir: data_dir.clone(),
        log_dir,
        cli_seed_file: None,
        secrets_pid: None,
        secrets_backend: None,
        secrets_admin_seed_file: None,
        ui_url: None,
    };
    write_state(&state)?;
    let mut children = Children::default();
    let outcome = tokio::select! {
        result = bring_up_and_watch(&args, &mut state, &mut children) => result,
        name = shutdown_signal() => {
            eprintln!("\n{name}: stopping the lattice...");
            Ok(())
        }
    };
    children.stop_all().await;
    remove_state(&data_dir, std::process::id());
    if outcome.is_ok() {
        eprintln!("stopped");
    }
    outcome
}

async fn bring_up_and_watch(
    args: &UpArgs,
    state: &mut UpState,
    children: &mut Children,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.ready_secs.max(1));
    let exe = std::env::current_exe().context("cannot find the trellis executable")?;

    // NATS, and how each part authenticates to it.
    let mut keys = None;
    let (nats_url, started_nats) = match &args.nats_url {
        Some(url) => (url.clone(), false),
        None => {
            let binary = find_nats_server()?;
            let port = choose_nats_port(args.nats_port)?;
            let store = state.data_dir.join("nats");
            std::fs::create_dir_all(&store)
                .with_context(|| format!("cannot create {}", store.display()))?;
            let log = open_log(&state.log_dir.join("nats.log"))?;
            let mut cmd = Command::new(&binary);
            let mut extra = String::new();
            if args.insecure {
                warn_insecure(port);
            } else {
                let lattice_keys = LatticeKeys::load_or_create(&state.data_dir)?;
                extra.push_str(&lattice_keys.authorization()?);
                state.cli_seed_file = Some(lattice_keys.dir.join("cli.nk"));
                keys = Some(lattice_keys);
            }
            extra.push_str(&args.leaf.nats_config(&state.data_dir, !args.insecure)?);
            let config = state.data_dir.join("nats.conf");
            write_private(
                &config,
                &nats_config(port, &store, args.leaf.local_domain().as_deref(), &extra)?,
            )?;
            cmd.arg("-c").arg(&config);
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            let pid = children.spawn("nats-server", cmd)?;
            state.nats_pid = Some(pid);
            (format!("nats://127.0.0.1:{port}"), true)
        }
    };
    let auth_of = |user: &str| match &keys {
        Some(keys) => keys.auth(user),
        None if args.nats_url.is_some() => args.nats_auth.clone(),
        None => NatsAuth::default(),
    };
    // Credentials never reach the state file, argv or the summary: children get them through
    // their environment.
    let bare_url = strip_url_credentials(&nats_url);
    state.nats_url = bare_url.clone();
    write_state(state)?;
    let client = wait_for_nats(
        &nats_url,
        &args.lattice,
        auth_of("cli"),
        deadline,
        children,
        &state.log_dir,
    )
    .await?;

    // The secrets backend, before the host so components that need secrets can start. An edge
    // site uses the hub's.
    if !args.no_secrets && !args.leaf.is_edge() {
        start_secrets_backend(
            &exe,
            &bare_url,
            &nats_url,
            &auth_of("secrets"),
            args,
            state,
            children,
            &client,
            deadline,
        )
        .await?;
        write_state(state)?;
    }

    // Host.
    let before: Vec<String> = client
        .ping_hosts()
        .await?
        .into_iter()
        .map(|h| h.id)
        .collect();
    let mut cmd = Command::new(&exe);
    cmd.arg("host")
        .args(["--nats-url", &bare_url, "--lattice", &args.lattice]);
    set_child_auth(&mut cmd, &auth_of("host"), &nats_url);
    for (k, v) in &args.labels {
        cmd.arg("--label").arg(format!("{k}={v}"));
    }
    if !args.no_file_load {
        cmd.arg("--allow-file-load");
    }
    // Only `up`'s own flags decide what may be mounted, not a variable left in the shell.
    cmd.env_remove("TRELLIS_ALLOW_MOUNTS");
    for root in mount_roots(args)? {
        cmd.arg("--allow-mount").arg(root);
    }
    if args.leaf.is_edge() {
        // The lattice's state is the hub's; the host keeps its identity and a snapshot here,
        // so it comes back serving after a restart while the hub is away.
        cmd.args(["--js-domain", &args.leaf.hub_domain])
            .arg("--data-dir")
            .arg(state.data_dir.join("host"));
    }
    // The dashboard reads per-component rates from the host's Prometheus endpoint.
    let metrics_url = if args.no_ui {
        None
    } else {
        let port = crate::ui::free_loopback_port()?;
        cmd.arg("--metrics-listen").arg(format!("127.0.0.1:{port}"));
        Some(format!("http://127.0.0.1:{port}/metrics"))
    };
    cmd.stdin(Stdio::null());
    state.host_pid = Some(children.spawn("host", cmd)?);
    let host = loop {
        children.check_running(&state.log_dir)?;
        let hosts = client.ping_hosts().await?;
        if let Some(host) = hosts.into_iter().find(|h| !before.contains(&h.id)) {
            break host;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the host did not join lattice {} within {} s; see its output above",
                args.lattice,
                args.ready_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    state.host_id = host.id.clone();
    state.host_name = host.friendly_name.clone();
    write_state(state)?;

    let _ui = start_ui(args, &client, metrics_url, state).await;
    if args.leaf.is_edge() {
        // The hub's reconciler places work here.
        state.ready = true;
        write_state(state)?;
        print_summary(state, started_nats, &host.labels, args.output)?;
        print_edge_summary(args, args.output);
        let (name, status) = children.wait_any().await;
        bail!("the {name} exited unexpectedly ({status}); stopping everything")
    }

    // Reconciler.
    let mut cmd = Command::new(&exe);
    cmd.arg("wadm")
        .args(["--nats-url", &bare_url, "--lattice", &args.lattice])
        .stdin(Stdio::null());
    set_child_auth(&mut cmd, &auth_of("wadm"), &nats_url);
    state.wadm_pid = Some(children.spawn("reconciler", cmd)?);
    loop {
        children.check_running(&state.log_dir)?;
        let probe = client
            .nats()
            .request(model_subject(&args.lattice, "get"), Vec::new().into());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the reconciler did not answer in lattice {} within {} s; see its output above",
                args.lattice,
                args.ready_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    state.ready = true;
    write_state(state)?;
    print_summary(state, started_nats, &host.labels, args.output)?;
    print_edge_summary(args, args.output);
    if args.output == OutputFormat::Table {
        eprintln!("press Ctrl-C to stop everything");
    }

    if let Some(manifest) = &args.deploy {
        deploy_manifest(&client, manifest, args.output).await;
    }

    let (name, status) = children.wait_any().await;
    bail!("the {name} exited unexpectedly ({status}); stopping everything")
}

/// Starts `trellis secrets serve` with the data directory's keys (seeds in its environment)
/// and waits until it answers; when another backend of the same name already answers on the
/// lattice (a joined NATS), leaves it alone.
#[allow(clippy::too_many_arguments)]
async fn start_secrets_backend(
    exe: &Path,
    bare_url: &str,
    nats_url: &str,
    auth: &NatsAuth,
    args: &UpArgs,
    state: &mut UpState,
    children: &mut Children,
    client: &LatticeClient,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    use trellis_protocol::secrets::{server_xkey_subject, DEFAULT_TOPIC_PREFIX};
    use trellis_secrets::server::DEFAULT_BACKEND_NAME;
    let subject = server_xkey_subject(DEFAULT_TOPIC_PREFIX, DEFAULT_BACKEND_NAME);
    // What answers on `server_xkey` within a second, if anything.
    async fn probe(client: &LatticeClient, subject: &str) -> Option<String> {
        let request = client
            .nats()
            .request(subject.to_string(), Vec::new().into());
        match tokio::time::timeout(Duration::from_secs(1), request).await {
            Ok(Ok(reply)) => Some(String::from_utf8_lossy(&reply.payload).into_owned()),
            _ => None,
        }
    }
    let keys = SecretsKeys::load_or_create(&state.data_dir)?;
    if args.nats_url.is_some() {
        if let Some(other) = probe(client, &subject).await {
            if other.trim() != keys.transit.public_key() {
                eprintln!(
                    "note: a secrets backend `{DEFAULT_BACKEND_NAME}` already answers on this \
                     NATS; not starting another (its keys are not this data directory's)"
                );
                return Ok(());
            }
        }
    }
    let mut cmd = Command::new(exe);
    cmd.args([
        "secrets",
        "serve",
        "--nats-url",
        bare_url,
        "--lattice",
        &args.lattice,
    ])
    .arg("--admin-xkey")
    .arg(keys.admin.public_key())
    .stdin(Stdio::null());
    for name in crate::secrets_serve::SEED_ENV_VARS {
        cmd.env_remove(name);
    }
    for name in [
        "TRELLIS_SECRETS_BACKEND",
        "TRELLIS_SECRETS_TOPIC_PREFIX",
        "TRELLIS_SECRETS_BUCKET",
        "TRELLIS_SECRETS_ADMIN_XKEYS",
    ] {
        cmd.env_remove(name);
    }
    cmd.envs(keys.child_env()?);
    set_child_auth(&mut cmd, auth, nats_url);
    state.secrets_pid = Some(children.spawn("secrets backend", cmd)?);
    loop {
        children.check_running(&state.log_dir)?;
        if probe(client, &subject).await.is_some() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the secrets backend did not answer on {subject} within {} s; see its output above",
                args.ready_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    state.secrets_backend = Some(DEFAULT_BACKEND_NAME.to_string());
    state.secrets_admin_seed_file = Some(keys.admin_file.clone());
    Ok(())
}

/// Serves the dashboard for the lattice `up` runs, recording its URL in `state`. A dashboard
/// that cannot start is reported but does not stop the lattice.
async fn start_ui(
    args: &UpArgs,
    client: &LatticeClient,
    metrics_url: Option<String>,
    state: &mut UpState,
) -> Option<crate::ui::UiServer> {
    if args.no_ui {
        return None;
    }
    let options = |listen| crate::ui::UiOptions {
        listen,
        allow_remote: false,
        require_token: false,
        metrics_urls: metrics_url.clone().into_iter().collect(),
    };
    let started = match args.ui_listen {
        Some(listen) => crate::ui::start(client.clone(), options(listen)).await,
        None => {
            // Several lattices on one machine: the first gets 3030, the others a free port.
            let preferred = crate::ui::DEFAULT_LISTEN
                .parse()
                .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 3030)));
            match crate::ui::start(client.clone(), options(preferred)).await {
                Ok(server) => Ok(server),
                Err(_) => {
                    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                    crate::ui::start(client.clone(), options(any)).await
                }
            }
        }
    };
    match started {
        Ok(server) => {
            state.ui_url = Some(server.url.clone());
            if let Err(e) = write_state(state) {
                eprintln!("warning: cannot record the dashboard's URL: {e:#}");
            }
            Some(server)
        }
        Err(e) => {
            eprintln!("warning: the dashboard did not start: {e:#}");
            None
        }
    }
}

/// Deploys `manifest` and prints the outcome; a failure is reported but does not stop the lattice.
async fn deploy_manifest(client: &LatticeClient, manifest: &Path, output: OutputFormat) {
    let args = DeployArgs {
        source: manifest.display().to_string(),
        version: None,
        no_wait: false,
        wait_secs: 120,
    };
    match deploy_app(client, &args, output).await {
        Ok(outcome) => {
            if let Err(e) = outcome.print(output) {
                eprintln!("error: {e:#}");
            }
        }
        Err(e) => eprintln!("error: cannot deploy {}: {e:#}", manifest.display()),
    }
}

fn print_summary(
    state: &UpState,
    started_nats: bool,
    labels: &std::collections::BTreeMap<String, String>,
    output: OutputFormat,
) -> anyhow::Result<()> {
    if output == OutputFormat::Json {
        return print_json(state);
    }
    let nats_note = if started_nats {
        format!(
            " (started here, JetStream data in {})",
            state.data_dir.join("nats").display()
        )
    } else {
        " (joined)".to_string()
    };
    let labels = crate::output::user_labels(labels);
    println!("trellis is up");
    println!("  NATS        {}{nats_note}", state.nats_url);
    println!("  lattice     {}", state.lattice);
    println!(
        "  host        {} ({}){}",
        state.host_id,
        state.host_name,
        if labels.is_empty() {
            String::new()
        } else {
            format!(", labels {labels}")
        }
    );
    println!(
        "  reconciler  answering on wadm.api.{}.model.*",
        state.lattice
    );
    if let (Some(backend), Some(admin)) = (&state.secrets_backend, &state.secrets_admin_seed_file) {
        let dir = admin.parent().unwrap_or(admin);
        println!(
            "  secrets     backend {backend} running (`trellis secret put NAME --file F`); back up {}",
            dir.join("secrets-encryption.xk").display()
        );
    }
    match &state.cli_seed_file {
        Some(cli) => println!(
            "  auth        nkeys required; seeds in {} (other trellis commands here use cli.nk)",
            cli.parent().unwrap_or(cli).display()
        ),
        None if started_nats => println!("  auth        NONE (--insecure)"),
        None => {}
    }
    if let Some(url) = &state.ui_url {
        println!("  dashboard   {url}");
    }
    println!("  logs        {}", state.log_dir.display());
    println!("HTTP endpoints appear when an app with an http-server link is deployed (`trellis app deploy FILE`).");
    Ok(())
}

/// The leaf-node lines of the summary (none on a plain local lattice).
fn print_edge_summary(args: &UpArgs, output: OutputFormat) {
    if output == OutputFormat::Json {
        return;
    }
    if let Some(listen) = args.leaf.leaf_listen {
        let login = if args.insecure {
            "no authentication (--insecure)".to_string()
        } else {
            format!(
                "user {}, password in auth/{} of the data directory",
                leaf::LEAF_USER,
                "leaf.password"
            )
        };
        println!(
            "  leaf nodes  nats-leaf://{listen} ({login}); JetStream domain {}",
            args.leaf.hub_domain
        );
    }
    if let Some(hub) = &args.leaf.leaf_of {
        println!(
            "  edge site   leaf of {} (JetStream domain {}); the host reads the lattice from domain {} and serves from its snapshot while the hub is away",
            trellis_protocol::nats::redact_url(hub),
            args.leaf.local_domain().unwrap_or_default(),
            args.leaf.hub_domain
        );
    }
}

async fn run_detached(args: UpArgs, data_dir: PathBuf, log_dir: PathBuf) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the trellis executable")?;
    let log_path = log_dir.join("up.log");
    let log = open_log(&log_path)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("up")
        .arg("--lattice")
        .arg(&args.lattice)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--ready-secs")
        .arg(args.ready_secs.to_string());
    if let Some(url) = &args.nats_url {
        cmd.arg("--nats-url").arg(strip_url_credentials(url));
        // Credentials through the environment, never argv.
        for name in trellis_protocol::nats::ENV_VARS {
            cmd.env_remove(name);
        }
        cmd.envs(args.nats_auth.child_env(url));
    }
    if args.insecure {
        cmd.arg("--insecure");
        if let Some(port) = args.nats_port {
            warn_insecure(port);
        } else {
            eprintln!("WARNING: --insecure: the NATS started for this lattice requires NO authentication (details in the log)");
        }
    }
    if let Some(port) = args.nats_port {
        cmd.arg("--nats-port").arg(port.to_string());
    }
    for (k, v) in &args.labels {
        cmd.arg("--label").arg(format!("{k}={v}"));
    }
    if args.no_file_load {
        cmd.arg("--no-file-load");
    }
    if args.no_mounts {
        cmd.arg("--no-mounts");
    } else if !args.allow_mounts.is_empty() {
        // Absolute, so they mean the same whatever directory the child runs in.
        for root in mount_roots(&args)? {
            cmd.arg("--allow-mount").arg(root);
        }
    }
    if args.no_secrets {
        cmd.arg("--no-secrets");
    }
    let leaf = &args.leaf;
    if let Some(listen) = leaf.leaf_listen {
        cmd.arg("--leaf-listen").arg(listen.to_string());
    }
    if let Some(url) = &leaf.leaf_of {
        cmd.arg("--leaf-of").arg(strip_url_credentials(url));
    }
    if let Some(creds) = &leaf.creds {
        cmd.arg("--creds").arg(creds);
    }
    if let Some(file) = &leaf.leaf_password_file {
        cmd.arg("--leaf-password-file").arg(file);
    }
    cmd.arg("--hub-domain").arg(&leaf.hub_domain);
    if args.no_ui {
        cmd.arg("--no-ui");
    }
    if let Some(listen) = args.ui_listen {
        cmd.arg("--ui-listen").arg(listen.to_string());
    }
    if let Some(domain) = &leaf.leaf_domain {
        cmd.arg("--leaf-domain").arg(domain);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches no memory of this process; it puts
        // the child in its own session so closing the terminal does not stop it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .context("cannot start trellis up in the background")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.ready_secs.max(1) + 10);
    loop {
        if let Some(status) = child
            .try_wait()
            .context("cannot watch the background trellis up")?
        {
            bail!(
                "trellis up stopped while starting ({status}):\n{}",
                log_tail(&log_path, 20)
            );
        }
        if let Some(state) = read_state(&data_dir) {
            if state.ready && state.pid == child.id() {
                print_summary(
                    &state,
                    state.nats_pid.is_some(),
                    &Default::default(),
                    args.output,
                )?;
                if args.output == OutputFormat::Table {
                    eprintln!(
                        "running in the background (logs in {}); stop it with `trellis down`",
                        log_path.display()
                    );
                }
                if let Some(manifest) = &args.deploy {
                    let nats_auth = match &state.cli_seed_file {
                        Some(file) => NatsAuth {
                            nkey_seed: Some(read_seed(file)?),
                            ..Default::default()
                        },
                        None => args.nats_auth.clone(),
                    };
                    let connect = ConnectArgs {
                        nats_url: Some(args.nats_url.clone().unwrap_or(state.nats_url.clone())),
                        lattice: Some(state.lattice.clone()),
                        nats_auth: Box::new(nats_auth),
                        timeout_ms: 5000,
                        output: args.output,
                    };
                    let client = LatticeClient::connect(&connect).await?;
                    deploy_manifest(&client, manifest, args.output).await;
                }
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            signal(child.id(), libc::SIGTERM);
            bail!(
                "trellis up was not ready in time:\n{}",
                log_tail(&log_path, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `trellis down`.
pub async fn run_down(args: DownArgs) -> anyhow::Result<()> {
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir()?,
    };
    let Some(state) = read_state(&data_dir) else {
        println!(
            "trellis is not up (no {} in {})",
            STATE_FILE,
            data_dir.display()
        );
        return Ok(());
    };
    if !is_up_process(state.pid) {
        let _ = std::fs::remove_file(data_dir.join(STATE_FILE));
        // The supervisor is gone; make sure no child outlived it.
        for pid in [
            state.wadm_pid,
            state.host_pid,
            state.secrets_pid,
            state.nats_pid,
        ]
        .into_iter()
        .flatten()
        {
            if is_alive(pid) {
                signal(pid, libc::SIGTERM);
            }
        }
        println!("trellis was not running (removed a stale state file)");
        return Ok(());
    }
    signal(state.pid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + STOP_GRACE * 3;
    while is_alive(state.pid) {
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "trellis up (pid {}) did not stop in time; killing it",
                state.pid
            );
            for pid in [
                Some(state.pid),
                state.wadm_pid,
                state.host_pid,
                state.secrets_pid,
                state.nats_pid,
            ]
            .into_iter()
            .flatten()
            {
                signal(pid, libc::SIGKILL);
            }
            let _ = std::fs::remove_file(data_dir.join(STATE_FILE));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("stopped lattice {} ({})", state.lattice, state.nats_url);
    Ok(())
}

/// The children of `trellis up`, in start order.
#[derive(Default)]
struct Children {
    running: Vec<(&'static str, Child)>,
}

impl Children {
    /// Starts `cmd` in its own process group (so Ctrl-C reaches only `trellis up`, which then
    /// stops the children in order) and returns its pid.
    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> anyhow::Result<u32> {
        cmd.process_group(0).kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        let pid = child
            .id()
            .with_context(|| format!("the {name} exited at once"))?;
        self.running.push((name, child));
        Ok(pid)
    }

    /// Fails when a child has exited.
    fn check_running(&mut self, log_dir: &Path) -> anyhow::Result<()> {
        for (name, child) in &mut self.running {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("cannot watch the {name}"))?
            {
                let hint = if *name == "nats-server" {
                    format!(":\n{}", log_tail(&log_dir.join("nats.log"), 10))
                } else {
                    "; see its output above".to_string()
                };
                bail!("the {name} exited ({status}){hint}");
            }
        }
        Ok(())
    }

    /// Waits until any child exits and says which.
    async fn wait_any(&mut self) -> (&'static str, String) {
        if self.running.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.running.iter_mut().map(|(name, child)| {
            Box::pin(async move {
                let status = match child.wait().await {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                (*name, status)
            })
        });
        futures::future::select_all(waits).await.0
    }

    /// Stops the children newest first: SIGTERM, a grace period, then SIGKILL.
    async fn stop_all(&mut self) {
        while let Some((name, mut child)) = self.running.pop() {
            if let Ok(Some(_)) = child.try_wait() {
                continue;
            }
            if let Some(pid) = child.id() {
                signal(pid, libc::SIGTERM);
            }
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!(
                        "the {name} did not stop within {} s; killing it",
                        STOP_GRACE.as_secs()
                    );
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// Waits for whichever shutdown signal comes first and names it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
        _ = hup.recv() => "hang-up",
    }
}

async fn wait_for_nats(
    url: &str,
    lattice: &str,
    nats_auth: NatsAuth,
    deadline: tokio::time::Instant,
    children: &mut Children,
    log_dir: &Path,
) -> anyhow::Result<LatticeClient> {
    let connect = ConnectArgs {
        nats_url: Some(url.to_string()),
        lattice: Some(lattice.to_string()),
        nats_auth: Box::new(nats_auth),
        timeout_ms: 1000,
        ..Default::default()
    };
    loop {
        children.check_running(log_dir)?;
        match LatticeClient::connect(&connect).await {
            Ok(client) => return Ok(client),
            // Wrong credentials do not get better by waiting.
            Err(e) if e.to_string().contains("refused the credentials") => return Err(e),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Says loudly that the NATS about to start lets anyone in.
fn warn_insecure(port: u16) {
    eprintln!(
        "WARNING: --insecure: NATS on 127.0.0.1:{port} requires NO authentication. Any local \
         user or process that can reach the port can run, stop and read components, configs \
         and links in this lattice. Use it only on a single-user machine for a quick test."
    );
}

/// Finds nats-server on PATH or in the Debian package's place, or says how to install it.
fn find_nats_server() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([
            PathBuf::from("/usr/sbin/nats-server"),
            PathBuf::from("/usr/local/bin/nats-server"),
        ])
        .find(|p| p.is_file())
        .context(
            "nats-server is not installed: install it with `sudo apt-get install -y nats-server` \
             (Debian/Ubuntu) or from https://github.com/nats-io/nats-server/releases, \
             or join a running NATS with `trellis up --nats-url nats://HOST:4222`",
        )
}

/// The port to start NATS on: the one asked for (it must be free), else 4222, else any free port.
fn choose_nats_port(requested: Option<u16>) -> anyhow::Result<u16> {
    if let Some(port) = requested {
        if !port_is_free(port) {
            bail!(
                "port {port} is busy: pick another with --nats-port, or join the NATS there with \
                 --nats-url nats://127.0.0.1:{port}"
            );
        }
        return Ok(port);
    }
    if port_is_free(DEFAULT_NATS_PORT) {
        return Ok(DEFAULT_NATS_PORT);
    }
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("cannot find a free port")?;
    let port = listener.local_addr()?.port();
    eprintln!(
        "port {DEFAULT_NATS_PORT} is busy; starting NATS on {port} (other trellis commands find it through the state file)"
    );
    Ok(port)
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Writes `text` to `path` readable by its owner only (the NATS config may hold a password).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode on open: restrict it too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", path.display()))
}

fn open_log(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log {}", path.display()))
}

/// The last `lines` lines of a log file, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            format!(
                "{} (from {}):\n{}",
                "last lines",
                path.display(),
                all[start..].join("\n")
            )
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_prefers_explicit_then_xdg_then_home() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            data_dir_from(os("/d"), os("/x"), os("/h")).unwrap(),
            PathBuf::from("/d")
        );
        assert_eq!(
            data_dir_from(None, os("/x"), os("/h")).unwrap(),
            PathBuf::from("/x/trellis")
        );
        assert_eq!(
            data_dir_from(os(""), os(""), os("/h")).unwrap(),
            PathBuf::from("/h/.local/share/trellis")
        );
        assert!(data_dir_from(None, None, None).is_err());
    }

    #[test]
    fn state_round_trips_and_stale_pid_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let state = UpState {
            pid: u32::MAX - 1,
            ready: true,
            nats_url: "nats://127.0.0.1:4222".into(),
            lattice: "default".into(),
            nats_pid: None,
            host_pid: Some(1),
            wadm_pid: None,
            host_id: "N1".into(),
            host_name: "x".into(),
            data_dir: dir.path().to_path_buf(),
            log_dir: dir.path().join("logs"),
            cli_seed_file: None,
            secrets_pid: None,
            secrets_backend: None,
            secrets_admin_seed_file: None,
            ui_url: Some("http://127.0.0.1:3030/".into()),
        };
        write_state(&state).unwrap();
        assert_eq!(read_state(dir.path()), Some(state.clone()));
        assert!(!is_up_process(state.pid));
        assert!(is_alive(std::process::id()));
        remove_state(dir.path(), state.pid);
        assert_eq!(read_state(dir.path()), None);
    }

    #[test]
    fn lattice_keys_are_private_and_kept_across_starts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = LatticeKeys::load_or_create(dir.path()).unwrap();
        for user in AUTH_USERS {
            let path = dir.path().join("auth").join(format!("{user}.nk"));
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
            assert!(first.seed(user).starts_with("SU"));
        }
        let again = LatticeKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(first.seeds, again.seeds);
        let config = nats_config(
            4222,
            &dir.path().join("nats"),
            Some("hub"),
            &first.authorization().unwrap(),
        )
        .unwrap();
        assert!(config.contains("listen: \"127.0.0.1:4222\""), "{config}");
        assert!(config.contains("domain: \"hub\""), "{config}");
        // (Not `contains("SU")`: a public key may hold those two letters by chance.)
        for (user, seed) in &first.seeds {
            assert!(
                !config.contains(seed.as_str()),
                "{user}'s seed in the config"
            );
        }
        assert_eq!(config.matches("nkey: \"U").count(), 4, "{config}");
    }

    #[test]
    fn busy_port_is_refused_when_asked_for() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = choose_nats_port(Some(port)).unwrap_err().to_string();
        assert!(err.contains("--nats-port"), "{err}");
    }

    /// `trellis up` with `flags`, parsed as the command line would be.
    fn up_args(flags: &[&str]) -> UpArgs {
        #[derive(clap::Parser)]
        struct Up {
            #[command(flatten)]
            args: UpArgs,
        }
        let argv = std::iter::once("up").chain(flags.iter().copied());
        <Up as clap::Parser>::try_parse_from(argv)
            .expect("valid flags")
            .args
    }

    #[test]
    fn mount_roots_default_to_the_working_directory_only_on_an_authenticated_own_nats() {
        let cwd = std::env::current_dir().unwrap().into_os_string();
        assert_eq!(mount_roots(&up_args(&[])).unwrap(), vec![cwd.clone()]);
        assert!(mount_roots(&up_args(&["--insecure"])).unwrap().is_empty());
        assert!(mount_roots(&up_args(&["--nats-url", "nats://x:4222"]))
            .unwrap()
            .is_empty());
        assert!(mount_roots(&up_args(&["--no-mounts"])).unwrap().is_empty());
        let explicit = mount_roots(&up_args(&[
            "--insecure",
            "--allow-mount",
            "site",
            "--allow-mount",
            "/data:rw",
        ]))
        .unwrap();
        let mut site = cwd;
        site.push("/site");
        assert_eq!(explicit, vec![site, "/data:rw".into()]);
    }
}

//! Test support for OCI distribution: a real registry (Debian's `docker-registry`, the CNCF
//! distribution registry) per test, hosts started with their own environment (registry
//! credentials), and the `trellis` CLI with credentials in its environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crate::{free_port, repo_root, trellis_bin, Lattice, WAIT};

fn find_registry() -> PathBuf {
    if let Ok(p) = std::env::var("DOCKER_REGISTRY_BIN") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = Path::new(dir).join("docker-registry");
        if candidate.is_file() {
            return candidate;
        }
    }
    let fallback = PathBuf::from("/usr/bin/docker-registry");
    assert!(
        fallback.is_file(),
        "docker-registry not found: install it with `sudo apt-get install -y docker-registry \
         apache2-utils` (scripts/install-deps.sh does this)"
    );
    fallback
}

/// A `docker-registry` child process on a free loopback port with its own storage; killed on
/// drop.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// `user:password` when the registry asks for basic auth.
    pub credentials: Option<(String, String)>,
}

impl Registry {
    /// An open registry (no auth).
    pub async fn start() -> Self {
        Self::start_with(None, None).await
    }

    /// A registry that requires HTTP basic auth as `user`/`password` (an htpasswd file made
    /// with `htpasswd -Bbn`).
    pub async fn start_with_auth(user: &str, password: &str) -> Self {
        Self::start_with(Some((user.to_string(), password.to_string())), None).await
    }

    /// A pull-through mirror of the registry at `origin` (`host:port`, plain HTTP).
    pub async fn start_mirror_of(origin: &str) -> Self {
        Self::start_with(None, Some(format!("http://{origin}"))).await
    }

    async fn start_with(credentials: Option<(String, String)>, proxy: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = &credentials {
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("cannot run htpasswd: install apache2-utils");
            assert!(output.status.success(), "htpasswd failed");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &output.stdout).expect("htpasswd file");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: trellis-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        if let Some(remote) = &proxy {
            config.push_str(&format!("proxy:\n  remoteurl: {remote}\n"));
        }
        std::fs::write(dir.path().join("config.yml"), config).expect("registry config");
        let mut registry = Self {
            child: None,
            port,
            dir,
            credentials,
        };
        registry.spawn().await;
        registry
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("registry.log")).expect("log");
        let child = Command::new(find_registry())
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while crate::http_get(&self.addr(), "/v2/").await.is_none() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// `127.0.0.1:PORT`, as refs name it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Stops the registry (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The file holding blob `digest` (`sha256:<hex>`) in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or("00"))
            .join(hex)
            .join("data")
    }

    /// The variable that gives the registry's credentials to a host or the CLI, and its
    /// value.
    pub fn auth_env(&self) -> Option<(String, String)> {
        self.credentials.as_ref().map(|(user, password)| {
            (
                format!("TRELLIS_OCI_AUTH_127_0_0_1_{}", self.port),
                format!("{user}:{password}"),
            )
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Base64 (standard alphabet, padded), for Docker config `auth` entries.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes a Docker config directory (for `DOCKER_CONFIG`) whose `auths` give `user:password`
/// for `registry`.
pub fn docker_config_dir(registry: &str, user: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = serde_json::json!({
        "auths": { registry: { "auth": base64(format!("{user}:{password}").as_bytes()) } }
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("docker config");
    dir
}

/// Runs the `trellis` CLI with `env` added: (success, stdout, stderr).
pub async fn trellis_with_env(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(trellis_bin());
    command
        .args(args)
        .current_dir(repo_root())
        .env_remove("TRELLIS_ALLOWED_INSECURE");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().await.expect("cannot run trellis");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `trellis host` child process with its own environment and a private cache directory
/// (compiled code and pulled components) kept across restarts; killed on drop.
pub struct EnvHost {
    child: Option<Child>,
    /// The host id.
    pub id: String,
    seed: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    nats_url: String,
    lattice: String,
    dir: tempfile::TempDir,
}

impl EnvHost {
    /// Starts `trellis host` on `nats_url`/`lattice` with `extra` flags and `env`, and waits
    /// until it answers `host.ping`.
    pub async fn start(
        nats_url: &str,
        lattice: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let seed = nkeys::KeyPair::new_server().seed().expect("seed");
        let id = nkeys::KeyPair::from_seed(&seed).expect("seed").public_key();
        let mut args: Vec<String> = [
            "host",
            "--nats-url",
            nats_url,
            "--lattice",
            lattice,
            "--heartbeat-interval-ms",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut host = Self {
            child: None,
            id,
            seed,
            args,
            env: env.to_vec(),
            nats_url: nats_url.to_string(),
            lattice: lattice.to_string(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        host.spawn().await;
        host
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut command = Command::new(trellis_bin());
        command
            .args(&self.args)
            .current_dir(repo_root())
            .env("TRELLIS_HOST_SEED", &self.seed)
            .env("TRELLIS_CACHE_DIR", self.dir.path().join("cache"))
            .env("RUST_LOG", "info")
            // Nothing from the caller's own registry setup leaks in.
            .env("DOCKER_CONFIG", self.dir.path().join("no-docker-config"))
            .env_remove("TRELLIS_ALLOWED_INSECURE")
            .env_remove("TRELLIS_REGISTRY_MIRRORS")
            .env_remove("TRELLIS_OCI_CACHE_DIR")
            .env_remove("TRELLIS_ALLOW_LATEST");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let child = command
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start trellis host");
        self.child = Some(child);
        Lattice::connect(&self.nats_url, &self.lattice)
            .await
            .wait_for_host(&self.id)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", self.logs()));
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("host.log")
    }

    /// The host's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Where this host caches pulled components.
    pub fn oci_cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache").join("oci")
    }

    /// Kills the process and starts it again with the same identity, flags, environment and
    /// cache.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EnvHost {
    fn drop(&mut self) {
        self.kill();
    }
}

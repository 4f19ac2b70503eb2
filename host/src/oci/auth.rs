//! Registry credentials: where they come from, and keeping them out of logs.
//!
//! Looked up per registry, first match wins:
//! 0. credentials given at run time with [`put_registry_credentials`] (the seam for wasmCloud's
//!    `registry.put` control request);
//! 1. `TRELLIS_OCI_TOKEN_<REGISTRY>=token` (a bearer token) or
//!    `TRELLIS_OCI_AUTH_<REGISTRY>=user:password`, where `<REGISTRY>` is the registry's
//!    `host[:port]` upper-cased with every other character turned into `_` (see
//!    [`registry_env_suffix`]): `TRELLIS_OCI_AUTH_GHCR_IO`, `TRELLIS_OCI_AUTH_127_0_0_1_5000`;
//! 2. `TRELLIS_OCI_REGISTRY` with `TRELLIS_OCI_REGISTRY_USER` and
//!    `TRELLIS_OCI_REGISTRY_PASSWORD` (one registry; wasmCloud's `WASMCLOUD_OCI_REGISTRY`,
//!    `_USER`, `_PASSWORD` are read the same way);
//! 3. the Docker config file: its credential helper, else its `auths` (`auth` = base64 of `user:password`, or `username` and
//!    `password`, or `identitytoken`/`registrytoken`).
//!
//! A Docker config that names a credential helper (`credHelpers` for the registry, else
//! `credsStore`) has `docker-credential-<name> get` run for it first, as docker does (found on
//! `PATH`, 10 s at most). Nothing comes from command lines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

use super::reference::normalize_registry;

/// The largest Docker config file read.
const MAX_DOCKER_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Credentials for one registry. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        username: String,
        /// The password (or an access token used as one).
        password: String,
    },
    /// A bearer token sent as is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    pub(crate) fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Self::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Self::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// Where a registry's credentials were found (named in error messages; never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// An environment variable (its name).
    Env(String),
    /// The Docker config file (its path).
    DockerConfig(PathBuf),
    /// A Docker credential helper named by the Docker config (the program).
    Helper(String),
    /// Given at run time with [`put_registry_credentials`] (wasmCloud's `registry.put`).
    RegistryPut,
}

fn put_credentials() -> &'static RwLock<HashMap<String, Credentials>> {
    static STORE: OnceLock<RwLock<HashMap<String, Credentials>>> = OnceLock::new();
    STORE.get_or_init(RwLock::default)
}

/// Gives this process credentials for `registry`, consulted before every other source: the
/// seam for wasmCloud's `registry.put` control request (kept in memory only, never logged).
pub fn put_registry_credentials(registry: &str, credentials: Credentials) {
    if let Ok(mut store) = put_credentials().write() {
        store.insert(normalize_registry(registry), credentials);
    }
}

impl std::fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::DockerConfig(path) => write!(f, "the Docker config {}", path.display()),
            Self::Helper(program) => write!(f, "the Docker credential helper {program}"),
            Self::RegistryPut => f.write_str("the registry.put control request"),
        }
    }
}

/// `<REGISTRY>` in `TRELLIS_OCI_AUTH_<REGISTRY>`: the normalized registry upper-cased, every
/// character other than `A-Z` and `0-9` replaced by `_`.
pub fn registry_env_suffix(registry: &str) -> String {
    normalize_registry(registry)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Finds credentials for a registry from the environment and the Docker config file, read
/// afresh on every lookup (so a `docker login` takes effect without a restart).
#[derive(Debug, Clone, Default)]
pub struct CredentialLookup {
    /// The Docker config file; `None` means `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

impl CredentialLookup {
    /// Credentials for `registry` and where they came from, or `None` (anonymous access).
    pub fn lookup(&self, registry: &str) -> Option<(Credentials, CredentialSource)> {
        self.lookup_with(registry, &|name| std::env::var(name).ok())
    }

    /// [`CredentialLookup::lookup`] with the environment given as a function (for tests).
    pub fn lookup_with(
        &self,
        registry: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<(Credentials, CredentialSource)> {
        let registry = normalize_registry(registry);
        if let Some(creds) = put_credentials()
            .read()
            .ok()
            .and_then(|store| store.get(&registry).cloned())
        {
            return Some((creds, CredentialSource::RegistryPut));
        }
        let suffix = registry_env_suffix(&registry);
        let token_var = format!("TRELLIS_OCI_TOKEN_{suffix}");
        if let Some(token) = env(&token_var).filter(|t| !t.is_empty()) {
            return Some((Credentials::Bearer(token), CredentialSource::Env(token_var)));
        }
        let auth_var = format!("TRELLIS_OCI_AUTH_{suffix}");
        if let Some((username, password)) = env(&auth_var)
            .as_deref()
            .and_then(|v| v.split_once(':'))
            .filter(|(u, _)| !u.is_empty())
        {
            return Some((
                Credentials::Basic {
                    username: username.to_string(),
                    password: password.to_string(),
                },
                CredentialSource::Env(auth_var),
            ));
        }
        for prefix in ["TRELLIS_OCI_REGISTRY", "WASMCLOUD_OCI_REGISTRY"] {
            let named = env(prefix).map(|r| normalize_registry(&r));
            if named.as_deref() != Some(registry.as_str()) {
                continue;
            }
            if let (Some(username), Some(password)) = (
                env(&format!("{prefix}_USER")),
                env(&format!("{prefix}_PASSWORD")),
            ) {
                return Some((
                    Credentials::Basic { username, password },
                    CredentialSource::Env(format!("{prefix}_USER/{prefix}_PASSWORD")),
                ));
            }
        }
        let path = self.docker_config_path(env)?;
        docker_config_credentials(&path, &registry, env)
    }

    fn docker_config_path(&self, env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
        if let Some(path) = &self.docker_config {
            return Some(path.clone());
        }
        if let Some(dir) = env("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        env("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
    }
}

/// Reads `registry`'s entry from a Docker config file; a missing or unreadable file, or one
/// without an entry for it, gives `None` (a broken file is logged, never fatal: pulls that need
/// no credentials keep working).
fn docker_config_credentials(
    path: &Path,
    registry: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(Credentials, CredentialSource)> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut text = Vec::new();
    if let Err(e) = file.take(MAX_DOCKER_CONFIG_BYTES).read_to_end(&mut text) {
        tracing::warn!(path = %path.display(), error = %e, "cannot read the Docker config file");
        return None;
    }
    let config: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the Docker config file is not JSON; ignoring it");
            return None;
        }
    };
    // A credential helper for this registry (`credHelpers`), else the default store
    // (`credsStore`), as docker does.
    let helper = config
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|helpers| {
            helpers
                .iter()
                .find(|(key, _)| normalize_registry(key) == registry)
                .and_then(|(_, name)| name.as_str())
        })
        .or_else(|| config.get("credsStore").and_then(|s| s.as_str()))
        .filter(|name| !name.is_empty());
    if let Some(helper) = helper {
        if let Some(creds) = run_credential_helper(helper, registry, env) {
            return Some((
                creds,
                CredentialSource::Helper(format!("docker-credential-{helper}")),
            ));
        }
    }
    let source = CredentialSource::DockerConfig(path.to_path_buf());
    let auths = config.get("auths")?.as_object()?;
    let entry = auths
        .iter()
        .find(|(key, _)| normalize_registry(key) == registry)
        .map(|(_, entry)| entry)?;
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    if let Some(token) = field("registrytoken") {
        return Some((Credentials::Bearer(token.to_string()), source));
    }
    if let Some(encoded) = field("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((username, password)) => {
                return Some((
                    Credentials::Basic {
                        username: username.to_string(),
                        password: password.to_string(),
                    },
                    source,
                ))
            }
            None => {
                tracing::warn!(path = %path.display(), %registry, "the Docker config's `auth` for this registry is not base64 of user:password; ignoring it");
            }
        }
    }
    if let Some(token) = field("identitytoken") {
        // Docker sends an identity token as the password of the user `<token>`.
        return Some((
            Credentials::Basic {
                username: "<token>".to_string(),
                password: token.to_string(),
            },
            source,
        ));
    }
    match (field("username"), field("password")) {
        (Some(username), Some(password)) => Some((
            Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            },
            source,
        )),
        _ => None,
    }
}

/// How long a credential helper may take.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `docker-credential-<helper> get` (found on `PATH`) for `registry`, as docker does:
/// the server on stdin, `{"Username": ..., "Secret": ...}` on stdout. Any failure (no such
/// helper, no credentials stored, a timeout) is `None`, logged without the output.
fn run_credential_helper(
    helper: &str,
    registry: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Credentials> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    if !helper
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        tracing::warn!(%helper, "ignoring a Docker credential helper with an unusual name");
        return None;
    }
    let program = format!("docker-credential-{helper}");
    let path = env("PATH")?
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(&program))
        .find(|candidate| candidate.is_file());
    let Some(path) = path else {
        tracing::warn!(%program, %registry, "the Docker config names a credential helper that is not on PATH");
        return None;
    };
    let server = if registry == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    };
    let spawn = || {
        Command::new(&path)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
    };
    // A helper being replaced (or just written) can be busy for a moment: try once more.
    let spawned = match spawn() {
        Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
            std::thread::sleep(std::time::Duration::from_millis(50));
            spawn()
        }
        other => other,
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(%program, error = %e, "cannot run the Docker credential helper");
            return None;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let deadline = std::time::Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(%program, %registry, "the Docker credential helper did not answer in time");
                return None;
            }
        }
    };
    if !status.success() {
        tracing::debug!(%program, %registry, "the Docker credential helper has no credentials for this registry");
        return None;
    }
    let mut output = Vec::new();
    child
        .stdout
        .take()?
        .take(64 * 1024)
        .read_to_end(&mut output)
        .ok()?;
    let answer: serde_json::Value = serde_json::from_slice(&output).ok()?;
    let username = answer.get("Username")?.as_str()?.to_string();
    let secret = answer.get("Secret")?.as_str()?.to_string();
    if secret.is_empty() {
        return None;
    }
    Some(Credentials::Basic {
        username,
        password: secret,
    })
}

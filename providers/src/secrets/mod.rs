//! `wasmcloud:secrets@0.1.0-draft` (`store` and `reveal`) for components.
//!
//! Every component that imports `wasmcloud:secrets` instantiates. `store.get(key)` asks the
//! capability's [`SecretSource`] for the secret `key` granted to the calling component; the
//! guest gets an opaque `secret` handle holding the value, and `reveal` hands the value over.
//!
//! Sources (see `docs/secrets.md`): [`HostSecrets`], what the host fetched from secrets
//! backends for each component's manifest references (the default on a lattice host), and
//! [`StaticSecrets`], an in-memory map the host is given explicitly (`--secret-file`).
//! [`NoSecrets`] answers `not-found` for every key. Nothing here logs a value: only key names and the calling
//! component's id appear in `tracing` events.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, Resource};

use trellis_host::runtime::{Capability, Extensions, InstanceContext, InstanceState};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/wasmcloud-secrets-0.1.0-draft",
        world: "wasmcloud:secrets/imports",
        imports: { default: trappable },
        with: {
            "wasmcloud:secrets/store.secret": super::SecretHandle,
        },
    });
}

use bindings::wasmcloud::secrets::{reveal, store};

pub use trellis_host::secrets::{ExposedSecret, SecretValue};

/// Why a secret could not be fetched; mirrors `wasmcloud:secrets/store.secrets-error`.
/// Messages must not contain secret values (they reach the guest and may be logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// No secret with this key is granted to the component.
    NotFound,
    /// The backend failed.
    Upstream(String),
    /// An I/O operation failed.
    Io(String),
}

/// Where secrets come from. One implementation per backend; the capability asks it for the
/// secret `key` granted to `component_id`.
pub trait SecretSource: Send + Sync + 'static {
    /// The secret `key` as granted to `component_id`, or why not.
    fn get(&self, component_id: &str, key: &str) -> Result<SecretValue, SecretError>;
}

/// The default source: no secrets at all, `not-found` for every key.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get(&self, _component_id: &str, _key: &str) -> Result<SecretValue, SecretError> {
        Err(SecretError::NotFound)
    }
}

/// Secrets given to the host explicitly, held in memory: each granted to one component, or to
/// every component on the host.
#[derive(Debug, Default, Clone)]
pub struct StaticSecrets {
    per_component: HashMap<(String, String), SecretValue>,
    everyone: HashMap<String, SecretValue>,
}

impl StaticSecrets {
    /// No secrets yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Grants secret `key` with `value` to the component `component_id` only.
    pub fn grant(&mut self, component_id: &str, key: &str, value: SecretValue) -> &mut Self {
        self.per_component
            .insert((component_id.to_string(), key.to_string()), value);
        self
    }

    /// Grants secret `key` with `value` to every component on the host.
    pub fn grant_to_all(&mut self, key: &str, value: SecretValue) -> &mut Self {
        self.everyone.insert(key.to_string(), value);
        self
    }
}

/// Parses a `--secret-file` argument, `NAME=PATH`.
pub fn parse_secret_file(arg: &str) -> Result<(String, std::path::PathBuf), String> {
    match arg.split_once('=') {
        Some((name, path)) if !name.trim().is_empty() && !path.trim().is_empty() => Ok((
            name.trim().to_string(),
            std::path::PathBuf::from(path.trim()),
        )),
        _ => Err(format!("secret file `{arg}` must look like NAME=PATH")),
    }
}

/// The largest secret file [`StaticSecrets::from_files`] reads.
pub const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

impl StaticSecrets {
    /// Reads each `(name, path)` and grants the file's contents, as secret `name`, to every
    /// component on the host: text when the file is UTF-8, bytes otherwise. Errors name the
    /// secret and the file, never the contents.
    pub fn from_files(files: &[(String, std::path::PathBuf)]) -> anyhow::Result<Self> {
        let mut secrets = Self::new();
        for (name, path) in files {
            let unreadable = |e: std::io::Error| {
                anyhow::anyhow!("secret `{name}`: cannot read {}: {e}", path.display())
            };
            let metadata = std::fs::metadata(path).map_err(unreadable)?;
            anyhow::ensure!(
                metadata.is_file(),
                "secret `{name}`: {} is not a regular file; point --secret-file at a file",
                path.display()
            );
            // Bounded even if the file grows (or is swapped) after the check above.
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .map_err(unreadable)?
                .take(MAX_SECRET_FILE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(unreadable)?;
            anyhow::ensure!(
                bytes.len() as u64 <= MAX_SECRET_FILE_BYTES,
                "secret `{name}`: {} is larger than {MAX_SECRET_FILE_BYTES} bytes",
                path.display()
            );
            let value = match String::from_utf8(bytes) {
                Ok(text) => SecretValue::text(text),
                Err(not_text) => SecretValue::bytes(not_text.into_bytes()),
            };
            secrets.grant_to_all(name, value);
        }
        Ok(secrets)
    }
}

impl SecretSource for StaticSecrets {
    fn get(&self, component_id: &str, key: &str) -> Result<SecretValue, SecretError> {
        self.per_component
            .get(&(component_id.to_string(), key.to_string()))
            .or_else(|| self.everyone.get(key))
            .cloned()
            .ok_or(SecretError::NotFound)
    }
}

/// Secrets the running host fetched for its components from the references in their
/// manifests (see `trellis_host::secrets`), then `fallback` (e.g. `--secret-file`).
pub struct HostSecrets {
    slot: trellis_host::HostSlot,
    fallback: Arc<dyn SecretSource>,
}

impl HostSecrets {
    /// Reads the host in `slot`, then `fallback`.
    pub fn new(slot: trellis_host::HostSlot, fallback: Arc<dyn SecretSource>) -> Self {
        Self { slot, fallback }
    }
}

impl SecretSource for HostSecrets {
    fn get(&self, component_id: &str, key: &str) -> Result<SecretValue, SecretError> {
        if let Some(value) = self
            .slot
            .get()
            .and_then(|host| host.secrets.get(component_id, key))
        {
            return Ok(value);
        }
        self.fallback.get(component_id, key)
    }
}

/// The host side of a guest's `secret` handle: the value it was fetched with.
#[derive(Debug)]
pub struct SecretHandle {
    value: SecretValue,
}

/// Serves `wasmcloud:secrets/{store,reveal}@0.1.0-draft` to every component.
#[derive(Clone)]
pub struct SecretsCapability {
    source: Arc<dyn SecretSource>,
}

impl std::fmt::Debug for SecretsCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsCapability").finish_non_exhaustive()
    }
}

impl Default for SecretsCapability {
    fn default() -> Self {
        Self::new(Arc::new(NoSecrets))
    }
}

impl SecretsCapability {
    /// A capability answering from `source`.
    pub fn new(source: Arc<dyn SecretSource>) -> Self {
        Self { source }
    }

    /// A capability answering what the host in `slot` fetched for each component, then
    /// `fallback`.
    pub fn for_host(slot: &trellis_host::HostSlot, fallback: Arc<dyn SecretSource>) -> Self {
        Self::new(Arc::new(HostSecrets::new(slot.clone(), fallback)))
    }
}

/// Per-instance state: the source to ask.
struct SecretsInstance {
    source: Arc<dyn SecretSource>,
}

impl Capability for SecretsCapability {
    fn name(&self) -> &str {
        "wasmcloud:secrets"
    }

    fn add_to_linker(&self, linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
        store::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
        reveal::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |s| s)?;
        Ok(())
    }

    fn new_instance_state(
        &self,
        _ctx: &InstanceContext,
        extensions: &mut Extensions,
    ) -> anyhow::Result<()> {
        extensions.insert(SecretsInstance {
            source: self.source.clone(),
        });
        Ok(())
    }
}

impl From<SecretError> for store::SecretsError {
    fn from(error: SecretError) -> Self {
        match error {
            SecretError::NotFound => store::SecretsError::NotFound,
            SecretError::Upstream(message) => store::SecretsError::Upstream(message),
            SecretError::Io(message) => store::SecretsError::Io(message),
        }
    }
}

impl store::Host for InstanceState {
    fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Resource<SecretHandle>, store::SecretsError>> {
        let Some(source) = self
            .extension::<SecretsInstance>()
            .map(|s| s.source.clone())
        else {
            return Ok(Err(store::SecretsError::Upstream(
                "wasmcloud:secrets is not set up for this instance".to_string(),
            )));
        };
        let component_id = self.component_id().to_string();
        match source.get(&component_id, &key) {
            Ok(value) => {
                tracing::debug!(component_id, key, "wasmcloud:secrets get: found");
                Ok(Ok(self.table().push(SecretHandle { value })?))
            }
            Err(error) => {
                tracing::debug!(component_id, key, ?error, "wasmcloud:secrets get: failed");
                Ok(Err(error.into()))
            }
        }
    }
}

impl store::HostSecret for InstanceState {
    fn drop(&mut self, secret: Resource<SecretHandle>) -> wasmtime::Result<()> {
        self.table().delete(secret)?;
        Ok(())
    }
}

impl reveal::Host for InstanceState {
    fn reveal(&mut self, secret: Resource<SecretHandle>) -> wasmtime::Result<store::SecretValue> {
        let handle = self.table().get(&secret)?;
        Ok(match handle.value.expose() {
            ExposedSecret::Text(text) => store::SecretValue::String(text.to_string()),
            ExposedSecret::Bytes(bytes) => store::SecretValue::Bytes(bytes.to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secret_file_must_be_a_regular_file() {
        let error = StaticSecrets::from_files(&[("zero".into(), "/dev/zero".into())])
            .expect_err("a device is refused before it is read")
            .to_string();
        assert!(error.contains("not a regular file"), "{error}");
    }

    use super::*;

    #[test]
    fn values_never_format() {
        let value = SecretValue::text("hunter2");
        assert_eq!(format!("{value}"), "<redacted>");
        assert_eq!(format!("{value:?}"), "<redacted>");
        assert_eq!(format!("{:?}", value.expose()), "<redacted>");
        let handle = SecretHandle { value };
        assert!(!format!("{handle:?}").contains("hunter2"));
    }

    #[test]
    fn static_secrets_are_scoped_to_their_component() {
        let mut secrets = StaticSecrets::new();
        secrets
            .grant("a", "db", SecretValue::text("pw"))
            .grant_to_all("shared", SecretValue::bytes(vec![1, 2, 3]));
        assert_eq!(secrets.get("a", "db"), Ok(SecretValue::text("pw")));
        assert_eq!(secrets.get("b", "db"), Err(SecretError::NotFound));
        assert_eq!(secrets.get("b", "shared").map(|v| v.len()), Ok(3));
        assert_eq!(NoSecrets.get("a", "db"), Err(SecretError::NotFound));
        assert!(!format!("{secrets:?}").contains("pw"));
    }

    #[test]
    fn secret_files_are_read_and_granted_to_everyone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("text");
        let binary = dir.path().join("binary");
        std::fs::write(&text, "hunter2").expect("write");
        std::fs::write(&binary, [0xff, 0x00]).expect("write");
        let arg = format!("db = {}", text.display());
        let files = vec![
            parse_secret_file(&arg).expect("parses"),
            ("blob".to_string(), binary),
        ];
        let secrets = StaticSecrets::from_files(&files).expect("reads");
        assert_eq!(secrets.get("any", "db"), Ok(SecretValue::text("hunter2")));
        assert_eq!(
            secrets.get("any", "blob"),
            Ok(SecretValue::bytes(vec![0xff, 0]))
        );
        assert!(parse_secret_file("novalue").is_err());
        assert!(parse_secret_file("=x").is_err());
        let missing = vec![("gone".to_string(), dir.path().join("missing"))];
        let error = StaticSecrets::from_files(&missing)
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("secret `gone`")));
    }
}

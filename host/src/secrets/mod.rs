//! Secrets for components: fetched by reference when a component starts, held in memory while
//! it runs, handed to the `wasmcloud:secrets` capability by component id.
//!
//! A component's named configs whose names start with `SECRET_` are secret *references*
//! (written by the reconciler from the manifest's `secrets`, see
//! [`trellis_protocol::secrets::SecretReference`]). When the host starts the component it reads
//! each reference from the lattice's config store and asks the reference's backend for the
//! value over NATS ([`trellis_protocol::secrets_client::SecretsClient`]), telling the backend
//! who asks: the component's embedded JWT (empty when unsigned), the host's JWT
//! ([`crate::security::HostToken`]) and the application from the `wasmcloud.dev/appspec`
//! annotation. A reference that cannot be resolved fails the start with the reason; values are
//! never logged, put in events, configs or errors.

mod value;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use trellis_protocol::secrets::{is_reference_name, SecretReference};
use trellis_protocol::secrets_client::SecretsClient;

pub use value::{ExposedSecret, SecretValue};

use crate::lattice::store::LatticeStore;

/// How long a host waits for a secrets backend's answer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The annotation naming the application a component belongs to.
pub const APP_ANNOTATION: &str = "wasmcloud.dev/appspec";

/// One component's secrets: name -> value.
type SecretsByName = Arc<HashMap<String, SecretValue>>;

/// Secrets fetched for the components running on a host: component id -> name -> value.
/// Cheap to clone; the host fills it, the `wasmcloud:secrets` capability reads it.
#[derive(Clone, Default)]
pub struct ComponentSecrets {
    by_component: Arc<RwLock<HashMap<String, SecretsByName>>>,
}

impl std::fmt::Debug for ComponentSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let components = self.by_component.read().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("ComponentSecrets")
            .field("components", &components)
            .finish()
    }
}

impl ComponentSecrets {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The secret `name` fetched for `component_id`, if any.
    pub fn get(&self, component_id: &str, name: &str) -> Option<SecretValue> {
        self.by_component
            .read()
            .ok()?
            .get(component_id)?
            .get(name)
            .cloned()
    }

    /// The names of the secrets held for `component_id` (never values).
    pub fn names(&self, component_id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_component
            .read()
            .ok()
            .and_then(|m| m.get(component_id).map(|s| s.keys().cloned().collect()))
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Replaces what `component_id` holds.
    pub(crate) fn set(&self, component_id: &str, secrets: HashMap<String, SecretValue>) {
        if let Ok(mut map) = self.by_component.write() {
            if secrets.is_empty() {
                map.remove(component_id);
            } else {
                map.insert(component_id.to_string(), Arc::new(secrets));
            }
        }
    }

    /// Forgets `component_id`'s secrets (it stopped).
    pub(crate) fn remove(&self, component_id: &str) {
        if let Ok(mut map) = self.by_component.write() {
            map.remove(component_id);
        }
    }
}

/// Splits a component's named configs into plain configs and secret references.
pub fn split_config_names(names: &[String]) -> (Vec<String>, Vec<String>) {
    names.iter().cloned().partition(|n| !is_reference_name(n))
}

/// Resolves secret references through the backends they name.
pub struct SecretFetcher {
    client: SecretsClient,
    host_jwt: String,
}

impl std::fmt::Debug for SecretFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFetcher")
            .field("prefix", &self.client.prefix())
            .finish()
    }
}

impl SecretFetcher {
    /// A fetcher asking backends under `prefix` on `client`, presenting `host_jwt`.
    pub fn new(client: async_nats::Client, prefix: &str, host_jwt: String) -> Self {
        Self {
            client: SecretsClient::new(client, prefix, FETCH_TIMEOUT),
            host_jwt,
        }
    }

    /// Fetches every reference in `reference_names` for a component (its embedded JWT, if
    /// signed, and its application), keyed by the name the component asks for. The first
    /// failure fails the whole set, naming the reference and the reason.
    pub async fn fetch(
        &self,
        store: &LatticeStore,
        reference_names: &[String],
        entity_jwt: Option<&str>,
        app: Option<&str>,
    ) -> anyhow::Result<HashMap<String, SecretValue>> {
        let mut secrets = HashMap::with_capacity(reference_names.len());
        for config_name in reference_names {
            let map = store
                .get_config(config_name)
                .await?
                .with_context(|| format!("secret reference {config_name} does not exist"))?;
            let map = map.into_iter().collect();
            let reference = SecretReference::from_config_map(&map)
                .map_err(|e| anyhow::anyhow!("secret reference {config_name}: {e}"))?;
            let request = reference.request(entity_jwt.unwrap_or(""), &self.host_jwt, app);
            let secret = self
                .client
                .get(&reference.backend, &request)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("secret `{}` (key `{}`): {e}", reference.name, reference.key)
                })?;
            let value = match (secret.string_secret, secret.binary_secret) {
                (Some(text), _) => SecretValue::text(text),
                (None, Some(bytes)) => SecretValue::bytes(bytes),
                (None, None) => anyhow::bail!("secret `{}` has no value", reference.name),
            };
            tracing::debug!(
                secret = %reference.name,
                backend = %reference.backend,
                bytes = value.len(),
                "fetched a secret"
            );
            secrets.insert(reference.name, value);
        }
        Ok(secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_split_from_configs() {
        let names = vec![
            "app-settings".to_string(),
            "SECRET_app-db".to_string(),
            "other".to_string(),
        ];
        let (plain, secrets) = split_config_names(&names);
        assert_eq!(plain, vec!["app-settings", "other"]);
        assert_eq!(secrets, vec!["SECRET_app-db"]);
    }

    #[test]
    fn held_secrets_are_per_component_and_print_no_value() {
        let held = ComponentSecrets::new();
        held.set(
            "a",
            HashMap::from([("db".to_string(), SecretValue::text("hunter2"))]),
        );
        assert!(held.get("a", "db").is_some());
        assert!(held.get("b", "db").is_none());
        assert_eq!(held.names("a"), vec!["db"]);
        assert!(!format!("{held:?}").contains("hunter2"));
        held.remove("a");
        assert!(held.get("a", "db").is_none());
    }
}

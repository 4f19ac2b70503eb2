//! `wasi:config/store` and `wasi:config/runtime` at 0.2.0-draft: a component reads its own
//! merged named configs (the `config` list of its scale command), and nothing else.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use trellis_host::runtime::{Capability, Extensions, InstanceContext, InstanceState};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/wasi-config",
        world: "wasi:config/imports",
    });
}

use bindings::wasi::config::{runtime, store};

/// Serves `wasi:config/store` and `wasi:config/runtime` to every component.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConfigCapability;

/// The config one instance sees (per-instance extension).
struct ComponentConfig(Arc<HashMap<String, String>>);

impl Capability for ConfigCapability {
    fn name(&self) -> &str {
        "wasi:config"
    }

    fn add_to_linker(&self, linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
        store::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |state| state)?;
        runtime::add_to_linker::<InstanceState, HasSelf<InstanceState>>(linker, |state| state)?;
        Ok(())
    }

    fn new_instance_state(
        &self,
        ctx: &InstanceContext,
        extensions: &mut Extensions,
    ) -> anyhow::Result<()> {
        extensions.insert(ComponentConfig(ctx.config.clone()));
        Ok(())
    }
}

/// The instance's config, or an error message when the capability set no state.
fn component_config(state: &InstanceState) -> Result<Arc<HashMap<String, String>>, String> {
    state
        .extension::<ComponentConfig>()
        .map(|c| c.0.clone())
        .ok_or_else(|| "wasi:config is not set up for this instance".to_string())
}

/// Every entry, sorted by key so guests see a stable order.
fn sorted_entries(config: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> =
        config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all.sort();
    all
}

impl store::Host for InstanceState {
    fn get(&mut self, key: String) -> Result<Option<String>, store::Error> {
        let config = component_config(self).map_err(store::Error::Upstream)?;
        Ok(config.get(&key).cloned())
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, store::Error> {
        let config = component_config(self).map_err(store::Error::Upstream)?;
        Ok(sorted_entries(&config))
    }
}

impl runtime::Host for InstanceState {
    fn get(&mut self, key: String) -> Result<Option<String>, runtime::ConfigError> {
        let config = component_config(self).map_err(runtime::ConfigError::Upstream)?;
        Ok(config.get(&key).cloned())
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, runtime::ConfigError> {
        let config = component_config(self).map_err(runtime::ConfigError::Upstream)?;
        Ok(sorted_entries(&config))
    }
}

//! `wasmcloud:bus/lattice` (1.0.0 and 2.0.x): lets a component pick the link name its next
//! calls of given interfaces use.
//!
//! ```wit
//! interface lattice {
//!     resource call-target-interface {
//!         constructor(namespace: string, %package: string, %interface: string);
//!     }
//!     // 1.0.0:
//!     set-link-name: func(name: string, interfaces: list<call-target-interface>);
//!     // 2.0.x: fails when the component has no such link for one of the interfaces.
//!     set-link-name: func(name: string, interfaces: list<call-target-interface>) -> result<_, string>;
//! }
//! ```
//!
//! The choice is per instance (stored in the instance's [`crate::runtime::Extensions`]): a
//! fresh instance starts with `default` for every interface.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime::StoreContextMut;

use super::{InterfaceName, DEFAULT_LINK_NAME};
use crate::host::{Host, HostSlot};
use crate::runtime::{Capability, InstanceState};

/// How the bus finds the running host (to check links for 2.0.x `set-link-name`).
pub type HostLookup = Arc<dyn Fn() -> Option<Arc<Host>> + Send + Sync + 'static>;

/// A `call-target-interface` resource: `namespace:package/interface`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallTargetInterface {
    /// WIT namespace.
    pub namespace: String,
    /// WIT package.
    pub package: String,
    /// Interface name.
    pub interface: String,
}

/// The link names an instance chose with `set-link-name`, per interface.
#[derive(Debug, Default, Clone)]
pub struct LinkNames {
    by_interface: HashMap<CallTargetInterface, String>,
}

impl LinkNames {
    /// The link name chosen for `target`, if any.
    pub fn get(&self, target: &CallTargetInterface) -> Option<&str> {
        self.by_interface.get(target).map(String::as_str)
    }
}

/// The link name the instance's next call of `import` uses.
pub fn link_name_for(state: &InstanceState, import: &InterfaceName) -> String {
    let chosen = state.extension::<LinkNames>().and_then(|names| {
        names
            .by_interface
            .iter()
            .find(|(target, _)| {
                target.namespace == import.namespace
                    && target.package == import.package
                    && target.interface == import.interface
            })
            .map(|(_, name)| name.clone())
    });
    chosen.unwrap_or_else(|| DEFAULT_LINK_NAME.to_string())
}

/// Whether `name` is a `wasmcloud:bus/lattice` version this host implements.
pub fn is_lattice_interface(name: &str) -> bool {
    name == "wasmcloud:bus/lattice@1.0.0" || name.starts_with("wasmcloud:bus/lattice@2.0.")
}

/// Defines `wasmcloud:bus/lattice` under the exact import `name` (1.0.0 or 2.0.x) in `linker`.
/// `host` is used by 2.0.x to check that the links exist.
pub fn add_lattice_interface(
    linker: &mut Linker<InstanceState>,
    name: &str,
    host: HostLookup,
) -> anyhow::Result<()> {
    let version_two = name.starts_with("wasmcloud:bus/lattice@2.");
    let mut instance = linker.instance(name)?;
    instance
        .resource(
            "call-target-interface",
            ResourceType::host::<CallTargetInterface>(),
            |mut store: StoreContextMut<'_, InstanceState>, rep| {
                store
                    .data_mut()
                    .table()
                    .delete(Resource::<CallTargetInterface>::new_own(rep))?;
                Ok(())
            },
        )
        .map_err(anyhow::Error::from)
        .with_context(|| format!("defining {name} call-target-interface"))?;
    instance.func_wrap(
        "[constructor]call-target-interface",
        |mut store: StoreContextMut<'_, InstanceState>,
         (namespace, package, interface): (String, String, String)| {
            let handle = store.data_mut().table().push(CallTargetInterface {
                namespace,
                package,
                interface,
            })?;
            Ok((handle,))
        },
    )?;
    if version_two {
        instance.func_wrap(
            "set-link-name",
            move |mut store: StoreContextMut<'_, InstanceState>,
                  (name, interfaces): (String, Vec<Resource<CallTargetInterface>>)| {
                let targets = take_targets(store.data_mut(), interfaces)?;
                let missing =
                    host().and_then(|host| missing_links(&host, store.data(), &name, &targets));
                if let Some(missing) = missing {
                    return Ok((Err(missing),));
                }
                set_link_name(store.data_mut(), name, targets);
                Ok((Ok(()),))
            },
        )?;
    } else {
        instance.func_wrap(
            "set-link-name",
            |mut store: StoreContextMut<'_, InstanceState>,
             (name, interfaces): (String, Vec<Resource<CallTargetInterface>>)| {
                let targets = take_targets(store.data_mut(), interfaces)?;
                set_link_name(store.data_mut(), name, targets);
                Ok(())
            },
        )?;
    }
    Ok(())
}

/// Reads (and releases) the `call-target-interface` handles passed to `set-link-name`.
fn take_targets(
    state: &mut InstanceState,
    interfaces: Vec<Resource<CallTargetInterface>>,
) -> wasmtime::Result<Vec<CallTargetInterface>> {
    let mut targets = Vec::with_capacity(interfaces.len());
    for handle in interfaces {
        targets.push(state.table().delete(handle)?);
    }
    Ok(targets)
}

fn set_link_name(state: &mut InstanceState, name: String, targets: Vec<CallTargetInterface>) {
    if state.extension::<LinkNames>().is_none() {
        state.extensions.insert(LinkNames::default());
    }
    if let Some(names) = state.extension_mut::<LinkNames>() {
        for target in targets {
            names.by_interface.insert(target, name.clone());
        }
    }
}

/// For 2.0.x: the first interface the component has no link `name` for, as a message.
fn missing_links(
    host: &Host,
    state: &InstanceState,
    name: &str,
    targets: &[CallTargetInterface],
) -> Option<String> {
    let source = state.component_id();
    host.store.with_links(|links| {
        targets
            .iter()
            .find(|t| {
                links
                    .route(source, &t.namespace, &t.package, &t.interface, name)
                    .is_none()
            })
            .map(|t| {
                format!(
                    "component {source} has no link named `{name}` for {}:{}/{}",
                    t.namespace, t.package, t.interface
                )
            })
    })
}

/// `wasmcloud:bus/lattice` as a [`Capability`], for runtimes built with it in
/// [`crate::runtime::RuntimeConfig::capabilities`]. Hosts get it without that: the host's
/// import resolver adds it for components importing it.
#[derive(Debug, Default, Clone)]
pub struct LatticeBus {
    /// The host whose links 2.0.x `set-link-name` checks.
    pub host: HostSlot,
}

impl Capability for LatticeBus {
    fn name(&self) -> &str {
        "wasmcloud:bus/lattice"
    }

    fn add_to_linker(&self, linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
        let slot = self.host.clone();
        let host: HostLookup = Arc::new(move || slot.get());
        add_lattice_interface(linker, "wasmcloud:bus/lattice@1.0.0", host.clone())?;
        add_lattice_interface(linker, "wasmcloud:bus/lattice@2.0.0", host)
    }
}

//! Component-to-component calls: wires the lattice invocation protocol
//! ([`crate::invocation`]) into the runtime and the host.
//!
//! - **Imports** ([`CallForwarder`], an [`ImportResolver`]): when a component imports an
//!   interface the shared linker does not provide (anything but WASI and the capabilities),
//!   every function of it gets a stub that resolves the caller's link on each call (source =
//!   the calling component, namespace/package/interface from the import name, link name =
//!   the instance's current one, `default` unless changed with `wasmcloud:bus/lattice`
//!   `set-link-name`). The link table is the host's in-memory copy, so link changes apply to
//!   running components at once. No link fails the call at once with
//!   [`InvocationError::LinkNotFound`].
//! - **Co-location**: when the link target runs on this host (and co-location is enabled), the
//!   call goes in-process: the caller's values are passed to a fresh instance of the target,
//!   no encoding, no NATS. Otherwise it goes over NATS with [`InvocationClient`].
//! - **Exports** ([`serve_exports`]): every running component exporting non-WASI interfaces
//!   is served over the lattice by an [`crate::invocation::InvocationServer`] for its id,
//!   started and stopped as components start and stop.
//! - **`wasmcloud:bus/lattice`** 1.0.0 and 2.0.x ([`bus`]): `set-link-name` stores a
//!   per-instance link name per interface, used by the next calls of that instance.
//!
//! Start it all with [`start`] (done by [`crate::HostHandle::start`]).

pub mod bus;
mod exports;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::Instrument as _;
use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex, Linker, Val};
use wasmtime::StoreContextMut;

use crate::host::Host;
use crate::invocation::codec::{decode_values, encode_values};
use crate::invocation::linking::imported_interfaces;
use crate::invocation::{CallContext, InvocationClient, InvocationError};
use crate::runtime::{ImportResolver, InstanceState, Invocation, PreparedComponent};

pub use exports::serve_exports;

/// The link name used when an instance did not choose one.
pub const DEFAULT_LINK_NAME: &str = "default";

/// Extra time past a target's execution deadline before an in-process call is abandoned
/// (the epoch deadline normally stops the guest first).
const LOCAL_CALL_GRACE: Duration = Duration::from_millis(200);

/// Installs the [`CallForwarder`] as `host`'s import resolver and spawns the task serving
/// the exports of its running components over the lattice ([`serve_exports`]). Aborting
/// the returned handle stops serving (dropping every server).
pub fn start(host: &Arc<Host>, colocation: bool) -> JoinHandle<()> {
    let forwarder = Arc::new(CallForwarder::new(Arc::downgrade(host), colocation));
    if !host
        .runtime
        .set_import_resolver(Arc::new(forwarder.clone()))
    {
        tracing::warn!("the runtime already had an import resolver; component calls use it");
    }
    tokio::spawn(serve_exports(host.clone(), forwarder))
}

/// `namespace:package/interface@version`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceName {
    /// WIT namespace, e.g. `trellis`.
    pub namespace: String,
    /// WIT package, e.g. `demo`.
    pub package: String,
    /// Interface, e.g. `inventory`.
    pub interface: String,
    /// Version, if the name has one, e.g. `0.1.0`.
    pub version: Option<String>,
}

impl InterfaceName {
    /// Parses an import or export name; `None` for names that are not `ns:pkg/iface[@ver]`.
    pub fn parse(name: &str) -> Option<Self> {
        let (path, version) = match name.split_once('@') {
            Some((path, version)) => (path, Some(version.to_string())),
            None => (name, None),
        };
        let (namespace, rest) = path.split_once(':')?;
        let (package, interface) = rest.split_once('/')?;
        if namespace.is_empty() || package.is_empty() || interface.is_empty() {
            return None;
        }
        Some(Self {
            namespace: namespace.to_string(),
            package: package.to_string(),
            interface: interface.to_string(),
            version,
        })
    }
}

/// One exported function of a component: where to find it and its types.
#[derive(Debug, Clone)]
pub struct ExportedFunction {
    /// Index of the function in the component (fast lookup in an instance).
    pub index: ComponentExportIndex,
    /// Parameter types, in order.
    pub params: Vec<Type>,
    /// Result types, in order.
    pub results: Vec<Type>,
}

/// The non-WASI functions a component exports, by interface and function name.
#[derive(Debug, Default)]
pub struct ExportTable {
    functions: HashMap<String, HashMap<String, ExportedFunction>>,
}

impl ExportTable {
    /// Reads the exports of `component`, skipping `wasi:*` interfaces.
    pub fn of(component: &Component) -> Self {
        let engine = component.engine();
        let mut functions: HashMap<String, HashMap<String, ExportedFunction>> = HashMap::new();
        for (name, item) in component.component_type().exports(engine) {
            let ComponentItem::ComponentInstance(instance) = item.ty else {
                continue;
            };
            if name.starts_with("wasi:") {
                continue;
            }
            let Some(instance_index) = component.get_export_index(None, name) else {
                continue;
            };
            for (function, item) in instance.exports(engine) {
                let ComponentItem::ComponentFunc(ty) = item.ty else {
                    continue;
                };
                let Some(index) = component.get_export_index(Some(&instance_index), function)
                else {
                    continue;
                };
                functions.entry(name.to_string()).or_default().insert(
                    function.to_string(),
                    ExportedFunction {
                        index,
                        params: ty.params().map(|(_, t)| t).collect(),
                        results: ty.results().collect(),
                    },
                );
            }
        }
        Self { functions }
    }

    /// Whether the component exports no non-WASI function.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// The function `function` of `interface`, if exported.
    pub fn get(&self, interface: &str, function: &str) -> Option<&ExportedFunction> {
        self.functions.get(interface)?.get(function)
    }
}

/// Where one call goes.
enum Destination {
    /// The target runs on this host: call it in-process.
    Local(Arc<PreparedComponent>),
    /// Over the lattice.
    Remote(Box<RemoteTarget>),
}

/// A target reached over NATS.
struct RemoteTarget {
    client: InvocationClient,
    target_id: String,
    context: CallContext,
}

/// A component's export table, remembered with the prepared component it describes.
type CachedExportTable = (Weak<PreparedComponent>, Arc<ExportTable>);

/// Routes components' imports to their link targets (in-process or over NATS) and serves
/// their exports. One per host.
pub struct CallForwarder {
    host: Weak<Host>,
    colocation: bool,
    client: OnceLock<InvocationClient>,
    /// Export tables by component id, valid while the component is the same prepared one.
    export_tables: Mutex<HashMap<String, CachedExportTable>>,
}

impl std::fmt::Debug for CallForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallForwarder")
            .field("colocation", &self.colocation)
            .finish_non_exhaustive()
    }
}

impl CallForwarder {
    /// A forwarder for `host`; `colocation: false` sends every call over NATS.
    pub fn new(host: Weak<Host>, colocation: bool) -> Self {
        Self {
            host,
            colocation,
            client: OnceLock::new(),
            export_tables: Mutex::default(),
        }
    }

    fn host(&self) -> Result<Arc<Host>, InvocationError> {
        self.host
            .upgrade()
            .ok_or_else(|| InvocationError::transport("the host is stopping"))
    }

    /// The export table of `prepared`, computed once per prepared component.
    pub fn export_table(&self, prepared: &Arc<PreparedComponent>) -> Arc<ExportTable> {
        let mut tables = self
            .export_tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((owner, table)) = tables.get(prepared.id()) {
            if std::ptr::eq(owner.as_ptr(), Arc::as_ptr(prepared)) {
                return table.clone();
            }
        }
        let table = Arc::new(ExportTable::of(prepared.instance_pre().component()));
        tables.retain(|_, (owner, _)| owner.strong_count() > 0);
        tables.insert(
            prepared.id().to_string(),
            (Arc::downgrade(prepared), table.clone()),
        );
        table
    }

    /// Resolves the link of `source_id` for `import` under `link_name`.
    fn destination(
        &self,
        source_id: &str,
        import: &InterfaceName,
        link_name: &str,
    ) -> Result<Destination, InvocationError> {
        let host = self.host()?;
        let target = host.store.with_links(|links| {
            links
                .route(
                    source_id,
                    &import.namespace,
                    &import.package,
                    &import.interface,
                    link_name,
                )
                .map(|link| link.target.clone())
        });
        let Some(target_id) = target else {
            return Err(InvocationError::LinkNotFound {
                message: format!(
                    "component {source_id} has no link named `{link_name}` for {}:{}/{}",
                    import.namespace, import.package, import.interface
                ),
            });
        };
        if self.colocation {
            if let Some(running) = host.components.get(&target_id) {
                return Ok(Destination::Local(running.prepared.clone()));
            }
        }
        let client = self
            .client
            .get_or_init(|| {
                let client = InvocationClient::new(host.client.clone(), host.lattice.clone());
                match &host.direct_peers {
                    Some(peers) => client.with_direct_peers(peers.clone()),
                    None => client,
                }
            })
            .clone();
        Ok(Destination::Remote(Box::new(RemoteTarget {
            client,
            context: CallContext {
                source_id: Some(source_id.to_string()),
                link_name: Some(link_name.to_string()),
                ..Default::default()
            },
            target_id,
        })))
    }

    /// Calls `interface`.`function` of `prepared` in a fresh instance with `params`.
    pub async fn call_local(
        &self,
        prepared: &Arc<PreparedComponent>,
        interface: &str,
        function: &str,
        params: &[Val],
    ) -> Result<Vec<Val>, InvocationError> {
        let table = self.export_table(prepared);
        let Some(exported) = table.get(interface, function) else {
            return Err(InvocationError::bad_request(format!(
                "component {} does not export {interface}.{function}",
                prepared.id()
            )));
        };
        Ok(call_export(prepared, exported, params, interface, function)
            .await?
            .results)
    }

    /// Defines forwarding stubs for the functions of the imported `interface`. Functions the
    /// linker already defines are left alone.
    fn forward_interface(
        self: &Arc<Self>,
        linker: &mut Linker<InstanceState>,
        interface: &str,
        import: InterfaceName,
        functions: &[String],
    ) -> anyhow::Result<()> {
        let mut instance = linker.instance(interface)?;
        let import = Arc::new(import);
        for function in functions {
            let interface: Arc<str> = Arc::from(interface);
            let function_name: Arc<str> = Arc::from(function.as_str());
            let forwarder = self.clone();
            let import = import.clone();
            let interface_for_log = interface.clone();
            let defined = instance.func_new_async(
                function,
                move |mut store: StoreContextMut<'_, InstanceState>, ty, params, results| {
                    let state = store.data_mut();
                    let link_name = bus::link_name_for(state, &import);
                    let destination =
                        forwarder.destination(state.component_id(), &import, &link_name);
                    let forwarder = forwarder.clone();
                    let interface = interface.clone();
                    let function = function_name.clone();
                    Box::new(async move {
                        let values = match destination.map_err(wasmtime::Error::new)? {
                            Destination::Local(target) => forwarder
                                .call_local(&target, &interface, &function, params)
                                .await
                                .map_err(wasmtime::Error::new)?,
                            Destination::Remote(remote) => {
                                let RemoteTarget {
                                    client,
                                    target_id,
                                    context,
                                } = *remote;
                                let param_types: Vec<Type> = ty.params().map(|(_, t)| t).collect();
                                let encoded = encode_values(params, &param_types).map_err(|e| {
                                    wasmtime::Error::new(InvocationError::bad_request(format!(
                                        "encoding the params of {interface}.{function}: {e}"
                                    )))
                                })?;
                                let reply = client
                                    .invoke(
                                        &target_id,
                                        &interface,
                                        &function,
                                        Bytes::from(encoded),
                                        context,
                                    )
                                    .await
                                    .map_err(wasmtime::Error::new)?;
                                let result_types: Vec<Type> = ty.results().collect();
                                decode_values(&reply, &result_types).map_err(|e| {
                                    wasmtime::Error::new(InvocationError::transport(format!(
                                        "decoding the results of {interface}.{function} from {target_id}: {e}"
                                    )))
                                })?
                            }
                        };
                        if values.len() != results.len() {
                            return Err(wasmtime::Error::new(InvocationError::transport(format!(
                                "{interface}.{function} returned {} values, expected {}",
                                values.len(),
                                results.len()
                            ))));
                        }
                        for (slot, value) in results.iter_mut().zip(values) {
                            *slot = value;
                        }
                        Ok(())
                    })
                },
            );
            if let Err(error) = defined {
                // Already provided (by a capability): keep that definition.
                tracing::debug!(interface = &*interface_for_log, function, %error, "not forwarding an import function");
            }
        }
        Ok(())
    }
}

impl ImportResolver for Arc<CallForwarder> {
    fn resolve_imports(
        &self,
        linker: &mut Linker<InstanceState>,
        component_id: &str,
        component: &Component,
    ) -> anyhow::Result<()> {
        let engine = linker.engine().clone();
        for (name, functions) in imported_interfaces(&engine, component) {
            if bus::is_lattice_interface(&name) {
                let host = self.host.clone();
                let lookup: bus::HostLookup = Arc::new(move || host.upgrade());
                if let Err(error) = bus::add_lattice_interface(linker, &name, lookup) {
                    tracing::debug!(component_id, interface = name, %error, "wasmcloud:bus not added (already provided?)");
                }
                continue;
            }
            if name.starts_with("wasi:") {
                continue;
            }
            let Some(import) = InterfaceName::parse(&name) else {
                continue;
            };
            tracing::debug!(
                component_id,
                interface = name,
                "forwarding an import to its link target"
            );
            self.forward_interface(linker, &name, import, &functions)?;
        }
        Ok(())
    }
}

/// A call that returned: its results, and the instance that produced them. Dropping the
/// instance returns its memory to the pool, which takes tens of microseconds: a caller that
/// can answer first should drop it after answering.
struct FinishedCall {
    results: Vec<Val>,
    instance: Invocation,
}

/// Runs `exported` in a fresh instance of `prepared` (under its concurrency cap and deadline).
/// Calls an export in a fresh instance, traced (a span per invocation) and counted when
/// telemetry is on; one branch otherwise.
async fn call_export(
    prepared: &PreparedComponent,
    exported: &ExportedFunction,
    params: &[Val],
    interface: &str,
    function: &str,
) -> Result<FinishedCall, InvocationError> {
    if !trellis_telemetry::traces_enabled() && !trellis_telemetry::metrics_enabled() {
        return run_export(prepared, exported, params).await;
    }
    let span = trellis_telemetry::spans::invocation(prepared.id(), interface, function, None);
    let started = std::time::Instant::now();
    let result = run_export(prepared, exported, params)
        .instrument(span.clone())
        .await;
    if let Err(error) = &result {
        trellis_telemetry::spans::record_error(&span, error);
    }
    trellis_telemetry::metrics::record_invocation(
        prepared.id(),
        interface,
        function,
        started.elapsed(),
        result.is_ok(),
    );
    result
}

async fn run_export(
    prepared: &PreparedComponent,
    exported: &ExportedFunction,
    params: &[Val],
) -> Result<FinishedCall, InvocationError> {
    let mut invocation = prepared.instantiate().await.map_err(runtime_failure)?;
    let Some(func) = invocation
        .instance
        .get_func(&mut invocation.store, exported.index)
    else {
        return Err(InvocationError::bad_request(format!(
            "component {} has no such function",
            prepared.id()
        )));
    };
    let mut results = vec![Val::Bool(false); exported.results.len()];
    let limit = prepared.limits().max_execution_time() + LOCAL_CALL_GRACE;
    let outcome = tokio::time::timeout(
        limit,
        func.call_async(&mut invocation.store, params, &mut results),
    )
    .await;
    match outcome {
        Err(_elapsed) => Err(InvocationError::deadline(format!(
            "component {} did not finish within {} ms",
            prepared.id(),
            prepared.limits().max_execution_time_ms
        ))),
        Ok(Err(error)) => Err(runtime_failure(invocation.error(error))),
        Ok(Ok(())) => Ok(FinishedCall {
            results,
            instance: invocation,
        }),
    }
}

/// Maps a runtime failure of the target to the error the caller sees.
fn runtime_failure(error: crate::runtime::InvocationError) -> InvocationError {
    match error {
        crate::runtime::InvocationError::DeadlineExceeded { .. }
        | crate::runtime::InvocationError::NoFreeInstance { .. } => {
            InvocationError::deadline(error.to_string())
        }
        other => InvocationError::trap(format!("{other:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_split() {
        assert_eq!(
            InterfaceName::parse("trellis:demo/inventory@0.1.0"),
            Some(InterfaceName {
                namespace: "trellis".into(),
                package: "demo".into(),
                interface: "inventory".into(),
                version: Some("0.1.0".into()),
            })
        );
        let plain = InterfaceName::parse("a:b/c").expect("parses");
        assert_eq!((plain.interface.as_str(), plain.version), ("c", None));
        for bad in ["inventory", "a:b", ":b/c", "a:/c", "a:b/"] {
            assert_eq!(InterfaceName::parse(bad), None, "{bad}");
        }
    }

    /// A component importing `wasmcloud:bus/lattice` in its WIT shape (`version`).
    fn bus_user(version: &str, returns_result: bool) -> String {
        let result = if returns_result {
            "(type $r (result (error string))) (export \"set-link-name\" (func (param \"name\" string) (param \"interfaces\" $l) (result $r)))"
        } else {
            "(export \"set-link-name\" (func (param \"name\" string) (param \"interfaces\" $l)))"
        };
        format!(
            r#"(component
                 (import "wasmcloud:bus/lattice@{version}" (instance
                   (export "call-target-interface" (type $cti (sub resource)))
                   (type $own (own $cti))
                   (export "[constructor]call-target-interface"
                     (func (param "namespace" string) (param "package" string)
                           (param "interface" string) (result $own)))
                   (type $l (list $own))
                   {result}
                 ))
               )"#
        )
    }

    #[test]
    fn the_bus_matches_both_wit_versions() {
        let engine = wasmtime::Engine::default();
        let no_host: bus::HostLookup = Arc::new(|| None);
        for (version, returns_result) in [("1.0.0", false), ("2.0.0", true), ("2.0.1", true)] {
            let component = Component::new(&engine, bus_user(version, returns_result))
                .expect("the test component compiles");
            let empty = Linker::<InstanceState>::new(&engine);
            assert!(empty.instantiate_pre(&component).is_err());
            let name = format!("wasmcloud:bus/lattice@{version}");
            assert!(bus::is_lattice_interface(&name));
            let mut linker = Linker::<InstanceState>::new(&engine);
            bus::add_lattice_interface(&mut linker, &name, no_host.clone())
                .expect("the bus is defined");
            linker
                .instantiate_pre(&component)
                .unwrap_or_else(|e| panic!("{name} does not type-check: {e:#}"));
        }
        assert!(!bus::is_lattice_interface("wasmcloud:bus/lattice@3.0.0"));
    }
}

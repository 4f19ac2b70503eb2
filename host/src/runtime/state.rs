//! Per-instance store state and the capability seam.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::limits::MemoryLimiter;
use super::outgoing::{OutgoingHttpHandler, OutgoingHttpPolicy};

/// What a capability knows about the instance it is creating state for.
#[derive(Debug, Clone)]
pub struct InstanceContext {
    /// The component id (as given in the scale command).
    pub component_id: Arc<str>,
    /// The component's merged named configs.
    pub config: Arc<HashMap<String, String>>,
}

/// A host capability (keyvalue, messaging, logging, config...), added without editing the runtime.
///
/// The runtime calls [`Capability::add_to_linker`] once per [`super::Runtime`], when building the
/// shared linker, and [`Capability::new_instance_state`] for every instance (every invocation);
/// the returned value is stored in [`InstanceState`]'s extensions, where the capability's host
/// functions find it with [`InstanceState::extension_mut`].
pub trait Capability: Send + Sync + 'static {
    /// Short name used in errors and logs (e.g. `"wasi:keyvalue"`).
    fn name(&self) -> &str;

    /// Adds the capability's host functions to the linker shared by all components.
    fn add_to_linker(&self, linker: &mut Linker<InstanceState>) -> anyhow::Result<()>;

    /// Creates this capability's per-instance state, if it needs any. Use
    /// [`Extensions::insert`] to add one or more values. It may run well before the instance
    /// is called (a spare instance, see `PreparedComponent::prepare_spare`): resolve links and
    /// connections when the guest uses them, not here.
    fn new_instance_state(
        &self,
        ctx: &InstanceContext,
        extensions: &mut Extensions,
    ) -> anyhow::Result<()> {
        let _ = (ctx, extensions);
        Ok(())
    }
}

/// Provides, per component, imports the shared linker lacks (the host forwards them over the
/// lattice). Called by [`super::Runtime::prepare`] with a copy of the shared linker, only when
/// the shared linker cannot instantiate the component.
pub trait ImportResolver: Send + Sync + 'static {
    /// Defines in `linker` what `component` (id `component_id`) imports and `linker` lacks.
    /// Whatever is still missing afterwards makes the component fail to prepare.
    fn resolve_imports(
        &self,
        linker: &mut Linker<InstanceState>,
        component_id: &str,
        component: &wasmtime::component::Component,
    ) -> anyhow::Result<()>;
}

/// A type map: at most one value of each type, added by capabilities.
#[derive(Default)]
pub struct Extensions {
    values: HashMap<TypeId, Box<dyn Any + Send>>,
}

impl Extensions {
    /// Stores `value`, returning the previous value of the same type.
    pub fn insert<T: Any + Send>(&mut self, value: T) -> Option<T> {
        self.values
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast::<T>().ok().map(|boxed| *boxed))
    }

    /// The value of type `T`, if any.
    pub fn get<T: Any + Send>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|value| value.downcast_ref::<T>())
    }

    /// The value of type `T`, mutably, if any.
    pub fn get_mut<T: Any + Send>(&mut self) -> Option<&mut T> {
        self.values
            .get_mut(&TypeId::of::<T>())
            .and_then(|value| value.downcast_mut::<T>())
    }
}

/// The data of every wasmtime `Store` the runtime creates (one per invocation).
pub struct InstanceState {
    pub(crate) component_id: Arc<str>,
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_policy: OutgoingHttpPolicy,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) extensions: Extensions,
}

impl InstanceState {
    /// The id of the component this instance belongs to.
    pub fn component_id(&self) -> &str {
        &self.component_id
    }

    /// The resource table shared by WASI and capabilities (for host resources).
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// A capability's per-instance state of type `T`.
    pub fn extension<T: Any + Send>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }

    /// A capability's per-instance state of type `T`, mutably.
    pub fn extension_mut<T: Any + Send>(&mut self) -> Option<&mut T> {
        self.extensions.get_mut::<T>()
    }

    /// All capability state (e.g. to borrow the table and an extension at once).
    pub fn parts_mut(&mut self) -> (&mut ResourceTable, &mut Extensions) {
        (&mut self.table, &mut self.extensions)
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        // A capability that took outgoing HTTP over (the http-client provider) left its
        // handler in the extensions, bound to `allowed_hosts` when the store was built;
        // otherwise the `allowed_hosts`-only policy applies.
        let hooks: &mut dyn wasmtime_wasi_http::WasiHttpHooks =
            match self.extensions.get_mut::<OutgoingHttpHandler>() {
                Some(handler) => handler,
                None => &mut self.http_policy,
            };
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks,
        }
    }
}

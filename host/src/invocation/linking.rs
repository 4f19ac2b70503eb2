//! Serving a component's imports from the lattice: defines imported functions in a wasmtime
//! [`Linker`] so that each call is encoded with the function's own types, sent with
//! [`InvocationClient::invoke`], and its results decoded back into the guest.
//!
//! A failed lattice call traps the calling guest with the [`InvocationError`] as the trap's
//! error (downcast it with `error.downcast_ref::<InvocationError>()`).

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, StoreContextMut};

use super::codec::{decode_values, encode_values};
use super::{CallContext, InvocationClient, InvocationError};

/// Where one call of an import goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// The client (lattice connection) to call through.
    pub client: InvocationClient,
    /// The target id serving the interface (resolved from the caller's link).
    pub target_id: String,
    /// Headers of the call: trace context, source id, link name, deadline.
    pub context: CallContext,
}

/// Decides, for the store's data, an interface and a function, where a call goes; returns
/// [`InvocationError::LinkNotFound`] when the caller has no link for it.
pub type Router<T> =
    Arc<dyn Fn(&mut T, &str, &str) -> Result<Route, InvocationError> + Send + Sync + 'static>;

/// The interfaces `component` imports, each with its function names, e.g.
/// `("trellis:demo/inventory@0.1.0", ["echo-item", ...])`. Resource-using functions are
/// listed too; calling them fails with "resources cannot cross the lattice".
pub fn imported_interfaces(engine: &Engine, component: &Component) -> Vec<(String, Vec<String>)> {
    let ty = component.component_type();
    ty.imports(engine)
        .filter_map(|(name, item)| match item.ty {
            ComponentItem::ComponentInstance(instance) => {
                let functions: Vec<String> = instance
                    .exports(engine)
                    .filter(|(_, export)| matches!(export.ty, ComponentItem::ComponentFunc(_)))
                    .map(|(function, _)| function.to_owned())
                    .collect();
                Some((name.to_owned(), functions))
            }
            _ => None,
        })
        .collect()
}

/// Defines `functions` of `interface` in `linker`, forwarding every call to the lattice
/// target `router` picks.
pub fn forward_interface<T: Send + 'static>(
    linker: &mut Linker<T>,
    interface: &str,
    functions: &[String],
    router: Router<T>,
) -> wasmtime::Result<()> {
    let mut instance = linker.instance(interface)?;
    for function in functions {
        let interface: Arc<str> = Arc::from(interface);
        let function: Arc<str> = Arc::from(function.as_str());
        let router = router.clone();
        let name = function.to_string();
        instance.func_new_async(
            &name,
            move |mut store: StoreContextMut<'_, T>, ty, params, results| {
                let route = router(store.data_mut(), &interface, &function);
                let interface = interface.clone();
                let function = function.clone();
                Box::new(async move {
                    let route = route.map_err(wasmtime::Error::new)?;
                    let param_types: Vec<Type> = ty.params().map(|(_, t)| t).collect();
                    let encoded = encode_values(params, &param_types).map_err(|e| {
                        wasmtime::Error::new(InvocationError::bad_request(format!(
                            "encoding the params of {interface}.{function}: {e}"
                        )))
                    })?;
                    let reply = route
                        .client
                        .invoke(
                            &route.target_id,
                            &interface,
                            &function,
                            Bytes::from(encoded),
                            route.context,
                        )
                        .await
                        .map_err(wasmtime::Error::new)?;
                    let result_types: Vec<Type> = ty.results().collect();
                    let values = decode_values(&reply, &result_types).map_err(|e| {
                        wasmtime::Error::new(InvocationError::transport(format!(
                            "decoding the results of {interface}.{function} from {}: {e}",
                            route.target_id
                        )))
                    })?;
                    for (slot, value) in results.iter_mut().zip(values) {
                        *slot = value;
                    }
                    Ok(())
                })
            },
        )?;
    }
    Ok(())
}

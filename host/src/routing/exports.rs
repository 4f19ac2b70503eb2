//! Serving the exports of running components over the lattice.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tracing::Instrument as _;

use super::{call_export, CallForwarder};
use crate::host::Host;
use crate::invocation::codec::{decode_values, encode_values};
use crate::invocation::{IncomingCall, InvocationError, InvocationServer, Reply, ServerOptions};

/// Follows the host's running components and keeps one [`InvocationServer`] per component
/// id that exports non-WASI functions: started when the component starts, dropped (which
/// unsubscribes) when it stops. Runs until aborted; dropping it drops every server.
pub async fn serve_exports(host: Arc<Host>, forwarder: Arc<CallForwarder>) {
    let mut changes = host.components.changes();
    let mut servers: HashMap<String, InvocationServer> = HashMap::new();
    let weak_host = Arc::downgrade(&host);
    loop {
        changes.borrow_and_update();
        let running = host.components.all();
        servers.retain(|id, _| {
            let keep = running.iter().any(|c| c.prepared.id() == id);
            if !keep {
                tracing::debug!(component_id = id, "stopped serving component exports");
            }
            keep
        });
        for component in running {
            let id = component.prepared.id().to_string();
            if servers.contains_key(&id) || forwarder.export_table(&component.prepared).is_empty() {
                continue;
            }
            let handler = {
                let host = weak_host.clone();
                let forwarder = forwarder.clone();
                let id = id.clone();
                move |call: IncomingCall| {
                    let host = host.clone();
                    let forwarder = forwarder.clone();
                    let id = id.clone();
                    // The server side of the caller's client span (one branch when off).
                    let span = trellis_telemetry::spans::rpc_server(
                        &id,
                        &call.interface,
                        &call.function,
                        call.context.source_id.as_deref(),
                        call.context.traceparent.as_deref(),
                    );
                    let recorded = span.clone();
                    async move {
                        let result = answer(&host, &forwarder, &id, call).await;
                        if let Err(error) = &result {
                            trellis_telemetry::spans::record_error(&recorded, error);
                        }
                        result
                    }
                    .instrument(span)
                }
            };
            match InvocationServer::serve(
                host.client.clone(),
                &host.lattice,
                &id,
                ServerOptions {
                    direct: host.direct_listener.clone(),
                    ..ServerOptions::default()
                },
                handler,
            )
            .await
            {
                Ok(server) => {
                    tracing::debug!(
                        component_id = id,
                        "serving component exports on the lattice"
                    );
                    servers.insert(id, server);
                }
                Err(error) => {
                    tracing::warn!(component_id = id, error = format!("{error:#}"), "cannot serve the component's exports on the lattice; retrying on the next component change");
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Answers one lattice call to component `id`.
async fn answer(
    host: &Weak<Host>,
    forwarder: &CallForwarder,
    id: &str,
    call: IncomingCall,
) -> Result<Reply, InvocationError> {
    let host = host
        .upgrade()
        .ok_or_else(|| InvocationError::NoResponders {
            target_id: id.to_string(),
        })?;
    let running = host
        .components
        .get(id)
        .ok_or_else(|| InvocationError::NoResponders {
            target_id: id.to_string(),
        })?;
    let prepared = &running.prepared;
    if let Some(policy) = &host.policy {
        let target = crate::security::policy::ComponentInformation {
            component_id: id.to_string(),
            image_ref: prepared.image_ref().to_string(),
            max_instances: 0,
            annotations: running.annotations.clone(),
            claims: prepared.claims().map(Into::into),
        };
        let decision = policy
            .perform_invocation(
                &host.policy_host_info(),
                &target,
                &call.interface,
                &call.function,
            )
            .await;
        if !decision.permitted {
            return Err(InvocationError::bad_request(format!(
                "policy denied the call to {}.{} on component {id}: {}",
                call.interface,
                call.function,
                decision.reason()
            )));
        }
    }
    let table = forwarder.export_table(prepared);
    let Some(exported) = table.get(&call.interface, &call.function) else {
        return Err(InvocationError::bad_request(format!(
            "component {id} does not export {}.{}",
            call.interface, call.function
        )));
    };
    let params = decode_values(&call.params, &exported.params).map_err(|e| {
        InvocationError::bad_request(format!(
            "decoding the params of {}.{}: {e}",
            call.interface, call.function
        ))
    })?;
    let finished =
        call_export(prepared, exported, &params, &call.interface, &call.function).await?;
    let encoded = encode_values(&finished.results, &exported.results).map_err(|e| {
        InvocationError::trap(format!(
            "encoding the results of {}.{}: {e}",
            call.interface, call.function
        ))
    })?;
    // After the reply: tear the instance down, then make the next call's instance ahead of
    // it (the freed pool slot is the warmest one for it).
    let instance = finished.instance;
    let prepared = running.prepared.clone();
    Ok(Reply::then(Bytes::from(encoded), async move {
        drop(instance);
        prepared.prepare_spare().await;
    }))
}

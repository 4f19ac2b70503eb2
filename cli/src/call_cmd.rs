//! `trellis call`: invoke a component's exported function over the lattice.
//!
//! The CLI learns the function's WIT signature from the component's own code: it finds the
//! component in the hosts' inventories, loads the `.wasm` its `image_ref` names (local files
//! only for now), reads the export's parameter and result types, converts the JSON arguments
//! to typed values, and sends the call through the lattice invocation protocol
//! (`trellis_host::invocation`). The reply is decoded with the same types and printed.

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::Value;
use trellis_host::invocation::client::InvocationClient;
use trellis_host::invocation::codec::{decode_values, encode_values, CodecError};
use trellis_host::invocation::error::InvocationError;
use trellis_host::invocation::json::{json_to_params, results_to_json};
use trellis_host::invocation::wire::CallContext;
use trellis_host::runtime::{classify_image_ref, ImageRefKind};
use trellis_protocol::ctl::{ComponentDescription, HostInventory};
use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::lattice_client::{ConnectArgs, LatticeClient};
use crate::oci_cmds::RegistryAccess;
use crate::output::{print_json, OutputFormat};

/// Flags of `trellis call`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Arguments are a JSON array (positional), a JSON object (by parameter name) or,
for a one-parameter function, the bare value. Records are objects, variants {\"case\": payload}
or \"case\", enums strings, flags arrays of names, options null or the value, results
{\"ok\": v} / {\"err\": e}.

Examples:
  trellis call callee trellis:demo/inventory@0.1.0.shout '[\"hi\", \"!\"]'
  trellis call callee trellis:demo/inventory.next-category '\"tool\"' -o json
  trellis call callee trellis:demo/inventory.checksum '{\"data\": [1, 2, 3]}'"
)]
pub struct CallArgs {
    /// Component id (as `trellis get inventory` lists it)
    pub component: String,
    /// Function to call: NAMESPACE:PACKAGE/INTERFACE[@VERSION].FUNCTION
    #[arg(value_name = "INTERFACE.FUNCTION")]
    pub function: String,
    /// Arguments as JSON [default: no arguments]
    #[arg(value_name = "JSON-ARGS")]
    pub args: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How to reach the registry of a component loaded by OCI ref (its WIT is read from it).
    #[command(flatten)]
    pub registry: RegistryAccess,
}

/// Runs `trellis call`.
pub async fn run(args: CallArgs) -> anyhow::Result<()> {
    let (interface, function) = split_function(&args.function)?;
    let json_args: Value = match &args.args {
        None => Value::Null,
        Some(raw) => serde_json::from_str(raw).map_err(|e| {
            anyhow::anyhow!(
                "JSON-ARGS is not valid JSON ({e}): pass an array such as '[\"a\", 1]' (quote it for the shell)"
            )
        })?,
    };

    let client = LatticeClient::connect(&args.connect).await?;
    let component = find_component(&client, &args.component).await?;
    let source = component.image_ref.clone();
    let bytes = match classify_image_ref(&component.image_ref) {
        ImageRefKind::File(path) => read_local_component(&path).await?,
        ImageRefKind::Oci(reference) => args
            .registry
            .pull_wasm(&reference)
            .await
            .with_context(|| format!("cannot fetch {reference} to read the types of {}", args.component))?,
        ImageRefKind::UnsupportedScheme(scheme) => bail!(
            "cannot read the types of {}: it runs {:?}, whose scheme {scheme:?} this CLI cannot fetch",
            args.component,
            component.image_ref
        ),
    };
    let signature = tokio::task::spawn_blocking({
        let interface = interface.to_string();
        let function = function.to_string();
        move || read_signature(&bytes, &interface, &function)
    })
    .await
    .context("reading the component's types failed")?
    .with_context(|| format!("in component {} ({source})", args.component))?;

    let named: Vec<(&str, Type)> = signature
        .params
        .iter()
        .map(|(name, ty)| (name.as_str(), ty.clone()))
        .collect();
    let values = json_to_params(&json_args, &named)
        .map_err(|e| explain_argument_error(&e, &signature, &json_args))?;
    let param_types: Vec<Type> = signature.params.iter().map(|(_, t)| t.clone()).collect();
    let encoded = encode_values(&values, &param_types)
        .map_err(|e| anyhow::anyhow!("cannot encode the arguments: {e}"))?;

    let invoker = InvocationClient::new(client.nats().clone(), client.lattice())
        .with_default_timeout(client.timeout());
    let reply = invoker
        .invoke(
            &args.component,
            &signature.interface,
            &signature.function,
            Bytes::from(encoded),
            CallContext::default(),
        )
        .await
        .map_err(|e| explain_invocation_error(e, &args.component, &signature, &client))?;
    let results = decode_values(&reply, &signature.results).map_err(|e| {
        anyhow::anyhow!(
            "the reply of {} does not match its signature ({e}): is the host running the same build of the component?",
            signature.function
        )
    })?;
    let json = results_to_json(&results, &signature.results)
        .map_err(|e| anyhow::anyhow!("cannot show the result: {e}"))?;
    match args.connect.output {
        OutputFormat::Json => print_json(&json),
        OutputFormat::Table => {
            println!("{}", readable(&json)?);
            Ok(())
        }
    }
}

/// Splits `ns:pkg/iface@1.2.3.func` at the last `.` (the version may contain dots but a WIT
/// function name never does).
fn split_function(spec: &str) -> anyhow::Result<(&str, &str)> {
    match spec.rsplit_once('.') {
        Some((interface, function))
            if !function.is_empty() && interface.contains(':') && interface.contains('/') =>
        {
            Ok((interface, function))
        }
        _ => bail!(
            "expected INTERFACE.FUNCTION such as trellis:demo/inventory@0.1.0.shout, got {spec:?}"
        ),
    }
}

/// Finds `component_id` in the inventory of every host of the lattice.
async fn find_component(
    client: &LatticeClient,
    component_id: &str,
) -> anyhow::Result<ComponentDescription> {
    let hosts = client.require_hosts().await?;
    let mut running: Vec<String> = Vec::new();
    for host in &hosts {
        let inventory: Option<HostInventory> = client
            .inventory(&host.id)
            .await
            .with_context(|| format!("cannot get the inventory of {}", host.friendly_name))?;
        let Some(inventory) = inventory else {
            continue;
        };
        if let Some(found) = inventory.components.iter().find(|c| c.id == component_id) {
            return Ok(found.clone());
        }
        running.extend(inventory.components.into_iter().map(|c| c.id));
    }
    running.sort();
    running.dedup();
    let listed = if running.is_empty() {
        "none".to_string()
    } else {
        running.join(", ")
    };
    bail!(
        "component {component_id} is not running in lattice {}: `trellis get inventory` lists what runs (components now: {listed})",
        client.lattice()
    )
}

/// The types of one exported function.
#[derive(Debug)]
struct Signature {
    /// The full export name of the interface, e.g. `trellis:demo/inventory@0.1.0`.
    interface: String,
    /// The function name.
    function: String,
    /// Parameter names and types.
    params: Vec<(String, Type)>,
    /// Result types.
    results: Vec<Type>,
}

/// Reads a component's file like the host does: a regular file, never more than the host's
/// default cap.
async fn read_local_component(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if !path.is_file() {
        bail!(
            "cannot read the component's code at {}: relative refs resolve against the host's \
             working directory, so run `trellis call` from there (or scale with an absolute file:// path)",
            path.display()
        );
    }
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        trellis_host::runtime::read_component_file(
            &path,
            trellis_host::runtime::DEFAULT_MAX_COMPONENT_BYTES,
        )
    })
    .await
    .context("the file-reading task failed")?
}

/// Compiles the component in `bytes` and reads the signature of `function` in `interface`.
/// The interface may be given without its `@version` when only one version is exported.
fn read_signature(bytes: &[u8], interface: &str, function: &str) -> anyhow::Result<Signature> {
    let engine = Engine::default();
    let component = Component::new(&engine, bytes)
        .map_err(|e| anyhow::anyhow!("cannot load it as a component: {e:#}"))?;
    let ty = component.component_type();
    let instances: Vec<(String, wasmtime::component::types::ComponentInstance)> = ty
        .exports(&engine)
        .filter_map(|(name, item)| match item.ty {
            ComponentItem::ComponentInstance(instance) => Some((name.to_string(), instance)),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = instances.iter().map(|(n, _)| n.as_str()).collect();
    let chosen = instances
        .iter()
        .find(|(name, _)| name == interface)
        .or_else(|| {
            let versioned: Vec<_> = instances
                .iter()
                .filter(|(name, _)| name.split('@').next() == Some(interface))
                .collect();
            (versioned.len() == 1).then(|| versioned[0])
        });
    let Some((interface_name, instance)) = chosen else {
        bail!(
            "interface {interface} is not exported; exported interfaces are: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    let functions: Vec<(String, wasmtime::component::types::ComponentFunc)> = instance
        .exports(&engine)
        .filter_map(|(name, item)| match item.ty {
            ComponentItem::ComponentFunc(func) => Some((name.to_string(), func)),
            _ => None,
        })
        .collect();
    let Some((_, func)) = functions.iter().find(|(name, _)| name == function) else {
        let listed: Vec<&str> = functions.iter().map(|(n, _)| n.as_str()).collect();
        bail!(
            "function {function} is not exported by {interface_name}; exports are: {}",
            listed.join(", ")
        );
    };
    Ok(Signature {
        interface: interface_name.clone(),
        function: function.to_string(),
        params: func
            .params()
            .map(|(name, ty)| (name.to_string(), ty))
            .collect(),
        results: func.results().collect(),
    })
}

/// A WIT-ish rendering of a type for messages: `u32`, `list<u8>`, `record item`.
fn type_name(ty: &Type) -> String {
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(list) => format!("list<{}>", type_name(&list.ty())),
        Type::Record(_) => "a record (JSON object)".into(),
        Type::Tuple(_) => "a tuple (JSON array)".into(),
        Type::Variant(_) => "a variant ({\"case\": payload} or \"case\")".into(),
        Type::Enum(e) => format!("one of {}", e.names().collect::<Vec<_>>().join(", ")),
        Type::Option(o) => format!("option<{}> (null or the value)", type_name(&o.ty())),
        Type::Result(_) => "a result ({\"ok\": v} or {\"err\": e})".into(),
        Type::Flags(f) => format!(
            "flags (array of {})",
            f.names().collect::<Vec<_>>().join(", ")
        ),
        _ => "a value of another kind".into(),
    }
}

/// The signature as `name: type, ...`, for hints.
fn describe_params(signature: &Signature) -> String {
    if signature.params.is_empty() {
        return "no parameters".to_string();
    }
    signature
        .params
        .iter()
        .map(|(name, ty)| format!("{name}: {}", type_name(ty)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Turns a conversion error into one naming the argument (1-based) and parameter.
fn explain_argument_error(
    error: &CodecError,
    signature: &Signature,
    args: &Value,
) -> anyhow::Error {
    let location = error.location();
    let mut segments = location.splitn(2, '.');
    let first = segments.next().unwrap_or_default();
    let rest = segments.next();
    match signature.params.iter().position(|(name, _)| name == first) {
        Some(index) if !first.is_empty() => {
            let inner = rest.map(|r| format!(" at {r}")).unwrap_or_default();
            anyhow::anyhow!(
                "argument {} (`{first}`){inner}: {} (the parameter is {})",
                index + 1,
                error.message(),
                type_name(&signature.params[index].1)
            )
        }
        _ => {
            let hint = if args.is_null() && !signature.params.is_empty() {
                "no JSON-ARGS given; ".to_string()
            } else {
                String::new()
            };
            anyhow::anyhow!(
                "{hint}{error}: {} takes ({})",
                signature.function,
                describe_params(signature)
            )
        }
    }
}

/// Explains a failed call with what to do next.
fn explain_invocation_error(
    error: InvocationError,
    component: &str,
    signature: &Signature,
    client: &LatticeClient,
) -> anyhow::Error {
    match error {
        InvocationError::NoResponders { .. } => anyhow::anyhow!(
            "nothing in lattice {} serves the exports of {component}: it may have just stopped \
             (check `trellis get inventory`), or its host does not serve exports over the lattice",
            client.lattice()
        ),
        InvocationError::DeadlineExceeded { message } => anyhow::anyhow!(
            "{component} did not answer {}.{} within {} ms ({message}): raise --timeout-ms if it is slow",
            signature.interface,
            signature.function,
            client.timeout().as_millis()
        ),
        InvocationError::Trap { message } => anyhow::anyhow!(
            "{component} failed while running {}: {message}",
            signature.function
        ),
        other => anyhow::Error::new(other).context(format!(
            "calling {}.{} on {component} failed",
            signature.interface, signature.function
        )),
    }
}

/// A result for people: strings bare, no result as `ok`, anything else as pretty JSON.
fn readable(json: &Value) -> anyhow::Result<String> {
    Ok(match json {
        Value::Null => "ok".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => serde_json::to_string_pretty(other)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_spec_splits_at_the_last_dot() {
        assert_eq!(
            split_function("trellis:demo/inventory@0.1.0.shout").unwrap(),
            ("trellis:demo/inventory@0.1.0", "shout")
        );
        assert_eq!(
            split_function("wasi:http/incoming-handler.handle").unwrap(),
            ("wasi:http/incoming-handler", "handle")
        );
        assert!(split_function("shout").is_err());
        assert!(split_function("trellis:demo/inventory.").is_err());
        assert!(split_function("inventory.shout").is_err());
    }

    fn signature(params: Vec<(&str, Type)>) -> Signature {
        Signature {
            interface: "a:b/c".into(),
            function: "f".into(),
            params: params
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect(),
            results: Vec::new(),
        }
    }

    #[test]
    fn argument_errors_name_position_and_parameter() {
        let sig = signature(vec![("sku", Type::String), ("qty", Type::U32)]);
        let named: Vec<(&str, Type)> = sig
            .params
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        let args = serde_json::json!(["a", "many"]);
        let err = json_to_params(&args, &named).unwrap_err();
        let text = explain_argument_error(&err, &sig, &args).to_string();
        assert!(text.starts_with("argument 2 (`qty`)"), "{text}");
        assert!(text.contains("u32"), "{text}");

        let args = serde_json::json!(["a"]);
        let err = json_to_params(&args, &named).unwrap_err();
        let text = explain_argument_error(&err, &sig, &args).to_string();
        assert!(text.contains("sku: string, qty: u32"), "{text}");
    }

    #[test]
    fn readable_output_is_bare_for_scalars() {
        assert_eq!(readable(&Value::Null).unwrap(), "ok");
        assert_eq!(readable(&serde_json::json!("HI!!!")).unwrap(), "HI!!!");
        assert_eq!(readable(&serde_json::json!(3)).unwrap(), "3");
        assert!(readable(&serde_json::json!({"ok": 1}))
            .unwrap()
            .contains("\"ok\": 1"));
    }
}

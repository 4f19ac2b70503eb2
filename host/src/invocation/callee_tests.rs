//! End to end: the real `demo-callee` component (built from `components/`) served over NATS
//! through [`InvocationServer`], called with [`InvocationClient`], values encoded by the codec
//! with the component's own WIT types, arguments given as JSON.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{json, Value};
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{Component, Linker, ResourceTable, Val};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::nats_tests::NatsServer;
use super::*;

const IFACE: &str = "trellis:demo/inventory@0.1.0";

/// Path of a guest component built from `components/` (the build runs once per process).
fn guest_wasm(file: &str) -> PathBuf {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let components = crate::components_dir();
        let output = std::process::Command::new("bash")
            .arg(components.join("build.sh"))
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("running components/build.sh");
        assert!(
            output.status.success(),
            "components/build.sh failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(PathBuf::from)
            .collect()
    });
    built
        .iter()
        .find(|path| path.ends_with(file))
        .unwrap_or_else(|| panic!("build.sh did not print the path of {file}"))
        .clone()
}

struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl GuestState {
    fn new() -> Self {
        Self {
            wasi: WasiCtxBuilder::new().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The callee compiled once, with what a handler needs to run one call.
struct Callee {
    engine: Engine,
    component: Component,
    linker: Linker<GuestState>,
}

impl Callee {
    fn load() -> Self {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).expect("engine");
        let component =
            Component::from_file(&engine, guest_wasm("demo_callee.wasm")).expect("compile callee");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
        Self {
            engine,
            component,
            linker,
        }
    }

    /// The type of an exported inventory function, without instantiating.
    fn func_type(&self, function: &str) -> ComponentFunc {
        let ty = self.component.component_type();
        let Some(ComponentItem::ComponentInstance(iface)) =
            ty.get_export(&self.engine, IFACE).map(|e| e.ty)
        else {
            panic!("callee does not export {IFACE}");
        };
        match iface.get_export(&self.engine, function).map(|e| e.ty) {
            Some(ComponentItem::ComponentFunc(func)) => func,
            other => panic!("{function} is not a function: {other:?}"),
        }
    }

    /// Serves one call: fresh instance, decode params, call, encode results.
    async fn handle(&self, call: IncomingCall) -> Result<Bytes, InvocationError> {
        let mut store = Store::new(&self.engine, GuestState::new());
        let instance = self
            .linker
            .instantiate_async(&mut store, &self.component)
            .await
            .map_err(|e| InvocationError::trap(format!("instantiating: {e:#}")))?;
        let iface = instance
            .get_export_index(&mut store, None, &call.interface)
            .ok_or_else(|| {
                InvocationError::bad_request(format!("no interface {}", call.interface))
            })?;
        let func = instance
            .get_export_index(&mut store, Some(&iface), &call.function)
            .and_then(|index| instance.get_func(&mut store, index))
            .ok_or_else(|| {
                InvocationError::bad_request(format!("no function {}", call.function))
            })?;
        let ty = func.ty(&store);
        let param_types: Vec<Type> = ty.params().map(|(_, t)| t).collect();
        let result_types: Vec<Type> = ty.results().collect();
        let params = codec::decode_values(&call.params, &param_types)
            .map_err(|e| InvocationError::bad_request(format!("params: {e}")))?;
        let mut results = vec![Val::Bool(false); result_types.len()];
        func.call_async(&mut store, &params, &mut results)
            .await
            .map_err(|e| InvocationError::trap(format!("{e:#}")))?;
        codec::encode_values(&results, &result_types)
            .map(Bytes::from)
            .map_err(|e| InvocationError::trap(format!("results: {e}")))
    }
}

/// Calls `function` with JSON `args` through the lattice and returns the results as JSON.
async fn call_json(
    client: &InvocationClient,
    callee: &Callee,
    function: &str,
    args: Value,
) -> Result<Value, InvocationError> {
    let ty = callee.func_type(function);
    let params: Vec<(&str, Type)> = ty.params().collect();
    let values = json::json_to_params(&args, &params).expect("arguments match the signature");
    let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
    let bytes = codec::encode_values(&values, &types).expect("encode params");
    let reply = client
        .invoke(
            "demo-callee",
            IFACE,
            function,
            Bytes::from(bytes),
            CallContext::default(),
        )
        .await?;
    let result_types: Vec<Type> = ty.results().collect();
    let results = codec::decode_values(&reply, &result_types).expect("decode results");
    Ok(json::results_to_json(&results, &result_types).expect("results to json"))
}

/// Serves demo-callee as target `demo-callee` in lattice `test`.
async fn serve_callee(nats: async_nats::Client, callee: &Arc<Callee>) -> InvocationServer {
    let serving = callee.clone();
    InvocationServer::serve(
        nats,
        "test",
        "demo-callee",
        ServerOptions::default(),
        move |call| {
            let callee = serving.clone();
            async move { callee.handle(call).await }
        },
    )
    .await
    .expect("serve")
}

#[tokio::test]
async fn demo_callee_answers_every_function_over_the_lattice() {
    let nats_server = NatsServer::start(None).await;
    let callee = Arc::new(Callee::load());
    let _server = serve_callee(nats_server.connect().await, &callee).await;
    let client = InvocationClient::new(nats_server.connect().await, "test");

    let item = json!({
        "sku": "SKU-001", "name": "Hammer 🔨", "category": "tool",
        "tags": ["fragile", "hazardous"], "quantity": 10,
        "price-cents": "18446744073709551608",
        "dims": {"width": 1.5, "height": -2.25, "depth": 1e300},
        "grade": "Ω", "location": [255, 65535, -128],
        "history": [-9223372036854775808i64, -1, 0, 1, 9223372036854775807i64]
    });
    let echoed = call_json(&client, &callee, "echo-item", json!([item]))
        .await
        .expect("echo-item");
    let mut expected = item.clone();
    expected["price-cents"] = json!(18446744073709551608u64);
    assert_eq!(echoed, expected);

    let received = call_json(
        &client,
        &callee,
        "apply-event",
        json!([item, {"received": 5}]),
    )
    .await
    .expect("apply-event");
    assert_eq!(received["ok"]["quantity"], json!(15));
    assert_eq!(received["ok"]["history"][5], json!(15));
    let shipped = call_json(
        &client,
        &callee,
        "apply-event",
        json!([item, {"shipped": ["acme", 11]}]),
    )
    .await
    .expect("apply-event shipped");
    assert_eq!(shipped, json!({"err": {"not-enough": 10}}));
    let lost = call_json(&client, &callee, "apply-event", json!([item, "lost"]))
        .await
        .expect("apply-event lost");
    assert_eq!(lost, json!({"err": "item-lost"}));

    let mut other = item.clone();
    other["sku"] = json!("SKU-002");
    other["dims"] = Value::Null;
    let found = call_json(
        &client,
        &callee,
        "find",
        json!({"items": [item, other], "sku": "SKU-002"}),
    )
    .await
    .expect("find");
    assert_eq!(found["dims"], Value::Null);
    assert_eq!(found["sku"], json!("SKU-002"));
    let missing = call_json(&client, &callee, "find", json!([[], "x"]))
        .await
        .expect("find none");
    assert_eq!(missing, Value::Null);

    let ints = call_json(
        &client,
        &callee,
        "integers",
        json!([
            127,
            255,
            -2,
            7,
            -2147483648i64,
            41,
            -1,
            "18446744073709551615"
        ]),
    )
    .await
    .expect("integers");
    assert_eq!(ints, json!([-128, 0, -1, 8, -2147483647, 42, 0, 0]));

    assert_eq!(
        call_json(&client, &callee, "floats", json!([1.25, -3.0]))
            .await
            .expect("floats"),
        json!([2.5, -1.5])
    );
    assert_eq!(
        call_json(&client, &callee, "shout", json!(["héllo", "!"]))
            .await
            .expect("shout"),
        json!("HÉLLO!!!")
    );
    assert_eq!(
        call_json(
            &client,
            &callee,
            "toggle",
            json!([["fragile", "perishable"]])
        )
        .await
        .expect("toggle"),
        json!(["heavy", "hazardous"])
    );
    assert_eq!(
        call_json(&client, &callee, "next-category", json!("consumable"))
            .await
            .expect("next-category"),
        json!("tool")
    );
    assert_eq!(
        call_json(&client, &callee, "checksum", json!([[1, 2, 3, 250]]))
            .await
            .expect("checksum"),
        json!({"ok": 256})
    );
    assert_eq!(
        call_json(&client, &callee, "maybe-fail", json!(true))
            .await
            .expect("maybe-fail"),
        json!({"err": "asked to fail"})
    );
    assert_eq!(
        call_json(&client, &callee, "maybe-fail", json!(false))
            .await
            .expect("maybe-fail ok"),
        json!({"ok": null})
    );

    // A 3 MB list<u8> result crosses the lattice in chunks and sums correctly when sent back.
    let ty = callee.func_type("blob");
    let result_types: Vec<Type> = ty.results().collect();
    let blob_params: Vec<Type> = ty.params().map(|(_, t)| t).collect();
    let params = codec::encode_values(&[Val::U32(3_000_064)], &blob_params).expect("encode");
    let reply = client
        .invoke(
            "demo-callee",
            IFACE,
            "blob",
            Bytes::from(params),
            CallContext::default(),
        )
        .await
        .expect("blob");
    let results = codec::decode_values(&reply, &result_types).expect("decode blob");
    let Val::List(bytes) = &results[0] else {
        panic!("blob returned {:?}", results[0]);
    };
    assert_eq!(bytes.len(), 3_000_064);
    assert!(bytes
        .iter()
        .enumerate()
        .all(|(i, v)| *v == Val::U8((i % 251) as u8)));
    let checksum = callee.func_type("checksum");
    let checksum_params: Vec<Type> = checksum.params().map(|(_, t)| t).collect();
    let checksum_results: Vec<Type> = checksum.results().collect();
    let params = codec::encode_values(&results, &checksum_params).expect("encode blob");
    let reply = client
        .invoke(
            "demo-callee",
            IFACE,
            "checksum",
            Bytes::from(params),
            CallContext::default(),
        )
        .await
        .expect("checksum of blob");
    let expected: u32 = (0..3_000_064u32)
        .map(|i| i % 251)
        .fold(0u32, u32::wrapping_add);
    assert_eq!(
        codec::decode_values(&reply, &checksum_results).expect("decode sum"),
        vec![Val::Result(Ok(Some(Box::new(Val::U32(expected)))))]
    );

    // Undecodable params come back as a typed bad request.
    let error = client
        .invoke(
            "demo-callee",
            IFACE,
            "floats",
            Bytes::from_static(&[1, 2]),
            CallContext::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, InvocationError::BadRequest { .. }),
        "{error}"
    );
}

/// demo-caller (wasi:http) with its inventory import forwarded to the lattice.
struct Caller {
    engine: Engine,
    component: Component,
    linker: Linker<GuestState>,
}

impl Caller {
    fn load(client: InvocationClient) -> Self {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).expect("engine");
        let component =
            Component::from_file(&engine, guest_wasm("demo_caller.wasm")).expect("compile caller");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).expect("wasi:http");
        let imports = linking::imported_interfaces(&engine, &component);
        let (interface, functions) = imports
            .iter()
            .find(|(name, _)| name == IFACE)
            .expect("demo-caller imports the inventory");
        assert_eq!(functions.len(), 11, "{functions:?}");
        let router: linking::Router<GuestState> = Arc::new(move |_, _, _| {
            Ok(linking::Route {
                client: client.clone(),
                target_id: "demo-callee".to_owned(),
                context: CallContext {
                    source_id: Some("demo-caller".to_owned()),
                    link_name: Some("default".to_owned()),
                    ..CallContext::default()
                },
            })
        });
        linking::forward_interface(&mut linker, interface, functions, router).expect("forward");
        // demo-caller also imports wasmcloud:bus/lattice (its /via route); these tests never
        // take that route, and the bus needs a host (see routing::bus and component_calls.rs).
        let mut bus = linker
            .instance("wasmcloud:bus/lattice@2.0.0")
            .expect("bus instance");
        bus.resource(
            "call-target-interface",
            wasmtime::component::ResourceType::host::<()>(),
            |_, _| Ok(()),
        )
        .expect("bus resource");
        for function in ["[constructor]call-target-interface", "set-link-name"] {
            bus.func_new(function, |_, _, _, _| {
                Err(wasmtime::Error::msg(
                    "wasmcloud:bus is not served in this test",
                ))
            })
            .expect("bus function");
        }
        Self {
            engine,
            component,
            linker,
        }
    }

    /// Sends `GET path` to the component, returns (status, body).
    async fn get(&self, path: &str) -> (u16, String) {
        let (handled, response) = self.try_get(path).await;
        handled.expect("handle");
        response.expect("a response")
    }

    /// Sends `GET path`: the handler's result and the response (if one was sent).
    async fn try_get(&self, path: &str) -> (wasmtime::Result<()>, Option<(u16, String)>) {
        use http_body_util::BodyExt as _;
        use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

        let mut store = Store::new(&self.engine, GuestState::new());
        let body = http_body_util::Empty::<Bytes>::new().map_err(
            |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
        );
        let request = hyper::Request::builder()
            .uri(format!("http://localhost{path}"))
            .body(body)
            .expect("request");
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .expect("incoming request");
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .expect("outparam");
        let proxy = wasmtime_wasi_http::p2::bindings::Proxy::instantiate_async(
            &mut store,
            &self.component,
            &self.linker,
        )
        .await
        .expect("instantiate caller");
        // The store owns the response outparam: drop it as soon as the handler returns so a
        // guest that trapped before responding closes the response channel.
        let call = async move {
            let result = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await;
            drop(store);
            result
        };
        let exchange = async {
            tokio::join!(call, async {
                let response = receiver.await.ok()?.ok()?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.ok()?.to_bytes();
                Some((status, String::from_utf8_lossy(&body).into_owned()))
            })
        };
        tokio::time::timeout(std::time::Duration::from_secs(120), exchange)
            .await
            .unwrap_or_else(|_| panic!("GET {path} did not finish within 120 s"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_caller_calls_every_function_through_the_lattice() {
    let nats_server = NatsServer::start(None).await;
    let callee = Arc::new(Callee::load());
    let _server = serve_callee(nats_server.connect().await, &callee).await;
    let caller = Caller::load(InvocationClient::new(nats_server.connect().await, "test"));

    assert_eq!(
        caller.get("/").await,
        (200, "ok: 17 calls checked\n".to_owned())
    );
    let (status, values) = caller.get("/values").await;
    assert_eq!(status, 200);
    assert!(
        values.contains("toggle = Tags(HEAVY | HAZARDOUS)"),
        "{values}"
    );
    assert!(
        values.contains("integers = (-128, 0, -1, 8, -2147483647, 42, 0, 0)"),
        "{values}"
    );
    assert!(
        values.contains("maybe-fail = Err(\"asked to fail\")"),
        "{values}"
    );
    assert_eq!(
        caller.get("/bench?n=50").await,
        (200, "ok: 50 calls\n".to_owned())
    );
    // 3 MB each way through chunking.
    let (status, body) = caller.get("/blob?len=3000000").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ok: 3000000 bytes"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_callee_traps_the_caller_with_no_responders() {
    let nats_server = NatsServer::start(None).await;
    let caller = Caller::load(InvocationClient::new(nats_server.connect().await, "test"));
    let (handled, response) = caller.try_get("/").await;
    assert_eq!(response, None);
    let error = handled.unwrap_err();
    assert_eq!(
        error.downcast_ref::<InvocationError>(),
        Some(&InvocationError::NoResponders {
            target_id: "demo-callee".into()
        }),
        "{error:?}"
    );
}

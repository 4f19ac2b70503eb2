//! End to end: the real `demo-callee` component (built from `components/`) served over NATS
//! through [`InvocationServer`], called with [`InvocationClient`], values encoded by the codec
//! with the component's own WIT types, arguments given as JSON.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{json, Value};
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{Component, Linker, ResourceTable, Val};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::nats_tests::NatsServer;
use super::*;

const IFACE: &str = "trellis:demo/inventory@0.1.0";

/// Builds the guest workspace once per test process and returns demo_callee.wasm.
fn callee_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let components = Path::new(env!("CARGO_MANIFEST_DIR")).join("../components");
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
                .find(|path| path.ends_with("demo_callee.wasm"))
                .expect("build.sh printed the path of demo_callee.wasm")
        })
        .clone()
}

struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
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
        let component = Component::from_file(&engine, callee_wasm()).expect("compile callee");
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
        let mut store = Store::new(
            &self.engine,
            GuestState {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
            },
        );
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

#[tokio::test]
async fn demo_callee_answers_every_function_over_the_lattice() {
    let nats_server = NatsServer::start(None).await;
    let callee = Arc::new(Callee::load());
    let serving = callee.clone();
    let _server = InvocationServer::serve(
        nats_server.connect().await,
        "test",
        "demo-callee",
        ServerOptions::default(),
        move |call| {
            let callee = serving.clone();
            async move { callee.handle(call).await }
        },
    )
    .await
    .expect("serve");
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

//! `trellis call` end to end: a real nats-server, a real `trellis host` running the real
//! `demo_callee` component (exports `trellis:demo/inventory@0.1.0`), and the real `trellis`
//! binary calling its exports with JSON arguments, as a user types them.

use serde_json::{json, Value};
use trellis_integration::{eventually, guest, HostProcess, Lattice, NatsServer};

const LATTICE: &str = "calls";
const INVENTORY: &str = "trellis:demo/inventory@0.1.0";

/// Runs `trellis call ARGS --nats-url URL --lattice calls` with a private data directory and
/// returns (success, stdout, stderr).
async fn call(nats_url: &str, args: &[&str]) -> (bool, String, String) {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::new(trellis_integration::trellis_bin())
        .arg("call")
        .args(args)
        .args(["--nats-url", nats_url, "--lattice", LATTICE])
        .env("TRELLIS_DATA_DIR", data_dir.path())
        .env_remove("TRELLIS_NATS_URL")
        .env_remove("TRELLIS_LATTICE")
        .output()
        .await
        .expect("cannot run trellis");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A call that must succeed with `-o json`; returns the printed JSON.
async fn call_json(nats_url: &str, function: &str, args: Value) -> Value {
    let spec = format!("{INVENTORY}.{function}");
    let args = args.to_string();
    let (ok, out, err) = call(nats_url, &["callee", &spec, &args, "-o", "json"]).await;
    assert!(ok, "trellis call {spec} {args} failed:\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

fn item() -> Value {
    json!({
        "sku": "w-1",
        "name": "wrench",
        "category": "tool",
        "tags": ["fragile", "heavy"],
        "quantity": 5,
        "price-cents": 1299,
        "dims": {"width": 1.5, "height": 2.0, "depth": 3.25},
        "grade": "A",
        "location": [1, 2, -3],
        "history": [1, -2]
    })
}

async fn start_callee(nats: &NatsServer) -> (HostProcess, Lattice) {
    let host = HostProcess::start(&nats.url(), LATTICE, &[]).await;
    let lattice = Lattice::connect(&nats.url(), LATTICE).await;
    let mut events = lattice.events().await;
    let reply = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({
                "component_ref": format!("file://{}", guest("demo_callee").display()),
                "component_id": "callee",
                "count": 2
            }),
        )
        .await
        .expect("component.scale");
    assert!(reply.success, "scale refused: {}", reply.message);
    events
        .wait_for("component_scaled", |d| d["component_id"] == "callee")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    (host, lattice)
}

#[tokio::test(flavor = "multi_thread")]
async fn call_invokes_exports_with_typed_json_arguments() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let (host, _lattice) = start_callee(&nats).await;

    // The host may start serving the exports a moment after the scale event.
    let shouted = eventually("the callee's exports to be served", || async {
        let (ok, out, _) = call(
            &url,
            &["callee", &format!("{INVENTORY}.shout"), r#"["hi", "!"]"#],
        )
        .await;
        ok.then_some(out)
    })
    .await;
    assert_eq!(shouted.trim(), "HI!!!", "host log:\n{}", host.logs());

    // A record comes back unchanged (every field kind through JSON and the wire).
    let echoed = call_json(&url, "echo-item", json!([item()])).await;
    assert_eq!(echoed, item());

    // Variant in, result out: ok with the updated record, err with the typed error.
    let received = call_json(&url, "apply-event", json!([item(), {"received": 3}])).await;
    assert_eq!(received["ok"]["quantity"], 8, "{received}");
    assert_eq!(received["ok"]["history"], json!([1, -2, 8]), "{received}");
    let shipped = call_json(
        &url,
        "apply-event",
        json!({"item": item(), "event": {"shipped": ["acme", 9]}}),
    )
    .await;
    assert_eq!(shipped, json!({"err": {"not-enough": 5}}));
    let lost = call_json(&url, "apply-event", json!([item(), "lost"])).await;
    assert_eq!(lost, json!({"err": "item-lost"}));

    // Options: the found record or null.
    let found = call_json(&url, "find", json!([[item()], "w-1"])).await;
    assert_eq!(found["sku"], "w-1", "{found}");
    let missing = call_json(&url, "find", json!([[item()], "nope"])).await;
    assert_eq!(missing, Value::Null);

    // A bare value for a one-parameter function; the interface without its version.
    let (ok, out, err) = call(
        &url,
        &[
            "callee",
            "trellis:demo/inventory.next-category",
            "\"consumable\"",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "tool");
    let checksum = call_json(&url, "checksum", json!({"data": []})).await;
    assert_eq!(checksum, json!({"err": "empty"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn call_errors_say_what_to_do() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let (_host, _lattice) = start_callee(&nats).await;
    let apply = format!("{INVENTORY}.apply-event");

    // A bad argument names its position and parameter.
    let (ok, _, err) = call(
        &url,
        &[
            "callee",
            &apply,
            &json!([item(), {"received": "many"}]).to_string(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("argument 2 (`event`)"), "{err}");
    assert!(err.contains("u32"), "{err}");
    let mut bad_item = item();
    bad_item["quantity"] = json!("five");
    let (ok, _, err) = call(
        &url,
        &["callee", &apply, &json!([bad_item, "lost"]).to_string()],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("argument 1 (`item`)"), "{err}");
    assert!(err.contains("quantity"), "{err}");

    // An unknown component points at the inventory and lists what runs.
    let (ok, _, err) = call(&url, &["nobody", &apply, "[]"]).await;
    assert!(!ok);
    assert!(
        err.contains("component nobody is not running in lattice calls"),
        "{err}"
    );
    assert!(err.contains("trellis get inventory"), "{err}");
    assert!(err.contains("callee"), "{err}");

    // An unknown function lists the exports.
    let (ok, _, err) = call(&url, &["callee", &format!("{INVENTORY}.fly"), "[]"]).await;
    assert!(!ok);
    assert!(err.contains("function fly is not exported"), "{err}");
    assert!(err.contains("echo-item") && err.contains("blob"), "{err}");
    let (ok, _, err) = call(&url, &["callee", "wasi:http/incoming-handler.handle"]).await;
    assert!(!ok);
    assert!(err.contains(INVENTORY), "{err}");

    // Invalid JSON says so.
    let (ok, _, err) = call(&url, &["callee", &apply, "[oops"]).await;
    assert!(!ok);
    assert!(err.contains("not valid JSON"), "{err}");
}

/// `trellis new TEMPLATE NAME` then `trellis build` for every template, as a developer runs
/// them: each project builds on its own (WIT included) into a component the manifest names.
/// Slow (three fresh wasm32-wasip2 builds, one after the other).
#[tokio::test(flavor = "multi_thread")]
async fn every_template_builds_with_trellis_build() {
    let workspace = tempfile::tempdir().expect("tempdir");
    for template in ["http-hello", "http-keyvalue-counter", "messaging-handler"] {
        let name = format!("my-{template}");
        let output = tokio::process::Command::new(trellis_integration::trellis_bin())
            .args(["new", template, &name])
            .current_dir(workspace.path())
            .output()
            .await
            .expect("cannot run trellis new");
        assert!(
            output.status.success(),
            "trellis new {template}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let project = workspace.path().join(&name);
        let output = tokio::process::Command::new(trellis_integration::trellis_bin())
            .arg("build")
            .current_dir(&project)
            .output()
            .await
            .expect("cannot run trellis build");
        assert!(
            output.status.success(),
            "trellis build of {template}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let wasm = project.join(format!(
            "target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        ));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!("{}.wasm", name.replace('-', "_"))),
            "{stdout}"
        );
        let bytes = std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
        // A component (not a core module): magic, then version 0x0d with layer 1.
        assert_eq!(&bytes[..8], b"\0asm\x0d\x00\x01\x00", "{template}");
        let manifest = std::fs::read_to_string(project.join("wadm.yaml")).expect("wadm.yaml");
        assert!(
            manifest.contains(&format!(
                "file://./target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            )),
            "{manifest}"
        );
    }
}

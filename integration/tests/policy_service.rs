//! wasmCloud's policy service: a `trellis host --policy-topic` asks a policy responder (a
//! small NATS responder in this test) before starting a component, honours its answer (a
//! denial appears in the scale-failed event and in the app's status with the policy's
//! message), caches decisions, and follows changed decisions on the changes topic.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use trellis_integration::{
    guest, guest_ref, trellis_bin, trellis_cli, wadm_request, HostProcess, Lattice, NatsServer,
    WadmProcess, WAIT,
};

const TOPIC: &str = "test.policy";
const CHANGES: &str = "test.policy.changes";
const DENIAL: &str = "component denied-one is not on the allow list";
const DENIED_FUNCTION: &str = "checksum";
const CALL_DENIAL: &str = "checksum is off limits";

/// Answers policy requests: denies component ids containing `denied`, permits the rest;
/// records every request.
async fn start_responder(client: async_nats::Client) -> Arc<Mutex<Vec<Value>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut sub = client.subscribe(TOPIC).await.expect("subscribe");
    client.flush().await.expect("flush");
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let request: Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
            let id = request["request"]["componentId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            record.lock().unwrap().push(request.clone());
            let denied_call = request["kind"] == "performInvocation"
                && request["request"]["function"] == DENIED_FUNCTION;
            let answer = if denied_call {
                json!({"requestId": request["requestId"], "permitted": false, "message": CALL_DENIAL})
            } else if id.contains("denied") {
                json!({"requestId": request["requestId"], "permitted": false, "message": DENIAL})
            } else {
                json!({"requestId": request["requestId"], "permitted": true})
            };
            if let Some(reply) = msg.reply {
                let _ = client
                    .publish(reply, serde_json::to_vec(&answer).unwrap().into())
                    .await;
            }
        }
    });
    seen
}

async fn scale(lattice: &Lattice, host: &str, id: &str, count: u32) {
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(host),
            &json!({"component_ref": guest_ref("http_hello"), "component_id": id, "count": count}),
        )
        .await
        .unwrap();
    assert!(ack.success, "{}", ack.message);
}

fn app(name: &str, component: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {name}
  annotations:
    version: v1
spec:
  components:
    - name: {component}
      type: component
      properties:
        image: "{image}"
      traits:
        - type: spreadscaler
          properties:
            instances: 1
"#,
        image = guest_ref("http_hello")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_service_denies_one_component_and_allows_another() {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let seen = start_responder(client.clone()).await;
    let host = HostProcess::start(
        &nats.url(),
        "default",
        &[
            "--policy-topic",
            TOPIC,
            "--policy-changes-topic",
            CHANGES,
            "--label",
            "zone=a",
        ],
    )
    .await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;

    scale(&lattice, &host.id, "allowed-one", 1).await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == "allowed-one")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.logs()));
    scale(&lattice, &host.id, "denied-one", 1).await;
    let failed = events
        .wait_for("component_scale_failed", |d| {
            d["component_id"] == "denied-one"
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.logs()));
    let error = failed.data["error"].as_str().unwrap();
    assert!(
        error.contains("policy denied") && error.contains(DENIAL),
        "{error}"
    );

    // The requests have wasmCloud's shape and carry the host's identity.
    let requests = seen.lock().unwrap().clone();
    let start = requests
        .iter()
        .find(|r| r["request"]["componentId"] == "allowed-one")
        .expect("a request for allowed-one");
    assert_eq!(start["kind"], "startComponent", "{start}");
    assert_eq!(start["version"], "v1", "{start}");
    assert_eq!(start["host"]["publicKey"], host.id.as_str(), "{start}");
    assert_eq!(start["host"]["lattice"], "default", "{start}");
    assert_eq!(start["host"]["labels"]["zone"], "a", "{start}");
    assert_eq!(start["request"]["maxInstances"], 1, "{start}");
    assert!(start["request"]["imageRef"]
        .as_str()
        .unwrap()
        .ends_with("http_hello.wasm"));
    assert!(start["request"]["claims"].is_null(), "unsigned: {start}");

    // Decisions are cached: scaling the denied one again asks nobody and fails the same way.
    let asked = seen.lock().unwrap().len();
    scale(&lattice, &host.id, "denied-one", 2).await;
    let failed = events
        .wait_for("component_scale_failed", |d| {
            d["component_id"] == "denied-one"
        })
        .await
        .unwrap();
    assert!(failed.data["error"].as_str().unwrap().contains(DENIAL));
    assert_eq!(seen.lock().unwrap().len(), asked, "the decision was cached");

    // A changed decision on the changes topic replaces the cached one.
    let request_id = requests
        .iter()
        .find(|r| r["request"]["componentId"] == "denied-one")
        .map(|r| r["requestId"].clone())
        .expect("a request for denied-one");
    client
        .publish(
            CHANGES,
            serde_json::to_vec(&json!({"requestId": request_id, "permitted": true}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    scale(&lattice, &host.id, "denied-one", 1).await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == "denied-one")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.logs()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denial_shows_in_the_apps_status_and_silence_denies() {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let _seen = start_responder(client.clone()).await;
    let lattice = "policy-app";
    let host = HostProcess::start(&nats.url(), lattice, &["--policy-topic", TOPIC]).await;
    let wadm = WadmProcess::start(&nats.url(), lattice, &[]);
    wadm.wait_ready(&client, lattice).await;
    let put = wadm_request(
        &client,
        lattice,
        "put",
        None,
        app("guarded", "denied-app").into_bytes(),
    )
    .await;
    assert_eq!(put["result"], "created", "{put}");
    let deploy = wadm_request(
        &client,
        lattice,
        "deploy",
        Some("guarded"),
        serde_json::to_vec(&json!({"version": "v1"})).unwrap(),
    )
    .await;
    assert_eq!(deploy["result"], "acknowledged", "{deploy}");
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = wadm_request(&client, lattice, "status", Some("guarded"), Vec::new()).await;
        let status = &reply["status"]["status"];
        let message = status["message"].as_str().unwrap_or_default();
        if status["type"] == "failed" && message.contains(DENIAL) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the status never showed the denial; last: {reply}\nhost log:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(wadm);

    // A host whose policy service does not answer denies, saying so.
    let silent = HostProcess::start(
        &nats.url(),
        "quiet",
        &[
            "--policy-topic",
            "nobody.answers.here",
            "--policy-timeout-ms",
            "300",
        ],
    )
    .await;
    let quiet = Lattice::connect(&nats.url(), "quiet").await;
    let mut events = quiet.events().await;
    scale(&quiet, &silent.id, "anything", 1).await;
    let failed = events
        .wait_for("component_scale_failed", |d| {
            d["component_id"] == "anything"
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", silent.logs()));
    let error = failed.data["error"].as_str().unwrap();
    assert!(
        error.contains("policy denied") && error.contains("nobody.answers.here"),
        "{error}"
    );
}

/// Runs `trellis call callee FUNCTION ARGS` on `lattice`; returns (success, stdout+stderr).
async fn call(nats_url: &str, lattice: &str, function: &str, args: &str) -> (bool, String) {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let spec = format!("trellis:demo/inventory@0.1.0.{function}");
    let output = tokio::process::Command::new(trellis_bin())
        .args(["call", "callee", &spec, args, "--nats-url", nats_url])
        .args(["--lattice", lattice])
        .env("TRELLIS_DATA_DIR", data_dir.path())
        .env_remove("TRELLIS_NATS_URL")
        .env_remove("TRELLIS_LATTICE")
        .output()
        .await
        .expect("cannot run trellis");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_carry_the_claims_and_calls_are_asked_too() {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let seen = start_responder(client.clone()).await;
    let lattice_name = "policy-calls";
    // A signed callee: its claims travel in the policy requests.
    let dir = tempfile::tempdir().unwrap();
    let signed = dir.path().join("callee_s.wasm");
    let keys = dir.path().join("keys").display().to_string();
    let source = guest("demo_callee").display().to_string();
    let target = signed.display().to_string();
    let (ok, out, err) = trellis_cli(
        dir.path(),
        &[
            "claims",
            "sign",
            &source,
            "--keys-dir",
            &keys,
            "-o",
            &target,
            "--output",
            "json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let host = HostProcess::start(&nats.url(), lattice_name, &["--policy-topic", TOPIC]).await;
    let lattice = Lattice::connect(&nats.url(), lattice_name).await;
    let mut events = lattice.events().await;
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": format!("file://{target}"), "component_id": "callee", "count": 1}),
        )
        .await
        .unwrap();
    assert!(ack.success, "{}", ack.message);
    events
        .wait_for("component_scaled", |d| d["component_id"] == "callee")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.logs()));
    let start = seen
        .lock()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "startComponent")
        .cloned()
        .expect("a startComponent request");
    let claims = &start["request"]["claims"];
    assert_eq!(claims["issuer"], report["issuer"], "{start}");
    assert_eq!(claims["publicKey"], report["subject"], "{start}");
    assert_eq!(claims["expired"], false, "{start}");

    // A permitted call runs; the denied function is refused with the policy's message.
    let url = nats.url();
    let (ok, out) = call(&url, lattice_name, "next-category", "\"consumable\"").await;
    assert!(ok, "{out}\n{}", host.logs());
    let (ok, out) = call(&url, lattice_name, DENIED_FUNCTION, "{\"data\": []}").await;
    assert!(!ok, "the denied call must fail: {out}");
    assert!(out.contains(CALL_DENIAL), "{out}");
    let calls: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "performInvocation")
        .cloned()
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        calls[0]["request"]["interface"],
        "trellis:demo/inventory@0.1.0"
    );
    assert_eq!(calls[0]["request"]["target"]["componentId"], "callee");
    assert_eq!(
        calls[0]["request"]["target"]["claims"]["issuer"],
        report["issuer"]
    );
}

//! The reconciler under hostile or oversized input, driven from outside like any wadm client:
//! a real nats-server, a real `trellis wadm`, raw JSON on `wadm.api.{lattice}.model.*`.

use futures::StreamExt;
use serde_json::{json, Value};
use trellis_integration::{wadm_request, NatsServer, WadmProcess, WAIT};

/// A valid manifest named `name` at `version`, padded to about `pad` bytes with config values
/// and with `description`.
fn manifest(name: &str, version: &str, description: &str, pad: usize) -> String {
    let mut config = String::new();
    let mut i = 0;
    while config.len() < pad {
        config.push_str(&format!("              key{i}: \"{}\"\n", "v".repeat(90)));
        i += 1;
    }
    let config = if config.is_empty() {
        String::new()
    } else {
        format!("        config:\n          - name: padding\n            properties:\n{config}")
    };
    format!(
        "apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {name}
  annotations:
    version: {version}
    description: {description}
spec:
  components:
    - name: hello
      type: component
      properties:
        image: file:///nowhere/hello.wasm
{config}      traits:
        - type: spreadscaler
          properties:
            instances: 1
            spread:
              - name: gpu
                requirements:
                  gpu: \"true\"
"
    )
}

struct Api {
    client: async_nats::Client,
    lattice: String,
}

impl Api {
    async fn call(&self, op: &str, name: Option<&str>, body: impl Into<Vec<u8>>) -> Value {
        wadm_request(&self.client, &self.lattice, op, name, body.into()).await
    }
}

async fn start(lattice: &str, extra: &[&str]) -> (NatsServer, WadmProcess, Api) {
    let nats = NatsServer::start().await;
    let wadm = WadmProcess::start(&nats.url(), lattice, extra);
    let api = Api {
        client: nats.client().await,
        lattice: lattice.to_string(),
    };
    (nats, wadm, api)
}

fn message(reply: &Value) -> &str {
    reply["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn nested_and_oversized_manifests_are_refused_while_the_api_answers() {
    let (_nats, wadm, api) = start("bounds1", &[]).await;
    let reply = api
        .call("put", None, manifest("steady", "v1", "ok", 0))
        .await;
    assert_eq!(reply["result"], "created", "{reply}");

    // 200 KB of `[` (which kept a YAML parser busy for half a minute) goes in while status
    // and list requests are made; all are answered and the put is refused.
    let nested = "[".repeat(200_000);
    let (put, status, list) = tokio::join!(
        api.call("put", None, nested),
        api.call("status", Some("steady"), Vec::new()),
        api.call("get", None, Vec::new()),
    );
    assert_eq!(put["result"], "error", "{put}");
    assert!(
        message(&put).contains("more than 64 levels deep") && message(&put).contains("line 1"),
        "{put}"
    );
    assert_eq!(status["result"], "ok", "{status}");
    assert_eq!(status["status"]["status"]["type"], "undeployed", "{status}");
    assert_eq!(list["models"][0]["name"], "steady", "{list}");

    // Deep block nesting too.
    let dashes = format!("a:\n  {}x\n", "- ".repeat(5_000));
    let reply = api.call("put", None, dashes).await;
    assert!(message(&reply).contains("levels deep"), "{reply}");

    // Over the default size limit of 512 KiB: the reply names the limit and how to raise it.
    let large = manifest("large", "v1", "big", 600_000);
    let reply = api.call("put", None, large).await;
    assert_eq!(reply["result"], "error", "{reply}");
    assert!(
        message(&reply).contains("over the limit of 524288 bytes")
            && message(&reply).contains("--max-manifest-bytes"),
        "{reply}"
    );
    let reply = api.call("versions", Some("steady"), Vec::new()).await;
    assert_eq!(
        reply["versions"].as_array().map(Vec::len),
        Some(1),
        "{reply}\n{}",
        wadm.logs()
    );
}

#[tokio::test]
async fn eleven_large_versions_are_stored_and_the_reconciler_keeps_working() {
    let lattice = "bounds2";
    let (nats, wadm, api) = start(lattice, &["--max-manifest-bytes", "900000"]).await;
    // Eleven versions of a ~100 KB manifest: together well over NATS' 1 MiB message.
    for i in 1..=11 {
        let reply = api
            .call(
                "put",
                None,
                manifest("big", &format!("v{i}"), "large", 100_000),
            )
            .await;
        let expected = if i == 1 { "created" } else { "newversion" };
        assert_eq!(reply["result"], expected, "{reply}\n{}", wadm.logs());
        assert_eq!(reply["total_versions"], i, "{reply}");
    }
    let reply = api.call("versions", Some("big"), Vec::new()).await;
    let versions: Vec<&str> = reply["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    let expected: Vec<String> = (1..=11).map(|i| format!("v{i}")).collect();
    assert_eq!(versions, expected, "{reply}");
    let reply = api
        .call("get", Some("big"), json!({"version": "v3"}).to_string())
        .await;
    assert_eq!(reply["result"], "success", "{reply}");
    assert_eq!(
        reply["manifest"]["metadata"]["annotations"]["version"],
        "v3"
    );
    let padding = &reply["manifest"]["spec"]["components"][0]["properties"]["config"][0];
    // Every padding key of the ~100 KB version comes back.
    let keys = manifest("big", "v3", "large", 100_000)
        .lines()
        .filter(|l| l.trim_start().starts_with("key"))
        .count();
    assert!(keys > 800, "the padding has {keys} keys");
    assert_eq!(
        padding["properties"].as_object().map(|o| o.len()),
        Some(keys),
        "the whole manifest comes back"
    );

    // No stored value is larger than one NATS message.
    let js = async_nats::jetstream::new(nats.client().await);
    let kv = js
        .get_key_value(format!("TRELLIS_WADM_{lattice}"))
        .await
        .expect("bucket");
    let mut keys = kv.keys().await.expect("keys");
    let mut stored = 0;
    while let Some(key) = keys.next().await {
        let key = key.expect("key");
        let value = kv.get(&key).await.expect("get").unwrap_or_default();
        assert!(value.len() < 1024 * 1024, "{key} is {} bytes", value.len());
        stored += 1;
    }
    assert!(stored >= 12, "an index and eleven manifests: {stored}");

    // A manifest whose stored JSON cannot fit one message is refused at put, with the limit,
    // and the connection stays up: a later deploy of v11 is planned and its status published.
    let quotes = "\"".repeat(600_000);
    let huge = manifest("big", "v12", &format!("|\n      {quotes}"), 0);
    let reply = api.call("put", None, huge).await;
    assert_eq!(reply["result"], "error", "{reply}");
    assert!(
        message(&reply).contains("over the 1044480 bytes one stored value may have")
            && message(&reply).contains("max_payload is 1048576 bytes"),
        "{reply}"
    );
    let mut statuses = api
        .client
        .subscribe(format!("wadm.status.{lattice}.big"))
        .await
        .expect("subscribe");
    api.client.flush().await.expect("flush");
    let reply = api
        .call("deploy", Some("big"), json!({"version": "v11"}).to_string())
        .await;
    assert_eq!(reply["result"], "acknowledged", "{reply}");
    let published = tokio::time::timeout(WAIT, statuses.next())
        .await
        .unwrap_or_else(|_| panic!("no status published after deploy\n{}", wadm.logs()))
        .expect("subscription open");
    let published: Value = serde_json::from_slice(&published.payload).expect("status JSON");
    assert_eq!(published["status"]["type"], "waiting", "{published}");
    let reply = api
        .call("put", None, manifest("big", "v12", "still", 100_000))
        .await;
    assert_eq!(reply["total_versions"], 12, "{reply}");
    let reply = api.call("versions", Some("big"), Vec::new()).await;
    let deployed: Vec<&str> = reply["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter(|v| v["deployed"] == true)
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(deployed, ["v11"], "{reply}");
}

#[tokio::test]
async fn a_list_too_large_for_one_message_comes_in_pages() {
    let (_nats, wadm, api) = start("bounds3", &[]).await;
    // Twelve models whose descriptions together exceed one message.
    let description = "d".repeat(100_000);
    for i in 0..12 {
        let reply = api
            .call(
                "put",
                None,
                manifest(&format!("app{i:02}"), "v1", &description, 0),
            )
            .await;
        assert_eq!(reply["result"], "created", "{reply}\n{}", wadm.logs());
    }
    let mut names = Vec::new();
    let mut body = Vec::new();
    let mut pages = 0;
    loop {
        let reply = api.call("get", None, body).await;
        assert_eq!(reply["result"], "success", "{reply}");
        pages += 1;
        let models = reply["models"].as_array().expect("models");
        assert!(!models.is_empty(), "{reply}");
        names.extend(
            models
                .iter()
                .filter_map(|m| m["name"].as_str().map(String::from)),
        );
        if reply["truncated"] != true {
            assert!(reply.get("next").is_none(), "{reply}");
            break;
        }
        let next = reply["next"]
            .as_str()
            .expect("a cut list says where to go on");
        assert!(
            message(&reply).contains(&format!("{{\"after\":\"{next}\"}}")),
            "{reply}"
        );
        body = json!({ "after": next }).to_string().into_bytes();
    }
    let expected: Vec<String> = (0..12).map(|i| format!("app{i:02}")).collect();
    assert_eq!(names, expected);
    assert!(
        pages >= 2,
        "twelve 100 KB descriptions do not fit one message"
    );
}

#[tokio::test]
async fn trailing_json_self_links_and_wildcard_link_names_are_refused() {
    let (_nats, _wadm, api) = start("bounds4", &[]).await;
    let json_manifest = r#"{"apiVersion":"core.oam.dev/v1beta1","kind":"Application",
        "metadata":{"name":"j","annotations":{"version":"v1"}},
        "spec":{"components":[{"name":"a","type":"component","properties":{"image":"file:///a.wasm"}}]}}"#;
    let reply = api
        .call("put", None, format!("{json_manifest} trailing garbage"))
        .await;
    assert_eq!(reply["result"], "error", "{reply}");
    assert!(
        message(&reply).contains("unexpected data after the JSON document"),
        "{reply}"
    );
    let reply = api.call("put", None, json_manifest).await;
    assert_eq!(
        reply["result"], "created",
        "the same JSON alone is fine: {reply}"
    );

    let linked = |target: &str, name: &str| {
        format!(
            "apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: links
spec:
  components:
    - name: a
      type: component
      properties:
        image: file:///a.wasm
      traits:
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store]
            name: \"{name}\"
            target:
              name: {target}
    - name: b
      type: component
      properties:
        image: file:///b.wasm
"
        )
    };
    let reply = api.call("put", None, linked("a", "default")).await;
    assert_eq!(reply["result"], "error", "{reply}");
    assert!(
        message(&reply).contains("spec.components[0].traits[0].properties.target.name")
            && message(&reply).contains("links to itself"),
        "{reply}"
    );
    for wildcard in ["*", ">"] {
        let reply = api.call("put", None, linked("b", wildcard)).await;
        assert_eq!(reply["result"], "error", "{reply}");
        assert!(
            message(&reply).contains("spec.components[0].traits[0].properties.name")
                && message(&reply).contains(&format!("`{wildcard}` is a NATS wildcard")),
            "{reply}"
        );
    }
    let reply = api.call("put", None, linked("b", "default")).await;
    assert_eq!(reply["result"], "created", "{reply}");
}

#[tokio::test]
async fn models_stored_in_the_old_layout_still_read_and_move_on_write() {
    let lattice = "bounds5";
    let (nats, wadm, api) = start(lattice, &[]).await;
    // Wait until the reconciler serves (and so has created its bucket).
    let reply = api.call("get", None, Vec::new()).await;
    assert_eq!(reply["result"], "success", "{reply}");
    let js = async_nats::jetstream::new(nats.client().await);
    let kv = js
        .get_key_value(format!("TRELLIS_WADM_{lattice}"))
        .await
        .expect("bucket");
    // What earlier releases stored: every manifest inside `model.{name}`.
    let v1 = legacy_manifest_json("old", "v1");
    let legacy = json!({
        "name": "old",
        "versions": [{"version": "v1", "manifest": v1}],
        "deployed_version": null,
    });
    kv.put("model.old", legacy.to_string().into())
        .await
        .expect("put legacy");

    let reply = api
        .call("get", Some("old"), json!({"version": "v1"}).to_string())
        .await;
    assert_eq!(reply["result"], "success", "{reply}\n{}", wadm.logs());
    assert_eq!(reply["manifest"]["metadata"]["name"], "old");
    let reply = api.call("put", None, manifest("old", "v2", "new", 0)).await;
    assert_eq!(reply["result"], "newversion", "{reply}");
    assert_eq!(reply["total_versions"], 2, "{reply}");

    let index: Value =
        serde_json::from_slice(&kv.get("model.old").await.expect("get").expect("index"))
            .expect("index JSON");
    let entries = index["versions"].as_array().expect("versions");
    assert_eq!(entries.len(), 2, "{index}");
    for entry in entries {
        assert!(entry.get("manifest").is_none(), "moved out: {index}");
        assert!(entry["id"].is_string(), "{index}");
    }
    let reply = api
        .call("get", Some("old"), json!({"version": "v1"}).to_string())
        .await;
    assert_eq!(
        reply["manifest"]["metadata"]["annotations"]["version"], "v1",
        "{reply}"
    );
}

/// A manifest as the API stores it (JSON), for writing old-layout models directly.
fn legacy_manifest_json(name: &str, version: &str) -> Value {
    json!({
        "apiVersion": "core.oam.dev/v1beta1",
        "kind": "Application",
        "metadata": {"name": name, "annotations": {"version": version}},
        "spec": {"components": [{
            "name": "hello",
            "type": "component",
            "properties": {"image": "file:///nowhere/hello.wasm"}
        }]}
    })
}

//! The reconciler's API over NATS, driven from outside like any wadm client would: a real
//! nats-server, a real `trellis wadm` process, raw JSON requests on `wadm.api.{lattice}.model.*`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use trellis_integration::{free_port, wadm_request, WadmProcess, WAIT};

/// A nats-server with JetStream; killed on drop. Ready once JetStream answers `$JS.API.INFO`
/// (any reply: the Debian 2.9 server's account info is not what async-nats 0.51 parses).
struct Nats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or("nats-server");
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start nats-server");
        let nats = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(client) = async_nats::connect(nats.url()).await {
                if client.request("$JS.API.INFO", "".into()).await.is_ok() {
                    return nats;
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Api {
    client: async_nats::Client,
    lattice: String,
}

impl Api {
    /// Sends `body` to `model.{op}[.{name}]` and returns the JSON reply; retries while nobody
    /// serves the API yet (the reconciler is starting).
    async fn call(&self, op: &str, name: Option<&str>, body: Vec<u8>) -> Value {
        wadm_request(&self.client, &self.lattice, op, name, body).await
    }

    async fn json(&self, op: &str, name: Option<&str>, body: Value) -> Value {
        self.call(op, name, serde_json::to_vec(&body).expect("json"))
            .await
    }
}

const MANIFEST_V1: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: api-test
  annotations:
    version: v1
    description: "API test"
spec:
  components:
    - name: hello
      type: component
      properties:
        image: file:///nowhere/hello.wasm
      traits:
        - type: spreadscaler
          properties:
            instances: 2
            spread:
              - name: gpu
                requirements:
                  gpu: "true"
"#;

#[tokio::test]
async fn put_get_versions_deploy_status_undeploy_delete() {
    let nats = Nats::start().await;
    let lattice = "wadmapi";
    let mut wadm = WadmProcess::start(&nats.url(), lattice, &[]);
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let api = Api {
        client: client.clone(),
        lattice: lattice.to_string(),
    };

    // An invalid manifest is refused with the field path and line.
    let bad = MANIFEST_V1.replace("image: file", "imagee: file");
    let reply = api.call("put", None, bad.into_bytes()).await;
    assert_eq!(reply["result"], "error", "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.components[0].properties.imagee") && message.contains("line 14"),
        "{message}"
    );

    // Put v1 (YAML), the same version again, v2 (JSON), and one without a version.
    let reply = api.call("put", None, MANIFEST_V1.as_bytes().to_vec()).await;
    assert_eq!(reply["result"], "created", "{reply}");
    assert_eq!(reply["current_version"], "v1");
    assert_eq!(reply["total_versions"], 1);
    assert_eq!(reply["name"], "api-test");
    let reply = api.call("put", None, MANIFEST_V1.as_bytes().to_vec()).await;
    assert_eq!(reply["result"], "error", "versions are immutable: {reply}");
    assert!(reply["message"]
        .as_str()
        .unwrap_or_default()
        .contains("already exists"));

    let mut v2 = api
        .json("get", Some("api-test"), json!({"version": "v1"}))
        .await;
    assert_eq!(v2["result"], "success", "{v2}");
    assert_eq!(v2["manifest"]["metadata"]["annotations"]["version"], "v1");
    v2["manifest"]["metadata"]["annotations"]["version"] = json!("v2");
    let reply = api
        .call(
            "put",
            None,
            serde_json::to_vec(&v2["manifest"]).expect("json"),
        )
        .await;
    assert_eq!(reply["result"], "newversion", "{reply}");
    assert_eq!(reply["total_versions"], 2);
    let unversioned = MANIFEST_V1.replace("    version: v1\n", "");
    let reply = api.call("put", None, unversioned.into_bytes()).await;
    assert_eq!(reply["result"], "newversion", "{reply}");
    let generated = reply["current_version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!generated.is_empty() && generated != "v2", "{reply}");

    let reply = api.call("versions", Some("api-test"), Vec::new()).await;
    assert_eq!(reply["result"], "success");
    let versions: Vec<(String, bool)> = reply["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap_or_default().to_string(),
                v["deployed"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            ("v1".to_string(), false),
            ("v2".to_string(), false),
            (generated.clone(), false)
        ],
        "creation order, nothing deployed: a put never deploys"
    );
    let reply = api
        .json("get", Some("api-test"), json!({"version": "nope"}))
        .await;
    assert_eq!(reply["result"], "notfound");
    let reply = api.call("get", None, Vec::new()).await;
    let models = reply["models"].as_array().expect("models");
    assert_eq!(models.len(), 1, "{reply}");
    assert_eq!(models[0]["version"], generated.as_str());
    assert_eq!(models[0]["detailed_status"]["status"]["type"], "undeployed");
    let reply = api.call("status", Some("api-test"), Vec::new()).await;
    assert_eq!(reply["status"]["status"]["type"], "undeployed", "{reply}");

    // Deploy v1: no host has label gpu=true, so the status waits and says why, and it is
    // published on wadm.status too.
    let mut statuses = client
        .subscribe(format!("wadm.status.{lattice}.api-test"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let reply = api
        .json("deploy", Some("api-test"), json!({"version": "v1"}))
        .await;
    assert_eq!(reply["result"], "acknowledged", "{reply}");
    assert_eq!(reply["version"], "v1");
    // The `undeployed` status of the put may still be on its way: skip it.
    let published = loop {
        let message = tokio::time::timeout(WAIT, statuses.next())
            .await
            .expect("a status is published after deploy")
            .expect("subscription open");
        let published: Value = serde_json::from_slice(&message.payload).expect("status JSON");
        if published["status"]["type"] != "undeployed" {
            break published;
        }
    };
    assert_eq!(published["status"]["type"], "waiting", "{published}");
    assert!(
        published["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("gpu=true"),
        "{published}"
    );
    let reply = api.call("status", Some("api-test"), Vec::new()).await;
    assert_eq!(reply["result"], "ok");
    assert_eq!(reply["status"]["status"]["type"], "waiting", "{reply}");
    assert_eq!(reply["status"]["scalers"][0]["kind"], "SpreadScaler");

    // Models and their deployed version survive a reconciler crash.
    drop(wadm);
    wadm = WadmProcess::start(&nats.url(), lattice, &[]);
    let reply = api.call("versions", Some("api-test"), Vec::new()).await;
    let deployed: Vec<&str> = reply["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter(|v| v["deployed"] == true)
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(deployed, vec!["v1"], "{reply}\n{}", wadm.logs());

    // Undeploy, then delete one version and then all.
    let reply = api.json("undeploy", Some("api-test"), json!({})).await;
    assert_eq!(reply["result"], "acknowledged", "{reply}");
    let reply = api.call("status", Some("api-test"), Vec::new()).await;
    assert_eq!(reply["status"]["status"]["type"], "undeployed", "{reply}");
    let reply = api
        .json("del", Some("api-test"), json!({"version": "v2"}))
        .await;
    assert_eq!(reply["result"], "deleted", "{reply}");
    assert_eq!(reply["undeploy"], false);
    let reply = api.json("del", Some("api-test"), json!({})).await;
    assert_eq!(reply["result"], "deleted", "{reply}");
    let reply = api.json("get", Some("api-test"), json!({})).await;
    assert_eq!(reply["result"], "notfound", "{reply}");
    let reply = api.json("del", Some("api-test"), json!({})).await;
    assert_eq!(reply["result"], "noop", "{reply}");
    let reply = api.call("deploy", Some("api-test"), Vec::new()).await;
    assert_eq!(reply["result"], "notfound", "{reply}");
}

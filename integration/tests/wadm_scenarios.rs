//! The reconciler end to end in the situations its users hit: weighted spreads, daemons and
//! unsatisfiable requirements over labelled hosts; upgrades that must leave exactly the new
//! version; invalid manifests rejected with useful messages; healing after `kill -9` of a host
//! with default settings; a reconciler restarted mid-deploy and two reconcilers at once; and a
//! manifest written for wasmCloud deployed unmodified.
//!
//! Everything is real: nats-server, `trellis host` and `trellis wadm` processes, the guest built
//! from this repository, HTTP over sockets. The tests share one lock: on a small machine,
//! several lattices compiling components at once would make timings meaningless.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_integration::{
    eventually, free_port, guest, trellis_bin, wadm_request, HostProcess, Lattice, NatsServer,
    WadmProcess, WAIT,
};
use trellis_protocol::ctl::{HostInventory, Link, ScaleComponentCommand};

/// One scenario at a time (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HTTP_SERVER_IMAGE: &str = "ghcr.io/wasmcloud/http-server:0.23.0";

/// The wadm API of one lattice, called with raw requests like any wadm client.
struct Api {
    client: async_nats::Client,
    lattice: String,
}

impl Api {
    fn new(client: &async_nats::Client, lattice: &str) -> Self {
        Self {
            client: client.clone(),
            lattice: lattice.to_string(),
        }
    }

    /// One request on `wadm.api.{lattice}.model.{op}`, retried while nobody serves the API yet.
    async fn call(&self, op: &str, body: Vec<u8>) -> Value {
        wadm_request(&self.client, &self.lattice, op, None, body).await
    }

    async fn put(&self, manifest: &str) -> Value {
        self.call("put", manifest.as_bytes().to_vec()).await
    }

    async fn deploy(&self, name: &str, version: &str) {
        let body = serde_json::to_vec(&json!({ "version": version })).expect("json");
        let reply = self.call(&format!("deploy.{name}"), body).await;
        assert_eq!(reply["result"], "acknowledged", "{reply}");
    }

    /// The app's status document (`{status: {type, message}, scalers}`).
    async fn status(&self, name: &str) -> Value {
        let reply = self.call(&format!("status.{name}"), Vec::new()).await;
        reply["status"].clone()
    }

    /// Waits until the app's status is `wanted`; the wadm log is shown on time-out.
    async fn wait_status(&self, name: &str, wanted: &str, wadm: &WadmProcess) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status(name).await;
            if status["status"]["type"] == wanted {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is not {wanted} within {WAIT:?}: {status}\nwadm log:\n{}",
                wadm.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn inventory(lattice: &Lattice, host: &str) -> Option<HostInventory> {
    lattice
        .request::<HostInventory>(lattice.subjects.host_get(host), &json!({}))
        .await
        .ok()
        .and_then(|r| r.response)
}

/// `max_instances` of component `id` on `host` (0 when it does not run there).
async fn instances(lattice: &Lattice, host: &str, id: &str) -> u32 {
    inventory(lattice, host)
        .await
        .and_then(|inv| inv.components.into_iter().find(|c| c.id == id))
        .map_or(0, |c| c.max_instances)
}

async fn links(lattice: &Lattice) -> Vec<Link> {
    lattice
        .request::<Vec<Link>>(lattice.subjects.link_get(), &json!({}))
        .await
        .expect("link.get")
        .response
        .unwrap_or_default()
}

async fn config(lattice: &Lattice, name: &str) -> Option<BTreeMap<String, String>> {
    lattice
        .request::<BTreeMap<String, String>>(lattice.subjects.config_get(name), &json!({}))
        .await
        .expect("config.get")
        .response
}

/// The body of a 200 answer to `GET path` (HTTP/1.0, so the body is not chunked); `None` for
/// any other answer or no answer within 5 s.
async fn http_get(address: &str, path: &str) -> Option<String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.contains(" 200 ").then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// Whether anything accepts connections on `address`.
async fn listening(address: &str) -> bool {
    tokio::net::TcpStream::connect(address).await.is_ok()
}

fn file_ref(path: &Path) -> String {
    format!("file://{}", path.display())
}

// ---------------------------------------------------------------------------------------------
// 1. Placement over labelled hosts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn weighted_spread_daemon_and_unsatisfiable_spread() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().await;
    let name = "placement";
    let url = nats.url();
    let host_a =
        HostProcess::start(&url, name, &["--label", "zone=a", "--label", "edge=true"]).await;
    let host_b =
        HostProcess::start(&url, name, &["--label", "zone=b", "--label", "edge=true"]).await;
    let host_c = HostProcess::start(&url, name, &["--label", "zone=c"]).await;
    let wadm = WadmProcess::start(&url, name, &[]);
    let lattice = Lattice::connect(&url, name).await;
    let api = Api::new(&lattice.client, name);
    let wasm = file_ref(&guest("http_hello"));

    // An app no host can satisfy: it waits, says why, and never claims to be deployed.
    let stranded = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: stranded
  annotations:
    version: v1
spec:
  components:
    - name: hello
      type: component
      properties:
        image: {wasm}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
            spread:
              - name: mars
                requirements:
                  zone: mars
"#
    );
    let mut stranded_statuses = lattice
        .client
        .subscribe(format!("wadm.status.{name}.stranded"))
        .await
        .expect("subscribe");
    lattice.client.flush().await.expect("flush");
    assert_eq!(api.put(&stranded).await["result"], "created");
    api.deploy("stranded", "v1").await;

    let placement = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: placement
  annotations:
    version: v1
spec:
  components:
    - name: weighted
      type: component
      properties:
        image: {wasm}
      traits:
        - type: spreadscaler
          properties:
            instances: 10
            spread:
              - name: a
                requirements:
                  zone: a
                weight: 50
              - name: b
                requirements:
                  zone: b
                weight: 30
              - name: c
                requirements:
                  zone: c
                weight: 20
    - name: edge
      type: component
      properties:
        image: {wasm}
      traits:
        - type: daemonscaler
          properties:
            instances: 2
            spread:
              - name: edge
                requirements:
                  edge: "true"
"#
    );
    assert_eq!(api.put(&placement).await["result"], "created");
    api.deploy("placement", "v1").await;

    let expected = [(&host_a.id, 5, 2), (&host_b.id, 3, 2), (&host_c.id, 2, 0)];
    eventually(
        "5/3/2 weighted and the daemon on both edge hosts",
        || async {
            for (host, weighted, edge) in expected {
                if instances(&lattice, host, "placement-weighted").await != weighted
                    || instances(&lattice, host, "placement-edge").await != edge
                {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let status = api.wait_status("placement", "deployed", &wadm).await;
    assert_eq!(
        status["scalers"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    // Converged means stable: the same counts once deployed.
    for (host, weighted, edge) in expected {
        assert_eq!(
            instances(&lattice, host, "placement-weighted").await,
            weighted
        );
        assert_eq!(instances(&lattice, host, "placement-edge").await, edge);
    }

    let status = api.wait_status("stranded", "waiting", &wadm).await;
    let message = status["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("zone=mars"), "{status}");
    for host in [&host_a.id, &host_b.id, &host_c.id] {
        assert_eq!(instances(&lattice, host, "stranded-hello").await, 0);
    }
    let mut published = 0;
    while let Some(Some(msg)) = stranded_statuses.next().now_or_never() {
        let status: Value = serde_json::from_slice(&msg.payload).expect("status JSON");
        assert_ne!(
            status["status"]["type"], "deployed",
            "an unsatisfiable app claimed to be deployed: {status}"
        );
        published += 1;
    }
    assert!(published > 0, "no status was published for stranded");
}

// ---------------------------------------------------------------------------------------------
// 2. Upgrade v1 -> v2
// ---------------------------------------------------------------------------------------------

fn upgrade_manifest(
    version: &str,
    hello_image: &str,
    greeting: &str,
    hello_instances: u32,
    listen: (&str, u16),
    with_extra: bool,
) -> String {
    let extra = if with_extra {
        format!(
            r#"    - name: extra
      type: component
      properties:
        image: {hello_image}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
"#
        )
    } else {
        String::new()
    };
    let (listen_name, port) = listen;
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: upgrade
  annotations:
    version: {version}
spec:
  components:
    - name: hello
      type: component
      properties:
        image: {hello_image}
        config:
          - name: greeting
            properties:
              message: {greeting}
      traits:
        - type: spreadscaler
          properties:
            instances: {hello_instances}
{extra}    - name: httpserver
      type: capability
      properties:
        image: {HTTP_SERVER_IMAGE}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: hello
            source:
              config:
                - name: {listen_name}
                  properties:
                    address: 127.0.0.1:{port}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_leaves_exactly_the_new_version() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().await;
    let name = "upgrade";
    let url = nats.url();
    let host = HostProcess::start(&url, name, &[]).await;
    let wadm = WadmProcess::start(&url, name, &[]);
    let lattice = Lattice::connect(&url, name).await;
    let api = Api::new(&lattice.client, name);

    // v2 runs another image: the same guest under another reference.
    let v1_image = file_ref(&guest("http_hello"));
    let images = tempfile::tempdir().expect("tempdir");
    let v2_path = images.path().join("http_hello_v2.wasm");
    std::fs::copy(guest("http_hello"), &v2_path).expect("copy guest");
    let v2_image = file_ref(&v2_path);
    let (port1, port2) = (free_port(), free_port());
    let (addr1, addr2) = (format!("127.0.0.1:{port1}"), format!("127.0.0.1:{port2}"));

    let v1 = upgrade_manifest("v1", &v1_image, "one", 2, ("listen-v1", port1), true);
    assert_eq!(api.put(&v1).await["result"], "created");
    api.deploy(name, "v1").await;
    let body = eventually("v1 to serve", || http_get(&addr1, "/")).await;
    assert!(body.contains("Hello from Trellis!"), "{body}");
    api.wait_status(name, "deployed", &wadm).await;
    assert_eq!(instances(&lattice, &host.id, "upgrade-extra").await, 1);
    assert_eq!(
        config(&lattice, "upgrade-greeting").await,
        Some(BTreeMap::from([("message".to_string(), "one".to_string())]))
    );

    let v2 = upgrade_manifest("v2", &v2_image, "two", 3, ("listen-v2", port2), false);
    assert_eq!(api.put(&v2).await["result"], "newversion");
    api.deploy(name, "v2").await;

    let body = eventually("v2 to serve on the new address", || http_get(&addr2, "/")).await;
    assert!(body.contains("Hello from Trellis!"), "{body}");
    eventually("v1's address to be released", || async {
        (!listening(&addr1).await).then_some(())
    })
    .await;
    eventually("the lattice to hold exactly v2", || async {
        let inv = inventory(&lattice, &host.id).await?;
        let hello = inv.components.iter().find(|c| c.id == "upgrade-hello")?;
        let only_hello = inv.components.len() == 1;
        (hello.image_ref == v2_image && hello.max_instances == 3 && only_hello).then_some(())
    })
    .await;
    let status = api.wait_status(name, "deployed", &wadm).await;
    let scalers: BTreeSet<&str> = status["scalers"]
        .as_array()
        .expect("scalers")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        scalers,
        BTreeSet::from([
            "upgrade-greeting",
            "upgrade-listen-v2",
            "hello",
            "httpserver",
            "httpserver -> hello (wasi:http/incoming-handler, default)",
        ]),
        "v2's scalers only: {status}"
    );

    let inv = inventory(&lattice, &host.id).await.expect("inventory");
    let providers: Vec<&str> = inv.providers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(providers, vec!["upgrade-httpserver"], "{inv:?}");
    let all_links = links(&lattice).await;
    assert_eq!(all_links.len(), 1, "{all_links:?}");
    let link = &all_links[0];
    assert_eq!(link.source_id, "upgrade-httpserver");
    assert_eq!(link.target, "upgrade-hello");
    assert_eq!(link.source_config, vec!["upgrade-listen-v2".to_string()]);
    assert_eq!(
        config(&lattice, "upgrade-greeting").await,
        Some(BTreeMap::from([("message".to_string(), "two".to_string())])),
        "a config-only change is applied on upgrade"
    );
    assert_eq!(
        config(&lattice, "upgrade-listen-v2").await,
        Some(BTreeMap::from([("address".to_string(), addr2.clone())]))
    );
    eventually("v1's obsolete config to be deleted", || async {
        config(&lattice, "upgrade-listen-v1")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let reply = api.call(&format!("versions.{name}"), Vec::new()).await;
    let deployed: Vec<&str> = reply["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter(|v| v["deployed"] == true)
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(deployed, vec!["v2"], "{reply}");
}

// ---------------------------------------------------------------------------------------------
// 3. Invalid manifests
// ---------------------------------------------------------------------------------------------

const VALID: &str = r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: valid
  annotations:
    version: v1
spec:
  components:
    - name: hello
      type: component
      properties:
        image: file:///nowhere/hello.wasm
      traits:
        - type: spreadscaler
          properties:
            instances: 1
    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.0
      traits:
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: hello
"#;

/// A second link trait, appended to the last component (httpserver) of [`VALID`].
const SECOND_LINK: &str = r#"        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: hello
"#;

#[tokio::test(flavor = "multi_thread")]
async fn invalid_manifests_are_rejected_with_the_problem_named() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().await;
    let name = "invalid";
    let wadm = WadmProcess::start(&nats.url(), name, &[]);
    let client = nats.client().await;
    let api = Api::new(&client, name);

    let secret = VALID.replace(
        "        image: file:///nowhere/hello.wasm\n",
        "        image: file:///nowhere/hello.wasm\n        secrets:\n          - name: token\n            properties:\n              policy: vault\n              key: api-token\n",
    );
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "bad name",
            VALID.replace("name: valid", "name: not valid!"),
            vec!["metadata.name", "not valid!"],
        ),
        (
            "version latest",
            VALID.replace("version: v1", "version: latest"),
            vec!["metadata.annotations.version", "latest"],
        ),
        (
            "duplicate component names",
            VALID.replace("name: httpserver", "name: hello"),
            vec!["duplicate component name `hello`"],
        ),
        (
            "duplicate ids",
            VALID
                .replace(
                    "        image: file:///nowhere/hello.wasm\n",
                    "        image: file:///nowhere/hello.wasm\n        id: same\n",
                )
                .replace(
                    "        image: ghcr.io/wasmcloud/http-server:0.23.0\n",
                    "        image: ghcr.io/wasmcloud/http-server:0.23.0\n        id: same\n",
                ),
            vec!["duplicate component id `same`"],
        ),
        (
            "link to an unknown target",
            VALID.replace("              name: hello\n", "              name: ghost\n"),
            vec!["target.name", "`ghost` is not a component"],
        ),
        (
            "both image and application",
            VALID.replace(
                "        image: file:///nowhere/hello.wasm\n",
                "        image: file:///nowhere/hello.wasm\n        application:\n          name: shared\n          component: hello\n",
            ),
            vec!["spec.components[0].properties", "not both"],
        ),
        (
            "bad trait properties",
            VALID.replace("            instances: 1\n", "            instances: many\n"),
            vec!["spec.components[0].traits[0]", "instances"],
        ),
        (
            "misspelled trait field",
            VALID.replace(
                "            instances: 1\n",
                "            instances: 1\n            spred: []\n",
            ),
            vec!["spec.components[0].traits[0].properties.spred", "unknown field"],
        ),
        (
            "broken YAML syntax",
            VALID.replace("interfaces: [incoming-handler]", "interfaces: [incoming-handler"),
            vec!["line"],
        ),
        (
            "duplicate link",
            format!("{VALID}{SECOND_LINK}"),
            vec!["duplicate link from `httpserver`"],
        ),
        (
            "secret with an unknown policy",
            secret,
            vec!["spec.components[0].properties.secrets[0].properties.policy", "vault"],
        ),
        (
            "not YAML at all",
            "\u{1b}[1m: {{ this is : not [ yaml".to_string(),
            vec!["line 1"],
        ),
        (
            "a YAML list, not a manifest",
            "- just\n- a list\n".to_string(),
            vec!["expected"],
        ),
        (
            "wrong apiVersion",
            VALID.replace("core.oam.dev/v1beta1", "core.oam.dev/v2"),
            vec!["apiVersion", "core.oam.dev/v2"],
        ),
        (
            "wrong kind",
            VALID.replace("kind: Application", "kind: Deployment"),
            vec!["kind", "Deployment"],
        ),
        ("empty", "   \n".to_string(), vec!["empty"]),
        (
            "JSON with a wrongly typed field",
            r#"{"apiVersion":"core.oam.dev/v1beta1","kind":"Application","metadata":{"name":"j"},"spec":{"components":"none"}}"#
                .to_string(),
            vec!["spec.components"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, manifest, needles) in &cases {
        let reply = api.put(manifest).await;
        let message = reply["message"].as_str().unwrap_or_default();
        eprintln!("{what}: {message}");
        if reply["result"] != "error" {
            failures.push(format!("{what}: accepted: {reply}"));
        } else if let Some(missing) = needles.iter().find(|n| !message.contains(*n)) {
            failures.push(format!("{what}: message lacks `{missing}`: {message}"));
        } else if message.contains("expected value at line 1 column 1") {
            failures.push(format!("{what}: opaque message: {message}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nwadm log:\n{}",
        failures.join("\n"),
        wadm.logs()
    );
    // Nothing was stored, and the valid manifest itself is accepted.
    let reply = api.call("get", Vec::new()).await;
    assert_eq!(reply["models"], json!([]), "{reply}");
    assert_eq!(api.put(VALID).await["result"], "created");

    // Where wadm ignores an unknown field (here, beside a component's `type`), the manifest is
    // accepted and the reply names the field.
    let lenient = VALID.replace("name: valid", "name: lenient").replace(
        "      type: capability\n",
        "      type: capability\n      colour: blue\n",
    );
    let reply = api.put(&lenient).await;
    assert_eq!(reply["result"], "created", "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.components[1].colour") && message.contains("ignored"),
        "{message}"
    );

    // So is a trait of a type neither wadm nor Trellis acts on.
    let custom = VALID.replace("name: valid", "name: custom").replace(
        "        - type: spreadscaler\n",
        "        - type: autoscaler\n          properties: {max: 3}\n        - type: spreadscaler\n",
    );
    let reply = api.put(&custom).await;
    assert_eq!(reply["result"], "created", "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.components[0].traits[0]") && message.contains("`autoscaler`"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Healing after kill -9, default settings
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn heals_after_kill_9_with_default_settings() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().await;
    let name = "healdefault";
    let url = nats.url();
    // Hosts on the default heartbeat (2 s), not the harness's 500 ms: the real default.
    let front = DefaultHost::start(&url, name, "role=front").await;
    let mut workers = [
        DefaultHost::start(&url, name, "role=worker").await,
        DefaultHost::start(&url, name, "role=worker").await,
    ];
    let wadm = WadmProcess::start(&url, name, &[]);
    let lattice = Lattice::connect(&url, name).await;
    let api = Api::new(&lattice.client, name);
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: healing
  annotations:
    version: v1
spec:
  components:
    - name: hello
      type: component
      properties:
        image: {}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
            spread:
              - name: workers
                requirements:
                  role: worker
    - name: httpserver
      type: capability
      properties:
        image: {HTTP_SERVER_IMAGE}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
            spread:
              - name: front
                requirements:
                  role: front
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: hello
            source:
              config:
                - name: listen
                  properties:
                    address: {address}
"#,
        file_ref(&guest("http_hello"))
    );
    assert_eq!(api.put(&manifest).await["result"], "created");
    api.deploy("healing", "v1").await;
    eventually("the app to serve", || http_get(&address, "/")).await;
    api.wait_status("healing", "deployed", &wadm).await;
    assert_eq!(instances(&lattice, &front.id, "healing-hello").await, 0);

    let mut running = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        if instances(&lattice, &w.id, "healing-hello").await == 1 {
            running.push(i);
        }
    }
    assert_eq!(running.len(), 1, "instances: 1 means one worker");
    let victim_index = running[0];
    let survivor_id = workers[1 - victim_index].id.clone();

    let killed_at = Instant::now();
    workers[victim_index].kill();
    let deadline = killed_at + Duration::from_secs(30);
    let mut placed_in = None;
    let served_in = loop {
        if placed_in.is_none() && instances(&lattice, &survivor_id, "healing-hello").await == 1 {
            placed_in = Some(killed_at.elapsed());
        }
        if http_get(&address, "/").await.is_some() {
            break killed_at.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no 200 within 30 s of kill -9\nwadm log:\n{}",
            wadm.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "healing with default settings (2 s heartbeats, host dead after 6 s): first 200 after kill -9 in {served_in:?}; component seen on the surviving host after {placed_in:?}"
    );
    assert_eq!(instances(&lattice, &survivor_id, "healing-hello").await, 1);
    api.wait_status("healing", "deployed", &wadm).await;
    drop(front);
}

/// A `trellis host` with default settings apart from file loading and one label (the harness's
/// [`HostProcess`] always sets a 500 ms heartbeat); killed (SIGKILL) on drop.
struct DefaultHost {
    child: Option<Child>,
    id: String,
    _dir: tempfile::TempDir,
}

impl DefaultHost {
    async fn start(nats_url: &str, lattice: &str, label: &str) -> Self {
        let seed = nkeys::KeyPair::new_server().seed().expect("seed");
        let id = nkeys::KeyPair::from_seed(&seed).expect("seed").public_key();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("host.log")).expect("log file");
        let child = Command::new(trellis_bin())
            .args(["host", "--nats-url", nats_url, "--lattice", lattice])
            .args(["--allow-file-load", "--label", label])
            .env("TRELLIS_HOST_SEED", &seed)
            .env("TRELLIS_CACHE_DIR", dir.path().join("cache"))
            .env_remove("TRELLIS_HEARTBEAT_INTERVAL_MS")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("cannot start trellis host");
        let host = Self {
            child: Some(child),
            id,
            _dir: dir,
        };
        Lattice::connect(nats_url, lattice)
            .await
            .wait_for_host(&host.id)
            .await
            .unwrap_or_else(|e| {
                let log = std::fs::read_to_string(host._dir.path().join("host.log"));
                panic!("{e:#}\nhost log:\n{}", log.unwrap_or_default())
            });
        host
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DefaultHost {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Reconciler restarts and concurrent reconcilers
// ---------------------------------------------------------------------------------------------

fn counted_manifest(wasm: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: counted
  annotations:
    version: v1
spec:
  components:
    - name: work
      type: component
      properties:
        image: {wasm}
      traits:
        - type: spreadscaler
          properties:
            instances: 4
    - name: everywhere
      type: component
      properties:
        image: {wasm}
      traits:
        - type: daemonscaler
          properties:
            instances: 1
"#
    )
}

/// Checks that `counted` runs exactly as declared: 4 `work` in all, 1 `everywhere` per host.
async fn exactly_as_declared(lattice: &Lattice, hosts: &[&HostProcess]) -> Result<(), String> {
    let mut work = 0;
    for host in hosts {
        work += instances(lattice, &host.id, "counted-work").await;
        let daemon = instances(lattice, &host.id, "counted-everywhere").await;
        if daemon != 1 {
            return Err(format!("{} runs {daemon} everywhere", host.id));
        }
    }
    if work != 4 {
        return Err(format!("{work} work instances in all, not 4"));
    }
    Ok(())
}

/// Waits for `count` more heartbeats in the lattice (time passing, measured by events).
async fn heartbeats(lattice: &Lattice, count: usize) {
    let mut events = lattice.events().await;
    for _ in 0..count {
        events
            .wait_for("host_heartbeat", |_| true)
            .await
            .expect("heartbeat");
    }
}

/// Every `component.scale` command sent in a lattice, as a bystander sees it on the wire.
struct ScaleCommands {
    sub: async_nats::Subscriber,
}

impl ScaleCommands {
    async fn watch(lattice: &Lattice) -> Self {
        let sub = lattice
            .client
            .subscribe(lattice.subjects.component_scale("*"))
            .await
            .expect("subscribe");
        lattice.client.flush().await.expect("flush");
        Self { sub }
    }

    fn decode(msg: &async_nats::Message) -> (String, String, u64) {
        let cmd: ScaleComponentCommand =
            serde_json::from_slice(&msg.payload).expect("scale command JSON");
        let host = msg.subject.rsplit('.').next().unwrap_or_default();
        (
            host.to_string(),
            cmd.component_id,
            u64::from(cmd.max_instances),
        )
    }

    /// Waits for the next command.
    async fn next(&mut self) -> (String, String, u64) {
        let msg = tokio::time::timeout(WAIT, self.sub.next())
            .await
            .expect("no scale command within the time limit")
            .expect("subscription open");
        Self::decode(&msg)
    }

    /// The commands received so far, as `(host, component id, max_instances)`.
    fn drain(&mut self) -> Vec<(String, String, u64)> {
        let mut sent = Vec::new();
        while let Some(Some(msg)) = self.sub.next().now_or_never() {
            sent.push(Self::decode(&msg));
        }
        sent
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reconciler_killed_mid_deploy_converges_without_duplicates() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().await;
    let name = "restart";
    let url = nats.url();
    let host_a = HostProcess::start(&url, name, &[]).await;
    let host_b = HostProcess::start(&url, name, &[]).await;
    let mut first = WadmProcess::start(&url, name, &[]);
    let lattice = Lattice::connect(&url, name).await;
    let api = Api::new(&lattice.client, name);

    let manifest = counted_manifest(&file_ref(&guest("http_hello")));
    assert_eq!(api.put(&manifest).await["result"], "created");
    let mut commands = ScaleCommands::watch(&lattice).await;
    api.deploy("counted", "v1").await;
    // Mid-deploy: the first reconciler has started placing work, the hosts have not finished.
    let first_command = commands.next().await;
    first.kill();
    let second = WadmProcess::start(&url, name, &[]);

    api.wait_status("counted", "deployed", &second).await;
    let hosts = [&host_a, &host_b];
    exactly_as_declared(&lattice, &hosts)
        .await
        .unwrap_or_else(|e| panic!("{e}\nwadm log:\n{}", second.logs()));
    // And it stays so: a few heartbeats later nothing was added.
    heartbeats(&lattice, 6).await;
    exactly_as_declared(&lattice, &hosts)
        .await
        .unwrap_or_else(|e| panic!("after convergence: {e}\nwadm log:\n{}", second.logs()));
    let mut sent = vec![first_command];
    sent.extend(commands.drain());
    eprintln!("reconciler restarted mid-deploy: scale commands {sent:?}");
    // The new reconciler continued the deploy rather than redoing it over the old one's work:
    // nothing was placed twice and then undone.
    assert!(
        sent.iter().all(|(_, _, n)| *n > 0),
        "work undone after the restart: {sent:?}\nwadm log:\n{}",
        second.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_reconcilers_do_not_double_the_work() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().await;
    let name = "twowadm";
    let url = nats.url();
    let host_a = HostProcess::start(&url, name, &[]).await;
    let host_b = HostProcess::start(&url, name, &[]).await;
    let one = WadmProcess::start(&url, name, &[]);
    let two = WadmProcess::start(&url, name, &[]);
    let lattice = Lattice::connect(&url, name).await;
    let api = Api::new(&lattice.client, name);

    // Every scale command anyone sends, and every component_scaled event.
    let mut commands = ScaleCommands::watch(&lattice).await;
    let mut events = lattice
        .client
        .subscribe(trellis_protocol::subjects::event(name, "component_scaled"))
        .await
        .expect("subscribe");
    lattice.client.flush().await.expect("flush");

    let manifest = counted_manifest(&file_ref(&guest("http_hello")));
    assert_eq!(api.put(&manifest).await["result"], "created");
    api.deploy("counted", "v1").await;
    let status = api.wait_status("counted", "deployed", &one).await;
    let hosts = [&host_a, &host_b];
    exactly_as_declared(&lattice, &hosts)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{status}\nwadm one:\n{}\nwadm two:\n{}",
                one.logs(),
                two.logs()
            )
        });
    heartbeats(&lattice, 4).await;
    exactly_as_declared(&lattice, &hosts)
        .await
        .unwrap_or_else(|e| panic!("after convergence: {e}"));

    // Needed: one scale per (host, component) that runs something; nothing repeated, nothing
    // undone (no scale to zero).
    let sent = commands.drain();
    let logs = || {
        format!(
            "{sent:?}\nwadm one:\n{}\nwadm two:\n{}",
            one.logs(),
            two.logs()
        )
    };
    let per_target: BTreeSet<(&str, &str)> = sent
        .iter()
        .map(|(h, c, _)| (h.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        per_target.len(),
        sent.len(),
        "repeated scale commands: {}",
        logs()
    );
    assert!(
        sent.iter().all(|(_, _, n)| *n > 0),
        "work undone: {}",
        logs()
    );
    let work: u64 = sent
        .iter()
        .filter(|(_, c, _)| c == "counted-work")
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(work, 4, "{}", logs());
    let daemons = sent
        .iter()
        .filter(|(_, c, n)| c == "counted-everywhere" && *n == 1)
        .count();
    assert_eq!(daemons, 2, "{}", logs());
    let mut scaled = 0;
    while let Some(Some(msg)) = events.next().now_or_never() {
        let event: Value = serde_json::from_slice(&msg.payload).expect("event JSON");
        if event["data"]["component_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("counted-"))
        {
            scaled += 1;
        }
    }
    assert_eq!(
        scaled,
        sent.len(),
        "one component_scaled event per command: {}",
        logs()
    );
    eprintln!(
        "two reconcilers: {} scale commands, {scaled} component_scaled events for 4 work + 2 daemon instances on 2 hosts",
        sent.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A manifest written for wasmCloud
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn wasmcloud_manifest_deploys_unmodified() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().await;
    let name = "default";
    let url = nats.url();
    let host = HostProcess::start(&url, name, &[]).await;
    let wadm = WadmProcess::start(&url, name, &[]);
    let lattice = Lattice::connect(&url, name).await;
    let api = Api::new(&lattice.client, name);
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    // As in wasmCloud's examples (rust http-hello-world), with the older forms its users still
    // have: `type: actor`, `replicas`, `target: "name"` and `source_config`.
    let manifest = format!(
        r#"---
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: rust-hello-world
  annotations:
    version: v0.0.1
    description: "HTTP hello world demo in Rust, using the WebAssembly Component Model and WebAssembly Interfaces Types (WIT)"
    wasmcloud.dev/authors: wasmCloud team
    wasmcloud.dev/source-url: https://github.com/wasmCloud/wasmCloud/blob/main/examples/rust/components/http-hello-world/wadm.yaml
    wasmcloud.dev/categories: |
      http,http-server,rust,hello-world,example
spec:
  components:
    - name: http-component
      type: actor
      properties:
        image: {}
      traits:
        # Govern the spread/scheduling of the component
        - type: spreadscaler
          properties:
            replicas: 1

    # Add a capability provider that enables HTTP access
    - name: httpserver
      type: capability
      properties:
        image: {HTTP_SERVER_IMAGE}
      traits:
        # Link the httpserver to the component, and configure the HTTP server
        # to listen on port {port} for incoming requests
        - type: link
          properties:
            target: http-component
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            source_config:
              - name: default-http
                properties:
                  address: {address}
"#,
        file_ref(&guest("http_hello"))
    );
    let reply = api.put(&manifest).await;
    assert_eq!(reply["result"], "created", "{reply}");
    api.deploy("rust-hello-world", "v0.0.1").await;
    let body = eventually("the wasmCloud manifest to serve", || {
        http_get(&address, "/")
    })
    .await;
    assert!(body.contains("Hello from Trellis!"), "{body}");
    api.wait_status("rust-hello-world", "deployed", &wadm).await;
    let inv = inventory(&lattice, &host.id).await.expect("inventory");
    let ids: Vec<&str> = inv.components.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["rust_hello_world-http_component"], "{inv:?}");
    let providers: Vec<&str> = inv.providers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(providers, vec!["rust_hello_world-httpserver"], "{inv:?}");
}

// ---------------------------------------------------------------------------------------------
// Overlapping spreads (wadm's users saw endless reconcile loops with them)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_spreads_converge_and_stay_still() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().await;
    let name = "overlap";
    let url = nats.url();
    // Host a matches both spreads, host b only the first.
    let host_a =
        HostProcess::start(&url, name, &["--label", "zone=a", "--label", "edge=true"]).await;
    let host_b =
        HostProcess::start(&url, name, &["--label", "zone=b", "--label", "edge=true"]).await;
    let wadm = WadmProcess::start(&url, name, &[]);
    let lattice = Lattice::connect(&url, name).await;
    let api = Api::new(&lattice.client, name);
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: overlap
  annotations:
    version: v1
spec:
  components:
    - name: hello
      type: component
      properties:
        image: {}
      traits:
        - type: spreadscaler
          properties:
            instances: 6
            spread:
              - name: edge
                requirements:
                  edge: "true"
                weight: 50
              - name: zone-a
                requirements:
                  zone: a
                weight: 50
"#,
        file_ref(&guest("http_hello"))
    );
    assert_eq!(api.put(&manifest).await["result"], "created");
    api.deploy("overlap", "v1").await;
    api.wait_status("overlap", "deployed", &wadm).await;
    let hosts = (host_a.id.as_str(), host_b.id.as_str());
    let (on_a, on_b) = split(&lattice, hosts).await;
    assert_eq!(
        on_a + on_b,
        6,
        "a: {on_a}, b: {on_b}\nwadm log:\n{}",
        wadm.logs()
    );
    assert!(
        on_a >= 3,
        "zone-a's half must run on a: a: {on_a}, b: {on_b}"
    );
    eprintln!("overlapping spreads: {on_a} on the host matching both, {on_b} on the other");

    // Converged means quiet: no scale command over several heartbeats.
    let mut commands = ScaleCommands::watch(&lattice).await;
    heartbeats(&lattice, 12).await;
    let sent = commands.drain();
    assert!(
        sent.is_empty(),
        "the reconciler keeps rescaling a converged app: {sent:?}\nwadm log:\n{}",
        wadm.logs()
    );
    assert_eq!(split(&lattice, hosts).await, (on_a, on_b));
    let status = api.status("overlap").await;
    assert_eq!(status["status"]["type"], "deployed", "{status}");
}

/// `overlap-hello`'s instances on each of the two hosts.
async fn split(lattice: &Lattice, (a, b): (&str, &str)) -> (u32, u32) {
    (
        instances(lattice, a, "overlap-hello").await,
        instances(lattice, b, "overlap-hello").await,
    )
}

//! The reconciler against real hosts: it places a component, moves it off a host killed with
//! SIGKILL within the healing budget, and undeploy removes only what it started.

use serde_json::json;
use trellis_integration::{
    eventually, guest, wadm_request, HostProcess, Lattice, NatsServer, WadmProcess, WAIT,
};
use trellis_protocol::ctl::HostInventory;

async fn inventory(lattice: &Lattice, host: &str) -> Option<HostInventory> {
    lattice
        .request::<HostInventory>(lattice.subjects.host_get(host), &json!({}))
        .await
        .ok()
        .and_then(|r| r.response)
}

async fn runs(lattice: &Lattice, host: &str, id: &str) -> bool {
    inventory(lattice, host).await.is_some_and(|inv| {
        inv.components
            .iter()
            .any(|c| c.id == id && c.max_instances > 0)
    })
}

#[tokio::test]
async fn places_heals_after_sigkill_and_undeploys() {
    let nats = NatsServer::start().await;
    let name = "heal";
    // Hosts heartbeat every 500 ms here (the harness's setting). The dead-host delay is set far
    // beyond the test's patience, so the work can only move because the reconciler asked the
    // silent host directly and NATS said nothing answers it any more.
    let mut host_a = HostProcess::start(&nats.url(), name, &[]).await;
    let mut host_b = HostProcess::start(&nats.url(), name, &[]).await;
    let wadm = WadmProcess::start(&nats.url(), name, &["--host-dead-after-ms", "120000"]);
    let lattice = Lattice::connect(&nats.url(), name).await;
    let client = lattice.client.clone();

    let wasm = guest("http_hello");
    let manifest = format!(
        "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata:\n  name: healer\n  annotations:\n    version: v1\nspec:\n  components:\n    - name: hello\n      type: component\n      properties:\n        image: file://{}\n      traits:\n        - type: spreadscaler\n          properties:\n            instances: 1\n",
        wasm.display()
    );
    let reply = wadm_request(&client, name, "put", None, manifest.into_bytes()).await;
    assert_eq!(reply["result"], "created", "{reply}");
    let reply = wadm_request(&client, name, "deploy", Some("healer"), Vec::new()).await;
    assert_eq!(reply["result"], "acknowledged", "{reply}");

    let id = "healer-hello";
    let first = eventually("the component to run on one host", || async {
        let a = runs(&lattice, &host_a.id, id).await;
        let b = runs(&lattice, &host_b.id, id).await;
        match (a, b) {
            (true, false) => Some(host_a.id.clone()),
            (false, true) => Some(host_b.id.clone()),
            _ => None,
        }
    })
    .await;
    eventually("status deployed", || async {
        let s = wadm_request(&client, name, "status", Some("healer"), Vec::new()).await;
        (s["status"]["status"]["type"] == "deployed").then_some(())
    })
    .await;
    let inv = inventory(&lattice, &first).await.expect("inventory");
    let annotations = inv
        .components
        .iter()
        .find(|c| c.id == id)
        .and_then(|c| c.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        annotations
            .get("wasmcloud.dev/managed-by")
            .map(String::as_str),
        Some("wadm")
    );
    assert_eq!(
        annotations.get("wasmcloud.dev/appspec").map(String::as_str),
        Some("healer")
    );

    // SIGKILL the host running it: no host_stopped, only silence.
    let (victim, survivor) = if first == host_a.id {
        (&mut host_a, &host_b)
    } else {
        (&mut host_b, &host_a)
    };
    victim.kill();
    let survivor_id = survivor.id.clone();
    let moved = tokio::time::timeout(WAIT, async {
        while !runs(&lattice, &survivor_id, id).await {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        moved.is_ok(),
        "the component did not move to the surviving host within {WAIT:?}\nwadm log:\n{}",
        wadm.logs()
    );
    assert!(
        wadm.logs().contains("host is gone"),
        "the reconciler says why it moved the work\nwadm log:\n{}",
        wadm.logs()
    );
    eventually("status deployed again", || async {
        let s = wadm_request(&client, name, "status", Some("healer"), Vec::new()).await;
        (s["status"]["status"]["type"] == "deployed").then_some(())
    })
    .await;

    // Undeploy stops what it started and nothing else.
    let reply = wadm_request(&client, name, "undeploy", Some("healer"), b"{}".to_vec()).await;
    assert_eq!(reply["result"], "acknowledged", "{reply}");
    eventually("the component to stop", || async {
        (!runs(&lattice, &survivor_id, id).await).then_some(())
    })
    .await;
}

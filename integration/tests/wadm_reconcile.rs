//! The reconciler against real hosts: it places a component, moves it off a host killed with
//! SIGKILL within the healing budget, and undeploy removes only what it started.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trellis_integration::{eventually, guest, trellis_bin, HostProcess, Lattice, NatsServer, WAIT};
use trellis_protocol::ctl::HostInventory;

/// A `trellis wadm` process; killed on drop.
struct Wadm {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Wadm {
    fn start(nats_url: &str, lattice: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("wadm.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(trellis_bin())
            .args(["wadm", "--nats-url", nats_url, "--lattice", lattice])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("cannot start trellis wadm");
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Wadm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One wadm API request, retried while the API is not served yet.
async fn api(client: &async_nats::Client, subject: String, body: Vec<u8>) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout(WAIT, client.request(subject.clone(), body.clone().into())).await
        {
            Ok(Ok(msg)) => return serde_json::from_slice(&msg.payload).expect("JSON reply"),
            Ok(Err(e)) => {
                assert!(Instant::now() < deadline, "no API on {subject}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => panic!("no reply on {subject}"),
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
    // Hosts heartbeat every 500 ms here (the harness's setting); a host silent for three of
    // them counts as gone.
    let mut host_a = HostProcess::start(&nats.url(), name, &[]).await;
    let mut host_b = HostProcess::start(&nats.url(), name, &[]).await;
    let wadm = Wadm::start(&nats.url(), name, &["--host-dead-after-ms", "1500"]);
    let lattice = Lattice::connect(&nats.url(), name).await;
    let client = lattice.client.clone();

    let wasm = guest("http_hello");
    let manifest = format!(
        "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata:\n  name: healer\n  annotations:\n    version: v1\nspec:\n  components:\n    - name: hello\n      type: component\n      properties:\n        image: file://{}\n      traits:\n        - type: spreadscaler\n          properties:\n            instances: 1\n",
        wasm.display()
    );
    let reply = api(
        &client,
        format!("wadm.api.{name}.model.put"),
        manifest.into_bytes(),
    )
    .await;
    assert_eq!(reply["result"], "created", "{reply}");
    let reply = api(
        &client,
        format!("wadm.api.{name}.model.deploy.healer"),
        Vec::new(),
    )
    .await;
    assert_eq!(reply["result"], "acknowledged", "{reply}");

    let id = "healer-hello";
    let status_subject = format!("wadm.api.{name}.model.status.healer");
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
        let s = api(&client, status_subject.clone(), Vec::new()).await;
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
    let killed_at = Instant::now();
    victim.kill();
    let survivor_id = survivor.id.clone();
    eventually("the component to move to the surviving host", || async {
        runs(&lattice, &survivor_id, id).await.then_some(())
    })
    .await;
    let healed_in = killed_at.elapsed();
    assert!(
        healed_in < Duration::from_secs(10),
        "healing took {healed_in:?}\nwadm log:\n{}",
        wadm.logs()
    );
    eventually("status deployed again", || async {
        let s = api(&client, status_subject.clone(), Vec::new()).await;
        (s["status"]["status"]["type"] == "deployed").then_some(())
    })
    .await;

    // Undeploy stops what it started and nothing else.
    let reply = api(
        &client,
        format!("wadm.api.{name}.model.undeploy.healer"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(reply["result"], "acknowledged", "{reply}");
    eventually("the component to stop", || async {
        (!runs(&lattice, &survivor_id, id).await).then_some(())
    })
    .await;
}

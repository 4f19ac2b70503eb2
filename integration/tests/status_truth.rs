//! An application's status never claims more than the lattice confirmed (issue 11, item 1):
//! a provider that fails to start makes the app `failed` with the host's own error, and
//! `trellis app deploy` exit non-zero with it; a host that stops heartbeating makes the app
//! `reconciling` with what is missing, never `deployed`, until it speaks again.
//!
//! Real processes throughout: nats-server, `trellis host`, `trellis wadm`, the `trellis` CLI and
//! the http-hello guest built from this repository.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use trellis_integration::{
    guest_ref, trellis_cli, wadm_request, HostProcess, Lattice, NatsServer, WadmProcess, WAIT,
};

/// One lattice at a time: these tests measure silence in seconds, which a machine busy with
/// other lattices would blur.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn manifest(name: &str, instances: u32, provider_image: Option<&str>) -> String {
    let mut text = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {name}
  annotations:
    version: v1
spec:
  components:
    - name: hello
      type: component
      properties:
        image: "{image}"
      traits:
        - type: spreadscaler
          properties:
            instances: {instances}
"#,
        image = guest_ref("http_hello")
    );
    if let Some(provider) = provider_image {
        text.push_str(&format!(
            r#"    - name: broken
      type: capability
      properties:
        image: "{provider}"
      traits:
        - type: spreadscaler
          properties:
            instances: 1
"#
        ));
    }
    text
}

/// The app's status as the wadm API reports it: (`type`, `message`).
async fn status(client: &async_nats::Client, lattice: &str, name: &str) -> (String, String) {
    let reply = wadm_request(client, lattice, "status", Some(name), Vec::new()).await;
    let info = &reply["status"]["status"];
    (
        info["type"].as_str().unwrap_or_default().to_string(),
        info["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// Polls the status until `pred` holds; panics after [`WAIT`] with the last status.
async fn wait_status(
    client: &async_nats::Client,
    lattice: &str,
    name: &str,
    pred: impl Fn(&str, &str) -> bool,
) -> (String, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (kind, message) = status(client, lattice, name).await;
        if pred(&kind, &message) {
            return (kind, message);
        }
        assert!(
            Instant::now() < deadline,
            "status of {name} never got there; last: {kind}: {message}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_fails_to_start_fails_the_app_and_the_deploy() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().await;
    let lattice = "truth-provider";
    let host = HostProcess::start(&nats.url(), lattice, &[]).await;
    let client = nats.client().await;
    let wadm = WadmProcess::start(&nats.url(), lattice, &[]);
    wadm.wait_ready(&client, lattice).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    let image = "ghcr.io/example/no-such-provider:0.1.0";
    std::fs::write(&file, manifest("broken", 1, Some(image))).expect("write manifest");
    let path = file.display().to_string();
    let url = nats.url();
    let (ok, out, err) = trellis_cli(
        dir.path(),
        &[
            "app",
            "deploy",
            &path,
            "--nats-url",
            &url,
            "--lattice",
            lattice,
            "--wait-secs",
            "60",
        ],
    )
    .await;
    assert!(
        !ok,
        "deploy of an app whose provider cannot start must fail\nstdout: {out}\nstderr: {err}\nhost log:\n{}",
        host.logs()
    );
    let printed = format!("{out}{err}");
    assert!(
        printed.contains("failed")
            && printed.contains("custom provider images are not supported yet"),
        "the deploy prints the host's error: {printed}"
    );

    // And it stays failed, with the host's error text, while the reconciler retries with
    // back-off: sample the status for a few seconds, every read.
    let sample_until = Instant::now() + Duration::from_secs(4);
    let mut reads = 0;
    while Instant::now() < sample_until {
        let (kind, message) = status(&client, lattice, "broken").await;
        assert_ne!(kind, "deployed", "a failed provider is never deployed");
        assert!(
            kind == "failed" && message.contains("custom provider images are not supported yet"),
            "status after the failure: {kind}: {message}"
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reads > 5, "the status was sampled");
    drop(wadm);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_host_makes_the_app_reconciling_never_deployed() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start().await;
    let lattice = "truth-silent";
    let mut host = HostProcess::start(&nats.url(), lattice, &[]).await;
    let client = nats.client().await;
    let wadm = WadmProcess::start(&nats.url(), lattice, &[]);
    wadm.wait_ready(&client, lattice).await;
    let observer = Lattice::connect(&nats.url(), lattice).await;
    let host_id = observer
        .ping(Duration::from_secs(2))
        .await
        .expect("ping")
        .first()
        .map(|h| h.id.clone())
        .expect("the host answers");

    let put = wadm_request(
        &client,
        lattice,
        "put",
        None,
        manifest("silent", 2, None).into_bytes(),
    )
    .await;
    assert_eq!(put["result"], "created", "{put}");
    let deploy = wadm_request(
        &client,
        lattice,
        "deploy",
        Some("silent"),
        serde_json::to_vec(&json!({"version": "v1"})).expect("json"),
    )
    .await;
    assert_eq!(deploy["result"], "acknowledged", "{deploy}");
    wait_status(&client, lattice, "silent", |kind, _| kind == "deployed").await;

    // Every status the reconciler publishes from here on.
    let mut published = client
        .subscribe(format!("wadm.status.{lattice}.silent"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    host.signal("STOP");
    let (_, message) = wait_status(&client, lattice, "silent", |kind, message| {
        kind == "reconciling" && message.contains("silent for")
    })
    .await;
    assert!(
        message.contains("0 of 2 instances confirmed") && message.contains(&host_id),
        "the status says what is missing and which host is silent: {message}"
    );
    // Past the dead-host delay (6 s), still never deployed.
    let sample_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < sample_until {
        let (kind, message) = status(&client, lattice, "silent").await;
        assert_ne!(
            kind, "deployed",
            "deployed while the only host is stopped: {message}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing published while the host was stopped said deployed.
    let mut saw_silence = false;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), published.next()).await
    {
        let status: Value = serde_json::from_slice(&message.payload).expect("status JSON");
        let text = status["status"]["message"].as_str().unwrap_or_default();
        saw_silence |= text.contains("silent for");
        assert_ne!(
            status["status"]["type"], "deployed",
            "published while the only host was stopped: {status}"
        );
    }
    assert!(saw_silence, "a status naming the silent host was published");

    // Once it resumes, its heartbeat confirms the work again.
    host.signal("CONT");
    let deadline = Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline.into(), published.next())
            .await
            .expect("the status returns to deployed after the host resumes")
            .expect("subscription open");
        let status: Value = serde_json::from_slice(&message.payload).expect("status JSON");
        if status["status"]["type"] == "deployed" {
            break;
        }
    }
    assert!(host.is_running(), "the host survived SIGSTOP/SIGCONT");
    drop(wadm);
}

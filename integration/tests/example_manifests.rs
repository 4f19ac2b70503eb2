//! The example manifests in `manifests/` deploy unmodified with `trellis app deploy` after
//! `trellis up`, exactly as the README tells a new user, and serve.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use trellis_integration::connect_with;
use trellis_integration::{
    eventually, free_port, guest_dir, http_ok, trellis_bin, trellis_cli, HostProcess, Lattice,
};
use trellis_protocol::ctl::HostInventory;
use trellis_protocol::nats::NatsAuth;

/// Brings the lattice down at the end of the test, even on failure.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new(trellis_bin())
            .arg("down")
            .env("TRELLIS_DATA_DIR", self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_manifest_deploys_and_serves() {
    guest_dir(); // the manifests point at the built guests
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let _down = Down(dir);
    let nats_port = free_port().to_string();
    let (ok, out, err) = trellis_cli(
        dir,
        &[
            "up",
            "--detach",
            "--nats-port",
            &nats_port,
            "--label",
            "zone=east",
        ],
    )
    .await;
    assert!(ok, "up failed: {out}\n{err}");
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    // A second host in another zone, for the spread example.
    // `trellis up` requires authentication: the extra host joins with the host key it made,
    // the test's own clients with the CLI's.
    let key_of = |user: &str| NatsAuth {
        nkey_seed: Some(
            std::fs::read_to_string(dir.join(format!("auth/{user}.nk")))
                .unwrap()
                .trim()
                .to_string(),
        ),
        ..Default::default()
    };
    let west = HostProcess::start_with_auth(
        &nats_url,
        "default",
        &["--label", "zone=west"],
        &key_of("host"),
    )
    .await;

    // hello
    let (ok, out, err) = trellis_cli(dir, &["app", "deploy", "manifests/hello.yaml"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("http://127.0.0.1:8080/"), "{out}");
    let body = eventually("hello to serve", || http_ok("127.0.0.1:8080", "/")).await;
    assert!(body.contains("Hello from Trellis!"), "{body}");

    // static site: `trellis up` lets components mount from its working directory (here the
    // repository root), read-only, so the example's folder mounts as the manifest says.
    let (ok, out, err) = trellis_cli(dir, &["app", "deploy", "manifests/static-site.yaml"]).await;
    assert!(ok, "{out}\n{err}");
    let page = eventually("the static site to serve", || {
        http_ok("127.0.0.1:8083", "/")
    })
    .await;
    assert!(page.contains("Served by Trellis"), "{page}");
    let css = http_ok("127.0.0.1:8083", "/css/site.css").await;
    assert!(css.is_some_and(|css| css.contains("font-family")));

    // key-value counter
    let (ok, out, err) = trellis_cli(dir, &["app", "deploy", "manifests/kv-counter.yaml"]).await;
    assert!(ok, "{out}\n{err}");
    let key = format!("/example-{nats_port}");
    let first = eventually("the counter to serve", || http_ok("127.0.0.1:8081", &key)).await;
    let second = http_ok("127.0.0.1:8081", &key).await.unwrap();
    assert_eq!(first.trim(), "1");
    assert_eq!(second.trim(), "2");

    // messaging
    let (ok, out, err) = trellis_cli(dir, &["app", "deploy", "manifests/messaging.yaml"]).await;
    assert!(ok, "{out}\n{err}");
    let client = connect_with(&nats_url, &key_of("cli")).await.unwrap();
    let reply = eventually("the handler to answer", || {
        let client = client.clone();
        async move {
            let msg = tokio::time::timeout(
                Duration::from_secs(2),
                client.request("trellis.demo.hello", "hi".into()),
            )
            .await
            .ok()?
            .ok()?;
            Some(String::from_utf8_lossy(&msg.payload).into_owned())
        }
    })
    .await;
    assert_eq!(reply, "reply: hi");

    // timer: ticks arrive on the subject the component publishes them on.
    let mut ticks = client
        .subscribe("trellis.demo.ticks")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let (ok, out, err) = trellis_cli(dir, &["app", "deploy", "manifests/timer.yaml"]).await;
    assert!(ok, "{out}\n{err}");
    let tick = tokio::time::timeout(
        trellis_integration::WAIT,
        futures::StreamExt::next(&mut ticks),
    )
    .await
    .expect("no tick within the wait")
    .expect("subscription open");
    let text = String::from_utf8_lossy(&tick.payload).into_owned();
    assert!(
        text.starts_with("tick ") && text.ends_with(" hello"),
        "{text}"
    );

    // spread over two zones: 8 instances east, 2 west.
    let (ok, out, err) = trellis_cli(dir, &["app", "deploy", "manifests/spread.yaml"]).await;
    assert!(ok, "{out}\n{err}");
    let lattice = Lattice::connect_with(&nats_url, "default", &key_of("cli")).await;
    let (ok, out, _) = trellis_cli(dir, &["get", "hosts", "-o", "json"]).await;
    assert!(ok);
    let hosts: Value = serde_json::from_str(&out).unwrap();
    let east = hosts
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["labels"]["zone"] == "east"))
        .and_then(|h| h["id"].as_str())
        .expect("an east host")
        .to_string();
    for (host_id, expected) in [(east.as_str(), 8), (west.id.as_str(), 2)] {
        let inv = lattice
            .request::<HostInventory>(lattice.subjects.host_get(host_id), &serde_json::json!({}))
            .await
            .unwrap()
            .response
            .unwrap();
        let hello = inv.components.iter().find(|c| c.id == "spread-hello");
        assert_eq!(
            hello.map(|c| c.max_instances),
            Some(expected),
            "{host_id}: {inv:?}"
        );
    }
    let body = eventually("spread to serve", || http_ok("127.0.0.1:8082", "/")).await;
    assert!(body.contains("Hello from Trellis!"), "{body}");
}

//! `wasmcloud:secrets` end to end: a `trellis host` given `--secret-file NAME=PATH` serves the
//! file's contents to the `secrets_demo` component behind the HTTP server provider; an unknown
//! key is `not-found`, and the value never reaches the host's log.

use std::time::{Duration, Instant};

use serde_json::json;
use trellis_integration::{
    control_ok as ok, free_port, guest, http_get, put_config, HostProcess, Lattice, NatsServer,
};

/// The secret's value; must never show up in the host's log.
const VALUE: &str = "integration-s3cr3t-do-not-log";

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_file_reaches_the_component_and_never_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_path = dir.path().join("db-password");
    std::fs::write(&secret_path, VALUE).expect("writing the secret file");
    let flag = format!("db-password={}", secret_path.display());

    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &["--secret-file", &flag]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let addr = format!("127.0.0.1:{}", free_port());
    put_config(&lattice, "demo-addr", &[("address", &addr)]).await;

    let mut events = lattice.events().await;
    ok(
        &lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": "http-server",
               "provider_ref": "ghcr.io/wasmcloud/http-server:0.23.0", "config": []}),
    )
    .await;
    events
        .wait_for("provider_started", |d| d["provider_id"] == "http-server")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    let component_ref = format!("file://{}", guest("secrets_demo").display());
    ok(
        &lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": component_ref, "component_id": "demo", "count": 1}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == "demo")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    ok(
        &lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "http-server", "target": "demo", "wit_namespace": "wasi",
               "wit_package": "http", "interfaces": ["incoming-handler"],
               "source_config": ["demo-addr"]}),
    )
    .await;

    // The listener opens asynchronously after the link.
    let started = Instant::now();
    let found = loop {
        if let Some(answer) = http_get(&addr, "/secret/db-password").await {
            if answer.0 != 503 && !(answer.0 == 404 && answer.1.is_empty()) {
                break answer;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{addr} did not answer within 20 s\nhost log:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        found,
        (200, format!("found ({} bytes)\n", VALUE.len())),
        "host log:\n{}",
        host.logs()
    );
    assert_eq!(
        http_get(&addr, "/secret/unknown").await,
        Some((404, "not-found\n".to_string()))
    );
    let log = host.logs();
    assert!(
        !log.contains(VALUE),
        "the secret value reached the host log"
    );
}

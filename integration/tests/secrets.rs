//! `wasmcloud:secrets` end to end.
//!
//! - A manifest's secret reference, through `trellis up`'s reconciler, host and built-in
//!   `nats-kv` backend, reaches the `secrets_demo` component; a planted value appears in no log,
//!   event, config, inventory, status or CLI output.
//! - A `trellis host` given `--secret-file NAME=PATH` serves the file's contents; an unknown
//!   key is `not-found`, and the value never reaches the host's log.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use trellis_integration::{
    control_ok as ok, eventually, free_port, guest, http_get, put_config, trellis_cli, HostProcess,
    Lattice, NatsServer,
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

/// The value planted in the backend; it must reach the component and nothing else.
const PLANTED: &str = "planted-9f3c2e-never-print-me";

/// Stops what `trellis up --detach` started in `dir` when the test ends, even on failure.
struct DownOnDrop<'a>(&'a Path);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new(trellis_integration::trellis_bin())
            .arg("down")
            .env("TRELLIS_DATA_DIR", self.0)
            .output();
    }
}

/// Every file under `dir` (logs), concatenated.
fn all_logs(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                out.push_str(&text);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_secret_reaches_its_component_and_nowhere_else() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path();
    let _down = DownOnDrop(dir);
    let nats_port = free_port().to_string();
    let http_port = free_port();
    let (up, out, err) = trellis_cli(
        dir,
        &[
            "up",
            "--detach",
            "--nats-port",
            &nats_port,
            "--lattice",
            "vault",
        ],
    )
    .await;
    assert!(
        up,
        "up failed:\n{out}\n{err}\n{}",
        all_logs(&dir.join("logs"))
    );

    // Everything the lattice says from here on is captured (with the CLI's own key).
    let seed = std::fs::read_to_string(dir.join("auth/cli.nk")).expect("cli key");
    let client = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        .connect(format!("nats://127.0.0.1:{nats_port}"))
        .await
        .expect("connect with the CLI's key");
    let mut events = client
        .subscribe("wasmbus.evt.vault.>")
        .await
        .expect("subscribe to events");

    // The value goes in from a file, so it is on no command line.
    let value_file = dir.join("value");
    std::fs::write(&value_file, PLANTED).expect("write value");
    let mut cli_output = String::new();
    let file_arg = value_file.display().to_string();
    let (ok_put, out, err) =
        trellis_cli(dir, &["secret", "put", "prod/db", "--file", &file_arg]).await;
    assert!(ok_put, "secret put failed:\n{out}\n{err}");
    cli_output.push_str(&out);
    cli_output.push_str(&err);
    let (ok_names, out, err) = trellis_cli(dir, &["secret", "get-names"]).await;
    assert!(ok_names && out.contains("prod/db"), "{out}\n{err}");
    cli_output.push_str(&out);
    cli_output.push_str(&err);

    let manifest = dir.join("vault.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: vault-app
spec:
  policies:
    - name: store
      type: policy.secret.wasmcloud.dev/v1alpha1
      properties:
        backend: nats-kv
  components:
    - name: reader
      type: component
      properties:
        image: file://{wasm}
        secrets:
          - name: db-password
            properties:
              policy: store
              key: prod/db
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
              name: reader
            source:
              config:
                - name: listen
                  properties:
                    address: 127.0.0.1:{http_port}
"#,
            wasm = guest("secrets_demo").display()
        ),
    )
    .expect("write manifest");
    let manifest_arg = manifest.display().to_string();
    let (deployed, out, err) = trellis_cli(dir, &["app", "deploy", &manifest_arg]).await;
    assert!(
        deployed,
        "deploy failed:\n{out}\n{err}\n{}",
        all_logs(&dir.join("logs"))
    );
    cli_output.push_str(&out);
    cli_output.push_str(&err);

    // The component reads the value (the demo answers its size, never the value).
    let address = format!("127.0.0.1:{http_port}");
    let answer = eventually("the component to answer with its secret", || async {
        match http_get(&address, "/secret/db-password").await {
            Some((200, body)) => Some(body),
            _ => None,
        }
    })
    .await;
    assert_eq!(answer, format!("found ({} bytes)\n", PLANTED.len()));
    // Only the names the manifest gives it: the backend's key is not a name.
    assert_eq!(
        http_get(&address, "/secret/prod/db").await.map(|a| a.0),
        Some(404)
    );

    // A reference to a key the backend does not hold fails that app, saying which and why.
    let missing = dir.join("missing.yaml");
    std::fs::write(
        &missing,
        format!(
            r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: missing-app
spec:
  policies:
    - name: store
      type: policy.secret.wasmcloud.dev/v1alpha1
      properties:
        backend: nats-kv
  components:
    - name: reader
      type: component
      properties:
        image: file://{wasm}
        secrets:
          - name: api-key
            properties:
              policy: store
              key: prod/nothing-here
      traits:
        - type: spreadscaler
          properties:
            instances: 1
"#,
            wasm = guest("secrets_demo").display()
        ),
    )
    .expect("write manifest");
    let missing_arg = missing.display().to_string();
    let (_, out, err) = trellis_cli(dir, &["app", "deploy", &missing_arg, "--no-wait"]).await;
    cli_output.push_str(&out);
    cli_output.push_str(&err);
    let status = eventually("missing-app to fail with the secret named", || async {
        let (_, out, _) = trellis_cli(dir, &["app", "status", "missing-app"]).await;
        (out.contains("api-key") && out.contains("not found")).then_some(out)
    })
    .await;
    cli_output.push_str(&status);

    // Everything a user or operator can read, gathered.
    for args in [
        &["app", "status", "vault-app", "-o", "json"][..],
        &["app", "status", "missing-app", "-o", "json"],
        &["get", "inventory", "-o", "json"],
        &[
            "get",
            "config",
            "SECRET_vault_app-db_password",
            "-o",
            "json",
        ],
        &["get", "links", "-o", "json"],
        &["app", "list", "-o", "json"],
    ] {
        let (_, out, err) = trellis_cli(dir, args).await;
        cli_output.push_str(&out);
        cli_output.push_str(&err);
    }
    // The reference itself is readable (where to look), and holds no value.
    assert!(
        cli_output.contains("secret.wasmcloud.dev/v1alpha1"),
        "config get shows the reference:\n{cli_output}"
    );

    let mut seen_events = String::new();
    while let Ok(Some(message)) = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut events),
    )
    .await
    {
        seen_events.push_str(&String::from_utf8_lossy(&message.payload));
    }
    assert!(
        seen_events.contains("component_scaled"),
        "events were captured: {seen_events}"
    );
    let logs = all_logs(&dir.join("logs"));
    for (what, text) in [
        ("the CLI's output", &cli_output),
        ("an event", &seen_events),
        ("a log", &logs),
    ] {
        assert!(!text.contains(PLANTED), "the planted value reached {what}");
    }
    // Nor any file under the data directory (NATS' JetStream store included) but the one the
    // test wrote: the value is sealed at rest.
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if path != value_file {
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !bytes
                    .windows(PLANTED.len())
                    .any(|w| w == PLANTED.as_bytes()),
                "the planted value is in {} in the clear",
                path.display()
            );
        }
    }
}

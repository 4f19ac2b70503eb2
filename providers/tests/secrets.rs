//! `wasmcloud:secrets`: a component importing it instantiates, gets `not-found` for a key it
//! was not granted, and sees a granted secret through `reveal`, while the value never appears
//! in the host's log output.

use std::convert::Infallible;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use trellis_host::runtime::{ComponentSpec, PreparedComponent, Runtime, RuntimeConfig};
use trellis_providers::secrets::{SecretValue, SecretsCapability, StaticSecrets};

/// The granted secret's value; must never show up in the log.
const VALUE: &str = "s3cr3t-value-that-must-not-leak";

/// Builds the guest components and returns the path of `secrets_demo.wasm`.
fn secrets_demo_wasm() -> PathBuf {
    let components = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../components");
    let output = std::process::Command::new("bash")
        .arg(components.join("build.sh"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("running components/build.sh");
    assert!(
        output.status.success(),
        "components/build.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(PathBuf::from)
        .find(|path| path.ends_with("secrets_demo.wasm"))
        .expect("build.sh printed the path of secrets_demo.wasm")
}

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn get(component: &PreparedComponent, path: &str) -> (u16, String) {
    let request = http::Request::get(format!("http://localhost{path}"))
        .body(
            Empty::<Bytes>::new()
                .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} }),
        )
        .expect("building a request");
    let response = tokio::time::timeout(Duration::from_secs(60), component.handle_http(request))
        .await
        .expect("the invocation finished in time")
        .expect("the invocation succeeded");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("reading the body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secrets_importer_instantiates_gets_not_found_and_reveals_only_to_itself() {
    let log = Captured::default();
    let sink = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .init();

    let wasm = secrets_demo_wasm();
    let mut secrets = StaticSecrets::new();
    secrets.grant("demo", "db-password", SecretValue::text(VALUE));
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        allow_file_load: true,
        pool_slots: Some(4),
        capabilities: vec![Arc::new(SecretsCapability::new(Arc::new(secrets)))],
        ..Default::default()
    })
    .expect("creating the runtime");
    let spec = |id: &str| ComponentSpec {
        id: id.to_string(),
        image_ref: format!("file://{}", wasm.display()),
        max_instances: 1,
        ..Default::default()
    };

    let demo = runtime.prepare(spec("demo")).await.expect("prepare demo");
    assert_eq!(
        get(&demo, "/secret/unknown").await,
        (404, "not-found\n".to_string())
    );
    let expected = format!("found ({} bytes)\n", VALUE.len());
    assert_eq!(get(&demo, "/secret/db-password").await, (200, expected));

    // The same wasm under another id was not granted the secret.
    let other = runtime.prepare(spec("other")).await.expect("prepare other");
    assert_eq!(
        get(&other, "/secret/db-password").await,
        (404, "not-found\n".to_string())
    );

    // The registered default (no source) also instantiates and answers not-found.
    let plain = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        allow_file_load: true,
        pool_slots: Some(4),
        capabilities: vec![Arc::new(SecretsCapability::default())],
        ..Default::default()
    })
    .expect("creating the second runtime");
    let plain = plain.prepare(spec("demo")).await.expect("prepare plain");
    assert_eq!(
        get(&plain, "/secret/db-password").await,
        (404, "not-found\n".to_string())
    );

    let text =
        String::from_utf8_lossy(&log.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(
        text.contains("wasmcloud:secrets get: found"),
        "the lookup was logged (without its value):\n{text}"
    );
    assert!(!text.contains(VALUE), "the secret value reached the log");
}

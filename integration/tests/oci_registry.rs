//! Components from a real OCI registry (Debian's `docker-registry`, the CNCF distribution
//! registry) started per test on a free loopback port: push with the CLI, scale by tag and by
//! digest, HTTP 200 from the component; credentials, plain HTTP, the cache that outlives the
//! registry, tampered blobs and a pull-through mirror.

use std::path::Path;

use serde_json::{json, Value};
use trellis_integration::oci::{docker_config_dir, trellis_with_env, EnvHost, Registry};
use trellis_integration::{eventually, free_port, guest, http_ok, Lattice, NatsServer};

const HELLO: &str = "Hello from Trellis!\n";
const HTTP_SERVER_REF: &str = "ghcr.io/wasmcloud/http-server:0.23.0";

/// Pushes the http-hello guest to `registry` as `repo_tag` with the CLI (credentials in its
/// environment) and returns the push report.
async fn push(registry: &Registry, repo_tag: &str) -> Value {
    push_guest(registry, repo_tag, "http_hello").await
}

/// Pushes guest component `name` to `registry` as `repo_tag`; returns the push report.
async fn push_guest(registry: &Registry, repo_tag: &str, name: &str) -> Value {
    let reference = format!("{}/{repo_tag}", registry.addr());
    let wasm = guest(name);
    let env: Vec<(String, String)> = registry.auth_env().into_iter().collect();
    let (ok, stdout, stderr) = trellis_with_env(
        &[
            "push",
            "--allowed-insecure",
            &registry.addr(),
            &reference,
            &wasm.display().to_string(),
            "--annotation",
            "org.opencontainers.image.title=http-hello",
            "--output",
            "json",
        ],
        &env,
    )
    .await;
    assert!(
        ok,
        "push failed: {stderr}\nregistry log:\n{}",
        registry.logs()
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("push output not JSON ({e}): {stdout}"))
}

/// Scales `id` from `image_ref` on `host`; `Err` carries the host's error text.
async fn scale(lattice: &Lattice, host: &EnvHost, id: &str, image_ref: &str) -> Result<(), String> {
    let mut scaled = lattice.events().await;
    let mut failed = lattice.events().await;
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": image_ref, "component_id": id, "count": 1}),
        )
        .await
        .unwrap_or_else(|e| panic!("scale request: {e:#}"));
    assert!(ack.success, "scale refused: {}", ack.message);
    tokio::select! {
        ok = scaled.wait_for("component_scaled", |d| d["component_id"] == id) => {
            ok.map(|_| ()).map_err(|e| format!("{e:#}\nhost log:\n{}", host.logs()))
        }
        bad = failed.wait_for("component_scale_failed", |d| d["component_id"] == id) => {
            let event = bad.unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
            Err(event.data["error"].as_str().unwrap_or_default().to_string())
        }
    }
}

/// Starts the built-in http-server provider on `host`.
async fn start_http_server(lattice: &Lattice, host: &EnvHost) {
    let mut started = lattice.events().await;
    let ack = lattice
        .request::<()>(
            lattice.subjects.provider_start(&host.id),
            &json!({"provider_id": "http-server", "provider_ref": HTTP_SERVER_REF}),
        )
        .await
        .expect("provider.start");
    assert!(ack.success, "{}", ack.message);
    started
        .wait_for("provider_started", |d| d["provider_id"] == "http-server")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
}

/// Routes HTTP on `addr` to component `id` (a config and a link named after it).
async fn route(lattice: &Lattice, id: &str, addr: &str) {
    let config = format!("addr-{id}");
    let ack = lattice
        .request::<()>(
            lattice.subjects.config_put(&config),
            &json!({"address": addr}),
        )
        .await
        .expect("config.put");
    assert!(ack.success, "{}", ack.message);
    let ack = lattice
        .request::<()>(
            lattice.subjects.link_put(),
            &json!({"source_id": "http-server", "target": id, "name": id,
                    "wit_namespace": "wasi", "wit_package": "http",
                    "interfaces": ["incoming-handler"], "source_config": [config]}),
        )
        .await
        .expect("link.put");
    assert!(ack.success, "{}", ack.message);
}

async fn expect_hello(addr: &str, host: &EnvHost) {
    let deadline = std::time::Instant::now() + trellis_integration::WAIT;
    loop {
        if let Some(body) = http_ok(addr, "/").await {
            assert_eq!(body, HELLO);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} never answered 200\nhost log:\n{}",
            host.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn digest_of(report: &Value, field: &str) -> String {
    report[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn pushed_components_serve_http_by_tag_and_by_digest() {
    let registry = Registry::start_with_auth("alice", "s3cret").await;
    let pushed = push(&registry, "demo/hello:0.1.0").await;
    let digest = digest_of(&pushed, "manifest_digest");
    assert_eq!(
        pushed["pinned"],
        format!("{}/demo/hello@{digest}", registry.addr())
    );

    let nats = NatsServer::start().await;
    // The host reads its credentials from a Docker config file (`auths`), as `docker login`
    // writes it; the CLI above used the environment variable.
    let docker = docker_config_dir(&registry.addr(), "alice", "s3cret");
    let host = EnvHost::start(
        &nats.url(),
        "default",
        &["--allowed-insecure", &registry.addr()],
        &[("DOCKER_CONFIG".into(), docker.path().display().to_string())],
    )
    .await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    start_http_server(&lattice, &host).await;

    let by_tag = format!("{}/demo/hello:0.1.0", registry.addr());
    let by_digest = format!("{}/demo/hello@{digest}", registry.addr());
    for (id, image_ref) in [("hello-tag", &by_tag), ("hello-digest", &by_digest)] {
        scale(&lattice, &host, id, image_ref)
            .await
            .unwrap_or_else(|e| panic!("scaling {image_ref}: {e}\nhost log:\n{}", host.logs()));
        let addr = format!("127.0.0.1:{}", free_port());
        route(&lattice, id, &addr).await;
        expect_hello(&addr, &host).await;
    }

    // :latest and untagged refs float: refused without --allow-latest.
    for floating in [
        format!("{}/demo/hello:latest", registry.addr()),
        format!("{}/demo/hello", registry.addr()),
    ] {
        let error = scale(&lattice, &host, "floating", &floating)
            .await
            .expect_err("floating refs are refused");
        assert!(error.contains("--allow-latest"), "{error}");
    }
    // A tag that does not exist: 404, naming the registry and the ref.
    let missing = format!("{}/demo/hello:9.9.9", registry.addr());
    let error = scale(&lattice, &host, "missing", &missing)
        .await
        .expect_err("no such tag");
    assert!(
        error.contains("404") && error.contains(&registry.addr()) && error.contains("9.9.9"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_pushes_pulls_and_inspects() {
    let registry = Registry::start_with_auth("bob", "hunter2").await;
    let pushed = push(&registry, "tools/hello:1.0.0").await;
    let env: Vec<(String, String)> = registry.auth_env().into_iter().collect();
    let reference = format!("{}/tools/hello:1.0.0", registry.addr());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pulled.wasm");
    let (ok, stdout, stderr) = trellis_with_env(
        &[
            "pull",
            "--insecure",
            &reference,
            "-o",
            &out.display().to_string(),
            "--output",
            "json",
        ],
        &env,
    )
    .await;
    assert!(ok, "pull failed: {stderr}");
    let pulled: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(pulled["digest"], pushed["manifest_digest"]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(guest("http_hello")).unwrap()
    );

    let (ok, stdout, stderr) = trellis_with_env(
        &["inspect", "--insecure", &reference, "--output", "json"],
        &env,
    )
    .await;
    assert!(ok, "inspect failed: {stderr}");
    let remote: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(remote["digest"], pushed["manifest_digest"]);
    assert_eq!(remote["kind"], "component");
    assert_eq!(remote["layer"]["media_type"], "application/wasm");
    assert_eq!(remote["config"]["architecture"], "wasm");
    assert_eq!(remote["config"]["os"], "wasip2");
    assert_eq!(
        remote["annotations"]["org.opencontainers.image.title"],
        "http-hello"
    );
    let exports = remote["exports"].as_array().unwrap();
    assert!(
        exports.iter().any(|e| e
            .as_str()
            .unwrap_or("")
            .starts_with("wasi:http/incoming-handler")),
        "{remote}"
    );
    assert_eq!(remote["config"]["component"]["exports"], remote["exports"]);

    let (ok, stdout, stderr) = trellis_with_env(
        &["inspect", &out.display().to_string(), "--output", "json"],
        &[],
    )
    .await;
    assert!(ok, "inspect file failed: {stderr}");
    let local: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(local["digest"], pushed["layer_digest"]);
    assert_eq!(local["imports"], remote["imports"]);
    assert!(local["claims"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_credentials_give_a_401_naming_the_registry() {
    let registry = Registry::start_with_auth("alice", "s3cret").await;
    push(&registry, "demo/hello:0.1.0").await;
    let (var, _) = registry.auth_env().unwrap();
    let nats = NatsServer::start().await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let image_ref = format!("{}/demo/hello:0.1.0", registry.addr());

    let wrong = EnvHost::start(
        &nats.url(),
        "default",
        &["--allowed-insecure", &registry.addr()],
        &[(var.clone(), "alice:Wr0ng-Passw0rd".into())],
    )
    .await;
    let error = scale(&lattice, &wrong, "hello", &image_ref)
        .await
        .expect_err("wrong credentials");
    assert!(
        error.contains("401") && error.contains(&registry.addr()) && error.contains(&var),
        "{error}"
    );
    assert!(!error.contains("Wr0ng-Passw0rd"), "{error}");
    assert!(!wrong.logs().contains("Wr0ng-Passw0rd"), "{}", wrong.logs());

    let anonymous = EnvHost::start(
        &nats.url(),
        "default",
        &["--allowed-insecure", &registry.addr()],
        &[],
    )
    .await;
    let error = scale(&lattice, &anonymous, "hello", &image_ref)
        .await
        .expect_err("no credentials");
    assert!(
        error.contains("401") && error.contains("none were found") && error.contains(&var),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_registries_need_allowed_insecure() {
    let registry = Registry::start().await;
    push(&registry, "demo/hello:0.1.0").await;
    let nats = NatsServer::start().await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let host = EnvHost::start(&nats.url(), "default", &[], &[]).await;
    let image_ref = format!("{}/demo/hello:0.1.0", registry.addr());
    let error = scale(&lattice, &host, "hello", &image_ref)
        .await
        .expect_err("HTTPS to a plain-HTTP registry fails");
    assert!(
        error.contains("--allowed-insecure") && error.contains(&registry.addr()),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_restarts_components_without_their_registry() {
    let mut registry = Registry::start().await;
    let pushed = push(&registry, "demo/hello:0.1.0").await;
    let digest = digest_of(&pushed, "manifest_digest");
    let by_digest = format!("{}/demo/hello@{digest}", registry.addr());
    let by_tag = format!("{}/demo/hello:0.1.0", registry.addr());
    let nats = NatsServer::start().await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut host = EnvHost::start(
        &nats.url(),
        "default",
        &["--allowed-insecure", &registry.addr()],
        &[],
    )
    .await;
    start_http_server(&lattice, &host).await;
    scale(&lattice, &host, "pinned", &by_digest).await.unwrap();
    scale(&lattice, &host, "tagged", &by_tag).await.unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    route(&lattice, "pinned", &addr).await;
    expect_hello(&addr, &host).await;

    // The registry goes away; the host restarts with nothing running.
    registry.stop();
    host.restart().await;
    start_http_server(&lattice, &host).await;
    scale(&lattice, &host, "pinned", &by_digest)
        .await
        .unwrap_or_else(|e| panic!("the pinned component did not come back from the cache: {e}"));
    expect_hello(&addr, &host).await;
    assert!(
        !host.logs().contains("cached copy of this tag"),
        "a digest-pinned ref needs no registry at all"
    );

    // A tag ref falls back to the digest it last resolved to, with a warning.
    scale(&lattice, &host, "tagged", &by_tag)
        .await
        .unwrap_or_else(|e| panic!("the tagged component did not fall back to the cache: {e}"));
    let logs = host.logs();
    assert!(
        logs.contains("registry unreachable") && logs.contains("demo/hello:0.1.0"),
        "{logs}"
    );
    // A ref never pulled cannot come from anywhere.
    let never = format!("{}/demo/other:1.0", registry.addr());
    let error = scale(&lattice, &host, "never", &never)
        .await
        .expect_err("nothing cached");
    assert!(
        error.contains("no cached copy") && error.contains(&registry.addr()),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_blob_is_refused_and_not_cached() {
    let registry = Registry::start().await;
    let pushed = push(&registry, "demo/hello:0.1.0").await;
    let layer = digest_of(&pushed, "layer_digest");
    let blob = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&blob).expect("the pushed blob is in the registry's storage");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let nats = NatsServer::start().await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let host = EnvHost::start(
        &nats.url(),
        "default",
        &["--allowed-insecure", &registry.addr()],
        &[],
    )
    .await;
    let image_ref = format!("{}/demo/hello:0.1.0", registry.addr());
    let error = scale(&lattice, &host, "hello", &image_ref)
        .await
        .expect_err("a blob that does not match its digest is refused");
    assert!(
        error.contains("does not match its digest") && error.contains(&registry.addr()),
        "{error}"
    );
    let cached = host
        .oci_cache_dir()
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    assert!(!Path::new(&cached).exists(), "a tampered blob was cached");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_serves_when_the_origin_is_down() {
    let mut origin = Registry::start().await;
    let mirror = Registry::start_mirror_of(&origin.addr()).await;
    let pushed = push(&origin, "demo/hello:0.1.0").await;
    // Warm the pull-through mirror while the origin is up.
    let dir = tempfile::tempdir().unwrap();
    let warm = dir.path().join("warm.wasm");
    let (ok, _, stderr) = trellis_with_env(
        &[
            "pull",
            "--insecure",
            &format!("{}/demo/hello:0.1.0", mirror.addr()),
            "-o",
            &warm.display().to_string(),
        ],
        &[],
    )
    .await;
    assert!(
        ok,
        "warming the mirror failed: {stderr}\nmirror log:\n{}",
        mirror.logs()
    );
    // The mirror stores what it proxied in the background: wait until the manifest and the
    // layer are in its storage before the origin goes.
    for digest in [
        digest_of(&pushed, "manifest_digest"),
        digest_of(&pushed, "layer_digest"),
    ] {
        let file = mirror.blob_file(&digest);
        eventually(&format!("the mirror to store {digest}"), || {
            let found = file.is_file();
            async move { found.then_some(()) }
        })
        .await;
    }
    origin.stop();

    let nats = NatsServer::start().await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mirror_flag = format!("{}={}", origin.addr(), mirror.addr());
    let insecure = format!("{},{}", origin.addr(), mirror.addr());
    let host = EnvHost::start(
        &nats.url(),
        "default",
        &[
            "--allowed-insecure",
            &insecure,
            "--registry-mirror",
            &mirror_flag,
        ],
        &[],
    )
    .await;
    start_http_server(&lattice, &host).await;
    let digest = digest_of(&pushed, "manifest_digest");
    for (id, image_ref) in [
        ("by-tag", format!("{}/demo/hello:0.1.0", origin.addr())),
        (
            "by-digest",
            format!("{}/demo/hello@{digest}", origin.addr()),
        ),
    ] {
        scale(&lattice, &host, id, &image_ref)
            .await
            .unwrap_or_else(|e| panic!("the mirror did not serve {image_ref}: {e}"));
    }
    let addr = format!("127.0.0.1:{}", free_port());
    route(&lattice, "by-tag", &addr).await;
    expect_hello(&addr, &host).await;
}

/// A valid (empty) component padded with a custom section to `size` bytes or a bit more.
fn padded_component(size: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"padding";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.resize(size, 0);
    let mut wasm = b"\0asm\x0d\0\x01\0".to_vec();
    wasm.push(0); // custom section
    leb(payload.len(), &mut wasm);
    wasm.extend_from_slice(&payload);
    wasm
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_are_capped_at_the_component_size_limit() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, padded_component(3 * 1024 * 1024 / 2)).unwrap();
    let image_ref = format!("{}/demo/big:1.0.0", registry.addr());
    let (ok, _, stderr) = trellis_with_env(
        &["push", "--insecure", &image_ref, &big.display().to_string()],
        &[],
    )
    .await;
    assert!(ok, "push failed: {stderr}");

    let nats = NatsServer::start().await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let host = EnvHost::start(
        &nats.url(),
        "default",
        &[
            "--allowed-insecure",
            &registry.addr(),
            "--max-component-size-mb",
            "1",
        ],
        &[],
    )
    .await;
    let error = scale(&lattice, &host, "big", &image_ref)
        .await
        .expect_err("over the cap");
    assert!(
        error.contains("1048576-byte cap") && error.contains("--max-component-size-mb"),
        "{error}"
    );
    assert!(
        !host.oci_cache_dir().join("blobs").exists(),
        "nothing over the cap is cached"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_deploys_components_by_tag_and_by_digest() {
    let registry = Registry::start_with_auth("carol", "pa55word").await;
    let pushed = push(&registry, "apps/hello:2.0.0").await;
    let digest = digest_of(&pushed, "manifest_digest");
    let nats = NatsServer::start().await;
    let auth: Vec<(String, String)> = registry.auth_env().into_iter().collect();
    let _host = EnvHost::start(
        &nats.url(),
        "default",
        &["--allowed-insecure", &registry.addr()],
        &auth,
    )
    .await;
    let wadm = trellis_integration::WadmProcess::start(&nats.url(), "default", &[]);
    wadm.wait_ready(&nats.client().await, "default").await;

    let (tag_addr, digest_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let registry_addr = registry.addr();
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: oci-hello
spec:
  components:
    - name: by-tag
      type: component
      properties:
        image: {registry_addr}/apps/hello:2.0.0
      traits:
        - type: spreadscaler
          properties:
            instances: 1
    - name: by-digest
      type: component
      properties:
        image: {registry_addr}/apps/hello@{digest}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
    - name: httpserver
      type: capability
      properties:
        image: {HTTP_SERVER_REF}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
        - type: link
          properties:
            name: tag
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: by-tag
            source:
              config:
                - name: tag-addr
                  properties:
                    address: {tag_addr}
        - type: link
          properties:
            name: digest
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: by-digest
            source:
              config:
                - name: digest-addr
                  properties:
                    address: {digest_addr}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("oci-hello.yaml");
    std::fs::write(&file, manifest).unwrap();
    let (ok, stdout, stderr) = trellis_with_env(
        &[
            "app",
            "deploy",
            &file.display().to_string(),
            "--nats-url",
            &nats.url(),
            "--lattice",
            "default",
        ],
        &[("TRELLIS_DATA_DIR".into(), dir.path().display().to_string())],
    )
    .await;
    assert!(
        ok,
        "deploy failed: {stdout}\n{stderr}\nwadm log:\n{}",
        wadm.logs()
    );
    for addr in [&tag_addr, &digest_addr] {
        let body =
            trellis_integration::eventually(&format!("{addr} to serve"), || http_ok(addr, "/"))
                .await;
        assert_eq!(body, HELLO);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_mirror_falls_back_to_the_origin() {
    let origin = Registry::start().await;
    push(&origin, "demo/hello:0.1.0").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let nats = NatsServer::start().await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let host = EnvHost::start(
        &nats.url(),
        "default",
        &[
            "--allowed-insecure",
            &format!("{},{dead}", origin.addr()),
            "--registry-mirror",
            &format!("{}={dead}", origin.addr()),
        ],
        &[],
    )
    .await;
    let image_ref = format!("{}/demo/hello:0.1.0", origin.addr());
    scale(&lattice, &host, "hello", &image_ref)
        .await
        .unwrap_or_else(|e| panic!("the origin did not serve after its mirror failed: {e}"));
    let logs = host.logs();
    assert!(
        logs.contains("mirror failed") && logs.contains(&dead),
        "the mirror was not tried first:\n{logs}"
    );
}

/// wasmCloud's `registry.put` gives every host credentials for a registry; they are used for
/// the next pull and never show in the host's log.
#[tokio::test(flavor = "multi_thread")]
async fn registry_put_gives_hosts_their_credentials() {
    let registry = Registry::start_with_auth("alice", "s3cret-Put").await;
    push(&registry, "demo/hello:0.1.0").await;
    let nats = NatsServer::start().await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let host = EnvHost::start(
        &nats.url(),
        "default",
        &["--allowed-insecure", &registry.addr()],
        &[],
    )
    .await;
    let image_ref = format!("{}/demo/hello:0.1.0", registry.addr());
    let error = scale(&lattice, &host, "hello", &image_ref)
        .await
        .expect_err("no credentials yet");
    assert!(error.contains("401"), "{error}");

    // A malformed request is refused whole, naming what is wrong.
    let refused = lattice
        .request::<Value>(
            lattice.subjects.registry_put(),
            &json!({ registry.addr(): {"username": "alice", "registryType": "oci"} }),
        )
        .await
        .expect("an answer");
    assert!(
        !refused.success && refused.message.contains("a `username` and a `password`"),
        "{refused:?}"
    );

    let reply = lattice
        .request::<Value>(
            lattice.subjects.registry_put(),
            &json!({ registry.addr(): {
                "username": "alice",
                "password": "s3cret-Put",
                "registryType": "oci"
            }}),
        )
        .await
        .expect("an answer");
    assert!(reply.success, "{reply:?}");
    scale(&lattice, &host, "hello-2", &image_ref)
        .await
        .expect("pulls with the credentials registry.put gave");
    assert!(
        !host.logs().contains("s3cret-Put"),
        "the password reached the log:\n{}",
        host.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trellis_call_reads_the_types_of_a_component_loaded_by_ref() {
    let registry = Registry::start_with_auth("carol", "opensesame").await;
    push_guest(&registry, "demo/callee:0.1.0", "demo_callee").await;
    let nats = NatsServer::start().await;
    let docker = docker_config_dir(&registry.addr(), "carol", "opensesame");
    let host = EnvHost::start(
        &nats.url(),
        "default",
        &["--allowed-insecure", &registry.addr()],
        &[("DOCKER_CONFIG".into(), docker.path().display().to_string())],
    )
    .await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let reference = format!("{}/demo/callee:0.1.0", registry.addr());
    scale(&lattice, &host, "callee", &reference)
        .await
        .unwrap_or_else(|e| panic!("scaling {reference}: {e}"));

    // The CLI reads the component's WIT from the registry (credentials from its environment,
    // plain HTTP allowed for this registry only), then calls it over the lattice.
    let env: Vec<(String, String)> = registry.auth_env().into_iter().collect();
    let url = nats.url();
    let call = |insecure: bool| {
        let url = url.clone();
        let env = env.clone();
        let addr = registry.addr();
        async move {
            let mut args = vec![
                "call",
                "callee",
                "trellis:demo/inventory@0.1.0.shout",
                r#"["hi", "!"]"#,
                "--nats-url",
                &url,
                "--lattice",
                "default",
            ];
            if insecure {
                args.extend(["--allowed-insecure", &addr]);
            }
            trellis_with_env(&args, &env).await
        }
    };
    let shouted = eventually("trellis call to answer", || async {
        let (ok, out, _) = call(true).await;
        ok.then_some(out)
    })
    .await;
    assert_eq!(shouted.trim(), "HI!!!", "host log:\n{}", host.logs());

    // Without --allowed-insecure the CLI cannot fetch the types and says why.
    let (ok, _, stderr) = call(false).await;
    assert!(!ok);
    assert!(
        stderr.contains(&registry.addr()) && stderr.contains("allowed-insecure"),
        "{stderr}"
    );
}

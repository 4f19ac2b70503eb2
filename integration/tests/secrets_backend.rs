//! The built-in `nats-kv` secrets backend, end to end: a real nats-server (JetStream), a real
//! `trellis wadm` with deployed manifests, a real `trellis secrets serve`, administered through
//! the `trellis secret` CLI, and asked for secrets with the sealed protocol hosts use
//! (`SecretsClient`), plus a `trellis up` that runs it by itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nkeys::{KeyPair, XKey};
use serde_json::{json, Value};
use trellis_integration::{
    free_port, trellis_bin, trellis_cli, trellis_cli_env, wadm_request, NatsServer, WadmProcess,
    WAIT,
};
use trellis_protocol::secrets::{
    GetSecretError, RequestContext, SecretRequest, SecretResponse, HOST_XKEY_HEADER,
    MAX_SECRET_BYTES,
};
use trellis_protocol::secrets_client::{FetchError, SecretsClient};
use trellis_secrets::{AdminClient, SecretValue};

const LATTICE: &str = "sec";
const BACKEND: &str = "nats-kv";
const PREFIX: &str = "wasmcloud.secrets";

/// The backend's keys, as an operator keeps them.
struct Keys {
    transit: String,
    encryption: String,
    admin: XKey,
    admin_file: PathBuf,
}

impl Keys {
    fn new(dir: &Path) -> Self {
        let seed = |k: XKey| k.seed().expect("seed");
        let admin = XKey::new();
        let admin_file = dir.join("admin.xk");
        std::fs::write(&admin_file, admin.seed().expect("seed")).expect("admin seed file");
        Self {
            transit: seed(XKey::new()),
            encryption: seed(XKey::new()),
            admin,
            admin_file,
        }
    }
}

/// A `trellis secrets serve` child; killed on drop.
struct Backend {
    child: Child,
    log: PathBuf,
}

impl Backend {
    /// Starts it with seeds in its environment (wasmCloud's variable names for the encryption
    /// key, Trellis' for transit, to cover both) and waits until it answers.
    async fn start(nats: &NatsServer, keys: &Keys, dir: &Path) -> Self {
        let log = dir.join(format!("secrets-{}.log", free_port()));
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(trellis_bin())
            .args([
                "secrets",
                "serve",
                "--nats-url",
                &nats.url(),
                "--lattice",
                LATTICE,
            ])
            .args(["--admin-xkey", &keys.admin.public_key()])
            .env("TRELLIS_SECRETS_TRANSIT_SEED", &keys.transit)
            .env("ENCRYPTION_XKEY_SEED", &keys.encryption)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("cannot start trellis secrets serve");
        let backend = Self { child, log };
        let client = nats.client().await;
        let deadline = Instant::now() + WAIT;
        loop {
            let probe = client.request(
                format!("{PREFIX}.v1alpha1.{BACKEND}.server_xkey"),
                "".into(),
            );
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                return backend;
            }
            assert!(
                Instant::now() < deadline,
                "the backend did not answer:\n{}",
                backend.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A manifest for `app` whose component declares secret `key` under a `nats-kv` policy
/// (`backend` lets a test name another backend). Its component never needs to start.
fn manifest(app: &str, key: &str, backend: &str) -> Vec<u8> {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
spec:
  policies:
    - name: store
      type: policy.secret.wasmcloud.dev/v1alpha1
      properties:
        backend: {backend}
  components:
    - name: worker
      type: component
      properties:
        image: file:///nonexistent/worker.wasm
        secrets:
          - name: db
            properties:
              policy: store
              key: {key}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
"#
    )
    .into_bytes()
}

async fn put_app(client: &async_nats::Client, app: &str, key: &str, backend: &str, deploy: bool) {
    let put = wadm_request(client, LATTICE, "put", None, manifest(app, key, backend)).await;
    assert_ne!(put["result"], "error", "{put}");
    if deploy {
        let deployed = wadm_request(client, LATTICE, "deploy", Some(app), Vec::new()).await;
        assert_eq!(deployed["result"], "acknowledged", "{deployed}");
    }
}

/// A host JWT (wascap `Host` claims: an account issues it for the host's server key).
fn host_jwt() -> String {
    let account = KeyPair::new_account();
    let host = KeyPair::new_server();
    trellis_secrets::jwt::sign(
        &account,
        &json!({"iss": account.public_key(), "sub": host.public_key(), "iat": 1,
                "wascap": {"name": "test-host", "labels": {}}}),
    )
    .expect("host jwt")
}

/// A component JWT for `module`.
fn component_jwt(module: &KeyPair) -> String {
    let account = KeyPair::new_account();
    trellis_secrets::jwt::sign(
        &account,
        &json!({"iss": account.public_key(), "sub": module.public_key(), "iat": 1,
                "wascap": {"name": "worker", "hash": "00"}}),
    )
    .expect("component jwt")
}

fn request(key: &str, app: Option<&str>, entity_jwt: &str, version: Option<&str>) -> SecretRequest {
    SecretRequest {
        key: key.to_string(),
        field: None,
        version: version.map(str::to_string),
        context: RequestContext {
            entity_jwt: entity_jwt.to_string(),
            host_jwt: host_jwt(),
            application: trellis_protocol::secrets::Application {
                name: app.map(str::to_string),
                policy: r#"{"type":"properties.secret.wasmcloud.dev/v1alpha1","properties":{}}"#
                    .to_string(),
            },
        },
    }
}

async fn get(
    client: &SecretsClient,
    key: &str,
    app: Option<&str>,
    entity_jwt: &str,
) -> Result<String, FetchError> {
    let secret = client
        .get(BACKEND, &request(key, app, entity_jwt, None))
        .await?;
    Ok(secret.string_secret.unwrap_or_default())
}

fn refused(result: Result<String, FetchError>) -> GetSecretError {
    match result {
        Err(FetchError::Backend { error, .. }) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The CLI against this test's NATS with `admin` as the admin seed file.
async fn cli(dir: &Path, nats: &NatsServer, admin: &Path, args: &[&str]) -> (bool, String, String) {
    let url = nats.url();
    let admin = admin.display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--nats-url", &url, "--admin-seed-file", &admin]);
    trellis_cli(dir, &all).await
}

/// A raw request on the backend's `op` subject; the reply parsed as JSON.
async fn raw(
    client: &async_nats::Client,
    op: &str,
    headers: Option<async_nats::HeaderMap>,
    payload: Vec<u8>,
) -> Value {
    let subject = format!("{PREFIX}.v1alpha1.{BACKEND}.{op}");
    let mut request = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(WAIT));
    if let Some(h) = headers {
        request = request.headers(h);
    }
    let reply = client
        .send_request(subject.clone(), request)
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
        panic!(
            "{subject} answered non-JSON ({e}): {}",
            String::from_utf8_lossy(&reply.payload)
        )
    })
}

#[tokio::test]
async fn cli_admin_grants_mappings_at_rest_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let wadm = WadmProcess::start(&nats.url(), LATTICE, &[]);
    wadm.wait_ready(&client, LATTICE).await;
    let keys = Keys::new(dir);
    let mut backend = Backend::start(&nats, &keys, dir).await;

    // Put through the CLI: from a file, and (with a note) from the command line.
    let value = "s3cr3t-db-password-4711";
    let file = dir.join("db-pass.txt");
    std::fs::write(&file, value).expect("value file");
    let file_arg = file.display().to_string();
    let (ok, out, err) = cli(
        dir,
        &nats,
        &keys.admin_file,
        &["secret", "put", "prod/db", "--file", &file_arg],
    )
    .await;
    assert!(ok, "{out}\n{err}\n{}", backend.logs());
    assert!(
        out.contains("stored secret prod/db") && !out.contains(value),
        "{out}"
    );
    let (ok, out, err) = cli(
        dir,
        &nats,
        &keys.admin_file,
        &["secret", "put", "api-token", "tok-123456", "-o", "json"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        err.contains("shell history"),
        "the argv value note is printed: {err}"
    );
    assert!(!out.contains("tok-123456"), "{out}");
    let (ok, out, err) = cli(
        dir,
        &nats,
        &keys.admin_file,
        &["secret", "get-names", "-o", "json"],
    )
    .await;
    assert!(ok, "{err}");
    let names: Vec<String> = serde_json::from_str(&out).expect("names json");
    assert_eq!(names, vec!["api-token", "prod/db"]);

    // Values at rest are ciphertext.
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("WASMCLOUD_SECRETS").await.expect("bucket");
    let stored = kv.get("prod/db").await.expect("kv get").expect("stored");
    assert!(
        !stored.windows(value.len()).any(|w| w == value.as_bytes()),
        "the plaintext is in the KV bucket"
    );
    assert!(stored.len() > value.len());

    // Grants: an app whose deployed manifest declares the key may read it, signed or not.
    put_app(&client, "billing", "prod/db", BACKEND, true).await;
    put_app(&client, "other", "something-else", BACKEND, true).await;
    put_app(&client, "draft", "prod/db", BACKEND, false).await;
    put_app(&client, "vaulted", "prod/db", "vault", true).await;
    let secrets = SecretsClient::new(client.clone(), PREFIX, WAIT);
    assert_eq!(
        get(&secrets, "prod/db", Some("billing"), "")
            .await
            .expect("granted"),
        value
    );
    let signed = KeyPair::new_module();
    let signed_jwt = component_jwt(&signed);
    assert_eq!(
        get(&secrets, "prod/db", Some("billing"), &signed_jwt)
            .await
            .expect("granted"),
        value
    );
    for app in [
        Some("other"),
        Some("draft"),
        Some("vaulted"),
        Some("missing"),
        None,
    ] {
        assert_eq!(
            refused(get(&secrets, "prod/db", app, "").await),
            GetSecretError::Unauthorized,
            "{app:?}"
        );
    }
    // A bad JWT is refused even where the app would be allowed.
    assert!(matches!(
        refused(get(&secrets, "prod/db", Some("billing"), "not.a.jwt").await),
        GetSecretError::InvalidEntityJWT(_)
    ));
    let mut no_host = request("prod/db", Some("billing"), "", None);
    no_host.context.host_jwt.clear();
    assert!(matches!(
        secrets.get(BACKEND, &no_host).await,
        Err(FetchError::Backend {
            error: GetSecretError::InvalidHostJWT(_),
            ..
        })
    ));
    // Undeploying withdraws the grant (after the short cache).
    put_app(&client, "brief", "api-token", BACKEND, true).await;
    assert_eq!(
        get(&secrets, "api-token", Some("brief"), "")
            .await
            .expect("granted"),
        "tok-123456"
    );
    let undeployed = wadm_request(&client, LATTICE, "undeploy", Some("brief"), Vec::new()).await;
    assert_eq!(undeployed["result"], "acknowledged", "{undeployed}");
    let deadline = Instant::now() + WAIT;
    while get(&secrets, "api-token", Some("brief"), "").await.is_ok() {
        assert!(Instant::now() < deadline, "the grant outlived the undeploy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A mapping restricts the key to the mapped entities.
    let signed_key = signed.public_key();
    let (ok, out, err) = cli(
        dir,
        &nats,
        &keys.admin_file,
        &["secret", "add-mapping", &signed_key, "--secret", "prod/db"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("prod/db"), "{out}");
    assert_eq!(
        get(&secrets, "prod/db", Some("billing"), &signed_jwt)
            .await
            .expect("mapped"),
        value
    );
    assert_eq!(
        refused(get(&secrets, "prod/db", Some("billing"), "").await),
        GetSecretError::Unauthorized
    );
    let stranger = component_jwt(&KeyPair::new_module());
    assert_eq!(
        refused(get(&secrets, "prod/db", Some("billing"), &stranger).await),
        GetSecretError::Unauthorized
    );
    // The mapping does not bypass the manifest rule.
    assert_eq!(
        refused(get(&secrets, "prod/db", Some("other"), &signed_jwt).await),
        GetSecretError::Unauthorized
    );
    let (ok, _, err) = cli(
        dir,
        &nats,
        &keys.admin_file,
        &[
            "secret",
            "remove-mapping",
            &signed_key,
            "--secret",
            "prod/db",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        get(&secrets, "prod/db", Some("billing"), "")
            .await
            .expect("unrestricted"),
        value
    );

    // Versions select revisions.
    let admin = AdminClient::new(
        client.clone(),
        PREFIX,
        BACKEND,
        XKey::from_seed(&keys.admin.seed().expect("seed")).expect("key"),
        WAIT,
    );
    let first: u64 = kv
        .entry("prod/db")
        .await
        .expect("entry")
        .expect("entry")
        .revision;
    admin
        .put("prod/db", SecretValue::Text("rotated".into()))
        .await
        .expect("put");
    assert_eq!(
        get(&secrets, "prod/db", Some("billing"), "")
            .await
            .expect("latest"),
        "rotated"
    );
    let old = secrets
        .get(
            BACKEND,
            &request("prod/db", Some("billing"), "", Some(&first.to_string())),
        )
        .await
        .expect("old revision");
    assert_eq!(old.string_secret.as_deref(), Some(value));
    assert_eq!(old.version, first.to_string());

    // The largest binary value goes through; one byte more is refused.
    put_app(&client, "blobs", "blob", BACKEND, true).await;
    let blob: Vec<u8> = (0..MAX_SECRET_BYTES)
        .map(|i| (i % 251) as u8 | 0x80)
        .collect();
    admin
        .put("blob", SecretValue::Bytes(blob.clone()))
        .await
        .expect("64 KiB put");
    let fetched = secrets
        .get(BACKEND, &request("blob", Some("blobs"), "", None))
        .await
        .expect("64 KiB get");
    assert_eq!(fetched.binary_secret.as_deref(), Some(&blob[..]));
    let too_big = admin
        .put("blob", SecretValue::Bytes(vec![0x80; MAX_SECRET_BYTES + 1]))
        .await;
    assert!(too_big.unwrap_err().to_string().contains("at most"));

    // A wrong admin key can neither put, list, delete nor map.
    let intruder = dir.join("intruder.xk");
    std::fs::write(&intruder, XKey::new().seed().expect("seed")).expect("seed file");
    for args in [
        &["secret", "put", "prod/db", "--file", &file_arg][..],
        &["secret", "get-names"][..],
        &["secret", "del", "prod/db"][..],
        &["secret", "add-mapping", &signed_key, "--secret", "prod/db"][..],
    ] {
        let (ok, out, err) = cli(dir, &nats, &intruder, args).await;
        assert!(!ok, "{args:?} succeeded with a wrong admin key: {out}");
        assert!(err.contains("unauthorized"), "{args:?}: {err}");
    }
    // An unsealed wasmCloud-style mapping request is refused too.
    let plain = raw(
        &client,
        &format!("add_mapping.{signed_key}"),
        None,
        br#"["prod/db"]"#.to_vec(),
    )
    .await;
    assert!(
        plain["error"].is_object() || plain["error"].is_string(),
        "{plain}"
    );
    assert_eq!(
        get(&secrets, "prod/db", Some("billing"), "")
            .await
            .expect("still open"),
        "rotated"
    );

    // Malformed and oversized requests get error replies; the backend keeps serving.
    let empty = raw(&client, "get", None, Vec::new()).await;
    assert_eq!(empty["error"], "InvalidPayload", "{empty}");
    let no_headers = raw(&client, "get", None, b"garbage".to_vec()).await;
    assert_eq!(no_headers["error"], "InvalidHeaders", "{no_headers}");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HOST_XKEY_HEADER, "not-an-xkey");
    let bad_key = raw(&client, "get", Some(headers), b"garbage".to_vec()).await;
    assert_eq!(bad_key["error"], "InvalidXKey", "{bad_key}");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HOST_XKEY_HEADER, XKey::new().public_key().as_str());
    let unsealed = raw(&client, "get", Some(headers.clone()), b"garbage".to_vec()).await;
    assert_eq!(unsealed["error"], "DecryptionError", "{unsealed}");
    let huge = raw(
        &client,
        "get",
        Some(headers.clone()),
        vec![b'x'; 600 * 1024],
    )
    .await;
    assert_eq!(huge["error"], "InvalidPayload", "{huge}");
    // Sealed, but not a request.
    let server = XKey::from_public_key(&secrets.server_key(BACKEND).await.expect("server key"))
        .expect("xkey");
    let sender = XKey::new();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HOST_XKEY_HEADER, sender.public_key().as_str());
    for body in [
        &b"{}"[..],
        b"[1,2]",
        b"\xff\xfe",
        br#"{"key":"../x","context":{}}"#,
    ] {
        let sealed = sender.seal(body, &server).expect("seal");
        let reply = raw(&client, "get", Some(headers.clone()), sealed).await;
        let reply: SecretResponse = serde_json::from_value(reply).expect("a secret response");
        assert_eq!(reply.error, Some(GetSecretError::InvalidRequest));
    }
    let unknown = raw(&client, "frobnicate.x.y", None, Vec::new()).await;
    assert!(unknown["error"].is_object(), "{unknown}");
    assert_eq!(
        get(&secrets, "prod/db", Some("billing"), "")
            .await
            .expect("still serving"),
        "rotated"
    );

    // Restarted with the same keys, the old values are served.
    let first_log = backend.logs();
    backend.kill();
    let backend = Backend::start(&nats, &keys, dir).await;
    let fresh = SecretsClient::new(client.clone(), PREFIX, WAIT);
    assert_eq!(
        get(&fresh, "prod/db", Some("billing"), "")
            .await
            .expect("after restart"),
        "rotated"
    );

    // Delete through the CLI: gone, history too.
    let (ok, _, err) = cli(dir, &nats, &keys.admin_file, &["secret", "del", "prod/db"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        refused(get(&fresh, "prod/db", Some("billing"), "").await),
        GetSecretError::SecretNotFound
    );
    let (ok, out, _) = cli(dir, &nats, &keys.admin_file, &["secret", "get-names"]).await;
    assert!(
        ok && !out.contains("prod/db") && out.contains("api-token"),
        "{out}"
    );
    let (ok, _, err) = cli(dir, &nats, &keys.admin_file, &["secret", "del", "prod/db"]).await;
    assert!(!ok && err.contains("no such secret"), "{err}");

    // No value ever reached the log.
    let logs = first_log + &backend.logs();
    for secret in [value, "tok-123456", "rotated"] {
        assert!(!logs.contains(secret), "a value in the backend log");
    }
}

fn is_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn up_state(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap_or_default())
        .unwrap_or(Value::Null)
}

/// Stops the `trellis up` of `dir` when the test ends, even on failure.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if let Some(pid) = up_state(self.0)["pid"].as_u64() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while is_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[tokio::test]
async fn trellis_up_runs_the_backend_and_keeps_its_data() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path();
    let _down = Down(dir);
    let port = free_port().to_string();
    let up = [
        "up",
        "--detach",
        "--nats-port",
        &port,
        "--lattice",
        "sec-up",
    ];
    let (ok, out, err) = trellis_cli(dir, &up).await;
    let log = || std::fs::read_to_string(dir.join("logs/up.log")).unwrap_or_default();
    assert!(ok, "up failed:\n{err}\n{}", log());
    assert!(out.contains("secrets     backend nats-kv running"), "{out}");
    assert!(
        out.contains("secrets-encryption.xk"),
        "the key to back up is named: {out}"
    );

    // Keys are private files; the backend got its seeds by environment, not argv.
    for name in ["transit", "encryption", "admin"] {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("auth/secrets-{name}.xk"));
        let mode = std::fs::metadata(&path)
            .expect("key file")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    let state = up_state(dir);
    let pid = state["secrets_pid"].as_u64().expect("secrets_pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline);
    for name in ["transit", "encryption"] {
        let seed =
            std::fs::read_to_string(dir.join(format!("auth/secrets-{name}.xk"))).expect("seed");
        assert!(
            !cmdline.contains(seed.trim()),
            "the {name} seed is on the command line"
        );
    }

    // The CLI finds the lattice and the admin key with no flags.
    let file = dir.join("v.txt");
    std::fs::write(&file, "kept-across-restarts").expect("value");
    let file = file.display().to_string();
    let (ok, _, err) = trellis_cli(dir, &["secret", "put", "kept", "--file", &file]).await;
    assert!(ok, "{err}");
    let (ok, out, err) = trellis_cli(dir, &["secret", "get-names"]).await;
    assert!(ok && out.trim() == "kept", "{out}\n{err}");

    // `down` stops it; the next `up` reuses the keys and still has the secret.
    let (ok, _, err) = trellis_cli(dir, &["down"]).await;
    assert!(ok, "{err}");
    assert!(!is_alive(pid), "the backend outlived `trellis down`");
    let (ok, _, err) = trellis_cli(dir, &up).await;
    assert!(ok, "second up failed:\n{err}\n{}", log());
    let (ok, out, err) = trellis_cli_env(dir, &["secret", "get-names", "-o", "json"], &[]).await;
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Vec<String>>(&out).ok(),
        Some(vec!["kept".to_string()])
    );
    let (ok, _, err) = trellis_cli(dir, &["down"]).await;
    assert!(ok, "{err}");
}

//! Signed components end to end: `trellis claims sign|inspect` on a real component, and a
//! `trellis host --require-signed --allowed-issuer` that runs the well-signed one and refuses
//! unsigned, tampered, expired and unknown-issuer ones, saying which check failed.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use trellis_integration::{guest, trellis_cli, HostProcess, Lattice, NatsServer};

/// Runs `trellis claims sign` with `args` and returns its JSON report.
async fn sign(data: &Path, keys: &Path, args: &[&str]) -> serde_json::Value {
    let keys = keys.display().to_string();
    let mut all = vec!["claims", "sign", "--keys-dir", &keys, "--output", "json"];
    all.extend_from_slice(args);
    let (ok, out, err) = trellis_cli(data, &all).await;
    assert!(ok, "claims sign {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

async fn inspect(data: &Path, file: &Path) -> serde_json::Value {
    let file = file.display().to_string();
    let (ok, out, err) = trellis_cli(data, &["claims", "inspect", &file, "--output", "json"]).await;
    assert!(ok, "claims inspect failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Appends a custom section: the code changes after signing, the JWT stays.
fn tamper(signed: &[u8]) -> Vec<u8> {
    let mut wasm = signed.to_vec();
    wasm.extend_from_slice(&[0, 4, 3, b'e', b'v', b'l']);
    wasm
}

#[tokio::test(flavor = "multi_thread")]
async fn require_signed_admits_only_valid_signatures_from_allowed_issuers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("keys");
    let original = dir.path().join("hello.wasm");
    std::fs::copy(guest("http_hello"), &original).unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let original_arg = original.display().to_string();

    // A good signature from account `acme`; its keys are generated with mode 0600.
    let good = sign(
        &data,
        &keys,
        &[
            &original_arg,
            "--issuer",
            "acme",
            "--name",
            "hello",
            "--ver",
            "0.1.0",
            "--rev",
            "3",
            "--tag",
            "web",
            "-o",
            &file("good.wasm"),
        ],
    )
    .await;
    let acme = good["issuer"].as_str().unwrap().to_string();
    assert!(acme.starts_with('A'), "{good}");
    let subject = good["subject"].as_str().unwrap().to_string();
    assert!(subject.starts_with('M'), "{good}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("acme_account.nk"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let seen = inspect(&data, &dir.path().join("good.wasm")).await;
    assert_eq!(seen["valid"], true, "{seen}");
    assert_eq!(seen["claims"]["iss"], acme.as_str());
    assert_eq!(seen["claims"]["wascap"]["ver"], "0.1.0");
    assert_eq!(seen["claims"]["wascap"]["hash"], good["hash"]);

    // Tampered, expired, and signed by another account.
    let signed = std::fs::read(dir.path().join("good.wasm")).unwrap();
    std::fs::write(dir.path().join("tampered.wasm"), tamper(&signed)).unwrap();
    let seen = inspect(&data, &dir.path().join("tampered.wasm")).await;
    assert_eq!(seen["valid"], false, "{seen}");
    assert!(
        seen["error"].as_str().unwrap().contains("module hash"),
        "{seen}"
    );
    sign(
        &data,
        &keys,
        &[
            &original_arg,
            "--issuer",
            "acme",
            "--expires",
            "1s",
            "-o",
            &file("expired.wasm"),
        ],
    )
    .await;
    let other = sign(
        &data,
        &keys,
        &[
            &original_arg,
            "--issuer",
            "stranger",
            "-o",
            &file("stranger.wasm"),
        ],
    )
    .await;
    assert_ne!(other["issuer"], acme.as_str());
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let nats = NatsServer::start().await;
    let host = HostProcess::start(
        &nats.url(),
        "default",
        &["--require-signed", "--allowed-issuer", &acme],
    )
    .await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;
    let cases = [
        ("unsigned", original_arg.clone(), "unsigned"),
        (
            "tampered",
            file("tampered.wasm"),
            "module hash check failed",
        ),
        ("expired", file("expired.wasm"), "expiry check failed"),
        ("stranger", file("stranger.wasm"), "not in --allowed-issuer"),
    ];
    for (id, path, expected) in &cases {
        let ack = lattice
            .request::<()>(
                lattice.subjects.component_scale(&host.id),
                &json!({"component_ref": format!("file://{path}"), "component_id": id, "count": 1}),
            )
            .await
            .unwrap();
        assert!(ack.success, "{}", ack.message);
        let failed = events
            .wait_for("component_scale_failed", |d| d["component_id"] == *id)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:#}\n{}", host.logs()));
        let error = failed.data["error"].as_str().unwrap();
        assert!(error.contains(expected), "{id}: {error}");
        if *id == "stranger" {
            // The message names the refused issuer.
            assert!(error.contains(other["issuer"].as_str().unwrap()), "{error}");
        }
    }

    // The good one runs, and its claims are in the event and in claims.get.
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": format!("file://{}", file("good.wasm")),
                    "component_id": "good", "count": 1}),
        )
        .await
        .unwrap();
    assert!(ack.success, "{}", ack.message);
    let scaled = events
        .wait_for("component_scaled", |d| d["component_id"] == "good")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.logs()));
    assert_eq!(scaled.data["claims"]["subject"], subject.as_str());
    let claims = lattice
        .request::<Vec<std::collections::HashMap<String, String>>>(
            lattice.subjects.claims_get(),
            &json!({}),
        )
        .await
        .unwrap();
    assert!(claims.success, "{}", claims.message);
    let list = claims.response.unwrap_or_default();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["issuer"], acme);
    assert_eq!(list[0]["subject"], subject);
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(list[0]["version"], "0.1.0");
    assert_eq!(list[0]["revision"], "3");
    assert_eq!(list[0]["tags"], "web");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_default_host_runs_unsigned_code_but_never_a_tampered_signature() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("keys");
    let original = dir.path().join("hello.wasm");
    std::fs::copy(guest("http_hello"), &original).unwrap();
    let signed_path = dir.path().join("signed.wasm");
    sign(
        &data,
        &keys,
        &[
            &original.display().to_string(),
            "-o",
            &signed_path.display().to_string(),
        ],
    )
    .await;
    let tampered = dir.path().join("tampered.wasm");
    std::fs::write(&tampered, tamper(&std::fs::read(&signed_path).unwrap())).unwrap();

    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;
    let scale = |id: &'static str, path: &Path| {
        let body = json!({"component_ref": format!("file://{}", path.display()),
                          "component_id": id, "count": 1});
        let subject = lattice.subjects.component_scale(&host.id);
        let lattice = &lattice;
        async move {
            let ack = lattice.request::<()>(subject, &body).await.unwrap();
            assert!(ack.success, "{}", ack.message);
        }
    };
    scale("tampered", &tampered).await;
    let failed = events
        .wait_for("component_scale_failed", |d| {
            d["component_id"] == "tampered"
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.logs()));
    scale("plain", &original).await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == "plain")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.logs()));
    let error = failed.data["error"].as_str().unwrap();
    assert!(error.contains("module hash check failed"), "{error}");
}

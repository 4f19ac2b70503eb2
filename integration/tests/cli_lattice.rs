//! The `trellis` operator commands against a real nats-server and a real host: what a user
//! types, checked through `--output json` and through the lattice itself.

use std::time::Duration;

use serde_json::Value;
use trellis_integration::{
    eventually, free_port, guest, trellis_cli, HostProcess, Lattice, NatsServer,
};

/// Runs a command that must succeed and parses its JSON output.
async fn trellis_json(data_dir: &std::path::Path, args: &[&str]) -> Value {
    let (ok, out, err) = trellis_cli(data_dir, args).await;
    assert!(ok, "trellis {args:?} failed:\n{err}");
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("trellis {args:?}: not JSON ({e}):\n{out}"))
}

#[tokio::test]
async fn unreachable_nats_says_how_to_start_a_lattice() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{}", free_port());
    let (ok, _, err) = trellis_cli(dir.path(), &["get", "hosts", "--nats-url", &url]).await;
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot reach NATS at {url}")),
        "{err}"
    );
    assert!(err.contains("trellis up"), "{err}");
}

#[tokio::test]
async fn empty_lattice_and_missing_reconciler_are_explained() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let (ok, out, _) = trellis_cli(
        dir.path(),
        &["get", "hosts", "--nats-url", &url, "--lattice", "empty"],
    )
    .await;
    assert!(ok);
    assert!(out.contains("no hosts in lattice empty"), "{out}");
    let (ok, _, err) = trellis_cli(
        dir.path(),
        &["app", "list", "--nats-url", &url, "--lattice", "empty"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("no reconciler in lattice empty"), "{err}");
    let (ok, _, err) = trellis_cli(
        dir.path(),
        &[
            "label",
            "put",
            "nobody",
            "a=b",
            "--nats-url",
            &url,
            "--lattice",
            "empty",
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("no hosts in lattice empty"), "{err}");
}

#[tokio::test]
async fn lattice_commands_drive_a_real_host() {
    let nats = NatsServer::start().await;
    let lattice = "cli";
    let host = HostProcess::start(&nats.url(), lattice, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let base = [
        "--nats-url",
        url.as_str(),
        "--lattice",
        lattice,
        "-o",
        "json",
    ];
    let with = |args: &[&'static str]| -> Vec<String> {
        args.iter()
            .map(|s| s.to_string())
            .chain(base.iter().map(|s| s.to_string()))
            .collect()
    };
    let run_json = |args: Vec<String>| {
        let dir = dir.path().to_path_buf();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            trellis_json(&dir, &refs).await
        }
    };

    // get hosts lists the host with its friendly name.
    let hosts = run_json(with(&["get", "hosts"])).await;
    let listed = hosts.as_array().expect("a list of hosts");
    assert_eq!(listed.len(), 1, "{hosts}");
    assert_eq!(listed[0]["id"], host.id.as_str());
    let friendly = listed[0]["friendly_name"].as_str().unwrap().to_string();

    // Labels by id prefix.
    let prefix = host.id[..8].to_string();
    let mut args = vec![
        "label".to_string(),
        "put".into(),
        prefix.clone(),
        "zone=a".into(),
    ];
    args.extend(base.iter().map(|s| s.to_string()));
    run_json(args).await;
    let lat = Lattice::connect(&url, lattice).await;
    eventually("the label to show", || async {
        let hosts = lat.ping(Duration::from_millis(500)).await.ok()?;
        (hosts.first()?.labels.get("zone").map(String::as_str) == Some("a")).then_some(())
    })
    .await;
    let mut args = vec![
        "label".to_string(),
        "del".into(),
        friendly.clone(),
        "zone".into(),
    ];
    args.extend(base.iter().map(|s| s.to_string()));
    run_json(args).await;

    // Configs round-trip.
    run_json(with(&[
        "config",
        "put",
        "cli-cfg",
        "a=1",
        "url=redis://x?y=z",
    ]))
    .await;
    let config = run_json(with(&["get", "config", "cli-cfg"])).await;
    assert_eq!(
        config,
        serde_json::json!({"a": "1", "url": "redis://x?y=z"})
    );

    // Links round-trip.
    run_json(with(&[
        "link",
        "put",
        "src",
        "tgt",
        "wasi:keyvalue",
        "--interface",
        "store",
        "--interface",
        "atomics",
        "--name",
        "cache",
        "--source-config",
        "cli-cfg",
    ]))
    .await;
    let links = run_json(with(&["get", "links"])).await;
    let link = links
        .as_array()
        .and_then(|l| l.iter().find(|l| l["source_id"] == "src"))
        .unwrap_or_else(|| panic!("link missing: {links}"));
    assert_eq!(link["target"], "tgt");
    assert_eq!(link["name"], "cache");
    assert_eq!(link["interfaces"], serde_json::json!(["store", "atomics"]));
    run_json(with(&[
        "link",
        "del",
        "src",
        "wasi:keyvalue",
        "--name",
        "cache",
    ]))
    .await;
    let links = run_json(with(&["get", "links"])).await;
    assert!(
        !links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["source_id"] == "src"),
        "{links}"
    );
    run_json(with(&["config", "del", "cli-cfg"])).await;

    // Scale a real component through an auction, then see it in the inventory.
    let wasm = format!("file://{}", guest("http_hello").display());
    let mut args: Vec<String> = [
        "scale",
        "component",
        "--auto",
        wasm.as_str(),
        "cli-hello",
        "--count",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(base.iter().map(|s| s.to_string()));
    let scaled = run_json(args).await;
    assert_eq!(scaled["success"], true, "{scaled}");
    let mut args = vec!["get".to_string(), "inventory".into(), friendly.clone()];
    args.extend(base.iter().map(|s| s.to_string()));
    let dir_path = dir.path().to_path_buf();
    eventually("the component in the inventory", || {
        let args = args.clone();
        let dir_path = dir_path.clone();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let inv = trellis_json(&dir_path, &refs).await;
            let found = inv["components"]
                .as_array()?
                .iter()
                .any(|c| c["id"] == "cli-hello" && c["max_instances"] == 2);
            found.then_some(())
        }
    })
    .await;
    let mut args = vec![
        "stop".to_string(),
        "component".into(),
        "cli-hello".into(),
        prefix,
    ];
    args.extend(base.iter().map(|s| s.to_string()));
    run_json(args).await;
}

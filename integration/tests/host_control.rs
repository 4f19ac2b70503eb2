//! The host's control interface, driven from outside over NATS the way wasmCloud 1.x tooling
//! drives it: real nats-server, real `trellis host` processes, real `.wasm`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use trellis_integration::{eventually, guest_ref, HostProcess, Lattice, NatsServer};
use trellis_protocol::ctl::{HostInventory, Link};

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_answer_ping_and_other_lattices_see_none() {
    let nats = NatsServer::start().await;
    let a = HostProcess::start(&nats.url(), "alpha", &["--label", "zone=a"]).await;
    let b = HostProcess::start(&nats.url(), "alpha", &[]).await;
    let alpha = Lattice::connect(&nats.url(), "alpha").await;
    let hosts = alpha.ping(Duration::from_millis(500)).await.unwrap();
    let mut ids: Vec<_> = hosts.iter().map(|h| h.id.clone()).collect();
    ids.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let host_a = hosts.iter().find(|h| h.id == a.id).unwrap();
    assert!(host_a.id.starts_with('N'));
    assert_eq!(host_a.lattice, "alpha");
    assert_eq!(host_a.labels.get("zone").map(String::as_str), Some("a"));
    for builtin in ["hostcore.os", "hostcore.arch", "hostcore.osfamily"] {
        assert!(host_a.labels.contains_key(builtin), "missing {builtin}");
    }
    assert!(!host_a.friendly_name.is_empty());
    assert!(host_a.version.is_some());

    let beta = Lattice::connect(&nats.url(), "beta").await;
    assert!(beta
        .ping(Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_component_up_down_and_failure_events() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;

    let image = guest_ref("http_hello");
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": image, "component_id": "hello", "count": 3,
                    "annotations": {"owner": "test"}}),
        )
        .await
        .unwrap();
    assert!(ack.success, "{}", ack.message);
    let scaled = events
        .wait_for("component_scaled", |d| d["component_id"] == "hello")
        .await
        .unwrap();
    assert_eq!(scaled.data["max_instances"], 3);
    assert_eq!(scaled.data["host_id"], host.id);
    assert_eq!(scaled.source, host.id);

    let inv = lattice
        .request::<HostInventory>(lattice.subjects.host_get(&host.id), &json!({}))
        .await
        .unwrap()
        .response
        .unwrap();
    let c = inv.components.iter().find(|c| c.id == "hello").unwrap();
    assert_eq!(c.max_instances, 3);
    assert_eq!(c.image_ref, image);
    // The digest of the bytes the host loaded, as `sha256sum` computes it from the file.
    let sum = std::process::Command::new("sha256sum")
        .arg(image.trim_start_matches("file://"))
        .output()
        .expect("sha256sum runs");
    let hex = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_string();
    assert_eq!(c.digest.as_deref(), Some(format!("sha256:{hex}").as_str()));
    assert_eq!(
        c.annotations
            .as_ref()
            .unwrap()
            .get("owner")
            .map(String::as_str),
        Some("test")
    );

    // The heartbeat carries the whole inventory.
    let beat = events
        .wait_for("host_heartbeat", |d| {
            d["components"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["id"] == "hello"))
        })
        .await
        .unwrap();
    assert_eq!(beat.data["host_id"], host.id);

    // Scale to zero removes it.
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": image, "component_id": "hello", "count": 0}),
        )
        .await
        .unwrap();
    assert!(ack.success);
    events
        .wait_for("component_scaled", |d| {
            d["component_id"] == "hello" && d["max_instances"] == 0
        })
        .await
        .unwrap();
    let inv = lattice
        .request::<HostInventory>(lattice.subjects.host_get(&host.id), &json!({}))
        .await
        .unwrap()
        .response
        .unwrap();
    assert!(inv.components.is_empty(), "{:?}", inv.components);

    // A missing file fails with a readable error event.
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": "file:///nonexistent/missing.wasm", "component_id": "ghost", "count": 1}),
        )
        .await
        .unwrap();
    assert!(
        ack.success,
        "scale is acknowledged first; the outcome is an event"
    );
    let failed = events
        .wait_for("component_scale_failed", |d| d["component_id"] == "ghost")
        .await
        .unwrap();
    let error = failed.data["error"].as_str().unwrap();
    assert!(error.contains("/nonexistent/missing.wasm"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_refs_need_the_allow_flag() {
    let nats = NatsServer::start().await;
    let seed = nkeys::KeyPair::new_server().seed().unwrap();
    let host = HostProcess::start_with_seed(&nats.url(), "default", &[], seed, false).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": guest_ref("http_hello"), "component_id": "hello", "count": 1}),
        )
        .await
        .unwrap();
    assert!(ack.success);
    let failed = events
        .wait_for("component_scale_failed", |d| d["component_id"] == "hello")
        .await
        .unwrap();
    let error = failed.data["error"].as_str().unwrap();
    assert!(error.contains("--allow-file-load"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_change_inventory_and_emit_events() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;

    let put = lattice
        .request::<()>(
            lattice.subjects.label_put(&host.id),
            &json!({"key": "region", "value": "eu-west"}),
        )
        .await
        .unwrap();
    assert!(put.success, "{}", put.message);
    let changed = events.wait_for("labels_changed", |_| true).await.unwrap();
    assert_eq!(changed.data["labels"]["region"], "eu-west");
    let inv = lattice
        .request::<HostInventory>(lattice.subjects.host_get(&host.id), &json!({}))
        .await
        .unwrap()
        .response
        .unwrap();
    assert_eq!(
        inv.labels.get("region").map(String::as_str),
        Some("eu-west")
    );

    let del = lattice
        .request::<()>(
            lattice.subjects.label_del(&host.id),
            &json!({"key": "region"}),
        )
        .await
        .unwrap();
    assert!(del.success);
    let changed = events.wait_for("labels_changed", |_| true).await.unwrap();
    assert!(changed.data["labels"].get("region").is_none());

    let builtin = lattice
        .request::<()>(
            lattice.subjects.label_put(&host.id),
            &json!({"key": "hostcore.os", "value": "plan9"}),
        )
        .await
        .unwrap();
    assert!(!builtin.success);
    assert!(
        builtin.message.contains("hostcore.os"),
        "{}",
        builtin.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_and_links_are_shared_and_survive_restart() {
    let nats = NatsServer::start().await;
    let mut a = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;

    let values: HashMap<String, String> =
        [("address".to_string(), "127.0.0.1:8080".to_string())].into();
    let put = lattice
        .request::<()>(lattice.subjects.config_put("http-cfg"), &values)
        .await
        .unwrap();
    assert!(put.success, "{}", put.message);
    events
        .wait_for("config_set", |d| d["config_name"] == "http-cfg")
        .await
        .unwrap();
    let got = lattice
        .request::<HashMap<String, String>>(lattice.subjects.config_get("http-cfg"), &json!({}))
        .await
        .unwrap();
    assert_eq!(got.response.as_ref(), Some(&values));

    let link = json!({
        "source_id": "httpserver", "target": "hello", "wit_namespace": "wasi",
        "wit_package": "http", "interfaces": ["incoming-handler"],
        "source_config": ["http-cfg"]
    });
    let put = lattice
        .request::<()>(lattice.subjects.link_put(), &link)
        .await
        .unwrap();
    assert!(put.success, "{}", put.message);
    events
        .wait_for("linkdef_set", |d| d["source_id"] == "httpserver")
        .await
        .unwrap();

    // A link naming a missing config is refused with a message naming it.
    let bad = lattice
        .request::<()>(
            lattice.subjects.link_put(),
            &json!({"source_id": "x", "target": "y", "wit_namespace": "wasi",
                    "wit_package": "keyvalue", "interfaces": ["store"],
                    "target_config": ["nope"]}),
        )
        .await
        .unwrap();
    assert!(!bad.success);
    assert!(bad.message.contains("nope"), "{}", bad.message);
    // Repointing an existing link to another target is refused.
    let conflict = lattice
        .request::<()>(
            lattice.subjects.link_put(),
            &json!({"source_id": "httpserver", "target": "other", "wit_namespace": "wasi",
                    "wit_package": "http", "interfaces": ["incoming-handler"]}),
        )
        .await
        .unwrap();
    assert!(!conflict.success);
    assert!(
        conflict.message.contains("already targets hello"),
        "{}",
        conflict.message
    );

    // A second host reads the same state; so does the first after a restart.
    let b = HostProcess::start(&nats.url(), "default", &[]).await;
    a.restart(&nats.url(), "default").await;
    drop(b);
    let links = lattice
        .request::<Vec<Link>>(lattice.subjects.link_get(), &json!({}))
        .await
        .unwrap()
        .response
        .unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].target, "hello");
    assert_eq!(links[0].name, "default");
    let got = lattice
        .request::<HashMap<String, String>>(lattice.subjects.config_get("http-cfg"), &json!({}))
        .await
        .unwrap();
    assert_eq!(got.response.as_ref(), Some(&values));

    // Delete both.
    let del = lattice
        .request::<()>(
            lattice.subjects.link_del(),
            &json!({"source_id": "httpserver", "wit_namespace": "wasi", "wit_package": "http"}),
        )
        .await
        .unwrap();
    assert!(del.success);
    events
        .wait_for("linkdef_deleted", |d| d["source_id"] == "httpserver")
        .await
        .unwrap();
    let del = lattice
        .request::<()>(lattice.subjects.config_del("http-cfg"), &json!({}))
        .await
        .unwrap();
    assert!(del.success);
    events
        .wait_for("config_deleted", |d| d["config_name"] == "http-cfg")
        .await
        .unwrap();
    let got = lattice
        .request::<HashMap<String, String>>(lattice.subjects.config_get("http-cfg"), &json!({}))
        .await
        .unwrap();
    assert!(got.success);
    assert!(got.response.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_clear_errors_and_the_host_keeps_answering() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let s = &lattice.subjects;
    let huge = vec![b'{'; 900 * 1024];
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (s.component_scale(&host.id), b"not json".to_vec(), "component.scale"),
        (s.component_scale(&host.id), br#"{"count": 1}"#.to_vec(), "component_id"),
        (s.component_scale(&host.id), br#"{"component_id": "a", "count": "three"}"#.to_vec(), "count"),
        (s.component_scale(&host.id), br#"{"component_id": "a", "count": 1}"#.to_vec(), "component_ref"),
        (s.component_scale(&host.id), br#"{"component_id": "a.b", "component_ref": "x", "count": 1}"#.to_vec(), "component_id"),
        (s.component_scale(&host.id), br#"{"component_id": "a", "component_ref": "x", "count": 1, "component_limits": {"max_memory_mb": "lots"}}"#.to_vec(), "max_memory_mb"),
        (s.label_put(&host.id), br#"{"key": "k"}"#.to_vec(), "value"),
        (s.link_put(), br#"{"source_id": "a", "target": "b"}"#.to_vec(), "wit_namespace"),
        (s.link_put(), br#"{"source_id": "a", "target": "b", "wit_namespace": "w", "wit_package": "p", "interfaces": []}"#.to_vec(), "interfaces"),
        (s.config_put("c"), br#"{"k": 5}"#.to_vec(), "k"),
        (s.config_put("c"), b"[1,2,3]".to_vec(), "config.put"),
        (s.component_update(&host.id), br#"{"component_id": "missing", "new_component_ref": "x"}"#.to_vec(), "not running"),
        (s.op(&format!("bogus.op.{}", host.id)), b"{}".to_vec(), "unknown control operation"),
        (s.component_scale(&host.id), huge, "at most"),
        (s.component_scale(&host.id), Vec::new(), "empty"),
    ];
    for (subject, body, needle) in cases {
        let reply = lattice
            .request_raw::<serde_json::Value>(subject.clone(), body)
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e:#}\n{}", host.logs()));
        assert!(!reply.success, "{subject} should fail");
        assert!(
            reply.message.contains(needle),
            "{subject}: message {:?} should mention {needle:?}",
            reply.message
        );
    }
    lattice.wait_for_host(&host.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn host_stop_publishes_host_stopped_and_exits_zero() {
    let nats = NatsServer::start().await;
    let mut host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;
    let ack = lattice
        .request::<()>(
            lattice.subjects.host_stop(&host.id),
            &json!({"host_id": host.id, "timeout": 2000}),
        )
        .await
        .unwrap();
    assert!(ack.success);
    let stopped = events.wait_for("host_stopped", |_| true).await.unwrap();
    assert_eq!(stopped.source, host.id);
    assert_eq!(host.wait_exit().await.unwrap(), Some(0), "{}", host.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly() {
    let nats = NatsServer::start().await;
    let mut host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;
    host.signal("TERM");
    events.wait_for("host_stopped", |_| true).await.unwrap();
    assert_eq!(host.wait_exit().await.unwrap(), Some(0), "{}", host.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn host_survives_a_nats_restart() {
    let mut nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": guest_ref("http_hello"), "component_id": "hello", "count": 1}),
        )
        .await
        .unwrap();
    assert!(ack.success);
    eventually("hello to run", || async {
        let inv = lattice
            .request::<HostInventory>(lattice.subjects.host_get(&host.id), &json!({}))
            .await
            .ok()?
            .response?;
        inv.components.iter().any(|c| c.id == "hello").then_some(())
    })
    .await;

    nats.restart().await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    lattice.wait_for_host(&host.id).await.unwrap();
    let inv = lattice
        .request::<HostInventory>(lattice.subjects.host_get(&host.id), &json!({}))
        .await
        .unwrap()
        .response
        .unwrap();
    assert!(
        inv.components.iter().any(|c| c.id == "hello"),
        "components kept running"
    );
    // Shared state still works after the restart.
    let put = lattice
        .request::<()>(
            lattice.subjects.config_put("after-restart"),
            &HashMap::from([("k".to_string(), "v".to_string())]),
        )
        .await
        .unwrap();
    assert!(put.success, "{}", put.message);
}

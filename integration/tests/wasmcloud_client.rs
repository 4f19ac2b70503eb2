//! Wire compatibility: the `wasmcloud-control-interface` crate from crates.io (the client
//! wasmCloud 1.x tooling uses) drives a Trellis host.

use std::collections::HashMap;
use std::time::Duration;

use trellis_integration::{guest, HostProcess, Lattice, NatsServer};

#[tokio::test(flavor = "multi_thread")]
async fn wasmcloud_control_interface_client_drives_a_trellis_host() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &["--label", "zone=a"]).await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let client = wasmcloud_control_interface::ClientBuilder::new(nc)
        .lattice("default")
        .timeout(Duration::from_secs(10))
        .auction_timeout(Duration::from_secs(1))
        .build();

    let hosts = client.get_hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    let h = hosts[0].data().unwrap();
    assert_eq!(h.id(), host.id);
    assert_eq!(h.labels().get("zone").map(String::as_str), Some("a"));

    let mut events = Lattice::connect(&nats.url(), "default")
        .await
        .events()
        .await;
    let image = format!("file://{}", guest("http_hello").display());
    let ack = client
        .scale_component(&host.id, &image, "hello", 2, None, vec![], false)
        .await
        .unwrap();
    assert!(ack.succeeded(), "{}", ack.message());
    events
        .wait_for("component_scaled", |d| d["component_id"] == "hello")
        .await
        .unwrap();
    let inv = client.get_host_inventory(&host.id).await.unwrap();
    let inv = inv.data().unwrap();
    assert_eq!(inv.components().len(), 1);
    assert_eq!(inv.components()[0].id(), "hello");
    assert_eq!(inv.components()[0].max_instances(), 2);

    let ack = client.put_label(&host.id, "region", "eu").await.unwrap();
    assert!(ack.succeeded(), "{}", ack.message());
    let ack = client
        .put_config("cfg", HashMap::from([("a".to_string(), "b".to_string())]))
        .await
        .unwrap();
    assert!(ack.succeeded(), "{}", ack.message());
    let cfg = client.get_config("cfg").await.unwrap();
    assert_eq!(
        cfg.data().and_then(|m| m.get("a")).map(String::as_str),
        Some("b")
    );

    let link = wasmcloud_control_interface::Link::builder()
        .source_id("httpserver")
        .target("hello")
        .name("default")
        .wit_namespace("wasi")
        .wit_package("http")
        .interfaces(vec!["incoming-handler".to_string()])
        .build()
        .unwrap();
    let ack = client.put_link(link).await.unwrap();
    assert!(ack.succeeded(), "{}", ack.message());
    let links = client.get_links().await.unwrap();
    assert_eq!(links.data().map(Vec::len), Some(1));

    let bids = client
        .perform_component_auction(
            &image,
            "other",
            std::collections::BTreeMap::from([("zone".to_string(), "a".to_string())]),
        )
        .await
        .unwrap();
    assert_eq!(bids.len(), 1);
    let no_bids = client
        .perform_component_auction(
            &image,
            "other",
            std::collections::BTreeMap::from([("zone".to_string(), "b".to_string())]),
        )
        .await
        .unwrap();
    assert!(no_bids.is_empty());

    let ack = client.stop_host(&host.id, Some(2000)).await.unwrap();
    assert!(ack.succeeded(), "{}", ack.message());
    events.wait_for("host_stopped", |_| true).await.unwrap();
}

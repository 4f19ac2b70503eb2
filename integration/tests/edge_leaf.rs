//! Edge sites: a host on a NATS leaf node whose server has its own JetStream domain, placed by
//! the hub's reconciler, reading the lattice's state from the hub's domain (`--js-domain`).
//! The hub goes away: the leaf host keeps serving, and a leaf host restarted meanwhile comes
//! back serving from its snapshot. The hub returns: one set of instances, status `deployed`,
//! and nothing restarted or re-placed while it stays that way.

use std::time::Duration;

use serde_json::json;
use trellis_integration::relay::Relay;
use trellis_integration::{
    eventually, free_port, http_ok, site_app_manifest, wadm_request, HostProcess, Lattice,
    NatsServer, WadmProcess, WAIT,
};
use trellis_protocol::ctl::HostInventory;
use trellis_protocol::nats::NatsAuth;

const LATTICE: &str = "edge";
const APP: &str = "shop";

fn manifest(address: &str) -> String {
    site_app_manifest(APP, "shop1", 2, address)
}

async fn inventory(lattice: &Lattice, host: &str) -> Option<HostInventory> {
    lattice
        .request::<HostInventory>(lattice.subjects.host_get(host), &json!({}))
        .await
        .ok()
        .and_then(|r| r.response)
}

async fn status(client: &async_nats::Client) -> String {
    let reply = wadm_request(client, LATTICE, "status", Some(APP), Vec::new()).await;
    reply["status"]["status"]["type"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until a message published on one server reaches a subscriber on the other: the leaf
/// connection is up.
async fn wait_for_leaf_connection(hub: &NatsServer, leaf: &NatsServer) {
    let hub_client = hub.client().await;
    let leaf_client = leaf.client().await;
    let mut sub = hub_client
        .subscribe("edge.leaf.probe")
        .await
        .expect("subscribe");
    hub_client.flush().await.expect("flush");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        leaf_client
            .publish("edge.leaf.probe", "ping".into())
            .await
            .expect("publish");
        leaf_client.flush().await.expect("flush");
        let heard = tokio::time::timeout(
            Duration::from_millis(200),
            futures::StreamExt::next(&mut sub),
        )
        .await;
        if matches!(heard, Ok(Some(_))) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leaf node did not join the hub within {WAIT:?}"
        );
    }
}

/// No flapping: over several reconcile passes the app stays deployed with one set of instances
/// on the site's host, serving, and nothing is started, stopped or re-scaled.
async fn assert_settled(hub_lattice: &Lattice, host_id: &str, address: &str) {
    let client = hub_lattice.client.clone();
    let mut events = hub_lattice.events().await;
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        assert_eq!(status(&client).await, "deployed");
        let now = inventory(hub_lattice, host_id).await.expect("inventory");
        assert_eq!(now.components.len(), 1, "{now:?}");
        assert_eq!(now.components[0].max_instances, 2, "{now:?}");
        assert_eq!(now.providers.len(), 1, "{now:?}");
        assert!(http_ok(address, "/").await.is_some());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let churn: Vec<String> = events
        .names_so_far(Duration::from_millis(200))
        .await
        .into_iter()
        .filter(|name| name.starts_with("provider_st") || name.starts_with("component_scale"))
        .collect();
    assert!(
        churn.is_empty(),
        "work was started, stopped or re-scaled after the site returned: {churn:?}"
    );
}

/// The site's host: on the leaf server, reading the lattice's state from the hub's domain,
/// with its identity and snapshot in `data_dir`, labelled `site=shop1`.
async fn start_site_host(leaf: &NatsServer, data_dir: &std::path::Path) -> HostProcess {
    let data = data_dir.display().to_string();
    HostProcess::start(
        &leaf.url(),
        LATTICE,
        &[
            "--js-domain",
            "hub",
            "--data-dir",
            &data,
            "--label",
            "site=shop1",
        ],
    )
    .await
}

fn hub_config(leaf_port: u16) -> String {
    format!("jetstream {{ domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n")
}

fn leaf_config(hub_leaf_port: u16) -> String {
    format!(
        "jetstream {{ domain: shop1 }}\nleafnodes {{ remotes = [ {{ url: \"nats-leaf://127.0.0.1:{hub_leaf_port}\" }} ] }}\n"
    )
}

async fn deploy(client: &async_nats::Client, address: &str) {
    let reply = wadm_request(client, LATTICE, "put", None, manifest(address).into_bytes()).await;
    assert_eq!(reply["result"], "created", "{reply}");
    let reply = wadm_request(client, LATTICE, "deploy", Some(APP), Vec::new()).await;
    assert_eq!(reply["result"], "acknowledged", "{reply}");
    eventually("the leaf host to serve the app", || http_ok(address, "/")).await;
    eventually("status deployed", || async {
        (status(client).await == "deployed").then_some(())
    })
    .await;
}

/// The leaf connection is cut while the hub and its reconciler stay up (a site's uplink
/// fails): the site keeps serving, the hub's status stops claiming the app is deployed, and
/// when the link is mended the lattice converges to the declared instances with nothing
/// restarted.
#[tokio::test(flavor = "multi_thread")]
async fn a_site_cut_off_from_its_hub_serves_and_rejoins_without_churn() {
    let leaf_port = free_port();
    let hub = NatsServer::start_with_config(&hub_config(leaf_port), NatsAuth::default()).await;
    let uplink = Relay::start(([127, 0, 0, 1], leaf_port).into()).await;
    let leaf =
        NatsServer::start_with_config(&leaf_config(uplink.port()), NatsAuth::default()).await;
    wait_for_leaf_connection(&hub, &leaf).await;

    let wadm = WadmProcess::start(&hub.url(), LATTICE, &[]);
    let hub_lattice = Lattice::connect(&hub.url(), LATTICE).await;
    wadm.wait_ready(&hub_lattice.client, LATTICE).await;
    let data_dir = tempfile::tempdir().expect("tempdir");
    let host = start_site_host(&leaf, data_dir.path()).await;
    let address = format!("127.0.0.1:{}", free_port());
    let client = hub_lattice.client.clone();
    deploy(&client, &address).await;

    uplink.cut();
    let cut_off = eventually(
        "the hub's status to stop claiming the cut-off site",
        || async {
            let now = status(&client).await;
            (now != "deployed").then_some(now)
        },
    )
    .await;
    for _ in 0..20 {
        assert!(
            http_ok(&address, "/").await.is_some(),
            "the site stopped serving while cut off (hub status {cut_off}):\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    uplink.mend();
    wait_for_leaf_connection(&hub, &leaf).await;
    eventually("status deployed after the site rejoined", || async {
        (status(&client).await == "deployed").then_some(())
    })
    .await;
    assert_settled(&hub_lattice, &host.id, &address).await;
    drop(wadm);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaf_host_serves_through_a_hub_outage_and_from_its_snapshot_after_a_restart() {
    let leaf_port = free_port();
    let mut hub = NatsServer::start_with_config(&hub_config(leaf_port), NatsAuth::default()).await;
    let leaf = NatsServer::start_with_config(&leaf_config(leaf_port), NatsAuth::default()).await;
    wait_for_leaf_connection(&hub, &leaf).await;

    let wadm = WadmProcess::start(&hub.url(), LATTICE, &[]);
    let hub_lattice = Lattice::connect(&hub.url(), LATTICE).await;
    wadm.wait_ready(&hub_lattice.client, LATTICE).await;

    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut host = start_site_host(&leaf, data_dir.path()).await;
    let leaf_lattice = Lattice::connect(&leaf.url(), LATTICE).await;

    let address = format!("127.0.0.1:{}", free_port());
    let client = hub_lattice.client.clone();
    deploy(&client, &address).await;

    // The lattice's state is the hub's: the link is in the hub's bucket, and the leaf's own
    // JetStream has no lattice buckets.
    let hub_js = async_nats::jetstream::new(hub.client().await);
    let links = hub_js
        .get_key_value(format!("LATTICEDATA_{LATTICE}"))
        .await
        .expect("the hub holds the lattice's links");
    let keys: Vec<String> =
        futures::StreamExt::collect::<Vec<_>>(links.keys().await.expect("keys"))
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
    assert!(!keys.is_empty(), "the link is stored in the hub's domain");
    let leaf_js = async_nats::jetstream::new(leaf.client().await);
    assert!(
        leaf_js
            .get_key_value(format!("LATTICEDATA_{LATTICE}"))
            .await
            .is_err(),
        "the leaf's own JetStream holds no lattice state"
    );

    // The hub goes away: the leaf keeps serving.
    hub.kill();
    for _ in 0..20 {
        assert!(
            http_ok(&address, "/").await.is_some(),
            "the leaf host stopped serving without its hub:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Restarted during the partition, it comes back serving from its snapshot.
    host.restart(&leaf.url(), LATTICE).await;
    eventually("the restarted leaf host to serve from its snapshot", || {
        http_ok(&address, "/")
    })
    .await;
    assert!(
        host.logs().contains("from this host's snapshot"),
        "the host says it replayed its snapshot:\n{}",
        host.logs()
    );
    let during = inventory(&leaf_lattice, &host.id).await.expect("inventory");
    assert_eq!(during.components.len(), 1, "{during:?}");
    assert_eq!(during.providers.len(), 1, "{during:?}");

    // The hub returns: the reconciler sees the work already in place.
    hub.restart().await;
    eventually("status deployed after the hub returned", || async {
        (status(&client).await == "deployed").then_some(())
    })
    .await;
    assert_settled(&hub_lattice, &host.id, &address).await;
    drop(wadm);
}

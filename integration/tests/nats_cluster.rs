//! The lattice on a NATS cluster: three nats-servers joined by routes, hosts and the reconciler
//! given all three URLs, every bucket made with three replicas (`--kv-replicas 3`). The server
//! the host is connected to is stopped while the app serves: the host fails over to another,
//! serving resumes, and nothing stored is lost (the counter goes on from where it was, the
//! app stays deployed).

use std::time::Instant;

use trellis_integration::{
    eventually, free_port, guest, http_get, wadm_request, HostProcess, Lattice, NatsServer,
    WadmProcess,
};
use trellis_protocol::nats::NatsAuth;

const LATTICE: &str = "cluster";

struct Member {
    server: NatsServer,
    monitor: u16,
}

async fn start_cluster() -> Vec<Member> {
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let monitors: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_urls = routes
        .iter()
        .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let configs: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "server_name: n{i}\nhttp: \"127.0.0.1:{}\"\ncluster {{\n  name: trellis\n  listen: \"127.0.0.1:{}\"\n  routes: [{route_urls}]\n}}\n",
                monitors[i], routes[i]
            )
        })
        .collect();
    // Together: JetStream answers only once a majority of the cluster is up.
    let (a, b, c) = tokio::join!(
        NatsServer::start_with_config(&configs[0], NatsAuth::default()),
        NatsServer::start_with_config(&configs[1], NatsAuth::default()),
        NatsServer::start_with_config(&configs[2], NatsAuth::default()),
    );
    [a, b, c]
        .into_iter()
        .zip(monitors)
        .map(|(server, monitor)| Member { server, monitor })
        .collect()
}

/// True when the server monitored on `port` holds a client connection named `name`.
async fn holds_connection(port: u16, name: &str) -> bool {
    let Some((200, body)) = http_get(&format!("127.0.0.1:{port}"), "/connz?limit=1024").await
    else {
        return false;
    };
    let Ok(connz) = serde_json::from_str::<serde_json::Value>(&body) else {
        return false;
    };
    connz["connections"]
        .as_array()
        .is_some_and(|all| all.iter().any(|c| c["name"] == name))
}

fn manifest(address: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: counter
spec:
  components:
    - name: counter
      type: component
      properties:
        image: file://{wasm}
      traits:
        - type: spreadscaler
          properties:
            instances: 4
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store, atomics, batch]
            target:
              name: kvnats
    - name: kvnats
      type: capability
      properties:
        image: ghcr.io/wasmcloud/keyvalue-nats:0.3.1
      traits:
        - type: spreadscaler
          properties:
            instances: 1
    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.0
      traits:
        - type: spreadscaler
          properties:
            instances: 1
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: counter
            source:
              config:
                - name: counter-http
                  properties:
                    address: {address}
"#,
        wasm = guest("http_keyvalue_counter").display()
    )
}

async fn visit(address: &str) -> Option<u64> {
    match http_get(address, "/visits").await {
        Some((200, body)) => body.trim().parse().ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_a_cluster_member_loses_nothing_and_serving_resumes() {
    let mut members = start_cluster().await;
    let urls = members
        .iter()
        .map(|m| m.server.url())
        .collect::<Vec<_>>()
        .join(",");

    let wadm = WadmProcess::start(&urls, LATTICE, &["--kv-replicas", "3"]);
    // The test fails over like the host does.
    let lattice = Lattice::connect(&urls, LATTICE).await;
    wadm.wait_ready(&lattice.client, LATTICE).await;
    let host = HostProcess::start(&urls, LATTICE, &["--kv-replicas", "3"]).await;

    let address = format!("127.0.0.1:{}", free_port());
    let client = lattice.client.clone();
    let reply = wadm_request(
        &client,
        LATTICE,
        "put",
        None,
        manifest(&address).into_bytes(),
    )
    .await;
    assert_eq!(reply["result"], "created", "{reply}");
    let reply = wadm_request(&client, LATTICE, "deploy", Some("counter"), Vec::new()).await;
    assert_eq!(reply["result"], "acknowledged", "{reply}");
    let first = eventually("the counter to answer", || visit(&address)).await;
    let mut last = first;
    for _ in 0..4 {
        let next = visit(&address).await.expect("a visit");
        assert_eq!(next, last + 1);
        last = next;
    }

    // Every bucket the lattice made has three replicas.
    let js = async_nats::jetstream::new(client.clone());
    let names: Vec<String> = futures::StreamExt::collect::<Vec<_>>(js.stream_names())
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    for wanted in [
        format!("KV_CONFIGDATA_{LATTICE}"),
        format!("KV_LATTICEDATA_{LATTICE}"),
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    assert!(
        names.len() >= 4,
        "manifests and counter buckets too: {names:?}"
    );
    for name in &names {
        let mut stream = js.get_stream(name).await.expect("stream");
        let info = stream.info().await.expect("stream info");
        assert_eq!(
            info.config.num_replicas, 3,
            "{name} has {} replicas",
            info.config.num_replicas
        );
    }

    // Stop the server the host is connected to, while requests run.
    let host_connection = format!("trellis-host {}", host.id);
    let victim = eventually("the host's server to be found", || async {
        for (i, member) in members.iter().enumerate() {
            if holds_connection(member.monitor, &host_connection).await {
                return Some(i);
            }
        }
        None
    })
    .await;
    members[victim].server.kill();
    let stopped = Instant::now();
    let resumed = eventually("serving to resume after the host's server stopped", || {
        visit(&address)
    })
    .await;
    let took = stopped.elapsed();
    eprintln!("serving resumed {took:?} after the host's NATS server was stopped");
    assert!(
        resumed > last,
        "the counter lost increments: {resumed} after {last}\nhost log:\n{}",
        host.logs()
    );
    let after = visit(&address).await.expect("a visit after failover");
    assert_eq!(after, resumed + 1);
    // The app is still known and deployed: the manifests bucket survived too.
    let status = eventually("the app's status", || async {
        let reply = wadm_request(&client, LATTICE, "status", Some("counter"), Vec::new()).await;
        let kind = reply["status"]["status"]["type"].as_str()?.to_string();
        (kind == "deployed").then_some(kind)
    })
    .await;
    assert_eq!(status, "deployed");
    drop(wadm);
}

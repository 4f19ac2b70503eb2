//! Hostile or oversized control input against a real `trellis host` and nats-server: every
//! bound answers with an error that names it, and the host stays alive, small and connected.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use trellis_integration::{
    eventually, guest_ref, trellis_bin, trellis_cli, HostProcess, Lattice, NatsServer, WAIT,
};
use trellis_protocol::ctl::{HostInventory, Link, LinkPage};
use trellis_protocol::subjects;

/// The host's resident memory in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// True when the host's log shows it lost its NATS connection.
fn lost_connection(host: &HostProcess) -> bool {
    host.logs().contains("lost the NATS connection")
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_zero_and_oversized_files_fail_to_scale_without_reading_them() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &["--max-component-size-mb", "1"]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;
    let rss_before = rss_kib(host.pid());

    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": "file:///dev/zero", "component_id": "zero", "count": 1}),
        )
        .await
        .unwrap();
    assert!(ack.success, "{}", ack.message);
    let failed = events
        .wait_for("component_scale_failed", |d| d["component_id"] == "zero")
        .await
        .unwrap();
    let error = failed.data["error"].as_str().unwrap();
    assert!(error.contains("/dev/zero is a device"), "{error}");
    assert!(error.contains("regular .wasm file"), "{error}");

    // A regular file over the cap (sparse: it costs no disk) is refused by its size.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.wasm");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(2 * 1024 * 1024)
        .unwrap();
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": format!("file://{}", big.display()),
                    "component_id": "big", "count": 1}),
        )
        .await
        .unwrap();
    assert!(ack.success, "{}", ack.message);
    let failed = events
        .wait_for("component_scale_failed", |d| d["component_id"] == "big")
        .await
        .unwrap();
    let error = failed.data["error"].as_str().unwrap();
    assert!(error.contains("2097152 bytes"), "{error}");
    assert!(error.contains("1048576-byte cap"), "{error}");
    assert!(error.contains("--max-component-size-mb"), "{error}");

    // A directory is refused too.
    let ack = lattice
        .request::<()>(
            lattice.subjects.component_scale(&host.id),
            &json!({"component_ref": format!("file://{}", dir.path().display()),
                    "component_id": "dir", "count": 1}),
        )
        .await
        .unwrap();
    assert!(ack.success);
    let failed = events
        .wait_for("component_scale_failed", |d| d["component_id"] == "dir")
        .await
        .unwrap();
    assert!(failed.data["error"]
        .as_str()
        .unwrap()
        .contains("is a directory"));

    // Still answering, and nothing was read: before the cap, /dev/zero took 2 GB in a second.
    lattice
        .wait_for_host(&host.id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", host.logs()));
    let rss_after = rss_kib(host.pid());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_labels_and_configs_are_refused_and_the_host_keeps_heartbeating() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;

    // Three 400 KB labels used to push heartbeats over 1 MiB.
    for i in 0..3 {
        let reply = lattice
            .request::<()>(
                lattice.subjects.label_put(&host.id),
                &json!({"key": format!("big{i}"), "value": "x".repeat(400 * 1024)}),
            )
            .await
            .unwrap();
        assert!(!reply.success);
        assert!(reply.message.starts_with("label.put:"), "{}", reply.message);
        assert!(
            reply.message.contains("limit is 1024 bytes"),
            "{}",
            reply.message
        );
    }
    let reply = lattice
        .request::<()>(
            lattice.subjects.label_put(&host.id),
            &json!({"key": "k".repeat(129), "value": "v"}),
        )
        .await
        .unwrap();
    assert!(!reply.success);
    assert!(
        reply.message.contains("limit is 128 bytes"),
        "{}",
        reply.message
    );

    // At most 64 user labels.
    for i in 0..64 {
        let reply = lattice
            .request::<()>(
                lattice.subjects.label_put(&host.id),
                &json!({"key": format!("label-{i}"), "value": "v"}),
            )
            .await
            .unwrap();
        assert!(reply.success, "label {i}: {}", reply.message);
    }
    let reply = lattice
        .request::<()>(
            lattice.subjects.label_put(&host.id),
            &json!({"key": "one-too-many", "value": "v"}),
        )
        .await
        .unwrap();
    assert!(!reply.success);
    assert!(reply.message.contains("(64)"), "{}", reply.message);
    // Changing an existing label is still fine.
    let reply = lattice
        .request::<()>(
            lattice.subjects.label_put(&host.id),
            &json!({"key": "label-0", "value": "changed"}),
        )
        .await
        .unwrap();
    assert!(reply.success, "{}", reply.message);

    // Config values and whole configs are bounded.
    let reply = lattice
        .request::<()>(
            lattice.subjects.config_put("big"),
            &json!({"blob": "x".repeat(65 * 1024)}),
        )
        .await
        .unwrap();
    assert!(!reply.success);
    assert!(reply.message.contains("65536"), "{}", reply.message);

    // The host is alive: it answers and keeps heartbeating with its (bounded) labels.
    let mut events = lattice.events().await;
    let beat = events
        .wait_for("host_heartbeat", |d| {
            d["host_id"] == host.id.as_str() && d["labels"]["label-0"] == "changed"
        })
        .await
        .unwrap();
    assert!(beat.data["labels"].get("big0").is_none());
    let pinged = lattice.wait_for_host(&host.id).await.unwrap();
    assert_eq!(
        pinged.labels.len(),
        64 + 3,
        "64 user labels and the built-in ones"
    );
    assert!(!lost_connection(&host), "{}", host.logs());

    // An oversized label at start-up stops the host before it joins, naming the limit.
    let long = format!("k={}", "v".repeat(2000));
    let start = tokio::process::Command::new(trellis_bin())
        .args(["host", "--nats-url", &nats.url(), "--label", &long])
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, start)
        .await
        .expect("the host with a bad label did not exit")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limit is 1024 bytes"), "{stderr}");
}

fn link(source: &str, target: &str, name: &str) -> serde_json::Value {
    json!({"source_id": source, "target": target, "name": name, "wit_namespace": "wasi",
           "wit_package": "keyvalue", "interfaces": ["store"]})
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_links_get_errors_and_the_connection_survives() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;

    // A 5,000-character source id used to build a KV subject over the server's 4 KB control
    // line: the server dropped the host's connection, ten times for ten requests.
    let long = "s".repeat(5000);
    for _ in 0..10 {
        let reply = lattice
            .request::<()>(
                lattice.subjects.link_put(),
                &link(&long, "target", "default"),
            )
            .await
            .unwrap();
        assert!(!reply.success);
        assert!(
            reply
                .message
                .contains("`source_id` is 5000 bytes long; the limit is 256 bytes"),
            "{}",
            reply.message
        );
    }
    let reply = lattice
        .request::<()>(
            lattice.subjects.link_del(),
            &json!({"source_id": long, "wit_namespace": "wasi", "wit_package": "keyvalue"}),
        )
        .await
        .unwrap();
    assert!(!reply.success);
    assert!(reply.message.starts_with("link.del:"), "{}", reply.message);

    // Self-links and wildcard link names are refused with a reason.
    let reply = lattice
        .request::<()>(lattice.subjects.link_put(), &link("a", "a", "default"))
        .await
        .unwrap();
    assert!(!reply.success);
    assert!(
        reply.message.contains("cannot link to itself"),
        "{}",
        reply.message
    );
    for name in ["*", ">"] {
        let reply = lattice
            .request::<()>(lattice.subjects.link_put(), &link("a", "b", name))
            .await
            .unwrap();
        assert!(!reply.success);
        assert!(reply.message.contains("wildcard"), "{}", reply.message);
    }

    // The same connection still works: a valid link is stored and listed.
    let reply = lattice
        .request::<()>(lattice.subjects.link_put(), &link("a", "b", "default"))
        .await
        .unwrap();
    assert!(reply.success, "{}", reply.message);
    let links = lattice
        .request::<Vec<Link>>(lattice.subjects.link_get(), &json!({}))
        .await
        .unwrap()
        .response
        .unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(
        (links[0].source_id.as_str(), links[0].target.as_str()),
        ("a", "b")
    );
    lattice.wait_for_host(&host.id).await.unwrap();
    assert!(!lost_connection(&host), "{}", host.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn link_get_pages_through_twenty_thousand_links() {
    const LINKS: usize = 20_000;
    let nats = NatsServer::start().await;
    // The links are in KV before the host starts: it loads them while it starts.
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let bucket = subjects::lattice_data_bucket("default");
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: bucket.clone(),
        history: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut acks = Vec::new();
    for i in 0..LINKS {
        let link: Link = serde_json::from_value(link(
            &format!("source-{i:05}"),
            &format!("target-{}", i % 7),
            "default",
        ))
        .unwrap();
        let subject = format!("$KV.{bucket}.{}", link.key().storage_key());
        let payload = serde_json::to_vec(&link).unwrap();
        acks.push(js.publish(subject, payload.into()).await.unwrap());
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }

    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;

    // Everything at once does not fit one message: the reply says how to page.
    let reply = lattice
        .request::<Vec<Link>>(lattice.subjects.link_get(), &json!({}))
        .await
        .unwrap();
    assert!(!reply.success);
    assert!(reply.message.contains("20000 links"), "{}", reply.message);
    assert!(
        reply.message.contains("{\"offset\":0}"),
        "{}",
        reply.message
    );
    // So does the empty body wasmCloud clients send.
    let reply = lattice
        .request_raw::<Vec<Link>>(lattice.subjects.link_get(), Vec::new())
        .await
        .unwrap();
    assert!(!reply.success);

    // Pages cover every link exactly once.
    let mut seen = BTreeSet::new();
    let mut offset = 0;
    let mut pages = 0;
    loop {
        let page = lattice
            .request::<LinkPage>(lattice.subjects.link_get(), &json!({"offset": offset}))
            .await
            .unwrap();
        assert!(page.success, "{}", page.message);
        let page = page.response.unwrap();
        assert_eq!(page.total, LINKS);
        assert_eq!(page.offset, offset);
        for l in page.links {
            assert!(seen.insert(l.source_id.clone()), "{} twice", l.source_id);
        }
        pages += 1;
        match page.next_offset {
            Some(next) => offset = next,
            None => break,
        }
    }
    assert_eq!(seen.len(), LINKS);
    assert!(pages > 1);
    let limited = lattice
        .request::<LinkPage>(
            lattice.subjects.link_get(),
            &json!({"offset": 100, "limit": 10}),
        )
        .await
        .unwrap()
        .response
        .unwrap();
    assert_eq!(limited.links.len(), 10);
    assert_eq!(limited.links[0].source_id, "source-00100");
    assert_eq!(limited.next_offset, Some(110));

    // A link put through the host joins them; the CLI pages by itself.
    let reply = lattice
        .request::<()>(
            lattice.subjects.link_put(),
            &link("zz-last", "b", "default"),
        )
        .await
        .unwrap();
    assert!(reply.success, "{}", reply.message);
    let data = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = trellis_cli(
        data.path(),
        &["get", "links", "-o", "json", "--nats-url", &nats.url()],
    )
    .await;
    assert!(ok, "{stderr}");
    let listed: Vec<Link> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.len(), LINKS + 1);
    assert!(listed.iter().any(|l| l.source_id == "zz-last"));
    lattice.wait_for_host(&host.id).await.unwrap();
    assert!(!lost_connection(&host), "{}", host.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inventory_too_big_for_one_message_is_summarised_and_paged() {
    // A small max_payload stands in for a host running thousands of components.
    let nats = NatsServer::start_with_max_payload(32 * 1024).await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let mut events = lattice.events().await;
    let image = guest_ref("http_hello");
    // Twelve annotations of 1000 bytes: 12 KB per component, three components.
    let annotations: serde_json::Map<String, serde_json::Value> = (0..12)
        .map(|i| (format!("note-{i}"), json!("n".repeat(1000))))
        .collect();
    for id in ["c1", "c2", "c3"] {
        let ack = lattice
            .request::<()>(
                lattice.subjects.component_scale(&host.id),
                &json!({"component_ref": image, "component_id": id, "count": 1,
                        "annotations": annotations}),
            )
            .await
            .unwrap();
        assert!(ack.success, "{}", ack.message);
        events
            .wait_for("component_scaled", |d| d["component_id"] == id)
            .await
            .unwrap();
    }

    // The heartbeat still goes out, with counts instead of lists.
    let beat = events
        .wait_for("host_heartbeat", |d| {
            d["host_id"] == host.id.as_str() && d["inventory_truncated"] == true
        })
        .await
        .unwrap();
    assert_eq!(beat.data["component_count"], 3);
    assert_eq!(beat.data["components"], json!([]));

    // host.get says how to page, pages fit, and the CLI pages by itself.
    let reply = lattice
        .request::<HostInventory>(lattice.subjects.host_get(&host.id), &json!({}))
        .await
        .unwrap();
    assert!(!reply.success);
    assert!(
        reply.message.contains("{\"offset\":0}"),
        "{}",
        reply.message
    );
    let page = lattice
        .request::<HostInventory>(lattice.subjects.host_get(&host.id), &json!({"offset": 0}))
        .await
        .unwrap()
        .response
        .unwrap();
    assert!(page.inventory_truncated);
    assert_eq!(page.component_count, Some(3));
    assert!(page.next_offset.is_some());
    let data = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = trellis_cli(
        data.path(),
        &[
            "get",
            "inventory",
            &host.id,
            "-o",
            "json",
            "--nats-url",
            &nats.url(),
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let inventory: HostInventory = serde_json::from_str(&stdout).unwrap();
    let mut ids: Vec<_> = inventory.components.iter().map(|c| c.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["c1", "c2", "c3"]);
    assert!(!inventory.inventory_truncated);

    // Heartbeats keep coming: the host is not taken for dead.
    events
        .wait_for("host_heartbeat", |d| d["host_id"] == host.id.as_str())
        .await
        .unwrap();
    eventually("the host to answer a ping", || async {
        lattice
            .ping(Duration::from_millis(300))
            .await
            .ok()?
            .into_iter()
            .find(|h| h.id == host.id)
    })
    .await;
}

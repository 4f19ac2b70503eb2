//! Messaging handlers anywhere, end to end: the messaging provider runs on host A, the
//! `messaging_handler` component only on other hosts; messages on the provider's
//! subscriptions reach the handler over the lattice, and each is handled exactly once when
//! two hosts run the handler.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::json;
use trellis_integration::{
    control_ok as ok, guest_ref, put_config, HostProcess, Lattice, NatsServer, WAIT,
};

async fn scale_handler(lattice: &Lattice, host: &HostProcess) {
    let mut events = lattice.events().await;
    ok(
        lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": guest_ref("messaging_handler"), "component_id": "handler",
               "count": 2, "config": ["handler-settings"]}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| {
            d["component_id"] == "handler" && d["host_id"] == host.id.as_str()
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
}

/// Sends requests on `subject` until one is answered (subscriptions start asynchronously).
async fn request_until_answered(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
    hosts: &[&HostProcess],
) -> String {
    let started = Instant::now();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(subject.to_string(), body.to_string().into()),
        )
        .await;
        if let Ok(Ok(reply)) = attempt {
            return String::from_utf8_lossy(&reply.payload).into_owned();
        }
        if started.elapsed() > WAIT {
            let logs: Vec<String> = hosts.iter().map(|h| h.logs()).collect();
            panic!(
                "no answer on {subject} within {WAIT:?}\nhost logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many of the host's log lines say the handler received a message on `subject`.
fn handled_on(host: &HostProcess, subject: &str) -> usize {
    host.logs()
        .lines()
        .filter(|l| l.contains("handler") && l.contains(&format!("bytes on {subject}")))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_on_other_hosts_gets_each_message_exactly_once() {
    let nats = NatsServer::start().await;
    let host_a = HostProcess::start(&nats.url(), "default", &[]).await;
    let host_b = HostProcess::start(&nats.url(), "default", &[]).await;
    let host_c = HostProcess::start(&nats.url(), "default", &[]).await;
    let hosts = [&host_a, &host_b, &host_c];
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let client = nats.client().await;

    put_config(
        &lattice,
        "handler-settings",
        &[("publish_subject", "anywhere.out")],
    )
    .await;
    put_config(&lattice, "subs", &[("subscriptions", "anywhere.echo")]).await;

    // The provider on A; the handler only on B.
    let mut events = lattice.events().await;
    ok(
        &lattice,
        lattice.subjects.provider_start(&host_a.id),
        json!({"provider_id": "messaging", "provider_ref": "ghcr.io/wasmcloud/messaging-nats:0.23.1"}),
    )
    .await;
    events
        .wait_for("provider_started", |d| d["provider_id"] == "messaging")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host_a.logs()));
    scale_handler(&lattice, &host_b).await;

    let mut republished = client.subscribe("anywhere.out").await.expect("subscribe");
    client.flush().await.expect("flush");
    ok(
        &lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "messaging", "target": "handler", "wit_namespace": "wasmcloud",
               "wit_package": "messaging", "interfaces": ["handler"],
               "source_config": ["subs"]}),
    )
    .await;

    // A request on the provider's subject is answered by the handler running on B.
    let answer = request_until_answered(&client, "anywhere.echo", "hello", &hosts).await;
    assert_eq!(answer, "reply: hello");
    assert!(
        handled_on(&host_b, "anywhere.echo") >= 1,
        "B's log shows no handled message:\n{}",
        host_b.logs()
    );
    assert_eq!(
        handled_on(&host_a, "anywhere.echo"),
        0,
        "A does not run the handler, yet logged one"
    );

    // A second handler host: every message is still handled exactly once.
    scale_handler(&lattice, &host_c).await;
    const COUNT: usize = 40;
    // Drain what the warm-up requests republished.
    let warmup_deadline = Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(warmup_deadline.into(), republished.next())
            .await
            .expect("the warm-up message was republished")
            .expect("subscription open");
        if msg.payload.as_ref() == b"HELLO" {
            break;
        }
    }
    for i in 0..COUNT {
        client
            .publish("anywhere.echo", format!("m-{i}").into())
            .await
            .expect("publish");
    }
    client
        .publish("anywhere.echo", "end".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");

    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + WAIT;
    let wanted: HashSet<String> = (0..COUNT).map(|i| format!("M-{i}")).collect();
    while !(wanted.iter().all(|w| seen.contains_key(w)) && seen.contains_key("END")) {
        let msg = tokio::time::timeout_at(deadline.into(), republished.next())
            .await
            .unwrap_or_else(|_| {
                let logs: Vec<String> = hosts.iter().map(|h| h.logs()).collect();
                panic!(
                    "not every message was handled within {WAIT:?}; saw {seen:?}\nhost logs:\n{}",
                    logs.join("\n-----\n")
                )
            })
            .expect("subscription open");
        *seen
            .entry(String::from_utf8_lossy(&msg.payload).into_owned())
            .or_default() += 1;
    }
    // Anything handled twice would have been republished twice: read on until a message
    // sent after all of them comes back.
    let answer = request_until_answered(&client, "anywhere.echo", "last", &hosts).await;
    assert_eq!(answer, "reply: last");
    while !seen.contains_key("LAST") {
        let msg = tokio::time::timeout_at(deadline.into(), republished.next())
            .await
            .unwrap_or_else(|_| panic!("`last` was answered but never republished; saw {seen:?}"))
            .expect("subscription open");
        *seen
            .entry(String::from_utf8_lossy(&msg.payload).into_owned())
            .or_default() += 1;
    }
    // Warm-up requests that timed out may have been handled late: they are not counted.
    seen.remove("HELLO");
    // (`last` is a request that may have been retried: only the published messages count.)
    let twice: Vec<_> = seen
        .iter()
        .filter(|(body, n)| **n > 1 && body.as_str() != "LAST")
        .collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(seen.len(), COUNT + 2, "{seen:?}");
    assert_eq!(
        handled_on(&host_a, "anywhere.echo"),
        0,
        "A does not run the handler, yet logged one"
    );
}

//! `wasmcloud:messaging` end to end: the messaging provider subscribes on behalf of the
//! `messaging_handler` component, which answers requests (through its `consumer` import) and
//! republishes to the subject in its config; link changes apply without a restart.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::json;
use trellis_integration::{
    control_ok as ok, guest, put_config, HostProcess, Lattice, NatsServer, WAIT,
};

async fn link_handler(lattice: &Lattice, source_config: &str) {
    ok(
        lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "messaging", "target": "handler", "wit_namespace": "wasmcloud",
               "wit_package": "messaging", "interfaces": ["handler"],
               "source_config": [source_config]}),
    )
    .await;
}

/// Sends requests on `subject` until one is answered (subscriptions start asynchronously).
async fn request_until_answered(
    client: &async_nats::Client,
    subject: &str,
    body: &str,
    host: &HostProcess,
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
        assert!(
            started.elapsed() < WAIT,
            "no answer on {subject} within {WAIT:?}\nhost log:\n{}",
            host.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// True once requests on `subject` find no subscriber.
async fn nobody_listens(client: &async_nats::Client, subject: &str) -> bool {
    let started = Instant::now();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(subject.to_string(), "ping".into()),
        )
        .await;
        if let Ok(Err(e)) = &attempt {
            if e.kind() == async_nats::client::RequestErrorKind::NoResponders {
                return true;
            }
        }
        if started.elapsed() > WAIT {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn handler_component_answers_requests_and_follows_link_changes() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "default", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "default").await;
    let client = nats.client().await;

    put_config(
        &lattice,
        "handler-settings",
        &[("publish_subject", "demo.out")],
    )
    .await;
    put_config(
        &lattice,
        "subs-echo",
        &[("subscriptions", "demo.echo, demo.echo2")],
    )
    .await;
    put_config(&lattice, "subs-other", &[("subscriptions", "demo.other")]).await;

    let mut events = lattice.events().await;
    ok(
        &lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": "messaging", "provider_ref": "ghcr.io/wasmcloud/messaging-nats:0.23.1"}),
    )
    .await;
    events
        .wait_for("provider_started", |d| d["provider_id"] == "messaging")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    let component_ref = format!("file://{}", guest("messaging_handler").display());
    ok(
        &lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": component_ref, "component_id": "handler", "count": 2,
               "config": ["handler-settings"]}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == "handler")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));

    let mut republished = client.subscribe("demo.out").await.expect("subscribe");
    client.flush().await.expect("flush");
    link_handler(&lattice, "subs-echo").await;

    let answer = request_until_answered(&client, "demo.echo", "hello", &host).await;
    assert_eq!(answer, "reply: hello");
    let answer = request_until_answered(&client, "demo.echo2", "second subject", &host).await;
    assert_eq!(answer, "reply: second subject");

    // Every handled message was also republished, upper-cased, on the configured subject.
    let mut seen = Vec::new();
    while !seen.iter().any(|s: &String| s == "SECOND SUBJECT") {
        let msg = tokio::time::timeout(WAIT, republished.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "nothing republished on demo.out; saw {seen:?}\nhost log:\n{}",
                    host.logs()
                )
            })
            .expect("subscription open");
        seen.push(String::from_utf8_lossy(&msg.payload).into_owned());
    }
    assert!(seen.iter().any(|s| s == "HELLO"), "{seen:?}");
    // The component's wasi:logging lines reach the host's log, tagged with its id.
    let logs = host.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("received 5 bytes on demo.echo") && l.contains("handler")),
        "no wasi:logging line in the host log:\n{logs}"
    );

    // Deleting the link stops delivery; a new link with other subscriptions starts it again,
    // all without restarting anything.
    ok(
        &lattice,
        lattice.subjects.link_del(),
        json!({"source_id": "messaging", "name": "default", "wit_namespace": "wasmcloud",
               "wit_package": "messaging"}),
    )
    .await;
    assert!(
        nobody_listens(&client, "demo.echo").await,
        "demo.echo is still subscribed"
    );
    link_handler(&lattice, "subs-other").await;
    let answer = request_until_answered(&client, "demo.other", "moved", &host).await;
    assert_eq!(answer, "reply: moved");
    assert!(
        nobody_listens(&client, "demo.echo").await,
        "the old subscription came back"
    );
}

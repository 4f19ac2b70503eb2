//! A host that is idle or cut off from NATS.
//!
//! An idle host costs the NATS server nothing new: once it has read its buckets it holds one
//! watch per bucket and creates no further JetStream consumers, however quiet (or empty) the
//! buckets are; it used to re-read both buckets and create consumers every 2 s. Consumer
//! creations are counted from nats-server's own JetStream advisories (which see a consumer made
//! and dropped between two samples), and the server's consumer and subscription counts are read
//! from its monitoring endpoint every second for 30 s. A host whose NATS server is gone still
//! exits on SIGTERM.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use trellis_integration::{HostProcess, NatsServer, WAIT};

/// How long the host is watched for new consumers once it has settled.
const QUIET_WINDOW: Duration = Duration::from_secs(30);

/// The server's JetStream consumers and client subscriptions, from its monitoring endpoint.
async fn counts(nats: &NatsServer) -> (u64, u64) {
    let jsz = nats.monitor("/jsz").await.expect("/jsz");
    let varz = nats.monitor("/varz").await.expect("/varz");
    (
        jsz["consumers"].as_u64().expect("/jsz consumers"),
        varz["subscriptions"].as_u64().expect("/varz subscriptions"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_host_with_empty_buckets_creates_no_consumers() {
    let nats = NatsServer::start_monitored().await;
    let lattice = "idle";
    let client = nats.client().await;
    let mut advisories = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.>")
        .await
        .expect("subscribe to advisories");
    client.flush().await.expect("flush");

    let host = HostProcess::start(&nats.url(), lattice, &[]).await;

    // Wait for the host's first consumers on both buckets.
    let streams = [
        format!("KV_CONFIGDATA_{lattice}"),
        format!("KV_LATTICEDATA_{lattice}"),
    ];
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while !streams.iter().all(|s| created.contains_key(s)) {
        let message = tokio::time::timeout_at(deadline.into(), advisories.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no consumer on both buckets within {WAIT:?}: {created:?}\nhost log:\n{}",
                    host.logs()
                )
            })
            .expect("subscription open");
        if let Some(stream) = stream_of(&message.subject) {
            *created.entry(stream).or_default() += 1;
        }
    }

    // The snapshot's key listing may still be creating its consumer as the window opens: the
    // counts are sampled once that advisory has come or a second has passed.
    let mut later: Vec<String> = Vec::new();
    let settle = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(message)) = tokio::time::timeout_at(settle, advisories.next()).await {
        if let Some(stream) = stream_of(&message.subject) {
            if streams.contains(&stream) {
                later.push(stream);
            }
        }
    }

    // From here on, nothing: count what arrives in the window, and sample the server's counts
    // every second.
    let first = counts(&nats).await;
    let mut samples = vec![first];
    let window_ends = tokio::time::Instant::now() + QUIET_WINDOW;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(window_ends) => break,
            _ = tick.tick() => samples.push(counts(&nats).await),
            message = advisories.next() => {
                let Some(message) = message else { break };
                if let Some(stream) = stream_of(&message.subject) {
                    if streams.contains(&stream) {
                        later.push(stream);
                    }
                }
            }
        }
    }
    assert!(
        samples.iter().all(|s| *s == first),
        "an idle host's consumers and subscriptions changed over {QUIET_WINDOW:?} (consumers, subscriptions): {samples:?}\nhost log:\n{}",
        host.logs()
    );
    assert!(
        first.0 <= 5,
        "an idle host holds {} JetStream consumers (at most 5 expected)",
        first.0
    );
    // The snapshot's key listing may still be creating its consumer as the window opens.
    assert!(
        later.len() <= streams.len(),
        "an idle host kept creating consumers: {later:?} within {QUIET_WINDOW:?} after {created:?}\nhost log:\n{}",
        host.logs()
    );
}

/// `$JS.EVENT.ADVISORY.CONSUMER.CREATED.{stream}.{consumer}` -> the stream.
fn stream_of(subject: &str) -> Option<String> {
    subject
        .strip_prefix("$JS.EVENT.ADVISORY.CONSUMER.CREATED.")
        .and_then(|rest| rest.split('.').next())
        .map(str::to_string)
}

/// A host whose NATS server is gone still stops on SIGTERM (as `systemctl stop` sends it) within
/// its stop timeout, rather than waiting for a server that may never come back.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_host_whose_nats_is_gone() {
    let mut nats = NatsServer::start().await;
    let mut host = HostProcess::start(&nats.url(), "cut-off", &[]).await;
    nats.kill();
    host.signal("TERM");
    let exited = host.wait_exit().await;
    assert!(
        exited.is_ok(),
        "the host was still running {WAIT:?} after SIGTERM: {exited:?}\nhost log:\n{}",
        host.logs()
    );
}

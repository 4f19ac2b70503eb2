//! The timer trigger end to end, with two hosts that both run the timer provider and the
//! `timer_counter` component: every tick fires exactly once across the lattice, failed calls
//! become `timer_tick_failed` events, and a handler still running makes the next tick skip
//! (reported as `timer_tick_skipped`) instead of piling calls up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use futures::StreamExt as _;
use serde_json::json;
use trellis_integration::{
    control_ok as ok, guest, put_config, EventStream, HostProcess, Lattice, NatsServer, WAIT,
};

const TICKS_SUBJECT: &str = "timer.ticks";
/// The named config the timer link reads.
const TIMER_CONFIG: &str = "timer-settings";

/// Which of the two hosts run what.
#[derive(Clone, Copy)]
struct Placement {
    /// Hosts running the timer provider (same provider id on each).
    provider: [bool; 2],
    /// Hosts running the counter component.
    component: [bool; 2],
}

/// Both hosts run the provider and the component.
const EVERYWHERE: Placement = Placement {
    provider: [true, true],
    component: [true, true],
};

/// Two hosts running the timer provider and the counter component as `placement` says.
async fn two_timer_hosts(
    nats: &NatsServer,
    lattice: &Lattice,
    placement: Placement,
) -> [HostProcess; 2] {
    let hosts = [
        HostProcess::start(&nats.url(), "default", &[]).await,
        HostProcess::start(&nats.url(), "default", &[]).await,
    ];
    put_config(
        lattice,
        "counter-settings",
        &[("publish_subject", TICKS_SUBJECT)],
    )
    .await;
    let component_ref = format!("file://{}", guest("timer_counter").display());
    // One command at a time: `wait_for` skips the events it is not waiting for.
    for (index, host) in hosts.iter().enumerate() {
        if placement.provider[index] {
            command_and_wait(
                lattice,
                lattice.subjects.provider_start(&host.id),
                json!({"provider_id": "timer", "provider_ref": "trellis+builtin://timer"}),
                ("provider_started", "provider_id", "timer", &host.id),
                &hosts,
            )
            .await;
        }
        if placement.component[index] {
            command_and_wait(
                lattice,
                lattice.subjects.component_scale(&host.id),
                json!({"component_ref": component_ref, "component_id": "counter", "count": 4,
                       "config": ["counter-settings"]}),
                ("component_scaled", "component_id", "counter", &host.id),
                &hosts,
            )
            .await;
        }
    }
    hosts
}

/// Sends a control command, then waits for its event: `(name, id field, id, host id)`.
async fn command_and_wait(
    lattice: &Lattice,
    subject: String,
    body: serde_json::Value,
    (event, field, id, host_id): (&str, &str, &str, &str),
    hosts: &[HostProcess],
) {
    let mut events = lattice.events().await;
    ok(lattice, subject, body).await;
    events
        .wait_for(event, |d| d[field] == id && d["host_id"] == host_id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(hosts)));
}

fn logs(hosts: &[HostProcess]) -> String {
    hosts
        .iter()
        .map(|h| format!("host {} log:\n{}", h.id, h.logs()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A lattice of two timer hosts with the timer linked to the counter.
struct Fixture {
    _nats: NatsServer,
    lattice: Lattice,
    client: async_nats::Client,
    hosts: [HostProcess; 2],
    /// What the counter publishes, from before the link.
    ticks: async_nats::Subscriber,
    /// Lattice events, from before the link.
    events: EventStream,
}

impl Fixture {
    /// Places the provider and component, then links the timer with link config
    /// `TIMER_CONFIG` = `settings`.
    async fn linked(placement: Placement, settings: &[(&str, &str)]) -> Self {
        let nats = NatsServer::start().await;
        let lattice = Lattice::connect(&nats.url(), "default").await;
        let client = nats.client().await;
        let hosts = two_timer_hosts(&nats, &lattice, placement).await;
        put_config(&lattice, TIMER_CONFIG, settings).await;
        let ticks = client.subscribe(TICKS_SUBJECT).await.expect("subscribe");
        let events = lattice.events().await;
        ok(
            &lattice,
            lattice.subjects.link_put(),
            json!({"source_id": "timer", "target": "counter", "wit_namespace": "trellis",
                   "wit_package": "timer", "interfaces": ["handler"],
                   "source_config": [TIMER_CONFIG]}),
        )
        .await;
        Self {
            _nats: nats,
            lattice,
            client,
            hosts,
            ticks,
            events,
        }
    }
}

/// Reads `tick <number> <scheduled-ms> <payload>` messages until `count` distinct ticks
/// arrived; returns how often each number was seen, and how late (ms after it was due) each
/// message arrived, in arrival order.
async fn collect_ticks(
    ticks: &mut async_nats::Subscriber,
    count: usize,
    hosts: &[HostProcess],
) -> (BTreeMap<u64, usize>, Vec<u64>) {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut lateness = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < count {
        let msg = tokio::time::timeout_at(deadline, ticks.next())
            .await
            .unwrap_or_else(|_| panic!("only {seen:?} ticks within {WAIT:?}\n{}", logs(hosts)))
            .expect("subscription open");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let mut fields = text.split(' ').skip(1).map(|n| n.parse::<u64>().ok());
        let (Some(Some(number)), Some(Some(scheduled_ms))) = (fields.next(), fields.next()) else {
            panic!("unexpected tick message `{text}`");
        };
        *seen.entry(number).or_default() += 1;
        lateness.push(now_ms.saturating_sub(scheduled_ms));
    }
    (seen, lateness)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tick_fires_once_across_two_hosts_and_failures_are_events() {
    let started = Instant::now();
    let Fixture {
        _nats,
        lattice,
        client,
        hosts,
        mut ticks,
        mut events,
    } = Fixture::linked(EVERYWHERE, &[("interval", "1s"), ("payload", "hello")]).await;

    // Eight ticks: none twice, none missing between the first and the last, none skipped.
    let (seen, mut lateness) = collect_ticks(&mut ticks, 8, &hosts).await;
    lateness.sort_unstable();
    eprintln!(
        "tick lateness (due -> the guest's message received): median {} ms, max {} ms",
        lateness[lateness.len() / 2],
        lateness[lateness.len() - 1]
    );
    let elapsed = started.elapsed();
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "ticks fired more than once: {doubled:?}"
    );
    let numbers: Vec<u64> = seen.keys().copied().collect();
    let (first, last) = (numbers[0], numbers[numbers.len() - 1]);
    assert_eq!(
        last - first + 1,
        numbers.len() as u64,
        "gaps in {numbers:?}"
    );
    eprintln!("8 ticks ({first}..={last}) in {elapsed:?}, each once");

    // Which host fired which tick: the claims bucket records it.
    let js = async_nats::jetstream::new(client.clone());
    let claims = js
        .get_key_value("TIMERS_default")
        .await
        .expect("claims bucket");
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    let mut keys = claims.keys().await.expect("keys");
    while let Some(Ok(key)) = keys.next().await {
        if let Ok(Some(value)) = claims.get(&key).await {
            let text = String::from_utf8_lossy(&value).into_owned();
            let host = text.split(' ').next().unwrap_or_default().to_string();
            *per_host.entry(host).or_default() += 1;
        }
    }
    eprintln!("claims per host: {per_host:?}");
    assert!(per_host
        .keys()
        .all(|h| hosts.iter().any(|host| &host.id == h)));

    // A failing handler: each failed tick is one event, from one host.
    put_config(
        &lattice,
        TIMER_CONFIG,
        &[("interval", "1s"), ("payload", "fail")],
    )
    .await;
    let mut failed = BTreeSet::new();
    while failed.len() < 3 {
        let event = events
            .wait_for("timer_tick_failed", |d| d["component_id"] == "counter")
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&hosts)));
        let tick = event.data["tick"].as_u64().expect("tick number");
        let reason = event.data["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("refused on purpose"), "{reason}");
        assert!(
            failed.insert(tick),
            "tick {tick} failed twice: reported by two hosts"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_handler_makes_ticks_skip_instead_of_piling_up() {
    // Each call takes 2.5 s, ticks come every second: with two hosts, some tick finds both
    // busy.
    // Bind every part: `..` would drop the NATS server (and so the lattice) right here.
    let Fixture {
        _nats,
        lattice: _lattice,
        client: _client,
        hosts,
        mut ticks,
        mut events,
    } = Fixture::linked(EVERYWHERE, &[("interval", "1s"), ("payload", "slow:2500")]).await;

    let skipped = events
        .wait_for("timer_tick_skipped", |d| d["component_id"] == "counter")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&hosts)));
    let skipped_tick = skipped.data["tick"].as_u64().expect("tick number");
    assert!(skipped.data["skipped_total"].as_u64() >= Some(1));
    // The skipped tick was not also fired elsewhere; the ones around it were fired once.
    let (fired, _) = collect_ticks(&mut ticks, 3, &hosts).await;
    assert!(
        !fired.contains_key(&skipped_tick),
        "tick {skipped_tick} both skipped and fired: {fired:?}"
    );
    assert!(fired.values().all(|n| *n == 1), "{fired:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ticks_reach_a_component_on_another_host_over_the_lattice() {
    // The provider runs on the first host only, the component on the second only: every
    // tick is an on-tick call over the lattice, its params in the lattice codec.
    let Fixture {
        _nats,
        lattice: _lattice,
        client: _client,
        hosts,
        mut ticks,
        events: _events,
    } = Fixture::linked(
        Placement {
            provider: [true, false],
            component: [false, true],
        },
        &[("interval", "1s"), ("payload", "remote")],
    )
    .await;
    let (seen, _) = collect_ticks(&mut ticks, 3, &hosts).await;
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    let numbers: Vec<u64> = seen.keys().copied().collect();
    assert_eq!(numbers[2] - numbers[0], 2, "gaps in {numbers:?}");
}

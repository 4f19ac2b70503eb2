use std::time::{Duration, Instant};

use serde_json::json;
use trellis_protocol::events::{names, CloudEvent};

use crate::lattice::{Expected, FailureKey, LatticeState, DEFAULT_SILENT_AFTER, PENDING_TIMEOUT};

fn heartbeat(host: &str, components: serde_json::Value) -> CloudEvent {
    CloudEvent::new(
        names::HOST_HEARTBEAT,
        host,
        json!({"host_id": host, "labels": {"zone": "a"}, "components": components, "providers": []}),
    )
}

#[test]
fn heartbeat_adds_hosts_and_replaces_inventory() {
    let now = Instant::now();
    let mut l = LatticeState::default();
    assert!(l.apply_event(
        &heartbeat(
            "H",
            json!([{"id": "c", "image_ref": "x", "max_instances": 2}])
        ),
        now
    ));
    assert_eq!(l.hosts["H"].labels["zone"], "a");
    assert_eq!(l.hosts["H"].components["c"].count, 2);
    // The same heartbeat again changes nothing, so it does not trigger a pass.
    assert!(!l.apply_event(
        &heartbeat(
            "H",
            json!([{"id": "c", "image_ref": "x", "max_instances": 2}])
        ),
        now
    ));
    assert!(l.apply_event(&heartbeat("H", json!([])), now));
    assert!(l.hosts["H"].components.is_empty());
}

#[test]
fn an_acknowledged_command_counts_only_once_the_host_confirms_it() {
    let now = Instant::now();
    let mut l = LatticeState::default();
    l.apply_event(&heartbeat("H", json!([])), now);
    let expected = Expected::Component {
        image_ref: "x".into(),
        count: 1,
    };
    l.mark_pending("H", "c", expected.clone(), now);
    assert!(
        l.hosts["H"].components.is_empty(),
        "an acknowledgement is not taken for the outcome"
    );
    // A heartbeat sent before the host finished says nothing new: still pending.
    l.apply_event(&heartbeat("H", json!([])), now);
    assert!(l.is_pending("H", "c", now));
    assert_eq!(l.intended_count(&l.hosts["H"], "c", now), 1);
    // The event confirms it.
    let scaled = CloudEvent::new(
        names::COMPONENT_SCALED,
        "H",
        json!({"component_id": "c", "image_ref": "x", "host_id": "H", "max_instances": 1}),
    );
    l.apply_event(&scaled, now);
    assert!(!l.is_pending("H", "c", now));
    assert_eq!(l.hosts["H"].components["c"].count, 1);

    // Without the event, an inventory showing the outcome confirms it too.
    l.mark_pending(
        "H",
        "c",
        Expected::Component {
            image_ref: "x".into(),
            count: 3,
        },
        now,
    );
    l.apply_event(
        &heartbeat(
            "H",
            json!([{"id": "c", "image_ref": "x", "max_instances": 1}]),
        ),
        now,
    );
    assert!(l.is_pending("H", "c", now), "count 1 is not the 3 expected");
    l.apply_event(
        &heartbeat(
            "H",
            json!([{"id": "c", "image_ref": "x", "max_instances": 3}]),
        ),
        now,
    );
    assert!(!l.is_pending("H", "c", now));

    // An unconfirmed command expires, so the planner issues it again.
    l.mark_pending("H", "d", expected, now);
    l.expire(
        now + PENDING_TIMEOUT + Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    assert!(!l.is_pending("H", "d", now + PENDING_TIMEOUT + Duration::from_secs(1)));
}

#[test]
fn a_host_is_silent_after_the_threshold() {
    let now = Instant::now();
    let mut l = LatticeState::default();
    l.apply_event(&heartbeat("H", json!([])), now);
    let host = l.hosts["H"].clone();
    assert_eq!(l.silence(&host, now + Duration::from_secs(1)), None);
    assert_eq!(
        l.silence(&host, now + DEFAULT_SILENT_AFTER + Duration::from_secs(1)),
        Some(DEFAULT_SILENT_AFTER + Duration::from_secs(1))
    );
}

#[test]
fn host_stopped_and_silence_remove_hosts() {
    let now = Instant::now();
    let mut l = LatticeState::default();
    l.apply_event(&heartbeat("A", json!([])), now);
    l.apply_event(&heartbeat("B", json!([])), now);
    l.apply_event(&CloudEvent::new(names::HOST_STOPPED, "A", json!({})), now);
    assert!(!l.hosts.contains_key("A"));
    assert!(l
        .expire(now + Duration::from_secs(5), Duration::from_secs(6))
        .is_empty());
    assert_eq!(
        l.expire(now + Duration::from_secs(7), Duration::from_secs(6)),
        vec!["B".to_string()]
    );
}

#[test]
fn scale_failure_is_recorded_with_the_hosts_error() {
    let now = Instant::now();
    let mut l = LatticeState::default();
    l.apply_event(&heartbeat("H", json!([])), now);
    let failed = CloudEvent::new(
        names::COMPONENT_SCALE_FAILED,
        "H",
        json!({"component_id": "c", "image_ref": "x", "host_id": "H", "max_instances": 1, "error": "file not found"}),
    );
    l.apply_event(&failed, now);
    let f = &l.failures[&FailureKey::Workload {
        host_id: "H".into(),
        id: "c".into(),
    }];
    assert_eq!(f.error, "file not found");
    assert_eq!(f.attempts, 1);
    assert!(f.retry_at > now);
}

#[test]
fn links_follow_events_and_deleted_configs_are_forgotten() {
    let now = Instant::now();
    let mut l = LatticeState::default();
    let link = json!({"source_id": "s", "target": "t", "name": "default", "wit_namespace": "wasi",
        "wit_package": "http", "interfaces": ["incoming-handler"]});
    l.apply_event(&CloudEvent::new(names::LINKDEF_SET, "H", link), now);
    assert_eq!(l.links.len(), 1);
    l.apply_event(
        &CloudEvent::new(
            names::LINKDEF_DELETED,
            "H",
            json!({"source_id": "s", "name": "default", "wit_namespace": "wasi", "wit_package": "http"}),
        ),
        now,
    );
    assert!(l.links.is_empty());
    l.applied_configs
        .insert("app-cfg".into(), Default::default());
    l.apply_event(
        &CloudEvent::new(
            names::CONFIG_DELETED,
            "H",
            json!({"config_name": "app-cfg"}),
        ),
        now,
    );
    assert!(l.applied_configs.is_empty());
}

#[test]
fn a_truncated_heartbeat_keeps_the_host_alive_and_its_known_inventory() {
    let t0 = Instant::now();
    let mut l = LatticeState::default();
    l.apply_event(
        &heartbeat(
            "H",
            json!([{"id": "c", "image_ref": "x", "max_instances": 2}]),
        ),
        t0,
    );
    // The inventory grew past one NATS message: the host sends counts, not lists.
    let later = t0 + Duration::from_secs(30);
    let truncated = CloudEvent::new(
        names::HOST_HEARTBEAT,
        "H",
        json!({"host_id": "H", "labels": {"zone": "b"}, "components": [], "providers": [],
               "inventory_truncated": true, "component_count": 5000, "provider_count": 0}),
    );
    assert!(l.apply_event(&truncated, later), "the label change matters");
    let host = &l.hosts["H"];
    assert_eq!(host.last_seen, later, "the heartbeat proves the host alive");
    assert_eq!(host.labels["zone"], "b");
    assert_eq!(host.components["c"].count, 2, "what was confirmed is kept");
    assert!(
        !l.apply_event(&truncated, later),
        "nothing new the second time"
    );
    // Not expired: it was heard from just now.
    assert!(l
        .expire(later + Duration::from_secs(1), Duration::from_secs(6))
        .is_empty());
}

#[test]
fn a_host_is_probed_once_it_misses_a_heartbeat_and_not_more_often_than_the_limit() {
    let start = Instant::now();
    let mut l = LatticeState::default();
    let at = |ms: u64| start + Duration::from_millis(ms);
    // Heartbeats every 2 s.
    for t in [0, 2000, 4000] {
        l.apply_event(&heartbeat("H", json!([])), at(t));
    }
    let fallback = Duration::from_secs(3);
    let host = l.hosts["H"].clone();
    assert_eq!(host.heartbeat_gap, Some(Duration::from_secs(2)));
    assert!(!host.probe_due(at(6000), fallback), "on time: no probe");
    assert!(host.probe_due(at(6600), fallback), "a quarter late: probe");

    let mut probed = host.clone();
    probed.last_probe = Some(at(6600));
    assert!(!probed.probe_due(at(6900), fallback), "not again so soon");
    assert!(probed.probe_due(at(7100), fallback));
    // A host that let a probe time out (frozen) is asked again only after twice as long.
    probed.probe_misses = 1;
    assert!(!probed.probe_due(at(7500), fallback));
    assert!(probed.probe_due(at(7600), fallback));

    // A host heard from only once is probed after the fallback.
    let mut l = LatticeState::default();
    l.apply_event(&heartbeat("N", json!([])), at(0));
    let new = l.hosts["N"].clone();
    assert!(!new.probe_due(at(2900), fallback));
    assert!(new.probe_due(at(3100), fallback));

    // A host the lattice says is gone is forgotten at once.
    l.declare_gone("N");
    assert!(!l.hosts.contains_key("N"));
}

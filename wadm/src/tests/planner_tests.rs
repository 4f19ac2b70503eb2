use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use trellis_protocol::ctl::{DeleteLinkRequest, Link};

use crate::api::types::{ScalerStatus, Status, StatusInfo, StatusType};
use crate::lattice::{
    Expected, FailureKey, LatticeState, ObservedComponent, ObservedHost, ObservedProvider,
    APPSPEC_ANNOTATION, MANAGED_BY_ANNOTATION,
};
use crate::model::{parse_manifest, Manifest, Spread};
use crate::planner::{distribute, plan, spread_counts, AppView, Command};

fn spread(name: &str, weight: Option<u32>) -> Spread {
    Spread {
        name: name.to_string(),
        requirements: BTreeMap::new(),
        weight,
    }
}

#[test]
fn spread_math_weights_80_20() {
    let spreads = [spread("small", Some(20)), spread("big", Some(80))];
    // Sorted heaviest first: index 1 (80) then index 0 (20).
    assert_eq!(spread_counts(10, &spreads), vec![(1, 8), (0, 2)]);
}

#[test]
fn spread_math_remainder_goes_from_the_first() {
    let spreads = [spread("a", None), spread("b", None), spread("c", None)];
    assert_eq!(spread_counts(10, &spreads), vec![(0, 4), (1, 3), (2, 3)]);
    assert_eq!(spread_counts(2, &spreads), vec![(0, 1), (1, 1), (2, 0)]);
    let spreads = [
        spread("a", Some(50)),
        spread("b", Some(30)),
        spread("c", Some(20)),
    ];
    // 7*50/100=3, 7*30/100=2, 7*20/100=1 -> remainder 1 to the heaviest.
    assert_eq!(spread_counts(7, &spreads), vec![(0, 4), (1, 2), (2, 1)]);
}

#[test]
fn distribute_splits_evenly_larger_first() {
    assert_eq!(
        distribute(10, &["h1", "h2", "h3"]),
        vec![("h1".into(), 4), ("h2".into(), 3), ("h3".into(), 3)]
    );
    assert_eq!(distribute(1, &["h1", "h2"]), vec![("h1".into(), 1)]);
    assert!(distribute(3, &[]).is_empty());
}

fn host(id: &str, labels: &[(&str, &str)], now: Instant) -> ObservedHost {
    ObservedHost::new(
        id,
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        now,
    )
}

fn lattice_with(hosts: Vec<ObservedHost>) -> LatticeState {
    let mut l = LatticeState::default();
    for h in hosts {
        l.hosts.insert(h.id.clone(), h);
    }
    l
}

fn app(yaml: &str) -> Manifest {
    match parse_manifest(yaml.as_bytes()) {
        Ok(p) => p.manifest,
        Err(e) => panic!("test manifest invalid: {e}"),
    }
}

fn deployed(m: &Manifest) -> AppView {
    AppView {
        name: m.name().to_string(),
        deployed: Some(m.clone()),
        versions: vec![m.clone()],
    }
}

fn owned(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_ANNOTATION.to_string(), "wadm".to_string()),
        (APPSPEC_ANNOTATION.to_string(), app.to_string()),
    ])
}

fn scales(cmds: &[Command]) -> Vec<(String, String, u32, String)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ScaleComponent(s) => Some((
                s.host_id.clone(),
                s.component_id.clone(),
                s.max_instances,
                s.component_ref.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// Pretends every command took effect, as confirmed by the hosts.
fn apply_all(l: &mut LatticeState, cmds: &[Command]) {
    for c in cmds {
        match c {
            Command::PutConfig { name, values } => {
                l.applied_configs.insert(name.clone(), values.clone());
            }
            Command::DeleteConfig { name } => {
                l.applied_configs.remove(name);
            }
            Command::ScaleComponent(s) => l.set_component(
                &s.host_id,
                &s.component_id,
                Some(ObservedComponent {
                    image_ref: s.component_ref.clone(),
                    count: s.max_instances,
                    annotations: s.annotations.clone().unwrap_or_default(),
                }),
            ),
            Command::StartProvider(p) => l.set_provider(
                &p.host_id,
                &p.provider_id,
                Some(ObservedProvider {
                    image_ref: p.provider_ref.clone(),
                    annotations: p.annotations.clone().unwrap_or_default(),
                }),
            ),
            Command::StopProvider(p) => l.set_provider(&p.host_id, &p.provider_id, None),
            Command::PutLink(link) => {
                l.links.insert(link.key(), link.clone());
            }
            Command::DeleteLink(d) => {
                l.links.remove(&d.key());
            }
        }
    }
}

const WEIGHTED: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata: {name: web}
spec:
  components:
    - name: api
      type: component
      properties: {image: "file:///api.wasm"}
      traits:
        - type: spreadscaler
          properties:
            instances: 10
            spread:
              - {name: east, requirements: {zone: east}, weight: 80}
              - {name: west, requirements: {zone: west}, weight: 20}
"#;

#[test]
fn weighted_spread_places_8_and_2_then_converges() {
    let now = Instant::now();
    let mut l = lattice_with(vec![
        host("E1", &[("zone", "east")], now),
        host("W1", &[("zone", "west")], now),
    ]);
    let m = app(WEIGHTED);
    let p = plan(&[deployed(&m)], &l, now);
    let mut got = scales(&p.commands);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("E1".into(), "web-api".into(), 8, "file:///api.wasm".into()),
            ("W1".into(), "web-api".into(), 2, "file:///api.wasm".into()),
        ]
    );
    assert_eq!(
        p.statuses["web"].status.status_type,
        StatusType::Reconciling
    );
    if let Command::ScaleComponent(s) = &p.commands[0] {
        assert_eq!(
            s.annotations
                .as_ref()
                .map(|a| a[APPSPEC_ANNOTATION].clone()),
            Some("web".into())
        );
    }
    apply_all(&mut l, &p.commands);
    let p2 = plan(&[deployed(&m)], &l, now);
    assert!(p2.commands.is_empty(), "{:?}", p2.commands);
    assert_eq!(p2.statuses["web"].status.status_type, StatusType::Deployed);
}

#[test]
fn no_eligible_host_is_waiting_with_the_reason() {
    let now = Instant::now();
    let l = lattice_with(vec![host("E1", &[("zone", "east")], now)]);
    let p = plan(&[deployed(&app(WEIGHTED))], &l, now);
    let status = &p.statuses["web"];
    assert_eq!(status.status.status_type, StatusType::Waiting);
    assert!(
        status
            .status
            .message
            .contains("no host matches spread `west` (zone=west)"),
        "{}",
        status.status.message
    );
    // The east part is still placed.
    assert_eq!(
        scales(&p.commands),
        vec![("E1".into(), "web-api".into(), 8, "file:///api.wasm".into())]
    );
}

const DAEMON: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata: {name: d}
spec:
  components:
    - name: worker
      type: component
      properties: {image: w}
      traits:
        - type: daemonscaler
          properties:
            instances: 3
            spread:
              - {name: edge, requirements: {role: edge}}
    - name: prov
      type: capability
      properties: {image: "ghcr.io/wasmcloud/http-server:0.23.0"}
      traits:
        - type: daemonscaler
          properties: {instances: 1}
"#;

#[test]
fn daemonscaler_places_on_every_eligible_host() {
    let now = Instant::now();
    let l = lattice_with(vec![
        host("A", &[("role", "edge")], now),
        host("B", &[("role", "core")], now),
        host("C", &[("role", "edge")], now),
    ]);
    let p = plan(&[deployed(&app(DAEMON))], &l, now);
    let mut got = scales(&p.commands);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("A".into(), "d-worker".into(), 3, "w".into()),
            ("C".into(), "d-worker".into(), 3, "w".into())
        ]
    );
    let mut providers: Vec<String> = p
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::StartProvider(s) => Some(s.host_id.clone()),
            _ => None,
        })
        .collect();
    providers.sort();
    assert_eq!(providers, vec!["A", "B", "C"]);
}

#[test]
fn status_is_the_worst_of_the_scalers() {
    let s = |t: StatusType| ScalerStatus {
        id: format!("{t:?}"),
        kind: "SpreadScaler".into(),
        name: format!("{t:?}"),
        status: StatusInfo::new(t, format!("{t:?} msg")),
    };
    use StatusType::*;
    let order = [
        Deployed,
        Unhealthy,
        Reconciling,
        Waiting,
        Undeployed,
        Failed,
    ];
    for (i, worst) in order.iter().enumerate() {
        let scalers: Vec<ScalerStatus> = order[..=i].iter().map(|t| s(*t)).collect();
        let agg = Status::aggregate(scalers);
        assert_eq!(agg.status.status_type, *worst);
    }
    assert_eq!(Status::aggregate(Vec::new()).status.status_type, Deployed);
    let agg = Status::aggregate(vec![s(Deployed), s(Failed)]);
    assert!(agg.status.message.contains("Failed msg"));
}

const V1: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata: {name: shop, annotations: {version: v1}}
spec:
  components:
    - name: front
      type: component
      properties:
        image: front:1
        config:
          - {name: settings, properties: {color: blue}}
      traits:
        - type: spreadscaler
          properties: {instances: 2}
    - name: old
      type: component
      properties: {image: old:1}
      traits:
        - type: spreadscaler
          properties: {instances: 1}
    - name: http
      type: capability
      properties: {image: "ghcr.io/wasmcloud/http-server:0.23.0"}
      traits:
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target: {name: front}
            source:
              config:
                - {name: listen, properties: {address: "127.0.0.1:8080"}}
"#;

#[test]
fn upgrade_v1_to_v2_issues_exactly_the_difference() {
    let now = Instant::now();
    let mut l = lattice_with(vec![host("H", &[], now)]);
    let v1 = app(V1);
    let p1 = plan(&[deployed(&v1)], &l, now);
    apply_all(&mut l, &p1.commands);
    assert!(plan(&[deployed(&v1)], &l, now).commands.is_empty());

    let v2 = app(&V1
        .replace("version: v1", "version: v2")
        .replace("front:1", "front:2")
        .replace("color: blue", "color: red")
        .replace("127.0.0.1:8080", "127.0.0.1:9090")
        .replace(
            "    - name: old\n      type: component\n      properties: {image: old:1}\n      traits:\n        - type: spreadscaler\n          properties: {instances: 1}\n",
            "",
        ));
    let view = AppView {
        name: "shop".into(),
        deployed: Some(v2.clone()),
        versions: vec![v1.clone(), v2.clone()],
    };
    // First pass: new work only; the removed component waits until the new version converged.
    let p2 = plan(std::slice::from_ref(&view), &l, now);
    let http_link = Link {
        source_id: "shop-http".into(),
        target: "shop-front".into(),
        name: "default".into(),
        wit_namespace: "wasi".into(),
        wit_package: "http".into(),
        interfaces: vec!["incoming-handler".into()],
        source_config: vec!["shop-listen".into()],
        target_config: vec![],
    };
    let expected_first = [
        Command::PutConfig {
            name: "shop-listen".into(),
            values: BTreeMap::from([("address".into(), "127.0.0.1:9090".into())]),
        },
        Command::PutConfig {
            name: "shop-settings".into(),
            values: BTreeMap::from([("color".into(), "red".into())]),
        },
    ];
    assert_eq!(p2.commands[..2], expected_first[..]);
    assert_eq!(
        scales(&p2.commands),
        vec![("H".into(), "shop-front".into(), 2, "front:2".into())]
    );
    assert_eq!(
        p2.commands.last(),
        Some(&Command::PutLink(http_link.clone()))
    );
    assert_eq!(p2.commands.len(), 4, "{:?}", p2.commands);
    assert_ne!(p2.statuses["shop"].status.status_type, StatusType::Deployed);

    // Second pass: the obsolete component is stopped, and nothing else.
    apply_all(&mut l, &p2.commands);
    let p3 = plan(std::slice::from_ref(&view), &l, now);
    assert_eq!(
        scales(&p3.commands),
        vec![("H".into(), "shop-old".into(), 0, "old:1".into())]
    );
    assert_eq!(p3.commands.len(), 1, "{:?}", p3.commands);
    apply_all(&mut l, &p3.commands);
    let p4 = plan(&[view], &l, now);
    assert!(p4.commands.is_empty(), "{:?}", p4.commands);
    assert_eq!(p4.statuses["shop"].status.status_type, StatusType::Deployed);
}

#[test]
fn undeploy_stops_only_what_the_app_owns_and_keeps_shared_providers() {
    let now = Instant::now();
    let mut l = lattice_with(vec![host("H", &[], now)]);
    let shared = |name: &str| {
        app(&format!(
            "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {{name: {name}}}\nspec:\n  components:\n    - name: http\n      type: capability\n      properties: {{image: \"ghcr.io/wasmcloud/http-server:0.23.0\", id: shared-http}}\n    - name: c\n      type: component\n      properties: {{image: \"{name}.wasm\"}}\n      traits:\n        - type: spreadscaler\n          properties: {{instances: 1}}\n"
        ))
    };
    let a = shared("appa");
    let b = shared("appb");
    let p = plan(&[deployed(&a), deployed(&b)], &l, now);
    apply_all(&mut l, &p.commands);
    // Something started by hand, not by the reconciler.
    l.set_component(
        "H",
        "manual",
        Some(ObservedComponent {
            image_ref: "m.wasm".into(),
            count: 1,
            annotations: BTreeMap::new(),
        }),
    );
    let a_undeployed = AppView {
        name: "appa".into(),
        deployed: None,
        versions: vec![a.clone()],
    };
    let p = plan(&[a_undeployed.clone(), deployed(&b)], &l, now);
    assert_eq!(
        p.commands,
        vec![Command::ScaleComponent(
            trellis_protocol::ctl::ScaleComponentCommand {
                component_ref: "appa.wasm".into(),
                component_id: "appa-c".into(),
                annotations: Some(owned("appa")),
                max_instances: 0,
                component_limits: None,
                host_id: "H".into(),
                config: vec![],
                allow_update: false,
            }
        )],
        "the shared provider stays while appb needs it; the manual component is untouched"
    );
    assert_eq!(
        p.statuses["appa"].status.status_type,
        StatusType::Undeployed
    );
    apply_all(&mut l, &p.commands);
    // Now appb goes too: the provider is stopped.
    let b_undeployed = AppView {
        name: "appb".into(),
        deployed: None,
        versions: vec![b.clone()],
    };
    let p = plan(&[a_undeployed, b_undeployed], &l, now);
    assert!(p
        .commands
        .iter()
        .any(|c| matches!(c, Command::StopProvider(s) if s.provider_id == "shared-http")));
    assert!(!scales(&p.commands).iter().any(|s| s.1 == "manual"));
}

#[test]
fn dead_host_work_moves_to_another_eligible_host() {
    let start = Instant::now();
    let mut l = lattice_with(vec![host("A", &[], start), host("B", &[], start)]);
    let m = app(WEIGHTED
        .replace("zone: east", "")
        .replace("zone: west", "")
        .replace(
            "{name: west, requirements: {}, weight: 20}",
            "{name: west, requirements: {}, weight: 0}",
        )
        .as_str());
    let p = plan(&[deployed(&m)], &l, start);
    apply_all(&mut l, &p.commands);
    assert!(plan(&[deployed(&m)], &l, start).commands.is_empty());
    // B keeps heartbeating, A goes silent.
    let later = start + Duration::from_secs(7);
    if let Some(h) = l.hosts.get_mut("B") {
        h.last_seen = later;
    }
    let dead = l.expire(later, Duration::from_secs(6));
    assert_eq!(dead, vec!["A".to_string()]);
    let p = plan(&[deployed(&m)], &l, later);
    assert_eq!(
        scales(&p.commands),
        vec![("B".into(), "web-api".into(), 10, "file:///api.wasm".into())]
    );
}

#[test]
fn failures_back_off_and_report_the_hosts_error() {
    let now = Instant::now();
    let mut l = lattice_with(vec![host("A", &[], now)]);
    let m = app(DAEMON.replace("{role: edge}", "{}").as_str());
    l.record_failure(
        FailureKey::Workload {
            host_id: "A".into(),
            id: "d-worker".into(),
        },
        "w",
        "component has no wasi:http export",
        now,
    );
    let p = plan(&[deployed(&m)], &l, now);
    assert!(scales(&p.commands).is_empty(), "no retry during back-off");
    let status = &p.statuses["d"];
    assert_eq!(status.status.status_type, StatusType::Failed);
    assert!(status
        .status
        .message
        .contains("component has no wasi:http export"));
    // After the back-off it retries, still reporting the failure until a success clears it.
    let later = now + Duration::from_secs(2);
    let p = plan(&[deployed(&m)], &l, later);
    assert_eq!(scales(&p.commands).len(), 1);
    // Repeated failures push the retry out exponentially, capped.
    for _ in 0..20 {
        l.record_failure(
            FailureKey::Workload {
                host_id: "A".into(),
                id: "d-worker".into(),
            },
            "w",
            "x",
            now,
        );
    }
    let f = &l.failures[&FailureKey::Workload {
        host_id: "A".into(),
        id: "d-worker".into(),
    }];
    assert_eq!(f.retry_at, now + crate::lattice::BACKOFF_MAX);
    assert_eq!(crate::lattice::backoff_delay(1), Duration::from_secs(1));
    assert_eq!(crate::lattice::backoff_delay(3), Duration::from_secs(4));
}

#[test]
fn retargeted_link_is_deleted_then_put() {
    let now = Instant::now();
    let mut l = lattice_with(vec![host("H", &[], now)]);
    let v1 = app(V1);
    let p1 = plan(&[deployed(&v1)], &l, now);
    apply_all(&mut l, &p1.commands);
    let v2 = app(&V1.replace("target: {name: front}", "target: {name: old}"));
    let p = plan(&[deployed(&v2)], &l, now);
    let del = DeleteLinkRequest {
        source_id: "shop-http".into(),
        name: "default".into(),
        wit_namespace: "wasi".into(),
        wit_package: "http".into(),
    };
    let i_del = p
        .commands
        .iter()
        .position(|c| c == &Command::DeleteLink(del.clone()));
    let i_put = p
        .commands
        .iter()
        .position(|c| matches!(c, Command::PutLink(link) if link.target == "shop-old"));
    assert!(
        i_del.is_some() && i_put.is_some() && i_del < i_put,
        "{:?}",
        p.commands
    );
}

const FIVE: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata: {name: five}
spec:
  components:
    - name: api
      type: component
      properties: {image: "file:///api.wasm"}
      traits:
        - type: spreadscaler
          properties: {instances: 5}
    - name: kv
      type: capability
      properties: {image: "ghcr.io/wasmcloud/keyvalue-nats:0.3.1"}
      traits:
        - type: spreadscaler
          properties: {instances: 1}
"#;

fn scaler_status<'a>(status: &'a Status, name: &str) -> &'a StatusInfo {
    &status
        .scalers
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scaler {name} in {status:?}"))
        .status
}

/// What the reconciler does with an acknowledged command: it waits for the host to confirm.
fn acknowledge(l: &mut LatticeState, cmds: &[Command], now: Instant) {
    for c in cmds {
        match c {
            Command::ScaleComponent(s) => l.mark_pending(
                &s.host_id,
                &s.component_id,
                Expected::Component {
                    image_ref: s.component_ref.clone(),
                    count: s.max_instances,
                },
                now,
            ),
            Command::StartProvider(p) => l.mark_pending(
                &p.host_id,
                &p.provider_id,
                Expected::Provider { running: true },
                now,
            ),
            Command::StopProvider(p) => l.mark_pending(
                &p.host_id,
                &p.provider_id,
                Expected::Provider { running: false },
                now,
            ),
            _ => {}
        }
    }
}

#[test]
fn acknowledged_work_is_reconciling_until_the_host_confirms_it_and_is_not_sent_twice() {
    let now = Instant::now();
    let mut l = lattice_with(vec![host("H", &[], now)]);
    let m = app(FIVE);
    let p = plan(&[deployed(&m)], &l, now);
    assert_eq!(scales(&p.commands).len(), 1);
    acknowledge(&mut l, &p.commands, now);

    let p = plan(&[deployed(&m)], &l, now);
    assert!(
        !p.commands
            .iter()
            .any(|c| matches!(c, Command::ScaleComponent(_) | Command::StartProvider(_))),
        "acknowledged commands are not sent again: {:?}",
        p.commands
    );
    let status = &p.statuses["five"];
    assert_eq!(status.status.status_type, StatusType::Reconciling);
    let api = scaler_status(status, "api");
    assert_eq!(api.status_type, StatusType::Reconciling);
    assert!(
        api.message.contains("0 of 5 instances confirmed")
            && api.message.contains("waiting for host H to confirm"),
        "{}",
        api.message
    );

    // The host confirms the component only: still reconciling, for the provider.
    l.set_component(
        "H",
        "five-api",
        Some(ObservedComponent {
            image_ref: "file:///api.wasm".into(),
            count: 5,
            annotations: owned("five"),
        }),
    );
    l.pending.remove(&("H".to_string(), "five-api".to_string()));
    let p = plan(&[deployed(&m)], &l, now);
    assert_eq!(
        scaler_status(&p.statuses["five"], "api").status_type,
        StatusType::Deployed
    );
    assert_eq!(
        p.statuses["five"].status.status_type,
        StatusType::Reconciling
    );

    // An overdue confirmation makes the planner send the command again.
    let overdue = now + crate::lattice::PENDING_TIMEOUT + Duration::from_secs(1);
    if let Some(h) = l.hosts.get_mut("H") {
        h.last_seen = overdue;
    }
    l.expire(overdue, Duration::from_secs(6));
    let p = plan(&[deployed(&m)], &l, overdue);
    assert!(p
        .commands
        .iter()
        .any(|c| matches!(c, Command::StartProvider(s) if s.host_id == "H")));
}

#[test]
fn a_silent_host_makes_the_status_reconciling_with_what_is_missing() {
    let start = Instant::now();
    let mut l = lattice_with(vec![host("A", &[], start), host("B", &[], start)]);
    let m = app(FIVE);
    let p = plan(&[deployed(&m)], &l, start);
    apply_all(&mut l, &p.commands);
    let p = plan(&[deployed(&m)], &l, start);
    assert_eq!(p.statuses["five"].status.status_type, StatusType::Deployed);
    let on_a = l.hosts["A"].components.get("five-api").map(|c| c.count);

    // B keeps heartbeating; A has been silent for 4 s (not yet dead at 6 s).
    let later = start + Duration::from_secs(4);
    if let Some(h) = l.hosts.get_mut("B") {
        h.last_seen = later;
    }
    assert!(l.expire(later, Duration::from_secs(6)).is_empty());
    let p = plan(&[deployed(&m)], &l, later);
    let status = &p.statuses["five"];
    assert_eq!(status.status.status_type, StatusType::Reconciling);
    let api = scaler_status(status, "api");
    let confirmed = 5 - on_a.unwrap_or(0);
    assert!(
        api.message
            .contains(&format!("{confirmed} of 5 instances confirmed"))
            && api.message.contains("host A silent for 4 s"),
        "{}",
        api.message
    );
    assert!(
        p.commands.is_empty(),
        "a silent host's work is not moved before it is declared dead: {:?}",
        p.commands
    );

    // A speaks again: deployed.
    if let Some(h) = l.hosts.get_mut("A") {
        h.last_seen = later;
    }
    let p = plan(&[deployed(&m)], &l, later);
    assert_eq!(p.statuses["five"].status.status_type, StatusType::Deployed);
}

#[test]
fn a_provider_that_failed_to_start_fails_the_app_with_the_hosts_error() {
    let now = Instant::now();
    let mut l = lattice_with(vec![host("H", &[], now)]);
    let m = app(FIVE);
    let p = plan(&[deployed(&m)], &l, now);
    acknowledge(&mut l, &p.commands, now);
    let failed = trellis_protocol::events::CloudEvent::new(
        trellis_protocol::events::names::PROVIDER_START_FAILED,
        "H",
        serde_json::json!({
            "provider_id": "five-kv",
            // As a Trellis host sends it: both names of the image.
            "provider_ref": "ghcr.io/wasmcloud/keyvalue-nats:0.3.1",
            "image_ref": "ghcr.io/wasmcloud/keyvalue-nats:0.3.1",
            "host_id": "H",
            "error": "cannot reach the key-value bucket",
        }),
    );
    l.apply_event(&failed, now);
    let p = plan(&[deployed(&m)], &l, now);
    let status = &p.statuses["five"];
    assert_eq!(status.status.status_type, StatusType::Failed);
    assert!(
        status
            .status
            .message
            .contains("H: cannot reach the key-value bucket"),
        "{}",
        status.status.message
    );
}

#[test]
fn a_removal_in_flight_is_not_sent_again() {
    let now = Instant::now();
    let mut l = lattice_with(vec![host("H", &[], now)]);
    l.set_component(
        "H",
        "gone-api",
        Some(ObservedComponent {
            image_ref: "file:///api.wasm".into(),
            count: 2,
            annotations: owned("gone"),
        }),
    );
    let p = plan(&[], &l, now);
    assert_eq!(
        scales(&p.commands),
        vec![("H".into(), "gone-api".into(), 0, "file:///api.wasm".into())]
    );
    acknowledge(&mut l, &p.commands, now);
    assert!(plan(&[], &l, now).commands.is_empty());
}

const WITH_SECRETS: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata: {name: Shop}
spec:
  policies:
    - name: vault
      type: policy.secret.wasmcloud.dev/v1alpha1
      properties: {backend: nats-kv, role_name: shop}
  components:
    - name: api
      type: component
      properties:
        image: "file:///api.wasm"
        secrets:
          - name: db-password
            properties: {policy: vault, key: prod/db, version: "2"}
      traits:
        - type: spreadscaler
          properties: {instances: 1}
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store]
            target:
              name: kv
              secrets:
                - name: redis-password
                  properties: {policy: vault, key: prod/redis}
    - name: kv
      type: capability
      properties: {image: "ghcr.io/wasmcloud/keyvalue-redis:0.28.1"}
      traits:
        - type: spreadscaler
          properties: {instances: 1}
"#;

#[test]
fn secrets_become_references_named_by_the_component_and_its_links() {
    use trellis_protocol::secrets::{SecretPolicy, SecretReference};
    let now = Instant::now();
    let l = lattice_with(vec![host("H1", &[], now)]);
    let m = app(WITH_SECRETS);
    let p = plan(&[deployed(&m)], &l, now);
    // The references are configs, put first; they hold where to look, never a value.
    let puts: BTreeMap<String, BTreeMap<String, String>> = p
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::PutConfig { name, values } => Some((name.clone(), values.clone())),
            _ => None,
        })
        .collect();
    let db = SecretReference::from_config_map(&puts["SECRET_shop-db_password"])
        .expect("a secret reference");
    assert_eq!(db.name, "db-password");
    assert_eq!(db.backend, "nats-kv");
    assert_eq!(db.key, "prod/db");
    assert_eq!(db.version.as_deref(), Some("2"));
    let policy: SecretPolicy = serde_json::from_str(&db.policy).expect("policy JSON");
    assert_eq!(policy.properties["role_name"], "shop");
    assert!(!policy.properties.contains_key("backend"));
    assert!(puts.contains_key("SECRET_shop-redis_password"));
    // The component names its reference like a config.
    let scale = p
        .commands
        .iter()
        .find_map(|c| match c {
            Command::ScaleComponent(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a scale command");
    assert_eq!(scale.config, vec!["SECRET_shop-db_password".to_string()]);
}

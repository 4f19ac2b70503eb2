//! Reply and stored-value bounds that need no NATS server.

use crate::api::types::*;
use crate::api::{brief_summary, page_request, Page};
use crate::store::{value_limit_for, ModelIndex, DEFAULT_MAX_PAYLOAD, PAYLOAD_HEADROOM};

fn scaler(i: usize, status_type: StatusType, message: &str) -> ScalerStatus {
    ScalerStatus {
        id: format!("s{i}"),
        kind: "SpreadScaler".into(),
        name: format!("component-{i}"),
        status: StatusInfo::new(status_type, message),
    }
}

fn json_len(v: &impl serde::Serialize) -> usize {
    serde_json::to_vec(v).expect("json").len()
}

#[test]
fn a_small_status_fits_unchanged() {
    let status = Status::aggregate(vec![scaler(0, StatusType::Deployed, "")]);
    assert_eq!(status.clone().fit(10_000), status);
}

#[test]
fn long_messages_are_cut_first() {
    let long = "x".repeat(50_000);
    let status = Status::aggregate(vec![scaler(0, StatusType::Failed, &long)]);
    let fitted = status.fit(8_000);
    assert!(json_len(&fitted) <= 8_000, "{}", json_len(&fitted));
    assert_eq!(fitted.scalers.len(), 1);
    assert_eq!(fitted.status.status_type, StatusType::Failed);
    let message = &fitted.scalers[0].status.message;
    assert!(message.ends_with('…') && message.chars().count() == MAX_STATUS_MESSAGE_CHARS + 1);
}

#[test]
fn then_the_worst_scalers_are_kept_and_the_rest_counted() {
    let mut scalers: Vec<ScalerStatus> = (0..2_000)
        .map(|i| scaler(i, StatusType::Deployed, ""))
        .collect();
    scalers[1_500] = scaler(1_500, StatusType::Failed, "host refused");
    let fitted = Status::aggregate(scalers).fit(20_000);
    assert!(json_len(&fitted) <= 20_000, "{}", json_len(&fitted));
    assert_eq!(
        fitted.status.status_type,
        StatusType::Failed,
        "never looks better"
    );
    assert!(
        fitted.scalers.iter().any(|s| s.id == "s1500"),
        "the failed one stays"
    );
    let kept = fitted.scalers.len();
    assert!(kept > 10 && kept < 2_000, "{kept}");
    assert!(
        fitted
            .status
            .message
            .contains(&format!("({} of 2000 scalers left out", 2_000 - kept)),
        "{}",
        fitted.status.message
    );
    let ids: Vec<usize> = fitted
        .scalers
        .iter()
        .map(|s| s.id[1..].parse().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "original order kept");
}

#[test]
fn pages_stop_before_the_budget_and_say_how_to_go_on() {
    let mut page: Page<VersionInfo> = Page::new(4_096);
    let mut refused = None;
    for i in 0..1_000 {
        let item = VersionInfo {
            version: format!("v{i:04}"),
            deployed: false,
        };
        if let Err(item) = page.push(item) {
            refused = Some(item);
            break;
        }
    }
    let refused = refused.expect("1000 versions do not fit 4 KiB");
    assert_eq!(refused.version, format!("v{:04}", page.items.len()));
    let last = page.items.last().expect("some fit").version.clone();
    let body = VersionsResponse {
        result: GetResult::Success,
        message: page.message("versions", 1_000, Some(&last)),
        truncated: true,
        next: Some(last.clone()),
        versions: page.items,
    };
    assert!(json_len(&body) <= 4_096, "{}", json_len(&body));
    assert!(
        body.message.contains(&format!("{{\"after\":\"{last}\"}}")),
        "{}",
        body.message
    );
    assert!(
        body.message.contains("of 1000 versions"),
        "{}",
        body.message
    );
}

#[test]
fn complete_lists_keep_wadms_shape() {
    let body = ListModelsResponse {
        result: GetResult::Success,
        message: "0 models".into(),
        models: Vec::new(),
        truncated: false,
        next: None,
    };
    let value = serde_json::to_value(&body).expect("json");
    assert_eq!(
        value,
        serde_json::json!({"result": "success", "message": "0 models", "models": []})
    );
}

#[test]
fn list_requests_are_read_leniently() {
    assert_eq!(page_request(b""), PageRequest::default());
    assert_eq!(page_request(b"{}"), PageRequest::default());
    assert_eq!(page_request(b"not json"), PageRequest::default());
    assert_eq!(
        page_request(br#"{"after":"app07"}"#).after.as_deref(),
        Some("app07")
    );
}

#[test]
fn an_oversized_summary_is_cut_down_and_says_so() {
    let summary = ModelSummary {
        name: "big".into(),
        version: "v1".into(),
        description: Some("d".repeat(900_000)),
        deployed_version: Some("v1".into()),
        detailed_status: Status::aggregate(
            (0..5_000)
                .map(|i| scaler(i, StatusType::Waiting, "no host"))
                .collect(),
        ),
        status_message: String::new(),
    };
    let brief = brief_summary(summary);
    assert!(json_len(&brief) < 2_000, "{}", json_len(&brief));
    assert_eq!(
        brief.detailed_status.status.status_type,
        StatusType::Waiting
    );
    assert!(
        brief.status_message.contains("ask model.status.big"),
        "{}",
        brief.status_message
    );
}

#[test]
fn stored_values_leave_headroom_under_max_payload() {
    assert_eq!(
        value_limit_for(DEFAULT_MAX_PAYLOAD),
        DEFAULT_MAX_PAYLOAD - PAYLOAD_HEADROOM
    );
    assert_eq!(value_limit_for(1_000), 500, "tiny limits keep half");
}

#[test]
fn indexes_of_the_old_layout_still_decode() {
    let legacy = serde_json::json!({
        "name": "old",
        "versions": [{"version": "v1", "manifest": {
            "apiVersion": "core.oam.dev/v1beta1", "kind": "Application",
            "metadata": {"name": "old"},
            "spec": {"components": []}
        }}],
        "deployed_version": "v1"
    });
    let index: ModelIndex = serde_json::from_value(legacy).expect("decodes");
    let v1 = index.version(Some("v1")).expect("v1");
    assert!(v1.manifest.is_some() && v1.id.is_none());
    assert_eq!(index.deployed_version.as_deref(), Some("v1"));
    let mut new = ModelIndex::new("new");
    new.versions.push(crate::store::IndexEntry {
        version: "v1".into(),
        id: Some("01ABC".into()),
        manifest: None,
    });
    let value = serde_json::to_value(&new).expect("json");
    assert_eq!(
        value,
        serde_json::json!({"name": "new", "versions": [{"version": "v1", "id": "01ABC"}], "deployed_version": null})
    );
}

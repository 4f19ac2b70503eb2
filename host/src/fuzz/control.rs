//! Fuzz tests of the control interface's request decoding: every request type `dispatch`
//! decodes, through the same [`parse`] (empty bodies, trailing data and field errors refused
//! alike), on arbitrary bytes, arbitrary JSON, mutations of valid bodies and generated valid
//! requests.

use std::collections::HashMap;
use std::fmt::Debug;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use trellis_protocol::ctl::{
    ComponentAuctionRequest, DeleteLinkRequest, HostLabel, HostLabelIdentifier, Link,
    ProviderAuctionRequest, ScaleComponentCommand, StartProviderCommand, StopHostCommand,
    StopProviderCommand, UpdateComponentCommand,
};

use super::{config, edits, json_value, mutate, text};
use crate::lattice::control::parse;
use crate::lattice::store::ConfigMap;
use crate::runtime::{
    ComponentLimits, MAX_EXECUTION_TIME_MS_KEY, MAX_MEMORY_MB_KEY, MAX_QUEUED_REQUESTS_KEY,
};

/// What a field of a request holds, for generating valid requests.
#[derive(Debug, Clone, Copy)]
enum Field {
    Text,
    Count,
    Millis,
    Flag,
    Names,
    Labels,
}

/// One request type: its operation, its fields (`name`, shape, required) and its decoder.
#[derive(Debug)]
struct Request {
    op: &'static str,
    fields: &'static [(&'static str, Field, bool)],
    /// Decodes a body as `dispatch` does and returns the decoded request re-encoded as JSON.
    decode: fn(&str, &[u8]) -> Result<Value, String>,
}

fn decode<T: DeserializeOwned + Serialize + PartialEq + Debug>(
    op: &str,
    body: &[u8],
) -> Result<Value, String> {
    let value: T = parse(op, body)?;
    // Whatever decodes must survive its own encoding unchanged.
    let again = serde_json::to_vec(&value).map_err(|e| format!("re-encoding: {e}"))?;
    let back: T = parse(op, &again).map_err(|e| format!("re-decoding {value:?}: {e}"))?;
    assert_eq!(
        back, value,
        "{op}: a decoded request changed through its own encoding"
    );
    serde_json::to_value(&value).map_err(|e| format!("re-encoding: {e}"))
}

use Field::*;

/// Every request body `dispatch` decodes. `host.stop` also takes an empty body (`dispatch`
/// handles that before parsing); `config.put` is a map of any names.
const REQUESTS: &[Request] = &[
    Request {
        op: "host.stop",
        fields: &[("host_id", Text, false), ("timeout", Millis, false)],
        decode: decode::<StopHostCommand>,
    },
    Request {
        op: "component.scale",
        fields: &[
            ("component_ref", Text, false),
            ("component_id", Text, true),
            ("annotations", Labels, false),
            ("count", Count, false),
            ("component_limits", Labels, false),
            ("host_id", Text, false),
            ("config", Names, false),
            ("allow_update", Flag, false),
        ],
        decode: decode::<ScaleComponentCommand>,
    },
    Request {
        op: "component.update",
        fields: &[
            ("component_id", Text, false),
            ("annotations", Labels, false),
            ("host_id", Text, false),
            ("new_component_ref", Text, false),
        ],
        decode: decode::<UpdateComponentCommand>,
    },
    Request {
        op: "provider.start",
        fields: &[
            ("provider_id", Text, true),
            ("provider_ref", Text, false),
            ("host_id", Text, false),
            ("config", Names, false),
            ("annotations", Labels, false),
        ],
        decode: decode::<StartProviderCommand>,
    },
    Request {
        op: "provider.stop",
        fields: &[("host_id", Text, false), ("provider_id", Text, false)],
        decode: decode::<StopProviderCommand>,
    },
    Request {
        op: "label.put",
        fields: &[("key", Text, true), ("value", Text, true)],
        decode: decode::<HostLabel>,
    },
    Request {
        op: "label.del",
        fields: &[("key", Text, true)],
        decode: decode::<HostLabelIdentifier>,
    },
    Request {
        op: "component.auction",
        fields: &[
            ("component_ref", Text, false),
            ("component_id", Text, true),
            ("constraints", Labels, true),
        ],
        decode: decode::<ComponentAuctionRequest>,
    },
    Request {
        op: "provider.auction",
        fields: &[
            ("provider_ref", Text, false),
            ("provider_id", Text, true),
            ("constraints", Labels, true),
        ],
        decode: decode::<ProviderAuctionRequest>,
    },
    Request {
        op: "config.put",
        fields: &[],
        decode: decode::<ConfigMap>,
    },
    Request {
        op: "link.put",
        fields: &[
            ("source_id", Text, true),
            ("target", Text, true),
            ("name", Text, false),
            ("wit_namespace", Text, true),
            ("wit_package", Text, true),
            ("interfaces", Names, true),
            ("source_config", Names, false),
            ("target_config", Names, false),
        ],
        decode: decode::<Link>,
    },
    Request {
        op: "link.del",
        fields: &[
            ("source_id", Text, true),
            ("name", Text, false),
            ("wit_namespace", Text, true),
            ("wit_package", Text, true),
        ],
        decode: decode::<DeleteLinkRequest>,
    },
];

/// Every field name of every request, so generated JSON often hits real fields.
const FIELD_NAMES: &[&str] = &[
    "host_id",
    "timeout",
    "component_ref",
    "component_id",
    "annotations",
    "count",
    "max_instances",
    "component_limits",
    "config",
    "allow_update",
    "new_component_ref",
    "provider_id",
    "provider_ref",
    "key",
    "value",
    "constraints",
    "source_id",
    "target",
    "name",
    "wit_namespace",
    "wit_package",
    "interfaces",
    "source_config",
    "target_config",
];

/// The keys of `component_limits`.
const LIMIT_KEYS: &[&str] = &[
    MAX_MEMORY_MB_KEY,
    MAX_EXECUTION_TIME_MS_KEY,
    MAX_QUEUED_REQUESTS_KEY,
];

/// Decodes `body` for `request` exactly as `dispatch` does, and checks what every failure
/// must look like: an error naming the operation.
fn decode_like_dispatch(request: &Request, body: &[u8]) -> Result<Value, String> {
    let result = if request.op == "host.stop" && body.iter().all(u8::is_ascii_whitespace) {
        Ok(Value::Object(Map::new()))
    } else {
        (request.decode)(request.op, body)
    };
    if let Err(message) = &result {
        assert!(
            message.starts_with(&format!("{}: ", request.op)),
            "an error that does not name its operation: {message}"
        );
    }
    result
}

fn request() -> impl Strategy<Value = &'static Request> {
    proptest::sample::select(REQUESTS.iter().collect::<Vec<_>>())
}

fn field_value(field: Field) -> BoxedStrategy<Value> {
    match field {
        Text => text(16).prop_map(Value::String).boxed(),
        Count => any::<u32>().prop_map(Value::from).boxed(),
        Millis => any::<u64>().prop_map(Value::from).boxed(),
        Flag => any::<bool>().prop_map(Value::Bool).boxed(),
        Names => vec(text(8), 0..4).prop_map(Value::from).boxed(),
        Labels => btree_map(text(8), text(8), 0..4)
            .prop_map(|map| {
                Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                )
            })
            .boxed(),
    }
}

/// A valid body for `request`: every required field, some optional ones, in any order, with
/// whitespace around it.
fn valid_body(request: &'static Request) -> BoxedStrategy<(Value, Vec<u8>)> {
    if request.fields.is_empty() {
        return btree_map(text(12), text(12), 0..6)
            .prop_map(|map| {
                let value = Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                );
                let body = serde_json::to_vec(&value).unwrap_or_default();
                (value, body)
            })
            .boxed();
    }
    let fields: Vec<BoxedStrategy<Option<(&'static str, Value)>>> = request
        .fields
        .iter()
        .map(|&(name, field, required)| {
            let value = field_value(field).prop_map(move |v| (name, v));
            if required {
                value.prop_map(Some).boxed()
            } else {
                proptest::option::of(value).boxed()
            }
        })
        .collect();
    (fields, "[ \t\r\n]{0,3}", "[ \t\r\n]{0,3}")
        .prop_map(|(fields, before, after)| {
            let value = Value::Object(
                fields
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            );
            let mut body = before.into_bytes();
            body.extend(serde_json::to_vec(&value).unwrap_or_default());
            body.extend(after.into_bytes());
            (value, body)
        })
        .boxed()
}

proptest! {
    #![proptest_config(config(256, "proptest-regressions/fuzz/control.txt"))]

    /// Arbitrary bytes: every request type decodes or refuses with a message naming the
    /// operation; nothing that is not a whole JSON document decodes.
    #[test]
    fn any_bytes_decode_or_are_refused(body in vec(any::<u8>(), 0..512)) {
        let is_json = serde_json::from_slice::<Value>(&body).is_ok();
        for request in REQUESTS {
            if decode_like_dispatch(request, &body).is_ok() {
                let empty = body.iter().all(u8::is_ascii_whitespace);
                prop_assert!(is_json || (empty && request.op == "host.stop"), "{} decoded {:?}", request.op, String::from_utf8_lossy(&body));
            }
        }
    }

    /// JSON-looking text (brackets, quotes, escapes, numbers, field names) decodes or is
    /// refused.
    #[test]
    fn json_like_text_decodes_or_is_refused(
        body in r#"[ \{\}\[\]":,\\0-9eE.+\-a-z_tnulfrs]{0,96}"#,
    ) {
        for request in REQUESTS {
            let _ = decode_like_dispatch(request, body.as_bytes());
        }
    }

    /// Arbitrary JSON documents, mostly objects with real field names of mistyped values,
    /// decode or are refused; whatever decodes survives its own encoding.
    #[test]
    fn any_json_decodes_or_is_refused(value in json_value(FIELD_NAMES, 3)) {
        let body = serde_json::to_vec(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for request in REQUESTS {
            let _ = decode_like_dispatch(request, &body);
        }
    }

    /// A valid request decodes to what was sent; the same with junk after it is refused as
    /// trailing data.
    #[test]
    fn valid_requests_decode_and_trailing_data_is_refused(
        (request, (value, body)) in request().prop_flat_map(|r| (Just(r), valid_body(r))),
        junk in "[a-z0-9\\{\\}\\[\\],\"]{1,4}",
    ) {
        let decoded = decode_like_dispatch(request, &body).map_err(TestCaseError::fail)?;
        for (name, sent) in value.as_object().into_iter().flatten() {
            prop_assert_eq!(decoded.get(name.as_str()), Some(sent), "{}: field {}", request.op, name);
        }
        let mut longer = body.clone();
        longer.extend_from_slice(junk.as_bytes());
        let error = decode_like_dispatch(request, &longer).expect_err("trailing junk decoded");
        prop_assert!(error.contains("trailing data"), "{}", error);
    }

    /// Small edits of valid requests decode or are refused.
    #[test]
    fn edited_requests_decode_or_are_refused(
        (request, (_, body)) in request().prop_flat_map(|r| (Just(r), valid_body(r))),
        edits in edits(),
    ) {
        let body = mutate(&body, &edits);
        let _ = decode_like_dispatch(request, &body);
    }

    /// `component_limits` of any values are parsed or refused by the check `dispatch` runs
    /// after decoding a scale command.
    #[test]
    fn component_limits_of_any_values_parse_or_are_refused(
        limits in vec((proptest::sample::select(LIMIT_KEYS), "[ +\\-0-9a-z]{0,24}"), 0..4),
    ) {
        let map: HashMap<String, String> =
            limits.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if let Ok(parsed) = ComponentLimits::from_map(&map) {
            prop_assert_eq!(ComponentLimits::from_map(&parsed.to_map()).ok(), Some(parsed));
        }
    }
}

/// Nesting far deeper than any request never exhausts the stack: where the request type reads
/// the nested field, the JSON parser's recursion limit refuses the body with an error naming
/// the operation; where the type ignores the field, serde_json skips it without recursing, so
/// the body decodes.
#[test]
fn deeply_nested_bodies_are_refused_or_skipped_never_overflow() {
    for depth in [200, 10_000] {
        let body = format!(
            "{}{}",
            "{\"annotations\":[".repeat(depth),
            "]}".repeat(depth)
        );
        for request in REQUESTS {
            let reads_annotations = request
                .fields
                .iter()
                .any(|(name, _, _)| *name == "annotations");
            match decode_like_dispatch(request, body.as_bytes()) {
                Err(error) => assert!(error.starts_with(request.op), "{error}"),
                Ok(_) => assert!(
                    !reads_annotations,
                    "{}: a body nested {depth} deep decoded through a field the type reads",
                    request.op
                ),
            }
        }
    }
}

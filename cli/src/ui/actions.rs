//! What the page can do: deploy a manifest, undeploy or delete an app, scale a component.
//! Each answers with what the lattice reported, never with a guess.

use std::time::Duration;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_protocol::ctl::ScaleComponentCommand;
use trellis_wadm::validation::{Diagnostic, Severity};

use super::live::Live;
use super::{error_response, json_response, locate, Body};
use crate::app_cmds::{check_result, deploy_stored};
use crate::app_endpoints::{http_urls, manifest_name, manifest_version, parse_manifest};
use crate::lattice_client::LatticeClient;
use crate::lattice_cmds::{await_event, event_error, subscribe_events, EventOutcome};
use crate::output::OutputFormat;
use crate::wadm_api::WadmClient;

/// How long a deploy from the page waits for the reconciler's verdict.
const DEPLOY_WAIT_SECS: u64 = 90;
/// How long an undeploy waits for the app to be reported undeployed.
const UNDEPLOY_WAIT: Duration = Duration::from_secs(30);
/// The most instances the page may ask for on one host.
const MAX_SCALE: u32 = 10_000;

/// One problem with a manifest, at its line when known.
#[derive(Debug, Clone, Serialize)]
struct Problem {
    severity: &'static str,
    line: Option<usize>,
    column: Option<usize>,
    path: String,
    message: String,
}

impl Problem {
    fn from_diagnostic(d: &Diagnostic, text: &str) -> Self {
        let line = d.line.or_else(|| {
            (!d.path.is_empty())
                .then(|| locate::line_of(text, &d.path))
                .flatten()
        });
        Self {
            severity: match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
            line,
            column: d.column,
            path: d.path.clone(),
            message: d.message.clone(),
        }
    }
}

/// `POST /api/deploy` with the manifest as the body: validate, store, deploy, then wait for
/// the reconciler to say deployed or failed.
pub async fn deploy(client: &LatticeClient, live: &Live, body: Bytes) -> Response<Body> {
    let Ok(text) = std::str::from_utf8(&body) else {
        return problems_response(
            "validation",
            vec![plain_problem("the manifest is not UTF-8 text")],
        );
    };
    // The reconciler's own parser and validation, here first so errors come with lines.
    let parsed = match trellis_wadm::model::parse_manifest(&body) {
        Ok(parsed) => parsed,
        Err(e) => {
            let problems = e
                .diagnostics
                .iter()
                .map(|d| Problem::from_diagnostic(d, text))
                .collect();
            return problems_response("validation", problems);
        }
    };
    let warnings: Vec<Problem> = parsed
        .all_warnings()
        .map(|d| Problem::from_diagnostic(d, text))
        .collect();
    let manifest = parse_manifest(text).unwrap_or_default();
    let wadm = WadmClient::new(client);
    let reply = match wadm.put(body.to_vec()).await {
        Ok(reply) => reply,
        Err(e) => return error_response(StatusCode::BAD_GATEWAY, &format!("{e:#}")),
    };
    let mut name = reply.name.clone();
    if name.is_empty() {
        name = manifest_name(&manifest).unwrap_or_default().to_string();
    }
    let version = if reply.result == "error" {
        // Storing a version that is already stored is refused; deploying it is what the user
        // wants (as `trellis app deploy` does).
        let stored = manifest_version(&manifest).map(str::to_string);
        if !(reply.message.contains("exist") && stored.is_some() && !name.is_empty()) {
            let mut problem = plain_problem(&reply.message);
            problem.line = line_in_message(&reply.message);
            return problems_response("reconciler", vec![problem]);
        }
        stored
    } else {
        Some(reply.current_version.clone()).filter(|v| !v.is_empty())
    };
    live.changed();
    let urls = http_urls(&manifest);
    let outcome = deploy_stored(
        client,
        name.clone(),
        version,
        urls,
        false,
        DEPLOY_WAIT_SECS,
        OutputFormat::Json,
    )
    .await;
    live.push_snapshot().await;
    match outcome {
        Ok(outcome) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "ok": outcome.status == "deployed",
                "outcome": outcome,
                "warnings": warnings,
            }),
        ),
        Err(e) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "ok": false,
                "stage": "deploy",
                "error": format!("{e:#}"),
                "app": name,
                "warnings": warnings,
            }),
        ),
    }
}

/// `POST /api/apps/NAME/undeploy`: undeploys, then waits until the reconciler reports it.
pub async fn undeploy(client: &LatticeClient, live: &Live, name: &str) -> Response<Body> {
    if !is_app_name(name) {
        return error_response(StatusCode::BAD_REQUEST, "invalid app name");
    }
    let wadm = WadmClient::new(client);
    let result = async {
        let reply = wadm.undeploy(name).await?;
        check_result(&reply.result, &reply.message, name, client.lattice())?;
        live.changed();
        let deadline = tokio::time::Instant::now() + UNDEPLOY_WAIT;
        loop {
            let status = wadm.status(name).await?;
            let info = status.status.map(|s| s.status).unwrap_or_default();
            if info.kind == "undeployed" || tokio::time::Instant::now() >= deadline {
                return Ok::<_, anyhow::Error>(info);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    .await;
    live.push_snapshot().await;
    match result {
        Ok(info) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "ok": info.kind == "undeployed",
                "status": info.kind,
                "message": info.message,
            }),
        ),
        Err(e) => error_response(StatusCode::BAD_GATEWAY, &format!("{e:#}")),
    }
}

/// `POST /api/apps/NAME/delete`: deletes every stored version (undeploying the app).
pub async fn delete(client: &LatticeClient, live: &Live, name: &str) -> Response<Body> {
    if !is_app_name(name) {
        return error_response(StatusCode::BAD_REQUEST, "invalid app name");
    }
    let wadm = WadmClient::new(client);
    let result = async {
        let reply = wadm.delete(name, None).await?;
        check_result(&reply.result, &reply.message, name, client.lattice())?;
        Ok::<_, anyhow::Error>(reply)
    }
    .await;
    live.changed();
    live.push_snapshot().await;
    match result {
        Ok(reply) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "ok": reply.result != "noop",
                "result": reply.result,
                "message": reply.message,
                "undeployed": reply.undeploy,
            }),
        ),
        Err(e) => error_response(StatusCode::BAD_GATEWAY, &format!("{e:#}")),
    }
}

/// The body of `POST /api/scale`.
#[derive(Debug, Deserialize)]
struct ScaleRequest {
    host_id: String,
    component_id: String,
    count: u32,
}

/// `POST /api/scale`: sets a running component's max instances on one host (0 stops it) and
/// waits for the host's event confirming it.
pub async fn scale(client: &LatticeClient, live: &Live, body: Bytes) -> Response<Body> {
    let request: ScaleRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("invalid request: {e}")),
    };
    if request.count > MAX_SCALE {
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!("at most {MAX_SCALE} instances"),
        );
    }
    if !trellis_protocol::subjects::is_valid_token(&request.host_id) {
        return error_response(StatusCode::BAD_REQUEST, "invalid host id");
    }
    let result = async {
        // The reference and annotations are the running component's, so its ownership (the
        // reconciler's or not) stays as it is.
        let inventory = client
            .inventory(&request.host_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the host answered without an inventory"))?;
        let running = inventory
            .components
            .iter()
            .find(|c| c.id == request.component_id)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "component {} does not run on host {}",
                    request.component_id,
                    inventory.friendly_name
                )
            })?;
        let command = ScaleComponentCommand {
            component_ref: running.image_ref.clone(),
            component_id: running.id.clone(),
            annotations: running.annotations.clone(),
            max_instances: request.count,
            component_limits: None,
            host_id: request.host_id.clone(),
            config: Vec::new(),
            allow_update: false,
        };
        let mut events = subscribe_events(client).await?;
        let message = client
            .ctl_ack(
                client.subjects().component_scale(&request.host_id),
                &command,
            )
            .await?;
        let id = request.component_id.clone();
        let host = request.host_id.clone();
        let outcome = await_event(
            &mut events,
            "",
            client.timeout(),
            OutputFormat::Json,
            |ev| {
                let same = ev.data.get("component_id").and_then(Value::as_str) == Some(id.as_str())
                    && ev.source == host;
                match ev.name() {
                    "component_scaled" if same => Some(Ok(())),
                    "component_scale_failed" if same => Some(Err(event_error(ev))),
                    _ => None,
                }
            },
        )
        .await?;
        Ok::<_, anyhow::Error>((matches!(outcome, EventOutcome::Confirmed), message))
    }
    .await;
    live.changed();
    match result {
        Ok((confirmed, message)) => json_response(
            StatusCode::OK,
            &serde_json::json!({"ok": true, "confirmed": confirmed, "message": message}),
        ),
        Err(e) => json_response(
            StatusCode::OK,
            &serde_json::json!({"ok": false, "error": format!("{e:#}")}),
        ),
    }
}

fn problems_response(stage: &str, problems: Vec<Problem>) -> Response<Body> {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &serde_json::json!({"ok": false, "stage": stage, "diagnostics": problems}),
    )
}

fn plain_problem(message: &str) -> Problem {
    Problem {
        severity: "error",
        line: None,
        column: None,
        path: String::new(),
        message: message.to_string(),
    }
}

/// The first `line N` a message mentions.
fn line_in_message(message: &str) -> Option<usize> {
    let at = message.find("line ")? + "line ".len();
    let digits: String = message[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Model names as the reconciler accepts them (`^[-\w]+$`).
fn is_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_carry_their_line() {
        let text = "apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: broken
spec:
  components:
    - name: hello
      type: component
      properties:
        image: file:///x.wasm
      traits:
        - type: spreadscaler
          properties:
            instances: lots
";
        let e = trellis_wadm::model::parse_manifest(text.as_bytes()).expect_err("invalid");
        let problems: Vec<Problem> = e
            .diagnostics
            .iter()
            .map(|d| Problem::from_diagnostic(d, text))
            .collect();
        assert_eq!(problems[0].line, Some(14), "{problems:?}");
    }

    #[test]
    fn lines_are_read_from_messages_and_names_checked() {
        assert_eq!(line_in_message("bad thing at line 12 column 3"), Some(12));
        assert_eq!(line_in_message("no line here"), None);
        assert!(is_app_name("hello-world_2"));
        assert!(!is_app_name("a.b"));
        assert!(!is_app_name(""));
    }
}

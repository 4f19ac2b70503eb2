//! `secrets-demo`: reads secrets through `wasmcloud:secrets@0.1.0-draft` (`store` and
//! `reveal`) and answers without ever echoing a value.
//!
//! - `GET /secret/NAME` answers `200` `found (N bytes)` when the secret `NAME` is granted to
//!   this component (N is the length of the revealed value), or `404` `not-found`, or `502`
//!   `upstream` / `io` for a backend failure (the backend's message is not echoed either).
//! - Any other path answers `404`.

mod secrets {
    wit_bindgen::generate!({
        path: "../../wit/deps/wasmcloud-secrets-0.1.0-draft",
        world: "wasmcloud:secrets/imports",
    });
}

use secrets::wasmcloud::secrets::{reveal, store};
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(SecretsDemo);

/// The component's export implementation.
struct SecretsDemo;

impl wasi::exports::http::incoming_handler::Guest for SecretsDemo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let path = path_with_query.split('?').next().unwrap_or("/");
        let Some(name) = path.strip_prefix("/secret/") else {
            respond(response_out, 404, b"try GET /secret/NAME\n");
            return;
        };
        let (status, text) = match store::get(name) {
            Ok(secret) => {
                let size = match reveal::reveal(&secret) {
                    store::SecretValue::String(text) => text.len(),
                    store::SecretValue::Bytes(bytes) => bytes.len(),
                };
                (200, format!("found ({size} bytes)\n"))
            }
            Err(store::SecretsError::NotFound) => (404, "not-found\n".to_string()),
            Err(store::SecretsError::Upstream(_)) => (502, "upstream\n".to_string()),
            Err(store::SecretsError::Io(_)) => (502, "io\n".to_string()),
        };
        respond(response_out, status, text.as_bytes());
    }
}

/// Sends a plain-text response.
fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        let _ = stream.blocking_write_and_flush(body);
        drop(stream);
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

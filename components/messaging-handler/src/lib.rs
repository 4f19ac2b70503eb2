//! `messaging-handler`: exports `wasmcloud:messaging/handler@0.2.0`.
//!
//! For every message it receives:
//! - when the message has a `reply-to`, it publishes `reply: <body>` there (so a NATS request
//!   on a subscribed subject gets that answer);
//! - when its config (`wasi:config/store`) has `publish_subject`, it publishes the body in
//!   upper case on that subject;
//! - it logs the subject through `wasi:logging`.
//!
//! A body of exactly `fail` makes `handle-message` return an error (to test error paths).

wit_bindgen::generate!({
    path: [
        "../../wit/deps/wasi-config",
        "../../wit/deps/wasi-logging",
        "../../wit/deps/wasmcloud-messaging-0.2.0",
        "wit",
    ],
    world: "trellis:messaging-handler/handler",
    generate_all,
});

use exports::wasmcloud::messaging::handler::Guest;
use wasi::config::store as config;
use wasi::logging::logging::{log, Level};
use wasmcloud::messaging::consumer;
use wasmcloud::messaging::types::BrokerMessage;

/// Config key naming the subject the upper-cased body is published to.
const PUBLISH_SUBJECT_KEY: &str = "publish_subject";

struct Handler;

impl Guest for Handler {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        let body = String::from_utf8_lossy(&msg.body).into_owned();
        log(
            Level::Info,
            "messaging-handler",
            &format!("received {} bytes on {}", msg.body.len(), msg.subject),
        );
        if body == "fail" {
            return Err(format!(
                "refusing the message on {} on purpose",
                msg.subject
            ));
        }
        if let Some(reply_to) = msg.reply_to {
            consumer::publish(&BrokerMessage {
                subject: reply_to,
                body: format!("reply: {body}").into_bytes(),
                reply_to: None,
            })?;
        }
        let target =
            config::get(PUBLISH_SUBJECT_KEY).map_err(|e| format!("config error: {e:?}"))?;
        if let Some(subject) = target.filter(|s| !s.is_empty()) {
            consumer::publish(&BrokerMessage {
                subject,
                body: body.to_uppercase().into_bytes(),
                reply_to: None,
            })?;
        }
        Ok(())
    }
}

export!(Handler);

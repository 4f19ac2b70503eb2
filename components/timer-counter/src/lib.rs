//! `timer-counter`: exports `trellis:timer/handler@0.1.0`.
//!
//! On every tick it publishes `tick <number> <scheduled-ms> <payload>` on the subject named
//! by its config key `publish_subject` (nothing when unset), so a test can count the ticks
//! from outside. Payloads steer it, to test the timer's error paths:
//! - `fail`: `on-tick` returns an error;
//! - `slow:<ms>`: it sleeps that long after publishing (to make the next tick find it busy).

wit_bindgen::generate!({
    path: [
        "../../wit/deps/wasi-config",
        "../../wit/deps/wasmcloud-messaging-0.2.0",
        "../../wit/trellis-timer",
        "wit",
    ],
    world: "trellis:timer-counter/counter",
    generate_all,
});

use exports::trellis::timer::handler::{Guest, TickInfo};
use wasi::config::store as config;
use wasmcloud::messaging::consumer;
use wasmcloud::messaging::types::BrokerMessage;

/// Config key naming the subject ticks are published on.
const PUBLISH_SUBJECT_KEY: &str = "publish_subject";

struct Counter;

impl Guest for Counter {
    fn on_tick(tick: TickInfo) -> Result<(), String> {
        let payload = String::from_utf8_lossy(&tick.payload).into_owned();
        if payload == "fail" {
            return Err(format!("tick {} refused on purpose", tick.number));
        }
        let subject = config::get(PUBLISH_SUBJECT_KEY).map_err(|e| format!("config: {e:?}"))?;
        if let Some(subject) = subject.filter(|s| !s.is_empty()) {
            consumer::publish(&BrokerMessage {
                subject,
                body: format!("tick {} {} {payload}", tick.number, tick.scheduled_ms).into_bytes(),
                reply_to: None,
            })?;
        }
        if let Some(ms) = payload.strip_prefix("slow:").and_then(|ms| ms.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        Ok(())
    }
}

export!(Counter);

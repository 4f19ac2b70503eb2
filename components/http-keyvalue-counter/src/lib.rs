//! `http-keyvalue-counter`: each HTTP request increments the counter named by its path in the
//! `wasi:keyvalue` bucket `default` (through `atomics.increment`) and answers `200` with the
//! new count as text, e.g. `GET /visits` -> `3`.
//!
//! - The key is the path without its leading `/` (`counter` for `/`), with characters outside
//!   `A-Za-z0-9-_=.` replaced by `_` so every backend accepts it. The query string is ignored.
//! - `GET /get/<key>` answers the stored value without changing it (`0` when unset).
//! - `GET /keys` answers every key of the bucket, one per line, sorted (`list-keys`, following
//!   the cursor through every page).
//! - `GET /batch` exercises `batch`: sets `batch-a`=`1` and `batch-b`=`2` with `set-many`,
//!   reads them and `batch-missing` with `get-many`, deletes both with `delete-many`, and
//!   answers `batch-a=1,batch-b=2,batch-missing=-;exists-after-delete=false`.
//! - `GET /cas/<key>` adds 1 to the counter through `wasi:keyvalue@0.2.0-draft2`
//!   compare-and-swap (retrying when another writer got there first) and answers the new value.
//! - `GET /dec/<key>` subtracts 1 through the draft2 signed `increment` and answers the result.
//! - A storage error (for example a missing `wasi:keyvalue` link) answers `500` with the error.

mod keyvalue {
    wit_bindgen::generate!({
        path: "../../wit/deps/wasi-keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
    });
}

mod keyvalue_draft2 {
    wit_bindgen::generate!({
        path: "../../wit/deps/wasi-keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports",
    });
}

use keyvalue::wasi::keyvalue::{atomics, batch, store};
use keyvalue_draft2::wasi::keyvalue::{atomics as atomics2, store as store2};
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Counter);

/// The component's export implementation.
struct Counter;

/// The bucket every count lives in.
const BUCKET: &str = "default";

impl wasi::exports::http::incoming_handler::Guest for Counter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let path = path_with_query.split('?').next().unwrap_or("/");
        let result = match (path, path.strip_prefix("/get/")) {
            ("/keys", _) => list_keys(),
            ("/batch", _) => exercise_batch(),
            _ if path.starts_with("/cas/") => compare_and_swap(&key_for(&path[5..])),
            _ if path.starts_with("/dec/") => decrement(&key_for(&path[5..])),
            (_, Some(key)) => read(&key_for(key)).map(|n| n.to_string()),
            (_, None) => increment(&key_for(path.trim_start_matches('/'))).map(|n| n.to_string()),
        };
        match result {
            Ok(text) => respond(response_out, 200, text.as_bytes()),
            Err(message) => respond(response_out, 500, format!("{message}\n").as_bytes()),
        }
    }
}

/// The storage key for a path: `counter` when empty, unsupported characters as `_`.
fn key_for(path: &str) -> String {
    if path.is_empty() {
        return "counter".to_string();
    }
    path.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn describe(error: store::Error) -> String {
    match error {
        store::Error::NoSuchStore => "keyvalue error: no such store".to_string(),
        store::Error::AccessDenied => "keyvalue error: access denied".to_string(),
        store::Error::Other(message) => format!("keyvalue error: {message}"),
    }
}

fn increment(key: &str) -> Result<u64, String> {
    let bucket = store::open(BUCKET).map_err(describe)?;
    atomics::increment(&bucket, key, 1).map_err(describe)
}

fn read(key: &str) -> Result<u64, String> {
    let bucket = store::open(BUCKET).map_err(describe)?;
    match bucket.get(key).map_err(describe)? {
        None => Ok(0),
        Some(bytes) => String::from_utf8_lossy(&bytes)
            .trim()
            .parse()
            .map_err(|_| format!("the value of `{key}` is not a number")),
    }
}

fn list_keys() -> Result<String, String> {
    let bucket = store::open(BUCKET).map_err(describe)?;
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = bucket.list_keys(cursor).map_err(describe)?;
        keys.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    keys.sort();
    Ok(keys.join("\n"))
}

fn exercise_batch() -> Result<String, String> {
    let bucket = store::open(BUCKET).map_err(describe)?;
    batch::set_many(
        &bucket,
        &[
            ("batch-a".to_string(), b"1".to_vec()),
            ("batch-b".to_string(), b"2".to_vec()),
        ],
    )
    .map_err(describe)?;
    let wanted = ["batch-a", "batch-b", "batch-missing"].map(str::to_string);
    let values = batch::get_many(&bucket, &wanted).map_err(describe)?;
    let shown: Vec<String> = wanted
        .iter()
        .zip(values)
        .map(|(key, value)| match value {
            Some((_, bytes)) => format!("{key}={}", String::from_utf8_lossy(&bytes)),
            None => format!("{key}=-"),
        })
        .collect();
    batch::delete_many(&bucket, &wanted[..2]).map_err(describe)?;
    let exists = bucket.exists("batch-a").map_err(describe)?;
    Ok(format!("{};exists-after-delete={exists}", shown.join(",")))
}

fn describe2(error: store2::Error) -> String {
    match error {
        store2::Error::NoSuchStore => "keyvalue error: no such store".to_string(),
        store2::Error::AccessDenied => "keyvalue error: access denied".to_string(),
        store2::Error::Other(message) => format!("keyvalue error: {message}"),
    }
}

fn compare_and_swap(key: &str) -> Result<String, String> {
    let bucket = store2::open(BUCKET).map_err(describe2)?;
    let mut cas = atomics2::Cas::new(&bucket, key).map_err(describe2)?;
    for _ in 0..100 {
        let current: i64 = match cas.current().map_err(describe2)? {
            None => 0,
            Some(bytes) => String::from_utf8_lossy(&bytes)
                .trim()
                .parse()
                .map_err(|_| format!("the value of `{key}` is not a number"))?,
        };
        let next = current + 1;
        match atomics2::swap(cas, next.to_string().as_bytes()) {
            Ok(()) => return Ok(next.to_string()),
            Err(atomics2::CasError::CasFailed(retry)) => cas = retry,
            Err(atomics2::CasError::StoreError(e)) => return Err(describe2(e)),
        }
    }
    Err(format!("`{key}` kept changing; gave up"))
}

fn decrement(key: &str) -> Result<String, String> {
    let bucket = store2::open(BUCKET).map_err(describe2)?;
    atomics2::increment(&bucket, key, -1)
        .map(|n| n.to_string())
        .map_err(describe2)
}

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

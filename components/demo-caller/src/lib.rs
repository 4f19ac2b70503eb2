//! demo-caller: imports `trellis:demo/inventory@0.1.0` and exports `wasi:http/incoming-handler`.
//!
//! Routes (method is ignored):
//! - `/` or `/all`: calls every inventory function, checks each result against the value the
//!   deterministic demo-callee must return, and answers `200 ok: <n> calls checked` or
//!   `500 failed: <function>: <what differed>`.
//! - `/values`: calls every function and answers 200 with one line per function,
//!   `name = <Debug rendering of the result>`, so tests can check each value kind.
//! - `/bench?n=N`: calls `integers` N times (default 1000), answers `200 ok: N calls`.
//! - `/via?link=NAME`: picks link NAME for `trellis:demo/inventory` with
//!   `wasmcloud:bus/lattice@2.0.0` `set-link-name`, then calls `integers` once. Answers
//!   `200 via NAME: ok`, `409 set-link-name NAME: <error>` when the component has no such link,
//!   or traps if the call fails (so the host answers 500 with the reason).
//! - `/blob?len=N`: asks the callee for an N-byte list (`blob`), sends it back (`checksum`) and
//!   checks the sum: exercises large payloads both ways. Answers `200 ok: <len> bytes, sum <s>`.

wit_bindgen::generate!({
    path: "../../wit/trellis-demo",
    world: "caller",
});

mod bus {
    wit_bindgen::generate!({
        path: "../../wit/deps/wasmcloud-bus-2.0.0",
        world: "wasmcloud:bus/imports",
    });
}

use bus::wasmcloud::bus::lattice::{set_link_name, CallTargetInterface};
use trellis::demo::inventory::{
    self as inv, Category, Dimensions, Item, StockError, StockEvent, Tags,
};
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Caller;

/// The sample item every check starts from.
fn sample_item() -> Item {
    Item {
        sku: "SKU-001".to_string(),
        name: "Hammer \u{1F528} ünïcödé".to_string(),
        category: Category::Tool,
        tags: Tags::FRAGILE | Tags::HAZARDOUS,
        quantity: 10,
        price_cents: u64::MAX - 7,
        dims: Some(Dimensions {
            width: 1.5,
            height: -2.25,
            depth: 1e300,
        }),
        grade: 'Ω',
        location: (255, 65_535, -128),
        history: vec![i64::MIN, -1, 0, 1, i64::MAX],
    }
}

/// Compares two items field by field (the generated type has no PartialEq).
fn same_item(a: &Item, b: &Item) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

fn check(name: &str, ok: bool, detail: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{name}: {}", detail()))
    }
}

/// Calls every function and checks the results. Returns the number of calls checked.
fn run_all_checks() -> Result<usize, String> {
    let item = sample_item();
    let mut calls = 0usize;

    let echoed = inv::echo_item(&item);
    calls += 1;
    check("echo-item", same_item(&echoed, &item), || {
        format!("{echoed:?}")
    })?;

    let received = inv::apply_event(&item, &StockEvent::Received(5));
    calls += 1;
    check(
        "apply-event received",
        matches!(&received, Ok(i) if i.quantity == 15 && i.history.last() == Some(&15)),
        || format!("{received:?}"),
    )?;

    let shipped = inv::apply_event(&item, &StockEvent::Shipped(("acme".to_string(), 11)));
    calls += 1;
    check(
        "apply-event shipped",
        matches!(shipped, Err(StockError::NotEnough(10))),
        || format!("{shipped:?}"),
    )?;

    let lost = inv::apply_event(&item, &StockEvent::Lost);
    calls += 1;
    check(
        "apply-event lost",
        matches!(lost, Err(StockError::ItemLost)),
        || format!("{lost:?}"),
    )?;

    let adjusted = inv::apply_event(&item, &StockEvent::Adjusted(-11));
    calls += 1;
    check(
        "apply-event adjusted",
        matches!(&adjusted, Err(StockError::Invalid(m)) if m == "quantity would be -1"),
        || format!("{adjusted:?}"),
    )?;

    let mut other = sample_item();
    other.sku = "SKU-002".to_string();
    other.dims = None;
    let items = vec![item.clone(), other.clone()];
    let found = inv::find(&items, "SKU-002");
    calls += 1;
    check(
        "find present",
        matches!(&found, Some(i) if same_item(i, &other)),
        || format!("{found:?}"),
    )?;
    let missing = inv::find(&items, "nope");
    calls += 1;
    check("find missing", missing.is_none(), || format!("{missing:?}"))?;

    let ints = inv::integers(i8::MAX, u8::MAX, -2, 7, i32::MIN, 41, -1, u64::MAX);
    calls += 1;
    check(
        "integers",
        ints == (i8::MIN, 0, -1, 8, i32::MIN + 1, 42, 0, 0),
        || format!("{ints:?}"),
    )?;

    let floats = inv::floats(1.25, -3.0);
    calls += 1;
    check("floats", floats == (2.5, -1.5), || format!("{floats:?}"))?;

    let shouted = inv::shout("héllo wörld", '!');
    calls += 1;
    check("shout", shouted == "HÉLLO WÖRLD!!!", || shouted.clone())?;

    let toggled = inv::toggle(Tags::FRAGILE | Tags::PERISHABLE);
    calls += 1;
    check("toggle", toggled == (Tags::HEAVY | Tags::HAZARDOUS), || {
        format!("{toggled:?}")
    })?;

    let next = inv::next_category(Category::Consumable);
    calls += 1;
    check("next-category", next == Category::Tool, || {
        format!("{next:?}")
    })?;

    let sum = inv::checksum(&[1, 2, 3, 250]);
    calls += 1;
    check("checksum", sum == Ok(256), || format!("{sum:?}"))?;
    let empty = inv::checksum(&[]);
    calls += 1;
    check("checksum empty", empty == Err("empty".to_string()), || {
        format!("{empty:?}")
    })?;

    let blob = inv::blob(300);
    calls += 1;
    check(
        "blob",
        blob.len() == 300
            && blob
                .iter()
                .enumerate()
                .all(|(i, b)| usize::from(*b) == i % 251),
        || format!("{} bytes", blob.len()),
    )?;

    let fine = inv::maybe_fail(false);
    calls += 1;
    check("maybe-fail false", fine.is_ok(), || format!("{fine:?}"))?;
    let failed = inv::maybe_fail(true);
    calls += 1;
    check(
        "maybe-fail true",
        failed == Err("asked to fail".to_string()),
        || format!("{failed:?}"),
    )?;

    Ok(calls)
}

/// Calls every function once and renders each result with `Debug`, one line per function.
fn render_values() -> String {
    let item = sample_item();
    let mut other = sample_item();
    other.sku = "SKU-002".to_string();
    other.dims = None;
    let lines = [
        format!("echo-item = {:?}", inv::echo_item(&item)),
        format!(
            "apply-event = {:?}",
            inv::apply_event(&item, &StockEvent::Received(5))
        ),
        format!(
            "apply-event-error = {:?}",
            inv::apply_event(&item, &StockEvent::Shipped(("acme".to_string(), 11)))
        ),
        format!("find = {:?}", inv::find(&[item.clone(), other], "SKU-002")),
        format!(
            "integers = {:?}",
            inv::integers(i8::MAX, u8::MAX, -2, 7, i32::MIN, 41, -1, u64::MAX)
        ),
        format!("floats = {:?}", inv::floats(1.25, -3.0)),
        format!("shout = {:?}", inv::shout("héllo wörld", '!')),
        format!(
            "toggle = {:?}",
            inv::toggle(Tags::FRAGILE | Tags::PERISHABLE)
        ),
        format!(
            "next-category = {:?}",
            inv::next_category(Category::Consumable)
        ),
        format!("checksum = {:?}", inv::checksum(&[1, 2, 3, 250])),
        format!("blob = {:?}", inv::blob(8)),
        format!("maybe-fail = {:?}", inv::maybe_fail(true)),
    ];
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Value of `key` in the query string of `path_with_query`, if present.
fn query_param<'a>(path_with_query: &'a str, key: &str) -> Option<&'a str> {
    let (_, query) = path_with_query.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn route(path_with_query: &str) -> (u16, String) {
    let path = path_with_query.split('?').next().unwrap_or("/");
    match path {
        "/" | "/all" => match run_all_checks() {
            Ok(calls) => (200, format!("ok: {calls} calls checked\n")),
            Err(failure) => (500, format!("failed: {failure}\n")),
        },
        "/values" => (200, render_values()),
        "/bench" => {
            let n = match query_param(path_with_query, "n").map(str::parse::<u32>) {
                None => 1000,
                Some(Ok(n)) => n,
                Some(Err(e)) => return (400, format!("bad n: {e}\n")),
            };
            for i in 0..n {
                let got = inv::integers(1, 2, 3, 4, 5, 6, 7, u64::from(i));
                if got.7 != u64::from(i) + 1 {
                    return (500, format!("failed: integers call {i} returned {got:?}\n"));
                }
            }
            (200, format!("ok: {n} calls\n"))
        }
        "/via" => {
            let link = query_param(path_with_query, "link").unwrap_or("default");
            let target = CallTargetInterface::new("trellis", "demo", "inventory");
            if let Err(e) = set_link_name(link, vec![target]) {
                return (409, format!("set-link-name {link}: {e}\n"));
            }
            let got = inv::integers(1, 2, 3, 4, 5, 6, 7, 41);
            if got.7 != 42 {
                return (
                    500,
                    format!("failed: integers via {link} returned {got:?}\n"),
                );
            }
            (200, format!("via {link}: ok\n"))
        }
        "/blob" => {
            let len = match query_param(path_with_query, "len").map(str::parse::<u32>) {
                None => 1024,
                Some(Ok(n)) => n,
                Some(Err(e)) => return (400, format!("bad len: {e}\n")),
            };
            let blob = inv::blob(len);
            if blob.len() != len as usize {
                return (500, format!("failed: blob returned {} bytes\n", blob.len()));
            }
            let expected = blob
                .iter()
                .fold(0u32, |sum, byte| sum.wrapping_add(u32::from(*byte)));
            match inv::checksum(&blob) {
                Ok(sum) if sum == expected => (200, format!("ok: {len} bytes, sum {sum}\n")),
                Err(e) if len == 0 && e == "empty" => (200, "ok: 0 bytes, sum 0\n".to_string()),
                other => (
                    500,
                    format!("failed: checksum returned {other:?}, expected {expected}\n"),
                ),
            }
        }
        _ => (404, format!("not found: {path}\n")),
    }
}

impl wasi::exports::http::incoming_handler::Guest for Caller {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (status, body) = route(&path);

        let headers = Fields::new();
        // Setting a well-formed header cannot fail; ignore the impossible error.
        let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let Ok(outgoing_body) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = outgoing_body.write() {
            for chunk in body.as_bytes().chunks(4096) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    break;
                }
            }
            drop(stream);
        }
        let _ = OutgoingBody::finish(outgoing_body, None);
    }
}

wasi::http::proxy::export!(Caller with_types_in wasi);

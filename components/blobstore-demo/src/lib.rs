//! `blobstore-demo`: an HTTP component that drives `wasi:blobstore@0.2.0-draft` the way
//! wasmCloud's `blobby` and `http-blobstore` examples do, with routes a test can check.
//!
//! Path segments are percent-decoded, so `%2F` puts a `/` into a name. Every route is `GET`:
//!
//! - `/create/{c}`, `/delete-container/{c}`, `/exists/{c}`, `/container-info/{c}`, `/clear/{c}`
//! - `/write/{c}/{o}?bytes=N` (or `?mb=N`): creates or replaces `{o}` with N bytes of the
//!   deterministic stream described below, written 64 KiB at a time through the
//!   outgoing-value's output stream after `write-data` (as `blobby` does); answers
//!   `size=N fnv=HEX` (FNV-1a 64 of the data).
//! - `/write-before/{c}/{o}?bytes=N`: the same, but the data is written before `write-data`
//!   (as the `http-blobstore` example does).
//! - `/abandon/{c}/{o}?bytes=N`: starts a write and drops the outgoing-value without `finish`.
//! - `/read/{c}/{o}[?start=S&end=E]`: streams the object (or bytes S..=E) back as the body,
//!   through `incoming-value-consume-async`; header `x-object-size` has the object's size.
//! - `/sync/{c}/{o}[?start=S&end=E]`: the same through `incoming-value-consume-sync`.
//! - `/hash/{c}/{o}`: reads the object through the stream and answers `size=N fnv=HEX`.
//! - `/list/{c}`: every object name, one per line (read 2 at a time from the name stream).
//! - `/info/{c}/{o}`, `/has/{c}/{o}`, `/delete/{c}/{o}`
//! - `/copy/{c}/{o}/{c2}/{o2}`, `/move/{c}/{o}/{c2}/{o2}`
//!
//! A blobstore error answers `500` with the error text; an unknown route `404`.
//!
//! The generated data is xorshift64* from seed `0x9E3779B97F4A7C15`, each output word written
//! little-endian, cut to N bytes.

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/deps/wasi-blobstore-0.2.0-draft",
        world: "wasi:blobstore/imports",
        generate_all,
    });
}

use bindings::wasi::blobstore::blobstore;
use bindings::wasi::blobstore::container::Container;
use bindings::wasi::blobstore::types::{IncomingValue, ObjectId, OutgoingValue};
use bindings::wasi::io::streams as bs_streams;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Demo);

/// The component's export implementation.
struct Demo;

/// Bytes per write and per read.
const CHUNK: usize = 64 * 1024;

/// The deterministic data stream.
struct Generator {
    state: u64,
    pending: Vec<u8>,
}

impl Generator {
    fn new() -> Self {
        Self {
            state: 0x9E37_79B9_7F4A_7C15,
            pending: Vec::new(),
        }
    }

    /// The next `n` bytes.
    fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        out.clear();
        out.extend(self.pending.drain(..self.pending.len().min(n)));
        while out.len() < n {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            let take = (n - out.len()).min(8);
            out.extend_from_slice(&word[..take]);
            self.pending.extend_from_slice(&word[take..]);
        }
    }
}

/// FNV-1a 64.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// What a route answers.
enum Reply {
    Text(u16, String),
    /// A `200` with these bytes as the body.
    Bytes(Vec<u8>),
    /// Stream this value as the body, with the object's size in a header.
    Stream(bs_streams::InputStream, u64),
}

impl wasi::exports::http::incoming_handler::Guest for Demo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let param = |name: &str| -> Option<u64> {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.parse().ok())
        };
        let size = param("bytes").or_else(|| param("mb").map(|mb| mb << 20));
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
        let reply = match seg.as_slice() {
            ["create", c] => blobstore::create_container(c).map(|_| ok("created")),
            ["delete-container", c] => blobstore::delete_container(c).map(|_| ok("deleted")),
            ["exists", c] => blobstore::container_exists(c).map(|e| ok(&e.to_string())),
            ["container-info", c] => container_info(c),
            ["clear", c] => blobstore::get_container(c)
                .and_then(|c| c.clear())
                .map(|_| ok("cleared")),
            ["write", c, o] => write(c, o, size.unwrap_or(0), false),
            ["write-before", c, o] => write(c, o, size.unwrap_or(0), true),
            ["abandon", c, o] => abandon(c, o, size.unwrap_or(0)),
            ["read", c, o] => read(c, o, param("start"), param("end")),
            ["sync", c, o] => read_sync(c, o, param("start"), param("end")),
            ["hash", c, o] => hash(c, o),
            ["list", c] => list(c),
            ["info", c, o] => blobstore::get_container(c)
                .and_then(|c| c.object_info(o))
                .map(|m| {
                    ok(&format!(
                        "size={} container={} name={}",
                        m.size, m.container, m.name
                    ))
                }),
            ["has", c, o] => blobstore::get_container(c)
                .and_then(|c| c.has_object(o))
                .map(|h| ok(&h.to_string())),
            ["delete", c, o] => blobstore::get_container(c)
                .and_then(|c| c.delete_object(o))
                .map(|_| ok("deleted")),
            ["copy", c, o, c2, o2] => {
                blobstore::copy_object(&id(c, o), &id(c2, o2)).map(|_| ok("copied"))
            }
            ["move", c, o, c2, o2] => {
                blobstore::move_object(&id(c, o), &id(c2, o2)).map(|_| ok("moved"))
            }
            _ => Ok(Reply::Text(404, format!("no route for {path}\n"))),
        };
        match reply {
            Ok(Reply::Text(status, text)) => respond(response_out, status, text.as_bytes()),
            Ok(Reply::Bytes(bytes)) => respond(response_out, 200, &bytes),
            Ok(Reply::Stream(stream, size)) => stream_back(response_out, stream, size),
            Err(message) => respond(response_out, 500, format!("{message}\n").as_bytes()),
        }
    }
}

fn ok(text: &str) -> Reply {
    Reply::Text(200, text.to_string())
}

fn id(container: &str, object: &str) -> ObjectId {
    ObjectId {
        container: container.to_string(),
        object: object.to_string(),
    }
}

fn percent_decode(segment: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn container_info(name: &str) -> Result<Reply, String> {
    let container = blobstore::get_container(name)?;
    let info = container.info()?;
    Ok(ok(&format!(
        "name={} created_at={}",
        info.name, info.created_at
    )))
}

/// Writes all of `data` to a blobstore output stream, waiting for capacity.
fn write_all(stream: &bs_streams::OutputStream, mut data: &[u8]) -> Result<(), String> {
    while !data.is_empty() {
        let room = stream
            .check_write()
            .map_err(|e| format!("blobstore stream: {}", describe_stream(e)))?;
        if room == 0 {
            stream.subscribe().block();
            continue;
        }
        let n = data.len().min(room as usize);
        stream
            .write(&data[..n])
            .map_err(|e| format!("blobstore stream: {}", describe_stream(e)))?;
        data = &data[n..];
    }
    Ok(())
}

fn describe_stream(error: bs_streams::StreamError) -> String {
    match error {
        bs_streams::StreamError::LastOperationFailed(e) => e.to_debug_string(),
        bs_streams::StreamError::Closed => "closed".to_string(),
    }
}

/// Streams `size` generated bytes into `stream`; returns the FNV of what was written.
fn generate_into(stream: &bs_streams::OutputStream, size: u64) -> Result<u64, String> {
    let mut generator = Generator::new();
    let mut fnv = Fnv::new();
    let mut buf = Vec::with_capacity(CHUNK);
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        generator.fill(&mut buf, n);
        fnv.update(&buf);
        write_all(stream, &buf)?;
        left -= n as u64;
    }
    Ok(fnv.0)
}

fn write(container: &str, object: &str, size: u64, data_first: bool) -> Result<Reply, String> {
    let container: Container = blobstore::get_container(container)?;
    let value = OutgoingValue::new_outgoing_value();
    let stream = value
        .outgoing_value_write_body()
        .map_err(|()| "the outgoing-value's body was already taken".to_string())?;
    let fnv = if data_first {
        let fnv = generate_into(&stream, size)?;
        container.write_data(object, &value)?;
        fnv
    } else {
        container.write_data(object, &value)?;
        generate_into(&stream, size)?
    };
    drop(stream);
    OutgoingValue::finish(value)?;
    Ok(ok(&format!("size={size} fnv={fnv:016x}")))
}

fn abandon(container: &str, object: &str, size: u64) -> Result<Reply, String> {
    let container: Container = blobstore::get_container(container)?;
    let value = OutgoingValue::new_outgoing_value();
    let stream = value
        .outgoing_value_write_body()
        .map_err(|()| "the outgoing-value's body was already taken".to_string())?;
    container.write_data(object, &value)?;
    generate_into(&stream, size)?;
    drop(stream);
    drop(value);
    Ok(ok("abandoned"))
}

fn open_range(
    container: &str,
    object: &str,
    start: Option<u64>,
    end: Option<u64>,
) -> Result<(IncomingValue, u64), String> {
    let container = blobstore::get_container(container)?;
    let meta = container.object_info(object)?;
    let start = start.unwrap_or(0);
    let end = end.unwrap_or(meta.size.saturating_sub(1));
    let value = container.get_data(object, start, end)?;
    Ok((value, meta.size))
}

fn read(
    container: &str,
    object: &str,
    start: Option<u64>,
    end: Option<u64>,
) -> Result<Reply, String> {
    let (value, size) = open_range(container, object, start, end)?;
    let stream = IncomingValue::incoming_value_consume_async(value)?;
    Ok(Reply::Stream(stream, size))
}

fn read_sync(
    container: &str,
    object: &str,
    start: Option<u64>,
    end: Option<u64>,
) -> Result<Reply, String> {
    let (value, _) = open_range(container, object, start, end)?;
    let bytes = IncomingValue::incoming_value_consume_sync(value)?;
    Ok(Reply::Bytes(bytes))
}

fn hash(container: &str, object: &str) -> Result<Reply, String> {
    let (value, _) = open_range(container, object, None, None)?;
    let expected = value.size();
    let stream = IncomingValue::incoming_value_consume_async(value)?;
    let mut fnv = Fnv::new();
    let mut total = 0u64;
    loop {
        match stream.blocking_read(CHUNK as u64) {
            Ok(bytes) => {
                fnv.update(&bytes);
                total += bytes.len() as u64;
            }
            Err(bs_streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("reading the object: {}", describe_stream(e))),
        }
    }
    if total != expected {
        return Err(format!("read {total} bytes, the value said {expected}"));
    }
    Ok(ok(&format!("size={total} fnv={:016x}", fnv.0)))
}

fn list(container: &str) -> Result<Reply, String> {
    let container = blobstore::get_container(container)?;
    let names = container.list_objects()?;
    let mut all = Vec::new();
    loop {
        let (page, end) = names.read_stream_object_names(2)?;
        all.extend(page);
        if end {
            break;
        }
    }
    Ok(ok(&all.join("\n")))
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
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Streams a blobstore input stream as the response body.
fn stream_back(response_out: ResponseOutparam, input: bs_streams::InputStream, size: u64) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"application/octet-stream".to_vec()]);
    let _ = headers.set("x-object-size", &[size.to_string().into_bytes()]);
    let response = OutgoingResponse::new(headers);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    let Ok(output) = outgoing.write() else {
        return;
    };
    loop {
        let bytes = match input.blocking_read(CHUNK as u64) {
            Ok(bytes) => bytes,
            Err(bs_streams::StreamError::Closed) => break,
            // A failed read must not look like a complete body: leave without finishing.
            Err(_) => return,
        };
        let mut data = bytes.as_slice();
        while !data.is_empty() {
            let room = match output.check_write() {
                Ok(0) => {
                    output.subscribe().block();
                    continue;
                }
                Ok(room) => room as usize,
                Err(_) => return,
            };
            let n = data.len().min(room);
            if output.write(&data[..n]).is_err() {
                return;
            }
            data = &data[n..];
        }
    }
    let _ = output.blocking_flush();
    drop(output);
    let _ = OutgoingBody::finish(outgoing, None);
}

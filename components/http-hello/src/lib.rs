//! `http-hello`: a `wasi:http/proxy` component used to exercise the Trellis runtime.
//!
//! Routes (the query string is ignored):
//! - `/`       200 `Hello from Trellis!\n`
//! - `/echo`   200, streams the request body back in chunks (works for bodies of several MB)
//! - `/trap`   panics, which traps the instance
//! - `/count`  reads the whole request body, then answers 200 `read N bytes\n`, or 400
//!   `reading the request body failed: ERROR\n` when the read fails (e.g. past the server's
//!   body limit)
//! - `/stream-trap` answers 200, streams two parts 100 ms apart, then panics mid-body (the
//!   client must see an incomplete response)
//! - `/loop`   spins forever (used to test execution deadlines)
//! - `/grow`   allocates memory without bound (used to test memory limits)
//! - `/stdout` prints a line to stdout and a line to stderr, then answers 200 `printed\n`
//! - `/fetch?target=HOST:PORT/PATH` makes an outgoing `GET http://HOST:PORT/PATH` and answers
//!   200 `upstream status N\n`, or 502 `outgoing request failed: ERROR\n` (e.g. when the host
//!   denies the destination)
//! - `/fs-read?PATH` reads the file PATH (e.g. in a directory the host mounted) and answers
//!   200 with its contents, or 403 `ERROR\n` when it cannot be read
//! - `/fs-write?PATH` creates (or truncates) the file PATH and writes `written\n` to it;
//!   answers 200 `written\n`, or 403 `ERROR\n` when that is refused (a read-only mount)
//! - anything else: 404

use std::io::Write as _;

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};
use wasi::io::streams::StreamError;

wasi::http::proxy::export!(HttpHello);

/// The component's export implementation.
struct HttpHello;

/// Largest chunk read from the request body at once by `/echo`.
const ECHO_CHUNK: u64 = 64 * 1024;

impl wasi::exports::http::incoming_handler::Guest for HttpHello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let path = path_with_query.split('?').next().unwrap_or("/").to_string();
        match path.as_str() {
            "/" => respond(response_out, 200, b"Hello from Trellis!\n"),
            "/echo" => echo(request, response_out),
            "/trap" => panic!("the /trap route panics on purpose"),
            "/count" => count(request, response_out),
            "/stream-trap" => stream_then_trap(response_out),
            "/loop" => spin_forever(),
            "/grow" => grow_forever(),
            "/stdout" => {
                println!("hello from http-hello on stdout");
                eprintln!("hello from http-hello on stderr");
                respond(response_out, 200, b"printed\n");
            }
            "/fetch" => {
                let target = path_with_query
                    .split_once("?target=")
                    .map(|(_, target)| target.to_string())
                    .unwrap_or_default();
                match fetch(&target) {
                    Ok(status) => respond(
                        response_out,
                        200,
                        format!("upstream status {status}\n").as_bytes(),
                    ),
                    Err(error) => respond(
                        response_out,
                        502,
                        format!("outgoing request failed: {error}\n").as_bytes(),
                    ),
                }
            }
            "/fs-read" => {
                let target = path_with_query.split_once('?').map_or("", |(_, t)| t);
                match std::fs::read(target) {
                    Ok(contents) => respond(response_out, 200, &contents),
                    Err(error) => respond(response_out, 403, format!("{error}\n").as_bytes()),
                }
            }
            "/fs-write" => {
                let target = path_with_query.split_once('?').map_or("", |(_, t)| t);
                match std::fs::write(target, b"written\n") {
                    Ok(()) => respond(response_out, 200, b"written\n"),
                    Err(error) => respond(response_out, 403, format!("{error}\n").as_bytes()),
                }
            }
            _ => respond(response_out, 404, b"not found\n"),
        }
    }
}

/// Sends a complete response with `body`.
fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("outgoing body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    {
        let mut stream = outgoing.write().expect("output stream is taken once");
        stream.write_all(body).expect("writing the response body");
        stream.flush().expect("flushing the response body");
    }
    OutgoingBody::finish(outgoing, None).expect("finishing the response body");
}

/// Streams the request body back to the caller chunk by chunk.
fn echo(request: IncomingRequest, response_out: ResponseOutparam) {
    let incoming = request.consume().expect("request body is consumed once");
    let input = incoming.stream().expect("input stream is taken once");

    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().expect("outgoing body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    {
        let mut output = outgoing.write().expect("output stream is taken once");
        loop {
            match input.blocking_read(ECHO_CHUNK) {
                Ok(chunk) => output.write_all(&chunk).expect("writing the echoed chunk"),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(err)) => {
                    panic!("reading the request body failed: {}", err.to_debug_string())
                }
            }
        }
        output.flush().expect("flushing the echoed body");
    }
    drop(input);
    OutgoingBody::finish(outgoing, None).expect("finishing the echoed body");
}

/// Reads the whole request body and answers with its length (or the read error).
fn count(request: IncomingRequest, response_out: ResponseOutparam) {
    let incoming = request.consume().expect("request body is consumed once");
    let input = incoming.stream().expect("input stream is taken once");
    let mut total: u64 = 0;
    let failure = loop {
        match input.blocking_read(ECHO_CHUNK) {
            Ok(chunk) => total += chunk.len() as u64,
            Err(StreamError::Closed) => break None,
            Err(StreamError::LastOperationFailed(err)) => break Some(err.to_debug_string()),
        }
    };
    drop(input);
    match failure {
        None => respond(
            response_out,
            200,
            format!("read {total} bytes\n").as_bytes(),
        ),
        Some(error) => respond(
            response_out,
            400,
            format!("reading the request body failed after {total} bytes: {error}\n").as_bytes(),
        ),
    }
}

/// Starts a streamed 200 response, sends two parts, then traps before finishing it.
fn stream_then_trap(response_out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().expect("outgoing body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut output = outgoing.write().expect("output stream is taken once");
    for part in [&b"first part\n"[..], &b"second part\n"[..]] {
        output.write_all(part).expect("writing a part");
        output.flush().expect("flushing a part");
        wasi::clocks::monotonic_clock::subscribe_duration(100_000_000).block();
    }
    panic!("the /stream-trap route panics mid-body on purpose");
}

/// Sends `GET http://{target}` and returns the response status.
fn fetch(target: &str) -> Result<u16, String> {
    let (authority, path) = match target.split_once('/') {
        Some((authority, path)) => (authority.to_string(), format!("/{path}")),
        None => (target.to_string(), "/".to_string()),
    };
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| "invalid scheme".to_string())?;
    request
        .set_authority(Some(&authority))
        .map_err(|()| format!("invalid authority {authority:?}"))?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| format!("invalid path {path:?}"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|code| format!("{code:?}"))?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response.status()),
        Some(Ok(Err(code))) => Err(format!("{code:?}")),
        Some(Err(())) => Err("response already taken".to_string()),
        None => Err("response not ready".to_string()),
    }
}

/// Never returns: burns CPU until the host interrupts the instance.
fn spin_forever() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

/// Never returns: allocates and touches memory until the host refuses to grow it.
fn grow_forever() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let block = vec![1u8; 1024 * 1024];
        hoard.push(std::hint::black_box(block));
    }
}

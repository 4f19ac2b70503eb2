//! `http-fetch`: a `wasi:http/proxy` component that fetches a URL with
//! `wasi:http/outgoing-handler`, like wasmCloud's `http-client` example. It needs a link to an
//! http-client provider (namespace `wasi`, package `http`, interface `outgoing-handler`).
//!
//! - `GET /fetch?url=URL` (URL percent-encoded or plain, `http://` or `https://`) sends
//!   `GET URL` and answers with the upstream's status and body; or 502
//!   `outgoing request failed: ERROR\n` when the host refuses the request or it fails
//!   (e.g. no link, a destination outside `allowed_hosts`, a timeout).
//! - anything else: 404.

use std::io::{Read as _, Write as _};

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasi::http::proxy::export!(HttpFetch);

/// The component's export implementation.
struct HttpFetch;

/// The most of the upstream body this component reads.
const MAX_BODY: u64 = 16 * 1024 * 1024;

impl wasi::exports::http::incoming_handler::Guest for HttpFetch {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        if path != "/fetch" {
            return respond(response_out, 404, b"not found\n");
        }
        let Some(url) = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("url="))
            .map(percent_decode)
        else {
            return respond(
                response_out,
                400,
                b"give the URL to fetch: /fetch?url=URL\n",
            );
        };
        match fetch(&url) {
            Ok((status, body)) => respond(response_out, status, &body),
            Err(error) => respond(
                response_out,
                502,
                format!("outgoing request failed: {error}\n").as_bytes(),
            ),
        }
    }
}

/// Decodes `%XX` escapes (and `+` as a space); invalid escapes are kept as they are.
fn percent_decode(text: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, other) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `GET url` and returns the response status and body.
fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!("`{url}` is not an http:// or https:// URL"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_string()),
        Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
        None => (rest, "/".to_string()),
    };
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "invalid scheme".to_string())?;
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("invalid authority {authority:?}"))?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| format!("invalid path {path:?}"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|code| format!("{code:?}"))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(format!("{code:?}")),
        Some(Err(())) => return Err("response already taken".to_string()),
        None => return Err("response not ready".to_string()),
    };
    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| "the response body was already taken".to_string())?;
    let mut body = Vec::new();
    {
        let mut stream = incoming
            .stream()
            .map_err(|()| "the response body stream was already taken".to_string())?;
        let mut limited = (&mut stream).take(MAX_BODY);
        limited
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the response body: {e}"))?;
    }
    Ok((status, body))
}

/// Sends a complete response with `body`.
fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain; charset=utf-8".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut stream) = outgoing.write() {
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

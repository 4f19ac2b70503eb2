//! Wagi: serving components that export `wasi:cli/run` (plain WASI command programs) over
//! HTTP the CGI way, as Wagi and Spin's `executor = { type = "wagi" }` did.
//!
//! A link whose source config has `executor=wagi` is served like this, per request: a fresh
//! instance of the component gets the request's metadata as CGI/1.1 environment variables
//! (RFC 3875: `REQUEST_METHOD`, `PATH_INFO`, `QUERY_STRING`, `CONTENT_TYPE`,
//! `CONTENT_LENGTH`, `SERVER_NAME`, `SERVER_PORT`, `REMOTE_ADDR`, an `HTTP_*` variable per
//! header...), the request body on stdin, and `run` is called. What it writes to stdout is the
//! response: CGI header lines (`Content-Type`, `Status`, `Location`, any other header), a
//! blank line, then the body. Stderr goes to the host's log.
//!
//! Output larger than [`MAX_OUTPUT`], output that is not a CGI response, and a program that
//! exits with a failure are answered `502 Bad Gateway` with a message; the component's
//! execution deadline (and the server's `timeout_ms`) apply as to any request. The component
//! must run on the host of the http-server provider (the call is in-process); elsewhere the
//! request is answered 503.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Body;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use super::dispatch::{text_response, too_large, LimitedBody, ResponseBody};
use super::routes::Route;
use super::settings::get_ci;
use super::wire::BodyError;
use super::{EnvState, Shared};

/// Link config key choosing how the component is called; `wagi` selects this module.
pub const EXECUTOR_KEY: &str = "executor";

/// The most a Wagi program may write to stdout (headers and body).
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// Extra time past a component's execution deadline before a call blocked in host I/O is
/// cancelled.
const HOST_IO_GRACE: Duration = Duration::from_millis(100);

/// True when a link's source config asks for the Wagi executor.
pub(crate) fn is_wagi(config: &std::collections::HashMap<String, String>) -> bool {
    get_ci(config, EXECUTOR_KEY).is_some_and(|v| v.trim().eq_ignore_ascii_case("wagi"))
}

/// The addresses of the connection a request arrived on (request extension set by the
/// listener), for `SERVER_PORT` and `REMOTE_ADDR`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionAddrs {
    /// The listener's address.
    pub local: Option<SocketAddr>,
    /// The client's address.
    pub peer: SocketAddr,
}

fn bad_gateway(component_id: &str, why: impl std::fmt::Display) -> Response<ResponseBody> {
    text_response(
        StatusCode::BAD_GATEWAY,
        format!("Wagi component {component_id} {why}"),
    )
}

/// Serves `request` with the Wagi component of `route`.
pub(crate) async fn serve<B>(
    shared: &Shared,
    route: &Route,
    request: Request<B>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BodyError>,
{
    let component_id = route.target.as_str();
    let prepared = match &shared.env.state {
        EnvState::Host(host) => host
            .components
            .get(component_id)
            .map(|c| c.prepared.clone()),
        EnvState::Standalone(_) => None,
    };
    let Some(prepared) = prepared else {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "Wagi component {component_id} does not run on this host: a link with \
                 `executor=wagi` is served in-process, so scale the component on the host of \
                 the http-server provider"
            ),
        );
    };
    let limit = prepared.limits().max_execution_time();
    let deadline = shared
        .settings
        .timeout
        .unwrap_or(limit + HOST_IO_GRACE)
        .min(limit + HOST_IO_GRACE);
    match tokio::time::timeout(deadline, run(shared, &prepared, request)).await {
        Ok(response) => response,
        Err(_) => text_response(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "Wagi component {component_id} did not answer within {} ms",
                deadline.as_millis()
            ),
        ),
    }
}

async fn run<B>(
    shared: &Shared,
    prepared: &trellis_host::runtime::PreparedComponent,
    request: Request<B>,
) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BodyError>,
{
    let component_id = prepared.id();
    let max = shared.settings.max_content_len;
    let (parts, body) = request.into_parts();
    let exceeded = Arc::new(AtomicBool::new(false));
    let body = match LimitedBody::new(body, max, exceeded.clone())
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) if exceeded.load(Ordering::SeqCst) => return too_large(max),
        Err(error) => {
            return text_response(
                StatusCode::BAD_REQUEST,
                format!("reading the request body failed: {error:?}"),
            )
        }
    };
    let env = cgi_environment(&parts, body.len());
    let args = vec![component_id.to_string()];
    let stdout = MemoryOutputPipe::new(MAX_OUTPUT);
    let mut invocation = match prepared.instantiate().await {
        Ok(invocation) => invocation,
        Err(error) => return text_response(error.status_code(), format!("{error}")),
    };
    if let Err(error) =
        invocation.set_command_io(&args, &env, MemoryInputPipe::new(body), stdout.clone())
    {
        return text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"));
    }
    let command = match wasmtime_wasi::p2::bindings::Command::new(
        &mut invocation.store,
        &invocation.instance,
    ) {
        Ok(command) => command,
        Err(_) => {
            return text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("component {component_id} is linked with `executor=wagi` but does not export wasi:cli/run"),
            )
        }
    };
    let outcome = command.wasi_cli_run().call_run(&mut invocation.store).await;
    let output = stdout.contents();
    if output.len() >= MAX_OUTPUT {
        return bad_gateway(
            component_id,
            format_args!("wrote more than {MAX_OUTPUT} bytes to stdout"),
        );
    }
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(())) => return bad_gateway(component_id, "exited with a failure"),
        Err(error) => match error.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(wasmtime_wasi::I32Exit(0)) => {}
            Some(wasmtime_wasi::I32Exit(code)) => {
                return bad_gateway(component_id, format_args!("exited with status {code}"))
            }
            None => {
                let error = invocation.error(error);
                return text_response(error.status_code(), format!("{error}"));
            }
        },
    }
    match parse_cgi_output(&output) {
        Ok((status, headers, body)) => {
            let mut response = Response::new(ResponseBody::other(
                http_body_util::Full::new(body).map_err(|never| match never {}),
            ));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(why) => bad_gateway(
            component_id,
            format_args!("wrote no valid CGI response: {why}"),
        ),
    }
}

/// The CGI/1.1 meta-variables for a request (RFC 3875, section 4.1).
fn cgi_environment(parts: &http::request::Parts, body_len: usize) -> Vec<(String, String)> {
    let addrs = parts.extensions.get::<ConnectionAddrs>().copied();
    let header = |name: http::header::HeaderName| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let host_header = header(http::header::HOST).unwrap_or_default();
    let server_name = match host_header.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
            name.to_string()
        }
        _ if !host_header.is_empty() => host_header.clone(),
        _ => addrs
            .and_then(|a| a.local)
            .map(|a| a.ip().to_string())
            .unwrap_or_default(),
    };
    let path = parts.uri.path().to_string();
    let mut env = vec![
        ("GATEWAY_INTERFACE", "CGI/1.1".to_string()),
        (
            "SERVER_SOFTWARE",
            format!("trellis/{}", trellis_host::VERSION),
        ),
        ("SERVER_PROTOCOL", format!("{:?}", parts.version)),
        ("REQUEST_METHOD", parts.method.as_str().to_string()),
        ("SCRIPT_NAME", String::new()),
        ("PATH_INFO", path.clone()),
        ("PATH_TRANSLATED", path),
        (
            "QUERY_STRING",
            parts.uri.query().unwrap_or_default().to_string(),
        ),
        ("SERVER_NAME", server_name),
        (
            "SERVER_PORT",
            addrs
                .and_then(|a| a.local)
                .map(|a| a.port().to_string())
                .unwrap_or_default(),
        ),
        (
            "REMOTE_ADDR",
            addrs.map(|a| a.peer.ip().to_string()).unwrap_or_default(),
        ),
        (
            "REMOTE_HOST",
            addrs.map(|a| a.peer.ip().to_string()).unwrap_or_default(),
        ),
    ];
    if let Some(content_type) = header(http::header::CONTENT_TYPE) {
        env.push(("CONTENT_TYPE", content_type));
    }
    if body_len > 0 || parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        env.push(("CONTENT_LENGTH", body_len.to_string()));
    }
    let mut env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    // One HTTP_* variable per header; credentials are not handed to the program (RFC 3875
    // 4.1.18), and the body's type and length have their own variables.
    let mut seen: Vec<(String, String)> = Vec::new();
    for (name, value) in &parts.headers {
        if matches!(
            name,
            &http::header::AUTHORIZATION
                | &http::header::PROXY_AUTHORIZATION
                | &http::header::CONTENT_TYPE
                | &http::header::CONTENT_LENGTH
        ) {
            continue;
        }
        let key = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match seen.iter_mut().find(|(k, _)| *k == key) {
            Some((_, joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            None => seen.push((key, value)),
        }
    }
    env.extend(seen);
    env
}

/// Splits a CGI program's output into status, headers and body. At least one of
/// `Content-Type`, `Location` and `Status` must be there; `Location` without `Status` means
/// 302.
fn parse_cgi_output(output: &[u8]) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let crlf = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let lf = output.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let (end, separator) = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return Err("no blank line after the headers".to_string()),
    };
    let head = std::str::from_utf8(&output[..end]).map_err(|_| "headers that are not UTF-8")?;
    let mut status = None;
    let mut headers = HeaderMap::new();
    for line in head.split('\n').map(|l| l.trim_end_matches('\r')) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line `{line}` has no colon"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            let code = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| format!("`Status: {value}` is not an HTTP status"))?;
            status = Some(code);
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        if name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::CONNECTION
        {
            // The server frames the body itself.
            continue;
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
        headers.append(name, value);
    }
    let status = match status {
        Some(status) => status,
        None if headers.contains_key(http::header::LOCATION) => StatusCode::FOUND,
        None if headers.contains_key(http::header::CONTENT_TYPE) => StatusCode::OK,
        None => return Err("none of Content-Type, Location and Status".to_string()),
    };
    let body = Bytes::copy_from_slice(&output[end + separator..]);
    Ok((status, headers, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_output_parses_status_headers_and_body() {
        let (status, headers, body) = parse_cgi_output(
            b"Content-Type: text/plain\r\nStatus: 418 I'm a teapot\r\nX-A: 1\r\n\r\nhello\n\nworld",
        )
        .expect("valid");
        assert_eq!(status, StatusCode::IM_A_TEAPOT);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["x-a"], "1");
        assert_eq!(body, "hello\n\nworld");

        let (status, headers, body) = parse_cgi_output(b"Location: /elsewhere\n\n").expect("valid");
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(headers["location"], "/elsewhere");
        assert!(body.is_empty());

        let (status, _, _) =
            parse_cgi_output(b"content-type: a/b\nContent-Length: 99\n\nx").expect("valid");
        assert_eq!(status, StatusCode::OK);
    }

    #[test]
    fn malformed_cgi_output_is_refused() {
        for bad in [
            &b"hello world"[..],
            b"Content-Type: text/plain\nhello",
            b"just text\n\nbody",
            b"X-Only: 1\n\nbody",
            b"Status: abc\n\n",
            b"Status: 99\n\n",
            b"Bad Name: x\nContent-Type: a/b\n\n",
            b"Content-Type: \xff\n\n",
        ] {
            assert!(
                parse_cgi_output(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn requests_become_cgi_variables() {
        let mut request = Request::builder()
            .method("POST")
            .uri("/echo/x?a=1&b=2")
            .header("host", "example.com:8080")
            .header("content-type", "text/plain")
            .header("content-length", "5")
            .header("x-thing", "one")
            .header("x-thing", "two")
            .header("authorization", "Bearer secret")
            .body(())
            .expect("request");
        request.extensions_mut().insert(ConnectionAddrs {
            local: Some("127.0.0.1:8080".parse().expect("addr")),
            peer: "127.0.0.2:5555".parse().expect("addr"),
        });
        let (parts, ()) = request.into_parts();
        let env: std::collections::HashMap<_, _> = cgi_environment(&parts, 5).into_iter().collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("REQUEST_METHOD"), Some("POST"));
        assert_eq!(get("PATH_INFO"), Some("/echo/x"));
        assert_eq!(get("QUERY_STRING"), Some("a=1&b=2"));
        assert_eq!(get("CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get("CONTENT_LENGTH"), Some("5"));
        assert_eq!(get("SERVER_NAME"), Some("example.com"));
        assert_eq!(get("SERVER_PORT"), Some("8080"));
        assert_eq!(get("REMOTE_ADDR"), Some("127.0.0.2"));
        assert_eq!(get("HTTP_X_THING"), Some("one, two"));
        assert_eq!(get("HTTP_HOST"), Some("example.com:8080"));
        assert_eq!(get("HTTP_AUTHORIZATION"), None);
        assert_eq!(get("HTTP_CONTENT_TYPE"), None);
    }
}

//! `static-files`: serves the files of a directory the host mounts at `/site` over
//! `wasi:http`.
//!
//! - The directory served is `/site`, or the guest path in the config key `site_root` (read
//!   through `wasi:config/store`), e.g. when the manifest mounts the folder elsewhere.
//! - `GET` and `HEAD` only (anything else: 405 with `Allow: GET, HEAD`).
//! - The URL path, percent-decoded, names a file under `/site`; a path with a `..` or `.`
//!   segment (also when encoded, `%2e%2e`), a backslash or a NUL is refused with 400, so a
//!   request never leaves the mount (the host's mount enforces the same beneath it).
//! - A directory serves its `index.html`; a directory asked without its trailing `/` is
//!   redirected (301) to it, so relative links in the page work.
//! - `Content-Type` from the file's extension (html, css, js, json, svg, png, jpg, gif, webp,
//!   ico, txt, wasm, woff2, pdf...; `application/octet-stream` otherwise).
//! - A strong `ETag` from the file's size and modification time; `If-None-Match` with it (or
//!   `*`) answers 304 without a body.
//! - `Range: bytes=a-b`, `bytes=a-` and `bytes=-n` answer 206 with `Content-Range`; a range
//!   that starts past the end answers 416 with `Content-Range: bytes */LEN`; several ranges,
//!   or a range with an `If-Range` that no longer matches, get the whole file (200). Every
//!   file answer says `Accept-Ranges: bytes`.
//! - Files are streamed in 64 KiB chunks, never read whole into memory.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod config {
    wit_bindgen::generate!({
        path: "../../wit/deps/wasi-config",
        world: "wasi:config/imports",
    });
}

wasi::http::proxy::export!(StaticFiles);

/// The guest directory served by default: where the manifest mounts the site.
const DEFAULT_ROOT: &str = "/site";
/// Config key naming another guest directory to serve.
const ROOT_KEY: &str = "site_root";
/// Bytes read from a file and written to the response at a time.
const CHUNK: usize = 64 * 1024;

/// The component's export implementation.
struct StaticFiles;

impl wasi::exports::http::incoming_handler::Guest for StaticFiles {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let head = match request.method() {
            Method::Get => false,
            Method::Head => true,
            _ => {
                return send_text(
                    response_out,
                    405,
                    &[("allow", "GET, HEAD")],
                    "only GET and HEAD are served\n",
                )
            }
        };
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let raw_path = path_with_query
            .split(['?', '#'])
            .next()
            .unwrap_or("/")
            .to_string();
        let relative = match site_path(&raw_path) {
            Ok(relative) => relative,
            Err(reason) => return send_text(response_out, 400, &[], &format!("{reason}\n")),
        };
        let mut file_path = site_root().join(&relative);
        let mut metadata = match std::fs::metadata(&file_path) {
            Ok(metadata) => metadata,
            Err(_) => return send_text(response_out, 404, &[], "not found\n"),
        };
        if metadata.is_dir() {
            if !raw_path.ends_with('/') {
                let location = format!("{raw_path}/");
                return send_text(
                    response_out,
                    301,
                    &[("location", location.as_str())],
                    "moved\n",
                );
            }
            file_path.push("index.html");
            metadata = match std::fs::metadata(&file_path) {
                Ok(metadata) if metadata.is_file() => metadata,
                _ => return send_text(response_out, 404, &[], "not found\n"),
            };
        }
        if !metadata.is_file() {
            return send_text(response_out, 404, &[], "not found\n");
        }
        let headers = RequestHeaders(request.headers());
        serve_file(&file_path, &metadata, &headers, head, response_out);
    }
}

/// The guest directory to serve: config `site_root` when it is an absolute path, else `/site`.
fn site_root() -> PathBuf {
    config::wasi::config::store::get(ROOT_KEY)
        .ok()
        .flatten()
        .filter(|root| root.starts_with('/'))
        .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from)
}

/// The request's headers, read by name.
struct RequestHeaders(Fields);

impl RequestHeaders {
    /// The first value of header `name`, if it is valid UTF-8.
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .into_iter()
            .next()
            .and_then(|value| String::from_utf8(value).ok())
    }
}

/// The file path under the root that URL path `raw` names, percent-decoded; refuses what
/// could leave the root or is not a plain path.
fn site_path(raw: &str) -> Result<PathBuf, &'static str> {
    let decoded = percent_decode(raw).ok_or("the path is not valid percent-encoded UTF-8")?;
    if decoded.contains(['\\', '\0']) {
        return Err("the path must not contain a backslash or NUL");
    }
    let mut relative = PathBuf::new();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err("the path must not contain `.` or `..` segments");
        }
        relative.push(segment);
    }
    Ok(relative)
}

/// `%XX` sequences decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The content type of `path`, by its extension.
fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// A strong validator from the file's size and modification time (as nginx makes its own):
/// it changes whenever the file is rewritten.
fn etag(metadata: &std::fs::Metadata) -> String {
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map(|since| since.as_nanos())
        .unwrap_or(0);
    format!("\"{:x}-{:x}\"", metadata.len(), modified)
}

/// Whether `If-None-Match` value `header` matches `etag` (weak comparison, as RFC 9110 asks
/// for this header).
fn none_match(header: &str, etag: &str) -> bool {
    let bare = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    header
        .split(',')
        .any(|tag| tag.trim() == "*" || bare(tag) == bare(etag))
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// Serve the whole file (no header, one we do not understand, or several ranges).
    Full,
    /// Serve bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// Nothing in the file satisfies it: 416.
    Unsatisfiable,
}

/// Parses `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` against a file of `len` bytes.
fn parse_range(header: &str, len: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        // Several ranges would need multipart/byteranges; the whole file answers them.
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix: the last n bytes.
        let Ok(n) = last.parse::<u64>() else {
            return RangeRequest::Full;
        };
        if n == 0 || len == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Part {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        len.saturating_sub(1)
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => end.min(len.saturating_sub(1)),
            _ => return RangeRequest::Full,
        }
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Part { start, end }
}

/// Answers a request for the regular file `path`.
fn serve_file(
    path: &Path,
    metadata: &std::fs::Metadata,
    request: &RequestHeaders,
    head: bool,
    response_out: ResponseOutparam,
) {
    let len = metadata.len();
    let tag = etag(metadata);
    let kind = content_type(path);
    if request
        .get("if-none-match")
        .is_some_and(|header| none_match(&header, &tag))
    {
        return send_empty(
            response_out,
            304,
            &[("etag", tag.as_str()), ("accept-ranges", "bytes")],
        );
    }
    // A Range with an If-Range that no longer names this version gets the whole file.
    let range_applies = request
        .get("if-range")
        .is_none_or(|if_range| if_range.trim() == tag);
    let range = match request.get("range") {
        Some(header) if range_applies => parse_range(&header, len),
        _ => RangeRequest::Full,
    };
    let (status, start, count, content_range) = match range {
        RangeRequest::Full => (200, 0, len, None),
        RangeRequest::Part { start, end } => (
            206,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{len}")),
        ),
        RangeRequest::Unsatisfiable => {
            let unsatisfied = format!("bytes */{len}");
            return send_text(
                response_out,
                416,
                &[
                    ("content-range", unsatisfied.as_str()),
                    ("accept-ranges", "bytes"),
                ],
                "range not satisfiable\n",
            );
        }
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(_) => return send_text(response_out, 404, &[], "not found\n"),
    };
    if start > 0 && file.seek(SeekFrom::Start(start)).is_err() {
        return send_text(response_out, 500, &[], "cannot read the file\n");
    }
    let length = count.to_string();
    let mut headers = vec![
        ("content-type", kind),
        ("etag", tag.as_str()),
        ("accept-ranges", "bytes"),
    ];
    headers.push(("content-length", length.as_str()));
    if let Some(content_range) = &content_range {
        headers.push(("content-range", content_range.as_str()));
    }
    let response = OutgoingResponse::new(fields(&headers));
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    if head {
        // The server sends no body for HEAD; the runtime may report the empty body as shorter
        // than Content-Length, which nobody reads.
        let _ = OutgoingBody::finish(body, None);
        return;
    }
    let Ok(mut stream) = body.write() else {
        return;
    };
    let mut left = count;
    let mut buffer = vec![0u8; CHUNK];
    while left > 0 {
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        let read = match file.read(&mut buffer[..want]) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if stream.write_all(&buffer[..read]).is_err() {
            // The client went away.
            return;
        }
        left -= read as u64;
    }
    let _ = stream.flush();
    drop(stream);
    if left > 0 {
        // The file shrank while it was sent: end the body with an error rather than a
        // response shorter than its Content-Length claims.
        return;
    }
    let _ = OutgoingBody::finish(body, None);
}

/// Response headers from `(name, value)` pairs.
fn fields(headers: &[(&str, &str)]) -> Fields {
    let fields = Fields::new();
    for (name, value) in headers {
        let _ = fields.append(name, value.as_bytes());
    }
    fields
}

/// Sends `status` with `headers` and no body.
fn send_empty(response_out: ResponseOutparam, status: u16, headers: &[(&str, &str)]) {
    let response = OutgoingResponse::new(fields(headers));
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    let _ = OutgoingBody::finish(body, None);
}

/// Sends `status` with `headers` and a plain-text `text` body.
fn send_text(response_out: ResponseOutparam, status: u16, headers: &[(&str, &str)], text: &str) {
    let mut all = vec![("content-type", "text/plain; charset=utf-8")];
    all.extend_from_slice(headers);
    let response = OutgoingResponse::new(fields(&all));
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut stream) = body.write() {
        let _ = stream.write_all(text.as_bytes());
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(body, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(
            parse_range("bytes=0-9", 100),
            RangeRequest::Part { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeRequest::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeRequest::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-500", 100),
            RangeRequest::Part { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=50-500", 100),
            RangeRequest::Part { start: 50, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeRequest::Full);
        assert_eq!(parse_range("bytes=9-1", 100), RangeRequest::Full);
        assert_eq!(parse_range("items=0-1", 100), RangeRequest::Full);
    }

    #[test]
    fn traversal_is_refused() {
        assert!(site_path("/../etc/passwd").is_err());
        assert!(site_path("/a/%2e%2e/%2E%2E/etc").is_err());
        assert!(site_path("/a/..%2f..%2fetc").is_err());
        assert!(site_path("/a%5c..").is_err());
        assert!(site_path("/a/%zz").is_err());
        assert_eq!(
            site_path("/css/site%20x.css").unwrap(),
            PathBuf::from("css/site x.css")
        );
    }

    #[test]
    fn etags_match() {
        assert!(none_match("\"a\"", "\"a\""));
        assert!(none_match("\"b\", W/\"a\"", "\"a\""));
        assert!(none_match("*", "\"a\""));
        assert!(!none_match("\"b\"", "\"a\""));
    }
}

//! The page's files, compiled into the binary so the dashboard works offline.

use hyper::{Response, StatusCode};

use super::{build, full, Body};

/// `(path, content type, bytes)` of every file the page uses.
const FILES: [(&str, &str, &str); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];

/// The file served at `path`, if any.
pub fn find(path: &str) -> Option<(&'static str, &'static str)> {
    let path = if path == "/index.html" { "/" } else { path };
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, content_type, text)| (*content_type, *text))
}

/// Serves the file at `path` (404 when there is none).
pub fn serve(path: &str) -> Response<Body> {
    match find(path) {
        Some((content_type, text)) => build(StatusCode::OK, content_type, full(text)),
        None => super::error_response(StatusCode::NOT_FOUND, "not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_and_its_files_are_embedded_and_reference_nothing_remote() {
        let (kind, html) = find("/").expect("index");
        assert!(kind.starts_with("text/html"));
        for file in ["/app.js", "/style.css", "/favicon.svg"] {
            assert!(find(file).is_some(), "{file}");
            assert!(html.contains(file), "index.html does not load {file}");
        }
        for (_, _, text) in FILES {
            assert!(!text.contains("https://"), "a remote reference in an asset");
        }
        assert!(find("/../Cargo.toml").is_none());
    }
}

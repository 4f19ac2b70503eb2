//! `wagi-echo`: an ordinary Rust program (`fn main`, no bindings) that answers HTTP requests
//! as a CGI script, served by the http-server's Wagi executor (`executor=wagi`).
//!
//! It prints CGI headers, a blank line, then what it saw: the method, path and query from
//! the CGI environment, one `HTTP_*` variable, and the request body read from stdin.
//! - `?status=NNN` sets the response status (`Status:` header);
//! - `?redirect=URL` answers with a `Location:` header only;
//! - `?flood=N` writes N bytes of body (to test the server's output bound);
//! - `?garbage` writes output that is not a CGI response.

use std::io::{Read as _, Write as _};

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some((key, value)) if key == name => Some(value),
        None if pair == name => Some(""),
        _ => None,
    })
}

fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let query = var("QUERY_STRING");
    let mut out = std::io::stdout().lock();
    if query_param(&query, "garbage").is_some() {
        let _ = out.write_all(b"this is not a CGI response");
        return;
    }
    if let Some(location) = query_param(&query, "redirect") {
        let _ = write!(out, "Location: {location}\n\n");
        return;
    }
    let mut body = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut body);
    let status = query_param(&query, "status").unwrap_or("200");
    let _ = write!(
        out,
        "Content-Type: text/plain; charset=utf-8\nStatus: {status}\nX-Wagi-Method: {}\n\n",
        var("REQUEST_METHOD")
    );
    let _ = writeln!(
        out,
        "method={} path={} query={} user-agent={} content-length={}",
        var("REQUEST_METHOD"),
        var("PATH_INFO"),
        query,
        var("HTTP_USER_AGENT"),
        var("CONTENT_LENGTH"),
    );
    let _ = write!(out, "body={}", String::from_utf8_lossy(&body));
    if let Some(count) = query_param(&query, "flood").and_then(|n| n.parse::<usize>().ok()) {
        let chunk = [b'x'; 4096];
        let mut left = count;
        while left > 0 {
            let n = left.min(chunk.len());
            if out.write_all(&chunk[..n]).is_err() {
                std::process::exit(1);
            }
            left -= n;
        }
    }
    let _ = out.flush();
}

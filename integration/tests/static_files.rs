//! Static files end to end: `trellis up` with an allow-list of mountable directories, the
//! example manifest `manifests/static-site.yaml` deployed unmodified, and the static-files
//! component answering over the built-in HTTP server with content types, ETag / 304, byte
//! ranges (206 / 416), HEAD without a body, and refusing path traversal. A large file streams
//! whole and by range. A manifest mounting a directory outside the allow-list is refused with
//! a reason naming it, while the host keeps serving.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use trellis_integration::{eventually, free_port, guest, repo_root, trellis_cli, StopOnDrop, WAIT};

/// Status, headers and body of one answer.
struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends one request with `headers` on a fresh connection; the path goes out as written (no
/// normalization), so traversal attempts reach the component.
async fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(WAIT, sender.send_request(request)).await??;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await??
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// `GET path` once something answers on `addr` with 200.
async fn first_ok(addr: &str, path: &str) -> Reply {
    eventually(&format!("{addr}{path} to serve"), || async {
        send(addr, "GET", path, &[])
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await
}

/// A manifest serving `site`, mounted at `mount_at` (which the component is told through its
/// `site_root` config), with static-files on `address`.
fn site_manifest(name: &str, site: &Path, mount_at: &str, address: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {name}
spec:
  components:
    - name: {name}-files
      type: component
      properties:
        image: file://{wasm}
        config:
          - name: {name}-mounts
            properties:
              mounts: {mount_at}={site}
              site_root: {mount_at}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.0
      traits:
        - type: spreadscaler
          properties:
            instances: 1
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: {name}-files
            source:
              config:
                - name: {name}-http
                  properties:
                    address: {address}
"#,
        wasm = guest("static_files").display(),
        site = site.display(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mounted_folder_is_served_with_validators_and_ranges() {
    let started = std::time::Instant::now();
    guest("static_files"); // the example manifest points at the built guest
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let _stop = StopOnDrop(dir);
    let files = tempfile::tempdir().unwrap();
    let allowed = files.path().join("allowed");
    let outside = files.path().join("outside");
    std::fs::create_dir_all(allowed.join("docs")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // 3 MiB that is not one repeated byte, so a misplaced range shows.
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    std::fs::write(allowed.join("big.bin"), &big).unwrap();
    std::fs::write(allowed.join("data.json"), "{\"a\":1}").unwrap();
    std::fs::write(allowed.join("logo.svg"), "<svg/>").unwrap();
    std::fs::write(allowed.join("docs/index.html"), "<p>docs</p>").unwrap();
    std::fs::write(outside.join("index.html"), "secret").unwrap();

    // Mounts allowed from the example's folder and from `allowed`, nowhere else.
    let example_site = repo_root().join("manifests/static-site");
    let nats_port = free_port().to_string();
    let (ok, out, err) = trellis_cli(
        dir,
        &[
            "up",
            "--detach",
            "--no-ui",
            "--nats-port",
            &nats_port,
            "--allow-mount",
            &example_site.display().to_string(),
            "--allow-mount",
            &allowed.display().to_string(),
        ],
    )
    .await;
    assert!(ok, "up failed: {out}\n{err}");

    // The example, deployed as it is.
    let (ok, out, err) = trellis_cli(dir, &["app", "deploy", "manifests/static-site.yaml"]).await;
    assert!(ok, "{out}\n{err}");
    let site = "127.0.0.1:8083";
    let index = first_ok(site, "/").await;
    let expected = std::fs::read(example_site.join("index.html")).unwrap();
    assert_eq!(&index.body[..], &expected[..]);
    assert_eq!(index.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(index.header("accept-ranges"), "bytes");
    let etag = index.header("etag").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "a strong ETag: {etag:?}"
    );
    let css = send(site, "GET", "/css/site.css", &[]).await.unwrap();
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), "text/css; charset=utf-8");
    assert_eq!(
        &css.body[..],
        &std::fs::read(example_site.join("css/site.css")).unwrap()[..]
    );
    assert_ne!(css.header("etag"), etag, "each file has its own ETag");

    // If-None-Match: 304 without a body; a different tag gets the file.
    let cached = send(site, "GET", "/index.html", &[("if-none-match", &etag)])
        .await
        .unwrap();
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    assert_eq!(cached.header("etag"), etag);
    let stale = send(site, "GET", "/", &[("if-none-match", "\"other\"")])
        .await
        .unwrap();
    assert_eq!(stale.status, 200);

    // Ranges on the example page.
    let len = expected.len();
    let part = send(site, "GET", "/", &[("range", "bytes=0-14")])
        .await
        .unwrap();
    assert_eq!(part.status, 206);
    assert_eq!(&part.body[..], &expected[..15]);
    assert_eq!(part.header("content-range"), format!("bytes 0-14/{len}"));
    let tail = send(site, "GET", "/", &[("range", "bytes=-8")])
        .await
        .unwrap();
    assert_eq!(tail.status, 206);
    assert_eq!(&tail.body[..], &expected[len - 8..]);
    assert_eq!(
        tail.header("content-range"),
        format!("bytes {}-{}/{len}", len - 8, len - 1)
    );
    let past = format!("bytes={}-", len + 10);
    let unsatisfiable = send(site, "GET", "/", &[("range", &past)]).await.unwrap();
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(
        unsatisfiable.header("content-range"),
        format!("bytes */{len}")
    );
    let several = send(site, "GET", "/", &[("range", "bytes=0-1,4-5")])
        .await
        .unwrap();
    assert_eq!(several.status, 200);
    assert_eq!(several.body.len(), len);

    // HEAD: the GET's headers, no body.
    let head = send(site, "HEAD", "/css/site.css", &[]).await.unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-type"), "text/css; charset=utf-8");
    assert_eq!(head.header("etag"), css.header("etag"));
    assert_eq!(head.header("content-length"), css.body.len().to_string());

    // Other methods, missing files, traversal (plain and encoded): refused.
    let post = send(site, "POST", "/", &[]).await.unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), "GET, HEAD");
    assert_eq!(
        send(site, "GET", "/nope.html", &[]).await.unwrap().status,
        404
    );
    for attempt in [
        "/../static-site.yaml",
        "/css/../../hello.yaml",
        "/%2e%2e/static-site.yaml",
        "/css/%2E%2E/%2e%2e/hello.yaml",
        "/..%2fstatic-site.yaml",
        "/..%5cstatic-site.yaml",
    ] {
        let reply = send(site, "GET", attempt, &[]).await.unwrap();
        assert!(
            reply.status == 400 || reply.status == 404,
            "{attempt}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        assert!(
            !String::from_utf8_lossy(&reply.body).contains("apiVersion"),
            "{attempt} escaped the mount"
        );
    }

    // A folder from the allow-list with more kinds of files and a large one, mounted at the
    // guest path the component's `site_root` config names.
    let other = format!("127.0.0.1:{}", free_port());
    let manifest = dir.join("files.yaml");
    std::fs::write(
        &manifest,
        site_manifest("files", &allowed, "/public", &other),
    )
    .unwrap();
    let (ok, out, err) =
        trellis_cli(dir, &["app", "deploy", &manifest.display().to_string()]).await;
    assert!(ok, "{out}\n{err}");
    let whole = first_ok(&other, "/big.bin").await;
    assert_eq!(whole.header("content-type"), "application/octet-stream");
    assert_eq!(whole.header("content-length"), big.len().to_string());
    assert!(whole.body[..] == big[..], "the large file arrives intact");
    let middle = send(
        &other,
        "GET",
        "/big.bin",
        &[("range", "bytes=1000000-2100000")],
    )
    .await
    .unwrap();
    assert_eq!(middle.status, 206);
    assert!(middle.body[..] == big[1_000_000..=2_100_000]);
    assert_eq!(
        middle.header("content-range"),
        format!("bytes 1000000-2100000/{}", big.len())
    );
    for (path, kind) in [
        ("/data.json", "application/json"),
        ("/logo.svg", "image/svg+xml"),
        ("/docs/", "text/html; charset=utf-8"),
    ] {
        let reply = send(&other, "GET", path, &[]).await.unwrap();
        assert_eq!(
            (reply.status, reply.header("content-type")),
            (200, kind),
            "{path}"
        );
    }
    let redirect = send(&other, "GET", "/docs", &[]).await.unwrap();
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), "/docs/");

    // Outside the allow-list: the component is refused, with the reason, and nothing serves
    // the directory; the host goes on serving the others.
    let refused_addr = format!("127.0.0.1:{}", free_port());
    let manifest = dir.join("refused.yaml");
    std::fs::write(
        &manifest,
        site_manifest("refused", &outside, "/site", &refused_addr),
    )
    .unwrap();
    let (ok, out, err) = trellis_cli(
        dir,
        &[
            "app",
            "deploy",
            &manifest.display().to_string(),
            "--wait-secs",
            "20",
        ],
    )
    .await;
    assert!(!ok, "a mount outside the allow-list deployed: {out}\n{err}");
    let reason = eventually("the refusal in the app's status", || async {
        let (_, out, _) = trellis_cli(dir, &["app", "status", "refused", "-o", "json"]).await;
        out.contains("outside the directories this host allows")
            .then_some(out)
    })
    .await;
    assert!(
        reason.contains(&outside.canonicalize().unwrap().display().to_string()),
        "{reason}"
    );
    let served = send(&refused_addr, "GET", "/", &[])
        .await
        .is_ok_and(|r| r.status == 200 && &r.body[..] == b"secret");
    assert!(!served, "the refused directory is served");
    let again = send(site, "GET", "/", &[]).await.unwrap();
    assert_eq!(again.status, 200);
    eprintln!("static files test took {:?}", started.elapsed());
}

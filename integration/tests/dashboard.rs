//! The web dashboard in a real browser: `trellis up --detach --deploy` starts a lattice and
//! its dashboard, and headless Chromium (Debian's `chromium`, driven over the DevTools protocol
//! on a pipe) checks what a person would see and do.
//!
//! Chromium is required: without it the test fails and says how to install it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use trellis_integration::{free_port, guest_ref, site_app_manifest, trellis_cli, StopOnDrop};

/// How long the page may take to show something the lattice already did.
const PAGE_WAIT: Duration = Duration::from_secs(120);

/// A headless Chromium spoken to over `--remote-debugging-pipe` (NUL-separated JSON on file
/// descriptors 3 and 4), with one page attached.
struct Browser {
    child: std::process::Child,
    commands: std::io::PipeWriter,
    replies: tokio::sync::mpsc::UnboundedReceiver<Value>,
    next_id: u64,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Chromium binary: $CHROMIUM, else the first of the usual names on PATH.
fn find_chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "the dashboard tests need headless Chromium and none was found on PATH: install it with \
         scripts/install-deps.sh (Debian package `chromium`) or set CHROMIUM=/path/to/chromium"
    );
}

impl Browser {
    async fn launch(profile: &Path) -> Self {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (to_browser_read, to_browser_write) = std::io::pipe().expect("pipe");
        let (from_browser_read, from_browser_write) = std::io::pipe().expect("pipe");
        let (fd3, fd4) = (to_browser_read.as_raw_fd(), from_browser_write.as_raw_fd());
        let mut command = std::process::Command::new(find_chromium());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-pipe",
                "--window-size=1280,1800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only dup2/fcntl, which are async-signal-safe, run between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for (from, to) in [(fd3, 3), (fd4, 4)] {
                    if from == to {
                        if libc::fcntl(to, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("cannot start chromium");
        drop(to_browser_read);
        drop(from_browser_write);
        let (tx, replies) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut reader = from_browser_read;
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buffer.extend_from_slice(&chunk[..n]);
                while let Some(end) = buffer.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = buffer.drain(..=end).collect();
                    if let Ok(value) = serde_json::from_slice::<Value>(&message[..end]) {
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            commands: to_browser_write,
            replies,
            next_id: 0,
            session: String::new(),
        };
        let target = browser
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("target id").to_string();
        let attached = browser
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        browser
    }

    /// Sends one DevTools command and returns its result (panics on an error reply).
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("encode");
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .expect("chromium closed its pipe");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let reply = tokio::time::timeout_at(deadline, self.replies.recv())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method} within 30 s"))
                .unwrap_or_else(|| panic!("chromium exited during {method}"));
            if reply["id"] == json!(id) {
                if let Some(error) = reply.get("error") {
                    panic!("{method} failed: {error}");
                }
                return reply["result"].clone();
            }
        }
    }

    async fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params).await
    }

    async fn navigate(&mut self, url: &str) {
        self.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1800, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        self.page("Page.navigate", json!({"url": url})).await;
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page, polling; panics with the page's text
    /// when it never is.
    async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        let wrapped = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        );
        loop {
            let value = self.eval(&wrapped).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "the page never showed {what} within {} s; it shows:\n{}",
                    PAGE_WAIT.as_secs(),
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the page's confirmation dialog and confirms.
    async fn confirm_dialog(&mut self) {
        self.wait_for(
            "the confirmation dialog",
            "document.getElementById('confirm').open",
        )
        .await;
        self.eval("document.getElementById('confirm-ok').click(); true")
            .await;
    }

    async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self
            .page("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }
}

/// A JS string literal for `s`.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// How many distinct colours a PNG has (up to `cap`), and its size.
fn png_colours(bytes: &[u8], cap: usize) -> (usize, u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    let channels = info.color_type.samples();
    let mut colours = std::collections::HashSet::new();
    for pixel in pixels[..info.buffer_size()].chunks(channels) {
        colours.insert(pixel.to_vec());
        if colours.len() >= cap {
            break;
        }
    }
    (colours.len(), info.width, info.height)
}

/// A manifest whose line 14 is wrong: `instances` must be a number.
const BROKEN_MANIFEST: &str = "apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: dash-broken
spec:
  components:
    - name: hello
      type: component
      properties:
        image: file:///nowhere.wasm
      traits:
        - type: spreadscaler
          properties:
            instances: lots
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_lattice_live_and_deploys_from_the_page() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let _stop = StopOnDrop(dir);
    let manifest = dir.join("dash.yaml");
    let address = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &manifest,
        site_app_manifest("dash-hello", "dash", 1, &address),
    )
    .unwrap();
    let nats_port = free_port().to_string();
    let manifest_arg = manifest.display().to_string();
    let (ok, out, err) = trellis_cli(
        dir,
        &[
            "up",
            "--detach",
            "--nats-port",
            &nats_port,
            "--lattice",
            "dash",
            "--label",
            "site=dash",
            "--deploy",
            &manifest_arg,
        ],
    )
    .await;
    let log = std::fs::read_to_string(dir.join("logs/up.log")).unwrap_or_default();
    assert!(ok, "up failed:\n{err}\nlog:\n{log}");
    assert!(out.contains("app dash-hello"), "{out}\n{err}");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let url = state["ui_url"]
        .as_str()
        .unwrap_or_else(|| panic!("up recorded no dashboard URL: {state}"))
        .to_string();
    assert!(
        out.contains(&format!("dashboard   {url}")),
        "the URL is printed: {out}"
    );
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let host_id = state["host_id"].as_str().unwrap().to_string();
    let host_name = state["host_name"].as_str().unwrap().to_string();

    // What the browser is not: a cross-site page may not act, nor a rebinding host name.
    let ui_address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let forged = raw_http(
        &ui_address,
        "POST /api/apps/dash-hello/delete HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    let rebound = raw_http(
        &ui_address,
        "GET /api/snapshot HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");

    let profile = dir.join("chromium-profile");
    let mut browser = Browser::launch(&profile).await;
    browser.navigate(&url).await;

    // The host and the deployed app.
    browser
        .wait_for(
            "the host",
            &format!(
                "document.querySelector('[data-host-id=' + JSON.stringify({}) + ']')?.innerText.includes({})",
                js(&host_id),
                js(&host_name)
            ),
        )
        .await;
    browser
        .wait_for(
            "the app as deployed",
            "document.querySelector('[data-app=\"dash-hello\"] [data-status]')?.dataset.status === 'deployed'",
        )
        .await;
    let host_text = browser
        .eval("document.getElementById('hosts-list').innerText")
        .await;
    assert!(
        host_text.as_str().unwrap_or_default().contains("site=dash"),
        "{host_text}"
    );

    // A component scaled from the CLI appears without a reload.
    browser.eval("window.__sameDocument = 42").await;
    let wasm = guest_ref("http_hello");
    let (ok, out, err) = trellis_cli(
        dir,
        &[
            "scale",
            "component",
            &host_id,
            &wasm,
            "dash-extra",
            "--count",
            "2",
        ],
    )
    .await;
    assert!(ok, "scale failed: {out}\n{err}");
    browser
        .wait_for(
            "the component scaled from the CLI",
            "window.__sameDocument === 42 && document.querySelector('[data-workload=\"dash-extra\"]')?.innerText.includes('max 2')",
        )
        .await;

    // The link graph has both ends of every link.
    let (ok, out, err) = trellis_cli(dir, &["get", "links", "-o", "json"]).await;
    assert!(ok, "{err}");
    let links: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(!links.is_empty(), "the app's link is stored");
    for link in &links {
        for end in [&link["source_id"], &link["target"]] {
            let id = end.as_str().unwrap();
            browser
                .wait_for(
                    &format!("{id} in the link graph"),
                    &format!(
                        "document.querySelector('#link-graph [data-id=' + JSON.stringify({}) + ']')",
                        js(id)
                    ),
                )
                .await;
        }
    }

    // Deploying a broken manifest from the page shows the error at its line.
    submit_and_confirm(&mut browser, BROKEN_MANIFEST).await;
    let diagnostic = browser
        .wait_for(
            "the validation error at line 14",
            "document.querySelector('#deploy-result .diag[data-line=\"14\"]')?.innerText",
        )
        .await;
    assert!(
        diagnostic
            .as_str()
            .unwrap_or_default()
            .contains("instances"),
        "{diagnostic}"
    );
    browser
        .wait_for(
            "line 14 of the manifest marked",
            "document.getElementById('manifest-line-14')?.classList.contains('error')",
        )
        .await;

    // A screenshot of what a person sees (the error at its line, the link graph above it),
    // kept with the test's files; it is not blank.
    browser
        .eval("document.getElementById('links').scrollIntoView(); true")
        .await;
    let shot = browser.screenshot().await;
    let path = dir.join("dashboard.png");
    std::fs::write(&path, &shot).unwrap();
    let (colours, width, height) = png_colours(&shot, 64);
    assert!(width >= 800 && height >= 600, "{width}x{height}");
    assert!(
        colours >= 16,
        "the screenshot at {} has only {colours} colours: blank?",
        path.display()
    );
    if let Ok(keep) = std::env::var("TRELLIS_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(&path, keep);
    }

    // A valid manifest deployed from the page: the result is what the reconciler reports.
    let valid = format!(
        "apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: dash-page
  annotations:
    version: v1
spec:
  components:
    - name: greeter
      type: component
      properties:
        image: {}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
",
        guest_ref("http_hello")
    );
    submit_and_confirm(&mut browser, &valid).await;
    browser
        .wait_for(
            "the deploy reported as deployed",
            "document.querySelector('#deploy-result [data-deploy-status]')?.dataset.deployStatus === 'deployed'",
        )
        .await;
    let (ok, out, err) = trellis_cli(dir, &["app", "status", "dash-page"]).await;
    assert!(ok && out.starts_with("dash-page: deployed"), "{out}\n{err}");

    // ...and undeployed from the page, after confirming.
    browser
        .eval("document.querySelector('[data-app=\"dash-page\"] .actions button').click(); true")
        .await;
    browser.confirm_dialog().await;
    browser
        .wait_for(
            "the app as undeployed",
            "document.querySelector('[data-app=\"dash-page\"] [data-status]')?.dataset.status === 'undeployed'",
        )
        .await;

    // ...and deleted from the page: it leaves the list.
    browser
        .eval("document.querySelector('[data-app=\"dash-page\"] .actions button.danger').click(); true")
        .await;
    browser.confirm_dialog().await;
    browser
        .wait_for(
            "the deleted app gone",
            "document.querySelector('[data-app=\"dash-hello\"]') && !document.querySelector('[data-app=\"dash-page\"]')",
        )
        .await;

    // A component scaled from the page, as its host confirms and the CLI sees it.
    browser
        .eval(
            "const row = document.querySelector('[data-workload=\"dash-extra\"]'); \
             row.querySelector('input[type=number]').value = '3'; \
             row.querySelector('form').requestSubmit(); true",
        )
        .await;
    browser.confirm_dialog().await;
    browser
        .wait_for(
            "the component scaled from the page",
            "document.querySelector('[data-workload=\"dash-extra\"]')?.innerText.includes('max 3')",
        )
        .await;
    let (ok, out, err) = trellis_cli(dir, &["get", "inventory", "-o", "json"]).await;
    assert!(ok, "{err}");
    let inventories: Vec<Value> = serde_json::from_str(&out).unwrap();
    let extra = inventories[0]["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "dash-extra")
        .cloned()
        .unwrap_or_default();
    assert_eq!(extra["max_instances"], 3, "{out}");

    // On a phone-sized screen nothing makes the page scroll sideways.
    browser
        .page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    browser
        .wait_for("a 390 px wide viewport", "window.innerWidth <= 400")
        .await;
    let overflow = browser
        .eval(
            "(() => { const w = window.innerWidth; \
             const clipped = (e) => { for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) \
               if (getComputedStyle(p).overflowX !== 'visible') return true; return false; }; \
             const wide = [...document.querySelectorAll('body *')] \
               .map((e) => [e, e.getBoundingClientRect().right]) \
               .filter(([e, right]) => right > w + 1 && !clipped(e)) \
               .sort((a, b) => b[1] - a[1]).slice(0, 12) \
               .map(([e, right]) => e.tagName + '.' + e.className + '#' + e.id + ' ' + Math.round(right)); \
             return { width: w, scroll: document.documentElement.scrollWidth, wide }; })()",
        )
        .await;
    assert!(
        overflow["scroll"].as_u64() <= overflow["width"].as_u64(),
        "the page scrolls sideways on a phone: {overflow}"
    );
    let phone = browser.screenshot().await;
    std::fs::write(dir.join("dashboard-phone.png"), &phone).unwrap();
    let (colours, _, _) = png_colours(&phone, 64);
    assert!(
        colours >= 16,
        "the phone screenshot has only {colours} colours"
    );
    if let Ok(keep) = std::env::var("TRELLIS_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(dir.join("dashboard-phone.png"), format!("{keep}.phone.png"));
    }
}

/// Sends `request` (`{host}` replaced by `address`) and returns the response head, reading
/// until the end of the headers.
async fn raw_http(address: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(request.replace("{host}", address).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Puts `manifest` in the page's deploy form, submits it and confirms the dialog.
async fn submit_and_confirm(browser: &mut Browser, manifest: &str) {
    browser
        .eval(&format!(
            "document.getElementById('manifest-text').value = {}; \
             document.getElementById('deploy-form').requestSubmit(); true",
            js(manifest)
        ))
        .await;
    browser.confirm_dialog().await;
}

//! Hostile input, end to end: every case under `integration/hostile/` is sent to a real lattice
//! (nats-server, a `trellis host` serving HTTP through the http-server provider, a
//! `trellis wadm`), and each must get its clear refusal while the host and the reconciler keep
//! answering within a second.
//!
//! A case is one JSON file, so adding a case is adding a file; `integration/hostile/README.md`
//! describes the format. All cases run in one lattice, one after the other, and every failing
//! case is reported together.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_integration::{
    free_port, guest_ref, repo_root, HostProcess, Lattice, NatsServer, WadmProcess, WAIT,
};

/// How soon the host and the reconciler must answer again after each case.
const STILL_ANSWERS_WITHIN: Duration = Duration::from_secs(1);
/// How many times [`STILL_ANSWERS_WITHIN`] is tried before a process counts as not answering.
const ATTEMPTS: usize = 3;
/// The lattice the cases run in.
const LATTICE: &str = "hostile";
/// The component id the http-server routes to.
const HTTP_COMPONENT: &str = "hostile-hello";

/// Where a case sends its input.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Target {
    /// A control-interface request: `subject` is the operation under the lattice's control
    /// prefix (`component.scale.{host}`).
    Control,
    /// A reconciler API request: `subject` is the operation under `wadm.api.{lattice}.`.
    Wadm,
    /// Raw bytes to the HTTP listener.
    Http,
}

/// A body made of a repeated unit, for inputs too large to keep as a file.
#[derive(Debug, Deserialize)]
struct Generated {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    repeat: String,
    times: usize,
    /// When set, each of the `times` units is an HTTP/1.1 chunk of this many bytes (`x`s)
    /// instead of `repeat`.
    chunk_of: Option<usize>,
    #[serde(default)]
    suffix: String,
}

/// What a case must get back.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// The reply's success flag (control: `success`; reconciler: `result` is not `error`).
    success: Option<bool>,
    /// Substrings (case-insensitive) that the reply's message must all contain.
    #[serde(default)]
    message: Vec<String>,
    /// An event that must follow, with substrings its data must contain.
    event: Option<ExpectEvent>,
    /// The HTTP status the listener must answer.
    http_status: Option<u16>,
    /// The HTTP listener must close the connection (no complete response) within `WAIT`.
    #[serde(default)]
    http_closed: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectEvent {
    name: String,
    #[serde(default)]
    contains: Vec<String>,
}

/// One case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// Why the case exists: what it once broke or what it guards.
    about: String,
    to: Target,
    #[serde(default)]
    subject: String,
    /// A JSON body.
    body: Option<Value>,
    /// A body sent as it is.
    text: Option<String>,
    /// A generated body.
    generate: Option<Generated>,
    /// How many times to send it (a flood of the same input).
    #[serde(default = "one")]
    repeat: usize,
    expect: Expect,
}

fn one() -> usize {
    1
}

/// Substitutes the lattice's names into a case's strings.
struct Names {
    host: String,
    hello: String,
}

impl Names {
    fn apply(&self, text: &str) -> String {
        text.replace("{host}", &self.host)
            .replace("{hello_wasm}", &self.hello)
    }
}

impl Case {
    fn payload(&self, names: &Names) -> anyhow::Result<Vec<u8>> {
        match (&self.body, &self.text, &self.generate) {
            (Some(body), None, None) => Ok(names.apply(&serde_json::to_string(body)?).into_bytes()),
            (None, Some(text), None) => Ok(names.apply(text).into_bytes()),
            (None, None, Some(g)) => {
                let mut out = names.apply(&g.prefix).into_bytes();
                let unit = match g.chunk_of {
                    Some(n) => {
                        let mut chunk = format!("{n:x}\r\n").into_bytes();
                        chunk.resize(chunk.len() + n, b'x');
                        chunk.extend_from_slice(b"\r\n");
                        chunk
                    }
                    None => g.repeat.as_bytes().to_vec(),
                };
                out.reserve(unit.len() * g.times + g.suffix.len());
                for _ in 0..g.times {
                    out.extend_from_slice(&unit);
                }
                out.extend_from_slice(names.apply(&g.suffix).as_bytes());
                Ok(out)
            }
            (None, None, None) => Ok(Vec::new()),
            _ => bail!("a case has one of `body`, `text` or `generate`"),
        }
    }
}

fn load_cases() -> Vec<(PathBuf, Case)> {
    let root = repo_root().join("integration/hostile");
    let mut files = Vec::new();
    for dir in ["control", "wadm", "http"] {
        let dir = root.join(dir);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("case file");
            let case: Case = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not a valid case: {e}", path.display()));
            (path, case)
        })
        .collect()
}

fn contains_all(haystack: &str, needles: &[String], what: &str) -> anyhow::Result<()> {
    let lower = haystack.to_lowercase();
    for needle in needles {
        ensure!(
            lower.contains(&needle.to_lowercase()),
            "{what} does not mention {needle:?}: {haystack}"
        );
    }
    Ok(())
}

/// The lattice the cases run against.
struct Rig {
    nats: NatsServer,
    host: HostProcess,
    wadm: WadmProcess,
    lattice: Lattice,
    http_addr: String,
    names: Names,
}

impl Rig {
    async fn start() -> Self {
        let nats = NatsServer::start().await;
        let host = HostProcess::start(&nats.url(), LATTICE, &[]).await;
        let wadm = WadmProcess::start(&nats.url(), LATTICE, &[]);
        let lattice = Lattice::connect(&nats.url(), LATTICE).await;
        wadm.wait_ready(&lattice.client, LATTICE).await;
        let http_addr = format!("127.0.0.1:{}", free_port());
        let names = Names {
            host: host.id.clone(),
            hello: guest_ref("http_hello"),
        };
        let rig = Self {
            nats,
            host,
            wadm,
            lattice,
            http_addr,
            names,
        };
        rig.serve_hello().await;
        rig
    }

    /// Puts the hello component behind the http-server provider, with a small body limit.
    async fn serve_hello(&self) {
        let l = &self.lattice;
        let mut events = l.events().await;
        let ok = |reply: trellis_protocol::ctl::CtlResponse<Value>, what: &str| {
            assert!(reply.success, "{what}: {}", reply.message);
        };
        ok(
            l.request(
                l.subjects.config_put("hostile-http"),
                &json!({"address": self.http_addr}),
            )
            .await
            .expect("config.put"),
            "config.put",
        );
        ok(
            l.request(
                l.subjects.config_put("hostile-http-provider"),
                &json!({"max_content_len": "1M", "header_read_timeout_ms": "2000"}),
            )
            .await
            .expect("config.put"),
            "config.put",
        );
        ok(
            l.request(
                l.subjects.component_scale(&self.host.id),
                &json!({"component_ref": self.names.hello, "component_id": HTTP_COMPONENT,
                        "count": 2}),
            )
            .await
            .expect("component.scale"),
            "component.scale",
        );
        events
            .wait_for("component_scaled", |d| d["component_id"] == HTTP_COMPONENT)
            .await
            .expect("component_scaled");
        ok(
            l.request(
                l.subjects.provider_start(&self.host.id),
                &json!({"provider_id": "hostile-http",
                        "provider_ref": "trellis+builtin://http-server",
                        "config": ["hostile-http-provider"]}),
            )
            .await
            .expect("provider.start"),
            "provider.start",
        );
        events
            .wait_for("provider_started", |d| d["provider_id"] == "hostile-http")
            .await
            .expect("provider_started");
        ok(
            l.request(
                l.subjects.link_put(),
                &json!({"source_id": "hostile-http", "target": HTTP_COMPONENT,
                        "wit_namespace": "wasi", "wit_package": "http",
                        "interfaces": ["incoming-handler"], "source_config": ["hostile-http"]}),
            )
            .await
            .expect("link.put"),
            "link.put",
        );
        trellis_integration::eventually("the hello route", || {
            trellis_integration::http_ok(&self.http_addr, "/")
        })
        .await;
    }

    /// Sends one case and checks its answer.
    async fn run(&self, case: &Case) -> anyhow::Result<()> {
        let payload = case.payload(&self.names)?;
        for _ in 0..case.repeat.max(1) {
            match case.to {
                Target::Control | Target::Wadm => self.request(case, payload.clone()).await?,
                Target::Http => self.http(case, &payload).await?,
            }
        }
        Ok(())
    }

    async fn request(&self, case: &Case, payload: Vec<u8>) -> anyhow::Result<()> {
        let subject = match case.to {
            Target::Control => self.lattice.subjects.op(&self.names.apply(&case.subject)),
            _ => format!("wadm.api.{LATTICE}.{}", self.names.apply(&case.subject)),
        };
        // Events are subscribed before the request, so none is missed.
        let mut events = self.lattice.events().await;
        let reply = tokio::time::timeout(
            WAIT,
            self.lattice.client.request(subject.clone(), payload.into()),
        )
        .await
        .with_context(|| format!("no reply on {subject} within {WAIT:?}"))?
        .with_context(|| format!("request on {subject} failed"))?;
        let body: Value = serde_json::from_slice(&reply.payload).with_context(|| {
            format!(
                "the reply on {subject} is not JSON: {}",
                String::from_utf8_lossy(&reply.payload)
            )
        })?;
        let success = match case.to {
            Target::Control => body["success"].as_bool().unwrap_or(false),
            _ => !matches!(body["result"].as_str(), Some("error" | "notfound")),
        };
        let message = body["message"].as_str().unwrap_or_default();
        if let Some(expected) = case.expect.success {
            ensure!(
                success == expected,
                "expected success={expected}, got {body}"
            );
        }
        contains_all(message, &case.expect.message, "the reply")?;
        if let Some(expected) = &case.expect.event {
            let event = events
                .wait_for(&expected.name, |_| true)
                .await
                .with_context(|| format!("waiting for {}", expected.name))?;
            contains_all(&event.data.to_string(), &expected.contains, "the event")?;
        }
        Ok(())
    }

    async fn http(&self, case: &Case, payload: &[u8]) -> anyhow::Result<()> {
        let mut stream = tokio::net::TcpStream::connect(&self.http_addr)
            .await
            .context("connecting to the http-server")?;
        // The server may answer (413) and close before the whole request is written: a
        // failed write is then expected, and the answer is read below.
        let _ = stream.write_all(payload).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 8192];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
                if case.expect.http_status.is_some() && answer.windows(4).any(|w| w == b"\r\n\r\n")
                {
                    break;
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&answer);
        if let Some(status) = case.expect.http_status {
            let got: Option<u16> = text
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok());
            ensure!(
                got == Some(status),
                "expected HTTP {status}, got {:?}",
                text.lines().next()
            );
        }
        if case.expect.http_closed {
            ensure!(
                read.is_ok(),
                "the server kept the connection open for {WAIT:?}"
            );
            // A 200 counts as complete only with its terminating chunk.
            ensure!(
                !(text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n0\r\n\r\n")),
                "expected no complete answer, got {}",
                text.lines().next().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Whether a request on `subject` is answered within [`STILL_ANSWERS_WITHIN`] in one of
    /// [`ATTEMPTS`] tries. A process hung or stalled by the case misses every try; a single
    /// scheduling hiccup of a busy CI machine (two cores running several lattices) does not
    /// fail the suite.
    async fn answers_within(&self, subject: &str) -> bool {
        for _ in 0..ATTEMPTS {
            let reply = tokio::time::timeout(
                STILL_ANSWERS_WITHIN,
                self.lattice
                    .client
                    .request(subject.to_string(), Vec::new().into()),
            )
            .await;
            if matches!(reply, Ok(Ok(_))) {
                return true;
            }
        }
        false
    }

    /// The host and the reconciler both answer within [`STILL_ANSWERS_WITHIN`].
    async fn still_answers(&mut self) -> anyhow::Result<()> {
        ensure!(self.host.is_running(), "the host process exited");
        ensure!(self.wadm.is_running(), "the reconciler process exited");
        let host_get = self.lattice.subjects.host_get(&self.host.id);
        ensure!(
            self.answers_within(&host_get).await,
            "the host did not answer host.get within {STILL_ANSWERS_WITHIN:?} ({ATTEMPTS} tries)"
        );
        ensure!(
            self.answers_within(&format!("wadm.api.{LATTICE}.model.list"))
                .await,
            "the reconciler did not answer model.list within {STILL_ANSWERS_WITHIN:?} ({ATTEMPTS} tries)"
        );
        let served = tokio::time::timeout(
            STILL_ANSWERS_WITHIN * 5,
            trellis_integration::http_get(&self.http_addr, "/"),
        )
        .await;
        ensure!(
            matches!(served, Ok(Some((200, _)))),
            "the http-server no longer serves the hello route: {served:?}"
        );
        Ok(())
    }
}

fn short(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_hostile_case_gets_its_error_and_the_lattice_keeps_answering() {
    let cases = load_cases();
    assert!(
        cases.len() >= 20,
        "only {} hostile cases found",
        cases.len()
    );
    let mut rig = Rig::start().await;
    let mut failures = Vec::new();
    for (path, case) in &cases {
        let outcome = rig.run(case).await;
        let alive = rig.still_answers().await;
        if let Err(e) = outcome.and(alive) {
            failures.push(format!("{} ({}): {e:#}", short(path), case.about));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed:\n{}\n\nhost log (tail):\n{}\n\nreconciler log (tail):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        tail(&rig.host.logs()),
        tail(&rig.wadm.logs()),
    );
    // The NATS server is dropped last: it outlives the processes that use it.
    drop(rig.wadm);
    drop(rig.host);
    drop(rig.nats);
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

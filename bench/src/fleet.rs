//! Section 8: a fleet of hosts on one lattice (one nats-server, one reconciler, `--fleet-hosts`
//! host processes). What an idle fleet costs the NATS server (CPU, messages, JetStream
//! consumers, subscriptions) and each host (memory), measured once with empty buckets and once
//! with an application deployed (a link and a config in the buckets); and how long a
//! daemonscaler takes to run on every host with the compiled code cached.
//!
//! The server is watched from outside: its CPU time from /proc, everything else from its
//! monitoring port (/varz, /jsz, /connz).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use serde_json::Value;
use trellis_integration::{free_port, HostProcess, Lattice, NatsServer};
use trellis_protocol::nats::NatsAuth;

use crate::lattice::{self, rss_mib};
use crate::lifecycle::{deploy, runs, wadm_api, Wadm};
use crate::report::Figure;
use crate::{file_ref, Bench};

/// Section heading.
pub const SECTION: &str = "8. Fleet (idle cost, deploy to every host)";

/// The hosts heartbeat at the host's default interval (`trellis host
/// --heartbeat-interval-ms`), not the harness's usual 500 ms: an idle fleet's traffic is its
/// heartbeats, so this is what a real fleet pays.
const HEARTBEAT_MS: &str = "2000";
/// Hosts started at once (each start waits until the host answers `host.ping`).
const START_CONCURRENCY: usize = 4;
/// The application deployed to the fleet, and its daemon component's id.
const APP: &str = "fleet";
const COMPONENT_ID: &str = "fleet-hello";
/// Budgets from the issue: nats-server CPU while the fleet idles, JetStream consumers per
/// host, and deploy of a daemonscaler to every host (compiled code cached).
const CPU_BUDGET_PCT: f64 = 3.0;
const CONSUMERS_BUDGET: f64 = 5.0;
const DEPLOY_BUDGET_S: f64 = 5.0;
/// How long the fleet is left alone before it is watched: longer than the 30 s after which
/// nats-server drops an unbound ephemeral consumer (async-nats' `inactive_threshold`). Hosts
/// since 4b982c4 list keys without a consumer; the wait keeps older hosts comparable and
/// makes sure what is counted is what stays.
const SETTLE: Duration = Duration::from_secs(35);
/// How long the idle traffic is broken down by subject (after the measured window: the
/// wildcard subscription that counts it costs the server too).
const TRAFFIC_WINDOW: Duration = Duration::from_secs(10);

/// The fleet: start it, watch it idle, deploy to it, watch it idle again.
pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let wanted = bench.fleet_hosts;
    if wanted == 0 {
        bail!("--fleet-hosts 0: no fleet to measure");
    }
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("nats.pid");
    let monitor_port = free_port();
    let config = format!(
        "http: \"127.0.0.1:{monitor_port}\"\npid_file: \"{}\"\n",
        pid_file.display()
    );
    let nats =
        tokio::spawn(
            async move { NatsServer::start_with_config(&config, NatsAuth::default()).await },
        )
        .await
        .map_err(|e| anyhow!("nats-server did not start: {}", panic_text(e)))?;
    let nats_pid: u32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("nats-server wrote no {}", pid_file.display()))?
        .trim()
        .parse()
        .context("the nats-server pid file holds no pid")?;
    let monitor = Monitor {
        addr: format!("127.0.0.1:{monitor_port}"),
    };
    let name = "bench-fleet";
    let lattice = Lattice::connect(&nats.url(), name).await;
    let _wadm = Wadm::start(&bench.trellis_bin, &nats.url(), name)?;
    wadm_api(
        &lattice.client,
        format!("wadm.api.{name}.model.list"),
        Vec::new(),
    )
    .await?;
    // What the harness and the reconciler hold before any host exists.
    let baseline = census(&monitor).await?;

    println!("  starting {wanted} hosts, {START_CONCURRENCY} at a time");
    let started = Instant::now();
    let mut hosts: Vec<HostProcess> = Vec::with_capacity(wanted);
    let mut failures: Vec<String> = Vec::new();
    let mut starts = futures::stream::iter(0..wanted)
        .map(|i| start_host(nats.url(), name.to_string(), i))
        .buffer_unordered(START_CONCURRENCY);
    while let Some(result) = starts.next().await {
        match result {
            Ok(host) => hosts.push(host),
            Err(e) => {
                eprintln!("  {e:#}");
                failures.push(format!("{e:#}"));
            }
        }
        let done = hosts.len() + failures.len();
        if done.is_multiple_of(10) {
            println!(
                "  {done} of {wanted} started ({} failed) in {:.0} s; load {}",
                failures.len(),
                started.elapsed().as_secs_f64(),
                loadavg()
            );
        }
    }
    drop(starts);
    let start_took = started.elapsed();
    let n = hosts.len();
    if n == 0 {
        bail!(
            "no host of {wanted} started; first failure: {}",
            failures.first().map(String::as_str).unwrap_or("none")
        );
    }
    if !failures.is_empty() {
        bench.problem(format!(
            "Fleet: {} of {wanted} hosts did not start (first: {}); the fleet figures are for \
             the {n} that did.",
            failures.len(),
            lattice::tail(&failures[0]).replace('\n', " ")
        ));
    }
    let load = format!("{n} hosts");
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "start the fleet: every host answers host.ping".into(),
        load: load.clone(),
        value: Some(start_took.as_secs_f64()),
        unit: "s".into(),
        note: format!(
            "`trellis host` processes started {START_CONCURRENCY} at a time, each with a label \
             (zone=z0..z9) and the default heartbeat ({HEARTBEAT_MS} ms); one nats-server, \
             one `trellis wadm`"
        ),
        ..Figure::default()
    });
    let host_ids: Vec<String> = hosts.iter().map(|h| h.id.clone()).collect();
    let pids: Vec<u32> = hosts.iter().map(HostProcess::pid).collect();

    println!("  leaving the fleet alone for {SETTLE:?}");
    tokio::time::sleep(SETTLE).await;
    let empty = observe(bench, &monitor, nats_pid, &lattice, &pids).await?;
    push_idle(
        bench,
        &format!("{load}, empty buckets"),
        "nothing deployed: no links, no configs",
        &empty,
        &baseline,
        n,
    );

    // The daemonscaler: one instance on every host; a built-in http-server on one of them,
    // linked to it with a config, so the buckets hold a link and a config.
    let wasm = file_ref(&trellis_integration::guest("http_hello"));
    let addr = format!("127.0.0.1:{}", free_port());
    let mut updates = lattice
        .client
        .subscribe(format!("wadm.status.{name}.{APP}"))
        .await
        .context("cannot subscribe to the app's status")?;
    lattice.client.flush().await.context("flush")?;

    let t0 = Instant::now();
    deploy(&lattice.client, name, APP, manifest("v1", &wasm, &addr)).await?;
    let cold = wait_status(
        &lattice.client,
        name,
        &mut updates,
        "deployed",
        "v1",
        Duration::from_secs(300),
    )
    .await?
    .duration_since(t0);
    let confirmed = count_running(&lattice, &host_ids).await;
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "deploy a daemonscaler to every host, first time -> deployed".into(),
        load: load.clone(),
        value: Some(cold.as_secs_f64()),
        unit: "s".into(),
        note: format!(
            "model.put + deploy to wadm status `deployed`; every host compiles \
             http_hello.wasm (empty compiled-code caches); {confirmed} of {n} inventories \
             then show the component"
        ),
        ..Figure::default()
    });

    let reply = wadm_api(
        &lattice.client,
        format!("wadm.api.{name}.model.undeploy.{APP}"),
        Vec::new(),
    )
    .await?;
    if reply["result"] != "acknowledged" {
        bail!("undeploy refused: {reply}");
    }
    wait_status(
        &lattice.client,
        name,
        &mut updates,
        "undeployed",
        "",
        Duration::from_secs(120),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = count_running(&lattice, &host_ids).await;
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{left} hosts still run {COMPONENT_ID} 120 s after the undeploy");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let the stops' events and heartbeats pass before the clock starts again.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let t0 = Instant::now();
    deploy(&lattice.client, name, APP, manifest("v2", &wasm, &addr)).await?;
    let warm = wait_status(
        &lattice.client,
        name,
        &mut updates,
        "deployed",
        "v2",
        Duration::from_secs(120),
    )
    .await?
    .duration_since(t0)
    .as_secs_f64();
    let confirmed = count_running(&lattice, &host_ids).await;
    let http = match lattice::http_get(&addr, "/").await {
        Ok((status, body)) => format!("GET / -> {status} {}", body.trim()),
        Err(e) => format!("GET / failed: {e:#}"),
    };
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "deploy a daemonscaler to every host, code cached -> deployed".into(),
        load: load.clone(),
        value: Some(warm),
        unit: "s".into(),
        budget: Some(format!("< {DEPLOY_BUDGET_S} s, on every host")),
        met: Some(warm < DEPLOY_BUDGET_S && confirmed == n),
        note: format!(
            "after the first deploy and an undeploy: model.put (version v2) + deploy to the \
             `deployed` status wadm publishes; {confirmed} of {n} host inventories then show \
             {COMPONENT_ID}; the app also starts a built-in http-server on one host, linked \
             to it ({http})"
        ),
        ..Figure::default()
    });
    drop(updates);

    println!("  leaving the fleet alone for {SETTLE:?}");
    tokio::time::sleep(SETTLE).await;
    let deployed = observe(bench, &monitor, nats_pid, &lattice, &pids).await?;
    push_idle(
        bench,
        &format!("{load}, app deployed"),
        &format!(
            "{APP} deployed: 1 component per host, 1 http-server, 1 link, 1 config; {}",
            buckets(&deployed.census)
        ),
        &deployed,
        &baseline,
        n,
    );
    Ok(())
}

/// Starts host `index` and waits until it answers; a host that does not start is an error
/// (the integration library panics; the panic stays in its task).
async fn start_host(url: String, lattice: String, index: usize) -> anyhow::Result<HostProcess> {
    tokio::spawn(async move {
        let zone = format!("zone=z{}", index % 10);
        HostProcess::start(
            &url,
            &lattice,
            &["--heartbeat-interval-ms", HEARTBEAT_MS, "--label", &zone],
        )
        .await
    })
    .await
    .map_err(|e| anyhow!("host {index} did not start: {}", panic_text(e)))
}

/// The message of a task's panic.
fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into()),
        Err(e) => e.to_string(),
    }
}

/// The fleet's manifest, version `version`: `http_hello` on every host (daemonscaler, one
/// instance each) and the built-in http-server on one host, linked to it, listening on
/// `addr`.
fn manifest(version: &str, wasm_ref: &str, addr: &str) -> String {
    format!(
        "apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {APP}
  annotations:
    version: {version}
spec:
  components:
    - name: hello
      type: component
      properties:
        image: {wasm_ref}
      traits:
        - type: daemonscaler
          properties:
            instances: 1
    - name: httpserver
      type: capability
      properties:
        image: trellis+builtin://http-server
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
              name: hello
            source:
              config:
                - name: {APP}-http
                  properties:
                    address: {addr}
"
    )
}

/// Waits until the app's status is `wanted` (of `version`, unless empty), from the updates
/// wadm publishes, asking `model.status` whenever a second passes without one. Returns when
/// it saw it.
async fn wait_status(
    client: &async_nats::Client,
    lattice: &str,
    updates: &mut async_nats::Subscriber,
    wanted: &str,
    version: &str,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::from("none");
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            bail!("{APP} is not {wanted} {version} within {limit:?}; last status: {last}");
        }
        let wait = (deadline - now).min(Duration::from_secs(1));
        let status = match tokio::time::timeout(wait, updates.next()).await {
            Ok(Some(msg)) => serde_json::from_slice::<Value>(&msg.payload).unwrap_or(Value::Null),
            Ok(None) => bail!("the status subscription closed"),
            Err(_) => wadm_api(
                client,
                format!("wadm.api.{lattice}.model.status.{APP}"),
                Vec::new(),
            )
            .await?["status"]
                .clone(),
        };
        if status["status"]["type"] == wanted
            && (version.is_empty() || status["version"] == version)
        {
            return Ok(Instant::now());
        }
        if !status.is_null() {
            last = format!(
                "{} {}: {}",
                status["status"]["type"], status["version"], status["status"]["message"]
            );
        }
    }
}

/// How many of `hosts` show the fleet's component in their inventory.
async fn count_running(lattice: &Lattice, hosts: &[String]) -> usize {
    futures::stream::iter(hosts)
        .map(|h| runs(lattice, h, COMPONENT_ID))
        .buffer_unordered(16)
        .filter(|running| std::future::ready(*running))
        .count()
        .await
}

/// nats-server's monitoring endpoint.
struct Monitor {
    addr: String,
}

impl Monitor {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = lattice::http_get(&self.addr, path).await?;
        if status != 200 {
            bail!("GET {path} on the monitoring port answered {status}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
    }
}

/// What one idle window showed.
struct Observation {
    window: Duration,
    /// nats-server CPU, % of one core.
    nats_cpu_pct: f64,
    /// All hosts together, % of one core.
    hosts_cpu_pct: f64,
    /// Messages into / out of the server per second (/varz).
    in_per_s: f64,
    out_per_s: f64,
    /// JetStream API requests per second (/jsz api.total).
    js_api_per_s: f64,
    /// /proc/loadavg before and after the window.
    load_before: String,
    load_after: String,
    census: Census,
    /// Host RSS, MiB, sorted.
    rss: Vec<f64>,
    /// Idle traffic by subject pattern, messages/s, busiest first.
    traffic: Vec<(String, f64)>,
}

/// Watches the idle fleet for `bench.fleet_window`: the server's CPU time and message counts;
/// then its consumers and subscriptions, the hosts' memory, and which subjects carry the
/// idle traffic.
async fn observe(
    bench: &Bench,
    monitor: &Monitor,
    nats_pid: u32,
    lattice: &Lattice,
    pids: &[u32],
) -> anyhow::Result<Observation> {
    let tick = clock_ticks_per_s();
    println!(
        "  watching the idle fleet for {:?}; load {}",
        bench.fleet_window,
        loadavg()
    );
    let load_before = loadavg();
    let varz0 = monitor.get("/varz").await?;
    let jsz0 = monitor.get("/jsz").await?;
    let hosts0: u64 = pids.iter().filter_map(|p| cpu_ticks(*p).ok()).sum();
    let nats0 = cpu_ticks(nats_pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(bench.fleet_window).await;
    let nats1 = cpu_ticks(nats_pid)?;
    let hosts1: u64 = pids.iter().filter_map(|p| cpu_ticks(*p).ok()).sum();
    let elapsed = t0.elapsed().as_secs_f64();
    let varz1 = monitor.get("/varz").await?;
    let jsz1 = monitor.get("/jsz").await?;
    let varz_elapsed = t0.elapsed().as_secs_f64();
    let load_after = loadavg();
    let pct = |ticks: u64| ticks as f64 / tick / elapsed * 100.0;
    let rate = |key: &str, before: &Value, after: &Value| {
        let a = after.pointer(key).and_then(Value::as_u64).unwrap_or(0);
        let b = before.pointer(key).and_then(Value::as_u64).unwrap_or(0);
        a.saturating_sub(b) as f64 / varz_elapsed
    };
    let census = census(monitor).await?;
    let mut rss: Vec<f64> = pids.iter().filter_map(|p| rss_mib(*p).ok()).collect();
    rss.sort_by(f64::total_cmp);
    let traffic = traffic(&lattice.client, TRAFFIC_WINDOW).await?;
    let observation = Observation {
        window: bench.fleet_window,
        nats_cpu_pct: pct(nats1.saturating_sub(nats0)),
        hosts_cpu_pct: pct(hosts1.saturating_sub(hosts0)),
        in_per_s: rate("/in_msgs", &varz0, &varz1),
        out_per_s: rate("/out_msgs", &varz0, &varz1),
        js_api_per_s: rate("/api/total", &jsz0, &jsz1),
        load_before,
        load_after,
        census,
        rss,
        traffic,
    };
    print_details(&observation);
    Ok(observation)
}

/// The details behind the figures, for whoever reads the run's output.
fn print_details(o: &Observation) {
    println!(
        "  nats-server {:.2}% of a core; hosts together {:.2}%; in {:.1} msgs/s, out {:.1} \
         msgs/s, JetStream API {:.2} requests/s; load {} -> {}",
        o.nats_cpu_pct,
        o.hosts_cpu_pct,
        o.in_per_s,
        o.out_per_s,
        o.js_api_per_s,
        o.load_before,
        o.load_after
    );
    let c = &o.census;
    println!(
        "  {} consumers: by kind {:?}; {} unattributed; {} host connections; others: {}",
        c.consumers,
        c.by_kind,
        c.unattributed,
        c.host_consumers.len(),
        c.others.join("; ")
    );
    for (pattern, per_s) in o.traffic.iter().take(12) {
        println!("    {per_s:8.2} msgs/s  {pattern}");
    }
}

/// The JetStream consumers and subscriptions the server holds, per connection.
#[derive(Debug, Default)]
struct Census {
    /// Consumers on the server (/jsz).
    consumers: usize,
    /// Consumers per kind: stream, deliver policy, headers only.
    by_kind: BTreeMap<String, usize>,
    /// Messages per stream (the buckets' contents).
    stream_msgs: BTreeMap<String, u64>,
    /// Per host connection (named `trellis-host ...`): consumers delivering to one of its
    /// subscriptions, and its subscriptions.
    host_consumers: Vec<usize>,
    host_subs: Vec<usize>,
    /// Other connections: `name: S subs, C consumers`.
    others: Vec<String>,
    /// Consumers no connection's subscription matches (pull consumers, or unbound).
    unattributed: usize,
}

/// Reads the server's consumers and connections; with `TRELLIS_BENCH_FLEET_DUMP=DIR` also
/// writes what it read there (`jsz-N.json`, `connz-N.json`), to see every consumer and
/// subscription.
async fn census(monitor: &Monitor) -> anyhow::Result<Census> {
    let jsz = monitor
        .get("/jsz?accounts=true&streams=true&consumers=true&config=true")
        .await?;
    let connz = monitor.get("/connz?subs=detail&limit=100000").await?;
    if let Some(dir) = std::env::var_os("TRELLIS_BENCH_FLEET_DUMP") {
        static DUMPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = DUMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("jsz-{n}.json")), jsz.to_string())?;
        std::fs::write(dir.join(format!("connz-{n}.json")), connz.to_string())?;
        println!(
            "  wrote jsz-{n}.json and connz-{n}.json to {}",
            dir.display()
        );
    }
    let mut census = Census {
        consumers: jsz["consumers"].as_u64().unwrap_or(0) as usize,
        ..Census::default()
    };
    // Consumers by the subject they deliver to (push consumers; pull consumers have none).
    let mut delivering: Vec<Option<String>> = Vec::new();
    for account in jsz["account_details"].as_array().into_iter().flatten() {
        for stream in account["stream_detail"].as_array().into_iter().flatten() {
            let name = stream["name"].as_str().unwrap_or("?").to_string();
            let msgs = stream["state"]["messages"].as_u64().unwrap_or(0);
            census.stream_msgs.insert(name.clone(), msgs);
            for consumer in stream["consumer_detail"].as_array().into_iter().flatten() {
                let config = &consumer["config"];
                let kind = format!(
                    "{name} {}{}",
                    config["deliver_policy"].as_str().unwrap_or("?"),
                    if config["headers_only"] == true {
                        " headers-only"
                    } else {
                        ""
                    }
                );
                *census.by_kind.entry(kind).or_default() += 1;
                delivering.push(
                    consumer["config"]["deliver_subject"]
                        .as_str()
                        .map(str::to_string),
                );
            }
        }
    }
    let connections: Vec<(String, Vec<String>)> = connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or("").to_string();
            let detailed = c["subscriptions_list_detail"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["subject"].as_str());
            let plain = c["subscriptions_list"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            let subjects: Vec<String> = detailed.chain(plain).map(str::to_string).collect();
            (name, subjects)
        })
        .collect();
    let mut owned: HashMap<usize, usize> = HashMap::new();
    for subject in &delivering {
        let owner = subject.as_deref().and_then(|subject| {
            connections
                .iter()
                .position(|(_, subs)| subs.iter().any(|s| s == subject))
                .or_else(|| {
                    connections
                        .iter()
                        .position(|(_, subs)| subs.iter().any(|s| subject_matches(s, subject)))
                })
        });
        match owner {
            Some(i) => *owned.entry(i).or_default() += 1,
            None => census.unattributed += 1,
        }
    }
    for (i, (name, subs)) in connections.iter().enumerate() {
        let consumers = owned.get(&i).copied().unwrap_or(0);
        if name.starts_with("trellis-host") {
            census.host_consumers.push(consumers);
            census.host_subs.push(subs.len());
        } else {
            let name = if name.is_empty() { "(unnamed)" } else { name };
            census.others.push(format!(
                "{name}: {} subs, {consumers} consumers",
                subs.len()
            ));
        }
    }
    Ok(census)
}

/// Whether NATS subscription `pattern` (with `*` and `>`) matches `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Counts what crosses the server for `window` by subject pattern (ids and counters as `*`):
/// messages per second, busiest first.
async fn traffic(
    client: &async_nats::Client,
    window: Duration,
) -> anyhow::Result<Vec<(String, f64)>> {
    let mut sub = client
        .subscribe(">")
        .await
        .context("cannot subscribe to >")?;
    client.flush().await.context("flush")?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let end = tokio::time::Instant::now() + window;
    while let Ok(Some(msg)) = tokio::time::timeout_at(end, sub.next()).await {
        *counts.entry(subject_pattern(&msg.subject)).or_default() += 1;
    }
    let _ = sub.unsubscribe().await;
    let mut rates: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(p, c)| (p, c as f64 / window.as_secs_f64()))
        .collect();
    rates.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(rates)
}

/// `subject` with ids (long tokens) and counters (digits) as `*`, cut after 5 tokens.
fn subject_pattern(subject: &str) -> String {
    let tokens: Vec<&str> = subject.split('.').collect();
    let mut out: Vec<&str> = tokens
        .iter()
        .take(5)
        .map(|t| {
            if t.len() >= 16 || (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())) {
                "*"
            } else {
                t
            }
        })
        .collect();
    if tokens.len() > 5 {
        out.push(">");
    }
    out.join(".")
}

/// The buckets' contents in words.
fn buckets(census: &Census) -> String {
    let kv: Vec<String> = census
        .stream_msgs
        .iter()
        .filter(|(name, _)| name.starts_with("KV_"))
        .map(|(name, msgs)| format!("{name} {msgs} msgs"))
        .collect();
    if kv.is_empty() {
        "no KV streams".into()
    } else {
        kv.join(", ")
    }
}

/// The idle figures of one window: server CPU, idle messages, consumers and subscriptions per
/// host, host memory.
fn push_idle(
    bench: &mut Bench,
    load: &str,
    state: &str,
    o: &Observation,
    baseline: &Census,
    hosts: usize,
) {
    let window = format!(
        "{} s window; load average {} before, {} after",
        o.window.as_secs(),
        o.load_before,
        o.load_after
    );
    let top: Vec<String> = o
        .traffic
        .iter()
        .take(4)
        .map(|(p, r)| format!("{p} {r:.1}/s"))
        .collect();
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "nats-server CPU, fleet idle".into(),
        load: load.into(),
        value: Some(o.nats_cpu_pct),
        unit: "% of a core".into(),
        budget: Some(format!("< {CPU_BUDGET_PCT}% of a core")),
        met: Some(o.nats_cpu_pct < CPU_BUDGET_PCT),
        note: format!(
            "{state}; utime+stime from /proc over a {window}; all hosts together {:.2}% of a \
             core ({:.3}% each)",
            o.hosts_cpu_pct,
            o.hosts_cpu_pct / hosts as f64
        ),
        ..Figure::default()
    });
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "messages into nats-server per host, fleet idle".into(),
        load: load.into(),
        value: Some(o.in_per_s / hosts as f64),
        unit: "msgs/s".into(),
        note: format!(
            "/varz: {:.1} in/s, {:.1} out/s in all; JetStream API {:.2} requests/s; a \
             heartbeat every {HEARTBEAT_MS} ms is {:.1}/s per host; busiest subjects ({} s \
             after): {}",
            o.in_per_s,
            o.out_per_s,
            o.js_api_per_s,
            1000.0 / HEARTBEAT_MS.parse::<f64>().unwrap_or(1000.0),
            TRAFFIC_WINDOW.as_secs(),
            top.join(", ")
        ),
        ..Figure::default()
    });
    let c = &o.census;
    let added = c.consumers.saturating_sub(baseline.consumers);
    let per_host = added as f64 / hosts as f64;
    let max_attributed = c.host_consumers.iter().copied().max().unwrap_or(0);
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "JetStream consumers per host, fleet idle".into(),
        load: load.into(),
        value: Some(per_host),
        unit: "consumers".into(),
        budget: Some(format!("<= {CONSUMERS_BUDGET} per host")),
        met: Some(per_host <= CONSUMERS_BUDGET && max_attributed as f64 <= CONSUMERS_BUDGET),
        note: format!(
            "/jsz: {} consumers, {} before the hosts started (harness, wadm); by stream and \
             deliver policy {}; \
             by delivery subject per host connection: median {}, max {max_attributed} \
             ({} consumers match no connection's subscription)",
            c.consumers,
            baseline.consumers,
            c.by_kind
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            median_usize(&c.host_consumers),
            c.unattributed
        ),
        ..Figure::default()
    });
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "NATS subscriptions per host, fleet idle".into(),
        load: load.into(),
        value: Some(median_usize(&c.host_subs) as f64),
        unit: "subs".into(),
        note: format!(
            "/connz median over {} host connections, min {}, max {}; other connections: {}",
            c.host_subs.len(),
            c.host_subs.iter().min().copied().unwrap_or(0),
            c.host_subs.iter().max().copied().unwrap_or(0),
            c.others.join("; ")
        ),
        ..Figure::default()
    });
    bench.push(Figure {
        section: SECTION.into(),
        scenario: "host RSS, fleet idle".into(),
        load: load.into(),
        value: o.rss.get(o.rss.len() / 2).copied(),
        unit: "MiB".into(),
        note: format!(
            "median of {} hosts, min {:.1}, max {:.1} MiB",
            o.rss.len(),
            o.rss.first().copied().unwrap_or(0.0),
            o.rss.last().copied().unwrap_or(0.0)
        ),
        ..Figure::default()
    });
}

fn median_usize(values: &[usize]) -> usize {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (in parentheses) may hold spaces: fields are counted after it. Field
    // 3 (state) comes first, so utime (14) and stime (15) are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse()
            .context("bad /proc/PID/stat field")
    };
    Ok(field(11)? + field(12)?)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks_per_s() -> f64 {
    crate::machine::first_line("getconf", &["CLK_TCK"])
        .parse()
        .unwrap_or(100.0)
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches("_INBOX.abc.*", "_INBOX.abc.1"));
        assert!(subject_matches("_INBOX.>", "_INBOX.abc.1"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.*", "a"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }

    #[test]
    fn patterns_hide_ids_and_counters() {
        assert_eq!(
            subject_pattern("_INBOX.Fq0wRrSZqpE2uCtVY2Nk1a.17"),
            "_INBOX.*.*"
        );
        assert_eq!(
            subject_pattern("wasmbus.evt.bench-fleet.host_heartbeat"),
            "wasmbus.evt.bench-fleet.host_heartbeat"
        );
        assert_eq!(
            subject_pattern("$JS.ACK.KV_x.cons.1.2.3.4"),
            "$JS.ACK.KV_x.cons.*.>"
        );
    }

    #[test]
    fn cpu_ticks_of_this_process() {
        assert!(cpu_ticks(std::process::id()).is_ok());
    }
}

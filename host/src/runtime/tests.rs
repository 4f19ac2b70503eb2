//! Runtime tests against the real `http-hello` component built from `components/`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use super::*;

/// Generous bound for any single step of a test.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the guest components once per test process. A machine without the wasm32-wasip2
/// target fails these tests (saying how to install it) rather than skipping them.
fn hello_wasm() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let components = crate::components_dir();
            let installed = std::process::Command::new("rustup")
                .args(["target", "list", "--installed"])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "wasm32-wasip2"))
                .unwrap_or(false);
            if !installed {
                let added = std::process::Command::new("rustup")
                    .args(["target", "add", "wasm32-wasip2"])
                    .status()
                    .map(|status| status.success())
                    .unwrap_or(false);
                assert!(
                    added,
                    "the wasm32-wasip2 target is not installed and `rustup target add wasm32-wasip2` failed: install it (scripts/install-deps.sh does)"
                );
            }
            let output = std::process::Command::new("bash")
                .arg(components.join("build.sh"))
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .expect("running components/build.sh");
            assert!(
                output.status.success(),
                "components/build.sh failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let wasm = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(PathBuf::from)
                .find(|path| path.ends_with("http_hello.wasm"))
                .expect("build.sh printed the path of http_hello.wasm");
            wasm
        })
        .clone()
}

fn test_runtime(cache_dir: &Path) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(cache_dir.to_path_buf()),
        allow_file_load: true,
        pool_slots: Some(8),
        ..Default::default()
    })
    .expect("creating the runtime")
}

fn spec(id: &str, wasm: &Path, max_instances: u32, limits: &[(&str, &str)]) -> ComponentSpec {
    let limits: HashMap<String, String> = limits
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ComponentSpec {
        id: id.to_string(),
        image_ref: format!("file://{}", wasm.display()),
        max_instances,
        limits: ComponentLimits::from_map(&limits).expect("valid limits"),
        config: HashMap::new(),
    }
}

type TestBody = BoxBody<Bytes, wasmtime_wasi_http::Error>;

fn request(path: &str, body: impl Into<Bytes>) -> http::Request<TestBody> {
    http::Request::post(format!("http://localhost{path}"))
        .body(
            Full::new(body.into())
                .map_err(|never: Infallible| match never {})
                .boxed(),
        )
        .expect("building a request")
}

/// Sends `path` and returns (status, body), or the invocation error.
async fn call(
    component: &PreparedComponent,
    path: &str,
    body: impl Into<Bytes>,
) -> Result<(u16, Bytes), InvocationError> {
    let response = tokio::time::timeout(STEP_TIMEOUT, component.handle_http(request(path, body)))
        .await
        .expect("the invocation finished in time")?;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(STEP_TIMEOUT, response.into_body().collect())
        .await
        .expect("the body finished in time")
        .expect("reading the response body")
        .to_bytes();
    Ok((status, body))
}

async fn assert_hello(component: &PreparedComponent) {
    let (status, body) = call(component, "/", "").await.expect("hello succeeds");
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"Hello from Trellis!\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_answers_and_a_trap_fails_only_its_request() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let component = runtime
        .prepare(spec("hello", &wasm, 4, &[]))
        .await
        .expect("prepare");
    assert!(component.exports_http());
    assert_eq!(component.id(), "hello");
    assert_eq!(component.max_instances(), 4);

    assert_hello(&component).await;
    let (status, body) = call(&component, "/stdout", "").await.expect("stdout route");
    assert_eq!((status, &body[..]), (200, &b"printed\n"[..]));
    let (status, _) = call(&component, "/nope", "").await.expect("404 route");
    assert_eq!(status, 404);

    let error = call(&component, "/trap", "")
        .await
        .expect_err("/trap must fail");
    assert!(
        matches!(error, InvocationError::Trap { .. }),
        "got {error:?}"
    );
    assert_eq!(error.status_code(), http::StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        error.to_string().contains("component hello trapped"),
        "{error}"
    );
    assert_hello(&component).await;
    // The instance may still be finishing after its body was read; it then frees its slot.
    wait_until(|| component.in_flight() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_streams_a_multi_megabyte_body_back() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let component = runtime
        .prepare(spec("echo", &wasm, 2, &[]))
        .await
        .expect("prepare");
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (status, body) = call(&component, "/echo", payload.clone())
        .await
        .expect("echo");
    assert_eq!(status, 200);
    assert_eq!(body.len(), payload.len());
    assert!(body[..] == payload[..], "echoed body differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_after_the_head_ends_the_body_in_an_error_not_a_clean_end() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let component = runtime
        .prepare(spec("stream-trap", &wasm, 2, &[]))
        .await
        .expect("prepare");
    let response = tokio::time::timeout(
        STEP_TIMEOUT,
        component.handle_http(request("/stream-trap", "")),
    )
    .await
    .expect("the head in time")
    .expect("the head is sent before the trap");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = Vec::new();
    let error = loop {
        let frame = tokio::time::timeout(STEP_TIMEOUT, body.frame())
            .await
            .expect("a frame in time");
        match frame {
            Some(Ok(frame)) => received.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Some(Err(error)) => break error,
            None => panic!(
                "the body ended cleanly after {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    };
    assert!(received.starts_with(b"first part"), "{received:?}");
    let error = format!("{error:?}");
    assert!(
        error.contains("cut off") && error.contains("trapped"),
        "{error}"
    );
    // The component serves on.
    assert_hello(&component).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_hits_the_deadline_and_the_next_request_succeeds() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let component = runtime
        .prepare(spec(
            "looper",
            &wasm,
            2,
            &[(MAX_EXECUTION_TIME_MS_KEY, "200")],
        ))
        .await
        .expect("prepare");
    let started = std::time::Instant::now();
    let error = call(&component, "/loop", "")
        .await
        .expect_err("/loop must fail");
    assert!(
        matches!(
            error,
            InvocationError::DeadlineExceeded { limit_ms: 200, .. }
        ),
        "got {error:?}"
    );
    assert_eq!(error.status_code(), http::StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_hello(&component).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_hits_the_memory_limit() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let component = runtime
        .prepare(spec("grower", &wasm, 2, &[(MAX_MEMORY_MB_KEY, "16")]))
        .await
        .expect("prepare");
    let error = call(&component, "/grow", "")
        .await
        .expect_err("/grow must fail");
    assert!(
        matches!(error, InvocationError::MemoryExceeded { limit_mb: 16, .. }),
        "got {error:?}"
    );
    assert_hello(&component).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_rejects_with_busy_and_scaling_up_admits_more() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let component = runtime
        .prepare(spec(
            "busy",
            &wasm,
            1,
            &[
                (MAX_EXECUTION_TIME_MS_KEY, "3000"),
                (MAX_QUEUED_REQUESTS_KEY, "1"),
            ],
        ))
        .await
        .expect("prepare");

    // Occupy the only instance with a request that spins until its deadline.
    let looping = tokio::spawn({
        let component = component.clone();
        async move { call(&component, "/loop", "").await }
    });
    wait_until(|| component.in_flight() == 1).await;

    // One request may wait in the queue...
    let queued = tokio::spawn({
        let component = component.clone();
        async move { call(&component, "/", "").await }
    });
    wait_until(|| component.queued() == 1).await;

    // ...the next one is refused at once.
    let error = call(&component, "/", "")
        .await
        .expect_err("must be refused");
    assert!(
        matches!(
            error,
            InvocationError::Busy {
                max_instances: 1,
                queued: 1,
                ..
            }
        ),
        "got {error:?}"
    );
    assert_eq!(error.status_code(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error.retry_after_secs(), Some(RETRY_AFTER_SECS));
    assert_eq!(
        error.to_string(),
        "component busy is overloaded: all of its 1 instances are busy and 1 requests are already waiting (the wait queue's bound, component limit `max_queued_requests`); raise its instance count or retry later"
    );

    // Scaling up lets the queued request run while the loop still holds its instance.
    component.set_max_instances(2);
    let (status, _) = tokio::time::timeout(STEP_TIMEOUT, queued)
        .await
        .expect("queued request finished")
        .expect("task joined")
        .expect("queued request succeeded after scaling up");
    assert_eq!(status, 200);
    assert_eq!(component.max_instances(), 2);

    let looped = tokio::time::timeout(STEP_TIMEOUT, looping)
        .await
        .expect("loop finished")
        .expect("task joined");
    assert!(matches!(
        looped,
        Err(InvocationError::DeadlineExceeded { .. })
    ));
    wait_until(|| component.in_flight() == 0).await;

    component.set_max_instances(0);
    let error = call(&component, "/", "").await.expect_err("scaled to zero");
    assert!(
        matches!(error, InvocationError::Busy { .. }),
        "got {error:?}"
    );
}

/// A request body the test feeds chunk by chunk; it ends when the sender is dropped.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(hyper::body::Frame::data(data))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_finding_every_instance_busy_waits_instead_of_being_refused() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let component = runtime
        .prepare(spec(
            "waiting",
            &wasm,
            1,
            &[(MAX_EXECUTION_TIME_MS_KEY, "60000")],
        ))
        .await
        .expect("prepare");
    // /echo answers its head at once and holds its instance until the request body ends.
    let (body_tx, body_rx) = tokio::sync::mpsc::channel(1);
    let echo_request = http::Request::post("http://localhost/echo")
        .body(ChannelBody(body_rx))
        .expect("request");
    let echo = tokio::time::timeout(STEP_TIMEOUT, component.handle_http(echo_request))
        .await
        .expect("echo answered its head in time")
        .expect("echo runs");
    assert_eq!(component.in_flight(), 1);

    let queued = tokio::spawn({
        let component = component.clone();
        async move { call(&component, "/", "").await }
    });
    wait_until(|| component.queued() == 1).await;
    assert!(!queued.is_finished(), "it waits, not refused");

    body_tx
        .send(Bytes::from_static(b"ping"))
        .await
        .expect("echo reads its body");
    drop(body_tx);
    let echoed = tokio::time::timeout(STEP_TIMEOUT, echo.into_body().collect())
        .await
        .expect("echo finished in time")
        .expect("echo body")
        .to_bytes();
    assert_eq!(&echoed[..], b"ping");
    let (status, body) = tokio::time::timeout(STEP_TIMEOUT, queued)
        .await
        .expect("the waiting request finished in time")
        .expect("joined")
        .expect("the waiting request is served once the instance frees");
    assert_eq!((status, &body[..]), (200, &b"Hello from Trellis!\n"[..]));
    wait_until(|| component.in_flight() == 0 && component.queued() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_an_instance_at_most_its_execution_deadline() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let component = runtime
        .prepare(spec(
            "stuck",
            &wasm,
            1,
            &[(MAX_EXECUTION_TIME_MS_KEY, "300")],
        ))
        .await
        .expect("prepare");
    // An instance held outside any call: it never runs, so no deadline frees it.
    let held = component.instantiate().await.expect("instantiate");
    let error = call(&component, "/", "")
        .await
        .expect_err("no instance comes free");
    assert!(
        matches!(
            error,
            InvocationError::NoFreeInstance {
                max_instances: 1,
                waited_ms: 300,
                ..
            }
        ),
        "got {error:?}"
    );
    assert_eq!(error.status_code(), http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error.retry_after_secs(), None);
    assert!(error.is_refusal());
    assert_eq!(
        error.to_string(),
        "component stuck had none of its 1 instances free within 300 ms (component limit `max_execution_time_ms`): it is overloaded or its instances are stuck; raise its instance count or make its requests faster"
    );
    assert_eq!(component.queued(), 0);
    drop(held);
    assert_eq!(component.in_flight(), 0);
    assert_hello(&component).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_request_does_not_keep_the_other_instances_from_being_created() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    // A deadline far beyond the test: the loop holds its instance throughout.
    let component = runtime
        .prepare(spec(
            "looper-2",
            &wasm,
            2,
            &[(MAX_EXECUTION_TIME_MS_KEY, "600000")],
        ))
        .await
        .expect("prepare");
    let looping = tokio::spawn({
        let component = component.clone();
        async move { call(&component, "/loop", "").await }
    });
    wait_until(|| component.in_flight() == 1).await;
    // The second instance is created and serves, again and again, beside the loop.
    for _ in 0..5 {
        assert_hello(&component).await;
        wait_until(|| component.in_flight() == 1).await;
    }
    assert!(!looping.is_finished(), "the loop still runs");
    assert_eq!(component.queued(), 0, "nobody had to wait");
    // A caller that gives up stops its instance (at the loop's next epoch yield).
    looping.abort();
    wait_until(|| component.in_flight() == 0).await;
}

/// Polls `condition` every few ms until it holds (fails after [`STEP_TIMEOUT`]).
async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_of_the_same_wasm_share_compiled_code_until_the_last_stops() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let a = runtime
        .prepare(spec("tenant-a", &wasm, 1, &[]))
        .await
        .expect("prepare a");
    let b = runtime
        .prepare(spec("tenant-b", &wasm, 1, &[]))
        .await
        .expect("prepare b");
    assert!(Arc::ptr_eq(&a._code, &b._code), "one copy of the code");
    assert_hello(&a).await;
    assert_hello(&b).await;
    // Once every component using the code is gone, the next prepare loads it again.
    let weak = Arc::downgrade(&a._code);
    drop((a, b));
    assert!(
        weak.upgrade().is_none(),
        "code freed with its last component"
    );
    let c = runtime
        .prepare(spec("tenant-c", &wasm, 1, &[]))
        .await
        .expect("prepare c");
    assert_hello(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_is_cached_on_disk_and_never_served_for_other_bytes() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let workdir = tempfile::tempdir().expect("tempdir");
    let path = workdir.path().join("component.wasm");
    std::fs::copy(&wasm, &path).expect("copy the component");

    let first = test_runtime(cache.path())
        .prepare(spec("cached", &path, 1, &[]))
        .await
        .expect("first prepare");
    assert_eq!(first.compile_source(), CompileSource::Compiled);
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .expect("cache dir exists")
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one cache entry, no temp files: {entries:?}"
    );
    assert!(entries[0].starts_with(first.digest()), "{entries:?}");

    // A new runtime (a restart) loads the compiled code from disk, and it works.
    let second = test_runtime(cache.path())
        .prepare(spec("cached", &path, 1, &[]))
        .await
        .expect("second prepare");
    assert_eq!(second.compile_source(), CompileSource::Cache);
    assert_hello(&second).await;

    // Different bytes at the same path: recompiled, never the cached hello.
    std::fs::write(&path, "(component)").expect("overwrite the component");
    let third = test_runtime(cache.path())
        .prepare(spec("cached", &path, 1, &[]))
        .await
        .expect("third prepare");
    assert_eq!(third.compile_source(), CompileSource::Compiled);
    assert_ne!(third.digest(), first.digest());
    assert!(!third.exports_http());
    let error = third
        .handle_http(request("/", ""))
        .await
        .expect_err("not an http component");
    assert!(
        error
            .to_string()
            .contains("does not export wasi:http/incoming-handler"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_errors_are_clear() {
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());

    let missing_import = cache.path().join("needs-import.wat");
    std::fs::write(
        &missing_import,
        r#"(component (import "trellis:nope/thing@0.1.0" (instance (export "call" (func)))))"#,
    )
    .expect("write wat");
    let error = runtime
        .prepare(ComponentSpec {
            id: "needy".into(),
            image_ref: missing_import.display().to_string(),
            max_instances: 1,
            ..Default::default()
        })
        .await
        .expect_err("unserved import");
    let message = format!("{error:#}");
    assert!(message.contains("trellis:nope/thing@0.1.0"), "{message}");
    assert!(message.contains("does not provide"), "{message}");

    let no_files = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        allow_file_load: false,
        pool_slots: Some(1),
        ..Default::default()
    })
    .expect("runtime");
    let error = no_files
        .prepare(ComponentSpec {
            id: "x".into(),
            image_ref: "file:///tmp/x.wasm".into(),
            ..Default::default()
        })
        .await
        .expect_err("file loading disabled");
    assert!(
        format!("{error:#}").contains("--allow-file-load"),
        "{error:#}"
    );

    let error = runtime
        .prepare(ComponentSpec {
            id: "oci".into(),
            image_ref: "ghcr.io/wasmcloud/components/http-hello-world-rust:0.1.0".into(),
            ..Default::default()
        })
        .await
        .expect_err("OCI refs unsupported");
    assert!(
        format!("{error:#}").contains("this runtime has no OCI settings"),
        "{error:#}"
    );
}

#[test]
fn image_refs_are_classified() {
    assert_eq!(
        classify_image_ref("file:///a/b.wasm"),
        ImageRefKind::File("/a/b.wasm".into())
    );
    assert_eq!(
        classify_image_ref("./b.wasm"),
        ImageRefKind::File("./b.wasm".into())
    );
    assert!(matches!(
        classify_image_ref("oci://ghcr.io/a/b:1"),
        ImageRefKind::Oci(_)
    ));
    assert!(matches!(
        classify_image_ref("localhost:5000/a/b:1"),
        ImageRefKind::Oci(_)
    ));
    assert!(matches!(
        classify_image_ref("https://example.com/a.wasm"),
        ImageRefKind::UnsupportedScheme(_)
    ));
}

#[test]
fn limits_parse_and_round_trip() {
    let defaults = ComponentLimits::from_map(&HashMap::new()).expect("defaults");
    assert_eq!(defaults, ComponentLimits::default());
    assert_eq!(defaults.max_memory_mb, DEFAULT_MAX_MEMORY_MB);
    assert_eq!(
        defaults.max_execution_time_ms,
        DEFAULT_MAX_EXECUTION_TIME_MS
    );
    assert_eq!(defaults.max_execution_time_ms, 10_000);
    assert_eq!(defaults.queue_bound(1), 1000);
    assert_eq!(defaults.queue_bound(3), 3000);
    assert_eq!(defaults.queue_bound(100), 10_000);
    assert_eq!(defaults.queue_bound(u32::MAX), 10_000);

    let map: HashMap<String, String> = [
        (MAX_MEMORY_MB_KEY, "128"),
        (MAX_EXECUTION_TIME_MS_KEY, "1500"),
        (MAX_QUEUED_REQUESTS_KEY, "7"),
        ("unknown_key", "ignored"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let limits = ComponentLimits::from_map(&map).expect("valid");
    assert_eq!(limits.max_memory_mb, 128);
    assert_eq!(limits.max_execution_time_ms, 1500);
    assert_eq!(limits.queue_bound(3), 7);
    assert_eq!(
        ComponentLimits::from_map(&limits.to_map()).expect("round trip"),
        limits
    );

    for bad in ["0", "-1", "lots", ""] {
        let map = HashMap::from([(MAX_MEMORY_MB_KEY.to_string(), bad.to_string())]);
        let error = ComponentLimits::from_map(&map).expect_err("invalid");
        assert!(error.to_string().contains(MAX_MEMORY_MB_KEY), "{error}");
    }
}

#[test]
fn allowed_hosts_match_host_and_port() {
    let allowed = AllowedHosts::parse("api.example.com, localhost:8080,https://Other.org/");
    assert!(allowed.allows("api.example.com", 443));
    assert!(allowed.allows("API.example.com", 80));
    assert!(allowed.allows("localhost", 8080));
    assert!(!allowed.allows("localhost", 8081));
    assert!(allowed.allows("other.org", 443));
    assert!(!allowed.allows("evil.example.com", 443));
    assert!(!AllowedHosts::parse("").allows("anything", 80));
    assert!(AllowedHosts::parse("*").allows("anything", 80));
}

#[test]
fn pool_is_sized_from_memory() {
    assert_eq!(engine::pool_slots_for_memory(None), 16);
    assert_eq!(engine::pool_slots_for_memory(Some(400)), 25);
    assert_eq!(engine::pool_slots_for_memory(Some(24 * 1024)), 1000);
    assert_eq!(engine::pool_slots_for_memory(Some(64)), 16);
}

/// A capability plugged in from outside: a host function reading per-instance state.
struct CountingCapability;

struct CountingState(u32);

impl Capability for CountingCapability {
    fn name(&self) -> &str {
        "test:counting"
    }
    fn add_to_linker(
        &self,
        linker: &mut wasmtime::component::Linker<InstanceState>,
    ) -> anyhow::Result<()> {
        linker.instance("test:counting/counter@0.1.0")?.func_wrap(
            "next",
            |mut store: wasmtime::StoreContextMut<'_, InstanceState>, (): ()| {
                let state = store
                    .data_mut()
                    .extension_mut::<CountingState>()
                    .ok_or_else(|| wasmtime::Error::msg("no counting state"))?;
                state.0 += 1;
                Ok((state.0,))
            },
        )?;
        Ok(())
    }
    fn new_instance_state(
        &self,
        _ctx: &InstanceContext,
        extensions: &mut Extensions,
    ) -> anyhow::Result<()> {
        extensions.insert(CountingState(41));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_add_imports_and_instance_state() {
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        allow_file_load: true,
        pool_slots: Some(2),
        capabilities: vec![Arc::new(CountingCapability)],
        ..Default::default()
    })
    .expect("runtime");
    let path = cache.path().join("uses-counter.wat");
    std::fs::write(
        &path,
        r#"(component
             (import "test:counting/counter@0.1.0" (instance
               (export "next" (func (result u32)))))
           )"#,
    )
    .expect("write wat");
    let component = runtime
        .prepare(ComponentSpec {
            id: "counter-user".into(),
            image_ref: path.display().to_string(),
            max_instances: 1,
            ..Default::default()
        })
        .await
        .expect("the capability serves the import");
    let mut invocation = component.instantiate().await.expect("instantiate");
    assert_eq!(invocation.store.data().component_id(), "counter-user");
    assert_eq!(
        invocation
            .store
            .data_mut()
            .extension_mut::<CountingState>()
            .map(|s| s.0),
        Some(41)
    );
}

/// Answers every HTTP/1.1 request on a loopback port with `204 No Content`; stops when dropped.
struct Upstream {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("local addr").port();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_http_is_limited_to_allowed_hosts() {
    let wasm = hello_wasm();
    let upstream = Upstream::start().await;
    let port = upstream.port;
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let mut allowed_spec = spec("fetcher", &wasm, 2, &[]);
    allowed_spec.config.insert(
        ALLOWED_HOSTS_KEY.to_string(),
        format!("example.invalid, 127.0.0.1:{port}"),
    );
    let allowed = runtime.prepare(allowed_spec).await.expect("prepare");

    let (status, body) = call(&allowed, &format!("/fetch?target=127.0.0.1:{port}/x"), "")
        .await
        .expect("fetch");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "upstream status 204\n")
    );

    // Same server under another name: not in the list.
    let (status, body) = call(&allowed, &format!("/fetch?target=localhost:{port}/x"), "")
        .await
        .expect("fetch");
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("HttpRequestDenied"),
        "{body:?}"
    );

    // No allowed_hosts at all: nothing goes out.
    let closed = runtime
        .prepare(spec("closed", &wasm, 1, &[]))
        .await
        .expect("prepare");
    let (status, body) = call(&closed, &format!("/fetch?target=127.0.0.1:{port}/x"), "")
        .await
        .expect("fetch");
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("HttpRequestDenied"),
        "{body:?}"
    );
}

/// Guest log lines captured by the test subscriber: (component_id, stream, message).
static GUEST_LINES: std::sync::Mutex<Vec<(String, String, String)>> =
    std::sync::Mutex::new(Vec::new());

/// Records events that carry a `component_id` field.
struct GuestLineRecorder;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for GuestLineRecorder {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        #[derive(Default)]
        struct Fields {
            component_id: String,
            stream: String,
            message: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                match field.name() {
                    "component_id" => self.component_id = value.to_string(),
                    "stream" => self.stream = value.to_string(),
                    _ => {}
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if !fields.component_id.is_empty() {
            GUEST_LINES.lock().unwrap_or_else(|p| p.into_inner()).push((
                fields.component_id,
                fields.stream,
                fields.message,
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stdout_and_stderr_go_to_the_host_log_tagged_with_the_component() {
    use tracing_subscriber::layer::SubscriberExt;
    let wasm = hello_wasm();
    if tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(GuestLineRecorder),
    )
    .is_err()
    {
        eprintln!(
            "SKIPPING the guest log check: another test installed the global tracing subscriber"
        );
        return;
    }
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let component = runtime
        .prepare(spec("printer", &wasm, 1, &[]))
        .await
        .expect("prepare");
    let (status, _) = call(&component, "/stdout", "").await.expect("stdout route");
    assert_eq!(status, 200);
    let logged = |stream: &str, text: &str| {
        GUEST_LINES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(id, s, message)| id == "printer" && s == stream && message == text)
    };
    wait_until(|| {
        logged("stdout", "hello from http-hello on stdout")
            && logged("stderr", "hello from http-hello on stderr")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_invocations_get_the_same_limits() {
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    let path = cache.path().join("spinner.wat");
    std::fs::write(
        &path,
        r#"(component
             (core module $m
               (func (export "spin") (loop $forever (br $forever)))
               (func (export "answer") (result i32) (i32.const 42)))
             (core instance $i (instantiate $m))
             (func (export "spin") (canon lift (core func $i "spin")))
             (func (export "answer") (result u32) (canon lift (core func $i "answer"))))"#,
    )
    .expect("write wat");
    let component = runtime
        .prepare(ComponentSpec {
            id: "spinner".into(),
            image_ref: path.display().to_string(),
            max_instances: 1,
            limits: ComponentLimits {
                max_execution_time_ms: 100,
                max_queued_requests: Some(0),
                ..Default::default()
            },
            config: HashMap::new(),
        })
        .await
        .expect("prepare");
    assert!(!component.exports_http());

    let mut invocation = component.instantiate().await.expect("instantiate");
    assert_eq!(component.in_flight(), 1);
    let error = component
        .instantiate()
        .await
        .err()
        .expect("the only slot is taken");
    assert!(matches!(error, InvocationError::Busy { .. }), "{error:?}");

    let spin = invocation
        .instance
        .get_typed_func::<(), ()>(&mut invocation.store, "spin")
        .expect("spin export");
    let error = tokio::time::timeout(STEP_TIMEOUT, spin.call_async(&mut invocation.store, ()))
        .await
        .expect("interrupted in time")
        .expect_err("spin never returns");
    let error = invocation.error(error);
    assert!(
        matches!(
            error,
            InvocationError::DeadlineExceeded { limit_ms: 100, .. }
        ),
        "{error:?}"
    );
    drop(invocation);
    assert_eq!(component.in_flight(), 0);

    let mut invocation = component.instantiate().await.expect("instantiate again");
    let answer = invocation
        .instance
        .get_typed_func::<(), (u32,)>(&mut invocation.store, "answer")
        .expect("answer export");
    let (value,) = answer
        .call_async(&mut invocation.store, ())
        .await
        .expect("answer");
    assert_eq!(value, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreservable_pool_falls_back_to_on_demand_allocation() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    // A million slots of 4 GiB memories cannot fit in any address space.
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        allow_file_load: true,
        pool_slots: Some(1_000_000),
        ..Default::default()
    })
    .expect("the runtime starts anyway");
    assert_eq!(runtime.pool_slots(), None);
    let component = runtime
        .prepare(spec("on-demand", &wasm, 1, &[]))
        .await
        .expect("prepare");
    assert_hello(&component).await;
}

#[test]
fn the_default_pool_is_sized_from_this_machine() {
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .expect("runtime");
    let expected = engine::pool_slots_for_memory(engine::available_memory_mb());
    // Pooling may legitimately be unavailable (tight ulimit -v); then it falls back.
    if let Some(slots) = runtime.pool_slots() {
        assert_eq!(slots, expected);
    }
    eprintln!("default pool: {:?} slots", runtime.pool_slots());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spares_are_taken_once_and_capped_by_the_pool() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        allow_file_load: true,
        // 16 slots: a budget of two spares.
        pool_slots: Some(16),
        ..Default::default()
    })
    .expect("creating the runtime");
    let mut components = Vec::new();
    for id in ["spare-a", "spare-b", "spare-c"] {
        components.push(
            runtime
                .prepare(spec(id, &wasm, 2, &[]))
                .await
                .expect("prepare"),
        );
    }
    let first = &components[0];
    assert!(!first.has_spare(), "no spare before one is asked for");
    first.prepare_spare().await;
    first.prepare_spare().await;
    assert!(first.has_spare());

    // Taking it leaves none; the instance it gives is usable and counted.
    let invocation = first
        .instantiate()
        .await
        .expect("instantiate from the spare");
    assert!(!first.has_spare(), "a spare serves one invocation only");
    assert_eq!(first.in_flight(), 1);
    drop(invocation);
    assert_eq!(first.in_flight(), 0);

    first.prepare_spare().await;
    components[1].prepare_spare().await;
    components[2].prepare_spare().await;
    assert!(first.has_spare() && components[1].has_spare());
    assert!(
        !components[2].has_spare(),
        "a third spare would exceed the budget"
    );
    // A stopped component returns its spare's share of the budget.
    components.remove(0);
    components[1].prepare_spare().await;
    assert!(components[1].has_spare());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_cannot_be_instantiated_is_caught_when_prepared_and_checked() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = test_runtime(cache.path());
    // The guest's initial memory (its stack alone is 1 MiB) does not fit a 1 MiB limit: it
    // links, but no instance can ever be created.
    let component = runtime
        .prepare(spec("cramped", &wasm, 1, &[(MAX_MEMORY_MB_KEY, "1")]))
        .await
        .expect("it links");
    let error = component
        .check_instantiation()
        .await
        .expect_err("no instance fits 1 MiB");
    assert!(
        matches!(error, InvocationError::MemoryExceeded { limit_mb: 1, .. }),
        "got {error:?}"
    );

    let roomy = runtime
        .prepare(spec("roomy", &wasm, 1, &[]))
        .await
        .expect("prepare");
    roomy.check_instantiation().await.expect("instantiates");
    assert_hello(&roomy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_are_read_only_by_default_and_cannot_be_escaped() {
    let wasm = hello_wasm();
    let cache = tempfile::tempdir().expect("tempdir");
    let base = tempfile::tempdir().expect("tempdir");
    let allowed = base.path().join("allowed");
    let site = allowed.join("site");
    std::fs::create_dir_all(&site).expect("mkdir");
    std::fs::write(site.join("a.txt"), "hello").expect("write");
    std::fs::write(base.path().join("secret.txt"), "secret").expect("write");
    std::os::unix::fs::symlink(base.path().join("secret.txt"), site.join("escape"))
        .expect("symlink");
    std::os::unix::fs::symlink(base.path(), site.join("up")).expect("symlink");
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        allow_file_load: true,
        pool_slots: Some(8),
        mount_roots: vec![MountRoot {
            path: allowed.clone(),
            writable: true,
        }],
        ..Default::default()
    })
    .expect("runtime");
    let mut read_only = spec("ro", &wasm, 1, &[]);
    read_only.config.insert(
        MOUNTS_KEY.into(),
        format!("/site=file://{}", site.display()),
    );
    let component = runtime.prepare(read_only).await.expect("prepare");

    let (status, body) = call(&component, "/fs-read?/site/a.txt", "")
        .await
        .expect("read");
    assert_eq!((status, &body[..]), (200, &b"hello"[..]));
    let (status, body) = call(&component, "/fs-write?/site/new.txt", "")
        .await
        .expect("write attempt");
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(!site.join("new.txt").exists());
    let (status, body) = call(&component, "/fs-write?/site/a.txt", "")
        .await
        .expect("overwrite attempt");
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(std::fs::read(site.join("a.txt")).expect("read"), b"hello");
    for escape in ["/site/../secret.txt", "/site/escape", "/site/up/secret.txt"] {
        let (status, body) = call(&component, &format!("/fs-read?{escape}"), "")
            .await
            .expect("escape attempt");
        assert_eq!(status, 403, "{escape}: {}", String::from_utf8_lossy(&body));
        assert_ne!(&body[..], b"secret", "{escape} escaped the mount");
    }
    // Nothing outside the mounts exists for the guest.
    let outside = format!("/fs-read?{}", base.path().join("secret.txt").display());
    let (status, _) = call(&component, &outside, "").await.expect("outside");
    assert_eq!(status, 403);

    // Writable when asked (`:rw`) under a root that allows it.
    let mut writable = spec("rw", &wasm, 1, &[]);
    writable
        .config
        .insert(MOUNTS_KEY.into(), format!("/data={}:rw", site.display()));
    let component = runtime.prepare(writable).await.expect("prepare rw");
    let (status, body) = call(&component, "/fs-write?/data/new.txt", "")
        .await
        .expect("write");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        std::fs::read(site.join("new.txt")).expect("written on the host"),
        b"written\n"
    );

    // Outside the allowed roots: refused when prepared, saying why.
    let mut refused = spec("etc", &wasm, 1, &[]);
    refused.config.insert(MOUNTS_KEY.into(), "/etc=/etc".into());
    let error = runtime
        .prepare(refused)
        .await
        .expect_err("a mount outside the roots")
        .to_string();
    assert!(
        error.contains("outside the directories this host allows"),
        "{error}"
    );
}

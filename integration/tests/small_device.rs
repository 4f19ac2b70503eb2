//! A host on a small device: under a 512 MB address-space limit (`ulimit -v 524288`, common on
//! small devices and in some container runtimes) it still instantiates and serves the hello app.
//! Before, every instance tried to reserve 4 GiB of address space and failed.
//!
//! One test in its own binary: it points `TRELLIS_BIN` at a wrapper that sets the limit, which
//! would affect any other test of the same process.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;
use trellis_integration::{
    control_ok as control, eventually, free_port, guest_ref, http_ok, trellis_bin, HostProcess,
    Lattice, NatsServer,
};

/// The limit, in KiB as `ulimit -v` takes it: 512 MiB.
const ADDRESS_SPACE_KIB: u64 = 524_288;

#[tokio::test(flavor = "multi_thread")]
async fn a_host_under_a_512_mb_address_space_limit_serves_hello() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = dir.path().join("trellis-limited");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -v {ADDRESS_SPACE_KIB}\nexec '{}' \"$@\"\n",
            trellis_bin().display()
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::env::set_var("TRELLIS_BIN", &wrapper);

    let nats = NatsServer::start().await;
    let host = HostProcess::start(&nats.url(), "small", &[]).await;
    let lattice = Lattice::connect(&nats.url(), "small").await;
    assert!(
        host.logs().contains("address-space limit"),
        "the host says it runs under a limit:\n{}",
        host.logs()
    );

    // Scaling creates one instance (the host checks), so a scaled event means it fits.
    let mut events = lattice.events().await;
    control(
        &lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": guest_ref("http_hello"), "component_id": "hello", "count": 2}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == "hello")
        .await
        .unwrap_or_else(|error| panic!("{error:#}\nhost log:\n{}", host.logs()));

    let addr = format!("127.0.0.1:{}", free_port());
    control(
        &lattice,
        lattice.subjects.config_put("hello-addr"),
        json!({"address": addr}),
    )
    .await;
    control(
        &lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": "http-server", "provider_ref": "trellis+builtin://http-server",
               "config": []}),
    )
    .await;
    control(
        &lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "http-server", "target": "hello", "wit_namespace": "wasi",
               "wit_package": "http", "interfaces": ["incoming-handler"],
               "source_config": ["hello-addr"]}),
    )
    .await;
    let body = eventually("hello to answer under the limit", || http_ok(&addr, "/")).await;
    assert!(!body.is_empty());
    // Several requests in a row, each in a fresh instance.
    for _ in 0..20 {
        assert!(
            http_ok(&addr, "/").await.is_some(),
            "host log:\n{}",
            host.logs()
        );
    }
}

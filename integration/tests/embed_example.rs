//! The embedding example (`providers/examples/embed_host.rs`, built by `cargo build
//! --workspace --all-targets`) really runs a host: it joins the lattice, answers `host.ping`
//! with its label, and stops cleanly when its stdin closes.

use std::process::Stdio;

use tokio::io::AsyncBufReadExt as _;
use trellis_integration::{trellis_bin, Lattice, NatsServer, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn the_embedding_example_runs_a_host() {
    let example = trellis_bin()
        .parent()
        .map(|dir| dir.join("examples/embed_host"))
        .expect("target dir");
    assert!(
        example.is_file(),
        "{} is missing: build it with `cargo build --workspace --all-targets`",
        example.display()
    );
    let nats = NatsServer::start().await;
    let lattice = Lattice::connect(&nats.url(), "embedded").await;
    let mut child = tokio::process::Command::new(&example)
        .args([nats.url().as_str(), "embedded"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the example");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the example printed nothing")
        .expect("read stdout")
        .expect("a line");
    let host_id = first
        .strip_prefix("host ")
        .and_then(|rest| rest.strip_suffix(" started"))
        .unwrap_or_else(|| panic!("unexpected first line `{first}`"))
        .to_string();
    let host = lattice.wait_for_host(&host_id).await.expect("host answers");
    assert_eq!(
        host.labels.get("embedded").map(String::as_str),
        Some("true")
    );

    drop(child.stdin.take());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the example did not stop")
        .expect("wait");
    assert!(status.success(), "{status}");
    let last = lines.next_line().await.expect("read stdout");
    assert_eq!(last.as_deref(), Some("host stopped"));
}

//! `trellis up --detach --deploy`, `trellis app ...` and `trellis down`: a whole local lattice
//! started and stopped the way a user does it.

use std::path::Path;

use serde_json::Value;
use trellis_integration::{
    eventually, free_port, guest, http_ok, is_alive, site_app_manifest, trellis_cli, StopOnDrop,
};

fn log_of(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("logs/up.log")).unwrap_or_default()
}

#[tokio::test]
async fn up_deploy_status_and_down() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let _stop = StopOnDrop(dir);
    let http_port = free_port();
    let nats_port = free_port();
    let manifest = dir.join("hello.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: cli-hello
spec:
  components:
    - name: hello
      type: component
      properties:
        image: file://{wasm}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.0
      traits:
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            target:
              name: hello
            source:
              config:
                - name: listen
                  properties:
                    address: 0.0.0.0:{http_port}
"#,
            wasm = guest("http_hello").display()
        ),
    )
    .unwrap();

    let port = nats_port.to_string();
    let manifest_arg = manifest.display().to_string();
    let (ok, out, err) = trellis_cli(
        dir,
        &[
            "up",
            "--detach",
            "--nats-port",
            &port,
            "--lattice",
            "cli-up",
            "--label",
            "role=test",
            "--deploy",
            &manifest_arg,
        ],
    )
    .await;
    assert!(ok, "up failed:\n{err}\nlog:\n{}", log_of(dir));
    assert!(out.contains("trellis is up"), "{out}");
    assert!(
        out.contains(&format!("nats://127.0.0.1:{nats_port}")),
        "{out}"
    );
    assert!(out.contains("lattice     cli-up"), "{out}");
    let url = format!("http://127.0.0.1:{http_port}/");
    assert!(out.contains("app cli-hello"), "{out}\n{err}");
    assert!(out.contains(&url), "the URL is printed: {out}");

    // The app answers on the printed URL.
    let address = format!("127.0.0.1:{http_port}");
    let body = eventually("the app to answer over HTTP", || http_ok(&address, "/")).await;
    assert!(body.contains("Hello from Trellis!"), "{body}");

    // Secure by default: NATS admits only the keys `up` generated (kept private), and other
    // commands find the CLI's key by themselves.
    assert!(out.contains("nkeys required"), "{out}");
    for user in ["host", "wadm", "cli"] {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("auth/{user}.nk"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let anonymous = async_nats::connect(&nats_url).await;
    assert!(anonymous.is_err(), "an anonymous client got in");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let host_pid = state["host_pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap();
    let seed = std::fs::read_to_string(dir.join("auth/host.nk")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(seed.trim()),
        "the host's seed is on its command line"
    );

    // Other commands find the lattice through the state file, with no flags.
    let (ok, out, err) = trellis_cli(dir, &["app", "list", "-o", "json"]).await;
    assert!(ok, "{err}");
    let apps: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(apps[0]["name"], "cli-hello", "{apps}");
    let (ok, out, err) = trellis_cli(dir, &["app", "status", "cli-hello"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("cli-hello: deployed"), "{out}");
    let (ok, out, _) = trellis_cli(dir, &["get", "hosts"]).await;
    assert!(ok && out.contains("role=test"), "{out}");

    // A second `up` refuses.
    let (ok, _, err) = trellis_cli(dir, &["up", "--nats-port", &port]).await;
    assert!(!ok);
    assert!(err.contains("already up"), "{err}");

    // `down` stops every process and removes the state.
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let pids: Vec<u64> = ["pid", "nats_pid", "host_pid", "wadm_pid"]
        .iter()
        .filter_map(|k| state[k].as_u64())
        .collect();
    assert_eq!(pids.len(), 4, "{state}");
    let (ok, out, err) = trellis_cli(dir, &["down"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("stopped lattice cli-up"), "{out}");
    assert!(!dir.join("up.json").exists());
    for pid in pids {
        assert!(!is_alive(pid), "process {pid} outlived `trellis down`");
    }
    let (ok, out, _) = trellis_cli(dir, &["down"]).await;
    assert!(ok && out.contains("not up"), "{out}");
}

#[tokio::test]
async fn up_insecure_says_so_and_admits_anyone() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let _stop = StopOnDrop(dir);
    let nats_port = free_port();
    let port = nats_port.to_string();
    let (ok, out, err) = trellis_cli(
        dir,
        &[
            "up",
            "--detach",
            "--insecure",
            "--nats-port",
            &port,
            "--lattice",
            "open",
        ],
    )
    .await;
    assert!(ok, "up failed:\n{err}\nlog:\n{}", log_of(dir));
    assert!(err.contains("WARNING: --insecure"), "{err}");
    assert!(out.contains("NONE (--insecure)"), "{out}");
    // No NATS users (only the secrets backend's xkeys, which it runs with --insecure too).
    assert!(!dir.join("auth/cli.nk").exists());
    assert!(out.contains("secrets     backend nats-kv running"), "{out}");
    let client = async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await;
    assert!(client.is_ok(), "--insecure keeps today's open NATS");
    let (ok, out, err) = trellis_cli(dir, &["get", "hosts"]).await;
    assert!(ok, "{out}\n{err}");
    let (ok, _, err) = trellis_cli(dir, &["down"]).await;
    assert!(ok, "{err}");
}

/// An edge site the way an operator starts one: a hub (`trellis up --leaf-listen`) and a site
/// (`trellis up --leaf-of ... --leaf-password-file ...`) whose host the hub's reconciler places
/// an app on by its label; the app serves at the site.
#[tokio::test]
async fn up_leaf_of_joins_a_hub_and_serves_what_the_hub_places() {
    let hub_data = tempfile::tempdir().unwrap();
    let hub_dir = hub_data.path();
    let _stop_hub = StopOnDrop(hub_dir);
    let site_data = tempfile::tempdir().unwrap();
    let site_dir = site_data.path();
    let _stop_site = StopOnDrop(site_dir);
    let leaf_listen = format!("127.0.0.1:{}", free_port());
    let hub_port = free_port().to_string();
    let (ok, out, err) = trellis_cli(
        hub_dir,
        &[
            "up",
            "--detach",
            "--nats-port",
            &hub_port,
            "--lattice",
            "fleet",
            "--leaf-listen",
            &leaf_listen,
        ],
    )
    .await;
    assert!(ok, "hub up failed:\n{err}\nlog:\n{}", log_of(hub_dir));
    let password_file = hub_dir.join("auth/leaf.password");
    let password = std::fs::read_to_string(&password_file).expect("the hub keeps a leaf password");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&password_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(
        !out.contains(password.trim()),
        "the password is printed: {out}"
    );

    let site_port = free_port().to_string();
    let hub_url = format!("nats-leaf://{leaf_listen}");
    let password_arg = password_file.display().to_string();
    let (ok, out, err) = trellis_cli(
        site_dir,
        &[
            "up",
            "--detach",
            "--nats-port",
            &site_port,
            "--lattice",
            "fleet",
            "--leaf-of",
            &hub_url,
            "--leaf-password-file",
            &password_arg,
            "--leaf-domain",
            "shop1",
            "--label",
            "site=shop1",
        ],
    )
    .await;
    assert!(ok, "site up failed:\n{err}\nlog:\n{}", log_of(site_dir));
    assert!(!out.contains(password.trim()) && !err.contains(password.trim()));
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(site_dir.join("up.json")).unwrap()).unwrap();
    let host_pid = state["host_pid"].as_u64().expect("the site runs a host");
    assert!(
        state["wadm_pid"].as_u64().is_none(),
        "an edge site runs no reconciler: {state}"
    );
    let cmdline = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(password.trim()));

    // The hub sees the site's host by its label.
    eventually("the hub to see the site's host", || async {
        let (ok, out, _) = trellis_cli(hub_dir, &["get", "hosts"]).await;
        (ok && out.contains("site=shop1")).then_some(())
    })
    .await;

    // The hub's reconciler places an app on the site; it serves there.
    let http_port = free_port();
    let manifest = hub_dir.join("shop.yaml");
    let address = format!("127.0.0.1:{http_port}");
    std::fs::write(&manifest, site_app_manifest("shop", "shop1", 1, &address)).unwrap();
    let manifest_arg = manifest.display().to_string();
    let (ok, out, err) = trellis_cli(hub_dir, &["app", "deploy", &manifest_arg]).await;
    assert!(ok, "{out}\n{err}");
    let body = eventually("the site to serve the app", || http_ok(&address, "/")).await;
    assert!(body.contains("Hello from Trellis!"), "{body}");
    eventually("the hub to report the app deployed", || async {
        let (ok, out, _) = trellis_cli(hub_dir, &["app", "status", "shop"]).await;
        (ok && out.starts_with("shop: deployed")).then_some(())
    })
    .await;

    let (ok, _, err) = trellis_cli(site_dir, &["down"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = trellis_cli(hub_dir, &["down"]).await;
    assert!(ok, "{err}");
}

//! NATS authentication everywhere: real nats-server processes that require nkeys, passwords,
//! TLS client certificates or separate accounts, and the host, reconciler, process provider
//! and CLI joining them with the shared `--nats-*` options and `TRELLIS_NATS_*` variables.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use trellis_integration::{
    connect_with, control_ok, free_port, guest, http_ok, put_config, trellis_cli_env, HostProcess,
    Lattice, NatsServer, WadmProcess,
};
use trellis_protocol::nats::{is_auth_error, NatsAuth};

/// A fresh nkey user: its public key (for the server config) and the options that log in as it.
fn nkey_user() -> (String, NatsAuth) {
    let key = nkeys::KeyPair::new_user();
    let auth = NatsAuth {
        nkey_seed: Some(key.seed().unwrap()),
        ..Default::default()
    };
    (key.public_key(), auth)
}

fn seed_env(auth: &NatsAuth) -> Vec<(&'static str, String)> {
    vec![("TRELLIS_NATS_SEED", auth.nkey_seed.clone().unwrap())]
}

/// `nats://user:password@127.0.0.1:PORT` for `nats`.
fn url_with_password(nats: &NatsServer, user: &str, password: &str) -> String {
    nats.url()
        .replacen("nats://", &format!("nats://{user}:{password}@"), 1)
}

async fn scale_hello(lattice: &Lattice, host: &HostProcess, id: &str) {
    let mut events = lattice.events().await;
    control_ok(
        lattice,
        lattice.subjects.component_scale(&host.id),
        json!({"component_ref": format!("file://{}", guest("http_hello").display()),
               "component_id": id, "count": 1}),
    )
    .await;
    events
        .wait_for("component_scaled", |d| d["component_id"] == id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_client_is_refused_and_the_lattice_keeps_working() {
    let (host_key, host_auth) = nkey_user();
    let (wadm_key, wadm_auth) = nkey_user();
    let (cli_key, cli_auth) = nkey_user();
    let config = format!(
        "authorization {{ users = [ {{nkey: \"{host_key}\"}}, {{nkey: \"{wadm_key}\"}}, \
         {{nkey: \"{cli_key}\"}}, {{user: alice, password: \"s3cret-pw\"}} ] }}\n"
    );
    let nats = NatsServer::start_with_config(&config, cli_auth.clone()).await;
    let url = nats.url();

    let Err(err) = async_nats::connect(&url).await else {
        panic!("an anonymous client must be refused");
    };
    assert!(is_auth_error(&err), "{err}");

    let host = HostProcess::start_with_auth(&url, "default", &[], &host_auth).await;
    let wadm = WadmProcess::start_with_auth(&url, "default", &[], &wadm_auth);
    let client = nats.client().await;
    wadm.wait_ready(&client, "default").await;

    // The CLI with a seed in the environment, or a user and password in the URL or the
    // environment, sees the host.
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let (ok, out, err) = trellis_cli_env(
        dir,
        &["get", "hosts", "--nats-url", &url],
        &seed_env(&cli_auth),
    )
    .await;
    assert!(ok && out.contains(&host.id), "{out}\n{err}");
    let with_password = url_with_password(&nats, "alice", "s3cret-pw");
    let (ok, out, err) =
        trellis_cli_env(dir, &["get", "hosts", "--nats-url", &with_password], &[]).await;
    assert!(ok && out.contains(&host.id), "{out}\n{err}");
    let (ok, out, err) = trellis_cli_env(
        dir,
        &["get", "hosts", "--nats-url", &url],
        &[
            ("TRELLIS_NATS_USER", "alice".to_string()),
            ("TRELLIS_NATS_PASSWORD", "s3cret-pw".to_string()),
        ],
    )
    .await;
    assert!(ok && out.contains(&host.id), "{out}\n{err}");

    // Without credentials, or with a wrong password, the CLI says what to pass and never
    // shows the password.
    let (ok, _, err) = trellis_cli_env(dir, &["get", "hosts", "--nats-url", &url], &[]).await;
    assert!(!ok);
    assert!(
        err.contains(&format!("NATS refused the credentials for {url}"))
            && err.contains("--nats-creds"),
        "{err}"
    );
    let wrong = url_with_password(&nats, "alice", "wrong-pw");
    let (ok, _, err) = trellis_cli_env(dir, &["get", "hosts", "--nats-url", &wrong], &[]).await;
    assert!(!ok);
    assert!(err.contains("NATS refused the credentials"), "{err}");
    assert!(
        err.contains("alice:***@") && !err.contains("wrong-pw"),
        "{err}"
    );

    // The lattice keeps working after the refusals: a component scales, the reconciler answers.
    let lattice = Lattice::connect_with(&url, "default", &cli_auth).await;
    scale_hello(&lattice, &host, "hello").await;
    let (ok, out, err) = trellis_cli_env(
        dir,
        &["app", "list", "--nats-url", &url],
        &seed_env(&cli_auth),
    )
    .await;
    assert!(ok, "{out}\n{err}\nwadm log:\n{}", wadm.logs());

    // Nothing logged the secrets.
    let seed = host_auth.nkey_seed.clone().unwrap();
    assert!(!host.logs().contains(&seed), "the host logged its seed");
}

/// The pid of a child of `parent` whose command line contains `needle`.
fn child_with(parent: u32, needle: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(needle) {
            return Some(pid);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_provider_runs_under_auth() {
    let (host_key, host_auth) = nkey_user();
    let (cli_key, cli_auth) = nkey_user();
    let config = format!(
        "authorization {{ users = [ {{nkey: \"{host_key}\"}}, {{nkey: \"{cli_key}\"}} ] }}\n"
    );
    let nats = NatsServer::start_with_config(&config, cli_auth.clone()).await;
    let url = nats.url();
    let host = HostProcess::start_with_auth(&url, "default", &[], &host_auth).await;
    let lattice = Lattice::connect_with(&url, "default", &cli_auth).await;
    let addr = format!("127.0.0.1:{}", free_port());

    put_config(&lattice, "http-addr", &[("address", &addr)]).await;
    put_config(&lattice, "http-process", &[("process", "true")]).await;
    let mut events = lattice.events().await;
    control_ok(
        &lattice,
        lattice.subjects.provider_start(&host.id),
        json!({"provider_id": "http-proc", "provider_ref": "ghcr.io/wasmcloud/http-server:0.23.0",
               "config": ["http-process"]}),
    )
    .await;
    events
        .wait_for("provider_started", |d| d["provider_id"] == "http-proc")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nhost log:\n{}", host.logs()));
    scale_hello(&lattice, &host, "hello").await;
    control_ok(
        &lattice,
        lattice.subjects.link_put(),
        json!({"source_id": "http-proc", "target": "hello", "wit_namespace": "wasi",
               "wit_package": "http", "interfaces": ["incoming-handler"],
               "source_config": ["http-addr"]}),
    )
    .await;
    let body = trellis_integration::eventually("the process provider to serve hello", || {
        http_ok(&addr, "/")
    })
    .await;
    assert!(body.contains("Hello from Trellis!"), "{body}");

    // The provider process got the host's seed through its environment, not its command line.
    let seed = host_auth.nkey_seed.clone().unwrap();
    let pid =
        child_with(host.pid(), "provider").expect("the provider process is a child of the host");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&seed),
        "seed on the command line"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        String::from_utf8_lossy(&environ).contains(&format!("TRELLIS_NATS_SEED={seed}")),
        "the provider did not get the seed in its environment"
    );
    assert!(!host.logs().contains(&seed), "the host logged its seed");
}

/// Writes a throwaway CA, a server certificate for 127.0.0.1 and a client certificate into
/// `dir` with the openssl CLI. Returns false when openssl is missing.
fn make_certificates(dir: &Path) -> bool {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) => {
                assert!(s.success(), "openssl {args:?} failed");
                true
            }
            Err(_) => false,
        }
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=trellis-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    if !run(&ca) {
        return false;
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "trellis-client")] {
        let subj = format!("/CN={cn}");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut req = vec![
            "req",
            "-subj",
            subj.as_str(),
            "-keyout",
            key.as_str(),
            "-out",
            csr.as_str(),
        ];
        req.extend(ec);
        run(&req);
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        run(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    if !make_certificates(dir) {
        eprintln!("openssl is not installed: skipping the TLS test");
        return;
    }
    let config = format!(
        "tls {{ cert_file: \"{0}/server.pem\", key_file: \"{0}/server.key\", \
         ca_file: \"{0}/ca.pem\", verify: true, timeout: 5 }}\n",
        dir.display()
    );
    let tls = NatsAuth {
        tls_ca: Some(dir.join("ca.pem")),
        tls_cert: Some(dir.join("client.pem")),
        tls_key: Some(dir.join("client.key")),
        ..Default::default()
    };
    let nats = NatsServer::start_with_config(&config, tls.clone()).await;
    let url = nats.url();

    // Plain text and TLS without a client certificate are refused.
    assert!(async_nats::connect(&url).await.is_err());
    let ca_only = NatsAuth {
        tls_ca: tls.tls_ca.clone(),
        ..Default::default()
    };
    assert!(connect_with(&url, &ca_only).await.is_err());

    let host = HostProcess::start_with_auth(&url, "default", &[], &tls).await;
    let data = tempfile::tempdir().unwrap();
    let env: Vec<(&str, String)> = tls.child_env(&url);
    let (ok, out, err) =
        trellis_cli_env(data.path(), &["get", "hosts", "--nats-url", &url], &env).await;
    assert!(ok && out.contains(&host.id), "{out}\n{err}");
    let ca = dir.join("ca.pem").display().to_string();
    let (ok, _, err) = trellis_cli_env(
        data.path(),
        &["get", "hosts", "--nats-url", &url, "--nats-tls-ca", &ca],
        &[],
    )
    .await;
    assert!(!ok, "no client certificate must be refused");
    assert!(!err.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_of_one_account_cannot_touch_another_lattice() {
    let config = "accounts {\n  A: { jetstream: enabled, users: [ {user: a, password: pa} ] }\n  \
                  B: { jetstream: enabled, users: [ {user: b, password: pb} ] }\n}\n";
    let as_user = |user: &str, password: &str| NatsAuth {
        user: Some(user.into()),
        password: Some(password.into()),
        ..Default::default()
    };
    let (a, b) = (as_user("a", "pa"), as_user("b", "pb"));
    let nats = NatsServer::start_with_config(config, a.clone()).await;
    let url = nats.url();
    // Both lattices are called `default`: only the accounts keep them apart.
    let host_a = HostProcess::start_with_auth(&url, "default", &[], &a).await;
    let host_b = HostProcess::start_with_auth(&url, "default", &[], &b).await;
    let lattice_a = Lattice::connect_with(&url, "default", &a).await;
    let lattice_b = Lattice::connect_with(&url, "default", &b).await;

    let ids = |hosts: Vec<trellis_protocol::ctl::Host>| -> Vec<String> {
        hosts.into_iter().map(|h| h.id).collect()
    };
    let seen_a = ids(lattice_a.ping(Duration::from_secs(1)).await.unwrap());
    let seen_b = ids(lattice_b.ping(Duration::from_secs(1)).await.unwrap());
    assert_eq!(seen_a, vec![host_a.id.clone()]);
    assert_eq!(seen_b, vec![host_b.id.clone()]);

    // A client of A asking host B to stop reaches nobody; host B keeps running.
    let stop = lattice_a
        .client
        .request(
            lattice_a.subjects.host_stop(&host_b.id),
            b"{}".to_vec().into(),
        )
        .await;
    assert!(stop.is_err(), "a client of account A reached host B");
    lattice_b.wait_for_host(&host_b.id).await.unwrap();

    // The CLI as user a sees only host A.
    let data = tempfile::tempdir().unwrap();
    let (ok, out, err) = trellis_cli_env(
        data.path(),
        &["get", "hosts", "--nats-url", &url],
        &[
            ("TRELLIS_NATS_USER", "a".to_string()),
            ("TRELLIS_NATS_PASSWORD", "pa".to_string()),
        ],
    )
    .await;
    assert!(
        ok && out.contains(&host_a.id) && !out.contains(&host_b.id),
        "{out}\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn up_joins_a_server_that_requires_a_password() {
    let config = "authorization { users = [ {user: ops, password: \"j0in-pw\"} ] }\n";
    let ops = NatsAuth {
        user: Some("ops".into()),
        password: Some("j0in-pw".into()),
        ..Default::default()
    };
    let nats = NatsServer::start_with_config(config, ops.clone()).await;
    let url = nats.url();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let env = vec![
        ("TRELLIS_NATS_USER", "ops".to_string()),
        ("TRELLIS_NATS_PASSWORD", "j0in-pw".to_string()),
    ];
    let (ok, out, err) = trellis_cli_env(
        dir,
        &["up", "--detach", "--nats-url", &url, "--lattice", "joined"],
        &env,
    )
    .await;
    let log = std::fs::read_to_string(dir.join("logs/up.log")).unwrap_or_default();
    assert!(ok, "up failed:\n{out}\n{err}\nlog:\n{log}");
    assert!(out.contains("(joined)"), "{out}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let host_pid = state["host_pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("j0in-pw"));
    assert!(!std::fs::read_to_string(dir.join("up.json"))
        .unwrap()
        .contains("j0in-pw"));
    assert!(!log.contains("j0in-pw"), "the password is in the log");

    let (ok, out, err) = trellis_cli_env(dir, &["get", "hosts"], &env).await;
    assert!(
        ok && out.contains(state["host_id"].as_str().unwrap()),
        "{out}\n{err}"
    );
    let (ok, _, err) = trellis_cli_env(dir, &["down"], &[]).await;
    assert!(ok, "{err}");
}

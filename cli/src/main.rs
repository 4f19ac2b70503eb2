//! `trellis`: one binary for the whole product (host, reconciler, providers, operator CLI),
//! which keeps installs on edge devices to a single file.

mod app_cmds;
mod app_endpoints;
mod call_cmd;
mod claims_cmds;
mod dev_cmds;
mod host_cmd;
mod lattice_client;
mod lattice_cmds;
mod local_lattice;
mod oci_cmds;
mod output;
mod progress;
mod secret_cmds;
mod secrets_serve;
mod seed_files;
mod telemetry_args;
mod ui;
mod wadm_api;
mod wadm_cmd;

use clap::{CommandFactory, Parser, Subcommand};

/// Trellis: a lattice host for WebAssembly components.
#[derive(Debug, Parser)]
#[command(
    name = "trellis",
    version,
    about,
    long_about = None,
    after_help = "Examples:
  trellis up --deploy manifests/hello.yaml   # a local lattice serving the example app
  trellis get hosts
  trellis app list
  trellis app status hello
  trellis ui                                  # the web dashboard
  trellis down

Commands that talk to a lattice take --nats-url, --lattice, --timeout-ms and --output json
(or TRELLIS_NATS_URL, TRELLIS_LATTICE, TRELLIS_TIMEOUT_MS); by default they use the lattice
a running `trellis up` started, and its key. NATS authentication and TLS: --nats-creds,
--nats-seed, --nats-user/--nats-password, --nats-tls-ca, --nats-tls-cert/--nats-tls-key
(or TRELLIS_NATS_*), the same in every command (see docs/security.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process, so the size of the `Host` variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local lattice: NATS, a host and the reconciler (Ctrl-C stops all)
    Up(local_lattice::UpArgs),
    /// Stop the lattice `trellis up --detach` started
    Down(local_lattice::DownArgs),
    /// Deploy and inspect applications (OAM manifests)
    App(app_cmds::AppArgs),
    /// Show hosts, inventories, links and configs
    Get(lattice_cmds::GetArgs),
    /// Scale a component on a host
    Scale(lattice_cmds::ScaleArgs),
    /// Start a provider
    Start(lattice_cmds::StartArgs),
    /// Stop a provider, a component or a host
    Stop(lattice_cmds::StopArgs),
    /// Put or delete links
    Link(lattice_cmds::LinkArgs),
    /// Put or delete named configs
    Config(lattice_cmds::ConfigArgs),
    /// Put or delete host labels
    Label(lattice_cmds::LabelArgs),
    /// Serve a web dashboard for a lattice (http://127.0.0.1:3030 by default)
    Ui(ui::UiArgs),
    /// Call a component's exported function
    Call(call_cmd::CallArgs),
    /// Run a host: join a lattice over NATS and run components and providers
    /// (`trellis host stop HOST` stops one)
    Host(HostCommand),
    /// Run the reconciler: keep deployed OAM applications in their declared state.
    Wadm(wadm_cmd::WadmArgs),
    /// Run the built-in nats-kv secrets backend (`trellis secrets serve`)
    Secrets(secrets_serve::SecretsArgs),
    /// Store, list, delete and map secrets in a nats-kv secrets backend (values never printed)
    Secret(secret_cmds::SecretArgs),
    /// Run a capability provider as its own process (started and supervised by a host, which
    /// writes its connection data on stdin; `trellis+process://http-server` refs do this)
    #[command(hide = true)]
    Provider {
        /// The provider to run (`http-server`)
        name: String,
    },
    /// Push a component (.wasm) to an OCI registry
    Push(oci_cmds::PushArgs),
    /// Pull a component from an OCI registry to a file
    Pull(oci_cmds::PullArgs),
    /// Show a component's digest, size, imports, exports and claims (an OCI ref or a file)
    Inspect(oci_cmds::InspectArgs),
    /// Sign components (wasmCloud-compatible claims) and inspect their signatures
    Claims(claims_cmds::ClaimsArgs),
    /// Create a component project from a template
    New(dev_cmds::NewArgs),
    /// Build the component project in the current directory for wasm32-wasip2
    Build(dev_cmds::BuildArgs),
    /// Print shell completions: `trellis completions bash > /etc/bash_completion.d/trellis`
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// `trellis host [FLAGS]` runs a host; `trellis host stop HOST` stops one.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct HostCommand {
    #[command(flatten)]
    run: host_cmd::HostArgs,
    #[command(subcommand)]
    action: Option<HostAction>,
}

#[derive(Debug, Subcommand)]
enum HostAction {
    /// Stop a host: it drains its work and leaves the lattice
    Stop(lattice_cmds::StopHostArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => local_lattice::run_up(args).await,
            Command::Down(args) => local_lattice::run_down(args).await,
            Command::App(args) => app_cmds::run(args).await,
            Command::Get(args) => lattice_cmds::run_get(args).await,
            Command::Scale(args) => lattice_cmds::run_scale(args).await,
            Command::Start(args) => lattice_cmds::run_start(args).await,
            Command::Stop(args) => lattice_cmds::run_stop(args).await,
            Command::Link(args) => lattice_cmds::run_link(args).await,
            Command::Config(args) => lattice_cmds::run_config(args).await,
            Command::Label(args) => lattice_cmds::run_label(args).await,
            Command::Call(args) => call_cmd::run(args).await,
            Command::Ui(args) => ui::run(args).await,
            Command::Host(HostCommand {
                action: Some(HostAction::Stop(args)),
                ..
            }) => lattice_cmds::run_stop_host(args).await,
            Command::Host(HostCommand { run, action: None }) => host_cmd::run(run).await,
            Command::Wadm(args) => wadm_cmd::run(args).await,
            Command::Secrets(args) => secrets_serve::run(args).await,
            Command::Secret(args) => secret_cmds::run(args).await,
            Command::Provider { name } => {
                // Settings from the environment the host gave (TRELLIS_OTEL, OTEL_*).
                let _telemetry = trellis_telemetry::init(
                    trellis_telemetry::TelemetryConfig::from_env(format!(
                        "trellis-provider-{name}"
                    )),
                    "info",
                )
                .await?;
                trellis_providers::run_provider_process(&name).await
            }
            Command::Push(args) => oci_cmds::run_push(args).await,
            Command::Pull(args) => oci_cmds::run_pull(args).await,
            Command::Inspect(args) => oci_cmds::run_inspect(args).await,
            Command::Claims(args) => claims_cmds::run(args).await,
            Command::New(args) => dev_cmds::run_new(args),
            Command::Build(args) => dev_cmds::run_build(args).await,
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "trellis",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("trellis").chain(args.iter().copied()))
    }

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_flags_go_anywhere_after_the_subcommand() {
        let cli = parse(&["get", "--lattice", "l1", "hosts", "-o", "json"]).unwrap();
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        let dbg = format!("{args:?}");
        assert!(dbg.contains("lattice: Some(\"l1\")"), "{dbg}");
        assert!(dbg.contains("output: Json"), "{dbg}");
    }

    #[test]
    fn nats_auth_flags_are_the_same_everywhere_and_old_names_still_work() {
        let cli = parse(&["get", "hosts", "--nats-user", "u", "--tls-ca", "/ca.pem"]).unwrap();
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        let dbg = format!("{args:?}");
        assert!(dbg.contains("user: Some(\"u\")"), "{dbg}");
        assert!(dbg.contains("/ca.pem"), "{dbg}");
        for command in [
            &[
                "host",
                "--nats-creds",
                "/c",
                "--tls-ca",
                "/ca",
                "--nats-seed",
                "SU",
            ][..],
            &[
                "wadm",
                "--nats-seed",
                "SU",
                "--nats-jwt",
                "J",
                "--nats-tls-cert",
                "/c",
            ][..],
            &[
                "up",
                "--nats-url",
                "nats://h:1",
                "--nats-password",
                "p",
                "--nats-tls-key",
                "/k",
            ][..],
        ] {
            assert!(parse(command).is_ok(), "{command:?}");
        }
        let cli = parse(&["wadm", "--nats-seed", "SUSECRET"]).unwrap();
        let dbg = format!("{:?}", cli.command);
        assert!(!dbg.contains("SUSECRET"), "a seed in Debug output: {dbg}");
    }

    #[test]
    fn scale_takes_host_ref_id_or_auto() {
        assert!(parse(&[
            "scale",
            "component",
            "h",
            "file:///a.wasm",
            "a",
            "--count",
            "2"
        ])
        .is_ok());
        assert!(parse(&[
            "scale",
            "component",
            "--auto",
            "file:///a.wasm",
            "a",
            "--count",
            "1"
        ])
        .is_ok());
        assert!(
            parse(&["scale", "component", "h", "r", "a"]).is_err(),
            "--count is required"
        );
    }

    #[test]
    fn link_put_needs_an_interface() {
        assert!(parse(&["link", "put", "a", "b", "wasi:http"]).is_err());
        assert!(parse(&[
            "link",
            "put",
            "a",
            "b",
            "wasi:http",
            "--interface",
            "incoming-handler",
            "--name",
            "n",
            "--source-config",
            "c1",
            "--target-config",
            "c2"
        ])
        .is_ok());
    }

    #[test]
    fn config_and_label_parse_key_values() {
        assert!(parse(&["config", "put", "c", "a=1", "b=2"]).is_ok());
        assert!(parse(&["config", "put", "c", "novalue"]).is_err());
        assert!(parse(&["label", "put", "h", "zone=a"]).is_ok());
        assert!(parse(&["label", "del", "h", "zone"]).is_ok());
    }

    #[test]
    fn host_stop_and_stop_host_both_parse() {
        let cli = parse(&["host", "stop", "brave", "--timeout", "500"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Host(HostCommand {
                action: Some(HostAction::Stop(_)),
                ..
            })
        ));
        assert!(parse(&["stop", "host", "brave"]).is_ok());
        let cli = parse(&["host"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Host(HostCommand { action: None, .. })
        ));
    }

    #[test]
    fn up_flags_parse() {
        let cli = parse(&[
            "up",
            "--label",
            "zone=a",
            "-l",
            "b=c",
            "--detach",
            "--deploy",
            "m.yaml",
            "--nats-port",
            "4333",
        ])
        .unwrap();
        let Command::Up(args) = cli.command else {
            panic!("not up")
        };
        assert_eq!(args.labels.len(), 2);
        assert!(args.detach);
        assert_eq!(args.nats_port, Some(4333));
        assert!(parse(&["up", "--nats-url", "nats://x:1", "--nats-port", "1"]).is_err());
    }

    #[test]
    fn ui_flags_parse_and_up_can_turn_it_off() {
        let cli = parse(&[
            "ui",
            "--listen",
            "127.0.0.1:0",
            "--metrics-url",
            "http://127.0.0.1:9464/metrics",
            "--lattice",
            "l1",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Ui(_)));
        assert!(parse(&["ui", "--listen", "0.0.0.0:3030", "--allow-remote"]).is_ok());
        assert!(parse(&["ui", "--listen", "not-an-address"]).is_err());
        let cli = parse(&["up", "--no-ui"]).unwrap();
        let Command::Up(args) = cli.command else {
            panic!("not up")
        };
        assert!(args.no_ui);
        assert!(parse(&["up", "--ui-listen", "127.0.0.1:4000"]).is_ok());
        assert!(parse(&["up", "--no-ui", "--ui-listen", "127.0.0.1:4000"]).is_err());
    }

    #[test]
    fn app_commands_parse() {
        assert!(parse(&["app", "deploy", "m.yaml", "--no-wait"]).is_ok());
        assert!(parse(&["app", "get", "hello", "--version", "v1"]).is_ok());
        assert!(parse(&["app", "delete", "hello"]).is_ok());
        assert!(parse(&["app", "versions", "hello", "--output", "json"]).is_ok());
    }

    #[test]
    fn secret_commands_parse() {
        assert!(parse(&["secret", "put", "db", "--file", "/f"]).is_ok());
        assert!(parse(&["secret", "put", "db", "--stdin", "-o", "json"]).is_ok());
        assert!(parse(&["secret", "put", "db", "v"]).is_ok());
        assert!(
            parse(&["secret", "put", "db"]).is_err(),
            "a value source is required"
        );
        assert!(parse(&["secret", "put", "db", "v", "--stdin"]).is_err());
        assert!(parse(&["secret", "get-names", "--backend", "other"]).is_ok());
        assert!(parse(&["secret", "del", "db"]).is_ok());
        assert!(parse(&[
            "secret",
            "add-mapping",
            "MABC",
            "--secret",
            "a",
            "--secret",
            "b"
        ])
        .is_ok());
        assert!(
            parse(&["secret", "remove-mapping", "MABC"]).is_err(),
            "--secret is required"
        );
        assert!(parse(&[
            "secrets",
            "serve",
            "--admin-xkey",
            "XA",
            "--admin-xkey",
            "XB"
        ])
        .is_ok());
        // Seeds are never flags.
        assert!(parse(&["secrets", "serve", "--transit-seed", "SX"]).is_err());
    }

    #[test]
    fn completions_render() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "trellis",
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("trellis"));
    }
}

//! `trellis app ...`: store, deploy and inspect OAM applications through the reconciler.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;

use crate::app_endpoints::{http_urls, manifest_name, manifest_version, parse_manifest};
use crate::lattice_client::{ConnectArgs, LatticeClient};
use crate::output::{print_json, OutputFormat, Table};
use crate::progress::Progress;
use crate::wadm_api::{status_subject, AppStatus, WadmClient};

/// Flags of `trellis app`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis app deploy manifests/hello.yaml
  trellis app list
  trellis app status hello
  trellis app get hello --version v0.1.0
  trellis app undeploy hello
  trellis app delete hello")]
pub struct AppArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: AppCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AppCommand {
    /// Store a manifest and deploy it, then wait until it is deployed or failed
    Deploy(DeployArgs),
    /// Store a manifest as a new version without deploying it
    Put {
        /// Manifest file (YAML or JSON)
        file: std::path::PathBuf,
    },
    /// List stored apps and their status
    List,
    /// Show an app's status, per scaler, and its HTTP URLs
    Status {
        /// App name
        name: String,
    },
    /// Print an app's manifest
    Get {
        /// App name
        name: String,
        /// Version to print [default: the newest]
        #[arg(long)]
        version: Option<String>,
    },
    /// List an app's stored versions
    Versions {
        /// App name
        name: String,
    },
    /// Stop everything the app runs; its versions stay stored
    Undeploy {
        /// App name
        name: String,
    },
    /// Delete an app's stored versions (undeploys it when the deployed version goes)
    Delete {
        /// App name
        name: String,
        /// Delete only this version [default: all]
        #[arg(long)]
        version: Option<String>,
    },
}

/// Flags of `trellis app deploy`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// Manifest file (YAML or JSON), or the name of an app already stored
    pub source: String,
    /// Version to deploy when SOURCE names a stored app [default: the newest]
    #[arg(long)]
    pub version: Option<String>,
    /// Return once the reconciler accepted the deploy, without waiting for the outcome
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the app to be deployed, in seconds
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub wait_secs: u64,
}

/// Runs `trellis app ...`.
pub async fn run(args: AppArgs) -> anyhow::Result<()> {
    let output = args.connect.output;
    let client = LatticeClient::connect(&args.connect).await?;
    let wadm = WadmClient::new(&client);
    match args.command {
        AppCommand::Deploy(deploy) => {
            let outcome = deploy_app(&client, &deploy, output).await?;
            outcome.print(output)?;
            if outcome.status == "failed" {
                bail!("app {} failed to deploy", outcome.name);
            }
            Ok(())
        }
        AppCommand::Put { file } => {
            let text = read_manifest(&file)?;
            let reply = wadm.put(text.into_bytes()).await?;
            check_result(&reply.result, &reply.message, &reply.name, client.lattice())?;
            if output == OutputFormat::Json {
                return print_json(&reply);
            }
            println!(
                "stored {} version {} ({} version{} in total); deploy it with `trellis app deploy {}`",
                reply.name,
                reply.current_version,
                reply.total_versions,
                if reply.total_versions == 1 { "" } else { "s" },
                reply.name
            );
            Ok(())
        }
        AppCommand::List => {
            let reply = wadm.list().await?;
            check_result(&reply.result, &reply.message, "", client.lattice())?;
            if output == OutputFormat::Json {
                return print_json(&reply.models);
            }
            if reply.models.is_empty() {
                println!(
                    "no apps in lattice {}: deploy one with `trellis app deploy FILE`",
                    client.lattice()
                );
                return Ok(());
            }
            let mut table = Table::new(["NAME", "DEPLOYED", "LATEST", "STATUS", "DESCRIPTION"]);
            for m in &reply.models {
                table.row([
                    m.name.clone(),
                    m.deployed_version.clone().unwrap_or_else(|| "-".into()),
                    m.version.clone(),
                    m.status_type(),
                    m.description.clone().unwrap_or_default(),
                ]);
            }
            table.print();
            Ok(())
        }
        AppCommand::Status { name } => {
            let status = fetch_status(&wadm, &name, client.lattice()).await?;
            let urls = if status.status.kind == "deployed" {
                deployed_urls(&wadm, &name).await.unwrap_or_default()
            } else {
                Vec::new()
            };
            if output == OutputFormat::Json {
                return print_json(&serde_json::json!({
                    "name": name,
                    "status": status,
                    "urls": urls,
                }));
            }
            print_status(&name, &status);
            for url in &urls {
                println!("  {url}");
            }
            Ok(())
        }
        AppCommand::Get { name, version } => {
            let reply = wadm.get(&name, version).await?;
            check_result(&reply.result, &reply.message, &name, client.lattice())?;
            let manifest = reply
                .manifest
                .with_context(|| format!("the reconciler returned no manifest for {name}"))?;
            if output == OutputFormat::Json {
                return print_json(&manifest);
            }
            let yaml =
                serde_yaml_ng::to_string(&manifest).context("cannot print the manifest as YAML")?;
            print!("{yaml}");
            Ok(())
        }
        AppCommand::Versions { name } => {
            let reply = wadm.versions(&name).await?;
            check_result(&reply.result, &reply.message, &name, client.lattice())?;
            if output == OutputFormat::Json {
                return print_json(&reply.versions);
            }
            let mut table = Table::new(["VERSION", "DEPLOYED"]);
            for v in &reply.versions {
                table.row([
                    v.version.clone(),
                    if v.deployed {
                        "yes".into()
                    } else {
                        String::new()
                    },
                ]);
            }
            table.print();
            Ok(())
        }
        AppCommand::Undeploy { name } => {
            let reply = wadm.undeploy(&name).await?;
            check_result(&reply.result, &reply.message, &name, client.lattice())?;
            if output == OutputFormat::Json {
                return print_json(&reply);
            }
            println!("undeploying {name}: its components, providers and links are being removed");
            Ok(())
        }
        AppCommand::Delete { name, version } => {
            let reply = wadm.delete(&name, version.clone()).await?;
            check_result(&reply.result, &reply.message, &name, client.lattice())?;
            if output == OutputFormat::Json {
                return print_json(&reply);
            }
            let what = match &version {
                Some(v) => format!("version {v} of {name}"),
                None => format!("every version of {name}"),
            };
            match reply.result.as_str() {
                "noop" => println!("nothing to delete: {what} is not stored"),
                _ if reply.undeploy => println!("deleted {what}; the app was undeployed"),
                _ => println!("deleted {what}"),
            }
            Ok(())
        }
    }
}

/// What `app deploy` ended with.
#[derive(Debug, Clone, Serialize)]
pub struct DeployOutcome {
    /// The app name.
    pub name: String,
    /// The version deployed, when known.
    pub version: Option<String>,
    /// The last status seen (`deployed`, `failed`, or `acknowledged` with `--no-wait`).
    pub status: String,
    /// The status explanation, when not deployed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// HTTP URLs the app serves.
    pub urls: Vec<String>,
    /// The last full status, per scaler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<AppStatus>,
}

impl DeployOutcome {
    /// Prints the outcome in the chosen format.
    pub fn print(&self, output: OutputFormat) -> anyhow::Result<()> {
        if output == OutputFormat::Json {
            return print_json(self);
        }
        let version = self
            .version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        match self.status.as_str() {
            "deployed" => println!("app {}{version} is deployed", self.name),
            "acknowledged" => println!(
                "app {}{version} is being deployed; follow it with `trellis app status {}`",
                self.name, self.name
            ),
            other => {
                println!(
                    "app {}{version} is {other}{}",
                    self.name,
                    self.message
                        .as_deref()
                        .filter(|m| !m.is_empty())
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                );
                if let Some(detail) = &self.detail {
                    print_scalers(detail, true);
                }
            }
        }
        for url in &self.urls {
            println!("  {url}");
        }
        Ok(())
    }
}

/// Stores (when given a file) and deploys an app, waiting for the outcome unless `--no-wait`.
pub async fn deploy_app(
    client: &LatticeClient,
    args: &DeployArgs,
    output: OutputFormat,
) -> anyhow::Result<DeployOutcome> {
    let wadm = WadmClient::new(client);
    let lattice = client.lattice();
    let path = Path::new(&args.source);
    let (name, version, manifest) = if path.exists() {
        let text = resolve_relative_files(&read_manifest(path)?, path)?;
        let manifest = parse_manifest(&text)
            .with_context(|| format!("{} is not valid YAML or JSON", path.display()))?;
        let reply = wadm.put(text.into_bytes()).await?;
        let name = if reply.name.is_empty() {
            manifest_name(&manifest).unwrap_or_default().to_string()
        } else {
            reply.name.clone()
        };
        if reply.result == "error" {
            // Putting a version that is already stored is refused; deploying it is what the
            // user wants.
            let stored_version = manifest_version(&manifest).map(str::to_string);
            let already = reply.message.contains("exist");
            if !(already && stored_version.is_some() && !name.is_empty()) {
                bail!(
                    "the reconciler rejected {}: {}",
                    path.display(),
                    reply.message
                );
            }
            (name, stored_version, manifest)
        } else {
            let version = Some(reply.current_version.clone()).filter(|v| !v.is_empty());
            (name, version, manifest)
        }
    } else if looks_like_app_name(&args.source) {
        let reply = wadm.get(&args.source, args.version.clone()).await?;
        check_result(&reply.result, &reply.message, &args.source, lattice)?;
        let manifest = reply.manifest.unwrap_or_default();
        (args.source.clone(), args.version.clone(), manifest)
    } else {
        bail!(
            "no such file: {} (pass a manifest file or the name of a stored app)",
            args.source
        );
    };
    if name.is_empty() {
        bail!("the manifest has no metadata.name");
    }
    let urls = http_urls(&manifest);
    deploy_stored(
        client,
        name,
        version,
        urls,
        args.no_wait,
        args.wait_secs,
        output,
    )
    .await
}

/// Deploys version `version` (the newest when `None`) of the stored app `name` and, unless
/// `no_wait`, waits up to `wait_secs` for the reconciler to report it deployed or failed.
/// `urls` are the app's HTTP URLs, passed through to the outcome.
pub async fn deploy_stored(
    client: &LatticeClient,
    name: String,
    version: Option<String>,
    urls: Vec<String>,
    no_wait: bool,
    wait_secs: u64,
    output: OutputFormat,
) -> anyhow::Result<DeployOutcome> {
    let wadm = WadmClient::new(client);
    let lattice = client.lattice();
    // Subscribe before deploying so no status update is missed.
    let mut updates = client
        .nats()
        .subscribe(status_subject(lattice, &name))
        .await
        .context("cannot subscribe to app status")?;
    let reply = wadm.deploy(&name, version.clone()).await?;
    check_result(&reply.result, &reply.message, &name, lattice)?;
    let version = reply.version.clone().or(version);
    if no_wait {
        return Ok(DeployOutcome {
            name,
            version,
            status: "acknowledged".into(),
            message: None,
            urls,
            detail: None,
        });
    }

    let mut progress = Progress::start(format!("deploying {name}"), output == OutputFormat::Json);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs.max(1));
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut last: Option<AppStatus> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                progress.finish();
                let kind = last.as_ref().map(|s| s.status.kind.clone()).unwrap_or_else(|| "unknown".into());
                if let Some(status) = last.as_ref().filter(|_| output == OutputFormat::Table) {
                    print_scalers(status, true);
                }
                bail!(
                    "app {name} is still {kind} after {wait_secs} s; follow it with `trellis app status {name}`"
                );
            }
            msg = updates.next() => {
                if let Some(msg) = msg {
                    if let Ok(status) = serde_json::from_slice::<AppStatus>(&msg.payload) {
                        last = Some(status);
                    }
                }
            }
            _ = poll.tick() => {
                let reply = wadm.status(&name).await?;
                if reply.result == "ok" {
                    last = reply.status;
                }
            }
        }
        let Some(status) = &last else { continue };
        // The previous version's status (still stored until the reconciler's next pass) is
        // not this deploy's outcome.
        let stale =
            !status.version.is_empty() && version.as_deref().is_some_and(|v| v != status.version);
        if stale {
            continue;
        }
        match status.status.kind.as_str() {
            "deployed" | "failed" => {
                progress.finish();
                return Ok(DeployOutcome {
                    name,
                    version,
                    status: status.status.kind.clone(),
                    message: status.status.message.clone(),
                    urls,
                    detail: Some(status.clone()),
                });
            }
            kind => progress.update(describe_progress(&name, kind, status)),
        }
    }
}

/// A one-line summary of a deploy in progress: `deploying hello: reconciling (2/3 ready)`.
fn describe_progress(name: &str, kind: &str, status: &AppStatus) -> String {
    let total = status.scalers.len();
    let ready = status
        .scalers
        .iter()
        .filter(|s| s.status.kind == "deployed")
        .count();
    let mut text = format!("deploying {name}: {kind}");
    if total > 0 {
        text.push_str(&format!(" ({ready}/{total} ready)"));
    }
    if let Some(waiting) = status.scalers.iter().find(|s| s.status.kind != "deployed") {
        if let Some(message) = waiting.status.message.as_deref().filter(|m| !m.is_empty()) {
            text.push_str(&format!(": {} {message}", waiting.name));
        }
    }
    text
}

async fn fetch_status(
    wadm: &WadmClient<'_>,
    name: &str,
    lattice: &str,
) -> anyhow::Result<AppStatus> {
    let reply = wadm.status(name).await?;
    check_result(&reply.result, &reply.message, name, lattice)?;
    reply
        .status
        .with_context(|| format!("the reconciler returned no status for {name}"))
}

async fn deployed_urls(wadm: &WadmClient<'_>, name: &str) -> anyhow::Result<Vec<String>> {
    let versions = wadm.versions(name).await?;
    let deployed = versions
        .versions
        .iter()
        .find(|v| v.deployed)
        .map(|v| v.version.clone());
    let reply = wadm.get(name, deployed).await?;
    Ok(reply.manifest.as_ref().map(http_urls).unwrap_or_default())
}

fn print_status(name: &str, status: &AppStatus) {
    let message = status
        .status
        .message
        .as_deref()
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    println!("{name}: {}{message}", status.status.kind);
    print_scalers(status, false);
}

fn print_scalers(status: &AppStatus, only_unready: bool) {
    let mut table = Table::new(["KIND", "NAME", "STATUS", "MESSAGE"]);
    for s in &status.scalers {
        if only_unready && s.status.kind == "deployed" {
            continue;
        }
        table.row([
            s.kind.clone(),
            s.name.clone(),
            s.status.kind.clone(),
            s.status.message.clone().unwrap_or_default(),
        ]);
    }
    if !table.is_empty() {
        table.print();
    }
}

/// Turns a reconciler `result` into an error that says what to do.
pub fn check_result(result: &str, message: &str, name: &str, lattice: &str) -> anyhow::Result<()> {
    match result {
        "error" => bail!(
            "{}",
            if message.is_empty() {
                "the reconciler reported an error"
            } else {
                message
            }
        ),
        "notfound" => bail!(
            "no app named {name} in lattice {lattice}{}: see `trellis app list`",
            if message.is_empty() {
                String::new()
            } else {
                format!(" ({message})")
            }
        ),
        _ => Ok(()),
    }
}

/// Reads a manifest file, refusing one nested too deeply to parse quickly (the reconciler
/// would refuse it too; its size limit is the reconciler's to enforce).
fn read_manifest(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    let limits = trellis_wadm::limits::ManifestLimits {
        max_bytes: usize::MAX,
        ..Default::default()
    };
    trellis_wadm::limits::check_manifest_text(&text, &limits)
        .with_context(|| format!("{} is not a usable manifest", path.display()))?;
    Ok(text)
}

/// Rewrites every relative `file://` reference in a manifest's text (`file://./x.wasm`,
/// `file://../x.wasm`, `file://x.wasm`) into an absolute one against the directory of the
/// manifest file, so a manifest deploys the same from any working directory. The text is
/// edited in place rather than re-serialized, so the stored manifest keeps its comments and
/// layout. A reference ends at whitespace, a quote, a comma or a closing bracket.
fn resolve_relative_files(text: &str, manifest: &Path) -> anyhow::Result<String> {
    const SCHEME: &str = "file://";
    if !text.contains(SCHEME) {
        return Ok(text.to_string());
    }
    let dir = std::fs::canonicalize(manifest)
        .with_context(|| format!("cannot resolve the path of {}", manifest.display()))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut out = String::with_capacity(text.len() + 256);
    let mut rest = text;
    while let Some(at) = rest.find(SCHEME) {
        let (before, after) = rest.split_at(at + SCHEME.len());
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ']' | '}'))
            .unwrap_or(after.len());
        let (reference, tail) = after.split_at(end);
        if reference.is_empty() || reference.starts_with('/') || reference.starts_with('~') {
            out.push_str(reference);
        } else {
            out.push_str(&normalize(&dir.join(reference)).display().to_string());
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

/// `path` with `.` and `..` components folded away (without touching the file system, so a
/// file that does not exist yet still gets a clean path for the host's error message).
fn normalize(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut clean = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}

/// True when `s` can be a model name (`^[-\w]+$`) rather than a file path.
fn looks_like_app_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wadm_api::{ScalerStatus, StatusInfo};

    #[test]
    fn relative_file_refs_resolve_against_the_manifest_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        let file = manifests.join("app.yaml");
        std::fs::write(&file, "x").expect("write");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        let text = "# an example\n\
            image: file://../components/a.wasm\n\
            image: \"file://./b.wasm\"\n\
            image: file:///abs/c.wasm\n\
            image: ghcr.io/org/d:1.0\n\
            {\"image\":\"file://e.wasm\"}";
        let resolved = resolve_relative_files(text, &file).expect("resolved");
        let root = root.display();
        assert!(
            resolved.contains(&format!("image: file://{root}/components/a.wasm\n")),
            "{resolved}"
        );
        assert!(
            resolved.contains(&format!("\"file://{root}/manifests/b.wasm\"")),
            "{resolved}"
        );
        assert!(
            resolved.contains("image: file:///abs/c.wasm\n"),
            "{resolved}"
        );
        assert!(
            resolved.contains("image: ghcr.io/org/d:1.0\n"),
            "{resolved}"
        );
        assert!(
            resolved.contains(&format!("\"file://{root}/manifests/e.wasm\"}}")),
            "{resolved}"
        );
        // Nothing to resolve: the text comes back as it was.
        assert_eq!(
            resolve_relative_files("image: x", &file).expect("same"),
            "image: x"
        );
    }

    #[test]
    fn app_names_are_not_paths() {
        assert!(looks_like_app_name("hello-world_1"));
        assert!(!looks_like_app_name("manifests/hello.yaml"));
        assert!(!looks_like_app_name(""));
    }

    #[test]
    fn results_map_to_errors_with_hints() {
        assert!(check_result("success", "", "a", "default").is_ok());
        let err = check_result("notfound", "", "hello", "default")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trellis app list"), "{err}");
        let err = check_result("error", "bad spread", "hello", "default")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "bad spread");
    }

    #[test]
    fn progress_line_counts_ready_scalers_and_names_the_waiting_one() {
        let scaler = |name: &str, kind: &str, message: Option<&str>| ScalerStatus {
            name: name.into(),
            status: StatusInfo {
                kind: kind.into(),
                message: message.map(str::to_string),
            },
            ..Default::default()
        };
        let status = AppStatus {
            status: StatusInfo {
                kind: "reconciling".into(),
                message: None,
            },
            scalers: vec![
                scaler("http", "deployed", None),
                scaler("hello", "reconciling", Some("waiting for a host")),
            ],
            ..Default::default()
        };
        assert_eq!(
            describe_progress("app", "reconciling", &status),
            "deploying app: reconciling (1/2 ready): hello waiting for a host"
        );
    }
}

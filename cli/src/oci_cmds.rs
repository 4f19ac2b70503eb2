//! `trellis push`, `trellis pull` and `trellis inspect`: components in OCI registries.
//!
//! Credentials come from `TRELLIS_OCI_AUTH_<REGISTRY>` / `TRELLIS_OCI_TOKEN_<REGISTRY>` or the
//! Docker config's `auths`, never from flags (see docs/distribution.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use trellis_host::oci::artifact::{self, WasmInfo};
use trellis_host::oci::{
    parse_reference, sha256_digest, ClientOptions, CredentialLookup, RegistryClient,
};
use trellis_host::runtime::{classify_image_ref, read_component_file, ImageRefKind};

use crate::output::{print_json, OutputFormat};

/// How to reach registries: shared by `push`, `pull`, `inspect` and `trellis call` (which
/// reads the WIT of a component the hosts pulled by ref).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryAccess {
    /// Registries (`host:port`, comma-separated or repeated) reached over plain HTTP.
    #[arg(
        long,
        env = "TRELLIS_ALLOWED_INSECURE",
        value_delimiter = ',',
        value_name = "REGISTRY"
    )]
    pub allowed_insecure: Vec<String>,
    /// PEM file of extra CA certificates trusted for registries.
    #[arg(long, env = "TRELLIS_OCI_CA_FILE", value_name = "PEM")]
    pub oci_ca_file: Option<PathBuf>,
    /// The largest component read or downloaded, in MiB.
    #[arg(
        long,
        env = "TRELLIS_MAX_COMPONENT_SIZE_MB",
        default_value_t = 128,
        value_parser = clap::value_parser!(u64).range(1..=4096),
        value_name = "MIB"
    )]
    pub max_component_size_mb: u64,
}

impl RegistryAccess {
    /// A registry client; `insecure` names one more registry reached over plain HTTP.
    fn client(&self, insecure: Option<&str>) -> anyhow::Result<RegistryClient> {
        let mut allowed_insecure = self.allowed_insecure.clone();
        allowed_insecure.extend(insecure.map(str::to_string));
        RegistryClient::new(ClientOptions {
            allowed_insecure,
            ca_file: self.oci_ca_file.clone(),
            credentials: CredentialLookup::default(),
        })
    }

    /// The size limit in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_component_size_mb.saturating_mul(1024 * 1024)
    }

    /// Pulls the wasm of the component at OCI `reference` (digests verified, size bounded).
    pub async fn pull_wasm(&self, reference: &str) -> anyhow::Result<Vec<u8>> {
        let reference = parse_reference(reference)?;
        let client = self.client(None)?;
        Ok(client.pull(&reference, self.max_bytes()).await?.wasm)
    }
}

/// How to reach the registry, shared by the three commands.
#[derive(Debug, clap::Args)]
pub struct RegistryFlags {
    #[command(flatten)]
    access: RegistryAccess,
    /// Reach this ref's registry over plain HTTP (like `wash push --insecure`).
    #[arg(long)]
    pub insecure: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

impl RegistryFlags {
    fn client(&self, registry: &str) -> anyhow::Result<RegistryClient> {
        self.access.client(self.insecure.then_some(registry))
    }

    fn max_bytes(&self) -> u64 {
        self.access.max_bytes()
    }
}

/// `trellis push REF FILE.wasm`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis push ghcr.io/org/hello:0.1.0 build/hello.wasm --annotation org.opencontainers.image.source=https://github.com/org/hello
  TRELLIS_OCI_AUTH_127_0_0_1_5000=user:pass trellis push --insecure 127.0.0.1:5000/hello:0.1.0 hello.wasm")]
pub struct PushArgs {
    /// Where to push: REGISTRY/REPOSITORY:TAG.
    pub reference: String,
    /// The component (.wasm) to push.
    pub file: PathBuf,
    /// A manifest annotation `key=value` (repeatable).
    #[arg(long = "annotation", value_parser = parse_annotation, value_name = "KEY=VALUE")]
    pub annotations: Vec<(String, String)>,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// `trellis pull REF [-o FILE]`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis pull ghcr.io/org/hello:0.1.0 -o hello.wasm
  trellis pull --insecure 127.0.0.1:5000/hello@sha256:... --output json")]
pub struct PullArgs {
    /// What to pull: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST.
    pub reference: String,
    /// Where to write the .wasm (default: the repository's last name + `.wasm`, here).
    #[arg(short = 'o', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// `trellis inspect REF|FILE`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis inspect components/target/wasm32-wasip2/release/http_hello.wasm
  trellis inspect ghcr.io/org/hello:0.1.0 --output json")]
pub struct InspectArgs {
    /// An OCI ref, or a local .wasm file (a path or file:// URL).
    pub target: String,
    #[command(flatten)]
    registry: RegistryFlags,
}

fn parse_annotation(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("annotation `{text}` must look like key=value")),
    }
}

async fn read_wasm(path: &Path, max_bytes: u64) -> anyhow::Result<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_component_file(&path, max_bytes))
        .await
        .context("the file-reading task failed")?
}

/// Pushes a component.
pub async fn run_push(args: PushArgs) -> anyhow::Result<()> {
    let reference = parse_reference(&args.reference)?;
    let wasm = read_wasm(&args.file, args.registry.max_bytes()).await?;
    let client = args.registry.client(reference.registry())?;
    let annotations: BTreeMap<String, String> = args.annotations.into_iter().collect();
    let outcome = client.push_component(&reference, wasm, annotations).await?;
    let pinned = format!(
        "{}/{}@{}",
        reference.registry(),
        reference.repository(),
        outcome.manifest_digest
    );
    match args.registry.output {
        OutputFormat::Json => {
            #[derive(Serialize)]
            struct Pushed<'a> {
                #[serde(flatten)]
                outcome: &'a trellis_host::oci::PushOutcome,
                pinned: &'a str,
            }
            print_json(&Pushed {
                outcome: &outcome,
                pinned: &pinned,
            })
        }
        OutputFormat::Table => {
            println!("pushed {} ({} bytes)", outcome.reference, outcome.size);
            println!("  digest  {}", outcome.manifest_digest);
            println!("  pinned  {pinned}");
            Ok(())
        }
    }
}

/// Pulls a component to a file.
pub async fn run_pull(args: PullArgs) -> anyhow::Result<()> {
    let reference = parse_reference(&args.reference)?;
    let client = args.registry.client(reference.registry())?;
    let pulled = client.pull(&reference, args.registry.max_bytes()).await?;
    let file = args.file.unwrap_or_else(|| {
        let name = reference
            .repository()
            .rsplit('/')
            .next()
            .unwrap_or("component");
        PathBuf::from(format!("{name}.wasm"))
    });
    write_atomic(&file, &pulled.wasm).await?;
    #[derive(Serialize)]
    struct Pulled<'a> {
        reference: String,
        digest: &'a str,
        layer_digest: &'a str,
        media_type: &'a str,
        size: usize,
        file: &'a Path,
    }
    let report = Pulled {
        reference: reference.whole(),
        digest: &pulled.manifest.digest,
        layer_digest: &pulled.layer.digest,
        media_type: &pulled.layer.media_type,
        size: pulled.wasm.len(),
        file: &file,
    };
    match args.registry.output {
        OutputFormat::Json => print_json(&report),
        OutputFormat::Table => {
            println!(
                "pulled {} ({} bytes) to {}",
                report.reference,
                report.size,
                file.display()
            );
            println!("  digest  {}", report.digest);
            Ok(())
        }
    }
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "component.wasm".into());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    tokio::fs::write(&temp, bytes)
        .await
        .with_context(|| format!("cannot write {}", temp.display()))?;
    if let Err(e) = tokio::fs::rename(&temp, path).await {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// What `inspect` reports.
#[derive(Debug, Serialize)]
struct Inspection {
    /// The ref or the file inspected.
    source: String,
    /// The manifest digest (a ref) or the file's sha256 (a file).
    digest: String,
    /// The wasm's size in bytes.
    size: usize,
    /// The wasm layer (refs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    layer: Option<serde_json::Value>,
    /// Manifest annotations (refs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
    /// The config blob (refs only), as JSON when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<serde_json::Value>,
    #[serde(flatten)]
    wasm: WasmInfo,
}

/// The bytes of `target`: a local `.wasm` (a path or `file://` URL) or an OCI ref pulled
/// with `registry`; also returns what was read, for messages.
pub async fn read_target(
    target: &str,
    registry: &RegistryFlags,
) -> anyhow::Result<(String, Vec<u8>)> {
    let max_bytes = registry.max_bytes();
    let local = match classify_image_ref(target) {
        ImageRefKind::File(path) => Some(path),
        _ if Path::new(target).is_file() => Some(PathBuf::from(target)),
        _ => None,
    };
    match local {
        Some(path) => Ok((
            path.display().to_string(),
            read_wasm(&path, max_bytes).await?,
        )),
        None => {
            let reference = parse_reference(target)?;
            let client = registry.client(reference.registry())?;
            let pulled = client.pull(&reference, max_bytes).await?;
            Ok((reference.whole(), pulled.wasm))
        }
    }
}

/// Describes a component in a registry or a file.
pub async fn run_inspect(args: InspectArgs) -> anyhow::Result<()> {
    let max_bytes = args.registry.max_bytes();
    let local = match classify_image_ref(&args.target) {
        ImageRefKind::File(path) => Some(path),
        _ if Path::new(&args.target).is_file() => Some(PathBuf::from(&args.target)),
        _ => None,
    };
    let inspection = match local {
        Some(path) => {
            let wasm = read_wasm(&path, max_bytes).await?;
            let info = artifact::wasm_info(&wasm)
                .with_context(|| format!("{} is not WebAssembly", path.display()))?;
            Inspection {
                source: path.display().to_string(),
                digest: sha256_digest(&wasm),
                size: wasm.len(),
                layer: None,
                annotations: None,
                config: None,
                wasm: info,
            }
        }
        None => {
            let reference = parse_reference(&args.target)?;
            let client = args.registry.client(reference.registry())?;
            let pulled = client.pull(&reference, max_bytes).await?;
            let config = client
                .config_blob(&reference, &pulled.manifest.manifest)
                .await?;
            let info = artifact::wasm_info(&pulled.wasm)
                .with_context(|| format!("the wasm layer of {reference} is not WebAssembly"))?;
            Inspection {
                source: reference.whole(),
                digest: pulled.manifest.digest.clone(),
                size: pulled.wasm.len(),
                layer: Some(serde_json::json!({
                    "media_type": pulled.layer.media_type,
                    "digest": pulled.layer.digest,
                    "size": pulled.layer.size,
                })),
                annotations: pulled.manifest.manifest.annotations.clone(),
                config: Some(serde_json::from_slice(&config).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&config).into())
                })),
                wasm: info,
            }
        }
    };
    match args.registry.output {
        OutputFormat::Json => print_json(&inspection),
        OutputFormat::Table => {
            print!("{}", render_inspection(&inspection));
            Ok(())
        }
    }
}

fn render_inspection(i: &Inspection) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "source   {}", i.source);
    let _ = writeln!(out, "digest   {}", i.digest);
    let _ = writeln!(out, "size     {} bytes", i.size);
    let _ = writeln!(out, "kind     {}", i.wasm.kind);
    if let Some(layer) = &i.layer {
        let _ = writeln!(
            out,
            "layer    {} {}",
            layer["media_type"].as_str().unwrap_or(""),
            layer["digest"].as_str().unwrap_or("")
        );
    }
    for (title, list) in [("imports", &i.wasm.imports), ("exports", &i.wasm.exports)] {
        if list.is_empty() {
            let _ = writeln!(out, "{title:<8} (none)");
        }
        for (n, item) in list.iter().enumerate() {
            let label = if n == 0 { title } else { "" };
            let _ = writeln!(out, "{label:<8} {item}");
        }
    }
    match &i.wasm.claims {
        Some(claims) => {
            let _ = writeln!(
                out,
                "claims   (embedded, not verified: `trellis claims inspect` checks them) {claims}"
            );
        }
        None => {
            let _ = writeln!(out, "claims   none (not signed)");
        }
    }
    if let Some(annotations) = &i.annotations {
        for (k, v) in annotations {
            let _ = writeln!(out, "annot.   {k}={v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_parse() {
        assert_eq!(
            parse_annotation("a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
        assert!(parse_annotation("=x").is_err());
        assert!(parse_annotation("x").is_err());
    }
}

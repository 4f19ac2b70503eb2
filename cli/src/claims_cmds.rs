//! `trellis claims sign|inspect`: wasmCloud-compatible (wascap) signed components, and the
//! host flags that decide which ones run (`--require-signed`, `--allowed-issuer`).
//!
//! Keys live in a keys directory like wash's (`--keys-dir`, `TRELLIS_KEYS_DIR`, default
//! `~/.trellis/keys`): `<name>_account.nk` (the issuer, `A...`) and `<name>_module.nk` (the
//! component, `M...`), each holding an nkeys seed, created with mode 0600 when missing.
//! See docs/signing.md.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nkeys::KeyPair;
use serde::Serialize;
use trellis_host::security::claims::{self, ComponentClaims, SignOptions};
use trellis_host::security::ClaimsPolicy;

use crate::oci_cmds::{read_target, RegistryFlags};
use crate::output::{print_json, OutputFormat};

/// `trellis claims ...`.
#[derive(Debug, clap::Args)]
pub struct ClaimsArgs {
    #[command(subcommand)]
    command: ClaimsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ClaimsCommand {
    /// Sign a component: embed a JWT (wascap claims) issued by an account key
    Sign(SignArgs),
    /// Show and verify the claims embedded in a component (a file or an OCI ref)
    Inspect(InspectArgs),
}

/// `trellis claims sign FILE`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis claims sign build/hello.wasm --name hello --ver 0.1.0 --rev 1
  trellis claims sign hello.wasm --issuer acme --expires 90d -o hello_s.wasm
  TRELLIS_KEYS_DIR=./keys trellis claims sign hello.wasm --tag team=web --not-before 1h")]
pub struct SignArgs {
    /// The component (.wasm) to sign (a signed one is re-signed).
    pub file: PathBuf,
    /// Where to write the signed component [default: FILE with `_s` before `.wasm`].
    #[arg(short = 'o', long = "destination", value_name = "FILE")]
    pub destination: Option<PathBuf>,
    /// The component's name in the claims [default: the file name without `.wasm`].
    #[arg(short = 'n', long)]
    pub name: Option<String>,
    /// A human-friendly version.
    #[arg(short = 'v', long = "ver")]
    pub ver: Option<String>,
    /// A revision number.
    #[arg(short = 'r', long = "rev")]
    pub rev: Option<i32>,
    /// A tag (repeatable).
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Expire after this long (`90d`, `12h`, `30m`, `10s`; a bare number is days, like
    /// wash's `--expires`) [default: never].
    #[arg(short = 'x', long, value_parser = parse_duration_secs, value_name = "DURATION")]
    pub expires: Option<u64>,
    /// Valid only after this long from now (same units as --expires) [default: now].
    #[arg(short = 'b', long, value_parser = parse_duration_secs, value_name = "DURATION")]
    pub not_before: Option<u64>,
    /// The account key that signs (`<NAME>_account.nk` in the keys directory) [default: the
    /// file name without `.wasm`].
    #[arg(long, value_name = "NAME")]
    pub issuer: Option<String>,
    /// The component key (`<NAME>_module.nk`) [default: the file name without `.wasm`].
    #[arg(long, value_name = "NAME")]
    pub subject: Option<String>,
    /// Fail instead of generating a missing key.
    #[arg(long)]
    pub disable_keygen: bool,
    #[command(flatten)]
    pub keys: KeysDir,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Where keys are kept.
#[derive(Debug, clap::Args)]
pub struct KeysDir {
    /// The keys directory [default: ~/.trellis/keys].
    #[arg(long = "keys-dir", env = "TRELLIS_KEYS_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

impl KeysDir {
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.dir {
            return Ok(dir.clone());
        }
        match std::env::var_os("HOME") {
            Some(home) => Ok(PathBuf::from(home).join(".trellis").join("keys")),
            None => bail!("cannot find a keys directory: set HOME or pass --keys-dir"),
        }
    }
}

/// `trellis claims inspect FILE|REF`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis claims inspect hello_s.wasm
  trellis claims inspect ghcr.io/org/hello:0.1.0 --output json")]
pub struct InspectArgs {
    /// A local .wasm (a path or file:// URL) or an OCI ref.
    pub target: String,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// The host flags deciding which components run and what they may do (flattened into
/// `trellis host`).
#[derive(Debug, Clone, clap::Args)]
pub struct HostSigningArgs {
    /// Refuse components without embedded claims (see `trellis claims sign`). Signed
    /// components are always verified (signature, module hash, expiry, not-before).
    #[arg(long, env = "TRELLIS_REQUIRE_SIGNED")]
    pub require_signed: bool,
    /// Accept only components signed by this account (`A...`; repeatable or
    /// comma-separated) [default: any issuer whose signature verifies].
    #[arg(
        long = "allowed-issuer",
        env = "TRELLIS_ALLOWED_ISSUERS",
        value_delimiter = ',',
        value_name = "ACCOUNT",
        value_parser = parse_account_key
    )]
    pub allowed_issuers: Vec<String>,
    /// Ask wasmCloud's policy service on this NATS subject before a component or provider
    /// starts and before a lattice call reaches a component; no answer denies.
    #[arg(long, env = "TRELLIS_POLICY_TOPIC", value_name = "SUBJECT")]
    pub policy_topic: Option<String>,
    /// The subject on which the policy service publishes changed decisions.
    #[arg(
        long,
        env = "TRELLIS_POLICY_CHANGES_TOPIC",
        value_name = "SUBJECT",
        requires = "policy_topic"
    )]
    pub policy_changes_topic: Option<String>,
    /// How long to wait for a policy decision, in milliseconds.
    #[arg(
        long,
        env = "TRELLIS_POLICY_TIMEOUT_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..=60_000),
        value_name = "MS"
    )]
    pub policy_timeout_ms: u64,
}

impl HostSigningArgs {
    /// The policy service settings, when `--policy-topic` is set.
    pub fn policy(&self) -> Option<trellis_host::security::PolicyConfig> {
        self.policy_topic
            .as_ref()
            .map(|topic| trellis_host::security::PolicyConfig {
                topic: topic.clone(),
                changes_topic: self.policy_changes_topic.clone(),
                timeout: std::time::Duration::from_millis(self.policy_timeout_ms),
            })
    }

    /// The host's claims policy.
    pub fn claims_policy(&self) -> ClaimsPolicy {
        ClaimsPolicy {
            require_signed: self.require_signed,
            allowed_issuers: self.allowed_issuers.clone(),
        }
    }
}

fn parse_account_key(text: &str) -> Result<String, String> {
    let text = text.trim();
    match KeyPair::from_public_key(text) {
        Ok(_) if text.starts_with('A') => Ok(text.to_string()),
        _ => Err(format!(
            "`{text}` is not an account public key (A..., 56 characters; `trellis claims inspect` shows a component's issuer)"
        )),
    }
}

/// Parses `90d`, `12h`, `30m`, `10s` or a bare number of days into seconds.
fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 'd'),
    };
    let multiplier = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => {
            return Err(format!(
                "`{text}`: use a number with s, m, h or d (e.g. 90d)"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("`{text}`: use a number with s, m, h or d (e.g. 90d)"))
}

/// Runs `trellis claims ...`.
pub async fn run(args: ClaimsArgs) -> anyhow::Result<()> {
    match args.command {
        ClaimsCommand::Sign(args) => sign(args),
        ClaimsCommand::Inspect(args) => inspect(args).await,
    }
}

/// Reads `<dir>/<name>_<kind>.nk`, or makes it (mode 0600) unless `disable_keygen`.
/// Returns the key and whether it was generated.
fn key(
    dir: &Path,
    name: &str,
    kind: &str,
    disable_keygen: bool,
) -> anyhow::Result<(KeyPair, bool)> {
    anyhow::ensure!(
        !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..",
        "key name `{name}` must be a plain name (no path separators)"
    );
    let path = dir.join(format!("{name}_{kind}.nk"));
    if disable_keygen && !path.exists() {
        bail!(
            "no {kind} key {} and --disable-keygen is set; create it or drop the flag",
            path.display()
        );
    }
    let generate: fn() -> KeyPair = if kind == "account" {
        KeyPair::new_account
    } else {
        KeyPair::new_module
    };
    crate::seed_files::read_or_generate(&path, Some(generate))
}

/// What `claims sign` reports.
#[derive(Debug, Serialize)]
struct SignReport {
    file: String,
    issuer: String,
    subject: String,
    hash: String,
    generated_keys: Vec<String>,
}

fn sign(args: SignArgs) -> anyhow::Result<()> {
    let wasm = trellis_host::runtime::read_component_file(
        &args.file,
        trellis_host::runtime::DEFAULT_MAX_COMPONENT_BYTES,
    )?;
    let stem = args
        .file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("component")
        .to_string();
    let dir = args.keys.path()?;
    let issuer_name = args.issuer.clone().unwrap_or_else(|| stem.clone());
    let subject_name = args.subject.clone().unwrap_or_else(|| stem.clone());
    let (account, new_account) = key(&dir, &issuer_name, "account", args.disable_keygen)?;
    let (component, new_component) = key(&dir, &subject_name, "module", args.disable_keygen)?;
    let mut generated_keys = Vec::new();
    if new_account {
        generated_keys.push(format!("{}/{issuer_name}_account.nk", dir.display()));
    }
    if new_component {
        generated_keys.push(format!("{}/{subject_name}_module.nk", dir.display()));
    }
    let now = claims::now_secs();
    let options = SignOptions {
        name: Some(args.name.clone().unwrap_or_else(|| stem.clone())),
        ver: args.ver.clone(),
        rev: args.rev,
        tags: args.tags.clone(),
        expires: args.expires.map(|d| now.saturating_add(d)),
        not_before: args.not_before.map(|d| now.saturating_add(d)),
    };
    let (signed, claims) = claims::sign(&wasm, &options, &account, &component)
        .with_context(|| format!("cannot sign {}", args.file.display()))?;
    let destination = args
        .destination
        .clone()
        .unwrap_or_else(|| args.file.with_file_name(format!("{stem}_s.wasm")));
    std::fs::write(&destination, &signed)
        .with_context(|| format!("cannot write {}", destination.display()))?;
    let report = SignReport {
        file: destination.display().to_string(),
        issuer: claims.issuer.clone(),
        subject: claims.subject.clone(),
        hash: claims
            .metadata
            .as_ref()
            .map(|m| m.module_hash.clone())
            .unwrap_or_default(),
        generated_keys,
    };
    match args.output {
        OutputFormat::Json => print_json(&report),
        OutputFormat::Table => {
            for key in &report.generated_keys {
                println!("generated key {key} (mode 0600)");
            }
            println!("signed   {}", report.file);
            println!("issuer   {} (account)", report.issuer);
            println!("subject  {} (component)", report.subject);
            println!("hash     {}", report.hash);
            Ok(())
        }
    }
}

/// What `claims inspect` reports.
#[derive(Debug, Serialize)]
struct InspectReport {
    source: String,
    signed: bool,
    /// Whether every check passed (signature, hash, expiry, not-before).
    valid: bool,
    /// The failed check, when one failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claims: Option<ComponentClaims>,
}

async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let (source, wasm) = read_target(&args.target, &args.registry).await?;
    let now = claims::now_secs();
    let report = match claims::verify(&wasm, now) {
        Ok(None) => InspectReport {
            source,
            signed: false,
            valid: false,
            error: None,
            claims: None,
        },
        Ok(Some(c)) => InspectReport {
            source,
            signed: true,
            valid: true,
            error: None,
            claims: Some(c),
        },
        Err(e) => {
            // Show what the JWT says even when a check failed (decoded, not trusted).
            let decoded = claims::embedded_jwt(&wasm)
                .ok()
                .flatten()
                .and_then(|jwt| claims::decode_unverified(&jwt));
            InspectReport {
                source,
                signed: true,
                valid: false,
                error: Some(e.to_string()),
                claims: decoded,
            }
        }
    };
    match args.registry.output {
        OutputFormat::Json => print_json(&report),
        OutputFormat::Table => {
            print!("{}", render(&report, now));
            Ok(())
        }
    }
}

fn render(report: &InspectReport, now: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "source       {}", report.source);
    if !report.signed {
        let _ = writeln!(
            out,
            "claims       none (not signed; `trellis claims sign` signs it)"
        );
        return out;
    }
    let status = match &report.error {
        None => "valid (signature, module hash, expiry, not-before)".to_string(),
        Some(e) => format!("INVALID: {e}"),
    };
    let _ = writeln!(out, "status       {status}");
    let Some(c) = &report.claims else {
        return out;
    };
    let meta = c.metadata.clone().unwrap_or_default();
    let when = |t: Option<u64>, none: &str| match t {
        None => none.to_string(),
        Some(t) if t <= now => format!("{t} (unix; {}s ago)", now - t),
        Some(t) => format!("{t} (unix; in {}s)", t - now),
    };
    let rows = [
        ("name", meta.name.clone().unwrap_or_default()),
        ("account", format!("{} (issuer)", c.issuer)),
        ("component", format!("{} (subject)", c.subject)),
        ("version", meta.ver.clone().unwrap_or_else(|| "-".into())),
        (
            "revision",
            meta.rev
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "tags",
            match meta.tags.as_deref() {
                None | Some([]) => "none".to_string(),
                Some(tags) => tags.join(", "),
            },
        ),
        ("hash", meta.module_hash.clone()),
        ("issued", when(Some(c.issued_at), "-")),
        ("expires", when(c.expires, "never")),
        ("not before", when(c.not_before, "immediately")),
    ];
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<12} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_secs("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration_secs("2"), Ok(2 * 86_400));
        assert_eq!(parse_duration_secs("10s"), Ok(10));
        assert_eq!(parse_duration_secs("3h"), Ok(3 * 3600));
        assert!(parse_duration_secs("3w").is_err());
        assert!(parse_duration_secs("x").is_err());
    }

    #[test]
    fn keys_are_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, made) = key(dir.path(), "hello", "account", false).unwrap();
        assert!(made && a.public_key().starts_with('A'));
        let (again, made) = key(dir.path(), "hello", "account", false).unwrap();
        assert!(!made);
        assert_eq!(again.public_key(), a.public_key());
        let mode = std::fs::metadata(dir.path().join("hello_account.nk"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (m, _) = key(dir.path(), "hello", "module", false).unwrap();
        assert!(m.public_key().starts_with('M'));
        assert!(key(dir.path(), "other", "module", true).is_err());
        assert!(key(dir.path(), "../x", "module", false).is_err());
    }

    #[test]
    fn account_keys_are_checked() {
        assert!(parse_account_key(&KeyPair::new_account().public_key()).is_ok());
        assert!(parse_account_key(&KeyPair::new_module().public_key()).is_err());
        assert!(parse_account_key("Anope").is_err());
    }
}

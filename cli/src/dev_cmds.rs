//! `trellis new` and `trellis build`: the developer loop for guest components.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// A project template: files written relative to the new directory, with `{{name}}` and
/// `{{crate_name}}` filled in.
struct Template {
    files: &'static [(&'static str, &'static str)],
}

const HTTP_HELLO: Template = Template {
    files: &[
        (
            "Cargo.toml",
            include_str!("templates/http_hello/Cargo.toml.tmpl"),
        ),
        (
            "src/lib.rs",
            include_str!("templates/http_hello/lib.rs.tmpl"),
        ),
        (
            "wadm.yaml",
            include_str!("templates/http_hello/wadm.yaml.tmpl"),
        ),
        (
            ".gitignore",
            include_str!("templates/http_hello/gitignore.tmpl"),
        ),
    ],
};

const HTTP_KEYVALUE_COUNTER: Template = Template {
    files: &[
        (
            "Cargo.toml",
            include_str!("templates/http_keyvalue_counter/Cargo.toml.tmpl"),
        ),
        (
            "src/lib.rs",
            include_str!("templates/http_keyvalue_counter/lib.rs.tmpl"),
        ),
        (
            "wit/world.wit",
            include_str!("templates/http_keyvalue_counter/world.wit"),
        ),
        (
            "wit/deps/wasi-keyvalue-0.2.0-draft/keyvalue.wit",
            include_str!("templates/http_keyvalue_counter/keyvalue.wit"),
        ),
        (
            "wadm.yaml",
            include_str!("templates/http_keyvalue_counter/wadm.yaml.tmpl"),
        ),
        (
            ".gitignore",
            include_str!("templates/http_keyvalue_counter/gitignore.tmpl"),
        ),
    ],
};

const MESSAGING_HANDLER: Template = Template {
    files: &[
        (
            "Cargo.toml",
            include_str!("templates/messaging_handler/Cargo.toml.tmpl"),
        ),
        (
            "src/lib.rs",
            include_str!("templates/messaging_handler/lib.rs.tmpl"),
        ),
        (
            "wit/world.wit",
            include_str!("templates/messaging_handler/world.wit"),
        ),
        (
            "wit/deps/wasi-logging/logging.wit",
            include_str!("templates/messaging_handler/logging.wit"),
        ),
        (
            "wit/deps/wasmcloud-messaging-0.2.0/messaging.wit",
            include_str!("templates/messaging_handler/messaging.wit"),
        ),
        (
            "wadm.yaml",
            include_str!("templates/messaging_handler/wadm.yaml.tmpl"),
        ),
        (
            ".gitignore",
            include_str!("templates/messaging_handler/gitignore.tmpl"),
        ),
    ],
};

/// The templates `trellis new` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TemplateName {
    /// A wasi:http component answering every request, with a manifest serving it on port 8000
    HttpHello,
    /// A wasi:http component counting requests per path in wasi:keyvalue (NATS KV), served on
    /// port 8000
    HttpKeyvalueCounter,
    /// A wasmcloud:messaging handler answering requests on the subjects `NAME.>`
    MessagingHandler,
}

impl TemplateName {
    fn template(self) -> &'static Template {
        match self {
            TemplateName::HttpHello => &HTTP_HELLO,
            TemplateName::HttpKeyvalueCounter => &HTTP_KEYVALUE_COUNTER,
            TemplateName::MessagingHandler => &MESSAGING_HANDLER,
        }
    }
}

/// Flags of `trellis new`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis new http-hello my-app && cd my-app && trellis build && trellis up --deploy wadm.yaml
  trellis new http-keyvalue-counter my-counter
  trellis new messaging-handler my-handler")]
pub struct NewArgs {
    /// The template
    pub template: TemplateName,
    /// Project name (a directory of that name is created)
    pub name: String,
}

/// Flags of `trellis build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Project directory [default: the current one]
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

/// Runs `trellis new`.
pub fn run_new(args: NewArgs) -> anyhow::Result<()> {
    check_project_name(&args.name)?;
    let template = args.template.template();
    let dir = PathBuf::from(&args.name);
    if dir.exists() {
        bail!("{} already exists: pick another name", dir.display());
    }
    write_template(template, &dir, &args.name)?;
    println!("created {}", dir.display());
    println!(
        "next: cd {} && trellis build && trellis up --deploy wadm.yaml",
        args.name
    );
    Ok(())
}

fn write_template(template: &Template, dir: &Path, name: &str) -> anyhow::Result<()> {
    let crate_name = name.replace('-', "_");
    for (path, text) in template.files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let filled = text
            .replace("{{name}}", name)
            .replace("{{crate_name}}", &crate_name);
        std::fs::write(&target, filled)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}

/// A project name must be a valid crate name and app name: lowercase letters, digits, `-`.
fn check_project_name(name: &str) -> anyhow::Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("invalid project name {name:?}: use lowercase letters, digits and '-', starting with a letter");
    }
    Ok(())
}

/// Runs `trellis build`: `cargo build --release --target wasm32-wasip2` and prints the .wasm.
pub async fn run_build(args: BuildArgs) -> anyhow::Result<()> {
    if !args.dir.join("Cargo.toml").is_file() {
        bail!(
            "no Cargo.toml in {}: run `trellis build` in a project made by `trellis new`",
            args.dir.display()
        );
    }
    let status = tokio::process::Command::new("cargo")
        // The project's own target dir, whatever a cargo config elsewhere says: the manifest
        // `trellis new` writes names ./target/wasm32-wasip2/release/....
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
            "target",
        ])
        .current_dir(&args.dir)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .await
        .context("cannot run cargo: is Rust installed (https://rustup.rs)?")?;
    if !status.success() {
        bail!("the build failed ({status}); if the target is missing, run `rustup target add wasm32-wasip2`");
    }
    let out = args.dir.join("target/wasm32-wasip2/release");
    let mut built = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&out) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "wasm") {
                built.push(path);
            }
        }
    }
    built.sort();
    if built.is_empty() {
        bail!("the build produced no .wasm in {}", out.display());
    }
    for path in built {
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_are_checked() {
        assert!(check_project_name("my-app2").is_ok());
        assert!(check_project_name("My_App").is_err());
        assert!(check_project_name("2app").is_err());
        assert!(check_project_name("").is_err());
    }

    #[test]
    fn template_fills_names_and_manifest_serves_port_8000() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("my-app");
        write_template(&HTTP_HELLO, &project, "my-app").unwrap();
        let cargo = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"my-app\""));
        let manifest = std::fs::read_to_string(project.join("wadm.yaml")).unwrap();
        assert!(manifest.contains("release/my_app.wasm"));
        assert!(!manifest.contains("{{"));
        let parsed = crate::app_endpoints::parse_manifest(&manifest).unwrap();
        assert_eq!(
            crate::app_endpoints::http_urls(&parsed),
            vec!["http://127.0.0.1:8000/"]
        );
        assert!(project.join("src/lib.rs").is_file());
    }

    #[test]
    fn every_template_fills_names_and_ships_a_valid_manifest() {
        use clap::ValueEnum as _;
        for template in TemplateName::value_variants() {
            let dir = tempfile::tempdir().unwrap();
            let project = dir.path().join("my-app");
            write_template(template.template(), &project, "my-app").unwrap();
            let cargo = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
            assert!(cargo.contains("name = \"my-app\""), "{template:?}");
            assert!(project.join("src/lib.rs").is_file(), "{template:?}");
            let manifest = std::fs::read_to_string(project.join("wadm.yaml")).unwrap();
            assert!(!manifest.contains("{{"), "{template:?}: {manifest}");
            assert!(
                manifest.contains("file://./target/wasm32-wasip2/release/my_app.wasm"),
                "{template:?}"
            );
            let parsed = trellis_wadm::model::parse_manifest(manifest.as_bytes())
                .unwrap_or_else(|e| panic!("{template:?}: {e:?}"));
            assert_eq!(parsed.manifest.metadata.name, "my-app");
            for (path, _) in template.template().files {
                let text = std::fs::read_to_string(project.join(path)).unwrap();
                assert!(!text.contains("{{"), "{template:?}: {path}");
            }
        }
    }
}

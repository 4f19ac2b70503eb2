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

/// The templates `trellis new` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TemplateName {
    /// A wasi:http component answering every request, with a manifest serving it on port 8000
    HttpHello,
}

/// Flags of `trellis new`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis new http-hello my-app && cd my-app && trellis build && trellis up --deploy wadm.yaml")]
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
    let template = match args.template {
        TemplateName::HttpHello => &HTTP_HELLO,
    };
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
        .args(["build", "--release", "--target", "wasm32-wasip2"])
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
}

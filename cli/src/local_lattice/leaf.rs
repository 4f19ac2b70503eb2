//! Edge sites for `trellis up`: a hub that accepts NATS leaf nodes (`--leaf-listen`), and an
//! edge device that runs its own leaf nats-server joined to a hub (`--leaf-of`).
//!
//! The hub's JetStream gets a domain (`--hub-domain`, default `hub`), so a host on a leaf
//! reads the lattice's links, configs and manifests from it across the leaf connection
//! (`trellis host --js-domain hub`). The leaf's own JetStream has another domain and keeps the
//! site's key-value data, which stays writable while the hub is away.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The user leaf nodes log in to a `trellis up --leaf-listen` hub as.
pub const LEAF_USER: &str = "leaf";

/// Leaf-node flags of `trellis up`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LeafArgs {
    /// Accept NATS leaf nodes (edge sites started with `trellis up --leaf-of`) on ADDR, e.g.
    /// 0.0.0.0:7422. They log in as user `leaf` with the password kept in
    /// <data-dir>/auth/leaf.password (made on first start, mode 0600).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["nats_url", "leaf_of"])]
    pub leaf_listen: Option<SocketAddr>,
    /// Run as an edge site of the hub at URL (`nats-leaf://hub.example:7422`): a local
    /// nats-server joined to it as a leaf node, with its own JetStream, and a host that reads
    /// the lattice's state from the hub and keeps serving when the hub is away. No reconciler
    /// runs here: the hub's places work on this host.
    #[arg(long, value_name = "URL", conflicts_with = "nats_url")]
    pub leaf_of: Option<String>,
    /// NATS credentials file the leaf connection logs in to the hub with.
    #[arg(long, value_name = "FILE", requires = "leaf_of")]
    pub creds: Option<PathBuf>,
    /// File holding the password of user `leaf` on the hub (a `trellis up --leaf-listen` hub
    /// keeps it in <data-dir>/auth/leaf.password). Never pass passwords on the command line.
    #[arg(
        long,
        value_name = "FILE",
        requires = "leaf_of",
        conflicts_with = "creds"
    )]
    pub leaf_password_file: Option<PathBuf>,
    /// The hub's JetStream domain: what the hub is started with under --leaf-listen, and where
    /// an edge site's host reads the lattice's state under --leaf-of.
    #[arg(long, default_value = "hub", value_name = "DOMAIN", value_parser = parse_domain)]
    pub hub_domain: String,
    /// This edge site's own JetStream domain (default: `edge-<hostname>`).
    #[arg(long, value_name = "DOMAIN", requires = "leaf_of", value_parser = parse_domain)]
    pub leaf_domain: Option<String>,
}

fn parse_domain(domain: &str) -> Result<String, String> {
    if trellis_protocol::subjects::is_valid_token(domain) {
        Ok(domain.to_string())
    } else {
        Err(format!(
            "`{domain}` is not a valid JetStream domain: use letters, digits, `-` or `_`"
        ))
    }
}

impl LeafArgs {
    /// True when this `trellis up` is an edge site.
    pub fn is_edge(&self) -> bool {
        self.leaf_of.is_some()
    }

    /// The JetStream domain of the server `trellis up` starts, if it needs one.
    pub fn local_domain(&self) -> Option<String> {
        if self.leaf_listen.is_some() {
            return Some(self.hub_domain.clone());
        }
        self.leaf_of.as_ref()?;
        Some(self.leaf_domain.clone().unwrap_or_else(default_leaf_domain))
    }

    /// The `leafnodes { ... }` block of the server `trellis up` starts, if any. A hub behind
    /// authentication admits leaf nodes with the password in `<data-dir>/auth/leaf.password`.
    pub fn nats_config(&self, data_dir: &Path, authenticated: bool) -> anyhow::Result<String> {
        if let Some(listen) = self.leaf_listen {
            let authorization = if authenticated {
                let password = hub_password(data_dir)?;
                format!(
                    "\n  authorization {{\n    user: {}\n    password: {}\n  }}",
                    quoted(LEAF_USER)?,
                    quoted(&password)?
                )
            } else {
                String::new()
            };
            return Ok(format!(
                "leafnodes {{\n  listen: {}{authorization}\n}}\n",
                quoted(&listen.to_string())?
            ));
        }
        let Some(url) = &self.leaf_of else {
            return Ok(String::new());
        };
        let mut remote = format!("    {{\n      url: {}\n", quoted(&self.remote_url(url)?)?);
        if let Some(creds) = &self.creds {
            if !creds.is_file() {
                bail!("the credentials file {} does not exist", creds.display());
            }
            let creds = std::path::absolute(creds).unwrap_or_else(|_| creds.clone());
            remote.push_str(&format!(
                "      credentials: {}\n",
                quoted(&creds.display().to_string())?
            ));
        }
        remote.push_str("    }\n");
        Ok(format!("leafnodes {{\n  remotes = [\n{remote}  ]\n}}\n"))
    }

    /// The hub's URL with the leaf password from --leaf-password-file in it (it goes only
    /// into the 0600 nats.conf, never argv or logs).
    fn remote_url(&self, url: &str) -> anyhow::Result<String> {
        let Some(file) = &self.leaf_password_file else {
            return Ok(url.to_string());
        };
        let password = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the leaf password file {}", file.display()))?;
        let password = password.trim();
        if password.is_empty() || password.contains(['@', '/', ':', '"', '\\']) {
            bail!(
                "the leaf password file {} must hold one password without `@ / : \" \\`",
                file.display()
            );
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("--leaf-of {url} is not a URL: use nats-leaf://HOST:PORT");
        };
        if rest.contains('@') {
            bail!("--leaf-of {url} already names a user: give the password with the file only");
        }
        Ok(format!("{scheme}://{LEAF_USER}:{password}@{rest}"))
    }
}

/// The password leaf nodes log in to this hub with, made on first start.
fn hub_password(data_dir: &Path) -> anyhow::Result<String> {
    use rand::distributions::{Alphanumeric, DistString};
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("auth").join("leaf.password");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, password.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(password)
}

/// `edge-<hostname>`, the hostname reduced to what a domain may hold.
fn default_leaf_domain() -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let cleaned: String = hostname
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if cleaned.is_empty() {
        "edge".to_string()
    } else {
        format!("edge-{cleaned}")
    }
}

/// `text` as a quoted nats-server config string.
fn quoted(text: &str) -> anyhow::Result<String> {
    serde_json::to_string(text).context("cannot quote a config value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_admits_leaf_nodes_with_a_kept_private_password() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let args = LeafArgs {
            leaf_listen: Some("127.0.0.1:7422".parse().unwrap()),
            hub_domain: "hub".into(),
            ..Default::default()
        };
        assert_eq!(args.local_domain().as_deref(), Some("hub"));
        let config = args.nats_config(dir.path(), true).unwrap();
        let again = args.nats_config(dir.path(), true).unwrap();
        assert_eq!(config, again, "the password is kept across starts");
        assert!(config.contains("listen: \"127.0.0.1:7422\""), "{config}");
        let password = std::fs::read_to_string(dir.path().join("auth/leaf.password")).unwrap();
        assert!(config.contains(&password), "{config}");
        let mode = std::fs::metadata(dir.path().join("auth/leaf.password"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let open = args.nats_config(dir.path(), false).unwrap();
        assert!(!open.contains("authorization"), "{open}");
    }

    #[test]
    fn an_edge_site_joins_with_the_password_file_and_its_own_domain() {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("leaf.password");
        std::fs::write(&password_file, "s3cret\n").unwrap();
        let args = LeafArgs {
            leaf_of: Some("nats-leaf://hub.example:7422".into()),
            leaf_password_file: Some(password_file),
            hub_domain: "hub".into(),
            leaf_domain: Some("site1".into()),
            ..Default::default()
        };
        assert!(args.is_edge());
        assert_eq!(args.local_domain().as_deref(), Some("site1"));
        let config = args.nats_config(dir.path(), true).unwrap();
        assert!(
            config.contains("nats-leaf://leaf:s3cret@hub.example:7422"),
            "{config}"
        );
        let missing_creds = LeafArgs {
            leaf_of: Some("nats-leaf://hub.example:7422".into()),
            creds: Some(dir.path().join("absent.creds")),
            ..Default::default()
        };
        let err = missing_creds.nats_config(dir.path(), true).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(default_leaf_domain().starts_with("edge"));
        assert!(parse_domain("a.b").is_err());
    }
}

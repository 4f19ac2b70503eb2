//! Directory mounts: host directories a component sees through `wasi:filesystem`.
//!
//! A component asks for mounts in its config (key [`MOUNTS_KEY`]); the host grants only
//! directories inside the roots its operator allowed ([`MountRoot`], `trellis host
//! --allow-mount`), read-only unless both the request and the root say `rw`. The request
//! comes over the network (a manifest), so the host directory is resolved (symlinks and `..`
//! followed) before it is compared with the roots. Inside a mount, wasmtime-wasi (cap-std)
//! keeps every path the guest opens beneath the mounted directory: `..` and symlinks that
//! lead out of it are refused.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{bail, Context};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// The config key holding a component's mounts: entries `GUEST_PATH=HOST_DIR[:ro|:rw]`,
/// separated by commas or newlines. `HOST_DIR` is an absolute path or a `file://` URL (a
/// relative `file://./dir` is resolved against the manifest's directory by `trellis app
/// deploy`, as image refs are). Entries are read-only unless they end with `:rw`.
pub const MOUNTS_KEY: &str = "mounts";

/// A directory the host's operator lets components mount (it or anything under it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRoot {
    /// The directory.
    pub path: PathBuf,
    /// Whether mounts under it may be writable (`DIR:rw`); read-only otherwise.
    pub writable: bool,
}

impl MountRoot {
    /// Parses `DIR`, `DIR:ro` or `DIR:rw` (the form of `--allow-mount`). The directory is
    /// checked when a component asks for a mount, so a root made later still works.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (path, writable) = split_access(text.trim());
        if path.is_empty() {
            return Err(format!(
                "`{text}` names no directory: give DIR, DIR:ro or DIR:rw"
            ));
        }
        Ok(Self {
            path: PathBuf::from(path),
            writable,
        })
    }
}

/// One mount a component asked for, before it is checked against the host's roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    /// Where the guest sees it (absolute, normalized, e.g. `/site`).
    pub guest_path: String,
    /// The host directory as written (a path; the `file://` scheme is removed).
    pub host_dir: PathBuf,
    /// Whether the component asked to write (`:rw`).
    pub writable: bool,
}

/// A granted mount: the resolved host directory, checked against the host's roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where the guest sees it.
    pub guest_path: String,
    /// The host directory, canonical (symlinks resolved).
    pub host_dir: PathBuf,
    /// Whether the guest may create, change and delete files in it.
    pub writable: bool,
}

/// Splits a trailing `:ro` or `:rw` off `text`; `true` for `:rw`.
fn split_access(text: &str) -> (&str, bool) {
    if let Some(path) = text.strip_suffix(":rw") {
        (path, true)
    } else if let Some(path) = text.strip_suffix(":ro") {
        (path, false)
    } else {
        (text, false)
    }
}

/// Parses the value of the [`MOUNTS_KEY`] config key.
pub fn parse_mounts(value: &str) -> anyhow::Result<Vec<MountRequest>> {
    let mut requests = Vec::new();
    let mut seen = HashSet::new();
    for entry in value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let Some((guest, host)) = entry.split_once('=') else {
            bail!(
                "mount `{entry}` must look like GUEST_PATH=HOST_DIR[:ro|:rw], e.g. /site=/srv/site"
            );
        };
        let guest_path = normalize_guest_path(guest.trim())
            .with_context(|| format!("mount `{entry}` has an unusable guest path"))?;
        let (host, writable) = split_access(host.trim());
        let host = host.strip_prefix("file://").unwrap_or(host);
        let host_dir = PathBuf::from(host);
        if !host_dir.is_absolute() {
            bail!(
                "mount `{entry}`: the host directory `{host}` must be absolute (or a file:// URL \
                 relative to the manifest, which `trellis app deploy` resolves)"
            );
        }
        if !seen.insert(guest_path.clone()) {
            bail!("guest path {guest_path} is mounted twice");
        }
        requests.push(MountRequest {
            guest_path,
            host_dir,
            writable,
        });
    }
    Ok(requests)
}

/// `/a/b` from `/a/b/` or `/a//b`; refuses relative paths, `.` and `..`.
fn normalize_guest_path(path: &str) -> anyhow::Result<String> {
    if !path.starts_with('/') {
        bail!("`{path}` must be absolute (start with /)");
    }
    let mut parts = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            bail!("`{path}` must not contain `.` or `..`");
        }
        parts.push(part);
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Checks `requests` of component `component_id` against the operator's `roots` and resolves
/// them. Fails, saying which mount and why, when a directory is missing, outside every root,
/// or asked writable under a read-only root.
pub fn grant(
    component_id: &str,
    requests: &[MountRequest],
    roots: &[MountRoot],
) -> anyhow::Result<Vec<Mount>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    if roots.is_empty() {
        bail!(
            "component {component_id} asks to mount {} but this host allows no directory \
             mounts; its operator can allow a directory with `trellis host --allow-mount DIR` \
             (or TRELLIS_ALLOW_MOUNTS)",
            requests[0].host_dir.display()
        );
    }
    // Roots that do not exist (yet) cannot contain anything; they are skipped.
    let resolved_roots: Vec<(PathBuf, bool)> = roots
        .iter()
        .filter_map(|root| {
            std::fs::canonicalize(&root.path)
                .ok()
                .map(|path| (path, root.writable))
        })
        .collect();
    let allowed = || {
        roots
            .iter()
            .map(|r| {
                format!(
                    "{}{}",
                    r.path.display(),
                    if r.writable { " (rw)" } else { " (ro)" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut mounts = Vec::with_capacity(requests.len());
    for request in requests {
        let host_dir = std::fs::canonicalize(&request.host_dir).with_context(|| {
            format!(
                "component {component_id} asks to mount {} at {}, which cannot be resolved \
                 on this host (does the directory exist?)",
                request.host_dir.display(),
                request.guest_path
            )
        })?;
        if !host_dir.is_dir() {
            bail!(
                "component {component_id} asks to mount {} at {}, which is not a directory",
                request.host_dir.display(),
                request.guest_path
            );
        }
        let inside: Vec<bool> = resolved_roots
            .iter()
            .filter(|(root, _)| host_dir.starts_with(root))
            .map(|(_, writable)| *writable)
            .collect();
        if inside.is_empty() {
            bail!(
                "component {component_id} asks to mount {} (resolved to {}) at {}, which is \
                 outside the directories this host allows mounts from: {}; its operator can \
                 allow it with `trellis host --allow-mount DIR`",
                request.host_dir.display(),
                host_dir.display(),
                request.guest_path,
                allowed()
            );
        }
        if request.writable && !inside.contains(&true) {
            bail!(
                "component {component_id} asks to mount {} at {} writable (:rw), but this host \
                 allows it read-only only ({}); mount it without :rw, or its operator can allow \
                 writes with `trellis host --allow-mount DIR:rw`",
                request.host_dir.display(),
                request.guest_path,
                allowed()
            );
        }
        mounts.push(Mount {
            guest_path: request.guest_path.clone(),
            host_dir,
            writable: request.writable,
        });
    }
    Ok(mounts)
}

/// Reads the mounts of a component's `config` and grants them against `roots` (none asked:
/// none granted).
pub fn from_config(
    component_id: &str,
    config: &std::collections::HashMap<String, String>,
    roots: &[MountRoot],
) -> anyhow::Result<Vec<Mount>> {
    let Some(value) = config.get(MOUNTS_KEY) else {
        return Ok(Vec::new());
    };
    let requests = parse_mounts(value).with_context(|| {
        format!("component {component_id} has an unusable `{MOUNTS_KEY}` config")
    })?;
    grant(component_id, &requests, roots)
}

/// Preopens `mounts` in an instance's WASI context. The directory is opened again for each
/// instance; if it no longer resolves to the directory that was granted (replaced by a
/// symlink, removed), the instance is refused.
pub(crate) fn preopen(builder: &mut WasiCtxBuilder, mounts: &[Mount]) -> anyhow::Result<()> {
    for mount in mounts {
        let now = std::fs::canonicalize(&mount.host_dir).ok();
        if now.as_deref() != Some(mount.host_dir.as_path()) {
            bail!(
                "mounted directory {} changed or disappeared since it was granted; redeploy the component",
                mount.host_dir.display()
            );
        }
        let perms = if mount.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        builder
            .preopened_dir(&mount.host_dir, &mount.guest_path, perms)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("cannot open mounted directory {}", mount.host_dir.display())
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(path: &std::path::Path, writable: bool) -> MountRoot {
        MountRoot {
            path: path.to_path_buf(),
            writable,
        }
    }

    #[test]
    fn entries_parse() {
        let requests = parse_mounts("/site=file:///srv/site, /data/=/var/data:rw\n/x//y=/z:ro")
            .expect("valid");
        assert_eq!(
            requests,
            vec![
                MountRequest {
                    guest_path: "/site".into(),
                    host_dir: "/srv/site".into(),
                    writable: false
                },
                MountRequest {
                    guest_path: "/data".into(),
                    host_dir: "/var/data".into(),
                    writable: true
                },
                MountRequest {
                    guest_path: "/x/y".into(),
                    host_dir: "/z".into(),
                    writable: false
                },
            ]
        );
        for bad in [
            "/site",
            "site=/srv",
            "/a/../b=/srv",
            "/site=relative/dir",
            "/site=/a,/site=/b",
        ] {
            assert!(parse_mounts(bad).is_err(), "{bad} must be refused");
        }
        assert_eq!(
            MountRoot::parse("/srv:rw").expect("root"),
            root(std::path::Path::new("/srv"), true)
        );
        assert!(MountRoot::parse(":rw").is_err());
    }

    #[test]
    fn only_directories_inside_an_allowed_root_are_granted() {
        let base = tempfile::tempdir().expect("tempdir");
        let allowed = base.path().join("allowed");
        let site = allowed.join("site");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(&site).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        let request = |dir: &std::path::Path, writable| MountRequest {
            guest_path: "/site".into(),
            host_dir: dir.to_path_buf(),
            writable,
        };
        let roots = [root(&allowed, false)];

        let granted = grant("c", &[request(&site, false)], &roots).expect("inside");
        assert_eq!(granted[0].host_dir, site.canonicalize().expect("canonical"));
        assert!(!granted[0].writable);

        // Outside, through `..`, and through a symlink inside the root: all refused, naming
        // the resolved directory and the allowed roots.
        let dotdot = site.join("../../outside");
        let link = allowed.join("link");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        for dir in [outside.clone(), dotdot, link] {
            let error = grant("c", &[request(&dir, false)], &roots)
                .expect_err("outside must be refused")
                .to_string();
            assert!(error.contains("outside the directories"), "{error}");
            assert!(error.contains("--allow-mount"), "{error}");
        }
        // A sibling whose name only starts like the root is not inside it.
        let sibling = base.path().join("allowed-not");
        std::fs::create_dir_all(&sibling).expect("mkdir");
        assert!(grant("c", &[request(&sibling, false)], &roots).is_err());

        // Writable only under an rw root.
        let error = grant("c", &[request(&site, true)], &roots)
            .expect_err("rw under ro root")
            .to_string();
        assert!(error.contains("read-only"), "{error}");
        let granted = grant("c", &[request(&site, true)], &[root(&allowed, true)]).expect("rw");
        assert!(granted[0].writable);

        // No roots at all, or a missing directory.
        let error = grant("c", &[request(&site, false)], &[])
            .expect_err("no roots")
            .to_string();
        assert!(error.contains("allows no directory mounts"), "{error}");
        assert!(grant("c", &[request(&allowed.join("missing"), false)], &roots).is_err());
    }
}

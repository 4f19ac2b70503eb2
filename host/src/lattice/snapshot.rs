//! A host's snapshot of what it serves: the lattice's links and configs as this host last saw
//! them, and the components and providers it runs, written to its data directory
//! (`--data-dir`) whenever one of them changes.
//!
//! The snapshot is for partitions. A host that loses its hub keeps serving from memory without
//! it; a host *restarted* while the hub is unreachable reads its snapshot, serves the same
//! links and configs, and starts the same components and providers again, so an edge site
//! comes back after a power cut without its hub. When the lattice's JetStream answers at
//! start-up, the snapshot is not replayed: the lattice (and its reconciler) is the truth, and
//! the snapshot is rewritten from what the host then runs.
//!
//! What the snapshot cannot bring back during a partition: components whose secrets come from
//! a backend that cannot be reached, and components or providers a policy service must
//! approve (both refuse to start, as they would without a snapshot), and code that is neither
//! a local file nor in the host's OCI cache.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use trellis_protocol::ctl::{Link, ScaleComponentCommand, StartProviderCommand};

use crate::host::Host;
use crate::lattice::store::{ConfigMap, StoreSeed};

/// The format written; a snapshot of another format is ignored with a warning.
const FORMAT: u32 = 1;

/// Bursts of changes (an app deployed: components, providers, links) are written once.
const COALESCE: Duration = Duration::from_millis(250);

/// What a host knew and ran, as written to `<data-dir>/state/<lattice>.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The snapshot format ([`FORMAT`]).
    pub format: u32,
    /// The lattice it belongs to.
    pub lattice: String,
    /// The host that wrote it.
    pub host_id: String,
    /// Every link the host knew.
    pub links: Vec<Link>,
    /// Every named config the host knew.
    pub configs: BTreeMap<String, ConfigMap>,
    /// The components it ran, as the scale commands that start them again.
    pub components: Vec<ScaleComponentCommand>,
    /// The providers it ran, as the start commands that start them again.
    pub providers: Vec<StartProviderCommand>,
}

impl Snapshot {
    /// Where the snapshot of `lattice` lives under `data_dir`.
    pub fn path(data_dir: &Path, lattice: &str) -> PathBuf {
        data_dir.join("state").join(format!("{lattice}.json"))
    }

    /// What `host` knows and runs now.
    pub fn capture(host: &Host) -> Self {
        let StoreSeed { links, configs } = host.store.links_and_configs();
        let components = host
            .components
            .all()
            .iter()
            .map(|running| ScaleComponentCommand {
                component_ref: running.prepared.image_ref().to_string(),
                component_id: running.prepared.id().to_string(),
                annotations: (!running.annotations.is_empty()).then(|| running.annotations.clone()),
                max_instances: running.prepared.max_instances(),
                component_limits: (!running.limits.is_empty()).then(|| running.limits.clone()),
                host_id: host.identity.host_id.clone(),
                config: running.config_names.clone(),
                allow_update: false,
            })
            .collect();
        let providers = host
            .providers
            .specs()
            .into_iter()
            .map(|spec| StartProviderCommand {
                provider_id: spec.id,
                provider_ref: spec.image_ref,
                host_id: host.identity.host_id.clone(),
                config: spec.config_names,
                annotations: (!spec.annotations.is_empty()).then_some(spec.annotations),
            })
            .collect();
        Self {
            format: FORMAT,
            lattice: host.lattice.clone(),
            host_id: host.identity.host_id.clone(),
            links,
            configs,
            components,
            providers,
        }
    }

    /// Reads the snapshot at `path`: `None` when there is none, or when it cannot be used (it
    /// is unreadable, of another format or another lattice: said in a warning).
    pub fn load(path: &Path, lattice: &str) -> Option<Self> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read this host's snapshot; starting without it");
                return None;
            }
        };
        match serde_json::from_slice::<Self>(&bytes) {
            Ok(snapshot) if snapshot.format == FORMAT && snapshot.lattice == lattice => {
                Some(snapshot)
            }
            Ok(snapshot) => {
                tracing::warn!(
                    path = %path.display(),
                    format = snapshot.format,
                    lattice = %snapshot.lattice,
                    "this host's snapshot is of another format or lattice; starting without it"
                );
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "this host's snapshot is malformed; starting without it");
                None
            }
        }
    }

    /// The links and configs to serve from while the lattice is unreachable.
    pub fn store_seed(&self) -> StoreSeed {
        StoreSeed {
            links: self.links.clone(),
            configs: self.configs.clone(),
        }
    }

    /// Writes the snapshot to `path` whole or not at all (a temporary file renamed over it),
    /// readable by its owner only: configs may hold values worth keeping private.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path
            .parent()
            .context("the snapshot path has no parent directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let bytes = serde_json::to_vec_pretty(self).context("cannot encode the snapshot")?;
        let temporary = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }
}

/// Starts again the components and providers of `snapshot` on `host`, as if the control
/// interface had been asked to, and says how many came back.
pub(crate) async fn replay(host: &Arc<Host>, snapshot: &Snapshot) {
    for cmd in &snapshot.providers {
        crate::lattice::control::start_provider(host, cmd.clone()).await;
    }
    for cmd in &snapshot.components {
        crate::lattice::control::scale_component(host, cmd.clone()).await;
    }
    let components = host.components.all().len();
    let providers = host.providers.specs().len();
    tracing::info!(
        components,
        providers,
        "started {components} of {} components and {providers} of {} providers from this host's snapshot",
        snapshot.components.len(),
        snapshot.providers.len()
    );
}

/// Keeps the snapshot at `path` current: written when links, configs, components or providers
/// change (bursts coalesced), and only when its content changed. Idle, it does nothing.
pub(crate) async fn keep_written(host: Arc<Host>, path: PathBuf) {
    let mut store_changes = host.store.subscribe();
    let mut components = host.components.changes();
    let mut providers = host.providers.changes();
    let mut written: Option<Snapshot> = None;
    loop {
        let snapshot = Snapshot::capture(&host);
        if written.as_ref() != Some(&snapshot) {
            match snapshot.write(&path) {
                Ok(()) => written = Some(snapshot),
                // Tried again at the next change; a full disk must not stop the host.
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot write this host's snapshot")
                }
            }
        }
        let open = tokio::select! {
            received = store_changes.recv() => !matches!(received, Err(tokio::sync::broadcast::error::RecvError::Closed)),
            changed = components.changed() => changed.is_ok(),
            changed = providers.changed() => changed.is_ok(),
        };
        if !open {
            return;
        }
        tokio::time::sleep(COALESCE).await;
        // Everything that happened meanwhile is in the next capture.
        store_changes = store_changes.resubscribe();
        components.mark_unchanged();
        providers.mark_unchanged();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            format: FORMAT,
            lattice: "edge".into(),
            host_id: "NHOST".into(),
            links: Vec::new(),
            configs: BTreeMap::from([(
                "greeting".to_string(),
                ConfigMap::from([("message".to_string(), "hi".to_string())]),
            )]),
            components: vec![ScaleComponentCommand {
                component_ref: "file:///hello.wasm".into(),
                component_id: "hello".into(),
                max_instances: 2,
                config: vec!["greeting".into()],
                ..Default::default()
            }],
            providers: Vec::new(),
        }
    }

    #[test]
    fn a_written_snapshot_reads_back_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = Snapshot::path(dir.path(), "edge");
        sample().write(&path).unwrap();
        assert_eq!(Snapshot::load(&path, "edge"), Some(sample()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another lattice's host does not replay it.
        assert_eq!(Snapshot::load(&path, "other"), None);
    }

    #[test]
    fn a_missing_or_broken_snapshot_is_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = Snapshot::path(dir.path(), "edge");
        assert_eq!(Snapshot::load(&path, "edge"), None);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{ not json").unwrap();
        assert_eq!(Snapshot::load(&path, "edge"), None);
        let mut other_format = sample();
        other_format.format = FORMAT + 1;
        other_format.write(&path).unwrap();
        assert_eq!(Snapshot::load(&path, "edge"), None);
    }
}

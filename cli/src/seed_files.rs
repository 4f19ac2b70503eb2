//! Nkey seed files (`*.nk`): the lattice users' keys `trellis up` makes and the signing keys
//! `trellis claims sign` makes. Read as they are, or generated once and readable by their owner
//! only.

use std::path::Path;

use anyhow::Context as _;
use nkeys::KeyPair;

/// Reads the nkey seed in `path`. When the file does not exist and `generate` is given, makes
/// a key with it, writes the seed with mode 0600 (its directory created with mode 0700) and
/// returns the key with `true`.
pub fn read_or_generate(
    path: &Path,
    generate: Option<fn() -> KeyPair>,
) -> anyhow::Result<(KeyPair, bool)> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let pair = KeyPair::from_seed(text.trim()).map_err(|_| {
                anyhow::anyhow!("{} does not hold a valid nkey seed", path.display())
            })?;
            Ok((pair, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(generate) = generate else {
                return Err(e).with_context(|| format!("no nkey seed file {}", path.display()));
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
            }
            let pair = generate();
            let seed = pair.seed().context("cannot read the new key's seed")?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            std::io::Write::write_all(&mut file, format!("{seed}\n").as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok((pair, true))
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the nkey seed file {}", path.display()))
        }
    }
}

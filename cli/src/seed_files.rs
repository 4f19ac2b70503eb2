//! Nkey seed files (`*.nk`): the lattice users' keys `trellis up` makes and the signing keys
//! `trellis claims sign` makes. Read as they are, or generated once and readable by their owner
//! only.

use std::path::Path;

use anyhow::Context as _;
use nkeys::{KeyPair, XKey};

/// Reads the nkey seed in `path`. When the file does not exist and `generate` is given, makes
/// a key with it, writes the seed with mode 0600 (its directory created with mode 0700) and
/// returns the key with `true`.
pub fn read_or_generate(
    path: &Path,
    generate: Option<fn() -> KeyPair>,
) -> anyhow::Result<(KeyPair, bool)> {
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
            let pair = generate();
            let seed = pair.seed().context("cannot read the new key's seed")?;
            write_new_seed(path, &seed)?;
            Ok((pair, true))
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the nkey seed file {}", path.display()))
        }
    }
}

/// Reads the xkey (curve25519) seed in `path` (`SX...`), as the secrets backend's transit,
/// encryption and admin keys are kept. When the file does not exist and `generate` is true,
/// makes a key, writes its seed with mode 0600 and returns it with `true`. Errors name the
/// file, never its content.
pub fn read_or_generate_xkey(path: &Path, generate: bool) -> anyhow::Result<(XKey, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = XKey::from_seed(text.trim()).map_err(|_| {
                anyhow::anyhow!("{} does not hold a valid xkey seed (SX...)", path.display())
            })?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
            let key = XKey::new();
            let seed = key.seed().context("cannot read the new key's seed")?;
            write_new_seed(path, &seed)?;
            Ok((key, true))
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the xkey seed file {}", path.display()))
        }
    }
}

/// Writes `seed` to the new file `path` with mode 0600 (its directory created with mode
/// 0700); fails when the file exists.
fn write_new_seed(path: &Path, seed: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{seed}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xkey_seeds_are_generated_private_then_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth/transit.xk");
        assert!(read_or_generate_xkey(&path, false).is_err());
        let (first, created) = read_or_generate_xkey(&path, true).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = read_or_generate_xkey(&path, true).unwrap();
        assert!(!created);
        assert_eq!(first.public_key(), again.public_key());
        std::fs::write(&path, "SUnotanxkey").unwrap();
        let err = read_or_generate_xkey(&path, true).unwrap_err().to_string();
        assert!(
            err.contains("valid xkey seed") && !err.contains("SUnot"),
            "{err}"
        );
    }
}

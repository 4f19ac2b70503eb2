//! Who a host is: its nkeys identity, friendly name and built-in labels.

use std::collections::BTreeMap;

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// A host's identity on the lattice.
#[derive(Debug, Clone)]
pub struct HostIdentity {
    /// The nkeys server public key (`N...`), the host id.
    pub host_id: String,
    /// A readable name such as `brave-otter-4821`: random for a fresh identity, the same on
    /// every start for one given by its seed.
    pub friendly_name: String,
}

impl HostIdentity {
    /// The identity from an nkeys server seed (`SN...`), or a fresh one when `seed` is `None`.
    pub fn from_seed(seed: Option<&str>) -> anyhow::Result<Self> {
        let key = match seed {
            Some(seed) => {
                let key = nkeys::KeyPair::from_seed(seed.trim())
                    .context("the host seed is not a valid nkeys seed (expected `SN...`)")?;
                let public = key.public_key();
                if !public.starts_with('N') {
                    anyhow::bail!(
                        "the host seed must be an nkeys *server* seed (`SN...`); this one makes the key {public}"
                    );
                }
                key
            }
            None => nkeys::KeyPair::new_server(),
        };
        let host_id = key.public_key();
        // A kept identity keeps its name too, so an edge device reads the same after a reboot.
        let friendly_name = match seed {
            Some(_) => friendly_name(&mut rand::rngs::StdRng::seed_from_u64(fnv1a(&host_id))),
            None => friendly_name(&mut rand::thread_rng()),
        };
        Ok(Self {
            host_id,
            friendly_name,
        })
    }
}

/// A 64-bit FNV-1a hash: a stable seed for the name of a kept identity.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An `adjective-noun-number` name drawn from `rng`.
fn friendly_name(rng: &mut impl Rng) -> String {
    const ADJECTIVES: &[&str] = &[
        "amber", "bold", "brave", "calm", "clever", "crimson", "dusty", "eager", "fancy", "gentle",
        "golden", "hidden", "icy", "jolly", "lively", "misty", "noble", "quiet", "rapid", "silent",
        "snowy", "sunny", "swift", "tidy", "vivid", "wild", "young", "zesty",
    ];
    const NOUNS: &[&str] = &[
        "badger", "breeze", "brook", "cedar", "comet", "dune", "falcon", "fern", "fjord", "glade",
        "harbor", "heron", "lake", "lynx", "maple", "meadow", "otter", "pine", "raven", "reef",
        "ridge", "river", "sparrow", "summit", "thistle", "willow", "wren",
    ];
    let adjective = ADJECTIVES.choose(rng).copied().unwrap_or("quiet");
    let noun = NOUNS.choose(rng).copied().unwrap_or("otter");
    format!("{adjective}-{noun}-{}", rng.gen_range(1000..10000))
}

/// The `hostcore.*` labels every host carries, in wasmCloud's spelling.
pub fn builtin_labels() -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("hostcore.os".into(), std::env::consts::OS.into());
    labels.insert("hostcore.arch".into(), std::env::consts::ARCH.into());
    labels.insert("hostcore.osfamily".into(), std::env::consts::FAMILY.into());
    labels
}

/// An uptime as a person reads it: `2d 3h 4m 5s`, leading zero units left out.
pub fn human_uptime(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        (seconds % 86_400) / 3600,
        (seconds % 3600) / 60,
        seconds % 60,
    );
    let mut out = String::new();
    if d > 0 {
        out.push_str(&format!("{d}d "));
    }
    if d > 0 || h > 0 {
        out.push_str(&format!("{h}h "));
    }
    if d > 0 || h > 0 || m > 0 {
        out.push_str(&format!("{m}m "));
    }
    out.push_str(&format!("{s}s"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_is_a_server_key() {
        let id = HostIdentity::from_seed(None).unwrap();
        assert!(id.host_id.starts_with('N'));
        assert_eq!(id.friendly_name.split('-').count(), 3);
    }

    #[test]
    fn seed_gives_stable_id_and_user_seed_is_refused() {
        let kp = nkeys::KeyPair::new_server();
        let seed = kp.seed().unwrap();
        let id = HostIdentity::from_seed(Some(&seed)).unwrap();
        assert_eq!(id.host_id, kp.public_key());
        let again = HostIdentity::from_seed(Some(&seed)).unwrap();
        assert_eq!(
            again.friendly_name, id.friendly_name,
            "a kept key keeps its name"
        );
        let user = nkeys::KeyPair::new_user().seed().unwrap();
        let err = HostIdentity::from_seed(Some(&user)).unwrap_err();
        assert!(format!("{err:#}").contains("server"), "{err:#}");
        assert!(HostIdentity::from_seed(Some("garbage")).is_err());
    }

    #[test]
    fn uptime_reads_naturally() {
        assert_eq!(human_uptime(5), "5s");
        assert_eq!(human_uptime(65), "1m 5s");
        assert_eq!(human_uptime(90_061), "1d 1h 1m 1s");
    }
}

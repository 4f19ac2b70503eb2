//! The load-time check of a component's claims.
//!
//! Every component a host loads goes through [`ClaimsPolicy::admit`] before it is compiled:
//! embedded claims are always verified ([`super::claims::verify`]: signature, module hash,
//! expiry, not-before); with `require_signed` an unsigned component is refused; with a
//! non-empty `allowed_issuers` a component signed by any other account is refused.

use std::sync::Arc;

use super::claims::{self, ComponentClaims};

/// What a host accepts (`trellis host --require-signed --allowed-issuer A...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimsPolicy {
    /// Refuse components without embedded claims.
    pub require_signed: bool,
    /// Accept only components signed by these account keys (`A...`); empty accepts any
    /// issuer whose signature verifies.
    pub allowed_issuers: Vec<String>,
}

impl ClaimsPolicy {
    /// Checks the component `id` (bytes as loaded) now; returns its verified claims (`None`
    /// when unsigned and allowed), or an error saying which check failed and what to do.
    pub fn admit(&self, id: &str, wasm: &[u8]) -> anyhow::Result<Option<Arc<ComponentClaims>>> {
        self.admit_at(id, wasm, claims::now_secs())
    }

    /// [`Self::admit`] at the given time (seconds since the epoch).
    pub fn admit_at(
        &self,
        id: &str,
        wasm: &[u8],
        now: u64,
    ) -> anyhow::Result<Option<Arc<ComponentClaims>>> {
        let verified = claims::verify(wasm, now)
            .map_err(|e| anyhow::anyhow!("component {id} was refused: {e}"))?;
        match verified {
            None if self.require_signed => anyhow::bail!(
                "component {id} was refused: it is unsigned and this host runs with \
                 --require-signed; sign it with `trellis claims sign`"
            ),
            None => Ok(None),
            Some(c)
                if !self.allowed_issuers.is_empty()
                    && !self.allowed_issuers.contains(&c.issuer) =>
            {
                anyhow::bail!(
                    "component {id} was refused: it is signed by issuer {} which is not in \
                     --allowed-issuer; add it or re-sign the component with an allowed account",
                    c.issuer
                )
            }
            Some(c) => Ok(Some(Arc::new(c))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::claims::{sign, SignOptions};
    use nkeys::KeyPair;

    fn module() -> Vec<u8> {
        // Header plus an empty type section.
        b"\0asm\x01\0\0\0\x01\x01\x00".to_vec()
    }

    #[test]
    fn policy_refuses_unsigned_and_unknown_issuers() {
        let account = KeyPair::new_account();
        let (signed, _) = sign(
            &module(),
            &SignOptions::default(),
            &account,
            &KeyPair::new_module(),
        )
        .unwrap();
        let open = ClaimsPolicy::default();
        assert!(open.admit("c", &module()).unwrap().is_none());
        assert!(open.admit("c", &signed).unwrap().is_some());
        let strict = ClaimsPolicy {
            require_signed: true,
            allowed_issuers: vec![account.public_key()],
        };
        let err = strict.admit("c", &module()).unwrap_err().to_string();
        assert!(err.contains("unsigned"), "{err}");
        assert!(strict.admit("c", &signed).unwrap().is_some());
        let other = ClaimsPolicy {
            require_signed: true,
            allowed_issuers: vec![KeyPair::new_account().public_key()],
        };
        let err = other.admit("c", &signed).unwrap_err().to_string();
        assert!(err.contains("not in --allowed-issuer"), "{err}");
        assert!(err.contains(&account.public_key()), "{err}");
    }
}

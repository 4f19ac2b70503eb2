//! The direct path: calls between hosts over a TCP connection of their own, with NATS for
//! finding each other.
//!
//! A call through NATS crosses the nats-server process twice; on a small machine each crossing
//! is a wake-up of another process, and together they cost more than the rest of the call. So
//! once a caller knows where a target runs, it sends further calls straight to that host:
//!
//! 1. A caller that can call directly adds `trellis-peer: ask` to its NATS call. A host with a
//!    [`DirectListener`] answers with `trellis-peer: <address> <token> <machine> <sha256>` on
//!    the reply (the last is its TLS certificate's fingerprint).
//! 2. The caller's [`DirectPeers`] remembers that endpoint for the target id (up to
//!    [`MAX_ENDPOINTS`] per target, which spread the calls round-robin) and sends the next calls
//!    over one multiplexed connection per peer ([`frame`] has the bytes).
//! 3. Every [`PROBE_EVERY`]th call still goes through NATS, so the queue group keeps choosing
//!    replicas and new ones are learned.
//!
//! **Same semantics as NATS.** The call frame carries the same context (deadline, source,
//! link, traceparent, encoding) and the answer the same typed errors. Params over
//! [`MAX_DIRECT_PARAMS`] go through NATS, which chunks them; so does a call with a name or
//! context string over the 64 KiB a frame string holds.
//!
//! **Falling back.** A call goes through NATS instead, and the endpoint is forgotten, when the
//! connection cannot be made or the token is refused (the peer restarted, or the advertised
//! address does not reach it), or when the peer answers "not served" (the target stopped
//! there; nothing ran). If a connection breaks while a call is in flight, that call fails with
//! a transport error rather than being sent twice, since it may have run.
//!
//! **Trust.** Connections are TLS ([`tls`]): the caller accepts only the certificate whose
//! SHA-256 the NATS reply advertised, so a process that takes over the address (or sits
//! between the hosts) is refused before anything is sent. Inside, the caller presents the
//! listener's random token, which is handed out only in replies to lattice calls: whoever can
//! read those can already call the target over NATS. An advertisement without a fingerprint
//! (an older peer) is ignored, so such calls stay on NATS. A loopback advertisement is used
//! only by callers on the same machine (same machine id).

pub(crate) mod frame;
mod listener;
mod peers;
pub(crate) mod tls;

use std::fmt;
use std::sync::OnceLock;

pub use listener::DirectListener;
pub(crate) use listener::Registration;
pub use peers::DirectPeers;

/// Params larger than this go through NATS (chunked there) rather than directly.
pub const MAX_DIRECT_PARAMS: usize = 1024 * 1024;
/// Most endpoints a caller remembers per target.
pub const MAX_ENDPOINTS: usize = 16;
/// One call in this many to a target goes through NATS to learn about other replicas.
pub const PROBE_EVERY: u32 = 32;

/// Where a target can be called directly, as a NATS reply advertises it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Advertisement {
    /// `host:port` to dial.
    pub address: String,
    /// Secret the handshake must present.
    pub token: String,
    /// The advertising host's machine id.
    pub machine: String,
    /// Hex SHA-256 of the listener's TLS certificate, the only one the caller accepts.
    pub fingerprint: String,
}

impl Advertisement {
    /// Parses `<address> <token> <machine> <fingerprint>`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_ascii_whitespace();
        let advertisement = Self {
            address: parts.next()?.to_owned(),
            token: parts.next()?.to_owned(),
            machine: parts.next()?.to_owned(),
            fingerprint: parts.next()?.to_owned(),
        };
        let fits = advertisement.token.len() <= frame::MAX_TOKEN
            && advertisement.address.len() <= 256
            && tls::is_fingerprint(&advertisement.fingerprint)
            && parts.next().is_none();
        fits.then_some(advertisement)
    }

    /// Whether this caller can reach the address: loopback addresses only from the same
    /// machine.
    pub(crate) fn reachable_from_here(&self) -> bool {
        let loopback = match self.address.parse::<std::net::SocketAddr>() {
            Ok(address) => address.ip().is_loopback(),
            Err(_) => self.address.starts_with("localhost:"),
        };
        !loopback || self.machine == machine_id()
    }
}

impl fmt::Display for Advertisement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.address, self.token, self.machine, self.fingerprint
        )
    }
}

/// This machine's id (`/etc/machine-id`, else the kernel's boot id), to tell whether a
/// loopback address means the same machine. Read once.
pub(crate) fn machine_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        ["/etc/machine-id", "/proc/sys/kernel/random/boot_id"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .map(|id| id.trim().replace(char::is_whitespace, ""))
            .find(|id| !id.is_empty())
            .unwrap_or_else(|| "unknown".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisements_round_trip_and_junk_is_ignored() {
        let ad = Advertisement {
            address: "127.0.0.1:4000".into(),
            token: "abc".into(),
            machine: machine_id().into(),
            fingerprint: "0f".repeat(32),
        };
        assert_eq!(Advertisement::parse(&ad.to_string()), Some(ad.clone()));
        assert!(ad.reachable_from_here());
        assert_eq!(Advertisement::parse("127.0.0.1:4000 abc"), None);
        // Without a certificate fingerprint (an older peer), or with junk for one: not used.
        assert_eq!(Advertisement::parse("127.0.0.1:4000 abc m"), None);
        assert_eq!(Advertisement::parse("127.0.0.1:4000 abc m xyz"), None);
        assert_eq!(Advertisement::parse("a b c d"), None);
        assert_eq!(Advertisement::parse(""), None);
        let elsewhere = Advertisement {
            machine: "another-machine".into(),
            ..ad
        };
        assert!(
            !elsewhere.reachable_from_here(),
            "loopback of another machine"
        );
        let routable = Advertisement {
            address: "10.0.0.5:4000".into(),
            ..elsewhere
        };
        assert!(routable.reachable_from_here());
    }
}

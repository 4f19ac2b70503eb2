//! Where a lattice keeps its state in JetStream: which JetStream domain answers, and how many
//! replicas each bucket gets. Every Trellis process that opens a lattice bucket (hosts, the
//! reconciler, the key-value provider, the secrets backend) takes the same two options.
//!
//! A host on a NATS leaf node whose server has its own JetStream (an edge site) sets
//! `--js-domain` to the hub's domain, so links, configs and manifests are read from the hub
//! across the leaf connection rather than from the empty local JetStream. On a NATS cluster,
//! `--kv-replicas 3` keeps every bucket on three servers, so losing one loses nothing.

use anyhow::Context;
use async_nats::jetstream::{self, kv};

/// The largest replica count JetStream accepts.
pub const MAX_REPLICAS: usize = 5;

/// The JetStream domain and bucket replica count of a lattice (`--js-domain`,
/// `--kv-replicas`, and their `TRELLIS_*` variables).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct JetStreamPlacement {
    /// The JetStream domain that holds the lattice's state (links, configs, manifests), e.g. a
    /// hub's domain when this process runs on a leaf node with its own JetStream. Default: the
    /// JetStream of the server this process connects to.
    #[arg(long = "js-domain", env = "TRELLIS_JS_DOMAIN", value_name = "DOMAIN", value_parser = parse_domain)]
    pub js_domain: Option<String>,
    /// Replicas of each lattice bucket this process creates (1 on a single server; 3 on a NATS
    /// cluster, so losing a server loses nothing). Existing buckets keep theirs.
    #[arg(
        long = "kv-replicas",
        env = "TRELLIS_KV_REPLICAS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=MAX_REPLICAS as i64),
        value_name = "N"
    )]
    pub kv_replicas: u8,
}

impl Default for JetStreamPlacement {
    fn default() -> Self {
        Self {
            js_domain: None,
            kv_replicas: 1,
        }
    }
}

fn parse_domain(domain: &str) -> Result<String, String> {
    if crate::subjects::is_valid_token(domain) {
        Ok(domain.to_string())
    } else {
        Err(format!(
            "`{domain}` is not a valid JetStream domain: use letters, digits, `-` or `_` (no dots, spaces or wildcards)"
        ))
    }
}

impl JetStreamPlacement {
    /// The JetStream context that reaches the lattice's domain.
    pub fn context(&self, client: &async_nats::Client) -> jetstream::Context {
        match &self.js_domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain),
            None => jetstream::new(client.clone()),
        }
    }

    /// Where the state lives, for messages: `JetStream domain hub` or `the local JetStream`.
    pub fn describe(&self) -> String {
        match &self.js_domain {
            Some(domain) => format!("JetStream domain {domain}"),
            None => "the server's JetStream".to_string(),
        }
    }

    /// The `TRELLIS_*` variables that give a child process the same placement.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("TRELLIS_KV_REPLICAS", self.kv_replicas.to_string())];
        if let Some(domain) = &self.js_domain {
            env.push(("TRELLIS_JS_DOMAIN", domain.clone()));
        }
        env
    }

    /// The placement [`JetStreamPlacement::child_env`] gave this process (defaults for unset
    /// or unusable values: a child started by a host must not fail over a variable).
    pub fn from_env() -> Self {
        let js_domain = std::env::var("TRELLIS_JS_DOMAIN")
            .ok()
            .filter(|d| parse_domain(d).is_ok());
        let kv_replicas = std::env::var("TRELLIS_KV_REPLICAS")
            .ok()
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|n| (1..=MAX_REPLICAS as u8).contains(n))
            .unwrap_or(1);
        Self {
            js_domain,
            kv_replicas,
        }
    }

    /// Opens bucket `config.bucket`, creating it with this placement's replica count when it
    /// does not exist (another process creating it at the same moment is fine). Errors say
    /// where it looked and what to check.
    pub async fn open_or_create_kv(
        &self,
        js: &jetstream::Context,
        mut config: kv::Config,
    ) -> anyhow::Result<kv::Store> {
        let bucket = config.bucket.clone();
        if let Ok(store) = js.get_key_value(&bucket).await {
            return Ok(store);
        }
        config.num_replicas = usize::from(self.kv_replicas.max(1));
        let created = js.create_key_value(config).await;
        match created {
            Ok(store) => Ok(store),
            Err(create_err) => js.get_key_value(&bucket).await.with_context(|| {
                let hint = if self.kv_replicas > 1 {
                    format!(
                        " (--kv-replicas {} needs a NATS cluster of at least that many JetStream servers)",
                        self.kv_replicas
                    )
                } else {
                    String::new()
                };
                format!(
                    "cannot open or create the JetStream KV bucket {bucket} in {}: {create_err}{hint}. \
                     Is JetStream enabled there (`nats-server -js`), and is --js-domain right?",
                    self.describe()
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_subject_tokens() {
        assert_eq!(parse_domain("hub").as_deref(), Ok("hub"));
        assert!(parse_domain("hub.eu").is_err());
        assert!(parse_domain("a b").is_err());
        assert!(parse_domain("*").is_err());
        assert!(parse_domain("").is_err());
    }

    #[test]
    fn child_env_carries_domain_and_replicas() {
        let placement = JetStreamPlacement {
            js_domain: Some("hub".into()),
            kv_replicas: 3,
        };
        let env = placement.child_env();
        assert!(env.contains(&("TRELLIS_JS_DOMAIN", "hub".to_string())));
        assert!(env.contains(&("TRELLIS_KV_REPLICAS", "3".to_string())));
        assert_eq!(JetStreamPlacement::default().child_env().len(), 1);
    }
}

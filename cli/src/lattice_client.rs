//! The connection every operator command uses: NATS, the lattice's control subjects, and
//! errors that tell the user what to do next.

use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use trellis_protocol::ctl::{CtlResponse, Host, HostInventory, Link, LinkPage, PageRequest};
use trellis_protocol::nats::{redact_url, NatsAuth};
use trellis_protocol::subjects::CtlSubjects;

use crate::output::OutputFormat;

/// The NATS url used when neither a flag, the environment nor a running `trellis up` names one.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How long `host.ping` waits for more replies after the last one.
const PING_IDLE: Duration = Duration::from_millis(250);
/// The longest `host.ping` gathers replies.
const PING_MAX: Duration = Duration::from_secs(2);

/// Flags shared by every command that talks to a lattice. They may be given anywhere after
/// the subcommand name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// NATS server of the lattice [default: the one `trellis up` started, else nats://127.0.0.1:4222]
    #[arg(long, global = true, env = "TRELLIS_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
    /// Lattice name [default: the one `trellis up` started, else `default`]
    #[arg(long, global = true, env = "TRELLIS_LATTICE", value_name = "NAME")]
    pub lattice: Option<String>,
    /// NATS authentication and TLS [default: the CLI's key of a running `trellis up`]
    #[command(flatten)]
    pub nats_auth: Box<NatsAuth>,
    /// How long to wait for each answer, in milliseconds
    #[arg(
        long,
        global = true,
        env = "TRELLIS_TIMEOUT_MS",
        default_value_t = 5000,
        value_name = "MS"
    )]
    pub timeout_ms: u64,
    /// Output format of read commands
    #[arg(long, short = 'o', global = true, value_enum, default_value_t)]
    pub output: OutputFormat,
}

impl ConnectArgs {
    /// The NATS url and lattice to use: flags and environment first, then the lattice a running
    /// `trellis up` recorded, then the defaults.
    pub fn target(&self) -> (String, String) {
        let recorded = if self.nats_url.is_none() || self.lattice.is_none() {
            crate::local_lattice::running_state()
        } else {
            None
        };
        let nats_url = self
            .nats_url
            .clone()
            .or_else(|| recorded.as_ref().map(|s| s.nats_url.clone()))
            .unwrap_or_else(|| DEFAULT_NATS_URL.to_string());
        let lattice = self
            .lattice
            .clone()
            .or_else(|| recorded.as_ref().map(|s| s.lattice.clone()))
            .unwrap_or_else(|| trellis_protocol::subjects::DEFAULT_LATTICE.to_string());
        (nats_url, lattice)
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }

    /// The authentication to use for `nats_url`: the options given, else (when none is
    /// given and `nats_url` is the NATS a running secure `trellis up` started) the CLI's nkey
    /// that `trellis up` keeps in its data directory.
    pub fn auth_for(&self, nats_url: &str) -> anyhow::Result<NatsAuth> {
        if self.nats_auth.has_credentials() {
            return Ok(NatsAuth::clone(&self.nats_auth));
        }
        let Some(state) = crate::local_lattice::running_state() else {
            return Ok(NatsAuth::clone(&self.nats_auth));
        };
        match state.cli_seed_file {
            Some(file) if state.nats_url == nats_url => {
                let seed = crate::local_lattice::read_seed(&file)?;
                Ok(NatsAuth {
                    nkey_seed: Some(seed),
                    ..NatsAuth::clone(&self.nats_auth)
                })
            }
            _ => Ok(NatsAuth::clone(&self.nats_auth)),
        }
    }
}

/// A connection to one lattice.
#[derive(Debug, Clone)]
pub struct LatticeClient {
    nats: async_nats::Client,
    subjects: CtlSubjects,
    lattice: String,
    nats_url: String,
    timeout: Duration,
}

impl LatticeClient {
    /// Connects to the lattice named by `args`.
    pub async fn connect(args: &ConnectArgs) -> anyhow::Result<Self> {
        let (nats_url, lattice) = args.target();
        if !trellis_protocol::subjects::is_valid_token(&lattice) {
            bail!("invalid lattice name {lattice:?}: it may not be empty or contain '.', '*', '>' or spaces");
        }
        let auth = args.auth_for(&nats_url)?;
        let nats = connect_nats(&nats_url, &auth, args.timeout()).await?;
        Ok(Self {
            nats,
            subjects: CtlSubjects::new(&lattice),
            lattice,
            nats_url: redact_url(&nats_url),
            timeout: args.timeout(),
        })
    }

    /// The NATS client.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// The lattice name.
    pub fn lattice(&self) -> &str {
        &self.lattice
    }

    /// The NATS url connected to (any password in it replaced by `***`).
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// The control subjects of this lattice.
    pub fn subjects(&self) -> &CtlSubjects {
        &self.subjects
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `body` to `subject` and decodes the reply as JSON. `who` names the answering
    /// party in errors ("no host", "the reconciler").
    pub async fn request_json<B, R>(
        &self,
        subject: String,
        body: &B,
        who: Answerer,
    ) -> anyhow::Result<R>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = serde_json::to_vec(body).context("cannot encode the request")?;
        self.request_raw(subject, payload, who).await
    }

    /// Sends raw bytes to `subject` and decodes the reply as JSON.
    pub async fn request_raw<R: DeserializeOwned>(
        &self,
        subject: String,
        payload: Vec<u8>,
        who: Answerer,
    ) -> anyhow::Result<R> {
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(self.timeout));
        let reply = self
            .nats
            .send_request(subject.clone(), request)
            .await
            .map_err(|e| self.explain_request_error(&subject, e, who))?;
        serde_json::from_slice(&reply.payload).with_context(|| {
            format!(
                "unexpected reply on {subject}: {}",
                String::from_utf8_lossy(&reply.payload)
            )
        })
    }

    /// Sends a control-interface request and returns the payload of a successful reply, or
    /// the host's message as an error.
    pub async fn ctl<B, R>(&self, subject: String, body: &B) -> anyhow::Result<Option<R>>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned + Default,
    {
        let reply: CtlResponse<R> = self.request_json(subject, body, Answerer::Host).await?;
        if !reply.success {
            if reply.message.is_empty() {
                bail!("the host refused the request without saying why");
            }
            bail!("{}", reply.message);
        }
        Ok(reply.response)
    }

    /// Like [`Self::ctl`] for requests whose success carries only a message.
    pub async fn ctl_ack<B: Serialize + ?Sized>(
        &self,
        subject: String,
        body: &B,
    ) -> anyhow::Result<String> {
        let reply: CtlResponse<serde_json::Value> =
            self.request_json(subject, body, Answerer::Host).await?;
        if !reply.success {
            bail!("{}", reply.message);
        }
        Ok(reply.message)
    }

    /// Every link of the lattice. Asks page by page (a Trellis extension) so a lattice with
    /// more links than one NATS message carries is listed whole; a host that answers with the
    /// whole list at once (wasmCloud) works too.
    pub async fn links(&self) -> anyhow::Result<Vec<Link>> {
        let mut links = std::collections::BTreeMap::new();
        let mut offset = 0;
        loop {
            let request = PageRequest {
                offset: Some(offset),
                limit: None,
            };
            let reply: Option<serde_json::Value> =
                self.ctl(self.subjects.link_get(), &request).await?;
            let page = match reply {
                None => break,
                Some(list @ serde_json::Value::Array(_)) => {
                    let all: Vec<Link> = serde_json::from_value(list)
                        .context("the host answered link.get with an unreadable list")?;
                    return Ok(all);
                }
                Some(page) => serde_json::from_value::<LinkPage>(page)
                    .context("the host answered link.get with an unreadable page")?,
            };
            for link in page.links {
                links.insert(link.key(), link);
            }
            match page.next_offset {
                Some(next) if next > offset => offset = next,
                Some(next) => {
                    bail!("link.get answered a page at offset {offset} that points back to {next}")
                }
                None => break,
            }
        }
        Ok(links.into_values().collect())
    }

    /// Everything host `host_id` runs, page by page like [`Self::links`]; `None` when the host
    /// answered without an inventory.
    pub async fn inventory(&self, host_id: &str) -> anyhow::Result<Option<HostInventory>> {
        let mut whole: Option<HostInventory> = None;
        let mut offset = 0;
        loop {
            let request = PageRequest {
                offset: Some(offset),
                limit: None,
            };
            let Some(page) = self
                .ctl::<_, HostInventory>(self.subjects.host_get(host_id), &request)
                .await?
            else {
                break;
            };
            let next = page.next_offset;
            match whole.as_mut() {
                None => whole = Some(page),
                Some(inventory) => {
                    inventory.components.extend(page.components);
                    inventory.providers.extend(page.providers);
                }
            }
            match next {
                Some(next) if next > offset => offset = next,
                Some(next) => {
                    bail!("host.get answered a page at offset {offset} that points back to {next}")
                }
                None => break,
            }
        }
        Ok(whole.map(|mut inventory| {
            inventory.inventory_truncated = false;
            inventory.component_count = None;
            inventory.provider_count = None;
            inventory.next_offset = None;
            inventory
        }))
    }

    /// Every host that answers `host.ping` within a short window, sorted by friendly name.
    pub async fn ping_hosts(&self) -> anyhow::Result<Vec<Host>> {
        let replies: Vec<CtlResponse<Host>> = self
            .gather(self.subjects.host_ping(), &serde_json::json!({}))
            .await?;
        let mut hosts: Vec<Host> = Vec::new();
        for host in replies.into_iter().filter_map(|r| r.response) {
            if !host.id.is_empty() && !hosts.iter().any(|h| h.id == host.id) {
                hosts.push(host);
            }
        }
        hosts.sort_by(|a, b| a.friendly_name.cmp(&b.friendly_name).then(a.id.cmp(&b.id)));
        Ok(hosts)
    }

    /// Publishes `body` on `subject` and gathers every reply that parses as `R`, until no
    /// reply came for a short while (at most two seconds). Used for pings and auctions.
    pub async fn gather<B, R>(&self, subject: String, body: &B) -> anyhow::Result<Vec<R>>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let payload = serde_json::to_vec(body).context("cannot encode the request")?;
        let inbox = self.nats.new_inbox();
        let mut replies = self
            .nats
            .subscribe(inbox.clone())
            .await
            .context("cannot subscribe to the reply inbox")?;
        self.nats
            .publish_with_reply(subject.clone(), inbox, payload.into())
            .await
            .with_context(|| format!("cannot publish on {subject}"))?;
        self.nats.flush().await.context("cannot flush to NATS")?;
        let deadline = tokio::time::Instant::now() + PING_MAX;
        // The first reply may take a while on a busy host; later ones come close together.
        let mut wait = self.timeout.min(PING_MAX);
        let mut out = Vec::new();
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            match tokio::time::timeout(wait.min(deadline - now), replies.next()).await {
                Ok(Some(msg)) => {
                    // A reply that does not parse comes from something we do not understand;
                    // skip it rather than fail the whole listing.
                    if let Ok(reply) = serde_json::from_slice::<R>(&msg.payload) {
                        out.push(reply);
                    }
                    wait = PING_IDLE;
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Pings the lattice and fails with a hint when no host answers.
    pub async fn require_hosts(&self) -> anyhow::Result<Vec<Host>> {
        let hosts = self.ping_hosts().await?;
        if hosts.is_empty() {
            bail!(
                "no hosts in lattice {} at {}: is `trellis up` running?",
                self.lattice,
                self.nats_url
            );
        }
        Ok(hosts)
    }

    /// Finds the host a user named by id, unique id prefix or friendly name.
    pub async fn resolve_host(&self, query: &str) -> anyhow::Result<Host> {
        let hosts = self.require_hosts().await?;
        resolve_host(query, &hosts).cloned()
    }

    fn explain_request_error(
        &self,
        subject: &str,
        error: async_nats::RequestError,
        who: Answerer,
    ) -> anyhow::Error {
        use async_nats::RequestErrorKind;
        let hint = match who {
            Answerer::Host => "is `trellis up` running?".to_string(),
            Answerer::Reconciler => {
                "is `trellis up` (or `trellis wadm`) running for this lattice?".to_string()
            }
        };
        match error.kind() {
            RequestErrorKind::NoResponders => anyhow::anyhow!(
                "{} in lattice {} answered on {subject}: {hint}",
                who.nobody(),
                self.lattice
            ),
            RequestErrorKind::TimedOut => anyhow::anyhow!(
                "{} did not answer on {subject} within {} ms: {hint} (raise --timeout-ms if it is busy)",
                who.name(),
                self.timeout.as_millis()
            ),
            _ => anyhow::Error::new(error).context(format!("request on {subject} failed")),
        }
    }
}

/// Who is expected to answer a request, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answerer {
    /// A host of the lattice.
    Host,
    /// The reconciler (wadm).
    Reconciler,
}

impl Answerer {
    fn name(self) -> &'static str {
        match self {
            Answerer::Host => "the host",
            Answerer::Reconciler => "the reconciler",
        }
    }

    fn nobody(self) -> &'static str {
        match self {
            Answerer::Host => "no host",
            Answerer::Reconciler => "no reconciler",
        }
    }
}

/// Connects to NATS, turning a refused or unreachable server into a hint. Messages show
/// `url` without its password.
pub async fn connect_nats(
    url: &str,
    auth: &NatsAuth,
    timeout: Duration,
) -> anyhow::Result<async_nats::Client> {
    let (bare_url, options) = auth.connect_options(url).await?;
    let options = options
        .name("trellis-cli")
        .connection_timeout(timeout.min(Duration::from_secs(10)))
        .request_timeout(Some(timeout));
    options.connect(trellis_protocol::nats::server_list(&bare_url)).await.map_err(|e| {
        use async_nats::ConnectErrorKind;
        let shown = redact_url(url);
        match e.kind() {
            ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns => {
                anyhow::anyhow!(
                    "cannot reach NATS at {shown}: start a lattice with `trellis up` or pass --nats-url"
                )
            }
            ConnectErrorKind::ServerParse => {
                anyhow::anyhow!("invalid NATS url {shown:?}: expected e.g. nats://127.0.0.1:4222")
            }
            _ => trellis_protocol::nats::connect_error(url, e, ""),
        }
    })
}

/// Picks the host `query` names: an exact id or friendly name, else the one host whose id
/// starts with `query`. Errors list the candidates.
pub fn resolve_host<'a>(query: &str, hosts: &'a [Host]) -> anyhow::Result<&'a Host> {
    let query = query.trim();
    if query.is_empty() {
        bail!("empty host name: pass a host id, a unique id prefix or a friendly name (see `trellis get hosts`)");
    }
    if let Some(host) = hosts.iter().find(|h| h.id == query) {
        return Ok(host);
    }
    let by_name: Vec<&Host> = hosts.iter().filter(|h| h.friendly_name == query).collect();
    if by_name.len() == 1 {
        return Ok(by_name[0]);
    }
    let by_prefix: Vec<&Host> = hosts.iter().filter(|h| h.id.starts_with(query)).collect();
    match (by_prefix.len(), by_name.len()) {
        (1, 0) => Ok(by_prefix[0]),
        (0, 0) => bail!(
            "no host matches {query:?}; hosts in the lattice: {} (see `trellis get hosts`)",
            describe(hosts.iter())
        ),
        _ => bail!(
            "{query:?} matches several hosts: {}; give more of the id",
            describe(by_prefix.iter().chain(by_name.iter()).copied())
        ),
    }
}

fn describe<'a>(hosts: impl Iterator<Item = &'a Host>) -> String {
    let mut names: Vec<String> = hosts
        .map(|h| format!("{} ({})", h.friendly_name, short_id(&h.id)))
        .collect();
    names.dedup();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// The first 12 characters of an id, enough to tell hosts apart in messages.
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, name: &str) -> Host {
        Host {
            id: id.to_string(),
            friendly_name: name.to_string(),
            ..Default::default()
        }
    }

    fn hosts() -> Vec<Host> {
        vec![
            host("NABCDEF1", "brave-otter-1"),
            host("NABXYZ22", "calm-heron-2"),
            host("NQQQ", "NAB"),
        ]
    }

    #[test]
    fn exact_id_wins() {
        let hosts = hosts();
        assert_eq!(resolve_host("NABXYZ22", &hosts).unwrap().id, "NABXYZ22");
    }

    #[test]
    fn unique_prefix_resolves() {
        let hosts = hosts();
        assert_eq!(resolve_host("NABC", &hosts).unwrap().id, "NABCDEF1");
    }

    #[test]
    fn friendly_name_resolves() {
        let hosts = hosts();
        assert_eq!(resolve_host("calm-heron-2", &hosts).unwrap().id, "NABXYZ22");
    }

    #[test]
    fn ambiguous_prefix_is_an_error_naming_candidates() {
        let hosts = hosts();
        let err = resolve_host("NA", &hosts).unwrap_err().to_string();
        assert!(err.contains("several hosts"), "{err}");
        assert!(
            err.contains("brave-otter-1") && err.contains("calm-heron-2"),
            "{err}"
        );
    }

    #[test]
    fn exact_friendly_name_beats_id_prefix() {
        let hosts = hosts();
        assert_eq!(resolve_host("NAB", &hosts).unwrap().id, "NQQQ");
    }

    #[test]
    fn unknown_host_lists_what_exists() {
        let hosts = hosts();
        let err = resolve_host("zzz", &hosts).unwrap_err().to_string();
        assert!(err.contains("no host matches"), "{err}");
        assert!(err.contains("calm-heron-2"), "{err}");
        assert!(resolve_host("  ", &hosts).is_err());
    }

    #[test]
    fn short_id_cuts_long_ids_only() {
        assert_eq!(short_id("NABCDEFGHIJKLMNOP"), "NABCDEFGHIJK");
        assert_eq!(short_id("NAB"), "NAB");
    }
}

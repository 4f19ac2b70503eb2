//! The http-server provider's settings, read from its config (keys case-insensitive, as in
//! wasmCloud).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};

/// Listen address when neither the link nor the provider names one.
pub const DEFAULT_ADDRESS: &str = "0.0.0.0:8000";
/// Default largest request body accepted (10 MiB); larger ones get 413.
pub const DEFAULT_MAX_CONTENT_LEN: u64 = 10 * 1024 * 1024;
/// How long a forwarded request may wait for its response head when `timeout_ms` is unset.
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `header_read_timeout_ms`: how long a client may take to send a complete request
/// head (10 s).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `idle_timeout_ms`: how long a keep-alive connection may wait for its next request
/// (60 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `max_connections`: open connections per listener (10 000).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The environment variable that, set to `1` or `true`, turns off the co-location fast path.
pub const DISABLE_COLOCATION_ENV: &str = "TRELLIS_DISABLE_COLOCATION";

/// How requests find their component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// One listener per link, at the `address` of the link's source config.
    Address,
    /// One listener at `default_address`; the link's `path` selects the component.
    Path,
    /// One listener at `default_address`; the link's `host` is matched against a header.
    Host,
}

/// The provider-wide settings, read from the provider's config (keys case-insensitive):
///
/// - `routing_mode`: `address` (default), `path` or `host`.
/// - `default_address`: the listener of the path and host modes, and of links without an
///   `address` (default [`DEFAULT_ADDRESS`]).
/// - `header`: the header the host mode routes by (default `host`).
/// - `max_content_len`: largest request body in bytes, `K`/`M`/`G` suffixes allowed (default
///   10M). A larger body gets 413, whether its `Content-Length` says so or it is chunked; when
///   the component already answered, the response is cut off (the connection is closed
///   without a final chunk) so the client never takes it for complete.
/// - `timeout_ms`: deadline for the response head (default: the component's own limit; 60 s
///   over the lattice); past it 504.
/// - `header_read_timeout_ms`: how long a client may take to send a complete request head,
///   counted from the connection's accept or the first byte of a keep-alive request; the
///   connection is then closed without an answer (default 10 000; `0` turns it off).
/// - `idle_timeout_ms`: how long a keep-alive connection may sit idle between a response
///   and the first byte of its next request before it is closed (default 60 000; `0` turns it
///   off).
/// - `max_connections`: open connections per listener (default 10 000, at least 1). A
///   connection over the cap is answered `503` with `connection: close` at once, without
///   reading its request; connections already open are served as usual.
/// - `disable_keepalive`: close connections after each response.
/// - `disable_colocation`: always go over the lattice, even to a component on this host
///   (also the environment variable [`DISABLE_COLOCATION_ENV`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How requests are routed.
    pub routing_mode: RoutingMode,
    /// The listener of the path and host modes, and the fallback of the address mode.
    pub default_address: SocketAddr,
    /// The header the host mode matches (lower case).
    pub host_header: String,
    /// Largest accepted request body in bytes.
    pub max_content_len: u64,
    /// Deadline for the response head; `None` leaves it to the component's own limit.
    pub timeout: Option<Duration>,
    /// How long a client may take to send a request head; `None` waits forever.
    pub header_read_timeout: Option<Duration>,
    /// How long a keep-alive connection may wait for its next request; `None` waits forever.
    pub idle_timeout: Option<Duration>,
    /// Open connections allowed per listener.
    pub max_connections: usize,
    /// Whether connections are closed after each response.
    pub disable_keepalive: bool,
    /// Whether a component running on this host is called directly (no NATS hop).
    pub colocation: bool,
}

/// Looks `key` up ignoring ASCII case.
pub(crate) fn get_ci<'a>(config: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    config
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim())
}

/// True for `true`, `1`, `yes` and `on` (any case).
pub(crate) fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on"
    )
}

/// Parses a listen address (`0.0.0.0:8080`, `[::]:80`, `localhost:8080`, or a bare port).
pub fn parse_address(value: &str) -> anyhow::Result<SocketAddr> {
    let value = value.trim();
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Some(port) = value.strip_prefix("localhost:") {
        let port = port
            .parse::<u16>()
            .with_context(|| format!("`{value}` has an invalid port"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    bail!("`{value}` is not a listen address: use IP:PORT such as 0.0.0.0:8080")
}

impl Settings {
    /// Reads the settings from the provider's merged config.
    pub fn from_config(config: &HashMap<String, String>) -> anyhow::Result<Self> {
        let routing_mode = match get_ci(config, "routing_mode").map(str::to_ascii_lowercase) {
            None => RoutingMode::Address,
            Some(mode) => match mode.as_str() {
                "" | "address" => RoutingMode::Address,
                "path" => RoutingMode::Path,
                "host" => RoutingMode::Host,
                other => bail!(
                    "config `routing_mode` is `{other}`: use `address` (default), `path` or `host`"
                ),
            },
        };
        let default_address =
            parse_address(get_ci(config, "default_address").unwrap_or(DEFAULT_ADDRESS))
                .context("config `default_address`")?;
        let host_header = get_ci(config, "header")
            .filter(|h| !h.is_empty())
            .unwrap_or("host")
            .to_ascii_lowercase();
        http::HeaderName::from_bytes(host_header.as_bytes())
            .with_context(|| format!("config `header` is `{host_header}`, not a header name"))?;
        let max_content_len = match get_ci(config, "max_content_len") {
            None | Some("") => DEFAULT_MAX_CONTENT_LEN,
            Some(value) => parse_size(value).context("config `max_content_len`")?,
        };
        let timeout = millis(config, "timeout_ms", None)?;
        let header_read_timeout = millis(
            config,
            "header_read_timeout_ms",
            Some(DEFAULT_HEADER_READ_TIMEOUT),
        )?;
        let idle_timeout = millis(config, "idle_timeout_ms", Some(DEFAULT_IDLE_TIMEOUT))?;
        let max_connections = match get_ci(config, "max_connections") {
            None | Some("") => DEFAULT_MAX_CONNECTIONS,
            Some(value) => value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| {
                    format!(
                        "config `max_connections` is `{value}`: use a number of connections, at least 1"
                    )
                })?,
        };
        let disable_keepalive = get_ci(config, "disable_keepalive").is_some_and(is_truthy);
        let colocation_env = std::env::var(DISABLE_COLOCATION_ENV).is_ok_and(|v| is_truthy(&v));
        let colocation_config = get_ci(config, "disable_colocation").is_some_and(is_truthy);
        Ok(Self {
            routing_mode,
            default_address,
            host_header,
            max_content_len,
            timeout,
            header_read_timeout,
            idle_timeout,
            max_connections,
            disable_keepalive,
            colocation: !colocation_env && !colocation_config,
        })
    }
}

/// Reads a duration in milliseconds: `default` when unset or empty, `None` for `0`.
fn millis(
    config: &HashMap<String, String>,
    key: &str,
    default: Option<Duration>,
) -> anyhow::Result<Option<Duration>> {
    match get_ci(config, key) {
        None | Some("") => Ok(default),
        Some(value) => {
            let ms = value.parse::<u64>().with_context(|| {
                format!(
                    "config `{key}` is `{value}`: use a number of milliseconds (0 turns it off)"
                )
            })?;
            Ok(Some(Duration::from_millis(ms)).filter(|d| !d.is_zero()))
        }
    }
}

/// Parses a byte size: a number with an optional `K`, `M` or `G` suffix (binary multiples).
fn parse_size(value: &str) -> anyhow::Result<u64> {
    let value = value.trim();
    let upper = value.to_ascii_uppercase();
    let upper = upper.trim_end_matches('B').trim_end_matches('I');
    let (digits, multiplier) = match upper.chars().last() {
        Some('K') => (&upper[..upper.len() - 1], 1024),
        Some('M') => (&upper[..upper.len() - 1], 1024 * 1024),
        Some('G') => (&upper[..upper.len() - 1], 1024 * 1024 * 1024),
        _ => (upper, 1),
    };
    let number: u64 = digits
        .trim()
        .parse()
        .with_context(|| format!("`{value}` is not a size: use bytes or a K/M/G suffix"))?;
    number
        .checked_mul(multiplier)
        .with_context(|| format!("`{value}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let s = Settings::from_config(&HashMap::new()).unwrap();
        assert_eq!(s.routing_mode, RoutingMode::Address);
        assert_eq!(s.default_address, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(s.max_content_len, DEFAULT_MAX_CONTENT_LEN);
        assert_eq!(s.host_header, "host");
        assert!(s.timeout.is_none());
        assert_eq!(s.header_read_timeout, Some(DEFAULT_HEADER_READ_TIMEOUT));
        assert_eq!(s.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
        assert_eq!(s.max_connections, DEFAULT_MAX_CONNECTIONS);
    }

    #[test]
    fn connection_limits() {
        let s = Settings::from_config(&config(&[
            ("Header_Read_Timeout_Ms", "250"),
            ("idle_timeout_ms", "0"),
            ("MAX_CONNECTIONS", "2"),
        ]))
        .unwrap();
        assert_eq!(s.header_read_timeout, Some(Duration::from_millis(250)));
        assert_eq!(s.idle_timeout, None);
        assert_eq!(s.max_connections, 2);
        for (key, value) in [
            ("max_connections", "0"),
            ("max_connections", "many"),
            ("idle_timeout_ms", "1s"),
            ("header_read_timeout_ms", "-1"),
        ] {
            let e = Settings::from_config(&config(&[(key, value)])).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{e:#}");
        }
    }

    #[test]
    fn keys_are_case_insensitive() {
        let s = Settings::from_config(&config(&[
            ("ROUTING_MODE", "Path"),
            ("Default_Address", "127.0.0.1:9000"),
            ("max_content_len", "2M"),
            ("Timeout_Ms", "1500"),
        ]))
        .unwrap();
        assert_eq!(s.routing_mode, RoutingMode::Path);
        assert_eq!(s.default_address, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.max_content_len, 2 * 1024 * 1024);
        assert_eq!(s.timeout, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let e = Settings::from_config(&config(&[("routing_mode", "magic")])).unwrap_err();
        assert!(format!("{e:#}").contains("routing_mode"));
        let e = Settings::from_config(&config(&[("default_address", "nowhere")])).unwrap_err();
        assert!(format!("{e:#}").contains("default_address"));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_address("localhost:81").unwrap(),
            "127.0.0.1:81".parse().unwrap()
        );
        assert!(parse_address("[::1]:80").is_ok());
    }
}

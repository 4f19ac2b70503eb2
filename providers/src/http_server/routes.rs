//! Which component serves a request: the provider's links turned into listeners and route
//! tables, per routing mode.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use trellis_protocol::ctl::Link;

use super::settings::{get_ci, parse_address, RoutingMode, Settings};
use super::LatticeEnv;

/// A link's target as a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    /// The component that serves.
    pub target: String,
    /// The link name (for logs).
    pub link_name: String,
    /// Served the CGI way (`executor=wagi` in the link's config), see [`super::wagi`].
    pub wagi: bool,
}

/// How one listener picks the component for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteTable {
    /// Every request goes to one component (address mode).
    Single(Route),
    /// By path prefix, longest first (path mode).
    Paths(Vec<(String, Route)>),
    /// By a header's value without its port, lower case (host mode).
    Hosts {
        /// The header compared (lower case).
        header: String,
        /// Host to route.
        hosts: HashMap<String, Route>,
    },
}

/// Why no route matched, for the 404 message.
#[derive(Debug)]
pub(crate) struct NoRoute(pub String);

impl RouteTable {
    /// The route a request with `path` and `headers` follows.
    pub fn resolve(&self, path: &str, headers: &http::HeaderMap) -> Result<&Route, NoRoute> {
        match self {
            RouteTable::Single(route) => Ok(route),
            RouteTable::Paths(paths) => paths
                .iter()
                .find(|(prefix, _)| path_matches(prefix, path))
                .map(|(_, route)| route)
                .ok_or_else(|| {
                    NoRoute(format!(
                        "no component is linked for path {path} (linked paths: {})",
                        paths
                            .iter()
                            .map(|(p, _)| p.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }),
            RouteTable::Hosts { header, hosts } => {
                let value = headers
                    .get(header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(normalize_host)
                    .ok_or_else(|| {
                        NoRoute(format!("the request has no `{header}` header to route by"))
                    })?;
                hosts
                    .get(&value)
                    .ok_or_else(|| NoRoute(format!("no component is linked for host `{value}`")))
            }
        }
    }
}

fn path_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// `/api/` and `api` become `/api`; the root stays `/`.
fn normalize_path(path: &str) -> String {
    let trimmed = path.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

/// `Example.com:8080` becomes `example.com`.
fn normalize_host(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.starts_with('[') {
        // [::1]:80
        return host
            .split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
        _ => host,
    }
}

/// True for links that make this provider serve `wasi:http/incoming-handler`.
pub(crate) fn is_http_link(link: &Link, provider_id: &str) -> bool {
    link.source_id == provider_id
        && link.wit_namespace.eq_ignore_ascii_case("wasi")
        && link.wit_package.eq_ignore_ascii_case("http")
}

/// A link with its source config merged.
#[derive(Debug, Clone)]
pub(crate) struct LinkWithConfig {
    pub link: Link,
    pub config: HashMap<String, String>,
}

/// The provider's links with their source configs (read from KV; the cache when KV fails).
pub(crate) async fn http_links(env: &LatticeEnv, provider_id: &str) -> Vec<LinkWithConfig> {
    let links: Vec<Link> = env.store().with_links(|table| {
        table
            .from_source(provider_id)
            .filter(|l| is_http_link(l, provider_id))
            .cloned()
            .collect()
    });
    let mut out = Vec::with_capacity(links.len());
    for link in links {
        let config = match env.store().merged_config(&link.source_config).await {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(link = %link.name, target = %link.target, error = %format!("{error:#}"), "cannot read the link's source config; using the cached copy");
                let mut merged = HashMap::new();
                for name in &link.source_config {
                    merged.extend(env.store().cached_config(name).unwrap_or_default());
                }
                merged
            }
        };
        out.push(LinkWithConfig { link, config });
    }
    out
}

/// The listeners the links call for, with their route tables.
pub(crate) fn desired_listeners(
    links: &[LinkWithConfig],
    settings: &Settings,
) -> BTreeMap<SocketAddr, RouteTable> {
    let mut desired = BTreeMap::new();
    let route = |l: &LinkWithConfig| Route {
        target: l.link.target.clone(),
        link_name: l.link.name.clone(),
        wagi: super::wagi::is_wagi(&l.config),
    };
    match settings.routing_mode {
        RoutingMode::Address => {
            for l in links {
                let addr = match get_ci(&l.config, "address") {
                    None => settings.default_address,
                    Some(value) => match parse_address(value) {
                        Ok(addr) => addr,
                        Err(error) => {
                            tracing::warn!(link = %l.link.name, target = %l.link.target, %error, "ignoring a link with an invalid address");
                            continue;
                        }
                    },
                };
                if let Some(RouteTable::Single(existing)) = desired.get(&addr) {
                    tracing::warn!(%addr, serving = %existing.target, ignored = %l.link.target, "two links ask for the same address; the first one serves it");
                    continue;
                }
                desired.insert(addr, RouteTable::Single(route(l)));
            }
        }
        RoutingMode::Path => {
            let mut paths: Vec<(String, Route)> = Vec::new();
            for l in links {
                let Some(path) = get_ci(&l.config, "path") else {
                    tracing::warn!(link = %l.link.name, target = %l.link.target, "path routing: the link's source config has no `path`; ignoring it");
                    continue;
                };
                let path = normalize_path(path);
                if paths.iter().any(|(p, _)| *p == path) {
                    tracing::warn!(%path, ignored = %l.link.target, "two links ask for the same path; the first one serves it");
                    continue;
                }
                paths.push((path, route(l)));
            }
            paths.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
            if !paths.is_empty() {
                desired.insert(settings.default_address, RouteTable::Paths(paths));
            }
        }
        RoutingMode::Host => {
            let mut hosts = HashMap::new();
            for l in links {
                let Some(host) = get_ci(&l.config, "host") else {
                    tracing::warn!(link = %l.link.name, target = %l.link.target, "host routing: the link's source config has no `host`; ignoring it");
                    continue;
                };
                hosts
                    .entry(normalize_host(host))
                    .or_insert_with(|| route(l));
            }
            if !hosts.is_empty() {
                desired.insert(
                    settings.default_address,
                    RouteTable::Hosts {
                        header: settings.host_header.clone(),
                        hosts,
                    },
                );
            }
        }
    }
    desired
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(target: &str) -> Route {
        Route {
            target: target.into(),
            link_name: "default".into(),
            wagi: false,
        }
    }

    #[test]
    fn paths_match_on_segment_boundaries_longest_first() {
        let table = RouteTable::Paths(vec![
            ("/api/v2".into(), route("v2")),
            ("/api".into(), route("api")),
        ]);
        let h = http::HeaderMap::new();
        assert_eq!(table.resolve("/api/v2/x", &h).unwrap().target, "v2");
        assert_eq!(table.resolve("/api", &h).unwrap().target, "api");
        assert_eq!(table.resolve("/api/v3", &h).unwrap().target, "api");
        assert!(table.resolve("/apix", &h).is_err());
    }

    #[test]
    fn hosts_ignore_case_and_port() {
        let table = RouteTable::Hosts {
            header: "host".into(),
            hosts: HashMap::from([("example.com".to_string(), route("ex"))]),
        };
        let mut h = http::HeaderMap::new();
        h.insert("host", http::HeaderValue::from_static("Example.COM:8080"));
        assert_eq!(table.resolve("/", &h).unwrap().target, "ex");
        h.insert("host", http::HeaderValue::from_static("other.com"));
        assert!(table.resolve("/", &h).is_err());
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize_path("api/"), "/api");
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }
}

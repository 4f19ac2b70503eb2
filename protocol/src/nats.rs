//! How every Trellis process connects to NATS (feature `nats`): one set of authentication and
//! TLS options, the same flags and `TRELLIS_NATS_*` variables everywhere, one function that
//! turns them into [`async_nats::ConnectOptions`], and errors and URLs that never show a
//! secret.
//!
//! A host hands its own options to the provider processes it starts through
//! [`NatsAuth::child_env`] (environment variables of the child, never its command line); the
//! child reads them back with [`NatsAuth::from_env`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};

/// A `.creds` file (user JWT and nkey seed).
pub const ENV_CREDS: &str = "TRELLIS_NATS_CREDS";
/// An nkey user seed (`SU...`).
pub const ENV_SEED: &str = "TRELLIS_NATS_SEED";
/// A user JWT, used with [`ENV_SEED`].
pub const ENV_JWT: &str = "TRELLIS_NATS_JWT";
/// A user name, used with [`ENV_PASSWORD`].
pub const ENV_USER: &str = "TRELLIS_NATS_USER";
/// A password, used with [`ENV_USER`].
pub const ENV_PASSWORD: &str = "TRELLIS_NATS_PASSWORD";
/// An authentication token.
pub const ENV_TOKEN: &str = "TRELLIS_NATS_TOKEN";
/// A PEM file of CA certificates to trust for TLS.
pub const ENV_TLS_CA: &str = "TRELLIS_NATS_TLS_CA";
/// The older name of [`ENV_TLS_CA`], still read.
pub const ENV_TLS_CA_LEGACY: &str = "TRELLIS_TLS_CA";
/// A PEM client certificate for TLS.
pub const ENV_TLS_CERT: &str = "TRELLIS_NATS_TLS_CERT";
/// The PEM key of [`ENV_TLS_CERT`].
pub const ENV_TLS_KEY: &str = "TRELLIS_NATS_TLS_KEY";

/// Every variable [`NatsAuth`] reads: a parent clears them all on a child before setting the
/// child's own, so an inherited option never mixes with the ones it hands down.
pub const ENV_VARS: [&str; 10] = [
    ENV_CREDS,
    ENV_SEED,
    ENV_JWT,
    ENV_USER,
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_TLS_CA,
    ENV_TLS_CA_LEGACY,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
];

/// How to authenticate to NATS and what TLS to use. The same flags (all `global`, so they
/// may follow any subcommand) and variables in every Trellis process. At most one way to
/// authenticate may be given: a creds file, an nkey seed (with a JWT or alone), a user and
/// password, a token, or a user and password in the URL (`nats://user:pass@host:4222`).
#[derive(Clone, Default, PartialEq, Eq, clap::Args)]
#[group(skip)]
pub struct NatsAuth {
    /// NATS credentials file (a user JWT and its nkey seed)
    #[arg(
        long = "nats-creds",
        global = true,
        env = "TRELLIS_NATS_CREDS",
        value_name = "FILE"
    )]
    pub creds_file: Option<PathBuf>,
    /// NATS nkey user seed (`SU...`); prefer the variable, flags show in `ps`
    #[arg(
        long = "nats-seed",
        global = true,
        env = "TRELLIS_NATS_SEED",
        hide_env_values = true,
        value_name = "SEED"
    )]
    pub nkey_seed: Option<String>,
    /// NATS user JWT, used together with --nats-seed
    #[arg(
        long = "nats-jwt",
        global = true,
        env = "TRELLIS_NATS_JWT",
        hide_env_values = true,
        value_name = "JWT"
    )]
    pub jwt: Option<String>,
    /// NATS user name, used with --nats-password (a user:password in the URL works too)
    #[arg(
        long = "nats-user",
        global = true,
        env = "TRELLIS_NATS_USER",
        value_name = "USER"
    )]
    pub user: Option<String>,
    /// NATS password; prefer the variable, flags show in `ps`
    #[arg(
        long = "nats-password",
        global = true,
        env = "TRELLIS_NATS_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,
    /// NATS authentication token; prefer the variable, flags show in `ps`
    #[arg(
        long = "nats-token",
        global = true,
        env = "TRELLIS_NATS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// PEM file of CA certificates trusted for TLS to NATS (turns TLS on) [also TRELLIS_TLS_CA]
    #[arg(
        long = "nats-tls-ca",
        alias = "tls-ca",
        global = true,
        env = "TRELLIS_NATS_TLS_CA",
        value_name = "PEM"
    )]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for TLS to NATS, with --nats-tls-key
    #[arg(
        long = "nats-tls-cert",
        global = true,
        env = "TRELLIS_NATS_TLS_CERT",
        value_name = "PEM"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --nats-tls-cert
    #[arg(
        long = "nats-tls-key",
        global = true,
        env = "TRELLIS_NATS_TLS_KEY",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("nkey_seed", &secret(&self.nkey_seed))
            .field("jwt", &secret(&self.jwt))
            .field("user", &self.user)
            .field("password", &secret(&self.password))
            .field("token", &secret(&self.token))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// The one way to authenticate that the options name.
enum Method {
    Anonymous,
    Creds(PathBuf),
    Jwt(String, String),
    Seed(String),
    UserPassword(String, String),
    Token(String),
}

impl NatsAuth {
    /// The options the `TRELLIS_NATS_*` variables give (empty ones are ignored).
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let path = |name: &str| get(name).map(PathBuf::from);
        Self {
            creds_file: path(ENV_CREDS),
            nkey_seed: get(ENV_SEED),
            jwt: get(ENV_JWT),
            user: get(ENV_USER),
            password: get(ENV_PASSWORD),
            token: get(ENV_TOKEN),
            tls_ca: path(ENV_TLS_CA).or_else(|| path(ENV_TLS_CA_LEGACY)),
            tls_cert: path(ENV_TLS_CERT),
            tls_key: path(ENV_TLS_KEY),
        }
    }

    /// True when some way to authenticate is given (TLS settings aside).
    pub fn has_credentials(&self) -> bool {
        self.creds_file.is_some()
            || self.nkey_seed.is_some()
            || self.jwt.is_some()
            || self.user.is_some()
            || self.password.is_some()
            || self.token.is_some()
    }

    /// The variables that give a child process these same options, with the user and
    /// password of `url` (if any) as [`ENV_USER`] and [`ENV_PASSWORD`] (or a lone user as
    /// [`ENV_TOKEN`]), so the child can be handed [`strip_url_credentials`]'s URL. Set them on the
    /// child's environment after removing every name in [`ENV_VARS`]; never put them on a
    /// command line.
    pub fn child_env(&self, url: &str) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        let mut put = |name: &'static str, value: Option<String>| {
            if let Some(value) = value {
                env.push((name, value));
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| absolute(p).display().to_string());
        put(ENV_CREDS, path(&self.creds_file));
        put(ENV_SEED, self.nkey_seed.clone());
        put(ENV_JWT, self.jwt.clone());
        put(ENV_TLS_CA, path(&self.effective_tls_ca()));
        put(ENV_TLS_CERT, path(&self.tls_cert));
        put(ENV_TLS_KEY, path(&self.tls_key));
        let (_, from_url) = split_userinfo(url);
        match (&self.user, &self.password, &self.token, from_url) {
            (None, None, None, Some(UrlAuth::UserPassword(user, password))) => {
                put(ENV_USER, Some(user));
                put(ENV_PASSWORD, Some(password));
            }
            (None, None, None, Some(UrlAuth::Token(token))) => put(ENV_TOKEN, Some(token)),
            _ => {
                put(ENV_USER, self.user.clone());
                put(ENV_PASSWORD, self.password.clone());
                put(ENV_TOKEN, self.token.clone());
            }
        }
        env
    }

    fn effective_tls_ca(&self) -> Option<PathBuf> {
        self.tls_ca.clone().or_else(|| {
            std::env::var_os(ENV_TLS_CA_LEGACY)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    fn method(&self, url_auth: Option<UrlAuth>) -> anyhow::Result<Method> {
        let mut given = Vec::new();
        if self.creds_file.is_some() {
            given.push("a creds file (--nats-creds)");
        }
        if self.nkey_seed.is_some() {
            given.push("an nkey seed (--nats-seed)");
        }
        if self.user.is_some() || self.password.is_some() {
            given.push("a user and password (--nats-user/--nats-password)");
        }
        if self.token.is_some() {
            given.push("a token (--nats-token)");
        }
        if given.len() > 1 {
            bail!(
                "NATS options name several ways to authenticate ({}): give only one",
                given.join(", ")
            );
        }
        if self.jwt.is_some() && self.nkey_seed.is_none() {
            bail!("--nats-jwt (TRELLIS_NATS_JWT) needs the user's seed in --nats-seed (TRELLIS_NATS_SEED)");
        }
        if let Some(path) = &self.creds_file {
            return Ok(Method::Creds(path.clone()));
        }
        if let Some(seed) = &self.nkey_seed {
            let seed = seed.trim().to_string();
            nkeys::KeyPair::from_seed(&seed).context(
                "the NATS nkey seed (--nats-seed / TRELLIS_NATS_SEED) is not a valid nkeys seed (expected `SU...`)",
            )?;
            return Ok(match &self.jwt {
                Some(jwt) => Method::Jwt(jwt.trim().to_string(), seed),
                None => Method::Seed(seed),
            });
        }
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                return Ok(Method::UserPassword(user.clone(), password.clone()))
            }
            (Some(_), None) | (None, Some(_)) => bail!(
                "--nats-user and --nats-password (TRELLIS_NATS_USER, TRELLIS_NATS_PASSWORD) go together"
            ),
            (None, None) => {}
        }
        if let Some(token) = &self.token {
            return Ok(Method::Token(token.clone()));
        }
        Ok(match url_auth {
            Some(UrlAuth::UserPassword(user, password)) => Method::UserPassword(user, password),
            Some(UrlAuth::Token(token)) => Method::Token(token),
            None => Method::Anonymous,
        })
    }

    /// The URL to connect to (without any user or password it carried) and the connect
    /// options these settings give: authentication, and TLS when a CA or client certificate
    /// is named. Callers add their own name, timeouts and callbacks.
    pub async fn connect_options(
        &self,
        url: &str,
    ) -> anyhow::Result<(String, async_nats::ConnectOptions)> {
        let (bare_url, url_auth) = split_userinfo(url);
        let mut options = async_nats::ConnectOptions::new();
        options = match self.method(url_auth)? {
            Method::Anonymous => options,
            Method::Creds(path) => {
                must_exist(&path, "NATS credentials file (--nats-creds)")?;
                options.credentials_file(&path).await.with_context(|| {
                    format!("cannot read the NATS credentials file {}", path.display())
                })?
            }
            Method::Jwt(jwt, seed) => {
                let key = Arc::new(
                    nkeys::KeyPair::from_seed(&seed)
                        .context("the NATS nkey seed is not a valid nkeys seed")?,
                );
                options.jwt(jwt, move |nonce| {
                    let key = key.clone();
                    async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
                })
            }
            Method::Seed(seed) => options.nkey(seed),
            Method::UserPassword(user, password) => options.user_and_password(user, password),
            Method::Token(token) => options.token(token),
        };
        if let Some(ca) = self.effective_tls_ca() {
            must_exist(&ca, "TLS CA file (--nats-tls-ca)")?;
            options = options.add_root_certificates(ca).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                must_exist(cert, "TLS client certificate (--nats-tls-cert)")?;
                must_exist(key, "TLS client key (--nats-tls-key)")?;
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => bail!(
                "--nats-tls-cert and --nats-tls-key (TRELLIS_NATS_TLS_CERT, TRELLIS_NATS_TLS_KEY) go together"
            ),
        }
        Ok((bare_url, options))
    }
}

fn must_exist(path: &Path, what: &str) -> anyhow::Result<()> {
    if !path.is_file() {
        bail!("the {what} {} does not exist", path.display());
    }
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Credentials found in a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// The user-info part (`user:pass@`) of one server URL: its byte range, including the `@`.
fn userinfo_range(server: &str) -> Option<(usize, usize)> {
    let start = server.find("://").map_or(0, |i| i + 3);
    let authority_end = server[start..]
        .find(['/', '?', '#'])
        .map_or(server.len(), |i| start + i);
    let at = server[start..authority_end].rfind('@')? + start;
    Some((start, at + 1))
}

/// Splits credentials off `url` (a server URL or a comma-separated list): the URL without
/// them, and the first credentials found.
fn split_userinfo(url: &str) -> (String, Option<UrlAuth>) {
    let mut found = None;
    let servers: Vec<String> = url
        .split(',')
        .map(|server| match userinfo_range(server) {
            Some((start, end)) => {
                if found.is_none() {
                    let info = &server[start..end - 1];
                    let decode = |s: &str| {
                        percent_encoding::percent_decode_str(s)
                            .decode_utf8_lossy()
                            .into_owned()
                    };
                    found = Some(match info.split_once(':') {
                        Some((user, password)) => {
                            UrlAuth::UserPassword(decode(user), decode(password))
                        }
                        None => UrlAuth::Token(decode(info)),
                    });
                }
                format!("{}{}", &server[..start], &server[end..])
            }
            None => server.to_string(),
        })
        .collect();
    (servers.join(","), found)
}

/// `url` without any credentials in it: what a child is handed along with
/// [`NatsAuth::child_env`].
pub fn strip_url_credentials(url: &str) -> String {
    split_userinfo(url).0
}

/// The servers of a NATS URL that may list several, comma-separated
/// (`nats://a:4222,nats://b:4222`): what to hand the client so it tries each in turn and fails
/// over between them (a single server URL gives one).
pub fn server_list(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .collect()
}

/// `url` fit to print or log: a password becomes `***` (`nats://alice:***@host:4222`) and
/// so does a token (`nats://***@host:4222`).
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| match userinfo_range(server) {
            Some((start, end)) => {
                let info = &server[start..end - 1];
                let shown = match info.split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => "***".to_string(),
                };
                format!("{}{shown}@{}", &server[..start], &server[end..])
            }
            None => server.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// True when the server refused the credentials (or there were none and it wants some).
pub fn is_auth_error(err: &async_nats::ConnectError) -> bool {
    matches!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication
    )
}

/// The message for a connection that failed because of credentials or TLS, naming the
/// options that fix it; `None` for other failures (unreachable, bad URL...), which each
/// caller explains in its own words. `url` is redacted here.
pub fn explain_connect_error(url: &str, err: &async_nats::ConnectError) -> Option<anyhow::Error> {
    let url = redact_url(url);
    if is_auth_error(err) {
        return Some(anyhow::anyhow!(
            "NATS refused the credentials for {url}: pass --nats-creds, --nats-seed, \
             --nats-user/--nats-password or --nats-token (or TRELLIS_NATS_CREDS, \
             TRELLIS_NATS_SEED, TRELLIS_NATS_USER/TRELLIS_NATS_PASSWORD, TRELLIS_NATS_TOKEN)"
        ));
    }
    if err.kind() == async_nats::ConnectErrorKind::Tls {
        return Some(anyhow::anyhow!(
            "TLS with NATS at {url} failed ({err}): check --nats-tls-ca, --nats-tls-cert and \
             --nats-tls-key (or TRELLIS_NATS_TLS_CA, TRELLIS_NATS_TLS_CERT, TRELLIS_NATS_TLS_KEY)"
        ));
    }
    None
}

/// Wraps any connection failure: [`explain_connect_error`]'s message when it has one, else
/// `cannot connect to NATS at <redacted url>` with `hint` appended.
pub fn connect_error(url: &str, err: async_nats::ConnectError, hint: &str) -> anyhow::Error {
    match explain_connect_error(url, &err) {
        Some(explained) => explained,
        None => anyhow::Error::new(err).context(format!(
            "cannot connect to NATS at {}{hint}",
            redact_url(url)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_split_on_commas() {
        assert_eq!(server_list("nats://a:4222"), vec!["nats://a:4222"]);
        assert_eq!(
            server_list("nats://a:4222, nats://b:4222,"),
            vec!["nats://a:4222", "nats://b:4222"]
        );
    }

    #[test]
    fn urls_lose_passwords_when_shown() {
        assert_eq!(
            redact_url("nats://alice:s3cret@127.0.0.1:4222"),
            "nats://alice:***@127.0.0.1:4222"
        );
        assert_eq!(redact_url("tls://tok@h:1/x"), "tls://***@h:1/x");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(
            redact_url("nats://a:b@h1:1,nats://h2:2"),
            "nats://a:***@h1:1,nats://h2:2"
        );
        assert_eq!(redact_url("a:b@h:1"), "a:***@h:1");
    }

    #[test]
    fn credentials_in_the_url_are_split_off_and_decoded() {
        let (bare, auth) = split_userinfo("nats://al%40ice:p%3Ass@127.0.0.1:4222");
        assert_eq!(bare, "nats://127.0.0.1:4222");
        assert_eq!(
            auth,
            Some(UrlAuth::UserPassword("al@ice".into(), "p:ss".into()))
        );
        let (bare, auth) = split_userinfo("nats://tok@h:1");
        assert_eq!(bare, "nats://h:1");
        assert_eq!(auth, Some(UrlAuth::Token("tok".into())));
        assert_eq!(split_userinfo("nats://h:1").1, None);
    }

    #[test]
    fn child_env_carries_url_credentials_and_no_unset_option() {
        let auth = NatsAuth::default();
        let env = auth.child_env("nats://u:p@h:1");
        assert_eq!(
            env,
            vec![(ENV_USER, "u".to_string()), (ENV_PASSWORD, "p".to_string())]
        );
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let auth = NatsAuth {
            nkey_seed: Some(seed.clone()),
            ..Default::default()
        };
        assert_eq!(auth.child_env("nats://h:1"), vec![(ENV_SEED, seed)]);
        let back = NatsAuth::from_lookup(|name| {
            auth.child_env("nats://h:1")
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
        });
        assert_eq!(back, auth);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let auth = NatsAuth {
            password: Some("hunter2".into()),
            nkey_seed: Some("SUAXXXX".into()),
            user: Some("bob".into()),
            ..Default::default()
        };
        let text = format!("{auth:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("SUAXXXX"),
            "{text}"
        );
        assert!(text.contains("bob"));
    }

    #[tokio::test]
    async fn conflicting_or_incomplete_options_are_refused() {
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let both = NatsAuth {
            nkey_seed: Some(seed),
            user: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        let err = both.connect_options("nats://h:1").await.err().unwrap();
        assert!(err.to_string().contains("only one"), "{err}");
        let half = NatsAuth {
            user: Some("u".into()),
            ..Default::default()
        };
        assert!(half.connect_options("nats://h:1").await.is_err());
        let bad_seed = NatsAuth {
            nkey_seed: Some("nope".into()),
            ..Default::default()
        };
        let err = bad_seed.connect_options("nats://h:1").await.err().unwrap();
        assert!(!err.to_string().contains("nope"), "{err}");
        let (url, _) = NatsAuth::default()
            .connect_options("nats://u:p@h:1")
            .await
            .unwrap();
        assert_eq!(url, "nats://h:1");
    }
}

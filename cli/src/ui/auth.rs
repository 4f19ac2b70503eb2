//! Who may use the dashboard: loopback clients naming a loopback host, or anyone holding the
//! login token; and the CSRF check on every mutating request.

use hyper::header::{HeaderValue, AUTHORIZATION, COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use hyper::{Request, Response, StatusCode};

use super::{build, error_response, full, Body};

/// The cookie the login sets.
const COOKIE_NAME: &str = "trellis_ui_token";
/// The header every POST must carry (a cross-site page cannot add it without a CORS preflight,
/// which this server never grants).
pub const CSRF_HEADER: &str = "x-trellis-ui";

/// How requests are admitted.
#[derive(Debug, Clone)]
pub enum Access {
    /// Listening on loopback: no token, but the `Host` header must name a loopback address
    /// (a DNS-rebinding page on another name is refused).
    Loopback,
    /// Listening elsewhere: every request needs this token (cookie or bearer).
    Token(String),
}

impl Access {
    /// Admission by `token`.
    pub fn with_token(token: String) -> Self {
        Access::Token(token)
    }

    /// The login token, when one is required.
    pub fn token(&self) -> Option<&str> {
        match self {
            Access::Loopback => None,
            Access::Token(token) => Some(token),
        }
    }

    /// Refuses a loopback request whose `Host` is not a loopback name.
    #[allow(clippy::result_large_err)]
    pub fn check_host<B>(&self, request: &Request<B>) -> Result<(), Response<Body>> {
        if matches!(self, Access::Token(_)) {
            return Ok(());
        }
        let host = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if is_loopback_host(host) {
            Ok(())
        } else {
            Err(error_response(
                StatusCode::MISDIRECTED_REQUEST,
                "this dashboard answers only to 127.0.0.1, [::1] or localhost",
            ))
        }
    }

    /// `GET /login?token=T`: sets the login cookie when `T` is right and goes to the page.
    pub fn login<B>(&self, request: &Request<B>) -> Response<Body> {
        let Access::Token(expected) = self else {
            return redirect_home(None);
        };
        let given = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            redirect_home(Some(expected))
        } else {
            error_response(StatusCode::UNAUTHORIZED, "wrong or missing login token")
        }
    }

    /// Refuses a request without the token, when one is required.
    #[allow(clippy::result_large_err)]
    pub fn check_login<B>(&self, request: &Request<B>) -> Result<(), Response<Body>> {
        let Access::Token(expected) = self else {
            return Ok(());
        };
        let headers = request.headers();
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                c.trim()
                    .strip_prefix(&format!("{COOKIE_NAME}="))
                    .map(str::to_string)
            });
        let ok = bearer
            .map(str::to_string)
            .into_iter()
            .chain(cookie)
            .any(|given| constant_time_eq(given.as_bytes(), expected.as_bytes()));
        if ok {
            Ok(())
        } else {
            Err(error_response(
                StatusCode::UNAUTHORIZED,
                "log in first: open the URL with ?token= that `trellis ui` printed at start",
            ))
        }
    }
}

/// Refuses a POST without the dashboard's header, or from another origin.
#[allow(clippy::result_large_err)]
pub fn check_csrf<B>(request: &Request<B>) -> Result<(), Response<Body>> {
    let headers = request.headers();
    if headers.get(CSRF_HEADER).is_none() {
        return Err(error_response(
            StatusCode::FORBIDDEN,
            "missing the x-trellis-ui header: actions are accepted from the dashboard page only",
        ));
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin = origin.to_str().unwrap_or("");
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Err(error_response(
                StatusCode::FORBIDDEN,
                "cross-origin request refused",
            ));
        }
    }
    Ok(())
}

/// A 303 to `/`, setting the login cookie when given a token.
fn redirect_home(token: Option<&str>) -> Response<Body> {
    let mut response = build(StatusCode::SEE_OTHER, "text/plain", full("logged in"));
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/"));
    if let Some(token) = token {
        let cookie = format!("{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/");
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(SET_COOKIE, value);
        }
    }
    response
}

/// True when `host` (a `Host` header: name or address, maybe a port) is a loopback name.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1]:port
        match rest.split_once(']') {
            Some((inside, _)) => inside,
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(super::is_loopback)
}

/// A fresh login token: 32 random bytes as hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference, so timing tells nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], uri: &str) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn loopback_mode_refuses_other_host_names() {
        let access = Access::Loopback;
        for ok in [
            "127.0.0.1:3030",
            "localhost:3030",
            "[::1]:3030",
            "127.0.0.2",
        ] {
            assert!(
                access.check_host(&request(&[("host", ok)], "/")).is_ok(),
                "{ok}"
            );
        }
        for bad in ["evil.example:3030", "10.0.0.1:3030", "", "[::1"] {
            assert!(
                access.check_host(&request(&[("host", bad)], "/")).is_err(),
                "{bad}"
            );
        }
        assert!(access.check_login(&request(&[], "/")).is_ok());
    }

    #[test]
    fn token_mode_needs_the_token_by_cookie_or_bearer() {
        let access = Access::with_token("abc123".into());
        assert!(access.check_login(&request(&[], "/")).is_err());
        assert!(access
            .check_login(&request(&[("cookie", "x=1; trellis_ui_token=abc123")], "/"))
            .is_ok());
        assert!(access
            .check_login(&request(&[("authorization", "Bearer abc123")], "/"))
            .is_ok());
        assert!(access
            .check_login(&request(&[("authorization", "Bearer abc124")], "/"))
            .is_err());
        let login = access.login(&request(&[], "/login?token=abc123"));
        assert_eq!(login.status(), StatusCode::SEE_OTHER);
        let cookie = login.headers().get(SET_COOKIE).expect("cookie");
        assert!(cookie.to_str().unwrap().contains("HttpOnly"));
        let wrong = access.login(&request(&[], "/login?token=nope"));
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn posts_need_the_header_and_the_same_origin() {
        assert!(check_csrf(&request(&[("host", "127.0.0.1:1")], "/")).is_err());
        assert!(check_csrf(&request(
            &[("host", "127.0.0.1:1"), (CSRF_HEADER, "1")],
            "/"
        ))
        .is_ok());
        assert!(check_csrf(&request(
            &[
                ("host", "127.0.0.1:1"),
                (CSRF_HEADER, "1"),
                ("origin", "http://127.0.0.1:1")
            ],
            "/"
        ))
        .is_ok());
        assert!(check_csrf(&request(
            &[
                ("host", "127.0.0.1:1"),
                (CSRF_HEADER, "1"),
                ("origin", "http://evil.example")
            ],
            "/"
        ))
        .is_err());
    }

    #[test]
    fn tokens_are_long_and_random_and_compared_whole() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(constant_time_eq(a.as_bytes(), a.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b.as_bytes()));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}

//! Cross-origin access (CORS, fetch.spec.whatwg.org) for browser apps served from another
//! origin than the gateway: a patient's "who viewed my record" app, a clinician's web viewer.
//! Only the origins the operator lists get CORS headers; for any other origin a browser keeps
//! the answer from the page, as without CORS.
//!
//! Credentials are never allowed (`Access-Control-Allow-Credentials` is not sent): access
//! tokens travel in `Authorization`, which a page sets itself, so a browser's ambient
//! credentials (cookies, a client certificate) never authorise a cross-origin read.

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::HttpResponse;

/// Request headers a cross-origin page may send (preflight answer).
const ALLOWED_HEADERS: &str = "Authorization, Content-Type, Accept, Prefer, If-Match, \
    If-None-Match, If-None-Exist, If-Modified-Since, If-Unmodified-Since, X-Request-Id, \
    X-Purpose-Of-Use, X-Break-Glass-Reason, X-Security-Context";
/// Response headers a cross-origin page may read besides the CORS-safelisted ones.
const EXPOSED_HEADERS: &str = "Location, Content-Location, ETag, Last-Modified, X-Request-Id, \
    WWW-Authenticate, X-Break-Glass, Allow";
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
/// How long a browser may reuse a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The origins allowed to read the gateway's answers from a browser page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsPolicy {
    /// No cross-origin access (the default).
    #[default]
    Closed,
    /// Any origin (`*`).
    AnyOrigin,
    /// These origins, each `scheme://host[:port]` as browsers send it in `Origin`.
    Origins(Vec<String>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cors_allowed_origins: '{0}' is not an origin (scheme://host[:port], no path) or *")]
pub struct InvalidOrigin(pub String);

impl CorsPolicy {
    /// The policy for a configured list: empty closes, `*` opens to every origin.
    pub fn from_origins(origins: &[String]) -> Result<CorsPolicy, InvalidOrigin> {
        if origins.is_empty() {
            return Ok(CorsPolicy::Closed);
        }
        if origins.iter().any(|origin| origin == "*") {
            return Ok(CorsPolicy::AnyOrigin);
        }
        let mut allowed = Vec::with_capacity(origins.len());
        for origin in origins {
            allowed.push(serialized_origin(origin).ok_or_else(|| InvalidOrigin(origin.clone()))?);
        }
        Ok(CorsPolicy::Origins(allowed))
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    fn allow_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        match self {
            CorsPolicy::Closed => None,
            CorsPolicy::AnyOrigin => Some(HeaderValue::from_static("*")),
            CorsPolicy::Origins(allowed) => {
                let text = origin.to_str().ok()?.to_ascii_lowercase();
                allowed.contains(&text).then(|| origin.clone())
            }
        }
    }

    /// What CORS asks of a request: a preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) from an allowed origin is answered at once; any other
    /// request goes on to its route, and its answer gets the headers [`Actual::decorate`] adds.
    pub fn classify(&self, method: &Method, headers: &HeaderMap) -> Cors {
        let allow_origin = self.allow_origin(headers);
        if let Some(origin) = &allow_origin {
            if method == Method::OPTIONS
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            {
                let mut answer = HttpResponse::build(StatusCode::NO_CONTENT);
                answer
                    .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()))
                    .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS))
                    .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS))
                    .insert_header((header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE));
                let mut answer = answer.finish();
                if self.varies() {
                    append_vary_origin(answer.headers_mut());
                }
                return Cors::Preflight(answer);
            }
        }
        Cors::Actual(Actual {
            allow_origin,
            varies: self.varies(),
        })
    }

    /// With a list, the answer depends on the origin: a shared cache must not give one
    /// origin's permission to another.
    fn varies(&self) -> bool {
        matches!(self, CorsPolicy::Origins(_))
    }
}

/// A configured origin as browsers serialize it in `Origin` (RFC 6454 §6.2): scheme and host in
/// lower case, no trailing `/`, no port when it is the scheme's default (`https://a:443` is sent
/// as `https://a`, so as written it would never match). `None` when it is no origin.
fn serialized_origin(origin: &str) -> Option<String> {
    let lowered = origin.trim_end_matches('/').to_ascii_lowercase();
    let (scheme, default_port) = [("https://", 443), ("http://", 80)]
        .into_iter()
        .find(|(scheme, _)| lowered.starts_with(scheme))?;
    let authority = &lowered[scheme.len()..];
    // An IPv6 literal holds colons of its own: the port follows its `]`.
    let port_at = authority
        .rfind(':')
        .filter(|at| !authority[*at..].contains(']'));
    let (host, port) = match port_at {
        Some(at) => (&authority[..at], Some(&authority[at + 1..])),
        None => (authority, None),
    };
    // An ASCII host name or address, or a bracketed IPv6 literal: what a browser sends
    // (an internationalised name arrives in its `xn--` form).
    let valid_host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(literal) => {
            !literal.is_empty()
                && literal
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        }
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
    };
    if !valid_host {
        return None;
    }
    match port {
        None => Some(format!("{scheme}{host}")),
        Some(port) => {
            let number: u16 = port
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| port.parse().ok())
                .flatten()
                .filter(|number| *number > 0)?;
            Some(if number == default_port {
                format!("{scheme}{host}")
            } else {
                format!("{scheme}{host}:{number}")
            })
        }
    }
}

/// See [`CorsPolicy::classify`].
pub enum Cors {
    Preflight(HttpResponse),
    Actual(Actual),
}

/// The CORS headers an actual request's answer gets.
pub struct Actual {
    allow_origin: Option<HeaderValue>,
    varies: bool,
}

impl Actual {
    /// Adds the CORS headers to an answer of any status (a page must be able to read a 401's
    /// `WWW-Authenticate` or a 412's OperationOutcome too).
    pub fn decorate(self, response: &mut HeaderMap) {
        if self.varies {
            append_vary_origin(response);
        }
        if let Some(origin) = self.allow_origin {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            response.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED_HEADERS),
            );
        }
    }
}

fn append_vary_origin(headers: &mut HeaderMap) {
    let varies = headers.get_all(header::VARY).any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|name| name.trim().eq_ignore_ascii_case("origin"))
        })
    });
    if !varies {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use actix_web::http::header::HeaderName;

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    #[test]
    fn configured_origins_are_checked() {
        assert_eq!(CorsPolicy::from_origins(&[]), Ok(CorsPolicy::Closed));
        assert_eq!(
            CorsPolicy::from_origins(&["https://app.example".into(), "*".into()]),
            Ok(CorsPolicy::AnyOrigin)
        );
        assert_eq!(
            CorsPolicy::from_origins(&["HTTPS://App.Example:8443/".into()]),
            Ok(CorsPolicy::Origins(vec!["https://app.example:8443".into()]))
        );
        // Browsers leave the scheme's default port out of `Origin`.
        assert_eq!(
            CorsPolicy::from_origins(&[
                "https://app.example:443".into(),
                "https://app.example:0443".into(),
                "http://[::1]:80".into(),
                "http://[::1]:8080".into()
            ]),
            Ok(CorsPolicy::Origins(vec![
                "https://app.example".into(),
                "https://app.example".into(),
                "http://[::1]".into(),
                "http://[::1]:8080".into()
            ]))
        );
        for bad in [
            "app.example",
            "https://app.example/path",
            "https://",
            "ftp://x",
            "https://app.example:99999",
            "https://app.example:0",
            "https://app.example:",
            "https://app.example:+80",
            "https://user@app.example",
            "https://app\\example",
            "https://アプリ.example",
        ] {
            assert_eq!(
                CorsPolicy::from_origins(&[bad.into()]),
                Err(InvalidOrigin(bad.into())),
                "{bad}"
            );
        }
    }

    fn decorated(policy: &CorsPolicy, request: &HeaderMap) -> HeaderMap {
        let mut answer = HeaderMap::new();
        match policy.classify(&Method::GET, request) {
            Cors::Actual(actual) => actual.decorate(&mut answer),
            Cors::Preflight(_) => panic!("a GET is not a preflight"),
        }
        answer
    }

    fn preflight(policy: &CorsPolicy, method: Method, request: &HeaderMap) -> Option<HttpResponse> {
        match policy.classify(&method, request) {
            Cors::Preflight(answer) => Some(answer),
            Cors::Actual(_) => None,
        }
    }

    #[test]
    fn only_allowed_origins_get_headers() {
        let policy = CorsPolicy::from_origins(&["https://app.example".into()]).unwrap();
        let answer = decorated(&policy, &request(&[("origin", "https://app.example")]));
        assert_eq!(
            answer.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
            "https://app.example"
        );
        assert!(answer.get(header::ACCESS_CONTROL_EXPOSE_HEADERS).is_some());
        assert_eq!(answer.get(header::VARY).unwrap(), "Origin");
        assert!(answer
            .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
            .is_none());

        let other = decorated(&policy, &request(&[("origin", "https://evil.example")]));
        assert!(other.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(other.get(header::VARY).unwrap(), "Origin");

        let closed = decorated(
            &CorsPolicy::Closed,
            &request(&[("origin", "https://app.example")]),
        );
        assert!(closed.is_empty());
    }

    #[test]
    fn preflights_are_answered_for_allowed_origins_only() {
        let policy = CorsPolicy::AnyOrigin;
        let asked = request(&[
            ("origin", "https://app.example"),
            ("access-control-request-method", "PUT"),
        ]);
        let answer = preflight(&policy, Method::OPTIONS, &asked).unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let headers = answer.headers();
        assert_eq!(
            headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
            "*"
        );
        assert!(headers
            .get(header::ACCESS_CONTROL_ALLOW_HEADERS)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Authorization"));
        // Not a preflight: the route answers.
        assert!(preflight(&policy, Method::GET, &asked).is_none());
        let no_method = request(&[("origin", "https://app.example")]);
        assert!(preflight(&policy, Method::OPTIONS, &no_method).is_none());
        assert!(preflight(&CorsPolicy::Closed, Method::OPTIONS, &asked).is_none());
        // A listed origin's preflight answer depends on the origin, so caches must key on it.
        let listed = CorsPolicy::from_origins(&["https://app.example".into()]).unwrap();
        let answer = preflight(&listed, Method::OPTIONS, &asked).unwrap();
        assert_eq!(answer.headers().get(header::VARY).unwrap(), "Origin");
    }
}

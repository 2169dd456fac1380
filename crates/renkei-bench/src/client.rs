//! The HTTP side: target checks (loopback unless allowed), bearer tokens per facility, and one
//! request helper that measures nothing itself.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, Method, Url};

use crate::Error;

pub const FHIR_JSON: &str = "application/fhir+json";

/// Bearer tokens: none, one for every request, or one per facility (Organization id).
#[derive(Debug, Clone, Default)]
pub enum Tokens {
    #[default]
    None,
    Single(String),
    PerFacility(BTreeMap<String, String>),
}

impl Tokens {
    /// Reads a JSON object `{"fac-001": "eyJ…", …}`.
    pub fn from_file(path: &Path) -> Result<Tokens, Error> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let map: BTreeMap<String, String> =
            serde_json::from_slice(&text).map_err(|e| Error::json(path, e))?;
        Ok(Tokens::PerFacility(map))
    }

    pub fn from_args(token: Option<String>, file: Option<&Path>) -> Result<Tokens, Error> {
        match (token, file) {
            (Some(_), Some(_)) => Err(Error::Usage("give --token or --tokens, not both".into())),
            (Some(t), None) => Ok(Tokens::Single(t)),
            (None, Some(f)) => Tokens::from_file(f),
            (None, None) => Ok(Tokens::None),
        }
    }

    /// The token a facility's requests carry. With per-facility tokens a facility without one
    /// is an error (its writes would get the wrong custodian).
    pub fn for_facility(&self, facility: &str) -> Result<Option<String>, Error> {
        match self {
            Tokens::None => Ok(None),
            Tokens::Single(t) => Ok(Some(t.clone())),
            Tokens::PerFacility(map) => map
                .get(facility)
                .map(|t| Some(t.clone()))
                .ok_or_else(|| Error::Usage(format!("no token for facility {facility}"))),
        }
    }

    pub fn per_facility(&self) -> bool {
        matches!(self, Tokens::PerFacility(_))
    }
}

/// Parses the base URL and refuses anything but loopback unless `allow_remote`.
pub fn check_target(base: &str, allow_remote: bool) -> Result<Url, Error> {
    let url = Url::parse(base.trim_end_matches('/'))
        .map_err(|e| Error::Usage(format!("bad target URL {base}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Usage(format!("target must be http(s): {base}")));
    }
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_remote {
        return Err(Error::Usage(format!(
            "refusing non-loopback target {base} (pass --allow-remote to measure it anyway)"
        )));
    }
    Ok(url)
}

pub fn http_client(max_idle: usize) -> Result<Client, Error> {
    Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(max_idle.max(1))
        .timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| Error::Http(e.to_string()))
}

/// The target's base URL and a client.
#[derive(Debug, Clone)]
pub struct Target {
    pub base: String,
    pub client: Client,
}

pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Target {
    pub fn new(base: &str, allow_remote: bool, max_idle: usize) -> Result<Target, Error> {
        let url = check_target(base, allow_remote)?;
        Ok(Target {
            base: url.as_str().trim_end_matches('/').to_string(),
            client: http_client(max_idle)?,
        })
    }

    /// `path` is relative to the base (`Observation?…`, `Patient/1`, or empty for the base).
    pub fn url(&self, path: &str) -> String {
        if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    pub async fn send(
        &self,
        method: &Method,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
        prefer_minimal: bool,
    ) -> Result<Answer, Error> {
        let mut req = self
            .client
            .request(method.clone(), self.url(path))
            .header(ACCEPT, FHIR_JSON);
        if let Some(t) = token {
            let value = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::Usage("token is not a valid header value".into()))?;
            req = req.header(AUTHORIZATION, value);
        }
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, FHIR_JSON).body(b.to_vec());
        }
        if prefer_minimal {
            req = req.header("Prefer", "return=minimal");
        }
        let resp = req.send().await.map_err(|e| Error::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::Http(e.to_string()))?
            .to_vec();
        Ok(Answer { status, body })
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_unless_allowed() {
        assert!(check_target("http://127.0.0.1:8080/fhir", false).is_ok());
        assert!(check_target("http://localhost:8080/fhir/", false).is_ok());
        assert!(check_target("http://[::1]:8080", false).is_ok());
        assert!(check_target("http://10.0.0.5:8080/fhir", false).is_err());
        assert!(check_target("http://example.org/fhir", false).is_err());
        assert!(check_target("http://example.org/fhir", true).is_ok());
        assert!(check_target("ftp://127.0.0.1/", true).is_err());
    }

    #[test]
    fn encodes_kanji_and_separators() {
        assert_eq!(encode("a|b c"), "a%7Cb%20c");
        assert_eq!(encode("山"), "%E5%B1%B1");
        assert_eq!(encode("2000-01-02"), "2000-01-02");
    }

    #[test]
    fn tokens_per_facility() {
        let mut map = BTreeMap::new();
        map.insert("fac-001".to_string(), "t1".to_string());
        let t = Tokens::PerFacility(map);
        assert_eq!(
            t.for_facility("fac-001").ok().flatten().as_deref(),
            Some("t1")
        );
        assert!(t.for_facility("fac-002").is_err());
        assert_eq!(
            Tokens::Single("x".into())
                .for_facility("any")
                .ok()
                .flatten()
                .as_deref(),
            Some("x")
        );
        assert!(Tokens::None.for_facility("any").ok().flatten().is_none());
    }
}

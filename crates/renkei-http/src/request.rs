//! Per-request context: negotiated format, query parameters, base URL, and body reading.

use crate::error::ApiError;
use crate::format::{negotiate, Format};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

pub struct RequestCtx {
    pub format: Format,
    pub pretty: bool,
    pub params: Vec<(String, String)>,
    pub base: String,
    /// A Binary read whose `Accept` names no FHIR format but the content's own type
    /// (`application/pdf`): the answer is the raw content (errors still in FHIR JSON).
    pub raw_binary: bool,
}

impl RequestCtx {
    /// Reads what every handler needs. On failure the error is rendered in the best format
    /// we can tell (JSON if negotiation itself failed).
    pub fn new(req: &HttpRequest) -> Result<RequestCtx, (ApiError, Format)> {
        Self::build(req, false)
    }

    /// [`RequestCtx::new`] for a read of a Binary, which may be asked for in its own content
    /// type (http.html#binary).
    pub fn for_binary_read(req: &HttpRequest) -> Result<RequestCtx, (ApiError, Format)> {
        Self::build(req, true)
    }

    fn build(req: &HttpRequest, binary: bool) -> Result<RequestCtx, (ApiError, Format)> {
        let params = parse_query_strict(req.query_string()).map_err(|e| (e, Format::Json))?;
        let format_param = param(&params, "_format");
        let (format, raw_binary) = match negotiate(format_param, req.headers()) {
            Ok(format) => (format, false),
            Err(_) if binary && format_param.is_none() => (Format::Json, true),
            Err(e) => return Err((e, Format::Json)),
        };
        let pretty = param(&params, "_pretty") == Some("true");
        let info = req.connection_info();
        let base = format!("{}://{}/fhir", info.scheme(), info.host());
        Ok(RequestCtx {
            format,
            pretty,
            params,
            base,
            raw_binary,
        })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        param(&self.params, name)
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A query string or form body, decoded leniently (operator tools, the token endpoint).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    let lenient = |text: &str| Ok::<String, ApiError>(renkei_repository::percent_decode(text));
    split_query(query, lenient).unwrap_or_default()
}

/// A client's query string or form body: malformed URL encoding (`%zz`, escapes that are not
/// UTF-8) answers 400 rather than searching for something the client never meant.
pub fn parse_query_strict(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    split_query(query, |text| {
        renkei_repository::percent_decode_strict(text)
            .map_err(|message| ApiError::bad_request(format!("malformed query: {message}")))
    })
}

fn split_query(
    query: &str,
    decode: impl Fn(&str) -> Result<String, ApiError>,
) -> Result<Vec<(String, String)>, ApiError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Longest wait for the next part of a request body.
const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Reads the body, refusing more than `limit` bytes with 413 before buffering them.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    };
    if let Some(length) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if length > limit {
            return Err(too_large());
        }
    }
    let mut body = web::BytesMut::new();
    loop {
        // A client that stops sending mid-body would otherwise hold its connection (and a
        // worker's attention) for as long as the TCP connection lives.
        let next = actix_web::rt::time::timeout(BODY_IDLE_TIMEOUT, payload.next())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "no part of the request body arrived for {} s",
                        BODY_IDLE_TIMEOUT.as_secs()
                    ),
                )
            })?;
        let Some(chunk) = next else {
            break;
        };
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("the request has no body"));
    }
    Ok(body.freeze())
}

/// The `return` preference of a `Prefer` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

pub fn return_preference(req: &HttpRequest) -> ReturnPreference {
    let prefer = req
        .headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .map(str::trim)
        .find_map(|p| p.strip_prefix("return="));
    match prefer {
        Some("minimal") => ReturnPreference::Minimal,
        Some("OperationOutcome") => ReturnPreference::OperationOutcome,
        _ => ReturnPreference::Representation,
    }
}

/// The `If-Match` precondition: a version from `W/"3"`, or `*` (proceed only if the resource
/// currently exists). 400 for anything else, with the reason.
pub fn if_match(req: &HttpRequest) -> Result<Option<renkei_repository::IfMatch>, ApiError> {
    let mut values = req.headers().get_all(header::IF_MATCH);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    // Repeated headers are one list (RFC 9110 §5.3), refused as a list is.
    let text = match values.next() {
        None => first.to_str().unwrap_or("").to_string(),
        Some(_) => req
            .headers()
            .get_all(header::IF_MATCH)
            .map(|v| v.to_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(", "),
    };
    renkei_repository::parse_if_match(&text)
        .map(Some)
        .map_err(|reason| ApiError::bad_request(format!("If-Match {reason}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use actix_web::test::TestRequest;

    fn with(values: &[&str]) -> Result<Option<renkei_repository::IfMatch>, ApiError> {
        let mut req = TestRequest::default();
        for v in values {
            req = req.append_header((header::IF_MATCH, *v));
        }
        if_match(&req.to_http_request())
    }

    #[test]
    fn if_match_reads_star_versions_and_refuses_lists() {
        assert_eq!(with(&[]).ok(), Some(None));
        assert_eq!(
            with(&["W/\"3\""]).ok(),
            Some(Some(renkei_repository::IfMatch::Version(3)))
        );
        assert_eq!(
            with(&["*"]).ok(),
            Some(Some(renkei_repository::IfMatch::Any))
        );
        let list = with(&["W/\"2\", W/\"3\""]).unwrap_err().to_string();
        assert!(list.contains("lists several ETags"), "{list}");
        let repeated = with(&["W/\"2\"", "W/\"3\""]).unwrap_err().to_string();
        assert!(repeated.contains("lists several ETags"), "{repeated}");
        let bad = with(&["banana"]).unwrap_err().to_string();
        assert!(bad.contains("not a version ETag"), "{bad}");
    }
}

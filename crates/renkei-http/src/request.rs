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
        let params = parse_query_strict(req.query_string()).map_err(|e| (e, error_format(req)))?;
        let format_param = param(&params, "_format");
        // A Binary is answered as its own content unless `_format` or `Accept` explicitly
        // names a FHIR format (binary.html#rest): `*/*` or no `Accept` at all is content.
        let as_content = binary && format_param.is_none();
        let (format, raw_binary) = match negotiate(format_param, req.headers()) {
            Ok(format) => (
                format,
                as_content && !crate::format::accept_names_fhir(req.headers()),
            ),
            Err(_) if as_content => (Format::Json, true),
            // The format itself cannot be served: JSON, the default, is all there is.
            Err(e) => return Err((e, Format::Json)),
        };
        let pretty = param(&params, "_pretty") == Some("true");
        let configured = req
            .app_data::<web::Data<crate::AppState>>()
            .and_then(|state| state.base_url.clone());
        let base = request_base(req, configured.as_deref());
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

/// The format an error is answered in when the request could not be read whole (its query
/// is not valid URL encoding, a body the handler cannot take): the one the client asked
/// for if that can still be told, `_format` read leniently, else JSON.
pub fn error_format(req: &HttpRequest) -> Format {
    let params = parse_query(req.query_string());
    negotiate(param(&params, "_format"), req.headers()).unwrap_or(Format::Json)
}

/// The FHIR base every link of an answer is built on (`Location`, `fullUrl`, paging links,
/// the CapabilityStatement's `url`).
///
/// `Host`, `X-Forwarded-Host`, `X-Forwarded-Proto` and `Forwarded` are the caller's to choose:
/// a configured `base_url` is used whenever there is one and they play no part. Without one
/// they are taken only when they could name this server: the scheme `http` or `https` and a
/// host that is an RFC 3986 host with an optional port. Anything else (`javascript`, a host
/// with a path or spaces in it) gives the address the server listens on, so a forged header
/// cannot make the server write a link to another scheme or a malformed URL. An empty port
/// (`x.example:`, which RFC 3986 allows and means the default) is dropped rather than copied
/// into every link as `http://x.example:/fhir`.
fn request_base(req: &HttpRequest, configured: Option<&str>) -> String {
    if let Some(base) = configured {
        return base.trim_end_matches('/').to_string();
    }
    let (scheme, host) = client_facing_origin(req);
    // Schemes are case-insensitive (RFC 3986 §3.1): a proxy's `HTTPS` is `https`.
    let scheme = scheme.to_ascii_lowercase();
    if matches!(scheme.as_str(), "http" | "https") && is_host_and_port(&host) {
        let host = host.strip_suffix(':').unwrap_or(&host);
        return format!("{scheme}://{host}/fhir");
    }
    let config = req.app_config();
    let scheme = if config.secure() { "https" } else { "http" };
    format!("{scheme}://{}/fhir", config.local_addr())
}

/// The scheme and host the client addressed, as the headers tell them: `Forwarded`'s first
/// element, else `X-Forwarded-Proto` / `X-Forwarded-Host` (their first value), else the
/// request's own `Host` and connection.
///
/// actix's `ConnectionInfo` takes each `Forwarded` parameter from whichever element names it
/// first, so `Forwarded: for=1.2.3.4, host=inner` would take `host` from an inner hop. RFC 7239
/// §4 appends one element per proxy, the first written by the proxy the client talked to:
/// only that element says what the client typed, and a parameter it lacks is not looked for
/// in the elements after it.
fn client_facing_origin(req: &HttpRequest) -> (String, String) {
    let forwarded: Vec<&str> = req
        .headers()
        .get_all(header::FORWARDED)
        .filter_map(|value| value.to_str().ok())
        .collect();
    // Several header lines are one list (RFC 9110 §5.3), in order.
    let forwarded = forwarded.join(",");
    let first = split_unquoted(&forwarded, ',')
        .into_iter()
        .next()
        .unwrap_or("");
    let parameter = |name: &str| {
        split_unquoted(first, ';').into_iter().find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().trim_matches('"').to_string())
        })
    };
    let first_value = |name: &str| {
        let value = req.headers().get(name)?.to_str().ok()?;
        Some(value.split(',').next()?.trim().to_string())
    };
    // Not `connection_info()` for what the headers leave open: it would fill it from a later
    // `Forwarded` element.
    let config = req.app_config();
    let scheme = parameter("proto")
        .or_else(|| first_value("x-forwarded-proto"))
        .or_else(|| req.uri().scheme_str().map(str::to_string))
        .unwrap_or_else(|| if config.secure() { "https" } else { "http" }.to_string());
    let host = parameter("host")
        .or_else(|| first_value("x-forwarded-host"))
        .or_else(|| Some(req.headers().get(header::HOST)?.to_str().ok()?.to_string()))
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
        .unwrap_or_else(|| config.host().to_string());
    (scheme, host)
}

/// `text` split at each `separator` outside a quoted string (RFC 9110 §5.6.4), so that a
/// quoted `host="a,b"` stays one value.
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Whether `text` is RFC 3986 `host [ ":" port ]`: an IP-literal (`[::1]`), or a reg-name /
/// IPv4 address (`unreserved / pct-encoded / sub-delims`, not empty), and a port of digits
/// up to 65535.
fn is_host_and_port(text: &str) -> bool {
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((literal, after)) if literal.parse::<std::net::Ipv6Addr>().is_ok() => {
                match after {
                    "" => return true,
                    _ => match after.strip_prefix(':') {
                        Some(port) => (None, port),
                        None => return false,
                    },
                }
            }
            _ => return false,
        },
        None => match text.rsplit_once(':') {
            Some((host, port)) => (Some(host), port),
            None => (Some(text), ""),
        },
    };
    // A port no TCP connection can have (`:99999`) names no server either.
    let port_ok = port.is_empty()
        || (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok());
    let host_ok = host.is_none_or(|host| {
        let bytes = host.as_bytes();
        !bytes.is_empty()
            && bytes.iter().enumerate().all(|(i, &b)| match b {
                b'%' => bytes
                    .get(i + 1..i + 3)
                    .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)),
                b'-' | b'.' | b'_' | b'~' => true,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => true,
                _ => b.is_ascii_alphanumeric(),
            })
    });
    port_ok && host_ok
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

/// Reads the body, refusing more than `limit` bytes with 413 before buffering them, and an
/// empty one with 400.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let body = read_body_or_empty(req, payload, limit).await?;
    if body.is_empty() {
        return Err(ApiError::bad_request("the request has no body"));
    }
    Ok(body)
}

/// [`read_body`] for an endpoint that answers an empty body itself (the token endpoint).
pub async fn read_body_or_empty(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    check_content_encoding(req)?;
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
    Ok(body.freeze())
}

/// 415 for a body sent with a `Content-Encoding` other than `identity`: bodies are read as
/// they arrive (the `Payload` stream is not decompressed), so a gzip body would be parsed as
/// its compressed bytes, and a plain body labelled gzip would be taken for something its
/// sender said it was not.
fn check_content_encoding(req: &HttpRequest) -> Result<(), ApiError> {
    let codings: Vec<&str> = req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .flat_map(|value| value.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
        .collect();
    if codings.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "not-supported",
        format!(
            "Content-Encoding '{}' is not accepted: send the body uncompressed (identity)",
            codings.join(", ")
        ),
    ))
}

/// A form body (`application/x-www-form-urlencoded`) decoded as strictly as a query string:
/// bytes that are not UTF-8 answer 400, as escapes that are not UTF-8 do.
pub fn parse_form_strict(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("malformed form body: it is not UTF-8 text"))?;
    parse_query_strict(text)
}

/// Checks that `text` (a header value such as `If-None-Exist` or `X-Break-Glass-Reason`) is
/// valid URL encoding of UTF-8, with the decoding queries get: an escape that decodes to
/// other bytes (`%FF`) answers 400 naming the header instead of becoming U+FFFD.
pub fn check_url_encoded(name: &str, text: &str) -> Result<(), ApiError> {
    renkei_repository::percent_decode_strict(text)
        .map(|_| ())
        .map_err(|message| {
            ApiError::bad_request(format!("the {name} header is malformed: {message}"))
        })
}

/// Free text (`X-Break-Glass-Reason`) with its percent escapes decoded; escapes that do not
/// decode to UTF-8 (`%FF%FE`) answer 400 naming the header, while a lone `%` is just a
/// percent sign, so a clinician's "SpO2 80%" never stands between them and emergency access.
pub fn decode_escapes(name: &str, text: &str) -> Result<String, ApiError> {
    renkei_repository::percent_escapes_decode(text).map_err(|message| {
        ApiError::bad_request(format!("the {name} header is malformed: {message}"))
    })
}

/// The `return` preference of a `Prefer` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

pub fn return_preference(req: &HttpRequest) -> ReturnPreference {
    match preference(req, "return") {
        Some(value) if value.eq_ignore_ascii_case("minimal") => ReturnPreference::Minimal,
        Some(value) if value.eq_ignore_ascii_case("OperationOutcome") => {
            ReturnPreference::OperationOutcome
        }
        _ => ReturnPreference::Representation,
    }
}

/// The value of the first preference `name` in the request's `Prefer` headers (RFC 7240 §2):
/// names compare case-insensitively, whitespace may surround `=`, and a value may be a quoted
/// string. A preference without a value answers `Some("")`. What follows a `;` are the
/// preference's parameters, not preferences (`foo; return=minimal` asks for `foo`).
pub fn preference<'r>(req: &'r HttpRequest, name: &str) -> Option<&'r str> {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|item| {
            let item = item.split(';').next().unwrap_or_default();
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().trim_matches('"'))
        })
}

/// A write's precondition: `If-Match` with a version (`W/"3"`) or `*` (proceed only if the
/// resource currently exists), or `If-None-Match` with a version (only if that is not the
/// current one) or `*` (only if the resource does not exist), else `If-Unmodified-Since`. 400
/// for anything else, with the reason.
pub fn if_match(req: &HttpRequest) -> Result<Option<renkei_repository::IfMatch>, ApiError> {
    let if_match = header_list(req, header::IF_MATCH);
    let if_none_match = header_list(req, header::IF_NONE_MATCH);
    match (if_match, if_none_match) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "a write takes If-Match or If-None-Match, not both",
        )),
        (Some(text), None) => renkei_repository::parse_if_match(&text)
            .map(Some)
            .map_err(|reason| ApiError::bad_request(format!("If-Match {reason}"))),
        // On a write, `*` means "only if it does not exist yet" (RFC 9110 §13.1.2).
        (None, Some(text)) => renkei_repository::parse_if_none_match(&text)
            .map(Some)
            .map_err(|reason| ApiError::bad_request(format!("If-None-Match {reason}"))),
        (None, None) => Ok(unmodified_since(req)),
    }
}

/// `If-Unmodified-Since` as a write's precondition (RFC 9110 §13.1.4): considered only without
/// `If-Match` (and here `If-None-Match`, the stronger validators), and ignored when its value
/// is not an HTTP-date.
fn unmodified_since(req: &HttpRequest) -> Option<renkei_repository::IfMatch> {
    let text = req
        .headers()
        .get(header::IF_UNMODIFIED_SINCE)?
        .to_str()
        .ok()?;
    let date = httpdate::parse_http_date(text).ok()?;
    let second = date.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(renkei_repository::IfMatch::UnmodifiedSince(
        i64::try_from(second).ok()?,
    ))
}

/// A header's values as one list: repeated headers are one list (RFC 9110 §5.3), refused as a
/// list is.
fn header_list(req: &HttpRequest, name: header::HeaderName) -> Option<String> {
    let values: Vec<&str> = req
        .headers()
        .get_all(name)
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
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
    fn preferences_are_read_as_rfc_7240_writes_them() {
        let prefer = |values: &[&str], name: &str| {
            let mut req = TestRequest::default();
            for v in values {
                req = req.append_header(("prefer", *v));
            }
            preference(&req.to_http_request(), name).map(str::to_string)
        };
        for spelled in [
            "handling=strict",
            "handling=\"strict\"",
            "handling = strict",
            "HANDLING=strict",
            "return=minimal, Handling=strict",
        ] {
            assert_eq!(
                prefer(&[spelled], "handling").as_deref(),
                Some("strict"),
                "{spelled}"
            );
        }
        assert_eq!(
            prefer(&["respond-async", "return=minimal"], "return").as_deref(),
            Some("minimal")
        );
        assert_eq!(
            prefer(&["respond-async"], "respond-async").as_deref(),
            Some("")
        );
        assert_eq!(prefer(&["handlings=strict"], "handling"), None);
        assert_eq!(prefer(&["foo; return=minimal"], "return"), None);
        assert_eq!(
            prefer(&["return=minimal; charset=utf-8"], "return").as_deref(),
            Some("minimal")
        );
    }

    #[test]
    fn hosts_are_rfc_3986_hosts_with_ports() {
        for good in [
            "gw.example",
            "gw.example:8443",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8080",
            "xn--eckwd4c7c.example",
            "a%41b",
        ] {
            assert!(is_host_and_port(good), "{good}");
        }
        for bad in [
            "",
            ":80",
            "gw.example:80x",
            "gw.example:123456",
            "gw.example:99999",
            "gw.example:+80",
            "gw.example/evil",
            "gw example",
            "user@gw.example",
            "[::1",
            "[not-ip]:80",
            "[::1]x",
            "a%4",
            "gw.example:80:90",
            "山田.example",
        ] {
            assert!(!is_host_and_port(bad), "{bad}");
        }
    }

    #[test]
    fn links_come_from_base_url_or_checked_headers() {
        let forged = || {
            TestRequest::default()
                .insert_header((header::HOST, "gw.example"))
                .insert_header(("x-forwarded-proto", "javascript"))
                .insert_header(("x-forwarded-host", "attacker.example"))
                .to_http_request()
        };
        assert_eq!(
            request_base(&forged(), Some("https://gw.example/fhir/")),
            "https://gw.example/fhir"
        );
        // actix's test requests come from 127.0.0.1:8080 unless told otherwise.
        let listen = format!("http://{}/fhir", forged().app_config().local_addr());
        assert_eq!(request_base(&forged(), None), listen);
        let proxied = TestRequest::default()
            .insert_header(("x-forwarded-proto", "https"))
            .insert_header(("x-forwarded-host", "gw.example:8443"))
            .to_http_request();
        assert_eq!(request_base(&proxied, None), "https://gw.example:8443/fhir");
        let upper_case = TestRequest::default()
            .insert_header(("x-forwarded-proto", "HTTPS"))
            .insert_header(("x-forwarded-host", "gw.example"))
            .to_http_request();
        assert_eq!(request_base(&upper_case, None), "https://gw.example/fhir");
        let bad_host = TestRequest::default()
            .insert_header(("x-forwarded-host", "evil.example/x?"))
            .to_http_request();
        assert_eq!(request_base(&bad_host, None), listen);
        let empty_port = TestRequest::default()
            .insert_header((header::HOST, "x.example:"))
            .to_http_request();
        assert_eq!(request_base(&empty_port, None), "http://x.example/fhir");
        let empty_port_v6 = TestRequest::default()
            .insert_header(("x-forwarded-host", "[::1]:"))
            .to_http_request();
        assert_eq!(request_base(&empty_port_v6, None), "http://[::1]/fhir");
        let configured = TestRequest::default()
            .insert_header(("x-forwarded-host", "attacker.example"))
            .to_http_request();
        assert_eq!(
            request_base(&configured, Some("https://gw.example/fhir")),
            "https://gw.example/fhir"
        );
    }

    #[test]
    fn forwarded_is_read_from_its_first_element_only() {
        let base = |values: &[&str]| {
            let mut req = TestRequest::default()
                .insert_header((header::HOST, "gw.internal"))
                .insert_header(("x-forwarded-host", "xfh.example"));
            for value in values {
                req = req.append_header((header::FORWARDED, *value));
            }
            request_base(&req.to_http_request(), None)
        };
        // The client-facing proxy writes the first element; later hops append theirs.
        assert_eq!(
            base(&["host=a.example, host=b.example"]),
            "http://a.example/fhir"
        );
        assert_eq!(
            base(&["proto=https;host=a.example", "proto=http;host=b.example"]),
            "https://a.example/fhir"
        );
        assert_eq!(
            base(&["Proto=HTTPS;Host=\"a.example:8443\", host=b.example"]),
            "https://a.example:8443/fhir"
        );
        // A parameter the first element lacks is not taken from an inner hop's element.
        assert_eq!(
            base(&["for=192.0.2.1, host=b.example;proto=https"]),
            "http://xfh.example/fhir"
        );
        // A quoted comma does not end the element.
        assert_eq!(
            base(&["for=\"a,b\";host=a.example, host=b.example"]),
            "http://a.example/fhir"
        );
    }

    #[test]
    fn values_are_split_outside_quotes() {
        assert_eq!(split_unquoted("a, b", ','), ["a", " b"]);
        assert_eq!(split_unquoted("x=\"a,b\",c", ','), ["x=\"a,b\"", "c"]);
        assert_eq!(
            split_unquoted("x=\"a\\\",b\";c", ';'),
            ["x=\"a\\\",b\"", "c"]
        );
        assert_eq!(split_unquoted("", ','), [""]);
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

//! Content negotiation (`_format`, `Accept`, `Content-Type`) and rendering of FHIR content.

use crate::error::ApiError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder};
use serde_json::Value;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
pub const FHIR_XML: &str = "application/fhir+xml; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

/// What a request body is, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Fhir(Format),
    JsonPatch,
}

fn mime_format(mime: &str) -> Option<Format> {
    match essence(mime).as_str() {
        "application/fhir+json"
        | "application/json"
        | "json"
        | "application/json+fhir"
        | "text/json" => Some(Format::Json),
        "application/fhir+xml"
        | "application/xml"
        | "text/xml"
        | "xml"
        | "application/xml+fhir" => Some(Format::Xml),
        _ => None,
    }
}

/// The response format: `_format` wins over `Accept`; JSON when neither says.
pub fn negotiate(format_param: Option<&str>, headers: &HeaderMap) -> Result<Format, ApiError> {
    if let Some(param) = format_param {
        // `_format=application/fhir+xml` written without encoding its `+` arrives as a space;
        // a space after a `;` is the media type's own (`; fhirVersion=3.0`).
        let param = match param.split_once(';') {
            Some((mime, parameters)) => format!("{};{parameters}", mime.replace(' ', "+")),
            None => param.replace(' ', "+"),
        };
        // `_format` stands in for `Accept` (http.html), so another FHIR version is refused
        // here as there.
        if names_another_fhir_version(&param) {
            return Err(ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                format!("_format '{param}' names another FHIR version; this server serves FHIR R4 (fhirVersion=4.0)"),
            ));
        }
        return mime_format(&param).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                "not-supported",
                format!("_format '{param}' is not served; use json or xml"),
            )
        });
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Format::Json);
    };
    let mut best: Option<(f32, Format)> = None;
    let mut any = false;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let mime = parts.next().unwrap_or("").trim();
        let quality = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if quality <= 0.0 || names_another_fhir_version(item) {
            continue;
        }
        let format = match mime {
            // `text/*` takes text/json as well as text/xml: JSON, as for any other range.
            "*/*" | "application/*" | "text/*" | "" => {
                any = true;
                Some(Format::Json)
            }
            other => mime_format(other),
        };
        if let Some(format) = format {
            if best.is_none_or(|(q, _)| quality > q) {
                best = Some((quality, format));
            }
        }
    }
    match best {
        Some((_, format)) => Ok(format),
        None if any => Ok(Format::Json),
        None => Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            format!("none of the accepted types '{accept}' is served; use application/fhir+json or application/fhir+xml"),
        )),
    }
}

/// Whether `Accept` explicitly asks for a FHIR format (a FHIR, JSON or XML media type with a
/// quality above 0). A Binary is read as its own content unless the client does
/// (binary.html#rest).
pub fn accept_names_fhir(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|accept| accept.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let named = mime_format(parts.next().unwrap_or("")).is_some();
            let refused = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .any(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0));
            named && !refused
        })
}

/// Whether a media type's `fhirVersion` parameter (http.html#version-parameter) names
/// another FHIR version than R4 (4.0).
fn names_another_fhir_version(media_type: &str) -> bool {
    media_type
        .split(';')
        .skip(1)
        .filter_map(|parameter| parameter.split_once('='))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("fhirVersion"))
        .any(|(_, version)| {
            let version = version.trim().trim_matches('"');
            version != "4.0" && !version.starts_with("4.0.")
        })
}

/// 415 when a request body's media type (`Content-Type`) names a `charset` other than UTF-8;
/// no `charset` is UTF-8. Every body is read as UTF-8 (FHIR resources, JSON Patch, the form
/// bodies of `_search` and `/auth/token`): text in another encoding would be read as other
/// characters than the client sent, or refused as malformed with a misleading reason.
/// `utf8` is taken for `UTF-8`: it is not a registered name, but a common spelling (MySQL's,
/// many HTTP clients') of the same encoding.
pub(crate) fn check_charset(media_type: &str) -> Result<(), ApiError> {
    let other = media_type
        .split(';')
        .skip(1)
        .filter_map(|parameter| parameter.split_once('='))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, value)| value.trim().trim_matches('"'))
        .find(|charset| {
            !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8")
        });
    match other {
        None => Ok(()),
        Some(charset) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            format!("charset '{charset}' is not accepted: request bodies are read as UTF-8 (charset=utf-8)"),
        )),
    }
}

/// The media type of a header value without its parameters, lowercased.
pub(crate) fn essence(text: &str) -> String {
    text.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The request's `Content-Type` when it names neither a FHIR format nor JSON Patch: content
/// sent as itself (a Binary's).
pub fn native_content_type(headers: &HeaderMap) -> Option<String> {
    let text = headers.get(header::CONTENT_TYPE)?.to_str().ok()?.trim();
    let essence = essence(text);
    let fhir = mime_format(&essence).is_some() || essence == "application/json-patch+json";
    (!fhir && !essence.is_empty()).then(|| text.to_string())
}

/// The kind of a request body from its `Content-Type` (415 for anything else).
pub fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        let declared_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let has_body = headers.contains_key(header::TRANSFER_ENCODING)
            || declared_length.is_some_and(|length| length > 0);
        if !has_body {
            return Err(ApiError::bad_request(
                "the request needs a body: a FHIR resource as application/fhir+json or application/fhir+xml",
            ));
        }
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "the request has a body but no Content-Type; use application/fhir+json or application/fhir+xml (a PATCH also takes application/json-patch+json)",
        ));
    };
    let text = value.to_str().unwrap_or("");
    check_charset(text)?;
    if essence(text) == "application/json-patch+json" {
        return Ok(BodyKind::JsonPatch);
    }
    if names_another_fhir_version(text) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            format!("Content-Type '{text}' names another FHIR version; this server takes FHIR R4 (fhirVersion=4.0)"),
        ));
    }
    mime_format(text).map(BodyKind::Fhir).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            format!("Content-Type '{text}' is not accepted; use application/fhir+json or application/fhir+xml (a PATCH also takes application/json-patch+json)"),
        )
    })
}

/// Parses a FHIR resource body in the given format.
pub fn parse_body(bytes: &[u8], format: Format) -> Result<Value, ApiError> {
    match format {
        Format::Json => renkei_fhir::parse_json(bytes),
        Format::Xml => renkei_fhir::parse_xml(bytes),
    }
    .map_err(|e| ApiError::Repo(e.into()))
}

/// [`parse_body`] for a batch or transaction posted to be processed (a batch's invalid
/// entries fail on their own, in either format).
pub fn parse_bundle_body(bytes: &[u8], format: Format) -> Result<Value, ApiError> {
    match format {
        Format::Json => renkei_fhir::parse_json_for_processing(bytes),
        Format::Xml => renkei_fhir::parse_xml_for_processing(bytes),
    }
    .map_err(|e| ApiError::Repo(e.into()))
}

/// Renders a value into a response in the requested format.
pub fn render_value(
    mut builder: HttpResponseBuilder,
    value: &Value,
    format: Format,
    pretty: bool,
) -> HttpResponse {
    match format {
        Format::Json => {
            let body = if pretty {
                serde_json::to_vec_pretty(value)
            } else {
                serde_json::to_vec(value)
            };
            match body {
                Ok(bytes) => builder.content_type(FHIR_JSON).body(bytes),
                Err(_) => HttpResponse::InternalServerError().finish(),
            }
        }
        Format::Xml => match renkei_fhir::to_xml(value) {
            Ok(xml) => builder.content_type(FHIR_XML).body(xml),
            Err(e) => {
                tracing::error!(error = %e, "cannot render XML");
                HttpResponse::InternalServerError()
                    .content_type(FHIR_JSON)
                    .body(
                        serde_json::to_vec(&crate::error::outcome(
                            "error",
                            "exception",
                            "the resource could not be rendered as XML",
                        ))
                        .unwrap_or_default(),
                    )
            }
        },
    }
}

/// A response Bundle (`searchset`, `history`): FHIR JSON forbids an empty `entry` array, so
/// it is left out when there are no entries; `total` only when known.
pub fn response_bundle(
    kind: &str,
    total: Option<i64>,
    links: Vec<Value>,
    entries: Vec<Value>,
) -> Value {
    let mut bundle = serde_json::json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": kind,
    });
    if let Some(total) = total {
        bundle["total"] = serde_json::json!(total);
    }
    bundle["link"] = Value::Array(links);
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}

/// An entry of a searchset Bundle.
pub enum BundleEntry<'a> {
    /// A matched or included resource.
    Resource {
        full_url: String,
        resource: EntryResource<'a>,
        mode: &'static str,
    },
    /// Any other entry, built as JSON (the OperationOutcome of ignored parameters).
    Other(Value),
}

/// The resource of an entry: as stored (spliced into compact JSON without being parsed), or
/// reshaped (`_summary`, `_elements`).
pub enum EntryResource<'a> {
    Stored(&'a str),
    Reshaped(Value),
}

impl BundleEntry<'_> {
    fn into_value(self) -> Option<Value> {
        match self {
            BundleEntry::Other(value) => Some(value),
            BundleEntry::Resource {
                full_url,
                resource,
                mode,
            } => {
                let resource = match resource {
                    EntryResource::Stored(text) => serde_json::from_str(text).ok()?,
                    EntryResource::Reshaped(value) => value,
                };
                Some(serde_json::json!({
                    "fullUrl": full_url,
                    "resource": resource,
                    "search": {"mode": mode},
                }))
            }
        }
    }
}

/// A Bundle (built by [`response_bundle`] without entries) with its entries, as JSON.
pub fn bundle_value(mut bundle: Value, entries: Vec<BundleEntry<'_>>) -> Value {
    let entries: Vec<Value> = entries
        .into_iter()
        .filter_map(BundleEntry::into_value)
        .collect();
    // FHIR JSON leaves an empty list out.
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}

/// Renders a Bundle (built by [`response_bundle`] without entries) and its entries. Compact
/// JSON splices stored resources in as stored; XML and pretty JSON parse them.
pub fn render_bundle(
    mut builder: HttpResponseBuilder,
    bundle: Value,
    entries: Vec<BundleEntry<'_>>,
    format: Format,
    pretty: bool,
) -> HttpResponse {
    if format != Format::Json || pretty || entries.is_empty() {
        return render_value(builder, &bundle_value(bundle, entries), format, pretty);
    }
    let Ok(mut text) = serde_json::to_string(&bundle) else {
        return HttpResponse::InternalServerError().finish();
    };
    // A serialized object ends with its closing brace; the entries go before it.
    text.pop();
    text.push_str(",\"entry\":[");
    for (i, entry) in entries.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        match entry {
            BundleEntry::Resource {
                full_url,
                resource: EntryResource::Stored(stored),
                mode,
            } => {
                text.push_str("{\"fullUrl\":");
                text.push_str(&Value::String(full_url).to_string());
                text.push_str(",\"resource\":");
                text.push_str(stored);
                text.push_str(",\"search\":{\"mode\":\"");
                text.push_str(mode);
                text.push_str("\"}}");
            }
            other => {
                if let Some(value) = other.into_value() {
                    text.push_str(&value.to_string());
                }
            }
        }
    }
    text.push_str("]}");
    builder.content_type(FHIR_JSON).body(text)
}

/// Renders stored JSON text: the bytes go out as stored unless another shape is needed.
pub fn render_stored(
    builder: HttpResponseBuilder,
    body: &str,
    format: Format,
    pretty: bool,
) -> HttpResponse {
    if format == Format::Json && !pretty {
        let mut builder = builder;
        return builder.content_type(FHIR_JSON).body(body.to_string());
    }
    match serde_json::from_str::<Value>(body) {
        Ok(value) => render_value(builder, &value, format, pretty),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(accept: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static("accept"),
            HeaderValue::from_str(accept).unwrap(),
        );
        map
    }

    async fn body_of(response: HttpResponse) -> Value {
        let bytes = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[actix_web::test]
    async fn spliced_bundle_equals_the_parsed_one() {
        let stored = r#"{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50}}"#;
        let entries = || {
            vec![
                BundleEntry::Resource {
                    full_url: "http://x/fhir/Observation/o1".into(),
                    resource: EntryResource::Stored(stored),
                    mode: "match",
                },
                BundleEntry::Other(serde_json::json!({"search": {"mode": "outcome"}})),
            ]
        };
        let bundle = response_bundle("searchset", Some(1), Vec::new(), Vec::new());
        let spliced = render_bundle(
            HttpResponse::Ok(),
            bundle.clone(),
            entries(),
            Format::Json,
            false,
        );
        let parsed = render_bundle(HttpResponse::Ok(), bundle, entries(), Format::Json, true);
        let spliced = body_of(spliced).await;
        assert_eq!(spliced, body_of(parsed).await);
        assert_eq!(
            spliced["entry"][0]["resource"]["valueQuantity"]["value"].to_string(),
            "1.50"
        );
        assert_eq!(spliced["entry"][0]["search"]["mode"], "match");
        assert_eq!(spliced["entry"][1]["search"]["mode"], "outcome");
    }

    fn content_type(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn bodies_in_another_charset_than_utf8_are_refused() {
        for accepted in [
            "application/fhir+json",
            "application/fhir+json; charset=utf-8",
            "application/fhir+xml;charset=UTF-8",
            "application/json-patch+json; charset=\"utf-8\"",
            "application/fhir+json; charset=utf8",
            "application/fhir+xml; Charset=\"UTF8\"",
        ] {
            assert!(body_kind(&content_type(accepted)).is_ok(), "{accepted}");
        }
        for refused in [
            "application/fhir+json; charset=utf-16",
            "application/fhir+xml; charset=latin1",
            "application/json-patch+json; charset=ISO-8859-1",
            "application/fhir+json; charset=utf-8; charset=utf-16",
            "application/fhir+json; charset=utf_8",
            "application/fhir+json; charset=",
        ] {
            let error = body_kind(&content_type(refused)).unwrap_err();
            assert_eq!(
                error.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{refused}"
            );
            assert!(error.to_string().contains("charset"), "{error}");
        }
    }

    #[test]
    fn form_bodies_take_the_same_charsets() {
        for accepted in [
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=UTF-8",
            "application/x-www-form-urlencoded;charset=utf8",
        ] {
            assert!(check_charset(accepted).is_ok(), "{accepted}");
        }
        let error =
            check_charset("application/x-www-form-urlencoded; charset=iso-8859-1").unwrap_err();
        assert_eq!(error.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(error.to_string().contains("iso-8859-1"), "{error}");
    }

    #[test]
    fn negotiates_formats() {
        assert_eq!(negotiate(None, &HeaderMap::new()).unwrap(), Format::Json);
        assert_eq!(
            negotiate(Some("application/fhir xml"), &HeaderMap::new()).unwrap(),
            Format::Xml
        );
        assert_eq!(
            negotiate(Some("xml"), &headers("application/json")).unwrap(),
            Format::Xml
        );
        assert_eq!(
            negotiate(None, &headers("application/fhir+xml")).unwrap(),
            Format::Xml
        );
        assert_eq!(
            negotiate(
                None,
                &headers("application/fhir+xml;q=0.5, application/fhir+json")
            )
            .unwrap(),
            Format::Json
        );
        assert_eq!(
            negotiate(None, &headers("text/html, */*;q=0.8")).unwrap(),
            Format::Json
        );
        assert!(negotiate(None, &headers("text/html")).is_err());
        assert_eq!(negotiate(None, &headers("text/*")).unwrap(), Format::Json);
        assert!(negotiate(Some("text/turtle"), &HeaderMap::new()).is_err());
        // `_format` stands in for `Accept`, fhirVersion included.
        let other_version = negotiate(
            Some("application/fhir+json;fhirVersion=3.0"),
            &HeaderMap::new(),
        )
        .unwrap_err();
        assert!(other_version.to_string().contains("R4"), "{other_version}");
        // With the usual space after the `;` too, and an unencoded `+` still read as one.
        assert!(negotiate(
            Some("application/fhir json; fhirVersion=3.0"),
            &HeaderMap::new()
        )
        .is_err());
        assert_eq!(
            negotiate(
                Some("application/fhir xml; fhirVersion=4.0"),
                &HeaderMap::new()
            )
            .unwrap(),
            Format::Xml
        );
        assert_eq!(
            negotiate(
                Some("application/fhir+json;fhirVersion=4.0"),
                &HeaderMap::new()
            )
            .unwrap(),
            Format::Json
        );
    }
}

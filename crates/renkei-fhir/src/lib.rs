//! The FHIR R4 content layer: turns request bytes (JSON or XML) into validated
//! `serde_json::Value` resources and renders them back as XML.
//!
//! This is the only crate that depends on fhirbolt. fhirbolt panics on some hostile input (an
//! empty array) and can overflow the stack on deep nesting, so every call into it is preceded
//! by [`prepass`] checks and wrapped in `catch_unwind`. Everything above this crate works on
//! `serde_json::Value` and bytes.

mod attribute_whitespace;
mod base64_binary;
mod narrative;
mod prepass;
mod xml_batch;
mod xml_check;
mod xml_declaration;
mod xml_namespace;

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use base64_binary::decode_base64;
pub use renkei_fhir_schema::{
    is_repeating, is_resource_type, resource_types, select_elements, summarize, Issue, IssueCode,
    Severity, SummaryMode, SUBSETTED_CODE, SUBSETTED_SYSTEM,
};

/// Deepest nesting accepted in a resource. Real resources stay far below; the limit keeps
/// recursive parsers away from the stack's end.
pub const MAX_DEPTH: usize = 64;

/// Why content was rejected; carries every issue found, each with a path where known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", summary(.issues))]
pub struct ContentError {
    pub issues: Vec<Issue>,
}

fn summary(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| {
            // Some messages name their element themselves (`Patient.gender: …`).
            if i.expression.is_empty() || i.message.starts_with(&format!("{}: ", i.expression)) {
                i.message.clone()
            } else {
                format!("{}: {}", i.expression, i.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl ContentError {
    pub fn single(code: IssueCode, expression: &str, message: impl Into<String>) -> Self {
        ContentError {
            issues: vec![Issue {
                severity: Severity::Error,
                code,
                expression: expression.to_string(),
                message: message.into(),
            }],
        }
    }
}

/// Parses FHIR JSON bytes into a resource value and validates its structure.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ContentError> {
    let value = json_value(bytes)?;
    validate(&value)?;
    Ok(value)
}

/// [`parse_json`] for a Bundle posted to the base to be processed: in a `batch`, an entry
/// whose resource alone is not valid is set aside to fail on its own
/// ([`INVALID_ENTRY`]); anything else invalid refuses the whole body.
pub fn parse_json_for_processing(bytes: &[u8]) -> Result<Value, ContentError> {
    validate_for_processing(json_value(bytes)?)
}

/// [`parse_xml`] for a Bundle posted to the base to be processed, as
/// [`parse_json_for_processing`] is for JSON. The XML document itself must be readable as
/// FHIR as a whole; what is set aside is an entry whose resource reads but is not valid.
pub fn parse_xml_for_processing(bytes: &[u8]) -> Result<Value, ContentError> {
    let whole = match xml_value(bytes) {
        Ok(value) => return validate_for_processing(value),
        Err(whole) => whole,
    };
    // A batch whose document fails to read because of some entries' resources: those
    // entries fail alone, as in JSON.
    let (bundle, unreadable) = unprefixed_document(bytes)
        .ok()
        .and_then(|document| xml_batch::without_unreadable_entries(&document))
        .ok_or(whole)?;
    let mut bundle = validate_for_processing(bundle)?;
    if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
        for (index, error) in unreadable {
            if let Some(entry) = entries.get_mut(index).and_then(Value::as_object_mut) {
                entry.insert(INVALID_ENTRY.to_string(), entry_issues(index, &error));
            }
        }
    }
    Ok(bundle)
}

/// [`validate`], except that a batch's invalid entry resources are set aside.
fn validate_for_processing(mut value: Value) -> Result<Value, ContentError> {
    match validate(&value) {
        Ok(()) => Ok(value),
        Err(_) if set_aside_invalid_batch_entries(&mut value) => Ok(value),
        Err(whole) => Err(whole),
    }
}

/// JSON bytes as a value, refusing what a map would silently lose (a property given twice).
fn json_value(bytes: &[u8]) -> Result<Value, ContentError> {
    // A byte order mark before the JSON text may be ignored (RFC 8259 §8.1); some Windows
    // clients send one.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's only error that valid JSON can cause.
        let message = if e.to_string().starts_with("recursion limit exceeded") {
            format!(
                "the JSON nests arrays and objects deeper than this server reads (128 levels, \
                 far beyond any FHIR resource): {e}"
            )
        } else {
            format!("the body is not valid JSON: {e}")
        };
        ContentError::single(IssueCode::Structure, "", message)
    })?;
    if let Some(name) = prepass::duplicate_property(bytes) {
        return Err(ContentError::single(
            IssueCode::Structure,
            "",
            format!("the property '{name}' appears twice in one object; FHIR JSON allows it once"),
        ));
    }
    Ok(value)
}

/// Where a batch entry whose resource is not valid FHIR carries why, in place of the resource
/// (an internal key: no FHIR element has a colon in its name, so no client content is
/// mistaken for it, and one a client writes fails the schema check of the Bundle).
pub const INVALID_ENTRY: &str = "renkei:invalid";

/// An OperationOutcome issue for `issue`, its diagnostics after `prefix`.
pub fn issue_json(issue: &Issue, prefix: &str) -> Value {
    let mut json = serde_json::json!({
        "severity": issue.severity.as_code(),
        "code": issue.code.as_code(),
        "diagnostics": format!("{prefix}{}", issue.message),
    });
    if !issue.expression.is_empty() {
        json["expression"] = serde_json::json!([issue.expression]);
    }
    json
}

/// In a `batch`, each entry succeeds or fails on its own (http.html#brules): when the Bundle
/// is valid apart from some entries' resources, those resources are replaced by the reason
/// they are not valid ([`INVALID_ENTRY`]), and the batch goes on. Returns false, changing
/// nothing, for any other Bundle or when the Bundle itself is not valid.
fn set_aside_invalid_batch_entries(bundle: &mut Value) -> bool {
    let is_batch = bundle.get("resourceType").and_then(Value::as_str) == Some("Bundle")
        && bundle.get("type").and_then(Value::as_str) == Some("batch");
    if !is_batch {
        return false;
    }
    let invalid: Vec<(usize, ContentError)> = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .enumerate()
                .filter_map(|(index, entry)| match entry.get("resource").map(validate) {
                    Some(Err(error)) => Some((index, error)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    // Nothing to set aside: what is invalid is the Bundle as a whole (its depth, say).
    if invalid.is_empty() {
        return false;
    }
    // Without the invalid resources the rest must hold, the rules between entries (bdl)
    // included, which is why the valid resources stay in. Each invalid one is stood in for by
    // a valid resource with its version, the only part of it those rules read (bdl-7).
    let mut skeleton = bundle.clone();
    for (index, _) in &invalid {
        if let Some(resource) = skeleton.pointer_mut(&format!("/entry/{index}/resource")) {
            let mut stand_in =
                serde_json::json!({"resourceType": "Basic", "code": {"text": "set aside"}});
            // The stand-in must be valid: a version that is not an id stands in as a digest of
            // itself, so that versions equal or different stay so (bdl-7).
            if let Some(version) = resource.pointer("/meta/versionId").and_then(Value::as_str) {
                let valid_id = (1..=64).contains(&version.len())
                    && version
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                let stand_in_version = if valid_id {
                    version.to_string()
                } else {
                    use std::hash::{Hash, Hasher};
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    version.hash(&mut hasher);
                    format!("invalid-{:016x}", hasher.finish())
                };
                stand_in["meta"] = serde_json::json!({"versionId": stand_in_version});
            }
            *resource = stand_in;
        }
    }
    if validate(&skeleton).is_err() {
        return false;
    }
    for (index, error) in invalid {
        if let Some(entry) = bundle
            .pointer_mut(&format!("/entry/{index}"))
            .and_then(Value::as_object_mut)
        {
            entry.remove("resource");
            entry.insert(INVALID_ENTRY.to_string(), entry_issues(index, &error));
        }
    }
    true
}

/// Why batch entry `index`'s resource is not valid, as a transaction's whole-Bundle
/// validation states it: each element path continues the entry's (`Patient.gender` →
/// `Bundle.entry[0].resource.gender`).
fn entry_issues(index: usize, error: &ContentError) -> Value {
    let within = format!("Bundle.entry[{index}].resource");
    let issues = error
        .issues
        .iter()
        .map(|issue| {
            let expression = match issue.expression.split_once('.') {
                Some((_, rest)) => format!("{within}.{rest}"),
                None => within.clone(),
            };
            let mut issue = issue.clone();
            issue.expression = expression;
            issue_json(&issue, &format!("{within} is not valid: "))
        })
        .collect();
    Value::Array(issues)
}

/// Parses FHIR XML bytes into the equivalent FHIR JSON value and validates it.
pub fn parse_xml(bytes: &[u8]) -> Result<Value, ContentError> {
    let value = xml_value(bytes)?;
    validate(&value)?;
    Ok(value)
}

/// FHIR XML bytes as the equivalent FHIR JSON value, not yet validated.
fn xml_value(bytes: &[u8]) -> Result<Value, ContentError> {
    let bytes = &*unprefixed_document(bytes)?;
    xml_check::check(bytes)?;
    let for_fhirbolt = xml_namespace::without_prefixed_attributes(bytes);
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        fhirbolt::xml::from_slice::<Resource>(&for_fhirbolt, Some(STRICT))
    }))
    .map_err(|_| {
        ContentError::single(
            IssueCode::Structure,
            "",
            "the XML could not be parsed as FHIR",
        )
    })?
    .map_err(|e| ContentError::single(IssueCode::Structure, "", describe_xml_error(&e)))?;
    let mut value = catch_unwind(AssertUnwindSafe(|| {
        fhirbolt::json::to_json_value(parsed, None)
    }))
    .map_err(|_| ContentError::single(IssueCode::Invalid, "", "XML conversion failed"))?
    .map_err(|e| {
        ContentError::single(
            IssueCode::Invalid,
            "",
            describe_model_error("XML conversion failed", &e.to_string()),
        )
    })?;
    // fhirbolt trims the text nodes of narratives; take them from the bytes as they came.
    narrative::restore_from_xml(bytes, &mut value);
    Ok(value)
}

/// The document without its XML declaration, balanced and not too deep, and from here on in
/// one spelling: FHIR and XHTML elements unprefixed.
fn unprefixed_document(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, ContentError> {
    let bytes = xml_declaration::without_declaration(bytes)?;
    prepass::check_xml_depth(bytes, MAX_DEPTH)?;
    xml_namespace::unprefixed(bytes)
}

/// A client-facing message for fhirbolt's refusal of an XML document. The reasons of its XML
/// reader (a duplicated attribute, a character reference to no XML character) are the
/// client's to know and hold no Rust internals; the offsets in them count in the document as
/// rewritten here, not as sent, so they would mislead and are cut.
fn describe_xml_error(error: &fhirbolt::xml::Error) -> String {
    use fhirbolt::xml::Error;
    match error {
        Error::InvalidXml(_) | Error::InvalidXmlAttribute(_) | Error::Utf8Error(_) => {
            format!(
                "the XML is not well-formed: {}",
                without_offsets(&error.to_string())
            )
        }
        _ => describe_model_error("the body is not valid FHIR XML", &error.to_string()),
    }
}

/// A quick-xml message without its offsets: `position 12: duplicated attribute, previous
/// declaration at position 3` becomes `duplicated attribute`, `Error while escaping
/// character at range 4..9: Unrecognized escape symbol: "x"` becomes the part after the
/// colon.
fn without_offsets(message: &str) -> &str {
    let message = match message.split_once(": ") {
        Some((prefix, rest))
            if prefix.starts_with("position ") || prefix.contains(" at range ") =>
        {
            rest
        }
        _ => message,
    };
    message
        .split(", previous declaration at position")
        .next()
        .unwrap_or(message)
}

/// A client-facing message for a fhirbolt error. Serde's own messages (unknown, duplicate or
/// missing field, wrong namespace) are kept without their list of expected names; anything
/// else (`ParseIntError { kind: PosOverflow }`, internal states) is not echoed.
fn describe_model_error(context: &str, error: &str) -> String {
    const KNOWN: &[&str] = &[
        "unknown field",
        "duplicate field",
        "missing field",
        "invalid XML namespace",
        "invalid XML event",
    ];
    if KNOWN.iter().any(|k| error.starts_with(k)) && !error.contains('{') {
        let short = error.split(", expected").next().unwrap_or(error);
        format!("{context}: {short}")
    } else {
        context.to_string()
    }
}

/// Full structural validation of a resource value: JSON-level rules, then the element
/// definitions of R4 (paths, types, primitive formats, required elements and codes), then
/// fhirbolt's strict model as a last line of defence.
pub fn validate(value: &Value) -> Result<(), ContentError> {
    let mut issues = prepass::check_json(value, MAX_DEPTH);
    if !issues.is_empty() {
        return Err(ContentError { issues });
    }
    issues = renkei_fhir_schema::validate(value);
    if issues.iter().any(|i| i.severity == Severity::Error) {
        return Err(ContentError { issues });
    }
    model_check(value)
}

fn model_check(value: &Value) -> Result<(), ContentError> {
    let owned = value.clone();
    let result = catch_unwind(AssertUnwindSafe(move || model_of(owned).map(|_| ())));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ContentError::single(
            IssueCode::Structure,
            "",
            describe_model_error(
                "the resource does not match the FHIR R4 model",
                &e.to_string(),
            ),
        )),
        Err(_) => Err(ContentError::single(
            IssueCode::Structure,
            "",
            "the resource could not be checked against the FHIR R4 model",
        )),
    }
}

const STRICT: DeserializationConfig = DeserializationConfig {
    mode: DeserializationMode::Strict,
};

/// A resource value as fhirbolt's strict model. fhirbolt can panic: call it inside
/// `catch_unwind`.
fn model_of(mut value: Value) -> Result<Resource, fhirbolt::json::Error> {
    prepare_for_fhirbolt(&mut value);
    fhirbolt::json::from_json_value::<Resource>(value, Some(STRICT))
}

/// Rewrites what fhirbolt would mishandle, at any depth:
///
/// - A property whose value is an empty array is removed: FHIR JSON has none (an absent list
///   is left out; input with one is refused before this), and fhirbolt panics on them.
/// - A number becomes a string of the same text. fhirbolt takes numbers through serde's
///   visitors and loses digits there: a whole number from 2^63 to 2^64-1 is cast to a negative
///   i64, one from 2^64 up to 2^128 is refused, and a fraction handed over as an f64
///   (`0.0000001`) comes back in another spelling (`1e-7`). A string it keeps as the exact
///   text of a decimal, and parses at an integer element (refusing one beyond 32 bits instead
///   of wrapping it). Numbers can stand only at those elements: the schema check, which runs
///   first on input, refuses a number anywhere else.
fn prepare_for_fhirbolt(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !matches!(v, Value::Array(items) if items.is_empty()));
            map.values_mut().for_each(prepare_for_fhirbolt);
        }
        Value::Array(items) => items.iter_mut().for_each(prepare_for_fhirbolt),
        Value::Number(number) => *value = Value::String(number.to_string()),
        _ => {}
    }
}

/// Renders a resource value as FHIR XML.
///
/// Narratives are written as stored, never re-parsed by fhirbolt; one stored before narratives
/// were checked that is not well-formed XHTML becomes a `div` with its string as escaped text,
/// so it cannot make the whole response (e.g. a search Bundle) fail. See `narrative.rs`.
/// Every other value is an attribute: numbers keep the digits they have in JSON, and tabs and
/// line breaks are character references, which XML parsers do not turn into spaces.
pub fn to_xml(value: &Value) -> Result<String, ContentError> {
    let mut owned = value.clone();
    let narratives = narrative::take_divs(&mut owned);
    let result = catch_unwind(AssertUnwindSafe(move || {
        let resource = model_of(owned).map_err(|e| e.to_string())?;
        fhirbolt::xml::to_string(&resource, None).map_err(|e| e.to_string())
    }));
    match result {
        // Before the narratives go back: their text content is written as stored.
        Ok(Ok(xml)) => Ok(without_forbidden_chars(narrative::put_back(
            attribute_whitespace::escape_in_attributes(xml),
            &narratives,
        ))),
        Ok(Err(message)) => Err(ContentError::single(
            IssueCode::Invalid,
            "",
            format!("cannot render XML: {message}"),
        )),
        Err(_) => Err(ContentError::single(
            IssueCode::Invalid,
            "",
            "cannot render XML",
        )),
    }
}

/// Whether XML 1.0 (§2.2, `Char`) forbids a character anywhere in a document, even as a
/// character reference: the C0 controls other than tab, line feed and carriage return, and
/// U+FFFE / U+FFFF. (Surrogates cannot occur in a Rust `str`.)
fn forbidden_in_xml(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}')
}

/// `xml` with every character XML 1.0 forbids replaced by U+FFFD. JSON may carry them
/// (`\u0000` in a stored resource, a control character echoed from a query into an
/// OperationOutcome), but a document holding one is not well-formed and an XML client can
/// read none of the response; no markup character is among them, so the whole document can
/// be mended in one pass after it is written.
fn without_forbidden_chars(xml: String) -> String {
    if !xml.chars().any(forbidden_in_xml) {
        return xml;
    }
    xml.chars()
        .map(|c| if forbidden_in_xml(c) { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn xml_bundle(kind: &str, prefix: &str) -> String {
        let p = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}:")
        };
        let ns = if prefix.is_empty() {
            "xmlns=\"http://hl7.org/fhir\"".to_string()
        } else {
            format!("xmlns:{prefix}=\"http://hl7.org/fhir\"")
        };
        format!(
            r#"<{p}Bundle {ns}><{p}type value="{kind}"/>
            <{p}entry><{p}resource><{p}Patient><{p}gender value="male"/></{p}Patient></{p}resource>
              <{p}request><{p}method value="POST"/><{p}url value="Patient"/></{p}request></{p}entry>
            <{p}entry><{p}resource><{p}Patient><{p}nickname value="x"/></{p}Patient></{p}resource>
              <{p}request><{p}method value="POST"/><{p}url value="Patient"/></{p}request></{p}entry>
            <{p}entry><{p}request><{p}method value="GET"/><{p}url value="Patient"/></{p}request></{p}entry>
            <{p}entry><{p}resource><{p}Patient><{p}gender value="neither"/></{p}Patient></{p}resource>
              <{p}request><{p}method value="POST"/><{p}url value="Patient"/></{p}request></{p}entry>
            </{p}Bundle>"#
        )
    }

    #[test]
    fn an_xml_batch_entry_that_does_not_read_fails_alone() {
        for prefix in ["", "f"] {
            let bundle = parse_xml_for_processing(xml_bundle("batch", prefix).as_bytes()).unwrap();
            let entries = bundle["entry"].as_array().unwrap();
            assert_eq!(entries.len(), 4, "{bundle}");
            assert_eq!(entries[0]["resource"]["gender"], "male");
            assert!(entries[1].get("resource").is_none(), "{bundle}");
            let why = entries[1][INVALID_ENTRY].to_string();
            assert!(why.contains("Bundle.entry[1].resource"), "{why}");
            assert!(why.contains("nickname"), "{why}");
            assert_eq!(entries[2]["request"]["method"], "GET");
            // Read, but not valid: set aside as JSON's are.
            assert!(
                entries[3][INVALID_ENTRY].to_string().contains("neither"),
                "{bundle}"
            );
            // A transaction stands or falls whole.
            assert!(
                parse_xml_for_processing(xml_bundle("transaction", prefix).as_bytes()).is_err()
            );
        }
    }

    /// bdl-7 reads the versions of the resources set aside too: a repeated fullUrl with the
    /// same version fails the batch whole, one with different versions only the invalid entry.
    #[test]
    fn a_batch_keeps_bdl_7_over_the_entries_it_sets_aside() {
        let batch = |second_version: Option<&str>| {
            let mut invalid = serde_json::json!({"resourceType": "Patient", "gender": "bogus",
                "meta": {"versionId": "1"}});
            match second_version {
                Some(version) => invalid["meta"]["versionId"] = serde_json::json!(version),
                None => {
                    invalid.as_object_mut().unwrap().remove("meta");
                }
            }
            serde_json::json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001",
                 "resource": {"resourceType": "Patient", "meta": {"versionId": "1"}},
                 "request": {"method": "POST", "url": "Patient"}},
                {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001", "resource": invalid,
                 "request": {"method": "POST", "url": "Patient"}}]})
            .to_string()
        };
        let repeated = parse_json_for_processing(batch(Some("1")).as_bytes()).unwrap_err();
        assert!(
            repeated.issues.iter().any(|i| i.message.contains("bdl-7")),
            "{:?}",
            repeated.issues
        );
        for other_version in [Some("2"), None, Some("bad version!")] {
            let bundle = parse_json_for_processing(batch(other_version).as_bytes()).unwrap();
            assert!(bundle["entry"][1].get(INVALID_ENTRY).is_some(), "{bundle}");
            assert!(bundle["entry"][0].get("resource").is_some(), "{bundle}");
        }
    }

    #[test]
    fn empty_lists_render_as_absent_elements() {
        let bundle = serde_json::json!({"resourceType": "Bundle", "type": "batch-response",
            "entry": [], "link": [{"relation": "self", "url": "http://x", "extension": []}]});
        let xml = to_xml(&bundle).unwrap();
        assert!(xml.contains("<type value=\"batch-response\"/>"), "{xml}");
        assert!(!xml.contains("<entry"), "{xml}");
    }

    #[test]
    fn rejects_empty_array_without_panicking() {
        let err = parse_json(br#"{"resourceType":"Patient","name":[]}"#).unwrap_err();
        assert!(err.issues.iter().any(|i| i.expression == "Patient.name"));
    }

    #[test]
    fn rejects_malformed_json() {
        assert!(parse_json(b"{\"resourceType\":").is_err());
        assert!(parse_json(b"[]").is_err());
    }

    #[test]
    fn xml_round_trip_keeps_content() {
        let json = r#"{"resourceType":"Patient","id":"p1","gender":"female","birthDate":"1970-01-02","name":[{"family":"山田","given":["花子"]}]}"#;
        let value = parse_json(json.as_bytes()).unwrap();
        let xml = to_xml(&value).unwrap();
        assert!(xml.contains("山田"));
        let back = parse_xml(xml.as_bytes()).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn xml_narrative_whitespace_is_preserved() {
        let div = r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Peter James <b>Chalmers</b> (Jim)</p>
  <p>second</p></div>"#;
        let xml = format!(
            r##"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>{div}</text><contained><Patient><id value="c"/><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">x <i>y</i></div></text></Patient></contained><link><other><reference value="#c"/></other><type value="seealso"/></link></Patient>"##
        );
        let value = parse_xml(xml.as_bytes()).unwrap();
        assert_eq!(value["text"]["div"], div);
        assert_eq!(
            value["contained"][0]["text"]["div"],
            r#"<div xmlns="http://www.w3.org/1999/xhtml">x <i>y</i></div>"#
        );
        let rendered = to_xml(&value).unwrap();
        assert!(rendered.contains(div), "{rendered}");
        assert!(rendered.contains(">x <i>y</i></div>"), "{rendered}");
        assert_eq!(parse_xml(rendered.as_bytes()).unwrap(), value);
    }

    const XHTML: &str = "http://www.w3.org/1999/xhtml";

    fn organization_with(div: &str) -> Value {
        serde_json::json!({
            "resourceType": "Organization",
            "text": {"status": "generated", "div": div},
            "name": "Org"
        })
    }

    #[track_caller]
    fn rejected_narrative(value: &Value, path: &str, reason: &str) {
        let bytes = serde_json::to_vec(value).unwrap();
        let err = parse_json(&bytes).unwrap_err();
        let issue = err
            .issues
            .iter()
            .find(|i| i.expression == path)
            .unwrap_or_else(|| panic!("no issue at {path}: {err}"));
        assert!(
            issue.message.starts_with(&format!("{path}: ")),
            "{}",
            issue.message
        );
        assert!(issue.message.contains(reason), "{}", issue.message);
    }

    #[test]
    fn json_narratives_are_checked() {
        for (inner, reason) in [
            ("<p>x</div>", "not well-formed"),
            ("a ]]> b", "']]>' is not allowed in text"),
            ("&nbsp;", "not an entity XML defines"),
            ("<script>alert(1)</script>x", "<script>"),
            ("<iframe src=\"https://e.org\"></iframe>x", "<iframe>"),
            ("<p onclick=\"alert(1)\">x</p>", "'onclick'"),
            ("<a href=\"javascript:alert(1)\">x</a>", "'javascript:'"),
            (" <p> </p> ", "txt-2"),
        ] {
            let div = format!("<div xmlns=\"{XHTML}\">{inner}</div>");
            rejected_narrative(&organization_with(&div), "Organization.text.div", reason);
        }
        rejected_narrative(
            &organization_with("<p xmlns=\"http://www.w3.org/1999/xhtml\">x</p>"),
            "Organization.text.div",
            "single <div>",
        );
        // Contained resources and Bundle entries: wherever validation walks.
        let bad = format!("<div xmlns=\"{XHTML}\"><p>x</div>");
        let mut contained = organization_with(&format!("<div xmlns=\"{XHTML}\">ok</div>"));
        contained["contained"] = serde_json::json!([organization_with(&bad)]);
        contained["contained"][0]["id"] = "c1".into();
        rejected_narrative(
            &contained,
            "Organization.contained[0].text.div",
            "not well-formed",
        );
        let bundle = serde_json::json!({
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": organization_with(&bad)}]
        });
        rejected_narrative(
            &bundle,
            "Bundle.entry[0].resource.text.div",
            "not well-formed",
        );
    }

    #[test]
    fn xml_narratives_are_checked() {
        for inner in [
            "<script>alert(1)</script>x",
            "<p onclick=\"alert(1)\">x</p>",
            "a ]]> b",
            " ",
        ] {
            let xml = format!(
                r#"<Organization xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="{XHTML}">{inner}</div></text></Organization>"#
            );
            let err = parse_xml(xml.as_bytes()).unwrap_err();
            assert!(
                err.issues
                    .iter()
                    .any(|i| i.expression == "Organization.text.div"),
                "{inner}: {err}"
            );
        }
    }

    #[test]
    fn well_formed_narratives_round_trip_through_xml() {
        let div = format!(
            "<div xmlns=\"{XHTML}\"><p title=\"a > b ]]> c\">x ]]&gt; y &amp; z &lt;w&gt; &#160;</p>\n  <b>bold</b> tail</div>"
        );
        let value = parse_json(&serde_json::to_vec(&organization_with(&div)).unwrap()).unwrap();
        let xml = to_xml(&value).unwrap();
        assert!(xml.contains(&div), "{xml}");
        assert!(!xml.contains("y ]]>"), "{xml}");
        assert_eq!(parse_xml(xml.as_bytes()).unwrap(), value);
    }

    #[test]
    fn stored_malformed_narratives_do_not_break_xml() {
        // What could be stored before narratives were checked, in a search result.
        let good = format!("<div xmlns=\"{XHTML}\">fine</div>");
        let bundle = serde_json::json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": organization_with(&format!("<div xmlns=\"{XHTML}\"><p>x</div>"))},
                {"resource": organization_with(&format!("<div xmlns=\"{XHTML}\">a ]]> b</div>"))},
                {"resource": organization_with("not xhtml at all")},
                {"resource": organization_with(&good)}
            ]
        });
        let xml = to_xml(&bundle).unwrap();
        prepass::check_xml_depth(xml.as_bytes(), MAX_DEPTH).unwrap();
        assert!(!xml.contains("]]>"), "{xml}");
        assert!(
            xml.contains(&format!(
                "<div xmlns=\"{XHTML}\">&lt;div xmlns=\"{XHTML}\"&gt;&lt;p&gt;x&lt;/div&gt;</div>"
            )),
            "{xml}"
        );
        assert!(
            xml.contains(&format!("<div xmlns=\"{XHTML}\">not xhtml at all</div>")),
            "{xml}"
        );
        assert!(xml.contains(&good), "{xml}");
        // The XML is a valid FHIR document again: it parses, and the fallbacks are valid
        // narratives holding the stored strings as text.
        let back = parse_xml(xml.as_bytes()).unwrap();
        assert_eq!(back["entry"][3]["resource"]["text"]["div"], good.as_str());
    }

    /// An Observation whose `valueQuantity.value` is `number`, written as JSON text.
    fn observation_with_value(number: &str) -> Value {
        let json = format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{number}}}}}"#
        );
        parse_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn decimals_render_in_xml_with_the_digits_they_have_in_json() {
        for number in [
            "0",
            "-0",
            "1.50",
            "0.0000001",
            "1e+3",
            "-2.5e-10",
            "9223372036854775807",
            "9223372036854775808",
            "10000000000000000000",
            "18446744073709551615",
            "18446744073709551616",
            "18446744073709551616.0",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "340282366920938463463374607431768211456",
            "100000000000000000000000000000000000000000000000000",
        ] {
            let value = observation_with_value(number);
            assert_eq!(value["valueQuantity"]["value"].to_string(), number);
            let xml = to_xml(&value).unwrap();
            assert!(
                xml.contains(&format!("<value value=\"{number}\"/>")),
                "{number}: {xml}"
            );
            assert_eq!(parse_xml(xml.as_bytes()).unwrap(), value, "{number}");
        }
    }

    #[test]
    fn whole_decimals_beyond_64_bits_are_accepted_from_xml() {
        let xml = r#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code><valueQuantity><value value="123456789012345678901234567890"/></valueQuantity></Observation>"#;
        let value = parse_xml(xml.as_bytes()).unwrap();
        assert_eq!(
            value["valueQuantity"]["value"].to_string(),
            "123456789012345678901234567890"
        );
        assert!(to_xml(&value)
            .unwrap()
            .contains(r#"<value value="123456789012345678901234567890"/>"#));
    }

    #[test]
    fn integers_stay_bounded_to_32_bits() {
        for (number, accepted) in [
            ("2147483647", true),
            ("-2147483648", true),
            ("2147483648", false),
            ("-2147483649", false),
            ("9223372036854775808", false),
            ("18446744073709551616", false),
        ] {
            let json = format!(r#"{{"resourceType":"Patient","multipleBirthInteger":{number}}}"#);
            match parse_json(json.as_bytes()) {
                Ok(value) => {
                    assert!(accepted, "{number} was accepted");
                    let xml = to_xml(&value).unwrap();
                    assert!(
                        xml.contains(&format!("<multipleBirthInteger value=\"{number}\"/>")),
                        "{xml}"
                    );
                }
                Err(err) => {
                    assert!(!accepted, "{number}: {err}");
                    assert_eq!(err.issues[0].expression, "Patient.multipleBirthInteger");
                }
            }
        }
    }

    #[test]
    fn tabs_and_line_breaks_in_strings_survive_xml() {
        let value = parse_json(
            br#"{"resourceType":"Patient","name":[{"text":"line1\nline2\tTab\r\nend"}],"text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">a\n\tb\r\nc</div>"}}"#,
        )
        .unwrap();
        let xml = to_xml(&value).unwrap();
        assert!(
            xml.contains(r#"<text value="line1&#10;line2&#9;Tab&#13;&#10;end"/>"#),
            "{xml}"
        );
        // Narrative text content is written as stored.
        assert!(
            xml.contains("<div xmlns=\"http://www.w3.org/1999/xhtml\">a\n\tb\r\nc</div>"),
            "{xml}"
        );
        let back = parse_xml(xml.as_bytes()).unwrap();
        assert_eq!(back["name"][0]["text"], "line1\nline2\tTab\r\nend");
        assert_eq!(back["name"], value["name"]);
    }

    #[test]
    fn characters_xml_forbids_become_replacement_characters() {
        let outcome = serde_json::json!({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "invalid",
            "diagnostics": "a\u{1}b\u{0}c\u{B}\u{C}\u{1F}\u{FFFE}\u{FFFF}\td\u{FFFD}"}]});
        let xml = to_xml(&outcome).unwrap();
        assert!(!xml.chars().any(forbidden_in_xml), "{xml:?}");
        assert!(
            xml.contains(
                "a\u{FFFD}b\u{FFFD}c\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}&#9;d\u{FFFD}"
            ),
            "{xml:?}"
        );
        let back = parse_xml(xml.as_bytes()).unwrap();
        assert_eq!(
            back["issue"][0]["diagnostics"],
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\td\u{FFFD}"
        );
        // A stored resource, narrative included, as JSON allowed it to be written.
        let patient = serde_json::json!({"resourceType": "Patient", "name": [{"family": "a\u{0}b"}],
            "text": {"status": "generated",
                "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x\u{1}y</div>"}});
        let xml = to_xml(&patient).unwrap();
        assert!(!xml.chars().any(forbidden_in_xml), "{xml:?}");
        assert!(xml.contains("<family value=\"a\u{FFFD}b\"/>"), "{xml:?}");
        // Well-formed text is left as it is.
        let plain =
            serde_json::json!({"resourceType": "Patient", "name": [{"family": "山田\u{FFFD}"}]});
        assert!(to_xml(&plain).unwrap().contains("山田\u{FFFD}"));
    }

    const PATIENT: &str =
        r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>"#;

    #[test]
    fn xml_declarations_are_read_as_xml_defines_them() {
        for declaration in [
            r#"<?xml version="1.0" encoding="utf-8"?>"#,
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
            "\u{FEFF}<?xml version='1.0' encoding='Utf-8' standalone='no'?>\n",
        ] {
            let value = parse_xml(format!("{declaration}{PATIENT}").as_bytes())
                .unwrap_or_else(|e| panic!("{declaration}: {e}"));
            assert_eq!(value["active"], true);
        }
        let error = parse_xml(
            format!(r#"<?xml version="1.0" encoding="ISO-8859-1"?>{PATIENT}"#).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "FHIR XML must be UTF-8; the declaration names ISO-8859-1"
        );
        let deep = format!(
            r#"{{"resourceType":"Basic","extension":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let said = parse_json(deep.as_bytes()).unwrap_err().to_string();
        assert!(said.contains("deeper than this server reads"), "{said}");
        let utf16: Vec<u8> = std::iter::once(0xFEFF_u16)
            .chain(format!(r#"<?xml version="1.0" encoding="UTF-16"?>{PATIENT}"#).encode_utf16())
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(
            parse_xml(&utf16).unwrap_err().to_string(),
            "FHIR XML must be UTF-8; the body is UTF-16"
        );
        // A declaration taken off does not open the door to a DOCTYPE and its entities.
        let external = r#"<?xml version="1.0" encoding="utf-8" standalone="no"?><!DOCTYPE Patient [<!ENTITY x SYSTEM "file:///etc/passwd">]><Patient xmlns="http://hl7.org/fhir"><name><family value="&x;"/></name></Patient>"#;
        let error = parse_xml(external.as_bytes()).unwrap_err();
        assert!(error.to_string().contains("Doctype"), "{error}");
    }

    #[test]
    fn xml_that_is_not_well_formed_is_refused_with_the_reason() {
        for (xml, reason) in [
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><active value="true" value="false"/></Patient>"#,
                "<active> has the attribute 'value' twice",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="a&#xD800;b"/></name></Patient>"#,
                "the XML is not well-formed: '55296' is not a valid codepoint",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="a&foo;b"/></name></Patient>"#,
                "the XML is not well-formed: Unrecognized escape symbol",
            ),
        ] {
            let error = parse_xml(xml.as_bytes()).unwrap_err().to_string();
            assert!(error.contains(reason), "{xml}: {error}");
            assert!(
                !error.contains("position") && !error.contains("range"),
                "{error}"
            );
        }
    }

    #[test]
    fn xml_lang_on_the_narrative_div_round_trips() {
        let div =
            r#"<div xmlns="http://www.w3.org/1999/xhtml" xml:lang="ja" lang="ja"><p>hi</p></div>"#;
        let value = parse_json(&serde_json::to_vec(&organization_with(div)).unwrap()).unwrap();
        let xml = to_xml(&value).unwrap();
        assert!(xml.contains(div), "{xml}");
        assert_eq!(parse_xml(xml.as_bytes()).unwrap(), value);
        // The same with prefixed FHIR elements, which the reader rewrites first.
        let prefixed = format!(
            r#"<f:Organization xmlns:f="http://hl7.org/fhir"><f:text><f:status value="generated"/>{div}</f:text><f:name value="Org"/></f:Organization>"#
        );
        assert_eq!(parse_xml(prefixed.as_bytes()).unwrap(), value);
        // `xml:lang` is for XHTML: a FHIR element still cannot have it.
        let error = parse_xml(
            br#"<Patient xmlns="http://hl7.org/fhir"><active xml:lang="ja" value="true"/></Patient>"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("'xml:lang'"), "{error}");
    }

    #[test]
    fn schema_instance_attributes_on_the_root_are_ignored() {
        let located = |root: &str, child: &str| {
            format!(
                r#"<{root} xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir ../../schema/fhir-single.xsd"><active value="true"{child}/></{root}>"#
            )
        };
        let value = parse_xml(located("Patient", "").as_bytes()).unwrap();
        assert_eq!(value, parse_xml(PATIENT.as_bytes()).unwrap());
        let prefixed = r#"<f:Patient xmlns:f="http://hl7.org/fhir" xmlns:s="http://www.w3.org/2001/XMLSchema-instance" s:noNamespaceSchemaLocation="x.xsd"><f:active value="true"/></f:Patient>"#;
        assert_eq!(parse_xml(prefixed.as_bytes()).unwrap(), value);
        // Only on the root, only in that namespace.
        let error = parse_xml(located("Patient", " xsi:type=\"x\"").as_bytes()).unwrap_err();
        assert!(error.to_string().contains("'xsi:type'"), "{error}");
        let error = parse_xml(
            br#"<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="urn:not-xsi" xsi:schemaLocation="x"><active value="true"/></Patient>"#,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("'xsi:schemaLocation'"),
            "{error}"
        );
    }

    #[test]
    fn rejects_deep_xml_nesting() {
        let mut xml = String::from("<Patient xmlns=\"http://hl7.org/fhir\">");
        for _ in 0..200 {
            xml.push_str("<extension url=\"x\">");
        }
        assert!(parse_xml(xml.as_bytes()).is_err());
    }

    #[test]
    fn prefixed_xml_reads_as_the_unprefixed_document() {
        let plain = parse_xml(
            br#"<Patient xmlns="http://hl7.org/fhir"><id value="p1"/><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>a <b>b</b> c</p></div></text><active value="true"/></Patient>"#,
        )
        .unwrap();
        let prefixed = parse_xml(
            br#"<f:Patient xmlns:f="http://hl7.org/fhir"><f:id value="p1"/><f:text><f:status value="generated"/><h:div xmlns:h="http://www.w3.org/1999/xhtml"><h:p>a <h:b>b</h:b> c</h:p></h:div></f:text><f:active value="true"/></f:Patient>"#,
        )
        .unwrap();
        assert_eq!(prefixed, plain);
        let bundle = parse_xml_for_processing(
            br#"<f:Bundle xmlns:f="http://hl7.org/fhir"><f:type value="batch"/><f:entry><f:resource><f:Patient><f:active value="true"/></f:Patient></f:resource><f:request><f:method value="POST"/><f:url value="Patient"/></f:request></f:entry></f:Bundle>"#,
        )
        .unwrap();
        assert_eq!(bundle["entry"][0]["resource"]["active"], true);
        let other =
            parse_xml(br#"<f:Patient xmlns:f="urn:x"><f:active value="true"/></f:Patient>"#)
                .unwrap_err();
        assert!(other.to_string().contains("'urn:x'"), "{other}");
    }

    #[test]
    fn xml_missing_required_element_is_reported_as_json_reports_it() {
        let cases: [(&[u8], &[u8]); 4] = [
            (
                br#"{"resourceType":"Observation","code":{"text":"x"}}"#,
                br#"<Observation xmlns="http://hl7.org/fhir"><code><text value="x"/></code></Observation>"#,
            ),
            (
                br#"{"resourceType":"Observation"}"#,
                br#"<Observation xmlns="http://hl7.org/fhir"/>"#,
            ),
            (
                br#"{"resourceType":"Patient","contained":[{"resourceType":"Observation","status":"final"}]}"#,
                br#"<Patient xmlns="http://hl7.org/fhir"><contained><Observation><status value="final"/></Observation></contained></Patient>"#,
            ),
            (
                br#"{"resourceType":"Patient","text":{"status":"generated"}}"#,
                br#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/></text></Patient>"#,
            ),
        ];
        for (json, xml) in cases {
            let from_json = parse_json(json).unwrap_err();
            let from_xml = parse_xml(xml).unwrap_err();
            let required = |e: &ContentError| -> Vec<Issue> {
                e.issues
                    .iter()
                    .filter(|i| i.code == IssueCode::Required)
                    .cloned()
                    .collect()
            };
            assert!(!required(&from_xml).is_empty(), "{from_xml}");
            assert_eq!(
                required(&from_xml),
                required(&from_json),
                "{}",
                String::from_utf8_lossy(xml)
            );
            // The text names the element too, as for JSON.
            let first = &required(&from_xml)[0];
            assert!(
                from_xml.to_string().contains(&first.expression),
                "{from_xml}"
            );
        }
    }
}

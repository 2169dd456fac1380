//! Server-owned parts of a stored resource: id, meta.versionId, meta.lastUpdated.

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value};

/// Renders milliseconds since the epoch as a FHIR instant (UTC, millisecond precision).
pub fn format_instant(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a FHIR date, dateTime or instant into milliseconds since the epoch at the start of
/// its precision (`2024` → 2024-01-01T00:00:00 in the server's zone). A value without a zone
/// is read in the server's zone, as search reads it, so `_since`, `_lastUpdated` and
/// `audit export --since` agree.
pub fn parse_instant_ms(text: &str) -> Option<i64> {
    renkei_search::date::parse_range(text).map(|range| range.low)
}

/// The first and last millisecond of a care date bound (`$everything`'s `start`/`end`), read
/// as each record's care date is (`resources.clinical_date`, from CONSENT.md's clinical date
/// paths): a value without a zone is Japan time, so `start=2025-12-02` takes a record dated
/// `2025-12-02` whatever the server's `time_zone`.
pub fn care_date_range(text: &str) -> Option<(i64, i64)> {
    renkei_consent::fhir_time_range(text)
}

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Returns the resource with `id` and server meta set, keys in the canonical order
/// (resourceType, id, meta, then the rest as the client sent them).
pub(crate) fn stamp(resource: Value, id: &str, version: i64, last_updated: i64) -> Value {
    let Value::Object(mut map) = resource else {
        return resource;
    };
    let resource_type = map.remove("resourceType");
    map.remove("id");
    let mut meta = match map.remove("meta") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    meta.remove("versionId");
    meta.remove("lastUpdated");
    let mut new_meta = Map::new();
    new_meta.insert("versionId".into(), Value::String(version.to_string()));
    new_meta.insert(
        "lastUpdated".into(),
        Value::String(format_instant(last_updated)),
    );
    new_meta.extend(meta);
    let mut out = Map::new();
    if let Some(rt) = resource_type {
        out.insert("resourceType".into(), rt);
    }
    out.insert("id".into(), Value::String(id.to_string()));
    out.insert("meta".into(), Value::Object(new_meta));
    out.extend(map);
    Value::Object(out)
}

/// The `meta.extension` by which every stored resource names the facility holding it.
pub const CUSTODIAN_EXTENSION: &str = "https://renkei.example/fhir/StructureDefinition/custodian";

/// Sets the custodian extension in `meta` (server-owned: a client's own value is replaced, or
/// removed for unowned directory data), so a resource read through a linked view or a search
/// still says which facility holds it.
pub(crate) fn mark_custodian(resource: &mut Value, custodian: Option<&str>) {
    let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) else {
        return;
    };
    let mut extensions: Vec<Value> = match meta.remove("extension") {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    extensions.retain(|e| e.get("url").and_then(Value::as_str) != Some(CUSTODIAN_EXTENSION));
    if let Some(custodian) = custodian {
        extensions.push(serde_json::json!({
            "url": CUSTODIAN_EXTENSION,
            "valueReference": {"reference": custodian},
        }));
    }
    if !extensions.is_empty() {
        meta.insert("extension".into(), Value::Array(extensions));
    }
}

/// Whether `id` is a valid FHIR id: 1–64 of `[A-Za-z0-9-.]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        // `.` and `..` fit the R4 pattern, but a URL holding them as a segment is resolved
        // away by every RFC 3986 client (`Basic/../_history/1` is `_history/1`).
        && !id.bytes().all(|b| b == b'.')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn stamps_meta_first_and_replaces_client_values() {
        let v = stamp(
            json!({"resourceType":"Patient","active":true,"meta":{"versionId":"9","profile":["x"]}}),
            "p1",
            2,
            0,
        );
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"2","lastUpdated":"1970-01-01T00:00:00.000Z","profile":["x"]},"active":true}"#
        );
    }

    #[test]
    fn parses_partial_dates() {
        assert_eq!(parse_instant_ms("1970"), Some(0));
        assert_eq!(parse_instant_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_instant_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_instant_ms("1970-01-01T00:00:01.5+00:00"), Some(1500));
        assert_eq!(parse_instant_ms("garbage"), None);
    }

    #[test]
    fn checks_ids() {
        assert!(is_valid_id("abc-1.2"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id("."));
        assert!(!is_valid_id(".."));
        assert!(is_valid_id(".a."));
    }
}

//! The invariants R4 sets on every Bundle (bdl-1 to bdl-12), for a Bundle stored as a
//! resource, nested in one, or posted to the base. Structural validation cannot see them: each
//! relates one element to another (the Bundle's type to its entries' elements, one entry's
//! fullUrl to the others').

use std::collections::HashSet;

use serde_json::{Map, Value};

/// One broken invariant: where (the Bundle itself, or its entry `entry` and, within it, the
/// element `element`) and what the invariant asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RuleBreak {
    pub entry: Option<usize>,
    pub element: Option<&'static str>,
    pub message: String,
}

impl RuleBreak {
    fn bundle(element: Option<&'static str>, message: String) -> RuleBreak {
        RuleBreak {
            entry: None,
            element,
            message,
        }
    }

    fn entry(index: usize, element: Option<&'static str>, message: String) -> RuleBreak {
        RuleBreak {
            entry: Some(index),
            element,
            message,
        }
    }
}

/// The bdl invariants `bundle` breaks, in the order of the specification's keys and then of
/// the entries. A Bundle without a readable `type` breaks only what does not depend on it
/// (its missing type is reported by structural validation).
pub(crate) fn bundle_rule_breaks(bundle: &Map<String, Value>) -> Vec<RuleBreak> {
    let typed = bundle.get("type").and_then(Value::as_str).is_some();
    let bundle_type = bundle.get("type").and_then(Value::as_str).unwrap_or("");
    let entries: Vec<(usize, &Map<String, Value>)> = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .enumerate()
                .filter_map(|(index, entry)| entry.as_object().map(|entry| (index, entry)))
                .collect()
        })
        .unwrap_or_default();
    let mut breaks = Vec::new();

    if typed && bundle.contains_key("total") && !matches!(bundle_type, "searchset" | "history") {
        breaks.push(RuleBreak::bundle(
            Some("total"),
            format!("a Bundle of type '{bundle_type}' has no total; only a searchset or history has one (bdl-1)"),
        ));
    }
    // bdl-3 and bdl-4: which Bundle types have a request, and a response, in every entry.
    let entry_parts = [
        ("request", ["batch", "transaction", "history"], "bdl-3"),
        (
            "response",
            ["batch-response", "transaction-response", "history"],
            "bdl-4",
        ),
    ];
    for &(index, entry) in entries.iter().filter(|_| typed) {
        if entry.contains_key("search") && bundle_type != "searchset" {
            breaks.push(RuleBreak::entry(
                index,
                Some("search"),
                format!("entry.search belongs to a searchset, not to a Bundle of type '{bundle_type}' (bdl-2)"),
            ));
        }
        for (part, holders, key) in entry_parts {
            match (entry.contains_key(part), holders.contains(&bundle_type)) {
                (false, true) => breaks.push(RuleBreak::entry(
                    index,
                    None,
                    format!("each entry of a Bundle of type '{bundle_type}' needs a {part} ({key})"),
                )),
                (true, false) => breaks.push(RuleBreak::entry(
                    index,
                    Some(part),
                    format!(
                        "entry.{part} belongs to a {}, not to a Bundle of type '{bundle_type}' ({key})",
                        holders.join(", ")
                    ),
                )),
                _ => {}
            }
        }
    }
    for &(index, entry) in &entries {
        if !["resource", "request", "response"]
            .iter()
            .any(|element| entry.contains_key(*element))
        {
            breaks.push(RuleBreak::entry(
                index,
                None,
                "an entry holds a resource, a request or a response (bdl-5)".to_string(),
            ));
        }
    }
    if bundle_type != "history" {
        let mut seen: HashSet<(&str, Option<&str>)> = HashSet::new();
        for &(index, entry) in &entries {
            let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) else {
                continue;
            };
            let version = entry
                .get("resource")
                .and_then(|resource| resource.pointer("/meta/versionId"))
                .and_then(Value::as_str);
            if !seen.insert((full_url, version)) {
                breaks.push(RuleBreak::entry(
                    index,
                    Some("fullUrl"),
                    format!("fullUrl '{full_url}' is given to an earlier entry too; fullUrls are unique in a Bundle unless they hold different versions of one resource (bdl-7)"),
                ));
            }
        }
    }
    for &(index, entry) in &entries {
        if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
            if full_url.contains("/_history/") {
                breaks.push(RuleBreak::entry(
                    index,
                    Some("fullUrl"),
                    format!("fullUrl '{full_url}' names a version; a fullUrl names the resource, not one of its versions (bdl-8)"),
                ));
            }
        }
    }
    if bundle_type == "document" {
        let identified = bundle.get("identifier").is_some_and(|identifier| {
            identifier.get("system").is_some() && identifier.get("value").is_some()
        });
        if !identified {
            breaks.push(RuleBreak::bundle(
                Some("identifier"),
                "a document has an identifier with a system and a value (bdl-9)".to_string(),
            ));
        }
        if bundle.get("timestamp").and_then(Value::as_str).is_none() {
            breaks.push(RuleBreak::bundle(
                Some("timestamp"),
                "a document has a timestamp (bdl-10)".to_string(),
            ));
        }
    }
    let first_resource_type = || {
        bundle
            .get("entry")
            .and_then(|entries| entries.get(0))
            .and_then(|entry| entry.pointer("/resource/resourceType"))
            .and_then(Value::as_str)
    };
    for (kind, first, key) in [
        ("document", "Composition", "bdl-11"),
        ("message", "MessageHeader", "bdl-12"),
    ] {
        if bundle_type == kind && first_resource_type() != Some(first) {
            breaks.push(RuleBreak::bundle(
                Some("entry"),
                format!("a {kind}'s first entry holds its {first} ({key})"),
            ));
        }
    }
    breaks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(bundle: Value) -> Vec<String> {
        let Value::Object(bundle) = bundle else {
            panic!("not an object")
        };
        bundle_rule_breaks(&bundle)
            .into_iter()
            .map(|rule_break| {
                let key = rule_break
                    .message
                    .rsplit_once("(bdl-")
                    .map(|(_, key)| key.trim_end_matches(')').to_string())
                    .unwrap_or_default();
                match rule_break.entry {
                    Some(index) => format!("{key}@{index}"),
                    None => key,
                }
            })
            .collect()
    }

    fn document(entries: Value) -> Value {
        json!({"resourceType": "Bundle", "type": "document",
               "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"},
               "timestamp": "2026-12-01T10:00:00+09:00", "entry": entries})
    }

    #[test]
    fn a_complete_document_breaks_nothing() {
        let composition =
            json!({"fullUrl": "urn:uuid:c", "resource": {"resourceType": "Composition"}});
        let patient = json!({"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient"}});
        assert!(keys(document(json!([composition, patient]))).is_empty());
    }

    #[test]
    fn a_document_needs_identifier_timestamp_and_composition_first() {
        let bare = json!({"resourceType": "Bundle", "type": "document", "entry": [
            {"resource": {"resourceType": "Patient"}},
            {"resource": {"resourceType": "Composition"}}]});
        assert_eq!(keys(bare), ["9", "10", "11"]);
        let half_identified = json!({"resourceType": "Bundle", "type": "document",
            "identifier": {"value": "x"}, "timestamp": "2026-12-01",
            "entry": [{"resource": {"resourceType": "Composition"}}]});
        assert_eq!(keys(half_identified), ["9"]);
        assert_eq!(keys(document(json!([]))), ["11"]);
    }

    #[test]
    fn without_a_type_only_the_rules_of_any_bundle_apply() {
        let untyped = json!({"resourceType": "Bundle", "total": 1, "entry": [
            {"resource": {"resourceType": "Basic"}, "request": {"method": "POST", "url": "Basic"},
             "search": {"mode": "match"}},
            {"fullUrl": "urn:uuid:a"}]});
        assert_eq!(keys(untyped), ["5@1"]);
    }

    #[test]
    fn a_message_starts_with_its_header() {
        let message = json!({"resourceType": "Bundle", "type": "message",
            "entry": [{"resource": {"resourceType": "Patient"}}]});
        assert_eq!(keys(message), ["12"]);
    }

    #[test]
    fn requests_and_responses_follow_the_type() {
        let collection = json!({"resourceType": "Bundle", "type": "collection", "total": 1, "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient"}, "search": {"mode": "match"}},
            {"response": {"status": "200"}},
            {"fullUrl": "urn:uuid:x"}]});
        assert_eq!(keys(collection), ["1", "3@0", "2@1", "4@2", "5@3"]);
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Patient"}}]});
        assert_eq!(keys(batch), ["3@0"]);
        let history = json!({"resourceType": "Bundle", "type": "history", "total": 1, "entry": [
            {"fullUrl": "Patient/1", "request": {"method": "PUT", "url": "Patient/1"}, "response": {"status": "200"}},
            {"fullUrl": "Patient/1", "request": {"method": "POST", "url": "Patient"}}]});
        assert_eq!(keys(history), ["4@1"], "a history repeats fullUrls freely");
        let searchset = json!({"resourceType": "Bundle", "type": "searchset", "total": 0});
        assert!(keys(searchset).is_empty());
    }

    #[test]
    fn full_urls_are_unique_per_version_and_name_no_version() {
        let twice = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:a", "resource": {"resourceType": "Patient"}},
            {"fullUrl": "urn:uuid:a", "resource": {"resourceType": "Patient"}},
            {"fullUrl": "http://h/fhir/Patient/1", "resource": {"resourceType": "Patient", "meta": {"versionId": "1"}}},
            {"fullUrl": "http://h/fhir/Patient/1", "resource": {"resourceType": "Patient", "meta": {"versionId": "2"}}},
            {"fullUrl": "http://h/fhir/Patient/2/_history/1", "resource": {"resourceType": "Patient"}}]});
        assert_eq!(keys(twice), ["7@1", "8@4"]);
    }
}

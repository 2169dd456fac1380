//! Index values extracted from a resource at write time, stored in the same transaction.

use renkei_search::IndexRows;
use serde_json::Value;

/// Index rows of a resource: every search parameter of its type, extracted by evaluating the
/// parameters' FHIRPath expressions (see `renkei_search::extract`).
pub(crate) fn rows(res_type: &str, resource: &Value) -> IndexRows {
    // Only in binaries built to measure what indexing costs (issue 3); never by default.
    if cfg!(feature = "unindexed-writes-benchmark") {
        return IndexRows::default();
    }
    renkei_search::extract(res_type, resource)
}

/// The patient a resource is about (consent is decided per patient), as a plain Patient id:
/// the Patient itself; else the reference in the element that names the record's patient
/// (`subject`, `patient`, `beneficiary`, `individual`, Task's `for`, Binary's
/// `securityContext`); else, for a Bundle (a document, say), the patient of its first entry
/// about one; else the first reference to a Patient anywhere in it (an Appointment's
/// participant, a Group's member). A record naming a patient is never directory data.
pub(crate) fn patient_of(res_type: &str, id: &str, resource: &Value) -> Option<String> {
    if res_type == "Patient" {
        return Some(id.to_string());
    }
    let named = [
        "subject",
        "patient",
        "beneficiary",
        "individual",
        "for",
        "securityContext",
    ]
    .iter()
    .filter_map(|key| resource.get(*key))
    .filter_map(|r| r.get("reference").and_then(Value::as_str))
    .find_map(patient_id_of_reference);
    if named.is_some() {
        return named;
    }
    if res_type == "Bundle" {
        let in_entries = resource
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.get("resource"))
            .find_map(|inner| {
                let inner_type = inner.get("resourceType").and_then(Value::as_str)?;
                let inner_id = inner.get("id").and_then(Value::as_str).unwrap_or_default();
                patient_of(inner_type, inner_id, inner)
            });
        if in_entries.is_some() {
            return in_entries;
        }
    }
    first_patient_reference(resource)
}

fn patient_id_of_reference(reference: &str) -> Option<String> {
    reference
        .strip_prefix("Patient/")
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
        .filter(|id| !id.is_empty())
}

/// The first `reference` to a Patient anywhere in `value`, depth first in document order.
fn first_patient_reference(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => {
            if let Some(found) = map
                .get("reference")
                .and_then(Value::as_str)
                .and_then(patient_id_of_reference)
            {
                return Some(found);
            }
            map.values().find_map(first_patient_reference)
        }
        Value::Array(items) => items.iter().find_map(first_patient_reference),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::patient_of;
    use serde_json::json;

    #[test]
    fn records_naming_a_patient_anywhere_are_about_that_patient() {
        let cases = [
            (
                "Observation",
                json!({"subject": {"reference": "Patient/a"}}),
                Some("a"),
            ),
            (
                "Task",
                json!({"for": {"reference": "Patient/b"}}),
                Some("b"),
            ),
            (
                "Binary",
                json!({"securityContext": {"reference": "Patient/c/_history/2"}}),
                Some("c"),
            ),
            (
                "Appointment",
                json!({"participant": [{"actor": {"reference": "Practitioner/x"}},
                                       {"actor": {"reference": "Patient/d"}}]}),
                Some("d"),
            ),
            (
                "Bundle",
                json!({"type": "document", "entry": [
                    {"resource": {"resourceType": "Composition", "subject": {"reference": "Patient/e"}}}]}),
                Some("e"),
            ),
            (
                "Organization",
                json!({"partOf": {"reference": "Organization/o"}}),
                None,
            ),
            (
                "Practitioner",
                json!({"name": [{"family": "Patient/f"}]}),
                None,
            ),
            ("Task", json!({"for": {"reference": "Patient/"}}), None),
        ];
        for (res_type, resource, expected) in cases {
            assert_eq!(
                patient_of(res_type, "id", &resource).as_deref(),
                expected,
                "{res_type}: {resource}"
            );
        }
        assert_eq!(
            patient_of("Patient", "me", &json!({})).as_deref(),
            Some("me")
        );
    }
}

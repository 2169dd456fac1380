//! Extracting [`ResourceFacts`] from stored FHIR JSON.

use serde_json::Value;

use crate::model::ResourceFacts;
use crate::time::{fhir_time_end, fhir_time_start};

/// Elements tried, in order, for the clinical date of a resource type (the first one present
/// and parseable wins; its first millisecond is used). Dotted paths; a `*Period` / `period`
/// path means its `start`. Types not listed use [`GENERIC_CLINICAL_DATE_PATHS`]. Directory
/// types and `Patient` have none. `meta.lastUpdated` is never used: it is when the data was
/// stored, not when the care happened.
pub fn clinical_date_paths(res_type: &str) -> &'static [&'static str] {
    match res_type {
        "Observation" => &[
            "effectiveDateTime",
            "effectivePeriod.start",
            "effectiveInstant",
            "issued",
        ],
        "DiagnosticReport" => &["effectiveDateTime", "effectivePeriod.start", "issued"],
        "Condition" | "AllergyIntolerance" => {
            &["onsetDateTime", "onsetPeriod.start", "recordedDate"]
        }
        "MedicationRequest" | "ServiceRequest" => &["authoredOn"],
        "MedicationStatement" => &["effectiveDateTime", "effectivePeriod.start", "dateAsserted"],
        "MedicationAdministration" => &["effectiveDateTime", "effectivePeriod.start"],
        "MedicationDispense" => &["whenHandedOver", "whenPrepared"],
        "Encounter" | "EpisodeOfCare" | "CarePlan" | "CareTeam" => &["period.start"],
        "Procedure" => &["performedDateTime", "performedPeriod.start"],
        "Immunization" => &["occurrenceDateTime", "recorded"],
        "ImagingStudy" => &["started"],
        "DocumentReference" => &["context.period.start", "date"],
        "Composition" => &["date"],
        "Specimen" => &[
            "collection.collectedDateTime",
            "collection.collectedPeriod.start",
            "receivedTime",
        ],
        "Consent" => &["dateTime"],
        "Patient" | "Organization" | "Practitioner" | "PractitionerRole" | "Location"
        | "Endpoint" | "Medication" | "HealthcareService" | "Device" | "Group" => &[],
        _ => GENERIC_CLINICAL_DATE_PATHS,
    }
}

/// Clinical-date elements for resource types not listed in [`clinical_date_paths`].
pub const GENERIC_CLINICAL_DATE_PATHS: &[&str] = &[
    "effectiveDateTime",
    "effectivePeriod.start",
    "occurrenceDateTime",
    "occurrencePeriod.start",
    "performedDateTime",
    "performedPeriod.start",
    "onsetDateTime",
    "authoredOn",
    "recordedDate",
    "period.start",
    "issued",
    "date",
    "created",
];

/// The clinical date of `resource` (first millisecond), per [`clinical_date_paths`].
pub fn clinical_date_ms(res_type: &str, resource: &Value) -> Option<i64> {
    clinical_date_source(res_type, resource).map(|(_, start)| start)
}

/// The last millisecond of the care `resource` covers, when it is more than the day its
/// clinical date starts: a period's end (`i64::MAX` while the period is open), the end of a
/// date given to the month or year (`2024-12` covers December), or the end of a period given
/// with an end only (the record then has no clinical date). `None` for a record of one point
/// in time or day.
pub fn clinical_end_ms(res_type: &str, resource: &Value) -> Option<i64> {
    const DAY_MS: i64 = 86_400_000;
    let paths = clinical_date_paths(res_type);
    let Some((path, start)) = clinical_date_source(res_type, resource) else {
        // A period known only by its end.
        return paths.iter().find_map(|path| {
            let period = path.strip_suffix(".start")?;
            fhir_time_end(element_at(resource, &format!("{period}.end"))?.as_str()?)
        });
    };
    match path.strip_suffix(".start") {
        Some(period) => match element_at(resource, &format!("{period}.end")) {
            Some(end) => end.as_str().and_then(fhir_time_end),
            None => Some(i64::MAX),
        },
        None => {
            let end = fhir_time_end(element_at(resource, path)?.as_str()?)?;
            (end - start >= DAY_MS).then_some(end)
        }
    }
}

/// The element the clinical date is read from, and the date.
fn clinical_date_source(res_type: &str, resource: &Value) -> Option<(&'static str, i64)> {
    clinical_date_paths(res_type).iter().find_map(|path| {
        let start = fhir_time_start(element_at(resource, path)?.as_str()?)?;
        Some((*path, start))
    })
}

/// The element at a dotted path of object keys.
fn element_at<'v>(resource: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(resource, |node, key| node.get(key))
}

/// Normalises a literal reference to a resource of this server to `Type/id`: relative
/// (`Patient/p1`), versioned (`Patient/p1/_history/2`) or absolute under one of the server's
/// own bases (`https://this-gateway/fhir/Patient/p1`). Another server's resource
/// (`https://other.example/fhir/Organization/o1` is not the local `Organization/o1`), a path
/// of more than `Type/id` (`Practitioner/../Organization/o1`), contained (`#x`), `urn:` and
/// malformed references give `None`.
pub fn normalize_reference(reference: &str) -> Option<String> {
    let path = renkei_search::local_path(reference.trim())?;
    let resource = path
        .split_once("/_history/")
        .map_or(path, |(resource, _)| resource);
    if resource.matches('/').count() != 1 {
        return None;
    }
    renkei_search::split_reference(resource).map(|(res_type, id)| format!("{res_type}/{id}"))
}

fn codings(resource: &Value, key: &str) -> Vec<(String, String)> {
    resource
        .get("meta")
        .and_then(|meta| meta.get(key))
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|coding| {
                    let code = coding.get("code").and_then(Value::as_str)?;
                    let system = coding.get("system").and_then(Value::as_str).unwrap_or("");
                    Some((system.to_string(), code.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn collect_references(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "reference" {
                    if let Some(r) = value.as_str().and_then(normalize_reference) {
                        if !out.contains(&r) {
                            out.push(r);
                        }
                    }
                } else {
                    collect_references(value, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_references(item, out);
            }
        }
        _ => {}
    }
}

impl ResourceFacts {
    /// Builds the facts of a stored resource. `custodian` is `Organization/<id>`,
    /// `patient_id` the plain id of the patient the data is about (`None` for directory
    /// data; for a `Patient` resource `None` means "itself"). Labels come from
    /// `meta.security`, tags from `meta.tag`, the clinical date from
    /// [`clinical_date_paths`], references from every `reference` element.
    pub fn from_resource(
        res_type: &str,
        id: &str,
        custodian: Option<&str>,
        patient_id: Option<&str>,
        resource: &Value,
    ) -> ResourceFacts {
        let patient_id = match patient_id {
            Some(p) => Some(crate::model::strip_prefix_type(p, "Patient").to_string()),
            None if res_type == "Patient" => Some(id.to_string()),
            None => None,
        };
        let mut references = Vec::new();
        collect_references(resource, &mut references);
        ResourceFacts {
            res_type: res_type.to_string(),
            custodian: custodian.map(str::to_string),
            patient_id,
            security_labels: codings(resource, "security"),
            tags: codings(resource, "tag"),
            clinical_date_ms: clinical_date_ms(res_type, resource),
            clinical_end_ms: clinical_end_ms(res_type, resource),
            reference: format!("{res_type}/{id}"),
            references,
            follows: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ms(rfc3339: &str) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .ok()
            .map(|d| d.timestamp_millis())
    }

    #[test]
    fn a_period_ends_where_it_says_or_stays_open() {
        let encounter = |period: Value| json!({"resourceType": "Encounter", "period": period});
        let closed = encounter(json!({"start": "2025-01-01", "end": "2025-01-10"}));
        assert_eq!(
            clinical_end_ms("Encounter", &closed),
            crate::time::fhir_time_end("2025-01-10")
        );
        let open = encounter(json!({"start": "2025-01-01"}));
        assert_eq!(clinical_end_ms("Encounter", &open), Some(i64::MAX));
        let point = json!({"resourceType": "Observation", "effectiveDateTime": "2025-01-01"});
        assert_eq!(clinical_end_ms("Observation", &point), None);
        assert!(clinical_date_ms("Observation", &point).is_some());
        let month = json!({"resourceType": "Observation", "effectiveDateTime": "2024-12"});
        assert_eq!(
            clinical_end_ms("Observation", &month),
            crate::time::fhir_time_end("2024-12")
        );
        let end_only = encounter(json!({"end": "2024-06-01"}));
        assert_eq!(clinical_date_ms("Encounter", &end_only), None);
        assert_eq!(
            clinical_end_ms("Encounter", &end_only),
            crate::time::fhir_time_end("2024-06-01")
        );
    }

    #[test]
    fn clinical_dates_by_type() {
        let cases = [
            (
                "Observation",
                json!({"effectiveDateTime": "2025-02-10T09:30:00+09:00", "issued": "2025-02-11T00:00:00+09:00"}),
                ms("2025-02-10T09:30:00+09:00"),
            ),
            (
                "Observation",
                json!({"effectivePeriod": {"start": "2025-02-10"}}),
                ms("2025-02-10T00:00:00+09:00"),
            ),
            (
                "Observation",
                json!({"issued": "2025-02-11T00:00:00Z"}),
                ms("2025-02-11T00:00:00Z"),
            ),
            (
                "Condition",
                json!({"recordedDate": "2025-03-01"}),
                ms("2025-03-01T00:00:00+09:00"),
            ),
            (
                "Condition",
                json!({"onsetString": "childhood", "recordedDate": "2025-03"}),
                ms("2025-03-01T00:00:00+09:00"),
            ),
            (
                "MedicationRequest",
                json!({"authoredOn": "2025-11-04"}),
                ms("2025-11-04T00:00:00+09:00"),
            ),
            (
                "Encounter",
                json!({"period": {"start": "2025-09-01T10:00:00+09:00", "end": "2025-09-20"}}),
                ms("2025-09-01T10:00:00+09:00"),
            ),
            (
                "Specimen",
                json!({"collection": {"collectedDateTime": "2025-09-01T08:00:00+09:00"}}),
                ms("2025-09-01T08:00:00+09:00"),
            ),
            (
                "DocumentReference",
                json!({"date": "2025-09-20T12:00:00+09:00", "context": {"period": {"start": "2025-09-01"}}}),
                ms("2025-09-01T00:00:00+09:00"),
            ),
            (
                "ImagingStudy",
                json!({"started": "2025-09-01T11:00:00+09:00"}),
                ms("2025-09-01T11:00:00+09:00"),
            ),
            (
                "Procedure",
                json!({"performedPeriod": {"start": "2025-09-02"}}),
                ms("2025-09-02T00:00:00+09:00"),
            ),
            (
                "Goal",
                json!({"date": "2025"}),
                ms("2025-01-01T00:00:00+09:00"),
            ),
            ("Patient", json!({"birthDate": "1958-03-12"}), None),
            (
                "Observation",
                json!({"meta": {"lastUpdated": "2025-01-01T00:00:00Z"}}),
                None,
            ),
            (
                "Observation",
                json!({"effectiveDateTime": "not a date"}),
                None,
            ),
        ];
        for (res_type, resource, expected) in cases {
            assert_eq!(
                clinical_date_ms(res_type, &resource),
                expected,
                "{res_type} {resource}"
            );
        }
    }

    #[test]
    fn references_are_normalised() {
        // The base every test of this binary agrees on (set once per process).
        assert!(renkei_search::set_local_bases(
            &["https://host/fhir".into()]
        ));
        let cases = [
            ("Patient/p1", Some("Patient/p1")),
            ("Patient/p1/_history/2", Some("Patient/p1")),
            ("https://host/fhir/Encounter/e.1-2", Some("Encounter/e.1-2")),
            (
                "HTTPS://HOST/fhir/Encounter/e1/_history/3",
                Some("Encounter/e1"),
            ),
            ("https://other.example/fhir/Organization/o1", None),
            ("https://host/other/Organization/o1", None),
            ("Practitioner/../Organization/o1", None),
            ("Organization/o1/extra", None),
            ("#contained", None),
            ("urn:uuid:5b9b23a5-2f34-5e69-905d-9d9dd0bb4e80", None),
            ("p1", None),
            ("patient/p1", None),
            ("Patient/", None),
            ("Patient/a b", None),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_reference(input).as_deref(), expected, "{input}");
        }
    }

    #[test]
    fn from_resource_collects_everything() {
        let resource = json!({
            "resourceType": "Observation",
            "id": "o1",
            "meta": {
                "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"},
                             {"code": "R"}],
                "tag": [{"system": crate::PRIVACY_TAG_SYSTEM, "code": "UNINFORMED"}, {"display": "no code"}]
            },
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Encounter/e1"},
            "hasMember": [{"reference": "Observation/o2"}, {"reference": "Observation/o2"}],
            "effectiveDateTime": "2025-06-01"
        });
        let f = ResourceFacts::from_resource(
            "Observation",
            "o1",
            Some("Organization/h"),
            Some("Patient/p1"),
            &resource,
        );
        assert_eq!(f.reference, "Observation/o1");
        assert_eq!(f.patient_id.as_deref(), Some("p1"));
        assert_eq!(
            f.security_labels,
            vec![
                (
                    "http://terminology.hl7.org/CodeSystem/v3-ActCode".to_string(),
                    "PSY".to_string()
                ),
                (String::new(), "R".to_string())
            ]
        );
        assert!(f.has_privacy_tag(crate::TAG_UNINFORMED));
        assert_eq!(f.tags.len(), 1);
        assert_eq!(
            f.references,
            vec!["Patient/p1", "Encounter/e1", "Observation/o2"]
        );
        assert_eq!(f.clinical_date_ms, ms("2025-06-01T00:00:00+09:00"));
    }
}

//! Index values extracted from a resource at write time, stored in the same transaction.

use renkei_search::IndexRows;
use serde_json::Value;

/// The version of what a write derives from a resource: its search-index rows, patient,
/// security labels and person keys. Raise it with any change that makes a stored resource
/// derive other rows than before (a new or corrected extraction, normalisation or
/// classification): servers then refuse a database built under an older number until
/// `renkei reindex` has rebuilt it, instead of answering searches that miss or wrongly match
/// records. Databases from before the number was recorded count as 0.
pub const INDEX_FORMAT: u32 = 7;

/// Index rows of a resource: every search parameter of its type, extracted by evaluating the
/// parameters' FHIRPath expressions (see `renkei_search::extract`).
pub(crate) fn rows(res_type: &str, resource: &Value) -> IndexRows {
    // Only in binaries built to measure what indexing costs (issue 3); never by default.
    if cfg!(feature = "unindexed-writes-benchmark") {
        return IndexRows::default();
    }
    renkei_search::extract(res_type, resource)
}

/// References that no search parameter indexes but consent must see, beside `indexed` (the
/// record's search-parameter reference rows). For a record, every other reference it makes
/// (`_reference`): an AllergyIntolerance's `encounter` and a Binary's `securityContext` have
/// no R4 search parameter, yet a refusal of "this encounter and everything related" must
/// find them, as `renkei_consent::Rule::matches` does over all references. For a stored
/// Bundle, the records its entries refer to (`_entry`; the first ones, as many as a write
/// looks up for their labels): a label added later to a record finds the Bundles that took
/// labels from it (`relabel_referrers`).
pub(crate) fn consent_references(
    res_type: &str,
    resource: &Value,
    indexed: &[renkei_search::extract::ReferenceIndex],
) -> Vec<renkei_search::extract::ReferenceIndex> {
    let (param, limit) = if res_type == "Bundle" {
        (
            renkei_store::BUNDLE_ENTRY_REFERENCE,
            crate::interactions::MAX_REFERENCES_LOOKED_UP,
        )
    } else {
        (renkei_store::UNSEARCHABLE_REFERENCE, usize::MAX)
    };
    let already: std::collections::HashSet<(&str, &str)> = indexed
        .iter()
        .filter(|_| res_type != "Bundle")
        .filter_map(|row| Some((row.target_type.as_deref()?, row.target_id.as_deref()?)))
        .collect();
    let targets: std::collections::BTreeSet<(String, String)> = local_references(resource)
        .into_iter()
        .filter(|(target_type, target_id)| {
            !already.contains(&(target_type.as_str(), target_id.as_str()))
        })
        .take(limit)
        .collect();
    targets
        .into_iter()
        .map(
            |(target_type, target_id)| renkei_search::extract::ReferenceIndex {
                param: param.into(),
                target_type: Some(target_type),
                target_id: Some(target_id),
                url: None,
            },
        )
        .collect()
}

/// For a document (a Bundle whose first entry is a Composition with a `subject`) about a
/// patient record here, `composition.subject` and `composition.patient` rows naming that
/// record: the Composition names its patient by the Patient entry (`urn:uuid:`) or by the
/// sender's own URL, so `Bundle?composition.subject=Patient/x` finds a patient's discharge
/// summaries only through the record the document was matched to ([`bundle_subject`]).
pub(crate) fn document_patient_rows(
    res_type: &str,
    resource: &Value,
    patient: Option<&str>,
) -> Vec<renkei_search::extract::ReferenceIndex> {
    let Some(patient) = patient.filter(|p| *p != UNRESOLVED_PATIENT) else {
        return Vec::new();
    };
    if res_type != "Bundle" || !composition_names_patient(resource, patient) {
        return Vec::new();
    }
    renkei_search::ENTRY_CHAIN_REFERENCES
        .iter()
        .map(|param| renkei_search::extract::ReferenceIndex {
            param: format!("composition.{param}"),
            target_type: Some("Patient".into()),
            target_id: Some(patient.to_string()),
            url: None,
        })
        .collect()
}

/// Whether the Composition that is `bundle`'s first entry has as its `subject` a Patient entry
/// of the Bundle (the entry the document was matched to `patient` by) or this server's
/// `Patient/<patient>`. A Group or a Practitioner as the subject, or a reference to the
/// sender's own patient, is not this patient (R4's `Composition.patient` is
/// `subject.where(resolve() is Patient)`).
fn composition_names_patient(bundle: &Value, patient: &str) -> bool {
    let Some(entries) = bundle.get("entry").and_then(Value::as_array) else {
        return false;
    };
    let Some(first) = entries.first() else {
        return false;
    };
    if first
        .pointer("/resource/resourceType")
        .and_then(Value::as_str)
        != Some("Composition")
    {
        return false;
    }
    let Some(subject) = first
        .pointer("/resource/subject/reference")
        .and_then(Value::as_str)
    else {
        return false;
    };
    let names_patient_entry = entries.iter().any(|entry| {
        entry.get("fullUrl").and_then(Value::as_str) == Some(subject)
            && entry
                .pointer("/resource/resourceType")
                .and_then(Value::as_str)
                == Some("Patient")
    });
    // A relative reference in an entry of another server's is that server's patient.
    let remote_entry = full_url_base(first.get("fullUrl").and_then(Value::as_str))
        .is_some_and(|base| renkei_search::local_path(base).is_none());
    let names_this_patient =
        !remote_entry && patient_id_of_reference(subject).as_deref() == Some(patient);
    names_patient_entry || names_this_patient
}

/// The patient a resource is about (consent is decided per patient), as a plain Patient id:
/// the Patient itself; else the reference in the element that names the record's patient
/// (`subject`, `patient`, `beneficiary`, `individual`, Task's `for`, Binary's
/// `securityContext`); else, for a Bundle (a document, say), the one patient its entries are
/// about ([`bundle_subject`]); else the first reference to a Patient anywhere in it (an Appointment's
/// participant, a Group's member). A record naming a patient is never directory data. A
/// patient named only by identifier (a logical reference), and a Binary without a
/// securityContext, are [`UNRESOLVED_PATIENT`].
pub(crate) fn patient_of(res_type: &str, id: &str, resource: &Value) -> Option<String> {
    if res_type == "Patient" {
        return Some(id.to_string());
    }
    let named: Vec<&Value> = PATIENT_ELEMENTS
        .iter()
        .filter_map(|key| resource.get(*key))
        .collect();
    if let Some(patient) = named
        .iter()
        .filter_map(|r| r.get("reference").and_then(Value::as_str))
        .find_map(patient_id_of_reference)
    {
        return Some(patient);
    }
    if res_type == "Bundle" {
        match bundle_subject(resource) {
            Some(BundleSubject::Record(patient)) => return Some(patient),
            Some(BundleSubject::Entry(_) | BundleSubject::Unresolved) => {
                return Some(UNRESOLVED_PATIENT.to_string())
            }
            None => {}
        }
    }
    if let Some(patient) = first_patient_reference(resource) {
        return Some(patient);
    }
    // A patient element that names no record here (an identifier or display only, a
    // contained `#p`, a `urn:`), or a contained Patient: about a patient, but not one whose
    // consent can be looked up.
    let unresolved_patient = named.iter().any(|r| {
        let names_a_record_here = r
            .get("reference")
            .and_then(Value::as_str)
            .and_then(local_reference)
            .is_some();
        !names_a_record_here
            && r.get("type")
                .and_then(Value::as_str)
                .is_none_or(|t| t == "Patient" || t.ends_with("/Patient"))
    });
    let contains_a_patient = resource
        .get("contained")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|inner| inner.get("resourceType").and_then(Value::as_str) == Some("Patient"));
    // A Binary is content (a scanned referral letter, a report's PDF): without a
    // securityContext nothing says whose it is, so it is its holder's alone rather than
    // directory data every member reads.
    let uncontexted_binary = res_type == "Binary" && resource.get("securityContext").is_none();
    (unresolved_patient || contains_a_patient || uncontexted_binary)
        .then(|| UNRESOLVED_PATIENT.to_string())
}

/// The records a record names as its subject matter, beside any patient it names: a
/// Provenance's `target`, a Task's `focus`, a Communication's `about`, a Binary's
/// `securityContext`. A record follows them in consent decisions
/// (`interactions::take_on_from`), whether or not it names its patient itself.
pub(crate) fn subject_matter_references(res_type: &str, resource: &Value) -> Vec<(String, String)> {
    let mut targets = subject_matter(res_type, resource)
        .map(local_references)
        .unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    targets.retain(|target| seen.insert(target.clone()));
    targets
}

/// Whether a record's subject matter ([`subject_matter_references`]) names something this
/// server cannot tell: a reference that is no `Type/id` here (`condition/x`,
/// `Condition/x?_format=json`, `Condition/x#part`, another server's URL, an identifier alone).
/// What it is about could then be any patient's data, so it is its holder's alone. A contained
/// resource (`#id`) is told: it is inside the record.
pub(crate) fn subject_matter_unresolvable(res_type: &str, resource: &Value) -> bool {
    fn walk(value: &Value) -> bool {
        match value {
            Value::Object(map) => {
                let unresolvable = match map.get("reference") {
                    Some(Value::String(reference)) => {
                        !reference.starts_with('#') && local_reference(reference).is_none()
                    }
                    Some(_) => true,
                    // A Reference by identifier or display alone names nothing here.
                    None => map.contains_key("identifier") || map.contains_key("display"),
                };
                unresolvable || map.values().any(walk)
            }
            Value::Array(items) => items.iter().any(walk),
            _ => false,
        }
    }
    subject_matter(res_type, resource).is_some_and(walk)
}

/// The element holding what a record is about beside its patient
/// ([`subject_matter_references`]), when the record has one.
pub(crate) fn subject_matter<'v>(res_type: &str, resource: &'v Value) -> Option<&'v Value> {
    let element = match res_type {
        "Provenance" => "target",
        "Task" => "focus",
        "Communication" => "about",
        "Binary" => "securityContext",
        _ => return None,
    };
    resource.get(element)
}

/// Elements that name the patient a record is about.
const PATIENT_ELEMENTS: [&str; 6] = [
    "subject",
    "patient",
    "beneficiary",
    "individual",
    "for",
    "securityContext",
];

/// The patient of a record that names its patient only by identifier (see
/// [`renkei_store::UNRESOLVED_PATIENT`]): only its holder sees it.
pub(crate) const UNRESOLVED_PATIENT: &str = renkei_store::UNRESOLVED_PATIENT;

/// `(type, id)` of a reference to a resource on this server: relative (`Type/id`, with or
/// without `/_history/n`) or absolute under one of the server's own bases
/// (`renkei_search::local_path`, as the search index reads it). `None` for another server's
/// resources, `urn:`, contained (`#…`) and conditional references.
pub(crate) fn local_reference(reference: &str) -> Option<(&str, &str)> {
    let path = renkei_search::local_path(reference)?;
    if path.contains('?') || path.starts_with('#') {
        return None;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let tail = match segments.iter().rposition(|s| *s == "_history") {
        Some(at) => &segments[..at],
        None => &segments[..],
    };
    match tail {
        [.., res_type, id] if renkei_fhir::is_resource_type(res_type) => Some((res_type, id)),
        _ => None,
    }
}

fn patient_id_of_reference(reference: &str) -> Option<String> {
    match local_reference(reference) {
        Some(("Patient", id)) => Some(id.to_string()),
        _ => None,
    }
}

/// The first `reference` to a Patient anywhere in `value`, depth first in document order.
fn first_patient_reference(value: &Value) -> Option<String> {
    local_references(value)
        .into_iter()
        .find_map(|(res_type, id)| (res_type == "Patient").then_some(id))
}

/// Whom the entries of a Bundle are about.
#[derive(Debug, PartialEq)]
pub(crate) enum BundleSubject<'a> {
    /// A Patient record here.
    Record(String),
    /// A Patient entry of the Bundle: a JP-CLINS document (a discharge summary, a referral
    /// letter) carries its patient so, its Composition's `subject` naming the entry's
    /// `urn:uuid:` fullUrl.
    Entry(&'a Value),
    /// No one patient whose consent can be looked up: one named by identifier only or on
    /// another server, or several patients.
    Unresolved,
}

/// Whom a Bundle's entries are about, from every entry about a patient; `None` when no entry
/// is. A Patient entry is a record here only when its fullUrl names one: its id is its
/// author's (else `Patient/1` of a hospital's document would be taken for whoever is
/// `Patient/1` here). A reference is resolved as bundle.html#references says: to the entry
/// whose fullUrl it names, a relative one made absolute against the base of its own entry's
/// RESTful fullUrl (so `Patient/1` in an entry of `http://ehr.example/fhir/…` is that
/// server's, not this one's). Entries about different patients (a collection of a ward's
/// records) leave no one patient's consent to decide: [`BundleSubject::Unresolved`], its
/// holder's alone.
pub(crate) fn bundle_subject(bundle: &Value) -> Option<BundleSubject<'_>> {
    #[derive(Clone, PartialEq)]
    enum Subject {
        Record(String),
        Entry(usize),
        Unresolved,
    }
    let entries = bundle.get("entry").and_then(Value::as_array)?;
    fn full_url_of(entry: &Value) -> Option<&str> {
        entry.get("fullUrl").and_then(Value::as_str)
    }
    let is_patient = |entry: &Value| {
        entry
            .pointer("/resource/resourceType")
            .and_then(Value::as_str)
            == Some("Patient")
    };
    // Whom a Patient entry stands for.
    let patient_entry =
        |index: usize, entry: &Value| match full_url_of(entry).and_then(patient_id_of_reference) {
            Some(id) => Subject::Record(id),
            None => Subject::Entry(index),
        };
    // Each Patient entry with a fullUrl references can name.
    let patient_entries: Vec<(&str, Subject)> = entries
        .iter()
        .enumerate()
        .filter(|(_, entry)| is_patient(entry))
        .filter_map(|(index, entry)| Some((full_url_of(entry)?, patient_entry(index, entry))))
        .collect();
    let mut subjects: Vec<Subject> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(inner) = entry.get("resource") else {
            continue;
        };
        let inner_type = inner
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let base = full_url_base(full_url_of(entry));
        let remote_base = base.is_some_and(|b| renkei_search::local_path(b).is_none());
        // The patient a reference names, if it names one.
        let named_patient = |reference: &str| {
            let relative = !reference.contains(':') && !reference.starts_with('#');
            let absolute = match base {
                Some(base) if relative => format!("{base}{reference}"),
                _ => reference.to_string(),
            };
            if let Some((_, subject)) = patient_entries.iter().find(|(url, _)| *url == absolute) {
                return Some(subject.clone());
            }
            let (res_type, _) = renkei_search::split_reference(
                absolute.split("/_history/").next().unwrap_or_default(),
            )?;
            (res_type == "Patient").then(|| match patient_id_of_reference(&absolute) {
                Some(id) => Subject::Record(id),
                None => Subject::Unresolved,
            })
        };
        let subject = if is_patient(entry) {
            Some(patient_entry(index, entry))
        } else if let Some(subject) = PATIENT_ELEMENTS
            .iter()
            .filter_map(|key| inner.get(*key)?.get("reference")?.as_str())
            .find_map(named_patient)
        {
            Some(subject)
        } else if inner_type == "Binary" && inner.get("securityContext").is_none() {
            // Content carried in the Bundle (an attachment) is the Bundle's.
            None
        } else {
            patient_of(inner_type, "", inner).map(|patient| match patient {
                // What another server's entry names relatively is that server's.
                p if p == UNRESOLVED_PATIENT || remote_base => Subject::Unresolved,
                p => Subject::Record(p),
            })
        };
        if let Some(subject) = subject.filter(|s| !subjects.contains(s)) {
            subjects.push(subject);
        }
    }
    match subjects.as_slice() {
        [] => None,
        [Subject::Record(id)] => Some(BundleSubject::Record(id.clone())),
        [Subject::Entry(at)] => entries[*at].get("resource").map(BundleSubject::Entry),
        _ => Some(BundleSubject::Unresolved),
    }
}

/// Adds the labels not among `labels` yet.
pub(crate) fn add_labels(
    labels: &mut Vec<renkei_search::extract::TokenIndex>,
    more: impl IntoIterator<Item = renkei_search::extract::TokenIndex>,
) {
    for label in more {
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
}

/// The privacy labels (`_security`, and the national privacy `_tag`s) of the resources held
/// inside a resource: its `contained` resources, a Bundle's entries (their own contained ones,
/// nested Bundles, a response's outcome), a Parameters' resources. The holder takes them on,
/// so a report containing an `UNDELIVERED` result, or a document holding a `PSY` condition,
/// is withheld as the part would be on its own.
pub(crate) fn embedded_privacy_labels(resource: &Value) -> Vec<renkei_search::extract::TokenIndex> {
    fn walk(value: &Value, root: bool, labels: &mut Vec<renkei_search::extract::TokenIndex>) {
        match value {
            Value::Object(map) => {
                let inner_type = map.get("resourceType").and_then(Value::as_str);
                if let (false, Some(inner_type), Some(meta)) = (root, inner_type, map.get("meta")) {
                    let only_meta = serde_json::json!({"resourceType": inner_type, "meta": meta});
                    let found = renkei_search::extract(inner_type, &only_meta)
                        .tokens
                        .into_iter()
                        .filter(renkei_store::is_privacy_label)
                        .map(|label| renkei_search::extract::TokenIndex {
                            text: None,
                            ..label
                        });
                    add_labels(labels, found);
                }
                for (key, child) in map {
                    // Its own labels are indexed as its own; a narrative holds no resources.
                    if !matches!(key.as_str(), "meta" | "text") {
                        walk(child, false, labels);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, false, labels)),
            _ => {}
        }
    }
    let mut labels = Vec::new();
    walk(resource, true, &mut labels);
    labels
}

/// The base of a RESTful fullUrl, ending in `/` (`http://ehr.example/fhir/` of
/// `http://ehr.example/fhir/Patient/p-1`); `None` for a `urn:` fullUrl or none.
pub(crate) fn full_url_base(full_url: Option<&str>) -> Option<&str> {
    let url = full_url?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return None;
    }
    let resource_url = url.find("/_history/").map_or(url, |at| &url[..at]);
    let (res_type, _) = renkei_search::split_reference(resource_url)?;
    let (path, _id) = resource_url.rsplit_once('/')?;
    let base_len = path.strip_suffix(res_type.as_str())?.len();
    url.get(..base_len)
}

/// Every reference to another resource on this server in `value`, in document order.
pub(crate) fn local_references(value: &Value) -> Vec<(String, String)> {
    fn walk(value: &Value, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                if let Some((res_type, id)) = map
                    .get("reference")
                    .and_then(Value::as_str)
                    .and_then(local_reference)
                {
                    out.push((res_type.to_string(), id.to_string()));
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::patient_of;
    use serde_json::json;

    #[test]
    fn records_naming_a_patient_anywhere_are_about_that_patient() {
        assert!(renkei_search::set_local_bases(&[
            "http://127.0.0.1:8412/fhir".to_string()
        ]));
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
            (
                "Task",
                json!({"for": {"reference": "Patient/"}}),
                Some(super::UNRESOLVED_PATIENT),
            ),
            (
                "Observation",
                json!({"subject": {"reference": "http://127.0.0.1:8412/fhir/Patient/g"}}),
                Some("g"),
            ),
            // Another server's patient: about a patient, but none whose consent is here.
            (
                "Task",
                json!({"for": {"reference": "https://other.example/fhir/Patient/h/_history/3"}}),
                Some(super::UNRESOLVED_PATIENT),
            ),
            (
                "Observation",
                json!({"subject": {"identifier": {"system": "urn:x", "value": "1"}}}),
                Some(super::UNRESOLVED_PATIENT),
            ),
            (
                "Observation",
                json!({"subject": {"type": "Group", "identifier": {"value": "1"}}}),
                None,
            ),
            (
                "Observation",
                json!({"subject": {"reference": "urn:uuid:1"}}),
                Some(super::UNRESOLVED_PATIENT),
            ),
            (
                "Observation",
                json!({"subject": {"type": "http://hl7.org/fhir/StructureDefinition/Patient",
                                   "identifier": {"value": "1"}}}),
                Some(super::UNRESOLVED_PATIENT),
            ),
            (
                "Observation",
                json!({"subject": {"reference": "#p"},
                       "contained": [{"resourceType": "Patient", "id": "p"}]}),
                Some(super::UNRESOLVED_PATIENT),
            ),
            (
                "Observation",
                json!({"subject": {"display": "Yamada Taro"}}),
                Some(super::UNRESOLVED_PATIENT),
            ),
            (
                "Observation",
                json!({"subject": {"reference": "Group/g"}}),
                None,
            ),
            (
                "Medication",
                json!({"contained": [{"resourceType": "Substance", "id": "s"}]}),
                None,
            ),
            (
                "Binary",
                json!({"contentType": "text/plain", "data": "eA=="}),
                Some(super::UNRESOLVED_PATIENT),
            ),
            (
                "Binary",
                json!({"securityContext": {"reference": "DocumentReference/d"}}),
                None,
            ),
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

    #[test]
    fn a_bundles_patient_entry_is_a_record_here_only_by_its_full_url() {
        assert!(renkei_search::set_local_bases(&[
            "http://127.0.0.1:8412/fhir".to_string()
        ]));
        let bundle = |full_url: &str| {
            json!({"type": "collection", "entry": [
                {"fullUrl": full_url, "resource": {"resourceType": "Patient", "id": "p1"}}]})
        };
        assert_eq!(
            patient_of("Bundle", "b", &bundle("urn:uuid:1")).as_deref(),
            Some(super::UNRESOLVED_PATIENT)
        );
        assert_eq!(
            patient_of(
                "Bundle",
                "b",
                &bundle("http://127.0.0.1:8412/fhir/Patient/p2")
            )
            .as_deref(),
            Some("p2")
        );
    }

    #[test]
    fn a_bundle_is_about_the_one_patient_its_entries_are_about() {
        use super::{bundle_subject, BundleSubject};
        let entry_id = |bundle: &serde_json::Value| match bundle_subject(bundle) {
            Some(BundleSubject::Entry(patient)) => patient["id"].as_str().map(str::to_string),
            _ => None,
        };
        let document = json!({"type": "document", "entry": [
            {"fullUrl": "urn:uuid:c", "resource": {"resourceType": "Composition",
                "subject": {"reference": "urn:uuid:p"}}},
            {"fullUrl": "urn:uuid:o", "resource": {"resourceType": "Observation",
                "subject": {"reference": "urn:uuid:p"}}},
            {"fullUrl": "urn:uuid:b", "resource": {"resourceType": "Binary", "data": "eA=="}},
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "p"}}]});
        assert_eq!(entry_id(&document).as_deref(), Some("p"));
        // Two patients' records: nobody's consent decides.
        let two = json!({"type": "collection", "entry": [
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "p"}},
            {"fullUrl": "urn:uuid:q", "resource": {"resourceType": "Patient", "id": "q"}}]});
        assert_eq!(bundle_subject(&two), Some(BundleSubject::Unresolved));
        let mixed = json!({"type": "collection", "entry": [
            {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/a"}}},
            {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/b"}}}]});
        assert_eq!(bundle_subject(&mixed), Some(BundleSubject::Unresolved));
        // A record naming an entry that is no Patient: about nobody known.
        let dangling = json!({"entry": [
            {"resource": {"resourceType": "Composition", "subject": {"reference": "urn:uuid:x"}}}]});
        assert_eq!(bundle_subject(&dangling), Some(BundleSubject::Unresolved));
        // References resolve as bundle.html#references says: against their entry's RESTful
        // fullUrl, to the entry they name.
        assert!(renkei_search::set_local_bases(&[
            "http://127.0.0.1:8412/fhir".to_string()
        ]));
        let remote = json!({"entry": [
            {"fullUrl": "http://ehr.example/fhir/Composition/c", "resource": {
                "resourceType": "Composition", "subject": {"reference": "Patient/p"}}}]});
        assert_eq!(bundle_subject(&remote), Some(BundleSubject::Unresolved));
        let restful = json!({"entry": [
            {"fullUrl": "http://ehr.example/fhir/Composition/c", "resource": {
                "resourceType": "Composition", "subject": {"reference": "Patient/p"}}},
            {"fullUrl": "http://ehr.example/fhir/Patient/p", "resource": {
                "resourceType": "Patient", "id": "p"}}]});
        assert_eq!(entry_id(&restful).as_deref(), Some("p"));
        let here = json!({"entry": [
            {"fullUrl": "http://127.0.0.1:8412/fhir/Patient/h", "resource": {
                "resourceType": "Patient", "id": "h"}},
            {"resource": {"resourceType": "Observation",
                "subject": {"reference": "http://127.0.0.1:8412/fhir/Patient/h"}}},
            {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/h"}}}]});
        assert_eq!(
            bundle_subject(&here),
            Some(BundleSubject::Record("h".into()))
        );
        let two_without_urls = json!({"entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}},
            {"resource": {"resourceType": "Patient", "id": "q"}}]});
        assert_eq!(
            bundle_subject(&two_without_urls),
            Some(BundleSubject::Unresolved)
        );
        let directory = json!({"entry": [{"resource": {"resourceType": "Organization"}}]});
        assert_eq!(bundle_subject(&directory), None);
        assert_eq!(bundle_subject(&json!({"entry": []})), None);
    }

    #[test]
    fn a_bundle_takes_on_its_entries_privacy_labels() {
        let labelled = json!({"entry": [
            {"resource": {"resourceType": "Condition", "meta": {"security": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]}}},
            {"resource": {"resourceType": "Bundle", "entry": [
                {"resource": {"resourceType": "Observation", "meta": {"tag": [
                    {"system": renkei_store::PRIVACY_TAG_SYSTEM, "code": "UNDELIVERED"},
                    {"system": "urn:other", "code": "x"}]}}}]}}]});
        let labels: Vec<(String, Option<String>)> = super::embedded_privacy_labels(&labelled)
            .into_iter()
            .map(|label| (label.param, label.code))
            .collect();
        assert_eq!(
            labels,
            [
                ("_security".to_string(), Some("PSY".to_string())),
                ("_tag".to_string(), Some("UNDELIVERED".to_string()))
            ]
        );
    }
}

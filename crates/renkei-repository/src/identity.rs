//! One patient across facilities: keeps the persons (linked Patient records) in step with
//! Patient writes and administrators' decisions, and answers the identity questions (PIXm,
//! $match, `Patient.link`), always over what the requester may see.

use crate::criteria::Criteria;
use crate::interactions::StoredResource;
use crate::RepoError;
use renkei_identity::{LinkingRules, MatchRequest, MatchScore};
use renkei_store::{LinkOverride, Tx, Visibility};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A person with more records than this is refused: it means a linking identifier is shared
/// by unrelated patients (a placeholder insurance number, say), which an operator must fix.
const MAX_RECORDS_PER_PERSON: usize = 100;
/// Records one relinking may reach through shared keys (before birth dates and unlinks part
/// them into persons).
const MAX_RECORDS_WALKED: usize = 10 * MAX_RECORDS_PER_PERSON;

fn too_many_linked(seed: &str, limit: usize) -> RepoError {
    RepoError::Unprocessable(format!(
        "Patient/{seed} would be linked with more than {limit} records: a linking identifier is \
         shared by unrelated patients"
    ))
}

/// How many records one $match candidate query may bring in before scoring.
const CANDIDATES_PER_QUERY: usize = 50;

/// The link keys of a Patient version: its configured linking identifiers, the record itself,
/// and the record it was merged into (`link.type = replaced-by`, IHE ITI-104), so a merged
/// record joins its survivor.
pub(crate) fn link_keys(rules: &LinkingRules, id: &str, patient: &Value) -> Vec<String> {
    let mut keys = renkei_identity::link_keys(rules, patient);
    keys.push(record_key(id));
    keys.extend(replaced_by(patient).map(|survivor| record_key(&survivor)));
    keys.sort();
    keys.dedup();
    keys
}

fn record_key(id: &str) -> String {
    format!("record|{id}")
}

/// The survivors a Patient names with `link.type = replaced-by`.
pub(crate) fn replaced_by(patient: &Value) -> impl Iterator<Item = String> + '_ {
    patient
        .get("link")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|link| link.get("type").and_then(Value::as_str) == Some("replaced-by"))
        .filter_map(|link| link.pointer("/other/reference").and_then(Value::as_str))
        .map(|reference| match crate::index::local_reference(reference) {
            Some(("Patient", id)) => id.to_string(),
            // A survivor that is not a Patient record here (a conditional or foreign
            // reference): kept as written, so the merge check refuses it.
            _ => reference.to_string(),
        })
}

/// The records whose person a relink regrouped, each with the members its person had before
/// (a record that had none is left out): what a write may have taken out of a person.
pub(crate) type PersonsBefore = Vec<(String, Vec<String>)>;

/// A Patient record was written (or deleted: `None`): refresh its keys and its person.
pub(crate) fn patient_written(
    tx: &mut Tx<'_>,
    rules: &LinkingRules,
    id: &str,
    patient: Option<&Value>,
) -> Result<PersonsBefore, RepoError> {
    let keys = patient.map_or_else(Vec::new, |p| link_keys(rules, id, p));
    tx.replace_link_keys(id, &keys)?;
    relink(tx, id)
}

/// Recomputes the persons around `seed`: everything reachable through shared keys and
/// administrators' links, plus the members of the persons those records belonged to (so a
/// split is seen whole), regrouped into connected components. Returns each regrouped
/// record's person before.
pub fn relink(tx: &mut Tx<'_>, seed: &str) -> Result<PersonsBefore, RepoError> {
    let mut before: PersonsBefore = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = vec![seed.to_string()];
    let mut edges: Vec<(String, String)> = Vec::new();
    let mut linked: Vec<(String, String)> = Vec::new();
    let mut suppressed: Vec<(String, String)> = Vec::new();
    while let Some(record) = queue.pop() {
        if !seen.insert(record.clone()) {
            continue;
        }
        // The walk follows shared keys before birth dates and unlinks are applied, so it may
        // reach more records than the person will hold; it is bounded all the same.
        if seen.len() > MAX_RECORDS_WALKED {
            return Err(too_many_linked(seed, MAX_RECORDS_WALKED));
        }
        for other in tx.records_sharing_keys(&record)? {
            edges.push((record.clone(), other.clone()));
            queue.push(other);
        }
        for decision in tx.link_overrides_of(&record)? {
            let other = decision.other(&record).to_string();
            if decision.linked {
                linked.push((record.clone(), other.clone()));
                queue.push(other);
            } else {
                suppressed.push((record.clone(), other));
            }
        }
        let members = tx.person_members(&record)?;
        queue.extend(members.iter().cloned());
        if !members.is_empty() {
            before.push((record, members));
        }
    }
    let nodes: Vec<String> = seen.into_iter().collect();
    // Shared keys never join records of different birth dates into one person. A merge is
    // the holder's explicit decision, as an administrator's link is: a duplicate replaced by
    // its survivor joins it whatever its (often mistyped) birth date, and the survivor keeps
    // its own date and so the rest of its person.
    let mut birth_dates = std::collections::BTreeMap::new();
    let mut merged: Vec<(String, String)> = Vec::new();
    for node in &nodes {
        let body = tx.current("Patient", node)?.and_then(|row| row.body);
        let Some(patient) = body.and_then(|body| serde_json::from_str::<Value>(&body).ok()) else {
            continue;
        };
        if let Some(date) = renkei_identity::birth_date(&patient) {
            birth_dates.insert(node.clone(), date);
        }
        for survivor in replaced_by(&patient).filter(|survivor| nodes.contains(survivor)) {
            merged.push((node.clone(), survivor));
        }
    }
    let persons =
        renkei_identity::persons(&nodes, &birth_dates, &edges, &linked, &merged, &suppressed);
    if persons
        .iter()
        .any(|person| person.len() > MAX_RECORDS_PER_PERSON)
    {
        return Err(too_many_linked(seed, MAX_RECORDS_PER_PERSON));
    }
    for person in persons {
        tx.assign_person(&person)?;
    }
    Ok(before)
}

/// What an administrator's link or unlink left: the records of each one's person afterwards,
/// and the Consents in force whose holder no longer holds a record of the patient they speak
/// for (one recorded through a link now undone): the patient may never have given them, so an
/// administrator reviews them (an unlink changes no Consent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOutcome {
    pub source_person: Vec<String>,
    pub target_person: Vec<String>,
    pub consents_to_review: Vec<String>,
}

/// An administrator's link (`linked`) or unlink of two Patient records, with the reason kept.
pub fn set_link(tx: &mut Tx<'_>, decision: &LinkOverride) -> Result<LinkOutcome, RepoError> {
    if decision.patient_a == decision.patient_b {
        return Err(RepoError::BadRequest(
            "a Patient record cannot be linked to or unlinked from itself".into(),
        ));
    }
    if decision.reason.trim().is_empty() {
        return Err(RepoError::BadRequest(
            "a reason is required to link or unlink records".into(),
        ));
    }
    for id in [&decision.patient_a, &decision.patient_b] {
        crate::interactions::read(tx, "Patient", id)?;
    }
    let registered_before = registered_consents(tx, &decision.patient_a, &decision.patient_b)?;
    tx.set_link_override(decision)?;
    relink(tx, &decision.patient_a)?;
    relink(tx, &decision.patient_b)?;
    let source_person = tx.person_members(&decision.patient_a)?;
    let target_person = tx.person_members(&decision.patient_b)?;
    // Only the consents this decision took a record from: one whose holder held no record
    // of the person before either is not the decision's to report.
    let registered_after = registered_consents(tx, &decision.patient_a, &decision.patient_b)?;
    let consents_to_review = registered_before
        .into_iter()
        .filter(|(consent, registered)| {
            *registered
                && registered_after
                    .iter()
                    .any(|(after, still)| after == consent && !still)
        })
        .map(|(consent, _)| consent)
        .collect();
    Ok(LinkOutcome {
        source_person,
        target_person,
        consents_to_review,
    })
}

/// The Consents in force on the persons of two Patient records, each with whether its holder
/// holds a record of the person it speaks for, in the order found.
fn registered_consents(
    tx: &mut Tx<'_>,
    record_a: &str,
    record_b: &str,
) -> Result<Vec<(String, bool)>, RepoError> {
    let mut found: Vec<(String, bool)> = Vec::new();
    for record in [record_a, record_b] {
        let person = tx.person_members(record)?;
        let members = if person.is_empty() {
            vec![record.to_string()]
        } else {
            person
        };
        for member in &members {
            for consent in tx.consents_in_force_on(member, 50)? {
                let Some((_, id)) = consent.split_once('/') else {
                    continue;
                };
                let holder = tx.current("Consent", id)?.and_then(|row| row.custodian);
                let registered = match &holder {
                    Some(holder) => tx.holds_patient_record_of(holder, member)?,
                    None => true,
                };
                match found.iter_mut().find(|(known, _)| *known == consent) {
                    Some((_, any_registered)) => *any_registered |= registered,
                    None => found.push((consent, registered)),
                }
            }
        }
    }
    Ok(found)
}

/// The other records of `patient_id`'s person that the requester may see.
pub fn visible_linked_records(
    tx: &mut Tx<'_>,
    patient_id: &str,
    visibility: &Visibility,
) -> Result<Vec<String>, RepoError> {
    let mut visible = Vec::new();
    for member in tx.person_members(patient_id)? {
        if member == patient_id {
            continue;
        }
        let Some(row) = tx.current("Patient", &member)? else {
            continue;
        };
        if !row.deleted && tx.is_visible(&row, visibility)? {
            visible.push(member);
        }
    }
    Ok(visible)
}

/// The extension that marks a `Patient.link` the server added on read ([`with_links`]). A
/// write drops the links so marked ([`strip_added_links`]): a client that reads a Patient and
/// writes it back must not store them, or they would outlive an unlink or a consent change and
/// show the other record to readers who may not see it.
pub const ADDED_LINK_EXTENSION: &str =
    "https://renkei.example/fhir/StructureDefinition/linked-record";

/// Removes from a Patient being written the `link` entries the server added on read; whether
/// it removed any (the caller then extracts the index rows afresh).
pub(crate) fn strip_added_links(patient: &mut Value) -> bool {
    let Some(object) = patient.as_object_mut() else {
        return false;
    };
    let Some(links) = object.get_mut("link").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = links.len();
    links.retain(|link| {
        !link
            .get("extension")
            .and_then(Value::as_array)
            .is_some_and(|extensions| {
                extensions.iter().any(|extension| {
                    extension.get("url").and_then(Value::as_str) == Some(ADDED_LINK_EXTENSION)
                })
            })
    });
    let stripped = links.len() != before;
    if links.is_empty() {
        object.remove("link");
    }
    stripped
}

/// Adds `Patient.link` (`seealso`) entries for the linked records the requester may see, so
/// a reader learns of the other records exactly when consent lets them read those. Each is
/// marked with [`ADDED_LINK_EXTENSION`].
pub fn with_links(
    tx: &mut Tx<'_>,
    mut patient: StoredResource,
    visibility: &Visibility,
) -> Result<StoredResource, RepoError> {
    let linked = visible_linked_records(tx, &patient.id, visibility)?;
    if linked.is_empty() {
        return Ok(patient);
    }
    let mut value = patient.value()?;
    let Some(object) = value.as_object_mut() else {
        return Ok(patient);
    };
    let links = object
        .entry("link")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(links) = links.as_array_mut() else {
        return Ok(patient);
    };
    for id in linked {
        let reference = format!("Patient/{id}");
        let present = links
            .iter()
            .any(|l| l.pointer("/other/reference").and_then(Value::as_str) == Some(&reference));
        if !present {
            links.push(json!({
                "extension": [{"url": ADDED_LINK_EXTENSION, "valueBoolean": true}],
                "other": {"reference": reference},
                "type": "seealso",
            }));
        }
    }
    patient.body = serde_json::to_string(&value)
        .map_err(|e| RepoError::BadRequest(format!("cannot serialize Patient: {e}")))?;
    Ok(patient)
}

/// What a PIXm query (ITI-83) found.
#[derive(Debug, Clone, PartialEq)]
pub enum PixAnswer {
    /// No Patient record uses the source identifier's system (400).
    UnknownSourceDomain,
    /// A requested target system is used by no Patient record (403).
    UnknownTargetDomain(String),
    /// No visible Patient record carries the source identifier (404).
    NotFound,
    /// Records of more than one person carry the source identifier (an insurance member ID a
    /// family shares): it identifies no one patient, and their identifiers together would be
    /// read as one patient's (409).
    SeveralPersons,
    /// The cross-referenced records: identifiers of the requested domains (the source
    /// identifier itself never) and the records themselves.
    Found {
        identifiers: Vec<Value>,
        patients: Vec<String>,
    },
}

impl PixAnswer {
    /// The HTTP status, OperationOutcome issue code and text ITI-83 prescribes for an answer
    /// without cross-references; `None` for a found one.
    pub fn failure(&self) -> Option<(u16, &'static str, &'static str)> {
        match self {
            PixAnswer::Found { .. } => None,
            PixAnswer::UnknownSourceDomain => Some((
                400,
                "code-invalid",
                "sourceIdentifier Assigning Authority not found",
            )),
            PixAnswer::NotFound => Some((
                404,
                "not-found",
                "sourceIdentifier Patient Identifier not found",
            )),
            PixAnswer::UnknownTargetDomain(_) => {
                Some((403, "code-invalid", "targetSystem not found"))
            }
            PixAnswer::SeveralPersons => Some((
                409,
                "multiple-matches",
                "sourceIdentifier identifies more than one patient (records of different \
                 persons carry it): ask with an identifier of one patient",
            )),
        }
    }
}

/// ITI-83: the identifiers and records of the same person in other domains, limited to the
/// records the requester may see.
pub fn pix(
    tx: &mut Tx<'_>,
    source: (&str, &str),
    target_systems: &[String],
    visibility: &Visibility,
) -> Result<PixAnswer, RepoError> {
    let (system, value) = source;
    if !domain_known(tx, system)? {
        return Ok(PixAnswer::UnknownSourceDomain);
    }
    for target in target_systems {
        if !domain_known(tx, target)? {
            return Ok(PixAnswer::UnknownTargetDomain(target.clone()));
        }
    }
    let criteria = Criteria::from_pairs(
        "Patient",
        &[("identifier".into(), format!("{system}|{value}"))],
    )?
    .visible_to(visibility.clone());
    let sources = criteria.resolve(tx, MAX_RECORDS_PER_PERSON)?;
    if sources.is_empty() {
        return Ok(PixAnswer::NotFound);
    }
    let mut records: BTreeSet<String> = BTreeSet::new();
    for source in &sources {
        let mut person: BTreeSet<String> = BTreeSet::from([source.res_id.clone()]);
        person.extend(visible_linked_records(tx, &source.res_id, visibility)?);
        // Every record carrying the identifier must be of one person: the answer is read
        // as the identifiers of one patient.
        if !sources.iter().all(|other| person.contains(&other.res_id)) {
            return Ok(PixAnswer::SeveralPersons);
        }
        records.extend(person);
    }
    let mut identifiers: Vec<Value> = Vec::new();
    let mut patients: Vec<String> = Vec::new();
    for id in records {
        let patient = crate::interactions::read(tx, "Patient", &id)?.value()?;
        let mut in_target = target_systems.is_empty();
        for identifier in patient
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id_system = identifier.get("system").and_then(Value::as_str);
            let id_value = identifier.get("value").and_then(Value::as_str);
            if id_system == Some(system) && id_value == Some(value) {
                continue;
            }
            let wanted = target_systems.is_empty()
                || id_system.is_some_and(|s| target_systems.iter().any(|t| t == s));
            if wanted && !identifiers.contains(identifier) {
                identifiers.push(identifier.clone());
                in_target = true;
            }
        }
        if in_target {
            patients.push(format!("Patient/{id}"));
        }
    }
    Ok(PixAnswer::Found {
        identifiers,
        patients,
    })
}

/// Whether some Patient record carries an identifier of `system` (an assigning authority the
/// network knows). Domains are facilities' numbering systems, not patient data.
fn domain_known(tx: &mut Tx<'_>, system: &str) -> Result<bool, RepoError> {
    let criteria = Criteria::from_pairs("Patient", &[("identifier".into(), format!("{system}|"))])?;
    Ok(!criteria.resolve(tx, 1)?.is_empty())
}

/// One $match candidate.
#[derive(Debug, Clone)]
pub struct MatchCandidate {
    pub resource: StoredResource,
    pub score: MatchScore,
}

/// ITI-119: candidates for the request's Patient among the records the requester may see,
/// gathered by selective index queries and scored by `renkei_identity::score`; best first.
pub fn match_patients(
    tx: &mut Tx<'_>,
    rules: &LinkingRules,
    request: &MatchRequest,
    visibility: &Visibility,
) -> Result<Vec<MatchCandidate>, RepoError> {
    let mut rows: BTreeMap<String, renkei_store::SearchRow> = BTreeMap::new();
    for (param, value) in renkei_identity::candidate_queries(&request.patient) {
        let criteria = match Criteria::from_pairs("Patient", &[(param, value)]) {
            Ok(criteria) => criteria.visible_to(visibility.clone()),
            // A value the search cannot take (a malformed birth date) gathers nothing.
            Err(RepoError::BadRequest(_)) => continue,
            Err(other) => return Err(other),
        };
        for row in criteria.resolve(tx, CANDIDATES_PER_QUERY)? {
            rows.entry(row.res_id.clone()).or_insert(row);
        }
    }
    let mut candidates: Vec<MatchCandidate> = Vec::new();
    for (_, row) in rows {
        let Some(body) = row.body else { continue };
        let value: Value = serde_json::from_str(&body).map_err(|e| {
            RepoError::Store(renkei_store::StoreError::Unavailable(format!(
                "corrupt row: {e}"
            )))
        })?;
        let Some(score) = renkei_identity::score(rules, &request.patient, &value)
            .filter(|score| score.grade.is_candidate())
        else {
            continue;
        };
        if request.only_certain && score.grade != renkei_identity::MatchGrade::Certain {
            continue;
        }
        candidates.push(MatchCandidate {
            resource: StoredResource {
                res_type: row.res_type,
                id: row.res_id,
                version: row.version,
                last_updated: row.last_updated,
                body,
                // Named in the $match AuditEvent: its holder, and the patient whose consent
                // decided that the requester may see it.
                custodian: row.custodian,
                patient_id: row.patient_id,
            },
            score,
        });
    }
    candidates.sort_by(|a, b| {
        b.score
            .score
            .total_cmp(&a.score.score)
            .then_with(|| a.resource.id.cmp(&b.resource.id))
    });
    if let Some(count) = request.count {
        candidates.truncate(count);
    }
    Ok(candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_include_the_record_and_its_survivor() {
        let patient = json!({
            "resourceType": "Patient",
            "link": [{"type": "replaced-by", "other": {"reference": "Patient/survivor"}},
                     {"type": "seealso", "other": {"reference": "Patient/other"}}]
        });
        let keys = link_keys(&LinkingRules::default(), "old", &patient);
        assert!(keys.contains(&"record|old".to_string()));
        assert!(keys.contains(&"record|survivor".to_string()));
        assert!(!keys.iter().any(|k| k.contains("other")));
    }
}

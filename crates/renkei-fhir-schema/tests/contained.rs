//! Contained resources and local references: dom-2, the id every contained resource needs,
//! unique contained ids, ref-1 (a `#id` reference names a contained resource) and dom-3 (every
//! contained resource is referred to, or refers to its container).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use renkei_fhir_schema::{validate, IssueCode};
use serde_json::{json, Value};

/// The (expression, message) of every invariant issue.
fn invariants(resource: &Value) -> Vec<(String, String)> {
    validate(resource)
        .into_iter()
        .filter(|i| i.code == IssueCode::Invariant)
        .map(|i| (i.expression, i.message))
        .collect()
}

fn org(id: Option<&str>) -> Value {
    let mut o = json!({"resourceType": "Organization", "name": "Acme"});
    if let Some(id) = id {
        o["id"] = json!(id);
    }
    o
}

#[test]
fn resolvable_local_references_are_valid() {
    let obs = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "contained": [
            org(Some("org")),
            {"resourceType": "Practitioner", "id": "pr",
             "identifier": [{"assigner": {"reference": "#org"}}]},
            {"resourceType": "Provenance", "id": "prov", "recorded": "2020-01-01T00:00:00Z",
             "target": [{"reference": "#"}], "agent": [{"who": {"reference": "#pr"}}]}
        ],
        "performer": [{"reference": "#pr"}]
    });
    assert_eq!(invariants(&obs), Vec::<(String, String)>::new());
}

#[test]
fn nested_contained_is_refused_dom_2() {
    let mut inner = org(Some("o"));
    inner["contained"] = json!([org(Some("deeper"))]);
    let pat = json!({"resourceType": "Patient", "contained": [inner],
        "managingOrganization": {"reference": "#o"}});
    let found = invariants(&pat);
    assert!(
        found
            .iter()
            .any(|(at, m)| at == "Patient.contained[0]" && m.contains("(dom-2)")),
        "{found:?}"
    );
}

#[test]
fn contained_without_id_is_refused() {
    let pat = json!({"resourceType": "Patient", "contained": [org(None)]});
    let found = invariants(&pat);
    assert!(
        found
            .iter()
            .any(|(at, m)| at == "Patient.contained[0]" && m.contains("needs an id")),
        "{found:?}"
    );
}

#[test]
fn duplicate_contained_ids_are_refused() {
    let pat = json!({"resourceType": "Patient", "contained": [org(Some("o")), org(Some("o"))],
        "managingOrganization": {"reference": "#o"}});
    let found = invariants(&pat);
    assert!(
        found
            .iter()
            .any(|(at, m)| at == "Patient.contained[1]" && m.contains("'o'")),
        "{found:?}"
    );
}

#[test]
fn dangling_local_references_are_refused_ref_1() {
    for reference in ["#nope", "#"] {
        let pat = json!({"resourceType": "Patient", "contained": [org(Some("o"))],
            "managingOrganization": {"reference": reference}});
        let found = invariants(&pat);
        assert!(
            found
                .iter()
                .any(|(at, m)| at == "Patient.managingOrganization.reference"
                    && m.contains("(ref-1)")),
            "{reference}: {found:?}"
        );
    }
    // Without any contained resource, too.
    let pat = json!({"resourceType": "Patient", "managingOrganization": {"reference": "#o"}});
    assert_eq!(invariants(&pat).len(), 1);
}

#[test]
fn each_bundle_entry_has_its_own_scope() {
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "contained": [org(Some("o"))],
            "managingOrganization": {"reference": "#o"}}},
        {"resource": {"resourceType": "Patient", "managingOrganization": {"reference": "#o"}}}
    ]});
    let found = invariants(&bundle);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].0,
        "Bundle.entry[1].resource.managingOrganization.reference"
    );
}

/// The dom-3 issues of `resource`, as (expression, message).
fn dom_3(resource: &Value) -> Vec<(String, String)> {
    invariants(resource)
        .into_iter()
        .filter(|(_, m)| m.contains("(dom-3)"))
        .collect()
}

#[test]
fn unreferenced_contained_resources_are_refused_dom_3() {
    let pat = json!({"resourceType": "Patient", "contained": [org(Some("used")), org(Some("lost"))],
        "managingOrganization": {"reference": "#used"}});
    let found = dom_3(&pat);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "Patient.contained[1]");
    assert!(found[0].1.contains("'lost'"), "{found:?}");
    // Nothing refers to either.
    let pat = json!({"resourceType": "Patient", "contained": [org(Some("a")), org(Some("b"))]});
    let at: Vec<String> = dom_3(&pat).into_iter().map(|(at, _)| at).collect();
    assert_eq!(at, ["Patient.contained[0]", "Patient.contained[1]"]);
}

#[test]
fn a_mention_in_the_narrative_does_not_count_for_dom_3() {
    // R4's expression reads references, canonicals, uris and urls, not the narrative.
    let pat = json!({"resourceType": "Patient",
        "text": {"status": "generated",
                 "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"#o\">Acme</a></div>"},
        "contained": [org(Some("o"))]});
    let found = dom_3(&pat);
    assert_eq!(found.len(), 1, "{found:?}");
    // An identifier's value spelling `#o` is no reference either.
    let pat = json!({"resourceType": "Patient", "identifier": [{"value": "#o"}],
        "contained": [org(Some("o"))]});
    assert_eq!(dom_3(&pat).len(), 1);
}

#[test]
fn canonicals_uris_and_references_from_contained_resources_count_for_dom_3() {
    // A canonical names a contained ValueSet (the usual Questionnaire shape).
    let questionnaire = json!({"resourceType": "Questionnaire", "status": "draft",
        "contained": [{"resourceType": "ValueSet", "id": "vs", "status": "draft"}],
        "item": [{"linkId": "1", "type": "choice", "answerValueSet": "#vs"}]});
    assert_eq!(dom_3(&questionnaire), Vec::<(String, String)>::new());
    // A uri element (an extension's valueUri) names it.
    let pat = json!({"resourceType": "Patient", "contained": [org(Some("o"))],
        "extension": [{"url": "http://example.org/x", "valueUri": "#o"}]});
    assert_eq!(dom_3(&pat), Vec::<(String, String)>::new());
    // Referred to only by another contained resource, which the container refers to.
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "contained": [org(Some("org")),
            {"resourceType": "Practitioner", "id": "pr",
             "identifier": [{"assigner": {"reference": "#org"}}]}],
        "performer": [{"reference": "#pr"}]});
    assert_eq!(dom_3(&obs), Vec::<(String, String)>::new());
}

#[test]
fn a_contained_resource_referring_to_its_container_satisfies_dom_3() {
    let pat = json!({"resourceType": "Patient", "contained": [
        {"resourceType": "Provenance", "id": "prov", "recorded": "2020-01-01T00:00:00Z",
         "target": [{"reference": "#"}],
         "agent": [{"who": {"reference": "Practitioner/1"}}]}]});
    assert_eq!(dom_3(&pat), Vec::<(String, String)>::new());
}

#[test]
fn dom_3_is_checked_per_bundle_entry() {
    // The reference in the first entry names nothing of the second entry's.
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "contained": [org(Some("o"))],
            "managingOrganization": {"reference": "#o"}}},
        {"resource": {"resourceType": "Patient", "contained": [org(Some("o"))]}}
    ]});
    let found = dom_3(&bundle);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "Bundle.entry[1].resource.contained[0]");
}

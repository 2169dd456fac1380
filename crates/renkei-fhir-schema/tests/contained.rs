//! Contained resources and local references: dom-2, the id every contained resource needs,
//! unique contained ids, and ref-1 (a `#id` reference names a contained resource).
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

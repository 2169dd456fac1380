//! `_summary` and `_elements` on official examples.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use renkei_fhir_schema::{
    select_elements, summarize, validate, SummaryMode, SUBSETTED_CODE, SUBSETTED_SYSTEM,
};
use serde_json::{json, Value};

fn example(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/examples")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

fn subsetted_count(v: &Value) -> usize {
    v["meta"]["tag"].as_array().map_or(0, |tags| {
        tags.iter()
            .filter(|t| t["system"] == SUBSETTED_SYSTEM && t["code"] == SUBSETTED_CODE)
            .count()
    })
}

#[test]
fn summary_true_patient() {
    let p = example("Patient-example.json");
    let s = summarize(&p, SummaryMode::True);
    assert_eq!(
        keys(&s),
        [
            "resourceType",
            "id",
            "meta",
            "identifier",
            "active",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "_birthDate",
            "deceasedBoolean",
            "address",
            "managingOrganization"
        ]
    );
    // datatypes are kept whole
    assert_eq!(s["name"], p["name"]);
    assert_eq!(s["_birthDate"], p["_birthDate"]);
    assert_eq!(subsetted_count(&s), 1);
    // still a valid resource
    assert!(validate(&s).is_empty());
    // idempotent tag
    assert_eq!(subsetted_count(&summarize(&s, SummaryMode::True)), 1);
}

#[test]
fn summary_true_observation_and_backbone() {
    let o = example("Observation-blood-pressure.json");
    let s = summarize(&o, SummaryMode::True);
    let k = keys(&s);
    for kept in [
        "status",
        "code",
        "subject",
        "effectiveDateTime",
        "component",
    ] {
        assert!(k.contains(&kept), "{kept} missing from {k:?}");
    }
    for dropped in ["text", "interpretation", "bodySite"] {
        assert!(!k.contains(&dropped), "{dropped} kept in {k:?}");
    }
    // Observation.component: code and value[x] are summary, interpretation is not
    let c0 = &s["component"][0];
    assert!(c0.get("code").is_some() && c0.get("valueQuantity").is_some());
    assert!(c0.get("interpretation").is_none());
    assert!(o["component"][0].get("interpretation").is_some());
}

#[test]
fn summary_true_drops_attachment_data_and_nested_resources_are_summarized() {
    let d = json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": {"contentType": "text/plain", "data": "aGVsbG8=", "title": "x"}}]
    });
    let s = summarize(&d, SummaryMode::True);
    assert_eq!(
        s["content"][0]["attachment"],
        json!({"contentType": "text/plain", "title": "x"})
    );

    let b = example("Bundle-bundle-example.json");
    let s = summarize(&b, SummaryMode::True);
    let first = &s["entry"][0]["resource"];
    assert!(first.get("text").is_none());
    assert_eq!(subsetted_count(first), 1);
    assert_eq!(
        s["entry"].as_array().unwrap().len(),
        b["entry"].as_array().unwrap().len()
    );

    // contained is not a summary element
    let m = example("MedicationRequest-medrx0301.json");
    assert!(summarize(&m, SummaryMode::True).get("contained").is_none());
}

#[test]
fn summary_text_data_false() {
    let o = example("Observation-example.json");
    let t = summarize(&o, SummaryMode::Text);
    assert_eq!(
        keys(&t),
        ["resourceType", "id", "meta", "text", "status", "code"]
    );
    assert_eq!(t["code"], o["code"]);
    assert_eq!(subsetted_count(&t), 1);

    let d = summarize(&o, SummaryMode::Data);
    let mut expected = keys(&o);
    expected.retain(|k| *k != "text");
    expected.insert(2, "meta");
    assert_eq!(keys(&d), expected);
    assert_eq!(subsetted_count(&d), 1);

    assert_eq!(summarize(&o, SummaryMode::False), o);
    assert_eq!(SummaryMode::parse("text"), Some(SummaryMode::Text));
    assert_eq!(SummaryMode::parse("TRUE"), None);
    // non-resources pass through untouched
    assert_eq!(summarize(&json!([1]), SummaryMode::True), json!([1]));
}

#[test]
fn existing_meta_tags_are_kept() {
    let p = json!({
        "resourceType": "Patient",
        "id": "a",
        "meta": {"versionId": "3", "tag": [{"system": "http://x", "code": "y"}]},
        "gender": "male",
        "photo": [{"url": "http://x/p.png"}]
    });
    let s = summarize(&p, SummaryMode::True);
    assert_eq!(
        s["meta"],
        json!({"versionId": "3", "tag": [
            {"system": "http://x", "code": "y"},
            {"system": SUBSETTED_SYSTEM, "code": SUBSETTED_CODE}
        ]})
    );
    assert!(s.get("photo").is_none());
}

#[test]
fn elements_selection() {
    let p = example("Patient-example.json");
    let s = select_elements(&p, &["name", "birthDate"]);
    assert_eq!(
        keys(&s),
        [
            "resourceType",
            "id",
            "meta",
            "name",
            "birthDate",
            "_birthDate"
        ]
    );
    assert_eq!(subsetted_count(&s), 1);
    assert_eq!(
        keys(&select_elements(&p, &["Patient.gender", "unknown"])),
        ["resourceType", "id", "meta", "gender"]
    );

    // choice base names and mandatory elements
    let o = example("Observation-example.json");
    let s = select_elements(&o, &["value"]);
    assert_eq!(
        keys(&s),
        [
            "resourceType",
            "id",
            "meta",
            "status",
            "code",
            "valueQuantity"
        ]
    );
    assert!(validate(&s).is_empty());
}

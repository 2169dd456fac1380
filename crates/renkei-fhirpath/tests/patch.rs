#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use renkei_fhirpath::{
    apply_fhirpath_patch, apply_fhirpath_patch_with, apply_json_patch, PatchError,
};
use serde_json::{json, Value};

fn load(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn json_patch_test_cases() {
    let cases = load("json-patch-tests.json");
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 16);
    for case in cases {
        let comment = case["comment"].as_str().unwrap();
        let original = case["doc"].clone();
        let mut doc = original.clone();
        let result = apply_json_patch(&mut doc, &case["patch"]);
        if let Some(expected) = case.get("expected") {
            assert!(result.is_ok(), "{comment}: {result:?}");
            assert_eq!(&doc, expected, "{comment}");
        } else {
            assert!(
                case.get("error").is_some(),
                "{comment}: case has neither expected nor error"
            );
            let err = result.expect_err(comment);
            assert!(
                matches!(err, PatchError::JsonPatch { .. }),
                "{comment}: {err}"
            );
            assert_eq!(
                doc, original,
                "{comment}: document must be unchanged on error"
            );
        }
    }
}

#[test]
fn json_patch_messages_are_specific() {
    let mut doc = json!({"foo": "bar"});
    let e = apply_json_patch(
        &mut doc,
        &json!([{"op": "add", "path": "/baz/bat", "value": 1}]),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "operation 1 (add): path '/baz' does not exist"
    );
    let e = apply_json_patch(
        &mut doc,
        &json!([{"op": "test", "path": "/foo", "value": "x"}]),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "operation 1 (test): test failed: value at '/foo' is \"bar\", expected \"x\""
    );
    let e = apply_json_patch(&mut doc, &json!({"op": "add"})).unwrap_err();
    assert!(matches!(e, PatchError::Invalid(_)));
    let e = apply_json_patch(&mut doc, &json!([{"op": "frobnicate", "path": "/foo"}])).unwrap_err();
    assert!(
        e.to_string().contains("unknown operation 'frobnicate'"),
        "{e}"
    );
    let e =
        apply_json_patch(&mut doc, &json!([{"op": "add", "path": "foo", "value": 1}])).unwrap_err();
    assert!(e.to_string().contains("must start with '/'"), "{e}");
}

#[test]
fn json_patch_copy_and_root_replace() {
    let mut doc = json!({"a": {"b": [1, 2]}});
    apply_json_patch(
        &mut doc,
        &json!([
            {"op": "copy", "from": "/a/b", "path": "/c"},
            {"op": "add", "path": "/c/-", "value": 3},
            {"op": "move", "from": "/a/b/0", "path": "/a/b/-"},
            {"op": "test", "path": "/c", "value": [1, 2.0, 3]}
        ]),
    )
    .unwrap();
    assert_eq!(doc, json!({"a": {"b": [2, 1]}, "c": [1, 2, 3]}));
    apply_json_patch(
        &mut doc,
        &json!([{"op": "replace", "path": "", "value": [1]}]),
    )
    .unwrap();
    assert_eq!(doc, json!([1]));
}

#[test]
fn fhirpath_patch_cases() {
    let data = load("fhir-patch-cases.json");
    let cases = data["cases"].as_array().unwrap();
    let from_official = cases.iter().filter(|c| c["origin"] != "local").count();
    assert!(from_official >= 25, "{from_official}");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let original = case["input"].clone();
        let mut resource = original.clone();
        let result = apply_fhirpath_patch(&mut resource, &case["patch"]);
        match case.get("error").and_then(Value::as_str) {
            None => {
                assert!(result.is_ok(), "{name}: {result:?}");
                assert_eq!(resource, case["output"], "{name}");
            }
            Some(expected) => {
                let err = result.expect_err(name).to_string();
                assert!(
                    err.contains(expected),
                    "{name}: '{err}' does not contain '{expected}'"
                );
                assert_eq!(
                    resource, original,
                    "{name}: resource must be unchanged on error"
                );
            }
        }
    }
}

#[test]
fn fhirpath_patch_error_message_format() {
    let mut p = json!({"resourceType": "Patient", "gender": "male"});
    let patch = json!({"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.gender"}]},
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.birthDate"},
            {"name": "value", "valueDate": "2000-01-01"}]}
    ]});
    let e = apply_fhirpath_patch(&mut p, &patch).unwrap_err();
    assert_eq!(
        e.to_string(),
        "operation 2 (replace): path 'Patient.birthDate' matched no element"
    );
    assert_eq!(p, json!({"resourceType": "Patient", "gender": "male"}));

    let e = apply_fhirpath_patch(&mut p, &json!({"resourceType": "Patient"})).unwrap_err();
    assert!(matches!(e, PatchError::Invalid(_)));
    let bad = json!({"resourceType": "Parameters", "parameter": [{"name": "op"}]});
    let e = apply_fhirpath_patch(&mut p, &bad).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid patch: operation 1: parameter is named 'op', expected 'operation'"
    );
}

#[test]
fn fhirpath_patch_cardinality_oracle() {
    let patch = json!({"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Observation"},
            {"name": "name", "valueString": "performer"},
            {"name": "value", "valueReference": {"reference": "Practitioner/1"}}]}
    ]});
    let mut obs = json!({"resourceType": "Observation"});
    apply_fhirpath_patch_with(&mut obs, &patch, &|p| p == "Observation.performer").unwrap();
    assert_eq!(obs["performer"], json!([{"reference": "Practitioner/1"}]));
    let mut obs = json!({"resourceType": "Observation"});
    apply_fhirpath_patch_with(&mut obs, &patch, &|_| false).unwrap();
    assert_eq!(obs["performer"], json!({"reference": "Practitioner/1"}));
}

#[test]
fn fhirpath_patch_inside_contained_resource() {
    let mut enc = json!({"resourceType": "Encounter", "contained": [
        {"resourceType": "Location", "id": "home", "name": "Home"}]});
    let patch = json!({"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Encounter.contained.where(id='home').name"},
            {"name": "value", "valueString": "Client's home"}]},
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Encounter.contained[0]"},
            {"name": "name", "valueString": "alias"},
            {"name": "value", "valueString": "Casa"}]}
    ]});
    apply_fhirpath_patch(&mut enc, &patch).unwrap();
    assert_eq!(enc["contained"][0]["name"], "Client's home");
    assert_eq!(enc["contained"][0]["alias"], json!(["Casa"]));
}

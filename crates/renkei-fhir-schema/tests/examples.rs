//! Official R4 examples validate cleanly; mutated copies produce the expected issues and paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use renkei_fhir_schema::{validate, Issue, IssueCode};
use serde_json::{json, Value};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/examples")
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text.trim_start_matches('\u{feff}')).expect("valid JSON")
}

fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(data_dir().join(name)).expect("read example");
    parse(&text)
}

fn show(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {:?} {} : {}", i.code, i.expression, i.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Assert that `issues` contains exactly one issue with this code at this path.
#[track_caller]
fn expect_issue(issues: &[Issue], code: IssueCode, path: &str) {
    let n = issues
        .iter()
        .filter(|i| i.code == code && i.expression == path)
        .count();
    assert_eq!(
        n,
        1,
        "expected one {code:?} issue at {path}, got:\n{}",
        show(issues)
    );
}

#[test]
fn all_copied_examples_validate_without_issues() {
    let mut n = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(data_dir()).expect("examples dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let v = parse(&std::fs::read_to_string(&path).expect("read"));
        let issues = validate(&v);
        n += 1;
        if !issues.is_empty() {
            failures.push(format!("{}:\n{}", path.display(), show(&issues)));
        }
    }
    assert!(n >= 40, "expected the copied examples, found {n}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every official example vendored in the repository (`fixtures/r4-examples`, 289 files)
/// validates without an issue. Missing data fails the test rather than skipping it.
#[test]
fn all_vendored_examples_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/r4-examples");
    let rd =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{} is missing: {e}", dir.display()));
    let mut failures = Vec::new();
    let mut checked = 0;
    for entry in rd.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let issues = validate(&parse(&text));
        checked += 1;
        if !issues.is_empty() {
            failures.push(format!("{}:\n{}", path.display(), show(&issues)));
        }
    }
    assert!(
        checked >= 280,
        "expected the 289 vendored examples, found {checked}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn patient_mutations() {
    let mut p = example("Patient-example.json");
    p["birthDate"] = json!("1990-13-45");
    let issues = validate(&p);
    assert_eq!(issues.len(), 1, "{}", show(&issues));
    expect_issue(&issues, IssueCode::Value, "Patient.birthDate");

    let mut p = example("Patient-example.json");
    p["birthDate"] = json!("2019-02-29"); // not a leap year
    expect_issue(&validate(&p), IssueCode::Value, "Patient.birthDate");

    let mut p = example("Patient-example.json");
    p["favouriteColour"] = json!("blue");
    let issues = validate(&p);
    expect_issue(&issues, IssueCode::Structure, "Patient.favouriteColour");
    assert!(issues[0].message.contains("favouriteColour"));

    let mut p = example("Patient-example.json");
    p["gender"] = json!("mal");
    let issues = validate(&p);
    assert_eq!(issues.len(), 1, "{}", show(&issues));
    expect_issue(&issues, IssueCode::CodeInvalid, "Patient.gender");
    assert!(issues[0]
        .message
        .contains("male | female | other | unknown"));

    let mut p = example("Patient-example.json");
    p["active"] = json!([true]);
    expect_issue(&validate(&p), IssueCode::Structure, "Patient.active");

    let mut p = example("Patient-example.json");
    p["name"] = json!({"family": "Chalmers"});
    expect_issue(&validate(&p), IssueCode::Structure, "Patient.name");

    let mut p = example("Patient-example.json");
    p["name"][0]["given"][1] = json!("");
    expect_issue(&validate(&p), IssueCode::Value, "Patient.name[0].given[1]");

    let mut p = example("Patient-example.json");
    p["name"][0]["given"][1] = json!(42);
    expect_issue(
        &validate(&p),
        IssueCode::Structure,
        "Patient.name[0].given[1]",
    );

    let mut p = example("Patient-example.json");
    p["active"] = json!("true");
    expect_issue(&validate(&p), IssueCode::Structure, "Patient.active");

    let mut p = example("Patient-example.json");
    p["contact"][0]["gender"] = json!("F");
    expect_issue(
        &validate(&p),
        IssueCode::CodeInvalid,
        "Patient.contact[0].gender",
    );

    let mut p = example("Patient-example.json");
    p["link"] = json!([{"other": {"reference": "Patient/1"}}]);
    expect_issue(&validate(&p), IssueCode::Required, "Patient.link[0].type");

    let mut p = example("Patient-example.json");
    p["deceasedDateTime"] = json!("2015-02-14T13:42:00+10:00");
    expect_issue(&validate(&p), IssueCode::Structure, "Patient.deceased[x]");

    let mut p = example("Patient-example.json");
    p["id"] = json!("bad_id");
    expect_issue(&validate(&p), IssueCode::Value, "Patient.id");

    let mut p = example("Patient-example.json");
    p["meta"] = json!({"lastUpdated": "2020-01-01"});
    expect_issue(&validate(&p), IssueCode::Value, "Patient.meta.lastUpdated");

    let mut p = example("Patient-example.json");
    p["multipleBirthInteger"] = json!(1.5);
    expect_issue(
        &validate(&p),
        IssueCode::Value,
        "Patient.multipleBirthInteger",
    );
}

#[test]
fn all_issues_are_collected() {
    let mut p = example("Patient-example.json");
    p["birthDate"] = json!("1990-13-45");
    p["gender"] = json!("mal");
    p["foo"] = json!(1);
    p["active"] = json!([true]);
    p["telecom"] = json!([]);
    p["address"][0]["city"] = Value::Null;
    p["contact"][0]["relationship"][0] = json!({});
    let issues = validate(&p);
    assert_eq!(issues.len(), 7, "{}", show(&issues));
    expect_issue(&issues, IssueCode::Value, "Patient.birthDate");
    expect_issue(&issues, IssueCode::CodeInvalid, "Patient.gender");
    expect_issue(&issues, IssueCode::Structure, "Patient.foo");
    expect_issue(&issues, IssueCode::Structure, "Patient.active");
    expect_issue(&issues, IssueCode::Structure, "Patient.telecom");
    expect_issue(&issues, IssueCode::Structure, "Patient.address[0].city");
    expect_issue(
        &issues,
        IssueCode::Structure,
        "Patient.contact[0].relationship[0]",
    );
}

#[test]
fn observation_and_medication_request_required_and_choice() {
    let mut o = example("Observation-example.json");
    o.as_object_mut().expect("object").remove("status");
    let issues = validate(&o);
    assert_eq!(issues.len(), 1, "{}", show(&issues));
    expect_issue(&issues, IssueCode::Required, "Observation.status");

    // a primitive counts as present if only its extension is there
    let mut o = example("Observation-example.json");
    o.as_object_mut().expect("object").remove("status");
    o["_status"] = json!({"extension": [{"url": "http://example.org/x", "valueString": "y"}]});
    assert!(validate(&o).is_empty(), "{}", show(&validate(&o)));

    let mut o = example("Observation-example.json");
    o.as_object_mut().expect("object").remove("code");
    o["valueString"] = json!("high");
    let issues = validate(&o);
    assert_eq!(issues.len(), 2, "{}", show(&issues));
    expect_issue(&issues, IssueCode::Required, "Observation.code");
    expect_issue(&issues, IssueCode::Structure, "Observation.value[x]");

    let mut o = example("Observation-example.json");
    o["valueQuantity"]["value"] = json!("185");
    expect_issue(
        &validate(&o),
        IssueCode::Structure,
        "Observation.valueQuantity.value",
    );
    let mut o = example("Observation-example.json");
    o["valueQuantity"]["comparator"] = json!("=");
    expect_issue(
        &validate(&o),
        IssueCode::CodeInvalid,
        "Observation.valueQuantity.comparator",
    );

    let mut m = example("MedicationRequest-medrx0301.json");
    m.as_object_mut()
        .expect("object")
        .remove("medicationReference");
    expect_issue(
        &validate(&m),
        IssueCode::Required,
        "MedicationRequest.medication[x]",
    );
}

#[test]
fn nested_resources_are_validated() {
    let mut m = example("MedicationRequest-medrx0301.json");
    m["contained"][0]["flavour"] = json!("cherry");
    expect_issue(
        &validate(&m),
        IssueCode::Structure,
        "MedicationRequest.contained[0].flavour",
    );
    let mut m = example("MedicationRequest-medrx0301.json");
    m["contained"][0]["resourceType"] = json!("Medicine");
    expect_issue(
        &validate(&m),
        IssueCode::Invalid,
        "MedicationRequest.contained[0]",
    );

    let mut b = example("Bundle-bundle-transaction.json");
    b["entry"][0]["resource"]["birthDate"] = json!("1974-12-32");
    expect_issue(
        &validate(&b),
        IssueCode::Value,
        "Bundle.entry[0].resource.birthDate",
    );

    // Parameters.parameter.resource inside a Bundle entry
    let mut b = example("Bundle-bundle-transaction.json");
    let idx = b["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .position(|e| e["resource"]["resourceType"] == "Parameters")
        .expect("a Parameters entry");
    b["entry"][idx]["resource"]["parameter"] = json!([
        {"name": "p", "resource": {"resourceType": "Patient", "gender": "x"}}
    ]);
    expect_issue(
        &validate(&b),
        IssueCode::CodeInvalid,
        &format!("Bundle.entry[{idx}].resource.parameter[0].resource.gender"),
    );

    let mut b = example("Bundle-bundle-transaction.json");
    b["type"] = json!("transactions");
    expect_issue(&validate(&b), IssueCode::CodeInvalid, "Bundle.type");
}

#[test]
fn primitive_extensions() {
    let ok = json!({
        "resourceType": "Patient",
        "name": [{"given": ["A", null, "C"], "_given": [null, {"extension": [{"url": "http://x", "valueString": "B"}]}, null]}],
        "_birthDate": {"id": "b1", "extension": [{"url": "http://x", "valueBoolean": true}]},
        "fhir_comments": ["legacy"]
    });
    assert!(validate(&ok).is_empty(), "{}", show(&validate(&ok)));

    let bad = json!({
        "resourceType": "Patient",
        "name": [{"given": ["A", null], "_given": [null, null]}],
        "_birthDate": {"value": "1990"},
        "_name": {"id": "x"},
        "_gender": [{"id": "g"}]
    });
    let issues = validate(&bad);
    assert_eq!(issues.len(), 5, "{}", show(&issues));
    expect_issue(&issues, IssueCode::Invariant, "Patient.birthDate");
    expect_issue(&issues, IssueCode::Structure, "Patient.name[0].given[1]");
    expect_issue(&issues, IssueCode::Structure, "Patient.birthDate.value");
    expect_issue(&issues, IssueCode::Structure, "Patient._name");
    expect_issue(&issues, IssueCode::Structure, "Patient.gender");
}

#[test]
fn not_a_resource() {
    let issues = validate(&json!([1, 2]));
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].code, IssueCode::Invalid);
    assert_eq!(issues[0].expression, "");
    assert_eq!(validate(&json!({"id": "x"}))[0].code, IssueCode::Invalid);
    assert_eq!(
        validate(&json!({"resourceType": "Patients"}))[0].code,
        IssueCode::Invalid
    );
    assert_eq!(
        validate(&json!({"resourceType": "HumanName"}))[0].code,
        IssueCode::Invalid
    );
    assert!(validate(&json!({"resourceType": "Parameters"})).is_empty());
}

#[test]
fn validation_is_fast() {
    let p = example("Patient-example.json"); // ~4.6 KB of JSON
    let _ = validate(&p); // load the model
    let n = 2000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        assert!(validate(&p).is_empty());
    }
    let per = start.elapsed() / n;
    eprintln!("validate(Patient-example.json): {per:?} per call");
    // generous bound so that unoptimised debug builds on slow machines pass
    assert!(per < std::time::Duration::from_millis(2), "{per:?}");
}

#[test]
fn primitive_formats_and_ranges() {
    let r = json!({
        "resourceType": "Patient",
        "extension": [
            {"url": "http://x/a", "valueUuid": "urn:uuid:not-a-uuid"},
            {"url": "http://x/b", "valueOid": "urn:oid:1.2.3"},
            {"url": "http://x/c", "valueTime": "25:00:00"},
            {"url": "http://x/d", "valuePositiveInt": 0},
            {"url": "http://x/e", "valueUnsignedInt": -1},
            {"url": "http://x/f", "valueInteger": 3000000000_u64},
            {"url": "http://x/g", "valueDecimal": "1.5"},
            {"url": "http://x/h", "valueCode": "two  spaces"},
            {"url": "http://x y", "valueBase64Binary": "aGVsbG8="},
            {"url": "http://x/i", "valueInstant": "2020-01-01T10:00:00"},
            {"url": "http://x/j", "valueDateTime": "2020-01-01T10:00"},
            {"url": "http://x/k", "valueBase64Binary": "not base64!"},
            {"url": "http://x/l", "valueDecimal": 1.5e3},
            {"url": "http://x/m", "valueMarkdown": "**ok**"},
            {"url": "http://x/n", "valueString": "bell\u{7}"}
        ]
    });
    let issues = validate(&r);
    let at = |i: usize, name: &str| format!("Patient.extension[{i}].{name}");
    expect_issue(&issues, IssueCode::Value, &at(0, "valueUuid"));
    expect_issue(&issues, IssueCode::Value, &at(2, "valueTime"));
    expect_issue(&issues, IssueCode::Value, &at(3, "valuePositiveInt"));
    expect_issue(&issues, IssueCode::Value, &at(4, "valueUnsignedInt"));
    expect_issue(&issues, IssueCode::Value, &at(5, "valueInteger"));
    expect_issue(&issues, IssueCode::Structure, &at(6, "valueDecimal"));
    expect_issue(&issues, IssueCode::Value, &at(7, "valueCode"));
    expect_issue(&issues, IssueCode::Value, &at(8, "url"));
    expect_issue(&issues, IssueCode::Value, &at(9, "valueInstant"));
    expect_issue(&issues, IssueCode::Value, &at(10, "valueDateTime"));
    expect_issue(&issues, IssueCode::Value, &at(11, "valueBase64Binary"));
    expect_issue(&issues, IssueCode::Value, &at(14, "valueString"));
    assert_eq!(issues.len(), 12, "{}", show(&issues));

    let bad_div = json!({
        "resourceType": "Basic",
        "code": {"text": "x"},
        "text": {"status": "generated", "div": "<p>no div</p>"}
    });
    expect_issue(&validate(&bad_div), IssueCode::Value, "Basic.text.div");
    let missing =
        json!({"resourceType": "Basic", "code": {"text": "x"}, "text": {"status": "generated"}});
    expect_issue(&validate(&missing), IssueCode::Required, "Basic.text.div");
    let no_code = json!({"resourceType": "Basic"});
    expect_issue(&validate(&no_code), IssueCode::Required, "Basic.code");
}

#[test]
fn operation_outcome_rendering() {
    use renkei_fhir_schema::operation_outcome;
    let mut p = example("Patient-example.json");
    p["gender"] = json!("mal");
    let oo = operation_outcome(&validate(&p));
    assert_eq!(
        oo,
        json!({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error",
            "code": "code-invalid",
            "diagnostics": "'mal' is not a valid code for 'gender' (required binding: male | female | other | unknown)",
            "expression": ["Patient.gender"]
        }]})
    );
    assert!(validate(&oo).is_empty());
    let ok = operation_outcome(&[]);
    assert_eq!(ok["issue"][0]["severity"], "information");
    assert!(validate(&ok).is_empty());
}

#[test]
fn extensions_carry_a_value_or_extensions_but_not_both() {
    let with = |extension: serde_json::Value| {
        validate(&json!({"resourceType": "Patient", "extension": [extension]}))
    };
    assert!(with(json!({"url": "http://x", "valueString": "a"})).is_empty());
    assert!(
        with(json!({"url": "http://x", "extension": [{"url": "y", "valueString": "a"}]}))
            .is_empty()
    );
    let both = with(json!({"url": "http://x", "valueString": "a",
                           "extension": [{"url": "y", "valueString": "b"}]}));
    expect_issue(&both, IssueCode::Invariant, "Patient.extension[0]");
    let neither = with(json!({"url": "http://x"}));
    expect_issue(&neither, IssueCode::Invariant, "Patient.extension[0]");
}

#[test]
fn elements_need_a_value_or_children_not_only_an_id() {
    let only_id = validate(&json!({"resourceType": "Patient", "maritalStatus": {"id": "x"}}));
    expect_issue(&only_id, IssueCode::Invariant, "Patient.maritalStatus");
    let empty_item = validate(&json!({"resourceType": "Patient",
        "name": [{"given": ["A", null], "_given": [null, {"id": "q"}]}]}));
    expect_issue(
        &empty_item,
        IssueCode::Invariant,
        "Patient.name[0].given[1]",
    );
    let with_value = validate(&json!({"resourceType": "Patient",
        "name": [{"given": ["A"], "_given": [{"id": "q"}]}]}));
    assert!(with_value.is_empty(), "{}", show(&with_value));
}

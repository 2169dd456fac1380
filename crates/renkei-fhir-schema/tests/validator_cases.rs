//! Compare this crate's verdict ("has errors") with the HL7 Java validator on the R4 base cases of
//! FHIR/fhir-test-cases (see tests/data/validator-r4-base/ORIGIN.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use renkei_fhir_schema::validate;
use serde_json::Value;

/// Cases where the Java validator reports errors that are outside structural validation, so this
/// crate (correctly, for its scope) accepts the resource. name -> reason.
const OUT_OF_SCOPE: &[(&str, &str)] = &[
    (
        "attachment-with-wrong-size",
        "Attachment.size vs decoded data length (semantic check)",
    ),
    (
        "bundle-document-versioned-references-bad",
        "reference resolution inside a Bundle",
    ),
    (
        "dr-example-org",
        "example.org URLs not allowed (validator policy)",
    ),
    (
        "mr-covid-bnd1",
        "Coding.system must be absolute (terminology/URL policy)",
    ),
    ("parameters-reference-bad", "reference resolution"),
    (
        "bundle-duplicate-id",
        "bdl invariants: absolute fullUrl, duplicate ids",
    ),
    (
        "mni-patientOverview-bundle-example1",
        "terminology: wrong display names",
    ),
    (
        "mni-patientOverview-bundle-example1b",
        "terminology: wrong display names",
    ),
    (
        "bundle-duplicate-ids-not",
        "terminology: wrong display names",
    ),
    (
        "pat-dob-ext",
        "unknown extension definition (needs extension registry)",
    ),
    ("target-ref-profile-empty", "unknown extension definition"),
    ("bundle-id-2", "Bundle invariant: link 'self' only once"),
    ("bundle-id-3", "terminology: wrong display names"),
    ("bundle-id-4", "terminology: wrong display names"),
    ("bundle-id-5", "terminology: wrong display names"),
    ("pat-example-extensions", "unknown extension definition"),
    ("bundle-with-contained", "narrative hyperlink resolution"),
    (
        "risk-assessment-probability-range",
        "ras-2 invariant (FHIRPath constraint)",
    ),
    ("uk-msg", "terminology: wrong display names"),
    ("encounter-period", "per-1 invariant (Period.start <= end)"),
    (
        "bad-markdown-no-html",
        "markdown content policy (embedded HTML)",
    ),
    ("maiden-name-extension", "extension context rules"),
    (
        "ips-htmlrefs-backwards",
        "extension value type from its definition",
    ),
    (
        "ai7",
        "StructureDefinition.name is a required primitive; StructureDefinition has no \
         StructureDefinition in our sources and the JSON schema omits required primitives",
    ),
    ("ai8", "same as ai7"),
];

/// Cases where this crate deliberately differs from the Java validator.
const DELIBERATE: &[(&str, &str)] = &[
    (
        "comments-4",
        "fhir_comments is accepted (tolerated legacy DSTU2 property), Java rejects it",
    ),
    (
        "contained-resource-bad-id-ignore",
        "same file as contained-resource-bad-id, run by Java with a setting that ignores the bad \
         contained id; we always report it",
    ),
];

fn verdict(dir: &Path, file: &str) -> (bool, String) {
    let bytes = std::fs::read(dir.join(file)).expect("case file");
    let text = String::from_utf8_lossy(&bytes);
    match serde_json::from_str::<Value>(text.trim_start_matches('\u{feff}')) {
        Err(e) => (true, format!("JSON parse error: {e}")),
        Ok(v) => {
            let issues = validate(&v);
            let first = issues
                .first()
                .map(|i| format!("{} : {}", i.expression, i.message))
                .unwrap_or_default();
            (!issues.is_empty(), first)
        }
    }
}

#[test]
fn agreement_with_java_validator() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validator-r4-base");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    let (mut agree, mut accept_ok, mut accept_n, mut reject_ok, mut reject_n) = (0, 0, 0, 0, 0);
    let mut unexpected = Vec::new();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let file = c["file"].as_str().unwrap();
        let java_rejects = c["java_error_count"].as_u64().unwrap() > 0;
        let (we_reject, first) = verdict(&dir, file);
        if java_rejects {
            reject_n += 1;
        } else {
            accept_n += 1;
        }
        if we_reject == java_rejects {
            agree += 1;
            if java_rejects {
                reject_ok += 1;
            } else {
                accept_ok += 1;
            }
            if OUT_OF_SCOPE.iter().any(|(n, _)| *n == name)
                || DELIBERATE.iter().any(|(n, _)| *n == name)
            {
                unexpected.push(format!("{name}: listed as a disagreement but now agrees"));
            }
        } else {
            let listed = if java_rejects {
                OUT_OF_SCOPE.iter().any(|(n, _)| *n == name)
                    || DELIBERATE.iter().any(|(n, _)| *n == name)
            } else {
                DELIBERATE.iter().any(|(n, _)| *n == name)
            };
            if !listed {
                unexpected.push(format!(
                    "{name}: java rejects={java_rejects}, we reject={we_reject} ({first}); java: {}",
                    c["first_error"]
                ));
            }
        }
    }
    eprintln!(
        "validator-r4-base: {agree}/{} agree; must-accept {accept_ok}/{accept_n}, must-reject \
         {reject_ok}/{reject_n} (out of scope: {}, deliberate: {})",
        cases.len(),
        OUT_OF_SCOPE.len(),
        DELIBERATE.len()
    );
    assert!(unexpected.is_empty(), "{}", unexpected.join("\n"));
    assert_eq!(cases.len(), 77);
    assert_eq!(agree, 50);
}

/// The structural must-reject cases: we report an issue at the location Java reports.
#[test]
fn structural_rejects_have_expected_paths() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validator-r4-base/cases");
    let expected: &[(&str, &str)] = &[
        ("attachment-with-invalid-binary.json", "Media.content.data"),
        ("synthea.json", "Encounter.reasonCode"),
        ("synthea.json", "Encounter.status"),
        ("empty-array.json", "DocumentReference.category[0].coding"),
        ("hakan-se.json", "MedicationRequest.medication[x]"),
        ("hakan-se.json", "MedicationRequest.authoredOn"),
        ("resource-invalid-id-1.json", "Location.id"),
        ("resource-invalid-id-2.json", "Location.id"),
        ("resource-invalid-id-3.json", "Location.contained[0].id"),
        ("contained-resource.json", "Condition.contained[0].id"),
        // dom-3, as Java reports it: the contained resources are referred to by nothing.
        ("contained-resource.json", "Condition.contained[0]"),
        (
            "bundle-ea-testcase.json",
            "Bundle.entry[1].resource.contained[0]",
        ),
        ("patient-id-bad-1.json", "Patient.id"),
        ("patient-id-bad-2.json", "Patient.id"),
        ("patient-id-bad-3.json", "Patient.id"),
        ("xml-bad-entities.json", "Encounter.text.div"),
        ("pat-security-bad-xhtml.json", "Patient.text.div"),
        ("versioned-extension.json", "Patient.extension[2].url"),
        ("ai3.json", "Patient.unknownElement"),
        ("ai4.json", "Patient.birthDate"),
        (
            "parameters-attachment.json",
            "Parameters.parameter[0].valueAttachment.data",
        ),
        ("Observation-ex-pain.json", "Observation.code"),
        ("Observation-ex-pain.json", "Observation.valueInteger.value"),
    ];
    for (file, path) in expected {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let v: Value = serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap();
        let issues = validate(&v);
        assert!(
            issues.iter().any(|i| i.expression == *path),
            "{file}: expected an issue at {path}, got {issues:#?}"
        );
    }
}

//! The demo network (fixtures/demo): every facility × every stored resource, checked
//! against the visibility table of fixtures/demo/README.md. Also exercises
//! `ResourceFacts::from_resource` on real JP Core data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use renkei_consent::*;
use serde_json::Value;

const FILES: [&str; 7] = [
    include_str!("../../../fixtures/demo/01-organizations.json"),
    include_str!("../../../fixtures/demo/02-practitioners.json"),
    include_str!("../../../fixtures/demo/03-patients.json"),
    include_str!("../../../fixtures/demo/04-clinical-okayama-central.json"),
    include_str!("../../../fixtures/demo/05-clinical-kurashiki-general.json"),
    include_str!("../../../fixtures/demo/06-clinical-hareyaka-clinic.json"),
    include_str!("../../../fixtures/demo/07-consents.json"),
];

const OKAYAMA: &str = "Organization/hosp-okayama-central";
const KURASHIKI: &str = "Organization/hosp-kurashiki-general";
const HAREYAKA: &str = "Organization/clinic-hareyaka";

fn resources() -> Vec<Value> {
    FILES
        .iter()
        .flat_map(|text| {
            let bundle: Value = serde_json::from_str(text).unwrap();
            bundle["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"].clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What the store would record: custodian from meta.source, patient from subject/patient.
fn facts(resource: &Value) -> ResourceFacts {
    let res_type = resource["resourceType"].as_str().unwrap();
    let id = resource["id"].as_str().unwrap();
    let custodian = resource["meta"]["source"]
        .as_str()
        .and_then(|s| s.rsplit('/').next())
        .map(|org| format!("Organization/{org}"));
    let patient = ["subject", "patient"]
        .iter()
        .filter_map(|k| resource[*k]["reference"].as_str())
        .find_map(|r| r.strip_prefix("Patient/"));
    ResourceFacts::from_resource(res_type, id, custodian.as_deref(), patient, resource)
}

/// The README's table: which facilities a patient's consent names (TREAT).
fn consented(patient: &str, viewer: &str) -> bool {
    match patient {
        "pat-yamada-taro" => [OKAYAMA, HAREYAKA].contains(&viewer),
        "pat-suzuki-hanako" => true,
        _ => false,
    }
}

#[test]
fn visibility_matches_the_demo_readme() {
    let all = resources();
    let consents: Vec<Value> = all
        .iter()
        .filter(|r| r["resourceType"] == "Consent")
        .cloned()
        .collect();
    assert_eq!(consents.len(), 3);
    let rules = compile_all(&consents);
    assert_eq!(rules.len(), 2 + 6);
    let now = ms("2025-12-01T12:00:00+09:00");

    let mut checked = 0;
    let mut visible_elsewhere = 0;
    for resource in all.iter().filter(|r| r["resourceType"] != "Consent") {
        let f = facts(resource);
        for viewer in [OKAYAMA, KURASHIKI, HAREYAKA] {
            let principal = facility(viewer);
            let has = f
                .patient_id
                .as_deref()
                .is_some_and(|p| patient_has_consent(&rules, p));
            let d = decide(&principal, &f, &rules, has, &OPT_IN, now);
            let expected = match (&f.custodian, f.subject_patient()) {
                (Some(c), _) if c == viewer => true,
                (_, None) => true,
                (_, Some(patient)) => {
                    consented(patient, viewer)
                        && !f.has_privacy_tag(TAG_UNDELIVERED)
                        && !f.has_label(ACT_CODE_SYSTEM, "PSY")
                }
            };
            assert_eq!(d.is_permit(), expected, "{viewer} → {}: {d:?}", f.reference);
            if d.is_permit() && f.custodian.as_deref().is_some_and(|c| c != viewer) {
                visible_elsewhere += 1;
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 113 * 3);
    assert!(visible_elsewhere > 20, "{visible_elsewhere}");
}

#[test]
fn named_demo_situations() {
    let all = resources();
    let by_id = |id: &str| facts(all.iter().find(|r| r["id"] == id).unwrap());
    let rules = compile_all(
        &all.iter()
            .filter(|r| r["resourceType"] == "Consent")
            .cloned()
            .collect::<Vec<_>>(),
    );
    let now = ms("2025-12-01T12:00:00+09:00");
    let check = |viewer: &str, id: &str| {
        let f = by_id(id);
        let has = f
            .patient_id
            .as_deref()
            .is_some_and(|p| patient_has_consent(&rules, p));
        decide(&facility(viewer), &f, &rules, has, &OPT_IN, now)
    };
    let withdrawn = "Consent/consent-takahashi-ichiro";
    let cases: Vec<(&str, &str, Decision)> = vec![
        // Scenario 1: the clinic sees Okayama's HbA1c trend for 山田…
        (
            HAREYAKA,
            "lab-oka-yamada-2025-11-04-hba1c",
            consent_permit("consent-yamada-taro"),
        ),
        // …but not the UNDELIVERED tumour marker,
        (
            HAREYAKA,
            "lab-oka-yamada-2025-11-04-ca199",
            Decision::deny(Reason::PrivacyTag(TAG_UNDELIVERED.into())),
        ),
        // while the UNINFORMED suspicion is visible to a consented facility.
        (
            HAREYAKA,
            "cond-oka-yamada-pancreas-suspect",
            consent_permit("consent-yamada-taro"),
        ),
        // Kurashiki is not an actor of 山田's consent.
        (KURASHIKI, "lab-oka-yamada-2025-11-04-hba1c", no_permit()),
        // Scenario 3: the clinic sees 鈴木's discharge summary and CT…
        (
            HAREYAKA,
            "docref-kur-suzuki-discharge-summary",
            consent_permit("consent-suzuki-hanako"),
        ),
        (
            HAREYAKA,
            "imaging-kur-suzuki-hip-ct",
            consent_permit("consent-suzuki-hanako"),
        ),
        // …but never the PSY-labelled psychiatry data (nested deny).
        (
            HAREYAKA,
            "cond-oka-suzuki-depression",
            consent_deny("consent-suzuki-hanako"),
        ),
        (
            KURASHIKI,
            "medreq-oka-suzuki-dayvigo",
            consent_deny("consent-suzuki-hanako"),
        ),
        (
            KURASHIKI,
            "enc-oka-suzuki-psy-1",
            consent_deny("consent-suzuki-hanako"),
        ),
        (
            OKAYAMA,
            "enc-oka-suzuki-psy-1",
            Decision::permit(Reason::OwnData),
        ),
        // 高橋 withdrew: no rules, opt-in default.
        (KURASHIKI, "medreq-oka-takahashi-mucodyne", implicit(false)),
        // 伊藤 never consented.
        (HAREYAKA, "medreq-kur-ito-predonine", implicit(false)),
        // Directory data.
        (
            HAREYAKA,
            "pacs-kurashiki-general",
            Decision::permit(Reason::NotPatientData),
        ),
    ];
    let ids: Vec<&str> = all.iter().filter_map(|r| r["id"].as_str()).collect();
    let mut failures = Vec::new();
    for (viewer, id, expected) in &cases {
        if !ids.contains(id) {
            // Ids in this table must exist in the fixtures; skip-with-failure otherwise.
            failures.push(format!("fixture id {id} not found"));
            continue;
        }
        let got = check(viewer, id);
        if &got != expected {
            failures.push(format!(
                "{viewer} → {id}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(!rules.iter().any(|r| r.consent_id == withdrawn));
}

#[test]
fn from_resource_extracts_facts() {
    let all = resources();
    let get = |id: &str| all.iter().find(|r| r["id"] == id).unwrap();

    let psy = facts(get("cond-oka-suzuki-depression"));
    assert_eq!(psy.custodian.as_deref(), Some(OKAYAMA));
    assert_eq!(psy.patient_id.as_deref(), Some("pat-suzuki-hanako"));
    assert!(psy.has_label(ACT_CODE_SYSTEM, "PSY"));
    assert!(psy
        .references
        .contains(&"Patient/pat-suzuki-hanako".to_string()));
    assert!(psy.clinical_date_ms.is_some());

    let undelivered = facts(get("lab-oka-yamada-2025-11-04-ca199"));
    assert!(undelivered.has_privacy_tag(TAG_UNDELIVERED));
    assert!(!undelivered.has_privacy_tag(TAG_UNINFORMED));

    let patient = facts(get("pat-ito-sakura"));
    assert_eq!(patient.patient_id.as_deref(), Some("pat-ito-sakura"));
    assert_eq!(patient.custodian, None);
    assert_eq!(
        patient.clinical_date_ms, None,
        "birthDate is not a clinical date"
    );

    let org = facts(get("hosp-okayama-central"));
    assert_eq!(org.patient_id, None);
    assert_eq!(org.clinical_date_ms, None);

    // Every clinical resource of the demo has a clinical date.
    for r in all.iter().filter(|r| r["meta"]["source"].is_string()) {
        let f = facts(r);
        if f.patient_id.is_some() && f.res_type != "Consent" {
            assert!(f.clinical_date_ms.is_some(), "{}", f.reference);
        }
    }
}

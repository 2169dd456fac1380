//! Consent → rules: expansion, inheritance, statuses and errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use renkei_consent::*;
use serde_json::{json, Value};

fn demo_consents() -> Vec<Value> {
    let bundle: Value =
        serde_json::from_str(include_str!("../../../fixtures/demo/07-consents.json")).unwrap();
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect()
}

fn demo(id: &str) -> Value {
    demo_consents().into_iter().find(|c| c["id"] == id).unwrap()
}

#[test]
fn demo_yamada_two_actors_one_purpose() {
    let rules = compile(&demo("consent-yamada-taro")).unwrap();
    assert_eq!(rules.len(), 2);
    let mut expected = Rule::unconstrained(
        "Consent/consent-yamada-taro",
        "pat-yamada-taro",
        Effect::Permit,
    );
    expected.purpose = Some("TREAT".into());
    expected.valid_from_ms = Some(ms("2025-01-15T00:00:00+09:00"));
    expected.valid_to_ms = Some(ms("2030-01-15T00:00:00+09:00") - 1);
    let mut first = expected.clone();
    first.actor_org = Some("Organization/hosp-okayama-central".into());
    let mut second = expected;
    second.actor_org = Some("Organization/clinic-hareyaka".into());
    assert_eq!(rules, vec![first, second]);
}

#[test]
fn demo_suzuki_nested_psy_deny_inherits_actors_purpose_period() {
    let rules = compile(&demo("consent-suzuki-hanako")).unwrap();
    assert_eq!(rules.len(), 6);
    let (permits, denies): (Vec<&Rule>, Vec<&Rule>) =
        rules.iter().partition(|r| r.effect == Effect::Permit);
    assert_eq!(permits.len(), 3);
    assert_eq!(denies.len(), 3);
    for (permit, deny) in permits.iter().zip(&denies) {
        assert!(!permit.nested && deny.nested);
        assert_eq!(permit.actor_org, deny.actor_org);
        assert_eq!(deny.purpose.as_deref(), Some("TREAT"));
        assert_eq!(permit.valid_from_ms, deny.valid_from_ms);
        assert_eq!(permit.valid_to_ms, deny.valid_to_ms);
        assert_eq!(permit.security_label, None);
        assert_eq!(
            deny.security_label,
            Some((ACT_CODE_SYSTEM.to_string(), "PSY".to_string()))
        );
    }
}

#[test]
fn demo_takahashi_withdrawn_compiles_to_nothing() {
    let consent = demo("consent-takahashi-ichiro");
    assert!(!is_in_force(&consent));
    assert_eq!(compile(&consent).unwrap(), Vec::new());
}

#[test]
fn expansion_is_a_cross_product() {
    let c = consent(
        "c1",
        PAT,
        json!({"type": "permit",
               "actor": [ircp(HOSP_A), ircp(DR_X)],
               "purpose": [purpose("TREAT"), purpose("HOPERAT")],
               "class": [class("Observation"), class("Condition"), class("Observation")],
               "securityLabel": [psy(), coding("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "N")]}),
    );
    let rules = compile(&c).unwrap();
    // 2 actors × 2 purposes × 2 classes (duplicate dropped) × 2 labels
    assert_eq!(rules.len(), 16);
    assert_eq!(rules.iter().filter(|r| r.actor_org.is_some()).count(), 8);
    assert_eq!(
        rules
            .iter()
            .filter(|r| r.actor_practitioner.as_deref() == Some(DR_X))
            .count(),
        8
    );
    assert!(rules
        .iter()
        .all(|r| r.actor_org.is_none() || r.actor_practitioner.is_none()));
    let simple = consent(
        "c2",
        PAT,
        json!({"type": "permit", "actor": [ircp(HOSP_A), ircp(CLINIC)],
               "purpose": [purpose("TREAT"), purpose("HOPERAT")]}),
    );
    assert_eq!(compile(&simple).unwrap().len(), 4);
}

#[test]
fn empty_provision_is_one_unconstrained_permit() {
    let rules = compile(&consent("c1", PAT, json!({"type": "permit"}))).unwrap();
    assert_eq!(
        rules,
        vec![Rule::unconstrained("Consent/c1", PAT, Effect::Permit)]
    );
    let rules = compile(&consent(
        "c1",
        PAT,
        json!({"type": "permit", "actor": [], "purpose": []}),
    ))
    .unwrap();
    assert_eq!(
        rules,
        vec![Rule::unconstrained("Consent/c1", PAT, Effect::Permit)]
    );
}

#[test]
fn root_type_defaults() {
    // Absent root type = deny; nested type absent = opposite of the root.
    let rules = compile(&consent(
        "c1",
        PAT,
        json!({"provision": [{"actor": [ircp(CLINIC)]}]}),
    ))
    .unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!((rules[0].effect, rules[0].nested), (Effect::Deny, false));
    assert_eq!((rules[1].effect, rules[1].nested), (Effect::Permit, true));
    assert_eq!(rules[1].actor_org.as_deref(), Some(CLINIC));

    let rules = compile(&consent(
        "c2",
        PAT,
        json!({"type": "permit", "provision": [{"class": [class("Condition")]}]}),
    ))
    .unwrap();
    assert_eq!(rules[1].effect, Effect::Deny);

    let rules = compile(&consent(
        "c3",
        PAT,
        json!({"type": "permit", "provision": [{"type": "permit", "class": [class("Condition")]}]}),
    ))
    .unwrap();
    assert_eq!(rules[1].effect, Effect::Permit);

    // No provision at all: deny everything.
    let rules = compile(&consent("c4", PAT, Value::Null)).unwrap();
    assert_eq!(
        rules,
        vec![Rule::unconstrained("Consent/c4", PAT, Effect::Deny)]
    );
}

#[test]
fn nested_overrides_replace_parent_values() {
    let rules = compile(&consent(
        "c1",
        PAT,
        json!({"type": "permit", "actor": [ircp(HOSP_A), ircp(CLINIC)],
               "period": {"start": "2025-01-01", "end": "2025-12-31"},
               "class": [class("Observation")],
               "provision": [{"type": "deny", "actor": [ircp(DR_X)],
                              "period": {"start": "2025-06-01"},
                              "dataPeriod": {"end": "2020"}}]}),
    ))
    .unwrap();
    let nested: Vec<&Rule> = rules.iter().filter(|r| r.nested).collect();
    assert_eq!(nested.len(), 1);
    let deny = nested[0];
    assert_eq!(deny.actor_org, None);
    assert_eq!(deny.actor_practitioner.as_deref(), Some(DR_X));
    assert_eq!(deny.valid_from_ms, Some(ms("2025-06-01T00:00:00+09:00")));
    assert_eq!(
        deny.valid_to_ms, None,
        "a stated period replaces the parent's as a whole"
    );
    assert_eq!(
        deny.class_type.as_deref(),
        Some("Observation"),
        "class inherited"
    );
    assert_eq!(deny.data_from_ms, None);
    assert_eq!(deny.data_to_ms, Some(ms("2021-01-01T00:00:00+09:00") - 1));
}

#[test]
fn data_meanings() {
    with_local_base();
    let rules = compile(&consent(
        "c1",
        PAT,
        json!({"type": "permit", "data": [
            {"meaning": "instance", "reference": {"reference": "Observation/o1/_history/3"}},
            {"meaning": "related", "reference": {"reference": "Encounter/e1"}},
            {"meaning": "dependents", "reference": {"reference": "https://renkei.example.jp/fhir/Encounter/e2"}},
            {"meaning": "authoredby", "reference": {"reference": HOSP_B}}
        ]}),
    ))
    .unwrap();
    assert_eq!(rules.len(), 4);
    assert_eq!(rules[0].data_reference.as_deref(), Some("Observation/o1"));
    assert_eq!(rules[1].data_related.as_deref(), Some("Encounter/e1"));
    assert_eq!(rules[2].data_related.as_deref(), Some("Encounter/e2"));
    assert_eq!(rules[3].data_custodian.as_deref(), Some(HOSP_B));
    // Another server's organization is not the local one of the same id.
    let foreign = compile(&consent(
        "c1",
        PAT,
        json!({"type": "permit", "data": [{"meaning": "authoredby",
            "reference": {"reference": format!("https://other.example/fhir/{HOSP_B}")}}]}),
    ));
    assert!(foreign.is_err(), "{foreign:?}");
}

#[test]
fn not_in_force_is_empty_without_validation() {
    for status in [
        "draft",
        "proposed",
        "inactive",
        "rejected",
        "entered-in-error",
    ] {
        let mut c = consent_with_status("c1", PAT, status, json!({"type": "maybe"}));
        c["patient"] = json!({"reference": "Group/g1"});
        assert_eq!(compile(&c), Ok(Vec::new()), "{status}");
    }
    let mut other_scope = consent("c1", PAT, json!({"type": "permit"}));
    other_scope["scope"] = json!({"coding": [coding(CONSENT_SCOPE_SYSTEM, "treatment")]});
    assert_eq!(compile(&other_scope), Ok(Vec::new()));
    let mut no_scope = consent("c1", PAT, json!({"type": "permit"}));
    no_scope.as_object_mut().unwrap().remove("scope");
    assert_eq!(compile(&no_scope), Ok(Vec::new()));
    let mut wrong_system = consent("c1", PAT, json!({"type": "permit"}));
    wrong_system["scope"] =
        json!({"coding": [coding("http://example.org", SCOPE_PATIENT_PRIVACY)]});
    assert_eq!(compile(&wrong_system), Ok(Vec::new()));
}

#[test]
fn patient_references() {
    with_local_base();
    let mut c = consent("c1", PAT, json!({"type": "permit"}));
    c["patient"] = json!({"reference": "https://renkei.example.jp/fhir/Patient/p1"});
    assert_eq!(compile(&c).unwrap()[0].patient_id, "p1");
    assert_eq!(consent_patient_id(&c), Ok("p1".to_string()));
    c["patient"] = json!({"reference": "https://other.example/fhir/Patient/p1"});
    assert!(consent_patient_id(&c).is_err());
}

type ErrorCase = (
    &'static str,
    Result<Vec<Rule>, ConsentError>,
    fn(&ConsentError) -> bool,
);

#[test]
fn errors() {
    let base = || consent("c1", PAT, json!({"type": "permit"}));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = base();
        f(&mut c);
        compile(&c)
    };
    let provision = |p: Value| compile(&consent("c1", PAT, p));

    assert_eq!(
        compile(&json!({"resourceType": "Patient", "id": "p1"})),
        Err(ConsentError::NotAConsent)
    );
    assert_eq!(
        with(&|c| {
            c.as_object_mut().unwrap().remove("id");
        }),
        Err(ConsentError::MissingId)
    );

    let cases: Vec<ErrorCase> = vec![
        (
            "modifier extension on the consent",
            with(&|c| {
                c["modifierExtension"] =
                    json!([{"url": "urn:example:research-only", "valueBoolean": true}]);
            }),
            |e| matches!(e, ConsentError::Unsupported { path, .. } if path == "Consent.modifierExtension"),
        ),
        (
            "modifier extension on a nested provision's actor",
            provision(json!({"type": "permit", "provision": [{"type": "deny",
                "actor": [{"modifierExtension": [{"url": "urn:example:negated", "valueBoolean": true}],
                    "role": {"coding": [coding(PARTICIPATION_TYPE_SYSTEM, "IRCP")]},
                    "reference": {"reference": CLINIC}}]}]})),
            |e| matches!(e, ConsentError::Unsupported { path, .. } if path == "Consent.provision.provision[0].actor[0].modifierExtension"),
        ),
        (
            "implicit rules",
            with(&|c| c["implicitRules"] = json!("urn:example:house-rules")),
            |e| matches!(e, ConsentError::Unsupported { path, .. } if path == "Consent.implicitRules"),
        ),
        (
            "no patient",
            with(&|c| {
                c.as_object_mut().unwrap().remove("patient");
            }),
            |e| matches!(e, ConsentError::InvalidPatient(_)),
        ),
        (
            "actor on another server",
            provision(
                json!({"type": "permit", "actor": [ircp(&format!("https://other.example/fhir/{HOSP_A}"))]}),
            ),
            |e| matches!(e, ConsentError::Invalid { detail, .. } if detail.contains("another server")),
        ),
        (
            "actor path that is no Type/id",
            provision(json!({"type": "permit", "actor": [ircp("Practitioner/../Organization/x")]})),
            |e| matches!(e, ConsentError::Invalid { .. }),
        ),
        (
            "patient is a Group",
            with(&|c| c["patient"] = json!({"reference": "Group/g"})),
            |e| matches!(e, ConsentError::InvalidPatient(_)),
        ),
        (
            "patient by identifier only",
            with(&|c| c["patient"] = json!({"identifier": {"value": "1"}})),
            |e| matches!(e, ConsentError::InvalidPatient(_)),
        ),
        (
            "purpose that is no purpose of use",
            provision(
                json!({"type": "deny", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TRAET"}]}),
            ),
            |e| matches!(e, ConsentError::Unsupported { path, detail } if path == "Consent.provision.purpose[0]" && detail.contains("TRAET")),
        ),
        (
            "purpose in lower case",
            provision(json!({"type": "deny", "purpose": [{"code": "treat"}]})),
            |e| matches!(e, ConsentError::Unsupported { detail, .. } if detail.contains("upper case: TREAT")),
        ),
        ("bad type", provision(json!({"type": "allow"})), |e| {
            matches!(e, ConsentError::InvalidProvisionType { .. })
        }),
        (
            "class code that is no resource type",
            provision(
                json!({"type": "permit", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Foo"}]}),
            ),
            |e| matches!(e, ConsentError::Unsupported { path, .. } if path == "Consent.provision.class[0]"),
        ),
        (
            "security label without a system (it would match nothing)",
            provision(
                json!({"type": "permit", "provision": [{"type": "deny", "securityLabel": [{"code": "PSY"}]}]}),
            ),
            |e| matches!(e, ConsentError::Unsupported { path, .. } if path == "Consent.provision.provision[0].securityLabel[0]"),
        ),
        (
            "period starting after it ends (per-1)",
            provision(
                json!({"type": "permit", "period": {"start": "2026-01-02", "end": "2026-01-01"}}),
            ),
            |e| matches!(e, ConsentError::Invalid { path, .. } if path == "Consent.provision.period"),
        ),
        (
            "data period starting after it ends (per-1)",
            provision(
                json!({"type": "permit", "dataPeriod": {"start": "2026-02", "end": "2026-01-31T23:00:00+09:00"}}),
            ),
            |e| matches!(e, ConsentError::Invalid { path, .. } if path == "Consent.provision.dataPeriod"),
        ),
        (
            "bad nested type",
            provision(json!({"type": "permit", "provision": [{"type": 1}]})),
            |e| matches!(e, ConsentError::InvalidProvisionType { .. }),
        ),
        (
            "bad period",
            provision(json!({"type": "permit", "period": {"start": "15/01/2025"}})),
            |e| matches!(e, ConsentError::InvalidDate { .. }),
        ),
        (
            "bad dataPeriod",
            provision(json!({"type": "permit", "dataPeriod": {"end": "2025-13-01"}})),
            |e| matches!(e, ConsentError::InvalidDate { .. }),
        ),
        (
            "nesting too deep",
            provision(
                json!({"type": "permit", "provision": [{"type": "deny", "provision": [{"type": "permit"}]}]}),
            ),
            |e| matches!(e, ConsentError::NestingTooDeep { .. }),
        ),
        (
            "actor role PRCP",
            provision(json!({"type": "permit", "actor": [{
                "role": {"coding": [coding(PARTICIPATION_TYPE_SYSTEM, "PRCP")]},
                "reference": {"reference": CLINIC}}]})),
            |e| matches!(e, ConsentError::Unsupported { .. }),
        ),
        (
            "actor role missing",
            provision(json!({"type": "permit", "actor": [{"reference": {"reference": CLINIC}}]})),
            |e| matches!(e, ConsentError::Unsupported { .. }),
        ),
        (
            "recipient CareTeam",
            provision(json!({"type": "permit", "actor": [ircp("CareTeam/t1")]})),
            |e| matches!(e, ConsentError::Unsupported { .. }),
        ),
        (
            "recipient by identifier",
            provision(json!({"type": "permit", "actor": [{
                "role": {"coding": [coding(PARTICIPATION_TYPE_SYSTEM, "IRCP")]},
                "reference": {"identifier": {"value": "3310190017"}}}]})),
            |e| matches!(e, ConsentError::Invalid { .. }),
        ),
        (
            "purpose from another system",
            provision(
                json!({"type": "permit", "purpose": [coding("http://example.org", "TREAT")]}),
            ),
            |e| matches!(e, ConsentError::Unsupported { .. }),
        ),
        (
            "purpose without code",
            provision(json!({"type": "permit", "purpose": [{"system": ACT_REASON_SYSTEM}]})),
            |e| matches!(e, ConsentError::Invalid { .. }),
        ),
        (
            "class from LOINC",
            provision(json!({"type": "permit", "class": [coding("http://loinc.org", "11506-3")]})),
            |e| matches!(e, ConsentError::Unsupported { .. }),
        ),
        (
            "provision.code",
            provision(
                json!({"type": "deny", "code": [{"coding": [coding("http://loinc.org", "1")]}]}),
            ),
            |e| matches!(e, ConsentError::Unsupported { .. }),
        ),
        (
            "action collect only",
            provision(
                json!({"type": "permit", "action": [{"coding": [coding(CONSENT_ACTION_SYSTEM, "collect")]}]}),
            ),
            |e| matches!(e, ConsentError::Unsupported { .. }),
        ),
        (
            "data without meaning",
            provision(
                json!({"type": "permit", "data": [{"reference": {"reference": "Observation/o1"}}]}),
            ),
            |e| matches!(e, ConsentError::Invalid { .. }),
        ),
        (
            "authoredby a practitioner",
            provision(
                json!({"type": "deny", "data": [{"meaning": "authoredby", "reference": {"reference": DR_X}}]}),
            ),
            |e| matches!(e, ConsentError::Unsupported { .. }),
        ),
        (
            "provision not an object",
            provision(json!([{"type": "permit"}])),
            |e| matches!(e, ConsentError::Invalid { .. }),
        ),
    ];
    let mut failures = Vec::new();
    for (name, result, check) in &cases {
        match result {
            Err(e) if check(e) => assert!(!e.to_string().is_empty()),
            other => failures.push(format!("{name}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(cases.len(), 31);

    // A disclosure action is fine.
    assert!(provision(
        json!({"type": "permit", "action": [{"coding": [coding(CONSENT_ACTION_SYSTEM, "access")]}]})
    )
    .is_ok());
}

#[test]
fn error_messages_name_the_element() {
    let err = compile(&consent(
        "c1",
        PAT,
        json!({"type": "permit", "provision": [{"type": "deny", "actor": [ircp("Group/g")]}]}),
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("Consent.provision.provision[0].actor[0]"),
        "{err}"
    );
}

/// A v3 code system written as its OID or old URL is the same system: a purpose of use
/// spelled with the ActReason OID was refused (failing closed, but refusing a valid consent),
/// and labels keep one spelling, so the OID and URL forms of one label are one rule.
#[test]
fn v3_system_spellings_are_one_system() {
    let c = consent(
        "c-oid",
        PAT,
        json!({"type": "permit",
               "purpose": [coding("urn:oid:2.16.840.1.113883.5.8", "TREAT")],
               "securityLabel": [coding("urn:oid:2.16.840.1.113883.5.4", "PSY"), psy()]}),
    );
    let rules = compile(&c).unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].purpose.as_deref(), Some("TREAT"));
    assert_eq!(
        rules[0].security_label,
        Some((
            "http://terminology.hl7.org/CodeSystem/v3-ActCode".to_string(),
            "PSY".to_string()
        ))
    );
    let other = consent(
        "c-other",
        PAT,
        json!({"type": "permit", "purpose": [coding("urn:oid:1.2.3", "TREAT")]}),
    );
    assert!(compile(&other).is_err());
}

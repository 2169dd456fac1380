//! The decision table: every consent shape against the reference decision.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use renkei_consent::*;
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    consents: Vec<Value>,
    principal: Principal,
    resource: ResourceFacts,
    policy: Policy,
    now: i64,
    expected: Decision,
}

fn case(
    name: &'static str,
    consents: Vec<Value>,
    principal: Principal,
    resource: ResourceFacts,
    expected: Decision,
) -> Case {
    Case {
        name,
        consents,
        principal,
        resource,
        policy: OPT_IN,
        now: now(),
        expected,
    }
}

impl Case {
    fn policy(mut self, policy: Policy) -> Case {
        self.policy = policy;
        self
    }

    fn at(mut self, rfc3339: &str) -> Case {
        self.now = ms(rfc3339);
        self
    }
}

fn permit_all(id: &str) -> Value {
    consent(id, PAT, json!({"type": "permit"}))
}

fn permit_actors(id: &str, actors: &[&str]) -> Value {
    let actors: Vec<Value> = actors.iter().map(|a| ircp(a)).collect();
    consent(
        id,
        PAT,
        json!({"type": "permit", "actor": actors, "purpose": [purpose("TREAT")]}),
    )
}

fn run_table(cases: Vec<Case>) -> usize {
    let mut failures = Vec::new();
    for c in &cases {
        let got = run(&c.consents, &c.principal, &c.resource, &c.policy, c.now);
        if got != c.expected {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                c.name, c.expected, got
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    cases.len()
}

#[test]
fn no_consent_and_implicit_policy() {
    let n =
        run_table(vec![
        case("opt-in, no consent", vec![], facility(CLINIC), obs("o1"), implicit(false)),
        case("opt-out, no consent", vec![], facility(CLINIC), obs("o1"), implicit(true))
            .policy(OPT_OUT),
        case(
            "another patient's consent does not count",
            vec![consent("c-other", OTHER_PAT, json!({"type": "permit"}))],
            facility(CLINIC),
            obs("o1"),
            implicit(false),
        ),
        case(
            "opt-out, patient has a consent that does not permit: consent alone governs",
            vec![permit_actors("c1", &[HOSP_B])],
            facility(CLINIC),
            obs("o1"),
            no_permit(),
        )
        .policy(OPT_OUT),
        case(
            "opt-out, everyone but one facility: permit with nested deny actor",
            vec![consent(
                "c1",
                PAT,
                json!({"type": "permit", "provision": [{"type": "deny", "actor": [ircp(HOSP_B)]}]}),
            )],
            facility(CLINIC),
            obs("o1"),
            consent_permit("c1"),
        )
        .policy(OPT_OUT),
    ]);
    assert_eq!(n, 5);
}

#[test]
fn empty_provision_permits_every_member_for_any_purpose() {
    run_table(vec![
        case(
            "clinic TREAT",
            vec![permit_all("c1")],
            facility(CLINIC),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "hospital B HOPERAT",
            vec![permit_all("c1")],
            with_purpose(facility(HOSP_B), "HOPERAT"),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "any type, any label",
            vec![permit_all("c1")],
            facility(CLINIC),
            labelled(data("Condition", "x", HOSP_A, PAT), ACT_CODE_SYSTEM, "PSY"),
            consent_permit("c1"),
        ),
    ]);
}

#[test]
fn validity_period() {
    let dated_consent = || {
        consent(
            "c1",
            PAT,
            json!({"type": "permit", "period": {"start": "2025-01-15", "end": "2025-12-31"}}),
        )
    };
    run_table(vec![
        case(
            "expired",
            vec![dated_consent()],
            facility(CLINIC),
            obs("o1"),
            no_permit(),
        )
        .at("2026-01-01T00:00:00+09:00"),
        case(
            "last day is inclusive",
            vec![dated_consent()],
            facility(CLINIC),
            obs("o1"),
            consent_permit("c1"),
        )
        .at("2025-12-31T23:59:59+09:00"),
        case(
            "not yet valid",
            vec![dated_consent()],
            facility(CLINIC),
            obs("o1"),
            no_permit(),
        )
        .at("2025-01-14T23:59:59+09:00"),
        case(
            "first day is inclusive",
            vec![dated_consent()],
            facility(CLINIC),
            obs("o1"),
            consent_permit("c1"),
        )
        .at("2025-01-15T00:00:00+09:00"),
        case(
            "open-ended start",
            vec![consent(
                "c1",
                PAT,
                json!({"type": "permit", "period": {"end": "2030"}}),
            )],
            facility(CLINIC),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "expired consent is still a consent (no implicit opt-out permit)",
            vec![dated_consent()],
            facility(CLINIC),
            obs("o1"),
            no_permit(),
        )
        .policy(OPT_OUT)
        .at("2026-06-01T00:00:00+09:00"),
    ]);
}

#[test]
fn withdrawn_and_other_statuses_grant_nothing() {
    let with_status =
        |status: &str| consent_with_status("c1", PAT, status, json!({"type": "permit"}));
    let mut cases = Vec::new();
    for status in [
        "inactive",
        "draft",
        "proposed",
        "rejected",
        "entered-in-error",
    ] {
        cases.push(case(
            "non-active consent, opt-in",
            vec![with_status(status)],
            facility(CLINIC),
            obs("o1"),
            implicit(false),
        ));
    }
    cases.push(
        case(
            "withdrawn consent in opt-out network: back to the implicit policy",
            vec![with_status("inactive")],
            facility(CLINIC),
            obs("o1"),
            implicit(true),
        )
        .policy(OPT_OUT),
    );
    cases.push(case(
        "withdrawn permit next to an active deny-all",
        vec![
            with_status("inactive"),
            consent("c2", PAT, json!({"type": "deny"})),
        ],
        facility(CLINIC),
        obs("o1"),
        consent_deny("c2"),
    ));
    let mut research = permit_all("c-research");
    research["scope"] = json!({"coding": [coding(CONSENT_SCOPE_SYSTEM, "research")]});
    cases.push(case(
        "research-scope consent is not a privacy consent",
        vec![research],
        facility(CLINIC),
        obs("o1"),
        implicit(false),
    ));
    assert_eq!(run_table(cases), 8);
}

#[test]
fn purpose_of_use() {
    let treat_only = || {
        consent(
            "c1",
            PAT,
            json!({"type": "permit", "purpose": [purpose("TREAT")]}),
        )
    };
    run_table(vec![
        case(
            "TREAT matches",
            vec![treat_only()],
            facility(CLINIC),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "purpose mismatch",
            vec![treat_only()],
            with_purpose(facility(CLINIC), "HOPERAT"),
            obs("o1"),
            no_permit(),
        ),
        case(
            "ETREAT is treatment: a TREAT rule covers it",
            vec![treat_only()],
            with_purpose(facility(CLINIC), "ETREAT"),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "but a TREAT request is not covered by an ETREAT rule",
            vec![consent(
                "c1",
                PAT,
                json!({"type": "permit", "purpose": [purpose("ETREAT")]}),
            )],
            facility(CLINIC),
            obs("o1"),
            no_permit(),
        ),
        case(
            "one of two purposes",
            vec![consent(
                "c1",
                PAT,
                json!({"type": "permit", "purpose": [purpose("TREAT"), purpose("HOPERAT")]}),
            )],
            with_purpose(facility(CLINIC), "HOPERAT"),
            obs("o1"),
            consent_permit("c1"),
        ),
    ]);
}

#[test]
fn actors() {
    with_local_base();
    let practitioner_consent =
        || consent("c1", PAT, json!({"type": "permit", "actor": [ircp(DR_X)]}));
    run_table(vec![
        case(
            "listed org",
            vec![permit_actors("c1", &[HOSP_A, CLINIC])],
            facility(CLINIC),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "org mismatch",
            vec![permit_actors("c1", &[HOSP_A, CLINIC])],
            facility(HOSP_B),
            obs("o1"),
            no_permit(),
        ),
        case(
            "listed practitioner, any facility",
            vec![practitioner_consent()],
            with_practitioner(facility(HOSP_B), DR_X),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "practitioner mismatch",
            vec![practitioner_consent()],
            with_practitioner(facility(HOSP_B), DR_Y),
            obs("o1"),
            no_permit(),
        ),
        case(
            "system client without practitioner never matches a practitioner rule",
            vec![practitioner_consent()],
            facility(HOSP_B),
            obs("o1"),
            no_permit(),
        ),
        case(
            "org OR practitioner: the org alone is enough",
            vec![consent(
                "c1",
                PAT,
                json!({"type": "permit", "actor": [ircp(CLINIC), ircp(DR_X)]}),
            )],
            with_practitioner(facility(CLINIC), DR_Y),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "absolute actor reference",
            vec![permit_actors(
                "c1",
                &["https://renkei.example.jp/fhir/Organization/clinic"],
            )],
            facility(CLINIC),
            obs("o1"),
            consent_permit("c1"),
        ),
    ]);
}

#[test]
fn class_label_and_data_exclusions() {
    let observations_only = || {
        consent(
            "c1",
            PAT,
            json!({"type": "permit", "class": [class("Observation")]}),
        )
    };
    let except_meds = || {
        consent(
            "c1",
            PAT,
            json!({"type": "permit", "provision": [{"type": "deny", "class": [class("MedicationRequest")]}]}),
        )
    };
    let except_psy = || {
        consent(
            "c1",
            PAT,
            json!({"type": "permit", "actor": [ircp(CLINIC), ircp(HOSP_B)],
                   "provision": [{"type": "deny", "securityLabel": [psy()]}]}),
        )
    };
    let year_2025 = || {
        consent(
            "c1",
            PAT,
            json!({"type": "permit", "dataPeriod": {"start": "2025-01-01", "end": "2025-12-31"}}),
        )
    };
    let except_2025 = || {
        consent(
            "c1",
            PAT,
            json!({"type": "permit", "provision": [{"type": "deny",
                   "dataPeriod": {"start": "2025-01-01", "end": "2025-12-31"}}]}),
        )
    };
    let only_o1 = || {
        consent(
            "c1",
            PAT,
            json!({"type": "permit", "data": [{"meaning": "instance", "reference": {"reference": "Observation/o1"}}]}),
        )
    };
    let encounter = || {
        consent(
            "c1",
            PAT,
            json!({"type": "permit", "data": [{"meaning": "related", "reference": {"reference": "Encounter/e1"}}]}),
        )
    };
    let not_from_hosp_a = || {
        consent(
            "c1",
            PAT,
            json!({"type": "permit", "provision": [{"type": "deny",
                   "data": [{"meaning": "authoredby", "reference": {"reference": HOSP_A}}]}]}),
        )
    };
    let cl = facility(CLINIC);
    let n = run_table(vec![
        case(
            "class included",
            vec![observations_only()],
            cl.clone(),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "class excluded",
            vec![observations_only()],
            cl.clone(),
            data("Condition", "c", HOSP_A, PAT),
            no_permit(),
        ),
        case(
            "nested class deny",
            vec![except_meds()],
            cl.clone(),
            data("MedicationRequest", "m", HOSP_A, PAT),
            consent_deny("c1"),
        ),
        case(
            "nested class deny, other type",
            vec![except_meds()],
            cl.clone(),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "nested PSY deny",
            vec![except_psy()],
            cl.clone(),
            labelled(obs("o1"), ACT_CODE_SYSTEM, "PSY"),
            consent_deny("c1"),
        ),
        case(
            "PSY code under another system is not PSY",
            vec![except_psy()],
            cl.clone(),
            labelled(obs("o1"), "http://example.org/labels", "PSY"),
            consent_permit("c1"),
        ),
        case(
            "nested PSY deny, unlabelled data",
            vec![except_psy()],
            cl.clone(),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "nested PSY deny inherits the actors: a non-actor is simply not permitted",
            vec![except_psy()],
            facility("Organization/hosp-c"),
            labelled(obs("o1"), ACT_CODE_SYSTEM, "PSY"),
            no_permit(),
        ),
        case(
            "dataPeriod inside",
            vec![year_2025()],
            cl.clone(),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "dataPeriod last day inclusive",
            vec![year_2025()],
            cl.clone(),
            dated(obs("o1"), Some("2025-12-31T23:30:00+09:00")),
            consent_permit("c1"),
        ),
        case(
            "dataPeriod outside",
            vec![year_2025()],
            cl.clone(),
            dated(obs("o1"), Some("2024-12-31T23:59:59+09:00")),
            no_permit(),
        ),
        case(
            "dataPeriod, resource without clinical date",
            vec![year_2025()],
            cl.clone(),
            dated(obs("o1"), None),
            no_permit(),
        ),
        case(
            "dataPeriod permit, care begun before it and going on into it",
            vec![year_2025()],
            cl.clone(),
            spanning(
                obs("o1"),
                Some("2024-12-20T00:00:00+09:00"),
                Some("2025-01-10T00:00:00+09:00"),
            ),
            no_permit(),
        ),
        case(
            "dataPeriod deny, care begun before it and going on into it",
            vec![except_2025()],
            cl.clone(),
            spanning(
                obs("o1"),
                Some("2024-12-20T00:00:00+09:00"),
                Some("2025-01-10T00:00:00+09:00"),
            ),
            consent_deny("c1"),
        ),
        case(
            "dataPeriod deny, care still open",
            vec![except_2025()],
            cl.clone(),
            spanning(obs("o1"), Some("2023-04-01T00:00:00+09:00"), None),
            consent_deny("c1"),
        ),
        case(
            "dataPeriod deny, care known by its end only",
            vec![except_2025()],
            cl.clone(),
            spanning(obs("o1"), None, Some("2025-02-01T00:00:00+09:00")),
            consent_deny("c1"),
        ),
        case(
            "dataPeriod deny, care ended before it",
            vec![except_2025()],
            cl.clone(),
            spanning(
                obs("o1"),
                Some("2024-11-01T00:00:00+09:00"),
                Some("2024-12-31T23:59:59+09:00"),
            ),
            consent_permit("c1"),
        ),
        case(
            "dataPeriod deny, care begun after it",
            vec![except_2025()],
            cl.clone(),
            spanning(obs("o1"), Some("2026-01-01T00:00:00+09:00"), None),
            consent_permit("c1"),
        ),
        case(
            "dataPeriod deny, resource without clinical date",
            vec![except_2025()],
            cl.clone(),
            dated(obs("o1"), None),
            consent_permit("c1"),
        ),
        case(
            "data instance",
            vec![only_o1()],
            cl.clone(),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "data instance, other resource",
            vec![only_o1()],
            cl.clone(),
            obs("o2"),
            no_permit(),
        ),
        case(
            "data related: the encounter itself",
            vec![encounter()],
            cl.clone(),
            data("Encounter", "e1", HOSP_A, PAT),
            consent_permit("c1"),
        ),
        case(
            "data related: a resource referencing it",
            vec![encounter()],
            cl.clone(),
            referencing(obs("o1"), "Encounter/e1"),
            consent_permit("c1"),
        ),
        case(
            "data related: unrelated resource",
            vec![encounter()],
            cl.clone(),
            referencing(obs("o1"), "Encounter/e2"),
            no_permit(),
        ),
        case(
            "authoredby: hide everything from one facility",
            vec![not_from_hosp_a()],
            cl.clone(),
            obs("o1"),
            consent_deny("c1"),
        ),
        case(
            "authoredby: other facilities' data still shared",
            vec![not_from_hosp_a()],
            cl.clone(),
            data("Observation", "o9", HOSP_B, PAT),
            consent_permit("c1"),
        ),
        // A record about the patient of what it refers to is decided as what it follows.
        case(
            "the scan of a refused prescription",
            vec![except_meds()],
            cl.clone(),
            following(data("Binary", "b", HOSP_A, PAT), "MedicationRequest/m"),
            consent_deny("c1"),
        ),
        case(
            "the scan of the one shared result",
            vec![only_o1()],
            cl.clone(),
            following(data("Binary", "b", HOSP_A, PAT), "Observation/o1"),
            consent_permit("c1"),
        ),
        case(
            "the Provenance of a result of a shared encounter",
            vec![encounter()],
            cl.clone(),
            following(
                referencing(data("Provenance", "p", HOSP_A, PAT), "Encounter/e1"),
                "Observation/o1",
            ),
            consent_permit("c1"),
        ),
        case(
            "the scan of a document, under a refused year",
            vec![except_2025()],
            cl.clone(),
            following(data("Binary", "b", HOSP_A, PAT), "Bundle/d"),
            consent_deny("c1"),
        ),
        case(
            "the scan of a document is not opened by a permission of one result",
            vec![only_o1()],
            cl.clone(),
            following(data("Binary", "b", HOSP_A, PAT), "Bundle/d"),
            no_permit(),
        ),
        case(
            "a permission of Binaries does not open the scan of a result it does not permit",
            vec![consent(
                "c1",
                PAT,
                json!({"type": "permit", "class": [class("Binary")]}),
            )],
            cl.clone(),
            following(data("Binary", "b", HOSP_A, PAT), "Condition/c"),
            no_permit(),
        ),
        case(
            "a refusal of Binaries reaches the scan of a result",
            vec![consent(
                "c1",
                PAT,
                json!({"type": "permit", "provision": [{"type": "deny", "class": [class("Binary")]}]}),
            )],
            cl.clone(),
            following(data("Binary", "b", HOSP_A, PAT), "Observation/o1"),
            consent_deny("c1"),
        ),
        case(
            "a permission of everything opens a scan",
            vec![permit_all("c1")],
            cl.clone(),
            following(data("Binary", "b", HOSP_A, PAT), "Observation/o1"),
            consent_permit("c1"),
        ),
    ]);
    assert_eq!(n, 34);
}

#[test]
fn nested_provisions_inherit_and_override() {
    // Consent 1 shares everything with everyone; consent 2 shares with A and the clinic
    // but hides Conditions from them. The nested deny inherits actors A + clinic, so it
    // does not touch hospital B, which consent 1 still permits.
    let everyone = permit_all("c1");
    let restricted = consent(
        "c2",
        PAT,
        json!({"type": "permit", "actor": [ircp(HOSP_A), ircp(CLINIC)], "purpose": [purpose("TREAT")],
               "provision": [{"type": "deny", "class": [class("Condition")]}]}),
    );
    let own_actor = consent(
        "c3",
        PAT,
        json!({"type": "permit",
               "provision": [{"type": "deny", "actor": [ircp(HOSP_B)], "class": [class("Condition")]}]}),
    );
    let condition = data("Condition", "c", HOSP_A, PAT);
    run_table(vec![
        case(
            "nested deny inherits actor: clinic denied",
            vec![everyone.clone(), restricted.clone()],
            facility(CLINIC),
            condition.clone(),
            consent_deny("c2"),
        ),
        case(
            "nested deny inherits actor: hospital B unaffected",
            vec![everyone.clone(), restricted.clone()],
            facility(HOSP_B),
            condition.clone(),
            consent_permit("c1"),
        ),
        case(
            "nested deny inherits purpose: HOPERAT not denied by c2",
            vec![everyone.clone(), restricted.clone()],
            with_purpose(facility(CLINIC), "HOPERAT"),
            condition.clone(),
            consent_permit("c1"),
        ),
        case(
            "nested deny with its own actor",
            vec![own_actor.clone()],
            facility(HOSP_B),
            condition.clone(),
            consent_deny("c3"),
        ),
        case(
            "nested deny with its own actor spares others",
            vec![own_actor],
            facility(CLINIC),
            condition,
            consent_permit("c3"),
        ),
    ]);
}

#[test]
fn conflicts_and_deny_except() {
    let permit = permit_all("c1");
    let deny_clinic = consent("c2", PAT, json!({"type": "deny", "actor": [ircp(CLINIC)]}));
    // "deny all, except the clinic for TREAT"
    let deny_except = consent(
        "c3",
        PAT,
        json!({"provision": [{"type": "permit", "actor": [ircp(CLINIC)], "purpose": [purpose("TREAT")]}]}),
    );
    run_table(vec![
        case(
            "two consents in conflict: deny wins",
            vec![permit.clone(), deny_clinic.clone()],
            facility(CLINIC),
            obs("o1"),
            consent_deny("c2"),
        ),
        case(
            "deny wins whatever the order",
            vec![deny_clinic.clone(), permit.clone()],
            facility(CLINIC),
            obs("o1"),
            consent_deny("c2"),
        ),
        case(
            "the deny only covers its actor",
            vec![permit.clone(), deny_clinic],
            facility(HOSP_B),
            obs("o1"),
            consent_permit("c1"),
        ),
        case(
            "deny-except: the exception is permitted",
            vec![deny_except.clone()],
            facility(CLINIC),
            obs("o1"),
            consent_permit("c3"),
        ),
        case(
            "deny-except: outside the exception",
            vec![deny_except.clone()],
            facility(HOSP_B),
            obs("o1"),
            consent_deny("c3"),
        ),
        case(
            "deny-except overrides another consent's permit outside its exception",
            vec![permit.clone(), deny_except.clone()],
            facility(HOSP_B),
            obs("o1"),
            consent_deny("c3"),
        ),
        case(
            "another consent's nested permit does not lift c3's deny",
            vec![
                deny_except.clone(),
                consent(
                    "c4",
                    PAT,
                    json!({"type": "deny", "provision": [{"type": "permit", "actor": [ircp(HOSP_B)]}]}),
                ),
            ],
            facility(HOSP_B),
            obs("o1"),
            consent_deny("c3"),
        ),
        case(
            "a deny-all consent without provision",
            vec![permit, consent("c5", PAT, Value::Null)],
            facility(CLINIC),
            obs("o1"),
            consent_deny("c5"),
        ),
    ]);
}

#[test]
fn break_glass_access() {
    let deny_clinic = consent("c2", PAT, json!({"type": "deny", "actor": [ircp(CLINIC)]}));
    let bg = break_glass(facility(CLINIC));
    run_table(vec![
        case(
            "no consent, opt-in",
            vec![],
            bg.clone(),
            obs("o1"),
            Decision::permit(Reason::BreakGlass {
                overridden_deny: None,
            }),
        ),
        case(
            "consent not covering the requester",
            vec![permit_actors("c1", &[HOSP_B])],
            bg.clone(),
            obs("o1"),
            Decision::permit(Reason::BreakGlass {
                overridden_deny: None,
            }),
        ),
        case(
            "explicit deny overridden (policy: deny does not hold)",
            vec![deny_clinic.clone()],
            bg.clone(),
            obs("o1"),
            Decision::permit(Reason::BreakGlass {
                overridden_deny: Some("Consent/c2".to_string()),
            }),
        ),
        case(
            "explicit deny holds (policy)",
            vec![deny_clinic.clone()],
            bg.clone(),
            obs("o1"),
            consent_deny("c2"),
        )
        .policy(OPT_IN_DENY_HOLDS),
        case(
            "no deny, policy deny-holds: still break-glass",
            vec![],
            bg.clone(),
            obs("o1"),
            Decision::permit(Reason::BreakGlass {
                overridden_deny: None,
            }),
        )
        .policy(OPT_IN_DENY_HOLDS),
        case(
            "a nested PSY refusal under a TREAT permit holds (policy)",
            vec![consent(
                "c3",
                PAT,
                json!({"type": "permit", "actor": [ircp(CLINIC)], "purpose": [purpose("TREAT")],
                       "provision": [{"type": "deny", "securityLabel": [psy()]}]}),
            )],
            bg.clone(),
            labelled(obs("o1"), ACT_CODE_SYSTEM, "PSY"),
            consent_deny("c3"),
        )
        .policy(OPT_IN_DENY_HOLDS),
        case(
            "UNDELIVERED is never broken",
            vec![],
            bg.clone(),
            tagged(obs("o1"), TAG_UNDELIVERED),
            Decision::deny(Reason::PrivacyTag(TAG_UNDELIVERED.to_string())),
        ),
        case(
            "ETREAT without break-glass right is no break-glass",
            vec![deny_clinic],
            with_purpose(facility(CLINIC), "ETREAT"),
            obs("o1"),
            consent_deny("c2"),
        ),
    ]);
}

#[test]
fn own_data_directory_and_privacy_tags() {
    let deny_all = consent("c1", PAT, json!({"type": "deny"}));
    run_table(vec![
        case(
            "own data, no consent",
            vec![],
            facility(HOSP_A),
            obs("o1"),
            Decision::permit(Reason::OwnData),
        ),
        case(
            "own data despite a deny-all consent",
            vec![deny_all.clone()],
            facility(HOSP_A),
            obs("o1"),
            Decision::permit(Reason::OwnData),
        ),
        case(
            "own UNDELIVERED data",
            vec![],
            facility(HOSP_A),
            tagged(obs("o1"), TAG_UNDELIVERED),
            Decision::permit(Reason::OwnData),
        ),
        case(
            "directory data",
            vec![deny_all.clone()],
            facility(CLINIC),
            directory("Organization", "hosp-a"),
            Decision::permit(Reason::NotPatientData),
        ),
        case(
            "directory Practitioner",
            vec![],
            facility(CLINIC),
            directory("Practitioner", "dr-x"),
            Decision::permit(Reason::NotPatientData),
        ),
        case(
            "UNDELIVERED to another facility despite consent",
            vec![permit_all("c2")],
            facility(CLINIC),
            tagged(obs("o1"), TAG_UNDELIVERED),
            Decision::deny(Reason::PrivacyTag(TAG_UNDELIVERED.to_string())),
        ),
        case(
            "UNINFORMED is visible to a consented facility",
            vec![permit_all("c2")],
            facility(CLINIC),
            tagged(obs("o1"), TAG_UNINFORMED),
            consent_permit("c2"),
        ),
        case(
            "the Patient resource is patient data",
            vec![],
            facility(CLINIC),
            ResourceFacts {
                res_type: "Patient".into(),
                reference: format!("Patient/{PAT}"),
                ..Default::default()
            },
            implicit(false),
        ),
    ]);
}

#[test]
fn roles() {
    let permit = permit_all("c1");
    let own_patient_resource = ResourceFacts {
        res_type: "Patient".into(),
        reference: format!("Patient/{PAT}"),
        ..Default::default()
    };
    let me = patient_user(Some("Patient/p1"));
    run_table(vec![
        case(
            "patient: own data",
            vec![],
            me.clone(),
            obs("o1"),
            Decision::permit(Reason::PatientSelf),
        ),
        case(
            "patient: plain id in the token",
            vec![],
            patient_user(Some(PAT)),
            obs("o1"),
            Decision::permit(Reason::PatientSelf),
        ),
        case(
            "patient: own data despite own deny consent",
            vec![consent("c9", PAT, json!({"type": "deny"}))],
            me.clone(),
            obs("o1"),
            Decision::permit(Reason::PatientSelf),
        ),
        case(
            "patient: own Patient resource",
            vec![],
            me.clone(),
            own_patient_resource.clone(),
            Decision::permit(Reason::PatientSelf),
        ),
        case(
            "patient: another patient's data",
            vec![permit.clone()],
            patient_user(Some("Patient/p2")),
            obs("o1"),
            Decision::deny(Reason::NotOwnCompartment),
        ),
        case(
            "patient: another patient's Patient resource",
            vec![],
            patient_user(Some("Patient/p2")),
            own_patient_resource.clone(),
            Decision::deny(Reason::NotOwnCompartment),
        ),
        case(
            "patient: token without patient",
            vec![],
            patient_user(None),
            obs("o1"),
            Decision::deny(Reason::NotOwnCompartment),
        ),
        case(
            "patient: UNINFORMED hidden",
            vec![],
            me.clone(),
            tagged(obs("o1"), TAG_UNINFORMED),
            Decision::deny(Reason::PrivacyTag(TAG_UNINFORMED.to_string())),
        ),
        case(
            "patient: UNDELIVERED hidden",
            vec![],
            me.clone(),
            tagged(obs("o1"), TAG_UNDELIVERED),
            Decision::deny(Reason::PrivacyTag(TAG_UNDELIVERED.to_string())),
        ),
        case(
            "patient: directory data is outside the compartment",
            vec![],
            me,
            directory("Organization", "hosp-a"),
            Decision::deny(Reason::NotOwnCompartment),
        ),
        case(
            "auditor: clinical data, even of its own facility",
            vec![permit.clone()],
            staff(Role::Auditor),
            obs("o1"),
            Decision::deny(Reason::RoleHasNoClinicalAccess),
        ),
        case(
            "admin: clinical data",
            vec![permit.clone()],
            staff(Role::Admin),
            obs("o1"),
            Decision::deny(Reason::RoleHasNoClinicalAccess),
        ),
        case(
            "admin: Patient resource",
            vec![],
            staff(Role::Admin),
            own_patient_resource,
            Decision::deny(Reason::RoleHasNoClinicalAccess),
        ),
        case(
            "auditor: nothing through the clinical API, not even directory data",
            vec![],
            staff(Role::Auditor),
            directory("Organization", "hosp-a"),
            Decision::deny(Reason::RoleHasNoClinicalAccess),
        ),
        case(
            "auditor with break-glass flag still has no clinical access",
            vec![],
            break_glass(staff(Role::Auditor)),
            obs("o1"),
            Decision::deny(Reason::RoleHasNoClinicalAccess),
        ),
    ]);
}

#[test]
fn first_matching_rule_names_the_consent() {
    let rules = compile_all(&[permit_all("c1"), permit_all("c2")]);
    let d = decide(&facility(CLINIC), &obs("o1"), &rules, true, &OPT_IN, now());
    assert_eq!(d, consent_permit("c1"));
}

#[test]
fn rules_for_another_patient_never_match() {
    let rules = compile_all(&[consent("c1", OTHER_PAT, json!({"type": "permit"}))]);
    assert!(rules
        .iter()
        .all(|r| !r.matches(&facility(CLINIC), &obs("o1"), now())));
    // Even if the caller wrongly says the patient has consent, nothing is permitted.
    let d = decide(&facility(CLINIC), &obs("o1"), &rules, true, &OPT_OUT, now());
    assert_eq!(d, no_permit());
}

//! The consent decision as the database evaluates it: one patient per Consent shape, the same
//! five resources each, searched by another facility. The same cases on a SQLite file and on a
//! fresh PostgreSQL database (admin URL from RENKEI_TEST_PG_URL).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use renkei_repository::{Repository, WriteContext};
use renkei_search::plan::Filter;
use renkei_store::Visibility;
use serde_json::{json, Value};

mod common;
use common::{plan, Db};

const OWNER: &str = "Organization/hosp-a";
const READER: &str = "Organization/clinic-b";
const OTHER: &str = "Organization/clinic-c";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

fn owner_context() -> WriteContext {
    WriteContext {
        custodian: Some(OWNER.into()),
        ..WriteContext::default()
    }
}

fn put(repo: &Repository, resource: Value) {
    let res_type = resource["resourceType"].as_str().unwrap().to_string();
    let id = resource["id"].as_str().unwrap().to_string();
    repo.write(|tx| {
        renkei_repository::update(tx, &res_type, &id, resource.clone(), None, &owner_context())
    })
    .unwrap_or_else(|e| panic!("{res_type}/{id}: {e}"));
}

fn observation(patient: &str, id: &str, date: &str, meta: Value) -> Value {
    json!({"resourceType": "Observation", "id": format!("{patient}-{id}"), "status": "final",
        "meta": meta,
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": date})
}

/// The five resources every patient has, by short name.
fn load_patient(repo: &Repository, patient: &str) {
    put(repo, json!({"resourceType": "Patient", "id": patient}));
    put(repo, observation(patient, "obs19", "2019-06-01", json!({})));
    put(repo, observation(patient, "obs24", "2024-06-01", json!({})));
    put(
        repo,
        observation(
            patient,
            "psy",
            "2024-06-01",
            json!({"security": [{"system": ACT_CODE, "code": "PSY"}]}),
        ),
    );
    put(
        repo,
        observation(
            patient,
            "undelivered",
            "2024-06-01",
            json!({"tag": [{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication", "code": "UNDELIVERED"}]}),
        ),
    );
    put(
        repo,
        json!({"resourceType": "MedicationRequest", "id": format!("{patient}-med"), "status": "active",
            "intent": "order", "medicationCodeableConcept": {"text": "amlodipine"},
            "subject": {"reference": format!("Patient/{patient}")}, "authoredOn": "2024-03-01"}),
    );
}

fn actor(org: &str) -> Value {
    json!({"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
        "reference": {"reference": org}})
}

fn consent(patient: &str, n: u32, status: &str, provision: Value) -> Value {
    json!({"resourceType": "Consent", "id": format!("{patient}-consent{n}"), "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "provision": provision})
}

fn treat() -> Value {
    json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}])
}

/// A patient named after its Consent shape, its consents (status, provision) and the short
/// names of the resources READER sees.
type Shape = (
    &'static str,
    Vec<(&'static str, Value)>,
    &'static [&'static str],
);

fn shapes() -> Vec<Shape> {
    const ALL: &[&str] = &["med", "obs19", "obs24", "psy"];
    vec![
        ("none", vec![], &[]),
        (
            "permit",
            vec![(
                "active",
                json!({"type": "permit", "actor": [actor(READER)], "purpose": treat()}),
            )],
            ALL,
        ),
        (
            "everyone",
            vec![("active", json!({"type": "permit", "purpose": treat()}))],
            ALL,
        ),
        (
            "actor-mismatch",
            vec![("active", json!({"type": "permit", "actor": [actor(OTHER)]}))],
            &[],
        ),
        (
            "purpose-mismatch",
            vec![(
                "active",
                json!({"type": "permit", "actor": [actor(READER)],
                "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT"}]}),
            )],
            &[],
        ),
        (
            "class",
            vec![(
                "active",
                json!({"type": "permit", "actor": [actor(READER)],
                "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}),
            )],
            &["obs19", "obs24", "psy"],
        ),
        (
            "data-period",
            vec![(
                "active",
                json!({"type": "permit", "actor": [actor(READER)],
                "dataPeriod": {"start": "2024-01-01", "end": "2024-12-31"}}),
            )],
            &["med", "obs24", "psy"],
        ),
        (
            "label-excluded",
            vec![(
                "active",
                json!({"type": "permit", "actor": [actor(READER)],
                "provision": [{"type": "deny", "securityLabel": [{"system": ACT_CODE, "code": "PSY"}]}]}),
            )],
            &["med", "obs19", "obs24"],
        ),
        (
            "class-excluded",
            vec![(
                "active",
                json!({"type": "permit", "actor": [actor(READER)],
                "provision": [{"type": "deny", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "MedicationRequest"}]}]}),
            )],
            &["obs19", "obs24", "psy"],
        ),
        (
            "deny",
            vec![("active", json!({"type": "deny", "actor": [actor(READER)]}))],
            &[],
        ),
        (
            "deny-except-reader",
            vec![(
                "active",
                json!({"type": "deny", "provision": [{"type": "permit", "actor": [actor(READER)]}]}),
            )],
            ALL,
        ),
        (
            "deny-except-other",
            vec![(
                "active",
                json!({"type": "deny", "provision": [{"type": "permit", "actor": [actor(OTHER)]}]}),
            )],
            &[],
        ),
        (
            "conflict",
            vec![
                (
                    "active",
                    json!({"type": "permit", "actor": [actor(READER)]}),
                ),
                ("active", json!({"type": "deny", "actor": [actor(READER)]})),
            ],
            &[],
        ),
        (
            "withdrawn",
            vec![(
                "inactive",
                json!({"type": "permit", "actor": [actor(READER)]}),
            )],
            &[],
        ),
        (
            "expired",
            vec![(
                "active",
                json!({"type": "permit", "actor": [actor(READER)],
                "period": {"start": "2015-01-01", "end": "2020-12-31"}}),
            )],
            &[],
        ),
        (
            "instance",
            vec![(
                "active",
                json!({"type": "permit", "actor": [actor(READER)],
                "data": [{"meaning": "instance", "reference": {"reference": "Observation/instance-obs24"}}]}),
            )],
            &["obs24"],
        ),
    ]
}

fn load(repo: &Repository) {
    for (patient, consents, _) in shapes() {
        load_patient(repo, patient);
        for (n, (status, provision)) in (1..).zip(consents) {
            put(repo, consent(patient, n, status, provision));
        }
    }
}

/// A facility reader; `break_glass`: the patient it has broken the glass for.
fn reader(
    implicit_permit: bool,
    break_glass: Option<&str>,
    deny_holds_on_break_glass: bool,
) -> Visibility {
    facility_view(
        READER,
        implicit_permit,
        break_glass,
        deny_holds_on_break_glass,
    )
}

/// `organization` asking for treatment now.
fn facility_view(
    organization: &str,
    implicit_permit: bool,
    break_glass: Option<&str>,
    deny_holds_on_break_glass: bool,
) -> Visibility {
    Visibility::Facility {
        organization: organization.into(),
        practitioner: None,
        purpose: "TREAT".into(),
        now_ms: chrono::Utc::now().timestamp_millis(),
        break_glass: break_glass.map(str::to_string),
        deny_holds_on_break_glass,
        implicit_permit,
    }
}

/// Short names of the patient's resources (Observations and MedicationRequests) `who` sees,
/// and the count the server would report for them. Each type is searched three times: by
/// patient and in the patient's compartment, where the decision for the patient is made once
/// per query when the rules allow, and by id, where every row is decided on its own; all three
/// must agree.
fn visible(repo: &Repository, patient: &str, who: &Visibility) -> Vec<String> {
    let ids = ["obs19", "obs24", "psy", "undelivered", "med"]
        .map(|short| format!("{patient}-{short}"))
        .join(",");
    let mut seen = Vec::new();
    for res_type in ["Observation", "MedicationRequest"] {
        // The patient's compartment, as `Patient/{patient}/{res_type}` and `$everything` search.
        let mut in_compartment = plan(res_type, "_total=accurate");
        in_compartment.filters.push(Filter::Compartment {
            target_type: "Patient".into(),
            target_id: patient.into(),
            members: vec![(res_type.into(), vec!["subject".into()])],
            include_self: false,
            linked: false,
        });
        let [by_patient, by_id, by_compartment] = [
            plan(res_type, &format!("patient={patient}&_total=accurate")),
            plan(res_type, &format!("_id={ids}&_total=accurate")),
            in_compartment,
        ]
        .map(|mut p| {
            p.count = 50;
            let page = repo.search(&p, who).unwrap();
            assert_eq!(
                page.total,
                Some(page.matches.len() as i64),
                "{patient} {res_type} total"
            );
            // What the page found decided a row's consent (for the AuthZ-Consent event) is
            // what the row alone says.
            for row in page.matches.iter().filter(|r| r.decided_by().is_some()) {
                let alone = repo
                    .read_tx(|tx| {
                        Ok(tx.deciding_consent(renkei_store::DecidedRow::Rid(row.rid), who)?)
                    })
                    .unwrap()
                    .and_then(|decision| decision.consent_ref);
                assert_eq!(
                    row.decided_by(),
                    Some(alone.as_deref()),
                    "{patient} {}: decider of the page vs of the row",
                    row.res_id
                );
            }
            let mut names: Vec<String> = page
                .matches
                .iter()
                .map(|r| {
                    r.res_id
                        .strip_prefix(&format!("{patient}-"))
                        .unwrap_or(&r.res_id)
                        .to_string()
                })
                .collect();
            names.sort();
            names
        });
        // A search about no one patient names the decider of every foreign row it returns.
        if let Visibility::Facility {
            organization,
            break_glass: None,
            ..
        } = who
        {
            let page = repo
                .search(&plan(res_type, &format!("_id={ids}")), who)
                .unwrap();
            for row in &page.matches {
                assert!(
                    row.custodian.as_deref() == Some(organization.as_str())
                        || row.decided_by().is_some(),
                    "{patient} {}: foreign row without its decider",
                    row.res_id
                );
            }
        }
        assert_eq!(
            by_patient, by_id,
            "{patient} {res_type}: by patient vs by id"
        );
        assert_eq!(
            by_compartment, by_id,
            "{patient} {res_type}: in the compartment vs by id"
        );
        // A chain is evaluated over what the requester may see: through the patient when
        // the Patient itself is visible (the chain then runs as a search by that patient),
        // nothing otherwise.
        let by_chain = short_names(
            repo,
            res_type,
            &format!("subject:Patient._id={patient}"),
            who,
            patient,
        );
        let patient_visible = !repo
            .search(&plan("Patient", &format!("_id={patient}")), who)
            .unwrap()
            .matches
            .is_empty();
        let expected = if patient_visible {
            by_patient.clone()
        } else {
            Vec::new()
        };
        assert_eq!(by_chain, expected, "{patient} {res_type}: by chain");
        seen.extend(by_patient);
    }
    seen.sort();
    seen
}

fn every_shape_is_decided_in_the_query(db: Db) {
    load(&db.repo);
    let opt_in = reader(false, None, true);
    for (patient, _, expected) in shapes() {
        assert_eq!(
            visible(&db.repo, patient, &opt_in),
            expected.to_vec(),
            "{patient}"
        );
    }
    // A search about one patient names what decided with the page where the rules allow;
    // where a rule depends on the resource, each row's decider is looked up on its own.
    let decided = |patient: &str, who: &Visibility| {
        let page = db
            .repo
            .search(&plan("Observation", &format!("patient={patient}")), who)
            .unwrap();
        assert!(!page.matches.is_empty(), "{patient}");
        page.matches
            .iter()
            .map(|row| row.decided_by().map(|c| c.map(str::to_string)))
            .collect::<Vec<_>>()
    };
    let permit = Some(Some("Consent/permit-consent1".to_string()));
    assert!(decided("permit", &opt_in).iter().all(|d| *d == permit));
    assert!(decided("class", &opt_in).iter().all(Option::is_none));
    // Opt-out network: a patient without any consent is visible; any rule decides instead.
    let opt_out = reader(true, None, true);
    assert_eq!(
        visible(&db.repo, "none", &opt_out),
        ["med", "obs19", "obs24", "psy"]
    );
    assert!(decided("none", &opt_out).iter().all(|d| *d == Some(None)));
    assert!(visible(&db.repo, "deny", &opt_out).is_empty());
    assert!(visible(&db.repo, "actor-mismatch", &opt_out).is_empty());
    // Break-glass: no permit needed; an explicit deny holds unless configured otherwise.
    let glass = reader(false, Some("none"), true);
    assert_eq!(
        visible(&db.repo, "none", &glass),
        ["med", "obs19", "obs24", "psy"]
    );
    let glass = reader(false, Some("deny"), true);
    assert!(visible(&db.repo, "deny", &glass).is_empty());
    let glass_over_deny = reader(false, Some("deny"), false);
    assert_eq!(
        visible(&db.repo, "deny", &glass_over_deny),
        ["med", "obs19", "obs24", "psy"]
    );
    // Break-glass opens its own patient's record only: another patient's data is decided
    // by consent, as without it.
    assert!(visible(&db.repo, "none", &glass_over_deny).is_empty());
    // The owner always sees its own data, the undelivered record included.
    let owner = facility_view(OWNER, false, None, true);
    assert_eq!(
        visible(&db.repo, "deny", &owner),
        ["med", "obs19", "obs24", "psy", "undelivered"]
    );
    (db.cleanup)();
}

on_both_backends!(
    consent_shapes_sqlite,
    consent_shapes_postgres,
    every_shape_is_decided_in_the_query,
    "consent"
);

/// The privacy-tag and security-label questions the predicate asks of every row held by
/// another facility, and a search's own token conditions, are answered from the token index
/// alone, not by reading every token row of the resource from the table.
#[test]
fn token_probes_are_answered_from_the_index_alone_sqlite() {
    if !common::backend_selected("sqlite") {
        return;
    }
    let db = common::sqlite("consent-plan");
    load(&db.repo);
    let explanation = db
        .repo
        .explain_search(
            &plan("Observation", "patient=class&code=4548-4&_total=accurate"),
            &reader(false, None, true),
        )
        .unwrap();
    let plan = explanation.plan.join("\n");
    // A chain that leads to one visible Patient runs as a search by that patient.
    let chained = db
        .repo
        .explain_search(
            &crate::plan("Observation", "subject:Patient._id=permit"),
            &reader(false, None, true),
        )
        .unwrap();
    assert!(
        !chained.sql.contains("FROM resources c"),
        "the chain was not resolved: {}",
        chained.sql
    );
    for probe in ["tg", "sl", "x2"] {
        let lines: Vec<&str> = plan
            .lines()
            .filter(|line| line.trim_start().starts_with(&format!("SEARCH {probe} ")))
            .collect();
        assert!(!lines.is_empty(), "{probe}: {plan}");
        for line in lines {
            assert!(
                line.contains("COVERING INDEX idx_token_rid (rid=? AND param=? AND code=?"),
                "{probe}: {plan}"
            );
        }
    }
    (db.cleanup)();
}

/// A deleted record keeps what consent decides on (its clinical date, its references), and
/// `reindex` rebuilds tombstones written before it did: under "permit, except 2019 and except
/// what relates to this report", the 2019 result and a result of the report stay hidden from
/// the reader once deleted; a 2024 result's deletion shows as before.
fn tombstones_stay_as_hidden_as_their_records(db: Db) {
    let repo = &db.repo;
    let patient = "tomb";
    load_patient(repo, patient);
    put(
        repo,
        json!({"resourceType": "DiagnosticReport", "id": "tomb-report", "status": "final",
            "code": {"text": "HbA1c"}, "subject": {"reference": "Patient/tomb"}}),
    );
    let mut of_report = observation(patient, "of-report", "2024-06-01", json!({}));
    of_report["partOf"] = json!([{"reference": "DiagnosticReport/tomb-report"}]);
    put(repo, of_report);
    put(
        repo,
        consent(
            patient,
            1,
            "active",
            json!({"type": "permit", "actor": [actor(READER)], "purpose": treat(),
                "provision": [
                    {"type": "deny", "dataPeriod": {"start": "2019-01-01", "end": "2019-12-31"}},
                    {"type": "deny", "data": [{"meaning": "related",
                        "reference": {"reference": "DiagnosticReport/tomb-report"}}]}]}),
        ),
    );
    let who = reader(false, None, false);
    let deleted = ["tomb-obs19", "tomb-of-report", "tomb-obs24"];
    for id in deleted {
        repo.write(|tx| renkei_repository::delete(tx, "Observation", id, None, &owner_context()))
            .unwrap();
    }
    let seen = |repo: &Repository| -> Vec<&str> {
        repo.read_tx(|tx| {
            let mut seen = Vec::new();
            for id in deleted {
                let row = tx.current("Observation", id)?.expect("tombstone");
                if tx.is_visible(&row, &who)? {
                    seen.push(id);
                }
            }
            Ok::<_, renkei_repository::RepoError>(seen)
        })
        .unwrap()
    };
    assert_eq!(seen(repo), ["tomb-obs24"]);
    // As an earlier version left tombstones: the patient and labels only.
    repo.write(|tx| {
        for id in deleted {
            let row = tx.current("Observation", id)?.expect("tombstone");
            tx.replace_index(row.rid, "Observation", &renkei_search::IndexRows::default())?;
            tx.set_clinical_period(row.rid, None, None)?;
        }
        Ok::<_, renkei_repository::RepoError>(())
    })
    .unwrap();
    assert_eq!(seen(repo), deleted, "the earlier tombstones hid nothing");
    repo.reindex(2, |_| {}).unwrap();
    assert_eq!(seen(repo), ["tomb-obs24"]);
    (db.cleanup)();
}

on_both_backends!(
    tombstones_stay_as_hidden_as_their_records_sqlite,
    tombstones_stay_as_hidden_as_their_records_postgres,
    tombstones_stay_as_hidden_as_their_records,
    "tombstones"
);

/// The ids `who` finds by `query`, without the `{patient}-` they start with, sorted.
fn short_names(
    repo: &Repository,
    res_type: &str,
    query: &str,
    who: &Visibility,
    patient: &str,
) -> Vec<String> {
    let mut names: Vec<String> = repo
        .search(&plan(res_type, query), who)
        .unwrap()
        .matches
        .iter()
        .map(|r| {
            r.res_id
                .trim_start_matches(&format!("{patient}-"))
                .to_string()
        })
        .collect();
    names.sort();
    names
}

/// A data period as the database decides it, by kind of care: a permission opens what is
/// dated within it; a refusal hides whatever care overlaps it (an admission begun before the
/// refused year, an open episode, a period known by its end, a month given to the month).
fn data_periods_compare_the_care_span(db: Db) {
    let repo = &db.repo;
    let spans = [
        ("within", json!({"effectiveDateTime": "2024-05-01"})),
        (
            "into",
            json!({"effectivePeriod": {"start": "2023-11-20", "end": "2024-01-10"}}),
        ),
        ("open", json!({"effectivePeriod": {"start": "2023-06-01"}})),
        (
            "end-only",
            json!({"effectivePeriod": {"end": "2024-02-01"}}),
        ),
        ("month", json!({"effectiveDateTime": "2023-12"})),
        (
            "before",
            json!({"effectivePeriod": {"start": "2022-01-01", "end": "2022-02-01"}}),
        ),
        ("after", json!({"effectiveDateTime": "2025-03-01"})),
        ("undated", json!({})),
    ];
    let period = json!({"start": "2023-12-15", "end": "2024-12-31"});
    let cases = [
        (
            "span-refused",
            json!({"type": "permit", "actor": [actor(READER)],
                "provision": [{"type": "deny", "dataPeriod": period}]}),
            vec!["after", "before", "undated"],
        ),
        (
            "span-permitted",
            json!({"type": "permit", "actor": [actor(READER)], "dataPeriod": period}),
            vec!["within"],
        ),
    ];
    for (patient, provision, expected) in cases {
        put(repo, json!({"resourceType": "Patient", "id": patient}));
        for (name, effective) in &spans {
            let mut obs = json!({"resourceType": "Observation", "id": format!("{patient}-{name}"),
                "status": "final", "code": {"text": "x"},
                "subject": {"reference": format!("Patient/{patient}")}});
            if let (Some(obs), Some(effective)) = (obs.as_object_mut(), effective.as_object()) {
                obs.extend(effective.clone());
            }
            put(repo, obs);
        }
        put(repo, consent(patient, 1, "active", provision));
        let who = reader(false, None, true);
        let names = |query: &str| short_names(repo, "Observation", query, &who, patient);
        let ids = spans
            .iter()
            .map(|(name, _)| format!("{patient}-{name}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(names(&format!("patient={patient}")), expected, "{patient}");
        assert_eq!(names(&format!("_id={ids}")), expected, "{patient} by id");
    }
    (db.cleanup)();
}

on_both_backends!(
    data_periods_compare_the_care_span_sqlite,
    data_periods_compare_the_care_span_postgres,
    data_periods_compare_the_care_span,
    "data_periods"
);

/// A stored document of `patient` (`{patient}-doc`), dated only by its Composition.
fn document(patient: &str) -> Value {
    json!({"resourceType": "Bundle", "id": format!("{patient}-doc"), "type": "document",
        "identifier": {"system": "urn:test:document", "value": patient},
        "timestamp": "2024-03-10T00:00:00Z",
        "entry": [{"fullUrl": "urn:uuid:6b3f0c52-6a1e-4c8e-9f57-3f1d2b7c0a11",
            "resource": {"resourceType": "Composition", "status": "final", "date": "2024-03-10",
                "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5"}]},
                "subject": {"reference": format!("Patient/{patient}")},
                "author": [{"reference": OWNER}], "title": "Discharge summary"}}]})
}

/// The scan of [`document`] (`{patient}-bin-doc`).
fn document_scan(patient: &str) -> Value {
    json!({"resourceType": "Binary", "id": format!("{patient}-bin-doc"),
        "contentType": "application/pdf", "data": "eA==",
        "securityContext": {"reference": format!("Bundle/{patient}-doc")}})
}

/// A record dated only by what it refers to (a Binary's `securityContext`, a Provenance's
/// target) is under a refused data period as that care is, also when the care moves into the
/// period after the record was written; a permitted period opens it with its care.
fn data_periods_reach_records_dated_by_their_care(db: Db) {
    let repo = &db.repo;
    let period = json!({"start": "2024-01-01", "end": "2024-12-31"});
    let cases = [
        (
            "dated-refused",
            json!({"type": "permit", "actor": [actor(READER)],
                "provision": [{"type": "deny", "dataPeriod": period}]}),
        ),
        (
            "dated-permitted",
            json!({"type": "permit", "actor": [actor(READER)], "dataPeriod": period}),
        ),
    ];
    let encounter = |patient: &str, name: &str, start: &str, end: &str| {
        json!({"resourceType": "Encounter", "id": format!("{patient}-{name}"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": format!("Patient/{patient}")},
            "period": {"start": start, "end": end}})
    };
    // A third patient who lets READER see everything.
    put(
        repo,
        json!({"resourceType": "Patient", "id": "dated-third"}),
    );
    put(
        repo,
        observation("dated-third", "obs", "2019-06-01", json!({})),
    );
    put(
        repo,
        consent(
            "dated-third",
            1,
            "active",
            json!({"type": "permit", "actor": [actor(READER)]}),
        ),
    );
    // Without a period in the consent, the document and its scan are there to see.
    put(repo, document("dated-third"));
    put(repo, document_scan("dated-third"));
    let third = reader(false, None, true);
    assert_eq!(
        short_names(repo, "Bundle", "_id=dated-third-doc", &third, "dated-third"),
        ["doc"]
    );
    assert_eq!(
        short_names(
            repo,
            "Binary",
            "_id=dated-third-bin-doc",
            &third,
            "dated-third"
        ),
        ["bin-doc"]
    );
    for (patient, provision) in cases {
        put(repo, json!({"resourceType": "Patient", "id": patient}));
        put(repo, encounter(patient, "in", "2024-03-01", "2024-03-10"));
        put(repo, encounter(patient, "out", "2022-03-01", "2022-03-10"));
        put(repo, observation(patient, "obs19", "2019-06-01", json!({})));
        for (name, target) in [
            ("in", "Encounter/{}-in"),
            ("old", "Observation/{}-obs19"),
            ("moved", "Encounter/{}-out"),
        ] {
            put(
                repo,
                json!({"resourceType": "Binary", "id": format!("{patient}-bin-{name}"),
                "contentType": "text/plain", "data": "eA==",
                "securityContext": {"reference": target.replace("{}", patient)}}),
            );
        }
        // One Provenance of care in the period and of care before it: it spans both.
        put(
            repo,
            json!({"resourceType": "Provenance", "id": format!("{patient}-prov-both"),
            "recorded": "2024-03-10T00:00:00Z",
            "target": [{"reference": format!("Encounter/{patient}-in")},
                       {"reference": format!("Observation/{patient}-obs19")}],
            "agent": [{"who": {"reference": OWNER}}]}),
        );
        put(
            repo,
            json!({"resourceType": "Provenance", "id": format!("{patient}-prov-out"),
            "recorded": "2024-03-10T00:00:00Z",
            "target": [{"reference": format!("Observation/{patient}-obs19")}],
            "agent": [{"who": {"reference": OWNER}}]}),
        );
        // Of two patients' care: neither patient's consent decides it alone.
        put(
            repo,
            json!({"resourceType": "Provenance", "id": format!("{patient}-prov-two"),
            "recorded": "2024-03-10T00:00:00Z",
            "target": [{"reference": "Observation/dated-third-obs"},
                       {"reference": format!("Observation/{patient}-obs19")}],
            "agent": [{"who": {"reference": OWNER}}]}),
        );
        // Of care it holds itself.
        let mut held = encounter(patient, "held", "2024-04-01", "2024-04-02");
        held["id"] = json!("held");
        put(
            repo,
            json!({"resourceType": "Provenance", "id": format!("{patient}-prov-held"),
            "recorded": "2024-04-02T00:00:00Z", "contained": [held],
            "target": [{"reference": "#held"}],
            "agent": [{"who": {"reference": OWNER}}]}),
        );
        // The scan of a stored document: a Bundle holds care of any date.
        put(repo, document(patient));
        put(repo, document_scan(patient));
        // More records dated by one encounter than are read at a time.
        for n in 0..300 {
            put(
                repo,
                json!({"resourceType": "Binary", "id": format!("{patient}-bulk-{n}"),
                "contentType": "text/plain", "data": "eA==",
                "securityContext": {"reference": format!("Encounter/{patient}-out")}}),
            );
        }
        put(repo, consent(patient, 1, "active", provision));
        // The Binary "moved" refers to an encounter that turns out to lie in the period.
        put(repo, encounter(patient, "out", "2024-05-01", "2024-05-03"));
        let who = reader(false, None, true);
        let ids = [
            "bin-in",
            "bin-old",
            "bin-moved",
            "prov-both",
            "prov-out",
            "prov-two",
            "prov-held",
            "bulk-0",
            "bulk-299",
            "bin-doc",
        ]
        .map(|short| format!("{patient}-{short}"))
        .join(",");
        let names =
            |res_type: &str| short_names(repo, res_type, &format!("_id={ids}"), &who, patient);
        let (binaries, provenances): (Vec<&str>, Vec<&str>) = match patient {
            "dated-refused" => (vec!["bin-old"], vec!["prov-out"]),
            _ => (
                vec!["bin-in", "bin-moved", "bulk-0", "bulk-299"],
                vec!["prov-held"],
            ),
        };
        assert_eq!(names("Binary"), binaries, "{patient}");
        assert_eq!(names("Provenance"), provenances, "{patient}");
        // A refused period hides every stored Bundle, and a period permitted opens none: so
        // with the scan of one.
        let doc = format!("_id={patient}-doc");
        assert!(
            short_names(repo, "Bundle", &doc, &who, patient).is_empty(),
            "{patient}"
        );
        // Of several patients, it has no patient's consent to go by: hidden in an opt-out
        // network too, where a patient without consent is visible.
        let opt_out = reader(true, None, true);
        let two = format!("_id={patient}-prov-two");
        assert!(
            short_names(repo, "Provenance", &two, &opt_out, patient).is_empty(),
            "{patient}"
        );
        // Deleted, a record dated by its care stays as hidden as it was.
        let deleted = format!("{patient}-bin-in");
        repo.write(|tx| renkei_repository::delete(tx, "Binary", &deleted, None, &owner_context()))
            .unwrap();
        let tombstone_visible = repo
            .read_tx(|tx| {
                let row = tx.current("Binary", &deleted)?.unwrap();
                Ok(tx.is_visible(&row, &who)?)
            })
            .unwrap();
        assert_eq!(tombstone_visible, patient != "dated-refused", "{patient}");
    }
    (db.cleanup)();
}

on_both_backends!(
    data_periods_reach_records_dated_by_their_care_sqlite,
    data_periods_reach_records_dated_by_their_care_postgres,
    data_periods_reach_records_dated_by_their_care,
    "data_period_referrers"
);

/// A record about the patient of what it refers to is decided as what it follows: a refusal
/// of an admission "and everything related", of one document, or of a type reaches the scans
/// and Provenances of what it refuses, along chains of them, and follows a result moved out
/// of the refused admission.
fn refusals_by_data_and_type_reach_what_follows(db: Db) {
    let repo = &db.repo;
    let refusal = |provision: Value| json!({"type": "permit", "actor": [actor(READER)], "provision": [provision]});
    let of_type =
        |code: &str| json!([{"system": "http://hl7.org/fhir/resource-types", "code": code}]);
    let consents = [
        (
            "follow-related",
            refusal(json!({"type": "deny", "data": [{"meaning": "related",
                "reference": {"reference": "Encounter/follow-related-adm"}}]})),
        ),
        (
            "follow-instance",
            refusal(json!({"type": "deny", "data": [{"meaning": "instance",
                "reference": {"reference": "DocumentReference/follow-instance-doc"}}]})),
        ),
        (
            "follow-class",
            refusal(json!({"type": "deny", "class": of_type("Observation")})),
        ),
        // A permission of Binaries and Provenances opens none that follows a record of
        // another type: they are content of those records.
        (
            "follow-permitted-type",
            json!({"type": "permit", "actor": [actor(READER)],
                "class": [of_type("Binary")[0], of_type("Provenance")[0], of_type("Task")[0]]}),
        ),
    ];
    let records = |patient: &str| {
        let p = |name: &str| format!("{patient}-{name}");
        let subject = json!({"reference": format!("Patient/{patient}")});
        vec![
            json!({"resourceType": "Patient", "id": patient}),
            json!({"resourceType": "Encounter", "id": p("adm"), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": subject}),
            json!({"resourceType": "Encounter", "id": p("later"), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": subject}),
            json!({"resourceType": "DocumentReference", "id": p("doc"), "status": "current",
                "subject": subject, "context": {"encounter": [{"reference": format!("Encounter/{}", p("adm"))}]},
                "content": [{"attachment": {"url": format!("Binary/{}", p("bin"))}}]}),
            json!({"resourceType": "Binary", "id": p("bin"), "contentType": "application/pdf",
                "data": "eA==", "securityContext": {"reference": format!("DocumentReference/{}", p("doc"))}}),
            json!({"resourceType": "Provenance", "id": p("prov-bin"), "recorded": "2024-03-10T00:00:00Z",
                "target": [{"reference": format!("Binary/{}", p("bin"))}],
                "agent": [{"who": {"reference": OWNER}}]}),
            json!({"resourceType": "Observation", "id": p("obs"), "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "subject": subject, "encounter": {"reference": format!("Encounter/{}", p("adm"))},
                "effectiveDateTime": "2024-03-05"}),
            json!({"resourceType": "Binary", "id": p("scan"), "contentType": "application/pdf",
                "data": "eA==", "securityContext": {"reference": format!("Observation/{}", p("obs"))}}),
            json!({"resourceType": "Provenance", "id": p("prov"), "recorded": "2024-03-10T00:00:00Z",
                "target": [{"reference": format!("Observation/{}", p("obs"))}],
                "agent": [{"who": {"reference": OWNER}}]}),
            // Naming the patient as well, they follow what they are about all the same.
            json!({"resourceType": "Provenance", "id": p("prov-named"), "recorded": "2024-03-10T00:00:00Z",
                "target": [subject, {"reference": format!("Observation/{}", p("obs"))}],
                "agent": [{"who": {"reference": OWNER}}]}),
            json!({"resourceType": "Task", "id": p("task"), "status": "requested", "intent": "order",
                "for": subject, "focus": {"reference": format!("Observation/{}", p("obs"))}}),
            // Content about nothing but itself: its holder's alone.
            json!({"resourceType": "Binary", "id": p("self"), "contentType": "application/pdf",
                "data": "eA==", "securityContext": {"reference": format!("Binary/{}", p("self"))}}),
        ]
    };
    let ids = [
        "bin",
        "prov-bin",
        "scan",
        "prov",
        "prov-named",
        "task",
        "self",
    ];
    let who = reader(false, None, true);
    for (patient, provision) in consents {
        for record in records(patient) {
            put(repo, record);
        }
        put(repo, consent(patient, 1, "active", provision));
        let seen = |res_type: &str| {
            let query = format!(
                "_id={}",
                ids.map(|short| format!("{patient}-{short}")).join(",")
            );
            short_names(repo, res_type, &query, &who, patient)
        };
        let (binaries, provenances, tasks): (Vec<&str>, Vec<&str>, Vec<&str>) = match patient {
            // Everything of the admission: the document, the result and all that follows them.
            "follow-related" => (vec![], vec![], vec![]),
            // The document alone: its scan and the scan's Provenance, not the result's.
            "follow-instance" => (vec!["scan"], vec!["prov", "prov-named"], vec!["task"]),
            // Results: the result's scan and Provenance, not the document's.
            "follow-class" => (vec!["bin"], vec!["prov-bin"], vec![]),
            _ => (vec![], vec![], vec![]),
        };
        assert_eq!(seen("Binary"), binaries, "{patient}");
        assert_eq!(seen("Provenance"), provenances, "{patient}");
        assert_eq!(seen("Task"), tasks, "{patient}");
    }
    // The result was filed under the wrong admission: moved out of the refused one, its scan
    // and Provenance are shown with it, in the same write.
    let mut moved = records("follow-related")
        .into_iter()
        .find(|r| r["id"] == "follow-related-obs")
        .unwrap();
    moved["encounter"] = json!({"reference": "Encounter/follow-related-later"});
    put(repo, moved);
    let query = "_id=follow-related-obs,follow-related-scan,follow-related-prov";
    let mut shown = short_names(repo, "Binary", query, &who, "follow-related");
    shown.extend(short_names(
        repo,
        "Provenance",
        query,
        &who,
        "follow-related",
    ));
    shown.extend(short_names(
        repo,
        "Observation",
        query,
        &who,
        "follow-related",
    ));
    assert_eq!(shown, ["scan", "prov", "obs"]);
    // Nothing of this reaches searches: `_revinclude=*` of the admission finds what refers
    // to it, not what follows what refers to it.
    let owner = Visibility::Unrestricted;
    let found = repo
        .search(
            &plan("Encounter", "_id=follow-class-adm&_revinclude=*"),
            &owner,
        )
        .unwrap();
    let mut included: Vec<String> = found
        .included
        .iter()
        .map(|r| format!("{}/{}", r.res_type, r.res_id))
        .collect();
    included.sort();
    assert_eq!(
        included,
        [
            "DocumentReference/follow-class-doc",
            "Observation/follow-class-obs"
        ]
    );
    (db.cleanup)();
}

on_both_backends!(
    refusals_by_data_and_type_reach_what_follows_sqlite,
    refusals_by_data_and_type_reach_what_follows_postgres,
    refusals_by_data_and_type_reach_what_follows,
    "data_followers"
);

/// A record naming one patient but about another patient's data, or about something that is no
/// record here (`Condition/x?_format=json`, `condition/x`, `Condition/x#part`), is its holder's
/// alone: neither consent decides it (a review read a Task for one patient about another's
/// refused diagnosis, and Provenances of misspelt targets as directory data).
fn records_about_another_patients_data_are_their_holders(db: Db) {
    let repo = &db.repo;
    let condition = |patient: &str| {
        json!({"resourceType": "Condition", "id": format!("{patient}-cond"),
            "subject": {"reference": format!("Patient/{patient}")},
            "code": {"text": "x"}})
    };
    put(repo, json!({"resourceType": "Patient", "id": "cross-a"}));
    put(repo, json!({"resourceType": "Patient", "id": "cross-b"}));
    put(repo, condition("cross-a"));
    put(repo, condition("cross-b"));
    put(
        repo,
        consent(
            "cross-a",
            1,
            "active",
            json!({"type": "permit", "actor": [actor(READER)]}),
        ),
    );
    put(
        repo,
        consent(
            "cross-b",
            1,
            "active",
            json!({"type": "permit", "actor": [actor(READER)], "provision": [{"type": "deny",
                "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]}]}),
        ),
    );
    let task = |id: &str, focus: &str| {
        json!({"resourceType": "Task", "id": id, "status": "requested", "intent": "order",
            "for": {"reference": "Patient/cross-a"}, "focus": {"reference": focus}})
    };
    let provenance = |id: &str, targets: Value| {
        json!({"resourceType": "Provenance", "id": id, "recorded": "2024-05-02T00:00:00Z",
            "target": targets, "agent": [{"who": {"reference": OWNER}}]})
    };
    put(repo, task("cross-task-own", "Condition/cross-a-cond"));
    put(repo, task("cross-task-other", "Condition/cross-b-cond"));
    put(repo, task("cross-task-lower", "condition/cross-b-cond"));
    put(
        repo,
        provenance(
            "cross-prov-other",
            json!([{"reference": "Patient/cross-a"}, {"reference": "Condition/cross-b-cond"}]),
        ),
    );
    put(
        repo,
        provenance(
            "cross-prov-query",
            json!([{"reference": "Condition/cross-b-cond?_format=json"}]),
        ),
    );
    put(
        repo,
        json!({"resourceType": "Communication", "id": "cross-comm-fragment", "status": "completed",
            "about": [{"reference": "Condition/cross-b-cond#x"}]}),
    );
    let who = reader(false, None, true);
    let mut seen: Vec<String> = ["Task", "Provenance", "Communication"]
        .iter()
        .flat_map(|res_type| {
            short_names(
                repo,
                res_type,
                "_id=cross-task-own,cross-task-other,cross-task-lower,cross-prov-other,cross-prov-query,cross-comm-fragment",
                &who,
                "cross",
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["task-own"]);
    (db.cleanup)();
}

on_both_backends!(
    records_about_another_patients_data_are_their_holders_sqlite,
    records_about_another_patients_data_are_their_holders_postgres,
    records_about_another_patients_data_are_their_holders,
    "cross_patient_followers"
);

/// A Provenance of two patients' records is its holder's alone; when a facility corrects the
/// second record back to the first patient, the Provenance is that patient's again, in the
/// same write (a review found it hidden for good).
fn a_provenance_corrected_back_to_one_patient_is_theirs_again(db: Db) {
    let repo = &db.repo;
    let facility = WriteContext {
        custodian: Some(OWNER.into()),
        visibility: facility_view(OWNER, false, None, true),
        ..WriteContext::default()
    };
    let write = |resource: Value| {
        let res_type = resource["resourceType"].as_str().unwrap().to_string();
        let id = resource["id"].as_str().unwrap().to_string();
        repo.write(|tx| {
            renkei_repository::update(tx, &res_type, &id, resource.clone(), None, &facility)
        })
        .unwrap_or_else(|e| panic!("{res_type}/{id}: {e}"));
    };
    for patient in ["mend-a", "mend-b"] {
        write(json!({"resourceType": "Patient", "id": patient}));
    }
    write(consent(
        "mend-a",
        1,
        "active",
        json!({"type": "permit", "actor": [actor(READER)]}),
    ));
    write(observation("mend-a", "o1", "2024-05-01", json!({})));
    write(observation("mend-a", "o2", "2024-05-02", json!({})));
    write(
        json!({"resourceType": "Provenance", "id": "mend-prov", "recorded": "2024-05-02T00:00:00Z",
        "target": [{"reference": "Observation/mend-a-o1"}, {"reference": "Observation/mend-a-o2"}],
        "agent": [{"who": {"reference": OWNER}}]}),
    );
    let who = reader(false, None, true);
    let seen = || !short_names(repo, "Provenance", "_id=mend-prov", &who, "").is_empty();
    assert!(seen(), "one patient's");
    let mut moved = observation("mend-a", "o2", "2024-05-02", json!({}));
    moved["subject"] = json!({"reference": "Patient/mend-b"});
    write(moved);
    assert!(!seen(), "two patients'");
    write(observation("mend-a", "o2", "2024-05-02", json!({})));
    assert!(seen(), "one patient's again");
    (db.cleanup)();
}

on_both_backends!(
    a_provenance_corrected_back_to_one_patient_is_theirs_again_sqlite,
    a_provenance_corrected_back_to_one_patient_is_theirs_again_postgres,
    a_provenance_corrected_back_to_one_patient_is_theirs_again,
    "mended_provenance"
);

/// A record about the patient of what it refers to follows it: written before its target
/// exists (a Provenance before its Binary in a transaction), it stays its writer's; referring
/// to two patients however many times the first is named, it is its writer's; when its target
/// is corrected to another patient, it moves with it.
fn referring_records_follow_their_targets(db: Db) {
    let repo = &db.repo;
    let encounter = |id: &str, patient: &str| {
        json!({"resourceType": "Encounter", "id": id, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{patient}")},
            "period": {"start": "2024-05-01", "end": "2024-05-01"}})
    };
    let binary = |id: &str, context: &str| {
        json!({"resourceType": "Binary", "id": id, "contentType": "text/plain", "data": "eA==",
            "securityContext": {"reference": context}})
    };
    let provenance = |id: &str, targets: Vec<String>| {
        let targets: Vec<Value> = targets
            .into_iter()
            .map(|t| json!({"reference": t}))
            .collect();
        json!({"resourceType": "Provenance", "id": id, "recorded": "2024-05-01T00:00:00Z",
            "target": targets, "agent": [{"who": {"reference": OWNER}}]})
    };
    for (patient, provision) in [
        (
            "follow-open",
            json!({"type": "permit", "actor": [actor(READER)]}),
        ),
        (
            "follow-closed",
            json!({"type": "deny", "actor": [actor(READER)]}),
        ),
    ] {
        put(repo, json!({"resourceType": "Patient", "id": patient}));
        put(repo, consent(patient, 1, "active", provision));
    }
    put(repo, encounter("follow-open-enc", "follow-open"));
    put(repo, encounter("follow-closed-enc", "follow-closed"));
    // Before its Binary exists.
    put(
        repo,
        provenance("follow-early", vec!["Binary/follow-late".into()]),
    );
    put(repo, binary("follow-late", "Encounter/follow-open-enc"));
    // The open patient's encounter named 40 times, then the closed one's.
    let mut many = vec!["Encounter/follow-open-enc".to_string(); 40];
    many.push("Encounter/follow-closed-enc".into());
    put(repo, provenance("follow-two", many));
    // A Binary of the open patient's encounter, the encounter then corrected to the closed one.
    put(repo, encounter("follow-moved-enc", "follow-open"));
    put(repo, binary("follow-moved", "Encounter/follow-moved-enc"));
    let who = reader(false, None, true);
    let seen = |res_type: &str, id: &str| {
        !short_names(repo, res_type, &format!("_id={id}"), &who, "follow").is_empty()
    };
    assert!(seen("Binary", "follow-late"));
    assert!(seen("Binary", "follow-moved"));
    assert!(!seen("Provenance", "follow-early"));
    assert!(!seen("Provenance", "follow-two"));
    put(repo, encounter("follow-moved-enc", "follow-closed"));
    assert!(!seen("Encounter", "follow-moved-enc"));
    assert!(!seen("Binary", "follow-moved"));
    (db.cleanup)();
}

on_both_backends!(
    referring_records_follow_their_targets_sqlite,
    referring_records_follow_their_targets_postgres,
    referring_records_follow_their_targets,
    "follow"
);

/// "This encounter and everything related" reaches a record through a reference no search
/// parameter indexes (R4 has no `AllergyIntolerance?encounter`), as the Rust decision does over
/// every reference; `_include=*` still follows search parameters only.
fn related_data_is_found_through_unsearchable_references(db: Db) {
    let repo = &db.repo;
    let patient = "related";
    put(repo, json!({"resourceType": "Patient", "id": patient}));
    put(
        repo,
        json!({"resourceType": "Encounter", "id": "related-enc", "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": "Patient/related"}}),
    );
    put(
        repo,
        json!({"resourceType": "AllergyIntolerance", "id": "related-allergy",
            "patient": {"reference": "Patient/related"},
            "encounter": {"reference": "Encounter/related-enc"}}),
    );
    put(
        repo,
        json!({"resourceType": "AllergyIntolerance", "id": "related-other",
            "patient": {"reference": "Patient/related"}}),
    );
    put(
        repo,
        consent(
            patient,
            1,
            "active",
            json!({"type": "permit", "actor": [actor(READER)],
                "provision": [{"type": "deny", "data": [{"meaning": "related",
                    "reference": {"reference": "Encounter/related-enc"}}]}]}),
        ),
    );
    let ids = |who: &Visibility, query: &str| -> Vec<String> {
        let mut ids: Vec<String> = repo
            .search(&plan("AllergyIntolerance", query), who)
            .unwrap()
            .matches
            .iter()
            .map(|r| format!("{}/{}", r.res_type, r.res_id))
            .collect();
        ids.sort();
        ids
    };
    let who = reader(false, None, true);
    assert_eq!(
        ids(&who, "patient=related"),
        ["AllergyIntolerance/related-other"]
    );
    assert_eq!(
        ids(&who, "_id=related-allergy,related-other"),
        ["AllergyIntolerance/related-other"]
    );
    let owner = facility_view(OWNER, false, None, true);
    let page = repo
        .search(
            &plan("AllergyIntolerance", "_id=related-allergy&_include=*"),
            &owner,
        )
        .unwrap();
    let included: Vec<String> = page
        .included
        .iter()
        .map(|r| format!("{}/{}", r.res_type, r.res_id))
        .collect();
    assert_eq!(
        included,
        ["Patient/related"],
        "no include through `_reference`"
    );
    (db.cleanup)();
}

on_both_backends!(
    related_data_is_found_through_unsearchable_references_sqlite,
    related_data_is_found_through_unsearchable_references_postgres,
    related_data_is_found_through_unsearchable_references,
    "related"
);

//! Search against a real database: the same cases on a SQLite file and on a fresh PostgreSQL
//! database (admin URL from RENKEI_TEST_PG_URL, default postgres://postgres@127.0.0.1:5432/test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use renkei_repository::{Criteria, Repository, WriteContext};
use renkei_search::plan::{parse, Cursor, ParseOptions, SearchPlan};
use renkei_store::Visibility;
use serde_json::{json, Value};

mod common;
use common::{plan, Db};

fn sqlite() -> Db {
    common::sqlite("search")
}

fn postgres() -> Db {
    common::postgres("search")
}

use common::put;

fn ids(repo: &Repository, res_type: &str, query: &str) -> Vec<String> {
    let page = repo
        .search(&plan(res_type, query), &Visibility::Unrestricted)
        .unwrap();
    let mut ids: Vec<String> = page.matches.iter().map(|r| r.res_id.clone()).collect();
    ids.sort();
    ids
}

fn load(repo: &Repository) {
    put(
        repo,
        json!({"resourceType": "Patient", "id": "p1", "active": true, "gender": "male",
        "birthDate": "1970-05-06",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": "123"}],
        "name": [{"family": "ヤマダ", "given": ["タロウ"]}, {"family": "山田", "given": ["太郎"]}],
        "generalPractitioner": [{"reference": "Practitioner/dr1"}]}),
    );
    put(
        repo,
        json!({"resourceType": "Patient", "id": "p2", "active": false, "gender": "female",
        "birthDate": "1985",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": "456"}],
        "name": [{"family": "Müller", "given": ["Zoë"]}]}),
    );
    put(
        repo,
        json!({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "佐藤"}]}),
    );
    for (id, patient, code_system, code, value, when) in [
        (
            "o1",
            "p1",
            "urn:oid:1.2.392.200119.4.504",
            "3D010000001926101",
            98.0,
            "2024-01-10T09:00:00+09:00",
        ),
        (
            "o2",
            "p1",
            "http://medis.or.jp/CodeSystem/master-JLAC10-17digits",
            "3D010000001926101",
            130.5,
            "2024-02-10T09:00:00+09:00",
        ),
        ("o3", "p2", "http://loinc.org", "2339-0", 5.4, "2023-12-31"),
    ] {
        put(
            repo,
            json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": code_system, "code": code, "display": "グルコース"}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}),
        );
    }
}

fn run_cases(db: Db) {
    let repo = &db.repo;
    load(repo);
    // string: NFKC + case + accents; :exact; :contains
    assert_eq!(
        ids(
            repo,
            "Patient",
            "family=%EF%BE%94%EF%BE%8F%EF%BE%80%EF%BE%9E"
        ),
        ["p1"]
    ); // ﾔﾏﾀﾞ
    assert_eq!(ids(repo, "Patient", "name=山田"), ["p1"]);
    assert_eq!(ids(repo, "Patient", "family=muller"), ["p2"]);
    assert_eq!(ids(repo, "Patient", "family:exact=Müller"), ["p2"]);
    assert!(ids(repo, "Patient", "family:exact=müller").is_empty());
    assert_eq!(ids(repo, "Patient", "name:contains=ller"), ["p2"]);
    // token: code, system|code with both spellings, |code, :not, :missing, :text
    assert_eq!(
        ids(
            repo,
            "Observation",
            "code=urn:oid:1.2.392.200119.4.504|3D010000001926101"
        ),
        ["o1", "o2"]
    );
    assert_eq!(
        ids(
            repo,
            "Observation",
            "code=http://medis.or.jp/CodeSystem/master-JLAC10-17digits|3D010000001926101"
        ),
        ["o1", "o2"]
    );
    assert_eq!(ids(repo, "Observation", "code=2339-0"), ["o3"]);
    assert!(ids(repo, "Observation", "code=|2339-0").is_empty());
    assert_eq!(ids(repo, "Observation", "code=http://loinc.org|"), ["o3"]);
    assert_eq!(ids(repo, "Patient", "active:not=true"), ["p2"]);
    assert_eq!(
        ids(repo, "Patient", "general-practitioner:missing=true"),
        ["p2"]
    );
    assert_eq!(
        ids(repo, "Observation", "code:text=グル"),
        ["o1", "o2", "o3"]
    );
    assert_eq!(
        ids(
            repo,
            "Patient",
            "identifier=urn:oid:1.2.392.100495.20.3.51.11311234567|456"
        ),
        ["p2"]
    );
    // OR within, AND across
    assert_eq!(
        ids(repo, "Patient", "gender=male,female&active=true"),
        ["p1"]
    );
    // dates with implicit ranges and prefixes
    assert_eq!(ids(repo, "Patient", "birthdate=1970"), ["p1"]);
    assert_eq!(
        ids(repo, "Patient", "birthdate=1985-06"),
        Vec::<String>::new()
    );
    assert_eq!(ids(repo, "Patient", "birthdate=ge1985-06"), ["p2"]);
    assert_eq!(ids(repo, "Observation", "date=2024-01"), ["o1"]);
    assert_eq!(
        ids(repo, "Observation", "date=ge2024-01-10&date=lt2024-02"),
        ["o1"]
    );
    assert_eq!(ids(repo, "Observation", "date=eb2024"), ["o3"]);
    assert_eq!(ids(repo, "Observation", "date=sa2023-12-31"), ["o1", "o2"]);
    assert_eq!(ids(repo, "Observation", "date=ne2024-01-10"), ["o2", "o3"]);
    // references: id, Type/id, chain, _has
    assert_eq!(ids(repo, "Observation", "subject=Patient/p1"), ["o1", "o2"]);
    assert_eq!(ids(repo, "Observation", "patient=p2"), ["o3"]);
    assert_eq!(ids(repo, "Observation", "subject:Patient=p2"), ["o3"]);
    assert_eq!(
        ids(
            repo,
            "Observation",
            "subject:Patient.name=%EF%BE%94%EF%BE%8F"
        ),
        ["o1", "o2"]
    );
    assert_eq!(
        ids(
            repo,
            "Observation",
            "patient.identifier=urn:oid:1.2.392.100495.20.3.51.11311234567|456"
        ),
        ["o3"]
    );
    assert_eq!(
        ids(repo, "Patient", "_has:Observation:patient:code=2339-0"),
        ["p2"]
    );
    // quantity and number-like prefixes
    assert_eq!(ids(repo, "Observation", "value-quantity=gt100"), ["o2"]);
    assert_eq!(
        ids(
            repo,
            "Observation",
            "value-quantity=98|http://unitsofmeasure.org|mg/dL"
        ),
        ["o1"]
    );
    assert_eq!(ids(repo, "Observation", "value-quantity=5.4"), ["o3"]);
    // Exponent form: half a unit of the last significant digit (1.3e2 is [125, 135)).
    assert_eq!(ids(repo, "Observation", "value-quantity=1.3e2"), ["o2"]);
    assert!(ids(repo, "Observation", "value-quantity=1.30e2").is_empty());
    assert_eq!(ids(repo, "Observation", "value-quantity=1e2"), ["o1", "o2"]);
    assert_eq!(ids(repo, "Observation", "value-quantity=5e0"), ["o3"]);
    assert_eq!(
        ids(repo, "Observation", "value-quantity=le98"),
        ["o1", "o3"]
    );
    // _id, _lastUpdated
    assert_eq!(ids(repo, "Observation", "_id=o1,o3"), ["o1", "o3"]);
    assert_eq!(
        ids(repo, "Observation", "_lastUpdated=gt2000-01-01"),
        ["o1", "o2", "o3"]
    );

    // paging: keyset cursor, forward and back, sorted by -date
    let mut p = plan("Observation", "_sort=-date&_count=1&_total=accurate");
    let first = repo.search(&p, &Visibility::Unrestricted).unwrap();
    assert_eq!(first.total, Some(3));
    assert_eq!(first.matches[0].res_id, "o2");
    let mut seen = vec![first.matches[0].res_id.clone()];
    let mut next = first.next.clone();
    let mut last_page = first;
    while let Some(cursor) = next {
        p.cursor = Some(Cursor::decode(&cursor.encode()).unwrap());
        last_page = repo.search(&p, &Visibility::Unrestricted).unwrap();
        seen.extend(last_page.matches.iter().map(|r| r.res_id.clone()));
        next = last_page.next.clone();
    }
    assert_eq!(seen, ["o2", "o1", "o3"]);
    p.cursor = last_page.previous.clone();
    let back = repo.search(&p, &Visibility::Unrestricted).unwrap();
    assert_eq!(back.matches[0].res_id, "o1");

    // _include / _revinclude
    let page = repo
        .search(
            &plan("Observation", "code=2339-0&_include=Observation:patient"),
            &Visibility::Unrestricted,
        )
        .unwrap();
    assert_eq!(
        page.included
            .iter()
            .map(|r| r.res_id.as_str())
            .collect::<Vec<_>>(),
        ["p2"]
    );
    let page = repo
        .search(
            &plan(
                "Patient",
                "_id=p1&_revinclude=Observation:subject&_include=Patient:general-practitioner",
            ),
            &Visibility::Unrestricted,
        )
        .unwrap();
    let mut inc: Vec<&str> = page.included.iter().map(|r| r.res_id.as_str()).collect();
    inc.sort();
    assert_eq!(inc, ["dr1", "o1", "o2"]);
    let count = repo
        .search(
            &plan("Observation", "_summary=count"),
            &Visibility::Unrestricted,
        )
        .unwrap();
    assert_eq!(count.total, Some(3));
    assert!(count.matches.is_empty());

    composites_and_modifiers(repo);

    // conditional interactions run on the engine; a delete removes index rows
    let criteria = Criteria::parse("Patient", "family=ﾔﾏﾀﾞ").unwrap();
    let found = repo.read_tx(|tx| criteria.find(tx, 5)).unwrap();
    assert_eq!(found.len(), 1);
    repo.write(|tx| {
        renkei_repository::delete(tx, "Observation", "o3", None, &WriteContext::default())
    })
    .unwrap();
    assert!(ids(repo, "Observation", "code=2339-0").is_empty());
    assert!(ids(repo, "Patient", "_has:Observation:patient:code=2339-0").is_empty());
    // reindex rebuilds rows
    let n = repo.reindex(2, |_| {}).unwrap();
    assert_eq!(n.resources, 7); // 3 patients/practitioners, o1, o2 and the two ValueSets
    assert_eq!(
        ids(repo, "Observation", "code=3D010000001926101"),
        ["o1", "o2"]
    );
    (db.cleanup)();
}

fn try_plan(res_type: &str, query: &str) -> Result<SearchPlan, renkei_search::plan::SearchError> {
    let params: Vec<(String, String)> = query
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_string(), renkei_repository::percent_decode(v))
        })
        .collect();
    parse(&[res_type.to_string()], &params, &ParseOptions::default())
}

/// Composite parameters, `:of-type`, `:in`/`:not-in`, `:identifier`, uri `:below`/`:above`,
/// `_contained`, and the `last` page cursor.
fn composites_and_modifiers(repo: &Repository) {
    let loinc = "http://loinc.org";
    let ucum = "http://unitsofmeasure.org";
    for (id, sys, dia) in [("bp1", 150.0, 70.0), ("bp2", 110.0, 95.0)] {
        put(
            repo,
            json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": loinc, "code": "85354-9"}]},
            "subject": {"reference": "Patient/p1"},
            "component": [
                {"code": {"coding": [{"system": loinc, "code": "8480-6"}]},
                 "valueQuantity": {"value": sys, "system": ucum, "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": loinc, "code": "8462-4"}]},
                 "valueQuantity": {"value": dia, "system": ucum, "code": "mm[Hg]"}}]}),
        );
    }
    put(
        repo,
        json!({"resourceType": "Observation", "id": "sbp", "status": "final",
        "code": {"coding": [{"system": loinc, "code": "8480-6"}]},
        "subject": {"reference": "Patient/p2", "identifier": {"system": "urn:mrn", "value": "M-2"}},
        "identifier": [{"system": "urn:lab", "value": "L-77",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL"}]}}],
        "valueQuantity": {"value": 101, "system": ucum, "code": "mm[Hg]"}}),
    );
    // code-value-quantity: the Observation's own code and value together
    assert_eq!(
        ids(
            repo,
            "Observation",
            "code-value-quantity=http://loinc.org|8480-6$gt100"
        ),
        ["sbp"]
    );
    assert!(ids(repo, "Observation", "code-value-quantity=8480-6$gt120").is_empty());
    assert_eq!(
        ids(
            repo,
            "Observation",
            "code-value-quantity=3D010000001926101$ge98|http://unitsofmeasure.org|mg/dL"
        ),
        ["o1", "o2"]
    );
    // component-code-value-quantity: both parts from the same component
    assert_eq!(
        ids(
            repo,
            "Observation",
            "component-code-value-quantity=http://loinc.org|8480-6$gt140"
        ),
        ["bp1"]
    );
    // 8462-4 (diastolic) > 90 is bp2 only; bp1 has 150 systolic, which must not pair with it
    assert_eq!(
        ids(
            repo,
            "Observation",
            "component-code-value-quantity=8462-4$gt90"
        ),
        ["bp2"]
    );
    assert!(ids(
        repo,
        "Observation",
        "component-code-value-quantity=8462-4$gt140"
    )
    .is_empty());
    // OR across values, AND across repeats
    assert_eq!(
        ids(
            repo,
            "Observation",
            "component-code-value-quantity=8462-4$gt90,8480-6$gt140"
        ),
        ["bp1", "bp2"]
    );
    assert!(ids(
        repo,
        "Observation",
        "component-code-value-quantity=8462-4$gt90&component-code-value-quantity=8480-6$gt140"
    )
    .is_empty());
    // combo: the Observation or any component
    assert_eq!(
        ids(
            repo,
            "Observation",
            "combo-code-value-quantity=http://loinc.org|8480-6$gt100"
        ),
        ["bp1", "bp2", "sbp"]
    );
    assert_eq!(
        ids(
            repo,
            "Observation",
            "combo-code-value-quantity=8480-6$lt105"
        ),
        ["sbp"]
    );
    // combo-code: the Observation's code or a component's (stored once, under `code` and
    // `component-code`), also as a sort key and with :missing
    assert_eq!(
        ids(repo, "Observation", "combo-code=http://loinc.org|8480-6"),
        ["bp1", "bp2", "sbp"]
    );
    assert_eq!(
        ids(
            repo,
            "Observation",
            "combo-code=8462-4&combo-code:missing=false"
        ),
        ["bp1", "bp2"]
    );
    assert_eq!(
        ids(
            repo,
            "Observation",
            "combo-code=8480-6&_sort=combo-code,_id"
        ),
        ["bp1", "bp2", "sbp"]
    );
    assert_eq!(
        ids(
            repo,
            "Observation",
            "combo-value-quantity=gt145&combo-code=8480-6"
        ),
        ["bp1"]
    );
    // composites can be missing, and AND with other parameters
    assert_eq!(
        ids(
            repo,
            "Observation",
            "component-code-value-quantity=8480-6$gt100&subject=Patient/p1"
        ),
        ["bp1", "bp2"]
    );
    // identifier:of-type
    assert_eq!(
        ids(
            repo,
            "Observation",
            "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|FILL|L-77"
        ),
        ["sbp"]
    );
    assert!(ids(
        repo,
        "Observation",
        "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|PLAC|L-77"
    )
    .is_empty());
    // reference :identifier
    assert_eq!(
        ids(repo, "Observation", "subject:identifier=urn:mrn|M-2"),
        ["sbp"]
    );
    assert_eq!(ids(repo, "Observation", "patient:identifier=M-2"), ["sbp"]);
    assert!(ids(repo, "Observation", "subject:identifier=urn:other|M-2").is_empty());
    // :in with a stored ValueSet, by id and by canonical; imports; exclude; :not-in
    put(
        repo,
        json!({"resourceType": "ValueSet", "id": "bp-codes", "status": "active",
        "url": "http://example.org/fhir/ValueSet/bp-codes",
        "compose": {"include": [{"system": loinc, "concept": [{"code": "8480-6"}, {"code": "85354-9"}, {"code": "2339-0"}]},
                                {"valueSet": ["http://example.org/fhir/ValueSet/jlac"]}],
                    "exclude": [{"system": loinc, "concept": [{"code": "2339-0"}]}]}}),
    );
    put(
        repo,
        json!({"resourceType": "ValueSet", "id": "jlac", "status": "active",
        "url": "http://example.org/fhir/ValueSet/jlac",
        "compose": {"include": [{"system": "urn:oid:1.2.392.200119.4.504"}]}}),
    );
    assert_eq!(
        ids(repo, "Observation", "code:in=ValueSet/bp-codes"),
        ["bp1", "bp2", "o1", "o2", "sbp"]
    );
    assert_eq!(
        ids(
            repo,
            "Observation",
            "code:in=http://example.org/fhir/ValueSet/jlac"
        ),
        ["o1", "o2"]
    );
    assert_eq!(
        ids(repo, "Observation", "code:not-in=ValueSet/bp-codes"),
        ["o3"]
    );
    let unknown = repo
        .search(
            &plan("Observation", "code:in=ValueSet/unknown"),
            &Visibility::Unrestricted,
        )
        .unwrap_err();
    assert_eq!(
        renkei_repository::status_of(&unknown).0,
        "400 Bad Request",
        "{unknown}"
    );
    let count = repo
        .search(
            &plan("Observation", "code:in=ValueSet/jlac&_summary=count"),
            &Visibility::Unrestricted,
        )
        .unwrap();
    assert_eq!(count.total, Some(2));
    // uri :below / :above
    assert_eq!(
        ids(repo, "ValueSet", "url:below=http://example.org/fhir"),
        ["bp-codes", "jlac"]
    );
    // Below by whole segments: `…/jl` is no parent of `…/jlac`.
    assert!(ids(
        repo,
        "ValueSet",
        "url:below=http://example.org/fhir/ValueSet/jl"
    )
    .is_empty());
    assert_eq!(
        ids(
            repo,
            "ValueSet",
            "url:below=http://example.org/fhir/ValueSet/jlac"
        ),
        ["jlac"]
    );
    assert_eq!(
        ids(
            repo,
            "ValueSet",
            "url:above=http://example.org/fhir/ValueSet/jlac/extra"
        ),
        ["jlac"]
    );
    assert_eq!(
        ids(
            repo,
            "ValueSet",
            "url=http://example.org/fhir/ValueSet/jlac"
        ),
        ["jlac"]
    );
    // _contained: false is the default; true/both are refused, not ignored
    assert!(try_plan("Observation", "_contained=false&code=8480-6").is_ok());
    for query in [
        "_contained=true",
        "_contained=both",
        "_containedType=contained",
    ] {
        let error = try_plan("Observation", query).unwrap_err().to_string();
        assert!(error.contains("not supported"), "{query}: {error}");
    }
    // last page: the query run backwards from the end, no next link
    let mut p = plan("Observation", "_sort=date&_count=2");
    let first = repo.search(&p, &Visibility::Unrestricted).unwrap();
    assert!(first.next.is_some());
    p.cursor = Some(Cursor::last(&p.sort));
    let last = repo.search(&p, &Visibility::Unrestricted).unwrap();
    assert!(last.next.is_none());
    assert!(last.previous.is_some());
    let all = ids(repo, "Observation", "_count=100");
    assert_eq!(last.matches.len(), 2);
    // date-less observations sort last
    assert!(last
        .matches
        .iter()
        .all(|r| ["bp1", "bp2", "sbp"].contains(&r.res_id.as_str())));
    assert_eq!(all.len(), 6);
    for id in ["bp1", "bp2", "sbp"] {
        repo.write(|tx| {
            renkei_repository::delete(tx, "Observation", id, None, &WriteContext::default())
        })
        .unwrap();
    }
    assert!(ids(repo, "Observation", "combo-code-value-quantity=8480-6$gt1").is_empty());
}

#[test]
fn search_on_sqlite() {
    run_cases(sqlite());
}

#[test]
fn search_on_postgres() {
    run_cases(postgres());
}

/// Walks every page of `Observation?{query}` by its `next` links, then back from the last
/// page by its `previous` links; returns the ids in each walk's order (the second reversed).
fn walk_both_ways(repo: &Repository, query: &str) -> (Vec<String>, Vec<String>) {
    let mut p = plan("Observation", query);
    let mut forward = Vec::new();
    // A wrong cursor can page forever: more pages than rows is a failure.
    let limit = 50;
    for pages in 0.. {
        assert!(pages < limit, "{query}: the next links do not end");
        let page = repo.search(&p, &Visibility::Unrestricted).unwrap();
        forward.extend(page.matches.iter().map(|r| r.res_id.clone()));
        match page.next {
            Some(cursor) => p.cursor = Some(Cursor::decode(&cursor.encode()).unwrap()),
            None => break,
        }
    }
    let mut backward = Vec::new();
    p.cursor = Some(Cursor::last(&p.sort));
    for pages in 0.. {
        assert!(pages < limit, "{query}: the previous links do not end");
        let page = repo.search(&p, &Visibility::Unrestricted).unwrap();
        backward.extend(page.matches.iter().rev().map(|r| r.res_id.clone()));
        match page.previous {
            Some(cursor) => p.cursor = Some(Cursor::decode(&cursor.encode()).unwrap()),
            None => break,
        }
    }
    backward.reverse();
    (forward, backward)
}

/// Keyset cursors on a number key resume after the exact value: values that share their first
/// 15 significant digits, and the stand-in of a missing value (the largest double), each page
/// continues where the last stopped, with no row repeated or lost.
fn float_keys_page_exactly(db: Db) {
    let repo = &db.repo;
    let values: [(&str, Option<f64>); 9] = [
        ("q-a", Some(0.300_000_000_000_000_04)),
        ("q-b", None),
        ("q-c", Some(0.3)),
        ("q-d", Some(123_456.789_012_345_67)),
        ("q-e", None),
        ("q-f", Some(1e-7)),
        ("q-g", Some(0.1)),
        ("q-h", None),
        ("q-i", Some(2.5)),
    ];
    for (id, value) in values {
        let mut obs = json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}});
        if let Some(v) = value {
            obs["valueQuantity"] = json!({"value": v, "unit": "mg/dL"});
        }
        put(repo, obs);
    }
    let ascending = [
        "q-f", "q-g", "q-c", "q-a", "q-i", "q-d", "q-b", "q-e", "q-h",
    ];
    for count in [1, 2, 4] {
        let (forward, backward) =
            walk_both_ways(repo, &format!("_sort=value-quantity&_count={count}"));
        assert_eq!(forward, ascending, "_count={count}");
        assert_eq!(backward, ascending, "_count={count}");
        // Descending: missing values still sort last, in rid order.
        let (forward, backward) =
            walk_both_ways(repo, &format!("_sort=-value-quantity&_count={count}"));
        let descending = [
            "q-d", "q-i", "q-a", "q-c", "q-g", "q-f", "q-b", "q-e", "q-h",
        ];
        assert_eq!(forward, descending, "-value-quantity, _count={count}");
        assert_eq!(backward, descending, "-value-quantity, _count={count}");
    }
    (db.cleanup)();
}

#[test]
fn float_keys_page_exactly_on_sqlite() {
    float_keys_page_exactly(common::sqlite("float-keys"));
}

#[test]
fn float_keys_page_exactly_on_postgres() {
    if common::backend_selected("postgres") {
        float_keys_page_exactly(common::postgres("float_keys"));
    }
}

/// The facility that writes the data of `large_searches` and reads it back under its consent
/// predicate (its own rows are visible; the predicate is still in every statement).
const FACILITY: &str = "Organization/hosp-large";

fn facility() -> Visibility {
    Visibility::Facility {
        organization: FACILITY.into(),
        practitioner: None,
        purpose: "TREAT".into(),
        now_ms: chrono::Utc::now().timestamp_millis(),
        break_glass: None,
        deny_holds_on_break_glass: true,
        implicit_permit: false,
    }
}

fn put_as_facility(repo: &Repository, resource: Value) {
    let res_type = resource["resourceType"].as_str().unwrap().to_string();
    let id = resource["id"].as_str().unwrap().to_string();
    let context = WriteContext {
        custodian: Some(FACILITY.into()),
        ..WriteContext::default()
    };
    repo.write(|tx| {
        renkei_repository::update(tx, &res_type, &id, resource.clone(), None, &context)
    })
    .unwrap_or_else(|e| panic!("{res_type}/{id}: {e}"));
}

/// The sorted ids a search finds, the same unrestricted and as the facility.
fn ids_both(repo: &Repository, res_type: &str, query: &str) -> Vec<String> {
    let plan = try_plan(res_type, query).unwrap_or_else(|e| panic!("{res_type}: {e}"));
    let found = |who: &Visibility| {
        let page = repo
            .search(&plan, who)
            .unwrap_or_else(|e| panic!("{res_type}?{}…: {e}", &query[..query.len().min(80)]));
        let mut ids: Vec<String> = page.matches.iter().map(|r| r.res_id.clone()).collect();
        ids.sort();
        ids
    };
    let unrestricted = found(&Visibility::Unrestricted);
    assert_eq!(
        unrestricted,
        found(&facility()),
        "{res_type}: as the facility"
    );
    unrestricted
}

/// `n` comma-separated alternatives: `matching` first, then made-up ones that match nothing.
fn list(matching: &[&str], n: usize, filler: impl Fn(usize) -> String) -> String {
    let mut all: Vec<String> = matching.iter().map(|m| m.to_string()).collect();
    all.extend((all.len()..n).map(filler));
    all.join(",")
}

fn too_costly(res_type: &str, query: &str) -> String {
    match try_plan(res_type, query) {
        Err(renkei_search::plan::SearchError::TooCostly(message)) => message,
        other => panic!("expected too-costly, got {other:?}"),
    }
}

fn value_set(id: &str, codes: impl Iterator<Item = String>, as_expansion: bool) -> Value {
    let concepts: Vec<Value> = codes.map(|c| json!({"code": c})).collect();
    if as_expansion {
        let contains: Vec<Value> = concepts
            .into_iter()
            .map(|mut c| {
                c["system"] = json!("urn:large:code");
                c
            })
            .collect();
        json!({"resourceType": "ValueSet", "id": id, "status": "active",
            "expansion": {"timestamp": "2026-01-01T00:00:00Z", "contains": contains}})
    } else {
        json!({"resourceType": "ValueSet", "id": id, "status": "active",
            "compose": {"include": [{"system": "urn:large:code", "concept": concepts}]}})
    }
}

/// Searches with hundreds of alternatives, ValueSets of thousands of codes, many parameters
/// and deep chains: the right answer, or 400 for what is beyond the limits (a hostile-input
/// sweep found each answering 500, SQLite: "Expression tree is too large").
fn large_searches(db: Db, sqlite: bool) {
    let repo = &db.repo;
    for (id, name, link) in [
        ("lp1", "Alpha", None),
        ("lp2", "Bravo", None),
        ("lp3", "Charlie", None),
        ("la", "Anchor", Some("lb")),
        ("lb", "Bridge", Some("lc")),
        ("lc", "Causeway", Some("ld")),
        ("ld", "Delta", Some("le")),
        ("le", "Echo", None),
    ] {
        let mut patient = json!({"resourceType": "Patient", "id": id,
            "name": [{"family": name}]});
        if let Some(other) = link {
            patient["link"] = json!([{"other": {"reference": format!("Patient/{other}")},
                "type": "seealso"}]);
        }
        put_as_facility(repo, patient);
    }
    for (id, patient, code, date, tag) in [
        ("lo1", "lp1", "c-1", "2021-03-04", "t-1"),
        ("lo2", "lp2", "c-2", "2022-05-06", "t-2"),
        ("lo3", "lp3", "c-3", "2019-01-01", "t-3"),
        ("lo4", "la", "c-4", "2018-01-01", "t-4"),
    ] {
        put_as_facility(
            repo,
            json!({"resourceType": "Observation", "id": id, "status": "final",
            "meta": {"tag": [{"system": "urn:large:tag", "code": tag}]},
            "code": {"coding": [{"system": "urn:large:code", "code": code}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": date}),
        );
    }
    let codes = |n: usize| list(&["urn:large:code|c-1", "c-2"], n, |i| format!("x-{i}"));
    // 600 alternatives of one parameter, of which two match: exactly those two.
    assert_eq!(
        ids_both(
            repo,
            "Patient",
            &format!(
                "name={}",
                list(&["alph", "bravo"], 600, |i| format!("zz{i}"))
            )
        ),
        ["lp1", "lp2"]
    );
    assert_eq!(
        ids_both(repo, "Observation", &format!("code={}", codes(600))),
        ["lo1", "lo2"]
    );
    assert_eq!(
        ids_both(
            repo,
            "Observation",
            &format!(
                "date={}",
                list(&["2021-03-04", "2022-05"], 600, |i| format!("{}", 1000 + i))
            )
        ),
        ["lo1", "lo2"]
    );
    assert_eq!(
        ids_both(
            repo,
            "Observation",
            &format!(
                "subject={}",
                list(&["Patient/lp1", "lp2"], 600, |i| format!("Patient/x{i}"))
            )
        ),
        ["lo1", "lo2"]
    );
    assert_eq!(
        ids_both(
            repo,
            "Observation",
            &format!(
                "_tag={}",
                list(&["urn:large:tag|t-1", "t-2"], 600, |i| format!("t-x{i}"))
            )
        ),
        ["lo1", "lo2"]
    );
    assert_eq!(
        ids_both(repo, "Observation", &format!("code:not={}", codes(600))),
        ["lo3", "lo4"]
    );
    assert_eq!(
        ids_both(
            repo,
            "Patient",
            &format!("_has:Observation:subject:code={}", codes(600))
        ),
        ["lp1", "lp2"]
    );
    // Up to 1000 values in all; more is refused.
    assert_eq!(
        ids_both(
            repo,
            "Observation",
            &format!(
                "code={}&_tag={}",
                codes(600),
                list(&["t-1"], 400, |i| format!("t-x{i}"))
            )
        ),
        ["lo1"]
    );
    let message = too_costly("Observation", &format!("code={}", codes(1001)));
    assert!(message.contains("at most 1000 values"), "{message}");
    // 32 parameters ANDed, under the consent predicate too; 33 are refused.
    let repeated = |n: usize| vec!["name=alph"; n].join("&");
    assert_eq!(ids_both(repo, "Patient", &repeated(32)), ["lp1"]);
    let message = too_costly("Patient", &repeated(33));
    assert!(
        message.contains("at most 32 search parameters"),
        "{message}"
    );
    // Chains of four levels; five are refused.
    let chain =
        |levels: usize| format!("subject:Patient{}.name", ".link:Patient".repeat(levels - 1));
    assert_eq!(
        ids_both(repo, "Observation", &format!("{}=delta", chain(4))),
        ["lo4"]
    );
    assert!(ids_both(repo, "Observation", &format!("{}=echo", chain(4))).is_empty());
    let message = too_costly("Observation", &format!("{}=echo", chain(5)));
    assert!(message.contains("at most 4 levels"), "{message}");
    // ValueSets of 1000 and 5000 codes (compose and expansion): `:in` finds the stored codes,
    // `:not-in` the others.
    for (id, n, as_expansion) in [("vs1000", 1000, false), ("vs5000", 5000, true)] {
        let codes = (0..n).map(|i| match i {
            10 => "c-1".to_string(),
            700 => "c-2".to_string(),
            _ => format!("drug-{i:06}"),
        });
        put_as_facility(repo, value_set(id, codes, as_expansion));
        assert_eq!(
            ids_both(repo, "Observation", &format!("code:in=ValueSet/{id}")),
            ["lo1", "lo2"],
            "{id}"
        );
        assert_eq!(
            ids_both(repo, "Observation", &format!("code:not-in=ValueSet/{id}")),
            ["lo3", "lo4"],
            "{id}"
        );
        assert_eq!(
            ids_both(
                repo,
                "Patient",
                &format!("_has:Observation:subject:code:in=ValueSet/{id}")
            ),
            ["lp1", "lp2"],
            "{id}"
        );
    }
    // What still exceeds a database's limits answers 400 (too-costly), not 500: 40,000 ids are
    // more bound values than either backend takes, and on SQLite 600 parameters (past the
    // parse limit, built directly) nest deeper than it parses. (PostgreSQL would plan those
    // for minutes: the parse limit is what keeps them out.)
    let mut wide = try_plan("Patient", "_id=x").unwrap();
    wide.filters = vec![renkei_search::plan::Filter::Id {
        ids: (0..40_000).map(|i| format!("id{i}")).collect(),
        not: false,
    }];
    let mut plans = vec![wide];
    if sqlite {
        let mut deep = try_plan("Patient", "name=alph").unwrap();
        deep.filters = vec![deep.filters[0].clone(); 600];
        plans.push(deep);
    }
    for plan in plans {
        let e = repo.search(&plan, &facility()).unwrap_err();
        assert!(
            matches!(
                e,
                renkei_repository::RepoError::Store(renkei_store::StoreError::TooComplex { .. })
            ),
            "{e}"
        );
        assert_eq!(
            renkei_repository::status_of(&e),
            ("400 Bad Request", "too-costly")
        );
    }
    (db.cleanup)();
}

#[test]
fn large_searches_on_sqlite() {
    if common::backend_selected("sqlite") {
        large_searches(sqlite(), true);
    }
}

#[test]
fn large_searches_on_postgres() {
    if common::backend_selected("postgres") {
        large_searches(postgres(), false);
    }
}

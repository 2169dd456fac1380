//! Search against a real database: the same cases on a SQLite file and on a fresh PostgreSQL
//! database (admin URL from RENKEI_TEST_PG_URL, default postgres://postgres@127.0.0.1:5432/test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use renkei_repository::{Criteria, Repository, RepositoryOptions, WriteContext};
use renkei_search::plan::{parse, Cursor, ParseOptions, SearchPlan};
use renkei_store::{DatabaseUrl, Store, StoreOptions};
use serde_json::{json, Value};

struct Db {
    repo: Repository,
    cleanup: Box<dyn FnOnce()>,
}

fn sqlite() -> Db {
    let dir = std::env::temp_dir().join(format!("renkei-search-{}", uuid::Uuid::new_v4()));
    let url = DatabaseUrl::Sqlite(dir.join("test.db"));
    let store = Store::open(&url, &StoreOptions::default()).unwrap();
    Db {
        repo: Repository::new(store, RepositoryOptions::default()),
        cleanup: Box::new(move || {
            let _ = std::fs::remove_dir_all(dir);
        }),
    }
}

fn postgres() -> Db {
    let admin = std::env::var("RENKEI_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("renkei_search_{}", uuid::Uuid::new_v4().simple());
    renkei_store::admin::create_postgres_database(&admin, &name).unwrap();
    let (prefix, _) = admin.rsplit_once('/').unwrap();
    let url = DatabaseUrl::Postgres(format!("{prefix}/{name}"));
    let store = Store::open(
        &url,
        &StoreOptions {
            max_connections: 2,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    Db {
        repo: Repository::new(store, RepositoryOptions::default()),
        cleanup: Box::new(move || {
            let _ = renkei_store::admin::drop_postgres_database(&admin, &name);
        }),
    }
}

fn put(repo: &Repository, resource: Value) {
    let res_type = resource["resourceType"].as_str().unwrap().to_string();
    let id = resource["id"].as_str().unwrap().to_string();
    repo.write(|tx| {
        renkei_repository::update(
            tx,
            &res_type,
            &id,
            resource.clone(),
            None,
            &WriteContext::default(),
        )
    })
    .unwrap();
}

fn plan(res_type: &str, query: &str) -> SearchPlan {
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (
                renkei_repository::percent_decode(k),
                renkei_repository::percent_decode(v),
            )
        })
        .collect();
    parse(&[res_type.to_string()], &params, &ParseOptions::default()).unwrap()
}

fn ids(repo: &Repository, res_type: &str, query: &str) -> Vec<String> {
    let page = repo.search(&plan(res_type, query)).unwrap();
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
    let first = repo.search(&p).unwrap();
    assert_eq!(first.total, Some(3));
    assert_eq!(first.matches[0].res_id, "o2");
    let mut seen = vec![first.matches[0].res_id.clone()];
    let mut next = first.next.clone();
    let mut last_page = first;
    while let Some(cursor) = next {
        p.cursor = Some(Cursor::decode(&cursor.encode()).unwrap());
        last_page = repo.search(&p).unwrap();
        seen.extend(last_page.matches.iter().map(|r| r.res_id.clone()));
        next = last_page.next.clone();
    }
    assert_eq!(seen, ["o2", "o1", "o3"]);
    p.cursor = last_page.previous.clone();
    let back = repo.search(&p).unwrap();
    assert_eq!(back.matches[0].res_id, "o1");

    // _include / _revinclude
    let page = repo
        .search(&plan(
            "Observation",
            "code=2339-0&_include=Observation:patient",
        ))
        .unwrap();
    assert_eq!(
        page.included
            .iter()
            .map(|r| r.res_id.as_str())
            .collect::<Vec<_>>(),
        ["p2"]
    );
    let page = repo
        .search(&plan(
            "Patient",
            "_id=p1&_revinclude=Observation:subject&_include=Patient:general-practitioner",
        ))
        .unwrap();
    let mut inc: Vec<&str> = page.included.iter().map(|r| r.res_id.as_str()).collect();
    inc.sort();
    assert_eq!(inc, ["dr1", "o1", "o2"]);
    let count = repo.search(&plan("Observation", "_summary=count")).unwrap();
    assert_eq!(count.total, Some(3));
    assert!(count.matches.is_empty());

    // conditional interactions run on the engine; a delete removes index rows
    let criteria = Criteria::parse("Patient", "family=ﾔﾏﾀﾞ").unwrap();
    let found = repo.read_tx(|tx| criteria.find(tx, 5)).unwrap();
    assert_eq!(found.len(), 1);
    repo.write(|tx| renkei_repository::delete(tx, "Observation", "o3", None))
        .unwrap();
    assert!(ids(repo, "Observation", "code=2339-0").is_empty());
    assert!(ids(repo, "Patient", "_has:Observation:patient:code=2339-0").is_empty());
    // reindex rebuilds rows
    let n = repo.reindex(2, |_| {}).unwrap();
    assert_eq!(n, 5);
    assert_eq!(
        ids(repo, "Observation", "code=3D010000001926101"),
        ["o1", "o2"]
    );
    (db.cleanup)();
}

#[test]
fn search_on_sqlite() {
    run_cases(sqlite());
}

#[test]
fn search_on_postgres() {
    run_cases(postgres());
}

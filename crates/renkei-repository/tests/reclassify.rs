//! Which patient a record is about is stored with it (consent is decided on it); records
//! stored under older rules are reclassified by `reindex`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use renkei_repository::Repository;
use serde_json::json;

mod common;

use common::put;

fn patient_of(repo: &Repository, res_type: &str, id: &str) -> Option<String> {
    repo.read_tx(|tx| Ok::<_, renkei_repository::RepoError>(tx.current(res_type, id)?))
        .unwrap()
        .expect("stored")
        .patient_id
}

fn check(repo: &Repository) {
    // The Task names p1 by this server's own base.
    assert!(renkei_repository::set_local_bases(&[
        "http://gateway.example/fhir".to_string()
    ]));
    put(repo, json!({"resourceType": "Patient", "id": "p1"}));
    put(
        repo,
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}}),
    );
    let records = [
        json!({"resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
               "for": {"reference": "http://gateway.example/fhir/Patient/p1"}}),
        json!({"resourceType": "Binary", "id": "b1", "contentType": "text/plain",
               "securityContext": {"reference": "Observation/o1"}}),
        json!({"resourceType": "Provenance", "id": "v1", "recorded": "2025-01-01T00:00:00Z",
               "target": [{"reference": "Organization/none"}, {"reference": "Observation/o1"}],
               "agent": [{"who": {"reference": "Organization/a"}}]}),
    ];
    for record in &records {
        put(repo, record.clone());
    }
    put(
        repo,
        json!({"resourceType": "Organization", "id": "org", "name": "Directory"}),
    );
    let classified = |repo: &Repository| {
        records
            .iter()
            .map(|r| {
                patient_of(
                    repo,
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let about_p1 = vec![Some("p1".to_string()); records.len()];
    assert_eq!(classified(repo), about_p1);
    assert_eq!(patient_of(repo, "Organization", "org"), None);

    // As an older version stored them: directory data.
    repo.write(|tx| {
        for record in &records {
            let row = tx
                .current(
                    record["resourceType"].as_str().unwrap(),
                    record["id"].as_str().unwrap(),
                )?
                .unwrap();
            tx.set_patient_id(row.rid, None)?;
        }
        Ok::<_, renkei_repository::RepoError>(())
    })
    .unwrap();
    assert_eq!(classified(repo), vec![None; records.len()]);
    repo.reindex(2, |_| {}).unwrap();
    assert_eq!(classified(repo), about_p1);
    assert_eq!(patient_of(repo, "Organization", "org"), None);
}

#[test]
fn records_are_classified_on_write_and_by_reindex_on_sqlite() {
    if !common::backend_selected("sqlite") {
        return;
    }
    let db = common::sqlite("reclassify");
    check(&db.repo);
    (db.cleanup)();
}

#[test]
fn records_are_classified_on_write_and_by_reindex_on_postgres() {
    if !common::backend_selected("postgres") {
        return;
    }
    let db = common::postgres("reclassify");
    check(&db.repo);
    (db.cleanup)();
}

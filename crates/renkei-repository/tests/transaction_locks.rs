//! Transaction Bundles that change the same resources in different orders queue on their row
//! locks instead of deadlocking: each takes the locks of what it changes in one order before
//! its entries run (`Tx::lock_current_rows`), while the entries still run in Bundle order.
//! The repository here never reruns a write, so one deadlock would fail the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{backend_selected, Db};
use renkei_repository::{no_commit_hook, Repository, RepositoryOptions, WriteContext};
use renkei_store::Backend;
use serde_json::{json, Value};
use std::sync::Barrier;

const THREADS: usize = 6;
const TRANSACTIONS_PER_THREAD: usize = 12;
const IDS: [&str; 3] = ["lock-a", "lock-b", "lock-c"];

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
}

/// PUTs of the first two resources and a FHIRPath PATCH of the last, in an order that differs
/// from one transaction to the next (rotated, and reversed every other time).
fn bundle(thread: usize, round: usize) -> Value {
    let family = format!("t{thread}-r{round}");
    let mut entries: Vec<Value> = IDS
        .iter()
        .map(|id| match *id {
            "lock-c" => json!({
                "resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.name.family"},
                    {"name": "value", "valueString": family}]}]},
                "request": {"method": "PATCH", "url": format!("Patient/{id}")}}),
            _ => json!({"resource": patient(id, &family),
                        "request": {"method": "PUT", "url": format!("Patient/{id}")}}),
        })
        .collect();
    entries.rotate_left((thread + round) % IDS.len());
    if (thread + round) % 2 == 1 {
        entries.reverse();
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn check(db: Db) {
    let store = db.repo.store().clone();
    for id in IDS {
        common::put(&db.repo, patient(id, "first"));
    }

    // The rows that exist are locked and counted; a missing one is skipped.
    let locked = store
        .write(|tx| {
            tx.lock_current_rows(&[
                ("Patient", "lock-b"),
                ("Patient", "lock-a"),
                ("Patient", "none"),
            ])
        })
        .unwrap();
    let expected = match store.backend() {
        Backend::Postgres => 2,
        // SQLite's write transaction already excludes other writers: nothing to lock.
        Backend::Sqlite => 0,
    };
    assert_eq!(locked, expected);

    let repo = Repository::new(
        store,
        RepositoryOptions {
            write_retries: 0,
            ..RepositoryOptions::default()
        },
    );
    let start = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (repo, start) = (&repo, &start);
            scope.spawn(move || {
                start.wait();
                for round in 0..TRANSACTIONS_PER_THREAD {
                    let response = repo
                        .process_bundle(
                            &bundle(thread, round),
                            &WriteContext::default(),
                            false,
                            &no_commit_hook,
                        )
                        .unwrap_or_else(|e| panic!("thread {thread}, round {round}: {e}"));
                    for entry in response["entry"].as_array().unwrap() {
                        assert_eq!(entry["response"]["status"], "200 OK", "{response}");
                    }
                }
            });
        }
    });

    // Every transaction changed every resource once, after its first version.
    for id in IDS {
        let stored = repo.read("Patient", id).unwrap();
        assert_eq!(
            stored.version,
            1 + i64::try_from(THREADS * TRANSACTIONS_PER_THREAD).unwrap(),
            "Patient/{id}"
        );
    }
    (db.cleanup)();
}

#[test]
fn opposite_order_transactions_queue_on_sqlite() {
    if backend_selected("sqlite") {
        check(common::sqlite("txlock"));
    }
}

#[test]
fn opposite_order_transactions_queue_on_postgres() {
    if backend_selected("postgres") {
        check(common::postgres_with_connections("txlock", THREADS as u32));
    }
}

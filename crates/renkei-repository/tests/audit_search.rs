//! Audit searches by reference ("who viewed my record", `entity=`) start from the reference
//! index: a patient with a handful of events in a long trail is answered without walking the
//! trail, in seq order, with paging.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use renkei_store::{AuditQuery, NewAuditEvent, Store};

mod common;

/// Most data is Organization/a's; Organization/small holds what every 300th event touched.
fn custodian(n: u32) -> &'static str {
    if n.is_multiple_of(300) {
        "Organization/small"
    } else {
        "Organization/a"
    }
}

/// 1,200 events; every 200th (n = 199, 399, …, 1199) is about `Patient/rare`.
fn fill(store: &Store) -> Vec<i64> {
    let events: Vec<NewAuditEvent> = (0..1200)
        .map(|n| {
            let patient = if n % 200 == 199 {
                "Patient/rare".to_string()
            } else {
                format!("Patient/p{}", n % 97)
            };
            common::audit_event(n, &patient, custodian(n))
        })
        .collect();
    let start = store.read(|tx| tx.audit_head()).unwrap().seq;
    store
        .write(|tx| tx.append_audit(&events, &common::test_hash))
        .unwrap();
    (0..1200)
        .filter(|n| n % 200 == 199)
        .map(|n| start + 1 + n)
        .collect()
}

fn seqs(store: &Store, query: &AuditQuery) -> Vec<i64> {
    store
        .read(|tx| tx.audit_search(query))
        .unwrap()
        .into_iter()
        .map(|row| row.seq)
        .collect()
}

fn rare_patient() -> AuditQuery {
    AuditQuery {
        refs: vec![("patient".into(), vec!["Patient/rare".into()])],
        descending: true,
        limit: 4,
        ..AuditQuery::default()
    }
}

fn check(store: &Store) {
    let rare = fill(store);
    let newest_first: Vec<i64> = rare.iter().rev().copied().collect();

    let first_page = seqs(store, &rare_patient());
    assert_eq!(first_page, newest_first[..4]);
    let second_page = seqs(
        store,
        &AuditQuery {
            before_seq: first_page.last().copied(),
            ..rare_patient()
        },
    );
    assert_eq!(second_page, newest_first[4..]);

    let oldest_first = seqs(
        store,
        &AuditQuery {
            descending: false,
            limit: 10,
            ..rare_patient()
        },
    );
    assert_eq!(oldest_first, rare);

    // A second reference and the event's own columns narrow the driving one.
    let one_entity = AuditQuery {
        refs: vec![
            ("patient".into(), vec!["Patient/rare".into()]),
            ("entity".into(), vec!["Observation/o399".into()]),
        ],
        ..rare_patient()
    };
    assert_eq!(seqs(store, &one_entity), vec![rare[1]]);
    let in_range = AuditQuery {
        from_ms: Some(300),
        to_ms: Some(800),
        custodian_any_of: Some(vec!["Organization/a".into()]),
        ..rare_patient()
    };
    assert_eq!(seqs(store, &in_range), vec![rare[3], rare[2], rare[1]]);
    let other_custodian = AuditQuery {
        custodian_any_of: Some(vec!["Organization/b".into()]),
        ..rare_patient()
    };
    assert!(seqs(store, &other_custodian).is_empty());

    // A facility's view: the events that touched its data, newest first, paged.
    let start = rare[0] - 199;
    let small: Vec<i64> = [900, 600, 300, 0].iter().map(|n| start + n).collect();
    let facility = small_facility();
    assert_eq!(seqs(store, &facility), small[..3]);
    let next = AuditQuery {
        before_seq: Some(small[2]),
        ..small_facility()
    };
    assert_eq!(seqs(store, &next), small[3..]);
    let with_patient = AuditQuery {
        refs: vec![("patient".into(), vec!["Patient/p0".into()])],
        ..small_facility()
    };
    // Patient/p0 is in every 97th event; of Organization/small's events only n = 0 is about them.
    assert_eq!(seqs(store, &with_patient), vec![start]);

    // Alternatives (a search's comma): any one of the references, any one of the values.
    let either_entity = AuditQuery {
        refs: vec![(
            "entity".into(),
            vec!["Observation/o399".into(), "Observation/o5".into()],
        )],
        descending: true,
        limit: 4,
        ..AuditQuery::default()
    };
    assert_eq!(seqs(store, &either_entity), vec![rare[1], start + 5]);
    let rare_or_nobody = AuditQuery {
        refs: vec![(
            "patient".into(),
            vec!["Patient/nobody".into(), "Patient/rare".into()],
        )],
        ..rare_patient()
    };
    assert_eq!(seqs(store, &rare_or_nobody), newest_first[..4]);
    let outcomes = |outcome: Vec<String>| AuditQuery {
        outcome,
        ..rare_patient()
    };
    assert_eq!(
        seqs(store, &outcomes(vec!["4".into(), "0".into()])),
        newest_first[..4]
    );
    assert!(seqs(store, &outcomes(vec!["4".into(), "8".into()])).is_empty());
    let agents = |agent: Vec<String>| AuditQuery {
        agent,
        ..rare_patient()
    };
    assert_eq!(
        seqs(store, &agents(vec!["other".into(), "client".into()])),
        newest_first[..4]
    );
    // Events of requests without a client are found as the agent `anonymous`; these have one.
    assert!(seqs(store, &agents(vec!["anonymous".into()])).is_empty());

    // An event naming both of the listed patients is found once, and counted once.
    let mut twice = common::audit_event(5000, "Patient/twice-a", "Organization/twice");
    twice
        .refs
        .push(("patient".into(), "Patient/twice-b".into()));
    store
        .write(|tx| tx.append_audit(&[twice], &common::test_hash))
        .unwrap();
    let both = AuditQuery {
        refs: vec![(
            "patient".into(),
            vec!["Patient/twice-a".into(), "Patient/twice-b".into()],
        )],
        descending: true,
        limit: 10,
        ..AuditQuery::default()
    };
    assert_eq!(seqs(store, &both).len(), 1);
    assert_eq!(store.read(|tx| tx.audit_count(&both)).unwrap(), 1);
}

fn small_facility() -> AuditQuery {
    AuditQuery {
        custodian_any_of: Some(vec!["Organization/small".into()]),
        descending: true,
        limit: 3,
        ..AuditQuery::default()
    }
}

#[test]
fn audit_search_by_reference_on_sqlite() {
    if !common::backend_selected("sqlite") {
        return;
    }
    let db = common::sqlite("auditsearch");
    let store = db.repo.store().clone();
    check(&store);
    // The plan starts at the reference index and reads events by their key: no scan of the
    // trail, whatever the planner knows about how rare the patient is.
    for query in [rare_patient(), small_facility()] {
        let plan = store
            .read(|tx| tx.explain_audit_search(&query))
            .unwrap()
            .plan;
        assert!(
            plan.first()
                .is_some_and(|line| line.starts_with("SEARCH d")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|line| line.starts_with("SCAN")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|line| line.contains("TEMP B-TREE")),
            "the index order is the answer's order: {plan:?}"
        );
    }
    (db.cleanup)();
}

#[test]
fn audit_search_by_reference_on_postgres() {
    if !common::backend_selected("postgres") {
        return;
    }
    let db = common::postgres("auditsearch");
    let store = db.repo.store().clone();
    check(&store);
    (db.cleanup)();
}

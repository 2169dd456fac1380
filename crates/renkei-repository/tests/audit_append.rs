//! The audit trail's append after a known head (PostgreSQL's one-statement group commit):
//! it appends only while the chain still ends where the writer saw it, and the chain stays
//! linear when ordinary transactional appends run in between.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use renkei_store::{AuditHead, NewAuditEvent, Store, WriterSession};

mod common;

fn event(n: u32) -> NewAuditEvent {
    common::audit_event(n, "Patient/p", "Organization/a")
}

fn head(store: &Store) -> AuditHead {
    store.read(|tx| tx.audit_head()).unwrap()
}

fn append_after(
    session: &mut WriterSession,
    known: &AuditHead,
    events: &[NewAuditEvent],
) -> Option<AuditHead> {
    session
        .autocommit(|tx| tx.append_audit_after(known, events, &common::test_hash))
        .unwrap()
}

#[test]
fn append_after_known_head_postgres() {
    if !common::backend_selected("postgres") {
        return;
    }
    let db = common::postgres("auditappend");
    let store = db.repo.store().clone();
    let mut session = store.writer_session();

    let start = head(&store);
    let first = append_after(&mut session, &start, &[event(1), event(2)]).expect("appended");
    assert_eq!(first.seq, start.seq + 2);
    assert_eq!(head(&store), first, "the returned head is the stored one");

    // Another writer appends (a write's own AuditEvent, in its transaction).
    store
        .write(|tx| tx.append_audit(&[event(3)], &common::test_hash))
        .unwrap();
    let moved = head(&store);
    assert_eq!(moved.seq, first.seq + 1);

    // The stale head loses: nothing of the group is written.
    let stale = [event(4)];
    assert_eq!(append_after(&mut session, &first, &stale), None);
    assert_eq!(head(&store), moved);
    let present = store
        .read(|tx| tx.audit_events_present(&[stale[0].event_id.as_str()]))
        .unwrap();
    assert!(present.is_empty(), "a lost race wrote its events");

    // With the current head it appends; the chain is linear from the first record on.
    let last = append_after(&mut session, &moved, &stale).expect("appended");
    assert_eq!(last.seq, moved.seq + 1);
    let rows = store.read(|tx| tx.audit_chain(start.seq, 100)).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (start.seq + 1..=last.seq).collect::<Vec<_>>()
    );
    let mut prev = start.hash.clone();
    for row in &rows {
        assert_eq!(
            row.prev_hash, prev,
            "record {} links to its predecessor",
            row.seq
        );
        assert_eq!(
            row.hash,
            common::test_hash(row.seq, row.recorded, &row.prev_hash, &row.body)
        );
        prev = row.hash.clone();
    }
    assert_eq!(prev, last.hash);
    drop(session);
    (db.cleanup)();
}

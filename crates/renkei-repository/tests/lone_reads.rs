//! Reads that need one statement run outside a transaction, and work that needs more runs
//! again, whole, inside one (`Store::read_lone`, `Repository::read_tx_maybe_lone`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{backend_selected, Db};
use diesel::sql_types::Text;
use diesel::QueryableByName;
use renkei_repository::RepoError;
use renkei_store::{Backend, Sql, Tx};
use std::cell::Cell;

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

/// The isolation level the statement runs at: `read committed` alone (PostgreSQL's default
/// outside a transaction), `repeatable read` in the read transaction.
fn isolation(tx: &mut Tx<'_>) -> Result<String, RepoError> {
    let sql = match tx.backend() {
        Backend::Postgres => "SELECT current_setting('transaction_isolation') AS value",
        Backend::Sqlite => "SELECT 'serializable' AS value",
    };
    let rows = tx.load::<Setting>(&Sql::new(sql))?;
    Ok(rows.into_iter().next().map(|r| r.value).unwrap_or_default())
}

fn check(db: Db) {
    let repo = &db.repo;
    let postgres = repo.store().backend() == Backend::Postgres;

    // One statement: run once, and on PostgreSQL outside any transaction.
    let runs = Cell::new(0);
    let alone = repo
        .read_tx_maybe_lone(true, |tx| {
            runs.set(runs.get() + 1);
            isolation(tx)
        })
        .unwrap();
    assert_eq!(runs.get(), 1);
    let expected = if postgres {
        "read committed"
    } else {
        "serializable"
    };
    assert_eq!(alone, expected);

    // Two statements: on PostgreSQL the first attempt stops at its second statement and the
    // whole work runs again in the read transaction, where both statements run.
    let runs = Cell::new(0);
    let both = repo
        .read_tx_maybe_lone(true, |tx| {
            runs.set(runs.get() + 1);
            Ok((isolation(tx)?, isolation(tx)?))
        })
        .unwrap();
    if postgres {
        assert_eq!(runs.get(), 2);
        assert_eq!(both, ("repeatable read".into(), "repeatable read".into()));
    } else {
        assert_eq!(runs.get(), 1);
        assert_eq!(both, (expected.into(), expected.into()));
    }

    // Work that swallows the refusal of its second statement still runs again: what it
    // answered without that statement is not what it would have answered.
    let runs = Cell::new(0);
    let answer = repo
        .read_tx_maybe_lone(true, |tx| {
            runs.set(runs.get() + 1);
            let first = isolation(tx)?;
            Ok(isolation(tx).unwrap_or_else(|_| format!("{first}, then nothing")))
        })
        .unwrap();
    assert_ne!(answer, "read committed, then nothing");
    assert_eq!(runs.get(), if postgres { 2 } else { 1 });

    // A failing statement: the work runs again in a transaction and fails there too; the
    // connection stays usable.
    let runs = Cell::new(0);
    let failed = repo.read_tx_maybe_lone(true, |tx| {
        runs.set(runs.get() + 1);
        Ok(tx.load::<Setting>(&Sql::new("SELECT value FROM no_such_table"))?)
    });
    assert!(failed.is_err());
    assert_eq!(runs.get(), if postgres { 2 } else { 1 });
    for _ in 0..3 {
        assert_eq!(repo.read_tx_maybe_lone(true, isolation).unwrap(), expected);
    }
    (db.cleanup)();
}

#[test]
fn lone_reads_on_sqlite() {
    if backend_selected("sqlite") {
        check(common::sqlite("lone"));
    }
}

#[test]
fn lone_reads_on_postgres() {
    if backend_selected("postgres") {
        check(common::postgres("lone"));
    }
}

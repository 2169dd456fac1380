//! Databases for the repository's integration tests: a SQLite file or a fresh PostgreSQL
//! database (admin URL from RENKEI_TEST_PG_URL, default postgres://postgres@127.0.0.1:5432/test),
//! removed again by `cleanup`.

#![allow(clippy::unwrap_used, dead_code)]

use renkei_repository::{Repository, RepositoryOptions, WriteContext};
use renkei_search::plan::{parse, ParseOptions, SearchPlan};
use renkei_store::{DatabaseUrl, NewAuditEvent, Store, StoreOptions};
use serde_json::Value;

pub struct Db {
    pub repo: Repository,
    pub cleanup: Box<dyn FnOnce()>,
}

/// Whether RENKEI_TEST_BACKENDS (comma-separated; all when unset) names `name`.
pub fn backend_selected(name: &str) -> bool {
    match std::env::var("RENKEI_TEST_BACKENDS") {
        Ok(list) => list.split(',').any(|b| b.trim() == name),
        Err(_) => true,
    }
}

/// A repository on a new SQLite file; `label` names the temporary directory.
pub fn sqlite(label: &str) -> Db {
    let dir = std::env::temp_dir().join(format!("renkei-{label}-{}", uuid::Uuid::new_v4()));
    let url = DatabaseUrl::Sqlite(dir.join("test.db"));
    let store = Store::open(&url, &StoreOptions::default()).unwrap();
    Db {
        repo: Repository::new(store, RepositoryOptions::default()),
        cleanup: Box::new(move || {
            let _ = std::fs::remove_dir_all(dir);
        }),
    }
}

/// A repository on a new PostgreSQL database; `label` prefixes its name.
pub fn postgres(label: &str) -> Db {
    postgres_with_connections(label, 2)
}

/// [`postgres`] with a pool of `max_connections` (tests of concurrent writers).
pub fn postgres_with_connections(label: &str, max_connections: u32) -> Db {
    let admin = std::env::var("RENKEI_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("renkei_{label}_{}", uuid::Uuid::new_v4().simple());
    renkei_store::admin::create_postgres_database(&admin, &name).unwrap();
    let (prefix, _) = admin.rsplit_once('/').unwrap();
    let url = DatabaseUrl::Postgres(format!("{prefix}/{name}"));
    let store = Store::open(
        &url,
        &StoreOptions {
            max_connections,
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

/// The search plan of `Type?query` (percent-decoded pairs, default options).
pub fn plan(res_type: &str, query: &str) -> SearchPlan {
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
    parse(&[res_type.to_string()], &params, &ParseOptions::default())
        .unwrap_or_else(|e| panic!("{res_type}?{query}: {e}"))
}

/// A record hash for trail tests: any deterministic function of the parts checks linkage.
pub fn test_hash(seq: i64, recorded: i64, prev: &str, body: &str) -> String {
    format!("{seq}:{recorded}:{}:{}", prev.len(), body.len())
}

/// A read AuditEvent row number `n` about `patient`, touching `Observation/o{n}` of `custodian`.
pub fn audit_event(n: u32, patient: &str, custodian: &str) -> NewAuditEvent {
    NewAuditEvent {
        event_id: format!("ev-{n}-{}", uuid::Uuid::new_v4()),
        recorded: i64::from(n),
        request_id: format!("req-{n}"),
        type_code: "rest".into(),
        subtype: "read".into(),
        action: "R".into(),
        outcome: "0".into(),
        agent_client: Some("client".into()),
        agent_org: Some("Organization/a".into()),
        agent_user: None,
        purpose: None,
        body: format!("{{\"n\":{n}}}"),
        refs: vec![
            ("patient".into(), patient.to_string()),
            ("entity".into(), format!("Observation/o{n}")),
            ("custodian".into(), custodian.to_string()),
        ],
    }
}

/// Stores `resource` (with its id) as internal work would: no facility, no consent check.
pub fn put(repo: &Repository, resource: Value) {
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

/// Two `#[test]`s running `$case(Db)` on a SQLite file and on a fresh PostgreSQL database
/// named after `$db`, each when its backend is selected.
#[macro_export]
macro_rules! on_both_backends {
    ($sqlite:ident, $postgres:ident, $case:ident, $db:literal) => {
        #[test]
        fn $sqlite() {
            if common::backend_selected("sqlite") {
                $case(common::sqlite($db));
            }
        }

        #[test]
        fn $postgres() {
            if common::backend_selected("postgres") {
                $case(common::postgres($db));
            }
        }
    };
}

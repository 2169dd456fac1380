//! Crash safety (SIGKILL mid-transaction) and CLI failure modes.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const N: usize = 500;

fn big_transaction(prefix: &str) -> Value {
    let entries: Vec<Value> = (0..N)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            json!({
                "resource": {"resourceType": "Observation", "id": id, "status": "final",
                             "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": "Body weight"},
                             "valueQuantity": {"value": 60 + (i % 40), "unit": "kg"}},
                "request": {"method": "PUT", "url": format!("Observation/{id}")}
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn stored_with_prefix(s: &Server, prefix: &str) -> usize {
    let (all, _) = s.all_pages("Observation/_history?_count=1000");
    all.iter()
        .filter(|e| {
            e["resource"]["id"]
                .as_str()
                .is_some_and(|id| id.starts_with(&format!("{prefix}-")))
        })
        .count()
}

#[test]
fn transaction_survives_sigkill_all_or_nothing() {
    for_each_backend_raw(|backend| {
        let mut server = Server::start(backend);
        // Calibrate: how long does such a transaction take here?
        let started = Instant::now();
        let r = server.post("", &big_transaction("calib")).expect(200);
        assert_eq!(entries(&r.json()).len(), N);
        let duration = started.elapsed();
        assert_eq!(stored_with_prefix(&server, "calib"), N);
        let mut outcomes = Vec::new();
        for round in 0..3 {
            let prefix = format!("r{round}");
            let bundle = serde_json::to_vec(&big_transaction(&prefix)).unwrap();
            let url = server.url("");
            let client = server.client.clone();
            let sender = std::thread::spawn(move || {
                client
                    .post(url)
                    .header("Content-Type", FHIR_JSON)
                    .body(bundle)
                    .send()
                    .map(|r| r.status().as_u16())
            });
            // Kill somewhere inside the processing window (10%..90% of the calibrated time).
            let span = duration.as_millis().max(20) as u64;
            let delay = span / 10 + random_u64() % (span * 8 / 10).max(1);
            std::thread::sleep(Duration::from_millis(delay));
            server.kill9();
            let answered = sender.join().unwrap();
            server = server.restart();
            let count = stored_with_prefix(&server, &prefix);
            assert!(count == 0 || count == N, "round {round}: {count} of {N} Observations survived a SIGKILL after {delay} ms (answer before kill: {answered:?})");
            if let Ok(200) = answered {
                assert_eq!(count, N, "round {round}: acknowledged transaction lost");
            }
            // The entries' AuditEvents commit with the entries: a trail for each stored
            // entry, none for entries that were rolled back.
            let auditor = server.token_for(
                &format!("durability-auditor-{round}"),
                "Organization/network-office",
                "auditor",
                &[],
            );
            for index in [0, N - 1] {
                let trail = server.with_token(&auditor).read_json(&format!(
                    "AuditEvent?entity=Observation/{prefix}-{index}&outcome=0"
                ));
                let events = entries(&trail).len();
                assert_eq!(
                    events > 0,
                    count == N,
                    "round {round}: {events} successful AuditEvents for entry {index} while {count} of {N} entries are stored"
                );
            }
            outcomes.push(format!("kill after {delay}ms → {count}"));
            // The database is consistent and writable after the crash.
            assert_eq!(stored_with_prefix(&server, "calib"), N);
            server.put(&format!("Observation/{prefix}-0"), &json!({"resourceType": "Observation", "id": format!("{prefix}-0"), "status": "final", "code": {"text": "after"}})).expect(if count == 0 { 201 } else { 200 });
        }
        eprintln!(
            "[{backend}] durability (transaction ~{} ms): {}",
            duration.as_millis(),
            outcomes.join(", ")
        );
    });
}

/// `serve` with `database` (if any) and `env`, which must refuse to start with exit code 1 and
/// a message, not a panic; its standard error.
fn refused_start(database: Option<&str>, env: &[(&str, &str)]) -> String {
    let mut command = renkei_command();
    command.args(["serve", "--listen", "127.0.0.1:0"]);
    if let Some(database) = database {
        command.args(["--database", database]);
    }
    let out = command.envs(env.iter().copied()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{database:?} {env:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn cli_rejects_unknown_database_scheme() {
    let stderr = refused_start(Some("mysql://x"), &[]);
    assert!(
        stderr.contains("mysql"),
        "the message should name the scheme: {stderr}"
    );
    // Same through the environment variable.
    assert!(refused_start(None, &[("RENKEI_DATABASE_URL", "mysql://x")]).contains("mysql"));
    // A bad numeric setting is reported, not ignored; zero workers or connections too (it
    // panicked, exit 101).
    for (variable, value) in [
        ("RENKEI_MAX_BODY_BYTES", "lots"),
        ("RENKEI_WORKERS", "0"),
        ("RENKEI_MAX_CONNECTIONS", "0"),
        // A review found one connection starting and answering nothing, and a zero body
        // limit refusing every write, the token request too.
        ("RENKEI_MAX_CONNECTIONS", "1"),
        ("RENKEI_MAX_BODY_BYTES", "0"),
    ] {
        let stderr = refused_start(Some("sqlite::memory:"), &[(variable, value)]);
        assert!(stderr.contains(variable), "{stderr}");
    }
    // A file that is no database: refused with SQLite's reason at once (the pool retried it
    // for ten seconds, logging every attempt).
    let not_a_database =
        std::env::temp_dir().join(format!("renkei-not-a-db-{}", uuid::Uuid::new_v4()));
    std::fs::write(&not_a_database, "hello\n").unwrap();
    let stderr = refused_start(Some(&format!("sqlite:{}", not_a_database.display())), &[]);
    let _ = std::fs::remove_file(&not_a_database);
    assert!(stderr.contains("not a database"), "{stderr}");
    assert!(!stderr.contains("r2d2"), "{stderr}");
    // --version works.
    let out = renkei_command().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("renkei "));
}

/// A restart of PostgreSQL leaves every pooled connection dead (here: the database ends all
/// of the gateway's sessions). The pool does not test connections when it hands them out, so
/// the gateway must find a dead one itself and take another: requests right after it still
/// succeed, reads with their durable AuditEvent, writes committed.
#[test]
fn requests_survive_the_database_ending_its_sessions() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let server = Server::start(Backend::Postgres);
    let patient =
        server.create(&json!({"resourceType": "Patient", "name": [{"family": "Sessions"}]}));
    let read = format!("Patient/{}", patient["id"].as_str().expect("id"));
    // Concurrent requests leave several connections in the pool.
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                for _ in 0..5 {
                    server.get(&read).expect(200);
                }
            });
        }
    });
    for round in 0..2 {
        let name = server.pg_database_name().expect("a PostgreSQL database");
        renkei_store::admin::end_postgres_sessions(&pg_admin_url(), name)
            .expect("end the gateway's sessions");
        for _ in 0..3 {
            server.get(&read).expect(200);
            let found = server.get("Patient?family=Sessions").expect(200).json();
            assert_eq!(found["total"], 1, "round {round}: {found}");
            server
                .post("Observation", &json!({"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://example.org/test", "code": "after-sessions"}]}}))
                .expect(201);
        }
    }
    let written = server
        .get("Observation?code=http://example.org/test|after-sessions")
        .expect(200)
        .json();
    assert_eq!(written["total"], 6, "{written}");
}

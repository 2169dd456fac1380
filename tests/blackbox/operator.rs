//! The operator CLI against a real database: `audit verify` beside a busy server, `import`
//! reporting and auditing what it stored, `serve --demo`, and commands that need an existing
//! database.

use crate::support::*;
use serde_json::{json, Value};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Runs `renkei ARGS --database URL`, whatever its exit status.
fn run(url: &str, args: &[&str]) -> Output {
    renkei_command()
        .args(args)
        .args(["--database", url])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run renkei {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A temporary directory for input files, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new() -> Dir {
        let dir =
            std::env::temp_dir().join(format!("renkei-bb-ops-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Dir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write input file");
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The AuditEvents of the trail, as `renkei audit export` writes them.
fn exported(s: &Server) -> Vec<Value> {
    s.cli(&["audit", "export"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("export line is JSON"))
        .collect()
}

fn client_agent(event: &Value) -> Option<&str> {
    event["agent"][0]["who"]["identifier"]["value"].as_str()
}

/// Reproduces "audit trail BROKEN … records removed at the end" reported by a verify that
/// ran while the server appended: the head and the records were read in two snapshots.
#[test]
fn audit_verify_beside_a_busy_server_finds_the_trail_intact() {
    for_each_backend(|s| {
        let patient = s.create(&json!({"resourceType": "Patient", "gender": "female"}));
        let pid = patient["id"].as_str().expect("id").to_string();
        let done = AtomicBool::new(false);
        let requests = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for worker in 0..4 {
                let (done, requests, pid) = (&done, &requests, &pid);
                scope.spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        if worker % 2 == 0 {
                            s.create(&json!({"resourceType": "Observation", "status": "final",
                                "code": {"text": "weight"},
                                "subject": {"reference": format!("Patient/{pid}")}}));
                        } else {
                            s.get(&format!("Patient/{pid}")).expect(200);
                            s.get(&format!("Observation?subject=Patient/{pid}&_count=5"))
                                .expect(200);
                        }
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            let mut verdicts = Vec::new();
            for _ in 0..12 {
                let out = run(s.database_url(), &["audit", "verify"]);
                verdicts.push((out.status.success(), text(&out.stdout), text(&out.stderr)));
            }
            done.store(true, Ordering::Relaxed);
            for (ok, stdout, stderr) in verdicts {
                assert!(
                    ok && stdout.contains("audit trail intact"),
                    "verify under load reported:\n{stdout}\n{stderr}"
                );
            }
        });
        assert!(
            requests.load(Ordering::Relaxed) > 12,
            "the load did not run"
        );
    });
}

#[test]
fn import_of_a_batch_reports_each_failed_entry_and_fails() {
    for_each_backend(|s| {
        let dir = Dir::new();
        let batch = dir.write(
            "batch.json",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": {"resourceType": "Organization", "id": "ib-1"},
                 "request": {"method": "PUT", "url": "Organization/ib-1"}},
                {"resource": {"resourceType": "Organization", "id": "ib-2"},
                 "request": {"method": "PUT", "url": "Organization/ib-2", "ifMatch": "W/\"3\""}},
                {"resource": {"resourceType": "Organization", "id": "ib-3"},
                 "request": {"method": "PUT", "url": "Organization/ib-3"}}
            ]})
            .to_string(),
        );
        let out = run(s.database_url(), &["import", &batch]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            !out.status.success(),
            "a failed entry exits 0:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("imported 2 resources"), "{stdout}");
        assert!(
            stderr.contains("batch.json: entry 1: 412") && stderr.contains("If-Match"),
            "the failed entry is not reported with file, index, status and diagnostics:\n{stderr}"
        );
        assert!(stderr.contains("2 resources were imported"), "{stderr}");
        s.get("Organization/ib-1").expect(200);
        s.get("Organization/ib-3").expect(200);
        s.get("Organization/ib-2").expect(404);
    });
}

#[test]
fn import_records_who_stored_which_resources_in_the_audit_trail() {
    for_each_backend(|s| {
        let dir = Dir::new();
        let transaction = dir.write(
            "tx.json",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Patient", "id": "ia-p"},
                 "request": {"method": "PUT", "url": "Patient/ia-p"}},
                {"resource": {"resourceType": "Observation", "id": "ia-o", "status": "final",
                              "code": {"text": "weight"}, "subject": {"reference": "Patient/ia-p"}},
                 "request": {"method": "PUT", "url": "Observation/ia-o"}}
            ]})
            .to_string(),
        );
        let ndjson = dir.write(
            "lines.ndjson",
            "{\"resourceType\":\"Patient\",\"id\":\"ia-n1\"}\n{\"resourceType\":\"Patient\",\"id\":\"ia-n2\"}\n",
        );
        let out = renkei_command()
            .args([
                "import",
                &transaction,
                &ndjson,
                "--database",
                s.database_url(),
            ])
            .env("USER", "operator-alice")
            .stdin(Stdio::null())
            .output()
            .expect("run import");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let events: Vec<Value> = exported(s)
            .into_iter()
            .filter(|e| client_agent(e).is_some_and(|a| a.starts_with("renkei import")))
            .collect();
        assert_eq!(
            events.len(),
            2,
            "one event per committed transaction: {events:#?}"
        );
        for event in &events {
            assert_eq!(
                client_agent(event),
                Some("renkei import (OS user operator-alice)")
            );
            assert_eq!(event["outcome"], "0");
        }
        let named = |event: &Value| -> Vec<String> {
            event["entity"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["what"]["reference"].as_str().map(str::to_string))
                .collect()
        };
        let first = named(&events[0]);
        assert!(
            first.iter().any(|r| r.starts_with("Patient/ia-p"))
                && first.iter().any(|r| r.starts_with("Observation/ia-o")),
            "the transaction's event does not name what it wrote: {first:?}"
        );
        let second = named(&events[1]);
        assert!(
            second.iter().any(|r| r.starts_with("Patient/ia-n1"))
                && second.iter().any(|r| r.starts_with("Patient/ia-n2")),
            "the NDJSON chunk's event does not name what it wrote: {second:?}"
        );
        let verified = s.cli(&["audit", "verify"]);
        assert!(verified.contains("audit trail intact"), "{verified}");
    });
}

#[test]
fn import_checks_every_input_before_writing_and_names_the_line() {
    for_each_backend(|s| {
        let dir = Dir::new();
        let mut lines = String::new();
        for n in 1..=1500 {
            // Line 1201 holds a type that cannot be stored.
            let res_type = if n == 1201 { "Parameters" } else { "Patient" };
            lines.push_str(&format!(
                "{{\"resourceType\":\"{res_type}\",\"id\":\"ic-{n}\"}}\n"
            ));
        }
        let ndjson = dir.write("a.ndjson", &lines);
        let out = run(s.database_url(), &["import", &ndjson]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("a.ndjson:1201"),
            "no file:line in:\n{stderr}"
        );
        assert!(stderr.contains("nothing was imported"), "{stderr}");
        let reindexed = s.cli(&["reindex"]);
        assert!(
            reindexed.contains("reindexed 0 resources"),
            "a partial import: {reindexed}"
        );

        let good = dir.write(
            "good.json",
            &json!({"resourceType": "Organization", "id": "ic-ok"}).to_string(),
        );
        let missing = dir.0.join("missing.json").to_string_lossy().into_owned();
        let out = run(s.database_url(), &["import", &good, &missing]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("missing.json") && stderr.contains("nothing was imported"),
            "{stderr}"
        );
        s.get("Organization/ic-ok").expect(404);
        // A searchset is another server's answer (its OperationOutcome entry was stored as
        // data): refused before anything is written.
        let searchset = dir.write(
            "searchset.json",
            &json!({"resourceType": "Bundle", "type": "searchset", "entry": [
                {"resource": {"resourceType": "OperationOutcome",
                              "issue": [{"severity": "warning", "code": "informational"}]},
                 "search": {"mode": "outcome"}}]})
            .to_string(),
        );
        let out = run(s.database_url(), &["import", &good, &searchset]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("a searchset Bundle is not imported"),
            "{stderr}"
        );
        s.get("Organization/ic-ok").expect(404);
        // AuditEvents are not data to import (a review found them stored as clinical
        // records: facilities read them through history, auditors never saw them).
        let audit = dir.write(
            "audit.ndjson",
            &format!(
                "{}\n",
                json!({"resourceType": "AuditEvent", "recorded": "2025-01-01T00:00:00Z",
                    "type": {"code": "rest"}, "agent": [{"requestor": true}],
                    "source": {"observer": {"display": "x"}}})
            ),
        );
        let out = run(s.database_url(), &["import", &good, &audit]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("AuditEvent resources are not imported"),
            "{stderr}"
        );
        s.get("Organization/ic-ok").expect(404);
        // Nor reads: a review found a batch's GET counted and audited as an import.
        let reads = dir.write(
            "reads.json",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": {"resourceType": "Patient", "id": "ic-b1"},
                 "request": {"method": "PUT", "url": "Patient/ic-b1"}},
                {"request": {"method": "GET", "url": "Patient/ic-b1"}}]})
            .to_string(),
        );
        let out = run(s.database_url(), &["import", &good, &reads]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("entry 1 is a GET"), "{stderr}");
        s.get("Patient/ic-b1").expect(404);
    });
}

#[test]
fn serve_demo_on_a_database_with_data_registers_no_demo_clients() {
    for_each_backend_raw(|backend| {
        let s = Server::start(backend);
        s.create(&json!({"resourceType": "Patient", "id": "not-demo"}));
        let s = s.restart_with(&[("RENKEI_DEMO", "true")]);
        let clients = s.cli(&["client", "list"]);
        assert!(
            !clients.contains("okayama-central-ehr") && !clients.contains("yamada-patient-app"),
            "demo clients registered although the demo data was not loaded:\n{clients}"
        );
        assert!(
            !s.startup_stdout().contains("okayama-central-ehr ("),
            "{}",
            s.startup_stdout()
        );
    });
}

/// The README's `serve --demo` run again on the database it loaded: the demo clients are
/// there already, and it prints fresh tokens for them; the tokens of the first start still
/// hold (a review found every one of them ended: the restart registered the clients again).
#[test]
fn serve_demo_again_on_the_demo_database_prints_its_tokens() {
    let token_of = |out: &str| {
        out.lines()
            .skip_while(|l| !l.contains("okayama-central-ehr ("))
            .nth(1)
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    for_each_backend_raw(|backend| {
        let s = Server::start_with(backend, &[("RENKEI_DEMO", "true")]);
        let first_out = s.startup_stdout().to_string();
        assert!(first_out.contains("demo network loaded"), "{first_out}");
        let first = token_of(&first_out);
        let s = s.restart_with(&[("RENKEI_DEMO", "true")]);
        let out = s.startup_stdout().to_string();
        assert!(out.contains("nothing was loaded"), "{out}");
        let token = token_of(&out);
        assert!(!token.is_empty(), "{out}");
        for token in [token, first] {
            s.with_token(&token)
                .get("Patient/pat-yamada-taro")
                .expect(200);
        }
    });
}

#[test]
fn serve_demo_loads_audited_demo_data_and_env_false_overrides_the_file() {
    for_each_backend_raw(|backend| {
        let s = Server::start_with(backend, &[("RENKEI_DEMO", "true")]);
        let clients = s.cli(&["client", "list"]);
        assert!(clients.contains("okayama-central-ehr"), "{clients}");
        let loaded = exported(&s)
            .into_iter()
            .filter(|e| client_agent(e).is_some_and(|a| a.starts_with("renkei serve --demo")))
            .count();
        assert!(loaded > 0, "loading the demo left no AuditEvent");
        drop(s);

        let dir = Dir::new();
        let config = dir.write("renkei.toml", "demo = true\n");
        let s = Server::start_with(
            backend,
            &[("RENKEI_CONFIG", config.as_str()), ("RENKEI_DEMO", "false")],
        );
        let clients = s.cli(&["client", "list"]);
        assert!(
            !clients.contains("okayama-central-ehr"),
            "RENKEI_DEMO=false did not override demo = true of the file:\n{clients}"
        );
        s.get("Patient/pat-yamada-taro").expect(404);
    });
}

/// The commands that work on what a gateway holds.
const READING_COMMANDS: [&[&str]; 6] = [
    &["client", "list"],
    &["client", "remove", "--id", "x"],
    &["token", "--client-id", "x"],
    &["reindex"],
    &["explain", "Patient?name=x"],
    &["audit", "verify"],
];

/// SQLite only: a PostgreSQL database that does not exist fails to connect by itself.
#[test]
fn commands_on_a_mistyped_sqlite_path_create_no_database() {
    let dir = Dir::new();
    let path = dir.0.join("typo.db");
    let url = format!("sqlite:{}", path.display());
    for args in READING_COMMANDS {
        let out = run(&url, args);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} succeeded on a missing database"
        );
        assert!(stderr.contains("no database at"), "{args:?}: {stderr}");
        assert!(!path.exists(), "{args:?} created {}", path.display());
    }
    // A file that is no Renkei database (empty, or another application's): refused, and left
    // as it was; `audit verify` created the schema in it and reported an intact trail.
    let empty = dir.0.join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let empty_url = format!("sqlite:{}", empty.display());
    for args in READING_COMMANDS {
        let out = run(&empty_url, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("not a Renkei database"),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            std::fs::metadata(&empty).unwrap().len(),
            0,
            "{args:?} wrote to it"
        );
    }
    // `client add` may start a database (documented).
    let out = run(
        &url,
        &[
            "client",
            "add",
            "--id",
            "x",
            "--organization",
            "Organization/o",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(path.exists());
    // `client list` shows what a client is bound to (a patient app's patient was not shown).
    let out = run(
        &url,
        &[
            "client",
            "add",
            "--id",
            "app",
            "--organization",
            "Organization/o",
            "--role",
            "patient",
            "--patient",
            "Patient/p1",
            "--scope",
            "patient/*.rs",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&run(&url, &["client", "list"]).stdout);
    assert!(listed.contains("[patient=Patient/p1]"), "{listed}");
    // A scope naming no resource type, and a facility named without its type, are typos
    // refused where they are made, not discovered when access is denied.
    let out = run(
        &url,
        &[
            "client",
            "add",
            "--id",
            "typo",
            "--organization",
            "Organization/o",
            "--scope",
            "system/Observation.rs system/Obsrvation.rs",
        ],
    );
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("'Obsrvation'"),
        "{stderr}"
    );
    assert!(!text(&run(&url, &["client", "list"]).stdout).contains("typo"));
    let out = run(&url, &["explain", "Patient?name=x", "--organization", "o"]);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Organization/ID"),
        "{stderr}"
    );
    let out = run(
        &url,
        &[
            "explain",
            "Patient?name=x",
            "--organization",
            "Organization/o",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A purpose no request can carry is refused (a review found any accepted).
    let out = run(
        &url,
        &[
            "explain",
            "Patient?name=x",
            "--organization",
            "Organization/o",
            "--purpose",
            "BOGUS",
        ],
    );
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("BOGUS"),
        "{stderr}"
    );
}

//! The operator CLI against a real database: `audit verify` beside a busy server, `import`
//! reporting and auditing what it stored, `serve --demo`, and commands that need an existing
//! database.

use crate::support::*;
use serde_json::json;
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

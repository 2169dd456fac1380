//! ETags, If-Match, If-None-Match, If-Modified-Since, concurrent read-modify-write.

use crate::support::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[test]
fn conditional_headers() {
    for_each_backend(|s| {
        let created = s.create(&json!({"resourceType": "Patient", "active": true}));
        let id = created["id"].as_str().unwrap().to_string();
        let path = format!("Patient/{id}");
        let mut body = created.clone();
        body["active"] = json!(false);
        // Correct If-Match.
        s.send_json_with("PUT", &path, &body, &[("If-Match", "W/\"1\"")])
            .expect(200);
        // Stale If-Match.
        let r = s
            .send_json_with("PUT", &path, &body, &[("If-Match", "W/\"1\"")])
            .expect(412);
        r.outcome();
        // If-Match on delete with a stale version.
        s.request("DELETE", &path, &[("If-Match", "W/\"1\"")], None)
            .expect(412);
        // Malformed If-Match.
        s.send_json_with("PUT", &path, &body, &[("If-Match", "banana")])
            .expect(400);
        // If-Match on a resource that does not exist.
        let mut ghost = body.clone();
        ghost["id"] = json!("ghost");
        s.send_json_with("PUT", "Patient/ghost", &ghost, &[("If-Match", "W/\"1\"")])
            .expect(412);

        // If-None-Match: current version → 304; other version → 200.
        let r = s
            .get_with(&path, &[("If-None-Match", "W/\"2\"")])
            .expect(304);
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some("W/\"2\""));
        s.get_with(&path, &[("If-None-Match", "W/\"1\"")])
            .expect(200);
        // A vread's 304 carries the version's validators too.
        let r = s
            .get_with(
                &format!("{path}/_history/1"),
                &[("If-None-Match", "W/\"1\"")],
            )
            .expect(304);
        assert_eq!(r.header("etag"), Some("W/\"1\""));
        assert!(r.header("last-modified").is_some());

        // If-Modified-Since: after the last update → 304; long before → 200.
        let last_modified = s
            .get(&path)
            .expect(200)
            .header("last-modified")
            .unwrap()
            .to_string();
        s.get_with(&path, &[("If-Modified-Since", &last_modified)])
            .expect(304);
        s.get_with(
            &path,
            &[("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT")],
        )
        .expect(200);
        s.get_with(
            &path,
            &[("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")],
        )
        .expect(304);
    });
}

#[test]
fn concurrent_read_modify_write() {
    const THREADS: usize = 8;
    const UPDATES: usize = 10;
    for_each_backend(|s| {
        let created = s.create(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:counter", "value": "0"}]}));
        let id = created["id"].as_str().unwrap().to_string();
        let path = format!("Patient/{id}");
        let conflicts = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let path = &path;
                let conflicts = &conflicts;
                scope.spawn(move || {
                    for i in 0..UPDATES {
                        let mut attempts = 0;
                        loop {
                            attempts += 1;
                            assert!(attempts < 500, "thread {t} update {i} starved");
                            let current = s.get(path).expect(200);
                            let etag = current.header("etag").unwrap().to_string();
                            let mut body: Value = current.json();
                            let n: u64 = body["identifier"][0]["value"]
                                .as_str()
                                .unwrap()
                                .parse()
                                .unwrap();
                            body["identifier"][0]["value"] = json!((n + 1).to_string());
                            body["gender"] = json!(if t % 2 == 0 { "male" } else { "female" });
                            let r = s.send_json_with("PUT", path, &body, &[("If-Match", &etag)]);
                            match r.status {
                                200 => break,
                                412 => {
                                    conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                other => panic!("thread {t}: unexpected {other}: {}", r.body),
                            }
                        }
                    }
                });
            }
        });
        let total = THREADS * UPDATES;
        let last = s.read_json(&path);
        assert_eq!(last["meta"]["versionId"], json!((1 + total).to_string()));
        // Every successful update incremented the counter exactly once: no lost update.
        assert_eq!(last["identifier"][0]["value"], json!(total.to_string()));
        let (history, _) = s.all_pages(&format!("{path}/_history?_count=17"));
        let versions: Vec<u64> = history
            .iter()
            .map(|e| {
                e["resource"]["meta"]["versionId"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(versions.len(), 1 + total, "history entries");
        let set: BTreeSet<u64> = versions.iter().copied().collect();
        assert_eq!(
            set.len(),
            versions.len(),
            "duplicate versions in history: {versions:?}"
        );
        assert_eq!(set, (1..=(1 + total) as u64).collect::<BTreeSet<_>>());
        // The counter in version n is n-1: each version saw its predecessor.
        for e in &history {
            let v: u64 = e["resource"]["meta"]["versionId"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                e["resource"]["identifier"][0]["value"],
                json!((v - 1).to_string()),
                "version {v}"
            );
        }
        eprintln!(
            "[{}] concurrent updates: {} If-Match conflicts retried",
            s.backend,
            conflicts.into_inner()
        );
    });
}

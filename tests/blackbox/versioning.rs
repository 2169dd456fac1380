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
        // A well-formed tag this server never issues matches no version: 412 (RFC 9110
        // §13.1.1), not 400 as it was; under If-None-Match it never is the current one.
        s.send_json_with("PUT", &path, &body, &[("If-Match", "W/\"abc\"")])
            .expect(412);
        s.request("DELETE", &path, &[("If-Match", "\"x1\"")], None)
            .expect(412);
        let other = s.create(&json!({"resourceType": "Patient"}));
        let other_id = other["id"].as_str().unwrap();
        s.send_json_with(
            "PUT",
            &format!("Patient/{other_id}"),
            &json!({"resourceType": "Patient", "id": other_id, "active": true}),
            &[("If-None-Match", "W/\"abc\"")],
        )
        .expect(200);
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

/// `If-Match: *` (RFC 9110 §13.1.1): proceed only if the resource currently exists. It was
/// refused as a malformed ETag (400).
#[test]
fn if_match_star_requires_a_current_resource() {
    const JSON_PATCH: &str = "application/json-patch+json";
    for_each_backend(|s| {
        let star = [("If-Match", "*")];
        let created = s.create(&json!({"resourceType": "Patient", "active": true}));
        let id = created["id"].as_str().unwrap().to_string();
        let path = format!("Patient/{id}");
        let mut body = created.clone();
        body["active"] = json!(false);

        // Existing: update and patch proceed as without the header.
        let r = s.send_json_with("PUT", &path, &body, &star).expect(200);
        assert_eq!(r.header("etag"), Some("W/\"2\""));
        let ops = serde_json::to_vec(&json!([
            {"op": "add", "path": "/active", "value": true}
        ]))
        .unwrap();
        let patch = |path: &str, if_match: &str| {
            s.request(
                "PATCH",
                path,
                &[("Content-Type", JSON_PATCH), ("If-Match", if_match)],
                Some(ops.clone()),
            )
        };
        patch(&path, "*").expect(200);

        // Missing: an update must not create, a patch or delete fails its precondition.
        let mut ghost = body.clone();
        ghost["id"] = json!("star-ghost");
        let r = s
            .send_json_with("PUT", "Patient/star-ghost", &ghost, &star)
            .expect(412);
        let outcome = r.outcome();
        assert_eq!(outcome["issue"][0]["severity"], "error");
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("If-Match: *")),
            "{outcome}"
        );
        s.get("Patient/star-ghost").expect(404);
        patch("Patient/star-ghost", "*").expect(412).outcome();
        s.request("DELETE", "Patient/star-ghost", &star, None)
            .expect(412)
            .outcome();
        // Without the header a delete of nothing is still a 204.
        s.delete("Patient/star-ghost").expect(204);

        // Conditional update and patch: no match is no current resource.
        let none = "Patient?identifier=urn:star|none";
        let mut unmatched = json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:star", "value": "none"}]});
        s.send_json_with("PUT", none, &unmatched, &star)
            .expect(412)
            .outcome();
        patch(none, "*").expect(412).outcome();
        assert_eq!(
            s.get("Patient?identifier=urn:star|none").json()["total"],
            json!(0)
        );
        // A match proceeds.
        unmatched["identifier"][0]["value"] = json!("one");
        s.post("Patient", &unmatched).expect(201);
        let one = "Patient?identifier=urn:star|one";
        s.send_json_with("PUT", one, &unmatched, &star).expect(200);
        patch(one, "*").expect(200);

        // Existing: delete proceeds; deleted: every write with `*` fails its precondition.
        s.request("DELETE", &path, &star, None).expect(204);
        s.send_json_with("PUT", &path, &body, &star)
            .expect(412)
            .outcome();
        patch(&path, "*").expect(412).outcome();
        s.request("DELETE", &path, &star, None)
            .expect(412)
            .outcome();
        s.get(&path).expect(410);

        // A list of ETags stays refused, saying why.
        let r = s
            .send_json_with("PUT", &path, &body, &[("If-Match", "W/\"2\", W/\"3\"")])
            .expect(400);
        assert!(r.body.contains("lists several ETags"), "{}", r.body);

        // Bundle entries honour `ifMatch: "*"` the same way.
        let kept = s.create(&json!({"resourceType": "Patient", "active": true}));
        let kept_id = kept["id"].as_str().unwrap().to_string();
        let bundle = |entry_id: &str| {
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Patient", "id": entry_id, "active": false},
                 "request": {"method": "PUT", "url": format!("Patient/{entry_id}"),
                             "ifMatch": "*"}}
            ]})
        };
        s.post("", &bundle(&kept_id)).expect(200);
        s.post("", &bundle("star-bundle-ghost"))
            .expect(412)
            .outcome();
        s.get("Patient/star-bundle-ghost").expect(404);
        let delete_ghost = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": "Patient/star-bundle-ghost", "ifMatch": "*"}}
        ]});
        s.post("", &delete_ghost).expect(412);
    });
}

/// A version `If-Match` is a precondition on the current version: a missing, deleted or
/// unmatched resource has none, so every write fails it (412) rather than answering 404, 410
/// or a delete of nothing, and a conditional update creates nothing.
#[test]
fn a_version_if_match_on_an_absent_resource_fails_its_precondition() {
    for_each_backend(|s| {
        let v1 = [("If-Match", "W/\"1\"")];
        let patch = |path: &str, version: &str| {
            s.request(
                "PATCH",
                path,
                &[("Content-Type", JSON_PATCH), ("If-Match", version)],
                Some(br#"[{"op":"add","path":"/active","value":true}]"#.to_vec()),
            )
        };
        // Missing.
        let r = patch("Patient/version-ghost", "W/\"1\"").expect(412);
        assert!(r.body.contains("W/\\\"1\\\""), "{}", r.body);
        s.request("DELETE", "Patient/version-ghost", &v1, None)
            .expect(412)
            .outcome();
        // Conditional update and patch that match nothing.
        let none = "Patient?identifier=urn:version|none";
        let unmatched = json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:version", "value": "none"}]});
        s.send_json_with("PUT", none, &unmatched, &v1)
            .expect(412)
            .outcome();
        patch(none, "W/\"1\"").expect(412).outcome();
        assert_eq!(s.get(&format!("{none}&_summary=count")).json()["total"], 0);

        // Deleted at version 2: its last version matches no precondition.
        let created = s.create(&json!({"resourceType": "Patient", "active": true}));
        let path = format!("Patient/{}", created["id"].as_str().unwrap());
        s.delete(&path).expect(204);
        let v2 = [("If-Match", "W/\"2\"")];
        s.send_json_with("PUT", &path, &created, &v2)
            .expect(412)
            .outcome();
        patch(&path, "W/\"2\"").expect(412).outcome();
        s.request("DELETE", &path, &v2, None).expect(412).outcome();
        s.get(&path).expect(410);
    });
}

/// `If-None-Match` on a write (RFC 9110 §13.1.2): `*` lets a `PUT` create but never
/// overwrite, a version refuses the write while that version is current. Both were ignored:
/// `PUT` with `If-None-Match: *` overwrote an existing resource.
#[test]
fn if_none_match_on_writes_is_a_precondition() {
    for_each_backend(|s| {
        let absent_only = [("If-None-Match", "*")];
        let put = |active: bool, headers: &[(&str, &str)]| {
            let body = json!({"resourceType": "Patient", "id": "inm-new", "active": active});
            s.send_json_with("PUT", "Patient/inm-new", &body, headers)
        };
        put(true, &absent_only).expect(201);
        let refused = put(false, &absent_only).expect(412).outcome();
        assert!(refused.to_string().contains("If-None-Match"), "{refused}");
        assert_eq!(
            s.read_json("Patient/inm-new")["active"],
            true,
            "not overwritten"
        );

        let not_v1 = [("If-None-Match", "W/\"1\"")];
        put(false, &not_v1).expect(412);
        put(false, &[]).expect(200);
        // Version 2 is current now: "not version 1" holds.
        put(true, &not_v1).expect(200);
        let not_v3 = [("If-None-Match", "W/\"3\"")];
        s.request("DELETE", "Patient/inm-new", &not_v3, None)
            .expect(412);
        s.request("DELETE", "Patient/inm-new", &absent_only, None)
            .expect(412);
        s.request("DELETE", "Patient/inm-new", &not_v1, None)
            .expect(204);
        // Deleted: `*` may create it again.
        put(true, &absent_only).expect(201);
        put(true, &[("If-None-Match", "*"), ("If-Match", "*")]).expect(400);
    });
}

/// `If-Unmodified-Since` on writes (RFC 9110 §13.1.4): a resource modified after the date
/// fails with 412; it was not evaluated, so a lost update slipped through. Not an HTTP-date:
/// ignored; with `If-Match`: the ETag decides.
#[test]
fn if_unmodified_since_is_a_precondition_of_writes() {
    for_each_backend(|s| {
        let created = s.create(&json!({"resourceType": "Patient", "active": true}));
        let id = created["id"].as_str().unwrap().to_string();
        let path = format!("Patient/{id}");
        let long_ago = [("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")];
        let later = httpdate::fmt_http_date(
            std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        );
        let body = json!({"resourceType": "Patient", "id": id, "active": false});
        let refused = s.send_json_with("PUT", &path, &body, &long_ago).expect(412);
        assert!(
            refused.outcome()["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("If-Unmodified-Since")),
            "{}",
            refused.body
        );
        s.request("DELETE", &path, &long_ago, None).expect(412);
        s.send_json_with(
            "PUT",
            &path,
            &body,
            &[("If-Unmodified-Since", later.as_str())],
        )
        .expect(200);
        s.send_json_with("PUT", &path, &body, &[("If-Unmodified-Since", "yesterday")])
            .expect(200);
        let with_etag = [
            ("If-Match", "W/\"3\""),
            ("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"),
        ];
        s.send_json_with("PUT", &path, &body, &with_etag)
            .expect(200);
        assert_eq!(s.read_json(&path)["meta"]["versionId"], "4");

        // A conditional delete takes the same preconditions (it ignored them and deleted).
        let value = uuid::Uuid::new_v4().simple().to_string();
        let found = s.create(&json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:test:cd", "value": value}]}));
        let criteria = format!("Patient?identifier=urn:test:cd|{value}");
        for precondition in [
            ("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT"),
            ("If-Match", "W/\"7\""),
            ("If-Match", "W/\"abc\""),
        ] {
            s.request("DELETE", &criteria, &[precondition], None)
                .expect(412);
        }
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": criteria, "ifMatch": "W/\"99\""}}]});
        s.post("", &bundle).expect(412);
        let found_path = format!("Patient/{}", found["id"].as_str().unwrap());
        s.get(&found_path).expect(200);
        s.request("DELETE", &criteria, &[("If-Match", "W/\"1\"")], None)
            .expect(204);
        s.get(&found_path).expect(410);
        // Nothing matching: a precondition that needs a current resource fails.
        s.request("DELETE", &criteria, &[("If-Match", "*")], None)
            .expect(412);
    });
}

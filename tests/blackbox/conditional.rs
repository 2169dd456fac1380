//! Conditional create (If-None-Exist), conditional update and conditional delete.

use crate::support::*;
use serde_json::{json, Value};

fn with_identifier(system: &str, value: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": system, "value": value}], "active": true})
}

/// Matches of a Patient search (outcome entries, e.g. for ignored parameters, do not count).
fn count(s: &Server, query: &str) -> usize {
    let (all, _) = s.all_pages(&format!("Patient?{query}"));
    all.iter()
        .filter(|e| e["search"]["mode"] != "outcome")
        .count()
}

#[test]
fn conditional_create() {
    for_each_backend(|s| {
        let sys = "urn:oid:1.2.3";
        let inx = format!("identifier={sys}|A1");
        // No match → 201.
        let r = s
            .send_json_with(
                "POST",
                "Patient",
                &with_identifier(sys, "A1"),
                &[("If-None-Exist", &inx)],
            )
            .expect(201);
        let id = r.json()["id"].as_str().unwrap().to_string();
        // One match → 200, nothing new stored.
        let r = s
            .send_json_with(
                "POST",
                "Patient",
                &with_identifier(sys, "A1"),
                &[("If-None-Exist", &inx)],
            )
            .expect(200);
        assert_eq!(r.json()["id"], json!(id));
        assert_eq!(r.header("etag"), Some("W/\"1\""));
        assert_eq!(count(s, &format!("identifier={sys}%7CA1")), 1);
        // An empty header is criteria left out, not an unconditional create.
        for empty in ["", "  "] {
            let refused = s
                .send_json_with(
                    "POST",
                    "Patient",
                    &with_identifier(sys, "A1"),
                    &[("If-None-Exist", empty)],
                )
                .expect(400)
                .outcome();
            assert!(refused.to_string().contains("empty"), "{refused}");
        }
        assert_eq!(count(s, &format!("identifier={sys}%7CA1")), 1);
        assert_eq!(
            s.read_json(&format!("Patient/{id}"))["meta"]["versionId"],
            "1"
        );
        // The full-URL form of the header is accepted too.
        let full = format!("Patient?identifier={sys}|A1");
        s.send_json_with(
            "POST",
            "Patient",
            &with_identifier(sys, "A1"),
            &[("If-None-Exist", &full)],
        )
        .expect(200);
        // Two matches → 412.
        s.create(&with_identifier(sys, "DUP"));
        s.create(&with_identifier(sys, "DUP"));
        let r = s
            .send_json_with(
                "POST",
                "Patient",
                &with_identifier(sys, "DUP"),
                &[("If-None-Exist", &format!("identifier={sys}|DUP"))],
            )
            .expect(412);
        r.outcome();
        assert_eq!(count(s, &format!("identifier={sys}%7CDUP")), 2);
        // _id criteria.
        s.send_json_with(
            "POST",
            "Patient",
            &with_identifier(sys, "X"),
            &[("If-None-Exist", &format!("_id={id}"))],
        )
        .expect(200);
    });
}

/// Concurrent conditional creates and updates of one identifier leave one resource: the
/// search and the create of each happen while the others wait (PostgreSQL runs writes side by
/// side, SQLite one at a time).
#[test]
fn concurrent_conditional_writes_create_once() {
    const THREADS: usize = 8;
    for_each_backend(|s| {
        let system = "http://example.org/mrn";
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                scope.spawn(move || {
                    let criteria = format!("identifier={system}|RACE-1");
                    let r = s.send_json_with(
                        "POST",
                        "Patient",
                        &with_identifier(system, "RACE-1"),
                        &[("If-None-Exist", criteria.as_str())],
                    );
                    assert!(
                        matches!(r.status, 200 | 201),
                        "thread {t}: {} {}",
                        r.status,
                        r.body
                    );
                    let r = s.put(
                        &format!("Patient?identifier={system}|RACE-2"),
                        &with_identifier(system, "RACE-2"),
                    );
                    assert!(
                        matches!(r.status, 200 | 201),
                        "thread {t}: {} {}",
                        r.status,
                        r.body
                    );
                });
            }
        });
        assert_eq!(count(s, &format!("identifier={system}|RACE-1")), 1);
        assert_eq!(count(s, &format!("identifier={system}|RACE-2")), 1);
    });
}

#[test]
fn conditional_update() {
    for_each_backend(|s| {
        let sys = "http://example.org/mrn";
        // No match and no id → create.
        let r = s
            .put(
                &format!("Patient?identifier={sys}|U1"),
                &with_identifier(sys, "U1"),
            )
            .expect(201);
        let id = r.json()["id"].as_str().unwrap().to_string();
        // One match → update of that resource.
        let mut body = with_identifier(sys, "U1");
        body["active"] = json!(false);
        let r = s
            .put(&format!("Patient?identifier={sys}|U1"), &body)
            .expect(200);
        let v = r.json();
        assert_eq!(v["id"], json!(id));
        assert_eq!(v["meta"]["versionId"], "2");
        assert_eq!(s.read_json(&format!("Patient/{id}"))["active"], false);
        // One match but a different id in the body → 400.
        let mut wrong = body.clone();
        wrong["id"] = json!("someone-else");
        let r = s.put(&format!("Patient?identifier={sys}|U1"), &wrong);
        assert!(
            matches!(r.status, 400 | 409 | 412),
            "id mismatch: {} {}",
            r.status,
            r.body
        );
        // No match, and the body's id names an existing resource the criteria do not match:
        // 409, the resource unchanged. An id nobody holds yet is created under that id.
        let mut unrelated = with_identifier(sys, "U-none");
        unrelated["id"] = json!(id);
        s.put(&format!("Patient?identifier={sys}|U-none"), &unrelated)
            .expect(409)
            .outcome();
        let kept = s.read_json(&format!("Patient/{id}"));
        assert_eq!(kept["meta"]["versionId"], "2");
        assert_eq!(kept["identifier"][0]["value"], "U1");
        unrelated["id"] = json!("cond-update-new-id");
        s.put(&format!("Patient?identifier={sys}|U-none"), &unrelated)
            .expect(201);
        // Two matches → 412, none changed.
        let a = s.create(&with_identifier(sys, "U2"));
        let b = s.create(&with_identifier(sys, "U2"));
        s.put(
            &format!("Patient?identifier={sys}|U2"),
            &with_identifier(sys, "U2"),
        )
        .expect(412)
        .outcome();
        for x in [&a, &b] {
            assert_eq!(
                s.read_json(&format!("Patient/{}", x["id"].as_str().unwrap()))["meta"]["versionId"],
                "1"
            );
        }
        // No criteria → not a conditional update.
        let r = s.put("Patient", &with_identifier(sys, "U3"));
        assert!(
            r.status == 405 || r.status == 400,
            "PUT without criteria: {}",
            r.status
        );
    });
}

#[test]
fn conditional_delete() {
    for_each_backend(|s| {
        let sys = "urn:del";
        let one = s.create(&with_identifier(sys, "D1"));
        s.create(&with_identifier(sys, "D2"));
        s.create(&with_identifier(sys, "D2"));
        // Single match → deleted.
        s.delete(&format!("Patient?identifier={sys}|D1"))
            .expect(204);
        s.get(&format!("Patient/{}", one["id"].as_str().unwrap()))
            .expect(410);
        assert_eq!(count(s, &format!("identifier={sys}%7CD1")), 0);
        // No match → 204 (nothing to do).
        s.delete(&format!("Patient?identifier={sys}|none"))
            .expect(204);
        // Several matches → 412 (conditionalDelete: single), both kept.
        s.delete(&format!("Patient?identifier={sys}|D2"))
            .expect(412)
            .outcome();
        assert_eq!(count(s, &format!("identifier={sys}%7CD2")), 2);
        // Without criteria → refused: the method is allowed on the type, the request is
        // incomplete.
        s.delete("Patient").expect(400).outcome();
    });
}

/// Search proper (issue 3) replaced the interim `_id`/`identifier`-only criteria: an unknown
/// parameter is ignored with an OperationOutcome entry, or refused with
/// `Prefer: handling=strict`; a conditional write never treats an unknown parameter as "match
/// everything".
#[test]
fn unknown_search_parameters() {
    for_each_backend(|s| {
        let sys = "urn:unknown-param";
        let a = s.create(&with_identifier(sys, "Q1"));
        s.create(&with_identifier(sys, "Q2"));
        let bundle = s.read_json(&format!("Patient?identifier={sys}%7CQ1&no-such-param=1"));
        let listed = entries(&bundle);
        let matches: Vec<&Value> = listed
            .iter()
            .filter(|e| e["search"]["mode"] != "outcome")
            .collect();
        assert_eq!(matches.len(), 1, "{bundle}");
        assert_eq!(matches[0]["resource"]["id"], a["id"]);
        assert!(
            listed.iter().any(|e| e["search"]["mode"] == "outcome"
                && e["resource"]["resourceType"] == "OperationOutcome"
                && e["resource"].to_string().contains("no-such-param")),
            "no OperationOutcome entry naming the ignored parameter: {bundle}"
        );
        s.get_with(
            &format!("Patient?identifier={sys}%7CQ1&no-such-param=1"),
            &[("Prefer", "handling=strict")],
        )
        .expect(400)
        .outcome();
        // Totals: exact when asked for.
        let bundle = s.read_json(&format!(
            "Patient?identifier={sys}%7CQ1,{sys}%7CQ2&_total=accurate"
        ));
        assert_eq!(bundle["total"], 2, "{bundle}");
        // Conditional writes whose only criterion is unknown change nothing.
        let r = s.delete("Patient?no-such-param=1");
        assert!(
            r.status == 400 || r.status == 412,
            "conditional delete on an unknown parameter: {} {}",
            r.status,
            r.body
        );
        assert_eq!(count(s, &format!("identifier={sys}%7CQ1,{sys}%7CQ2")), 2);
    });
}

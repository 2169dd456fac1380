//! History at instance, type and system level; paging; _since; deletes.

use crate::support::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

#[test]
fn instance_type_system_history() {
    for_each_backend(|s| {
        let a = s.create(&json!({"resourceType": "Patient", "gender": "male"}));
        let id = a["id"].as_str().unwrap().to_string();
        let mut body = a.clone();
        body["gender"] = json!("female");
        s.put(&format!("Patient/{id}"), &body).expect(200);
        s.delete(&format!("Patient/{id}")).expect(204);
        let org = s.create(&json!({"resourceType": "Organization", "name": "Org"}));

        // Instance: newest first, 3 entries, the delete without a resource.
        let h = s.read_json(&format!("Patient/{id}/_history"));
        assert_eq!(h["resourceType"], "Bundle");
        assert_eq!(h["type"], "history");
        let e = entries(&h);
        assert_eq!(e.len(), 3, "{h}");
        assert_eq!(e[0]["request"]["method"], "DELETE");
        assert!(
            e[0].get("resource").is_none(),
            "a DELETE entry has no resource: {}",
            e[0]
        );
        assert_eq!(e[0]["response"]["etag"], "W/\"3\"");
        assert!(e[0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("204"));
        assert_eq!(e[1]["request"]["method"], "PUT");
        assert_eq!(e[1]["resource"]["meta"]["versionId"], "2");
        assert_eq!(e[1]["resource"]["gender"], "female");
        assert_eq!(e[2]["request"]["method"], "POST");
        assert_eq!(e[2]["resource"]["meta"]["versionId"], "1");
        assert_eq!(e[2]["resource"]["gender"], "male");
        for x in &e {
            assert_eq!(x["fullUrl"], json!(format!("{}/Patient/{id}", s.base)));
            assert!(x["response"]["lastModified"].as_str().is_some());
        }
        assert!(link(&h, "self").is_some());
        assert!(e[2]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("201"));
        assert!(e[1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("200"));

        // Created again after the delete: that version is a creation too.
        let mut again = body.clone();
        again["gender"] = json!("other");
        s.put(&format!("Patient/{id}"), &again).expect(201);
        let h = s.read_json(&format!("Patient/{id}/_history"));
        let e = entries(&h);
        assert_eq!(e[0]["response"]["etag"], "W/\"4\"");
        assert!(
            e[0]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("201"),
            "{}",
            e[0]
        );
        let recreated = s.read_json(&format!("Patient/{id}/_history/4"));
        assert_eq!(recreated["gender"], "other");

        // Type: only Patients (four versions of one).
        let h = s.read_json("Patient/_history");
        assert_eq!(entries(&h).len(), 4);
        let h = s.read_json("Organization/_history");
        let e = entries(&h);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0]["resource"]["id"], org["id"]);
        // System: everything.
        let h = s.read_json("_history");
        assert_eq!(entries(&h).len(), 5);
        // Unknown type / no history.
        s.get("NotAType/_history").expect(404);
        s.get("Patient/nobody/_history").expect(404).outcome();
        // Bad parameters.
        s.get("_history?_count=abc").expect(400);
        s.get("_history?_since=yesterday").expect(400);
        s.get("_history?_page_token=garbage").expect(400);
        // XML history.
        let x = s.get_with("_history", &[("Accept", FHIR_XML)]).expect(200);
        assert!(
            x.body.contains("<Bundle") && x.body.contains("<type value=\"history\"/>"),
            "{}",
            truncate(&x.body, 500)
        );
    });
}

#[test]
fn history_paging_and_since() {
    for_each_backend(|s| {
        let mut ids = Vec::new();
        for i in 0..23 {
            let r =
                s.create(&json!({"resourceType": "Basic", "code": {"text": format!("item {i}")}}));
            ids.push(r["id"].as_str().unwrap().to_string());
        }
        // Update some so that there are several versions per id.
        for id in ids.iter().take(5) {
            let mut v = s.read_json(&format!("Basic/{id}"));
            v["code"]["text"] = json!("changed");
            s.put(&format!("Basic/{id}"), &v).expect(200);
        }
        let total = 23 + 5;
        for (path, count) in [
            ("Basic/_history", 4),
            ("_history", 7),
            ("Basic/_history", 1),
            ("_history", 28),
            ("_history", 50),
        ] {
            let (all, pages) = s.all_pages(&format!("{path}?_count={count}"));
            assert_eq!(all.len(), total, "{path} _count={count}");
            let keys: BTreeSet<String> = all
                .iter()
                .map(|e| {
                    format!(
                        "{}@{}",
                        e["fullUrl"].as_str().unwrap(),
                        e["response"]["etag"].as_str().unwrap()
                    )
                })
                .collect();
            assert_eq!(
                keys.len(),
                total,
                "duplicates across pages ({path} _count={count})"
            );
            let expected_pages = total.div_ceil(count);
            assert!(
                pages == expected_pages || pages == expected_pages + 1,
                "{pages} pages for _count={count}"
            );
            // Each page honours _count; newest first overall.
            let stamps: Vec<String> = all
                .iter()
                .map(|e| e["response"]["lastModified"].as_str().unwrap().to_string())
                .collect();
            let mut sorted = stamps.clone();
            sorted.sort_by(|a, b| b.cmp(a));
            assert_eq!(stamps, sorted, "history is newest first");
        }
        let first_page = s.read_json("_history?_count=10");
        assert_eq!(entries(&first_page).len(), 10);
        // `self` names each page itself; `first` leads back to the start.
        let next = link(&first_page, "next").expect("next link");
        assert_eq!(link(&first_page, "self"), link(&first_page, "first"));
        let second_page = s.read_json(&next);
        assert_eq!(link(&second_page, "self").as_deref(), Some(next.as_str()));
        assert_eq!(link(&second_page, "first"), link(&first_page, "self"));

        // _since: a boundary after the creates, before the updates.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let boundary = {
            let marker = s.create(&json!({"resourceType": "Basic", "code": {"text": "marker"}}));
            marker["meta"]["lastUpdated"].as_str().unwrap().to_string()
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        for id in ids.iter().skip(10).take(3) {
            let mut v = s.read_json(&format!("Basic/{id}"));
            v["code"]["text"] = json!("late");
            s.put(&format!("Basic/{id}"), &v).expect(200);
        }
        let since = boundary.replace('+', "%2B");
        let (recent, _) = s.all_pages(&format!("Basic/_history?_since={since}&_count=2"));
        // The marker (at the boundary, inclusive) and the 3 late updates.
        assert_eq!(recent.len(), 4, "{recent:?}");
        assert!(recent
            .iter()
            .all(|e| e["resource"]["meta"]["lastUpdated"].as_str().unwrap() >= boundary.as_str()));
        let (none, _) = s.all_pages("_history?_since=2999-01-01T00:00:00Z");
        assert!(none.is_empty());
        let (everything, _) = s.all_pages("_history?_since=2000-01-01&_count=1000");
        assert_eq!(everything.len(), total + 1 + 3);
    });
}

/// `_at`: the versions current at some time of the period, not every version before it.
#[test]
fn history_at_lists_the_versions_current_then() {
    for_each_backend(|s| {
        let pause = || std::thread::sleep(std::time::Duration::from_millis(30));
        let created = s.create(&json!({"resourceType": "Basic", "code": {"text": "v1"}}));
        let id = created["id"].as_str().unwrap().to_string();
        let path = format!("Basic/{id}");
        let stamp = |resource: &Value| {
            resource["meta"]["lastUpdated"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let mut versions = vec![stamp(&created)];
        for text in ["v2", "v3"] {
            pause();
            let mut body = s.read_json(&path);
            body["code"]["text"] = json!(text);
            versions.push(stamp(&s.put(&path, &body).expect(200).json()));
        }
        let at = |value: &str| -> Vec<String> {
            let page = s
                .get(&format!(
                    "{path}/_history?_at={}",
                    value.replace('+', "%2B")
                ))
                .expect(200)
                .json();
            entries(&page)
                .iter()
                .map(|e| {
                    e["resource"]["meta"]["versionId"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        // The instant version 2 was written: only version 2 was current then.
        assert_eq!(at(&versions[1]), ["2"]);
        // The instant version 3 was written (the newest): only version 3.
        assert_eq!(at(&versions[2]), ["3"]);
        // The whole day: every version was current at some time of it.
        assert_eq!(at(&versions[0][..10]), ["3", "2", "1"]);
        // Before the resource existed: nothing.
        assert!(at("2001-01-01").is_empty());
        s.get(&format!("{path}/_history?_at=yesterday")).expect(400);
    });
}

/// A parameter history does not take is refused, not ignored: `_list` ("only the versions the
/// List names") or `_elements` answered the whole history as if unasked.
#[test]
fn history_refuses_parameters_it_does_not_take() {
    for_each_backend(|s| {
        let created = s.create(&json!({"resourceType": "Patient", "gender": "male"}));
        let id = created["id"].as_str().expect("id");
        for query in ["_list=abc", "foo=1", "_elements=id", "_summary=true"] {
            for path in [
                format!("Patient/{id}/_history?{query}"),
                format!("Patient/_history?{query}"),
                format!("_history?{query}"),
            ] {
                let refused = s.get(&path).expect(400).outcome();
                let text = refused.to_string();
                assert!(text.contains("history takes"), "{path}: {text}");
            }
        }
        s.get(&format!(
            "Patient/{id}/_history?_count=1&_format=json&_pretty=false"
        ))
        .expect(200);
    });
}

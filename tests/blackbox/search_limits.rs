//! Large searches over HTTP: hundreds of alternatives, ValueSets of thousands of codes, many
//! parameters and deep chains answer either the right Bundle or 400 with an OperationOutcome
//! (`too-costly`) naming the limit. A hostile-input sweep found each answering 500 on SQLite
//! ("Expression tree is too large").

use crate::support::*;
use serde_json::{json, Value};

/// The ids of a searchset's matches, sorted.
fn ids(s: &Server, path: &str) -> Vec<String> {
    sorted_match_ids(&entries(&s.get(path).expect(200).json()))
}

/// The diagnostics of a 400 `too-costly` answer.
#[track_caller]
fn too_costly(s: &Server, path: &str) -> String {
    let outcome = s.get(path).expect(400).outcome();
    let issue = &outcome["issue"][0];
    assert_eq!(issue["code"], "too-costly", "{outcome}");
    issue["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `n` comma-separated alternatives: `matching` first, then ones that match nothing.
fn list(matching: &[&str], n: usize, filler: impl Fn(usize) -> String) -> String {
    let mut all: Vec<String> = matching.iter().map(|m| m.to_string()).collect();
    all.extend((all.len()..n).map(filler));
    all.join(",")
}

fn load(s: &Server) {
    for (id, family, link) in [
        ("lp1", "Alpha", None),
        ("lp2", "Bravo", None),
        ("lp3", "Charlie", None),
        ("la", "Anchor", Some("lb")),
        ("lb", "Bridge", None),
    ] {
        let mut patient =
            json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
        if let Some(other) = link {
            patient["link"] =
                json!([{"other": {"reference": format!("Patient/{other}")}, "type": "seealso"}]);
        }
        s.put(&format!("Patient/{id}"), &patient).expect(201);
    }
    for (id, patient, code, date, tag) in [
        ("lo1", "lp1", "c-1", "2021-03-04", "t-1"),
        ("lo2", "lp2", "c-2", "2022-05-06", "t-2"),
        ("lo3", "lp3", "c-3", "2019-01-01", "t-3"),
        ("lo4", "la", "c-4", "2018-01-01", "t-4"),
    ] {
        let observation = json!({"resourceType": "Observation", "id": id, "status": "final",
            "meta": {"tag": [{"system": "urn:large:tag", "code": tag}]},
            "code": {"coding": [{"system": "urn:large:code", "code": code}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": date});
        s.put(&format!("Observation/{id}"), &observation)
            .expect(201);
    }
}

#[test]
fn hundreds_of_alternatives_find_exactly_the_matches() {
    for_each_backend(|s| {
        load(s);
        let codes = list(&["urn:large:code|c-1", "c-2"], 600, |i| format!("x-{i}"));
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                format!(
                    "Patient?name={}",
                    list(&["alph", "bravo"], 600, |i| format!("zz{i}"))
                ),
                vec!["lp1", "lp2"],
            ),
            (format!("Observation?code={codes}"), vec!["lo1", "lo2"]),
            (
                format!(
                    "Observation?date={}",
                    list(&["2021-03-04", "2022-05"], 600, |i| format!("{}", 1000 + i))
                ),
                vec!["lo1", "lo2"],
            ),
            (
                format!(
                    "Observation?subject={}",
                    list(&["Patient/lp1", "lp2"], 600, |i| format!("Patient/x{i}"))
                ),
                vec!["lo1", "lo2"],
            ),
            (
                format!(
                    "Observation?_tag={}",
                    list(&["urn:large:tag|t-1", "t-2"], 600, |i| format!("t-x{i}"))
                ),
                vec!["lo1", "lo2"],
            ),
            (format!("Observation?code:not={codes}"), vec!["lo3", "lo4"]),
            (
                format!("Patient?_has:Observation:subject:code={codes}"),
                vec!["lp1", "lp2"],
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(ids(s, &path), expected, "{}", truncate(&path, 80));
        }
    });
}

#[test]
fn value_sets_of_thousands_of_codes_work() {
    for_each_backend(|s| {
        load(s);
        for (id, n) in [("drugs-1000", 1000), ("drugs-5000", 5000)] {
            let concepts: Vec<Value> = (0..n)
                .map(|i| match i {
                    10 => json!({"code": "c-1"}),
                    700 => json!({"code": "c-2"}),
                    _ => json!({"code": format!("drug-{i:06}")}),
                })
                .collect();
            let value_set = json!({"resourceType": "ValueSet", "id": id, "status": "active",
                "url": format!("http://example.org/fhir/ValueSet/{id}"),
                "compose": {"include": [{"system": "urn:large:code", "concept": concepts}]}});
            s.put(&format!("ValueSet/{id}"), &value_set).expect(201);
            assert_eq!(
                ids(s, &format!("Observation?code:in=ValueSet/{id}")),
                ["lo1", "lo2"]
            );
            assert_eq!(
                ids(
                    s,
                    &format!("Observation?code:in=http://example.org/fhir/ValueSet/{id}")
                ),
                ["lo1", "lo2"]
            );
            assert_eq!(
                ids(s, &format!("Observation?code:not-in=ValueSet/{id}")),
                ["lo3", "lo4"]
            );
        }
    });
}

#[test]
fn searches_beyond_the_limits_answer_400_naming_the_limit() {
    for_each_backend(|s| {
        load(s);
        // Within the limits: 32 parameters, a chain of two levels.
        let repeated = |n: usize| vec!["name=alph"; n].join("&");
        assert_eq!(ids(s, &format!("Patient?{}", repeated(32))), ["lp1"]);
        assert_eq!(
            ids(s, "Observation?subject:Patient.link:Patient.name=bridge"),
            ["lo4"]
        );
        // Beyond them.
        let message = too_costly(s, &format!("Patient?{}", repeated(500)));
        assert!(
            message.contains("at most 32 search parameters"),
            "{message}"
        );
        let chain = format!(
            "Observation?subject:Patient{}.name=x",
            ".link:Patient".repeat(7)
        );
        let message = too_costly(s, &chain);
        assert!(message.contains("at most 4 levels"), "{message}");
        let message = too_costly(
            s,
            &format!("Patient?name={}", list(&[], 1001, |i| format!("n{i}"))),
        );
        assert!(message.contains("at most 1000 values"), "{message}");
        let message = too_costly(s, "Basic?subject._id=x");
        assert!(message.contains("at most 32 resource types"), "{message}");
        // Conditional criteria use the same limits.
        let outcome = s
            .send_json_with(
                "POST",
                "Patient",
                &json!({"resourceType": "Patient"}),
                &[("If-None-Exist", &repeated(40))],
            )
            .expect(400)
            .outcome();
        assert_eq!(outcome["issue"][0]["code"], "too-costly", "{outcome}");
        // The server is still up.
        s.get("metadata").expect(200);
    });
}

/// Values longer than an index key holds (PostgreSQL refuses B-tree entries over 2,704
/// bytes, and answered 500 to such a write while SQLite stored it) are stored, updated and
/// found alike on both backends: the index keeps their first 600 bytes, and a search by the
/// whole value is cut the same way.
#[test]
fn values_longer_than_an_index_key_are_stored_and_found() {
    for_each_backend(|s| {
        let long_ascii = "x".repeat(3_000);
        // 3,000 bytes each: over the 600-byte key and over PostgreSQL's entry limit.
        let long_kanji = "山".repeat(1_000);
        let long_url = format!(
            "http://example.org/fhir/ServiceRequest/{}",
            "a".repeat(3_000)
        );
        let practitioner = s.create(&json!({
            "resourceType": "Practitioner",
            "identifier": [{"system": format!("urn:system:{long_ascii}"), "value": long_ascii}],
            "name": [{"family": long_kanji, "given": [long_ascii]}],
        }));
        let id = practitioner["id"].as_str().unwrap().to_string();
        let value_set = s.create(&json!({
            "resourceType": "ValueSet", "status": "active",
            "url": format!("http://example.org/ValueSet/{long_ascii}"),
        }));
        let observation = s.create(&json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "urn:long", "code": long_ascii}]},
            "valueString": long_kanji,
            "basedOn": [{"reference": long_url}],
        }));

        let encode = |v: &str| {
            v.bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        let found = |path: String, expected: &str| {
            let matches = sorted_match_ids(&entries(&s.get(&path).expect(200).json()));
            assert_eq!(
                matches,
                vec![expected.to_string()],
                "{}",
                truncate(&path, 120)
            );
        };
        let token = encode(&format!("urn:system:{long_ascii}|{long_ascii}"));
        found(format!("Practitioner?identifier={token}"), &id);
        found(format!("Practitioner?family={}", encode(&long_kanji)), &id);
        found(
            format!("Practitioner?family:exact={}", encode(&long_kanji)),
            &id,
        );
        found(format!("Practitioner?given={}", encode(&long_ascii)), &id);
        found(
            format!(
                "ValueSet?url={}",
                encode(value_set["url"].as_str().unwrap())
            ),
            value_set["id"].as_str().unwrap(),
        );
        let obs_id = observation["id"].as_str().unwrap();
        found(
            format!("Observation?code=urn:long|{}", encode(&long_ascii)),
            obs_id,
        );
        found(
            format!("Observation?value-string={}", encode(&long_kanji)),
            obs_id,
        );
        found(
            format!("Observation?based-on={}", encode(&long_url)),
            obs_id,
        );
        // `:exact` compares the whole value: one character more or less is another value.
        let other = format!("{long_kanji}山");
        assert_eq!(
            s.get(&format!("Practitioner?family:exact={}", encode(&other)))
                .expect(200)
                .json()["total"],
            0
        );

        // An update to another long value, and a transaction that carries one, commit.
        let mut changed = practitioner.clone();
        changed["name"][0]["family"] = json!("川".repeat(1_000));
        s.put(&format!("Practitioner/{id}"), &changed).expect(200);
        found(
            format!("Practitioner?family={}", encode(&"川".repeat(1_000))),
            &id,
        );
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Practitioner",
                          "identifier": [{"system": "urn:tx", "value": "y".repeat(5_000)}]},
             "request": {"method": "POST", "url": "Practitioner"}}
        ]});
        s.post("", &bundle).expect(200);
        let tx_token = encode(&format!("urn:tx|{}", "y".repeat(5_000)));
        assert_eq!(
            s.get(&format!(
                "Practitioner?identifier={tx_token}&_summary=count"
            ))
            .expect(200)
            .json()["total"],
            1
        );
    });
}

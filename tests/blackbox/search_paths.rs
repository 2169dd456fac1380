//! Searches reached through other paths than `[type]?…`: a compartment of the Patient type,
//! `$everything` with its own parameters, and the system search over every type.

use crate::support::*;
use serde_json::{json, Value};

fn types_of(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_patient_compartment_of_type_patient_takes_filters() {
    for_each_backend(|s| {
        s.put(
            "Patient/cp-1",
            &json!({"resourceType": "Patient", "id": "cp-1", "gender": "male",
                    "name": [{"family": "Kompa"}]}),
        )
        .expect(201);
        let found = |query: &str| {
            let (entries, _) = s.all_pages(&format!("Patient/cp-1/Patient?{query}"));
            types_of(&entries).len()
        };
        assert_eq!(found("gender=male"), 1);
        assert_eq!(found("gender=female"), 0);
        assert_eq!(found("name=kompa&gender=male"), 1);
        assert_eq!(found("_tag=urn:t|none"), 0);
        // By POST, the parameters in a form body (a review found 404).
        let posted = |body: &str| {
            s.request(
                "POST",
                "Patient/cp-1/Patient/_search",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                Some(body.as_bytes().to_vec()),
            )
        };
        let male = posted("gender=male").expect(200).json();
        assert_eq!(types_of(&entries(&male)), ["Patient"], "{male}");
        let female = posted("gender=female").expect(200).json();
        assert!(types_of(&entries(&female)).is_empty(), "{female}");
        s.get("Patient/cp-1/Patient/_search").expect(405);
        // A body sent in chunks without a Content-Type is not dropped unread: 415, not a
        // search run without its parameters.
        let chunked = s
            .client
            .post(s.url("Patient/_search"))
            .body(reqwest::blocking::Body::new(std::io::Cursor::new(
                b"gender=female".to_vec(),
            )))
            .send()
            .unwrap();
        assert_eq!(chunked.status().as_u16(), 415);
    });
}

#[test]
fn everything_keeps_its_types_on_every_page_and_names_what_it_ignores() {
    for_each_backend(|s| {
        s.put(
            "Patient/ev-1",
            &json!({"resourceType": "Patient", "id": "ev-1"}),
        )
        .expect(201);
        for (res_type, n) in [("Observation", 3), ("Encounter", 2), ("Condition", 2)] {
            for _ in 0..n {
                let mut resource =
                    json!({"resourceType": res_type, "subject": {"reference": "Patient/ev-1"}});
                match res_type {
                    "Observation" => {
                        resource["status"] = json!("final");
                        resource["code"] = json!({"text": "x"});
                    }
                    "Encounter" => {
                        resource["status"] = json!("finished");
                        resource["class"] = json!({"code": "AMB"});
                    }
                    _ => {}
                }
                s.create(&resource);
            }
        }
        let (all, _) = s.all_pages("Patient/ev-1/$everything?_type=Observation,Encounter&_count=2");
        let mut types = types_of(&all);
        types.sort();
        assert_eq!(
            types,
            [
                "Encounter",
                "Encounter",
                "Observation",
                "Observation",
                "Observation"
            ]
        );
        // What the compartment refers to comes along: here the performer of an Observation.
        s.put(
            "Practitioner/ev-doctor",
            &json!({"resourceType": "Practitioner", "id": "ev-doctor"}),
        )
        .expect(201);
        s.create(
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "y"},
            "subject": {"reference": "Patient/ev-1"},
            "performer": [{"reference": "Practitioner/ev-doctor"}]}),
        );
        let (all, _) = s.all_pages("Patient/ev-1/$everything?_count=3");
        assert!(
            all.iter()
                .any(|e| e["search"]["mode"] == "include" && e["resource"]["id"] == "ev-doctor"),
            "{all:?}"
        );
        // With `_type`, of those types only, included ones too (a review found the
        // Patient, the performer and the encounter's organisation among Observations).
        let (only, _) = s.all_pages("Patient/ev-1/$everything?_type=Observation&_count=3");
        assert!(
            only.iter()
                .all(|e| e["resource"]["resourceType"] == "Observation"),
            "{only:?}"
        );
        let (with_doctor, _) =
            s.all_pages("Patient/ev-1/$everything?_type=Observation,Practitioner&_count=3");
        assert!(
            with_doctor
                .iter()
                .any(|e| e["search"]["mode"] == "include" && e["resource"]["id"] == "ev-doctor"),
            "{with_doctor:?}"
        );
        // Parameters $everything does not define: refused under strict handling, reported
        // otherwise (`start` and `end` are served, see conformance.rs).
        let r = s
            .get_with(
                "Patient/ev-1/$everything?bogus=2020-01-01",
                &[("Prefer", "handling=strict")],
            )
            .expect(400);
        assert!(r.body.contains("bogus"), "{}", r.body);
        let page = s
            .get("Patient/ev-1/$everything?bogus=2020-01-01")
            .expect(200)
            .json();
        let outcome = entries(&page)
            .into_iter()
            .find(|e| e["search"]["mode"] == "outcome")
            .expect("an outcome entry");
        assert!(outcome.to_string().contains("bogus"), "{outcome}");
        s.get_with(
            "Patient/ev-1/$everything?start=2020-01-01",
            &[("Prefer", "handling=strict")],
        )
        .expect(200);
    });
}

#[test]
fn a_search_of_every_type_takes_the_parameters_of_every_resource() {
    for_each_backend(|s| {
        let tag = json!({"tag": [{"system": "urn:sweep", "code": "t1"}],
                         "security": [{"system": "urn:sweep-sec", "code": "s1"}]});
        s.create(&json!({"resourceType": "Patient", "meta": tag}));
        s.create(&json!({"resourceType": "Observation", "status": "final",
                         "code": {"text": "x"}, "meta": tag}));
        s.create(&json!({"resourceType": "Condition", "subject": {"reference": "Patient/none"}}));
        for query in ["?_tag=urn:sweep|t1", "?_security=urn:sweep-sec|s1"] {
            let page = s
                .get_with(query, &[("Prefer", "handling=strict")])
                .expect(200)
                .json();
            let mut types = types_of(&entries(&page));
            types.sort();
            assert_eq!(types, ["Observation", "Patient"], "{query}");
        }
    });
}

/// `_type` belongs to the search of every type, and `:Type` must name a type the reference
/// parameter can point at.
#[test]
fn a_search_of_one_type_refuses_what_does_not_apply_to_it() {
    for_each_backend(|s| {
        let strict = [("Prefer", "handling=strict")];
        let r = s.get_with("Observation?_type=Patient", &strict).expect(400);
        assert!(r.body.contains("_type"), "{}", r.body);
        let page = s.get("Observation?_type=Patient").expect(200).json();
        assert!(
            entries(&page)
                .iter()
                .any(|e| e["search"]["mode"] == "outcome" && e.to_string().contains("_type")),
            "{page}"
        );
        let r = s
            .get_with("Observation?subject:Nope=x", &strict)
            .expect(400);
        assert!(r.body.contains("Nope"), "{}", r.body);
        s.get("Observation?subject:Patient=x").expect(200);
    });
}

/// Another server's `Patient/ref-p1` is not this server's: a reference to it is found by its
/// URL alone, never by `Patient/ref-p1`, a compartment, `$everything` or `_include`. An
/// absolute reference under this server's own base is a local one.
#[test]
fn references_to_other_servers_are_not_local_references() {
    for_each_backend(|s| {
        s.put(
            "Patient/ref-p1",
            &json!({"resourceType": "Patient", "id": "ref-p1"}),
        )
        .expect(201);
        let observation = |subject: &str| {
            let created = s.create(&json!({"resourceType": "Observation", "status": "final",
                "code": {"text": "weight"}, "subject": {"reference": subject}}));
            created["id"].as_str().unwrap().to_string()
        };
        let relative = observation("Patient/ref-p1");
        let absolute_here = observation(&format!("{}/Patient/ref-p1", s.base));
        let elsewhere_url = "https://other.example.org/fhir/Patient/ref-p1";
        let elsewhere = observation(elsewhere_url);
        let ids = |path: &str| -> Vec<String> {
            let (entries, _) = s.all_pages(path);
            let mut ids: Vec<String> = entries
                .iter()
                .filter(|e| e["resource"]["resourceType"] == "Observation")
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
                .collect();
            ids.sort();
            ids
        };
        let mut local = vec![relative.clone(), absolute_here.clone()];
        local.sort();
        assert_eq!(ids("Observation?subject=Patient/ref-p1"), local);
        assert_eq!(ids("Observation?patient=ref-p1"), local);
        assert_eq!(ids("Patient/ref-p1/Observation"), local);
        assert_eq!(ids("Patient/ref-p1/$everything"), local);
        assert_eq!(
            ids(&format!("Observation?subject={elsewhere_url}")),
            [elsewhere.as_str()]
        );
        let (included, _) = s.all_pages(&format!(
            "Observation?_id={elsewhere}&_include=Observation:subject"
        ));
        assert!(
            included
                .iter()
                .all(|e| e["resource"]["resourceType"] != "Patient"),
            "{included:?}"
        );
    });
}

/// `Patient/{id}/*` (every type of the compartment) is not served: a 400 `not-supported` that
/// points at `$everything`, for a stored patient and a missing one alike. Before, a 404 said
/// "resource type '*' is not a FHIR R4 resource type".
#[test]
fn the_compartment_of_every_type_points_at_everything() {
    for_each_backend(|s| {
        s.put(
            "Patient/star-1",
            &json!({"resourceType": "Patient", "id": "star-1"}),
        )
        .expect(201);
        for path in [
            "Patient/star-1/*",
            "Patient/star-none/*",
            "Patient/star-1/*?code=x",
        ] {
            let outcome = s.get(path).expect(400).outcome();
            assert_eq!(outcome["issue"][0]["code"], "not-supported", "{path}");
            let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
            assert!(diagnostics.contains("$everything"), "{diagnostics}");
            assert!(!diagnostics.contains("star-"), "{diagnostics}");
        }
        s.get("Patient/star-1/$everything").expect(200);
    });
}

/// A search over several types refuses a parameter that some of them lack, naming it and
/// them, under lenient handling too (R4: the parameters of a multi-type search are common to
/// its types). Before, the parameter was dropped for every type with an "unknown parameter
/// ignored" warning, and the search answered everything the types hold.
#[test]
fn a_search_of_several_types_refuses_a_parameter_not_common_to_them() {
    for_each_backend(|s| {
        s.create(&json!({"resourceType": "Patient", "gender": "male"}));
        s.create(&json!({"resourceType": "Observation", "status": "final",
                         "code": {"coding": [{"system": "urn:c", "code": "x"}]}}));
        for path in [
            "?_type=Patient,Observation&code=x",
            "?code=x",
            "?_type=Observation,Patient&gender=male",
            "?_type=Patient,Observation&subject.name=x",
        ] {
            let outcome = s.get(path).expect(400).outcome();
            let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
            assert!(
                diagnostics.contains("not common to the types searched"),
                "{diagnostics}"
            );
        }
        let outcome = s
            .get("?_type=Patient,Observation&code=x")
            .expect(400)
            .outcome();
        let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(
            diagnostics.contains("'code'") && diagnostics.contains("Patient"),
            "{diagnostics}"
        );
        // A parameter common to the types still applies; one no type defines is still ignored.
        let page = s
            .get("?_type=Observation,Condition&code=urn:c|x&nothing=1")
            .expect(200)
            .json();
        assert_eq!(types_of(&entries(&page)), ["Observation"]);
        assert!(
            entries(&page)
                .iter()
                .any(|e| e["search"]["mode"] == "outcome" && e.to_string().contains("nothing")),
            "{page}"
        );
    });
}

/// A review found on the default zone (UTC): a lab dated `2025-12-02` was found by
/// `date=2025-12-02` but left out of `$everything?start=2025-12-02`, since each record's care
/// date is read in Japan time and the bounds were read in the server's zone. The bounds are
/// now read as the care dates are.
#[test]
fn everything_start_takes_a_record_of_that_day_whatever_the_zone() {
    for_each_backend(|s| {
        let patient = s.create(&json!({"resourceType": "Patient"}));
        let id = patient["id"].as_str().unwrap().to_string();
        let lab = s.create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "HbA1c"}, "subject": {"reference": format!("Patient/{id}")},
            "effectiveDateTime": "2025-12-02"}));
        let lab = format!("Observation/{}", lab["id"].as_str().unwrap());
        let by_date = s.read_json(&format!("Observation?patient={id}&date=2025-12-02"));
        assert!(by_date.to_string().contains(&lab), "{by_date}");
        for query in [
            "start=2025-12-02",
            "end=2025-12-02",
            "start=2025-12-02&end=2025-12-02",
        ] {
            let everything = s.read_json(&format!("Patient/{id}/$everything?{query}"));
            assert!(
                everything.to_string().contains(&lab),
                "{query}: {everything}"
            );
        }
        let later = s.read_json(&format!("Patient/{id}/$everything?start=2025-12-03"));
        assert!(!later.to_string().contains(&lab), "{later}");
    });
}

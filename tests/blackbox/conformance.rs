//! Defects a conformance review (demo network, curl) found against R4's search.html,
//! operations.html, parameters.html and http.html: `_elements`/`_summary` applied to
//! included resources, operations refused by POST, `$name` paths answered as ids or types,
//! a REST endpoint for `Parameters`, a `last` link inconsistent with the forward pages,
//! an internal `_include=*` in `$everything`'s `self` link, `$everything`'s `start`/`end`
//! ignored, and `/metadata?mode=`.

use crate::support::*;
use serde_json::{json, Value};

fn diagnostics(outcome: &Value) -> String {
    outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The ids of a Bundle's entries of `mode`, in order.
fn ids_of(bundle: &Value, mode: &str) -> Vec<String> {
    entries(bundle)
        .iter()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
}

/// A Patient with a narrative (not in the summary) and a Condition about it.
fn patient_and_condition(s: &Server) -> (String, String) {
    let patient = s.create(&json!({
        "resourceType": "Patient",
        "text": {"status": "generated",
                 "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Hanako</div>"},
        "name": [{"family": "Conformance", "given": ["Hanako"]}],
        "gender": "female",
    }));
    let pid = patient["id"].as_str().unwrap().to_string();
    let condition = s.create(&json!({
        "resourceType": "Condition",
        "text": {"status": "generated",
                 "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Asthma</div>"},
        "code": {"text": "asthma"},
        "note": [{"text": "not in the summary"}],
        "subject": {"reference": format!("Patient/{pid}")},
    }));
    let cid = condition["id"].as_str().unwrap().to_string();
    (pid, cid)
}

/// search.html (`_elements`, `_summary`): the element list and the summary shape the matches;
/// included resources come whole. Before, the included Patient was cut to
/// {resourceType, id, meta} and marked SUBSETTED.
#[test]
fn elements_and_summary_shape_matches_not_includes() {
    for_each_backend(|s| {
        let (pid, cid) = patient_and_condition(s);
        for (shape, kept, dropped) in [
            ("_elements=code", "code", "note"),
            ("_summary=true", "code", "text"),
            ("_summary=data", "note", "text"),
        ] {
            let bundle = s.read_json(&format!(
                "Condition?_id={cid}&_include=Condition:subject&{shape}"
            ));
            let found = entries(&bundle);
            let matched = found
                .iter()
                .find(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"].clone())
                .unwrap_or_else(|| panic!("{shape}: no match in {bundle}"));
            assert!(matched.get(kept).is_some(), "{shape}: {matched}");
            assert!(matched.get(dropped).is_none(), "{shape}: {matched}");
            assert!(subsetted(&matched), "{shape}: {matched}");
            let included = found
                .iter()
                .find(|e| e["search"]["mode"] == "include")
                .map(|e| e["resource"].clone())
                .unwrap_or_else(|| panic!("{shape}: no include in {bundle}"));
            assert_eq!(included["id"], json!(pid), "{shape}");
            assert_eq!(included["name"][0]["family"], "Conformance", "{shape}");
            assert_eq!(included["text"]["status"], "generated", "{shape}");
            assert!(!subsetted(&included), "{shape}: {included}");
        }
        // XML goes through the same shaping.
        let xml = s
            .get(&format!(
                "Condition?_id={cid}&_include=Condition:subject&_elements=code&_format=xml"
            ))
            .expect(200);
        assert!(xml.body.contains("Conformance"), "{}", xml.body);
        assert!(!xml.body.contains("not in the summary"), "{}", xml.body);
    });
}

fn parameters(parameter: Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// operations.html: an operation is invoked by POST with a Parameters body; GET is the
/// alternative. `POST Patient/{id}/$everything` answers what the GET form answers, in JSON
/// and XML; a body that is no Parameters, or names an unknown parameter, is a 400 with an
/// OperationOutcome; no token is a 401 whatever the body.
#[test]
fn everything_is_invoked_by_post_with_parameters() {
    for_each_backend(|s| {
        let (pid, cid) = patient_and_condition(s);
        let observation = s.create(&json!({
            "resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
            "subject": {"reference": format!("Patient/{pid}")},
        }));
        let oid = observation["id"].as_str().unwrap().to_string();
        let path = format!("Patient/{pid}/$everything");

        let all = s
            .post(&path, &json!({"resourceType": "Parameters"}))
            .expect(200)
            .json();
        let mut found = ids_of(&all, "match");
        found.sort();
        let mut expected = vec![pid.clone(), cid.clone(), oid.clone()];
        expected.sort();
        assert_eq!(found, expected, "{all}");

        let narrowed = parameters(json!([
            {"name": "_type", "valueCode": "Condition"},
            {"name": "_type", "valueCode": "Patient"},
            {"name": "_count", "valueUnsignedInt": 1},
            {"name": "_since", "valueInstant": "2000-01-01T00:00:00Z"},
        ]));
        let posted = s.post(&path, &narrowed).expect(200).json();
        let got = s.read_json(&format!(
            "{path}?_type=Condition,Patient&_count=1&_since=2000-01-01T00:00:00Z"
        ));
        assert_eq!(ids_of(&posted, "match"), ids_of(&got, "match"));
        assert_eq!(ids_of(&posted, "match").len(), 1, "{posted}");
        assert_eq!(link(&posted, "self"), link(&got, "self"));
        let (pages, _) = s.all_pages(&link(&posted, "self").unwrap());
        let mut paged = sorted_match_ids(&pages);
        paged.sort();
        let mut wanted = vec![pid.clone(), cid.clone()];
        wanted.sort();
        assert_eq!(paged, wanted);

        let xml = "<Parameters xmlns=\"http://hl7.org/fhir\"><parameter><name value=\"_type\"/>\
             <valueCode value=\"Observation\"/></parameter><parameter><name value=\"_count\"/>\
             <valueUnsignedInt value=\"5\"/></parameter></Parameters>";
        let from_xml = s
            .send_raw("POST", &path, FHIR_XML, xml.as_bytes())
            .expect(200);
        assert!(from_xml.body.contains(&oid), "{}", from_xml.body);
        assert!(!from_xml.body.contains(&cid), "{}", from_xml.body);

        for (body, says) in [
            (json!({"resourceType": "Patient"}), "Parameters"),
            (
                parameters(json!([{"name": "stop", "valueDate": "2024-01-01"}])),
                "not 'stop'",
            ),
            (
                parameters(json!([{"name": "_count", "valueString": "5"}])),
                "valueString",
            ),
            (
                parameters(json!([{"name": "_type", "valueCode": "Nonsense"}])),
                "Nonsense",
            ),
        ] {
            let r = s.post(&path, &body).expect(400);
            assert!(diagnostics(&r.outcome()).contains(says), "{}", r.body);
        }
        s.send_raw("POST", &path, "text/plain", b"_count=1")
            .expect(415)
            .outcome();
        // The token first: an invalid body is never looked at without one.
        s.anonymous()
            .post(&path, &json!({"resourceType": "Patient"}))
            .expect(401);
        let r = s
            .put(&path, &json!({"resourceType": "Parameters"}))
            .expect(405);
        assert_eq!(r.header("allow"), Some("GET, HEAD, POST, OPTIONS"));
    });
}

/// `$ihe-pix` by POST with a Parameters body answers as its GET form; the token is checked
/// first.
#[test]
fn pix_is_invoked_by_post_with_parameters() {
    for_each_backend(|s| {
        s.create(&json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11319999991", "value": "PX-1"}],
            "name": [{"family": "Pix"}],
        }));
        let source = "urn:oid:1.2.392.100495.20.3.51.11319999991|PX-1";
        let by_get = s.get(&format!("Patient/$ihe-pix?sourceIdentifier={source}"));
        let posted = parameters(json!([{"name": "sourceIdentifier", "valueIdentifier":
            {"system": "urn:oid:1.2.392.100495.20.3.51.11319999991", "value": "PX-1"}}]));
        let by_post = s.post("Patient/$ihe-pix", &posted);
        assert_eq!(by_post.status, by_get.status, "{}", by_post.body);
        assert_json_eq(&by_post.json(), &by_get.json(), "POST and GET $ihe-pix");
        let as_string = parameters(json!([
            {"name": "sourceIdentifier", "valueString": source},
            {"name": "targetSystem", "valueUri": "urn:oid:9.9.9"},
        ]));
        let by_get = s.get(&format!(
            "Patient/$ihe-pix?sourceIdentifier={source}&targetSystem=urn:oid:9.9.9"
        ));
        let by_post = s.post("Patient/$ihe-pix", &as_string);
        assert_eq!(by_post.status, by_get.status, "{}", by_post.body);
        let xml = "<Parameters xmlns=\"http://hl7.org/fhir\"><parameter>\
                   <name value=\"sourceIdentifier\"/><valueIdentifier>\
                   <system value=\"urn:oid:1.2.392.100495.20.3.51.11319999991\"/>\
                   <value value=\"PX-1\"/></valueIdentifier></parameter></Parameters>";
        let by_xml = s.send_raw("POST", "Patient/$ihe-pix", FHIR_XML, xml.as_bytes());
        let by_get = s.get(&format!("Patient/$ihe-pix?sourceIdentifier={source}"));
        assert_eq!(by_xml.status, by_get.status, "{}", by_xml.body);

        let unknown = parameters(json!([{"name": "bogus", "valueString": "x"}]));
        let r = s.post("Patient/$ihe-pix", &unknown).expect(400);
        assert!(diagnostics(&r.outcome()).contains("'bogus'"), "{}", r.body);
        s.post("Patient/$ihe-pix", &json!({"resourceType": "Patient"}))
            .expect(400)
            .outcome();
        s.anonymous().post("Patient/$ihe-pix", &unknown).expect(401);
        let r = s.put("Patient/$ihe-pix", &unknown).expect(405);
        assert_eq!(r.header("allow"), Some("GET, HEAD, POST, OPTIONS"));
    });
}

/// A `$name` path is an operation: type-level `$everything` says to name the patient; an
/// operation not served says so (404 not-supported), never "'$x' is not a valid FHIR id" or
/// "'$x' is not a resource type".
#[test]
fn operation_paths_are_answered_as_operations() {
    for_each_backend(|s| {
        let r = s.get("Patient/$everything").expect(400);
        let outcome = r.outcome();
        assert_eq!(outcome["issue"][0]["code"], "not-supported", "{outcome}");
        assert!(
            diagnostics(&outcome).contains("Patient/[id]/$everything"),
            "{outcome}"
        );
        s.post(
            "Patient/$everything",
            &json!({"resourceType": "Parameters"}),
        )
        .expect(400);
        for (method, path, operation) in [
            ("GET", "Patient/x/$validate", "$validate"),
            ("POST", "Patient/x/$validate", "$validate"),
            ("GET", "Patient/x/$meta", "$meta"),
            ("GET", "Observation/x/$everything", "$everything"),
            ("GET", "Patient/$meta", "$meta"),
            ("POST", "Observation/$validate", "$validate"),
            ("GET", "$meta", "$meta"),
            ("POST", "$convert", "$convert"),
        ] {
            let r = s.request(method, path, &[], None).expect(404);
            let outcome = r.outcome();
            assert_eq!(outcome["issue"][0]["code"], "not-supported", "{path}");
            let text = diagnostics(&outcome);
            assert!(
                text.contains(&format!("operation {operation} is not supported")),
                "{method} {path}: {text}"
            );
        }
        // An unknown type is still named as such.
        let r = s.get("Foo/x/$meta").expect(404);
        assert!(diagnostics(&r.outcome()).contains("'Foo'"), "{}", r.body);
        // The operation that is served still answers HEAD.
        let patient = s.create(&json!({"resourceType": "Patient"}));
        let path = format!("Patient/{}/$everything", patient["id"].as_str().unwrap());
        let head = s.request("HEAD", &path, &[], None).expect(200);
        assert!(head.body.is_empty());
    });
}

/// parameters.html: Parameters has no RESTful endpoint. Every request on /Parameters is an
/// unknown endpoint (404 with an OperationOutcome), also inside a Bundle; the
/// CapabilityStatement does not list it. A Parameters body of an operation or a FHIRPath
/// Patch is unaffected.
#[test]
fn parameters_has_no_rest_endpoint() {
    for_each_backend(|s| {
        let body = parameters(json!([{"name": "x", "valueString": "y"}]));
        for (method, path) in [
            ("POST", "Parameters"),
            ("GET", "Parameters"),
            ("GET", "Parameters/p1"),
            ("PUT", "Parameters/p1"),
            ("DELETE", "Parameters/p1"),
            ("GET", "Parameters/_history"),
            ("GET", "Parameters/p1/_history"),
            ("POST", "Parameters/_search"),
            ("PUT", "Parameters?_id=p1"),
        ] {
            let r = s.send_json(method, path, &body).expect(404);
            let text = diagnostics(&r.outcome());
            assert!(text.contains("no REST endpoint"), "{method} {path}: {text}");
        }
        let r = s.get("?_type=Parameters").expect(400);
        assert!(diagnostics(&r.outcome()).contains("no REST endpoint"));

        let entry = |method: &str, url: &str| {
            json!({"fullUrl": "urn:uuid:6f0a8c59-3d0b-4f5e-8a43-0d9f7e1c2b3a",
                   "resource": body, "request": {"method": method, "url": url}})
        };
        let transaction = json!({"resourceType": "Bundle", "type": "transaction",
                                 "entry": [entry("POST", "Parameters")]});
        let r = s.post("", &transaction).expect(404);
        assert!(
            diagnostics(&r.outcome()).contains("no REST endpoint"),
            "{}",
            r.body
        );
        let batch = json!({"resourceType": "Bundle", "type": "batch",
                           "entry": [entry("PUT", "Parameters/p1")]});
        let answer = s.post("", &batch).expect(200).json();
        assert_eq!(
            answer["entry"][0]["response"]["status"]
                .as_str()
                .unwrap_or_default()
                .split(' ')
                .next(),
            Some("404"),
            "{answer}"
        );
        // A Bundle may still be stored, and a FHIRPath Patch is still a Parameters body.
        s.post(
            "Bundle",
            &json!({"resourceType": "Bundle", "type": "collection"}),
        )
        .expect(201);
        let patient = s.create(&json!({"resourceType": "Patient", "active": false}));
        let patch = parameters(json!([{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.active"},
            {"name": "value", "valueBoolean": true}]}]));
        s.send_json(
            "PATCH",
            &format!("Patient/{}", patient["id"].as_str().unwrap()),
            &patch,
        )
        .expect(200);

        let statement = s.read_json("metadata");
        let listed = statement["rest"][0]["resource"].as_array().unwrap();
        assert!(!listed.iter().any(|r| r["type"] == "Parameters"));
        assert!(listed.iter().any(|r| r["type"] == "Bundle"));
    });
}

/// Paging by keyset: for 9 matches at `_count=5`, the forward chain is [0–4], [5–8] and
/// `previous` from the second page is [0–4] again. There is no `last` link: a page read
/// backwards from the end would be [4–8], one entry on two pages.
#[test]
fn paging_links_agree_with_the_forward_chain() {
    for_each_backend(|s| {
        let mut ids: Vec<String> = (0..9)
            .map(|i| {
                let id = format!("pg-{i}");
                s.put(
                    &format!("Condition/{id}"),
                    &json!({"resourceType": "Condition", "id": id,
                            "meta": {"tag": [{"system": "urn:conformance", "code": "paging"}]},
                            "subject": {"reference": "Patient/nobody"}}),
                )
                .expect(201);
                id
            })
            .collect();
        ids.sort();
        let first = s.read_json("Condition?_tag=urn:conformance|paging&_count=5&_sort=_id");
        assert_eq!(ids_of(&first, "match"), ids[..5]);
        assert_eq!(link(&first, "last"), None, "{first}");
        assert_eq!(link(&first, "previous"), None, "{first}");
        let second = s.read_json(&link(&first, "next").expect("next"));
        assert_eq!(ids_of(&second, "match"), ids[5..]);
        assert_eq!(link(&second, "next"), None, "{second}");
        assert_eq!(link(&second, "last"), None, "{second}");
        let back = s.read_json(&link(&second, "previous").expect("previous"));
        assert_eq!(ids_of(&back, "match"), ids[..5]);
        assert_eq!(link(&back, "first"), link(&first, "self"));
    });
}

/// `$everything`'s `self` link lists the parameters the client sent that took effect, as
/// sent: not the `_include=*` it runs with, and `_since` rather than its `_lastUpdated`.
#[test]
fn everything_links_show_only_what_was_asked() {
    for_each_backend(|s| {
        let (pid, _) = patient_and_condition(s);
        let bundle = s.read_json(&format!("Patient/{pid}/$everything?_count=5"));
        let this = link(&bundle, "self").expect("self");
        assert!(
            this.ends_with(&format!("Patient/{pid}/$everything?_count=5")),
            "{this}"
        );
        let since = "2000-01-01T00:00:00Z";
        let bundle = s.read_json(&format!(
            "Patient/{pid}/$everything?_since={since}&_count=1&_type=Patient,Condition"
        ));
        let this = link(&bundle, "self").expect("self");
        assert!(!this.contains("_include"), "{this}");
        assert!(!this.contains("_lastUpdated"), "{this}");
        assert!(this.contains(&format!("_since={since}")), "{this}");
        let next = link(&bundle, "next").expect("next");
        assert!(!next.contains("_include"), "{next}");
        let second = s.read_json(&next);
        assert_eq!(ids_of(&second, "match").len(), 1, "{second}");
        assert!(link(&second, "next").is_none(), "{second}");
    });
}

/// http.html (capabilities): `mode=terminology` asks for TerminologyCapabilities, which this
/// server does not offer (400 with an OperationOutcome); an unknown `mode` is a 400; `full`,
/// `normative` or no mode give the CapabilityStatement, and `_summary=true` its summary.
#[test]
fn metadata_modes() {
    for_each_backend(|s| {
        for mode in ["", "?mode=full", "?mode=normative"] {
            let statement = s.read_json(&format!("metadata{mode}"));
            assert_eq!(statement["resourceType"], "CapabilityStatement", "{mode}");
            assert!(statement["rest"].is_array(), "{mode}");
        }
        let r = s.anonymous().get("metadata?mode=terminology").expect(400);
        let outcome = r.outcome();
        assert_eq!(outcome["issue"][0]["code"], "not-supported");
        assert!(diagnostics(&outcome).contains("TerminologyCapabilities"));
        let r = s.get("metadata?mode=bogus").expect(400);
        assert!(diagnostics(&r.outcome()).contains("'bogus'"));
        let summary = s.read_json("metadata?_summary=true");
        assert_eq!(summary["resourceType"], "CapabilityStatement");
        assert_eq!(summary["fhirVersion"], "4.0.1");
        assert!(subsetted(&summary), "{summary}");
        let full = s.read_json("metadata");
        assert!(summary.to_string().len() < full.to_string().len());
        s.get("metadata?_summary=bogus").expect(400).outcome();
    });
}

/// Patient-everything's `start`/`end`: a care date range over each record's clinical date;
/// records with no care date (the Patient, an Observation without `effective[x]`) are always
/// included. The bounds cover the periods they name, come back in the links, and may be
/// posted as `valueDate`.
#[test]
fn everything_start_and_end_bound_the_care_dates() {
    for_each_backend(|s| {
        let patient = s.create(&json!({"resourceType": "Patient"}));
        let pid = patient["id"].as_str().unwrap().to_string();
        let observation = |id: &str, when: Option<&str>| {
            let mut body = json!({"resourceType": "Observation", "id": id, "status": "final",
                                  "code": {"text": id},
                                  "subject": {"reference": format!("Patient/{pid}")}});
            if let Some(when) = when {
                body["effectiveDateTime"] = json!(when);
            }
            s.put(&format!("Observation/{id}"), &body).expect(201);
        };
        observation("care-2023", Some("2023-06-15T10:00:00Z"));
        observation("care-2024", Some("2024-06-15"));
        observation("care-none", None);
        s.put(
            "Condition/care-2022",
            &json!({"resourceType": "Condition", "id": "care-2022",
                    "onsetDateTime": "2022-01-10",
                    "subject": {"reference": format!("Patient/{pid}")}}),
        )
        .expect(201);
        let everything = |query: &str| -> Vec<String> {
            let (all, _) = s.all_pages(&format!("Patient/{pid}/$everything?_count=2&{query}"));
            sorted_match_ids(&all)
        };
        let with = |ids: &[&str]| -> Vec<String> {
            let mut ids: Vec<String> = ids
                .iter()
                .map(|id| id.to_string())
                .chain([pid.clone()])
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(
            everything(""),
            with(&["care-2022", "care-2023", "care-2024", "care-none"])
        );
        assert_eq!(
            everything("start=2024-01-01"),
            with(&["care-2024", "care-none"])
        );
        assert_eq!(
            everything("end=2023"),
            with(&["care-2022", "care-2023", "care-none"])
        );
        assert_eq!(
            everything("start=2023-01&end=2023-12-31"),
            with(&["care-2023", "care-none"])
        );
        assert_eq!(everything("start=2025-01-01"), with(&["care-none"]));
        // A period counts by overlap: an admission that began before `start` and ended within
        // the range, one still open, and one that ended before it.
        let encounter = |id: &str, period: Value| {
            s.put(
                &format!("Encounter/{id}"),
                &json!({"resourceType": "Encounter", "id": id, "status": "finished",
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                        "subject": {"reference": format!("Patient/{pid}")}, "period": period}),
            )
            .expect(201);
        };
        encounter(
            "stay-across",
            json!({"start": "2024-12-20", "end": "2025-01-10"}),
        );
        encounter("stay-open", json!({"start": "2024-11-01"}));
        encounter(
            "stay-before",
            json!({"start": "2024-10-01", "end": "2024-10-20"}),
        );
        // Known only by its end: it ended before the ranges asked below.
        encounter("stay-end-only", json!({"end": "2024-06-01"}));
        assert_eq!(
            everything("start=2025-01-01&_type=Encounter"),
            vec!["stay-across".to_string(), "stay-open".to_string()]
        );
        assert_eq!(
            everything("start=2024-10-05&end=2024-10-06&_type=Encounter"),
            vec!["stay-before".to_string()]
        );
        assert_eq!(
            everything("end=2024-10-31&_type=Encounter"),
            vec!["stay-before".to_string(), "stay-end-only".to_string()]
        );
        // A date given to the month covers the month.
        observation("care-month", Some("2024-12"));
        assert_eq!(
            everything("start=2024-12-15&end=2024-12-15&_type=Observation"),
            vec!["care-month".to_string(), "care-none".to_string()]
        );

        let page = s.read_json(&format!(
            "Patient/{pid}/$everything?start=2023-01-01&end=2023-12-31&_count=1"
        ));
        let this = link(&page, "self").expect("self");
        assert!(
            this.contains("start=2023-01-01") && this.contains("end=2023-12-31"),
            "{this}"
        );
        assert!(
            entries(&page)
                .iter()
                .all(|e| e["search"]["mode"] != "outcome"),
            "{page}"
        );

        let posted = s
            .post(
                &format!("Patient/{pid}/$everything"),
                &json!({"resourceType": "Parameters", "parameter": [
                    {"name": "start", "valueDate": "2024-01-01"},
                    {"name": "_count", "valueUnsignedInt": 100},
                ]}),
            )
            .expect(200)
            .json();
        assert_eq!(
            sorted_match_ids(&entries(&posted)),
            with(&[
                "care-2024",
                "care-month",
                "care-none",
                "stay-across",
                "stay-before",
                "stay-end-only",
                "stay-open"
            ])
        );

        for (query, says) in [
            ("start=ge2024", "not a FHIR date"),
            ("end=soon", "not a FHIR date"),
            ("start=2024-02-01&end=2024-01-01", "is after end"),
            ("start=2024&start=2023", "only once"),
        ] {
            let r = s
                .get(&format!("Patient/{pid}/$everything?{query}"))
                .expect(400);
            assert!(
                diagnostics(&r.outcome()).contains(says),
                "{query}: {}",
                r.body
            );
        }
    });
}

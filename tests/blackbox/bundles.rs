//! Transactions and batches posted to the base URL, and the Synthea corpus.

use crate::support::*;
use serde_json::{json, Value};
use std::time::Instant;

fn entry_status(entry: &Value) -> &str {
    entry["response"]["status"].as_str().unwrap_or_default()
}

fn count_type(s: &Server, res_type: &str) -> usize {
    // Every resource written once: the type history has one entry per resource.
    let (entries, _) = s.all_pages(&format!("{res_type}/_history?_count=1000"));
    entries.len()
}

#[test]
fn transaction_rewrites_urn_uuid_references() {
    for_each_backend(|s| {
        let pat_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let obs_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                // The Observation comes first: references resolve whatever the order.
                {"fullUrl": obs_urn, "resource": {
                    "resourceType": "Observation", "status": "final",
                    "code": {"text": "weight"},
                    "subject": {"reference": pat_urn},
                    "valueQuantity": {"value": 72.5, "unit": "kg"}},
                 "request": {"method": "POST", "url": "Observation"}},
                {"fullUrl": pat_urn, "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
                 "request": {"method": "POST", "url": "Patient"}}
            ]
        });
        let r = s.post("", &bundle).expect(200);
        let resp = r.json();
        assert_eq!(resp["type"], "transaction-response");
        let e = entries(&resp);
        assert_eq!(e.len(), 2);
        for x in &e {
            assert!(
                x["response"]["status"].as_str().unwrap().starts_with("201"),
                "{x}"
            );
            assert!(
                x["response"]["location"].as_str().is_some(),
                "location in {x}"
            );
            assert_eq!(x["response"]["etag"], "W/\"1\"");
        }
        // Response entries are in request order.
        let obs_loc = e[0]["response"]["location"].as_str().unwrap();
        let pat_loc = e[1]["response"]["location"].as_str().unwrap();
        assert!(obs_loc.contains("Observation/"), "{obs_loc}");
        assert!(pat_loc.contains("Patient/"), "{pat_loc}");
        let pat_id = pat_loc
            .split("Patient/")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let obs_id = obs_loc
            .split("Observation/")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let obs = s.read_json(&format!("Observation/{obs_id}"));
        assert_eq!(
            obs["subject"]["reference"],
            json!(format!("Patient/{pat_id}"))
        );
        assert_eq!(obs["valueQuantity"]["value"].to_string(), "72.5");
        assert_eq!(
            s.read_json(&format!("Patient/{pat_id}"))["name"][0]["family"],
            "Tx"
        );
        // Base URL with a trailing slash works too.
        let empty = s
            .post(
                "/",
                &json!({"resourceType": "Bundle", "type": "transaction"}),
            )
            .expect(200)
            .json();
        assert_eq!(empty["type"], "transaction-response");
        assert!(entries(&empty).is_empty());
    });
}

#[test]
fn transaction_is_atomic() {
    for_each_backend(|s| {
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": {"resourceType": "Patient", "id": "atomic-1", "name": [{"family": "First"}]},
                 "request": {"method": "PUT", "url": "Patient/atomic-1"}},
                {"resource": {"resourceType": "Patient", "id": "atomic-2", "gender": "not-a-gender-code-with spaces", "bogus": 1},
                 "request": {"method": "PUT", "url": "Patient/atomic-2"}}
            ]
        });
        let r = s.post("", &bundle);
        assert!(
            (400..500).contains(&r.status),
            "invalid entry: {} {}",
            r.status,
            r.body
        );
        r.outcome();
        s.get("Patient/atomic-1").expect(404);
        s.get("Patient/atomic-2").expect(404);
        assert_eq!(count_type(s, "Patient"), 0);

        // A failing precondition late in the transaction rolls back earlier writes too.
        s.put(
            "Patient/atomic-3",
            &json!({"resourceType": "Patient", "id": "atomic-3"}),
        )
        .expect(201);
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": {"resourceType": "Patient", "name": [{"family": "New"}]},
                 "request": {"method": "POST", "url": "Patient"}},
                {"resource": {"resourceType": "Patient", "id": "atomic-3", "active": false},
                 "request": {"method": "PUT", "url": "Patient/atomic-3", "ifMatch": "W/\"9\""}}
            ]
        });
        s.post("", &bundle).expect(412);
        assert_eq!(count_type(s, "Patient"), 1);
        assert_eq!(s.read_json("Patient/atomic-3")["meta"]["versionId"], "1");
        // Not a Bundle, or a Bundle of another type.
        s.post("", &json!({"resourceType": "Patient"})).expect(400);
        s.post("", &json!({"resourceType": "Bundle", "type": "collection"}))
            .expect(400);
    });
}

#[test]
fn batch_reports_each_entry() {
    for_each_backend(|s| {
        s.put(
            "Patient/batch-existing",
            &json!({"resourceType": "Patient", "id": "batch-existing"}),
        )
        .expect(201);
        let bundle = json!({
            "resourceType": "Bundle", "type": "batch",
            "entry": [
                {"resource": {"resourceType": "Patient", "name": [{"family": "Ok"}]},
                 "request": {"method": "POST", "url": "Patient"}},
                // Valid content, invalid request: the body id differs from the URL id.
                {"resource": {"resourceType": "Patient", "id": "xyz"},
                 "request": {"method": "PUT", "url": "Patient/abc"}},
                {"request": {"method": "GET", "url": "Patient/batch-existing"}},
                {"request": {"method": "GET", "url": "Patient/batch-missing"}},
                {"request": {"method": "DELETE", "url": "Patient/batch-existing"}}
            ]
        });
        let r = s.post("", &bundle).expect(200).json();
        assert_eq!(r["type"], "batch-response");
        let e = entries(&r);
        assert_eq!(e.len(), 5);
        let status = |i: usize| {
            e[i]["response"]["status"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        assert!(status(0).starts_with("201"), "{}", e[0]);
        assert!(status(1).starts_with("400"), "{}", e[1]);
        assert_eq!(
            e[1]["response"]["outcome"]["resourceType"], "OperationOutcome",
            "{}",
            e[1]
        );
        assert!(status(2).starts_with("200"), "{}", e[2]);
        // A read answers with its resource, without any Prefer header (that governs writes).
        assert_eq!(e[2]["resource"]["id"], "batch-existing", "{}", e[2]);
        assert!(e[0].get("resource").is_none(), "{}", e[0]);
        assert!(status(3).starts_with("404"), "{}", e[3]);
        assert!(status(4).starts_with("204"), "{}", e[4]);
        // The good entries took effect (history: batch-existing v1 + its delete, and "Ok").
        assert_eq!(count_type(s, "Patient"), 3);
        s.get("Patient/abc").expect(404);
        s.get("Patient/batch-existing").expect(410);
        // A resource that is not valid FHIR fails its own entry; the others go on. In a
        // transaction it fails the whole Bundle.
        let mut bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Patient", "name": [{"family": "Kept"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "gender": "unknown-code", "bogus": 1},
             "request": {"method": "POST", "url": "Patient"}}]});
        let r = s.post("", &bundle).expect(200).json();
        let e = entries(&r);
        assert!(entry_status(&e[0]).starts_with("201"), "{}", e[0]);
        assert!(entry_status(&e[1]).starts_with("400"), "{}", e[1]);
        let reason = e[1]["response"]["outcome"].to_string();
        assert!(
            reason.contains("entry[1]") && reason.contains("bogus"),
            "{reason}"
        );
        // Each issue as a plain create or a transaction states it: its code and element path
        // (a review found one `invalid` issue with the paths folded into its text).
        let issues = e[1]["response"]["outcome"]["issue"].as_array().unwrap();
        let gender = issues
            .iter()
            .find(|issue| issue["expression"][0] == "Bundle.entry[1].resource.gender")
            .unwrap_or_else(|| panic!("{reason}"));
        assert_eq!(gender["code"], "code-invalid", "{reason}");
        assert!(issues.len() >= 2, "{reason}");
        // The same batch in XML.
        let xml_batch = concat!(
            r#"<Bundle xmlns="http://hl7.org/fhir"><type value="batch"/>"#,
            r#"<entry><resource><Patient><name><family value="XmlKept"/></name></Patient>"#,
            r#"</resource><request><method value="POST"/><url value="Patient"/></request></entry>"#,
            r#"<entry><resource><Patient><gender value="unknown-code"/></Patient></resource>"#,
            r#"<request><method value="POST"/><url value="Patient"/></request></entry></Bundle>"#
        );
        // Also an entry whose resource does not even read as FHIR XML (an unknown element):
        // a review found that whole XML batch refused while JSON failed the one entry.
        let unreadable = xml_batch.replace("XmlKept", "XmlKeptToo").replace(
            r#"<gender value="unknown-code"/>"#,
            r#"<nickname value="x"/>"#,
        );
        for (body, kept, why) in [
            (xml_batch.to_string(), "XmlKept", "gender"),
            (unreadable, "XmlKeptToo", "nickname"),
        ] {
            let r = s
                .request(
                    "POST",
                    "",
                    &[
                        ("Content-Type", "application/fhir+xml"),
                        ("Accept", "application/fhir+json"),
                    ],
                    Some(body.into_bytes()),
                )
                .expect(200)
                .json();
            let e = entries(&r);
            assert!(entry_status(&e[0]).starts_with("201"), "{}", e[0]);
            assert!(entry_status(&e[1]).starts_with("400"), "{}", e[1]);
            let reason = e[1]["response"]["outcome"].to_string();
            assert!(
                reason.contains("entry[1]") && reason.contains(why),
                "{reason}"
            );
            let (kept_xml, _) = s.all_pages(&format!("Patient?family={kept}"));
            assert_eq!(kept_xml.len(), 1);
        }
        bundle["type"] = json!("transaction");
        s.post("", &bundle).expect(400);
        // Stored as a resource rather than processed, the batch must be valid as a whole.
        bundle["type"] = json!("batch");
        s.post("Bundle", &bundle).expect(400);
        let (kept, _) = s.all_pages("Patient?family=Kept");
        assert_eq!(kept.len(), 1);
        // An entry URL on another server's base names nothing here (a review found
        // `DELETE http://evil.example/fhir/Patient?_id=…` deleting the local record).
        let id = kept[0]["resource"]["id"].as_str().unwrap().to_string();
        for url in [
            format!("http://evil.example/fhir/Patient?_id={id}"),
            format!("https://other.example/fhir/Patient/{id}"),
        ] {
            let foreign = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"request": {"method": "DELETE", "url": url}}]});
            let refused = s.post("", &foreign).expect(400);
            assert!(refused.body.contains("another server"), "{}", refused.body);
        }
        s.get(&format!("Patient/{id}")).expect(200);
        // Criteria whose escapes do not decode to UTF-8 are refused, as in a request's own
        // query (a review found `%FF` read as U+FFFD, deleting the record carrying it).
        let replacement = s.create(&json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:ex:ff", "value": "\u{fffd}"}]}));
        let replacement = format!("Patient/{}", replacement["id"].as_str().unwrap_or_default());
        for entry in [
            json!({"request": {"method": "DELETE", "url": "Patient?identifier=urn:ex:ff|%FF"}}),
            json!({"request": {"method": "PUT", "url": "Patient?identifier=urn:ex:ff|%FF"},
                "resource": {"resourceType": "Patient", "active": true}}),
            json!({"request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:ex:ff|%FF"},
                "resource": {"resourceType": "Patient", "active": true}}),
        ] {
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
            let refused = s.post("", &bundle);
            assert_eq!(refused.status, 400, "{}", refused.body);
            assert!(refused.body.contains("UTF-8"), "{}", refused.body);
        }
        let kept = s.get(&replacement).expect(200).json();
        assert_eq!(kept["meta"]["versionId"], "1", "{kept}");
        // A read with the client's current version answers 304 without the resource.
        s.put(
            "Patient/batch-etag",
            &json!({"resourceType": "Patient", "id": "batch-etag"}),
        )
        .expect(201);
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Patient/batch-etag", "ifNoneMatch": "W/\"1\""}},
            {"request": {"method": "GET", "url": "Patient/batch-etag", "ifNoneMatch": "W/\"7\""}}]});
        let r = s.post("", &bundle).expect(200).json();
        let e = entries(&r);
        assert!(entry_status(&e[0]).starts_with("304"), "{}", e[0]);
        assert!(e[0].get("resource").is_none(), "{}", e[0]);
        assert!(entry_status(&e[1]).starts_with("200"), "{}", e[1]);
        assert_eq!(e[1]["resource"]["id"], "batch-etag");
        // `ifModifiedSince` likewise (a review found it ignored), unless `ifNoneMatch` is
        // given, which decides alone; a value that is no instant is refused.
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Patient/batch-etag", "ifModifiedSince": "2999-01-01T00:00:00Z"}},
            {"request": {"method": "GET", "url": "Patient/batch-etag", "ifModifiedSince": "2000-01-01T00:00:00Z"}},
            {"request": {"method": "GET", "url": "Patient/batch-etag", "ifModifiedSince": "2999-01-01T00:00:00Z",
                         "ifNoneMatch": "W/\"7\""}}]});
        let r = s.post("", &bundle).expect(200).json();
        let e = entries(&r);
        assert!(entry_status(&e[0]).starts_with("304"), "{}", e[0]);
        assert!(e[0].get("resource").is_none(), "{}", e[0]);
        assert!(entry_status(&e[1]).starts_with("200"), "{}", e[1]);
        assert!(entry_status(&e[2]).starts_with("200"), "{}", e[2]);
        // A read's parameters shape its answer as outside a Bundle (a review found them
        // taken for part of the id).
        let shaped = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Patient/batch-etag?_elements=active"}},
            {"request": {"method": "GET", "url": "Patient/batch-etag/_history/1?_summary=true&_format=json"}},
            {"request": {"method": "GET", "url": "Patient/batch-etag?_count=3"}}]});
        let r = s.post("", &shaped).expect(200).json();
        let e = entries(&r);
        assert!(entry_status(&e[0]).starts_with("200"), "{}", e[0]);
        assert_eq!(e[0]["resource"]["id"], "batch-etag", "{}", e[0]);
        assert!(
            e[0]["resource"]["meta"].to_string().contains("SUBSETTED"),
            "{}",
            e[0]
        );
        assert!(entry_status(&e[1]).starts_with("200"), "{}", e[1]);
        assert_eq!(e[1]["resource"]["id"], "batch-etag", "{}", e[1]);
        assert!(entry_status(&e[2]).starts_with("400"), "{}", e[2]);
        assert!(e[2].to_string().contains("_count"), "{}", e[2]);
        let bad = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Patient/batch-etag", "ifModifiedSince": "yesterday"}}]});
        let answer = s.post("", &bad);
        assert_eq!(answer.status, 400, "{}", answer.body);
    });
}

#[test]
fn transaction_conditional_references_and_creates() {
    for_each_backend(|s| {
        let sys = "urn:oid:2.16.840.1";
        let existing = s.create(
            &json!({"resourceType": "Patient", "identifier": [{"system": sys, "value": "P-77"}]}),
        );
        let existing_id = existing["id"].as_str().unwrap();
        let org_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                              "subject": {"reference": format!("Patient?identifier={sys}|P-77")},
                              "performer": [{"reference": org_urn}]},
                 "request": {"method": "POST", "url": "Observation"}},
                // ifNoneExist matching the existing patient: not created again.
                {"resource": {"resourceType": "Patient", "identifier": [{"system": sys, "value": "P-77"}]},
                 "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={sys}|P-77")}},
                {"fullUrl": org_urn, "resource": {"resourceType": "Organization", "name": "Clinic",
                              "identifier": [{"system": "urn:org", "value": "O1"}]},
                 "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|O1"}}
            ]
        });
        let r = s.post("", &bundle).expect(200).json();
        let e = entries(&r);
        assert!(e[0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("201"));
        assert!(
            e[1]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("200"),
            "ifNoneExist: {}",
            e[1]
        );
        assert!(
            e[2]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("201"),
            "{}",
            e[2]
        );
        let obs_loc = e[0]["response"]["location"].as_str().unwrap();
        let obs_id = obs_loc
            .split("Observation/")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let obs = s.read_json(&format!("Observation/{obs_id}"));
        assert_eq!(
            obs["subject"]["reference"],
            json!(format!("Patient/{existing_id}"))
        );
        let org_ref = obs["performer"][0]["reference"].as_str().unwrap_or("");
        assert!(
            org_ref.starts_with("Organization/") && !org_ref.contains('?'),
            "urn:uuid of a conditional-create entry not rewritten: {org_ref}"
        );
        s.read_json(org_ref);
        assert_eq!(count_type(s, "Patient"), 1);
        // A conditional reference matching nothing fails the transaction.
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                              "subject": {"reference": "Patient?identifier=urn:none|zzz"}},
                 "request": {"method": "POST", "url": "Observation"}}]
        });
        let r = s.post("", &bundle);
        assert!(
            (400..500).contains(&r.status),
            "unresolvable conditional reference: {} {}",
            r.status,
            r.body
        );
        assert_eq!(count_type(s, "Observation"), 1);
    });
}

/// Criteria may hold URLs (identifier systems, absolute references): a conditional entry acts
/// on what its criteria match, and a conditional reference with a URL in its criteria resolves.
#[test]
fn conditional_entries_with_urls_in_their_criteria() {
    for_each_backend(|s| {
        let mrn = "http://hospital.example.org/fhir/mrn";
        s.put(
            "Patient/url-victim",
            &json!({"resourceType": "Patient", "id": "url-victim",
                    "identifier": [{"system": mrn, "value": "V-1"}]}),
        )
        .expect(201);
        let subject = s.url("Patient/url-victim");
        let obs = s.create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "Patient/url-victim"}}));
        let obs_id = obs["id"].as_str().unwrap();
        // A conditional DELETE whose criteria name the Patient by its absolute URL deletes the
        // Observation, not the Patient.
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": format!("Observation?subject={subject}")}}]});
        s.post("", &bundle).expect(200);
        s.get(&format!("Observation/{obs_id}")).expect(410);
        s.get("Patient/url-victim").expect(200);
        // A conditional reference and an ifNoneExist in `Type?criteria` form, with a URL in the
        // criteria.
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
                          "subject": {"reference": format!("Patient?identifier={mrn}|V-1")}},
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": {"resourceType": "Patient", "identifier": [{"system": mrn, "value": "V-1"}]},
             "request": {"method": "POST", "url": "Patient",
                         "ifNoneExist": format!("Patient?identifier={mrn}|V-1")}}]});
        let r = s.post("", &bundle).expect(200).json();
        let e = entries(&r);
        assert!(entry_status(&e[1]).starts_with("200"), "{}", e[1]);
        let location = e[0]["response"]["location"].as_str().unwrap();
        let created = location.split("/_history").next().unwrap();
        let created = &created[created.find("Observation/").unwrap()..];
        assert_eq!(
            s.read_json(created)["subject"]["reference"],
            "Patient/url-victim"
        );
        // Matching nothing fails the transaction (412), nothing is stored as written.
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "z"},
                          "subject": {"reference": format!("Patient?identifier={mrn}|nobody")}},
             "request": {"method": "POST", "url": "Observation"}}]});
        s.post("", &bundle).expect(412);
        let (found, _) = s.all_pages("Observation?code:text=z");
        assert!(found.is_empty(), "{found:?}");
    });
}

/// A conditional update (`PUT Type?criteria`) that creates (no match) inside a transaction:
/// other entries refer to it by its `fullUrl`, which must resolve to the new resource.
#[test]
fn transaction_conditional_put_creating_is_referencable() {
    for_each_backend(|s| {
        let org_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                              "performer": [{"reference": org_urn}]},
                 "request": {"method": "POST", "url": "Observation"}},
                {"fullUrl": org_urn, "resource": {"resourceType": "Organization", "name": "Clinic",
                              "identifier": [{"system": "urn:org", "value": "O1"}]},
                 "request": {"method": "PUT", "url": "Organization?identifier=urn:org|O1"}}
            ]
        });
        let r = s.post("", &bundle).expect(200).json();
        let e = entries(&r);
        assert!(
            e[1]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("201"),
            "{}",
            e[1]
        );
        let obs_loc = e[0]["response"]["location"].as_str().unwrap();
        let obs_id = obs_loc
            .split("Observation/")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let org_loc = e[1]["response"]["location"].as_str().unwrap();
        let org_id = org_loc
            .split("Organization/")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        let obs = s.read_json(&format!("Observation/{obs_id}"));
        assert_eq!(
            obs["performer"][0]["reference"],
            json!(format!("Organization/{org_id}"))
        );
        s.read_json(&format!("Organization/{org_id}"));

        // The same again: now the criteria match, the entry updates that Organization and the
        // reference resolves to it; still one Organization.
        let mut again = bundle.clone();
        let urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        again["entry"][0]["resource"]["performer"][0]["reference"] = json!(urn);
        again["entry"][1]["fullUrl"] = json!(urn);
        let r = s.post("", &again).expect(200).json();
        let e = entries(&r);
        assert!(entry_status(&e[1]).starts_with("200"), "{}", e[1]);
        let obs_id = e[0]["response"]["location"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap()
            .to_string();
        let obs = s.read_json(&format!("Observation/{obs_id}"));
        assert_eq!(
            obs["performer"][0]["reference"],
            json!(format!("Organization/{org_id}"))
        );
        let (found, _) = s.all_pages("Organization?identifier=urn:org|O1");
        assert_eq!(found.len(), 1, "{found:?}");
        let (all, _) = s.all_pages("Organization");
        assert_eq!(all.len(), 1, "{all:?}");
    });
}

/// http.html#trules: "If any resource identities (including resolved identities from
/// conditional update/delete) overlap in steps 1-3, then the transaction SHALL fail."
#[test]
fn transaction_with_overlapping_targets_fails() {
    for_each_backend(|s| {
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": {"resourceType": "Patient", "id": "dup"},
                 "request": {"method": "PUT", "url": "Patient/dup"}},
                {"resource": {"resourceType": "Patient", "id": "dup", "active": true},
                 "request": {"method": "PUT", "url": "Patient/dup"}}
            ]
        });
        let r = s.post("", &bundle);
        assert_eq!(
            r.status,
            400,
            "two PUTs of Patient/dup in one transaction: {}",
            truncate(&r.body, 600)
        );
        r.outcome();
        s.get("Patient/dup").expect(404);

        // Identities resolved from conditional update/delete count too.
        s.put(
            "Patient/known",
            &json!({"resourceType": "Patient", "id": "known",
                    "identifier": [{"system": "urn:mrn", "value": "K1"}]}),
        )
        .expect(201);
        let overlapping = [
            json!([
                {"resource": {"resourceType": "Patient", "id": "known", "active": true},
                 "request": {"method": "PUT", "url": "Patient/known"}},
                {"resource": {"resourceType": "Patient", "active": false,
                              "identifier": [{"system": "urn:mrn", "value": "K1"}]},
                 "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|K1"}}
            ]),
            json!([
                {"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|K1"}},
                {"resource": {"resourceType": "Patient", "id": "known", "active": true},
                 "request": {"method": "PUT", "url": "Patient/known"}}
            ]),
            json!([
                {"request": {"method": "DELETE", "url": "Patient/known"}},
                {"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.active"},
                    {"name": "value", "valueBoolean": true}]}]},
                 "request": {"method": "PATCH", "url": "Patient/known"}}
            ]),
        ];
        for entries in overlapping {
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            let r = s.post("", &bundle);
            assert_eq!(r.status, 400, "{entries}: {}", truncate(&r.body, 600));
            r.outcome();
        }
        let known = s.read_json("Patient/known");
        assert_eq!(known["meta"]["versionId"], "1", "{known}");

        // Not overlapping: one change plus reads of the same resource (step 4), and two POSTs
        // whose ifNoneExist find the same existing resource (they change nothing).
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "id": "known", "active": true,
                          "identifier": [{"system": "urn:mrn", "value": "K1"}]},
             "request": {"method": "PUT", "url": "Patient/known"}},
            {"request": {"method": "GET", "url": "Patient/known"}},
            {"resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|K1"}},
            {"resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|K1"}}
        ]});
        let r = s.post("", &bundle).expect(200).json();
        let listed = entries(&r);
        let statuses: Vec<&str> = listed
            .iter()
            .map(|e| e["response"]["status"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(statuses.len(), 4, "{r}");
        assert!(statuses[0].starts_with("200"), "{statuses:?}");
        assert!(
            statuses[2].starts_with("200") && statuses[3].starts_with("200"),
            "{statuses:?}"
        );
        assert_eq!(s.read_json("Patient/known")["meta"]["versionId"], "2");
    });
}

#[test]
fn transaction_if_none_exist_with_several_matches_fails() {
    for_each_backend(|s| {
        let p =
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": "2"}]});
        s.create(&p);
        s.create(&p);
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": {"resourceType": "Basic", "code": {"text": "first"}},
                 "request": {"method": "POST", "url": "Basic"}},
                {"resource": p, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:t|2"}}
            ]
        });
        s.post("", &bundle).expect(412).outcome();
        assert_eq!(count_type(s, "Basic"), 0);
        assert_eq!(count_type(s, "Patient"), 2);
    });
}

fn post_bundle_file(s: &Server, path: &std::path::Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let r = s.send_raw("POST", "", FHIR_JSON, &bytes);
    assert_eq!(
        r.status,
        200,
        "{}: {}",
        path.display(),
        truncate(&r.body, 2000)
    );
    r.json()
}

/// The Synthea corpus: the directory bundles (Organizations, Practitioners) first, then
/// every patient transaction, on both backends (about 20 s each in a debug build).
/// `RENKEI_TEST_SYNTHEA_LIMIT=n` loads only the first n patient bundles.
#[test]
fn synthea_bundles_load() {
    let mut directory: Vec<_> = std::fs::read_dir(fixture("synthea/directory"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    directory.sort();
    assert_eq!(
        directory.len(),
        2,
        "hospitalInformation + practitionerInformation"
    );
    let mut patients: Vec<_> = std::fs::read_dir(fixture("synthea"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    patients.sort();
    assert_eq!(patients.len(), 100, "synthea patient bundles");
    for_each_backend(|s| {
        let limit = std::env::var("RENKEI_TEST_SYNTHEA_LIMIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX);
        let chosen: Vec<_> = patients.iter().take(limit.max(1)).cloned().collect();
        let started = Instant::now();
        let mut orgs = 0;
        let mut practitioners = 0;
        for file in &directory {
            let resp = post_bundle_file(s, file);
            for e in entries(&resp) {
                assert!(
                    e["response"]["status"].as_str().unwrap().starts_with("201"),
                    "{e}"
                );
            }
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("hospital") {
                orgs += entries(&resp).len();
            } else {
                practitioners += entries(&resp).len();
            }
        }
        let mut expected_patients = 0;
        let mut expected_observations = 0;
        let mut expected_orgs = orgs;
        let mut expected_practitioners = practitioners;
        for file in &chosen {
            let bundle: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
            for e in entries(&bundle) {
                match e["resource"]["resourceType"].as_str().unwrap() {
                    "Patient" => expected_patients += 1,
                    "Observation" => expected_observations += 1,
                    "Organization" if e["request"]["ifNoneExist"].is_null() => expected_orgs += 1,
                    "Practitioner" if e["request"]["ifNoneExist"].is_null() => {
                        expected_practitioners += 1
                    }
                    _ => {}
                }
            }
            let resp = post_bundle_file(s, file);
            assert_eq!(
                entries(&resp).len(),
                entries(&bundle).len(),
                "{}",
                file.display()
            );
            for e in entries(&resp) {
                let st = e["response"]["status"].as_str().unwrap();
                assert!(
                    st.starts_with("201") || st.starts_with("200"),
                    "{}: {e}",
                    file.display()
                );
            }
        }
        eprintln!(
            "[{}] loaded {} synthea bundles (+2 directory) in {:.1}s",
            s.backend,
            chosen.len(),
            started.elapsed().as_secs_f64()
        );
        assert_eq!(count_type(s, "Patient"), expected_patients);
        assert_eq!(count_type(s, "Observation"), expected_observations);
        // No entry of these bundles is conditional: every POST creates.
        assert_eq!(count_type(s, "Practitioner"), expected_practitioners);
        assert_eq!(count_type(s, "Organization"), expected_orgs);
        // Spot check: one patient's Observations reference that patient by literal id.
        let bundle: Value = serde_json::from_slice(&std::fs::read(&chosen[0]).unwrap()).unwrap();
        let family = entries(&bundle)[0]["resource"]["name"][0]["family"].clone();
        let (pats, _) = s.all_pages("Patient/_history?_count=1000");
        let pat = pats
            .iter()
            .find(|e| e["resource"]["name"][0]["family"] == family)
            .expect("first patient stored");
        let pat_id = pat["resource"]["id"].as_str().unwrap();
        let (obs, _) = s.all_pages("Observation/_history?_count=1000");
        let theirs = obs
            .iter()
            .filter(|e| e["resource"]["subject"]["reference"] == json!(format!("Patient/{pat_id}")))
            .count();
        let in_file = entries(&bundle)
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Observation")
            .count();
        assert_eq!(theirs, in_file, "observations of the first patient");
        assert!(
            obs.iter().all(|e| !e["resource"]["subject"]["reference"]
                .as_str()
                .unwrap_or("")
                .starts_with("urn:uuid:")),
            "unrewritten urn:uuid"
        );
    });
}

/// `POST [base]/_search`: the system search with its parameters in a form body.
#[test]
fn system_search_by_post() {
    for_each_backend(|s| {
        s.put(
            "Patient/post-search",
            &json!({"resourceType": "Patient", "id": "post-search", "name": [{"family": "Posted"}]}),
        )
        .expect(201);
        let form = |body: &str| {
            s.request(
                "POST",
                "_search",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                Some(body.as_bytes().to_vec()),
            )
        };
        let r = form("_type=Patient&_id=post-search").expect(200).json();
        assert_eq!(r["type"], "searchset");
        assert_eq!(entries(&r).len(), 1, "{r}");
        assert_eq!(entries(&r)[0]["resource"]["id"], "post-search");
        form("_type=Foo").expect(400);
        // A repeated `_type` adds types, as a comma does (a review found the second dropped,
        // even under strict handling), from the URL and the form body alike.
        s.put(
            "Condition/post-search",
            &json!({"resourceType": "Condition", "id": "post-search",
                "subject": {"reference": "Patient/post-search"}}),
        )
        .expect(201);
        let both = |r: Value| {
            let mut found: Vec<String> = entries(&r)
                .iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap_or(""),
                        e["resource"]["id"].as_str().unwrap_or("")
                    )
                })
                .collect();
            found.sort();
            assert_eq!(
                found,
                ["Condition/post-search", "Patient/post-search"],
                "{r}"
            );
            let self_link = r["link"][0]["url"].as_str().unwrap_or_default().to_string();
            assert!(
                self_link.contains("_type=Patient%2CCondition")
                    || self_link.contains("_type=Patient,Condition"),
                "{self_link}"
            );
        };
        both(
            form("_type=Patient&_type=Condition&_id=post-search")
                .expect(200)
                .json(),
        );
        both(
            s.get_with(
                "?_type=Patient&_type=Condition&_id=post-search",
                &[("Prefer", "handling=strict")],
            )
            .expect(200)
            .json(),
        );
        s.request(
            "POST",
            "_search",
            &[("Content-Type", "text/plain")],
            Some(b"x".to_vec()),
        )
        .expect(415);
    });
}

/// An empty batch answers an empty batch-response, in JSON without an empty `entry` list
/// (not valid FHIR JSON) and in XML.
#[test]
fn an_empty_batch_answers_in_both_formats() {
    for_each_backend(|s| {
        let empty =
            serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "batch"})).unwrap();
        let json_answer = s
            .request(
                "POST",
                "",
                &[("Content-Type", "application/fhir+json")],
                Some(empty.clone()),
            )
            .expect(200)
            .json();
        assert_eq!(json_answer["type"], "batch-response");
        assert!(json_answer.get("entry").is_none(), "{json_answer}");
        let xml_answer = s
            .request(
                "POST",
                "",
                &[
                    ("Content-Type", "application/fhir+json"),
                    ("Accept", "application/fhir+xml"),
                ],
                Some(empty.clone()),
            )
            .expect(200);
        assert!(
            xml_answer.body.contains("batch-response"),
            "{}",
            xml_answer.body
        );
        // A decimal beyond a double's range is refused, the same on both backends.
        let r = s.post(
            "Observation",
            &serde_json::from_str::<Value>(
                r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                    "valueQuantity": {"value": 1e400}}"#,
            )
            .unwrap(),
        );
        assert_eq!(r.status, 400, "{}", r.body);
    });
}

/// A transaction replaces every link to an entry's `urn:uuid` fullUrl: references, `url`
/// elements (`Attachment.url`) and links in the narrative.
#[test]
fn transaction_rewrites_urn_links_outside_references() {
    for_each_backend(|s| {
        let binary_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "DocumentReference", "status": "current",
                "description": binary_urn,
                "identifier": [{"system": "urn:ietf:rfc:3986", "value": binary_urn}],
                "text": {"status": "generated",
                         "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"{binary_urn}\">report</a></div>")},
                "content": [{"attachment": {"contentType": "text/plain", "url": binary_urn}}]},
             "request": {"method": "POST", "url": "DocumentReference"}},
            {"fullUrl": binary_urn,
             "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="},
             "request": {"method": "POST", "url": "Binary"}}]});
        let r = s.post("", &bundle).expect(200).json();
        let e = entries(&r);
        let location = |i: usize| {
            let full = e[i]["response"]["location"].as_str().unwrap();
            let path: Vec<&str> = full.split("/_history").next().unwrap().split('/').collect();
            path[path.len() - 2..].join("/")
        };
        let binary = location(1);
        assert!(binary.starts_with("Binary/"), "{binary}");
        // A response entry's fullUrl is absolute.
        assert_eq!(e[1]["fullUrl"], json!(format!("{}/{binary}", s.base)));
        let document = s.read_json(&location(0));
        assert_eq!(document["content"][0]["attachment"]["url"], json!(binary));
        // Strings that only spell the fullUrl are data, not links.
        assert_eq!(document["description"], json!(binary_urn));
        assert_eq!(document["identifier"][0]["value"], json!(binary_urn));
        let div = document["text"]["div"].as_str().unwrap();
        assert!(div.contains(&format!("href=\"{binary}\"")), "{div}");
    });
}

#[test]
fn batch_answers_searches_in_place() {
    for_each_backend(|s| {
        let patient =
            s.create(&json!({"resourceType": "Patient", "name": [{"family": "Batchsearch"}]}));
        let pid = patient["id"].as_str().unwrap().to_string();
        for value in [1.0, 2.0, 3.0] {
            s.create(&json!({
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                "subject": {"reference": format!("Patient/{pid}")},
                "valueQuantity": {"value": value, "unit": "mg/dL"},
            }));
        }
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("Observation?subject=Patient/{pid}&_count=2")}},
            {"resource": {"resourceType": "Patient", "name": [{"family": "Batchwriter"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient?family=Batchsearch"}},
            {"request": {"method": "GET", "url": "Observation?date=not-a-date"}},
            {"request": {"method": "GET", "url": format!("Patient/{pid}/Observation?code=http://loinc.org|2345-7")}},
            {"request": {"method": "GET", "url": format!("Patient/{pid}/$everything")}},
            {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
            {"request": {"method": "GET", "url": format!("{}/Patient?_id={pid}&no-such-param=1", s.url("").trim_end_matches('/'))}},
        ]});
        let response = s.post("", &bundle).expect(200).json();
        assert_eq!(response["type"], "batch-response");
        let e = entries(&response);
        assert_eq!(e.len(), 8, "{response}");
        let searchset = |i: usize| {
            assert!(
                entry_status(&e[i]).starts_with("200"),
                "entry {i}: {}",
                e[i]
            );
            assert_eq!(e[i]["resource"]["type"], "searchset", "entry {i}: {}", e[i]);
            e[i]["resource"].clone()
        };
        let matches = |bundle: &Value| -> Vec<String> {
            entries(bundle)
                .iter()
                .filter(|x| x["search"]["mode"] == "match")
                .map(|x| {
                    format!(
                        "{}/{}",
                        x["resource"]["resourceType"].as_str().unwrap(),
                        x["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect()
        };
        // A page of two with a link to the next, absolute on this server.
        let first = searchset(0);
        assert_eq!(matches(&first).len(), 2, "{first}");
        let next = first["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .expect("a next link")
            .to_string();
        assert!(next.starts_with("http"), "{next}");
        let rest = s
            .get(&next[next.find("Observation?").unwrap()..])
            .expect(200)
            .json();
        assert_eq!(matches(&rest).len(), 1, "{rest}");
        assert!(entry_status(&e[1]).starts_with("201"), "{}", e[1]);
        assert_eq!(matches(&searchset(2)), vec![format!("Patient/{pid}")]);
        // A malformed search fails its own entry only.
        assert!(entry_status(&e[3]).starts_with("400"), "{}", e[3]);
        assert_eq!(
            e[3]["response"]["outcome"]["resourceType"],
            "OperationOutcome"
        );
        assert_eq!(matches(&searchset(4)).len(), 3);
        let everything = matches(&searchset(5));
        assert_eq!(everything.len(), 4, "{everything:?}");
        assert!(everything.contains(&format!("Patient/{pid}")));
        assert!(entry_status(&e[6]).starts_with("200"), "{}", e[6]);
        assert_eq!(e[6]["resource"]["id"], json!(pid));
        // An absolute URL on this server; an unknown parameter is reported, not fatal.
        let lenient = searchset(7);
        assert_eq!(matches(&lenient), vec![format!("Patient/{pid}")]);
        assert!(
            entries(&lenient)
                .iter()
                .any(|x| x["search"]["mode"] == "outcome"
                    && x["resource"].to_string().contains("no-such-param")),
            "{lenient}"
        );
        // Under strict handling the unknown parameter fails that entry.
        let strict = s
            .send_json_with(
                "POST",
                "",
                &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                    {"request": {"method": "GET", "url": "Patient?no-such-param=1"}},
                    {"request": {"method": "GET", "url": "Patient?family=Batchsearch"}}]}),
                &[("Prefer", "handling=strict")],
            )
            .expect(200)
            .json();
        let e = entries(&strict);
        assert!(entry_status(&e[0]).starts_with("400"), "{}", e[0]);
        assert!(e[0]["response"]["outcome"]
            .to_string()
            .contains("no-such-param"));
        assert!(entry_status(&e[1]).starts_with("200"), "{}", e[1]);
        // The audit trail is not searched inside a Bundle (it has its own endpoint and rules).
        let mixed = s
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                    {"request": {"method": "GET", "url": "Patient?family=Batchsearch"}},
                    {"request": {"method": "GET", "url": "AuditEvent?patient=Patient/x"}}]}),
            )
            .expect(200)
            .json();
        let e = entries(&mixed);
        assert_eq!(
            matches(&e[0]["resource"]),
            vec![format!("Patient/{pid}")],
            "{}",
            e[0]
        );
        assert!(entry_status(&e[1]).starts_with("400"), "{}", e[1]);
        // What fails a whole batch is reported with the client's own entry numbers, and no
        // search of it runs.
        let r = s.post(
            "",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": "Patient?family=Batchsearch"}},
                {"resource": {"resourceType": "Patient"}}]}),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("entry[1]"), "{}", r.body);
        // A transaction does not answer searches: it fails as a whole, naming the entry.
        let r = s.post(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"request": {"method": "GET", "url": "Patient?family=Batchsearch"}}]}),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("batch"), "{}", r.body);
    });
}

/// Concurrent transactions that create the same new resource by PUT, or change the same two
/// resources in opposite orders, all succeed as the same writes outside a transaction do: a
/// lost insert race or a deadlock reruns the whole transaction (PostgreSQL runs them side by
/// side; SQLite one at a time).
#[test]
fn concurrent_transactions_on_the_same_resources_succeed() {
    const THREADS: usize = 8;
    let patient = |id: &str, family: &str| json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
    let put = |id: &str, family: &str| json!({"resource": patient(id, family), "request": {"method": "PUT", "url": format!("Patient/{id}")}});
    for_each_backend(|s| {
        for round in 0..3 {
            let id = format!("tx-race-{round}");
            std::thread::scope(|scope| {
                for t in 0..THREADS {
                    let bundle = json!({"resourceType": "Bundle", "type": "transaction",
                                        "entry": [put(&id, "same")]});
                    scope.spawn(move || {
                        let r = s.post("", &bundle);
                        assert_eq!(r.status, 200, "thread {t}: {}", r.body);
                        let status = entry_status(&r.json()["entry"][0]).to_string();
                        assert!(
                            status.starts_with("200") || status.starts_with("201"),
                            "thread {t}: {status}"
                        );
                    });
                }
            });
            s.get(&format!("Patient/{id}")).expect(200);
        }
        for id in ["tx-lock-a", "tx-lock-b"] {
            s.put(&format!("Patient/{id}"), &patient(id, "0"))
                .expect(201);
        }
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let family = t.to_string();
                let mut entry = vec![put("tx-lock-a", &family), put("tx-lock-b", &family)];
                if t % 2 == 1 {
                    entry.reverse();
                }
                let bundle =
                    json!({"resourceType": "Bundle", "type": "transaction", "entry": entry});
                scope.spawn(move || {
                    let r = s.post("", &bundle);
                    assert_eq!(r.status, 200, "thread {t}: {}", r.body);
                });
            }
        });
        // Every transaction committed once: one version each, after the first.
        let a = s.get("Patient/tx-lock-a").expect(200).json();
        assert_eq!(a["meta"]["versionId"], json!((THREADS + 1).to_string()));
    });
}

/// Regression: on PostgreSQL, clients sending transactions that update the same resources in
/// opposite orders got 409 for ~41 % of them (each transaction locked its rows in entry order,
/// so two of them deadlocked, again on every rerun). The rows are now locked in one order
/// before any entry runs: every transaction succeeds, each adds one version.
#[test]
fn opposite_order_transactions_on_the_same_resources_all_succeed() {
    const CLIENTS: usize = 10;
    const ROUNDS: usize = 5;
    const IDS: [&str; 3] = ["opposite-a", "opposite-b", "opposite-c"];
    let patient = |id: &str, family: &str| json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
    for_each_backend(|s| {
        for id in IDS {
            s.put(&format!("Patient/{id}"), &patient(id, "0"))
                .expect(201);
        }
        std::thread::scope(|scope| {
            for client in 0..CLIENTS {
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        let family = format!("{client}-{round}");
                        let mut entry: Vec<Value> = IDS
                            .iter()
                            .map(|id| json!({"resource": patient(id, &family),
                                             "request": {"method": "PUT", "url": format!("Patient/{id}")}}))
                            .collect();
                        if (client + round) % 2 == 1 {
                            entry.reverse();
                        }
                        let bundle =
                            json!({"resourceType": "Bundle", "type": "transaction", "entry": entry});
                        let r = s.post("", &bundle);
                        assert_eq!(r.status, 200, "client {client}, round {round}: {}", r.body);
                    }
                });
            }
        });
        for id in IDS {
            let stored = s.get(&format!("Patient/{id}")).expect(200).json();
            assert_eq!(
                stored["meta"]["versionId"],
                json!((CLIENTS * ROUNDS + 1).to_string()),
                "Patient/{id}"
            );
        }
    });
}

/// A Bundle with more entries than `max_bundle_entries` is refused before any entry runs.
#[test]
fn bundles_with_too_many_entries_are_refused() {
    for_each_backend_with(&[("RENKEI_MAX_BUNDLE_ENTRIES", "3")], |s| {
        for kind in ["batch", "transaction"] {
            let entry: Vec<Value> = (0..4)
                .map(|i| {
                    json!({"resource": {"resourceType": "Patient", "id": format!("many-{kind}-{i}")},
                           "request": {"method": "PUT", "url": format!("Patient/many-{kind}-{i}")}})
                })
                .collect();
            let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": entry});
            let outcome = s.post("", &bundle).expect(413).outcome();
            assert_eq!(outcome["issue"][0]["code"], "too-costly", "{outcome}");
            s.get(&format!("Patient/many-{kind}-0")).expect(404);
            // Up to the limit, the Bundle runs.
            let bundle = json!({"resourceType": "Bundle", "type": kind,
                                "entry": entry[..3].to_vec()});
            s.post("", &bundle).expect(200);
        }
    });
}

/// The resources of a Bundle's response are bounded by `max_bundle_response_bytes`: a batch's
/// reads and searches beyond it fail one by one with too-costly, its writes still run; a
/// transaction beyond it fails as a whole.
#[test]
fn bundle_responses_are_bounded() {
    for_each_backend_with(&[("RENKEI_MAX_BUNDLE_RESPONSE_BYTES", "20000")], |s| {
        let text = "x".repeat(6000);
        let big = json!({"resourceType": "Patient", "id": "big-one",
                         "name": [{"family": "Big", "text": text}]});
        s.put("Patient/big-one", &big).expect(201);
        let read = json!({"request": {"method": "GET", "url": "Patient/big-one"}});
        let search = json!({"request": {"method": "GET", "url": "Patient?_id=big-one"}});
        let write = json!({"resource": {"resourceType": "Patient", "id": "small-one"},
                           "request": {"method": "PUT", "url": "Patient/small-one"}});
        let mut entry = vec![read.clone(); 5];
        entry.push(write);
        entry.push(search);
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": entry});
        let r = s.post("", &bundle).expect(200).json();
        let e = entries(&r);
        assert_eq!(e.len(), 7);
        let statuses: Vec<&str> = e.iter().map(entry_status).collect();
        assert_eq!(&statuses[..3], ["200 OK"; 3], "{statuses:?}");
        for failed in [3, 4, 6] {
            assert!(statuses[failed].starts_with("400"), "{statuses:?}");
            assert_eq!(
                e[failed]["response"]["outcome"]["issue"][0]["code"], "too-costly",
                "{}",
                e[failed]
            );
        }
        assert!(statuses[5].starts_with("201"), "{statuses:?}");
        s.get("Patient/small-one").expect(200);
        // A transaction answers all or nothing.
        let mut entry = vec![
            json!({"resource": {"resourceType": "Patient", "id": "tx-budget"},
                                    "request": {"method": "PUT", "url": "Patient/tx-budget"}}),
        ];
        entry.extend(vec![read; 5]);
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entry});
        let outcome = s.post("", &bundle).expect(400).outcome();
        assert_eq!(outcome["issue"][0]["code"], "too-costly", "{outcome}");
        s.get("Patient/tx-budget").expect(404);
    });
}

/// Inside a transaction, a conditional reference to a type that is no resource type was
/// stored verbatim (201): it can be neither resolved nor kept.
#[test]
fn transaction_conditional_reference_to_an_unknown_type_fails() {
    for_each_backend(|s| {
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                              "subject": {"reference": "Foo?x=y"}},
                 "request": {"method": "POST", "url": "Observation"}}
            ]
        });
        let outcome = s.post("", &bundle).expect(400).outcome();
        let text = outcome["issue"][0]["diagnostics"].as_str().unwrap_or("");
        assert!(text.contains("'Foo'"), "{outcome}");
        let (found, _) = s.all_pages("Observation");
        assert!(found.is_empty(), "nothing stored: {found:?}");
    });
}

/// `request.ifNoneMatch` of a write entry is that write's precondition, as the header is:
/// `*` creates but never overwrites, a version refuses the write while it is current. It was
/// ignored on writes (a PUT entry with `ifNoneMatch: *` overwrote).
#[test]
fn if_none_match_of_write_entries_is_a_precondition() {
    for_each_backend(|s| {
        s.put(
            "Patient/inm-entry",
            &json!({"resourceType": "Patient", "id": "inm-entry", "active": true}),
        )
        .expect(201);
        let put_entry = |id: &str, if_none_match: &str| {
            json!({"resource": {"resourceType": "Patient", "id": id, "active": false},
                   "request": {"method": "PUT", "url": format!("Patient/{id}"),
                               "ifNoneMatch": if_none_match}})
        };
        let batch = s
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                    put_entry("inm-entry", "*"),
                    put_entry("inm-entry-new", "*"),
                    put_entry("inm-entry", "W/\"2\""),
                ]}),
            )
            .expect(200)
            .json();
        let statuses: Vec<&str> = batch["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(entry_status)
            .collect();
        assert!(statuses[0].starts_with("412"), "{batch}");
        assert!(statuses[1].starts_with("201"), "{batch}");
        // Version 1 is current: "not version 2" holds.
        assert!(statuses[2].starts_with("200"), "{batch}");
        s.post(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                put_entry("inm-entry-new", "*"),
            ]}),
        )
        .expect(412);
        let mut both = put_entry("inm-entry", "*");
        both["request"]["ifMatch"] = json!("*");
        s.post(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [both]}),
        )
        .expect(400);
    });
}

/// `Type/id` of a response entry's location.
fn resource_path(entry: &Value) -> String {
    entry["response"]["location"]
        .as_str()
        .unwrap_or_default()
        .split("/_history")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// An integration review (EHR exports) found: relative references to POSTed entries whose
/// fullUrl is a RESTful URL stayed as written, pointing at nothing (bundle.html#references);
/// two POSTs with the same `ifNoneExist` created two resources; DELETE entries answered
/// without their ETag; a fullUrl disagreeing with its resource's id was accepted.
#[test]
fn transactions_resolve_relative_references_and_repeated_conditional_creates() {
    for_each_backend(|s| {
        for base in [
            "http://ehr.example/fhir/".to_string(),
            format!("{}/", s.base),
        ] {
            let family = format!("Export{}", uuid::Uuid::new_v4().simple());
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": format!("{base}Observation/o-1"),
                 "resource": {"resourceType": "Observation", "status": "final",
                              "code": {"text": "x"}, "subject": {"reference": "Patient/p-1"}},
                 "request": {"method": "POST", "url": "Observation"}},
                {"fullUrl": format!("{base}Patient/p-1"),
                 "resource": {"resourceType": "Patient", "id": "p-1", "name": [{"family": family}]},
                 "request": {"method": "POST", "url": "Patient"}}]});
            let answer = s.post("", &bundle).expect(200).json();
            let e = entries(&answer);
            let patient = resource_path(&e[1]);
            assert!(
                patient.starts_with("Patient/") && patient != "Patient/p-1",
                "{patient}"
            );
            let observation = s.read_json(&resource_path(&e[0]));
            assert_eq!(
                observation["subject"]["reference"],
                patient.as_str(),
                "{base}"
            );

            // Version-specific references, relative or absolute: the version is removed to
            // find the entry and replaced by the one the created resource has.
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": format!("{base}Observation/o-2"),
                 "resource": {"resourceType": "Observation", "status": "final",
                              "code": {"text": "x"},
                              "subject": {"reference": "Patient/p-2/_history/4"},
                              "performer": [{"reference": format!("{base}Patient/p-2/_history/4")}]},
                 "request": {"method": "POST", "url": "Observation"}},
                {"fullUrl": format!("{base}Patient/p-2"),
                 "resource": {"resourceType": "Patient", "id": "p-2"},
                 "request": {"method": "POST", "url": "Patient"}}]});
            let answer = s.post("", &bundle).expect(200).json();
            let e = entries(&answer);
            let versioned = format!("{}/_history/1", resource_path(&e[1]));
            let observation = s.read_json(&resource_path(&e[0]));
            assert_eq!(observation["subject"]["reference"], versioned.as_str());
            assert_eq!(observation["performer"][0]["reference"], versioned.as_str());
        }

        // A `urn:uuid:` fullUrl with a version (the adversarial review found it refused as
        // naming no entry).
        let urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": format!("{urn}/_history/1")}},
             "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": urn, "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient"}}]});
        let answer = s.post("", &bundle).expect(200).json();
        let e = entries(&answer);
        let observation = s.read_json(&resource_path(&e[0]));
        assert_eq!(
            observation["subject"]["reference"],
            format!("{}/_history/1", resource_path(&e[1])).as_str()
        );

        // A PUT by id takes the next version of what is stored (1 when nothing is), not the
        // one written (the review found a version that never existed kept).
        let put_id = format!("put-{}", uuid::Uuid::new_v4().simple());
        let put_bundle = |written: &str| {
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                              "subject": {"reference": format!("Patient/{put_id}/_history/{written}")}},
                 "request": {"method": "POST", "url": "Observation"}},
                {"fullUrl": format!("{}/Patient/{put_id}", s.base),
                 "resource": {"resourceType": "Patient", "id": put_id},
                 "request": {"method": "PUT", "url": format!("Patient/{put_id}")}}]})
        };
        for (written, expected) in [("7", "1"), ("9", "2")] {
            let answer = s.post("", &put_bundle(written)).expect(200).json();
            let observation = s.read_json(&resource_path(&entries(&answer)[0]));
            assert_eq!(
                observation["subject"]["reference"],
                format!("Patient/{put_id}/_history/{expected}").as_str()
            );
        }

        // The same ifNoneExist twice: one Patient, both entries answering it, and references
        // to either entry naming it.
        let id_value = uuid::Uuid::new_v4().simple().to_string();
        let criteria = format!("identifier=urn:test:mrn|{id_value}");
        // The second spells the same criteria URL-encoded, with the type first.
        let encoded = format!("Patient?identifier=urn%3Atest%3Amrn%7C{id_value}");
        let conditional = |urn: &str, criteria: &str| {
            json!({"fullUrl": urn, "resource": {"resourceType": "Patient",
                     "identifier": [{"system": "urn:test:mrn", "value": id_value}]},
                   "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria}})
        };
        let (first, second) = (
            format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        );
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            conditional(&first, &criteria),
            conditional(&second, &encoded),
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
                          "subject": {"reference": second}},
             "request": {"method": "POST", "url": "Observation"}}]});
        let answer = s.post("", &bundle).expect(200).json();
        let e = entries(&answer);
        assert_eq!(entry_status(&e[0]), "201 Created");
        assert_eq!(entry_status(&e[1]), "200 OK");
        assert_eq!(resource_path(&e[0]), resource_path(&e[1]));
        let found = s.read_json(&format!("Patient?{criteria}&_total=accurate"));
        assert_eq!(found["total"], 1, "{found}");
        let observation = s.read_json(&resource_path(&e[2]));
        assert_eq!(
            observation["subject"]["reference"],
            resource_path(&e[0]).as_str()
        );

        // Other criteria that match what an earlier entry creates: refused, not duplicated.
        let other_value = uuid::Uuid::new_v4().simple().to_string();
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "gender": "female",
                          "identifier": [{"system": "urn:test:mrn", "value": other_value}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient",
                          "identifier": [{"system": "urn:test:mrn", "value": other_value}]},
             "request": {"method": "POST", "url": "Patient",
                         "ifNoneExist": format!("identifier={other_value}")}}]});
        let refused = s.post("", &bundle).expect(409);
        assert!(
            refused
                .body
                .contains("created by another entry of the transaction"),
            "{}",
            refused.body
        );
        let none = s.read_json(&format!("Patient?identifier={other_value}&_total=accurate"));
        assert_eq!(none["total"], 0, "rolled back: {none}");

        // A DELETE entry answers its version's ETag, as the DELETE alone does.
        let doomed = s.create(&json!({"resourceType": "Patient", "gender": "male"}));
        let doomed = format!("Patient/{}", doomed["id"].as_str().unwrap());
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": doomed}}]});
        let answer = s.post("", &bundle).expect(200).json();
        assert_eq!(
            entries(&answer)[0]["response"]["etag"],
            "W/\"2\"",
            "{answer}"
        );

        // A fullUrl that names another resource than the entry holds.
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "http://ehr.example/fhir/Patient/foo1",
             "resource": {"resourceType": "Patient", "id": "bar1"},
             "request": {"method": "PUT", "url": "Patient/bar1"}}]});
        let refused = s.post("", &bundle).expect(400);
        assert!(refused.body.contains("disagrees"), "{}", refused.body);
        s.get("Patient/bar1").expect(404);
        // In a batch only that entry fails; the others run (it failed the whole batch).
        let kept = format!("keep{}", uuid::Uuid::new_v4().simple());
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"fullUrl": "http://ehr.example/fhir/Patient/foo1",
             "resource": {"resourceType": "Patient", "id": "bar1"},
             "request": {"method": "PUT", "url": "Patient/bar1"}},
            {"resource": {"resourceType": "Patient", "id": kept},
             "request": {"method": "PUT", "url": format!("Patient/{kept}")}}]});
        let answer = s.post("", &bundle).expect(200).json();
        let e = entries(&answer);
        assert_eq!(entry_status(&e[0]), "400 Bad Request", "{answer}");
        assert!(e[0].to_string().contains("disagrees"), "{answer}");
        assert_eq!(entry_status(&e[1]), "201 Created", "{answer}");
        s.get("Patient/bar1").expect(404);

        // History and the CapabilityStatement are not run as batch entries, and say so
        // (`metadata` was called an unknown resource type).
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "_history?_count=1"}},
            {"request": {"method": "GET", "url": "metadata"}}]});
        let answer = s.post("", &bundle).expect(200).json();
        for entry in entries(&answer) {
            assert_eq!(entry_status(&entry), "400 Bad Request", "{entry}");
            let said = entry["response"]["outcome"]["issue"][0]["diagnostics"].to_string();
            assert!(said.contains("on its own"), "{said}");
        }

        // `Prefer: return=OperationOutcome`: each write entry says what was done (it answered
        // nothing but its status).
        let target = s.create(&json!({"resourceType": "Patient"}));
        let target = format!("Patient/{}", target["id"].as_str().unwrap());
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "DELETE", "url": target}}]});
        let answer = s
            .request(
                "POST",
                "",
                &[
                    ("Content-Type", "application/fhir+json"),
                    ("Prefer", "return=OperationOutcome"),
                ],
                Some(serde_json::to_vec(&bundle).unwrap()),
            )
            .expect(200)
            .json();
        let said: Vec<String> = entries(&answer)
            .iter()
            .map(|e| e["response"]["outcome"]["issue"][0]["diagnostics"].to_string())
            .collect();
        assert!(said[0].contains("created"), "{said:?}");
        assert!(said[1].contains("deleted"), "{said:?}");

        // RFC 7240 §2: `return="minimal"` is `return=minimal`.
        let minimal = s
            .request(
                "POST",
                "Patient",
                &[
                    ("Content-Type", "application/fhir+json"),
                    ("Prefer", "return=\"minimal\""),
                ],
                Some(br#"{"resourceType":"Patient"}"#.to_vec()),
            )
            .expect(201);
        assert!(minimal.body.is_empty(), "{}", minimal.body);
    });
}

/// The R4 Bundle invariants hold for a Bundle stored as a resource too, in JSON and XML: a
/// document names itself, its time and its Composition first (bdl-9, 10, 11), a collection
/// carries no requests (bdl-3) and no total (bdl-1), a message starts with its header
/// (bdl-12). Each is refused with the invariant and the element it concerns; nothing is
/// stored.
#[test]
fn stored_bundles_keep_the_bundle_invariants() {
    for_each_backend(|s| {
        let composition = json!({"fullUrl": "urn:uuid:3c1b8a2e-2f4a-4c59-9d1e-1a2b3c4d5e6f",
            "resource": {"resourceType": "Composition", "status": "final",
                "type": {"text": "discharge summary"}, "date": "2026-12-01",
                "author": [{"display": "Dr. Sato"}], "title": "退院時サマリー"}});
        let patient = json!({"fullUrl": "urn:uuid:6f5e4d3c-2b1a-4c59-9d1e-1a2b3c4d5e6f",
            "resource": {"resourceType": "Patient", "gender": "female"}});
        let document = json!({"resourceType": "Bundle", "type": "document",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0d6c3a8e-1b2c-4d5e-8f90-a1b2c3d4e5f6"},
            "timestamp": "2026-12-01T10:00:00+09:00", "entry": [composition, patient]});
        let before = count_type(s, "Bundle");
        let mut broken = Vec::new();
        let without = |key: &str| {
            let mut bundle = document.clone();
            bundle.as_object_mut().unwrap().remove(key);
            bundle
        };
        broken.push((without("identifier"), "bdl-9", "Bundle.identifier"));
        broken.push((without("timestamp"), "bdl-10", "Bundle.timestamp"));
        let mut patient_first = document.clone();
        patient_first["entry"] = json!([patient, composition]);
        broken.push((patient_first, "bdl-11", "Bundle.entry"));
        let mut with_request = document.clone();
        with_request["type"] = json!("collection");
        with_request["entry"][1]["request"] = json!({"method": "POST", "url": "Patient"});
        broken.push((with_request, "bdl-3", "Bundle.entry[1].request"));
        let mut with_total = document.clone();
        with_total["type"] = json!("collection");
        with_total["total"] = json!(2);
        broken.push((with_total, "bdl-1", "Bundle.total"));
        let mut message = document.clone();
        message["type"] = json!("message");
        broken.push((message, "bdl-12", "Bundle.entry"));
        for (bundle, key, element) in broken {
            let r = s.post("Bundle", &bundle);
            assert!(
                [400, 422].contains(&r.status),
                "{key}: {} {}",
                r.status,
                r.body
            );
            let outcome = r.json();
            let issue = outcome["issue"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|issue| issue["diagnostics"].as_str().unwrap_or("").contains(key))
                .unwrap_or_else(|| panic!("{key}: {outcome}"));
            assert_eq!(issue["expression"][0], element, "{key}: {issue}");
            assert_eq!(issue["code"], "invariant", "{key}: {issue}");
        }
        assert_eq!(
            count_type(s, "Bundle"),
            before,
            "a broken Bundle was stored"
        );
        s.post("Bundle", &document).expect(201);
        // The same rules in XML.
        let xml = r#"<Bundle xmlns="http://hl7.org/fhir"><type value="document"/><entry><fullUrl value="urn:uuid:6f5e4d3c-2b1a-4c59-9d1e-1a2b3c4d5e6f"/><resource><Patient><gender value="female"/></Patient></resource></entry></Bundle>"#;
        let r = s.send_raw("POST", "Bundle", "application/fhir+xml", xml.as_bytes());
        assert!([400, 422].contains(&r.status), "{} {}", r.status, r.body);
        for key in ["bdl-9", "bdl-10", "bdl-11"] {
            assert!(r.body.contains(key), "{key}: {}", r.body);
        }
    });
}

//! Create, read, update, delete, vread.

use crate::support::*;
use serde_json::json;

fn patient(family: &str) -> serde_json::Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "gender": "female"})
}

#[test]
fn create_read_update_delete_vread() {
    for_each_backend(|s| {
        // Create.
        let resp = s.post("Patient", &patient("Suzuki")).expect(201);
        let etag = resp.header("etag").expect("ETag").to_string();
        assert_eq!(etag, "W/\"1\"");
        assert!(
            resp.header("last-modified")
                .is_some_and(|v| v.ends_with("GMT")),
            "Last-Modified: {:?}",
            resp.header("last-modified")
        );
        let created = resp.json();
        let id = created["id"].as_str().expect("server id").to_string();
        assert!(!id.is_empty() && id.len() <= 64);
        let location = resp.header("location").expect("Location").to_string();
        assert_eq!(location, format!("{}/Patient/{id}/_history/1", s.base));
        assert_eq!(created["meta"]["versionId"], "1");
        let last_updated = created["meta"]["lastUpdated"]
            .as_str()
            .expect("lastUpdated")
            .to_string();
        assert!(
            last_updated.contains('T')
                && (last_updated.ends_with('Z') || last_updated.contains('+')),
            "{last_updated}"
        );
        assert_eq!(created["name"][0]["family"], "Suzuki");

        // A client id in a POST body is replaced by the server's.
        let mut with_id = patient("Tanaka");
        with_id["id"] = json!("client-chosen");
        let other = s.post("Patient", &with_id).expect(201).json();
        assert_ne!(other["id"], "client-chosen");
        assert_ne!(other["id"], created["id"]);

        // Read.
        let read = s.get(&format!("Patient/{id}")).expect(200);
        assert_eq!(read.header("etag"), Some("W/\"1\""));
        assert!(
            read.content_type().starts_with("application/fhir+json"),
            "{}",
            read.content_type()
        );
        assert_json_eq(&read.json(), &created, "read after create");

        // Update.
        let mut changed = created.clone();
        changed["name"][0]["family"] = json!("Sato");
        let resp = s.put(&format!("Patient/{id}"), &changed).expect(200);
        assert_eq!(resp.header("etag"), Some("W/\"2\""));
        assert!(
            resp.header("location").is_none(),
            "an update is not a create"
        );
        let updated = resp.json();
        assert_eq!(updated["meta"]["versionId"], "2");
        assert_eq!(updated["name"][0]["family"], "Sato");
        assert!(updated["meta"]["lastUpdated"].as_str().unwrap() >= last_updated.as_str());
        assert_eq!(
            s.read_json(&format!("Patient/{id}"))["name"][0]["family"],
            "Sato"
        );

        // Update-as-create with a client id.
        let mut own = patient("Ito");
        own["id"] = json!("pat-client-1");
        let resp = s.put("Patient/pat-client-1", &own).expect(201);
        assert_eq!(resp.header("etag"), Some("W/\"1\""));
        assert!(resp
            .header("location")
            .is_some_and(|l| l.ends_with("/Patient/pat-client-1/_history/1")));
        assert_eq!(resp.json()["id"], "pat-client-1");

        // Vread of both versions.
        let v1 = s.read_json(&format!("Patient/{id}/_history/1"));
        assert_eq!(v1["name"][0]["family"], "Suzuki");
        assert_eq!(v1["meta"]["versionId"], "1");
        let v2 = s.get(&format!("Patient/{id}/_history/2")).expect(200);
        assert_eq!(v2.header("etag"), Some("W/\"2\""));
        assert_eq!(v2.json()["name"][0]["family"], "Sato");
        s.get(&format!("Patient/{id}/_history/3"))
            .expect(404)
            .outcome();
        s.get(&format!("Patient/{id}/_history/999"))
            .expect(404)
            .outcome();
        // A version id is text: `01` and `+1` name no version (a review found `01` read as 1).
        for spelling in ["01", "+1"] {
            s.get(&format!("Patient/{id}/_history/{spelling}"))
                .expect(404)
                .outcome();
        }

        // Delete.
        let resp = s.delete(&format!("Patient/{id}")).expect(204);
        assert!(resp.body.is_empty());
        let gone = s.get(&format!("Patient/{id}")).expect(410);
        let outcome = gone.outcome();
        assert_eq!(outcome["issue"][0]["severity"], "error");
        // Older versions stay readable.
        assert_eq!(
            s.read_json(&format!("Patient/{id}/_history/1"))["name"][0]["family"],
            "Suzuki"
        );
        assert_eq!(
            s.read_json(&format!("Patient/{id}/_history/2"))["name"][0]["family"],
            "Sato"
        );
        // The delete itself is version 3; there is no content to read there.
        s.get(&format!("Patient/{id}/_history/3"))
            .expect(410)
            .outcome();
        // Deleting again is idempotent.
        s.delete(&format!("Patient/{id}")).expect(204);

        // Re-create after delete via PUT → a new version, created.
        let mut again = changed.clone();
        again["name"][0]["family"] = json!("Revived");
        let resp = s.put(&format!("Patient/{id}"), &again).expect(201);
        assert_eq!(resp.header("etag"), Some("W/\"4\""));
        assert_eq!(
            s.read_json(&format!("Patient/{id}"))["name"][0]["family"],
            "Revived"
        );
    });
}

#[test]
fn not_found_cases() {
    for_each_backend(|s| {
        let r = s.get("Patient/does-not-exist").expect(404);
        let o = r.outcome();
        assert_eq!(o["issue"][0]["code"], "not-found");
        s.get("Patient/does-not-exist/_history/1")
            .expect(404)
            .outcome();
        let r = s.get("NotAType/1").expect(404);
        let o = r.outcome();
        assert!(
            o["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("")
                .contains("NotAType"),
            "{o}"
        );
        s.post("NotAType", &json!({"resourceType": "NotAType"}))
            .expect(404)
            .outcome();
        s.get("patient/1").expect(404).outcome();
        // Deleting something that never existed is not an error.
        s.delete("Patient/never-was").expect(204);
        // HEAD read.
        let created = s.create(&patient("Head"));
        let head = s
            .request(
                "HEAD",
                &format!("Patient/{}", created["id"].as_str().unwrap()),
                &[],
                None,
            )
            .expect(200);
        assert_eq!(head.header("etag"), Some("W/\"1\""));
        assert!(head.body.is_empty());
    });
}

#[test]
fn prefer_return_variants() {
    for_each_backend(|s| {
        let r = s
            .send_json_with(
                "POST",
                "Patient",
                &patient("Minimal"),
                &[("Prefer", "return=minimal")],
            )
            .expect(201);
        assert!(
            r.body.is_empty(),
            "return=minimal must have no body: {}",
            r.body
        );
        let loc = r.header("location").expect("Location").to_string();
        let id = loc.split('/').rev().nth(2).unwrap().to_string();
        assert_eq!(
            s.read_json(&format!("Patient/{id}"))["name"][0]["family"],
            "Minimal"
        );
        let r = s
            .send_json_with(
                "POST",
                "Patient",
                &patient("OO"),
                &[("Prefer", "return=OperationOutcome")],
            )
            .expect(201);
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    });
}

/// A Binary may be written and read as its own content (http.html#binary); in a FHIR format it
/// is the Binary resource holding that content as base64, and `_format` also asks for it.
#[test]
fn binary_content_is_written_and_read_as_itself() {
    for_each_backend(|s| {
        let pdf = b"%PDF-1.4 discharge summary".to_vec();
        s.put(
            "Patient/bin-owner",
            &json!({"resourceType": "Patient", "id": "bin-owner"}),
        )
        .expect(201);
        let as_pdf = [
            ("Content-Type", "application/pdf"),
            ("X-Security-Context", "Patient/bin-owner"),
        ];
        // Without a security context it would be shared with every member: refused.
        s.request(
            "POST",
            "Binary",
            &[("Content-Type", "application/pdf")],
            Some(pdf.clone()),
        )
        .expect(422);
        let r = s
            .request("POST", "Binary", &as_pdf, Some(pdf.clone()))
            .expect(201);
        let location = r.header("location").unwrap().to_string();
        let path = location[location.find("Binary/").unwrap()..]
            .split("/_history")
            .next()
            .unwrap()
            .to_string();
        let raw = s
            .get_with(&path, &[("Accept", "application/pdf")])
            .expect(200);
        assert!(
            raw.content_type().starts_with("application/pdf"),
            "{}",
            raw.content_type()
        );
        assert_eq!(raw.body.as_bytes(), pdf.as_slice());
        assert_eq!(raw.header("etag"), Some("W/\"1\""));
        assert_eq!(raw.header("x-content-type-options"), Some("nosniff"));
        // A version of it, alike (it answered 406).
        let raw_version = s
            .get_with(
                &format!("{path}/_history/1"),
                &[("Accept", "application/pdf")],
            )
            .expect(200);
        assert!(raw_version.content_type().starts_with("application/pdf"));
        assert_eq!(raw_version.body.as_bytes(), pdf.as_slice());
        // Unless the client names a FHIR format, a Binary is its content (binary.html#rest):
        // a browser's `Accept` or `*/*` gets the PDF, not the resource (it got FHIR JSON).
        for accept in ["*/*", "text/html,application/xhtml+xml,*/*;q=0.8"] {
            let r = s.get_with(&path, &[("Accept", accept)]).expect(200);
            assert!(r.content_type().starts_with("application/pdf"), "{accept}");
            assert_eq!(r.body.as_bytes(), pdf.as_slice(), "{accept}");
        }
        let fhir_json = [("Accept", "application/fhir+json")];
        let resource = s.get_with(&path, &fhir_json).expect(200).json();
        assert_eq!(resource["contentType"], "application/pdf");
        let by_format = s.get(&format!("{path}?_format=json")).expect(200).json();
        assert_eq!(by_format, resource);
        assert_eq!(
            resource["securityContext"]["reference"],
            "Patient/bin-owner"
        );
        assert_eq!(resource["data"], "JVBERi0xLjQgZGlzY2hhcmdlIHN1bW1hcnk=");
        // An update sent as content keeps the id.
        let id = path.trim_start_matches("Binary/");
        s.request(
            "PUT",
            &path,
            &[
                ("Content-Type", "text/plain"),
                ("X-Security-Context", "Patient/bin-owner"),
            ],
            Some(b"v2".to_vec()),
        )
        .expect(200);
        let updated = s.get_with(&path, &fhir_json).expect(200).json();
        assert_eq!(
            (updated["id"].as_str(), updated["contentType"].as_str()),
            (Some(id), Some("text/plain"))
        );
        // Other types are answered in FHIR formats only.
        s.get_with("Patient/none", &[("Accept", "application/pdf")])
            .expect(406);
        s.request(
            "POST",
            "Patient",
            &[("Content-Type", "application/pdf")],
            Some(pdf),
        )
        .expect(415);
    });
}

/// Contained resources and local references that break dom-2, dom-3 or ref-1 were stored
/// (201) by create, update, JSON Patch and XML alike.
#[test]
fn invalid_contained_resources_and_local_references_are_refused() {
    for_each_backend(|s| {
        let org = |id: Option<&str>| {
            let mut o = json!({"resourceType": "Organization", "name": "Acme"});
            if let Some(id) = id {
                o["id"] = json!(id);
            }
            o
        };
        let mut nested = org(Some("o"));
        nested["contained"] = json!([org(Some("deeper"))]);
        let cases = [
            (
                "dom-2",
                json!({"resourceType": "Patient", "contained": [nested],
                       "managingOrganization": {"reference": "#o"}}),
            ),
            (
                "needs an id",
                json!({"resourceType": "Patient", "contained": [org(None)]}),
            ),
            (
                "two contained resources have the id 'o'",
                json!({"resourceType": "Patient", "contained": [org(Some("o")), org(Some("o"))],
                       "managingOrganization": {"reference": "#o"}}),
            ),
            (
                "'#nope' names no contained resource",
                json!({"resourceType": "Patient", "contained": [org(Some("o"))],
                       "managingOrganization": {"reference": "#nope"}}),
            ),
            (
                "only allowed inside a contained resource",
                json!({"resourceType": "Patient", "managingOrganization": {"reference": "#"}}),
            ),
        ];
        let existing = s.create(&patient("Contained"));
        let id = existing["id"].as_str().unwrap().to_string();
        for (expected, body) in &cases {
            for r in [s.post("Patient", body), {
                let mut with_id = body.clone();
                with_id["id"] = json!(id);
                s.put(&format!("Patient/{id}"), &with_id)
            }] {
                let outcome = r.expect(400).outcome();
                assert_eq!(outcome["issue"][0]["code"], "invariant", "{outcome}");
                let text = outcome["issue"][0]["diagnostics"].as_str().unwrap_or("");
                assert!(text.contains(expected), "{expected}: {outcome}");
            }
        }
        // A JSON Patch producing a dangling local reference is refused too.
        s.send_raw(
            "PATCH",
            &format!("Patient/{id}"),
            JSON_PATCH,
            br##"[{"op": "add", "path": "/managingOrganization", "value": {"reference": "#x"}}]"##,
        )
        .expect(400);
        // And XML: a contained resource without an id.
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><contained><Organization><name value="Acme"/></Organization></contained></Patient>"#;
        s.send_raw("POST", "Patient", FHIR_XML, xml.as_bytes())
            .expect(400);
        // What the rules allow still works: `#id` naming a contained resource, and `#`
        // from a contained resource back to its container.
        s.post(
            "Patient",
            &json!({"resourceType": "Patient",
                "contained": [org(Some("o")),
                    {"resourceType": "Provenance", "id": "p", "recorded": "2020-01-01T00:00:00Z",
                     "target": [{"reference": "#"}], "agent": [{"who": {"reference": "#o"}}]}],
                "managingOrganization": {"reference": "#o"}}),
        )
        .expect(201);
        assert_eq!(
            s.read_json(&format!("Patient/{id}"))["meta"]["versionId"],
            "1"
        );
    });
}

/// dom-3: a contained resource that nothing in its container refers to (and that does not
/// refer to its container) was stored. Create, update and patch now answer 400 `invariant`
/// naming it; the same resource with the reference is stored.
#[test]
fn unreferenced_contained_resources_are_refused_dom_3() {
    for_each_backend(|s| {
        let unreferenced = json!({"resourceType": "Patient",
            "contained": [{"resourceType": "Organization", "id": "clinic", "name": "Acme"}]});
        let refused = |r: Resp| {
            let outcome = r.expect(400).outcome();
            assert_eq!(outcome["issue"][0]["code"], "invariant", "{outcome}");
            let text = outcome["issue"][0]["diagnostics"].as_str().unwrap_or("");
            assert!(
                text.contains("'clinic'") && text.contains("dom-3"),
                "{outcome}"
            );
            assert_eq!(
                outcome["issue"][0]["expression"][0], "Patient.contained[0]",
                "{outcome}"
            );
        };
        refused(s.post("Patient", &unreferenced));
        let mut referenced = unreferenced.clone();
        referenced["managingOrganization"] = json!({"reference": "#clinic"});
        let created = s.post("Patient", &referenced).expect(201).json();
        let id = created["id"].as_str().unwrap().to_string();
        let mut update = unreferenced.clone();
        update["id"] = json!(id);
        refused(s.put(&format!("Patient/{id}"), &update));
        // A patch that removes the only reference leaves the contained resource orphaned.
        refused(s.send_raw(
            "PATCH",
            &format!("Patient/{id}"),
            JSON_PATCH,
            br#"[{"op": "remove", "path": "/managingOrganization"}]"#,
        ));
        assert_eq!(
            s.read_json(&format!("Patient/{id}"))["meta"]["versionId"],
            "1"
        );
    });
}

/// A conditional reference in a plain create or update was stored verbatim and never
/// resolved: R4 defines them only in transactions.
#[test]
fn conditional_references_outside_a_transaction_are_refused() {
    for_each_backend(|s| {
        let existing = s.create(&patient("Conditional"));
        let id = existing["id"].as_str().unwrap().to_string();
        let with_reference = |reference: &str| {
            let mut p = patient("Conditional");
            p["managingOrganization"] = json!({"reference": reference});
            p
        };
        // `?identifier=…` names no type to search: a reference to nothing (a review found it
        // stored).
        for reference in ["Organization?identifier=x", "Foo?x=y", "?identifier=x"] {
            s.post("Patient", &with_reference(reference))
                .expect(400)
                .outcome();
            let mut body = with_reference(reference);
            body["id"] = json!(id);
            s.put(&format!("Patient/{id}"), &body).expect(400).outcome();
        }
        let text = s
            .post("Patient", &with_reference("Organization?identifier=x"))
            .expect(400)
            .outcome()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(text.contains("transaction"), "{text}");
        // An absolute URL with a query is a literal reference, stored as written.
        s.post(
            "Patient",
            &with_reference("https://example.org/fhir/Organization?identifier=x"),
        )
        .expect(201);
    });
}

/// `Last-Modified` never follows the response's `Date` (RFC 9110 §8.8.2.1): the date
/// actix keeps is refreshed only now and then, so writes answered just after a second began
/// carried a `Date` of the second before.
#[test]
fn last_modified_never_follows_the_date() {
    for_each_backend(|s| {
        let created = s.create(&patient("Dated"));
        let id = created["id"].as_str().expect("id").to_string();
        for attempt in 0..30 {
            let resp = s
                .put(&format!("Patient/{id}"), &{
                    let mut p = patient("Dated");
                    p["id"] = json!(id);
                    p["gender"] = json!(if attempt % 2 == 0 { "male" } else { "female" });
                    p
                })
                .expect(200);
            let dates: Vec<_> = resp.headers.get_all("date").iter().collect();
            assert_eq!(dates.len(), 1, "one Date header: {dates:?}");
            let parse = |name: &str| {
                let text = resp.header(name).unwrap_or_else(|| panic!("{name} header"));
                httpdate::parse_http_date(text).unwrap_or_else(|e| panic!("{name} {text}: {e}"))
            };
            assert!(
                parse("last-modified") <= parse("date"),
                "attempt {attempt}: Last-Modified {:?} after Date {:?}",
                resp.header("last-modified"),
                resp.header("date")
            );
            std::thread::sleep(std::time::Duration::from_millis(37));
        }
    });
}

#[test]
fn partial_resources_and_dot_ids_are_refused_and_many_identifiers_are_indexed() {
    for_each_backend(|s| {
        let created = s.post("Patient", &patient("Kato")).expect(201).json();
        let id = created["id"].as_str().expect("id").to_string();
        // A `_summary` or `_elements` answer is part of the record: written back, it would
        // replace the whole record.
        let partial = s
            .get(&format!("Patient/{id}?_elements=gender"))
            .expect(200)
            .json();
        assert!(
            partial["meta"]["tag"].to_string().contains("SUBSETTED"),
            "{partial}"
        );
        let refused = s
            .put(&format!("Patient/{id}"), &partial)
            .expect(422)
            .outcome();
        assert!(refused.to_string().contains("SUBSETTED"), "{refused}");
        s.post("Patient", &partial).expect(422);
        let stored = s.get(&format!("Patient/{id}")).expect(200).json();
        assert_eq!(stored["name"][0]["family"], "Kato");
        assert_eq!(stored["meta"]["versionId"], "1");
        // Ids made of dots fit the R4 pattern but are resolved away in any URL (so they are
        // sent here as batch entries, which no client library resolves).
        for dots in [".", ".."] {
            let mut named = patient("Dots");
            named["id"] = json!(dots);
            let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": named, "request": {"method": "PUT", "url": format!("Patient/{dots}")}}]});
            let answer = s.post("", &batch).expect(200).json();
            let status = answer["entry"][0]["response"]["status"].to_string();
            assert!(status.contains("400"), "{dots}: {answer}");
        }
        // Thousands of repeated elements are indexed, each searchable.
        let many = json!({"resourceType": "Patient", "identifier": (0..5_000)
            .map(|i| json!({"system": "urn:renkei:test:many", "value": format!("v{i}")}))
            .collect::<Vec<_>>()});
        let many_id = s.post("Patient", &many).expect(201).json()["id"].clone();
        for value in ["v0", "v2500", "v4999"] {
            let found = s
                .get(&format!("Patient?identifier=urn:renkei:test:many|{value}"))
                .expect(200)
                .json();
            assert_eq!(found["entry"][0]["resource"]["id"], many_id, "{value}");
        }
    });
}

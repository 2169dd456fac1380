//! Invalid requests: each answers 4xx with an OperationOutcome, and the server stays up.

use crate::support::*;
use serde_json::{json, Value};

fn diagnostics(outcome: &Value) -> String {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["diagnostics"].as_str().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn expressions(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
        .map(|e| e.as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn invalid_content() {
    for_each_backend(|s| {
        // Malformed JSON.
        let r = s
            .send_raw(
                "POST",
                "Patient",
                FHIR_JSON,
                b"{\"resourceType\": \"Patient\", ",
            )
            .expect(400);
        r.outcome();
        s.send_raw("POST", "Patient", FHIR_JSON, b"not json at all")
            .expect(400)
            .outcome();
        s.send_raw("POST", "Patient", FHIR_JSON, b"[1,2]")
            .expect(400)
            .outcome();
        s.send_raw("POST", "Patient", FHIR_JSON, b"{}")
            .expect(400)
            .outcome();
        // Empty body.
        s.send_raw("POST", "Patient", FHIR_JSON, b"")
            .expect(400)
            .outcome();
        // Empty array.
        let r = s
            .post("Patient", &json!({"resourceType": "Patient", "name": []}))
            .expect(400);
        let o = r.outcome();
        assert!(
            expressions(&o).iter().any(|e| e == "Patient.name"),
            "expression Patient.name expected: {o}"
        );
        // Unknown element, nested.
        let r = s
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": [{"family": "X", "nickname": "Y"}]}),
            )
            .expect(400);
        let o = r.outcome();
        let all = format!("{:?} {}", expressions(&o), diagnostics(&o));
        assert!(
            all.contains("Patient.name[0].nickname") || all.contains("Patient.name.nickname"),
            "path of the unknown element: {o}"
        );
        let r = s
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "colour": "blue"}),
            )
            .expect(400);
        assert!(format!("{}", r.outcome()).contains("colour"));
        // Wrong primitive type, bad code, bad date.
        s.post(
            "Patient",
            &json!({"resourceType": "Patient", "active": "yes"}),
        )
        .expect(400)
        .outcome();
        s.post(
            "Patient",
            &json!({"resourceType": "Patient", "birthDate": "31/12/2000"}),
        )
        .expect(400)
        .outcome();
        s.post("Patient", &json!({"resourceType": "Patient", "gender": 5}))
            .expect(400)
            .outcome();
        // Body type differs from the URL.
        let r = s
            .post(
                "Patient",
                &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
            )
            .expect(400);
        r.outcome();
        s.put("Patient/abc", &json!({"resourceType": "Observation", "id": "abc", "status": "final", "code": {"text": "x"}})).expect(400);
        // PUT id rules.
        let r = s
            .put(
                "Patient/abc",
                &json!({"resourceType": "Patient", "id": "xyz"}),
            )
            .expect(400);
        assert!(diagnostics(&r.outcome()).contains("xyz"));
        s.put("Patient/abc", &json!({"resourceType": "Patient"}))
            .expect(400)
            .outcome();
        s.put(
            "Patient/bad$id",
            &json!({"resourceType": "Patient", "id": "bad$id"}),
        )
        .expect(400);
        let long = "a".repeat(65);
        s.put(
            &format!("Patient/{long}"),
            &json!({"resourceType": "Patient", "id": long}),
        )
        .expect(400);
        // A property given twice (a map would keep only the last one).
        let r = s
            .send_raw(
                "POST",
                "Patient",
                "application/fhir+json",
                br#"{"resourceType": "Patient", "gender": "male", "gender": "female"}"#,
            )
            .expect(400);
        assert!(diagnostics(&r.outcome()).contains("gender"));
        // Reading by an id no resource can have is a bad request, not a missing resource.
        for path in [
            "Patient/bad$id",
            "Patient/bad$id/_history/1",
            "Patient/bad$id/_history",
        ] {
            let r = s.get(path).expect(400);
            assert!(diagnostics(&r.outcome()).contains("bad$id"), "{path}");
        }
        s.get(&format!("Patient/{long}")).expect(400);
        // Malformed XML.
        s.send_raw(
            "POST",
            "Patient",
            FHIR_XML,
            b"<Patient xmlns=\"http://hl7.org/fhir\"><wrong value=\"1\"/></Patient>",
        )
        .expect(400)
        .outcome();
        // Nothing of that was stored.
        let (all, _) = s.all_pages("_history");
        assert!(all.is_empty(), "invalid writes stored something: {all:?}");
        assert!(
            s.stderr_tail().find("panicked").is_none(),
            "server panicked:\n{}",
            s.stderr_tail()
        );
    });
}

/// Narrative XHTML sent in JSON is checked like XML input: not well-formed (which once broke
/// every XML response that included the resource with a 500), not allowed by txt-1, or empty
/// (txt-2) answers 400 with the element path; nothing is stored and XML searches keep working.
#[test]
fn malformed_narrative_is_refused() {
    for_each_backend(|s| {
        let xhtml = "http://www.w3.org/1999/xhtml";
        let organization = |div: String| {
            json!({
                "resourceType": "Organization",
                "text": {"status": "generated", "div": div},
                "name": "Narrative test"
            })
        };
        for (inner, reason) in [
            ("<p>x", "not well-formed"),
            ("a ]]> b", "']]>'"),
            ("<script>alert(1)</script>x", "<script>"),
            ("<p onclick=\"alert(1)\">x</p>", "'onclick'"),
            ("<a href=\"javascript:alert(1)\">x</a>", "'javascript:'"),
            ("  ", "txt-2"),
        ] {
            let body = organization(format!("<div xmlns=\"{xhtml}\">{inner}</div>"));
            let r = s.post("Organization", &body).expect(400);
            let o = r.outcome();
            assert!(
                expressions(&o).iter().any(|e| e == "Organization.text.div"),
                "{inner}: expression Organization.text.div expected: {o}"
            );
            let d = diagnostics(&o);
            assert!(
                d.contains("Organization.text.div") && d.contains(reason),
                "{inner}: diagnostics should name the path and '{reason}': {d}"
            );
        }
        // The same rule inside a contained resource.
        let mut contained = organization(format!("<div xmlns=\"{xhtml}\">ok</div>"));
        contained["contained"] = json!([{
            "resourceType": "Organization",
            "id": "c1",
            "text": {"status": "generated", "div": format!("<div xmlns=\"{xhtml}\"><p>x</div>")}
        }]);
        let r = s.post("Organization", &contained).expect(400);
        assert!(
            expressions(&r.outcome())
                .iter()
                .any(|e| e == "Organization.contained[0].text.div"),
            "{}",
            r.body
        );
        let (all, _) = s.all_pages("_history");
        assert!(
            all.is_empty(),
            "refused narratives stored something: {all:?}"
        );
        // A well-formed narrative with escaped markup is stored and renders as XML as sent.
        let div = format!("<div xmlns=\"{xhtml}\"><p>a ]]&gt; b &amp; c</p></div>");
        s.create(&organization(div.clone()));
        let r = s.get("Organization?_format=xml").expect(200);
        assert!(r.body.contains(&div), "{}", truncate(&r.body, 2000));
    });
}

/// XML that is not well-formed (the root element is never closed) must be refused.
#[test]
fn truncated_xml_is_refused() {
    for_each_backend(|s| {
        let r = s.send_raw(
            "POST",
            "Patient",
            FHIR_XML,
            b"<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/>",
        );
        assert_eq!(r.status, 400, "truncated XML accepted: {}", r.body);
        let r = s.send_raw(
            "POST",
            "Patient",
            FHIR_XML,
            b"<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"X\"/></name>",
        );
        assert_eq!(r.status, 400, "truncated XML accepted: {}", r.body);
        // Unbalanced in other ways; markup inside comments, CDATA and attribute values does
        // not count as tags.
        for body in [
            &b"<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/><!-- </Patient> -->"
                [..],
            b"<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/><!-- </Patient>",
            b"<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true",
            b"<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"X\"/></Patient></name>",
            b"<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/></Patient></Patient>",
        ] {
            let r = s.send_raw("POST", "Patient", FHIR_XML, body);
            assert_eq!(
                r.status,
                400,
                "unbalanced XML accepted: {}\n{}",
                String::from_utf8_lossy(body),
                r.body
            );
            r.outcome();
        }
        let (all, _) = s.all_pages("_history");
        assert!(all.is_empty(), "malformed XML stored something: {all:?}");
        // Well-formed XML with `>` and `<` in comments and attribute values still works.
        let r = s
            .send_raw(
                "POST",
                "Patient",
                FHIR_XML,
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- a <Patient> -->\n<Patient xmlns=\"http://hl7.org/fhir\"><!-- </Patient> --><name><family value=\"a > b &lt; c\"/></name></Patient>".as_bytes(),
            )
            .expect(201);
        assert_eq!(r.json()["name"][0]["family"], "a > b < c");
    });
}

/// Every FHIR request needs `Authorization: Bearer <token>` (the harness sends the `test-ehr`
/// token by default); another facility may not change what this one wrote.
#[test]
fn requests_need_a_bearer_token() {
    for_each_backend(|s| {
        s.anonymous().get("metadata").expect(200);
        let r = s.anonymous().get("Patient/x").expect(401);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer")),
            "{:?}",
            r.headers
        );
        r.outcome();
        s.with_token("not-a-token")
            .get("Patient?_id=x")
            .expect(401)
            .outcome();
        s.request(
            "GET",
            "Patient/x",
            &[("Authorization", "Basic dGVzdDp0ZXN0")],
            None,
        )
        .expect(401);
        // Two credentials are refused, whatever their order (a review found the first used).
        let good = format!("Bearer {}", s.token);
        for pair in [
            ["Bearer garbage", good.as_str()],
            [good.as_str(), "Bearer garbage"],
        ] {
            s.anonymous()
                .request(
                    "GET",
                    "Patient?_id=x",
                    &[("Authorization", pair[0]), ("Authorization", pair[1])],
                    None,
                )
                .expect(400)
                .outcome();
        }
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        for scheme in ["BEARER", "bearer", "bEaReR"] {
            let authorization = format!("{scheme} {}", s.token);
            s.anonymous()
                .request(
                    "GET",
                    "metadata",
                    &[("Authorization", &authorization)],
                    None,
                )
                .expect(200);
            s.anonymous()
                .request(
                    "GET",
                    "Patient?_id=x",
                    &[("Authorization", &authorization)],
                    None,
                )
                .expect(200);
        }
        s.anonymous()
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "active": true}),
            )
            .expect(401)
            .outcome();
        // Without a valid token nothing else is looked at: an invalid body, criteria or
        // parameters still answer 401, never the details of a 400.
        let invalid = json!({"resourceType": "Observation", "bogus": 1});
        let bad_batch = json!({"resourceType": "Bundle", "type": "batch", "bogus": 1});
        for caller in [s.anonymous(), s.with_token("not-a-token")] {
            caller.post("Observation", &invalid).expect(401);
            caller.put("Observation/x", &invalid).expect(401);
            caller.put("Observation?bogus=1", &invalid).expect(401);
            caller.post("", &bad_batch).expect(401);
            caller.get("Observation?bogus=1&_sort=nothing").expect(401);
            caller.get("Patient/x/_history?_since=never").expect(401);
            caller.get("Patient/$ihe-pix?bogus=1").expect(401);
        }
        let (all, _) = s.all_pages("Patient/_history");
        assert!(
            all.is_empty(),
            "an unauthenticated write stored something: {all:?}"
        );

        let other = s.token_for("other-ehr", "Organization/other-facility", "facility", &[]);
        let as_other = s.with_token(&other);
        // A resource the other facility can see (not patient data): changing it is 403.
        let org = s.create(&json!({"resourceType": "Organization", "name": "Test facility"}));
        let org_id = org["id"].as_str().unwrap();
        as_other.read_json(&format!("Organization/{org_id}"));
        as_other
            .put(
                &format!("Organization/{org_id}"),
                &json!({"resourceType": "Organization", "id": org_id, "name": "Taken over"}),
            )
            .expect(403)
            .outcome();
        as_other
            .delete(&format!("Organization/{org_id}"))
            .expect(403)
            .outcome();
        let current = s.read_json(&format!("Organization/{org_id}"));
        assert_eq!(current["meta"]["versionId"], "1");
        assert_eq!(current["name"], "Test facility");
        // Patient data it may not see (no consent) answers 404 like a missing resource, also
        // to writes, so a write learns no more than a read would.
        let p = s.create(&json!({"resourceType": "Patient", "active": true}));
        let id = p["id"].as_str().unwrap();
        as_other.get(&format!("Patient/{id}")).expect(404);
        as_other
            .put(
                &format!("Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id, "active": false}),
            )
            .expect(404);
        let current = s.read_json(&format!("Patient/{id}"));
        assert_eq!(current["meta"]["versionId"], "1");
        assert_eq!(current["active"], true);
        // The other facility writes its own resources.
        as_other.create(&json!({"resourceType": "Patient", "active": true}));
    });
}

#[test]
fn deep_nesting_is_refused() {
    for_each_backend(|s| {
        let depth = 10_000;
        let mut json_body = String::from("{\"resourceType\":\"Patient\",\"extension\":");
        json_body.push_str(&"[{\"url\":\"http://x\",\"extension\":".repeat(depth));
        json_body.push_str("[]");
        json_body.push_str(&"}]".repeat(depth));
        json_body.push('}');
        let r = s.send_raw("POST", "Patient", FHIR_JSON, json_body.as_bytes());
        assert_eq!(r.status, 400, "deep JSON: {}", truncate(&r.body, 300));
        r.outcome();
        // Raw nesting, not even FHIR-shaped.
        let raw = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        s.send_raw("POST", "Patient", FHIR_JSON, raw.as_bytes())
            .expect(400);
        let mut xml = String::from("<Patient xmlns=\"http://hl7.org/fhir\">");
        xml.push_str(&"<extension url=\"http://x\">".repeat(depth));
        xml.push_str(&"</extension>".repeat(depth));
        xml.push_str("</Patient>");
        let r = s.send_raw("POST", "Patient", FHIR_XML, xml.as_bytes());
        assert_eq!(r.status, 400, "deep XML: {}", truncate(&r.body, 300));
        // Deep JSON Patch value and deep transaction.
        let patch = format!(
            "[{{\"op\":\"add\",\"path\":\"/x\",\"value\":{}{}}}]",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let p = s.create(&json!({"resourceType": "Patient"}));
        let r = s.send_raw(
            "PATCH",
            &format!("Patient/{}", p["id"].as_str().unwrap()),
            JSON_PATCH,
            patch.as_bytes(),
        );
        assert!((400..500).contains(&r.status), "deep patch: {}", r.status);
        // Still alive and well.
        s.get("metadata").expect(200);
        s.create(&json!({"resourceType": "Patient", "active": true}));
    });
}

#[test]
fn body_limit() {
    for_each_backend_with(&[("RENKEI_MAX_BODY_BYTES", "1000")], |s| {
        let big = json!({"resourceType": "Patient", "name": [{"family": "x".repeat(2000)}]});
        s.post("Patient", &big).expect(413).outcome();
        // Without Content-Length (chunked): still refused.
        let bytes = serde_json::to_vec(&big).unwrap();
        let r = s
            .client
            .post(s.url("Patient"))
            .header("Content-Type", FHIR_JSON)
            .body(reqwest::blocking::Body::new(std::io::Cursor::new(bytes)))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 413);
        // Bundles and patches too.
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": big, "request": {"method": "POST", "url": "Patient"}}]});
        s.post("", &bundle).expect(413);
        // Below the limit works.
        s.post(
            "Patient",
            &json!({"resourceType": "Patient", "active": true}),
        )
        .expect(201);
    });
}

#[test]
fn routing_errors() {
    for_each_backend(|s| {
        for path in ["Patient/1/foo/bar/baz", "Patient/1/_history/1/extra"] {
            let r = s.get(path).expect(404);
            r.outcome();
        }
        let r = s
            .request("GET", &s.base.replace("/fhir", "/nothing-here"), &[], None)
            .expect(404);
        r.outcome();
        let r = s
            .request(
                "POST",
                "Patient/1",
                &[("Content-Type", FHIR_JSON)],
                Some(b"{}".to_vec()),
            )
            .expect(405);
        r.outcome();
        assert_eq!(
            r.header("allow"),
            Some("GET, HEAD, PUT, PATCH, DELETE, OPTIONS")
        );
        for method in ["DELETE", "PUT", "POST"] {
            let r = s.request(method, "metadata", &[], None).expect(405);
            assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"), "{method}");
            r.outcome();
        }
        s.request(
            "PUT",
            "Patient/1/_history/1",
            &[("Content-Type", FHIR_JSON)],
            Some(b"{}".to_vec()),
        )
        .expect(405);
        let r = s.request("POST", "Patient/_history", &[], None).expect(405);
        assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
        for (method, path, allow) in [
            ("DELETE", "", "GET, HEAD, POST"),
            ("PATCH", "", "GET, HEAD, POST"),
            ("DELETE", "_history", "GET, HEAD"),
            ("GET", "_search", "POST"),
            ("POST", "AuditEvent", "GET, HEAD"),
            ("DELETE", "AuditEvent/x", "GET, HEAD"),
        ] {
            let r = s.request(method, path, &[], None).expect(405);
            assert_eq!(
                r.header("allow"),
                Some(format!("{allow}, OPTIONS").as_str()),
                "{method} {path}"
            );
            r.outcome();
        }
        s.request("DELETE", "Patient/x/_history", &[], None)
            .expect(405);
        // Every path that answers GET answers HEAD: the same status and headers, no body.
        let patient = s.create(&json!({"resourceType": "Patient", "gender": "other"}));
        let id = patient["id"].as_str().unwrap();
        for path in [
            "Patient".to_string(),
            format!("Patient?_id={id}"),
            "Patient/_history".to_string(),
            format!("Patient/{id}/_history"),
            "_history".to_string(),
            format!("Patient/{id}/$everything"),
            format!("Patient/{id}/Observation"),
        ] {
            let got = s.get(&path).expect(200);
            let head = s.request("HEAD", &path, &[], None).expect(200);
            assert!(head.body.is_empty(), "HEAD {path}: {}", head.body);
            assert_eq!(head.content_type(), got.content_type(), "HEAD {path}");
        }
        // A delete aimed at something that cannot be an id is malformed, not a no-op.
        for path in ["Patient/$everything", "Observation/bad!id"] {
            s.request("DELETE", path, &[], None).expect(400).outcome();
        }
        // Invalid version id in a vread.
        let r = s.get("Patient/1/_history/abc");
        assert!(matches!(r.status, 400 | 404), "{}", r.status);
        assert!(s.stderr_tail().find("panicked").is_none());
    });
}

/// Requests a conformance tester sends on purpose: malformed URL encoding, an unknown type in
/// `_type`, a bad `_since`, a forged page token, a Bundle repeating a fullUrl (bdl-7), and
/// HEAD on the CapabilityStatement.
#[test]
fn malformed_requests_answer_400_with_an_outcome() {
    for_each_backend(|s| {
        for query in [
            "Patient?name=%zz",
            "Patient?name=%ff%fe",
            "Patient?name=%ED%A0%80",
            "Patient?na%5=x",
        ] {
            let r = s.get(query).expect(400);
            assert!(
                diagnostics(&r.outcome()).contains("malformed query"),
                "{query}: {}",
                r.body
            );
        }
        let r = s.request(
            "POST",
            "Patient/_search",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(b"name=%zz".to_vec()),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        // Well-formed escapes still decode.
        s.get("Patient?name=%E5%B1%B1%E7%94%B0").expect(200);

        let patient = s
            .post("Patient", &json!({"resourceType": "Patient"}))
            .expect(201);
        let id = patient.json()["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for (path, named) in [
            (format!("Patient/{id}/$everything?_type=Foo"), "Foo"),
            ("?_type=Observation,Foo".to_string(), "Foo"),
            (
                format!("Patient/{id}/$everything?_since=bad"),
                "_since 'bad' is not a FHIR instant",
            ),
        ] {
            let r = s.get(&path).expect(400);
            assert!(
                diagnostics(&r.outcome()).contains(named),
                "{path}: {}",
                r.body
            );
        }
        s.get(&format!(
            "Patient/{id}/$everything?_since=2020-01-01T00:00:00Z"
        ))
        .expect(200);

        // A page token made for another _sort (here: one key, the search has none) cannot say
        // where a page starts: refused, not answered with some other page.
        let one_key_token: String = br#"["f",1,[5]]"#.iter().map(|b| format!("{b:02x}")).collect();
        let r = s
            .get(&format!("Patient?_page_token={one_key_token}"))
            .expect(400);
        assert!(
            diagnostics(&r.outcome()).contains("_page_token"),
            "{}",
            r.body
        );

        let entry = json!({"fullUrl": "urn:uuid:0b5a2b5e-7f3c-4a36-9b5e-2d1f0f6f8a11",
                           "resource": {"resourceType": "Patient"},
                           "request": {"method": "POST", "url": "Patient"}});
        for kind in ["transaction", "batch"] {
            let bundle = json!({"resourceType": "Bundle", "type": kind,
                                "entry": [entry.clone(), entry.clone()]});
            let r = s.post("", &bundle).expect(400);
            assert!(
                diagnostics(&r.outcome()).contains("bdl-7"),
                "{kind}: {}",
                r.body
            );
        }

        // Parameters without an expression cannot be searched: reported, never a silent 0.
        for param in ["_text", "_content", "_query"] {
            let r = s.get(&format!("Patient?{param}=x")).expect(200);
            let outcome = r.json()["entry"]
                .as_array()
                .and_then(|entries| {
                    entries
                        .iter()
                        .find(|e| e["search"]["mode"] == "outcome")
                        .cloned()
                })
                .unwrap_or_default();
            assert!(outcome.to_string().contains(param), "{param}: {}", r.body);
            s.get_with(
                &format!("Patient?{param}=x"),
                &[("Prefer", "handling=strict")],
            )
            .expect(400);
        }

        // No body and no Content-Type: the body is missing (400), not of the wrong type (415).
        let r = s.request("POST", "Patient", &[], None);
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            diagnostics(&r.outcome()).contains("needs a body"),
            "{}",
            r.body
        );
        let r = s.request("POST", "Patient", &[], Some(b"{}".to_vec()));
        assert_eq!(r.status, 415, "{}", r.body);

        let r = s.request("HEAD", "metadata", &[], None);
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
    });
}

//! What a client sends that the server must not take at face value: characters XML cannot
//! carry, forged `Host` / `X-Forwarded-*` headers, bodies in encodings the server does not
//! read, and percent-encodings that are not UTF-8.

use crate::support::*;
use serde_json::json;

/// Characters XML 1.0 forbids anywhere in a document (even as character references).
fn forbidden_in_xml(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{B}' | '\u{C}' | '\u{E}'..='\u{1F}' | '\u{FFFE}' | '\u{FFFF}')
}

#[track_caller]
fn assert_xml_without_forbidden_characters(r: &Resp) {
    assert!(
        r.content_type().starts_with("application/fhir+xml"),
        "{} {}",
        r.content_type(),
        r.body
    );
    assert!(
        !r.body.chars().any(forbidden_in_xml),
        "not well-formed XML: {:?}",
        truncate(&r.body, 2000)
    );
}

#[test]
fn xml_answers_replace_characters_xml_forbids() {
    for_each_backend(|s| {
        let xml = [("Accept", "application/fhir+xml")];
        // Echoed from the query into an OperationOutcome.
        for query in ["Patient?_sort=%01", "Patient?_count=%1b", "Patient/%01"] {
            let r = s.get_with(query, &xml);
            assert!(r.status >= 400, "{query}: {}", r.status);
            assert_xml_without_forbidden_characters(&r);
        }
        let r = s.get_with("Patient?_sort=%01", &xml).expect(400);
        assert!(r.body.contains('\u{FFFD}'), "{}", r.body);
        // Echoed into the OperationOutcome entry of a searchset.
        let r = s.get_with("Patient?_foo%01=x", &xml).expect(200);
        assert_xml_without_forbidden_characters(&r);
        // An XML body carrying one as a character reference.
        let r = s.request(
            "POST",
            "Patient",
            &[("Content-Type", FHIR_XML), ("Accept", FHIR_XML)],
            Some(
                br#"<Patient xmlns="http://hl7.org/fhir"><name><family value="a&#x1;b"/></name></Patient>"#
                    .to_vec(),
            ),
        );
        assert_xml_without_forbidden_characters(&r);
        // A JSON resource holding one (JSON can), read back as XML.
        let r = s.request(
            "POST",
            "Patient",
            &[("Content-Type", FHIR_JSON), ("Accept", FHIR_XML)],
            Some(br#"{"resourceType":"Patient","name":[{"family":"a\u0000b\u001bc"}]}"#.to_vec()),
        );
        assert_xml_without_forbidden_characters(&r);
        if r.status == 201 {
            assert!(r.body.contains("a\u{FFFD}b\u{FFFD}c"), "{}", r.body);
            let location = r.header("location").unwrap().to_string();
            let read = s.get_with(&location, &xml).expect(200);
            assert_xml_without_forbidden_characters(&read);
            let found = s.get_with("Patient?_count=50", &xml).expect(200);
            assert_xml_without_forbidden_characters(&found);
        }
    });
}

#[test]
fn forged_forwarded_headers_make_no_links() {
    for_each_backend(|s| {
        let patient = json!({"resourceType": "Patient", "active": true});
        let own = format!("{}/", s.base);
        for forged in [
            [
                ("X-Forwarded-Proto", "javascript"),
                ("X-Forwarded-Host", "attacker.example"),
            ],
            [
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "attacker.example/x?y"),
            ],
            [("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "a b")],
        ] {
            let r = s
                .send_json_with("POST", "Patient", &patient, &forged)
                .expect(201);
            let location = r.header("location").unwrap_or_default();
            assert!(location.starts_with(&own), "{forged:?}: {location}");
            let bundle = s.get_with("Patient?_count=1", &forged).expect(200).json();
            let own_link = link(&bundle, "self").unwrap_or_default();
            assert!(own_link.starts_with(&own), "{forged:?}: {own_link}");
            let full_url = bundle["entry"][0]["fullUrl"].as_str().unwrap_or_default();
            assert!(full_url.starts_with(&own), "{forged:?}: {full_url}");
        }
        // A proxy's well-formed headers still name the address clients used.
        let proxied = [
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "gw.example:8443"),
        ];
        let r = s
            .send_json_with("POST", "Patient", &patient, &proxied)
            .expect(201);
        let location = r.header("location").unwrap_or_default();
        assert!(
            location.starts_with("https://gw.example:8443/fhir/Patient/"),
            "{location}"
        );
    });
    // With base_url configured, no header plays a part.
    for_each_backend_with(
        &[("RENKEI_BASE_URL", "https://gateway.example/fhir")],
        |s| {
            let patient = json!({"resourceType": "Patient", "active": true});
            // Two, so that a page of one has a next link.
            s.create(&patient);
            s.create(&patient);
            for headers in [
                vec![
                    ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Host", "other.example"),
                ],
                vec![("X-Forwarded-Proto", "javascript")],
                vec![],
            ] {
                let r = s
                    .send_json_with("POST", "Patient", &patient, &headers)
                    .expect(201);
                let location = r.header("location").unwrap_or_default();
                assert!(
                    location.starts_with("https://gateway.example/fhir/Patient/"),
                    "{headers:?}: {location}"
                );
                let bundle = s.get_with("Patient?_count=1", &headers).expect(200).json();
                let next = link(&bundle, "next").unwrap_or_default();
                assert!(
                    next.starts_with("https://gateway.example/fhir/Patient?"),
                    "{headers:?}: {next}"
                );
            }
        },
    );
}

/// Links name the address the client typed: `Forwarded`'s first element only (RFC 7239: the
/// client-facing proxy writes it, each later hop appends its own; a parameter the first
/// element lacked had been taken from a later one), and a `Host` with an empty port
/// (`x.example:`) without its colon (it had been copied as `http://x.example:/fhir`).
#[test]
fn links_name_the_address_the_client_typed() {
    for_each_backend(|s| {
        let patient = json!({"resourceType": "Patient", "active": true});
        let own = format!("{}/Patient", s.base);
        for (headers, expected) in [
            (
                vec![("Forwarded", "for=192.0.2.1, host=inner.example;proto=https")],
                own.as_str(),
            ),
            (
                vec![("Forwarded", "proto=https;host=a.example, host=b.example")],
                "https://a.example/fhir/Patient",
            ),
            (
                vec![
                    ("Forwarded", "host=a.example:8443;proto=https"),
                    ("Forwarded", "host=b.example;proto=http"),
                ],
                "https://a.example:8443/fhir/Patient",
            ),
            (
                vec![("Host", "x.example:")],
                "http://x.example/fhir/Patient",
            ),
        ] {
            let r = s
                .send_json_with("POST", "Patient", &patient, &headers)
                .expect(201);
            let location = r.header("location").unwrap_or_default();
            assert!(location.starts_with(expected), "{headers:?}: {location}");
            let bundle = s.get_with("Patient?_count=1", &headers).expect(200).json();
            let own_link = link(&bundle, "self").unwrap_or_default();
            assert!(own_link.starts_with(expected), "{headers:?}: {own_link}");
            let full_url = bundle["entry"][0]["fullUrl"].as_str().unwrap_or_default();
            assert!(full_url.starts_with(expected), "{headers:?}: {full_url}");
        }
    });
}

/// Every body is read as UTF-8, and `charset` says so or is absent: `utf8` (a common
/// spelling) is taken like `UTF-8` (it had been refused with 415), and the form body of
/// `POST _search` is held to the same rule (it had not been checked at all).
#[test]
fn bodies_are_utf8_whatever_their_media_type() {
    for_each_backend(|s| {
        let body = br#"{"resourceType":"Patient","gender":"other"}"#.to_vec();
        for content_type in [
            "application/fhir+json; charset=utf8",
            "application/fhir+json; charset=\"UTF8\"",
        ] {
            s.request(
                "POST",
                "Patient",
                &[("Content-Type", content_type)],
                Some(body.clone()),
            )
            .expect(201);
        }
        let form = b"gender=other".to_vec();
        for content_type in [
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=UTF-8",
            "application/x-www-form-urlencoded; charset=utf8",
        ] {
            let found = s
                .request(
                    "POST",
                    "Patient/_search",
                    &[("Content-Type", content_type)],
                    Some(form.clone()),
                )
                .expect(200)
                .json();
            let matches = found["entry"].as_array().map_or(0, Vec::len);
            assert_eq!(matches, 2, "{content_type}: {found}");
            s.request(
                "POST",
                "_search",
                &[("Content-Type", content_type)],
                Some(b"_type=Patient".to_vec()),
            )
            .expect(200);
        }
        for content_type in [
            "application/x-www-form-urlencoded; charset=iso-8859-1",
            "application/x-www-form-urlencoded; charset=utf-16",
        ] {
            for path in [
                "Patient/_search",
                "_search?_type=Patient",
                "AuditEvent/_search",
            ] {
                let r = s.request(
                    "POST",
                    path,
                    &[("Content-Type", content_type)],
                    Some(form.clone()),
                );
                assert_eq!(r.status, 415, "{path} {content_type}: {}", r.body);
                assert_eq!(r.json()["resourceType"], "OperationOutcome", "{}", r.body);
                assert!(r.outcome().to_string().contains("charset"), "{}", r.body);
            }
        }
    });
}

#[test]
fn bodies_the_server_cannot_read_as_sent_are_refused_with_415() {
    for_each_backend(|s| {
        let body = br#"{"resourceType":"Patient","active":true}"#.to_vec();
        for encoding in ["gzip", "br", "x-foo", "identity, gzip"] {
            let r = s.request(
                "POST",
                "Patient",
                &[("Content-Type", FHIR_JSON), ("Content-Encoding", encoding)],
                Some(body.clone()),
            );
            assert_eq!(r.status, 415, "{encoding}: {}", r.body);
            assert!(
                r.outcome().to_string().contains("Content-Encoding"),
                "{}",
                r.body
            );
        }
        s.request(
            "POST",
            "Patient",
            &[
                ("Content-Type", FHIR_JSON),
                ("Content-Encoding", "identity"),
            ],
            Some(body.clone()),
        )
        .expect(201);
        for content_type in [
            "application/fhir+json; charset=utf-16",
            "application/fhir+json; charset=latin1",
        ] {
            let r = s.request(
                "POST",
                "Patient",
                &[("Content-Type", content_type)],
                Some(body.clone()),
            );
            assert_eq!(r.status, 415, "{content_type}: {}", r.body);
            assert!(r.outcome().to_string().contains("charset"), "{}", r.body);
        }
        s.request(
            "POST",
            "Patient",
            &[("Content-Type", "application/fhir+json; charset=UTF-8")],
            Some(body),
        )
        .expect(201);
    });
}

#[test]
fn errors_are_answered_as_the_client_reads_them() {
    for_each_backend(|s| {
        // A query that is not UTF-8 is refused in the format asked for.
        let r = s
            .get_with("Patient?family=%FF%FE", &[("Accept", FHIR_XML)])
            .expect(400);
        assert!(
            r.content_type().starts_with("application/fhir+xml"),
            "{}",
            r.content_type()
        );
        assert!(r.body.contains("<OperationOutcome"), "{}", r.body);
        let r = s.get("Patient?family=%FF%FE&_format=xml").expect(400);
        assert!(
            r.content_type().starts_with("application/fhir+xml"),
            "{}",
            r.content_type()
        );
        // The token endpoint answers OAuth errors, an oversized request too.
        let url = s.base.trim_end_matches("/fhir").to_string() + "/auth/token";
        let response = s
            .anonymous_client
            .post(url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&x={}",
                "a".repeat(200_000)
            ))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 413);
        let error: serde_json::Value = response.json().unwrap();
        assert_eq!(error["error"], "invalid_request", "{error}");
        // ... and leaves its refused Login event, as every token request does.
        let auditor = s.token_for("auditor-oversized", TEST_ORGANIZATION, "auditor", &[]);
        let logins = s
            .with_token(&auditor)
            .get("AuditEvent?type=110114&outcome=4&_count=50")
            .expect(200)
            .json();
        assert!(
            logins["entry"].as_array().is_some_and(|entries| entries
                .iter()
                .any(|e| e["resource"]["outcomeDesc"]
                    .as_str()
                    .is_some_and(|d| d.contains("limit") || d.contains("large")))),
            "{logins}"
        );
    });
}

#[test]
fn percent_encodings_that_are_not_utf8_are_refused() {
    for_each_backend(|s| {
        let patient =
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}]});
        let r = s
            .send_json_with(
                "POST",
                "Patient",
                &patient,
                &[("If-None-Exist", "identifier=%FF")],
            )
            .expect(400);
        assert!(
            r.outcome().to_string().contains("If-None-Exist"),
            "{}",
            r.body
        );
        s.send_json_with(
            "POST",
            "Patient",
            &patient,
            &[("If-None-Exist", "identifier=urn%3Ax%7C1")],
        )
        .expect(201);
        // A form body whose bytes are not UTF-8.
        let r = s.request(
            "POST",
            "Patient/_search",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(b"\xff\xfe=x".to_vec()),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.outcome().to_string().contains("UTF-8"), "{}", r.body);
        let r = s.request(
            "POST",
            "Patient/_search",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(b"identifier=%FF%FE".to_vec()),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        // A break-glass reason that does not decode to text opens nothing.
        let id = s.create(&patient)["id"].as_str().unwrap().to_string();
        let er = s.token_for("er-utf8", TEST_ORGANIZATION, "facility", &["--break-glass"]);
        let er = s.with_token(&er);
        let r = er
            .get_with(
                &format!("Patient/{id}"),
                &[
                    ("X-Purpose-Of-Use", "ETREAT"),
                    ("X-Break-Glass-Reason", "%FF%FE"),
                ],
            )
            .expect(400);
        assert!(
            r.outcome().to_string().contains("X-Break-Glass-Reason"),
            "{}",
            r.body
        );
        // Nor one whose escapes decode to control characters (a review found `%00` and a
        // line break opening the glass and landing in the trail).
        for reason in ["%00", "ok%0D%0AX-Injected: 1", "%1B%5B31m", "a%E2%80%AEb"] {
            er.get_with(
                &format!("Patient/{id}"),
                &[
                    ("X-Purpose-Of-Use", "ETREAT"),
                    ("X-Break-Glass-Reason", reason),
                ],
            )
            .expect(400);
        }
        // Nor one nobody can see (a zero-width space, a byte-order mark): no reason.
        for reason in ["%E2%80%8B", "%EF%BB%BF", " %E2%80%8B "] {
            er.get_with(
                &format!("Patient/{id}"),
                &[
                    ("X-Purpose-Of-Use", "ETREAT"),
                    ("X-Break-Glass-Reason", reason),
                ],
            )
            .expect(403);
        }
        er.get_with(
            &format!("Patient/{id}"),
            &[
                ("X-Purpose-Of-Use", "ETREAT"),
                (
                    "X-Break-Glass-Reason",
                    "%E6%84%8F%E8%AD%98%E4%B8%8D%E6%98%8E",
                ),
            ],
        )
        .expect(200);
        // It is on record as the text it encodes (a review found it kept encoded).
        let auditor = s.token_for("auditor-utf8", TEST_ORGANIZATION, "auditor", &[]);
        let trail = s
            .with_token(&auditor)
            .read_json(&format!("AuditEvent?entity=Patient/{id}&_count=100"))
            .to_string();
        assert!(trail.contains("意識不明"), "{trail}");
        assert!(!trail.contains("E6-84-8F"), "{trail}");
        // A lone `%` is a percent sign: an emergency does not fail on a typed "80%".
        er.get_with(
            &format!("Patient/{id}"),
            &[
                ("X-Purpose-Of-Use", "ETREAT"),
                ("X-Break-Glass-Reason", "unconscious, SpO2 80%"),
            ],
        )
        .expect(200);
    });
}

/// A review found on PostgreSQL: `GET Patient/x%00` answered 503, and failed with it the trail
/// append of every other request grouped with it (other facilities' reads answered 503), since
/// PostgreSQL's text holds no NUL; `family=a%00b` answered 500. Now the NUL request answers
/// 400 and is audited, searches and criteria with a NUL answer 400, on both databases.
#[test]
fn a_nul_character_is_refused_alone_and_audited() {
    for_each_backend(|s| {
        let id = format!("rq-nul-{}", uuid::Uuid::new_v4().simple());
        s.get_with("Patient/x%00", &[("X-Request-Id", id.as_str())])
            .expect(400);
        s.get("Patient?family=a%00b").expect(400);
        s.get("Observation?code:text=%00").expect(400);
        let conditional = s.send_json_with(
            "POST",
            "Patient",
            &json!({"resourceType": "Patient"}),
            &[("If-None-Exist", "identifier=a%00b")],
        );
        assert_eq!(conditional.status, 400, "{}", conditional.body);
        // A batch's search entry, as the search alone (the adversarial review found it run
        // on SQLite and 500 on PostgreSQL).
        let batch = s
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                    {"request": {"method": "GET", "url": "Patient?family=a%00b"}}]}),
            )
            .expect(200)
            .json();
        assert_eq!(
            batch["entry"][0]["response"]["status"]
                .as_str()
                .unwrap_or_default(),
            "400 Bad Request",
            "{batch}"
        );
        let patient = s.create(&json!({"resourceType": "Patient"}));
        s.get(&format!("Patient/{}", patient["id"].as_str().unwrap()))
            .expect(200);
        let auditor = s.token_for("auditor-nul", "Organization/network-office", "auditor", &[]);
        let trail = s
            .with_token(&auditor)
            .get("AuditEvent?outcome=4&_count=200")
            .expect(200);
        assert!(trail.body.contains(&id), "{}", trail.body);
    });
}

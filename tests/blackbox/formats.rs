//! Content negotiation, _format, _pretty, _summary, _elements.

use crate::support::*;
use serde_json::json;

fn sample(s: &Server) -> String {
    let p = s.create(&json!({
        "resourceType": "Patient",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Hanako Yamada</div>"},
        "identifier": [{"system": "urn:mrn", "value": "42"}],
        "active": true,
        "name": [{"family": "Yamada", "given": ["Hanako"]}],
        "gender": "female",
        "birthDate": "1980-05-05",
        "address": [{"city": "Kyoto"}],
        "maritalStatus": {"text": "single"}
    }));
    p["id"].as_str().unwrap().to_string()
}

#[test]
fn negotiation() {
    for_each_backend(|s| {
        let id = sample(s);
        let path = format!("Patient/{id}");
        // _format=xml.
        let r = s.get(&format!("{path}?_format=xml")).expect(200);
        assert!(
            r.content_type().starts_with("application/fhir+xml"),
            "{}",
            r.content_type()
        );
        assert!(
            r.body.contains("<Patient xmlns=\"http://hl7.org/fhir\">"),
            "{}",
            truncate(&r.body, 300)
        );
        assert!(r.body.contains("<family value=\"Yamada\"/>"));
        // Accept variants.
        for accept in [
            "application/fhir+xml",
            "application/xml",
            "text/xml;q=0.9, text/html",
        ] {
            let r = s.get_with(&path, &[("Accept", accept)]).expect(200);
            assert!(
                r.content_type().starts_with("application/fhir+xml"),
                "{accept}: {}",
                r.content_type()
            );
        }
        for accept in [
            "application/fhir+json",
            "application/json",
            "*/*",
            "text/html, */*;q=0.1",
        ] {
            let r = s.get_with(&path, &[("Accept", accept)]).expect(200);
            assert!(
                r.content_type().starts_with("application/fhir+json"),
                "{accept}: {}",
                r.content_type()
            );
        }
        // _format wins over Accept.
        let r = s
            .get_with(&format!("{path}?_format=json"), &[("Accept", FHIR_XML)])
            .expect(200);
        assert!(r.content_type().starts_with("application/fhir+json"));
        let r = s
            .get(&format!("{path}?_format=application/fhir%2Bxml"))
            .expect(200);
        assert!(
            r.content_type().starts_with("application/fhir+xml"),
            "{}",
            r.content_type()
        );
        // _pretty.
        let compact = s.get(&path).expect(200);
        assert!(!compact.body.contains('\n'));
        let pretty = s.get(&format!("{path}?_pretty=true")).expect(200);
        assert!(
            pretty.body.contains("\n  \""),
            "{}",
            truncate(&pretty.body, 200)
        );
        assert_json_eq(&pretty.json(), &compact.json(), "pretty vs compact");
        // Unsupported Accept / _format → 406 with an OperationOutcome (in JSON).
        let r = s.get_with(&path, &[("Accept", "text/html")]).expect(406);
        r.outcome();
        s.get(&format!("{path}?_format=text/turtle"))
            .expect(406)
            .outcome();
        // Unsupported Content-Type → 415.
        let body = br#"{"resourceType":"Patient"}"#;
        s.send_raw("POST", "Patient", "text/plain", body)
            .expect(415)
            .outcome();
        s.request("POST", "Patient", &[], Some(body.to_vec()))
            .expect(415);
        s.send_raw("PUT", &path, "application/x-www-form-urlencoded", body)
            .expect(415);
        // JSON Patch content type is refused for a create.
        s.send_raw("POST", "Patient", JSON_PATCH, b"[]").expect(415);
        // FHIR versions other than R4 are neither served nor taken; R4 is.
        s.get_with(
            &path,
            &[("Accept", "application/fhir+json; fhirVersion=3.0")],
        )
        .expect(406);
        s.get_with(
            &path,
            &[(
                "Accept",
                "application/fhir+xml; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0",
            )],
        )
        .expect(200);
        s.send_raw(
            "POST",
            "Patient",
            "application/fhir+json; fhirVersion=5.0",
            body,
        )
        .expect(415);
        // A byte order mark may start a JSON body; answers say they vary by Accept.
        let mut with_bom = b"\xEF\xBB\xBF".to_vec();
        with_bom.extend_from_slice(body);
        s.send_raw("POST", "Patient", "application/fhir+json", &with_bom)
            .expect(201);
        let read = s.get(&path).expect(200);
        let varies_by_accept = read
            .headers
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|name| name.trim().eq_ignore_ascii_case("accept"));
        assert!(varies_by_accept, "{:?}", read.headers);
        // XML in, XML out.
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/><name><family value="Kato"/></name></Patient>"#;
        let r = s
            .request(
                "POST",
                "Patient",
                &[("Content-Type", FHIR_XML), ("Accept", FHIR_XML)],
                Some(xml.as_bytes().to_vec()),
            )
            .expect(201);
        assert!(r.content_type().starts_with("application/fhir+xml"));
        assert!(
            r.body.contains("<family value=\"Kato\"/>")
                && r.body.contains("<versionId value=\"1\"/>"),
            "{}",
            r.body
        );
        // Errors follow the negotiated format.
        let r = s
            .get_with("Patient/none-such", &[("Accept", FHIR_XML)])
            .expect(404);
        assert!(r.body.contains("<OperationOutcome"), "{}", r.body);
    });
}

#[test]
fn summary_and_elements() {
    for_each_backend(|s| {
        let id = sample(s);
        let path = format!("Patient/{id}");
        let full = s.read_json(&path);
        let summary = s.read_json(&format!("{path}?_summary=true"));
        let tags = summary["meta"]["tag"].as_array().expect("meta.tag");
        assert!(
            tags.iter().any(|t| t["code"] == "SUBSETTED"
                && t["system"] == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"),
            "{summary}"
        );
        assert_eq!(summary["name"], full["name"]);
        assert_eq!(summary["identifier"], full["identifier"]);
        assert_eq!(summary["birthDate"], "1980-05-05");
        assert!(summary.get("text").is_none(), "text is not in the summary");
        assert!(
            summary.get("maritalStatus").is_none(),
            "maritalStatus is not a summary element"
        );
        // The stored resource is untouched.
        assert!(s.read_json(&path).get("maritalStatus").is_some());
        let text = s.read_json(&format!("{path}?_summary=text"));
        assert!(text.get("text").is_some());
        let data = s.read_json(&format!("{path}?_summary=data"));
        assert!(data.get("text").is_none() && data.get("maritalStatus").is_some());
        s.read_json(&format!("{path}?_summary=false"))
            .get("maritalStatus")
            .expect("full");
        s.get(&format!("{path}?_summary=bogus")).expect(400);

        let el = s.read_json(&format!("{path}?_elements=name"));
        assert_eq!(el["resourceType"], "Patient");
        assert_eq!(el["id"], json!(id));
        assert_eq!(el["name"], full["name"]);
        for absent in [
            "gender",
            "birthDate",
            "address",
            "identifier",
            "text",
            "maritalStatus",
            "active",
        ] {
            assert!(
                el.get(absent).is_none(),
                "_elements=name kept {absent}: {el}"
            );
        }
        assert!(
            el["meta"]["tag"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["code"] == "SUBSETTED")),
            "{el}"
        );
        let el = s.read_json(&format!("{path}?_elements=name,gender"));
        assert_eq!(el["gender"], "female");
        assert!(el.get("birthDate").is_none());
        // _summary applies to XML too.
        let x = s
            .get(&format!("{path}?_summary=true&_format=xml"))
            .expect(200);
        assert!(
            x.body.contains("SUBSETTED") && !x.body.contains("maritalStatus"),
            "{}",
            x.body
        );
    });
}

/// Whitespace in XHTML narrative is content: `Peter James <b>Chalmers</b> (Jim)` must not
/// become `Peter James<b>Chalmers</b>(Jim)` when the resource arrives as XML.
#[test]
fn xml_narrative_whitespace_is_preserved() {
    for_each_backend(|s| {
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>Peter James <b>Chalmers</b> (Jim)</p></div></text></Patient>"#;
        let r = s
            .send_raw("POST", "Patient", FHIR_XML, xml.as_bytes())
            .expect(201);
        let id = r.json()["id"].as_str().unwrap().to_string();
        let stored = s.read_json(&format!("Patient/{id}"));
        assert_eq!(
            stored["text"]["div"],
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Peter James <b>Chalmers</b> (Jim)</p></div>"
        );
        // And the JSON → XML direction keeps it too.
        let j = s.create(&json!({"resourceType": "Patient", "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Peter James <b>Chalmers</b> (Jim)</p></div>"}}));
        let x = s
            .get_with(
                &format!("Patient/{}", j["id"].as_str().unwrap()),
                &[("Accept", FHIR_XML)],
            )
            .expect(200);
        assert!(
            x.body.contains("Peter James <b>Chalmers</b> (Jim)"),
            "{}",
            x.body
        );
    });
}

/// XML the model reader used to drop silently (a second resource in one `<contained>`, an empty
/// `<gender/>`) or answer with Rust internals (an integer overflow) is refused with 400 and an
/// OperationOutcome naming the element; nothing is stored.
#[test]
fn xml_that_would_lose_data_is_refused() {
    for_each_backend(|s| {
        let patient =
            |body: &str| format!(r#"<Patient xmlns="http://hl7.org/fhir">{body}</Patient>"#);
        for (xml, location, reason) in [
            (
                patient(
                    r#"<contained><Patient><id value="a"/></Patient><Patient><id value="b"/></Patient></contained><active value="true"/>"#,
                ),
                "Patient.contained[0]",
                "more than one resource",
            ),
            (
                patient(r#"<active value="true"/><gender/>"#),
                "Patient.gender",
                "ele-1",
            ),
            (
                patient(r#"<multipleBirthInteger value="99999999999"/>"#),
                "Patient.multipleBirthInteger",
                "99999999999 is not a 32-bit integer",
            ),
            (
                patient(r#"<active value="true" foo="bar"/>"#),
                "Patient.active",
                "'foo'",
            ),
        ] {
            let r = s
                .send_raw("POST", "Patient", FHIR_XML, xml.as_bytes())
                .expect(400);
            assert!(r.body.contains("OperationOutcome"), "{}", r.body);
            assert!(r.body.contains(location), "{xml}: {}", r.body);
            assert!(r.body.contains(reason), "{xml}: {}", r.body);
            assert!(!r.body.contains("ParseIntError"), "{}", r.body);
        }
        // Positive control: the same content written correctly is stored whole.
        let xml = patient(
            r##"<contained><Patient><id value="a"/></Patient></contained><contained><Patient><id value="b"/></Patient></contained><active value="true"/><gender id="g"><extension url="http://hl7.org/fhir/StructureDefinition/data-absent-reason"><valueCode value="unknown"/></extension></gender><link><other><reference value="#a"/></other><type value="seealso"/></link><link><other><reference value="#b"/></other><type value="seealso"/></link>"##,
        );
        let r = s
            .send_raw("POST", "Patient", FHIR_XML, xml.as_bytes())
            .expect(201);
        let id = r.json()["id"].as_str().unwrap().to_string();
        let stored = s.read_json(&format!("Patient/{id}"));
        assert_eq!(stored["contained"].as_array().map(Vec::len), Some(2));
        assert_eq!(stored["_gender"]["extension"][0]["valueCode"], "unknown");
    });
}

/// Creates an Observation from JSON text whose `valueQuantity.value` is `number` as written
/// (a `json!` literal cannot hold numbers beyond 64 bits) and returns its path.
fn observation_with_value(s: &Server, number: &str) -> String {
    let body = format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"weight"}},"valueQuantity":{{"value":{number},"unit":"g"}}}}"#
    );
    let r = s
        .send_raw("POST", "Observation", FHIR_JSON, body.as_bytes())
        .expect(201);
    format!("Observation/{}", r.json()["id"].as_str().unwrap())
}

/// Reads `path` as JSON and as XML and asserts that both carry `number` with its digits.
#[track_caller]
fn assert_value_in_both_formats(s: &Server, path: &str, number: &str) {
    let stored = s.read_json(path);
    assert_eq!(stored["valueQuantity"]["value"].to_string(), number);
    let xml = s.get(&format!("{path}?_format=xml")).expect(200);
    assert!(
        xml.body.contains(&format!("<value value=\"{number}\"/>")),
        "{number}: {}",
        xml.body
    );
}

/// A decimal from 2^63 to 2^64-1 was read back in XML as a negative number
/// (`10000000000000000000` as `-8446744073709551616`); JSON was right.
#[test]
fn xml_renders_decimals_from_2_63_to_2_64_with_their_digits() {
    for_each_backend(|s| {
        for number in [
            "9223372036854775807",
            "9223372036854775808",
            "10000000000000000000",
            "18446744073709551615",
            "0.0000001",
            "1.50",
        ] {
            let path = observation_with_value(s, number);
            assert_value_in_both_formats(s, &path, number);
        }
    });
}

/// A whole decimal of 2^64 or more (valid FHIR, within the range the server stores) was
/// refused with a bare "does not match the FHIR R4 model", in JSON and in XML alike.
#[test]
fn whole_decimals_of_2_64_or_more_are_accepted_in_both_formats() {
    for_each_backend(|s| {
        for number in [
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
        ] {
            let path = observation_with_value(s, number);
            assert_value_in_both_formats(s, &path, number);
        }
        let xml = r#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="weight"/></code><valueQuantity><value value="123456789012345678901234567890"/></valueQuantity></Observation>"#;
        let r = s
            .send_raw("POST", "Observation", FHIR_XML, xml.as_bytes())
            .expect(201);
        let path = format!("Observation/{}", r.json()["id"].as_str().unwrap());
        assert_value_in_both_formats(s, &path, "123456789012345678901234567890");
    });
}

/// Tabs and line breaks in attribute values were written raw, which every conforming XML
/// parser reads as spaces (XML 1.0 §3.3.3): XML clients lost the line breaks of every
/// multi-line string. They are character references now; narrative text stays as stored.
#[test]
fn xml_attribute_values_keep_tabs_and_line_breaks() {
    for_each_backend(|s| {
        let div = "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>a\n\tb</p>\n<p>c</p></div>";
        let created = s.create(&json!({
            "resourceType": "Patient",
            "text": {"status": "generated", "div": div},
            "name": [{"text": "line1\nline2\tTab\r\nend"}]
        }));
        let path = format!("Patient/{}", created["id"].as_str().unwrap());
        let xml = s.get(&format!("{path}?_format=xml")).expect(200);
        assert!(
            xml.body
                .contains(r#"<text value="line1&#10;line2&#9;Tab&#13;&#10;end"/>"#),
            "{}",
            xml.body
        );
        assert!(xml.body.contains(div), "{}", xml.body);
        // Renkei reads its own XML back to the same characters.
        s.send_raw("PUT", &path, FHIR_XML, xml.body.as_bytes())
            .expect(200);
        let stored = s.read_json(&path);
        assert_eq!(stored["name"][0]["text"], "line1\nline2\tTab\r\nend");
        assert_eq!(stored["text"]["div"], div);
    });
}

/// Namespace prefixes are XML syntax, not content: `<f:Patient xmlns:f="http://hl7.org/fhir">`
/// is the document `<Patient xmlns="http://hl7.org/fhir">` is, narrative and Bundle entries
/// included. They used to be refused; an element in another namespace still is.
#[test]
fn xml_with_prefixed_namespaces_is_read_as_unprefixed() {
    const FHIR: &str = "http://hl7.org/fhir";
    const XHTML: &str = "http://www.w3.org/1999/xhtml";
    for_each_backend(|s| {
        let xml = format!(
            r#"<f:Patient xmlns:f="{FHIR}"><f:id value="ns-p1"/><f:active value="true"/></f:Patient>"#
        );
        s.send_raw("PUT", "Patient/ns-p1", FHIR_XML, xml.as_bytes())
            .expect(201);
        let stored = s.read_json("Patient/ns-p1");
        assert_eq!(stored["active"], json!(true));
        assert_eq!(stored["id"], "ns-p1");

        // A prefixed XHTML narrative is stored as the unprefixed div JSON requires.
        let xml = format!(
            r#"<f:Patient xmlns:f="{FHIR}"><f:text><f:status value="generated"/><h:div xmlns:h="{XHTML}"><h:p>Peter James <h:b>Chalmers</h:b> (Jim)</h:p></h:div></f:text><f:active value="true"/></f:Patient>"#
        );
        let r = s
            .send_raw("POST", "Patient", FHIR_XML, xml.as_bytes())
            .expect(201);
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(
            s.read_json(&format!("Patient/{id}"))["text"]["div"],
            format!(r#"<div xmlns="{XHTML}"><p>Peter James <b>Chalmers</b> (Jim)</p></div>"#)
        );

        // A transaction whose entries carry prefixed resources (the Bundle itself unprefixed).
        let bundle = format!(
            r#"<Bundle xmlns="{FHIR}" xmlns:f="{FHIR}"><type value="transaction"/><entry><resource><f:Patient><f:id value="ns-p2"/><f:active value="false"/></f:Patient></resource><request><method value="PUT"/><url value="Patient/ns-p2"/></request></entry></Bundle>"#
        );
        let r = s
            .send_raw("POST", "", FHIR_XML, bundle.as_bytes())
            .expect(200);
        assert!(r.body.contains("201"), "{}", r.body);
        assert_eq!(s.read_json("Patient/ns-p2")["active"], json!(false));

        // Any other namespace is refused, saying which.
        for (xml, named) in [
            (
                r#"<f:Patient xmlns:f="urn:not-fhir"><f:active value="true"/></f:Patient>"#
                    .to_string(),
                "'urn:not-fhir'",
            ),
            (
                format!(
                    r#"<Patient xmlns="{FHIR}" xmlns:o="urn:other"><o:active value="true"/></Patient>"#
                ),
                "'urn:other'",
            ),
            (
                format!(
                    r#"<Patient xmlns="{FHIR}" xmlns:h="{XHTML}"><h:active value="true"/></Patient>"#
                ),
                "only the narrative div is XHTML",
            ),
        ] {
            let r = s
                .send_raw("POST", "Patient", FHIR_XML, xml.as_bytes())
                .expect(400);
            let outcome = r.outcome();
            assert!(r.body.contains(named), "{xml}: {outcome}");
        }
    });
}

/// A missing required element is reported at the same location, with the same words, whether
/// the body is JSON or XML (XML used to say only "missing field `status`").
#[test]
fn xml_missing_required_element_is_located_as_in_json() {
    for_each_backend(|s| {
        let json_body = br#"{"resourceType": "Observation", "code": {"text": "x"}}"#;
        let xml_body = br#"<Observation xmlns="http://hl7.org/fhir"><code><text value="x"/></code></Observation>"#;
        let from_json = s.send_raw("POST", "Observation", FHIR_JSON, json_body);
        let from_xml = s.send_raw("POST", "Observation", FHIR_XML, xml_body);
        assert_eq!(from_xml.status, from_json.status, "{}", from_xml.body);
        assert!((400..500).contains(&from_xml.status), "{}", from_xml.body);
        let (json_issue, xml_issue) = (
            from_json.outcome()["issue"][0].clone(),
            from_xml.outcome()["issue"][0].clone(),
        );
        assert_eq!(xml_issue["expression"], json!(["Observation.status"]));
        assert_eq!(xml_issue, json_issue);
        let text = xml_issue["diagnostics"]
            .as_str()
            .or(xml_issue["details"]["text"].as_str())
            .unwrap_or_default();
        assert!(text.contains("Observation.status"), "{xml_issue}");

        // Inside a Bundle entry, the location goes through the entry.
        let json_bundle = br#"{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Observation", "code": {"text": "x"}}}]}"#;
        let xml_bundle = br#"<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/><entry><resource><Observation><code><text value="x"/></code></Observation></resource></entry></Bundle>"#;
        let from_json = s.send_raw("POST", "Bundle", FHIR_JSON, json_bundle);
        let from_xml = s.send_raw("POST", "Bundle", FHIR_XML, xml_bundle);
        assert_eq!(from_xml.status, from_json.status, "{}", from_xml.body);
        assert_eq!(
            from_xml.outcome()["issue"][0],
            from_json.outcome()["issue"][0]
        );
    });
}

/// Paging links keep `_format` and `_pretty`: a client that asks for XML by `_format` (it may
/// be unable to set `Accept`) got its second page of a search, `$everything` or history in JSON.
#[test]
fn paging_links_keep_the_asked_format() {
    for_each_backend(|s| {
        let patient = s.create(&serde_json::json!({"resourceType": "Patient", "gender": "male"}));
        let id = patient["id"].as_str().expect("id").to_string();
        for code in ["a", "b", "c"] {
            s.create(&serde_json::json!({
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "urn:example:paging", "code": code}]},
                "subject": {"reference": format!("Patient/{id}")}
            }));
            s.put(&format!("Patient/{id}"), &{
                let mut p = patient.clone();
                p["gender"] = serde_json::json!(if code == "b" { "female" } else { "male" });
                p
            })
            .expect(200);
        }
        for path in [
            format!("Observation?subject=Patient/{id}&_count=1"),
            format!("Patient/{id}/$everything?_count=1"),
            format!("Patient/{id}/_history?_count=1"),
        ] {
            let first = s
                .get(&format!("{path}&_format=json&_pretty=true"))
                .expect(200);
            assert!(first.body.contains("\n  "), "{path}: pretty first page");
            let next = link(&first.json(), "next").unwrap_or_else(|| panic!("{path}: next"));
            assert_eq!(next.matches("_format=json").count(), 1, "{next}");
            assert!(next.contains("_pretty=true"), "{next}");
            let second = s.get(&next).expect(200);
            assert!(second.body.contains("\n  "), "{path}: pretty second page");

            let xml = s.get(&format!("{path}&_format=xml")).expect(200);
            assert!(xml.content_type().contains("xml"), "{path}");
            let url = xml
                .body
                .split("<relation value=\"next\"/>")
                .nth(1)
                .and_then(|rest| rest.split("<url value=\"").nth(1))
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_else(|| panic!("{path}: next link in {}", xml.body))
                .replace("&amp;", "&")
                .replace("&#38;", "&");
            let second = s.get(&url).expect(200);
            assert!(second.content_type().contains("xml"), "{path}: {url}");
        }
    });
}

/// A Bundle shaped like the JP-CLINS examples (whose licence keeps them out of `fixtures/`,
/// fixtures/SOURCES.md): narratives in Japanese, marked `xml:lang="ja"` on their div.
fn japanese_narrative_bundle() -> serde_json::Value {
    let div = |text: &str| {
        format!(
            r#"<div xmlns="http://www.w3.org/1999/xhtml" xml:lang="ja" lang="ja"><p>{text}</p></div>"#
        )
    };
    serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:0a8f6b3e-0c1d-4c55-9a33-4f1f8c1e2a01",
             "resource": {"resourceType": "Patient",
                          "text": {"status": "generated", "div": div("患者 山田 太郎")},
                          "name": [{"family": "山田", "given": ["太郎"]}]}},
            {"fullUrl": "urn:uuid:0a8f6b3e-0c1d-4c55-9a33-4f1f8c1e2a02",
             "resource": {"resourceType": "Observation", "status": "final",
                          "text": {"status": "generated", "div": div("血糖 98 mg/dL")},
                          "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
                          "valueQuantity": {"value": 98, "unit": "mg/dL"}}}
        ]
    })
}

/// XML the review found refused though well-formed and FHIR: a declaration as .NET writes it
/// (`encoding="utf-8"`), `standalone="yes"`, `xml:lang` on the narrative div, and
/// `xsi:schemaLocation` on the root. What stays refused says why, in XML for an XML client.
#[test]
fn well_formed_fhir_xml_is_accepted_and_refusals_say_why() {
    let original = japanese_narrative_bundle();
    for_each_backend(|s| {
        let patient = r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>"#;
        for prefix in [
            r#"<?xml version="1.0" encoding="utf-8"?>"#,
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#,
        ] {
            s.send_raw(
                "POST",
                "Patient",
                FHIR_XML,
                format!("{prefix}{patient}").as_bytes(),
            )
            .expect(201);
        }
        let located = r#"<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir ../../schema/fhir-single.xsd"><active value="true"/></Patient>"#;
        s.send_raw("POST", "Patient", FHIR_XML, located.as_bytes())
            .expect(201);
        for (xml, reason) in [
            (
                format!(r#"<?xml version="1.0" encoding="ISO-8859-1"?>{patient}"#),
                "FHIR XML must be UTF-8; the declaration names ISO-8859-1",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><active value="true" value="false"/></Patient>"#.to_string(),
                "has the attribute 'value' twice",
            ),
            (
                r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="a&#xD800;b"/></name></Patient>"#.to_string(),
                "not a valid codepoint",
            ),
        ] {
            let r = s.request(
                "POST",
                "Patient",
                &[("Content-Type", FHIR_XML), ("Accept", FHIR_XML)],
                Some(xml.clone().into_bytes()),
            );
            let r = r.expect(400);
            assert!(r.content_type().starts_with(FHIR_XML), "{xml}: {}", r.body);
            assert!(r.body.contains("<OperationOutcome"), "{}", r.body);
            assert!(r.body.contains(reason), "{xml}: {}", r.body);
        }
        // JSON → server → XML (with xml:lang on the divs) → server, content unchanged.
        let created = s.post("Bundle", &original).expect(201).json();
        let path = format!("Bundle/{}", created["id"].as_str().unwrap());
        let xml = s.get_with(&path, &[("Accept", FHIR_XML)]).expect(200);
        assert!(xml.body.contains(r#"xml:lang="ja""#), "{}", xml.body);
        let r = s
            .send_raw("POST", "Bundle", FHIR_XML, xml.body.as_bytes())
            .expect(201);
        let copy = s.read_json(&format!("Bundle/{}", r.json()["id"].as_str().unwrap()));
        if let Some(d) = json_diff(&without_id_meta(&copy), &without_id_meta(&original)) {
            panic!("JSON→XML→JSON differs at {d}");
        }
    });
}

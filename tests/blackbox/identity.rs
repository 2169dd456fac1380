//! One person across facilities (issue 6), end to end with real tokens: a hospital and a
//! clinic register the same person under their own local IDs; the records link through the
//! insurance member ID and birth date; the clinic, under the patient's consent, sees the
//! hospital's prescriptions, labs and imaging through the linked view; a third clinic without
//! consent learns nothing from search, `$ihe-pix`, `$match` or PDQm; an administrator's unlink
//! takes effect on the very next request.

use crate::support::{entries, for_each_backend, Caller, Server};
use serde_json::{json, Value};

const HOSPITAL: &str = "Organization/id-hospital";
const CLINIC: &str = "Organization/id-clinic";
const OTHER: &str = "Organization/id-other";
const HOSPITAL_SYSTEM: &str = "urn:oid:1.2.392.100495.20.3.51.11310199991";
const CLINIC_SYSTEM: &str = "urn:oid:1.2.392.100495.20.3.51.11310299992";
const INSURANCE: &str = "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID";
const REPRESENTATION: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";
const HOSP_P: &str = "id-hosp-p";
const CLINIC_P: &str = "id-clinic-p";
const SECRET: &str = "IDENTITY-HIDDEN";

fn patient(id: &str, system: &str, local: &str, insurance: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [
            {"system": system, "value": local},
            {"system": INSURANCE, "value": insurance},
        ],
        "name": [
            {"extension": [{"url": REPRESENTATION, "valueCode": "IDE"}], "family": "山田", "given": ["太郎"]},
            {"extension": [{"url": REPRESENTATION, "valueCode": "SYL"}], "family": "ヤマダ", "given": ["タロウ"]},
        ],
        "gender": "male",
        "birthDate": "1960-01-02",
        "telecom": [{"system": "phone", "value": "086-123-4567"}],
        "address": [{"postalCode": "700-8558", "city": "岡山市", "state": "岡山県", "country": "JP"}],
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "佐藤"}],
    })
}

struct Net<'s> {
    s: &'s Server,
    hospital: String,
    clinic: String,
    other: String,
    admin: String,
    lab: String,
    medication: String,
    imaging: String,
}

impl<'s> Net<'s> {
    fn as_hospital(&self) -> Caller<'s> {
        self.s.with_token(&self.hospital)
    }
    fn as_clinic(&self) -> Caller<'s> {
        self.s.with_token(&self.clinic)
    }
    fn as_other(&self) -> Caller<'s> {
        self.s.with_token(&self.other)
    }
    fn as_admin(&self) -> Caller<'s> {
        self.s.with_token(&self.admin)
    }
}

fn reference(resource: &Value) -> String {
    format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap_or_default(),
        resource["id"].as_str().unwrap_or_default()
    )
}

fn found(bundle: &Value) -> Vec<String> {
    let mut refs: Vec<String> = entries(bundle)
        .iter()
        .filter(|e| e["search"]["mode"] != "outcome")
        .map(|e| reference(&e["resource"]))
        .collect();
    refs.sort();
    refs
}

/// The hospital and the clinic register the person; the hospital records a lab, a
/// prescription and a CT; the clinic records the patient's consent (on its own record) that
/// permits the clinic to see the person's data for treatment.
fn network(s: &Server) -> Net<'_> {
    let hospital = s.token_for("id-hospital-ehr", HOSPITAL, "facility", &[]);
    let clinic = s.token_for("id-clinic-ehr", CLINIC, "facility", &[]);
    let other = s.token_for("id-other-ehr", OTHER, "facility", &[]);
    let admin = s.token_for("id-admin", "Organization/network-office", "admin", &[]);
    let as_hospital = s.with_token(&hospital);
    let as_clinic = s.with_token(&clinic);
    as_hospital
        .put(
            &format!("Patient/{HOSP_P}"),
            &patient(HOSP_P, HOSPITAL_SYSTEM, "H-0001", "06330015:岡北:123:00"),
        )
        .expect(201);
    // The clinic writes the same insurance ID with full-width digits: still one person.
    as_clinic
        .put(
            &format!("Patient/{CLINIC_P}"),
            &patient(CLINIC_P, CLINIC_SYSTEM, "C-0077", "06330015:岡北:１２３:00"),
        )
        .expect(201);
    let subject = json!({"reference": format!("Patient/{HOSP_P}")});
    let lab = as_hospital.create(&json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "urn:oid:1.2.392.200119.4.504", "code": "3D046000001906202"}], "text": format!("{SECRET} HbA1c")},
        "subject": subject,
        "effectiveDateTime": "2026-02-10",
        "valueQuantity": {"value": 7.9, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    }));
    let medication = as_hospital.create(&json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "urn:oid:1.2.392.100495.20.2.73", "code": "2171022F6276"}], "text": format!("{SECRET} amlodipine")},
        "subject": subject,
        "authoredOn": "2026-02-10",
    }));
    let imaging = as_hospital.create(&json!({
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": subject,
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
        "series": [{"uid": "1.2.392.200036.9116.2.1.1", "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}}],
        "description": format!("{SECRET} chest CT"),
    }));
    as_clinic
        .put(
            "Consent/id-consent",
            &json!({
                "resourceType": "Consent",
                "id": "id-consent",
                "status": "active",
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "patient": {"reference": format!("Patient/{CLINIC_P}")},
                "provision": {
                    "type": "permit",
                    "actor": [{
                        "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                        "reference": {"reference": CLINIC},
                    }],
                    "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
                },
            }),
        )
        .expect(201);
    Net {
        s,
        hospital,
        clinic,
        other,
        admin,
        lab: reference(&lab),
        medication: reference(&medication),
        imaging: reference(&imaging),
    }
}

fn linked_view(net: &Net<'_>, who: &Caller<'_>) -> Vec<String> {
    let mut all = Vec::new();
    for query in [
        format!("Observation?patient:linked=Patient/{CLINIC_P}"),
        format!("MedicationRequest?patient:mdm={CLINIC_P}&status=active"),
        format!("ImagingStudy?subject:linked=Patient/{CLINIC_P}&modality=CT"),
    ] {
        all.extend(found(&who.read_json(&query)));
    }
    let _ = net;
    all.sort();
    all
}

/// The third facility registers the same person (insurance key and birth date).
fn register_at_other(net: &Net<'_>) {
    net.as_other()
        .put(
            "Patient/id-other-p",
            &patient(
                "id-other-p",
                "urn:oid:1.2.392.100495.20.3.51.11310399993",
                "O-1",
                "06330015:岡北:123:00",
            ),
        )
        .expect(201);
}

fn unlink_body(reason: &str) -> Value {
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "source", "valueReference": {"reference": format!("Patient/{CLINIC_P}")}},
        {"name": "target", "valueReference": {"reference": format!("Patient/{HOSP_P}")}},
        {"name": "reason", "valueString": reason},
    ]})
}

#[test]
fn consented_clinic_sees_the_hospital_record_of_the_same_person_and_others_learn_nothing() {
    for_each_backend(|s| {
        let net = network(s);
        let clinic = net.as_clinic();
        let mut expected = vec![net.lab.clone(), net.medication.clone(), net.imaging.clone()];
        expected.sort();

        // Linked view: the hospital's data through the clinic's own patient id.
        assert_eq!(linked_view(&net, &clinic), expected);
        // Its consent decisions name the Consent on the clinic's record, found through the
        // link from the hospital's record that holds the data.
        let auditor = s.token_for("id-auditor", "Organization/network-office", "auditor", &[]);
        let decisions = s
            .with_token(&auditor)
            .read_json("AuditEvent?subtype=AuthZ-Consent&agent=id-clinic-ehr")
            .to_string();
        assert!(decisions.contains("Consent/id-consent"), "{decisions}");
        // Without :linked the clinic's own record has none of it.
        assert!(found(&clinic.read_json(&format!("Observation?patient={CLINIC_P}"))).is_empty());
        // Each returned resource still names its own subject and custodian (the hospital).
        let labs = clinic.read_json(&format!("Observation?patient:linked={CLINIC_P}"));
        let lab = &entries(&labs)[0]["resource"];
        assert_eq!(lab["subject"]["reference"], format!("Patient/{HOSP_P}"));
        assert!(
            lab["meta"]["extension"].as_array().is_some_and(|list| list
                .iter()
                .any(|e| e["url"] == renkei_repository::CUSTODIAN_EXTENSION
                    && e["valueReference"]["reference"] == HOSPITAL)),
            "{lab}"
        );

        // Patient.link on read: the clinic learns of the hospital's record it may see.
        let own = clinic.read_json(&format!("Patient/{CLINIC_P}"));
        assert_eq!(
            own["link"][0]["other"]["reference"],
            format!("Patient/{HOSP_P}")
        );
        assert_eq!(own["link"][0]["type"], "seealso");
        // Written back as read, the added link is not stored (a review found it kept in the
        // new version, where it would outlive an unlink); a link of the client's own is.
        let mut written_back = own.clone();
        written_back["gender"] = json!("female");
        written_back["link"]
            .as_array_mut()
            .expect("links")
            .push(json!({"other": {"reference": "Patient/elsewhere"}, "type": "seealso"}));
        let stored = clinic
            .put(&format!("Patient/{CLINIC_P}"), &written_back)
            .expect(200);
        let version = stored.json()["meta"]["versionId"]
            .as_str()
            .expect("versionId")
            .to_string();
        let kept = clinic.read_json(&format!("Patient/{CLINIC_P}/_history/{version}"));
        assert_eq!(
            kept["link"],
            json!([{"other": {"reference": "Patient/elsewhere"}, "type": "seealso"}]),
            "{kept}"
        );
        let reread = clinic.read_json(&format!("Patient/{CLINIC_P}"));
        let links = reread["link"].as_array().expect("links");
        assert_eq!(links.len(), 2, "{reread}");
        if let Some(object) = written_back.as_object_mut() {
            object.remove("link");
        }
        clinic
            .put(&format!("Patient/{CLINIC_P}"), &written_back)
            .expect(200);
        // The hospital is not in the consent: it is not told about the clinic's record.
        let hospital_view = net.as_hospital().read_json(&format!("Patient/{HOSP_P}"));
        assert!(hospital_view.get("link").is_none(), "{hospital_view}");

        // $everything spanning the linked records.
        let everything = found(&clinic.read_json(&format!(
            "Patient/{CLINIC_P}/$everything?_linked=true&_count=100"
        )));
        for item in expected.iter().chain([&format!("Patient/{HOSP_P}")]) {
            assert!(
                everything.contains(item),
                "{item} missing from {everything:?}"
            );
        }
        let plain = found(&clinic.read_json(&format!("Patient/{CLINIC_P}/$everything")));
        assert!(!plain.contains(&net.lab), "{plain:?}");

        // PIXm: the clinic's identifier cross-references to the hospital's.
        let pix = clinic.read_json(&format!(
            "Patient/$ihe-pix?sourceIdentifier={CLINIC_SYSTEM}|C-0077"
        ));
        let text = pix.to_string();
        assert!(text.contains("H-0001"), "{text}");
        assert!(text.contains(&format!("Patient/{HOSP_P}")), "{text}");
        assert!(
            !text.contains("C-0077"),
            "the source identifier is never echoed: {text}"
        );
        let only_hospital = clinic.read_json(&format!(
            "Patient/$ihe-pix?sourceIdentifier={CLINIC_SYSTEM}|C-0077&targetSystem={HOSPITAL_SYSTEM}"
        ));
        let params = only_hospital["parameter"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(params
            .iter()
            .any(|p| p["name"] == "targetIdentifier" && p["valueIdentifier"]["value"] == "H-0001"));
        assert!(!params
            .iter()
            .any(|p| p["valueIdentifier"]["system"] == INSURANCE));
        assert!(params.iter().any(|p| p["name"] == "targetId"
            && p["valueReference"]["reference"] == format!("Patient/{HOSP_P}")));
        // The same request by POST with a Parameters body (operations.html), in JSON and XML.
        let posted = clinic
            .post(
                "Patient/$ihe-pix",
                &json!({"resourceType": "Parameters", "parameter": [
                    {"name": "sourceIdentifier",
                     "valueIdentifier": {"system": CLINIC_SYSTEM, "value": "C-0077"}},
                    {"name": "targetSystem", "valueUri": HOSPITAL_SYSTEM},
                ]}),
            )
            .expect(200)
            .json();
        assert_eq!(posted, only_hospital);
        let xml = format!(
            "<Parameters xmlns=\"http://hl7.org/fhir\"><parameter><name value=\"sourceIdentifier\"/>\
             <valueIdentifier><system value=\"{CLINIC_SYSTEM}\"/><value value=\"C-0077\"/>\
             </valueIdentifier></parameter><parameter><name value=\"targetSystem\"/>\
             <valueUri value=\"{HOSPITAL_SYSTEM}\"/></parameter></Parameters>"
        );
        let posted = clinic
            .request(
                "POST",
                "Patient/$ihe-pix",
                &[
                    ("Content-Type", "application/fhir+xml"),
                    ("Accept", "application/fhir+json"),
                ],
                Some(xml.into_bytes()),
            )
            .expect(200)
            .json();
        assert_eq!(posted, only_hospital);

        // $match with half-width kana and the birth date finds the hospital's record.
        let matched = clinic
            .post(
                "Patient/$match",
                &json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
                    "resourceType": "Patient",
                    "name": [{"family": "ﾔﾏﾀﾞ", "given": ["ﾀﾛｳ"]}],
                    "birthDate": "1960-01-02",
                    "gender": "male",
                }}]}),
            )
            .expect(200)
            .json();
        let hit = entries(&matched)
            .into_iter()
            .find(|e| e["resource"]["id"] == HOSP_P)
            .unwrap_or_else(|| panic!("no match for the hospital's record: {matched}"));
        assert_eq!(hit["search"]["mode"], "match");
        assert!(hit["search"]["score"].as_f64().unwrap_or(0.0) >= 0.5);
        let grade = hit["search"]["extension"][0]["valueCode"]
            .as_str()
            .unwrap_or("");
        assert!(["certain", "probable"].contains(&grade), "{hit}");

        // The third clinic, outside the consent, learns nothing.
        let other = net.as_other();
        assert!(linked_view(&net, &other).is_empty());
        other
            .get(&format!(
                "Patient/$ihe-pix?sourceIdentifier={HOSPITAL_SYSTEM}|H-0001"
            ))
            .expect(404);
        let matched = other
            .post(
                "Patient/$match",
                &json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient("q", OTHER, "x", "06330015:岡北:123:00")}]}),
            )
            .expect(200)
            .json();
        assert!(entries(&matched).is_empty(), "{matched}");
        for pdq in [
            "Patient?family=ヤマダ".to_string(),
            "Patient?family:exact=山田&birthdate=1960-01-02".to_string(),
            format!("Patient?identifier={HOSPITAL_SYSTEM}|"),
            format!("Patient?identifier={INSURANCE}|06330015:岡北:123:00"),
        ] {
            let resp = other.get(&pdq).expect(200);
            assert!(found(&resp.json()).is_empty(), "{pdq}: {}", resp.body);
            assert!(!resp.body.contains(SECRET) && !resp.body.contains("H-0001"));
        }
        other
            .get(&format!("Patient/{HOSP_P}/$everything?_linked=true"))
            .expect(404);

        // Unlink by an administrator takes effect on the very next request; others may not.
        clinic
            .post("Patient/$unlink", &unlink_body("not the same person"))
            .expect(403);
        net.as_admin()
            .post("Patient/$unlink", &unlink_body(""))
            .expect(400);
        let unlinked = net
            .as_admin()
            .post(
                "Patient/$unlink",
                &unlink_body("registration error at the clinic"),
            )
            .expect(200)
            .json();
        // The answer lists each side's person afterwards, a record on its own included.
        let records = |name: &str| -> Vec<String> {
            unlinked["parameter"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["name"] == name)
                .flat_map(|p| p["part"].as_array().cloned().unwrap_or_default())
                .filter_map(|part| {
                    part["valueReference"]["reference"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        };
        assert_eq!(records("source-person").len(), 1, "{unlinked}");
        assert_eq!(records("target-person").len(), 1, "{unlinked}");
        assert_ne!(records("source-person"), records("target-person"));
        assert!(linked_view(&net, &clinic).is_empty());
        assert!(clinic
            .read_json(&format!("Patient/{CLINIC_P}"))
            .get("link")
            .is_none());
        // A third facility's record with the same insurance key and birth date does not join
        // the two people again (before, it bridged them back into one person).
        register_at_other(&net);
        assert!(linked_view(&net, &clinic).is_empty());
        let hospital_view = net
            .as_hospital()
            .read_json(&format!("Patient/{HOSP_P}"))
            .to_string();
        assert!(!hospital_view.contains(CLINIC_P), "{hospital_view}");
        clinic
            .get(&format!("Patient/$ihe-pix?sourceIdentifier={CLINIC_SYSTEM}|C-0077&targetSystem={HOSPITAL_SYSTEM}"))
            .expect(200);
        // Linked again by hand: visible again.
        let mut relink = unlink_body("confirmed at the counter");
        relink["parameter"][2]["valueString"] = json!("confirmed at the counter");
        net.as_admin().post("Patient/$link", &relink).expect(200);
        assert_eq!(linked_view(&net, &clinic), expected);

        // Every link change is audited, with its reason.
        let auditor = net
            .s
            .token_for("id-auditor", "Organization/network-office", "auditor", &[]);
        let trail = net
            .s
            .with_token(&auditor)
            .get(&format!("AuditEvent?patient=Patient/{CLINIC_P}&_count=200"))
            .expect(200);
        assert!(
            trail.body.contains("registration error at the clinic"),
            "{}",
            trail.body
        );
        assert!(trail.body.contains("confirmed at the counter"));
    });
}

#[test]
fn pixm_errors_follow_the_profile_in_json_and_xml() {
    for_each_backend(|s| {
        let net = network(s);
        let clinic = net.as_clinic();
        let cases = [
            (
                "urn:oid:9.9.9|C-0077".to_string(),
                None,
                400,
                "code-invalid",
                "sourceIdentifier Assigning Authority not found",
            ),
            (
                format!("{CLINIC_SYSTEM}|NOPE"),
                None,
                404,
                "not-found",
                "sourceIdentifier Patient Identifier not found",
            ),
            (
                format!("{CLINIC_SYSTEM}|C-0077"),
                Some("urn:oid:9.9.9"),
                403,
                "code-invalid",
                "targetSystem not found",
            ),
        ];
        for (source, target, status, code, text) in cases {
            let mut path = format!("Patient/$ihe-pix?sourceIdentifier={source}");
            if let Some(target) = target {
                path.push_str(&format!("&targetSystem={target}"));
            }
            let outcome = clinic.get(&path).expect(status).json();
            assert_eq!(outcome["resourceType"], "OperationOutcome");
            assert_eq!(outcome["issue"][0]["code"], code, "{outcome}");
            assert!(outcome.to_string().contains(text), "{outcome}");
            let xml = clinic
                .get_with(&format!("{path}&_format=xml"), &[])
                .expect(status);
            assert!(xml.body.contains("<OperationOutcome"), "{}", xml.body);
        }
        clinic.get("Patient/$ihe-pix").expect(400);
        clinic
            .get("Patient/$ihe-pix?sourceIdentifier=novalue")
            .expect(400);
        // A family's shared insurance card identifies no one patient: not the identifiers of
        // two people as if they were one (a review found them joined in the answer).
        let mut child = patient(
            "id-clinic-child",
            CLINIC_SYSTEM,
            "C-0078",
            "06330015:岡北:123:00",
        );
        child["birthDate"] = json!("1990-02-02");
        clinic.put("Patient/id-clinic-child", &child).expect(201);
        let shared = clinic
            .get(&format!(
                "Patient/$ihe-pix?sourceIdentifier={INSURANCE}|06330015:岡北:123:00"
            ))
            .expect(409)
            .json();
        assert_eq!(shared["issue"][0]["code"], "multiple-matches", "{shared}");
        assert!(!shared.to_string().contains("C-0078"), "{shared}");
        let xml = clinic
            .get_with(
                &format!("Patient/$ihe-pix?sourceIdentifier={CLINIC_SYSTEM}|C-0077&_format=xml"),
                &[],
            )
            .expect(200);
        assert!(xml.body.contains("<Parameters") && xml.body.contains("targetIdentifier"));
    });
}

#[test]
fn a_merged_record_joins_its_survivor() {
    for_each_backend(|s| {
        let net = network(s);
        let clinic = net.as_clinic();
        // The clinic registered the person twice (identity feed, ITI-104: a conditional PUT on
        // the local identifier), then merges: the duplicate is replaced by the survivor.
        let feed = format!("Patient?identifier={CLINIC_SYSTEM}|C-0078");
        let duplicate = clinic
            .put(
                &feed,
                &json!({"resourceType": "Patient", "active": true,
                        "identifier": [{"system": CLINIC_SYSTEM, "value": "C-0078"}],
                        "name": [{"family": "ヤマダ"}]}),
            )
            .expect(201)
            .json();
        let dup_id = duplicate["id"].as_str().unwrap_or_default().to_string();
        assert!(clinic
            .read_json(&format!("Patient/{CLINIC_P}"))
            .get("link")
            .is_some_and(|l| !l.to_string().contains(&dup_id)));
        clinic
            .put(
                &feed,
                &json!({"resourceType": "Patient", "active": false,
                        "identifier": [{"system": CLINIC_SYSTEM, "value": "C-0078"}],
                        "link": [{"other": {"reference": format!("Patient/{CLINIC_P}")}, "type": "replaced-by"}]}),
            )
            .expect(200);
        let note = clinic.create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "weight"}, "subject": {"reference": format!("Patient/{dup_id}")}}));
        let via_survivor =
            found(&clinic.read_json(&format!("Observation?patient:linked={CLINIC_P}")));
        assert!(via_survivor.contains(&reference(&note)), "{via_survivor:?}");
        let survivor = clinic.read_json(&format!("Patient/{CLINIC_P}"));
        assert!(survivor["link"].to_string().contains(&dup_id), "{survivor}");

        // A review found a record merged into itself, and two records merged into each other
        // (no survivor left), accepted: both are refused.
        let merge = |id: &str, into: &str| {
            json!({"resourceType": "Patient", "id": id, "active": false,
                   "link": [{"other": {"reference": format!("Patient/{into}")}, "type": "replaced-by"}]})
        };
        let refused = clinic
            .put(&format!("Patient/{CLINIC_P}"), &merge(CLINIC_P, CLINIC_P))
            .expect(422);
        assert!(refused.body.contains("itself"), "{}", refused.body);
        let refused = clinic
            .put(&format!("Patient/{CLINIC_P}"), &merge(CLINIC_P, &dup_id))
            .expect(422);
        assert!(
            refused.body.contains("merged into another"),
            "{}",
            refused.body
        );
    });
}

#[test]
fn pdqm_demographics_search_finds_kanji_and_kana_names_within_consent() {
    for_each_backend(|s| {
        let net = network(s);
        let hospital = net.as_hospital();
        let own = vec![format!("Patient/{HOSP_P}")];
        for query in [
            "Patient?family=山田&given=太郎",
            "Patient?family=ﾔﾏﾀﾞ",
            "Patient?family:exact=ヤマダ&birthdate=1960-01-02",
            "Patient?family=鈴木,山田&gender=male",
            "Patient?given=タロウ&active:missing=true",
            "Patient?telecom=086-123-4567",
            "Patient?address-postalcode=700-8558&address-city=岡山市",
            "Patient?address-state=岡山県&address-country=JP",
            "Patient?mothersMaidenName=佐藤",
            "Patient?birthdate=1960-01-02&identifier=urn:oid:1.2.392.100495.20.3.51.11310199991|",
            "Patient?identifier=urn:oid:1.2.392.100495.20.3.51.11310199991|H-0001",
            "Patient?_id=id-hosp-p&family=山田",
        ] {
            assert_eq!(found(&hospital.read_json(query)), own, "{query}");
        }
        // Domain filtering: the hospital asks for records of the clinic's domain — the
        // clinic's record is not in the hospital's consent, so it is not returned.
        assert!(
            found(&hospital.read_json(&format!("Patient?identifier={CLINIC_SYSTEM}|"))).is_empty()
        );
        // The consented clinic finds both records of the person by the kana name.
        let mut both = vec![format!("Patient/{CLINIC_P}"), format!("Patient/{HOSP_P}")];
        both.sort();
        assert_eq!(
            found(
                &net.as_clinic()
                    .read_json("Patient?family=ﾔﾏﾀﾞ&birthdate=1960-01-02")
            ),
            both
        );
        hospital
            .get("Patient?mothersMaidenName:exact=佐藤")
            .expect(200);
        hospital.get("Patient?family=山田&_format=xml").expect(200);
    });
}

/// A facility outside the consent that registers the same person itself is not told, through
/// `:linked`, that its record and the one it may not see are one person.
#[test]
fn linked_search_does_not_reveal_a_link_to_a_record_the_requester_may_not_see() {
    for_each_backend(|s| {
        let net = network(s);
        let other = net.as_other();
        let own_p = "id-other-p";
        other
            .put(
                &format!("Patient/{own_p}"),
                &patient(own_p, "urn:other-mrn", "O-1", "06330015:岡北:123:00"),
            )
            .expect(201);
        let note = other.create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "weight"}, "subject": {"reference": format!("Patient/{own_p}")}}));
        other.get(&format!("Patient/{HOSP_P}")).expect(404);
        for query in [
            format!("Observation?patient:linked=Patient/{HOSP_P}"),
            format!("Observation?subject:linked=Patient/{HOSP_P}&_summary=count"),
        ] {
            let bundle = other.read_json(&query);
            assert!(found(&bundle).is_empty(), "{query}: {bundle}");
            assert!(
                bundle["total"].as_i64().unwrap_or(0) == 0,
                "{query}: {bundle}"
            );
        }
        // Its own record's links stop at what it may see: its own data.
        let own = found(&other.read_json(&format!("Observation?patient:linked=Patient/{own_p}")));
        assert_eq!(own, vec![reference(&note)]);
        // Holding a record about the hidden Patient opens its compartment to that record
        // alone: `_linked` does not follow the hidden Patient's links to its own patient.
        let about_hidden = other.create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "height"}, "subject": {"reference": format!("Patient/{HOSP_P}")}}));
        let everything =
            found(&other.read_json(&format!("Patient/{HOSP_P}/$everything?_linked=true")));
        assert_eq!(everything, vec![reference(&about_hidden)]);
        // The consented clinic still follows the same link.
        let clinic = net.as_clinic();
        let through =
            found(&clinic.read_json(&format!("Observation?patient:linked=Patient/{CLINIC_P}")));
        assert!(!through.is_empty());
    });
}

/// A facility that registered the same person (its Patient record links to the record's
/// Patient) and is inside the patient's consent is told that consent keeps a record back
/// (403), as the holder of the record's Patient itself is; a facility that registered the
/// person too but is outside the consent gets 404, as for a missing record, since a 403 would
/// tell it the records are linked.
#[test]
fn a_linked_registration_inside_the_consent_is_told_that_consent_keeps_a_record_back() {
    for_each_backend(|s| {
        let net = network(s);
        // The patient's consent now leaves imaging out.
        let mut consent = net.as_clinic().read_json("Consent/id-consent");
        consent["provision"]["provision"] = json!([{"type": "deny",
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "ImagingStudy"}]}]);
        net.as_clinic()
            .put("Consent/id-consent", &consent)
            .expect(200);

        let refused = net.as_clinic().get(&net.imaging).expect(403);
        let outcome = refused.outcome();
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("consent")),
            "{outcome}"
        );
        assert!(!refused.body.contains(SECRET), "{}", refused.body);
        net.as_clinic().get(&net.lab).expect(200);

        // The other clinic registers the same person as well, without the patient's consent.
        register_at_other(&net);
        let hidden = net.as_other().get(&net.imaging).expect(404);
        let missing = net.as_other().get("ImagingStudy/no-such-study").expect(404);
        assert_eq!(
            hidden.body.replace(&net.imaging, "X"),
            missing.body.replace("ImagingStudy/no-such-study", "X")
        );
    });
}

/// Shared keys never make one person of records with different birth dates: a facility
/// that writes two records, each carrying one real patient's insurance key and both a made-up
/// regional ID, does not merge the two patients (whose consents would then open each
/// other's data).
#[test]
fn a_made_up_shared_identifier_does_not_merge_two_people() {
    for_each_backend(|s| {
        let net = network(s);
        // A second patient of the hospital, with a lab of their own.
        let mut other_patient = patient(
            "id-hosp-q",
            HOSPITAL_SYSTEM,
            "H-0002",
            "01330031:岡南:789:01",
        );
        other_patient["birthDate"] = json!("1975-03-03");
        net.as_hospital()
            .put("Patient/id-hosp-q", &other_patient)
            .expect(201);
        let q_lab = net.as_hospital().create(&json!({
            "resourceType": "Observation", "status": "final",
            "code": {"text": format!("{SECRET} Q only")},
            "subject": {"reference": "Patient/id-hosp-q"},
        }));
        let before = linked_view(&net, &net.as_clinic());

        let bridge = |id: &str, insurance: &str, birth: &str| {
            let mut record = patient(
                id,
                "urn:oid:1.2.392.100495.20.3.51.11310399993",
                id,
                insurance,
            );
            record["birthDate"] = json!(birth);
            record["identifier"]
                .as_array_mut()
                .unwrap()
                .push(json!({"system": "urn:renkei:regional-patient-id", "value": "MADE-UP-1"}));
            net.as_other()
                .put(&format!("Patient/{id}"), &record)
                .expect(201);
        };
        bridge("id-bridge-p", "06330015:岡北:123:00", "1960-01-02");
        bridge("id-bridge-q", "01330031:岡南:789:01", "1975-03-03");

        assert_eq!(linked_view(&net, &net.as_clinic()), before);
        let seen = found(&net.as_clinic().read_json(&format!(
            "Observation?patient:linked=Patient/{CLINIC_P}&_count=100"
        )));
        assert!(!seen.contains(&reference(&q_lab)), "{seen:?}");
    });
}

/// `$match` dropped parameters it does not define: a misspelt `onlyCertainMatches` answered
/// probable matches the client asked to exclude.
#[test]
fn match_refuses_a_parameter_it_does_not_define() {
    for_each_backend(|s| {
        let net = network(s);
        let clinic = net.as_clinic();
        let query = json!({"resourceType": "Patient", "birthDate": "1960-01-02"});
        let outcome = clinic
            .post(
                "Patient/$match",
                &json!({"resourceType": "Parameters", "parameter": [
                    {"name": "resource", "resource": query},
                    {"name": "onlyCertainMatch", "valueBoolean": true}
                ]}),
            )
            .expect(400)
            .outcome();
        let text = outcome["issue"][0]["diagnostics"].as_str().unwrap_or("");
        assert!(text.contains("'onlyCertainMatch'"), "{outcome}");
        clinic
            .post(
                "Patient/$match",
                &json!({"resourceType": "Parameters", "parameter": [
                    {"name": "resource", "resource": query},
                    {"name": "onlyCertainMatches", "valueBoolean": true}
                ]}),
            )
            .expect(200);
    });
}

/// A review found: a patient's app saw only the data filed under the one record its token
/// names, and only the accesses to it: the hospital's lab, filed under the hospital's record
/// of the same person, and the clinic's consented read of it were invisible to the patient,
/// though consent follows the person. The patient sees the person's data and its accesses.
#[test]
fn a_patient_sees_their_data_and_its_accesses_across_their_linked_records() {
    for_each_backend(|s| {
        let net = network(s);
        let read = format!("rq-linked-{}", uuid::Uuid::new_v4().simple());
        net.as_clinic()
            .get_with(&net.lab, &[("X-Request-Id", read.as_str())])
            .expect(200);
        let app = s.token_for(
            "id-patient-app",
            CLINIC,
            "patient",
            &["--patient", &format!("Patient/{CLINIC_P}")],
        );
        let app = s.with_token(&app);
        app.get(&net.lab).expect(200);
        assert!(found(&app.read_json("Observation")).contains(&net.lab));
        let viewed = app.get("AuditEvent?_count=500").expect(200);
        assert!(viewed.body.contains(&read), "{}", viewed.body);
        let of_hospital_record = app
            .get(&format!("AuditEvent?patient=Patient/{HOSP_P}&_count=500"))
            .expect(200);
        assert!(of_hospital_record.body.contains(&read));
        // Named by the app's own record, the accesses to the person's other records count
        // too (a review found them missing).
        let of_own_record = app
            .get(&format!("AuditEvent?patient=Patient/{CLINIC_P}&_count=500"))
            .expect(200);
        assert!(of_own_record.body.contains(&read), "{}", of_own_record.body);
        // The facility is searchable, its client's id is not (it is left out of the view).
        let by_facility = app
            .get(&format!("AuditEvent?agent={CLINIC}&_total=accurate"))
            .expect(200)
            .json();
        assert!(
            by_facility["total"].as_i64().unwrap_or(0) > 0,
            "{by_facility}"
        );
        let by_client = app
            .get("AuditEvent?agent=id-clinic-ehr&_total=accurate")
            .expect(200)
            .json();
        assert_eq!(by_client["total"], 0, "{by_client}");
        // Still no one else's.
        app.get("AuditEvent?patient=Patient/someone-else")
            .expect(403);
        app.get(&format!("Patient/{HOSP_P}")).expect(200);
    });
}

/// A review found: a merge (ITI-104, `replaced-by`) of a duplicate whose birth date was
/// mistyped answered 200 and joined nothing, the birth-date rule for shared keys refusing it.
/// A merge is the holder's decision and joins whatever the dates.
#[test]
fn a_merge_joins_a_duplicate_with_a_mistyped_birth_date() {
    for_each_backend(|s| {
        let net = network(s);
        let clinic = net.as_clinic();
        let duplicate = clinic.create(&json!({"resourceType": "Patient",
            "identifier": [{"system": CLINIC_SYSTEM, "value": "C-0079"}],
            "name": [{"family": "ヤマダ"}], "birthDate": "1960-01-20"}));
        let dup_id = duplicate["id"].as_str().unwrap_or_default().to_string();
        clinic
            .put(
                &format!("Patient/{dup_id}"),
                &json!({"resourceType": "Patient", "id": dup_id, "active": false,
                        "identifier": [{"system": CLINIC_SYSTEM, "value": "C-0079"}],
                        "birthDate": "1960-01-20",
                        "link": [{"other": {"reference": format!("Patient/{CLINIC_P}")}, "type": "replaced-by"}]}),
            )
            .expect(200);
        let survivor = clinic.read_json(&format!("Patient/{CLINIC_P}"));
        assert!(survivor["link"].to_string().contains(&dup_id), "{survivor}");
    });
}

/// A review found: `$link` took a misspelt parameter silently, and `_linked=false&_mdm=true`
/// was read as true. Both answer 400.
#[test]
fn link_parameters_and_linked_flags_are_not_guessed() {
    for_each_backend(|s| {
        let net = network(s);
        let mut body = unlink_body("confirmed at the counter");
        body["parameter"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "reasn", "valueString": "typo"}));
        let refused = net.as_admin().post("Patient/$link", &body).expect(400);
        assert!(refused.body.contains("reasn"), "{}", refused.body);
        let mut twice = unlink_body("one reason");
        twice["parameter"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "reason", "valueString": "another"}));
        net.as_admin().post("Patient/$unlink", &twice).expect(400);
        net.as_clinic()
            .get(&format!(
                "Patient/{CLINIC_P}/$everything?_linked=false&_mdm=true"
            ))
            .expect(400);
        net.as_clinic()
            .get(&format!(
                "Patient/{CLINIC_P}/$everything?_linked=true&_mdm=true"
            ))
            .expect(200);
        // A refused attempt's event names the records it was about.
        let attempt = format!("rq-link-{}", uuid::Uuid::new_v4().simple());
        net.as_clinic()
            .send_json_with(
                "POST",
                "Patient/$unlink",
                &unlink_body("not an administrator"),
                &[("X-Request-Id", attempt.as_str())],
            )
            .expect(403);
        let auditor = s.token_for("id-auditor", HOSPITAL, "auditor", &[]);
        let trail = s
            .with_token(&auditor)
            .get(&format!(
                "AuditEvent?patient=Patient/{HOSP_P}&outcome=4&_count=200"
            ))
            .expect(200);
        assert!(trail.body.contains(&attempt), "{}", trail.body);
    });
}

/// A person of more than 100 records is refused (a placeholder id shared by unrelated
/// patients). A review found the count taken before birth dates part records into persons: a
/// record sharing the id with another birth date, which joins no one, was refused as well.
#[test]
fn the_records_per_person_limit_counts_the_person_only() {
    for_each_backend(|s| {
        let hospital = s.token_for("cap-ehr", HOSPITAL, "facility", &[]);
        let hospital = s.with_token(&hospital);
        let regional = format!("CAP-{}", uuid::Uuid::new_v4().simple());
        let record = |birth: &str| {
            json!({"resourceType": "Patient", "birthDate": birth,
                   "identifier": [{"system": "urn:renkei:regional-patient-id", "value": regional}]})
        };
        for _ in 0..100 {
            hospital.post("Patient", &record("1990-01-01")).expect(201);
        }
        let refused = hospital.post("Patient", &record("1990-01-01")).expect(422);
        assert!(refused.body.contains("more than 100"), "{}", refused.body);
        hospital.post("Patient", &record("1991-01-01")).expect(201);
    });
}

/// A review found: a consent a facility recorded on another facility's record of the person,
/// while the two were linked, stayed in force after an administrator unlinked them (the link
/// a copied card made), with nothing telling the administrator. The unlink lists it for
/// review; the clinic's consent on its own record is not listed.
#[test]
fn an_unlink_lists_the_consents_recorded_through_the_link() {
    for_each_backend(|s| {
        let net = network(s);
        let through_link = json!({
            "resourceType": "Consent", "id": "id-consent-through-link", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{HOSP_P}")},
            "provision": {"type": "permit",
                "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                           "reference": {"reference": CLINIC}}],
                "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}});
        net.as_clinic()
            .put("Consent/id-consent-through-link", &through_link)
            .expect(201);
        let answer = net
            .as_admin()
            .post(
                "Patient/$unlink",
                &unlink_body("card copied, not the same person"),
            )
            .expect(200)
            .body;
        assert!(
            answer.contains("consent-to-review")
                && answer.contains("Consent/id-consent-through-link"),
            "{answer}"
        );
        assert!(!answer.contains("Consent/id-consent\""), "{answer}");
        // Unlinking them again takes nothing more from anyone: nothing to review this time.
        let again = net
            .as_admin()
            .post("Patient/$unlink", &unlink_body("confirmed at the desk"))
            .expect(200)
            .body;
        assert!(!again.contains("consent-to-review"), "{again}");
    });
}

/// A review found: the 409 that keeps a consented Patient record from being deleted was
/// bypassed by an update dropping the identifier that linked it: the record left its person
/// and the patient's decision recorded on it with it. Such an update is refused as well; in a
/// transaction the Consent's delete runs before the Patient's, whatever their order.
#[test]
fn a_consented_record_does_not_leave_its_person_by_an_update() {
    for_each_backend(|s| {
        let net = network(s);
        let clinic = net.as_clinic();
        let mut unlinked = patient(CLINIC_P, CLINIC_SYSTEM, "C-0077", "x");
        unlinked["identifier"].as_array_mut().unwrap().truncate(1);
        // Another facility's Consent on the same record is not named to the clinic.
        let mut by_hospital = json!({"resourceType": "Consent", "id": "by-hospital",
            "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{CLINIC_P}")},
            "provision": {"type": "permit", "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                "reference": {"reference": HOSPITAL}}]}});
        net.as_hospital()
            .put("Consent/by-hospital", &by_hospital)
            .expect(201);
        let refused = clinic
            .put(&format!("Patient/{CLINIC_P}"), &unlinked)
            .expect(409);
        assert!(
            refused.body.contains("Consent/id-consent") && !refused.body.contains("by-hospital"),
            "{}",
            refused.body
        );
        by_hospital["status"] = json!("inactive");
        net.as_hospital()
            .put("Consent/by-hospital", &by_hospital)
            .expect(200);
        assert!(!linked_view(&net, &clinic).is_empty());
        // Deleting both in one transaction, the Patient first: the Consent goes first.
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": format!("Patient/{CLINIC_P}")}},
            {"request": {"method": "DELETE", "url": "Consent/id-consent"}}]});
        clinic.post("", &bundle).expect(200);
    });
}

/// The consent is recorded on the clinic's record; the hospital's record of the same person
/// does not leave the person while it is in force, by an update or a delete, or the patient's
/// decision would stop applying to the hospital's data (under an opt-out network a refusal
/// would stop withholding it). After the consent is withdrawn, both go through.
#[test]
fn a_record_does_not_leave_a_person_whose_consent_is_on_another_record() {
    for_each_backend(|s| {
        let net = network(s);
        let hospital = net.as_hospital();
        let mut unlinked = patient(HOSP_P, HOSPITAL_SYSTEM, "H-0001", "x");
        unlinked["identifier"].as_array_mut().unwrap().truncate(1);
        // Merging a duplicate of another birth date into it keeps it in its person (a
        // review found the survivor split off that way while the consent was in force).
        hospital
            .put(
                "Patient/dup-of-hosp",
                &json!({"resourceType": "Patient", "id": "dup-of-hosp",
                    "identifier": [{"system": HOSPITAL_SYSTEM, "value": "H-0999"}],
                    "birthDate": "1990-01-01"}),
            )
            .expect(201);
        hospital
            .put(
                "Patient/dup-of-hosp",
                &json!({"resourceType": "Patient", "id": "dup-of-hosp", "active": false,
                    "identifier": [{"system": HOSPITAL_SYSTEM, "value": "H-0999"}],
                    "birthDate": "1990-01-01",
                    "link": [{"other": {"reference": format!("Patient/{HOSP_P}")}, "type": "replaced-by"}]}),
            )
            .expect(200);
        let survivor = net.as_clinic().read_json(&format!("Patient/{CLINIC_P}"));
        assert!(survivor["link"].to_string().contains(HOSP_P), "{survivor}");
        for refused in [
            hospital.put(&format!("Patient/{HOSP_P}"), &unlinked),
            hospital.delete(&format!("Patient/{HOSP_P}")),
        ] {
            assert_eq!(refused.status, 409, "{}", refused.body);
            // The clinic's Consent is not named to the hospital, which may not read it.
            assert!(refused.body.contains("another record"), "{}", refused.body);
            assert!(!refused.body.contains("id-consent"), "{}", refused.body);
        }
        let clinic = net.as_clinic();
        assert!(!linked_view(&net, &clinic).is_empty());
        let mut withdrawn = clinic.read_json("Consent/id-consent");
        withdrawn["status"] = json!("inactive");
        clinic.put("Consent/id-consent", &withdrawn).expect(200);
        hospital
            .put(&format!("Patient/{HOSP_P}"), &unlinked)
            .expect(200);
        let deleted = hospital.delete(&format!("Patient/{HOSP_P}"));
        assert!([200, 204].contains(&deleted.status), "{}", deleted.body);
    });
}

/// A review found: a third facility's new record took a record given to the year only
/// (`1960`) out of a consented person, by pairing off with it first (its id sorting first),
/// and the patient's refusal stopped applying to that record's data. Such a write is refused
/// (409) without naming the other facilities' records; one that agrees with the person joins.
#[test]
fn a_new_record_does_not_pair_off_a_record_of_a_consented_person() {
    for_each_backend(|s| {
        let net = network(s);
        let regional = json!({"system": "urn:renkei:regional-patient-id", "value": "RG-SPLIT"});
        net.as_hospital()
            .put(
                "Patient/split-b-year",
                &json!({"resourceType": "Patient", "id": "split-b-year",
                    "identifier": [{"system": HOSPITAL_SYSTEM, "value": "H-7001"}, regional],
                    "birthDate": "1960"}),
            )
            .expect(201);
        net.as_clinic()
            .put(
                "Patient/split-c-full",
                &json!({"resourceType": "Patient", "id": "split-c-full",
                    "identifier": [{"system": CLINIC_SYSTEM, "value": "C-7001"}, regional],
                    "birthDate": "1960-01-02"}),
            )
            .expect(201);
        net.as_clinic()
            .put(
                "Consent/split-refusal",
                &json!({"resourceType": "Consent", "id": "split-refusal", "status": "active",
                    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                    "patient": {"reference": "Patient/split-c-full"},
                    "provision": {"type": "deny"}}),
            )
            .expect(201);
        let pairing_off = json!({"resourceType": "Patient", "id": "split-a-other",
            "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.19999999999", "value": "O-7001"}, regional],
            "birthDate": "1960-05-05"});
        let refused = net
            .as_other()
            .put("Patient/split-a-other", &pairing_off)
            .expect(409);
        assert!(
            !refused.body.contains("split-b-year") && !refused.body.contains("split-c-full"),
            "{}",
            refused.body
        );
        let mut agreeing = pairing_off.clone();
        agreeing["birthDate"] = json!("1960-01-02");
        net.as_other()
            .put("Patient/split-a-other", &agreeing)
            .expect(201);
    });
}

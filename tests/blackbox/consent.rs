//! Consent enforcement, end to end with real tokens: a small network of three facilities
//! (hospital A, clinics B and C) built through the API, each facility writing its own data
//! with its own token (so it is the custodian), and a patient P registered at A and B whose
//! Consent, written by A, permits B for treatment.
//!
//! Covers the three scenarios of the primer (new patient at a clinic, referral with continued
//! viewing, discharge to a clinic not yet in the consent), withdrawal taking effect on the very
//! next request (even through a page link obtained before), a leak suite for a non-consented
//! facility over every path, break-glass, the UNDELIVERED privacy tag, and the patient and
//! auditor roles.

use crate::support::{
    entries, for_each_backend, for_each_backend_with, link, Caller, Resp, Server,
};
use serde_json::{json, Value};

pub(crate) const ORG_A: &str = "Organization/hosp-a";
pub(crate) const ORG_B: &str = "Organization/clinic-b";
pub(crate) const ORG_C: &str = "Organization/clinic-c";
pub(crate) const PATIENT: &str = "pat-p";
pub(crate) const OTHER_PATIENT: &str = "pat-q";
const CONSENT: &str = "consent-pat-p";
const PRIVACY_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication";

/// Text that appears only inside hospital A's clinical data: no response to a facility that may
/// not see that data may ever contain it.
pub(crate) const SECRET: &str = "MARKER-A-HIDDEN";
const SECRET_LAB_ID: &str = "A-LAB-0001";

/// The network and what hospital A wrote.
pub(crate) struct Net<'s> {
    pub s: &'s Server,
    pub a: String,
    pub b: String,
    pub c: String,
    /// A's lab Observations of P (the first has two versions).
    pub labs: Vec<String>,
    pub medreq: String,
    pub imaging: String,
    /// B's own Encounter of P (so B holds a record of P).
    pub b_encounter: String,
}

impl<'s> Net<'s> {
    pub fn as_a(&self) -> Caller<'s> {
        self.s.with_token(&self.a)
    }
    pub fn as_b(&self) -> Caller<'s> {
        self.s.with_token(&self.b)
    }
    pub fn as_c(&self) -> Caller<'s> {
        self.s.with_token(&self.c)
    }
}

fn patient_ref() -> String {
    format!("Patient/{PATIENT}")
}

pub(crate) fn lab(code: &str, value: f64, date: &str, identifier: Option<&str>) -> Value {
    let mut obs = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "urn:oid:1.2.392.200119.4.504", "code": code}], "text": format!("{SECRET} {code}")},
        "subject": {"reference": patient_ref()},
        "effectiveDateTime": date,
        "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
        "note": [{"text": format!("{SECRET} note")}],
    });
    if let Some(id) = identifier {
        obs["identifier"] = json!([{"system": "urn:hosp-a:lab", "value": id}]);
    }
    obs
}

/// The `outcomeDesc` of every refused consent decision whose event mentions `mentioning` (a
/// request id, a resource), as an auditor named `auditor` reads them; and the page read.
fn refusal_descriptions(s: &Server, auditor: &str, mentioning: &str) -> (Vec<String>, Value) {
    let auditor = s.token_for(auditor, ORG_A, "auditor", &[]);
    let decisions = s
        .with_token(&auditor)
        .read_json("AuditEvent?subtype=AuthZ-Consent&outcome=4&_count=200");
    let said = entries(&decisions)
        .iter()
        .filter(|e| e["resource"].to_string().contains(mentioning))
        .map(|e| {
            e["resource"]["outcomeDesc"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    (said, decisions)
}

fn consent_body(actors: &[&str], status: &str) -> Value {
    let actors: Vec<Value> = actors
        .iter()
        .map(|org| {
            json!({
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                "reference": {"reference": org},
            })
        })
        .collect();
    json!({
        "resourceType": "Consent",
        "id": CONSENT,
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient_ref()},
        "organization": [{"reference": ORG_A}],
        "provision": {
            "type": "permit",
            "actor": actors,
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
        },
    })
}

pub(crate) fn id_of(resource: &Value) -> String {
    format!(
        "{}/{}",
        resource["resourceType"].as_str().expect("resourceType"),
        resource["id"].as_str().expect("id")
    )
}

/// `Type/id` of every entry of a Bundle.
fn refs(bundle: &Value) -> Vec<String> {
    entries(bundle)
        .iter()
        // Outcome entries (warnings, the break-glass mark) are about the search, not data.
        .filter(|e| e.get("resource").is_some() && e["search"]["mode"] != "outcome")
        .map(|e| id_of(&e["resource"]))
        .collect()
}

#[track_caller]
fn search_refs(who: &Caller<'_>, path: &str) -> Vec<String> {
    let mut found = refs(&who.read_json(path));
    found.sort();
    found
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[track_caller]
fn assert_no_secret(resp: &Resp, what: &str) {
    assert!(
        !resp.body.contains(SECRET) && !resp.body.contains(SECRET_LAB_ID),
        "{what}: the response reveals hidden content: {}",
        crate::support::truncate(&resp.body, 2000)
    );
}

/// Builds the network: A writes P, Q, P's labs/prescription/imaging and the Consent (P → B);
/// B writes its own Encounter of P. C writes nothing yet.
pub(crate) fn network(s: &Server) -> Net<'_> {
    let a = s.token_for("hosp-a-ehr", ORG_A, "facility", &[]);
    let b = s.token_for("clinic-b-ehr", ORG_B, "facility", &[]);
    let c = s.token_for("clinic-c-ehr", ORG_C, "facility", &[]);
    let as_a = s.with_token(&a);
    for (id, family, local) in [
        (PATIENT, "Yamada", "P-0001"),
        (OTHER_PATIENT, "Suzuki", "Q-0002"),
    ] {
        as_a.put(
            &format!("Patient/{id}"),
            &json!({
                "resourceType": "Patient",
                "id": id,
                "identifier": [{"system": "urn:hosp-a:patient", "value": local}],
                "name": [{"family": family, "given": ["Taro"]}],
                "gender": "male",
                "birthDate": "1958-03-12",
            }),
        )
        .expect(201);
    }
    let first = as_a.create(&lab(
        "3D046000001906202",
        8.1,
        "2025-02-10",
        Some(SECRET_LAB_ID),
    ));
    // A second version of the first lab (for vread of an old version).
    let mut corrected = first.clone();
    corrected["valueQuantity"]["value"] = json!(8.2);
    as_a.put(&id_of(&first), &corrected).expect(200);
    let second = as_a.create(&lab("3D010000001926101", 132.0, "2025-02-10", None));
    let medreq = as_a.create(&json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "urn:oid:1.2.392.100495.20.2.73", "code": "2171022F6276"}], "text": format!("{SECRET} amlodipine")},
        "subject": {"reference": patient_ref()},
        "authoredOn": "2025-11-04",
    }));
    let imaging = as_a.create(&json!({
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": {"reference": patient_ref()},
        "started": "2025-09-02T10:00:00+09:00",
        "description": format!("{SECRET} hip CT"),
    }));
    as_a.put(
        &format!("Consent/{CONSENT}"),
        &consent_body(&[ORG_B], "active"),
    )
    .expect(201);
    let b_encounter = s.with_token(&b).create(&json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": patient_ref()},
        "period": {"start": "2025-11-10"},
    }));
    Net {
        s,
        a,
        b,
        c,
        labs: vec![id_of(&first), id_of(&second)],
        medreq: id_of(&medreq),
        imaging: id_of(&imaging),
        b_encounter: id_of(&b_encounter),
    }
}

#[test]
fn scenarios_new_patient_referral_discharge_and_withdrawal() {
    for_each_backend(three_scenarios);
}

/// The three scenarios of the primer on the network of `network(s)`, whatever `s` speaks (HTTP
/// here, HTTPS in `tls.rs`): (1) new patient at clinic B sees hospital A's prescriptions, labs
/// and imaging under the consent, C nothing; (2) referral: what A records later stays visible
/// to B; (3) discharge to clinic C once the consent names it; then withdrawal takes effect on
/// the next request, even through a page link obtained before.
pub(crate) fn three_scenarios(s: &Server) {
    let net = network(s);
    let p = PATIENT;
    // (1) New patient at clinic B: B sees A's labs, prescriptions and imaging.
    assert_eq!(
        search_refs(&net.as_b(), &format!("Observation?patient={p}")),
        sorted(net.labs.clone())
    );
    assert_eq!(
        search_refs(&net.as_b(), &format!("MedicationRequest?patient={p}")),
        vec![net.medreq.clone()]
    );
    assert_eq!(
        search_refs(&net.as_b(), &format!("ImagingStudy?patient={p}")),
        vec![net.imaging.clone()]
    );
    assert_eq!(
        net.as_b().read_json(&net.labs[0])["code"]["text"],
        format!("{SECRET} 3D046000001906202")
    );
    net.as_b().read_json(&patient_ref());
    // B writes nothing into A's data.
    let mut changed = net.as_b().read_json(&net.medreq);
    changed["status"] = json!("cancelled");
    net.as_b().put(&net.medreq, &changed).expect(403);

    // C, not in the consent, gets nothing.
    for t in ["Observation", "MedicationRequest", "ImagingStudy"] {
        assert!(
            search_refs(&net.as_c(), &format!("{t}?patient={p}")).is_empty(),
            "{t}"
        );
    }
    net.as_c().get(&net.labs[0]).expect(404);

    // (2) Referral: a test A performs after the consent stays visible to B.
    let later = net
        .as_a()
        .create(&lab("3D046000001906202", 7.2, "2025-08-18", None));
    let later = id_of(&later);
    let mut expected = net.labs.clone();
    expected.push(later.clone());
    assert_eq!(
        search_refs(&net.as_b(), &format!("Observation?patient={p}")),
        sorted(expected.clone())
    );
    assert!(search_refs(&net.as_c(), &format!("Observation?patient={p}")).is_empty());

    // (3) Discharge: the consent is extended to C → C sees the inpatient record.
    net.as_a()
        .put(
            &format!("Consent/{CONSENT}"),
            &consent_body(&[ORG_B, ORG_C], "active"),
        )
        .expect(200);
    assert_eq!(
        search_refs(&net.as_c(), &format!("Observation?patient={p}")),
        sorted(expected.clone())
    );
    assert_eq!(
        search_refs(&net.as_c(), &format!("ImagingStudy?patient={p}")),
        vec![net.imaging.clone()]
    );
    net.as_c().read_json(&net.medreq);

    // Withdrawal: take a page link first, then set the Consent inactive.
    let page1 = net
        .as_b()
        .read_json(&format!("Observation?patient={p}&_count=1&_sort=date"));
    assert_eq!(refs(&page1).len(), 1);
    let next = link(&page1, "next").expect("a next link on a page of 1 of 3");
    let mut withdrawn = consent_body(&[ORG_B, ORG_C], "inactive");
    withdrawn["id"] = json!(CONSENT);
    net.as_a()
        .put(&format!("Consent/{CONSENT}"), &withdrawn)
        .expect(200);
    for t in ["Observation", "MedicationRequest", "ImagingStudy"] {
        assert!(
            search_refs(&net.as_b(), &format!("{t}?patient={p}")).is_empty(),
            "{t} still visible to B after withdrawal"
        );
        assert!(
            search_refs(&net.as_c(), &format!("{t}?patient={p}")).is_empty(),
            "{t} still visible to C after withdrawal"
        );
    }
    let after = net.as_b().get(&next).expect(200);
    assert!(
        refs(&after.json()).is_empty(),
        "a page link from before the withdrawal still shows data: {}",
        after.body
    );
    assert_no_secret(&after, "next page after withdrawal");
    // B holds records of P, but not P's Patient record: 404, like a missing resource.
    let denied = net.as_b().get(&net.labs[0]).expect(404);
    assert_no_secret(&denied, "404 after withdrawal");
    // C holds nothing of P: 404, like a missing resource.
    net.as_c().get(&net.labs[0]).expect(404);
    // Own data stays visible to its writer whatever the consent says.
    assert_eq!(
        search_refs(&net.as_a(), &format!("Observation?patient={p}")),
        sorted(expected)
    );
    assert_eq!(
        search_refs(&net.as_b(), &format!("Encounter?patient={p}")),
        vec![net.b_encounter.clone()]
    );
}

/// Everything a facility without consent can try, first holding no record of the patient
/// (hidden = 404, like missing), then holding one (403 consent required); never any hidden
/// content, count, include, chain, `_has`, history entry or old version.
#[test]
fn leak_suite_for_a_non_consented_facility() {
    for_each_backend(|s| {
        let net = network(s);
        let c = net.as_c();
        let p = PATIENT;
        let mut seen: Vec<(String, Resp)> = Vec::new();
        let mut keep = |what: &str, resp: Resp| -> Value {
            let json = if resp.body.is_empty() {
                Value::Null
            } else {
                resp.json()
            };
            seen.push((what.to_string(), resp));
            json
        };

        // Read and vread of a hidden resource answer exactly like a missing one.
        let hidden = c.get(&net.labs[0]).expect(404);
        let missing = c.get("Observation/no-such-observation").expect(404);
        assert_eq!(
            hidden.body.replace(&net.labs[0], "X"),
            missing.body.replace("Observation/no-such-observation", "X"),
            "hidden and missing must be indistinguishable"
        );
        keep("read", hidden);
        keep(
            "vread v1",
            c.get(&format!("{}/_history/1", net.labs[0])).expect(404),
        );
        keep(
            "vread v2",
            c.get(&format!("{}/_history/2", net.labs[0])).expect(404),
        );
        keep("read patient", c.get(&patient_ref()).expect(404));
        // Writes onto a hidden resource tell no more than a read: 404, not who holds it.
        let mut overwrite = lab("3D046000001906202", 1.0, "2025-01-01", None);
        overwrite["id"] = json!(tail(&net.labs[0]));
        overwrite["code"]["text"] = json!("overwrite");
        overwrite["note"] = json!([{"text": "overwrite"}]);
        for (what, r) in [
            ("PUT hidden", c.put(&net.labs[0], &overwrite)),
            (
                "PATCH hidden",
                c.send_raw(
                    "PATCH",
                    &net.labs[0],
                    crate::support::JSON_PATCH,
                    br#"[{"op":"replace","path":"/status","value":"cancelled"}]"#,
                ),
            ),
            // A DELETE of something hidden answers as for a missing resource: 204.
            ("DELETE hidden", c.delete(&net.labs[0])),
        ] {
            let expected = if what.starts_with("DELETE") { 204 } else { 404 };
            assert_eq!(r.status, expected, "{what}: {}", r.body);
            assert!(
                !r.body.contains("hosp-a"),
                "{what} names the holder: {}",
                r.body
            );
            keep(what, r);
        }
        // An `If-Match` (`*` or a version) on a hidden resource fails its precondition exactly
        // as on a missing one (412), so the header cannot tell them apart either.
        let missing = "Observation/no-such-observation";
        let with_if_match = |method: &str, path: &str, if_match: &str| {
            let mut body = overwrite.clone();
            body["id"] = json!(path.rsplit('/').next().unwrap_or_default());
            match method {
                "PUT" => c.send_json_with("PUT", path, &body, &[("If-Match", if_match)]),
                "PATCH" => c.request(
                    "PATCH",
                    path,
                    &[
                        ("Content-Type", crate::support::JSON_PATCH),
                        ("If-Match", if_match),
                    ],
                    Some(br#"[{"op":"replace","path":"/status","value":"cancelled"}]"#.to_vec()),
                ),
                _ => c.request(method, path, &[("If-Match", if_match)], None),
            }
        };
        for if_match in ["*", "W/\"1\""] {
            for method in ["PUT", "PATCH", "DELETE"] {
                let hidden = with_if_match(method, &net.labs[0], if_match);
                let absent = with_if_match(method, missing, if_match);
                assert_eq!(
                    hidden.status, 412,
                    "{method} {if_match} hidden: {}",
                    hidden.body
                );
                assert_eq!(
                    hidden.body.replace(&net.labs[0], "X"),
                    absent.body.replace(missing, "X"),
                    "{method} {if_match}: hidden and missing must be indistinguishable"
                );
                keep(&format!("{method} If-Match: {if_match} hidden"), hidden);
            }
        }

        // Counts.
        for q in [
            format!("Observation?patient={p}&_summary=count"),
            format!("Observation?patient={p}&_total=accurate"),
            "Observation?_summary=count".to_string(),
            "MedicationRequest?_total=accurate".to_string(),
        ] {
            let bundle = keep(&q, c.get(&q).expect(200));
            assert_eq!(bundle["total"], 0, "{q}: {bundle}");
            assert!(refs(&bundle).is_empty(), "{q}");
        }
        // The owner counts what it holds (the predicate, not the query, hides).
        assert_eq!(
            net.as_a()
                .read_json(&format!("Observation?patient={p}&_summary=count"))["total"],
            2
        );

        // C now holds its own record of P: an Encounter and an Observation referring to P.
        let c_enc = id_of(&c.create(&json!({
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": patient_ref()},
        })));
        let c_obs = id_of(&c.create(&json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "C blood pressure"},
            "subject": {"reference": patient_ref()},
            "encounter": {"reference": c_enc},
            "derivedFrom": [{"reference": net.labs[1]}],
        })));
        // A writes a lab that refers to C's encounter (accepted as a reference only).
        let a_on_c_enc = {
            let mut o = lab("3D046000001906202", 7.0, "2025-03-01", None);
            o["encounter"] = json!({"reference": c_enc});
            id_of(&net.as_a().create(&o))
        };

        // Holding records about P proves nothing (anyone can write one): reads still answer
        // 404, as for a missing resource, without content.
        for path in [
            net.labs[0].clone(),
            format!("{}/_history/1", net.labs[0]),
            net.medreq.clone(),
            patient_ref(),
        ] {
            let r = c.get(&path).expect(404);
            r.outcome();
            keep(&path, r);
        }
        // A resource that does not exist at all stays 404.
        c.get("Observation/no-such-observation").expect(404);
        // Own data is visible to its writer.
        c.read_json(&c_obs);
        c.read_json(&c_enc);

        // Search: only C's own Observation, with or without the patient.
        let bundle = keep(
            "search",
            c.get(&format!("Observation?patient={p}")).expect(200),
        );
        assert_eq!(refs(&bundle), vec![c_obs.clone()]);
        let bundle = keep(
            "count",
            c.get(&format!("Observation?patient={p}&_summary=count"))
                .expect(200),
        );
        assert_eq!(bundle["total"], 1);

        // _include: C's own Observation points to the hidden Patient and the hidden lab.
        for q in [
            format!(
                "Observation?_id={}&_include=Observation:subject",
                tail(&c_obs)
            ),
            format!(
                "Observation?_id={}&_include=Observation:derived-from",
                tail(&c_obs)
            ),
        ] {
            let bundle = keep(&q, c.get(&q).expect(200));
            assert_eq!(refs(&bundle), vec![c_obs.clone()], "{q}");
        }
        // `_include=*` adds C's own Encounter, nothing of A's.
        let q = format!("Observation?_id={}&_include=*", tail(&c_obs));
        let bundle = keep(&q, c.get(&q).expect(200));
        assert_eq!(
            sorted(refs(&bundle)),
            sorted(vec![c_obs.clone(), c_enc.clone()]),
            "{q}"
        );
        // _revinclude: A's lab refers to C's encounter.
        let q = format!(
            "Encounter?_id={}&_revinclude=Observation:encounter",
            tail(&c_enc)
        );
        let bundle = keep(&q, c.get(&q).expect(200));
        assert_eq!(
            sorted(refs(&bundle)),
            sorted(vec![c_enc.clone(), c_obs.clone()]),
            "{q}"
        );
        // Positive control: B (consented) gets the included resources.
        let q_inc = format!(
            "Observation?_id={}&_include=Observation:subject",
            tail(&c_obs)
        );
        assert!(
            refs(&net.as_b().read_json(&q_inc)).contains(&patient_ref()),
            "B should see the included Patient"
        );
        assert!(refs(&net.as_b().read_json(&q)).contains(&a_on_c_enc));

        // Chains and _has are evaluated over permitted resources only.
        for q in [
            "Observation?subject:Patient.identifier=urn:hosp-a:patient|P-0001".to_string(),
            "Observation?patient.identifier=urn:hosp-a:patient|P-0001".to_string(),
            "Observation?subject:Patient.family=Yamada".to_string(),
            "Patient?_has:Observation:patient:code=3D046000001906202".to_string(),
            "Encounter?_has:Observation:encounter:code=3D046000001906202".to_string(),
            "Patient?identifier=urn:hosp-a:patient|P-0001".to_string(),
            "Patient?family=Yamada".to_string(),
            format!("Observation?identifier=urn:hosp-a:lab|{SECRET_LAB_ID}"),
        ] {
            let bundle = keep(&q, c.get(&q).expect(200));
            assert!(refs(&bundle).is_empty(), "{q} reveals: {:?}", refs(&bundle));
        }
        // Positive control: the same chain and _has work for B.
        assert!(!refs(
            &net.as_b()
                .read_json("Observation?subject:Patient.identifier=urn:hosp-a:patient|P-0001")
        )
        .is_empty());
        assert_eq!(
            refs(
                &net.as_b()
                    .read_json("Encounter?_has:Observation:encounter:code=3D046000001906202")
            ),
            vec![c_enc.clone()]
        );

        // History: instance, type and system show no hidden version.
        let r = c.get(&format!("{}/_history", net.labs[0]));
        assert!(
            [403, 404].contains(&r.status) || refs(&r.json()).is_empty(),
            "instance history of a hidden resource: {} {}",
            r.status,
            r.body
        );
        keep("instance history", r);
        for q in [
            "Observation/_history",
            "_history",
            "MedicationRequest/_history",
        ] {
            let bundle = keep(q, c.get(q).expect(200));
            let shown = refs(&bundle);
            for hidden in net
                .labs
                .iter()
                .chain([&net.medreq, &net.imaging, &a_on_c_enc])
            {
                assert!(!shown.contains(hidden), "{q} shows {hidden}");
            }
            assert!(!shown.contains(&patient_ref()), "{q} shows the patient");
        }

        // $everything: C holds records of P, so it finds its own data there (as with
        // `?patient=`), and nothing of A's, not even the Patient record.
        let r = c.get(&format!("Patient/{p}/$everything")).expect(200);
        let shown = refs(&r.json());
        assert!(shown.contains(&c_obs), "{shown:?}");
        for hidden in
            net.labs
                .iter()
                .chain([&net.medreq, &net.imaging, &a_on_c_enc, &patient_ref()])
        {
            assert!(!shown.contains(hidden), "$everything shows {hidden}");
        }
        keep("$everything", r);
        // The consented B sees A's data there; the patient's other facility too.
        let everything = net
            .as_b()
            .read_json(&format!("Patient/{p}/$everything?_count=100"));
        let shown = refs(&everything);
        for r in net.labs.iter().chain([&net.medreq, &net.imaging, &c_obs]) {
            assert!(shown.contains(r), "B's $everything lacks {r}: {shown:?}");
        }

        // Batch GET entries of hidden resources answer 404/403 in the entry (before C
        // writes records of its own that carry the hidden lab's identifier, below).
        let batch = json!({
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": net.labs[0]}},
                {"request": {"method": "GET", "url": format!("Observation?patient={p}")}},
                {"request": {"method": "GET", "url": c_obs}},
            ],
        });
        let response = keep("batch", c.post("", &batch).expect(200));
        let e = entries(&response);
        let status0 = e[0]["response"]["status"].as_str().unwrap_or_default();
        assert!(
            status0.starts_with("404") || status0.starts_with("403"),
            "batch GET of a hidden resource: {}",
            e[0]
        );
        assert!(
            e[0].get("resource").is_none()
                || e[0]["resource"]["resourceType"] == "OperationOutcome"
        );
        // The search entry is answered like the search on its own: C's own record, and
        // nothing of A's.
        assert!(
            e[1]["response"]["status"]
                .as_str()
                .unwrap_or_default()
                .starts_with("200"),
            "{}",
            e[1]
        );
        let searched: Vec<String> = refs(&e[1]["resource"]);
        assert!(
            searched.contains(&c_obs),
            "batch search lacks {c_obs}: {searched:?}"
        );
        for hidden in &net.labs {
            assert!(!searched.contains(hidden), "batch search shows {hidden}");
        }
        assert!(e[2]["response"]["status"]
            .as_str()
            .unwrap_or_default()
            .starts_with("200"));

        // Conditional create matching only a hidden resource creates a new one.
        let mut mine = lab("3D046000001906202", 6.5, "2025-12-01", Some(SECRET_LAB_ID));
        mine["code"]["text"] = json!("C's own HbA1c");
        mine["note"] = json!([{"text": "C's own note"}]);
        let created = c.send_json_with(
            "POST",
            "Observation",
            &mine,
            &[(
                "If-None-Exist",
                &format!("identifier=urn:hosp-a:lab|{SECRET_LAB_ID}"),
            )],
        );
        assert_eq!(created.status, 201, "{}", created.body);
        let new_id = created.json()["id"].as_str().unwrap().to_string();
        assert_ne!(format!("Observation/{new_id}"), net.labs[0]);
        assert!(!created.body.contains(SECRET), "{}", created.body);
        // Conditional update matching only a hidden resource does not touch it either.
        let r = c.send_json_with(
            "PUT",
            &format!("Observation?identifier=urn:hosp-a:lab|{SECRET_LAB_ID}&subject=Patient/{p}&code=3D046000001906202&date=2025-02-10"),
            &mine,
            &[],
        );
        keep(&format!("conditional update {SECRET_LAB_ID}"), r);
        assert_eq!(
            net.as_a().read_json(&net.labs[0])["valueQuantity"]["value"],
            8.2,
            "C's conditional update changed A's hidden lab"
        );

        // Writes into A's data: refused, without content.
        let mut over = mine.clone();
        over["id"] = json!(tail(&net.labs[0]));
        // 404, exactly as C's read of it answers.
        let r = c.put(&net.labs[0], &over);
        assert_eq!(r.status, 404, "{}", r.body);
        assert!(!r.body.contains("hosp-a"), "names the holder: {}", r.body);
        keep("update A's lab", r);
        // A DELETE of what C cannot see answers as a DELETE of a missing id, deleting nothing.
        let r = c.delete(&net.labs[0]);
        assert_eq!(r.status, 204, "{}", r.body);
        keep("delete A's lab", r);
        let r = c.send_raw(
            "PATCH",
            &net.labs[0],
            crate::support::JSON_PATCH,
            br#"[{"op":"replace","path":"/status","value":"cancelled"}]"#,
        );
        assert!([403, 404].contains(&r.status), "{} {}", r.status, r.body);
        keep("patch A's lab", r);
        assert_eq!(net.as_a().read_json(&net.labs[0])["status"], "final");

        for (what, resp) in &seen {
            if what.contains(SECRET_LAB_ID) {
                // The query itself carries the identifier (echoed in the self link).
                assert!(!resp.body.contains(SECRET), "{what}: {}", resp.body);
            } else {
                assert_no_secret(resp, what);
            }
        }
    });
}

fn tail(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

/// A record written about a patient proves nothing (any member can write one): it turns no
/// hidden record's 404 into a 403, and a compartment answers the writer's own records alike
/// whether the patient is hidden from it or does not exist.
#[test]
fn a_probe_record_reveals_neither_hidden_records_nor_whether_a_patient_exists() {
    for_each_backend(|s| {
        let net = network(s);
        let as_c = net.as_c();
        let probe = |patient: &str| {
            let mut body = lab("5E091000002399904", 1.0, "2025-11-04", None);
            body["subject"] = json!({"reference": format!("Patient/{patient}")});
            id_of(&as_c.create(&body))
        };
        let before: Vec<u16> = [&patient_ref(), &net.labs[0]]
            .iter()
            .map(|path| as_c.get(path).status)
            .collect();
        assert_eq!(before, [404, 404]);
        let on_hidden = probe(PATIENT);
        let on_nobody = probe("nobody-at-all");
        for path in [&patient_ref(), &net.labs[0]] {
            as_c.get(path).expect(404);
        }
        // The facility holding P's Patient record knows P exists: it is told that a record
        // about P is withheld, in words that do not say whether consent or the holder's
        // release keeps it back (the consent permits B, not A, to see B's records).
        let b_record = {
            let mut body = lab("5E091000002399905", 3.0, "2025-11-05", None);
            body["note"] = json!([{"text": "B's own note"}]);
            id_of(&net.as_b().create(&body))
        };
        let withheld = net.as_a().get(&b_record).expect(403);
        let message = withheld.outcome().to_string();
        assert!(
            message.contains("has not released it") && message.contains("consent"),
            "{message}"
        );
        for (patient, own) in [(PATIENT, &on_hidden), ("nobody-at-all", &on_nobody)] {
            for path in [
                format!("Patient/{patient}/$everything"),
                format!("Patient/{patient}/Observation"),
            ] {
                let found = refs(&as_c.get(&path).expect(200).json());
                assert_eq!(found.as_slice(), std::slice::from_ref(own), "{path}");
            }
        }
    });
}

/// A review found: a permit naming another server's organization
/// (`https://other.example/fhir/Organization/<a member's id>`), or a path such as
/// `Practitioner/../Organization/<id>`, was taken for the local member of that id and opened
/// the patient's data to it. Such a recipient names no one here: refused (422).
#[test]
fn a_consent_naming_another_servers_organization_opens_nothing_here() {
    for_each_backend(|s| {
        let net = network(s);
        net.as_c().get(&net.labs[0]).expect(404);
        for actor in [
            format!("https://other.example/fhir/{ORG_C}"),
            format!("http://evil.example/{ORG_C}/_history/9"),
            format!("Practitioner/../{ORG_C}"),
        ] {
            let mut grant = consent_body(&[actor.as_str()], "active");
            grant.as_object_mut().unwrap().remove("id");
            let refused = net.as_a().post("Consent", &grant).expect(422);
            assert!(refused.body.contains("another server"), "{}", refused.body);
            net.as_c().get(&net.labs[0]).expect(404);
        }
        // Under this server's own base it is the local member.
        let mut grant = consent_body(&[&format!("{}/{ORG_C}", s.base)], "active");
        grant.as_object_mut().unwrap().remove("id");
        net.as_a().post("Consent", &grant).expect(201);
        net.as_c().get(&net.labs[0]).expect(200);
    });
}

/// A review found: a Binary sent as a FHIR resource without `securityContext` was directory
/// data every member could read, while the same content sent raw without
/// `X-Security-Context` was refused for exactly that reason. Now it is its holder's alone.
#[test]
fn a_binary_without_security_context_is_its_holders_alone() {
    for_each_backend(|s| {
        let net = network(s);
        for format in ["json", "xml"] {
            let created = match format {
                "json" => net.as_a().post(
                    "Binary",
                    &json!({"resourceType": "Binary",
                        "contentType": "text/plain", "data": "U0VDUkVUIExBQg=="}),
                ),
                _ => net.as_a().send_raw(
                    "POST",
                    "Binary",
                    "application/fhir+xml",
                    br#"<Binary xmlns="http://hl7.org/fhir"><contentType value="text/plain"/><data value="U0VDUkVUIExBQg=="/></Binary>"#,
                ),
            }
            .expect(201);
            let location = created.header("location").unwrap().to_string();
            let path = location
                .split("/fhir/")
                .nth(1)
                .and_then(|rest| rest.split("/_history").next())
                .unwrap()
                .to_string();
            net.as_a().get(&path).expect(200);
            net.as_b().get(&path).expect(404);
            net.as_c().get(&path).expect(404);
        }
    });
}

/// A review found: when no rule named the facility, the refusal was blamed on the first of
/// the patient's consents by id, whatever it said: a deny aimed at another facility was named
/// as what refused this one. The consent that permits others (and not this facility) decided.
#[test]
fn a_refusal_is_blamed_on_the_consent_that_permits_others_not_an_unrelated_deny() {
    for_each_backend(|s| {
        let net = network(s);
        // Sorted before the permit by id: the deny names A, the holder, not C.
        let mut unrelated = consent_body(&[ORG_A], "active");
        unrelated["id"] = json!("a-deny-aimed-elsewhere");
        unrelated["provision"]["type"] = json!("deny");
        net.as_a()
            .put("Consent/a-deny-aimed-elsewhere", &unrelated)
            .expect(201);
        let request_id = format!("rq-blame-{}", uuid::Uuid::new_v4().simple());
        net.as_c()
            .get_with(&net.labs[0], &[("X-Request-Id", request_id.as_str())])
            .expect(404);
        let (said, decisions) = refusal_descriptions(s, "auditor-blame", &request_id);
        assert_eq!(
            said,
            vec![format!("deny by Consent/{CONSENT}")],
            "{decisions}"
        );
    });
}

/// A review found: the documented registration step, a facility's conditional
/// `PUT Patient?identifier=<its system>|<local id>`, matched a record another holder keeps (the
/// network's directory Patient carries every facility's local id) and answered 403, then 412
/// once the facility had its own. A conditional update, patch or delete matches among the
/// writer's own records: it changes nothing else.
#[test]
fn conditional_changes_match_the_writers_own_records() {
    for_each_backend(|s| {
        let net = network(s);
        let local = json!({"system": "urn:clinic-b:patient", "value": "B-77"});
        let mut held_by_a = net.as_a().read_json(&patient_ref());
        held_by_a["identifier"]
            .as_array_mut()
            .unwrap()
            .push(local.clone());
        net.as_a().put(&patient_ref(), &held_by_a).expect(200);
        let criteria = "Patient?identifier=urn:clinic-b:patient|B-77";
        let registration = json!({"resourceType": "Patient", "identifier": [local],
            "name": [{"family": "Yamada", "given": ["Taro"]}], "birthDate": "1958-03-12"});
        // B sees A's record (the consent permits B) but registers its own.
        assert_eq!(search_refs(&net.as_b(), criteria), vec![patient_ref()]);
        let created = net.as_b().put(criteria, &registration).expect(201).json();
        let mut again = registration.clone();
        again["gender"] = json!("male");
        let updated = net.as_b().put(criteria, &again).expect(200).json();
        assert_eq!(created["id"], updated["id"]);
        net.as_b()
            .send_raw(
                "PATCH",
                criteria,
                "application/json-patch+json",
                br#"[{"op": "replace", "path": "/gender", "value": "other"}]"#,
            )
            .expect(200);
        let deleted = net.as_b().delete(criteria);
        assert!([200, 204].contains(&deleted.status), "{}", deleted.body);
        // A's record is as A wrote it.
        let kept = net.as_a().read_json(&patient_ref());
        assert_eq!(kept["meta"]["versionId"], "2", "{kept}");
        assert_eq!(kept["gender"], "male");
        // Shared records are not duplicated: B's conditional update matching A's
        // Organization is refused, as before (the adversarial review found a copy stored).
        let org_id = format!("org-{}", uuid::Uuid::new_v4().simple());
        let org = json!({"resourceType": "Organization", "name": "Shared lab",
            "identifier": [{"system": "urn:test:org", "value": org_id}]});
        net.as_a().create(&org);
        let criteria = format!("Organization?identifier=urn:test:org|{org_id}");
        net.as_b().put(&criteria, &org).expect(403);
        let found = net.as_b().read_json(&format!("{criteria}&_total=accurate"));
        assert_eq!(found["total"], 1, "{found}");
    });
}

/// A review found: deleting the Patient record a consent was recorded on took the record out
/// of the person it was linked to, and the patient's decision with it (a refusal recorded on
/// a clinic's record stopped applying to the hospital's data). Such a delete is refused (409)
/// until the consent is withdrawn or moved.
#[test]
fn a_patient_record_carrying_a_consent_in_force_is_not_deleted() {
    for_each_backend(|s| {
        let net = network(s);
        let refused = net.as_a().delete(&patient_ref()).expect(409);
        assert!(refused.body.contains(CONSENT), "{}", refused.body);
        net.as_a().get(&patient_ref()).expect(200);
        net.as_b().get(&net.labs[0]).expect(200);
        net.as_a()
            .put(
                &format!("Consent/{CONSENT}"),
                &consent_body(&[ORG_B], "inactive"),
            )
            .expect(200);
        let deleted = net.as_a().delete(&patient_ref());
        assert!([200, 204].contains(&deleted.status), "{}", deleted.body);
    });
}

/// A review found: in a transaction, a Binary listed before the DocumentReference it
/// belongs to (its securityContext) was stored as directory data every facility could read,
/// letter text included; the other order, or separate requests, kept it with the document.
/// Transactions are not ordered: both orders now give the document's consent decision.
#[test]
fn a_referral_letter_follows_its_document_whatever_the_transaction_order() {
    for_each_backend(|s| {
        let net = network(s);
        for binary_first in [true, false] {
            let (doc, bin) = (
                format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            );
            let binary = json!({"fullUrl": bin, "resource": {"resourceType": "Binary",
                "contentType": "text/plain", "securityContext": {"reference": doc},
                "data": "UkVGRVJSQUwgTEVUVEVS"},
                "request": {"method": "POST", "url": "Binary"}});
            let document = json!({"fullUrl": doc, "resource": {"resourceType": "DocumentReference",
                "status": "current", "subject": {"reference": patient_ref()},
                "content": [{"attachment": {"contentType": "text/plain", "url": bin}}]},
                "request": {"method": "POST", "url": "DocumentReference"}});
            let entry = match binary_first {
                true => vec![binary, document],
                false => vec![document, binary],
            };
            let answer = net
                .as_a()
                .post(
                    "",
                    &json!({"resourceType": "Bundle", "type": "transaction", "entry": entry}),
                )
                .expect(200)
                .json();
            let stored: Vec<String> = entries(&answer)
                .iter()
                .map(|e| {
                    let location = e["response"]["location"].as_str().unwrap_or_default();
                    location
                        .split("/_history")
                        .next()
                        .unwrap_or_default()
                        .rsplit('/')
                        .take(2)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .collect();
            let letter = stored.iter().find(|r| r.starts_with("Binary/")).unwrap();
            let document = stored
                .iter()
                .find(|r| r.starts_with("DocumentReference/"))
                .unwrap();
            net.as_b().get(document).expect(200);
            // C is not in the consent: nothing; B is: the letter, as the document.
            net.as_c().get(letter).expect(404);
            net.as_b()
                .get_with(letter, &[("Accept", "application/fhir+json")])
                .expect(200);
            // "This document and everything related to it" refused: its letter too (a review
            // found the Binary served, its securityContext indexed by no search parameter).
            let mut except_document = consent_body(&[ORG_B], "active");
            except_document["provision"]["provision"] = json!([{"type": "deny",
                "data": [{"meaning": "related", "reference": {"reference": document}}]}]);
            net.as_a()
                .put(&format!("Consent/{CONSENT}"), &except_document)
                .expect(200);
            for refused in [document, letter] {
                let r = net
                    .as_b()
                    .get_with(refused, &[("Accept", "application/fhir+json")]);
                assert!([403, 404].contains(&r.status), "{refused}: {}", r.body);
            }
            net.as_a()
                .put(
                    &format!("Consent/{CONSENT}"),
                    &consent_body(&[ORG_B], "active"),
                )
                .expect(200);
        }
    });
}

/// A label added to a record later reaches the records that took their labels from it, on
/// the same write (it reached them only at the next `renkei reindex`): a document marked
/// UNDELIVERED withholds its Binary and the Binary's Provenance too, and taking the label
/// off shows them again.
#[test]
fn a_label_added_later_reaches_the_records_that_stand_for_the_record() {
    for_each_backend(|s| {
        let net = network(s);
        let mut report = json!({"resourceType": "DocumentReference", "status": "current",
            "subject": {"reference": patient_ref()},
            "content": [{"attachment": {"contentType": "text/plain", "data": "U0VDUkVU"}}]});
        let document = id_of(&net.as_a().create(&report));
        // More records refer to the document than are relabelled per write, all of which
        // name their patient themselves: they do not take the Binary's turn.
        let derived: Vec<Value> = (0..260)
            .map(|_| {
                json!({"resource": {"resourceType": "Observation", "status": "final",
                    "code": {"text": "derived"}, "subject": {"reference": patient_ref()},
                    "derivedFrom": [{"reference": document}]},
                    "request": {"method": "POST", "url": "Observation"}})
            })
            .collect();
        net.as_a()
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "batch", "entry": derived}),
            )
            .expect(200);
        let binary = id_of(&net.as_a().create(&json!({"resourceType": "Binary",
            "contentType": "text/plain", "securityContext": {"reference": document},
            "data": "U0VDUkVU"})));
        let provenance = id_of(&net.as_a().create(&json!({"resourceType": "Provenance",
            "target": [{"reference": binary}], "recorded": "2025-11-04T10:00:00Z",
            "agent": [{"who": {"reference": ORG_A}}]})));
        let records = [&document, &binary, &provenance];
        let json_accept = [("Accept", "application/fhir+json")];
        for shown in records {
            net.as_b().get_with(shown, &json_accept).expect(200);
        }
        report["id"] = json!(tail(&document));
        report["meta"] = json!({"tag": [{"system": PRIVACY_SYSTEM, "code": "UNDELIVERED"}]});
        net.as_a().put(&document, &report).expect(200);
        for hidden in records {
            let r = net.as_b().get_with(hidden, &json_accept);
            assert!(
                [403, 404].contains(&r.status),
                "{hidden}: {} {}",
                r.status,
                r.body
            );
            net.as_a().get_with(hidden, &json_accept).expect(200);
        }
        report.as_object_mut().unwrap().remove("meta");
        net.as_a().put(&document, &report).expect(200);
        for shown in records {
            net.as_b().get_with(shown, &json_accept).expect(200);
        }
    });
}

/// A deleted record stays exactly as hidden as it was under a refusal of a period or of a
/// record "and everything related": the tombstone keeps the clinical date and references
/// those refusals read (it kept only the patient and labels, so B got a 410 telling it a
/// refused record had existed).
#[test]
fn a_deleted_record_stays_hidden_under_a_refusal_of_its_period_or_related_records() {
    for_each_backend(|s| {
        let net = network(s);
        let november = id_of(&net.as_a().create(&lab("3D046", 6.1, "2025-11-15", None)));
        let december = id_of(&net.as_a().create(&lab("3D046", 6.3, "2025-12-15", None)));
        let report = id_of(
            &net.as_a()
                .create(&json!({"resourceType": "DiagnosticReport",
            "status": "final", "code": {"text": "HbA1c"}, "subject": {"reference": patient_ref()},
            "result": [{"reference": december}]})),
        );
        let mut refusing = consent_body(&[ORG_B], "active");
        refusing["provision"]["provision"] = json!([
            {"type": "deny", "dataPeriod": {"start": "2025-11-01", "end": "2025-11-30"}},
            {"type": "deny", "data": [{"meaning": "related", "reference": {"reference": december}}]}]);
        net.as_a()
            .put(&format!("Consent/{CONSENT}"), &refusing)
            .expect(200);
        for refused in [&november, &report] {
            let r = net.as_b().get(refused);
            assert!(
                [403, 404].contains(&r.status),
                "{refused}: {} {}",
                r.status,
                r.body
            );
            let deleted = net.as_a().delete(refused);
            assert!([200, 204].contains(&deleted.status), "{}", deleted.body);
            let r = net.as_b().get(refused);
            assert!(
                [403, 404].contains(&r.status),
                "{refused} deleted: {} {}",
                r.status,
                r.body
            );
            net.as_a().get(refused).expect(410);
        }
        // What the refusals do not cover shows its deletion as before.
        net.as_b().get(&net.labs[0]).expect(200);
        let deleted = net.as_a().delete(&net.labs[0]);
        assert!([200, 204].contains(&deleted.status), "{}", deleted.body);
        net.as_b().get(&net.labs[0]).expect(410);
    });
}

/// A JP-CLINS discharge summary of hospital A as a document Bundle: its Composition names
/// the patient by the Patient entry's `urn:uuid:`; the entry carries its own `id`, A's local
/// patient identifier and the birth date.
fn discharge_summary(entry_id: &str, local_id: &str, birth_date: &str) -> Value {
    let (composition, patient) = (
        format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        format!("urn:uuid:{}", uuid::Uuid::new_v4()),
    );
    json!({"resourceType": "Bundle", "type": "document",
        "identifier": {"system": "urn:hosp-a:document", "value": uuid::Uuid::new_v4().to_string()},
        "timestamp": "2025-11-20T10:00:00+09:00",
        "entry": [
            {"fullUrl": composition, "resource": {"resourceType": "Composition",
                "status": "final", "date": "2025-11-20",
                "type": {"coding": [{"system": "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes", "code": "18842-5"}]},
                "subject": {"reference": patient}, "author": [{"reference": ORG_A}],
                "title": format!("退院時サマリー {SECRET}")}},
            {"fullUrl": patient, "resource": {"resourceType": "Patient", "id": entry_id,
                "identifier": [{"system": "urn:hosp-a:patient", "value": local_id}],
                "birthDate": birth_date}}]})
}

/// The clinic finds the patient's discharge summaries by R4's `composition.` chains, within
/// the patient's consent: by the patient record the document was matched to, its type, date
/// and title. Other facilities find nothing; `composition` itself and reference chains other
/// than subject/patient are not searched (reported, never an empty page).
#[test]
fn discharge_summaries_are_found_by_their_composition_within_consent() {
    for_each_backend(|s| {
        let net = network(s);
        let summary = id_of(
            &net.as_a()
                .create(&discharge_summary("1", "P-0001", "1958-03-12")),
        );
        let unmatched = id_of(
            &net.as_a()
                .create(&discharge_summary("1", "P-9999", "1958-03-12")),
        );
        let doc_type = "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes|18842-5";
        let found = |who: &Caller<'_>, query: &str| search_refs(who, query);
        for query in [
            format!("Bundle?composition.subject=Patient/{PATIENT}"),
            format!("Bundle?composition.patient={PATIENT}&composition.type={doc_type}"),
            format!(
                "Bundle?composition.subject={PATIENT}&composition.date=2025-11-20&type=document"
            ),
            format!(
                "Bundle?composition.patient=Patient/{PATIENT}&composition.title:contains=サマリー"
            ),
        ] {
            assert_eq!(found(&net.as_b(), &query), vec![summary.clone()], "{query}");
            assert!(found(&net.as_c(), &query).is_empty(), "{query}");
            assert_eq!(found(&net.as_a(), &query), vec![summary.clone()], "{query}");
        }
        // By type alone the hospital finds both of its documents, the clinic the one it may see.
        let mut both = vec![summary.clone(), unmatched.clone()];
        both.sort();
        let by_type = format!("Bundle?composition.type={doc_type}");
        assert_eq!(found(&net.as_a(), &by_type), both);
        assert_eq!(found(&net.as_b(), &by_type), vec![summary.clone()]);
        assert!(found(&net.as_b(), "Bundle?composition.date=2024-01-01").is_empty());
        for unsupported in [
            "composition=Composition/x",
            "composition.author=Organization/x",
        ] {
            let r = net.as_b().get_with(
                &format!("Bundle?{unsupported}"),
                &[("Prefer", "handling=strict")],
            );
            assert_eq!(r.status, 400, "{unsupported}: {}", r.body);
        }
        // Chains go on from the patient record (the clinic knows the hospital's patient ID).
        for query in [
            "Bundle?composition.subject:Patient.identifier=urn:hosp-a:patient%7CP-0001".to_string(),
            format!("Bundle?composition.patient.birthdate=1958-03-12&composition.type={doc_type}"),
        ] {
            assert_eq!(found(&net.as_b(), &query), vec![summary.clone()], "{query}");
        }
        // A Composition about a Group is not about the patient its entries are about.
        let mut about_group = discharge_summary("1", "P-0001", "1958-03-12");
        about_group["entry"][0]["resource"]["subject"] = json!({"reference": "Group/ward-3"});
        let about_group = id_of(&net.as_a().create(&about_group));
        let by_patient = format!("Bundle?composition.patient={PATIENT}");
        assert_eq!(found(&net.as_a(), &by_patient), vec![summary.clone()]);
        assert!(found(&net.as_a(), &by_type).contains(&about_group));
        // A label added later to a record a document's entry refers to withholds the document
        // (it was withheld only when written after the label).
        let mut with_letter = discharge_summary("1", "P-0001", "1958-03-12");
        with_letter["entry"].as_array_mut().unwrap().push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": {"resourceType": "Binary", "contentType": "text/plain",
                "securityContext": {"reference": net.labs[1]}, "data": "U0VDUkVU"}}));
        let with_letter = id_of(&net.as_a().create(&with_letter));
        net.as_b().get(&with_letter).expect(200);
        let mut lab = net.as_a().read_json(&net.labs[1]);
        lab["meta"] = json!({"tag": [{"system": PRIVACY_SYSTEM, "code": "UNDELIVERED"}]});
        net.as_a().put(&net.labs[1], &lab).expect(200);
        let r = net.as_b().get(&with_letter);
        assert!([403, 404].contains(&r.status), "{} {}", r.status, r.body);
        net.as_a().get(&with_letter).expect(200);
        let capability = s.read_json("metadata");
        let bundle = capability["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "Bundle")
            .unwrap()
            .clone();
        let documentation = bundle["documentation"].as_str().unwrap_or_default();
        assert!(
            documentation.contains("composition.<Composition parameter>"),
            "{bundle}"
        );
        // What a Bundle's entries refer to is kept for labels only: a permission limited to a
        // record "and everything related" does not open a document referring to it, and
        // `_revinclude=*` does not bring documents in.
        let mut citing = discharge_summary("1", "P-0001", "1958-03-12");
        citing["entry"].as_array_mut().unwrap().push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": {"resourceType": "Binary", "contentType": "text/plain",
                "securityContext": {"reference": net.labs[0]}, "data": "U0VDUkVU"}}));
        let citing = id_of(&net.as_a().create(&citing));
        let mut related_only = consent_body(&[ORG_B], "active");
        related_only["provision"]["data"] =
            json!([{"meaning": "related", "reference": {"reference": net.labs[0]}}]);
        net.as_a()
            .put(&format!("Consent/{CONSENT}"), &related_only)
            .expect(200);
        net.as_b().get(&net.labs[0]).expect(200);
        net.as_b().get(&citing).expect(404);
        let revincluded = net.as_a().read_json(&format!(
            "Observation?_id={}&_revinclude=*",
            tail(&net.labs[0])
        ));
        assert!(
            entries(&revincluded)
                .iter()
                .all(|e| e["resource"]["resourceType"] != "Bundle"),
            "{revincluded}"
        );
        // Nor one limited to the patient "and everything related": a document's own rows
        // naming its patient do not make it related.
        related_only["provision"]["data"] =
            json!([{"meaning": "related", "reference": {"reference": patient_ref()}}]);
        net.as_a()
            .put(&format!("Consent/{CONSENT}"), &related_only)
            .expect(200);
        net.as_b().get(&net.labs[0]).expect(200);
        net.as_b().get(&summary).expect(404);
    });
}

/// A review found: a JP-CLINS document (a discharge summary whose Composition names the
/// Patient entry of the Bundle by its `urn:uuid:`) was the hospital's alone, even for the
/// clinic the patient consented to. The entry is now matched to the writer's own Patient
/// record by identifier (and birth date), and the document follows that patient's consent.
/// An entry's own id is the sender's, never taken for a record here.
#[test]
fn a_discharge_summary_document_follows_the_patients_consent() {
    for_each_backend(|s| {
        let net = network(s);
        let document = discharge_summary;
        let stored = |body: Value| id_of(&net.as_a().create(&body));
        // The patient's own document: the consented clinic reads it, the other does not.
        let summary = stored(document("1", "P-0001", "1958-03-12"));
        net.as_b().get(&summary).expect(200);
        net.as_c().get(&summary).expect(404);
        net.as_a().get(&summary).expect(200);
        // Nothing of the writer's matches (unknown id, or another birth date): its alone.
        for (local_id, birth_date) in [("P-9999", "1958-03-12"), ("P-0001", "1960-01-01")] {
            let unmatched = stored(document("1", local_id, birth_date));
            net.as_b().get(&unmatched).expect(404);
            net.as_a().get(&unmatched).expect(200);
        }
        // The entry's id names the consented patient here, its identifier the other one:
        // the document is about the other one, whom nobody else may see.
        let other = stored(document(PATIENT, "Q-0002", "1958-03-12"));
        net.as_b().get(&other).expect(404);
        // Registered in the same transaction as the document, whatever the entry order, with
        // a consent for B: B reads it. (The document's own `urn:uuid:` references are its
        // own: the transaction refused them as naming none of its entries before.)
        let mut consent = consent_body(&[ORG_B], "active");
        consent.as_object_mut().unwrap().remove("id");
        consent["patient"] = json!({"reference": "Patient/pat-new-doc"});
        let answer = net
            .as_a()
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": document("1", "P-0100", "1970-05-05"),
                 "request": {"method": "POST", "url": "Bundle"}},
                {"resource": {"resourceType": "Patient", "id": "pat-new-doc",
                    "identifier": [{"system": "urn:hosp-a:patient", "value": "P-0100"}],
                    "birthDate": "1970-05-05"},
                 "request": {"method": "PUT", "url": "Patient/pat-new-doc"}},
                {"resource": consent, "request": {"method": "POST", "url": "Consent"}}]}),
            )
            .expect(200)
            .json();
        let location = answer["entry"][0]["response"]["location"]
            .as_str()
            .unwrap_or_default();
        let registered = location.split("/_history").next().unwrap_or_default();
        assert!(registered.starts_with("Bundle/"), "{answer}");
        net.as_b().get(registered).expect(200);
        net.as_c().get(registered).expect(404);
        // A Bundle about two patients is no one patient's to open: its holder's alone.
        let two = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": SECRET}, "subject": {"reference": patient_ref()}}},
            {"fullUrl": "urn:uuid:2", "resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": SECRET}, "subject": {"reference": format!("Patient/{OTHER_PATIENT}")}}}]});
        let two = stored(two);
        net.as_b().get(&two).expect(404);
        net.as_a().get(&two).expect(200);
        // Another facility's record with the same identifier is not the writer's patient.
        let b_doc = s
            .with_token(&net.b)
            .create(&document("1", "P-0001", "1958-03-12"));
        net.as_c().get(&id_of(&b_doc)).expect(404);
        net.as_a().get(&id_of(&b_doc)).expect(404);

        // The second review's findings. A document is withheld as its entries are: an
        // UNDELIVERED result inside is withheld from the consented clinic.
        let mut undelivered = document("1", "P-0001", "1958-03-12");
        let patient_url = undelivered["entry"][1]["fullUrl"].clone();
        undelivered["entry"].as_array_mut().unwrap().push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": SECRET},
                "meta": {"tag": [{"system": PRIVACY_SYSTEM, "code": "UNDELIVERED"}]},
                "subject": {"reference": patient_url}}}));
        let undelivered = stored(undelivered);
        net.as_b().get(&undelivered).expect(404);
        net.as_a().get(&undelivered).expect(200);
        // References resolve against their entry's RESTful fullUrl (bundle.html#references):
        // `Patient/pat-p` in another server's document is that server's patient, not ours.
        let remote = |with_patient_entry: bool| {
            let mut entries = vec![
                json!({"fullUrl": "http://ehr.hosp-a.example/fhir/Composition/c1",
                "resource": {"resourceType": "Composition", "status": "final", "date": "2025-11-20",
                    "type": {"text": "discharge summary"}, "subject": {"reference": patient_ref()},
                    "author": [{"reference": ORG_A}], "title": SECRET}}),
            ];
            if with_patient_entry {
                entries.push(
                    json!({"fullUrl": format!("http://ehr.hosp-a.example/fhir/{}", patient_ref()),
                    "resource": {"resourceType": "Patient", "id": PATIENT,
                        "identifier": [{"system": "urn:hosp-a:patient", "value": "P-0001"}],
                        "birthDate": "1958-03-12"}}),
                );
            }
            json!({"resourceType": "Bundle", "type": "document",
                "identifier": {"system": "urn:hosp-a:document", "value": uuid::Uuid::new_v4().to_string()},
                "timestamp": "2025-11-20T10:00:00+09:00", "entry": entries})
        };
        net.as_b().get(&stored(remote(false))).expect(404);
        // With the Patient entry it names (absolute fullUrls, relative references), the
        // entry is matched as a urn:uuid one is.
        net.as_b().get(&stored(remote(true))).expect(200);
        // Stored through a batch, the document's own references stay its own.
        let batch = net
            .as_a()
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": document("1", "P-0001", "1958-03-12"),
                 "request": {"method": "POST", "url": "Bundle"}}]}),
            )
            .expect(200)
            .json();
        let location = batch["entry"][0]["response"]["location"]
            .as_str()
            .unwrap_or_default();
        assert!(location.starts_with("Bundle/"), "{batch}");
        net.as_b()
            .get(location.split("/_history").next().unwrap_or_default())
            .expect(200);
        // A duplicate merged into the patient's record (ITI-104) gives way to its survivor.
        let duplicate = net.as_a().create(&json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:hosp-a:patient", "value": "P-0001"}],
            "birthDate": "1958-03-12"}));
        net.as_b()
            .get(&stored(document("1", "P-0001", "1958-03-12")))
            .expect(404);
        let mut merged = duplicate.clone();
        merged["active"] = json!(false);
        merged["link"] = json!([{"type": "replaced-by", "other": {"reference": patient_ref()}}]);
        net.as_a().put(&id_of(&duplicate), &merged).expect(200);
        net.as_b()
            .get(&stored(document("1", "P-0001", "1958-03-12")))
            .expect(200);
        // A refusal limited to a type (diagnoses) withholds the patient's documents too: one
        // of their entries may be a diagnosis (a review found them shown). The rest stays.
        let mut except_diagnoses = consent_body(&[ORG_B], "active");
        except_diagnoses["provision"]["provision"] = json!([{"type": "deny",
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]}]);
        net.as_a()
            .put(&format!("Consent/{CONSENT}"), &except_diagnoses)
            .expect(200);
        let refused = net.as_b().get(&summary);
        assert!([403, 404].contains(&refused.status), "{}", refused.body);
        assert!(!refused.body.contains(SECRET), "{}", refused.body);
        net.as_b().get(&net.labs[0]).expect(200);
        net.as_a().get(&summary).expect(200);
        net.as_a()
            .put(
                &format!("Consent/{CONSENT}"),
                &consent_body(&[ORG_B], "active"),
            )
            .expect(200);

        // The second review's findings. A resource holding a labelled one (contained) is
        // withheld as the part would be: a report containing an UNDELIVERED result.
        let report = net
            .as_a()
            .create(&json!({"resourceType": "DiagnosticReport",
            "status": "final", "code": {"text": SECRET},
            "subject": {"reference": patient_ref()}, "result": [{"reference": "#r1"}],
            "contained": [{"resourceType": "Observation", "id": "r1", "status": "final",
                "code": {"text": "HIV antibody"}, "valueString": "POSITIVE",
                "meta": {"tag": [{"system": PRIVACY_SYSTEM, "code": "UNDELIVERED"}]}}]}));
        let r = net.as_b().get(&id_of(&report));
        assert!([403, 404].contains(&r.status), "{}", r.body);
        // A Bundle whose entry reaches another patient's data through what it refers to (a
        // Binary's securityContext) is a Bundle of several patients: its holder's alone.
        let other_lab = {
            let mut o = lab("3D046000001906202", 7.1, "2025-03-03", None);
            o["subject"] = json!({"reference": format!("Patient/{OTHER_PATIENT}")});
            id_of(&net.as_a().create(&o))
        };
        let smuggled = stored(
            json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": "urn:uuid:11", "resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": "x"}, "subject": {"reference": patient_ref()}}},
            {"fullUrl": "urn:uuid:12", "resource": {"resourceType": "Binary", "contentType": "text/plain",
                "securityContext": {"reference": other_lab}, "data": "eA=="}}]}),
        );
        net.as_b().get(&smuggled).expect(404);
        net.as_a().get(&smuggled).expect(200);
        // A reindex beside the server knows the address it listens on: a record naming its
        // patient by this server's absolute URL stays that patient's (a review found it
        // turned into a record of nobody, shown to all in an opt-out network).
        let mut absolute = lab("3D046000001906202", 6.6, "2025-04-04", None);
        absolute["subject"] = json!({"reference": s.url(&patient_ref())});
        let absolute = id_of(&net.as_a().create(&absolute));
        net.as_b().get(&absolute).expect(200);
        s.cli(&["reindex"]);
        net.as_b().get(&absolute).expect(200);
        let found = search_refs(
            &net.as_b(),
            &format!("Observation?subject={}", patient_ref()),
        );
        assert!(found.contains(&absolute), "{found:?}");
    });
}

/// A review found: a conditional update whose criteria match nothing, with a body id naming a
/// record hidden from the writer, answered 409 "exists": an oracle for ids a read answers 404
/// for. It answers 404 as the read does.
#[test]
fn a_conditional_update_does_not_reveal_a_hidden_id() {
    for_each_backend(|s| {
        let net = network(s);
        let hidden = net.labs[0].clone();
        net.as_c().get(&hidden).expect(404);
        let id = hidden.trim_start_matches("Observation/");
        let body = json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"text": "probe"}, "identifier": [{"system": "urn:probe", "value": "nope"}]});
        net.as_c()
            .put("Observation?identifier=urn:probe|nope", &body)
            .expect(404);
        // B may see it: the conflict is told as before.
        net.as_b()
            .put("Observation?identifier=urn:probe|nope", &body)
            .expect(409);
    });
}

#[test]
fn break_glass_needs_permission_and_a_reason() {
    for_each_backend(|s| {
        let net = network(s);
        let er = s.token_for("er-c", ORG_C, "facility", &["--break-glass"]);
        let er = s.with_token(&er);
        let glass = [
            ("X-Purpose-Of-Use", "ETREAT"),
            ("X-Break-Glass-Reason", "unconscious patient in the ER"),
        ];
        // Without the headers: nothing.
        er.get(&net.labs[0]).expect(404);
        // Break-glass with a reason: sees the data, for that request.
        let read = er.get_with(&net.labs[0], &glass).expect(200);
        assert!(read.body.contains(SECRET));
        let found = refs(
            &er.get_with(&format!("Observation?patient={PATIENT}"), &glass)
                .expect(200)
                .json(),
        );
        assert_eq!(sorted(found), sorted(net.labs.clone()));
        // Only for that request.
        er.get(&net.labs[0]).expect(404);
        // ETREAT without a reason → 403.
        er.get_with(&net.labs[0], &[("X-Purpose-Of-Use", "ETREAT")])
            .expect(403)
            .outcome();
        er.get_with(
            &net.labs[0],
            &[
                ("X-Purpose-Of-Use", "ETREAT"),
                ("X-Break-Glass-Reason", "  "),
            ],
        )
        .expect(403);
        // A client not allowed to break the glass → 403 even with a reason.
        let r = net.as_c().get_with(&net.labs[0], &glass).expect(403);
        assert_no_secret(&r, "break-glass refused");

        // The patient refuses C outright; break-glass overrides it (the network default), and
        // the audit names the refusal it overrode, for reads and searches alike.
        let mut refusal = consent_body(&[ORG_C], "active");
        refusal["id"] = json!("refusal-of-c");
        refusal["provision"]["type"] = json!("deny");
        refusal["provision"]
            .as_object_mut()
            .unwrap()
            .remove("purpose");
        net.as_a().put("Consent/refusal-of-c", &refusal).expect(201);
        let refused = er.get(&net.labs[0]);
        assert!([403, 404].contains(&refused.status), "{}", refused.body);
        er.get_with(&net.labs[0], &glass).expect(200);
        er.get_with(&format!("Observation?patient={PATIENT}"), &glass)
            .expect(200);
        let auditor = s.token_for("auditor-bg", ORG_A, "auditor", &[]);
        let decisions = s.with_token(&auditor).read_json(&format!(
            "AuditEvent?subtype=AuthZ-Consent&agent={ORG_C}&_count=100"
        ));
        let overriding = entries(&decisions)
            .into_iter()
            .filter(|e| {
                e["resource"]["outcomeDesc"].as_str()
                    == Some("permit by break-glass over the refusal in Consent/refusal-of-c: unconscious patient in the ER")
            })
            .count();
        assert!(overriding >= 2, "{decisions}");
    });
}

/// Every break-glass request that shows data leaves its break-glass event with the stated
/// reason: history, `$match`, `$ihe-pix` and Bundles too, not only reads and searches.
#[test]
fn every_break_glass_access_leaves_its_break_glass_event() {
    for_each_backend(|s| {
        let net = network(s);
        let er = s.token_for("er-c-all", ORG_C, "facility", &["--break-glass"]);
        let er = s.with_token(&er);
        let reason = "bleeding patient brought in unconscious";
        let glass = [
            ("X-Purpose-Of-Use", "ETREAT"),
            ("X-Break-Glass-Reason", reason),
        ];
        er.get_with(&format!("{}/_history", net.labs[0]), &glass)
            .expect(200);
        er.get_with(&format!("Patient/{PATIENT}/$everything"), &glass)
            .expect(200);
        // A type's history and `$match` are about no one patient: break-glass, which opens
        // one patient's record, is refused for them (and the refusal is audited).
        er.get_with("Observation/_history", &glass)
            .expect(403)
            .outcome();
        er.send_json_with(
            "POST",
            "Patient/$match",
            &json!({"resourceType": "Parameters", "parameter": [{"name": "resource",
                "resource": {"resourceType": "Patient", "name": [{"family": "山田"}],
                    "birthDate": "1958-03-12"}}]}),
            &glass,
        )
        .expect(403);
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": net.labs[0].clone()}}]});
        er.send_json_with("POST", "", &batch, &glass).expect(200);
        // A facility that may not break the glass is refused, and the attempt is on record
        // under its client, with the reason it gave.
        net.as_c()
            .get_with(&format!("{}/_history", net.labs[0]), &glass)
            .expect(403);
        let auditor = s.token_for("auditor-bg-all", ORG_A, "auditor", &[]);
        let refused = s.with_token(&auditor).read_json(&format!(
            "AuditEvent?agent={ORG_C}&outcome=4&subtype=history&_count=50"
        ));
        assert!(
            entries(&refused).iter().any(|e| {
                let text = e["resource"].to_string();
                text.contains("purpose of use 'ETREAT' is not allowed") && text.contains("bleeding")
            }),
            "{refused}"
        );
        let decisions = s.with_token(&auditor).read_json(&format!(
            "AuditEvent?subtype=AuthZ-Consent&agent={ORG_C}&_count=200"
        ));
        let notes: Vec<String> = entries(&decisions)
            .into_iter()
            .filter_map(|e| e["resource"]["outcomeDesc"].as_str().map(str::to_string))
            .filter(|d| d.starts_with("break-glass (") && d.ends_with(reason))
            .collect();
        for what in [
            format!("break-glass (history {}/_history)", net.labs[0]),
            format!("break-glass (search Patient/{PATIENT}/$everything"),
            "break-glass (batch)".to_string(),
        ] {
            assert!(
                notes.iter().any(|n| n.starts_with(&what)),
                "{what} not in {notes:?}"
            );
        }
    });
}

/// Break-glass opens the record of the one patient a request is about, never the network:
/// a search naming no patient (or several), a type's history, `$match` and a Bundle reading
/// several patients are refused (403, audited), and a search naming one patient shows that
/// patient's data and nobody else's (black-box review: `Condition?_summary=count` under
/// break-glass counted every patient's Conditions).
#[test]
fn break_glass_opens_one_patient_not_the_network() {
    for_each_backend(|s| {
        let net = network(s);
        let er = s.token_for("er-c-one", ORG_C, "facility", &["--break-glass"]);
        let er = s.with_token(&er);
        let glass = [
            ("X-Purpose-Of-Use", "ETREAT"),
            ("X-Break-Glass-Reason", "unconscious patient in the ER"),
        ];
        // A's lab about the other patient, whom nobody broke the glass for.
        let mut other = lab("3D046000001906299", 9.9, "2025-02-11", None);
        other["subject"] = json!({"reference": format!("Patient/{OTHER_PATIENT}")});
        let other = id_of(&net.as_a().create(&other));
        let count = |path: &str| er.get(path).expect(200).json()["total"].clone();
        assert_eq!(count("Observation?_summary=count"), json!(0));
        for path in [
            "Observation?_summary=count".to_string(),
            "Observation".to_string(),
            "Patient".to_string(),
            "?_type=Observation,Patient".to_string(),
            format!("Observation?patient={PATIENT},{OTHER_PATIENT}"),
            format!("Observation?patient={PATIENT}&subject=Patient/{OTHER_PATIENT}"),
            "Observation/_history".to_string(),
            "_history".to_string(),
        ] {
            let r = er.get_with(&path, &glass).expect(403);
            assert!(
                r.outcome().to_string().contains("one patient"),
                "{path}: {}",
                r.body
            );
            assert_no_secret(&r, &path);
            assert!(r.header("x-break-glass").is_none(), "{path}");
        }
        // One patient named: that patient's data, and nobody else's.
        for path in [
            format!("Observation?patient={PATIENT}"),
            format!("Observation?subject=Patient/{PATIENT}"),
            format!("Patient/{PATIENT}/Observation"),
            format!("Patient/{PATIENT}/$everything"),
        ] {
            let found = refs(&er.get_with(&path, &glass).expect(200).json());
            for lab in &net.labs {
                assert!(found.contains(lab), "{path}: {found:?}");
            }
            assert!(!found.contains(&other), "{path}: {found:?}");
        }
        // A read is about its record's patient.
        er.get_with(&other, &glass).expect(200);
        // A Bundle whose reads are about two patients is refused as a whole; about one, it
        // runs.
        let batch = |urls: &[&str]| {
            let entries: Vec<Value> = urls
                .iter()
                .map(|url| json!({"request": {"method": "GET", "url": url}}))
                .collect();
            json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
        };
        let r = er
            .send_json_with("POST", "", &batch(&[&net.labs[0], &other]), &glass)
            .expect(403);
        assert_no_secret(&r, "two-patient batch");
        let one = er
            .send_json_with("POST", "", &batch(&[&net.labs[0], &net.labs[1]]), &glass)
            .expect(200);
        assert!(one.body.contains(SECRET));
        // A batch's searches count too: each names its patient, and together they name two.
        let own = format!("Observation?patient={PATIENT}");
        let others = format!("Observation?patient={OTHER_PATIENT}");
        let everything = format!("Patient/{OTHER_PATIENT}/$everything");
        for urls in [
            vec![own.as_str(), others.as_str()],
            vec![own.as_str(), other.as_str()],
            vec![net.labs[0].as_str(), everything.as_str()],
        ] {
            let r = er
                .send_json_with("POST", "", &batch(&urls), &glass)
                .expect(403);
            assert_no_secret(&r, &format!("two-patient batch {urls:?}"));
        }
        let searched = er
            .send_json_with("POST", "", &batch(&[&own, &net.labs[0]]), &glass)
            .expect(200);
        assert!(searched.body.contains(SECRET));
        // Every refusal is on record under the client, with the reason it gave.
        let auditor = s.token_for("auditor-bg-one", ORG_A, "auditor", &[]);
        let refused = s
            .with_token(&auditor)
            .read_json("AuditEvent?agent=er-c-one&outcome=4&_count=100");
        let refusals = entries(&refused)
            .iter()
            .filter(|e| {
                let text = e["resource"].to_string();
                text.contains("one patient") && text.contains("break-glass:unconscious")
            })
            .count();
        assert!(refusals >= 9, "{refused}");
    });
}

/// A response served under break-glass says so: `X-Break-Glass: granted` on every such
/// response, and in a searchset a warning OperationOutcome entry (search.mode `outcome`); a
/// read's body stays the resource. Responses without break-glass carry neither.
#[test]
fn responses_under_break_glass_are_marked() {
    for_each_backend(|s| {
        let net = network(s);
        let er = s.token_for("er-c-mark", ORG_C, "facility", &["--break-glass"]);
        let er = s.with_token(&er);
        let glass = [
            ("X-Purpose-Of-Use", "ETREAT"),
            ("X-Break-Glass-Reason", "unconscious patient in the ER"),
        ];
        let read = er.get_with(&net.labs[0], &glass).expect(200);
        assert_eq!(read.header("x-break-glass"), Some("granted"));
        assert_eq!(read.json()["resourceType"], "Observation");
        let vread = er
            .get_with(&format!("{}/_history/2", net.labs[0]), &glass)
            .expect(200);
        assert_eq!(vread.header("x-break-glass"), Some("granted"));
        let history = er
            .get_with(&format!("{}/_history", net.labs[0]), &glass)
            .expect(200);
        assert_eq!(history.header("x-break-glass"), Some("granted"));
        let warned = |bundle: &Value| {
            entries(bundle).iter().any(|e| {
                e["search"]["mode"] == "outcome"
                    && e["resource"]["resourceType"] == "OperationOutcome"
                    && e["resource"]["issue"][0]["severity"] == "warning"
                    && e["resource"].to_string().contains("break-glass")
            })
        };
        for path in [
            format!("Observation?patient={PATIENT}"),
            format!("Observation?patient={PATIENT}&_summary=count"),
            format!("Patient/{PATIENT}/$everything"),
        ] {
            let r = er.get_with(&path, &glass).expect(200);
            assert_eq!(r.header("x-break-glass"), Some("granted"), "{path}");
            assert!(warned(&r.json()), "{path}: {}", r.body);
        }
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": net.labs[0].clone()}},
            {"request": {"method": "GET", "url": format!("Observation?patient={PATIENT}")}}]});
        let r = er.send_json_with("POST", "", &batch, &glass).expect(200);
        assert_eq!(r.header("x-break-glass"), Some("granted"));
        assert!(warned(&entries(&r.json())[1]["resource"]), "{}", r.body);
        // Without break-glass: no mark.
        let plain = net.as_b().get(&net.labs[0]).expect(200);
        assert!(plain.header("x-break-glass").is_none());
        let plain = net
            .as_b()
            .get(&format!("Observation?patient={PATIENT}"))
            .expect(200);
        assert!(plain.header("x-break-glass").is_none());
        assert!(!warned(&plain.json()), "{}", plain.body);
    });
}

/// Where the network lets refusals hold under break-glass, a refusal nested in a treatment
/// permit ("all but psychiatric data") holds for emergency treatment too: `TREAT` covers
/// `ETREAT`.
#[test]
fn a_refusal_for_treatment_holds_under_break_glass_where_the_network_says_so() {
    for_each_backend_with(
        &[("RENKEI_PATIENT_DENY_HOLDS_ON_BREAK_GLASS", "true")],
        |s| {
            let net = network(s);
            let act_code = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
            let mut all_but_psy = consent_body(&[ORG_B], "active");
            all_but_psy["provision"]["provision"] =
                json!([{"type": "deny", "securityLabel": [{"system": act_code, "code": "PSY"}]}]);
            net.as_a()
                .put(&format!("Consent/{CONSENT}"), &all_but_psy)
                .expect(200);
            let mut psy = lab("5E091000002399903", 2.0, "2025-11-04", None);
            psy["meta"] = json!({"security": [{"system": act_code, "code": "PSY"}]});
            let psy = id_of(&net.as_a().create(&psy));
            let er = s.token_for("er-b-holds", ORG_B, "facility", &["--break-glass"]);
            let er = s.with_token(&er);
            let glass = [
                ("X-Purpose-Of-Use", "ETREAT"),
                ("X-Break-Glass-Reason", "unconscious patient in the ER"),
            ];
            let refused = er.get_with(&psy, &glass);
            assert!([403, 404].contains(&refused.status), "{}", refused.body);
            assert_no_secret(&refused, "PSY under break-glass");
            let found = refs(
                &er.get_with(&format!("Observation?patient={PATIENT}"), &glass)
                    .expect(200)
                    .json(),
            );
            assert!(!found.contains(&psy), "{found:?}");
            assert_eq!(sorted(found), sorted(net.labs.clone()));
            er.get_with(&net.labs[0], &glass).expect(200);
        },
    );
}

/// A security label is one code however its system is spelt: a refusal of psychiatric data
/// written with v3-ActCode's OID hides data labelled with its URL, and the other way round.
#[test]
fn a_label_refusal_holds_whichever_spelling_of_its_system() {
    for_each_backend(|s| {
        let net = network(s);
        let url = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
        let oid = "urn:oid:2.16.840.1.113883.5.4";
        for (consent_system, data_system, value) in [(oid, url, 2.0), (url, oid, 3.0)] {
            let mut all_but_psy = consent_body(&[ORG_B], "active");
            all_but_psy["provision"]["provision"] = json!([{"type": "deny",
                "securityLabel": [{"system": consent_system, "code": "PSY"}]}]);
            net.as_a()
                .put(&format!("Consent/{CONSENT}"), &all_but_psy)
                .expect(200);
            let mut psy = lab("5E091000002399904", value, "2025-11-04", None);
            psy["meta"] = json!({"security": [{"system": data_system, "code": "PSY"}]});
            let psy = id_of(&net.as_a().create(&psy));
            let seen = search_refs(&net.as_b(), &format!("Observation?patient={PATIENT}"));
            assert!(
                !seen.contains(&psy),
                "{consent_system} deny, {data_system} label: {seen:?}"
            );
            assert_eq!(seen, sorted(net.labs.clone()));
            let r = net.as_b().get(&psy);
            assert!([403, 404].contains(&r.status), "{}", r.body);
            // The label can be searched by either spelling too.
            let by_oid = search_refs(&net.as_a(), &format!("Observation?_security={oid}|PSY"));
            assert!(by_oid.contains(&psy), "{by_oid:?}");
        }
    });
}

#[test]
fn undelivered_tag_is_hidden_from_other_facilities_even_with_consent() {
    for_each_backend(|s| {
        let net = network(s);
        let mut tagged = lab("5E091000002399901", 41.0, "2025-11-04", None);
        tagged["meta"] = json!({"tag": [{"system": PRIVACY_SYSTEM, "code": "UNDELIVERED"}]});
        let tagged = id_of(&net.as_a().create(&tagged));
        let mut uninformed = lab("5E091000002399902", 1.0, "2025-11-04", None);
        uninformed["meta"] = json!({"tag": [{"system": PRIVACY_SYSTEM, "code": "UNINFORMED"}]});
        let uninformed = id_of(&net.as_a().create(&uninformed));

        // B (consented) sees the untagged labs and UNINFORMED, but not UNDELIVERED.
        let seen = search_refs(&net.as_b(), &format!("Observation?patient={PATIENT}"));
        let mut expected = net.labs.clone();
        expected.push(uninformed.clone());
        assert_eq!(seen, sorted(expected.clone()));
        let withheld_read = format!("rq-withheld-{}", uuid::Uuid::new_v4().simple());
        let r = net
            .as_b()
            .get_with(&tagged, &[("X-Request-Id", withheld_read.as_str())]);
        assert!([403, 404].contains(&r.status), "{} {}", r.status, r.body);
        assert_no_secret(&r, "UNDELIVERED read");
        // Neither the answer nor the audit blames the patient's consent, which permits B.
        assert!(
            !r.body.contains("UNDELIVERED") && !r.body.contains("privacy tag"),
            "{}",
            r.body
        );
        // The same read as a batch entry.
        let withheld_batch = format!("rq-withheld-batch-{}", uuid::Uuid::new_v4().simple());
        let batch = net
            .as_b()
            .send_json_with(
                "POST",
                "",
                &json!({"resourceType": "Bundle", "type": "batch",
                    "entry": [{"request": {"method": "GET", "url": tagged}}]}),
                &[("X-Request-Id", withheld_batch.as_str())],
            )
            .expect(200);
        let entry_status = batch.json()["entry"][0]["response"]["status"].clone();
        assert!(
            ["403", "404"].iter().any(|code| entry_status
                .as_str()
                .is_some_and(|status| status.starts_with(code))),
            "{}",
            batch.body
        );
        let (about_tagged, decisions) = refusal_descriptions(s, "auditor-u", &tagged);
        assert!(!about_tagged.is_empty(), "{decisions}");
        for description in about_tagged {
            assert_eq!(description, "deny by privacy-tag:UNDELIVERED");
        }
        // The patient's view of the same trail does not learn that withheld data exists.
        let own = s.token_for(
            "p-app-audit",
            ORG_A,
            "patient",
            &["--patient", &patient_ref()],
        );
        let viewed = s
            .with_token(&own)
            .get(&format!("AuditEvent?patient={}&_count=200", patient_ref()))
            .expect(200);
        assert!(viewed.body.contains("AuthZ-Consent"), "{}", viewed.body);
        assert!(!viewed.body.contains("privacy-tag"), "{}", viewed.body);
        // Nor a bare refusal of a facility the patient's consent permits (a review found the
        // decision event left, saying "deny" and naming no consent).
        assert!(!viewed.body.contains(&withheld_read), "{}", viewed.body);
        // Nor the batch entry's (a review found it naming the patient, outcome 4).
        assert!(!viewed.body.contains(&withheld_batch), "{}", viewed.body);
        assert!(!viewed.body.contains("UNDELIVERED"), "{}", viewed.body);
        assert!(!viewed.body.contains(&tagged), "{}", viewed.body);
        let everything = refs(
            &net.as_b()
                .read_json(&format!("Patient/{PATIENT}/$everything?_count=100")),
        );
        assert!(!everything.contains(&tagged));
        assert_eq!(
            net.as_b()
                .read_json(&format!("Observation?patient={PATIENT}&_summary=count"))["total"],
            3
        );
        // Not even with break-glass.
        let er = s.token_for("er-b", ORG_B, "facility", &["--break-glass"]);
        let r = s.with_token(&er).get_with(
            &tagged,
            &[
                ("X-Purpose-Of-Use", "ETREAT"),
                ("X-Break-Glass-Reason", "emergency"),
            ],
        );
        assert!([403, 404].contains(&r.status), "{} {}", r.status, r.body);
        // The patient sees neither tagged resource.
        let patient = s.token_for("p-app", ORG_A, "patient", &["--patient", &patient_ref()]);
        let mine = search_refs(
            &s.with_token(&patient),
            &format!("Observation?patient={PATIENT}"),
        );
        assert_eq!(mine, sorted(net.labs.clone()));
        // Records that stand for a tagged one (a Binary's securityContext, a Provenance's
        // target) are withheld like it.
        let binary = id_of(&net.as_a().create(&json!({"resourceType": "Binary",
            "contentType": "text/plain", "securityContext": {"reference": tagged},
            "data": "U0VDUkVU"})));
        let provenance = id_of(&net.as_a().create(&json!({"resourceType": "Provenance",
            "target": [{"reference": uninformed}], "recorded": "2025-11-04T10:00:00Z",
            "agent": [{"who": {"reference": ORG_A}}]})));
        let r = net.as_b().get(&binary);
        assert!([403, 404].contains(&r.status), "{} {}", r.status, r.body);
        assert_no_secret(&r, "Binary of an UNDELIVERED record");
        s.with_token(&patient).get(&binary).expect(404);
        s.with_token(&patient).get(&provenance).expect(404);
        net.as_b().get(&provenance).expect(200);
        net.as_a().get(&binary).expect(200);
        // Along a chain: a Provenance of that Binary is withheld as well.
        let of_binary = id_of(&net.as_a().create(&json!({"resourceType": "Provenance",
            "target": [{"reference": binary}], "recorded": "2025-11-04T10:00:00Z",
            "agent": [{"who": {"reference": ORG_A}}]})));
        s.with_token(&patient).get(&of_binary).expect(404);
        let r = net.as_b().get(&of_binary);
        assert!([403, 404].contains(&r.status), "{} {}", r.status, r.body);
        // The custodian sees both.
        let own = search_refs(&net.as_a(), &format!("Observation?patient={PATIENT}"));
        assert!(own.contains(&tagged) && own.contains(&uninformed));
        // B searched by the hidden ids too; the patient's "who viewed my record" shows B's
        // accesses but names neither tagged resource, by entity, query or description.
        net.as_b()
            .get(&format!(
                "Observation?_id={},{}",
                tail(&tagged),
                tail(&uninformed)
            ))
            .expect(200);
        let me = s.with_token(&patient);
        let (entries, _) = me.all_pages(&format!("AuditEvent?patient={PATIENT}&_count=100"));
        let trail: Vec<Value> = entries.iter().map(|e| e["resource"].clone()).collect();
        assert!(!trail.is_empty());
        let text = serde_json::to_string(&trail).unwrap();
        let decoded: String = trail
            .iter()
            .flat_map(|event| event["entity"].as_array().cloned().unwrap_or_default())
            .filter_map(|entity| entity["query"].as_str().map(str::to_string))
            .map(|q| String::from_utf8(crate::audit::base64_decode(&q)).unwrap())
            .collect();
        for hidden in [&tagged, &uninformed] {
            assert!(!text.contains(tail(hidden)), "{hidden} named: {text}");
            assert!(
                !decoded.contains(tail(hidden)),
                "{hidden} in a query: {decoded}"
            );
            let (found, _) = me.all_pages(&format!("AuditEvent?entity={hidden}"));
            assert!(found.is_empty(), "{hidden}: {found:?}");
        }
        // What the patient may see stays named, and B's accesses are listed.
        let (found, _) = me.all_pages(&format!("AuditEvent?entity={}", net.labs[0]));
        assert!(!found.is_empty());
        assert!(text.contains(ORG_B));
        // Deleted, it stays as hidden (a review found a 410 telling B it had existed).
        let deleted = net.as_a().delete(&tagged);
        assert!([200, 204].contains(&deleted.status), "{}", deleted.body);
        let r = net.as_b().get(&tagged);
        assert!([403, 404].contains(&r.status), "{} {}", r.status, r.body);
        net.as_a().get(&tagged).expect(410);
    });
}

#[test]
fn patient_role_sees_only_the_own_compartment() {
    for_each_backend(|s| {
        let net = network(s);
        // Q's data at A.
        let mut q_lab = lab("3D046000001906202", 5.5, "2025-01-01", None);
        q_lab["subject"] = json!({"reference": format!("Patient/{OTHER_PATIENT}")});
        let q_lab = id_of(&net.as_a().create(&q_lab));
        let token = s.token_for("p-app", ORG_B, "patient", &["--patient", &patient_ref()]);
        let me = s.with_token(&token);
        // Own record from both facilities.
        assert_eq!(
            search_refs(&me, "Observation"),
            sorted(net.labs.clone()),
            "a patient sees their own labs, nothing else"
        );
        assert_eq!(search_refs(&me, "Encounter"), vec![net.b_encounter.clone()]);
        me.read_json(&patient_ref());
        me.read_json(&net.imaging);
        let everything = refs(&me.read_json(&format!("Patient/{PATIENT}/$everything?_count=100")));
        assert!(everything.contains(&net.medreq) && everything.contains(&net.b_encounter));
        assert!(!everything.contains(&q_lab));
        // Nothing of another patient.
        me.get(&q_lab).expect(404);
        me.get(&format!("Patient/{OTHER_PATIENT}")).expect(404);
        assert!(search_refs(&me, &format!("Observation?patient={OTHER_PATIENT}")).is_empty());
        assert!(search_refs(&me, "Patient")
            .iter()
            .all(|r| r == &patient_ref()));
        let r = me.get(&format!("Patient/{OTHER_PATIENT}/$everything"));
        assert!([403, 404].contains(&r.status), "{} {}", r.status, r.body);
        // A patient writes no clinical data.
        let r = me.post("Observation", &lab("x", 1.0, "2025-01-01", None));
        assert_eq!(r.status, 403, "{}", r.body);
    });
}

#[test]
fn auditor_and_admin_see_no_clinical_data() {
    for_each_backend(|s| {
        let net = network(s);
        let trail = s.token_for("auditor-of-roles", ORG_A, "auditor", &[]);
        for (id, role, extra) in [
            ("auditor-default", "auditor", vec![]),
            // Even with clinical scopes, the role sees nothing, and is told so (403, API.md),
            // not answered with an empty Bundle or a 404 as if there were no data.
            ("auditor-wide", "auditor", vec!["--scope", "system/*.rs"]),
            ("admin-wide", "admin", vec!["--scope", "system/*.rs"]),
            ("admin-all", "admin", vec!["--scope", "system/*.cruds"]),
        ] {
            let token = s.token_for(id, ORG_A, role, &extra);
            let who = s.with_token(&token);
            let batch = json!({"resourceType": "Bundle", "type": "batch",
                "entry": [{"request": {"method": "GET", "url": net.labs[0].clone()}}]});
            let mut answers = vec![who.send_json("POST", "", &batch)];
            for path in [
                net.labs[0].clone(),
                patient_ref(),
                format!("{}/_history/1", net.labs[0]),
                format!("{}/_history", net.labs[0]),
                format!("Observation?patient={PATIENT}"),
                "Observation".to_string(),
                "Observation?_summary=count".to_string(),
                "Patient".to_string(),
                "Organization".to_string(),
                "_history".to_string(),
                format!("Patient/{PATIENT}/$everything"),
                format!("Patient/{PATIENT}/Observation"),
            ] {
                answers.push(who.get(&path));
            }
            for r in answers {
                assert_eq!(r.status, 403, "{id}: {}", r.body);
                assert!(
                    r.outcome().to_string().contains("not clinical data"),
                    "{id}: {}",
                    r.body
                );
                assert_no_secret(&r, id);
            }
            // They may read the audit trail, which holds their refused attempts.
            who.get("AuditEvent?_count=1").expect(200);
            let refused = s
                .with_token(&trail)
                .read_json(&format!("AuditEvent?agent={id}&outcome=4&_count=100"));
            assert!(
                entries(&refused).len() >= 12,
                "{id}: every refusal is audited: {refused}"
            );
        }
    });
}

/// A facility cannot grant itself access, cut off another facility's, or take over records it
/// does not hold: a Consent needs a patient the writer holds records of, and data no facility
/// holds (directory and shared identity records stored by the operator's import) is not
/// changeable by facilities. None of the refusals tells a facility whether hidden data exists.
#[test]
fn facilities_cannot_take_over_consent_or_unheld_records() {
    for_each_backend(|s| {
        let net = network(s);
        let as_c = net.as_c();
        let hidden_lab = net.labs[0].clone();
        as_c.get(&hidden_lab).expect(404);

        // A Consent from C for A's patient, permitting C: refused, and C still sees nothing.
        let mut grant = consent_body(&[ORG_C], "active");
        grant.as_object_mut().unwrap().remove("id");
        let refused = as_c.post("Consent", &grant).expect(403);
        assert_no_secret(&refused, "consent for a patient C does not hold");
        as_c.get(&hidden_lab).expect(404);
        // A deny from C cannot cut off the consented B either.
        let mut deny = grant.clone();
        deny["provision"]["type"] = json!("deny");
        as_c.post("Consent", &deny).expect(403);
        net.as_b().get(&hidden_lab).expect(200);
        // The same refusal for a patient that does not exist: nothing learnt from the status.
        let mut nobody = grant.clone();
        nobody["patient"] = json!({"reference": "Patient/no-such-patient"});
        let missing = as_c.post("Consent", &nobody).expect(403);
        assert_eq!(missing.outcome(), refused.outcome());
        // The patient's facility still records consent.
        net.as_a().post("Consent", &grant).expect(201);
        net.as_c().get(&hidden_lab).expect(200);

        // Directory and identity data stored by the operator's import (no custodian).
        let bundle_file = std::env::temp_dir().join(format!(
            "renkei-unheld-{}.json",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(
            &bundle_file,
            serde_json::to_vec(&json!({
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"resource": {"resourceType": "Organization", "id": "org-directory", "name": "Directory Org"},
                     "request": {"method": "PUT", "url": "Organization/org-directory"}},
                    {"resource": {"resourceType": "Patient", "id": "pat-shared", "name": [{"family": "Shared"}]},
                     "request": {"method": "PUT", "url": "Patient/pat-shared"}},
                ],
            }))
            .unwrap(),
        )
        .unwrap();
        s.cli(&["import", bundle_file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&bundle_file);
        // Visible directory data: 403, and the writer does not become its custodian.
        let patch = json!([{"op": "replace", "path": "/name", "value": "Hijacked"}]);
        let r = json_patch(&as_c, "Organization/org-directory", &patch);
        assert_eq!(r.status, 403, "{}", r.body);
        as_c.put(
            "Organization/org-directory",
            &json!({"resourceType": "Organization", "id": "org-directory", "name": "Hijacked"}),
        )
        .expect(403);
        as_c.delete("Organization/org-directory").expect(403);
        assert_eq!(
            as_c.read_json("Organization/org-directory")["name"],
            json!("Directory Org")
        );
        // A shared Patient C may not see: 404 like a missing one, for every kind of write.
        let r = json_patch(&as_c, "Patient/pat-shared", &json!([]));
        assert_eq!(r.status, 404, "{}", r.body);
        // A record referring to something the writer may not see tells the writer nothing:
        // C's Binary on A's hidden lab does not make C a holder of the patient's records (the
        // patient's other data still answers 404, not 403), and only C sees the Binary.
        let hidden_other = {
            let mut o = lab("3D046000001906202", 7.0, "2025-03-03", None);
            o["subject"] = json!({"reference": format!("Patient/{OTHER_PATIENT}")});
            id_of(&net.as_a().create(&o))
        };
        let probe = id_of(&as_c.create(&json!({"resourceType": "Binary",
            "contentType": "text/plain", "securityContext": {"reference": hidden_other},
            "data": "eA=="})));
        as_c.get(&probe).expect(200);
        as_c.get(&format!("Patient/{OTHER_PATIENT}")).expect(404);
        net.as_a().get(&probe).expect(404);
        // Reindexing, which sees every record, keeps it so.
        s.cli(&["reindex"]);
        as_c.get(&format!("Patient/{OTHER_PATIENT}")).expect(404);
        net.as_a().get(&probe).expect(404);
        // A DELETE answers as for a missing resource (204), and deletes nothing.
        as_c.delete("Patient/pat-shared").expect(204);
        as_c.delete("Patient/no-such-patient").expect(204);
        let mut private = lab("3D046000001906202", 6.0, "2025-02-02", None);
        private["subject"] = json!({"reference": format!("Patient/{OTHER_PATIENT}")});
        let private = id_of(&net.as_a().create(&private));
        as_c.delete(&private).expect(204);
        net.as_a().get(&private).expect(200);
        let r = json_patch(&as_c, "Patient/no-such-patient", &json!([]));
        assert_eq!(r.status, 404, "{}", r.body);
        // Instance history of something hidden answers like a read: 404, as for a missing id.
        as_c.get("Patient/pat-shared/_history").expect(404);
        as_c.get("Patient/no-such-patient/_history").expect(404);
        net.as_b()
            .get(&format!("{hidden_lab}/_history"))
            .expect(200);
    });
}

fn json_patch(who: &Caller<'_>, path: &str, ops: &Value) -> Resp {
    who.request(
        "PATCH",
        path,
        &[("Content-Type", "application/json-patch+json")],
        Some(serde_json::to_vec(ops).expect("serialize")),
    )
}

const WRONG_PATIENT_NOTE: &str = "WRONG-PATIENT-Q-ONLY";

/// Consent is decided on a record's current version; earlier versions, consent recording and
/// merges cannot be used to reach another patient's data, and records that name a patient
/// outside the compartment types (Task, Binary, Provenance) are that patient's data.
#[test]
fn versions_consent_records_merges_and_records_outside_the_compartment() {
    for_each_backend(|s| {
        let net = network(s);
        let (as_a, as_b, as_c) = (net.as_a(), net.as_b(), net.as_c());
        let q = format!("Patient/{OTHER_PATIENT}");

        // A wrong-patient correction: version 1 was about Q (hidden from B), version 2 is
        // about P (consented to B). B sees the current version only.
        let mut wrong = lab("3D046000001906202", 9.9, "2025-03-01", None);
        wrong["subject"] = json!({"reference": q});
        wrong["note"] = json!([{"text": WRONG_PATIENT_NOTE}]);
        let first = as_a.create(&wrong);
        let id = id_of(&first);
        let mut fixed = first.clone();
        fixed["subject"] = json!({"reference": patient_ref()});
        fixed["note"] = json!([{"text": "corrected"}]);
        as_a.put(&id, &fixed).expect(200);
        as_b.get(&id).expect(200);
        let old = as_b.get(&format!("{id}/_history/1")).expect(403);
        assert!(!old.body.contains(WRONG_PATIENT_NOTE), "{}", old.body);
        as_b.get(&format!("{id}/_history/2")).expect(200);
        // A version no resource can have is missing, not withheld.
        for version in ["abc", "0", "-1", "3"] {
            as_b.get(&format!("{id}/_history/{version}")).expect(404);
        }
        for path in [
            format!("{id}/_history"),
            "Observation/_history?_count=1000".to_string(),
            "_history?_count=1000".to_string(),
        ] {
            let r = as_b.get(&path).expect(200);
            assert!(!r.body.contains(WRONG_PATIENT_NOTE), "{path}: {}", r.body);
            let versions: Vec<Value> = entries(&r.json())
                .iter()
                .filter(|e| e["resource"]["id"] == first["id"])
                .map(|e| e["resource"]["meta"]["versionId"].clone())
                .collect();
            assert_eq!(versions, vec![json!("2")], "{path}");
        }
        // The holder sees every version.
        as_a.get(&format!("{id}/_history/1")).expect(200);
        assert_eq!(entries(&as_a.read_json(&format!("{id}/_history"))).len(), 2);

        // Consent is recorded by a facility that registered the patient: a clinical record
        // written about P moments earlier does not make C the patient's facility.
        let mut dummy = lab("3D010000001926101", 1.0, "2025-03-02", None);
        dummy["subject"] = json!({"reference": patient_ref()});
        as_c.create(&dummy);
        let mut grant = consent_body(&[ORG_C], "active");
        grant.as_object_mut().unwrap().remove("id");
        as_c.post("Consent", &grant).expect(403);
        // Nor does it make A's record of P C's business: still 404.
        as_c.get(&net.labs[0]).expect(404);

        // A merge (replaced-by) into another facility's record is refused; merging C's own
        // duplicates works, and C records consent on its own patient.
        let merge_into = |survivor: &str| {
            json!({"resourceType": "Patient", "active": false,
                   "identifier": [{"system": "urn:clinic-c:patient", "value": "C-9"}],
                   "link": [{"type": "replaced-by", "other": {"reference": survivor}}]})
        };
        let r = as_c
            .post("Patient", &merge_into(&patient_ref()))
            .expect(422);
        assert!(r.body.contains("replaced-by"), "{}", r.body);
        as_c.post("Patient", &merge_into("Patient/no-such-patient"))
            .expect(422);
        let own = as_c.create(&json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:clinic-c:patient", "value": "C-1"}]}));
        as_c.post("Patient", &merge_into(&id_of(&own))).expect(201);
        let mut own_consent = grant.clone();
        own_consent["patient"] = json!({"reference": id_of(&own)});
        as_c.post("Consent", &own_consent).expect(201);
        as_c.get(&net.labs[0]).expect(404);

        // Records about Q (no consent: hidden from B) in types outside the compartment.
        let q_lab = {
            let mut q_lab = lab("3D010000001926101", 2.0, "2025-03-03", None);
            q_lab["subject"] = json!({"reference": q});
            id_of(&as_a.create(&q_lab))
        };
        let task = as_a.create(&json!({"resourceType": "Task", "status": "requested",
            "intent": "order", "for": {"reference": q},
            "description": format!("{SECRET} follow-up")}));
        let binary = as_a.create(
            &json!({"resourceType": "Binary", "contentType": "text/plain",
            "securityContext": {"reference": q}, "data": "U0VDUkVU"}),
        );
        let provenance = as_a.create(&json!({"resourceType": "Provenance",
            "target": [{"reference": q_lab}], "recorded": "2025-03-03T10:00:00+09:00",
            "agent": [{"who": {"reference": ORG_A}}]}));
        for record in [&task, &binary, &provenance] {
            let path = id_of(record);
            as_a.get(&path).expect(200);
            let r = as_b.get(&path).expect(404);
            assert_no_secret(&r, &path);
        }
        assert!(search_refs(&as_b, &format!("Provenance?target={q_lab}")).is_empty());
        assert!(search_refs(&as_b, &format!("Task?patient={OTHER_PATIENT}")).is_empty());
        assert_eq!(
            search_refs(&as_a, &format!("Task?patient={OTHER_PATIENT}")),
            vec![id_of(&task)]
        );
    });
}

/// A read inside a Bundle is audited like a plain read: the entry's AuditEvent names the
/// patient and the holder of the data, an AuthZ-Consent event names the Consent that let
/// another facility see it, and the patient finds the access in "who viewed my record".
#[test]
fn bundle_reads_are_audited_like_reads() {
    for_each_backend(|s| {
        let net = network(s);
        for kind in ["batch", "transaction"] {
            let bundle = json!({"resourceType": "Bundle", "type": kind,
                "entry": [{"request": {"method": "GET", "url": net.labs[1]}}]});
            let r = net.as_b().post("", &bundle).expect(200).json();
            assert_eq!(entries(&r)[0]["resource"]["id"], json!(tail(&net.labs[1])));
        }
        let auditor = s.with_token(&s.token_for("bundle-auditor", ORG_A, "auditor", &[]));
        let events = |query: &str| {
            let (list, _) = auditor.all_pages(&format!(
                "AuditEvent?patient=Patient/{PATIENT}&agent=clinic-b-ehr&entity={}&{query}&_count=100",
                net.labs[1]
            ));
            list
        };
        assert_eq!(events("subtype=read").len(), 2, "one per Bundle");
        let decisions = events("subtype=AuthZ-Consent");
        assert_eq!(decisions.len(), 2, "one per Bundle");
        assert!(
            decisions.iter().all(|e| e.to_string().contains(CONSENT)),
            "the deciding Consent is named: {decisions:?}"
        );
        let me = s.with_token(&s.token_for(
            "bundle-p-app",
            ORG_A,
            "patient",
            &["--patient", &format!("Patient/{PATIENT}")],
        ));
        let (mine, _) = me.all_pages(&format!(
            "AuditEvent?patient=Patient/{PATIENT}&entity={}&subtype=read&_count=100",
            net.labs[1]
        ));
        assert!(mine.len() >= 2, "{mine:?}");

        // A write inside a Bundle is in its holder's view of the audit, with its patient.
        let mut task = json!({"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": format!("Patient/{PATIENT}")}});
        task["id"] = json!("bundle-task");
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": task, "request": {"method": "PUT", "url": "Task/bundle-task"}}]});
        net.as_a().post("", &bundle).expect(200);
        let (writes, _) = net.as_a().all_pages(&format!(
            "AuditEvent?entity=Task/bundle-task&patient=Patient/{PATIENT}&_count=100"
        ));
        assert_eq!(writes.len(), 1, "{writes:?}");

        // A refusal by a consent that does not name the facility is that consent's decision,
        // not the implicit policy (which decides only for patients without any consent).
        net.as_c().get(&net.labs[1]).expect(404);
        let (refusals, _) = auditor.all_pages(&format!(
            "AuditEvent?agent=clinic-c-ehr&subtype=AuthZ-Consent&entity={}&_count=100",
            net.labs[1]
        ));
        assert_eq!(refusals.len(), 1, "{refusals:?}");
        let text = refusals[0].to_string();
        assert!(
            text.contains(CONSENT) && text.contains("deny") && !text.contains("implicit"),
            "{text}"
        );
    });
}

/// Patient data stays patient data however it names the patient (absolute URL, identifier
/// only, through another record), a holder keeps its consent up to date, the patient's view
/// of the audit names no other patient, and a token's scopes bound `_include` and the trail.
#[test]
fn patient_data_in_any_form_and_scoped_tokens() {
    for_each_backend(|s| {
        let net = network(s);
        let (as_a, as_b) = (net.as_a(), net.as_b());
        let q_lab = {
            let mut q_lab = lab("3D010000001926101", 3.0, "2025-03-04", None);
            q_lab["subject"] = json!({"reference": format!("Patient/{OTHER_PATIENT}")});
            id_of(&as_a.create(&q_lab))
        };
        let absolute = format!("{}/Patient/{OTHER_PATIENT}", s.base);
        let records = [
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "abs"},
                   "subject": {"reference": absolute}}),
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "logical"},
                   "subject": {"identifier": {"system": "urn:hosp-a:patient", "value": "Q-0002"}}}),
            json!({"resourceType": "Binary", "contentType": "text/plain",
                   "securityContext": {"reference": q_lab}, "data": "U0VDUkVU"}),
            json!({"resourceType": "Task", "status": "requested", "intent": "order",
                   "focus": {"reference": q_lab}}),
        ];
        for record in records {
            let path = id_of(&as_a.create(&record));
            as_a.get(&path).expect(200);
            as_b.get(&path).expect(404);
        }
        // B may not merge into A's record, however the survivor is spelled.
        let r = as_b
            .post(
                "Patient",
                &json!({"resourceType": "Patient",
                        "link": [{"type": "replaced-by", "other": {"reference": format!("{}/Patient/{PATIENT}", s.base)}}]}),
            )
            .expect(422);
        assert!(r.body.contains("replaced-by"), "{}", r.body);

        // A consent recorded (imported) for a Patient the operator holds: its holder
        // withdraws it.
        let file = std::env::temp_dir().join(format!(
            "renkei-held-consent-{}.json",
            uuid::Uuid::new_v4().simple()
        ));
        let mut consent = consent_body(&[ORG_B], "active");
        consent["id"] = json!("consent-shared");
        consent["patient"] = json!({"reference": "Patient/pat-operator"});
        consent["meta"] = json!({"source": "http://renkei.example.jp/facility/hosp-a"});
        std::fs::write(
            &file,
            serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Patient", "id": "pat-operator"},
                 "request": {"method": "PUT", "url": "Patient/pat-operator"}},
                {"resource": consent, "request": {"method": "PUT", "url": "Consent/consent-shared"}},
            ]}))
            .unwrap(),
        )
        .unwrap();
        s.cli(&["import", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        let mut withdrawn = as_a.read_json("Consent/consent-shared");
        withdrawn["status"] = json!("inactive");
        as_a.put("Consent/consent-shared", &withdrawn).expect(200);
        // Another facility still cannot take it over, nor move it to another patient.
        as_b.put("Consent/consent-shared", &withdrawn).expect(404);
        let mut moved = withdrawn.clone();
        moved["patient"] = json!({"reference": "Patient/held-by-nobody-here"});
        as_a.put("Consent/consent-shared", &moved).expect(403);

        // A search over two patients: P's own view of the audit does not name Q.
        as_a.read_json(&format!("Condition?patient={PATIENT},{OTHER_PATIENT}"));
        let me = s.with_token(&s.token_for(
            "scoped-p-app",
            ORG_A,
            "patient",
            &["--patient", &format!("Patient/{PATIENT}")],
        ));
        let (mine, _) = me.all_pages("AuditEvent?_count=100");
        assert!(!mine.is_empty());
        let text = serde_json::to_string(&mine).unwrap();
        assert!(!text.contains(OTHER_PATIENT), "{text}");

        // Scopes: Observation only.
        let narrow = s.with_token(&s.token_for(
            "observation-only",
            ORG_A,
            "facility",
            &["--scope", "system/Observation.rs"],
        ));
        let bundle = narrow.read_json(&format!(
            "Observation?_id={}&_include=*",
            tail(&net.labs[0])
        ));
        let types: Vec<String> = entries(&bundle)
            .iter()
            .filter_map(|e| e["resource"]["resourceType"].as_str().map(str::to_string))
            .collect();
        assert_eq!(types, ["Observation"], "{bundle}");
        narrow.get("AuditEvent?_count=1").expect(403);
        narrow.get(&format!("Patient/{PATIENT}")).expect(403);
        // In a batch, an entry outside the scopes is refused on its own.
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("Patient/{PATIENT}")}},
            {"request": {"method": "GET", "url": net.labs[0]}},
        ]});
        let answer = narrow.post("", &batch).expect(200).json();
        let statuses = entry_statuses(&answer);
        assert_eq!(statuses, ["403 Forbidden", "200 OK"], "{answer}");
        assert_eq!(
            entries(&answer)[1]["resource"]["id"],
            json!(tail(&net.labs[0]))
        );
        let mut transaction = batch.clone();
        transaction["type"] = json!("transaction");
        narrow.post("", &transaction).expect(403);
    });
}

/// The holder of a record sees every access to it in its audit view (vreads, history, refused
/// attempts, in Bundles too); a facility holding records of a patient searches its own data in
/// the compartment without a consent; patients named through a canonical type or a contained
/// Patient stay patient data; a patient app may batch its reads; scopes cover chains.
#[test]
fn holders_see_every_access_and_compartments_hold_own_data() {
    for_each_backend(|s| {
        let net = network(s);
        let (as_a, as_b, as_c) = (net.as_a(), net.as_b(), net.as_c());
        let lab_id = tail(&net.labs[0]);

        // Accesses by others: a vread and history by the consented B, refused reads by C
        // (plain and in a batch).
        as_b.get(&format!("{}/_history/2", net.labs[0])).expect(200);
        as_b.get(&format!("{}/_history", net.labs[0])).expect(200);
        as_c.get(&net.labs[0]).expect(404);
        let batch = json!({"resourceType": "Bundle", "type": "batch",
            "entry": [{"request": {"method": "GET", "url": net.labs[0]}}]});
        let answer = as_c.post("", &batch).expect(200).json();
        assert!(entries(&answer)[0]["response"]["status"]
            .as_str()
            .unwrap_or_default()
            .starts_with("404"));
        let seen_by_a = |query: &str| {
            let (list, _) = as_a.all_pages(&format!(
                "AuditEvent?entity={}&{query}&_count=100",
                net.labs[0]
            ));
            list.len()
        };
        as_c.get(&format!("{}/_history", net.labs[0])).expect(404);
        // A facility's view names the facility that asked, not its client system.
        assert!(seen_by_a(&format!("subtype=vread&agent={ORG_B}")) >= 1);
        assert!(seen_by_a(&format!("subtype=history&agent={ORG_B}")) >= 1);
        assert_eq!(seen_by_a("subtype=vread&agent=clinic-b-ehr"), 0);
        assert_eq!(
            seen_by_a(&format!("subtype=AuthZ-Consent&agent={ORG_C}")),
            3,
            "the refused read, batch read and history"
        );
        let auditor = s.with_token(&s.token_for("sweep4-auditor", ORG_A, "auditor", &[]));
        let (refusals, _) = auditor.all_pages(&format!(
            "AuditEvent?patient=Patient/{PATIENT}&agent=clinic-c-ehr&subtype=AuthZ-Consent&_count=100"
        ));
        assert_eq!(
            refusals.len(),
            3,
            "read, batch and history refusals: {refusals:?}"
        );
        assert!(refusals
            .iter()
            .all(|e| e.to_string().contains(CONSENT) && e.to_string().contains("deny")));

        // C holds a record of P but has no consent: its compartment search and $everything
        // show its own data, as `?patient=` does; the Patient record stays hidden.
        let own = as_c.create(&{
            let mut own = lab("3D010000001926101", 4.0, "2025-03-05", None);
            own["subject"] = json!({"reference": format!("Patient/{PATIENT}")});
            own
        });
        as_c.get(&format!("Patient/{PATIENT}")).expect(404);
        for path in [
            format!("Patient/{PATIENT}/Observation"),
            format!("Patient/{PATIENT}/$everything"),
            format!("Observation?patient={PATIENT}"),
        ] {
            let found = search_refs(&as_c, &path);
            assert_eq!(found, vec![id_of(&own)], "{path}");
        }

        // Patients named through a canonical type, or contained, are still patients.
        // (C holds a record about an unmatched patient too: that makes it nobody's "same
        // patient", so A's such records still answer 404, not 403.)
        as_c.create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "C's"}, "subject": {"display": "someone"}}));
        for record in [
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "canonical"},
                   "subject": {"type": "http://hl7.org/fhir/StructureDefinition/Patient",
                               "identifier": {"system": "urn:hosp-a:patient", "value": "P-0001"}}}),
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "contained"},
                   "contained": [{"resourceType": "Patient", "id": "p", "name": [{"family": "Yamada"}]}],
                   "subject": {"reference": "#p"}}),
        ] {
            let path = id_of(&as_a.create(&record));
            as_b.get(&path).expect(404);
            as_c.get(&path).expect(404);
        }

        // A patient app batches its reads.
        let me = s.with_token(&s.token_for(
            "sweep4-p-app",
            ORG_A,
            "patient",
            &["--patient", &format!("Patient/{PATIENT}")],
        ));
        let answer = me.post("", &batch).expect(200).json();
        assert_eq!(entries(&answer)[0]["resource"]["id"], json!(lab_id));
        // A write among its reads fails on its own.
        let mixed = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": net.labs[0]}},
            {"request": {"method": "DELETE", "url": net.labs[0]}}]});
        let answer = me.post("", &mixed).expect(200).json();
        let statuses = entry_statuses(&answer);
        assert_eq!(statuses, ["200 OK", "403 Forbidden"], "{answer}");
        as_a.get(&net.labs[0]).expect(200);

        // Scopes cover the types a chain or `_has` looks into.
        let narrow = s.with_token(&s.token_for(
            "sweep4-observation-only",
            ORG_A,
            "facility",
            &["--scope", "system/Observation.rs"],
        ));
        narrow
            .get("Observation?subject:Patient.birthdate=1958-03-12&_summary=count")
            .expect(403);
        narrow
            .get("Observation?_has:Provenance:target:agent=Organization/x")
            .expect(403);
        narrow.get("Observation?code=3D010000001926101").expect(200);
        // A search of the whole system may return any type: it needs every type's scope.
        narrow.get(&format!("?_id={PATIENT}")).expect(403);
        narrow.get("?_count=5").expect(403);
        // `$everything` without `_type` returns the types the scopes cover; a type named
        // outside them is refused, and so is the Patient the operation is about.
        let two_types = s.with_token(&s.token_for(
            "sweep4-patient-and-observation",
            ORG_A,
            "facility",
            &["--scope", "system/Patient.rs system/Observation.rs"],
        ));
        let everything = |caller: &Caller<'_>| {
            let bundle = caller
                .get(&format!("Patient/{PATIENT}/$everything?_count=100"))
                .expect(200)
                .json();
            let mut types: Vec<String> = entries(&bundle)
                .iter()
                .filter_map(|e| e["resource"]["resourceType"].as_str())
                .map(str::to_string)
                .collect();
            types.sort();
            types.dedup();
            types
        };
        assert_eq!(everything(&two_types), ["Observation", "Patient"]);
        let with_every_scope = everything(&as_a);
        for wider in ["ImagingStudy", "MedicationRequest"] {
            assert!(
                with_every_scope.iter().any(|t| t == wider),
                "{with_every_scope:?}"
            );
        }
        two_types
            .get(&format!("Patient/{PATIENT}/$everything?_type=Condition"))
            .expect(403);
        narrow
            .get(&format!("Patient/{PATIENT}/$everything"))
            .expect(403);
        let batch_everything = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("Patient/{PATIENT}/$everything")}}]});
        let answer = two_types.post("", &batch_everything).expect(200).json();
        assert_eq!(entry_statuses(&answer), ["200 OK"], "{answer}");
        // A batch whose entries are all outside the scopes answers each of them.
        let reads = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("Patient/{PATIENT}")}},
            {"request": {"method": "GET", "url": "Condition/x"}},
            {"request": {"method": "GET", "url": "Observation?code=3D010000001926101"}}]});
        let answer = narrow.post("", &reads).expect(200).json();
        assert_eq!(
            entry_statuses(&answer),
            ["403 Forbidden", "403 Forbidden", "200 OK"],
            "{answer}"
        );

        // Operation paths name what they allow; a Consent without a patient is invalid.
        let r = s.request("PUT", "Patient/$ihe-pix", &[], None).expect(405);
        assert_eq!(r.header("allow"), Some("GET, HEAD, POST, OPTIONS"));
        let head = s.request(
            "HEAD",
            "Patient/$ihe-pix?sourceIdentifier=urn:x|1",
            &[],
            None,
        );
        assert_ne!(head.status, 405);
        let r = s.request("GET", "Patient/$match", &[], None).expect(405);
        assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
        let mut no_patient = consent_body(&[ORG_B], "active");
        no_patient.as_object_mut().unwrap().remove("id");
        no_patient.as_object_mut().unwrap().remove("patient");
        as_a.post("Consent", &no_patient).expect(422);
    });
}

/// The `response.status` of each entry of a batch or transaction response.
fn entry_statuses(response: &Value) -> Vec<String> {
    entries(response)
        .iter()
        .map(|e| {
            e["response"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// A facility registering a patient and recording the patient's consent in one transaction:
/// the outcome does not depend on the entries' order. A Consent listed before its Patient was
/// refused (403: the writer held no record of the patient yet).
#[test]
fn a_consent_may_come_before_its_patient_in_a_transaction() {
    for_each_backend(|s| {
        let patient_url = "urn:uuid:7d3c1f0e-5b1a-4c8e-9d61-0c2f8a4b9e11";
        let mut consent = consent_body(&[ORG_B], "active");
        consent.as_object_mut().expect("object").remove("id");
        consent["patient"] = json!({"reference": patient_url});
        let response = s
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"resource": consent, "request": {"method": "POST", "url": "Consent"}},
                    {"fullUrl": patient_url,
                     "resource": {"resourceType": "Patient", "name": [{"family": "Order"}]},
                     "request": {"method": "POST", "url": "Patient"}},
                ]}),
            )
            .expect(200)
            .json();
        assert_eq!(
            entry_statuses(&response),
            ["201 Created", "201 Created"],
            "{response}"
        );
        let patient = response["entry"][1]["response"]["location"]
            .as_str()
            .expect("location");
        let patient = patient.split("/_history").next().expect("path");
        let consent = response["entry"][0]["response"]["location"]
            .as_str()
            .expect("location");
        let stored = s.read_json(consent.split("/_history").next().expect("path"));
        assert!(
            stored["patient"]["reference"]
                .as_str()
                .is_some_and(|r| patient.ends_with(r)),
            "{stored}"
        );
    });
}

//! The audit trail, end to end: every interaction leaves a BALP-shaped AuditEvent (also denied
//! ones), `X-Request-Id` is echoed and stored, AuditEvent is append-only over the API, patients
//! see who viewed their record, facilities see accesses to what they hold, and the hash chain
//! detects tampering done directly in the database (`renkei audit verify`), on both backends.

use crate::consent::{id_of, lab, network, ORG_A, ORG_B, ORG_C, OTHER_PATIENT, PATIENT, SECRET};
use crate::support::{
    entries, for_each_backend, for_each_backend_raw, link, renkei_command, Backend, Caller, Server,
    JSON_PATCH,
};
use renkei_store::{Bind, DatabaseUrl, Sql, Store, StoreError, StoreOptions};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Stdio;

/// Minimal base64 (standard alphabet) decoding for `entity.query`.
pub(crate) fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {other}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// Every AuditEvent the caller may see (all pages, oldest first).
fn audit_events(who: &Caller<'_>, query: &str) -> Vec<Value> {
    let path = if query.is_empty() {
        "AuditEvent?_sort=date&_count=100".to_string()
    } else {
        format!("AuditEvent?{query}&_sort=date&_count=100")
    };
    let (list, _) = who.all_pages(&path);
    list.into_iter().map(|e| e["resource"].clone()).collect()
}

fn request_id_of(event: &Value) -> Option<String> {
    event["entity"].as_array()?.iter().find_map(|e| {
        (e["type"]["code"] == "XrequestId")
            .then(|| {
                e["what"]["identifier"]["value"]
                    .as_str()
                    .map(str::to_string)
            })
            .flatten()
    })
}

/// The request ids of the events `who` finds with `query` ([`audit_events`]).
fn request_ids(who: &Caller<'_>, query: &str) -> Vec<String> {
    audit_events(who, query)
        .iter()
        .filter_map(request_id_of)
        .collect()
}

fn entity_refs(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e["what"]["reference"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn patient_entities(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|e| e["role"]["code"] == "1")
                .filter_map(|e| e["what"]["reference"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn client_of(event: &Value) -> Option<String> {
    event["agent"].as_array()?.iter().find_map(|a| {
        (a["type"]["coding"][0]["code"] == "110153")
            .then(|| a["who"]["identifier"]["value"].as_str().map(str::to_string))
            .flatten()
    })
}

fn organization_of(event: &Value) -> Option<String> {
    event["agent"].as_array()?.iter().find_map(|a| {
        (a["type"]["coding"][0]["code"] == "PROV")
            .then(|| a["who"]["reference"].as_str().map(str::to_string))
            .flatten()
    })
}

fn query_of(event: &Value) -> Option<String> {
    event["entity"].as_array()?.iter().find_map(|e| {
        e["query"]
            .as_str()
            .map(|q| String::from_utf8(base64_decode(q)).expect("utf-8 query"))
    })
}

/// The one event carrying `request_id`.
#[track_caller]
/// The one REST AuditEvent of a request (consent-decision events are checked separately).
fn event_for<'e>(events: &'e HashMap<String, Vec<Value>>, request_id: &str) -> &'e Value {
    let found: Vec<&Value> = events
        .get(request_id)
        .unwrap_or_else(|| panic!("no AuditEvent carries X-Request-Id {request_id}"))
        .iter()
        .filter(|e| e["type"]["code"] == "rest")
        .collect();
    assert_eq!(found.len(), 1, "{request_id}: {found:?}");
    found[0]
}

/// The one REST AuditEvent of a request with the given subtype (a Bundle request also leaves
/// one event per entry).
fn event_with<'e>(
    events: &'e HashMap<String, Vec<Value>>,
    request_id: &str,
    subtype: &str,
) -> &'e Value {
    let found: Vec<&Value> = events
        .get(request_id)
        .unwrap_or_else(|| panic!("no AuditEvent carries X-Request-Id {request_id}"))
        .iter()
        .filter(|e| e["type"]["code"] == "rest" && e["subtype"][0]["code"] == subtype)
        .collect();
    assert_eq!(found.len(), 1, "{request_id} {subtype}: {found:?}");
    found[0]
}

/// The AuthZ-Consent events of a request.
fn consent_events<'e>(events: &'e HashMap<String, Vec<Value>>, request_id: &str) -> Vec<&'e Value> {
    events
        .get(request_id)
        .map(|all| {
            all.iter()
                .filter(|e| e["subtype"][0]["code"] == "AuthZ-Consent")
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn assert_shape(event: &Value, subtype: &str, action: &str, outcome: &str, what: &str) {
    assert_eq!(event["resourceType"], "AuditEvent", "{what}");
    assert_eq!(event["type"]["code"], "rest", "{what}: {event}");
    assert_eq!(
        event["type"]["system"], "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "{what}"
    );
    assert_eq!(event["subtype"][0]["code"], subtype, "{what}: {event}");
    assert_eq!(event["action"], action, "{what}: {event}");
    assert_eq!(event["outcome"], outcome, "{what}: {event}");
    let recorded = event["recorded"].as_str().expect("recorded");
    // UTC with milliseconds: 2026-11-25T11:30:37.002Z
    assert!(
        recorded.len() == 24 && recorded.ends_with('Z') && recorded.as_bytes()[19] == b'.',
        "{what}: recorded {recorded}"
    );
    assert!(
        event["meta"]["profile"][0].as_str().is_some_and(
            |p| p.starts_with("https://profiles.ihe.net/ITI/BALP/StructureDefinition/")
        ),
        "{what}: {event}"
    );
    assert_eq!(
        event["source"]["observer"]["display"],
        "Renkei FHIR gateway"
    );
}

#[test]
fn every_interaction_leaves_a_balp_audit_event() {
    for_each_backend(|s| {
        let net = network(s);
        let a = s.token_for(
            "hosp-a-ehr",
            ORG_A,
            "facility",
            &["--practitioner", "Practitioner/dr-a"],
        );
        let a = s.with_token(&a);
        let limited = s.token_for(
            "a-reader",
            ORG_A,
            "facility",
            &["--scope", "system/Observation.rs"],
        );
        let limited = s.with_token(&limited);
        let auditor = s.token_for("auditor", ORG_A, "auditor", &[]);
        let auditor = s.with_token(&auditor);
        let rid = |name: &str| format!("rq-{name}-{}", s.backend);

        let send = |who: &Caller<'_>,
                    name: &str,
                    method: &str,
                    path: &str,
                    body: Option<&Value>,
                    content_type: &str| {
            let id = rid(name);
            let mut headers = vec![("X-Request-Id", id.as_str())];
            if body.is_some() {
                headers.push(("Content-Type", content_type));
            }
            let r = who.request(
                method,
                path,
                &headers,
                body.map(|b| serde_json::to_vec(b).unwrap()),
            );
            assert_eq!(
                r.header("x-request-id"),
                Some(id.as_str()),
                "{name}: request id not echoed"
            );
            r
        };
        let fhir = crate::support::FHIR_JSON;
        let obs = lab("3D046000001906202", 6.0, "2025-06-01", None);
        let created = send(&a, "create", "POST", "Observation", Some(&obs), fhir)
            .expect(201)
            .json();
        let oid = id_of(&created);
        send(&a, "read", "GET", &oid, None, fhir).expect(200);
        send(&a, "vread", "GET", &format!("{oid}/_history/1"), None, fhir).expect(200);
        send(
            &a,
            "search",
            "GET",
            &format!("Observation?patient={PATIENT}&code=3D046000001906202"),
            None,
            fhir,
        )
        .expect(200);
        let mut changed = created.clone();
        changed["status"] = json!("amended");
        send(&a, "update", "PUT", &oid, Some(&changed), fhir).expect(200);
        let patch = json!([{"op": "replace", "path": "/status", "value": "corrected"}]);
        send(&a, "patch", "PATCH", &oid, Some(&patch), JSON_PATCH).expect(200);
        send(&a, "history", "GET", &format!("{oid}/_history"), None, fhir).expect(200);
        send(&a, "delete", "DELETE", &oid, None, fhir);
        let tx = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"fullUrl": "urn:uuid:6f1c2c1e-0000-4000-8000-000000000001", "resource": lab("3D010000001926101", 99.0, "2025-06-02", None), "request": {"method": "POST", "url": "Observation"}}],
        });
        let tx_response = send(&a, "transaction", "POST", "", Some(&tx), fhir)
            .expect(200)
            .json();
        let tx_location = entries(&tx_response)[0]["response"]["location"]
            .as_str()
            .unwrap()
            .to_string();
        let batch = json!({
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": net.labs[0]}},
                {"request": {"method": "GET", "url": format!("Observation?patient={PATIENT}&code=3D010000001926101")}},
                {"request": {"method": "GET", "url": "Observation/no-such-lab"}},
            ],
        });
        send(&a, "batch", "POST", "", Some(&batch), fhir).expect(200);
        // Denied and failed attempts.
        send(
            &limited,
            "forbidden",
            "POST",
            "Observation",
            Some(&obs),
            fhir,
        )
        .expect(403);
        // The same scope limit holds inside a Bundle.
        let r = send(&limited, "forbidden-tx", "POST", "", Some(&tx), fhir);
        assert_eq!(
            r.status, 403,
            "a read-only token wrote through a transaction: {}",
            r.body
        );
        send(
            &net.as_b(),
            "consented-search",
            "GET",
            &format!("Observation?patient={PATIENT}"),
            None,
            fhir,
        )
        .expect(200);
        send(&net.as_c(), "hidden", "GET", &net.labs[0], None, fhir).expect(404);
        let everything = format!("Patient/{PATIENT}/$everything");
        send(
            &net.as_c(),
            "hidden-everything",
            "GET",
            &everything,
            None,
            fhir,
        )
        .expect(404);
        send(
            &net.as_b(),
            "consented-read",
            "GET",
            &net.labs[0],
            None,
            fhir,
        )
        .expect(200);
        send(
            &net.as_b(),
            "consented-everything",
            "GET",
            &everything,
            None,
            fhir,
        )
        .expect(200);
        send(
            &net.as_b(),
            "consent-required",
            "GET",
            "Observation/not-there",
            None,
            fhir,
        )
        .expect(404);
        let bad_token = s.with_token("not-a-token");
        send(
            &bad_token,
            "unauthenticated",
            "GET",
            &net.labs[0],
            None,
            fhir,
        )
        .expect(401);
        let bad = json!({"resourceType": "Observation", "status": "no-such-status"});
        send(&a, "invalid", "POST", "Observation", Some(&bad), fhir).expect(400);
        // A client X-Request-Id that is not plain is replaced by a generated one.
        let r = a.get_with(&oid, &[("X-Request-Id", "bad id with spaces")]);
        let generated = r
            .header("x-request-id")
            .expect("a generated request id")
            .to_string();
        assert_ne!(generated, "bad id with spaces");

        let all = audit_events(&auditor, "");
        let mut by_request: HashMap<String, Vec<Value>> = HashMap::new();
        for event in &all {
            if let Some(id) = request_id_of(event) {
                by_request.entry(id).or_default().push(event.clone());
            }
        }
        let patient = format!("Patient/{PATIENT}");
        let check_agent = |event: &Value, client: &str, org: &str, what: &str| {
            assert_eq!(client_of(event).as_deref(), Some(client), "{what}: {event}");
            assert_eq!(
                organization_of(event).as_deref(),
                Some(org),
                "{what}: {event}"
            );
            assert_eq!(
                event["purposeOfEvent"][0]["coding"][0]["code"], "TREAT",
                "{what}"
            );
        };
        for (name, subtype, action, resource) in [
            ("create", "create", "C", Some(format!("{oid}/_history/1"))),
            ("read", "read", "R", Some(format!("{oid}/_history/1"))),
            ("vread", "vread", "R", Some(format!("{oid}/_history/1"))),
            ("search", "search-type", "E", None),
            ("update", "update", "U", Some(format!("{oid}/_history/2"))),
            ("patch", "patch", "U", Some(format!("{oid}/_history/3"))),
            ("history", "history", "R", Some(format!("{oid}/_history/3"))),
            ("delete", "delete", "D", None),
            ("transaction", "transaction", "E", None),
            ("batch", "batch", "E", None),
        ] {
            let event = event_with(&by_request, &rid(name), subtype);
            assert_shape(event, subtype, action, "0", name);
            if matches!(name, "transaction" | "batch") {
                // Each entry of the Bundle leaves its own event besides the Bundle's.
                let entries = by_request[&rid(name)]
                    .iter()
                    .filter(|e| e["subtype"][0]["code"] != subtype)
                    .count();
                assert!(entries >= 1, "{name}: no per-entry AuditEvent");
            }
            check_agent(event, "hosp-a-ehr", ORG_A, name);
            // The practitioner the token acts for is the requesting person.
            assert!(
                event["agent"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|ag| ag["who"]["reference"] == "Practitioner/dr-a"
                        && ag["requestor"] == true),
                "{name}: no practitioner agent: {event}"
            );
            if let Some(resource) = resource {
                assert!(
                    entity_refs(event).contains(&resource),
                    "{name}: {resource} not in {event}"
                );
            }
            if name != "transaction" && name != "batch" && name != "delete" {
                assert_eq!(
                    patient_entities(event),
                    vec![patient.clone()],
                    "{name}: {event}"
                );
            }
        }
        // Delete names the resource.
        let deleted = event_for(&by_request, &rid("delete"));
        assert!(
            entity_refs(deleted).iter().any(|r| r.starts_with(&oid)),
            "delete: {deleted}"
        );
        // Search carries its raw query, base64.
        let query = query_of(event_for(&by_request, &rid("search"))).expect("entity.query");
        assert!(
            query.contains(&format!("patient={PATIENT}"))
                && query.contains("code=3D046000001906202"),
            "{query}"
        );
        // A batch's search leaves a search event of its own, with its query and patient.
        let batch_search = event_with(&by_request, &rid("batch"), "search-type");
        assert_shape(batch_search, "search-type", "E", "0", "batch search");
        assert_eq!(
            query_of(batch_search).as_deref(),
            Some(format!("Observation?patient={PATIENT}&code=3D010000001926101").as_str()),
            "{batch_search}"
        );
        assert_eq!(patient_entities(batch_search), vec![patient.clone()]);
        // A failed entry says why, as the request on its own does (a review found no
        // outcomeDesc).
        let failed_read = by_request[&rid("batch")]
            .iter()
            .find(|e| e["subtype"][0]["code"] == "read" && e["outcome"] == "4")
            .expect("the failed read entry's event");
        assert!(
            failed_read["outcomeDesc"]
                .as_str()
                .is_some_and(|text| text.contains("no-such-lab")),
            "{failed_read}"
        );
        // The transaction names what it created.
        let tx_event = event_with(&by_request, &rid("transaction"), "transaction");
        let tx_target = tx_location.split("/_history").next().unwrap();
        assert!(
            entity_refs(tx_event)
                .iter()
                .any(|r| r.starts_with(tx_target)),
            "transaction: {tx_location} not in {tx_event}"
        );

        // Failures carry outcome 4 and who tried.
        let event = event_for(&by_request, &rid("forbidden"));
        assert_eq!(event["outcome"], "4", "{event}");
        assert_eq!(event["action"], "C");
        check_agent(event, "a-reader", ORG_A, "forbidden");
        let event = event_for(&by_request, &rid("forbidden-tx"));
        assert_eq!(event["outcome"], "4", "{event}");
        assert_eq!(event["subtype"][0]["code"], "transaction");
        let decisions = consent_events(&by_request, &rid("hidden"));
        assert_eq!(
            decisions.len(),
            1,
            "one consent decision for the hidden read: {decisions:?}"
        );
        assert_eq!(
            decisions[0]["type"]["code"], "110113",
            "AuthZ-Consent is a security alert"
        );
        assert_eq!(decisions[0]["outcome"], "4", "the decision was a deny");
        assert!(
            decisions[0]["entity"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x["role"]["code"] == "13")),
            "the decision names what decided: {}",
            decisions[0]
        );
        // A search returning another facility's data records the consent that permitted it,
        // once per patient; a facility searching its own data records no decision.
        let decisions = consent_events(&by_request, &rid("consented-search"));
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!(decisions[0]["outcome"], "0", "{}", decisions[0]);
        assert!(
            decisions[0].to_string().contains("Consent/consent-pat-p"),
            "the decision names the Consent: {}",
            decisions[0]
        );
        assert!(consent_events(&by_request, &rid("search")).is_empty());
        // A read of another facility's data, and a compartment operation over it, record one
        // decision each, with the request's own event: the compartment's owner is checked
        // inside the operation, not by a read of its own.
        for name in [
            "consented-read",
            "consented-everything",
            "hidden-everything",
        ] {
            let events = &by_request[&rid(name)];
            let decisions = consent_events(&by_request, &rid(name));
            assert_eq!(decisions.len(), 1, "{name}: {events:?}");
            assert_eq!(
                events.len(),
                2,
                "{name}: its event and the decision: {events:?}"
            );
            let granted = name.starts_with("consented");
            assert_eq!(
                decisions[0]["outcome"],
                if granted { "0" } else { "4" },
                "{name}"
            );
            assert!(
                patient_entities(decisions[0]) == vec![format!("Patient/{PATIENT}")],
                "{name}: the decision names the patient: {}",
                decisions[0]
            );
        }
        let event = event_for(&by_request, &rid("hidden-everything"));
        assert_eq!(event["outcome"], "4", "{event}");
        assert!(
            entity_refs(event).contains(&format!("Patient/{PATIENT}")),
            "the refused operation names the compartment's owner: {event}"
        );
        let event = event_for(&by_request, &rid("hidden"));
        assert_shape(event, "read", "R", "4", "404 by consent");
        check_agent(event, "clinic-c-ehr", ORG_C, "hidden");
        assert!(
            entity_refs(event)
                .iter()
                .any(|r| r.starts_with(&net.labs[0])),
            "{event}"
        );
        assert!(
            !event.to_string().contains(SECRET),
            "the audit of a denied read copies hidden data"
        );
        let event = event_for(&by_request, &rid("consent-required"));
        assert_eq!(event["outcome"], "4");
        let event = event_for(&by_request, &rid("invalid"));
        assert_eq!(event["outcome"], "4");
        assert_eq!(event["action"], "C");
        // 401: no identity, but the attempt is on record (anonymous client, failure).
        let event = event_for(&by_request, &rid("unauthenticated"));
        assert_eq!(event["outcome"], "4", "{event}");
        assert_eq!(client_of(event).as_deref(), Some("anonymous"), "{event}");
        assert!(organization_of(event).is_none(), "{event}");
        // The generated request id is stored too.
        event_for(&by_request, &generated);

        // Auditor search parameters narrow as documented.
        let reads = audit_events(&auditor, "subtype=read&outcome=4&agent=clinic-c-ehr");
        assert!(!reads.is_empty());
        assert!(reads.iter().all(|e| e["subtype"][0]["code"] == "read"
            && e["outcome"] == "4"
            && client_of(e).as_deref() == Some("clinic-c-ehr")));
        let on_obs = audit_events(&auditor, &format!("entity={oid}"));
        assert!(on_obs.len() >= 6, "{}", on_obs.len());
        // `entity` is every `entity.what`: the patient an event names counts (a review found
        // only the resources matched), and each event is found once.
        let on_patient = audit_events(&auditor, &format!("entity=Patient/{PATIENT}"));
        let by_patient = audit_events(&auditor, &format!("patient=Patient/{PATIENT}"));
        assert!(
            on_patient.len() >= by_patient.len(),
            "{} < {}",
            on_patient.len(),
            by_patient.len()
        );
        let mut ids: Vec<&str> = on_patient.iter().filter_map(|e| e["id"].as_str()).collect();
        let found = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), found, "an event found twice");
        let creates = audit_events(&auditor, "action=C&agent=Organization/hosp-a");
        assert!(creates.iter().all(|e| e["action"] == "C"));
        assert!(creates
            .iter()
            .any(|e| request_id_of(e).as_deref() == Some(rid("create").as_str())));
        // The auditor's own searches are audited as well.
        assert!(audit_events(&auditor, "agent=auditor").len() >= 2);
    });
}

#[test]
fn audit_events_cannot_be_written_through_the_api() {
    for_each_backend(|s| {
        let auditor = s.token_for("auditor", ORG_A, "auditor", &[]);
        let admin = s.token_for("admin", ORG_A, "admin", &[]);
        let patient = s.token_for("p-app", ORG_A, "patient", &["--patient", "Patient/pat-p"]);
        let event = json!({
            "resourceType": "AuditEvent",
            "id": "forged",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "recorded": "2025-01-01T00:00:00.000Z",
            "agent": [{"requestor": true, "who": {"display": "forger"}}],
            "source": {"observer": {"display": "forger"}},
        });
        let existing = s.with_token(&auditor).read_json("AuditEvent?_count=1");
        let existing_id = entries(&existing)
            .first()
            .and_then(|e| e["resource"]["id"].as_str().map(str::to_string))
            .unwrap_or_else(|| "forged".into());
        for (name, token) in [
            ("facility", s.token.clone()),
            ("auditor", auditor.clone()),
            ("admin", admin.clone()),
            ("patient", patient.clone()),
        ] {
            let who = s.with_token(&token);
            who.post("AuditEvent", &event).expect(405).outcome();
            who.put(&format!("AuditEvent/{existing_id}"), &event)
                .expect(405);
            who.delete(&format!("AuditEvent/{existing_id}")).expect(405);
            who.send_raw(
                "PATCH",
                &format!("AuditEvent/{existing_id}"),
                JSON_PATCH,
                br#"[{"op":"replace","path":"/outcome","value":"0"}]"#,
            )
            .expect(405);
            who.delete("AuditEvent?outcome=4").expect(405);
            // Nor inside a Bundle.
            let bundle = json!({
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"resource": event, "request": {"method": "POST", "url": "AuditEvent"}}],
            });
            let r = who.post("", &bundle);
            assert!(
                r.status >= 400,
                "{name}: a transaction wrote an AuditEvent: {}",
                r.body
            );
            // A batch entry answers 405 as the request on its own does.
            if name == "facility" {
                let mut batch = bundle.clone();
                batch["type"] = json!("batch");
                let r = who.post("", &batch).expect(200).json();
                let entry = &entries(&r)[0];
                assert!(
                    entry["response"]["status"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("405")),
                    "{entry}"
                );
            }
        }
        let forged = s.with_token(&auditor).read_json("AuditEvent?agent=forger");
        assert!(entries(&forged).is_empty());
    });
}

/// A token of P's own app (registered at clinic B).
/// An auditor's and the patient's own view of the trail.
#[test]
fn patients_do_not_see_accesses_to_records_withheld_from_them() {
    for_each_backend(|s| {
        let net = network(s);
        let (auditor, me) = auditor_and_patient(s);
        let patient = format!("Patient/{PATIENT}");
        // A writes a result the patient has not been told about yet; B (consented) reads it
        // and a result the patient may see.
        let mut withheld = lab("3D046000001906202", 7.0, "2025-03-01", None);
        withheld["meta"] = json!({"tag": [{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication", "code": "UNINFORMED"}]});
        let withheld = id_of(&net.as_a().create(&withheld));
        let reads = [
            (withheld.clone(), "rq-read-withheld"),
            (net.labs[0].clone(), "rq-read-shown"),
            (format!("{withheld}/_history"), "rq-history-withheld"),
            ("Observation/_history".to_string(), "rq-history-shown"),
        ];
        for (target, request_id) in &reads {
            net.as_b()
                .request("GET", target, &[("X-Request-Id", request_id)], None)
                .expect(200);
        }
        // C, outside the consent, breaks the glass to read it.
        let emergency = s.token_for("clinic-c-er", ORG_C, "facility", &["--break-glass"]);
        s.with_token(&emergency)
            .request(
                "GET",
                &withheld,
                &[
                    ("X-Request-Id", "rq-break-glass-withheld"),
                    ("X-Purpose-Of-Use", "ETREAT"),
                    ("X-Break-Glass-Reason", "unconscious"),
                ],
                None,
            )
            .expect(200);
        // Another patient's app tries the patient's record: someone tried, not who.
        let other = s.token_for(
            "q-app",
            ORG_B,
            "patient",
            &["--patient", &format!("Patient/{OTHER_PATIENT}")],
        );
        s.with_token(&other)
            .request(
                "GET",
                &net.labs[0],
                &[("X-Request-Id", "rq-other-patient")],
                None,
            )
            .expect(404);
        // The auditor sees both reads and their consent decisions, naming the patient.
        for request_id in ["rq-read-withheld", "rq-read-shown"] {
            let (event, decisions) = rest_and_consent(&auditor, request_id);
            assert_eq!(patient_entities(&event), vec![patient.clone()], "{event}");
            assert_eq!(decisions.len(), 1, "{decisions:?}");
        }
        // The patient sees the read of what they may see, and nothing of the withheld
        // record: neither its creation, nor its read, nor the decision that permitted it,
        // whether or not they name themselves, and the total agrees.
        for query in [format!("patient={patient}"), String::new()] {
            let mine: Vec<String> = request_ids(&me, &query);
            for shown in ["rq-read-shown", "rq-history-shown", "rq-other-patient"] {
                assert!(mine.iter().any(|r| r == shown), "{shown}: {mine:?}");
            }
            for hidden in [
                "rq-read-withheld",
                "rq-history-withheld",
                "rq-break-glass-withheld",
            ] {
                assert!(!mine.iter().any(|r| r == hidden), "{hidden}: {mine:?}");
            }
            for event in audit_events(&me, &query) {
                assert!(
                    !entity_refs(&event).iter().any(|e| e.starts_with(&withheld)),
                    "{event}"
                );
                assert!(!event.to_string().contains(OTHER_PATIENT), "{event}");
            }
        }
        me.get(&format!("AuditEvent?agent=Patient/{OTHER_PATIENT}"))
            .expect(403);
        // Page tokens are sealed: no sequence number of the trail (which would count the
        // network's events between two of theirs), and an edited one is refused.
        let first = me.read_json("AuditEvent?_count=1");
        let next = first["link"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .expect("a next link")
            .to_string();
        let token = next
            .split("_page_token=")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        assert!(token.len() > 20 && !token.contains('.'), "{token}");
        me.get(&next).expect(200);
        me.get(&format!("AuditEvent?_count=1&_page_token=A{token}"))
            .expect(400);
        me.get("AuditEvent?_count=1&_page_token=5").expect(400);
        let page = me.read_json("AuditEvent?_total=accurate&_count=500");
        let listed = page["entry"].as_array().map_or(0, Vec::len);
        assert_eq!(page["total"], json!(listed), "{page}");
        // Once the patient has been told (the tag removed), the accesses show.
        let mut told = net.as_a().read_json(&withheld);
        if let Some(fields) = told.as_object_mut() {
            fields.remove("meta");
        }
        net.as_a().put(&withheld, &told).expect(200);
        let mine: Vec<String> = request_ids(&me, "");
        for request_id in [
            "rq-read-withheld",
            "rq-history-withheld",
            "rq-break-glass-withheld",
        ] {
            assert!(
                mine.iter().any(|r| r == request_id),
                "{request_id}: {mine:?}"
            );
        }
    });
}

fn auditor_and_patient(s: &Server) -> (Caller<'_>, Caller<'_>) {
    let auditor = s.token_for("auditor", "Organization/x", "auditor", &[]);
    (s.with_token(&auditor), s.with_token(&patient_app(s)))
}

fn patient_app(s: &Server) -> String {
    s.token_for(
        "p-app",
        ORG_B,
        "patient",
        &["--patient", &format!("Patient/{PATIENT}")],
    )
}

#[test]
fn patients_see_who_viewed_their_record_and_facilities_see_accesses_to_their_data() {
    for_each_backend(|s| {
        let net = network(s);
        let me = patient_app(s);
        let me = s.with_token(&me);
        // B (consented) looks at P's data; C tries and is refused; A looks at Q's data.
        net.as_b().read_json(&net.labs[0]);
        net.as_b()
            .read_json(&format!("Observation?patient={PATIENT}"));
        net.as_c().get(&net.labs[0]).expect(404);
        let q_lab = {
            let mut o = lab("3D046000001906202", 5.0, "2025-01-01", None);
            o["subject"] = json!({"reference": format!("Patient/{OTHER_PATIENT}")});
            id_of(&net.as_a().create(&o))
        };
        net.as_a().read_json(&q_lab);

        let mine = audit_events(&me, &format!("patient=Patient/{PATIENT}"));
        assert!(!mine.is_empty());
        for event in &mine {
            assert!(
                patient_entities(event).contains(&format!("Patient/{PATIENT}")),
                "an event about someone else: {event}"
            );
            assert!(!event.to_string().contains(OTHER_PATIENT), "{event}");
        }
        // Which facility, when, for what purpose, what kind of data.
        let b_read = mine
            .iter()
            .find(|e| {
                organization_of(e).as_deref() == Some(ORG_B)
                    && e["subtype"][0]["code"] == "read"
                    && entity_refs(e).iter().any(|r| r.starts_with(&net.labs[0]))
            })
            .unwrap_or_else(|| panic!("B's read is not in the patient's view: {mine:?}"));
        assert_eq!(b_read["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        assert!(b_read["recorded"].as_str().is_some());
        assert!(
            mine.iter()
                .any(|e| organization_of(e).as_deref() == Some(ORG_B)
                    && e["subtype"][0]["code"] == "search-type"),
            "B's search over P's labs is not in the patient's view"
        );
        // Without the parameter: the same own view.
        let default_view = audit_events(&me, "");
        assert_eq!(default_view.len(), mine.len());
        // This server's absolute URL names the same record, as in any reference search.
        let absolute = audit_events(&me, &format!("patient={}/Patient/{PATIENT}", s.base));
        assert_eq!(absolute.len(), mine.len());
        // A total counts every page of the patient's view; none is given unless asked for.
        let first_page = me
            .get(&format!(
                "AuditEvent?patient=Patient/{PATIENT}&_total=accurate&_count=2"
            ))
            .expect(200)
            .json();
        assert_eq!(first_page["total"], json!(mine.len()), "{first_page}");
        assert_eq!(first_page["entry"].as_array().map(Vec::len), Some(2));
        let sorted_page = me
            .get(&format!(
                "AuditEvent?patient=Patient/{PATIENT}&_total=estimate&_count=2&_sort=date"
            ))
            .expect(200)
            .json();
        assert_eq!(sorted_page["total"], json!(mine.len()));
        let untotalled = me
            .get(&format!("AuditEvent?patient=Patient/{PATIENT}&_count=2"))
            .expect(200)
            .json();
        assert!(untotalled.get("total").is_none(), "{untotalled}");
        me.get(&format!("AuditEvent?patient=Patient/{PATIENT}&_total=all"))
            .expect(400)
            .outcome();
        // Another patient's record: 403.
        me.get(&format!("AuditEvent?patient=Patient/{OTHER_PATIENT}"))
            .expect(403)
            .outcome();
        me.get(&format!("AuditEvent?patient={OTHER_PATIENT}"))
            .expect(403);

        // Facilities see the accesses to data they hold.
        let for_a = audit_events(&net.as_a(), "");
        assert!(
            for_a
                .iter()
                .any(|e| organization_of(e).as_deref() == Some(ORG_B)
                    && entity_refs(e).iter().any(|r| r.starts_with(&net.labs[0]))),
            "A does not see B's access to A's lab"
        );
        // B's search that returned A's labs, and the consent decision it took, too.
        for subtype in ["search-type", "AuthZ-Consent"] {
            assert!(
                for_a
                    .iter()
                    .any(|e| organization_of(e).as_deref() == Some(ORG_B)
                        && e.to_string().contains(subtype)),
                "A does not see B's {subtype} event over A's data: {for_a:?}"
            );
        }
        // A patient hidden from C is unknown to C's view, like one that does not exist.
        assert!(audit_events(&net.as_c(), &format!("patient=Patient/{PATIENT}")).is_empty());
        assert!(audit_events(&net.as_c(), "patient=Patient/nobody").is_empty());
        let for_c = audit_events(&net.as_c(), "");
        for event in &for_c {
            for hidden in net.labs.iter().chain([&net.medreq, &net.imaging, &q_lab]) {
                assert!(
                    !entity_refs(event)
                        .iter()
                        .any(|r| r.starts_with(hidden.as_str())),
                    "C sees an access to A's data: {event}"
                );
            }
        }
        let for_b = audit_events(&net.as_b(), "");
        for event in &for_b {
            assert!(
                !entity_refs(event).iter().any(|r| r.starts_with(&q_lab)),
                "B sees an access to Q's lab at A: {event}"
            );
        }
    });
}

// ---- tamper evidence -------------------------------------------------------------------------

struct Verdict {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Verdict {
    /// The number that follows `prefix` on a line of verify's output.
    fn count_after(&self, prefix: &str) -> Option<i64> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    }
}

fn verify(url: &str) -> Verdict {
    verify_with(url, &[])
}

/// `renkei audit verify` with further arguments (`--expect-head SEQ:HASH`).
fn verify_with(url: &str, more: &[&str]) -> Verdict {
    let out = renkei_command()
        .args(["audit", "verify", "--database", url])
        .args(more)
        .stdin(Stdio::null())
        .output()
        .expect("run renkei audit verify");
    Verdict {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn open_store(url: &str) -> Store {
    Store::open(
        &DatabaseUrl::parse(url).expect("database url"),
        &StoreOptions::default(),
    )
    .expect("open store")
}

fn exec(store: &Store, statements: &[Sql]) {
    store
        .write(|tx| {
            for sql in statements {
                tx.execute(sql)?;
            }
            Ok::<_, StoreError>(())
        })
        .expect("tamper");
}

fn sql(text: &str) -> Sql {
    Sql::new(text)
}

/// Starts a server, makes traffic, stops it, checks the intact chain; returns the stopped
/// server (its database stays until drop), the record count and the head hash.
fn trail(backend: crate::support::Backend) -> (Server, i64, String) {
    let mut s = Server::start(backend);
    let net = network(&s);
    for lab in &net.labs {
        net.as_b().read_json(lab);
    }
    net.as_c().get(&net.labs[0]).expect(404);
    net.as_b()
        .read_json(&format!("Observation?patient={PATIENT}"));
    drop(net);
    s.kill9();
    let v = verify(s.database_url());
    assert!(
        v.ok,
        "intact trail fails verification:\n{}\n{}",
        v.stdout, v.stderr
    );
    let records = v
        .count_after("audit trail intact: ")
        .unwrap_or_else(|| panic!("no record count in: {}", v.stdout));
    let head = v
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("head hash: "))
        .unwrap_or_else(|| panic!("no head hash in: {}", v.stdout))
        .trim()
        .to_string();
    assert_eq!(head.len(), 64, "{head}");
    assert!(records >= 8, "only {records} audit records");
    (s, records, head)
}

#[track_caller]
fn assert_broken_at(url: &str, seq: i64, kind: &str) {
    assert_broken_at_with(url, seq, kind, &[]);
}

/// [`assert_broken_at`] with further arguments for verify.
#[track_caller]
fn assert_broken_at_with(url: &str, seq: i64, kind: &str, more: &[&str]) {
    let v = verify_with(url, more);
    assert!(!v.ok, "{kind}: verify did not notice:\n{}", v.stdout);
    assert!(
        v.stderr.contains(&format!("BROKEN at record {seq}:")),
        "{kind}: expected the first bad record {seq}, got:\n{}\n{}",
        v.stdout,
        v.stderr
    );
}

#[test]
fn intact_trail_verifies_and_exports_as_ndjson() {
    for_each_backend_raw(|backend| {
        let (s, records, head) = trail(backend);
        // Verifying twice gives the same head.
        let again = verify(s.database_url());
        assert!(again.stdout.contains(&head));
        let out = renkei_command()
            .args([
                "audit",
                "export",
                "--since",
                "2000-01-01",
                "--database",
                s.database_url(),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("export");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        // Export also writes the read events still in the journal (SQLite) after the trail's.
        let journaled = again.count_after("read-audit journal: ").unwrap_or(0);
        assert_eq!(lines.len() as i64, records + journaled);
        for line in lines {
            let event: Value = serde_json::from_str(line).expect("an NDJSON line is JSON");
            assert_eq!(event["resourceType"], "AuditEvent");
            assert!(event["id"].as_str().is_some());
        }
        // A date in the future exports nothing.
        let out = renkei_command()
            .args([
                "audit",
                "export",
                "--since",
                "2999-01-01",
                "--database",
                s.database_url(),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("export");
        assert!(out.status.success());
        assert!(out.stdout.is_empty());
        // A mistyped SQLite path is an error, not an intact empty trail in a new file.
        let missing =
            std::env::temp_dir().join(format!("renkei-no-such-{}.db", std::process::id()));
        let url = format!("sqlite:{}", missing.display());
        for command in [&["audit", "verify"][..], &["audit", "export"][..]] {
            let out = renkei_command()
                .args(command)
                .args(["--database", &url])
                .stdin(Stdio::null())
                .output()
                .expect("audit command");
            assert!(!out.status.success(), "{command:?} on a missing database");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("no database at"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !missing.exists(),
                "{command:?} created {}",
                missing.display()
            );
        }
    });
}

#[test]
fn tampering_modified_record_is_detected() {
    for_each_backend_raw(|backend| {
        let (s, _, _) = trail(backend);
        let store = open_store(s.database_url());
        let mut update = sql("UPDATE audit_events SET body = REPLACE(body, ");
        update
            .bind(Bind::Text("\"outcome\":\"".into()))
            .push(", ")
            .bind(Bind::Text("\"outcomeX\":\"".into()))
            .push(") WHERE seq = 3");
        exec(&store, &[update]);
        drop(store);
        assert_broken_at(s.database_url(), 3, "modified body");
    });
}

/// Searches and the patients' and facilities' views filter on the trail's columns and
/// references, outside the hashed text: changing them is tampering too.
#[test]
fn tampering_search_columns_and_references_is_detected() {
    for_each_backend_raw(|backend| {
        let (s, _, _) = trail(backend);
        let store = open_store(s.database_url());
        exec(
            &store,
            &[sql("UPDATE audit_events SET outcome = 'X' WHERE seq = 3")],
        );
        drop(store);
        assert_broken_at(s.database_url(), 3, "changed outcome column");
        let v = verify(s.database_url());
        assert!(v.stderr.contains("outcome column"), "{}", v.stderr);

        let (s, _, _) = trail(backend);
        let store = open_store(s.database_url());
        exec(
            &store,
            &[sql(
                "DELETE FROM audit_refs WHERE seq = (SELECT MIN(seq) FROM audit_refs WHERE kind = 'patient') AND kind = 'patient'",
            )],
        );
        drop(store);
        let v = verify(s.database_url());
        assert!(
            !v.ok,
            "a removed patient reference went unnoticed:\n{}",
            v.stdout
        );
        assert!(
            v.stderr.contains("patient reference") && v.stderr.contains("removed"),
            "{}",
            v.stderr
        );

        let (s, _, _) = trail(backend);
        let store = open_store(s.database_url());
        exec(
            &store,
            &[sql(
                "UPDATE audit_events SET agent_org = 'Organization/someone-else' WHERE seq = 4",
            )],
        );
        drop(store);
        assert_broken_at(s.database_url(), 4, "changed agent_org column");
    });
}

/// References added to `audit_refs` without a record: a repeated one (PostgreSQL's table has
/// no key against it; a search listed the event once more per copy) and one of a record after
/// the last. Both passed as intact.
#[test]
fn tampering_by_added_references_is_detected() {
    for_each_backend_raw(|backend| {
        if backend == Backend::Postgres {
            let (s, _, _) = trail(backend);
            let store = open_store(s.database_url());
            exec(
                &store,
                &[sql(
                    "INSERT INTO audit_refs SELECT * FROM audit_refs WHERE seq = (SELECT MIN(seq) FROM audit_refs WHERE kind = 'patient') AND kind = 'patient'",
                )],
            );
            drop(store);
            let v = verify(s.database_url());
            assert!(!v.ok, "a repeated reference went unnoticed:\n{}", v.stdout);
            assert!(v.stderr.contains("more than once"), "{}", v.stderr);
        }
        let (s, records, _) = trail(backend);
        let store = open_store(s.database_url());
        let mut beyond =
            sql("INSERT INTO audit_refs (kind, ref, seq) VALUES ('patient', 'Patient/someone', ");
        beyond.bind(Bind::Int(records + 100)).push(")");
        exec(&store, &[beyond]);
        drop(store);
        let v = verify(s.database_url());
        assert!(
            !v.ok,
            "a reference beyond the trail went unnoticed:\n{}",
            v.stdout
        );
        assert!(
            v.stderr.contains("which the trail does not hold"),
            "{}",
            v.stderr
        );
    });
}

#[test]
fn tampering_deleted_middle_record_is_detected() {
    for_each_backend_raw(|backend| {
        let (s, _, _) = trail(backend);
        let store = open_store(s.database_url());
        exec(
            &store,
            &[
                sql("DELETE FROM audit_refs WHERE seq = 4"),
                sql("DELETE FROM audit_events WHERE seq = 4"),
            ],
        );
        drop(store);
        assert_broken_at(s.database_url(), 5, "deleted record 4");
        // An export writes every event left, then fails naming the break.
        let out = renkei_command()
            .args(["audit", "export", "--database", s.database_url()])
            .stdin(Stdio::null())
            .output()
            .expect("export");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("BROKEN at record 5"), "{stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= 4);
    });
}

#[test]
fn tampering_truncated_end_is_detected() {
    for_each_backend_raw(|backend| {
        let (s, records, head) = trail(backend);
        let store = open_store(s.database_url());
        let mut refs = sql("DELETE FROM audit_refs WHERE seq = ");
        refs.bind(Bind::Int(records));
        let mut rows = sql("DELETE FROM audit_events WHERE seq = ");
        rows.bind(Bind::Int(records));
        exec(&store, &[refs, rows]);
        // The head kept beside the chain names the missing last record.
        assert_broken_at(s.database_url(), records, "truncated last record");
        // A forger who moves the head back too leaves a chain that is intact as far as it
        // goes: only the anchor taken before (`verify` prints it) shows the cut.
        let previous = store
            .read(|tx| tx.audit_chain(records - 2, 1))
            .expect("read chain");
        let mut head_back = sql("UPDATE audit_head SET seq = ");
        head_back
            .bind(Bind::Int(records - 1))
            .push(", hash = ")
            .bind(Bind::Text(previous[0].hash.clone()))
            .push(" WHERE id = 1");
        exec(&store, &[head_back]);
        drop(store);
        let url = s.database_url();
        assert!(verify(url).ok, "the cut trail is intact as far as it goes");
        let anchor = format!("{records}:{head}");
        let cut = verify_with(url, &["--expect-head", &anchor]);
        assert!(
            !cut.ok
                && cut
                    .stderr
                    .contains(&format!("anchored record {records} is missing")),
            "{}{}",
            cut.stdout,
            cut.stderr
        );
        // An earlier anchor still holds; a record that no longer has its anchored hash
        // (rewritten with every hash recomputed) is named.
        let earlier = format!("{}:{}", records - 1, previous[0].hash);
        let kept = verify_with(url, &["--expect-head", &earlier]);
        assert!(
            kept.ok && kept.stdout.contains(&format!("anchor: {earlier}")),
            "{}{}",
            kept.stdout,
            kept.stderr
        );
        let rewritten = format!("{}:{}", records - 1, "0".repeat(64));
        assert_broken_at_with(
            url,
            records - 1,
            "rewritten",
            &["--expect-head", &rewritten],
        );
        let malformed = verify_with(url, &["--expect-head", "7"]);
        assert!(
            !malformed.ok && malformed.stderr.contains("SEQ:HASH"),
            "{}",
            malformed.stderr
        );
    });
}

#[test]
fn tampering_reordered_records_are_detected() {
    for_each_backend_raw(|backend| {
        let (s, _, _) = trail(backend);
        let store = open_store(s.database_url());
        exec(
            &store,
            &[
                sql("DELETE FROM audit_refs WHERE seq IN (5, 6)"),
                sql("UPDATE audit_events SET seq = -1 WHERE seq = 5"),
                sql("UPDATE audit_events SET seq = 5 WHERE seq = 6"),
                sql("UPDATE audit_events SET seq = 6 WHERE seq = -1"),
            ],
        );
        drop(store);
        assert_broken_at(s.database_url(), 5, "swapped records 5 and 6");
    });
}

/// A forger who knows the hash function inserts a well-formed record after record 3, shifts
/// the later records, and even moves the head: the record after the forgery no longer links.
/// Appending a forged record at the end and rewriting the head is only caught by comparing the
/// head hash with one anchored outside the database, which is why verify prints it.
#[test]
fn tampering_inserted_record_is_detected() {
    for_each_backend_raw(|backend| {
        let (s, records, head) = trail(backend);
        let url = s.database_url().to_string();
        let store = open_store(&url);
        let chain = store
            .read(|tx| tx.audit_chain(0, 1000))
            .expect("read chain");
        let third = chain.iter().find(|r| r.seq == 3).expect("record 3").clone();
        let forged_body = third
            .body
            .replace("\"outcome\":\"", "\"outcome\":\"0\",\"forged\":\"");
        let forged_hash =
            renkei_audit::record_hash(4, third.recorded + 1, &third.hash, &forged_body);
        let forged = |seq: i64, recorded: i64, prev: &str, hash: &str, body: &str| {
            let mut insert = sql("INSERT INTO audit_events (seq, event_id, recorded, request_id, type_code, subtype, action, outcome, body, prev_hash, hash) VALUES (");
            insert
                .bind(Bind::Int(seq))
                .push(", ")
                .bind(Bind::Text(format!("forged-{seq}")))
                .push(", ")
                .bind(Bind::Int(recorded))
                .push(", 'forged', 'rest', 'read', 'R', '0', ")
                .bind(Bind::Text(body.to_string()))
                .push(", ")
                .bind(Bind::Text(prev.to_string()))
                .push(", ")
                .bind(Bind::Text(hash.to_string()))
                .push(")");
            insert
        };
        let mut head_update = sql("UPDATE audit_head SET seq = ");
        head_update
            .bind(Bind::Int(records + 1))
            .push(" WHERE id = 1");
        exec(
            &store,
            &[
                // Two steps: PostgreSQL checks the primary key row by row. The references
                // move with their records.
                sql("UPDATE audit_events SET seq = seq + 1000000 WHERE seq >= 4"),
                sql("UPDATE audit_events SET seq = seq - 999999 WHERE seq >= 1000000"),
                sql("UPDATE audit_refs SET seq = seq + 1000000 WHERE seq >= 4"),
                sql("UPDATE audit_refs SET seq = seq - 999999 WHERE seq >= 1000000"),
                forged(
                    4,
                    third.recorded + 1,
                    &third.hash,
                    &forged_hash,
                    &forged_body,
                ),
                head_update,
            ],
        );
        assert_broken_at(&url, 5, "forged record inserted as 4");

        // Undo, then append a forged record at the end with a rewritten head.
        let mut head_back = sql("UPDATE audit_head SET seq = ");
        head_back.bind(Bind::Int(records)).push(" WHERE id = 1");
        exec(
            &store,
            &[
                sql("DELETE FROM audit_events WHERE seq = 4"),
                sql("UPDATE audit_events SET seq = seq + 1000000 WHERE seq >= 5"),
                sql("UPDATE audit_events SET seq = seq - 1000001 WHERE seq >= 1000000"),
                sql("UPDATE audit_refs SET seq = seq + 1000000 WHERE seq >= 5"),
                sql("UPDATE audit_refs SET seq = seq - 1000001 WHERE seq >= 1000000"),
                head_back,
            ],
        );
        let restored = verify(&url);
        assert!(
            restored.ok && restored.stdout.contains(&head),
            "{}{}",
            restored.stdout,
            restored.stderr
        );
        let next = records + 1;
        let tail_hash = renkei_audit::record_hash(next, third.recorded + 2, &head, &forged_body);
        exec(
            &store,
            &[forged(
                next,
                third.recorded + 2,
                &head,
                &tail_hash,
                &forged_body,
            )],
        );
        // Without touching the head: caught at the end (verify names the head's record,
        // the last genuine one, rather than the forged one after it).
        assert_broken_at(
            &url,
            records,
            "forged record appended without moving the head",
        );
        // Moving the head too makes a self-consistent chain of hashes; this forgery is still
        // caught, since its content is no event the server writes (its outcome is no
        // outcome), and its columns say nothing of it. A forger who gets all of that right
        // is caught by the head hash anchored outside the database, which changes.
        let mut head_forged = sql("UPDATE audit_head SET seq = ");
        head_forged
            .bind(Bind::Int(next))
            .push(", hash = ")
            .bind(Bind::Text(tail_hash.clone()))
            .push(" WHERE id = 1");
        exec(&store, &[head_forged]);
        assert_broken_at(&url, next, "forged record appended with the head moved");
        drop(store);
    });
}

/// No audit, no data: when the audit trail cannot be written (here a database trigger refuses
/// every AuditEvent row), reads answer 503 with nothing of the resource, and writes are not
/// committed. On SQLite a read's event is first made durable in the read-audit journal, so
/// reads are answered until the journal's events fail to reach the trail; from then on they are
/// refused, and every read answered meanwhile is in the trail once it takes rows again.
#[test]
fn no_audit_no_data() {
    crate::support::for_each_backend(|server| {
        let created = server.create(&serde_json::json!({
            "resourceType": "Patient",
            "name": [{"family": "Audit-Guard"}]
        }));
        let id = created["id"].as_str().expect("id").to_string();
        server.get(&format!("Patient/{id}")).expect(200);
        let store = open_store(server.database_url());
        let sqlite = server.database_url().starts_with("sqlite:");
        if sqlite {
            exec(
                &store,
                &[sql(
                    "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events \
                     BEGIN SELECT RAISE(ABORT, 'audit storage down'); END",
                )],
            );
        } else {
            exec(
                &store,
                &[
                    sql("CREATE FUNCTION refuse_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit storage down'; END $$ LANGUAGE plpgsql"),
                    sql("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_audit()"),
                ],
            );
        }
        let mut answered_meanwhile: Vec<String> = Vec::new();
        let read = if sqlite {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                let request_id = uuid::Uuid::new_v4().to_string();
                let read = server.get_with(
                    &format!("Patient/{id}"),
                    &[("X-Request-Id", request_id.as_str())],
                );
                if read.status != 200 || std::time::Instant::now() > deadline {
                    break read;
                }
                answered_meanwhile.push(request_id);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        } else {
            server.get(&format!("Patient/{id}"))
        };
        assert_eq!(read.status, 503, "read without audit: {}", read.body);
        assert!(
            !read.body.contains("Audit-Guard"),
            "no data without audit: {}",
            read.body
        );
        assert_eq!(read.outcome()["issue"][0]["code"], "transient");
        let write = server.post(
            "Patient",
            &serde_json::json!({"resourceType": "Patient", "name": [{"family": "Unaudited"}]}),
        );
        assert_eq!(write.status, 503, "write without audit: {}", write.body);
        // Once the trail works again, nothing of the refused write exists.
        if sqlite {
            exec(&store, &[sql("DROP TRIGGER refuse_audit")]);
        } else {
            exec(
                &store,
                &[
                    sql("DROP TRIGGER refuse_audit ON audit_events"),
                    sql("DROP FUNCTION refuse_audit()"),
                ],
            );
        }
        // The journal's ingester retries every 200 ms; requests are served again once it has.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut search = server.get("Patient?family=Unaudited&_total=accurate");
        while search.status == 503 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            search = server.get("Patient?family=Unaudited&_total=accurate");
        }
        let search = search.expect(200).json();
        assert_eq!(
            search["total"], 0,
            "the unaudited write was not committed: {search}"
        );
        // Reads answered while the trail refused rows were journaled: none is missing.
        let auditor = server.token_for("auditor-guard", ORG_A, "auditor", &[]);
        let trail: Vec<String> = request_ids(
            &server.with_token(&auditor),
            &format!("entity=Patient/{id}"),
        );
        for request_id in &answered_meanwhile {
            assert!(
                trail.contains(request_id),
                "read {request_id} was answered, so its AuditEvent must be in the trail"
            );
        }
    });
}

/// `X-Purpose-Of-Use` is one code and a break-glass reason is short: a list or text would be
/// recorded as a purpose-of-use code nobody issued, and a reason of any length kept whole
/// (a review found both).
#[test]
fn purposes_are_codes_and_reasons_are_bounded() {
    for_each_backend(|s| {
        let net = network(s);
        let auditor = s.token_for("auditor", ORG_A, "auditor", &[]);
        let auditor = s.with_token(&auditor);
        let long = "x".repeat(1_001);
        for (request_id, purpose, reason) in [
            ("rq-purpose-list", "TREAT, ETREAT", None),
            ("rq-purpose-text", "treatment please", None),
            ("rq-long-reason", "ETREAT", Some(long.as_str())),
        ] {
            let mut headers = vec![("X-Request-Id", request_id), ("X-Purpose-Of-Use", purpose)];
            headers.extend(reason.map(|r| ("X-Break-Glass-Reason", r)));
            net.as_b()
                .request("GET", &net.labs[0], &headers, None)
                .expect(400);
            let recorded = request_events(&auditor, request_id);
            assert!(!recorded.is_empty(), "{request_id}");
            let text = Value::Array(recorded).to_string();
            assert!(!text.contains(purpose) || purpose == "ETREAT", "{text}");
            assert!(
                !text.contains(&long),
                "{request_id}: the long reason was kept"
            );
        }
    });
}

/// Token parameters of the trail compare the system too (a review found a wrong system
/// matching everything and the right one matching nothing); values that cannot be a search
/// are refused rather than matching nothing.
#[test]
fn audit_token_searches_compare_systems() {
    for_each_backend(|s| {
        let net = network(s);
        net.as_b().read_json(&net.labs[0]);
        let auditor = s.token_for("auditor", ORG_A, "auditor", &[]);
        let auditor = s.with_token(&auditor);
        // Before the searches below, which are audited too.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let before = chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .replace('+', "%2B");
        let count = |query: &str| -> i64 {
            auditor.read_json(&format!(
                "AuditEvent?_summary=count&date=lt{before}&{query}"
            ))["total"]
                .as_i64()
                .unwrap_or_else(|| panic!("{query}: no total"))
        };
        for (plain, with_system, wrong_system) in [
            (
                "type=rest",
                "type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest",
                "type=http://dicom.nema.org/resources/ontology/DCM|rest",
            ),
            (
                "subtype=read",
                "subtype=http://hl7.org/fhir/restful-interaction|read",
                "subtype=bogus|read",
            ),
            (
                "action=R",
                "action=http://hl7.org/fhir/audit-event-action|R",
                "action=http://hl7.org/fhir/audit-event-outcome|R",
            ),
            (
                "outcome=0",
                "outcome=http://hl7.org/fhir/audit-event-outcome|0",
                "outcome=|0",
            ),
            (
                "purpose=TREAT",
                "purpose=http://terminology.hl7.org/CodeSystem/v3-ActReason|TREAT",
                "purpose=bogus|TREAT",
            ),
        ] {
            let all = count(plain);
            assert!(all > 0, "{plain}");
            assert_eq!(count(with_system), all, "{with_system}");
            assert_eq!(count(wrong_system), 0, "{wrong_system}");
        }
        let read = format!("{}/_history/1", net.labs[0]);
        assert_eq!(
            count(&format!("entity={read}")),
            count(&format!("entity={}", net.labs[0]))
        );
        for refused in [
            "type=http://terminology.hl7.org/CodeSystem/audit-event-type|",
            "outcome=",
            "patient=",
            "_page_token=-5",
            "_page_token=0",
        ] {
            auditor.get(&format!("AuditEvent?{refused}")).expect(400);
        }
    });
}

/// `_sort=date` orders by the time each event was recorded, across pages, although on SQLite
/// reads reach the trail through the journal, after writes recorded later.
#[test]
fn audit_events_sorted_by_date_follow_their_recording_time() {
    for_each_backend(|s| {
        let auditor = s.token_for("auditor", ORG_A, "auditor", &[]);
        let auditor = s.with_token(&auditor);
        let patient = s.create(&json!({"resourceType": "Patient", "gender": "female"}));
        let path = format!("Patient/{}", patient["id"].as_str().unwrap());
        for _ in 0..4 {
            s.get(&path).expect(200);
        }
        let mut body = s.read_json(&path);
        body["gender"] = json!("male");
        s.put(&path, &body).expect(200);
        s.get(&path).expect(200);
        let recorded = |events: &[Value]| -> Vec<String> {
            events
                .iter()
                .map(|e| e["recorded"].as_str().unwrap().to_string())
                .collect()
        };
        let ascending = audit_events(&auditor, "");
        let times = recorded(&ascending);
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted, "_sort=date");
        let (pages, _) = auditor.all_pages("AuditEvent?_sort=-date&_count=3");
        let descending: Vec<Value> = pages.into_iter().map(|e| e["resource"].clone()).collect();
        let times = recorded(&descending);
        let mut sorted = times.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(times, sorted, "_sort=-date");
        let ids = |events: &[Value]| -> std::collections::BTreeSet<String> {
            events
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect()
        };
        // The same events either way (the auditor's own searches come after both).
        assert!(ids(&ascending).is_subset(&ids(&descending)));
        assert_eq!(ids(&descending).len(), descending.len(), "no event twice");
        // A token of the trail order does not page a sorted search.
        auditor
            .get("AuditEvent?_sort=date&_page_token=5")
            .expect(400);
    });
}

/// The trail's search parameters as FHIR search defines them: a date of any precision is the
/// whole period it names, a comma means any one of the values, `_count=0` counts, and the
/// requests without a client are found as the agent `anonymous`.
#[test]
fn audit_search_takes_date_precisions_alternatives_and_a_count_of_zero() {
    for_each_backend(|s| {
        let auditor = s.token_for("auditor", ORG_A, "auditor", &[]);
        let auditor = s.with_token(&auditor);
        let patient = s.create(&json!({"resourceType": "Patient", "gender": "female"}));
        let path = format!("Patient/{}", patient["id"].as_str().unwrap());
        s.get(&path).expect(200);
        s.get("Patient/no-such-patient").expect(404);
        s.anonymous().get("Observation").expect(401);
        let total = |query: &str| -> i64 {
            let bundle = auditor.read_json(&format!("AuditEvent?{query}&_total=accurate"));
            bundle["total"]
                .as_i64()
                .unwrap_or_else(|| panic!("{query}: {bundle}"))
        };
        let everything = total("_count=1");
        assert!(everything >= 4, "{everything}");

        let now = chrono::Utc::now();
        for precision in ["%Y", "%Y-%m", "%Y-%m-%d"] {
            let today = now.format(precision).to_string();
            assert!(total(&format!("date={today}")) > 0, "date={today}");
            assert!(total(&format!("date=ge{today}")) > 0, "date=ge{today}");
            assert_eq!(total(&format!("date=lt{today}")), 0, "date=lt{today}");
            assert_eq!(total(&format!("date=gt{today}")), 0, "date=gt{today}");
        }
        assert_eq!(total("date=2001"), 0);
        auditor.get("AuditEvent?date=ap2026").expect(400).outcome();
        auditor.get("AuditEvent?date=soon").expect(400).outcome();

        // A comma: any one of the values. (Reads only: every search here is audited too.)
        let failed = total("subtype=read&outcome=4");
        assert!(failed >= 1, "{failed}");
        let succeeded = total("subtype=read&outcome=0");
        assert!(succeeded >= 1, "{succeeded}");
        assert_eq!(total("subtype=read&outcome=4,0"), failed + succeeded);
        assert_eq!(total("subtype=read&outcome=4,no-such-outcome"), failed);
        let reads = total("subtype=read");
        assert!(reads >= 1);
        assert!(total("subtype=read,create") > reads);
        assert_eq!(
            total(&format!("entity={path},Patient/never-seen")),
            total(&format!("entity={path}"))
        );
        // Two parameters of one name both hold.
        assert_eq!(total("subtype=read&outcome=4,0&outcome=4"), failed);

        // The request without a token: its client is `anonymous`, and it was a search.
        let anonymous = auditor.read_json("AuditEvent?agent=anonymous&_count=50");
        let subtypes: Vec<String> = entries(&anonymous)
            .iter()
            .filter_map(|e| {
                e["resource"]["subtype"][0]["code"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert!(subtypes.contains(&"search-type".to_string()), "{anonymous}");

        // `_count=0`: the total, no entries.
        let counted = auditor.read_json("AuditEvent?_count=0");
        assert!(entries(&counted).is_empty(), "{counted}");
        assert!(counted["total"].as_i64().unwrap() >= everything);
        assert!(link(&counted, "next").is_none(), "{counted}");
    });
}

/// AuditEvent search as FHIR search has it: `POST AuditEvent/_search` with a form body, a
/// `_summary=count`, pages that name themselves in `self`; the trail has no history.
#[test]
fn audit_search_by_post_counts_and_names_its_pages() {
    for_each_backend(|s| {
        let auditor = s.token_for("auditor", ORG_A, "auditor", &[]);
        let auditor = s.with_token(&auditor);
        for _ in 0..3 {
            s.get("Patient/no-such-patient").expect(404);
        }
        let by_get = auditor.read_json("AuditEvent?subtype=read&outcome=4&_total=accurate");
        let posted = auditor
            .send_raw(
                "POST",
                "AuditEvent/_search",
                "application/x-www-form-urlencoded",
                b"subtype=read&outcome=4&_total=accurate",
            )
            .expect(200)
            .json();
        assert_eq!(posted["total"], by_get["total"], "{posted}");
        assert!(by_get["total"].as_i64().unwrap() >= 3, "{by_get}");
        // The trail search's own event holds the query it ran, URL and body together.
        let searches = auditor.read_json("AuditEvent?subtype=search-type&_count=20");
        let queries: Vec<String> = entries(&searches)
            .iter()
            .filter_map(|e| query_of(&e["resource"]))
            .collect();
        assert!(
            queries
                .iter()
                .any(|q| q == "AuditEvent?subtype=read&outcome=4&_total=accurate"),
            "{queries:?}"
        );
        // Unauthenticated: 401 before the body is looked at.
        s.anonymous()
            .send_raw(
                "POST",
                "AuditEvent/_search",
                "application/x-www-form-urlencoded",
                b"subtype=read",
            )
            .expect(401);

        let counted = auditor.read_json("AuditEvent?subtype=read&_summary=count");
        assert!(entries(&counted).is_empty(), "{counted}");
        assert!(counted["total"].as_i64().unwrap() >= 3, "{counted}");
        // Unknown parameters stay refused, as the CapabilityStatement says.
        auditor.get("AuditEvent?subtipe=read").expect(400).outcome();

        let first = auditor.read_json("AuditEvent?subtype=read&_count=1");
        // The first page names itself as first too (a review found it without).
        assert_eq!(link(&first, "first"), link(&first, "self"));
        let next = link(&first, "next").expect("a next page");
        let second = auditor.read_json(&next);
        assert_eq!(link(&second, "self").as_deref(), Some(next.as_str()));
        let start = link(&second, "first").expect("a first link");
        assert!(!start.contains("_page_token"), "{start}");
        assert_eq!(auditor.read_json(&start)["entry"], first["entry"]);

        let id = first["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        for path in [
            "AuditEvent/_history".to_string(),
            format!("AuditEvent/{id}/_history"),
            format!("AuditEvent/{id}/_history/1"),
        ] {
            let refused = auditor.get(&path).expect(405);
            assert!(
                refused.body.contains("no history"),
                "{path}: {}",
                refused.body
            );
            // A well-formed `Allow`, the same as OPTIONS answers (a review found
            // `, OPTIONS` here and `GET, HEAD, OPTIONS` there).
            assert_eq!(refused.header("allow"), Some("OPTIONS"), "{path}");
            let options = s.anonymous().request("OPTIONS", &path, &[], None);
            assert_eq!(options.header("allow"), Some("OPTIONS"), "{path}");
        }
    });
}

/// Requests refused before any handler (no such endpoint, a method the path does not take, a
/// format the server cannot answer in) are on record like every other failure.
#[test]
fn requests_refused_by_routing_or_format_are_audited() {
    for_each_backend(|s| {
        let auditor_token = s.token_for("auditor", ORG_A, "auditor", &[]);
        let auditor = s.with_token(&auditor_token);
        let facility = s.as_default();
        let attempts = [
            ("GET", "Patient/p/_history/1/extra", "routing-404", 404),
            ("DELETE", "AuditEvent/some-event", "routing-405", 405),
            ("GET", "Patient", "format-406", 406),
        ];
        for (method, path, request_id, status) in attempts {
            let who = if path.starts_with("AuditEvent") {
                &auditor
            } else {
                &facility
            };
            let headers = [("X-Request-Id", request_id), ("Accept", "text/csv")];
            let headers = if status == 406 {
                &headers[..]
            } else {
                &headers[..1]
            };
            who.request(method, path, headers, None).expect(status);
        }
        let trail: HashMap<String, Vec<Value>> =
            audit_events(&auditor, "")
                .into_iter()
                .fold(HashMap::new(), |mut by_request, event| {
                    if let Some(id) = request_id_of(&event) {
                        by_request.entry(id).or_default().push(event);
                    }
                    by_request
                });
        for (_, _, request_id, status) in attempts {
            let event = event_for(&trail, request_id);
            let outcome = event["outcome"].as_str().unwrap_or_default();
            assert_eq!(outcome, "4", "{request_id} ({status}): {event}");
        }
        let deletion = event_for(&trail, "routing-405");
        assert_eq!(deletion["action"], "D", "{deletion}");
        assert_eq!(
            client_of(deletion).as_deref(),
            Some("auditor"),
            "{deletion}"
        );
        // A Bundle refused before its type was read is a refused batch, not a create; a
        // refused `$everything` is the search it runs when it succeeds (a review found both
        // recorded otherwise).
        let malformed = json!({"resourceType": "Bundle", "type": "batch", "entry": [{}]});
        for path in ["", "/"] {
            facility
                .request(
                    "POST",
                    path,
                    &[
                        ("X-Request-Id", "refused-bundle"),
                        ("Content-Type", "application/fhir+json"),
                    ],
                    Some(malformed.to_string().into_bytes()),
                )
                .expect(400);
        }
        facility
            .request(
                "GET",
                "Patient/p/$everything?_count=-1",
                &[("X-Request-Id", "refused-everything")],
                None,
            )
            .expect(400);
        let refused = audit_events(&auditor, "outcome=4");
        for (request_id, subtype, action) in [
            ("refused-bundle", "batch", "E"),
            ("refused-everything", "search-type", "E"),
        ] {
            let events: Vec<&Value> = refused
                .iter()
                .filter(|e| request_id_of(e).as_deref() == Some(request_id))
                .collect();
            assert!(!events.is_empty(), "{request_id}");
            for event in events {
                assert_eq!(event["subtype"][0]["code"], subtype, "{event}");
                assert_eq!(event["action"], action, "{event}");
            }
        }
    });
}

// ---- each interaction names its resource, its patient and its consent decision ------------

/// Every event of one request, as an auditor sees them (oldest first).
fn request_events(auditor: &Caller<'_>, request_id: &str) -> Vec<Value> {
    audit_events(auditor, "")
        .into_iter()
        .filter(|e| request_id_of(e).as_deref() == Some(request_id))
        .collect()
}

/// The one REST event and the AuthZ-Consent events of a request.
#[track_caller]
fn rest_and_consent(auditor: &Caller<'_>, request_id: &str) -> (Value, Vec<Value>) {
    let events = request_events(auditor, request_id);
    let (rest, consent): (Vec<Value>, Vec<Value>) = events
        .into_iter()
        .partition(|e| e["type"]["code"] == "rest");
    assert_eq!(rest.len(), 1, "{request_id}: {rest:?}");
    (rest[0].clone(), consent)
}

#[test]
fn deletes_name_the_deleted_resource_and_its_patient() {
    for_each_backend(|s| {
        let net = network(s);
        let (auditor, me) = auditor_and_patient(s);
        let patient = format!("Patient/{PATIENT}");
        let plain = id_of(
            &net.as_a()
                .create(&lab("3D046000001906202", 6.0, "2025-06-01", None)),
        );
        let conditional = id_of(&net.as_a().create(&lab(
            "3D046000001906202",
            6.1,
            "2025-06-02",
            Some("DEL-COND-1"),
        )));
        net.as_a()
            .request("DELETE", &plain, &[("X-Request-Id", "rq-delete")], None)
            .expect(204);
        net.as_a()
            .request(
                "DELETE",
                "Observation?identifier=urn:hosp-a:lab|DEL-COND-1",
                &[("X-Request-Id", "rq-cond-delete")],
                None,
            )
            .expect(204);
        for (request_id, target) in [("rq-delete", &plain), ("rq-cond-delete", &conditional)] {
            let (event, consent) = rest_and_consent(&auditor, request_id);
            assert_shape(&event, "delete", "D", "0", request_id);
            assert_eq!(patient_entities(&event), vec![patient.clone()], "{event}");
            let refs = entity_refs(&event);
            assert!(refs.contains(target), "{request_id}: {refs:?}");
            assert!(consent.is_empty(), "{consent:?}");
        }
        // The auditor finds them by patient and subtype, the patient in their own view, the
        // holder in its own.
        for who in [&auditor, &me, &net.as_a()] {
            let found: Vec<Option<String>> =
                audit_events(who, &format!("patient=Patient/{PATIENT}&subtype=delete"))
                    .iter()
                    .map(request_id_of)
                    .collect();
            assert_eq!(
                found,
                vec![Some("rq-delete".into()), Some("rq-cond-delete".into())]
            );
        }
        // A delete of nothing still names what it was asked for, and no patient.
        net.as_a()
            .request(
                "DELETE",
                "Observation/none",
                &[("X-Request-Id", "rq-delete-none")],
                None,
            )
            .expect(204);
        let (event, _) = rest_and_consent(&auditor, "rq-delete-none");
        assert_eq!(entity_refs(&event), vec!["Observation/none".to_string()]);
        assert!(patient_entities(&event).is_empty(), "{event}");
        // So does a conditional delete that matched nothing (a review found no entity).
        net.as_a()
            .request(
                "DELETE",
                "Observation?identifier=urn:test|nothing-2",
                &[("X-Request-Id", "rq-cond-delete-none")],
                None,
            )
            .expect(204);
        let (event, _) = rest_and_consent(&auditor, "rq-cond-delete-none");
        assert_eq!(
            entity_refs(&event),
            vec!["Observation?identifier=urn:test%7Cnothing-2".to_string()],
            "{event}"
        );
    });
}

/// An attempt on a record names its patient (unless the record is withheld from them) and
/// its holder, refused or failed: the patient sees who tried, the holder sees attempts on its
/// data. An update that moves a record to another patient names both (a review found only the
/// new one named).
#[test]
fn attempts_on_a_record_name_its_patient_and_an_update_both_patients() {
    for_each_backend(|s| {
        let net = network(s);
        let (auditor, me) = auditor_and_patient(s);
        let patient = format!("Patient/{PATIENT}");
        let target = &net.labs[1];
        let json = |value: &Value| Some(value.to_string().into_bytes());
        // B may see the result but not delete it; C may not see it.
        net.as_b()
            .request(
                "DELETE",
                target,
                &[("X-Request-Id", "rq-refused-delete")],
                None,
            )
            .expect(403);
        net.as_c()
            .request("GET", target, &[("X-Request-Id", "rq-refused-read")], None)
            .expect(404);
        for request_id in ["rq-refused-delete", "rq-refused-read"] {
            let (event, _) = rest_and_consent(&auditor, request_id);
            assert_eq!(patient_entities(&event), vec![patient.clone()], "{event}");
        }
        for who in [&me, &net.as_a()] {
            let found: Vec<String> = request_ids(who, &format!("patient={patient}&outcome=4"));
            for request_id in ["rq-refused-delete", "rq-refused-read"] {
                assert!(found.iter().any(|f| f == request_id), "{found:?}");
            }
        }
        // A transaction refused as a whole names the records its entries addressed.
        let mut forged = net.as_a().read_json(target);
        forged["status"] = json!("cancelled");
        let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": forged, "request": {"method": "PUT", "url": target}}]});
        let refused = net.as_b().request(
            "POST",
            "",
            &[
                ("X-Request-Id", "rq-refused-tx"),
                ("Content-Type", "application/fhir+json"),
            ],
            json(&transaction),
        );
        assert_eq!(refused.status, 403, "{}", refused.body);
        let (event, _) = rest_and_consent(&auditor, "rq-refused-tx");
        assert_eq!(patient_entities(&event), vec![patient.clone()], "{event}");
        assert!(entity_refs(&event).contains(target), "{event}");
        // Withheld from the patient: an attempt on it would tell them it exists.
        let mut withheld = lab("3D046000001906202", 7.0, "2025-03-01", None);
        withheld["meta"] = json!({"tag": [{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication", "code": "UNINFORMED"}]});
        let withheld = id_of(&net.as_a().create(&withheld));
        net.as_b()
            .request(
                "DELETE",
                &withheld,
                &[("X-Request-Id", "rq-withheld")],
                None,
            )
            .expect(403);
        let (event, _) = rest_and_consent(&auditor, "rq-withheld");
        assert!(patient_entities(&event).is_empty(), "{event}");
        // Moved to another patient (filed under the wrong one): both are named.
        let mut moved = net
            .as_a()
            .create(&lab("3D046000001906202", 6.5, "2025-03-02", None));
        let path = id_of(&moved);
        moved["subject"] = json!({"reference": format!("Patient/{OTHER_PATIENT}")});
        net.as_a()
            .request(
                "PUT",
                &path,
                &[
                    ("X-Request-Id", "rq-moved"),
                    ("Content-Type", "application/fhir+json"),
                ],
                json(&moved),
            )
            .expect(200);
        let (event, _) = rest_and_consent(&auditor, "rq-moved");
        let mut named = patient_entities(&event);
        named.sort();
        assert_eq!(
            named,
            [patient.clone(), format!("Patient/{OTHER_PATIENT}")],
            "{event}"
        );
    });
}

#[test]
fn conditional_create_matching_another_facilitys_record_is_audited_like_a_read_of_it() {
    for_each_backend(|s| {
        let net = network(s);
        let auditor = s.token_for("auditor", "Organization/x", "auditor", &[]);
        let auditor = s.with_token(&auditor);
        let patient = format!("Patient/{PATIENT}");
        let existing = id_of(&net.as_a().create(&lab(
            "3D046000001906202",
            6.2,
            "2025-06-03",
            Some("IFNONE-1"),
        )));
        // The same lab again, with If-None-Exist naming its identifier.
        let post_again = |who: &Caller<'_>, request_id: &str| {
            let body = lab("3D046000001906202", 6.2, "2025-06-03", Some("IFNONE-1"));
            who.request(
                "POST",
                "Observation",
                &[
                    ("X-Request-Id", request_id),
                    ("If-None-Exist", "identifier=urn:hosp-a:lab|IFNONE-1"),
                    ("Content-Type", crate::support::FHIR_JSON),
                ],
                Some(serde_json::to_vec(&body).unwrap()),
            )
        };
        // B (consented by P) posts it and is answered A's.
        let found = post_again(&net.as_b(), "rq-cond-create").expect(200).json();
        assert_eq!(id_of(&found), existing);
        let (event, consent) = rest_and_consent(&auditor, "rq-cond-create");
        assert_shape(&event, "create", "C", "0", "conditional create");
        assert_eq!(patient_entities(&event), vec![patient.clone()], "{event}");
        assert!(
            entity_refs(&event)
                .iter()
                .any(|r| r.starts_with(&format!("{existing}/_history/"))),
            "{event}"
        );
        assert_eq!(consent.len(), 1, "{consent:?}");
        assert_eq!(consent[0]["outcome"], "0", "{}", consent[0]);
        assert_eq!(patient_entities(&consent[0]), vec![patient.clone()]);
        assert!(
            entity_refs(&consent[0]).contains(&existing),
            "{}",
            consent[0]
        );
        assert!(
            consent[0].to_string().contains("Consent/consent-pat-p"),
            "{}",
            consent[0]
        );
        // A's view (the holder) shows both.
        let for_a: Vec<Value> = audit_events(&net.as_a(), "")
            .into_iter()
            .filter(|e| request_id_of(e).as_deref() == Some("rq-cond-create"))
            .collect();
        assert_eq!(for_a.len(), 2, "{for_a:?}");
        // A facility's conditional create matching its own record leaves no decision.
        post_again(&net.as_a(), "rq-own-cond-create").expect(200);
        let (event, consent) = rest_and_consent(&auditor, "rq-own-cond-create");
        assert_eq!(patient_entities(&event), vec![patient]);
        assert!(consent.is_empty(), "{consent:?}");
    });
}

#[test]
fn post_search_records_the_form_body_parameters_it_searched() {
    for_each_backend(|s| {
        let net = network(s);
        let auditor = s.token_for("auditor", "Organization/x", "auditor", &[]);
        let auditor = s.with_token(&auditor);
        let form = |who: &Caller<'_>, path: &str, request_id: &str, body: &str| {
            who.request(
                "POST",
                path,
                &[
                    ("X-Request-Id", request_id),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ],
                Some(body.as_bytes().to_vec()),
            )
            .expect(200)
        };
        form(
            &net.as_a(),
            "Observation/_search?_count=5",
            "rq-post-search",
            &format!("patient={PATIENT}&code=urn%3Aoid%3A1.2.392.200119.4.504%7C3D046000001906202"),
        );
        form(
            &net.as_a(),
            "_search",
            "rq-post-system-search",
            "_type=Observation,Condition",
        );
        let (event, _) = rest_and_consent(&auditor, "rq-post-search");
        assert_shape(&event, "search-type", "E", "0", "POST _search");
        assert_eq!(
            query_of(&event).as_deref(),
            Some(
                format!(
                    "Observation?_count=5&patient={PATIENT}\
                     &code=urn:oid:1.2.392.200119.4.504%7C3D046000001906202"
                )
                .as_str()
            ),
            "{event}"
        );
        assert_eq!(patient_entities(&event), vec![format!("Patient/{PATIENT}")]);
        let (event, _) = rest_and_consent(&auditor, "rq-post-system-search");
        assert_eq!(
            query_of(&event).as_deref(),
            Some("?_type=Observation%2CCondition"),
            "{event}"
        );
        // A refused one too (a review found only its URL recorded).
        net.as_a()
            .request(
                "POST",
                "Observation/_search",
                &[
                    ("X-Request-Id", "rq-post-search-refused"),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Prefer", "handling=strict"),
                ],
                Some(format!("patient={PATIENT}&bogus=1").into_bytes()),
            )
            .expect(400);
        let (event, _) = rest_and_consent(&auditor, "rq-post-search-refused");
        assert_eq!(event["outcome"], "4", "{event}");
        let recorded = query_of(&event).unwrap_or_default();
        assert!(recorded.contains("bogus=1"), "{recorded} / {event}");
    });
}

#[test]
fn history_of_another_facilitys_data_leaves_the_consent_decision_per_patient() {
    for_each_backend(|s| {
        let net = network(s);
        let auditor = s.token_for("auditor", "Organization/x", "auditor", &[]);
        let auditor = s.with_token(&auditor);
        let patient = format!("Patient/{PATIENT}");
        let history = |who: &Caller<'_>, path: &str, request_id: &str| {
            who.request("GET", path, &[("X-Request-Id", request_id)], None)
                .expect(200);
        };
        let instance = format!("{}/_history", net.labs[0]);
        history(&net.as_b(), &instance, "rq-b-instance-history");
        history(&net.as_b(), "Observation/_history", "rq-b-type-history");
        history(&net.as_b(), "_history", "rq-b-system-history");
        history(&net.as_a(), &instance, "rq-a-own-history");
        for request_id in [
            "rq-b-instance-history",
            "rq-b-type-history",
            "rq-b-system-history",
        ] {
            let (event, consent) = rest_and_consent(&auditor, request_id);
            assert_shape(&event, "history", "R", "0", request_id);
            let mut decided: Vec<Vec<String>> = consent.iter().map(patient_entities).collect();
            decided.sort();
            let before = decided.len();
            decided.dedup();
            assert_eq!(
                before,
                decided.len(),
                "{request_id}: one per patient: {consent:?}"
            );
            assert!(
                decided.contains(&vec![patient.clone()]),
                "{request_id}: {consent:?}"
            );
            let about_p = consent
                .iter()
                .find(|e| patient_entities(e) == vec![patient.clone()])
                .unwrap();
            assert_eq!(about_p["outcome"], "0", "{about_p}");
            assert!(
                about_p.to_string().contains("Consent/consent-pat-p"),
                "{about_p}"
            );
            // Every patient decided on is one the page showed.
            for patients in &decided {
                for p in patients {
                    assert!(patient_entities(&event).contains(p), "{event}");
                }
            }
            // The holder sees the decision in its view.
            assert!(
                audit_events(&net.as_a(), "subtype=AuthZ-Consent")
                    .iter()
                    .any(|e| request_id_of(e).as_deref() == Some(request_id)),
                "{request_id}"
            );
        }
        let (_, consent) = rest_and_consent(&auditor, "rq-b-instance-history");
        assert_eq!(consent.len(), 1, "{consent:?}");
        // The Consent that decided is an entity of its decisions: an auditor finds the
        // decisions it made by `entity=` (beside the writes of the Consent itself).
        let by_consent = audit_events(&auditor, "entity=Consent/consent-pat-p");
        assert!(
            by_consent
                .iter()
                .any(|e| e["subtype"][0]["code"] == "AuthZ-Consent"
                    && request_id_of(e).as_deref() == Some("rq-b-instance-history")),
            "{by_consent:?}"
        );
        for event in &by_consent {
            let consent = "Consent/consent-pat-p";
            assert!(
                entity_refs(event)
                    .iter()
                    .any(|r| r == consent || r.starts_with(&format!("{consent}/_history/"))),
                "{event}"
            );
        }
        // One's own data: no decision.
        let (_, consent) = rest_and_consent(&auditor, "rq-a-own-history");
        assert!(consent.is_empty(), "{consent:?}");
    });
}

#[test]
fn reading_one_audit_event_is_recorded_as_a_read_naming_it() {
    for_each_backend(|s| {
        let net = network(s);
        let auditor = s.token_for("auditor", "Organization/x", "auditor", &[]);
        let auditor = s.with_token(&auditor);
        net.as_a()
            .request(
                "GET",
                &net.labs[0],
                &[("X-Request-Id", "rq-some-read")],
                None,
            )
            .expect(200);
        let (read, _) = rest_and_consent(&auditor, "rq-some-read");
        let id = read["id"].as_str().expect("event id").to_string();
        let shown = auditor
            .request(
                "GET",
                &format!("AuditEvent/{id}"),
                &[("X-Request-Id", "rq-audit-read")],
                None,
            )
            .expect(200)
            .json();
        assert_eq!(shown["id"], json!(id));
        auditor
            .request(
                "GET",
                "AuditEvent/no-such-event",
                &[("X-Request-Id", "rq-audit-read-missing")],
                None,
            )
            .expect(404);
        let (event, _) = rest_and_consent(&auditor, "rq-audit-read");
        assert_shape(&event, "read", "R", "0", "AuditEvent read");
        assert_eq!(entity_refs(&event), vec![format!("AuditEvent/{id}")]);
        assert_eq!(query_of(&event), None, "{event}");
        let (event, _) = rest_and_consent(&auditor, "rq-audit-read-missing");
        assert_shape(&event, "read", "R", "4", "AuditEvent read of nothing");
        assert_eq!(
            entity_refs(&event),
            vec!["AuditEvent/no-such-event".to_string()]
        );
        // A refused look at the trail is recorded as the failed interaction too.
        let me = patient_app(s);
        s.with_token(&me)
            .request(
                "GET",
                &format!("AuditEvent?patient=Patient/{OTHER_PATIENT}"),
                &[("X-Request-Id", "rq-audit-refused")],
                None,
            )
            .expect(403);
        let (event, _) = rest_and_consent(&auditor, "rq-audit-refused");
        assert_shape(&event, "search-type", "E", "4", "refused AuditEvent search");
        // A malformed id is a malformed request (400), as for every other type.
        for malformed in ["AuditEvent/%FF", "AuditEvent/a%20b"] {
            let outcome = auditor.get(malformed).expect(400).outcome();
            assert!(
                outcome.to_string().contains("not a valid FHIR id"),
                "{malformed}: {outcome}"
            );
        }
    });
}

#[test]
fn redacted_system_search_keeps_the_types_it_searched() {
    for_each_backend(|s| {
        let net = network(s);
        let me = patient_app(s);
        let me = s.with_token(&me);
        net.as_a().create(&json!({
            "resourceType": "Condition",
            "subject": {"reference": format!("Patient/{PATIENT}")},
            "code": {"text": "hypertension"},
        }));
        net.as_b()
            .request(
                "GET",
                "?_type=Condition",
                &[("X-Request-Id", "rq-system-search")],
                None,
            )
            .expect(200);
        for (view, events) in [
            ("patient", audit_events(&me, "")),
            ("holder", audit_events(&net.as_a(), "")),
        ] {
            let search = events
                .iter()
                .find(|e| {
                    request_id_of(e).as_deref() == Some("rq-system-search")
                        && e["type"]["code"] == "rest"
                })
                .unwrap_or_else(|| panic!("{view}: the search is not in the view"));
            let queries: Vec<&Value> = search["entity"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e.get("query"))
                .collect();
            assert_eq!(queries.len(), 1, "{view}: {search}");
            assert_eq!(query_of(search).as_deref(), Some("Condition"), "{view}");
        }
    });
}

#[test]
fn match_names_its_query_and_the_consent_decision_for_another_facilitys_patient() {
    for_each_backend(|s| {
        let net = network(s);
        let auditor = s.token_for("auditor", "Organization/x", "auditor", &[]);
        let auditor = s.with_token(&auditor);
        let patient = format!("Patient/{PATIENT}");
        let body = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
            "resourceType": "Patient",
            "name": [{"family": "Yamada", "given": ["Taro"]}],
            "birthDate": "1958-03-12",
            "gender": "male",
        }}]});
        let matched = net
            .as_b()
            .request(
                "POST",
                "Patient/$match",
                &[
                    ("X-Request-Id", "rq-match"),
                    ("Content-Type", crate::support::FHIR_JSON),
                ],
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .expect(200)
            .json();
        assert!(
            entries(&matched)
                .iter()
                .any(|e| e["resource"]["id"] == PATIENT),
            "{matched}"
        );
        net.as_b()
            .request(
                "GET",
                "Patient?family=Yamada",
                &[("X-Request-Id", "rq-patient-search")],
                None,
            )
            .expect(200);
        let (event, consent) = rest_and_consent(&auditor, "rq-match");
        assert_eq!(event["subtype"][0]["code"], "operation", "{event}");
        assert_eq!(patient_entities(&event), vec![patient.clone()], "{event}");
        let query = query_of(&event).expect("entity.query");
        assert!(query.starts_with("Patient/$match?"), "{query}");
        assert!(query.contains("birthdate=1958-03-12"), "{query}");
        let (_, searched) = rest_and_consent(&auditor, "rq-patient-search");
        for (what, decisions) in [("$match", &consent), ("search", &searched)] {
            assert_eq!(decisions.len(), 1, "{what}: {decisions:?}");
            assert_eq!(patient_entities(&decisions[0]), vec![patient.clone()]);
            assert_eq!(decisions[0]["outcome"], "0");
            assert!(
                decisions[0].to_string().contains("Consent/consent-pat-p"),
                "{what}: {}",
                decisions[0]
            );
        }
        // The holder sees the match and its decision.
        let for_a = audit_events(&net.as_a(), "")
            .into_iter()
            .filter(|e| request_id_of(e).as_deref() == Some("rq-match"))
            .count();
        assert_eq!(for_a, 2);
    });
}

/// SQLite's read-audit journal with one frame damaged and acknowledged reads after it: they
/// were silently dropped (reading stopped at the bad frame) and `audit verify` passed. Now
/// verify fails naming the damage, and a server started on the database adds the reads after
/// it and says the journal was damaged.
#[test]
fn a_damaged_journal_frame_loses_no_read_after_it_and_is_reported() {
    let mut s = Server::start(Backend::Sqlite);
    let patient = s.create(&json!({"resourceType": "Patient", "gender": "female"}));
    let path = format!("Patient/{}", patient["id"].as_str().unwrap());
    let url = s.database_url().to_string();
    let mut journaled = 0;
    for _attempt in 0..5 {
        for _ in 0..6 {
            s.get(&path).expect(200);
        }
        // At once: the journal's events reach the trail in batches every two seconds.
        s.kill9();
        let before = verify(&url);
        assert!(before.ok, "{}", before.stderr);
        journaled = before
            .stdout
            .split("read-audit journal: ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        if journaled >= 4 {
            break;
        }
        // The ingester was faster than the kill: nothing left to damage; read again.
        s = s.restart();
    }
    assert!(
        journaled >= 4,
        "the reads reached the trail before every kill: no journal left to damage"
    );
    let journal = format!("{}-audit-journal", url.trim_start_matches("sqlite:"));
    let mut bytes = std::fs::read(&journal).unwrap();
    let first_len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let second = 36 + first_len;
    bytes[second + 36 + 5] ^= 0x01;
    std::fs::write(&journal, &bytes).unwrap();
    let damaged = verify(&url);
    assert!(!damaged.ok, "damage went unnoticed:\n{}", damaged.stdout);
    assert!(damaged.stderr.contains("DAMAGED"), "{}", damaged.stderr);
    let s = s.restart();
    s.get("metadata").expect(200);
    assert!(
        s.stderr_tail().contains("audit journal damaged"),
        "{}",
        s.stderr_tail()
    );
    // Every read but the damaged frame's is in the trail (a search of the trail waits for
    // the journal's events).
    let auditor = s.token_for("auditor", ORG_A, "auditor", &[]);
    let reads = s
        .with_token(&auditor)
        .get(&format!(
            "AuditEvent?entity={path}&subtype=read&_total=accurate"
        ))
        .expect(200)
        .json();
    assert!(reads["total"].as_i64().unwrap_or(0) >= 5, "{reads}");
    let after = verify(&url);
    assert!(after.ok, "{}", after.stderr);
}

/// A review found: `GET [base]?_type=AuditEvent`, `_has:AuditEvent:…` and
/// `_revinclude=AuditEvent:…` answered as if no access had ever been recorded (the trail is
/// kept in its own tables, which stored-resource searches do not join), while the same
/// search in a batch was refused. Each is refused with 400, pointing at [base]/AuditEvent.
#[test]
fn searches_of_stored_resources_do_not_pretend_the_trail_is_empty() {
    for_each_backend(|s| {
        for path in [
            "?_type=AuditEvent",
            "Patient?_has:AuditEvent:patient:action=R",
            "Patient?_revinclude=AuditEvent:patient",
            "Observation?_revinclude=AuditEvent:entity",
            "Patient/p-1/AuditEvent",
            "Patient/p-1/$everything?_type=AuditEvent",
        ] {
            let refused = s.get(path).expect(400);
            assert!(
                refused.body.contains("[base]/AuditEvent"),
                "{path}: {}",
                refused.body
            );
        }
        // Several types at once still simply find no AuditEvent among stored resources.
        s.get("?_type=Patient,AuditEvent").expect(200);
    });
}

/// A review found: a batch whose own AuditEvent could not be written answered 503 "try again
/// later" although its writes had committed with their events, so a retry stored them twice.
/// Now it answers 200 with each write's answer, and 503 in the entries whose data cannot be
/// returned without its record. (PostgreSQL: on SQLite the batch's event is journaled first.)
#[test]
fn a_batch_whose_own_event_fails_keeps_its_committed_writes_answered() {
    crate::support::for_each_backend(|server| {
        if server.database_url().starts_with("sqlite:") {
            return;
        }
        let created = server.create(&json!({"resourceType": "Patient", "gender": "female"}));
        let read = format!("Patient/{}", created["id"].as_str().unwrap());
        let store = open_store(server.database_url());
        exec(
            &store,
            &[
                sql("CREATE FUNCTION refuse_batch() RETURNS trigger AS $$ BEGIN IF NEW.subtype = 'batch' THEN RAISE EXCEPTION 'audit storage down'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"),
                sql("CREATE TRIGGER refuse_batch BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_batch()"),
            ],
        );
        let id = format!("kept-{}", uuid::Uuid::new_v4().simple());
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Patient", "id": id},
             "request": {"method": "PUT", "url": format!("Patient/{id}")}},
            {"request": {"method": "GET", "url": read}}]});
        let answer = server.post("", &bundle);
        exec(
            &store,
            &[
                sql("DROP TRIGGER refuse_batch ON audit_events"),
                sql("DROP FUNCTION refuse_batch()"),
            ],
        );
        let answer = answer.expect(200).json();
        let entries = answer["entry"].as_array().unwrap();
        assert!(
            entries[0]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("201"),
            "{answer}"
        );
        assert!(
            entries[1]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("503"),
            "{answer}"
        );
        assert!(entries[1].get("resource").is_none(), "{answer}");
        assert!(
            !answer.to_string().contains("storage down"),
            "no database words: {answer}"
        );
        server.get(&format!("Patient/{id}")).expect(200);
    });
}

/// A review found: while the trail could not be written, `/auth/token` answered 503 with a
/// FHIR OperationOutcome, which an OAuth client does not read. It answers the OAuth error
/// `temporarily_unavailable` (and issues no token). PostgreSQL: on SQLite the login event
/// reaches the journal.
#[test]
fn the_token_endpoint_answers_an_oauth_error_when_the_trail_is_down() {
    crate::support::for_each_backend(|server| {
        if server.database_url().starts_with("sqlite:") {
            return;
        }
        let pem =
            crate::smart_auth::register_with_key(server, "down-ehr", "Organization/clinic-down");
        let own = server.base.trim_end_matches("/fhir").to_string() + "/auth/token";
        let store = open_store(server.database_url());
        exec(
            &store,
            &[
                sql("CREATE FUNCTION refuse_login() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit storage down'; END $$ LANGUAGE plpgsql"),
                sql("CREATE TRIGGER refuse_login BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_login()"),
            ],
        );
        let answer = crate::smart_auth::ask(
            server,
            &crate::smart_auth::assertion(&pem, "down-ehr", &own, "down-1"),
            &[],
        );
        let status = answer.status().as_u16();
        let body: Value = answer.json().unwrap_or_default();
        exec(
            &store,
            &[
                sql("DROP TRIGGER refuse_login ON audit_events"),
                sql("DROP FUNCTION refuse_login()"),
            ],
        );
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "temporarily_unavailable", "{body}");
        assert!(
            !body.to_string().contains("storage down"),
            "no database words: {body}"
        );
        assert!(body.get("access_token").is_none());
    });
}

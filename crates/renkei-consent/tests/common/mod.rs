//! Builders shared by the table-driven tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use renkei_consent::*;
use serde_json::{json, Value};

pub const HOSP_A: &str = "Organization/hosp-a";
pub const HOSP_B: &str = "Organization/hosp-b";
pub const CLINIC: &str = "Organization/clinic";
pub const DR_X: &str = "Practitioner/dr-x";
pub const DR_Y: &str = "Practitioner/dr-y";
pub const PAT: &str = "p1";
pub const OTHER_PAT: &str = "p2";

/// ms of an RFC 3339 timestamp.
pub fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// 2026-01-01T12:00+09:00, the default "now" of the tables.
pub fn now() -> i64 {
    ms("2026-01-01T12:00:00+09:00")
}

pub fn coding(system: &str, code: &str) -> Value {
    json!({"system": system, "code": code})
}

pub fn purpose(code: &str) -> Value {
    coding(ACT_REASON_SYSTEM, code)
}

pub fn class(res_type: &str) -> Value {
    coding(RESOURCE_TYPES_SYSTEM, res_type)
}

pub fn psy() -> Value {
    coding(ACT_CODE_SYSTEM, "PSY")
}

/// An actor with role IRCP.
pub fn ircp(reference: &str) -> Value {
    json!({
        "role": {"coding": [coding(PARTICIPATION_TYPE_SYSTEM, "IRCP")]},
        "reference": {"reference": reference}
    })
}

/// An active patient-privacy Consent of `patient` with `provision`.
pub fn consent(id: &str, patient: &str, provision: Value) -> Value {
    consent_with_status(id, patient, "active", provision)
}

pub fn consent_with_status(id: &str, patient: &str, status: &str, provision: Value) -> Value {
    let mut consent = json!({
        "resourceType": "Consent",
        "id": id,
        "status": status,
        "scope": {"coding": [coding(CONSENT_SCOPE_SYSTEM, SCOPE_PATIENT_PRIVACY)]},
        "category": [{"coding": [coding("http://loinc.org", "59284-0")]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "dateTime": "2025-01-15T10:00:00+09:00",
        "policy": [{"uri": "http://renkei.example.jp/policy/opt-in"}]
    });
    if !provision.is_null() {
        consent["provision"] = provision;
    }
    consent
}

/// A facility principal asking for TREAT.
pub fn facility(org: &str) -> Principal {
    Principal {
        facility: org.to_string(),
        practitioner: None,
        role: Role::Facility,
        patient: None,
        purpose: Purpose::Treat,
        break_glass: false,
    }
}

pub fn with_practitioner(mut p: Principal, practitioner: &str) -> Principal {
    p.practitioner = Some(practitioner.to_string());
    p
}

pub fn with_purpose(mut p: Principal, code: &str) -> Principal {
    p.purpose = Purpose::from_code(code);
    p
}

pub fn break_glass(mut p: Principal) -> Principal {
    p.purpose = Purpose::ETreat;
    p.break_glass = true;
    p
}

pub fn patient_user(patient: Option<&str>) -> Principal {
    Principal {
        facility: CLINIC.to_string(),
        practitioner: None,
        role: Role::Patient,
        patient: patient.map(str::to_string),
        purpose: Purpose::Other("PATRQT".to_string()),
        break_glass: false,
    }
}

pub fn staff(role: Role) -> Principal {
    Principal {
        role,
        ..facility(HOSP_A)
    }
}

/// Patient data of `patient` held by `custodian`, dated 2025-06-01.
pub fn data(res_type: &str, id: &str, custodian: &str, patient: &str) -> ResourceFacts {
    ResourceFacts {
        res_type: res_type.to_string(),
        custodian: Some(custodian.to_string()),
        patient_id: Some(patient.to_string()),
        security_labels: Vec::new(),
        tags: Vec::new(),
        clinical_date_ms: Some(ms("2025-06-01T09:00:00+09:00")),
        clinical_end_ms: None,
        reference: format!("{res_type}/{id}"),
        references: vec![format!("Patient/{patient}")],
        follows: Vec::new(),
    }
}

/// An Observation of PAT held by HOSP_A.
pub fn obs(id: &str) -> ResourceFacts {
    data("Observation", id, HOSP_A, PAT)
}

pub fn labelled(mut r: ResourceFacts, system: &str, code: &str) -> ResourceFacts {
    r.security_labels
        .push((system.to_string(), code.to_string()));
    r
}

pub fn tagged(mut r: ResourceFacts, code: &str) -> ResourceFacts {
    r.tags
        .push((PRIVACY_TAG_SYSTEM.to_string(), code.to_string()));
    r
}

pub fn dated(mut r: ResourceFacts, date: Option<&str>) -> ResourceFacts {
    r.clinical_date_ms = date.map(ms);
    r
}

/// `r` as care from `start` to `end` (either absent; an open period ends at `i64::MAX`).
pub fn spanning(mut r: ResourceFacts, start: Option<&str>, end: Option<&str>) -> ResourceFacts {
    r.clinical_date_ms = start.map(ms);
    r.clinical_end_ms = Some(end.map_or(i64::MAX, ms));
    r
}

/// `r` as a record about the patient of `target` (a Binary's `securityContext`).
pub fn following(mut r: ResourceFacts, target: &str) -> ResourceFacts {
    r.references.push(target.to_string());
    r.follows.push(target.to_string());
    r
}

pub fn referencing(mut r: ResourceFacts, target: &str) -> ResourceFacts {
    r.references.push(target.to_string());
    r
}

pub fn directory(res_type: &str, id: &str) -> ResourceFacts {
    ResourceFacts {
        res_type: res_type.to_string(),
        custodian: None,
        patient_id: None,
        reference: format!("{res_type}/{id}"),
        ..Default::default()
    }
}

/// This server's base, as the gateway sets it at start-up (once per test process): absolute
/// references under it name local resources.
pub fn with_local_base() {
    assert!(renkei_search::set_local_bases(&[
        "https://renkei.example.jp/fhir".into()
    ]));
}

/// Compiles `consents` (panicking on error) and concatenates their rules.
pub fn compile_all(consents: &[Value]) -> Vec<Rule> {
    consents
        .iter()
        .flat_map(|c| compile(c).unwrap_or_else(|e| panic!("compile {}: {e}", c["id"])))
        .collect()
}

/// The whole pipeline: compile, look up whether the patient has consent, decide.
pub fn run(
    consents: &[Value],
    principal: &Principal,
    resource: &ResourceFacts,
    policy: &Policy,
    now_ms: i64,
) -> Decision {
    let rules = compile_all(consents);
    let has_consent = resource
        .patient_id
        .as_deref()
        .is_some_and(|p| patient_has_consent(&rules, p));
    decide(principal, resource, &rules, has_consent, policy, now_ms)
}

pub fn consent_permit(id: &str) -> Decision {
    Decision::permit(Reason::ConsentPermit {
        consent_id: format!("Consent/{id}"),
    })
}

pub fn consent_deny(id: &str) -> Decision {
    Decision::deny(Reason::ConsentDeny {
        consent_id: format!("Consent/{id}"),
    })
}

pub fn no_permit() -> Decision {
    Decision::deny(Reason::NoConsentPermit)
}

pub fn implicit(permit: bool) -> Decision {
    let reason = Reason::ImplicitPolicy { permit };
    if permit {
        Decision::permit(reason)
    } else {
        Decision::deny(reason)
    }
}

pub const OPT_IN: Policy = Policy {
    implicit: Implicit::OptIn,
    patient_deny_holds_on_break_glass: false,
};
pub const OPT_OUT: Policy = Policy {
    implicit: Implicit::OptOut,
    patient_deny_holds_on_break_glass: false,
};
pub const OPT_IN_DENY_HOLDS: Policy = Policy {
    implicit: Implicit::OptIn,
    patient_deny_holds_on_break_glass: true,
};

//! # Renkei consent model
//!
//! Pure, table-tested consent logic for the Renkei gateway: it turns FHIR R4 `Consent`
//! resources (IHE PCF shaped) into flat **rules** a database table can hold, and defines the
//! **decision** — who may see which stored resource — that the store mirrors as a SQL
//! predicate. No IO, no async, no database: the reference semantics live here.
//!
//! ## In plain words
//!
//! - **Own data is always visible.** Every stored resource has a custodian, the facility that
//!   wrote it. That facility always sees it, whatever the consents and tags.
//! - **Directory data is shared.** Resources that are not about a patient (Organization,
//!   Practitioner, PractitionerRole, Medication, Endpoint, …) are visible to every member.
//! - **Another facility's patient data needs consent.** A patient's `Consent` (status
//!   `active`, scope `patient-privacy`) lists who may see what: recipients (`actor` with role
//!   `IRCP`: an Organization or a Practitioner; no actor = every member facility), purposes
//!   (`TREAT`, …; none = any), a validity `period`, and optionally which data: resource types
//!   (`class`), security labels (`securityLabel`, e.g. `PSY`), a clinical-date window
//!   (`dataPeriod`) and specific resources (`data`).
//! - **Exceptions.** A provision may contain nested provisions (one level) that make
//!   exceptions: "permit everyone, except psychiatric data" is a `permit` with a nested `deny`
//!   on label `PSY`. A nested provision takes its parent's constraints for everything it
//!   does not state itself.
//! - **Deny wins.** When several consents of one patient disagree, a deny overrides a permit.
//! - **No consent.** For a patient with no consent in force, the network's implicit policy
//!   decides: opt-in (deny; the Japanese default) or opt-out (permit). A patient who has a
//!   consent is governed by it alone: what it does not permit is denied, in both policies.
//! - **Withdrawal** is setting the Consent to `inactive` (or writing a deny Consent). A
//!   Consent that is not `active` grants and denies nothing, from the very next request.
//! - **Break-glass.** A client allowed to, asking for purpose `ETREAT` with a reason, sees the
//!   patient's data regardless of consent. The network may configure that a patient's explicit
//!   deny holds even then.
//! - **Privacy tags** (national service, `meta.tag` system [`PRIVACY_TAG_SYSTEM`]):
//!   `UNDELIVERED` is never shown to another facility (not even under break-glass) nor to the
//!   patient; `UNINFORMED` (diagnosis not yet explained) is hidden from the patient only.
//! - **Roles.** Auditors and administrators see nothing through the clinical API (not even
//!   directory data). A patient sees only their own compartment (their Patient resource and
//!   the data about them), minus the two privacy tags.
//!
//! ## Compilation: [`compile`]
//!
//! One Consent becomes a list of [`Rule`]s, each a flat row. Lists are expanded: one rule
//! per combination of recipient × purpose × class × security label × data item, so a
//! provision with two actors and two purposes gives four rules. Alternatives within a list
//! are OR; different constraints are AND.
//!
//! - Only `status = active` with `scope` = `patient-privacy`
//!   (`http://terminology.hl7.org/CodeSystem/consentscope`) compiles to rules; any other
//!   Consent compiles to no rules (and is not validated further, so it can always be
//!   withdrawn). An in-force Consent always yields at least one rule, so "the patient has a
//!   consent" is exactly "the rule table has a row for the patient".
//! - `patient.reference` must be `Patient/<id>` (relative, versioned or absolute URL);
//!   `rule.patient_id` is the plain id.
//! - Root `provision.type`: `permit` or `deny`; **absent means deny** (R4 leaves the root's
//!   meaning to the policy; Renkei fails closed). A Consent without `provision` is a deny of
//!   everything. Nested `type` absent means the opposite of the root's.
//! - `period` → `valid_from_ms` / `valid_to_ms`; `dataPeriod` → `data_from_ms` /
//!   `data_to_ms`. Bounds are inclusive and honour precision: `end = 2030-01-14` lasts to
//!   2030-01-14T23:59:59.999. Values without a time zone are in JST (+09:00), see
//!   [`fhir_time_range`].
//! - `actor`: role `IRCP` (`http://terminology.hl7.org/CodeSystem/v3-ParticipationType`)
//!   referencing `Organization/X` → `actor_org`, or `Practitioner/Y` →
//!   `actor_practitioner`. Several actors are alternatives (one rule each).
//! - `purpose`: v3 ActReason codes → `purpose`. `class`: codes of
//!   `http://hl7.org/fhir/resource-types` → `class_type`. `securityLabel` (system, code) →
//!   `security_label`.
//! - `data`: meaning `instance` → `data_reference` (that resource); `related` and
//!   `dependents` → `data_related` (that resource and every resource referencing it, e.g. all
//!   data of an Encounter; R4's `related` strictly means the other direction, but "data
//!   related to an encounter" is what consents mean by it); `authoredby` an Organization →
//!   `data_custodian` (data held by that facility: "everything from one facility").
//! - Nested provisions (one level): each becomes rules with `nested = true`. For each of
//!   recipients, purposes, period, classes, labels, dataPeriod and data the child's own value
//!   **replaces** the parent's when stated, and the parent's is **inherited** otherwise.
//!
//! Strict by design: what cannot be enforced exactly is an error, never silently ignored —
//! ignoring an element could widen a permit or narrow a deny. Errors: actor roles other than
//! IRCP, recipients other than Organization/Practitioner, purposes that are not a v3
//! ActReason purpose of use ([`PURPOSE_OF_USE_CODES`]), class systems other than resource types, `provision.code`, `action` that
//! governs none of access/use/disclose, `authoredby` a non-Organization, a `data` without
//! meaning, invalid dates, provisions nested two levels deep. The gateway rejects such a
//! Consent when it is written (422).
//!
//! ## Matching: [`Rule::matches`]
//!
//! A rule matches (principal P at time T, resource R) iff all of:
//!
//! - `rule.patient_id = R.patient_id`
//! - `actor_org` is None or = P.facility
//! - `actor_practitioner` is None or = P.practitioner (a principal without practitioner
//!   never matches a practitioner rule)
//! - `purpose` is None or = P.purpose code, or `TREAT` when P asks for `ETREAT`
//!   ([`Purpose::is_covered_by`]; no other code hierarchy)
//! - `valid_from_ms` is None or T ≥ it; `valid_to_ms` is None or T ≤ it
//! - `class_type` is None or = R.res_type
//! - `security_label` is None or R carries that (system, code) in `meta.security`
//! - data period (both bounds None), or for a **permit** R.clinical_date is known and within
//!   the stated bounds, for a **deny** R's care `[clinical_date, clinical_end]` overlaps them
//!   (an end-only period began whenever; a resource with no date at all does **not** match a
//!   rule with a data period)
//! - `data_reference` is None or = R.reference (`Type/id`)
//! - `data_related` is None or = R.reference or R references it
//! - `data_custodian` is None or = R.custodian
//! - except that a **deny** rule's `class_type`, data period, `data_reference` and
//!   `data_related` always hold for a stored Bundle (R.res_type = `Bundle`, a document): it
//!   holds records of any type, date and reference, one of which may be what is refused
//!
//! ## Decision: [`decide`]
//!
//! A deny rule is **effective** unless it is a root rule (`nested = false`) and a *nested*
//! permit rule of the *same consent* also matches (the exception of a "deny except …"
//! consent). Steps, first applicable wins:
//!
//! 1. Auditor/Admin: denied (`RoleHasNoClinicalAccess`), directory data included.
//! 2. Patient: own compartment permitted (`PatientSelf`) unless tagged `UNINFORMED` or
//!    `UNDELIVERED` (`PrivacyTag`); anything else, directory data included, denied
//!    (`NotOwnCompartment`).
//! 3. R.custodian = P.facility → permit (`OwnData`).
//! 4. R has no patient → permit (`NotPatientData`).
//! 5. R tagged `UNDELIVERED` → deny (`PrivacyTag`).
//! 6. An effective deny matches → deny (`ConsentDeny`), unless break-glass and the policy
//!    lets break-glass override patient denies.
//! 7. Break-glass → permit (`BreakGlass`, naming any overridden deny).
//! 8. A permit matches → permit (`ConsentPermit`).
//! 9. No rule at all for the patient → implicit policy (`ImplicitPolicy`).
//! 10. Deny (`NoConsentPermit`).
//!
//! ## The same decision in SQL (facility role)
//!
//! With a `consent_rule` table holding [`Rule`]s, `:fac`, `:prac`, `:purpose`, `:now`, `:bg`
//! (break-glass), `:bg_overrides_deny` (break-glass and not
//! `patient_deny_holds_on_break_glass`) and `:implicit_permit` bound per request, a row R is
//! visible iff:
//!
//! ```text
//! R.custodian = :fac
//! OR R.patient_id IS NULL
//! OR ( NOT tagged(R, 'UNDELIVERED')
//!      AND ( :bg_overrides_deny OR NOT EXISTS (
//!              SELECT 1 FROM consent_rule d WHERE d.effect = 'deny' AND MATCH(d, R)
//!                AND NOT ( d.nested = false AND EXISTS (
//!                  SELECT 1 FROM consent_rule e WHERE e.consent_id = d.consent_id
//!                    AND e.effect = 'permit' AND e.nested = true AND MATCH(e, R)))))
//!      AND ( :bg
//!            OR EXISTS (SELECT 1 FROM consent_rule p WHERE p.effect = 'permit' AND MATCH(p, R))
//!            OR ( :implicit_permit AND NOT EXISTS (
//!                   SELECT 1 FROM consent_rule c WHERE c.patient_id = R.patient_id))))
//!
//! MATCH(r, R) :=
//!   r.patient_id = R.patient_id
//!   AND (r.actor_org IS NULL OR r.actor_org = :fac)
//!   AND (r.actor_practitioner IS NULL OR r.actor_practitioner = :prac)   -- NULL :prac never equal
//!   AND (r.purpose IS NULL OR r.purpose = :purpose [OR r.purpose = 'TREAT' for ETREAT])
//!   AND (r.valid_from_ms IS NULL OR :now >= r.valid_from_ms)
//!   AND (r.valid_to_ms IS NULL OR :now <= r.valid_to_ms)
//!   AND (r.class_type IS NULL OR r.class_type = R.res_type)
//!   AND (r.label_system IS NULL OR labelled(R, r.label_system, r.label_code))
//!   AND ((r.data_from_ms IS NULL AND r.data_to_ms IS NULL)
//!        OR (r.effect = 'permit' AND R.clinical_date_ms IS NOT NULL
//!            AND (r.data_from_ms IS NULL OR R.clinical_date_ms >= r.data_from_ms)
//!            AND (r.data_to_ms IS NULL OR R.clinical_date_ms <= r.data_to_ms))
//!        OR (r.effect = 'deny' AND COALESCE(R.clinical_end_ms, R.clinical_date_ms) IS NOT NULL
//!            AND (r.data_from_ms IS NULL
//!                 OR COALESCE(R.clinical_end_ms, R.clinical_date_ms) >= r.data_from_ms)
//!            AND (r.data_to_ms IS NULL OR R.clinical_date_ms IS NULL
//!                 OR R.clinical_date_ms <= r.data_to_ms)))
//!   AND (r.data_reference IS NULL OR r.data_reference = R.type || '/' || R.id)
//!   AND (r.data_related IS NULL OR r.data_related = R.type || '/' || R.id
//!        OR references(R, r.data_related))
//!   AND (r.data_custodian IS NULL OR r.data_custodian = R.custodian)
//! ```
//!
//! Patient role: `R.patient_id = :patient AND NOT tagged(R,'UNINFORMED') AND NOT
//! tagged(R,'UNDELIVERED')` (the store sets `patient_id` of a `Patient` row to its own id).
//! Auditor/Admin: `FALSE`.
//!
//! Only the permitted-ness is needed in queries, so rule ids never have to be selected; the
//! reason (which consent decided) comes from [`decide`] on the returned rows, for the audit.
//!
//! ```
//! use renkei_consent::*;
//! let consent = serde_json::json!({
//!     "resourceType": "Consent", "id": "c1", "status": "active",
//!     "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
//!                           "code": "patient-privacy"}]},
//!     "patient": {"reference": "Patient/p1"},
//!     "provision": {"type": "permit"}
//! });
//! let rules = compile(&consent).unwrap();
//! let clinic = Principal {
//!     facility: "Organization/clinic".into(), practitioner: None, role: Role::Facility,
//!     patient: None, purpose: Purpose::from_code("TREAT"), break_glass: false,
//! };
//! let obs = ResourceFacts {
//!     res_type: "Observation".into(), custodian: Some("Organization/hospital".into()),
//!     patient_id: Some("p1".into()), reference: "Observation/o1".into(), ..Default::default()
//! };
//! let decision = decide(&clinic, &obs, &rules, true, &Policy::default(), 0);
//! assert_eq!(decision.reason, Reason::ConsentPermit { consent_id: "Consent/c1".into() });
//! ```

mod compile;
mod decide;
mod facts;
mod model;
mod time;

pub use compile::{compile, consent_patient_id, is_in_force};
pub use decide::{decide, patient_has_consent};
pub use facts::{
    clinical_date_ms, clinical_date_paths, clinical_end_ms, normalize_reference,
    GENERIC_CLINICAL_DATE_PATHS,
};
pub use model::{
    ConsentError, Decision, Effect, Implicit, Policy, Principal, Purpose, Reason, ResourceFacts,
    Role, Rule, ACT_CODE_SYSTEM, ACT_REASON_SYSTEM, CONSENT_ACTION_SYSTEM, CONSENT_SCOPE_SYSTEM,
    PARTICIPATION_TYPE_SYSTEM, PRIVACY_TAG_SYSTEM, PURPOSE_OF_USE_CODES, RESOURCE_TYPES_SYSTEM,
    ROLE_IRCP, SCOPE_PATIENT_PRIVACY, TAG_UNDELIVERED, TAG_UNINFORMED,
};
pub use time::{fhir_time_end, fhir_time_range, fhir_time_start, DEFAULT_UTC_OFFSET_SECS};

//! The reference access decision.

use crate::model::{
    strip_prefix_type, Decision, Effect, Implicit, Policy, Principal, Reason, ResourceFacts, Role,
    Rule, TAG_UNDELIVERED, TAG_UNINFORMED,
};

/// Decides whether `principal` may see `resource` at `now_ms`.
///
/// `rules` are compiled rules (any patients; those of other patients never match).
/// `patient_has_consent` is true when the resource's patient has at least one rule, i.e.
/// at least one Consent in force. The steps, first applicable wins:
///
/// 1. Auditor / Admin → deny everything served by the clinical API, directory data included
///    (`RoleHasNoClinicalAccess`); their own endpoints (audit, clients) are not decided here.
/// 2. Patient: anything outside their own compartment, directory data included (or no
///    patient in the token) → deny (`NotOwnCompartment`); own data tagged `UNINFORMED` or
///    `UNDELIVERED` → deny (`PrivacyTag`); own data → permit (`PatientSelf`).
/// 3. Facility whose organization is the custodian → permit (`OwnData`), whatever the tags
///    and consents.
/// 4. No patient (directory data) → permit (`NotPatientData`).
/// 5. Tagged `UNDELIVERED` → deny (`PrivacyTag`), even under break-glass.
/// 6. An effective matching deny rule → deny (`ConsentDeny`), unless break-glass is in
///    force and `policy.patient_deny_holds_on_break_glass` is false. A matching root deny
///    is not effective when a matching nested permit of the same consent exists.
/// 7. Break-glass → permit (`BreakGlass`).
/// 8. A matching permit rule → permit (`ConsentPermit`).
/// 9. The patient has no consent → the implicit policy (`ImplicitPolicy`).
/// 10. Otherwise deny (`NoConsentPermit`).
///
/// When several rules match, the first in `rules` order names the consent in the reason.
pub fn decide(
    principal: &Principal,
    resource: &ResourceFacts,
    rules: &[Rule],
    patient_has_consent: bool,
    policy: &Policy,
    now_ms: i64,
) -> Decision {
    let subject = resource.subject_patient();
    match principal.role {
        Role::Auditor | Role::Admin => {
            return Decision::deny(Reason::RoleHasNoClinicalAccess);
        }
        Role::Patient => {
            let own = principal
                .patient
                .as_deref()
                .map(|p| strip_prefix_type(p, "Patient"))
                .is_some_and(|p| !p.is_empty() && Some(p) == subject);
            if !own {
                return Decision::deny(Reason::NotOwnCompartment);
            }
            for tag in [TAG_UNINFORMED, TAG_UNDELIVERED] {
                if resource.has_privacy_tag(tag) {
                    return Decision::deny(Reason::PrivacyTag(tag.to_string()));
                }
            }
            return Decision::permit(Reason::PatientSelf);
        }
        Role::Facility => {}
    }

    if resource.custodian.as_deref() == Some(principal.facility.as_str()) {
        return Decision::permit(Reason::OwnData);
    }
    if subject.is_none() {
        return Decision::permit(Reason::NotPatientData);
    }
    if resource.has_privacy_tag(TAG_UNDELIVERED) {
        return Decision::deny(Reason::PrivacyTag(TAG_UNDELIVERED.to_string()));
    }

    let matching: Vec<&Rule> = rules
        .iter()
        .filter(|rule| rule.matches(principal, resource, now_ms))
        .collect();
    let excepted = |deny: &Rule| {
        !deny.nested
            && matching.iter().any(|permit| {
                permit.effect == Effect::Permit
                    && permit.nested
                    && permit.consent_id == deny.consent_id
            })
    };
    let effective_deny = matching
        .iter()
        .find(|rule| rule.effect == Effect::Deny && !excepted(rule));

    let mut overridden_deny = None;
    if let Some(deny) = effective_deny {
        if principal.break_glass && !policy.patient_deny_holds_on_break_glass {
            overridden_deny = Some(deny.consent_id.clone());
        } else {
            return Decision::deny(Reason::ConsentDeny {
                consent_id: deny.consent_id.clone(),
            });
        }
    }
    if principal.break_glass {
        return Decision::permit(Reason::BreakGlass { overridden_deny });
    }
    if let Some(permit) = matching.iter().find(|rule| rule.effect == Effect::Permit) {
        return Decision::permit(Reason::ConsentPermit {
            consent_id: permit.consent_id.clone(),
        });
    }
    if !patient_has_consent {
        let permit = policy.implicit == Implicit::OptOut;
        let reason = Reason::ImplicitPolicy { permit };
        return if permit {
            Decision::permit(reason)
        } else {
            Decision::deny(reason)
        };
    }
    Decision::deny(Reason::NoConsentPermit)
}

/// Convenience for callers holding all rules: whether any rule concerns `patient_id`
/// (the `patient_has_consent` argument of [`decide`]).
pub fn patient_has_consent(rules: &[Rule], patient_id: &str) -> bool {
    let patient_id = strip_prefix_type(patient_id, "Patient");
    rules.iter().any(|rule| rule.patient_id == patient_id)
}

//! Who is asking: identity from the access token plus the request's stated purpose.

use renkei_audit::AuditAgent;
use renkei_auth::{AccessClaims, Action, Scopes};
use renkei_consent::{Implicit, Policy, Principal, Purpose, Role};
use renkei_repository::WriteContext;
use renkei_store::Visibility;

use crate::AccessError;

/// The requester of one request.
#[derive(Debug, Clone)]
pub struct Requester {
    pub principal: Principal,
    pub client_id: String,
    /// Granted SMART scopes; `None` for the gateway's own internal work.
    pub scopes: Option<Scopes>,
    pub request_id: String,
    pub network_address: Option<String>,
    /// The reason stated for break-glass access, when break-glass is in force.
    pub break_glass_reason: Option<String>,
}

/// The headers a client states its purpose with.
#[derive(Debug, Clone, Default)]
pub struct StatedPurpose {
    /// `X-Purpose-Of-Use` (default `TREAT`).
    pub purpose: Option<String>,
    /// `X-Break-Glass-Reason`.
    pub break_glass_reason: Option<String>,
}

impl Requester {
    /// Builds the requester from verified token claims and the request's purpose headers.
    /// A purpose the token does not allow is refused (403); `ETREAT` needs a reason and a
    /// client allowed to break the glass.
    pub fn from_claims(
        claims: &AccessClaims,
        stated: &StatedPurpose,
        request_id: &str,
        network_address: Option<String>,
    ) -> Result<Requester, AccessError> {
        let purpose_code = stated.purpose.clone().unwrap_or_else(|| "TREAT".into());
        if !claims.purposes.iter().any(|p| p == &purpose_code) {
            return Err(AccessError::Forbidden(format!(
                "purpose of use '{purpose_code}' is not allowed for client '{}'",
                claims.sub
            )));
        }
        let purpose = Purpose::from_code(&purpose_code);
        let break_glass = purpose == Purpose::ETreat;
        let reason = stated
            .break_glass_reason
            .clone()
            .filter(|r| !r.trim().is_empty());
        if break_glass && !claims.break_glass {
            return Err(AccessError::Forbidden(format!(
                "break-glass (ETREAT) needs a client allowed to break the glass; client '{}' is not",
                claims.sub
            )));
        }
        if break_glass && reason.is_none() {
            return Err(AccessError::Forbidden(
                "break-glass (ETREAT) needs a reason: state it in the X-Break-Glass-Reason header (text, not blank)".into(),
            ));
        }
        Ok(Self::build(
            claims,
            (purpose, break_glass),
            request_id,
            network_address,
            if break_glass { reason } else { None },
        ))
    }

    /// Who made a request whose stated purpose was refused ([`Requester::from_claims`]
    /// failed), for its AuditEvent only: the token's client with the purpose and
    /// break-glass reason it asked for, so that an attempt to break the glass is on record
    /// under its client. It is never used to decide access.
    pub fn refused_attempt(
        claims: &AccessClaims,
        stated: &StatedPurpose,
        request_id: &str,
        network_address: Option<String>,
    ) -> Requester {
        let purpose = Purpose::from_code(stated.purpose.as_deref().unwrap_or("TREAT"));
        let reason = stated
            .break_glass_reason
            .clone()
            .filter(|r| !r.trim().is_empty());
        Self::build(
            claims,
            (purpose, false),
            request_id,
            network_address,
            reason,
        )
    }

    fn build(
        claims: &AccessClaims,
        (purpose, break_glass): (Purpose, bool),
        request_id: &str,
        network_address: Option<String>,
        break_glass_reason: Option<String>,
    ) -> Requester {
        let role = match claims.role {
            renkei_auth::Role::Facility => Role::Facility,
            renkei_auth::Role::Patient => Role::Patient,
            renkei_auth::Role::Auditor => Role::Auditor,
            renkei_auth::Role::Admin => Role::Admin,
        };
        Requester {
            principal: Principal {
                facility: claims.organization.clone(),
                practitioner: claims.fhir_user.clone(),
                role,
                patient: claims.patient.clone(),
                purpose,
                break_glass,
            },
            client_id: claims.sub.clone(),
            scopes: Some(claims.scope.clone()),
            request_id: request_id.to_string(),
            network_address,
            break_glass_reason,
        }
    }

    /// The gateway itself (demo loading, import): sees everything, audited as the system.
    pub fn system(request_id: &str) -> Requester {
        Requester {
            principal: Principal {
                facility: "Organization/renkei-gateway".into(),
                practitioner: None,
                role: Role::Admin,
                patient: None,
                purpose: Purpose::Treat,
                break_glass: false,
            },
            client_id: "renkei".into(),
            scopes: None,
            request_id: request_id.to_string(),
            network_address: None,
            break_glass_reason: None,
        }
    }

    pub fn is_system(&self) -> bool {
        self.scopes.is_none()
    }

    /// The consent decision as the store's SQL predicate, break-glass left out: what the
    /// requester sees of a request that names no one patient (and of every write).
    pub fn visibility(&self, policy: &Policy, now_ms: i64) -> Visibility {
        self.visibility_for(policy, now_ms, None)
    }

    /// [`Requester::visibility`] for a request about one patient (`Patient` id, with or
    /// without its `Patient/` prefix): a break-glass request opens that patient's data, and
    /// only theirs.
    pub fn visibility_for(
        &self,
        policy: &Policy,
        now_ms: i64,
        break_glass_patient: Option<&str>,
    ) -> Visibility {
        if self.is_system() {
            return Visibility::Unrestricted;
        }
        match self.principal.role {
            Role::Auditor | Role::Admin => Visibility::Nothing,
            Role::Patient => match &self.principal.patient {
                Some(patient) => Visibility::Patient {
                    patient_id: patient.trim_start_matches("Patient/").to_string(),
                },
                None => Visibility::Nothing,
            },
            Role::Facility => Visibility::Facility {
                organization: self.principal.facility.clone(),
                practitioner: self.principal.practitioner.clone(),
                purpose: self.principal.purpose.code().to_string(),
                now_ms,
                break_glass: break_glass_patient
                    .filter(|_| self.principal.break_glass)
                    .map(|p| p.trim_start_matches("Patient/").to_string()),
                deny_holds_on_break_glass: policy.patient_deny_holds_on_break_glass,
                implicit_permit: policy.implicit == Implicit::OptOut,
            },
        }
    }

    /// Checks the token's scopes allow `action` on `res_type` (403 otherwise).
    pub fn require(&self, res_type: &str, action: Action) -> Result<(), AccessError> {
        match &self.scopes {
            None => Ok(()),
            Some(scopes) if scopes.allows(res_type, action) => Ok(()),
            Some(_) => Err(AccessError::Forbidden(format!(
                "the access token's scopes do not allow {action:?} on {res_type}"
            ))),
        }
    }

    /// The resource types this token may read, for queries that narrow by type (`_include`
    /// rows); `None` when every type is readable.
    pub fn readable_types(&self) -> Option<Vec<String>> {
        self.types_allowing(Action::Read)
    }

    /// The resource types this token may `action`; `None` when every type is allowed.
    fn types_allowing(&self, action: Action) -> Option<Vec<String>> {
        let scopes = self.scopes.as_ref()?;
        let mut types = Vec::new();
        for scope in scopes.iter() {
            if !scope.permissions.contains(action) {
                continue;
            }
            match &scope.resource_type {
                None => return None,
                Some(t) if !types.contains(t) => types.push(t.clone()),
                Some(_) => {}
            }
        }
        Some(types)
    }

    /// Auditors and administrators see no clinical data: their tools are the audit trail
    /// and the administration endpoints. Said with 403 (API.md), not with an empty answer
    /// that a client could take for "no data".
    pub fn require_clinical_access(&self) -> Result<(), AccessError> {
        match self.principal.role {
            Role::Auditor if !self.is_system() => Err(AccessError::Forbidden(
                "the auditor role sees the audit trail ([base]/AuditEvent), not clinical data"
                    .into(),
            )),
            Role::Admin if !self.is_system() => Err(AccessError::Forbidden(
                "the administrator role manages clients and configuration, not clinical data"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Only facility systems (and the gateway) write clinical data.
    pub fn require_writer(&self) -> Result<(), AccessError> {
        if self.is_system() || self.principal.role == Role::Facility {
            Ok(())
        } else {
            Err(AccessError::Forbidden(
                "only facility clients may write clinical data".into(),
            ))
        }
    }

    pub fn write_context(&self) -> WriteContext {
        WriteContext {
            visibility: Visibility::Unrestricted,
            custodian: if self.is_system() {
                None
            } else {
                Some(self.principal.facility.clone())
            },
            custodian_from_source: self.is_system(),
            linking: std::sync::Arc::default(),
            // An update that creates the resource is a create: it needs the create scope.
            creatable_types: self.types_allowing(Action::Create),
        }
    }

    /// Whether this requester may change a resource held by `custodian`.
    pub fn may_modify(&self, custodian: Option<&str>) -> bool {
        self.is_system() || custodian.is_none_or(|c| c == self.principal.facility)
    }

    pub fn agent(&self) -> AuditAgent {
        AuditAgent {
            client_id: Some(self.client_id.clone()),
            organization: Some(self.principal.facility.clone()),
            practitioner: self.principal.practitioner.clone(),
            patient: self.principal.patient.clone(),
            purpose: Some(self.principal.purpose.code().to_string()),
            break_glass_reason: self.break_glass_reason.clone(),
            network_address: self.network_address.clone(),
        }
    }
}

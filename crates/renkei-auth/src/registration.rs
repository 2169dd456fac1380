//! Client registrations: who a client is, what it may ask for, how it proves itself.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::AuthError;
use crate::scopes::Scopes;

/// The purpose of use ordinary clinical access is made for (HL7 v3 `TREAT`).
pub const PURPOSE_TREAT: &str = "TREAT";
/// Emergency treatment: the purpose of use of a break-glass request.
pub const PURPOSE_ETREAT: &str = "ETREAT";

/// The kind of principal a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A facility system or practitioner: clinical data (consent permitting).
    #[default]
    Facility,
    /// A patient: their own compartment only.
    Patient,
    /// An auditor: audit data only, no clinical data.
    Auditor,
    /// An administrator: clients and configuration, no clinical data.
    Admin,
}

impl Role {
    /// `"facility"`, `"patient"`, `"auditor"` or `"admin"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Facility => "facility",
            Role::Patient => "patient",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "facility" => Ok(Role::Facility),
            "patient" => Ok(Role::Patient),
            "auditor" => Ok(Role::Auditor),
            "admin" | "administrator" => Ok(Role::Admin),
            _ => Err(AuthError::invalid_request(format!(
                "unknown role '{}' (facility, patient, auditor, admin)",
                crate::scopes::printable(s)
            ))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered client, as the lead stores it (JSON).
///
/// Missing optional fields deserialize to their defaults; `purposes` missing or
/// empty means "the default", see [`ClientRegistration::effective_purposes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRegistration {
    /// OAuth `client_id` (also `iss`/`sub` of its client assertions).
    pub client_id: String,
    /// The facility: `"Organization/X"`.
    pub organization: String,
    /// Principal kind.
    #[serde(default)]
    pub role: Role,
    /// `"Patient/P"` for patient-role clients (the compartment of `patient/` scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Fixed practitioner (`"Practitioner/X"`), if the client always acts as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
    /// Registered SMART v2 scopes, e.g. `["system/*.rs"]`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Public JWKS (`{"keys":[…]}`) verifying the client's assertions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// May this client break the glass (`ETREAT`)?
    #[serde(default)]
    pub break_glass: bool,
    /// Allowed purposes of use; empty = default (`TREAT`, plus `ETREAT` with break-glass).
    #[serde(default)]
    pub purposes: Vec<String>,
    /// SHA-256 (hex) of the client's TLS certificate (DER), for mTLS binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
    /// When this registration was recorded (milliseconds since the epoch; the store's record
    /// of it, not part of the registration itself). Tokens name the registration they were
    /// issued under ([`crate::AccessClaims::registration`]), so a client removed and
    /// registered again, even within the same second (a leaked key replaced), does not bring
    /// back its old tokens.
    #[serde(skip)]
    pub registered_at: i64,
}

impl ClientRegistration {
    /// A facility client with no scopes, keys or extras; fill fields as needed.
    pub fn new(client_id: impl Into<String>, organization: impl Into<String>) -> Self {
        ClientRegistration {
            client_id: client_id.into(),
            organization: organization.into(),
            role: Role::Facility,
            patient: None,
            practitioner: None,
            scopes: Vec::new(),
            jwks: None,
            break_glass: false,
            purposes: Vec::new(),
            cert_fingerprint: None,
            registered_at: 0,
        }
    }

    /// A registration as stored (its JSON) with the time the store recorded it.
    pub fn from_stored(registration: &str, recorded_ms: i64) -> serde_json::Result<Self> {
        let mut parsed: ClientRegistration = serde_json::from_str(registration)?;
        parsed.registered_at = recorded_ms;
        Ok(parsed)
    }

    /// Purposes of use carried in this client's tokens: `purposes` (or
    /// `["TREAT"]` when empty), with `ETREAT` added when `break_glass` is set
    /// and removed when it is not — break-glass is the only way to `ETREAT`.
    pub fn effective_purposes(&self) -> Vec<String> {
        let mut out: Vec<String> = if self.purposes.is_empty() {
            vec![PURPOSE_TREAT.to_string()]
        } else {
            let mut v = Vec::new();
            for p in &self.purposes {
                if !v.contains(p) {
                    v.push(p.clone());
                }
            }
            v
        };
        out.retain(|p| p != PURPOSE_ETREAT);
        if self.break_glass {
            out.push(PURPOSE_ETREAT.to_string());
        }
        out
    }

    /// The certificate binding (`cnf`) of this client's tokens: `None` without a registered
    /// certificate.
    pub fn confirmation(&self) -> Result<Option<crate::Confirmation>, AuthError> {
        self.cert_fingerprint
            .as_deref()
            .map(crate::Confirmation::of_fingerprint)
            .transpose()
    }

    /// Whether this registration, as it stands now, would still grant every claim of a token
    /// issued to this client earlier: the same facility, role, patient and certificate
    /// binding; no scope, purpose, break-glass or practitioner it no longer has. A token of a
    /// client that was removed or narrowed since must not keep what its registration lost —
    /// nor outlive the certificate it was bound to: a registration that names another
    /// certificate, or none, ends the tokens bound to the old one (the key of a replaced
    /// certificate may be the very thing that leaked).
    pub fn still_grants(&self, claims: &crate::AccessClaims) -> bool {
        let purposes = self.effective_purposes();
        claims.sub == self.client_id
            && claims.registration == self.registered_at
            && self.confirmation().is_ok_and(|bound| bound == claims.cnf)
            && claims.organization == self.organization
            && claims.role == self.role
            && claims.patient == self.patient
            && (self.break_glass || !claims.break_glass)
            && claims.purposes.iter().all(|p| purposes.contains(p))
            && self
                .practitioner
                .as_ref()
                .is_none_or(|fixed| claims.fhir_user.as_ref() == Some(fixed))
            && self
                .parsed_scopes()
                .and_then(|registered| registered.grant(&claims.scope))
                .is_ok_and(|granted| granted == claims.scope)
    }

    /// The registered scopes, parsed.
    pub fn parsed_scopes(&self) -> Result<Scopes, AuthError> {
        Scopes::parse_list(&self.scopes)
    }

    /// Checks the registration is usable (for `renkei client add`): id shape,
    /// references, scopes, JWKS keys, fingerprint, patient context for
    /// patient-role clients. Returns `invalid_request`/`invalid_scope` errors.
    pub fn validate(&self) -> Result<(), AuthError> {
        if self.client_id.is_empty()
            || self.client_id.len() > 128
            || !self
                .client_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~:".contains(c))
        {
            return Err(AuthError::invalid_request(
                "client_id must be 1-128 characters of [A-Za-z0-9-._~:]",
            ));
        }
        check_reference(&self.organization, &["Organization"], "organization")?;
        if let Some(p) = &self.patient {
            check_reference(p, &["Patient"], "patient")?;
        }
        if let Some(p) = &self.practitioner {
            check_reference(p, &["Practitioner", "PractitionerRole"], "practitioner")?;
        }
        if self.role == Role::Patient && self.patient.is_none() {
            return Err(AuthError::invalid_request(
                "a patient-role client needs a patient (Patient/ID)",
            ));
        }
        // Contradictions refused rather than silently carried into tokens: the access rules
        // read a patient context as "this principal is that patient", and break-glass and
        // acting for a practitioner are facility (clinical) powers.
        if self.role != Role::Patient && self.patient.is_some() {
            return Err(AuthError::invalid_request(format!(
                "only a patient-role client has a patient; this client's role is {} (drop --patient or use --role patient)",
                self.role
            )));
        }
        if self.role != Role::Facility && self.break_glass {
            return Err(AuthError::invalid_request(format!(
                "only a facility client may break the glass; this client's role is {}",
                self.role
            )));
        }
        if self.role != Role::Facility && self.practitioner.is_some() {
            return Err(AuthError::invalid_request(format!(
                "only a facility client acts for a practitioner; this client's role is {}",
                self.role
            )));
        }
        let scopes = self.parsed_scopes()?;
        // A patient app reads its patient's own record and nothing else: a system/ or user/
        // scope, or a write permission, would be carried into its tokens and never work.
        if self.role == Role::Patient {
            let writes = [
                crate::Action::Create,
                crate::Action::Update,
                crate::Action::Delete,
            ];
            if let Some(scope) = scopes.iter().find(|scope| {
                scope.context != crate::ScopeContext::Patient
                    || writes.iter().any(|w| scope.permissions.contains(*w))
            }) {
                return Err(AuthError::invalid_scope(format!(
                    "a patient-role client reads and searches its patient's record only: patient/ scopes with r and s (patient/*.rs), not '{scope}'"
                )));
            }
        }
        if scopes.has_context(crate::ScopeContext::Patient) && self.patient.is_none() {
            return Err(AuthError::invalid_scope(
                "patient/ scopes need a patient on the registration",
            ));
        }
        for p in &self.purposes {
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(AuthError::invalid_request(format!(
                    "invalid purpose of use '{}'",
                    crate::scopes::printable(p)
                )));
            }
        }
        if let Some(jwks) = &self.jwks {
            let keys = crate::assertion::parse_jwks(jwks)
                .map_err(|e| AuthError::invalid_request(e.description))?;
            if keys.is_empty() {
                return Err(AuthError::invalid_request("jwks holds no usable key"));
            }
            // Private key members (RFC 7518 §6.2.2, §6.3.2, §6.4: `d`, `p`, `q`, `dp`, `dq`,
            // `qi`, `oth`; `k` of a symmetric key): the gateway needs the public key only, and
            // must not hold (or show in its registrations) the secret a client signs with.
            let private = jwks
                .get("keys")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .any(|key| {
                    ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
                        .iter()
                        .any(|member| key.get(member).is_some())
                });
            if private {
                return Err(AuthError::invalid_request(
                    "jwks holds a private key; register the client's public key only (its JWKS without d, p, q, dp, dq, qi, oth or k)",
                ));
            }
        }
        if let Some(fp) = &self.cert_fingerprint {
            normalize_fingerprint(fp)?;
        }
        Ok(())
    }

    /// Does a presented client certificate (DER) match `cert_fingerprint`?
    /// `false` when the registration has no fingerprint.
    pub fn matches_certificate(&self, cert_der: &[u8]) -> bool {
        match self.cert_fingerprint.as_deref().map(normalize_fingerprint) {
            Some(Ok(fp)) => fp == cert_fingerprint(cert_der),
            _ => false,
        }
    }
}

/// SHA-256 of a certificate's DER, lowercase hex — the form of
/// [`ClientRegistration::cert_fingerprint`].
pub fn cert_fingerprint(cert_der: &[u8]) -> String {
    let digest = Sha256::digest(cert_der);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Normalises a fingerprint as operators paste it (`AB:CD:…` or hex, any case)
/// to 64 lowercase hex digits.
pub fn normalize_fingerprint(fp: &str) -> Result<String, AuthError> {
    let hex: String = fp
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(AuthError::invalid_request(
            "cert_fingerprint must be the SHA-256 of the certificate DER (64 hex digits)",
        ))
    }
}

/// `Type/id` with an allowed type and a FHIR id (`[A-Za-z0-9\-\.]{1,64}`).
pub fn check_reference(r: &str, types: &[&str], what: &str) -> Result<(), AuthError> {
    let ok = r.split_once('/').is_some_and(|(t, id)| {
        types.contains(&t)
            && !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    });
    if ok {
        Ok(())
    } else {
        Err(AuthError::invalid_request(format!(
            "{what} must be a reference {}/ID, got '{}'",
            types.join("|"),
            crate::scopes::printable(r)
        )))
    }
}

//! The types of the consent model: who asks, what is asked for, the compiled rules, the
//! network policy and the decision.

/// `meta.tag` system of the national service's privacy indications (JP-CLINS).
pub const PRIVACY_TAG_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JP_ehrshrs_indication";
/// Privacy tag code: never disclosed to another facility, nor to the patient (未提供).
pub const TAG_UNDELIVERED: &str = "UNDELIVERED";
/// Privacy tag code: diagnosis not yet explained to the patient; hidden from
/// patient-facing access only (未告知).
pub const TAG_UNINFORMED: &str = "UNINFORMED";

/// `Consent.scope` system; only code [`SCOPE_PATIENT_PRIVACY`] is enforced.
pub const CONSENT_SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
/// The only `Consent.scope` code that yields rules.
pub const SCOPE_PATIENT_PRIVACY: &str = "patient-privacy";
/// `provision.actor.role` system.
pub const PARTICIPATION_TYPE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
/// `provision.actor.role` code of an information recipient, the only supported role.
pub const ROLE_IRCP: &str = "IRCP";
/// `provision.purpose` system (purpose of use).
pub const ACT_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// The purpose-of-use codes of v3 ActReason (the `PurposeOfUse` value set, R4): the codes a
/// `provision.purpose` may name. A code outside it could never equal a requester's purpose,
/// so a deny stated for it would silently deny nothing.
pub const PURPOSE_OF_USE_CODES: &[&str] = &[
    "HMARKT",
    "HOPERAT",
    "CAREMGT",
    "DONAT",
    "FRAUD",
    "GOV",
    "HACCRED",
    "HCOMPL",
    "HDECD",
    "HDIRECT",
    "HDM",
    "HLEGAL",
    "HOUTCOMS",
    "HPRGRP",
    "HQUALIMP",
    "HSYSADMIN",
    "LABELING",
    "METAMGT",
    "MEMADMIN",
    "MILCDM",
    "PATADMIN",
    "PATSFTY",
    "PERFMSR",
    "RECORDMGT",
    "SYSDEV",
    "HTEST",
    "TRAIN",
    "HPAYMT",
    "CLMATTCH",
    "COVAUTH",
    "COVERAGE",
    "ELIGDTRM",
    "ELIGVER",
    "ENROLLM",
    "MILDCRG",
    "REMITADV",
    "HRESCH",
    "BIORCH",
    "CLINTRCH",
    "CLINTRCHNPC",
    "CLINTRCHPC",
    "PRECLINTRCH",
    "DSRCH",
    "POARCH",
    "TRANSRCH",
    "PATRQT",
    "FAMRQT",
    "PWATRNY",
    "SUPNWK",
    "PUBHLTH",
    "DISASTER",
    "THREAT",
    "TREAT",
    "CLINTRL",
    "COC",
    "ETREAT",
    "BTG",
    "ERTREAT",
    "POPHLTH",
];
/// `provision.class` system: the codes are FHIR resource type names.
pub const RESOURCE_TYPES_SYSTEM: &str = "http://hl7.org/fhir/resource-types";
/// `provision.action` system.
pub const CONSENT_ACTION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentaction";
/// Security-label system of sensitivity codes such as `PSY`.
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// What kind of client is asking. Comes from the client registration / access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A member facility's system or practitioner: clinical data, under consent.
    Facility,
    /// The patient (patient-facing app): their own compartment only.
    Patient,
    /// Audit staff: audit data only, no clinical data.
    Auditor,
    /// Administrator: clients and configuration, no clinical data.
    Admin,
}

/// Purpose of use (v3 ActReason) stated by the requester.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// `TREAT`, treatment.
    Treat,
    /// `ETREAT`, emergency treatment (the purpose stated for break-glass).
    ETreat,
    /// Any other v3 ActReason code, kept verbatim (`HOPERAT`, `PUBHLTH`, …).
    Other(String),
}

impl Purpose {
    /// Maps a v3 ActReason code to a purpose. Codes are case-sensitive (v3 codes are
    /// upper case) and surrounding whitespace is ignored.
    pub fn from_code(code: &str) -> Purpose {
        match code.trim() {
            "TREAT" => Purpose::Treat,
            "ETREAT" => Purpose::ETreat,
            other => Purpose::Other(other.to_string()),
        }
    }

    /// The v3 ActReason code, as compared with [`Rule::purpose`].
    pub fn code(&self) -> &str {
        match self {
            Purpose::Treat => "TREAT",
            Purpose::ETreat => "ETREAT",
            Purpose::Other(code) => code,
        }
    }

    /// Whether a rule stated for the purpose `rule` covers a request for this purpose: the
    /// same code, and for `ETREAT` also `TREAT`, which it specializes in the v3 ActReason
    /// hierarchy (emergency treatment is treatment). Only break-glass asks for `ETREAT`, so
    /// this decides whether a refusal "for treatment" still holds under break-glass where
    /// the network says refusals hold. The store's SQL mirrors it
    /// (`renkei_store` `push_requester_match`).
    pub fn is_covered_by(&self, rule: &str) -> bool {
        self.code() == rule || (*self == Purpose::ETreat && rule == Purpose::Treat.code())
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The requester's facility, `Organization/<id>`.
    pub facility: String,
    /// The user, `Practitioner/<id>`, when known (`fhirUser`).
    pub practitioner: Option<String>,
    /// Role of the client.
    pub role: Role,
    /// For [`Role::Patient`]: the patient, `Patient/<id>` (a plain id is accepted too).
    pub patient: Option<String>,
    /// Stated purpose of use.
    pub purpose: Purpose,
    /// Break-glass in force for this request: the client is allowed to break the glass AND it
    /// asked for purpose `ETREAT` with a reason. Computed by the caller.
    pub break_glass: bool,
}

/// What the decision needs to know about one stored resource. Every field has a column
/// counterpart in the store so that the same decision can be written in SQL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceFacts {
    /// Resource type, `Observation`.
    pub res_type: String,
    /// Owning facility, `Organization/<id>` (the writer's organization).
    pub custodian: Option<String>,
    /// The patient the data is about, plain id (`pat-yamada-taro`). `None` for directory
    /// data (Organization, Practitioner, Medication, Endpoint, …). For a `Patient` resource
    /// this is its own id ([`ResourceFacts::from_resource`] fills it in).
    pub patient_id: Option<String>,
    /// `meta.security` codings as (system, code); a missing system is `""`.
    pub security_labels: Vec<(String, String)>,
    /// `meta.tag` codings as (system, code); a missing system is `""`.
    pub tags: Vec<(String, String)>,
    /// The clinically relevant date (see [`crate::clinical_date_paths`]), first millisecond.
    pub clinical_date_ms: Option<i64>,
    /// The last millisecond of the care the resource covers, when more than its clinical
    /// date's day (see [`crate::clinical_end_ms`]): a period's end, `i64::MAX` while open.
    pub clinical_end_ms: Option<i64>,
    /// `Type/id` of this resource.
    pub reference: String,
    /// Every literal reference the resource makes, normalised to `Type/id`
    /// (used by `data` with meaning `related` / `dependents`), and those of the records it
    /// follows.
    pub references: Vec<String>,
    /// `Type/id` of the records it follows, for a record about the patient of what it refers
    /// to (a Binary by its `securityContext`, a Provenance by its `target`): those it refers
    /// to, and the records they follow. It is decided as they are: of their type (`class`),
    /// within them (`data` `instance`), and as a stored Bundle when it follows one. The
    /// repository derives them; [`ResourceFacts::from_resource`] leaves them empty.
    pub follows: Vec<String>,
}

impl ResourceFacts {
    /// Whether `meta.security` holds (system, code).
    pub fn has_label(&self, system: &str, code: &str) -> bool {
        self.security_labels
            .iter()
            .any(|(s, c)| s == system && c == code)
    }

    /// Whether `meta.tag` holds the privacy tag `code` of [`PRIVACY_TAG_SYSTEM`].
    pub fn has_privacy_tag(&self, code: &str) -> bool {
        self.tags
            .iter()
            .any(|(s, c)| s == PRIVACY_TAG_SYSTEM && c == code)
    }

    /// The patient this resource is about: [`ResourceFacts::patient_id`], or for a `Patient`
    /// resource whose `patient_id` was left empty, its own id.
    pub fn subject_patient(&self) -> Option<&str> {
        if let Some(id) = self.patient_id.as_deref() {
            return Some(strip_prefix_type(id, "Patient"));
        }
        if self.res_type == "Patient" {
            return self.reference.strip_prefix("Patient/");
        }
        None
    }
}

/// What happens to cross-facility access for a patient who has no consent at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Implicit {
    /// Deny without consent (Japanese regional networks; the default).
    #[default]
    OptIn,
    /// Permit without consent.
    OptOut,
}

/// Network-wide consent policy (configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Policy {
    /// Implicit policy for patients without any consent.
    pub implicit: Implicit,
    /// When true, a patient's explicit deny still holds during break-glass; when false
    /// (default) break-glass overrides it (and the decision says which deny it overrode).
    pub patient_deny_holds_on_break_glass: bool,
}

/// Permit or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Access granted.
    Permit,
    /// Access refused.
    Deny,
}

impl Effect {
    /// `"permit"` / `"deny"`, the spelling of `provision.type` and of the rule table column.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Permit => "permit",
            Effect::Deny => "deny",
        }
    }

    /// The other effect.
    pub fn opposite(self) -> Effect {
        match self {
            Effect::Permit => Effect::Deny,
            Effect::Deny => Effect::Permit,
        }
    }
}

/// One flat, compiled consent rule: a row of the rule table. Every `Option` field is a
/// constraint; `None` means "any". See the crate documentation for the exact matching
/// predicate, which [`Rule::matches`] implements.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The Consent that produced the rule, `Consent/<id>`.
    pub consent_id: String,
    /// The patient, plain id.
    pub patient_id: String,
    /// Permit or deny.
    pub effect: Effect,
    /// False for a rule from the root provision, true for one from a nested provision (an
    /// exception). A nested `Permit` cancels root `Deny` rules of the same consent that also
    /// match (see the crate documentation).
    pub nested: bool,
    /// Recipient facility, `Organization/<id>`; `None` = any member facility.
    pub actor_org: Option<String>,
    /// Recipient practitioner, `Practitioner/<id>`; `None` = any.
    pub actor_practitioner: Option<String>,
    /// Purpose of use, v3 ActReason code; `None` = any purpose.
    pub purpose: Option<String>,
    /// Rule in force from (inclusive), ms since the Unix epoch.
    pub valid_from_ms: Option<i64>,
    /// Rule in force until (inclusive), ms since the Unix epoch.
    pub valid_to_ms: Option<i64>,
    /// Resource type; `None` = any.
    pub class_type: Option<String>,
    /// Security label (system, code) the resource must carry; `None` = any.
    pub security_label: Option<(String, String)>,
    /// Clinical date from (inclusive), ms.
    pub data_from_ms: Option<i64>,
    /// Clinical date until (inclusive), ms.
    pub data_to_ms: Option<i64>,
    /// `data` with meaning `instance`: exactly this resource, `Type/id`.
    pub data_reference: Option<String>,
    /// `data` with meaning `related` or `dependents`: this resource, `Type/id`, or any
    /// resource that references it (e.g. everything recorded in one Encounter).
    pub data_related: Option<String>,
    /// `data` with meaning `authoredby` an Organization: resources whose custodian is this
    /// facility, `Organization/<id>`.
    pub data_custodian: Option<String>,
}

impl Rule {
    /// A rule for `patient_id` with the given effect and no constraint at all.
    pub fn unconstrained(consent_id: &str, patient_id: &str, effect: Effect) -> Rule {
        Rule {
            consent_id: consent_id.to_string(),
            patient_id: patient_id.to_string(),
            effect,
            nested: false,
            actor_org: None,
            actor_practitioner: None,
            purpose: None,
            valid_from_ms: None,
            valid_to_ms: None,
            class_type: None,
            security_label: None,
            data_from_ms: None,
            data_to_ms: None,
            data_reference: None,
            data_related: None,
            data_custodian: None,
        }
    }

    /// Whether the rule has a data period (either bound).
    pub fn has_data_period(&self) -> bool {
        self.data_from_ms.is_some() || self.data_to_ms.is_some()
    }

    /// Whether the record falls under this rule's data period. A permission opens the records
    /// whose clinical date lies within it; a refusal reaches every record whose care overlaps
    /// it (an admission that began before a refused period and went on into it is refused too;
    /// a period known only by its end began whenever). A record with no date at all is under
    /// neither.
    fn data_period_holds(&self, resource: &ResourceFacts) -> bool {
        let (start, end) = (resource.clinical_date_ms, resource.clinical_end_ms);
        match self.effect {
            Effect::Permit => start.is_some_and(|date| {
                self.data_from_ms.is_none_or(|from| date >= from)
                    && self.data_to_ms.is_none_or(|to| date <= to)
            }),
            Effect::Deny => {
                (start.is_some() || end.is_some())
                    && self
                        .data_from_ms
                        .is_none_or(|from| end.or(start).is_some_and(|last| last >= from))
                    && self
                        .data_to_ms
                        .is_none_or(|to| start.is_none_or(|first| first <= to))
            }
        }
    }

    /// The matching predicate: does this rule apply to `principal` reading `resource` at
    /// `now_ms`? Every stated constraint must hold (AND); `None` constraints always hold.
    pub fn matches(&self, principal: &Principal, resource: &ResourceFacts, now_ms: i64) -> bool {
        fn eq_or_any(constraint: &Option<String>, actual: Option<&str>) -> bool {
            match constraint {
                None => true,
                Some(wanted) => actual == Some(wanted.as_str()),
            }
        }
        // A stored Bundle (a document) holds records of any type, date and reference: a
        // refusal limited by type, data period or record applies to it, since one of its
        // entries may be what is refused (its labels are its entries', so those match as
        // they are). A permission so limited does not open it.
        let follows = |res_type: &str| {
            resource
                .follows
                .iter()
                .any(|followed| followed.split('/').next() == Some(res_type))
        };
        let refused_content =
            self.effect == Effect::Deny && (resource.res_type == "Bundle" || follows("Bundle"));
        resource.subject_patient() == Some(self.patient_id.as_str())
            && eq_or_any(&self.actor_org, Some(principal.facility.as_str()))
            && eq_or_any(&self.actor_practitioner, principal.practitioner.as_deref())
            && self
                .purpose
                .as_deref()
                .is_none_or(|purpose| principal.purpose.is_covered_by(purpose))
            && self.valid_from_ms.is_none_or(|from| now_ms >= from)
            && self.valid_to_ms.is_none_or(|to| now_ms <= to)
            && (refused_content
                // A permission of a type opens a record of it that follows nothing; one that
                // follows others is content of theirs, opened when all it follows is of the
                // type. A refusal of its own type, or of any type it follows, reaches it.
                || self.class_type.is_none()
                || (eq_or_any(&self.class_type, Some(resource.res_type.as_str()))
                    && (self.effect == Effect::Deny || resource.follows.is_empty()))
                || self.class_type.as_deref().is_some_and(|class| {
                    follows(class)
                        && (self.effect == Effect::Deny
                            || resource
                                .follows
                                .iter()
                                .all(|followed| followed.split('/').next() == Some(class)))
                }))
            && self
                .security_label
                .as_ref()
                .is_none_or(|(system, code)| resource.has_label(system, code))
            && (!self.has_data_period() || refused_content || self.data_period_holds(resource))
            && (refused_content
                || eq_or_any(&self.data_reference, Some(resource.reference.as_str()))
                || self
                    .data_reference
                    .as_ref()
                    .is_some_and(|wanted| resource.follows.contains(wanted)))
            && (refused_content
                || self.data_related.as_ref().is_none_or(|target| {
                    // A Bundle is related to nothing through what its entries refer to.
                    &resource.reference == target
                        || (resource.res_type != "Bundle"
                            && (resource.references.iter().any(|r| r == target)
                                || resource.follows.contains(target)))
                }))
            && eq_or_any(&self.data_custodian, resource.custodian.as_deref())
    }
}

/// Why a decision was taken (for audit: BALP AuthZ-Consent, and for error messages).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The requester's facility is the custodian: own data is always visible.
    OwnData,
    /// The resource is not about a patient (directory data).
    NotPatientData,
    /// A rule of this Consent permits the access.
    ConsentPermit {
        /// `Consent/<id>`.
        consent_id: String,
    },
    /// A rule of this Consent denies the access.
    ConsentDeny {
        /// `Consent/<id>`.
        consent_id: String,
    },
    /// The patient has no consent; the network's implicit policy decided.
    ImplicitPolicy {
        /// True for an opt-out network.
        permit: bool,
    },
    /// The patient has consent, but no rule permits this access.
    NoConsentPermit,
    /// Break-glass (emergency access) granted it.
    BreakGlass {
        /// The patient's deny that break-glass overrode, `Consent/<id>`, if any.
        overridden_deny: Option<String>,
    },
    /// A privacy tag (`UNDELIVERED`, `UNINFORMED`) hides the resource from this requester.
    PrivacyTag(String),
    /// Auditor and administrator roles have no access to clinical data.
    RoleHasNoClinicalAccess,
    /// A patient reads their own record.
    PatientSelf,
    /// A patient asked for data outside their own compartment (another patient's data,
    /// directory data), or the token names no patient.
    NotOwnCompartment,
}

/// The outcome of [`crate::decide`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Permit or deny.
    pub effect: Effect,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// A permit for `reason`.
    pub fn permit(reason: Reason) -> Decision {
        Decision {
            effect: Effect::Permit,
            reason,
        }
    }

    /// A deny for `reason`.
    pub fn deny(reason: Reason) -> Decision {
        Decision {
            effect: Effect::Deny,
            reason,
        }
    }

    /// Whether access is granted.
    pub fn is_permit(&self) -> bool {
        self.effect == Effect::Permit
    }
}

/// Why a Consent cannot be compiled. An `active` patient-privacy Consent that fails to
/// compile cannot be enforced as written and must be rejected (HTTP 422) when written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    /// `resourceType` is not `Consent`.
    #[error("not a Consent resource")]
    NotAConsent,
    /// The Consent has no `id`.
    #[error("Consent has no id")]
    MissingId,
    /// `patient.reference` is missing or not a `Patient/<id>` reference.
    #[error("Consent.patient must reference Patient/<id>, found {0:?}")]
    InvalidPatient(String),
    /// `provision.type` is neither `permit` nor `deny`.
    #[error("{path}.type must be permit or deny, found {value:?}")]
    InvalidProvisionType {
        /// Element path.
        path: String,
        /// The value found.
        value: String,
    },
    /// A date or period bound is not a valid FHIR date/dateTime.
    #[error("{path}: invalid FHIR date/dateTime {value:?}")]
    InvalidDate {
        /// Element path.
        path: String,
        /// The value found.
        value: String,
    },
    /// A required part of an element is missing or malformed.
    #[error("{path}: {detail}")]
    Invalid {
        /// Element path.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// Provisions nested deeper than one level.
    #[error("{path}: provisions nested more than one level are not supported")]
    NestingTooDeep {
        /// Element path.
        path: String,
    },
    /// An element Renkei cannot enforce faithfully (ignoring it could widen a permit or
    /// narrow a deny).
    #[error("{path}: not supported: {detail}")]
    Unsupported {
        /// Element path.
        path: String,
        /// What is not supported.
        detail: String,
    },
}

/// `Patient/x` → `x`; `x` → `x`.
pub(crate) fn strip_prefix_type<'a>(value: &'a str, res_type: &str) -> &'a str {
    value
        .strip_prefix(res_type)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(value)
}

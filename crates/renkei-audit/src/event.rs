//! BALP-shaped AuditEvents (IHE Basic Audit Log Patterns) for FHIR REST interactions and
//! consent decisions.

use base64::Engine;
use chrono::{SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const GATEWAY_NAME: &str = "Renkei FHIR gateway";

const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const REST_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const REST_SUBTYPE: &str = "http://hl7.org/fhir/restful-interaction";
const AUTHZ_SUBTYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType";
const ACTION: &str = "http://hl7.org/fhir/audit-event-action";
const OUTCOME: &str = "http://hl7.org/fhir/audit-event-outcome";

/// The code system of a code the trail stores in a searchable token element (`type`,
/// `subtype`, `action`, `outcome`, `purpose`), as events show it: a search naming a system
/// (`type=http://dicom.nema.org/resources/ontology/DCM|110113`) matches a code only in it.
pub fn code_system(element: &str, code: &str) -> Option<&'static str> {
    match (element, code) {
        ("type", "rest") => Some(REST_TYPE),
        ("type", _) => Some(DCM),
        ("subtype", "AuthZ-Consent") => Some(AUTHZ_SUBTYPE),
        ("subtype", LOGIN) => Some(DCM),
        ("subtype", _) => Some(REST_SUBTYPE),
        ("action", _) => Some(ACTION),
        ("outcome", _) => Some(OUTCOME),
        ("purpose", _) => Some(ACT_REASON),
        _ => None,
    }
}
/// DICOM event type and subtype of a token request (ATNA's User Authentication / Login).
const USER_AUTHENTICATION: &str = "110114";
const LOGIN: &str = "110122";

/// What the client did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interaction {
    Read,
    Vread,
    Search,
    Create,
    Update,
    Patch,
    Delete,
    History,
    Capabilities,
    Transaction,
    Batch,
    /// A named operation such as `$everything`.
    Operation(String),
    /// A consent authorization decision (BALP AuthZ-Consent).
    ConsentDecision,
    /// A token request at the authorization endpoint.
    Login,
}

impl Interaction {
    /// The FHIR restful-interaction code.
    pub fn code(&self) -> &str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Search => "search-type",
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::History => "history",
            Interaction::Capabilities => "capabilities",
            Interaction::Transaction => "transaction",
            Interaction::Batch => "batch",
            Interaction::Operation(_) => "operation",
            Interaction::ConsentDecision => "AuthZ-Consent",
            Interaction::Login => "login",
        }
    }

    /// The AuditEvent.action: C, R, U, D or E.
    pub fn action(&self) -> &'static str {
        match self {
            Interaction::Create => "C",
            Interaction::Read | Interaction::Vread | Interaction::History => "R",
            Interaction::Update | Interaction::Patch => "U",
            Interaction::Delete => "D",
            _ => "E",
        }
    }

    /// The BALP profile the event claims; `None` for a login, which BALP has no profile for.
    fn profile(&self, with_patient: bool) -> Option<String> {
        let name = match (self, with_patient) {
            (Interaction::Login, _) => return None,
            (Interaction::Create, true) => "IHE.BasicAudit.PatientCreate",
            (Interaction::Create, false) => "IHE.BasicAudit.Create",
            (Interaction::Read | Interaction::Vread | Interaction::History, true) => {
                "IHE.BasicAudit.PatientRead"
            }
            (Interaction::Read | Interaction::Vread | Interaction::History, false) => {
                "IHE.BasicAudit.Read"
            }
            (Interaction::Update | Interaction::Patch, true) => "IHE.BasicAudit.PatientUpdate",
            (Interaction::Update | Interaction::Patch, false) => "IHE.BasicAudit.Update",
            (Interaction::Delete, true) => "IHE.BasicAudit.PatientDelete",
            (Interaction::Delete, false) => "IHE.BasicAudit.Delete",
            (Interaction::Search | Interaction::Operation(_), true) => {
                "IHE.BasicAudit.PatientQuery"
            }
            (Interaction::ConsentDecision, _) => "IHE.BasicAudit.AuthZconsent",
            _ => "IHE.BasicAudit.Query",
        };
        Some(format!("{BALP}{name}"))
    }
}

/// AuditEvent.outcome per the R4 code system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditOutcome {
    Success,
    /// 4xx: the request failed or was refused.
    MinorFailure,
    /// 5xx: the server failed.
    SeriousFailure,
}

impl AuditOutcome {
    pub fn from_status(status: u16) -> Self {
        match status {
            0..=399 => AuditOutcome::Success,
            400..=499 => AuditOutcome::MinorFailure,
            _ => AuditOutcome::SeriousFailure,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            AuditOutcome::Success => "0",
            AuditOutcome::MinorFailure => "4",
            AuditOutcome::SeriousFailure => "8",
        }
    }
}

/// Who asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditAgent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `Organization/X` of the requesting facility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// `Practitioner/Y` acting, if the token names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
    /// `Patient/Z` when a patient asks for their own data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Purpose of use code (`TREAT`, `ETREAT`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Set for break-glass access: the stated reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_address: Option<String>,
}

/// The patient whose data the interaction touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientEntity(pub String);

/// Assembles one AuditEvent. It is also what the trail stores (see [`StoredEvent`]): every
/// field of the rendered AuditEvent follows from these facts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventBuilder {
    pub interaction: Interaction,
    pub outcome: AuditOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_desc: Option<String>,
    pub agent: AuditAgent,
    /// `Type/id` or `Type/id/_history/n` of the resources involved (none for searches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
    /// The raw query string of a search (stored base64 in `entity.query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub request_id: String,
    pub recorded_ms: i64,
    /// For consent decisions: the Consent (or `implicit-policy`) that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
}

/// The stored form of one AuditEvent: its id and the builder's facts, a few hundred bytes.
/// The BALP resource (about 2 KB, mostly fixed codings) is rendered from it whenever the trail
/// is read, so each read's audit writes, hashes and journals only the facts.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEvent<Id, Event, Custodians> {
    id: Id,
    event: Event,
    /// The holders of the data the event touched (the facility views' references), so that
    /// every search reference of a record follows from its hashed text. Empty, and absent,
    /// in records written before they were stored.
    #[serde(default)]
    custodians: Custodians,
}

/// A stored record's content: its id, its facts, and the holders of its data (`None` in
/// records written before they were stored).
pub type StoredFacts = (String, EventBuilder, Option<Vec<String>>);

/// What a stored record holds. `None` for a record written before events were stored in
/// compact form (the full resource).
pub fn parse_stored(stored: &str) -> Result<Option<StoredFacts>, UnreadableEvent> {
    Ok(match read_stored(stored)? {
        Stored::Resource(_) => None,
        Stored::Facts(stored) => {
            let StoredEvent {
                id,
                event,
                custodians,
            } = *stored;
            Some((id, event, custodians))
        }
    })
}

/// A stored record as written: the full resource (records from before compact storage) or
/// the facts.
enum Stored {
    Resource(Value),
    Facts(Box<StoredEvent<String, EventBuilder, Option<Vec<String>>>>),
}

fn read_stored(stored: &str) -> Result<Stored, UnreadableEvent> {
    let value: Value = serde_json::from_str(stored)?;
    if value.get("resourceType").is_some() {
        return Ok(Stored::Resource(value));
    }
    Ok(Stored::Facts(Box::new(serde_json::from_value(value)?)))
}

/// Why a stored event cannot be shown.
#[derive(Debug, thiserror::Error)]
#[error("stored audit event is not readable: {0}")]
pub struct UnreadableEvent(#[from] serde_json::Error);

/// The AuditEvent resource of a stored event. Records written before events were stored in
/// compact form hold the full resource and are returned as they are.
pub fn render_stored(stored: &str) -> Result<Value, UnreadableEvent> {
    Ok(match read_stored(stored)? {
        Stored::Resource(value) => value,
        Stored::Facts(stored) => stored.event.build(&stored.id),
    })
}

impl EventBuilder {
    pub fn new(interaction: Interaction, request_id: &str, recorded_ms: i64) -> Self {
        EventBuilder {
            interaction,
            outcome: AuditOutcome::Success,
            outcome_desc: None,
            agent: AuditAgent::default(),
            resources: Vec::new(),
            patients: Vec::new(),
            query: None,
            request_id: request_id.to_string(),
            recorded_ms,
            decided_by: None,
        }
    }

    /// The text the trail stores for this event (hashed as is by the chain), with the
    /// holders of the data it touched.
    pub fn stored(&self, id: &str, custodians: &[String]) -> String {
        serde_json::to_string(&StoredEvent {
            id,
            event: self,
            custodians,
        })
        .unwrap_or_default()
    }

    /// What decided, when it is a reference (`Consent/…`, a policy's URL): the entity an
    /// AuditEvent search by `entity=` finds. A privacy tag or a break-glass note is text.
    pub fn decider_reference(&self) -> Option<&str> {
        self.decided_by
            .as_deref()
            .filter(|decider| decider.contains('/') && !decider.contains(' '))
    }

    /// `AuditEvent.type.code` and `AuditEvent.subtype[0].code` (also indexed for search).
    pub fn type_and_subtype(&self) -> (&'static str, &str) {
        if self.interaction == Interaction::ConsentDecision {
            ("110113", "AuthZ-Consent")
        } else if self.interaction == Interaction::Login {
            (USER_AUTHENTICATION, LOGIN)
        } else {
            ("rest", self.interaction.code())
        }
    }

    /// The AuditEvent resource (without `id`/`meta.versionId`: the store assigns them).
    pub fn build(&self, id: &str) -> Value {
        let recorded = Utc
            .timestamp_millis_opt(self.recorded_ms)
            .single()
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let is_consent = self.interaction == Interaction::ConsentDecision;
        let (type_code, subtype_code) = self.type_and_subtype();
        let (event_type, subtype) = if is_consent {
            (
                json!({"system": DCM, "code": type_code, "display": "Security Alert"}),
                json!({"system": AUTHZ_SUBTYPE, "code": subtype_code, "display": "Authorization Decision using Roles and Consent"}),
            )
        } else if self.interaction == Interaction::Login {
            (
                json!({"system": DCM, "code": type_code, "display": "User Authentication"}),
                json!({"system": DCM, "code": subtype_code, "display": "Login"}),
            )
        } else {
            (
                json!({"system": REST_TYPE, "code": type_code, "display": "RESTful Operation"}),
                json!({"system": REST_SUBTYPE, "code": subtype_code}),
            )
        };
        let mut event = json!({
            "resourceType": "AuditEvent",
            "id": id,
            "type": event_type,
            "subtype": [subtype],
            "action": self.interaction.action(),
            "recorded": recorded,
            "outcome": self.outcome.code(),
            "agent": self.agents(),
            "source": {
                "site": "renkei",
                "observer": {"display": GATEWAY_NAME},
                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]
            },
            "entity": self.entities(),
        });
        if let Some(profile) = self.interaction.profile(!self.patients.is_empty()) {
            event["meta"] = json!({"profile": [profile]});
        }
        if let Some(desc) = &self.outcome_desc {
            event["outcomeDesc"] = json!(desc);
        }
        if let Some(purpose) = &self.agent.purpose {
            event["purposeOfEvent"] =
                json!([{"coding": [{"system": ACT_REASON, "code": purpose}]}]);
        }
        event
    }

    fn agents(&self) -> Vec<Value> {
        let mut agents = Vec::new();
        let mut client = json!({
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "who": {"identifier": {"system": CLIENT_SYSTEM, "value": self.agent.client_id.as_deref().unwrap_or("anonymous")}},
            "requestor": self.agent.practitioner.is_none() && self.agent.patient.is_none(),
        });
        if let Some(address) = &self.agent.network_address {
            client["network"] = json!({"address": address, "type": "2"});
        }
        agents.push(client);
        agents.push(json!({
            "type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
            "who": {"display": GATEWAY_NAME},
            "requestor": false,
        }));
        let purpose = self
            .agent
            .purpose
            .as_ref()
            .map(|p| json!([{"coding": [{"system": ACT_REASON, "code": p}]}]));
        for person in [&self.agent.practitioner, &self.agent.patient]
            .into_iter()
            .flatten()
        {
            let mut agent = json!({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
                "who": {"reference": person},
                "requestor": true,
            });
            if let Some(p) = &purpose {
                agent["purposeOfUse"] = p.clone();
            }
            if let Some(reason) = &self.agent.break_glass_reason {
                agent["policy"] = json!([format!("{BREAK_GLASS_POLICY}:{}", sanitize(reason))]);
            }
            agents.push(agent);
        }
        if let Some(org) = &self.agent.organization {
            let mut agent = json!({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PROV", "display": "healthcare provider"}]},
                "who": {"reference": org},
                "requestor": self.agent.practitioner.is_none() && self.agent.patient.is_none(),
            });
            if let Some(p) = &purpose {
                agent["purposeOfUse"] = p.clone();
            }
            // A system client acting without a named person: the break-glass reason goes on
            // the organization, so it is never lost.
            let has_person = self.agent.practitioner.is_some() || self.agent.patient.is_some();
            if let (false, Some(reason)) = (has_person, &self.agent.break_glass_reason) {
                agent["policy"] = json!([format!("{BREAK_GLASS_POLICY}:{}", sanitize(reason))]);
            }
            agents.push(agent);
        }
        agents
    }

    fn entities(&self) -> Vec<Value> {
        let mut entities = Vec::new();
        for patient in &self.patients {
            entities.push(json!({
                "what": {"reference": patient},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }));
        }
        for resource in &self.resources {
            entities.push(json!({
                "what": {"reference": resource},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            }));
        }
        if let Some(query) = &self.query {
            entities.push(json!({
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": base64::engine::general_purpose::STANDARD.encode(query.as_bytes()),
            }));
        }
        if let Some(decided_by) = &self.decided_by {
            entities.push(json!({
                "what": match self.decider_reference() {
                    Some(reference) => json!({"reference": reference}),
                    None => json!({"display": decided_by}),
                },
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "13", "display": "Security Resource"},
            }));
        }
        entities.push(json!({
            "what": {"identifier": {"value": self.request_id}},
            "type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId"},
        }));
        entities
    }
}

/// The identifier system of the requesting client's registration (`renkei client add --id`).
const CLIENT_SYSTEM: &str = "urn:renkei:client";
/// What a patient or facility sees for the requesting system.
const CLIENT_DISPLAY: &str = "the facility's client system";
/// The policy an agent acted under when it broke the glass; the stored form appends the
/// stated reason (`urn:renkei:break-glass:<reason>`).
const BREAK_GLASS_POLICY: &str = "urn:renkei:break-glass";

/// Keeps a free-text reason usable inside a URI (the full text is in the break-glass log):
/// letters and digits of other scripts are percent-encoded (RFC 3986 URIs are ASCII), so
/// `意識障害` stays readable to a URI decoder; anything else becomes `-`.
fn sanitize(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(200) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if c.is_alphanumeric() {
            let mut bytes = [0u8; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push('-');
        }
    }
    out
}

/// An event as a patient ("who viewed my record") or a facility (accesses to its data) sees
/// it: who accessed the data, when, what kind and why, but nothing that reader may not see
/// (another facility's records; UNDELIVERED and UNINFORMED data for the patient, CONSENT.md
/// rule 10). Entities naming a resource for which `visible` answers false are removed, a query
/// entity keeps only what it searched (its parameters may name hidden ids), and the outcome
/// description keeps only its status (the text is written for operators).
pub fn redact_hidden<E>(
    event: &mut Value,
    mut visible: impl FnMut(&str) -> Result<bool, E>,
) -> Result<(), E> {
    let mut hid_a_resource = false;
    let mut hid_the_decider = false;
    if let Some(entities) = event.get_mut("entity").and_then(Value::as_array_mut) {
        let mut kept = Vec::with_capacity(entities.len());
        for mut entity in std::mem::take(entities) {
            // A patient entity counts too: a search over several patients names each of them;
            // so does the Consent that decided (a security resource), which the reader may
            // not be allowed to read.
            let role = entity.pointer("/role/code").and_then(Value::as_str);
            let names_a_resource = matches!(role, Some("1" | "4"));
            let names_the_decider = role == Some("13");
            if let (true, Some(reference)) = (
                names_a_resource || names_the_decider,
                entity.pointer("/what/reference").and_then(Value::as_str),
            ) {
                if !visible(reference)? {
                    hid_a_resource |= names_a_resource;
                    hid_the_decider |= names_the_decider;
                    continue;
                }
            }
            if let Some(object) = entity.as_object_mut() {
                let engine = base64::engine::general_purpose::STANDARD;
                let searched = object
                    .get("query")
                    .and_then(Value::as_str)
                    .and_then(|encoded| engine.decode(encoded).ok())
                    .map(|bytes| searched_types(&String::from_utf8_lossy(&bytes)));
                match searched {
                    Some(types) if !types.is_empty() => {
                        object.insert("query".into(), Value::String(engine.encode(types)));
                    }
                    // FHIR forbids an empty string: with nothing to keep, no query element.
                    _ => {
                        object.remove("query");
                    }
                }
            }
            kept.push(entity);
        }
        // A privacy tag that decided about a resource hidden from this reader is part of that
        // resource: it would tell the patient that withheld data exists.
        if hid_a_resource {
            kept.retain(|entity| !names_privacy_tag(entity));
        }
        *entities = kept;
    }
    if let Some(desc) = event.get_mut("outcomeDesc") {
        let text = desc.as_str().unwrap_or_default();
        let status = match hid_the_decider || (hid_a_resource && text.contains(PRIVACY_TAG_DECIDER))
        {
            true => text.split(' ').next().unwrap_or_default(),
            // What follows a `:` or ` (` is written for operators: a reason in free text, the
            // request a break-glass opened (its parameters may name other patients' ids).
            false => text
                .split(':')
                .next()
                .and_then(|status| status.split(" (").next())
                .unwrap_or_default(),
        };
        *desc = Value::String(status.to_string());
    }
    if let Some(agents) = event.get_mut("agent").and_then(Value::as_array_mut) {
        for agent in agents {
            redact_agent(agent);
            // A patient acting through their app is a person this reader may not know of:
            // another patient's attempt on one's record says that someone tried, not who.
            let hidden_patient = match agent.pointer("/who/reference").and_then(Value::as_str) {
                Some(person) if person.starts_with("Patient/") => !visible(person)?,
                _ => false,
            };
            if hidden_patient {
                agent["who"] = json!({"display": ANOTHER_PATIENT_DISPLAY});
            }
        }
    }
    Ok(())
}

/// What a reader sees for a patient agent hidden from them.
const ANOTHER_PATIENT_DISPLAY: &str = "another patient";

/// An agent as a patient or facility sees it: which facility and practitioner, why, and
/// whether the glass was broken; not the requesting system's registration or network address,
/// nor the break-glass reason's free text (operator information, AUDIT.md).
fn redact_agent(agent: &mut Value) {
    let Some(object) = agent.as_object_mut() else {
        return;
    };
    object.remove("network");
    if object
        .get("who")
        .and_then(|who| who.pointer("/identifier/system"))
        .and_then(Value::as_str)
        == Some(CLIENT_SYSTEM)
    {
        object.insert("who".into(), json!({"display": CLIENT_DISPLAY}));
    }
    if let Some(policies) = object.get_mut("policy").and_then(Value::as_array_mut) {
        for policy in policies {
            if policy
                .as_str()
                .is_some_and(|uri| uri.starts_with(BREAK_GLASS_POLICY))
            {
                *policy = Value::String(BREAK_GLASS_POLICY.to_string());
            }
        }
    }
}

/// What a redacted query keeps of a recorded query: the resource types and operation of its
/// path (`Observation`; `Patient/Observation` for a compartment, `Patient/$everything`: the ids
/// in it are left out, since the patient may be hidden from the reader), or for a system
/// search (`?_type=A,B`) the types its `_type` names, which are types, never ids. Empty when it
/// names neither.
fn searched_types(query: &str) -> String {
    let (path, params) = query.split_once('?').unwrap_or((query, ""));
    if !path.is_empty() {
        let is_type = |segment: &str| {
            segment.starts_with(|c: char| c.is_ascii_uppercase())
                && segment.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        let is_operation = |segment: &str| {
            segment.len() > 1
                && segment.strip_prefix('$').is_some_and(|name| {
                    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        return path
            .split('/')
            .filter(|segment| is_type(segment) || is_operation(segment))
            .collect::<Vec<_>>()
            .join("/");
    }
    let lists: Vec<String> = params
        .split('&')
        .filter_map(|param| param.strip_prefix("_type="))
        .map(|list| list.replace("%2C", ",").replace("%2c", ","))
        .collect();
    let types: Vec<&str> = lists
        .iter()
        .flat_map(|list| list.split(','))
        // Anything but a type name is left out: only types are safe to show.
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()))
        .collect();
    types.join(",")
}

/// How a decision made by a privacy tag names its decider (`privacy-tag:UNDELIVERED`).
pub const PRIVACY_TAG_DECIDER: &str = "privacy-tag:";

fn names_privacy_tag(entity: &Value) -> bool {
    entity.pointer("/role/code").and_then(Value::as_str) == Some("13")
        && entity
            .pointer("/what/display")
            .and_then(Value::as_str)
            .is_some_and(|display| display.starts_with(PRIVACY_TAG_DECIDER))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn read_event_has_balp_shape() {
        let mut builder = EventBuilder::new(Interaction::Read, "req-1", 0);
        builder.agent.client_id = Some("clinic-ehr".into());
        builder.agent.organization = Some("Organization/clinic".into());
        builder.agent.practitioner = Some("Practitioner/dr".into());
        builder.agent.purpose = Some("TREAT".into());
        builder.patients.push("Patient/p1".into());
        builder.resources.push("Observation/o1/_history/2".into());
        let event = builder.build("e1");
        assert_eq!(event["action"], "R");
        assert_eq!(event["subtype"][0]["code"], "read");
        assert_eq!(event["outcome"], "0");
        assert_eq!(event["recorded"], "1970-01-01T00:00:00.000Z");
        assert!(event["meta"]["profile"][0]
            .as_str()
            .is_some_and(|p| p.ends_with("PatientRead")));
        let entities = event["entity"].as_array().map(Vec::len);
        assert_eq!(entities, Some(3));
        assert_eq!(event["entity"][0]["role"]["code"], "1");
        assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    }

    #[test]
    fn redaction_drops_hidden_entities_query_parameters_and_descriptions() {
        let mut builder = EventBuilder::new(Interaction::Search, "req-9", 0);
        builder.patients.push("Patient/p1".into());
        builder.patients.push("Patient/hidden-other".into());
        builder.resources.push("Observation/seen".into());
        builder
            .resources
            .push("Observation/hidden/_history/3".into());
        builder.query = Some("Observation?_id=seen,hidden".into());
        builder.outcome_desc = Some("403: Observation/hidden is held by another facility".into());
        let mut event = builder.build("e9");
        let mut asked = Vec::new();
        redact_hidden(&mut event, |reference| {
            asked.push(reference.to_string());
            Ok::<bool, ()>(!reference.contains("hidden"))
        })
        .unwrap();
        assert_eq!(
            asked,
            [
                "Patient/p1",
                "Patient/hidden-other",
                "Observation/seen",
                "Observation/hidden/_history/3"
            ]
        );
        let text = event.to_string();
        assert!(!text.contains("hidden"), "{text}");
        assert!(text.contains("Observation/seen") && text.contains("Patient/p1"));
        let query = event["entity"]
            .as_array()
            .and_then(|entities| entities.iter().find_map(|e| e["query"].as_str()))
            .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(query)
            .unwrap();
        assert_eq!(decoded, b"Observation");
        assert_eq!(event["outcomeDesc"], "403");
    }

    #[test]
    fn a_deciding_consent_the_reader_may_not_read_is_left_out() {
        let mut builder = EventBuilder::new(Interaction::ConsentDecision, "req-12", 0);
        builder.outcome = AuditOutcome::MinorFailure;
        builder.outcome_desc = Some("deny by Consent/other-facilitys".into());
        builder.patients.push("Patient/p1".into());
        builder.decided_by = Some("Consent/other-facilitys".into());
        let event = builder.build("e12");
        let mut hidden = event.clone();
        redact_hidden(&mut hidden, |r| Ok::<bool, ()>(!r.starts_with("Consent/"))).unwrap();
        assert!(!hidden.to_string().contains("other-facilitys"), "{hidden}");
        assert_eq!(hidden["outcomeDesc"], "deny");
        let mut seen = event;
        redact_hidden(&mut seen, |_| Ok::<bool, ()>(true)).unwrap();
        assert_eq!(seen["outcomeDesc"], "deny by Consent/other-facilitys");
    }

    #[test]
    fn redaction_keeps_who_why_and_the_break_glass_flag_not_operator_details() {
        let mut builder = EventBuilder::new(Interaction::ConsentDecision, "req-11", 0);
        builder.agent.client_id = Some("kurashiki-ehr".into());
        builder.agent.organization = Some("Organization/kurashiki".into());
        builder.agent.practitioner = Some("Practitioner/dr-x".into());
        builder.agent.purpose = Some("ETREAT".into());
        builder.agent.break_glass_reason = Some("unconscious, family says".into());
        builder.agent.network_address = Some("10.1.2.3".into());
        builder.patients.push("Patient/p1".into());
        builder.outcome_desc = Some(
            "break-glass (search Observation?patient=p1&_id=other-patients-lab): unconscious"
                .into(),
        );
        let mut event = builder.build("e11");
        redact_hidden(&mut event, |_| Ok::<bool, ()>(true)).unwrap();
        let text = event.to_string();
        for operator_detail in [
            "kurashiki-ehr",
            "10.1.2.3",
            "unconscious",
            "other-patients-lab",
        ] {
            assert!(!text.contains(operator_detail), "{operator_detail}: {text}");
        }
        assert_eq!(event["outcomeDesc"], "break-glass");
        for kept in [
            "Organization/kurashiki",
            "Practitioner/dr-x",
            "ETREAT",
            "\"urn:renkei:break-glass\"",
        ] {
            assert!(text.contains(kept), "{kept}: {text}");
        }
    }

    #[test]
    fn redaction_keeps_the_types_of_a_system_search_and_never_an_empty_query() {
        let redacted = |query: &str| {
            let mut builder = EventBuilder::new(Interaction::Search, "req-10", 0);
            builder.query = Some(query.into());
            let mut event = builder.build("e10");
            redact_hidden(&mut event, |_| Ok::<bool, ()>(true)).unwrap();
            event["entity"]
                .as_array()
                .and_then(|entities| entities.iter().find_map(|e| e.get("query")))
                .map(|q| {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(q.as_str().unwrap())
                        .unwrap();
                    String::from_utf8(bytes).unwrap()
                })
        };
        assert_eq!(redacted("?_type=Condition").as_deref(), Some("Condition"));
        assert_eq!(
            redacted("?_type=Condition%2CObservation&_id=x").as_deref(),
            Some("Condition,Observation")
        );
        assert_eq!(
            redacted("Observation?_id=x").as_deref(),
            Some("Observation")
        );
        assert_eq!(redacted("?_id=x"), None);
        assert_eq!(redacted("?_type=Patient/x"), None);
        // A compartment's patient may be hidden from the reader: its id is left out.
        assert_eq!(
            redacted("Patient/secret-1/Observation?code=x").as_deref(),
            Some("Patient/Observation")
        );
        assert_eq!(
            redacted("Patient/secret-1/$everything?_since=2020").as_deref(),
            Some("Patient/$everything")
        );
    }

    #[test]
    fn stored_form_renders_the_same_event_and_is_compact() {
        let mut builder = EventBuilder::new(Interaction::Operation("everything".into()), "r", 7);
        builder.agent.client_id = Some("clinic-ehr".into());
        builder.agent.organization = Some("Organization/clinic".into());
        builder.agent.purpose = Some("ETREAT".into());
        builder.agent.break_glass_reason = Some("unconscious".into());
        builder.outcome = AuditOutcome::MinorFailure;
        builder.outcome_desc = Some("denied".into());
        builder.patients.push("Patient/p1".into());
        builder.query = Some("_since=2020".into());
        builder.decided_by = Some("Consent/c1".into());
        let stored = builder.stored("e9", &[]);
        let rendered = render_stored(&stored).map_err(|e| e.to_string());
        assert_eq!(rendered, Ok(builder.build("e9")));
        let full = serde_json::to_string(&builder.build("e9")).unwrap_or_default();
        assert!(
            stored.len() * 3 < full.len(),
            "{} vs {}",
            stored.len(),
            full.len()
        );
    }

    #[test]
    fn records_stored_as_whole_resources_render_as_they_are() {
        let legacy = r#"{"resourceType":"AuditEvent","id":"old","action":"R"}"#;
        let rendered = render_stored(legacy).map_err(|e| e.to_string());
        assert_eq!(
            rendered,
            Ok(json!({"resourceType": "AuditEvent", "id": "old", "action": "R"}))
        );
        assert!(render_stored(r#"{"id":"x"}"#).is_err());
        assert!(render_stored("not json").is_err());
    }

    #[test]
    fn search_event_carries_base64_query() {
        let mut builder = EventBuilder::new(Interaction::Search, "req-2", 0);
        builder.query = Some("Observation?code=1".into());
        let event = builder.build("e2");
        assert_eq!(event["action"], "E");
        assert_eq!(event["entity"][0]["query"], "T2JzZXJ2YXRpb24/Y29kZT0x");
    }

    #[test]
    fn a_break_glass_reason_becomes_an_ascii_uri() {
        assert_eq!(sanitize("unconscious in ER"), "unconscious-in-ER");
        assert_eq!(sanitize("意識 (ER)"), "%E6%84%8F%E8%AD%98--ER-");
    }

    #[test]
    fn a_privacy_tag_is_redacted_with_the_resource_it_hid() {
        let mut builder = EventBuilder::new(Interaction::ConsentDecision, "req-4", 0);
        builder.outcome = AuditOutcome::MinorFailure;
        builder.outcome_desc = Some("deny by privacy-tag:UNDELIVERED".into());
        builder.patients.push("Patient/p1".into());
        builder.resources.push("Observation/o1".into());
        builder.decided_by = Some("privacy-tag:UNDELIVERED".into());
        let event = builder.build("e4");
        let texts = |event: &Value| event.to_string();
        // The holder sees the resource, and so the tag that kept it from the requester.
        let mut holders_view = event.clone();
        redact_hidden::<()>(&mut holders_view, |_| Ok(true)).unwrap();
        assert!(texts(&holders_view).contains("privacy-tag:UNDELIVERED"));
        // The patient sees neither.
        let mut patients_view = event;
        redact_hidden::<()>(&mut patients_view, |r| Ok(r != "Observation/o1")).unwrap();
        assert!(
            !texts(&patients_view).contains("privacy-tag"),
            "{patients_view}"
        );
        assert!(!texts(&patients_view).contains("Observation/o1"));
        assert_eq!(patients_view["outcomeDesc"], "deny");
        assert!(texts(&patients_view).contains("Patient/p1"));
    }

    #[test]
    fn consent_decision_is_a_security_alert() {
        let mut builder = EventBuilder::new(Interaction::ConsentDecision, "req-3", 0);
        builder.outcome = AuditOutcome::MinorFailure;
        builder.decided_by = Some("Consent/c1".into());
        let event = builder.build("e3");
        assert_eq!(event["type"]["code"], "110113");
        assert_eq!(event["subtype"][0]["code"], "AuthZ-Consent");
        assert_eq!(event["outcome"], "4");
    }
}

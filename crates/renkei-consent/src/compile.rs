//! FHIR R4 Consent → flat [`Rule`]s.

use serde_json::Value;

use crate::facts::normalize_reference;
use crate::model::{
    ConsentError, Effect, Rule, ACT_REASON_SYSTEM, CONSENT_ACTION_SYSTEM, CONSENT_SCOPE_SYSTEM,
    PARTICIPATION_TYPE_SYSTEM, PURPOSE_OF_USE_CODES, RESOURCE_TYPES_SYSTEM, ROLE_IRCP,
    SCOPE_PATIENT_PRIVACY,
};
use crate::time::{fhir_time_end, fhir_time_start};

/// Who a provision is about (one `actor` with role IRCP).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recipient {
    Organization(String),
    Practitioner(String),
}

/// One `provision.data` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DataItem {
    Instance(String),
    Related(String),
    Custodian(String),
}

type Bounds = (Option<i64>, Option<i64>);

/// One provision, parsed. `None` fields were not stated (and are inherited by a nested
/// provision from its parent); `Some(vec)` lists alternatives (OR).
#[derive(Debug, Clone, Default)]
struct Spec {
    recipients: Option<Vec<Recipient>>,
    purposes: Option<Vec<String>>,
    period: Option<Bounds>,
    classes: Option<Vec<String>>,
    labels: Option<Vec<(String, String)>>,
    data_period: Option<Bounds>,
    data: Option<Vec<DataItem>>,
}

impl Spec {
    /// The child's constraints, each replaced by the parent's when the child does not state it.
    fn inherit(self, parent: &Spec) -> Spec {
        Spec {
            recipients: self.recipients.or_else(|| parent.recipients.clone()),
            purposes: self.purposes.or_else(|| parent.purposes.clone()),
            period: self.period.or(parent.period),
            classes: self.classes.or_else(|| parent.classes.clone()),
            labels: self.labels.or_else(|| parent.labels.clone()),
            data_period: self.data_period.or(parent.data_period),
            data: self.data.or_else(|| parent.data.clone()),
        }
    }
}

/// Whether `consent` is in force: `status` = `active` and `scope` = patient-privacy. Only
/// such consents produce rules; any other Consent grants and denies nothing.
pub fn is_in_force(consent: &Value) -> bool {
    consent.get("status").and_then(Value::as_str) == Some("active") && has_privacy_scope(consent)
}

/// Compiles a FHIR R4 Consent into flat rules (see the crate documentation for the model).
///
/// - Not a Consent → `Err(NotAConsent)`.
/// - Not in force ([`is_in_force`]: status other than `active`, or a scope other than
///   `patient-privacy`) → `Ok(vec![])`, without validating anything else, so that a broken
///   Consent can always be withdrawn.
/// - In force → at least one rule, or an error when the Consent cannot be enforced as
///   written (the caller should reject it).
pub fn compile(consent: &Value) -> Result<Vec<Rule>, ConsentError> {
    if consent.get("resourceType").and_then(Value::as_str) != Some("Consent") {
        return Err(ConsentError::NotAConsent);
    }
    if !is_in_force(consent) {
        return Ok(Vec::new());
    }
    let id = consent
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or(ConsentError::MissingId)?;
    let consent_id = format!("Consent/{id}");
    let patient_id = consent_patient_id(consent)?;
    if let Some(path) = first_modifier("Consent", consent) {
        return Err(unsupported(
            &path,
            "a modifier (modifierExtension, implicitRules) changes what the consent means, \
             and Renkei cannot tell how: ignoring it could widen a permit"
                .into(),
        ));
    }

    let empty = Value::Object(serde_json::Map::new());
    let root = consent.get("provision").unwrap_or(&empty);
    if !root.is_object() {
        return Err(invalid("Consent.provision", "must be an object"));
    }
    // Root `type` absent: deny (the R4 spec leaves the root's meaning to the policy;
    // Renkei fails closed).
    let root_effect = provision_effect("Consent.provision", root, Effect::Deny)?;
    let root_spec = parse_spec("Consent.provision", root)?;

    let mut rules = Vec::new();
    expand(
        &consent_id,
        &patient_id,
        root_effect,
        false,
        &root_spec,
        &mut rules,
    );

    for (index, child) in array(root, "provision").iter().enumerate() {
        let path = format!("Consent.provision.provision[{index}]");
        if !child.is_object() {
            return Err(invalid(&path, "must be an object"));
        }
        if !array(child, "provision").is_empty() {
            return Err(ConsentError::NestingTooDeep { path });
        }
        let effect = provision_effect(&path, child, root_effect.opposite())?;
        let spec = parse_spec(&path, child)?.inherit(&root_spec);
        expand(&consent_id, &patient_id, effect, true, &spec, &mut rules);
    }
    if rules.is_empty() {
        // Cannot happen with the expansion below (every provision yields ≥ 1 rule), but an
        // in-force consent must never compile to nothing: "no rules" means "no consent".
        return Err(invalid("Consent.provision", "yields no rule"));
    }
    Ok(rules)
}

/// Why a consent's actor or data reference cannot be enforced: a resource on another server
/// (or a path that is no `Type/id`) names nothing of this network, even when its id matches
/// a local one.
const LOCAL_REFERENCE_NEEDED: &str =
    "no literal reference (Type/id) to a resource of this server; another server's resource is none of this network's";

/// The patient of a Consent (plain id) from `patient.reference`.
pub fn consent_patient_id(consent: &Value) -> Result<String, ConsentError> {
    let raw = consent
        .get("patient")
        .and_then(|p| p.get("reference"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match normalize_reference(raw) {
        Some(reference) => match reference.strip_prefix("Patient/") {
            Some(id) => Ok(id.to_string()),
            None => Err(ConsentError::InvalidPatient(raw.to_string())),
        },
        None => Err(ConsentError::InvalidPatient(raw.to_string())),
    }
}

fn has_privacy_scope(consent: &Value) -> bool {
    consent
        .get("scope")
        .map(|scope| array(scope, "coding"))
        .unwrap_or(&[])
        .iter()
        .any(|coding| {
            coding.get("system").and_then(Value::as_str) == Some(CONSENT_SCOPE_SYSTEM)
                && coding.get("code").and_then(Value::as_str) == Some(SCOPE_PATIENT_PRIVACY)
        })
}

/// The path of the first element of `value` that changes the meaning of what holds it
/// (`modifierExtension`, the resource's `implicitRules`; FHIR forbids processing a resource as
/// if an unknown modifier were absent). Contained resources are left out: they are resources of
/// their own, and no actor or data reference of a consent may name one.
fn first_modifier(path: &str, value: &Value) -> Option<String> {
    match value {
        Value::Object(members) => members.iter().find_map(|(key, member)| {
            let here = format!("{path}.{key}");
            match key.as_str() {
                "modifierExtension" => Some(here),
                "implicitRules" if path == "Consent" => Some(here),
                "contained" if path == "Consent" => None,
                _ => first_modifier(&here, member),
            }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| first_modifier(&format!("{path}[{index}]"), item)),
        _ => None,
    }
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn invalid(path: &str, detail: &str) -> ConsentError {
    ConsentError::Invalid {
        path: path.to_string(),
        detail: detail.to_string(),
    }
}

fn unsupported(path: &str, detail: String) -> ConsentError {
    ConsentError::Unsupported {
        path: path.to_string(),
        detail,
    }
}

fn provision_effect(path: &str, provision: &Value, absent: Effect) -> Result<Effect, ConsentError> {
    match provision.get("type") {
        None | Some(Value::Null) => Ok(absent),
        Some(Value::String(s)) if s == "permit" => Ok(Effect::Permit),
        Some(Value::String(s)) if s == "deny" => Ok(Effect::Deny),
        Some(other) => Err(ConsentError::InvalidProvisionType {
            path: path.to_string(),
            value: other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_string),
        }),
    }
}

/// `Some(list)` when the element is a non-empty array, `None` when absent or empty.
fn stated<'a>(provision: &'a Value, key: &str) -> Option<&'a [Value]> {
    let items = array(provision, key);
    (!items.is_empty()).then_some(items)
}

fn coding_parts(path: &str, coding: &Value) -> Result<(Option<String>, String), ConsentError> {
    // Canonical spelling, as the index stores systems: a purpose or label written with the
    // OID or the old URL of a v3 code system is the same code as with its URL.
    let system = coding
        .get("system")
        .and_then(Value::as_str)
        .map(|system| renkei_search::canonical_system(system).to_string());
    let code = coding
        .get("code")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| invalid(path, "coding has no code"))?;
    Ok((system, code.to_string()))
}

fn parse_period(path: &str, period: Option<&Value>) -> Result<Option<Bounds>, ConsentError> {
    let Some(period) = period else {
        return Ok(None);
    };
    let bound = |key: &str, pick: fn(&str) -> Option<i64>| -> Result<Option<i64>, ConsentError> {
        match period.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => {
                let text = value.as_str().unwrap_or("");
                pick(text)
                    .map(Some)
                    .ok_or_else(|| ConsentError::InvalidDate {
                        path: format!("{path}.{key}"),
                        value: value
                            .as_str()
                            .map_or_else(|| value.to_string(), str::to_string),
                    })
            }
        }
    };
    let start = bound("start", fhir_time_start)?;
    let end = bound("end", fhir_time_end)?;
    // per-1: a period's start is not after its end (compared at their widest: a start
    // of 2025-03 and an end of 2025-03-10 overlap and are valid).
    if let (Some(from), Some(to)) = (start, end) {
        if from > to {
            return Err(invalid(path, "start is after end (per-1)"));
        }
    }
    Ok((start.is_some() || end.is_some()).then_some((start, end)))
}

fn parse_spec(path: &str, provision: &Value) -> Result<Spec, ConsentError> {
    if provision.get("code").is_some() {
        return Err(unsupported(
            &format!("{path}.code"),
            "content codes; use class (resource types) or securityLabel".to_string(),
        ));
    }
    if let Some(actions) = stated(provision, "action") {
        let discloses = actions.iter().any(|action| {
            array(action, "coding").iter().any(|coding| {
                let system = coding.get("system").and_then(Value::as_str);
                let code = coding.get("code").and_then(Value::as_str);
                system.is_none_or(|s| s == CONSENT_ACTION_SYSTEM)
                    && matches!(code, Some("access" | "use" | "disclose"))
            })
        });
        if !discloses {
            return Err(unsupported(
                &format!("{path}.action"),
                "a provision must govern access, use or disclose (or state no action)".to_string(),
            ));
        }
    }

    let mut spec = Spec::default();

    if let Some(actors) = stated(provision, "actor") {
        let mut recipients = Vec::new();
        for (i, actor) in actors.iter().enumerate() {
            let actor_path = format!("{path}.actor[{i}]");
            let is_ircp = actor
                .get("role")
                .map(|role| array(role, "coding"))
                .unwrap_or(&[])
                .iter()
                .any(|coding| {
                    coding
                        .get("system")
                        .and_then(Value::as_str)
                        .is_none_or(|s| s == PARTICIPATION_TYPE_SYSTEM)
                        && coding.get("code").and_then(Value::as_str) == Some(ROLE_IRCP)
                });
            if !is_ircp {
                return Err(unsupported(
                    &format!("{actor_path}.role"),
                    "only role IRCP (information recipient, v3-ParticipationType) is supported"
                        .to_string(),
                ));
            }
            let raw = actor
                .get("reference")
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let reference = normalize_reference(raw).ok_or_else(|| {
                invalid(&format!("{actor_path}.reference"), LOCAL_REFERENCE_NEEDED)
            })?;
            let recipient = if reference.starts_with("Organization/") {
                Recipient::Organization(reference)
            } else if reference.starts_with("Practitioner/") {
                Recipient::Practitioner(reference)
            } else {
                return Err(unsupported(
                    &format!("{actor_path}.reference"),
                    format!("recipient {reference}: only Organization and Practitioner"),
                ));
            };
            if !recipients.contains(&recipient) {
                recipients.push(recipient);
            }
        }
        spec.recipients = Some(recipients);
    }

    if let Some(purposes) = stated(provision, "purpose") {
        let mut codes = Vec::new();
        for (i, coding) in purposes.iter().enumerate() {
            let p = format!("{path}.purpose[{i}]");
            let (system, code) = coding_parts(&p, coding)?;
            if system.as_deref().is_some_and(|s| s != ACT_REASON_SYSTEM) {
                return Err(unsupported(
                    &p,
                    format!(
                        "purpose system {}: only v3-ActReason ({ACT_REASON_SYSTEM})",
                        system.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if !PURPOSE_OF_USE_CODES.contains(&code.as_str()) {
                let upper = code.to_ascii_uppercase();
                let hint = if PURPOSE_OF_USE_CODES.contains(&upper.as_str()) {
                    format!(" (v3 codes are upper case: {upper})")
                } else {
                    String::new()
                };
                return Err(unsupported(
                    &p,
                    format!("purpose '{code}' is no v3-ActReason purpose of use (such as TREAT, ETREAT, HPAYMT, PUBHLTH){hint}"),
                ));
            }
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
        spec.purposes = Some(codes);
    }

    spec.period = parse_period(&format!("{path}.period"), provision.get("period"))?;
    spec.data_period = parse_period(&format!("{path}.dataPeriod"), provision.get("dataPeriod"))?;

    if let Some(classes) = stated(provision, "class") {
        let mut types = Vec::new();
        for (i, coding) in classes.iter().enumerate() {
            let p = format!("{path}.class[{i}]");
            let (system, code) = coding_parts(&p, coding)?;
            if system
                .as_deref()
                .is_some_and(|s| s != RESOURCE_TYPES_SYSTEM)
            {
                return Err(unsupported(
                    &p,
                    format!(
                        "class system {}: only resource types ({RESOURCE_TYPES_SYSTEM})",
                        system.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if !renkei_fhir_schema::is_resource_type(&code) {
                return Err(unsupported(
                    &p,
                    format!("class code {code:?} is not an R4 resource type"),
                ));
            }
            if !types.contains(&code) {
                types.push(code);
            }
        }
        spec.classes = Some(types);
    }

    if let Some(labels) = stated(provision, "securityLabel") {
        let mut pairs = Vec::new();
        for (i, coding) in labels.iter().enumerate() {
            let p = format!("{path}.securityLabel[{i}]");
            let (system, code) = coding_parts(&p, coding)?;
            // A label is matched by system and code; a code alone would match nothing, and a
            // deny that matches nothing hides nothing.
            let Some(system) = system.filter(|s| !s.is_empty()) else {
                return Err(unsupported(
                    &p,
                    format!("security label {code:?} without a system cannot be matched exactly"),
                ));
            };
            let pair = (system, code);
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
        spec.labels = Some(pairs);
    }

    if let Some(data) = stated(provision, "data") {
        let mut items = Vec::new();
        for (i, entry) in data.iter().enumerate() {
            let p = format!("{path}.data[{i}]");
            let raw = entry
                .get("reference")
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let reference = normalize_reference(raw)
                .ok_or_else(|| invalid(&format!("{p}.reference"), LOCAL_REFERENCE_NEEDED))?;
            let item = match entry.get("meaning").and_then(Value::as_str) {
                Some("instance") => DataItem::Instance(reference),
                Some("related" | "dependents") => DataItem::Related(reference),
                Some("authoredby") if reference.starts_with("Organization/") => {
                    DataItem::Custodian(reference)
                }
                Some("authoredby") => {
                    return Err(unsupported(
                        &p,
                        format!("authoredby {reference}: only an Organization (the custodian)"),
                    ))
                }
                other => {
                    return Err(invalid(
                        &format!("{p}.meaning"),
                        &format!(
                            "must be instance, related, dependents or authoredby, found {other:?}"
                        ),
                    ))
                }
            };
            if !items.contains(&item) {
                items.push(item);
            }
        }
        spec.data = Some(items);
    }
    Ok(spec)
}

/// One rule per combination of recipient × purpose × class × label × data item.
fn expand(
    consent_id: &str,
    patient_id: &str,
    effect: Effect,
    nested: bool,
    spec: &Spec,
    out: &mut Vec<Rule>,
) {
    fn options<T: Clone>(list: &Option<Vec<T>>) -> Vec<Option<T>> {
        match list {
            Some(items) if !items.is_empty() => items.iter().cloned().map(Some).collect(),
            _ => vec![None],
        }
    }
    let mut base = Rule::unconstrained(consent_id, patient_id, effect);
    base.nested = nested;
    if let Some((from, to)) = spec.period {
        base.valid_from_ms = from;
        base.valid_to_ms = to;
    }
    if let Some((from, to)) = spec.data_period {
        base.data_from_ms = from;
        base.data_to_ms = to;
    }
    for recipient in options(&spec.recipients) {
        for purpose in options(&spec.purposes) {
            for class in options(&spec.classes) {
                for label in options(&spec.labels) {
                    for item in options(&spec.data) {
                        let mut rule = base.clone();
                        match &recipient {
                            Some(Recipient::Organization(org)) => {
                                rule.actor_org = Some(org.clone())
                            }
                            Some(Recipient::Practitioner(p)) => {
                                rule.actor_practitioner = Some(p.clone())
                            }
                            None => {}
                        }
                        rule.purpose = purpose.clone();
                        rule.class_type = class.clone();
                        rule.security_label = label.clone();
                        match item {
                            Some(DataItem::Instance(r)) => rule.data_reference = Some(r),
                            Some(DataItem::Related(r)) => rule.data_related = Some(r),
                            Some(DataItem::Custodian(r)) => rule.data_custodian = Some(r),
                            None => {}
                        }
                        out.push(rule);
                    }
                }
            }
        }
    }
}

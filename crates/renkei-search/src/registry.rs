//! The search parameters this server supports: the official R4 definitions plus the JP Core
//! ones and IHE PDQm's mothersMaidenName, embedded in the binary and compiled once.

use renkei_fhirpath::Expression;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

const R4_BUNDLE: &str = include_str!("../../../fixtures/r4-definitions/search-parameters.json");
const ADDITIONAL_DEFINITIONS: &[&str] = &[
    include_str!("../../../fixtures/jp-core-search-parameters/SearchParameter-jp-coverage-insuredpersonnumber-sp.json"),
    include_str!("../../../fixtures/jp-core-search-parameters/SearchParameter-jp-coverage-insuredpersonsubnumber-sp.json"),
    include_str!("../../../fixtures/jp-core-search-parameters/SearchParameter-jp-coverage-insuredpersonsymbol-sp.json"),
    include_str!("../../../fixtures/jp-core-search-parameters/SearchParameter-jp-medicationrequest-start-sp.json"),
    include_str!("../../../fixtures/jp-core-search-parameters/SearchParameter-jp-organization-insuranceorganizationcategory-sp.json"),
    include_str!("../../../fixtures/jp-core-search-parameters/SearchParameter-jp-organization-insuranceorganizationno-sp.json"),
    include_str!("../../../fixtures/jp-core-search-parameters/SearchParameter-jp-organization-prefectureno-sp.json"),
    include_str!("../../../fixtures/jp-core-search-parameters/SearchParameter-jp-patient-kanasort-sp.json"),
    // IHE PDQm (ITI-78) asks for mothersMaidenName, which R4 core defines no parameter for.
    include_str!("../../../fixtures/ihe-search-parameters/SearchParameter-pdqm-mothersMaidenName.json"),
];
/// Expressions of embedded definitions that are wrong for the data they describe, replaced as
/// the registry loads them (the fixture files stay as published). JP Core 1.1.2's Organization
/// parameters select `.value.as(code)`, but its own extensions (`StructureDefinition-jp-
/// organization-prefectureno.json` and siblings) define `valueCoding` for the prefecture number
/// and insurance-organization category and `valueIdentifier` for the insurance-organization
/// number, so the published expressions matched no conformant Organization; their own xpath
/// already names `f:valueCoding`. Stored Organizations need `renkei reindex` to pick this up.
const EXPRESSION_OVERRIDES: &[(&str, &str)] = &[
    (
        "http://jpfhir.jp/fhir/core/SearchParameter/JP_Organization_PrefectureNo_SP",
        "Organization.extension.where(url='http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Organization_PrefectureNo').value.as(Coding)",
    ),
    (
        "http://jpfhir.jp/fhir/core/SearchParameter/JP_Organization_InsuranceOrganizationCategory_SP",
        "Organization.extension.where(url='http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Organization_InsuranceOrganizationCategory').value.as(Coding)",
    ),
    (
        "http://jpfhir.jp/fhir/core/SearchParameter/JP_Organization_InsuranceOrganizationNo_SP",
        "Organization.extension.where(url='http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Organization_InsuranceOrganizationNo').value.as(Identifier)",
    ),
];

/// Definitions left out of the registry although they have an expression, so a search by
/// them is refused under `Prefer: handling=strict` and warned about otherwise, as any unknown
/// parameter. `Bundle.composition` and `Bundle.message` select `Bundle.entry[0].resource`: a
/// resource inside the Bundle, not a reference to a stored one, so they are searched only
/// through their chains (`composition.type=…`), as [`ENTRY_CHAINS`] declares.
const NOT_SUPPORTED: &[&str] = &[
    "http://hl7.org/fhir/SearchParameter/Bundle-composition",
    "http://hl7.org/fhir/SearchParameter/Bundle-message",
];

/// The chains into a Bundle's first entry R4 defines (`Bundle.composition`,
/// `Bundle.message`): the chain's name, the type of the first entry's resource. Each of that
/// type's parameters is declared on Bundle as `<chain>.<code>`,
/// with no expression of its own: the first entry's index rows are stored under the Bundle with
/// the chain's name before their parameter's (`extract`). Reference parameters are left out
/// but `subject` and `patient`, which the repository resolves to the patient record the
/// document is about: the other references of an entry name other entries of the Bundle
/// (`urn:uuid:`) or records of the sender's server, never records here.
pub const ENTRY_CHAINS: &[(&str, &str)] =
    &[("composition", "Composition"), ("message", "MessageHeader")];

/// The reference parameters of a Bundle's first entry that are searched through its chain.
pub const ENTRY_CHAIN_REFERENCES: &[&str] = &["subject", "patient"];

const PATIENT_COMPARTMENT: &str = include_str!(
    "../../../fixtures/r4-definitions/compartments/CompartmentDefinition-patient.json"
);

/// The type of a search parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn parse(code: &str) -> Option<ParamType> {
        Some(match code {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }

    /// Whether values of this type are indexed and searchable here.
    pub fn is_indexed(self) -> bool {
        !matches!(self, ParamType::Special)
    }
}

/// The definition a composite's component stands for where R4 published the wrong one.
/// `DocumentReference-relationship` names `relatesto` for its `code` component and
/// `relation` for its `target` one (R5 swapped them back): taken as written, the `code` was
/// read as a reference and the parameter indexed nothing.
fn component_errata<'a>(composite: &str, definition: &'a str) -> &'a str {
    const BASE: &str = "http://hl7.org/fhir/SearchParameter/";
    if composite != "http://hl7.org/fhir/SearchParameter/DocumentReference-relationship" {
        return definition;
    }
    match definition.strip_prefix(BASE) {
        Some("DocumentReference-relatesto") => {
            "http://hl7.org/fhir/SearchParameter/DocumentReference-relation"
        }
        Some("DocumentReference-relation") => {
            "http://hl7.org/fhir/SearchParameter/DocumentReference-relatesto"
        }
        _ => definition,
    }
}

/// One component of a composite parameter: its type (from the component's own definition)
/// and its expression, relative to each element the composite's expression selects.
#[derive(Debug, Clone)]
pub struct Component {
    pub kind: ParamType,
    pub expression_text: String,
    pub expression: Option<Expression>,
    /// The expression starts at `%resource` (MolecularSequence coordinates), not at the
    /// element.
    pub on_resource: bool,
}

/// One search parameter as it applies to one resource type.
#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: String,
    pub url: String,
    pub kind: ParamType,
    pub description: String,
    /// Resource types a reference parameter may point to.
    pub targets: Vec<String>,
    /// The part of the definition's expression that applies to this type.
    pub expression_text: Option<String>,
    pub expression: Option<Expression>,
    /// The components of a composite parameter, in order (empty for other types).
    pub components: Vec<Component>,
    /// Other parameters of this type and kind whose values are always among this one's: each
    /// one's alternatives are some of this expression's (`combo-code` is `code` |
    /// `component-code`). Only the values they do not cover are stored under this parameter,
    /// and a search by it also matches their rows, so a resource stores each value once.
    pub extends: Vec<String>,
    /// With `extends`: the alternatives its bases do not cover (`None` when they cover all).
    narrowed: Option<Expression>,
}

impl SearchParam {
    /// Whether this is a token parameter over Identifier elements, the only ones R4 defines
    /// `:of-type` for. The registry holds expressions, not element types: every alternative of
    /// the expression for this type must end at an Identifier element, which the R4 and JP
    /// Core definitions name `identifier` or `…Identifier` (`masterIdentifier`,
    /// `(Composition.relatesTo.target as Identifier)`); no other element is named so.
    pub fn selects_identifiers(&self) -> bool {
        self.kind == ParamType::Token
            && self.expression_text.as_deref().is_some_and(|expression| {
                split_top_level(expression).into_iter().all(|part| {
                    let end = part.trim().trim_end_matches(')').trim_end();
                    end.ends_with(".identifier") || end.ends_with("Identifier")
                })
            })
    }

    /// Whether this uri parameter's element is a `canonical` naming another resource, so a
    /// value without `|version` matches every stored version (references.html#canonical), as
    /// reference parameters over canonicals do. The registry holds expressions, not element
    /// types; of the R4 uri parameters only `_profile` (`meta.profile`) is over a canonical
    /// that points elsewhere (`url` is the resource's own canonical, `instantiates-canonical`
    /// is a reference parameter, the rest are `uri`-typed elements).
    pub fn matches_canonical_versions(&self) -> bool {
        self.kind == ParamType::Uri
            && self.expression_text.as_deref().is_some_and(|expression| {
                split_top_level(expression)
                    .into_iter()
                    .all(|part| part.trim().ends_with(".meta.profile"))
            })
    }

    /// What extraction evaluates: the expression without the alternatives its bases cover.
    pub fn index_expression(&self) -> Option<&Expression> {
        if self.extends.is_empty() {
            self.expression.as_ref()
        } else {
            self.narrowed.as_ref()
        }
    }
}

/// All parameters, per resource type.
#[derive(Debug)]
pub struct Registry {
    by_type: HashMap<String, BTreeMap<String, SearchParam>>,
    /// Parameters defined on `Resource`/`DomainResource`, valid for every type.
    common: BTreeMap<String, SearchParam>,
    /// Patient compartment: resource type → the parameters linking it to the Patient.
    patient_compartment: BTreeMap<String, Vec<String>>,
}

/// The registry, built on first use.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::build)
}

impl Registry {
    fn build() -> Registry {
        let mut definitions: Vec<Value> = Vec::new();
        if let Ok(bundle) = serde_json::from_str::<Value>(R4_BUNDLE) {
            if let Some(entries) = bundle.get("entry").and_then(Value::as_array) {
                definitions.extend(entries.iter().filter_map(|e| e.get("resource").cloned()));
            }
        }
        for text in ADDITIONAL_DEFINITIONS {
            if let Ok(def) = serde_json::from_str::<Value>(text) {
                definitions.push(def);
            }
        }
        for def in &mut definitions {
            let url = def.get("url").and_then(Value::as_str).unwrap_or_default();
            if let Some((_, expression)) = EXPRESSION_OVERRIDES.iter().find(|(u, _)| *u == url) {
                def["expression"] = Value::String((*expression).to_string());
            }
        }
        let mut registry = Registry {
            by_type: HashMap::new(),
            common: BTreeMap::new(),
            patient_compartment: BTreeMap::new(),
        };
        let kinds: HashMap<String, ParamType> = definitions
            .iter()
            .filter_map(|d| {
                let url = d.get("url").and_then(Value::as_str)?;
                let kind = ParamType::parse(d.get("type").and_then(Value::as_str)?)?;
                Some((url.to_string(), kind))
            })
            .collect();
        for def in &definitions {
            registry.add(def, &kinds);
        }
        for params in registry.by_type.values_mut() {
            link_extensions(params);
        }
        registry.add_entry_chains();
        if let Ok(compartment) = serde_json::from_str::<Value>(PATIENT_COMPARTMENT) {
            for resource in compartment
                .get("resource")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(code) = resource.get("code").and_then(Value::as_str) else {
                    continue;
                };
                let params: Vec<String> = resource
                    .get("param")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                if !params.is_empty() {
                    registry
                        .patient_compartment
                        .insert(code.to_string(), params);
                }
            }
        }
        registry
    }

    /// Declares the parameters of [`ENTRY_CHAINS`] on Bundle.
    fn add_entry_chains(&mut self) {
        let mut chained = Vec::new();
        for (chain, entry_type) in ENTRY_CHAINS {
            for param in self
                .by_type
                .get(*entry_type)
                .into_iter()
                .flat_map(|m| m.values())
            {
                let searchable = param.kind.is_indexed()
                    && (param.kind != ParamType::Reference
                        || ENTRY_CHAIN_REFERENCES.contains(&param.code.as_str()));
                if !searchable {
                    continue;
                }
                chained.push(SearchParam {
                    code: format!("{chain}.{}", param.code),
                    description: format!(
                        "{} (of the {entry_type} that is the Bundle's first entry)",
                        param.description
                    ),
                    expression_text: None,
                    expression: None,
                    extends: param
                        .extends
                        .iter()
                        .map(|base| format!("{chain}.{base}"))
                        .collect(),
                    narrowed: None,
                    // The references kept name the patient record the document is about.
                    targets: match param.kind {
                        ParamType::Reference => vec!["Patient".to_string()],
                        _ => param.targets.clone(),
                    },
                    ..param.clone()
                });
            }
        }
        let bundle = self.by_type.entry("Bundle".to_string()).or_default();
        for param in chained {
            bundle.insert(param.code.clone(), param);
        }
    }

    fn add(&mut self, def: &Value, kinds: &HashMap<String, ParamType>) {
        let text = |key: &str| def.get(key).and_then(Value::as_str).unwrap_or_default();
        let Some(kind) = ParamType::parse(text("type")) else {
            return;
        };
        let code = text("code").to_string();
        if code.is_empty() {
            return;
        }
        let targets: Vec<String> = def
            .get("target")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        if NOT_SUPPORTED.contains(&text("url")) {
            return;
        }
        let expression = def.get("expression").and_then(Value::as_str);
        // `_text`, `_content` and `_query` have no expression: nothing to index, so they are
        // not supported. Registered, they matched nothing (total 0); left out, a search
        // reports them as unknown (ignored, or 400 under handling=strict) and the
        // CapabilityStatement does not list them.
        if expression.is_none() && kind != ParamType::Composite {
            return;
        }
        let components: Vec<Component> = def
            .get("component")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let definition = c.get("definition").and_then(Value::as_str)?;
                let kind = *kinds.get(component_errata(text("url"), definition))?;
                let text = c.get("expression").and_then(Value::as_str)?;
                let (on_resource, relative) = match text.strip_prefix("%resource.") {
                    Some(rest) => (true, rest),
                    None => (false, text),
                };
                Some(Component {
                    kind,
                    expression_text: text.to_string(),
                    expression: renkei_fhirpath::compile(relative).ok(),
                    on_resource,
                })
            })
            .collect();
        if kind == ParamType::Composite && components.is_empty() {
            return;
        }
        for base in def
            .get("base")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let part = expression.and_then(|e| expression_for(e, base));
            let compiled = part
                .as_deref()
                .and_then(|p| renkei_fhirpath::compile(p).ok());
            let param = SearchParam {
                code: code.clone(),
                url: text("url").to_string(),
                kind,
                description: text("description").to_string(),
                targets: targets.clone(),
                expression_text: part,
                expression: compiled,
                components: components.clone(),
                extends: Vec::new(),
                narrowed: None,
            };
            if base == "Resource" || base == "DomainResource" {
                self.common.insert(code.clone(), param);
            } else {
                self.by_type
                    .entry(base.to_string())
                    .or_default()
                    .insert(code.clone(), param);
            }
        }
    }

    /// The parameter `code` of `res_type` (type-specific first, then the common ones).
    pub fn param(&self, res_type: &str, code: &str) -> Option<&SearchParam> {
        self.by_type
            .get(res_type)
            .and_then(|m| m.get(code))
            .or_else(|| self.common.get(code))
    }

    /// Every parameter of `res_type`, common ones included, by code.
    pub fn params<'a>(&'a self, res_type: &str) -> impl Iterator<Item = &'a SearchParam> + 'a {
        let specific = self.by_type.get(res_type);
        let common = self
            .common
            .values()
            .filter(move |p| specific.is_none_or(|m| !m.contains_key(&p.code)));
        specific.into_iter().flat_map(|m| m.values()).chain(common)
    }

    /// The parameters (of the Patient compartment definition) that put a `res_type` resource
    /// into a patient's compartment; empty when the type is not in it.
    pub fn patient_compartment_params(&self, res_type: &str) -> &[String] {
        self.patient_compartment
            .get(res_type)
            .map_or(&[], Vec::as_slice)
    }

    /// Resource types that are members of the Patient compartment.
    pub fn patient_compartment_types(&self) -> impl Iterator<Item = &str> {
        self.patient_compartment.keys().map(String::as_str)
    }
}

/// Finds, for each parameter, the parameters it extends (see [`SearchParam::extends`]) and
/// narrows its index expression to the alternatives they do not cover. Reference parameters
/// are left whole: includes, chains and compartments name them directly. A parameter extends
/// only parameters with fewer alternatives that extend nothing themselves, so the rows of a
/// search are always those of the parameter and its bases.
fn link_extensions(params: &mut BTreeMap<String, SearchParam>) {
    let alternatives = |p: &SearchParam| -> Vec<String> {
        p.expression_text
            .as_deref()
            .map(|e| {
                split_top_level(e)
                    .iter()
                    .map(|t| t.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let same_components = |a: &SearchParam, b: &SearchParam| {
        a.components.len() == b.components.len()
            && a.components.iter().zip(&b.components).all(|(x, y)| {
                x.kind == y.kind
                    && x.expression_text == y.expression_text
                    && x.on_resource == y.on_resource
            })
    };
    let eligible = |p: &SearchParam| {
        p.kind.is_indexed()
            && p.kind != ParamType::Reference
            && !p.code.starts_with('_')
            && p.expression.is_some()
    };
    let mut codes: Vec<(usize, String)> = params
        .values()
        .filter(|p| eligible(p))
        .map(|p| (alternatives(p).len(), p.code.clone()))
        .collect();
    codes.sort();
    for (_, code) in codes {
        let Some(p) = params.get(&code) else { continue };
        let mut uncovered = alternatives(p);
        let own = uncovered.len();
        let mut bases: Vec<String> = Vec::new();
        loop {
            // The base covering the most of what is left, wholly inside it.
            let best = params
                .values()
                .filter(|q| {
                    q.code != code && eligible(q) && q.extends.is_empty() && q.kind == p.kind
                })
                .filter(|q| same_components(p, q) && !bases.contains(&q.code))
                .map(|q| (alternatives(q), q.code.clone()))
                .filter(|(theirs, _)| {
                    !theirs.is_empty()
                        && theirs.len() < own
                        && theirs.iter().all(|t| uncovered.contains(t))
                })
                .max_by(|(x, a), (y, b)| x.len().cmp(&y.len()).then(b.cmp(a)));
            let Some((theirs, base)) = best else { break };
            uncovered.retain(|t| !theirs.contains(t));
            bases.push(base);
        }
        if bases.is_empty() {
            continue;
        }
        let narrowed = if uncovered.is_empty() {
            None
        } else {
            match renkei_fhirpath::compile(&uncovered.join(" | ")) {
                Ok(expression) => Some(expression),
                Err(_) => continue,
            }
        };
        if let Some(p) = params.get_mut(&code) {
            p.extends = bases;
            p.narrowed = narrowed;
        }
    }
}

/// The alternatives of a multi-type expression (`A.x | B.y.where(...)`) that apply to `base`,
/// joined again; `Resource.x` applies to every type, and so does an alternative that starts at
/// an element rather than a type name (`name | alias`, R4's `InsurancePlan-name`, the one R4
/// expression written so): FHIRPath evaluates it against the resource itself. Element names
/// start in lower case, type names in upper case. Kept to the named types only, that
/// parameter had no expression: nothing was indexed, `name=…` matched nothing and
/// `name:missing=true` everything.
fn expression_for(expression: &str, base: &str) -> Option<String> {
    let parts: Vec<&str> = split_top_level(expression)
        .into_iter()
        .map(str::trim)
        .filter(|part| {
            let head = part.trim_start_matches('(').trim_start();
            let name: String = head
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            name == base
                || name == "Resource"
                || name == "DomainResource"
                || name.starts_with(|c: char| c.is_ascii_lowercase())
        })
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(" | "))
    }
}

/// Splits at `|` outside parentheses and string literals.
fn split_top_level(expression: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quoted = false;
    let mut start = 0;
    let mut chars = expression.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if quoted => {
                chars.next();
            }
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '|' if !quoted && depth == 0 => {
                parts.push(&expression[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&expression[start..]);
    parts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn loads_official_and_jp_core_parameters() {
        let r = registry();
        let family = r.param("Patient", "family").unwrap();
        assert_eq!(family.kind, ParamType::String);
        assert_eq!(
            family.expression_text.as_deref(),
            Some("Patient.name.family")
        );
        let code = r.param("Observation", "code").unwrap();
        assert_eq!(code.expression_text.as_deref(), Some("Observation.code"));
        let patient = r.param("Observation", "patient").unwrap();
        assert_eq!(patient.kind, ParamType::Reference);
        assert!(patient.expression.is_some());
        assert!(r.param("Patient", "_tag").is_some());
        assert!(r.param("Coverage", "jp-insured-personnumber").is_some());
        assert!(r
            .param("MedicationRequest", "jp-medication-start")
            .is_some());
        assert!(r.param("Patient", "nonsense").is_none());
        assert_eq!(
            r.patient_compartment_params("Observation"),
            ["subject", "performer"]
        );
        assert!(r.params("Patient").any(|p| p.code == "birthdate"));
        let cvq = r.param("Observation", "code-value-quantity").unwrap();
        assert_eq!(cvq.kind, ParamType::Composite);
        assert_eq!(
            cvq.components.iter().map(|c| c.kind).collect::<Vec<_>>(),
            [ParamType::Token, ParamType::Quantity]
        );
        let combo = r.param("Observation", "combo-code-value-quantity").unwrap();
        assert_eq!(
            combo.expression_text.as_deref(),
            Some("Observation | Observation.component")
        );
    }

    #[test]
    fn identifier_parameters_are_told_from_other_tokens() {
        let r = registry();
        let selects =
            |res_type: &str, code: &str| r.param(res_type, code).unwrap().selects_identifiers();
        assert!(selects("Patient", "identifier"));
        assert!(selects("DocumentReference", "identifier"));
        assert!(selects("Specimen", "accession"));
        assert!(selects("Composition", "related-id"));
        assert!(selects("Task", "group-identifier"));
        assert!(!selects("Observation", "status"));
        assert!(!selects("Observation", "code"));
        assert!(!selects("Patient", "telecom"));
        assert!(!selects("Patient", "_id"));
        assert!(!selects("Patient", "family"));
    }

    #[test]
    fn jp_core_organization_parameters_select_their_extension_values() {
        let organization = serde_json::json!({
            "resourceType": "Organization",
            "extension": [
                {"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Organization_PrefectureNo",
                 "valueCoding": {"system": "urn:oid:1.2.392.100495.20.3.21", "code": "13"}},
                {"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Organization_InsuranceOrganizationCategory",
                 "valueCoding": {"system": "urn:oid:1.2.392.100495.20.3.22", "code": "1"}},
                {"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Organization_InsuranceOrganizationNo",
                 "valueIdentifier": {"system": "urn:oid:1.2.392.100495.20.3.23", "value": "9876543"}}
            ]
        });
        let rows = crate::extract::extract("Organization", &organization);
        let token = |param: &str| -> Vec<(Option<String>, Option<String>)> {
            rows.tokens
                .iter()
                .filter(|t| t.param == param)
                .map(|t| (t.system.clone(), t.code.clone()))
                .collect()
        };
        // Indexed under the prefecture system's one spelling (`normalize::SYSTEM_ALIASES`).
        assert_eq!(
            token("jp-prefectureno"),
            [(
                Some("http://jpfhir.jp/fhir/core/mhlw/CodeSystem/PrefectureNo-2digits".to_string()),
                Some("13".to_string())
            )]
        );
        assert_eq!(
            token("jp-insurance-organizationcategory"),
            [(
                Some("urn:oid:1.2.392.100495.20.3.22".to_string()),
                Some("1".to_string())
            )]
        );
        assert_eq!(
            token("jp-insurance-organizationno"),
            [(
                Some("urn:oid:1.2.392.100495.20.3.23".to_string()),
                Some("9876543".to_string())
            )]
        );
    }

    #[test]
    fn only_profile_among_uri_parameters_matches_canonical_versions() {
        let r = registry();
        let canonical = |res_type: &str, code: &str| {
            r.param(res_type, code)
                .unwrap()
                .matches_canonical_versions()
        };
        assert!(canonical("Patient", "_profile"));
        assert!(canonical("ValueSet", "_profile"));
        assert!(!canonical("ValueSet", "url"));
        assert!(!canonical("CodeSystem", "system"));
        assert!(!canonical("Patient", "_source"));
        assert!(!canonical("CarePlan", "instantiates-uri"));
    }

    #[test]
    fn a_union_of_other_parameters_stores_only_what_they_do_not_cover() {
        let r = registry();
        let extends = |res_type: &str, code: &str| {
            let p = r.param(res_type, code).unwrap();
            (p.extends.clone(), p.index_expression().is_some())
        };
        assert_eq!(
            extends("Observation", "combo-code"),
            (vec!["code".into(), "component-code".into()], false)
        );
        assert_eq!(
            extends("Observation", "combo-code-value-quantity"),
            (
                vec![
                    "code-value-quantity".into(),
                    "component-code-value-quantity".into()
                ],
                false
            )
        );
        assert_eq!(extends("Observation", "code"), (vec![], true));
        // References stay whole: `patient` narrows `subject`, includes name both.
        assert_eq!(extends("Observation", "patient"), (vec![], true));
        // Bases extend nothing themselves.
        for (res_type, params) in &r.by_type {
            for p in params.values() {
                for base in &p.extends {
                    let base = r.param(res_type, base).unwrap();
                    assert!(base.extends.is_empty(), "{res_type}.{}", p.code);
                    assert_eq!(base.kind, p.kind, "{res_type}.{}", p.code);
                }
            }
        }
    }

    /// Every registered parameter has an expression for its type (a composite's is optional)
    /// and it compiles: one registered without one is declared, matches nothing and is
    /// `:missing` everywhere (R4's `InsurancePlan-name` was, see [`expression_for`]).
    #[test]
    fn every_indexed_expression_compiles() {
        let r = registry();
        let mut failures = Vec::new();
        // A Bundle's entry chains are indexed from the first entry's own parameters.
        let entry_chain = |res_type: &str, code: &str| {
            res_type == "Bundle"
                && ENTRY_CHAINS.iter().any(|(chain, _)| {
                    code.strip_prefix(chain)
                        .is_some_and(|rest| rest.starts_with('.'))
                })
        };
        for (res_type, params) in &r.by_type {
            for p in params.values() {
                if p.kind != ParamType::Composite
                    && p.expression_text.is_none()
                    && !entry_chain(res_type, &p.code)
                {
                    failures.push(format!("{res_type}.{}: no expression", p.code));
                }
                if p.kind.is_indexed() && p.expression_text.is_some() && p.expression.is_none() {
                    failures.push(format!("{res_type}.{}: {:?}", p.code, p.expression_text));
                }
                for c in &p.components {
                    if c.expression.is_none() {
                        failures.push(format!("{res_type}.{}${}", p.code, c.expression_text));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn an_expression_without_a_type_name_is_read_from_the_resource() {
        let r = registry();
        let name = r.param("InsurancePlan", "name").unwrap();
        assert_eq!(name.expression_text.as_deref(), Some("name | alias"));
        let plan = serde_json::json!({"resourceType": "InsurancePlan", "name": "Foobar Health Plan",
                                      "alias": ["FHP"]});
        let rows = crate::extract::extract("InsurancePlan", &plan);
        let names: Vec<&str> = rows
            .strings
            .iter()
            .filter(|s| s.param == "name")
            .map(|s| s.exact.as_str())
            .collect();
        assert_eq!(names, ["Foobar Health Plan", "FHP"]);
    }

    #[test]
    fn parameters_over_a_bundle_entry_resource_are_declared_as_chains_only() {
        let r = registry();
        assert!(r.param("Bundle", "composition").is_none());
        assert!(r.param("Bundle", "message").is_none());
        assert!(r.param("Bundle", "identifier").is_some());
        assert!(r.param("Bundle", "type").is_some());
        let chained_type = r.param("Bundle", "composition.type").unwrap();
        assert_eq!(chained_type.kind, ParamType::Token);
        assert!(chained_type.expression.is_none());
        assert_eq!(
            r.param("Bundle", "composition.subject").unwrap().targets,
            ["Patient"]
        );
        assert!(r.param("Bundle", "composition.author").is_none());
        assert!(r.param("Bundle", "message.event").is_some());
        assert!(r.param("Composition", "composition.type").is_none());
    }

    #[test]
    fn splits_union_expressions_per_type() {
        assert_eq!(
            expression_for(
                "A.x | B.y.where(resolve() is Patient) | (A.z as Quantity)",
                "A"
            )
            .as_deref(),
            Some("A.x | (A.z as Quantity)")
        );
        assert_eq!(split_top_level("A.x.where(a='|') | B").len(), 2);
        assert_eq!(
            expression_for("name | alias", "InsurancePlan").as_deref(),
            Some("name | alias")
        );
        assert_eq!(expression_for("B.y | x", "A").as_deref(), Some("x"));
    }
}

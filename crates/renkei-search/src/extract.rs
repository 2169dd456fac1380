//! Index values of a resource, extracted by evaluating each search parameter's FHIRPath
//! expression and converting the resulting elements by parameter type.

use crate::date::parse_range;
use crate::normalize::{canonical_system, fold};
use crate::registry::{registry, ParamType, SearchParam, ENTRY_CHAINS, ENTRY_CHAIN_REFERENCES};
use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenIndex {
    pub param: String,
    pub system: Option<String>,
    pub code: Option<String>,
    /// Folded display text (`Coding.display`, `CodeableConcept.text`, identifier type text)
    /// for `:text`.
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StringIndex {
    pub param: String,
    /// [`fold`]ed value for the default and `:contains` searches.
    pub norm: String,
    /// The value as written, for `:exact`.
    pub exact: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DateIndex {
    pub param: String,
    pub low: i64,
    pub high: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReferenceIndex {
    pub param: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// The reference as written (absolute URLs, canonicals, `urn:uuid:`).
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantityIndex {
    pub param: String,
    pub value: f64,
    pub system: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NumberIndex {
    pub param: String,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UriIndex {
    pub param: String,
    pub value: String,
}

/// The value of one component of a composite row, in the shape its type needs: tokens use
/// `system`/`code`; quantities `num` and the unit in `system`/`code`; numbers `num`; dates
/// `low`/`high`; strings the folded value in `code`; references the target type in `system`
/// and the id (or the URL as written) in `code`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompositeValue {
    pub system: Option<String>,
    pub code: Option<String>,
    pub num: Option<f64>,
    pub low: Option<i64>,
    pub high: Option<i64>,
}

/// One row of a composite parameter: the values of its components taken from the same
/// element (one row per combination when a component has several values). Also used for
/// `identifier:of-type` (type coding, identifier value).
#[derive(Debug, Clone, PartialEq)]
pub struct CompositeIndex {
    pub param: String,
    pub parts: Vec<CompositeValue>,
}

/// Most components a composite row holds (the R4 definitions have at most three).
pub const MAX_COMPONENTS: usize = 3;

/// Every index row of one resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexRows {
    pub tokens: Vec<TokenIndex>,
    pub strings: Vec<StringIndex>,
    pub dates: Vec<DateIndex>,
    pub references: Vec<ReferenceIndex>,
    pub quantities: Vec<QuantityIndex>,
    pub numbers: Vec<NumberIndex>,
    pub uris: Vec<UriIndex>,
    pub composites: Vec<CompositeIndex>,
}

impl IndexRows {
    pub fn len(&self) -> usize {
        self.tokens.len()
            + self.strings.len()
            + self.dates.len()
            + self.references.len()
            + self.quantities.len()
            + self.numbers.len()
            + self.uris.len()
            + self.composites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cuts every text an index looks values up by to [`crate::key::MAX_KEY_BYTES`].
    fn cap_keys(&mut self) {
        use crate::key::{cap, cap_opt};
        for token in &mut self.tokens {
            cap_opt(&mut token.system);
            cap_opt(&mut token.code);
        }
        for string in &mut self.strings {
            cap(&mut string.norm);
        }
        for reference in &mut self.references {
            cap_opt(&mut reference.target_type);
            cap_opt(&mut reference.target_id);
            cap_opt(&mut reference.url);
        }
        for quantity in &mut self.quantities {
            cap_opt(&mut quantity.system);
            cap_opt(&mut quantity.code);
        }
        for uri in &mut self.uris {
            cap(&mut uri.value);
        }
        for part in self.composites.iter_mut().flat_map(|c| c.parts.iter_mut()) {
            cap_opt(&mut part.system);
            cap_opt(&mut part.code);
        }
    }

    fn dedup(&mut self) {
        dedup_vec(&mut self.tokens);
        dedup_vec(&mut self.strings);
        dedup_vec(&mut self.dates);
        dedup_vec(&mut self.references);
        dedup_vec(&mut self.quantities);
        dedup_vec(&mut self.numbers);
        dedup_vec(&mut self.uris);
        dedup_vec(&mut self.composites);
    }
}

/// Drops repeated rows, keeping the first of each in order. Rows are compared only with those
/// of the same hash: comparing each with every row kept made a resource with tens of thousands
/// of identifiers take quadratic time to index (a black-box review saw 25 s for 40,000).
fn dedup_vec<T: PartialEq + Hash>(items: &mut Vec<T>) {
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::with_capacity(items.len());
    for item in items.drain(..) {
        let mut hasher = DefaultHasher::new();
        item.hash(&mut hasher);
        let same_hash = by_hash.entry(hasher.finish()).or_default();
        if !same_hash.iter().any(|&i| kept[i] == item) {
            same_hash.push(kept.len());
            kept.push(item);
        }
    }
    *items = kept;
}

/// A float's hash consistent with its `==`: `0.0` and `-0.0` are equal (index values are
/// finite numbers, never NaN).
fn hash_float<H: Hasher>(value: f64, state: &mut H) {
    let bits = if value == 0.0 { 0 } else { value.to_bits() };
    bits.hash(state);
}

impl Hash for QuantityIndex {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.param.hash(state);
        hash_float(self.value, state);
        self.system.hash(state);
        self.code.hash(state);
    }
}

impl Hash for NumberIndex {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.param.hash(state);
        hash_float(self.value, state);
    }
}

impl Hash for CompositeValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.system.hash(state);
        self.code.hash(state);
        self.num.is_some().hash(state);
        if let Some(num) = self.num {
            hash_float(num, state);
        }
        self.low.hash(state);
        self.high.hash(state);
    }
}

impl Hash for CompositeIndex {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.param.hash(state);
        self.parts.hash(state);
    }
}

/// The index rows of a `res_type` resource for every indexed search parameter of the type.
/// `_id` and `_lastUpdated` are columns of the resource row and are not extracted.
pub fn extract(res_type: &str, resource: &Value) -> IndexRows {
    let mut rows = IndexRows::default();
    for param in registry().params(res_type) {
        if !param.kind.is_indexed() || param.code == "_id" || param.code == "_lastUpdated" {
            continue;
        }
        let Some(expression) = param.index_expression() else {
            continue;
        };
        let Ok(nodes) = expression.evaluate(resource) else {
            continue;
        };
        for node in nodes {
            if param.kind == ParamType::Composite {
                add_composite(&mut rows, param, resource, node.value());
            } else {
                add_value(&mut rows, param, node.type_name(), node.value());
            }
        }
    }
    if res_type == "Bundle" {
        add_entry_chain_rows(&mut rows, resource);
    }
    rows.cap_keys();
    rows.dedup();
    rows
}

/// A Bundle whose first entry holds a Composition (a document) or a MessageHeader (a
/// message) is searched by that resource's parameters through R4's `composition.` and
/// `message.` chains: its rows are added under the chain's name ([`ENTRY_CHAINS`]). Its
/// references are left out: they name other entries or records of the sender's server (the
/// repository adds the patient it resolves, [`ENTRY_CHAIN_REFERENCES`]).
fn add_entry_chain_rows(rows: &mut IndexRows, bundle: &Value) {
    let Some(first) = bundle.pointer("/entry/0/resource") else {
        return;
    };
    let first_type = first.get("resourceType").and_then(Value::as_str);
    for (chain, entry_type) in ENTRY_CHAINS {
        if first_type != Some(*entry_type) {
            continue;
        }
        let inner = extract(entry_type, first);
        rows.tokens
            .extend(under_chain(inner.tokens, chain, |r| &mut r.param));
        rows.strings
            .extend(under_chain(inner.strings, chain, |r| &mut r.param));
        rows.dates
            .extend(under_chain(inner.dates, chain, |r| &mut r.param));
        rows.quantities
            .extend(under_chain(inner.quantities, chain, |r| &mut r.param));
        rows.numbers
            .extend(under_chain(inner.numbers, chain, |r| &mut r.param));
        rows.uris
            .extend(under_chain(inner.uris, chain, |r| &mut r.param));
        rows.composites
            .extend(under_chain(inner.composites, chain, |r| &mut r.param));
    }
}

/// The rows of a first entry's parameters that its chain declares, renamed `<chain>.<param>`:
/// not the common ones (`_tag`, …: the Bundle's own are searched) and, of the references,
/// only [`ENTRY_CHAIN_REFERENCES`] (`subject:identifier`).
fn under_chain<'a, T: 'a>(
    rows: Vec<T>,
    chain: &'a str,
    param_of: fn(&mut T) -> &mut String,
) -> impl Iterator<Item = T> + 'a {
    rows.into_iter().filter_map(move |mut row| {
        let param = param_of(&mut row);
        let declared = !param.starts_with('_')
            && param
                .split_once(':')
                .is_none_or(|(reference, _)| ENTRY_CHAIN_REFERENCES.contains(&reference));
        if !declared {
            return None;
        }
        *param = format!("{chain}.{param}");
        Some(row)
    })
}

fn add_value(rows: &mut IndexRows, param: &SearchParam, type_name: Option<&str>, value: &Value) {
    let name = || param.code.clone();
    match param.kind {
        ParamType::Token => {
            add_identifier_types(rows, param, value);
            tokens_of(value, type_name)
                .into_iter()
                .for_each(|(system, code, text)| {
                    rows.tokens.push(TokenIndex {
                        param: name(),
                        system: system.map(|s| canonical_system(&s).to_string()),
                        code,
                        text: text.map(|t| fold(&t)),
                    })
                })
        }
        ParamType::String => strings_of(value).into_iter().for_each(|s| {
            rows.strings.push(StringIndex {
                param: name(),
                norm: fold(&s),
                exact: s,
            })
        }),
        ParamType::Date => {
            if let Some((low, high)) = date_of(value, type_name) {
                rows.dates.push(DateIndex {
                    param: name(),
                    low,
                    high,
                });
            }
        }
        ParamType::Reference => {
            if let Some(identifier) = value.get("identifier") {
                // `param:identifier` searches Reference.identifier.
                if let Some(code) = string_at(identifier, "value") {
                    rows.tokens.push(TokenIndex {
                        param: format!("{}:identifier", param.code),
                        system: string_at(identifier, "system")
                            .map(|s| canonical_system(&s).to_string()),
                        code: Some(code),
                        text: None,
                    });
                }
            }
            if let Some(reference) = reference_of(value).or_else(|| presence_of(value)) {
                rows.references.push(ReferenceIndex {
                    param: name(),
                    ..reference
                });
            }
        }
        ParamType::Quantity => {
            for bound in range_bounds(value, type_name) {
                let Some((v, system, code)) = quantity_of(bound) else {
                    continue;
                };
                // `5.4||milligram` names the unit as written: with a code beside it, the
                // unit is a value of its own (search.html#quantity: code or unit).
                let unit = string_at(bound, "unit").filter(|unit| Some(unit) != code.as_ref());
                rows.quantities.push(QuantityIndex {
                    param: name(),
                    value: v,
                    system: system.map(|s| canonical_system(&s).to_string()),
                    code,
                });
                if let Some(unit) = unit {
                    rows.quantities.push(QuantityIndex {
                        param: name(),
                        value: v,
                        system: None,
                        code: Some(unit),
                    });
                }
            }
        }
        ParamType::Number => {
            for bound in range_bounds(value, type_name) {
                if let Some(v) = number_of(bound) {
                    rows.numbers.push(NumberIndex {
                        param: name(),
                        value: v,
                    });
                }
            }
        }
        ParamType::Uri => {
            if let Some(s) = value.as_str() {
                rows.uris.push(UriIndex {
                    param: name(),
                    value: s.to_string(),
                });
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

/// `identifier:of-type` rows: (type coding, identifier value) of an Identifier with a type.
fn add_identifier_types(rows: &mut IndexRows, param: &SearchParam, value: &Value) {
    let Some(identifier_value) = string_at(value, "value") else {
        return;
    };
    let Some(codings) = value
        .get("type")
        .and_then(|t| t.get("coding"))
        .and_then(Value::as_array)
    else {
        return;
    };
    for coding in codings {
        let Some(code) = string_at(coding, "code") else {
            continue;
        };
        rows.composites.push(CompositeIndex {
            param: format!("{}:of-type", param.code),
            parts: vec![
                CompositeValue {
                    system: string_at(coding, "system").map(|s| canonical_system(&s).to_string()),
                    code: Some(code),
                    ..CompositeValue::default()
                },
                CompositeValue {
                    system: string_at(value, "system").map(|s| canonical_system(&s).to_string()),
                    code: Some(identifier_value.clone()),
                    ..CompositeValue::default()
                },
            ],
        });
    }
}

/// The values of one component, evaluated on `element`, converted by the component's type.
fn component_values(
    component: &crate::registry::Component,
    resource: &Value,
    element: &Value,
) -> Vec<CompositeValue> {
    let Some(expression) = &component.expression else {
        return Vec::new();
    };
    let focus = if component.on_resource {
        resource
    } else {
        element
    };
    let Ok(nodes) = expression.evaluate(focus) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for node in nodes {
        let (value, type_name) = (node.value(), node.type_name());
        match component.kind {
            ParamType::Token | ParamType::Uri => out.extend(
                tokens_of(value, type_name)
                    .into_iter()
                    .filter(|(_, code, _)| code.is_some())
                    .map(|(system, code, _)| CompositeValue {
                        system: system.map(|s| canonical_system(&s).to_string()),
                        code,
                        ..CompositeValue::default()
                    }),
            ),
            ParamType::Quantity => out.extend(
                range_bounds(value, type_name)
                    .into_iter()
                    .filter_map(quantity_of)
                    .map(|(v, system, code)| CompositeValue {
                        system: system.map(|s| canonical_system(&s).to_string()),
                        code,
                        num: Some(v),
                        ..CompositeValue::default()
                    }),
            ),
            ParamType::Number => out.extend(
                range_bounds(value, type_name)
                    .into_iter()
                    .filter_map(number_of)
                    .map(|v| CompositeValue {
                        num: Some(v),
                        ..CompositeValue::default()
                    }),
            ),
            ParamType::Date => {
                out.extend(date_of(value, type_name).map(|(low, high)| CompositeValue {
                    low: Some(low),
                    high: Some(high),
                    ..CompositeValue::default()
                }))
            }
            ParamType::String => {
                out.extend(strings_of(value).into_iter().map(|s| CompositeValue {
                    code: Some(fold(&s)),
                    ..CompositeValue::default()
                }))
            }
            ParamType::Reference => out.extend(reference_of(value).map(|r| CompositeValue {
                system: r.target_type,
                code: r.target_id.or(r.url),
                ..CompositeValue::default()
            })),
            ParamType::Composite | ParamType::Special => {}
        }
    }
    out
}

/// Rows of a composite parameter for one element: every combination of its components'
/// values, all taken from that element, so components match together.
fn add_composite(rows: &mut IndexRows, param: &SearchParam, resource: &Value, element: &Value) {
    if param.components.is_empty() || param.components.len() > MAX_COMPONENTS {
        return;
    }
    let mut combinations: Vec<Vec<CompositeValue>> = vec![Vec::new()];
    for component in &param.components {
        let values = component_values(component, resource, element);
        if values.is_empty() {
            return;
        }
        combinations = combinations
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push(v.clone());
                    next
                })
            })
            .collect();
    }
    rows.composites
        .extend(combinations.into_iter().map(|parts| CompositeIndex {
            param: param.code.clone(),
            parts,
        }));
}

type Token = (Option<String>, Option<String>, Option<String>);

fn string_at(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

/// (system, code, text) triples of a token-typed element, recognised by its JSON shape.
fn tokens_of(value: &Value, type_name: Option<&str>) -> Vec<Token> {
    match value {
        Value::String(s) => vec![(None, Some(s.clone()), None)],
        Value::Bool(b) => vec![(None, Some(b.to_string()), None)],
        Value::Number(n) => vec![(None, Some(n.to_string()), None)],
        Value::Object(map) => {
            if let Some(Value::Array(codings)) = map.get("coding") {
                // CodeableConcept
                let text = string_at(value, "text");
                let mut out: Vec<Token> = codings
                    .iter()
                    .map(|c| {
                        (
                            string_at(c, "system"),
                            string_at(c, "code"),
                            string_at(c, "display").or_else(|| text.clone()),
                        )
                    })
                    .collect();
                if let Some(text) = text {
                    out.push((None, None, Some(text)));
                }
                out
            } else if type_name == Some("CodeableConcept")
                || (map.contains_key("text") && map.len() == 1)
            {
                vec![(None, None, string_at(value, "text"))]
            } else if map.contains_key("code") || type_name == Some("Coding") {
                vec![(
                    string_at(value, "system"),
                    string_at(value, "code"),
                    string_at(value, "display"),
                )]
            } else if map.contains_key("value") {
                // Identifier or ContactPoint.
                let text = value
                    .get("type")
                    .and_then(|t| t.get("text"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                vec![(string_at(value, "system"), string_at(value, "value"), text)]
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|(s, c, t)| s.is_some() || c.is_some() || t.is_some())
    .collect()
}

/// The string values of a string-typed element: primitives, or the parts of a HumanName or
/// Address.
fn strings_of(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Object(map) => {
            let mut out = Vec::new();
            for key in [
                "text",
                "family",
                "given",
                "prefix",
                "suffix",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                match map.get(key) {
                    Some(Value::String(s)) => out.push(s.clone()),
                    Some(Value::Array(items)) => {
                        out.extend(items.iter().filter_map(Value::as_str).map(str::to_string))
                    }
                    _ => {}
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// The instant range of a date-typed element: a date/dateTime/instant, Period, Timing.
fn date_of(value: &Value, type_name: Option<&str>) -> Option<(i64, i64)> {
    match value {
        Value::String(s) => parse_range(s).map(|r| (r.low, r.high)),
        Value::Object(map) => {
            if map.contains_key("start") || map.contains_key("end") || type_name == Some("Period") {
                let low = map
                    .get("start")
                    .and_then(Value::as_str)
                    .and_then(parse_range)
                    .map_or(i64::MIN, |r| r.low);
                let high = map
                    .get("end")
                    .and_then(Value::as_str)
                    .and_then(parse_range)
                    .map_or(i64::MAX, |r| r.high);
                (low != i64::MIN || high != i64::MAX).then_some((low, high))
            } else if map.contains_key("event") || map.contains_key("repeat") {
                // Timing: the span of its events and bounds.
                let mut ranges: Vec<(i64, i64)> = map
                    .get("event")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(parse_range)
                    .map(|r| (r.low, r.high))
                    .collect();
                if let Some(bounds) = value.pointer("/repeat/boundsPeriod") {
                    ranges.extend(date_of(bounds, Some("Period")));
                }
                let low = ranges.iter().map(|r| r.0).min()?;
                let high = ranges.iter().map(|r| r.1).max()?;
                Some((low, high))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The server's own base URLs, each ending in `/`, set once at start-up
/// ([`set_local_bases`]).
static LOCAL_BASES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Names the server's own base URLs (`http://host:port/fhir`): an absolute reference under
/// one of them is a reference to a resource here; any other absolute reference names another
/// server's resource, which is indexed by its URL alone, so that `subject=Patient/1` never
/// finds another server's `Patient/1`. Set once, before anything is indexed; false when
/// already set to other bases.
pub fn set_local_bases(bases: &[String]) -> bool {
    let bases: Vec<String> = bases
        .iter()
        .map(|base| format!("{}/", base.trim_end_matches('/')))
        .collect();
    LOCAL_BASES.get_or_init(|| bases.clone()) == &bases
}

/// The server's own base URLs, each ending in `/` (none before [`set_local_bases`]).
pub fn local_bases() -> &'static [String] {
    LOCAL_BASES.get().map(Vec::as_slice).unwrap_or_default()
}

/// The path of a reference to a resource on this server: a relative reference as it is, an
/// absolute one under one of the server's own bases without that base. `None` for another
/// server's resource and for `urn:` references.
pub fn local_path(reference: &str) -> Option<&str> {
    if reference.starts_with("urn:") {
        return None;
    }
    if !reference.contains("://") {
        return Some(reference);
    }
    LOCAL_BASES.get()?.iter().find_map(|base| {
        reference
            .get(..base.len())
            .filter(|head| head.eq_ignore_ascii_case(base))
            .map(|_| &reference[base.len()..])
    })
}

/// Splits a literal reference into (type, id), dropping any `_history/n` and base URL.
pub fn split_reference(reference: &str) -> Option<(String, String)> {
    let trimmed = match reference.find("/_history/") {
        Some(pos) => &reference[..pos],
        None => reference,
    };
    let mut segments = trimmed.rsplit('/');
    let id = segments.next()?;
    let res_type = segments.next()?;
    let valid_type = res_type.starts_with(|c: char| c.is_ascii_uppercase())
        && res_type.chars().all(|c| c.is_ascii_alphanumeric());
    let valid_id = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    (valid_type && valid_id).then(|| (res_type.to_string(), id.to_string()))
}

fn reference_of(value: &Value) -> Option<ReferenceIndex> {
    let blank = |target_type, target_id, url| ReferenceIndex {
        param: String::new(),
        target_type,
        target_id,
        url,
    };
    match value {
        // canonical / uri references
        Value::String(s) => Some(blank(None, None, Some(s.clone()))),
        Value::Object(_) => {
            let reference = value.get("reference").and_then(Value::as_str)?;
            if reference.starts_with('#') {
                return None;
            }
            let absolute = reference.contains("://") || reference.starts_with("urn:");
            let url = absolute.then(|| reference.to_string());
            match local_path(reference).and_then(split_reference) {
                Some((t, id)) => Some(blank(Some(t), Some(id), url)),
                None => Some(blank(None, None, Some(reference.to_string()))),
            }
        }
        _ => None,
    }
}

/// The row of a Reference that names no resource by a literal `reference` (only an
/// `identifier`, only a `display`, a contained `#id`): no type, id or URL, so no reference
/// search, chain, include or compartment finds it through this row, but the parameter has a
/// value (search.html: `:missing=true` is the resources that have none), so `:missing`, which
/// asks whether a reference row exists, answers as for any other reference. Without it such a
/// resource matched `based-on:identifier=…` and `based-on:missing=true` at once. An inline
/// resource (`resourceType`) is not a Reference and gets none.
fn presence_of(value: &Value) -> Option<ReferenceIndex> {
    let map = value.as_object()?;
    (!map.is_empty() && !map.contains_key("resourceType")).then(|| ReferenceIndex {
        param: String::new(),
        target_type: None,
        target_id: None,
        url: None,
    })
}

fn as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64().or_else(|| n.to_string().parse().ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn quantity_of(value: &Value) -> Option<(f64, Option<String>, Option<String>)> {
    let v = as_f64(value.get("value")?)?;
    if let Some(currency) = string_at(value, "currency") {
        return Some((v, Some("urn:iso:std:iso:4217".into()), Some(currency)));
    }
    let code = string_at(value, "code").or_else(|| string_at(value, "unit"));
    Some((v, string_at(value, "system"), code))
}

/// The values a quantity or number parameter indexes for one element: the element, or for
/// a Range (`Condition.onset.as(Range)`, `RiskAssessment.prediction.probability`) its low
/// and high bounds, so a search finds the range by either bound.
fn range_bounds<'v>(value: &'v Value, type_name: Option<&str>) -> Vec<&'v Value> {
    let is_range = type_name == Some("Range")
        || (value.get("value").is_none()
            && (value.get("low").is_some() || value.get("high").is_some()));
    if !is_range {
        return vec![value];
    }
    ["low", "high"]
        .iter()
        .filter_map(|bound| value.get(*bound))
        .collect()
}

fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Object(_) => value.get("value").and_then(as_f64),
        other => as_f64(other),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn repeated_rows_are_dropped_keeping_the_first_of_each_in_order() {
        let number = |value: f64| NumberIndex {
            param: "n".into(),
            value,
        };
        let mut numbers = vec![
            number(2.0),
            number(0.0),
            number(2.0),
            number(-0.0),
            number(1.5),
        ];
        dedup_vec(&mut numbers);
        assert_eq!(numbers, vec![number(2.0), number(0.0), number(1.5)]);
        // Many distinct values with a few repeats among them: every distinct one kept once.
        let mut identifiers: Vec<TokenIndex> = (0..20_000)
            .chain(0..10)
            .map(|i| TokenIndex {
                param: "identifier".into(),
                system: Some("urn:x".into()),
                code: Some(format!("v{i}")),
                text: None,
            })
            .collect();
        dedup_vec(&mut identifiers);
        assert_eq!(identifiers.len(), 20_000);
        assert_eq!(identifiers[19_999].code.as_deref(), Some("v19999"));
    }

    /// The base every test of this crate names as the server's own (set once per process).
    const TEST_BASE: &str = "http://127.0.0.1:8412/fhir";

    #[test]
    fn extracts_every_type_from_an_observation() {
        let obs = json!({
            "resourceType": "Observation",
            "id": "o1",
            "meta": {"tag": [{"system": "http://t", "code": "x"}], "profile": ["http://p/Obs"]},
            "status": "final",
            "code": {"coding": [{"system": "urn:oid:1.2.392.200119.4.504", "code": "3A010000002327101", "display": "HbA1c"}], "text": "ＨｂＡ１ｃ"},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-05T10:00:00+09:00",
            "valueQuantity": {"value": 6.5, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
        });
        let rows = extract("Observation", &obs);
        assert!(rows.tokens.iter().any(|t| t.param == "code"
            && t.system.as_deref()
                == Some("http://medis.or.jp/CodeSystem/master-JLAC10-17digits")
            && t.code.as_deref() == Some("3A010000002327101")));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "code" && t.text.as_deref() == Some("hba1c")));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "status" && t.code.as_deref() == Some("final")));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "_tag" && t.code.as_deref() == Some("x")));
        assert!(rows
            .uris
            .iter()
            .any(|u| u.param == "_profile" && u.value == "http://p/Obs"));
        for param in ["subject", "patient"] {
            assert!(
                rows.references.iter().any(|r| r.param == param
                    && r.target_type.as_deref() == Some("Patient")
                    && r.target_id.as_deref() == Some("p1")),
                "{param}"
            );
        }
        assert!(rows
            .dates
            .iter()
            .any(|d| d.param == "date" && d.low == d.high - 999));
        assert!(rows
            .quantities
            .iter()
            .any(|q| q.param == "value-quantity" && q.value == 6.5));
    }

    #[test]
    fn ranges_units_date_times_and_relationships_are_indexed() {
        // `code-value-date` is `value.as(DateTime) | value.as(Period)`: a System type name
        // stands for FHIR's dateTime.
        let dated = json!({"resourceType": "Observation", "id": "d", "status": "final",
            "code": {"coding": [{"system": "urn:c", "code": "a"}]}, "valueDateTime": "2019-02-03"});
        let rows = extract("Observation", &dated);
        assert!(
            rows.composites
                .iter()
                .any(|c| c.param == "code-value-date" && c.parts[1].low.is_some()),
            "{:?}",
            rows.composites
        );
        // A Range is found by its bounds; a unit beside a code is a value of its own.
        let condition = json!({"resourceType": "Condition", "id": "c",
            "subject": {"reference": "Patient/p"},
            "onsetRange": {"low": {"value": 10, "system": "http://unitsofmeasure.org", "code": "a"},
                           "high": {"value": 20, "system": "http://unitsofmeasure.org", "code": "a"}}});
        let ages: Vec<f64> = extract("Condition", &condition)
            .quantities
            .iter()
            .filter(|q| q.param == "onset-age")
            .map(|q| q.value)
            .collect();
        assert_eq!(ages, [10.0, 20.0]);
        let weighed = json!({"resourceType": "Observation", "id": "w", "status": "final",
            "code": {"coding": [{"system": "urn:c", "code": "w"}]},
            "valueQuantity": {"value": 5.4, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg"}});
        let units: Vec<Option<String>> = extract("Observation", &weighed)
            .quantities
            .iter()
            .filter(|q| q.param == "value-quantity")
            .map(|q| q.code.clone())
            .collect();
        assert_eq!(
            units,
            [Some("mg".to_string()), Some("milligram".to_string())]
        );
        // R4 swapped the definitions of `relationship`'s components; it is relation$relatesto.
        let replacing = json!({"resourceType": "DocumentReference", "id": "r", "status": "current",
            "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/old"}}],
            "content": [{"attachment": {"url": "http://example.org/x"}}]});
        let rows = extract("DocumentReference", &replacing);
        assert!(
            rows.composites.iter().any(|c| c.param == "relationship"
                && c.parts[0].code.as_deref() == Some("replaces")
                && c.parts[1].code.as_deref() == Some("old")),
            "{:?}",
            rows.composites
        );
    }

    #[test]
    fn composites_pair_components_of_one_element() {
        let bp = json!({
            "resourceType": "Observation", "id": "bp", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": "Patient/p1", "identifier": {"system": "urn:mrn", "value": "M1"}},
            "identifier": [{"system": "urn:x", "value": "42",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
            ]
        });
        let rows = extract("Observation", &bp);
        let of = |param: &str| -> Vec<(String, f64)> {
            rows.composites
                .iter()
                .filter(|c| c.param == param)
                .map(|c| (c.parts[0].code.clone().unwrap(), c.parts[1].num.unwrap()))
                .collect()
        };
        assert_eq!(
            of("component-code-value-quantity"),
            [("8480-6".to_string(), 120.0), ("8462-4".to_string(), 80.0)]
        );
        // `combo-*` is the union of the plain and the `component-*` parameter: its values are
        // stored once, under those two (see `SearchParam::extends`).
        assert!(of("combo-code-value-quantity").is_empty());
        assert!(of("code-value-quantity").is_empty());
        assert!(rows
            .composites
            .iter()
            .any(|c| c.param == "identifier:of-type"
                && c.parts[0].code.as_deref() == Some("MR")
                && c.parts[1].code.as_deref() == Some("42")));
        assert!(rows.tokens.iter().any(|t| t.param == "subject:identifier"
            && t.system.as_deref() == Some("urn:mrn")
            && t.code.as_deref() == Some("M1")));
        assert!(rows
            .references
            .iter()
            .any(|r| r.param == "subject" && r.target_id.as_deref() == Some("p1")));
    }

    /// A Reference with only an identifier, only a display or a contained `#id` has a value:
    /// a reference row without target (for `:missing`), beside the `:identifier` token row.
    #[test]
    fn references_without_a_literal_reference_still_have_a_row() {
        let obs = json!({
            "resourceType": "Observation", "id": "o", "status": "final",
            "contained": [{"resourceType": "ServiceRequest", "id": "sr", "status": "active",
                           "intent": "order", "subject": {"display": "x"}}],
            "code": {"text": "x"},
            "basedOn": [{"identifier": {"system": "sys", "value": "1234"}}],
            "subject": {"display": "Someone"},
            "partOf": [{"reference": "#sr"}],
            "hasMember": [{"reference": "Observation/m1"}]
        });
        let rows = extract("Observation", &obs);
        let targets = |param: &str| -> Vec<(Option<String>, Option<String>, Option<String>)> {
            rows.references
                .iter()
                .filter(|r| r.param == param)
                .map(|r| (r.target_type.clone(), r.target_id.clone(), r.url.clone()))
                .collect()
        };
        for param in ["based-on", "subject", "part-of"] {
            assert_eq!(targets(param), [(None, None, None)], "{param}");
        }
        assert_eq!(
            targets("has-member"),
            [(Some("Observation".into()), Some("m1".into()), None)]
        );
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "based-on:identifier" && t.code.as_deref() == Some("1234")));
        // No element, no row.
        assert!(targets("encounter").is_empty());
    }

    #[test]
    fn extracts_names_and_periods() {
        let patient = json!({
            "resourceType": "Patient",
            "id": "p1",
            "name": [{"family": "ﾔﾏﾀﾞ", "given": ["ﾀﾛｳ"]}, {"family": "山田", "given": ["太郎"]}],
            "birthDate": "1970-01-01",
            "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11311234567", "value": "123"}],
            "telecom": [{"system": "phone", "value": "03-1234"}],
            "gender": "male",
            "active": true
        });
        let rows = extract("Patient", &patient);
        assert!(rows
            .strings
            .iter()
            .any(|s| s.param == "family" && s.norm == "ヤマダ" && s.exact == "ﾔﾏﾀﾞ"));
        assert!(rows
            .strings
            .iter()
            .any(|s| s.param == "name" && s.norm == "太郎"));
        assert!(rows
            .dates
            .iter()
            .any(|d| d.param == "birthdate" && d.low == 0));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "identifier" && t.code.as_deref() == Some("123")));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "active" && t.code.as_deref() == Some("true")));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "phone" && t.code.as_deref() == Some("03-1234")));
        assert!(super::set_local_bases(&[TEST_BASE.to_string()]));
        let enc = json!({"resourceType": "Encounter", "id": "e", "period": {"start": "2024-01-01"}, "subject": {"reference": format!("{TEST_BASE}/Patient/p9/_history/2")}});
        let rows = extract("Encounter", &enc);
        assert!(rows
            .dates
            .iter()
            .any(|d| d.param == "date" && d.high == i64::MAX));
        assert!(rows.references.iter().any(|r| r.param == "subject"
            && r.target_id.as_deref() == Some("p9")
            && r.url.as_deref() == Some(&format!("{TEST_BASE}/Patient/p9/_history/2"))));
        // Another server's Patient/p9 is not this server's: its URL alone is indexed.
        let elsewhere = json!({"resourceType": "Encounter", "id": "e2", "subject": {"reference": "http://other/fhir/Patient/p9"}});
        let rows = extract("Encounter", &elsewhere);
        let subject = rows
            .references
            .iter()
            .find(|r| r.param == "subject")
            .unwrap();
        assert_eq!(subject.target_id, None);
        assert_eq!(subject.url.as_deref(), Some("http://other/fhir/Patient/p9"));
        assert_eq!(super::local_path("http://other/fhir/Patient/p9"), None);
        assert_eq!(super::local_path("Patient/p9"), Some("Patient/p9"));
        assert_eq!(super::local_path("urn:uuid:1"), None);
    }
}

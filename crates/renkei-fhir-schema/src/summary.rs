//! `_summary` and `_elements` (FHIR R4 search.html#summary, #elements).

use serde_json::{Map, Value};

use crate::model::{model, Kind, Model, TypeDef};

/// The `_summary` modes of FHIR R4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SummaryMode {
    /// `_summary=true`: only elements marked isSummary (plus mandatory elements), recursively.
    True,
    /// `_summary=text`: `text`, `id`, `meta` and the top-level mandatory elements.
    Text,
    /// `_summary=data`: everything except the top-level `text` element.
    Data,
    /// `_summary=count`: a search-level mode (only the total is returned, no resources). When
    /// applied to a single resource it behaves like [`SummaryMode::True`].
    Count,
    /// `_summary=false`: the full resource, unchanged.
    False,
}

impl SummaryMode {
    /// Parse the value of the `_summary` parameter (`true`, `text`, `data`, `count`, `false`).
    pub fn parse(s: &str) -> Option<SummaryMode> {
        Some(match s {
            "true" => SummaryMode::True,
            "text" => SummaryMode::Text,
            "data" => SummaryMode::Data,
            "count" => SummaryMode::Count,
            "false" => SummaryMode::False,
            _ => return None,
        })
    }

    /// The parameter value (`true`, `text`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SummaryMode::True => "true",
            SummaryMode::Text => "text",
            SummaryMode::Data => "data",
            SummaryMode::Count => "count",
            SummaryMode::False => "false",
        }
    }
}

/// System of the `SUBSETTED` tag.
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
/// Code of the `SUBSETTED` tag.
pub const SUBSETTED_CODE: &str = "SUBSETTED";

const MAX_DEPTH: usize = 64;

/// Apply `_summary` to a resource. Resources of unknown type, and non-objects, are returned
/// unchanged; for `False` the resource is returned unchanged. The result of `True`, `Text`,
/// `Data` (and `Count`) carries the `SUBSETTED` tag in `meta.tag`.
///
/// `True` keeps, at every level, the elements marked isSummary in the R4 definitions plus the
/// mandatory ones (min >= 1); inside datatypes all elements are kept except `Attachment.data`.
/// Nested resources (`Bundle.entry.resource`, ...) are summarized the same way and tagged.
pub fn summarize(resource: &Value, mode: SummaryMode) -> Value {
    let m = model();
    let Some((obj, td)) = resource_parts(m, resource) else {
        return resource.clone();
    };
    match mode {
        SummaryMode::False => resource.clone(),
        SummaryMode::True | SummaryMode::Count => summary_resource(m, obj, td, 0),
        SummaryMode::Text => {
            let out = filter_top(obj, |name| {
                matches!(name, "id" | "meta" | "text")
                    || td.element(name).is_some_and(|e| e.required)
            });
            tag_subsetted(out)
        }
        SummaryMode::Data => {
            let out = filter_top(obj, |name| name != "text");
            tag_subsetted(out)
        }
    }
}

/// Apply `_elements`: keep `resourceType`, `id`, `meta`, the listed top-level elements and the
/// mandatory top-level elements, and add the `SUBSETTED` tag. Names may be given as `name`,
/// `Type.name` or a deeper path (only the top-level element is used); a choice element can be
/// named by its base (`value` keeps `valueQuantity`, ...). Unknown names are ignored.
pub fn select_elements(resource: &Value, elements: &[&str]) -> Value {
    let m = model();
    let Some(obj) = resource.as_object() else {
        return resource.clone();
    };
    let rt = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let td = if m.is_resource_type(rt) {
        m.type_def(rt)
    } else {
        None
    };
    let wanted: Vec<&str> = elements
        .iter()
        .map(|e| {
            let e = e.trim();
            let e = match e.split_once('.') {
                Some((first, rest)) if first == rt => rest,
                _ => e,
            };
            e.split('.').next().unwrap_or(e)
        })
        .filter(|e| !e.is_empty())
        .collect();
    let keep = |name: &str| -> bool {
        if matches!(name, "id" | "meta") || wanted.contains(&name) {
            return true;
        }
        let Some(td) = td else { return false };
        match td.element(name) {
            Some(e) => {
                e.required
                    || e.choice
                        .as_deref()
                        .is_some_and(|base| wanted.contains(&base))
            }
            None => false,
        }
    };
    let mut out = Map::new();
    for (k, v) in obj {
        let name = k.strip_prefix('_').unwrap_or(k);
        if k == "resourceType" || keep(name) {
            out.insert(k.clone(), v.clone());
        }
    }
    tag_subsetted(out)
}

fn resource_parts<'a>(
    m: &'static Model,
    v: &'a Value,
) -> Option<(&'a Map<String, Value>, &'static TypeDef)> {
    let obj = v.as_object()?;
    let rt = obj.get("resourceType")?.as_str()?;
    if !m.is_resource_type(rt) {
        return None;
    }
    Some((obj, m.type_def(rt)?))
}

/// Keep the top-level properties (and their `_` siblings) whose element name passes `keep`.
fn filter_top(obj: &Map<String, Value>, keep: impl Fn(&str) -> bool) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in obj {
        let name = k.strip_prefix('_').unwrap_or(k);
        if k == "resourceType" || keep(name) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn summary_resource(
    m: &'static Model,
    obj: &Map<String, Value>,
    td: &'static TypeDef,
    depth: usize,
) -> Value {
    let out = summary_object(m, obj, td, true, depth);
    tag_subsetted(out)
}

fn summary_object(
    m: &'static Model,
    obj: &Map<String, Value>,
    td: &'static TypeDef,
    is_resource: bool,
    depth: usize,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in obj {
        if is_resource && k == "resourceType" {
            out.insert(k.clone(), v.clone());
            continue;
        }
        let name = k.strip_prefix('_').unwrap_or(k);
        let Some(ed) = td.element(name) else {
            continue; // unknown content is not part of any summary
        };
        if !(ed.summary || ed.required) {
            continue;
        }
        if k.starts_with('_') || depth >= MAX_DEPTH {
            out.insert(k.clone(), v.clone());
            continue;
        }
        let conv = |item: &Value| -> Value {
            match (ed.kind, item) {
                (Kind::Complex(t), Value::Object(o)) => match m.types.get(t) {
                    Some(ctd) => Value::Object(summary_object(m, o, ctd, false, depth + 1)),
                    None => item.clone(),
                },
                (Kind::Resource, Value::Object(o)) => match resource_parts(m, item) {
                    Some((_, rtd)) => summary_resource(m, o, rtd, depth + 1),
                    None => item.clone(),
                },
                _ => item.clone(),
            }
        };
        let nv = match v {
            Value::Array(items) => Value::Array(items.iter().map(conv).collect()),
            other => conv(other),
        };
        out.insert(k.clone(), nv);
    }
    out
}

fn subsetted_coding() -> Value {
    let mut c = Map::new();
    c.insert("system".into(), Value::String(SUBSETTED_SYSTEM.into()));
    c.insert("code".into(), Value::String(SUBSETTED_CODE.into()));
    Value::Object(c)
}

fn is_subsetted(v: &Value) -> bool {
    v.get("system").and_then(Value::as_str) == Some(SUBSETTED_SYSTEM)
        && v.get("code").and_then(Value::as_str) == Some(SUBSETTED_CODE)
}

/// Add the SUBSETTED tag to `meta.tag` (creating `meta` right after `id` if needed).
fn tag_subsetted(mut obj: Map<String, Value>) -> Value {
    if let Some(Value::Object(meta)) = obj.get_mut("meta") {
        match meta.get_mut("tag") {
            Some(Value::Array(tags)) => {
                if !tags.iter().any(is_subsetted) {
                    tags.push(subsetted_coding());
                }
            }
            _ => {
                meta.insert("tag".into(), Value::Array(vec![subsetted_coding()]));
            }
        }
        return Value::Object(obj);
    }
    let mut meta = Map::new();
    meta.insert("tag".into(), Value::Array(vec![subsetted_coding()]));
    let mut out = Map::new();
    let mut inserted = false;
    for (k, v) in obj {
        if k == "meta" {
            continue; // a non-object meta is replaced
        }
        if !inserted && !matches!(k.as_str(), "resourceType" | "id" | "_id") {
            out.insert("meta".into(), Value::Object(meta.clone()));
            inserted = true;
        }
        out.insert(k, v);
    }
    if !inserted {
        out.insert("meta".into(), Value::Object(meta));
    }
    Value::Object(out)
}

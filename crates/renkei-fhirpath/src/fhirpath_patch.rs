//! FHIRPath Patch (<http://hl7.org/fhir/R4/fhirpatch.html>), the `Parameters` based
//! format used by `PATCH` with `application/fhir+json`.

use serde_json::{Map, Value};

use crate::error::PatchError;
use crate::eval::compile;
use crate::node::PathSegment;
use crate::types::type_to_suffix;

/// Nesting limit for `part` trees describing complex values (stack guard).
const MAX_PART_DEPTH: usize = 64;

/// Applies a FHIRPath Patch `Parameters` resource to `resource`, deciding the
/// cardinality of newly created elements with [`default_is_repeating`].
///
/// Atomic: on error `resource` is unchanged.
pub fn apply_fhirpath_patch(resource: &mut Value, parameters: &Value) -> Result<(), PatchError> {
    apply_fhirpath_patch_with(resource, parameters, &default_is_repeating)
}

/// Like [`apply_fhirpath_patch`], with a caller-supplied cardinality oracle.
///
/// FHIR JSON writes repeating elements as arrays even when they hold a single
/// item, so adding `identifier` to a Patient that has none must produce
/// `"identifier": [...]` while adding `birthDate` must not. Without
/// StructureDefinitions this crate cannot know which is which, hence the
/// oracle: it receives the dotted element path of the element being created
/// (JSON keys, e.g. `Patient.contact.name`, restarting at nested resources)
/// and returns whether it repeats. Existing arrays are always appended to.
pub fn apply_fhirpath_patch_with(
    resource: &mut Value,
    parameters: &Value,
    is_repeating: &dyn Fn(&str) -> bool,
) -> Result<(), PatchError> {
    if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(PatchError::Invalid(
            "a FHIRPath Patch must be a Parameters resource".into(),
        ));
    }
    let params = match parameters.get("parameter") {
        None => return Ok(()),
        Some(Value::Array(p)) => p,
        Some(_) => {
            return Err(PatchError::Invalid(
                "Parameters.parameter must be an array".into(),
            ))
        }
    };
    let mut work = resource.clone();
    for (i, param) in params.iter().enumerate() {
        let index = i + 1;
        let op = Operation::parse(index, param)?;
        op.apply(&mut work, is_repeating)
            .map_err(|message| PatchError::FhirPathPatch {
                index,
                op: op.kind.to_string(),
                message,
            })?;
    }
    *resource = work;
    Ok(())
}

/// Heuristic cardinality for [`apply_fhirpath_patch`]: true for element names
/// that repeat (0..*) wherever they occur in R4 core resources and data types,
/// plus `name` directly under the resources whose `name` is a list of
/// HumanName. Callers with access to StructureDefinitions should use
/// [`apply_fhirpath_patch_with`] instead.
pub fn default_is_repeating(element_path: &str) -> bool {
    const ALWAYS: &[&str] = &[
        "extension",
        "modifierExtension",
        "identifier",
        "contained",
        "coding",
        "given",
        "prefix",
        "suffix",
        "line",
        "telecom",
        "address",
        "contact",
        "note",
        "component",
        "entry",
        "link",
        "generalPractitioner",
        "communication",
        "participant",
        "reasonCode",
        "reasonReference",
        "basedOn",
        "partOf",
        "category",
        "photo",
        "qualification",
        "interpretation",
        "referenceRange",
        "hasMember",
        "derivedFrom",
        "instantiatesCanonical",
        "instantiatesUri",
        "dosageInstruction",
        "profile",
        "security",
        "tag",
        "parameter",
        "part",
        "issue",
        "result",
        "specialty",
        "alias",
        "endpoint",
        "supportingInfo",
        "insurance",
        "diagnosis",
        "statusHistory",
        "classHistory",
        "episodeOfCare",
        "series",
        "instance",
        "presentedForm",
        "conclusionCode",
        "availableTime",
        "notAvailable",
        "reaction",
        "manifestation",
        "ingredient",
        "agent",
        "entity",
        "target",
        "signature",
        "policy",
        "provision",
        "actor",
        "content",
        "relatesTo",
        "author",
        "event",
    ];
    let mut segs = element_path.rsplit('.');
    let last = segs.next().unwrap_or_default();
    if ALWAYS.contains(&last) {
        return true;
    }
    let parent = segs.next().unwrap_or_default();
    last == "name"
        && matches!(
            parent,
            "Patient" | "Practitioner" | "RelatedPerson" | "Person"
        )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Insert,
    Delete,
    Replace,
    Move,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Add => "add",
            Kind::Insert => "insert",
            Kind::Delete => "delete",
            Kind::Replace => "replace",
            Kind::Move => "move",
        })
    }
}

struct Operation<'p> {
    kind: Kind,
    path: &'p str,
    name: Option<&'p str>,
    value: Option<&'p Value>,
    index: Option<i64>,
    source: Option<i64>,
    destination: Option<i64>,
}

/// The parts of an `operation` parameter that the FHIRPath Patch
/// specification allows at most once.
const SINGLE_PARTS: [&str; 7] = [
    "type",
    "path",
    "name",
    "value",
    "index",
    "source",
    "destination",
];

fn part_named<'p>(parts: &'p [Value], name: &str) -> Option<&'p Value> {
    parts
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
}

/// The `value[x]` member of a parameter/part: (JSON key, type suffix, value).
fn value_x(part: &Value) -> Option<(&str, &str, &Value)> {
    part.as_object()?.iter().find_map(|(k, v)| {
        let suffix = k.strip_prefix("value")?;
        suffix
            .starts_with(|c: char| c.is_ascii_uppercase())
            .then_some((k.as_str(), suffix, v))
    })
}

impl<'p> Operation<'p> {
    fn parse(index: usize, param: &'p Value) -> Result<Operation<'p>, PatchError> {
        let invalid = |m: String| PatchError::Invalid(format!("operation {index}: {m}"));
        let pname = param.get("name").and_then(Value::as_str).unwrap_or("");
        if pname != "operation" {
            return Err(invalid(format!(
                "parameter is named '{pname}', expected 'operation'"
            )));
        }
        let parts = param
            .get("part")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Each of these parts has cardinality 1..1 or 0..1 in the spec; with
        // two of them `part_named` would silently pick the first, and an
        // operation with `type=delete` and `type=add` would be applied as
        // whichever came first instead of being refused as ambiguous.
        for once in SINGLE_PARTS {
            let count = parts
                .iter()
                .filter(|p| p.get("name").and_then(Value::as_str) == Some(once))
                .count();
            if count > 1 {
                return Err(invalid(format!(
                    "part '{once}' appears {count} times; it is allowed at most once"
                )));
            }
        }
        let prim = |name: &str| part_named(parts, name).and_then(value_x).map(|(_, _, v)| v);
        let string = |name: &str| -> Result<Option<&'p str>, PatchError> {
            match prim(name) {
                None => Ok(None),
                Some(v) => v
                    .as_str()
                    .map(Some)
                    .ok_or_else(|| invalid(format!("part '{name}' must be a string"))),
            }
        };
        let integer = |name: &str| -> Result<Option<i64>, PatchError> {
            match prim(name) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| invalid(format!("part '{name}' must be an integer"))),
            }
        };
        let kind = match string("type")? {
            Some("add") => Kind::Add,
            Some("insert") => Kind::Insert,
            Some("delete") => Kind::Delete,
            Some("replace") => Kind::Replace,
            Some("move") => Kind::Move,
            Some(other) => return Err(invalid(format!("unknown operation type '{other}'"))),
            None => return Err(invalid("missing part 'type'".into())),
        };
        let path =
            string("path")?.ok_or_else(|| invalid(format!("{kind}: missing part 'path'")))?;
        Ok(Operation {
            kind,
            path,
            name: string("name")?,
            value: part_named(parts, "value"),
            index: integer("index")?,
            source: integer("source")?,
            destination: integer("destination")?,
        })
    }

    fn apply(&self, doc: &mut Value, is_repeating: &dyn Fn(&str) -> bool) -> Result<(), String> {
        let path = self.path;
        let targets = select(doc, path)?;
        match self.kind {
            Kind::Delete => match targets.as_slice() {
                [] => Ok(()),
                [t] => delete(doc, &t.segments, path),
                many => Err(format!(
                    "path '{path}' matched {} elements; delete needs at most one",
                    many.len()
                )),
            },
            Kind::Add => {
                let target = single(&targets, path)?;
                let name = self.required(self.name, "name")?;
                let elem_path = element_path(doc, &target.segments);
                let (key, value) = self.new_value(name, &elem_path, is_repeating)?;
                let child_path = format!("{elem_path}.{key}");
                let Some(Value::Object(obj)) = get_mut(doc, &target.segments) else {
                    return Err(format!(
                        "path '{path}' selects a primitive; cannot add element '{key}' to it"
                    ));
                };
                match obj.get_mut(&key) {
                    Some(Value::Array(items)) => items.push(value),
                    Some(_) => {
                        return Err(format!(
                            "element '{key}' already exists at path '{path}' and does not repeat; use replace"
                        ))
                    }
                    None if is_repeating(&child_path) => {
                        obj.insert(key, Value::Array(vec![value]));
                    }
                    None => {
                        obj.insert(key, value);
                    }
                }
                Ok(())
            }
            Kind::Replace => {
                let target = single(&targets, path)?;
                let Some((PathSegment::Key(old_key), parent)) = target
                    .segments
                    .split_last()
                    .map(|(last, parent)| (last.clone(), parent.to_vec()))
                else {
                    return replace_list_item(doc, target, self, is_repeating);
                };
                let elem_path = element_path(doc, &target.segments);
                let base_key = match (&target.choice_type, target.choice) {
                    (Some(t), true) => old_key
                        .strip_suffix(type_to_suffix(t).as_str())
                        .unwrap_or(&old_key)
                        .to_string(),
                    _ => old_key.clone(),
                };
                let (new_key, value) = self.new_value(&base_key, &elem_path, is_repeating)?;
                // Only choice elements change key (valueQuantity → valueString).
                let new_key = if target.choice {
                    new_key
                } else {
                    old_key.clone()
                };
                let Some(Value::Object(obj)) = get_mut(doc, &parent) else {
                    return Err(format!("path '{path}' does not select an element"));
                };
                if new_key == old_key {
                    obj.insert(old_key, value);
                } else {
                    let pos = obj.keys().position(|k| *k == old_key).unwrap_or(obj.len());
                    obj.shift_remove(&old_key);
                    obj.shift_remove(&format!("_{old_key}"));
                    obj.shift_insert(pos.min(obj.len()), new_key, value);
                }
                Ok(())
            }
            Kind::Insert => {
                let (list, len) = list_of(doc, &targets, path)?;
                let index = self.list_index(self.index, "index", len + 1)?;
                let elem_path = element_path(doc, &list);
                let base = match list.last() {
                    Some(PathSegment::Key(k)) => k.clone(),
                    _ => String::new(),
                };
                let (_, value) = self.new_value(&base, &elem_path, is_repeating)?;
                if let Some(Value::Array(items)) = get_mut(doc, &list) {
                    items.insert(index, value);
                }
                Ok(())
            }
            Kind::Move => {
                let (list, len) = list_of(doc, &targets, path)?;
                let source = self.list_index(self.source, "source", len)?;
                let destination = self.list_index(self.destination, "destination", len)?;
                if let Some(Value::Array(items)) = get_mut(doc, &list) {
                    let item = items.remove(source);
                    items.insert(destination, item);
                }
                Ok(())
            }
        }
    }

    fn required<T>(&self, v: Option<T>, part: &str) -> Result<T, String> {
        v.ok_or_else(|| format!("missing part '{part}'"))
    }

    fn list_index(&self, v: Option<i64>, part: &str, limit: usize) -> Result<usize, String> {
        let v = self.required(v, part)?;
        usize::try_from(v)
            .ok()
            .filter(|i| *i < limit)
            .ok_or_else(|| {
                format!(
                    "{part} {v} is out of range for the list at '{}' (valid: 0..{})",
                    self.path,
                    limit.saturating_sub(1)
                )
            })
    }

    /// Builds the new value and its JSON key. `name` may end in `[x]`
    /// (`value[x]`), in which case the key takes the type of the supplied
    /// `value[x]` (`valueString`).
    fn new_value(
        &self,
        name: &str,
        parent_path: &str,
        is_repeating: &dyn Fn(&str) -> bool,
    ) -> Result<(String, Value), String> {
        let part = self.required(self.value, "value")?;
        let base = name.strip_suffix("[x]").unwrap_or(name);
        if let Some((_, suffix, v)) = value_x(part) {
            // Choice keys carry the type: `value` + `Quantity`; plain
            // elements keep their name.
            let key = if name.ends_with("[x]") || self.kind == Kind::Replace {
                format!("{base}{suffix}")
            } else {
                base.to_string()
            };
            return Ok((key, v.clone()));
        }
        if name.ends_with("[x]") {
            return Err(format!(
                "element '{name}' is a choice type but 'value' has no value[x] to take the type from"
            ));
        }
        let child_path = if self.kind == Kind::Add {
            format!("{parent_path}.{base}")
        } else {
            parent_path.to_string()
        };
        let value = part_tree(part, &child_path, is_repeating, 0)?;
        Ok((base.to_string(), value))
    }
}

/// Turns a `part` tree (an anonymous/complex value) into a JSON object.
fn part_tree(
    part: &Value,
    elem_path: &str,
    is_repeating: &dyn Fn(&str) -> bool,
    depth: usize,
) -> Result<Value, String> {
    if depth > MAX_PART_DEPTH {
        return Err("value part tree is nested too deeply".into());
    }
    let Some(parts) = part.get("part").and_then(Value::as_array) else {
        return Err("part 'value' has neither a value[x] nor nested parts".into());
    };
    let mut obj = Map::new();
    for sub in parts {
        let name = sub
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a nested value part has no name")?;
        let child_path = format!("{elem_path}.{name}");
        let v = match value_x(sub) {
            Some((_, _, v)) => v.clone(),
            None => part_tree(sub, &child_path, is_repeating, depth + 1)?,
        };
        match obj.get_mut(name) {
            Some(Value::Array(items)) => items.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                let v = if is_repeating(&child_path) {
                    Value::Array(vec![v])
                } else {
                    v
                };
                obj.insert(name.to_string(), v);
            }
        }
    }
    Ok(Value::Object(obj))
}

/// A selected element: its location and whether it was reached through a
/// choice key (and as which type).
struct Target {
    segments: Vec<PathSegment>,
    choice: bool,
    choice_type: Option<String>,
}

fn select(doc: &Value, path: &str) -> Result<Vec<Target>, String> {
    let expr = compile(path).map_err(|e| format!("invalid path '{path}': {e}"))?;
    let nodes = expr
        .evaluate(doc)
        .map_err(|e| format!("path '{path}' could not be evaluated: {e}"))?;
    nodes
        .into_iter()
        .map(|n| {
            let segments = n.path().ok_or_else(|| {
                format!("path '{path}' selects a computed value, not an element of the resource")
            })?;
            Ok(Target {
                segments,
                choice: n.choice,
                choice_type: n.type_name().map(str::to_string),
            })
        })
        .collect()
}

fn single<'t>(targets: &'t [Target], path: &str) -> Result<&'t Target, String> {
    match targets {
        [t] => Ok(t),
        [] => Err(format!("path '{path}' matched no element")),
        many => Err(format!(
            "path '{path}' matched {} elements; exactly one is required",
            many.len()
        )),
    }
}

/// For insert/move: the selected items must all be entries of one JSON array;
/// returns that array's location and length.
fn list_of(
    doc: &Value,
    targets: &[Target],
    path: &str,
) -> Result<(Vec<PathSegment>, usize), String> {
    let not_list = || format!("path '{path}' does not select the items of a single list");
    let first = targets
        .first()
        .ok_or_else(|| format!("path '{path}' matched no element"))?;
    let Some((PathSegment::Index(_), parent)) = first.segments.split_last() else {
        return Err(not_list());
    };
    for t in targets {
        match t.segments.split_last() {
            Some((PathSegment::Index(_), p)) if p == parent => {}
            _ => return Err(not_list()),
        }
    }
    let len = get(doc, parent)
        .and_then(Value::as_array)
        .map(Vec::len)
        .ok_or_else(not_list)?;
    Ok((parent.to_vec(), len))
}

/// `replace` of a list item (path ends in an index, e.g. `identifier[0]`).
fn replace_list_item(
    doc: &mut Value,
    target: &Target,
    op: &Operation<'_>,
    is_repeating: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    if target.segments.is_empty() {
        return Err(format!(
            "path '{}' selects the whole resource, which cannot be replaced",
            op.path
        ));
    }
    let elem_path = element_path(doc, &target.segments);
    let (_, value) = op.new_value("", &elem_path, is_repeating)?;
    match get_mut(doc, &target.segments) {
        Some(slot) => {
            *slot = value;
            Ok(())
        }
        None => Err(format!("path '{}' matched no element", op.path)),
    }
}

fn get<'v>(doc: &'v Value, segs: &[PathSegment]) -> Option<&'v Value> {
    segs.iter().try_fold(doc, |cur, seg| match seg {
        PathSegment::Key(k) => cur.get(k),
        PathSegment::Index(i) => cur.get(*i),
    })
}

fn get_mut<'v>(doc: &'v mut Value, segs: &[PathSegment]) -> Option<&'v mut Value> {
    segs.iter().try_fold(doc, |cur, seg| match seg {
        PathSegment::Key(k) => cur.get_mut(k),
        PathSegment::Index(i) => cur.get_mut(*i),
    })
}

/// Dotted element path (`Patient.contact.name`) of a location, restarting at
/// nested resources (contained, Bundle entries), as used by the cardinality
/// oracle.
fn element_path(doc: &Value, segs: &[PathSegment]) -> String {
    let type_of = |v: &Value| {
        v.get("resourceType")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut path = type_of(doc).unwrap_or_else(|| "Resource".to_string());
    let mut cur = Some(doc);
    for seg in segs {
        cur = cur.and_then(|c| match seg {
            PathSegment::Key(k) => {
                path.push('.');
                path.push_str(k);
                c.get(k)
            }
            PathSegment::Index(i) => c.get(*i),
        });
        if let Some(t) = cur.filter(|c| !c.is_array()).and_then(type_of) {
            path = t;
        }
    }
    path
}

fn delete(doc: &mut Value, segs: &[PathSegment], path: &str) -> Result<(), String> {
    let Some((last, parent)) = segs.split_last() else {
        return Err(format!(
            "path '{path}' selects the whole resource, which cannot be deleted"
        ));
    };
    match (get_mut(doc, parent), last) {
        (Some(Value::Object(obj)), PathSegment::Key(k)) => {
            obj.shift_remove(k);
            // The `_name` companion holds the primitive's id/extensions.
            obj.shift_remove(&format!("_{k}"));
        }
        (Some(Value::Array(items)), PathSegment::Index(i)) if *i < items.len() => {
            items.remove(*i);
            if let Some((PathSegment::Key(k), grand)) = parent.split_last() {
                if let Some(Value::Array(companion)) =
                    get_mut(doc, grand).and_then(|g| g.get_mut(format!("_{k}")))
                {
                    if *i < companion.len() {
                        companion.remove(*i);
                    }
                    // A companion holding only nulls carries no information.
                    if companion.iter().all(Value::is_null) {
                        if let Some(Value::Object(g)) = get_mut(doc, grand) {
                            g.shift_remove(&format!("_{k}"));
                        }
                    }
                }
            }
        }
        _ => return Err(format!("path '{path}' matched no element")),
    }
    prune_empty(doc, parent);
    Ok(())
}

/// FHIR JSON forbids empty objects and arrays; after a delete, remove
/// containers that became empty, walking up towards (but never removing) the
/// resource itself.
fn prune_empty(doc: &mut Value, mut segs: &[PathSegment]) {
    while let Some((last, parent)) = segs.split_last() {
        let empty = match get(doc, segs) {
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if !empty {
            return;
        }
        match (get_mut(doc, parent), last) {
            (Some(Value::Object(obj)), PathSegment::Key(k)) => {
                obj.shift_remove(k);
            }
            (Some(Value::Array(items)), PathSegment::Index(i)) if *i < items.len() => {
                items.remove(*i);
            }
            _ => return,
        }
        segs = parent;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(parts: Value) -> Value {
        json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]})
    }

    #[test]
    fn replace_choice_changes_key_in_place() {
        let mut obs = json!({"resourceType": "Observation", "status": "final",
            "valueQuantity": {"value": 1}, "note": [{"text": "x"}]});
        let patch = op(json!([
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Observation.value"},
            {"name": "value", "valueString": "positive"}
        ]));
        apply_fhirpath_patch(&mut obs, &patch).unwrap();
        let keys: Vec<&String> = obs.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["resourceType", "status", "valueString", "note"]);
        assert_eq!(obs["valueString"], "positive");
    }

    #[test]
    fn repeated_single_parts_are_refused_and_leave_the_resource_alone() {
        for part in SINGLE_PARTS {
            let mut patient = json!({"resourceType": "Patient", "gender": "male"});
            let mut parts = vec![
                json!({"name": "type", "valueCode": "delete"}),
                json!({"name": "path", "valueString": "Patient.gender"}),
            ];
            let extra = match part {
                "type" => json!({"name": "type", "valueCode": "add"}),
                "path" => json!({"name": "path", "valueString": "Patient.birthDate"}),
                "value" => json!({"name": "value", "valueString": "x"}),
                "index" | "source" | "destination" => json!({"name": part, "valueInteger": 0}),
                other => json!({"name": other, "valueString": "x"}),
            };
            if !matches!(part, "type" | "path") {
                parts.push(extra.clone());
            }
            parts.push(extra);
            let err = apply_fhirpath_patch(&mut patient, &op(Value::Array(parts))).unwrap_err();
            assert!(
                matches!(&err, PatchError::Invalid(m) if m.contains(&format!("part '{part}' appears 2 times"))),
                "{part}: {err}"
            );
            assert_eq!(patient["gender"], "male", "{part}");
        }
    }

    #[test]
    fn default_cardinality() {
        assert!(default_is_repeating("Patient.identifier"));
        assert!(default_is_repeating("Patient.name"));
        assert!(!default_is_repeating("Patient.contact.name"));
        assert!(!default_is_repeating("Patient.birthDate"));
    }
}

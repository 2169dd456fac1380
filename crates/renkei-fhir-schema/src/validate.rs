//! Structural validation of FHIR R4 JSON resources.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::bundle_rules::bundle_rule_breaks;
use crate::model::{model, ElementDef, Kind, Model, Prim, TypeDef};
use crate::primitive as p;
use crate::xhtml::{check_xhtml, XhtmlProblemKind};

/// R4 datatypes: "Strings SHALL NOT exceed 1MB in size" (`string.value` maxLength 1048576).
const MAX_STRING_BYTES: usize = 1024 * 1024;

/// Severity of an [`Issue`] (FHIR `IssueSeverity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    /// The FHIR `OperationOutcome.issue.severity` code.
    pub fn as_code(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// Kind of problem (a subset of FHIR `IssueType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    /// Not a resource at all / unknown resource type / not a JSON object.
    Invalid,
    /// Wrong JSON shape: unknown element, array vs single, object vs primitive, empty
    /// object/array, null, several variants of a choice element.
    Structure,
    /// A primitive value that violates its datatype's format or range.
    Value,
    /// A required element (min >= 1) is missing.
    Required,
    /// A code outside the required value set bound to the element.
    CodeInvalid,
    /// A constraint of the specification fails (e.g. the narrative rules txt-1 and txt-2).
    Invariant,
}

impl IssueCode {
    /// The FHIR `OperationOutcome.issue.code` code.
    pub fn as_code(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Value => "value",
            IssueCode::Required => "required",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::Invariant => "invariant",
        }
    }
}

/// One validation finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    /// FHIRPath-like location, e.g. `Patient.name[0].given[1]`; nested resources continue the
    /// path of their container: `Bundle.entry[2].resource.status`.
    pub expression: String,
    pub message: String,
}

/// Validate a resource (any R4 resource type) and return all structural issues found (empty if
/// valid). Never panics; recursion depth is bounded.
pub fn validate(resource: &Value) -> Vec<Issue> {
    let mut v = Validator {
        m: model(),
        issues: Vec::new(),
        path: String::new(),
        depth: 0,
        locals: Vec::new(),
    };
    v.resource(resource, true, false);
    v.issues
}

/// Render issues as an R4 `OperationOutcome` resource (an "informational, all ok" issue if none).
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let mut list = Vec::with_capacity(issues.len().max(1));
    for i in issues {
        let mut o = Map::new();
        o.insert(
            "severity".into(),
            Value::String(i.severity.as_code().into()),
        );
        o.insert("code".into(), Value::String(i.code.as_code().into()));
        o.insert("diagnostics".into(), Value::String(i.message.clone()));
        if !i.expression.is_empty() {
            o.insert(
                "expression".into(),
                Value::Array(vec![Value::String(i.expression.clone())]),
            );
        }
        list.push(Value::Object(o));
    }
    if list.is_empty() {
        let mut o = Map::new();
        o.insert("severity".into(), Value::String("information".into()));
        o.insert("code".into(), Value::String("informational".into()));
        o.insert(
            "diagnostics".into(),
            Value::String("No issues detected".into()),
        );
        list.push(Value::Object(o));
    }
    let mut oo = Map::new();
    oo.insert(
        "resourceType".into(),
        Value::String("OperationOutcome".into()),
    );
    oo.insert("issue".into(), Value::Array(list));
    Value::Object(oo)
}

const MAX_DEPTH: usize = 64;

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

struct Validator {
    m: &'static Model,
    issues: Vec<Issue>,
    path: String,
    depth: usize,
    /// One entry per resource being walked, innermost last: what its local references
    /// (`#id`) may name.
    locals: Vec<LocalScope>,
}

/// What a local reference may name inside one resource: the ids of the contained resources
/// of the resource that holds them (a contained resource shares its container's scope,
/// since `#id` inside it names a sibling and `#` the container).
#[derive(Default)]
struct LocalScope {
    ids: Vec<String>,
    contained: bool,
    /// dom-3: the ids `#id` names in the resource, in an element dom-3 reads (see
    /// [`Validator::local_name`]), its contained resources included (a contained resource
    /// hands its own up to its container when its walk ends). A set: a large resource may
    /// hold many references and many contained resources.
    named: HashSet<String>,
    /// dom-3, in a contained resource: it refers to its container (`#`).
    names_container: bool,
    /// dom-3, in a container: the ids of its contained resources that refer to it.
    refer_to_container: Vec<String>,
}

impl Validator {
    fn issue(&mut self, code: IssueCode, message: String) {
        self.issues.push(Issue {
            severity: Severity::Error,
            code,
            expression: self.path.clone(),
            message,
        });
    }

    fn push_name(&mut self, name: &str) -> usize {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(name);
        len
    }

    fn push_index(&mut self, i: usize) -> usize {
        let len = self.path.len();
        self.path.push('[');
        self.path.push_str(&i.to_string());
        self.path.push(']');
        len
    }

    /// Validate a resource; `self.path` is the location of the resource (empty at top level).
    /// `contained` is true for a resource in a `contained` list.
    fn resource(&mut self, v: &Value, top: bool, contained: bool) {
        let Value::Object(obj) = v else {
            self.issue(
                IssueCode::Invalid,
                format!("a resource must be a JSON object, found {}", json_kind(v)),
            );
            return;
        };
        let rt = match obj.get("resourceType") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                self.issue(
                    IssueCode::Invalid,
                    format!("resourceType must be a string, found {}", json_kind(other)),
                );
                return;
            }
            None => {
                self.issue(
                    IssueCode::Invalid,
                    "the resource has no resourceType".to_string(),
                );
                return;
            }
        };
        let m = self.m;
        let td = match m.type_def(rt) {
            Some(td) if m.is_resource_type(rt) => td,
            _ => {
                self.issue(IssueCode::Invalid, format!("unknown resource type '{rt}'"));
                return;
            }
        };
        let saved = self.path.len();
        if top {
            self.path.push_str(rt);
        }
        let scope = self.local_scope(obj, contained);
        self.locals.push(scope);
        self.object(td, obj, true);
        if rt == "Bundle" {
            self.bundle_rules(obj);
        }
        if let Some(scope) = self.locals.pop() {
            if contained {
                if let Some(container) = self.locals.last_mut() {
                    container.named.extend(scope.named);
                    if scope.names_container {
                        if let Some(id) = obj.get("id").and_then(Value::as_str) {
                            container.refer_to_container.push(id.to_string());
                        }
                    }
                }
            } else {
                self.check_contained_referenced(obj, &scope);
            }
        }
        self.path.truncate(saved);
    }

    /// The bdl invariants, each reported at the element it concerns.
    fn bundle_rules(&mut self, bundle: &Map<String, Value>) {
        for rule_break in bundle_rule_breaks(bundle) {
            let saved = self.path.len();
            if let Some(index) = rule_break.entry {
                self.push_name("entry");
                self.push_index(index);
            }
            if let Some(element) = rule_break.element {
                self.push_name(element);
            }
            self.issue(IssueCode::Invariant, rule_break.message);
            self.path.truncate(saved);
        }
    }

    /// dom-3: each contained resource is referred to from elsewhere in its container or refers
    /// to the container. R4's expression reads `reference` elements and elements typed
    /// canonical, uri or url for `#id`, and `reference` and canonical elements for `#`; a
    /// mention in the narrative does not count (R5 added the `referencesContained` extension
    /// for that). A contained resource nothing points to is content no reader of the resource
    /// is led to. The id-less ones were refused already.
    fn check_contained_referenced(&mut self, obj: &Map<String, Value>, scope: &LocalScope) {
        let Some(Value::Array(items)) = obj.get("contained") else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let Some(id) = item.get("id").and_then(Value::as_str) else {
                continue;
            };
            let referred = scope.named.contains(id)
                || scope.refer_to_container.iter().any(|refers| refers == id);
            if referred {
                continue;
            }
            let saved = self.push_name("contained");
            let saved_index = self.push_index(i);
            self.issue(
                IssueCode::Invariant,
                format!(
                    "the contained resource '{id}' is referred to by nothing else in the resource \
                     ('#{id}') and does not refer to the resource containing it ('#') (dom-3)"
                ),
            );
            self.path.truncate(saved_index);
            self.path.truncate(saved);
        }
    }

    /// Notes a `#…` value of element `ed` for dom-3: `#id` in a `reference` or a canonical,
    /// uri or url element names contained resource `id`; `#` in a `reference` or canonical
    /// names the container.
    fn local_name(&mut self, ed: &ElementDef, pr: Prim, target: &str) {
        let is_reference = ed.name == "reference";
        let Some(scope) = self.locals.last_mut() else {
            return;
        };
        if target.is_empty() {
            if is_reference || pr == Prim::Canonical {
                scope.names_container = true;
            }
        } else if is_reference || matches!(pr, Prim::Canonical | Prim::Uri | Prim::Url) {
            scope.named.insert(target.to_string());
        }
    }

    /// The rules on contained resources that make local references resolvable (dom-2,
    /// dom-3's need for an id, unique ids), and the scope the resource's `#id` references
    /// are checked against (ref-1).
    fn local_scope(&mut self, obj: &Map<String, Value>, contained: bool) -> LocalScope {
        if contained {
            if obj.contains_key("contained") {
                self.issue(
                    IssueCode::Invariant,
                    "a contained resource must not itself contain resources (dom-2)".into(),
                );
            }
            if !obj.get("id").is_some_and(Value::is_string) {
                self.issue(
                    IssueCode::Invariant,
                    "a contained resource needs an id, the only way it can be referred to (dom-3)"
                        .into(),
                );
            }
            let ids = self
                .locals
                .last()
                .map(|outer| outer.ids.clone())
                .unwrap_or_default();
            return LocalScope {
                ids,
                contained: true,
                ..LocalScope::default()
            };
        }
        let mut ids: Vec<String> = Vec::new();
        let items = obj
            .get("contained")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, item) in items.iter().enumerate() {
            let Some(id) = item.get("id").and_then(Value::as_str) else {
                continue;
            };
            if ids.iter().any(|seen| seen == id) {
                let saved = self.push_name("contained");
                let saved_index = self.push_index(i);
                self.issue(
                    IssueCode::Invariant,
                    format!(
                        "two contained resources have the id '{id}'; a local reference must name one (dom-3)"
                    ),
                );
                self.path.truncate(saved_index);
                self.path.truncate(saved);
            } else {
                ids.push(id.to_string());
            }
        }
        LocalScope {
            ids,
            ..LocalScope::default()
        }
    }

    /// ref-1: a local reference (`#id`) names a contained resource of the resource it is in;
    /// `#` alone names the container and is only meaningful inside a contained resource.
    fn local_reference(&mut self, obj: &Map<String, Value>) {
        let Some(Value::String(reference)) = obj.get("reference") else {
            return;
        };
        let Some(id) = reference.strip_prefix('#') else {
            return;
        };
        let Some(scope) = self.locals.last() else {
            return;
        };
        let message = if id.is_empty() {
            if scope.contained {
                return;
            }
            "the local reference '#' names the containing resource and is only allowed inside a contained resource (ref-1)".to_string()
        } else if scope.ids.iter().any(|known| known == id) {
            return;
        } else {
            format!("the local reference '#{id}' names no contained resource (ref-1)")
        };
        let saved = self.push_name("reference");
        self.issue(IssueCode::Invariant, message);
        self.path.truncate(saved);
    }

    /// Validate the properties of a JSON object against a type definition.
    fn object(&mut self, td: &'static TypeDef, obj: &Map<String, Value>, is_resource: bool) {
        if self.depth >= MAX_DEPTH {
            self.issue(IssueCode::Structure, "content is nested too deeply".into());
            return;
        }
        self.depth += 1;
        if !is_resource && obj.keys().all(|k| k == "fhir_comments") {
            self.issue(
                IssueCode::Structure,
                "an object must have content (empty objects are not allowed)".into(),
            );
        } else if !is_resource
            && td.name != "Element"
            && obj.keys().all(|k| k == "id" || k == "fhir_comments")
        {
            // ele-1; a primitive's `_name` object (an Element) is checked with its value.
            self.issue(
                IssueCode::Invariant,
                "an element needs a value or children, not only an id (ele-1)".into(),
            );
        }
        for (key, value) in obj {
            if key == "fhir_comments" || (is_resource && key == "resourceType") {
                continue;
            }
            if let Some(base) = key.strip_prefix('_') {
                match td.element(base) {
                    Some(ed) if matches!(ed.kind, Kind::Primitive(pr) if pr != Prim::Xhtml) => {
                        let saved = self.push_name(base);
                        self.primitive_extension(ed, value, obj.get(base));
                        self.path.truncate(saved);
                    }
                    _ => {
                        let saved = self.push_name(key);
                        self.issue(
                            IssueCode::Structure,
                            format!("unrecognized property '{key}' in {}", td.name),
                        );
                        self.path.truncate(saved);
                    }
                }
                continue;
            }
            let saved = self.push_name(key);
            match td.element(key) {
                Some(ed) => {
                    let ext = if matches!(ed.kind, Kind::Primitive(_)) {
                        obj.get(&format!("_{key}"))
                    } else {
                        None
                    };
                    self.element(ed, value, ext)
                }
                None => self.issue(
                    IssueCode::Structure,
                    format!("unrecognized property '{key}' in {}", td.name),
                ),
            }
            self.path.truncate(saved);
        }
        if td.name == "Reference" {
            self.local_reference(obj);
        }
        // ext-1: an extension carries a value or nested extensions, exactly one of the two.
        if td.name == "Extension" {
            let has_value = obj.keys().any(|k| k.starts_with("value"));
            let has_extensions = obj
                .get("extension")
                .and_then(Value::as_array)
                .is_some_and(|items| !items.is_empty());
            if has_value == has_extensions {
                self.issue(
                    IssueCode::Invariant,
                    if has_value {
                        "an extension has either a value[x] or nested extensions, not both (ext-1)"
                    } else {
                        "an extension needs a value[x] or nested extensions (ext-1)"
                    }
                    .into(),
                );
            }
        }
        // choice elements: at most one variant
        for (base, variants) in &td.choices {
            let present: Vec<&str> = variants
                .iter()
                .filter_map(|&i| td.elements.get(i))
                .filter(|e| present(obj, &e.name))
                .map(|e| e.name.as_str())
                .collect();
            if present.len() > 1 {
                let saved = self.push_name(&format!("{base}[x]"));
                self.issue(
                    IssueCode::Structure,
                    format!(
                        "only one variant of the choice element {base}[x] is allowed, found {}",
                        present.join(", ")
                    ),
                );
                self.path.truncate(saved);
            }
        }
        // required elements
        for (label, idxs) in &td.required {
            let found = idxs
                .iter()
                .filter_map(|&i| td.elements.get(i))
                .any(|e| present(obj, &e.name));
            if !found {
                let saved = self.push_name(label);
                self.issue(IssueCode::Required, missing_required_message(td, label));
                self.path.truncate(saved);
            }
        }
        self.depth -= 1;
    }

    /// Validate the value of element `ed` (`self.path` points at it). `ext` is the `_name`
    /// sibling, if any.
    fn element(&mut self, ed: &'static ElementDef, v: &Value, ext: Option<&Value>) {
        let is_prim = matches!(ed.kind, Kind::Primitive(_));
        if ed.array {
            let Value::Array(items) = v else {
                self.issue(
                    IssueCode::Structure,
                    format!(
                        "element '{}' repeats and must be a JSON array, found {}",
                        ed.name,
                        json_kind(v)
                    ),
                );
                return;
            };
            if items.is_empty() {
                self.issue(
                    IssueCode::Structure,
                    format!(
                        "array '{}' must not be empty (omit the property instead)",
                        ed.name
                    ),
                );
                return;
            }
            let ext_items = match ext {
                Some(Value::Array(e)) => Some(e),
                _ => None,
            };
            if let Some(e) = ext_items {
                if e.len() != items.len() {
                    self.issue(
                        IssueCode::Structure,
                        format!(
                            "'{}' has {} values but '_{}' has {} entries (must be equal)",
                            ed.name,
                            items.len(),
                            ed.name,
                            e.len()
                        ),
                    );
                }
            }
            for (i, item) in items.iter().enumerate() {
                let saved = self.push_index(i);
                if item.is_null() {
                    let has_ext = is_prim
                        && ext_items
                            .and_then(|e| e.get(i))
                            .is_some_and(|x| !x.is_null());
                    if !has_ext {
                        self.issue(
                            IssueCode::Structure,
                            "null is not allowed here (only in a primitive array whose '_' sibling has an entry at the same position)".into(),
                        );
                    }
                } else {
                    self.item(ed, item);
                }
                self.path.truncate(saved);
            }
        } else {
            match v {
                Value::Array(_) => self.issue(
                    IssueCode::Structure,
                    format!(
                        "element '{}' does not repeat and must not be a JSON array",
                        ed.name
                    ),
                ),
                Value::Null => self.issue(
                    IssueCode::Structure,
                    format!("null is not allowed for '{}' (omit the property)", ed.name),
                ),
                _ => self.item(ed, v),
            }
        }
    }

    /// Validate one (non-null, non-array) occurrence of an element.
    fn item(&mut self, ed: &'static ElementDef, v: &Value) {
        match ed.kind {
            Kind::Resource => {
                if self.depth >= MAX_DEPTH {
                    self.issue(IssueCode::Structure, "content is nested too deeply".into());
                    return;
                }
                self.depth += 1;
                self.resource(v, false, ed.name == "contained");
                self.depth -= 1;
            }
            Kind::Complex(t) => match (v, self.m.types.get(t)) {
                (Value::Object(o), Some(td)) => self.object(td, o, false),
                (Value::Object(_), None) => {}
                _ => self.issue(
                    IssueCode::Structure,
                    format!(
                        "element '{}' of type {} must be a JSON object, found {}",
                        ed.name,
                        ed.type_name,
                        json_kind(v)
                    ),
                ),
            },
            Kind::Primitive(pr) => self.primitive(ed, pr, v),
        }
    }

    fn primitive(&mut self, ed: &ElementDef, pr: Prim, v: &Value) {
        let tn = ed.type_name.as_str();
        match pr {
            Prim::Boolean => {
                if !v.is_boolean() {
                    self.wrong_json(ed, "a JSON boolean", v);
                }
            }
            Prim::Integer | Prim::PositiveInt | Prim::UnsignedInt | Prim::Decimal => {
                let Value::Number(n) = v else {
                    self.wrong_json(ed, "a JSON number", v);
                    return;
                };
                let text = n.to_string();
                if pr == Prim::Decimal {
                    if !p::is_decimal_text(&text) {
                        self.bad_value(tn, &text);
                    } else if !text.parse::<f64>().is_ok_and(f64::is_finite) {
                        // Searches compare decimals as doubles: one beyond their range could
                        // neither be indexed nor compared (it became infinity).
                        self.issue(
                            IssueCode::Value,
                            format!(
                                "the decimal '{text}' is beyond the range this server stores (magnitude up to about 1.8e308)"
                            ),
                        );
                    }
                    return;
                }
                let (lo, what) = match pr {
                    Prim::PositiveInt => (1i64, "an integer >= 1"),
                    Prim::UnsignedInt => (0, "an integer >= 0"),
                    _ => (i64::from(i32::MIN), "a 32-bit integer"),
                };
                match p::parse_integer(&text) {
                    Some(i) if i >= lo && i <= i64::from(i32::MAX) => {}
                    _ => self.issue(
                        IssueCode::Value,
                        format!("'{text}' is not a valid {tn}: must be {what}"),
                    ),
                }
            }
            _ => {
                let Value::String(s) = v else {
                    self.wrong_json(ed, "a JSON string", v);
                    return;
                };
                if s.is_empty() {
                    self.issue(
                        IssueCode::Value,
                        format!(
                            "empty string is not allowed for '{}' (omit the property)",
                            ed.name
                        ),
                    );
                    return;
                }
                if matches!(pr, Prim::String | Prim::Markdown) && s.len() > MAX_STRING_BYTES {
                    self.issue(
                        IssueCode::Value,
                        format!(
                            "'{}' is {} bytes long; FHIR strings SHALL NOT exceed 1 MB ({MAX_STRING_BYTES} bytes)",
                            ed.name,
                            s.len()
                        ),
                    );
                    return;
                }
                if let Some(target) = s.strip_prefix('#') {
                    self.local_name(ed, pr, target);
                }
                let ok = match pr {
                    Prim::Date => p::is_date(s),
                    Prim::DateTime => p::is_date_time(s),
                    Prim::Instant => p::is_instant(s),
                    Prim::Time => p::is_time(s),
                    Prim::Id => p::is_id(s),
                    Prim::Code => p::is_code(s),
                    Prim::Uri | Prim::Url | Prim::Canonical => p::is_uri(s),
                    Prim::Oid => p::is_oid(s),
                    Prim::Uuid => p::is_uuid(s),
                    Prim::Base64Binary => p::is_base64(s),
                    Prim::String | Prim::Markdown => p::is_string(s),
                    Prim::Xhtml => {
                        if let Err(problem) = check_xhtml(s) {
                            // The path goes into the diagnostics too: clients often show only
                            // those, and a Bundle can hold many narratives.
                            let code = match problem.kind {
                                XhtmlProblemKind::Malformed => IssueCode::Value,
                                XhtmlProblemKind::NotAllowed | XhtmlProblemKind::Empty => {
                                    IssueCode::Invariant
                                }
                            };
                            let message = format!("{}: {problem}", self.path);
                            self.issue(code, message);
                        }
                        true
                    }
                    _ => true,
                };
                if !ok {
                    self.bad_value(tn, s);
                    return;
                }
                if let Some(e) = ed.enum_idx.and_then(|i| self.m.enums.get(i)) {
                    if !e.iter().any(|c| c == s) {
                        let allowed = e.join(" | ");
                        self.issue(
                            IssueCode::CodeInvalid,
                            format!(
                                "'{s}' is not a valid code for '{}' (required binding: {allowed})",
                                ed.name
                            ),
                        );
                    }
                }
            }
        }
    }

    fn wrong_json(&mut self, ed: &ElementDef, expected: &str, v: &Value) {
        self.issue(
            IssueCode::Structure,
            format!(
                "element '{}' of type {} must be {expected}, found {}",
                ed.name,
                ed.type_name,
                json_kind(v)
            ),
        );
    }

    fn bad_value(&mut self, type_name: &str, text: &str) {
        let shown: String = text.chars().take(100).collect();
        self.issue(
            IssueCode::Value,
            format!("'{shown}' is not a valid {type_name}"),
        );
    }

    /// `_name` sibling of a primitive element (`self.path` points at the primitive).
    fn primitive_extension(&mut self, ed: &'static ElementDef, v: &Value, value: Option<&Value>) {
        let m = self.m;
        let Some(elem_td) = m.element_type.and_then(|i| m.types.get(i)) else {
            return;
        };
        if ed.array {
            let Value::Array(items) = v else {
                self.issue(
                    IssueCode::Structure,
                    format!(
                        "'_{}' must be a JSON array (because '{}' repeats), found {}",
                        ed.name,
                        ed.name,
                        json_kind(v)
                    ),
                );
                return;
            };
            if items.is_empty() {
                self.issue(
                    IssueCode::Structure,
                    format!("array '_{}' must not be empty", ed.name),
                );
                return;
            }
            let values = match value {
                Some(Value::Array(a)) => Some(a),
                _ => None,
            };
            for (i, item) in items.iter().enumerate() {
                let saved = self.push_index(i);
                match item {
                    Value::Null => {
                        // A null here is fine when the value array has a value at i. If the value
                        // array has a null at i, the value side reports it; if it has no entry at
                        // i at all, report here.
                        if values.and_then(|a| a.get(i)).is_none() {
                            self.issue(
                                IssueCode::Structure,
                                format!(
                                    "'_{}' is null at index {i} and '{}' has no value there",
                                    ed.name, ed.name
                                ),
                            );
                        }
                    }
                    Value::Object(o) => {
                        let value_there =
                            values.and_then(|a| a.get(i)).is_some_and(|v| !v.is_null());
                        if !value_there && !o.contains_key("extension") {
                            self.issue(
                                IssueCode::Invariant,
                                format!(
                                    "'_{}' at index {i} has neither a value nor extensions (ele-1)",
                                    ed.name
                                ),
                            );
                        }
                        self.object(elem_td, o, false)
                    }
                    other => self.issue(
                        IssueCode::Structure,
                        format!(
                            "entries of '_{}' must be JSON objects or null, found {}",
                            ed.name,
                            json_kind(other)
                        ),
                    ),
                }
                self.path.truncate(saved);
            }
        } else {
            match v {
                Value::Object(o) => {
                    // ele-1: without its value, the primitive must have extensions.
                    if value.is_none_or(Value::is_null) && !o.contains_key("extension") {
                        self.issue(
                            IssueCode::Invariant,
                            format!(
                                "'_{}' has neither a value ('{}') nor extensions (ele-1)",
                                ed.name, ed.name
                            ),
                        );
                    }
                    self.object(elem_td, o, false)
                }
                other => self.issue(
                    IssueCode::Structure,
                    format!(
                        "'_{}' must be a JSON object, found {}",
                        ed.name,
                        json_kind(other)
                    ),
                ),
            }
        }
    }
}

/// The message of a missing required element, shared with the XML reader
/// ([`crate::missing_required`]) so both formats say the same. A backbone element's type
/// (`Observation_Component`) is named by its path (`Observation.component`).
pub(crate) fn missing_required_message(td: &TypeDef, label: &str) -> String {
    format!(
        "missing required element {}.{label} (min 1)",
        element_path(&td.name)
    )
}

/// `Bundle_Entry_Request` → `Bundle.entry.request`; a type name without `_` is itself.
fn element_path(type_name: &str) -> String {
    let mut parts = type_name.split('_');
    let mut path = parts.next().unwrap_or_default().to_string();
    for part in parts {
        path.push('.');
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            path.extend(first.to_lowercase());
            path.push_str(chars.as_str());
        }
    }
    path
}

/// An element counts as present if its value or its `_name` extension sibling is there.
fn present(obj: &Map<String, Value>, name: &str) -> bool {
    if obj.contains_key(name) {
        return true;
    }
    let mut key = String::with_capacity(name.len() + 1);
    key.push('_');
    key.push_str(name);
    obj.contains_key(&key)
}

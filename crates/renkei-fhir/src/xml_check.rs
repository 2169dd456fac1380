//! The strict reading of FHIR XML that fhirbolt does not do.
//!
//! fhirbolt's XML reader drops content silently: a second resource in one `<contained>`, an
//! element with neither a value nor children (`<gender/>`), attributes it does not know; it
//! accepts elements out of the order the definitions fix; and its errors carry no element path
//! and sometimes Rust internals (`ParseIntError { kind: PosOverflow }`). This pass walks the
//! document once, before fhirbolt sees it, with fhirbolt's own element model
//! ([`ElementPath`]), and refuses what JSON input would refuse, naming the element as the JSON
//! validator does (`Patient.contained[0]`, `Observation.valueInteger`).
//!
//! It runs after [`crate::prepass::check_xml_depth`], so the document is balanced and not
//! too deep.

use crate::prepass::{markup, Markup, NarrativeDiv};
use crate::xml_namespace::{has_prefix, schema_instance_prefixes};
use crate::{ContentError, Issue, IssueCode, Severity};
use fhirbolt_shared::path::ElementPath;
use fhirbolt_shared::FhirReleases;
use std::collections::HashSet;

/// What an open element is, which decides the attributes and children it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A resource: the root, or the one child of a [`Kind::Holder`].
    Resource,
    /// An element whose type is `Resource` (`contained`, `Bundle.entry.resource`, …): it holds
    /// exactly one resource.
    Holder,
    /// A primitive: `value` and `id` attributes, `extension` children.
    Primitive,
    /// `extension` / `modifierExtension`: `url` and `id` attributes.
    Extension,
    /// Any other element: an `id` attribute and child elements.
    Complex,
    /// The XHTML `div` of a narrative, skipped here.
    Div,
}

struct Frame {
    kind: Kind,
    /// The FHIRPath-like location used in issues (`Patient.name[0]`).
    location: String,
    /// The local element name.
    name: String,
    /// Where the element's definition is, for the schema: the resource type, then element
    /// names without indices (`Observation.code`).
    schema_path: String,
    has_value: bool,
    /// Child elements seen so far, with how often each name occurred.
    children: Vec<(String, usize)>,
    /// Position (in the definitions) of the last child, for the order check.
    last_position: usize,
}

impl Frame {
    fn count(&self, name: &str) -> usize {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c)
    }

    fn child_total(&self) -> usize {
        self.children.iter().map(|(_, c)| c).sum()
    }
}

fn refuse(location: &str, message: impl Into<String>) -> ContentError {
    let message = message.into();
    let message = if location.is_empty() {
        message
    } else {
        format!("{location}: {message}")
    };
    ContentError::single(IssueCode::Structure, location, message)
}

/// Checks the structure of a FHIR XML document; see the module documentation.
pub(crate) fn check(bytes: &[u8]) -> Result<(), ContentError> {
    let mut path = ElementPath::new(FhirReleases::R4);
    let mut stack: Vec<Frame> = Vec::new();
    // The narrative's XHTML is checked elsewhere (narrative.rs, renkei-fhir-schema).
    let mut div = NarrativeDiv::default();
    let mut previous_end = 0usize;
    for item in markup(bytes) {
        let item = item.map_err(|m| refuse("", format!("the XML is not well-formed: {m}")))?;
        let (start, end) = match item {
            Markup::Open { start, end, .. }
            | Markup::Close { start, end, .. }
            | Markup::Other { start, end } => (start, end),
        };
        if !div.is_inside() {
            if let Some(frame) = stack.last() {
                let text = &bytes[previous_end..start];
                let cdata = matches!(item, Markup::Other { .. })
                    && bytes[start..end].starts_with(b"<![CDATA[");
                if cdata || !text.trim_ascii().is_empty() {
                    return Err(refuse(
                        &frame.location,
                        format!(
                            "<{}> has text content; FHIR XML puts values in the value attribute",
                            frame.name
                        ),
                    ));
                }
            }
        }
        previous_end = end;
        if div.skip(&item) {
            if !div.is_inside() {
                // The div's end tag.
                path.pop();
            }
            continue;
        }
        match item {
            Markup::Other { .. } => {}
            Markup::Open {
                name, empty, start, ..
            } => {
                let name = local_name(name);
                let tag = &bytes[start + 1..end - if empty { 2 } else { 1 }];
                let frame = open(&mut path, stack.last_mut(), &name, tag)?;
                if frame.kind == Kind::Div {
                    if empty {
                        path.pop();
                    } else {
                        div.enter();
                    }
                    continue;
                }
                stack.push(frame);
                if empty {
                    close(&mut path, &mut stack)?;
                }
            }
            Markup::Close { .. } => close(&mut path, &mut stack)?,
        }
    }
    Ok(())
}

/// Checks an opening tag against its parent and returns the frame for it (already pushed onto
/// `path`).
fn open(
    path: &mut ElementPath,
    parent: Option<&mut Frame>,
    name: &str,
    tag: &[u8],
) -> Result<Frame, ContentError> {
    let root = parent.is_none();
    let (kind, location, schema_path) = match parent {
        None => {
            if !renkei_fhir_schema::is_resource_type(name) {
                return Err(refuse("", format!("<{name}> is not an R4 resource type")));
            }
            path.push(name);
            (Kind::Resource, name.to_string(), name.to_string())
        }
        Some(parent) if parent.kind == Kind::Holder => {
            if parent.child_total() > 0 {
                return Err(refuse(
                    &parent.location,
                    format!(
                        "<{}> holds more than one resource; each resource needs its own <{}> element",
                        parent.name, parent.name
                    ),
                ));
            }
            if !renkei_fhir_schema::is_resource_type(name) {
                return Err(refuse(
                    &parent.location,
                    format!("<{name}> is not an R4 resource type"),
                ));
            }
            parent.children.push((name.to_string(), 1));
            path.push(name);
            (Kind::Resource, parent.location.clone(), name.to_string())
        }
        Some(parent) => {
            let known = path.children().map(|set| set.contains(name));
            let location_of = |index: Option<usize>| match index {
                Some(i) => format!("{}.{name}[{i}]", parent.location),
                None => format!("{}.{name}", parent.location),
            };
            if name == "id" && parent.kind != Kind::Resource {
                return Err(refuse(
                    &location_of(None),
                    format!(
                        "<id> is not an element of {}: the id of an element is its id \
                         attribute in FHIR XML",
                        parent.location
                    ),
                ));
            }
            if known == Some(false)
                || (parent.kind == Kind::Primitive && name != "extension")
                || name == "resourceType"
            {
                return Err(refuse(
                    &location_of(None),
                    format!("<{name}> is not an element of {}", parent.location),
                ));
            }
            let position = path.position_of_child(name);
            let seen = parent.count(name);
            path.push(name);
            let repeating = path.current_element_is_sequence();
            let location = location_of(repeating.then_some(seen));
            if seen > 0 && !repeating {
                path.pop();
                return Err(refuse(
                    &location,
                    format!("<{name}> occurs more than once but does not repeat"),
                ));
            }
            if known.is_some() && position < parent.last_position {
                path.pop();
                return Err(refuse(
                    &location,
                    format!(
                        "<{name}> is out of order; FHIR XML requires the order of the definitions"
                    ),
                ));
            }
            parent.last_position = position;
            match parent.children.iter_mut().find(|(n, _)| n == name) {
                Some((_, count)) => *count += 1,
                None => parent.children.push((name.to_string(), 1)),
            }
            let kind = if name == "div" && parent.kind == Kind::Complex && parent.name == "text" {
                Kind::Div
            } else if path.current_element_is_resource() {
                Kind::Holder
            } else if path.current_element_is_extension() {
                Kind::Extension
            } else if path.current_element_is_primitive() {
                Kind::Primitive
            } else {
                Kind::Complex
            };
            let schema_path = format!("{}.{name}", parent.schema_path);
            (kind, location, schema_path)
        }
    };
    let mut frame = Frame {
        kind,
        location,
        name: name.to_string(),
        schema_path,
        has_value: false,
        children: Vec::new(),
        last_position: 0,
    };
    check_attributes(path, &mut frame, tag, root)?;
    Ok(frame)
}

fn close(path: &mut ElementPath, stack: &mut Vec<Frame>) -> Result<(), ContentError> {
    let Some(frame) = stack.pop() else {
        return Ok(());
    };
    path.pop();
    let empty = frame.child_total() == 0;
    match frame.kind {
        Kind::Holder if empty => Err(refuse(
            &frame.location,
            format!("<{}> holds no resource", frame.name),
        )),
        Kind::Primitive if empty && !frame.has_value => Err(refuse(
            &frame.location,
            format!(
                "<{}> has no value attribute and no extensions; every element needs a value or children (ele-1)",
                frame.name
            ),
        )),
        Kind::Complex if empty => Err(refuse(
            &frame.location,
            format!(
                "<{}> has no child elements; every element needs a value or children (ele-1)",
                frame.name
            ),
        )),
        Kind::Resource | Kind::Complex => missing_required(&frame),
        _ => Ok(()),
    }
}

/// Refuses an element without a required child, with the location and message JSON input
/// gets (`Observation.status`): fhirbolt would refuse it too, but as "missing field `status`",
/// with no location.
fn missing_required(frame: &Frame) -> Result<(), ContentError> {
    let issues: Vec<Issue> =
        renkei_fhir_schema::missing_required(&frame.schema_path, |name| frame.count(name) > 0)
            .into_iter()
            .map(|(label, message)| Issue {
                severity: Severity::Error,
                code: IssueCode::Required,
                expression: format!("{}.{label}", frame.location),
                message,
            })
            .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ContentError { issues })
    }
}

/// Checks the attributes of an opening tag (`tag` is the text between `<` and `>` or `/>`).
fn check_attributes(
    path: &ElementPath,
    frame: &mut Frame,
    tag: &[u8],
    root: bool,
) -> Result<(), ContentError> {
    let allowed: &[&str] = match frame.kind {
        Kind::Div => return Ok(()),
        Kind::Resource | Kind::Holder => &[],
        Kind::Primitive => &["value", "id"],
        Kind::Extension => &["url", "id"],
        Kind::Complex => &["id"],
    };
    let all = attributes(tag);
    let schema_instance = if root {
        schema_instance_prefixes(&all)
    } else {
        HashSet::new()
    };
    // A set: a tag may carry any number of namespace declarations.
    let mut seen = HashSet::new();
    for &(raw_name, value) in &all {
        let name = String::from_utf8_lossy(raw_name);
        // Not well-formed (XML 1.0 §3.1), and a reader keeping one of the two would drop the
        // other silently.
        if !seen.insert(raw_name) {
            return Err(refuse(
                &frame.location,
                format!(
                    "<{}> has the attribute '{name}' twice; XML allows it once",
                    frame.name
                ),
            ));
        }
        if name == "xmlns" || name.starts_with("xmlns:") {
            continue;
        }
        // `xsi:schemaLocation` and the like: about the document, not the resource.
        if has_prefix(raw_name, &schema_instance) {
            continue;
        }
        if !allowed.contains(&name.as_ref()) {
            return Err(refuse(
                &frame.location,
                format!("<{}> cannot have the attribute '{name}'", frame.name),
            ));
        }
        if value.is_empty() {
            return Err(refuse(
                &frame.location,
                format!("the '{name}' attribute of <{}> is empty", frame.name),
            ));
        }
        if name == "value" {
            frame.has_value = true;
            check_number(path, &frame.location, value)?;
        }
    }
    Ok(())
}

/// Checks the value of a boolean, integer or decimal primitive, which fhirbolt parses itself
/// (its errors are Rust internals without a location).
fn check_number(path: &ElementPath, location: &str, value: &[u8]) -> Result<(), ContentError> {
    let text = String::from_utf8_lossy(value);
    let shown: String = text.chars().take(40).collect();
    let problem = if path.current_element_is_boolean() {
        (!matches!(value, b"true" | b"false"))
            .then(|| "is not a boolean (true or false)".to_string())
    } else if path.current_element_is_integer() {
        integer(&text, i64::from(i32::MIN), "a 32-bit integer")
    } else if path.current_element_is_unsigned_integer() {
        integer(&text, 0, "an unsignedInt (0 to 2147483647)")
    } else if path.current_element_is_positive_integer() {
        integer(&text, 1, "a positiveInt (1 to 2147483647)")
    } else if path.current_element_is_decimal() {
        (!is_decimal(value)).then(|| "is not a decimal number".to_string())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(refuse(location, format!("{shown} {problem}"))),
        None => Ok(()),
    }
}

/// `None` if `text` is an integer in `min..=i32::MAX` written as FHIR allows (an optional
/// minus, no leading zeros), else the problem.
fn integer(text: &str, min: i64, what: &str) -> Option<String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let lexical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    match text.parse::<i64>() {
        Ok(n) if lexical && (min..=i64::from(i32::MAX)).contains(&n) => None,
        _ => Some(format!("is not {what}")),
    }
}

/// The FHIR decimal lexical form: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_decimal(value: &[u8]) -> bool {
    fn digits(s: &[u8]) -> usize {
        s.iter().take_while(|b| b.is_ascii_digit()).count()
    }
    let mut s = value.strip_prefix(b"-").unwrap_or(value);
    let int = digits(s);
    if int == 0 || (int > 1 && s[0] == b'0') {
        return false;
    }
    s = &s[int..];
    if let Some(rest) = s.strip_prefix(b".") {
        let frac = digits(rest);
        if frac == 0 {
            return false;
        }
        s = &rest[frac..];
    }
    if let Some(rest) = s.strip_prefix(b"e").or_else(|| s.strip_prefix(b"E")) {
        let rest = rest
            .strip_prefix(b"+")
            .or_else(|| rest.strip_prefix(b"-"))
            .unwrap_or(rest);
        let exp = digits(rest);
        if exp == 0 {
            return false;
        }
        s = &rest[exp..];
    }
    s.is_empty()
}

/// The local part of a possibly prefixed element name.
fn local_name(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    match name.split_once(':') {
        Some((_, local)) => local.to_string(),
        None => name.into_owned(),
    }
}

/// The `name="value"` pairs of a tag's text (after the element name), values raw.
pub(crate) fn attributes(tag: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    // Skip the element name.
    let mut i = tag
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(tag.len());
    loop {
        while i < tag.len() && tag[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= tag.len() {
            break;
        }
        let name_start = i;
        while i < tag.len() && tag[i] != b'=' && !tag[i].is_ascii_whitespace() {
            i += 1;
        }
        let name = &tag[name_start..i];
        while i < tag.len() && (tag[i].is_ascii_whitespace() || tag[i] == b'=') {
            i += 1;
        }
        let Some(&quote) = tag.get(i).filter(|q| matches!(q, b'"' | b'\'')) else {
            // Not well-formed; fhirbolt's XML reader reports it.
            out.push((name, &tag[i..i]));
            break;
        };
        let value_start = i + 1;
        let value_end = tag[value_start..]
            .iter()
            .position(|&b| b == quote)
            .map_or(tag.len(), |p| value_start + p);
        out.push((name, &tag[value_start..value_end]));
        i = value_end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FHIR: &str = "http://hl7.org/fhir";

    fn patient(body: &str) -> String {
        format!(r#"<Patient xmlns="{FHIR}">{body}</Patient>"#)
    }

    /// Asserts that `xml` is refused with an issue at `location` whose message names it and
    /// contains `reason`, and that no Rust internals leak into it.
    #[track_caller]
    fn refused(xml: &str, location: &str, reason: &str) {
        let err = crate::parse_xml(xml.as_bytes())
            .err()
            .unwrap_or_else(|| panic!("accepted: {xml}"));
        let issue = err
            .issues
            .iter()
            .find(|i| i.expression == location)
            .unwrap_or_else(|| panic!("no issue at {location} for {xml}: {err}"));
        assert!(
            (location.is_empty() || issue.message.starts_with(&format!("{location}: ")))
                && issue.message.contains(reason),
            "{xml}: {}",
            issue.message
        );
        assert!(!err.to_string().contains("Error"), "{err}");
        assert!(
            !err.to_string().contains(&format!("{location}: {location}")),
            "{err}"
        );
    }

    #[track_caller]
    fn accepted(xml: &str) -> serde_json::Value {
        crate::parse_xml(xml.as_bytes()).unwrap_or_else(|e| panic!("refused {xml}: {e}"))
    }

    #[test]
    fn element_ids_are_attributes() {
        refused(
            &patient(r#"<name><id value="n1"/><family value="Y"/></name>"#),
            "Patient.name[0].id",
            "id attribute",
        );
        refused(
            &patient(
                r#"<extension url="http://example.org/x"><id value="e"/><valueString value="v"/></extension>"#,
            ),
            "Patient.extension[0].id",
            "id attribute",
        );
        let value = accepted(&patient(
            r#"<id value="p1"/><name id="n1"><family value="Y"/></name>"#,
        ));
        assert_eq!(value["id"], "p1");
        assert_eq!(value["name"][0]["id"], "n1");
    }

    #[test]
    fn contained_holds_exactly_one_resource() {
        let two = patient(
            r#"<contained><Patient><id value="a"/></Patient><Organization><id value="b"/></Organization></contained><active value="true"/>"#,
        );
        refused(&two, "Patient.contained[0]", "more than one resource");
        let second = patient(
            r#"<contained><Patient><id value="a"/></Patient></contained><contained><Patient><id value="b"/></Patient><Patient><id value="c"/></Patient></contained>"#,
        );
        refused(&second, "Patient.contained[1]", "more than one resource");
        refused(
            &patient("<contained></contained>"),
            "Patient.contained[0]",
            "no resource",
        );
        refused(
            &patient("<contained><Nonsense/></contained>"),
            "Patient.contained[0]",
            "not an R4 resource type",
        );
        let bundle = format!(
            r#"<Bundle xmlns="{FHIR}"><type value="collection"/><entry><resource><Patient/><Patient/></resource></entry></Bundle>"#
        );
        refused(
            &bundle,
            "Bundle.entry[0].resource",
            "more than one resource",
        );
        // Positive control: one resource per <contained>, both kept.
        let value = accepted(&patient(
            r##"<contained><Patient><id value="a"/></Patient></contained><contained><Organization><id value="b"/><name value="O"/></Organization></contained><active value="true"/><managingOrganization><reference value="#b"/></managingOrganization><link><other><reference value="#a"/></other><type value="seealso"/></link>"##,
        ));
        assert_eq!(value["contained"][0]["id"], "a");
        assert_eq!(value["contained"][1]["id"], "b");
        assert_eq!(value.get("id"), None);
    }

    #[test]
    fn empty_elements_are_refused() {
        refused(&patient("<gender/>"), "Patient.gender", "ele-1");
        refused(
            &patient(r#"<active value="true"/><gender></gender>"#),
            "Patient.gender",
            "no value attribute",
        );
        refused(&patient(r#"<gender id="g"/>"#), "Patient.gender", "ele-1");
        refused(
            &patient("<name></name>"),
            "Patient.name[0]",
            "no child elements",
        );
        refused(&patient(r#"<name id="n"/>"#), "Patient.name[0]", "ele-1");
        refused(
            &patient(r#"<name><family value="a"/><given/></name>"#),
            "Patient.name[0].given[0]",
            "ele-1",
        );
        refused(
            &patient(r#"<gender value=""/>"#),
            "Patient.gender",
            "is empty",
        );
        // Positive controls: id + extension only, a value, a narrative div.
        let value = accepted(&patient(
            r#"<text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">x</div></text><birthDate id="b"><extension url="http://hl7.org/fhir/StructureDefinition/data-absent-reason"><valueCode value="unknown"/></extension></birthDate>"#,
        ));
        assert_eq!(value["_birthDate"]["id"], "b");
        assert_eq!(value["_birthDate"]["extension"][0]["valueCode"], "unknown");
        assert_eq!(
            accepted(&patient(r#"<gender value="male"/>"#))["gender"],
            "male"
        );
    }

    #[test]
    fn value_errors_name_the_element() {
        let observation = |value: &str| {
            format!(
                r#"<Observation xmlns="{FHIR}"><status value="final"/><code><text value="x"/></code>{value}</Observation>"#
            )
        };
        refused(
            &observation(r#"<valueInteger value="99999999999"/>"#),
            "Observation.valueInteger",
            "99999999999 is not a 32-bit integer",
        );
        refused(
            &observation(r#"<valueInteger value="1.5"/>"#),
            "Observation.valueInteger",
            "not a 32-bit integer",
        );
        refused(
            &observation(r#"<valueBoolean value="yes"/>"#),
            "Observation.valueBoolean",
            "not a boolean",
        );
        refused(
            &observation(r#"<valueQuantity><value value="1,5"/></valueQuantity>"#),
            "Observation.valueQuantity.value",
            "not a decimal",
        );
        refused(
            &patient(r#"<multipleBirthInteger value="-2147483649"/>"#),
            "Patient.multipleBirthInteger",
            "not a 32-bit integer",
        );
        refused(
            &observation(
                r#"<valueSampledData><origin><value value="0"/></origin><dimensions value="0"/><data value="1"/></valueSampledData>"#,
            ),
            "Observation.valueSampledData.dimensions",
            "positiveInt",
        );
        let value = accepted(&observation(r#"<valueInteger value="-2147483648"/>"#));
        assert_eq!(value["valueInteger"], -2147483648i64);
        let value = accepted(&observation(
            r#"<valueQuantity><value value="1.50"/><unit value="mg"/></valueQuantity>"#,
        ));
        assert_eq!(value["valueQuantity"]["unit"], "mg");
    }

    #[test]
    fn content_fhirbolt_would_drop_or_reorder_is_refused() {
        for (body, location, reason) in [
            (
                r#"<bogus value="x"/>"#,
                "Patient.bogus",
                "not an element of Patient",
            ),
            (
                r#"<name><family value="x"/><nickname value="y"/></name>"#,
                "Patient.name[0].nickname",
                "not an element",
            ),
            (
                r#"<active value="true"><value value="false"/></active>"#,
                "Patient.active.value",
                "not an element",
            ),
            (
                r#"<gender value="male"/><active value="true"/>"#,
                "Patient.active",
                "out of order",
            ),
            (
                r#"<name><given value="x"/><family value="y"/></name>"#,
                "Patient.name[0].family",
                "out of order",
            ),
            (
                r#"<active value="true"/><active value="false"/>"#,
                "Patient.active",
                "more than once",
            ),
            (
                r#"<active value="true">true</active>"#,
                "Patient.active",
                "text content",
            ),
            (r#"<active value="true"/>stray"#, "Patient", "text content"),
            (
                r#"<name><family value="x"/><![CDATA[y]]></name>"#,
                "Patient.name[0]",
                "text content",
            ),
            (
                r#"<active value="true" foo="bar"/>"#,
                "Patient.active",
                "'foo'",
            ),
            (
                r#"<name value="x"><family value="y"/></name>"#,
                "Patient.name[0]",
                "'value'",
            ),
            (
                r#"<extension url="http://e.org" value="x"><valueString value="y"/></extension>"#,
                "Patient.extension[0]",
                "'value'",
            ),
        ] {
            refused(&patient(body), location, reason);
        }
        refused(
            &format!(r#"<Patient xmlns="{FHIR}" id="p1"><active value="true"/></Patient>"#),
            "Patient",
            "'id'",
        );
        refused(
            &format!(r#"<Nonsense xmlns="{FHIR}"/>"#),
            "",
            "not an R4 resource type",
        );
    }

    #[test]
    fn valid_xml_is_accepted() {
        let value = accepted(&format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment -->
<Patient xmlns="{FHIR}">
  <id value="p1"/>
  <meta><versionId value="1"/></meta>
  <extension url="http://e.org/a"><extension url="b"><valueInteger value="2"/></extension></extension>
  <identifier><system value="urn:x"/><value value="1"/></identifier>
  <identifier><value value="2"/></identifier>
  <!-- between -->
  <active value='true'/>
  <name id="n1"><family value="Kato &amp; Sato"/><given value="A"/><given value="B"/></name>
  <deceasedBoolean value="false"/>
  <multipleBirthInteger value="2"/>
</Patient>"#
        ));
        assert_eq!(value["identifier"][1]["value"], "2");
        assert_eq!(value["name"][0]["family"], "Kato & Sato");
        assert_eq!(value["name"][0]["given"][1], "B");
        assert_eq!(value["extension"][0]["extension"][0]["valueInteger"], 2);
        let bundle = accepted(&format!(
            r#"<Bundle xmlns="{FHIR}"><type value="collection"/><entry><resource><Patient><active value="true"/></Patient></resource></entry><entry><resource><Organization><name value="O"/></Organization></resource></entry></Bundle>"#
        ));
        assert_eq!(bundle["entry"][1]["resource"]["name"], "O");
    }

    #[test]
    fn attributes_are_split() {
        let attrs = attributes(br#"active value="a b" id='x"y'  xmlns="z""#);
        assert_eq!(
            attrs,
            vec![
                (&b"value"[..], &b"a b"[..]),
                (&b"id"[..], &b"x\"y"[..]),
                (&b"xmlns"[..], &b"z"[..])
            ]
        );
        assert!(attributes(b"active").is_empty());
    }

    #[test]
    fn numbers() {
        for ok in ["0", "-5", "1.50", "1e10", "-0.1E-3"] {
            assert!(is_decimal(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e", "1.5x", "NaN", "+1"] {
            assert!(!is_decimal(bad.as_bytes()), "{bad}");
        }
        assert_eq!(integer("2147483647", -1, "x"), None);
        assert!(integer("2147483648", -1, "x").is_some());
        assert!(integer("0", 1, "x").is_some());
        assert!(integer("007", 0, "x").is_some());
        assert!(integer("+7", 0, "x").is_some());
    }
}

//! Cheap checks that run before any typed parser sees the content: FHIR JSON forbids `null`,
//! empty arrays, empty objects and empty strings, and fhirbolt panics on some of them.

use crate::{ContentError, Issue, IssueCode, Severity};
use serde_json::Value;

pub(crate) fn check_json(value: &Value, max_depth: usize) -> Vec<Issue> {
    let mut issues = Vec::new();
    match value {
        Value::Object(map) => {
            let root = map
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("Resource")
                .to_string();
            walk(value, &root, 0, max_depth, &mut issues);
        }
        _ => issues.push(issue(
            "",
            "a FHIR resource must be a JSON object with a resourceType",
        )),
    }
    issues
}

fn issue(path: &str, message: &str) -> Issue {
    Issue {
        severity: Severity::Error,
        code: IssueCode::Structure,
        expression: path.to_string(),
        message: message.to_string(),
    }
}

fn walk(value: &Value, path: &str, depth: usize, max_depth: usize, issues: &mut Vec<Issue>) {
    if depth > max_depth {
        issues.push(issue(path, "the content is nested too deeply"));
        return;
    }
    match value {
        Value::Null => issues.push(issue(path, "null is not allowed in FHIR JSON")),
        Value::String(s) if s.is_empty() => {
            issues.push(issue(path, "empty strings are not allowed in FHIR JSON"))
        }
        Value::Array(items) => {
            if items.is_empty() {
                issues.push(issue(path, "empty arrays are not allowed in FHIR JSON"));
            }
            for (i, item) in items.iter().enumerate() {
                // `null` inside an array is legal only as a placeholder in primitive-extension
                // arrays (`_given: [null, {...}]`), which the schema check understands.
                if item.is_null() {
                    continue;
                }
                walk(item, &format!("{path}[{i}]"), depth + 1, max_depth, issues);
            }
        }
        Value::Object(map) => {
            if map.is_empty() {
                issues.push(issue(path, "empty objects are not allowed in FHIR JSON"));
            }
            for (key, child) in map {
                walk(
                    child,
                    &format!("{path}.{key}"),
                    depth + 1,
                    max_depth,
                    issues,
                );
            }
        }
        _ => {}
    }
}

/// Where a scan of markup items stands relative to a narrative's XHTML `div`: the readers of
/// FHIR XML treat the div as one opaque element, so each must skip what lies inside it.
/// [`NarrativeDiv::enter`] after a non-empty div's start tag; [`NarrativeDiv::skip`] then
/// takes every item up to and including the div's end tag.
#[derive(Debug, Default)]
pub(crate) struct NarrativeDiv {
    /// Elements open inside the div, the div itself included; 0 outside.
    open: usize,
}

impl NarrativeDiv {
    pub(crate) fn enter(&mut self) {
        self.open = 1;
    }

    pub(crate) fn is_inside(&self) -> bool {
        self.open > 0
    }

    /// Whether `item` is inside the div (its end tag included), and so taken here; `false`
    /// outside, where the caller reads the item itself.
    pub(crate) fn skip(&mut self, item: &Markup<'_>) -> bool {
        if self.open == 0 {
            return false;
        }
        match item {
            Markup::Open { empty: false, .. } => self.open += 1,
            Markup::Close { .. } => self.open -= 1,
            Markup::Open { .. } | Markup::Other { .. } => {}
        }
        true
    }
}

/// One markup item of an XML document, as byte offsets (`start` at the `<`, `end` just past
/// the `>`). Text between items is not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Markup<'a> {
    /// `<name …>` or, when `empty`, `<name …/>`.
    Open {
        name: &'a [u8],
        empty: bool,
        start: usize,
        end: usize,
    },
    /// `</name>`.
    Close {
        name: &'a [u8],
        start: usize,
        end: usize,
    },
    /// A comment, CDATA section, processing instruction or declaration.
    Other { start: usize, end: usize },
}

/// Splits XML into markup items without building a tree. Quoted attribute values, comments,
/// CDATA sections, processing instructions and declarations are skipped as a whole, so a `<`
/// or `>` inside them does not count. An item that never ends yields an error and ends the
/// iteration.
pub(crate) fn markup(bytes: &[u8]) -> impl Iterator<Item = Result<Markup<'_>, &'static str>> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let start = i + bytes.get(i..)?.iter().position(|&b| b == b'<')?;
        let rest = &bytes[start + 1..];
        let item = if rest.starts_with(b"!--") {
            skip_past(bytes, start + 4, b"-->")
                .map(|end| Markup::Other { start, end })
                .ok_or("a comment is never closed")
        } else if rest.starts_with(b"![CDATA[") {
            skip_past(bytes, start + 9, b"]]>")
                .map(|end| Markup::Other { start, end })
                .ok_or("a CDATA section is never closed")
        } else if rest.starts_with(b"?") {
            skip_past(bytes, start + 2, b"?>")
                .map(|end| Markup::Other { start, end })
                .ok_or("a processing instruction is never closed")
        } else if rest.starts_with(b"!") {
            tag_end(bytes, start + 2, true)
                .map(|end| Markup::Other { start, end })
                .ok_or("a declaration is never closed")
        } else {
            match tag_end(bytes, start + 1, false) {
                None => Err("a tag is never closed (is the body truncated?)"),
                Some(end) => {
                    let inner = &bytes[start + 1..end - 1];
                    Ok(match inner.strip_prefix(b"/") {
                        Some(closing) => Markup::Close {
                            name: tag_name(closing),
                            start,
                            end,
                        },
                        None => Markup::Open {
                            name: tag_name(inner),
                            empty: inner.ends_with(b"/"),
                            start,
                            end,
                        },
                    })
                }
            }
        };
        i = match item {
            Ok(
                Markup::Open { end, .. } | Markup::Close { end, .. } | Markup::Other { end, .. },
            ) => end,
            Err(_) => bytes.len(),
        };
        Some(item)
    })
}

/// Rejects XML nested deeper than `max_depth` elements, and XML that is not balanced (an
/// element never closed, as in a truncated body; a close tag without its open tag or naming
/// another element; a second root element), without building a tree.
pub(crate) fn check_xml_depth(bytes: &[u8], max_depth: usize) -> Result<(), ContentError> {
    check_xml_balance(bytes, max_depth)
        .map_err(|message| ContentError::single(IssueCode::Structure, "", message))
}

fn check_xml_balance(bytes: &[u8], max_depth: usize) -> Result<(), String> {
    let malformed = |message: String| Err(format!("the XML is not well-formed: {message}"));
    // Names of the open elements, innermost last (at most `max_depth`).
    let mut open: Vec<&[u8]> = Vec::new();
    let mut roots = 0usize;
    for item in markup(bytes) {
        match item {
            Err(message) => return malformed(message.into()),
            Ok(Markup::Other { .. }) => {}
            Ok(Markup::Close { name, .. }) => match open.pop() {
                Some(expected) if expected == name => {}
                Some(expected) => {
                    return malformed(format!(
                        "</{}> closes <{}>",
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(expected)
                    ))
                }
                None => {
                    return malformed(format!(
                        "</{}> has no open element",
                        String::from_utf8_lossy(name)
                    ))
                }
            },
            Ok(Markup::Open { name, empty, .. }) => {
                if open.is_empty() {
                    roots += 1;
                    if roots > 1 {
                        return malformed(format!(
                            "a second root element <{}>",
                            String::from_utf8_lossy(name)
                        ));
                    }
                }
                if !empty {
                    open.push(name);
                    if open.len() > max_depth {
                        return Err("the XML is nested too deeply".into());
                    }
                }
            }
        }
    }
    match open.last() {
        Some(name) => malformed(format!(
            "the element <{}> is never closed (is the body truncated?)",
            String::from_utf8_lossy(name)
        )),
        None => Ok(()),
    }
}

/// Whether `fragment` is one balanced element made of elements and text only (no comments,
/// CDATA, processing instructions, declarations, no `<` inside attribute values), so it can
/// be spliced into an XML document as is.
pub(crate) fn is_plain_element(fragment: &[u8], max_depth: usize) -> bool {
    let trimmed = fragment.trim_ascii();
    trimmed.starts_with(b"<")
        && trimmed.ends_with(b">")
        && check_xml_balance(trimmed, max_depth).is_ok()
        && markup(trimmed).all(|item| match item {
            Ok(Markup::Open { start, end, .. }) => !trimmed[start + 1..end].contains(&b'<'),
            Ok(Markup::Close { .. }) => true,
            Ok(Markup::Other { .. }) | Err(_) => false,
        })
}

/// The position just past the first `terminator` at or after `from`.
fn skip_past(bytes: &[u8], from: usize, terminator: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(terminator.len())
        .position(|w| w == terminator)
        .map(|p| from + p + terminator.len())
}

/// The position just past the `>` ending a tag whose content starts at `from`, skipping
/// quoted values (and, in declarations, bracketed internal subsets).
pub(crate) fn tag_end(bytes: &[u8], from: usize, declaration: bool) -> Option<usize> {
    let mut quote: Option<u8> = None;
    let mut brackets = 0usize;
    let mut i = from;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'[' if declaration => brackets += 1,
                b']' if declaration => brackets = brackets.saturating_sub(1),
                b'>' if brackets == 0 => return Some(i + 1),
                _ => {}
            },
        }
        i += 1;
    }
    None
}

/// The element name at the start of a tag's content (up to whitespace, `/` or the end).
fn tag_name(inner: &[u8]) -> &[u8] {
    let end = inner
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'/')
        .unwrap_or(inner.len());
    &inner[..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const OK: &[&str] = &[
        r#"<?xml version="1.0" encoding="UTF-8"?><Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>"#,
        "<Patient xmlns=\"http://hl7.org/fhir\">\n  <!-- a <comment> with </tags> -->\n  <active value='true'/>\n</Patient>\n",
        r#"<Patient xmlns="http://hl7.org/fhir"><text><div xmlns="http://www.w3.org/1999/xhtml">a &lt;b&gt; c <br/> <![CDATA[</div>]]></div></text></Patient>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="a > b </name> c"/></name></Patient>"#,
        r#"<!DOCTYPE Patient [<!ENTITY x "y>">]><Patient xmlns="http://hl7.org/fhir"><?pi <a> ?></Patient>"#,
        r#"<f:Patient xmlns:f="http://hl7.org/fhir"><f:active value="true" /></f:Patient>"#,
    ];

    const BAD: &[&str] = &[
        r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Pat"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><active value="tr"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="x"/></Patient></name>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"></Patient></Patient>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"></Patient><Patient xmlns="http://hl7.org/fhir"/>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><!-- never closed </Patient>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><text><div><![CDATA[ </div></text></Patient>"#,
    ];

    #[test]
    fn accepts_balanced_xml() {
        for xml in OK {
            assert!(check_xml_depth(xml.as_bytes(), 64).is_ok(), "{xml}");
        }
    }

    #[test]
    fn rejects_unbalanced_xml() {
        for xml in BAD {
            let err = check_xml_depth(xml.as_bytes(), 64).unwrap_err();
            assert!(
                err.issues[0].message.contains("not well-formed"),
                "{xml}: {err}"
            );
        }
    }

    #[test]
    fn plain_elements() {
        assert!(is_plain_element(
            b"<div xmlns=\"x\"><p>a <b>b</b></p><br/></div>",
            64
        ));
        assert!(!is_plain_element(b"<div><!-- c --></div>", 64));
        assert!(!is_plain_element(b"<div><![CDATA[x]]></div>", 64));
        assert!(!is_plain_element(b"<div><p></div>", 64));
        assert!(!is_plain_element(b"<div title=\"<\"></div>", 64));
        assert!(!is_plain_element(b"<div></div><div></div>", 64));
        assert!(!is_plain_element(b"text", 64));
    }

    #[test]
    fn rejects_deep_xml() {
        let xml = format!("<a>{}", "<b>".repeat(70));
        let err = check_xml_depth(xml.as_bytes(), 64).unwrap_err();
        assert!(err.issues[0].message.contains("too deeply"));
    }
}

/// The first property name that appears twice in one object of `bytes`, which must be valid
/// JSON (parsed already). FHIR JSON forbids repeated properties; a parser into a map keeps
/// only the last one, silently dropping what the client sent first.
pub(crate) fn duplicate_property(bytes: &[u8]) -> Option<String> {
    use std::borrow::Cow;
    use std::collections::HashSet;
    /// Past this many names, an object's names are also kept in a set: a scan of the list
    /// per name would make one object of many properties cost their count squared.
    const LISTED: usize = 16;
    // The names of every open object, in one list: each open container remembers where its
    // names start (`None` for an array), and closing it drops them. Objects have few
    // properties, so a scan of their slice beats hashing, and nothing is allocated per object.
    /// An open object: where its names start in `names`, and their set once it has many.
    type OpenObject<'a> = (usize, Option<HashSet<Cow<'a, [u8]>>>);
    let mut names: Vec<Cow<'_, [u8]>> = Vec::new();
    let mut open: Vec<Option<OpenObject<'_>>> = Vec::new();
    let mut expecting_name = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                open.push(Some((names.len(), None)));
                expecting_name = true;
            }
            b'[' => {
                open.push(None);
                expecting_name = false;
            }
            b'}' | b']' => {
                if let Some(Some((start, _))) = open.pop() {
                    names.truncate(start);
                }
                expecting_name = false;
            }
            b',' => expecting_name = matches!(open.last(), Some(Some(_))),
            b'"' => {
                let start = i + 1;
                i = start;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let text = bytes.get(start..i)?;
                if expecting_name {
                    // Names compare as the text they stand for: `gend\u0065r` is `gender`.
                    let name = match text.contains(&b'\\') {
                        false => Cow::Borrowed(text),
                        true => Cow::Owned(
                            serde_json::from_slice::<String>(bytes.get(start - 1..=i)?)
                                .ok()?
                                .into_bytes(),
                        ),
                    };
                    if let Some(Some((first, set))) = open.last_mut() {
                        let listed = &names[*first..];
                        let repeated = match set {
                            Some(set) => !set.insert(name.clone()),
                            None if listed.len() < LISTED => listed.contains(&name),
                            None => {
                                let mut all: HashSet<Cow<'_, [u8]>> =
                                    listed.iter().cloned().collect();
                                let repeated = !all.insert(name.clone());
                                *set = Some(all);
                                repeated
                            }
                        };
                        if repeated {
                            return Some(String::from_utf8_lossy(&name).into_owned());
                        }
                        names.push(name);
                    }
                    expecting_name = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod duplicate_tests {
    use super::duplicate_property;

    #[test]
    fn finds_a_repeated_property_at_any_depth_only_within_one_object() {
        assert_eq!(duplicate_property(br#"{"a":1,"a":2}"#), Some("a".into()));
        assert_eq!(
            duplicate_property(br#"{"x":[{"b":"\"b\"","b":3}]}"#),
            Some("b".into())
        );
        assert_eq!(
            duplicate_property(br#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#),
            None
        );
        assert_eq!(duplicate_property(br#"{"s":"a,\"a\":"}"#), None);
        assert_eq!(
            duplicate_property(br#"{"gender":"male","gend\u0065r":"female"}"#),
            Some("gender".into())
        );
    }

    #[test]
    fn an_object_of_many_properties_is_checked_in_linear_time() {
        let mut body = String::from("{");
        for n in 0..200_000 {
            body.push_str(&format!("\"p{n}\":{n},"));
        }
        body.push_str("\"p7\":0}");
        // Quadratic, this took minutes; a set makes it a fraction of a second.
        assert_eq!(duplicate_property(body.as_bytes()), Some("p7".into()));
    }
}

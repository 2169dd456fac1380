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

/// Rejects XML nested deeper than `max_depth` elements without building a tree.
pub(crate) fn check_xml_depth(bytes: &[u8], max_depth: usize) -> Result<(), ContentError> {
    let mut depth: usize = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let rest = &bytes[i + 1..];
            if rest.starts_with(b"!--")
                || rest.starts_with(b"![CDATA[")
                || rest.starts_with(b"?")
                || rest.starts_with(b"!")
            {
                // Comments, CDATA, declarations: not elements.
            } else if rest.starts_with(b"/") {
                depth = depth.saturating_sub(1);
            } else {
                let end = rest.iter().position(|&b| b == b'>').unwrap_or(rest.len());
                let self_closing = end > 0 && rest.get(end - 1) == Some(&b'/');
                if !self_closing {
                    depth += 1;
                    if depth > max_depth {
                        return Err(ContentError::single(
                            IssueCode::Structure,
                            "",
                            "the XML is nested too deeply",
                        ));
                    }
                }
            }
        }
        i += 1;
    }
    Ok(())
}

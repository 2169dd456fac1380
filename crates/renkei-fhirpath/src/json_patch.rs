//! JSON Patch (RFC 6902) with JSON Pointer (RFC 6901) paths.

use serde_json::Value;

use crate::error::PatchError;
use crate::eval::json_eq;

/// Applies a JSON Patch document (an array of operations) to `doc`.
///
/// The patch is atomic: operations run on a copy, and `doc` is only replaced
/// when all of them succeed.
pub fn apply_json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::Invalid("a JSON Patch must be a JSON array".into()))?;
    // A malformed document (an unknown or missing `op`, a member missing or of the wrong
    // kind, a path that is no JSON Pointer) is refused whole before anything is applied: it
    // is a bad request, not an operation that could not be applied to this resource.
    for (i, op) in ops.iter().enumerate() {
        check_well_formed(op)
            .map_err(|message| PatchError::Invalid(format!("operation {}: {message}", i + 1)))?;
    }
    let mut work = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        let index = i + 1;
        let name = op.get("op").and_then(Value::as_str).unwrap_or("?");
        let fail = |message: String| PatchError::JsonPatch {
            index,
            op: name.to_string(),
            message,
        };
        apply_one(&mut work, op, name).map_err(fail)?;
    }
    *doc = work;
    Ok(())
}

/// RFC 6902 §4: the members each operation requires, of the kinds it requires.
fn check_well_formed(op: &Value) -> Result<(), String> {
    if !op.is_object() {
        return Err("operation must be a JSON object".into());
    }
    let name = member(op, "op")?
        .as_str()
        .ok_or_else(|| "'op' must be a string".to_string())?;
    pointer_member(op, "path")?;
    match name {
        "add" | "replace" | "test" => member(op, "value").map(drop),
        "move" | "copy" => pointer_member(op, "from").map(drop),
        "remove" => Ok(()),
        other => Err(format!("unknown operation '{other}'")),
    }
}

fn member<'v>(op: &'v Value, key: &str) -> Result<&'v Value, String> {
    op.get(key)
        .ok_or_else(|| format!("missing required member '{key}'"))
}

fn pointer_member(op: &Value, key: &str) -> Result<Vec<String>, String> {
    let text = member(op, key)?
        .as_str()
        .ok_or_else(|| format!("'{key}' must be a string"))?;
    parse_pointer(text)
}

fn apply_one(doc: &mut Value, op: &Value, name: &str) -> Result<(), String> {
    if !op.is_object() {
        return Err("operation must be a JSON object".into());
    }
    let path = pointer_member(op, "path")?;
    match name {
        "add" => add(doc, &path, member(op, "value")?.clone()),
        "remove" => remove(doc, &path).map(drop),
        "replace" => {
            let value = member(op, "value")?.clone();
            let target = get_mut(doc, &path)?;
            *target = value;
            Ok(())
        }
        "move" => {
            let from = pointer_member(op, "from")?;
            if from == path {
                return get_mut(doc, &from).map(drop);
            }
            if path.len() > from.len() && path[..from.len()] == from[..] {
                return Err("cannot move a value into one of its own children".into());
            }
            let value = remove(doc, &from)?;
            add(doc, &path, value)
        }
        "copy" => {
            let from = pointer_member(op, "from")?;
            let value = get_mut(doc, &from)?.clone();
            add(doc, &path, value)
        }
        "test" => {
            let expected = member(op, "value")?;
            let actual = get_mut(doc, &path)?;
            if json_eq(actual, expected) && same_kind(actual, expected) {
                Ok(())
            } else {
                Err(format!(
                    "test failed: value at '{}' is {actual}, expected {expected}",
                    display_pointer(&path)
                ))
            }
        }
        other => Err(format!("unknown operation '{other}'")),
    }
}

/// RFC 6902 §4.6: numbers are equal by value, but a number never equals a
/// string; `json_eq` already compares numbers by value, so check the kinds.
fn same_kind(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Parses a JSON Pointer into unescaped reference tokens.
pub(crate) fn parse_pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(vec![]);
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!("JSON pointer '{text}' must start with '/'"));
    };
    rest.split('/')
        .map(|tok| {
            let mut out = String::with_capacity(tok.len());
            let mut chars = tok.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(format!("invalid escape '~' in JSON pointer '{text}'")),
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

fn display_pointer(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Array index token: digits without leading zeros (RFC 6901 §4).
fn array_index(tok: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && tok == "-" {
        return Ok(len);
    }
    let valid = !tok.is_empty()
        && tok.chars().all(|c| c.is_ascii_digit())
        && (tok == "0" || !tok.starts_with('0'));
    let idx: usize = if valid {
        tok.parse()
            .map_err(|_| format!("array index '{tok}' is too large"))?
    } else {
        return Err(format!("'{tok}' is not a valid array index"));
    };
    let limit = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if idx > limit || (!allow_end && len == 0) {
        return Err(format!("array index {idx} is out of bounds (length {len})"));
    }
    Ok(idx)
}

fn get_mut<'v>(doc: &'v mut Value, path: &[String]) -> Result<&'v mut Value, String> {
    let mut cur = doc;
    for (depth, tok) in path.iter().enumerate() {
        let here = || display_pointer(&path[..=depth]);
        cur = match cur {
            Value::Object(map) => map
                .get_mut(tok)
                .ok_or_else(|| format!("path '{}' does not exist", here()))?,
            Value::Array(items) => {
                let i = array_index(tok, items.len(), false)
                    .map_err(|e| format!("path '{}': {e}", here()))?;
                items
                    .get_mut(i)
                    .ok_or_else(|| format!("path '{}' does not exist", here()))?
            }
            _ => return Err(format!("path '{}' does not exist", here())),
        };
    }
    Ok(cur)
}

fn split_last(path: &[String]) -> Option<(&[String], &String)> {
    let (last, parent) = path.split_last()?;
    Some((parent, last))
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((parent_path, last)) = split_last(path) else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, parent_path)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            let i = array_index(last, items.len(), true)?;
            items.insert(i, value);
            Ok(())
        }
        _ => Err(format!(
            "cannot add to '{}': parent is not an object or array",
            display_pointer(path)
        )),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let Some((parent_path, last)) = split_last(path) else {
        return Err("cannot remove the whole document".into());
    };
    match get_mut(doc, parent_path)? {
        // `shift_remove` keeps the order of the remaining members.
        Value::Object(map) => map
            .shift_remove(last.as_str())
            .ok_or_else(|| format!("path '{}' does not exist", display_pointer(path))),
        Value::Array(items) => {
            let i = array_index(last, items.len(), false)?;
            Ok(items.remove(i))
        }
        _ => Err(format!("path '{}' does not exist", display_pointer(path))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointer_escapes() {
        assert_eq!(parse_pointer("/a~1b/~01").unwrap(), vec!["a/b", "~1"]);
        assert!(parse_pointer("a").is_err());
        assert!(parse_pointer("/~2").is_err());
        assert_eq!(parse_pointer("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn failed_patch_leaves_document_unchanged() {
        let mut doc = json!({"a": 1});
        let patch = json!([
            {"op": "add", "path": "/b", "value": 2},
            {"op": "remove", "path": "/missing"}
        ]);
        let e = apply_json_patch(&mut doc, &patch).unwrap_err();
        assert_eq!(doc, json!({"a": 1}));
        assert!(e.to_string().contains("operation 2 (remove)"), "{e}");
    }

    #[test]
    fn leading_zero_index_rejected() {
        let mut doc = json!({"a": [1, 2]});
        let patch = json!([{"op": "remove", "path": "/a/01"}]);
        assert!(apply_json_patch(&mut doc, &patch).is_err());
    }

    #[test]
    fn move_into_child_rejected() {
        let mut doc = json!({"a": {"b": 1}});
        let patch = json!([{"op": "move", "from": "/a", "path": "/a/c"}]);
        assert!(apply_json_patch(&mut doc, &patch).is_err());
    }
}

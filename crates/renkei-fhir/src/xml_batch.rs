//! A `batch` Bundle in XML whose document does not read as FHIR because of some entries'
//! resources: each entry succeeds or fails on its own (http.html#brules), as in JSON.
//!
//! fhirbolt reads a document whole, so one entry's unknown element refuses every entry. Here
//! each entry's resource is read as a document of its own; the ones that do not read are cut
//! out of the Bundle, which is then read without them, and their entries carry why
//! ([`crate::INVALID_ENTRY`]) as in JSON.

use crate::prepass::{markup, Markup};
use crate::xml_check::attributes;
use crate::{xml_value, ContentError};
use serde_json::Value;

/// Where one entry's resource is in the document: the `<resource>` element holding it, and
/// the resource element itself.
struct EntryResource {
    holder: (usize, usize),
    resource: (usize, usize),
}

/// A batch Bundle without its entries' resources that do not read, and for each of those
/// entries (by index) why; `None` when `bytes` (already unprefixed,
/// [`crate::xml_namespace::unprefixed`]) is no batch Bundle, every entry resource reads, or
/// the Bundle does not read even without them: the caller then refuses the document whole.
pub(crate) fn without_unreadable_entries(
    bytes: &[u8],
) -> Option<(Value, Vec<(usize, ContentError)>)> {
    let entries = batch_entry_resources(bytes)?;
    let mut skeleton = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    let mut unreadable = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(entry) = entry else { continue };
        let Err(error) = xml_value(&standalone(bytes, entry.resource)) else {
            continue;
        };
        skeleton.extend_from_slice(&bytes[copied..entry.holder.0]);
        copied = entry.holder.1;
        unreadable.push((index, error));
    }
    if unreadable.is_empty() {
        return None;
    }
    skeleton.extend_from_slice(&bytes[copied..]);
    let bundle = xml_value(&skeleton).ok()?;
    let read_entries = bundle.get("entry").and_then(Value::as_array)?.len();
    (read_entries == entries.len()).then_some((bundle, unreadable))
}

/// The resource of each entry of a `batch` Bundle (`None` for an entry without one), in
/// document order; `None` for any other document.
fn batch_entry_resources(bytes: &[u8]) -> Option<Vec<Option<EntryResource>>> {
    // Open elements, outermost first: (local name, start of its tag).
    let mut open: Vec<(&[u8], usize)> = Vec::new();
    let mut entries: Vec<Option<EntryResource>> = Vec::new();
    let mut resource: Option<(usize, usize)> = None;
    let mut is_batch = false;
    for item in markup(bytes) {
        match item.ok()? {
            Markup::Other { .. } => {}
            Markup::Open {
                name,
                empty,
                start,
                end,
            } => {
                let in_holder = open.len() == 3
                    && open.get(1).is_some_and(|(n, _)| *n == b"entry")
                    && open.get(2).is_some_and(|(n, _)| *n == b"resource");
                match (open.len(), name) {
                    (0, name) if name != b"Bundle" => return None,
                    (1, b"type") => {
                        let tag = &bytes[start + 1..end - if empty { 2 } else { 1 }];
                        is_batch = attributes(tag)
                            .iter()
                            .any(|(name, value)| *name == b"value" && *value == b"batch");
                    }
                    (1, b"entry") => entries.push(None),
                    (3, _) if in_holder && empty => resource = Some((start, end)),
                    (3, _) if in_holder => resource = Some((start, 0)),
                    _ => {}
                }
                if !empty {
                    open.push((name, start));
                }
            }
            Markup::Close { end, .. } => {
                let (name, start) = open.pop()?;
                match (open.len(), name) {
                    (3, _) if open.get(2).is_some_and(|(n, _)| *n == b"resource") => {
                        if let Some(range) = resource.as_mut() {
                            range.1 = end;
                        }
                    }
                    (2, b"resource") if open.get(1).is_some_and(|(n, _)| *n == b"entry") => {
                        if let (Some(last), Some(range)) = (entries.last_mut(), resource.take()) {
                            *last = Some(EntryResource {
                                holder: (start, end),
                                resource: range,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    is_batch.then_some(entries)
}

/// An entry's resource as a document of its own: in FHIR's namespace, which the Bundle's
/// root declared for it.
fn standalone(bytes: &[u8], (start, end): (usize, usize)) -> Vec<u8> {
    let element = &bytes[start..end];
    let name_end = element
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/')
        .unwrap_or(element.len());
    let tag_end = element
        .iter()
        .position(|b| *b == b'>')
        .unwrap_or(element.len());
    let declares = element[..tag_end]
        .windows(6)
        .any(|window| window == b"xmlns=");
    if declares {
        return element.to_vec();
    }
    let mut out = Vec::with_capacity(element.len() + 32);
    out.extend_from_slice(&element[..name_end]);
    out.extend_from_slice(b" xmlns=\"http://hl7.org/fhir\"");
    out.extend_from_slice(&element[name_end..]);
    out
}

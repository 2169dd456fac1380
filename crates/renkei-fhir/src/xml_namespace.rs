//! Namespaces of FHIR XML input.
//!
//! `<f:Patient xmlns:f="http://hl7.org/fhir"><f:active value="true"/></f:Patient>` is the same
//! document as `<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>`, but
//! fhirbolt and the checks after it ([`crate::xml_check`], `narrative.rs`) read element names
//! as written. This pass resolves every element's namespace once and, when a prefix is used,
//! rewrites the document into the unprefixed form (each element's namespace as the default
//! one), so everything after it sees the one spelling. It refuses an element in any namespace
//! other than FHIR's, except for the XHTML of a narrative `div`, and an element in no
//! namespace, with a message naming both.
//!
//! It runs after [`crate::prepass::check_xml_depth`], so the document is balanced.

use crate::prepass::{markup, Markup, NarrativeDiv};
use crate::xml_check::attributes;
use crate::{ContentError, IssueCode};
use std::borrow::Cow;
use std::collections::HashSet;

const FHIR: &str = "http://hl7.org/fhir";
const XHTML: &str = renkei_fhir_schema::XHTML_NAMESPACE;
/// XML Schema's instance namespace: `xsi:schemaLocation` on the root names the schema a
/// document claims (official FHIR test files carry it); it says nothing about the content.
const SCHEMA_INSTANCE: &str = "http://www.w3.org/2001/XMLSchema-instance";

fn refuse(message: String) -> ContentError {
    ContentError::single(IssueCode::Structure, "", message)
}

/// One open element: the namespace declarations of its tag, the namespace of its content in
/// the rewritten document, and whether it is XHTML.
struct Scope {
    /// `(prefix, namespace)`; the empty prefix is the default namespace.
    declared: Vec<(String, String)>,
    /// The default namespace in scope inside this element in the output.
    output_default: &'static str,
    xhtml: bool,
}

/// The document with every FHIR and XHTML element unprefixed (borrowed when no element has a
/// prefix), or why an element is in the wrong namespace.
pub(crate) fn unprefixed(bytes: &[u8]) -> Result<Cow<'_, [u8]>, ContentError> {
    let any_prefix = markup(bytes)
        .any(|item| matches!(item, Ok(Markup::Open { name, .. }) if name.contains(&b':')));
    let mut out: Option<Vec<u8>> = any_prefix.then(|| Vec::with_capacity(bytes.len()));
    let mut scopes: Vec<Scope> = Vec::new();
    let mut copied = 0usize;
    for item in markup(bytes) {
        let item = item.map_err(|m| refuse(format!("the XML is not well-formed: {m}")))?;
        match item {
            Markup::Other { .. } => {}
            Markup::Close { start, end, name } => {
                scopes.pop();
                if let Some(out) = out.as_mut() {
                    out.extend_from_slice(span(bytes, copied, start)?);
                    out.extend_from_slice(b"</");
                    out.extend_from_slice(local(name));
                    out.push(b'>');
                    copied = end;
                }
            }
            Markup::Open {
                name,
                empty,
                start,
                end,
            } => {
                let tag = span(
                    bytes,
                    start + 1,
                    end.saturating_sub(if empty { 2 } else { 1 }),
                )?;
                let shown = String::from_utf8_lossy(name);
                let attrs = attributes(tag);
                let declared = declarations(&attrs);
                let prefix = match name.iter().position(|&b| b == b':') {
                    Some(colon) => String::from_utf8_lossy(&name[..colon]).into_owned(),
                    None => String::new(),
                };
                let namespace = resolve(&prefix, &declared, &scopes).ok_or_else(|| {
                    refuse(format!(
                        "<{shown}> uses the namespace prefix '{prefix}', which is not declared"
                    ))
                })?;
                let parent_xhtml = scopes.last().is_some_and(|s| s.xhtml);
                let namespace = match namespace {
                    FHIR if !parent_xhtml => FHIR,
                    // The narrative's `div` opens the only XHTML of a FHIR document.
                    XHTML if parent_xhtml || (local(name) == b"div" && !scopes.is_empty()) => XHTML,
                    other => return Err(misplaced(&shown, other, parent_xhtml)),
                };
                let parent_default = scopes.last().map_or("", |s| s.output_default);
                if let Some(out) = out.as_mut() {
                    out.extend_from_slice(span(bytes, copied, start)?);
                    out.push(b'<');
                    out.extend_from_slice(local(name));
                    if parent_default != namespace {
                        out.extend_from_slice(b" xmlns=\"");
                        out.extend_from_slice(namespace.as_bytes());
                        out.push(b'"');
                    }
                    write_attributes(out, &shown, &attrs, scopes.is_empty())?;
                    out.extend_from_slice(if empty { b"/>" } else { b">" });
                    copied = end;
                }
                if !empty {
                    scopes.push(Scope {
                        declared,
                        output_default: namespace,
                        xhtml: namespace == XHTML,
                    });
                }
            }
        }
    }
    Ok(match out {
        Some(mut out) => {
            out.extend_from_slice(span(bytes, copied, bytes.len())?);
            Cow::Owned(out)
        }
        None => Cow::Borrowed(bytes),
    })
}

/// `bytes[from..to]`. The scanner's bounds always make a span; should one ever not, the
/// document is refused rather than the request panicking.
fn span(bytes: &[u8], from: usize, to: usize) -> Result<&[u8], ContentError> {
    bytes
        .get(from..to)
        .ok_or_else(|| refuse(format!("the XML could not be read (bytes {from}..{to})")))
}

/// The local part of an element name.
fn local(name: &[u8]) -> &[u8] {
    match name.iter().position(|&b| b == b':') {
        Some(colon) => &name[colon + 1..],
        None => name,
    }
}

/// The namespace declarations among a tag's attributes.
fn declarations(attrs: &[(&[u8], &[u8])]) -> Vec<(String, String)> {
    attrs
        .iter()
        .filter_map(|(name, value)| {
            let prefix = match name.strip_prefix(b"xmlns") {
                Some(b"") => "",
                Some(rest) => std::str::from_utf8(rest.strip_prefix(b":")?).ok()?,
                None => return None,
            };
            Some((
                prefix.to_string(),
                String::from_utf8_lossy(value).into_owned(),
            ))
        })
        .collect()
}

/// The namespace `prefix` names at a tag: its own declarations first, then the open elements'
/// from the innermost out. The default namespace is "" (none) when nothing declares it.
fn resolve<'a>(prefix: &str, own: &'a [(String, String)], scopes: &'a [Scope]) -> Option<&'a str> {
    std::iter::once(own)
        .chain(scopes.iter().rev().map(|s| s.declared.as_slice()))
        .flatten()
        .find(|(p, _)| p == prefix)
        .map(|(_, namespace)| namespace.as_str())
        .or_else(|| prefix.is_empty().then_some(""))
}

fn misplaced(element: &str, namespace: &str, in_xhtml: bool) -> ContentError {
    let found = if namespace.is_empty() {
        "is in no namespace".to_string()
    } else {
        format!("is in the namespace '{namespace}'")
    };
    let expected = if in_xhtml {
        format!("inside a narrative div, elements are XHTML ({XHTML})")
    } else {
        format!("FHIR elements are in {FHIR}, and only the narrative div is XHTML ({XHTML})")
    };
    refuse(format!("<{element}> {found}; {expected}"))
}

/// A tag's attributes as written, without the namespace declarations, which the rewritten
/// element replaces by the one default namespace it needs. Other declarations stay (an
/// attribute may use them); an attribute in a namespace FHIR or XHTML would lose with its
/// prefix is refused, except `xml:` ones and, on the root, XML Schema instance ones.
fn write_attributes(
    out: &mut Vec<u8>,
    element: &str,
    attrs: &[(&[u8], &[u8])],
    root: bool,
) -> Result<(), ContentError> {
    let schema_instance = if root {
        schema_instance_prefixes(attrs)
    } else {
        HashSet::new()
    };
    for (name, value) in attrs {
        if *name == b"xmlns" || name.starts_with(b"xmlns:") {
            let value = String::from_utf8_lossy(value);
            if *name == b"xmlns" || value == FHIR || value == XHTML {
                continue;
            }
        } else if name.contains(&b':')
            && !name.starts_with(b"xml:")
            && !has_prefix(name, &schema_instance)
        {
            return Err(refuse(format!(
                "<{element}> has the prefixed attribute '{}'; FHIR and XHTML attributes have no namespace",
                String::from_utf8_lossy(name)
            )));
        }
        // The raw value goes back between quotes it cannot contain.
        let quote = if value.contains(&b'"') { b'\'' } else { b'"' };
        out.push(b' ');
        out.extend_from_slice(name);
        out.push(b'=');
        out.push(quote);
        out.extend_from_slice(value);
        out.push(quote);
    }
    Ok(())
}

/// The prefixes that the root element, whose attributes are `root_attrs`, binds to the XML
/// Schema instance namespace. The root has no ancestors, so its own declarations are the only
/// ones in scope.
pub(crate) fn schema_instance_prefixes<'a>(root_attrs: &[(&'a [u8], &[u8])]) -> HashSet<&'a [u8]> {
    root_attrs
        .iter()
        .filter(|(_, namespace)| *namespace == SCHEMA_INSTANCE.as_bytes())
        .filter_map(|(attribute, _)| attribute.strip_prefix(b"xmlns:"))
        .collect()
}

/// Whether the attribute `name` has one of `prefixes`.
pub(crate) fn has_prefix(name: &[u8], prefixes: &HashSet<&[u8]>) -> bool {
    name.iter()
        .position(|&b| b == b':')
        .is_some_and(|colon| prefixes.contains(&name[..colon]))
}

/// The unprefixed document for fhirbolt, with every prefixed attribute of the FHIR elements and
/// of each narrative's `div` tag blanked out. fhirbolt resolves those attributes' namespaces
/// itself and refuses all but FHIR's and XHTML's, even the `xml` prefix, which is bound by
/// definition (Namespaces in XML §3) and whose `xml:lang` FHIR allows on the narrative. By
/// then [`crate::xml_check`] has accepted them (namespace declarations, `xsi:` on the root,
/// `xml:` on the `div`); nothing else reads them, and the narrative is taken from the
/// document as sent (`narrative::restore_from_xml`), its `div` tag included. Blanks keep
/// every offset, so the two stay comparable. Inside a narrative fhirbolt reads no attributes.
pub(crate) fn without_prefixed_attributes(bytes: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut div = NarrativeDiv::default();
    for item in markup(bytes).map_while(Result::ok) {
        if div.skip(&item) {
            continue;
        }
        match item {
            Markup::Open {
                name,
                empty,
                start,
                end,
            } => {
                if name == b"div" && !empty {
                    div.enter();
                }
                let Some(tag) = bytes.get(start..end) else {
                    continue;
                };
                for (attribute, _) in attributes(tag) {
                    if !attribute.contains(&b':') {
                        continue;
                    }
                    // The attribute through its closing quote, as offsets into `bytes`.
                    let from = start + (attribute.as_ptr() as usize - tag.as_ptr() as usize);
                    let Some(to) = tag_end_of_attribute(bytes, from) else {
                        continue;
                    };
                    let out = out.get_or_insert_with(|| bytes.to_vec());
                    out[from..to].fill(b' ');
                }
            }
            Markup::Close { .. } | Markup::Other { .. } => {}
        }
    }
    out.map_or(Cow::Borrowed(bytes), Cow::Owned)
}

/// The end (just past the closing quote) of the attribute starting at `from`.
fn tag_end_of_attribute(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    let open = rest.iter().position(|b| matches!(b, b'"' | b'\''))?;
    let quote = rest[open];
    let close = rest[open + 1..].iter().position(|&b| b == quote)?;
    Some(from + open + 1 + close + 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn rewritten(xml: &str) -> String {
        String::from_utf8(unprefixed(xml.as_bytes()).unwrap().into_owned()).unwrap()
    }

    fn refused(xml: &str) -> String {
        unprefixed(xml.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn unprefixed_documents_are_borrowed_as_they_are() {
        let xml = format!(
            r#"<Patient xmlns="{FHIR}"><text><status value="generated"/><div xmlns="{XHTML}"><p>x</p></div></text></Patient>"#
        );
        assert!(matches!(
            unprefixed(xml.as_bytes()).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn prefixed_fhir_and_xhtml_become_unprefixed() {
        assert_eq!(
            rewritten(&format!(
                r#"<?xml version="1.0"?><f:Patient xmlns:f="{FHIR}"><f:id value="p1"/><f:active value='say "yes"'/></f:Patient>"#
            )),
            format!(
                r#"<?xml version="1.0"?><Patient xmlns="{FHIR}"><id value="p1"/><active value='say "yes"'/></Patient>"#
            )
        );
        assert_eq!(
            rewritten(&format!(
                r#"<f:Patient xmlns:f="{FHIR}" xmlns:h="{XHTML}"><f:text><f:status value="generated"/><h:div><h:p class="c">a <h:b>b</h:b></h:p><br xmlns="{XHTML}"/></h:div></f:text></f:Patient>"#
            )),
            format!(
                r#"<Patient xmlns="{FHIR}"><text><status value="generated"/><div xmlns="{XHTML}"><p class="c">a <b>b</b></p><br/></div></text></Patient>"#
            )
        );
        // A default namespace and a prefix mixed, the prefix rebound further down.
        assert_eq!(
            rewritten(&format!(
                r#"<Bundle xmlns="{FHIR}" xmlns:x="{FHIR}"><x:type value="collection"/><entry><resource><x:Patient xmlns:x="{FHIR}"/></resource></entry></Bundle>"#
            )),
            format!(
                r#"<Bundle xmlns="{FHIR}"><type value="collection"/><entry><resource><Patient/></resource></entry></Bundle>"#
            )
        );
    }

    #[test]
    fn fhirbolt_sees_no_prefixed_attributes_outside_narratives() {
        let xml = format!(
            r#"<Patient xmlns="{FHIR}" xmlns:xsi="{SCHEMA_INSTANCE}" xsi:schemaLocation='a "b"'><text><status value="generated"/><div xmlns="{XHTML}" xml:lang="ja"><p xml:lang="en">x</p></div></text></Patient>"#
        );
        let view = without_prefixed_attributes(xml.as_bytes());
        let view = std::str::from_utf8(&view).unwrap();
        // Blanks in place of each attribute keep every offset.
        assert_eq!(view.len(), xml.len());
        assert!(
            !view.contains("xsi") && !view.contains(r#"xml:lang="ja""#),
            "{view}"
        );
        assert!(view.contains(r#"<p xml:lang="en">x</p>"#), "{view}");
        assert!(
            view.starts_with(&format!("<Patient xmlns=\"{FHIR}\" ")),
            "{view}"
        );
        let plain = format!(r#"<Patient xmlns="{FHIR}"><active value="true"/></Patient>"#);
        assert!(matches!(
            without_prefixed_attributes(plain.as_bytes()),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn other_namespaces_are_refused_with_both_names() {
        let message =
            refused(r#"<f:Patient xmlns:f="urn:other"><f:active value="true"/></f:Patient>"#);
        assert!(
            message.contains("<f:Patient> is in the namespace 'urn:other'"),
            "{message}"
        );
        let message = refused(&format!(
            r#"<Patient xmlns="{FHIR}" xmlns:o="urn:other"><o:active value="true"/></Patient>"#
        ));
        assert!(message.contains("'urn:other'"), "{message}");
        let message = refused(r#"<Patient><active value="true"/></Patient>"#);
        assert!(message.contains("no namespace"), "{message}");
        let message = refused(&format!(r#"<x:Patient xmlns="{FHIR}"/>"#));
        assert!(message.contains("not declared"), "{message}");
        // XHTML only as the narrative div and inside it; FHIR never inside it.
        let message = refused(&format!(
            r#"<Patient xmlns="{FHIR}" xmlns:h="{XHTML}"><h:active value="true"/></Patient>"#
        ));
        assert!(
            message.contains("only the narrative div is XHTML"),
            "{message}"
        );
        let message = refused(&format!(
            r#"<Patient xmlns="{FHIR}" xmlns:f="{FHIR}"><text><div xmlns="{XHTML}"><f:p/></div></text></Patient>"#
        ));
        assert!(message.contains("inside a narrative div"), "{message}");
        let message = refused(&format!(
            r#"<f:Patient xmlns:f="{FHIR}" xmlns:h="{XHTML}"><f:text><h:div h:class="x">t</h:div></f:text></f:Patient>"#
        ));
        assert!(
            message.contains("prefixed attribute 'h:class'"),
            "{message}"
        );
    }
}

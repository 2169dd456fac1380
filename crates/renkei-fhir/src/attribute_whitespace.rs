//! Tabs and line breaks inside the attribute values of XML that fhirbolt writes.
//!
//! XML 1.0 §3.3.3 (attribute-value normalization) makes every conforming parser read a tab,
//! line feed or carriage return written as such in an attribute value as a space; only a
//! character reference (`&#10;`) keeps it. fhirbolt escapes `<`, `>`, `&` and `"` in values
//! but writes those three characters raw, so every multi-line string or markdown (all of
//! which are `value` attributes in FHIR XML) would reach an XML client on one line.

use crate::prepass::{markup, Markup};

/// `xml` with every tab, line feed and carriage return inside a quoted attribute value of a
/// start tag written as a character reference. Whitespace between tags (fhirbolt's
/// indentation) and text content are left as they are.
pub(crate) fn escape_in_attributes(xml: String) -> String {
    let tags: Vec<(usize, usize)> = markup(xml.as_bytes())
        .filter_map(|item| match item {
            Ok(Markup::Open { start, end, .. }) => Some((start, end)),
            _ => None,
        })
        .filter(|&(start, end)| {
            xml.as_bytes()[start..end]
                .iter()
                .any(|b| matches!(b, b'\t' | b'\n' | b'\r'))
        })
        .collect();
    if tags.is_empty() {
        return xml;
    }
    let mut out = String::with_capacity(xml.len() + 16 * tags.len());
    let mut copied = 0;
    for (start, end) in tags {
        // Tags start with `<` and end with `>`, both ASCII: the slices are on char boundaries.
        out.push_str(&xml[copied..start]);
        let mut quote = None;
        for c in xml[start..end].chars() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(open), _) if c == open => quote = None,
                (Some(_), '\t') => {
                    out.push_str("&#9;");
                    continue;
                }
                (Some(_), '\n') => {
                    out.push_str("&#10;");
                    continue;
                }
                (Some(_), '\r') => {
                    out.push_str("&#13;");
                    continue;
                }
                _ => {}
            }
            out.push(c);
        }
        copied = end;
    }
    out.push_str(&xml[copied..]);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tabs_and_line_breaks_in_values_become_character_references() {
        let xml = "<Patient xmlns=\"http://hl7.org/fhir\">\n  <name>\n    <text value=\"line1\nline2\tTab\r\nend\"/>\n    <family id='a\tb' value=\"x\"/>\n  </name>\n</Patient>";
        assert_eq!(
            escape_in_attributes(xml.to_string()),
            "<Patient xmlns=\"http://hl7.org/fhir\">\n  <name>\n    <text value=\"line1&#10;line2&#9;Tab&#13;&#10;end\"/>\n    <family id='a&#9;b' value=\"x\"/>\n  </name>\n</Patient>"
        );
    }

    #[test]
    fn text_content_and_indentation_are_kept() {
        let xml = "<a value=\"1\">\n\t<div xmlns=\"x\">line1\nline2\t</div>\r\n</a>";
        assert_eq!(escape_in_attributes(xml.to_string()), xml);
    }
}

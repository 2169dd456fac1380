//! XHTML narratives (`Narrative.div`, the only element of R4 named `div`) in XML.
//!
//! fhirbolt trims every text node of a narrative, both when it reads XML and when it writes a
//! `div` out (quick-xml `trim_text(true)`, hard-coded in fhirbolt-serde 0.4), so
//! `Peter James <b>Chalmers</b> (Jim)` would become `Peter James<b>Chalmers</b>(Jim)`. When
//! writing, it also re-parses each `div`, fails the whole document on one that is not
//! well-formed, drops comments and copies text such as `]]>` out unchecked.
//!
//! - Reading XML: fhirbolt parses and checks everything; then each `div` string of the result
//!   is replaced with the raw `<div>` element of the request bytes it came from, paired by
//!   content with all XML whitespace removed (whitespace is the only thing fhirbolt changed),
//!   never by position. Only plain elements (elements and text: no comments, CDATA,
//!   processing instructions; balanced) are substituted; anything else keeps fhirbolt's
//!   result. The narrative checks of `validate` then run on the restored strings.
//! - Writing XML: fhirbolt never sees a narrative. [`take_divs`] swaps each `div` for a
//!   numbered placeholder `div`, and [`put_back`] replaces each rendered placeholder with the
//!   narrative itself, which [`renkei_fhir_schema::is_well_formed_xhtml`] has checked can
//!   stand in an XML document as it is.
//!
//! A stored narrative that is not well-formed (written before narratives were checked) is
//! rendered as a `div` holding the stored string as escaped text. The alternatives were worse
//! for a client: failing the response would let one bad record break every search that
//! returns it, and dropping the narrative would silently lose what the resource says and make
//! the XML and JSON forms of one version differ in content. As escaped text the XML form
//! carries exactly the characters the JSON form has, the document stays well-formed, and
//! nothing in it is live markup.

use crate::prepass::{is_plain_element, markup, tag_end, Markup, NarrativeDiv};
use crate::MAX_DEPTH;
use renkei_fhir_schema::{is_well_formed_xhtml, XHTML_NAMESPACE};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;

/// After `fhirbolt::xml` parsed `xml` into `value`: restores the narratives' whitespace from
/// the raw XML.
pub(crate) fn restore_from_xml(xml: &[u8], value: &mut Value) {
    let mut raw: HashMap<String, VecDeque<String>> = HashMap::new();
    for range in div_elements(xml) {
        let element = &xml[range];
        let Ok(text) = std::str::from_utf8(element) else {
            continue;
        };
        if let Some(key) = content_key(text) {
            // XML parsers report line breaks as LF (XML 1.0 §2.11).
            let text = text.replace("\r\n", "\n").replace('\r', "\n");
            raw.entry(key).or_default().push_back(text);
        }
    }
    if !raw.is_empty() {
        replace_divs(value, &mut raw);
    }
}

/// Before rendering `value` with fhirbolt: replaces every `"div"` string with the placeholder
/// `<div xmlns="…">n</div>` and returns the narratives in placeholder order.
pub(crate) fn take_divs(value: &mut Value) -> Vec<String> {
    let mut taken = Vec::new();
    take_into(value, &mut taken);
    taken
}

fn take_into(value: &mut Value, taken: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(div) if key == "div" => {
                        let placeholder =
                            format!("<div xmlns=\"{XHTML_NAMESPACE}\">{}</div>", taken.len());
                        taken.push(std::mem::replace(div, placeholder));
                    }
                    _ => take_into(child, taken),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                take_into(item, taken);
            }
        }
        _ => {}
    }
}

/// After fhirbolt rendered the placeholders of [`take_divs`] into `xml`: puts each narrative
/// in the place of its placeholder. Every other value fhirbolt writes is an escaped attribute
/// value, so the only `<div>` elements of `xml` are the placeholders.
pub(crate) fn put_back(xml: String, narratives: &[String]) -> String {
    if narratives.is_empty() {
        return xml;
    }
    let extra: usize = narratives.iter().map(String::len).sum();
    let mut out = String::with_capacity(xml.len() + extra);
    let mut copied = 0;
    for range in div_elements(xml.as_bytes()) {
        let Some(narrative) = xml
            .get(range.clone())
            .and_then(placeholder_index)
            .and_then(|n| narratives.get(n))
        else {
            continue;
        };
        out.push_str(&xml[copied..range.start]);
        out.push_str(&rendered(narrative));
        copied = range.end;
    }
    out.push_str(&xml[copied..]);
    out
}

/// The number inside a rendered placeholder `<div …>n</div>`.
fn placeholder_index(element: &str) -> Option<usize> {
    let start_end = tag_end(element.as_bytes(), 1, false)?;
    element
        .get(start_end..)?
        .strip_suffix("</div>")?
        .trim()
        .parse()
        .ok()
}

/// A narrative as it goes into an XML document: as stored when it is a well-formed XHTML
/// `div`, otherwise its text escaped inside one (see the module comment).
fn rendered(narrative: &str) -> String {
    let trimmed = narrative.trim_matches([' ', '\t', '\r', '\n']);
    if is_well_formed_xhtml(trimmed) {
        return trimmed.to_string();
    }
    let mut out = String::with_capacity(trimmed.len() + 64);
    out.push_str("<div xmlns=\"");
    out.push_str(XHTML_NAMESPACE);
    out.push_str("\">");
    for c in trimmed.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' | '\n' | '\r' => out.push(c),
            // Characters XML cannot carry at all.
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out.push_str("</div>");
    out
}

/// Replaces every `"div"` string of `value` whose whitespace-free content has a raw
/// counterpart (consumed in document order among equals).
fn replace_divs(value: &mut Value, raw: &mut HashMap<String, VecDeque<String>>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(div) if key == "div" => {
                        if let Some(original) = content_key(div)
                            .and_then(|k| raw.get_mut(&k))
                            .and_then(VecDeque::pop_front)
                        {
                            *div = original;
                        }
                    }
                    _ => replace_divs(child, raw),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                replace_divs(item, raw);
            }
        }
        _ => {}
    }
}

/// The outermost unprefixed `<div …>…</div>` elements of an XML document (nested divs belong
/// to their outer one), as byte ranges. Nothing when the document does not scan cleanly.
fn div_elements(xml: &[u8]) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut div = NarrativeDiv::default();
    let mut div_start = 0;
    for item in markup(xml) {
        let Ok(item) = item else {
            return Vec::new();
        };
        if div.skip(&item) {
            if let (false, Markup::Close { end, .. }) = (div.is_inside(), item) {
                found.push(div_start..end);
            }
            continue;
        }
        if let Markup::Open {
            name: b"div",
            empty: false,
            start,
            ..
        } = item
        {
            div_start = start;
            div.enter();
        }
    }
    found
}

/// The content of a plain `<div …>…</div>` after its start tag, with XML whitespace removed:
/// what fhirbolt's trimming cannot change. `None` for anything that is not a plain element.
fn content_key(div: &str) -> Option<String> {
    let div = div.trim();
    if !div.starts_with("<div") || !is_plain_element(div.as_bytes(), MAX_DEPTH) {
        return None;
    }
    let start_end = tag_end(div.as_bytes(), 1, false)?;
    Some(
        div[start_end..]
            .chars()
            .filter(|c| !matches!(c, ' ' | '\t' | '\r' | '\n'))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const NS: &str = "http://www.w3.org/1999/xhtml";

    #[test]
    fn finds_outer_divs() {
        let xml = br#"<a><div x="1"><div>in</div></div><b/><div>two</div><div/></a>"#;
        let found: Vec<&[u8]> = div_elements(xml).into_iter().map(|r| &xml[r]).collect();
        assert_eq!(
            found,
            vec![&br#"<div x="1"><div>in</div></div>"#[..], b"<div>two</div>"]
        );
    }

    #[test]
    fn restores_parsed_whitespace_by_content_not_position() {
        let xml = format!(
            "<Bundle><div xmlns=\"{NS}\"><p>B  b</p>\r\n</div><div xmlns=\"{NS}\"><p>A <b>a</b> (a)</p></div></Bundle>"
        );
        let mut value = json!({"entry": [
            {"text": {"div": format!("<div xmlns=\"{NS}\"><p>A<b>a</b>(a)</p></div>")}},
            {"text": {"div": format!("<div xmlns=\"{NS}\"><p>B  b</p></div>")}},
            {"text": {"div": format!("<div xmlns=\"{NS}\"><p>other</p></div>")}}
        ]});
        restore_from_xml(xml.as_bytes(), &mut value);
        assert_eq!(
            value["entry"][0]["text"]["div"],
            format!("<div xmlns=\"{NS}\"><p>A <b>a</b> (a)</p></div>")
        );
        assert_eq!(
            value["entry"][1]["text"]["div"],
            format!("<div xmlns=\"{NS}\"><p>B  b</p>\n</div>")
        );
        assert_eq!(
            value["entry"][2]["text"]["div"],
            format!("<div xmlns=\"{NS}\"><p>other</p></div>")
        );
    }

    #[test]
    fn placeholders_go_in_and_narratives_come_back_by_number() {
        let first = format!("<div xmlns=\"{NS}\"><p>Peter James <b>Chalmers</b> (Jim)</p></div>");
        let second = format!("<div xmlns=\"{NS}\">a ]]&gt; b &amp; c <!-- kept --></div>");
        let mut value = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"text": {"div": first}}},
            {"resource": {"text": {"div": format!("\n  {second}\n")}}}
        ]});
        let taken = take_divs(&mut value);
        assert_eq!(taken.len(), 2);
        assert_eq!(
            value["entry"][1]["resource"]["text"]["div"],
            format!("<div xmlns=\"{NS}\">1</div>")
        );
        // Whatever order fhirbolt writes them in, each goes back by its number.
        let rendered = format!(
            "<Bundle><entry><text>\n  <div xmlns=\"{NS}\">1</div></text></entry><entry><text><div xmlns=\"{NS}\">0</div></text></entry></Bundle>"
        );
        assert_eq!(
            put_back(rendered, &taken),
            format!("<Bundle><entry><text>\n  {second}</text></entry><entry><text>{first}</text></entry></Bundle>")
        );
    }

    #[test]
    fn malformed_narratives_become_escaped_text() {
        let taken = vec![
            format!("<div xmlns=\"{NS}\"><p>x</div>"),
            format!("<div xmlns=\"{NS}\">a ]]> b\u{1}</div>"),
            "plain & simple".to_string(),
        ];
        let rendered = format!(
            "<a><div xmlns=\"{NS}\">0</div><div xmlns=\"{NS}\">1</div><div xmlns=\"{NS}\">2</div></a>"
        );
        assert_eq!(
            put_back(rendered, &taken),
            format!(
                "<a><div xmlns=\"{NS}\">&lt;div xmlns=\"{NS}\"&gt;&lt;p&gt;x&lt;/div&gt;</div>\
                 <div xmlns=\"{NS}\">&lt;div xmlns=\"{NS}\"&gt;a ]]&gt; b\u{FFFD}&lt;/div&gt;</div>\
                 <div xmlns=\"{NS}\">plain &amp; simple</div></a>"
            )
        );
    }

    #[test]
    fn well_formed_but_disallowed_narratives_are_rendered_as_stored() {
        // Refused on input since txt-1 is checked, but stored earlier: JSON returns it as is,
        // and so does XML.
        let taken = vec![format!(
            "<div xmlns=\"{NS}\"><p onclick=\"x()\">y</p></div>"
        )];
        let rendered = format!("<a><div xmlns=\"{NS}\">0</div></a>");
        assert_eq!(put_back(rendered, &taken), format!("<a>{}</a>", taken[0]));
    }

    #[test]
    fn leaves_what_it_cannot_pair() {
        let rendered = format!("<P><div xmlns=\"{NS}\"><p>ab</p></div></P>");
        let mut parsed = json!({"text": {"div": format!("<div xmlns=\"{NS}\"><p>xy</p></div>")}});
        let before = parsed.clone();
        restore_from_xml(rendered.as_bytes(), &mut parsed);
        assert_eq!(parsed, before);
        // Not a placeholder, or a number without a narrative: left alone.
        assert_eq!(put_back(rendered.clone(), &["x".to_string()]), rendered);
        let stray = format!("<P><div xmlns=\"{NS}\">7</div></P>");
        assert_eq!(put_back(stray.clone(), &["x".to_string()]), stray);
    }
}

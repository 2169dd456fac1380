//! Whitespace in XHTML narrative (`Narrative.div`, the only element of R4 named `div`).
//!
//! fhirbolt trims every text node of a narrative, both when it reads XML and when it writes a
//! `div` out (quick-xml `trim_text(true)`, hard-coded in fhirbolt-serde 0.4), so
//! `Peter James <b>Chalmers</b> (Jim)` would become `Peter James<b>Chalmers</b>(Jim)`. fhirbolt
//! still parses, checks and renders everything; these functions then put the whitespace back:
//! - after parsing XML, each `div` string of the result is replaced with the raw `<div>`
//!   element of the request bytes it came from;
//! - after rendering XML, each rendered `<div>` element is replaced with the `div` string of
//!   the resource it came from.
//!
//! Divs are paired by their content with all XML whitespace removed (whitespace is the only
//! thing fhirbolt changed), never by position, so the order in which fhirbolt visits elements
//! does not matter. Only plain elements (elements and text: no comments, CDATA, processing
//! instructions; balanced) are substituted; anything else keeps fhirbolt's result, as before.

use crate::prepass::{is_plain_element, markup, tag_end, Markup};
use crate::MAX_DEPTH;
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

/// After fhirbolt rendered `value` as `xml`: puts each narrative back as the resource has it.
pub(crate) fn restore_in_xml(value: &Value, xml: String) -> String {
    let mut originals: HashMap<String, VecDeque<&str>> = HashMap::new();
    collect_divs(value, &mut originals);
    if originals.is_empty() {
        return xml;
    }
    let mut out = String::with_capacity(xml.len() + xml.len() / 8);
    let mut copied = 0;
    for range in div_elements(xml.as_bytes()) {
        let Some(rendered) = xml.get(range.clone()) else {
            continue;
        };
        let Some(original) = content_key(rendered)
            .and_then(|key| originals.get_mut(&key))
            .and_then(VecDeque::pop_front)
        else {
            continue;
        };
        out.push_str(&xml[copied..range.start]);
        out.push_str(original);
        copied = range.end;
    }
    out.push_str(&xml[copied..]);
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

/// Every plain `"div"` string of `value`, by whitespace-free content, in traversal order.
fn collect_divs<'v>(value: &'v Value, into: &mut HashMap<String, VecDeque<&'v str>>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match child {
                    Value::String(div) if key == "div" => {
                        let div = div.trim();
                        if let Some(k) = content_key(div) {
                            into.entry(k).or_default().push_back(div);
                        }
                    }
                    _ => collect_divs(child, into),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_divs(item, into);
            }
        }
        _ => {}
    }
}

/// The outermost unprefixed `<div …>…</div>` elements of an XML document (nested divs belong
/// to their outer one), as byte ranges. Nothing when the document does not scan cleanly.
fn div_elements(xml: &[u8]) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    // Start of the outer div being read, and how many divs are open inside it.
    let mut current: Option<(usize, usize)> = None;
    for item in markup(xml) {
        match (item, current.as_mut()) {
            (Err(_), _) => return Vec::new(),
            (
                Ok(Markup::Open {
                    name: b"div",
                    empty: false,
                    start,
                    ..
                }),
                None,
            ) => {
                current = Some((start, 1));
            }
            (
                Ok(Markup::Open {
                    name: b"div",
                    empty: false,
                    ..
                }),
                Some((_, open)),
            ) => *open += 1,
            (
                Ok(Markup::Close {
                    name: b"div", end, ..
                }),
                Some((start, open)),
            ) => {
                *open -= 1;
                if *open == 0 {
                    found.push(*start..end);
                    current = None;
                }
            }
            _ => {}
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
    fn restores_rendered_whitespace() {
        let original =
            format!("<div xmlns=\"{NS}\"><p>Peter James <b>Chalmers</b> (Jim)</p></div>");
        let value = json!({"resourceType": "Patient", "text": {"div": original}});
        let rendered = format!(
            "<Patient><text><div xmlns=\"{NS}\"><p>Peter James<b>Chalmers</b>(Jim)</p></div></text></Patient>"
        );
        assert_eq!(
            restore_in_xml(&value, rendered),
            format!("<Patient><text>{original}</text></Patient>")
        );
    }

    #[test]
    fn leaves_what_it_cannot_pair() {
        let value =
            json!({"text": {"div": format!("<div xmlns=\"{NS}\"><!-- c --><p>a b</p></div>")}});
        let rendered = format!("<P><div xmlns=\"{NS}\"><p>ab</p></div></P>");
        assert_eq!(restore_in_xml(&value, rendered.clone()), rendered);
        let mut parsed = json!({"text": {"div": format!("<div xmlns=\"{NS}\"><p>xy</p></div>")}});
        let before = parsed.clone();
        restore_from_xml(rendered.as_bytes(), &mut parsed);
        assert_eq!(parsed, before);
    }
}

//! Narrative XHTML (`xhtml`-typed elements; in R4 that is `Narrative.div`).
//!
//! [`check_xhtml`] reads the string once, without building a tree, and checks that it is
//! 1. one well-formed XML element (XML 1.0 and Namespaces in XML, standalone: no DTD, so only
//!    the five predefined entities and character references), with nothing but whitespace
//!    around it, which is a `div` declaring `xmlns="http://www.w3.org/1999/xhtml"` and whose
//!    elements all stay in that namespace. Anything less cannot be put into an XML response;
//!    that is [`XhtmlProblemKind::Malformed`];
//! 2. made only of the elements and attributes invariant txt-1 allows (the lists below);
//!    [`XhtmlProblemKind::NotAllowed`];
//! 3. not empty: some non-whitespace text or an `img` (txt-2); [`XhtmlProblemKind::Empty`].
//!
//! txt-1 is enforced with an allow-list, not a deny-list of dangerous names. The spec defines
//! txt-1 as an allow-list ("only the basic html formatting elements and attributes described in
//! chapters 7-11 (except section 4 of chapter 9) and 15 of the HTML 4.0 standard, `<a>`
//! elements (either name or href), images and internally contained style attributes"), and a
//! deny-list is never complete: HTML keeps gaining elements and event attributes (`<svg>`,
//! `<math>`, `<template>`, `onpointerrawupdate`, ...) that load or run content. The lists are
//! the ones the HL7 reference validator applies for txt-1 (`XhtmlValidator`; it also lets
//! `xml:space` through, with a hint), so what it accepts is accepted here. Its content-model
//! rules (no block element inside `<p>`, `<li>` only in lists, ...) are not checked. Values that can still carry script inside allowed attributes are
//! checked too: URLs (`href`, `src`, `cite`, ...) must use an allowed scheme, and `style` may
//! not contain script or load anything. Constructs that are well-formed XML but that an HTML
//! parser reads differently, which is how sanitised XHTML becomes script when a client puts a
//! narrative into a web page, are refused as well: CDATA sections and processing instructions
//! (an HTML parser ends both at the first `>`) and comments that start with `>` or `->`.
//!
//! Error messages name elements, attributes, URL schemes and namespaces, never text or other
//! attribute values.

use std::fmt;

/// The XHTML namespace, which the narrative's root `div` must declare.
pub const XHTML_NAMESPACE: &str = "http://www.w3.org/1999/xhtml";

const XML_NAMESPACE: &str = "http://www.w3.org/XML/1998/namespace";

/// Deepest element nesting accepted in a narrative. Real narratives stay near 10 (table, row,
/// cell, paragraph, span); the whole XML document of a resource is limited to 64.
pub const MAX_XHTML_DEPTH: usize = 32;

/// The elements txt-1 allows: HTML 4.0 chapters 7-11 (without 9.4, `ins`/`del`) and 15
/// (without the deprecated font elements), plus `a`, `img`, `map` and `area`.
const ELEMENTS: &str = "\
    p br div h1 h2 h3 h4 h5 h6 a span b em i strong small big tt dfn q var abbr acronym cite \
    blockquote hr address bdo kbd sub sup ul ol li dl dt dd pre table caption colgroup col \
    thead tr tfoot tbody th td code samp img map area";

/// Attributes allowed on every element: HTML 4.0's core and i18n attributes (no event
/// attributes) and the table-cell attributes of chapter 11.
const GLOBAL_ATTRIBUTES: &str = "\
    title style class id lang xml:lang xml:space dir accesskey tabindex \
    span width align valign char charoff abbr axis headers scope rowspan colspan";

/// Attributes allowed on one element only, as `element.attribute`.
const ELEMENT_ATTRIBUTES: &str = "\
    a.href a.name a.charset a.type a.hreflang a.rel a.rev a.shape a.coords \
    img.src img.alt img.longdesc img.height img.width img.usemap img.ismap img.border \
    map.name area.shape area.coords area.href area.nohref area.alt blockquote.cite q.cite \
    table.summary table.width table.border table.frame table.rules table.cellspacing \
    table.cellpadding pre.space td.nowrap";

/// Whether `name` is one of the whitespace-separated names of `list`.
fn listed(list: &str, name: &str) -> bool {
    list.split_ascii_whitespace().any(|n| n == name)
}

/// Attributes whose value is a URL, and so could name a `javascript:` URL.
const URL_ATTRIBUTES: &[&str] = &["href", "src", "cite", "longdesc", "usemap"];

/// URL schemes a link may use. Everything else (`javascript:`, `vbscript:`, `data:`, `file:`,
/// ...) is refused. URLs without a scheme (relative references, `#fragment`) are allowed.
const LINK_SCHEMES: &[&str] = &["http", "https", "mailto", "tel", "urn", "ftp"];

/// What is wrong with a narrative, from worst to mildest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XhtmlProblemKind {
    /// Not one well-formed XHTML `div` element: cannot be put into an XML document as a
    /// narrative.
    Malformed,
    /// Well-formed, but uses an element, attribute or value that txt-1 does not allow.
    NotAllowed,
    /// Well-formed and allowed, but without content (txt-2).
    Empty,
}

/// Why a narrative was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XhtmlProblem {
    pub kind: XhtmlProblemKind,
    pub message: String,
}

impl fmt::Display for XhtmlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for XhtmlProblem {}

/// Checks a narrative (the JSON string value of an `xhtml` element). A malformed narrative is
/// always reported as [`XhtmlProblemKind::Malformed`], whatever else is wrong with it; among
/// well-formed ones the first txt-1 violation wins over txt-2.
pub fn check_xhtml(div: &str) -> Result<(), XhtmlProblem> {
    let mut scan = Scan {
        s: div,
        b: div.as_bytes(),
        i: 0,
        open: Vec::new(),
        not_allowed: None,
        has_content: false,
    };
    scan.document()?;
    if let Some(message) = scan.not_allowed {
        return Err(XhtmlProblem {
            kind: XhtmlProblemKind::NotAllowed,
            message,
        });
    }
    if !scan.has_content {
        return Err(XhtmlProblem {
            kind: XhtmlProblemKind::Empty,
            message: "the narrative has no content: it must contain some non-whitespace text \
                      or an image (txt-2)"
                .into(),
        });
    }
    Ok(())
}

/// Whether a narrative can be written into an XML document as it is: it is one well-formed
/// XHTML `div` ([`check_xhtml`] finds nothing worse than txt-1 or txt-2 problems).
pub fn is_well_formed_xhtml(div: &str) -> bool {
    !matches!(check_xhtml(div), Err(p) if p.kind == XhtmlProblemKind::Malformed)
}

/// An open element: its name as written and the namespace prefixes it declares.
struct Open<'a> {
    name: &'a str,
    prefixes: Vec<(&'a str, String)>,
}

/// One attribute of a start tag.
struct Attribute<'a> {
    name: &'a str,
    value: String,
}

struct Scan<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    open: Vec<Open<'a>>,
    /// The first txt-1 violation; the scan goes on, because a well-formedness error found
    /// later is the more important finding.
    not_allowed: Option<String>,
    /// Non-whitespace text or an `img` seen (txt-2).
    has_content: bool,
}

fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

fn is_name_start_char(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start_char(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// A name as shown in a message: at most 40 characters.
fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(40).collect();
    if out.len() < name.len() {
        out.push('…');
    }
    out
}

fn malformed(message: String) -> XhtmlProblem {
    XhtmlProblem {
        kind: XhtmlProblemKind::Malformed,
        message,
    }
}

impl<'a> Scan<'a> {
    /// A well-formedness error at byte offset `at`, reported as a character position.
    fn error_at<T>(&self, at: usize, what: impl fmt::Display) -> Result<T, XhtmlProblem> {
        let at = at.min(self.s.len());
        let position = self.s.get(..at).map_or(at, |s| s.chars().count());
        Err(malformed(format!(
            "the narrative is not well-formed XML: {what} (at character {position})"
        )))
    }

    fn not_allowed(&mut self, message: String) {
        if self.not_allowed.is_none() {
            self.not_allowed = Some(message);
        }
    }

    fn rest(&self) -> &'a [u8] {
        self.b.get(self.i..).unwrap_or_default()
    }

    fn skip_space(&mut self) -> bool {
        let start = self.i;
        while self.b.get(self.i).copied().is_some_and(is_xml_space) {
            self.i += 1;
        }
        self.i > start
    }

    /// The whole string: whitespace, one element, whitespace.
    fn document(&mut self) -> Result<(), XhtmlProblem> {
        if let Some((at, c)) = self.s.char_indices().find(|&(_, c)| !is_xml_char(c)) {
            return self.error_at(
                at,
                format_args!("the character U+{:04X} is not allowed in XML", u32::from(c)),
            );
        }
        self.skip_space();
        if self.i >= self.b.len() {
            return Err(malformed(
                "the narrative must be a <div> element, but it is blank".into(),
            ));
        }
        let rest = self.rest();
        if rest.first() != Some(&b'<') || matches!(rest.get(1), Some(b'!' | b'?' | b'/')) {
            return Err(malformed(
                "the narrative must be a single <div> element, with nothing but whitespace \
                 before it"
                    .into(),
            ));
        }
        self.start_tag()?;
        while !self.open.is_empty() {
            self.content()?;
        }
        self.skip_space();
        if self.i < self.b.len() {
            return self.error_at(
                self.i,
                "the narrative must be a single <div> element, with nothing but whitespace \
                 after it",
            );
        }
        Ok(())
    }

    /// One item inside an open element: text, a tag, a comment, ...
    fn content(&mut self) -> Result<(), XhtmlProblem> {
        let rest = self.rest();
        if rest.is_empty() {
            let name = self.open.last().map_or("", |o| o.name);
            return self.error_at(
                self.i,
                format_args!("the element <{}> is never closed", shown(name)),
            );
        }
        if rest.starts_with(b"<!--") {
            self.comment()
        } else if rest.starts_with(b"<![CDATA[") {
            self.cdata()
        } else if rest.starts_with(b"<?") {
            self.processing_instruction()
        } else if rest.starts_with(b"<!") {
            self.error_at(self.i, "a declaration (<!...>) inside an element")
        } else if rest.starts_with(b"</") {
            self.end_tag()
        } else if rest.starts_with(b"<") {
            self.start_tag()
        } else {
            self.text()
        }
    }

    /// Character data up to the next `<`.
    fn text(&mut self) -> Result<(), XhtmlProblem> {
        let start = self.i;
        let end = self
            .rest()
            .iter()
            .position(|&b| b == b'<')
            .map_or(self.b.len(), |p| start + p);
        let text = self.s.get(start..end).unwrap_or_default();
        if let Some(p) = text.find("]]>") {
            return self.error_at(start + p, "']]>' is not allowed in text (write ']]&gt;')");
        }
        let mut content = false;
        self.unescape(start, end, &mut |c| {
            content |= !matches!(c, ' ' | '\t' | '\r' | '\n');
        })?;
        self.has_content |= content;
        self.i = end;
        Ok(())
    }

    /// Resolves the references of `self.s[start..end]` (text or an attribute value), passing
    /// every character of the result to `out`.
    fn unescape(
        &self,
        start: usize,
        end: usize,
        out: &mut dyn FnMut(char),
    ) -> Result<(), XhtmlProblem> {
        let raw = self.s.get(start..end).unwrap_or_default();
        let mut rest = raw;
        while let Some(amp) = rest.find('&') {
            rest.get(..amp)
                .unwrap_or_default()
                .chars()
                .for_each(&mut *out);
            let at = start + (raw.len() - rest.len()) + amp;
            let after = rest.get(amp + 1..).unwrap_or_default();
            let Some(semicolon) = after.find(';').filter(|&p| p <= 12) else {
                return self.error_at(
                    at,
                    "'&' must start an entity reference such as &amp; (write '&amp;' for the \
                     character itself)",
                );
            };
            let name = after.get(..semicolon).unwrap_or_default();
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => name.strip_prefix('#').and_then(|number| {
                    let code = match number.strip_prefix('x') {
                        Some(hex)
                            if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
                        {
                            u32::from_str_radix(hex, 16).ok()
                        }
                        Some(_) => None,
                        None if !number.is_empty()
                            && number.bytes().all(|b| b.is_ascii_digit()) =>
                        {
                            number.parse::<u32>().ok()
                        }
                        None => None,
                    };
                    code.and_then(char::from_u32).filter(|&c| is_xml_char(c))
                }),
            };
            let Some(c) = c else {
                return self.error_at(
                    at,
                    format_args!(
                        "'&{};' is not an entity XML defines (only &amp; &lt; &gt; &quot; &apos; \
                         and character references such as &#160; are allowed; HTML entities \
                         such as &nbsp; are not)",
                        shown(name)
                    ),
                );
            };
            out(c);
            rest = after.get(semicolon + 1..).unwrap_or_default();
        }
        rest.chars().for_each(out);
        Ok(())
    }

    /// `<!-- ... -->`.
    fn comment(&mut self) -> Result<(), XhtmlProblem> {
        let start = self.i;
        let body = start + 4;
        let Some(dashes) = self.s.get(body..).and_then(|r| r.find("--")) else {
            return self.error_at(start, "a comment is never closed");
        };
        let dashes = body + dashes;
        if self.b.get(dashes + 2) != Some(&b'>') {
            return self.error_at(dashes, "'--' inside a comment");
        }
        let text = self.s.get(body..dashes).unwrap_or_default();
        if text.starts_with('>') || text.starts_with("->") {
            self.not_allowed(
                "a comment may not start with '>' or '->' (an HTML parser ends it there)".into(),
            );
        }
        self.i = dashes + 3;
        Ok(())
    }

    /// `<![CDATA[ ... ]]>`: well-formed, but not allowed.
    fn cdata(&mut self) -> Result<(), XhtmlProblem> {
        let start = self.i;
        let body = start + 9;
        let Some(end) = self.s.get(body..).and_then(|r| r.find("]]>")) else {
            return self.error_at(start, "a CDATA section is never closed");
        };
        let end = body + end;
        let text = self.s.get(body..end).unwrap_or_default();
        self.has_content |= text.chars().any(|c| !matches!(c, ' ' | '\t' | '\r' | '\n'));
        self.not_allowed(
            "CDATA sections are not allowed in a narrative (write the text with &lt; and &amp; \
             instead)"
                .into(),
        );
        self.i = end + 3;
        Ok(())
    }

    /// `<?target ... ?>`: well-formed, but not allowed.
    fn processing_instruction(&mut self) -> Result<(), XhtmlProblem> {
        let start = self.i;
        self.i += 2;
        let target = self.name()?;
        if target.eq_ignore_ascii_case("xml") {
            return self.error_at(start, "an XML declaration inside an element");
        }
        if !self.skip_space() && !self.rest().starts_with(b"?>") {
            return self.error_at(self.i, "a malformed processing instruction");
        }
        let Some(end) = self.s.get(self.i..).and_then(|r| r.find("?>")) else {
            return self.error_at(start, "a processing instruction is never closed");
        };
        self.not_allowed("processing instructions are not allowed in a narrative".into());
        self.i += end + 2;
        Ok(())
    }

    /// An XML name at `self.i`, which is moved past it.
    fn name(&mut self) -> Result<&'a str, XhtmlProblem> {
        let start = self.i;
        let rest = self.s.get(start..).unwrap_or_default();
        let mut chars = rest.char_indices();
        match chars.next() {
            Some((_, c)) if is_name_start_char(c) => {}
            _ => {
                return self.error_at(
                    start,
                    "a name was expected (write '&lt;' for a '<' that does not start a tag)",
                )
            }
        }
        let len = chars
            .find(|&(_, c)| !is_name_char(c))
            .map_or(rest.len(), |(p, _)| p);
        let name = rest.get(..len).unwrap_or_default();
        // Namespaces in XML: at most one colon, not first or last.
        let colons = name.matches(':').count();
        if colons > 1 || name.starts_with(':') || name.ends_with(':') {
            return self.error_at(
                start,
                format_args!("'{}' is not a valid qualified name", shown(name)),
            );
        }
        self.i = start + len;
        Ok(name)
    }

    /// The namespace a prefix is bound to in the open elements (and `frame`, being opened).
    fn resolve(&self, prefix: &str, frame: &[(&'a str, String)]) -> Option<String> {
        if prefix == "xml" {
            return Some(XML_NAMESPACE.into());
        }
        frame
            .iter()
            .rev()
            .chain(self.open.iter().rev().flat_map(|o| o.prefixes.iter().rev()))
            .find(|(p, _)| *p == prefix)
            .map(|(_, ns)| ns.clone())
    }

    /// `<name attribute="value" ...>` or `<name .../>`.
    fn start_tag(&mut self) -> Result<(), XhtmlProblem> {
        let start = self.i;
        self.i += 1;
        let name = self.name()?;
        let mut attributes: Vec<Attribute<'a>> = Vec::new();
        let empty = loop {
            let spaced = self.skip_space();
            let rest = self.rest();
            if rest.starts_with(b">") {
                self.i += 1;
                break false;
            }
            if rest.starts_with(b"/>") {
                self.i += 2;
                break true;
            }
            if rest.is_empty() {
                return self.error_at(
                    start,
                    format_args!("the start tag <{}> is never closed", shown(name)),
                );
            }
            if !spaced {
                return self.error_at(self.i, "attributes must be separated by whitespace");
            }
            let attribute = self.attribute()?;
            if attributes.iter().any(|a| a.name == attribute.name) {
                return self.error_at(
                    start,
                    format_args!(
                        "the attribute '{}' appears twice on <{}>",
                        shown(attribute.name),
                        shown(name)
                    ),
                );
            }
            attributes.push(attribute);
        };
        let root = self.open.is_empty();

        // Namespace declarations.
        let mut prefixes: Vec<(&'a str, String)> = Vec::new();
        for a in &attributes {
            if a.name == "xmlns" {
                if a.value != XHTML_NAMESPACE {
                    return Err(malformed(format!(
                        "<{}> declares the namespace '{}'; every element of a narrative must be \
                         in the XHTML namespace {XHTML_NAMESPACE}",
                        shown(name),
                        shown(&a.value)
                    )));
                }
            } else if let Some(prefix) = a.name.strip_prefix("xmlns:") {
                let reserved = (prefix == "xml") != (a.value == XML_NAMESPACE);
                if prefix == "xmlns" || reserved || a.value.is_empty() {
                    return self.error_at(
                        start,
                        format_args!(
                            "the namespace declaration '{}' is not allowed",
                            shown(a.name)
                        ),
                    );
                }
                prefixes.push((prefix, a.value.clone()));
            }
        }
        if root {
            if name != "div" {
                return Err(malformed(format!(
                    "the narrative must be a single <div> element, not <{}>",
                    shown(name)
                )));
            }
            if !attributes.iter().any(|a| a.name == "xmlns") {
                return Err(malformed(format!(
                    "the narrative <div> must declare xmlns=\"{XHTML_NAMESPACE}\""
                )));
            }
        }

        // Prefixes must be declared, and two attributes may not have the same expanded name.
        if let Some((prefix, _)) = name.split_once(':') {
            if self.resolve(prefix, &prefixes).is_none() {
                return self.error_at(
                    start,
                    format_args!("the namespace prefix '{}' is not declared", shown(prefix)),
                );
            }
        }
        let mut expanded: Vec<(String, &str)> = Vec::new();
        for a in &attributes {
            let Some((prefix, local)) = a.name.split_once(':') else {
                continue;
            };
            if prefix == "xmlns" {
                continue;
            }
            let Some(ns) = self.resolve(prefix, &prefixes) else {
                return self.error_at(
                    start,
                    format_args!("the namespace prefix '{}' is not declared", shown(prefix)),
                );
            };
            if expanded.iter().any(|(n, l)| *n == ns && *l == local) {
                return self.error_at(
                    start,
                    format_args!(
                        "two attributes of <{}> have the same namespace and name",
                        shown(name)
                    ),
                );
            }
            expanded.push((ns, local));
        }

        if self.open.len() >= MAX_XHTML_DEPTH {
            self.not_allowed(format!(
                "the narrative is nested more than {MAX_XHTML_DEPTH} elements deep"
            ));
        }
        self.check_allowed(name, &attributes);
        if name == "img" {
            self.has_content = true;
        }
        if !empty {
            self.open.push(Open { name, prefixes });
        }
        Ok(())
    }

    /// `name = "value"` (or single quotes); the value with its references resolved.
    fn attribute(&mut self) -> Result<Attribute<'a>, XhtmlProblem> {
        let name = self.name()?;
        self.skip_space();
        if self.b.get(self.i) != Some(&b'=') {
            return self.error_at(
                self.i,
                format_args!("the attribute '{}' has no value", shown(name)),
            );
        }
        self.i += 1;
        self.skip_space();
        let quote = match self.b.get(self.i) {
            Some(&q @ (b'"' | b'\'')) => q,
            _ => {
                return self.error_at(
                    self.i,
                    format_args!("the value of the attribute '{}' is not quoted", shown(name)),
                )
            }
        };
        let start = self.i + 1;
        let Some(len) = self.rest().iter().skip(1).position(|&b| b == quote) else {
            return self.error_at(
                self.i,
                format_args!(
                    "the value of the attribute '{}' is never closed",
                    shown(name)
                ),
            );
        };
        let end = start + len;
        if let Some(p) = self
            .b
            .get(start..end)
            .and_then(|v| v.iter().position(|&b| b == b'<'))
        {
            return self.error_at(start + p, "'<' is not allowed in an attribute value");
        }
        let mut value = String::with_capacity(len);
        self.unescape(start, end, &mut |c| value.push(c))?;
        self.i = end + 1;
        Ok(Attribute { name, value })
    }

    /// `</name>`.
    fn end_tag(&mut self) -> Result<(), XhtmlProblem> {
        let start = self.i;
        self.i += 2;
        let name = self.name()?;
        self.skip_space();
        if self.b.get(self.i) != Some(&b'>') {
            return self.error_at(
                start,
                format_args!("the end tag </{}> is not closed with '>'", shown(name)),
            );
        }
        self.i += 1;
        match self.open.pop() {
            Some(open) if open.name == name => Ok(()),
            Some(open) => self.error_at(
                start,
                format_args!(
                    "</{}> found where </{}> was expected",
                    shown(name),
                    shown(open.name)
                ),
            ),
            None => self.error_at(start, format_args!("</{}> closes nothing", shown(name))),
        }
    }

    /// txt-1: the element, its attributes and their values.
    fn check_allowed(&mut self, name: &str, attributes: &[Attribute<'_>]) {
        if !listed(ELEMENTS, name) {
            self.not_allowed(format!(
                "the element <{}> is not allowed in a narrative (txt-1 allows only basic HTML \
                 formatting elements, links and images: no scripts, forms, frames, objects, \
                 styles or links to stylesheets)",
                shown(name)
            ));
            return;
        }
        for a in attributes {
            let allowed = a.name == "xmlns"
                || a.name.starts_with("xmlns:")
                || listed(GLOBAL_ATTRIBUTES, a.name)
                || ELEMENT_ATTRIBUTES
                    .split_ascii_whitespace()
                    .any(|ea| ea.split_once('.') == Some((name, a.name)));
            if !allowed {
                let why = if a
                    .name
                    .get(..2)
                    .is_some_and(|p| p.eq_ignore_ascii_case("on"))
                {
                    "event attributes run script"
                } else {
                    "txt-1 allows only basic HTML formatting attributes"
                };
                self.not_allowed(format!(
                    "the attribute '{}' is not allowed on <{}> in a narrative ({why})",
                    shown(a.name),
                    name
                ));
                continue;
            }
            if URL_ATTRIBUTES.contains(&a.name) {
                if let Some(scheme) = disallowed_scheme(name, &a.value) {
                    self.not_allowed(format!(
                        "the {} of <{name}> uses the URL scheme '{}:', which is not allowed in a \
                         narrative (use http, https, mailto, tel, urn, ftp or a relative URL; \
                         images may also use data:image/)",
                        a.name,
                        shown(&scheme)
                    ));
                }
            } else if a.name == "style" {
                if let Some(what) = style_problem(&a.value) {
                    self.not_allowed(format!(
                        "the style of <{name}> contains {what}, which is not allowed in a \
                         narrative (styles must be internal and must not run script)"
                    ));
                }
            }
        }
    }
}

/// The scheme of a URL attribute value when it is not allowed. Browsers ignore ASCII
/// whitespace and control characters around and inside a scheme (`java\tscript:`) and compare
/// it case-insensitively, so those are removed first.
fn disallowed_scheme(element: &str, value: &str) -> Option<String> {
    let url: String = value
        .chars()
        .filter(|&c| c > ' ' && c != '\u{7F}')
        .collect::<String>()
        .to_ascii_lowercase();
    let end = url.find([':', '/', '?', '#'])?;
    if url.as_bytes().get(end) != Some(&b':') {
        return None;
    }
    let scheme = url.get(..end)?;
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        // Not a scheme: browsers read `%6Aavascript:x` or `1a:b` as a relative path.
        return None;
    }
    let image_data = element == "img"
        && scheme == "data"
        && url.starts_with("data:image/")
        && !url.starts_with("data:image/svg");
    if LINK_SCHEMES.contains(&scheme) || image_data {
        None
    } else {
        Some(scheme.to_string())
    }
}

/// What makes an inline style unsafe: script (`expression()`, `javascript:`, behaviours,
/// bindings) or loading other content (`@import`, `url()` other than an inline image, which
/// the HL7-generated narratives of the official definitions use). CSS escapes and comments
/// could hide any of these, so they are refused as well.
fn style_problem(value: &str) -> Option<&'static str> {
    let css: String = value
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let found = [
        ("\\", "a CSS escape"),
        ("/*", "a CSS comment"),
        ("expression(", "expression()"),
        ("javascript:", "a javascript: URL"),
        ("vbscript:", "a vbscript: URL"),
        ("@import", "@import"),
        ("behavior:", "a behavior"),
        ("-moz-binding", "-moz-binding"),
    ]
    .into_iter()
    .find(|(needle, _)| css.contains(needle))
    .map(|(_, what)| what);
    if found.is_some() {
        return found;
    }
    css.split("url(")
        .skip(1)
        .map(|argument| argument.trim_start_matches(['"', '\'']))
        .any(|url| !url.starts_with("data:image/") || url.starts_with("data:image/svg"))
        .then_some("a url() that is not an inline image")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn div(inner: &str) -> String {
        format!("<div xmlns=\"{XHTML_NAMESPACE}\">{inner}</div>")
    }

    #[track_caller]
    fn kind(s: &str) -> Option<XhtmlProblemKind> {
        check_xhtml(s).err().map(|p| p.kind)
    }

    #[track_caller]
    fn assert_kind(s: &str, expected: XhtmlProblemKind, message_part: &str) {
        match check_xhtml(s) {
            Ok(()) => panic!("accepted: {s}"),
            Err(p) => {
                assert_eq!(p.kind, expected, "{s}: {}", p.message);
                assert!(
                    p.message.contains(message_part),
                    "{s}: '{}' does not mention '{message_part}'",
                    p.message
                );
            }
        }
    }

    #[test]
    fn accepts_valid_narratives() {
        for ok in [
            div("x"),
            div("<p>Peter James <b>Chalmers</b> (&quot;Jim&quot;)</p>"),
            div("a &amp; b &lt;c&gt; &#160; &#xA0; &#x1F600; &apos;"),
            div("]]&gt; is fine escaped, and so is ] ] >"),
            div("<p title=\"a > b ]]> c\">quoted markup in an attribute</p>"),
            div("<br/><br /><hr/>text"),
            div("<img src=\"#logo\" alt=\"\"/>"),
            div("<img src=\"data:image/png;base64,iVBORw0KGgo=\"/>"),
            div("<a href=\"https://example.org/x?a=1&amp;b=2\">l</a> <a href=\"Patient/1\">p</a>"),
            div("<a href=\"mailto:a@b.jp\">m</a><a href=\"tel:+81-3\">t</a><a name=\"top\">x</a>"),
            div("<a href=\"#frag\">f</a><a href=\"urn:uuid:1\">u</a><a href=\"a%3Ab:c\">rel</a>"),
            div("<span style=\"color: gray; white-space:nowrap\">s</span>"),
            div("<td style=\"background-image: url(data: image/png;base64,iVBO=)\">c</td>"),
            div("<table class=\"grid\" border=\"1\"><tr id=\"r\"><td colspan=\"2\" rowspan='1'>c</td></tr></table>"),
            div("<!-- a comment --> text <!---->"),
            div("<div xml:lang=\"ja\" lang=\"ja\" dir=\"ltr\">日本語</div>"),
            div("<p xmlns=\"http://www.w3.org/1999/xhtml\">inner default namespace</p>"),
            div("<ul><li>one</li><li>two</li></ul><ol><li>x</li></ol><dl><dt>a</dt><dd>b</dd></dl>"),
            format!("  \n<div xmlns='{XHTML_NAMESPACE}' class=\"c\">\r\n x \t</div>\n "),
            format!("<div xmlns=\"{XHTML_NAMESPACE}\"><p>a</p></div  >"),
            format!("<div xmlns=\"{XHTML_NAMESPACE}\" xmlns:x=\"urn:x\">declared, unused</div>"),
        ] {
            assert_eq!(check_xhtml(&ok), Ok(()), "{ok}");
            assert!(is_well_formed_xhtml(&ok));
        }
    }

    #[test]
    fn rejects_malformed_xml() {
        use XhtmlProblemKind::Malformed;
        for (bad, part) in [
            (div("<p>x"), "</div> found where </p> was expected"),
            (div("<p>x</div>"), "</div> found where </p> was expected"),
            (div("</p>"), "</p> found where </div> was expected"),
            (
                format!("<div xmlns=\"{XHTML_NAMESPACE}\">x"),
                "never closed",
            ),
            (
                format!("<div xmlns=\"{XHTML_NAMESPACE}\"><p"),
                "never closed",
            ),
            (div("a ]]> b"), "']]>' is not allowed in text"),
            (div("a & b"), "'&' must start an entity reference"),
            (div("&nbsp;"), "'&nbsp;' is not an entity XML defines"),
            (div("&reg;"), "'&reg;' is not an entity XML defines"),
            (div("&#0;"), "'&#0;' is not an entity"),
            (div("&#xD800;"), "'&#xD800;' is not an entity"),
            (div("&#x;"), "is not an entity"),
            (div("a \u{1} b"), "U+0001"),
            (div("a < b"), "a name was expected"),
            (div("<p class=x>y</p>"), "not quoted"),
            (
                div("<p class=\"a<b\">y</p>"),
                "'<' is not allowed in an attribute value",
            ),
            (div("<p class=\"a\" class=\"b\">y</p>"), "appears twice"),
            (
                div("<p class=\"a\"id=\"b\">y</p>"),
                "separated by whitespace",
            ),
            (div("<p class>y</p>"), "has no value"),
            (div("<p class=\"y</p>"), "is never closed"),
            (div("<!-- a -- b -->"), "'--' inside a comment"),
            (div("<!-- open"), "comment is never closed"),
            (div("<![CDATA[ open"), "CDATA section is never closed"),
            (div("<!DOCTYPE x>"), "declaration"),
            (div("<?xml version=\"1.0\"?>"), "XML declaration"),
            (div("<x:p>y</x:p>"), "prefix 'x' is not declared"),
            (div("<p a:b:c=\"1\">y</p>"), "not a valid qualified name"),
            (
                div("<p xlink:href=\"#a\">y</p>"),
                "prefix 'xlink' is not declared",
            ),
            (
                div("<p xmlns:a=\"urn:n\" xmlns:b=\"urn:n\" a:x=\"1\" b:x=\"2\">y</p>"),
                "same namespace and name",
            ),
            (div("<p xmlns:e=\"\">y</p>"), "declaration 'xmlns:e'"),
            (
                div("<svg xmlns=\"http://www.w3.org/2000/svg\"/>"),
                "must be in the XHTML namespace",
            ),
            (
                format!("{}<div xmlns=\"{XHTML_NAMESPACE}\">y</div>", div("x")),
                "nothing but whitespace after",
            ),
            (
                format!("{} trailing", div("x")),
                "nothing but whitespace after",
            ),
            (
                format!("text {}", div("x")),
                "nothing but whitespace before",
            ),
            (
                format!("<!-- c -->{}", div("x")),
                "nothing but whitespace before",
            ),
            (
                format!("<?xml version=\"1.0\"?>{}", div("x")),
                "nothing but whitespace before",
            ),
            ("<div>x</div>".to_string(), "must declare xmlns"),
            (
                "<div xmlns=\"http://www.w3.org/1999/xhtml/\">x</div>".to_string(),
                "XHTML namespace",
            ),
            (format!("<p xmlns=\"{XHTML_NAMESPACE}\">x</p>"), "not <p>"),
            ("plain text".to_string(), "single <div> element"),
            ("   ".to_string(), "blank"),
        ] {
            assert_kind(&bad, Malformed, part);
            assert!(!is_well_formed_xhtml(&bad), "{bad}");
        }
    }

    #[test]
    fn malformed_wins_over_not_allowed() {
        assert_eq!(
            kind(&div("<script>alert(1)</script><p>")),
            Some(XhtmlProblemKind::Malformed)
        );
    }

    #[test]
    fn rejects_what_txt1_forbids() {
        use XhtmlProblemKind::NotAllowed;
        for (bad, part) in [
            (div("<script>alert(1)</script>x"), "<script>"),
            (div("<iframe src=\"https://e.org\"></iframe>x"), "<iframe>"),
            (div("<object data=\"x\"></object>x"), "<object>"),
            (div("<embed src=\"x\"/>x"), "<embed>"),
            (div("<form><input/></form>x"), "<form>"),
            (div("<button>b</button>"), "<button>"),
            (div("<style>p{}</style>x"), "<style>"),
            (div("<link rel=\"stylesheet\" href=\"s.css\"/>x"), "<link>"),
            (div("<meta http-equiv=\"refresh\"/>x"), "<meta>"),
            (div("<base href=\"https://e.org/\"/>x"), "<base>"),
            (div("<body>x</body>"), "<body>"),
            (div("<font>x</font>"), "<font>"),
            (div("<svg>x</svg>"), "<svg>"),
            (
                div("<p onclick=\"alert(1)\">x</p>"),
                "event attributes run script",
            ),
            (div("<img src=\"#a\" onerror=\"alert(1)\"/>"), "'onerror'"),
            (div("<p ONMOUSEOVER=\"x\">x</p>"), "event attributes"),
            (
                div("<p href=\"https://e.org\">x</p>"),
                "'href' is not allowed on <p>",
            ),
            (
                div("<a href=\"javascript:alert(1)\">x</a>"),
                "'javascript:'",
            ),
            (
                div("<a href=\" JavaScript:alert(1)\">x</a>"),
                "'javascript:'",
            ),
            (
                div("<a href=\"java&#9;script:alert(1)\">x</a>"),
                "'javascript:'",
            ),
            (
                div("<a href=\"&#106;avascript:alert(1)\">x</a>"),
                "'javascript:'",
            ),
            (div("<a href=\"vbscript:x\">x</a>"), "'vbscript:'"),
            (div("<a href=\"data:text/html,x\">x</a>"), "'data:'"),
            (div("<a href=\"file:///etc/passwd\">x</a>"), "'file:'"),
            (div("<img src=\"javascript:alert(1)\"/>"), "'javascript:'"),
            (div("<img src=\"data:image/svg+xml,x\"/>"), "'data:'"),
            (
                div("<blockquote cite=\"javascript:x\">q</blockquote>"),
                "'javascript:'",
            ),
            (div("<area href=\"javascript:x\"/>x"), "'javascript:'"),
            (
                div("<span style=\"width: expression(alert(1))\">x</span>"),
                "expression()",
            ),
            (
                div("<span style=\"background:url(https://e.org/t.gif)\">x</span>"),
                "url()",
            ),
            (
                div("<span style=\"background:u\\72l(x)\">x</span>"),
                "CSS escape",
            ),
            (
                div("<span style=\"-moz-binding: x\">x</span>"),
                "-moz-binding",
            ),
            (div("<p xml:base=\"https://e.org/\">x</p>"), "'xml:base'"),
            (div("<p xmlns:x=\"urn:x\" x:y=\"1\">x</p>"), "'x:y'"),
            (
                div("<x:p xmlns:x=\"http://www.w3.org/1999/xhtml\">y</x:p>"),
                "<x:p>",
            ),
            (div("<![CDATA[<b>x</b>]]>"), "CDATA"),
            (div("<?php echo 1 ?>x"), "processing instructions"),
            (
                div("<!--><script>alert(1)</script>-->x"),
                "comment may not start",
            ),
            (div("<!--->x-->x"), "comment may not start"),
            (
                div(&format!(
                    "{}x{}",
                    "<div>".repeat(MAX_XHTML_DEPTH),
                    "</div>".repeat(MAX_XHTML_DEPTH)
                )),
                "nested more than",
            ),
        ] {
            assert_kind(&bad, NotAllowed, part);
            assert!(is_well_formed_xhtml(&bad), "{bad}");
        }
    }

    #[test]
    fn requires_content() {
        use XhtmlProblemKind::Empty;
        for bad in [
            format!("<div xmlns=\"{XHTML_NAMESPACE}\"/>"),
            div(""),
            div(" \n\t "),
            div("<p> </p><br/><!-- comment only -->"),
            div("<span title=\"text in an attribute is not content\"></span>"),
        ] {
            assert_kind(&bad, Empty, "txt-2");
        }
        assert_eq!(check_xhtml(&div("<p><img src=\"#x\"/></p>")), Ok(()));
        assert_eq!(check_xhtml(&div("&#160;")), Ok(()));
        assert_eq!(check_xhtml(&div("&amp;")), Ok(()));
    }

    #[test]
    fn never_panics_on_truncated_or_mutated_input() {
        let sample = div(
            "<p title='t&amp;' class=\"c\">日本 &#x1F600; <!-- c --> <a href=\"https://e.org\">l</a>\
             <![CDATA[x]]><?pi x?><img src=\"data:image/png;base64,AA==\"/></p>",
        );
        for (i, _) in sample.char_indices() {
            let _ = check_xhtml(&sample[..i]);
            let _ = check_xhtml(&sample[i..]);
            for replacement in [
                "<", ">", "&", "\"", "'", "/", "=", ":", " ", "]]>", "--", "é",
            ] {
                let mut mutated = sample.clone();
                let end = sample[i..].chars().next().map_or(i, |c| i + c.len_utf8());
                mutated.replace_range(i..end, replacement);
                let _ = check_xhtml(&mutated);
            }
        }
    }

    #[test]
    fn messages_name_positions_not_text() {
        let p = check_xhtml(&div("secret patient name <p>x</div>")).unwrap_err();
        assert!(p.message.contains("at character"), "{}", p.message);
        assert!(!p.message.contains("secret"), "{}", p.message);
        let p = check_xhtml(&div("<a href=\"javascript:steal('secret')\">x</a>")).unwrap_err();
        assert!(!p.message.contains("secret"), "{}", p.message);
        let long = "n".repeat(500);
        let p = check_xhtml(&div(&format!("<{long}>x</{long}>"))).unwrap_err();
        assert!(p.message.len() < 400, "{}", p.message);
    }
}

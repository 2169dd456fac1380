//! The XML declaration (`<?xml version="1.0" encoding="UTF-8"?>`) of FHIR XML input.
//!
//! fhirbolt compares the declaration's values byte for byte with what it writes itself, so it
//! refused `encoding="utf-8"` (what .NET's XmlWriter, and so the Firely SDK, writes) and
//! `standalone="yes"`, both well-formed (XML 1.0 §4.3.3: encoding names match without regard
//! to case; §2.9: `standalone` is `yes` or `no`), and refused every other encoding with no
//! reason the client could see. This pass reads the declaration itself, refuses what FHIR does
//! not take with the reason, and hands on the document without it (nor a byte order mark), so
//! nothing after it ever sees one.

use crate::xml_check::attributes;
use crate::{ContentError, IssueCode};

fn refuse(message: impl Into<String>) -> ContentError {
    ContentError::single(IssueCode::Structure, "", message)
}

/// `bytes` after its byte order mark and XML declaration, once the declaration names what FHIR
/// takes: XML 1.0, UTF-8 (xml.html: "The XML character encoding is always UTF-8"), and any
/// `standalone` value.
pub(crate) fn without_declaration(bytes: &[u8]) -> Result<&[u8], ContentError> {
    // UTF-16 (with its byte order mark, or `<` followed or preceded by a zero byte): every
    // ASCII character is two bytes, which would otherwise be read as a `<\0>` element.
    let utf16 = bytes.starts_with(b"\xFF\xFE")
        || bytes.starts_with(b"\xFE\xFF")
        || bytes.starts_with(b"<\0")
        || bytes.starts_with(b"\0<");
    if utf16 {
        return Err(refuse("FHIR XML must be UTF-8; the body is UTF-16"));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    // The declaration is the very first thing (§2.8); `<?xml-stylesheet …?>` is a processing
    // instruction, not a declaration.
    let declared = bytes.starts_with(b"<?xml")
        && bytes
            .get(5)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b'?');
    if !declared {
        return Ok(bytes);
    }
    let Some(end) = bytes.windows(2).position(|w| w == b"?>") else {
        return Err(refuse(
            "the XML is not well-formed: the XML declaration is never closed",
        ));
    };
    // `attributes` skips the leading `xml` as it skips an element name.
    let pseudo = attributes(&bytes[2..end]);
    let malformed = || {
        refuse(
            "the XML is not well-formed: the XML declaration must be version=\"1.0\", then \
             optionally encoding and standalone, in that order",
        )
    };
    let mut pseudo = pseudo.iter().peekable();
    match pseudo.next() {
        Some((b"version", b"1.0")) => {}
        Some((b"version", other)) => {
            return Err(refuse(format!(
                "FHIR XML is XML 1.0; the declaration names version '{}'",
                String::from_utf8_lossy(other)
            )))
        }
        _ => return Err(malformed()),
    }
    if let Some((_, encoding)) = pseudo.next_if(|(name, _)| *name == b"encoding") {
        // Only UTF-8 under its IANA name, as the Content-Type charset is checked in
        // renkei-http: `UTF8` is no registered name for it (§4.3.3 asks for registered names).
        if !encoding.eq_ignore_ascii_case(b"UTF-8") {
            return Err(refuse(format!(
                "FHIR XML must be UTF-8; the declaration names {}",
                String::from_utf8_lossy(encoding)
            )));
        }
    }
    if let Some((_, standalone)) = pseudo.next_if(|(name, _)| *name == b"standalone") {
        if !matches!(*standalone, b"yes" | b"no") {
            return Err(refuse(format!(
                "the XML is not well-formed: standalone in the XML declaration is 'yes' or \
                 'no', not '{}'",
                String::from_utf8_lossy(standalone)
            )));
        }
    }
    if pseudo.next().is_some() {
        return Err(malformed());
    }
    // What is left begins with the rest of the prolog (`Misc*`), which may start anywhere.
    Ok(&bytes[end + 2..])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const ROOT: &str = r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>"#;

    #[test]
    fn declarations_fhir_takes_are_removed() {
        for declaration in [
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<?xml version="1.0" encoding="utf-8"?>"#,
            r#"<?xml version="1.0" encoding="Utf-8"?>"#,
            r#"<?xml version='1.0' encoding='UTF-8' standalone='yes'?>"#,
            r#"<?xml version="1.0" standalone="no"?>"#,
            r#"<?xml version = "1.0"  encoding = "utf-8"?>"#,
            "<?xml version=\"1.0\"\n?>",
            "\u{FEFF}<?xml version=\"1.0\" encoding=\"utf-8\"?>",
            "\u{FEFF}",
            "",
        ] {
            let document = format!("{declaration}\n{ROOT}");
            let rest = without_declaration(document.as_bytes())
                .unwrap_or_else(|e| panic!("{declaration}: {e}"));
            assert_eq!(rest, format!("\n{ROOT}").as_bytes(), "{declaration}");
        }
        // A processing instruction named like it is left for the parser.
        let stylesheet = format!("<?xml-stylesheet href=\"a.xsl\"?>{ROOT}");
        assert_eq!(
            without_declaration(stylesheet.as_bytes()).unwrap(),
            stylesheet.as_bytes()
        );
    }

    #[track_caller]
    fn refused(declaration: &str, reason: &str) {
        let document = format!("{declaration}{ROOT}");
        let error = without_declaration(document.as_bytes()).unwrap_err();
        assert!(error.to_string().contains(reason), "{declaration}: {error}");
    }

    #[test]
    fn other_declarations_are_refused_with_the_reason() {
        refused(
            r#"<?xml version="1.0" encoding="ISO-8859-1"?>"#,
            "FHIR XML must be UTF-8; the declaration names ISO-8859-1",
        );
        refused(
            r#"<?xml version="1.0" encoding="UTF8"?>"#,
            "must be UTF-8; the declaration names UTF8",
        );
        refused(r#"<?xml version="1.0" encoding="UTF-16"?>"#, "names UTF-16");
        refused(r#"<?xml version="1.1"?>"#, "FHIR XML is XML 1.0");
        refused(r#"<?xml version="1.0" standalone="maybe"?>"#, "'maybe'");
        refused(r#"<?xml encoding="UTF-8"?>"#, "version=\"1.0\"");
        refused(
            r#"<?xml version="1.0" standalone="yes" encoding="UTF-8"?>"#,
            "in that order",
        );
        refused(r#"<?xml version="1.0" foo="bar"?>"#, "in that order");
        refused(r#"<?xml version="1.0""#, "never closed");
    }
}

//! Tolerant readers of Patient JSON and the normalizations both sides of a comparison share.
//! Every reader accepts any JSON: a wrong shape reads as absent.

use chrono::NaiveDate;
use renkei_search::fold;
use serde_json::Value;

/// The extension marking a HumanName's representation (`IDE` kanji, `SYL` kana, `ABC`).
pub const EN_REPRESENTATION_URL: &str =
    "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";

/// Whether `value` can be read as a Patient: a JSON object whose `resourceType`, when
/// present, is `Patient`.
pub fn is_patient(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|map| match map.get("resourceType") {
            None => true,
            Some(t) => t.as_str() == Some("Patient"),
        })
}

/// The elements of an array field (a single object is read as a one-element array).
pub fn items<'a>(value: &'a Value, key: &str) -> Vec<&'a Value> {
    match value.get(key) {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    }
}

/// A string field, trimmed, non-empty.
pub fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A string or array-of-strings field, trimmed, non-empty parts.
pub fn texts<'a>(value: &'a Value, key: &str) -> Vec<&'a str> {
    match value.get(key) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .map(str::trim)
    .filter(|s| !s.is_empty())
    .collect()
}

/// Folded (NFKC, lowercase, accents) with all whitespace removed.
pub fn fold_compact(text: &str) -> String {
    fold(text).chars().filter(|c| !c.is_whitespace()).collect()
}

/// An identifier as (trimmed system, folded value); `None` without both.
pub fn identifier(value: &Value) -> Option<(String, String)> {
    let system = text(value, "system")?;
    let raw = text(value, "value")?;
    let folded = fold(raw);
    (!folded.is_empty()).then(|| (system.to_string(), folded))
}

/// All identifiers of a Patient as (system, folded value), sorted and deduplicated.
pub fn identifiers(patient: &Value) -> Vec<(String, String)> {
    let mut out: Vec<_> = items(patient, "identifier")
        .into_iter()
        .filter_map(identifier)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `birthDate` when it is a full, valid `YYYY-MM-DD` date.
pub fn full_birth_date(patient: &Value) -> Option<String> {
    let raw = text(patient, "birthDate")?;
    (raw.len() == 10 && NaiveDate::parse_from_str(raw, "%Y-%m-%d").is_ok()).then(|| raw.to_string())
}

/// `birthDate` when it is a valid date of any FHIR precision (`1970`, `1970-06`,
/// `1970-06-01`), as written; what linking compares (a partial date agrees with the dates it
/// contains, [`crate::persons`]).
pub fn birth_date(patient: &Value) -> Option<String> {
    if let Some(full) = full_birth_date(patient) {
        return Some(full);
    }
    match birth_date_parts(patient)?.as_slice() {
        [year] => Some(format!("{year:04}")),
        [year, month] if (1..=12).contains(month) => Some(format!("{year:04}-{month:02}")),
        _ => None,
    }
}

/// `birthDate` of any FHIR date precision (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`), as its parts.
pub fn birth_date_parts(patient: &Value) -> Option<Vec<u32>> {
    let raw = text(patient, "birthDate")?;
    let parts: Vec<&str> = raw.split('-').collect();
    let widths = [4, 2, 2];
    if parts.len() > 3 {
        return None;
    }
    parts
        .iter()
        .zip(widths)
        .map(|(p, w)| {
            (p.len() == w && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u32>().ok())
                .flatten()
        })
        .collect()
}

/// `gender` when it says something about the person (`male`, `female`, `other`).
pub fn gender(patient: &Value) -> Option<&str> {
    text(patient, "gender").filter(|g| matches!(*g, "male" | "female" | "other"))
}

/// A HumanName read for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// `kanji`, `kana`, `alphabetic` or `name` (unmarked).
    pub representation: &'static str,
    /// Folded family, spaces removed.
    pub family: Option<String>,
    /// Folded family + given, spaces removed (or the folded text when the parts are missing).
    pub full: Option<String>,
}

/// The names of a Patient.
pub fn names(patient: &Value) -> Vec<Name> {
    items(patient, "name")
        .into_iter()
        .filter_map(|name| {
            let representation = items(name, "extension")
                .into_iter()
                .find(|e| text(e, "url") == Some(EN_REPRESENTATION_URL))
                .and_then(|e| text(e, "valueCode"))
                .map_or("name", |code| match code {
                    "IDE" => "kanji",
                    "SYL" => "kana",
                    "ABC" => "alphabetic",
                    _ => "name",
                });
            let family = text(name, "family")
                .map(fold_compact)
                .filter(|f| !f.is_empty());
            let given: String = texts(name, "given").into_iter().map(fold_compact).collect();
            let full = match &family {
                Some(f) if !given.is_empty() => Some(format!("{f}{given}")),
                _ => text(name, "text")
                    .map(fold_compact)
                    .filter(|t| !t.is_empty()),
            };
            (family.is_some() || full.is_some()).then_some(Name {
                representation,
                family,
                full,
            })
        })
        .collect()
}

/// Phone numbers (telecom `system = phone`) as digits; `+81…` becomes `0…`. At least 6 digits.
pub fn phones(patient: &Value) -> Vec<String> {
    let mut out: Vec<String> = items(patient, "telecom")
        .into_iter()
        .filter(|t| text(t, "system") == Some("phone"))
        .filter_map(|t| text(t, "value"))
        .map(phone_digits)
        .filter(|d| d.len() >= 6)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The digits of a phone number, the country code +81 read as a leading 0.
pub fn phone_digits(raw: &str) -> String {
    let folded = fold(raw);
    let digits: String = folded.chars().filter(char::is_ascii_digit).collect();
    match folded.trim_start().strip_prefix('+') {
        Some(rest) if rest.trim_start().starts_with("81") => {
            format!("0{}", digits.get(2..).unwrap_or_default())
        }
        _ => digits,
    }
}

/// An Address read for comparison.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    pub postal_code: Option<String>,
    pub lines: Option<String>,
    pub city: Option<String>,
    pub text: Option<String>,
}

/// Address text folded, spaces removed, dash variants (‐ – — − ー …) read as `-`.
fn fold_address(text: &str) -> String {
    fold_compact(text)
        .chars()
        .map(|c| match c {
            '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{30FC}' | '\u{FF70}' => '-',
            c => c,
        })
        .collect()
}

/// The addresses of a Patient.
pub fn addresses(patient: &Value) -> Vec<Address> {
    items(patient, "address")
        .into_iter()
        .map(|a| {
            let lines: String = texts(a, "line").into_iter().map(fold_address).collect();
            Address {
                postal_code: text(a, "postalCode")
                    .map(|p| {
                        fold(p)
                            .chars()
                            .filter(char::is_ascii_digit)
                            .collect::<String>()
                    })
                    .filter(|p| p.len() >= 3),
                lines: (!lines.is_empty()).then_some(lines),
                city: text(a, "city").map(fold_address),
                text: text(a, "text").map(fold_address).filter(|t| !t.is_empty()),
            }
        })
        .filter(|a| *a != Address::default())
        .collect()
}

/// Which part of two addresses agrees, if any.
pub fn address_match(a: &Address, b: &Address) -> Option<&'static str> {
    if a.postal_code.is_some() && a.postal_code == b.postal_code {
        return Some("postal code");
    }
    let cities_agree = match (&a.city, &b.city) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    };
    if a.lines.is_some() && a.lines == b.lines && cities_agree {
        return Some("street");
    }
    if a.text.is_some() && a.text == b.text {
        return Some("text");
    }
    None
}

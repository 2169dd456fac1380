//! `$match` and PIXm requests: parsing, and the searches that gather `$match` candidates.

use serde_json::Value;

use crate::error::IdentityError;
use crate::norm;
use renkei_search::plan::escape;

/// What a `$match` request asks for, from its `Parameters` body (ITI-119).
#[derive(Debug, Clone, PartialEq)]
pub struct MatchRequest {
    /// The `resource` parameter: the Patient to match.
    pub patient: Value,
    /// `onlyCertainMatches` (default false).
    pub only_certain: bool,
    /// `count`: the most candidates to return.
    pub count: Option<usize>,
}

/// Reads a `$match` `Parameters` body: `resource` (a Patient, required), `onlyCertainMatches`
/// (`valueBoolean`, default false), `count` (`valueInteger`/`valuePositiveInt` > 0, optional).
/// Each may appear once; other parameters are ignored.
pub fn parse_match_request(parameters: &Value) -> Result<MatchRequest, IdentityError> {
    if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(IdentityError::NotParameters);
    }
    // ITI-119 defines these three; anything else would be silently dropped, and a client
    // that misspells `onlyCertainMatches` would get probable matches it asked to exclude.
    for p in norm::items(parameters, "parameter") {
        match p.get("name").and_then(Value::as_str) {
            Some("resource" | "onlyCertainMatches" | "count") => {}
            Some(other) => {
                // Only a name-shaped name is echoed, never content.
                let shown = if other.len() <= 64
                    && other
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    format!("'{other}'")
                } else {
                    "with an invalid name".to_string()
                };
                return Err(IdentityError::UnknownParameter(shown));
            }
            None => return Err(IdentityError::UnknownParameter("without a name".into())),
        }
    }
    let named = |wanted: &str| -> Result<Option<&Value>, IdentityError> {
        let mut found = norm::items(parameters, "parameter")
            .into_iter()
            .filter(|p| p.get("name").and_then(Value::as_str) == Some(wanted));
        let first = found.next();
        if found.next().is_some() {
            return Err(IdentityError::RepeatedParameter(wanted.to_string()));
        }
        Ok(first)
    };

    let patient = match named("resource")?.and_then(|p| p.get("resource")) {
        None | Some(Value::Null) => return Err(IdentityError::MissingResource),
        Some(resource) => {
            match resource.get("resourceType").and_then(Value::as_str) {
                Some("Patient") if resource.is_object() => resource.clone(),
                Some(other) => {
                    // Only a resource type name is echoed, never content.
                    let shown =
                        if other.len() <= 64 && other.chars().all(|c| c.is_ascii_alphanumeric()) {
                            other.to_string()
                        } else {
                            "an invalid resourceType".to_string()
                        };
                    return Err(IdentityError::ResourceNotPatient(shown));
                }
                None => {
                    return Err(IdentityError::ResourceNotPatient(
                        "no resourceType".to_string(),
                    ))
                }
            }
        }
    };

    let only_certain = match named("onlyCertainMatches")? {
        None => false,
        Some(p) => p
            .get("valueBoolean")
            .and_then(Value::as_bool)
            .ok_or(IdentityError::InvalidOnlyCertainMatches)?,
    };

    let count = match named("count")? {
        None => None,
        Some(p) => {
            let value = p
                .get("valueInteger")
                .or_else(|| p.get("valuePositiveInt"))
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .ok_or(IdentityError::InvalidCount)?;
            Some(usize::try_from(value).map_err(|_| IdentityError::InvalidCount)?)
        }
    };

    Ok(MatchRequest {
        patient,
        only_certain,
        count,
    })
}

/// Full-width ASCII forms (`１２３`, `ＡＢ`) as half-width, case kept: token searches compare
/// codes exactly, so an identifier typed either way is looked up both ways.
fn half_width(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            '\u{3000}' => ' ',
            c => c,
        })
        .collect()
}

/// The most identifier searches one query emits (a Patient rarely has more).
const MAX_IDENTIFIER_QUERIES: usize = 10;

/// The search values a store should use to gather `$match` candidates from the query
/// Patient, as (search parameter, value) pairs a FHIR search would take; the caller runs each
/// as a separate query (OR of them) and scores the union with [`crate::score`].
///
/// - `identifier`: `system|value` for each identifier with both (value as written, and its
///   half-width form when it differs, as token codes match exactly); at most 10 identifiers.
/// - `birthdate`: the birth date, only when it is a full date (a year alone is not selective).
/// - `family`: each distinct family name as written (kanji and kana); string search folds.
/// - `phone`: each phone number as written, and its digits when they differ.
///
/// Gender and address are not searched: alone they select too much, and a candidate that
/// scores needs a name, birth date, phone or identifier anyway (see the crate docs).
/// Deduplicated, in this order. Empty for anything that is not a Patient.
pub fn candidate_queries(query: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |name: &str, value: String| {
        let pair = (name.to_string(), value);
        if !pair.1.is_empty() && !out.contains(&pair) {
            out.push(pair);
        }
    };
    if !norm::is_patient(query) {
        return Vec::new();
    }
    for id in norm::items(query, "identifier")
        .into_iter()
        .filter_map(|id| Some((norm::text(id, "system")?, norm::text(id, "value")?)))
        .take(MAX_IDENTIFIER_QUERIES)
    {
        let (system, value) = id;
        let system = escape(system);
        push("identifier", format!("{system}|{}", escape(value)));
        push(
            "identifier",
            format!("{system}|{}", escape(&half_width(value))),
        );
    }
    if let Some(date) = norm::full_birth_date(query) {
        push("birthdate", date);
    }
    for name in norm::items(query, "name") {
        if let Some(family) = norm::text(name, "family") {
            push("family", family.to_string());
        }
    }
    for telecom in norm::items(query, "telecom") {
        if norm::text(telecom, "system") != Some("phone") {
            continue;
        }
        if let Some(value) = norm::text(telecom, "value") {
            push("phone", escape(value));
            let digits = norm::phone_digits(value);
            if digits.len() >= 6 {
                push("phone", digits);
            }
        }
    }
    out
}

/// PIXm (ITI-83) `sourceIdentifier` = `system|value` (both required). The first unescaped
/// `|` separates them; FHIR search escapes (`\|`, `\,`, `\$`, `\\`) are resolved. Outer
/// whitespace is trimmed.
pub fn parse_pix_identifier(text: &str) -> Result<(String, String), IdentityError> {
    let mut system = String::new();
    let mut value = String::new();
    let mut in_value = false;
    let mut chars = text.trim().chars();
    while let Some(c) = chars.next() {
        let target = if in_value { &mut value } else { &mut system };
        match c {
            '\\' => match chars.next() {
                Some(next) => target.push(next),
                None => target.push('\\'),
            },
            '|' if !in_value => in_value = true,
            c => target.push(c),
        }
    }
    let system = system.trim().to_string();
    let value = value.trim().to_string();
    if !in_value || system.is_empty() {
        return Err(IdentityError::MissingSystem);
    }
    if value.is_empty() {
        return Err(IdentityError::MissingValue);
    }
    Ok((system, value))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn params(parameter: Value) -> Value {
        json!({"resourceType": "Parameters", "parameter": parameter})
    }

    fn yamada_query() -> Value {
        json!({
            "resourceType": "Patient",
            "identifier": [
                {"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": "06330015:岡北:１２３:00"},
                {"system": "urn:oid:1.2.392.100495.20.3.51.13310190017", "value": "00012345"},
                {"value": "no system"}
            ],
            "name": [
                {"family": "山田", "given": ["太郎"]},
                {"family": "ヤマダ", "given": ["タロウ"]}
            ],
            "telecom": [
                {"system": "phone", "value": "086-234-5678"},
                {"system": "email", "value": "taro@example.jp"}
            ],
            "gender": "male",
            "birthDate": "1958-03-12"
        })
    }

    #[test]
    fn parses_a_full_match_request() {
        let body = params(json!([
            {"name": "resource", "resource": yamada_query()},
            {"name": "onlyCertainMatches", "valueBoolean": true},
            {"name": "count", "valueInteger": 5}
        ]));
        let request = parse_match_request(&body).unwrap();
        assert_eq!(request.patient, yamada_query());
        assert!(request.only_certain);
        assert_eq!(request.count, Some(5));

        let minimal =
            params(json!([{"name": "resource", "resource": {"resourceType": "Patient"}}]));
        let request = parse_match_request(&minimal).unwrap();
        assert!(!request.only_certain);
        assert_eq!(request.count, None);

        let positive_int = params(json!([
            {"name": "resource", "resource": {"resourceType": "Patient"}},
            {"name": "count", "valuePositiveInt": 1}
        ]));
        assert_eq!(parse_match_request(&positive_int).unwrap().count, Some(1));
    }

    #[test]
    fn match_request_errors() {
        let patient = json!({"name": "resource", "resource": {"resourceType": "Patient"}});
        let cases = [
            (
                "not Parameters",
                json!({"resourceType": "Patient"}),
                IdentityError::NotParameters,
            ),
            (
                "not an object",
                json!("Parameters"),
                IdentityError::NotParameters,
            ),
            (
                "no parameters",
                json!({"resourceType": "Parameters"}),
                IdentityError::MissingResource,
            ),
            (
                "parameter not an array",
                json!({"resourceType": "Parameters", "parameter": "resource"}),
                IdentityError::MissingResource,
            ),
            (
                "missing resource",
                params(json!([{"name": "count", "valueInteger": 3}])),
                IdentityError::MissingResource,
            ),
            (
                "resource parameter without a resource",
                params(json!([{"name": "resource", "valueString": "Patient"}])),
                IdentityError::MissingResource,
            ),
            (
                "resource not a Patient",
                params(json!([{"name": "resource", "resource": {"resourceType": "Practitioner"}}])),
                IdentityError::ResourceNotPatient("Practitioner".into()),
            ),
            (
                "resource without resourceType",
                params(json!([{"name": "resource", "resource": {"name": [{"family": "山田"}]}}])),
                IdentityError::ResourceNotPatient("no resourceType".into()),
            ),
            (
                "resourceType is not echoed when odd",
                params(json!([{"name": "resource", "resource": {"resourceType": "山田 太郎"}}])),
                IdentityError::ResourceNotPatient("an invalid resourceType".into()),
            ),
            (
                "two resources",
                params(json!([patient.clone(), patient.clone()])),
                IdentityError::RepeatedParameter("resource".into()),
            ),
            (
                "count zero",
                params(json!([patient.clone(), {"name": "count", "valueInteger": 0}])),
                IdentityError::InvalidCount,
            ),
            (
                "count negative",
                params(json!([patient.clone(), {"name": "count", "valueInteger": -2}])),
                IdentityError::InvalidCount,
            ),
            (
                "count not an integer",
                params(json!([patient.clone(), {"name": "count", "valueInteger": 2.5}])),
                IdentityError::InvalidCount,
            ),
            (
                "count as a string",
                params(json!([patient.clone(), {"name": "count", "valueString": "5"}])),
                IdentityError::InvalidCount,
            ),
            (
                "an unknown parameter",
                params(json!([patient.clone(), {"name": "somethingElse", "valueString": "x"}])),
                IdentityError::UnknownParameter("'somethingElse'".into()),
            ),
            (
                "a misspelt parameter",
                params(
                    json!([patient.clone(), {"name": "onlyCertainMatch", "valueBoolean": true}]),
                ),
                IdentityError::UnknownParameter("'onlyCertainMatch'".into()),
            ),
            (
                "an unknown parameter is not echoed when odd",
                params(json!([patient.clone(), {"name": "山田 太郎", "valueString": "x"}])),
                IdentityError::UnknownParameter("with an invalid name".into()),
            ),
            (
                "a parameter without a name",
                params(json!([patient.clone(), {"valueString": "x"}])),
                IdentityError::UnknownParameter("without a name".into()),
            ),
            (
                "onlyCertainMatches not boolean",
                params(
                    json!([patient.clone(), {"name": "onlyCertainMatches", "valueString": "true"}]),
                ),
                IdentityError::InvalidOnlyCertainMatches,
            ),
        ];
        for (case, body, expected) in cases {
            assert_eq!(parse_match_request(&body), Err(expected), "{case}");
        }
    }

    #[test]
    fn error_messages_and_codes_are_distinct() {
        let errors = [
            IdentityError::NotParameters,
            IdentityError::MissingResource,
            IdentityError::ResourceNotPatient("Practitioner".into()),
            IdentityError::RepeatedParameter("count".into()),
            IdentityError::InvalidOnlyCertainMatches,
            IdentityError::InvalidCount,
            IdentityError::MissingSystem,
            IdentityError::MissingValue,
        ];
        let mut codes: Vec<_> = errors.iter().map(IdentityError::code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
        assert_eq!(
            IdentityError::ResourceNotPatient("Practitioner".into()).to_string(),
            "the $match parameter 'resource' must be a Patient, found Practitioner"
        );
    }

    #[test]
    fn candidate_queries_are_short_and_selective() {
        let got = candidate_queries(&yamada_query());
        let expected: Vec<(String, String)> = [
            ("identifier", "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID|06330015:岡北:１２３:00"),
            ("identifier", "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID|06330015:岡北:123:00"),
            ("identifier", "urn:oid:1.2.392.100495.20.3.51.13310190017|00012345"),
            ("birthdate", "1958-03-12"),
            ("family", "山田"),
            ("family", "ヤマダ"),
            ("phone", "086-234-5678"),
            ("phone", "0862345678"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn candidate_queries_skip_partial_dates_and_odd_json() {
        let q = json!({"resourceType": "Patient", "birthDate": "1958", "name": [{"given": ["太郎"]}],
                       "identifier": {"system": "s", "value": "a|b"}, "telecom": [{"system": "phone", "value": 86}]});
        assert_eq!(
            candidate_queries(&q),
            vec![("identifier".to_string(), "s|a\\|b".to_string())]
        );
        for odd in [
            json!(null),
            json!(3),
            json!({"resourceType": "Observation", "birthDate": "1958-03-12"}),
        ] {
            assert!(candidate_queries(&odd).is_empty(), "{odd}");
        }
    }

    #[test]
    fn pix_identifiers() {
        let ok = [
            (
                "urn:oid:1.2.392.100495.20.3.51.13310190017|00012345",
                ("urn:oid:1.2.392.100495.20.3.51.13310190017", "00012345"),
            ),
            ("  sys|val  ", ("sys", "val")),
            ("sys|a|b", ("sys", "a|b")),
            ("sys|a\\|b", ("sys", "a|b")),
            ("s\\|y|v", ("s|y", "v")),
        ];
        for (text, (system, value)) in ok {
            assert_eq!(
                parse_pix_identifier(text),
                Ok((system.to_string(), value.to_string())),
                "{text}"
            );
        }
        let bad = [
            ("", IdentityError::MissingSystem),
            ("00012345", IdentityError::MissingSystem),
            ("|00012345", IdentityError::MissingSystem),
            ("  |x", IdentityError::MissingSystem),
            ("sys|", IdentityError::MissingValue),
            ("sys|   ", IdentityError::MissingValue),
        ];
        for (text, expected) in bad {
            assert_eq!(parse_pix_identifier(text), Err(expected), "{text}");
        }
    }
}

//! `$match` (IHE ITI-119) scoring. Weights and rules are in the crate docs.

use serde_json::Value;

use crate::link::{link_keys, LinkingRules};
use crate::norm;

/// The match-grade extension on `Bundle.entry.search` (ITI-119).
pub const MATCH_GRADE_EXTENSION_URL: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";

/// IHE ITI-119 (`$match`) grade, serialized as the match-grade extension codes. Ordered best
/// first, so sorting ascending puts certain matches first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchGrade {
    /// The same person (an identifier in common).
    Certain,
    /// Very likely the same person (full name and birth date).
    Probable,
    /// Possibly the same person.
    Possible,
    /// Not the same person (a conflicting birth date or person identifier).
    CertainlyNot,
}

impl MatchGrade {
    /// The code of the match-grade extension (`valueCode`).
    pub fn code(self) -> &'static str {
        match self {
            Self::Certain => "certain",
            Self::Probable => "probable",
            Self::Possible => "possible",
            Self::CertainlyNot => "certainly-not",
        }
    }

    /// Whether a candidate of this grade belongs in a `$match` result (not `certainly-not`).
    pub fn is_candidate(self) -> bool {
        self != Self::CertainlyNot
    }
}

/// How well a candidate matches a `$match` query.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchScore {
    /// `search.score`, 0..=1.
    pub score: f64,
    /// The match-grade extension.
    pub grade: MatchGrade,
    /// The evidence, in words (kinds of evidence and identifier systems, never values).
    pub reasons: Vec<String>,
}

const CERTAIN: u32 = 100;
const CERTAIN_BUT_CONFLICTING: u32 = 90;
const FULL_NAME: u32 = 50;
const FAMILY_NAME: u32 = 20;
const BIRTH_DATE: u32 = 30;
const GENDER: u32 = 10;
const PHONE: u32 = 15;
const ADDRESS: u32 = 10;
const BIRTH_DATE_BOUND_ID: u32 = 30;
const CAP_WITHOUT_NAME_AND_BIRTH_DATE: u32 = 79;
const CAP_WITHOUT_IDENTIFIER: u32 = 94;
const CERTAIN_MIN: u32 = 95;
const PROBABLE_MIN: u32 = 80;
const POSSIBLE_MIN: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agreement {
    Same,
    Conflict,
    Unknown,
}

/// Birth dates agree when equal at the shared precision (`1958` vs `1958-03-12` is unknown,
/// not a conflict); `Same` only for two equal full dates.
fn birth_dates(query: &Value, candidate: &Value) -> Agreement {
    match (
        norm::birth_date_parts(query),
        norm::birth_date_parts(candidate),
    ) {
        (Some(a), Some(b)) => {
            if a.iter().zip(&b).any(|(x, y)| x != y) {
                Agreement::Conflict
            } else if a.len() == 3 && b.len() == 3 {
                Agreement::Same
            } else {
                Agreement::Unknown
            }
        }
        _ => Agreement::Unknown,
    }
}

fn genders(query: &Value, candidate: &Value) -> Agreement {
    match (norm::gender(query), norm::gender(candidate)) {
        (Some(a), Some(b)) if a == b => Agreement::Same,
        (Some(_), Some(_)) => Agreement::Conflict,
        _ => Agreement::Unknown,
    }
}

fn grade_of(points: u32) -> Option<MatchGrade> {
    if points >= CERTAIN_MIN {
        Some(MatchGrade::Certain)
    } else if points >= PROBABLE_MIN {
        Some(MatchGrade::Probable)
    } else if points >= POSSIBLE_MIN {
        Some(MatchGrade::Possible)
    } else {
        None
    }
}

fn result(points: u32, grade: MatchGrade, reasons: Vec<String>) -> MatchScore {
    MatchScore {
        score: f64::from(points.min(100)) / 100.0,
        grade,
        reasons,
    }
}

/// Scores `candidate` against the `query` Patient of a `$match` request; `None` when it is not
/// a candidate. See the crate docs for the evidence, weights and grades. Deterministic; never
/// panics on any JSON (anything that is not a Patient scores `None`).
pub fn score(rules: &LinkingRules, query: &Value, candidate: &Value) -> Option<MatchScore> {
    if !norm::is_patient(query) || !norm::is_patient(candidate) {
        return None;
    }
    let mut reasons = Vec::new();

    // Identifiers.
    let query_ids = norm::identifiers(query);
    let candidate_ids = norm::identifiers(candidate);
    let standalone =
        |system: &str| rules.is_person_system(system) || !rules.is_with_birth_date_system(system);
    let mut shared_systems: Vec<&str> = query_ids
        .iter()
        .filter(|id| standalone(&id.0) && candidate_ids.contains(id))
        .map(|(system, _)| system.as_str())
        .collect();
    shared_systems.dedup();
    for system in &shared_systems {
        reasons.push(format!("identifier shared ({system})"));
    }
    let query_keys = link_keys(rules, query);
    let candidate_keys = link_keys(rules, candidate);
    let key_shared = query_keys.iter().any(|k| candidate_keys.contains(k));
    if key_shared && shared_systems.is_empty() {
        reasons.push("linking identifier shared together with the birth date".to_string());
    }
    let identified = key_shared || !shared_systems.is_empty();

    let birth_date = birth_dates(query, candidate);
    let gender = genders(query, candidate);

    if identified {
        let mut points = CERTAIN;
        if birth_date == Agreement::Conflict {
            reasons.push("birth date conflicts".to_string());
            points = CERTAIN_BUT_CONFLICTING;
        }
        if gender == Agreement::Conflict {
            reasons.push("gender conflicts".to_string());
            points = CERTAIN_BUT_CONFLICTING;
        }
        let grade = grade_of(points)?;
        return Some(result(points, grade, reasons));
    }

    // A person identifier system in which both have values but none in common.
    let person_id_conflict = rules.person_identifier_systems.iter().any(|system| {
        let system = system.trim();
        let values = |ids: &[(String, String)]| -> Vec<String> {
            ids.iter()
                .filter(|(s, _)| s == system)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let (a, b) = (values(&query_ids), values(&candidate_ids));
        !a.is_empty() && !b.is_empty() && !a.iter().any(|v| b.contains(v))
    });

    // Demographics, in a fixed order.
    let mut points = 0;
    let query_names = norm::names(query);
    let candidate_names = norm::names(candidate);
    let full_name = query_names.iter().find(|q| {
        q.full.is_some()
            && candidate_names
                .iter()
                .any(|c| c.full.is_some() && c.full == q.full)
    });
    if let Some(name) = full_name {
        points += FULL_NAME;
        reasons.push(format!("full name matches ({})", name.representation));
    } else if let Some(name) = query_names.iter().find(|q| {
        q.family.is_some()
            && candidate_names
                .iter()
                .any(|c| c.family.is_some() && c.family == q.family)
    }) {
        points += FAMILY_NAME;
        reasons.push(format!("family name matches ({})", name.representation));
    }
    if birth_date == Agreement::Same {
        points += BIRTH_DATE;
        reasons.push("birth date matches".to_string());
    }
    if gender == Agreement::Same {
        points += GENDER;
        reasons.push("gender matches".to_string());
    }
    let candidate_phones = norm::phones(candidate);
    if norm::phones(query)
        .iter()
        .any(|p| candidate_phones.contains(p))
    {
        points += PHONE;
        reasons.push("phone matches".to_string());
    }
    let candidate_addresses = norm::addresses(candidate);
    if let Some(part) = norm::addresses(query).iter().find_map(|q| {
        candidate_addresses
            .iter()
            .find_map(|c| norm::address_match(q, c))
    }) {
        points += ADDRESS;
        reasons.push(format!("address matches ({part})"));
    }
    if birth_date == Agreement::Unknown {
        if let Some((system, _)) = query_ids
            .iter()
            .find(|id| !standalone(&id.0) && candidate_ids.contains(id))
        {
            points += BIRTH_DATE_BOUND_ID;
            reasons.push(format!(
                "identifier shared without a birth date to confirm it ({system})"
            ));
        }
    }

    let mut points = points.min(CAP_WITHOUT_IDENTIFIER);
    if !(full_name.is_some() && birth_date == Agreement::Same) {
        points = points.min(CAP_WITHOUT_NAME_AND_BIRTH_DATE);
    }

    if birth_date == Agreement::Conflict || person_id_conflict {
        if birth_date == Agreement::Conflict {
            reasons.push("birth date conflicts".to_string());
        }
        if person_id_conflict {
            reasons.push("person identifier conflicts".to_string());
        }
        return (points >= POSSIBLE_MIN).then(|| result(0, MatchGrade::CertainlyNot, reasons));
    }
    if gender == Agreement::Conflict {
        reasons.push("gender conflicts".to_string());
        points /= 2;
    }
    let grade = grade_of(points)?;
    Some(result(points, grade, reasons))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::link::{INSURANCE_MEMBER_ID_SYSTEM, REGIONAL_PATIENT_ID_SYSTEM};
    use serde_json::json;

    const REP: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";

    fn name(code: &str, family: &str, given: &str) -> Value {
        json!({"extension": [{"url": REP, "valueCode": code}], "family": family, "given": [given]})
    }

    /// Yamada Taro as a hospital registered him.
    fn yamada() -> Value {
        json!({
            "resourceType": "Patient",
            "identifier": [
                {"system": "urn:oid:1.2.392.100495.20.3.51.13310190017", "value": "00012345"},
                {"system": INSURANCE_MEMBER_ID_SYSTEM, "value": "06330015:岡北:１２３:00"}
            ],
            "name": [name("IDE", "山田", "太郎"), name("SYL", "ヤマダ", "タロウ")],
            "telecom": [{"system": "phone", "value": "086-200-1001"}],
            "gender": "male",
            "birthDate": "1958-03-12",
            "address": [{"line": ["岡山市北区晴れ町１－２－３"], "city": "岡山市北区", "postalCode": "700-0011"}]
        })
    }

    fn patient(fields: Value) -> Value {
        let mut p = json!({"resourceType": "Patient"});
        if let (Some(map), Some(extra)) = (p.as_object_mut(), fields.as_object()) {
            map.extend(extra.clone());
        }
        p
    }

    #[test]
    fn scoring_table() {
        let rules = LinkingRules::default();
        // (case, query, expected grade or None, expected score or NaN for "any")
        let cases: Vec<(&str, Value, Option<MatchGrade>, f64)> = vec![
            (
                "kanji name + birth date + gender",
                patient(
                    json!({"name": [name("IDE", "山田", "太郎")], "birthDate": "1958-03-12", "gender": "male"}),
                ),
                Some(MatchGrade::Probable),
                0.9,
            ),
            (
                "kanji name written with a space in text only + birth date",
                patient(json!({"name": [{"text": "山田　太郎"}], "birthDate": "1958-03-12"})),
                Some(MatchGrade::Probable),
                0.8,
            ),
            (
                "half-width kana name only + birth date + gender",
                patient(
                    json!({"name": [name("SYL", "ﾔﾏﾀﾞ", "ﾀﾛｳ")], "birthDate": "1958-03-12", "gender": "male"}),
                ),
                Some(MatchGrade::Probable),
                0.9,
            ),
            (
                "everything but an identifier stays below certain",
                patient(
                    json!({"name": [name("SYL", "ヤマダ", "タロウ")], "birthDate": "1958-03-12", "gender": "male",
                    "telecom": [{"system": "phone", "value": "+81 86 200 1001"}],
                    "address": [{"postalCode": "７００００１１"}]}),
                ),
                Some(MatchGrade::Probable),
                0.94,
            ),
            (
                "birth date + gender + family name",
                patient(
                    json!({"name": [name("IDE", "山田", "花子")], "birthDate": "1958-03-12", "gender": "male"}),
                ),
                Some(MatchGrade::Possible),
                0.6,
            ),
            (
                "birth date + gender + phone",
                patient(json!({"birthDate": "1958-03-12", "gender": "male",
                    "telecom": [{"system": "phone", "value": "0862001001"}]})),
                Some(MatchGrade::Possible),
                0.55,
            ),
            (
                "birth date + gender + address line",
                patient(json!({"birthDate": "1958-03-12", "gender": "male",
                    "address": [{"line": ["岡山市北区晴れ町1-2-3"]}]})),
                Some(MatchGrade::Possible),
                0.5,
            ),
            (
                "full name without birth date",
                patient(json!({"name": [name("IDE", "山田", "太郎")]})),
                Some(MatchGrade::Possible),
                0.5,
            ),
            (
                "birth date + gender alone is not a candidate",
                patient(json!({"birthDate": "1958-03-12", "gender": "male"})),
                None,
                f64::NAN,
            ),
            (
                "same name, different birth date",
                patient(
                    json!({"name": [name("IDE", "山田", "太郎")], "birthDate": "1958-03-13", "gender": "male",
                    "telecom": [{"system": "phone", "value": "0862001001"}]}),
                ),
                Some(MatchGrade::CertainlyNot),
                0.0,
            ),
            (
                "different birth date, little else: not a candidate",
                patient(json!({"name": [name("IDE", "山田", "次郎")], "birthDate": "1960-01-01"})),
                None,
                f64::NAN,
            ),
            (
                "partial birth date in the same year is no conflict",
                patient(
                    json!({"name": [name("IDE", "山田", "太郎")], "birthDate": "1958", "gender": "male"}),
                ),
                Some(MatchGrade::Possible),
                0.6,
            ),
            (
                "gender conflict halves",
                patient(
                    json!({"name": [name("IDE", "山田", "太郎")], "birthDate": "1958-03-12", "gender": "female"}),
                ),
                None,
                f64::NAN,
            ),
            (
                "facility identifier shared",
                patient(
                    json!({"identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.13310190017", "value": " 00012345 "}]}),
                ),
                Some(MatchGrade::Certain),
                1.0,
            ),
            (
                "insurance ID (half-width) with birth date",
                patient(
                    json!({"identifier": [{"system": INSURANCE_MEMBER_ID_SYSTEM, "value": "06330015:岡北:123:00"}],
                    "birthDate": "1958-03-12"}),
                ),
                Some(MatchGrade::Certain),
                1.0,
            ),
            (
                "insurance ID with another birth date: a family member",
                patient(
                    json!({"identifier": [{"system": INSURANCE_MEMBER_ID_SYSTEM, "value": "06330015:岡北:123:00"}],
                    "name": [name("IDE", "山田", "花子")], "birthDate": "1960-07-01", "gender": "female"}),
                ),
                None,
                f64::NAN,
            ),
            (
                "insurance ID without birth date + full name",
                patient(
                    json!({"identifier": [{"system": INSURANCE_MEMBER_ID_SYSTEM, "value": "06330015:岡北:123:00"}],
                    "name": [name("SYL", "ヤマダ", "タロウ")]}),
                ),
                Some(MatchGrade::Possible),
                0.79,
            ),
            (
                "identifier shared but birth date conflicts",
                patient(
                    json!({"identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.13310190017", "value": "00012345"}],
                    "birthDate": "1958-12-03"}),
                ),
                Some(MatchGrade::Probable),
                0.9,
            ),
            ("empty query", patient(json!({})), None, f64::NAN),
        ];
        let candidate = yamada();
        for (case, query, grade, expected) in cases {
            let got = score(&rules, &query, &candidate);
            assert_eq!(got.as_ref().map(|s| s.grade), grade, "{case}: {got:?}");
            if let Some(got) = got {
                assert!((got.score - expected).abs() < 1e-9, "{case}: {got:?}");
                assert!(!got.reasons.is_empty(), "{case}");
                assert!((0.0..=1.0).contains(&got.score));
            }
        }
    }

    #[test]
    fn twins_are_possible_at_most() {
        let rules = LinkingRules::default();
        let twin = |given: &str, kana: &str| {
            json!({
                "resourceType": "Patient",
                "name": [name("IDE", "佐藤", given), name("SYL", "サトウ", kana)],
                "gender": "female",
                "birthDate": "2001-04-01",
                "telecom": [{"system": "phone", "value": "0862000000"}],
                "address": [{"postalCode": "7000011", "line": ["晴れ町1-2-3"]}]
            })
        };
        let got = score(&rules, &twin("葵", "アオイ"), &twin("茜", "アカネ")).unwrap();
        assert_eq!(got.grade, MatchGrade::Possible, "{got:?}");
        assert!(got.score < 0.8);
    }

    #[test]
    fn regional_id_conflict_is_certainly_not() {
        let rules = LinkingRules::default();
        let mut candidate = yamada();
        candidate["identifier"] = json!([{"system": REGIONAL_PATIENT_ID_SYSTEM, "value": "R-1"}]);
        let query = patient(json!({
            "identifier": [{"system": REGIONAL_PATIENT_ID_SYSTEM, "value": "R-2"}],
            "name": [name("IDE", "山田", "太郎")], "birthDate": "1958-03-12"
        }));
        let got = score(&rules, &query, &candidate).unwrap();
        assert_eq!(got.grade, MatchGrade::CertainlyNot);
        assert!(got
            .reasons
            .contains(&"person identifier conflicts".to_string()));
        assert!(!got.grade.is_candidate());
    }

    #[test]
    fn reasons_carry_no_patient_data() {
        let rules = LinkingRules::default();
        let got = score(&rules, &yamada(), &yamada()).unwrap();
        assert_eq!(got.grade, MatchGrade::Certain);
        for reason in &got.reasons {
            for secret in ["00012345", "山田", "1958", "0862001001", "06330015"] {
                assert!(!reason.contains(secret), "{reason}");
            }
        }
    }

    #[test]
    fn odd_json_scores_none() {
        let rules = LinkingRules::default();
        for odd in [
            json!(null),
            json!([1, 2]),
            json!({"resourceType": "Observation"}),
            json!({"resourceType": "Patient", "name": "山田", "birthDate": 1958, "telecom": {"value": 1},
                   "address": "x", "gender": ["male"], "identifier": [{"value": "00012345"}]}),
        ] {
            assert_eq!(score(&rules, &odd, &yamada()), None, "{odd}");
            assert_eq!(score(&rules, &yamada(), &odd), None, "{odd}");
        }
    }

    #[test]
    fn grades_have_iti119_codes_and_order() {
        assert_eq!(MatchGrade::Certain.code(), "certain");
        assert_eq!(MatchGrade::Probable.code(), "probable");
        assert_eq!(MatchGrade::Possible.code(), "possible");
        assert_eq!(MatchGrade::CertainlyNot.code(), "certainly-not");
        assert!(MatchGrade::Certain < MatchGrade::Probable);
        assert!(MatchGrade::Possible < MatchGrade::CertainlyNot);
    }
}

//! Deterministic linking: link keys of a Patient and the persons they form.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::norm;

/// The network's regional patient ID (PIX style): one value, one person network-wide.
pub const REGIONAL_PATIENT_ID_SYSTEM: &str = "urn:renkei:regional-patient-id";
/// The insurance member ID (保険者番号:記号:番号:枝番) of JP-CLINS: one person together with
/// the birth date.
pub const INSURANCE_MEMBER_ID_SYSTEM: &str =
    "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID";

/// Which identifiers make two Patient records one person (deterministic linking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkingRules {
    /// Systems whose value alone identifies one person network-wide (a regional patient ID).
    pub person_identifier_systems: Vec<String>,
    /// Systems that identify a person together with the birth date (insurance member ID).
    pub with_birth_date_systems: Vec<String>,
}

impl Default for LinkingRules {
    fn default() -> Self {
        Self {
            person_identifier_systems: vec![REGIONAL_PATIENT_ID_SYSTEM.to_string()],
            with_birth_date_systems: vec![INSURANCE_MEMBER_ID_SYSTEM.to_string()],
        }
    }
}

impl LinkingRules {
    /// Whether `system` identifies a person on its own.
    pub fn is_person_system(&self, system: &str) -> bool {
        self.person_identifier_systems
            .iter()
            .any(|s| s.trim() == system)
    }

    /// Whether `system` identifies a person together with the birth date.
    pub fn is_with_birth_date_system(&self, system: &str) -> bool {
        self.with_birth_date_systems
            .iter()
            .any(|s| s.trim() == system)
    }
}

const ID_PREFIX: &str = "id";
const ID_BIRTH_DATE_PREFIX: &str = "idbd";

/// Percent-escapes the key separator `|` (and `%` itself).
fn escape(part: &str) -> String {
    part.replace('%', "%25").replace('|', "%7C")
}

fn unescape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    let mut rest = part;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("%7C") {
            out.push('|');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("%25") {
            out.push('%');
            rest = after;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The link keys of a Patient resource (JSON): `id|<system>|<folded value>` for each
/// identifier of a person-identifier system, `idbd|<system>|<folded value>|<birthDate>` for
/// each identifier of a with-birth-date system when `birthDate` is a full date. Values are
/// trimmed and NFKC-folded ([`renkei_search::fold`]); `|` and `%` are percent-escaped.
///
/// Inactive records (`active: false`), identifiers whose `period.end` is past and `use: old`
/// identifiers **still link**: identity does not expire, and keys depend on the record alone
/// (no clock), so a link never changes while no record changes (see the crate docs).
///
/// Sorted, deduplicated; empty for anything that is not a Patient. Never panics.
pub fn link_keys(rules: &LinkingRules, patient: &Value) -> Vec<String> {
    if !norm::is_patient(patient) {
        return Vec::new();
    }
    let birth_date = norm::full_birth_date(patient);
    let mut keys = BTreeSet::new();
    for (system, value) in norm::identifiers(patient) {
        if rules.is_person_system(&system) {
            keys.insert(format!(
                "{ID_PREFIX}|{}|{}",
                escape(&system),
                escape(&value)
            ));
        }
        if let (true, Some(date)) = (rules.is_with_birth_date_system(&system), &birth_date) {
            keys.insert(format!(
                "{ID_BIRTH_DATE_PREFIX}|{}|{}|{date}",
                escape(&system),
                escape(&value)
            ));
        }
    }
    keys.into_iter().collect()
}

/// A key split into (system, value, birth date).
fn parse_key(key: &str) -> Option<(String, String, Option<String>)> {
    let parts: Vec<&str> = key.split('|').collect();
    match parts.as_slice() {
        [ID_PREFIX, system, value] => Some((unescape(system), unescape(value), None)),
        [ID_BIRTH_DATE_PREFIX, system, value, date] => {
            Some((unescape(system), unescape(value), Some((*date).to_string())))
        }
        _ => None,
    }
}

fn system_label(system: &str) -> String {
    match system {
        REGIONAL_PATIENT_ID_SYSTEM => "regional patient ID".to_string(),
        INSURANCE_MEMBER_ID_SYSTEM => "insurance member ID".to_string(),
        other => format!("identifier ({other})"),
    }
}

fn describe_with(key: &str, show: impl Fn(&str) -> String) -> String {
    match parse_key(key) {
        Some((system, value, date)) => {
            let mut text = format!("{} {}", system_label(&system), show(&value));
            if let Some(date) = date {
                text.push_str(" with birth date ");
                text.push_str(&date);
            }
            text
        }
        None => "unrecognized link key".to_string(),
    }
}

/// A human-readable explanation of a link key for operators, e.g. "insurance member ID
/// 06330015:岡北:123:00 with birth date 1958-03-12". It contains the identifier value and
/// birth date: patient data, for an administrator's screen, never for the log (use
/// [`describe_key_redacted`] there).
pub fn describe_key(key: &str) -> String {
    describe_with(key, str::to_string)
}

/// [`describe_key`] with the value cut to its first four characters and the birth date
/// hidden ("insurance member ID 0633… with birth date …"), for logs and audit summaries.
pub fn describe_key_redacted(key: &str) -> String {
    match parse_key(key) {
        Some((system, value, date)) => {
            let head: String = value.chars().take(4).collect();
            let mut text = format!("{} {head}…", system_label(&system));
            if date.is_some() {
                text.push_str(" with birth date …");
            }
            text
        }
        None => "unrecognized link key".to_string(),
    }
}

/// A Patient's birth date when it is a full date (`YYYY-MM-DD`), as link keys compare it.
pub fn full_birth_date(patient: &Value) -> Option<String> {
    norm::full_birth_date(patient)
}

/// `birthDate` of any valid precision, as linking compares it (see [`persons`]).
pub fn birth_date(patient: &Value) -> Option<String> {
    norm::birth_date(patient)
}

/// Connected components (persons) over `nodes` joined by `edges`, ignoring any edge listed in
/// `suppressed` (unordered pairs: `(a, b)` suppresses `(b, a)` too). Every node appears in
/// exactly one component; components and their members are sorted; edges naming unknown
/// nodes add them. Duplicate nodes are counted once.
pub fn components(
    nodes: &[String],
    edges: &[(String, String)],
    suppressed: &[(String, String)],
) -> Vec<Vec<String>> {
    persons(nodes, &BTreeMap::new(), edges, &[], &[], suppressed)
}

/// [`components`] in which shared keys (`key_edges`) never make one person of records with
/// different birth dates, directly or through other records: a key edge joins two groups
/// only when their known birth dates agree (or one group has none). A date given to the year
/// or month (`birth_dates` holds them as written, `1970`, `1970-06`) agrees with the dates it
/// contains and contradicts the others. Without this, one
/// record carrying the regional IDs (or insurance keys) of two people would merge them, and
/// each one's consent would open the other's data. An administrator's explicit link
/// (`linked`) joins whatever the birth dates, and the person so joined takes no further
/// record through shared keys. A merge (`merged`: duplicate, survivor) joins whatever the
/// dates too, the person keeping the survivor's date, so it takes the records the survivor
/// would. Two records an administrator unlinked (`suppressed`) are never joined through shared
/// keys, however many other records share them: a record sharing a key with both joins the
/// person of the first edge, and the two people stay two (only an administrator's link joins
/// them again). Edges are taken in sorted order, so the result does not depend on the order
/// they were found in.
pub fn persons(
    nodes: &[String],
    birth_dates: &BTreeMap<String, String>,
    key_edges: &[(String, String)],
    linked: &[(String, String)],
    merged: &[(String, String)],
    suppressed: &[(String, String)],
) -> Vec<Vec<String>> {
    // A group's birth date: `None` unknown, `Some(None)` several (an administrator joined
    // them), `Some(Some(d))` one.
    type GroupDate = Option<Option<String>>;
    fn merged_date(a: &GroupDate, b: &GroupDate) -> Option<GroupDate> {
        match (a, b) {
            (None, other) | (other, None) => Some(other.clone()),
            // A partial date agrees with the dates it contains (`1970` with `1970-01-01`); the
            // group then has the more precise one, which later records must agree with.
            (Some(Some(x)), Some(Some(y))) if y.starts_with(x.as_str()) => Some(b.clone()),
            (Some(Some(x)), Some(Some(y))) if x.starts_with(y.as_str()) => Some(a.clone()),
            _ => None,
        }
    }
    let unordered = |a: &String, b: &String| {
        if a <= b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        }
    };
    let suppressed: BTreeSet<(String, String)> =
        suppressed.iter().map(|(a, b)| unordered(a, b)).collect();
    let kept = |edges: &[(String, String)]| -> Vec<(String, String)> {
        let set: BTreeSet<(String, String)> = edges
            .iter()
            .map(|(a, b)| unordered(a, b))
            .filter(|pair| !suppressed.contains(pair))
            .collect();
        set.into_iter().collect()
    };
    let (forced, by_key) = (kept(linked), kept(key_edges));
    // A merge keeps its direction: the duplicate joins the survivor's person.
    let merges: Vec<&(String, String)> = merged
        .iter()
        .filter(|(duplicate, survivor)| !suppressed.contains(&unordered(duplicate, survivor)))
        .collect();

    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut parent: Vec<usize> = Vec::new();
    let mut dates: Vec<GroupDate> = Vec::new();
    let mut add = |name: &String, parent: &mut Vec<usize>, dates: &mut Vec<GroupDate>| -> usize {
        *index.entry(name.clone()).or_insert_with(|| {
            parent.push(parent.len());
            dates.push(birth_dates.get(name).map(|d| Some(d.clone())));
            parent.len() - 1
        })
    };
    for node in nodes {
        add(node, &mut parent, &mut dates);
    }
    for (a, b) in forced.iter().chain(&by_key).chain(merges.iter().copied()) {
        add(a, &mut parent, &mut dates);
        add(b, &mut parent, &mut dates);
    }
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    // A duplicate merged into its survivor takes the survivor's birth date where the two
    // disagree (the duplicate's was mistyped, or it would not be one), so the survivor stays
    // the person it was: a merge must not split it from the other facilities' records of it.
    for (duplicate, survivor) in merges {
        let (Some(&id), Some(&is)) = (index.get(duplicate), index.get(survivor)) else {
            continue;
        };
        let (rd, rs) = (root(&mut parent, id), root(&mut parent, is));
        if rd == rs {
            continue;
        }
        let date = merged_date(&dates[rs], &dates[rd]).unwrap_or_else(|| dates[rs].clone());
        let (keep, gone) = (rd.min(rs), rd.max(rs));
        parent[gone] = keep;
        dates[keep] = date;
    }
    // The records of an unlink, as index pairs: shared keys never put them in one person.
    let kept_apart: Vec<(usize, usize)> = suppressed
        .iter()
        .filter_map(|(a, b)| Some((*index.get(a)?, *index.get(b)?)))
        .collect();
    let mut join = |a: &String, b: &String, force: bool, parent: &mut Vec<usize>| {
        let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) else {
            return;
        };
        let (ra, rb) = (root(parent, ia), root(parent, ib));
        if ra == rb {
            return;
        }
        let separates_unlinked = |parent: &mut Vec<usize>| {
            kept_apart.iter().any(|&(x, y)| {
                let (rx, ry) = (root(parent, x), root(parent, y));
                (rx, ry) == (ra, rb) || (rx, ry) == (rb, ra)
            })
        };
        if !force && separates_unlinked(parent) {
            return;
        }
        let date = match merged_date(&dates[ra], &dates[rb]) {
            Some(date) => date,
            None if force => Some(None),
            None => return,
        };
        let (keep, gone) = (ra.min(rb), ra.max(rb));
        parent[gone] = keep;
        dates[keep] = date;
    };
    for (a, b) in &forced {
        join(a, b, true, &mut parent);
    }
    for (a, b) in &by_key {
        join(a, b, false, &mut parent);
    }
    let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (name, i) in &index {
        let r = root(&mut parent, *i);
        groups.entry(r).or_default().push(name.clone());
    }
    let mut out: Vec<Vec<String>> = groups.into_values().collect();
    // Members come out sorted (the index is a BTreeMap); sort the components by first member.
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn shared_keys_do_not_join_different_birth_dates_but_administrators_may() {
        let s = |v: &str| v.to_string();
        let nodes = [s("p"), s("bridge-p"), s("bridge-q"), s("q")];
        let dates = [
            ("p", "1960-01-02"),
            ("bridge-p", "1960-01-02"),
            ("bridge-q", "1975-03-03"),
            ("q", "1975-03-03"),
        ]
        .into_iter()
        .map(|(a, b)| (s(a), s(b)))
        .collect();
        let keys = [
            (s("p"), s("bridge-p")),
            (s("bridge-p"), s("bridge-q")),
            (s("bridge-q"), s("q")),
        ];
        let persons = super::persons(&nodes, &dates, &keys, &[], &[], &[]);
        assert_eq!(
            persons,
            vec![vec![s("bridge-p"), s("p")], vec![s("bridge-q"), s("q")]]
        );
        // A record without a birth date joins either side, but never both.
        let mut no_date = dates.clone();
        no_date.remove("bridge-p");
        no_date.remove("bridge-q");
        let keys = [(s("p"), s("bridge")), (s("bridge"), s("q"))];
        let nodes = [s("p"), s("bridge"), s("q")];
        let persons = super::persons(&nodes, &no_date, &keys, &[], &[], &[]);
        assert_eq!(persons.len(), 2, "{persons:?}");
        // An administrator's link joins whatever the dates.
        let linked = [(s("p"), s("q"))];
        let persons = super::persons(&nodes, &no_date, &[], &linked, &[], &[]);
        assert!(persons.contains(&vec![s("p"), s("q")]), "{persons:?}");
        // But a person so joined takes no record of any date through shared keys: a forced
        // link of two people's records (a wrong merge) would otherwise draw every other
        // facility's record of either one into the same person.
        let nodes = [s("p"), s("q"), s("q-elsewhere")];
        let mut with_elsewhere = dates.clone();
        with_elsewhere.insert(s("q-elsewhere"), s("1975-03-03"));
        let keys = [(s("q"), s("q-elsewhere"))];
        let persons = super::persons(&nodes, &with_elsewhere, &keys, &linked, &[], &[]);
        assert_eq!(
            persons,
            vec![vec![s("p"), s("q")], vec![s("q-elsewhere")]],
            "{persons:?}"
        );
    }

    #[test]
    fn a_merged_duplicate_takes_the_survivors_person_without_splitting_it() {
        let s = |v: &str| v.to_string();
        let nodes = [s("survivor"), s("elsewhere"), s("duplicate")];
        let dates = [
            ("survivor", "1949-08-25"),
            ("elsewhere", "1949-08-25"),
            ("duplicate", "1990-01-01"),
        ]
        .into_iter()
        .map(|(a, b)| (s(a), s(b)))
        .collect();
        let keys = [(s("survivor"), s("elsewhere"))];
        let merged = [(s("duplicate"), s("survivor"))];
        let persons = super::persons(&nodes, &dates, &keys, &[], &merged, &[]);
        assert_eq!(
            persons,
            vec![vec![s("duplicate"), s("elsewhere"), s("survivor")]],
            "{persons:?}"
        );
        // An unlink of the two undoes the merge.
        let unlinked = [(s("survivor"), s("duplicate"))];
        let persons = super::persons(&nodes, &dates, &keys, &[], &merged, &unlinked);
        assert_eq!(persons.len(), 2, "{persons:?}");
    }

    #[test]
    fn a_partial_birth_date_agrees_only_with_the_dates_it_contains() {
        let s = |v: &str| v.to_string();
        let nodes = [s("t1"), s("t5"), s("t6"), s("t7")];
        let dates = [
            ("t1", "1970-01-01"),
            ("t5", "1970"),
            ("t6", "1975-06"),
            ("t7", "1970-02"),
        ]
        .into_iter()
        .map(|(a, b)| (s(a), s(b)))
        .collect();
        // One regional id on all four.
        let keys = [
            (s("t1"), s("t5")),
            (s("t5"), s("t6")),
            (s("t6"), s("t7")),
            (s("t1"), s("t7")),
        ];
        let persons = super::persons(&nodes, &dates, &keys, &[], &[], &[]);
        assert_eq!(
            persons,
            vec![vec![s("t1"), s("t5")], vec![s("t6")], vec![s("t7")]],
            "{persons:?}"
        );
        let patient = |date: &str| json!({"resourceType": "Patient", "birthDate": date});
        assert_eq!(crate::birth_date(&patient("1970")), Some(s("1970")));
        assert_eq!(crate::birth_date(&patient("1975-06")), Some(s("1975-06")));
        assert_eq!(crate::birth_date(&patient("1975-13")), None);
        assert_eq!(crate::birth_date(&patient("2020-02-30")), None);
    }

    use super::*;
    use serde_json::json;

    const DEMO_PATIENTS: &str = include_str!("../../../fixtures/demo/03-patients.json");

    fn demo_patient(id: &str) -> Value {
        let bundle: Value = serde_json::from_str(DEMO_PATIENTS).unwrap();
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .find(|r| r["id"] == id)
            .unwrap()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn demo_patients_have_insurance_keys() {
        let rules = LinkingRules::default();
        let cases = [
            (
                "pat-yamada-taro",
                "idbd|http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID|06330015:岡北:123:00|1958-03-12",
            ),
            (
                "pat-suzuki-hanako",
                "idbd|http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID|39330023:倉:456:00|1949-08-25",
            ),
            (
                "pat-takahashi-ichiro",
                "idbd|http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID|01330031:岡南:789:01|1972-11-03",
            ),
            (
                "pat-ito-sakura",
                "idbd|http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID|06330047:倉西:101:02|1990-05-17",
            ),
        ];
        for (id, key) in cases {
            assert_eq!(link_keys(&rules, &demo_patient(id)), vec![key], "{id}");
        }
    }

    #[test]
    fn full_width_and_half_width_digits_give_one_key() {
        let rules = LinkingRules::default();
        let hospital = demo_patient("pat-yamada-taro");
        let clinic = json!({
            "resourceType": "Patient",
            "identifier": [
                {"system": "urn:oid:1.2.392.100495.20.3.51.19999999999", "value": "A-77"},
                {"system": INSURANCE_MEMBER_ID_SYSTEM, "value": "  06330015:岡北:123:00 "}
            ],
            "birthDate": "1958-03-12"
        });
        assert_eq!(link_keys(&rules, &hospital), link_keys(&rules, &clinic));
        assert_eq!(link_keys(&rules, &clinic).len(), 1);
    }

    #[test]
    fn regional_id_links_alone_and_insurance_needs_a_full_birth_date() {
        let rules = LinkingRules::default();
        let patient = json!({
            "resourceType": "Patient",
            "active": false,
            "identifier": [
                {"system": REGIONAL_PATIENT_ID_SYSTEM, "value": "ＲＰ-0001",
                 "period": {"end": "2001-01-01"}, "use": "old"},
                {"system": INSURANCE_MEMBER_ID_SYSTEM, "value": "06330015:岡北:123:00"}
            ],
            "birthDate": "1958-03"
        });
        // Inactive and expired still link; a partial birth date makes no insurance key.
        assert_eq!(
            link_keys(&rules, &patient),
            vec!["id|urn:renkei:regional-patient-id|rp-0001"]
        );
    }

    #[test]
    fn no_keys_without_configured_identifiers() {
        let rules = LinkingRules::default();
        let patient = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.13310190017", "value": "00012345"}],
            "birthDate": "1958-03-12"
        });
        assert!(link_keys(&rules, &patient).is_empty());
        let none = LinkingRules {
            person_identifier_systems: vec![],
            with_birth_date_systems: vec![],
        };
        assert!(link_keys(&none, &demo_patient("pat-yamada-taro")).is_empty());
    }

    #[test]
    fn odd_json_never_panics_and_gives_no_keys() {
        let rules = LinkingRules::default();
        let cases = [
            json!(null),
            json!(42),
            json!("Patient"),
            json!([]),
            json!({"resourceType": "Observation",
                   "identifier": [{"system": REGIONAL_PATIENT_ID_SYSTEM, "value": "x"}]}),
            json!({"resourceType": "Patient", "identifier": "not an array"}),
            json!({"resourceType": "Patient", "identifier": [1, null, [], {"system": 3, "value": "x"}]}),
            json!({"resourceType": "Patient",
                   "identifier": [{"system": INSURANCE_MEMBER_ID_SYSTEM, "value": 123}],
                   "birthDate": "1958-03-12"}),
            json!({"resourceType": "Patient",
                   "identifier": [{"system": INSURANCE_MEMBER_ID_SYSTEM, "value": "123"}],
                   "birthDate": "1958"}),
            json!({"resourceType": "Patient",
                   "identifier": [{"system": INSURANCE_MEMBER_ID_SYSTEM, "value": "123"}],
                   "birthDate": "1958-02-30"}),
            json!({"resourceType": "Patient",
                   "identifier": [{"system": INSURANCE_MEMBER_ID_SYSTEM, "value": "123"}],
                   "birthDate": 19580312}),
            json!({"resourceType": "Patient",
                   "identifier": [{"system": REGIONAL_PATIENT_ID_SYSTEM, "value": "   "}]}),
        ];
        for case in cases {
            assert!(link_keys(&rules, &case).is_empty(), "{case}");
        }
    }

    #[test]
    fn separators_inside_values_are_escaped_and_described() {
        let rules = LinkingRules::default();
        let patient = json!({
            "identifier": [{"system": REGIONAL_PATIENT_ID_SYSTEM, "value": "a|b%c"}]
        });
        let keys = link_keys(&rules, &patient);
        assert_eq!(keys, vec!["id|urn:renkei:regional-patient-id|a%7Cb%25c"]);
        assert_eq!(describe_key(&keys[0]), "regional patient ID a|b%c");
    }

    #[test]
    fn keys_are_described_for_operators() {
        let rules = LinkingRules::default();
        let key = &link_keys(&rules, &demo_patient("pat-yamada-taro"))[0];
        assert_eq!(
            describe_key(key),
            "insurance member ID 06330015:岡北:123:00 with birth date 1958-03-12"
        );
        assert_eq!(
            describe_key_redacted(key),
            "insurance member ID 0633… with birth date …"
        );
        assert_eq!(
            describe_key("id|urn:example:mrn|42"),
            "identifier (urn:example:mrn) 42"
        );
        assert_eq!(describe_key("nonsense"), "unrecognized link key");
        assert_eq!(describe_key("id|only-two"), "unrecognized link key");
    }

    #[test]
    fn components_table() {
        struct Case {
            name: &'static str,
            nodes: &'static [&'static str],
            edges: &'static [(&'static str, &'static str)],
            suppressed: &'static [(&'static str, &'static str)],
            expected: &'static [&'static [&'static str]],
        }
        let cases = [
            Case {
                name: "chain",
                nodes: &["a", "b", "c"],
                edges: &[("a", "b"), ("b", "c")],
                suppressed: &[],
                expected: &[&["a", "b", "c"]],
            },
            Case {
                name: "chain, b–c suppressed",
                nodes: &["a", "b", "c"],
                edges: &[("a", "b"), ("b", "c")],
                suppressed: &[("b", "c")],
                expected: &[&["a", "b"], &["c"]],
            },
            Case {
                name: "suppression is unordered",
                nodes: &["a", "b", "c"],
                edges: &[("a", "b"), ("b", "c")],
                suppressed: &[("c", "b")],
                expected: &[&["a", "b"], &["c"]],
            },
            Case {
                name: "another path does not join what an unlink keeps apart",
                nodes: &["a", "b", "c"],
                edges: &[("a", "b"), ("b", "c"), ("a", "c")],
                suppressed: &[("b", "c")],
                expected: &[&["a", "b"], &["c"]],
            },
            Case {
                name: "a third record sharing the key of both joins only the first",
                nodes: &["a", "b", "c"],
                edges: &[("c", "a"), ("c", "b")],
                suppressed: &[("a", "b")],
                expected: &[&["a", "c"], &["b"]],
            },
            Case {
                name: "nor a chain of records sharing keys",
                nodes: &["a", "b", "c", "d"],
                edges: &[("a", "c"), ("c", "d"), ("d", "b")],
                suppressed: &[("a", "b")],
                expected: &[&["a", "c"], &["b", "d"]],
            },
            Case {
                name: "isolated nodes, duplicates, unknown edge nodes, self edge",
                nodes: &["z", "x", "x", "y"],
                edges: &[("y", "w"), ("z", "z")],
                suppressed: &[("q", "r")],
                expected: &[&["w", "y"], &["x"], &["z"]],
            },
            Case {
                name: "empty",
                nodes: &[],
                edges: &[],
                suppressed: &[],
                expected: &[],
            },
        ];
        for case in cases {
            let got = components(&s(case.nodes), &pairs(case.edges), &pairs(case.suppressed));
            let expected: Vec<Vec<String>> = case.expected.iter().map(|c| s(c)).collect();
            assert_eq!(got, expected, "{}", case.name);
        }
    }
}

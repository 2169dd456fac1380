//! Search cross-checked against an independent reference evaluator on Synthea data.
//!
//! The Synthea directory bundles (Organizations, Practitioners) and eight patient bundles are
//! loaded through `process_bundle` on a SQLite file and on a fresh PostgreSQL database (admin
//! URL from RENKEI_TEST_PG_URL, default postgres://postgres@127.0.0.1:5432/test;
//! `RENKEI_TEST_BACKENDS=sqlite` or `=postgres` restricts explicitly). Every stored resource is
//! read back into memory, and each query's answer is computed a second time by small direct
//! evaluators written here over that JSON (never through `renkei_search::extract`): result
//! sets over all pages (one large page, and `_count=7` pages followed through the keyset cursor
//! with no duplicates), `_total=accurate`, `_summary=count`, `_include`/`_revinclude` sets and
//! `_sort` sequences (ties broken by `rid` ascending, as `docs/SEARCH.md` documents).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, NaiveDate};
use renkei_repository::{Repository, WriteContext};
use renkei_search::plan::{Cursor, SearchPlan};
use renkei_store::{SearchPage, Visibility};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Patient bundles chosen for variety: two Abbotts and two Kutches (shared family names), an
/// accented family (Ordóñez) and given name (Jesús), a patient with two names (Razo/Laureano,
/// four active MedicationRequests), and one with seven MedicationRequests (Kihn).
const PATIENT_BUNDLES: &[&str] = &[
    "Barney_Abbott_3f228315-d2de-4292-a56a-b7c120c2875d.json",
    "Geoffrey_Abbott_73a7d6b7-0310-4fff-9b0b-7891a5e390f5.json",
    "Bernardo_Ordonez_ee5ce8e4-160e-4265-88ea-a2ebf4e2dfa9.json",
    "George_Kutch_7b02ca1b-7983-47e3-9206-a50bbfb1b386.json",
    "Zachary_Kutch_01396393-ed81-4f7f-a073-553cb407837f.json",
    "Maria_Luisa_Razo_d060a28c-4e03-4435-8b2e-1cbfa38ca43b.json",
    "Rufus_Kihn_6b950b05-7dbf-450f-bca9-f05acff7a452.json",
    "Jesus_Alvarez_c0580b5a-6fc2-4b72-b691-57a71afb5597.json",
];

const DIRECTORY_BUNDLES: &[&str] = &[
    "directory/hospitalInformation1559319163815.json",
    "directory/practitionerInformation1559319163815.json",
];

type Key = (String, String);

// ---------------------------------------------------------------------------------------------
// Backends

mod common;
use common::{backend_selected, plan, Db};

fn sqlite() -> Db {
    common::sqlite("crosscheck")
}

fn postgres() -> Db {
    common::postgres("crosscheck")
}

// ---------------------------------------------------------------------------------------------
// Loading: every stored resource read back into memory

struct Data {
    resources: BTreeMap<Key, Value>,
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/synthea")
}

fn load(repo: &Repository) -> Data {
    let mut resources = BTreeMap::new();
    for file in DIRECTORY_BUNDLES.iter().chain(PATIENT_BUNDLES) {
        let path = fixtures().join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("fixture {} is missing: {e}", path.display()));
        let bundle: Value = serde_json::from_str(&text).unwrap();
        let response = repo
            .process_bundle(
                &bundle,
                &WriteContext::default(),
                false,
                &renkei_repository::no_commit_hook,
            )
            .unwrap_or_else(|e| panic!("loading {file}: {e}"));
        for entry in response["entry"].as_array().unwrap() {
            let location = entry["response"]["location"].as_str().unwrap();
            let mut parts = location.split('/');
            let (res_type, id) = (parts.next().unwrap(), parts.next().unwrap());
            let stored = repo.read(res_type, id).unwrap().value().unwrap();
            resources.insert((res_type.to_string(), id.to_string()), stored);
        }
    }
    assert!(resources.len() > 1000, "only {} resources", resources.len());
    Data { resources }
}

// ---------------------------------------------------------------------------------------------
// Reference evaluators: plain JSON walking, nothing from the engine

impl Data {
    fn of_type<'a>(&'a self, res_type: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> {
        self.resources
            .iter()
            .filter(move |((t, _), _)| t == res_type)
            .map(|((_, id), v)| (id.as_str(), v))
    }

    fn select(&self, res_type: &str, pred: impl Fn(&Value) -> bool) -> BTreeSet<String> {
        self.of_type(res_type)
            .filter(|(_, v)| pred(v))
            .map(|(id, _)| id.to_string())
            .collect()
    }

    fn get(&self, reference: &str) -> Option<&Value> {
        let (t, id) = reference.split_once('/')?;
        self.resources.get(&(t.to_string(), id.to_string()))
    }
}

/// The elements of `v[field]`, whether it is one value or an array.
fn elements<'a>(v: &'a Value, field: &str) -> Vec<&'a Value> {
    match v.get(field) {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(other) => vec![other],
        None => Vec::new(),
    }
}

/// The `Reference.reference` strings of `v[field]`.
fn refs(v: &Value, field: &str) -> Vec<String> {
    elements(v, field)
        .into_iter()
        .filter_map(|r| r.get("reference").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

fn refers_to(v: &Value, field: &str, target: &str) -> bool {
    refs(v, field).iter().any(|r| r == target)
}

/// `(system, code)` of every coding of the CodeableConcept(s) in `v[field]`.
fn codings(v: &Value, field: &str) -> Vec<(String, String)> {
    elements(v, field)
        .into_iter()
        .flat_map(|cc| elements(cc, "coding"))
        .map(|c| {
            (
                c["system"].as_str().unwrap_or_default().to_string(),
                c["code"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn has_code(v: &Value, field: &str, system: Option<&str>, code: &str) -> bool {
    codings(v, field)
        .iter()
        .any(|(s, c)| c == code && system.is_none_or(|want| s == want))
}

/// Lower case, Latin accents removed, whitespace collapsed.
fn fold(text: &str) -> String {
    let lowered: String = text
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
            'ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ñ' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            'ý' | 'ÿ' => 'y',
            other => other,
        })
        .collect();
    lowered.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The strings of HumanName parts `parts` of every name in `v[field]`.
fn name_parts(v: &Value, field: &str, parts: &[&str]) -> Vec<String> {
    elements(v, field)
        .into_iter()
        .flat_map(|name| parts.iter().flat_map(move |p| elements(name, p)))
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

const ALL_NAME_PARTS: &[&str] = &["text", "family", "given", "prefix", "suffix"];

/// A FHIR date/dateTime/instant as the inclusive millisecond range its precision implies.
fn date_range(text: &str) -> (i64, i64) {
    let day = |y: i32, m: u32, d: u32| {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis()
    };
    let num = |range: std::ops::Range<usize>| text[range].parse::<u32>().unwrap();
    match text.len() {
        4 => {
            let y = num(0..4) as i32;
            (day(y, 1, 1), day(y + 1, 1, 1) - 1)
        }
        7 => {
            let (y, m) = (num(0..4) as i32, num(5..7));
            let next = if m == 12 {
                day(y + 1, 1, 1)
            } else {
                day(y, m + 1, 1)
            };
            (day(y, m, 1), next - 1)
        }
        10 => {
            let start = day(num(0..4) as i32, num(5..7), num(8..10));
            (start, start + 86_400_000 - 1)
        }
        _ => {
            let t = DateTime::parse_from_rfc3339(text)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
                .timestamp_millis();
            if text.contains('.') {
                (t, t)
            } else {
                (t, t + 999)
            }
        }
    }
}

/// The ranges of a date element (`stem`, or the `[x]` choice `stemDateTime`, `stemInstant`,
/// `stemPeriod`): strings by precision, Periods from the start's low to the end's high (an
/// absent bound is open).
fn date_ranges(v: &Value, stem: &str) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for suffix in ["", "DateTime", "Instant", "Period"] {
        match v.get(format!("{stem}{suffix}")) {
            Some(Value::String(text)) => out.push(date_range(text)),
            Some(period @ Value::Object(_)) => {
                let low = period["start"]
                    .as_str()
                    .map_or(i64::MIN, |s| date_range(s).0);
                let high = period["end"].as_str().map_or(i64::MAX, |s| date_range(s).1);
                out.push((low, high));
            }
            _ => {}
        }
    }
    out
}

/// The FHIR R4 date prefixes over ranges (search page, "prefixes").
fn date_matches(search: &str, (low, high): (i64, i64)) -> bool {
    let (prefix, value) = match search.get(..2) {
        Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb")) => (p, &search[2..]),
        _ => ("eq", search),
    };
    let (slow, shigh) = date_range(value);
    let contained = low >= slow && high <= shigh;
    match prefix {
        "eq" => contained,
        "ne" => !contained,
        "gt" => high > shigh,
        "lt" => low < slow,
        "ge" => high > shigh || contained,
        "le" => low < slow || contained,
        "sa" => low > shigh,
        "eb" => high < slow,
        _ => unreachable!(),
    }
}

fn any_date(v: &Value, stem: &str, search: &str) -> bool {
    date_ranges(v, stem)
        .into_iter()
        .any(|r| date_matches(search, r))
}

/// The element holding the `patient` reference of each type searched by `patient=`.
fn patient_field(res_type: &str) -> &'static str {
    match res_type {
        "Immunization" | "Claim" | "ExplanationOfBenefit" => "patient",
        _ => "subject",
    }
}

/// One `_include` / `_revinclude` as the reference evaluates it.
struct Inc {
    reverse: bool,
    source: &'static str,
    field: &'static str,
    target: Option<&'static str>,
    iterate: bool,
}

impl Data {
    fn include_step(&self, from: &BTreeSet<Key>, inc: &Inc) -> BTreeSet<Key> {
        let mut found = BTreeSet::new();
        if inc.reverse {
            let targets: BTreeSet<String> = from
                .iter()
                .filter(|(t, _)| inc.target.is_none_or(|want| t == want))
                .map(|(t, id)| format!("{t}/{id}"))
                .collect();
            for (id, v) in self.of_type(inc.source) {
                if refs(v, inc.field).iter().any(|r| targets.contains(r)) {
                    found.insert((inc.source.to_string(), id.to_string()));
                }
            }
        } else {
            for (t, id) in from.iter().filter(|(t, _)| t == inc.source) {
                let v = &self.resources[&(t.clone(), id.clone())];
                for r in refs(v, inc.field) {
                    let Some((rt, rid)) = r.split_once('/') else {
                        continue;
                    };
                    if inc.target.is_some_and(|want| want != rt) {
                        continue;
                    }
                    if self.get(&r).is_some() {
                        found.insert((rt.to_string(), rid.to_string()));
                    }
                }
            }
        }
        found
    }

    /// Included resources: non-iterating includes on the matches, iterating ones to a fixpoint
    /// over matches and everything included; matches themselves are not repeated.
    fn included(&self, matches: &BTreeSet<Key>, incs: &[Inc]) -> BTreeSet<Key> {
        let mut seen = matches.clone();
        let mut included = BTreeSet::new();
        let mut frontier = matches.clone();
        let mut round = 0;
        while !frontier.is_empty() {
            let mut next = BTreeSet::new();
            for inc in incs.iter().filter(|i| round == 0 || i.iterate) {
                for key in self.include_step(&frontier, inc) {
                    if seen.insert(key.clone()) {
                        included.insert(key.clone());
                        next.insert(key);
                    }
                }
            }
            frontier = next;
            round += 1;
        }
        included
    }
}

// ---------------------------------------------------------------------------------------------
// Engine side

fn search(repo: &Repository, plan: &SearchPlan) -> SearchPage {
    repo.search(plan, &Visibility::Unrestricted).unwrap()
}

/// Every page of `res_type?query`, following the `next` cursor through its encoded form:
/// the matches in order as (id, rid), and the first page.
fn all_pages(repo: &Repository, res_type: &str, query: &str) -> (Vec<(String, i64)>, SearchPage) {
    let mut p = plan(res_type, query);
    let first = search(repo, &p);
    let mut rows: Vec<(String, i64)> = first
        .matches
        .iter()
        .map(|r| (r.res_id.clone(), r.rid))
        .collect();
    let mut next = first.next.clone();
    let mut pages = 1;
    while let Some(cursor) = next {
        p.cursor = Some(Cursor::decode(&cursor.encode()).unwrap());
        let page = search(repo, &p);
        rows.extend(page.matches.iter().map(|r| (r.res_id.clone(), r.rid)));
        next = page.next.clone();
        pages += 1;
        assert!(
            pages < 10_000,
            "{res_type}?{query}: the cursor does not advance"
        );
    }
    (rows, first)
}

// ---------------------------------------------------------------------------------------------
// Comparison

#[derive(Default)]
struct Report {
    failures: Vec<String>,
}

impl Report {
    fn sets(&mut self, what: &str, engine: &BTreeSet<String>, expected: &BTreeSet<String>) {
        if engine != expected {
            let missing: Vec<&String> = expected.difference(engine).collect();
            let unexpected: Vec<&String> = engine.difference(expected).collect();
            self.failures.push(format!(
                "{what}: {} missing {:?}, {} unexpected {:?} (engine {}, reference {})",
                missing.len(),
                &missing[..missing.len().min(12)],
                unexpected.len(),
                &unexpected[..unexpected.len().min(12)],
                engine.len(),
                expected.len()
            ));
        }
    }

    fn check(&mut self, what: &str, ok: bool, detail: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(format!("{what}: {}", detail()));
        }
    }

    fn finish(self, backend: &str) {
        assert!(
            self.failures.is_empty(),
            "{backend}: {} mismatches\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// A filter query and its reference result set.
struct Case {
    res_type: &'static str,
    query: String,
    expected: BTreeSet<String>,
}

fn run_case(repo: &Repository, report: &mut Report, case: &Case) {
    let Case {
        res_type,
        query,
        expected,
    } = case;
    let label = format!("{res_type}?{query}");
    // one large page
    let big = search(repo, &plan(res_type, &format!("{query}&_count=1000")));
    report.check(&label, big.next.is_none(), || {
        "a 1000-row page has a next link".into()
    });
    let engine: BTreeSet<String> = big.matches.iter().map(|r| r.res_id.clone()).collect();
    report.sets(&format!("{label} [_count=1000]"), &engine, expected);
    if let Some(total) = big.total {
        report.check(
            &format!("{label} [free total]"),
            total as usize == expected.len(),
            || format!("total {total}, reference {}", expected.len()),
        );
    }
    // pages of 7 through the cursor, with an accurate total
    let (rows, first) = all_pages(repo, res_type, &format!("{query}&_count=7&_total=accurate"));
    let paged: BTreeSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    report.check(
        &format!("{label} [_count=7]"),
        paged.len() == rows.len(),
        || {
            format!(
                "{} rows, {} distinct: duplicates across pages",
                rows.len(),
                paged.len()
            )
        },
    );
    report.sets(&format!("{label} [_count=7]"), &paged, expected);
    report.check(
        &format!("{label} [_total=accurate]"),
        first.total == Some(expected.len() as i64),
        || format!("total {:?}, reference {}", first.total, expected.len()),
    );
    // _summary=count
    let count = search(repo, &plan(res_type, &format!("{query}&_summary=count")));
    report.check(
        &format!("{label} [_summary=count]"),
        count.total == Some(expected.len() as i64) && count.matches.is_empty(),
        || {
            format!(
                "total {:?} with {} matches, reference {}",
                count.total,
                count.matches.len(),
                expected.len()
            )
        },
    );
}

// ---------------------------------------------------------------------------------------------
// The cases

struct Fixture {
    data: Data,
    /// Patient ids by "Given Family" of the first name.
    patients: BTreeMap<String, String>,
}

impl Fixture {
    fn patient(&self, name: &str) -> &str {
        self.patients
            .get(name)
            .unwrap_or_else(|| panic!("no patient {name}"))
    }
}

fn fixture(repo: &Repository) -> Fixture {
    let data = load(repo);
    let patients = data
        .of_type("Patient")
        .map(|(id, p)| {
            let given = p["name"][0]["given"][0].as_str().unwrap();
            let family = p["name"][0]["family"].as_str().unwrap();
            (format!("{given} {family}"), id.to_string())
        })
        .collect();
    Fixture { data, patients }
}

fn filter_cases(f: &Fixture) -> Vec<Case> {
    let d = &f.data;
    let barney = f.patient("Barney Abbott");
    let george = f.patient("George Kutch");
    let razo = f.patient("María Luisa Razo");
    let kihn = f.patient("Rufus Kihn");
    let barney_ref = format!("Patient/{barney}");
    let mut cases = Vec::new();
    let mut add = |res_type: &'static str, query: String, expected: BTreeSet<String>| {
        assert!(
            query.contains("_id=") || query.contains(":exact=abbott") || !expected.is_empty(),
            "{res_type}?{query}: the reference finds nothing, pick another value"
        );
        cases.push(Case {
            res_type,
            query,
            expected,
        });
    };

    // token: system|code, code only, :not, OR, AND with a reference
    let loinc = Some("http://loinc.org");
    add(
        "Observation",
        "code=http://loinc.org|8302-2".into(),
        d.select("Observation", |o| has_code(o, "code", loinc, "8302-2")),
    );
    add(
        "Observation",
        "code=29463-7,8302-2".into(),
        d.select("Observation", |o| {
            has_code(o, "code", None, "29463-7") || has_code(o, "code", None, "8302-2")
        }),
    );
    add(
        "Observation",
        "category:not=vital-signs".into(),
        d.select("Observation", |o| {
            !has_code(o, "category", None, "vital-signs")
        }),
    );
    add(
        "MedicationRequest",
        "status=active".into(),
        d.select("MedicationRequest", |m| m["status"] == "active"),
    );
    add(
        "MedicationRequest",
        "status:not=active".into(),
        d.select("MedicationRequest", |m| m["status"] != "active"),
    );
    add(
        "Observation",
        format!("patient={george}&code=http://loinc.org|8302-2"),
        d.select("Observation", |o| {
            refers_to(o, "subject", &format!("Patient/{george}"))
                && has_code(o, "code", loinc, "8302-2")
        }),
    );
    // a Condition code held by some patients only
    let condition_code = {
        let mut by_code: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (_, c) in d.of_type("Condition") {
            for coding in codings(c, "code") {
                *by_code.entry(coding).or_default() += 1;
            }
        }
        by_code
            .into_iter()
            .find(|(_, n)| *n >= 3)
            .map(|(k, _)| k)
            .unwrap()
    };
    add(
        "Condition",
        format!("code={}|{}", condition_code.0, condition_code.1),
        d.select("Condition", |c| {
            has_code(c, "code", Some(&condition_code.0), &condition_code.1)
        }),
    );

    // reference: id, Type/id, compartment-style patient= over several types
    add(
        "Encounter",
        format!("subject=Patient/{barney}"),
        d.select("Encounter", |e| refers_to(e, "subject", &barney_ref)),
    );
    add(
        "Encounter",
        format!("subject={barney}"),
        d.select("Encounter", |e| refers_to(e, "subject", &barney_ref)),
    );
    for res_type in [
        "Observation",
        "Encounter",
        "Condition",
        "MedicationRequest",
        "Procedure",
        "Immunization",
        "DiagnosticReport",
        "CarePlan",
    ] {
        // the first of these patients with resources of the type
        let (who, expected) = [razo, kihn, george, barney]
            .into_iter()
            .map(|who| {
                let me = format!("Patient/{who}");
                (
                    who,
                    d.select(res_type, |r| refers_to(r, patient_field(res_type), &me)),
                )
            })
            .find(|(_, expected)| !expected.is_empty())
            .unwrap_or_else(|| panic!("no {res_type} for the chosen patients"));
        add(res_type, format!("patient={who}"), expected);
    }
    let (_, some_encounter) = d
        .of_type("Observation")
        .find(|(_, o)| refers_to(o, "subject", &format!("Patient/{kihn}")))
        .map(|(id, o)| (id, refs(o, "encounter")[0].clone()))
        .unwrap();
    add(
        "Observation",
        format!("encounter={some_encounter}"),
        d.select("Observation", |o| {
            refers_to(o, "encounter", &some_encounter)
        }),
    );

    // date: prefixes, eq on a day, sa/eb, a range by AND
    let first_day = d
        .of_type("Observation")
        .filter(|(_, o)| refers_to(o, "subject", &barney_ref))
        .filter_map(|(_, o)| o["effectiveDateTime"].as_str())
        .min()
        .unwrap()[..10]
        .to_string();
    for value in [
        "ge2015-01-01".to_string(),
        "lt2005-06-01".to_string(),
        format!("eq{first_day}"),
        first_day.clone(),
        "sa2018-12-31".to_string(),
        "eb2001".to_string(),
        "ne2019".to_string(),
        "2016-03".to_string(),
    ] {
        add(
            "Observation",
            format!("date={value}"),
            d.select("Observation", |o| any_date(o, "effective", &value)),
        );
    }
    add(
        "Observation",
        "date=ge2010-01-01&date=lt2012-01-01".into(),
        d.select("Observation", |o| {
            any_date(o, "effective", "ge2010-01-01") && any_date(o, "effective", "lt2012-01-01")
        }),
    );
    // Encounter.period: multi-day inpatient stays (1989-02-15..19, 2000-11-19..23), values
    // where every reading of the prefixes agrees (see `encounter_period_ge_partial_overlap`)
    for value in [
        "ge2000-11-21".to_string(),
        "le1989-02-16".to_string(),
        first_day.clone(),
        "sa1989-02-15".to_string(),
        "eb2000-11-20".to_string(),
        "gt2018-06-30".to_string(),
    ] {
        add(
            "Encounter",
            format!("date={value}"),
            d.select("Encounter", |e| any_date(e, "period", &value)),
        );
    }
    let barney_birth = d.get(&barney_ref).unwrap()["birthDate"]
        .as_str()
        .unwrap()
        .to_string();
    for value in [barney_birth.clone(), "lt1970".into(), "ge1980-06".into()] {
        add(
            "Patient",
            format!("birthdate={value}"),
            d.select("Patient", |p| any_date(p, "birthDate", &value)),
        );
    }
    add(
        "MedicationRequest",
        "authoredon=ge2015-01-01".into(),
        d.select("MedicationRequest", |m| {
            any_date(m, "authoredOn", "ge2015-01-01")
        }),
    );

    // string: starts-with after folding, :exact, :contains; accents fold
    let starts = |p: &Value, parts: &[&str], value: &str| {
        name_parts(p, "name", parts)
            .iter()
            .any(|s| fold(s).starts_with(&fold(value)))
    };
    add(
        "Patient",
        "family=ABB".into(),
        d.select("Patient", |p| starts(p, &["family"], "ABB")),
    );
    add(
        "Patient",
        "family=ordonez".into(),
        d.select("Patient", |p| starts(p, &["family"], "ordonez")),
    );
    add(
        "Patient",
        "given=jesus".into(),
        d.select("Patient", |p| starts(p, &["given"], "jesus")),
    );
    add(
        "Patient",
        "name=kut".into(),
        d.select("Patient", |p| starts(p, ALL_NAME_PARTS, "kut")),
    );
    add(
        "Patient",
        "name=laureano".into(),
        d.select("Patient", |p| starts(p, ALL_NAME_PARTS, "laureano")),
    );
    add(
        "Patient",
        "family:exact=Abbott".into(),
        d.select("Patient", |p| {
            name_parts(p, "name", &["family"])
                .iter()
                .any(|s| s == "Abbott")
        }),
    );
    add(
        "Patient",
        "family:exact=abbott".into(),
        d.select("Patient", |p| {
            name_parts(p, "name", &["family"])
                .iter()
                .any(|s| s == "abbott")
        }),
    );
    add(
        "Patient",
        "name:contains=UTC".into(),
        d.select("Patient", |p| {
            name_parts(p, "name", ALL_NAME_PARTS)
                .iter()
                .any(|s| fold(s).contains("utc"))
        }),
    );
    add(
        "Practitioner",
        "family=sch".into(),
        d.select("Practitioner", |p| starts(p, &["family"], "sch")),
    );
    add(
        "Organization",
        "name:contains=medical".into(),
        d.select("Organization", |o| {
            elements(o, "name")
                .iter()
                .chain(elements(o, "alias").iter())
                .filter_map(|v| v.as_str())
                .any(|s| fold(s).contains("medical"))
        }),
    );

    // chains
    let patients_named = |value: &str| -> BTreeSet<String> {
        d.select("Patient", |p| starts(p, ALL_NAME_PARTS, value))
            .into_iter()
            .map(|id| format!("Patient/{id}"))
            .collect()
    };
    let kutches = patients_named("kutch");
    add(
        "Observation",
        "subject:Patient.name=kutch".into(),
        d.select("Observation", |o| {
            refs(o, "subject").iter().any(|r| kutches.contains(r))
        }),
    );
    let born: BTreeSet<String> = d
        .select("Patient", |p| any_date(p, "birthDate", &barney_birth))
        .into_iter()
        .map(|id| format!("Patient/{id}"))
        .collect();
    add(
        "Encounter",
        format!("patient.birthdate={barney_birth}"),
        d.select("Encounter", |e| {
            refs(e, "subject").iter().any(|r| born.contains(r))
        }),
    );

    // _has: patients with an Observation of a code only some of them have
    let has_code_value = {
        let mut by_code: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (_, o) in d.of_type("Observation") {
            for (_, code) in codings(o, "code") {
                by_code.entry(code).or_default().extend(refs(o, "subject"));
            }
        }
        by_code
            .into_iter()
            .find(|(_, who)| who.len() >= 2 && who.len() <= 5)
            .map(|(code, _)| code)
            .unwrap()
    };
    add(
        "Patient",
        format!("_has:Observation:patient:code={has_code_value}"),
        d.select("Patient", |_| true)
            .into_iter()
            .filter(|id| {
                let me = format!("Patient/{id}");
                d.of_type("Observation").any(|(_, o)| {
                    refers_to(o, "subject", &me) && has_code(o, "code", None, &has_code_value)
                })
            })
            .collect(),
    );

    // _id with OR
    let some_obs: Vec<String> = d
        .of_type("Observation")
        .map(|(id, _)| id.to_string())
        .step_by(97)
        .take(4)
        .collect();
    add(
        "Observation",
        format!("_id={},no-such-id", some_obs.join(",")),
        some_obs.iter().cloned().collect(),
    );
    add(
        "Patient",
        format!("_id={barney},{kihn}"),
        [barney.to_string(), kihn.to_string()].into(),
    );
    cases
}

/// `_include` / `_revinclude` cases: matches and the included (type, id) set.
fn include_cases(repo: &Repository, f: &Fixture, report: &mut Report) {
    let d = &f.data;
    let george = f.patient("George Kutch");
    let razo = f.patient("María Luisa Razo");
    let keys = |res_type: &str, ids: BTreeSet<String>| -> BTreeSet<Key> {
        ids.into_iter()
            .map(|id| (res_type.to_string(), id))
            .collect()
    };
    let cases: Vec<(&str, String, BTreeSet<String>, Vec<Inc>)> = vec![
        (
            "Encounter",
            format!("patient={george}&_include=Encounter:subject"),
            d.select("Encounter", |e| {
                refers_to(e, "subject", &format!("Patient/{george}"))
            }),
            vec![Inc {
                reverse: false,
                source: "Encounter",
                field: "subject",
                target: None,
                iterate: false,
            }],
        ),
        (
            "MedicationRequest",
            "status=active&_include=MedicationRequest:patient".into(),
            d.select("MedicationRequest", |m| m["status"] == "active"),
            vec![Inc {
                reverse: false,
                source: "MedicationRequest",
                field: "subject",
                target: Some("Patient"),
                iterate: false,
            }],
        ),
        (
            "Observation",
            format!("patient={razo}&code=8302-2&_include=Observation:encounter"),
            d.select("Observation", |o| {
                refers_to(o, "subject", &format!("Patient/{razo}"))
                    && has_code(o, "code", None, "8302-2")
            }),
            vec![Inc {
                reverse: false,
                source: "Observation",
                field: "encounter",
                target: None,
                iterate: false,
            }],
        ),
        (
            "Observation",
            format!(
                "patient={razo}&code=8302-2&_include=Observation:encounter\
                 &_include:iterate=Encounter:service-provider"
            ),
            d.select("Observation", |o| {
                refers_to(o, "subject", &format!("Patient/{razo}"))
                    && has_code(o, "code", None, "8302-2")
            }),
            vec![
                Inc {
                    reverse: false,
                    source: "Observation",
                    field: "encounter",
                    target: None,
                    iterate: false,
                },
                Inc {
                    reverse: false,
                    source: "Encounter",
                    field: "serviceProvider",
                    target: None,
                    iterate: true,
                },
            ],
        ),
        (
            "Patient",
            "family=abbott&_revinclude=Observation:subject".into(),
            d.select("Patient", |p| {
                name_parts(p, "name", &["family"])
                    .iter()
                    .any(|s| fold(s).starts_with("abbott"))
            }),
            vec![Inc {
                reverse: true,
                source: "Observation",
                field: "subject",
                target: None,
                iterate: false,
            }],
        ),
        (
            "Encounter",
            format!("patient={george}&_revinclude=Condition:encounter"),
            d.select("Encounter", |e| {
                refers_to(e, "subject", &format!("Patient/{george}"))
            }),
            vec![Inc {
                reverse: true,
                source: "Condition",
                field: "encounter",
                target: None,
                iterate: false,
            }],
        ),
    ];
    for (res_type, query, expected, incs) in cases {
        let label = format!("{res_type}?{query}");
        let page = search(repo, &plan(res_type, &format!("{query}&_count=1000")));
        report.check(&label, page.next.is_none(), || {
            "a 1000-row page has a next link".into()
        });
        let engine: BTreeSet<String> = page.matches.iter().map(|r| r.res_id.clone()).collect();
        report.sets(&format!("{label} [matches]"), &engine, &expected);
        let reference = d.included(&keys(res_type, expected), &incs);
        let included: BTreeSet<Key> = page
            .included
            .iter()
            .map(|r| (r.res_type.clone(), r.res_id.clone()))
            .collect();
        report.check(
            &format!("{label} [included]"),
            included.len() == page.included.len(),
            || "an included resource appears twice".into(),
        );
        let as_text = |set: &BTreeSet<Key>| -> BTreeSet<String> {
            set.iter().map(|(t, id)| format!("{t}/{id}")).collect()
        };
        report.check(
            &format!("{label} [included]"),
            !reference.is_empty(),
            || "the reference includes nothing: pick another case".into(),
        );
        report.sets(
            &format!("{label} [included]"),
            &as_text(&included),
            &as_text(&reference),
        );
    }
}

/// `_sort` cases: the sequence over all pages equals the reference order (date key: earliest
/// start ascending, latest end descending, absent last; ties by rid ascending).
fn sort_cases(repo: &Repository, f: &Fixture, report: &mut Report) {
    let d = &f.data;
    let kihn = f.patient("Rufus Kihn");
    let zachary = f.patient("Zachary Kutch");
    let observation_key = |id: &str, desc: bool| -> i64 {
        let ranges = date_ranges(
            &d.resources[&("Observation".into(), id.into())],
            "effective",
        );
        if desc {
            ranges.iter().map(|r| r.1).max().unwrap_or(i64::MIN)
        } else {
            ranges.iter().map(|r| r.0).min().unwrap_or(i64::MAX)
        }
    };
    let cases: Vec<(String, BTreeSet<String>, bool)> = vec![
        (
            format!("patient={kihn}&_sort=date"),
            d.select("Observation", |o| {
                refers_to(o, "subject", &format!("Patient/{kihn}"))
            }),
            false,
        ),
        (
            format!("patient={kihn}&_sort=-date"),
            d.select("Observation", |o| {
                refers_to(o, "subject", &format!("Patient/{kihn}"))
            }),
            true,
        ),
        (
            format!("patient={zachary}&code=http://loinc.org|8302-2,29463-7&_sort=-date"),
            d.select("Observation", |o| {
                refers_to(o, "subject", &format!("Patient/{zachary}"))
                    && (has_code(o, "code", None, "8302-2") || has_code(o, "code", None, "29463-7"))
            }),
            true,
        ),
        (
            "date=ge2017-01-01&_sort=date".into(),
            d.select("Observation", |o| any_date(o, "effective", "ge2017-01-01")),
            false,
        ),
    ];
    for (query, expected, desc) in cases {
        for count in [7, 1000] {
            let label = format!("Observation?{query}&_count={count}");
            let (rows, _) = all_pages(repo, "Observation", &format!("{query}&_count={count}"));
            let engine: BTreeSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
            report.sets(&label, &engine, &expected);
            if engine != expected || engine.len() != rows.len() {
                report.check(&label, engine.len() == rows.len(), || "duplicates".into());
                continue;
            }
            let rid: BTreeMap<&str, i64> = rows.iter().map(|(id, r)| (id.as_str(), *r)).collect();
            let mut reference: Vec<&str> = expected.iter().map(String::as_str).collect();
            reference.sort_by_key(|id| {
                let key = observation_key(id, desc);
                (if desc { -(key as i128) } else { key as i128 }, rid[id])
            });
            let order: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
            if order != reference {
                let position = order.iter().zip(&reference).position(|(a, b)| a != b);
                report.failures.push(format!(
                    "{label} [order]: first difference at {position:?}: engine {:?}, reference {:?}",
                    position.map(|i| (order[i], observation_key(order[i], desc))),
                    position.map(|i| (reference[i], observation_key(reference[i], desc))),
                ));
            }
        }
    }
}

fn run(db: Db, backend: &str) {
    let repo = &db.repo;
    let f = fixture(repo);
    let mut report = Report::default();
    let cases = filter_cases(&f);
    assert!(cases.len() >= 25, "{} cases", cases.len());
    for case in &cases {
        run_case(repo, &mut report, case);
    }
    include_cases(repo, &f, &mut report);
    sort_cases(repo, &f, &mut report);
    (db.cleanup)();
    report.finish(backend);
}

#[test]
fn synthea_crosscheck_on_sqlite() {
    if !backend_selected("sqlite") {
        eprintln!("skipped: RENKEI_TEST_BACKENDS does not name sqlite");
        return;
    }
    run(sqlite(), "sqlite");
}

#[test]
fn synthea_crosscheck_on_postgres() {
    if !backend_selected("postgres") {
        eprintln!("skipped: RENKEI_TEST_BACKENDS does not name postgres");
        return;
    }
    run(postgres(), "postgres");
}

/// R4 search, prefixes: `ge` matches when "the range above the search value intersects the
/// range of the target value, or the range of the search value fully contains the range of the
/// target value" (and `le` likewise below). An Encounter from 1989-02-15T08:54 to
/// 1989-02-19T08:54 is neither above 1989-02-19 nor inside it, so `date=ge1989-02-19` must
/// not match it (a period that merely reaches into the day from below).
#[test]
fn encounter_period_ge_partial_overlap() {
    let mut report = Report::default();
    for (open, backend) in [(sqlite as fn() -> Db, "sqlite"), (postgres, "postgres")] {
        if !backend_selected(backend) {
            continue;
        }
        let db = open();
        let repo = &db.repo;
        let f = fixture(repo);
        let before = report.failures.len();
        for value in [
            "ge1989-02-19",
            "le1989-02-15",
            "ge2000-11-23",
            "le2000-11-19",
        ] {
            let case = Case {
                res_type: "Encounter",
                query: format!("date={value}"),
                expected: f.data.select("Encounter", |e| any_date(e, "period", value)),
            };
            run_case(repo, &mut report, &case);
        }
        (db.cleanup)();
        for failure in &mut report.failures[before..] {
            *failure = format!("{backend}: {failure}");
        }
    }
    report.finish("encounter_period_ge_partial_overlap");
}

//! Every narrative `div` in the repository's JSON fixtures passes the narrative check, except
//! the validator cases that exist to be refused. Missing data fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use renkei_fhir_schema::{check_xhtml, XhtmlProblemKind};
use serde_json::Value;

/// Files whose narratives are wrong on purpose (HL7 validator must-reject cases), with how.
const KNOWN_BAD: &[(&str, XhtmlProblemKind)] = &[
    // `&nbsp;`-style HTML entities, which XML does not define.
    ("xml-bad-entities.json", XhtmlProblemKind::Malformed),
    // A `<script>` element.
    ("pat-security-bad-xhtml.json", XhtmlProblemKind::NotAllowed),
];

/// JSON files that are not JSON on purpose (validator cases of broken syntax).
fn is_broken_json_case(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("bad-json-"))
}

fn json_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{} is missing: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, into);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "json" || e == "ndjson")
        {
            into.push(path);
        }
    }
}

fn collect_divs<'v>(value: &'v Value, into: &mut Vec<&'v str>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match child {
                    Value::String(div) if key == "div" => into.push(div),
                    _ => collect_divs(child, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_divs(item, into)),
        _ => {}
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.trim_start_matches('\u{feff}');
    let parsed: Result<Vec<Value>, _> =
        if path.extension().and_then(|e| e.to_str()) == Some("ndjson") {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect()
        } else {
            serde_json::from_str(text).map(|v| vec![v])
        };
    match parsed {
        Ok(values) => values,
        Err(_) if is_broken_json_case(path) => Vec::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

#[test]
fn every_fixture_narrative_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    // The repository's fixtures (demo network, R4 examples, Synthea, HL7 validator cases, ...)
    // and this crate's own test data.
    json_files(&root.join("../../fixtures"), &mut files);
    json_files(&root.join("tests/data"), &mut files);
    files.sort();

    let (mut checked, mut failures, mut known_bad_seen) = (0usize, Vec::new(), Vec::new());
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let known = KNOWN_BAD.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);
        for document in documents(path) {
            let mut divs = Vec::new();
            collect_divs(&document, &mut divs);
            for div in divs {
                checked += 1;
                match (check_xhtml(div), known) {
                    (Ok(()), _) => {}
                    (Err(problem), Some(kind)) if problem.kind == kind => {
                        known_bad_seen.push(name.to_string());
                    }
                    (Err(problem), _) => failures.push(format!(
                        "{}: {:?}: {}",
                        path.display(),
                        problem.kind,
                        problem.message
                    )),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Both copies of each validator case (fixtures/ and tests/data/) are refused.
    for (name, _) in KNOWN_BAD {
        let seen = known_bad_seen.iter().filter(|n| n == name).count();
        assert_eq!(seen, 2, "{name}: refused {seen} times, expected 2");
    }
    // 1,030 narratives when this test was written (R4 examples, demo, Synthea, cases).
    assert!(checked >= 1000, "only {checked} narratives found");
}

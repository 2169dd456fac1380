//! Every official R4 example (fixtures/r4-examples): JSON round trip, then JSON → XML → JSON.

use crate::support::*;
use serde_json::Value;

/// Examples that cannot round-trip, each with the reason. Keep this list short and explained;
/// anything here is a known product limitation to be fixed.
const EXCLUDED: &[(&str, &str)] = &[];

#[test]
fn official_examples_round_trip() {
    let mut files: Vec<_> = std::fs::read_dir(fixture("r4-examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 250, "only {} examples", files.len());
    for_each_backend(|s| {
        let mut failures: Vec<String> = Vec::new();
        let mut passed = 0;
        let mut narrative_whitespace: Vec<String> = Vec::new();
        for file in &files {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            if EXCLUDED.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let original: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
            let Some(res_type) = original["resourceType"].as_str() else {
                failures.push(format!("{name}: no resourceType"));
                continue;
            };
            let r = match original["id"].as_str() {
                Some(id) => s.put(&format!("{res_type}/{id}"), &original),
                None => s.post(res_type, &original),
            };
            if r.status != 201 && r.status != 200 {
                failures.push(format!(
                    "{name}: create → {} {}",
                    r.status,
                    truncate(&r.body, 400)
                ));
                continue;
            }
            let id = r.json()["id"].as_str().unwrap().to_string();
            let path = format!("{res_type}/{id}");
            let stored = s.read_json(&path);
            let mut expected = original.clone();
            if expected.get("id").is_none() {
                expected["id"] = Value::String(id.clone());
            }
            if let Some(d) = json_diff(
                &without_version_meta(&stored),
                &without_version_meta(&expected),
            ) {
                failures.push(format!("{name}: JSON read-back differs at {d}"));
                continue;
            }
            let xml = s.get_with(&path, &[("Accept", FHIR_XML)]);
            if xml.status != 200 || !xml.content_type().starts_with("application/fhir+xml") {
                failures.push(format!(
                    "{name}: XML read → {} {} {}",
                    xml.status,
                    xml.content_type(),
                    truncate(&xml.body, 300)
                ));
                continue;
            }
            let r = s.send_raw("POST", res_type, FHIR_XML, xml.body.as_bytes());
            if r.status != 201 {
                failures.push(format!(
                    "{name}: re-create from XML → {} {}",
                    r.status,
                    truncate(&r.body, 400)
                ));
                continue;
            }
            let copy_id = r.json()["id"].as_str().unwrap().to_string();
            let copy = s.read_json(&format!("{res_type}/{copy_id}"));
            if let Some(d) = json_diff(&without_id_meta(&copy), &without_id_meta(&original)) {
                // Known bug (asserted by formats::xml_narrative_whitespace_is_preserved): the
                // XML parser drops whitespace in XHTML narrative. Compare narratives modulo
                // whitespace here so this test still catches every other difference.
                let (a, b) = (
                    squeeze_divs(&without_id_meta(&copy)),
                    squeeze_divs(&without_id_meta(&original)),
                );
                match json_diff(&a, &b) {
                    None => narrative_whitespace.push(name.clone()),
                    Some(d2) => failures.push(format!(
                        "{name}: JSON→XML→JSON differs at {d2} (first difference: {d})"
                    )),
                }
                if json_diff(&a, &b).is_some() {
                    continue;
                }
            }
            passed += 1;
        }
        eprintln!(
            "[{}] r4 examples: {passed}/{} round-trip ({} of them only modulo narrative whitespace: {})",
            s.backend,
            files.len() - EXCLUDED.len(),
            narrative_whitespace.len(),
            narrative_whitespace.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
                + if narrative_whitespace.len() > 8 { ", …" } else { "" }
        );
        assert!(
            failures.is_empty(),
            "{} example(s) fail:\n{}",
            failures.len(),
            failures.join("\n")
        );
    });
}

/// Every `div` string (XHTML narrative) with its whitespace removed.
fn squeeze_divs(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("div", Value::String(s)) => {
                            Value::String(s.chars().filter(|c| !c.is_whitespace()).collect())
                        }
                        _ => squeeze_divs(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(squeeze_divs).collect()),
        other => other.clone(),
    }
}

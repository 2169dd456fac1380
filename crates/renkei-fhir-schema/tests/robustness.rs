//! No panics on arbitrary input: random mutations of real resources and deep nesting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use renkei_fhir_schema::{select_elements, summarize, validate, SummaryMode};
use serde_json::{json, Map, Value};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn junk(rng: &mut Rng) -> Value {
    let strings = [
        "",
        " ",
        "２０２０-0１-0１",
        "2020-02-30",
        "<div",
        "&",
        "&reg;",
        "urn:uuid:",
        "é",
        "\u{0}",
        "9999-99-99T99:99:99Z",
        "Patient",
        "_x",
        "-",
        "1e999",
    ];
    match rng.below(10) {
        0 => Value::Null,
        1 => json!([]),
        2 => json!({}),
        3 => Value::String(strings[rng.below(strings.len())].to_string()),
        4 => serde_json::from_str("-123456789012345678901234567890.5e-7").unwrap(),
        5 => json!(true),
        6 => json!([null, {"resourceType": "Patient", "id": "x"}, [1]]),
        7 => json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Nope"}}]}),
        8 => json!({"extension": [{"url": ""}], "_": {}}),
        _ => json!(0),
    }
}

fn mutate(v: &mut Value, rng: &mut Rng, depth: usize) {
    match v {
        Value::Object(o) => {
            if o.is_empty() {
                return;
            }
            let keys: Vec<String> = o.keys().cloned().collect();
            let k = &keys[rng.below(keys.len())];
            if depth > 0 && rng.below(3) == 0 {
                o.insert(k.clone(), junk(rng));
            } else if rng.below(5) == 0 {
                o.insert(format!("_{k}"), junk(rng));
            } else if let Some(child) = o.get_mut(k) {
                mutate(child, rng, depth + 1);
            }
        }
        Value::Array(a) => {
            if a.is_empty() {
                return;
            }
            let i = rng.below(a.len());
            if rng.below(3) == 0 {
                a[i] = junk(rng);
            } else {
                mutate(&mut a[i], rng, depth + 1);
            }
        }
        _ => *v = junk(rng),
    }
}

#[test]
fn random_mutations_do_not_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
        .collect();
    files.sort();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut total_issues = 0usize;
    for f in &files {
        let base: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        for _ in 0..40 {
            let mut v = base.clone();
            for _ in 0..=rng.below(4) {
                mutate(&mut v, &mut rng, 0);
            }
            total_issues += validate(&v).len();
            for mode in [SummaryMode::True, SummaryMode::Text, SummaryMode::Data] {
                let _ = summarize(&v, mode);
            }
            let _ = select_elements(&v, &["name", "value", "", "Patient.", "..", "status.x"]);
        }
    }
    assert!(total_issues > 0);
}

#[test]
fn deep_nesting_is_bounded() {
    // 500 nested extensions, built directly (serde_json's parser stops at depth 128)
    let mut ext = json!({"url": "http://x", "valueString": "leaf"});
    for _ in 0..500 {
        let mut o = Map::new();
        o.insert("url".into(), json!("http://x"));
        o.insert("extension".into(), Value::Array(vec![ext]));
        ext = Value::Object(o);
    }
    let p = json!({"resourceType": "Patient", "extension": [ext]});
    let issues = validate(&p);
    assert_eq!(issues.len(), 1, "{issues:?}");
    let _ = summarize(&p, SummaryMode::True);

    // nested contained resources
    let mut r = json!({"resourceType": "Patient"});
    for _ in 0..300 {
        r = json!({"resourceType": "Patient", "contained": [r]});
    }
    assert!(!validate(&r).is_empty());
    let _ = summarize(&r, SummaryMode::True);
}

#[test]
fn decimals_beyond_a_double_are_refused() {
    let observation = |value: &str| {
        let text = format!(
            r#"{{"resourceType": "Observation", "status": "final", "code": {{"text": "x"}},
               "valueQuantity": {{"value": {value}}}}}"#
        );
        validate(&serde_json::from_str::<Value>(&text).unwrap())
    };
    let issues = observation("1e400");
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].message.contains("400"), "{issues:?}");
    assert!(observation("-1.5E308").is_empty());
    assert!(observation("0.000001").is_empty());
    assert!(
        observation("1e-400").is_empty(),
        "tiny values are zero, not infinite"
    );
}

#[test]
fn strings_beyond_one_megabyte_are_refused() {
    let patient = |family: String| {
        validate(&json!({"resourceType": "Patient", "name": [{"family": family}]}))
    };
    let issues = patient("a".repeat(1024 * 1024 + 1));
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].message.contains("1 MB"), "{issues:?}");
    assert!(patient("a".repeat(1024 * 1024)).is_empty());
}

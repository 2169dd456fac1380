#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use renkei_fhirpath::{compile, evaluate, FhirPathError, PathSegment};
use serde_json::{json, Value};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn load(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn example(name: &str) -> Value {
    load(&data_dir().join("examples").join(name))
}

fn examples() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(data_dir().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                load(&p),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// (expression, base resource types) of all official + JP Core search parameters.
fn search_expressions() -> Vec<(String, Vec<String>)> {
    let data = load(&data_dir().join("search-parameter-expressions.json"));
    ["official", "jpCore"]
        .iter()
        .flat_map(|k| data[*k].as_array().unwrap().clone())
        .map(|row| {
            let base = row["base"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap().to_string())
                .collect();
            (row["expression"].as_str().unwrap().to_string(), base)
        })
        .collect()
}

fn values(expr: &str, resource: &Value) -> Vec<Value> {
    evaluate(expr, resource)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
        .into_iter()
        .map(|n| n.value().clone())
        .collect()
}

fn types(expr: &str, resource: &Value) -> Vec<Option<String>> {
    evaluate(expr, resource)
        .unwrap()
        .iter()
        .map(|n| n.type_name().map(str::to_string))
        .collect()
}

#[test]
fn every_search_parameter_expression_compiles() {
    let exprs = search_expressions();
    assert!(exprs.len() > 1300, "expected all official expressions");
    let failures: Vec<String> = exprs
        .iter()
        .filter_map(|(e, _)| compile(e).err().map(|err| format!("{e}: {err}")))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

fn evaluate_all_against(examples: &[(String, Value)]) -> usize {
    let exprs: Vec<_> = search_expressions()
        .into_iter()
        .map(|(e, base)| (compile(&e).unwrap(), base))
        .collect();
    let mut evaluated = 0;
    let mut failures = Vec::new();
    for (file, resource) in examples {
        let rt = resource["resourceType"].as_str().unwrap();
        for (expr, base) in &exprs {
            if !base
                .iter()
                .any(|b| b == rt || b == "Resource" || b == "DomainResource")
            {
                continue;
            }
            evaluated += 1;
            if let Err(e) = expr.evaluate(resource) {
                failures.push(format!("{file}: {}: {e}", expr.source()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    evaluated
}

#[test]
fn every_search_parameter_expression_evaluates_on_examples() {
    let examples = examples();
    assert!(examples.len() >= 20);
    let evaluated = evaluate_all_against(&examples);
    assert!(evaluated > 500, "only {evaluated} evaluations");
}

/// Same check against a whole directory of examples, e.g.
/// `RENKEI_R4_EXAMPLES_DIR=/path/to/r4-examples cargo test -- --ignored`.
#[test]
#[ignore = "needs RENKEI_R4_EXAMPLES_DIR"]
fn every_search_parameter_expression_evaluates_on_external_examples() {
    let Ok(dir) = std::env::var("RENKEI_R4_EXAMPLES_DIR") else {
        return;
    };
    let mut examples = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let v = load(&p);
            // Also evaluate the resources inside Bundles (many more types).
            if let Some(entries) = v.get("entry").and_then(Value::as_array) {
                for (i, e) in entries.iter().enumerate() {
                    if let Some(r) = e
                        .get("resource")
                        .filter(|r| r.get("resourceType").is_some())
                    {
                        examples.push((format!("{}#entry{i}", p.display()), r.clone()));
                    }
                }
            }
            if v.get("resourceType").is_some() {
                examples.push((p.display().to_string(), v));
            }
        }
    }
    let n = evaluate_all_against(&examples);
    eprintln!("{} examples, {n} evaluations", examples.len());
}

#[test]
fn choice_type_as_quantity() {
    let obs = example("Observation-example.json");
    let q = values("Observation.value as Quantity", &obs);
    assert_eq!(
        q,
        [
            json!({"value": 185, "unit": "lbs", "system": "http://unitsofmeasure.org", "code": "[lb_av]"})
        ]
    );
    assert_eq!(types("Observation.value", &obs), [Some("Quantity".into())]);
    assert_eq!(
        values("(Observation.value as Quantity).value", &obs),
        [json!(185)]
    );
    assert_eq!(
        values("Observation.value.as(Quantity).unit", &obs),
        [json!("lbs")]
    );
    assert!(values("Observation.value as CodeableConcept", &obs).is_empty());
    assert!(values("Observation.value.ofType(Period)", &obs).is_empty());
    assert_eq!(values("Observation.value is Quantity", &obs), [json!(true)]);
    assert_eq!(values("Observation.effective", &obs), [json!("2016-03-28")]);
    assert_eq!(
        types("Observation.effective", &obs),
        [Some("dateTime".into())]
    );
}

#[test]
fn choice_type_subtypes() {
    // Condition-f202 has onsetAge: Age is a Quantity.
    let cond = example("Condition-f202.json");
    assert_eq!(types("Condition.onset", &cond), [Some("Age".into())]);
    assert_eq!(values("Condition.onset.as(Age).value", &cond), [json!(52)]);
    assert_eq!(
        values("(Condition.onset as Quantity).unit", &cond),
        [json!("years")]
    );
    assert!(values("Condition.onset.as(dateTime)", &cond).is_empty());
    assert!(values("Condition.onset.as(Range)", &cond).is_empty());
}

#[test]
fn where_filters_by_field() {
    let pat = example("Patient-example.json");
    assert_eq!(
        values("Patient.name.where(use='official').family", &pat),
        [json!("Chalmers")]
    );
    assert_eq!(
        values("Patient.name.where(use='official').given", &pat),
        [json!("Peter"), json!("James")]
    );
    assert_eq!(
        values("Patient.telecom.where(system='phone').value", &pat),
        [
            json!("(03) 5555 6473"),
            json!("(03) 3410 5613"),
            json!("(03) 5555 8834")
        ]
    );
    assert_eq!(
        values(
            "Patient.name.where(use='official' and family='Chalmers').exists()",
            &pat
        ),
        [json!(true)]
    );
    assert_eq!(
        values("Patient.name.where(use='nope').exists()", &pat),
        [json!(false)]
    );
    assert_eq!(
        values("Patient.name.where(use!='official').use", &pat),
        [json!("usual"), json!("maiden")]
    );
}

#[test]
fn leading_type_name_filters_by_resource_type() {
    let pat = example("Patient-example.json");
    assert_eq!(values("Patient.gender", &pat), [json!("male")]);
    assert!(values("Observation.status", &pat).is_empty());
    assert_eq!(values("Resource.id", &pat), [json!("example")]);
    assert_eq!(values("DomainResource.id", &pat), [json!("example")]);
    assert_eq!(values("gender", &pat), [json!("male")]);
}

#[test]
fn union_of_paths_across_types() {
    let pat = example("Patient-example.json");
    let expr = "Patient.gender | Observation.status | Patient.birthDate";
    assert_eq!(values(expr, &pat), [json!("male"), json!("1974-12-25")]);
    // union removes duplicates
    assert_eq!(
        values("Patient.gender | Patient.gender", &pat),
        [json!("male")]
    );
    assert_eq!(
        values("(Patient.gender | Patient.id).count()", &pat),
        [json!(2)]
    );
}

#[test]
fn resolve_is_type() {
    let obs = example("Observation-example.json");
    let subject = values("Observation.subject.where(resolve() is Patient)", &obs);
    assert_eq!(subject, [json!({"reference": "Patient/example"})]);
    assert!(values("Observation.subject.where(resolve() is Group)", &obs).is_empty());
    assert_eq!(
        values("Observation.subject.resolve().is(Patient)", &obs),
        [json!(true)]
    );
    assert_eq!(
        types("Observation.encounter.resolve()", &obs),
        [Some("Encounter".into())]
    );

    let r = json!({"resourceType": "Observation",
        "subject": {"reference": "https://example.org/fhir/Group/g1/_history/2"},
        "performer": [{"reference": "urn:uuid:abc", "type": "Practitioner"}, {"display": "x"}]});
    assert_eq!(
        values("Observation.subject.resolve() is Group", &r),
        [json!(true)]
    );
    assert_eq!(
        values("Observation.subject.resolve().id", &r),
        [json!("g1")]
    );
    assert_eq!(
        types("Observation.performer.resolve()", &r),
        [Some("Practitioner".into())]
    );
}

#[test]
fn resolve_contained_and_bundle_references() {
    let enc = example("Encounter-home.json");
    // location.location references "#home", a contained Location.
    let loc = evaluate("Encounter.location.location.resolve()", &enc).unwrap();
    assert_eq!(loc.len(), 1);
    assert_eq!(loc[0].type_name(), Some("Location"));
    assert_eq!(loc[0].value()["id"], json!("home"));
    assert_eq!(
        loc[0].path().unwrap(),
        [PathSegment::Key("contained".into()), PathSegment::Index(0)]
    );
    assert_eq!(
        values(
            "Encounter.location.location.where(resolve() is Location).exists()",
            &enc
        ),
        [json!(true)]
    );

    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1", "gender": "female"}},
        {"resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:p1"}}}
    ]});
    assert_eq!(
        values("Bundle.entry[1].resource.subject.resolve().gender", &bundle),
        [json!("female")]
    );
    assert_eq!(
        values("Bundle.entry[0].resource.id", &bundle),
        [json!("p1")]
    );
    assert_eq!(
        types("Bundle.entry[0].resource", &bundle),
        [Some("Patient".into())]
    );
}

#[test]
fn extension_function_and_primitive_extensions() {
    let r = json!({
        "resourceType": "Patient",
        "extension": [
            {"url": "http://a", "valueString": "A"},
            {"url": "http://b", "valueCodeableConcept": {"text": "B"}}
        ],
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{"url": "http://t", "valueDateTime": "1970-01-01T10:00:00Z"}]}
    });
    assert_eq!(
        values("Patient.extension('http://a').value", &r),
        [json!("A")]
    );
    assert_eq!(
        values("Patient.extension('http://a').value.as(string)", &r),
        [json!("A")]
    );
    assert_eq!(
        values(
            "Patient.extension.where(url='http://b').value.ofType(CodeableConcept).text",
            &r
        ),
        [json!("B")]
    );
    assert_eq!(
        values("Patient.birthDate.extension('http://t').value", &r),
        [json!("1970-01-01T10:00:00Z")]
    );
    assert!(values("Patient.extension('http://zzz')", &r).is_empty());
}

#[test]
fn jp_core_style_expression() {
    let r = json!({"resourceType": "Patient", "name": [
        {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "IDE"}],
         "use": "official", "text": "山田 太郎"},
        {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": "SYL"}],
         "use": "usual", "text": "ヤマダ タロウ"}
    ]});
    let e = "Patient.name.where(extension('http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation').value.as(code)='SYL' and use='usual').text";
    assert_eq!(values(e, &r), [json!("ヤマダ タロウ")]);
}

#[test]
fn deceased_expression_and_boolean_logic() {
    let e = "Patient.deceased.exists() and Patient.deceased != false";
    let alive = json!({"resourceType": "Patient", "deceasedBoolean": false});
    let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
    let dead2 = json!({"resourceType": "Patient", "deceasedBoolean": true});
    let unknown = json!({"resourceType": "Patient"});
    assert_eq!(values(e, &alive), [json!(false)]);
    assert_eq!(values(e, &dead), [json!(true)]);
    assert_eq!(values(e, &dead2), [json!(true)]);
    assert_eq!(values(e, &unknown), [json!(false)]);
    assert_eq!(values("true or {}", &unknown), [json!(true)]);
    assert!(values("false or {}", &unknown).is_empty());
    assert_eq!(values("false implies {}", &unknown), [json!(true)]);
    assert_eq!(values("(1 = 1).not()", &unknown), [json!(false)]);
}

#[test]
fn indexers_first_last_and_misc_functions() {
    let pat = example("Patient-example.json");
    assert_eq!(values("Patient.name[1].given", &pat), [json!("Jim")]);
    assert_eq!(
        values("Patient.name.first().use", &pat),
        [json!("official")]
    );
    assert_eq!(values("Patient.name.last().use", &pat), [json!("maiden")]);
    assert!(values("Patient.name[99]", &pat).is_empty());
    assert_eq!(values("Patient.name.count()", &pat), [json!(3)]);
    assert_eq!(
        values("Patient.name.given.count() > 2", &pat),
        [json!(true)]
    );
    assert_eq!(values("Patient.identifier.empty()", &pat), [json!(false)]);
    assert_eq!(values("Patient.photo.empty()", &pat), [json!(true)]);
    assert_eq!(
        values("Patient.name.select(family).distinct().count()", &pat),
        [json!(2)]
    );
    assert_eq!(
        values("Patient.name.exists(use = 'maiden')", &pat),
        [json!(true)]
    );
    assert_eq!(
        values("Patient.name.all(family.exists())", &pat),
        [json!(false)]
    );
    assert_eq!(
        values("Patient.gender.upper() & '!'", &pat),
        [json!("MALE!")]
    );
    assert_eq!(
        values("Patient.birthDate.substring(0, 4)", &pat),
        [json!("1974")]
    );
    assert_eq!(
        values("Patient.birthDate.startsWith('1974')", &pat),
        [json!(true)]
    );
    assert_eq!(
        values("Patient.birthDate > @1970-01-01", &pat),
        [json!(true)]
    );
    assert_eq!(values("1 + 2 * 3", &pat), [json!(7)]);
    assert_eq!(values("7 div 2 | 7 mod 2", &pat), [json!(3), json!(1)]);
    assert_eq!(values("'a' in ('a' | 'b')", &pat), [json!(true)]);
    assert_eq!(
        values("Patient.name.given.where($this = 'Jim')", &pat),
        [json!("Jim")]
    );
    assert_eq!(values("%resource.id", &pat), [json!("example")]);
    assert_eq!(
        values("iif(Patient.active, 'yes', 'no')", &pat),
        [json!("yes")]
    );
}

#[test]
fn node_paths_point_into_the_resource() {
    let pat = example("Patient-example.json");
    let nodes = evaluate("Patient.name.where(use='usual').given", &pat).unwrap();
    assert_eq!(
        nodes[0].path().unwrap(),
        [
            PathSegment::Key("name".into()),
            PathSegment::Index(1),
            PathSegment::Key("given".into()),
            PathSegment::Index(0)
        ]
    );
    assert!(nodes[0].borrowed().is_some());
    let obs = example("Observation-example.json");
    let v = evaluate("Observation.value", &obs).unwrap();
    assert_eq!(
        v[0].path().unwrap(),
        [PathSegment::Key("valueQuantity".into())]
    );
}

#[test]
fn unsupported_and_invalid_input_are_errors_not_panics() {
    let pat = example("Patient-example.json");
    assert!(matches!(
        evaluate("Patient.maritalStatus.memberOf('http://x')", &pat),
        Err(FhirPathError::Unsupported(_))
    ));
    assert!(matches!(
        evaluate("Patient.name.foo()", &pat),
        Err(FhirPathError::Evaluation(_))
    ));
    assert!(matches!(
        evaluate("Patient.name.exists(1, 2)", &pat),
        Err(FhirPathError::Arity { .. })
    ));
    assert!(matches!(
        compile("Patient.name.("),
        Err(FhirPathError::Syntax { .. })
    ));
    // Singleton requirements give errors, not panics.
    assert!(evaluate("Patient.name.given = 'x' and Patient.name", &pat).is_err());
    assert!(evaluate("Patient.name.given.substring(0, 1)", &pat).is_err());
}

#[test]
fn arbitrary_inputs_never_panic() {
    // A cheap deterministic fuzz: slices and byte-mutations of real expressions,
    // evaluated against assorted JSON values.
    let docs = [
        example("Patient-example.json"),
        json!(null),
        json!([1, 2, {"a": []}]),
        json!({"resourceType": 5, "value": {"x": null}, "valueQuantity": [null, 1.5e300]}),
        json!("Patient"),
    ];
    let mut seeds: Vec<String> = search_expressions()
        .into_iter()
        .map(|(e, _)| e)
        .take(200)
        .collect();
    seeds.extend(
        [
            "1/0",
            "9223372036854775807 + 1",
            "-(-9223372036854775807 - 1)",
            "7 div 0",
            "7 mod 0",
            "'a'.substring(-1)",
            "'a'.substring(5, -3)",
            "{}[0]",
            "(1|2)[9999999999999999999]",
            "$index",
            "$total",
            "%x",
            "@T",
            "'\\u00e9'.length()",
            "children().descendants()",
            "repeat($this)",
            "1.5 * 1e3",
            "`div` div 2",
            "is(Patient)",
            "as(string)",
            "a.is(FHIR.)",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut count = 0;
    for seed in &seeds {
        let chars: Vec<char> = seed.chars().collect();
        let mut variants = vec![seed.clone()];
        for cut in (0..chars.len()).step_by(7) {
            variants.push(chars[..cut].iter().collect());
            variants.push(chars[cut..].iter().collect());
            let mut m = chars.clone();
            m[cut] = ['(', ')', '\'', '.', '|', '[', '`', '%', 'é'][cut % 9];
            variants.push(m.into_iter().collect());
        }
        for v in variants {
            if let Ok(expr) = compile(&v) {
                for d in &docs {
                    let _ = expr.evaluate(d);
                    count += 1;
                }
            }
        }
    }
    assert!(count > 1000);
}

//! Runs the public FHIR R4 TestScripts (fixtures/testscripts) against the real server, on both
//! backends, with a small TestScript interpreter written for this purpose.
//!
//! What the runner does (R4 testscript.html):
//! - fixtures: `resource.reference` is a file next to the script (crucible's
//!   `fixtures/Patient/example.json`) or, failing that, an official example `Type/id`
//!   (`fixtures/r4-examples/Type-id.json`, where the R4 spec's own fixtures live). `autocreate`
//!   POSTs the fixture before setup, `autodelete` DELETEs it after teardown.
//! - variables, resolved each time they are used (a variable over a response is only
//!   resolvable once that response exists): `defaultValue`; `headerField`, `path` or
//!   `expression` over `sourceId` (or over the last response); a variable with none of these
//!   is a tester input (`hint`), given per script below.
//! - operations read, vread, create, update, delete, search, history (`method` overrides the
//!   verb), with `params`, `url`, `targetId`, `sourceId`, `resource`, `accept` and
//!   `contentType` (xml|json|a media type), `encodeRequestUrl`, `requestHeader`, `requestId`,
//!   `responseId`, `destination` (several servers) and `origin` (always this runner).
//!   Without `accept` the runner asks for JSON, as the crucible engine does.
//! - asserts: every element of TestScript.setup.action.assert (list in `ASSERT_KEYS`); any
//!   other key, operator or operation type fails the test, so nothing is skipped silently.
//!   `warningOnly` failures are printed, not fatal.
//!
//! XML: a script that says `accept: xml` gets XML, and one that says `contentType: xml` sends
//! XML (the JSON fixture written as FHIR XML by `json_to_xml`). A response is read with a small
//! XML reader of our own (not the server's codec, so the two cannot share a bug). XPath `path`
//! asserts of the form `fhir:Patient/fhir:name/fhir:family/@value` are evaluated by walking the
//! same steps over a JSON view of the payload (`xml_to_json` for XML, the body itself for
//! JSON); anything beyond plain child steps and a final `@attribute` fails as unsupported.
//! FHIRPath `expression` asserts use renkei-fhirpath over that JSON view. In the view of an XML
//! payload every primitive is a string (XML does not say which are numbers or booleans); the
//! scripts here compare strings or convert (`toInteger()`), so this does not change a result.
//!
//! Script errata: where a script's assert contradicts the R4 specification, the script is still
//! run as published, the published assert must still fail (a stale erratum fails the test),
//! and the assert the specification requires is checked in its place (`ERRATA`). Server
//! defects are not errata: they fail the test.

use crate::support::*;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// The scripts, one test each (each test owns fresh servers on every backend).
// ---------------------------------------------------------------------------------------------

/// Conditions a script states in prose and a tester arranges before running it.
#[derive(Default)]
struct Preconditions {
    /// Fixture files (under `fixtures/`) PUT on every destination before the script runs.
    seed: &'static [&'static str],
    /// Values for the script's input variables (those with only a `hint`).
    inputs: &'static [(&'static str, &'static str)],
    /// How many servers (`destination` indexes 1..=n) the script talks to.
    destinations: usize,
}

const ONE_SERVER: Preconditions = Preconditions {
    seed: &[],
    inputs: &[],
    destinations: 1,
};

/// "Read a known Patient" (R001): the known Patient is the spec's Patient/example.
const KNOWN_PATIENT: Preconditions = Preconditions {
    seed: &["r4-examples/Patient-example.json"],
    inputs: &[],
    destinations: 1,
};

/// The search scripts ask the tester for "a known family name / given name on the target
/// system": test 01 of the same script creates Peter Chalmers.
const SEARCH_INPUTS: Preconditions = Preconditions {
    seed: &[],
    inputs: &[
        ("PatientSearchFamilyName", "Chalmers"),
        ("PatientSearchGivenName", "Peter"),
    ],
    destinations: 1,
};

#[test]
fn testscripts_hl7_example() {
    run_script(
        "hl7-spec-r4/TestScript-testscript-example.json",
        &ONE_SERVER,
    );
}

#[test]
fn testscripts_hl7_history() {
    run_script(
        "hl7-spec-r4/TestScript-testscript-example-history.json",
        &ONE_SERVER,
    );
}

/// Two destination servers, each a renkei of its own on the same backend; the single origin
/// (a FHIR client) is this runner.
#[test]
fn testscripts_hl7_multisystem() {
    run_script(
        "hl7-spec-r4/TestScript-testscript-example-multisystem.json",
        &Preconditions {
            destinations: 2,
            ..KNOWN_PATIENT
        },
    );
}

#[test]
fn testscripts_hl7_readtest() {
    run_script(
        "hl7-spec-r4/TestScript-testscript-example-readtest.json",
        &KNOWN_PATIENT,
    );
}

#[test]
fn testscripts_hl7_search() {
    run_script(
        "hl7-spec-r4/TestScript-testscript-example-search.json",
        &SEARCH_INPUTS,
    );
}

#[test]
fn testscripts_hl7_update() {
    run_script(
        "hl7-spec-r4/TestScript-testscript-example-update.json",
        &ONE_SERVER,
    );
}

#[test]
fn testscripts_crucible_general() {
    run_script(
        "crucible-testscript-engine/general_testscript.json",
        &ONE_SERVER,
    );
}

#[test]
fn testscripts_crucible_history() {
    run_script(
        "crucible-testscript-engine/history_testscript.json",
        &ONE_SERVER,
    );
}

#[test]
fn testscripts_crucible_read() {
    run_script(
        "crucible-testscript-engine/read_testscript.json",
        &KNOWN_PATIENT,
    );
}

#[test]
fn testscripts_crucible_search() {
    run_script(
        "crucible-testscript-engine/search_testscript.json",
        &SEARCH_INPUTS,
    );
}

#[test]
fn testscripts_crucible_update() {
    run_script(
        "crucible-testscript-engine/update_testscript.json",
        &ONE_SERVER,
    );
}

/// Every TestScript copied into fixtures/testscripts has a test above.
#[test]
fn testscripts_every_copied_script_is_run() {
    let this_file = include_str!("testscripts.rs");
    let root = fixture("testscripts");
    let mut scripts = Vec::new();
    for dir in ["hl7-spec-r4", "crucible-testscript-engine"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let is_script = path.extension().is_some_and(|x| x == "json")
                && read_json_file(&path).unwrap()["resourceType"] == "TestScript";
            if is_script {
                scripts.push(format!(
                    "{dir}/{}",
                    path.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert_eq!(scripts.len(), 11, "{scripts:?}");
    for script in scripts {
        assert!(
            this_file.contains(&format!("\"{script}\"")),
            "{script} is not run by any test"
        );
    }
}

/// The runner itself: a script whose asserts are wrong on purpose must fail each of them (and
/// count a failing `warningOnly` assert as a warning only), so a green run of the published
/// scripts means their asserts held, not that the runner skipped them.
#[test]
fn testscripts_runner_reports_every_failed_assert() {
    let op = |code: &str, extra: Value| {
        let mut o = serde_json::json!({"type": {
            "system": "http://terminology.hl7.org/CodeSystem/testscript-operation-codes",
            "code": code}});
        o.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::json!({"operation": o})
    };
    let assert = |a: Value| serde_json::json!({"assert": a});
    let script = serde_json::json!({
        "resourceType": "TestScript",
        "name": "runner-self-test",
        "status": "draft",
        "fixture": [{"id": "f", "resource": {"reference": "Patient/example"}}],
        "test": [{"id": "wrong-on-purpose", "action": [
            op("update", serde_json::json!({"resource": "Patient", "params": "/example",
                "sourceId": "f", "accept": "xml", "contentType": "xml"})),
            // Hold: 201, Patient, the family name read from the XML answer.
            assert(serde_json::json!({"responseCode": "201"})),
            assert(serde_json::json!({"resource": "Patient"})),
            assert(serde_json::json!({"path": "fhir:Patient/fhir:name/fhir:family/@value",
                "value": "Chalmers"})),
            assert(serde_json::json!({"expression": "Patient.name.first().family = 'Chalmers'"})),
            // Fail, one each.
            assert(serde_json::json!({"response": "notFound"})),
            assert(serde_json::json!({"path": "fhir:Patient/fhir:name/fhir:family/@value",
                "value": "Nobody"})),
            assert(serde_json::json!({"expression": "Patient.name.first().family = 'Nobody'"})),
            assert(serde_json::json!({"headerField": "Location", "operator": "empty"})),
            assert(serde_json::json!({"response": "created", "frobnicate": true})),
            assert(serde_json::json!({"responseCode": "201", "operator": "approximately"})),
            assert(serde_json::json!({"contentType": "json"})),
            assert(serde_json::json!({"path": "fhir:Patient/fhir:name[1]/fhir:family/@value",
                "value": "Chalmers"})),
            assert(serde_json::json!({"compareToSourceId": "f",
                "compareToSourceExpression": "Patient.gender", "expression": "Patient.birthDate"})),
            op("transaction", serde_json::json!({"sourceId": "f"})),
            // A warning, not a failure.
            assert(serde_json::json!({"response": "gone", "warningOnly": true})),
        ]}]
    });
    for_each_backend(|s| {
        let mut runner = Runner::with_script(
            "runner-self-test",
            fixture("testscripts"),
            script.clone(),
            vec![s],
            &ONE_SERVER,
        );
        runner.run();
        assert_eq!(runner.failures.len(), 10, "{:#?}", runner.failures);
        assert_eq!(
            runner
                .notes
                .iter()
                .filter(|n| n.starts_with("warning:"))
                .count(),
            1,
            "{:#?}",
            runner.notes
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Errata: published asserts that contradict the R4 specification.
// ---------------------------------------------------------------------------------------------

/// One published assert replaced by what the specification requires.
struct Erratum {
    script: &'static str,
    /// `setup` or the test's `id` (or `name`).
    section: &'static str,
    /// The action's index within its section.
    action: usize,
    /// Assert elements that replace the published ones.
    corrected: &'static [(&'static str, &'static str)],
    why: &'static str,
}

/// R4 datatypes.html#id: an id is `[A-Za-z0-9\-\.]{1,64}`, capitals included, so
/// `Patient/ID-may-not-contain-CAPITALS` is a well-formed id that does not exist: 404.
const CAPITALS_ARE_VALID: &str = "R4 datatypes.html#id allows capitals ([A-Za-z0-9\\-\\.]{1,64}); \
     a read of a well-formed id that does not exist is 404 (http.html#read), not 400";

/// R4 http.html#update: "If no id element is provided, or the id disagrees with the id in the
/// URL, the server SHALL respond with an HTTP 400 error code". The scripts PUT a fixture whose
/// id is not the id of the URL.
const UPDATE_ID_MISMATCH: &str = "fixture Patient/pat1 has id pat1 where the URL says example: \
     R4 http.html#update requires 400";

const ERRATA: &[Erratum] = &[
    Erratum {
        script: "hl7-spec-r4/TestScript-testscript-example-readtest.json",
        section: "R004",
        action: 1,
        corrected: &[("response", "notFound")],
        why: CAPITALS_ARE_VALID,
    },
    Erratum {
        script: "crucible-testscript-engine/read_testscript.json",
        section: "R004",
        action: 1,
        corrected: &[("response", "notFound")],
        why: CAPITALS_ARE_VALID,
    },
    Erratum {
        script: "hl7-spec-r4/TestScript-testscript-example-history.json",
        section: "setup",
        action: 5,
        corrected: &[("responseCode", "400")],
        why: UPDATE_ID_MISMATCH,
    },
    Erratum {
        script: "hl7-spec-r4/TestScript-testscript-example-update.json",
        section: "01-UpdatePatient",
        action: 1,
        corrected: &[("response", "bad")],
        why: UPDATE_ID_MISMATCH,
    },
    Erratum {
        script: "crucible-testscript-engine/general_testscript.json",
        section: "setup",
        action: 3,
        corrected: &[("responseCode", "201")],
        why: "the script deletes Patient/example and then PUTs it: http.html#update answers \
              201 when the update creates the resource (the assert's own label is \
              01-ConfirmResponse201, and the HL7 original of this script asserts 201)",
    },
    Erratum {
        script: "crucible-testscript-engine/history_testscript.json",
        section: "setup",
        action: 5,
        corrected: &[("responseCode", "400")],
        why: "fixtures/Patient/example2.json has id example2 where the URL says example \
              (http.html#update: 400) and birthDate 1978-3-1, which is not an R4 date \
              (datatypes.html#date: YYYY-MM-DD)",
    },
    Erratum {
        script: "crucible-testscript-engine/history_testscript.json",
        section: "01-HistoryPatient",
        action: 3,
        corrected: &[("resource", "Bundle")],
        why: "the profile named bundle-profile is the Patient StructureDefinition, and a \
              history is a Bundle (http.html#history): a Bundle cannot conform to Patient. \
              What the assert means, the Bundle type, is checked instead",
    },
    Erratum {
        script: "crucible-testscript-engine/update_testscript.json",
        section: "01-UpdatePatient",
        action: 1,
        corrected: &[("response", "bad")],
        why: "fixtures/Patient/example2.json has id example2 where the URL says example \
              (http.html#update: 400) and birthDate 1978-3-1, which is not an R4 date \
              (datatypes.html#date: YYYY-MM-DD)",
    },
];

// ---------------------------------------------------------------------------------------------
// Running a script.
// ---------------------------------------------------------------------------------------------

fn run_script(script: &'static str, pre: &Preconditions) {
    for_each_backend(|first| {
        let others: Vec<Server> = (1..pre.destinations)
            .map(|_| Server::start(first.backend))
            .collect();
        let mut servers = vec![first];
        servers.extend(others.iter());
        for server in &servers {
            for file in pre.seed {
                let resource = read_fixture_json(file);
                let path = format!(
                    "{}/{}",
                    resource["resourceType"].as_str().unwrap(),
                    resource["id"].as_str().unwrap()
                );
                let status = server.put(&path, &resource).status;
                assert!(
                    status == 200 || status == 201,
                    "precondition: PUT {path} answered {status}"
                );
            }
        }
        let mut runner = Runner::new(script, servers, pre);
        runner.run();
        runner.finish();
    });
}

/// One HTTP request and its response.
#[derive(Debug, Clone)]
struct Exchange {
    /// The destination (1-based) the request went to.
    destination: usize,
    method: String,
    url: String,
    request_headers: Vec<(String, String)>,
    status: u16,
    response_headers: Vec<(String, String)>,
    body: String,
}

impl Exchange {
    fn response_header(&self, name: &str) -> Option<&str> {
        header_in(&self.response_headers, name)
    }

    fn request_header(&self, name: &str) -> Option<&str> {
        header_in(&self.request_headers, name)
    }

    /// The response payload as JSON (an XML payload through `xml_to_json`).
    fn payload(&self) -> Result<Value, String> {
        payload_json(
            self.response_header("content-type").unwrap_or(""),
            &self.body,
        )
    }

    fn describe(&self) -> String {
        format!(
            "request: {} {}\nresponse: {} {}\n{}",
            self.method,
            self.url,
            self.status,
            self.response_header("content-type")
                .unwrap_or("(no content type)"),
            truncate(&self.body, 1500)
        )
    }
}

fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What a `sourceId`/`targetId` names: a fixture of the script, or a response kept under
/// `responseId`.
#[derive(Debug, Clone)]
enum Source {
    Fixture(Value),
    Response(Exchange),
}

impl Source {
    fn resource(&self) -> Result<Value, String> {
        match self {
            Source::Fixture(v) => Ok(v.clone()),
            Source::Response(x) => x.payload(),
        }
    }
}

struct Runner<'a> {
    name: &'static str,
    dir: PathBuf,
    script: Value,
    servers: Vec<&'a Server>,
    inputs: HashMap<String, String>,
    sources: HashMap<String, Source>,
    last: Option<Exchange>,
    /// Fixtures created by `autocreate`: (fixture id, destination, type/id on the server).
    autocreated: Vec<(String, usize, String)>,
    failures: Vec<String>,
    notes: Vec<String>,
    errata_used: Vec<usize>,
}

impl<'a> Runner<'a> {
    /// The runner for the script file `name` under fixtures/testscripts.
    fn new(name: &'static str, servers: Vec<&'a Server>, pre: &Preconditions) -> Runner<'a> {
        let path = fixture("testscripts").join(name);
        let script = read_json_file(&path).unwrap();
        let dir = path.parent().unwrap().to_path_buf();
        Runner::with_script(name, dir, script, servers, pre)
    }

    /// The runner for a script given as a value; its fixtures are resolved from `dir`.
    fn with_script(
        name: &'static str,
        dir: PathBuf,
        script: Value,
        servers: Vec<&'a Server>,
        pre: &Preconditions,
    ) -> Runner<'a> {
        assert_eq!(script["resourceType"], "TestScript", "{name}");
        Runner {
            name,
            dir,
            script,
            servers,
            inputs: pre
                .inputs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            sources: HashMap::new(),
            last: None,
            autocreated: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
            errata_used: Vec::new(),
        }
    }

    fn run(&mut self) {
        self.check_script_elements();
        self.load_fixtures();
        self.autocreate();
        let script = self.script.clone();
        if let Some(actions) = script["setup"]["action"].as_array() {
            self.run_actions("setup", actions, true);
        }
        for test in script["test"].as_array().into_iter().flatten() {
            let section = test["id"]
                .as_str()
                .or(test["name"].as_str())
                .unwrap_or("(unnamed test)");
            let actions = test["action"].as_array().cloned().unwrap_or_default();
            self.run_actions(section, &actions, true);
        }
        if let Some(actions) = script["teardown"]["action"].as_array() {
            // Teardown holds operations only (tst-7 of R4).
            self.run_actions("teardown", actions, false);
        }
        self.autodelete();
    }

    /// Fails the test with every failure; prints warnings and errata applied.
    fn finish(&self) {
        for (i, erratum) in ERRATA.iter().enumerate() {
            if erratum.script == self.name && !self.errata_used.contains(&i) {
                self.fail_now(&format!(
                    "erratum for {} action {} was never reached",
                    erratum.section, erratum.action
                ));
            }
        }
        for note in &self.notes {
            eprintln!("[{}] {note}", self.name);
        }
        if !self.failures.is_empty() {
            panic!(
                "TestScript {} failed {} assert(s):\n\n{}",
                self.name,
                self.failures.len(),
                self.failures.join("\n\n")
            );
        }
    }

    fn fail_now(&self, message: &str) -> ! {
        panic!("TestScript {}: {message}", self.name)
    }

    /// Top-level elements the runner knows; anything else (e.g. `rule`, `ruleset` of older
    /// versions) would change what the script means, so it fails.
    fn check_script_elements(&self) {
        const KNOWN: &[&str] = &[
            "resourceType",
            "id",
            "meta",
            "text",
            "url",
            "identifier",
            "version",
            "name",
            "title",
            "status",
            "experimental",
            "date",
            "publisher",
            "contact",
            "description",
            "useContext",
            "jurisdiction",
            "purpose",
            "copyright",
            "origin",
            "destination",
            "metadata",
            "fixture",
            "profile",
            "variable",
            "setup",
            "test",
            "teardown",
        ];
        if let Some(map) = self.script.as_object() {
            for key in map.keys() {
                if !KNOWN.contains(&key.as_str()) {
                    self.fail_now(&format!("script element {key} is not supported"));
                }
            }
        }
    }

    // --- fixtures -----------------------------------------------------------------------

    fn load_fixtures(&mut self) {
        let fixtures = self.script["fixture"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for f in fixtures {
            let id = f["id"].as_str().unwrap().to_string();
            let reference = f["resource"]["reference"].as_str().unwrap_or_else(|| {
                self.fail_now(&format!("fixture {id} has no resource.reference"))
            });
            let resource = self.fixture_file(reference);
            self.sources.insert(id, Source::Fixture(resource));
        }
    }

    /// A file next to the script, else the official example `Type/id` (where the R4 spec's
    /// own TestScripts find Patient/example and Patient/pat1).
    fn fixture_file(&self, reference: &str) -> Value {
        let local = self.dir.join(reference);
        let path: PathBuf = if local.is_file() {
            local
        } else {
            match reference.split_once('/') {
                Some((ty, id)) if !id.contains('/') => {
                    fixture("r4-examples").join(format!("{ty}-{id}.json"))
                }
                _ => local,
            }
        };
        read_json_file(&path)
            .unwrap_or_else(|e| self.fail_now(&format!("fixture {reference}: {e}")))
    }

    fn autocreate(&mut self) {
        let fixtures = self.script["fixture"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for f in fixtures {
            if f["autocreate"] != true {
                continue;
            }
            let id = f["id"].as_str().unwrap().to_string();
            let Some(Source::Fixture(resource)) = self.sources.get(&id).cloned() else {
                continue;
            };
            let ty = resource["resourceType"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let exchange = self.send(
                1,
                "POST",
                &ty,
                vec![
                    ("Accept".into(), FHIR_JSON.into()),
                    ("Content-Type".into(), FHIR_JSON.into()),
                ],
                Some(serde_json::to_vec(&resource).unwrap()),
            );
            if exchange.status != 201 {
                self.fail_now(&format!("autocreate {id}:\n{}", exchange.describe()));
            }
            // Later operations on the fixture address what the server created.
            let created = exchange.payload().unwrap_or(resource);
            let server_id = created["id"].as_str().unwrap_or_default().to_string();
            self.autocreated
                .push((id.clone(), 1, format!("{ty}/{server_id}")));
            self.sources.insert(id, Source::Fixture(created));
        }
    }

    fn autodelete(&mut self) {
        let fixtures = self.script["fixture"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for f in fixtures {
            if f["autodelete"] != true {
                continue;
            }
            let id = f["id"].as_str().unwrap_or_default();
            let Some((_, dest, path)) = self.autocreated.iter().find(|(f, _, _)| f == id).cloned()
            else {
                self.fail_now(&format!("autodelete {id}: it was not autocreated"));
            };
            let exchange = self.send(dest, "DELETE", &path, vec![], None);
            if !(200..300).contains(&exchange.status) {
                self.fail_now(&format!("autodelete {id}:\n{}", exchange.describe()));
            }
        }
    }

    // --- actions ------------------------------------------------------------------------

    fn run_actions(&mut self, section: &str, actions: &[Value], asserts_allowed: bool) {
        for (index, action) in actions.iter().enumerate() {
            let at = format!("{section} action {index}");
            if let Some(op) = action.get("operation") {
                if let Err(e) = self.operation(op) {
                    self.failures.push(format!("{at}: operation failed: {e}"));
                }
            } else if let (Some(assert), true) = (action.get("assert"), asserts_allowed) {
                self.assert_action(section, index, assert);
            } else {
                self.failures
                    .push(format!("{at}: action not supported: {action}"));
            }
        }
    }

    fn operation(&mut self, op: &Value) -> Result<(), String> {
        const OPERATION_KEYS: &[&str] = &[
            "type",
            "resource",
            "label",
            "description",
            "accept",
            "contentType",
            "destination",
            "encodeRequestUrl",
            "method",
            "origin",
            "params",
            "requestHeader",
            "requestId",
            "responseId",
            "sourceId",
            "targetId",
            "url",
        ];
        unknown_keys(op, OPERATION_KEYS)?;
        let code = op["type"]["code"].as_str().unwrap_or("");
        let method = match op["method"].as_str() {
            Some(m) => m.to_ascii_uppercase(),
            None => match code {
                "read" | "vread" | "search" | "history" => "GET".to_string(),
                "create" => "POST".to_string(),
                "update" => "PUT".to_string(),
                "delete" => "DELETE".to_string(),
                other => return Err(format!("operation type '{other}' is not supported")),
            },
        };
        let mut path = self.operation_path(op, code)?;
        if op["encodeRequestUrl"] != false {
            path = encode_url(&path);
        }
        let mut headers = vec![("Accept".to_string(), media_type(op["accept"].as_str()))];
        let body = if matches!(method.as_str(), "POST" | "PUT") {
            let source_id = op["sourceId"]
                .as_str()
                .ok_or("a create or update needs a sourceId")?;
            let resource = self.source(source_id)?.resource()?;
            let content_type = media_type(op["contentType"].as_str());
            let bytes = if content_type == FHIR_XML {
                json_to_xml(&resource)?.into_bytes()
            } else {
                serde_json::to_vec(&resource).map_err(|e| e.to_string())?
            };
            headers.push(("Content-Type".to_string(), content_type));
            Some(bytes)
        } else {
            None
        };
        for h in op["requestHeader"].as_array().into_iter().flatten() {
            let field = h["field"].as_str().ok_or("requestHeader without field")?;
            let value = self.substitute(h["value"].as_str().unwrap_or(""))?;
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(field));
            headers.push((field.to_string(), value));
        }
        let destination = op["destination"].as_u64().unwrap_or(1) as usize;
        if destination == 0 || destination > self.servers.len() {
            return Err(format!("destination {destination} is not set up"));
        }
        let exchange = self.send(destination, &method, &path, headers, body);
        if let Some(id) = op["responseId"].as_str() {
            self.sources
                .insert(id.to_string(), Source::Response(exchange.clone()));
        }
        // `requestId` names the request for a TestReport; no R4 assert refers to it, so the
        // runner keeps nothing under it.
        self.last = Some(exchange);
        Ok(())
    }

    /// The request path: `url`, else `[resource]params`, else from `targetId`, else the type
    /// of the `sourceId` (create), else the type alone.
    fn operation_path(&self, op: &Value, code: &str) -> Result<String, String> {
        if let Some(url) = op["url"].as_str() {
            return self.substitute(url);
        }
        let resource = op["resource"].as_str();
        if let Some(params) = op["params"].as_str() {
            let ty = resource.ok_or("params without resource")?;
            return Ok(format!("{ty}{}", self.substitute(params)?));
        }
        if let Some(target) = op["targetId"].as_str() {
            let target = self.source(target)?.resource()?;
            let ty = target["resourceType"]
                .as_str()
                .ok_or("target has no type")?;
            let id = target["id"].as_str().ok_or("target has no id")?;
            return Ok(match code {
                "history" => format!("{ty}/{id}/_history"),
                "vread" => {
                    let version = target["meta"]["versionId"]
                        .as_str()
                        .ok_or("vread target has no meta.versionId")?;
                    format!("{ty}/{id}/_history/{version}")
                }
                _ => format!("{ty}/{id}"),
            });
        }
        if let Some(source) = op["sourceId"].as_str() {
            let resource = self.source(source)?.resource()?;
            let ty = resource["resourceType"]
                .as_str()
                .ok_or("source has no type")?;
            return Ok(match (code, resource["id"].as_str()) {
                ("update", Some(id)) => format!("{ty}/{id}"),
                _ => ty.to_string(),
            });
        }
        resource
            .map(str::to_string)
            .ok_or_else(|| "no url, params, targetId, sourceId or resource".to_string())
    }

    fn send(
        &self,
        destination: usize,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
    ) -> Exchange {
        let server = self.servers[destination - 1];
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let resp = server.request(method, path, &pairs, body);
        Exchange {
            destination,
            method: method.to_string(),
            url: server.url(path),
            request_headers: headers,
            status: resp.status,
            response_headers: resp
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        v.to_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            body: resp.body,
        }
    }

    fn source(&self, id: &str) -> Result<&Source, String> {
        self.sources
            .get(id)
            .ok_or_else(|| format!("no fixture or response named {id}"))
    }

    // --- variables ----------------------------------------------------------------------

    /// Replaces every `${name}` by the variable's current value.
    fn substitute(&self, text: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or("unterminated ${")?;
            out.push_str(&self.variable(&after[..end])?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn variable(&self, name: &str) -> Result<String, String> {
        const VARIABLE_KEYS: &[&str] = &[
            "name",
            "defaultValue",
            "description",
            "expression",
            "headerField",
            "hint",
            "path",
            "sourceId",
        ];
        let def = self.script["variable"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .ok_or_else(|| format!("undefined variable {name}"))?;
        unknown_keys(def, VARIABLE_KEYS)?;
        // A value from a source wins over defaultValue, which is its fallback (R4 tst-*).
        let source = match def["sourceId"].as_str() {
            Some(id) => Some(self.source(id)?.clone()),
            None => self.last.clone().map(Source::Response),
        };
        let from_source = match (&source, def) {
            (Some(Source::Response(x)), d) if d["headerField"].is_string() => x
                .response_header(d["headerField"].as_str().unwrap_or(""))
                .map(str::to_string),
            (Some(src), d) if d["path"].is_string() => first(path_values(
                &src.resource()?,
                d["path"].as_str().unwrap_or(""),
            )?),
            (Some(src), d) if d["expression"].is_string() => first(fhirpath_values(
                &src.resource()?,
                d["expression"].as_str().unwrap_or(""),
            )?),
            _ => None,
        };
        if let Some(value) = from_source {
            return Ok(value);
        }
        if let Some(value) = def["defaultValue"].as_str() {
            return Ok(value.to_string());
        }
        if let Some(value) = self.inputs.get(name) {
            return Ok(value.clone());
        }
        Err(format!("variable {name} has no value"))
    }

    // --- asserts ------------------------------------------------------------------------

    fn assert_action(&mut self, section: &str, index: usize, assert: &Value) {
        let at = format!("{section} action {index}");
        let description = assert["description"]
            .as_str()
            .or(assert["label"].as_str())
            .unwrap_or("")
            .to_string();
        let erratum = ERRATA
            .iter()
            .position(|e| e.script == self.name && e.section == section && e.action == index);
        let published = self.evaluate_assert(assert);
        let (outcome, checked) = match erratum {
            None => (published, assert.clone()),
            Some(i) => {
                self.errata_used.push(i);
                let e = &ERRATA[i];
                if published.is_ok() {
                    self.failures.push(format!(
                        "{at} ({description}): erratum is stale, the published assert passes; \
                         remove it from ERRATA"
                    ));
                }
                let mut corrected = assert.clone();
                for key in ["response", "responseCode", "validateProfileId", "operator"] {
                    if let Some(map) = corrected.as_object_mut() {
                        map.remove(key);
                    }
                }
                for (k, v) in e.corrected {
                    corrected[*k] = Value::String((*v).to_string());
                }
                self.notes.push(format!(
                    "{at}: erratum: published {} replaced by {}: {}",
                    assert,
                    Value::Object(
                        e.corrected
                            .iter()
                            .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
                            .collect()
                    ),
                    e.why
                ));
                (self.evaluate_assert(&corrected), corrected)
            }
        };
        if let Err(reason) = outcome {
            let context = self
                .last
                .as_ref()
                .map(Exchange::describe)
                .unwrap_or_else(|| "(no request yet)".to_string());
            let text = format!("{at} ({description}): {reason}\n  assert: {checked}\n{context}");
            if assert["warningOnly"] == true {
                self.notes.push(format!("warning: {text}"));
            } else {
                self.failures.push(text);
            }
        }
    }

    /// Evaluates one assert; `Err` says why it does not hold.
    fn evaluate_assert(&self, a: &Value) -> Result<(), String> {
        const ASSERT_KEYS: &[&str] = &[
            "label",
            "description",
            "direction",
            "compareToSourceId",
            "compareToSourceExpression",
            "compareToSourcePath",
            "contentType",
            "expression",
            "headerField",
            "minimumId",
            "navigationLinks",
            "operator",
            "path",
            "requestMethod",
            "requestURL",
            "resource",
            "response",
            "responseCode",
            "sourceId",
            "validateProfileId",
            "value",
            "warningOnly",
        ];
        unknown_keys(a, ASSERT_KEYS)?;
        let operator = a["operator"].as_str().unwrap_or("equals");
        let value = match a["value"].as_str() {
            Some(v) => Some(self.substitute(v)?),
            None => None,
        };
        let request_side = a["direction"] == "request";
        // The exchange an assert looks at: its sourceId (a kept response), else the last one.
        let exchange = match a["sourceId"].as_str() {
            Some(id) => match self.source(id)? {
                Source::Response(x) => Some(x.clone()),
                Source::Fixture(_) => None,
            },
            None => self.last.clone(),
        };
        let subject = || -> Result<Value, String> {
            match a["sourceId"].as_str() {
                Some(id) => self.source(id)?.resource(),
                None => self.last.as_ref().ok_or("no response yet")?.payload(),
            }
        };
        let need_exchange = || exchange.clone().ok_or("no request/response to assert on");
        let mut checked = 0;

        if let Some(code) = a["response"].as_str() {
            checked += 1;
            let expected = response_code(code)?;
            let got = need_exchange()?.status;
            if got != expected {
                return Err(format!("response is {got}, expected {code} ({expected})"));
            }
        }
        if let Some(codes) = a["responseCode"].as_str() {
            checked += 1;
            let got = need_exchange()?.status.to_string();
            compare(operator, Some(got.as_str()), codes)
                .map_err(|e| format!("responseCode: {e}"))?;
        }
        if let Some(expected) = a["contentType"].as_str() {
            checked += 1;
            let x = need_exchange()?;
            let header = if request_side {
                x.request_header("content-type")
            } else {
                x.response_header("content-type")
            };
            let got = header.map(|h| h.split(';').next().unwrap_or("").trim().to_string());
            compare(operator, got.as_deref(), &media_type(Some(expected)))
                .map_err(|e| format!("contentType: {e}"))?;
        }
        if let Some(field) = a["headerField"].as_str() {
            checked += 1;
            let x = need_exchange()?;
            let got = if request_side {
                x.request_header(field)
            } else {
                x.response_header(field)
            };
            compare(operator, got, value.as_deref().unwrap_or(""))
                .map_err(|e| format!("header {field}: {e}"))?;
        }
        if let Some(ty) = a["resource"].as_str() {
            checked += 1;
            let got = subject()?;
            if got["resourceType"] != ty {
                return Err(format!(
                    "resource type is {}, expected {ty}",
                    got["resourceType"]
                ));
            }
        }
        if let Some(expected) = a["requestMethod"].as_str() {
            checked += 1;
            let got = need_exchange()?.method.to_ascii_lowercase();
            compare(operator, Some(got.as_str()), &expected.to_ascii_lowercase())
                .map_err(|e| format!("requestMethod: {e}"))?;
        }
        if let Some(expected) = a["requestURL"].as_str() {
            checked += 1;
            let got = need_exchange()?.url;
            compare(operator, Some(got.as_str()), &self.substitute(expected)?)
                .map_err(|e| format!("requestURL: {e}"))?;
        }
        if let Some(id) = a["minimumId"].as_str() {
            checked += 1;
            let minimum = self.source(id)?.resource()?;
            minimum_contained(&minimum, &subject()?).map_err(|e| format!("minimumId {id}: {e}"))?;
        }
        if let Some(flag) = a["navigationLinks"].as_bool() {
            checked += 1;
            self.navigation_links(&subject()?, flag, exchange.as_ref())?;
        }
        if let Some(profile_id) = a["validateProfileId"].as_str() {
            checked += 1;
            self.validate_profile(profile_id, &subject()?, exchange.as_ref())?;
        }
        if a.get("path").is_some()
            || a.get("expression").is_some()
            || a.get("compareToSourceId").is_some()
        {
            checked += 1;
            self.value_assert(a, operator, value.as_deref(), &subject)?;
        }
        if checked == 0 {
            return Err(format!("assert checks nothing the runner knows: {a}"));
        }
        Ok(())
    }

    /// `path` / `expression`, against `value`, or against the same (or `compareToSource*`)
    /// evaluated on `compareToSourceId`.
    fn value_assert(
        &self,
        a: &Value,
        operator: &str,
        value: Option<&str>,
        subject: &dyn Fn() -> Result<Value, String>,
    ) -> Result<(), String> {
        // Where only compareToSourcePath/Expression is given, it applies to both sides (the
        // HL7 example compares the family name of the read with that of the fixture so).
        let path = a["path"].as_str().or(a["compareToSourcePath"].as_str());
        let expression = a["expression"]
            .as_str()
            .or(a["compareToSourceExpression"].as_str());
        let evaluate = |resource: &Value| -> Result<Vec<String>, String> {
            match (path, expression) {
                (Some(p), _) => path_values(resource, p),
                (None, Some(e)) => fhirpath_values(resource, e),
                (None, None) => Err("neither path nor expression".into()),
            }
        };
        let got = evaluate(&subject()?)?;
        let got_text = collection_text(&got, path.is_some());
        if let Some(other) = a["compareToSourceId"].as_str() {
            let other = self.source(other)?.resource()?;
            let theirs = match (
                a["compareToSourcePath"].as_str(),
                a["compareToSourceExpression"].as_str(),
            ) {
                (Some(p), _) => collection_text(&path_values(&other, p)?, true),
                (None, Some(e)) => collection_text(&fhirpath_values(&other, e)?, false),
                (None, None) => return Err("compareToSourceId without a path/expression".into()),
            };
            return compare(
                operator,
                got_text.as_deref(),
                theirs.as_deref().unwrap_or(""),
            )
            .map_err(|e| format!("compared with source: {e}"));
        }
        let result = match (value, operator) {
            (Some(v), op) => compare(op, got_text.as_deref(), v),
            (None, "empty" | "notEmpty") => compare(operator, got_text.as_deref(), ""),
            // An expression without a value is a condition that must be true.
            (None, "equals" | "eval") if path.is_none() => {
                if got == ["true"] {
                    Ok(())
                } else {
                    Err(format!("expression is {got:?}, not true"))
                }
            }
            (None, op) => Err(format!("operator {op} needs a value")),
        };
        result.map_err(|e| format!("{}: {e}", path.or(expression).unwrap_or("")))
    }

    /// navigationLinks (R4 http.html#paging, search.html#self): a Bundle whose `self` link is
    /// present, and whose first/previous/next/last links, where present, each answer 200 with
    /// a Bundle of the same type. `false` asserts that there are no navigation links.
    fn navigation_links(
        &self,
        bundle: &Value,
        expected: bool,
        exchange: Option<&Exchange>,
    ) -> Result<(), String> {
        if bundle["resourceType"] != "Bundle" {
            return Err("navigationLinks: the payload is not a Bundle".into());
        }
        let links = bundle["link"].as_array().cloned().unwrap_or_default();
        let navigation: Vec<&Value> = links
            .iter()
            .filter(|l| {
                matches!(
                    l["relation"].as_str(),
                    Some("first" | "previous" | "prev" | "next" | "last")
                )
            })
            .collect();
        if !expected {
            return if navigation.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "navigationLinks false, but the Bundle has {navigation:?}"
                ))
            };
        }
        if !links.iter().any(|l| l["relation"] == "self") {
            return Err("navigationLinks: no self link".into());
        }
        for link in navigation {
            let url = link["url"].as_str().ok_or("a link without url")?;
            let destination = exchange.map_or(1, |x| x.destination);
            let accept = vec![("Accept".to_string(), FHIR_JSON.to_string())];
            let x = self.send(destination, "GET", url, accept, None);
            let page = x.payload()?;
            if x.status != 200 || page["type"] != bundle["type"] {
                return Err(format!(
                    "navigationLinks: link {} does not answer a {} Bundle:\n{}",
                    link["relation"],
                    bundle["type"],
                    x.describe()
                ));
            }
        }
        Ok(())
    }

    /// validateProfileId. The server offers no $validate (docs/API.md: 404 not-supported) and
    /// the workspace has no validator independent of the server, so this checks what can be
    /// checked honestly: the profile is a core R4 StructureDefinition (anything else fails as
    /// unsupported), the payload is FHIR of that type (the XML in the FHIR namespace), and,
    /// for a response, the status is 2xx with a Content-Type of a FHIR format.
    fn validate_profile(
        &self,
        profile_id: &str,
        resource: &Value,
        exchange: Option<&Exchange>,
    ) -> Result<(), String> {
        let profile = self.script["profile"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"] == profile_id)
            .ok_or_else(|| format!("no profile {profile_id}"))?;
        let url = profile["reference"].as_str().unwrap_or("");
        let ty = url
            .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
            .filter(|t| t.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
            .ok_or_else(|| format!("profile {url} is not a core resource profile"))?;
        if resource["resourceType"] != ty {
            return Err(format!(
                "validateProfileId {profile_id}: a {} does not conform to {url}",
                resource["resourceType"]
            ));
        }
        if let Some(x) = exchange {
            let content_type = x.response_header("content-type").unwrap_or("");
            if !(200..300).contains(&x.status)
                || !(content_type.starts_with(FHIR_JSON) || content_type.starts_with(FHIR_XML))
            {
                return Err(format!(
                    "validateProfileId: response {} {content_type}",
                    x.status
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Small pieces.
// ---------------------------------------------------------------------------------------------

fn read_json_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn unknown_keys(element: &Value, known: &[&str]) -> Result<(), String> {
    match element
        .as_object()
        .and_then(|m| m.keys().find(|k| !known.contains(&k.as_str())))
    {
        Some(key) => Err(format!("element {key} is not supported by the runner")),
        None => Ok(()),
    }
}

/// `xml`/`json` as FHIR media types; a media type as given; JSON when absent.
fn media_type(format: Option<&str>) -> String {
    match format {
        Some("xml") => FHIR_XML.to_string(),
        Some("json") | None => FHIR_JSON.to_string(),
        Some(other) => other.to_string(),
    }
}

/// R4 assert-response-code-types.
fn response_code(code: &str) -> Result<u16, String> {
    Ok(match code {
        "okay" => 200,
        "created" => 201,
        "noContent" => 204,
        "notModified" => 304,
        "bad" => 400,
        "forbidden" => 403,
        "notFound" => 404,
        "methodNotAllowed" => 405,
        "conflict" => 409,
        "gone" => 410,
        "preconditionFailed" => 412,
        "unprocessable" => 422,
        other => return Err(format!("unknown response code {other}")),
    })
}

/// R4 assert-operator-codes over text; `got` is None when there is nothing to compare.
fn compare(operator: &str, got: Option<&str>, expected: &str) -> Result<(), String> {
    let actual = got.unwrap_or("");
    let ok = match operator {
        "equals" => got.is_some() && actual == expected,
        "notEquals" => actual != expected,
        "in" => got.is_some() && expected.split(',').any(|v| v.trim() == actual),
        "notIn" => !expected.split(',').any(|v| v.trim() == actual),
        "greaterThan" | "lessThan" => {
            let ordering = match (actual.parse::<f64>(), expected.parse::<f64>()) {
                (Ok(x), Ok(y)) => x.partial_cmp(&y),
                _ => Some(actual.cmp(expected)),
            };
            got.is_some()
                && ordering
                    == Some(if operator == "greaterThan" {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Less
                    })
        }
        "empty" => actual.is_empty(),
        "notEmpty" => !actual.is_empty(),
        "contains" => got.is_some() && actual.contains(expected),
        "notContains" => !actual.contains(expected),
        other => return Err(format!("operator {other} is not supported")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{got:?} {operator} {expected:?} does not hold"))
    }
}

fn first(values: Vec<String>) -> Option<String> {
    values.into_iter().next()
}

/// XPath turns a node-set into its first node's value; a FHIRPath collection of one item is
/// that item, and several items are compared as a comma-separated list.
fn collection_text(values: &[String], xpath: bool) -> Option<String> {
    match values {
        [] => None,
        [one, ..] if xpath => Some(one.clone()),
        [one] => Some(one.clone()),
        many => Some(many.join(",")),
    }
}

fn fhirpath_values(resource: &Value, expression: &str) -> Result<Vec<String>, String> {
    let nodes = renkei_fhirpath::evaluate(expression, resource)
        .map_err(|e| format!("FHIRPath {expression}: {e}"))?;
    Ok(nodes.iter().map(|n| scalar_text(n.value())).collect())
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The XPath subset of the scripts over a FHIR JSON view: `fhir:Type/fhir:child/…` and an
/// optional final `@attribute` (`@value` is the primitive itself). A final step on a primitive
/// element is read as its value (`Patient/id`, as the HL7 scripts use it).
fn path_values(resource: &Value, xpath: &str) -> Result<Vec<String>, String> {
    let unsupported = |why: &str| Err(format!("XPath {xpath}: {why} is not supported"));
    let steps: Vec<&str> = xpath.trim_start_matches('/').split('/').collect();
    let Some((root, rest)) = steps.split_first() else {
        return unsupported("an empty path");
    };
    let root = root.strip_prefix("fhir:").unwrap_or(root);
    if root.is_empty() || root.contains(['[', '(', '*', ':', '.', '@']) {
        return unsupported(&format!("the step {root}"));
    }
    if resource["resourceType"] != root {
        return Ok(Vec::new());
    }
    let mut nodes = vec![resource.clone()];
    for (i, step) in rest.iter().enumerate() {
        if let Some(attribute) = step.strip_prefix('@') {
            if i + 1 != rest.len() {
                return unsupported("an attribute before the last step");
            }
            return Ok(nodes
                .iter()
                .filter_map(|n| match n {
                    Value::Object(m) => m.get(attribute).map(scalar_text),
                    primitive if attribute == "value" => Some(scalar_text(primitive)),
                    _ => None,
                })
                .collect());
        }
        let name = step.strip_prefix("fhir:").unwrap_or(step);
        if name.is_empty() || name.contains(['[', '(', '*', ':', '.']) {
            return unsupported(&format!("the step {step}"));
        }
        nodes = nodes
            .iter()
            .filter_map(|n| n.get(name))
            .flat_map(|v| match v {
                Value::Array(items) => items.clone(),
                one => vec![one.clone()],
            })
            .collect();
    }
    Ok(nodes
        .iter()
        .filter(|n| !n.is_object() && !n.is_array())
        .map(scalar_text)
        .collect())
}

/// minimumId: every element of the minimum fixture (except `id` and `meta`, which the server
/// assigns) is in the payload with the same value; a list item may match any item of the
/// payload's list.
fn minimum_contained(minimum: &Value, actual: &Value) -> Result<(), String> {
    fn contained(min: &Value, act: &Value, at: &str) -> Result<(), String> {
        match (min, act) {
            (Value::Object(m), Value::Object(a)) => {
                for (k, v) in m {
                    if at.is_empty() && (k == "id" || k == "meta") {
                        continue;
                    }
                    let Some(w) = a.get(k) else {
                        return Err(format!("{at}.{k} is missing"));
                    };
                    contained(v, w, &format!("{at}.{k}"))?;
                }
                Ok(())
            }
            (Value::Array(m), Value::Array(a)) => {
                for (i, v) in m.iter().enumerate() {
                    if !a.iter().any(|w| contained(v, w, "").is_ok()) {
                        return Err(format!("{at}[{i}] has no match: {v}"));
                    }
                }
                Ok(())
            }
            (m, a) if scalar_text(m) == scalar_text(a) => Ok(()),
            (m, a) => Err(format!("{at} is {a}, expected {m}")),
        }
    }
    contained(minimum, actual, "")
}

/// Percent-encodes what may not stand in a URL as it is (spaces, non-ASCII, …), leaving the
/// delimiters of the path and query alone.
fn encode_url(url: &str) -> String {
    let mut out = String::new();
    for c in url.chars() {
        if c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/?%#".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn payload_json(content_type: &str, body: &str) -> Result<Value, String> {
    if body.trim().is_empty() {
        return Err("the response has no payload".into());
    }
    if content_type.contains("xml") {
        let root = parse_xml(body)?;
        if root.attribute("xmlns") != Some("http://hl7.org/fhir") {
            return Err(format!(
                "XML root {} is not in the FHIR namespace",
                root.name
            ));
        }
        Ok(xml_to_json(&root))
    } else {
        serde_json::from_str(body).map_err(|e| format!("payload is not JSON: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// FHIR XML: writing a JSON fixture as XML, and reading a response.
// ---------------------------------------------------------------------------------------------

/// FHIR JSON → FHIR XML (R4 xml.html, json.html): elements in the fixture's key order (the
/// order of the definitions in the fixtures used here), primitives as `value` attributes with
/// their `_name` companion's `id`/`extension`, `id` of non-resource elements and `url` of
/// extensions as attributes, nested resources wrapped in their type, the narrative as XHTML.
fn json_to_xml(resource: &Value) -> Result<String, String> {
    let mut out = String::new();
    write_resource(&mut out, resource)?;
    Ok(out)
}

fn write_resource(out: &mut String, resource: &Value) -> Result<(), String> {
    let map = resource.as_object().ok_or("a resource must be an object")?;
    let ty = map
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or("resourceType missing")?;
    let _ = write!(out, "<{ty} xmlns=\"http://hl7.org/fhir\">");
    write_members(out, map, false)?;
    let _ = write!(out, "</{ty}>");
    Ok(())
}

/// The members of an object as child elements; with `attributes_done`, `id` (and `url`) were
/// written as attributes already.
fn write_members(
    out: &mut String,
    map: &Map<String, Value>,
    attributes_done: bool,
) -> Result<(), String> {
    for (key, value) in map {
        if key == "resourceType" || (attributes_done && (key == "id" || key == "url")) {
            continue;
        }
        if let Some(base) = key.strip_prefix('_') {
            // A companion is written with its primitive, or alone if there is none.
            if !map.contains_key(base) {
                write_element(out, base, &Value::Null, Some(value))?;
            }
            continue;
        }
        write_element(out, key, value, map.get(&format!("_{key}")))?;
    }
    Ok(())
}

fn write_element(
    out: &mut String,
    name: &str,
    value: &Value,
    companion: Option<&Value>,
) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let c = companion.and_then(|c| c.get(i)).filter(|c| !c.is_null());
                write_element(out, name, item, c)?;
            }
            if items.is_empty() {
                if let Some(Value::Array(cs)) = companion {
                    for c in cs {
                        write_element(out, name, &Value::Null, Some(c))?;
                    }
                }
            }
        }
        Value::Object(map) if map.contains_key("resourceType") => {
            let _ = write!(out, "<{name}>");
            write_resource(out, value)?;
            let _ = write!(out, "</{name}>");
        }
        Value::String(div) if name == "div" => out.push_str(div),
        Value::Object(map) => {
            let _ = write!(out, "<{name}");
            let is_extension = name == "extension" || name == "modifierExtension";
            if let Some(id) = map.get("id").and_then(Value::as_str) {
                let _ = write!(out, " id=\"{}\"", xml_escape(id));
            }
            if is_extension {
                if let Some(url) = map.get("url").and_then(Value::as_str) {
                    let _ = write!(out, " url=\"{}\"", xml_escape(url));
                }
            }
            out.push('>');
            if is_extension {
                write_members(out, map, true)?;
            } else {
                let mut rest = map.clone();
                rest.remove("id");
                write_members(out, &rest, false)?;
            }
            let _ = write!(out, "</{name}>");
        }
        primitive => {
            let _ = write!(out, "<{name}");
            if let Some(id) = companion.and_then(|c| c["id"].as_str()) {
                let _ = write!(out, " id=\"{}\"", xml_escape(id));
            }
            if !primitive.is_null() {
                let _ = write!(out, " value=\"{}\"", xml_escape(&scalar_text(primitive)));
            }
            match companion.and_then(|c| c["extension"].as_array()) {
                Some(extensions) => {
                    out.push('>');
                    for e in extensions {
                        write_element(out, "extension", e, None)?;
                    }
                    let _ = write!(out, "</{name}>");
                }
                None => out.push_str("/>"),
            }
        }
    }
    Ok(())
}

fn xml_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

/// An XML element (names without their prefix).
#[derive(Debug, Default)]
struct XmlElement {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<XmlElement>,
}

impl XmlElement {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A small XML reader, enough for FHIR payloads: declaration, comments, elements, attributes
/// and character references; text content is skipped (FHIR keeps values in attributes; the
/// narrative's XHTML is not looked at).
fn parse_xml(text: &str) -> Result<XmlElement, String> {
    let mut reader = XmlReader { text, pos: 0 };
    reader.skip_misc()?;
    let root = reader.element()?;
    reader.skip_misc()?;
    if reader.pos != text.len() {
        return Err("XML: content after the root element".into());
    }
    Ok(root)
}

struct XmlReader<'t> {
    text: &'t str,
    pos: usize,
}

impl XmlReader<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_until(&mut self, end: &str) -> Result<(), String> {
        let i = self
            .rest()
            .find(end)
            .ok_or_else(|| format!("XML: missing {end}"))?;
        self.pos += i + end.len();
        Ok(())
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    /// Whitespace, the declaration, comments and a doctype.
    fn skip_misc(&mut self) -> Result<(), String> {
        loop {
            self.skip_space();
            if self.rest().starts_with("<?") {
                self.skip_until("?>")?;
            } else if self.rest().starts_with("<!--") {
                self.skip_until("-->")?;
            } else if self.rest().starts_with("<!DOCTYPE") {
                return Err("XML: a DOCTYPE is not FHIR".into());
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let len = self
            .rest()
            .find(|c: char| c.is_whitespace() || "/>=".contains(c))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(format!("XML: expected a name at byte {}", self.pos));
        }
        let name = self.rest()[..len].to_string();
        self.pos += len;
        Ok(name)
    }

    fn element(&mut self) -> Result<XmlElement, String> {
        if !self.rest().starts_with('<') {
            return Err(format!("XML: expected an element at byte {}", self.pos));
        }
        self.pos += 1;
        let qualified = self.name()?;
        let mut element = XmlElement {
            name: local_name(&qualified).to_string(),
            ..XmlElement::default()
        };
        loop {
            self.skip_space();
            if self.rest().starts_with("/>") {
                self.pos += 2;
                return Ok(element);
            }
            if self.rest().starts_with('>') {
                self.pos += 1;
                break;
            }
            let key = self.name()?;
            self.skip_space();
            if !self.rest().starts_with('=') {
                return Err(format!("XML: attribute {key} without a value"));
            }
            self.pos += 1;
            self.skip_space();
            let quote = self.rest().chars().next().ok_or("XML: truncated")?;
            if quote != '"' && quote != '\'' {
                return Err(format!("XML: attribute {key} is not quoted"));
            }
            self.pos += 1;
            let end = self
                .rest()
                .find(quote)
                .ok_or("XML: unterminated attribute")?;
            let raw = &self.rest()[..end];
            let value = unescape(raw)?;
            self.pos += end + 1;
            let key = if key.starts_with("xmlns") {
                key
            } else {
                local_name(&key).to_string()
            };
            element.attributes.push((key, value));
        }
        loop {
            let next = self.rest().find('<').ok_or("XML: unterminated element")?;
            self.pos += next;
            if self.rest().starts_with("</") {
                self.pos += 2;
                let closing = self.name()?;
                if local_name(&closing) != element.name {
                    return Err(format!("XML: </{closing}> closes <{}>", element.name));
                }
                self.skip_space();
                if !self.rest().starts_with('>') {
                    return Err("XML: malformed end tag".into());
                }
                self.pos += 1;
                return Ok(element);
            } else if self.rest().starts_with("<!--") {
                self.skip_until("-->")?;
            } else if self.rest().starts_with("<![CDATA[") {
                self.skip_until("]]>")?;
            } else {
                element.children.push(self.element()?);
            }
        }
    }
}

fn local_name(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

fn unescape(raw: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after.find(';').ok_or("XML: unterminated reference")?;
        let entity = &after[..end];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or("XML: bad character reference")?,
            e if e.starts_with('#') => e[1..]
                .parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .ok_or("XML: bad character reference")?,
            other => return Err(format!("XML: unknown entity &{other};")),
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A JSON view of a FHIR XML resource for `path` and `expression`: elements by name (a
/// repeated one as a list), `value` attributes as strings, `id`/`url` attributes as members,
/// a nested resource (an element whose only child is capitalised) as an object with its
/// `resourceType`. The extensions of a primitive are left out of the view.
fn xml_to_json(resource: &XmlElement) -> Value {
    let mut map = Map::new();
    map.insert(
        "resourceType".to_string(),
        Value::String(resource.name.clone()),
    );
    add_children(&mut map, resource);
    Value::Object(map)
}

fn add_children(map: &mut Map<String, Value>, element: &XmlElement) {
    for child in &element.children {
        let value = xml_element_json(child);
        match map.get_mut(&child.name) {
            None => {
                map.insert(child.name.clone(), value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let previous = existing.take();
                *existing = Value::Array(vec![previous, value]);
            }
        }
    }
}

fn xml_element_json(element: &XmlElement) -> Value {
    if let Some(value) = element.attribute("value") {
        return Value::String(value.to_string());
    }
    if element.name == "div" {
        return Value::String(String::new());
    }
    if let [only] = element.children.as_slice() {
        if only.name.starts_with(|c: char| c.is_ascii_uppercase()) {
            return xml_to_json(only);
        }
    }
    let mut map = Map::new();
    for (k, v) in &element.attributes {
        if !k.starts_with("xmlns") {
            map.insert(k.clone(), Value::String(v.clone()));
        }
    }
    add_children(&mut map, element);
    Value::Object(map)
}

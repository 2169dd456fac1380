//! Search values and modifiers as R4 search.html defines them, found wanting by a black-box
//! review with curl: ValueSet exclusions and versions for `:in`, escapes inside composite
//! and `:of-type` values, `:of-type` outside Identifier parameters, `_id:not`, page tokens
//! reused under another `_sort`, and canonical references searched without a version.

use crate::support::*;
use serde_json::{json, Value};

/// `text` percent-encoded for a query string (everything but unreserved characters), so the
/// escapes under test reach the server exactly as written.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The ids of every page's matches, sorted.
fn ids(s: &Server, path: &str) -> Vec<String> {
    sorted_match_ids(&s.all_pages(path).0)
}

/// The diagnostics of a 400 answer to `path`.
#[track_caller]
fn refused(s: &Server, path: &str, headers: &[(&str, &str)]) -> String {
    let outcome = s.get_with(path, headers).expect(400).outcome();
    outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn observation(id: &str, tag: &str, codings: Value) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "meta": {"tag": [{"system": "urn:search-values", "code": tag}]},
           "code": {"coding": codings}})
}

fn put(s: &Server, resource: &Value) {
    let path = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    );
    s.put(&path, resource).expect(201);
}

/// A ValueSet that includes all of LOINC but excludes 2339-0: an Observation whose only code
/// is 2339-0 is outside it (`:not-in` finds it, `:in` does not); one with another LOINC code,
/// or with 2339-0 beside one, is inside. Before, the whole-system include ignored the
/// exclusion.
#[test]
fn value_set_exclusions_apply_to_whole_system_includes() {
    for_each_backend(|s| {
        let loinc = |code: &str| json!({"system": "http://loinc.org", "code": code});
        put(
            s,
            &observation("vx-glucose", "vx", json!([loinc("2339-0")])),
        );
        put(s, &observation("vx-hb", "vx", json!([loinc("718-7")])));
        put(
            s,
            &observation("vx-both", "vx", json!([loinc("2339-0"), loinc("718-7")])),
        );
        put(
            s,
            &observation(
                "vx-snomed",
                "vx",
                json!([{"system": "http://snomed.info/sct", "code": "271649006"}]),
            ),
        );
        put(
            s,
            &json!({"resourceType": "ValueSet", "id": "loinc-but-glucose", "status": "active",
                    "url": "http://example.org/fhir/ValueSet/loinc-but-glucose",
                    "compose": {
                        "include": [{"system": "http://loinc.org"}],
                        "exclude": [{"system": "http://loinc.org",
                                     "concept": [{"code": "2339-0"}]}]}}),
        );
        let tagged = "_tag=urn:search-values|vx";
        assert_eq!(
            ids(
                s,
                &format!("Observation?{tagged}&code:in=ValueSet/loinc-but-glucose")
            ),
            ["vx-both", "vx-hb"]
        );
        assert_eq!(
            ids(
                s,
                &format!(
                    "Observation?{tagged}&code:in=http://example.org/fhir/ValueSet/loinc-but-glucose"
                )
            ),
            ["vx-both", "vx-hb"]
        );
        assert_eq!(
            ids(
                s,
                &format!("Observation?{tagged}&code:not-in=ValueSet/loinc-but-glucose")
            ),
            ["vx-glucose", "vx-snomed"]
        );
    });
}

/// `:in=<canonical>|<version>` expands that version; without a version the version written
/// last; a version not stored answers 400 like any ValueSet not stored. Before, the version
/// was dropped and the first version stored always won.
#[test]
fn value_set_versions_are_told_apart() {
    for_each_backend(|s| {
        let url = "http://example.org/fhir/ValueSet/versioned";
        let value_set = |id: &str, version: &str, code: &str| {
            json!({"resourceType": "ValueSet", "id": id, "status": "active", "url": url,
                   "version": version,
                   "compose": {"include": [{"system": "urn:vv", "concept": [{"code": code}]}]}})
        };
        put(s, &value_set("versioned-1", "1.0", "a"));
        put(s, &value_set("versioned-2", "2.0", "b"));
        put(
            s,
            &observation("vv-a", "vv", json!([{"system": "urn:vv", "code": "a"}])),
        );
        put(
            s,
            &observation("vv-b", "vv", json!([{"system": "urn:vv", "code": "b"}])),
        );
        let search = |modifier: &str, canonical: &str| {
            format!(
                "Observation?_tag=urn:search-values|vv&code:{modifier}={}",
                enc(canonical)
            )
        };
        assert_eq!(ids(s, &search("in", &format!("{url}|1.0"))), ["vv-a"]);
        assert_eq!(ids(s, &search("in", &format!("{url}|2.0"))), ["vv-b"]);
        assert_eq!(ids(s, &search("not-in", &format!("{url}|1.0"))), ["vv-b"]);
        assert_eq!(ids(s, &search("in", url)), ["vv-b"]);
        let message = refused(s, &search("in", &format!("{url}|9.9")), &[]);
        assert!(message.contains("9.9"), "{message}");
        refused(s, &search("not-in", &format!("{url}|9.9")), &[]);
        // Written last wins without a version: version 1.0 updated after 2.0.
        let mut newer = value_set("versioned-1", "1.0", "a");
        newer["title"] = json!("Versioned, corrected");
        s.put("ValueSet/versioned-1", &newer).expect(200);
        assert_eq!(ids(s, &search("in", url)), ["vv-a"]);
    });
}

/// Every component of a composite value takes the escapes of search.html (`\,` `\$` `\|`
/// `\\`), a string component as well as a token one. Before, a string component kept its
/// backslashes and found nothing.
#[test]
fn composite_string_components_unescape_their_values() {
    for_each_backend(|s| {
        let text = r"Hello, World $ | ok \ end";
        s.put(
            "Observation/cs-1",
            &json!({"resourceType": "Observation", "id": "cs-1", "status": "final",
                    "code": {"coding": [{"code": "LOCAL1"}]}, "valueString": text}),
        )
        .expect(201);
        s.put(
            "Observation/cs-2",
            &json!({"resourceType": "Observation", "id": "cs-2", "status": "final",
                    "code": {"coding": [{"code": "LOCAL1"}]}, "valueString": "Hello"}),
        )
        .expect(201);
        let escaped = r"Hello\, World \$ \| ok \\ end";
        assert_eq!(
            ids(
                s,
                &format!("Observation?value-string:exact={}", enc(escaped))
            ),
            ["cs-1"]
        );
        assert_eq!(
            ids(
                s,
                &format!(
                    "Observation?code-value-string={}",
                    enc(&format!("LOCAL1${escaped}"))
                )
            ),
            ["cs-1"]
        );
        assert_eq!(
            ids(
                s,
                &format!("Observation?code-value-string={}", enc(r"LOCAL1$Hello\, W"))
            ),
            ["cs-1"]
        );
        assert_eq!(
            ids(
                s,
                &format!("Observation?code-value-string={}", enc("LOCAL1$hello"))
            ),
            ["cs-1", "cs-2"]
        );
    });
}

/// `identifier:of-type=system|code|value` unescapes all three parts. Before, the value kept
/// its backslashes.
#[test]
fn of_type_values_unescape_their_parts() {
    for_each_backend(|s| {
        let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
        s.put(
            "Patient/ot-1",
            &json!({"resourceType": "Patient", "id": "ot-1",
                    "identifier": [{"type": {"coding": [{"system": v2, "code": "MR"}]},
                                    "system": "urn:mrn", "value": r"A$1|2,3\4"}]}),
        )
        .expect(201);
        let search = |value: &str| format!("Patient?identifier:of-type={}", enc(value));
        assert_eq!(
            ids(s, &search(&format!(r"{v2}|MR|A\$1\|2\,3\\4"))),
            ["ot-1"]
        );
        assert!(ids(s, &search(&format!(r"{v2}|MR|A\$1"))).is_empty());
        assert!(ids(s, &search(&format!(r"{v2}|PLAC|A\$1\|2\,3\\4"))).is_empty());
    });
}

/// R4 defines `:of-type` for Identifier parameters only: on another token parameter it
/// answers 400 naming the modifier and the parameter, as every unsupported modifier does.
/// Before, it answered 200 with nothing found and no warning.
#[test]
fn of_type_is_refused_outside_identifier_parameters() {
    for_each_backend(|s| {
        for headers in [&[][..], &[("Prefer", "handling=strict")][..]] {
            for path in [
                "Observation?status:of-type=a|b|c",
                "Observation?code:of-type=a|b|c",
                "Patient?telecom:of-type=a|b|c",
            ] {
                let message = refused(s, path, headers);
                let param = path
                    .split_once('?')
                    .and_then(|(_, q)| q.split_once(':'))
                    .map(|(p, _)| p)
                    .unwrap_or_default();
                assert!(
                    message.contains(":of-type") && message.contains(&format!("'{param}'")),
                    "{path}: {message}"
                );
            }
        }
        s.get("Patient?identifier:of-type=a|b|c").expect(200);
        s.get("Specimen?accession:of-type=a|b|c").expect(200);
    });
}

/// `_id:not=x` finds every resource but `x` (`_id` is a token parameter, and tokens take
/// `:not`). Before, it answered 400.
#[test]
fn id_takes_not() {
    for_each_backend(|s| {
        for id in ["idn-1", "idn-2", "idn-3"] {
            s.put(
                &format!("Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id,
                        "meta": {"tag": [{"system": "urn:search-values", "code": "idn"}]}}),
            )
            .expect(201);
        }
        let tagged = "Patient?_tag=urn:search-values|idn";
        assert_eq!(
            ids(s, &format!("{tagged}&_id:not=idn-1")),
            ["idn-2", "idn-3"]
        );
        assert_eq!(ids(s, &format!("{tagged}&_id:not=idn-1,idn-3")), ["idn-2"]);
        assert_eq!(
            ids(s, &format!("{tagged}&_id:not=nobody")),
            ["idn-1", "idn-2", "idn-3"]
        );
        assert_eq!(
            ids(s, &format!("{tagged}&_id=idn-1,idn-2&_id:not=idn-2")),
            ["idn-1"]
        );
        let message = refused(s, &format!("{tagged}&_id:exact=idn-1"), &[]);
        assert!(message.contains(":exact"), "{message}");
    });
}

/// A page token belongs to the sort (keys and directions) of the search that issued it:
/// under another `_sort` it answers 400. Before, a token of `_sort=-date` was taken by
/// `_sort=code`, `-code`, `date` and `_id` alike and cut meaningless pages.
#[test]
fn page_tokens_are_refused_under_another_sort() {
    for_each_backend(|s| {
        for (i, day) in ["2024-01-01", "2024-02-01", "2024-03-01"]
            .iter()
            .enumerate()
        {
            let mut resource = observation(
                &format!("pt-{i}"),
                "pt",
                json!([{"system": "urn:pt", "code": format!("c{i}")}]),
            );
            resource["effectiveDateTime"] = json!(day);
            put(s, &resource);
        }
        let tagged = "Observation?_tag=urn:search-values|pt";
        let first = s.read_json(&format!("{tagged}&_sort=-date&_count=1"));
        let next = link(&first, "next").expect("a next link");
        let token = next
            .split("_page_token=")
            .nth(1)
            .expect("a page token")
            .to_string();
        let page = |sort: &str| format!("{tagged}&_sort={sort}&_count=1&_page_token={token}");
        let second = s.read_json(&page("-date"));
        assert_eq!(
            entries(&second)
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>(),
            ["pt-1"]
        );
        for sort in ["code", "-code", "date", "_id", "-date,_id"] {
            let message = refused(s, &page(sort), &[]);
            assert!(
                message.contains("the page token does not belong to this search"),
                "{sort}: {message}"
            );
        }
        let no_sort = format!("{tagged}&_count=1&_page_token={token}");
        refused(s, &no_sort, &[]);
        // The previous link is cut for its own sort too.
        let previous = link(&second, "previous").expect("a previous link");
        assert_eq!(
            entries(&s.read_json(&previous))
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>(),
            ["pt-2"]
        );
        let previous_token = previous.split("_page_token=").nth(1).unwrap_or_default();
        refused(
            s,
            &format!("{tagged}&_sort=date&_count=1&_page_token={previous_token}"),
            &[],
        );
    });
}

/// A canonical reference searched without a version matches every version of it
/// (references.html#canonical); `url|version` matches that version alone. Before, the
/// versionless search missed every versioned value.
#[test]
fn canonical_references_match_any_version_without_one() {
    for_each_backend(|s| {
        for (id, questionnaire) in [
            ("qr-v2", "http://example.org/Questionnaire/q1|2.0"),
            ("qr-plain", "http://example.org/Questionnaire/q1"),
            ("qr-other", "http://example.org/Questionnaire/q10|1.0"),
        ] {
            s.put(
                &format!("QuestionnaireResponse/{id}"),
                &json!({"resourceType": "QuestionnaireResponse", "id": id,
                        "status": "completed", "questionnaire": questionnaire}),
            )
            .expect(201);
        }
        let search = |value: &str| format!("QuestionnaireResponse?questionnaire={}", enc(value));
        assert_eq!(
            ids(s, &search("http://example.org/Questionnaire/q1")),
            ["qr-plain", "qr-v2"]
        );
        assert_eq!(
            ids(s, &search("http://example.org/Questionnaire/q1|2.0")),
            ["qr-v2"]
        );
        assert!(ids(s, &search("http://example.org/Questionnaire/q1|1.0")).is_empty());
        assert_eq!(
            ids(s, &search("http://example.org/Questionnaire/q10")),
            ["qr-other"]
        );
        // Beyond 32 alternatives the URLs are matched as one bound set: the same answer.
        let many: Vec<String> = std::iter::once("http://example.org/Questionnaire/q1".to_string())
            .chain((0..40).map(|i| format!("http://example.org/Questionnaire/none-{i}")))
            .collect();
        assert_eq!(
            ids(
                s,
                &format!(
                    "QuestionnaireResponse?questionnaire={}",
                    many.iter().map(|u| enc(u)).collect::<Vec<_>>().join(",")
                )
            ),
            ["qr-plain", "qr-v2"]
        );
    });
}

/// `_profile` is a uri parameter over `meta.profile`, a canonical: searched without a version
/// it matches every version of the profile, `url|version` that version alone, and `p` does not
/// match `p10`. Before, it matched exactly and missed `…/p|1.0`.
#[test]
fn profile_matches_any_version_without_one() {
    for_each_backend(|s| {
        for (id, profile) in [
            ("pr-v1", "http://example.org/StructureDefinition/p|1.0"),
            ("pr-plain", "http://example.org/StructureDefinition/p"),
            ("pr-other", "http://example.org/StructureDefinition/p10|1.0"),
        ] {
            put(
                s,
                &json!({"resourceType": "Patient", "id": id,
                        "meta": {"profile": [profile]}}),
            );
        }
        let search = |value: &str| format!("Patient?_profile={}", enc(value));
        assert_eq!(
            ids(s, &search("http://example.org/StructureDefinition/p")),
            ["pr-plain", "pr-v1"]
        );
        assert_eq!(
            ids(s, &search("http://example.org/StructureDefinition/p|1.0")),
            ["pr-v1"]
        );
        assert!(ids(s, &search("http://example.org/StructureDefinition/p|2.0")).is_empty());
        assert_eq!(
            ids(s, &search("http://example.org/StructureDefinition/p10")),
            ["pr-other"]
        );
    });
}

/// The JP Core Organization parameters select the extension values JP Core defines
/// (`valueCoding` for the prefecture number and the insurance-organization category,
/// `valueIdentifier` for the insurance-organization number). Before, the embedded 1.1.2
/// definitions selected `.value.as(code)` and matched no conformant Organization.
#[test]
fn jp_core_organization_parameters_match_conformant_data() {
    for_each_backend(|s| {
        let demo: Value =
            serde_json::from_str(include_str!("../../fixtures/demo/01-organizations.json"))
                .unwrap();
        s.post("", &demo).expect(200);
        let ext = |name: &str| {
            format!(
                "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Organization_{name}"
            )
        };
        put(
            s,
            &json!({"resourceType": "Organization", "id": "org-tokyo",
                    "extension": [
                        {"url": ext("PrefectureNo"),
                         "valueCoding": {"system": "urn:oid:1.2.392.100495.20.3.21", "code": "13"}},
                        {"url": ext("InsuranceOrganizationCategory"),
                         "valueCoding": {"system": "urn:oid:1.2.392.100495.20.3.22", "code": "1"}},
                        {"url": ext("InsuranceOrganizationNo"),
                         "valueIdentifier": {"system": "urn:oid:1.2.392.100495.20.3.23",
                                             "value": "9876543"}}]}),
        );
        assert_eq!(
            ids(s, "Organization?jp-prefectureno=33"),
            [
                "clinic-hareyaka",
                "hosp-kurashiki-general",
                "hosp-okayama-central"
            ]
        );
        assert_eq!(
            ids(
                s,
                "Organization?jp-prefectureno=urn:oid:1.2.392.100495.20.3.21%7C13"
            ),
            ["org-tokyo"]
        );
        assert_eq!(
            ids(s, "Organization?jp-insurance-organizationcategory=1"),
            ["org-tokyo"]
        );
        assert_eq!(
            ids(s, "Organization?jp-insurance-organizationno=9876543"),
            ["org-tokyo"]
        );
        assert!(ids(s, "Organization?jp-insurance-organizationno=33").is_empty());
    });
}

/// An empty control parameter answers 400 naming it, as an empty search parameter does.
/// Before, `_sort=` (and `_count=`'s siblings) answered 200 and echoed `_sort=` in the links.
#[test]
fn empty_control_parameters_are_refused_like_empty_search_parameters() {
    for_each_backend(|s| {
        for name in [
            "code",
            "_sort",
            "_count",
            "_include",
            "_revinclude",
            "_elements",
            "_summary",
            "_total",
        ] {
            let diagnostics = refused(s, &format!("Observation?{name}="), &[]);
            assert!(
                diagnostics.contains(&format!("'{name}' has no value")),
                "{name}: {diagnostics}"
            );
        }
        s.get("Observation?_sort=_id&_count=5").expect(200);
    });
}

/// `_include:iterate` runs at most 4 rounds; when that leaves resources out, the page carries
/// a warning `OperationOutcome` entry (`search.mode = outcome`). Before, it stopped silently.
#[test]
fn iterate_says_when_its_round_cap_cut_the_includes_short() {
    for_each_backend(|s| {
        // it-1 → it-2 → … → it-7 by has-member.
        for n in 1..=7 {
            let mut obs = json!({"resourceType": "Observation", "id": format!("it-{n}"),
                                 "status": "final", "code": {"text": "x"}});
            if n < 7 {
                obs["hasMember"] = json!([{"reference": format!("Observation/it-{}", n + 1)}]);
            }
            put(s, &obs);
        }
        let search = |id: &str| {
            s.get(&format!(
                "Observation?_id={id}&_include:iterate=Observation:has-member"
            ))
            .expect(200)
            .json()
        };
        let of_mode = |page: &Value, mode: &str| -> Vec<Value> {
            entries(page)
                .into_iter()
                .filter(|e| e["search"]["mode"] == mode)
                .collect()
        };
        let included_ids = |page: &Value| {
            let mut ids: Vec<String> = of_mode(page, "include")
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        };
        // it-1: four rounds include it-2 … it-5; it-6 and it-7 are left out, and it says so.
        let page = search("it-1");
        assert_eq!(included_ids(&page), ["it-2", "it-3", "it-4", "it-5"]);
        let outcomes = of_mode(&page, "outcome");
        assert_eq!(outcomes.len(), 1, "{page}");
        assert_eq!(outcomes[0]["resource"]["issue"][0]["code"], "incomplete");
        assert!(outcomes[0].to_string().contains("4 rounds"), "{page}");
        // it-3: four rounds reach the end of the chain: no warning.
        let page = search("it-3");
        assert_eq!(included_ids(&page), ["it-4", "it-5", "it-6", "it-7"]);
        assert!(of_mode(&page, "outcome").is_empty(), "{page}");
    });
}

/// The includes' caps count only what the token may read: a token without the scope of the
/// types left out is not told that more of them exist.
#[test]
fn include_caps_count_only_the_types_the_token_may_read() {
    for_each_backend(|s| {
        put(
            s,
            &json!({"resourceType": "ImagingStudy", "id": "cap-img", "status": "available",
                    "subject": {"reference": "Group/cap-group"}}),
        );
        // cap-1 → … → cap-5 by has-member; cap-5 derives from the ImagingStudy.
        for n in 1..=5 {
            let mut obs = json!({"resourceType": "Observation", "id": format!("cap-{n}"),
                                 "status": "final", "code": {"text": "x"}});
            if n < 5 {
                obs["hasMember"] = json!([{"reference": format!("Observation/cap-{}", n + 1)}]);
            } else {
                obs["derivedFrom"] = json!([{"reference": "ImagingStudy/cap-img"}]);
            }
            put(s, &obs);
        }
        let path = "Observation?_id=cap-1&_include:iterate=Observation:has-member\
                    &_include:iterate=Observation:derived-from";
        let outcome_count = |page: &Value| {
            entries(page)
                .iter()
                .filter(|e| e["search"]["mode"] == "outcome")
                .count()
        };
        let included = |page: &Value| {
            entries(page)
                .iter()
                .filter(|e| e["search"]["mode"] == "include")
                .count()
        };
        // Every type readable: the fifth round would bring the ImagingStudy, and it says so.
        let page = s.get(path).expect(200).json();
        assert_eq!(included(&page), 4, "{page}");
        assert_eq!(outcome_count(&page), 1, "{page}");
        // Observations only: nothing it may read was left out.
        let observations_only = s.token_for(
            "cap-obs-only",
            TEST_ORGANIZATION,
            "facility",
            &["--scope", "system/Observation.rs"],
        );
        let page = s
            .with_token(&observations_only)
            .get(path)
            .expect(200)
            .json();
        assert_eq!(included(&page), 4, "{page}");
        assert_eq!(outcome_count(&page), 0, "{page}");
    });
}

/// An Observation with `effectiveDateTime` (and nothing else to search by).
fn dated(id: &str, effective: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
           "effectiveDateTime": effective})
}

/// Under `time_zone` +09:00 a date without a zone is the Japanese day, in stored values and
/// search values alike (R4 search.html: the server's local zone). Before, both were UTC days,
/// so a lab at 08:00 JST on 4 November (23:00 UTC on the 3rd) was not found by
/// `date=2025-11-04`, and a stored `2025-11-04` began at 09:00 JST.
#[test]
fn dates_without_a_zone_are_read_in_the_configured_zone() {
    for_each_backend_with(&[("RENKEI_TIME_ZONE", "+09:00")], |s| {
        put(s, &dated("lab-0800", "2025-11-04T08:00:00+09:00"));
        put(s, &dated("day-only", "2025-11-04"));
        put(s, &dated("lab-0030", "2025-11-04T00:30:00+09:00"));
        assert_eq!(
            ids(s, "Observation?date=2025-11-04"),
            ["day-only", "lab-0030", "lab-0800"]
        );
        assert!(ids(s, "Observation?date=2025-11-03").is_empty());
        // The first hour of the Japanese day holds the stored day and the lab at 00:30 (a
        // stored dateTime with a time always has a zone: R4 requires one).
        let first_hour = format!(
            "Observation?date=ge{}&date=lt{}",
            enc("2025-11-04T00:00:00+09:00"),
            enc("2025-11-04T01:00:00+09:00")
        );
        assert_eq!(ids(s, &first_hour), ["day-only", "lab-0030"]);
        // A search dateTime without a zone is Japan time too.
        assert_eq!(
            ids(
                s,
                "Observation?date=ge2025-11-04T00:00:00&date=lt2025-11-04T01:00:00"
            ),
            ["day-only", "lab-0030"]
        );
        // `eq` of a minute holds what lies within it: the lab, not the day.
        assert_eq!(ids(s, "Observation?date=2025-11-04T08:00"), ["lab-0800"]);
    });
}

/// Runs `cmd`, which must fail (within a minute, rather than start serving); its stderr.
#[track_caller]
fn refusal(cmd: &mut std::process::Command) -> String {
    use std::io::Read;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn renkei");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for renkei") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not refuse to start within a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("read stderr");
    }
    assert!(!status.success(), "{cmd:?} succeeded: {stderr}");
    stderr
}

/// SQLite: the reindex guard sees a server however the database file is named (through a
/// symlink), and a second server on the same file, which does not write the read-audit
/// journal, once the first has stopped. Stops `first`.
fn second_sqlite_server_is_seen(first: &mut Server, path: &str, env: &[(&str, &str)]) {
    use std::io::BufRead;
    let rules_changing_reindex = |database: &str| {
        refusal(
            renkei_command()
                .args(["reindex", "--database", database])
                .envs(env.iter().copied()),
        )
    };
    let link = std::path::Path::new(path).with_file_name("through-a-link.db");
    std::os::unix::fs::symlink(path, &link).expect("symlink");
    let through_link = rules_changing_reindex(&format!("sqlite:{}", link.display()));
    assert!(
        through_link.contains("a server is running"),
        "{through_link}"
    );
    let mut second = renkei_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(first.database_url())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn a second server");
    let stdout = second.stdout.take().expect("stdout");
    let listening = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("Renkei listening on "));
    assert!(listening, "the second server did not start");
    first.kill9();
    let beside_second = rules_changing_reindex(first.database_url());
    let _ = second.kill();
    let _ = second.wait();
    assert!(
        beside_second.contains("a server is running"),
        "{beside_second}"
    );
}

/// Runs `renkei reindex` on `url` with `env`, which must succeed.
fn reindex(url: &str, env: &[(&str, &str)]) {
    let out = renkei_command()
        .args(["reindex", "--database", url])
        .envs(env.iter().copied())
        .output()
        .expect("run renkei reindex");
    assert!(
        out.status.success(),
        "reindex: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Index rows built in one zone are wrong in another: a server (or an import) configured
/// with another zone than the one its database was indexed in refuses to start, naming both
/// zones and `renkei reindex`; after a reindex in the new zone it starts and finds the stored
/// day where the new zone puts it. A database indexed before (in UTC) refuses the other way.
#[test]
fn a_database_indexed_in_another_zone_is_refused_until_reindexed() {
    for_each_backend_raw(|backend| {
        let jst = [("RENKEI_TIME_ZONE", "+09:00")];
        let mut s = Server::start(backend);
        put(&s, &dated("day-only", "2025-11-04"));
        // Not while the server runs: it would go on indexing in its own zone (a review found
        // the two mixed silently). Under the same rules a reindex beside it is harmless.
        let beside = refusal(
            renkei_command()
                .args(["reindex", "--database"])
                .arg(s.database_url())
                .envs(jst),
        );
        assert!(beside.contains("a server is running"), "{beside}");
        reindex(s.database_url(), &[]);
        if let Some(path) = s.database_url().strip_prefix("sqlite:").map(str::to_string) {
            second_sqlite_server_is_seen(&mut s, &path, &jst);
        }
        s.kill9();
        let serve_jst = refusal(
            renkei_command()
                .args(["serve", "--listen", "127.0.0.1:0", "--database"])
                .arg(s.database_url())
                .envs(jst),
        );
        for expected in ["time zone Z", "+09:00", "renkei reindex"] {
            assert!(serve_jst.contains(expected), "{expected}: {serve_jst}");
        }
        let import_jst = refusal(
            renkei_command()
                .args(["import", "--database"])
                .arg(s.database_url())
                .arg(fixture("demo").join("README.md"))
                .envs(jst),
        );
        assert!(import_jst.contains("renkei reindex"), "{import_jst}");

        reindex(s.database_url(), &jst);
        let s = s.restart_with(&jst);
        let first_hour = format!(
            "Observation?date=ge{}&date=lt{}",
            enc("2025-11-04T00:00:00+09:00"),
            enc("2025-11-04T01:00:00+09:00")
        );
        assert_eq!(ids(&s, &first_hour), ["day-only"]);

        // Now recorded as +09:00: the default zone is the one refused.
        let mut s = s;
        s.kill9();
        let serve_utc = refusal(
            renkei_command()
                .args(["serve", "--listen", "127.0.0.1:0", "--database"])
                .arg(s.database_url()),
        );
        assert!(
            serve_utc.contains("time zone +09:00") && serve_utc.contains("time_zone is Z"),
            "{serve_utc}"
        );
    });
}

/// Rows built under other rules than the server's are refused until rebuilt, naming what
/// changed: a database from before the index format was recorded (an earlier version of
/// Renkei, whose rows may lack what this one extracts), other identifier systems for linking
/// patients, another `base_url`. `renkei reindex` records the current rules.
#[test]
fn a_database_built_under_other_rules_is_refused_until_reindexed() {
    for_each_backend_raw(|backend| {
        let mut s = Server::start(backend);
        put(&s, &dated("built-before", "2025-11-04"));
        s.kill9();
        let store = renkei_store::Store::open(
            &renkei_store::DatabaseUrl::parse(s.database_url()).expect("database url"),
            &renkei_store::StoreOptions::default(),
        )
        .expect("open store");
        store
            .write(|tx| {
                tx.execute(&renkei_store::Sql::new(
                    "DELETE FROM settings WHERE key = 'index_format'",
                ))
            })
            .expect("forget the index format, as a database from before it was recorded");
        drop(store);
        let serve = |env: &[(&str, &str)]| {
            refusal(
                renkei_command()
                    .args(["serve", "--listen", "127.0.0.1:0", "--database"])
                    .arg(s.database_url())
                    .envs(env.iter().copied()),
            )
        };
        let old = serve(&[("RENKEI_LINK_IDENTIFIER_SYSTEMS", "urn:example:other-id")]);
        for expected in [
            "earlier version of Renkei (index format 0",
            "urn:example:other-id",
            "renkei reindex",
        ] {
            assert!(old.contains(expected), "{expected}: {old}");
        }

        reindex(s.database_url(), &[]);
        let moved = serve(&[("RENKEI_BASE_URL", "https://gateway.example/fhir")]);
        assert!(
            moved.contains("base_url (not set)")
                && moved.contains("https://gateway.example/fhir")
                && !moved.contains("index format"),
            "{moved}"
        );
        let s = s.restart();
        assert_eq!(
            ids(&s, "Observation?date=2025-11-04"),
            ["built-before"],
            "the rebuilt index finds what was stored before"
        );
    });
}

/// An empty item of a list parameter was dropped: `$everything?_type=,` answered an empty
/// page (while `_type=` was refused) and `_sort=,,,` the unsorted search. Reads by id parse
/// `_elements` as searches do (they had dropped the empty item).
#[test]
fn empty_list_items_are_refused() {
    for_each_backend(|s| {
        let created = s.create(&json!({"resourceType": "Patient", "gender": "male"}));
        let id = created["id"].as_str().unwrap();
        for path in [
            format!("Patient/{id}/$everything?_type=,"),
            format!("Patient/{id}/$everything?_type=Patient,"),
            "Patient?_sort=,,,".to_string(),
            "Patient?_sort=_id,".to_string(),
            "Patient?_elements=gender,".to_string(),
            "?_type=,".to_string(),
            "?_type=Patient,,Observation".to_string(),
            format!("Patient/{id}?_elements=gender,"),
            format!("Patient/{id}?_elements=gender&_elements=,id"),
            format!("Patient/{id}/_history/1?_elements=gender,,id"),
        ] {
            let text = refused(s, &path, &[]);
            assert!(text.contains("empty item"), "{path}: {text}");
        }
        s.get(&format!("Patient/{id}/$everything?_type=Patient"))
            .expect(200);
        s.get("Patient?_sort=-_id,_lastUpdated").expect(200);
        let read = s.read_json(&format!("Patient/{id}?_elements=gender,%20id"));
        assert_eq!(read["gender"], "male", "{read}");
    });
}

/// A date with a space around it (`%20` left by a lost `+`), a number too small for the stored
/// values (`1e-400`, read as 0 before), and numbers, years and zones FHIR does not write are
/// refused, not searched for something else; `ap` on a number stays near it.
#[test]
fn dates_with_spaces_and_numbers_below_f64_are_refused() {
    for_each_backend(|s| {
        s.create(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "zero"}, "valueQuantity": {"value": 0},
            "effectiveDateTime": "2020-01-01"}));
        for (path, says) in [
            ("Observation?date=%202020", "not a valid date"),
            ("Observation?date=ge2020-01-01%20", "not a valid date"),
            ("Observation?_lastUpdated=%20ge2020", "not a valid date"),
            ("Observation?value-quantity=1e-400", "too close to zero"),
            ("Observation?value-quantity=.5", "not a number"),
            ("Observation?value-quantity=007", "not a number"),
            ("Observation?date=ap0000", "not a valid date"),
            (
                "Observation?date=2020-01-01T10:00:00%2B14:01",
                "not a valid date",
            ),
        ] {
            let text = refused(s, path, &[]);
            assert!(text.contains(says), "{path}: {text}");
        }
        assert_eq!(ids(s, "Observation?date=2020&value-quantity=0").len(), 1);
        assert_eq!(ids(s, "Observation?value-quantity=0e-400").len(), 1);
        // `ap` widens a value by 10 % or by its implicit precision, centred on it: `ap1e2` is
        // 50 to 150, and `ap1e308` reaches nothing stored here (it had reached down to 0).
        for value in [100, 160] {
            s.create(&json!({"resourceType": "Observation", "status": "final",
                "code": {"text": "ap"}, "valueQuantity": {"value": value}}));
        }
        assert_eq!(ids(s, "Observation?value-quantity=ap1e2").len(), 1);
        assert_eq!(ids(s, "Observation?value-quantity=ap100").len(), 1);
        assert!(ids(s, "Observation?value-quantity=ap1e308").is_empty());
        assert!(ids(s, "Observation?value-quantity=ap1.79769e308").is_empty());
        assert!(ids(s, "Observation?value-quantity=ap-1.79769e308").is_empty());
    });
}

/// The names of the search parameters the CapabilityStatement declares for `res_type`.
fn declared(s: &Server, res_type: &str) -> Vec<String> {
    let metadata = s.read_json("metadata");
    metadata["rest"][0]["resource"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["type"] == res_type)
        .flat_map(|r| r["searchParam"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

/// R4's `InsurancePlan-name` is `name | alias`, the one expression without a leading type
/// name. The registry kept only alternatives starting with one, so the parameter had no
/// expression: `name=Foobar` matched nothing, `name:missing=true` every plan, and the
/// CapabilityStatement left it out.
#[test]
fn insurance_plan_name_reads_name_and_alias() {
    for_each_backend(|s| {
        put(
            s,
            &json!({"resourceType": "InsurancePlan", "id": "ip-foobar",
                    "name": "Foobar Health Plan", "alias": ["FHP Gold"]}),
        );
        put(
            s,
            &json!({"resourceType": "InsurancePlan", "id": "ip-other", "name": "Other Plan"}),
        );
        put(
            s,
            &json!({"resourceType": "InsurancePlan", "id": "ip-nameless", "status": "active"}),
        );
        assert_eq!(ids(s, "InsurancePlan?name=Foobar"), ["ip-foobar"]);
        assert_eq!(ids(s, "InsurancePlan?name=fhp"), ["ip-foobar"]);
        assert_eq!(
            ids(s, "InsurancePlan?name:exact=Other%20Plan"),
            ["ip-other"]
        );
        assert_eq!(ids(s, "InsurancePlan?name:missing=true"), ["ip-nameless"]);
        assert_eq!(
            ids(s, "InsurancePlan?name:missing=false"),
            ["ip-foobar", "ip-other"]
        );
        assert!(declared(s, "InsurancePlan").contains(&"name".to_string()));
    });
}

/// `Bundle.composition` and `Bundle.message` select `Bundle.entry[0].resource`, a resource
/// inside the Bundle, not a stored one. Declared as references, they answered an empty page to
/// every chain and `:missing=false`. Now their chains are parameters of their own, indexed from
/// the first entry (`composition.type=…` finds the document, a message is not a document), and
/// the two themselves stay unknown: refused under `handling=strict`, reported and ignored
/// otherwise.
#[test]
fn bundle_composition_and_message_are_searched_through_their_chains_only() {
    for_each_backend(|s| {
        put(
            s,
            &json!({"resourceType": "Bundle", "id": "doc-1", "type": "document",
                    "identifier": {"system": "urn:docs", "value": "1"},
                    "timestamp": "2024-01-01T00:00:00Z",
                    "entry": [{"fullUrl": "urn:uuid:2f6a1c4e-0a3d-4d7e-9a55-2b1f5f2b7c01",
                               "resource": {"resourceType": "Composition", "status": "final",
                                            "type": {"coding": [{"system": "http://loinc.org", "code": "28655-9"}]},
                                            "date": "2024-01-01", "author": [{"display": "Dr A"}],
                                            "title": "Discharge summary"}}]}),
        );
        put(
            s,
            &json!({"resourceType": "Bundle", "id": "msg-1", "type": "message",
                    "entry": [{"fullUrl": "urn:uuid:2f6a1c4e-0a3d-4d7e-9a55-2b1f5f2b7c02",
                               "resource": {"resourceType": "MessageHeader",
                                            "eventCoding": {"system": "urn:events", "code": "admit"},
                                            "source": {"endpoint": "urn:ehr"}}}]}),
        );
        for (query, found) in [
            (
                "Bundle?composition.type=http://loinc.org%7C28655-9",
                &["doc-1"][..],
            ),
            (
                "Bundle?composition.date=2024-01-01&composition.title=discharge",
                &["doc-1"],
            ),
            ("Bundle?composition.type=http://loinc.org%7C11488-4", &[]),
            ("Bundle?message.event=urn:events%7Cadmit", &["msg-1"]),
            ("Bundle?composition.status=final&type=message", &[]),
        ] {
            let (entries, _) = s.all_pages(query);
            assert!(
                entries.iter().all(|e| e["search"]["mode"] != "outcome"),
                "{query}: {entries:?}"
            );
            assert_eq!(sorted_match_ids(&entries), found, "{query}");
        }
        for query in [
            "Bundle?message:missing=false",
            "Bundle?composition=Composition/x",
            "Bundle?composition.author.name=x",
        ] {
            let name = if query.contains("message") {
                "message"
            } else {
                "composition"
            };
            let text = refused(s, query, &[("Prefer", "handling=strict")]);
            assert!(text.contains(name), "{query}: {text}");
            let (entries, _) = s.all_pages(query);
            let outcome: Vec<&Value> = entries
                .iter()
                .filter(|e| e["search"]["mode"] == "outcome")
                .collect();
            assert!(
                outcome.iter().any(|e| e.to_string().contains(name)),
                "{query}: {entries:?}"
            );
            // Ignored, the search is the Bundle search without it.
            assert_eq!(sorted_match_ids(&entries), ["doc-1", "msg-1"], "{query}");
        }
        let bundle = declared(s, "Bundle");
        assert!(bundle.contains(&"identifier".to_string()), "{bundle:?}");
        assert!(!bundle.contains(&"composition".to_string()), "{bundle:?}");
        assert!(!bundle.contains(&"message".to_string()), "{bundle:?}");
    });
}

/// `eq` is the range the search value's precision implies. For a value written to 17
/// significant digits (the official `Observation/body-height`: 66.899999999999991) that range
/// is narrower than the spacing of doubles, and computed in doubles both bounds fell onto the
/// stored value: `value-quantity=66.899999999999991` found nothing while `ge`/`le` did. The
/// bounds are now computed from the decimal text; number parameters share the code.
#[test]
fn numbers_written_to_full_precision_equal_themselves() {
    for_each_backend(|s| {
        let obs = |id: &str, value: &str| -> Value {
            serde_json::from_str(&format!(
                r#"{{"resourceType": "Observation", "id": "{id}", "status": "final",
                    "code": {{"text": "height"}},
                    "valueQuantity": {{"value": {value}, "unit": "in",
                        "system": "http://unitsofmeasure.org", "code": "[in_i]"}}}}"#
            ))
            .unwrap()
        };
        put(s, &obs("q-body-height", "66.899999999999991"));
        put(s, &obs("q-66-9", "66.9"));
        put(s, &obs("q-99-5", "99.5"));
        put(s, &obs("q-100-5", "100.5"));
        let q = |value: &str| ids(s, &format!("Observation?value-quantity={value}"));
        assert_eq!(q("66.899999999999991"), ["q-body-height"]);
        assert_eq!(
            q("66.899999999999991%7Chttp://unitsofmeasure.org%7C%5Bin_i%5D"),
            ["q-body-height"]
        );
        assert_eq!(
            q("ge66.899999999999991"),
            ["q-100-5", "q-66-9", "q-99-5", "q-body-height"]
        );
        assert_eq!(q("le66.899999999999991"), ["q-body-height"]);
        assert_eq!(q("66.9"), ["q-66-9", "q-body-height"]);
        assert_eq!(q("ne66.899999999999991"), ["q-100-5", "q-66-9", "q-99-5"]);
        // The range stays half-open where its bound is a double: 100 is [99.5, 100.5).
        assert_eq!(q("100"), ["q-99-5"]);
        // sa/eb: after or before the value's whole range, as for numbers (below).
        assert_eq!(q("sa100"), ["q-100-5"]);
        assert_eq!(q("eb100"), ["q-66-9", "q-body-height"]);
        assert_eq!(q("sa66.9"), ["q-100-5", "q-99-5"]);

        let risk = |id: &str, probability: &str| -> Value {
            serde_json::from_str(&format!(
                r#"{{"resourceType": "RiskAssessment", "id": "{id}", "status": "final",
                    "subject": {{"reference": "Patient/nobody"}},
                    "prediction": [{{"probabilityDecimal": {probability}}}]}}"#
            ))
            .unwrap()
        };
        put(s, &risk("r-exact", "0.30000000000000004"));
        put(s, &risk("r-three", "0.3"));
        let p = |value: &str| ids(s, &format!("RiskAssessment?probability={value}"));
        assert_eq!(p("0.30000000000000004"), ["r-exact"]);
        assert_eq!(p("0.3"), ["r-exact", "r-three"]);
        assert_eq!(p("0.29999999999999999"), ["r-three"]);
        // sa/eb: after or before the whole range of the value, its precision included (the
        // review found sa0.3 taking 0.34, inside 0.3's range [0.25, 0.35)).
        put(s, &risk("r-inside", "0.34"));
        put(s, &risk("r-above", "0.35"));
        put(s, &risk("r-below", "0.2"));
        assert_eq!(p("sa0.3"), ["r-above"]);
        assert_eq!(p("eb0.3"), ["r-below"]);
        assert_eq!(p("gt0.3"), ["r-above", "r-exact", "r-inside"]);
    });
}

/// A Reference with only an `identifier`, only a `display` or a contained `#id` is a value of
/// its parameter: `based-on:missing=true` matched the Observation that
/// `based-on:identifier=sys|1234` matched too, since `:missing` looked for reference rows and
/// such a Reference had none.
#[test]
fn references_without_a_literal_reference_are_not_missing() {
    for_each_backend(|s| {
        let obs = |id: &str, based_on: Option<Value>| {
            let mut o = json!({"resourceType": "Observation", "id": id, "status": "final",
                               "code": {"text": "x"}});
            if let Some(b) = based_on {
                o["basedOn"] = json!([b]);
            }
            o
        };
        put(
            s,
            &obs(
                "m-identifier",
                Some(json!({"identifier": {"system": "sys", "value": "1234"}})),
            ),
        );
        put(s, &obs("m-display", Some(json!({"display": "the order"}))));
        let mut contained = obs("m-contained", Some(json!({"reference": "#sr"})));
        contained["contained"] = json!([{"resourceType": "ServiceRequest", "id": "sr",
            "status": "active", "intent": "order", "subject": {"display": "x"}}]);
        put(s, &contained);
        put(
            s,
            &obs(
                "m-literal",
                Some(json!({"reference": "ServiceRequest/sr-1"})),
            ),
        );
        put(s, &obs("m-none", None));
        assert_eq!(ids(s, "Observation?based-on:missing=true"), ["m-none"]);
        assert_eq!(
            ids(s, "Observation?based-on:missing=false"),
            ["m-contained", "m-display", "m-identifier", "m-literal"]
        );
        assert_eq!(
            ids(s, "Observation?based-on:identifier=sys%7C1234"),
            ["m-identifier"]
        );
        assert_eq!(
            ids(s, "Observation?based-on=ServiceRequest/sr-1"),
            ["m-literal"]
        );
        // The row without a target names no resource: includes find nothing through it.
        let (entries, _) =
            s.all_pages("Observation?_id=m-identifier&_include=Observation:based-on");
        assert_eq!(entries.len(), 1, "{entries:?}");
    });
}

/// A review found: `_id:missing` and `_lastUpdated:missing` answered 400, though R4 defines
/// `:missing` for every parameter and the CapabilityStatement says so. Every resource has
/// both: `true` finds none, `false` all.
#[test]
fn missing_id_and_last_updated_are_answered() {
    for_each_backend(|s| {
        let family = format!("Missing{}", uuid::Uuid::new_v4().simple());
        s.create(&json!({"resourceType": "Patient", "name": [{"family": family}]}));
        for (param, expected) in [
            ("_id:missing=false", 1),
            ("_id:missing=true", 0),
            ("_lastUpdated:missing=false", 1),
            ("_lastUpdated:missing=true", 0),
        ] {
            let found = s.read_json(&format!("Patient?family={family}&{param}&_total=accurate"));
            assert_eq!(found["total"], expected, "{param}: {found}");
        }
    });
}

/// A review found: `family=やまだ` missed the katakana ヤマダ (a kana name is typed either way),
/// and JP-CLINS's spelling of the generic-name prescription code (MedicationGeneralOrderCode)
/// never matched JP Core's (its OID): the duplicate-prescription check between a JP Core
/// hospital and a JP-CLINS clinic missed every one. HOT7/HOT13, MHLW ICD-10, prefecture and
/// vital-sign codes had the same gap.
#[test]
fn kana_and_japanese_code_system_spellings_match_either_way() {
    for_each_backend(|s| {
        let family = format!("ヤマダ{}", uuid::Uuid::new_v4().simple());
        let hiragana: String = family
            .chars()
            .map(|c| match c {
                'ヤ' => 'や',
                'マ' => 'ま',
                'ダ' => 'だ',
                other => other,
            })
            .collect();
        s.create(&json!({"resourceType": "Patient", "name": [{"family": family}]}));
        let found = s.read_json(&format!("Patient?family={hiragana}&_total=accurate"));
        assert_eq!(found["total"], 1, "{found}");
        // With or without the space between family and given name.
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let (spaced, unspaced) = (format!("中村 花子{tag}"), format!("中村花子{tag}"));
        s.create(&json!({"resourceType": "Patient", "name": [{"text": spaced}]}));
        for written in [&spaced, &unspaced] {
            let found = s.read_json(&format!("Patient?name={written}&_total=accurate"));
            assert_eq!(found["total"], 1, "{written}: {found}");
        }

        let code = format!(
            "1124030F{}",
            &uuid::Uuid::new_v4().simple().to_string()[..4]
        );
        s.create(
            &json!({"resourceType": "MedicationRequest", "status": "active",
            "intent": "order", "subject": {"display": "x"},
            "medicationCodeableConcept": {"coding": [{
                "system": "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/MedicationGeneralOrderCode",
                "code": code}]}}),
        );
        for system in [
            "urn:oid:1.2.392.100495.20.1.81",
            "http://jpfhir.jp/fhir/core/CodeSystem/JP_MedicationCodeCommon_CS",
        ] {
            let found = s.read_json(&format!(
                "MedicationRequest?code={system}|{code}&_total=accurate"
            ));
            assert_eq!(found["total"], 1, "{system}: {found}");
        }
    });
}

/// Values a black-box review found unindexed: an Observation's `valueDateTime` under
/// `code-value-date` (R4 writes `value.as(DateTime)`), a Range under a quantity parameter
/// (found by its bounds), a quantity's unit beside its code (`5.4||milligram`), and
/// DocumentReference `relationship` (R4 swapped its components' definitions).
#[test]
fn date_times_ranges_units_and_relationships_are_searchable() {
    for_each_backend(|s| {
        put(
            s,
            &json!({"resourceType": "Observation", "id": "sv-dated", "status": "final",
                "code": {"coding": [{"system": "urn:sv", "code": "a"}]}, "valueDateTime": "2019-02-03"}),
        );
        put(
            s,
            &json!({"resourceType": "Observation", "id": "sv-weighed", "status": "final",
                "code": {"coding": [{"system": "urn:sv", "code": "w"}]},
                "valueQuantity": {"value": 5.4, "unit": "milligram",
                    "system": "http://unitsofmeasure.org", "code": "mg"}}),
        );
        put(
            s,
            &json!({"resourceType": "Condition", "id": "sv-onset",
                "subject": {"reference": "Patient/sv-p"},
                "onsetRange": {"low": {"value": 10, "system": "http://unitsofmeasure.org", "code": "a"},
                               "high": {"value": 20, "system": "http://unitsofmeasure.org", "code": "a"}}}),
        );
        put(
            s,
            &json!({"resourceType": "DocumentReference", "id": "sv-new", "status": "current",
                "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/sv-old"}}],
                "content": [{"attachment": {"contentType": "text/plain", "url": "http://example.org/x"}}]}),
        );
        for (query, expected) in [
            (
                format!("Observation?code-value-date={}", enc("urn:sv|a$2019-02-03")),
                vec!["sv-dated"],
            ),
            (
                format!("Observation?code-value-date={}", enc("urn:sv|a$ge2000")),
                vec!["sv-dated"],
            ),
            (
                format!("Observation?value-quantity={}", enc("5.4||milligram")),
                vec!["sv-weighed"],
            ),
            (
                format!("Observation?value-quantity={}", enc("5.4||mg")),
                vec!["sv-weighed"],
            ),
            ("Condition?onset-age=lt30".to_string(), vec!["sv-onset"]),
            ("Condition?onset-age=gt15".to_string(), vec!["sv-onset"]),
            ("Condition?onset-age=gt25".to_string(), vec![]),
            (
                "Condition?_id=sv-onset&onset-age:missing=true".to_string(),
                vec![],
            ),
            (
                format!(
                    "DocumentReference?relationship={}",
                    enc("replaces$DocumentReference/sv-old")
                ),
                vec!["sv-new"],
            ),
        ] {
            let expected: Vec<String> = expected.into_iter().map(str::to_string).collect();
            assert_eq!(ids(s, &query), expected, "{query}");
        }
    });
}

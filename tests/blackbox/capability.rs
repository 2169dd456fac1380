//! GET /metadata and its snapshot.

use crate::support::*;
use serde_json::Value;

#[test]
fn capability_statement() {
    for_each_backend(|s| {
        let r = s.get("metadata").expect(200);
        // Revalidated by its ETag: 304 while the server runs, one tag per format.
        let tag = r.header("etag").expect("ETag").to_string();
        assert!(tag.starts_with("W/\""), "{tag}");
        let again = s
            .get_with("metadata", &[("If-None-Match", &tag)])
            .expect(304);
        assert_eq!(again.header("etag"), Some(tag.as_str()));
        assert!(again.body.is_empty());
        let strong = tag.trim_start_matches("W/");
        s.get_with("metadata", &[("If-None-Match", strong)])
            .expect(304);
        let xml = s
            .get_with(
                "metadata",
                &[("Accept", "application/fhir+xml"), ("If-None-Match", &tag)],
            )
            .expect(200);
        assert_ne!(xml.header("etag"), Some(tag.as_str()));
        s.get_with("metadata", &[("If-None-Match", "W/\"0\"")])
            .expect(200);
        let cs = r.json();
        // The gateway's own operations' definitions are served where the statement says
        // (a review found them nowhere), without a token, as the statement itself is.
        let operations = cs["rest"][0]["resource"]
            .as_array()
            .and_then(|resources| resources.iter().find(|r| r["type"] == "Patient"))
            .map(|patient| patient["operation"].clone())
            .unwrap_or_default();
        for name in ["link", "unlink"] {
            let definition = operations
                .as_array()
                .and_then(|list| list.iter().find(|o| o["name"] == name))
                .and_then(|o| o["definition"].as_str())
                .unwrap_or_default()
                .to_string();
            let id = definition.rsplit('/').next().unwrap_or_default();
            let served = s
                .anonymous()
                .get(&format!("OperationDefinition/{id}"))
                .expect(200)
                .json();
            assert_eq!(served["url"], definition.as_str(), "{served}");
            assert_eq!(served["code"], name, "{served}");
        }
        assert_eq!(cs["resourceType"], "CapabilityStatement");
        assert_eq!(cs["fhirVersion"], "4.0.1");
        assert_eq!(cs["kind"], "instance");
        assert_eq!(cs["status"], "active");
        let formats: Vec<&str> = cs["format"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(
            formats.contains(&"application/fhir+json") && formats.contains(&"application/fhir+xml"),
            "{formats:?}"
        );
        assert_eq!(cs["implementation"]["url"], serde_json::json!(s.base));
        let rest = &cs["rest"][0];
        assert_eq!(rest["mode"], "server");
        let resources = rest["resource"].as_array().unwrap();
        // Every R4 resource type (146 concrete resource types in R4 4.0.1).
        assert!(
            resources.len() >= 140,
            "only {} resource types",
            resources.len()
        );
        for t in [
            "Patient",
            "Observation",
            "Bundle",
            "OperationOutcome",
            "Basic",
            "Binary",
            "CapabilityStatement",
        ] {
            assert!(resources.iter().any(|r| r["type"] == t), "{t} missing");
        }
        // Parameters has no REST endpoint (parameters.html).
        assert!(!resources.iter().any(|r| r["type"] == "Parameters"));
        let codes_of = |res: &Value| -> Vec<String> {
            res["interaction"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["code"].as_str().unwrap().to_string())
                .collect()
        };
        // The audit trail is append-only through the API: read and search only.
        let audit = resources
            .iter()
            .find(|r| r["type"] == "AuditEvent")
            .expect("AuditEvent");
        assert_eq!(codes_of(audit), ["read", "search-type"], "{audit}");
        assert_eq!(audit["conditionalCreate"], false);
        assert_eq!(audit["updateCreate"], false);
        for p in [
            "date", "patient", "agent", "entity", "type", "outcome", "purpose",
        ] {
            assert!(
                audit["searchParam"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|sp| sp["name"] == p),
                "AuditEvent search parameter {p} missing"
            );
        }
        // Authentication is declared (SMART Backend Services).
        assert_eq!(
            rest["security"]["service"][0]["coding"][0]["code"],
            "SMART-on-FHIR"
        );
        for res in resources.iter().filter(|r| r["type"] != "AuditEvent") {
            let codes = codes_of(res);
            for c in [
                "read",
                "vread",
                "update",
                "patch",
                "delete",
                "history-instance",
                "history-type",
                "create",
            ] {
                assert!(codes.iter().any(|x| x == c), "{} lacks {c}", res["type"]);
            }
        }
        let system: Vec<&str> = rest["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        for c in ["transaction", "batch", "history-system"] {
            assert!(system.contains(&c), "system interaction {c}");
        }
        // XML rendering of the statement.
        let x = s.get("metadata?_format=xml").expect(200);
        assert!(
            x.body.contains("<CapabilityStatement")
                && x.body.contains("<fhirVersion value=\"4.0.1\"/>")
        );

        // Snapshot (same for every backend).
        let mut redacted = cs.clone();
        redacted["date"] = Value::String("<redacted>".into());
        redacted["implementation"]["url"] = Value::String("<redacted>".into());
        // The token endpoint names the test server's port.
        redacted["rest"][0]["security"]["extension"][0]["extension"][0]["valueUri"] =
            Value::String("<redacted>".into());
        let path = repo_root().join("tests/blackbox/snapshots/capability.json");
        let rendered = serde_json::to_string_pretty(&redacted).unwrap() + "\n";
        if std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &rendered).unwrap();
            eprintln!("snapshot written: {}", path.display());
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "snapshot {} is missing; run with UPDATE_SNAPSHOTS=1 to create it",
                path.display()
            )
        });
        let expected: Value = serde_json::from_str(&stored).unwrap();
        if let Some(d) = json_diff(&redacted, &expected) {
            panic!("CapabilityStatement differs from the snapshot at {d}\n(run with UPDATE_SNAPSHOTS=1 if the change is intended)");
        }
    });
}

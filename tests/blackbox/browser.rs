//! Browser apps and generic HTTP clients: `OPTIONS` answers what a path allows (it was 405),
//! CORS for the origins the operator lists (`cors_allowed_origins`; there was none, so a
//! patient's web app on another origin could not read its own audit trail), and the SMART
//! `oauth-uris` extension naming the token endpoint in the CapabilityStatement.

use crate::support::*;
use serde_json::Value;

const APP: &str = "https://patient-app.example";

fn security(s: &Server) -> Value {
    s.anonymous().get("metadata").expect(200).json()["rest"][0]["security"].clone()
}

#[test]
fn options_answers_the_methods_of_each_path_without_a_token() {
    for_each_backend(|s| {
        for (path, allow) in [
            ("metadata", "GET, HEAD, OPTIONS"),
            ("Patient", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            ("Patient/1", "GET, HEAD, PUT, PATCH, DELETE, OPTIONS"),
            ("Patient/1/$everything", "GET, HEAD, POST, OPTIONS"),
            ("AuditEvent/1", "GET, HEAD, OPTIONS"),
            ("", "GET, HEAD, POST, OPTIONS"),
        ] {
            let r = s
                .anonymous()
                .request("OPTIONS", path, &[], None)
                .expect(204);
            assert_eq!(r.header("allow"), Some(allow), "OPTIONS {path}");
            assert!(r.body.is_empty(), "OPTIONS {path}: {}", r.body);
        }
        // A path naming no resource type is no endpoint, for OPTIONS as for GET.
        s.anonymous()
            .request("OPTIONS", "Nothing/1", &[], None)
            .expect(404)
            .outcome();
        // Without configured origins, nothing is opened to other origins.
        let r = s
            .anonymous()
            .request(
                "OPTIONS",
                "Patient",
                &[
                    ("Origin", APP),
                    ("Access-Control-Request-Method", "GET"),
                    ("Access-Control-Request-Headers", "authorization"),
                ],
                None,
            )
            .expect(204);
        assert_eq!(r.header("access-control-allow-origin"), None);
        let r = s.get_with("Patient", &[("Origin", APP)]).expect(200);
        assert_eq!(r.header("access-control-allow-origin"), None);
        assert_eq!(security(s)["cors"], false);
    });
}

#[test]
fn listed_origins_may_call_the_gateway_from_a_browser() {
    let other = "https://elsewhere.example";
    for_each_backend_with(&[("RENKEI_CORS_ALLOWED_ORIGINS", APP)], |s| {
        let preflight = |origin: &str| {
            s.anonymous().request(
                "OPTIONS",
                "AuditEvent",
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "GET"),
                    (
                        "Access-Control-Request-Headers",
                        "authorization, x-request-id",
                    ),
                ],
                None,
            )
        };
        let r = preflight(APP).expect(204);
        assert_eq!(r.header("access-control-allow-origin"), Some(APP));
        let allowed_headers = r
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        for needed in ["authorization", "x-request-id", "if-match", "prefer"] {
            assert!(
                allowed_headers.contains(needed),
                "{needed}: {allowed_headers}"
            );
        }
        assert!(r
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("PUT") && m.contains("DELETE")));
        assert!(r.header("access-control-max-age").is_some());
        assert_eq!(r.header("access-control-allow-credentials"), None);
        // Another origin is not told it may.
        let r = preflight(other).expect(204);
        assert_eq!(r.header("access-control-allow-origin"), None);

        // Actual requests: allowed or refused, the page may read the answer and the headers
        // a FHIR client needs; the answer varies by origin for shared caches.
        let created = s
            .request(
                "POST",
                "Patient",
                &[("Content-Type", "application/fhir+json"), ("Origin", APP)],
                Some(br#"{"resourceType":"Patient","gender":"female"}"#.to_vec()),
            )
            .expect(201);
        assert_eq!(created.header("access-control-allow-origin"), Some(APP));
        let exposed = created
            .header("access-control-expose-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        for needed in ["location", "etag", "last-modified", "x-request-id"] {
            assert!(exposed.contains(needed), "{needed}: {exposed}");
        }
        assert!(created
            .headers
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap_or_default().contains("Origin")));
        let refused = s
            .anonymous()
            .get_with("Patient", &[("Origin", APP)])
            .expect(401);
        assert_eq!(refused.header("access-control-allow-origin"), Some(APP));
        assert!(refused.header("www-authenticate").is_some());
        let foreign = s.get_with("Patient", &[("Origin", other)]).expect(200);
        assert_eq!(foreign.header("access-control-allow-origin"), None);
        assert_eq!(security(s)["cors"], true);
    });
}

#[test]
fn capability_statement_names_the_token_endpoint() {
    for_each_backend(|s| {
        let config: Value = s
            .anonymous()
            .get("/.well-known/smart-configuration")
            .expect(200)
            .json();
        let security = security(s);
        assert_eq!(
            security["service"][0]["coding"][0]["code"], "SMART-on-FHIR",
            "{security}"
        );
        let oauth = security["extension"]
            .as_array()
            .and_then(|extensions| {
                extensions.iter().find(|e| {
                    e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
                })
            })
            .unwrap_or_else(|| panic!("no oauth-uris extension: {security}"));
        assert_eq!(oauth["extension"][0]["url"], "token");
        assert_eq!(oauth["extension"][0]["valueUri"], config["token_endpoint"]);
        // The XML form carries it too (the extension is valid on `security`).
        let xml = s
            .anonymous()
            .get_with("metadata", &[("Accept", "application/fhir+xml")])
            .expect(200);
        assert!(
            xml.body.contains("StructureDefinition/oauth-uris"),
            "{}",
            xml.body
        );
    });
}

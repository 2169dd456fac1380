//! The CapabilityStatement, generated from the same tables the router is built from.

use crate::AppState;
use serde_json::{json, Value};

/// Type-level interactions served for every resource type (see `routes` in lib.rs).
pub const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// System-level interactions served at the base URL.
pub const SYSTEM_INTERACTIONS: &[&str] =
    &["transaction", "batch", "history-system", "search-system"];

/// Result parameters every search answers (besides the type's own search parameters).
pub const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
];

/// Search modifiers, by the parameter types they apply to.
pub const MODIFIERS: &[&str] = &[
    ":missing (all)",
    ":exact, :contains (string)",
    ":not, :text, :in, :not-in (token; :not also on _id), :of-type (token parameters of Identifier type)",
    ":Type, :identifier, :linked (alias :mdm; references to Patient, every record of the same person) (reference)",
    ":below, :above (uri)",
];

/// The search parameters of `res_type` that this server indexes and searches, generated from
/// the same registry the index extraction and query parser use.
pub fn search_params(res_type: &str) -> Vec<Value> {
    let mut params: Vec<Value> = renkei_search::registry()
        .params(res_type)
        .filter(|p| {
            p.kind.is_indexed()
                && (p.expression.is_some() || p.code == "_id" || p.code == "_lastUpdated")
        })
        .map(|p| {
            json!({
                "name": p.code,
                "definition": p.url,
                "type": p.kind.code(),
                "documentation": p.description,
            })
        })
        .collect();
    params.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    params
}

/// How a stored Bundle is searched by its first entry: R4's `composition` and `message`
/// parameters select a resource inside the Bundle, so only their chains are served, one per
/// parameter of the entry's type (renkei_search::ENTRY_CHAINS).
fn bundle_chains_documentation() -> String {
    let chains: Vec<String> = renkei_search::ENTRY_CHAINS
        .iter()
        .map(|(chain, entry_type)| {
            let mut codes: Vec<&str> = renkei_search::registry()
                .params("Bundle")
                .filter_map(|p| p.code.strip_prefix(chain)?.strip_prefix('.'))
                .collect();
            codes.sort_unstable();
            format!(
                "{chain}.<{entry_type} parameter> when the first entry is a {entry_type} ({})",
                codes.join(", ")
            )
        })
        .collect();
    format!(
        "A stored Bundle is searched by its own parameters and by its first entry through the \
         chains {}. composition.subject and composition.patient name the patient record here the \
         document was matched to. composition and message themselves are not searched.",
        chains.join("; ")
    )
}

/// `AuditEvent` (routes in lib.rs, `auditevents.rs`): the gateway writes the trail itself, so
/// the API only reads and searches it, with its own search parameters.
fn audit_event_resource() -> Value {
    let mut params: Vec<Value> = search_params("AuditEvent")
        .into_iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| crate::auditevents::SEARCH_PARAMS.contains(&n))
        })
        .collect();
    if !params.iter().any(|p| p["name"] == "purpose") {
        params.push(json!({
            "name": "purpose",
            "type": "token",
            "documentation": "The purpose of use of the audited access (AuditEvent.purposeOfEvent)",
        }));
    }
    params.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({
        "type": "AuditEvent",
        "documentation": "The audit trail is written by the gateway and append-only: create, update, patch and delete answer 405, and it has no history (405). Search (GET, or POST AuditEvent/_search with a form body) takes the parameters listed here plus _sort=date|-date, _count, _total and _summary=count; any other parameter is refused with 400 even without Prefer: handling=strict, so that an audit query is never silently wider than asked.",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": false,
        "updateCreate": false,
        "conditionalCreate": false,
        "conditionalRead": "not-supported",
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",
        "searchParam": params,
    })
}

/// `rest.security`: SMART Backend Services, the token endpoint (SMART's `oauth-uris`
/// extension, for clients that look there rather than in `.well-known/smart-configuration`),
/// and whether browser pages of other origins may call the server.
fn security(state: &AppState) -> Value {
    let mut security = json!({
        "cors": state.cors != crate::cors::CorsPolicy::Closed,
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
        }]}],
        "description": "Every request except GET /metadata and GET \
            /.well-known/smart-configuration needs Authorization: Bearer \
            <access token>. Tokens come from SMART Backend Services (client_credentials \
            with a private_key_jwt client assertion) at the token endpoint named in \
            .well-known/smart-configuration.",
    });
    if let Some(token_url) = state.auth.token_urls.first() {
        security["extension"] = json!([{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": token_url}],
        }]);
    }
    security
}

pub fn capability_statement(base: &str, state: &AppState) -> Value {
    // `Parameters` has no REST endpoint (parameters.html), so it is not listed.
    let resources: Vec<Value> = renkei_fhir::resource_types()
        .iter()
        .filter(|res_type| renkei_repository::has_rest_endpoint(res_type))
        .map(|res_type| {
            if *res_type == "AuditEvent" {
                return audit_event_resource();
            }
            let mut resource = json!({
                "type": res_type,
                "interaction": TYPE_INTERACTIONS.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
                "searchParam": search_params(res_type),
            });
            if *res_type == "Bundle" {
                resource["documentation"] = json!(bundle_chains_documentation());
            }
            if *res_type == "Patient" {
                // Served by `search.rs` (`GET Patient/{id}/$everything`).
                // `$everything` is served by `search.rs`, the identity operations by
                // `identity.rs`.
                resource["operation"] = json!([{
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    "documentation": "The patient's compartment, consent-filtered, with start/end (care dates: resources without one always included), _since, _type and _count; paged; GET or POST with a Parameters body. _linked=true (alias _mdm) spans every record linked to the patient as the same person.",
                }, {
                    "name": "ihe-pix",
                    "definition": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix",
                    "documentation": "IHE PIXm (ITI-83): identifiers and records of the same person in other domains, limited to what consent lets the caller see.",
                }, {
                    "name": "match",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
                    "documentation": "IHE PDQm (ITI-119): scored candidates with the match-grade extension, among the records the caller may see.",
                }, {
                    "name": "link",
                    "definition": format!("{}/Patient-link", crate::operation_definitions::DEFINITION_BASE),
                    "documentation": "Administrators: link two Patient records as one person (Parameters source, target, reason).",
                }, {
                    "name": "unlink",
                    "definition": format!("{}/Patient-unlink", crate::operation_definitions::DEFINITION_BASE),
                    "documentation": "Administrators: keep two Patient records apart although their linking identifiers agree (Parameters source, target, reason).",
                }]);
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": state.started_at,
        "publisher": "Renkei",
        "kind": "instance",
        "software": {"name": "Renkei", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Renkei FHIR R4 gateway", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml", "json", "xml"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json", "application/fhir+xml"],
        "rest": [{
            "mode": "server",
            "security": security(state),
            "documentation": format!(
                "Bundles, search and history pages hold at most {} entries ({} by default). \
                 Search result parameters: {}. Unknown search parameters are ignored with a \
                 warning (search.mode = outcome) unless Prefer: handling=strict asks for 400. \
                 Modifiers: {}. Composite parameters are supported; _contained=true|both is \
                 refused with 400 (contained resources are not searched).",
                state.max_page_size, state.default_page_size, RESULT_PARAMS.join(", "),
                MODIFIERS.join(", ")
            ),
            "resource": resources,
            "interaction": SYSTEM_INTERACTIONS.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
            // `Patient/{id}/{type}` and `$everything`; other compartments answer 404.
            "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
        }],
    })
}

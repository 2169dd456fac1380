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
pub const SYSTEM_INTERACTIONS: &[&str] = &["transaction", "batch", "history-system"];

/// Search parameters every type answers today (the conditional criteria).
pub const SEARCH_PARAMS: &[(&str, &str, &str)] = &[
    ("_id", "token", "Logical id of the resource"),
    (
        "identifier",
        "token",
        "Business identifier: system|value, |value or value",
    ),
];

pub fn capability_statement(base: &str, state: &AppState) -> Value {
    let resources: Vec<Value> = renkei_fhir::resource_types()
        .iter()
        .map(|res_type| {
            json!({
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
                "searchParam": SEARCH_PARAMS.iter().map(|(name, kind, doc)| json!({
                    "name": name,
                    "type": kind,
                    "documentation": doc,
                })).collect::<Vec<_>>(),
            })
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
            "documentation": format!(
                "Bundles and history pages hold at most {} entries ({} by default).",
                state.max_page_size, state.default_page_size
            ),
            "resource": resources,
            "interaction": SYSTEM_INTERACTIONS.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
        }],
    })
}

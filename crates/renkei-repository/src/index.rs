//! Index values extracted from a resource at write time, stored in the same transaction.

use renkei_store::TokenRow;
use serde_json::Value;

/// Token rows of a resource. For now the `identifier` parameter (conditional interactions
/// depend on it); the search engine extends this to every search parameter.
pub(crate) fn tokens(resource: &Value) -> Vec<TokenRow> {
    let mut rows = Vec::new();
    let identifiers = match resource.get("identifier") {
        Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
        Some(single @ Value::Object(_)) => vec![single],
        _ => Vec::new(),
    };
    for identifier in identifiers {
        let value = identifier.get("value").and_then(Value::as_str);
        if value.is_none() {
            continue;
        }
        rows.push(TokenRow {
            param: "identifier".into(),
            system: identifier
                .get("system")
                .and_then(Value::as_str)
                .map(str::to_string),
            code: value.map(str::to_string),
            text: None,
        });
    }
    rows
}

/// The patient whose compartment the resource primarily belongs to (consent is decided per
/// patient), as a plain Patient id.
pub(crate) fn patient_of(res_type: &str, id: &str, resource: &Value) -> Option<String> {
    if res_type == "Patient" {
        return Some(id.to_string());
    }
    ["subject", "patient", "beneficiary", "individual"]
        .iter()
        .filter_map(|key| resource.get(*key))
        .filter_map(|r| r.get("reference").and_then(Value::as_str))
        .find_map(|reference| {
            reference
                .strip_prefix("Patient/")
                .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
        })
}

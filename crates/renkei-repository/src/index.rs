//! Index values extracted from a resource at write time, stored in the same transaction.

use renkei_search::IndexRows;
use serde_json::Value;

/// Index rows of a resource: every search parameter of its type, extracted by evaluating the
/// parameters' FHIRPath expressions (see `renkei_search::extract`).
pub(crate) fn rows(res_type: &str, resource: &Value) -> IndexRows {
    // Only in binaries built to measure what indexing costs (issue 3); never by default.
    if cfg!(feature = "unindexed-writes-benchmark") {
        return IndexRows::default();
    }
    renkei_search::extract(res_type, resource)
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

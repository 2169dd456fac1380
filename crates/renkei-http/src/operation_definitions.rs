//! The OperationDefinitions of the gateway's own operations (`Patient/$link`,
//! `Patient/$unlink`), served at the canonical URLs the CapabilityStatement names, so that a
//! client or conformance tester can read their parameters. Like the CapabilityStatement they
//! describe the server, not anybody's data: no token is needed.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::format::render_value;

/// The canonical base of the definitions (`{BASE}/Patient-link`).
pub const DEFINITION_BASE: &str = "https://renkei.example/fhir/OperationDefinition";

/// The OperationDefinition `id` (`Patient-link` or `Patient-unlink`), if it is one of ours.
pub fn operation_definition(id: &str) -> Option<Value> {
    let (code, linked) = match id {
        "Patient-link" => ("link", true),
        "Patient-unlink" => ("unlink", false),
        _ => return None,
    };
    let (title, description) = match linked {
        true => (
            "Link two Patient records as one person",
            "Administrators only. Records that the linking identifiers keep apart (different \
             birth dates, a mistyped identifier) are made one person; the reason is kept and \
             audited. Answers the persons of both records afterwards.",
        ),
        false => (
            "Keep two Patient records apart",
            "Administrators only. Records that the linking identifiers make one person are kept \
             apart; the reason is kept and audited. Answers the persons of both records \
             afterwards and the Consents in force whose holder no longer holds a record of \
             the patient they speak for, for review.",
        ),
    };
    let patient_in = |name: &str, documentation: &str| {
        json!({"name": name, "use": "in", "min": 1, "max": "1", "type": "Reference",
               "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Patient"],
               "documentation": documentation})
    };
    let person_out = |name: &str, documentation: &str| {
        json!({"name": name, "use": "out", "min": 1, "max": "1", "documentation": documentation,
               "part": [{"name": "record", "use": "out", "min": 1, "max": "*",
                         "type": "Reference",
                         "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Patient"]}]})
    };
    let mut parameters = vec![
        patient_in("source", "One Patient record."),
        patient_in("target", "The other Patient record."),
        json!({"name": "reason", "use": "in", "min": 1, "max": "1", "type": "string",
               "documentation": "Why, for the audit trail."}),
        person_out(
            "source-person",
            "The records of the source's person afterwards.",
        ),
        person_out(
            "target-person",
            "The records of the target's person afterwards.",
        ),
    ];
    if !linked {
        parameters.push(
            json!({"name": "consent-to-review", "use": "out", "min": 0, "max": "*",
            "type": "Reference",
            "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Consent"],
            "documentation": "A Consent in force recorded through the link now undone."}),
        );
    }
    Some(json!({
        "resourceType": "OperationDefinition",
        "id": id,
        "url": format!("{DEFINITION_BASE}/{id}"),
        "name": format!("Patient{}", if linked { "Link" } else { "Unlink" }),
        "title": title,
        "status": "active",
        "kind": "operation",
        "description": description,
        "affectsState": true,
        "code": code,
        "resource": ["Patient"],
        "system": false,
        "type": true,
        "instance": false,
        "parameter": parameters,
    }))
}

/// `GET /OperationDefinition/Patient-link` (and `Patient-unlink`).
pub async fn read(req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let id = path.into_inner();
    match operation_definition(&id) {
        Some(definition) => render_value(HttpResponse::Ok(), &definition, ctx.format, ctx.pretty),
        None => ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "not-found",
            format!("OperationDefinition/{id} is not known"),
        )
        .respond(ctx.format, ctx.pretty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_definitions_name_their_canonical_and_parameters() {
        for id in ["Patient-link", "Patient-unlink"] {
            let definition = operation_definition(id).unwrap_or_default();
            assert_eq!(definition["url"], format!("{DEFINITION_BASE}/{id}"));
            assert!(
                renkei_fhir::validate(&definition).is_ok(),
                "{id}: {definition}"
            );
        }
        assert!(operation_definition("Patient-everything").is_none());
    }
}

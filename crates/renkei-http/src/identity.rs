//! Identity operations on Patient: PIXm `$ihe-pix` (ITI-83), PDQm `$match` (ITI-119), and the
//! administrators' `$link` / `$unlink`. The answers come from the gate, limited by consent.

use crate::auth::authenticate;
use crate::error::ApiError;
use crate::format::{body_kind, parse_body, render_value, response_bundle, BodyKind};
use crate::handlers::{blocking, finish, query_string};
use crate::request::{read_body, RequestCtx};
use crate::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use renkei_repository::identity::PixAnswer;
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, ApiError>;

const MATCH_GRADE_URL: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";

/// The parameters of PIXm's `$ihe-pix` a `Parameters` body may give (IHE.PIXm.pix), with the
/// value types each takes; an Identifier is read as the GET form's `system|value`.
const PIX_PARAMETERS: &[(&str, &[&str])] = &[
    ("sourceIdentifier", &["Identifier", "String", "Code"]),
    ("targetSystem", &["Uri", "String", "Canonical", "Url"]),
];

/// `GET /fhir/Patient/$ihe-pix?sourceIdentifier=sys|val{&targetSystem=uri}`.
pub async fn pix(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let result = async {
        let who = authenticate(&req, &state).await?;
        let raw_query = format!("Patient/$ihe-pix?{}", req.query_string());
        pix_answer(&ctx, &state, who, &ctx.params, raw_query).await
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

/// `POST /fhir/Patient/$ihe-pix` with a `Parameters` body: the same request as the GET form,
/// the URL's parameters and the body's together. The token is checked before the body is
/// read.
pub async fn pix_post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let result = async {
        let who = authenticate(&req, &state).await?;
        let parameters = parameters_body(&req, payload, &state).await?;
        let mut params = ctx.params.clone();
        params.extend(crate::operations::primitive_parameters(
            &parameters,
            "$ihe-pix",
            PIX_PARAMETERS,
        )?);
        // The trail records the request as the GET form would spell it.
        let raw_query = format!("Patient/$ihe-pix?{}", query_string(params.iter()));
        pix_answer(&ctx, &state, who, &params, raw_query).await
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

/// `$ihe-pix` from its parameters (either form), through the gate.
async fn pix_answer(
    ctx: &RequestCtx,
    state: &AppState,
    who: renkei_access::Requester,
    params: &[(String, String)],
    raw_query: String,
) -> Result<HttpResponse> {
    {
        let mut source = None;
        let mut targets: Vec<String> = Vec::new();
        for (name, value) in params {
            match name.as_str() {
                "sourceIdentifier" if source.is_some() => {
                    return Err(ApiError::bad_request(
                        "sourceIdentifier may be given only once",
                    ))
                }
                "sourceIdentifier" => {
                    source = Some(
                        renkei_identity::parse_pix_identifier(value)
                            .map_err(|e| ApiError::bad_request(e.to_string()))?,
                    )
                }
                "targetSystem" => targets.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                ),
                "_format" | "_pretty" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "$ihe-pix takes sourceIdentifier and targetSystem, not '{other}'"
                    )))
                }
            }
        }
        let Some((system, value)) = source else {
            return Err(ApiError::bad_request(
                "sourceIdentifier (system|value) is required",
            ));
        };
        let gate = state.gate.clone();
        let answer =
            blocking(move || gate.pix(&who, (&system, &value), &targets, &raw_query)).await?;
        if let Some((status, code, message)) = answer.failure() {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            // The gate has recorded this answer already.
            return Err(ApiError::Audited(Box::new(ApiError::new(
                status, code, message,
            ))));
        }
        let PixAnswer::Found {
            identifiers,
            patients,
        } = answer
        else {
            return Err(ApiError::bad_request("no cross-reference"));
        };
        let mut parameter: Vec<Value> = identifiers
            .into_iter()
            .map(|identifier| json!({"name": "targetIdentifier", "valueIdentifier": identifier}))
            .collect();
        parameter.extend(patients.into_iter().map(
            |reference| json!({"name": "targetId", "valueReference": {"reference": reference}}),
        ));
        let mut body = json!({"resourceType": "Parameters"});
        if !parameter.is_empty() {
            body["parameter"] = Value::Array(parameter);
        }
        Ok(render_value(
            HttpResponse::Ok(),
            &body,
            ctx.format,
            ctx.pretty,
        ))
    }
}

/// Reads a `Parameters` body (JSON or XML).
pub(crate) async fn parameters_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Value> {
    let BodyKind::Fhir(format) = body_kind(req.headers())? else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "this operation takes a FHIR Parameters resource",
        ));
    };
    let bytes = read_body(req, payload, state.max_body_bytes).await?;
    let value = blocking(move || parse_body(&bytes, format)).await?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ApiError::bad_request(
            "this operation takes a Parameters resource",
        ));
    }
    Ok(value)
}

/// `POST /fhir/Patient/$match`: scored candidates as a searchset Bundle.
pub async fn match_patients(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let result = async {
        let who = authenticate(&req, &state).await?;
        let parameters = parameters_body(&req, payload, &state).await?;
        let request = renkei_identity::parse_match_request(&parameters)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let gate = state.gate.clone();
        let candidates = blocking(move || gate.match_patients(&who, &request)).await?;
        let mut entries = Vec::with_capacity(candidates.len());
        for candidate in &candidates {
            let resource: Value = serde_json::from_str(&candidate.resource.body)
                .map_err(|e| ApiError::bad_request(format!("stored Patient unreadable: {e}")))?;
            entries.push(json!({
                "fullUrl": format!("{}/Patient/{}", ctx.base, candidate.resource.id),
                "resource": resource,
                "search": {
                    "extension": [{"url": MATCH_GRADE_URL, "valueCode": candidate.score.grade.code()}],
                    "mode": "match",
                    "score": candidate.score.score,
                },
            }));
        }
        let total = i64::try_from(entries.len()).unwrap_or(i64::MAX);
        let links = vec![json!({"relation": "self", "url": format!("{}/Patient/$match", ctx.base)})];
        let bundle = response_bundle("searchset", Some(total), links, entries);
        Ok(render_value(HttpResponse::Ok(), &bundle, ctx.format, ctx.pretty))
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

/// The Patient id a `Parameters` entry names (`valueReference` `Patient/id` or `valueString`).
fn patient_parameter(parameters: &Value, name: &str) -> Result<String> {
    let value = parameters
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| {
            p.pointer("/valueReference/reference")
                .or_else(|| p.get("valueString"))
                .and_then(Value::as_str)
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "parameter '{name}' (a Patient reference) is required"
            ))
        })?;
    let id = value.strip_prefix("Patient/").unwrap_or(value);
    if id.is_empty() || id.contains('/') {
        return Err(ApiError::bad_request(format!(
            "parameter '{name}' must reference a Patient, not '{value}'"
        )));
    }
    Ok(id.to_string())
}

fn string_parameter(parameters: &Value, name: &str) -> Option<String> {
    parameters
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("valueString").and_then(Value::as_str))
        .map(str::to_string)
}

/// `POST /fhir/Patient/$link` and `$unlink` (administrators): `source`, `target`, `reason`.
async fn link_change(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    linked: bool,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let result = async {
        let who = authenticate(&req, &state).await?;
        let parameters = parameters_body(&req, payload, &state).await?;
        // A misspelt `reason` or `target` must not be taken as absent, nor one given twice
        // leave it unclear which counts.
        let names: Vec<&str> = parameters
            .get("parameter")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("name").and_then(Value::as_str))
            .collect();
        let unknown: Vec<&str> = names
            .iter()
            .copied()
            .filter(|name| !matches!(*name, "source" | "target" | "reason"))
            .collect();
        if !unknown.is_empty() {
            return Err(ApiError::bad_request(format!(
                "$link and $unlink take the parameters source, target and reason, not {}",
                unknown.join(", ")
            )));
        }
        for name in ["source", "target", "reason"] {
            let given = names.iter().filter(|n| **n == name).count();
            if given > 1 {
                return Err(ApiError::bad_request(format!(
                    "$link and $unlink take one {name}, not {given}"
                )));
            }
        }
        let source = patient_parameter(&parameters, "source")?;
        let target = patient_parameter(&parameters, "target")?;
        let reason = string_parameter(&parameters, "reason").unwrap_or_default();
        let gate = state.gate.clone();
        let (source_id, target_id) = (source.clone(), target.clone());
        let outcome =
            blocking(move || gate.set_link(&who, &source, &target, linked, &reason)).await?;
        let person = |name: &str, members: Vec<String>| {
            json!({
                "name": name,
                "part": members
                    .into_iter()
                    .map(|id| json!({"name": "record", "valueReference": {"reference": format!("Patient/{id}")}}))
                    .collect::<Vec<_>>(),
            })
        };
        // A record linked to no other is a person of its own: listed too, so the answer
        // always shows both sides.
        let or_alone = |members: Vec<String>, record: String| match members.is_empty() {
            true => vec![record],
            false => members,
        };
        let mut body = json!({"resourceType": "Parameters", "parameter": [
            person("source-person", or_alone(outcome.source_person, source_id)),
            person("target-person", or_alone(outcome.target_person, target_id)),
        ]});
        // Consents whose holder no longer holds a record of their patient (recorded through
        // a link now undone): for the administrator to review with the patient.
        if let Some(parameters) = body["parameter"].as_array_mut() {
            parameters.extend(outcome.consents_to_review.into_iter().map(|consent| {
                json!({"name": "consent-to-review", "valueReference": {"reference": consent}})
            }));
        }
        Ok(render_value(HttpResponse::Ok(), &body, ctx.format, ctx.pretty))
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

pub async fn link(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    link_change(req, payload, state, true).await
}

pub async fn unlink(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    link_change(req, payload, state, false).await
}

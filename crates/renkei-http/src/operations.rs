//! Paths that name an operation (`$name`) at the system, type or instance level. The
//! operations served (`Patient/{id}/$everything` here, the identity operations in
//! `identity.rs`) are dispatched from here; any other is answered as not supported, rather
//! than with what a read or a compartment search would say of `$name` taken as an id or a
//! type. Also the reading of an operation's `Parameters` body into the name/value pairs its
//! GET form takes.

use crate::error::ApiError;
use crate::handlers::{finish, refuse_method};
use crate::search::check_type;
use crate::AppState;
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

type Result<T> = std::result::Result<T, ApiError>;

/// An operation this server does not serve at this level (404: no such endpoint).
fn not_supported(operation: &str, level: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-supported",
        format!("operation {operation} is not supported {level}"),
    )
}

/// `[base]/$name`: no system-level operation is served.
pub async fn system(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let operation = path.into_inner();
    let error = not_supported(&operation, "at the system level");
    finish(&req, &state, &ctx, Err(error)).await
}

/// `[base]/[type]/$name` (the identity operations have routes of their own, before this one).
pub async fn type_level(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let (res_type, operation) = path.into_inner();
    let result = check_type(&res_type).and_then(|()| {
        Err(match (res_type.as_str(), operation.as_str()) {
            // Every patient the requester may see, at once, is not offered: the instance
            // form names the patient whose consent decides.
            ("Patient", "$everything") => ApiError::new(
                StatusCode::BAD_REQUEST,
                "not-supported",
                "type-level Patient/$everything is not supported: call \
                 Patient/[id]/$everything for one patient",
            ),
            _ => not_supported(&operation, &format!("on {res_type}")),
        })
    });
    finish(&req, &state, &ctx, result).await
}

/// `[base]/[type]/[id]/$name`: `Patient/{id}/$everything` by GET, HEAD or POST.
pub async fn instance(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let (res_type, id, operation) = path.into_inner();
    if let Err(error) = check_type(&res_type) {
        return finish(&req, &state, &ctx, Err(error)).await;
    }
    if (res_type.as_str(), operation.as_str()) != ("Patient", "$everything") {
        let error = not_supported(&operation, &format!("on {res_type} instances"));
        return finish(&req, &state, &ctx, Err(error)).await;
    }
    let result = match *req.method() {
        Method::GET | Method::HEAD => crate::search::everything(&req, &ctx, &state, &id).await,
        Method::POST => crate::search::everything_post(&req, &ctx, &state, &id, payload).await,
        _ => {
            let message = format!(
                "{} is not allowed on {}; allowed: GET, HEAD, POST",
                req.method(),
                req.path()
            );
            return refuse_method(&req, message, "GET, HEAD, POST").await;
        }
    };
    finish(&req, &state, &ctx, result).await
}

/// The parameters of a `Parameters` body as the name/value pairs of the operation's GET
/// form, each value in its search spelling (an Identifier as `system|value`). `accepted`
/// names each parameter the operation takes and the `value[x]` types it may have: any other
/// parameter, or one given as a resource or in parts, is refused (400), so nothing asked
/// for is silently dropped.
pub(crate) fn primitive_parameters(
    parameters: &Value,
    operation: &str,
    accepted: &[(&str, &[&str])],
) -> Result<Vec<(String, String)>> {
    if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ApiError::bad_request(format!(
            "{operation} takes a Parameters resource"
        )));
    }
    let names = || {
        accepted
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let items = match parameters.get("parameter") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::bad_request("Parameters.parameter must be a list")),
    };
    let mut pairs = Vec::with_capacity(items.len());
    for item in items {
        let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
        let Some((_, types)) = accepted.iter().find(|(known, _)| *known == name) else {
            return Err(ApiError::bad_request(format!(
                "{operation} takes the parameters {}, not '{name}'",
                names()
            )));
        };
        let mut values =
            item.as_object().into_iter().flatten().filter(|(key, _)| {
                key.starts_with("value") || *key == "resource" || *key == "part"
            });
        let (key, value) = match (values.next(), values.next()) {
            (Some(only), None) => only,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{operation} parameter '{name}' needs exactly one value[x]"
                )))
            }
        };
        let value_type = key.strip_prefix("value").unwrap_or_default();
        if !types.contains(&value_type) {
            let wanted: Vec<String> = types.iter().map(|t| format!("value{t}")).collect();
            return Err(ApiError::bad_request(format!(
                "{operation} parameter '{name}' takes {}, not {key}",
                wanted.join(" or ")
            )));
        }
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Bool(flag) => flag.to_string(),
            Value::Number(number) => number.to_string(),
            Value::Object(_) if value_type == "Identifier" => {
                identifier_token(value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{operation} parameter '{name}' needs an Identifier with a system \
                         and a value"
                    ))
                })?
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{operation} parameter '{name}' has an unreadable {key}"
                )))
            }
        };
        pairs.push((name.to_string(), text));
    }
    Ok(pairs)
}

/// An Identifier as a token search spells it (`system|value`, `|` and `\` escaped).
fn identifier_token(identifier: &Value) -> Option<String> {
    let escape = |text: &str| text.replace('\\', "\\\\").replace('|', "\\|");
    let system = identifier.get("system").and_then(Value::as_str)?;
    let value = identifier.get("value").and_then(Value::as_str)?;
    Some(format!("{}|{}", escape(system), escape(value)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    const TAKES: &[(&str, &[&str])] = &[
        ("start", &["Date"]),
        ("_count", &["Integer", "UnsignedInt"]),
        ("sourceIdentifier", &["Identifier", "String"]),
        ("_linked", &["Boolean"]),
    ];

    fn diagnostics(body: Value) -> String {
        primitive_parameters(&body, "$op", TAKES)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn primitives_become_the_get_forms_pairs() {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "start", "valueDate": "2024-01-01"},
            {"name": "_count", "valueUnsignedInt": 5},
            {"name": "sourceIdentifier", "valueIdentifier": {"system": "urn:a|b", "value": "x\\1"}},
            {"name": "sourceIdentifier", "valueString": "urn:c|2"},
            {"name": "_linked", "valueBoolean": true},
        ]});
        let pairs = primitive_parameters(&body, "$op", TAKES).unwrap();
        let expected: Vec<(String, String)> = [
            ("start", "2024-01-01"),
            ("_count", "5"),
            ("sourceIdentifier", "urn:a\\|b|x\\\\1"),
            ("sourceIdentifier", "urn:c|2"),
            ("_linked", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs, expected);
        let (system, value) = renkei_identity::parse_pix_identifier(&pairs[2].1).expect("a token");
        assert_eq!((system.as_str(), value.as_str()), ("urn:a|b", "x\\1"));
    }

    #[test]
    fn no_parameters_is_no_pairs() {
        let pairs = primitive_parameters(&json!({"resourceType": "Parameters"}), "$op", TAKES);
        assert_eq!(pairs.unwrap(), Vec::new());
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        assert!(diagnostics(json!({"resourceType": "Patient"})).contains("Parameters resource"));
        let one =
            |parameter: Value| json!({"resourceType": "Parameters", "parameter": [parameter]});
        let unknown = diagnostics(one(json!({"name": "stop", "valueDate": "2024-01-01"})));
        assert!(unknown.contains("not 'stop'"), "{unknown}");
        let wrong_type = diagnostics(one(json!({"name": "start", "valueString": "2024"})));
        assert!(wrong_type.contains("takes valueDate"), "{wrong_type}");
        let resource = diagnostics(one(
            json!({"name": "start", "resource": {"resourceType": "Patient"}}),
        ));
        assert!(resource.contains("not resource"), "{resource}");
        let parts = diagnostics(one(json!({"name": "start", "part": []})));
        assert!(parts.contains("not part"), "{parts}");
        let none = diagnostics(one(json!({"name": "start"})));
        assert!(none.contains("exactly one value[x]"), "{none}");
        let no_value = diagnostics(one(
            json!({"name": "sourceIdentifier", "valueIdentifier": {"system": "urn:a"}}),
        ));
        assert!(no_value.contains("system and a value"), "{no_value}");
    }
}

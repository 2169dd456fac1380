//! FHIR REST interactions. Handlers parse and negotiate, hand the work to the repository on
//! the blocking pool, and render; they hold no FHIR logic of their own.

use crate::auth::authenticate;
use crate::error::{outcome, ApiError};
use crate::format::{body_kind, parse_body, render_stored, render_value, BodyKind, Format};
use crate::request::{if_match, read_body, return_preference, RequestCtx, ReturnPreference};
use crate::search::check_type;
use crate::AppState;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use renkei_repository::{
    format_instant, parse_instant_ms, Criteria, DeleteOutcome, HistoryRequest, PatchBody,
    StoredResource, WriteOutcome,
};
use renkei_store::HistoryScope;
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

type Result<T> = std::result::Result<T, ApiError>;

/// Runs gate/repository work on the blocking pool (diesel is synchronous), then waits, without
/// holding a thread, until every AuditEvent the work recorded is durable: no audit, no data.
pub(crate) async fn blocking<T, E, F>(work: F) -> Result<T>
where
    F: FnOnce() -> std::result::Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    let deferred = web::block(move || renkei_access::deferring_durability(work))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the server is shutting down",
            )
        })?;
    match deferred.durable().await {
        Ok(result) => result.map_err(Into::into),
        Err(unavailable) => Err(renkei_access::AccessError::AuditUnavailable(unavailable.0).into()),
    }
}

/// Turns a handler result into a response, rendering errors in the negotiated format. A
/// failure the gate did not see (no or bad token, malformed body, bad parameters) is recorded
/// in the audit trail here, before the response leaves.
pub(crate) async fn finish(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    ctx: &RequestCtx,
    result: Result<HttpResponse>,
) -> HttpResponse {
    match result {
        Ok(response) => response,
        Err(error) => respond_recorded(req, state, error, ctx.format, ctx.pretty).await,
    }
}

/// Answers a request refused before a handler could begin (no such endpoint, a method the path
/// does not take, a format it cannot answer in), recording the attempt in the audit trail as
/// [`finish`] does.
pub(crate) async fn refuse(req: &HttpRequest, error: ApiError, format: Format) -> HttpResponse {
    match req.app_data::<web::Data<AppState>>() {
        Some(state) => respond_recorded(req, state, error, format, false).await,
        None => error.respond(format, false),
    }
}

/// The error's response, once the trail holds the failure (a failure the gate did not see is
/// recorded here); if it cannot be recorded, the audit's own error instead.
async fn respond_recorded(
    req: &HttpRequest,
    state: &web::Data<AppState>,
    error: ApiError,
    format: Format,
    pretty: bool,
) -> HttpResponse {
    if error.is_audited() {
        return error.respond(format, pretty);
    }
    let who = match authenticate(req, state).await {
        Ok(who) => Some(who),
        Err(_) => crate::auth::refused_requester(req, state).await,
    };
    let gate = state.gate.clone();
    let request_id = crate::auth::request_id(req);
    let address = req.peer_addr().map(|a| a.ip().to_string());
    let method = req.method().to_string();
    let posted = actix_web::HttpMessage::extensions(req)
        .get::<crate::search::PostedSearch>()
        .map(|posted| posted.0.clone());
    // Relative to the FHIR base (`/fhir` and `/fhir/` are the base itself).
    let path = req.path();
    let path = path
        .strip_prefix("/fhir")
        .unwrap_or(path)
        .trim_start_matches('/');
    let target = match posted.as_deref().unwrap_or(req.query_string()) {
        "" => path.to_string(),
        q => format!("{path}?{q}"),
    };
    let status = error.status().as_u16();
    let message = error.to_string();
    let recorded = blocking(move || {
        gate.audit_failure(
            who.as_ref(),
            &request_id,
            address,
            &method,
            &target,
            status,
            &message,
        )
    })
    .await;
    match recorded {
        Ok(()) => error.respond(format, pretty),
        Err(audit_error) => audit_error.respond(format, pretty),
    }
}

/// The header marking a response served under break-glass (CONSENT.md, API.md).
pub(crate) const BREAK_GLASS_HEADER: &str = "x-break-glass";

/// Marks a response served under break-glass: the client (and whoever displays its data)
/// must be able to tell data shown in an emergency beyond the patient's consent from data
/// consent shares. Header only: a read's body stays the resource.
pub(crate) fn mark_break_glass(response: &mut HttpResponse, break_glass: bool) {
    if break_glass {
        response.headers_mut().insert(
            header::HeaderName::from_static(BREAK_GLASS_HEADER),
            header::HeaderValue::from_static("granted"),
        );
    }
}

fn http_date(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// A Binary's content as itself, in its own content type.
fn raw_binary(resource: &StoredResource) -> Result<HttpResponse> {
    let binary = resource.value().map_err(ApiError::Repo)?;
    let content_type = binary
        .get("contentType")
        .and_then(Value::as_str)
        .unwrap_or("application/octet-stream");
    let data = match binary.get("data").and_then(Value::as_str) {
        Some(text) => renkei_fhir::decode_base64(text).ok_or_else(|| {
            // Validated when stored: a stored body that does not decode is a server fault.
            tracing::error!(binary = %resource.id, "stored Binary data is not base64");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                format!(
                    "the stored content of Binary/{} cannot be decoded",
                    resource.id
                ),
            )
        })?,
        None => Vec::new(),
    };
    // Only a well-formed media type goes into the header; the content is never interpreted
    // by the browser as anything else, nor run as a page of this origin.
    let well_formed = content_type.is_ascii()
        && !content_type.chars().any(|c| c.is_ascii_control())
        && crate::format::essence(content_type)
            .split_once('/')
            .is_some_and(|(kind, sub)| {
                !kind.is_empty() && !sub.is_empty() && !kind.contains(' ') && !sub.contains(' ')
            });
    let content_type = if well_formed {
        content_type
    } else {
        "application/octet-stream"
    };
    let mut builder = HttpResponse::Ok();
    version_headers(&mut builder, resource);
    Ok(builder
        .content_type(content_type)
        .insert_header((header::VARY, "Accept"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Content-Security-Policy", "sandbox"))
        .body(data))
}

/// The `X-Security-Context` of a Binary sent as content: the record whose access rules it
/// follows (http.html#binary). Required here: a Binary without one is shared directory data,
/// which a patient's document uploaded as content must not silently become.
fn security_context(req: &HttpRequest) -> Result<String> {
    let value = req
        .headers()
        .get("x-security-context")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    let valid = value.split_once('/').is_some_and(|(res_type, id)| {
        renkei_fhir::is_resource_type(res_type) && renkei_repository::is_valid_id(id)
    });
    if valid {
        return Ok(value.to_string());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "required",
        "a Binary sent as content needs an X-Security-Context header naming the record it belongs to (Patient/123, DocumentReference/9, …); without one it would be shared with every member",
    ))
}

/// A create or update of a Binary sent as its own content (`Content-Type: application/pdf`),
/// as the Binary resource that holds it.
fn binary_from_content(content_type: &str, bytes: &[u8], id: Option<&str>) -> Value {
    use base64::Engine as _;
    let mut binary = json!({
        "resourceType": "Binary",
        "contentType": content_type,
        "data": base64::engine::general_purpose::STANDARD.encode(bytes),
    });
    if let Some(id) = id {
        binary["id"] = json!(id);
    }
    binary
}

fn version_headers(builder: &mut HttpResponseBuilder, resource: &StoredResource) {
    // `Date` from the clock now: actix's own is refreshed only every few hundred
    // milliseconds, so it could precede a `Last-Modified` just written, which RFC 9110
    // §8.8.2.1 forbids.
    let now_ms = chrono::Utc::now()
        .timestamp_millis()
        .max(resource.last_updated);
    builder
        .insert_header((header::ETAG, format!("W/\"{}\"", resource.version)))
        .insert_header((header::LAST_MODIFIED, http_date(resource.last_updated)))
        .insert_header((header::DATE, http_date(now_ms)));
}

fn location(ctx: &RequestCtx, resource: &StoredResource) -> String {
    format!(
        "{}/{}/{}/_history/{}",
        ctx.base, resource.res_type, resource.id, resource.version
    )
}

/// Renders a resource for read/vread, applying `_summary` and `_elements`.
fn render_resource(
    ctx: &RequestCtx,
    mut builder: HttpResponseBuilder,
    resource: &StoredResource,
) -> Result<HttpResponse> {
    version_headers(&mut builder, resource);
    let shape = requested_shape(ctx)?;
    if shape.is_whole() {
        return Ok(render_stored(
            builder,
            &resource.body,
            ctx.format,
            ctx.pretty,
        ));
    }
    let value = shape.apply(resource.value().map_err(ApiError::from)?);
    Ok(render_value(builder, &value, ctx.format, ctx.pretty))
}

/// The `_summary` and `_elements` a request for one resource (a read, the
/// CapabilityStatement) asks for.
fn requested_shape(ctx: &RequestCtx) -> Result<renkei_repository::ReadShape> {
    Ok(renkei_repository::ReadShape::parse(&ctx.params)?)
}

/// Whether `If-None-Match` / `If-Modified-Since` make a read answer 304.
fn not_modified(req: &HttpRequest, resource: &StoredResource) -> bool {
    if let Some(tags) = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        return tags.split(',').any(|tag| {
            tag.trim() == "*" || renkei_repository::parse_etag(tag) == Some(resource.version)
        });
    }
    if let Some(since) = req
        .headers()
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        let since_secs = since
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let modified_secs = u64::try_from(resource.last_updated / 1000).unwrap_or(0);
        return modified_secs <= since_secs;
    }
    false
}

/// 304 with the version's `ETag` and `Last-Modified` (RFC 9110 §15.4.5: a 304 carries the
/// validators a 200 would have).
fn not_modified_answer(resource: &StoredResource) -> HttpResponse {
    let mut builder = HttpResponse::NotModified();
    version_headers(&mut builder, resource);
    builder.finish()
}

/// The context of a read or vread: a Binary may be asked for in its own content type
/// (http.html#binary), any version of it alike.
/// A request it cannot read is refused, and recorded, as any other.
async fn read_ctx(
    req: &HttpRequest,
    res_type: &str,
) -> std::result::Result<RequestCtx, HttpResponse> {
    let built = match res_type {
        "Binary" => RequestCtx::for_binary_read(req),
        _ => RequestCtx::new(req),
    };
    match built {
        Ok(ctx) => Ok(ctx),
        Err((error, format)) => Err(refuse(req, error, format).await),
    }
}

/// A read's or vread's answer: 304 when the client's copy is current, the Binary's own
/// content when asked for, else the resource.
fn read_answer(
    req: &HttpRequest,
    ctx: &RequestCtx,
    resource: &StoredResource,
) -> Result<HttpResponse> {
    if not_modified(req, resource) {
        Ok(not_modified_answer(resource))
    } else if ctx.raw_binary {
        raw_binary(resource)
    } else {
        render_resource(ctx, HttpResponse::Ok(), resource)
    }
}

pub async fn read(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (res_type, id) = path.into_inner();
    let ctx = match read_ctx(&req, &res_type).await {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let result = async {
        check_type(&res_type)?;
        let who = authenticate(&req, &state).await?;
        let break_glass = who.principal.break_glass;
        let gate = state.gate.clone();
        let resource = blocking(move || gate.read(&who, &res_type, &id)).await?;
        let mut response = read_answer(&req, &ctx, &resource)?;
        mark_break_glass(&mut response, break_glass);
        Ok(response)
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

pub async fn vread(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (res_type, id, version) = path.into_inner();
    let ctx = match read_ctx(&req, &res_type).await {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let result = async {
        check_type(&res_type)?;
        let who = authenticate(&req, &state).await?;
        let break_glass = who.principal.break_glass;
        let gate = state.gate.clone();
        let resource = blocking(move || gate.vread(&who, &res_type, &id, &version)).await?;
        let mut response = read_answer(&req, &ctx, &resource)?;
        mark_break_glass(&mut response, break_glass);
        Ok(response)
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

/// Answers a successful write per the client's `Prefer: return=` choice.
fn write_response(
    req: &HttpRequest,
    ctx: &RequestCtx,
    outcome: &WriteOutcome,
) -> Result<HttpResponse> {
    let mut builder = if outcome.created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    version_headers(&mut builder, &outcome.resource);
    let loc = location(ctx, &outcome.resource);
    builder.insert_header((header::CONTENT_LOCATION, loc.clone()));
    if outcome.created {
        builder.insert_header((header::LOCATION, loc));
    }
    Ok(match return_preference(req) {
        ReturnPreference::Minimal => builder.finish(),
        ReturnPreference::OperationOutcome => {
            let text = if outcome.existing {
                "a resource matching If-None-Exist already exists; nothing was stored"
            } else if outcome.created {
                "created"
            } else {
                "updated"
            };
            render_value(builder, &outcome_info(text), ctx.format, ctx.pretty)
        }
        ReturnPreference::Representation => {
            render_stored(builder, &outcome.resource.body, ctx.format, ctx.pretty)
        }
    })
}

fn outcome_info(text: &str) -> Value {
    outcome("information", "informational", text)
}

async fn resource_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Value> {
    body_parsed_by(req, payload, state, parse_body).await
}

async fn body_parsed_by(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    parse: fn(&[u8], Format) -> Result<Value>,
) -> Result<Value> {
    let kind = body_kind(req.headers())?;
    let BodyKind::Fhir(format) = kind else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "JSON Patch bodies are accepted only by PATCH",
        ));
    };
    let bytes = read_body(req, payload, state.max_body_bytes).await?;
    // Parsing and validation are CPU work; keep them off the async workers.
    web::block(move || parse(&bytes, format))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "shutting down",
            )
        })?
}

/// The body of a create or update of `res_type`: a FHIR resource, or for a Binary also its
/// content sent as itself (http.html#binary).
async fn resource_or_binary_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    res_type: &str,
    id: Option<&str>,
) -> Result<Value> {
    if res_type == "Binary" {
        if let Some(content_type) = crate::format::native_content_type(req.headers()) {
            let context = security_context(req)?;
            let bytes = read_body(req, payload, state.max_body_bytes).await?;
            let mut binary = binary_from_content(&content_type, &bytes, id);
            binary["securityContext"] = json!({"reference": context});
            return Ok(binary);
        }
    }
    resource_body(req, payload, state).await
}

pub async fn create(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let res_type = path.into_inner();
    let result = async {
        check_type(&res_type)?;
        let who = authenticate(&req, &state).await?;
        let resource = resource_or_binary_body(&req, payload, &state, &res_type, None).await?;
        let criteria = match req.headers().get("if-none-exist") {
            Some(value) => {
                // Criteria that cannot be read must not turn the conditional create into an
                // unconditional one, nor search for U+FFFD in place of what was sent.
                let query = value.to_str().map_err(|_| {
                    ApiError::bad_request(
                        "the If-None-Exist header is malformed: it is not URL-encoded ASCII text",
                    )
                })?;
                crate::request::check_url_encoded("If-None-Exist", query)?;
                // Present but empty is criteria left out by mistake, not an unconditional
                // create the client did not ask for.
                if query.trim().is_empty() {
                    return Err(ApiError::bad_request(
                        "the If-None-Exist header is empty: it takes search criteria \
                         (identifier=system|value); leave the header out to create unconditionally",
                    ));
                }
                Some(Criteria::parse_if_none_exist(
                    &res_type,
                    &crate::search::localize_query(&ctx, query),
                )?)
            }
            None => None,
        };
        let gate = state.gate.clone();
        let outcome = blocking(move || gate.create(&who, &res_type, resource, criteria)).await?;
        write_response(&req, &ctx, &outcome)
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

pub async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let (res_type, id) = path.into_inner();
    let result = async {
        check_type(&res_type)?;
        let who = authenticate(&req, &state).await?;
        let expected = if_match(&req)?;
        let resource = resource_or_binary_body(&req, payload, &state, &res_type, Some(&id)).await?;
        let gate = state.gate.clone();
        let outcome =
            blocking(move || gate.update(&who, &res_type, &id, resource, expected)).await?;
        write_response(&req, &ctx, &outcome)
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

fn criteria_from_query(res_type: &str, ctx: &RequestCtx, req: &HttpRequest) -> Result<Criteria> {
    if req.query_string().is_empty() {
        // The method is allowed here, with criteria: the request is incomplete, not the path.
        return Err(ApiError::bad_request(format!(
            "{} on the {res_type} type needs search criteria (conditional interaction)",
            req.method()
        )));
    }
    let query: String = req
        .query_string()
        .split('&')
        .filter(|p| !p.starts_with("_format=") && !p.starts_with("_pretty="))
        .collect::<Vec<_>>()
        .join("&");
    Ok(Criteria::parse(
        res_type,
        &crate::search::localize_query(ctx, &query),
    )?)
}

pub async fn conditional_update(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let res_type = path.into_inner();
    let result = async {
        check_type(&res_type)?;
        let who = authenticate(&req, &state).await?;
        let criteria = criteria_from_query(&res_type, &ctx, &req)?;
        let expected = if_match(&req)?;
        let resource = resource_body(&req, payload, &state).await?;
        let gate = state.gate.clone();
        let outcome =
            blocking(move || gate.conditional_update(&who, criteria, resource, expected)).await?;
        write_response(&req, &ctx, &outcome)
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

async fn patch_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<PatchBody> {
    let kind = body_kind(req.headers())?;
    let bytes = read_body(req, payload, state.max_body_bytes).await?;
    match kind {
        BodyKind::JsonPatch => {
            let ops: Value = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::bad_request(format!("the JSON Patch is not valid JSON: {e}"))
            })?;
            if !ops.is_array() {
                return Err(ApiError::bad_request(
                    "a JSON Patch document is an array of operations",
                ));
            }
            Ok(PatchBody::JsonPatch(ops))
        }
        BodyKind::Fhir(format) => {
            let params = parse_body(&bytes, format)?;
            if params.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
                return Err(ApiError::bad_request(
                    "a FHIRPath Patch body is a Parameters resource",
                ));
            }
            Ok(PatchBody::FhirPathPatch(params))
        }
    }
}

pub async fn patch(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let (res_type, id) = path.into_inner();
    let result = async {
        check_type(&res_type)?;
        let who = authenticate(&req, &state).await?;
        let expected = if_match(&req)?;
        let body = patch_body(&req, payload, &state).await?;
        let gate = state.gate.clone();
        let outcome =
            blocking(move || gate.patch(&who, &res_type, Some(&id), None, &body, expected)).await?;
        write_response(&req, &ctx, &outcome)
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

pub async fn conditional_patch(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let res_type = path.into_inner();
    let result = async {
        check_type(&res_type)?;
        let who = authenticate(&req, &state).await?;
        let criteria = criteria_from_query(&res_type, &ctx, &req)?;
        let expected = if_match(&req)?;
        let body = patch_body(&req, payload, &state).await?;
        let gate = state.gate.clone();
        let outcome = blocking(move || {
            let res_type = criteria.res_type.clone();
            // Criteria that match nothing are "not found"; under an `If-Match` that is a failed
            // precondition (412), as a patch by id of a missing resource answers.
            gate.patch(&who, &res_type, None, Some(criteria), &body, expected)
                .map_err(|e| match e {
                    renkei_access::AccessError::Repo(e) => renkei_access::AccessError::Repo(
                        renkei_repository::absent_under_if_match(expected, e),
                    ),
                    other => other,
                })
        })
        .await?;
        write_response(&req, &ctx, &outcome)
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

fn delete_response(req: &HttpRequest, ctx: &RequestCtx, outcome: &DeleteOutcome) -> HttpResponse {
    let (text, version) = match outcome {
        DeleteOutcome::Deleted { version, .. } => ("deleted", Some(*version)),
        DeleteOutcome::NothingToDelete => (
            "nothing to delete: the resource does not exist or is already deleted",
            None,
        ),
    };
    let mut builder = match return_preference(req) {
        ReturnPreference::OperationOutcome => HttpResponse::Ok(),
        _ => HttpResponse::NoContent(),
    };
    if let Some(version) = version {
        builder.insert_header((header::ETAG, format!("W/\"{version}\"")));
    }
    match return_preference(req) {
        ReturnPreference::OperationOutcome => {
            render_value(builder, &outcome_info(text), ctx.format, ctx.pretty)
        }
        _ => builder.finish(),
    }
}

pub async fn delete(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let (res_type, id) = path.into_inner();
    let result = async {
        check_type(&res_type)?;
        let expected = if_match(&req)?;
        let who = authenticate(&req, &state).await?;
        let gate = state.gate.clone();
        let outcome = blocking(move || gate.delete(&who, &res_type, &id, expected)).await?;
        Ok(delete_response(&req, &ctx, &outcome))
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

pub async fn conditional_delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let res_type = path.into_inner();
    let result = async {
        check_type(&res_type)?;
        let criteria = criteria_from_query(&res_type, &ctx, &req)?;
        let precondition = if_match(&req)?;
        let who = authenticate(&req, &state).await?;
        let gate = state.gate.clone();
        let outcome =
            blocking(move || gate.conditional_delete(&who, criteria, precondition)).await?;
        Ok(delete_response(&req, &ctx, &outcome))
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

pub async fn bundle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let result = async {
        let who = authenticate(&req, &state).await?;
        let mut bundle =
            body_parsed_by(&req, payload, &state, crate::format::parse_bundle_body).await?;
        crate::search::localize_bundle_criteria(&ctx, &mut bundle);
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(ApiError::bad_request(
                "only a batch or transaction Bundle may be posted to the base URL",
            ));
        }
        // Refused before any entry runs: each entry can answer with a page of resources, so
        // the number of entries bounds the work and the response.
        let entry_count = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if entry_count > state.max_bundle_entries {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-costly",
                format!(
                    "the Bundle has {entry_count} entries; at most {} are accepted \
                     (max_bundle_entries): send them in several Bundles",
                    state.max_bundle_entries
                ),
            ));
        }
        // Only an explicit `return=representation` puts the written resources in the
        // response (the Bundle's default is without them).
        let representation = crate::request::preference(&req, "return")
            .is_some_and(|value| value.eq_ignore_ascii_case("representation"));
        // Under `Prefer: return=OperationOutcome`, each entry's method in request order (the
        // response's order), for the outcomes written after the entries ran.
        let methods: Option<Vec<String>> =
            (return_preference(&req) == ReturnPreference::OperationOutcome).then(|| {
                bundle
                    .get("entry")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|entry| {
                        renkei_repository::entry_method(
                            entry.get("request").unwrap_or(&Value::Null),
                        )
                    })
                    .collect()
            });
        // A batch's searches run as searches sent on their own would (a transaction refuses
        // them); the other entries go to the gate as the Bundle. What fails a whole batch is
        // checked first, naming the client's own entry numbers.
        let is_batch = bundle.get("type").and_then(Value::as_str) == Some("batch");
        let refused = is_batch
            .then(|| renkei_repository::check_entries(&bundle).err())
            .flatten();
        let mut searches = Vec::new();
        if is_batch && refused.is_none() {
            if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
                let mut others = Vec::new();
                for (index, entry) in std::mem::take(entries).into_iter().enumerate() {
                    match crate::search::batch_search(&req, &ctx, &state, &entry) {
                        Some((url, planned)) => searches.push((index, url, planned)),
                        None => others.push(entry),
                    }
                }
                *entries = others;
            }
        }
        let break_glass = who.principal.break_glass;
        let gate = state.gate.clone();
        let request_id = crate::auth::request_id(&req);
        let response_budget = state.max_bundle_response_bytes;
        let (mut response, searched) = blocking(move || {
            if let Some(error) = refused {
                return Err(gate.refuse_batch(&who, error).into());
            }
            // Under break-glass the whole batch, its searches included, is about one patient.
            let plans: Vec<&renkei_search::plan::SearchPlan> = searches
                .iter()
                .filter_map(|(_, _, planned)| planned.as_ref().ok().map(|s| s.plan()))
                .collect();
            gate.check_break_glass_batch(&who, &bundle, &plans)?;
            // The other entries first: a batch refused as a whole runs no search either.
            let response = gate.bundle(&who, &bundle, representation)?;
            // The searches share the response's budget with the entries that ran above: once
            // it is spent, each further search fails on its own without running.
            let spent_by_entries =
                response
                    .get("entry")
                    .and_then(Value::as_array)
                    .is_some_and(|entries| {
                        entries.iter().any(|entry| {
                            entry.pointer("/response/outcome/issue/0/code")
                                == Some(&Value::from("too-costly"))
                        })
                    });
            let mut spent = if searches.is_empty() {
                0
            } else if spent_by_entries {
                response_budget
            } else {
                json_size(&response)
            };
            let mut searched = Vec::new();
            for (index, url, planned) in searches {
                let planned = planned.and_then(|search| {
                    if spent < response_budget {
                        Ok(search)
                    } else {
                        Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "too-costly",
                            format!(
                                "the resources of this batch's response exceed {response_budget} \
                                 bytes (max_bundle_response_bytes): this search was not run; \
                                 send it in another request"
                            ),
                        ))
                    }
                });
                let answer = match planned {
                    Ok(search) => search.run(&gate, &who).map(|page| {
                        spent = spent.saturating_add(page_size(&page));
                        (search, page)
                    }),
                    Err(error) => {
                        // Refused before the gate saw it: recorded like a refused search. An
                        // entry whose failure cannot be recorded answers 503 on its own; the
                        // batch's other entries have run.
                        let status = error.status().as_u16();
                        Err(
                            match gate.audit_failure(
                                Some(&who),
                                &request_id,
                                None,
                                "GET",
                                &url,
                                status,
                                &error.to_string(),
                            ) {
                                Ok(()) => error,
                                Err(unavailable) => unavailable.into(),
                            },
                        )
                    }
                };
                searched.push((index, answer));
            }
            Ok::<_, ApiError>((response, searched))
        })
        .await?;
        if !searched.is_empty() {
            if response.get("entry").is_none() {
                response["entry"] = Value::Array(Vec::new());
            }
            if let Some(entries) = response.get_mut("entry").and_then(Value::as_array_mut) {
                // In request order: each search goes back where it stood.
                for (index, answer) in searched {
                    let entry = match answer {
                        Ok((search, page)) => search.response_entry(&ctx, &page, break_glass),
                        Err(error) => failed_entry(&error),
                    };
                    entries.insert(index.min(entries.len()), entry);
                }
            }
        }
        if let Some(methods) = &methods {
            write_entry_outcomes(&mut response, methods);
        }
        absolute_full_urls(&ctx, &mut response);
        let mut rendered = render_value(HttpResponse::Ok(), &response, ctx.format, ctx.pretty);
        mark_break_glass(&mut rendered, break_glass);
        Ok(rendered)
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

/// `Prefer: return=OperationOutcome` on a batch or transaction: each write entry that
/// succeeded answers an OperationOutcome in `response.outcome` (http.html#ops), saying what
/// was done, as the write sent on its own would. Reads and searches keep their resource;
/// failed entries already carry theirs.
fn write_entry_outcomes(response: &mut Value, methods: &[String]) {
    let Some(entries) = response.get_mut("entry").and_then(Value::as_array_mut) else {
        return;
    };
    for (entry, method) in entries.iter_mut().zip(methods) {
        if entry.get("resource").is_some() || entry.pointer("/response/outcome").is_some() {
            continue;
        }
        let Some(status) = entry.pointer("/response/status").and_then(Value::as_str) else {
            continue;
        };
        let deleted = entry.pointer("/response/etag").is_some();
        let text = match (method.as_str(), status.split(' ').next()) {
            (_, Some("201")) => "created",
            ("POST", Some("200")) => {
                "a resource matching ifNoneExist already exists; nothing was stored"
            }
            ("PUT" | "PATCH", Some("200")) => "updated",
            ("DELETE", Some("204")) if deleted => "deleted",
            ("DELETE", Some("204")) => {
                "nothing to delete: the resource does not exist or is already deleted"
            }
            _ => continue,
        };
        let text = match entry.pointer("/response/location").and_then(Value::as_str) {
            Some(location) => format!("{text}: {location}"),
            None => text.to_string(),
        };
        if let Some(answer) = entry.get_mut("response") {
            answer["outcome"] = outcome_info(&text);
        }
    }
}

/// The bytes `value` takes as JSON, counted without building the text.
fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, and a Value always serializes.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// The bytes of the resources a search page carries, matches and included.
fn page_size(page: &renkei_store::SearchPage) -> usize {
    page.matches
        .iter()
        .chain(&page.included)
        .filter_map(|row| row.body.as_ref())
        .map(String::len)
        .fold(0, usize::saturating_add)
}

/// The response entry of a Bundle entry that failed: its status and OperationOutcome.
fn failed_entry(error: &ApiError) -> Value {
    let status = error.status();
    json!({
        "response": {
            "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or_default()),
            "outcome": error.outcome(),
        },
    })
}

/// A response entry's `fullUrl` is the resource's absolute URL on this server.
fn absolute_full_urls(ctx: &RequestCtx, response: &mut Value) {
    let Some(entries) = response.get_mut("entry").and_then(Value::as_array_mut) else {
        return;
    };
    for full_url in entries.iter_mut().filter_map(|e| e.get_mut("fullUrl")) {
        if let Value::String(url) = full_url {
            if !url.contains(':') {
                *url = format!("{}/{url}", ctx.base);
            }
        }
    }
}

/// The parameters of the history interaction (http.html#history), `_list` aside.
const HISTORY_PARAMS: [&str; 6] = [
    "_since",
    "_at",
    "_count",
    "_page_token",
    "_format",
    "_pretty",
];

/// History at instance, type or system level.
async fn history(
    req: HttpRequest,
    state: web::Data<AppState>,
    scope: HistoryScope,
    self_path: String,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let result = async {
        let who = authenticate(&req, &state).await?;
        // Refused rather than ignored: history has no search result parameters, and an
        // ignored `_list` or `_elements` would answer more than was asked.
        if let Some((name, _)) = ctx
            .params
            .iter()
            .find(|(name, _)| !HISTORY_PARAMS.contains(&name.as_str()))
        {
            return Err(ApiError::bad_request(format!(
                "history takes {}; not '{name}'",
                HISTORY_PARAMS.join(", ")
            )));
        }
        let instant = |name: &str| -> Result<Option<i64>> {
            match ctx.param(name) {
                None => Ok(None),
                Some(text) => parse_instant_ms(text).map(Some).ok_or_else(|| {
                    ApiError::bad_request(format!("{name} '{text}' is not a FHIR instant or date"))
                }),
            }
        };
        let since = instant("_since")?;
        // `_at` names a period (a day, a second, …): the versions current at any time in it.
        let at = match ctx.param("_at") {
            None => None,
            Some(text) => {
                let range = renkei_search::date::parse_range(text).ok_or_else(|| {
                    ApiError::bad_request(format!("_at '{text}' is not a FHIR instant or date"))
                })?;
                Some((range.low, range.high))
            }
        };
        let count = match ctx.param("_count") {
            None => state.default_page_size,
            Some(text) => text
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("_count '{text}' is not a number")))?
                .min(state.max_page_size),
        };
        let after = match ctx.param("_page_token") {
            None => None,
            Some(token) => Some(decode_cursor(token).ok_or_else(|| {
                ApiError::bad_request("_page_token is not a token this server issued")
            })?),
        };
        let scope_type = match &scope {
            HistoryScope::Instance { res_type, .. } | HistoryScope::Type(res_type) => {
                check_type(res_type)?;
                Some(res_type.clone())
            }
            HistoryScope::System => None,
        };
        let request = HistoryRequest {
            scope,
            since,
            at,
            after,
            count,
            visibility: renkei_store::Visibility::Nothing,
        };
        let break_glass = who.principal.break_glass;
        let gate = state.gate.clone();
        let page = blocking(move || gate.history(&who, request, scope_type.as_deref())).await?;
        let mut query: Vec<String> = Vec::new();
        for name in ["_since", "_at"] {
            if let Some(value) = ctx.param(name) {
                query.push(format!("{name}={}", encode(value)));
            }
        }
        query.push(format!("_count={count}"));
        query.extend(crate::search::presentation_query(&ctx));
        let first_url = format!("{}/{self_path}?{}", ctx.base, query.join("&"));
        // `self` is this page, the token that asked for it included.
        let self_url = match ctx.param("_page_token") {
            Some(token) => format!("{first_url}&_page_token={}", encode(token)),
            None => first_url.clone(),
        };
        let mut links = vec![
            json!({"relation": "self", "url": self_url}),
            json!({"relation": "first", "url": first_url}),
        ];
        if let Some(next) = page.next {
            links.push(json!({
                "relation": "next",
                "url": format!("{first_url}&_page_token={}", encode_cursor(next)),
            }));
        }
        let entries: Vec<Value> = page
            .rows
            .iter()
            .map(|row| {
                let mut entry = serde_json::Map::new();
                entry.insert(
                    "fullUrl".into(),
                    json!(format!("{}/{}/{}", ctx.base, row.res_type, row.res_id)),
                );
                if let Some(body) = row.body.as_deref().filter(|_| !row.deleted) {
                    if let Ok(value) = serde_json::from_str::<Value>(body) {
                        entry.insert("resource".into(), value);
                    }
                }
                let url = if row.method == "POST" {
                    row.res_type.clone()
                } else {
                    format!("{}/{}", row.res_type, row.res_id)
                };
                entry.insert("request".into(), json!({"method": row.method, "url": url}));
                let status = match (row.method.as_str(), row.created) {
                    ("DELETE", _) => "204 No Content",
                    (_, true) => "201 Created",
                    _ => "200 OK",
                };
                entry.insert(
                    "response".into(),
                    json!({
                        "status": status,
                        "etag": format!("W/\"{}\"", row.version),
                        "lastModified": format_instant(row.last_updated),
                    }),
                );
                Value::Object(entry)
            })
            .collect();
        let bundle = crate::format::response_bundle("history", None, links, entries);
        let mut response = render_value(HttpResponse::Ok(), &bundle, ctx.format, ctx.pretty);
        mark_break_glass(&mut response, break_glass);
        Ok(response)
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

pub async fn history_instance(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (res_type, res_id) = path.into_inner();
    let self_path = format!("{res_type}/{res_id}/_history");
    history(
        req,
        state,
        HistoryScope::Instance { res_type, res_id },
        self_path,
    )
    .await
}

pub async fn history_type(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let res_type = path.into_inner();
    let self_path = format!("{res_type}/_history");
    history(req, state, HistoryScope::Type(res_type), self_path).await
}

pub async fn history_system(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    history(req, state, HistoryScope::System, "_history".into()).await
}

fn encode_cursor((updated, rid, version): (i64, i64, i64)) -> String {
    format!("{updated}-{rid}-{version}")
}

fn decode_cursor(token: &str) -> Option<(i64, i64, i64)> {
    let mut parts = token.split('-').map(|p| p.parse::<i64>().ok());
    let cursor = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(cursor)
}

/// Percent-encodes a query value.
pub use renkei_repository::percent_encode as encode;

/// `a=1&b=2`, each name and value percent-encoded.
pub(crate) fn query_string<'p>(params: impl Iterator<Item = &'p (String, String)>) -> String {
    params
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `GET /metadata{?mode=full|normative|terminology}` (http.html#capabilities), with
/// `_summary`/`_elements` as on a read.
pub async fn metadata(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let result = (|| {
        match ctx.param("mode") {
            // `normative` would leave out what is not normative; everything stated here
            // is, as far as this server is concerned, so the full statement answers both.
            None | Some("full" | "normative") => {}
            Some("terminology") => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    "mode=terminology (a TerminologyCapabilities resource) is not supported: this server has no terminology service",
                ))
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "mode '{other}' is not full, normative or terminology"
                )))
            }
        }
        let shape = requested_shape(&ctx)?;
        let statement = crate::capability::capability_statement(&ctx.base, &state);
        let statement = shape.apply(statement);
        // The statement changes only with the server (its start time is its `date`): a
        // client revalidates its copy with the ETag instead of fetching it again.
        let tag = statement_etag(&statement, ctx.format);
        let current = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| {
                // Weak comparison (RFC 9110 §13.1.2): `W/` does not matter.
                let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
                tags.split(',')
                    .any(|t| t.trim() == "*" || opaque(t) == opaque(&tag))
            });
        if current {
            return Ok(HttpResponse::NotModified()
                .insert_header((header::ETAG, tag))
                .finish());
        }
        let mut builder = HttpResponse::Ok();
        builder.insert_header((header::ETAG, tag));
        Ok(render_value(builder, &statement, ctx.format, ctx.pretty))
    })();
    finish(&req, &state, &ctx, result).await
}

/// A weak ETag of a CapabilityStatement as rendered in `format`.
fn statement_etag(statement: &Value, format: Format) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    statement.to_string().hash(&mut hasher);
    format!("{format:?}").hash(&mut hasher);
    format!("W/\"{:016x}\"", hasher.finish())
}

/// Any path or method we do not serve.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let format = crate::request::error_format(&req);
    let error = ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!(
            "{} {} is not a FHIR endpoint of this server",
            req.method(),
            req.path()
        ),
    );
    refuse(&req, error, format).await
}

pub async fn method_not_allowed(req: HttpRequest, allow: &'static str) -> HttpResponse {
    let message = format!(
        "{} is not allowed on {}; allowed: {allow}",
        req.method(),
        req.path()
    );
    refuse_method(&req, message, allow).await
}

/// 405 naming the methods the path takes (RFC 9110 §15.5.6), recorded like any refusal. An
/// `OPTIONS` request is answered instead: 204 with the same `Allow` (RFC 9110 §9.3.7); it
/// reaches no data, so it needs no token and leaves no AuditEvent.
pub(crate) async fn refuse_method(
    req: &HttpRequest,
    message: String,
    allow: &'static str,
) -> HttpResponse {
    let allowed = match allow {
        "" => "OPTIONS".to_string(),
        methods => format!("{methods}, OPTIONS"),
    };
    if req.method() == actix_web::http::Method::OPTIONS {
        // A path naming no resource type is no endpoint, whatever the method.
        if let Some(Err(error)) = req.match_info().get("type").map(check_type) {
            return refuse(req, error, crate::request::error_format(req)).await;
        }
        return HttpResponse::NoContent()
            .insert_header((actix_web::http::header::ALLOW, allowed))
            .finish();
    }
    let format = crate::request::error_format(req);
    let error = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", message);
    let mut response = refuse(req, error, format).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allowed) {
            response
                .headers_mut()
                .insert(actix_web::http::header::ALLOW, value);
        }
    }
    response
}

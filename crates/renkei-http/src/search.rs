//! Search interactions: type, system and compartment search, `POST [type]/_search`, and
//! `Patient/{id}/$everything`. Parsing is `renkei_search::plan`, execution is SQL in the
//! store; this module turns requests into plans and pages into searchset Bundles.

use crate::auth::authenticate;
use crate::error::ApiError;
use crate::format::{render_bundle, BundleEntry, EntryResource};
use crate::handlers::finish;
use crate::handlers::{blocking, encode, query_string};
use crate::request::{parse_form_strict, parse_query, read_body_or_empty, RequestCtx};
use crate::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use renkei_access::Requester;
use renkei_auth::Action;
use renkei_fhir::SummaryMode;
use renkei_search::plan::{parse, Cursor, Filter, ParseOptions, SearchError, SearchPlan};
use renkei_search::registry;
use renkei_store::{SearchPage, SearchRow, MAX_SORT_KEYS};
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, ApiError>;

/// Whether the client asked for strict handling of unknown parameters
/// (`Prefer: handling=strict`); lenient is the default.
fn strict_handling(req: &HttpRequest) -> bool {
    crate::request::preference(req, "handling").is_some_and(|v| v.eq_ignore_ascii_case("strict"))
}

pub(crate) fn search_error(error: SearchError) -> ApiError {
    match error {
        SearchError::Invalid(message) => ApiError::bad_request(message),
        SearchError::TooCostly(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, "too-costly", message)
        }
        unknown @ SearchError::Unknown(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "not-supported",
            unknown.to_string(),
        ),
    }
}

/// What the request asks for, before the plan is built.
struct SearchRequest {
    types: Vec<String>,
    params: Vec<(String, String)>,
    /// Filters imposed by the URL (compartment), not by parameters.
    scope: Vec<Filter>,
    /// Path of the `self` link after the base, e.g. `Observation` or `Patient/1/Observation`.
    self_path: String,
    /// Parameters of an operation that it does not support (refused under strict handling,
    /// else ignored and reported like unknown search parameters).
    unsupported: Vec<String>,
    /// The types were chosen by the server, not named by the client (`$everything` without
    /// `_type`): the requester's scopes narrow them instead of refusing the whole search.
    narrow_to_scopes: bool,
    /// The parameters as the client sent them (a posted `$everything` is recorded in the
    /// trail as asked, not as rewritten into a search).
    sent: Vec<(String, String)>,
    /// Parameters the server added or rewrote, spelled back as the client wrote them in the
    /// links (`None`: added by the server, left out), so `self` shows only what was asked.
    spelling: Vec<Spelling>,
    /// The only types included rows may have (`$everything` with `_type`); `None`: any.
    types_of_includes: Option<Vec<String>>,
}

/// An applied search parameter and how the links spell it (see [`SearchRequest::spelling`]).
type Spelling = ((String, String), Option<(String, String)>);

pub(crate) fn check_type(res_type: &str) -> Result<()> {
    Ok(renkei_repository::check_type(res_type)?)
}

/// A `_type` value is a parameter, not a path: a name that is no resource type is a bad
/// request (400), where an unknown type in the path is an unknown endpoint (404).
fn check_type_param(res_type: &str) -> Result<()> {
    if renkei_repository::has_rest_endpoint(res_type) {
        return Ok(());
    }
    if renkei_fhir::is_resource_type(res_type) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not-supported",
            format!("_type: {res_type} has no REST endpoint and is never stored or searched"),
        ));
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid",
        format!("_type: '{res_type}' is not a FHIR R4 resource type"),
    ))
}

/// Absolute references to this server are searched as the relative references stored.
fn localize(ctx: &RequestCtx, params: Vec<(String, String)>) -> Vec<(String, String)> {
    let own = format!("{}/", ctx.base);
    params
        .into_iter()
        .map(|(k, v)| (k, localize_alternatives(&v, &[&own])))
        .collect()
}

/// Each comma-separated alternative of a value without the leading base it starts with.
pub(crate) fn localize_alternatives(value: &str, bases: &[&str]) -> String {
    value
        .split(',')
        .map(|alt| {
            bases
                .iter()
                .find_map(|base| {
                    alt.get(..base.len())
                        .filter(|head| head.eq_ignore_ascii_case(base))
                        .map(|_| &alt[base.len()..])
                })
                .unwrap_or(alt)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// [`localize`] for criteria still in their URL encoding (conditional interactions, Bundle
/// entries): the base may be written as is or percent-encoded.
pub(crate) fn localize_query(ctx: &RequestCtx, query: &str) -> String {
    let own = format!("{}/", ctx.base);
    let encoded = own.replace(':', "%3A").replace('/', "%2F");
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => {
                format!("{name}={}", localize_alternatives(value, &[&own, &encoded]))
            }
            None => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A Bundle's conditional entries (`request.url` criteria, `ifNoneExist`) with absolute
/// references to this server made relative, as a search would take them.
pub(crate) fn localize_bundle_criteria(ctx: &RequestCtx, bundle: &mut Value) {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return;
    };
    for request in entries
        .iter_mut()
        .filter_map(|entry| entry.get_mut("request"))
    {
        if let Some(Value::String(url)) = request.get_mut("url") {
            if let Some((path, query)) = url.split_once('?') {
                *url = format!("{path}?{}", localize_query(ctx, query));
            }
        }
        if let Some(Value::String(criteria)) = request.get_mut("ifNoneExist") {
            *criteria = match renkei_repository::Criteria::split_if_none_exist(criteria) {
                (Some(named), query) => format!("{named}?{}", localize_query(ctx, query)),
                (None, query) => localize_query(ctx, query),
            };
        }
    }
}

/// How this request's searches are parsed: the server's page sizes and the client's handling.
fn parse_options(req: &HttpRequest, state: &AppState) -> ParseOptions {
    ParseOptions {
        default_count: state.default_page_size,
        max_count: state.max_page_size,
        strict: strict_handling(req),
    }
}

async fn run(
    req: &HttpRequest,
    ctx: &RequestCtx,
    state: &AppState,
    mut request: SearchRequest,
) -> Result<HttpResponse> {
    let who = authenticate(req, state).await?;
    let options = parse_options(req, state);
    let path = request.self_path.split('?').next().unwrap_or_default();
    // The query as the client sent it. A `POST …/_search` puts (some of) its parameters in
    // the form body, so the trail records the URL's and the body's parameters together,
    // as searched, rather than the URL's alone.
    let raw_query = if req.method() == actix_web::http::Method::POST {
        format!("{path}?{}", query_string(request.sent.iter()))
    } else {
        format!("{path}?{}", req.query_string())
    };
    request.params = localize(ctx, std::mem::take(&mut request.params));
    let mut plan = plan_for(&request, &options)?;
    if request.narrow_to_scopes {
        narrow_to_scopes(&mut plan, &who);
    }
    // `$everything?_type=…` returns those types only: its implied `_include=*` too.
    if let Some(types) = &request.types_of_includes {
        plan.included_types = Some(types.clone());
    }
    let break_glass = who.principal.break_glass;
    let gate = state.gate.clone();
    let query_plan = plan.clone();
    let page = blocking(move || gate.search(&who, &query_plan, &raw_query)).await?;
    let (bundle, entries) = searchset(
        ctx,
        &plan,
        &page,
        (&request.self_path, &request.spelling),
        break_glass,
    );
    let mut response = render_bundle(HttpResponse::Ok(), bundle, entries, ctx.format, ctx.pretty);
    crate::handlers::mark_break_glass(&mut response, break_glass);
    Ok(response)
}

/// Leaves out of a search whose types the server chose the types the requester's scopes do
/// not let it search (SMART scopes narrow `$everything`, as they narrow `_include`). When no
/// type would remain, the plan is left whole, so that the gate refuses it with 403: an empty
/// type list would mean every type.
fn narrow_to_scopes(plan: &mut SearchPlan, who: &Requester) {
    let may_search = |res_type: &str| who.require(res_type, Action::Search).is_ok();
    if !plan.types.iter().any(|t| may_search(t)) {
        return;
    }
    plan.types.retain(|t| may_search(t));
    for filter in &mut plan.filters {
        if let Filter::Compartment {
            members,
            include_self,
            ..
        } = filter
        {
            members.retain(|(member_type, _)| may_search(member_type));
            *include_self &= may_search("Patient");
        }
    }
}

/// The search plan of a request: its parameters parsed, plus the filters its URL imposes.
fn plan_for(request: &SearchRequest, options: &ParseOptions) -> Result<SearchPlan> {
    let mut plan = parse(&request.types, &request.params, options).map_err(search_error)?;
    if plan.sort.len() > MAX_SORT_KEYS {
        return Err(ApiError::bad_request(format!(
            "_sort takes at most {MAX_SORT_KEYS} keys"
        )));
    }
    if !request.unsupported.is_empty() {
        if options.strict {
            return Err(search_error(SearchError::Unknown(
                request.unsupported.clone(),
            )));
        }
        plan.ignored.extend(request.unsupported.iter().cloned());
    }
    plan.filters.extend(request.scope.iter().cloned());
    Ok(plan)
}

/// The search a URL relative to the FHIR base names: `Type?…`, `?_type=…` (the whole
/// system), `Patient/{id}/Type?…` or `Patient/{id}/$everything?…`; `None` for any other form
/// (a read, a version, history, `metadata`).
fn search_request_for(path: &str, params: Vec<(String, String)>) -> Option<Result<SearchRequest>> {
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        [""] => Some(system_request(params)),
        ["_history" | "metadata"] => None,
        [res_type] => Some(check_type(res_type).map(|()| type_request(res_type, params))),
        ["Patient", id, "$everything"] => Some(everything_request(id, &params)),
        ["Patient", id, target] if !target.starts_with('_') => {
            Some(compartment_request(id, target, params))
        }
        _ => None,
    }
}

/// The plan the server would run for a search URL relative to the FHIR base (for `renkei
/// explain`; the forms of [`search_request_for`]). Strict: an unknown parameter is an error
/// rather than silently left out of the plan.
pub fn explain_plan(path_and_query: &str, options: &ParseOptions) -> Result<SearchPlan> {
    let (path, query) = path_and_query
        .trim_start_matches('/')
        .split_once('?')
        .unwrap_or((path_and_query.trim_start_matches('/'), ""));
    let request = search_request_for(path, parse_query(query)).unwrap_or_else(|| {
        Err(ApiError::bad_request(format!(
            "expected Type?query, Patient/ID/Type?query or Patient/ID/$everything, not '{path}'"
        )))
    })?;
    refuse_audit_trail(
        &request,
        "by this plan (it is read from the trail's own tables)",
    )?;
    plan_for(&request, options)
}

/// The trail is searched at `[base]/AuditEvent` under its own role rules, not as a stored
/// resource type (a search over several types simply finds no AuditEvent).
fn refuse_audit_trail(search: &SearchRequest, not_how: &str) -> Result<()> {
    if search.types == ["AuditEvent"] {
        return Err(audit_trail_elsewhere(not_how));
    }
    Ok(())
}

fn audit_trail_elsewhere(not_how: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "not-supported",
        format!("AuditEvent is searched at [base]/AuditEvent on its own, not {not_how}"),
    )
}

/// A search inside a batch Bundle, planned as the same search sent on its own would be.
pub(crate) struct BatchSearch {
    plan: SearchPlan,
    /// See [`SearchRequest::narrow_to_scopes`].
    narrow_to_scopes: bool,
    /// The entry's URL relative to the base, as the search's AuditEvent records it.
    url: String,
    self_path: String,
    spelling: Vec<Spelling>,
}

/// The search a batch entry asks for (`GET` of a search URL; its criteria already
/// localized), or `None` when the entry is no search.
pub(crate) fn batch_search(
    req: &HttpRequest,
    ctx: &RequestCtx,
    state: &AppState,
    entry: &Value,
) -> Option<(String, Result<BatchSearch>)> {
    let request = entry.get("request")?;
    // The method's case as the repository takes it (it upper-cases every entry's method).
    let method = request.get("method").and_then(Value::as_str)?;
    if !method.eq_ignore_ascii_case("GET") {
        return None;
    }
    let url = request.get("url").and_then(Value::as_str)?;
    let relative = renkei_repository::relative_entry_url(url);
    let (path, query) = relative.split_once('?').unwrap_or((relative, ""));
    let options = parse_options(req, state);
    // Decoded as strictly as the same search's query string sent on its own (a `%00`, an
    // escape that is no UTF-8: 400 in its entry).
    let params = match crate::request::parse_query_strict(query) {
        Ok(params) => params,
        Err(error) => {
            // Only a search entry answers here; anything else goes on as an entry.
            let _is_a_search = search_request_for(path, Vec::new())?;
            return Some((relative.to_string(), Err(error)));
        }
    };
    let planned = search_request_for(path, params)?.and_then(|mut search| {
        refuse_audit_trail(&search, "inside a Bundle")?;
        search.params = localize(ctx, std::mem::take(&mut search.params));
        Ok(BatchSearch {
            plan: plan_for(&search, &options)?,
            narrow_to_scopes: search.narrow_to_scopes,
            url: relative.to_string(),
            self_path: search.self_path,
            spelling: search.spelling,
        })
    });
    Some((relative.to_string(), planned))
}

impl BatchSearch {
    /// The search as planned.
    pub(crate) fn plan(&self) -> &SearchPlan {
        &self.plan
    }

    /// Runs the search through the gate (consent in its query, its own AuditEvent).
    pub(crate) fn run(
        &self,
        gate: &renkei_access::Gate,
        who: &renkei_access::Requester,
    ) -> Result<SearchPage> {
        if self.narrow_to_scopes {
            let mut plan = self.plan.clone();
            narrow_to_scopes(&mut plan, who);
            return Ok(gate.search(who, &plan, &self.url)?);
        }
        Ok(gate.search(who, &self.plan, &self.url)?)
    }

    /// The batch-response entry of the search's page: the searchset Bundle as its resource.
    pub(crate) fn response_entry(
        &self,
        ctx: &RequestCtx,
        page: &SearchPage,
        break_glass: bool,
    ) -> Value {
        let (bundle, entries) = searchset(
            ctx,
            &self.plan,
            page,
            (&self.self_path, &self.spelling),
            break_glass,
        );
        json!({
            "resource": crate::format::bundle_value(bundle, entries),
            "response": {"status": "200 OK"},
        })
    }
}

fn summary_mode(plan: &SearchPlan) -> Option<SummaryMode> {
    match plan.summary.as_deref() {
        Some("true") => Some(SummaryMode::True),
        Some("text") => Some(SummaryMode::Text),
        Some("data") => Some(SummaryMode::Data),
        _ => None,
    }
}

fn entry<'a>(
    ctx: &RequestCtx,
    plan: &SearchPlan,
    row: &'a SearchRow,
    mode: &'static str,
) -> Option<BundleEntry<'a>> {
    let stored = row.body.as_deref()?;
    // `_summary` and `_elements` shape the matches only (search.html, _elements): included
    // resources come whole, so a client never mistakes a subsetted include for the record.
    let shaped = mode == "match";
    let summary = summary_mode(plan).filter(|_| shaped);
    let elements_apply = shaped && !plan.elements.is_empty();
    let resource = if summary.is_none() && !elements_apply {
        EntryResource::Stored(stored)
    } else {
        let mut value: Value = serde_json::from_str(stored).ok()?;
        if let Some(summary) = summary {
            value = renkei_fhir::summarize(&value, summary);
        }
        if elements_apply {
            let elements: Vec<&str> = plan.elements.iter().map(String::as_str).collect();
            value = renkei_fhir::select_elements(&value, &elements);
        }
        EntryResource::Reshaped(value)
    };
    Some(BundleEntry::Resource {
        full_url: format!("{}/{}/{}", ctx.base, row.res_type, row.res_id),
        resource,
        mode,
    })
}

/// `_format` and `_pretty` as the request sent them, for paging links: a client that asks
/// for XML by `_format` (it may be unable to set `Accept`) gets its next page in XML too.
pub(crate) fn presentation_query(ctx: &RequestCtx) -> impl Iterator<Item = String> + '_ {
    ctx.params
        .iter()
        .filter(|(name, _)| matches!(name.as_str(), "_format" | "_pretty"))
        .map(|(name, value)| format!("{name}={}", encode(value)))
}

/// The searchset Bundle (without entries) and its entries, for [`render_bundle`].
fn searchset<'a>(
    ctx: &RequestCtx,
    plan: &SearchPlan,
    page: &'a SearchPage,
    (self_path, spelling): (&str, &[Spelling]),
    break_glass: bool,
) -> (Value, Vec<BundleEntry<'a>>) {
    let mut query: Vec<String> = plan
        .applied
        .iter()
        .filter(|(k, _)| k != "_count")
        .filter_map(
            |applied| match spelling.iter().find(|(rewritten, _)| rewritten == applied) {
                Some((_, as_sent)) => as_sent.as_ref(),
                None => Some(applied),
            },
        )
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    query.push(format!("_count={}", plan.count));
    query.extend(presentation_query(ctx));
    // `self_path` may carry operation parameters of its own (`$everything?_linked=true`).
    let separator = if self_path.contains('?') { '&' } else { '?' };
    let base_url = format!("{}/{self_path}{separator}{}", ctx.base, query.join("&"));
    let page_url = |cursor: &Cursor| format!("{base_url}&_page_token={}", cursor.encode());
    let self_url = match &plan.cursor {
        Some(cursor) => page_url(cursor),
        None => base_url.clone(),
    };
    let mut links = vec![json!({"relation": "self", "url": self_url})];
    links.push(json!({"relation": "first", "url": base_url}));
    if let Some(previous) = &page.previous {
        links.push(json!({"relation": "previous", "url": page_url(previous)}));
    }
    if let Some(next) = &page.next {
        links.push(json!({"relation": "next", "url": page_url(next)}));
    }
    // No `last` link (it is optional): keyset pages are cut from the front, so the last
    // page is `total mod _count` rows, and a page read backwards from the end (`_count`
    // rows) would overlap the page before it whenever `_count` does not divide the total.
    let mut entries: Vec<BundleEntry<'a>> = Vec::new();
    entries.extend(
        page.matches
            .iter()
            .filter_map(|r| entry(ctx, plan, r, "match")),
    );
    entries.extend(
        page.included
            .iter()
            .filter_map(|r| entry(ctx, plan, r, "include")),
    );
    if !plan.ignored.is_empty() {
        entries.push(BundleEntry::Other(json!({
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [{
                    "severity": "warning",
                    "code": "not-supported",
                    "diagnostics": format!(
                        "unknown or unsupported search parameter(s) ignored: {}",
                        plan.ignored.join(", ")
                    ),
                }],
            },
            "search": {"mode": "outcome"},
        })));
    }
    if break_glass {
        // Served under break-glass: said in the Bundle itself, which may travel without the
        // response's headers (CONSENT.md, rule 9).
        entries.push(BundleEntry::Other(json!({
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [{
                    "severity": "warning",
                    "code": "security",
                    "details": {"text": "break-glass"},
                    "diagnostics": "served under break-glass (X-Purpose-Of-Use: ETREAT): this \
                        Bundle may hold the patient's data that their consent does not share; \
                        the access is recorded in the audit trail with its stated reason",
                }],
            },
            "search": {"mode": "outcome"},
        })));
    }
    if let Some(cut) = page.includes_cut {
        let diagnostics = match cut {
            renkei_store::IncludesCut::Rounds => format!(
                "_include:iterate / _revinclude:iterate stopped after {} rounds: \
                 resources further along the references are not included",
                renkei_store::MAX_INCLUDE_ROUNDS
            ),
            renkei_store::IncludesCut::StepRows => format!(
                "an _include or _revinclude found more than {} resources for this page: \
                 only the first {} of them are included (ask for a smaller _count)",
                renkei_store::MAX_INCLUDED,
                renkei_store::MAX_INCLUDED
            ),
        };
        entries.push(BundleEntry::Other(json!({
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [{
                    "severity": "warning",
                    "code": "incomplete",
                    "diagnostics": diagnostics,
                }],
            },
            "search": {"mode": "outcome"},
        })));
    }
    let bundle = crate::format::response_bundle("searchset", page.total, links, Vec::new());
    (bundle, entries)
}

/// `GET [type]?…`
pub async fn search_type(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let res_type = path.into_inner();
    let result = async {
        check_type(&res_type)?;
        let request = type_request(&res_type, ctx.params.clone());
        run(&req, &ctx, &state, request).await
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

/// `POST [type]/_search` with an `application/x-www-form-urlencoded` body.
pub async fn search_type_post(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let res_type = path.into_inner();
    let result = async {
        check_type(&res_type)?;
        let params = posted_params(&req, &ctx, payload, &state).await?;
        let request = type_request(&res_type, params);
        run(&req, &ctx, &state, request).await
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

/// The parameters of a `POST …/_search`: the URL's and the form body's together.
pub(crate) async fn posted_params(
    req: &HttpRequest,
    ctx: &RequestCtx,
    payload: web::Payload,
    state: &AppState,
) -> Result<Vec<(String, String)>> {
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut params = ctx.params.clone();
    // A body announced by its length or sent in chunks is read, and must be a form: one
    // without a Content-Type would otherwise be dropped unread and the search run without it.
    let has_body = req.headers().contains_key("content-length")
        || req.headers().contains_key("transfer-encoding");
    if !content_type.is_empty() || has_body {
        // Media types are case-insensitive, and their parameters follow a `;`.
        if crate::format::essence(content_type) != "application/x-www-form-urlencoded" {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                "POST _search takes an application/x-www-form-urlencoded body",
            ));
        }
        crate::format::check_charset(content_type)?;
        // An empty body is a search with the URL's parameters only.
        let body = read_body_or_empty(req, payload, state.max_body_bytes).await?;
        params.extend(parse_form_strict(&body)?);
        // A search refused after this point is recorded with the body's parameters too
        // (`handlers::respond_recorded`), as one that ran is.
        actix_web::HttpMessage::extensions_mut(req)
            .insert(PostedSearch(query_string(params.iter())));
    }
    Ok(params)
}

/// The parameters of a `POST …/_search`, URL's and body's, as one query string: what the
/// trail records of the search, refused or not.
#[derive(Debug, Clone)]
pub(crate) struct PostedSearch(pub(crate) String);

/// `GET [base]?_type=A,B&…`: common parameters over several types (all types when `_type` is
/// absent).
pub async fn search_system(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let result = async {
        let request = system_request(ctx.params.clone())?;
        run(&req, &ctx, &state, request).await
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

/// `POST [base]/_search` with the parameters in a form body (and the URL).
pub async fn search_system_post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let result = async {
        let params = posted_params(&req, &ctx, payload, &state).await?;
        let request = system_request(params)?;
        run(&req, &ctx, &state, request).await
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

fn system_request(params: Vec<(String, String)>) -> Result<SearchRequest> {
    let type_list = repeated_type_list(&params);
    let mut types: Vec<String> = match &type_list {
        Some(list) => renkei_search::plan::list_items("_type", list)
            .map_err(search_error)?
            .into_iter()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    for t in &types {
        check_type_param(t)?;
    }
    // Parameters of every resource (`_tag`, `_security`, …) over all types: each index
    // lookup then starts from its (type, parameter) prefix instead of reading the whole index.
    // `_id` and `_lastUpdated` are answered from `resources`, in any type.
    let filters_through_index = params.iter().any(|(name, _)| {
        let base = name.split(':').next().unwrap_or(name);
        !base.is_empty()
            && !matches!(base, "_id" | "_lastUpdated" | "_type")
            && !renkei_search::plan::is_result_param(base)
    });
    if type_list.is_none() && filters_through_index {
        types = renkei_fhir::resource_types()
            .iter()
            .filter(|t| renkei_repository::has_rest_endpoint(t))
            .map(|t| t.to_string())
            .collect();
    }
    let self_path = match &type_list {
        Some(list) => format!("?_type={}", encode(list)),
        None => String::new(),
    };
    let request = SearchRequest {
        unsupported: Vec::new(),
        types,
        sent: params.clone(),
        params,
        scope: Vec::new(),
        self_path,
        narrow_to_scopes: false,
        spelling: Vec::new(),
        types_of_includes: None,
    };
    refuse_audit_trail(&request, "as a system search (_type)")?;
    Ok(request)
}

fn patient_compartment(id: &str, types: &[String], include_self: bool, linked: bool) -> Filter {
    let reg = registry();
    let members = types
        .iter()
        .filter_map(|t| {
            let params = reg.patient_compartment_params(t);
            // `{def}` marks the Patient itself.
            let params: Vec<String> = params.iter().filter(|p| *p != "{def}").cloned().collect();
            (!params.is_empty()).then(|| (t.clone(), params))
        })
        .collect();
    Filter::Compartment {
        target_type: "Patient".into(),
        target_id: id.to_string(),
        members,
        include_self,
        linked,
    }
}

/// `GET Patient/{id}/{type}?…` (compartment search).
pub async fn compartment(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let (comp_type, id, target) = path.into_inner();
    let result = async {
        check_compartment_type(&comp_type)?;
        // The gate checks, inside the search's transaction, that the compartment's owner
        // exists and is visible (404 otherwise, 410 when deleted). Operations (`$…`) are
        // routed to `operations.rs` before this route.
        let request = compartment_request(&id, &target, ctx.params.clone())?;
        run(&req, &ctx, &state, request).await
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

/// `POST Patient/{id}/{type}/_search`: the compartment search with its parameters in a form
/// body (R4 http.html#search), as `POST {type}/_search` is the type search's.
pub async fn compartment_post(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let (comp_type, id, target) = path.into_inner();
    let result = async {
        check_compartment_type(&comp_type)?;
        let params = posted_params(&req, &ctx, payload, &state).await?;
        let request = compartment_request(&id, &target, params)?;
        run(&req, &ctx, &state, request).await
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

/// Only the Patient compartment is served.
fn check_compartment_type(comp_type: &str) -> Result<()> {
    if comp_type == "Patient" {
        return Ok(());
    }
    check_type(comp_type)?;
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not-supported",
        format!("{comp_type} compartments are not supported; the Patient compartment is"),
    ))
}

/// `Patient/{id}/{target}?…`: a search of one type inside the patient's compartment.
fn compartment_request(
    id: &str,
    target: &str,
    params: Vec<(String, String)>,
) -> Result<SearchRequest> {
    // R4's `Patient/{id}/*` (every type in the compartment) is not served: $everything
    // answers the same records, consent-filtered and paged, and `_type` narrows it. Said
    // plainly rather than through check_type's "'*' is not a resource type" 404.
    if target == "*" {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not-supported",
            "a search across every type of the compartment (Patient/[id]/*) is not supported: \
             use Patient/[id]/$everything, with _type to choose the types",
        ));
    }
    check_type(target)?;
    if target == "AuditEvent" {
        return Err(audit_trail_elsewhere("as a compartment search"));
    }
    if registry().patient_compartment_params(target).is_empty() && target != "Patient" {
        return Err(ApiError::bad_request(format!(
            "{target} is not in the Patient compartment"
        )));
    }
    let types = vec![target.to_string()];
    let scope = patient_compartment(id, &types, target == "Patient", false);
    Ok(SearchRequest {
        unsupported: type_level_unsupported(&params),
        types,
        sent: params.clone(),
        params,
        scope: vec![scope],
        self_path: format!("Patient/{id}/{target}"),
        narrow_to_scopes: false,
        spelling: Vec::new(),
        types_of_includes: None,
    })
}

/// `[type]?…`: a search of one type.
fn type_request(res_type: &str, params: Vec<(String, String)>) -> SearchRequest {
    SearchRequest {
        unsupported: type_level_unsupported(&params),
        types: vec![res_type.to_string()],
        sent: params.clone(),
        params,
        scope: Vec::new(),
        self_path: res_type.to_string(),
        narrow_to_scopes: false,
        spelling: Vec::new(),
        types_of_includes: None,
    }
}

/// `_type` chooses types only in a search of the whole system; a search of one type takes
/// it as an unsupported parameter (refused under strict handling, reported otherwise).
fn type_level_unsupported(params: &[(String, String)]) -> Vec<String> {
    params
        .iter()
        .filter(|(name, _)| name == "_type")
        .map(|(name, _)| name.clone())
        .take(1)
        .collect()
}

/// `GET Patient/{id}/$everything` (`_since`, `_type`, `_count`, paging): the Patient and
/// every resource of its compartment, as one paged search.
pub(crate) async fn everything(
    req: &HttpRequest,
    ctx: &RequestCtx,
    state: &AppState,
    id: &str,
) -> Result<HttpResponse> {
    let request = everything_request(id, &ctx.params)?;
    run(req, ctx, state, request).await
}

/// `POST Patient/{id}/$everything` with a `Parameters` body: the URL's parameters and the
/// body's, as the same search the GET form runs. The token is checked before the body is
/// read.
pub(crate) async fn everything_post(
    req: &HttpRequest,
    ctx: &RequestCtx,
    state: &AppState,
    id: &str,
    payload: web::Payload,
) -> Result<HttpResponse> {
    authenticate(req, state).await?;
    let parameters = crate::identity::parameters_body(req, payload, state).await?;
    let mut params = ctx.params.clone();
    params.extend(crate::operations::primitive_parameters(
        &parameters,
        "$everything",
        EVERYTHING_PARAMETERS,
    )?);
    let request = everything_request(id, &params)?;
    run(req, ctx, state, request).await
}

/// The parameters of Patient-everything a `Parameters` body may give, with the value types
/// each takes (the OperationDefinition's, plus this server's `_linked`/`_mdm`).
const EVERYTHING_PARAMETERS: &[(&str, &[&str])] = &[
    ("start", &["Date", "DateTime"]),
    ("end", &["Date", "DateTime"]),
    ("_since", &["Instant", "DateTime", "Date"]),
    ("_type", &["Code", "String"]),
    ("_count", &["Integer", "UnsignedInt", "PositiveInt"]),
    ("_linked", &["Boolean"]),
    ("_mdm", &["Boolean"]),
];

/// Every `_type` value as one list: a repeated `_type` (as a posted form or Parameters body
/// gives it, one type per parameter) adds types, as its commas do; it never narrows.
fn repeated_type_list(params: &[(String, String)]) -> Option<String> {
    let values: Vec<&str> = params
        .iter()
        .filter(|(name, _)| name == "_type")
        .map(|(_, value)| value.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The search `$everything` runs, from the operation's parameters.
fn everything_request(id: &str, query: &[(String, String)]) -> Result<SearchRequest> {
    let reg = registry();
    // `_type` may be repeated (a posted Parameters body gives one code per parameter).
    let type_list = repeated_type_list(query);
    let type_param = type_list.as_deref();
    let mut types: Vec<String> = match type_param {
        Some(list) => renkei_search::plan::list_items("_type", list)
            .map_err(search_error)?
            .into_iter()
            .map(str::to_string)
            .collect(),
        None => reg
            .patient_compartment_types()
            .map(str::to_string)
            .collect(),
    };
    for t in &types {
        check_type_param(t)?;
    }
    // Asked for by name, the trail answers elsewhere; unasked, it is simply not among the
    // patient's records.
    if type_param.is_some() && types.iter().any(|t| t == "AuditEvent") {
        return Err(audit_trail_elsewhere("through $everything"));
    }
    // What the records refer to may be of a type outside the compartment (a Practitioner).
    let types_of_includes = type_param.map(|_| types.clone());
    types.retain(|t| {
        t != "AuditEvent" && (t == "Patient" || !reg.patient_compartment_params(t).is_empty())
    });
    if !types.iter().any(|t| t == "Patient") && type_param.is_none() {
        types.push("Patient".into());
    }
    let mut params: Vec<(String, String)> = Vec::new();
    let mut unsupported = Vec::new();
    let mut linked = false;
    let mut linked_said: Option<&str> = None;
    let mut spelling: Vec<Spelling> = Vec::new();
    // `start`/`end` as sent and the first/last millisecond they bound.
    let mut care_from: Option<(String, i64)> = None;
    let mut care_to: Option<(String, i64)> = None;
    for (name, value) in query {
        match name.as_str() {
            // Every record linked to this one as the same person (HAPI FHIR spells it `_mdm`).
            "_linked" | "_mdm" => match value.as_str() {
                "true" | "false" if linked_said.is_some_and(|said| said != value) => {
                    return Err(ApiError::bad_request(format!(
                        "{name}={value} contradicts an earlier _linked or _mdm (the two are one parameter)"
                    )))
                }
                "true" => {
                    linked = true;
                    linked_said = Some(value.as_str());
                }
                "false" => linked_said = Some(value.as_str()),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "{name} must be true or false, not '{other}'"
                    )))
                }
            },
            "_since" => {
                if renkei_repository::parse_instant_ms(value).is_none() {
                    return Err(ApiError::bad_request(format!(
                        "_since '{value}' is not a FHIR instant or date"
                    )));
                }
                let rewritten = ("_lastUpdated".to_string(), format!("ge{value}"));
                spelling.push((rewritten.clone(), Some((name.clone(), value.clone()))));
                params.push(rewritten)
            }
            // `_lastUpdated` is taken as a search would take it (the links spell `_since` as
            // sent).
            "_count" | "_page_token" | "_format" | "_pretty" | "_elements" | "_summary"
            | "_lastUpdated" => params.push((name.clone(), value.clone())),
            // `_include=*` is always applied (below); the paging links carry it back.
            "_type" | "_include" => {}
            "start" | "end" => {
                let bound = care_date_bound(name, value)?;
                let slot = if name == "start" {
                    &mut care_from
                } else {
                    &mut care_to
                };
                if slot.is_some() {
                    return Err(ApiError::bad_request(format!(
                        "{name} may be given only once"
                    )));
                }
                // The range covers the whole period each bound names (`end=2024` is the
                // end of 2024).
                let edge = if name == "start" {
                    bound.low
                } else {
                    bound.high
                };
                *slot = Some((value.clone(), edge));
            }
            _ => unsupported.push(name.clone()),
        }
    }
    if let (Some((start, from)), Some((end, to))) = (&care_from, &care_to) {
        if from > to {
            return Err(ApiError::bad_request(format!(
                "start '{start}' is after end '{end}'"
            )));
        }
    }
    // "and any resource referenced from those" (operation-patient-everything): who prescribed
    // or performed, where, with what; each as far as the requester may see it.
    let include_all = ("_include".to_string(), "*".to_string());
    spelling.push((include_all.clone(), None));
    params.push(include_all);
    let include_self = types.iter().any(|t| t == "Patient");
    let mut scope = vec![patient_compartment(id, &types, include_self, linked)];
    if care_from.is_some() || care_to.is_some() {
        scope.push(Filter::CareDate {
            from: care_from.as_ref().map(|(_, from)| *from),
            to: care_to.as_ref().map(|(_, to)| *to),
        });
    }
    // The operation's own parameters come back in every paging link.
    let mut operation_params = Vec::new();
    if linked {
        operation_params.push("_linked=true".to_string());
    }
    if let Some(list) = type_param {
        operation_params.push(format!("_type={}", encode(list)));
    }
    for (name, bound) in [("start", &care_from), ("end", &care_to)] {
        if let Some((sent, _)) = bound {
            operation_params.push(format!("{name}={}", encode(sent)));
        }
    }
    let self_path = match operation_params.is_empty() {
        true => format!("Patient/{id}/$everything"),
        false => format!("Patient/{id}/$everything?{}", operation_params.join("&")),
    };
    Ok(SearchRequest {
        unsupported,
        types,
        sent: query.to_vec(),
        params,
        scope,
        self_path,
        narrow_to_scopes: type_param.is_none(),
        spelling,
        types_of_includes,
    })
}

/// A `start` or `end` of `$everything`: a date (or dateTime) without a search prefix, as the
/// period it names.
fn care_date_bound(name: &str, value: &str) -> Result<renkei_search::plan::DateValue> {
    if !value.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!(
            "{name} '{value}' is not a FHIR date"
        )));
    }
    let parsed = renkei_search::plan::parse_date_value(name, value).map_err(search_error)?;
    // Compared with each record's care date, which is read in Japan time: the bounds are too.
    let (low, high) =
        renkei_repository::care_date_range(value).unwrap_or((parsed.low, parsed.high));
    Ok(renkei_search::plan::DateValue {
        prefix: parsed.prefix,
        low,
        high,
    })
}

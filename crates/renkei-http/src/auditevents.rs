//! `AuditEvent`: searchable by auditors, by patients (accesses to their own record) and by
//! facilities (accesses to the data they hold); never writable through the API.

use crate::auth::authenticate;
use crate::error::ApiError;
use crate::format::render_value;
use crate::handlers::finish;
use crate::handlers::{blocking, encode, query_string};
use crate::request::RequestCtx;
use crate::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use renkei_store::AuditQuery;
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, ApiError>;

/// The search parameters `GET /AuditEvent` understands (besides `_count`, `_sort`), as listed
/// in the CapabilityStatement.
pub const SEARCH_PARAMS: &[&str] = &[
    "date", "patient", "agent", "entity", "type", "subtype", "action", "outcome", "purpose",
];

/// Any write to AuditEvent: the trail is append-only for every role.
pub async fn append_only(req: HttpRequest) -> HttpResponse {
    let message = format!(
        "{} is not allowed on AuditEvent: the audit trail is append-only and written by the gateway itself",
        req.method()
    );
    // The trail's history URLs take no method at all (see `read`).
    let allow = match is_history_path(req.path()) {
        true => "",
        false => "GET, HEAD",
    };
    crate::handlers::refuse_method(&req, message, allow).await
}

/// Whether `path` names a history of the trail (`AuditEvent/_history`, `…/{id}/_history…`).
fn is_history_path(path: &str) -> bool {
    path.ends_with("/_history") || path.contains("/_history/")
}

fn reference(value: &str, default_type: &str) -> String {
    if value.contains('/') {
        value.to_string()
    } else {
        format!("{default_type}/{value}")
    }
}

/// A search value's comma-separated alternatives (search.html#combining: any one of them).
fn alternatives(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter(|v| !v.is_empty())
}

/// The codes a token search of `element` asks for (search.html#token): `code` in any system;
/// `system|code` only where the trail's code is in that system (each stored code has one,
/// `renkei_access::audit_code_system`), so a wrong system matches nothing rather than everything;
/// `|code` (no system) matches nothing, every code here having one. `system|` alone (any
/// code of a system) is refused.
fn token_codes(element: &str, value: &str) -> Result<Vec<String>> {
    let mut codes = Vec::new();
    for alternative in alternatives(value) {
        match alternative.rsplit_once('|') {
            None => codes.push(alternative.to_string()),
            Some((_, "")) => {
                return Err(ApiError::bad_request(format!(
                    "AuditEvent {element}: '{alternative}' names a system without a code; give system|code or a code"
                )))
            }
            Some((system, code)) => {
                if renkei_access::audit_code_system(element, code) == Some(system) {
                    codes.push(code.to_string());
                }
            }
        }
    }
    Ok(codes)
}

/// A scalar filter given twice must hold both times (AND): its lists intersect. The first
/// one given is taken as it is.
fn add_alternatives(list: &mut Vec<String>, given: Vec<String>) {
    if list.is_empty() {
        *list = given;
    } else {
        list.retain(|v| given.contains(v));
    }
    if list.is_empty() {
        // No value left (`outcome=`, or two that share none): a filter nothing meets, not
        // no filter.
        list.push(String::new());
    }
}

/// `date`: the event's recording instant against a FHIR date of any precision (`2026`,
/// `2026-12`, `2026-12-06`, `…T10:00Z`), which stands for the whole period it names
/// (search.html#date). Several `date` parameters all hold.
fn narrow_to_date(query: &mut AuditQuery, value: &str) -> Result<()> {
    use renkei_search::plan::Prefix;
    let date = renkei_search::plan::parse_date_value("date", value)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // The trail filters `from <= recorded < to`.
    let (from, to) = match date.prefix {
        Prefix::Eq => (Some(date.low), Some(date.high.saturating_add(1))),
        Prefix::Ge => (Some(date.low), None),
        Prefix::Gt | Prefix::Sa => (Some(date.high.saturating_add(1)), None),
        Prefix::Le => (None, Some(date.high.saturating_add(1))),
        Prefix::Lt | Prefix::Eb => (None, Some(date.low)),
        Prefix::Ne | Prefix::Ap => {
            return Err(ApiError::bad_request(format!(
                "AuditEvent date takes the prefixes eq, ge, gt, le, lt, sa and eb, not '{}'",
                value.get(..2).unwrap_or_default()
            )))
        }
    };
    if let Some(from) = from {
        query.from_ms = Some(query.from_ms.map_or(from, |f| f.max(from)));
    }
    if let Some(to) = to {
        query.to_ms = Some(query.to_ms.map_or(to, |t| t.min(to)));
    }
    Ok(())
}

/// The trail's query. Unknown parameters are refused even under lenient handling: an audit
/// query silently widened by a misspelt filter would show more than was asked for.
fn parse_query(
    ctx: &RequestCtx,
    max: usize,
    default: usize,
    sealer: &renkei_auth::TokenSealer,
) -> Result<AuditQuery> {
    let mut query = AuditQuery {
        descending: true,
        limit: default,
        ..AuditQuery::default()
    };
    let own = format!("{}/", ctx.base);
    for (name, value) in &ctx.params {
        // A filter given twice must hold both times; a one-valued control given twice cannot
        // be guessed (as in any search, `renkei_search::plan`).
        if matches!(name.as_str(), "_count" | "_sort" | "_total" | "_summary") {
            renkei_search::plan::refuse_repeated(&ctx.params, name)
                .map_err(crate::search::search_error)?;
        }
        if value.is_empty() && SEARCH_PARAMS.contains(&name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "AuditEvent search parameter '{name}' has no value"
            )));
        }
        match name.as_str() {
            "date" => narrow_to_date(&mut query, value)?,
            // References to this server may be written absolute, as in any search.
            "patient" => query.refs.push((
                "patient".into(),
                alternatives(&crate::search::localize_alternatives(value, &[&own]))
                    .map(|v| reference(v, "Patient"))
                    .collect(),
            )),
            // An event names a version as the resource (`…/_history/2` is `…`).
            "entity" => query.refs.push((
                "entity".into(),
                alternatives(&crate::search::localize_alternatives(value, &[&own]))
                    .map(|v| v.split("/_history/").next().unwrap_or(v).to_string())
                    .collect(),
            )),
            "agent" => add_alternatives(
                &mut query.agent,
                alternatives(value).map(str::to_string).collect(),
            ),
            "type" => add_alternatives(&mut query.type_code, token_codes("type", value)?),
            "subtype" => add_alternatives(&mut query.subtype, token_codes("subtype", value)?),
            "action" => add_alternatives(&mut query.action, token_codes("action", value)?),
            "outcome" => add_alternatives(&mut query.outcome, token_codes("outcome", value)?),
            "purpose" => add_alternatives(&mut query.purpose, token_codes("purpose", value)?),
            "_count" => {
                let count = value.parse::<usize>().map_err(|_| {
                    ApiError::bad_request(format!("_count '{value}' is not a number"))
                })?;
                // `_count=0`: how many match, without entries (search.html#count).
                if count == 0 {
                    query.count_total = true;
                }
                query.limit = count.min(max);
            }
            "_sort" => match value.as_str() {
                "date" | "-date" => {
                    query.descending = value.starts_with('-');
                    query.by_recorded = true;
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "AuditEvent sorts by date or -date, not '{other}'"
                    )))
                }
            },
            // `seq` in trail order, `recorded.seq` in `_sort=date` order.
            "_page_token" => {
                let forged =
                    || ApiError::bad_request("_page_token is not a token this server issued");
                // Sealed: the trail's sequence numbers would tell a patient how many events
                // the whole network recorded between two of their own.
                let value = &sealer.unseal(value).ok_or_else(forged)?;
                // Sequence numbers start at 1: a token this server issued names one.
                let seq_of = |text: &str| {
                    text.parse::<i64>()
                        .ok()
                        .filter(|seq| *seq > 0)
                        .ok_or_else(forged)
                };
                match value.split_once('.') {
                    Some((recorded, seq)) => {
                        let recorded = recorded.parse().map_err(|_| forged())?;
                        query.past_recorded = Some((recorded, seq_of(seq)?));
                    }
                    None => query.before_seq = Some(seq_of(value)?),
                }
            }
            "_total" => {
                query.count_total = renkei_search::plan::parse_total(value)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?
                    == renkei_search::plan::Total::Accurate;
            }
            // `_summary=count`: the total alone, as `_count=0`; `false` is the whole event.
            "_summary" if value == "count" => {
                query.count_total = true;
                query.limit = 0;
            }
            "_summary" if value == "false" => {}
            "_format" | "_pretty" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "AuditEvent search supports {}, _sort, _count, _total, _summary=count; \
                     not '{other}' (unknown parameters are refused here even without \
                     Prefer: handling=strict, so that an audit query is never wider than asked)",
                    SEARCH_PARAMS.join(", ")
                )))
            }
        }
    }
    // `_sort` may follow `_page_token` in the query string.
    if !query.descending {
        if let Some(seq) = query.before_seq.take() {
            query.after_seq = Some(seq);
        }
    }
    // A token of one order cannot say where a page of the other starts.
    if query.by_recorded != query.past_recorded.is_some()
        && (query.past_recorded.is_some() || query.before_seq.or(query.after_seq).is_some())
    {
        return Err(ApiError::bad_request(
            "_page_token does not belong to this search: it was issued for a different _sort",
        ));
    }
    Ok(query)
}

/// `GET /AuditEvent?…` (and `GET /AuditEvent/_search?…`).
pub async fn search(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let result = match authenticate(&req, &state).await {
        Ok(who) => search_trail(&ctx, &state, who).await,
        Err(error) => Err(error),
    };
    finish(&req, &state, &ctx, result).await
}

/// `POST /AuditEvent/_search`: the parameters in a form body (and the URL), as for any type.
pub async fn search_post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ctx = ctx_or_fail!(req);
    let result = async {
        // The token is checked before the body is read, as for every request.
        let who = authenticate(&req, &state).await?;
        ctx.params = crate::search::posted_params(&req, &ctx, payload, &state).await?;
        search_trail(&ctx, &state, who).await
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

async fn search_trail(
    ctx: &RequestCtx,
    state: &AppState,
    who: renkei_access::Requester,
) -> Result<HttpResponse> {
    let sealer = state.auth.key.token_sealer();
    let mut query = parse_query(ctx, state.max_page_size, state.default_page_size, &sealer)?;
    let page_size = query.limit;
    let by_recorded = query.by_recorded;
    query.limit = page_size + 1;
    let gate = state.gate.clone();
    let asked = query_string(ctx.params.iter());
    let raw_query = match asked.is_empty() {
        true => "AuditEvent".to_string(),
        false => format!("AuditEvent?{asked}"),
    };
    let page = blocking(move || gate.audit_events(&who, query, &raw_query)).await?;
    let mut rows = page.events;
    let more = rows.len() > page_size;
    rows.truncate(page_size);
    // The links repeat what took effect; `self` names this page (its token), `first` the
    // search without one.
    let applied = |(name, _): &&(String, String)| name != "_page_token";
    let first_query = query_string(ctx.params.iter().filter(applied));
    let first_url = format!("{}/AuditEvent?{first_query}", ctx.base);
    let page_url = |token: &str| {
        let joiner = if first_query.is_empty() { "" } else { "&" };
        format!("{first_url}{joiner}_page_token={}", encode(token))
    };
    let this_page = ctx
        .params
        .iter()
        .find(|(name, _)| name == "_page_token")
        .map(|(_, token)| token.as_str());
    let mut links = vec![
        json!({"relation": "self", "url": this_page.map_or_else(|| first_url.clone(), page_url)}),
        json!({"relation": "first", "url": first_url}),
    ];
    if let (true, Some(last)) = (more, rows.last()) {
        let token = match by_recorded {
            true => format!("{}.{}", last.recorded, last.seq),
            false => last.seq.to_string(),
        };
        links.push(json!({"relation": "next", "url": page_url(&sealer.seal(&token))}));
    }
    let entries: Vec<Value> = rows
        .into_iter()
        .map(|row| row.resource)
        .map(|event| {
            let id = event
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            json!({
                "fullUrl": format!("{}/AuditEvent/{id}", ctx.base),
                "resource": event,
                "search": {"mode": "match"},
            })
        })
        .collect();
    let bundle = crate::format::response_bundle("searchset", page.total, links, entries);
    Ok(render_value(
        HttpResponse::Ok(),
        &bundle,
        ctx.format,
        ctx.pretty,
    ))
}

/// `GET /AuditEvent/{id}`: one event, under the same role rules as search.
pub async fn read(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let ctx = ctx_or_fail!(req);
    let tail = path.into_inner();
    if tail == "_history" || is_history_path(&tail) {
        let message = "AuditEvent has no history: each event is written once and never \
                       changed; read AuditEvent/{id} or search AuditEvent instead";
        // No method is allowed on a history URL of the trail (an empty `Allow`).
        return crate::handlers::refuse_method(&req, message.into(), "").await;
    }
    let result: Result<HttpResponse> = async {
        let who = authenticate(&req, &state).await?;
        if tail.contains('/') || tail.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("AuditEvent/{tail} is not a FHIR endpoint of this server"),
            ));
        }
        // A malformed id is a malformed request, as for every other type.
        renkei_repository::check_id(&tail)?;
        let query = AuditQuery {
            refs: Vec::new(),
            limit: 1,
            descending: true,
            ..AuditQuery::default()
        };
        let gate = state.gate.clone();
        let id = tail.clone();
        let rows = blocking(move || gate.audit_event(&who, &id, query)).await?;
        match rows.into_iter().next() {
            Some(row) => Ok(render_value(
                HttpResponse::Ok(),
                &row.resource,
                ctx.format,
                ctx.pretty,
            )),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("AuditEvent/{tail} is not known"),
            )),
        }
    }
    .await;
    finish(&req, &state, &ctx, result).await
}

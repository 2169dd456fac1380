//! Who is asking: bearer tokens (SMART Backend Services), the token endpoint, the SMART
//! configuration, and the request id every response echoes.

use crate::error::ApiError;
use crate::format::FHIR_JSON;
use crate::AppState;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use renkei_access::{Requester, StatedPurpose};
use renkei_auth::{ClientRegistration, ServerKey, TokenEndpoint};
use std::sync::Arc;

/// Token settings shared by the handlers.
pub struct AuthState {
    pub key: Arc<ServerKey>,
    /// Lifetime of access tokens issued at `/auth/token`.
    pub token_ttl_seconds: u64,
    /// The client registrations every bearer token is checked against.
    pub clients: ClientDirectory,
}

/// How old the server's copy of the client registrations may be. `renkei client remove` (or
/// a changed registration) takes effect on tokens already issued within this time: the CLI
/// changes the table from another process.
const CLIENTS_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

type Registrations = Arc<std::collections::HashMap<String, ClientRegistration>>;

/// A copy of the client registrations, read again from the database once it is older than
/// [`CLIENTS_REFRESH`]: one small query a second instead of one per request.
#[derive(Default)]
pub struct ClientDirectory {
    cached: std::sync::RwLock<Option<(std::time::Instant, Registrations)>>,
    /// Set while one request reads the registrations again: the others keep using the copy
    /// meanwhile instead of all querying at once (each query holds an event-loop thread).
    refreshing: std::sync::atomic::AtomicBool,
}

impl ClientDirectory {
    /// The registrations, read again when the copy is older than [`CLIENTS_REFRESH`] or when
    /// `fresh` asks for it (a client registered a moment ago is not in the copy yet); and
    /// whether they were read from the database just now.
    fn current(
        &self,
        store: &renkei_store::Store,
        fresh: bool,
    ) -> Result<(Registrations, bool), ApiError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        /// Lets the next stale request refresh, however this read ends.
        struct Refreshing<'a>(&'a AtomicBool);
        impl Drop for Refreshing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let mut _refreshing = None;
        if let (false, Ok(cached)) = (fresh, self.cached.read()) {
            if let Some((read_at, clients)) = cached.as_ref() {
                if read_at.elapsed() < CLIENTS_REFRESH
                    || self.refreshing.swap(true, Ordering::AcqRel)
                {
                    return Ok((clients.clone(), false));
                }
                _refreshing = Some(Refreshing(&self.refreshing));
            }
        }
        let rows = store.read(|tx| tx.clients()).map_err(|error| {
            tracing::error!(%error, "client registrations could not be read");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "the client registrations cannot be read right now; retry",
            )
        })?;
        let clients: Registrations = Arc::new(
            rows.iter()
                .filter_map(|row| {
                    serde_json::from_str::<ClientRegistration>(&row.registration).ok()
                })
                .map(|registration| (registration.client_id.clone(), registration))
                .collect(),
        );
        if let Ok(mut cached) = self.cached.write() {
            *cached = Some((std::time::Instant::now(), clients.clone()));
        }
        Ok((clients, true))
    }
}

/// The request id of this request (validated client value or generated), set by the
/// middleware in `lib.rs`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Accepts a client's `X-Request-Id` when it is short and plain; otherwise makes one.
pub fn request_id_from(req: &actix_web::dev::ServiceRequest) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

pub fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "login", message)
}

/// The requester of a FHIR request, from its bearer token and purpose headers.
/// No or bad token → 401 (with `WWW-Authenticate`); a purpose the token does not allow → 403,
/// left for the caller to audit (see [`refused_requester`]).
pub fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Requester, ApiError> {
    let claims = verified_claims(req, state)?;
    Requester::from_claims(
        &claims,
        &stated_purpose(req),
        &request_id(req),
        req.peer_addr().map(|a| a.ip().to_string()),
    )
    .map_err(|refusal| ApiError::new(StatusCode::FORBIDDEN, "forbidden", refusal.to_string()))
}

/// For the AuditEvent of a request whose valid token asked for a purpose it may not use:
/// the token's client, with the purpose (and break-glass reason) it asked for.
pub fn refused_requester(req: &HttpRequest, state: &AppState) -> Option<Requester> {
    let claims = verified_claims(req, state).ok()?;
    Some(Requester::refused_attempt(
        &claims,
        &stated_purpose(req),
        &request_id(req),
        req.peer_addr().map(|a| a.ip().to_string()),
    ))
}

fn stated_purpose(req: &HttpRequest) -> StatedPurpose {
    let header_text = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    StatedPurpose {
        purpose: header_text("x-purpose-of-use"),
        break_glass_reason: header_text("x-break-glass-reason"),
    }
}

/// The claims of the request's bearer token, checked against the client's current
/// registration and the connection's certificate; 401 otherwise.
fn verified_claims(
    req: &HttpRequest,
    state: &AppState,
) -> Result<renkei_auth::AccessClaims, ApiError> {
    let header_value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized("this endpoint needs an access token: Authorization: Bearer <token> (see /fhir/.well-known/smart-configuration)")
        })?;
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let token = header_value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))?;
    let claims =
        renkei_auth::verify_access_token(&state.auth.key, token.trim(), chrono::Utc::now())
            .map_err(|e| {
                unauthorized(&format!("the access token is not valid: {}", e.description))
            })?;
    let store = state.gate.repository().store();
    let granted = |clients: &Registrations| {
        clients
            .get(&claims.sub)
            .is_some_and(|registration| registration.still_grants(&claims))
    };
    // A copy that does not grant the token is read again, unless it was read just now.
    let (clients, just_read) = state.auth.clients.current(store, false)?;
    if !granted(&clients) && (just_read || !granted(&state.auth.clients.current(store, true)?.0)) {
        return Err(unauthorized(
            "the access token is not valid: its client was removed or its registration changed since it was issued; request a new token",
        ));
    }
    let peer = req.conn_data::<crate::tls::PeerCertificate>();
    claims
        .check_certificate(peer.map(|p| p.0.as_slice()))
        .map_err(|e| unauthorized(&format!("the access token is not valid: {}", e.description)))?;
    if peer.is_some() && claims.cnf.is_none() {
        return Err(unauthorized(
            "a client certificate was presented, but the client's registration names none (renkei client add --cert-fingerprint)",
        ));
    }
    Ok(claims)
}

/// The client a refused token request claimed to be: its assertion's (unverified) issuer,
/// else its `client_id` parameter.
fn claimed_client(form: &[(String, String)]) -> Option<String> {
    let param = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    param("client_assertion")
        .and_then(|assertion| renkei_auth::assertion_client_id(assertion).ok())
        .or_else(|| param("client_id").map(str::to_string))
}

fn token_url(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}/auth/token", info.scheme(), info.host())
}

/// `GET /fhir/.well-known/smart-configuration` (public).
pub async fn smart_configuration(req: HttpRequest) -> HttpResponse {
    let info = req.connection_info().clone();
    let base = format!("{}://{}/fhir", info.scheme(), info.host());
    HttpResponse::Ok()
        .content_type("application/json")
        .json(renkei_auth::smart_configuration(&base, &token_url(&req)))
}

/// `GET /auth/jwks`: the public key access tokens are signed with.
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .json(state.auth.key.public_jwks())
}

/// `POST /auth/token`: client credentials with a JWT client assertion (RFC 7523).
pub async fn token(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let peer_cert = req
        .conn_data::<crate::tls::PeerCertificate>()
        .map(|p| p.0.clone());
    let form: Vec<(String, String)> = crate::request::parse_query(&String::from_utf8_lossy(&body));
    let url = token_url(&req);
    let gate = state.gate.clone();
    let key = state.auth.key.clone();
    let ttl = state.auth.token_ttl_seconds;
    let mut attempt = renkei_access::LoginAttempt {
        request_id: request_id(&req),
        network_address: req.peer_addr().map(|a| a.ip().to_string()),
        ..Default::default()
    };
    let result = web::block(move || {
        let store = gate.repository().store().clone();
        let now = chrono::Utc::now();
        let organization = std::cell::RefCell::new(None);
        let lookup = |client_id: &str| -> Option<ClientRegistration> {
            let row = store.read(|tx| tx.client(client_id)).ok()??;
            let registration: ClientRegistration = serde_json::from_str(&row.registration).ok()?;
            *organization.borrow_mut() = Some(registration.organization.clone());
            Some(registration)
        };
        let seen = |jti: &str| -> bool {
            let now_ms = now.timestamp_millis();
            store
                .write(|tx| tx.use_assertion(jti, now_ms + 600_000, now_ms))
                .map(|fresh| !fresh)
                .unwrap_or(true)
        };
        let endpoint = TokenEndpoint {
            key: &key,
            token_url: &url,
            ttl_seconds: ttl,
            now,
            client_cert_der: peer_cert.as_deref(),
        };
        let pairs = form.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let result = endpoint.handle(pairs, &lookup, &seen);
        // No audit, no token: the Login event is durable before the answer.
        attempt.organization = organization.into_inner();
        match &result {
            Ok(grant) => attempt.client_id = Some(grant.assertion.client_id.clone()),
            Err(error) => {
                attempt.client_id = claimed_client(&form);
                attempt.status = error.http_status();
                attempt.refusal = Some(error.to_string());
                attempt.organization = None;
            }
        }
        if attempt.status == 0 {
            attempt.status = 200;
        }
        gate.audit_login(attempt).map(|()| result)
    })
    .await;
    match result {
        Ok(Err(unavailable)) => {
            ApiError::from(unavailable).respond(crate::format::Format::Json, false)
        }
        Ok(Ok(Ok(grant))) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .content_type("application/json")
            .json(grant.response),
        Ok(Ok(Err(error))) => HttpResponse::build(
            StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        )
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("application/json")
        .json(error.to_json()),
        Err(_) => HttpResponse::ServiceUnavailable()
            .content_type(FHIR_JSON)
            .finish(),
    }
}

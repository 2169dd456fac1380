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
    /// The token endpoint's absolute URLs, from the configuration (see
    /// [`token_endpoint_urls`]): the only audiences a client assertion may name, the first
    /// one advertised by `/.well-known/smart-configuration`. Never taken from a request's
    /// `Host` or `X-Forwarded-Host`: those are the caller's to choose, and an assertion made
    /// out to another server must not be accepted here.
    pub token_urls: Vec<String>,
}

/// The URLs of the token endpoint (`/auth/token`) clients may address assertions to.
///
/// * With a configured `base_url` (the FHIR base, e.g. `https://gw.example/fhir`): that base
///   without its final `/fhir` segment, plus `/auth/token` — and nothing else.
/// * Without one: the bound listen address, when it names one host (`127.0.0.1:8080` also
///   as `localhost:8080`, `[::1]` likewise). A wildcard address (`0.0.0.0`, `[::]`) names no
///   URL a client could have addressed, so no assertion is accepted until `base_url` is set.
pub fn token_endpoint_urls(
    base_url: Option<&str>,
    scheme: &str,
    bound: std::net::SocketAddr,
) -> Vec<String> {
    if let Some(base) = base_url {
        let base = base.trim_end_matches('/');
        let root = base.strip_suffix("/fhir").unwrap_or(base);
        return vec![format!("{root}/auth/token")];
    }
    let ip = bound.ip();
    if ip.is_unspecified() {
        return Vec::new();
    }
    let mut urls = vec![format!("{scheme}://{bound}/auth/token")];
    if ip.is_loopback() {
        urls.push(format!("{scheme}://localhost:{}/auth/token", bound.port()));
    }
    urls
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
        &stated_purpose(req)?,
        &request_id(req),
        req.peer_addr().map(|a| a.ip().to_string()),
    )
    .map_err(|refusal| ApiError::new(StatusCode::FORBIDDEN, "forbidden", refusal.to_string()))
}

/// For the AuditEvent of a request whose valid token asked for a purpose it may not use:
/// the token's client, with the purpose (and break-glass reason) it asked for.
pub fn refused_requester(req: &HttpRequest, state: &AppState) -> Option<Requester> {
    let claims = verified_claims(req, state).ok()?;
    // A reason that is not UTF-8 is kept as far as it reads, so the attempt stays on record
    // under its client.
    let stated = stated_purpose(req).unwrap_or_else(|_| StatedPurpose {
        purpose: header_text(req, "x-purpose-of-use").ok().flatten(),
        break_glass_reason: req
            .headers()
            .get("x-break-glass-reason")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    });
    Some(Requester::refused_attempt(
        &claims,
        &stated,
        &request_id(req),
        req.peer_addr().map(|a| a.ip().to_string()),
    ))
}

/// A header's text. HTTP header values are bytes; a clinician types a break-glass reason in
/// their own language, and clients send it as raw UTF-8 (RFC 9110 §5.5 leaves non-ASCII
/// octets to the field's definition) or percent-encoded ASCII: both are accepted as they
/// come. Bytes that are not UTF-8 are a 400 naming the header, never "no header".
fn header_text(req: &HttpRequest, name: &str) -> Result<Option<String>, ApiError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(value) => std::str::from_utf8(value.as_bytes())
            .map(|text| Some(text.to_string()))
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("the {name} header is not valid UTF-8 text"),
                )
            }),
    }
}

fn stated_purpose(req: &HttpRequest) -> Result<StatedPurpose, ApiError> {
    let break_glass_reason = header_text(req, "x-break-glass-reason")?;
    if let Some(reason) = &break_glass_reason {
        // Kept as sent, but a percent-encoded reason must decode to text: `%FF%FE` would
        // otherwise open the glass on a reason nobody can read.
        crate::request::check_escapes_decode("X-Break-Glass-Reason", reason)?;
    }
    Ok(StatedPurpose {
        purpose: header_text(req, "x-purpose-of-use")?,
        break_glass_reason,
    })
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

/// `GET /fhir/.well-known/smart-configuration` (public). The token endpoint it names is the
/// configured one (see [`AuthState::token_urls`]), whatever `Host` the caller sent.
pub async fn smart_configuration(state: web::Data<AppState>) -> HttpResponse {
    match state.auth.token_urls.first() {
        Some(token_url) => HttpResponse::Ok()
            .content_type("application/json")
            .json(renkei_auth::smart_configuration(token_url, token_url)),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "this server has no token endpoint URL to advertise: set base_url (RENKEI_BASE_URL) when listening on a wildcard address",
        )
        .respond(crate::format::Format::Json, false),
    }
}

/// `GET /auth/jwks`: the public key access tokens are signed with.
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .json(state.auth.key.public_jwks())
}

/// The largest token request read: a client assertion is a few kilobytes.
const TOKEN_REQUEST_LIMIT: usize = 64 * 1024;

/// `POST /auth/token`: client credentials with a JWT client assertion (RFC 7523).
pub async fn token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let body = match crate::request::read_body_or_empty(&req, payload, TOKEN_REQUEST_LIMIT).await {
        Ok(body) => body,
        // An OAuth client reads OAuth errors (RFC 6749 §5.2), with the status that says what
        // was wrong (413 too large, 415 compressed, 408 too slow).
        Err(error) => {
            let description = error.to_string();
            // Audited like every other refused token request, before the answer.
            let attempt = renkei_access::LoginAttempt {
                request_id: request_id(&req),
                network_address: req.peer_addr().map(|a| a.ip().to_string()),
                status: error.status().as_u16(),
                refusal: Some(description.clone()),
                ..Default::default()
            };
            let gate = state.gate.clone();
            match web::block(move || gate.audit_login(attempt)).await {
                Ok(Ok(())) => {}
                Ok(Err(unavailable)) => {
                    return ApiError::from(unavailable).respond(crate::format::Format::Json, false)
                }
                Err(_) => {
                    return HttpResponse::ServiceUnavailable()
                        .content_type(FHIR_JSON)
                        .finish()
                }
            }
            return HttpResponse::build(error.status())
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .content_type("application/json")
                .json(
                    renkei_auth::AuthError::new(
                        renkei_auth::ErrorCode::InvalidRequest,
                        description,
                    )
                    .to_json(),
                );
        }
    };
    let peer_cert = req
        .conn_data::<crate::tls::PeerCertificate>()
        .map(|p| p.0.clone());
    let form: Vec<(String, String)> = crate::request::parse_query(&String::from_utf8_lossy(&body));
    let urls = state.auth.token_urls.clone();
    // Client authentication through the Authorization header (e.g. `Basic`, RFC 6749 §2.3.1):
    // its scheme, for the one-method rule and the `WWW-Authenticate` of a 401 (§5.2).
    let header_scheme = req.headers().get(header::AUTHORIZATION).map(|value| {
        let scheme: String = value
            .as_bytes()
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
            .map(|b| char::from(*b))
            .collect();
        if scheme.is_empty() {
            "Basic".to_string()
        } else {
            scheme
        }
    });
    let two_methods = header_scheme.is_some() && form.iter().any(|(k, _)| k == "client_assertion");
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
        let seen = |client_id: &str, jti: &str| -> bool {
            let now_ms = now.timestamp_millis();
            // Stored per client: a client id never holds a space ([A-Za-z0-9-._~:]), so
            // "client jti" cannot be spelt by two different pairs.
            let key = format!("{client_id} {jti}");
            store
                .write(|tx| tx.use_assertion(&key, now_ms + 600_000, now_ms))
                .map(|fresh| !fresh)
                .unwrap_or(true)
        };
        let accepted: Vec<&str> = urls.iter().map(String::as_str).collect();
        let endpoint = TokenEndpoint {
            key: &key,
            token_urls: &accepted,
            ttl_seconds: ttl,
            now,
            client_cert_der: peer_cert.as_deref(),
        };
        let pairs = form.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let result = if two_methods {
            // RFC 6749 §2.3: a client uses one authentication method per request; which one
            // would count is not ours to guess.
            Err(renkei_auth::AuthError::new(
                renkei_auth::ErrorCode::InvalidRequest,
                "the request authenticates the client twice (an Authorization header and a client_assertion): use the client_assertion only",
            ))
        } else {
            endpoint.handle(pairs, &lookup, &seen)
        };
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
        Ok(Ok(Err(error))) => {
            let status =
                StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut response = HttpResponse::build(status);
            response.insert_header((header::CACHE_CONTROL, "no-store"));
            // RFC 6749 §5.2: a 401 to a client that authenticated through the Authorization
            // header names the scheme it used.
            if let (StatusCode::UNAUTHORIZED, Some(scheme)) = (status, &header_scheme) {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    format!("{scheme} realm=\"renkei\""),
                ));
            }
            response
                .content_type("application/json")
                .json(error.to_json())
        }
        Err(_) => HttpResponse::ServiceUnavailable()
            .content_type(FHIR_JSON)
            .finish(),
    }
}

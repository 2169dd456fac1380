//! Who is asking: bearer tokens (SMART Backend Services), the token endpoint, the SMART
//! configuration, and the request id every response echoes.

use crate::error::ApiError;
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
///
/// The query runs on the blocking pool, never on an event-loop thread: when slow requests
/// hold every database connection, it waits for one, and a worker thread waiting with it
/// would stall every other request on that worker (seen as empty 408s and 503s).
///
/// One refresh at a time. Requests that find the copy stale while a refresh is under way
/// wait for that refresh and take its result (or its failure, as a 503) rather than start
/// their own or use the stale copy: a copy older than [`CLIENTS_REFRESH`] may still grant
/// the token of a removed client, and a refresh waiting out pool starvation can take many
/// seconds, so answering from it meanwhile would stretch the revocation time to however long
/// the database is slow. Waiting costs no thread, only that request's time. A request takes
/// the result only if its read began less than [`CLIENTS_REFRESH`] before the request
/// arrived (else it reads again, once, for all who waited with it), so no request is ever
/// answered from a copy older than that.
#[derive(Default)]
pub struct ClientDirectory {
    /// The last successful read: when it began (a registration committed before that instant
    /// is in it), and what it found.
    cached: std::sync::RwLock<Option<(std::time::Instant, Registrations)>>,
    /// Held by the one refresh under way. Holds when the last failed read ended, so that the
    /// requests which waited for it answer 503 at once instead of each trying again in turn
    /// (N waiters × the pool's connection timeout would be a hang).
    refresh: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl ClientDirectory {
    /// The copy, with the instant its read began, if that instant passes `accept`.
    fn copy_read(
        &self,
        accept: impl Fn(std::time::Instant) -> bool,
    ) -> Option<(std::time::Instant, Registrations)> {
        let cached = self.cached.read().ok()?;
        let (read_at, clients) = cached.as_ref()?;
        accept(*read_at).then(|| (*read_at, clients.clone()))
    }

    /// The registrations, read again when the copy is older than [`CLIENTS_REFRESH`] or when
    /// `fresh` asks for it (a client registered a moment ago is not in the copy yet); and
    /// whether they were read from the database since this call began.
    async fn current(
        &self,
        store: &renkei_store::Store,
        fresh: bool,
    ) -> Result<(Registrations, bool), ApiError> {
        let store = store.clone();
        self.current_with(fresh, move || {
            let rows = store.read(|tx| tx.clients())?;
            Ok::<_, renkei_store::StoreError>(
                rows.iter()
                    .filter_map(|row| {
                        ClientRegistration::from_stored(&row.registration, row.created).ok()
                    })
                    .map(|registration| (registration.client_id.clone(), registration))
                    .collect(),
            )
        })
        .await
    }

    /// [`ClientDirectory::current`] with the database read given: `load` runs on the
    /// blocking pool, at most once, and only if no read that answers this call ended while
    /// it waited for its turn.
    async fn current_with<E: std::fmt::Display + Send + 'static>(
        &self,
        fresh: bool,
        load: impl FnOnce() -> Result<std::collections::HashMap<String, ClientRegistration>, E>
            + Send
            + 'static,
    ) -> Result<(Registrations, bool), ApiError> {
        let asked = std::time::Instant::now();
        // Which reads answer this call: for `fresh`, only one that began after it asked (a
        // registration committed before then is in it); otherwise any that began less than
        // CLIENTS_REFRESH before it asked.
        let answers = |read_at: std::time::Instant| match fresh {
            true => read_at >= asked,
            false => asked.saturating_duration_since(read_at) < CLIENTS_REFRESH,
        };
        if !fresh {
            if let Some((_, clients)) = self.copy_read(answers) {
                return Ok((clients, false));
            }
        }
        let mut last_failure = self.refresh.lock().await;
        // The read this call waited for, if it answers this call: taken rather than repeated.
        if let Some((read_at, clients)) = self.copy_read(answers) {
            return Ok((clients, read_at >= asked));
        }
        // A read that failed while this call waited for it fails this call too; one that
        // failed before this call asked is tried again.
        if last_failure.is_some_and(|failed| failed >= asked) {
            return Err(clients_unavailable());
        }
        let started = std::time::Instant::now();
        let read = match web::block(load).await {
            Ok(read) => read.map_err(|error| error.to_string()),
            Err(_) => Err("the blocking pool is gone".to_string()),
        };
        match read {
            Ok(found) => {
                let clients: Registrations = Arc::new(found);
                if let Ok(mut cached) = self.cached.write() {
                    *cached = Some((started, clients.clone()));
                }
                *last_failure = None;
                Ok((clients, true))
            }
            Err(error) => {
                tracing::error!(%error, "client registrations could not be read");
                *last_failure = Some(std::time::Instant::now());
                Err(clients_unavailable())
            }
        }
    }
}

/// The answer to a request whose token cannot be checked because the client registrations
/// cannot be read: a 503 the client may retry, never a pass or a 401.
fn clients_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the client registrations cannot be read right now; retry",
    )
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
pub async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Requester, ApiError> {
    let claims = verified_claims(req, state).await?;
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
pub async fn refused_requester(req: &HttpRequest, state: &AppState) -> Option<Requester> {
    let claims = verified_claims(req, state).await.ok()?;
    // A reason that is not UTF-8 is kept as far as it reads, so the attempt stays on record
    // under its client.
    // A purpose that is no code is recorded as none (the default, `TREAT`), not as text; a
    // reason beyond its length is cut.
    let stated = stated_purpose(req).unwrap_or_else(|_| StatedPurpose {
        purpose: stated_purpose_code(req).ok().flatten(),
        break_glass_reason: req.headers().get("x-break-glass-reason").map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(MAX_BREAK_GLASS_REASON)
                .collect()
        }),
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
    // A percent-encoded reason is recorded as the text it encodes, and must decode to text:
    // `%FF%FE`, or control characters (`%00`, a line break, a terminal escape) that a raw
    // header cannot carry, would otherwise open the glass on a reason nobody can read.
    let break_glass_reason = header_text(req, "x-break-glass-reason")?
        .map(|reason| crate::request::decode_escapes("X-Break-Glass-Reason", &reason))
        .transpose()?;
    if break_glass_reason.as_deref().is_some_and(|reason| {
        reason
            .chars()
            .any(|c| (c.is_control() && c != '\t') || is_direction_override(c))
    }) {
        return Err(ApiError::bad_request(
            "the X-Break-Glass-Reason header is malformed: it holds control or text-direction characters; state the reason as plain text",
        ));
    }
    // A reason nobody can see (only spaces, zero-width characters, a byte-order mark) is no
    // reason: it counts as blank, which break-glass refuses.
    let break_glass_reason = break_glass_reason.map(|reason| {
        if reason.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
            String::new()
        } else {
            reason
        }
    });
    if break_glass_reason
        .as_deref()
        .is_some_and(|reason| reason.chars().count() > MAX_BREAK_GLASS_REASON)
    {
        return Err(ApiError::bad_request(format!(
            "the X-Break-Glass-Reason header is longer than {MAX_BREAK_GLASS_REASON} characters: \
             state the reason briefly"
        )));
    }
    Ok(StatedPurpose {
        purpose: stated_purpose_code(req)?,
        break_glass_reason,
    })
}

/// `X-Purpose-Of-Use`: one code, as the audit trail records it in `purposeOfUse`; a list or
/// free text would become a code nobody issued (400).
fn stated_purpose_code(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let purpose = header_text(req, "x-purpose-of-use")?;
    if let Some(purpose) = &purpose {
        let is_code = (1..=64).contains(&purpose.len())
            && purpose
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !is_code {
            return Err(ApiError::bad_request(
                "the X-Purpose-Of-Use header takes one purpose-of-use code (v3 ActReason, e.g. \
                 TREAT or ETREAT), not a list or text",
            ));
        }
    }
    Ok(purpose)
}

/// The longest break-glass reason taken (characters): the trail keeps it whole.
const MAX_BREAK_GLASS_REASON: usize = 1_000;

/// Characters that reorder the text around them (bidi embeddings, overrides, isolates): a
/// reason shown with them reads otherwise than it was typed.
fn is_direction_override(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that show nothing: zero-width spaces and joiners, direction marks, word
/// joiners, the byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// The claims of the request's bearer token, checked against the client's current
/// registration and the connection's certificate; 401 otherwise.
async fn verified_claims(
    req: &HttpRequest,
    state: &AppState,
) -> Result<renkei_auth::AccessClaims, ApiError> {
    // Authorization is no list header (RFC 9110 §5.3): two credentials are not resolved by
    // their order (RFC 6750 §3.1 `invalid_request`).
    if req.headers().get_all(header::AUTHORIZATION).count() > 1 {
        return Err(ApiError::bad_request(
            "a request carries one Authorization header; this one has several",
        ));
    }
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
    let directory = &state.auth.clients;
    let (clients, just_read) = directory.current(store, false).await?;
    if !granted(&clients) && (just_read || !granted(&directory.current(store, true).await?.0)) {
        return Err(unauthorized(
            "the access token is not valid: its client was removed, registered again or its registration changed since it was issued; request a new token",
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
/// else its `client_id` parameter, else the user of an `Authorization: Basic` header (RFC 6749
/// §2.3.1: `client_id:secret`, each form-encoded), so that the Login event names who tried.
fn claimed_client(form: &[(String, String)], authorization: Option<&str>) -> Option<String> {
    let param = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    param("client_assertion")
        .and_then(|assertion| renkei_auth::assertion_client_id(assertion).ok())
        .or_else(|| param("client_id").map(str::to_string))
        .or_else(|| authorization.and_then(basic_user))
        .map(|claimed| as_recorded_claim(&claimed))
}

/// The `Authorization` header of a token request, when it is text: the client credential
/// whose claimed id a refusal records.
fn authorization_text(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
}

/// The longest claimed client id recorded as claimed: registered ids are short, and an
/// unauthenticated request must not write what it likes into the permanent trail.
const MAX_RECORDED_CLAIM_CHARS: usize = 128;

/// A claimed client id as the trail records it: control characters replaced (a newline or
/// NUL in a log line misleads its reader) and cut to [`MAX_RECORDED_CLAIM_CHARS`], marked
/// with `…` where cut.
fn as_recorded_claim(claimed: &str) -> String {
    let mut recorded: String = claimed
        .chars()
        .take(MAX_RECORDED_CLAIM_CHARS)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if claimed.chars().nth(MAX_RECORDED_CLAIM_CHARS).is_some() {
        recorded.push('…');
    }
    recorded
}

/// The user part of a `Basic` credential (`Basic base64(user:password)`), decoded.
fn basic_user(authorization: &str) -> Option<String> {
    use base64::Engine;
    let (scheme, credentials) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let user = decoded.split(':').next()?;
    let user = renkei_repository::percent_decode(&user.replace('+', " "));
    (!user.is_empty()).then_some(user)
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
    // The form is decoded as UTF-8, as every body is.
    // A form (RFC 6749 §4.4.2, SMART Backend Services): another media type is not read as
    // one (415).
    let charset = match req.headers().get(header::CONTENT_TYPE) {
        Some(content_type) => {
            let text = content_type.to_str().unwrap_or("");
            if crate::format::essence(text) == "application/x-www-form-urlencoded" {
                crate::format::check_charset(text)
            } else {
                Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "not-supported",
                    format!(
                        "a token request is a form (Content-Type: \
                         application/x-www-form-urlencoded), not '{text}'"
                    ),
                ))
            }
        }
        None => Ok(()),
    };
    let read = match charset {
        Ok(()) => crate::request::read_body_or_empty(&req, payload, TOKEN_REQUEST_LIMIT).await,
        Err(error) => Err(error),
    };
    let body = match read {
        Ok(body) => body,
        // An OAuth client reads OAuth errors (RFC 6749 §5.2), with the status that says what
        // was wrong (413 too large, 415 compressed or not UTF-8, 408 too slow).
        Err(error) => {
            let description = error.to_string();
            // Audited like every other refused token request, before the answer.
            let claimed = claimed_client(&[], authorization_text(&req));
            let attempt = renkei_access::LoginAttempt {
                request_id: request_id(&req),
                network_address: req.peer_addr().map(|a| a.ip().to_string()),
                client_id: claimed,
                status: error.status().as_u16(),
                refusal: Some(description.clone()),
                ..Default::default()
            };
            let gate = state.gate.clone();
            match web::block(move || gate.audit_login(attempt)).await {
                Ok(Ok(())) => {}
                Ok(Err(unavailable)) => return oauth_unavailable(&unavailable.to_string()),
                Err(_) => return oauth_unavailable("the token request was not handled"),
            }
            return oauth_error(
                error.status(),
                &renkei_auth::AuthError::new(renkei_auth::ErrorCode::InvalidRequest, description),
                None,
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
    let authorization = authorization_text(&req).map(str::to_string);
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
            let registration =
                ClientRegistration::from_stored(&row.registration, row.created).ok()?;
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
                attempt.client_id = claimed_client(&form, authorization.as_deref());
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
        Ok(Err(unavailable)) => oauth_unavailable(&unavailable.to_string()),
        Ok(Ok(Ok(grant))) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .content_type("application/json")
            .json(grant.response),
        Ok(Ok(Err(error))) => {
            let status =
                StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            oauth_error(status, &error, header_scheme.as_deref())
        }
        Err(_) => oauth_unavailable("the token request could not be handled"),
    }
}

/// 503 as an OAuth client reads it (RFC 6749 §5.2 error JSON): no token is issued while the
/// attempt cannot be recorded in the audit trail. `cause` goes to the log only: the database's
/// own words (relation names) are no business of an unauthenticated client.
fn oauth_unavailable(cause: &str) -> HttpResponse {
    tracing::error!(error = %cause, "token request not answered: audit trail unavailable");
    oauth_error(
        StatusCode::SERVICE_UNAVAILABLE,
        &renkei_auth::AuthError::new(
            renkei_auth::ErrorCode::TemporarilyUnavailable,
            "the token request cannot be recorded in the audit trail now; try again later",
        ),
        None,
    )
}

/// An OAuth error answer (RFC 6749 §5.2): its JSON, never cached. A 401 to a client that
/// authenticated through the Authorization header names the scheme it used (`scheme`).
fn oauth_error(
    status: StatusCode,
    error: &renkei_auth::AuthError,
    scheme: Option<&str>,
) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.insert_header((header::CACHE_CONTROL, "no-store"));
    if let (StatusCode::UNAUTHORIZED, Some(scheme)) = (status, scheme) {
        response.insert_header((
            header::WWW_AUTHENTICATE,
            format!("{scheme} realm=\"renkei\""),
        ));
    }
    response
        .content_type("application/json")
        .json(error.to_json())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn a_basic_credential_names_the_client_it_claims() {
        use base64::Engine;
        let basic = |text: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(text)
            )
        };
        assert_eq!(
            claimed_client(&[], Some(&basic("clinic-b:secret"))).as_deref(),
            Some("clinic-b")
        );
        assert_eq!(
            claimed_client(&[], Some(&basic("a%20b+c:x"))).as_deref(),
            Some("a b c")
        );
        assert_eq!(claimed_client(&[], Some("Bearer abc")), None);
        assert_eq!(claimed_client(&[], Some("Basic !!!")), None);
        assert_eq!(claimed_client(&[], Some(&basic(":secret"))), None);
        let long = "b".repeat(60_000);
        let recorded = claimed_client(&[], Some(&basic(&format!("{long}:x")))).unwrap();
        assert_eq!(recorded.chars().count(), MAX_RECORDED_CLAIM_CHARS + 1);
        assert!(recorded.ends_with('…'));
        assert_eq!(
            claimed_client(&[], Some(&basic("evil%0Aid%00x:pw"))).as_deref(),
            Some("evil\u{FFFD}id\u{FFFD}x")
        );
        let form = [("client_id".to_string(), "from-form".to_string())];
        assert_eq!(
            claimed_client(&form, Some(&basic("clinic-b:secret"))).as_deref(),
            Some("from-form")
        );
    }

    /// A registration set holding one client named after the read that found it.
    fn registrations(read: usize) -> HashMap<String, ClientRegistration> {
        let client_id = format!("read-{read}");
        let registration: ClientRegistration = serde_json::from_value(serde_json::json!({
            "client_id": client_id,
            "organization": "Organization/o",
        }))
        .unwrap();
        HashMap::from([(client_id, registration)])
    }

    /// A database read that takes `delay` on the thread it runs on and counts itself.
    fn load(
        reads: &Arc<AtomicUsize>,
        delay: Duration,
        fail: bool,
    ) -> impl FnOnce() -> Result<HashMap<String, ClientRegistration>, String> + Send + 'static {
        let reads = reads.clone();
        move || {
            std::thread::sleep(delay);
            let read = reads.fetch_add(1, Ordering::SeqCst) + 1;
            if fail {
                return Err("no connection".to_string());
            }
            Ok(registrations(read))
        }
    }

    #[actix_web::test]
    async fn the_registrations_are_read_off_the_event_loop() {
        let directory = ClientDirectory::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let began = Instant::now();
        // On the single-threaded test runtime a read on the event loop would hold the timer
        // back until the read is over.
        let timer = async {
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            began.elapsed()
        };
        let (read, timer_done) = futures_util::future::join(
            directory.current_with(false, load(&reads, Duration::from_millis(400), false)),
            timer,
        )
        .await;
        assert!(read.unwrap().0.contains_key("read-1"));
        assert!(timer_done < Duration::from_millis(300), "{timer_done:?}");
    }

    #[actix_web::test]
    async fn stale_requests_wait_for_one_refresh_and_share_it() {
        let directory = ClientDirectory::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let answers = futures_util::future::join_all((0..8).map(|_| {
            directory.current_with(false, load(&reads, Duration::from_millis(100), false))
        }))
        .await;
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // The others arrived after that read began: theirs is no read of their own, so a
        // token it does not grant would still be looked up again (`fresh`).
        let just_read: Vec<bool> = answers
            .into_iter()
            .map(|answer| {
                let (clients, just_read) = answer.unwrap();
                assert!(clients.contains_key("read-1"));
                just_read
            })
            .collect();
        assert!(just_read[0]);
        // Within CLIENTS_REFRESH the copy answers without a read.
        let (clients, just_read) = directory
            .current_with(false, load(&reads, Duration::ZERO, false))
            .await
            .unwrap();
        assert!(clients.contains_key("read-1") && !just_read);
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // `fresh` reads again however young the copy is.
        let (clients, just_read) = directory
            .current_with(true, load(&reads, Duration::ZERO, false))
            .await
            .unwrap();
        assert!(clients.contains_key("read-2") && just_read);
    }

    #[actix_web::test]
    async fn a_fresh_request_takes_only_a_read_that_began_after_it() {
        let directory = ClientDirectory::default();
        let reads = Arc::new(AtomicUsize::new(0));
        // The second arrives while the first one's read is under way: a client registered
        // a moment before it may be missing from that read.
        let (first, fresh) = futures_util::future::join(
            directory.current_with(false, load(&reads, Duration::from_millis(100), false)),
            directory.current_with(true, load(&reads, Duration::ZERO, false)),
        )
        .await;
        assert!(first.unwrap().0.contains_key("read-1"));
        let (clients, just_read) = fresh.unwrap();
        assert!(clients.contains_key("read-2") && just_read);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[actix_web::test]
    async fn a_copy_older_than_the_refresh_interval_is_never_used() {
        let directory = ClientDirectory::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let old = Instant::now()
            .checked_sub(CLIENTS_REFRESH + Duration::from_millis(1))
            .unwrap();
        *directory.cached.write().unwrap() = Some((old, Arc::new(registrations(0))));
        // A removal the stale copy does not know of must show, even when the read is slow
        // and other requests arrive meanwhile.
        let answers = futures_util::future::join_all((0..3).map(|_| {
            directory.current_with(false, load(&reads, Duration::from_millis(100), false))
        }))
        .await;
        for answer in answers {
            let (clients, _) = answer.unwrap();
            assert!(!clients.contains_key("read-0"));
            assert!(clients.contains_key("read-1"));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[actix_web::test]
    async fn a_failed_read_answers_503_to_the_requests_that_waited_for_it() {
        let directory = ClientDirectory::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let answers = futures_util::future::join_all((0..4).map(|_| {
            directory.current_with(false, load(&reads, Duration::from_millis(100), true))
        }))
        .await;
        // One read, not one per waiting request in turn.
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        for answer in answers {
            let error = answer.unwrap_err();
            assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
            let outcome = error.outcome();
            assert_eq!(outcome["resourceType"], "OperationOutcome");
            assert_eq!(outcome["issue"][0]["code"], "transient");
        }
        // A request arriving after the failure tries again.
        let (clients, just_read) = directory
            .current_with(false, load(&reads, Duration::ZERO, false))
            .await
            .unwrap();
        assert!(clients.contains_key("read-2") && just_read);
    }
}

//! Access tokens the gateway issues to itself-verify: ES384 JWTs, `typ: at+jwt`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::AuthError;
use crate::keys::{ServerKey, VERIFIED_CACHE_CAPACITY};
use crate::registration::{check_reference, normalize_fingerprint, ClientRegistration, Role};
use crate::scopes::{GrantedScopes, ScopeContext, Scopes};

/// `iss` of every access token.
pub const ISSUER: &str = "renkei";
/// JOSE `typ` of access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Longest accepted lifetime for an access token (one day).
pub const MAX_TOKEN_TTL_SECONDS: u64 = 86_400;
/// Clock skew tolerated when checking `exp`/`iat` of access tokens.
pub const ACCESS_TOKEN_LEEWAY_SECONDS: i64 = 5;
/// Longer tokens are rejected before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// RFC 8705 confirmation claim: the token is bound to a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url(SHA-256(certificate DER)).
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The verified content of an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The client id.
    pub sub: String,
    /// The audience ([`ServerKey::audience`]).
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issue time, seconds since the epoch.
    pub iat: i64,
    /// Unique token id (UUID v4).
    pub jti: String,
    /// The client's facility, `Organization/X`.
    pub organization: String,
    /// The client's role.
    pub role: Role,
    /// Patient context (`Patient/P`) for patient-role clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The practitioner the client acts for (`Practitioner/X`).
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// Granted SMART v2 scopes (a space-separated string on the wire).
    pub scope: Scopes,
    /// Allowed purposes of use (`TREAT`, plus `ETREAT` when break-glass is allowed).
    pub purposes: Vec<String>,
    /// May this client break the glass?
    pub break_glass: bool,
    /// Certificate binding (present when the client registered a certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// The registration it was issued under: when the store recorded it, in milliseconds
    /// ([`ClientRegistration::registered_at`]).
    #[serde(rename = "reg", default)]
    pub registration: i64,
}

impl Confirmation {
    /// The binding to the certificate whose SHA-256 fingerprint (hex, as operators register
    /// it) is `fingerprint`.
    pub fn of_fingerprint(fingerprint: &str) -> Result<Confirmation, AuthError> {
        let hex = normalize_fingerprint(fingerprint)?;
        let mut raw = Vec::with_capacity(32);
        for i in (0..hex.len()).step_by(2) {
            let byte = hex
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| AuthError::server("bad certificate fingerprint"))?;
            raw.push(byte);
        }
        Ok(Confirmation {
            x5t_s256: B64URL.encode(raw),
        })
    }
}

impl AccessClaims {
    /// The client id (`sub`).
    pub fn client_id(&self) -> &str {
        &self.sub
    }

    /// True when `purpose` (e.g. from `X-Purpose-Of-Use`) is allowed.
    pub fn allows_purpose(&self, purpose: &str) -> bool {
        self.purposes.iter().any(|p| p == purpose)
    }

    /// mTLS binding check for a request carrying this token. A token with `cnf`
    /// needs the very certificate it was bound to; a token without `cnf` accepts
    /// any (or no) certificate — the TLS layer already checked the chain.
    pub fn check_certificate(&self, presented_cert_der: Option<&[u8]>) -> Result<(), AuthError> {
        let Some(cnf) = &self.cnf else {
            return Ok(());
        };
        match presented_cert_der {
            Some(der) if B64URL.encode(Sha256::digest(der)) == cnf.x5t_s256 => Ok(()),
            Some(_) => Err(AuthError::invalid_token(
                "token is bound to a different client certificate",
            )),
            None => Err(AuthError::invalid_token(
                "token is bound to a client certificate; present it over mutual TLS",
            )),
        }
    }
}

/// Issues an access token for `client`.
///
/// * `requested_scope`: space-separated SMART scopes; `None` (or blank) grants
///   everything registered. Each requested scope is intersected with the
///   registered ones; one with no overlap is `invalid_scope`.
/// * `practitioner`: the `fhirUser` to act for (`Practitioner/X` or
///   `PractitionerRole/X`); must equal the registration's practitioner when it
///   has one; defaults to it.
/// * `ttl_seconds`: 1 ..= [`MAX_TOKEN_TTL_SECONDS`].
///
/// Returns the compact JWT and the granted scopes (for the `scope` response field).
pub fn issue_access_token(
    key: &ServerKey,
    client: &ClientRegistration,
    requested_scope: Option<&str>,
    practitioner: Option<&str>,
    ttl_seconds: u64,
    now: DateTime<Utc>,
) -> Result<(String, GrantedScopes), AuthError> {
    if ttl_seconds == 0 || ttl_seconds > MAX_TOKEN_TTL_SECONDS {
        return Err(AuthError::invalid_request(format!(
            "token lifetime must be 1..={MAX_TOKEN_TTL_SECONDS} seconds"
        )));
    }
    let registered = client.parsed_scopes().map_err(|e| {
        AuthError::server(format!(
            "registration of '{}': {}",
            client.client_id, e.description
        ))
    })?;
    let granted = match requested_scope.map(str::trim).filter(|s| !s.is_empty()) {
        Some(req) => registered.grant(&Scopes::parse(req)?)?,
        None => registered,
    };
    if granted.is_empty() {
        return Err(AuthError::invalid_scope(format!(
            "client '{}' has no scopes registered",
            client.client_id
        )));
    }
    if granted.has_context(ScopeContext::Patient) && client.patient.is_none() {
        return Err(AuthError::invalid_scope(
            "patient/ scopes need a patient context, and this client has none",
        ));
    }
    let fhir_user = match (practitioner, client.practitioner.as_deref()) {
        (Some(asked), Some(fixed)) if asked != fixed => {
            return Err(AuthError::invalid_request(format!(
                "client '{}' is registered to act as {fixed} only",
                client.client_id
            )))
        }
        (Some(asked), _) => {
            check_reference(asked, &["Practitioner", "PractitionerRole"], "practitioner")?;
            Some(asked.to_string())
        }
        (None, fixed) => fixed.map(str::to_string),
    };
    let cnf = client.confirmation()?;
    let iat = now.timestamp();
    let claims = AccessClaims {
        iss: ISSUER.to_string(),
        sub: client.client_id.clone(),
        aud: key.audience().to_string(),
        exp: iat.saturating_add(i64::try_from(ttl_seconds).unwrap_or(i64::MAX)),
        iat,
        jti: uuid::Uuid::new_v4().to_string(),
        organization: client.organization.clone(),
        role: client.role,
        patient: client.patient.clone(),
        fhir_user,
        scope: granted.clone(),
        purposes: client.effective_purposes(),
        break_glass: client.break_glass,
        cnf,
        registration: client.registered_at,
    };
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some(key.kid().to_string());
    header.typ = Some(ACCESS_TOKEN_TYP.to_string());
    let token = jsonwebtoken::encode(&header, &claims, key.encoding_key())
        .map_err(|e| AuthError::server(format!("cannot sign access token: {e}")))?;
    // We just signed it: its first presentation need not pay for ECDSA either.
    remember(key, &token, &claims, iat);
    Ok((token, granted))
}

/// Verifies an access token presented as `Authorization: Bearer …`.
///
/// Checks, in order: size, header (`alg` must be ES384 — `none`, `HS*`, `RS*`
/// and everything else are refused; `typ` must be `at+jwt`; `kid` must be
/// ours), the ECDSA signature, then `iss`, `aud`, `exp` (with
/// [`ACCESS_TOKEN_LEEWAY_SECONDS`]) and `iat` against `now`. Every failure is
/// `invalid_token` (401).
///
/// A token string this key issued or verified before is answered from the
/// key's bounded cache after re-checking its time window, so the ECDSA cost is
/// paid at most once per token (and not at all for tokens issued by this
/// process).
pub fn verify_access_token(
    key: &ServerKey,
    token: &str,
    now: DateTime<Utc>,
) -> Result<AccessClaims, AuthError> {
    let now = now.timestamp();
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::invalid_token("token too long"));
    }
    {
        let cache = match key.verified.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(claims) = cache.get(token) {
            check_time(claims, now)?;
            return Ok(claims.clone());
        }
    }
    let claims = verify_uncached(key, token, now)?;
    remember(key, token, &claims, now);
    Ok(claims)
}

#[cfg(test)]
pub(crate) fn remember_for_test(key: &ServerKey, token: &str, claims: &AccessClaims, now: i64) {
    remember(key, token, claims, now);
}

/// Puts a known-good token in the key's verified-token cache, making room
/// first when it is full: expired entries go, then (if still full) about half
/// of the rest — those simply get verified again on their next use.
fn remember(key: &ServerKey, token: &str, claims: &AccessClaims, now: i64) {
    let mut cache = match key.verified.lock() {
        Ok(c) => c,
        Err(poisoned) => poisoned.into_inner(),
    };
    if cache.len() >= VERIFIED_CACHE_CAPACITY {
        cache.retain(|_, c| c.exp.saturating_add(ACCESS_TOKEN_LEEWAY_SECONDS) >= now);
        if cache.len() >= VERIFIED_CACHE_CAPACITY / 2 {
            let mut n = 0usize;
            cache.retain(|_, _| {
                n += 1;
                n.is_multiple_of(2)
            });
        }
    }
    cache.insert(token.to_string(), claims.clone());
}

/// Like [`verify_access_token`] but never uses or fills the cache (for
/// measuring, and for callers that want the full check every time).
pub fn verify_access_token_uncached(
    key: &ServerKey,
    token: &str,
    now: DateTime<Utc>,
) -> Result<AccessClaims, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::invalid_token("token too long"));
    }
    verify_uncached(key, token, now.timestamp())
}

fn verify_uncached(key: &ServerKey, token: &str, now: i64) -> Result<AccessClaims, AuthError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| AuthError::invalid_token("malformed token"))?;
    if header.alg != Algorithm::ES384 {
        return Err(AuthError::invalid_token("token algorithm not accepted"));
    }
    if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
        return Err(AuthError::invalid_token("not an access token (typ)"));
    }
    if header.kid.as_deref() != Some(key.kid()) {
        return Err(AuthError::invalid_token(
            "token was not signed by this server's current key",
        ));
    }
    let mut validation = Validation::new(Algorithm::ES384);
    // Time, issuer and audience are checked below against the caller's `now`.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<AccessClaims>(token, key.decoding_key(), &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                AuthError::invalid_token("bad token signature")
            }
            _ => AuthError::invalid_token("malformed token"),
        })?;
    let claims = data.claims;
    if claims.iss != ISSUER {
        return Err(AuthError::invalid_token("wrong token issuer"));
    }
    if claims.aud != key.audience() {
        return Err(AuthError::invalid_token("token is for another audience"));
    }
    check_time(&claims, now)?;
    Ok(claims)
}

fn check_time(claims: &AccessClaims, now: i64) -> Result<(), AuthError> {
    if claims.exp.saturating_add(ACCESS_TOKEN_LEEWAY_SECONDS) < now {
        return Err(AuthError::invalid_token("token expired"));
    }
    if claims.iat.saturating_sub(ACCESS_TOKEN_LEEWAY_SECONDS) > now {
        return Err(AuthError::invalid_token("token issued in the future"));
    }
    Ok(())
}

//! Who is asking: client registrations, SMART Backend Services client
//! authentication, and the gateway's own access tokens. Pure logic — no IO,
//! no async; the caller passes in time, stored registrations and a replay check.
//!
//! # Token model
//!
//! 1. An operator registers a client ([`ClientRegistration`]): its facility
//!    (`Organization/X`), [`Role`], optional patient/practitioner, SMART v2
//!    scopes, public JWKS, break-glass permission, purposes of use and,
//!    optionally, the SHA-256 fingerprint of its TLS client certificate.
//! 2. The client authenticates at `POST /auth/token` with a JWT *client
//!    assertion* (RFC 7523, `private_key_jwt`) signed by a key in its JWKS
//!    (ES384/RS384, also ES256/RS256): [`verify_client_assertion`], or the
//!    whole exchange in one call with [`TokenEndpoint::handle`].
//! 3. The gateway answers with its own *access token*: a compact JWT, `typ`
//!    `at+jwt`, signed ES384 by the [`ServerKey`] (`kid` = RFC 7638
//!    thumbprint), carrying `iss` `renkei`, `sub` client id, `aud`, `exp`,
//!    `iat`, `jti` and the authorisation context: `organization`, `role`,
//!    `patient`, `fhirUser`, `scope` (what was requested ∩ what is registered),
//!    `purposes`, `break_glass`, and `cnf.x5t#S256` when the client is bound
//!    to a certificate (RFC 8705). Operators mint the same tokens directly
//!    with [`issue_access_token`] (`renkei token`).
//! 4. Every API request presents it as `Authorization: Bearer …`;
//!    [`verify_access_token`] pins ES384 and the server's `kid` (so `none`,
//!    `HS*` and key-confusion tokens fail), checks the signature, `iss`, `aud`
//!    and `exp`/`iat` with a 5 s leeway, and returns typed [`AccessClaims`]
//!    whose [`Scopes`] answer `allows(resource_type, Action)`.
//!
//! The token only says *who* is asking and what they may ask for; whether a
//! given patient's data may be shown is decided per request from the
//! patient's Consent resources, never from the token. Tokens are stateless:
//! removing a client stops new tokens at once, existing ones die at `exp`
//! (keep TTLs short — the default should be minutes, at most a day).
//!
//! Verification cost: a full ES384 verification is several hundred
//! microseconds of pure-Rust ECDSA, so the [`ServerKey`] remembers the tokens
//! it has issued or verified (bounded, keyed by the exact token string, time
//! window re-checked on each use): a token issued by this process, or
//! presented before, verifies in well under a microsecond. Only a token from
//! before a restart (or from another node sharing the key) pays the ECDSA
//! cost, once.
//!
//! # Example
//!
//! ```
//! use renkei_auth::*;
//!
//! # fn main() -> Result<(), AuthError> {
//! let now = chrono::Utc::now();
//! let token_url = "https://gateway.example/auth/token";
//! let server_key = ServerKey::generate(); // persist with to_pkcs8_pem()
//!
//! // `renkei client add --id clinic-a --organization Organization/clinic-a …`
//! let (client_private_pem, client_jwks) = generate_client_key_es384(Some("key-1"))?;
//! let mut client = ClientRegistration::new("clinic-a", "Organization/clinic-a");
//! client.scopes = vec!["system/*.rs".into()];
//! client.jwks = Some(client_jwks);
//! client.validate()?;
//!
//! // The client's side of SMART Backend Services.
//! let assertion = sign_client_assertion(&client_private_pem, "key-1", "clinic-a", token_url, now)?;
//!
//! // POST /auth/token
//! let endpoint = TokenEndpoint {
//!     key: &server_key,
//!     token_urls: &[token_url],
//!     ttl_seconds: 300,
//!     now,
//!     client_cert_der: None,
//! };
//! let form = [
//!     ("grant_type", "client_credentials"),
//!     ("client_assertion_type", CLIENT_ASSERTION_TYPE),
//!     ("client_assertion", assertion.as_str()),
//!     ("scope", "system/Observation.rs"),
//! ];
//! let lookup = |id: &str| (id == "clinic-a").then(|| client.clone());
//! let replay_store = std::sync::Mutex::new(std::collections::HashSet::new());
//! let seen = |client: &str, jti: &str| match replay_store.lock() {
//!     Ok(mut s) => !s.insert((client.to_string(), jti.to_string())),
//!     Err(_) => true,
//! };
//! let grant = endpoint.handle(form, &lookup, &seen)?;
//! assert_eq!(grant.response["scope"], "system/Observation.rs");
//!
//! // Every API request: Authorization: Bearer <access_token>
//! let bearer = grant.response["access_token"].as_str().unwrap_or_default();
//! let claims = verify_access_token(&server_key, bearer, now)?;
//! assert_eq!(claims.organization, "Organization/clinic-a");
//! assert!(claims.scope.allows("Observation", Action::Search));
//! assert!(!claims.scope.allows("Patient", Action::Read));
//! # Ok(())
//! # }
//! ```
//!
//! Errors are [`AuthError`]s carrying an OAuth error code ([`ErrorCode`]) and
//! a description, with helpers for the JSON body, HTTP status and
//! `WWW-Authenticate` header.

mod access;
mod assertion;
mod endpoint;
mod error;
mod keys;
mod registration;
mod scopes;
mod sealing;

pub use access::{
    issue_access_token, verify_access_token, verify_access_token_uncached, AccessClaims,
    Confirmation, ACCESS_TOKEN_LEEWAY_SECONDS, ACCESS_TOKEN_TYP, ISSUER, MAX_TOKEN_LEN,
    MAX_TOKEN_TTL_SECONDS,
};
pub use assertion::{
    assertion_client_id, generate_client_key_es384, sign_client_assertion, sign_jwt_with,
    verify_client_assertion, VerifiedAssertion, ASSERTION_ALGORITHMS, ASSERTION_CLOCK_SKEW_SECONDS,
    CLIENT_ASSERTION_TYPE, MAX_ASSERTION_LIFETIME_SECONDS,
};
pub use endpoint::{
    smart_configuration, smart_configuration_with_jwks, token_endpoint_response, TokenEndpoint,
    TokenGrant, TokenRequest,
};
pub use error::{www_authenticate_missing, AuthError, ErrorCode};
pub use keys::{ServerKey, DEFAULT_AUDIENCE};
pub use registration::{
    cert_fingerprint, check_reference, normalize_fingerprint, ClientRegistration, Role,
    PURPOSE_ETREAT, PURPOSE_TREAT,
};
pub use scopes::{Action, GrantedScopes, Permissions, Scope, ScopeContext, Scopes};
pub use sealing::TokenSealer;

#[cfg(test)]
mod tests;

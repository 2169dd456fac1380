//! The token endpoint (`POST /auth/token`) and `/.well-known/smart-configuration`.

use chrono::{DateTime, Utc};

use crate::access::issue_access_token;
use crate::assertion::{
    assertion_client_id, verify_client_assertion_for, VerifiedAssertion, ASSERTION_ALGORITHMS,
    CLIENT_ASSERTION_TYPE,
};
use crate::error::AuthError;
use crate::keys::ServerKey;
use crate::registration::ClientRegistration;
use crate::scopes::{printable, Scopes};

/// The parameters of a client-credentials token request (already
/// form-url-decoded by the HTTP layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The RFC 7523 client assertion (a JWT).
    pub client_assertion: String,
    /// Requested scopes, if any.
    pub scope: Option<String>,
    /// `client_id`, when the client sent one: it must name the assertion's client
    /// (RFC 7521 §4.2).
    pub client_id: Option<String>,
}

impl TokenRequest {
    /// Validates the form parameters: `grant_type=client_credentials`
    /// (`unsupported_grant_type` otherwise, `invalid_request` when missing),
    /// `client_assertion_type` = [`CLIENT_ASSERTION_TYPE`] (`invalid_request`),
    /// `client_assertion` present (`invalid_client`), optional `scope`.
    /// A repeated parameter is `invalid_request` (RFC 6749 §3.2).
    pub fn from_form<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<TokenRequest, AuthError> {
        let mut grant_type = None;
        let mut assertion_type = None;
        let mut assertion = None;
        let mut scope = None;
        let mut client_id = None;
        for (name, value) in params {
            let slot = match name {
                "grant_type" => &mut grant_type,
                "client_assertion_type" => &mut assertion_type,
                "client_assertion" => &mut assertion,
                "scope" => &mut scope,
                "client_id" => &mut client_id,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(AuthError::invalid_request(format!(
                    "parameter '{}' given more than once",
                    printable(name)
                )));
            }
        }
        match grant_type {
            None => return Err(AuthError::invalid_request("missing grant_type")),
            Some("client_credentials") => {}
            Some(other) => {
                return Err(AuthError::new(
                    crate::ErrorCode::UnsupportedGrantType,
                    format!(
                        "grant_type '{}' is not supported (use client_credentials)",
                        printable(other)
                    ),
                ))
            }
        }
        let Some(assertion) = assertion.filter(|a| !a.is_empty()) else {
            return Err(AuthError::invalid_client(
                "client authentication required: client_assertion (private_key_jwt)",
            ));
        };
        if assertion_type != Some(CLIENT_ASSERTION_TYPE) {
            return Err(AuthError::invalid_request(format!(
                "client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
            )));
        }
        Ok(TokenRequest {
            client_assertion: assertion.to_string(),
            scope: scope.map(str::to_string),
            client_id: client_id.map(str::to_string),
        })
    }
}

/// Everything the token endpoint needs besides the request itself.
pub struct TokenEndpoint<'a> {
    /// The server signing key.
    pub key: &'a ServerKey,
    /// The token endpoint's absolute URLs, from the server's configuration: an assertion's
    /// `aud` must name one of them (RFC 7523 §3). Never derived from the request's `Host`.
    /// Empty: no assertion is accepted.
    pub token_urls: &'a [&'a str],
    /// Lifetime of issued tokens, seconds.
    pub ttl_seconds: u64,
    /// The current time.
    pub now: DateTime<Utc>,
    /// DER of the TLS client certificate, when one was presented.
    pub client_cert_der: Option<&'a [u8]>,
}

/// A successful token-endpoint exchange.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// The JSON body to answer with (HTTP 200, `Cache-Control: no-store`).
    pub response: serde_json::Value,
    /// The authenticated assertion (its `jti`/`exp` for the replay store, client id for audit).
    pub assertion: VerifiedAssertion,
}

impl TokenEndpoint<'_> {
    /// Runs a whole client-credentials exchange: form checks, client lookup
    /// (by the assertion's unverified `iss`, via `lookup`), assertion
    /// verification, mTLS binding (a registered certificate fingerprint
    /// requires the same certificate on this connection), scope grant,
    /// token issuance. An unknown client is `invalid_client`. `seen_jti(client_id, jti)`
    /// answers whether that client used that assertion id before (and records it).
    pub fn handle<'p>(
        &self,
        params: impl IntoIterator<Item = (&'p str, &'p str)>,
        lookup: &dyn Fn(&str) -> Option<ClientRegistration>,
        seen_jti: &dyn Fn(&str, &str) -> bool,
    ) -> Result<TokenGrant, AuthError> {
        let request = TokenRequest::from_form(params)?;
        let client_id = assertion_client_id(&request.client_assertion)?;
        if request
            .client_id
            .as_deref()
            .is_some_and(|named| named != client_id)
        {
            return Err(AuthError::invalid_client(
                "client_id names another client than the client_assertion",
            ));
        }
        // An unknown client is answered as a registered one without that key.
        let client = lookup(&client_id).ok_or_else(|| {
            match jsonwebtoken::decode_header(&request.client_assertion)
                .ok()
                .and_then(|header| header.kid)
            {
                Some(kid) => crate::assertion::no_registered_key(&kid, &client_id),
                None => AuthError::invalid_client("client assertion header has no 'kid'"),
            }
        })?;
        // A jti is unique per issuer (RFC 7519 §4.1.7): the replay check is per client, so
        // one client's ids can neither collide with nor block another's.
        let assertion = verify_client_assertion_for(
            &request.client_assertion,
            &client,
            self.token_urls,
            self.now,
            &|jti| seen_jti(&client.client_id, jti),
        )?;
        if client.cert_fingerprint.is_some() {
            match self.client_cert_der {
                Some(der) if client.matches_certificate(der) => {}
                Some(_) => {
                    return Err(AuthError::invalid_client(
                        "TLS client certificate does not match the client's registration",
                    ))
                }
                None => {
                    return Err(AuthError::invalid_client(
                        "this client must authenticate with its TLS client certificate",
                    ))
                }
            }
        }
        let (token, granted) = issue_access_token(
            self.key,
            &client,
            request.scope.as_deref(),
            None,
            self.ttl_seconds,
            self.now,
        )?;
        Ok(TokenGrant {
            response: token_endpoint_response(&token, &granted, self.ttl_seconds),
            assertion,
        })
    }
}

/// The OAuth token response body:
/// `{"access_token", "token_type": "bearer", "expires_in", "scope"}`.
pub fn token_endpoint_response(
    access_token: &str,
    granted: &Scopes,
    expires_in: u64,
) -> serde_json::Value {
    serde_json::json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": expires_in,
        "scope": granted.to_string(),
    })
}

/// The `/.well-known/smart-configuration` document (SMART App Launch 2.x §
/// "Conformance"), for Backend Services with asymmetric client authentication.
/// A relative `token_url` (starting with `/`) is appended to `base_url`.
pub fn smart_configuration(base_url: &str, token_url: &str) -> serde_json::Value {
    // `issuer` belongs to sso-openid-connect servers only, so it is omitted.
    let token_endpoint = if token_url.starts_with('/') {
        format!("{}{token_url}", base_url.trim_end_matches('/'))
    } else {
        token_url.to_string()
    };
    serde_json::json!({
        "token_endpoint": token_endpoint,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": [
            "system/*.cruds", "system/*.rs",
            "user/*.cruds", "user/*.rs",
            "patient/*.rs",
        ],
        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
    })
}

/// [`smart_configuration`] plus `jwks_uri` (where [`ServerKey::public_jwks`] is served).
pub fn smart_configuration_with_jwks(
    base_url: &str,
    token_url: &str,
    jwks_uri: &str,
) -> serde_json::Value {
    let mut doc = smart_configuration(base_url, token_url);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
            "jwks_uri".into(),
            serde_json::Value::String(jwks_uri.into()),
        );
    }
    doc
}

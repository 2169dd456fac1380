//! OAuth 2.0 / RFC 6750 error codes and the crate's single error type.

use std::fmt;

/// The OAuth error code carried by an [`AuthError`].
///
/// The token-endpoint codes come from RFC 6749 §5.2; `invalid_token` and
/// `insufficient_scope` from RFC 6750 §3.1 (bearer token use at the FHIR API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed request (missing/duplicated parameter, bad value).
    InvalidRequest,
    /// Client authentication failed (unknown client, bad assertion, bad key, replay, mTLS mismatch).
    InvalidClient,
    /// The grant is invalid (reserved for grant problems other than client authentication).
    InvalidGrant,
    /// A requested scope is malformed or exceeds what the client is registered for.
    InvalidScope,
    /// `grant_type` other than `client_credentials`.
    UnsupportedGrantType,
    /// Bearer token missing, malformed, expired, or not signed by this server.
    InvalidToken,
    /// Token is valid but its scopes do not allow the request.
    InsufficientScope,
    /// Server-side key or configuration problem (not the client's fault).
    ServerError,
    /// The server cannot answer now (its database or audit trail is unavailable); the client
    /// may try again later.
    TemporarilyUnavailable,
}

impl ErrorCode {
    /// The wire spelling, e.g. `"invalid_client"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InsufficientScope => "insufficient_scope",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    /// The HTTP status to answer with: 401 for `invalid_client`/`invalid_token`,
    /// 403 for `insufficient_scope`, 500 for `server_error`, 503 for
    /// `temporarily_unavailable`, 400 otherwise.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidClient | ErrorCode::InvalidToken => 401,
            ErrorCode::InsufficientScope => 403,
            ErrorCode::ServerError => 500,
            ErrorCode::TemporarilyUnavailable => 503,
            _ => 400,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every failure of this crate: an OAuth error code plus a human description.
///
/// Descriptions never echo secrets; they may name a client id, scope or claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct AuthError {
    /// The OAuth error code.
    pub code: ErrorCode,
    /// Human-readable `error_description`.
    pub description: String,
}

impl AuthError {
    /// Builds an error from a code and description.
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        AuthError {
            code,
            description: description.into(),
        }
    }

    pub(crate) fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, d)
    }
    pub(crate) fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidClient, d)
    }
    pub(crate) fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidScope, d)
    }
    pub(crate) fn invalid_token(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidToken, d)
    }
    pub(crate) fn server(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::ServerError, d)
    }

    /// HTTP status for this error (see [`ErrorCode::http_status`]).
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    /// The OAuth JSON error body: `{"error": …, "error_description": …}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.code.as_str(),
            "error_description": self.description,
        })
    }

    /// A `WWW-Authenticate` header value for a 401/403 at the FHIR API
    /// (RFC 6750 §3), e.g. `Bearer realm="renkei", error="invalid_token", error_description="…"`.
    pub fn www_authenticate(&self, realm: &str) -> String {
        format!(
            "Bearer realm=\"{}\", error=\"{}\", error_description=\"{}\"",
            header_safe(realm),
            self.code.as_str(),
            header_safe(&self.description)
        )
    }
}

/// `WWW-Authenticate` for a request that carried no token at all (RFC 6750 §3.1:
/// no error code in that case).
pub fn www_authenticate_missing(realm: &str) -> String {
    format!("Bearer realm=\"{}\"", header_safe(realm))
}

/// Keeps a header quoted-string safe: printable ASCII only, no `"` or `\`.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect()
}

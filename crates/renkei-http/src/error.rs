//! The one place where errors become HTTP statuses and OperationOutcomes.

use crate::format::{render_value, Format};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use renkei_repository::{status_of, RepoError};
use serde_json::{json, Value};

/// An error answered to the client, already rendered in its negotiated format.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Repo(#[from] RepoError),

    /// An error the gate already recorded in the audit trail.
    #[error(transparent)]
    Audited(Box<ApiError>),
    #[error("{message}")]
    Http {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Http {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// Whether the audit trail already holds this failure.
    pub fn is_audited(&self) -> bool {
        matches!(self, ApiError::Audited(_))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Audited(inner) => inner.status(),
            ApiError::Repo(e) => {
                let (line, _) = status_of(e.root());
                line.split(' ')
                    .next()
                    .and_then(|code| code.parse::<u16>().ok())
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ApiError::Http { status, .. } => *status,
        }
    }

    /// The OperationOutcome describing this error. Server faults get a generic text; their
    /// cause goes to the log only.
    pub fn outcome(&self) -> Value {
        match self {
            ApiError::Audited(inner) => inner.outcome(),
            ApiError::Repo(e) => {
                let root = e.root();
                if let RepoError::Invalid(content) = root {
                    let prefix = match e {
                        RepoError::Entry { index, request, .. } => {
                            format!("transaction entry {index} ({request}): ")
                        }
                        _ => String::new(),
                    };
                    let issues: Vec<Value> = content
                        .issues
                        .iter()
                        .map(|issue| renkei_fhir::issue_json(issue, &prefix))
                        .collect();
                    return json!({"resourceType": "OperationOutcome", "issue": issues});
                }
                let (_, code) = status_of(root);
                let message = if self.status().is_server_error() {
                    tracing::error!(error = %e, "request failed");
                    "the server could not complete the request; it has been logged".to_string()
                } else {
                    e.to_string()
                };
                outcome("error", code, &message)
            }
            ApiError::Http { code, message, .. } => outcome("error", code, message),
        }
    }

    pub fn respond(&self, format: Format, pretty: bool) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status());
        let unwrapped = match self {
            ApiError::Audited(inner) => inner,
            other => other,
        };
        if let ApiError::Http { status, .. } = unwrapped {
            if *status == StatusCode::UNAUTHORIZED {
                builder.insert_header(("WWW-Authenticate", "Bearer"));
            }
        }
        render_value(builder, &self.outcome(), format, pretty)
    }
}

impl From<renkei_access::AccessError> for ApiError {
    fn from(error: renkei_access::AccessError) -> Self {
        use renkei_access::AccessError;
        let inner = match error {
            AccessError::Repo(e) => ApiError::Repo(e),
            AccessError::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            AccessError::MethodNotAllowed(message) => {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", message)
            }
            AccessError::UnreadableAudit { seq, reason } => {
                tracing::error!(seq, %reason, "stored audit record cannot be read");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    format!("audit record {seq} cannot be read; an operator should run `renkei audit verify`"),
                )
            }
            AccessError::AuditUnavailable(message) => {
                tracing::error!(%message, "audit trail unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "the audit trail cannot be written, so no data is returned; try again later",
                )
            }
        };
        ApiError::Audited(Box::new(inner))
    }
}

/// An actix extractor's refusal (a path, query, JSON or form it cannot read) as an
/// OperationOutcome in the request's format, with the status actix gives it: actix's own
/// answer is plain text, which a FHIR client cannot read as an error.
pub(crate) fn extractor_error<E>(error: E, req: &actix_web::HttpRequest) -> actix_web::Error
where
    E: actix_web::ResponseError + std::fmt::Debug + std::fmt::Display + 'static,
{
    let status = error.status_code();
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not-found", error.to_string()),
        StatusCode::PAYLOAD_TOO_LARGE => ("too-costly", error.to_string()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("not-supported", error.to_string()),
        status if status.is_server_error() => {
            tracing::error!(error = %error, "request could not be read");
            (
                "exception",
                "the server could not read the request; it has been logged".into(),
            )
        }
        _ => ("invalid", error.to_string()),
    };
    let response =
        ApiError::new(status, code, message).respond(crate::request::error_format(req), false);
    actix_web::error::InternalError::from_response(error, response).into()
}

pub fn outcome(severity: &str, code: &str, message: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}]
    })
}

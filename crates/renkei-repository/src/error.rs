use renkei_fhir::ContentError;
use renkei_store::StoreError;
use thiserror::Error;

/// Everything an interaction can fail with. The HTTP edge maps each variant to a status and
/// an OperationOutcome exactly once.
#[derive(Debug, Error)]
pub enum RepoError {
    #[error("{0}")]
    Invalid(#[from] ContentError),
    #[error("{0}")]
    BadRequest(String),
    #[error("resource type '{0}' is not a FHIR R4 resource type")]
    UnknownType(String),
    /// A resource type that exists but is not stored or served RESTfully (`Parameters`:
    /// R4 parameters.html, it only carries the parameters of operations).
    #[error("{0} has no REST endpoint: it only carries the parameters of operations")]
    NoRestEndpoint(String),
    #[error("{res_type}/{id} is not known")]
    NotFound { res_type: String, id: String },
    #[error("{res_type}/{id} has no version {version}")]
    VersionNotFound {
        res_type: String,
        id: String,
        version: String,
    },
    #[error("{res_type}/{id} was deleted (version {version})")]
    Gone {
        res_type: String,
        id: String,
        version: i64,
    },
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotSupported(String),
    /// A search beyond one of the search limits (the message names it).
    #[error("{0}")]
    TooCostly(String),
    #[error("transaction entry {index} ({request}) failed: {source}")]
    Entry {
        index: usize,
        request: String,
        source: Box<RepoError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RepoError {
    /// The error that decides the status: a failed transaction entry answers with its own.
    pub fn root(&self) -> &RepoError {
        match self {
            RepoError::Entry { source, .. } => source.root(),
            other => other,
        }
    }
}

/// The HTTP status line and FHIR issue code of an error: the one table both the HTTP edge and
/// batch responses use.
pub fn status_of(error: &RepoError) -> (&'static str, &'static str) {
    match error {
        RepoError::Invalid(_) => ("400 Bad Request", "structure"),
        RepoError::BadRequest(_) => ("400 Bad Request", "invalid"),
        RepoError::UnknownType(_) | RepoError::NoRestEndpoint(_) => {
            ("404 Not Found", "not-supported")
        }
        RepoError::NotFound { .. } | RepoError::VersionNotFound { .. } => {
            ("404 Not Found", "not-found")
        }
        RepoError::Gone { .. } => ("410 Gone", "deleted"),
        RepoError::PreconditionFailed(_) => ("412 Precondition Failed", "conflict"),
        RepoError::Unprocessable(_) => ("422 Unprocessable Entity", "processing"),
        RepoError::Conflict(_) => ("409 Conflict", "conflict"),
        RepoError::Forbidden(_) => ("403 Forbidden", "forbidden"),
        RepoError::NotSupported(_) => ("400 Bad Request", "not-supported"),
        RepoError::TooCostly(_) => ("400 Bad Request", "too-costly"),
        RepoError::Entry { source, .. } => status_of(source),
        RepoError::Store(StoreError::Unavailable(_)) => ("503 Service Unavailable", "transient"),
        RepoError::Store(e) if e.is_connection_lost() => ("503 Service Unavailable", "transient"),
        RepoError::Store(StoreError::UnknownValueSet(_)) => ("400 Bad Request", "not-found"),
        RepoError::Store(StoreError::TooComplex { .. }) => ("400 Bad Request", "too-costly"),
        // Still losing to concurrent writes after the retries (`Repository::write`): the
        // client may retry too, as after any conflict.
        RepoError::Store(e) if e.is_write_conflict() => ("409 Conflict", "conflict"),
        RepoError::Store(_) => ("500 Internal Server Error", "exception"),
    }
}

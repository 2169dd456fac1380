use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("unsupported database URL '{0}': use sqlite:PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot create database directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("database migration '{name}' failed: {message}")]
    Migration { name: String, message: String },
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("a row with the same key already exists")]
    UniqueViolation,
    #[error(
        "the ValueSet '{0}' named by :in or :not-in is not stored on this server (no terminology \
         server is consulted): store it first"
    )]
    UnknownValueSet(String),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
}

impl StoreError {
    /// Whether retrying the same work may succeed (lock contention, serialization failure).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Query(diesel::result::Error::DatabaseError(kind, info)) => {
                matches!(
                    kind,
                    diesel::result::DatabaseErrorKind::SerializationFailure
                ) || info.message().contains("database is locked")
            }
            _ => false,
        }
    }
}

pub(crate) fn classify(error: diesel::result::Error) -> StoreError {
    match error {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => StoreError::UniqueViolation,
        other => StoreError::Query(other),
    }
}

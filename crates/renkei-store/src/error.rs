use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("unsupported database URL '{0}': use sqlite:PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    /// A database URL of a supported scheme that would reach the wrong database.
    #[error("database URL refused: {0}")]
    InvalidUrl(String),
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
    /// A statement beyond what the database accepts (nesting depth, bound values, …). The
    /// search limits (`renkei_search::plan::MAX_SEARCH_*`) keep searches below these; this
    /// answers 400 for whatever still reaches them. `cause` is for the log, not the client.
    #[error(
        "the search is too complex for the database to run: use fewer parameters, values or \
         levels of chaining"
    )]
    TooComplex { cause: String },
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
}

impl StoreError {
    /// Whether retrying the same work may succeed (lock contention, serialization failure,
    /// a deadlock).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Query(diesel::result::Error::DatabaseError(_, info)) => {
                self.is_write_conflict() || info.message().contains("database is locked")
            }
            _ => false,
        }
    }

    /// Whether the database connection was lost under the statement (PostgreSQL terminated
    /// the backend, the server restarted, the network dropped): the database is unavailable
    /// for this request, which is answered 503; the pool replaces the connection.
    pub fn is_connection_lost(&self) -> bool {
        const LOST: [&str; 6] = [
            "terminating connection",
            "server closed the connection",
            "no connection to the server",
            "could not send data to server",
            "could not receive data from server",
            "connection to server",
        ];
        match self {
            StoreError::Query(diesel::result::Error::DatabaseError(kind, info)) => {
                matches!(kind, diesel::result::DatabaseErrorKind::ClosedConnection)
                    || LOST.iter().any(|lost| info.message().contains(lost))
            }
            _ => false,
        }
    }

    /// Whether the write lost to a concurrent one: PostgreSQL cancelled it to break a deadlock
    /// (SQLSTATE 40P01) or for a serialization failure (40001), or a concurrent insert took its
    /// key. The whole write, rerun from its request, can succeed; if it keeps losing, the client
    /// is told of a conflict (409), not of a server failure.
    pub fn is_write_conflict(&self) -> bool {
        match self {
            StoreError::UniqueViolation => true,
            StoreError::Query(diesel::result::Error::DatabaseError(kind, info)) => {
                matches!(
                    kind,
                    diesel::result::DatabaseErrorKind::SerializationFailure
                ) || is_deadlock(info.message())
            }
            _ => false,
        }
    }
}

/// PostgreSQL's message for SQLSTATE 40P01, which diesel does not classify (its
/// `DatabaseErrorKind` has no deadlock kind, and its error carries no SQLSTATE).
fn is_deadlock(message: &str) -> bool {
    message.starts_with("deadlock detected")
}

/// Bound values one statement may carry: SQLite's limit (`SQLITE_MAX_VARIABLE_NUMBER`),
/// the lower of the two backends' (PostgreSQL's is 65,535), so that a statement too large for
/// one backend is refused on both alike.
pub const MAX_BINDS: usize = 32_766;

/// Messages of the errors a database gives for a statement beyond its limits, rather than for
/// anything wrong with the data: SQLite's (`Expression tree is too large (maximum depth
/// 1000)`, `too many SQL variables`, `too many terms in compound SELECT`, `at most 64 tables in
/// a join`, `parser stack overflow`, `LIKE or GLOB pattern too complex`) and PostgreSQL's (SQLSTATE class 54, `program_limit_exceeded`: `stack depth limit
/// exceeded`, `statement is too complex`, `target lists can have at most 1664 entries`,
/// `cannot pass more than 100 arguments to a function`, `number of parameters must be between 0
/// and 65535`).
const TOO_COMPLEX: &[&str] = &[
    "Expression tree is too large",
    "too many SQL variables",
    "too many terms in compound SELECT",
    "tables in a join",
    "parser stack overflow",
    "pattern too complex",
    "stack depth limit exceeded",
    "statement is too complex",
    "target lists can have at most",
    "cannot pass more than",
    "number of parameters must be between",
];

pub(crate) fn classify(error: diesel::result::Error) -> StoreError {
    match error {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => StoreError::UniqueViolation,
        diesel::result::Error::DatabaseError(_, info)
            if TOO_COMPLEX.iter().any(|m| info.message().contains(m)) =>
        {
            too_complex(info.message().to_string())
        }
        other => StoreError::Query(other),
    }
}

/// A [`StoreError::TooComplex`], logged with its cause (the client is told less).
pub(crate) fn too_complex(cause: String) -> StoreError {
    tracing::warn!(%cause, "statement beyond the database's limits refused");
    StoreError::TooComplex { cause }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    #[test]
    fn limits_of_the_database_are_too_complex_not_failures() {
        for message in [
            "Expression tree is too large (maximum depth 1000)",
            "too many SQL variables",
            "stack depth limit exceeded",
        ] {
            let error =
                Error::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_string()));
            assert!(
                matches!(classify(error), StoreError::TooComplex { .. }),
                "{message}"
            );
        }
        let error = Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("no such table: x".to_string()),
        );
        assert!(matches!(classify(error), StoreError::Query(_)));
    }

    #[test]
    fn deadlocks_and_lost_races_are_write_conflicts() {
        let deadlock = StoreError::Query(Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("deadlock detected".to_string()),
        ));
        assert!(deadlock.is_write_conflict() && deadlock.is_transient());
        let serialization = StoreError::Query(Error::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            Box::new("could not serialize access".to_string()),
        ));
        assert!(serialization.is_write_conflict());
        assert!(StoreError::UniqueViolation.is_write_conflict());
        let other = StoreError::Query(Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("no such table: x".to_string()),
        ));
        assert!(!other.is_write_conflict() && !other.is_transient());
        assert!(!StoreError::Unavailable("down".into()).is_write_conflict());
    }

    #[test]
    fn a_connection_lost_under_a_statement_is_told_apart() {
        let lost = |kind, message: &str| {
            StoreError::Query(Error::DatabaseError(kind, Box::new(message.to_string())))
                .is_connection_lost()
        };
        assert!(lost(
            DatabaseErrorKind::Unknown,
            "terminating connection due to administrator command"
        ));
        assert!(lost(
            DatabaseErrorKind::Unknown,
            "server closed the connection unexpectedly"
        ));
        assert!(lost(DatabaseErrorKind::ClosedConnection, "anything"));
        assert!(!lost(DatabaseErrorKind::Unknown, "no such table: x"));
    }
}

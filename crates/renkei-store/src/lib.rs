//! The only crate that talks to the database (diesel over SQLite or PostgreSQL).
//!
//! Everything above this crate sees resources as JSON text plus bookkeeping columns; the SQL
//! here is plain standard SQL that runs unchanged on both backends, so there are no
//! per-backend branches of logic (only the connection type and placeholder syntax differ).

mod audit;
mod clients;
mod conn;
mod consent;
mod error;
mod explain;
mod identity;
mod index;
mod resources;
mod search;
mod settings;
mod sql;
mod url;
mod visibility;

pub use audit::{
    AuditBody, AuditColumns, AuditHead, AuditQuery, AuditRef, AuditRow, NewAuditEvent, RecordHash,
};
pub use clients::{ClientRow, ServerKeyRow};
pub use conn::{
    locked_by_another_process, Backend, SchemaState, Store, StoreOptions, Tx, WriterSession,
};
pub use consent::ConsentRuleRow;
pub use error::StoreError;
pub use explain::SearchExplanation;
pub use identity::LinkOverride;
pub use index::is_privacy_label;
pub use resources::{
    HistoryPage, HistoryQuery, HistoryRow, HistoryScope, NewVersion, ResourceRow, TokenRow,
};
pub use search::{
    page_sql, search_may_be_one_statement, IncludesCut, SearchPage, SearchRow, MAX_INCLUDED,
    MAX_INCLUDE_ROUNDS, MAX_SORT_KEYS,
};
pub use sql::{Bind, Sql};
pub use url::DatabaseUrl;
pub use visibility::{
    DecidedRow, Decision, Visibility, BUNDLE_ENTRY_REFERENCE, FOLLOWED_RECORD, FOLLOWED_REFERENCE,
    PRIVACY_TAG_SYSTEM, UNRESOLVED_PATIENT, UNSEARCHABLE_REFERENCE, WITHHELD_TAG,
};

/// Administrative helpers for PostgreSQL databases (used by tests and operators).
pub mod admin {
    pub use crate::conn::{
        create_postgres_database, drop_postgres_database, end_postgres_sessions,
    };
}

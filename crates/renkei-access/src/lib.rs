//! The access gate: every request's identity, consent decision and audit record. Handlers get
//! the gate, never the repository, so no path reaches data without a decision and an
//! AuditEvent.

mod audit_journal;
pub mod audit_log;
mod gate;
mod requester;

pub use audit_log::{deferring_durability, AuditLog, AuditUnavailable, Deferred, TrailEvent};
pub use gate::{Gate, LoginAttempt, TrailPage};
/// The code systems of the trail's searchable codes, for the AuditEvent search parameters.
pub use renkei_audit::code_system as audit_code_system;
pub use requester::{Requester, StatedPurpose};

use renkei_repository::RepoError;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The requester is identified but not allowed (scope, role, purpose, ownership).
    #[error("{0}")]
    Forbidden(String),
    /// A method the target never takes, whoever asks (a write of the audit trail): 405, as the
    /// same request sent on its own answers.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// No audit, no data.
    #[error("the audit trail cannot be written: {0}")]
    AuditUnavailable(String),
    /// A stored audit record does not parse: the trail was altered outside the gateway.
    #[error("audit record {seq} cannot be read ({reason}); run `renkei audit verify`")]
    UnreadableAudit { seq: i64, reason: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<renkei_store::StoreError> for AccessError {
    fn from(e: renkei_store::StoreError) -> Self {
        AccessError::Repo(RepoError::Store(e))
    }
}

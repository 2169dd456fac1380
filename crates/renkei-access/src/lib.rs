//! The access gate: every request's identity, consent decision and audit record. Handlers get
//! the gate, never the repository.

pub mod audit_log;

pub use audit_log::{AuditLog, AuditUnavailable};

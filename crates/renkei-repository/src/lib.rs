//! The repository: FHIR interactions (read, vread, create, update, patch, delete, history,
//! conditional variants, batch and transaction) on top of the store.
//!
//! Every interaction is a function over a store transaction ([`renkei_store::Tx`]), so a
//! transaction Bundle runs the very same code for each entry inside one database transaction.
//! This crate knows FHIR semantics (versions, meta, references, conditional criteria); it
//! knows nothing of HTTP.

mod bundle;
mod criteria;
mod error;
pub mod identity;
mod index;
mod interactions;
mod meta;
mod precondition;
mod shape;

pub use bundle::{
    check_entries, conditional_reference_types, entry_method, error_issue, failed_entry,
    no_commit_hook, parse_etag, relative_entry_url, BundleKind, CommitHook, EntryRequest,
    ImportHook,
};
pub use criteria::{
    percent_decode, percent_decode_strict, percent_encode, percent_escapes_decode, Criteria,
};
pub use error::{status_of, RepoError};
pub use index::INDEX_FORMAT;
pub use interactions::{
    check_id, check_type, conditional_delete, conditional_update, create, delete,
    has_rest_endpoint, history_in, patch, read, read_visible, resolve_single, search_in, update,
    vread, vread_visible, DeleteOutcome, HistoryRequest, PatchBody, PreparedResource, Reindexed,
    Repository, RepositoryOptions, StoredResource, WriteContext, WriteOutcome,
    DEFAULT_MAX_BUNDLE_RESPONSE_BYTES,
};
pub use meta::{
    care_date_range, format_instant, is_valid_id, parse_instant_ms, CUSTODIAN_EXTENSION,
};
pub use precondition::{absent_under_if_match, parse_if_match, parse_if_none_match, IfMatch};
/// Which absolute references name resources here: set once at start-up, before indexing.
pub use renkei_search::{set_local_bases, set_local_zone, LocalZone};
pub use shape::ReadShape;

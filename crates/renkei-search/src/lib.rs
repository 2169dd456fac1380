//! FHIR search without a database: the search-parameter registry (official R4 plus JP Core
//! definitions, embedded), index-value extraction by FHIRPath, value normalization, and the
//! parsing of search query strings into a typed [`plan::SearchPlan`] that the store turns
//! into SQL.

pub mod date;
pub mod extract;
pub mod key;
pub mod normalize;
mod number;
pub mod plan;
pub mod registry;

pub use date::{local_zone, set_local_zone, LocalZone, ZoneError};
pub use extract::{
    extract, local_bases, local_path, set_local_bases, split_reference, CompositeIndex,
    CompositeValue, IndexRows,
};
pub use key::{capped, MAX_KEY_BYTES};
pub use normalize::{canonical_system, fold};
pub use registry::{
    registry, Component, ParamType, Registry, SearchParam, ENTRY_CHAINS, ENTRY_CHAIN_REFERENCES,
};

//! FHIRPath (the subset used by FHIR R4 search parameters), JSON Patch
//! (RFC 6902) and FHIRPath Patch, all over `serde_json::Value` FHIR JSON.
//!
//! ```
//! let patient = serde_json::json!({
//!     "resourceType": "Patient",
//!     "name": [{"use": "official", "family": "Chalmers"}, {"use": "usual", "family": "Jim"}]
//! });
//! let expr = renkei_fhirpath::compile("Patient.name.where(use='official').family").unwrap();
//! let result = expr.evaluate(&patient).unwrap();
//! assert_eq!(result[0].value(), "Chalmers");
//! ```
//!
//! The evaluator has no access to StructureDefinitions. Types are known for
//! resources (`resourceType`), choice elements (`valueQuantity` → `Quantity`)
//! and computed values; other elements are type-tested by JSON kind only.

mod error;
mod eval;
mod fhirpath_patch;
mod json_patch;
mod lexer;
mod node;
mod parser;
mod types;

pub use error::{FhirPathError, PatchError};
pub use eval::{compile, evaluate, Expression};
pub use fhirpath_patch::{apply_fhirpath_patch, apply_fhirpath_patch_with, default_is_repeating};
pub use json_patch::apply_json_patch;
pub use node::{Node, PathSegment};

//! Error types.

use thiserror::Error;

/// Errors from compiling or evaluating a FHIRPath expression.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FhirPathError {
    /// The expression text is not valid (supported) FHIRPath syntax.
    #[error("FHIRPath syntax error at offset {offset}: {message}")]
    Syntax { offset: usize, message: String },
    /// The expression nests deeper than the evaluator allows (guards the stack).
    #[error("FHIRPath expression is nested too deeply (limit {limit})")]
    TooDeep { limit: usize },
    /// A function or feature that this implementation does not provide.
    #[error("FHIRPath feature not supported: {0}")]
    Unsupported(String),
    /// A function was called with the wrong number of arguments.
    #[error("FHIRPath function {name}() expects {expected} argument(s), got {got}")]
    Arity {
        name: String,
        expected: String,
        got: usize,
    },
    /// A run-time error defined by the FHIRPath specification (e.g. a
    /// singleton was required but the collection had several items).
    #[error("FHIRPath evaluation error: {0}")]
    Evaluation(String),
}

/// Errors from applying a JSON Patch or a FHIRPath Patch. On any error the
/// target document is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatchError {
    /// The patch document itself is malformed (not an array, missing members…).
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// A JSON Patch operation failed. `index` is 1-based (the n-th entry of
    /// the patch array), like [`PatchError::FhirPathPatch`].
    #[error("operation {index} ({op}): {message}")]
    JsonPatch {
        index: usize,
        op: String,
        message: String,
    },
    /// A FHIRPath Patch operation failed. `index` is 1-based (the n-th
    /// `operation` parameter), matching how humans count parameters.
    #[error("operation {index} ({op}): {message}")]
    FhirPathPatch {
        index: usize,
        op: String,
        message: String,
    },
}

//! Errors of identity requests. Messages never contain patient data.

/// Why a `$match` or PIXm request cannot be served (all are client errors, HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The `$match` body is not a `Parameters` resource.
    #[error("the $match body must be a Parameters resource")]
    NotParameters,
    /// No `resource` parameter.
    #[error("the $match parameter 'resource' (a Patient) is required")]
    MissingResource,
    /// The `resource` parameter is not a Patient.
    #[error("the $match parameter 'resource' must be a Patient, found {0}")]
    ResourceNotPatient(String),
    /// A parameter that may appear once appears several times.
    #[error("the $match parameter '{0}' must not be repeated")]
    RepeatedParameter(String),
    /// A parameter `$match` does not define (ITI-119: `resource`, `onlyCertainMatches`,
    /// `count`); the name is shown only when it looks like one.
    #[error("the $match parameter {0} is not known; $match takes resource, onlyCertainMatches and count")]
    UnknownParameter(String),
    /// `onlyCertainMatches` is not a `valueBoolean`.
    #[error("the $match parameter 'onlyCertainMatches' must be a valueBoolean")]
    InvalidOnlyCertainMatches,
    /// `count` is not a positive integer.
    #[error("the $match parameter 'count' must be a positive integer (valueInteger or valuePositiveInt)")]
    InvalidCount,
    /// `sourceIdentifier` has no `|` or an empty system.
    #[error("sourceIdentifier must be system|value with a system")]
    MissingSystem,
    /// `sourceIdentifier` has an empty value.
    #[error("sourceIdentifier must be system|value with a value")]
    MissingValue,
}

impl IdentityError {
    /// A stable machine code for the error table of the HTTP layer.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotParameters => "identity.match.not-parameters",
            Self::MissingResource => "identity.match.missing-resource",
            Self::ResourceNotPatient(_) => "identity.match.resource-not-patient",
            Self::RepeatedParameter(_) => "identity.match.repeated-parameter",
            Self::UnknownParameter(_) => "identity.match.unknown-parameter",
            Self::InvalidOnlyCertainMatches => "identity.match.invalid-only-certain-matches",
            Self::InvalidCount => "identity.match.invalid-count",
            Self::MissingSystem => "identity.pix.missing-system",
            Self::MissingValue => "identity.pix.missing-value",
        }
    }
}

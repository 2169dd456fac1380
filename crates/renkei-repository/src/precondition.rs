//! `If-Match` preconditions (RFC 9110 §13.1.1) of update, patch and delete, from a header or
//! from `Bundle.entry.request.ifMatch`.

use crate::bundle::parse_etag;
use crate::RepoError;

/// The `If-Match` version that stands for `*`: "only if the resource currently exists", in
/// whichever version.
///
/// The access gate's write operations carry `If-Match` as `Option<i64>`, so `*` travels through
/// them as this number. No client ETag can collide with it: versions count from 1 and
/// [`parse_etag`] reads unsigned digits only, so no ETag ever yields a negative version.
pub const IF_MATCH_ANY: i64 = -1;

/// Reads an `If-Match` value: `*` ([`IF_MATCH_ANY`]) or one version ETag (`W/"3"`). The
/// error is the reason, for a 400.
pub fn parse_if_match(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(IF_MATCH_ANY);
    }
    // RFC 9110 allows a list, but a resource has one current version: a list could only
    // mean "any of these", which no client of a versioned FHIR server needs; say so rather
    // than calling a list malformed.
    if text.contains(',') {
        return Err(format!(
            "'{text}' lists several ETags; If-Match takes one version ETag like W/\"3\", or *"
        ));
    }
    parse_etag(text).ok_or_else(|| format!("'{text}' is not a version ETag like W/\"3\", or *"))
}

/// The 412 of `If-Match: *` on a resource that is missing, deleted or hidden from the writer
/// (all three answer alike, so the precondition cannot probe for hidden records).
pub(crate) fn absent(res_type: &str, id: &str) -> RepoError {
    RepoError::PreconditionFailed(format!(
        "If-Match: * requires a current {res_type}/{id}, which does not exist or is deleted"
    ))
}

/// Under `If-Match: *`, the "not found" or "gone" of a write turns into 412: the precondition
/// is evaluated before the method (RFC 9110 §13.2.2), and it fails on an absent resource.
/// Any other error, or any other `If-Match`, is returned unchanged.
pub fn absent_under_if_match_any(if_match: Option<i64>, error: RepoError) -> RepoError {
    if if_match != Some(IF_MATCH_ANY) {
        return error;
    }
    match error {
        RepoError::NotFound { res_type, id } | RepoError::Gone { res_type, id, .. } => {
            absent(&res_type, &id)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reads_star_and_single_etags() {
        assert_eq!(parse_if_match("*"), Ok(IF_MATCH_ANY));
        assert_eq!(parse_if_match(" * "), Ok(IF_MATCH_ANY));
        assert_eq!(parse_if_match("W/\"3\""), Ok(3));
        assert_eq!(parse_if_match("\"4\""), Ok(4));
    }

    #[test]
    fn refuses_lists_and_non_versions_with_the_reason() {
        let list = parse_if_match("W/\"2\", W/\"3\"").unwrap_err();
        assert!(list.contains("lists several ETags"), "{list}");
        let bad = parse_if_match("banana").unwrap_err();
        assert!(bad.contains("not a version ETag"), "{bad}");
        // A negative version is no ETag of ours, and must not reach the `*` sentinel.
        assert!(parse_if_match("W/\"-1\"").is_err());
        assert!(parse_if_match("W/\"+1\"").is_err());
    }

    #[test]
    fn only_star_turns_absence_into_412() {
        let missing = || RepoError::NotFound {
            res_type: "Patient".into(),
            id: "p".into(),
        };
        assert!(matches!(
            absent_under_if_match_any(Some(IF_MATCH_ANY), missing()),
            RepoError::PreconditionFailed(_)
        ));
        assert!(matches!(
            absent_under_if_match_any(Some(3), missing()),
            RepoError::NotFound { .. }
        ));
        assert!(matches!(
            absent_under_if_match_any(None, missing()),
            RepoError::NotFound { .. }
        ));
    }
}

//! Preconditions of update, patch and delete: `If-Match` (RFC 9110 §13.1.1), from a header or
//! from `Bundle.entry.request.ifMatch`, and `If-None-Match` (§13.1.2) from a header.

use std::fmt;

use crate::bundle::parse_etag;
use crate::RepoError;

/// What an `If-Match` or `If-None-Match` asks of the resource a write changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    /// `If-Match: *`: only if the resource currently exists, in whichever version.
    Any,
    /// `If-Match: W/"3"`: only if version 3 is the current one.
    Version(i64),
    /// `If-None-Match: *`: only if the resource does not currently exist (a `PUT` that may
    /// create but never overwrite).
    NoneAny,
    /// `If-None-Match: W/"3"`: only if version 3 is not the current one.
    NotVersion(i64),
    /// `If-Match` with a well-formed entity tag this server never issues (`W/"abc"`; its
    /// ETags are version numbers): no version matches, so the write fails with 412
    /// (RFC 9110 §13.1.1), not 400.
    Unissued,
    /// `If-None-Match` with such a tag: never the current version, so always satisfied.
    NotUnissued,
    /// `If-Unmodified-Since` (evaluated only without `If-Match` and `If-None-Match`): only if
    /// the current version was last modified at or before this second (Unix seconds; HTTP
    /// dates have no finer precision).
    UnmodifiedSince(i64),
}

impl IfMatch {
    /// Whether a current (not deleted) version, last modified at `last_updated` (Unix
    /// milliseconds), satisfies the precondition.
    pub fn admits(self, current_version: i64, last_updated: i64) -> bool {
        match self {
            IfMatch::UnmodifiedSince(second) => last_updated.div_euclid(1000) <= second,
            IfMatch::Any => true,
            IfMatch::Version(expected) => expected == current_version,
            IfMatch::NoneAny => false,
            IfMatch::NotVersion(refused) => refused != current_version,
            IfMatch::Unissued => false,
            IfMatch::NotUnissued => true,
        }
    }

    /// Whether only an existing resource satisfies it (`If-Match`); an `If-None-Match` is
    /// satisfied by a resource that does not exist.
    pub fn requires_current(self) -> bool {
        matches!(
            self,
            IfMatch::Any | IfMatch::Version(_) | IfMatch::Unissued | IfMatch::UnmodifiedSince(_)
        )
    }

    /// The header (or Bundle field) it comes from, for messages.
    pub fn header(self) -> &'static str {
        match self {
            IfMatch::UnmodifiedSince(_) => "If-Unmodified-Since",
            _ if self.requires_current() => "If-Match",
            _ => "If-None-Match",
        }
    }
}

impl fmt::Display for IfMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IfMatch::Any | IfMatch::NoneAny => f.write_str("*"),
            IfMatch::Version(version) | IfMatch::NotVersion(version) => {
                write!(f, "W/\"{version}\"")
            }
            IfMatch::Unissued | IfMatch::NotUnissued => {
                f.write_str("an entity tag this server never issued")
            }
            IfMatch::UnmodifiedSince(second) => {
                match chrono::DateTime::from_timestamp(*second, 0) {
                    Some(date) => write!(f, "{}", date.format("%a, %d %b %Y %H:%M:%S GMT")),
                    None => write!(f, "{second}"),
                }
            }
        }
    }
}

/// Reads an `If-None-Match` value of a write: `*` or one version ETag, as [`parse_if_match`].
pub fn parse_if_none_match(text: &str) -> Result<IfMatch, String> {
    Ok(match parse_if_match(text)? {
        IfMatch::Any => IfMatch::NoneAny,
        IfMatch::Version(version) => IfMatch::NotVersion(version),
        IfMatch::Unissued => IfMatch::NotUnissued,
        other => other,
    })
}

/// Reads an `If-Match` value: `*` or one version ETag (`W/"3"`). The error is the reason, for
/// a 400.
pub fn parse_if_match(text: &str) -> Result<IfMatch, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(IfMatch::Any);
    }
    // RFC 9110 allows a list, but a resource has one current version: a list could only
    // mean "any of these", which no client of a versioned FHIR server needs; say so rather
    // than calling a list malformed.
    if text.contains(',') {
        return Err(format!(
            "'{text}' lists several ETags; If-Match takes one version ETag like W/\"3\", or *"
        ));
    }
    // A bare or unquoted version (`3`, `W/3`) is no entity tag (RFC 9110 §8.8.3): refused
    // with the spelling to use rather than guessed at.
    if !is_entity_tag(text) {
        return Err(format!("'{text}' is not a version ETag like W/\"3\", or *"));
    }
    Ok(parse_etag(text).map_or(IfMatch::Unissued, IfMatch::Version))
}

/// Whether `text` is one entity tag (RFC 9110 §8.8.3): `W/` optionally, then a quoted string
/// of visible characters other than `"`.
fn is_entity_tag(text: &str) -> bool {
    let opaque = text.strip_prefix("W/").unwrap_or(text);
    opaque
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .is_some_and(|tag| {
            tag.bytes()
                .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        })
}

/// The 412 of an `If-Match` on a resource that is missing, deleted or hidden from the writer
/// (all three answer alike, so the precondition cannot probe for hidden records).
pub(crate) fn absent(if_match: IfMatch, res_type: &str, id: &str) -> RepoError {
    RepoError::PreconditionFailed(format!(
        "{}: {if_match} requires a current {res_type}/{id}, which does not exist or is deleted",
        if_match.header()
    ))
}

/// Under an `If-Match`, the "not found" or "gone" of a write turns into 412: the precondition
/// is evaluated before the method (RFC 9110 §13.2.2), and no ETag matches an absent resource.
/// Any other error, or a write without `If-Match`, is returned unchanged.
pub fn absent_under_if_match(if_match: Option<IfMatch>, error: RepoError) -> RepoError {
    let Some(if_match) = if_match.filter(|m| m.requires_current()) else {
        return error;
    };
    match error {
        RepoError::NotFound { res_type, id } | RepoError::Gone { res_type, id, .. } => {
            absent(if_match, &res_type, &id)
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
        assert_eq!(parse_if_match("*"), Ok(IfMatch::Any));
        assert_eq!(parse_if_match(" * "), Ok(IfMatch::Any));
        assert_eq!(parse_if_match("W/\"3\""), Ok(IfMatch::Version(3)));
        assert_eq!(parse_if_match("\"4\""), Ok(IfMatch::Version(4)));
        assert_eq!(IfMatch::Version(4).to_string(), "W/\"4\"");
        assert!(IfMatch::Any.admits(7, 0));
        assert!(!IfMatch::Version(4).admits(5, 0));
        // If-Unmodified-Since compares whole seconds.
        let since = IfMatch::UnmodifiedSince(1_700_000_000);
        assert!(since.admits(3, 1_700_000_000_999));
        assert!(!since.admits(3, 1_700_000_001_000));
        assert_eq!(since.header(), "If-Unmodified-Since");
        assert_eq!(since.to_string(), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn refuses_lists_and_non_versions_with_the_reason() {
        let list = parse_if_match("W/\"2\", W/\"3\"").unwrap_err();
        assert!(list.contains("lists several ETags"), "{list}");
        assert_eq!(parse_if_match("W/\"001\""), Ok(IfMatch::Unissued));
        for unquoted in ["3", "W/3", "W/\"3"] {
            assert!(parse_if_match(unquoted).is_err(), "{unquoted}");
        }
        let bad = parse_if_match("banana").unwrap_err();
        assert!(bad.contains("not a version ETag"), "{bad}");
        assert!(parse_if_match("W/\"a\"b\"").is_err());
        // Well-formed tags this server never issues match no version (412, not 400).
        for foreign in ["W/\"-1\"", "W/\"+1\"", "W/\"abc\"", "\"\""] {
            assert_eq!(parse_if_match(foreign), Ok(IfMatch::Unissued), "{foreign}");
            assert_eq!(
                parse_if_none_match(foreign),
                Ok(IfMatch::NotUnissued),
                "{foreign}"
            );
        }
        assert!(!IfMatch::Unissued.admits(1, 0) && IfMatch::NotUnissued.admits(1, 0));
    }

    #[test]
    fn any_if_match_turns_absence_into_412() {
        let missing = || RepoError::NotFound {
            res_type: "Patient".into(),
            id: "p".into(),
        };
        for if_match in [IfMatch::Any, IfMatch::Version(3)] {
            let RepoError::PreconditionFailed(text) =
                absent_under_if_match(Some(if_match), missing())
            else {
                panic!("{if_match} on a missing resource must fail its precondition");
            };
            assert!(text.contains("Patient/p"), "{text}");
        }
        for unasked in [None, Some(IfMatch::NoneAny), Some(IfMatch::NotVersion(2))] {
            assert!(matches!(
                absent_under_if_match(unasked, missing()),
                RepoError::NotFound { .. }
            ));
        }
    }

    #[test]
    fn if_none_match_admits_only_other_versions_or_absence() {
        assert_eq!(parse_if_none_match("*"), Ok(IfMatch::NoneAny));
        assert_eq!(parse_if_none_match("W/\"3\""), Ok(IfMatch::NotVersion(3)));
        assert!(!IfMatch::NoneAny.admits(1, 0));
        assert!(!IfMatch::NotVersion(3).admits(3, 0));
        assert!(IfMatch::NotVersion(3).admits(4, 0));
        assert!(!IfMatch::NoneAny.requires_current());
        assert_eq!(IfMatch::NotVersion(3).header(), "If-None-Match");
    }
}

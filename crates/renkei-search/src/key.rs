//! The length cap of indexed text.
//!
//! PostgreSQL refuses a B-tree entry larger than about a third of a page (2,704 bytes), and a
//! FHIR string may be far longer (an `Observation.valueString`, an identifier, an absolute
//! URL). Every text column an index looks values up by therefore holds at most
//! [`MAX_KEY_BYTES`] bytes of the value, cut at a character boundary, on both backends alike;
//! search values compared with those columns are cut the same way. A value longer than the
//! cap is found by its first [`MAX_KEY_BYTES`] bytes: two such values that share them match
//! each other's searches. `:exact` compares the whole value (its column is not indexed).

/// The most bytes of a text an index key holds. Two of them (a token's system and code) and
/// the key's short columns stay well under PostgreSQL's limit for one entry.
pub const MAX_KEY_BYTES: usize = 600;

/// `text` cut to at most [`MAX_KEY_BYTES`] bytes at a character boundary.
pub fn capped(text: &str) -> &str {
    if text.len() <= MAX_KEY_BYTES {
        return text;
    }
    let mut end = MAX_KEY_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// Cuts `text` in place to [`capped`].
pub(crate) fn cap(text: &mut String) {
    let keep = capped(text).len();
    text.truncate(keep);
}

/// [`cap`] for an optional text.
pub(crate) fn cap_opt(text: &mut Option<String>) {
    if let Some(text) = text {
        cap(text);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_cut_at_a_character() {
        assert_eq!(capped("abc"), "abc");
        let ascii = "a".repeat(MAX_KEY_BYTES + 10);
        assert_eq!(capped(&ascii).len(), MAX_KEY_BYTES);
        // 3-byte kanji: 600 is a boundary; with one ASCII byte first it is not.
        let kanji = format!("x{}", "山".repeat(400));
        let cut = capped(&kanji);
        assert!(cut.len() <= MAX_KEY_BYTES && cut.len() > MAX_KEY_BYTES - 3);
        assert!(kanji.starts_with(cut));
        let mut owned = kanji.clone();
        cap(&mut owned);
        assert_eq!(owned, cut);
    }
}

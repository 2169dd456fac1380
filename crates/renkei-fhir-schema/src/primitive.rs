//! Lexical (and, for dates, semantic) checks of FHIR R4 primitive values. These re-implement the
//! regular expressions of the R4 JSON schema (`fhir.schema.json`) by hand.

fn digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

fn num(s: &[u8]) -> u32 {
    s.iter().fold(0u32, |a, d| {
        a.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    })
}

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`; returns the number of components, or None.
fn date_part(s: &[u8]) -> Option<usize> {
    let year = s.get(0..4)?;
    if !digits(year) || year == b"0000" {
        return None;
    }
    let y = num(year);
    match s.len() {
        4 => Some(1),
        7 | 10 => {
            if s[4] != b'-' || !digits(&s[5..7]) {
                return None;
            }
            let m = num(&s[5..7]);
            if !(1..=12).contains(&m) {
                return None;
            }
            if s.len() == 7 {
                return Some(2);
            }
            if s[7] != b'-' || !digits(&s[8..10]) {
                return None;
            }
            let d = num(&s[8..10]);
            if d < 1 || d > days_in_month(y, m) {
                return None;
            }
            Some(3)
        }
        _ => None,
    }
}

/// `hh:mm:ss(.fff)?`
fn time_part(s: &[u8]) -> bool {
    if s.len() < 8 || s[2] != b':' || s[5] != b':' {
        return false;
    }
    let (h, mi, se) = (&s[0..2], &s[3..5], &s[6..8]);
    if !digits(h) || !digits(mi) || !digits(se) {
        return false;
    }
    if num(h) > 23 || num(mi) > 59 || num(se) > 60 {
        return false;
    }
    let rest = &s[8..];
    rest.is_empty() || (rest[0] == b'.' && digits(&rest[1..]))
}

/// `Z` or `(+|-)hh:mm` with hh:mm in 00:00..=14:00.
fn tz_part(s: &[u8]) -> bool {
    if s == b"Z" {
        return true;
    }
    if s.len() != 6 || !(s[0] == b'+' || s[0] == b'-') || s[3] != b':' {
        return false;
    }
    if !digits(&s[1..3]) || !digits(&s[4..6]) {
        return false;
    }
    let (h, m) = (num(&s[1..3]), num(&s[4..6]));
    m <= 59 && (h <= 13 || (h == 14 && m == 0))
}

/// Split `time+tz` at the start of the zone designator.
fn split_tz(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = s
        .iter()
        .position(|&c| c == b'Z' || c == b'+' || c == b'-')?;
    Some((&s[..i], &s[i..]))
}

pub(crate) fn is_date(s: &str) -> bool {
    date_part(s.as_bytes()).is_some()
}

pub(crate) fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    match b.iter().position(|&c| c == b'T') {
        None => date_part(b).is_some(),
        Some(t) => {
            if date_part(&b[..t]) != Some(3) {
                return false;
            }
            match split_tz(&b[t + 1..]) {
                Some((time, tz)) => time_part(time) && tz_part(tz),
                None => false,
            }
        }
    }
}

pub(crate) fn is_instant(s: &str) -> bool {
    let b = s.as_bytes();
    match b.iter().position(|&c| c == b'T') {
        Some(t) => {
            date_part(&b[..t]) == Some(3)
                && match split_tz(&b[t + 1..]) {
                    Some((time, tz)) => time_part(time) && tz_part(tz),
                    None => false,
                }
        }
        None => false,
    }
}

pub(crate) fn is_time(s: &str) -> bool {
    time_part(s.as_bytes())
}

pub(crate) fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

/// `^[^\s]+(\s[^\s]+)*$`
pub(crate) fn is_code(s: &str) -> bool {
    let mut prev_ws = true; // at start: leading whitespace not allowed
    for c in s.chars() {
        let ws = c.is_whitespace();
        if ws && prev_ws {
            return false;
        }
        prev_ws = ws;
    }
    !s.is_empty() && !prev_ws
}

/// `^\S*$` (and non-empty: FHIR JSON forbids empty strings)
pub(crate) fn is_uri(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_whitespace)
}

/// `^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$`
pub(crate) fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = rest.split('.');
    match parts.next() {
        Some("0" | "1" | "2") => {}
        _ => return false,
    }
    let mut n = 0;
    for p in parts {
        n += 1;
        let b = p.as_bytes();
        if !digits(b) || (b.len() > 1 && b[0] == b'0') {
            return false;
        }
    }
    n >= 1
}

/// `^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`
pub(crate) fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// Standard base64 (RFC 4648 alphabet, `=` padding); whitespace between groups is tolerated
/// as in the schema pattern `^(\s*([0-9a-zA-Z\+/=]){4}\s*)+$`.
pub(crate) fn is_base64(s: &str) -> bool {
    let mut n = 0usize;
    let mut pad = 0usize;
    for c in s.bytes() {
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            b'=' => pad += 1,
            c if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' => {
                if pad > 0 {
                    return false; // data after padding
                }
            }
            _ => return false,
        }
        n += 1;
    }
    n > 0 && n.is_multiple_of(4) && pad <= 2
}

/// string / markdown: non-empty, no control characters other than tab, CR, LF.
pub(crate) fn is_string(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| (c as u32) < 0x20 && c != '\t' && c != '\r' && c != '\n')
}

/// The textual form of a JSON integer: `^-?(0|[1-9][0-9]*)$`, parsed (None if not an integer).
pub(crate) fn parse_integer(text: &str) -> Option<i64> {
    let digits_part = text.strip_prefix('-').unwrap_or(text);
    let b = digits_part.as_bytes();
    if !digits(b) || (b.len() > 1 && b[0] == b'0') || b.len() > 12 {
        return None;
    }
    text.parse::<i64>().ok()
}

/// `^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`
pub(crate) fn is_decimal_text(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int = &b[start..i];
    if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == f {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        for ok in [
            "2020",
            "2020-02",
            "2020-02-29",
            "2000-02-29",
            "0001-01-01",
            "1990-12-31",
        ] {
            assert!(is_date(ok), "{ok}");
        }
        for bad in [
            "",
            "0000",
            "1990-13-45",
            "1990-13",
            "1990-00",
            "2019-02-29",
            "1900-02-29",
            "2020-04-31",
            "2020-1-1",
            "20200101",
            "2020-01-01T10:00:00Z",
            "2020-01-00",
            "abcd",
            "2020-",
            "２０２０",
        ] {
            assert!(!is_date(bad), "{bad}");
        }
    }

    #[test]
    fn date_times() {
        for ok in [
            "2020",
            "2020-05",
            "2020-05-06",
            "2020-05-06T10:11:12Z",
            "2020-05-06T10:11:12.123+09:00",
            "2020-05-06T23:59:60-14:00",
            "2020-05-06T00:00:00+14:00",
        ] {
            assert!(is_date_time(ok), "{ok}");
        }
        for bad in [
            "2020-05-06T10:11Z",
            "2020-05-06T10:11:12",
            "2020-05-06T24:00:00Z",
            "2020-05-06T10:11:12+15:00",
            "2020-05-06T10:11:12+14:30",
            "2020-05-06T10:11:12.Z",
            "2020-05T10:11:12Z",
            "2020-05-06 10:11:12Z",
            "2020-02-30T10:11:12Z",
            "2020-05-06T",
        ] {
            assert!(!is_date_time(bad), "{bad}");
        }
    }

    #[test]
    fn instants_and_times() {
        assert!(is_instant("2015-02-07T13:28:17.239+02:00"));
        assert!(is_instant("2015-02-07T13:28:17Z"));
        assert!(!is_instant("2015-02-07"));
        assert!(!is_instant("2015-02-07T13:28:17"));
        assert!(is_time("13:28:17"));
        assert!(is_time("13:28:17.5"));
        assert!(!is_time("13:28"));
        assert!(!is_time("25:00:00"));
        assert!(!is_time("13:28:17Z"));
    }

    #[test]
    fn ids_codes_uris() {
        assert!(is_id("example-1.2"));
        assert!(is_id(&"a".repeat(64)));
        assert!(!is_id(&"a".repeat(65)));
        assert!(!is_id("bad_id"));
        assert!(!is_id("bad id"));
        assert!(!is_id(""));
        assert!(is_code("a b"));
        assert!(is_code("male"));
        assert!(!is_code(" a"));
        assert!(!is_code("a "));
        assert!(!is_code("a  b"));
        assert!(!is_code(""));
        assert!(is_uri("http://x/y?z"));
        assert!(!is_uri("http://x/ y"));
        assert!(!is_uri(""));
        assert!(is_oid("urn:oid:1.2.3.4"));
        assert!(!is_oid("urn:oid:3.2"));
        assert!(!is_oid("urn:oid:1"));
        assert!(!is_oid("urn:oid:1.02"));
        assert!(is_uuid("urn:uuid:a76d9bbf-f293-4fb7-ad4c-2851cac77162"));
        assert!(!is_uuid("urn:uuid:A76D9BBF-F293-4FB7-AD4C-2851CAC77162"));
        assert!(!is_uuid("a76d9bbf-f293-4fb7-ad4c-2851cac77162"));
    }

    #[test]
    fn numbers_and_base64() {
        assert_eq!(parse_integer("-12"), Some(-12));
        assert_eq!(parse_integer("0"), Some(0));
        assert_eq!(parse_integer("01"), None);
        assert_eq!(parse_integer("1.0"), None);
        assert_eq!(parse_integer("1e3"), None);
        assert!(is_decimal_text("1.50"));
        assert!(is_decimal_text("-0.5e-3"));
        assert!(!is_decimal_text("1."));
        assert!(!is_decimal_text(".5"));
        assert!(!is_decimal_text("01"));
        assert!(is_base64("aGVsbG8="));
        assert!(is_base64("aGVs bG8="));
        assert!(!is_base64("%%%2@()()"));
        assert!(!is_base64("aGVsbG8"));
        assert!(!is_base64("aG=sbG8="));
        assert!(!is_base64(""));
        assert!(is_string("a\tb\r\n"));
        assert!(!is_string("a\u{0}b"));
        assert!(!is_string(""));
    }
}

//! FHIR `date` / `dateTime` / `instant` values as millisecond ranges.

use chrono::{FixedOffset, NaiveDate, NaiveTime, TimeZone};

/// UTC offset applied to FHIR values that carry no time zone (`2025-01-15`, `2025-01`,
/// `2025`, or a lenient `dateTime` without offset): Japan Standard Time, +09:00. A consent
/// "valid until 2030-01-14" signed in Japan means the end of that day in Japan.
pub const DEFAULT_UTC_OFFSET_SECS: i32 = 9 * 3600;

/// The first and last millisecond (Unix epoch, inclusive) covered by a FHIR `date`,
/// `dateTime` or `instant`, honouring its precision:
///
/// - `2025` → 2025-01-01T00:00:00.000+09:00 ..= 2025-12-31T23:59:59.999+09:00
/// - `2025-03` → the whole month; `2025-03-12` → the whole day (+09:00 when no zone)
/// - `2025-03-12T10:30:00+09:00` → that second (…:00.000 ..= …:00.999)
/// - `2025-03-12T10:30:00.250Z` → exactly that millisecond
/// - `2025-03-12T10:30+09:00` (minutes only, lenient) → that minute
///
/// Returns `None` for anything else.
pub fn fhir_time_range(value: &str) -> Option<(i64, i64)> {
    let value = value.trim();
    let jst = FixedOffset::east_opt(DEFAULT_UTC_OFFSET_SECS)?;
    match value.split_once('T') {
        None => date_range(value, &jst),
        Some((date_part, time_part)) => {
            let date = parse_full_date(date_part)?;
            let (clock, zone) = split_zone(time_part)?;
            let zone = zone.unwrap_or(jst);
            let (time, width_ms) = parse_clock(clock)?;
            let start = zone
                .from_local_datetime(&date.and_time(time))
                .single()?
                .timestamp_millis();
            Some((start, start + width_ms - 1))
        }
    }
}

/// First millisecond of a FHIR date/dateTime/instant (see [`fhir_time_range`]).
pub fn fhir_time_start(value: &str) -> Option<i64> {
    fhir_time_range(value).map(|(start, _)| start)
}

/// Last millisecond of a FHIR date/dateTime/instant (see [`fhir_time_range`]).
pub fn fhir_time_end(value: &str) -> Option<i64> {
    fhir_time_range(value).map(|(_, end)| end)
}

fn digits(s: &str, len: usize) -> Option<u32> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn parse_full_date(s: &str) -> Option<NaiveDate> {
    let mut parts = s.split('-');
    let year = digits(parts.next()?, 4)?;
    let month = digits(parts.next()?, 2)?;
    let day = digits(parts.next()?, 2)?;
    if parts.next().is_some() {
        return None;
    }
    NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)
}

fn date_range(s: &str, zone: &FixedOffset) -> Option<(i64, i64)> {
    let parts: Vec<&str> = s.split('-').collect();
    let year = i32::try_from(digits(parts.first()?, 4)?).ok()?;
    let (first, next) = match parts.len() {
        1 => (
            NaiveDate::from_ymd_opt(year, 1, 1)?,
            NaiveDate::from_ymd_opt(year + 1, 1, 1)?,
        ),
        2 => {
            let month = digits(parts[1], 2)?;
            let first = NaiveDate::from_ymd_opt(year, month, 1)?;
            let next = if month == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(year, month + 1, 1)?
            };
            (first, next)
        }
        3 => {
            let day = parse_full_date(s)?;
            (day, day.succ_opt()?)
        }
        _ => return None,
    };
    let at_midnight = |d: NaiveDate| -> Option<i64> {
        Some(
            zone.from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
                .single()?
                .timestamp_millis(),
        )
    };
    Some((at_midnight(first)?, at_midnight(next)? - 1))
}

/// Splits `10:30:00+09:00` into (`10:30:00`, Some(+09:00)); `Z` is UTC; no zone → None.
fn split_zone(s: &str) -> Option<(&str, Option<FixedOffset>)> {
    if let Some(clock) = s.strip_suffix('Z') {
        return Some((clock, Some(FixedOffset::east_opt(0)?)));
    }
    match s.rfind(['+', '-']) {
        None => Some((s, None)),
        Some(pos) => {
            let (clock, zone) = s.split_at(pos);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (hh, mm) = zone[1..].split_once(':')?;
            let hh = i32::try_from(digits(hh, 2)?).ok()?;
            let mm = i32::try_from(digits(mm, 2)?).ok()?;
            if hh > 14 || mm > 59 {
                return None;
            }
            Some((
                clock,
                Some(FixedOffset::east_opt(sign * (hh * 3600 + mm * 60))?),
            ))
        }
    }
}

/// Parses `hh:mm[:ss[.fff…]]`, returning the time and the width of its precision in ms.
fn parse_clock(s: &str) -> Option<(NaiveTime, i64)> {
    let mut parts = s.split(':');
    let hh = digits(parts.next()?, 2)?;
    let mm = digits(parts.next()?, 2)?;
    let (ss, nanos, width) = match parts.next() {
        None => (0, 0, 60_000),
        Some(sec) => {
            let (whole, frac) = match sec.split_once('.') {
                Some((whole, frac)) => (whole, Some(frac)),
                None => (sec, None),
            };
            let ss = digits(whole, 2)?;
            match frac {
                None => (ss, 0, 1_000),
                Some(frac) => {
                    if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    let mut ms_digits: String = frac.chars().take(3).collect();
                    while ms_digits.len() < 3 {
                        ms_digits.push('0');
                    }
                    let ms: u32 = ms_digits.parse().ok()?;
                    (ss, ms * 1_000_000, 1)
                }
            }
        }
    };
    if parts.next().is_some() {
        return None;
    }
    // FHIR allows a leap second 60; clamp it to 59.
    let ss = ss.min(59);
    Some((NaiveTime::from_hms_nano_opt(hh, mm, ss, nanos)?, width))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .map(|d| d.timestamp_millis())
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn precisions() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            (
                "2025",
                Some(("2025-01-01T00:00:00+09:00", "2026-01-01T00:00:00+09:00")),
            ),
            (
                "2025-12",
                Some(("2025-12-01T00:00:00+09:00", "2026-01-01T00:00:00+09:00")),
            ),
            (
                "2025-02",
                Some(("2025-02-01T00:00:00+09:00", "2025-03-01T00:00:00+09:00")),
            ),
            (
                "2030-01-14",
                Some(("2030-01-14T00:00:00+09:00", "2030-01-15T00:00:00+09:00")),
            ),
            (
                "2025-01-15T10:00:00+09:00",
                Some(("2025-01-15T10:00:00+09:00", "2025-01-15T10:00:01+09:00")),
            ),
            (
                "2025-01-15T01:00:00Z",
                Some(("2025-01-15T01:00:00Z", "2025-01-15T01:00:01Z")),
            ),
            (
                "2025-01-15T10:00+09:00",
                Some(("2025-01-15T10:00:00+09:00", "2025-01-15T10:01:00+09:00")),
            ),
            (
                "2025-01-15T10:00:00",
                Some(("2025-01-15T10:00:00+09:00", "2025-01-15T10:00:01+09:00")),
            ),
            (
                "2025-01-15T10:00:00-05:00",
                Some(("2025-01-15T15:00:00Z", "2025-01-15T15:00:01Z")),
            ),
        ];
        for (input, expected) in cases {
            let got = fhir_time_range(input);
            let want = expected.map(|(a, b)| (ms(a), ms(b) - 1));
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn fractions_are_exact() {
        let got = fhir_time_range("2025-01-15T01:00:00.25Z");
        let at = ms("2025-01-15T01:00:00.250Z");
        assert_eq!(got, Some((at, at)));
        let got = fhir_time_range("2025-01-15T01:00:00.123456Z");
        let at = ms("2025-01-15T01:00:00.123Z");
        assert_eq!(got, Some((at, at)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "soon",
            "25-01-01",
            "2025-1-5",
            "2025-13",
            "2025-02-30",
            "2025-01-15T",
            "2025-01-15T25:00:00Z",
            "2025-01-15T10:00:00+9",
            "2025-01-15T10:00:00.Z",
            "2025-01-15-01",
        ] {
            assert_eq!(fhir_time_range(bad), None, "{bad:?}");
        }
    }
}

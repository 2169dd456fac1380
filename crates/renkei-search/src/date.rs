//! FHIR date, dateTime and instant values as the range of instants they denote
//! (`2024` is the whole year; `2024-03-05T10:00` the whole minute), in ms since the epoch,
//! both ends inclusive. A value without a zone (a date, or a dateTime without one) is read in
//! the server's local zone ([`set_local_zone`]), as R4 search.html asks.

use chrono::{DateTime, Datelike, Days, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The fixed offset in which values without a zone are read: `Z` (UTC) or `+hh:mm`/`-hh:mm`.
/// A fixed offset, not a named zone, because index rows are instants: a zone with daylight
/// saving would read the same local day differently across the year, and Japan has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalZone {
    offset_secs: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time zone '{0}' is not Z, UTC or an offset from -12:00 to +14:00 such as +09:00")]
pub struct ZoneError(pub String);

impl LocalZone {
    pub const UTC: LocalZone = LocalZone { offset_secs: 0 };

    /// Seconds east of UTC.
    pub fn offset_secs(self) -> i32 {
        self.offset_secs
    }
}

impl Default for LocalZone {
    fn default() -> Self {
        LocalZone::UTC
    }
}

impl FromStr for LocalZone {
    type Err = ZoneError;

    /// `Z`, `UTC` or `±hh:mm` within the range FHIR dateTimes use (-12:00 to +14:00).
    fn from_str(text: &str) -> Result<LocalZone, ZoneError> {
        let invalid = || ZoneError(text.to_string());
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("z") || trimmed.eq_ignore_ascii_case("utc") {
            return Ok(LocalZone::UTC);
        }
        let (sign, rest) = match trimmed.as_bytes().first() {
            Some(b'+') => (1, &trimmed[1..]),
            Some(b'-') => (-1, &trimmed[1..]),
            _ => return Err(invalid()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(invalid)?;
        let two_digits = |t: &str| t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit());
        if !two_digits(h) || !two_digits(m) {
            return Err(invalid());
        }
        let hours: i32 = h.parse().map_err(|_| invalid())?;
        let minutes: i32 = m.parse().map_err(|_| invalid())?;
        let offset_secs = sign * (hours * 3600 + minutes * 60);
        if minutes > 59 || !(-12 * 3600..=14 * 3600).contains(&offset_secs) {
            return Err(invalid());
        }
        Ok(LocalZone { offset_secs })
    }
}

impl fmt::Display for LocalZone {
    /// `Z` for UTC (however it was written), else `+hh:mm`/`-hh:mm`: the canonical spelling
    /// that is recorded in the database and compared at start-up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.offset_secs == 0 {
            return f.write_str("Z");
        }
        let sign = if self.offset_secs < 0 { '-' } else { '+' };
        let abs = self.offset_secs.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
    }
}

/// The server's local zone, set once at start-up ([`set_local_zone`]); UTC until then.
static LOCAL_ZONE: OnceLock<LocalZone> = OnceLock::new();

/// Sets the zone in which values without one are read, for indexing and searching alike. Set
/// once, before anything is indexed or searched (index rows built under one zone are wrong
/// under another); false when already set to another zone.
pub fn set_local_zone(zone: LocalZone) -> bool {
    *LOCAL_ZONE.get_or_init(|| zone) == zone
}

/// The zone values without one are read in (UTC unless [`set_local_zone`] said otherwise).
pub fn local_zone() -> LocalZone {
    LOCAL_ZONE.get().copied().unwrap_or_default()
}

/// The earliest and latest instants (ms) a date value covers, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub low: i64,
    pub high: i64,
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm[:ss[.fff]][Z|±hh:mm]`.
/// Values without a zone are read in the server's local zone ([`local_zone`]). `None` for
/// anything else.
pub fn parse_range(text: &str) -> Option<DateRange> {
    parse_range_in(text, local_zone())
}

/// [`parse_range`] with values without a zone read in `zone`.
pub fn parse_range_in(text: &str, zone: LocalZone) -> Option<DateRange> {
    // No trimming: FHIR's date types hold no whitespace, and `date= 2020` in a search more
    // often stands for a lost `+` than for a date.
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut fields = date_part.split('-');
    let year_text = fields.next()?;
    if year_text.len() != 4 || !year_text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = year_text.parse().ok()?;
    // FHIR's years start at 0001.
    if year == 0 {
        return None;
    }
    let month = match fields.next() {
        Some(m) if m.len() == 2 => Some(m.parse::<u32>().ok()?),
        Some(_) => return None,
        None => None,
    };
    let day = match fields.next() {
        Some(d) if d.len() == 2 => Some(d.parse::<u32>().ok()?),
        Some(_) => return None,
        None => None,
    };
    if fields.next().is_some() {
        return None;
    }
    match (month, day, time_part) {
        (None, None, None) => {
            let start = NaiveDate::from_ymd_opt(year, 1, 1)?;
            let end = NaiveDate::from_ymd_opt(year + 1, 1, 1)?;
            Some(day_span(start, end, zone))
        }
        (Some(m), None, None) => {
            let start = NaiveDate::from_ymd_opt(year, m, 1)?;
            let end = if m == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(year, m + 1, 1)?
            };
            Some(day_span(start, end, zone))
        }
        (Some(m), Some(d), None) => {
            let start = NaiveDate::from_ymd_opt(year, m, d)?;
            let end = start.checked_add_days(Days::new(1))?;
            Some(day_span(start, end, zone))
        }
        (Some(m), Some(d), Some(time)) => {
            let date = NaiveDate::from_ymd_opt(year, m, d)?;
            parse_time(date, time, zone)
        }
        _ => None,
    }
}

/// From the first instant of local day `start` to the last before local day `end_exclusive`.
fn day_span(start: NaiveDate, end_exclusive: NaiveDate, zone: LocalZone) -> DateRange {
    // Local midnight is UTC midnight moved back by the offset (a fixed one: no gaps or folds).
    let midnight = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_millis())
            - i64::from(zone.offset_secs()) * 1000
    };
    DateRange {
        low: midnight(start),
        high: midnight(end_exclusive) - 1,
    }
}

fn parse_time(date: NaiveDate, time: &str, zone: LocalZone) -> Option<DateRange> {
    // Split off the zone.
    let (clock, offset_secs) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else if let Some(pos) = time.rfind(['+', '-']) {
        let (c, zone) = time.split_at(pos);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':')?;
        let two_digits = |text: &str| text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit());
        if !two_digits(h) || !two_digits(m) {
            return None;
        }
        let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
        // FHIR's zones run from -14:00 to +14:00 with minutes below 60.
        if secs > 14 * 3600 || m.parse::<i32>().ok()? >= 60 {
            return None;
        }
        (c, sign * secs)
    } else {
        (time, zone.offset_secs())
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let (hour, minute, second_text) = match parts.as_slice() {
        [h, m] => (h, m, None),
        [h, m, s] => (h, m, Some(*s)),
        _ => return None,
    };
    if hour.len() != 2 || minute.len() != 2 {
        return None;
    }
    let hour: u32 = hour.parse().ok()?;
    let minute: u32 = minute.parse().ok()?;
    let (second, millis, span_ms): (u32, u32, i64) = match second_text {
        None => (0, 0, 60_000),
        Some(s) => {
            let (whole, frac) = match s.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (s, None),
            };
            if whole.len() != 2 {
                return None;
            }
            let second: u32 = whole.parse().ok()?;
            match frac {
                None => (second, 0, 1000),
                Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
                    let digits: String = f.chars().chain("000".chars()).take(3).collect();
                    let span = match f.len() {
                        1 => 100,
                        2 => 10,
                        _ => 1,
                    };
                    (second, digits.parse().ok()?, span)
                }
                Some(_) => return None,
            }
        }
    };
    let naive: NaiveDateTime = date.and_hms_milli_opt(hour, minute, second.min(59), millis)?;
    let offset = FixedOffset::east_opt(offset_secs)?;
    let instant: DateTime<FixedOffset> = offset.from_local_datetime(&naive).single()?;
    let low = instant.timestamp_millis();
    Some(DateRange {
        low,
        high: low + span_ms - 1,
    })
}

/// The current instant in ms (the `ap` prefix sizes its tolerance from it).
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The year of a ms instant (diagnostics and tests).
pub fn year_of(ms: i64) -> Option<i32> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|d| d.year())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn values_fhir_does_not_allow_are_no_dates() {
        for text in [
            "0000",
            "0000-01-01",
            "2024-01-01T10:00:00+14:01",
            "2024-01-01T10:00:00+15:00",
            "2024-01-01T10:00:00+09:60",
            "2024-01-01T10:00:00++1:00",
            " 2024",
            "2024 ",
        ] {
            assert!(parse_range(text).is_none(), "{text}");
        }
        for text in [
            "0001",
            "2024-01-01T10:00:00+14:00",
            "2024-01-01T10:00:00-14:00",
        ] {
            assert!(parse_range(text).is_some(), "{text}");
        }
    }

    #[test]
    fn implicit_ranges_follow_precision() {
        let y = parse_range("2024").unwrap();
        assert_eq!(y.low, ms("2024-01-01T00:00:00Z"));
        assert_eq!(y.high, ms("2025-01-01T00:00:00Z") - 1);
        let m = parse_range("2024-02").unwrap();
        assert_eq!(m.high, ms("2024-03-01T00:00:00Z") - 1);
        let d = parse_range("2024-12-31").unwrap();
        assert_eq!(d.low, ms("2024-12-31T00:00:00Z"));
        assert_eq!(d.high, ms("2025-01-01T00:00:00Z") - 1);
        let minute = parse_range("2024-03-05T10:00+09:00").unwrap();
        assert_eq!(minute.low, ms("2024-03-05T01:00:00Z"));
        assert_eq!(minute.high, ms("2024-03-05T01:01:00Z") - 1);
        let second = parse_range("2024-03-05T10:00:07Z").unwrap();
        assert_eq!(second.high - second.low, 999);
        let milli = parse_range("2024-03-05T10:00:07.123Z").unwrap();
        assert_eq!(milli.low, milli.high);
        assert_eq!(year_of(milli.low), Some(2024));
    }

    #[test]
    fn values_without_a_zone_are_read_in_the_local_zone() {
        let jst: LocalZone = "+09:00".parse().unwrap();
        // A date-only value is the Japanese day: 00:00 JST (15:00 UTC the day before) to
        // 23:59:59.999 JST.
        let day = parse_range_in("2025-11-04", jst).unwrap();
        assert_eq!(day.low, ms("2025-11-04T00:00:00+09:00"));
        assert_eq!(day.high, ms("2025-11-05T00:00:00+09:00") - 1);
        let month = parse_range_in("2025-12", jst).unwrap();
        assert_eq!(month.low, ms("2025-12-01T00:00:00+09:00"));
        assert_eq!(month.high, ms("2026-01-01T00:00:00+09:00") - 1);
        let year = parse_range_in("2025", jst).unwrap();
        assert_eq!(year.low, ms("2025-01-01T00:00:00+09:00"));
        // A zone-less dateTime is local time; one with a zone keeps its own.
        let local = parse_range_in("2025-11-04T08:00:00", jst).unwrap();
        assert_eq!(local.low, ms("2025-11-04T08:00:00+09:00"));
        assert_eq!(local.high, local.low + 999);
        let minute = parse_range_in("2025-11-04T08:00", jst).unwrap();
        assert_eq!(minute.low, ms("2025-11-03T23:00:00Z"));
        let zoned = parse_range_in("2025-11-04T08:00:00Z", jst).unwrap();
        assert_eq!(zoned.low, ms("2025-11-04T08:00:00Z"));
        let west: LocalZone = "-05:30".parse().unwrap();
        let day = parse_range_in("2025-11-04", west).unwrap();
        assert_eq!(day.low, ms("2025-11-04T05:30:00Z"));
    }

    #[test]
    fn utc_is_unchanged_and_the_default() {
        assert_eq!(local_zone(), LocalZone::UTC);
        for text in [
            "2025",
            "2025-11",
            "2025-11-04",
            "2025-11-04T08:00",
            "2025-11-04T08:00:00",
        ] {
            assert_eq!(
                parse_range_in(text, LocalZone::UTC),
                parse_range(text),
                "{text}"
            );
        }
        let day = parse_range_in("2025-11-04", LocalZone::UTC).unwrap();
        assert_eq!(day.low, ms("2025-11-04T00:00:00Z"));
        assert_eq!(day.high, ms("2025-11-05T00:00:00Z") - 1);
        let time = parse_range_in("2025-11-04T08:00:00", LocalZone::UTC).unwrap();
        assert_eq!(time.low, ms("2025-11-04T08:00:00Z"));
    }

    #[test]
    fn zones_parse_and_print_canonically() {
        for (text, printed) in [
            ("Z", "Z"),
            ("utc", "Z"),
            ("+00:00", "Z"),
            ("-00:00", "Z"),
            ("+09:00", "+09:00"),
            (" -05:30 ", "-05:30"),
            ("+14:00", "+14:00"),
            ("-12:00", "-12:00"),
        ] {
            let zone: LocalZone = text.parse().unwrap();
            assert_eq!(zone.to_string(), printed, "{text}");
            assert_eq!(printed.parse::<LocalZone>().unwrap(), zone);
        }
        for bad in [
            "",
            "JST",
            "Asia/Tokyo",
            "+9:00",
            "+0900",
            "09:00",
            "+15:00",
            "-12:30",
            "+09:60",
            "+09:0a",
        ] {
            let err = bad.parse::<LocalZone>().unwrap_err();
            assert!(err.to_string().contains("+09:00"), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_malformed_dates() {
        for bad in [
            "",
            "24",
            "2024-13",
            "2024-02-30",
            "2024-1-1",
            "abc",
            "2024-01-01T25:00Z",
            "2024-01-01T10",
        ] {
            assert!(parse_range(bad).is_none(), "{bad}");
        }
    }
}
